//! Tracked IPv4 flows carried over a change of `LB4_CT`'s value: the
//! previous build's 32-byte values are this build's first 32 bytes, field
//! for field, followed by the kept route (`RouteCache`), which starts
//! empty. So an agent upgraded across that change copies every entry into
//! the new map instead of resetting established connections.
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

/// The value size of `LB4_CT` before routes were kept.
const PREVIOUS_VALUE_SIZE: usize = 32;

const _: () = assert!(offset_of!(CtValueV4, route) == PREVIOUS_VALUE_SIZE);
const _: () = assert!(size_of::<CtValueV4>() > PREVIOUS_VALUE_SIZE);

/// Whether a pinned `LB4_CT` of layout `found` holds the previous build's
/// entries, which this build can carry over (into a table of any size:
/// a smaller one evicts the idlest).
pub fn is_previous(found: &Layout, capacities: Capacities) -> bool {
    let Some((now, _)) = expected(lb_common::maps::CONNTRACK_V4, capacities) else {
        return false;
    };
    *found == Layout { value_size: PREVIOUS_VALUE_SIZE as u32, max_entries: found.max_entries, ..now }
}

/// This build's value for a previous build's: the same fields, no route
/// kept.
pub fn upgrade(previous: [u8; PREVIOUS_VALUE_SIZE]) -> CtValueV4 {
    let mut value = CtValueV4::default();
    // SAFETY: `CtValueV4` is `repr(C)` plain data whose first
    // `PREVIOUS_VALUE_SIZE` bytes are the previous value's fields in the
    // same order (asserted above: the route starts right after them).
    unsafe {
        std::ptr::copy_nonoverlapping(previous.as_ptr(), (&raw mut value).cast::<u8>(), PREVIOUS_VALUE_SIZE);
    }
    value
}

/// The previous build's `LB4_CT`, held open while its pin is replaced.
pub struct Previous(MapData);

impl Previous {
    /// Opens the map pinned at `path` (before it is unpinned).
    pub fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        Ok(Self(MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?))
    }

    /// Copies every entry into `new` (this build's `LB4_CT`); the number
    /// copied.
    pub fn carry_into(&self, new: &MapData) -> anyhow::Result<usize> {
        let mut entries = Vec::new();
        let batched = batch::for_each_chunk(&self.0, |keys: &[CtKeyV4], values: &[[u8; PREVIOUS_VALUE_SIZE]]| {
            entries.extend(keys.iter().copied().zip(values.iter().map(|v| upgrade(*v))));
        })
        .context("reading the previous conntrack table")?;
        anyhow::ensure!(batched, "the kernel cannot read the previous conntrack table in batches");
        let written = batch::update_all(new, &entries).context("writing the carried-over flows")?;
        anyhow::ensure!(written, "the kernel cannot write the conntrack table in batches");
        Ok(entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_value_keeps_every_field_and_no_route() {
        let old = CtValueV4 {
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
        // SAFETY: reading the first bytes of a plain-data value.
        let bytes: [u8; PREVIOUS_VALUE_SIZE] = unsafe { std::ptr::read((&raw const old).cast()) };
        assert_eq!(upgrade(bytes), old);
    }

    #[test]
    fn only_the_previous_value_size_is_carried_over() {
        let capacities = Capacities::default();
        let (now, _) = expected(lb_common::maps::CONNTRACK_V4, capacities).unwrap();
        assert!(is_previous(&Layout { value_size: 32, ..now }, capacities));
        assert!(!is_previous(&now, capacities));
        assert!(!is_previous(&Layout { value_size: 28, ..now }, capacities));
        assert!(!is_previous(&Layout { value_size: 32, key_size: 12, ..now }, capacities));
        assert!(is_previous(&Layout { value_size: 32, max_entries: 1 << 16, ..now }, capacities), "any size");
    }
}
