//! Typed access to the datapath's maps, either taken from a freshly loaded
//! object (the agent) or opened from their pins (the CLI, tests).

use std::path::Path;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
};
use lb_common::{
    backend::BackendV4,
    conntrack::{CtKeyV4, CtValueV4},
    maps as names,
    service::{ServiceKeyV4, ServiceValue},
    stats::Counter,
};

use crate::{diff::Write, encode::DesiredMaps};

/// The maps the agent writes.
pub struct ServiceMaps {
    services: HashMap<MapData, ServiceKeyV4, ServiceValue>,
    backends: HashMap<MapData, u32, BackendV4>,
    port_filter: Array<MapData, u8>,
}

impl std::fmt::Debug for ServiceMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceMaps")
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name).with_context(|| format!("map {name} missing from the object"))
}

fn open_pinned(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("unsupported map type at {}", path.display()))
}

impl ServiceMaps {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Self::from_maps(
            take(ebpf, names::SERVICES_V4)?,
            take(ebpf, names::BACKENDS_V4)?,
            take(ebpf, names::PORT_FILTER)?,
        )
    }

    pub fn from_pins(pin_dir: &Path) -> anyhow::Result<Self> {
        Self::from_maps(
            open_pinned(pin_dir, names::SERVICES_V4)?,
            open_pinned(pin_dir, names::BACKENDS_V4)?,
            open_pinned(pin_dir, names::PORT_FILTER)?,
        )
    }

    fn from_maps(services: Map, backends: Map, port_filter: Map) -> anyhow::Result<Self> {
        Ok(Self {
            services: services.try_into().context(names::SERVICES_V4)?,
            backends: backends.try_into().context(names::BACKENDS_V4)?,
            port_filter: port_filter.try_into().context(names::PORT_FILTER)?,
        })
    }

    /// One entry of the Service table (a frontend or a slot).
    pub fn service_entry(&self, key: &ServiceKeyV4) -> Option<ServiceValue> {
        self.services.get(key, 0).ok()
    }

    /// Everything the maps hold now (after a restart: what the previous
    /// agent wrote).
    pub fn read_all(&self) -> anyhow::Result<DesiredMaps> {
        let mut maps = DesiredMaps::default();
        for entry in self.services.iter() {
            let (key, value) = entry.context("reading services")?;
            maps.services.insert(key, value);
        }
        for entry in self.backends.iter() {
            let (id, backend) = entry.context("reading backends")?;
            maps.backends.insert(id, backend);
        }
        for (port, bits) in self.port_filter.iter().enumerate() {
            let bits = bits.context("reading port filter")?;
            if bits != 0 {
                maps.port_filter.insert(port as u16, bits);
            }
        }
        Ok(maps)
    }

    /// One write. Deleting an absent entry is not an error: the result is
    /// what was asked for.
    pub fn write(&mut self, write: &Write) -> anyhow::Result<()> {
        let result = match *write {
            Write::SetPortBits { port, bits } => self.port_filter.set(u32::from(port), bits, 0),
            Write::PutBackend { id, backend } => self.backends.insert(id, backend, 0),
            Write::PutService { key, value } => self.services.insert(key, value, 0),
            Write::DeleteService { key } => self.services.remove(&key),
            Write::DeleteBackend { id } => self.backends.remove(&id),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context(format!("map write {write:?}"))),
        }
    }
}

fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Reads the conntrack table (CLI, tests).
pub fn conntrack_entries(pin_dir: &Path) -> anyhow::Result<Vec<(CtKeyV4, CtValueV4)>> {
    let map: HashMap<MapData, CtKeyV4, CtValueV4> =
        open_pinned(pin_dir, names::CONNTRACK_V4)?.try_into().context(names::CONNTRACK_V4)?;
    map.iter().map(|e| e.context("reading conntrack")).collect()
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
