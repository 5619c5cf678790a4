//! Endpoint churn under load, end to end: a Service scaled between 1 and
//! 10 endpoints every second for a minute, endpoints leaving the way
//! terminating pods do, while a client opens over 100 new connections a
//! second to its ClusterIP. Not one connection may fail. Run once through
//! the Services file and once through the Kubernetes API's watch. Needs
//! root; run one test at a time.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{self, Agent},
    apiserver::ApiServer,
    load::ConnectionLoad,
    scenario::{self, HTTP_PORT, READY, TERMINATING, WEB, backend_count},
    servers::{self, Server},
    topology::{self, Topology},
};
use serde_json::{Value, json};

const BACKENDS: usize = 10;
const STEPS: u32 = 60;
const STEP: Duration = Duration::from_secs(1);
/// A removed endpoint's server stops this many steps after its removal,
/// as a terminating pod's grace period ends.
const STOP_AFTER_REMOVAL: u32 = 2;
/// New connections a second (at least 100 must be reached).
const RATE: u32 = 110;
const LOAD_WORKERS: u32 = 8;
const AGENT_WAIT: Duration = Duration::from_secs(30);

/// A fixed xorshift sequence: "random" scaling that is the same every run.
struct Dice(u32);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0 as usize % sides
    }

    fn pick(&mut self, from: &BTreeSet<usize>) -> usize {
        *from.iter().nth(self.roll(from.len())).expect("non-empty")
    }
}

/// One endpoint condition set per endpoint in the slice, by backend index.
type Endpoints = Vec<(usize, [bool; 3])>;

/// The endpoints of the Service and the servers behind them, moved one
/// step at a time: a leaving endpoint is terminating for one step, then
/// leaves the slice, then its server stops `STOP_AFTER_REMOVAL` steps
/// later; a joining endpoint's server listens before it joins the slice.
struct Churn<'a> {
    topology: &'a Topology,
    dice: Dice,
    servers: BTreeMap<usize, Server>,
    ready: BTreeSet<usize>,
    terminating: BTreeSet<usize>,
    /// Out of the slice, server still running: (backend, step it stops at).
    draining: Vec<(usize, u32)>,
    /// Ready endpoints per step, for the failure message.
    log: Vec<String>,
}

impl<'a> Churn<'a> {
    fn new(topology: &'a Topology) -> Self {
        Churn {
            topology,
            dice: Dice(0x2545_f491),
            servers: BTreeMap::new(),
            ready: BTreeSet::new(),
            terminating: BTreeSet::new(),
            draining: Vec::new(),
            log: Vec::new(),
        }
    }

    /// What the slice lists now.
    fn endpoints(&self) -> Endpoints {
        let ready = self.ready.iter().map(|&i| (i, READY));
        ready.chain(self.terminating.iter().map(|&i| (i, TERMINATING))).collect()
    }

    /// Moves to step `step`: a new scale, different from the current one.
    fn step(&mut self, step: u32) -> anyhow::Result<()> {
        let (stopping, draining) = std::mem::take(&mut self.draining).into_iter().partition(|&(_, at)| at <= step);
        self.draining = draining;
        for (i, _) in stopping {
            self.servers.remove(&i);
        }
        for i in std::mem::take(&mut self.terminating) {
            self.draining.push((i, step + STOP_AFTER_REMOVAL));
        }
        let target = loop {
            let target = 1 + self.dice.roll(BACKENDS);
            if target != self.ready.len() {
                break target;
            }
        };
        while self.ready.len() > target {
            let leaving = self.dice.pick(&self.ready);
            self.ready.remove(&leaving);
            self.terminating.insert(leaving);
        }
        while self.ready.len() < target {
            let idle: BTreeSet<usize> = (1..=BACKENDS).filter(|i| !self.servers.contains_key(i)).collect();
            if idle.is_empty() {
                break;
            }
            let joining = self.dice.pick(&idle);
            let addr = SocketAddr::from((topology::backend_ip(joining), HTTP_PORT));
            let server = Server::http(&self.topology.backends[joining - 1], addr, &scenario::backend_name(joining))?;
            self.servers.insert(joining, server);
            self.ready.insert(joining);
        }
        self.log.push(format!("{step}s: ready {:?} terminating {:?}", self.ready, self.terminating));
        Ok(())
    }
}

/// Runs the churn for `STEPS` steps under load, publishing each step's
/// endpoints with `publish`, and asserts that no connection failed.
fn churn_under_load(topology: &Topology, agent: &mut Agent, churn: &mut Churn, publish: &mut dyn FnMut(&Endpoints)) {
    let load = ConnectionLoad::start(&topology.client, SocketAddr::V4(WEB), RATE, LOAD_WORKERS);
    let start = Instant::now();
    for step in 1..STEPS {
        if let Some(wait) = (start + STEP * step).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        churn.step(step).expect("churn step");
        publish(&churn.endpoints());
    }
    if let Some(wait) = (start + STEP * STEPS).checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let tally = load.finish().expect("load");
    let rate = tally.connections as f64 / tally.elapsed.as_secs_f64();
    eprintln!(
        "{} connections in {:.1} s ({rate:.0}/s), {} failed; answered by {:?}",
        tally.connections,
        tally.elapsed.as_secs_f64(),
        tally.failures.len(),
        tally.answered_by
    );
    assert!(agent.maps().is_ok(), "agent's maps readable at the end");
    assert!(
        tally.failures.is_empty(),
        "{} of {} connections failed; failures (s since start, error): {:#?}\nscale per step:\n{}",
        tally.failures.len(),
        tally.connections,
        tally.failures,
        churn.log.join("\n")
    );
    assert!(rate >= 100.0, "only {rate:.0} new connections a second");
    let ever_ready: BTreeSet<String> = (1..=BACKENDS).map(scenario::backend_name).collect();
    let answered: BTreeSet<String> = tally.answered_by.keys().cloned().collect();
    assert_eq!(answered, ever_ready, "every backend answered while it was in the Service");
}

/// Removes the directory holding the Services file.
struct SourceDir(PathBuf);

impl Drop for SourceDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Churn published by rewriting the Services file (atomically) each step.
#[test]
fn endpoint_churn_through_the_services_file_fails_no_connection() {
    let topology = Topology::create(BACKENDS).expect("topology");
    let mut churn = Churn::new(&topology);
    churn.step(0).expect("first endpoints");
    let dir = SourceDir(std::env::temp_dir().join(&topology.node));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("services.yaml");
    agent::write_atomically(&file, &scenario::web_services(&churn.endpoints())).unwrap();
    let mut agent = Agent::start(&topology.node, &file, &[]).expect("agent");
    agent.wait_ready(AGENT_WAIT).expect("agent ready");
    let first = churn.ready.len() as u16;
    agent.wait_until(AGENT_WAIT, |m| backend_count(m, WEB) == Some(first)).expect("first endpoints programmed");

    let mut publish = |endpoints: &Endpoints| {
        agent::write_atomically(&file, &scenario::web_services(endpoints)).expect("rewrite the Services file");
    };
    churn_under_load(&topology, &mut agent, &mut churn, &mut publish);
}

fn web_service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"type": "ClusterIP", "clusterIP": WEB.ip().to_string(), "clusterIPs": [WEB.ip().to_string()],
                 "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": WEB.port(), "protocol": "TCP", "targetPort": "http"}]}
    })
}

fn web_slice(endpoints: &Endpoints) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|&(i, [ready, serving, terminating])| {
            json!({"addresses": [topology::backend_ip(i).to_string()],
                   "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                   "nodeName": "node-a"})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": HTTP_PORT, "protocol": "TCP"}]
    })
}

/// Churn published through the stand-in API server: the agent follows
/// the EndpointSlice through its watch.
#[test]
fn endpoint_churn_through_the_kubernetes_api_fails_no_connection() {
    let topology = Topology::create(BACKENDS).expect("topology");
    let mut churn = Churn::new(&topology);
    churn.step(0).expect("first endpoints");
    let api = servers::in_netns(&topology.node, || Ok(ApiServer::start())).expect("API server");
    let kubeconfig = SourceDir(std::env::temp_dir().join(format!("{}.kube", topology.node)));
    std::fs::create_dir_all(&kubeconfig.0).unwrap();
    let kubeconfig_file = kubeconfig.0.join("config");
    api.write_kubeconfig(&kubeconfig_file).expect("kubeconfig");
    api.apply(web_service());
    api.apply(web_slice(&churn.endpoints()));
    let args =
        ["--source", "kubernetes", "--kubeconfig", kubeconfig_file.to_str().unwrap(), "--hostname-override", "node-a"];
    let mut agent = Agent::start_with(&topology.node, &args.map(str::to_owned)).expect("agent");
    agent.wait_ready(AGENT_WAIT).expect("agent ready");
    let first = churn.ready.len() as u16;
    agent.wait_until(AGENT_WAIT, |m| backend_count(m, WEB) == Some(first)).expect("first endpoints programmed");

    let mut publish = |endpoints: &Endpoints| {
        api.apply(web_slice(endpoints));
    };
    churn_under_load(&topology, &mut agent, &mut churn, &mut publish);
}
