//! The socket-level programs (`lb_connect4`, `lb_sendmsg4`, `lb_recvmsg4`,
//! `lb_getpeername4` and their IPv6 twins `*6`) attached to a cgroup, through pinned links, so they
//! outlive the agent as the tc links do (`links`).
//!
//! Each link is pinned as `<pin-dir>/cgroup-links/<program>`. A starting
//! agent swaps its program into a pinned link with `BPF_LINK_UPDATE`
//! (atomic: every socket call sees the old or the new program, never
//! none) and creates and pins a link only where none is pinned, or where
//! the pinned one is on another cgroup than `--cgroup-path` (changed
//! setting, or the cgroup removed and made again): that one is replaced,
//! with a moment where neither runs. Removing the pins detaches the
//! programs.

use std::{
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
use tracing::info;

use super::link_info;

/// Subdirectory of the pin directory holding the cgroup links.
pub const CGROUP_LINKS_DIR: &str = "cgroup-links";

/// The socket-level programs, by name.
pub const PROGRAMS: [&str; 8] = [
    "lb_connect4",
    "lb_sendmsg4",
    "lb_recvmsg4",
    "lb_getpeername4",
    "lb_connect6",
    "lb_sendmsg6",
    "lb_recvmsg6",
    "lb_getpeername6",
];

/// `enum bpf_cmd`'s BPF_LINK_UPDATE (include/uapi/linux/bpf.h).
const BPF_LINK_UPDATE: libc::c_long = 29;

/// The `link_update` part of `union bpf_attr`.
#[repr(C)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Where the cgroup links of a pin directory are pinned.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(CGROUP_LINKS_DIR)
}

/// A loaded socket-level program by name.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a cgroup sock_addr program"))
}

/// Runs every socket-level program on `cgroup`: adopts pinned links,
/// creates and pins the missing ones. Returns the programs whose link was
/// created (the others were adopted).
pub fn attach(ebpf: &mut Ebpf, pin_dir: &Path, cgroup: &Path) -> anyhow::Result<Vec<&'static str>> {
    let fs = statfs(cgroup).with_context(|| format!("statfs {}", cgroup.display()))?;
    // Checked here because the kernel's answer for a directory that is not
    // a cgroup2 one is a bare EBADF. On hosts with the hybrid layout
    // /sys/fs/cgroup is a tmpfs and cgroup2 is at /sys/fs/cgroup/unified.
    anyhow::ensure!(
        fs.filesystem_type() == CGROUP2_SUPER_MAGIC,
        "{} is not a cgroup2 directory (`findmnt -t cgroup2` shows where cgroup2 is mounted)",
        cgroup.display()
    );
    let dir = links_dir(pin_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cgroup_dir = std::fs::File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    let cgroup_id = cgroup_dir.metadata()?.ino();
    let mut created = Vec::new();
    for name in PROGRAMS {
        let prog = program(ebpf, name)?;
        let path = dir.join(name);
        if path.exists() && on_cgroup(&path, cgroup_id)? && update(prog, &path)? {
            continue;
        }
        let id = prog
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        // If pinning fails, `link` is dropped and the attachment goes with it.
        link.pin(&path).with_context(|| format!("pinning link {}", path.display()))?;
        created.push(name);
    }
    info!(cgroup = %cgroup.display(), created = ?created, "socket-level programs attached");
    Ok(created)
}

/// Whether the link pinned at `path` is attached to the cgroup with id
/// `cgroup_id`. When it is not (the agent was given another cgroup, or
/// the cgroup was removed and made again), its pin is removed, which
/// detaches it, and the caller makes a new link.
fn on_cgroup(path: &Path, cgroup_id: u64) -> anyhow::Result<bool> {
    if link_info::cgroup_id(path)? == Some(cgroup_id) {
        return Ok(true);
    }
    std::fs::remove_file(path).with_context(|| format!("removing link {}", path.display()))?;
    info!(link = %path.display(), "pinned link was on another cgroup: replaced");
    Ok(false)
}

/// Swaps `prog` into the link pinned at `path`. False when the link's
/// cgroup has been removed (the kernel answers ENOLINK): its pin is
/// removed, and the caller makes a new link.
fn update(prog: &CgroupSockAddr, path: &Path) -> anyhow::Result<bool> {
    let link = link_info::obj_get(path)?;
    let prog_fd = prog.fd()?;
    let mut attr = LinkUpdate {
        link_fd: u32::try_from(link.as_raw_fd())?,
        new_prog_fd: u32::try_from(prog_fd.as_fd().as_raw_fd())?,
        flags: 0,
        old_prog_fd: 0,
    };
    match link_info::bpf(BPF_LINK_UPDATE, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {
            std::fs::remove_file(path).with_context(|| format!("removing stale link {}", path.display()))?;
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("replacing the program of pinned link {}", path.display())),
    }
}

/// Detaches the socket-level programs by removing their pinned links (a
/// no-op for those not pinned).
pub fn detach(pin_dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(links_dir(pin_dir)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", links_dir(pin_dir).display()))
        }
        _ => Ok(()),
    }
}
