//! Datapath settings the agent writes at start (`LB_CONFIG`, a one-entry
//! array): read by every program, so the tc program, the socket hooks and
//! `lbctl trace` all run with the agent's settings.

/// The one entry of `LB_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// `FLAG_*` bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<DatapathConfig>() == 4);

/// NATed packets go on through the kernel's forward path (netfilter's
/// FORWARD chain included, where iptables-based NetworkPolicy runs)
/// instead of being sent out by the datapath, except those the forward
/// path would drop as martians: packets whose source after translation is
/// one of the node's own addresses (SNATed flows, replies from a NodePort
/// or another frontend address the node holds).
pub const FLAG_FORWARD_THROUGH_STACK: u32 = 1 << 0;

crate::user_pod!(DatapathConfig);
