//! Which interfaces the datapath runs on, and following them as they come
//! and go (pods' veths appear and disappear all the time).
//!
//! Interfaces are selected by name patterns; the current set comes from an
//! rtnetlink link dump, changes from the kernel's link notifications
//! (RTNLGRP_LINK). The notification socket is subscribed before the dump,
//! so a link created in between is seen at least once. The kernel drops
//! notifications when the socket's buffer is full (a burst of pods, or an
//! agent that was paused); the socket then reports an overrun, and the
//! links are listed again so none is missed.

use std::collections::BTreeMap;

use anyhow::Context as _;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
    },
};
use tracing::warn;

/// Name patterns selecting interfaces: `*` matches any run of characters;
/// `*` alone (or `all`) selects every interface except loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    patterns: Vec<String>,
}

impl Selector {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        let patterns = patterns
            .iter()
            .map(|p| p.as_ref().trim())
            .filter(|p| !p.is_empty())
            .map(|p| if p == "all" { "*".to_owned() } else { p.to_owned() })
            .collect();
        Self { patterns }
    }

    /// Whether `name` is selected. Loopback is selected only by name.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| if name == "lo" { p == "lo" } else { glob(p, name) })
    }
}

/// Shell-style match where `*` is the only wildcard.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            let Some(tail) = name.strip_prefix(prefix) else {
                return false;
            };
            (0..=tail.len()).filter(|&i| tail.is_char_boundary(i)).any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// A change to the set of interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link exists (new, or changed: renamed, up, down) with this name.
    Present { index: u32, name: String },
    /// The link with this index is gone.
    Removed { index: u32, name: Option<String> },
    /// Notifications were lost: these are all the links there are now.
    Resync(BTreeMap<u32, String>),
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// Subscribes to link notifications, then lists the links there are now.
/// Both act on the calling thread's network namespace. Must run inside a
/// tokio runtime (the netlink connection is spawned on it).
pub async fn watch() -> anyhow::Result<(BTreeMap<u32, String>, impl Stream<Item = LinkEvent> + Send + Unpin + 'static)>
{
    let (connection, handle, messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).context("subscribing to link notifications")?;
    tokio::spawn(connection);
    let present = list(&handle).await?;
    let events = messages.filter_map(move |(message, _)| {
        let handle = handle.clone();
        async move {
            match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    name_of(&link).map(|name| LinkEvent::Present { index: link.header.index, name })
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    Some(LinkEvent::Removed { index: link.header.index, name: name_of(&link) })
                }
                NetlinkPayload::Overrun(_) => relist(&handle).await,
                _ => None,
            }
        }
    });
    Ok((present, Box::pin(events)))
}

/// The links there are now, by index.
async fn list(handle: &rtnetlink::Handle) -> anyhow::Result<BTreeMap<u32, String>> {
    let mut present = BTreeMap::new();
    let mut dump = handle.link().get().execute();
    while let Some(link) = dump.try_next().await.context("listing links")? {
        if let Some(name) = name_of(&link) {
            present.insert(link.header.index, name);
        }
    }
    Ok(present)
}

/// After an overrun. A failed listing is logged; the next overrun, or the
/// next notification of each link, catches up.
async fn relist(handle: &rtnetlink::Handle) -> Option<LinkEvent> {
    warn!("link notifications were lost (socket buffer full): listing links again");
    match list(handle).await {
        Ok(present) => Some(LinkEvent::Resync(present)),
        Err(e) => {
            warn!("{e:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_selects_everything_but_loopback() {
        for s in [Selector::new(&["*"]), Selector::new(&["all"])] {
            assert!(s.matches("eth0") && s.matches("veth1234") && s.matches("to-b1"));
            assert!(!s.matches("lo"));
        }
    }

    #[test]
    fn patterns_and_names() {
        let s = Selector::new(&["veth*", "eth0", "lo"]);
        assert!(s.matches("veth") && s.matches("vethabc") && s.matches("eth0") && s.matches("lo"));
        assert!(!s.matches("eth1") && !s.matches("xveth") && !s.matches("eth00"));
        let mid = Selector::new(&["to-*-x"]);
        assert!(mid.matches("to-b1-x") && mid.matches("to--x") && !mid.matches("to-b1"));
    }
}
