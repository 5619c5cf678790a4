//! Connection tracking for NATed flows. Each flow has two entries in one
//! LRU map: the original direction (client → frontend), which remembers
//! the chosen backend, and the reply direction (backend → client), which
//! remembers the frontend to restore as the source.

use crate::user_pod;

/// Key of `LB4_CT`. 16 bytes. Includes the protocol and both address/port
/// pairs, plus the direction so the two entries of a flow never collide.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKeyV4 {
    /// Source address of the packet as it arrives. Network byte order.
    pub src_address: [u8; 4],
    /// Destination address of the packet as it arrives. Network byte order.
    pub dst_address: [u8; 4],
    /// Host byte order.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
    /// IANA protocol number.
    pub proto: u8,
    /// `DIR_ORIGINAL` or `DIR_REPLY`.
    pub direction: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKeyV4>() == 16);

pub const DIR_ORIGINAL: u8 = 0;
pub const DIR_REPLY: u8 = 1;

/// Value of `LB4_CT`. 28 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValueV4 {
    /// Original direction: the backend chosen for this flow. Host byte order.
    pub backend_id: u32,
    /// The frontend this flow was balanced by (`ServiceValue::frontend_id`).
    /// Host byte order.
    pub frontend_id: u32,
    /// Reply direction: the frontend address to restore as source. Network byte order.
    pub frontend_address: [u8; 4],
    /// Reply direction: the frontend port to restore as source. Host byte order.
    pub frontend_port: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Creation time, seconds of the kernel's monotonic clock (for the
    /// conntrack lifecycle: drain and garbage collection).
    pub created_s: u32,
    /// Source NAT, for flows that must return through this node (external
    /// traffic sent to a backend on another node). Original direction: the
    /// node address that replaces the client's as source; reply direction:
    /// the client address to restore as destination. All zero: no SNAT.
    /// Network byte order.
    pub nat_address: [u8; 4],
    /// Original direction: the source port that replaces the client's;
    /// reply direction: the client port to restore. Host byte order.
    pub nat_port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtValueV4>() == 28);

impl CtValueV4 {
    /// Whether this flow is source-NATed.
    pub const fn has_snat(&self) -> bool {
        self.nat_port != 0
    }
}

/// Source ports handed out for SNAT, inclusive. Above Linux's default
/// ephemeral range (`net.ipv4.ip_local_port_range` = 32768–60999), so a
/// translated flow does not take a port the node's own connections pick;
/// the agent warns when the node's range reaches into it. Ports are unique
/// per (node address, backend address, backend port, protocol), so this
/// span bounds the concurrent SNAT flows from one node to one backend.
pub const SNAT_PORT_MIN: u16 = 61000;
pub const SNAT_PORT_MAX: u16 = 65535;
/// How many ports a new flow tries before it is dropped as
/// `Counter::DropSnatPortsExhausted`: bounded, so the verifier accepts the
/// loop and a full range costs a few lookups, not thousands.
pub const SNAT_PORT_ATTEMPTS: u32 = 32;

/// A TCP FIN or RST was seen on this flow.
pub const FLAG_CLOSING: u16 = 1 << 0;

user_pod!(CtKeyV4, CtValueV4);
