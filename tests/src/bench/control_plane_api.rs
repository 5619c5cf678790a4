//! Control plane through the Kubernetes API: the real lb-agent with
//! `--source kubernetes`, watching a stand-in API server (the real
//! list/watch protocol over HTTP, in the node namespace) that holds N
//! Services × E endpoints (one EndpointSlice each), at each of the plan's
//! scales.
//!
//! - start → programmed: from spawning the agent to its ready file (load,
//!   attach, initial lists of Services and EndpointSlices, first sync);
//! - peak RSS (VmHWM) at that size;
//! - watch event → map write: an EndpointSlice is updated in the API
//!   server, and the pinned Service map is polled (every 50 µs) until the
//!   frontend's backend count changes. This includes the watch delivery
//!   over HTTP, the agent's pacing and the incremental sync.
//!
//! The stand-in serves lists straight from its store, so its own share of
//! the time stays small next to the agent's.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use lb_common::service::ServiceKeyV4;
use lb_userspace::datapath::maps::ServiceMaps;

use super::{
    Env,
    agent::peak_rss_kib_of,
    cancel,
    layouts::ebpf::{capacities_for, programming_timeout},
    plan::{ApiScale, ENDPOINTS_PER_SERVICE},
    report::{At, Report, Section, group},
    stats::{Summary, percentile},
    table::{NAMESPACE, Table},
};
use crate::{agent::Agent, apiserver::ApiServer, servers, topology::Topology};

/// The report's case names and labels for a scale: Services with the
/// usual 10 endpoints keep the plain names, other endpoint counts say theirs.
fn cases(endpoints: usize) -> (String, String, String) {
    if endpoints == ENDPOINTS_PER_SERVICE {
        return ("api_startup".into(), "api_event_to_map".into(), String::new());
    }
    (
        format!("api_startup_{endpoints}ep"),
        format!("api_event_to_map_{endpoints}ep"),
        format!(", {endpoints} endpoints per Service"),
    )
}

pub fn run(scale: &ApiScale, env: &Env, table: &Table, report: &mut Report) -> anyhow::Result<()> {
    let services = table.services.len();
    let endpoints = scale.endpoints_per_service;
    let (startup_case, change_case, per_service) = cases(endpoints);
    report.describe(
        Section::ControlPlane,
        &startup_case,
        &format!("agent start → maps programmed (Kubernetes API source{per_service})"),
        &format!("the real lb-agent with --source kubernetes against a stand-in API server (real list/watch protocol over HTTP, lists written straight from its store so the agent's time dominates) holding the table ({endpoints} endpoints per Service, one EndpointSlice each); from spawning the agent to its ready file: load, attach, initial lists of Services and EndpointSlices, first sync; peak RSS (VmHWM) read right after"),
    );
    report.describe(
        Section::ControlPlane,
        &change_case,
        &format!("watch event → map write (Kubernetes API source{per_service})"),
        "one endpoint of one Service flips ready ↔ not ready in the API server; the time until the pinned map shows the frontend's new backend count (polled every 50 µs): watch delivery, the agent's pacing (--min-sync-period 10ms coalescing window, only when changes come faster) and the incremental sync",
    );
    env.progress.start(format!(
        "control plane: Kubernetes API source with {} Services × {endpoints} endpoints",
        group(services as f64)
    ));
    let topology = Topology::create(1)?;
    let api = servers::in_netns(&topology.node, || Ok(ApiServer::start()))?;
    let services_json = table.service_objects();
    let mut slices = table.slice_objects();
    for svc in &services_json {
        api.apply(serde_json::to_value(svc)?);
    }
    for slice in &slices {
        api.apply(serde_json::to_value(slice)?);
    }
    let kubeconfig = env.work_dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let caps = capacities_for(services, endpoints);
    let args: Vec<String> = [
        "--source",
        "kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().context("UTF-8 path")?,
        "--services-max",
        &caps.services.to_string(),
        "--backends-max",
        &caps.backends.to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let started = Instant::now();
    let mut agent = Agent::start_with(&topology.node, &args)?;
    agent.wait_ready(programming_timeout(services) * 2)?;
    let startup = started.elapsed();
    let rss_mib = peak_rss_kib_of(agent.pid())? as f64 / 1024.0;
    let maps = ServiceMaps::from_pins(&agent.pin_dir)?;
    let one = |v: f64| Summary::of(&[v]).expect("one value");
    report.add(
        At::new(Section::ControlPlane, "ebpf", &startup_case, services),
        "startup",
        "ms",
        one(startup.as_secs_f64() * 1e3),
    );
    report.add(At::new(Section::ControlPlane, "ebpf", &startup_case, services), "peak_rss", "MiB", one(rss_mib));

    let mut millis = Vec::with_capacity(scale.changes);
    for change in 0..scale.changes {
        cancel::check()?;
        let index = (change * 7_919 + 13) % services;
        let svc = &table.services[index];
        let key = ServiceKeyV4::frontend(svc.cluster_ip.octets(), table.port.port, table.port.protocol.number());
        let before = maps.service_entry(&key).context("frontend missing")?.count;
        let endpoint = slices[index].endpoints.first_mut().context("slice without endpoints")?;
        let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        endpoint.conditions = Some(k8s_openapi::api::discovery::v1::EndpointConditions {
            ready: Some(!ready),
            serving: Some(!ready),
            terminating: Some(false),
        });
        let value = serde_json::to_value(&slices[index])?;
        let t0 = Instant::now();
        api.apply(value);
        loop {
            if maps.service_entry(&key).is_some_and(|v| v.count != before) {
                break;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "change {change} ({NAMESPACE}/{}) never reached the map",
                svc.name
            );
            std::thread::sleep(Duration::from_micros(50));
        }
        millis.push(t0.elapsed().as_secs_f64() * 1e3);
        // Space the changes out so each is measured alone, not coalesced.
        std::thread::sleep(Duration::from_millis(15));
    }
    let mut sorted = millis;
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| Summary {
        median: percentile(&sorted, p),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
        samples: sorted.len(),
    };
    report.add(At::new(Section::ControlPlane, "ebpf", &change_case, services), "latency_p50", "ms", at(50.0));
    report.add(At::new(Section::ControlPlane, "ebpf", &change_case, services), "latency_p99", "ms", at(99.0));
    env.progress.log(&format!(
        "  Kubernetes source, {} Services × {endpoints} endpoints: programmed after {:.0} ms, peak RSS {rss_mib:.1} MiB, event → map p50 {:.2} ms p99 {:.2} ms",
        group(services as f64),
        startup.as_secs_f64() * 1e3,
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
    ));
    env.progress.done_step();
    drop(agent);
    drop(api);
    Ok(())
}
