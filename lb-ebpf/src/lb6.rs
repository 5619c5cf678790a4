//! The IPv6 packet paths, on the same modules as IPv4's (`conntrack`,
//! `service`, `select`, `route`, compiled for `V6`): client → frontend
//! (DNAT to a backend) and backend → client (reverse NAT), each step one
//! O(1) map operation, then sent on by `route`.
//!
//! ClientIP affinity as for IPv4 (`affinity`, with `LB6_AFFINITY`).
//!
//! Source NAT as for IPv4 (external traffic to a backend on another
//! node, hairpin, a reply tuple taken by another frontend's flow), with
//! ports from the same range and the same allocator (`snat`).
//!
//! The in-cluster short-circuit of a Local external frontend for Pods
//! (`service::for_source`, with `LB6_POD_CIDRS`) as for IPv4.
//!
//! Where IPv6 differs:
//! - Path MTU: a client → frontend packet too big for the route to its
//!   backend is answered with packet too big before any rewrite, as
//!   IPv4's DF packets are (`pmtu`); IPv6 routers never fragment, so
//!   every such packet is, except one with extension headers (left to
//!   the stack: the answer's quote would not reach its ports). A new
//!   flow's state is kept for the smaller packets that follow, except an
//!   SNATed one's (not tracked yet).
//!   ICMPv6 errors about NATed flows are translated (`icmp6_error`).
//!
//! `--forward-through-stack`: every translated packet goes to the stack's
//! forward path (where FORWARD rules see it), both ways, SNATed requests
//! and a NodePort's replies included. IPv4 sends those two itself, as the
//! stack drops a received packet with a local source address as a
//! martian; IPv6 forwarding has no such check.
//!
//! The same paths run at tc and at XDP (`frame` says what differs), as
//! IPv4's do: at XDP, a packet is routed before anything is tracked or
//! rewritten (`route_new_flow`, `send_to_backend`, `reply`), and one XDP cannot
//! send itself passes to tc untouched, with no state left behind; so do a
//! ClientIP frontend's new flows, a frontend without endpoints and a
//! packet too big for its route, which tc answers.
//!
//! The IPv6 code is split into BPF-to-BPF calls (`start_flow`, `route_new_flow`,
//! `send_to_backend`, `reply`, `reject`, ...): inlined, 16-byte addresses and
//! 40-byte keys take more stack than one frame may have, and frames add
//! up along a call chain, which may not pass 512 bytes either.

use aya_ebpf::programs::TcContext;
use lb_common::{
    backend::BackendV6,
    conntrack::CtValueV6,
    frontend_stats::FrontendEvent,
    proto,
    service::{FLAG_NO_LOCAL_ENDPOINTS, FLAG_SESSION_AFFINITY},
    stats::Counter,
};

use crate::{
    affinity, config, conntrack,
    family::{Backend, CtEntry, V6, v6_from_words},
    frame::Frame,
    frontend_stats, nat,
    parse::{self, ETH_LEN, PacketV6},
    parse6, pmtu,
    route::{self, Flow, Lookup},
    route_cache::Kept,
    select, service,
    snat::{self, PreviousSnat},
    verdict::{Outcome, PathResult, Verdict},
};

/// At tc ingress: an IPv6 TCP or UDP packet whose transport header
/// follows the fixed header (no extension headers) and that neither
/// prefilter lets through is passed right here, in the hook, counted as
/// passed, like IPv4's (`lb4::prefilter_then_handle`): most packets a
/// node carries are no Service's, and the call into the paths was most
/// of what one cost (`lb-bench --only packet-cost`, the IPv6 miss row).
/// Only its ports and destination are read, nothing else checked: the
/// paths parse and check whatever they are called for. Any other packet
/// (extension headers, ICMPv6, a candidate) is handled by the paths.
#[inline(always)]
pub fn prefilter_then_handle(ctx: &TcContext) -> Outcome {
    if is_no_candidate(ctx) {
        return Outcome::next(Counter::Passed);
    }
    handle_packet(ctx)
}

/// Whether the prefilters let this packet through to no path: a plain
/// IPv6 TCP or UDP packet neither to a possible frontend nor from a
/// possible backend port.
#[inline(always)]
fn is_no_candidate(ctx: &TcContext) -> bool {
    let Ok(start) = parse::ptr_at::<[u8; 8], _>(ctx, ETH_LEN) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let next = unsafe { (*start)[parse6::NEXT_HEADER_OFF] };
    if next != proto::TCP && next != proto::UDP {
        return false;
    }
    let (Ok(ports), Ok(dst)) = (
        parse::ptr_at::<[u8; 4], _>(ctx, ETH_LEN + parse6::IPV6_HDR_LEN),
        parse::ptr_at::<[u32; 4], _>(ctx, ETH_LEN + parse6::DST_OFF),
    ) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at; alignment: see `parse6::addresses`.
    let (ports, dst) = unsafe { (*ports, *dst) };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    !service::may_be_frontend_at::<V6>(v6_from_words(dst), dport) && !service::may_be_backend_reply_from(sport)
}

/// Decides what happens to one IPv6 packet at tc or XDP ingress.
///
/// The work is split into functions of their own (BPF-to-BPF calls),
/// each deciding and rewriting, and the sending (`send`, `reject`) is
/// done from here: a call chain's stack frames add up, and the chain may
/// not pass 512 bytes. The IPv4 paths are a call of their own too.
#[inline(never)]
pub fn handle_packet<C: Frame>(ctx: &C) -> Outcome {
    let mut pkt = core::mem::MaybeUninit::uninit();
    if let Err(pass_reason) = parse(ctx, &mut pkt) {
        return Outcome::next(pass_reason);
    }
    // SAFETY: `parse` wrote the whole packet when it succeeded.
    let pkt = unsafe { pkt.assume_init_ref() };
    match try_handle(ctx, pkt) {
        Ok(outcome) => outcome,
        Err(drop_reason) => Outcome::drop(drop_reason),
    }
}

/// Parses into the caller's `pkt`: a call of its own, so the parse's
/// temporaries take no room in the frame the rest of the path runs on.
#[inline(never)]
fn parse<C: Frame>(ctx: &C, pkt: &mut core::mem::MaybeUninit<PacketV6>) -> Result<(), Counter> {
    // Opaque to the optimiser: else, at XDP, it passes the context's
    // packet pointers in as arguments, zero-extended from the context's
    // 32-bit fields, and the verifier refuses arithmetic on `data_end`.
    let ctx = core::hint::black_box(ctx);
    pkt.write(parse6::parse_v6(ctx)?);
    Ok(())
}

/// What one path decided for a packet, when not simply sent on.
enum Step {
    /// Not this path's packet.
    Pass,
    Done(Outcome),
    /// A new flow to a frontend without endpoints: to be rejected.
    Reject,
}

#[inline(always)]
fn try_handle<C: Frame>(ctx: &C, pkt: &PacketV6) -> PathResult<Outcome> {
    if service::may_be_frontend(pkt) {
        // Filled in by the callee that finds it. Passed by pointer, not
        // returned in an `Option`: a `None`'s undefined payload, stored,
        // is refused by the verifier.
        let mut to = Target {
            backend: BackendV6::default(),
            nat: Nat { address: [0; 16], port: 0, backend_id: 0 },
            kept: Kept::none(),
        };
        let Target { backend, nat, kept } = &mut to;
        let counter = match tracked_backend(pkt, backend, nat, kept) {
            Tracked::Established => Counter::Established,
            tracked => {
                let mut flow = NewFlowOut {
                    entry: core::ptr::null_mut(),
                    count: FrontendCount { frontend_id: 0, event: None },
                    to: SnatTo::Client,
                };
                let new_flow = match start_flow::<C>(pkt, tracked == Tracked::Stale, backend, &mut flow) {
                    // Each step a call of its own, one after the other:
                    // nested, their frames and the SNAT port search's would
                    // pass the stack limit.
                    Ok(NewFlow::Chosen(counter)) => match route_new_flow(ctx, pkt, backend, &flow, nat) {
                        Ok(Routed::Ready) => match track(pkt, backend, &flow) {
                            Ok(true) => {
                                nat.port = 0;
                                Ok(())
                            }
                            Ok(false) => reclaim_previous_port(pkt, backend, &flow, nat)
                                .and_then(|()| claim_snat_port(pkt, backend, &mut flow, nat))
                                .and_then(|()| track(pkt, backend, &flow).map(drop)),
                            Err(reason) => Err(reason),
                        }
                        .map(|()| {
                            flow.count.event = Some(FrontendEvent::NewFlow);
                            NewFlow::Chosen(counter)
                        }),
                        // Not tracked: answered, and counted as what it is.
                        Ok(Routed::TooBig(mtu)) => return packet_too_big(ctx, mtu),
                        Ok(Routed::Pass) => return Ok(Outcome::next(Counter::XdpPassToTc)),
                        Err(reason) => Err(reason),
                    },
                    other => other,
                };
                // Counted here, not in `start_flow`: a call from there would
                // lengthen the call chain past the stack limit.
                if let Some(counted) = flow.count.event {
                    frontend_stats::count(flow.count.frontend_id, counted);
                }
                match new_flow? {
                    NewFlow::Chosen(counter) => counter,
                    NewFlow::Not(Step::Pass) => return try_reply_or_pass(ctx, pkt),
                    NewFlow::Not(Step::Done(outcome)) => return Ok(outcome),
                    NewFlow::Not(Step::Reject) => return reject(ctx, pkt),
                }
            }
        };
        return match send_to_backend(ctx, pkt, &to)? {
            ToBackend::Sent(verdict) => Ok(Outcome { verdict, counter }),
            ToBackend::TooBig(mtu) => packet_too_big(ctx, mtu),
            ToBackend::Pass => Ok(Outcome::next(Counter::XdpPassToTc)),
        };
    }
    try_reply_or_pass(ctx, pkt)
}

#[inline(always)]
fn try_reply_or_pass<C: Frame>(ctx: &C, pkt: &PacketV6) -> PathResult<Outcome> {
    if service::may_be_backend_reply(pkt) {
        return Ok(Outcome::from_bits(reply_call(ctx, pkt)));
    }
    Ok(Outcome::next(Counter::Passed))
}

/// `reply` as a call of its own, its outcome in one scalar
/// (`Outcome::into_bits`): the verifier refuses a call that returns an
/// aggregate through its caller's stack.
#[inline(never)]
fn reply_call<C: Frame>(ctx: &C, pkt: &PacketV6) -> u64 {
    let outcome = match reply(ctx, pkt) {
        Ok(Replied::Sent(verdict)) => Outcome { verdict, counter: Counter::ReplyNat },
        Ok(Replied::Pass) => Outcome::next(Counter::XdpPassToTc),
        Ok(Replied::NotTracked) => Outcome::next(Counter::Passed),
        Err(drop_reason) => Outcome::drop(drop_reason),
    };
    outcome.into_bits()
}

/// Whether a client → frontend packet belongs to a tracked flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tracked {
    Untracked,
    /// Tracked, but to be balanced afresh: a SYN, or its backend is gone.
    Stale,
    /// Tracked, its backend written to the caller's.
    Established,
}

/// A flow's source NAT: the address and port that replace the client's
/// (port 0: none). For a new flow, until it is tracked: the tuple's
/// previous source NAT and the backend it was for (`tracked_backend`).
struct Nat {
    /// Bytes, not a `u128`: its 16-byte alignment would cost stack on
    /// the longest call chain.
    address: [u8; 16],
    port: u16,
    backend_id: u32,
}

impl Nat {
    #[inline(always)]
    fn address(&self) -> u128 {
        u128::from_ne_bytes(self.address)
    }

    #[inline(always)]
    fn set_address(&mut self, address: u128) {
        self.address = address.to_ne_bytes();
    }
}

/// Where a client → frontend packet goes: its backend and source NAT, and
/// for a tracked flow where it keeps its route (`route_cache`; a new flow
/// keeps none yet), in one struct. Passed apart, the compiler turns the
/// small ones into their fields, and a BPF call takes at most five
/// registers.
struct Target {
    backend: BackendV6,
    nat: Nat,
    kept: Kept,
}

/// Client → frontend, conntrack first, as for IPv4 (`lb4::try_forward`
/// says why): writes the tracked flow's backend to `backend`, its source
/// NAT to `nat`, and where it keeps its route to `kept`. A SYN is
/// balanced afresh: its tuple's source NAT so far goes to `nat` too, with
/// the backend it was for, so that a retransmitted SYN keeps its port
/// (`snat::PreviousSnat` says why).
#[inline(never)]
fn tracked_backend(pkt: &PacketV6, backend: &mut BackendV6, nat: &mut Nat, kept: &mut Kept) -> Tracked {
    let Some(tracked) = conntrack::lookup_original(pkt) else {
        return Tracked::Untracked;
    };
    let entry = tracked.fields();
    if pkt.tcp_syn {
        let (address, port) = entry.nat();
        (nat.address, nat.port) = (address.to_ne_bytes(), port);
        nat.backend_id = entry.backend_id;
        return Tracked::Stale;
    }
    let Some(found) = service::lookup_backend::<V6>(entry.backend_id) else {
        return Tracked::Stale;
    };
    conntrack::on_rst_mark_reply(pkt, &found, entry);
    *backend = found;
    let (address, port) = entry.nat();
    (nat.address, nat.port) = (address.to_ne_bytes(), port);
    *kept = Kept::at(tracked.route());
    Tracked::Established
}

/// The per-frontend counter a new flow moves (`frontend_stats`).
struct FrontendCount {
    frontend_id: u32,
    event: Option<FrontendEvent>,
}

/// What a packet that opens a flow leads to.
enum NewFlow {
    /// A backend was chosen and written to the caller's; the flow is yet
    /// to be routed and tracked (`route_new_flow`, `track`, and for SNAT
    /// `reclaim_previous_port`, `claim_snat_port`), with
    /// the source `NewFlowOut::to` names.
    Chosen(Counter),
    /// Anything else.
    Not(Step),
}

/// Which source a new flow leaves with, as for IPv4 (`lb4`).
#[derive(Clone, Copy)]
enum SnatTo {
    /// The client's address and port, untranslated; unless the backend's
    /// replies to that port already belong to a flow through another
    /// frontend: then the client's address and another port.
    Client,
    /// External traffic to a backend on another node: the node's source
    /// address on the route to the backend.
    Route,
    /// Hairpin: a Pod balanced to itself sees the frontend as its peer.
    Frontend,
}

/// What `start_flow` hands on besides its backend, in one struct: a BPF
/// call takes at most five arguments.
struct NewFlowOut {
    /// The flow's conntrack value, built in this CPU's scratch slot
    /// (`conntrack::new_value`) whenever a backend is chosen; there, not
    /// on the stack, which the longest call chain has no room for.
    entry: *mut CtValueV6,
    count: FrontendCount,
    /// The source the flow leaves with.
    to: SnatTo,
}

/// A new flow (or a tracked one whose backend is gone): chooses its
/// backend and the source it leaves with.
#[inline(never)]
fn start_flow<C: Frame>(
    pkt: &PacketV6,
    was_tracked: bool,
    chosen: &mut BackendV6,
    out: &mut NewFlowOut,
) -> PathResult<NewFlow> {
    let count = &mut out.count;
    let Some((frontend, svc)) = service::lookup_frontend(pkt) else {
        return Ok(NewFlow::Not(Step::Pass));
    };
    count.frontend_id = svc.frontend_id;
    let dropped = |count: &mut FrontendCount, reason| {
        count.event = Some(FrontendEvent::Dropped);
        Ok(NewFlow::Not(Step::Done(Outcome::drop(reason))))
    };
    // Before anything else, as for IPv4.
    if !service::source_allowed_v6(&svc, pkt) {
        return dropped(count, Counter::DropSourceRange);
    }
    let (frontend, svc) = service::for_source::<V6>(frontend, svc, pkt);
    count.frontend_id = svc.frontend_id;
    // What XDP leaves to tc is passed before it is counted: tc counts it.
    let to_tc = Ok(NewFlow::Not(Step::Done(Outcome::next(Counter::XdpPassToTc))));
    if svc.count == 0 {
        if svc.flags & FLAG_NO_LOCAL_ENDPOINTS != 0 {
            return dropped(count, Counter::DropNoLocalEndpoints);
        }
        if !C::FINISHES_EVERY_PACKET {
            // The answer is built at tc.
            return to_tc;
        }
        count.event = Some(FrontendEvent::Rejected);
        return Ok(NewFlow::Not(Step::Reject));
    }
    if !C::FINISHES_EVERY_PACKET && svc.flags & FLAG_SESSION_AFFINITY != 0 {
        // Its choice refreshes and counts the client's entry: made once,
        // at tc (`lb4::try_forward` says more).
        return to_tc;
    }
    let (backend_id, backend) = if svc.flags & FLAG_SESSION_AFFINITY != 0 {
        affinity::choose::<V6>(frontend, &svc, pkt.src, select::flow_hash(pkt)).ok_or(Counter::DropMissingBackend)?
    } else {
        let backend_id = select::backend_id(pkt, frontend, &svc).ok_or(Counter::DropMissingBackend)?;
        (backend_id, service::lookup_backend::<V6>(backend_id).ok_or(Counter::DropMissingBackend)?)
    };
    let counter = if was_tracked && !pkt.tcp_syn { Counter::Rebalanced } else { Counter::NewFlow };
    out.entry = conntrack::new_value::<V6>(&frontend, &svc, backend_id)?;
    *chosen = backend;
    out.to = if backend.address() == pkt.src {
        SnatTo::Frontend
    } else if snat::needed(&svc, backend.flags) {
        SnatTo::Route
    } else {
        SnatTo::Client
    };
    Ok(NewFlow::Chosen(counter))
}

/// What routing a new flow found (`route_new_flow`).
enum Routed {
    /// To be tracked from the source address written to the caller's.
    Ready,
    /// Not to be tracked: too big for the route to its backend (this
    /// MTU), and untouched, to be answered with packet too big.
    TooBig(u16),
    /// Not to be tracked: XDP cannot send it; it passes to tc untouched.
    Pass,
}

/// Writes the address a new flow leaves from to `nat.address`, routing
/// it first where that must come first:
/// - at XDP: a packet it cannot send itself passes to tc untouched
///   (`Routed::Pass`), with no state left behind;
/// - SNAT to the route's source (`SnatTo::Route`): the route names the
///   address. A first packet over the route's MTU is not tracked
///   (`TooBig`, for the caller to answer). A route that is no plain
///   forward (no route, no source address on it, or a packet too big
///   that cannot be answered) drops the flow, as for IPv4 without DF: the
///   stack would drop an SNATed packet as a martian.
///
/// At tc, any other flow is routed only when sent (`send_to_backend`).
#[inline(never)]
fn route_new_flow<C: Frame>(
    ctx: &C,
    pkt: &PacketV6,
    backend: &BackendV6,
    flow: &NewFlowOut,
    nat: &mut Nat,
) -> PathResult<Routed> {
    // SAFETY: `start_flow` built it before it chose a backend.
    let entry = unsafe { &*flow.entry };
    let previous = PreviousSnat::<V6>::new(nat.backend_id, nat.address(), nat.port);
    nat.set_address(match flow.to {
        SnatTo::Frontend => entry.frontend().0,
        SnatTo::Client | SnatTo::Route => pkt.src,
    });
    let to_route = matches!(flow.to, SnatTo::Route);
    if to_route || !C::FINISHES_EVERY_PACKET {
        let routed = Flow::<V6> {
            src: nat.address(),
            dst: backend.address(),
            sport: pkt.sport,
            dport: backend.port,
            proto: pkt.proto,
        };
        match route::resolve(ctx, &routed, pkt.ip_total_len, to_route) {
            Lookup::Route(route) if route::can_send(ctx, &Some(route)) => {
                if to_route {
                    nat.set_address(route.source);
                }
            }
            Lookup::TooBig { mtu } if C::FINISHES_EVERY_PACKET && answers_too_big(ctx, pkt, mtu)? => {
                return Ok(Routed::TooBig(mtu));
            }
            _ if !C::FINISHES_EVERY_PACKET => return Ok(Routed::Pass),
            _ => return Err(Counter::DropSnatNoAddress),
        }
    }
    // A retransmitted SYN keeps its port when it goes to the same backend
    // from the same address.
    nat.port = previous.port_for(entry.backend_id, nat.address()).unwrap_or(0);
    Ok(Routed::Ready)
}

/// Tracks a routed new flow as its entry stands: source-NATed once
/// `claim_snat_port` gave it a port; before that, only a flow that keeps
/// the client's address and port (`SnatTo::Client`). `false`: not
/// tracked, to be source-NATed (any other `SnatTo`, or the backend's
/// replies to the client's port already belong to a flow through another
/// frontend).
#[inline(never)]
fn track(pkt: &PacketV6, backend: &BackendV6, flow: &NewFlowOut) -> PathResult<bool> {
    // Opaque: else its fields are passed instead of the reference, more
    // registers than a BPF call has.
    let flow = core::hint::black_box(flow);
    // SAFETY: `start_flow` built it before it chose a backend.
    let entry = unsafe { &*flow.entry };
    if !entry.has_snat() && !matches!(flow.to, SnatTo::Client) {
        return Ok(false);
    }
    conntrack::track(pkt, backend, entry)
}

/// A retransmitted SYN's port (`nat.port`, 0: none) is claimed again if
/// its reply entry still restores this client; else `nat.port` becomes 0.
#[inline(never)]
fn reclaim_previous_port(pkt: &PacketV6, backend: &BackendV6, flow: &NewFlowOut, nat: &mut Nat) -> PathResult<()> {
    // Opaque: else the two fields read are passed instead of the
    // reference, more registers than a BPF call has.
    let pkt = core::hint::black_box(pkt);
    if nat.port != 0 {
        // SAFETY: `start_flow` built it before it chose a backend.
        let entry = unsafe { &*flow.entry };
        if !snat::reclaim(pkt, backend, nat.address(), entry, nat.port) {
            nat.port = 0;
        }
    }
    Ok(())
}

/// Source-NATs a routed new flow from `nat.address`, with the port
/// `nat.port` holds or, if none, a port it claims (its reply entry, which
/// `track` then leaves alone) and writes there. (By `&mut`: a shared
/// reference is passed as its fields, too many for a BPF call.)
#[inline(never)]
fn claim_snat_port(pkt: &PacketV6, backend: &BackendV6, flow: &mut NewFlowOut, nat: &mut Nat) -> PathResult<()> {
    // SAFETY: `start_flow` built it before it chose a backend.
    let entry = unsafe { &mut *flow.entry };
    if nat.port == 0 {
        nat.port = snat::allocate(pkt, backend, nat.address(), entry, None)?;
    }
    entry.set_nat(nat.address(), nat.port);
    Ok(())
}

/// Where a client → frontend packet went.
enum ToBackend {
    Sent(Verdict),
    /// Not sent: too big for the route to the backend (this MTU), and
    /// untouched, to be answered with packet too big.
    TooBig(u16),
    /// Not sent, untouched: XDP cannot send it; it passes to tc.
    Pass,
}

/// Routes a client → frontend packet to `backend` (from the SNAT address
/// and port, if any), then rewrites it and sends it on. A tracked flow's
/// route is the one it keeps, when current (`route_cache`); else it is
/// looked up, and kept. The route comes first: a packet too big for it is
/// answered as the client sent it (`pmtu` says why), where the stack
/// would quote it translated; and XDP can still pass on untouched what it
/// cannot send. (Kept answers are plain forwards or the stack's, never
/// too big: a longer packet than the one looked up is looked up again.)
#[inline(never)]
fn send_to_backend<C: Frame>(ctx: &C, pkt: &PacketV6, to: &Target) -> PathResult<ToBackend> {
    let (backend, snat) = (&to.backend, &to.nat);
    let (src, sport) = if snat.port != 0 { (snat.address(), snat.port) } else { (pkt.src, pkt.sport) };
    let kept = &to.kept;
    let route = if let Some(route) = kept.route::<V6, C>(ctx, pkt.ip_total_len) {
        if !route::can_send(ctx, &route) {
            return Ok(ToBackend::Pass);
        }
        route
    } else {
        let flow = Flow::<V6> { src, dst: backend.address(), sport, dport: backend.port, proto: pkt.proto };
        let lookup = route::resolve(ctx, &flow, pkt.ip_total_len, false);
        kept.keep(ctx, &lookup, pkt.ip_total_len, None);
        match lookup {
            Lookup::Route(route) if route::can_send(ctx, &Some(route)) => Some(route),
            Lookup::TooBig { mtu } if answers_too_big(ctx, pkt, mtu)? => return Ok(ToBackend::TooBig(mtu)),
            _ if !C::FINISHES_EVERY_PACKET => return Ok(ToBackend::Pass),
            // A GSO packet whose segments fit: the stack segments it.
            _ => None,
        }
    };
    nat::translate_v6(ctx, pkt, (src, sport), (backend.address(), backend.port))?;
    if config::forward_through_stack() {
        return Ok(ToBackend::Sent(Verdict::Next));
    }
    let verdict = match route {
        Some(route) => route::send(ctx, &route)?,
        None => Verdict::Next,
    };
    Ok(ToBackend::Sent(verdict))
}

/// Whether a packet the route's MTU is smaller than is to be answered
/// with packet too big: unless it is a GSO packet whose segments fit, or
/// carries extension headers (the answer's quote would not reach its
/// ports; the stack answers those).
#[inline(always)]
fn answers_too_big<C: Frame>(ctx: &C, pkt: &PacketV6, mtu: u16) -> PathResult<bool> {
    Ok(!pkt.has_extension_headers() && pmtu::segment_len(ctx, pkt)? > u32::from(mtu))
}

/// ICMPv6 packet too big with the route's `mtu`, from the frontend,
/// quoting the packet as the client sent it (still untouched). XDP
/// passes it to tc, which answers.
#[inline(never)]
fn packet_too_big<C: Frame>(ctx: &C, mtu: u16) -> PathResult<Outcome> {
    if !ctx.answer_packet_too_big_v6(mtu)? {
        return Ok(Outcome::next(Counter::XdpPassToTc));
    }
    Ok(Outcome { verdict: Verdict::Redirect, counter: Counter::IcmpFragNeeded })
}

/// At tc egress, as `lb4::reverse_at_egress`: a reply the node's own
/// stack sends, translated back and left on its way. `None`: any other
/// packet, left alone and uncounted.
#[inline(never)]
pub fn reverse_at_egress(ctx: &TcContext) -> Option<Outcome> {
    let mut pkt = core::mem::MaybeUninit::uninit();
    parse(ctx, &mut pkt).ok()?;
    // SAFETY: `parse` wrote the whole packet when it succeeded.
    let pkt = unsafe { pkt.assume_init_ref() };
    if !service::may_be_backend_reply(pkt) {
        return None;
    }
    let tracked = conntrack::lookup_reply(pkt)?;
    let entry = tracked.fields();
    conntrack::on_rst_mark_original(pkt, entry);
    Some(match reverse(ctx, pkt, entry) {
        Ok(()) => Outcome { verdict: Verdict::Next, counter: Counter::ReplyNat },
        Err(drop_reason) => Outcome::drop(drop_reason),
    })
}

/// What became of a packet that may be a backend's reply.
enum Replied {
    NotTracked,
    Sent(Verdict),
    /// A reply XDP cannot send: untouched, to tc.
    Pass,
}

/// Backend → client: routed along the addresses and ports it is to
/// carry (the route the flow keeps, when current: `route_cache`), then
/// given the frontend as its source (and the client back as its
/// destination when SNATed) and sent on. Routed first, so that XDP can
/// pass on untouched what it cannot send.
#[inline(always)]
fn reply<C: Frame>(ctx: &C, pkt: &PacketV6) -> PathResult<Replied> {
    let Some(tracked) = conntrack::lookup_reply(pkt) else {
        return Ok(Replied::NotTracked);
    };
    let entry = tracked.fields();
    conntrack::on_rst_mark_original(pkt, entry);
    let kept = Kept::at(tracked.route());
    let route = if config::forward_through_stack() {
        None
    } else if let Some(route) = kept.route::<V6, C>(ctx, pkt.ip_total_len) {
        route
    } else {
        let (frontend, frontend_port) = entry.frontend();
        let mut flow =
            Flow::<V6> { src: frontend, dst: pkt.dst, sport: frontend_port, dport: pkt.dport, proto: pkt.proto };
        if entry.has_snat() {
            (flow.dst, flow.dport) = entry.nat();
        }
        let lookup = route::resolve(ctx, &flow, pkt.ip_total_len, false);
        kept.keep(ctx, &lookup, pkt.ip_total_len, None);
        route::plain_forward(lookup)
    };
    if !route::can_send(ctx, &route) {
        return Ok(Replied::Pass);
    }
    reverse(ctx, pkt, entry)?;
    Ok(Replied::Sent(match route {
        Some(route) => route::send(ctx, &route)?,
        None => Verdict::Next,
    }))
}

/// Rewrites a tracked flow's reply to come from the frontend (and go to
/// the client's own address and port when SNATed).
#[inline(always)]
fn reverse<C: Frame>(ctx: &C, pkt: &PacketV6, entry: &CtValueV6) -> PathResult<()> {
    let dst = if entry.has_snat() { entry.nat() } else { (pkt.dst, pkt.dport) };
    nat::translate_v6(ctx, pkt, entry.frontend(), dst)
}

/// No endpoints: ICMPv6 port unreachable, as ip6tables' REJECT sends.
/// A packet with extension headers is dropped instead (see
/// `icmp6_reply`), counted as a reject. XDP passes it to tc, which
/// answers (`start_flow` passes it before it is counted).
#[inline(never)]
fn reject<C: Frame>(ctx: &C, pkt: &PacketV6) -> PathResult<Outcome> {
    if pkt.has_extension_headers() {
        return Ok(Outcome::drop(Counter::RejectNoEndpoints));
    }
    if !ctx.answer_port_unreachable_v6()? {
        return Ok(Outcome::next(Counter::XdpPassToTc));
    }
    Ok(Outcome { verdict: Verdict::Redirect, counter: Counter::RejectNoEndpoints })
}
