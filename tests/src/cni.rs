//! Running a CNI conflist the way a container runtime does (libcni's
//! semantics): ADD runs the plugins in order, each getting its plugin
//! configuration with the list's `name` and `cniVersion` injected and the
//! previous plugin's result as `prevResult`; CHECK runs them in order and
//! DEL in reverse, each with the final ADD result. The plugins run in the
//! test's "node" namespace (through `nsenter --net`, which changes only
//! the network namespace: bpffs stays the host's, where the agent pins).
//! Namespaces made here are deleted on drop.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    agent,
    topology::{run, run_in},
};

/// Where Debian's containernetworking-plugins installs the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The bundled example conflist (bridge + host-local, then lb-cni).
pub const EXAMPLE_CONFLIST: &str = include_str!("../../deploy/cni/10-pods-lb.conflist");

/// Network namespaces, deleted on drop.
#[derive(Debug, Default)]
pub struct Namespaces(Vec<String>);

impl Namespaces {
    /// Creates `name` with loopback up.
    pub fn add(&mut self, name: &str) -> anyhow::Result<()> {
        run("ip", &["netns", "add", name])?;
        self.0.push(name.to_owned());
        run_in(name, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }
}

impl Namespaces {
    /// Deletes `name` now (a pod gone without a DEL).
    pub fn delete(&mut self, name: &str) -> anyhow::Result<()> {
        run("ip", &["netns", "del", name])?;
        self.0.retain(|ns| ns != name);
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One pod's attachment parameters.
#[derive(Clone, Debug)]
pub struct Pod {
    pub container_id: String,
    /// `ip netns` name; CNI_NETNS is its /run/netns path.
    pub netns: String,
    pub ifname: String,
}

/// A plugin's failure as the runtime sees it.
#[derive(Debug)]
pub struct PluginFailure {
    pub plugin: String,
    /// The decoded error result, if stdout held one.
    pub error: Option<Value>,
    pub stderr: String,
}

impl PluginFailure {
    /// The error result's `code`.
    pub fn code(&self) -> Option<u64> {
        self.error.as_ref()?.get("code")?.as_u64()
    }
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {:?}; stderr: {}", self.plugin, self.error, self.stderr.trim())
    }
}

/// A conflist and where its plugins run.
#[derive(Debug)]
pub struct Runtime {
    pub conflist: Value,
    node_netns: String,
    /// CNI_PATH: the reference plugins and this build's lb-cni.
    cni_path: String,
    /// host-local's allocations, removed on drop.
    data_dir: PathBuf,
}

impl Runtime {
    /// The example conflist adapted to a test node: its own bridge name,
    /// subnet and IPAM directory, and lb-cni pointed at `pin_dir`.
    pub fn example(node_netns: &str, bridge: &str, subnet: &str, pin_dir: &std::path::Path) -> anyhow::Result<Self> {
        let mut conflist: Value = serde_json::from_str(EXAMPLE_CONFLIST).context("parsing the example conflist")?;
        let data_dir = std::env::temp_dir().join(format!("{node_netns}-ipam"));
        let plugins = conflist["plugins"].as_array_mut().context("no plugins")?;
        plugins[0]["bridge"] = json!(bridge);
        plugins[0]["ipam"]["ranges"] = json!([[{ "subnet": subnet }]]);
        plugins[0]["ipam"]["dataDir"] = json!(data_dir);
        plugins[1]["pinDir"] = json!(pin_dir);
        conflist["name"] = json!(format!("{node_netns}-pods"));
        let lb_cni = agent::binary("lb-cni")?;
        let own_dir = lb_cni.parent().context("lb-cni without a directory")?;
        let cni_path = format!("{REFERENCE_PLUGINS}:{}", own_dir.display());
        Ok(Self { conflist, node_netns: node_netns.to_owned(), cni_path, data_dir })
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"].as_array().cloned().unwrap_or_default()
    }

    /// The request configuration for one plugin (spec section 3).
    fn request(&self, plugin: &Value, version: &str, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = json!(version);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// Runs one plugin binary; Ok(stdout) on success.
    pub fn invoke(
        &self,
        plugin: &Value,
        command: &str,
        pod: Option<&Pod>,
        prev: Option<&Value>,
    ) -> Result<String, PluginFailure> {
        let version = self.conflist["cniVersion"].as_str().unwrap_or_default().to_owned();
        self.invoke_as(&version, plugin, command, pod, prev)
    }

    /// `invoke` with another `cniVersion` than the list's (STATUS needs 1.1.0).
    pub fn invoke_as(
        &self,
        version: &str,
        plugin: &Value,
        command: &str,
        pod: Option<&Pod>,
        prev: Option<&Value>,
    ) -> Result<String, PluginFailure> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_owned();
        let fail = |error: Option<Value>, stderr: String| PluginFailure { plugin: kind.clone(), error, stderr };
        let binary = self
            .cni_path
            .split(':')
            .map(|d| PathBuf::from(d).join(&kind))
            .find(|p| p.is_file())
            .ok_or_else(|| fail(None, format!("no plugin {kind} in {}", self.cni_path)))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.node_netns))
            .arg(&binary)
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(pod) = pod {
            cmd.env("CNI_CONTAINERID", &pod.container_id)
                .env("CNI_NETNS", format!("/run/netns/{}", pod.netns))
                .env("CNI_IFNAME", &pod.ifname);
        }
        let request = self.request(plugin, version, prev).to_string();
        let output = (|| {
            let mut child = cmd.spawn()?;
            child.stdin.take().expect("piped").write_all(request.as_bytes())?;
            child.wait_with_output()
        })()
        .map_err(|e| fail(None, format!("running {}: {e}", binary.display())))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(fail(serde_json::from_str(&stdout).ok(), String::from_utf8_lossy(&output.stderr).into_owned()))
        }
    }

    /// ADD through the whole list; the final result.
    pub fn add(&self, pod: &Pod) -> Result<Value, PluginFailure> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let stdout = self.invoke(&plugin, "ADD", Some(pod), prev.as_ref())?;
            let result = serde_json::from_str(&stdout).map_err(|e| PluginFailure {
                plugin: plugin["type"].to_string(),
                error: None,
                stderr: format!("result is not JSON ({e}): {stdout}"),
            })?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK through the whole list with the final ADD result.
    pub fn check(&self, pod: &Pod, result: &Value) -> Result<(), PluginFailure> {
        for plugin in self.plugins() {
            self.invoke(&plugin, "CHECK", Some(pod), Some(result))?;
        }
        Ok(())
    }

    /// DEL through the list in reverse with the final ADD result (None:
    /// the ADD failed, no result was cached).
    pub fn del(&self, pod: &Pod, result: Option<&Value>) -> Result<(), PluginFailure> {
        for plugin in self.plugins().iter().rev() {
            self.invoke(plugin, "DEL", Some(pod), result)?;
        }
        Ok(())
    }

    /// The last plugin of the list (lb-cni) on its own.
    pub fn last_plugin(&self) -> Value {
        self.plugins().last().cloned().unwrap_or(Value::Null)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The pod's IPv4 address from an ADD result.
pub fn pod_ip(result: &Value) -> anyhow::Result<std::net::Ipv4Addr> {
    let cidr = result["ips"][0]["address"].as_str().context("no ips[0].address in the result")?;
    let ip = cidr.split('/').next().unwrap_or_default();
    ip.parse().with_context(|| format!("bad address {cidr}"))
}

/// The pod's gateway from an ADD result: with bridge's `isGateway`, the
/// bridge's own address on the node.
pub fn pod_gateway(result: &Value) -> anyhow::Result<std::net::Ipv4Addr> {
    let gateway = result["ips"][0]["gateway"].as_str().context("no ips[0].gateway in the result")?;
    gateway.parse().with_context(|| format!("bad gateway {gateway}"))
}

/// The host-side veth of the pod from an ADD result (bridge lists the
/// bridge, then the veth, then the pod's interface).
pub fn host_veth(result: &Value, bridge: &str) -> anyhow::Result<String> {
    let interfaces = result["interfaces"].as_array().context("no interfaces in the result")?;
    let host = interfaces
        .iter()
        .filter(|i| i.get("sandbox").and_then(Value::as_str).unwrap_or("").is_empty())
        .filter_map(|i| i["name"].as_str())
        .find(|name| *name != bridge);
    match host {
        Some(name) => Ok(name.to_owned()),
        None => bail!("no host veth in {result}"),
    }
}
