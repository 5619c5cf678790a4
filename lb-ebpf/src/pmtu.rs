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
//!
//! At XDP, which can neither answer nor hand a NATed packet to the stack,
//! every packet that is not a plain forward it can send itself (too big
//! included) is settled as passed to tc, untouched.

use lb_common::{proto, stats::Counter};

use crate::{
    family::Family,
    frame::Frame,
    icmp_reply, nat,
    parse::{ETH_LEN, Packet, PacketV4},
    route::{self, Flow, Route},
    route_cache,
    verdict::{Outcome, PathResult, Verdict},
};

const TCP_DATA_OFFSET_OFFSET: usize = 12;
const UDP_LEN: u32 = 8;

/// Where a packet about to be DNATed goes.
pub enum Checked {
    /// Out along this route (`None`: to the stack).
    Fits(Option<Route>),
    /// Decided without a route: too big and answered with fragmentation
    /// needed, or (XDP) passed to tc untouched.
    Settled(Outcome),
}

/// Looks up the route for `flow` (the packet's tuple after NAT), checking
/// `pkt` against its MTU; answers a DF packet that does not fit.
/// `want_source`: the route must name the node's source address (SNAT).
/// `keep`: where a tracked flow keeps its route (`route_cache`), under
/// which epoch, and the backend (address, port) it leads to.
#[inline(always)]
pub fn route<C: Frame>(
    ctx: &C,
    pkt: &PacketV4,
    flow: &Flow,
    want_source: bool,
    keep: Option<(&route_cache::Kept, ([u8; 4], u16))>,
) -> PathResult<Checked> {
    let lookup = route::resolve(ctx, flow, pkt.ip_total_len, want_source);
    if let Some((kept, backend)) = keep {
        kept.keep(ctx, &lookup, pkt.ip_total_len, Some(backend));
    }
    let mtu = match lookup {
        route::Lookup::Route(route) => return Ok(sendable(ctx, Some(route))),
        route::Lookup::Stack => return Ok(sendable(ctx, None)),
        route::Lookup::TooBig { mtu } => mtu,
    };
    if !pkt.dont_fragment || pkt.has_ip_options() || segment_len(ctx, pkt)? <= u32::from(mtu) {
        return Ok(sendable(ctx, None));
    }
    if !ctx.answer_unreachable(pkt, icmp_reply::CODE_FRAG_NEEDED, mtu)? {
        return Ok(Checked::Settled(Outcome::next(Counter::XdpPassToTc)));
    }
    Ok(Checked::Settled(Outcome { verdict: Verdict::Redirect, counter: Counter::IcmpFragNeeded }))
}

/// `Fits(route)` when this hook can send along `route` itself, else
/// passed to tc (`route::can_send`).
#[inline(always)]
pub fn sendable<C: Frame>(ctx: &C, route: Option<Route>) -> Checked {
    if route::can_send(ctx, &route) {
        Checked::Fits(route)
    } else {
        Checked::Settled(Outcome::next(Counter::XdpPassToTc))
    }
}

/// The length of the largest IP packet `pkt` leaves as: itself, or for
/// a GSO packet one segment (headers + `gso_size` bytes of payload).
#[inline(always)]
pub fn segment_len<F: Family, C: Frame>(ctx: &C, pkt: &Packet<F>) -> PathResult<u32> {
    let gso_size = u32::from(ctx.gso_size());
    if gso_size == 0 {
        return Ok(u32::from(pkt.ip_total_len));
    }
    let l4_header = if pkt.proto == proto::TCP {
        // Two bytes: a one-byte bounds check compiles to one the verifier
        // cannot use.
        let offset = nat::read_at::<2>(ctx, pkt.l4_off() + TCP_DATA_OFFSET_OFFSET)?[0];
        u32::from(offset >> 4) * 4
    } else {
        UDP_LEN
    };
    Ok((pkt.l4_off() - ETH_LEN) as u32 + l4_header + gso_size)
}
