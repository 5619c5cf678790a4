//! `cargo xtask`: set-up, demo, tests and benchmarks, each usable on a
//! fresh machine (they run the bootstrap first).

mod bench;
mod bpffs;
mod demo;
mod setup;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Build, demo, test and benchmark the Service load balancer")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what the build and tests need (idempotent; quick when done).
    Setup,
    /// Build, start the datapath in a namespace topology, program a Service
    /// from a bundled YAML file and send real traffic through it.
    Demo(demo::DemoArgs),
    /// Unit tests, packet tests (BPF_PROG_TEST_RUN) and end-to-end tests.
    Test,
    /// Benchmarks: per-packet cost and real traffic, side by side.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Setup => setup::bootstrap(),
        Command::Demo(args) => leaving_bpffs_as_found(|| {
            setup::bootstrap()?;
            demo::run(&args)
        }),
        Command::Test => leaving_bpffs_as_found(|| {
            setup::bootstrap()?;
            setup::test()
        }),
        Command::Bench(args) => leaving_bpffs_as_found(|| {
            setup::bootstrap()?;
            bench::run(&args)
        }),
    }
}

/// Runs `run` (the bootstrap included, which mounts bpffs), then
/// unmounts the bpffs it mounted (`bpffs`), whatever its outcome.
fn leaving_bpffs_as_found(run: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let before = bpffs::note();
    let outcome = run();
    before.restore();
    outcome
}
