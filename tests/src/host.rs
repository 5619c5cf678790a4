//! For the socket-level tests: a cgroup of the test's own, and clients
//! started in a network namespace and (or not) in that cgroup.
//!
//! The cgroup is a fresh child of the cgroup2 root (wherever cgroup2 is
//! mounted: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hosts with the
//! hybrid layout), so the agent's programs attached to it see only the
//! processes the test puts there; the machine's root cgroup is never
//! touched.

use std::{
    ffi::CString,
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::Context as _;

use crate::agent;

/// Where cgroup2 is mounted on this machine (from /proc/self/mounts).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"cgroup2"))
        .and_then(|fields| fields.get(1).map(PathBuf::from))
        .context("cgroup2 is not mounted")
}

/// A child cgroup of the cgroup2 root, removed on drop (once its
/// processes have exited: drop the clients first).
#[derive(Debug)]
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let path = cgroup2_root()?.join(name);
        std::fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A cgroup is removable once empty; its programs go with it.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A running `lb-sock-client`, killed on drop.
pub struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    /// Starts `lb-sock-client MODE ADDR` in network namespace `netns`,
    /// inside `cgroup` when given (it joins before it execs, so before
    /// it opens any socket).
    pub fn start(netns: &str, cgroup: Option<&Path>, mode: &str, addr: &str) -> anyhow::Result<Self> {
        let ns =
            std::fs::File::open(format!("/run/netns/{netns}")).with_context(|| format!("opening netns {netns}"))?;
        let procs = match cgroup {
            Some(dir) => Some(CString::new(dir.join("cgroup.procs").into_os_string().into_encoded_bytes())?),
            None => None,
        };
        let mut command = Command::new(agent::binary("lb-sock-client")?);
        command.args([mode, addr]).stdin(Stdio::piped()).stdout(Stdio::piped());
        let ns_fd = ns.as_raw_fd();
        // SAFETY: only async-signal-safe calls (open, write, close, setns)
        // on data prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                if let Some(procs) = &procs {
                    join_cgroup(procs)?;
                }
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting lb-sock-client")?;
        drop(ns);
        let stdin = child.stdin.take().context("client stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("client stdout")?);
        Ok(Self { child, stdin, stdout })
    }

    /// The client's next output line.
    pub fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }

    /// Sends one line (one datagram, in `udp-connected` mode).
    pub fn send(&mut self, text: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{text}")?;
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs` ("0" names the writer itself).
fn join_cgroup(procs: &CString) -> std::io::Result<()> {
    // SAFETY: a valid NUL-terminated path; the fd is closed below.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: writes one byte from a static buffer.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let error = std::io::Error::last_os_error();
    // SAFETY: fd was opened above.
    unsafe { libc::close(fd) };
    if written != 1 { Err(error) } else { Ok(()) }
}

/// Runs one client to completion and returns its output lines.
pub fn run(netns: &str, cgroup: Option<&Path>, mode: &str, addr: &str) -> anyhow::Result<Vec<String>> {
    let mut client = Client::start(netns, cgroup, mode, addr)?;
    let mut lines = Vec::new();
    loop {
        let line = client.line()?;
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
}
