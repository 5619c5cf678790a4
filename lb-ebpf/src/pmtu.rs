//! Path MTU discovery through a frontend. A packet DNATed onto a route
//! whose MTU it exceeds, handed to the stack, would be answered with
//! fragmentation needed quoting the translated packet (client → backend),
//! which matches no socket of the client, and that locally generated
//! error never passes this datapath's ingress hook to be translated. So a
//! packet with DF set that does not fit is answered here, before any
//! rewrite: ICMP fragmentation needed carrying the route's MTU, from the
//! frontend, quoting the packet as the client sent it (`icmp_reply`).
//!
//! A GSO packet fits when each of its segments does. A packet without DF,
//! or with IP options (see `icmp_reply`), keeps going to the stack, which
//! fragments it or answers itself.

use aya_ebpf::programs::TcContext;
use lb_common::{proto, stats::Counter};

use crate::{
    icmp_reply, nat,
    parse::{ETH_LEN, PacketV4},
    route::{self, Flow, Route},
    verdict::{Outcome, PathResult, Verdict},
};

const TCP_DATA_OFFSET_OFFSET: usize = 12;
const UDP_LEN: u32 = 8;

/// Where a packet about to be DNATed goes.
pub enum Checked {
    /// Out along this route (`None`: to the stack).
    Fits(Option<Route>),
    /// Too big: answered with fragmentation needed.
    Answered(Outcome),
}

/// Looks up the route for `flow` (the packet's tuple after NAT), checking
/// `pkt` against its MTU; answers a DF packet that does not fit.
/// `want_source`: the route must name the node's source address (SNAT).
#[inline(always)]
pub fn route(ctx: &TcContext, pkt: &PacketV4, flow: &Flow, want_source: bool) -> PathResult<Checked> {
    let mtu = match route::resolve(ctx, flow, pkt.ip_total_len, want_source) {
        route::Lookup::Route(route) => return Ok(Checked::Fits(Some(route))),
        route::Lookup::Stack => return Ok(Checked::Fits(None)),
        route::Lookup::TooBig { mtu } => mtu,
    };
    if !pkt.dont_fragment || pkt.has_ip_options() || segment_len(ctx, pkt)? <= u32::from(mtu) {
        return Ok(Checked::Fits(None));
    }
    icmp_reply::send_unreachable(ctx, pkt, icmp_reply::CODE_FRAG_NEEDED, mtu)?;
    Ok(Checked::Answered(Outcome { verdict: Verdict::Redirect, counter: Counter::IcmpFragNeeded }))
}

/// The length of the largest IPv4 packet `pkt` leaves as: itself, or for
/// a GSO packet one segment (headers + `gso_size` bytes of payload).
#[inline(always)]
fn segment_len(ctx: &TcContext, pkt: &PacketV4) -> PathResult<u32> {
    // SAFETY: reads a field of the live sk_buff.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return Ok(u32::from(pkt.ip_total_len));
    }
    let l4_header = if pkt.proto == proto::TCP {
        // Two bytes: a one-byte bounds check compiles to one the verifier
        // cannot use.
        let offset = nat::read_at::<2>(ctx, pkt.l4_off + TCP_DATA_OFFSET_OFFSET)?[0];
        u32::from(offset >> 4) * 4
    } else {
        UDP_LEN
    };
    Ok((pkt.l4_off - ETH_LEN) as u32 + l4_header + gso_size)
}
