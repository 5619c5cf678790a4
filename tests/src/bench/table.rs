//! Synthetic Service tables: N Services × 10 endpoints, as Kubernetes
//! objects (for the agent's own translate path, in-process or through a
//! JSON file) and as plain data (for the kube-proxy rule generators and the
//! load generator), so every datapath is programmed with the same Services
//! and the same endpoints.

use std::{
    collections::BTreeMap,
    io::Write,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
};

use anyhow::Context as _;
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use lb_userspace::{model::Protocol, translate::SliceRecord};

/// Namespace of every generated object.
pub const NAMESPACE: &str = "bench";

/// One Service port and the endpoints' target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub name: &'static str,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: u16,
}

/// The TCP table's port: a web service.
pub const HTTP: PortSpec = PortSpec { name: "http", protocol: Protocol::Tcp, port: 80, target_port: 8080 };
/// The UDP table's port: a DNS-like service.
pub const DNS: PortSpec = PortSpec { name: "dns", protocol: Protocol::Udp, port: 53, target_port: 5353 };

/// kubeadm's default Service range is 10.96.0.0/12; ClusterIPs are handed
/// out from its start, so up to 65,534 Services stay inside 10.96.0.0/16
/// (the part the traffic topology routes).
const SERVICE_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
pub const FIRST_NODE_PORT: u16 = 30_000;
/// 30000-32767, the default NodePort range.
const NODE_PORT_COUNT: usize = 2_768;

pub fn cluster_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::from(SERVICE_BASE + 1 + index as u32)
}

#[derive(Clone, Debug)]
pub struct TableSpec {
    pub services: usize,
    pub port: PortSpec,
    /// Pod addresses endpoints are drawn from, round-robin.
    pub pool: Vec<Ipv4Addr>,
    pub endpoints_per_service: usize,
    /// The first this-many Services are `type: NodePort` (capped by the
    /// NodePort range); the rest are ClusterIP.
    pub node_ports: usize,
}

/// One generated Service.
#[derive(Clone, Debug)]
pub struct BenchService {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub node_port: Option<u16>,
    /// Distinct pod addresses (the target port is the table's).
    pub endpoints: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug)]
pub struct Table {
    pub port: PortSpec,
    pub services: Vec<BenchService>,
}

impl Table {
    /// Service i gets ClusterIP 10.96.0.0 + 1 + i and the endpoints
    /// pool[(i·e + j) mod |pool|] for j < e: distinct within a Service as
    /// long as the pool has at least e addresses, and spread evenly.
    pub fn generate(spec: &TableSpec) -> Self {
        let e = spec.endpoints_per_service;
        assert!(spec.pool.len() >= e, "endpoint pool smaller than the endpoints of one Service");
        let node_ports = spec.node_ports.min(NODE_PORT_COUNT);
        let services = (0..spec.services)
            .map(|i| BenchService {
                name: format!("svc-{i:06}"),
                cluster_ip: cluster_ip(i),
                node_port: (i < node_ports).then(|| FIRST_NODE_PORT + i as u16),
                endpoints: (0..e).map(|j| spec.pool[(i * e + j) % spec.pool.len()]).collect(),
            })
            .collect();
        Self { port: spec.port, services }
    }

    /// `count` Services spread evenly over the table (all of them if it
    /// has fewer), so traffic does not only hit the first entries.
    pub fn spread(&self, count: usize) -> Vec<&BenchService> {
        let n = self.services.len();
        let count = count.min(n);
        (0..count).map(|k| &self.services[k * n / count]).collect()
    }

    /// Frontends (ClusterIP) of a spread of Services.
    pub fn frontends(&self, count: usize) -> Vec<SocketAddr> {
        self.spread(count).into_iter().map(|s| sock(s.cluster_ip, self.port.port)).collect()
    }

    /// Endpoints of the same spread of Services, rotating through each
    /// Service's endpoints: what a client would address without a Service.
    pub fn direct_endpoints(&self, count: usize) -> Vec<SocketAddr> {
        self.spread(count)
            .into_iter()
            .enumerate()
            .map(|(k, s)| sock(s.endpoints[k % s.endpoints.len()], self.port.target_port))
            .collect()
    }

    pub fn service_objects(&self) -> Vec<Service> {
        self.services.iter().map(|s| service_object(&s.name, s.cluster_ip, self.port, s.node_port)).collect()
    }

    pub fn slice_objects(&self) -> Vec<EndpointSlice> {
        self.services.iter().map(|s| slice_object(&s.name, &s.endpoints, self.port)).collect()
    }

    /// The slices as the agent keeps them, for a Syncer driven in-process.
    pub fn slice_records(&self) -> Vec<SliceRecord> {
        self.slice_objects().into_iter().map(SliceRecord::from).collect()
    }

    /// Writes the table as a JSON `List` of Services and EndpointSlices,
    /// the format the agent's file source reads.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        write_list(path, &self.service_objects(), &self.slice_objects())
    }
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// A Service with one port; `type: NodePort` when `node_port` is set.
pub fn service_object(name: &str, cluster_ip: Ipv4Addr, port: PortSpec, node_port: Option<u16>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(if node_port.is_some() { "NodePort" } else { "ClusterIP" }.to_owned()),
            cluster_ip: Some(cluster_ip.to_string()),
            cluster_ips: Some(vec![cluster_ip.to_string()]),
            ports: Some(vec![ServicePort {
                name: Some(port.name.to_owned()),
                protocol: Some(port.protocol.as_str().to_owned()),
                port: i32::from(port.port),
                target_port: Some(IntOrString::Int(i32::from(port.target_port))),
                node_port: node_port.map(i32::from),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The node every benchmark endpoint runs on: the datapath under test is
/// that node's (its NodePort flows need no SNAT, as on a real node whose
/// pods serve them).
pub const BENCH_NODE: &str = "bench-node";

/// The EndpointSlice of Service `service`: every endpoint ready, on
/// [`BENCH_NODE`].
pub fn slice_object(service: &str, endpoints: &[Ipv4Addr], port: PortSpec) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service}-1")),
            namespace: Some(NAMESPACE.to_owned()),
            labels: Some(BTreeMap::from([("kubernetes.io/service-name".to_owned(), service.to_owned())])),
            ..Default::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: endpoints
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(BENCH_NODE.to_owned()),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(port.name.to_owned()),
            protocol: Some(port.protocol.as_str().to_owned()),
            port: Some(i32::from(port.target_port)),
            ..Default::default()
        }]),
    }
}

/// Writes objects as one JSON `List` (`kubectl get -o json` style).
pub fn write_list(path: &Path, services: &[Service], slices: &[EndpointSlice]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    out.write_all(br#"{"apiVersion":"v1","kind":"List","items":["#)?;
    let mut first = true;
    for item in services.iter().map(serde_json::to_value).chain(slices.iter().map(serde_json::to_value)) {
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        serde_json::to_writer(&mut out, &item?)?;
    }
    out.write_all(b"]}")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(services: usize) -> TableSpec {
        TableSpec {
            services,
            port: HTTP,
            pool: (2..=13).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect(),
            endpoints_per_service: 10,
            node_ports: 2,
        }
    }

    #[test]
    fn endpoints_are_distinct_within_a_service() {
        let table = Table::generate(&spec(50));
        for s in &table.services {
            let mut eps = s.endpoints.clone();
            eps.sort();
            eps.dedup();
            assert_eq!(eps.len(), 10, "{}", s.name);
        }
        assert_eq!(table.services[0].cluster_ip, Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(table.services[1].node_port, Some(30_001));
        assert_eq!(table.services[2].node_port, None);
    }

    #[test]
    fn spread_covers_the_whole_table() {
        let table = Table::generate(&spec(1_000));
        let spread = table.spread(10);
        assert_eq!(spread.len(), 10);
        assert_eq!(spread[0].name, "svc-000000");
        assert_eq!(spread[9].name, "svc-000900");
        assert_eq!(table.spread(5_000).len(), 1_000);
    }

    #[test]
    fn json_list_parses_back_through_the_agent_reader() {
        let table = Table::generate(&spec(3));
        let path = std::env::temp_dir().join(format!("lb-bench-table-{}.json", std::process::id()));
        table.write_json(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let objects = lb_userspace::source::objects::parse(&text).unwrap();
        assert_eq!((objects.services.len(), objects.slices.len()), (3, 3));
        assert!(objects.problems.is_empty(), "{:?}", objects.problems);
    }
}
