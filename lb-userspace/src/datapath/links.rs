//! The datapath's attachments, pinned so they outlive the agent.
//!
//! `lb_tc` is attached at tcx ingress through a BPF link, and each link is
//! pinned as `<pin-dir>/links/<interface>`. A pinned link keeps its program
//! attached after the agent exits (clean shutdown, crash, upgrade), so
//! Service traffic never goes untranslated between two agents. The next
//! agent opens the pinned link and swaps its own program in with
//! `BPF_LINK_UPDATE`: the kernel replaces the program atomically, every
//! packet sees either the old or the new one, never none. The maps are
//! pinned too and re-opened by name, so both programs share them.
//!
//! A tcx link is chosen over a legacy clsact filter because a filter
//! cannot be pinned or replaced atomically: replacing it means a window
//! with two filters or none.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
};
use tracing::{info, warn};

/// Subdirectory of the pin directory holding one pinned link per interface.
pub const LINKS_DIR: &str = "links";

/// Where the links of a pin directory are pinned.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(LINKS_DIR)
}

/// How an interface came to run this agent's program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A pinned link from an earlier agent now runs this program.
    Adopted { link_id: u32, program_id: u32 },
    /// A new link, now pinned.
    Created { link_id: u32, program_id: u32 },
    /// This agent had already attached it.
    Already,
}

/// The interfaces this agent's program is attached to, by name, with the
/// interface index each link was made for.
#[derive(Debug)]
pub struct Attachments {
    dir: PathBuf,
    attached: BTreeMap<String, u32>,
}

impl Attachments {
    /// Opens (creating it if needed) the links directory of `pin_dir`.
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        let dir = links_dir(pin_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir, attached: BTreeMap::new() })
    }

    /// Interface names with a pinned link, this agent's or an earlier one's.
    pub fn pinned(&self) -> anyhow::Result<Vec<String>> {
        pinned_names(&self.dir)
    }

    /// Interfaces this agent attached, by name.
    pub fn attached(&self) -> &BTreeMap<String, u32> {
        &self.attached
    }

    /// Runs `prog` on `ifname` (index `ifindex`) at tcx ingress: replaces
    /// the program of a pinned link if there is a live one, else attaches
    /// and pins a new link.
    pub fn attach(&mut self, prog: &mut SchedClassifier, ifname: &str, ifindex: u32) -> anyhow::Result<Attached> {
        if self.attached.get(ifname) == Some(&ifindex) {
            return Ok(Attached::Already);
        }
        let path = self.dir.join(ifname);
        let result = match adopt(prog, &path)? {
            Some((link_id, program_id)) => Attached::Adopted { link_id, program_id },
            None => {
                let (link_id, program_id) = create(prog, ifname, &path)?;
                Attached::Created { link_id, program_id }
            }
        };
        self.attached.insert(ifname.to_owned(), ifindex);
        Ok(result)
    }

    /// Detaches `ifname` by removing its pinned link (a no-op if there is none).
    pub fn remove(&mut self, ifname: &str) -> anyhow::Result<()> {
        self.attached.remove(ifname);
        let path = self.dir.join(ifname);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing pinned link {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// The interface attached with index `ifindex`, if any.
    pub fn name_of(&self, ifindex: u32) -> Option<String> {
        self.attached.iter().find(|(_, i)| **i == ifindex).map(|(name, _)| name.clone())
    }
}

/// Interface names with a pinned link under `dir`.
pub fn pinned_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.with_context(|| format!("listing {}", dir.display()))?,
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Swaps `prog` into the link pinned at `path`. None when there is no
/// usable link there: nothing pinned, or a link whose interface is gone
/// (the kernel answers ENOLINK; its pin is removed).
pub(crate) fn adopt(prog: &mut SchedClassifier, path: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    let pinned = match PinnedLink::from_pin(path) {
        Ok(pinned) => pinned,
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("opening pinned link {}", path.display())),
    };
    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
        .with_context(|| format!("{} is not a tcx link", path.display()))?;
    match prog.attach_to_link(link) {
        Ok(id) => {
            let link: FdLink = prog.take_link(id)?.try_into()?;
            let info = link.info()?;
            // Dropping `link` closes this process's fd; the pin keeps the link.
            Ok(Some((info.id(), info.program_id())))
        }
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOLINK) => {
            warn!(link = %path.display(), "pinned link's interface is gone; removing its pin");
            std::fs::remove_file(path).with_context(|| format!("removing stale link {}", path.display()))?;
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("replacing the program of pinned link {}", path.display())),
    }
}

/// Attaches `prog` at tcx ingress of `ifname` and pins the new link at `path`.
fn create(prog: &mut SchedClassifier, ifname: &str, path: &Path) -> anyhow::Result<(u32, u32)> {
    let id = prog
        .attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching to {ifname} ingress (tcx)"))?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    let info = link.info()?;
    // If pinning fails, `link` is dropped and the attachment goes with it.
    link.pin(path).with_context(|| format!("pinning link {}", path.display()))?;
    info!(interface = ifname, link_id = info.id(), "attached and pinned");
    Ok((info.id(), info.program_id()))
}
