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

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    affinity::{AffinityKeyV4, AffinityKeyV6, AffinityMemberKeyV4, AffinityValueV4},
    flow,
    service::ServiceValue,
    stats::Counter,
};

use crate::{
    clock::now_s,
    family::{Family, V4, V6},
    maps::{LB4_AFF_MEMBERS, LB4_AFFINITY, LB6_AFFINITY},
    select, service, stats,
};

/// A family's affinity table (`LB4_AFFINITY` / `LB6_AFFINITY`) and how
/// a client address alone is hashed.
pub trait AffinityFamily: Family {
    type Key: Copy;
    fn key(frontend_id: u32, client: Self::Addr) -> Self::Key;
    fn entry(key: &Self::Key) -> Option<AffinityValueV4>;
    fn put(key: &Self::Key, value: &AffinityValueV4);
    fn client_hash(client: Self::Addr) -> u32;
}

impl AffinityFamily for V4 {
    type Key = AffinityKeyV4;

    #[inline(always)]
    fn key(frontend_id: u32, client: [u8; 4]) -> AffinityKeyV4 {
        AffinityKeyV4::new(frontend_id, client)
    }

    #[inline(always)]
    fn entry(key: &AffinityKeyV4) -> Option<AffinityValueV4> {
        // SAFETY: copied out at once.
        unsafe { LB4_AFFINITY.get(key) }.copied()
    }

    #[inline(always)]
    fn put(key: &AffinityKeyV4, value: &AffinityValueV4) {
        // A refused insert (the LRU map found no room on this CPU) costs
        // only the affinity of the client's next flow: carry on.
        let _ = LB4_AFFINITY.insert(key, value, u64::from(BPF_ANY));
    }

    #[inline(always)]
    fn client_hash(client: [u8; 4]) -> u32 {
        flow::client(client)
    }
}

impl AffinityFamily for V6 {
    type Key = AffinityKeyV6;

    #[inline(always)]
    fn key(frontend_id: u32, client: u128) -> AffinityKeyV6 {
        AffinityKeyV6 { frontend_id, client: client.to_ne_bytes() }
    }

    #[inline(always)]
    fn entry(key: &AffinityKeyV6) -> Option<AffinityValueV4> {
        // SAFETY: copied out at once.
        unsafe { LB6_AFFINITY.get(key) }.copied()
    }

    #[inline(always)]
    fn put(key: &AffinityKeyV6, value: &AffinityValueV4) {
        let _ = LB6_AFFINITY.insert(key, value, u64::from(BPF_ANY));
    }

    #[inline(always)]
    fn client_hash(client: u128) -> u32 {
        flow::client(flow::fold_u128(client))
    }
}

/// The backend (id and entry) for a new flow of `client` to an affinity
/// frontend (`svc` its entry, with a non-zero count); `flow_hash` balances
/// it when the client's entry went stale. `None`: a slot or backend entry
/// the agent has not written yet.
#[inline(always)]
pub fn choose<F: AffinityFamily>(
    frontend: F::ServiceKey,
    svc: &ServiceValue,
    client: F::Addr,
    flow_hash: u32,
) -> Option<(u32, F::Backend)> {
    let key = F::key(svc.frontend_id, client);
    let now_s = now_s();
    let hash = match follow::<F>(&key, svc, now_s) {
        Followed::Hit(chosen) => return Some(record::<F>(&key, chosen, now_s)),
        Followed::Miss => F::client_hash(client),
        Followed::Stale => flow_hash,
    };
    let id = select::backend_id_for::<F>(hash, frontend, svc)?;
    Some(record::<F>(&key, (id, service::lookup_backend::<F>(id)?), now_s))
}

/// Records `chosen` as the client's backend, used now.
#[inline(always)]
fn record<F: AffinityFamily>(key: &F::Key, chosen: (u32, F::Backend), now_s: u32) -> (u32, F::Backend) {
    F::put(key, &AffinityValueV4 { backend_id: chosen.0, last_used_s: now_s });
    chosen
}

/// What the client's entry says.
enum Followed<B> {
    /// Still valid: its backend.
    Hit((u32, B)),
    /// No entry.
    Miss,
    /// Expired, or naming a backend the frontend no longer chooses.
    Stale,
}

/// The client's entry, and its backend when it is still valid; counts
/// which of hit, miss or stale it was.
#[inline(always)]
fn follow<F: AffinityFamily>(key: &F::Key, svc: &ServiceValue, now_s: u32) -> Followed<F::Backend> {
    let Some(entry) = F::entry(key) else {
        stats::count(Counter::AffinityMiss);
        return Followed::Miss;
    };
    let valid = entry.is_fresh(now_s, svc.affinity_timeout_s) && is_member(svc.frontend_id, entry.backend_id);
    let backend = if valid { service::lookup_backend::<F>(entry.backend_id) } else { None };
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
