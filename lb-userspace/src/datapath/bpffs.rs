//! Makes sure the pin directory is on a BPF filesystem before anything is
//! pinned there.
//!
//! `ip netns exec` gives the command a private mount namespace with a fresh
//! /sys, where /sys/fs/bpf is an empty sysfs directory: pinning there
//! fails. Mounting bpffs (as Cilium's agent does when it is missing) makes
//! the agent work there. A bpffs mounted in such a private mount namespace
//! lives as long as that namespace, that is as long as the agent: pins made
//! there do not outlive it (see the README).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use tracing::warn;

/// Where bpffs is conventionally mounted.
pub const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

/// The nearest existing directory at or above `path`.
fn nearest_existing(path: &Path) -> &Path {
    path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"))
}

/// Whether `path` (or, if it does not exist yet, its nearest existing
/// ancestor) is on bpffs.
pub fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    let probe = nearest_existing(path);
    let fs = statfs(probe).with_context(|| format!("statfs {}", probe.display()))?;
    Ok(fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Where to mount bpffs so that `pin_dir` ends up on it: /sys/fs/bpf for
/// pin directories under it, else the pin directory's parent.
fn mount_point(pin_dir: &Path) -> PathBuf {
    if pin_dir.starts_with(DEFAULT_MOUNT) {
        PathBuf::from(DEFAULT_MOUNT)
    } else {
        pin_dir.parent().unwrap_or(pin_dir).to_owned()
    }
}

/// Mounts bpffs so that `pin_dir` is on it, unless it already is.
pub fn ensure_mounted(pin_dir: &Path) -> anyhow::Result<()> {
    if is_bpffs(pin_dir)? {
        return Ok(());
    }
    let target = mount_point(pin_dir);
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    mount(
        Some("bpffs"),
        &target,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {}", target.display()))?;
    warn!(mount_point = %target.display(), "bpffs was not mounted there: mounted it");
    anyhow::ensure!(
        is_bpffs(pin_dir)?,
        "{} is still not on bpffs after mounting {}",
        pin_dir.display(),
        target.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_dirs_under_the_default_mount_use_it() {
        assert_eq!(mount_point(Path::new("/sys/fs/bpf/lb")), Path::new(DEFAULT_MOUNT));
        assert_eq!(mount_point(Path::new("/sys/fs/bpf/a/b")), Path::new(DEFAULT_MOUNT));
        assert_eq!(mount_point(Path::new("/run/lb/pins")), Path::new("/run/lb"));
    }
}
