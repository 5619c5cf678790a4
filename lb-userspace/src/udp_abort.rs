//! Moves connected UDP sockets off removed backends.
//!
//! connect4 fixes a connected UDP socket's destination once; later
//! datagrams pass no hook, so a socket connected to a backend that has
//! left the Service would keep sending to it (the most reported complaint
//! about socket-level load balancing). kube-proxy's answer is to flush the
//! conntrack entries of a removed UDP endpoint; this one is the socket
//! equivalent, as Cilium does: `LB4_SOCK_REV` names every translated
//! socket with the backend id it got; once that id is gone from
//! `LB4_BACKENDS` (or names another address), the socket is aborted
//! (`sock_diag`) and its entry dropped. The application's next call fails
//! with ECONNABORTED; it reconnects and connect4 picks a live backend.
//! TCP sockets are left alone: like kube-proxy, established connections
//! keep their backend until they end.

use std::{collections::BTreeSet, path::Path};

use anyhow::Context as _;
use aya::maps::{HashMap, IterableMap as _, Map, MapData};
use lb_common::{
    backend::BackendV4,
    maps as names, proto,
    sock::{SockRevKeyV4, SockRevValueV4},
};

use crate::{datapath::batch, sock_diag};

/// The UDP entries whose backend is gone: its id no longer exists, or
/// now names another endpoint.
pub fn stale(
    entries: &[(SockRevKeyV4, SockRevValueV4)],
    backend: impl Fn(u32) -> Option<BackendV4>,
) -> Vec<SockRevKeyV4> {
    entries
        .iter()
        .filter(|(key, _)| key.proto == proto::UDP)
        .filter(|(key, value)| {
            backend(value.backend_id).is_none_or(|b| (b.address, b.port, b.proto) != (key.address, key.port, key.proto))
        })
        .map(|(key, _)| *key)
        .collect()
}

fn open<K: aya::Pod, V: aya::Pod>(pin_dir: &Path, name: &str) -> anyhow::Result<HashMap<MapData, K, V>> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(Map::from_map_data(data)?.try_into()?)
}

/// One pass over the pinned maps under `pin_dir`: aborts the UDP sockets
/// whose backend is gone and drops their entries. Returns how many
/// sockets were aborted.
pub fn sweep(pin_dir: &Path) -> anyhow::Result<usize> {
    let mut rev: HashMap<MapData, SockRevKeyV4, SockRevValueV4> = open(pin_dir, names::SOCK_REV_V4)?;
    let entries: Vec<(SockRevKeyV4, SockRevValueV4)> = match batch::lookup_all(rev.map())? {
        Some(entries) => entries,
        None => rev.iter().collect::<Result<_, _>>()?,
    };
    if !entries.iter().any(|(key, _)| key.proto == proto::UDP) {
        return Ok(0);
    }
    let backends: HashMap<MapData, u32, BackendV4> = open(pin_dir, names::BACKENDS_V4)?;
    let stale = stale(&entries, |id| backends.get(&id, 0).ok());
    if stale.is_empty() {
        return Ok(0);
    }
    let targets: BTreeSet<(u64, [u8; 4], u16)> = stale.iter().map(|k| (k.cookie, k.address, k.port)).collect();
    let mut aborted = 0;
    for socket in sock_diag::udp_sockets().context("listing UDP sockets")? {
        let (address, port) = socket.destination();
        if targets.contains(&(socket.cookie(), address, port)) {
            sock_diag::destroy_udp(socket).context("aborting a UDP socket")?;
            aborted += 1;
        }
    }
    for key in &stale {
        // Already evicted by the LRU: fine.
        let _ = rev.remove(key);
    }
    Ok(aborted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP_BACKEND: BackendV4 = BackendV4 { address: [10, 244, 1, 2], port: 5353, proto: proto::UDP, flags: 0 };

    fn entry(proto: u8, backend_id: u32) -> (SockRevKeyV4, SockRevValueV4) {
        (SockRevKeyV4::new(7, [10, 244, 1, 2], 5353, proto), SockRevValueV4::new([10, 96, 0, 53], 53, backend_id))
    }

    #[test]
    fn a_udp_socket_whose_backend_id_is_gone_is_stale() {
        let entries = [entry(proto::UDP, 1), entry(proto::UDP, 2)];
        let live = |id| (id == 1).then_some(UDP_BACKEND);
        assert_eq!(stale(&entries, live), vec![entries[1].0]);
    }

    #[test]
    fn a_backend_id_naming_another_endpoint_is_stale() {
        let moved = BackendV4 { address: [10, 244, 9, 9], ..UDP_BACKEND };
        assert_eq!(stale(&[entry(proto::UDP, 1)], |_| Some(moved)).len(), 1);
    }

    #[test]
    fn tcp_sockets_are_never_stale() {
        assert!(stale(&[entry(proto::TCP, 1)], |_| None).is_empty());
    }
}
