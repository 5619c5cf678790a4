//! Benchmarks (being written).
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Small sizes and few repetitions (about a minute).
    #[arg(long)]
    pub quick: bool,
}
pub fn run(_args: &BenchArgs) -> anyhow::Result<()> { anyhow::bail!("not yet") }
