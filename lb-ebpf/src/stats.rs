//! Per-CPU counters: no atomics, no contention; the agent sums the CPUs.

use lb_common::stats::Counter;

use crate::maps::LB_STATS;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = LB_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and BPF
        // programs are not preempted by themselves on it.
        unsafe { *slot += 1 };
    }
}
