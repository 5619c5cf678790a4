//! Service table lookups: frontend (slot 0), slot → backend id, backend.
//! Each is one hash lookup, independent of how many Services exist.

use lb_common::{
    backend::BackendV4,
    port_filter,
    service::{ServiceKeyV4, ServiceValue},
};

use crate::{
    maps::{LB_PORT_FILTER, LB4_BACKENDS, LB4_SERVICES},
    parse::PacketV4,
};

/// `lb_common::port_filter` bits for a port (0 when unset).
#[inline(always)]
pub fn port_bits(port: u16) -> u8 {
    match LB_PORT_FILTER.get(u32::from(port)) {
        Some(bits) => *bits,
        None => 0,
    }
}

#[inline(always)]
pub fn may_be_frontend(pkt: &PacketV4) -> bool {
    port_bits(pkt.dport) & port_filter::FRONTEND_PORT != 0
}

#[inline(always)]
pub fn may_be_backend_reply(pkt: &PacketV4) -> bool {
    port_bits(pkt.sport) & port_filter::BACKEND_PORT != 0
}

/// The frontend a packet is addressed to, if any.
#[inline(always)]
pub fn lookup_frontend(pkt: &PacketV4) -> Option<(ServiceKeyV4, ServiceValue)> {
    let key = ServiceKeyV4::frontend(pkt.dst, pkt.dport, pkt.proto);
    // SAFETY: the value is copied out at once, before any map update.
    let value = unsafe { LB4_SERVICES.get(key) }.copied()?;
    Some((key, value))
}

/// The backend id in slot `slot` (1-based) of a frontend.
#[inline(always)]
pub fn backend_id_in_slot(frontend: ServiceKeyV4, slot: u16) -> Option<u32> {
    // SAFETY: copied out at once.
    unsafe { LB4_SERVICES.get(frontend.slot(slot)) }.map(|v| v.backend_id)
}

#[inline(always)]
pub fn lookup_backend(backend_id: u32) -> Option<BackendV4> {
    // SAFETY: copied out at once.
    unsafe { LB4_BACKENDS.get(backend_id) }.copied()
}
