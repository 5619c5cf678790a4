//! Tracked IPv4 flows carried over a change of `LB4_CT`'s value. Earlier
//! builds' values (32 bytes before routes were kept; 60 while the kept
//! route had no backend) begin with this build's first 32 bytes, field for
//! field; the kept route and backend (`RouteCache`) follow, and start
//! empty. So an agent upgraded across those changes copies every entry
//! into the new map instead of resetting established connections.
//!
//! The copy is taken while the previous agent's programs still run on the
//! old map, before this agent's programs are attached: a flow that starts
//! in between is not in the copy, and its next packet is balanced afresh
//! (to the same backend while the backend set is unchanged; an SNATed
//! flow gets a new port). Any other layout is recreated empty (`layout`).

use std::mem::{offset_of, size_of};

use anyhow::Context as _;
use aya::maps::MapData;
use lb_common::conntrack::{CtKeyV4, CtValueV4};

use super::{
    batch,
    layout::{Layout, expected},
    loader::Capacities,
};

/// What every carried value keeps: the fields before the kept route.
const CARRIED_SIZE: usize = 32;

/// `LB4_CT` value sizes of earlier builds: before routes were kept, and
/// while the kept route had no backend.
const PREVIOUS_VALUE_SIZES: [usize; 2] = [CARRIED_SIZE, 60];

const _: () = assert!(offset_of!(CtValueV4, route) == CARRIED_SIZE);
const _: () = assert!(size_of::<CtValueV4>() > PREVIOUS_VALUE_SIZES[1]);

/// Whether a pinned `LB4_CT` of layout `found` holds an earlier build's
/// entries, which this build can carry over (into a table of any size:
/// a smaller one evicts the idlest).
pub fn is_previous(found: &Layout, capacities: Capacities) -> bool {
    let Some((now, _)) = expected(lb_common::maps::CONNTRACK_V4, capacities) else {
        return false;
    };
    PREVIOUS_VALUE_SIZES
        .into_iter()
        .any(|size| *found == Layout { value_size: size as u32, max_entries: found.max_entries, ..now })
}

/// This build's value for an earlier build's: the same fields, no route
/// kept.
pub fn upgrade<const N: usize>(previous: [u8; N]) -> CtValueV4 {
    const { assert!(N >= CARRIED_SIZE) };
    let mut value = CtValueV4::default();
    // SAFETY: `CtValueV4` is `repr(C)` plain data whose first
    // `CARRIED_SIZE` bytes are an earlier value's first fields in the
    // same order (asserted above: the route starts right after them).
    unsafe {
        std::ptr::copy_nonoverlapping(previous.as_ptr(), (&raw mut value).cast::<u8>(), CARRIED_SIZE);
    }
    value
}

/// An earlier build's `LB4_CT`, held open while its pin is replaced.
pub struct Previous {
    map: MapData,
    value_size: u32,
}

impl Previous {
    /// Opens the map pinned at `path` (before it is unpinned), whose
    /// values are `value_size` bytes (`is_previous`).
    pub fn open(path: &std::path::Path, value_size: u32) -> anyhow::Result<Self> {
        let map = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { map, value_size })
    }

    /// Copies every entry into `new` (this build's `LB4_CT`); the number
    /// copied.
    pub fn carry_into(&self, new: &MapData) -> anyhow::Result<usize> {
        let entries = match self.value_size as usize {
            32 => self.read::<32>()?,
            60 => self.read::<60>()?,
            other => anyhow::bail!("no earlier conntrack table had {other}-byte values"),
        };
        let written = batch::update_all(new, &entries).context("writing the carried-over flows")?;
        anyhow::ensure!(written, "the kernel cannot write the conntrack table in batches");
        Ok(entries.len())
    }

    /// Every entry, upgraded, of a table whose values are `N` bytes.
    fn read<const N: usize>(&self) -> anyhow::Result<Vec<(CtKeyV4, CtValueV4)>> {
        let mut entries = Vec::new();
        let batched = batch::for_each_chunk(&self.map, |keys: &[CtKeyV4], values: &[[u8; N]]| {
            entries.extend(keys.iter().copied().zip(values.iter().map(|v| upgrade(*v))));
        })
        .context("reading the previous conntrack table")?;
        anyhow::ensure!(batched, "the kernel cannot read the previous conntrack table in batches");
        Ok(entries)
    }
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
        assert_eq!(upgrade(before_routes), carried);
        // SAFETY: as above.
        let routes_without_backend: [u8; 60] = unsafe { std::ptr::read((&raw const with_route).cast()) };
        assert_eq!(upgrade(routes_without_backend), carried, "the route kept then is looked up again");
    }

    #[test]
    fn only_earlier_value_sizes_are_carried_over() {
        let capacities = Capacities::default();
        let (now, _) = expected(lb_common::maps::CONNTRACK_V4, capacities).unwrap();
        assert!(is_previous(&Layout { value_size: 32, ..now }, capacities));
        assert!(is_previous(&Layout { value_size: 60, ..now }, capacities));
        assert!(!is_previous(&now, capacities));
        assert!(!is_previous(&Layout { value_size: 28, ..now }, capacities));
        assert!(!is_previous(&Layout { value_size: 32, key_size: 12, ..now }, capacities));
        assert!(is_previous(&Layout { value_size: 32, max_entries: 1 << 16, ..now }, capacities), "any size");
    }
}
