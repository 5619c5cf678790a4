//! Tracked flows carried over a change of a conntrack table's value
//! (`LB4_CT`, `LB6_CT`). Earlier builds' values begin with this build's
//! fields up to the kept route, field for field: IPv4's 32 bytes before
//! routes were kept and 60 while the kept route had no backend; IPv6's 56
//! bytes before its flows kept routes. The kept route (`RouteCache`)
//! follows, and starts empty. So an agent upgraded across those changes
//! copies every entry into the new map instead of resetting established
//! connections.
//!
//! The copy is taken while the previous agent's programs still run on the
//! old map, before this agent's programs are attached: a flow that starts
//! in between is not in the copy, and its next packet is balanced afresh
//! (to the same backend while the backend set is unchanged; an SNATed
//! flow gets a new port). Any other layout is recreated empty (`layout`).

use std::mem::{offset_of, size_of};

use anyhow::Context as _;
use aya::Pod;
use aya::maps::MapData;
use lb_common::{
    conntrack::{CtKeyV4, CtKeyV6, CtValueV4, CtValueV6},
    maps as names,
};

use super::{
    batch,
    layout::{Layout, expected},
    loader::Capacities,
};

const _: () = assert!(offset_of!(CtValueV4, route) == 32);
const _: () = assert!(size_of::<CtValueV4>() > 60);
const _: () = assert!(offset_of!(CtValueV6, route) == 56);
const _: () = assert!(size_of::<CtValueV6>() > 56);

/// Copies an earlier table's entries, upgraded, into this build's; the
/// number copied.
type Copier = fn(&MapData, &MapData) -> anyhow::Result<usize>;

/// How the entries of an earlier build's table `name` with `value_size`-
/// byte values are carried over; `None`: no earlier build had that table.
/// The one list of earlier layouts.
fn copier(name: &str, value_size: u32) -> Option<Copier> {
    match (name, value_size) {
        // Before routes were kept.
        (names::CONNTRACK_V4, 32) => Some(copy::<CtKeyV4, CtValueV4, 32>),
        // While the kept route had no backend.
        (names::CONNTRACK_V4, 60) => Some(copy::<CtKeyV4, CtValueV4, 60>),
        // Before IPv6 flows kept routes.
        (names::CONNTRACK_V6, 56) => Some(copy::<CtKeyV6, CtValueV6, 56>),
        _ => None,
    }
}

/// Whether the pinned map `name` of layout `found` is a conntrack table
/// holding an earlier build's entries, which this build can carry over
/// (into a table of any size: a smaller one evicts the idlest).
pub fn is_previous(name: &str, found: &Layout, capacities: Capacities) -> bool {
    let Some((now, _)) = expected(name, capacities) else {
        return false;
    };
    copier(name, found.value_size).is_some()
        && *found == Layout { value_size: found.value_size, max_entries: found.max_entries, ..now }
}

/// A conntrack value whose fields before the kept route an earlier
/// build's value begins with.
pub trait Carried: Pod + Default {
    /// The bytes carried: the fields before the kept route.
    const CARRIED_SIZE: usize;
}

impl Carried for CtValueV4 {
    const CARRIED_SIZE: usize = offset_of!(CtValueV4, route);
}

impl Carried for CtValueV6 {
    const CARRIED_SIZE: usize = offset_of!(CtValueV6, route);
}

/// This build's value for an earlier build's: the same fields, no route
/// kept.
pub fn upgrade<V: Carried, const N: usize>(previous: [u8; N]) -> V {
    const { assert!(N >= V::CARRIED_SIZE, "an earlier value holds every carried field") };
    let mut value = V::default();
    // SAFETY: `V` is `repr(C)` plain data whose first `CARRIED_SIZE`
    // bytes are an earlier value's first fields in the same order
    // (asserted above: the route starts right after them).
    unsafe {
        std::ptr::copy_nonoverlapping(previous.as_ptr(), (&raw mut value).cast::<u8>(), V::CARRIED_SIZE);
    }
    value
}

/// An earlier build's conntrack table, held open while its pin is
/// replaced.
pub struct Previous {
    name: &'static str,
    map: MapData,
    value_size: u32,
}

impl Previous {
    /// Opens the map `name` pinned at `path` (before it is unpinned),
    /// whose values are `value_size` bytes (`is_previous`).
    pub fn open(name: &'static str, path: &std::path::Path, value_size: u32) -> anyhow::Result<Self> {
        let map = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { name, map, value_size })
    }

    /// The table's name (`LB4_CT`, `LB6_CT`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Copies every entry into `new` (this build's table of the same
    /// name); the number copied.
    pub fn carry_into(&self, new: &MapData) -> anyhow::Result<usize> {
        let (name, size) = (self.name, self.value_size);
        let copy = copier(name, size).with_context(|| format!("no earlier {name} had {size}-byte values"))?;
        copy(&self.map, new)
    }
}

/// Every entry of `previous`, whose values are `N` bytes, upgraded and
/// written to `new`.
fn copy<K: Pod, V: Carried, const N: usize>(previous: &MapData, new: &MapData) -> anyhow::Result<usize> {
    let mut entries: Vec<(K, V)> = Vec::new();
    let batched = batch::for_each_chunk(previous, |keys: &[K], values: &[[u8; N]]| {
        entries.extend(keys.iter().copied().zip(values.iter().map(|v| upgrade::<V, N>(*v))));
    })
    .context("reading the previous conntrack table")?;
    anyhow::ensure!(batched, "the kernel cannot read the previous conntrack table in batches");
    let written = batch::update_all(new, &entries).context("writing the carried-over flows")?;
    anyhow::ensure!(written, "the kernel cannot write the conntrack table in batches");
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_value_keeps_every_field_and_no_route() {
        let carried = CtValueV4 {
            backend_id: 7,
            frontend_id: 3,
            frontend_address: [10, 96, 0, 10],
            frontend_port: 80,
            flags: 1,
            created_s: 100,
            last_seen_s: 160,
            nat_address: [192, 168, 0, 10],
            nat_port: 61000,
            ..CtValueV4::default()
        };
        let with_route = CtValueV4 {
            route: lb_common::conntrack::RouteCache { epoch: 9, ifindex: 4, fits_len: 1500, ..Default::default() },
            ..carried
        };
        // SAFETY: reading the first bytes of a plain-data value.
        let before_routes: [u8; 32] = unsafe { std::ptr::read((&raw const with_route).cast()) };
        assert_eq!(upgrade::<CtValueV4, 32>(before_routes), carried);
        // SAFETY: as above.
        let routes_without_backend: [u8; 60] = unsafe { std::ptr::read((&raw const with_route).cast()) };
        assert_eq!(upgrade::<CtValueV4, 60>(routes_without_backend), carried, "the route kept then is looked up again");
    }

    #[test]
    fn an_earlier_ipv6_value_keeps_every_field_and_no_route() {
        let carried = CtValueV6 {
            backend_id: 7,
            frontend_id: 3,
            frontend_address: [0xfd; 16],
            frontend_port: 80,
            flags: 1,
            created_s: 100,
            last_seen_s: 160,
            nat_address: [0xfe; 16],
            nat_port: 61000,
            ..CtValueV6::default()
        };
        let with_route = CtValueV6 {
            route: lb_common::conntrack::RouteCache { epoch: 9, ifindex: 4, fits_len: 1500, ..Default::default() },
            ..carried
        };
        // SAFETY: reading the first bytes of a plain-data value.
        let before_routes: [u8; 56] = unsafe { std::ptr::read((&raw const with_route).cast()) };
        assert_eq!(upgrade::<CtValueV6, 56>(before_routes), carried);
    }

    #[test]
    fn only_earlier_value_sizes_are_carried_over() {
        let capacities = Capacities::default();
        let v4 = names::CONNTRACK_V4;
        let (now, _) = expected(v4, capacities).unwrap();
        assert!(is_previous(v4, &Layout { value_size: 32, ..now }, capacities));
        assert!(is_previous(v4, &Layout { value_size: 60, ..now }, capacities));
        assert!(!is_previous(v4, &now, capacities));
        assert!(!is_previous(v4, &Layout { value_size: 28, ..now }, capacities));
        assert!(!is_previous(v4, &Layout { value_size: 32, key_size: 12, ..now }, capacities));
        assert!(is_previous(v4, &Layout { value_size: 32, max_entries: 1 << 16, ..now }, capacities), "any size");
        let v6 = names::CONNTRACK_V6;
        let (now_v6, _) = expected(v6, capacities).unwrap();
        assert!(is_previous(v6, &Layout { value_size: 56, ..now_v6 }, capacities));
        assert!(!is_previous(v6, &now_v6, capacities));
        assert!(!is_previous(v6, &Layout { value_size: 32, ..now_v6 }, capacities), "an IPv4 size");
        assert!(!is_previous(v4, &Layout { value_size: 56, ..now }, capacities), "an IPv6 size");
        assert!(
            !is_previous(names::SERVICES_V4, &Layout { value_size: 32, ..now }, capacities),
            "not a conntrack table"
        );
    }
}
