//! `cargo xtask demo`: builds, then runs the demo binary (`lb-demo`, in the
//! tests crate, which shares the namespace topology with the e2e tests).

use crate::setup::{self, target_dir};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Arguments passed to lb-demo (see `cargo xtask demo -- --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    setup::run("cargo", &["build", "--bins"])?;
    let bin = target_dir().join("debug/lb-demo");
    let args: Vec<&str> = args.args.iter().map(String::as_str).collect();
    setup::run(bin.to_str().expect("UTF-8 path"), &args)
}
