//! Part 3: the control plane. The agent binary is started with a file
//! source (a JSON file of objects): the benchmark has no API server.
//!
//! - Agent start → maps programmed: the real `lb-agent` binary, started in
//!   a node namespace with a JSON file of N Services × 10 endpoints,
//!   timed until its "datapath programmed" and "datapath attached" log
//!   lines (the programs are verified beside the first sync), then checked by
//!   reading the pinned maps; its peak RSS (VmHWM) at that point.
//! - One EndpointSlice change → map writes: measured in-process with the
//!   agent's `Syncer`, one endpoint flipped per change, through the full
//!   path (`sync`: everything re-translated, the maps read back and
//!   compared, as the file source and the periodic full sync do) and the incremental one (`update`: only the changed
//!   Service, as the Kubernetes source does). Polling, file parsing and
//!   watch delivery are not included.

use std::{net::Ipv4Addr, time::Instant};

use anyhow::{Context as _, ensure};
use lb_userspace::{datapath::maps::ServiceMaps, model::NodeContext};

use super::{
    Env,
    agent::{Agent, AgentConfig},
    cancel, control_plane_api,
    layouts::ebpf::{capacities_for, programming_timeout},
    plan::{ControlPlan, ENDPOINTS_PER_SERVICE},
    report::{At, Report, Section, group},
    stats::{Summary, percentile},
    table::{HTTP, NAMESPACE, Table, TableSpec},
};
use crate::{datapath::Datapath, topology::Topology};

/// Pod addresses the endpoints are drawn from.
const POD_POOL: usize = 20_000;

fn table(services: usize, endpoints_per_service: usize) -> Table {
    Table::generate(&TableSpec {
        services,
        port: HTTP,
        pool: (0..POD_POOL).map(|i| Ipv4Addr::new(10, 244, (i / 250) as u8, (2 + i % 250) as u8)).collect(),
        endpoints_per_service,
        node_ports: 0,
    })
}

pub fn run(plan: &ControlPlan, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    report.describe(
        Section::ControlPlane,
        "agent_startup",
        "agent start → maps programmed",
        "the real lb-agent with a JSON file source (--source file:…) in a node namespace, from spawning the process to reading the later of its \"datapath programmed\" and \"datapath attached\" log lines (loading the object; verifying and attaching the programs, beside reading and parsing the file, translating and writing the maps); the pinned maps are then read back to check every frontend is there. sync = the agent's own timing of the translate→write step from the same log line",
    );
    report.describe(
        Section::ControlPlane,
        "agent_memory",
        "agent peak RSS",
        "VmHWM of the agent process from /proc/PID/status, right after it programmed the table",
    );
    report.describe(
        Section::ControlPlane,
        "endpoint_change",
        "one EndpointSlice change → map writes, full sync (in-process Syncer)",
        "measured in-process, not through the agent binary: one endpoint of one Service flips ready ↔ not ready, then Syncer::sync() re-translates all objects, reads every map back from the kernel (drift repair), diffs every entry against what the maps hold and writes the difference to real (unpinned) kernel maps: the file source's path and the periodic full sync (its polling interval and re-parsing of the file are not included)",
    );
    report.describe(
        Section::ControlPlane,
        "endpoint_change_incremental",
        "one EndpointSlice change → map writes, incremental (in-process Syncer)",
        "the same changes through Syncer::update() with only the changed Service and its slice: re-translates that Service and compares only the entries it touches, the path the Kubernetes source takes per watch event (watch delivery itself is not included)",
    );
    for &services in &plan.startup_sizes {
        cancel::check()?;
        env.progress.start(format!("control plane: agent start with {} Services", group(services as f64)));
        startup(env, services, report).with_context(|| format!("agent start with {services} Services"))?;
        env.progress.done_step();
    }
    cancel::check()?;
    env.progress.start(format!(
        "control plane: {} endpoint changes at {} Services",
        plan.changes,
        group(plan.change_size as f64)
    ));
    endpoint_changes(plan, report)?;
    env.progress.done_step();
    for scale in &plan.api_scales {
        cancel::check()?;
        let table = table(scale.services, scale.endpoints_per_service);
        control_plane_api::run(scale, env, &table, report).with_context(|| {
            format!("Kubernetes source with {} Services × {} endpoints", scale.services, scale.endpoints_per_service)
        })?;
    }
    Ok(())
}

fn startup(env: &Env, services: usize, report: &mut Report) -> anyhow::Result<()> {
    let topology = Topology::create(1)?;
    let table = table(services, ENDPOINTS_PER_SERVICE);
    let source = env.work_dir.join(format!("control-{services}.json"));
    table.write_json(&source)?;
    let mut agent = Agent::start(&AgentConfig {
        bin: &env.agent_bin,
        netns: &topology.node,
        source: &source,
        capacities: capacities_for(services, ENDPOINTS_PER_SERVICE),
        extra_args: &[],
    })?;
    let programmed = agent.wait_programmed(services, programming_timeout(services))?;
    let startup = programmed.at.duration_since(agent.started);
    let rss_kib = agent.peak_rss_kib()?;
    let held = ServiceMaps::from_pins(agent.pin_dir())?.read_all()?;
    let frontends = held.services.keys().filter(|k| k.backend_slot == 0).count();
    ensure!(frontends == services, "the pinned maps hold {frontends} frontends, expected {services}");
    let one = |v: f64| Summary::of(&[v]).expect("one value");
    report.add(
        At::new(Section::ControlPlane, "ebpf", "agent_startup", services),
        "startup",
        "ms",
        one(startup.as_secs_f64() * 1e3),
    );
    report.add(
        At::new(Section::ControlPlane, "ebpf", "agent_startup", services),
        "sync",
        "ms",
        one(programmed.took_us as f64 / 1e3),
    );
    report.add(
        At::new(Section::ControlPlane, "ebpf", "agent_startup", services),
        "map_writes",
        "writes",
        one(programmed.writes as f64),
    );
    report.add(
        At::new(Section::ControlPlane, "ebpf", "agent_memory", services),
        "peak_rss",
        "MiB",
        one(rss_kib as f64 / 1024.0),
    );
    env.progress.log(&format!(
        "  agent with {} Services: programmed after {:.0} ms ({} writes), peak RSS {:.1} MiB",
        group(services as f64),
        startup.as_secs_f64() * 1e3,
        programmed.writes,
        rss_kib as f64 / 1024.0
    ));
    drop(agent);
    Ok(())
}

/// Which of the agent's sync paths a change goes through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncPath {
    /// `Syncer::sync`: every object re-translated, every entry compared
    /// (the file source, relists, the periodic resync).
    Full,
    /// `Syncer::update`: only the changed Service re-translated and only
    /// the entries it touches compared (the Kubernetes source).
    Incremental,
}

fn endpoint_changes(plan: &ControlPlan, report: &mut Report) -> anyhow::Result<()> {
    let services = plan.change_size;
    let table = table(services, ENDPOINTS_PER_SERVICE);
    let mut dp = Datapath::load_with(NodeContext::default(), capacities_for(services, ENDPOINTS_PER_SERVICE))?;
    let service_objects = table.service_objects();
    let mut slices = table.slice_records();
    let initial = dp.syncer_mut().sync(&service_objects, &slices)?;
    ensure!(initial.frontends == services, "initial sync made {} frontends", initial.frontends);
    for (path, case) in [(SyncPath::Full, "endpoint_change"), (SyncPath::Incremental, "endpoint_change_incremental")] {
        let mut millis = Vec::with_capacity(plan.changes);
        let mut writes = Vec::with_capacity(plan.changes);
        for change in 0..plan.changes {
            cancel::check()?;
            // Spread the changes over the table; the same slice may flip back.
            let index = (change * 7_919 + 13) % services;
            let endpoint = slices[index].endpoints.first_mut().context("slice without endpoints")?;
            let ready = endpoint.ready.unwrap_or(true);
            (endpoint.ready, endpoint.serving, endpoint.terminating) = (Some(!ready), Some(!ready), Some(false));
            let started = Instant::now();
            let sync = match path {
                SyncPath::Full => dp.syncer_mut().sync(&service_objects, &slices)?,
                SyncPath::Incremental => {
                    let key = (NAMESPACE.to_owned(), table.services[index].name.clone());
                    let change = (key, Some(&service_objects[index]), vec![&slices[index]]);
                    dp.syncer_mut().update([change])?
                }
            };
            millis.push(started.elapsed().as_secs_f64() * 1e3);
            ensure!(sync.writes > 0, "an endpoint change produced no map write");
            writes.push(sync.writes as f64);
        }
        let mut sorted = millis.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |p: f64| Summary {
            median: percentile(&sorted, p),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            samples: sorted.len(),
        };
        report.add(At::new(Section::ControlPlane, "ebpf", case, services), "sync_p50", "ms", at(50.0));
        report.add(At::new(Section::ControlPlane, "ebpf", case, services), "sync_p99", "ms", at(99.0));
        report.add(
            At::new(Section::ControlPlane, "ebpf", case, services),
            "map_writes",
            "writes",
            Summary::of(&writes).context("no change")?,
        );
    }
    // Both paths must leave the maps as a full translation wants them.
    let check = dp.syncer_mut().sync(&service_objects, &slices)?;
    ensure!(check.writes == 0, "a full sync after the changes still found {} writes", check.writes);
    Ok(())
}
