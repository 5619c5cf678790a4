//! Moves connected UDP sockets off removed backends.
//!
//! connect4 fixes a connected UDP socket's destination once; later
//! datagrams pass no hook, so a socket connected to a backend that has
//! left the Service would keep sending to it (the most reported complaint
//! about socket-level load balancing). kube-proxy's answer is to flush the
//! conntrack entries of a removed UDP endpoint; this one is the socket
//! equivalent, as Cilium does: `LB4_SOCK_REV` and `LB6_SOCK_REV` name
//! every translated socket with the backend id it got; once that id is
//! gone from its family's backend table (or names another address), the
//! socket is aborted
//! (`sock_diag`) and its entry dropped. The application's next call fails
//! with ECONNABORTED; it reconnects and connect4 picks a live backend.
//! TCP sockets are left alone: like kube-proxy, established connections
//! keep their backend until they end.

use std::{collections::BTreeSet, net::IpAddr, path::Path};

use anyhow::Context as _;
use aya::maps::{HashMap, IterableMap as _, Map, MapData};
use lb_common::{
    backend::{BackendV4, BackendV6},
    maps as names, proto,
    sock::{SockRevKeyV4, SockRevKeyV6, SockRevValueV4, SockRevValueV6},
};

use crate::{
    datapath::batch,
    sock_diag::{self, Family},
};

/// A reverse-NAT entry's parts the sweep compares, for either family.
pub trait RevEntry {
    type Key: Copy;
    type Backend;
    fn key(&self) -> Self::Key;
    fn proto(&self) -> u8;
    fn backend_id(&self) -> u32;
    /// Whether `backend` is still the endpoint the socket was sent to.
    fn still(&self, backend: &Self::Backend) -> bool;
    /// (socket cookie, backend address, backend port).
    fn target(&self) -> (u64, IpAddr, u16);
}

impl RevEntry for (SockRevKeyV4, SockRevValueV4) {
    type Key = SockRevKeyV4;
    type Backend = BackendV4;
    fn key(&self) -> SockRevKeyV4 {
        self.0
    }
    fn proto(&self) -> u8 {
        self.0.proto
    }
    fn backend_id(&self) -> u32 {
        self.1.backend_id
    }
    fn still(&self, b: &BackendV4) -> bool {
        (b.address, b.port, b.proto) == (self.0.address, self.0.port, self.0.proto)
    }
    fn target(&self) -> (u64, IpAddr, u16) {
        (self.0.cookie, IpAddr::from(self.0.address), self.0.port)
    }
}

impl RevEntry for (SockRevKeyV6, SockRevValueV6) {
    type Key = SockRevKeyV6;
    type Backend = BackendV6;
    fn key(&self) -> SockRevKeyV6 {
        self.0
    }
    fn proto(&self) -> u8 {
        self.0.proto
    }
    fn backend_id(&self) -> u32 {
        self.1.backend_id
    }
    fn still(&self, b: &BackendV6) -> bool {
        (b.address, b.port, b.proto) == (self.0.address, self.0.port, self.0.proto)
    }
    fn target(&self) -> (u64, IpAddr, u16) {
        (self.0.cookie, IpAddr::from(self.0.address), self.0.port)
    }
}

/// The UDP entries whose backend is gone: its id no longer exists, or
/// now names another endpoint.
pub fn stale<E: RevEntry>(entries: &[E], backend: impl Fn(u32) -> Option<E::Backend>) -> Vec<&E> {
    entries
        .iter()
        .filter(|e| e.proto() == proto::UDP)
        .filter(|e| backend(e.backend_id()).is_none_or(|b| !e.still(&b)))
        .collect()
}

fn open<K: aya::Pod, V: aya::Pod>(pin_dir: &Path, name: &str) -> anyhow::Result<HashMap<MapData, K, V>> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(Map::from_map_data(data)?.try_into()?)
}

/// The stale UDP entries of one family's reverse-NAT map: removed from
/// it, their (cookie, backend address, backend port) returned.
fn take_stale<K: aya::Pod, V: aya::Pod, B: aya::Pod>(
    pin_dir: &Path,
    rev_map: &str,
    backends_map: &str,
) -> anyhow::Result<Vec<(u64, IpAddr, u16)>>
where
    (K, V): RevEntry<Key = K, Backend = B>,
{
    let mut rev: HashMap<MapData, K, V> = open(pin_dir, rev_map)?;
    let entries: Vec<(K, V)> = match batch::lookup_all(rev.map())? {
        Some(entries) => entries,
        None => rev.iter().collect::<Result<_, _>>()?,
    };
    if !entries.iter().any(|e| e.proto() == proto::UDP) {
        return Ok(Vec::new());
    }
    let backends: HashMap<MapData, u32, B> = open(pin_dir, backends_map)?;
    let stale = stale(&entries, |id| backends.get(&id, 0).ok());
    for entry in &stale {
        // Already evicted by the LRU: fine.
        let _ = rev.remove(&entry.key());
    }
    Ok(stale.iter().map(|e| e.target()).collect())
}

/// One pass over the pinned maps under `pin_dir`: aborts the UDP sockets
/// whose backend is gone and drops their entries. Returns how many
/// sockets were aborted. An IPv6 socket sent to an IPv4-mapped address
/// stands in the IPv4 table, and is found by its mapped destination.
pub fn sweep(pin_dir: &Path) -> anyhow::Result<usize> {
    let mut targets: BTreeSet<(u64, IpAddr, u16)> = BTreeSet::new();
    targets.extend(take_stale::<SockRevKeyV4, SockRevValueV4, BackendV4>(
        pin_dir,
        names::SOCK_REV_V4,
        names::BACKENDS_V4,
    )?);
    targets.extend(take_stale::<SockRevKeyV6, SockRevValueV6, BackendV6>(
        pin_dir,
        names::SOCK_REV_V6,
        names::BACKENDS_V6,
    )?);
    if targets.is_empty() {
        return Ok(0);
    }
    let mut aborted = 0;
    for family in [Family::V4, Family::V6] {
        for socket in sock_diag::udp_sockets(family).context("listing UDP sockets")? {
            let (address, port) = socket.destination(family);
            let address = unmapped(address);
            if targets.contains(&(socket.cookie(), address, port)) {
                sock_diag::destroy_udp(family, socket).context("aborting a UDP socket")?;
                aborted += 1;
            }
        }
    }
    Ok(aborted)
}

/// `::ffff:a.b.c.d` as the IPv4 address it stands for.
fn unmapped(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    const UDP_BACKEND: BackendV4 = BackendV4 { address: [10, 244, 1, 2], port: 5353, proto: proto::UDP, flags: 0 };

    fn entry(proto: u8, backend_id: u32) -> (SockRevKeyV4, SockRevValueV4) {
        (SockRevKeyV4::new(7, [10, 244, 1, 2], 5353, proto), SockRevValueV4::new([10, 96, 0, 53], 53, backend_id))
    }

    #[test]
    fn a_udp_socket_whose_backend_id_is_gone_is_stale() {
        let entries = [entry(proto::UDP, 1), entry(proto::UDP, 2)];
        let live = |id| (id == 1).then_some(UDP_BACKEND);
        assert_eq!(stale(&entries, live), vec![&entries[1]]);
    }

    #[test]
    fn an_ipv6_entry_is_judged_against_ipv6_backends() {
        let address: [u8; 16] = "fd00:244:1::2".parse::<Ipv6Addr>().unwrap().octets();
        let entry = (SockRevKeyV6::new(7, address, 5353, proto::UDP), SockRevValueV6::new([0; 16], 53, 1));
        let live = BackendV6 { address, port: 5353, proto: proto::UDP, flags: 0 };
        assert!(stale(&[entry], |_| Some(live)).is_empty());
        assert_eq!(stale(&[entry], |_| None).len(), 1);
        assert_eq!(entry.target(), (7, IpAddr::from(address), 5353));
    }

    #[test]
    fn a_mapped_destination_is_the_ipv4_address_it_stands_for() {
        let mapped: IpAddr = "::ffff:10.244.1.2".parse().unwrap();
        assert_eq!(unmapped(mapped), "10.244.1.2".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(unmapped(v6), v6);
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
