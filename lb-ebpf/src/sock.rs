//! Socket-level translation for processes in the node's own network
//! namespace (cgroup `sock_addr` hooks), as Cilium's `bpf_sock.c` does.
//! Their packets never cross an interface's tc ingress before leaving, so
//! the destination is rewritten on the socket instead: connect4/6 (TCP and
//! connected UDP) and sendmsg4/6 (each unconnected UDP datagram) turn a
//! frontend into a backend chosen by the same lookup and selection as the
//! packet paths; recvmsg4/6 and getpeername4/6 show the frontend again,
//! from `LB4_SOCK_REV` / `LB6_SOCK_REV`. No packet is ever NATed, so no
//! conntrack entry is made.
//!
//! An IPv6 socket's IPv4-mapped destination (`::ffff:a.b.c.d`, what a
//! dual-stack socket connecting to an IPv4 address uses) is an IPv4
//! frontend: translated with the IPv4 tables and written back mapped.
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
//!   the source address is not chosen yet at connect time either (`::`
//!   for IPv6 frontends).

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::generated::{bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    affinity::NODE_CLIENT,
    backend::{BackendV4, BackendV6},
    service::{
        FLAG_NO_LOCAL_ENDPOINTS, FLAG_SESSION_AFFINITY, FLAG_SOURCE_RANGES, ServiceKeyV4, ServiceKeyV6, ServiceValue,
    },
    sock::{SockRevKeyV4, SockRevKeyV6, SockRevValueV4, SockRevValueV6},
    stats::Counter,
};

use crate::{
    affinity,
    family::{Backend, Family, V4, V6, v6_from_words, v6_words},
    maps::{LB4_SOCK_REV, LB6_SOCK_REV},
    select, service,
};

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

/// What differs between the families at the socket hooks: the reverse-NAT
/// table, and how a frontend's backend is chosen.
pub trait SockFamily: Family {
    /// The backend for `cookie`'s socket; `None`: an entry is missing.
    fn choose(frontend: Self::ServiceKey, svc: &ServiceValue, cookie: u64) -> Option<(u32, Self::Backend)>;
    fn record(cookie: u64, backend_id: u32, backend: &Self::Backend, frontend: (Self::Addr, u16)) -> bool;
    fn recorded(cookie: u64, backend: (Self::Addr, u16), proto: u8) -> Option<(Self::Addr, u16)>;
}

impl SockFamily for V4 {
    /// The node's affinity on a ClientIP frontend (every process of the
    /// node is one client, `NODE_CLIENT`), else the cookie's pick.
    #[inline(always)]
    fn choose(frontend: ServiceKeyV4, svc: &ServiceValue, cookie: u64) -> Option<(u32, BackendV4)> {
        if svc.flags & FLAG_SESSION_AFFINITY != 0 {
            return affinity::choose::<V4>(frontend, svc, NODE_CLIENT, select::socket_hash(cookie));
        }
        by_cookie::<V4>(frontend, svc, cookie)
    }

    #[inline(always)]
    fn record(cookie: u64, backend_id: u32, backend: &BackendV4, frontend: ([u8; 4], u16)) -> bool {
        let key = SockRevKeyV4::new(cookie, backend.address, backend.port, backend.proto);
        let value = SockRevValueV4::new(frontend.0, frontend.1, backend_id);
        LB4_SOCK_REV.insert(key, value, u64::from(BPF_ANY)).is_ok()
    }

    #[inline(always)]
    fn recorded(cookie: u64, backend: ([u8; 4], u16), proto: u8) -> Option<([u8; 4], u16)> {
        let key = SockRevKeyV4::new(cookie, backend.0, backend.1, proto);
        // SAFETY: copied out at once.
        unsafe { LB4_SOCK_REV.get(key) }.map(|f| (f.address, f.port))
    }
}

impl SockFamily for V6 {
    /// As for IPv4, the node is one client: the unspecified address `::`,
    /// never a packet's source.
    #[inline(always)]
    fn choose(frontend: ServiceKeyV6, svc: &ServiceValue, cookie: u64) -> Option<(u32, BackendV6)> {
        if svc.flags & FLAG_SESSION_AFFINITY != 0 {
            return affinity::choose::<V6>(frontend, svc, 0, select::socket_hash(cookie));
        }
        by_cookie::<V6>(frontend, svc, cookie)
    }

    #[inline(always)]
    fn record(cookie: u64, backend_id: u32, backend: &BackendV6, frontend: (u128, u16)) -> bool {
        let key = SockRevKeyV6::new(cookie, backend.address, backend.port, backend.proto);
        let value = SockRevValueV6::new(frontend.0.to_ne_bytes(), frontend.1, backend_id);
        LB6_SOCK_REV.insert(key, value, u64::from(BPF_ANY)).is_ok()
    }

    #[inline(always)]
    fn recorded(cookie: u64, backend: (u128, u16), proto: u8) -> Option<(u128, u16)> {
        let key = SockRevKeyV6::new(cookie, backend.0.to_ne_bytes(), backend.1, proto);
        // SAFETY: copied out at once.
        unsafe { LB6_SOCK_REV.get(key) }.map(|f| (u128::from_ne_bytes(f.address), f.port))
    }
}

/// The cookie's pick among a frontend's backends.
#[inline(always)]
fn by_cookie<F: Family>(frontend: F::ServiceKey, svc: &ServiceValue, cookie: u64) -> Option<(u32, F::Backend)> {
    let backend_id = select::backend_id_for::<F>(select::socket_hash(cookie), frontend, svc)?;
    Some((backend_id, service::lookup_backend::<F>(backend_id)?))
}

/// What a connect or send to an address becomes.
enum Translated<A> {
    /// Not a frontend (`None`), or left alone (counted).
    Pass(Option<Counter>),
    /// Sent to this backend instead.
    To(A, u16),
    /// Failed with this errno.
    Reject(i32, Counter),
}

/// The destination the application gave: address, port (host byte
/// order), protocol. `user_ip6` is read word by word: the kernel allows
/// no wider access to it.
#[inline(always)]
fn destination_v4(ctx: &SockAddrContext) -> ([u8; 4], u16, u8) {
    // SAFETY: the kernel passes a valid `bpf_sock_addr`; these fields are
    // readable from every sock_addr hook.
    let sa = unsafe { &*ctx.sock_addr };
    (sa.user_ip4.to_ne_bytes(), u16::from_be(sa.user_port as u16), sa.protocol as u8)
}

#[inline(always)]
fn destination_v6(ctx: &SockAddrContext) -> ([u32; 4], u16, u8) {
    let sa = ctx.sock_addr;
    let mut words = [0u32; 4];
    for (i, word) in words.iter_mut().enumerate() {
        // SAFETY: as above; a 4-byte read of one word of `user_ip6`.
        *word = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip6[i])) };
    }
    // SAFETY: as above.
    let (port, proto) = unsafe { ((*sa).user_port, (*sa).protocol) };
    (words, u16::from_be(port as u16), proto as u8)
}

#[inline(always)]
fn set_destination_v4(ctx: &SockAddrContext, address: [u8; 4], port: u16) {
    // SAFETY: as above; `user_ip4` and `user_port` are writable from the
    // connect, sendmsg, recvmsg and getpeername hooks.
    let sa = unsafe { &mut *ctx.sock_addr };
    sa.user_ip4 = u32::from_ne_bytes(address);
    sa.user_port = u32::from(port.to_be());
}

/// Word by word, each a 4-byte store: the only writes the kernel allows.
#[inline(always)]
fn set_destination_v6(ctx: &SockAddrContext, words: [u32; 4], port: u16) {
    let sa = ctx.sock_addr;
    for (i, word) in words.iter().enumerate() {
        // SAFETY: as above; `user_ip6` is writable from the same hooks.
        unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip6[i]), *word) };
    }
    // SAFETY: as above.
    unsafe { (*sa).user_port = u32::from(port.to_be()) };
}

/// `::ffff:a.b.c.d`: the IPv4 address an IPv6 socket reaches this way.
#[inline(always)]
fn mapped_v4(words: [u32; 4]) -> Option<[u8; 4]> {
    (words[0] == 0 && words[1] == 0 && words[2] == 0xffff_u32.to_be()).then(|| words[3].to_ne_bytes())
}

#[inline(always)]
fn map_v4(address: [u8; 4]) -> [u32; 4] {
    [0, 0, 0xffff_u32.to_be(), u32::from_ne_bytes(address)]
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper takes the program's context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// A frontend at (`address`, `port`, `proto`) becomes a backend of it,
/// and the pair is recorded for the reverse hooks.
#[inline(always)]
fn translate_at<F: SockFamily>(address: F::Addr, port: u16, proto: u8, cookie: u64) -> Translated<F::Addr> {
    let Some((frontend, svc)) = service::lookup_frontend_at::<F>(address, port, proto) else {
        return Translated::Pass(None);
    };
    if svc.flags & FLAG_SOURCE_RANGES != 0 {
        return Translated::Pass(Some(Counter::SockPassSourceRanges));
    }
    let (frontend, svc) = service::in_cluster::<F>(frontend, svc);
    if svc.count == 0 {
        if svc.flags & FLAG_NO_LOCAL_ENDPOINTS != 0 {
            return Translated::Reject(ECONNREFUSED, Counter::SockRejectNoLocalEndpoints);
        }
        return Translated::Reject(ECONNREFUSED, Counter::SockRejectNoEndpoints);
    }
    let Some((backend_id, backend)) = F::choose(frontend, &svc, cookie) else {
        return Translated::Reject(EAGAIN, Counter::SockMissingBackend);
    };
    if !F::record(cookie, backend_id, &backend, (address, port)) {
        return Translated::Reject(ENOMEM, Counter::SockRevNatFull);
    }
    Translated::To(backend.address(), backend.port())
}

/// Carries out a translation with `set` (the hook's way of writing its
/// destination).
#[inline(always)]
fn apply<A>(translated: Translated<A>, set: impl FnOnce(A, u16)) -> SockOutcome {
    match translated {
        Translated::Pass(counter) => SockOutcome { ret: ALLOW, counter },
        Translated::To(address, port) => {
            set(address, port);
            SockOutcome { ret: ALLOW, counter: Some(Counter::SockTranslated) }
        }
        Translated::Reject(errno, counter) => {
            // SAFETY: allowed in connect and sendmsg, the hooks that
            // reject. If it failed, the call would fail with EPERM: still
            // a failure.
            unsafe { bpf_set_retval(-errno) };
            SockOutcome { ret: REJECT, counter: Some(counter) }
        }
    }
}

/// connect4 and sendmsg4.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext) -> SockOutcome {
    let (address, port, proto) = destination_v4(ctx);
    apply(translate_at::<V4>(address, port, proto, cookie(ctx)), |a, p| set_destination_v4(ctx, a, p))
}

/// connect6 and sendmsg6: an IPv4-mapped destination through the IPv4
/// tables, written back mapped.
#[inline(always)]
pub fn translate6(ctx: &SockAddrContext) -> SockOutcome {
    let (dst, port, proto) = destination_v6(ctx);
    let cookie = cookie(ctx);
    match mapped_v4(dst) {
        Some(v4) => apply(translate_at::<V4>(v4, port, proto, cookie), |a, p| set_destination_v6(ctx, map_v4(a), p)),
        None => apply(translate_at::<V6>(v6_from_words(dst), port, proto, cookie), |a, p| {
            set_destination_v6(ctx, v6_words(a), p)
        }),
    }
}

/// A reverse hook's outcome: the frontend shown again, or nothing to do.
#[inline(always)]
fn reversed(found: bool) -> SockOutcome {
    SockOutcome { ret: ALLOW, counter: found.then_some(Counter::SockReverseNat) }
}

/// recvmsg4 and getpeername4: an address that is the backend this socket
/// was translated to is shown as the frontend. These hooks cannot fail the
/// call: they always allow.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> SockOutcome {
    let (address, port, proto) = destination_v4(ctx);
    let frontend = V4::recorded(cookie(ctx), (address, port), proto);
    if let Some((address, port)) = frontend {
        set_destination_v4(ctx, address, port);
    }
    reversed(frontend.is_some())
}

/// recvmsg6 and getpeername6, IPv4-mapped addresses included.
#[inline(always)]
pub fn reverse6(ctx: &SockAddrContext) -> SockOutcome {
    let (peer, port, proto) = destination_v6(ctx);
    let cookie = cookie(ctx);
    let frontend = match mapped_v4(peer) {
        Some(v4) => V4::recorded(cookie, (v4, port), proto).map(|(a, p)| (map_v4(a), p)),
        None => V6::recorded(cookie, (v6_from_words(peer), port), proto).map(|(a, p)| (v6_words(a), p)),
    };
    if let Some((words, port)) = frontend {
        set_destination_v6(ctx, words, port);
    }
    reversed(frontend.is_some())
}
