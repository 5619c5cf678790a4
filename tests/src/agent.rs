//! The real `lb-agent` binary, run inside a test topology's node
//! namespace. Dropping an `Agent` stops it and removes its pinned maps.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_userspace::{datapath::maps::ServiceMaps, tables::DesiredMaps};

/// Where cargo put the workspace's binaries for this build profile.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} not found next to {}; run `cargo build --workspace --bins` first", exe.display())
}

#[derive(Debug)]
pub struct Agent {
    child: Child,
    pub pin_dir: PathBuf,
    ready_file: PathBuf,
    /// How it was started, to start it again.
    command: Vec<std::ffi::OsString>,
}

impl Agent {
    /// Starts the agent in `netns`, reading Services from `source_file`,
    /// attached to every interface there, maps pinned under a unique
    /// directory in /sys/fs/bpf.
    pub fn start(netns: &str, source_file: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec![
            "--source".to_owned(),
            format!("file:{}", source_file.display()),
            "--poll-interval".into(),
            "20ms".into(),
        ];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        Self::start_with(netns, &args)
    }

    /// Starts the agent in `netns` with these arguments (plus `--netns` and
    /// a unique `--pin-dir`).
    pub fn start_with(netns: &str, args: &[String]) -> anyhow::Result<Self> {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{netns}"));
        let ready_file = std::env::temp_dir().join(format!("{netns}.ready"));
        let mut command: Vec<std::ffi::OsString> = vec![
            "--netns".into(),
            netns.into(),
            "--pin-dir".into(),
            pin_dir.clone().into(),
            "--ready-file".into(),
            ready_file.clone().into(),
        ];
        command.extend(args.iter().map(Into::into));
        let child = spawn(&command)?;
        Ok(Self { child, pin_dir, ready_file, command })
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the agent says it is attached and programmed.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.ready_file.exists() {
            if let Some(status) = self.child.try_wait()? {
                bail!("lb-agent exited early: {status}");
            }
            if Instant::now() > deadline {
                bail!("lb-agent not ready within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops the agent (its pinned maps stay) and starts it again.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.restart_after(|| Ok(()))
    }

    /// Stops the agent (its pinned maps stay), runs `while_down`, and
    /// starts it again.
    pub fn restart_after(&mut self, while_down: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        self.stop();
        let _ = std::fs::remove_file(&self.ready_file);
        while_down()?;
        self.child = spawn(&self.command)?;
        Ok(())
    }

    fn stop(&mut self) {
        // SIGTERM first so it shuts down cleanly; then make sure.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the agent's pinned maps hold now.
    pub fn maps(&self) -> anyhow::Result<DesiredMaps> {
        ServiceMaps::from_pins(&self.pin_dir)?.read_all()
    }

    /// The route epoch the agent last wrote (`LB_ROUTE_EPOCH`).
    pub fn route_epoch(&self) -> anyhow::Result<u32> {
        let pin = self.pin_dir.join(lb_common::maps::ROUTE_EPOCH);
        let map = aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(&pin)?)?;
        let epoch: aya::maps::Array<_, u32> = map.try_into()?;
        Ok(epoch.get(&0, 0)?)
    }

    /// Waits until the agent has moved the route epoch past `from` (it
    /// has read the kernel's announcement of a routing change).
    pub fn wait_route_epoch_past(&self, from: u32, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.route_epoch()? == from {
            if start.elapsed() > timeout {
                bail!("the route epoch stayed at {from} for {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits until the pinned maps satisfy `ready`, failing if the agent
    /// exits or `timeout` passes.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        ready: impl Fn(&DesiredMaps) -> bool,
    ) -> anyhow::Result<DesiredMaps> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("lb-agent exited early: {status}");
            }
            if let Ok(maps) = self.maps()
                && ready(&maps)
            {
                return Ok(maps);
            }
            if Instant::now() > deadline {
                bail!("the agent did not program the expected maps within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The agent's default `--cgroup-path` is the machine's root cgroup: a
/// test must never attach there, so unless the test names its own cgroup,
/// socket-level translation is off (`none`).
pub const NO_HOST_CGROUP: [&str; 2] = ["--cgroup-path", "none"];

/// `NO_HOST_CGROUP` unless `args` already set `--cgroup-path`.
pub fn cgroup_default<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> &'static [&'static str] {
    if args.iter().any(|a| a.as_ref() == "--cgroup-path") { &[] } else { &NO_HOST_CGROUP }
}

fn spawn(args: &[std::ffi::OsString]) -> anyhow::Result<Child> {
    Command::new(binary("lb-agent")?)
        .args(args)
        .args(cgroup_default(args))
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .spawn()
        .context("starting lb-agent")
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_file(&self.ready_file);
    }
}

/// Writes `text` to `path` atomically (write + rename), as a config
/// management tool would, so the agent never reads half a file.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
