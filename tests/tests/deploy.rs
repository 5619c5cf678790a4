//! The deployment in deploy/, checked offline: every kustomization renders
//! (`kubectl kustomize`), every object it renders is valid for the
//! Kubernetes API (`kubernetes-validate --strict`: a missing required field
//! or an unknown one fails), and what no schema sees holds: each flag value
//! the DaemonSet takes from its ConfigMap exists, the ports the agent binds
//! are the ones its probes and container ports name, and the agent runs
//! with the capabilities the DaemonSet gives it, and needs each of them.
//!
//! `kubectl apply --dry-run=client` would need an API server even in client
//! mode; kubernetes-validate ships the schemas. scripts/bootstrap.sh
//! installs it in ~/.local/lb-venv.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use lb_tests::{agent::binary, topology::Topology};
use serde_json::Value;

/// The oldest API the agent is built against (k8s-openapi's `v1_33`) and
/// the newest the validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

/// The base and both overlays, relative to the workspace root.
const BASE: &str = "deploy";
const BESIDE: &str = "deploy/overlays/beside-kube-proxy";
const REPLACE: &str = "deploy/overlays/replace-kube-proxy";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn venv_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    Path::new(&home).join(".local/lb-venv/bin").join(name)
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("starting {command:?}: {e} (run scripts/bootstrap.sh)"))
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `kubectl kustomize DIR`: the rendered YAML.
fn render(dir: &str) -> String {
    let output = run(Command::new("kubectl").arg("kustomize").arg(workspace_root().join(dir)));
    assert!(output.status.success(), "kubectl kustomize {dir} failed: {}", describe(&output));
    String::from_utf8(output.stdout).expect("kustomize prints UTF-8")
}

/// Runs `kubernetes-validate --strict` on `yaml` for every version in
/// KUBERNETES_VERSIONS.
fn validate(name: &str, yaml: &str) -> Output {
    let file = std::env::temp_dir().join(format!("lb-deploy-{}-{name}.yaml", std::process::id()));
    std::fs::write(&file, yaml).expect("writing the rendered manifests");
    let mut command = Command::new(venv_bin("kubernetes-validate"));
    command.arg("--strict").arg("--quiet");
    for version in KUBERNETES_VERSIONS {
        command.args(["--kubernetes-version", version]);
    }
    let output = run(command.arg(&file));
    let _ = std::fs::remove_file(&file);
    output
}

/// The rendered objects as JSON (through the validator's own YAML parser,
/// which is in the same virtual environment).
fn objects(yaml: &str) -> Vec<Value> {
    let script = "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)";
    let mut child = Command::new(venv_bin("python"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the venv's python (run scripts/bootstrap.sh)");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), yaml.as_bytes()).expect("writing YAML");
    let output = child.wait_with_output().expect("python");
    assert!(output.status.success(), "YAML to JSON: {}", describe(&output));
    serde_json::from_slice(&output.stdout).expect("JSON")
}

fn find<'a>(objects: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(name_prefix)))
        .unwrap_or_else(|| panic!("no {kind} {name_prefix}*"))
}

/// Each rendered ConfigMap's data, by its (generated) name.
fn config_maps(objects: &[Value]) -> BTreeMap<String, BTreeMap<String, String>> {
    objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .map(|o| {
            let data = o["data"].as_object().map_or_else(BTreeMap::new, |d| {
                d.iter().map(|(k, v)| (k.clone(), v.as_str().expect("string data").to_owned())).collect()
            });
            (o["metadata"]["name"].as_str().expect("name").to_owned(), data)
        })
        .collect()
}

/// The agent container, and the environment it starts with: its `env`
/// names and every key of the ConfigMaps in its `envFrom`, with values
/// where they are known.
fn agent(objects: &[Value]) -> (&Value, BTreeMap<String, Option<String>>) {
    let daemonset = find(objects, "DaemonSet", "lb-agent");
    let container = daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "lb-agent"))
        .expect("the lb-agent container");
    let maps = config_maps(objects);
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let name = source["configMapRef"]["name"].as_str().expect("envFrom names a ConfigMap");
        let data = maps.get(name).unwrap_or_else(|| panic!("envFrom: ConfigMap {name} is not rendered"));
        env.extend(data.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name").to_owned();
        let key_ref = &var["valueFrom"]["configMapKeyRef"];
        let value = if let Some(map) = key_ref["name"].as_str() {
            let key = key_ref["key"].as_str().expect("configMapKeyRef key");
            let value = maps.get(map).and_then(|d| d.get(key));
            assert!(value.is_some(), "env {name}: ConfigMap {map} has no key {key}");
            value.cloned()
        } else {
            var["value"].as_str().map(str::to_owned)
        };
        env.insert(name, value);
    }
    (container, env)
}

/// The container's args with every `$(VAR)` replaced from `env`; fails on
/// a reference to a variable the container does not have (the kubelet
/// would pass the literal `$(VAR)` on).
fn expanded_args(container: &Value, env: &BTreeMap<String, Option<String>>) -> Vec<String> {
    let args = container["args"].as_array().expect("args");
    args.iter()
        .map(|arg| {
            let mut arg = arg.as_str().expect("string arg").to_owned();
            while let Some(start) = arg.find("$(") {
                let end = start + arg[start..].find(')').expect("closed $(");
                let name = &arg[start + 2..end];
                let value = env.get(name).unwrap_or_else(|| panic!("arg {arg:?} names ${name}, which is not set"));
                let value = value.clone().unwrap_or_else(|| format!("<{name}>"));
                arg.replace_range(start..=end, &value);
            }
            arg
        })
        .collect()
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(&format!("--{name}=")))
}

fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// Renders, validates and checks one kustomization; returns the agent's
/// expanded args.
fn check(dir: &str) -> Vec<String> {
    let yaml = render(dir);
    let output = validate(&dir.replace('/', "-"), &yaml);
    assert!(output.status.success(), "kubernetes-validate --strict rejects {dir}: {}", describe(&output));

    let objects = objects(&yaml);
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    let expected = ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"];
    assert!(expected.iter().all(|k| kinds.contains(k)), "{dir} renders {kinds:?}");

    let (container, env) = agent(&objects);
    let args = expanded_args(container, &env);
    // The ports the agent binds are the ones the node opens and the probes use.
    for (flag_name, port_name) in [("metrics-bind-address", "metrics"), ("healthz-bind-address", "healthz")] {
        let address = flag(&args, flag_name).unwrap_or_else(|| panic!("{dir}: no --{flag_name}"));
        let port: u64 = address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("host:port");
        assert_eq!(port, container_port(container, port_name), "{dir}: --{flag_name}={address}");
    }
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "healthz", "{dir}: {probe}");
    }
    // The binding grants the role to the account the pods run as.
    let daemonset = find(&objects, "DaemonSet", "lb-agent");
    let account = &daemonset["spec"]["template"]["spec"]["serviceAccountName"];
    let binding = find(&objects, "ClusterRoleBinding", "lb-agent");
    assert_eq!(binding["subjects"][0]["name"], *account);
    assert_eq!(binding["subjects"][0]["namespace"], daemonset["metadata"]["namespace"]);
    args
}

#[test]
fn base_renders_and_validates() {
    let args = check(BASE);
    assert_eq!(flag(&args, "proxy-name"), None, "the base serves unlabelled Services, as kube-proxy");
}

#[test]
fn beside_kube_proxy_serves_only_its_label_on_other_ports() {
    let args = check(BESIDE);
    assert_eq!(flag(&args, "proxy-name"), Some("lb"));
    for (name, kube_proxy) in [("metrics-bind-address", "10249"), ("healthz-bind-address", "10256")] {
        let address = flag(&args, name).expect("bind address");
        assert!(!address.ends_with(&format!(":{kube_proxy}")), "{name}={address} collides with kube-proxy");
    }
}

#[test]
fn replace_kube_proxy_reaches_the_api_server_directly() {
    let args = check(REPLACE);
    assert_eq!(flag(&args, "proxy-name"), None);
    let objects = objects(&render(REPLACE));
    let (_, env) = agent(&objects);
    for name in ["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"] {
        assert!(env.get(name).is_some_and(Option::is_some), "{name} is not set from the overlay's ConfigMap");
    }
}

/// The validator is not a rubber stamp: an unknown field fails.
#[test]
fn validation_rejects_an_unknown_field() {
    let yaml = render(BASE);
    let broken = yaml.replacen("hostNetwork: true", "hostNetwork: true\n      hostNetworking: true", 1);
    assert_ne!(broken, yaml);
    let output = validate("broken", &broken);
    assert!(!output.status.success(), "an unknown field passed: {}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("hostNetworking"), "{}", describe(&output));
}

/// The capabilities the rendered DaemonSet gives the agent container, as
/// setpriv spells them (`+bpf`), after checking that it drops all others.
fn daemonset_capabilities() -> Vec<String> {
    let objects = objects(&render(BASE));
    let (container, _) = agent(&objects);
    let capabilities = &container["securityContext"]["capabilities"];
    assert_eq!(capabilities["drop"], serde_json::json!(["ALL"]));
    assert_ne!(container["securityContext"]["privileged"], true);
    let add = capabilities["add"].as_array().expect("capabilities.add");
    add.iter().map(|c| format!("+{}", c.as_str().expect("capability name").to_lowercase())).collect()
}

/// Runs lb-agent in the node namespace of `topology` with only
/// `capabilities` (a root process whose bounding set is just these, as in
/// the container), the demo Services, until it has programmed the datapath.
/// Err carries its output when it exits first.
fn agent_with_capabilities(topology: &Topology, capabilities: &[String]) -> Result<(), String> {
    let name = format!("{}-caps", topology.node);
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{name}"));
    let ready = std::env::temp_dir().join(format!("{name}.ready"));
    let _ = std::fs::remove_file(&ready);
    let services = workspace_root().join("deploy/examples/demo-services.yaml");
    // nsenter (with every capability) enters the namespace; setpriv then
    // leaves only the container's set for the agent it starts.
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", topology.node))
        .args(["setpriv", "--inh-caps=-all", &format!("--bounding-set=-all,{}", capabilities.join(",")), "--"])
        .arg(binary("lb-agent").expect("lb-agent is built"))
        .arg(format!("--source=file:{}", services.display()))
        .arg(format!("--pin-dir={}", pin_dir.display()))
        .arg(format!("--interfaces={}", topology.node_interfaces.join(",")))
        .arg(format!("--ready-file={}", ready.display()))
        .args(lb_tests::agent::NO_HOST_CGROUP)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting nsenter");
    let deadline = Instant::now() + Duration::from_secs(30);
    let programmed = loop {
        if ready.exists() {
            break true;
        }
        if child.try_wait().expect("waiting").is_some() || Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SIGTERM: the agent removes its ready file and leaves its pins.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let output = child.wait_with_output().expect("lb-agent's output");
    let _ = std::fs::remove_dir_all(&pin_dir);
    let _ = std::fs::remove_file(&ready);
    if programmed { Ok(()) } else { Err(describe(&output)) }
}

/// The DaemonSet's capability set is enough for the agent to load, attach
/// and program the datapath, and every capability in it is needed.
#[test]
fn agent_runs_with_exactly_the_daemonsets_capabilities() {
    let capabilities = daemonset_capabilities();
    let topology = Topology::create(1).expect("namespaces");
    if let Err(output) = agent_with_capabilities(&topology, &capabilities) {
        panic!("lb-agent with {capabilities:?} did not program the datapath: {output}");
    }
    for (i, dropped) in capabilities.iter().enumerate() {
        let mut fewer = capabilities.clone();
        fewer.remove(i);
        assert!(
            agent_with_capabilities(&topology, &fewer).is_err(),
            "lb-agent programs the datapath without {dropped}: drop it from the DaemonSet"
        );
    }
}
