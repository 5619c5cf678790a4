//! Part 1: what one packet costs in the datapath, timed by the kernel
//! itself (BPF_PROG_TEST_RUN), as the Service table grows.
//!
//! The kernel reuses one packet buffer for all `repeat` iterations, so a
//! NAT program sees its own output from the second iteration on. Each case
//! is built so that every iteration takes the path it claims to measure:
//! - new flows are timed one run each (repeat=1) over many distinct
//!   flows, and the parse-only floor they are compared with is timed the
//!   same way (its per-run timer overhead is in both);
//! - the conntrack hit uses two Services whose backends are each other's
//!   frontend, so the rewritten packet is again an established flow; a
//!   SYN through the same pair takes the whole new-flow path on every
//!   iteration, on warm caches;
//! - misses leave the packet untouched, so repeating them is exact.
//!
//! The IPv6 rows repeat the established, warm new-flow and miss cases
//! over an IPv6 mirrored pair in the same table, so IPv6 and IPv4 cost
//! sit side by side from one run.
//!
//! The XDP rows time one packet both ways through the same table: an
//! established flow from outside to an external IP whose backend runs on
//! another node (SNAT, DNAT, route lookup, send) at tc and at XDP. The
//! namespace gets the routed node of `routed` for it, with the other
//! node's Pods outside the pool the table draws from, so every other
//! case still finds no route.
//!
//! Cases are interleaved: every repetition runs each case once, in turn.
//! Then the conntrack table is filled to capacity by new flows through
//! the datapath itself, and the new-flow case is timed again, interleaved
//! with its floor: what a new flow costs on a busy node, where every
//! insert first evicts the least recently used entry.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, bail, ensure};
use lb_common::maps::CONNTRACK_V4_CAPACITY;
use lb_userspace::{
    datapath::loader::{FORWARD_ONLY_PROGRAM, PARSE_ONLY_PROGRAM, TC_PROGRAM, XDP_PROGRAM},
    model::NodeContext,
    source::objects,
};

use super::{
    Env, cancel,
    layouts::ebpf::capacities_for,
    plan::{ENDPOINTS_PER_SERVICE, PacketPlan},
    report::{At, Report, Section, group},
    stats::Summary,
    table::{self, HTTP, PortSpec, Table, TableSpec},
};
use crate::{
    datapath::{Datapath, TC_ACT_REDIRECT, TC_ACT_UNSPEC, XDP_TX},
    packets::{self, Endpoint, ep},
    packets6::{self, Endpoint6, ep6},
    routed,
    topology::NODE_CLIENT_SIDE_IP,
};

/// Source of the repeated (established and miss) packets.
const CLIENT: Endpoint = ep([10, 0, 1, 2], 40_000);
/// Source of the repeated SYN through the mirrored pair: its own tuples,
/// apart from the established flow's.
const SYN_CLIENT: Endpoint = ep([10, 0, 1, 3], 40_001);
/// The mirrored pair: A's only endpoint is B's frontend and vice versa.
const MIRROR_A: Endpoint = ep([10, 95, 0, 1], 80);
const MIRROR_B: Endpoint = ep([10, 95, 0, 2], 8_080);
/// A port no frontend uses, and an address no Service has.
const UNUSED_PORT: u16 = 9_999;
const OTHER_ADDRESS: Endpoint = ep([10, 200, 0, 1], 80);
/// A ClusterIP with ClientIP session affinity, and the one client whose
/// new flows (one source port each) it sends to that client's backend.
const STICKY: Endpoint = ep([10, 95, 0, 3], 80);
const STICKY_CLIENT: [u8; 4] = [10, 99, 0, 1];
/// The first this-many Services are NodePort Services.
const NODE_PORT_SERVICES: usize = 2_000;
/// Pod addresses the endpoints are drawn from: a large cluster's worth.
const POD_POOL: usize = 20_000;
const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// The external-IP flow of the XDP rows: from a client outside the
/// cluster, to the node's address on `routed`'s link, to a backend behind
/// the other node (Pods outside `POD_POOL`).
const OUTSIDE_CLIENT: Endpoint = ep([192, 168, 0, 100], 40_000);
const EXTERNAL: Endpoint = ep(routed::NODE_IP, 8_443);
const REMOTE_PODS: &str = "10.250.9.0/24";
const REMOTE_BACKEND: Endpoint = ep([10, 250, 9, 2], 8_080);
const EXTERNAL_OBJECTS: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: external, namespace: bench}
  spec:
    clusterIP: 10.95.0.9
    externalIPs: [192.168.0.10]
    ports: [{name: https, port: 8443, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: external, namespace: bench, labels: {kubernetes.io/service-name: external}}
  addressType: IPv4
  endpoints: [{addresses: [10.250.9.2], nodeName: other-node, conditions: {ready: true}}]
  ports: [{name: https, port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: external-v6, namespace: bench}
  spec:
    ipFamilies: [IPv6]
    clusterIP: fd00:95::9
    clusterIPs: [fd00:95::9]
    externalIPs: ["fd00:ff::10"]
    ports: [{name: https, port: 8443, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: external-v6, namespace: bench, labels: {kubernetes.io/service-name: external-v6}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:244:9::2"], nodeName: other-node, conditions: {ready: true}}]
  ports: [{name: https, port: 8080, protocol: TCP}]
"#;
/// The IPv6 twin of the external-IP flow, on `routed`'s IPv6 side.
const OUTSIDE_CLIENT_V6: Endpoint6 = ep6(routed::CLIENT_IP_V6, 40_000);
const EXTERNAL_V6: Endpoint6 = ep6(routed::NODE_IP_V6, 8_443);
const REMOTE_BACKEND_V6: Endpoint6 = ep6(Ipv6Addr::new(0xfd00, 0x244, 9, 0, 0, 0, 0, 2), 8_080);

/// The IPv6 twins of the mirrored pair, its clients and the miss.
const CLIENT_V6: Endpoint6 = ep6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2), 40_000);
const SYN_CLIENT_V6: Endpoint6 = ep6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 3), 40_001);
const MIRROR_A_V6: Endpoint6 = ep6(Ipv6Addr::new(0xfd00, 0x95, 0, 0, 0, 0, 0, 1), 80);
const MIRROR_B_V6: Endpoint6 = ep6(Ipv6Addr::new(0xfd00, 0x95, 0, 0, 0, 0, 0, 2), 8_080);
const OTHER_ADDRESS_V6: Endpoint6 = ep6(Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1), 80);
/// The IPv6 mirrored pair: IPv6-only Services, each one's endpoint the
/// other's ClusterIP.
const MIRROR_V6_OBJECTS: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: mirror-a-v6, namespace: bench}
  spec:
    ipFamilies: [IPv6]
    clusterIP: fd00:95::1
    clusterIPs: [fd00:95::1]
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: mirror-a-v6, namespace: bench, labels: {kubernetes.io/service-name: mirror-a-v6}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:95::2"], conditions: {ready: true}}]
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: mirror-b-v6, namespace: bench}
  spec:
    ipFamilies: [IPv6]
    clusterIP: fd00:95::2
    clusterIPs: [fd00:95::2]
    ports: [{name: http, port: 8080, protocol: TCP, targetPort: 80}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: mirror-b-v6, namespace: bench, labels: {kubernetes.io/service-name: mirror-b-v6}}
  addressType: IPv6
  endpoints: [{addresses: ["fd00:95::1"], conditions: {ready: true}}]
  ports: [{name: http, port: 80, protocol: TCP}]
"#;

/// The route epoch the datapath runs under (any but 0, which keeps no
/// route).
const ROUTE_EPOCH: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Packets {
    /// Fresh SYNs to ClusterIPs spread over the table, repeat=1 each.
    NewToClusterIp,
    /// Fresh SYNs to node address:nodePort (Maglev frontends), repeat=1 each.
    NewToNodePort,
    /// Fresh SYNs from one client to the affinity ClusterIP, repeat=1 each.
    NewToSticky,
    /// The established mirrored flow, repeated.
    Established,
    /// A SYN through the mirrored pair, repeated: each iteration re-opens
    /// a tracked tuple, which a SYN balances afresh.
    SynRepeated,
    UnusedPort,
    OtherAddress,
    /// The IPv6 twins of `Established`, `SynRepeated` and `OtherAddress`.
    EstablishedV6,
    SynRepeatedV6,
    OtherAddressV6,
    /// The established external-IP flow to another node's backend, one
    /// run per packet (the same input each run).
    ExternalToRemote,
    /// Its IPv6 twin.
    ExternalToRemoteV6,
}

struct Case {
    id: &'static str,
    label: &'static str,
    program: &'static str,
    packets: Packets,
    /// The floor this case is divided by.
    floor: &'static str,
}

const CASES: [Case; 18] = [
    Case {
        id: "parse_only_new",
        label: "parse-only floor (repeat=1)",
        program: PARSE_ONLY_PROGRAM,
        packets: Packets::NewToClusterIp,
        floor: "parse_only_new",
    },
    Case {
        id: "clusterip_new_flow",
        label: "ClusterIP hit, new flow",
        program: TC_PROGRAM,
        packets: Packets::NewToClusterIp,
        floor: "parse_only_new",
    },
    Case {
        id: "nodeport_new_flow",
        label: "NodePort hit, new flow (Maglev)",
        program: TC_PROGRAM,
        packets: Packets::NewToNodePort,
        floor: "parse_only_new",
    },
    Case {
        id: "affinity_hit_new_flow",
        label: "ClusterIP hit, new flow, ClientIP affinity hit",
        program: TC_PROGRAM,
        packets: Packets::NewToSticky,
        floor: "parse_only_new",
    },
    Case {
        id: "parse_only_repeated",
        label: "parse-only floor (repeated)",
        program: PARSE_ONLY_PROGRAM,
        packets: Packets::Established,
        floor: "parse_only_repeated",
    },
    Case {
        id: "conntrack_hit",
        label: "conntrack hit (established flow)",
        program: TC_PROGRAM,
        packets: Packets::Established,
        floor: "parse_only_repeated",
    },
    Case {
        id: "conntrack_hit_lookup",
        label: "conntrack hit, route looked up on every packet (no route kept)",
        program: TC_PROGRAM,
        packets: Packets::Established,
        floor: "parse_only_repeated",
    },
    Case {
        id: "route_only",
        label: "route lookup only, no Service work (`lb_forward_only`)",
        program: FORWARD_ONLY_PROGRAM,
        packets: Packets::Established,
        floor: "parse_only_repeated",
    },
    Case {
        id: "new_flow_warm",
        label: "ClusterIP hit, new flow, warm caches",
        program: TC_PROGRAM,
        packets: Packets::SynRepeated,
        floor: "parse_only_repeated",
    },
    Case {
        id: "miss_unused_port",
        label: "miss: port no Service uses",
        program: TC_PROGRAM,
        packets: Packets::UnusedPort,
        floor: "parse_only_repeated",
    },
    Case {
        id: "miss_other_address",
        label: "miss: Service port, other address",
        program: TC_PROGRAM,
        packets: Packets::OtherAddress,
        floor: "parse_only_repeated",
    },
    Case {
        id: "conntrack_hit_v6",
        label: "IPv6: conntrack hit (established flow)",
        program: TC_PROGRAM,
        packets: Packets::EstablishedV6,
        floor: "parse_only_repeated",
    },
    Case {
        id: "new_flow_warm_v6",
        label: "IPv6: ClusterIP hit, new flow, warm caches",
        program: TC_PROGRAM,
        packets: Packets::SynRepeatedV6,
        floor: "parse_only_repeated",
    },
    Case {
        id: "miss_other_address_v6",
        label: "IPv6: miss: Service port, other address",
        program: TC_PROGRAM,
        packets: Packets::OtherAddressV6,
        floor: "parse_only_repeated",
    },
    Case {
        id: "external_remote_tc",
        label: "external IP → other node's backend, established, at tc",
        program: TC_PROGRAM,
        packets: Packets::ExternalToRemote,
        floor: "parse_only_new",
    },
    Case {
        id: "external_remote_xdp",
        label: "external IP → other node's backend, established, at XDP",
        program: XDP_PROGRAM,
        packets: Packets::ExternalToRemote,
        floor: "parse_only_new",
    },
    Case {
        id: "external_remote_tc_v6",
        label: "IPv6: external IP → other node's backend, established, at tc",
        program: TC_PROGRAM,
        packets: Packets::ExternalToRemoteV6,
        floor: "parse_only_new",
    },
    Case {
        id: "external_remote_xdp_v6",
        label: "IPv6: external IP → other node's backend, established, at XDP",
        program: XDP_PROGRAM,
        packets: Packets::ExternalToRemoteV6,
        floor: "parse_only_new",
    },
];

/// Timed once the table is full (`SizeBench::fill_conntrack`), interleaved
/// with the floor `parse_only_new`, after every case above.
const FULL_TABLE_CASE: Case = Case {
    id: "clusterip_new_flow_full",
    label: "ClusterIP hit, new flow, conntrack table full",
    program: TC_PROGRAM,
    packets: Packets::NewToClusterIp,
    floor: "parse_only_new",
};

fn how(case: &Case, plan: &PacketPlan) -> String {
    let (m, r) = (plan.flows_per_sample, plan.repeat);
    match case.id {
        "parse_only_new" => format!(
            "`lb_parse_only` (parses Ethernet/IPv4/L4 like `lb_tc`, then passes) on the same SYNs as the new-flow cases, one run per packet (repeat=1), mean over {m} packets per repetition; the floor for the new-flow cases"
        ),
        "clusterip_new_flow_full" => format!(
            "the ClusterIP new flow once the conntrack table ({} entries, the agent's default) is full: first {} distinct new flows go through the datapath, so each of the measured flows' two inserts evicts the least recently used entry. Timed after all other cases, {m} flows per repetition, interleaved with its own samples of the repeat=1 floor",
            group(f64::from(CONNTRACK_V4_CAPACITY)),
            group(fill_flows() as f64)
        ),
        "clusterip_new_flow" => format!(
            "TCP SYN from a source never seen before to ClusterIPs spread over the whole table: conntrack miss, frontend lookup, backend choice, two conntrack inserts, DNAT of address and port. One run per packet (repeat=1: a repeated run would be fed its own rewritten output), mean over {m} distinct flows per repetition"
        ),
        "nodeport_new_flow" => format!(
            "TCP SYN to node address {NODE_CLIENT_SIDE_IP}:nodePort of the first ≤{} Services (type NodePort), spread over them; otherwise measured like the ClusterIP new flow. NodePort frontends use Maglev: the backend comes from the frontend's Maglev table (an outer hash lookup by frontend id, then an inlined array read) instead of a slot entry (a hash lookup), so beside the ClusterIP row this is Maglev's per-packet cost against the plain slot hash, same run",
            group(NODE_PORT_SERVICES as f64)
        ),
        "affinity_hit_new_flow" => format!(
            "TCP SYN from {}, each from a new source port, to {}:{}, a ClusterIP with `sessionAffinity: ClientIP` and {ENDPOINTS_PER_SERVICE} endpoints, whose affinity entry for that client exists: the ClusterIP new flow plus the affinity lookup, the membership lookup and the entry's refresh instead of the slot lookup; one run per packet, mean over {m} flows per repetition",
            std::net::Ipv4Addr::from(STICKY_CLIENT),
            STICKY.ip,
            STICKY.port
        ),
        "parse_only_repeated" => {
            format!("`lb_parse_only` on the established-flow packet, repeat={r}; the floor for the repeated cases")
        }
        "conntrack_hit" => format!(
            "a TCP segment of an established flow, repeat={r}. Two Services point at each other's frontend ({}:{} → {}:{} → back) and both flows are established first, so each iteration, fed the previous one's output, is a conntrack hit plus a DNAT of address and port",
            MIRROR_A.ip, MIRROR_A.port, MIRROR_B.ip, MIRROR_B.port
        ),
        "conntrack_hit_lookup" => format!(
            "`conntrack hit` with the route epoch at 0 while it is timed, so nothing is kept on the entries and every packet looks its route up, as before routes were kept (repeat={r}); beside `conntrack hit`, what keeping the route saves"
        ),
        "route_only" => format!(
            "`lb_forward_only` (parses like `lb_tc`, then the route lookup every packet the datapath sends itself makes, no Service work) on the established-flow packet, repeat={r}. Its route is the stack's, as for `conntrack hit` after NAT, so both rows pay one route lookup: their difference is what the Service work costs, whatever the lookup costs on this host"
        ),
        "new_flow_warm" => format!(
            "a TCP SYN through the mirrored pair, repeat={r}: a SYN is balanced afresh even when its tuple is tracked, so every iteration takes the whole new-flow path (frontend lookup, backend choice, both conntrack entries written, DNAT) with the maps' cache lines warm, where the repeat=1 new-flow rows pay a cold start on every packet. It does a little more than a first packet: the reply entry's insert finds the tuple tracked and looks at it before replacing it"
        ),
        "miss_unused_port" => format!(
            "TCP to a ClusterIP on port {UNUSED_PORT}, which no frontend uses: the per-port prefilter (one array read) passes it; unchanged, so repeat={r} is exact"
        ),
        "miss_other_address" => format!(
            "TCP to {}:{}: a frontend port, but no Service at that address: conntrack and Service lookups miss, packet passed unchanged; repeat={r}",
            OTHER_ADDRESS.ip, OTHER_ADDRESS.port
        ),
        "conntrack_hit_v6" => format!(
            "the established-flow case over IPv6: two IPv6-only Services pointing at each other's ClusterIP ([{}]:{} → [{}]:{} → back), repeat={r}; beside `conntrack hit`, what a 16-byte address costs. The route after NAT (no route to a ClusterIP: to the stack) is kept on the flow's entry, as for IPv4; the backend is looked up by id on every packet. Before routes were kept, the lookup walked the namespace's IPv6 table (the external rows' link) on every packet",
            MIRROR_A_V6.ip, MIRROR_A_V6.port, MIRROR_B_V6.ip, MIRROR_B_V6.port
        ),
        "new_flow_warm_v6" => {
            format!("the warm new-flow case over IPv6: a TCP SYN through the IPv6 mirrored pair, repeat={r}")
        }
        "external_remote_tc" | "external_remote_xdp" => format!(
            "a TCP segment of an established flow from {}:{} outside the cluster to external IP {}:{}, whose one endpoint {}:{} runs on another node: conntrack hit, SNAT to the node's address and DNAT (both checksums), route lookup, MACs and TTL written, sent out of the link it came in on (tc: `bpf_redirect`; XDP: `XDP_TX`, checksums updated in software). The same packet through both programs, one run per packet (repeat=1), mean over {m} runs per repetition; compare the two rows for XDP against tc",
            OUTSIDE_CLIENT.ip, OUTSIDE_CLIENT.port, EXTERNAL.ip, EXTERNAL.port, REMOTE_BACKEND.ip, REMOTE_BACKEND.port
        ),
        "external_remote_tc_v6" | "external_remote_xdp_v6" => format!(
            "the external-IP rows over IPv6: from [{}]:{} to external IP [{}]:{}, endpoint [{}]:{} on another node, the same work (hop limit for TTL, no IP header checksum); the same packet through both programs, one run per packet, mean over {m} runs per repetition",
            OUTSIDE_CLIENT_V6.ip,
            OUTSIDE_CLIENT_V6.port,
            EXTERNAL_V6.ip,
            EXTERNAL_V6.port,
            REMOTE_BACKEND_V6.ip,
            REMOTE_BACKEND_V6.port
        ),
        "miss_other_address_v6" => format!(
            "TCP to [{}]:{}: a frontend port, no IPv6 Service at that address, passed unchanged; repeat={r}",
            OTHER_ADDRESS_V6.ip, OTHER_ADDRESS_V6.port
        ),
        _ => String::new(),
    }
}

pub fn run(plan: &PacketPlan, env: &Env, report: &mut Report) -> anyhow::Result<()> {
    for case in CASES.iter().chain([&FULL_TABLE_CASE]) {
        report.describe(Section::PacketCost, case.id, case.label, &how(case, plan));
    }
    report.note(
        Section::PacketCost,
        format!(
            "Each table size gets a freshly loaded datapath (unpinned maps) programmed through the agent's translate → encode → diff path; Services have {ENDPOINTS_PER_SERVICE} endpoints drawn from {} pod addresses, the first {} are NodePort, plus the two mirrored Services, their IPv6 twins and the affinity Service.",
            group(POD_POOL as f64),
            group(NODE_PORT_SERVICES as f64)
        ),
    );
    report.note(
        Section::PacketCost,
        format!(
            "{} interleaved repetitions (each runs every case once, in table order); ratios are taken per repetition (case ÷ its floor in the same repetition) and their median is shown. Times are the kernel's (ktime around the program run), so per-run timer overhead is included; repeat=1 cases pay it on every packet, hence their separate floor.",
            plan.repetitions
        ),
    );
    for &services in &plan.sizes {
        cancel::check()?;
        env.progress.start(format!("packet cost: loading {} Services", group(services as f64)));
        let mut bench =
            SizeBench::prepare(services, plan).with_context(|| format!("packet cost at {services} Services"))?;
        env.progress.start(format!("packet cost: timing {} Services", group(services as f64)));
        let mut samples: HashMap<&str, Vec<f64>> = HashMap::new();
        for _ in 0..plan.repetitions {
            for case in &CASES {
                cancel::check()?;
                samples.entry(case.id).or_default().push(bench.sample(case)?);
            }
        }
        env.progress.start(format!("packet cost: filling conntrack at {} Services", group(services as f64)));
        bench.fill_conntrack()?;
        let floor_case = CASES.iter().find(|c| c.id == FULL_TABLE_CASE.floor).context("no floor case")?;
        let mut full_floor = Vec::new();
        for _ in 0..plan.repetitions {
            cancel::check()?;
            full_floor.push(bench.sample(floor_case)?);
            samples.entry(FULL_TABLE_CASE.id).or_default().push(bench.sample(&FULL_TABLE_CASE)?);
        }
        for case in CASES.iter().chain([&FULL_TABLE_CASE]) {
            let ns = &samples[case.id];
            let floor = if case.id == FULL_TABLE_CASE.id { &full_floor } else { &samples[case.floor] };
            let ratios: Vec<f64> = ns.iter().zip(floor).map(|(c, f)| c / f).collect();
            let summary = Summary::of(ns).context("no samples")?;
            report.add(At::new(Section::PacketCost, "ebpf", case.id, services), "ns_per_packet", "ns", summary);
            report.add(
                At::new(Section::PacketCost, "ebpf", case.id, services),
                "ratio_to_parse_only",
                "x",
                Summary::of(&ratios).context("no samples")?,
            );
        }
        env.progress.done_step();
    }
    Ok(())
}

/// A datapath loaded with one table size, and the packets for each case.
struct SizeBench {
    dp: Datapath,
    cluster_ips: Vec<Endpoint>,
    node_ports: Vec<Endpoint>,
    established: Vec<u8>,
    syn_repeated: Vec<u8>,
    unused_port: Vec<u8>,
    other_address: Vec<u8>,
    established_v6: Vec<u8>,
    syn_repeated_v6: Vec<u8>,
    other_address_v6: Vec<u8>,
    external_to_remote: Vec<u8>,
    external_to_remote_v6: Vec<u8>,
    /// The routed link the external flow arrives on (XDP's ingress).
    ext0: u32,
    next_flow: u64,
    flows_per_sample: usize,
    repeat: u32,
}

/// New flows that fill the conntrack table: two entries each, plus a
/// tenth, as the LRU may evict before the table is quite full.
fn fill_flows() -> usize {
    CONNTRACK_V4_CAPACITY as usize / 2 * 11 / 10
}

/// A distinct source for each flow number.
fn flow_source(flow: u64) -> Endpoint {
    const PORTS: u64 = 28_000;
    let base = u32::from(Ipv4Addr::new(10, 100, 0, 0));
    let ip = Ipv4Addr::from(base + (flow / PORTS) as u32);
    Endpoint { ip, port: 32_768 + (flow % PORTS) as u16 }
}

fn endpoint(ip: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint { ip, port }
}

/// Destination address and port of an IPv6 TCP packet without extension
/// headers.
fn destination_v6(packet: &[u8]) -> Option<Endpoint6> {
    let ip: [u8; 16] = packet.get(38..54)?.try_into().ok()?;
    let port = u16::from_be_bytes(packet.get(56..58)?.try_into().ok()?);
    Some(ep6(Ipv6Addr::from(ip), port))
}

/// Destination address and port of a TCP packet without IP options.
fn destination(packet: &[u8]) -> Option<Endpoint> {
    let ip: [u8; 4] = packet.get(30..34)?.try_into().ok()?;
    let port = u16::from_be_bytes(packet.get(36..38)?.try_into().ok()?);
    Some(endpoint(Ipv4Addr::from(ip), port))
}

impl SizeBench {
    fn prepare(services: usize, plan: &PacketPlan) -> anyhow::Result<Self> {
        let pool: Vec<Ipv4Addr> =
            (0..POD_POOL).map(|i| Ipv4Addr::new(10, 244, (i / 250) as u8, (2 + i % 250) as u8)).collect();
        let table = Table::generate(&TableSpec {
            services,
            port: HTTP,
            pool,
            endpoints_per_service: ENDPOINTS_PER_SERVICE,
            node_ports: NODE_PORT_SERVICES,
        });
        let node = NodeContext {
            node_name: Some(table::BENCH_NODE.to_owned()),
            node_addresses: vec![NODE_CLIENT_SIDE_IP.into()],
            dual_stack: true,
            ..Default::default()
        };
        let mut dp =
            Datapath::load_with(node, capacities_for(services + NODE_PORT_SERVICES + 3, ENDPOINTS_PER_SERVICE))?;
        let mut service_objects = table.service_objects();
        let mut slices = table.slice_records();
        let mirror_b_port =
            PortSpec { name: "http", protocol: HTTP.protocol, port: MIRROR_B.port, target_port: MIRROR_A.port };
        let mirror_a_port = PortSpec { target_port: MIRROR_B.port, ..HTTP };
        service_objects.push(table::service_object("mirror-a", MIRROR_A.ip, mirror_a_port, None));
        slices.push(table::slice_object("mirror-a", &[MIRROR_B.ip], mirror_a_port).into());
        service_objects.push(table::service_object("mirror-b", MIRROR_B.ip, mirror_b_port, None));
        slices.push(table::slice_object("mirror-b", &[MIRROR_A.ip], mirror_b_port).into());
        let mut sticky = table::service_object("sticky", STICKY.ip, HTTP, None);
        if let Some(spec) = sticky.spec.as_mut() {
            spec.session_affinity = Some("ClientIP".to_owned());
        }
        service_objects.push(sticky);
        slices.push(table::slice_object("sticky", &table.services[0].endpoints, HTTP).into());
        for extra in [MIRROR_V6_OBJECTS, EXTERNAL_OBJECTS] {
            let extra = objects::parse(extra)?;
            service_objects.extend(extra.services);
            slices.extend(extra.slices);
        }
        let sync = dp.syncer_mut().sync(&service_objects, &slices)?;
        ensure!(sync.problems.is_empty(), "untranslatable objects: {:?}", sync.problems.first());
        let node_port_count = table.services.iter().filter(|s| s.node_port.is_some()).count();
        // The mirrors (2 + 2 IPv6), sticky, and the external Services'
        // ClusterIP and external IP (2 + 2 IPv6).
        const EXTRA_FRONTENDS: usize = 9;
        ensure!(
            sync.frontends == services + node_port_count + EXTRA_FRONTENDS,
            "expected {} frontends, the sync made {}",
            services + node_port_count + EXTRA_FRONTENDS,
            sync.frontends
        );
        let spread = plan.flows_per_sample;
        let cluster_ips = table.spread(spread).iter().map(|s| endpoint(s.cluster_ip, HTTP.port)).collect();
        let node_port_table = Table { port: HTTP, services: table.services[..node_port_count].to_vec() };
        let node_ports = node_port_table
            .spread(spread)
            .iter()
            .filter_map(|s| s.node_port.map(|p| endpoint(NODE_CLIENT_SIDE_IP, p)))
            .collect();
        let mut bench = Self {
            dp,
            cluster_ips,
            node_ports,
            established: packets::tcp(CLIENT, MIRROR_A, false, PAYLOAD),
            syn_repeated: packets::tcp_syn(SYN_CLIENT, MIRROR_A),
            unused_port: packets::tcp(CLIENT, endpoint(table::cluster_ip(0), UNUSED_PORT), false, PAYLOAD),
            other_address: packets::tcp(CLIENT, OTHER_ADDRESS, false, PAYLOAD),
            established_v6: packets6::tcp(CLIENT_V6, MIRROR_A_V6, false, PAYLOAD),
            syn_repeated_v6: packets6::tcp(SYN_CLIENT_V6, MIRROR_A_V6, true, &[]),
            other_address_v6: packets6::tcp(CLIENT_V6, OTHER_ADDRESS_V6, false, PAYLOAD),
            external_to_remote: packets::tcp(OUTSIDE_CLIENT, EXTERNAL, false, PAYLOAD),
            external_to_remote_v6: packets6::tcp(OUTSIDE_CLIENT_V6, EXTERNAL_V6, false, PAYLOAD),
            ext0: 0,
            next_flow: 0,
            flows_per_sample: plan.flows_per_sample,
            repeat: plan.repeat,
        };
        // One namespace serves every table size (the thread's own).
        // SAFETY: a NUL-terminated name; the call only reads it.
        let ext0 = || unsafe { libc::if_nametoindex(c"ext0".as_ptr()) };
        if ext0() == 0 {
            routed::set_up_with_pods(REMOTE_PODS)?;
            routed::set_up_v6()?;
        }
        bench.ext0 = ext0();
        // As the agent does at start: established flows keep their routes.
        bench.dp.set_route_epoch(ROUTE_EPOCH)?;
        bench.verify(&table)?;
        Ok(bench)
    }

    /// Checks, once, that every case's packet takes the path it is named
    /// after, so the timings measure what the labels say.
    fn verify(&mut self, table: &Table) -> anyhow::Result<()> {
        let backend_of = |dst: Endpoint| -> Option<Vec<Endpoint>> {
            let svc = table.services.iter().find(|s| {
                (s.cluster_ip == dst.ip && dst.port == HTTP.port)
                    || (dst.ip == NODE_CLIENT_SIDE_IP && s.node_port == Some(dst.port))
            })?;
            Some(svc.endpoints.iter().map(|ip| endpoint(*ip, HTTP.target_port)).collect())
        };
        for target in [self.cluster_ips[0], self.node_ports[0]] {
            let syn = packets::tcp_syn(flow_source(self.take_flows(1)), target);
            let out = self.dp.run(TC_PROGRAM, &syn)?;
            let dst = destination(&out.packet).context("short output")?;
            let allowed = backend_of(target).context("target is no frontend")?;
            ensure!(
                out.verdict == TC_ACT_UNSPEC && allowed.contains(&dst) && packets::checksums_verify(&out.packet),
                "a new flow to {}:{} was not DNATed to one of its endpoints (verdict {}, destination {}:{})",
                target.ip,
                target.port,
                out.verdict,
                dst.ip,
                dst.port
            );
        }
        self.verify_affinity_hit()?;
        self.establish_mirror()?;
        let first = self.dp.run(TC_PROGRAM, &self.established)?;
        let second = self.dp.run(TC_PROGRAM, &first.packet)?;
        ensure!(
            destination(&first.packet) == Some(MIRROR_B) && destination(&second.packet) == Some(MIRROR_A),
            "the mirrored flow does not alternate between its frontends"
        );
        // `route_only` compares with `conntrack_hit` only if both routes
        // end the same way: to the stack, the packet otherwise untouched.
        let routed = self.dp.run(FORWARD_ONLY_PROGRAM, &self.established)?;
        ensure!(
            first.verdict == TC_ACT_UNSPEC && routed.verdict == TC_ACT_UNSPEC && routed.packet == self.established,
            "the established packet's route is not the stack's (verdicts: conntrack hit {}, route only {})",
            first.verdict,
            routed.verdict
        );
        self.verify_syn_repeated()?;
        self.verify_v6()?;
        self.verify_external()?;
        for (name, packet) in [
            ("unused port", &self.unused_port),
            ("other address", &self.other_address),
            ("IPv6 other address", &self.other_address_v6),
        ] {
            let out = self.dp.run(TC_PROGRAM, packet)?;
            if out.verdict != TC_ACT_UNSPEC || &out.packet != packet {
                bail!("the {name} miss did not pass the packet unchanged (verdict {})", out.verdict);
            }
        }
        Ok(())
    }

    /// Each iteration of the repeated SYN is balanced afresh and DNATed
    /// to the other frontend of the pair.
    fn verify_syn_repeated(&mut self) -> anyhow::Result<()> {
        let mut packet = self.syn_repeated.clone();
        for expected in [MIRROR_B, MIRROR_A, MIRROR_B] {
            let (out, moved) = self.dp.run_counted(TC_PROGRAM, &packet)?;
            let balanced = [lb_common::stats::Counter::NewFlow, lb_common::stats::Counter::Rebalanced]
                .iter()
                .any(|counter| moved.contains_key(counter));
            ensure!(
                balanced && destination(&out.packet) == Some(expected),
                "the repeated SYN was not balanced to {}:{} (counters {moved:?})",
                expected.ip,
                expected.port
            );
            packet = out.packet;
        }
        Ok(())
    }

    /// The IPv6 established flow alternates between the pair's
    /// frontends as a conntrack hit, and the IPv6 repeated SYN is
    /// balanced afresh on every iteration.
    fn verify_v6(&mut self) -> anyhow::Result<()> {
        self.establish_mirror()?;
        let (first, moved) = self.dp.run_counted(TC_PROGRAM, &self.established_v6)?;
        let second = self.dp.run(TC_PROGRAM, &first.packet)?;
        ensure!(
            destination_v6(&first.packet) == Some(MIRROR_B_V6)
                && destination_v6(&second.packet) == Some(MIRROR_A_V6)
                && moved.contains_key(&lb_common::stats::Counter::Established),
            "the IPv6 mirrored flow is no conntrack hit alternating between its frontends (counters {moved:?})"
        );
        let mut packet = self.syn_repeated_v6.clone();
        for expected in [MIRROR_B_V6, MIRROR_A_V6] {
            let (out, moved) = self.dp.run_counted(TC_PROGRAM, &packet)?;
            let balanced = [lb_common::stats::Counter::NewFlow, lb_common::stats::Counter::Rebalanced]
                .iter()
                .any(|counter| moved.contains_key(counter));
            ensure!(
                balanced && destination_v6(&out.packet) == Some(expected) && packets6::checksums_verify(&out.packet),
                "the IPv6 repeated SYN was not balanced to [{}]:{} (counters {moved:?})",
                expected.ip,
                expected.port
            );
            packet = out.packet;
        }
        Ok(())
    }

    /// The external flow is established, and both programs send it, to
    /// the same bytes, straight out of the link it came in on.
    fn verify_external(&mut self) -> anyhow::Result<()> {
        self.dp.run(TC_PROGRAM, &packets::tcp_syn(OUTSIDE_CLIENT, EXTERNAL))?;
        let (tc, tc_moved) = self.dp.run_counted(TC_PROGRAM, &self.external_to_remote)?;
        let (xdp, xdp_moved) = self.dp.run_xdp_counted(&self.external_to_remote, self.ext0)?;
        let established =
            |moved: &crate::datapath::Counters| moved.contains_key(&lb_common::stats::Counter::Established);
        ensure!(
            tc.verdict == TC_ACT_REDIRECT && xdp.verdict == XDP_TX && established(&tc_moved) && established(&xdp_moved),
            "the external flow was not sent as established by both hooks (tc {} {tc_moved:?}, XDP {} {xdp_moved:?})",
            tc.verdict,
            xdp.verdict
        );
        ensure!(
            destination(&tc.packet) == Some(REMOTE_BACKEND) && tc.packet == xdp.packet,
            "tc and XDP did not write the same packet to the remote backend"
        );
        self.dp.run(TC_PROGRAM, &packets6::tcp(OUTSIDE_CLIENT_V6, EXTERNAL_V6, true, &[]))?;
        let (tc, tc_moved) = self.dp.run_counted(TC_PROGRAM, &self.external_to_remote_v6)?;
        let (xdp, xdp_moved) = self.dp.run_xdp_counted(&self.external_to_remote_v6, self.ext0)?;
        ensure!(
            tc.verdict == TC_ACT_REDIRECT && xdp.verdict == XDP_TX && established(&tc_moved) && established(&xdp_moved),
            "the IPv6 external flow was not sent as established by both hooks (tc {} {tc_moved:?}, XDP {} {xdp_moved:?})",
            tc.verdict,
            xdp.verdict
        );
        ensure!(
            destination_v6(&tc.packet) == Some(REMOTE_BACKEND_V6) && tc.packet == xdp.packet,
            "tc and XDP did not write the same IPv6 packet to the remote backend"
        );
        Ok(())
    }

    /// The sticky client's first flow records its entry; a later one
    /// from another port follows it.
    fn verify_affinity_hit(&mut self) -> anyhow::Result<()> {
        let (first, second) = (self.sticky_syn(), self.sticky_syn());
        self.dp.run(TC_PROGRAM, &first)?;
        let (out, moved) = self.dp.run_counted(TC_PROGRAM, &second)?;
        ensure!(
            out.verdict == TC_ACT_UNSPEC && moved.contains_key(&lb_common::stats::Counter::AffinityHit),
            "a second flow from the sticky client was no affinity hit (verdict {}, counters {moved:?})",
            out.verdict
        );
        Ok(())
    }

    /// A SYN from the sticky client, from a source port not used yet.
    fn sticky_syn(&mut self) -> Vec<u8> {
        let port = flow_source(self.take_flows(1)).port;
        packets::tcp_syn(Endpoint { ip: STICKY_CLIENT.into(), port }, STICKY)
    }

    /// Opens both directions of the mirrored pair (idempotent: later runs
    /// find the entries and keep them).
    fn establish_mirror(&mut self) -> anyhow::Result<()> {
        self.dp.run(TC_PROGRAM, &packets::tcp(CLIENT, MIRROR_A, false, PAYLOAD))?;
        self.dp.run(TC_PROGRAM, &packets::tcp(CLIENT, MIRROR_B, false, PAYLOAD))?;
        self.dp.run(TC_PROGRAM, &packets6::tcp(CLIENT_V6, MIRROR_A_V6, false, PAYLOAD))?;
        self.dp.run(TC_PROGRAM, &packets6::tcp(CLIENT_V6, MIRROR_B_V6, false, PAYLOAD))?;
        Ok(())
    }

    /// Fills the conntrack table to capacity with new flows through the
    /// datapath (two entries each), as a busy node's would be, and checks
    /// that it is full.
    fn fill_conntrack(&mut self) -> anyhow::Result<()> {
        let first = self.take_flows(fill_flows());
        for k in 0..fill_flows() {
            let target = self.cluster_ips[k % self.cluster_ips.len()];
            self.dp.run(TC_PROGRAM, &packets::tcp_syn(flow_source(first + k as u64), target))?;
        }
        let entries = self.dp.conntrack()?.len();
        ensure!(
            entries as u64 * 100 >= u64::from(CONNTRACK_V4_CAPACITY) * 99,
            "conntrack holds {entries} entries after filling, of {CONNTRACK_V4_CAPACITY}"
        );
        Ok(())
    }

    fn take_flows(&mut self, count: usize) -> u64 {
        let first = self.next_flow;
        self.next_flow += count as u64;
        first
    }

    /// One sample of a case, in ns per packet.
    fn sample(&mut self, case: &Case) -> anyhow::Result<f64> {
        match case.packets {
            Packets::NewToClusterIp | Packets::NewToNodePort => {
                let targets =
                    if case.packets == Packets::NewToClusterIp { &self.cluster_ips } else { &self.node_ports };
                let first = self.next_flow;
                let batch: Vec<Vec<u8>> = (0..self.flows_per_sample)
                    .map(|k| packets::tcp_syn(flow_source(first + k as u64), targets[k % targets.len()]))
                    .collect();
                self.take_flows(batch.len());
                let mut total = 0.0;
                for packet in &batch {
                    total += self.dp.time(case.program, packet, 1)?.as_nanos() as f64;
                }
                Ok(total / batch.len() as f64)
            }
            Packets::ExternalToRemote | Packets::ExternalToRemoteV6 => {
                let packet = match case.packets {
                    Packets::ExternalToRemote => self.external_to_remote.clone(),
                    _ => self.external_to_remote_v6.clone(),
                };
                let mut total = 0.0;
                for _ in 0..self.flows_per_sample {
                    let took = if case.program == XDP_PROGRAM {
                        self.dp.time_xdp(&packet, 1, self.ext0)?
                    } else {
                        self.dp.time(case.program, &packet, 1)?
                    };
                    total += took.as_nanos() as f64;
                }
                Ok(total / self.flows_per_sample as f64)
            }
            Packets::NewToSticky => {
                let batch: Vec<Vec<u8>> = (0..self.flows_per_sample).map(|_| self.sticky_syn()).collect();
                let mut total = 0.0;
                for packet in &batch {
                    total += self.dp.time(case.program, packet, 1)?.as_nanos() as f64;
                }
                Ok(total / batch.len() as f64)
            }
            _ => {
                let packet = match case.packets {
                    Packets::Established | Packets::EstablishedV6 => {
                        // LRU eviction by the new-flow cases must not turn
                        // this into a new flow.
                        self.establish_mirror()?;
                        if case.packets == Packets::Established {
                            self.established.clone()
                        } else {
                            self.established_v6.clone()
                        }
                    }
                    Packets::SynRepeated => self.syn_repeated.clone(),
                    Packets::SynRepeatedV6 => self.syn_repeated_v6.clone(),
                    Packets::UnusedPort => self.unused_port.clone(),
                    Packets::OtherAddressV6 => self.other_address_v6.clone(),
                    _ => self.other_address.clone(),
                };
                if case.id != "conntrack_hit_lookup" {
                    return Ok(self.dp.time(case.program, &packet, self.repeat)?.as_nanos() as f64);
                }
                self.dp.set_route_epoch(0)?;
                let took = self.dp.time(case.program, &packet, self.repeat);
                self.dp.set_route_epoch(ROUTE_EPOCH)?;
                Ok(took?.as_nanos() as f64)
            }
        }
    }
}
