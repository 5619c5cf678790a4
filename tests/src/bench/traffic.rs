//! Part 2: real TCP and UDP traffic from a client namespace through the
//! node namespace to backend namespaces, with each datapath. Every
//! (table size, protocol, datapath) cell gets its own copy of the same
//! topology, with the same endpoints and addresses, so no layout inherits
//! another's conntrack or netfilter state; the copies exist side by side
//! and their runs are interleaved.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

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
    program_time::{self, ProgramTime},
    report::{At, Report, Section, group},
    stats::Summary,
    table::{DNS, HTTP, PortSpec, Table, TableSpec},
};
use crate::{
    links,
    topology::{Topology, run_in},
};

/// Client threads opening TCP connections (each waits for its answer).
const TCP_CLIENT_THREADS: usize = 8;
/// Client addresses TCP connections and new UDP flows come from (10.0.1.2
/// and the next ones): enough 4-tuples that none repeats within a cell.
const CLIENT_ADDRESSES: u8 = 32;
/// UDP client threads on established flows, each with this many sockets
/// in flight.
const UDP_CLIENT_THREADS: usize = 2;
const UDP_SOCKETS_PER_THREAD: usize = 64;
/// Client threads making new UDP flows (each waits for its answer).
const UDP_NEW_FLOW_THREADS: usize = 8;
/// Longest timing run of the programs (`LayoutBench::measure_program_time`).
const PROGRAM_TIME_RUN: Duration = Duration::from_secs(1);

/// What the client does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    TcpConnections,
    UdpEstablished,
    UdpNewFlows,
}

impl Load {
    /// Packets through the node one operation stands for in the rate (an
    /// established exchange counts its request and its answer); a new flow
    /// is counted as one flow.
    fn per_op(self) -> f64 {
        if self == Load::UdpEstablished { 2.0 } else { 1.0 }
    }

    fn units(self) -> (&'static str, &'static str) {
        match self {
            Load::TcpConnections => ("connections/s", "us/connection"),
            Load::UdpEstablished => ("packets/s", "us/packet"),
            Load::UdpNewFlows => ("flows/s", "us/flow"),
        }
    }

    /// Whether every operation must be a new flow for the datapath.
    fn new_flow_each(self) -> bool {
        self != Load::UdpEstablished
    }

    fn threads(self) -> usize {
        match self {
            Load::TcpConnections => TCP_CLIENT_THREADS,
            Load::UdpEstablished => UDP_CLIENT_THREADS,
            Load::UdpNewFlows => UDP_NEW_FLOW_THREADS,
        }
    }
}

struct TrafficKind {
    case: &'static str,
    label: &'static str,
    port: PortSpec,
    load: Load,
}

const RUNS: [TrafficKind; 3] = [
    TrafficKind {
        case: "tcp_connections",
        label: "New TCP connections per second",
        port: HTTP,
        load: Load::TcpConnections,
    },
    TrafficKind {
        case: "udp_new_flows",
        label: "New UDP flows per second (one datagram and its answer from a new source port: DNS-like)",
        port: DNS,
        load: Load::UdpNewFlows,
    },
    TrafficKind {
        case: "udp_packets",
        label: "UDP packets per second (request + answer, established flows)",
        port: DNS,
        load: Load::UdpEstablished,
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
        "udp_new_flows",
        RUNS[1].label,
        &format!(
            "{UDP_NEW_FLOW_THREADS} client threads each bind a UDP socket to a (client address, port) pair not used before in the cell ({CLIENT_ADDRESSES} addresses × 60,000 ports, taken in order), send one 32-byte datagram to a Service, wait for the echo and close: every exchange is a new flow for the datapath and for netfilter's conntrack (the datapath's new-flow counter is checked against the exchange count), as each query of a DNS client is. Round-robin over up to {} Services across the table. Median (min–max) flows/s over {} run(s) of {secs:.1} s; CPU is per flow; an answer missing after 200 ms counts as failed.",
            plan.max_targets, plan.repetitions
        ),
    );
    report.describe(
        Section::Traffic,
        "udp_packets",
        RUNS[2].label,
        &format!(
            "{} flows ({UDP_CLIENT_THREADS} client threads × {UDP_SOCKETS_PER_THREAD} sockets), each a socket talking to one Service, the flows spread over up to {} Services across the table; each keeps one 32-byte datagram in flight and the backend echoes it. After the first exchange every packet belongs to an established flow, so this is the per-packet cost of established flows (new flows are the TCP and new-UDP-flow tests). Packets/s counts requests and answers that made it (both cross the node's datapath); a datagram unanswered after 200 ms counts as failed. CPU is per packet.",
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
        "Layouts: ebpf = lb-agent attached at tc ingress of every node interface; iptables / nftables = kube-proxy's rule layouts generated as kube-proxy writes them (KUBE-SERVICES → KUBE-SVC → KUBE-SEP with statistic probabilities; table ip kube-proxy with the service-ips vmap and numgen), cluster CIDR 10.0.0.0/8 so the client counts as a pod and is not masqueraded (as with ebpf); none = the client addresses the Services' endpoints directly (plain routing, the floor); forward_only = the same, with every packet forwarded by `lb_forward_only` at tc ingress of every node interface (the datapath's FIB lookup and redirect, no Service work: the limit a Service datapath that forwards this way can reach). No IPVS in this kernel, so no IPVS column.",
    );
    report.note(
        Section::Traffic,
        "CPU time = this process (load generator and servers, plus the kernel's packet processing that runs on their threads) + the ksoftirqd threads, divided by completed operations. Other processes on the machine are not counted but do slow the rates: \"others N cores\" in a cell is the CPU they used meanwhile (from /proc/stat; shown from 0.1 cores), a sign that cell is disturbed.",
    );
    report.note(
        Section::Traffic,
        format!(
            "\"µs in N program runs\" (forward_only and ebpf): the time the programs attached to the node's interfaces spent per operation (per packet for established UDP), and how many times they ran, from the kernel's BPF run-time statistics over one more run of up to {:.0} s after the measured ones (the statistics add a clock read on each side of every run, so that run's rate is not kept). Beside the CPU per operation, which counts every party, this is the datapath's own share, with the caches and table of real traffic.",
            PROGRAM_TIME_RUN.as_secs_f64()
        ),
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
        match LayoutBench::set_up(plan, env, services, run, layout) {
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
    for bench in benches.iter_mut().filter(|b| b.failed.is_none() && b.layout.runs_programs()) {
        cancel::check()?;
        env.progress.start(format!("traffic: timing the programs of {}", what(bench.layout)));
        if let Err(e) = bench.measure_program_time(env) {
            report.warn(format!("traffic {}: timing the programs: {e:#}", what(bench.layout)));
        }
    }
    let mut cells = Vec::new();
    for bench in benches {
        cancel::check()?;
        match bench.finish(env) {
            Ok(cell) => {
                record(report, services, run, bench.layout, &cell);
                cells.push((bench.layout, cell));
            }
            Err(e) => report.warn(format!("traffic {}: {e:#}", what(bench.layout))),
        }
        env.progress.done_step();
    }
    record_floor_ratios(report, services, run, &cells);
    Ok(())
}

/// Each layout's rate as a share of the no-rules floor, round by round:
/// the runs of one round are interleaved, so they share the machine's
/// state and their ratio is the fairest comparison there is.
fn record_floor_ratios(report: &mut Report, services: usize, run: &TrafficKind, cells: &[(Layout, Cell)]) {
    let Some((_, floor)) = cells.iter().find(|(layout, _)| *layout == Layout::NoRules) else {
        return;
    };
    for (layout, cell) in cells.iter().filter(|(layout, _)| *layout != Layout::NoRules) {
        let ratios: Vec<f64> = cell
            .results
            .iter()
            .zip(&floor.results)
            .filter(|(_, f)| f.ops > 0)
            .map(|(r, f)| r.rate() / f.rate())
            .collect();
        if let Some(s) = Summary::of(&ratios) {
            report.add(At::new(Section::Traffic, layout.name(), run.case, services), "ratio_to_floor", "x", s);
        }
    }
}

struct Cell {
    results: Vec<LoadResult>,
    install_seconds: Option<f64>,
    /// ebpf only: flows the datapath balanced, from its counters.
    new_flows: Option<u64>,
    /// ebpf only: the conntrack table after the case's runs.
    conntrack: Option<Occupancy>,
    /// Connections or exchanges attempted, warm-up included.
    operations: u64,
    /// Layouts running programs: what they spent over so many units
    /// (operations × packets per operation) of their timing run.
    program_time: Option<(ProgramTime, f64)>,
}

fn record(report: &mut Report, services: usize, run: &TrafficKind, layout: Layout, cell: &Cell) {
    let dp = layout.name();
    let per_op = run.load.per_op();
    let rates: Vec<f64> = cell.results.iter().map(|r| r.rate() * per_op).collect();
    let cpu: Vec<f64> = cell
        .results
        .iter()
        .filter(|r| r.ops > 0)
        .map(|r| r.cpu.as_secs_f64() * 1e6 / (r.ops as f64 * per_op))
        .collect();
    let errors: Vec<f64> = cell.results.iter().map(|r| r.errors as f64).collect();
    let (unit, cpu_unit) = run.load.units();
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
    if let (Some(seconds), Load::TcpConnections) = (cell.install_seconds, run.load) {
        report.add(
            At::new(Section::Traffic, dp, "install", services),
            "seconds",
            "s",
            Summary::of(&[seconds]).expect("one value"),
        );
    }
    if let Some((spent, units)) = cell.program_time {
        let per_unit = Summary::of(&[spent.run_time.as_secs_f64() * 1e6 / units]).expect("one value");
        report.add(At::new(Section::Traffic, dp, run.case, services), "program_time", cpu_unit, per_unit);
        let runs = Summary::of(&[spent.runs as f64 / units]).expect("one value");
        report.add(At::new(Section::Traffic, dp, run.case, services), "program_runs", "runs", runs);
    }
    if let Some(Occupancy { entries, evicted, .. }) = cell.conntrack {
        let summary = Summary::of(&[entries as f64]).expect("one value");
        report.add(At::new(Section::Traffic, dp, run.case, services), "conntrack_entries", "entries", summary);
        let summary = Summary::of(&[evicted as f64]).expect("one value");
        report.add(At::new(Section::Traffic, dp, run.case, services), "conntrack_evicted", "entries", summary);
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
    // Each connection or new-flow exchange must be a new flow for the
    // datapath, or the test would measure conntrack hits.
    if let Some(new_flows) = cell.new_flows
        && (new_flows == 0 || (run.load.new_flow_each() && new_flows * 10 < cell.operations * 9))
    {
        report.warn(format!(
            "{dp} at {services} Services ({}): the datapath counted {new_flows} new flows for {} operations",
            run.case, cell.operations
        ));
    }
}

/// The conntrack table after a case's runs (warm-up included).
#[derive(Clone, Copy)]
struct Occupancy {
    entries: usize,
    /// Entries the agent removed: expired flows and purged UDP flows.
    removed: u64,
    /// Entries the LRU dropped to make room, by count: every new flow
    /// inserted two (its original and reply tuples), and what neither is
    /// still there nor was removed by the agent was evicted. A tuple seen
    /// again (a re-balanced flow) replaces its entry and is not counted.
    evicted: u64,
}

impl Occupancy {
    fn of(entries: usize, removed: u64, new_flows: u64) -> Self {
        let evicted = (2 * new_flows).saturating_sub(entries as u64 + removed);
        Self { entries, removed, evicted }
    }
}

/// Adds /24 addresses to `eth0` of a namespace, in one `ip -batch`.
fn add_addresses(netns: &str, addresses: &[Ipv4Addr]) -> anyhow::Result<()> {
    let script: String = addresses.iter().map(|ip| format!("address add {ip}/24 dev eth0\n")).collect();
    links::ip_batch(netns, &script)
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
    load: Load,
    spec: LoadSpec,
    warmup: Duration,
    run_time: Duration,
    results: Vec<LoadResult>,
    operations: u64,
    program_time: Option<(ProgramTime, f64)>,
    failed: Option<anyhow::Error>,
}

impl LayoutBench {
    fn set_up(
        plan: &TrafficPlan,
        env: &Env,
        services: usize,
        run: &TrafficKind,
        layout: Layout,
    ) -> anyhow::Result<Self> {
        let port = run.port;
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
            &Target {
                node_netns: &topology.node,
                node_interfaces: &topology.node_interfaces,
                agent_bin: &env.agent_bin,
                work_dir: &env.work_dir,
            },
        )?;
        env.progress.log(&format!("  {}: {}", layout.name(), installed.summary()));
        let targets = if layout.uses_frontends() {
            table.frontends(plan.max_targets)
        } else {
            table.direct_endpoints(plan.max_targets)
        };
        let spec = LoadSpec {
            netns: topology.client.clone(),
            targets: Arc::new(targets),
            sources: Arc::new(sources),
            duration: plan.warmup,
            max_ops: plan.max_ops,
            threads: run.load.threads(),
            next_flow: Arc::default(),
        };
        Ok(Self {
            installed,
            _servers: servers,
            topology,
            layout,
            load: run.load,
            spec,
            warmup: plan.warmup,
            run_time: plan.run_time,
            results: Vec::new(),
            operations: 0,
            program_time: None,
            failed: None,
        })
    }

    /// One load run; the warm-up (neighbour entries, caches, first
    /// conntrack entries) is not kept.
    fn measure(&mut self, keep: bool, env: &Env) -> anyhow::Result<()> {
        let result = self.run_load(if keep { self.run_time } else { self.warmup })?;
        if keep {
            env.progress.log(&format!(
                "  {} {}: {}/s, {} failed, {:.1} µs CPU per op, others {:.1} cores",
                self.layout.name(),
                match self.load {
                    Load::UdpEstablished => "udp exchanges",
                    Load::UdpNewFlows => "new udp flows",
                    Load::TcpConnections => "tcp connections",
                },
                group(result.rate()),
                result.errors,
                if result.ops > 0 { result.cpu.as_secs_f64() * 1e6 / result.ops as f64 } else { f64::NAN },
                result.others_cpu.as_secs_f64() / result.elapsed.as_secs_f64()
            ));
            self.results.push(result);
        }
        Ok(())
    }

    /// One load run of `duration`, counted in the cell's operations.
    fn run_load(&mut self, duration: Duration) -> anyhow::Result<LoadResult> {
        self.spec.duration = duration;
        let result = match self.load {
            Load::UdpEstablished => loadgen::udp_exchanges(&self.spec, UDP_SOCKETS_PER_THREAD)?,
            Load::UdpNewFlows => loadgen::udp_new_flows(&self.spec)?,
            Load::TcpConnections => loadgen::tcp_connections(&self.spec)?,
        };
        self.operations += result.ops + result.errors;
        Ok(result)
    }

    /// One more load run, with the kernel's BPF run-time statistics on,
    /// timing the programs attached to the node's interfaces (see
    /// `program_time`); its rate is not kept.
    fn measure_program_time(&mut self, env: &Env) -> anyhow::Result<()> {
        let node = (self.topology.node.clone(), self.topology.node_interfaces.clone());
        let _stats = program_time::stats_on()?;
        let before = program_time::attached(&node.0, &node.1)?;
        let result = self.run_load(self.run_time.min(PROGRAM_TIME_RUN))?;
        let by_program = program_time::attached(&node.0, &node.1)?.since(&before);
        let spent = by_program.total();
        let units = result.ops as f64 * self.load.per_op();
        anyhow::ensure!(units > 0.0 && spent.runs > 0, "no operation or no program run while timing the programs");
        let each: Vec<String> = by_program
            .0
            .iter()
            .map(|(name, p)| {
                format!("{name} {:.2} µs in {:.1} runs", p.run_time.as_secs_f64() * 1e6 / units, p.runs as f64 / units)
            })
            .collect();
        env.progress.log(&format!(
            "  {} programs per {}: {}",
            self.layout.name(),
            self.load.units().1.trim_start_matches("us/"),
            each.join(", ")
        ));
        self.program_time = Some((spent, units));
        Ok(())
    }

    fn finish(&self, env: &Env) -> anyhow::Result<Cell> {
        if let Some(e) = &self.failed {
            anyhow::bail!("{e:#} (namespaces {}…)", self.topology.client);
        }
        let (install_seconds, new_flows, conntrack) = match &self.installed {
            Installed::Nothing | Installed::Program { .. } => (None, None, None),
            Installed::Rules { took, .. } => (Some(took.as_secs_f64()), None, None),
            Installed::Agent { agent, took } => {
                let counters = agent.counters()?;
                let nonzero: Vec<String> =
                    counters.iter().filter(|(_, n)| *n > 0).map(|(c, n)| format!("{}={n}", c.name())).collect();
                env.progress.log(&format!("  ebpf datapath counters: {}", nonzero.join(" ")));
                let new_flows = counters.iter().find(|(c, _)| *c == Counter::NewFlow).map(|(_, n)| *n);
                let entries = agent.conntrack_entries()?;
                let occupancy = Occupancy::of(entries, agent.conntrack_removed(), new_flows.unwrap_or(0));
                env.progress.log(&format!(
                    "  ebpf conntrack: {} entries of {}, {} removed by the agent, {} evicted",
                    group(entries as f64),
                    group(f64::from(CONNTRACK_V4_CAPACITY)),
                    group(occupancy.removed as f64),
                    group(occupancy.evicted as f64)
                ));
                (Some(took.as_secs_f64()), new_flows, Some(occupancy))
            }
        };
        Ok(Cell {
            results: self.results.clone(),
            install_seconds,
            new_flows,
            conntrack,
            operations: self.operations,
            program_time: self.program_time,
        })
    }
}
