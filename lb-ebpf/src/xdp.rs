//! The XDP fast path, on the node's external interfaces (`--xdp-interfaces`):
//! traffic from outside the cluster to NodePorts, LoadBalancer IPs and
//! externalIPs, and the replies to it that come back through this node.
//!
//! It runs the paths of `lb4` and `lb6` before any sk_buff exists, and
//! finishes a packet only when it can send it itself (`frame`): a flow
//! whose route leaves by the interface it came in on (a backend on another
//! node, with SNAT, answered by `XDP_TX`) or by another interface in
//! `LB_XDP_DEVICES` (`XDP_REDIRECT`), to a known neighbour. It also drops
//! what tc would drop (a source outside `loadBalancerSourceRanges`, a
//! Local policy without local endpoints). Everything else passes to tc
//! untouched, with no state created, and tc handles it as if this program
//! were not there: ICMP and ICMPv6, a backend on a Pod veth, a neighbour
//! not yet resolved, a Service without endpoints (tc rejects), a packet
//! too big for the route (tc answers), a TTL or hop limit about to
//! expire, the first packet of a ClientIP affinity flow (its choice is
//! made and counted once, at tc), and every packet under
//! `--forward-through-stack`, whose stack forwarding XDP cannot do.
//!
//! Counters: XDP counts what it does (new flows, established packets,
//! replies, drops, `xdp_sent`, `xdp_pass_to_tc`); a packet it passes on
//! for no Service reason is left for tc to count, so no packet is counted
//! twice as passed.

use aya_ebpf::programs::XdpContext;
use lb_common::stats::Counter;

use crate::{
    config, lb4, lb6, nat,
    parse::{self, ETH_LEN},
    verdict::{Outcome, Verdict},
};

const IP_TTL_OFF: usize = ETH_LEN + 8;
const IPV6_HOP_LIMIT_OFF: usize = ETH_LEN + 7;

/// Decides what happens to one frame at XDP.
#[inline(always)]
pub fn handle_frame(ctx: &XdpContext) -> Outcome {
    if config::forward_through_stack() {
        return Outcome::next(Counter::Passed);
    }
    if parse::is_ipv6(ctx) {
        if hops_expiring(ctx, IPV6_HOP_LIMIT_OFF) {
            return Outcome::next(Counter::Passed);
        }
        return lb6::handle_packet(ctx);
    }
    if hops_expiring(ctx, IP_TTL_OFF) {
        return Outcome::next(Counter::Passed);
    }
    lb4::handle_packet(ctx)
}

/// Whether forwarding would expire the packet's TTL or hop limit (the
/// byte at `offset`): tc leaves it to the stack, which answers time
/// exceeded (a short frame is not expiring).
#[inline(always)]
fn hops_expiring(ctx: &XdpContext, offset: usize) -> bool {
    nat::read_at::<1>(ctx, offset).is_ok_and(|[hops]| hops <= 1)
}

/// Whether an outcome is XDP's own to count (see the module comment).
#[inline(always)]
pub fn counts(outcome: &Outcome) -> bool {
    !matches!(outcome.verdict, Verdict::Next) || matches!(outcome.counter, Counter::XdpPassToTc)
}
