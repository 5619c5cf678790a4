//! Builds the eBPF datapath (`lb-ebpf`) for `bpfel-unknown-none` and puts
//! the object in OUT_DIR, where `loader.rs` embeds it.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("lb-userspace has no parent directory"))?;
    let root_dir = workspace.join("lb-ebpf");
    let root_dir = root_dir.to_str().context("non-UTF-8 path")?;
    // "stable": the machine's only toolchain. -Z build-std works on it
    // because .cargo/config.toml sets RUSTC_BOOTSTRAP=1 (see there).
    aya_build::build_ebpf([Package { name: "lb-ebpf", root_dir, ..Default::default() }], Toolchain::Custom("stable"))
}
