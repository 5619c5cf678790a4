//! What the programs attached to the node's interfaces cost in real
//! traffic, from the kernel's own accounting: with BPF run-time statistics
//! on (`BPF_ENABLE_STATS`), every run of a program adds its duration and
//! one run to the program's totals, which `bpf_prog_info` reports. Read
//! before and after a load run, their difference divided by the run's
//! operations is the programs' time per operation, with the caches and
//! the table sizes of the real traffic, not of `BPF_PROG_TEST_RUN`.
//!
//! The statistics cost a clock read on each side of every run, so they
//! are on only for a run of their own, whose rate is not reported.

use std::{collections::BTreeMap, os::fd::OwnedFd, time::Duration};

use anyhow::Context as _;
use aya::{
    programs::{SchedClassifier, TcAttachType},
    sys::{Stats, enable_stats},
};

use crate::servers::enter_netns;

/// The totals of a set of programs: time spent in them and runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramTime {
    pub run_time: Duration,
    pub runs: u64,
}

impl ProgramTime {
    /// What was added between `earlier` and `self`.
    pub fn since(self, earlier: ProgramTime) -> ProgramTime {
        ProgramTime {
            run_time: self.run_time.saturating_sub(earlier.run_time),
            runs: self.runs.saturating_sub(earlier.runs),
        }
    }
}

/// Run-time statistics on, for as long as this lives.
pub struct StatsOn(#[allow(dead_code)] OwnedFd);

pub fn stats_on() -> anyhow::Result<StatsOn> {
    Ok(StatsOn(enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?))
}

/// The programs attached to a node's interfaces, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attached(pub BTreeMap<String, ProgramTime>);

impl Attached {
    pub fn total(&self) -> ProgramTime {
        self.0.values().fold(ProgramTime::default(), |sum, p| ProgramTime {
            run_time: sum.run_time + p.run_time,
            runs: sum.runs + p.runs,
        })
    }

    /// Each program's additions since `earlier`.
    pub fn since(&self, earlier: &Attached) -> Attached {
        Attached(
            self.0
                .iter()
                .map(|(name, now)| (name.clone(), now.since(earlier.0.get(name).copied().unwrap_or_default())))
                .collect(),
        )
    }
}

/// The totals of every program attached at tcx ingress or egress of
/// `interfaces` in `netns`, each program counted once however many
/// interfaces it is attached to, and summed by name.
pub fn attached(netns: &str, interfaces: &[String]) -> anyhow::Result<Attached> {
    let (netns, interfaces) = (netns.to_owned(), interfaces.to_vec());
    // Interface names resolve in the querying thread's namespace.
    let by_id = std::thread::spawn(move || -> anyhow::Result<BTreeMap<u32, (String, ProgramTime)>> {
        enter_netns(&netns)?;
        let mut by_id = BTreeMap::new();
        for interface in &interfaces {
            for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
                let (_, programs) = SchedClassifier::query_tcx(interface, direction)
                    .with_context(|| format!("querying tcx programs on {interface}"))?;
                for info in programs {
                    let name = info.name_as_str().unwrap_or("?").to_owned();
                    let time = ProgramTime { run_time: info.run_time(), runs: info.run_count() };
                    by_id.insert(info.id(), (name, time));
                }
            }
        }
        Ok(by_id)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the querying thread panicked"))??;
    let mut by_name = Attached::default();
    for (name, time) in by_id.into_values() {
        let sum = by_name.0.entry(name).or_default();
        sum.run_time += time.run_time;
        sum.runs += time.runs;
    }
    Ok(by_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_the_difference_of_both_totals() {
        let earlier = ProgramTime { run_time: Duration::from_nanos(100), runs: 2 };
        let later = ProgramTime { run_time: Duration::from_nanos(350), runs: 7 };
        assert_eq!(later.since(earlier), ProgramTime { run_time: Duration::from_nanos(250), runs: 5 });
    }

    #[test]
    fn a_program_attached_since_counts_from_zero_and_the_total_sums_names() {
        let time = |ns, runs| ProgramTime { run_time: Duration::from_nanos(ns), runs };
        let earlier = Attached([("lb_tc".to_owned(), time(100, 1))].into());
        let later = Attached([("lb_tc".to_owned(), time(300, 3)), ("lb_tc_egress".to_owned(), time(50, 2))].into());
        let spent = later.since(&earlier);
        assert_eq!(spent.0["lb_tc"], time(200, 2));
        assert_eq!(spent.0["lb_tc_egress"], time(50, 2));
        assert_eq!(spent.total(), time(250, 4));
    }
}
