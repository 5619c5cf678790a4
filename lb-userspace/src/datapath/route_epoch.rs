//! The route epoch (`LB_ROUTE_EPOCH`): the number under which the
//! datapath keeps each established flow's route on its conntrack entry,
//! with the backend the route leads to, so that the flow's packets skip
//! the route and backend lookups. A kept route is used only while the
//! epoch it was kept under is current, so moving the epoch makes every
//! flow look its route and backend up again on its next packet.
//!
//! The agent moves it when it starts (routes kept before it ran may be
//! stale), whenever the kernel announces a change to anything a route
//! lookup reads: routes, rules and nexthops, neighbours (a next hop's
//! MAC), links (up, down, MTU, MAC), addresses, and forwarding settings,
//! and after a sync that removed an IPv4 backend (`advance_pinned`, from
//! `ServiceMaps`), so a flow whose backend went is balanced afresh.
//! Notifications are subscribed before the first move, so none is missed
//! in between; those that arrive together move it once. Lost notifications
//! (the socket's buffer was full) move it too. Forwarding settings come
//! as RTM_NEWNETCONF, which rtnetlink's decoder does not know (it would
//! log each as an error and drop it): a plain socket of their own hears
//! them, on a thread, and each one moves the epoch undecoded. Each move reads the epoch
//! the map holds, so moves from the notification task and from syncs
//! never take the epoch back.

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{Array, MapData};
use futures::{FutureExt as _, StreamExt as _};
use lb_common::maps as names;
use rtnetlink::MulticastGroup;
use tracing::{debug, warn};

use super::maps::open_pinned;

/// What the kernel announces that can change a route lookup's answer,
/// decoded by rtnetlink.
const GROUPS: [MulticastGroup; 9] = [
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
    MulticastGroup::Ipv4Rule,
    MulticastGroup::Ipv6Rule,
    MulticastGroup::Nexthop,
    MulticastGroup::Neigh,
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
];

/// The forwarding settings' groups, heard undecoded (`follow_netconf`).
const NETCONF_GROUPS: [u32; 2] = [libc::RTNLGRP_IPV4_NETCONF, libc::RTNLGRP_IPV6_NETCONF];

/// The epoch after `current`. Never 0, which keeps no route.
pub fn next(current: u32) -> u32 {
    match current.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// The epoch an agent starts with: after the pinned one, or, when there
/// is none (a new or recreated map), one taken from the clock, so that
/// routes kept under the epochs of a map since recreated are not taken
/// for current.
pub fn first(pinned: u32, unix_seconds: u64) -> u32 {
    if pinned != 0 {
        return next(pinned);
    }
    next(unix_seconds as u32)
}

/// The pinned epoch map.
pub struct RouteEpoch {
    map: Array<MapData, u32>,
    current: u32,
}

impl RouteEpoch {
    /// Opens the pinned map and moves to this agent's first epoch.
    pub fn start(pin_dir: &Path) -> anyhow::Result<Self> {
        let map: Array<MapData, u32> =
            open_pinned(pin_dir, names::ROUTE_EPOCH)?.try_into().context(names::ROUTE_EPOCH)?;
        let pinned = map.get(&0, 0).context("reading the route epoch")?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut epoch = Self { map, current: pinned };
        epoch.set(first(pinned, now))?;
        Ok(epoch)
    }

    /// The current epoch.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Moves to the next epoch: every kept route is looked up again.
    pub fn advance(&mut self) -> anyhow::Result<()> {
        self.current = advance_pinned(&mut self.map)?;
        Ok(())
    }

    fn set(&mut self, epoch: u32) -> anyhow::Result<()> {
        self.map.set(0, epoch, 0).context("writing the route epoch")?;
        self.current = epoch;
        Ok(())
    }
}

/// The epoch pinned under `pin_dir` now.
pub fn pinned(pin_dir: &Path) -> anyhow::Result<u32> {
    let map: Array<MapData, u32> = open_pinned(pin_dir, names::ROUTE_EPOCH)?.try_into().context(names::ROUTE_EPOCH)?;
    map.get(&0, 0).context("reading the route epoch")
}

/// Moves the epoch `map` holds to the next one, unless it is 0 (no agent
/// has written one: nothing is kept); returns the epoch it now holds.
pub fn advance_pinned(map: &mut Array<MapData, u32>) -> anyhow::Result<u32> {
    let current = map.get(&0, 0).context("reading the route epoch")?;
    if current == 0 {
        return Ok(0);
    }
    let epoch = next(current);
    map.set(0, epoch, 0).context("writing the route epoch")?;
    Ok(epoch)
}

/// Subscribes to the kernel's routing notifications, then moves to this
/// agent's first epoch and, in a task, to the next one after each batch
/// of notifications. Acts on the calling thread's network namespace;
/// must run inside a tokio runtime.
pub fn follow(pin_dir: &Path) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (connection, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&GROUPS).context("subscribing to routing notifications")?;
    tokio::spawn(connection);
    let netconf = netconf_socket().context("subscribing to forwarding settings notifications")?;
    let mut epoch = RouteEpoch::start(pin_dir)?;
    follow_netconf(netconf, pin_dir)?;
    debug!(epoch = epoch.current(), "route epoch");
    Ok(tokio::spawn(async move {
        while messages.next().await.is_some() {
            // Whatever else has arrived already is covered by the same move.
            while let Some(Some(_)) = messages.next().now_or_never() {}
            if let Err(e) = epoch.advance() {
                warn!("{e:#}: established flows keep the routes they had until the next change");
            }
        }
        warn!("routing notifications ended: established flows keep the routes they have");
    }))
}

/// A netlink socket subscribed to `NETCONF_GROUPS`, in the calling
/// thread's network namespace.
fn netconf_socket() -> std::io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    socket.bind_auto()?;
    for group in NETCONF_GROUPS {
        socket.add_membership(group)?;
    }
    Ok(socket)
}

/// Moves the epoch on every datagram `socket` receives (or loses: the
/// buffer overran), on a thread of its own: forwarding settings change
/// rarely, and each change is one datagram per address family.
fn follow_netconf(socket: netlink_sys::Socket, pin_dir: &Path) -> anyhow::Result<()> {
    let mut map: Array<MapData, u32> =
        open_pinned(pin_dir, names::ROUTE_EPOCH)?.try_into().context(names::ROUTE_EPOCH)?;
    std::thread::Builder::new()
        .name("netconf".into())
        .spawn(move || {
            let mut buf = vec![0u8; 8192];
            loop {
                match socket.recv(&mut &mut buf[..], 0) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) => {
                        warn!("forwarding settings notifications ended ({e}): their changes no longer move the route epoch");
                        return;
                    }
                }
                if let Err(e) = advance_pinned(&mut map) {
                    warn!("{e:#}: established flows keep the routes they had until the next change");
                }
            }
        })
        .context("starting the forwarding settings listener")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_epoch_is_never_zero() {
        assert_eq!(next(1), 2);
        assert_eq!(next(u32::MAX), 1);
    }

    #[test]
    fn a_first_epoch_follows_the_pinned_one_or_the_clock() {
        assert_eq!(first(41, 1_800_000_000), 42);
        assert_eq!(first(0, 1_800_000_000), 1_800_000_001);
        assert_eq!(first(0, u64::from(u32::MAX)), 1, "wraps past 0");
    }
}
