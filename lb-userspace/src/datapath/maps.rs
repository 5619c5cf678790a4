//! Typed access to the datapath's maps, either taken from a freshly loaded
//! object (the agent) or opened from their pins (the CLI, tests). The maps
//! the agent writes come from the one declaration in `tables`.

use std::{collections::BTreeMap, marker::PhantomData, os::fd::AsFd as _, path::Path};

use anyhow::Context as _;
use aya::{
    Ebpf, Pod,
    maps::{
        Array, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        lpm_trie::{Key, LpmTrie},
    },
};
use lb_common::{
    address_filter,
    affinity::{AffinityKeyV4, AffinityKeyV6, AffinityValueV4},
    conntrack::{CtKeyV4, CtKeyV6, CtValueV4, CtValueV6},
    frontend_stats::FrontendStatsV4,
    maps as names,
    pod_cidrs::{PodCidrKeyV4, PodCidrKeyV6},
    service::{ServiceKeyV4, ServiceKeyV6, ServiceValue},
    source_ranges::{SourceRangeKeyV4, SourceRangeKeyV6},
    stats::Counter,
};

use tracing::warn;

use super::{
    batch,
    maglev::MaglevTables,
    mapped::{MappedArray, MappedValue},
};
use crate::{
    state::HighestIds,
    tables::{DesiredMaps, Write, for_each_map},
};

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name).with_context(|| format!("map {name} missing from the object"))
}

/// A handle of its own on one of the object's array maps, which stays in
/// the object for whoever else uses it: a duplicate of its descriptor
/// (opening it again by id would need CAP_SYS_ADMIN, which the DaemonSet
/// does not grant).
fn share_array(ebpf: &Ebpf, name: &str) -> anyhow::Result<Map> {
    let Some(Map::Array(data)) = ebpf.map(name) else {
        anyhow::bail!("array map {name} missing from the object");
    };
    let fd = data.fd().as_fd().try_clone_to_owned().with_context(|| format!("duplicating map {name}"))?;
    Ok(Map::Array(MapData::from_fd(fd).with_context(|| format!("map {name}"))?))
}

pub(crate) fn open_pinned(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("unsupported map type at {}", path.display()))
}

/// How full the maps the agent writes are (`ServiceMaps::sizes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Entries by map name: the Service and backend maps of both
    /// families, and the Maglev map (one entry per Maglev frontend).
    pub entries: Vec<(&'static str, usize)>,
    /// Frontend entries (slot 0) of both families.
    pub frontends: usize,
    /// Maglev tables the kernel holds: frontends with equal tables share one.
    pub maglev_tables: usize,
}

/// A hash map, as the agent reads and writes it.
struct Hash<K, V>(HashMap<MapData, K, V>);

impl<K: Pod + Ord, V: Pod> Hash<K, V> {
    fn new(map: Map) -> anyhow::Result<Self> {
        Ok(Self(map.try_into()?))
    }

    fn read_all(&self) -> anyhow::Result<BTreeMap<K, V>> {
        if let Some(entries) = batch::lookup_all(self.0.map())? {
            return Ok(entries.into_iter().collect());
        }
        self.0.iter().map(|entry| Ok(entry?)).collect()
    }

    /// How many entries the map holds, and how many of their keys pass
    /// `counted`; read a chunk at a time, so nothing is kept.
    fn count(&self, counted: impl Fn(&K) -> bool) -> anyhow::Result<(usize, usize)> {
        let (mut all, mut passing) = (0, 0);
        let whole = batch::for_each_chunk(self.0.map(), |keys: &[K], _: &[V]| {
            all += keys.len();
            passing += keys.iter().filter(|k| counted(k)).count();
        })?;
        if whole {
            return Ok((all, passing));
        }
        let keys = self.0.keys().collect::<Result<Vec<K>, _>>()?;
        Ok((keys.len(), keys.iter().filter(|k| counted(k)).count()))
    }

    /// Deleting an absent entry is not an error: the result is what was asked for.
    fn write(&mut self, key: K, value: Option<V>) -> Result<(), MapError> {
        let result = match value {
            Some(value) => self.0.insert(key, value, 0),
            None => self.0.remove(&key),
        };
        match result {
            Err(e) if is_not_found(&e) => Ok(()),
            other => other,
        }
    }

    /// Puts go in batches (a first sync is mostly puts: one syscall per
    /// few thousand instead of one each), in the order given; deletions
    /// one by one, as they are few and an absent key must not stop them.
    fn write_run(&mut self, run: &[(K, Option<&V>)]) -> Result<(), Partial> {
        let mut done = 0;
        while done < run.len() {
            let puts: Vec<(K, V)> = run[done..].iter().map_while(|(k, v)| v.map(|v| (*k, *v))).collect();
            if puts.is_empty() {
                let (key, _) = run[done];
                self.write(key, None).map_err(|e| Partial { applied: done, error: e.into() })?;
                done += 1;
                continue;
            }
            match batch::update_in_order(self.0.map(), &puts) {
                Ok(true) => {}
                Ok(false) => one_by_one(&puts, done, |(k, v)| self.write(*k, Some(*v)).map_err(Into::into))?,
                Err(stopped) => return Err(Partial { applied: done + stopped.done, error: stopped.error.into() }),
            }
            done += puts.len();
        }
        Ok(())
    }
}

/// Writes that failed part-way: how many went through, and why the next did not.
struct Partial {
    applied: usize,
    error: anyhow::Error,
}

/// Writes `entries` one at a time; `offset` is how many writes of the
/// run came before them (for the count in an error).
fn one_by_one<T>(entries: &[T], offset: usize, mut write: impl FnMut(&T) -> anyhow::Result<()>) -> Result<(), Partial> {
    for (index, entry) in entries.iter().enumerate() {
        write(entry).map_err(|error| Partial { applied: offset + index, error })?;
    }
    Ok(())
}

/// An array map indexed by a small integer key; a zero value is "absent".
/// One created with `BPF_F_MMAPABLE` (the filters) is read and written
/// as memory (`mapped`); the others, and one pinned by a build that made
/// it without the flag, with a syscall per element.
struct Indexed<K, V: Pod + MappedValue> {
    map: Array<MapData, V>,
    mapped: Option<MappedArray<V>>,
    key: PhantomData<K>,
}

impl<K: Copy + Ord + Into<u32> + TryFrom<u32>, V: Pod + MappedValue + Default + PartialEq> Indexed<K, V> {
    fn new(map: Map) -> anyhow::Result<Self> {
        let map: Array<MapData, V> = map.try_into()?;
        let mapped = MappedArray::of_map(map.map(), map.len() as usize).ok();
        Ok(Self { map, mapped, key: PhantomData })
    }

    fn read_all(&self) -> anyhow::Result<BTreeMap<K, V>> {
        let entries: Vec<(u32, V)> = if let Some(mapped) = &self.mapped {
            (0..).zip(mapped.read_all()).collect()
        } else if let Some(entries) = batch::lookup_all(self.map.map())? {
            entries
        } else {
            (0..).zip(self.map.iter()).map(|(index, value)| Ok((index, value?))).collect::<anyhow::Result<_>>()?
        };
        let non_zero = entries.into_iter().filter(|(_, value)| *value != V::default());
        Ok(non_zero.filter_map(|(index, value)| Some((K::try_from(index).ok()?, value))).collect())
    }

    fn write(&mut self, key: K, value: Option<V>) -> Result<(), MapError> {
        let value = value.unwrap_or_default();
        match &self.mapped {
            Some(mapped) if key.into() < self.map.len() => {
                mapped.write(&[(key.into(), value)]);
                Ok(())
            }
            _ => self.map.set(key.into(), value, 0),
        }
    }

    fn write_run(&mut self, run: &[(K, Option<&V>)]) -> Result<(), Partial> {
        one_by_one(run, 0, |(k, v)| self.write(*k, v.cloned()).map_err(Into::into))
    }
}

/// A key of an LPM trie the agent writes: the mirror holds it as one
/// struct (prefix length and data), aya as `Key<Data>`; same bytes.
trait LpmKey: Copy + Ord {
    type Data: Pod;
    fn to_key(self) -> Key<Self::Data>;
    fn from_key(key: Key<Self::Data>) -> Self;
}

impl LpmKey for SourceRangeKeyV4 {
    type Data = [u8; 8];

    fn to_key(self) -> Key<[u8; 8]> {
        Key::new(self.prefix_len, self.data())
    }

    fn from_key(key: Key<[u8; 8]>) -> Self {
        let [a, b, c, d, e, f, g, h] = key.data();
        Self { prefix_len: key.prefix_len(), frontend_id: [a, b, c, d], address: [e, f, g, h] }
    }
}

impl LpmKey for SourceRangeKeyV6 {
    type Data = [u8; 20];

    fn to_key(self) -> Key<[u8; 20]> {
        Key::new(self.prefix_len, self.data())
    }

    fn from_key(key: Key<[u8; 20]>) -> Self {
        let data = key.data();
        let mut address = [0u8; 16];
        address.copy_from_slice(&data[4..]);
        Self { prefix_len: key.prefix_len(), frontend_id: [data[0], data[1], data[2], data[3]], address }
    }
}

impl LpmKey for PodCidrKeyV4 {
    type Data = [u8; 4];

    fn to_key(self) -> Key<[u8; 4]> {
        Key::new(self.prefix_len, self.address)
    }

    fn from_key(key: Key<[u8; 4]>) -> Self {
        Self { prefix_len: key.prefix_len(), address: key.data() }
    }
}

impl LpmKey for PodCidrKeyV6 {
    type Data = [u8; 16];

    fn to_key(self) -> Key<[u8; 16]> {
        Key::new(self.prefix_len, self.address)
    }

    fn from_key(key: Key<[u8; 16]>) -> Self {
        Self { prefix_len: key.prefix_len(), address: key.data() }
    }
}

/// An LPM trie, as the agent reads and writes it.
struct Lpm<K: LpmKey, V>(LpmTrie<MapData, K::Data, V>);

impl<K: LpmKey, V: Pod> Lpm<K, V> {
    fn new(map: Map) -> anyhow::Result<Self> {
        Ok(Self(map.try_into()?))
    }

    fn read_all(&self) -> anyhow::Result<BTreeMap<K, V>> {
        self.0
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                Ok((K::from_key(key), value))
            })
            .collect()
    }

    fn write(&mut self, key: K, value: Option<V>) -> Result<(), MapError> {
        let key = key.to_key();
        let result = match value {
            Some(value) => self.0.insert(&key, value, 0),
            None => self.0.remove(&key),
        };
        match result {
            Err(e) if is_not_found(&e) => Ok(()),
            other => other,
        }
    }

    fn write_run(&mut self, run: &[(K, Option<&V>)]) -> Result<(), Partial> {
        one_by_one(run, 0, |(k, v)| self.write(*k, v.copied()).map_err(Into::into))
    }
}

impl MaglevTables {
    fn write_run(&mut self, run: &[(u32, Option<&crate::maglev::Table>)]) -> Result<(), Partial> {
        self.write_in_order(run).map_err(|(applied, error)| Partial { applied, error })
    }
}

pub(super) fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

macro_rules! kernel_tables {
    ($(
        $(#[$doc:meta])*
        $field:ident: $variant:ident, $key:ty => $value:ty, $name:expr, $storage:ident,
            phase $phase:expr, transition $transition:ident;
    )*) => {
        /// The maps the agent writes, plus conntrack (read at start) and
        /// the datapath's affinity entries (cleared when a frontend's
        /// affinity is switched).
        pub struct ServiceMaps {
            $( $field: kernel_storage!($storage, $key, $value), )*
            conntrack: HashMap<MapData, CtKeyV4, CtValueV4>,
            conntrack_v6: HashMap<MapData, CtKeyV6, CtValueV6>,
            affinity: HashMap<MapData, AffinityKeyV4, AffinityValueV4>,
            affinity_v6: HashMap<MapData, AffinityKeyV6, AffinityValueV4>,
            /// Moved after writes that remove an IPv4 backend: flows keep
            /// their backend under it (`route_epoch`).
            route_epoch: Array<MapData, u32>,
        }

        impl ServiceMaps {
            fn open(mut open: impl FnMut(&str) -> anyhow::Result<Map>, route_epoch: Map) -> anyhow::Result<Self> {
                Ok(Self {
                    $( $field: <kernel_storage!($storage, $key, $value)>::new(open($name)?).context($name)?, )*
                    conntrack: open(names::CONNTRACK_V4)?.try_into().context(names::CONNTRACK_V4)?,
                    conntrack_v6: open(names::CONNTRACK_V6)?.try_into().context(names::CONNTRACK_V6)?,
                    affinity: open(names::AFFINITY_V4)?.try_into().context(names::AFFINITY_V4)?,
                    affinity_v6: open(names::AFFINITY_V6)?.try_into().context(names::AFFINITY_V6)?,
                    route_epoch: route_epoch.try_into().context(names::ROUTE_EPOCH)?,
                })
            }

            /// Everything the maps hold now: after a restart, what the
            /// previous agent wrote; before a full sync, what may have
            /// drifted.
            pub fn read_all(&self) -> anyhow::Result<DesiredMaps> {
                Ok(DesiredMaps { $( $field: self.$field.read_all().context($name)?, )* })
            }

            /// Makes frontends with equal Maglev tables name one kernel
            /// map; returns how many frontends moved.
            pub fn merge_equal_maglev_tables(&mut self) -> anyhow::Result<usize> {
                self.maglev.merge_duplicates()
            }

            /// One write.
            pub fn write(&mut self, write: &Write) -> anyhow::Result<()> {
                let result: anyhow::Result<()> = match write {
                    $( Write::$variant(key, value) => self.$field.write(*key, value.clone()).map_err(Into::into), )*
                };
                result.with_context(|| format!("map write {write:?}"))
            }

            /// Writes in order, each run of consecutive writes to one map
            /// handed to that map at once (hash maps batch their puts).
            /// On failure, says how many writes were applied.
            pub fn write_all(&mut self, writes: &[Write]) -> Result<(), (usize, anyhow::Error)> {
                let result = self.write_in_order(writes);
                let applied = match &result {
                    Ok(()) => writes,
                    Err((applied, _)) => &writes[..*applied],
                };
                if applied.iter().any(|w| matches!(w, Write::Backend(_, None))) {
                    // After the removal: a flow that keeps its backend
                    // under the new epoch found it existing after it.
                    if let Err(e) = super::route_epoch::advance_pinned(&mut self.route_epoch) {
                        warn!(
                            "{e:#}: flows to a removed backend keep sending to it until the route epoch \
                             next moves"
                        );
                    }
                }
                result
            }

            fn write_in_order(&mut self, writes: &[Write]) -> Result<(), (usize, anyhow::Error)> {
                let mut done = 0;
                while let Some(first) = writes.get(done) {
                    let rest = &writes[done..];
                    let (len, result) = match first {
                        $( Write::$variant(..) => {
                            let run: Vec<($key, Option<&$value>)> = rest
                                .iter()
                                .map_while(|w| match w {
                                    Write::$variant(key, value) => Some((*key, value.as_ref())),
                                    _ => None,
                                })
                                .collect();
                            (run.len(), self.$field.write_run(&run))
                        } )*
                    };
                    if let Err(Partial { applied, error }) = result {
                        let failed = &writes[done + applied];
                        return Err((done + applied, error.context(format!("map write {failed:?}"))));
                    }
                    done += len;
                }
                Ok(())
            }
        }
    };
}

macro_rules! kernel_storage {
    (Hash, $key:ty, $value:ty) => { Hash<$key, $value> };
    (Array, $key:ty, $value:ty) => { Indexed<$key, $value> };
    (Lpm, $key:ty, $value:ty) => { Lpm<$key, $value> };
    (OfMaps, $key:ty, $value:ty) => { MaglevTables };
}

for_each_map!(kernel_tables);

impl std::fmt::Debug for ServiceMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceMaps")
    }
}

impl ServiceMaps {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let route_epoch = share_array(ebpf, names::ROUTE_EPOCH)?;
        Self::open(|name| take(ebpf, name), route_epoch)
    }

    pub fn from_pins(pin_dir: &Path) -> anyhow::Result<Self> {
        Self::open(|name| open_pinned(pin_dir, name), open_pinned(pin_dir, names::ROUTE_EPOCH)?)
    }

    /// Sets the address-filter bit of every frontend the maps hold, when
    /// the filter is empty beside a Service table that is not: an agent
    /// upgraded from a datapath without the filter, whose new programs
    /// (which may be attached before the first sync) would otherwise pass every
    /// Service packet until that sync. Never clears a bit. Returns how
    /// many words it wrote.
    pub fn seed_address_filter(&mut self) -> anyhow::Result<usize> {
        if !self.address_filter.read_all().context(names::ADDRESS_FILTER)?.is_empty() {
            return Ok(0);
        }
        let v4 = self.services.read_all().context(names::SERVICES_V4)?;
        let v6 = self.services_v6.read_all().context(names::SERVICES_V6)?;
        let bits = v4
            .keys()
            .filter(|k| k.backend_slot == 0)
            .map(|k| address_filter::bit_v4(k.address))
            .chain(v6.keys().filter(|k| k.backend_slot == 0).map(|k| address_filter::bit_v6(k.address)));
        let mut words: BTreeMap<u32, u64> = BTreeMap::new();
        for bit in bits {
            let (word, mask) = address_filter::word_and_mask(bit);
            *words.entry(word).or_default() |= mask;
        }
        for (&word, &bits) in &words {
            self.address_filter.write(word, Some(bits)).context(names::ADDRESS_FILTER)?;
        }
        Ok(words.len())
    }

    /// How full the maps are, as a metrics scrape shows it: entries are
    /// counted a chunk at a time and no Maglev table is read, so a scrape
    /// keeps nothing and costs little however large the node.
    pub fn sizes(&self) -> anyhow::Result<MapSizes> {
        let is_frontend_v4 = |k: &ServiceKeyV4| k.backend_slot == 0;
        let is_frontend_v6 = |k: &ServiceKeyV6| k.backend_slot == 0;
        let (services, frontends) = self.services.count(is_frontend_v4).context(names::SERVICES_V4)?;
        let (services_v6, frontends_v6) = self.services_v6.count(is_frontend_v6).context(names::SERVICES_V6)?;
        let (backends, _) = self.backends.count(|_| true).context(names::BACKENDS_V4)?;
        let (backends_v6, _) = self.backends_v6.count(|_| true).context(names::BACKENDS_V6)?;
        let maglev = self.maglev.count().context(names::MAGLEV_V4)?;
        Ok(MapSizes {
            entries: vec![
                (names::SERVICES_V4, services),
                (names::BACKENDS_V4, backends),
                (names::SERVICES_V6, services_v6),
                (names::BACKENDS_V6, backends_v6),
                (names::MAGLEV_V4, maglev.frontends),
            ],
            frontends: frontends + frontends_v6,
            maglev_tables: maglev.tables,
        })
    }

    /// One entry of the Service table (a frontend or a slot).
    pub fn service_entry(&self, key: &ServiceKeyV4) -> Option<ServiceValue> {
        self.services.0.get(key, 0).ok()
    }

    /// The kernel id of the conntrack map (for tools and tests that open it
    /// on their own).
    pub fn conntrack_map_id(&self) -> anyhow::Result<u32> {
        Ok(self.conntrack.map().info().context("conntrack map info")?.id())
    }

    /// Every conntrack entry.
    pub fn conntrack_entries(&self) -> anyhow::Result<Vec<(CtKeyV4, CtValueV4)>> {
        self.conntrack.iter().map(|e| e.context("reading conntrack")).collect()
    }

    /// Every IPv6 conntrack entry.
    pub fn conntrack_v6_entries(&self) -> anyhow::Result<Vec<(CtKeyV6, CtValueV6)>> {
        self.conntrack_v6.iter().map(|e| e.context("reading IPv6 conntrack")).collect()
    }

    /// The highest ids the conntrack tables of both families name.
    pub fn conntrack_highest_ids(&self) -> anyhow::Result<HighestIds> {
        let mut highest = HighestIds::default();
        let v6 = self
            .conntrack_v6
            .iter()
            .map(|e| e.context("reading conntrack").map(|(_, v)| (v.backend_id, v.frontend_id)));
        let v4 = self.conntrack_entries()?.into_iter().map(|(_, v)| Ok((v.backend_id, v.frontend_id)));
        for ids in v4.chain(v6) {
            let (backend, frontend) = ids?;
            highest.backend = highest.backend.max(backend);
            highest.frontend = highest.frontend.max(frontend);
        }
        Ok(highest)
    }

    /// Deletes every affinity entry of these frontends, of both families;
    /// returns how many. A scan of both maps: it runs only when a
    /// frontend's affinity is switched on or off, or an affinity frontend
    /// goes.
    pub fn forget_affinity(&mut self, frontend_ids: &std::collections::BTreeSet<u32>) -> anyhow::Result<usize> {
        let v4 = forget_affinity_in(&mut self.affinity, |k| k.frontend_id, frontend_ids)?;
        Ok(v4 + forget_affinity_in(&mut self.affinity_v6, |k| k.frontend_id, frontend_ids)?)
    }
}

/// `ServiceMaps::forget_affinity` on one family's map.
fn forget_affinity_in<K: Pod>(
    map: &mut HashMap<MapData, K, AffinityValueV4>,
    frontend_of: impl Fn(&K) -> u32,
    frontend_ids: &std::collections::BTreeSet<u32>,
) -> anyhow::Result<usize> {
    let keys: Vec<K> = map.keys().collect::<Result<_, _>>().context("reading affinity")?;
    let mut deleted = 0;
    for key in keys.iter().filter(|k| frontend_ids.contains(&frontend_of(k))) {
        match map.remove(key) {
            Ok(()) => deleted += 1,
            // Evicted meanwhile by the LRU map: gone all the same.
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).context("deleting an affinity entry"),
        }
    }
    Ok(deleted)
}

/// Reads the affinity table (CLI, tests).
pub fn affinity_entries(pin_dir: &Path) -> anyhow::Result<Vec<(AffinityKeyV4, AffinityValueV4)>> {
    read_affinity(pin_dir, names::AFFINITY_V4)
}

/// Reads `LB6_AFFINITY`, as [`affinity_entries`].
pub fn affinity_v6_entries(pin_dir: &Path) -> anyhow::Result<Vec<(AffinityKeyV6, AffinityValueV4)>> {
    read_affinity(pin_dir, names::AFFINITY_V6)
}

fn read_affinity<K: Pod>(pin_dir: &Path, name: &str) -> anyhow::Result<Vec<(K, AffinityValueV4)>> {
    let map: HashMap<MapData, K, AffinityValueV4> = open_pinned(pin_dir, name)?.try_into().context(name.to_owned())?;
    map.iter().map(|e| e.context("reading affinity")).collect()
}

/// Reads the IPv4 conntrack table (CLI, metrics, tests): batched, as the
/// table holds up to `--conntrack-max` entries.
pub fn conntrack_entries(pin_dir: &Path) -> anyhow::Result<Vec<(CtKeyV4, CtValueV4)>> {
    read_conntrack(pin_dir, names::CONNTRACK_V4)
}

/// Reads the IPv6 conntrack table, as [`conntrack_entries`].
pub fn conntrack_v6_entries(pin_dir: &Path) -> anyhow::Result<Vec<(CtKeyV6, CtValueV6)>> {
    read_conntrack(pin_dir, names::CONNTRACK_V6)
}

fn read_conntrack<K: Pod, V: Pod>(pin_dir: &Path, name: &str) -> anyhow::Result<Vec<(K, V)>> {
    let map: HashMap<MapData, K, V> = open_pinned(pin_dir, name)?.try_into().context(name.to_owned())?;
    if let Some(entries) = batch::lookup_all(map.map()).context("reading conntrack")? {
        return Ok(entries);
    }
    map.iter().map(|e| e.context("reading conntrack")).collect()
}

/// Writes the datapath's settings (`LB_CONFIG`), read by every program
/// from its next packet on.
pub fn write_config(pin_dir: &Path, config: lb_common::config::DatapathConfig) -> anyhow::Result<()> {
    let mut map: Array<MapData, lb_common::config::DatapathConfig> =
        open_pinned(pin_dir, names::CONFIG)?.try_into().context(names::CONFIG)?;
    map.set(0, config, 0).context("writing the datapath settings")
}

/// Each counted frontend's counters (by frontend id), summed over CPUs.
pub fn frontend_stats(pin_dir: &Path) -> anyhow::Result<BTreeMap<u32, FrontendStatsV4>> {
    let map: PerCpuHashMap<MapData, u32, FrontendStatsV4> =
        open_pinned(pin_dir, names::FRONTEND_STATS_V4)?.try_into().context(names::FRONTEND_STATS_V4)?;
    let mut out = BTreeMap::new();
    for entry in map.iter() {
        let (id, per_cpu) = entry.context("reading per-frontend counters")?;
        out.insert(id, per_cpu.iter().fold(FrontendStatsV4::default(), |sum, cpu| sum.plus(*cpu)));
    }
    Ok(out)
}

/// Removes the counters of frontends no longer served (`live` says which
/// are). Frontend ids are never reused, so a removed frontend's counters
/// would only ever be read, never moved again. Returns how many went.
pub fn prune_frontend_stats(pin_dir: &Path, live: impl Fn(u32) -> bool) -> anyhow::Result<usize> {
    let mut map: PerCpuHashMap<MapData, u32, FrontendStatsV4> =
        open_pinned(pin_dir, names::FRONTEND_STATS_V4)?.try_into().context(names::FRONTEND_STATS_V4)?;
    let gone: Vec<u32> = map.keys().filter_map(Result::ok).filter(|id| !live(*id)).collect();
    for id in &gone {
        match map.remove(id) {
            Ok(()) => {}
            // Removed meanwhile by another agent's prune (a rollout).
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e).context("removing per-frontend counters"),
        }
    }
    Ok(gone.len())
}

/// Sums the per-CPU counters.
pub fn counters(pin_dir: &Path) -> anyhow::Result<Vec<(Counter, u64)>> {
    let map: PerCpuArray<MapData, u64> = open_pinned(pin_dir, names::STATS)?.try_into().context(names::STATS)?;
    Counter::ALL
        .iter()
        .map(|&c| {
            let per_cpu = map.get(&(c as u32), 0).with_context(|| format!("reading counter {}", c.name()))?;
            Ok((c, per_cpu.iter().sum()))
        })
        .collect()
}
