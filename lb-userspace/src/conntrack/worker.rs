//! The thread that removes conntrack entries: a garbage collection pass
//! every interval, and a UDP purge as soon as a sync asks for one, over
//! both families' tables (`LB4_CT`, `LB6_CT`) with the same rules. It
//! makes blocking syscalls, so it runs beside the sync loop, never in it.
//! The datapath never waits for a whole pass: the kernel locks one hash
//! bucket at a time for the batched reads and deletes.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{
    conntrack::{CtKeyV4, CtKeyV6},
    maps as names,
};
use tracing::{debug, info, warn};

use super::{
    clock,
    expiry::Timeouts,
    flows::FlowKey,
    metrics::ConntrackMetrics,
    stale_udp::{Listed, Pair, Trigger},
    sweep::{self, ConntrackTable, Rules, SweepReport},
};

/// Occupancy (per mille of capacity) above which each pass warns: the
/// LRU is about to evict the idlest flows, live or not.
const PRESSURE_PER_MILLE: usize = 900;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub interval: Duration,
    pub timeouts: Timeouts,
    pub capacity: u32,
    pub capacity_v6: u32,
}

/// What the worker exports, one set per family.
#[derive(Debug)]
pub struct Metrics {
    pub v4: Arc<ConntrackMetrics>,
    pub v6: Arc<ConntrackMetrics>,
}

/// The sync loop's side: tells the worker when a sync left UDP flows to
/// purge.
#[derive(Debug)]
pub struct Handle {
    trigger: Mutex<Trigger>,
    requests: mpsc::Sender<Listed>,
}

impl Handle {
    /// After a successful sync: `pairs` are the endpoints each UDP
    /// frontend lists now (`Syncer::listed_udp_pairs`).
    pub fn synced(&self, pairs: BTreeSet<Pair>) {
        let listed = self.trigger.lock().expect("trigger lock").after_sync(pairs);
        if let Some(listed) = listed {
            // The worker gone (it failed to open the maps) was logged.
            let _ = self.requests.send(listed);
        }
    }
}

fn open<K: aya::Pod, V: aya::Pod>(pin_dir: &Path, name: &str) -> anyhow::Result<BpfHashMap<MapData, K, V>> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(Map::from_map_data(data)?.try_into()?)
}

/// Starts the worker over the maps pinned in `pin_dir`.
pub fn spawn(pin_dir: PathBuf, config: Config, metrics: Metrics) -> Handle {
    let (requests, incoming) = mpsc::channel();
    std::thread::spawn(move || {
        if let Err(e) = run(&pin_dir, config, &metrics, &incoming) {
            warn!(error = %format!("{e:#}"), "conntrack garbage collection stopped");
        }
    });
    Handle { trigger: Mutex::default(), requests }
}

/// One family's conntrack table, with what its garbage collection needs:
/// the backend table (an original entry's reply key names its backend's
/// address) and where it reports.
struct Family<'a, K: FlowKey> {
    ct: ConntrackTable<K>,
    backends: BpfHashMap<MapData, u32, K::Backend>,
    capacity: u32,
    metrics: &'a ConntrackMetrics,
    /// `--conntrack-max` or `--conntrack-max-v6`, for the warning.
    flag: &'static str,
}

impl<'a, K: FlowKey> Family<'a, K> {
    fn open(
        pin_dir: &Path,
        (conntrack, backends): (&str, &str),
        capacity: u32,
        metrics: &'a ConntrackMetrics,
        flag: &'static str,
    ) -> anyhow::Result<Self> {
        Ok(Self { ct: open(pin_dir, conntrack)?, backends: open(pin_dir, backends)?, capacity, metrics, flag })
    }

    fn purge(&mut self, listed: &Listed) {
        match sweep::purge_udp(&mut self.ct, listed) {
            Ok(0) => {}
            Ok(n) => {
                self.metrics.purged(n);
                info!(entries = n, "removed UDP flows to endpoints that left their Service");
            }
            Err(e) => {
                self.metrics.failed();
                warn!(error = %format!("{e:#}"), "purging stale UDP flows");
            }
        }
    }

    fn sweep(&mut self, timeouts: &Timeouts) {
        let backends = &self.backends;
        let rules = Rules { timeouts, backend: &|id| backends.get(&id, 0).ok(), now_s: clock::now_s() };
        match sweep::sweep(&mut self.ct, &rules) {
            Ok(report) => reported(&report, self.capacity, self.flag, self.metrics),
            Err(e) => {
                self.metrics.failed();
                warn!(error = %format!("{e:#}"), "conntrack garbage collection pass failed");
            }
        }
    }
}

fn run(pin_dir: &Path, config: Config, metrics: &Metrics, incoming: &mpsc::Receiver<Listed>) -> anyhow::Result<()> {
    let tables = (names::CONNTRACK_V4, names::BACKENDS_V4);
    let mut v4: Family<CtKeyV4> = Family::open(pin_dir, tables, config.capacity, &metrics.v4, "--conntrack-max")?;
    let tables = (names::CONNTRACK_V6, names::BACKENDS_V6);
    let mut v6: Family<CtKeyV6> = Family::open(pin_dir, tables, config.capacity_v6, &metrics.v6, "--conntrack-max-v6")?;
    let mut next = Instant::now() + config.interval;
    loop {
        match incoming.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(mut listed) => {
                // Only the latest state matters.
                while let Ok(newer) = incoming.try_recv() {
                    listed = newer;
                }
                // Ids are shared by both families: one list serves both.
                v4.purge(&listed);
                v6.purge(&listed);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                v4.sweep(&config.timeouts);
                v6.sweep(&config.timeouts);
                next = Instant::now() + config.interval;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

fn reported(report: &SweepReport, capacity: u32, flag: &str, metrics: &ConntrackMetrics) {
    metrics.swept(report);
    let left = report.entries - report.removed_total();
    let took_ms = report.took.as_millis() as u64;
    if left * 1000 > capacity as usize * PRESSURE_PER_MILLE {
        warn!(entries = left, capacity, "conntrack table over 90% full: new flows evict the idlest ones; raise {flag}");
    }
    if report.removed_total() > 0 || report.orphans > 0 {
        debug!(entries = left, removed = report.removed_total(), orphans = report.orphans, took_ms, "conntrack swept");
    }
}
