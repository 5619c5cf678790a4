//! Looking at the datapath's pinned attachments from outside the agent, and
//! changing the node's interfaces under it: a "pod" that appears after the
//! agent started, and an agent started the way an operator would with
//! `ip netns exec`. Everything made here is removed on drop.

use std::{
    fs::File,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::links::{FdLink, PinnedLink};
use lb_userspace::datapath::links::links_dir;

use crate::{
    agent,
    topology::{CLIENT_IP, Topology, run, run_in},
};

/// A pinned tcx link as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkIds {
    pub link_id: u32,
    pub program_id: u32,
}

/// Path of the link pinned for `ifname` under `pin_dir`.
pub fn pinned_link_path(pin_dir: &Path, ifname: &str) -> PathBuf {
    links_dir(pin_dir).join(ifname)
}

/// Ids of the link pinned for `ifname` under `pin_dir`.
pub fn pinned_link(pin_dir: &Path, ifname: &str) -> anyhow::Result<LinkIds> {
    let path = pinned_link_path(pin_dir, ifname);
    let link = FdLink::from(PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?);
    let info = link.info()?;
    Ok(LinkIds { link_id: info.id(), program_id: info.program_id() })
}

/// Waits until `cond` holds, polling every 10 ms; returns how long it took.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `ip -batch` commands in `netns` (one command a line).
pub fn ip_batch(netns: &str, commands: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child.stdin.take().context("ip stdin")?.write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "ip -n {netns} -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// Whether `netns` has an interface called `name`.
pub fn interface_exists(netns: &str, name: &str) -> bool {
    run("ip", &["-n", netns, "link", "show", name]).is_ok()
}

/// A backend namespace added to a running topology: `eth0` with
/// 10.244.`n`.2/24 inside, `to-b<n>` with 10.244.`n`.1/24 in the node
/// namespace. Dropping it deletes the namespace, and with it the veth pair.
#[derive(Debug)]
pub struct Pod {
    pub netns: String,
    pub node_interface: String,
    pub ip: Ipv4Addr,
}

impl Pod {
    pub fn add(topology: &Topology, n: u8) -> anyhow::Result<Self> {
        let pod = Pod {
            netns: format!("{}-pod{n}", topology.node),
            node_interface: format!("to-b{n}"),
            ip: Ipv4Addr::new(10, 244, n, 2),
        };
        run("ip", &["netns", "add", &pod.netns])?;
        // From here on, Drop cleans up.
        pod.build(&topology.node, n).map(|()| pod)
    }

    fn build(&self, node: &str, n: u8) -> anyhow::Result<()> {
        let (ns, node_if) = (&self.netns, &self.node_interface);
        run_in(ns, &["ip", "link", "set", "lo", "up"])?;
        run_in(ns, &["ip", "link", "add", "eth0", "type", "veth", "peer", "name", node_if, "netns", node])?;
        run_in(ns, &["ip", "addr", "add", &format!("{}/24", self.ip), "dev", "eth0"])?;
        run_in(ns, &["ip", "link", "set", "eth0", "up"])?;
        run_in(
            ns,
            &[
                "ip",
                "route",
                "add",
                &format!("{}/24", Ipv4Addr::from(u32::from(CLIENT_IP) & !0xff)),
                "via",
                &format!("10.244.{n}.1"),
            ],
        )?;
        run_in(node, &["sysctl", "-qw", &format!("net.ipv4.conf.{node_if}.rp_filter=0")])?;
        run_in(node, &["ip", "addr", "add", &format!("10.244.{n}.1/24"), "dev", node_if])?;
        run_in(node, &["ip", "link", "set", node_if, "up"])?;
        Ok(())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// Creates and pins a map the way another build might have: `bpftool map
/// create` with the given layout.
pub fn pin_foreign_map(
    path: &Path,
    map_type: &str,
    key: u32,
    value: u32,
    entries: u32,
    name: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().context("pin path without a parent")?)?;
    let path = path.to_str().context("non-UTF-8 pin path")?;
    let (key, value, entries) = (key.to_string(), value.to_string(), entries.to_string());
    run(
        "bpftool",
        &["map", "create", path, "type", map_type, "key", &key, "value", &value, "entries", &entries, "name", name],
    )?;
    Ok(())
}

/// `lb-agent` started by a command line the test spells out, its stderr
/// kept in a file. Dropping it stops the agent and removes `cleanup`
/// paths.
#[derive(Debug)]
pub struct LoggedAgent {
    child: Child,
    pub log: PathBuf,
    pub ready_file: PathBuf,
    pub cleanup: Vec<PathBuf>,
}

impl LoggedAgent {
    /// Runs `prefix... lb-agent args...` (prefix e.g. `ip netns exec NS`).
    pub fn spawn(prefix: &[&str], args: &[String], tag: &str) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("{tag}.agent.log"));
        let ready_file = std::env::temp_dir().join(format!("{tag}.ready"));
        let _ = std::fs::remove_file(&ready_file);
        let binary = agent::binary("lb-agent")?;
        let mut argv: Vec<String> = prefix.iter().map(|s| (*s).to_owned()).collect();
        argv.push(binary.display().to_string());
        argv.extend(["--ready-file".to_owned(), ready_file.display().to_string()]);
        argv.extend(args.iter().cloned());
        if !args.iter().any(|a| a == "--cleanup") {
            argv.extend(agent::cgroup_default(args).iter().map(|a| (*a).to_owned()));
        }
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {argv:?}"))?;
        Ok(Self { child, log, ready_file, cleanup: Vec::new() })
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until ready; fails with the agent's log if it exits first.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.ready_file.exists() {
            if let Some(status) = self.child.try_wait()? {
                bail!("lb-agent exited early ({status}):\n{}", self.stderr());
            }
            if Instant::now() > deadline {
                bail!("lb-agent not ready within {timeout:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Waits for the agent to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("lb-agent still running after {timeout:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(5))
    }
}

impl Drop for LoggedAgent {
    fn drop(&mut self) {
        let _ = self.terminate();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for path in &self.cleanup {
            let _ = std::fs::remove_dir_all(path);
        }
        let _ = std::fs::remove_file(&self.ready_file);
        let _ = std::fs::remove_file(&self.log);
    }
}
