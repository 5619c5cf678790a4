//! ClientIP session affinity (`FLAG_SESSION_AFFINITY`): a client's new
//! flow to a frontend follows the backend of its last new flow there, if
//! that was less than the frontend's timeout ago and the backend is still
//! one this frontend chooses. A client without an entry is balanced by
//! its address alone, so every node makes the same first choice; a client
//! whose entry expired (or names a backend no longer chosen) is balanced
//! by the flow's own hash, as kube-proxy picks afresh at random, so it is
//! not sent back to the same backend each time. Either way the choice and
//! the time are recorded, so the timeout runs from the client's last new
//! flow, as kube-proxy's `recent` match and nftables affinity sets do. The
//! timeout is read from the frontend entry each time, so a changed
//! timeout applies at once.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_coarse_ns};
use lb_common::{
    affinity::{AffinityKeyV4, AffinityMemberKeyV4, AffinityValueV4},
    backend::BackendV4,
    flow,
    service::{ServiceKeyV4, ServiceValue},
    stats::Counter,
};

use crate::{
    family::V4,
    maps::{LB4_AFF_MEMBERS, LB4_AFFINITY},
    select, service, stats,
};

/// The backend (id and entry) for a new flow of `client` to an affinity
/// frontend (`svc` its entry, with a non-zero count); `flow_hash` balances
/// it when the client's entry went stale. `None`: a slot or backend entry
/// the agent has not written yet.
#[inline(always)]
pub fn choose(frontend: ServiceKeyV4, svc: &ServiceValue, client: [u8; 4], flow_hash: u32) -> Option<(u32, BackendV4)> {
    let key = AffinityKeyV4::new(svc.frontend_id, client);
    let now_s = now_s();
    let hash = match follow(&key, svc, now_s) {
        Followed::Hit(chosen) => return Some(record(key, chosen, now_s)),
        Followed::Miss => flow::client(client),
        Followed::Stale => flow_hash,
    };
    let id = select::backend_id_for::<V4>(hash, frontend, svc)?;
    Some(record(key, (id, service::lookup_backend::<V4>(id)?), now_s))
}

/// Records `chosen` as the client's backend, used now.
#[inline(always)]
fn record(key: AffinityKeyV4, chosen: (u32, BackendV4), now_s: u32) -> (u32, BackendV4) {
    let entry = AffinityValueV4 { backend_id: chosen.0, last_used_s: now_s };
    // A refused insert (the LRU map found no room on this CPU) costs only
    // the affinity of the client's next flow, not this flow: carry on.
    let _ = LB4_AFFINITY.insert(key, entry, u64::from(BPF_ANY));
    chosen
}

/// What the client's entry says.
enum Followed {
    /// Still valid: its backend.
    Hit((u32, BackendV4)),
    /// No entry.
    Miss,
    /// Expired, or naming a backend the frontend no longer chooses.
    Stale,
}

/// The client's entry, and its backend when it is still valid; counts
/// which of hit, miss or stale it was.
#[inline(always)]
fn follow(key: &AffinityKeyV4, svc: &ServiceValue, now_s: u32) -> Followed {
    // SAFETY: copied out at once.
    let Some(entry) = (unsafe { LB4_AFFINITY.get(*key) }).copied() else {
        stats::count(Counter::AffinityMiss);
        return Followed::Miss;
    };
    let valid = entry.is_fresh(now_s, svc.affinity_timeout_s) && is_member(svc.frontend_id, entry.backend_id);
    let backend = if valid { service::lookup_backend::<V4>(entry.backend_id) } else { None };
    match backend {
        Some(backend) => {
            stats::count(Counter::AffinityHit);
            Followed::Hit((entry.backend_id, backend))
        }
        None => {
            stats::count(Counter::AffinityStale);
            Followed::Stale
        }
    }
}

/// Whether `backend_id` is one of the backends the frontend chooses for
/// new flows now (not a draining one, not one only another frontend uses).
#[inline(always)]
fn is_member(frontend_id: u32, backend_id: u32) -> bool {
    LB4_AFF_MEMBERS.get_ptr(AffinityMemberKeyV4 { frontend_id, backend_id }).is_some()
}

/// Seconds of the kernel's coarse monotonic clock (the clock conntrack
/// uses; a tick of a few milliseconds is plenty for timeouts in seconds).
#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: the helper has no arguments and no side effects.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}
