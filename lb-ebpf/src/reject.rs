//! "No endpoints": answer a new flow to an empty Service with ICMP
//! destination port unreachable, sent back out of the interface it came in
//! on, as kube-proxy's REJECT rules do. The client fails at once
//! (ECONNREFUSED for TCP and connected UDP) instead of timing out. The
//! reply is built by `icmp_reply`.
//!
//! Packets with IP options are dropped instead (counted as a reject): the
//! quoted header would vary in length, and such packets are vanishingly
//! rare as connection openers.
//!
//! XDP cannot build the answer: it passes the packet to tc untouched.

use lb_common::stats::Counter;

use crate::{
    frame::Frame,
    icmp_reply,
    parse::PacketV4,
    verdict::{Outcome, PathResult, Verdict},
};

/// Replies with ICMP port unreachable and redirects it to the sender.
#[inline(always)]
pub fn reject<C: Frame>(ctx: &C, pkt: &PacketV4) -> PathResult<Outcome> {
    if pkt.has_ip_options() {
        return Ok(Outcome { verdict: Verdict::Drop, counter: Counter::RejectNoEndpoints });
    }
    if !ctx.answer_unreachable(pkt, icmp_reply::CODE_PORT_UNREACH, 0)? {
        return Ok(Outcome::next(Counter::XdpPassToTc));
    }
    Ok(Outcome { verdict: Verdict::Redirect, counter: Counter::RejectNoEndpoints })
}
