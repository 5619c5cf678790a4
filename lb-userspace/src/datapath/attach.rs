//! Keeps the datapath attached to exactly the selected interfaces: at
//! start from a link dump (adopting the pinned links of an earlier agent,
//! dropping those of interfaces gone since), then from link notifications.

use std::collections::BTreeMap;

use aya::Ebpf;
use futures::{Stream, StreamExt as _};
use tracing::{debug, info, warn};

use super::{
    interfaces::{LinkEvent, Selector},
    links::{Attached, Attachments},
    loader,
};

/// The loaded object (it owns the program) and where it runs.
#[derive(Debug)]
pub struct Attacher {
    ebpf: Ebpf,
    attachments: Attachments,
    selector: Selector,
}

impl Attacher {
    pub fn new(ebpf: Ebpf, attachments: Attachments, selector: Selector) -> Self {
        Self { ebpf, attachments, selector }
    }

    /// Interfaces attached now.
    pub fn attached(&self) -> Vec<String> {
        self.attachments.attached().keys().cloned().collect()
    }

    /// Attaches to every selected interface in `present` and removes the
    /// pinned links of every other name.
    pub fn attach_present(&mut self, present: &BTreeMap<u32, String>) -> anyhow::Result<()> {
        let selected: BTreeMap<&str, u32> =
            present.iter().filter(|(_, name)| self.selector.matches(name)).map(|(i, n)| (n.as_str(), *i)).collect();
        for name in self.attachments.pinned()? {
            if !selected.contains_key(name.as_str()) {
                info!(interface = name, "removing the pinned link of an interface gone or no longer selected");
                self.attachments.remove(&name)?;
            }
        }
        // Every interface is tried: one that vanished while being attached
        // must not leave the others unattached.
        let mut failed = Ok(());
        for (name, index) in selected {
            if let Err(e) = self.attach(name, index) {
                warn!("{e:#}");
                failed = Err(e);
            }
        }
        failed
    }

    fn attach(&mut self, name: &str, index: u32) -> anyhow::Result<()> {
        let prog = loader::program(&mut self.ebpf, loader::TC_PROGRAM)?;
        match self.attachments.attach(prog, name, index)? {
            Attached::Adopted { link_id, program_id } => {
                info!(interface = name, link_id, program_id, "pinned link adopted: program replaced in place");
            }
            Attached::Created { link_id, program_id } => info!(interface = name, link_id, program_id, "attached"),
            Attached::Already => {}
        }
        Ok(())
    }

    /// Applies one link notification.
    pub fn apply(&mut self, event: LinkEvent) -> anyhow::Result<()> {
        match event {
            LinkEvent::Present { index, name } => {
                // A renamed interface keeps its index: its old name's pin goes.
                if let Some(old) = self.attachments.name_of(index).filter(|old| *old != name) {
                    self.attachments.remove(&old)?;
                }
                if self.selector.matches(&name) {
                    self.attach(&name, index)?;
                }
            }
            LinkEvent::Removed { index, name } => {
                if let Some(name) = self.attachments.name_of(index).or(name.filter(|n| self.selector.matches(n))) {
                    info!(interface = name, "interface removed: removing its pinned link");
                    self.attachments.remove(&name)?;
                }
            }
            LinkEvent::Resync(present) => self.attach_present(&present)?,
        }
        Ok(())
    }

    /// Follows link notifications until the stream ends. A failed
    /// attachment is logged and the next notification for that interface
    /// retries it (an interface can vanish while being attached).
    pub async fn follow(mut self, mut events: impl Stream<Item = LinkEvent> + Unpin) {
        while let Some(event) = events.next().await {
            debug!(?event, "link notification");
            if let Err(e) = self.apply(event) {
                warn!("{e:#}");
            }
        }
        warn!("link notifications ended: interfaces are no longer followed");
    }
}
