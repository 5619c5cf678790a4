//! `cargo xtask bench`: builds in release mode and runs the benchmark
//! binary (`lb-bench`, in the tests crate, which shares the topology and
//! datapath fixtures with the end-to-end tests).

use crate::setup::{self, target_dir};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Arguments passed to lb-bench (see `cargo xtask bench -- --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    setup::run("cargo", &["build", "--release", "--bins"])?;
    let bin = target_dir().join("release/lb-bench");
    let args: Vec<&str> = args.args.iter().map(String::as_str).collect();
    setup::run(bin.to_str().expect("UTF-8 path"), &args)
}
