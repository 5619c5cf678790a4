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
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
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

/// One interface, as the datapath needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// A veth (or netkit) whose other end is in another network namespace
    /// (a pod's): tc can hand it packets with `bpf_redirect_peer`.
    pub peer_elsewhere: bool,
}

/// A change to the set of interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link exists (new, or changed: renamed, up, down).
    Present { index: u32, link: Link },
    /// The link with this index is gone.
    Removed { index: u32, name: Option<String> },
    /// Notifications were lost: these are all the links there are now.
    Resync(BTreeMap<u32, Link>),
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// `Link` of a link message that names its interface. The kernel adds
/// the other end's namespace id (`IFLA_LINK_NETNSID`) only when that
/// namespace is not this one.
fn link_of(message: &LinkMessage) -> Option<Link> {
    let name = name_of(message)?;
    let paired = message.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => {
            infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth | InfoKind::Netkit)))
        }
        _ => false,
    });
    let elsewhere = message.attributes.iter().any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
    Some(Link { name, peer_elsewhere: paired && elsewhere })
}

/// Subscribes to link notifications, then lists the links there are now.
/// Both act on the calling thread's network namespace. Must run inside a
/// tokio runtime (the netlink connection is spawned on it).
pub async fn watch() -> anyhow::Result<(BTreeMap<u32, Link>, impl Stream<Item = LinkEvent> + Send + Unpin + 'static)> {
    let (connection, handle, messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).context("subscribing to link notifications")?;
    tokio::spawn(connection);
    let present = list(&handle).await?;
    let events = messages.filter_map(move |(message, _)| {
        let handle = handle.clone();
        async move {
            match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    link_of(&link).map(|found| LinkEvent::Present { index: link.header.index, link: found })
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
async fn list(handle: &rtnetlink::Handle) -> anyhow::Result<BTreeMap<u32, Link>> {
    let mut present = BTreeMap::new();
    let mut dump = handle.link().get().execute();
    while let Some(message) = dump.try_next().await.context("listing links")? {
        if let Some(link) = link_of(&message) {
            present.insert(message.header.index, link);
        }
    }
    Ok(present)
}

/// The links of the calling thread's network namespace now, for a caller
/// outside any tokio runtime (a runtime of its own runs the dump).
pub fn list_now() -> anyhow::Result<BTreeMap<u32, Link>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(connection);
        list(&handle).await
    })
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

    fn message(kind: Option<InfoKind>, peer_namespace: Option<i32>) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.attributes.push(LinkAttribute::IfName("if0".into()));
        if let Some(kind) = kind {
            message.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
        }
        if let Some(id) = peer_namespace {
            message.attributes.push(LinkAttribute::LinkNetNsId(id));
        }
        message
    }

    #[test]
    fn only_a_veth_or_netkit_with_its_other_end_elsewhere_takes_peer_redirects() {
        let peer = |kind, namespace| link_of(&message(kind, namespace)).unwrap().peer_elsewhere;
        assert!(peer(Some(InfoKind::Veth), Some(3)));
        assert!(peer(Some(InfoKind::Netkit), Some(0)));
        // Both ends here: a peer redirect would be dropped.
        assert!(!peer(Some(InfoKind::Veth), None));
        // Other kinds have no peer, wherever their link is.
        assert!(!peer(Some(InfoKind::Vxlan), Some(3)));
        assert!(!peer(None, None));
        assert_eq!(link_of(&LinkMessage::default()), None, "a message without a name names no link");
    }

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
