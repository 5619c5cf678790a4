//! The cluster's control plane when its agents watch the Kubernetes API:
//! one stand-in API server on the LAN that every node's agent lists and
//! watches, the Node objects each kubelet would register (name, zone,
//! address), and Services written together with the EndpointSlices the
//! EndpointSlice controller would keep for them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};

use super::{Cluster, POD_CIDRS, node_ip, node_name, pod_ip, pod_name};
use crate::{
    agent::Agent,
    apiserver::{ApiServer, ApiServerOptions},
    k8s::{NAMESPACE, Pod, Service, endpoint_slices},
    servers,
    topology::run_in,
};

/// Where the API server listens: the LAN bridge, which every node reaches.
pub const API_SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);

#[derive(Debug)]
pub(super) struct ApiState {
    server: ApiServer,
    kubeconfig: PathBuf,
    /// The slices written for each Service, so those the controller would
    /// delete are deleted.
    slices: BTreeMap<String, BTreeSet<String>>,
}

impl Drop for ApiState {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// Node i, in `zone`, as its kubelet registers it.
fn node_object(node: usize, zone: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node_name(node), "labels": {
            "kubernetes.io/hostname": node_name(node),
            "topology.kubernetes.io/zone": zone,
        }},
        "spec": {"podCIDR": format!("10.244.{node}.0/24"), "podCIDRs": [format!("10.244.{node}.0/24")]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node_ip(node).to_string()},
                          {"type": "Hostname", "address": node_name(node)}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

impl Cluster {
    /// Starts the API server (with every node's Node object) and one agent
    /// per node watching it (`--source kubernetes`), attached to the node's
    /// LAN interface and pod veths, and waits until all are ready.
    pub fn start_agents_on_api(&mut self) -> anyhow::Result<()> {
        run_in(&self.lan, &["ip", "addr", "add", &format!("{API_SERVER_IP}/24"), "dev", "br0"])?;
        let options = ApiServerOptions { listen: SocketAddr::from((API_SERVER_IP, 0)), ..Default::default() };
        let server = servers::in_netns(&self.lan, move || Ok(ApiServer::start_with(options)))?;
        let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", self.lan));
        server.write_kubeconfig(&kubeconfig)?;
        for (i, node) in self.nodes.iter().enumerate() {
            server.apply(node_object(i + 1, &node.zone));
        }
        let kubeconfig_arg = kubeconfig.to_str().expect("temp paths are UTF-8").to_owned();
        self.api = Some(ApiState { server, kubeconfig, slices: BTreeMap::new() });
        for (i, node) in self.nodes.iter().enumerate() {
            let name = node_name(i + 1);
            let args = [
                "--source",
                "kubernetes",
                "--kubeconfig",
                &kubeconfig_arg,
                "--hostname-override",
                &name,
                "--interfaces",
                "eth0,pod*",
                "--cluster-cidr",
                POD_CIDRS,
            ];
            let agent = Agent::start_with(&node.netns, &args.map(str::to_owned))?;
            self.agents.push(agent);
        }
        for agent in &mut self.agents {
            agent.wait_ready(Duration::from_secs(20))?;
        }
        Ok(())
    }

    /// The API server; panics before [`Cluster::start_agents_on_api`].
    pub fn api(&self) -> &ApiServer {
        &self.api_state().server
    }

    fn api_state(&self) -> &ApiState {
        self.api.as_ref().expect("start_agents_on_api first")
    }

    /// Pod `pod` of node `node` as the EndpointSlice controller sees it:
    /// ready, on its node, in its node's zone.
    pub fn pod(&self, node: usize, pod: usize) -> Pod {
        Pod::new(&pod_name(node, pod), pod_ip(node, pod), &node_name(node), Some(&self.nodes[node - 1].zone))
    }

    /// Creates or updates `service`, then writes the EndpointSlices the
    /// controller keeps for it with `pods` as the Pods its selector
    /// matches, and deletes those of its slices the controller would
    /// delete, in that order (a controller reacts to the Service).
    pub fn apply(&mut self, service: &Service, pods: &[Pod]) {
        let state = self.api.as_mut().expect("start_agents_on_api first");
        let stored = state.server.apply(service.to_json());
        let uid = stored["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let trigger_time = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        let desired = endpoint_slices(service, &uid, pods, &trigger_time);
        let names: BTreeSet<String> =
            desired.iter().map(|s| s["metadata"]["name"].as_str().expect("slices are named").to_owned()).collect();
        for slice in desired {
            state.server.apply(slice);
        }
        let previous = state.slices.insert(service.name.clone(), names.clone()).unwrap_or_default();
        for stale in previous.difference(&names) {
            state.server.delete("EndpointSlice", NAMESPACE, stale);
        }
    }

    /// The EndpointSlices the controller keeps for a Service, as stored.
    pub fn endpoint_slices(&self, service: &str) -> Vec<Value> {
        let state = self.api_state();
        let names = state.slices.get(service).cloned().unwrap_or_default();
        names.iter().filter_map(|name| state.server.get("EndpointSlice", NAMESPACE, name)).collect()
    }

    /// Deletes a Service; its slices go with it, as the garbage collector
    /// removes what the Service owns.
    pub fn delete_service(&mut self, name: &str) {
        let state = self.api.as_mut().expect("start_agents_on_api first");
        state.server.delete("Service", NAMESPACE, name);
        for slice in state.slices.remove(name).unwrap_or_default() {
            state.server.delete("EndpointSlice", NAMESPACE, &slice);
        }
    }
}
