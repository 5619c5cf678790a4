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

/// Value of `LB4_CT`. 64 bytes.
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
    /// Where this direction's translated packets were last routed.
    pub route: RouteCache,
}
const _: () = assert!(size_of::<CtValueV4>() == 64);

impl CtValueV4 {
    /// Whether this flow is source-NATed.
    pub const fn has_snat(&self) -> bool {
        self.nat_port != 0
    }
}

/// The route a flow's translated packets took in one direction, kept on
/// its conntrack entry so that later packets skip the route lookup, and,
/// in the original direction of an IPv4 flow, the backend that route
/// leads to, so that they skip the backend lookup too (an IPv6 flow's
/// backend, 16 bytes of address, is looked up by id on every packet).
/// Written by the datapath only. Valid while `maps::ROUTE_EPOCH` holds
/// the value it was written under; the agent changes that value on every
/// routing, neighbour, link or address change the kernel announces, and
/// after it removes a backend. 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteCache {
    /// `ROUTE_EPOCH` when the route was looked up; 0: nothing kept.
    pub epoch: u32,
    /// The interface the looked-up packet arrived on: routing may differ
    /// for another.
    pub ingress_ifindex: u32,
    /// Egress interface.
    pub ifindex: u32,
    /// The next hop's MAC.
    pub dmac: [u8; 6],
    /// The egress interface's MAC.
    pub smac: [u8; 6],
    /// The longest IP packet (total length) the lookup found within the
    /// route's MTU: a longer one is looked up again.
    pub fits_len: u16,
    /// Original direction of an IPv4 flow: the backend's port, as the
    /// flow's backend id named it when the route was kept. Reply
    /// direction, and IPv6: 0. Host byte order.
    pub backend_port: u16,
    /// Original direction of an IPv4 flow: the backend's address,
    /// likewise. Reply direction, and IPv6: 0. Network byte order.
    pub backend_address: [u8; 4],
}
const _: () = assert!(size_of::<RouteCache>() == 32);

/// Source ports handed out for SNAT: two spans, inclusive, beside Linux's
/// default ephemeral range (`net.ipv4.ip_local_port_range` =
/// 32768–60999), so a translated flow does not take a port the node's own
/// connections pick (the agent warns when the node's range reaches into
/// them): 1024–32767 below it and 61000–65535 above, `SNAT_PORTS` in all.
/// A port some frontend uses (a NodePort, an external IP's port) is
/// skipped: a reply to it would look like a new flow to that frontend.
/// Ports are unique per (node address, backend address, backend port,
/// protocol), so `SNAT_PORTS` bounds the flows from one node to one
/// backend that are tracked at once (closed TCP flows for 10 s, UDP
/// exchanges for 30 s).
pub const SNAT_PORT_SPANS: [(u16, u16); 2] = [(1024, 32767), (61000, 65535)];
const SNAT_LOW_PORTS: u32 = (SNAT_PORT_SPANS[0].1 - SNAT_PORT_SPANS[0].0) as u32 + 1;
pub const SNAT_PORTS: u32 = SNAT_LOW_PORTS + (SNAT_PORT_SPANS[1].1 - SNAT_PORT_SPANS[1].0) as u32 + 1;

/// The SNAT port at `index` (below `SNAT_PORTS`), the lower span first.
#[inline(always)]
pub const fn snat_port(index: u32) -> u16 {
    if index < SNAT_LOW_PORTS {
        SNAT_PORT_SPANS[0].0 + index as u16
    } else {
        SNAT_PORT_SPANS[1].0 + (index - SNAT_LOW_PORTS) as u16
    }
}

/// Whether SNAT may hand out `port`.
pub const fn is_snat_port(port: u16) -> bool {
    (port >= SNAT_PORT_SPANS[0].0 && port <= SNAT_PORT_SPANS[0].1)
        || (port >= SNAT_PORT_SPANS[1].0 && port <= SNAT_PORT_SPANS[1].1)
}

/// SNAT ports one flow's candidates are apart in the SNAT port order: a
/// step of the form 10·k + 1 (k from `SNAT_STRIDE_FIRST_STEP` below
/// `SNAT_STRIDE_STEPS`), taken from the flow's hash, so it is odd and no
/// multiple of 5, and moved on by 10 in the rare case it is a multiple of
/// 907: always coprime with `SNAT_PORTS` (2³ · 5 · 907), so a walk visits
/// every port.
///
/// Per flow, not one for all (double hashing): with one stride, flows
/// whose starts lie a stride apart walk the same path, and taken ports
/// gather in runs, as in linear probing. With about 82 % of the ports
/// taken, a DNS-like benchmark then dropped 39 of 118,816 flows for want
/// of a free port among `SNAT_PORT_ATTEMPTS` candidates, far more than
/// spread-out candidates would miss at that fill.
#[inline(always)]
pub const fn snat_stride(flow_hash: u32) -> u32 {
    let step = SNAT_STRIDE_FIRST_STEP + flow_hash.rotate_left(16) % (SNAT_STRIDE_STEPS - SNAT_STRIDE_FIRST_STEP);
    let stride = 10 * step + 1;
    if stride.is_multiple_of(907) { stride + 10 } else { stride }
}

/// Strides 10·k + 1 below `SNAT_PORTS`: k below this.
const SNAT_STRIDE_STEPS: u32 = SNAT_PORTS / 10 - 1;

/// The smallest k (stride 81): a flow's `SNAT_PORT_ATTEMPTS` candidates
/// then reach across the whole range, so no flow tries only the ports of
/// one dense block, such as NodePorts allocated side by side (skipped) or
/// a run of taken ports. With strides from 1, a flow of stride 1 whose walk
/// began among 1,000 consecutive NodePorts tried 512 of them and was
/// dropped, and so was every packet of its tuple after.
const SNAT_STRIDE_FIRST_STEP: u32 = SNAT_PORTS / (10 * SNAT_PORT_ATTEMPTS) + 1;

/// The SNAT port a flow whose hash is `flow_hash` tries at its `attempt`th
/// candidate (from 0).
#[inline(always)]
pub const fn snat_candidate(flow_hash: u32, attempt: u32) -> u16 {
    let start = flow_hash % SNAT_PORTS;
    let step = attempt as u64 * snat_stride(flow_hash) as u64;
    snat_port(((start as u64 + step) % SNAT_PORTS as u64) as u32)
}

/// How many ports a new flow tries before it is dropped as
/// `Counter::DropSnatPortsExhausted`: bounded, so a full range costs a new
/// flow at most this many lookups (about 20 µs), not 36,280. With
/// candidates spread over the range (`snat_stride`), a flow finds a free
/// port unless nearly all are taken (0.98^512 ≈ 0.003 %). 128 was too few:
/// a NodePort benchmark of 70,000 TCP connections to 4 endpoints dropped
/// 1–4 of them; with 512 (and with 2,048) none.
pub const SNAT_PORT_ATTEMPTS: u32 = 512;

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
/// meaning the same (the kept route's backend fields stay 0: see
/// `RouteCache`). 88 bytes, 8-byte aligned (see `ServiceKeyV6`).
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
    /// Where this direction's translated packets were last routed.
    pub route: RouteCache,
}
const _: () = assert!(size_of::<CtValueV6>() == 88);

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
    fn snat_ports_are_every_port_of_both_spans_once() {
        assert_eq!(SNAT_PORTS, 31_744 + 4_536);
        assert!((1..SNAT_PORTS).all(|i| snat_port(i - 1) < snat_port(i)), "distinct, in order");
        assert_eq!((snat_port(0), snat_port(SNAT_PORTS - 1)), (1024, 65535));
        assert!((0..SNAT_PORTS).all(|i| is_snat_port(snat_port(i))));
        assert!(!is_snat_port(1023) && !is_snat_port(32768) && !is_snat_port(60999));
        assert_eq!((1..=u16::MAX).filter(|&p| is_snat_port(p)).count() as u32, SNAT_PORTS, "and no other port");
    }

    #[test]
    fn a_flow_walk_visits_every_snat_port_once() {
        // 0: the smallest stride, 81; `moved_on`: 907 · 3 = 2,721 =
        // 10 · (8 + 264) + 1, a multiple of 907, moved on to 2,731.
        assert_eq!(snat_stride(0), 81);
        let moved_on = 264u32.rotate_right(16);
        assert_eq!(snat_stride(moved_on), 907 * 3 + 10);
        for hash in [0, 1, 0x0001_0000, 0x9e37_79b9, u32::MAX, moved_on] {
            let mut seen = [false; 1 << 16];
            for attempt in 0..SNAT_PORTS {
                let port = usize::from(snat_candidate(hash, attempt));
                assert!(!seen[port], "hash {hash:#x}: port {port} twice");
                seen[port] = true;
            }
        }
    }

    #[test]
    fn every_walk_reaches_across_the_whole_range() {
        // Even the smallest stride's candidates span the whole range, so
        // no block of ports side by side holds a flow's every try.
        assert!(SNAT_STRIDE_FIRST_STEP * 10 + 1 >= SNAT_PORTS.div_ceil(SNAT_PORT_ATTEMPTS));
        for hash in [0, 1, 0x0001_0000, 0x9e37_79b9, u32::MAX] {
            let stride = snat_stride(hash);
            assert!(stride >= 81, "hash {hash:#x}: stride {stride}");
            assert!(u64::from(stride) * u64::from(SNAT_PORT_ATTEMPTS) >= u64::from(SNAT_PORTS));
        }
    }

    #[test]
    fn flows_starting_a_stride_apart_do_not_walk_one_path() {
        // Two flows whose first candidates differ by one's stride: with one
        // stride for all they would share 127 of their first 128
        // candidates; by chance, about 128 · 128 / 36,280 ≈ 0.5.
        const FIRST: usize = 128;
        let a = 0x1234_5678u32;
        let b = a.wrapping_add(snat_stride(a));
        let of = |hash| core::array::from_fn::<u16, FIRST, _>(|i| snat_candidate(hash, i as u32));
        let (path_a, path_b) = (of(a), of(b));
        let shared = path_b.iter().filter(|port| path_a.contains(port)).count();
        assert!(shared < 8, "{shared} of the first {FIRST} candidates shared");
    }

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
