//! The conntrack and affinity clock: seconds of the kernel's coarse
//! monotonic clock (`bpf_ktime_get_coarse_ns`, userspace
//! `CLOCK_MONOTONIC_COARSE`), which the agent's timeouts and `lbctl`'s
//! ages are reckoned in.
//!
//! Every tracked packet stamps its conntrack entry, so the clock is read
//! on every one. The helper is a call and a return (on hosts whose
//! returns go through a mitigation thunk, dearer than the work) and its
//! nanoseconds a 64-bit division: together about 15 ns of an established
//! packet's 140 (`lb-bench --only packet-cost`). `bpf_jiffies64` is
//! inlined by the verifier into one load, and the coarse clock moves only
//! at a tick, as jiffies do, so the seconds read at a jiffy hold for the
//! rest of it: each CPU keeps them with the jiffy (`LB_CLOCK`), and the
//! helper and the division run once a jiffy a CPU. (The tick advances
//! jiffies just before the clock: a CPU reading in between keeps, for the
//! rest of that jiffy, the seconds the clock still showed, a few
//! milliseconds late at most.)
//!
//! A program interrupted on its CPU by another (a cgroup hook by a
//! softirq) may leave its write half done: the seconds are written before
//! the jiffy they belong to, so a reader that finds its jiffy also finds
//! its seconds.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::LB_CLOCK;

/// Seconds of the coarse monotonic clock, now.
#[inline(always)]
pub fn now_s() -> u32 {
    // SAFETY: neither helper takes arguments or has side effects.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cached) = LB_CLOCK.get_ptr_mut(0) else {
        return read_s();
    };
    // SAFETY: this CPU's value of the map, valid for this run of the
    // program; volatile, in the order the module comment gives.
    unsafe {
        use core::ptr::{read_volatile as read, write_volatile as write};
        if read(&raw const (*cached).jiffies) == jiffies {
            return read(&raw const (*cached).seconds);
        }
        let seconds = read_s();
        write(&raw mut (*cached).seconds, seconds);
        write(&raw mut (*cached).jiffies, jiffies);
        seconds
    }
}

/// The clock itself, through the helper.
#[inline(always)]
fn read_s() -> u32 {
    // SAFETY: the helper has no arguments and no side effects.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}
