//! The conntrack clock: the datapath stamps entries with
//! `bpf_ktime_get_coarse_ns`, which is `CLOCK_MONOTONIC_COARSE`.

/// Now, in whole seconds of the datapath's clock.
pub fn now_s() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own; this clock id is
    // always supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u32
}
