//! The datapath for interfaces the CNI plugin (`lb-cni`) attaches: pods'
//! host-side veths, set up one by one as the container runtime creates them.
//!
//! The agent loads the programs; the plugin, a short-lived process started
//! by the runtime, only attaches them. So the agent pins its programs as
//! `<pin-dir>/progs/lb_tc` and `<pin-dir>/progs/lb_tc_egress`, and the
//! plugin opens those pins, attaches a tcx link at the pod interface's
//! ingress and one at its egress, and pins them as
//! `<pin-dir>/cni-links/<attachment>` and
//! `<pin-dir>/cni-egress-links/<attachment>`. Those directories are the
//! plugin's: the agent's own reconciliation (`links/`, driven by
//! `--interfaces`) never removes an entry of them; the plugin's DEL does.
//!
//! Egress is where a reply sent by the node's own stack is translated back:
//! a pod's connection to a Service whose endpoint is host-network on this
//! node (the API server behind `kubernetes`, say) gets its replies through
//! the pod's veth without crossing any ingress hook.
//!
//! Upgrades and restarts: a starting agent first pins its new program over
//! the old pin, then swaps it into every CNI link with `BPF_LINK_UPDATE`
//! (atomic, as for its own links). A plugin attaching at the same time
//! re-reads the program pin after pinning its link and swaps the newer
//! program in itself, so whichever of the two goes second moves the link:
//! no link is left on the old program.

use std::{
    io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::programs::{
    LinkOrder, ProgramError, ProgramInfo, SchedClassifier, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::TcAttachOptions,
};
use tracing::info;

use super::{
    links,
    loader::{EGRESS_PROGRAM, TC_PROGRAM},
};

/// Subdirectory of the pin directory holding the agent's pinned programs.
pub const PROGS_DIR: &str = "progs";

/// One of the two hooks the plugin attaches at a pod's interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodHook {
    /// `lb_tc`: the pod's packets, as they leave the pod.
    Ingress,
    /// `lb_tc_egress`: replies the node's stack sends to the pod.
    Egress,
}

impl PodHook {
    pub const ALL: [PodHook; 2] = [PodHook::Ingress, PodHook::Egress];

    /// The program the agent pins for this hook.
    pub fn program(self) -> &'static str {
        match self {
            PodHook::Ingress => TC_PROGRAM,
            PodHook::Egress => EGRESS_PROGRAM,
        }
    }

    /// Subdirectory of the pin directory holding the plugin's links.
    pub fn links_dir(self) -> &'static str {
        match self {
            PodHook::Ingress => "cni-links",
            PodHook::Egress => "cni-egress-links",
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            PodHook::Ingress => TcAttachType::Ingress,
            PodHook::Egress => TcAttachType::Egress,
        }
    }

    /// For messages.
    pub fn name(self) -> &'static str {
        match self {
            PodHook::Ingress => "ingress",
            PodHook::Egress => "egress",
        }
    }
}

/// Where the agent pins the program the plugin attaches at `hook`.
pub fn program_pin(pin_dir: &Path, hook: PodHook) -> PathBuf {
    pin_dir.join(PROGS_DIR).join(hook.program())
}

/// Where the plugin pins its links of `hook`.
pub fn cni_links_dir(pin_dir: &Path, hook: PodHook) -> PathBuf {
    pin_dir.join(hook.links_dir())
}

/// A pinned link as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkIds {
    pub link_id: u32,
    pub program_id: u32,
}

/// What a starting agent did for the CNI plugin.
#[derive(Debug, Default)]
pub struct Published {
    /// Id of the program now pinned for the plugin.
    pub program_id: u32,
    /// CNI links now running that program.
    pub updated: Vec<String>,
    /// CNI links whose interface was gone: their pins were removed.
    pub stale: Vec<String>,
}

/// Agent side: pins `prog` for the plugin's `hook`, then moves every CNI
/// link of that hook to it.
pub fn publish(prog: &mut SchedClassifier, pin_dir: &Path, hook: PodHook) -> anyhow::Result<Published> {
    let program_id = pin_program(prog, pin_dir, hook)?;
    let mut published = Published { program_id, ..Published::default() };
    let dir = cni_links_dir(pin_dir, hook);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in links::pinned_names(&dir)? {
        match links::adopt(prog, &dir.join(&name))? {
            Some(_) => published.updated.push(name),
            // Either removed as stale by `adopt`, or deleted by the plugin meanwhile.
            None => published.stale.push(name),
        }
    }
    Ok(published)
}

/// Pins `prog` as `progs/<program>`, replacing an earlier agent's pin in
/// one rename; returns its program id.
fn pin_program(prog: &mut SchedClassifier, pin_dir: &Path, hook: PodHook) -> anyhow::Result<u32> {
    let dir = pin_dir.join(PROGS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Pinned here first, then renamed over the real pin, so a reader never
    // finds the pin missing while an agent replaces it. (bpffs refuses
    // dots in names, hence no `.tmp`.)
    let next = dir.join(format!("{}_next", hook.program()));
    remove_if_present(&next)?;
    prog.pin(&next).with_context(|| format!("pinning the program at {}", next.display()))?;
    let path = program_pin(pin_dir, hook);
    std::fs::rename(&next, &path).with_context(|| format!("renaming {} to {}", next.display(), path.display()))?;
    Ok(prog.info()?.id())
}

/// Id of the program the agent pinned for `hook`; None if there is none
/// (no agent has started with this pin directory, an agent too old to pin
/// the egress program, or `--cleanup` removed it).
pub fn pinned_program_id(pin_dir: &Path, hook: PodHook) -> anyhow::Result<Option<u32>> {
    let path = program_pin(pin_dir, hook);
    match ProgramInfo::from_pin(&path) {
        Ok(info) => Ok(Some(info.id())),
        Err(ProgramError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening pinned program {}", path.display())),
    }
}

/// Plugin side: attaches the program pinned for `hook` at that tcx hook of
/// `ifname` (in the calling thread's network namespace) and pins the link
/// as `<links dir>/<link_name>`, replacing a link pinned there before.
pub fn attach(pin_dir: &Path, hook: PodHook, ifname: &str, link_name: &str) -> anyhow::Result<LinkIds> {
    let program = program_pin(pin_dir, hook);
    let mut prog = SchedClassifier::from_pin(&program)
        .with_context(|| format!("opening the agent's pinned program {}", program.display()))?;
    let dir = cni_links_dir(pin_dir, hook);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(link_name);
    // A repeated ADD (after a failed one) must not leave two links.
    remove_if_present(&path)?;
    let id = prog
        .attach_with_options(ifname, hook.attach_type(), TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching to {ifname} {} (tcx)", hook.name()))?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    // If pinning fails, `link` is dropped and the attachment goes with it.
    link.pin(&path).with_context(|| format!("pinning link {}", path.display()))?;
    follow_newer_program(pin_dir, hook, &path)
}

/// After pinning a link: if an agent pinned a newer program meanwhile, it
/// may have listed the links before this one existed; move it here.
fn follow_newer_program(pin_dir: &Path, hook: PodHook, link: &Path) -> anyhow::Result<LinkIds> {
    let ids = link_ids(link)?.with_context(|| format!("{} vanished right after pinning", link.display()))?;
    if pinned_program_id(pin_dir, hook)?.is_none_or(|current| current == ids.program_id) {
        return Ok(ids);
    }
    let program = program_pin(pin_dir, hook);
    let mut prog = SchedClassifier::from_pin(&program).with_context(|| format!("opening {}", program.display()))?;
    info!(link = %link.display(), "the agent pinned a newer program while attaching: moving the link to it");
    match links::adopt(&mut prog, link)? {
        Some((link_id, program_id)) => Ok(LinkIds { link_id, program_id }),
        None => anyhow::bail!("the interface of {} vanished while attaching", link.display()),
    }
}

/// Ids of the link pinned at `path`; None if nothing is pinned there.
pub fn link_ids(path: &Path) -> anyhow::Result<Option<LinkIds>> {
    let pinned = match PinnedLink::from_pin(path) {
        Ok(pinned) => pinned,
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("opening pinned link {}", path.display())),
    };
    let info = FdLink::from(pinned).info()?;
    Ok(Some(LinkIds { link_id: info.id(), program_id: info.program_id() }))
}

/// Ids of the programs attached at tcx `hook` of `ifname`, in order.
pub fn attached_programs(ifname: &str, hook: PodHook) -> anyhow::Result<Vec<u32>> {
    let (_, programs) = SchedClassifier::query_tcx(ifname, hook.attach_type())
        .with_context(|| format!("listing the tcx {} programs of {ifname}", hook.name()))?;
    Ok(programs.iter().map(ProgramInfo::id).collect())
}

/// Plugin side: removes the pinned link `<links dir>/<link_name>` of
/// `hook`, which detaches it. Whether there was one.
pub fn remove(pin_dir: &Path, hook: PodHook, link_name: &str) -> anyhow::Result<bool> {
    remove_if_present(&cni_links_dir(pin_dir, hook).join(link_name))
}

fn remove_if_present(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
