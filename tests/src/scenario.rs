//! The demo cluster: three backend namespaces running real HTTP and UDP
//! echo servers, the agent in the node namespace programmed from the
//! bundled `deploy/examples/demo-services.yaml`. Shared by the demo and
//! the end-to-end tests.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use lb_common::service::ServiceKeyV4;
use lb_userspace::tables::DesiredMaps;

use crate::{
    agent::{self, Agent},
    servers::Servers,
    topology::{self, Topology},
};

/// The bundled Services file.
pub const DEMO_SERVICES: &str = include_str!("../../deploy/examples/demo-services.yaml");

pub const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
pub const ECHO: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 53), 53);
pub const NOTHING_HERE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 30), 80);
pub const HTTP_PORT: u16 = 8080;
pub const ECHO_PORT: u16 = 5353;
pub const BACKENDS: usize = 3;

/// The name backend `i` (1-based) answers with.
pub fn backend_name(i: usize) -> String {
    format!("backend-{i}")
}

/// Number of backends the maps hold for a TCP frontend (None: no such frontend).
pub fn backend_count(maps: &DesiredMaps, frontend: SocketAddrV4) -> Option<u16> {
    let key = ServiceKeyV4::frontend(frontend.ip().octets(), frontend.port(), lb_common::proto::TCP);
    maps.services.get(&key).map(|v| v.count)
}

/// Number of backends the maps hold for a UDP frontend (None: no such frontend).
pub fn udp_backend_count(maps: &DesiredMaps, frontend: SocketAddrV4) -> Option<u16> {
    let key = ServiceKeyV4::frontend(frontend.ip().octets(), frontend.port(), lb_common::proto::UDP);
    maps.services.get(&key).map(|v| v.count)
}

/// A Services file with only `web` (the demo's ClusterIP, port 80 to the
/// backends' HTTP port), its endpoints backends `backends` (1-based), each
/// with the given conditions (`ready`, `serving`, `terminating`).
pub fn web_services(backends: &[(usize, [bool; 3])]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|(i, [ready, serving, terminating])| {
            format!(
                "  - addresses: [{}]\n    conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n",
                topology::backend_ip(*i)
            )
        })
        .collect();
    let endpoints = if endpoints.is_empty() { "  []\n".to_owned() } else { endpoints };
    format!(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {{name: web, namespace: demo}}\n  spec:\n    clusterIP: {ip}\n    ports: [{{name: http, port: {port}, protocol: TCP, targetPort: http}}]\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: web-1, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}\n  addressType: IPv4\n  ports: [{{name: http, port: {HTTP_PORT}, protocol: TCP}}]\n  endpoints:\n{endpoints}",
        ip = WEB.ip(),
        port = WEB.port(),
    )
}

/// Endpoint conditions of a ready endpoint.
pub const READY: [bool; 3] = [true, true, false];
/// Endpoint conditions of a terminating endpoint that still serves.
pub const TERMINATING: [bool; 3] = [false, true, true];

/// `web_services` with every listed backend ready.
pub fn web_services_ready(backends: &[usize]) -> String {
    web_services(&backends.iter().map(|&i| (i, READY)).collect::<Vec<_>>())
}

/// The backend ids of `web`'s backends, by backend index (1-based).
pub fn web_backend_ids(maps: &DesiredMaps) -> std::collections::BTreeMap<usize, u32> {
    let key = ServiceKeyV4::frontend(WEB.ip().octets(), WEB.port(), lb_common::proto::TCP);
    let count = maps.services.get(&key).map_or(0, |v| v.count);
    (1..=count)
        .filter_map(|slot| maps.services.get(&key.slot(slot)))
        .filter_map(|slot| Some((slot.backend_id, maps.backends.get(&slot.backend_id)?)))
        .map(|(id, b)| (usize::from(b.address[2]), id))
        .collect()
}

/// The bundled file with one of web's endpoints removed.
pub fn demo_services_without_web_endpoint(ip: Ipv4Addr) -> String {
    let needle = format!("  - addresses: [{ip}]\n    conditions: {{ready: true, serving: true, terminating: false}}\n");
    assert!(DEMO_SERVICES.contains(&needle), "web endpoint {ip} not in the demo file");
    DEMO_SERVICES.replacen(&needle, "", 1)
}

#[derive(Debug)]
pub struct DemoCluster {
    // Field order is drop order: agent first, then servers, then namespaces.
    pub agent: Agent,
    pub servers: Servers,
    pub topology: Topology,
    pub source_file: PathBuf,
    source_dir: PathBuf,
}

impl DemoCluster {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(BACKENDS, DEMO_SERVICES, |m| backend_count(m, WEB) == Some(3))
    }

    /// `backends` backend namespaces with their servers, and the agent
    /// programmed from `services`; returns once the maps satisfy `ready`.
    pub fn start_with(backends: usize, services: &str, ready: impl Fn(&DesiredMaps) -> bool) -> anyhow::Result<Self> {
        Self::start_with_args(backends, services, &[], ready)
    }

    /// `start_with`, the agent started with `agent_args` too.
    pub fn start_with_args(
        backends: usize,
        services: &str,
        agent_args: &[&str],
        ready: impl Fn(&DesiredMaps) -> bool,
    ) -> anyhow::Result<Self> {
        let topology = Topology::create(backends)?;
        let mut servers = Servers::new();
        for i in 1..=backends {
            let ns = &topology.backends[i - 1];
            let ip = topology::backend_ip(i);
            servers.http(ns, SocketAddr::from((ip, HTTP_PORT)), &backend_name(i))?;
            servers.udp_echo(ns, SocketAddr::from((ip, ECHO_PORT)), &backend_name(i))?;
        }
        let source_dir = std::env::temp_dir().join(&topology.node);
        std::fs::create_dir_all(&source_dir)?;
        let source_file = source_dir.join("services.yaml");
        agent::write_atomically(&source_file, services)?;
        let mut agent = Agent::start(&topology.node, &source_file, agent_args)?;
        agent.wait_ready(Duration::from_secs(30))?;
        agent.wait_until(Duration::from_secs(5), ready)?;
        Ok(Self { agent, servers, topology, source_file, source_dir })
    }

    /// Replaces the Services file and waits until the maps satisfy `ready`.
    pub fn update(&mut self, text: &str, ready: impl Fn(&DesiredMaps) -> bool) -> anyhow::Result<()> {
        agent::write_atomically(&self.source_file, text)?;
        self.agent.wait_until(Duration::from_secs(10), ready)?;
        Ok(())
    }
}

impl Drop for DemoCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.source_dir);
    }
}
