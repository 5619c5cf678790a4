//! Service table lookups: frontend (slot 0), slot → backend id, backend.
//! Each is one hash lookup, independent of how many Services exist.

use aya_ebpf::btf_maps::lpm_trie::Key;
use lb_common::{
    address_filter, port_filter,
    service::{FLAG_SHORT_CIRCUIT, FLAG_SOURCE_RANGES, ServiceValue},
    source_ranges::SourceRangeKeyV4,
};

use crate::{
    family::{Family, ServiceKey},
    maps::{LB_ADDR_FILTER, LB_PORT_FILTER, LB4_SRC_RANGES, LB6_SRC_RANGES},
    parse::{Packet, PacketV4, PacketV6},
};

/// `lb_common::port_filter` bits for a port (0 when unset).
#[inline(always)]
pub fn port_bits(port: u16) -> u8 {
    match LB_PORT_FILTER.get(u32::from(port)) {
        Some(bits) => *bits,
        None => 0,
    }
}

/// Whether a packet may be addressed to a frontend: its destination port
/// and its destination address both pass their prefilters.
#[inline(always)]
pub fn may_be_frontend<F: Family>(pkt: &Packet<F>) -> bool {
    may_be_frontend_at::<F>(pkt.dst, pkt.dport)
}

/// `may_be_frontend` for a destination read from the packet directly.
#[inline(always)]
pub fn may_be_frontend_at<F: Family>(address: F::Addr, port: u16) -> bool {
    port_bits(port) & port_filter::FRONTEND_PORT != 0 && address_may_be_frontend::<F>(address)
}

/// `lb_common::address_filter`: whether some frontend may have `address`.
#[inline(always)]
fn address_may_be_frontend<F: Family>(address: F::Addr) -> bool {
    let (word, mask) = address_filter::word_and_mask(F::filter_bit(address));
    match LB_ADDR_FILTER.get(word) {
        Some(bits) => *bits & mask != 0,
        None => false,
    }
}

#[inline(always)]
pub fn may_be_backend_reply<F: Family>(pkt: &Packet<F>) -> bool {
    may_be_backend_reply_from(pkt.sport)
}

/// `may_be_backend_reply` for a source port read from the packet directly.
#[inline(always)]
pub fn may_be_backend_reply_from(port: u16) -> bool {
    port_bits(port) & port_filter::BACKEND_PORT != 0
}

/// The frontend a packet is addressed to, if any.
#[inline(always)]
pub fn lookup_frontend<F: Family>(pkt: &Packet<F>) -> Option<(F::ServiceKey, ServiceValue)> {
    lookup_frontend_at::<F>(pkt.dst, pkt.dport, pkt.proto)
}

/// The frontend at an address (network byte order), port (host byte
/// order) and protocol, if any: packets and sockets alike.
#[inline(always)]
pub fn lookup_frontend_at<F: Family>(address: F::Addr, port: u16, proto: u8) -> Option<(F::ServiceKey, ServiceValue)> {
    let key = F::ServiceKey::frontend(address, port, proto);
    let value = F::service(&key)?;
    Some((key, value))
}

/// The backend id in slot `slot` (1-based) of a frontend.
#[inline(always)]
pub fn backend_id_in_slot<F: Family>(frontend: F::ServiceKey, slot: u16) -> Option<u32> {
    F::service(&frontend.slot(slot)).map(|v| v.backend_id)
}

#[inline(always)]
pub fn lookup_backend<F: Family>(backend_id: u32) -> Option<F::Backend> {
    F::backend(backend_id)
}

/// Whether a new flow's source may reach this frontend: always, unless
/// the frontend has `loadBalancerSourceRanges`, in which case one of them
/// must contain it (one longest-prefix lookup, however many ranges).
#[inline(always)]
pub fn source_allowed(svc: &ServiceValue, pkt: &PacketV4) -> bool {
    if svc.flags & FLAG_SOURCE_RANGES == 0 {
        return true;
    }
    let client = SourceRangeKeyV4::client(svc.frontend_id, pkt.src);
    LB4_SRC_RANGES.get(&Key::new(client.prefix_len, client.data())).is_some()
}

/// `source_allowed` for IPv6 (`LB6_SRC_RANGES`).
#[inline(always)]
pub fn source_allowed_v6(svc: &ServiceValue, pkt: &PacketV6) -> bool {
    if svc.flags & FLAG_SOURCE_RANGES == 0 {
        return true;
    }
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&svc.frontend_id.to_be_bytes());
    data[4..].copy_from_slice(&pkt.src.to_ne_bytes());
    LB6_SRC_RANGES.get(&Key::new(32 + 128, data)).is_some()
}

/// The frontend a new flow uses: the in-cluster entry of a short-circuit
/// frontend when the source is a Pod (inside the cluster's Pod CIDRs),
/// else the frontend itself. Until the agent has written the in-cluster
/// entry, the frontend itself serves.
#[inline(always)]
pub fn for_source<F: Family>(
    frontend: F::ServiceKey,
    svc: ServiceValue,
    pkt: &Packet<F>,
) -> (F::ServiceKey, ServiceValue) {
    if svc.flags & FLAG_SHORT_CIRCUIT == 0 || !F::is_pod(pkt.src) {
        return (frontend, svc);
    }
    in_cluster::<F>(frontend, svc)
}

/// The in-cluster entry of a short-circuit frontend, when the agent has
/// written it; else the frontend itself.
#[inline(always)]
pub fn in_cluster<F: Family>(frontend: F::ServiceKey, svc: ServiceValue) -> (F::ServiceKey, ServiceValue) {
    if svc.flags & FLAG_SHORT_CIRCUIT == 0 {
        return (frontend, svc);
    }
    let twin = frontend.in_cluster();
    match F::service(&twin) {
        Some(value) => (twin, value),
        None => (frontend, svc),
    }
}
