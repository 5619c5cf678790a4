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
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
