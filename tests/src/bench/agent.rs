//! The real `lb-agent` binary as a child process: started in the node
//! namespace with a file source, followed through its log until it has
//! programmed the maps, and stopped (pins removed) when its guard drops,
//! also on errors and interrupts.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_common::stats::Counter;
use lb_userspace::datapath::{loader::Capacities, maps};

use super::cancel;

/// One "datapath programmed" log line of the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Programmed {
    pub frontends: usize,
    pub backends: usize,
    pub writes: usize,
    /// The sync's own duration as the agent logged it.
    pub took_us: u64,
    /// When this process read the line.
    pub at: Instant,
}

/// How to start the agent.
pub struct AgentConfig<'a> {
    pub bin: &'a Path,
    pub netns: &'a str,
    /// A YAML or JSON file of Services and EndpointSlices.
    pub source: &'a Path,
    pub capacities: Capacities,
    /// More flags (`--hostname-override`, `--xdp-interfaces`, ...).
    pub extra_args: &'a [&'a str],
}

/// A running agent. Dropping it stops the agent and removes its pins.
pub struct Agent {
    child: Child,
    pin_dir: PathBuf,
    events: Receiver<Event>,
    /// The last log lines, for error messages.
    log_tail: Arc<Mutex<VecDeque<String>>>,
    /// Conntrack entries the agent removed so far (garbage collection and
    /// stale-UDP purges), from its log.
    removed_entries: Arc<AtomicU64>,
    /// When this process read the "datapath attached" line, once
    /// `wait_programmed` has seen it.
    attached_at: Option<Instant>,
    pub started: Instant,
}

/// What the agent's log says that `wait_programmed` waits for.
enum Event {
    Programmed(Programmed),
    /// The "datapath attached" line, read at this time.
    Attached(Instant),
}

static NEXT_PIN_DIR: AtomicU32 = AtomicU32::new(0);
const LOG_TAIL_LINES: usize = 20;

impl Agent {
    pub fn start(config: &AgentConfig<'_>) -> anyhow::Result<Self> {
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/lb-bench-{}-{}",
            std::process::id(),
            NEXT_PIN_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let source = config.source.to_str().context("non-UTF-8 source path")?;
        let caps = config.capacities;
        let started = Instant::now();
        let mut child = Command::new(config.bin)
            .args(["--source", &format!("file:{source}"), "--netns", config.netns])
            .args(["--pin-dir", pin_dir.to_str().context("pin dir")?, "--interfaces", "all"])
            .args(["--services-max", &caps.services.to_string(), "--backends-max", &caps.backends.to_string()])
            .args(["--conntrack-max", &caps.conntrack.to_string()])
            .args(crate::agent::NO_HOST_CGROUP)
            .args(config.extra_args)
            // Plain log lines: the parser below reads them, the conntrack
            // worker's per-sweep line included.
            .env("RUST_LOG", "info,lb_userspace::conntrack::worker=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", config.bin.display()))?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let (tx, events) = mpsc::channel();
        let log_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = log_tail.clone();
        let removed_entries = Arc::new(AtomicU64::new(0));
        let removed = removed_entries.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                if let Some(event) = parse_programmed(&line) {
                    let _ = tx.send(Event::Programmed(event));
                }
                if line.contains("datapath attached") {
                    let _ = tx.send(Event::Attached(Instant::now()));
                }
                if let Some(n) = parse_removed(&line) {
                    removed.fetch_add(n, Ordering::Relaxed);
                }
                let mut tail = tail.lock().expect("log tail");
                if tail.len() == LOG_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Ok(Self { child, pin_dir, events, log_tail, removed_entries, attached_at: None, started })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Waits for a "datapath programmed" line with at least
    /// `min_frontends` frontends (earlier, smaller syncs are skipped) and
    /// for the "datapath attached" line: the agent attaches its programs
    /// beside its first sync, and has programmed the datapath once both
    /// are done. `at` is the later of the two.
    pub fn wait_programmed(&mut self, min_frontends: usize, timeout: Duration) -> anyhow::Result<Programmed> {
        let deadline = Instant::now() + timeout;
        let mut programmed: Option<Programmed> = None;
        loop {
            if let (Some(programmed), Some(attached)) = (programmed, self.attached_at) {
                return Ok(Programmed { at: programmed.at.max(attached), ..programmed });
            }
            cancel::check()?;
            if let Some(status) = self.child.try_wait()? {
                bail!("lb-agent exited ({status}) before programming the datapath:\n{}", self.log_tail());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("lb-agent did not program {min_frontends} frontends within {timeout:?}:\n{}", self.log_tail());
            }
            match self.events.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(Event::Programmed(event)) if event.frontends >= min_frontends => {
                    programmed = programmed.or(Some(event));
                }
                Ok(Event::Attached(at)) => self.attached_at = Some(at),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // stderr closed: the next try_wait reports the exit.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Peak resident set size so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        peak_rss_kib_of(self.pid())
    }

    /// The datapath's packet counters, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Vec<(Counter, u64)>> {
        maps::counters(&self.pin_dir)
    }

    /// Entries in the datapath's conntrack table now.
    pub fn conntrack_entries(&self) -> anyhow::Result<usize> {
        Ok(maps::conntrack_entries(&self.pin_dir)?.len())
    }

    /// Conntrack entries the agent has removed since it started: expired
    /// flows its garbage collection swept, and UDP flows to endpoints that
    /// left their Service.
    pub fn conntrack_removed(&self) -> u64 {
        self.removed_entries.load(Ordering::Relaxed)
    }

    fn log_tail(&self) -> String {
        self.log_tail.lock().map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signals our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Removes terminal colour sequences (ESC [ … letter).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads `… datapath programmed frontends=N backends=N writes=N took_us=N`.
fn parse_programmed(line: &str) -> Option<Programmed> {
    let (_, fields) = line.split_once("datapath programmed")?;
    Some(Programmed {
        frontends: usize::try_from(log_field(fields, "frontends")?).ok()?,
        backends: usize::try_from(log_field(fields, "backends")?).ok()?,
        writes: usize::try_from(log_field(fields, "writes")?).ok()?,
        took_us: log_field(fields, "took_us")?,
        at: Instant::now(),
    })
}

/// Entries one agent log line says were removed from conntrack: a
/// garbage-collection pass ("conntrack swept … removed=N") or a stale-UDP
/// purge ("removed UDP flows … entries=N").
fn parse_removed(line: &str) -> Option<u64> {
    if let Some((_, fields)) = line.split_once("conntrack swept") {
        return log_field(fields, "removed");
    }
    let (_, fields) = line.split_once("removed UDP flows")?;
    log_field(fields, "entries")
}

/// The number in a `key=N` field of a log line's fields.
fn log_field(fields: &str, key: &str) -> Option<u64> {
    fields.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn peak_rss_kib_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_entries_a_sweep_or_purge_removed() {
        let sweep = "2026-12-02T17:40:01.5Z DEBUG lb_userspace::conntrack::worker: conntrack swept entries=1048380 removed=5120 orphans=0 took_ms=870";
        assert_eq!(parse_removed(sweep), Some(5120));
        let purge = "2026-12-02T17:40:02Z  INFO lb_userspace::conntrack::worker: removed UDP flows to endpoints that left their Service entries=12";
        assert_eq!(parse_removed(purge), Some(12));
        assert_eq!(parse_removed("datapath programmed frontends=2 backends=2 writes=9 took_us=40"), None);
    }

    #[test]
    fn reads_the_programmed_line_with_or_without_colours() {
        let plain = "2025-01-01T00:00:00.000000Z  INFO lb_agent: datapath programmed frontends=1000 backends=16 writes=12017 took_us=48211";
        let event = parse_programmed(plain).unwrap();
        assert_eq!((event.frontends, event.backends, event.writes, event.took_us), (1000, 16, 12017, 48211));
        let coloured = "\u{1b}[2m2025\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m datapath programmed \u{1b}[3mfrontends\u{1b}[0m\u{1b}[2m=\u{1b}[0m7 \u{1b}[3mbackends\u{1b}[0m\u{1b}[2m=\u{1b}[0m3 \u{1b}[3mwrites\u{1b}[0m\u{1b}[2m=\u{1b}[0m9 \u{1b}[3mtook_us\u{1b}[0m\u{1b}[2m=\u{1b}[0m5";
        let event = parse_programmed(&strip_ansi(coloured)).unwrap();
        assert_eq!((event.frontends, event.took_us), (7, 5));
        assert!(parse_programmed("datapath attached").is_none());
    }
}
