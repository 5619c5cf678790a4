//! Keeps the datapath attached to exactly the selected interfaces: at
//! start from a link dump (adopting the pinned links of an earlier agent,
//! dropping those of interfaces gone since), then from link notifications.
//! `lb_tc` runs at tcx ingress of the `--interfaces` and `lb_tc_egress`
//! at their tcx egress (`with_egress`); `lb_xdp`, when
//! `--xdp-interfaces` names any, at XDP of those, each of which is also
//! entered in `LB_XDP_DEVICES` (where XDP may redirect to) before the
//! program runs there. Each `lb_tc` interface that is a veth with its
//! other end in another namespace (a pod's) is entered in
//! `LB_PEER_DEVICES`, so tc hands packets routed there straight to that
//! end (`bpf_redirect_peer`).

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{DevMapHash, HashMap},
};
use futures::{Stream, StreamExt as _};
use lb_common::maps as names;
use tracing::{debug, info, warn};

use super::{
    interfaces::{Link, LinkEvent, Selector},
    links::{self, Attached, Attachments},
    loader, maps,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Tc,
    TcEgress,
    Xdp,
}

/// One hook's interfaces.
#[derive(Debug)]
struct Hooked {
    hook: Hook,
    attachments: Attachments,
    selector: Selector,
    peers: PeerRedirects,
}

/// The loaded object (it owns the programs) and where they run.
#[derive(Debug)]
pub struct Attacher {
    ebpf: Ebpf,
    hooks: Vec<Hooked>,
}

/// Whether `lb_tc` interfaces with a peer elsewhere are entered in
/// `LB_PEER_DEVICES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerRedirects {
    On,
    Off,
}

impl Attacher {
    /// `lb_tc` on the interfaces `selector` picks.
    pub fn new(ebpf: Ebpf, attachments: Attachments, selector: Selector) -> Self {
        Self { ebpf, hooks: vec![Hooked { hook: Hook::Tc, attachments, selector, peers: PeerRedirects::On }] }
    }

    /// Also `lb_tc_egress` at tcx egress of the interfaces `lb_tc` runs on
    /// (`attachments`: `Attachments::open_egress`).
    pub fn with_egress(mut self, attachments: Attachments) -> Self {
        let selector = self.hooks.iter().find(|h| h.hook == Hook::Tc).map(|h| h.selector.clone());
        if let Some(selector) = selector {
            self.hooks.push(Hooked { hook: Hook::TcEgress, attachments, selector, peers: PeerRedirects::Off });
        }
        self
    }

    /// Also `lb_xdp` on the interfaces `selector` picks (`attachments`:
    /// `Attachments::open_xdp`).
    pub fn with_xdp(mut self, attachments: Attachments, selector: Selector) -> Self {
        self.hooks.push(Hooked { hook: Hook::Xdp, attachments, selector, peers: PeerRedirects::Off });
        self
    }

    /// `lb_tc` sends packets for pods to the node's end of their veths,
    /// never to a peer (`--redirect-to-peer=false`). The map is this
    /// agent's own and starts empty: nothing to undo.
    pub fn without_peer_redirects(mut self) -> Self {
        for hooked in &mut self.hooks {
            hooked.peers = PeerRedirects::Off;
        }
        self
    }

    /// Interfaces `lb_tc` runs on now.
    pub fn attached(&self) -> Vec<String> {
        self.attached_at(Hook::Tc)
    }

    /// Interfaces `lb_xdp` runs on now.
    pub fn attached_xdp(&self) -> Vec<String> {
        self.attached_at(Hook::Xdp)
    }

    fn attached_at(&self, hook: Hook) -> Vec<String> {
        self.hooks.iter().filter(|h| h.hook == hook).flat_map(|h| h.attachments.attached().keys().cloned()).collect()
    }

    /// Attaches to every selected interface in `present` and removes the
    /// pinned links of every other name.
    pub fn attach_present(&mut self, present: &BTreeMap<u32, Link>) -> anyhow::Result<()> {
        let mut failed = Ok(());
        for hooked in &mut self.hooks {
            if let Err(e) = hooked.attach_present(&mut self.ebpf, present) {
                failed = Err(e);
            }
        }
        failed
    }

    /// Applies one link notification.
    pub fn apply(&mut self, event: &LinkEvent) -> anyhow::Result<()> {
        let mut failed = Ok(());
        for hooked in &mut self.hooks {
            if let Err(e) = hooked.apply(&mut self.ebpf, event) {
                failed = Err(e);
            }
        }
        failed
    }

    /// Follows link notifications until the stream ends. A failed
    /// attachment is logged and the next notification for that interface
    /// retries it (an interface can vanish while being attached).
    pub async fn follow(mut self, mut events: impl Stream<Item = LinkEvent> + Unpin) {
        while let Some(event) = events.next().await {
            debug!(?event, "link notification");
            if let Err(e) = self.apply(&event) {
                warn!("{e:#}");
            }
        }
        warn!("link notifications ended: interfaces are no longer followed");
    }
}

impl Hooked {
    fn attach_present(&mut self, ebpf: &mut Ebpf, present: &BTreeMap<u32, Link>) -> anyhow::Result<()> {
        let selected: BTreeMap<&str, (u32, bool)> = present
            .iter()
            .filter(|(_, link)| self.selector.matches(&link.name))
            .map(|(i, link)| (link.name.as_str(), (*i, link.peer_elsewhere)))
            .collect();
        for name in self.attachments.pinned()? {
            if !selected.contains_key(name.as_str()) {
                info!(interface = name, hook = ?self.hook, "removing the pinned link of an interface gone or no longer selected");
                self.remove(ebpf, &name)?;
            }
        }
        // Every interface is tried: one that vanished while being attached
        // must not leave the others unattached.
        let mut failed = Ok(());
        for (name, (index, peer_elsewhere)) in selected {
            if let Err(e) = self.attach(ebpf, name, index, peer_elsewhere) {
                warn!("{e:#}");
                failed = Err(e);
            }
        }
        failed
    }

    fn attach(&mut self, ebpf: &mut Ebpf, name: &str, index: u32, peer_elsewhere: bool) -> anyhow::Result<()> {
        let attached = match self.hook {
            Hook::Tc => {
                let peer_elsewhere = peer_elsewhere && self.peers == PeerRedirects::On;
                set_peer_device(ebpf, index, peer_elsewhere)
                    .with_context(|| format!("entering {name} in {}", names::PEER_DEVICES))?;
                self.attachments.attach(loader::program(ebpf, loader::TC_PROGRAM)?, name, index)?
            }
            Hook::TcEgress => {
                let mut egress = links::Egress(loader::program(ebpf, loader::EGRESS_PROGRAM)?);
                self.attachments.attach(&mut egress, name, index)?
            }
            Hook::Xdp => {
                // Listed first: the program may send there as soon as it runs.
                xdp_devices(ebpf)?
                    .insert(index, index, None, 0)
                    .with_context(|| format!("entering {name} in {}", names::XDP_DEVICES))?;
                self.attachments.attach(loader::xdp_program(ebpf)?, name, index)?
            }
        };
        match attached {
            Attached::Adopted { link_id, program_id } => {
                info!(interface = name, hook = ?self.hook, link_id, program_id, "pinned link adopted: program replaced in place");
            }
            Attached::Created { link_id, program_id } => {
                info!(interface = name, hook = ?self.hook, link_id, program_id, "attached")
            }
            Attached::Already => {}
        }
        Ok(())
    }

    /// Detaches `name` (its pinned link goes) and stops redirecting
    /// there: for XDP, and for tc to its peer.
    fn remove(&mut self, ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
        let index = self.attachments.attached().get(name).copied();
        self.attachments.remove(name)?;
        match (self.hook, index) {
            // Already gone when the interface itself went.
            (Hook::Xdp, Some(index)) => {
                let _ = xdp_devices(ebpf)?.remove(index);
            }
            (Hook::Tc, Some(index)) => set_peer_device(ebpf, index, false)?,
            _ => {}
        }
        Ok(())
    }

    fn apply(&mut self, ebpf: &mut Ebpf, event: &LinkEvent) -> anyhow::Result<()> {
        match event {
            LinkEvent::Present { index, link } => {
                let (index, name) = (*index, link.name.as_str());
                // A renamed interface keeps its index: its old name's pin goes.
                if let Some(old) = self.attachments.name_of(index).filter(|old| old != name) {
                    self.remove(ebpf, &old)?;
                }
                if self.selector.matches(name) {
                    self.attach(ebpf, name, index, link.peer_elsewhere)?;
                }
            }
            LinkEvent::Removed { index, name } => {
                let named = name.as_ref().filter(|n| self.selector.matches(n)).cloned();
                if let Some(name) = self.attachments.name_of(*index).or(named) {
                    info!(interface = name, "interface removed: removing its pinned link");
                    self.remove(ebpf, &name)?;
                }
            }
            LinkEvent::Resync(present) => self.attach_present(ebpf, present)?,
        }
        Ok(())
    }
}

fn xdp_devices(ebpf: &mut Ebpf) -> anyhow::Result<DevMapHash<&mut aya::maps::MapData>> {
    let map = ebpf.map_mut(names::XDP_DEVICES).with_context(|| format!("map {}", names::XDP_DEVICES))?;
    Ok(DevMapHash::try_from(map)?)
}

/// Enters interface `index` in `LB_PEER_DEVICES`, or takes it out.
pub fn set_peer_device(ebpf: &mut Ebpf, index: u32, peer_elsewhere: bool) -> anyhow::Result<()> {
    let map = ebpf.map_mut(names::PEER_DEVICES).with_context(|| format!("map {}", names::PEER_DEVICES))?;
    let mut devices: HashMap<_, u32, u8> = HashMap::try_from(map)?;
    if peer_elsewhere {
        devices.insert(index, 1, 0)?;
        return Ok(());
    }
    match devices.remove(&index) {
        Ok(()) => Ok(()),
        // Not entered: the usual case, for every other interface.
        Err(e) if maps::is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
