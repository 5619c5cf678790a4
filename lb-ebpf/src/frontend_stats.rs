//! Per-frontend counters (`lb_common::frontend_stats`), moved only by a
//! flow's first packet.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::frontend_stats::{FrontendEvent, FrontendStatsV4};

use crate::maps::LB4_FE_STATS;

/// Counts `event` for the frontend with id `frontend_id`. The first event
/// of a frontend creates its entry; when the map is full the event is not
/// counted (the per-reason counters still have it).
#[inline(always)]
pub fn count(frontend_id: u32, event: FrontendEvent) {
    if let Some(stats) = LB4_FE_STATS.get_ptr_mut(frontend_id) {
        // SAFETY: this CPU's value of the entry; BPF programs do not
        // preempt each other on one CPU.
        *unsafe { &mut *stats }.counter_mut(event) += 1;
        return;
    }
    create(frontend_id, event);
}

/// Creates a frontend's entry with its first event. A function of its
/// own, so the value's buffer does not sit in every caller's stack frame.
#[inline(never)]
fn create(frontend_id: u32, event: FrontendEvent) {
    // Another CPU may create the entry first: then this event is lost,
    // once per frontend at most.
    let _ = LB4_FE_STATS.insert(frontend_id, FrontendStatsV4::first(event), u64::from(BPF_NOEXIST));
}
