//! A bpffs directory a test pins maps into, removed with everything in
//! it when the test ends, whether it passed or not.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

pub struct PinDir(pub PathBuf);

impl PinDir {
    /// A directory under /sys/fs/bpf no other test or process uses.
    pub fn unique(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(format!("/sys/fs/bpf/lbt-{name}-{}-{n}", std::process::id()).into())
    }

    /// Creates the directory, on bpffs (mounted first if missing, as the
    /// agent does): for a test that pins something itself before any
    /// load would mount it.
    pub fn create(&self) -> anyhow::Result<()> {
        lb_userspace::datapath::bpffs::ensure_mounted(&self.0)?;
        std::fs::create_dir_all(&self.0)?;
        Ok(())
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
