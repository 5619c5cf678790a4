//! CPU time a load run costs. Counted: this process (load generator and
//! backend servers, and the kernel's packet processing done on their
//! threads: a sender's softirqs run on its own CPU when it re-enables
//! bottom halves, and this kernel charges them to the running task) plus
//! the ksoftirqd threads, which take over that work under load. Not
//! counted: anything else running on the machine, so concurrent builds or
//! tests disturb the rates more than these figures.

use std::{sync::OnceLock, time::Duration};

/// CPU time consumed so far by what a run is charged for.
#[derive(Clone, Copy, Debug)]
pub struct CpuSnapshot {
    process: Duration,
    ksoftirqd: Duration,
    /// Busy time of the whole machine (/proc/stat), to tell how much
    /// other processes ran meanwhile.
    machine: Duration,
}

impl CpuSnapshot {
    pub fn now() -> Self {
        Self { process: process_time(), ksoftirqd: ksoftirqd_time(), machine: machine_busy_time() }
    }

    /// CPU time used between `earlier` and this snapshot.
    pub fn since(&self, earlier: &CpuSnapshot) -> Duration {
        self.process.saturating_sub(earlier.process) + self.ksoftirqd.saturating_sub(earlier.ksoftirqd)
    }

    /// CPU time everything else on the machine used meanwhile (tick
    /// resolution, so a rough figure).
    pub fn others_since(&self, earlier: &CpuSnapshot) -> Duration {
        self.machine.saturating_sub(earlier.machine).saturating_sub(self.since(earlier))
    }
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1)
}

fn from_ticks(ticks: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / ticks_per_second())
}

/// All CPUs' non-idle time from the first line of /proc/stat (user, nice,
/// system, irq, softirq, steal; guest time is already inside user).
fn machine_busy_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum();
    from_ticks(busy)
}

/// User + system time of all threads of this process (getrusage).
fn process_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn ksoftirqd_pids() -> &'static [u32] {
    static PIDS: OnceLock<Vec<u32>> = OnceLock::new();
    PIDS.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
            })
            .collect()
    })
}

/// utime + stime of the ksoftirqd threads (clock ticks → time).
fn ksoftirqd_time() -> Duration {
    from_ticks(ksoftirqd_pids().iter().filter_map(|pid| thread_ticks(*pid)).sum())
}

/// Fields 14 and 15 of /proc/PID/stat (after the parenthesised name).
fn thread_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
