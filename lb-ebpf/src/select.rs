//! Backend choice for a new flow: a hash of the 5-tuple picks a slot, so a
//! flow's retransmitted first packet lands on the same backend even before
//! its conntrack entry exists. A Maglev frontend (`FLAG_MAGLEV`) indexes
//! its Maglev table with the same hash instead. ClientIP affinity
//! frontends (`affinity`) use the same choice with the client's address
//! as the hash.

use lb_common::{
    flow, maglev,
    service::{FLAG_MAGLEV, ServiceValue},
};

use crate::{family::Family, maps::LB4_MAGLEV, parse::Packet, service};

/// The backend id for a new flow to `frontend` (`svc` is its entry, with
/// a non-zero count). `None`: an entry the agent has not written yet.
#[inline(always)]
pub fn backend_id<F: Family>(pkt: &Packet<F>, frontend: F::ServiceKey, svc: &ServiceValue) -> Option<u32> {
    backend_id_for::<F>(flow_hash(pkt), frontend, svc)
}

/// The backend id a hash picks: a Maglev table position or a slot.
#[inline(always)]
pub fn backend_id_for<F: Family>(hash: u32, frontend: F::ServiceKey, svc: &ServiceValue) -> Option<u32> {
    if svc.flags & FLAG_MAGLEV != 0 {
        maglev_backend(svc.frontend_id, hash)
    } else {
        service::backend_id_in_slot::<F>(frontend, slot_for(hash, svc.count))
    }
}

/// The 5-tuple hash new flows are balanced by (also where SNAT starts
/// looking for a free port).
#[inline(always)]
pub fn flow_hash<F: Family>(pkt: &Packet<F>) -> u32 {
    F::flow_hash(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto)
}

/// A socket's hash (socket-level hooks, where the source port is not
/// chosen yet at connect time): its cookie, unique per socket, so
/// sockets spread over the backends and every datagram of one
/// unconnected UDP socket goes to the same backend.
#[inline(always)]
pub fn socket_hash(cookie: u64) -> u32 {
    flow::socket(cookie)
}

/// Slot number (1..=count) for a hash. `count` is non-zero.
#[inline(always)]
fn slot_for(hash: u32, count: u16) -> u16 {
    (hash % u32::from(count)) as u16 + 1
}

/// The backend id at the flow's position in a Maglev frontend's table
/// (one table map for both families: frontend and backend ids share one
/// id space).
/// `None` when the frontend has no table (the agent is mid-update).
#[inline(always)]
fn maglev_backend(frontend_id: u32, hash: u32) -> Option<u32> {
    let position = maglev::position(hash);
    // SAFETY: entries are removed only with BPF_F_NO_PREALLOC set, so a
    // looked-up table is never another frontend's; the id is copied out.
    let id = unsafe { LB4_MAGLEV.get_value(&frontend_id, &position) }.copied()?;
    (id != 0).then_some(id)
}
