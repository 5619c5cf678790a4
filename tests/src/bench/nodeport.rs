//! Part 5: NodePort traffic from outside the cluster, on the two-node
//! fixture (`crate::cluster`). A client on the LAN opens TCP connections
//! and new UDP flows to node 1's NodePorts, whose endpoints all run on
//! node 2: every flow is source-NATed by node 1 and its replies come back
//! through it, the path `externalTrafficPolicy: Cluster` takes on a node
//! without the Service's pods. Node 1 runs one of:
//! - `xdp`: lb-agent with the XDP fast path on its LAN interface;
//! - `tc`: lb-agent at tc only;
//! - `nftables`: kube-proxy's nftables layout with its NodePort rules
//!   (masquerade, then the Service's endpoint chains).
//!
//! Node 2 only routes to its pods. Each layout gets its own copy of the
//! cluster, set up side by side, with the same Services and endpoints;
//! the runs are interleaved and each layout's rate is divided by the
//! nftables rate of the same round.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use lb_common::{conntrack::SNAT_PORTS, stats::Counter};
use lb_userspace::model::Protocol;

use super::{
    Env,
    agent::{Agent, AgentConfig},
    backends::{BackendHost, BackendServers},
    cancel,
    layouts::{
        self, Installed, Layout, Target,
        ebpf::{capacities_for, programming_timeout},
    },
    loadgen::{self, LoadResult, LoadSpec},
    plan::TrafficPlan,
    report::{At, Report, Section, group},
    stats::Summary,
    table::{DNS, HTTP, PortSpec, Table, TableSpec},
};
use crate::{
    cluster::{Cluster, node_ip, node_name, pod_ip},
    links,
    topology::run_in,
};

/// Client addresses on the LAN (192.168.50.100 and the next ones).
const CLIENT_ADDRESSES: u8 = 32;
const TCP_CLIENT_THREADS: usize = 8;
const UDP_NEW_FLOW_THREADS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeLayout {
    Nftables,
    Tc,
    Xdp,
}

impl NodeLayout {
    const ALL: [NodeLayout; 3] = [NodeLayout::Nftables, NodeLayout::Tc, NodeLayout::Xdp];

    fn name(self) -> &'static str {
        match self {
            NodeLayout::Nftables => "nftables",
            NodeLayout::Tc => "tc",
            NodeLayout::Xdp => "xdp",
        }
    }
}

struct Kind {
    case: &'static str,
    label: &'static str,
    port: PortSpec,
}

const KINDS: [Kind; 2] = [
    Kind {
        case: "nodeport_tcp_connections",
        label: "NodePort from outside, backend on another node: new TCP connections per second",
        port: HTTP,
    },
    Kind {
        case: "nodeport_udp_new_flows",
        label: "NodePort from outside, backend on another node: new UDP flows per second (DNS-like)",
        port: DNS,
    },
];

/// At most this many NodePort Services: the per-packet cost does not
/// depend on the table's size (the packet-cost part shows it), and
/// kube-proxy's NodePort range holds only a few thousand anyway.
const MAX_SERVICES: usize = 1_000;

/// Node 2's pods: the endpoint pool.
fn pods(plan: &TrafficPlan) -> usize {
    plan.backend_namespaces
}

/// Most addresses a pod gets (`addresses_per_pod`).
const MAX_ADDRESSES_PER_POD: usize = 40;
/// Last byte of node 2's first extra pod address (10.244.2.x); the pods'
/// own addresses are 10.244.2.11 onwards.
const EXTRA_ADDRESS_BASE: usize = 64;

/// Addresses per pod so that `services` Services, each over one address
/// of every pod, all have endpoint sets of their own.
fn addresses_per_pod(services: usize, pods: usize) -> usize {
    let pods = u32::try_from(pods).unwrap_or(u32::MAX);
    (1..MAX_ADDRESSES_PER_POD).find(|a| a.saturating_pow(pods) >= services).unwrap_or(MAX_ADDRESSES_PER_POD)
}

/// Every address of each of node 2's pods, its own first.
fn pod_addresses(pods: usize, per_pod: usize) -> Vec<Vec<Ipv4Addr>> {
    (1..=pods)
        .map(|pod| {
            let extra = (1..per_pod).map(|k| {
                let last = EXTRA_ADDRESS_BASE + (pod - 1) * (per_pod - 1) + k - 1;
                Ipv4Addr::new(10, 244, 2, u8::try_from(last).expect("extra pod addresses fit in 10.244.2.0/24"))
            });
            std::iter::once(pod_ip(2, pod)).chain(extra).collect()
        })
        .collect()
}

/// Gives node 2's pods their extra addresses, routed like their own.
fn add_pod_addresses(cluster: &Cluster, addresses: &[Vec<Ipv4Addr>]) -> anyhow::Result<()> {
    let node = &cluster.nodes[1];
    for (index, own) in addresses.iter().enumerate() {
        let extra = &own[1..];
        let routes: String = extra.iter().map(|ip| format!("route add {ip}/32 dev pod{}\n", index + 1)).collect();
        let local: String = extra.iter().map(|ip| format!("address add {ip}/32 dev eth0\n")).collect();
        links::ip_batch(&node.netns, &routes)?;
        links::ip_batch(&node.pods[index], &local)?;
    }
    Ok(())
}

/// Service i's endpoints: of pod j, the address at digit j of i written
/// in base `addresses per pod`; distinct for every Service while there
/// are enough addresses.
fn give_distinct_endpoints(table: &mut Table, addresses: &[Vec<Ipv4Addr>]) {
    for (i, service) in table.services.iter_mut().enumerate() {
        let mut rest = i;
        service.endpoints = addresses
            .iter()
            .map(|own| {
                let pick = own[rest % own.len()];
                rest /= own.len();
                pick
            })
            .collect();
    }
}

/// Flows one run may open. Node 1 holds a source-NAT port per flow for
/// the flow's timeout (30 s for UDP, 10 s after a TCP RST) plus up to one
/// garbage-collection interval, longer than a whole cell (warm-up and every
/// round) lasts; so the cell stays within three quarters of the ports its
/// endpoints have (`SNAT_PORTS` each). Beyond that the part would measure
/// running out of ports (a capacity limit, `drop_snat_ports_exhausted`),
/// not speed. The kernel's conntrack table behind nftables (262,144
/// entries by default) holds more than that.
fn max_ops_per_run(plan: &TrafficPlan) -> u64 {
    let ports = u64::from(SNAT_PORTS) * pods(plan) as u64;
    (ports * 3 / 4 / (plan.repetitions as u64 + 1)).min(plan.max_ops)
}

pub fn run(plan: &TrafficPlan, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let services = plan.sizes.iter().copied().max().unwrap_or(1).min(MAX_SERVICES);
    let secs = plan.run_time.as_secs_f64();
    for kind in &KINDS {
        let what = if kind.port.protocol == Protocol::Udp {
            format!(
                "{UDP_NEW_FLOW_THREADS} client threads each send one datagram from a (client address, port) pair not used before and wait for the echo"
            )
        } else {
            format!("{TCP_CLIENT_THREADS} client threads each connect, exchange 4 bytes and close with RST")
        };
        report.describe(
            Section::NodePort,
            kind.case,
            kind.label,
            &format!(
                "{what}, to node 1's NodePorts (round-robin over up to {} of them, from {CLIENT_ADDRESSES} client addresses); every endpoint runs on node 2, so node 1 source-NATs each flow and translates its replies back. Median (min–max) over {} run(s) of {secs:.1} s or {} operations, whichever ends first (a cell, warm-up and rounds, stays within three quarters of node 1's source-NAT ports for its endpoints, so it measures speed, not running out of ports), after a warm-up; × nftables is the ratio to the nftables run of the same round; CPU is per operation.",
                plan.max_targets, plan.repetitions, group(max_ops_per_run(plan) as f64)
            ),
        );
    }
    report.describe(
        Section::NodePort,
        "install",
        "Time to install the layout on node 1 (TCP table)",
        "nft -f of kube-proxy's rules, or agent start → maps programmed (JSON file source) and the agent's peak RSS then, in node 1's namespace: every NodePort frontend is a Maglev frontend, and every Service's endpoints differ, so each Service has a table of its own (frontends over the same endpoints would share one).",
    );
    report.note(
        Section::NodePort,
        format!(
            "Topology: the two-node fixture: a LAN bridge with the client (192.168.50.100…), node 1 (.11) and node 2 (.12); node 2 has {} pods (10.244.2.11…) with {} addresses each, node 1 none. {} NodePort Services (Cluster policy), each with one address of every pod as endpoints, no two Services alike (as in a cluster, where Services rarely share all their endpoints: frontends over the same endpoints share one Maglev table, which would flatter the agent's install time and memory). The LAN is set up as a wire for every layout alike: senders compute checksums in full; each LAN port runs a switch at XDP (`lb_wire`), so node 1's eth0 receives frames in pages with no sk_buff yet, as from a NIC (on a plain veth, XDP gets the sender's sk_buff, copies it into a page first, and what it sends on is built into an sk_buff again: costs a NIC does not have); every LAN veth has one queue per CPU and receives through NAPI (the ports for their XDP program, the stations with GRO on), as a NIC with RSS.",
            pods(plan),
            addresses_per_pod(services, pods(plan)),
            group(services as f64)
        ),
    );
    report.note(
        Section::NodePort,
        "Layouts on node 1: xdp = lb-agent with `--xdp-interfaces eth0` (the request is SNATed and sent back out of eth0 at XDP, the reply too); tc = lb-agent at tc ingress only; nftables = kube-proxy's nftables layout with its NodePort rules (`service-nodeports` → `external-…` chain → mark for masquerade → the Service's endpoint chains; `masquerade fully-random` at postrouting), as kube-proxy writes them.",
    );
    for kind in &KINDS {
        measure(plan, env, report, services, kind)?;
    }
    Ok(())
}

fn measure(plan: &TrafficPlan, env: &Env, report: &mut Report, services: usize, kind: &Kind) -> anyhow::Result<()> {
    let what = |layout: NodeLayout| format!("{} at {} NodePorts, {}", layout.name(), group(services as f64), kind.case);
    let mut benches = Vec::new();
    for layout in NodeLayout::ALL {
        cancel::check()?;
        env.progress.start(format!("nodeport: setting up {}", what(layout)));
        match NodeBench::set_up(plan, env, services, kind, layout) {
            Ok(bench) => benches.push(bench),
            Err(e) if cancel::cancelled() => return Err(e),
            Err(e) => {
                report.warn(format!("nodeport {}: {e:#}", what(layout)));
                env.progress.done_step();
            }
        }
    }
    for bench in &mut benches {
        cancel::check()?;
        env.progress.start(format!("nodeport: warming up {}", what(bench.layout)));
        if let Err(e) = bench.measure(false) {
            bench.failed = Some(e);
        }
    }
    for round in 0..plan.repetitions {
        for bench in benches.iter_mut().filter(|b| b.failed.is_none()) {
            cancel::check()?;
            env.progress.start(format!("nodeport: run {}/{} of {}", round + 1, plan.repetitions, what(bench.layout)));
            if let Err(e) = bench.measure(true) {
                bench.failed = Some(e);
            }
        }
    }
    for bench in &benches {
        match bench.check(env) {
            Ok(()) => record(report, services, kind, bench),
            Err(e) => report.warn(format!("nodeport {}: {e:#}", what(bench.layout))),
        }
        env.progress.done_step();
    }
    record_ratios(report, services, kind, &benches);
    Ok(())
}

fn record(report: &mut Report, services: usize, kind: &Kind, bench: &NodeBench) {
    let at = At::new(Section::NodePort, bench.layout.name(), kind.case, services);
    let unit = if kind.port.protocol == Protocol::Udp { "flows/s" } else { "connections/s" };
    let cpu_unit = if kind.port.protocol == Protocol::Udp { "us/flow" } else { "us/connection" };
    let rates: Vec<f64> = bench.results.iter().map(LoadResult::rate).collect();
    let cpu: Vec<f64> =
        bench.results.iter().filter(|r| r.ops > 0).map(|r| r.cpu.as_secs_f64() * 1e6 / r.ops as f64).collect();
    let errors: Vec<f64> = bench.results.iter().map(|r| r.errors as f64).collect();
    let others: Vec<f64> = bench.results.iter().map(|r| r.others_cpu.as_secs_f64() / r.elapsed.as_secs_f64()).collect();
    for (metric, unit, values) in [
        ("rate", unit, &rates),
        ("cpu", cpu_unit, &cpu),
        ("errors", "count", &errors),
        ("others_cpu", "cores", &others),
    ] {
        if let Some(s) = Summary::of(values) {
            report.add(at, metric, unit, s);
        }
    }
    if let (Some(took), Protocol::Tcp) = (bench.installed.took(), kind.port.protocol) {
        let at = At::new(Section::NodePort, bench.layout.name(), "install", services);
        report.add(at, "seconds", "s", Summary::of(&[took.as_secs_f64()]).expect("one value"));
        if let Some(kib) = bench.agent_peak_rss_kib {
            report.add(at, "peak_rss", "MiB", Summary::of(&[kib as f64 / 1024.0]).expect("one value"));
        }
    }
    let ops: u64 = bench.results.iter().map(|r| r.ops).sum();
    let failed: u64 = bench.results.iter().map(|r| r.errors).sum();
    if failed * 100 > ops.max(1) {
        report.warn(format!(
            "nodeport {} ({}): {failed} of {} operations failed",
            bench.layout.name(),
            kind.case,
            ops + failed
        ));
    }
}

/// Each layout's rate over the nftables rate of the same round.
fn record_ratios(report: &mut Report, services: usize, kind: &Kind, benches: &[NodeBench]) {
    let Some(base) = benches.iter().find(|b| b.layout == NodeLayout::Nftables && b.failed.is_none()) else {
        return;
    };
    for bench in benches.iter().filter(|b| b.layout != NodeLayout::Nftables && b.failed.is_none()) {
        let ratios: Vec<f64> = bench
            .results
            .iter()
            .zip(&base.results)
            .filter(|(_, b)| b.ops > 0)
            .map(|(r, b)| r.rate() / b.rate())
            .collect();
        if let Some(s) = Summary::of(&ratios) {
            report.add(At::new(Section::NodePort, bench.layout.name(), kind.case, services), "ratio_to_floor", "x", s);
        }
    }
}

/// One layout on its own copy of the cluster. Fields drop in order: the
/// agent first, then the servers, the cluster (its namespaces) last.
struct NodeBench {
    installed: Installed,
    /// The agent's peak RSS once programmed (agent layouts).
    agent_peak_rss_kib: Option<u64>,
    _servers: BackendServers,
    cluster: Cluster,
    layout: NodeLayout,
    udp: bool,
    spec: LoadSpec,
    warmup: Duration,
    run_time: Duration,
    results: Vec<LoadResult>,
    operations: u64,
    failed: Option<anyhow::Error>,
}

impl NodeBench {
    fn set_up(plan: &TrafficPlan, env: &Env, services: usize, kind: &Kind, layout: NodeLayout) -> anyhow::Result<Self> {
        let pods = pods(plan);
        let mut cluster = Cluster::create(&[0, pods])?;
        cluster.wire_lan_for_xdp()?;
        let client = cluster.client.clone();
        run_in(&client, &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
        let sources: Vec<Ipv4Addr> = (0..CLIENT_ADDRESSES).map(|k| Ipv4Addr::new(192, 168, 50, 100 + k)).collect();
        let script: String = sources[1..].iter().map(|ip| format!("address add {ip}/24 dev eth0\n")).collect();
        links::ip_batch(&client, &script)?;
        let addresses = pod_addresses(pods, addresses_per_pod(services, pods));
        add_pod_addresses(&cluster, &addresses)?;
        let hosts: Vec<BackendHost> = (1..=pods)
            .map(|j| BackendHost { netns: cluster.nodes[1].pods[j - 1].clone(), addresses: addresses[j - 1].clone() })
            .collect();
        let pool: Vec<Ipv4Addr> = hosts.iter().flat_map(|h| h.addresses.iter().copied()).collect();
        let mut table = Table::generate(&TableSpec {
            services,
            port: kind.port,
            pool,
            endpoints_per_service: pods,
            node_ports: services,
        });
        give_distinct_endpoints(&mut table, &addresses);
        let udp = kind.port.protocol == Protocol::Udp;
        let servers = if udp {
            BackendServers::udp(&hosts, kind.port.target_port)?
        } else {
            BackendServers::tcp(&hosts, kind.port.target_port)?
        };
        let node = cluster.nodes[0].netns.clone();
        let mut agent_peak_rss_kib = None;
        let installed = match layout {
            NodeLayout::Nftables => layouts::install(
                Layout::Nftables,
                &table,
                &Target {
                    node_netns: &node,
                    node_interfaces: &["eth0".to_owned()],
                    agent_bin: &env.agent_bin,
                    work_dir: &env.work_dir,
                },
            )?,
            NodeLayout::Tc | NodeLayout::Xdp => {
                let source = env.work_dir.join(format!("nodeport-{}-{}.json", layout.name(), kind.case));
                table.write_json(&source)?;
                let name = node_name(1);
                let mut args = vec!["--hostname-override", name.as_str()];
                if layout == NodeLayout::Xdp {
                    args.extend(["--xdp-interfaces", "eth0"]);
                }
                let started = std::time::Instant::now();
                let mut agent = Agent::start(&AgentConfig {
                    bin: &env.agent_bin,
                    netns: &node,
                    source: &source,
                    capacities: capacities_for(services, pods),
                    extra_args: &args,
                })?;
                agent.wait_programmed(services, programming_timeout(services))?;
                let took = started.elapsed();
                agent_peak_rss_kib = Some(agent.peak_rss_kib()?);
                Installed::Agent { agent, took }
            }
        };
        env.progress.log(&format!("  {}: {}", layout.name(), installed.summary()));
        let targets: Vec<SocketAddr> = table
            .spread(plan.max_targets)
            .iter()
            .filter_map(|s| s.node_port.map(|p| SocketAddr::from((node_ip(1), p))))
            .collect();
        anyhow::ensure!(!targets.is_empty(), "no NodePort in the table");
        let spec = LoadSpec {
            netns: client,
            targets: Arc::new(targets),
            sources: Arc::new(sources),
            duration: plan.warmup,
            max_ops: max_ops_per_run(plan),
            threads: if udp { UDP_NEW_FLOW_THREADS } else { TCP_CLIENT_THREADS },
            next_flow: Arc::default(),
        };
        Ok(Self {
            installed,
            agent_peak_rss_kib,
            _servers: servers,
            cluster,
            layout,
            udp,
            spec,
            warmup: plan.warmup,
            run_time: plan.run_time,
            results: Vec::new(),
            operations: 0,
            failed: None,
        })
    }

    /// One load run; the warm-up is not kept.
    fn measure(&mut self, keep: bool) -> anyhow::Result<()> {
        self.spec.duration = if keep { self.run_time } else { self.warmup };
        let result = if self.udp { loadgen::udp_new_flows(&self.spec)? } else { loadgen::tcp_connections(&self.spec)? };
        self.operations += result.ops + result.errors;
        if keep {
            self.results.push(result);
        }
        Ok(())
    }

    /// The layout ran on frames switched at XDP, and the eBPF ones took
    /// the path they are named after: every operation a new flow, and at
    /// XDP the packets sent there.
    fn check(&self, env: &Env) -> anyhow::Result<()> {
        if let Some(e) = &self.failed {
            anyhow::bail!("{e:#} (namespaces {}…)", self.cluster.client);
        }
        // Node 1 received frames as from a NIC (every layout alike): the
        // LAN's switch sent at least each request on at XDP.
        let switched = self.cluster.switched_frames()?;
        anyhow::ensure!(
            switched >= self.operations,
            "the LAN switched {switched} frames for {} operations: node 1 got sk_buffs, not frames",
            self.operations
        );
        let Installed::Agent { agent, .. } = &self.installed else {
            return Ok(());
        };
        let counters = agent.counters()?;
        let count = |c: Counter| counters.iter().find(|(k, _)| *k == c).map_or(0, |(_, n)| *n);
        let (new_flows, xdp_sent, redirected) =
            (count(Counter::NewFlow), count(Counter::XdpSent), count(Counter::Redirected));
        let nonzero: Vec<String> =
            counters.iter().filter(|(_, n)| *n > 0).map(|(c, n)| format!("{}={n}", c.name())).collect();
        env.progress.log(&format!(
            "  {} datapath counters for {} operations: {}",
            self.layout.name(),
            self.operations,
            nonzero.join(" ")
        ));
        anyhow::ensure!(
            new_flows * 10 >= self.operations * 9,
            "the datapath counted {new_flows} new flows for {} operations",
            self.operations
        );
        if self.layout == NodeLayout::Xdp {
            anyhow::ensure!(
                xdp_sent >= new_flows && redirected * 10 < xdp_sent,
                "XDP sent {xdp_sent} packets and tc {redirected}: not the XDP path"
            );
        }
        Ok(())
    }
}
