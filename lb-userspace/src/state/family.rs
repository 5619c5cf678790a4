//! Which table of its family an entry goes to. Frontends and backends of
//! both families share the id spaces, the port filter, the Maglev tables
//! and the per-frontend counters; only the service and backend tables are
//! per family (`LB4_*`, `LB6_*`), as the datapath must never pay for
//! 16-byte keys on an IPv4 packet.

use std::net::IpAddr;

use lb_common::{
    backend::{BackendV4, BackendV6},
    service::{ServiceKeyV4, ServiceKeyV6, ServiceValue},
};

use super::{backends::BackendIdentity, set};
use crate::{
    model::IpFamily,
    tables::{DesiredMaps, Touched},
};

/// A key of `LB4_SERVICES` or `LB6_SERVICES`: a frontend entry or a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKey {
    V4(ServiceKeyV4),
    V6(ServiceKeyV6),
}

impl ServiceKey {
    /// The frontend entry (slot 0) for an address, port and protocol.
    pub fn frontend(address: IpAddr, port: u16, proto: u8) -> Self {
        match address {
            IpAddr::V4(ip) => Self::V4(ServiceKeyV4::frontend(ip.octets(), port, proto)),
            IpAddr::V6(ip) => Self::V6(ServiceKeyV6::frontend(ip.octets(), port, proto)),
        }
    }

    pub fn slot(self, slot: u16) -> Self {
        match self {
            Self::V4(key) => Self::V4(key.slot(slot)),
            Self::V6(key) => Self::V6(key.slot(slot)),
        }
    }

    pub fn in_cluster(self) -> Self {
        match self {
            Self::V4(key) => Self::V4(key.in_cluster()),
            Self::V6(key) => Self::V6(key.in_cluster()),
        }
    }

    /// The frontend address's bit in `lb_common::address_filter`.
    pub fn address_filter_bit(self) -> u32 {
        match self {
            Self::V4(key) => lb_common::address_filter::bit_v4(key.address),
            Self::V6(key) => lb_common::address_filter::bit_v6(key.address),
        }
    }

    pub fn port(self) -> u16 {
        match self {
            Self::V4(key) => key.port,
            Self::V6(key) => key.port,
        }
    }

    pub fn proto(self) -> u8 {
        match self {
            Self::V4(key) => key.proto,
            Self::V6(key) => key.proto,
        }
    }

    pub fn family(self) -> IpFamily {
        match self {
            Self::V4(_) => IpFamily::V4,
            Self::V6(_) => IpFamily::V6,
        }
    }

    /// 0 for a frontend entry, else the (1-based) slot.
    pub fn slot_number(self) -> u16 {
        match self {
            Self::V4(key) => key.backend_slot,
            Self::V6(key) => key.backend_slot,
        }
    }
}

/// Sets or removes one entry of the service table of the key's family.
pub fn set_service(maps: &mut DesiredMaps, touched: &mut Touched, key: ServiceKey, value: Option<ServiceValue>) {
    match key {
        ServiceKey::V4(key) => set(&mut maps.services, &mut touched.services, key, value),
        ServiceKey::V6(key) => set(&mut maps.services_v6, &mut touched.services_v6, key, value),
    }
}

/// Sets (with its flags) or removes one backend, in the backend table of
/// its address's family.
pub fn set_backend(
    maps: &mut DesiredMaps,
    touched: &mut Touched,
    id: u32,
    identity: BackendIdentity,
    flags: Option<u8>,
) {
    let BackendIdentity { address, port, proto } = identity;
    match address {
        IpAddr::V4(ip) => {
            let value = flags.map(|flags| BackendV4 { address: ip.octets(), port, proto, flags });
            set(&mut maps.backends, &mut touched.backends, id, value);
        }
        IpAddr::V6(ip) => {
            let value = flags.map(|flags| BackendV6 { address: ip.octets(), port, proto, flags });
            set(&mut maps.backends_v6, &mut touched.backends_v6, id, value);
        }
    }
}

/// One entry of the service table of the key's family.
pub fn service(maps: &DesiredMaps, key: ServiceKey) -> Option<&ServiceValue> {
    match key {
        ServiceKey::V4(key) => maps.services.get(&key),
        ServiceKey::V6(key) => maps.services_v6.get(&key),
    }
}

/// The frontend entries (slot 0) of both service tables.
pub fn frontends(maps: &DesiredMaps) -> impl Iterator<Item = (ServiceKey, &ServiceValue)> {
    let v4 = maps.services.iter().map(|(k, v)| (ServiceKey::V4(*k), v));
    let v6 = maps.services_v6.iter().map(|(k, v)| (ServiceKey::V6(*k), v));
    v4.chain(v6).filter(|(key, _)| key.slot_number() == 0)
}

/// A backend of the given family's table: its identity and flags.
pub fn backend(maps: &DesiredMaps, family: IpFamily, id: u32) -> Option<(BackendIdentity, u8)> {
    match family {
        IpFamily::V4 => maps.backends.get(&id).map(|b| (BackendIdentity::v4(b), b.flags)),
        IpFamily::V6 => maps.backends_v6.get(&id).map(|b| (BackendIdentity::v6(b), b.flags)),
    }
}

/// Every backend of both tables, by id.
pub fn backends(maps: &DesiredMaps) -> impl Iterator<Item = (u32, BackendIdentity)> + '_ {
    let v4 = maps.backends.iter().map(|(id, b)| (*id, BackendIdentity::v4(b)));
    let v6 = maps.backends_v6.iter().map(|(id, b)| (*id, BackendIdentity::v6(b)));
    v4.chain(v6)
}
