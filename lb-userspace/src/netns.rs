//! The process's network namespace and what it holds: entering a named
//! namespace (`ip netns` style), listing interfaces and IPv4 addresses.
//! All of it acts on the calling thread's namespace, so `enter` must run
//! before any other thread starts.

use std::ffi::CStr;

use anyhow::Context as _;
use nix::sched::{CloneFlags, setns};

/// Moves the calling thread (and threads it starts later) into
/// `/run/netns/NAME`. Only the network namespace changes: bpffs pins under
/// /sys/fs/bpf stay reachable.
pub fn enter(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering network namespace {name}"))
}

/// Names of all interfaces except loopback.
pub fn interfaces() -> anyhow::Result<Vec<String>> {
    // SAFETY: if_nameindex returns an array terminated by a zero entry,
    // freed with if_freenameindex below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(std::io::Error::last_os_error()).context("listing interfaces");
    }
    let mut names = Vec::new();
    let mut entry = list;
    // SAFETY: walks the array up to its terminator.
    unsafe {
        while (*entry).if_index != 0 {
            let name = CStr::from_ptr((*entry).if_name).to_string_lossy().into_owned();
            if name != "lo" {
                names.push(name);
            }
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(names)
}
