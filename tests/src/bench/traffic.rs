//! Part 2: real TCP and UDP traffic from a client namespace through the
//! node namespace to backend namespaces, with each datapath. Every
//! (table size, protocol, datapath) cell gets its own copy of the same
//! topology, with the same endpoints and addresses, so no layout inherits
//! another's conntrack or netfilter state; the copies exist side by side
//! and their runs are interleaved.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use lb_common::{maps::CONNTRACK_V4_CAPACITY, stats::Counter};
use lb_userspace::model::Protocol;

use super::{
    Env,
    backends::{BackendHost, BackendServers},
    cancel,
    layouts::{self, Installed, Layout, Target},
    loadgen::{self, LoadResult, LoadSpec},
    plan::{ENDPOINTS_PER_SERVICE, TrafficPlan},
    report::{At, Report, Section, group},
    stats::Summary,
    table::{DNS, HTTP, PortSpec, Table, TableSpec},
};
use crate::topology::{Topology, run_in};

/// Client threads opening TCP connections (each waits for its answer).
const TCP_CLIENT_THREADS: usize = 8;
/// Client addresses TCP connections come from (10.0.1.2 and the next
/// ones): enough 4-tuples that none repeats within a cell.
const CLIENT_ADDRESSES: u8 = 32;
/// UDP client threads, each with this many sockets in flight.
const UDP_CLIENT_THREADS: usize = 2;
const UDP_SOCKETS_PER_THREAD: usize = 64;

struct TrafficKind {
    case: &'static str,
    label: &'static str,
    port: PortSpec,
}

const RUNS: [TrafficKind; 2] = [
    TrafficKind { case: "tcp_connections", label: "New TCP connections per second", port: HTTP },
    TrafficKind {
        case: "udp_packets",
        label: "UDP packets per second (request + answer, established flows)",
        port: DNS,
    },
];

pub fn run(plan: &TrafficPlan, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let secs = plan.run_time.as_secs_f64();
    report.describe(
        Section::Traffic,
        "tcp_connections",
        RUNS[0].label,
        &format!(
            "{TCP_CLIENT_THREADS} client threads each connect, send 4 bytes, read the 4-byte answer and close with RST (no TIME_WAIT); one new connection per operation, round-robin over up to {} Services spread over the table and over {CLIENT_ADDRESSES} client addresses, so no 4-tuple repeats within a run (a repeated tuple would find an earlier connection's conntrack entry in the eBPF datapath and not be a new flow; the datapath's new-flow counter is checked against the connection count). Median (min–max) connections/s over {} run(s) of {secs:.1} s (also capped at {} connections), after a warm-up; CPU is per connection.",
            plan.max_targets, plan.repetitions, group(plan.max_ops as f64)
        ),
    );
    report.describe(
        Section::Traffic,
        "udp_packets",
        RUNS[1].label,
        &format!(
            "{} flows ({UDP_CLIENT_THREADS} client threads × {UDP_SOCKETS_PER_THREAD} sockets), each a socket talking to one Service, the flows spread over up to {} Services across the table; each keeps one 32-byte datagram in flight and the backend echoes it. After the first exchange every packet belongs to an established flow, so this is the per-packet cost of established flows (new flows are the TCP test). Packets/s counts requests and answers that made it (both cross the node's datapath); a datagram unanswered after 200 ms counts as failed. CPU is per packet.",
            UDP_CLIENT_THREADS * UDP_SOCKETS_PER_THREAD,
            plan.max_targets
        ),
    );
    report.describe(
        Section::Traffic,
        "install",
        "Time to install the layout (TCP table)",
        "iptables-restore / nft -f of the generated rules, or agent start → maps programmed (JSON file source), in the node namespace.",
    );
    report.note(
        Section::Traffic,
        format!(
            "Topology: client ns (10.0.1.2…) — node ns (forwarding; datapath or rules here) — {} backend ns with {} pod addresses each (10.244.i.2…); every Service has {ENDPOINTS_PER_SERVICE} endpoints from those {} addresses, identical for all layouts. Each layout gets its own copy of this topology (no shared conntrack or netfilter state); the copies are set up side by side and their runs interleaved (A, B, C, D, A, …), so background load hits all layouts alike. TCP servers listen on 0.0.0.0:{} in each backend ns; UDP servers bind each pod address on port {} (an answer must leave from the address asked).",
            plan.backend_namespaces,
            plan.addresses_per_backend,
            plan.backend_namespaces * plan.addresses_per_backend,
            HTTP.target_port,
            DNS.target_port
        ),
    );
    report.note(
        Section::Traffic,
        "Layouts: ebpf = lb-agent attached at tc ingress of every node interface; iptables / nftables = kube-proxy's rule layouts generated as kube-proxy writes them (KUBE-SERVICES → KUBE-SVC → KUBE-SEP with statistic probabilities; table ip kube-proxy with the service-ips vmap and numgen), cluster CIDR 10.0.0.0/8 so the client counts as a pod and is not masqueraded (as with ebpf); none = the client addresses the Services' endpoints directly (plain routing, the floor). No IPVS in this kernel, so no IPVS column.",
    );
    report.note(
        Section::Traffic,
        "CPU time = this process (load generator and servers, plus the kernel's packet processing that runs on their threads) + the ksoftirqd threads, divided by completed operations. Other processes on the machine are not counted but do slow the rates: \"others N cores\" in a cell is the CPU they used meanwhile (from /proc/stat; shown from 0.1 cores), a sign that cell is disturbed.",
    );
    for &services in &plan.sizes {
        for protocolled in &RUNS {
            measure_size(plan, env, report, services, protocolled)?;
        }
    }
    Ok(())
}

/// One table size and protocol: every layout set up side by side, each
/// in its own copy of the topology, then their runs interleaved (A, B,
/// C, D, A, B, …) so that whatever else the machine does disturbs all of
/// them alike.
fn measure_size(
    plan: &TrafficPlan,
    env: &Env,
    report: &mut Report,
    services: usize,
    run: &TrafficKind,
) -> anyhow::Result<()> {
    let what = |layout: Layout| format!("{} at {} Services, {}", layout.name(), group(services as f64), run.case);
    let mut benches = Vec::new();
    for layout in Layout::ALL {
        cancel::check()?;
        env.progress.start(format!("traffic: setting up {}", what(layout)));
        match LayoutBench::set_up(plan, env, services, run.port, layout) {
            Ok(bench) => benches.push(bench),
            Err(e) if cancel::cancelled() => return Err(e),
            Err(e) => {
                report.warn(format!("traffic {}: {e:#}", what(layout)));
                env.progress.done_step();
            }
        }
    }
    for bench in &mut benches {
        cancel::check()?;
        env.progress.start(format!("traffic: warming up {}", what(bench.layout)));
        if let Err(e) = bench.measure(false, env) {
            bench.failed = Some(e);
        }
    }
    for round in 0..plan.repetitions {
        for bench in benches.iter_mut().filter(|b| b.failed.is_none()) {
            cancel::check()?;
            env.progress.start(format!("traffic: run {}/{} of {}", round + 1, plan.repetitions, what(bench.layout)));
            if let Err(e) = bench.measure(true, env) {
                bench.failed = Some(e);
            }
        }
    }
    for bench in benches {
        cancel::check()?;
        match bench.finish(env) {
            Ok(cell) => record(report, services, run, bench.layout, &cell),
            Err(e) => report.warn(format!("traffic {}: {e:#}", what(bench.layout))),
        }
        env.progress.done_step();
    }
    Ok(())
}

struct Cell {
    results: Vec<LoadResult>,
    install_seconds: Option<f64>,
    /// ebpf only: flows the datapath balanced, from its counters.
    new_flows: Option<u64>,
    /// ebpf only: conntrack entries left after the case's runs.
    conntrack_entries: Option<usize>,
    /// Connections or exchanges attempted, warm-up included.
    operations: u64,
}

fn record(report: &mut Report, services: usize, run: &TrafficKind, layout: Layout, cell: &Cell) {
    let dp = layout.name();
    // A UDP exchange is two packets through the node; a TCP op one connection.
    let per_op = if run.port.protocol == Protocol::Udp { 2.0 } else { 1.0 };
    let rates: Vec<f64> = cell.results.iter().map(|r| r.rate() * per_op).collect();
    let cpu: Vec<f64> = cell
        .results
        .iter()
        .filter(|r| r.ops > 0)
        .map(|r| r.cpu.as_secs_f64() * 1e6 / (r.ops as f64 * per_op))
        .collect();
    let errors: Vec<f64> = cell.results.iter().map(|r| r.errors as f64).collect();
    let unit = if run.port.protocol == Protocol::Udp { "packets/s" } else { "connections/s" };
    let cpu_unit = if run.port.protocol == Protocol::Udp { "us/packet" } else { "us/connection" };
    if let Some(s) = Summary::of(&rates) {
        report.add(At::new(Section::Traffic, dp, run.case, services), "rate", unit, s);
    }
    if let Some(s) = Summary::of(&cpu) {
        report.add(At::new(Section::Traffic, dp, run.case, services), "cpu", cpu_unit, s);
    }
    let others: Vec<f64> = cell.results.iter().map(|r| r.others_cpu.as_secs_f64() / r.elapsed.as_secs_f64()).collect();
    if let Some(s) = Summary::of(&others) {
        report.add(At::new(Section::Traffic, dp, run.case, services), "others_cpu", "cores", s);
    }
    if let Some(s) = Summary::of(&errors) {
        report.add(At::new(Section::Traffic, dp, run.case, services), "errors", "count", s);
    }
    if let (Some(seconds), Protocol::Tcp) = (cell.install_seconds, run.port.protocol) {
        report.add(
            At::new(Section::Traffic, dp, "install", services),
            "seconds",
            "s",
            Summary::of(&[seconds]).expect("one value"),
        );
    }
    if let Some(entries) = cell.conntrack_entries {
        let summary = Summary::of(&[entries as f64]).expect("one value");
        report.add(At::new(Section::Traffic, dp, run.case, services), "conntrack_entries", "entries", summary);
        if entries as u64 * 10 > u64::from(CONNTRACK_V4_CAPACITY) * 9 {
            report.warn(format!(
                "{dp} at {services} Services ({}): conntrack {entries} entries of {CONNTRACK_V4_CAPACITY}: the LRU evicts",
                run.case
            ));
        }
    }
    let ops: u64 = cell.results.iter().map(|r| r.ops).sum();
    let failed: u64 = cell.results.iter().map(|r| r.errors).sum();
    if failed * 100 > ops.max(1) {
        report.warn(format!(
            "{dp} at {services} Services ({}): {failed} of {} operations failed",
            run.case,
            ops + failed
        ));
    }
    // Each TCP connection must be a new flow for the datapath, or the
    // test would measure conntrack hits.
    if let Some(new_flows) = cell.new_flows
        && (new_flows == 0 || (run.port.protocol == Protocol::Tcp && new_flows * 10 < cell.operations * 9))
    {
        report.warn(format!(
            "{dp} at {services} Services ({}): the datapath counted {new_flows} new flows for {} connections",
            run.case, cell.operations
        ));
    }
}

/// Adds /24 addresses to `eth0` of a namespace, in one `ip -batch`.
fn add_addresses(netns: &str, addresses: &[Ipv4Addr]) -> anyhow::Result<()> {
    let script: String = addresses.iter().map(|ip| format!("address add {ip}/24 dev eth0\n")).collect();
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child.stdin.take().context("ip stdin")?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "ip -n {netns} -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The pod addresses of each backend namespace: its topology address
/// 10.244.i.2 plus the next ones in its /24.
fn add_pod_addresses(topology: &Topology, per_backend: usize) -> anyhow::Result<Vec<BackendHost>> {
    topology
        .backends
        .iter()
        .enumerate()
        .map(|(i, netns)| {
            let subnet = u8::try_from(i + 1).context("too many backends")?;
            let addresses: Vec<Ipv4Addr> =
                (0..per_backend).map(|k| Ipv4Addr::new(10, 244, subnet, 2 + k as u8)).collect();
            add_addresses(netns, &addresses[1..])?;
            Ok(BackendHost { netns: netns.clone(), addresses })
        })
        .collect()
}

/// One layout in its own topology, with servers and load ready. Fields
/// drop in order: the agent first, then the servers, the namespaces last.
struct LayoutBench {
    installed: Installed,
    _servers: BackendServers,
    topology: Topology,
    layout: Layout,
    protocol: Protocol,
    spec: LoadSpec,
    warmup: Duration,
    run_time: Duration,
    results: Vec<LoadResult>,
    operations: u64,
    failed: Option<anyhow::Error>,
}

impl LayoutBench {
    fn set_up(plan: &TrafficPlan, env: &Env, services: usize, port: PortSpec, layout: Layout) -> anyhow::Result<Self> {
        let topology = Topology::create(plan.backend_namespaces)?;
        let hosts = add_pod_addresses(&topology, plan.addresses_per_backend)?;
        // Short connections: the whole port range, from several addresses.
        run_in(&topology.client, &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
        let sources: Vec<Ipv4Addr> = (0..CLIENT_ADDRESSES).map(|k| Ipv4Addr::new(10, 0, 1, 2 + k)).collect();
        add_addresses(&topology.client, &sources[1..])?;
        let pool: Vec<Ipv4Addr> = hosts.iter().flat_map(|h| h.addresses.iter().copied()).collect();
        let table = Table::generate(&TableSpec {
            services,
            port,
            pool,
            endpoints_per_service: ENDPOINTS_PER_SERVICE,
            node_ports: 0,
        });
        let servers = match port.protocol {
            Protocol::Udp => BackendServers::udp(&hosts, port.target_port)?,
            _ => BackendServers::tcp(&hosts, port.target_port)?,
        };
        let installed = layouts::install(
            layout,
            &table,
            &Target { node_netns: &topology.node, agent_bin: &env.agent_bin, work_dir: &env.work_dir },
        )?;
        env.progress.log(&format!("  {}: {}", layout.name(), installed.summary()));
        let targets = if layout.uses_frontends() {
            table.frontends(plan.max_targets)
        } else {
            table.direct_endpoints(plan.max_targets)
        };
        let threads = if port.protocol == Protocol::Udp { UDP_CLIENT_THREADS } else { TCP_CLIENT_THREADS };
        let spec = LoadSpec {
            netns: topology.client.clone(),
            targets: Arc::new(targets),
            sources: Arc::new(sources),
            duration: plan.warmup,
            max_ops: plan.max_ops,
            threads,
        };
        Ok(Self {
            installed,
            _servers: servers,
            topology,
            layout,
            protocol: port.protocol,
            spec,
            warmup: plan.warmup,
            run_time: plan.run_time,
            results: Vec::new(),
            operations: 0,
            failed: None,
        })
    }

    /// One load run; the warm-up (neighbour entries, caches, first
    /// conntrack entries) is not kept.
    fn measure(&mut self, keep: bool, env: &Env) -> anyhow::Result<()> {
        self.spec.duration = if keep { self.run_time } else { self.warmup };
        let result = match self.protocol {
            Protocol::Udp => loadgen::udp_exchanges(&self.spec, UDP_SOCKETS_PER_THREAD)?,
            _ => loadgen::tcp_connections(&self.spec)?,
        };
        self.operations += result.ops + result.errors;
        if keep {
            env.progress.log(&format!(
                "  {} {}: {}/s, {} failed, {:.1} µs CPU per op, others {:.1} cores",
                self.layout.name(),
                if self.protocol == Protocol::Udp { "udp exchanges" } else { "tcp connections" },
                group(result.rate()),
                result.errors,
                if result.ops > 0 { result.cpu.as_secs_f64() * 1e6 / result.ops as f64 } else { f64::NAN },
                result.others_cpu.as_secs_f64() / result.elapsed.as_secs_f64()
            ));
            self.results.push(result);
        }
        Ok(())
    }

    fn finish(&self, env: &Env) -> anyhow::Result<Cell> {
        if let Some(e) = &self.failed {
            anyhow::bail!("{e:#} (namespaces {}…)", self.topology.client);
        }
        let (install_seconds, new_flows, conntrack_entries) = match &self.installed {
            Installed::Nothing => (None, None, None),
            Installed::Rules { took, .. } => (Some(took.as_secs_f64()), None, None),
            Installed::Agent { agent, took } => {
                let counters = agent.counters()?;
                let nonzero: Vec<String> =
                    counters.iter().filter(|(_, n)| *n > 0).map(|(c, n)| format!("{}={n}", c.name())).collect();
                env.progress.log(&format!("  ebpf datapath counters: {}", nonzero.join(" ")));
                let new_flows = counters.iter().find(|(c, _)| *c == Counter::NewFlow).map(|(_, n)| *n);
                let entries = agent.conntrack_entries()?;
                env.progress.log(&format!(
                    "  ebpf conntrack: {} entries of {}",
                    group(entries as f64),
                    group(f64::from(CONNTRACK_V4_CAPACITY))
                ));
                (Some(took.as_secs_f64()), new_flows, Some(entries))
            }
        };
        Ok(Cell {
            results: self.results.clone(),
            install_seconds,
            new_flows,
            conntrack_entries,
            operations: self.operations,
        })
    }
}
