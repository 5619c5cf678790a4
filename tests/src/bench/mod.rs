//! lb-bench: what the datapath costs per packet, what it does to real
//! traffic next to kube-proxy's iptables and nftables layouts, and how
//! fast the agent programs it. One module per job; this one picks the
//! sizes for the mode, runs the parts, and writes the results (CSV, PNG
//! plots, markdown summary) even when a part fails or is interrupted.

pub mod agent;
pub mod backends;
pub mod cancel;
pub mod conntrack_gc;
pub mod control_plane;
pub mod control_plane_api;
pub mod cpu;
pub mod layouts;
pub mod loadgen;
pub mod machine;
pub mod nodeport;
pub mod packet_cost;
pub mod plan;
pub mod plot;
pub mod program_time;
pub mod progress;
pub mod report;
pub mod stats;
pub mod table;
pub mod traffic;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

pub use self::plan::{Mode, Plan};
use self::{progress::Progress, report::Report};

/// The parts of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    PacketCost,
    Traffic,
    ControlPlane,
    ConntrackGc,
    NodePort,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// Where results.csv, summary.md and the plots go.
    pub out_dir: PathBuf,
    /// The lb-agent binary.
    pub agent_bin: PathBuf,
    /// Parts to run (all when empty).
    pub parts: Vec<Part>,
}

/// What the parts share.
pub struct Env {
    pub agent_bin: PathBuf,
    /// Scratch files (rule sets, agent sources); removed at the end.
    pub work_dir: PathBuf,
    pub progress: Progress,
}

/// The files a run writes.
pub const CSV_FILE: &str = "results.csv";
pub const SUMMARY_FILE: &str = "summary.md";

/// A scratch directory removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("lb-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn preflight(options: &Options, wants: impl Fn(Part) -> bool) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb-bench needs root: it loads BPF programs and creates network namespaces");
    }
    if (wants(Part::Traffic) || wants(Part::ControlPlane)) && !options.agent_bin.is_file() {
        bail!("lb-agent not found at {} (build it, or pass --agent)", options.agent_bin.display());
    }
    if wants(Part::Traffic) {
        for tool in ["iptables-restore", "nft"] {
            if std::process::Command::new(tool).arg("--version").output().is_err() {
                bail!("{tool} not found (scripts/bootstrap.sh installs it)");
            }
        }
    }
    Ok(())
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    cancel::install()?;
    let wants = |part: Part| options.parts.is_empty() || options.parts.contains(&part);
    preflight(options, wants)?;
    let plan = Plan::for_mode(options.mode);
    std::fs::create_dir_all(&options.out_dir).with_context(|| format!("creating {}", options.out_dir.display()))?;
    let work = WorkDir::create()?;
    let steps = [
        (Part::PacketCost, plan.packet.sizes.len()),
        (Part::Traffic, plan.traffic.sizes.len() * 2 * layouts::Layout::ALL.len()),
        (Part::ControlPlane, plan.control.startup_sizes.len() + 1 + plan.control.api_scales.len()),
        (Part::ConntrackGc, 1),
        (Part::NodePort, 2 * 3),
    ]
    .iter()
    .filter(|(part, _)| wants(*part))
    .map(|(_, n)| *n as u64)
    .sum();
    let env = Env { agent_bin: options.agent_bin.clone(), work_dir: work.0.clone(), progress: Progress::new(steps) };
    let machine = machine::collect();
    let mut report = Report::default();

    let outcome = (|| -> anyhow::Result<()> {
        if wants(Part::PacketCost) {
            packet_cost::run(&plan.packet, &env, &mut report)?;
        }
        if wants(Part::Traffic) {
            traffic::run(&plan.traffic, &env, &mut report)?;
        }
        if wants(Part::ControlPlane) {
            control_plane::run(&plan.control, &env, &mut report)?;
        }
        if wants(Part::ConntrackGc) {
            conntrack_gc::run(plan.mode, &env, &mut report)?;
        }
        if wants(Part::NodePort) {
            nodeport::run(&plan.traffic, &env, &mut report)?;
        }
        Ok(())
    })();
    env.progress.finish();
    if let Err(e) = &outcome {
        report.warn(format!("the run stopped early: {e:#}"));
    }
    write_results(&report, &machine, &plan, &options.out_dir)?;
    outcome
}

/// CSV, summary and plots; the summary is also printed.
fn write_results(report: &Report, machine: &machine::MachineInfo, plan: &Plan, out_dir: &Path) -> anyhow::Result<()> {
    let csv = out_dir.join(CSV_FILE);
    report.write_csv(&csv)?;
    let mut summary = report.markdown(machine, plan);
    let plots = plot::write_all(report, out_dir).unwrap_or_else(|e| {
        eprintln!("lb-bench: plots not written: {e:#}");
        Vec::new()
    });
    if !plots.is_empty() {
        summary.push_str("## Plots\n\n");
        for file in &plots {
            summary.push_str(&format!("![{file}]({file})\n"));
        }
        summary.push('\n');
    }
    std::fs::write(out_dir.join(SUMMARY_FILE), &summary)?;
    println!("{summary}");
    println!("Results: {} · {} · {} plot(s) in {}", csv.display(), SUMMARY_FILE, plots.len(), out_dir.display());
    Ok(())
}
