//! Backend choice for a new flow: a hash of the 5-tuple picks a slot, so a
//! flow's retransmitted first packet lands on the same backend even before
//! its conntrack entry exists. (Maglev and ClientIP affinity choose the
//! slot differently and plug in here.)

use crate::parse::PacketV4;

/// murmur3's 32-bit finaliser: cheap, and spreads nearby tuples evenly.
#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
pub fn flow_hash(pkt: &PacketV4) -> u32 {
    let ports = (u32::from(pkt.sport) << 16) | u32::from(pkt.dport);
    let mut h = mix(u32::from_ne_bytes(pkt.src) ^ 0x9e37_79b9);
    h = mix(h ^ u32::from_ne_bytes(pkt.dst));
    h = mix(h ^ ports);
    mix(h ^ u32::from(pkt.proto))
}

/// A socket's hash (socket-level hooks, where the source port is not
/// chosen yet at connect time): its cookie, unique per socket, so
/// sockets spread over the backends and every datagram of one
/// unconnected UDP socket goes to the same backend.
#[inline(always)]
pub fn socket_hash(cookie: u64) -> u32 {
    mix(mix(cookie as u32 ^ 0x9e37_79b9) ^ (cookie >> 32) as u32)
}

/// Slot number (1..=count) for a hash. `count` is non-zero.
#[inline(always)]
pub fn slot_for(hash: u32, count: u16) -> u16 {
    (hash % u32::from(count)) as u16 + 1
}
