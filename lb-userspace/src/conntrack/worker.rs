//! The thread that removes conntrack entries: a garbage collection pass
//! every interval, and a UDP purge as soon as a sync asks for one. It
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
use lb_common::{backend::BackendV4, maps as names};
use tracing::{debug, info, warn};

use super::{
    clock,
    expiry::Timeouts,
    metrics::ConntrackMetrics,
    stale_udp::{Listed, Pair, Trigger},
    sweep::{self, ConntrackMap, Rules, SweepReport},
};

/// Occupancy (per mille of capacity) above which each pass warns: the
/// LRU is about to evict the idlest flows, live or not.
const PRESSURE_PER_MILLE: usize = 900;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub interval: Duration,
    pub timeouts: Timeouts,
    pub capacity: u32,
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
pub fn spawn(pin_dir: PathBuf, config: Config, metrics: Arc<ConntrackMetrics>) -> Handle {
    let (requests, incoming) = mpsc::channel();
    std::thread::spawn(move || {
        if let Err(e) = run(&pin_dir, config, &metrics, &incoming) {
            warn!(error = %format!("{e:#}"), "conntrack garbage collection stopped");
        }
    });
    Handle { trigger: Mutex::default(), requests }
}

fn run(
    pin_dir: &Path,
    config: Config,
    metrics: &ConntrackMetrics,
    incoming: &mpsc::Receiver<Listed>,
) -> anyhow::Result<()> {
    let mut ct: ConntrackMap = open(pin_dir, names::CONNTRACK_V4)?;
    let backends: BpfHashMap<MapData, u32, BackendV4> = open(pin_dir, names::BACKENDS_V4)?;
    let mut next = Instant::now() + config.interval;
    loop {
        match incoming.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(mut listed) => {
                // Only the latest state matters.
                while let Ok(newer) = incoming.try_recv() {
                    listed = newer;
                }
                match sweep::purge_udp(&mut ct, &listed) {
                    Ok(0) => {}
                    Ok(n) => {
                        metrics.purged(n);
                        info!(entries = n, "removed UDP flows to endpoints that left their Service");
                    }
                    Err(e) => {
                        metrics.failed();
                        warn!(error = %format!("{e:#}"), "purging stale UDP flows");
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let rules = Rules {
                    timeouts: &config.timeouts,
                    backend: &|id| backends.get(&id, 0).ok(),
                    now_s: clock::now_s(),
                };
                match sweep::sweep(&mut ct, &rules) {
                    Ok(report) => reported(&report, config.capacity, metrics),
                    Err(e) => {
                        metrics.failed();
                        warn!(error = %format!("{e:#}"), "conntrack garbage collection pass failed");
                    }
                }
                next = Instant::now() + config.interval;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

fn reported(report: &SweepReport, capacity: u32, metrics: &ConntrackMetrics) {
    metrics.swept(report);
    let left = report.entries - report.removed_total();
    let took_ms = report.took.as_millis() as u64;
    if left * 1000 > capacity as usize * PRESSURE_PER_MILLE {
        warn!(
            entries = left,
            capacity, "conntrack table over 90% full: new flows evict the idlest ones; raise --conntrack-max"
        );
    }
    if report.removed_total() > 0 || report.orphans > 0 {
        debug!(entries = left, removed = report.removed_total(), orphans = report.orphans, took_ms, "conntrack swept");
    }
}
