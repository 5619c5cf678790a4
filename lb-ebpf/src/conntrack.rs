//! Conntrack entries for NATed flows: the original direction remembers the
//! backend (and the SNAT source, if any), the reply direction remembers the
//! frontend to restore (and the client, if SNATed).
//!
//! Every lookup of a tracked packet records it on its entry: the second it
//! was seen and the TCP state bits (`lb_common::conntrack::observe`). The
//! agent's garbage collection reads them; nothing here ever deletes.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
};
use lb_common::{
    backend::BackendV4,
    conntrack::{self as ct, CtKeyV4, CtValueV4, DIR_ORIGINAL, DIR_REPLY, FLAG_RST},
    service::{ServiceKeyV4, ServiceValue},
    stats::Counter,
};

use crate::{maps::LB4_CT, parse::PacketV4, verdict::PathResult};

#[inline(always)]
fn key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8, direction: u8) -> CtKeyV4 {
    CtKeyV4 { src_address: src, dst_address: dst, src_port: sport, dst_port: dport, proto, direction, _pad: [0; 2] }
}

/// Seconds of the kernel's coarse monotonic clock, the conntrack clock.
#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: a helper without arguments or side effects.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// The entry at `k`, after recording `pkt` on it. Each field is written
/// only when it changes: the common packet (same second, same state)
/// leaves the entry's cache line clean. Two CPUs touching one entry at
/// once may lose one's new bit; a lost bit only keeps the flow under a
/// longer timeout.
#[inline(always)]
fn lookup_and_record(k: &CtKeyV4, pkt: &PacketV4) -> Option<CtValueV4> {
    let entry = LB4_CT.get_ptr_mut(k)?;
    // SAFETY: a value of the map, valid for this run of the program.
    let entry = unsafe { &mut *entry };
    let now = now_s();
    if entry.last_seen_s != now {
        entry.last_seen_s = now;
    }
    let flags = ct::observe(entry.flags, pkt.tcp_flags);
    if entry.flags != flags {
        entry.flags = flags;
    }
    Some(*entry)
}

/// The tracked original-direction entry for a client → frontend packet.
#[inline(always)]
pub fn lookup_original(pkt: &PacketV4) -> Option<CtValueV4> {
    lookup_and_record(&key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, DIR_ORIGINAL), pkt)
}

/// The tracked reply-direction entry for a backend → client packet.
#[inline(always)]
pub fn lookup_reply(pkt: &PacketV4) -> Option<CtValueV4> {
    lookup_and_record(&key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, DIR_REPLY), pkt)
}

/// Marks the entry at `k` reset, if it exists.
#[inline(always)]
fn mark_rst(k: &CtKeyV4) {
    if let Some(entry) = LB4_CT.get_ptr_mut(k) {
        // SAFETY: a value of the map, valid for this run of the program.
        unsafe { (*entry).flags |= FLAG_RST };
    }
}

/// An RST from the client closes the flow both ways: its reply entry is
/// marked too (rare, so the extra lookup is fine). No-op for other packets.
#[inline(always)]
pub fn on_rst_mark_reply(pkt: &PacketV4, backend: &BackendV4, entry: &CtValueV4) {
    if pkt.tcp_flags & ct::TCP_RST == 0 {
        return;
    }
    let (client, client_port) =
        if entry.has_snat() { (entry.nat_address, entry.nat_port) } else { (pkt.src, pkt.sport) };
    mark_rst(&key(backend.address, client, backend.port, client_port, pkt.proto, DIR_REPLY));
}

/// An RST from the backend: marks the flow's original entry too. No-op
/// for other packets.
#[inline(always)]
pub fn on_rst_mark_original(pkt: &PacketV4, entry: &CtValueV4) {
    if pkt.tcp_flags & ct::TCP_RST == 0 {
        return;
    }
    let (client, client_port) =
        if entry.has_snat() { (entry.nat_address, entry.nat_port) } else { (pkt.dst, pkt.dport) };
    let k = key(client, entry.frontend_address, client_port, entry.frontend_port, pkt.proto, DIR_ORIGINAL);
    mark_rst(&k);
}

/// The value both entries of a new flow start from: seen now, in the
/// state the opening packet gives.
#[inline(always)]
pub fn new_value(frontend: &ServiceKeyV4, service: &ServiceValue, backend_id: u32) -> CtValueV4 {
    let now_s = now_s();
    CtValueV4 {
        backend_id,
        frontend_id: service.frontend_id,
        frontend_address: frontend.address,
        frontend_port: frontend.port,
        flags: 0,
        created_s: now_s,
        last_seen_s: now_s,
        nat_address: [0; 4],
        nat_port: 0,
        _pad: [0; 2],
    }
}

/// Claims the reply entry of an SNATed flow: replies come from `backend`
/// to (`address`, `port`). Fails when that tuple belongs to another flow,
/// so two flows never share a reply tuple.
#[inline(always)]
pub fn claim_reply(backend: &BackendV4, address: [u8; 4], port: u16, value: &CtValueV4) -> bool {
    let k = key(backend.address, address, backend.port, port, backend.proto, DIR_REPLY);
    LB4_CT.insert(k, *value, u64::from(BPF_NOEXIST)).is_ok()
}

/// Re-claims the reply entry an SNATed flow had before (a retransmitted
/// SYN of the same tuple): only if it still restores this same client.
#[inline(always)]
pub fn reclaim_reply(backend: &BackendV4, address: [u8; 4], port: u16, value: &CtValueV4) -> bool {
    let k = key(backend.address, address, backend.port, port, backend.proto, DIR_REPLY);
    // SAFETY: copied out at once.
    let Some(current) = unsafe { LB4_CT.get(k) }.copied() else {
        return claim_reply(backend, address, port, value);
    };
    if current.nat_address != value.nat_address || current.nat_port != value.nat_port {
        return false;
    }
    LB4_CT.insert(k, *value, u64::from(BPF_ANY)).is_ok()
}

/// Records a new flow (or re-records a re-balanced one). Without SNAT the
/// reply entry is written here; with SNAT, `snat::allocate` claimed it.
/// `Ok(false)`: nothing recorded, because the reply tuple belongs to a flow
/// through another frontend (two Services sharing a backend, reached from
/// one client address and port: legal, the destinations differ, but the
/// backend's replies would look alike); the caller translates the source
/// port instead, as the kernel's NAT does on such a clash.
#[inline(always)]
pub fn track(pkt: &PacketV4, backend: &BackendV4, original: &CtValueV4) -> PathResult<bool> {
    if !original.has_snat() {
        let reply_key = key(backend.address, pkt.src, backend.port, pkt.sport, pkt.proto, DIR_REPLY);
        // Reply entry first: once the original entry exists, later packets
        // are NATed and their replies must already be recognised. A new
        // tuple takes one insert; only a tuple already tracked (a
        // re-balanced flow, or another frontend's) is looked at.
        if LB4_CT.insert(reply_key, *original, u64::from(BPF_NOEXIST)).is_err() {
            // Fields are read through the reference, not a copied-out
            // Option: the None case of a copy leaves registers the
            // verifier rejects.
            // SAFETY: read at once, before any update of the entry.
            let taken = match unsafe { LB4_CT.get(reply_key) } {
                Some(other) => {
                    other.frontend_address != original.frontend_address || other.frontend_port != original.frontend_port
                }
                None => false,
            };
            if taken {
                return Ok(false);
            }
            LB4_CT.insert(reply_key, *original, u64::from(BPF_ANY)).map_err(|_| Counter::DropConntrackFull)?;
        }
    }
    let original_key = key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, DIR_ORIGINAL);
    LB4_CT.insert(original_key, *original, u64::from(BPF_ANY)).map_err(|_| Counter::DropConntrackFull)?;
    Ok(true)
}

/// The entry tracked for a tuple in `direction`, read only: an ICMP error
/// about a flow (`icmp_error`) is not traffic of that flow.
#[inline(always)]
pub fn lookup_tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8, direction: u8) -> Option<CtValueV4> {
    let k = key(src, dst, sport, dport, proto, direction);
    // SAFETY: copied out at once.
    unsafe { LB4_CT.get(k) }.copied()
}
