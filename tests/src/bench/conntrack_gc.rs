//! What the agent's periodic work costs on a full conntrack table
//! (`--conntrack-max` entries, the default 1 Mi; 64 Ki in the smoke run):
//! one garbage collection pass, half of the flows past their timeout and
//! half live, swept by the agent's own code (`conntrack::sweep`) on a real
//! kernel map; and one `/metrics` scrape, which a Prometheus server asks
//! for every 15 to 60 seconds, rendered by the agent's own code from the
//! pinned maps. Reported under the control plane: both are the agent's
//! work, the datapath never waits for them.

use std::net::Ipv4Addr;

use aya::maps::IterableMap as _;

use lb_common::{
    backend::BackendV4,
    conntrack::{CtKeyV4, CtValueV4, DIR_ORIGINAL, FLAG_ESTABLISHED},
    maps::CONNTRACK_V4_CAPACITY,
    proto,
};
use lb_userspace::{
    conntrack::{
        clock,
        expiry::Timeouts,
        flows,
        sweep::{self, ConntrackMap, Rules},
    },
    datapath::{batch, loader::Capacities},
    metrics::{Metrics, SyncMetrics},
    model::NodeContext,
};

use super::{
    Env,
    plan::Mode,
    report::{At, Report, Section},
    stats::Summary,
};
use crate::{datapath::Datapath, pin_dir::PinDir};

const CASE: &str = "conntrack_gc";
const SCRAPE_CASE: &str = "metrics_scrape";
const BACKEND: BackendV4 = BackendV4 { address: [10, 244, 1, 2], port: 8080, proto: proto::TCP, flags: 0 };
/// Every timeout, seconds; expired entries are stamped twice as old.
const TIMEOUT_S: u32 = 10;

/// Both entries of flow `i`, idle for `idle_s`.
fn flow(i: u32, now: u32, idle_s: u32) -> [(CtKeyV4, CtValueV4); 2] {
    let client = Ipv4Addr::from(0x0a00_0000 | (i >> 14)).octets();
    let key = CtKeyV4 {
        src_address: client,
        dst_address: [10, 96, 0, 10],
        src_port: 1024 + (i & 0x3fff) as u16,
        dst_port: 80,
        proto: proto::TCP,
        direction: DIR_ORIGINAL,
        _pad: [0; 2],
    };
    let value = CtValueV4 {
        backend_id: 1,
        frontend_id: 1,
        frontend_address: key.dst_address,
        frontend_port: 80,
        flags: FLAG_ESTABLISHED,
        created_s: now - idle_s,
        last_seen_s: now - idle_s,
        ..CtValueV4::default()
    };
    [(key, value), (flows::reply_key(&key, &value, &BACKEND), value)]
}

/// Fills the table: every other flow expired.
fn fill(map: &ConntrackMap, entries: u32, now: u32) -> anyhow::Result<()> {
    let all: Vec<(CtKeyV4, CtValueV4)> =
        (0..entries / 2).flat_map(|i| flow(i, now, if i % 2 == 0 { 0 } else { 2 * TIMEOUT_S })).collect();
    anyhow::ensure!(batch::update_all(map.map(), &all)?, "the kernel cannot batch-update LB4_CT");
    Ok(())
}

pub fn run(mode: Mode, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    // The smoke run only proves the case runs.
    let entries = if mode == Mode::Smoke { 1 << 16 } else { CONNTRACK_V4_CAPACITY };
    report.describe(
        Section::ControlPlane,
        CASE,
        "conntrack garbage collection, one pass over a full table",
        &format!("LB4_CT filled to its default capacity ({entries} entries, two per flow) with one BPF_MAP_UPDATE_BATCH (the LRU evicts a few dozen on the way), every other flow idle past its timeout; one call of the agent's conntrack::sweep (batched read, grouping by flow, batched delete of the expired half) is timed. The Services column holds the entries swept"),
    );
    let repetitions = if mode == Mode::Full { 5 } else { 2 };
    env.progress.start(format!("conntrack GC: {repetitions} sweeps of {entries} entries"));
    let dp = Datapath::load_with(NodeContext::default(), Capacities { conntrack: entries, ..Capacities::default() })?;
    let mut map = dp.conntrack_map()?;
    let timeouts = Timeouts {
        tcp_syn: TIMEOUT_S,
        tcp_established: TIMEOUT_S,
        tcp_close: TIMEOUT_S,
        udp: TIMEOUT_S,
        udp_stream: TIMEOUT_S,
    };
    let mut millis = Vec::new();
    for _ in 0..repetitions {
        let now = clock::now_s();
        fill(&map, entries, now)?;
        let rules = Rules { timeouts: &timeouts, backend: &|_| Some(BACKEND), now_s: now };
        let swept = sweep::sweep(&mut map, &rules)?;
        // A full LRU map evicts a few entries while it is filled (its free
        // list is spread over CPUs), so not quite every expired one is left.
        let expired = entries as usize / 2;
        let removed = swept.removed_total();
        anyhow::ensure!(removed <= expired && removed * 100 >= expired * 99, "removed {removed} of {expired} expired");
        millis.push(swept.took.as_secs_f64() * 1e3);
    }
    if let Some(summary) = Summary::of(&millis) {
        report.add(At::new(Section::ControlPlane, "ebpf", CASE, entries as usize), "sweep", "ms", summary);
    }
    drop(map);
    drop(dp);
    scrape(entries, repetitions, report)?;
    env.progress.done_step();
    Ok(())
}

/// Times `/metrics` as the agent renders it, over maps pinned with the
/// agent's default capacities and a conntrack table holding `entries`.
fn scrape(entries: u32, repetitions: usize, report: &mut Report) -> anyhow::Result<()> {
    report.describe(
        Section::ControlPlane,
        SCRAPE_CASE,
        "one /metrics scrape, conntrack table full",
        &format!("the agent's Metrics::render over pinned maps (default capacities) whose LB4_CT holds {entries} entries, as a Prometheus scrape makes the agent do; timed {repetitions} times. The Services column holds the conntrack entries"),
    );
    let pins = PinDir::unique("bench-scrape");
    let dp = Datapath::load_pinned(NodeContext::default(), &pins.0)?;
    fill(&dp.conntrack_map()?, entries, clock::now_s())?;
    let metrics = Metrics::new(&SyncMetrics::default(), pins.0.clone());
    let mut millis = Vec::new();
    for _ in 0..repetitions {
        let started = std::time::Instant::now();
        let text = metrics.render();
        millis.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(text.contains("lb_datapath_packets_total"), "the scrape shows the datapath's counters");
    }
    if let Some(summary) = Summary::of(&millis) {
        report.add(At::new(Section::ControlPlane, "ebpf", SCRAPE_CASE, entries as usize), "scrape", "ms", summary);
    }
    Ok(())
}
