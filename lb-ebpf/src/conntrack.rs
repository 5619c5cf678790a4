//! Conntrack entries for NATed flows: the original direction remembers the
//! backend, the reply direction remembers the frontend to restore.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_coarse_ns};
use lb_common::{
    backend::BackendV4,
    conntrack::{CtKeyV4, CtValueV4, DIR_ORIGINAL, DIR_REPLY},
    service::{ServiceKeyV4, ServiceValue},
    stats::Counter,
};

use crate::{maps::LB4_CT, parse::PacketV4, verdict::PathResult};

#[inline(always)]
fn key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8, direction: u8) -> CtKeyV4 {
    CtKeyV4 { src_address: src, dst_address: dst, src_port: sport, dst_port: dport, proto, direction, _pad: [0; 2] }
}

/// The tracked original-direction entry for a client → frontend packet.
#[inline(always)]
pub fn lookup_original(pkt: &PacketV4) -> Option<CtValueV4> {
    let k = key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, DIR_ORIGINAL);
    // SAFETY: copied out at once.
    unsafe { LB4_CT.get(k) }.copied()
}

/// The tracked reply-direction entry for a backend → client packet.
#[inline(always)]
pub fn lookup_reply(pkt: &PacketV4) -> Option<CtValueV4> {
    let k = key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, DIR_REPLY);
    // SAFETY: copied out at once.
    unsafe { LB4_CT.get(k) }.copied()
}

/// Records a new flow (or re-records a re-balanced one): both directions.
#[inline(always)]
pub fn track(
    pkt: &PacketV4,
    frontend: &ServiceKeyV4,
    service: &ServiceValue,
    backend_id: u32,
    backend: &BackendV4,
) -> PathResult<()> {
    // SAFETY: a helper without arguments or side effects.
    let now_s = (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32;
    let original = CtValueV4 {
        backend_id,
        frontend_id: service.frontend_id,
        frontend_address: frontend.address,
        frontend_port: frontend.port,
        flags: 0,
        created_s: now_s,
    };
    let original_key = key(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, DIR_ORIGINAL);
    let reply_key = key(backend.address, pkt.src, backend.port, pkt.sport, pkt.proto, DIR_REPLY);
    // Reply entry first: once the original entry exists, later packets are
    // NATed and their replies must already be recognised.
    LB4_CT.insert(reply_key, original, u64::from(BPF_ANY)).map_err(|_| Counter::DropConntrackFull)?;
    LB4_CT.insert(original_key, original, u64::from(BPF_ANY)).map_err(|_| Counter::DropConntrackFull)
}
