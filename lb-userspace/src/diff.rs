//! Desired map contents vs what the kernel holds → the minimal list of
//! writes, ordered so the datapath never sees a half-built Service:
//! port-filter bits and backends first, then slots, then frontend entries
//! (whose `count` makes new slots reachable); on the way out the reverse:
//! frontends, then slots, then backends, then port-filter bits.

use lb_common::{backend::BackendV4, service::{ServiceKeyV4, ServiceValue}};

use crate::{encode::DesiredMaps, state::Touched};

/// One map write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    SetPortBits { port: u16, bits: u8 },
    PutBackend { id: u32, backend: BackendV4 },
    PutService { key: ServiceKeyV4, value: ServiceValue },
    DeleteService { key: ServiceKeyV4 },
    DeleteBackend { id: u32 },
}

/// The writes that turn `current` into `desired`, in a safe order.
pub fn diff(current: &DesiredMaps, desired: &DesiredMaps) -> Vec<Write> {
    diff_keys(current, desired, &Touched::all(current, desired))
}

/// Like [`diff`], looking only at the keys in `keys` (the ones a change
/// may have touched); keys outside it are assumed equal.
pub fn diff_keys(current: &DesiredMaps, desired: &DesiredMaps, keys: &Touched) -> Vec<Write> {
    let mut writes = Vec::new();
    let is_frontend = |k: &ServiceKeyV4| k.backend_slot == 0;
    let bits = |maps: &DesiredMaps, port: &u16| maps.port_filter.get(port).copied().unwrap_or(0);

    // Bits that gain: set (keeping the old ones too) before anything relies on them.
    for port in &keys.ports {
        let (old, new) = (bits(current, port), bits(desired, port));
        if old | new != old {
            writes.push(Write::SetPortBits { port: *port, bits: old | new });
        }
    }
    for id in &keys.backends {
        if let Some(&backend) = desired.backends.get(id)
            && current.backends.get(id) != Some(&backend)
        {
            writes.push(Write::PutBackend { id: *id, backend });
        }
    }
    let changed_services = |frontends: bool| {
        keys.services.iter().filter(move |k| is_frontend(k) == frontends).filter_map(|k| {
            let value = desired.services.get(k)?;
            (current.services.get(k) != Some(value)).then_some(Write::PutService { key: *k, value: *value })
        })
    };
    writes.extend(changed_services(false));
    writes.extend(changed_services(true));

    let removed_services = |frontends: bool| {
        keys.services
            .iter()
            .filter(move |k| is_frontend(k) == frontends)
            .filter(|k| current.services.contains_key(*k) && !desired.services.contains_key(*k))
            .map(|k| Write::DeleteService { key: *k })
    };
    writes.extend(removed_services(true));
    writes.extend(removed_services(false));
    for id in &keys.backends {
        if current.backends.contains_key(id) && !desired.backends.contains_key(id) {
            writes.push(Write::DeleteBackend { id: *id });
        }
    }
    // Bits that drop: only once the entries that needed them are gone.
    for port in &keys.ports {
        let (old, new) = (bits(current, port), bits(desired, port));
        if old | new != new {
            writes.push(Write::SetPortBits { port: *port, bits: new });
        }
    }
    writes
}

/// Applies writes to an in-memory picture of the maps (the agent keeps one
/// in step with the kernel, so it never has to read the maps back).
pub fn apply_to(maps: &mut DesiredMaps, writes: &[Write]) {
    for write in writes {
        match *write {
            Write::SetPortBits { port, bits: 0 } => {
                maps.port_filter.remove(&port);
            }
            Write::SetPortBits { port, bits } => {
                maps.port_filter.insert(port, bits);
            }
            Write::PutBackend { id, backend } => {
                maps.backends.insert(id, backend);
            }
            Write::PutService { key, value } => {
                maps.services.insert(key, value);
            }
            Write::DeleteService { key } => {
                maps.services.remove(&key);
            }
            Write::DeleteBackend { id } => {
                maps.backends.remove(&id);
            }
        }
    }
}
