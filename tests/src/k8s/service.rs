//! A Service as a user creates it, rendered as the API server stores it.
//!
//! The API server fills in defaults (`sessionAffinity: None`, the ClientIP
//! timeout of 10,800 s, `internalTrafficPolicy: Cluster`, the
//! `externalTrafficPolicy` of types that have one) and drops what the type
//! does not allow: an ExternalName Service has no cluster IP, and only
//! NodePort and LoadBalancer Services keep their `nodePort`s. The agent
//! reads what the API server returns, so that is what [`Service::to_json`]
//! renders.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde_json::{Map, Value, json};

use super::NAMESPACE;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    /// NodePorts plus whatever load balancer a cloud provides (none here:
    /// no ingress address), and, with `externalTrafficPolicy: Local`, a
    /// health check port.
    LoadBalancer,
    /// A DNS alias: `externalName` is the name; no cluster IP, nothing for a
    /// proxy to program.
    ExternalName(String),
}

/// Where a Service port sends traffic: a number, or the name of a
/// container port (looked up in each Pod by the EndpointSlice controller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty for the one port a Service may leave unnamed.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub target: TargetPort,
    /// Kept only while the Service's type has NodePorts.
    pub node_port: Option<u16>,
}

impl ServicePort {
    /// An unnamed TCP port to a numbered target port.
    pub fn tcp(port: u16, target: u16) -> Self {
        Self { name: String::new(), port, protocol: Protocol::Tcp, target: TargetPort::Number(target), node_port: None }
    }

    /// An unnamed UDP port to a numbered target port.
    pub fn udp(port: u16, target: u16) -> Self {
        Self { protocol: Protocol::Udp, ..Self::tcp(port, target) }
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Targets the container port of this name in each Pod.
    pub fn target_name(mut self, name: &str) -> Self {
        self.target = TargetPort::Name(name.to_owned());
        self
    }

    pub fn node_port(mut self, node_port: u16) -> Self {
        self.node_port = Some(node_port);
        self
    }
}

/// A Service in [`NAMESPACE`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// With a selector (`app: <name>`) the EndpointSlice controller keeps
    /// its slices; without one, whoever made the Service writes them.
    pub has_selector: bool,
    pub type_: ServiceType,
    /// `None`: headless (`clusterIP: None`).
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    pub labels: BTreeMap<String, String>,
    /// `sessionAffinity: ClientIP` with this timeout in seconds.
    pub client_ip_affinity: Option<u32>,
    pub external_traffic_policy_local: bool,
    pub internal_traffic_policy_local: bool,
    pub traffic_distribution: Option<String>,
    /// `spec.externalIPs`: addresses the network routes to a node, where a
    /// proxy serves them like the cluster IP.
    pub external_ips: Vec<Ipv4Addr>,
    pub publish_not_ready_addresses: bool,
    /// Kept only for a LoadBalancer Service with a Local policy.
    pub health_check_node_port: Option<u16>,
}

/// The API server's default ClientIP affinity timeout.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

impl Service {
    /// A ClusterIP Service without ports yet.
    pub fn cluster_ip(name: &str, ip: Ipv4Addr) -> Self {
        Self {
            name: name.to_owned(),
            has_selector: true,
            type_: ServiceType::ClusterIP,
            cluster_ip: Some(ip),
            ports: Vec::new(),
            labels: BTreeMap::new(),
            client_ip_affinity: None,
            external_traffic_policy_local: false,
            internal_traffic_policy_local: false,
            traffic_distribution: None,
            external_ips: Vec::new(),
            publish_not_ready_addresses: false,
            health_check_node_port: None,
        }
    }

    /// A headless Service (`clusterIP: None`): DNS names for its Pods, no
    /// virtual IP.
    pub fn headless(name: &str) -> Self {
        Self { cluster_ip: None, ..Self::cluster_ip(name, Ipv4Addr::UNSPECIFIED) }
    }

    /// No selector: the EndpointSlice controller leaves its slices alone.
    pub fn without_selector(mut self) -> Self {
        self.has_selector = false;
        self
    }

    pub fn port(mut self, port: ServicePort) -> Self {
        self.ports.push(port);
        self
    }

    pub fn with_type(mut self, type_: ServiceType) -> Self {
        self.type_ = type_;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// `sessionAffinity: ClientIP` (`None` turns it off), with the default
    /// timeout.
    pub fn session_affinity(mut self, client_ip: bool) -> Self {
        self.client_ip_affinity = client_ip.then_some(DEFAULT_AFFINITY_TIMEOUT_S);
        self
    }

    /// `sessionAffinity: ClientIP` with this timeout.
    pub fn session_affinity_timeout(mut self, seconds: u32) -> Self {
        self.client_ip_affinity = Some(seconds);
        self
    }

    /// The EndpointSlice controller marks every endpoint ready.
    pub fn publish_not_ready_addresses(mut self) -> Self {
        self.publish_not_ready_addresses = true;
        self
    }

    pub fn external_traffic_policy_local(mut self) -> Self {
        self.external_traffic_policy_local = true;
        self
    }

    pub fn internal_traffic_policy_local(mut self) -> Self {
        self.internal_traffic_policy_local = true;
        self
    }

    pub fn health_check_node_port(mut self, port: u16) -> Self {
        self.health_check_node_port = Some(port);
        self
    }

    pub fn traffic_distribution(mut self, value: &str) -> Self {
        self.traffic_distribution = Some(value.to_owned());
        self
    }

    pub fn external_ip(mut self, ip: Ipv4Addr) -> Self {
        self.external_ips.push(ip);
        self
    }

    /// The labels its Pods carry.
    pub fn selector(&self) -> Value {
        json!({"app": self.name})
    }

    fn has_node_ports(&self) -> bool {
        matches!(self.type_, ServiceType::NodePort | ServiceType::LoadBalancer)
    }

    /// The Service as the API server stores and serves it.
    pub fn to_json(&self) -> Value {
        let mut spec = Map::new();
        let type_name = match &self.type_ {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName(_) => "ExternalName",
        };
        spec.insert("type".into(), type_name.into());
        if self.has_selector {
            spec.insert("selector".into(), self.selector());
        }
        spec.insert("ports".into(), self.ports.iter().map(|p| self.port_json(p)).collect());
        if let ServiceType::ExternalName(host) = &self.type_ {
            // The API server clears the cluster IP of an ExternalName Service.
            spec.insert("externalName".into(), host.clone().into());
        } else {
            let ip = self.cluster_ip.map_or_else(|| "None".to_owned(), |ip| ip.to_string());
            spec.insert("clusterIP".into(), ip.clone().into());
            spec.insert("clusterIPs".into(), json!([ip]));
            spec.insert("ipFamilies".into(), json!(["IPv4"]));
            spec.insert("ipFamilyPolicy".into(), "SingleStack".into());
            spec.insert(
                "internalTrafficPolicy".into(),
                if self.internal_traffic_policy_local { "Local" } else { "Cluster" }.into(),
            );
        }
        if !self.external_ips.is_empty() {
            let ips: Vec<String> = self.external_ips.iter().map(Ipv4Addr::to_string).collect();
            spec.insert("externalIPs".into(), json!(ips));
        }
        if self.has_node_ports() {
            spec.insert(
                "externalTrafficPolicy".into(),
                if self.external_traffic_policy_local { "Local" } else { "Cluster" }.into(),
            );
        }
        if let (ServiceType::LoadBalancer, true, Some(port)) =
            (&self.type_, self.external_traffic_policy_local, self.health_check_node_port)
        {
            spec.insert("healthCheckNodePort".into(), port.into());
        }
        match self.client_ip_affinity {
            Some(timeout) => {
                spec.insert("sessionAffinity".into(), "ClientIP".into());
                spec.insert("sessionAffinityConfig".into(), json!({"clientIP": {"timeoutSeconds": timeout}}));
            }
            None => {
                spec.insert("sessionAffinity".into(), "None".into());
            }
        }
        if let Some(distribution) = &self.traffic_distribution {
            spec.insert("trafficDistribution".into(), distribution.clone().into());
        }
        if self.publish_not_ready_addresses {
            spec.insert("publishNotReadyAddresses".into(), true.into());
        }
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name, "namespace": NAMESPACE, "labels": self.labels},
            "spec": spec,
            "status": {"loadBalancer": {}},
        })
    }

    fn port_json(&self, port: &ServicePort) -> Value {
        let target = match &port.target {
            TargetPort::Number(n) => json!(n),
            TargetPort::Name(name) => json!(name),
        };
        let mut out = json!({"port": port.port, "protocol": port.protocol.as_str(), "targetPort": target});
        if !port.name.is_empty() {
            out["name"] = port.name.clone().into();
        }
        if let (true, Some(node_port)) = (self.has_node_ports(), port.node_port) {
            out["nodePort"] = node_port.into();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Service {
        Service::cluster_ip("web", Ipv4Addr::new(10, 96, 1, 1)).port(ServicePort::tcp(80, 8080).node_port(30080))
    }

    #[test]
    fn node_ports_only_while_the_type_has_them() {
        assert!(web().to_json()["spec"]["ports"][0].get("nodePort").is_none());
        let node_port = web().with_type(ServiceType::NodePort).to_json();
        assert_eq!(node_port["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(node_port["spec"]["externalTrafficPolicy"], "Cluster");
    }

    #[test]
    fn external_name_has_no_cluster_ip() {
        let svc = web().with_type(ServiceType::ExternalName("example.com".into())).to_json();
        assert!(svc["spec"].get("clusterIP").is_none());
        assert_eq!(svc["spec"]["externalName"], "example.com");
    }

    #[test]
    fn affinity_gets_the_default_timeout_and_loses_it_when_switched_off() {
        let on = web().session_affinity(true).to_json();
        assert_eq!(on["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"], 10_800);
        let off = web().session_affinity(true).session_affinity(false).to_json();
        assert_eq!(off["spec"]["sessionAffinity"], "None");
        assert!(off["spec"].get("sessionAffinityConfig").is_none());
    }

    #[test]
    fn health_check_port_only_for_local_load_balancers() {
        let lb = web().with_type(ServiceType::LoadBalancer).health_check_node_port(32000);
        assert!(lb.to_json()["spec"].get("healthCheckNodePort").is_none(), "Cluster policy: none");
        let local = lb.external_traffic_policy_local().to_json();
        assert_eq!(local["spec"]["healthCheckNodePort"], 32000);
        assert_eq!(local["spec"]["ports"][0]["nodePort"], 30080);
    }

    #[test]
    fn external_ips_are_listed() {
        let svc = web().external_ip(Ipv4Addr::new(203, 0, 113, 250)).to_json();
        assert_eq!(svc["spec"]["externalIPs"], json!(["203.0.113.250"]));
        assert!(web().to_json()["spec"].get("externalIPs").is_none());
    }

    #[test]
    fn headless_is_cluster_ip_none() {
        assert_eq!(Service::headless("db").to_json()["spec"]["clusterIP"], "None");
    }
}
