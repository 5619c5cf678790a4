//! The datapaths compared on real traffic, each programmed with the same
//! Service table in the same topology: this project's eBPF datapath (the
//! real agent), kube-proxy's iptables and nftables rule layouts (generated
//! as kube-proxy writes them and loaded with its loaders' tools), and no
//! rules at all (the client talks to pod addresses: plain routing), and
//! the limit: a program that only forwards the way the datapath does.
//! There is no IPVS in this kernel, so no IPVS layout.

pub mod ebpf;
pub mod forward_only;
pub mod iptables;
pub mod nftables;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

use super::{agent::Agent, table::Table};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// No Service handling: the client addresses endpoints directly.
    NoRules,
    /// No Service handling either, but every packet forwarded by a tc
    /// program through the FIB, as the datapath forwards: the limit.
    ForwardOnly,
    Ebpf,
    Iptables,
    Nftables,
}

impl Layout {
    pub const ALL: [Layout; 5] =
        [Layout::NoRules, Layout::ForwardOnly, Layout::Ebpf, Layout::Iptables, Layout::Nftables];

    /// Whether the layout attaches programs to the node's interfaces,
    /// whose run time the benchmark can read (`program_time`).
    pub fn runs_programs(self) -> bool {
        matches!(self, Layout::ForwardOnly | Layout::Ebpf)
    }

    /// Stable name for the CSV and the plots.
    pub fn name(self) -> &'static str {
        match self {
            Layout::NoRules => "none",
            Layout::ForwardOnly => "forward_only",
            Layout::Ebpf => "ebpf",
            Layout::Iptables => "iptables",
            Layout::Nftables => "nftables",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Layout::NoRules => "no rules: client → pod addresses, plain routing (the floor)",
            Layout::ForwardOnly => {
                "no rules, client → pod addresses, each packet forwarded by lb_forward_only (FIB lookup + redirect, no Service work): the limit"
            }
            Layout::Ebpf => "lb-agent attached at tc ingress of every node interface",
            Layout::Iptables => {
                "kube-proxy iptables layout (nat KUBE-SERVICES → KUBE-SVC → KUBE-SEP), iptables-restore"
            }
            Layout::Nftables => "kube-proxy nftables layout (table ip kube-proxy, service-ips vmap, numgen), nft -f",
        }
    }

    /// Whether the client addresses Service frontends (or, without rules,
    /// the endpoints themselves).
    pub fn uses_frontends(self) -> bool {
        !matches!(self, Layout::NoRules | Layout::ForwardOnly)
    }
}

/// What the kube-proxy layouts assume about the cluster. The cluster CIDR
/// (kube-proxy's "local traffic detector") covers the client's subnet too,
/// so the client counts as a pod: like this project's datapath, kube-proxy
/// then DNATs without SNAT; its masquerade rules are still evaluated.
pub const CLUSTER_CIDR: &str = "10.0.0.0/8";
/// kubeadm's default Service range.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// kube-proxy's default masquerade bit (14).
pub const MASQUERADE_MARK: &str = "0x4000";

/// base32(sha256(input)), as kube-proxy names its chains.
pub fn kube_hash(input: &str) -> String {
    base32(&Sha256::digest(input.as_bytes()))
}

/// RFC 4648 base32 (standard alphabet, padded), Go's StdEncoding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    for chunk in bytes.chunks(5) {
        let mut block = [0u8; 5];
        block[..chunk.len()].copy_from_slice(chunk);
        let bits = block.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let symbols = (chunk.len() * 8).div_ceil(5);
        for i in 0..8 {
            if i < symbols {
                out.push(char::from(ALPHABET[((bits >> (35 - 5 * i)) & 31) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// kube-proxy's name of a Service port: `namespace/name:port` (`:port`
/// only for named ports).
pub fn service_port_name(name: &str, port_name: &str) -> String {
    let namespace = super::table::NAMESPACE;
    if port_name.is_empty() { format!("{namespace}/{name}") } else { format!("{namespace}/{name}:{port_name}") }
}

/// A layout in place in the node namespace. Rules need no guard: they die
/// with the namespace; the agent is stopped (and its pins removed) when
/// its guard drops.
pub enum Installed {
    Nothing,
    Rules {
        rules: usize,
        took: Duration,
    },
    Agent {
        agent: Agent,
        took: Duration,
    },
    /// A program attached while this object lives.
    Program {
        _ebpf: Box<aya::Ebpf>,
        took: Duration,
    },
}

impl Installed {
    /// How long installing took: rules loaded, or agent start to
    /// programmed.
    pub fn took(&self) -> Option<Duration> {
        match self {
            Installed::Nothing => None,
            Installed::Rules { took, .. } | Installed::Agent { took, .. } | Installed::Program { took, .. } => {
                Some(*took)
            }
        }
    }

    /// A short description for the log.
    pub fn summary(&self) -> String {
        match self {
            Installed::Nothing => "nothing to install".to_owned(),
            Installed::Rules { rules, took } => {
                format!("{rules} rules loaded in {:.2} s", took.as_secs_f64())
            }
            Installed::Agent { took, .. } => {
                format!("agent programmed in {:.2} s", took.as_secs_f64())
            }
            Installed::Program { took, .. } => format!("program attached in {:.2} s", took.as_secs_f64()),
        }
    }
}

/// Where a layout is installed.
pub struct Target<'a> {
    pub node_netns: &'a str,
    pub node_interfaces: &'a [String],
    pub agent_bin: &'a Path,
    /// Scratch directory for rule files and the agent's source file.
    pub work_dir: &'a Path,
}

pub fn install(layout: Layout, table: &Table, target: &Target<'_>) -> anyhow::Result<Installed> {
    match layout {
        Layout::NoRules => Ok(Installed::Nothing),
        Layout::ForwardOnly => forward_only::install(target.node_netns, target.node_interfaces),
        Layout::Ebpf => ebpf::install(table, target),
        Layout::Iptables => {
            let rules = iptables::ruleset(table);
            let path = target.work_dir.join("iptables.rules");
            let took = load_file(target.node_netns, &path, &rules.text, &["iptables-restore"])?;
            Ok(Installed::Rules { rules: rules.rules, took })
        }
        Layout::Nftables => {
            let script = nftables::script(table);
            let path = target.work_dir.join("kube-proxy.nft");
            let path_arg = path.to_str().context("non-UTF-8 scratch path")?.to_owned();
            let took = load_file(target.node_netns, &path, &script.text, &["nft", "-f", &path_arg])?;
            Ok(Installed::Rules { rules: script.rules, took })
        }
    }
}

/// Writes `text` to `path`, then runs `command` in the namespace with the
/// file on stdin (iptables-restore reads stdin; nft is given the path).
/// Returns how long the loader took.
fn load_file(netns: &str, path: &Path, text: &str, command: &[&str]) -> anyhow::Result<Duration> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    let stdin = std::fs::File::open(path)?;
    let started = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(command)
        .stdin(Stdio::from(stdin))
        .output()
        .with_context(|| format!("running {}", command[0]))?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!("{} in {netns} failed: {}", command[0], String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        for (input, expected) in
            [("", ""), ("f", "MY======"), ("fo", "MZXQ===="), ("foob", "MZXW6YQ="), ("foobar", "MZXW6YTBOI======")]
        {
            assert_eq!(base32(input.as_bytes()), expected);
        }
    }

    #[test]
    fn service_port_names_follow_kube_proxy() {
        assert_eq!(service_port_name("svc-000001", "http"), "bench/svc-000001:http");
        assert_eq!(service_port_name("svc-000001", ""), "bench/svc-000001");
    }
}
