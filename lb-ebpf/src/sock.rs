//! Socket-level translation for processes in the node's own network
//! namespace (cgroup `sock_addr` hooks), as Cilium's `bpf_sock.c` does.
//! Their packets never cross an interface's tc ingress before leaving, so
//! the destination is rewritten on the socket instead: connect4 (TCP and
//! connected UDP) and sendmsg4 (each unconnected UDP datagram) turn a
//! frontend into a backend chosen by the same lookup and selection as
//! `lb4`; recvmsg4 and getpeername4 show the frontend again, from
//! `LB4_SOCK_REV`. No packet is ever NATed, so no conntrack entry is made.
//!
//! Policy, stated once (see docs/semantics.md, "The node's own traffic"):
//! - A frontend with no endpoints fails the call with ECONNREFUSED
//!   (kube-proxy's REJECT makes a local connect fail the same way).
//! - An external frontend under a Local policy uses its in-cluster entry
//!   (cluster-wide endpoints, as kube-proxy serves node traffic) when the
//!   agent wrote one; else its local endpoints, and ECONNREFUSED if none.
//! - A frontend with `loadBalancerSourceRanges` is left untranslated: the
//!   source address is not chosen yet at connect time, so it cannot be
//!   checked; the traffic goes to the load balancer, which checks it.
//! - ClientIP affinity holds for the node as one client (`NODE_CLIENT`):
//!   the source address is not chosen yet at connect time either.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::generated::{bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    affinity::NODE_CLIENT,
    backend::BackendV4,
    service::{FLAG_NO_LOCAL_ENDPOINTS, FLAG_SESSION_AFFINITY, FLAG_SOURCE_RANGES, ServiceKeyV4, ServiceValue},
    sock::{SockRevKeyV4, SockRevValueV4},
    stats::Counter,
};

use crate::{affinity, family::V4, maps::LB4_SOCK_REV, select, service};

/// What a cgroup `sock_addr` program returns to let the call go on.
pub const ALLOW: i32 = 1;
/// What it returns to fail the call (with the errno set by `bpf_set_retval`).
pub const REJECT: i32 = 0;

const ECONNREFUSED: i32 = 111;
const EAGAIN: i32 = 11;
const ENOMEM: i32 = 12;

/// The outcome of one hook run: the return value and the counter to bump
/// (None: not Service traffic, not counted).
pub struct SockOutcome {
    pub ret: i32,
    pub counter: Option<Counter>,
}

/// The destination the application gave: address (network byte order),
/// port (host byte order), protocol.
#[inline(always)]
fn destination(ctx: &SockAddrContext) -> ([u8; 4], u16, u8) {
    // SAFETY: the kernel passes a valid `bpf_sock_addr`; these fields are
    // readable from every sock_addr hook.
    let sa = unsafe { &*ctx.sock_addr };
    (sa.user_ip4.to_ne_bytes(), u16::from_be(sa.user_port as u16), sa.protocol as u8)
}

#[inline(always)]
fn set_destination(ctx: &SockAddrContext, address: [u8; 4], port: u16) {
    // SAFETY: as above; `user_ip4` and `user_port` are writable from the
    // connect, sendmsg, recvmsg and getpeername hooks.
    let sa = unsafe { &mut *ctx.sock_addr };
    sa.user_ip4 = u32::from_ne_bytes(address);
    sa.user_port = u32::from(port.to_be());
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper takes the program's context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Fails the call with `errno`, counted as `counter`.
#[inline(always)]
fn reject(errno: i32, counter: Counter) -> SockOutcome {
    // SAFETY: allowed in connect4 and sendmsg4, the hooks that reject. If
    // it failed, the call would fail with EPERM: still a failure.
    unsafe { bpf_set_retval(-errno) };
    SockOutcome { ret: REJECT, counter: Some(counter) }
}

/// connect4 and sendmsg4: a destination that is a frontend becomes a
/// backend of it, and the pair is recorded for the reverse hooks.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext) -> SockOutcome {
    let (address, port, proto) = destination(ctx);
    let Some((frontend, svc)) = service::lookup_frontend_at::<V4>(address, port, proto) else {
        return SockOutcome { ret: ALLOW, counter: None };
    };
    if svc.flags & FLAG_SOURCE_RANGES != 0 {
        return SockOutcome { ret: ALLOW, counter: Some(Counter::SockPassSourceRanges) };
    }
    let (frontend, svc) = service::in_cluster(frontend, svc);
    if svc.count == 0 {
        if svc.flags & FLAG_NO_LOCAL_ENDPOINTS != 0 {
            return reject(ECONNREFUSED, Counter::SockRejectNoLocalEndpoints);
        }
        return reject(ECONNREFUSED, Counter::SockRejectNoEndpoints);
    }
    let cookie = cookie(ctx);
    let Some((backend_id, backend)) = choose(frontend, &svc, cookie) else {
        return reject(EAGAIN, Counter::SockMissingBackend);
    };
    if !record(cookie, backend_id, &backend, (address, port)) {
        return reject(ENOMEM, Counter::SockRevNatFull);
    }
    set_destination(ctx, backend.address, backend.port);
    SockOutcome { ret: ALLOW, counter: Some(Counter::SockTranslated) }
}

/// A socket's backend: the node's affinity on a ClientIP frontend (every
/// process of the node is one client, `NODE_CLIENT`), else the cookie's
/// pick. `None`: a slot or backend entry is missing.
#[inline(always)]
fn choose(frontend: ServiceKeyV4, svc: &ServiceValue, cookie: u64) -> Option<(u32, BackendV4)> {
    if svc.flags & FLAG_SESSION_AFFINITY != 0 {
        return affinity::choose(frontend, svc, NODE_CLIENT, select::socket_hash(cookie));
    }
    let backend_id = select::backend_id_for::<V4>(select::socket_hash(cookie), frontend, svc)?;
    Some((backend_id, service::lookup_backend::<V4>(backend_id)?))
}

#[inline(always)]
fn record(cookie: u64, backend_id: u32, backend: &BackendV4, frontend: ([u8; 4], u16)) -> bool {
    let key = SockRevKeyV4::new(cookie, backend.address, backend.port, backend.proto);
    let value = SockRevValueV4::new(frontend.0, frontend.1, backend_id);
    LB4_SOCK_REV.insert(key, value, u64::from(BPF_ANY)).is_ok()
}

/// recvmsg4 and getpeername4: an address that is the backend this socket
/// was translated to is shown as the frontend. These hooks cannot fail the
/// call: they always allow.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> SockOutcome {
    let (address, port, proto) = destination(ctx);
    let key = SockRevKeyV4::new(cookie(ctx), address, port, proto);
    // SAFETY: copied out at once.
    let Some(frontend) = (unsafe { LB4_SOCK_REV.get(key) }).copied() else {
        return SockOutcome { ret: ALLOW, counter: None };
    };
    set_destination(ctx, frontend.address, frontend.port);
    SockOutcome { ret: ALLOW, counter: Some(Counter::SockReverseNat) }
}
