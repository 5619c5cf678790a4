//! What each pinned map must look like for this build, and what to do with
//! a pinned map that looks different.
//!
//! The loader re-opens pinned maps by name and never checks their shape: a
//! map pinned by another version, with a different key or value size,
//! would be adopted and its entries read as the wrong type. So before
//! loading, every pinned map is compared with the layout this build
//! declares (`lb_common` types and capacities), and with the layout
//! version the last build that loaded it recorded in `LB_LAYOUT` (what its
//! entries mean, which sizes alone cannot tell). A map the agent rebuilds
//! anyway is recreated; conntrack is recreated (its flows are lost, never
//! misread); the id counters, which keep ids unique across restarts, are
//! never thrown away silently: the agent refuses to start.

use std::{
    fmt,
    mem::size_of,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapType};
use lb_common::{
    address_filter,
    affinity::{AffinityKeyV4, AffinityKeyV6, AffinityMemberKeyV4, AffinityValueV4},
    backend::{BackendV4, BackendV6},
    conntrack::{CtKeyV4, CtKeyV6, CtValueV4, CtValueV6},
    frontend_stats::FrontendStatsV4,
    ids, maps as names,
    pod_cidrs::{PodCidrKeyV4, PodCidrKeyV6},
    service::{ServiceKeyV4, ServiceKeyV6, ServiceValue},
    sock::{SockRevKeyV4, SockRevKeyV6, SockRevValueV4, SockRevValueV6},
    source_ranges::{SourceRangeKeyV4, SourceRangeKeyV6},
    stats,
};
use tracing::{info, warn};

use super::{conntrack_carry, loader::Capacities};

/// A map's shape as the kernel reports it, and the version of what its
/// entries mean (`lb_common::maps::layout_version`), as recorded in
/// `LB_LAYOUT` by the build that loaded it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Layout {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub version: u32,
    /// Created with `BPF_F_MMAPABLE`: the agent reads and writes the map
    /// as memory (the filters, `lb_common::maps::FILTER_FLAGS`).
    pub mmapable: bool,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} key {} B, value {} B, {} entries, version {}{}",
            self.map_type,
            self.key_size,
            self.value_size,
            self.max_entries,
            self.version,
            if self.mmapable { ", mmapable" } else { "" }
        )
    }
}

/// What a mismatch costs, and so what the agent does about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMismatch {
    /// Derived state the agent rewrites from its source on every start
    /// (services, backends, port filter) or counters: recreate.
    Recreate,
    /// Tracked flows: recreate, established connections through a
    /// Service are reset once.
    RecreateLosingFlows,
    /// Id counters: ids handed out before must never be handed out again,
    /// so an unreadable counter map stops the agent.
    Refuse,
}

/// The layout this build expects for `map`, and its policy.
pub fn expected(map: &str, capacities: Capacities) -> Option<(Layout, OnMismatch)> {
    fn size<T>() -> u32 {
        u32::try_from(size_of::<T>()).expect("map types are small")
    }
    let version = names::layout_version(map);
    let layout = |map_type, key_size, value_size, max_entries| Layout {
        map_type,
        key_size,
        value_size,
        max_entries,
        version,
        mmapable: false,
    };
    Some(match map {
        names::SERVICES_V4 => (
            layout(MapType::Hash, size::<ServiceKeyV4>(), size::<ServiceValue>(), capacities.services),
            OnMismatch::Recreate,
        ),
        names::BACKENDS_V4 => {
            (layout(MapType::Hash, size::<u32>(), size::<BackendV4>(), capacities.backends), OnMismatch::Recreate)
        }
        names::CONNTRACK_V4 => (
            layout(MapType::LruHash, size::<CtKeyV4>(), size::<CtValueV4>(), capacities.conntrack),
            OnMismatch::RecreateLosingFlows,
        ),
        names::SERVICES_V6 => (
            layout(MapType::Hash, size::<ServiceKeyV6>(), size::<ServiceValue>(), capacities.services),
            OnMismatch::Recreate,
        ),
        names::BACKENDS_V6 => {
            (layout(MapType::Hash, size::<u32>(), size::<BackendV6>(), capacities.backends), OnMismatch::Recreate)
        }
        names::CONNTRACK_V6 => (
            layout(MapType::LruHash, size::<CtKeyV6>(), size::<CtValueV6>(), capacities.conntrack_v6),
            OnMismatch::RecreateLosingFlows,
        ),
        names::SOURCE_RANGES_V4 => (
            layout(MapType::LpmTrie, size::<SourceRangeKeyV4>(), size::<u8>(), names::SOURCE_RANGES_V4_CAPACITY),
            OnMismatch::Recreate,
        ),
        names::SOURCE_RANGES_V6 => (
            layout(MapType::LpmTrie, size::<SourceRangeKeyV6>(), size::<u8>(), names::SOURCE_RANGES_V6_CAPACITY),
            OnMismatch::Recreate,
        ),
        names::POD_CIDRS_V4 => (
            layout(MapType::LpmTrie, size::<PodCidrKeyV4>(), size::<u8>(), names::POD_CIDRS_V4_CAPACITY),
            OnMismatch::Recreate,
        ),
        names::POD_CIDRS_V6 => (
            layout(MapType::LpmTrie, size::<PodCidrKeyV6>(), size::<u8>(), names::POD_CIDRS_V6_CAPACITY),
            OnMismatch::Recreate,
        ),
        names::SOCK_REV_V6 => (
            layout(MapType::LruHash, size::<SockRevKeyV6>(), size::<SockRevValueV6>(), names::SOCK_REV_V6_CAPACITY),
            OnMismatch::Recreate,
        ),
        names::SOCK_REV_V4 => (
            layout(MapType::LruHash, size::<SockRevKeyV4>(), size::<SockRevValueV4>(), names::SOCK_REV_V4_CAPACITY),
            OnMismatch::Recreate,
        ),
        // Lost affinities cost only one fresh choice per client.
        names::AFFINITY_V4 => (
            layout(MapType::LruHash, size::<AffinityKeyV4>(), size::<AffinityValueV4>(), capacities.affinity),
            OnMismatch::Recreate,
        ),
        names::AFFINITY_V6 => (
            layout(MapType::LruHash, size::<AffinityKeyV6>(), size::<AffinityValueV4>(), capacities.affinity),
            OnMismatch::Recreate,
        ),
        names::AFFINITY_MEMBERS_V4 => (
            layout(MapType::Hash, size::<AffinityMemberKeyV4>(), size::<u8>(), names::AFFINITY_MEMBERS_V4_CAPACITY),
            OnMismatch::Recreate,
        ),
        names::LAYOUT => {
            (layout(MapType::Hash, size::<[u8; 16]>(), size::<u32>(), names::LAYOUT_CAPACITY), OnMismatch::Recreate)
        }
        names::CONFIG => (
            layout(MapType::Array, size::<u32>(), size::<lb_common::config::DatapathConfig>(), 1),
            OnMismatch::Recreate,
        ),
        // A new epoch is chosen at every start anyway.
        names::ROUTE_EPOCH => (layout(MapType::Array, size::<u32>(), size::<u32>(), 1), OnMismatch::Recreate),
        // Counters only: lost on a change of layout.
        names::FRONTEND_STATS_V4 => (
            layout(MapType::PerCpuHash, size::<u32>(), size::<FrontendStatsV4>(), names::FRONTEND_STATS_V4_CAPACITY),
            OnMismatch::Recreate,
        ),
        names::ADDRESS_FILTER => (
            Layout { mmapable: true, ..layout(MapType::Array, size::<u32>(), size::<u64>(), address_filter::WORDS) },
            OnMismatch::Recreate,
        ),
        names::PORT_FILTER => (
            Layout {
                mmapable: true,
                ..layout(MapType::Array, size::<u32>(), size::<u8>(), names::PORT_FILTER_CAPACITY)
            },
            OnMismatch::Recreate,
        ),
        names::STATS => {
            (layout(MapType::PerCpuArray, size::<u32>(), size::<u64>(), stats::COUNTERS), OnMismatch::Recreate)
        }
        names::IDS => (layout(MapType::Array, size::<u32>(), size::<u32>(), ids::COUNTERS), OnMismatch::Refuse),
        // The outer map's value is an inner map's fd; the tables' own size
        // is checked by `maglev_tables_fit`.
        names::MAGLEV_V4 => {
            (layout(MapType::HashOfMaps, size::<u32>(), size::<u32>(), capacities.maglev), OnMismatch::Recreate)
        }
        _ => return None,
    })
}

/// A pinned map this build cannot use.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "pinned map {name} at {path} has layout ({found}) but this build expects ({expected}); \
         it holds the id counters, which cannot be carried over without risking reused ids. \
         Run the version that pinned it, or remove the whole pin directory \
         (`lb-agent --cleanup --pin-dir {dir}`: every map starts empty, tracked flows are reset)",
        dir = .path.parent().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
    )]
    Incompatible { name: String, path: PathBuf, found: Layout, expected: Layout },
    #[error("reading pinned map {path}: {source}")]
    Unreadable { path: PathBuf, source: aya::maps::MapError },
    #[error("removing incompatible pinned map {path}: {source}")]
    Unpin { path: PathBuf, source: std::io::Error },
}

/// The layout of the map pinned at `path`, or None when nothing is pinned there.
pub fn pinned_layout(path: &Path) -> Result<Option<Layout>, LayoutError> {
    if !path.exists() {
        return Ok(None);
    }
    let unreadable = |source| LayoutError::Unreadable { path: path.to_owned(), source };
    let info = MapData::from_pin(path).and_then(|map| map.info()).map_err(unreadable)?;
    Ok(Some(Layout {
        map_type: info.map_type().map_err(unreadable)?,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        version: recorded_version(path),
        mmapable: info.map_flags() & names::FILTER_FLAGS != 0,
    }))
}

/// The layout version `LB_LAYOUT` (beside the map at `path`) records for
/// it. 1 when nothing is recorded: the map was pinned before versions
/// were, or with the version-1 layout.
fn recorded_version(path: &Path) -> u32 {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return 1;
    };
    let recorded = || -> Option<u32> {
        let map = aya::maps::Map::from_map_data(MapData::from_pin(dir.join(names::LAYOUT)).ok()?).ok()?;
        let versions: aya::maps::HashMap<MapData, [u8; 16], u32> = map.try_into().ok()?;
        versions.get(&names::layout_key(name), 0).ok()
    };
    recorded().unwrap_or(1)
}

/// Records this build's layout version of every map in `LB_LAYOUT`, once
/// the maps are loaded and pinned, so the next start can tell what they
/// mean.
pub fn record_versions(pin_dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let path = pin_dir.join(names::LAYOUT);
    let map = aya::maps::Map::from_map_data(MapData::from_pin(&path)?)?;
    let mut versions: aya::maps::HashMap<MapData, [u8; 16], u32> = map.try_into()?;
    for name in names::ALL {
        versions
            .insert(names::layout_key(name), names::layout_version(name), 0)
            .with_context(|| format!("recording the layout version of {name}"))?;
    }
    Ok(())
}

/// What `reconcile` did.
pub struct Reconciled {
    /// Maps unpinned, for the loader to create fresh.
    pub recreated: Vec<&'static str>,
    /// The previous build's conntrack tables (IPv4, IPv6), held open to
    /// be copied into the new ones (`conntrack_carry`).
    pub carried: Vec<conntrack_carry::Previous>,
}

/// Checks every map pinned under `pin_dir` against this build; unpins the
/// ones to recreate (the loader then creates them fresh) and returns their
/// names. Fails, touching nothing, if a map that must not be lost is
/// incompatible.
pub fn reconcile(pin_dir: &Path, capacities: Capacities) -> Result<Reconciled, LayoutError> {
    let mut recreate = Vec::new();
    for name in names::ALL {
        let Some((expected, policy)) = expected(name, capacities) else {
            continue;
        };
        let path = pin_dir.join(name);
        let Some(found) = pinned_layout(&path)? else {
            continue;
        };
        if found == expected && (name != names::MAGLEV_V4 || maglev_tables_fit(&path)) {
            continue;
        }
        if policy == OnMismatch::Refuse {
            return Err(LayoutError::Incompatible { name: name.to_owned(), path, found, expected });
        }
        recreate.push((name, path, found, expected, policy));
    }
    let mut carried = Vec::new();
    for (name, path, found, expected, policy) in &recreate {
        let mut carrying = false;
        if conntrack_carry::is_previous(name, found, capacities) {
            match conntrack_carry::Previous::open(name, path, found.value_size) {
                Ok(previous) => {
                    info!(map = name, %found, %expected, "pinned map has the previous layout: its flows are carried over");
                    carried.push(previous);
                    carrying = true;
                }
                Err(e) => warn!(map = name, "{e:#}: tracked flows are lost"),
            }
        }
        let consequence = match policy {
            _ if carrying => "recreated, its flows copied",
            OnMismatch::RecreateLosingFlows => {
                "tracked flows are lost: established connections through Services reset once"
            }
            _ => "recreated and rewritten from the Services",
        };
        warn!(map = name, %found, %expected, "pinned map has another layout than this build; {consequence}");
        std::fs::remove_file(path).map_err(|source| LayoutError::Unpin { path: path.clone(), source })?;
    }
    Ok(Reconciled { recreated: recreate.into_iter().map(|(name, ..)| name).collect(), carried })
}

/// Whether the pinned Maglev map takes tables of this build's size and
/// flags. The kernel keeps the inner-map template it was created with and
/// reports nothing about it; it refuses an inner map of another size or
/// other flags, so an
/// insert of an empty table under an id no frontend has (`u32::MAX`)
/// tells. Only a refusal (EINVAL) means "does not fit".
fn maglev_tables_fit(path: &Path) -> bool {
    use aya::maps::{Array, HashOfMaps, Map, MapError};
    const PROBE: u32 = u32::MAX;
    let probe = || -> Result<(), MapError> {
        let mut outer: HashOfMaps<MapData, u32, Array<MapData, u32>> =
            HashOfMaps::try_from(Map::HashOfMaps(MapData::from_pin(path)?))?;
        let table = Array::<MapData, u32>::create(lb_common::maglev::TABLE_SIZE, lb_common::maglev::TABLE_FLAGS)?;
        outer.insert(PROBE, &table, 0)?;
        outer.remove(&PROBE)
    };
    !matches!(probe(), Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_has_an_expected_layout() {
        for name in names::ALL {
            assert!(expected(name, Capacities::default()).is_some(), "{name} has no expected layout");
        }
    }

    #[test]
    fn conntrack_pinned_before_last_seen_times_is_recreated_losing_flows() {
        let (expected, policy) = expected(names::CONNTRACK_V4, Capacities::default()).unwrap();
        // 28-byte values: no `last_seen_s`; their flags never held state.
        let before = Layout { value_size: 28, ..expected };
        assert_ne!(before, expected);
        assert_eq!(policy, OnMismatch::RecreateLosingFlows);
    }

    #[test]
    fn only_the_id_counters_are_refused() {
        let refused: Vec<_> = names::ALL
            .into_iter()
            .filter(|name| expected(name, Capacities::default()).unwrap().1 == OnMismatch::Refuse)
            .collect();
        assert_eq!(refused, [names::IDS]);
    }
}
