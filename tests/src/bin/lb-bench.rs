//! lb-bench: per-packet cost of the datapath (BPF_PROG_TEST_RUN), real
//! traffic through network namespaces next to kube-proxy's iptables and
//! nftables layouts, and control-plane timings. Needs root.
//!
//! `cargo xtask bench -- --quick` builds in release mode and runs it.

use std::path::PathBuf;

use clap::Parser;
use lb_tests::bench::{self, Mode, Part};

#[derive(Debug, Parser)]
#[command(about = "Benchmark the in-kernel Service load balancer against kube-proxy's layouts")]
struct Args {
    /// About three minutes: fewer sizes and repetitions.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// Tiny sizes, one repetition, a few seconds (used by a test).
    #[arg(long)]
    smoke: bool,
    /// Output directory (default: target/bench of this build's workspace).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The lb-agent binary (default: next to this executable).
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// Run only these parts (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let mode = if args.smoke {
        Mode::Smoke
    } else if args.quick {
        Mode::Quick
    } else {
        Mode::Full
    };
    // target/<profile>/lb-bench → target/bench
    let default_out =
        exe.parent().and_then(|profile| profile.parent()).map_or_else(|| PathBuf::from("target"), PathBuf::from);
    bench::run(&bench::Options {
        mode,
        out_dir: args.out.unwrap_or_else(|| default_out.join("bench")),
        agent_bin: args.agent.unwrap_or_else(|| exe.with_file_name("lb-agent")),
        parts: args.only,
    })
}
