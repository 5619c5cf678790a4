//! Desired map contents vs what the kernel holds → the minimal list of
//! writes, ordered so the datapath never sees a half-built Service:
//! port-filter bits and backends first, then slots, then frontend entries
//! (whose `count` makes new slots reachable); on the way out the reverse:
//! frontends, then slots, then backends, then port-filter bits.

use lb_common::{backend::BackendV4, service::{ServiceKeyV4, ServiceValue}};

use crate::encode::DesiredMaps;

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
    let mut writes = Vec::new();
    let is_frontend = |k: &ServiceKeyV4| k.backend_slot == 0;

    // Bits that gain: set before anything relies on them.
    for (&port, &bits) in &desired.port_filter {
        let old = current.port_filter.get(&port).copied().unwrap_or(0);
        if old | bits != old {
            writes.push(Write::SetPortBits { port, bits: old | bits });
        }
    }
    for (&id, &backend) in &desired.backends {
        if current.backends.get(&id) != Some(&backend) {
            writes.push(Write::PutBackend { id, backend });
        }
    }
    let changed_services = || {
        desired.services.iter().filter(|(k, v)| current.services.get(*k) != Some(*v))
    };
    for (&key, &value) in changed_services().filter(|(k, _)| !is_frontend(k)) {
        writes.push(Write::PutService { key, value });
    }
    for (&key, &value) in changed_services().filter(|(k, _)| is_frontend(k)) {
        writes.push(Write::PutService { key, value });
    }

    let removed_services = || current.services.keys().filter(|k| !desired.services.contains_key(*k));
    for &key in removed_services().filter(|k| is_frontend(k)) {
        writes.push(Write::DeleteService { key });
    }
    for &key in removed_services().filter(|k| !is_frontend(k)) {
        writes.push(Write::DeleteService { key });
    }
    for &id in current.backends.keys().filter(|id| !desired.backends.contains_key(*id)) {
        writes.push(Write::DeleteBackend { id });
    }
    // Bits that drop: only after the entries that needed them are gone.
    for (&port, &old) in &current.port_filter {
        let new = desired.port_filter.get(&port).copied().unwrap_or(0);
        if new != old && old | new == old {
            writes.push(Write::SetPortBits { port, bits: new });
        }
    }
    // A port that both gained and lost bits got `old | new` above; finish it.
    for (&port, &new) in &desired.port_filter {
        let old = current.port_filter.get(&port).copied().unwrap_or(0);
        if old | new != old && old | new != new {
            writes.push(Write::SetPortBits { port, bits: new });
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
