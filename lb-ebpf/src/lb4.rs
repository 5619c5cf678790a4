//! The IPv4 packet paths: client → frontend (DNAT to a backend, plus SNAT
//! when the reply must return through this node) and backend → client
//! (reverse NAT). Each step is one O(1) map operation. A NATed packet is
//! then sent out by `route` (see there for why and when).
//!
//! The same paths run at tc and at XDP (`frame` says what differs). The
//! route after NAT is looked up before the packet is touched or a flow
//! tracked, so that XDP can still pass to tc, untouched and stateless,
//! what it cannot send itself; a ClientIP Service's new flows are passed
//! before its affinity choice is made.
//!
//! A host-network backend on this node answers from the node's own stack:
//! its replies cross no ingress hook, so tc egress translates them
//! (`reverse_at_egress`).

use aya_ebpf::programs::TcContext;
use lb_common::{
    backend::BackendV4,
    conntrack::{CtValueV4, FLAG_LOCAL_FRONTEND},
    frontend_stats::FrontendEvent,
    service::{FLAG_CLUSTER_IP, FLAG_NO_LOCAL_ENDPOINTS, FLAG_SESSION_AFFINITY, ServiceKeyV4, ServiceValue},
    stats::Counter,
};

use crate::{
    affinity, config, conntrack,
    family::{Family, V4},
    frame::Frame,
    frontend_stats, nat,
    parse::{self, PacketV4},
    pmtu, reject,
    route::{self, Flow},
    route_cache::Kept,
    select, service,
    snat::{self, PreviousSnat},
    verdict::{Outcome, PathResult, Verdict},
};

/// At tc ingress: passes a packet no prefilter lets through right here,
/// in the hook, and calls the Service paths for the others, with the
/// prefilters' answer.
///
/// Most packets a node carries are no Service's. Passing them without a
/// call took away most of what such a packet cost over parsing alone
/// (the miss rows of `lb-bench --only packet-cost`, on a host whose
/// returns go through a mitigation thunk); a candidate is parsed twice
/// instead, a few nanoseconds on a path that costs hundreds.
/// Only the prefilters' inputs stay live across their map reads, so the
/// hook's frame stays small: every call chain, IPv6's included, stacks on
/// it.
#[inline(always)]
pub fn prefilter_then_handle(ctx: &TcContext) -> Outcome {
    let candidate = match parse::parse_v4(ctx) {
        Ok(pkt) => Candidate::of(&pkt),
        // Not TCP or UDP, or not to be parsed: the paths say why.
        Err(_) => Candidate::ASK,
    };
    if candidate.is_none() {
        return Outcome::next(Counter::Passed);
    }
    Outcome::from_bits(handle_candidate(ctx, candidate.0))
}

/// The Service paths as a call of their own, the outcome in one scalar
/// (`Outcome::into_bits`), the prefilters' answer in another (inlined,
/// their frame would join the hook's).
#[inline(never)]
fn handle_candidate<C: Frame>(ctx: &C, candidate: u8) -> u64 {
    handle_prefiltered(ctx, Candidate(candidate)).into_bits()
}

/// Which paths a packet's prefilters let it try.
#[derive(Clone, Copy)]
struct Candidate(u8);

impl Candidate {
    const FRONTEND: u8 = 1;
    const REPLY: u8 = 2;
    /// Not known yet: the paths ask the prefilters themselves.
    const ASK: Self = Self(4);

    /// The prefilters' answer for a packet: to a frontend, a backend's
    /// reply, both or neither.
    #[inline(always)]
    fn of(pkt: &PacketV4) -> Self {
        let frontend = if service::may_be_frontend(pkt) { Self::FRONTEND } else { 0 };
        let reply = if service::may_be_backend_reply(pkt) { Self::REPLY } else { 0 };
        Self(frontend | reply)
    }

    #[inline(always)]
    fn is_none(self) -> bool {
        self.0 == 0
    }

    #[inline(always)]
    fn frontend(self) -> bool {
        self.0 & Self::FRONTEND != 0
    }

    #[inline(always)]
    fn reply(self) -> bool {
        self.0 & Self::REPLY != 0
    }
}

/// Decides what happens to one packet at tc or XDP ingress, asking the
/// prefilters in the call.
#[inline(always)]
pub fn handle_packet<C: Frame>(ctx: &C) -> Outcome {
    Outcome::from_bits(handle_candidate(ctx, Candidate::ASK.0))
}

/// `handle_packet`, trying only the paths `prefiltered` allows.
#[inline(always)]
fn handle_prefiltered<C: Frame>(ctx: &C, prefiltered: Candidate) -> Outcome {
    let pkt = match parse::parse_v4(ctx) {
        Ok(pkt) => pkt,
        // ICMP, the one other protocol looked into: errors about NATed flows.
        Err(Counter::PassOtherProtocol) => return ctx.icmp(),
        Err(pass_reason) => return Outcome::next(pass_reason),
    };
    let candidate = if prefiltered.0 == Candidate::ASK.0 { Candidate::of(&pkt) } else { prefiltered };
    let result = try_handle(ctx, &pkt, candidate);
    match result {
        Ok(outcome) => outcome,
        Err(drop_reason) => Outcome::drop(drop_reason),
    }
}

#[inline(always)]
fn try_handle<C: Frame>(ctx: &C, pkt: &PacketV4, candidate: Candidate) -> PathResult<Outcome> {
    if candidate.frontend()
        && let Some(outcome) = try_forward(ctx, pkt)?
    {
        return Ok(outcome);
    }
    if candidate.reply()
        && let Some(outcome) = try_reply(ctx, pkt)?
    {
        return Ok(outcome);
    }
    Ok(Outcome::next(Counter::Passed))
}

/// Client → frontend. `None`: not addressed to a frontend.
///
/// Conntrack is consulted first: an established flow keeps its backend for
/// as long as that backend exists, even if the Service's backend set (or
/// the Service itself) changed, as with kube-proxy's conntrack. A TCP SYN
/// opens a new connection even when its tuple is tracked (a client reusing
/// a port of a closed connection): it is balanced afresh.
#[inline(always)]
fn try_forward<C: Frame>(ctx: &C, pkt: &PacketV4) -> PathResult<Option<Outcome>> {
    let tracked = conntrack::lookup_original(pkt);
    if let Some(tracked) = tracked
        && !pkt.tcp_syn
        && let entry = tracked.fields()
        && let kept = Kept::at(tracked.route())
        && let Some(backend) = established_backend(pkt, entry, &kept)
    {
        conntrack::on_rst_mark_reply(pkt, &backend, entry);
        let snat = entry.has_snat().then_some((entry.nat_address, entry.nat_port));
        let checked = match kept.route(ctx, pkt.ip_total_len) {
            Some(route) => pmtu::sendable(ctx, route),
            None => {
                let mut flow = Flow::<V4> {
                    src: pkt.src,
                    dst: backend.address,
                    sport: pkt.sport,
                    dport: backend.port,
                    proto: pkt.proto,
                };
                if let Some((address, port)) = snat {
                    flow.src = address;
                    flow.sport = port;
                }
                pmtu::route(ctx, pkt, &flow, false, Some((&kept, (backend.address, backend.port))))?
            }
        };
        let route = match checked {
            pmtu::Checked::Fits(route) => route,
            pmtu::Checked::Settled(outcome) => return Ok(Some(outcome)),
        };
        return to_backend(ctx, pkt, &backend, snat, route, Counter::Established).map(Some);
    }
    // Only plain values live on from the tracked entry: an `Option` of the
    // whole entry kept across the helper calls below leaves its undefined
    // `None` payload in registers, which the verifier refuses to spill.
    let was_tracked = tracked.is_some();
    let previous = match tracked {
        Some(tracked) => PreviousSnat::of(tracked.fields()),
        None => PreviousSnat::none(),
    };
    let Some((frontend, svc)) = service::lookup_frontend(pkt) else {
        return Ok(None);
    };
    // Before anything else, as kube-proxy's firewall chain: a source
    // outside the ranges learns nothing, not even that there are no
    // endpoints.
    if !service::source_allowed(&svc, pkt) {
        frontend_stats::count(svc.frontend_id, FrontendEvent::Dropped);
        return Ok(Some(Outcome::drop(Counter::DropSourceRange)));
    }
    let (frontend, svc) = service::for_source::<V4>(frontend, svc, pkt);
    if svc.count == 0 {
        if svc.flags & FLAG_NO_LOCAL_ENDPOINTS != 0 {
            frontend_stats::count(svc.frontend_id, FrontendEvent::Dropped);
            return Ok(Some(Outcome::drop(Counter::DropNoLocalEndpoints)));
        }
        if !C::FINISHES_EVERY_PACKET {
            // The answer is built at tc.
            return Ok(Some(Outcome::next(Counter::XdpPassToTc)));
        }
        frontend_stats::count(svc.frontend_id, FrontendEvent::Rejected);
        return reject::reject(ctx, pkt).map(Some);
    }
    if !C::FINISHES_EVERY_PACKET && svc.flags & FLAG_SESSION_AFFINITY != 0 {
        // A ClientIP frontend's choice refreshes the client's entry and
        // counts a hit or miss; made at XDP and then passed on (a route
        // XDP cannot send along), tc would make and count it again. Its
        // new flows are started at tc; their later packets come back here.
        return Ok(Some(Outcome::next(Counter::XdpPassToTc)));
    }
    let outcome = start_flow(ctx, pkt, frontend, &svc, was_tracked, previous)?;
    if matches!(outcome.counter, Counter::NewFlow | Counter::Rebalanced) {
        frontend_stats::count(svc.frontend_id, FrontendEvent::NewFlow);
    }
    Ok(Some(outcome))
}

/// A tracked flow's backend, if it still exists: the one kept on its
/// entry under the current epoch (`route_cache`), else looked up by id.
#[inline(always)]
fn established_backend(pkt: &PacketV4, entry: &CtValueV4, kept: &Kept) -> Option<BackendV4> {
    if let Some((address, port)) = kept.backend() {
        return Some(BackendV4 { address, port, proto: pkt.proto, flags: 0 });
    }
    service::lookup_backend::<V4>(entry.backend_id)
}

/// A new flow to `frontend` (with endpoints): chooses its backend, tracks
/// it (with SNAT when its replies must come back through this node) and
/// sends the translated packet on.
#[inline(always)]
fn start_flow<C: Frame>(
    ctx: &C,
    pkt: &PacketV4,
    frontend: ServiceKeyV4,
    svc: &ServiceValue,
    was_tracked: bool,
    previous: PreviousSnat<V4>,
) -> PathResult<Outcome> {
    let (backend_id, backend) = choose_backend(pkt, frontend, svc)?;
    let counter = if was_tracked && !pkt.tcp_syn { Counter::Rebalanced } else { Counter::NewFlow };
    let entry = conntrack::new_value::<V4>(&frontend, svc, backend_id)?;
    if config::forward_through_stack()
        && svc.flags & FLAG_CLUSTER_IP == 0
        && route::is_local::<V4, C>(ctx, V4::unspecified(), frontend.address)
    {
        entry.flags |= FLAG_LOCAL_FRONTEND;
    }
    // Hairpin: a Pod balanced to itself would receive its own address as
    // source and drop the packet as a martian; it sees the frontend as its
    // peer instead, and its replies to the frontend come back here.
    let hairpin = backend.address == pkt.src;
    let masquerade = !hairpin && snat::needed(svc, backend.flags);
    let src = if hairpin { frontend.address } else { pkt.src };
    let to = Flow::<V4> { src, dst: backend.address, sport: pkt.sport, dport: backend.port, proto: pkt.proto };
    // Routed and checked against the MTU before anything is tracked or
    // rewritten: a DF packet too big is answered quoting what the client
    // sent (`pmtu`), and XDP can still pass the packet on untouched. A
    // masqueraded flow's route names the node address to SNAT to.
    let route = match pmtu::route(ctx, pkt, &to, masquerade, None)? {
        pmtu::Checked::Fits(route) => route,
        pmtu::Checked::Settled(outcome) => return Ok(outcome),
    };
    if hairpin {
        let to = SnatTo { address: frontend.address, route };
        return snat_flow(ctx, pkt, &backend, entry, to, previous, counter);
    }
    if masquerade {
        // Anything that is no plain forward (no route; too big without DF,
        // which the stack cannot fragment for a packet the datapath must
        // send itself) is dropped: the stack would drop an SNATed packet
        // as a martian.
        let Some(route) = route else {
            return Err(Counter::DropSnatNoAddress);
        };
        let to = SnatTo { address: route.source, route: Some(route) };
        return snat_flow(ctx, pkt, &backend, entry, to, previous, counter);
    }
    if conntrack::track(pkt, &backend, entry)? {
        return to_backend(ctx, pkt, &backend, None, route, counter);
    }
    // The backend's replies to this client port already belong to a flow
    // through another frontend: keep the client's address, take another
    // source port.
    let to = SnatTo { address: pkt.src, route };
    snat_flow(ctx, pkt, &backend, entry, to, previous, counter)
}

/// The source a new flow is translated to, and the route to its backend
/// (`None`: the stack's).
struct SnatTo {
    address: [u8; 4],
    route: Option<route::Route>,
}

/// Starts a source-NATed flow: claims a port on `to.address`, tracks the
/// flow, rewrites the packet and sends it on.
#[inline(always)]
fn snat_flow<C: Frame>(
    ctx: &C,
    pkt: &PacketV4,
    backend: &BackendV4,
    entry: &mut CtValueV4,
    to: SnatTo,
    previous: PreviousSnat<V4>,
    counter: Counter,
) -> PathResult<Outcome> {
    let previous = previous.port_for(entry.backend_id, to.address);
    let port = snat::allocate(pkt, backend, to.address, entry, previous)?;
    entry.nat_address = to.address;
    entry.nat_port = port;
    // An SNATed flow's reply entry is the one `allocate` claimed.
    conntrack::track(pkt, backend, entry)?;
    to_backend(ctx, pkt, backend, Some((to.address, port)), to.route, counter)
}

/// A new flow's backend: the client's affinity on a ClientIP frontend,
/// else the flow hash's pick.
#[inline(always)]
fn choose_backend(pkt: &PacketV4, frontend: ServiceKeyV4, svc: &ServiceValue) -> PathResult<(u32, BackendV4)> {
    if svc.flags & FLAG_SESSION_AFFINITY != 0 {
        let flow_hash = select::flow_hash(pkt);
        return affinity::choose::<V4>(frontend, svc, pkt.src, flow_hash).ok_or(Counter::DropMissingBackend);
    }
    let backend_id = select::backend_id(pkt, frontend, svc).ok_or(Counter::DropMissingBackend)?;
    let backend = service::lookup_backend::<V4>(backend_id).ok_or(Counter::DropMissingBackend)?;
    Ok((backend_id, backend))
}

/// Rewrites a client → frontend packet to go to `backend` (from the SNAT
/// address and port, if any) and sends it along `route` (`None`: to the
/// stack), which the caller looked up and checked.
#[inline(always)]
fn to_backend<C: Frame>(
    ctx: &C,
    pkt: &PacketV4,
    backend: &BackendV4,
    snat: Option<([u8; 4], u16)>,
    route: Option<route::Route>,
    counter: Counter,
) -> PathResult<Outcome> {
    let src = snat.unwrap_or((pkt.src, pkt.sport));
    nat::translate(ctx, pkt, src, (backend.address, backend.port))?;
    if snat.is_none() && config::forward_through_stack() {
        // The client's own source: the forward path takes it as it is.
        return Ok(Outcome { verdict: Verdict::Next, counter });
    }
    let verdict = match route {
        Some(route) => route::send(ctx, &route)?,
        None => Verdict::Next,
    };
    Ok(Outcome { verdict, counter })
}

/// Backend → client: restore the frontend as the source (and the client
/// as the destination, for an SNATed flow). `None`: not a reply of a
/// tracked flow.
#[inline(always)]
fn try_reply<C: Frame>(ctx: &C, pkt: &PacketV4) -> PathResult<Option<Outcome>> {
    let Some(entry) = conntrack::lookup_reply(pkt) else {
        return Ok(None);
    };
    conntrack::on_rst_mark_original(pkt, entry.fields());
    to_client(ctx, pkt, &entry).map(Some)
}

/// At tc egress: a reply of a tracked flow that this node's own stack
/// sends (a host-network backend's, which never crosses an ingress hook)
/// gets the frontend as its source, and the client back as its
/// destination when SNATed. It is on its way out already: no routing.
/// Any other packet is left alone, uncounted (`None`).
#[inline(always)]
pub fn reverse_at_egress(ctx: &TcContext) -> Option<Outcome> {
    let pkt = parse::parse_v4(ctx).ok()?;
    if !service::may_be_backend_reply(&pkt) {
        return None;
    }
    let entry = conntrack::lookup_reply(&pkt)?.value();
    conntrack::on_rst_mark_original(&pkt, &entry);
    Some(match reverse(ctx, &pkt, &entry) {
        Ok(()) => Outcome { verdict: Verdict::Next, counter: Counter::ReplyNat },
        Err(drop_reason) => Outcome::drop(drop_reason),
    })
}

#[inline(always)]
fn to_client<C: Frame>(ctx: &C, pkt: &PacketV4, tracked: &conntrack::Tracked<V4>) -> PathResult<Outcome> {
    let entry = tracked.fields();
    let through_stack = config::forward_through_stack() && entry.flags & FLAG_LOCAL_FRONTEND == 0;
    let kept = Kept::at(tracked.route());
    let route = if through_stack {
        None
    } else if let Some(route) = kept.route(ctx, pkt.ip_total_len) {
        route
    } else {
        let mut flow = Flow::<V4> {
            src: entry.frontend_address,
            dst: pkt.dst,
            sport: entry.frontend_port,
            dport: pkt.dport,
            proto: pkt.proto,
        };
        if entry.has_snat() {
            flow.dst = entry.nat_address;
            flow.dport = entry.nat_port;
        }
        let lookup = route::resolve(ctx, &flow, pkt.ip_total_len, false);
        kept.keep(ctx, &lookup, pkt.ip_total_len, None);
        route::plain_forward(lookup)
    };
    if !route::can_send(ctx, &route) {
        return Ok(Outcome::next(Counter::XdpPassToTc));
    }
    reverse(ctx, pkt, entry)?;
    let verdict = match route {
        Some(route) => route::send(ctx, &route)?,
        None => Verdict::Next,
    };
    Ok(Outcome { verdict, counter: Counter::ReplyNat })
}

/// Rewrites a tracked flow's reply to come from the frontend (and go to
/// the client's own address and port when SNATed).
#[inline(always)]
fn reverse<C: Frame>(ctx: &C, pkt: &PacketV4, entry: &CtValueV4) -> PathResult<()> {
    let dst = if entry.has_snat() { (entry.nat_address, entry.nat_port) } else { (pkt.dst, pkt.dport) };
    nat::translate(ctx, pkt, (entry.frontend_address, entry.frontend_port), dst)
}
