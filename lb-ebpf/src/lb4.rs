//! The IPv4 packet paths: client → frontend (DNAT to a backend) and
//! backend → client (reverse NAT). Each step is one O(1) map operation.

use aya_ebpf::programs::TcContext;
use lb_common::{
    backend::BackendV4,
    service::{FLAG_NO_LOCAL_ENDPOINTS, ServiceKeyV4, ServiceValue},
    stats::Counter,
};

use crate::{
    conntrack,
    nat::{self, Side},
    parse::{self, PacketV4},
    reject, select, service,
    verdict::{Outcome, PathResult},
};

/// Decides what happens to one packet at tc ingress.
#[inline(always)]
pub fn handle_packet(ctx: &TcContext) -> Outcome {
    let pkt = match parse::parse_v4(ctx) {
        Ok(pkt) => pkt,
        Err(pass_reason) => return Outcome::next(pass_reason),
    };
    let result = try_handle(ctx, &pkt);
    match result {
        Ok(outcome) => outcome,
        Err(drop_reason) => Outcome::drop(drop_reason),
    }
}

#[inline(always)]
fn try_handle(ctx: &TcContext, pkt: &PacketV4) -> PathResult<Outcome> {
    if service::may_be_frontend(pkt)
        && let Some(outcome) = try_forward(ctx, pkt)?
    {
        return Ok(outcome);
    }
    if service::may_be_backend_reply(pkt)
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
fn try_forward(ctx: &TcContext, pkt: &PacketV4) -> PathResult<Option<Outcome>> {
    let tracked = conntrack::lookup_original(pkt);
    if let Some(entry) = tracked
        && !pkt.tcp_syn
        && let Some(backend) = service::lookup_backend(entry.backend_id)
    {
        nat::rewrite(ctx, pkt, Side::Destination, backend.address, backend.port)?;
        return Ok(Some(Outcome::next(Counter::Established)));
    }
    let Some((frontend, svc)) = service::lookup_frontend(pkt) else {
        return Ok(None);
    };
    if svc.count == 0 {
        if svc.flags & FLAG_NO_LOCAL_ENDPOINTS != 0 {
            return Ok(Some(Outcome::drop(Counter::DropNoLocalEndpoints)));
        }
        return reject::reject(ctx, pkt).map(Some);
    }
    let (backend_id, backend) = choose_backend(pkt, frontend, &svc)?;
    conntrack::track(pkt, &frontend, &svc, backend_id, &backend)?;
    nat::rewrite(ctx, pkt, Side::Destination, backend.address, backend.port)?;
    let counter = if tracked.is_some() && !pkt.tcp_syn { Counter::Rebalanced } else { Counter::NewFlow };
    Ok(Some(Outcome::next(counter)))
}

#[inline(always)]
fn choose_backend(pkt: &PacketV4, frontend: ServiceKeyV4, svc: &ServiceValue) -> PathResult<(u32, BackendV4)> {
    let backend_id = select::backend_id(pkt, frontend, svc).ok_or(Counter::DropMissingBackend)?;
    let backend = service::lookup_backend(backend_id).ok_or(Counter::DropMissingBackend)?;
    Ok((backend_id, backend))
}

/// Backend → client: restore the frontend as the source. `None`: not a
/// reply of a tracked flow.
#[inline(always)]
fn try_reply(ctx: &TcContext, pkt: &PacketV4) -> PathResult<Option<Outcome>> {
    let Some(entry) = conntrack::lookup_reply(pkt) else {
        return Ok(None);
    };
    nat::rewrite(ctx, pkt, Side::Source, entry.frontend_address, entry.frontend_port)?;
    Ok(Some(Outcome::next(Counter::ReplyNat)))
}
