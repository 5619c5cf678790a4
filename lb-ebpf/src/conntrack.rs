//! Conntrack entries for NATed flows: the original direction remembers the
//! backend (and the SNAT source, if any), the reply direction remembers the
//! frontend to restore (and the client, if SNATed).
//!
//! Every lookup of a tracked packet records it on its entry: the second it
//! was seen and the TCP state bits (`lb_common::conntrack::observe`). The
//! agent's garbage collection reads them; nothing here ever deletes.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    conntrack::{self as ct, DIR_ORIGINAL, DIR_REPLY, FLAG_RST, RouteCache},
    service::ServiceValue,
    stats::Counter,
};

use crate::{
    clock::now_s,
    family::{Backend, CtEntry, Family, ServiceKey},
    parse::Packet,
    verdict::PathResult,
};

/// A tracked entry, in the map. Read through, not copied out: a copy
/// would take stack the longest paths do not have.
pub struct Tracked<F: Family> {
    entry: *mut F::CtValue,
}

impl<F: Family> Clone for Tracked<F> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family> Copy for Tracked<F> {}

impl<F: Family> Tracked<F> {
    /// The entry's fields.
    #[inline(always)]
    pub fn fields(&self) -> &F::CtValue {
        // SAFETY: a value of the map, valid for this run of the program.
        unsafe { &*self.entry }
    }

    /// A copy of the entry's fields.
    #[inline(always)]
    pub fn value(&self) -> F::CtValue {
        *self.fields()
    }
}

impl<F: Family> Tracked<F> {
    /// Where the entry's route is kept (`route_cache`), written in place.
    #[inline(always)]
    pub fn route(&self) -> *mut RouteCache {
        F::CtValue::route(self.entry)
    }
}

/// The entry at `k`, after recording `pkt` on it. Each field is written
/// only when it changes: the common packet (same second, same state)
/// leaves the entry's cache line clean. Two CPUs touching one entry at
/// once may lose one's new bit; a lost bit only keeps the flow under a
/// longer timeout.
#[inline(always)]
fn lookup_and_record<F: Family>(k: &F::CtKey, pkt: &Packet<F>) -> Option<Tracked<F>> {
    let found = F::ct_entry(k)?;
    // SAFETY: a value of the map, valid for this run of the program.
    let entry = unsafe { &mut *found };
    let now = now_s();
    if *entry.last_seen_mut() != now {
        *entry.last_seen_mut() = now;
    }
    let flags = ct::observe(entry.flags(), pkt.tcp_flags);
    if entry.flags() != flags {
        *entry.flags_mut() = flags;
    }
    Some(Tracked { entry: found })
}

/// The tracked original-direction entry for a client → frontend packet.
#[inline(always)]
pub fn lookup_original<F: Family>(pkt: &Packet<F>) -> Option<Tracked<F>> {
    lookup_and_record(&F::ct_key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, DIR_ORIGINAL), pkt)
}

/// The tracked reply-direction entry for a backend → client packet.
#[inline(always)]
pub fn lookup_reply<F: Family>(pkt: &Packet<F>) -> Option<Tracked<F>> {
    lookup_and_record(&F::ct_key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, DIR_REPLY), pkt)
}

/// Marks the entry at `k` reset, if it exists.
#[inline(always)]
fn mark_rst<F: Family>(k: &F::CtKey) {
    if let Some(entry) = F::ct_entry(k) {
        // SAFETY: a value of the map, valid for this run of the program.
        unsafe { *(*entry).flags_mut() |= FLAG_RST };
    }
}

/// An RST from the client closes the flow both ways: its reply entry is
/// marked too (rare, so the extra lookup is fine). No-op for other packets.
#[inline(always)]
pub fn on_rst_mark_reply<F: Family>(pkt: &Packet<F>, backend: &F::Backend, entry: &F::CtValue) {
    if pkt.tcp_flags & ct::TCP_RST == 0 {
        return;
    }
    let (nat_address, nat_port) = entry.nat();
    let (client, client_port) = if nat_port != 0 { (nat_address, nat_port) } else { (pkt.src, pkt.sport) };
    mark_rst::<F>(&F::ct_key(backend.address(), client, backend.port(), client_port, pkt.proto, DIR_REPLY));
}

/// An RST from the backend: marks the flow's original entry too. No-op
/// for other packets.
#[inline(always)]
pub fn on_rst_mark_original<F: Family>(pkt: &Packet<F>, entry: &F::CtValue) {
    if pkt.tcp_flags & ct::TCP_RST == 0 {
        return;
    }
    let (nat_address, nat_port) = entry.nat();
    let (client, client_port) = if nat_port != 0 { (nat_address, nat_port) } else { (pkt.dst, pkt.dport) };
    let (frontend, frontend_port) = entry.frontend();
    mark_rst::<F>(&F::ct_key(client, frontend, client_port, frontend_port, pkt.proto, DIR_ORIGINAL));
}

/// This CPU's scratch slots (`maps::LB4_CT_SCRATCH`): a new flow's
/// original-direction value, and its reply-direction value when the two
/// differ (SNAT).
pub const SCRATCH_ORIGINAL: u32 = 0;
pub const SCRATCH_REPLY: u32 = 1;

/// This CPU's scratch value `slot`, to build a value in.
#[inline(always)]
pub fn scratch<F: Family>(slot: u32) -> PathResult<&'static mut F::CtValue> {
    let value = F::ct_scratch(slot).ok_or(Counter::DropConntrackFull)?;
    // SAFETY: this CPU's slot; no other program runs on it meanwhile.
    Ok(unsafe { &mut *value })
}

/// The value both entries of a new flow start from, built in this CPU's
/// scratch slot: seen now, in the state the opening packet gives.
#[inline(always)]
pub fn new_value<F: Family>(
    frontend: &F::ServiceKey,
    service: &ServiceValue,
    backend_id: u32,
) -> PathResult<&'static mut F::CtValue> {
    let value = scratch::<F>(SCRATCH_ORIGINAL)?;
    *value = F::CtValue::new(backend_id, service.frontend_id, (frontend.address(), frontend.port()), now_s());
    Ok(value)
}

/// Claims the reply entry of an SNATed flow: replies come from `backend`
/// to (`address`, `port`). Fails when that tuple belongs to another flow,
/// so two flows never share a reply tuple.
#[inline(always)]
pub fn claim_reply<F: Family>(backend: &F::Backend, address: F::Addr, port: u16, value: &F::CtValue) -> bool {
    let k = F::ct_key(backend.address(), address, backend.port(), port, backend.proto(), DIR_REPLY);
    F::ct_insert(&k, value, u64::from(BPF_NOEXIST)).is_ok()
}

/// Whether the reply tuple `backend` → (`address`, `port`) is tracked.
#[inline(always)]
pub fn reply_taken<F: Family>(backend: &F::Backend, address: F::Addr, port: u16) -> bool {
    let k = F::ct_key(backend.address(), address, backend.port(), port, backend.proto(), DIR_REPLY);
    F::ct_entry(&k).is_some()
}

/// Re-claims the reply entry an SNATed flow had before (a retransmitted
/// SYN of the same tuple): only if it still restores this same client.
#[inline(always)]
pub fn reclaim_reply<F: Family>(backend: &F::Backend, address: F::Addr, port: u16, value: &F::CtValue) -> bool {
    let k = F::ct_key(backend.address(), address, backend.port(), port, backend.proto(), DIR_REPLY);
    let Some(current) = F::ct_entry(&k) else {
        return claim_reply::<F>(backend, address, port, value);
    };
    // SAFETY: read at once, before any update of the entry.
    let current_nat = unsafe { (*current).nat() };
    if current_nat != value.nat() {
        return false;
    }
    F::ct_insert(&k, value, u64::from(BPF_ANY)).is_ok()
}

/// Records a new flow (or re-records a re-balanced one). Without SNAT the
/// reply entry is written here; with SNAT, `snat::allocate` claimed it.
/// `Ok(false)`: nothing recorded, because the reply tuple belongs to a flow
/// through another frontend (two Services sharing a backend, reached from
/// one client address and port: legal, the destinations differ, but the
/// backend's replies would look alike); the caller translates the source
/// port instead, as the kernel's NAT does on such a clash.
#[inline(always)]
pub fn track<F: Family>(pkt: &Packet<F>, backend: &F::Backend, original: &F::CtValue) -> PathResult<bool> {
    if original.nat().1 == 0 {
        let reply_key = F::ct_key(backend.address(), pkt.src, backend.port(), pkt.sport, pkt.proto, DIR_REPLY);
        // Reply entry first: once the original entry exists, later packets
        // are NATed and their replies must already be recognised. A new
        // tuple takes one insert; only a tuple already tracked (a
        // re-balanced flow, or another frontend's) is looked at.
        if F::ct_insert(&reply_key, original, u64::from(BPF_NOEXIST)).is_err() {
            // Fields are read through the pointer, not a copied-out
            // Option: the None case of a copy leaves registers the
            // verifier rejects.
            let taken = match F::ct_entry(&reply_key) {
                // SAFETY: read at once, before any update of the entry.
                Some(other) => (unsafe { (*other).frontend() }) != original.frontend(),
                None => false,
            };
            if taken {
                return Ok(false);
            }
            F::ct_insert(&reply_key, original, u64::from(BPF_ANY)).map_err(|_| Counter::DropConntrackFull)?;
        }
    }
    let original_key = F::ct_key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, DIR_ORIGINAL);
    F::ct_insert(&original_key, original, u64::from(BPF_ANY)).map_err(|_| Counter::DropConntrackFull)?;
    Ok(true)
}

/// The entry tracked for a tuple in `direction`, read only: an ICMP error
/// about a flow (`icmp_error`) is not traffic of that flow.
#[inline(always)]
pub fn lookup_tuple<F: Family>(
    src: F::Addr,
    dst: F::Addr,
    sport: u16,
    dport: u16,
    proto: u8,
    direction: u8,
) -> Option<F::CtValue> {
    let k = F::ct_key(src, dst, sport, dport, proto, direction);
    // SAFETY: copied out at once.
    F::ct_entry(&k).map(|entry| unsafe { *entry })
}
