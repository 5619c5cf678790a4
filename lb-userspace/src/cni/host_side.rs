//! Which interface of the node serves a pod: the host-side end of the
//! veth whose other end is `CNI_IFNAME` in `CNI_NETNS`.
//!
//! The kernel knows the answer: the container interface's `IFLA_LINK` is
//! its peer's index in the node's namespace, and the peer's `IFLA_LINK`
//! points back. That is asked first. `prevResult` lists host interfaces
//! too (without `sandbox`), but with the reference `bridge` plugin it
//! lists two, the bridge and the veth; it decides only when the kernel
//! cannot (no veth) and it names exactly one.

use std::path::Path;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use nix::sched::{CloneFlags, setns};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use serde::Deserialize;

/// The host interfaces a `prevResult` lists (those without a `sandbox`).
pub fn listed_host_interfaces(prev_result: &str) -> Result<Vec<String>, serde_json::Error> {
    #[derive(Deserialize)]
    struct PrevResult {
        #[serde(default)]
        interfaces: Vec<Interface>,
    }
    #[derive(Deserialize)]
    struct Interface {
        name: String,
        #[serde(default)]
        sandbox: Option<String>,
    }
    let prev: PrevResult = serde_json::from_str(prev_result)?;
    Ok(prev.interfaces.into_iter().filter(|i| i.sandbox.as_deref().unwrap_or("").is_empty()).map(|i| i.name).collect())
}

/// The interface to attach to: the veth peer when the kernel named one,
/// else the only host interface `prevResult` lists.
pub fn choose(peer: Option<&str>, listed: &[String]) -> Result<String, String> {
    if let Some(peer) = peer {
        return Ok(peer.to_owned());
    }
    match listed {
        [one] => Ok(one.clone()),
        [] => Err("the container interface is not a veth and prevResult lists no host interface".into()),
        many => Err(format!(
            "the container interface is not a veth and prevResult lists several host interfaces ({}): \
             cannot tell which one carries the pod's traffic",
            many.join(", ")
        )),
    }
}

/// A link's index and its `IFLA_LINK` (a veth's peer index).
fn index_and_link(msg: &LinkMessage) -> (u32, Option<u32>) {
    let link = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(peer) => Some(*peer),
        _ => None,
    });
    (msg.header.index, link)
}

fn name_of(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// Whether the namespace at `netns` can be opened (the container exists).
pub fn netns_exists(netns: &Path) -> bool {
    std::fs::File::open(netns).is_ok()
}

/// The name, in the calling thread's namespace, of the veth peer of
/// `ifname` in the namespace at `netns`; None when `ifname` has no peer
/// here (not a veth, or its peer is elsewhere).
pub fn veth_peer(netns: &Path, ifname: &str) -> anyhow::Result<Option<String>> {
    let (netns, name) = (netns.to_owned(), ifname.to_owned());
    // A thread of its own enters the container's namespace; the netlink
    // socket it opens there stays bound to that namespace.
    let inside = std::thread::spawn(move || -> anyhow::Result<(u32, Option<u32>)> {
        let file = std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {}", netns.display()))?;
        let msg = runtime()?
            .block_on(get_link(Query::Name(name.clone())))?
            .with_context(|| format!("no interface {name} in {}", netns.display()))?;
        Ok(index_and_link(&msg))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread reading the container's namespace panicked"))??;
    let (index, Some(peer)) = inside else {
        return Ok(None);
    };
    let Some(host) = runtime()?.block_on(get_link(Query::Index(peer)))? else {
        return Ok(None);
    };
    // The index is the peer's in *its* namespace: only a link pointing
    // back proves it is this namespace.
    if index_and_link(&host).1 != Some(index) {
        return Ok(None);
    }
    Ok(name_of(&host))
}

enum Query {
    Name(String),
    Index(u32),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_io().build().context("starting a netlink runtime")
}

/// One link by name or index; None if there is no such link.
async fn get_link(query: Query) -> anyhow::Result<Option<LinkMessage>> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    let request = match query {
        Query::Name(name) => handle.link().get().match_name(name),
        Query::Index(index) => handle.link().get().match_index(index),
    };
    match request.execute().try_next().await {
        Ok(msg) => Ok(msg),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).context("reading a link over netlink"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the reference bridge plugin returns (trimmed): the bridge, the
    /// host veth, and the pod's interface.
    const BRIDGE_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[
        {"name":"cni0","mac":"aa:bb:cc:00:00:01"},
        {"name":"veth1234","mac":"aa:bb:cc:00:00:02"},
        {"name":"eth0","mac":"aa:bb:cc:00:00:03","sandbox":"/run/netns/pod"}],
        "ips":[{"interface":2,"address":"10.22.0.2/24","gateway":"10.22.0.1"}]}"#;

    #[test]
    fn host_interfaces_are_those_without_a_sandbox() {
        assert_eq!(listed_host_interfaces(BRIDGE_RESULT).unwrap(), ["cni0", "veth1234"]);
        assert_eq!(listed_host_interfaces(r#"{"interfaces":[{"name":"v","sandbox":""}]}"#).unwrap(), ["v"]);
        assert!(listed_host_interfaces(r#"{"cniVersion":"1.0.0"}"#).unwrap().is_empty());
        assert!(listed_host_interfaces(r#""not an object""#).is_err());
    }

    #[test]
    fn the_veth_peer_wins_else_a_single_listed_interface() {
        let listed = listed_host_interfaces(BRIDGE_RESULT).unwrap();
        assert_eq!(choose(Some("veth1234"), &listed), Ok("veth1234".into()));
        let err = choose(None, &listed).unwrap_err();
        assert!(err.contains("cni0, veth1234"), "{err}");
        assert_eq!(choose(None, &["veth9".into()]), Ok("veth9".into()));
        assert!(choose(None, &[]).is_err());
    }
}
