//! Every pinned link of a pin directory, whoever owns it: the agent's
//! (`links/<interface>` and `egress-links/<interface>`, selected by
//! `--interfaces`, and `xdp-links/<interface>`, by `--xdp-interfaces`)
//! and the CNI plugin's
//! (`cni-links/<attachment>`, `cni-egress-links/<attachment>`), with the
//! hook and interface each runs on
//! and its program (`lbctl links`).

use std::{ffi::CStr, path::Path};

use serde::Serialize;

use super::{
    chained::{self, LinkIds, PodHook},
    link_info,
    links::{self, links_dir},
};
use crate::cni::pin_name::AttachmentKey;

/// Who made a link, and so who removes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// lb-agent, for an interface its `--interfaces` selects.
    Agent,
    /// lb-cni, for a pod's interface; removed by the pod's DEL.
    Cni,
}

/// Where a link runs its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// tcx ingress: `lb_tc`.
    Tc,
    /// tcx egress: `lb_tc_egress`.
    #[serde(rename = "tc-egress")]
    TcEgress,
    /// XDP: `lb_xdp`.
    Xdp,
}

/// One pinned link.
#[derive(Clone, Debug, Serialize)]
pub struct PinnedLink {
    pub owner: Owner,
    pub hook: Hook,
    /// The pin's file name under its links directory.
    pub pin: String,
    /// The interface it runs on; None once that interface is gone. The
    /// kernel gives an index, named here in the caller's network
    /// namespace: run in the agent's (`lbctl --netns`).
    pub interface: Option<String>,
    /// For CNI links: the attachment (network, container id, interface
    /// name inside the pod).
    pub network: Option<String>,
    pub container_id: Option<String>,
    pub pod_interface: Option<String>,
    pub link_id: u32,
    pub program_id: u32,
    /// Whether it runs the program the agent pinned last for its hook
    /// (`progs/lb_tc`, `progs/lb_tc_egress`); None for XDP links, whose
    /// program is not pinned.
    pub current: Option<bool>,
}

/// All pinned links under `pin_dir`, the agent's first, each by name.
pub fn pinned_links(pin_dir: &Path) -> anyhow::Result<Vec<PinnedLink>> {
    let current_tc = chained::pinned_program_id(pin_dir, PodHook::Ingress)?;
    let current_egress = chained::pinned_program_id(pin_dir, PodHook::Egress)?;
    let mut out = Vec::new();
    let dirs = [
        (Owner::Agent, Hook::Tc, links_dir(pin_dir)),
        (Owner::Agent, Hook::TcEgress, pin_dir.join(links::EGRESS_LINKS_DIR)),
        (Owner::Agent, Hook::Xdp, pin_dir.join(links::XDP_LINKS_DIR)),
        (Owner::Cni, Hook::Tc, chained::cni_links_dir(pin_dir, PodHook::Ingress)),
        (Owner::Cni, Hook::TcEgress, chained::cni_links_dir(pin_dir, PodHook::Egress)),
    ];
    for (owner, hook, dir) in dirs {
        for pin in links::pinned_names(&dir)? {
            let path = dir.join(&pin);
            // Removed between the listing and now: not a link any more.
            let Some(LinkIds { link_id, program_id }) = chained::link_ids(&path)? else {
                continue;
            };
            let interface = link_info::interface_index(&path)?.and_then(interface_name);
            let key = (owner == Owner::Cni).then(|| AttachmentKey::from_pin_name(&pin)).flatten();
            out.push(PinnedLink {
                owner,
                hook,
                interface,
                network: key.as_ref().map(|k| k.network.clone()),
                container_id: key.as_ref().map(|k| k.container_id.clone()),
                pod_interface: key.map(|k| k.ifname),
                link_id,
                program_id,
                current: match hook {
                    Hook::Tc => Some(current_tc == Some(program_id)),
                    Hook::TcEgress => Some(current_egress == Some(program_id)),
                    Hook::Xdp => None,
                },
                pin,
            });
        }
    }
    Ok(out)
}

/// The name of interface `index` in the calling thread's namespace.
fn interface_name(index: u32) -> Option<String> {
    if index == 0 {
        return None;
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    Some(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}
