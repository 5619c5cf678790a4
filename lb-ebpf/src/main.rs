//! The datapath. Entry points only; each calls a `try_*` function, turns
//! its outcome into a tc verdict and counts it.
//!
//! Hooks:
//! - `lb_tc` runs at **tc ingress** on every interface of the node that
//!   carries pod or client traffic (pod-facing veths, the node's uplinks).
//!   Packets to a frontend (ClusterIP, NodePort, external/LB IP) are DNATed
//!   there (and SNATed when the reply must come back through this node),
//!   then sent out of the interface the routing table names (`route`).
//!   Replies from backends are reverse-NATed at the same hook on the
//!   backend-facing side and sent on the same way. tc has the
//!   `sk_buff`, so the checksum helpers keep partial / complete checksum
//!   offload states right, which XDP cannot; and pod veths see locally
//!   generated (checksum-partial) traffic.
//! - `lb_xdp` runs at **XDP** on the node's external interfaces, before
//!   tc: traffic from outside the cluster to NodePorts, LB and external
//!   IPs, and its replies, on the same paths (`lb4`), finished there when
//!   XDP can send the packet itself, else passed to tc untouched (`xdp`).
//! - `lb_connect4`, `lb_sendmsg4`, `lb_recvmsg4`, `lb_getpeername4` (and
//!   their `*6` twins for IPv6 sockets) run at the cgroup `sock_addr` hooks of the cgroup the agent is given
//!   (the host's root cgroup in a deployment): processes in the node's own
//!   network namespace (kubelet, host-network Pods) send from a socket, not
//!   through any interface's ingress, so their Service traffic is
//!   translated on the socket (`sock`).
//! - `lb_parse_only` parses exactly like `lb_tc` and passes: the floor the
//!   benchmarks compare against.
//! - `lb_forward_only` parses like `lb_tc` and sends every packet on as
//!   `lb_tc` sends a NATed one (`route`), with no Service work: the limit
//!   the benchmarks compare real traffic against.
//! - `lb_wire` is no part of a node: the switch of the tests' namespace
//!   LAN, which hands frames to the nodes as a NIC would (`wire`).
#![no_std]
#![no_main]

mod affinity;
mod clock;
mod config;
mod conntrack;
mod family;
mod frame;
mod frontend_stats;
mod icmp6_error;
mod icmp6_reply;
mod icmp_error;
mod icmp_nat;
mod icmp_reply;
mod lb4;
mod lb6;
mod maps;
mod nat;
mod parse;
mod parse6;
mod pmtu;
mod reject;
mod route;
mod route_cache;
mod select;
mod service;
mod skb_checksum;
mod snat;
mod sock;
mod stats;
mod verdict;
mod wire;
mod xdp;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

use crate::verdict::Verdict;

#[classifier]
pub fn lb_tc(ctx: TcContext) -> i32 {
    // The families part here: each has its own paths.
    let outcome = if parse::is_ipv6(&ctx) {
        match lb6::prefilter_then_handle(&ctx) {
            // ICMPv6, the one other protocol looked into: errors about
            // NATed flows. Called from here, not from `lb6`: frames add up
            // along a call chain, and both are large.
            outcome if outcome.counter == lb_common::stats::Counter::PassOtherProtocol => icmp6_error::handle(&ctx),
            outcome => outcome,
        }
    } else {
        lb4::prefilter_then_handle(&ctx)
    };
    stats::count(outcome.counter);
    outcome.verdict.tc_action()
}

/// At tc egress of the same interfaces: replies sent by the node's own
/// stack (a host-network backend on this node) are translated back here,
/// since they never cross an ingress hook. Everything else passes
/// uncounted.
///
/// Such a reply is made on this node: it entered through no interface
/// (`ingress_ifindex` 0). A packet the datapath redirected from an ingress
/// hook, or one the stack forwarded, came in through one, and that is most
/// of what leaves a node: it is passed before it is even parsed. (Not the
/// packet's socket: a packet redirected from ingress still carries the
/// sending Pod's, which only the stack's receive path drops.)
#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    // SAFETY: reading a field of the context the program was given.
    if unsafe { (*ctx.skb.skb).ingress_ifindex } != 0 {
        return Verdict::Next.tc_action();
    }
    let outcome = if parse::is_ipv6(&ctx) { lb6::reverse_at_egress(&ctx) } else { lb4::reverse_at_egress(&ctx) };
    match outcome {
        Some(outcome) => {
            stats::count(outcome.counter);
            outcome.verdict.tc_action()
        }
        None => Verdict::Next.tc_action(),
    }
}

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let outcome = xdp::handle_frame(&ctx);
    if xdp::counts(&outcome) {
        stats::count(outcome.counter);
    }
    outcome.verdict.xdp_action()
}

/// The test LAN's switch (`wire`), not part of a node's datapath.
#[xdp]
pub fn lb_wire(ctx: XdpContext) -> u32 {
    wire::switch_frame(&ctx)
}

/// TCP connect and UDP connect: the socket is connected to a backend.
#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    sock_counted(sock::translate(&ctx))
}

/// An unconnected UDP datagram (`sendto`): sent to a backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_counted(sock::translate(&ctx))
}

/// A UDP datagram received (`recvfrom`): its source shows as the frontend.
#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock_counted(sock::reverse(&ctx))
}

/// `getpeername`: a translated socket's peer shows as the frontend.
#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    sock_counted(sock::reverse(&ctx))
}

/// IPv6 sockets' twins of the four hooks above. An IPv4-mapped
/// destination (a dual-stack socket reaching an IPv4 address) is an IPv4
/// frontend.
#[cgroup_sock_addr(connect6)]
pub fn lb_connect6(ctx: SockAddrContext) -> i32 {
    sock_counted(sock::translate6(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lb_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_counted(sock::translate6(&ctx))
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lb_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock_counted(sock::reverse6(&ctx))
}

#[cgroup_sock_addr(getpeername6)]
pub fn lb_getpeername6(ctx: SockAddrContext) -> i32 {
    sock_counted(sock::reverse6(&ctx))
}

#[inline(always)]
fn sock_counted(outcome: sock::SockOutcome) -> i32 {
    if let Some(counter) = outcome.counter {
        stats::count(counter);
    }
    outcome.ret
}

#[classifier]
pub fn lb_parse_only(ctx: TcContext) -> i32 {
    // `black_box`: a result nobody reads lets the compiler drop most of
    // the parse (it did: 27 instructions, stopping at the IPv4 header),
    // which would make this floor cheaper than parsing is.
    match parse::parse_v4(&ctx) {
        Ok(pkt) => {
            core::hint::black_box((pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, pkt.tcp_flags));
            core::hint::black_box((pkt.tcp_syn, pkt.l4_start, pkt.ip_total_len, pkt.dont_fragment));
        }
        Err(reason) => {
            core::hint::black_box(reason as u32);
        }
    }
    Verdict::Next.tc_action()
}

#[classifier]
pub fn lb_forward_only(ctx: TcContext) -> i32 {
    let verdict = match parse::parse_v4(&ctx) {
        Ok(pkt) => {
            let flow = route::Flow::<family::V4> {
                src: pkt.src,
                dst: pkt.dst,
                sport: pkt.sport,
                dport: pkt.dport,
                proto: pkt.proto,
            };
            route::forward(&ctx, &flow, pkt.ip_total_len).unwrap_or(Verdict::Next)
        }
        Err(_) => Verdict::Next,
    };
    verdict.tc_action()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
