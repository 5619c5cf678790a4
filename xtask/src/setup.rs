//! The bootstrap script and the test run.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (relative
/// to the workspace root, as cargo reads it), else `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Runs a command in the workspace root, failing if it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Installs the toolchain pieces and packages (scripts/bootstrap.sh).
pub fn bootstrap() -> anyhow::Result<()> {
    run("bash", &["scripts/bootstrap.sh"])
}

/// Builds everything, then runs every test. Tests that share kernel state
/// (namespaces, pinned maps) run one at a time.
pub fn test() -> anyhow::Result<()> {
    run("cargo", &["build", "--bins"])?;
    run("cargo", &["test", "--no-fail-fast", "--", "--test-threads=1"])
}
