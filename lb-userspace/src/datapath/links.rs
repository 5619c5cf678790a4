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
//!
//! `lb_tc_egress` runs at tcx egress of the same interfaces, pinned as
//! `<pin-dir>/egress-links/<interface>`; `lb_xdp`, on the interfaces
//! chosen for it, is attached the same way through an XDP link, pinned as
//! `<pin-dir>/xdp-links/<interface>`.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp,
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::{XdpLink, XdpMode},
};
use tracing::{info, warn};

/// Subdirectory of the pin directory holding one pinned tcx link per interface.
pub const LINKS_DIR: &str = "links";
/// The same for XDP links.
pub const XDP_LINKS_DIR: &str = "xdp-links";
/// The same for tcx egress links.
pub const EGRESS_LINKS_DIR: &str = "egress-links";

/// Where the tcx links of a pin directory are pinned.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(LINKS_DIR)
}

/// A program kind whose attachments are pinned links.
pub trait LinkedProgram {
    /// The hook, for messages.
    const HOOK: &'static str;
    /// Swaps this program into `link`, a pinned link of this kind.
    fn replace(&mut self, link: FdLink, path: &Path) -> Result<FdLink, ProgramError>;
    /// Attaches this program to `ifname` with a new link.
    fn attach_new(&mut self, ifname: &str) -> anyhow::Result<FdLink>;
}

impl LinkedProgram for SchedClassifier {
    const HOOK: &'static str = "tcx ingress";

    fn replace(&mut self, link: FdLink, path: &Path) -> Result<FdLink, ProgramError> {
        let link = SchedClassifierLink::try_from(link).map_err(|_| not_a_link_of::<Self>(path))?;
        let id = self.attach_to_link(link)?;
        self.take_link(id)?.try_into().map_err(|_| not_a_link_of::<Self>(path))
    }

    fn attach_new(&mut self, ifname: &str) -> anyhow::Result<FdLink> {
        let id = self
            .attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .with_context(|| format!("attaching to {ifname} ingress (tcx)"))?;
        Ok(self.take_link(id)?.try_into()?)
    }
}

/// A classifier attached at tcx egress (`lb_tc_egress`).
pub struct Egress<'a>(pub &'a mut SchedClassifier);

impl LinkedProgram for Egress<'_> {
    const HOOK: &'static str = "tcx egress";

    fn replace(&mut self, link: FdLink, path: &Path) -> Result<FdLink, ProgramError> {
        self.0.replace(link, path)
    }

    fn attach_new(&mut self, ifname: &str) -> anyhow::Result<FdLink> {
        let id = self
            .0
            .attach_with_options(ifname, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .with_context(|| format!("attaching to {ifname} egress (tcx)"))?;
        Ok(self.0.take_link(id)?.try_into()?)
    }
}

impl LinkedProgram for Xdp {
    const HOOK: &'static str = "XDP";

    fn replace(&mut self, link: FdLink, path: &Path) -> Result<FdLink, ProgramError> {
        let link = XdpLink::try_from(link).map_err(|_| not_a_link_of::<Self>(path))?;
        let id = self.attach_to_link(link)?;
        self.take_link(id)?.try_into().map_err(|_| not_a_link_of::<Self>(path))
    }

    /// The driver's native XDP when it has one, else the kernel's generic
    /// XDP (`XdpMode::Default` lets the kernel choose). Only a BPF link can
    /// be pinned: the netlink attachment older kernels fall back to is
    /// refused.
    fn attach_new(&mut self, ifname: &str) -> anyhow::Result<FdLink> {
        let id = self.attach(ifname, XdpMode::Default).with_context(|| format!("attaching XDP to {ifname}"))?;
        self.take_link(id)?.try_into().with_context(|| format!("XDP on {ifname} is not a BPF link (kernel < 5.9?)"))
    }
}

fn not_a_link_of<P: LinkedProgram>(path: &Path) -> ProgramError {
    ProgramError::IOError(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is not a {} link", path.display(), P::HOOK),
    ))
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
    /// Opens (creating it if needed) the tcx links directory of `pin_dir`.
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        Self::open_dir(links_dir(pin_dir))
    }

    /// Opens (creating it if needed) the tcx egress links directory of `pin_dir`.
    pub fn open_egress(pin_dir: &Path) -> anyhow::Result<Self> {
        Self::open_dir(pin_dir.join(EGRESS_LINKS_DIR))
    }

    /// Opens (creating it if needed) the XDP links directory of `pin_dir`.
    pub fn open_xdp(pin_dir: &Path) -> anyhow::Result<Self> {
        Self::open_dir(pin_dir.join(XDP_LINKS_DIR))
    }

    fn open_dir(dir: PathBuf) -> anyhow::Result<Self> {
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

    /// Runs `prog` on `ifname` (index `ifindex`): replaces the program of
    /// a pinned link if there is a live one, else attaches and pins a new
    /// link.
    pub fn attach<P: LinkedProgram>(&mut self, prog: &mut P, ifname: &str, ifindex: u32) -> anyhow::Result<Attached> {
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
pub(crate) fn adopt<P: LinkedProgram>(prog: &mut P, path: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    let pinned = match PinnedLink::from_pin(path) {
        Ok(pinned) => pinned,
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("opening pinned link {}", path.display())),
    };
    match prog.replace(FdLink::from(pinned), path) {
        Ok(link) => {
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

/// Attaches `prog` to `ifname` and pins the new link at `path`.
fn create<P: LinkedProgram>(prog: &mut P, ifname: &str, path: &Path) -> anyhow::Result<(u32, u32)> {
    let link = prog.attach_new(ifname)?;
    let info = link.info()?;
    // If pinning fails, `link` is dropped and the attachment goes with it.
    link.pin(path).with_context(|| format!("pinning link {}", path.display()))?;
    info!(interface = ifname, hook = P::HOOK, link_id = info.id(), "attached and pinned");
    Ok((info.id(), info.program_id()))
}
