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
//! - `--forward-through-stack`: IPv6 flows are always sent on by the
//!   datapath, so FORWARD rules do not see them.
//!
//! The IPv6 code is split into BPF-to-BPF calls (`start_flow`, `snat_flow`,
//! `send_to_backend`, `try_reply`, `send`, `reject`, ...): inlined, 16-byte addresses and
//! 40-byte keys take more stack than one frame may have, and frames add
//! up along a call chain, which may not pass 512 bytes either.

use aya_ebpf::programs::TcContext;
use lb_common::{
    backend::BackendV6,
    conntrack::CtValueV6,
    frontend_stats::FrontendEvent,
    service::{FLAG_NO_LOCAL_ENDPOINTS, FLAG_SESSION_AFFINITY},
    stats::Counter,
};

use crate::{
    affinity, conntrack,
    family::{Backend, CtEntry, V6},
    frontend_stats, icmp6_reply,
    nat::{self, Side},
    parse::PacketV6,
    parse6, pmtu,
    route::{self, Flow, Lookup},
    select, service, snat,
    verdict::{Outcome, PathResult, Verdict},
};

/// Decides what happens to one IPv6 packet at tc ingress.
///
/// The work is split into functions of their own (BPF-to-BPF calls),
/// each deciding and rewriting, and the sending (`send`, `reject`) is
/// done from here: a call chain's stack frames add up, and the chain may
/// not pass 512 bytes. The IPv4 paths are a call of their own too.
#[inline(never)]
pub fn handle_packet(ctx: &TcContext) -> Outcome {
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
fn parse(ctx: &TcContext, pkt: &mut core::mem::MaybeUninit<PacketV6>) -> Result<(), Counter> {
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
fn try_handle(ctx: &TcContext, pkt: &PacketV6) -> PathResult<Outcome> {
    if service::may_be_frontend(pkt) {
        // Filled in by the callee that finds it. Passed by pointer, not
        // returned in an `Option`: a `None`'s undefined payload, stored,
        // is refused by the verifier.
        let mut to = Target { backend: BackendV6::default(), nat: Nat { address: 0, port: 0 } };
        let Target { backend, nat } = &mut to;
        let counter = match tracked_backend(pkt, backend, nat) {
            Tracked::Established => Counter::Established,
            tracked => {
                let mut flow = NewFlowOut {
                    entry: core::mem::MaybeUninit::uninit(),
                    count: FrontendCount { frontend_id: 0, event: None },
                    to: SnatTo::Route,
                };
                let new_flow = match start_flow(pkt, tracked == Tracked::Stale, backend, &mut flow) {
                    Ok(NewFlow::Snat(counter)) => match snat_flow(ctx, pkt, backend, &mut flow, nat) {
                        Ok(None) => {
                            flow.count.event = Some(FrontendEvent::NewFlow);
                            Ok(NewFlow::To(counter))
                        }
                        // Not tracked: answered, and counted as what it is.
                        Ok(Some(mtu)) => return packet_too_big(ctx, mtu),
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
                    NewFlow::To(counter) => counter,
                    // `Snat` was carried out just above: it is `To` by now.
                    NewFlow::Snat(..) | NewFlow::Not(Step::Pass) => return try_reply_or_pass(ctx, pkt),
                    NewFlow::Not(Step::Done(outcome)) => return Ok(outcome),
                    NewFlow::Not(Step::Reject) => return reject(ctx, pkt),
                }
            }
        };
        return match send_to_backend(ctx, pkt, &to)? {
            ToBackend::Sent(verdict) => Ok(Outcome { verdict, counter }),
            ToBackend::TooBig(mtu) => packet_too_big(ctx, mtu),
        };
    }
    try_reply_or_pass(ctx, pkt)
}

#[inline(always)]
fn try_reply_or_pass(ctx: &TcContext, pkt: &PacketV6) -> PathResult<Outcome> {
    if service::may_be_backend_reply(pkt) && try_reply(ctx, pkt)? {
        return Ok(Outcome { verdict: send(ctx, pkt)?, counter: Counter::ReplyNat });
    }
    Ok(Outcome::next(Counter::Passed))
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
/// (port 0: none).
struct Nat {
    address: u128,
    port: u16,
}

/// Where a client → frontend packet goes: its backend and source NAT, in
/// one struct. Passed apart, the compiler turns the two small ones into
/// their fields, and a BPF call takes at most five registers.
struct Target {
    backend: BackendV6,
    nat: Nat,
}

/// Client → frontend, conntrack first, as for IPv4 (`lb4::try_forward`
/// says why): writes the tracked flow's backend to `backend`, and its
/// source NAT to `nat`.
#[inline(never)]
fn tracked_backend(pkt: &PacketV6, backend: &mut BackendV6, nat: &mut Nat) -> Tracked {
    let Some(entry) = conntrack::lookup_original(pkt) else {
        return Tracked::Untracked;
    };
    if pkt.tcp_syn {
        return Tracked::Stale;
    }
    let Some(found) = service::lookup_backend::<V6>(entry.backend_id) else {
        return Tracked::Stale;
    };
    conntrack::on_rst_mark_reply(pkt, &found, &entry);
    *backend = found;
    (nat.address, nat.port) = entry.nat();
    Tracked::Established
}

/// The per-frontend counter a new flow moves (`frontend_stats`).
struct FrontendCount {
    frontend_id: u32,
    event: Option<FrontendEvent>,
}

/// What a packet that opens a flow leads to.
enum NewFlow {
    /// Tracked: to be sent to the backend written to the caller's.
    To(Counter),
    /// Chosen but not tracked yet: its replies must come back through
    /// this node, so it is source-NATed first (`snat_flow`, to the
    /// address `NewFlowOut::to` names).
    Snat(Counter),
    /// Anything else.
    Not(Step),
}

/// Which address a source-NATed flow takes, as for IPv4 (`lb4`).
#[derive(Clone, Copy)]
enum SnatTo {
    /// External traffic to a backend on another node: the node's source
    /// address on the route to the backend.
    Route,
    /// Hairpin: a Pod balanced to itself sees the frontend as its peer.
    Frontend,
    /// The backend's replies to the client's port already belong to a
    /// flow through another frontend: the client's address, another port.
    Client,
}

/// What `start_flow` hands on besides its backend, in one struct: a BPF
/// call takes at most five arguments.
struct NewFlowOut {
    /// The flow's conntrack value, written whenever a backend is chosen.
    entry: core::mem::MaybeUninit<CtValueV6>,
    count: FrontendCount,
    /// Where `NewFlow::Snat` translates the source to.
    to: SnatTo,
}

/// A new flow (or a tracked one whose backend is gone): chooses its
/// backend and tracks it, or leaves it to `snat_flow`.
#[inline(never)]
fn start_flow(pkt: &PacketV6, was_tracked: bool, chosen: &mut BackendV6, out: &mut NewFlowOut) -> PathResult<NewFlow> {
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
    if svc.count == 0 {
        if svc.flags & FLAG_NO_LOCAL_ENDPOINTS != 0 {
            return dropped(count, Counter::DropNoLocalEndpoints);
        }
        count.event = Some(FrontendEvent::Rejected);
        return Ok(NewFlow::Not(Step::Reject));
    }
    let (backend_id, backend) = if svc.flags & FLAG_SESSION_AFFINITY != 0 {
        affinity::choose::<V6>(frontend, &svc, pkt.src, select::flow_hash(pkt)).ok_or(Counter::DropMissingBackend)?
    } else {
        let backend_id = select::backend_id(pkt, frontend, &svc).ok_or(Counter::DropMissingBackend)?;
        (backend_id, service::lookup_backend::<V6>(backend_id).ok_or(Counter::DropMissingBackend)?)
    };
    let counter = if was_tracked && !pkt.tcp_syn { Counter::Rebalanced } else { Counter::NewFlow };
    let entry = out.entry.write(conntrack::new_value::<V6>(&frontend, &svc, backend_id));
    *chosen = backend;
    let to = if backend.address() == pkt.src {
        SnatTo::Frontend
    } else if snat::needed(&svc, backend.flags) {
        SnatTo::Route
    } else if !conntrack::track(pkt, &backend, entry)? {
        SnatTo::Client
    } else {
        out.count.event = Some(FrontendEvent::NewFlow);
        return Ok(NewFlow::To(counter));
    };
    out.to = to;
    Ok(NewFlow::Snat(counter))
}

/// Starts a source-NATed flow: claims a port on the address `to` names,
/// tracks the flow, and writes the translation to `nat`. A first packet
/// over the route's MTU is not tracked: `Some(mtu)`, for the caller to
/// answer (`packet_too_big`). A route that is no plain forward (no
/// route, no source address on it, or a packet too big that cannot be
/// answered) drops the flow, as for IPv4 without DF: the stack would
/// drop an SNATed packet as a martian.
#[inline(never)]
fn snat_flow(
    ctx: &TcContext,
    pkt: &PacketV6,
    backend: &BackendV6,
    flow: &mut NewFlowOut,
    nat: &mut Nat,
) -> PathResult<Option<u16>> {
    // SAFETY: `start_flow` wrote it before asking for SNAT.
    let entry = unsafe { flow.entry.assume_init_mut() };
    let address = match flow.to {
        SnatTo::Frontend => entry.frontend().0,
        SnatTo::Client => pkt.src,
        SnatTo::Route => {
            let flow = Flow::<V6> {
                src: pkt.src,
                dst: backend.address(),
                sport: pkt.sport,
                dport: backend.port,
                proto: pkt.proto,
            };
            match route::resolve(ctx, &flow, pkt.ip_total_len, true) {
                Lookup::Route(route) => route.source,
                Lookup::TooBig { mtu } if answers_too_big(ctx, pkt, mtu)? => return Ok(Some(mtu)),
                _ => return Err(Counter::DropSnatNoAddress),
            }
        }
    };
    let port = snat::allocate(pkt, backend, address, entry, None)?;
    entry.set_nat(address, port);
    // An SNATed flow's reply entry is the one `allocate` claimed.
    conntrack::track(pkt, backend, entry)?;
    (nat.address, nat.port) = (address, port);
    Ok(None)
}

/// Where a client → frontend packet went.
enum ToBackend {
    Sent(Verdict),
    /// Not sent: too big for the route to the backend (this MTU), and
    /// untouched, to be answered with packet too big.
    TooBig(u16),
}

/// Routes a client → frontend packet to `backend` (from the SNAT address
/// and port, if any), then rewrites it and sends it on. The route comes
/// first: a packet too big for it is answered as the client sent it
/// (`pmtu` says why), where the stack would quote it translated.
#[inline(never)]
fn send_to_backend(ctx: &TcContext, pkt: &PacketV6, to: &Target) -> PathResult<ToBackend> {
    let (backend, snat) = (&to.backend, &to.nat);
    let (src, sport) = if snat.port != 0 { (snat.address, snat.port) } else { (pkt.src, pkt.sport) };
    let flow = Flow::<V6> { src, dst: backend.address(), sport, dport: backend.port, proto: pkt.proto };
    let route = match route::resolve(ctx, &flow, pkt.ip_total_len, false) {
        Lookup::Route(route) => Some(route),
        Lookup::TooBig { mtu } if answers_too_big(ctx, pkt, mtu)? => return Ok(ToBackend::TooBig(mtu)),
        // A GSO packet whose segments fit: the stack segments it.
        Lookup::TooBig { .. } | Lookup::Stack => None,
    };
    nat::rewrite_v6(ctx, pkt, Side::Destination, backend.address(), backend.port)?;
    if snat.port != 0 {
        nat::rewrite_v6(ctx, pkt, Side::Source, snat.address, snat.port)?;
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
fn answers_too_big(ctx: &TcContext, pkt: &PacketV6, mtu: u16) -> PathResult<bool> {
    Ok(!pkt.has_extension_headers() && pmtu::segment_len(ctx, pkt)? > u32::from(mtu))
}

/// ICMPv6 packet too big with the route's `mtu`, from the frontend,
/// quoting the packet as the client sent it (still untouched).
#[inline(never)]
fn packet_too_big(ctx: &TcContext, mtu: u16) -> PathResult<Outcome> {
    icmp6_reply::send_packet_too_big(ctx, mtu)?;
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
    match try_reply(ctx, pkt) {
        Ok(true) => Some(Outcome { verdict: Verdict::Next, counter: Counter::ReplyNat }),
        Ok(false) => None,
        Err(drop_reason) => Some(Outcome::drop(drop_reason)),
    }
}

/// Backend → client: restores the frontend as the source. `false`: not
/// a reply of a tracked flow.
#[inline(never)]
fn try_reply(ctx: &TcContext, pkt: &PacketV6) -> PathResult<bool> {
    let Some(entry) = conntrack::lookup_reply(pkt) else {
        return Ok(false);
    };
    conntrack::on_rst_mark_original(pkt, &entry);
    let (frontend, frontend_port) = entry.frontend();
    let (client, client_port) = entry.nat();
    nat::rewrite_v6(ctx, pkt, Side::Source, frontend, frontend_port)?;
    if client_port != 0 {
        nat::rewrite_v6(ctx, pkt, Side::Destination, client, client_port)?;
    }
    Ok(true)
}

/// Sends a rewritten reply on (`route`), along the route of the
/// addresses and ports it now carries.
#[inline(never)]
fn send(ctx: &TcContext, pkt: &PacketV6) -> PathResult<Verdict> {
    let (src, dst) = parse6::addresses(ctx)?;
    let ports = nat::read_at::<4>(ctx, pkt.l4_off)?;
    let flow = Flow::<V6> {
        src,
        dst,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        proto: pkt.proto,
    };
    route::forward(ctx, &flow, pkt.ip_total_len)
}

/// No endpoints: ICMPv6 port unreachable, as ip6tables' REJECT sends.
/// A packet with extension headers is dropped instead (see
/// `icmp6_reply`), counted as a reject.
#[inline(never)]
fn reject(ctx: &TcContext, pkt: &PacketV6) -> PathResult<Outcome> {
    if pkt.has_extension_headers() {
        return Ok(Outcome::drop(Counter::RejectNoEndpoints));
    }
    icmp6_reply::send_port_unreachable(ctx)?;
    Ok(Outcome { verdict: Verdict::Redirect, counter: Counter::RejectNoEndpoints })
}
