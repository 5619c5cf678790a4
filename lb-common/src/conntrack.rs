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

/// Value of `LB4_CT`. 32 bytes.
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
    /// Creation time, seconds of the kernel's coarse monotonic clock
    /// (`CLOCK_MONOTONIC_COARSE`), shown as the flow's age.
    pub created_s: u32,
    /// When a packet last used this entry, same clock. Written only when
    /// the second changed, so most packets leave the entry's cache line
    /// clean. The agent's garbage collection compares it with the flow's
    /// timeout.
    pub last_seen_s: u32,
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
const _: () = assert!(size_of::<CtValueV4>() == 32);

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

/// A packet beyond the one that opened the flow passed in this entry's
/// direction: for TCP a packet without SYN (the handshake completed); for
/// UDP, on the reply entry, the backend answered.
pub const FLAG_ESTABLISHED: u16 = 1 << 0;
/// A TCP FIN was sent in this entry's direction. FIN one way only is a
/// half-closed connection: the other way may still carry data.
pub const FLAG_FIN: u16 = 1 << 1;
/// A TCP RST was seen in either direction; the datapath marks both
/// entries of the flow.
pub const FLAG_RST: u16 = 1 << 2;

/// The flow's frontend is one of the node's own addresses (a NodePort, or
/// an external or LoadBalancer IP the node holds), so its replies leave
/// with a local source. Set at creation, only when the datapath forwards
/// through the stack (`config::FLAG_FORWARD_THROUGH_STACK`): such replies
/// are still sent by the datapath, which the stack's martian check would
/// drop.
pub const FLAG_LOCAL_FRONTEND: u16 = 1 << 8;

/// TCP header flag bits, as in the header's flags byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// An entry's `FLAG_*` bits after one more packet in its direction
/// (`tcp_flags`: the TCP header's flags byte, 0 for UDP). Bits are only
/// ever added: a flow opened again by a new SYN gets a fresh entry.
pub const fn observe(flags: u16, tcp_flags: u8) -> u16 {
    let mut flags = flags;
    if tcp_flags & TCP_SYN == 0 {
        flags |= FLAG_ESTABLISHED;
    }
    if tcp_flags & TCP_FIN != 0 {
        flags |= FLAG_FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        flags |= FLAG_RST;
    }
    flags
}

/// Key of `LB6_CT`: `CtKeyV4` with 16-byte addresses. 40 bytes, 8-byte
/// aligned (see `ServiceKeyV6`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKeyV6 {
    /// Network byte order.
    pub src_address: [u8; 16],
    /// Network byte order.
    pub dst_address: [u8; 16],
    /// Host byte order.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
    pub proto: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKeyV6>() == 40);

/// Value of `LB6_CT`: `CtValueV4` with 16-byte addresses, the fields
/// meaning the same. 56 bytes, 8-byte aligned (see `ServiceKeyV6`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValueV6 {
    pub backend_id: u32,
    pub frontend_id: u32,
    /// Network byte order.
    pub frontend_address: [u8; 16],
    pub frontend_port: u16,
    pub flags: u16,
    pub created_s: u32,
    pub last_seen_s: u32,
    /// Network byte order.
    pub nat_address: [u8; 16],
    pub nat_port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtValueV6>() == 56);

impl CtValueV6 {
    /// Whether this flow is source-NATed.
    pub const fn has_snat(&self) -> bool {
        self.nat_port != 0
    }
}

user_pod!(CtKeyV4, CtValueV4, CtKeyV6, CtValueV6);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syn_leaves_the_entry_unestablished_and_the_next_packet_establishes_it() {
        assert_eq!(observe(0, TCP_SYN), 0);
        assert_eq!(observe(0, TCP_SYN | 0x10), 0, "a SYN-ACK is still the handshake");
        assert_eq!(observe(0, 0x10), FLAG_ESTABLISHED);
        assert_eq!(observe(0, 0), FLAG_ESTABLISHED, "any UDP datagram after the first");
    }

    #[test]
    fn fin_and_rst_add_their_bits_and_nothing_is_ever_cleared() {
        let fin = observe(FLAG_ESTABLISHED, TCP_FIN | 0x10);
        assert_eq!(fin, FLAG_ESTABLISHED | FLAG_FIN);
        assert_eq!(observe(fin, 0x10), fin);
        assert_eq!(observe(fin, TCP_RST), fin | FLAG_RST);
    }
}
