//! A dual-stack Service through the real agent: each half lands in the
//! pinned maps of its family, and `lbctl` shows the IPv6 half with
//! bracketed addresses. No IPv6 traffic: this checks what the agent
//! programs, not the IPv6 datapath. Needs root; run one test at a time.

use std::{path::PathBuf, time::Duration};

use lb_tests::{
    agent::{self, Agent},
    observe::lbctl,
    topology::{self, Topology},
};
use serde_json::{Value, json};

const AGENT_WAIT: Duration = Duration::from_secs(30);
const CLUSTER_V4: &str = "10.96.0.10";
const CLUSTER_V6: &str = "fd00:10:96::a";
const BACKEND_V6: &str = "fd00:10:244::5";

/// Removes the directory holding the Services file.
struct SourceDir(PathBuf);

impl Drop for SourceDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `web`, dual-stack, with one endpoint in each family's slice.
fn dual_stack_objects() -> Value {
    let slice = |name: &str, address_type: &str, address: String| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": address_type,
            "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        })
    };
    json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "demo"},
                "spec": {"type": "ClusterIP", "clusterIP": CLUSTER_V4, "clusterIPs": [CLUSTER_V4, CLUSTER_V6],
                         "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
            },
            slice("web-v4", "IPv4", topology::backend_ip(1).to_string()),
            slice("web-v6", "IPv6", BACKEND_V6.to_owned()),
        ]
    })
}

fn json_of(agent: &Agent, command: &str) -> Value {
    let text = lbctl(&agent.pin_dir, &["-o", "json", command]).expect("lbctl");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("lbctl {command} printed no JSON ({e}): {text}"))
}

#[test]
fn a_dual_stack_service_is_programmed_into_the_maps_of_both_families() {
    let topology = Topology::create(1).expect("topology");
    let dir = SourceDir(std::env::temp_dir().join(format!("{}-dual-stack", topology.node)));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("services.json");
    agent::write_atomically(&file, &dual_stack_objects().to_string()).unwrap();
    let mut agent = Agent::start(&topology.node, &file, &[]).expect("agent");
    agent.wait_ready(AGENT_WAIT).expect("agent ready");
    let maps = agent
        .wait_until(AGENT_WAIT, |m| m.services_v6.values().any(|v| v.count == 1) && !m.services.is_empty())
        .expect("both families programmed");
    assert_eq!((maps.backends.len(), maps.backends_v6.len()), (1, 1), "one backend per family, from its own slice");

    let services = json_of(&agent, "services");
    let v6 = services
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["address"] == CLUSTER_V6 && f["port"] == 80)
        .unwrap_or_else(|| panic!("no IPv6 frontend in {services}"));
    assert_eq!(v6["backends"][0]["address"], BACKEND_V6, "{v6}");
    let v4 = services.as_array().unwrap().iter().find(|f| f["address"] == CLUSTER_V4).expect("the IPv4 frontend");
    assert_eq!(v4["backends"][0]["address"], topology::backend_ip(1).to_string(), "{v4}");
    assert_ne!(v4["id"], v6["id"], "each frontend its own id");

    let backends = json_of(&agent, "backends");
    let addresses: Vec<&str> = backends.as_array().unwrap().iter().map(|b| b["address"].as_str().unwrap()).collect();
    assert!(addresses.contains(&BACKEND_V6), "{backends}");

    let table = lbctl(&agent.pin_dir, &["services"]).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("[{CLUSTER_V6}]:80/TCP")))
        .unwrap_or_else(|| panic!("no IPv6 row:\n{table}"));
    assert!(row.contains(&format!("[{BACKEND_V6}]:8080")), "{row}");
}
