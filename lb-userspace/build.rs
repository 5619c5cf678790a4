//! Builds the eBPF datapath (`lb-ebpf`) for `bpfel-unknown-none` and puts
//! the object in OUT_DIR, where `loader.rs` embeds it.
//!
//! This is the nested build `aya_build::build_ebpf` runs (same command,
//! same target directory), run here so its output can be filtered:
//! aya-build forwards every line of the nested cargo's progress
//! ("Compiling ...", "Finished ...") as a `cargo:warning`, which buries
//! real warnings under dozens of lines on every build. Here compiler
//! diagnostics are forwarded, cargo's own `warning:`/`error:` lines too,
//! and a failed build forwards everything it printed.

use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};

const PACKAGE: &str = "lb-ebpf";
const TARGET: &str = "bpfel-unknown-none";
/// The machine's only toolchain. -Z build-std works on it because
/// .cargo/config.toml sets RUSTC_BOOTSTRAP=1 (see there).
const TOOLCHAIN: &str = "stable";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().ok_or_else(|| anyhow!("lb-userspace has no parent directory"))?;
    let root_dir = workspace.join(PACKAGE);
    println!("cargo:rerun-if-changed={}", root_dir.display());
    println!("cargo:rerun-if-changed={}", workspace.join("lb-common").display());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = build(&out_dir)?;
    std::fs::copy(&object, out_dir.join(PACKAGE)).with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}

/// The nested `cargo build`, through `rustup run` when rustup exists so
/// the eBPF build uses the named toolchain whatever cargo runs this script.
fn cargo() -> Command {
    let rustup = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("rustup"))
        .find(|path| path.is_file());
    let mut cmd = match rustup {
        Some(rustup) => {
            let mut cmd = Command::new(rustup);
            cmd.args(["run", TOOLCHAIN, "cargo"]);
            cmd
        }
        None => Command::new("cargo"),
    };
    // The host build's compiler settings must not leak into the BPF build.
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER"] {
        cmd.env_remove(key);
    }
    cmd
}

/// Builds the eBPF binary and returns its path.
fn build(out_dir: &Path) -> anyhow::Result<PathBuf> {
    // BTF for maps and programs comes from debug info; the linker emits it.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let rustflags: OsString =
        [format!("--cfg=bpf_target_arch=\"{arch}\""), "-Cdebuginfo=2".into(), "-Clink-arg=--btf".into()]
            .join("\x1f")
            .into();
    // A target directory of its own: cargo would otherwise wait on the lock
    // the outer build holds (aya-build's choice of directory, kept so
    // existing build caches stay valid).
    let target_dir = out_dir.join("aya-build").join("target").join(PACKAGE);
    let mut child = cargo()
        .args(["build", "--package", PACKAGE, "--bins", "--message-format=json", "--release", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the eBPF build")?;

    let mut stderr = child.stderr.take().context("stderr")?;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut executable = None;
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            warn(&line);
            continue;
        };
        match message["reason"].as_str() {
            Some("compiler-artifact") if message["target"]["name"] == PACKAGE => {
                executable = message["executable"].as_str().map(PathBuf::from).or(executable);
            }
            Some("compiler-message") => {
                message["message"]["rendered"].as_str().unwrap_or_default().lines().for_each(warn)
            }
            _ => {}
        }
    }
    let status = child.wait()?;
    let stderr = stderr.join().map_err(|_| anyhow!("reading the eBPF build's stderr"))?;
    if !status.success() {
        stderr.lines().for_each(warn);
        bail!("the eBPF build failed ({status}); its output is above");
    }
    // Cargo's progress lines are noise; its own warnings are not.
    stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("warning:") || l.trim_start().starts_with("error"))
        .for_each(warn);
    executable.context("the eBPF build produced no binary")
}

fn warn(line: &str) {
    println!("cargo:warning={line}");
}
