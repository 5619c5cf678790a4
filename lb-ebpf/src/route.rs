//! After NAT: send the packet straight out of the interface the node's
//! routing table names, instead of handing it back to the stack.
//!
//! Why it is needed, not only faster: a reply translated back to a NodePort
//! or an SNATed flow's packets carry one of the node's own addresses as
//! source. Handed to the stack at ingress, such a packet fails the routing
//! input's martian check ("source is a local address") and is dropped.
//! Sent from here, it never meets that check, as if the node had
//! originated it. Other NATed packets skip the forward path too, which
//! costs less than a second pass through routing and netfilter.
//!
//! Which packets take it: every NATed packet whose route is a plain
//! unicast forward to a neighbour (known: MACs written and
//! `bpf_redirect`, or `bpf_redirect_peer` into a pod's namespace when the
//! route leaves through its veth; not yet resolved: `bpf_redirect_neigh`,
//! which resolves it). Everything else goes to the stack, which does the
//! right thing and answers with the right ICMP error: a local destination (a host-network
//! backend), no route, a packet larger than the route's MTU, a TTL about to
//! expire, forwarding disabled on the ingress interface. One exception: a
//! packet with DF set that is about to be DNATed and exceeds the MTU is
//! answered by `pmtu` instead, because the stack's answer would quote the
//! translated packet.
//!
//! At XDP only plain forwards to a known neighbour out of an interface
//! that takes XDP frames are sent (`can_send`, `frame`); everything else
//! passes to tc untouched, which then decides as above.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SRC, bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
};

use crate::{
    family::{Family, V4, V6, v6_from_words, v6_words},
    frame::Frame,
    nat,
    verdict::{PathResult, Verdict},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What routing needs to know of a family: how its addresses go into a
/// lookup and come out, and how a forwarded packet's hop count drops.
pub trait Routed: Family {
    fn set_addresses(params: &mut FibParams, src: Self::Addr, dst: Self::Addr);
    /// The source address a lookup with `BPF_FIB_LOOKUP_SRC` chose.
    fn source(params: &FibParams) -> Self::Addr;
    /// Decrements the TTL or hop limit; `Ok(false)` when it would expire.
    fn decrement_hops<C: Frame>(ctx: &C) -> PathResult<bool>;
}

impl Routed for V4 {
    #[inline(always)]
    fn set_addresses(params: &mut FibParams, src: [u8; 4], dst: [u8; 4]) {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    }

    #[inline(always)]
    fn source(params: &FibParams) -> [u8; 4] {
        // SAFETY: the union member the lookup writes for AF_INET.
        unsafe { params.__bindgen_anon_3.ipv4_src }.to_ne_bytes()
    }

    #[inline(always)]
    fn decrement_hops<C: Frame>(ctx: &C) -> PathResult<bool> {
        nat::decrement_ttl(ctx)
    }
}

impl Routed for V6 {
    #[inline(always)]
    fn set_addresses(params: &mut FibParams, src: u128, dst: u128) {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = v6_words(src);
        params.__bindgen_anon_4.ipv6_dst = v6_words(dst);
    }

    #[inline(always)]
    fn source(params: &FibParams) -> u128 {
        // SAFETY: the union member the lookup writes for AF_INET6.
        v6_from_words(unsafe { params.__bindgen_anon_3.ipv6_src })
    }

    #[inline(always)]
    fn decrement_hops<C: Frame>(ctx: &C) -> PathResult<bool> {
        nat::decrement_hop_limit(ctx)
    }
}

/// Storage for a `struct bpf_fib_lookup`, zeroed by eight 8-byte stores.
/// `mem::zeroed` (or any zeroing LLVM recognises as a memset of this
/// 4-byte-aligned struct) compiles to a call of a byte-at-a-time `memset`
/// loop: 64 iterations on every routed packet.
#[repr(C, align(8))]
struct FibWords(#[allow(dead_code)] [u64; 8]);

const _: () = assert!(size_of::<FibParams>() == size_of::<FibWords>());

/// Zeroes `words` in place by eight volatile 8-byte stores and returns
/// it as the lookup's parameters. In place: a zeroed value returned and
/// copied is again merged into a memset call.
#[inline(always)]
fn zeroed_params(words: &mut core::mem::MaybeUninit<FibWords>) -> &mut FibParams {
    let first = words.as_mut_ptr().cast::<u64>();
    for i in 0..8 {
        // SAFETY: within the aligned storage.
        unsafe { core::ptr::write_volatile(first.add(i), 0) };
    }
    // SAFETY: 8-byte aligned, as large as the struct, every byte written,
    // and all zero is a valid bpf_fib_lookup (plain data).
    unsafe { &mut *first.cast::<FibParams>() }
}

/// Where the routing table sends a packet.
pub struct Route<F: Family = V4> {
    /// Egress interface.
    pub ifindex: u32,
    /// The route's preferred source address on that interface (only when
    /// asked for). Network byte order.
    pub source: F::Addr,
    /// Next hop's and egress interface's MACs, when the neighbour is known.
    neighbour: Option<([u8; 6], [u8; 6])>,
}

impl<F: Family> Route<F> {
    /// A plain forward out of `ifindex` to a known neighbour.
    #[inline(always)]
    pub fn to_neighbour(ifindex: u32, dmac: [u8; 6], smac: [u8; 6], source: F::Addr) -> Self {
        Self { ifindex, source, neighbour: Some((dmac, smac)) }
    }

    /// The next hop's and egress interface's MACs, when known.
    #[inline(always)]
    pub fn neighbour(&self) -> Option<([u8; 6], [u8; 6])> {
        self.neighbour
    }
}

impl<F: Family> Clone for Route<F> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family> Copy for Route<F> {}

/// The packet's addresses and ports after NAT: what the lookup routes.
pub struct Flow<F: Family = V4> {
    pub src: F::Addr,
    pub dst: F::Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl<F: Family> Clone for Flow<F> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family> Copy for Flow<F> {}

/// What a route lookup found.
pub enum Lookup<F: Family = V4> {
    /// A plain forward to a neighbour.
    Route(Route<F>),
    /// A route exists, but a packet of the length asked about exceeds the
    /// MTU forwarding uses on it (a locked route MTU, a learned path MTU,
    /// or the device's).
    TooBig { mtu: u16 },
    /// Anything else (see the module comment): the stack decides.
    Stack,
}

/// Asks the routing table about `flow` as forwarding would for a packet
/// of `ip_total_len` bytes arriving on this packet's interface; the result
/// code, with `params` filled in by the kernel.
#[inline(always)]
fn fib<F: Routed, C: Frame>(ctx: &C, flow: &Flow<F>, ip_total_len: u16, flags: u32, params: &mut FibParams) -> u32 {
    F::set_addresses(params, flow.src, flow.dst);
    params.l4_protocol = flow.proto;
    params.sport = flow.sport.to_be();
    params.dport = flow.dport.to_be();
    params.__bindgen_anon_1.tot_len = ip_total_len;
    params.ifindex = ctx.ingress_ifindex();
    // SAFETY: `params` is a live stack struct of the size passed.
    unsafe { bpf_fib_lookup(ctx.raw(), params, size_of::<FibParams>() as i32, flags) as u32 }
}

/// Looks up the route for `flow` as forwarding would for a packet arriving
/// on this packet's interface, checking `ip_total_len` against its MTU.
/// `want_source` also asks for the source address the node would use on
/// the egress interface (for SNAT).
#[inline(always)]
pub fn resolve<F: Routed, C: Frame>(ctx: &C, flow: &Flow<F>, ip_total_len: u16, want_source: bool) -> Lookup<F> {
    let mut words = core::mem::MaybeUninit::uninit();
    let params = zeroed_params(&mut words);
    let flags = if want_source { BPF_FIB_LOOKUP_SRC } else { 0 };
    let neighbour = match fib(ctx, flow, ip_total_len, flags, params) {
        BPF_FIB_LKUP_RET_SUCCESS => Some((params.dmac, params.smac)),
        BPF_FIB_LKUP_RET_NO_NEIGH => None,
        // SAFETY: the union member the kernel writes with this result.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Lookup::TooBig { mtu: unsafe { params.__bindgen_anon_1.mtu_result } },
        _ => return Lookup::Stack,
    };
    Lookup::Route(Route { ifindex: params.ifindex, source: F::source(params), neighbour })
}

/// Whether `address` is one of the node's own: the routing table does not
/// forward to it (a local route; broadcast and multicast, which no
/// frontend is, answer the same).
#[inline(always)]
pub fn is_local<F: Routed, C: Frame>(ctx: &C, unspecified: F::Addr, address: F::Addr) -> bool {
    let mut words = core::mem::MaybeUninit::uninit();
    let params = zeroed_params(&mut words);
    let flow = Flow::<F> { src: unspecified, dst: address, sport: 0, dport: 0, proto: 0 };
    fib(ctx, &flow, 0, 0, params) == BPF_FIB_LKUP_RET_NOT_FWDED
}

/// `resolve`, for callers to whom anything but a plain forward means the
/// stack. `None`: not a plain forward (see the module comment).
#[inline(always)]
pub fn lookup<F: Routed, C: Frame>(ctx: &C, flow: &Flow<F>, ip_total_len: u16, want_source: bool) -> Option<Route<F>> {
    plain_forward(resolve(ctx, flow, ip_total_len, want_source))
}

/// The route of a lookup that found a plain forward; `None`: the stack's.
#[inline(always)]
pub fn plain_forward<F: Family>(lookup: Lookup<F>) -> Option<Route<F>> {
    match lookup {
        Lookup::Route(route) => Some(route),
        Lookup::TooBig { .. } | Lookup::Stack => None,
    }
}

/// Sends the (already NATed) packet out along `route`. `Verdict::Next`
/// when the TTL is about to expire: the stack answers that.
#[inline(always)]
pub fn send<F: Routed, C: Frame>(ctx: &C, route: &Route<F>) -> PathResult<Verdict> {
    if !F::decrement_hops(ctx)? {
        return Ok(Verdict::Next);
    }
    if let Some((dmac, smac)) = route.neighbour {
        nat::write_macs(ctx, dmac, smac)?;
    }
    ctx.redirect(route.ifindex, route.neighbour.is_some())
}

/// Whether this hook can send a packet along `route` (`None`: the stack's
/// to forward) itself. tc always can (it hands the rest to the stack);
/// XDP only on a known neighbour, out of an interface that takes its
/// frames (`frame`). Asked before the packet is touched or any state
/// created.
#[inline(always)]
pub fn can_send<F: Family, C: Frame>(ctx: &C, route: &Option<Route<F>>) -> bool {
    if C::FINISHES_EVERY_PACKET {
        return true;
    }
    match route {
        Some(route) => route.neighbour.is_some() && ctx.sends_to(route.ifindex),
        None => false,
    }
}

/// Routes and sends `flow` if it is a plain forward; otherwise leaves the
/// packet to the stack.
#[inline(always)]
pub fn forward<F: Routed, C: Frame>(ctx: &C, flow: &Flow<F>, ip_total_len: u16) -> PathResult<Verdict> {
    match lookup(ctx, flow, ip_total_len, false) {
        Some(route) => send(ctx, &route),
        None => Ok(Verdict::Next),
    }
}
