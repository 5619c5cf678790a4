//! The kernel maps the agent writes, declared once in [`for_each_map`]:
//! for each map its key and value types, its pinned name, how the kernel
//! stores it, its write phase and how a value changes. From that one
//! declaration come the in-memory mirror ([`DesiredMaps`]), the keys a
//! change touched ([`Touched`]), the typed writes ([`Write`]) and the diff
//! between two mirrors ([`diff_keys`]) here, and the kernel-side reader and
//! writer in `datapath::maps`. A new map is one more line there.
//!
//! Write order is what keeps the datapath from ever seeing a half-built
//! Service: puts go in increasing phase order, then deletions in
//! decreasing phase order. So a backend exists before a slot names it, a
//! slot before the frontend's count makes it reachable, and on the way out
//! the frontend stops reaching a slot before the slot and its backend go.
//! Within a phase, keys are written in key order.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::service::{ServiceKeyV4, ServiceKeyV6};

/// Invokes `$callback!` with the declaration of every map the agent
/// writes: `field: Variant, Key => Value, pinned name, kernel storage,
/// phase (a function of the key), transition`.
macro_rules! for_each_map {
    ($callback:ident) => {
        $callback! {
            /// The id counters (`lb_common::ids`): written before anything
            /// that uses a new id, so a restarted agent never hands it out again.
            ids: Ids, u32 => u32, lb_common::maps::IDS, Array, phase |_| 0, transition replace;
            /// The cluster's Pod CIDRs (`--cluster-cidr`).
            pod_cidrs: PodCidr, lb_common::pod_cidrs::PodCidrKeyV4 => u8, lb_common::maps::POD_CIDRS_V4, Lpm,
                phase |_| 0, transition replace;
            /// The cluster's IPv6 Pod CIDRs.
            pod_cidrs_v6: PodCidrV6, lb_common::pod_cidrs::PodCidrKeyV6 => u8, lb_common::maps::POD_CIDRS_V6, Lpm,
                phase |_| 0, transition replace;
            /// Port-filter bits by port (`lb_common::port_filter`).
            port_filter: PortFilter, u16 => u8, lb_common::maps::PORT_FILTER, Array, phase |_| 1, transition bits;
            /// Address-filter words by index (`lb_common::address_filter`).
            address_filter: AddressFilter, u32 => u64, lb_common::maps::ADDRESS_FILTER, Array, phase |_| 1,
                transition bits;
            /// Backends by id.
            backends: Backend, u32 => lb_common::backend::BackendV4, lb_common::maps::BACKENDS_V4, Hash, phase |_| 1, transition replace;
            /// IPv6 backends by id, from the same id space as `backends`.
            backends_v6: BackendV6, u32 => lb_common::backend::BackendV6, lb_common::maps::BACKENDS_V6, Hash, phase |_| 1,
                transition replace;
            /// `loadBalancerSourceRanges` of frontends: in place before the
            /// frontend entry's flag makes the datapath look them up.
            source_ranges: SourceRange, lb_common::source_ranges::SourceRangeKeyV4 => u8,
                lb_common::maps::SOURCE_RANGES_V4, Lpm, phase |_| 2, transition replace;
            /// IPv6 `loadBalancerSourceRanges`, in the same phase.
            source_ranges_v6: SourceRangeV6, lb_common::source_ranges::SourceRangeKeyV6 => u8,
                lb_common::maps::SOURCE_RANGES_V6, Lpm, phase |_| 2, transition replace;
            /// The backends each ClientIP affinity frontend may choose, in
            /// the slots' phase but declared before them: a backend becomes
            /// a member after it exists and before a slot names it, and
            /// stops being one once the frontend's count no longer reaches
            /// its slot (the datapath also checks that it still exists).
            affinity_members: AffinityMember, lb_common::affinity::AffinityMemberKeyV4 => u8,
                lb_common::maps::AFFINITY_MEMBERS_V4, Hash, phase |_| 2, transition replace;
            /// Frontend entries (slot 0, phase 3) and backend slots (phase 2).
            services: Service, lb_common::service::ServiceKeyV4 => lb_common::service::ServiceValue, lb_common::maps::SERVICES_V4, Hash,
                phase $crate::tables::service_phase, transition replace;
            /// IPv6 frontend entries and slots, in the same phases.
            services_v6: ServiceV6, lb_common::service::ServiceKeyV6 => lb_common::service::ServiceValue,
                lb_common::maps::SERVICES_V6, Hash, phase $crate::tables::service_v6_phase, transition replace;
            /// Maglev tables by frontend id, with the slots (phase 2):
            /// after the backends they name, before the frontend entry
            /// that sets `FLAG_MAGLEV`, removed after it is gone. One
            /// whole table per entry; the kernel writer writes only the
            /// positions that differ.
            maglev: Maglev, u32 => $crate::maglev::Table, lb_common::maps::MAGLEV_V4, OfMaps, phase |_| 2, transition replace;
        }
    };
}
pub(crate) use for_each_map;

/// Slots are written before the frontend entry whose count reaches them.
pub fn service_phase(key: &ServiceKeyV4) -> u8 {
    slot_phase(key.backend_slot)
}

/// As [`service_phase`], for the IPv6 table.
pub fn service_v6_phase(key: &ServiceKeyV6) -> u8 {
    slot_phase(key.backend_slot)
}

fn slot_phase(backend_slot: u16) -> u8 {
    if backend_slot == 0 { 3 } else { 2 }
}

/// How a value goes from `old` to `new`: what is written among the puts
/// (`early`) and what among the deletions (`late`); `Some(None)` deletes.
pub struct Steps<V> {
    pub early: Option<Option<V>>,
    pub late: Option<Option<V>>,
}

/// Plain values: a changed or new value is put, a removed one deleted.
pub fn replace<V: PartialEq>(old: Option<V>, new: Option<V>) -> Steps<V> {
    match (old, new) {
        (old, Some(new)) if old.as_ref() != Some(&new) => Steps { early: Some(Some(new)), late: None },
        (Some(_), None) => Steps { early: None, late: Some(None) },
        _ => Steps { early: None, late: None },
    }
}

/// Bit sets: bits that appear are set among the puts (keeping the old
/// ones, which entries not yet rewritten still need), bits that go are
/// cleared among the deletions, once nothing needs them.
pub fn bits<V: Copy + Default + PartialEq + std::ops::BitOr<Output = V>>(old: Option<V>, new: Option<V>) -> Steps<V> {
    let (old, new) = (old.unwrap_or_default(), new.unwrap_or_default());
    let union = old | new;
    let none = V::default();
    Steps { early: (union != old).then_some(Some(union)), late: (union != new).then_some((new != none).then_some(new)) }
}

macro_rules! pure_tables {
    ($(
        $(#[$doc:meta])*
        $field:ident: $variant:ident, $key:ty => $value:ty, $name:expr, $storage:ident,
            phase $phase:expr, transition $transition:ident;
    )*) => {
        /// What the kernel maps hold, or should hold, in map-entry form.
        /// Array maps list only their non-zero entries.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct DesiredMaps {
            $( $(#[$doc])* pub $field: BTreeMap<$key, $value>, )*
        }

        /// Keys that may differ between two [`DesiredMaps`].
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Touched {
            $( pub $field: BTreeSet<$key>, )*
        }

        impl Touched {
            /// Every key of both: a full diff.
            pub fn all(a: &DesiredMaps, b: &DesiredMaps) -> Self {
                Self { $( $field: a.$field.keys().chain(b.$field.keys()).copied().collect(), )* }
            }

            pub fn is_empty(&self) -> bool {
                true $( && self.$field.is_empty() )*
            }
        }

        /// One map write: a put (`Some`) or a deletion (`None`).
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Write {
            $( $variant($key, Option<$value>), )*
        }

        /// The writes that turn `current` into `desired`, looking only at
        /// `keys` (keys outside it are taken to be equal), in a safe order.
        pub fn diff_keys(current: &DesiredMaps, desired: &DesiredMaps, keys: &Touched) -> Vec<Write> {
            let mut early: Vec<(u8, Write)> = Vec::new();
            let mut late: Vec<(u8, Write)> = Vec::new();
            $(
                for key in &keys.$field {
                    let phase: u8 = ($phase)(key);
                    let steps = $transition(current.$field.get(key).cloned(), desired.$field.get(key).cloned());
                    early.extend(steps.early.map(|value| (phase, Write::$variant(*key, value))));
                    late.extend(steps.late.map(|value| (phase, Write::$variant(*key, value))));
                }
            )*
            // Stable sorts: key order is kept within a phase.
            early.sort_by_key(|(phase, _)| *phase);
            late.sort_by_key(|(phase, _)| std::cmp::Reverse(*phase));
            early.into_iter().chain(late).map(|(_, write)| write).collect()
        }

        /// Applies writes to an in-memory mirror.
        pub fn apply_to(maps: &mut DesiredMaps, writes: &[Write]) {
            for write in writes {
                match write {
                    $(
                        Write::$variant(key, Some(value)) => { maps.$field.insert(*key, value.clone()); }
                        Write::$variant(key, None) => { maps.$field.remove(key); }
                    )*
                }
            }
        }
    };
}

for_each_map!(pure_tables);

/// Every write that turns `current` into `desired`.
pub fn diff(current: &DesiredMaps, desired: &DesiredMaps) -> Vec<Write> {
    diff_keys(current, desired, &Touched::all(current, desired))
}

#[cfg(test)]
mod tests {
    use lb_common::{backend::BackendV4, service::ServiceValue};

    use super::*;

    const WEB: ServiceKeyV4 = ServiceKeyV4::frontend([10, 96, 0, 10], 80, 6);

    fn backend(last: u8) -> BackendV4 {
        BackendV4 { address: [10, 244, 0, last], port: 8080, proto: 6, flags: 0 }
    }

    fn service(count: u16) -> DesiredMaps {
        let mut maps = DesiredMaps::default();
        maps.ids.insert(lb_common::ids::LAST_BACKEND_ID, u32::from(count));
        maps.port_filter.insert(80, lb_common::port_filter::FRONTEND_PORT);
        maps.port_filter.insert(8080, lb_common::port_filter::BACKEND_PORT);
        for slot in 1..=count {
            maps.backends.insert(u32::from(slot), backend(slot as u8));
            maps.services.insert(WEB.slot(slot), ServiceValue { backend_id: u32::from(slot), ..Default::default() });
        }
        maps.services.insert(WEB, ServiceValue { frontend_id: 1, count, ..Default::default() });
        maps
    }

    fn phases(writes: &[Write]) -> Vec<&'static str> {
        writes
            .iter()
            .map(|w| match w {
                Write::Ids(..) => "ids",
                Write::PortFilter(_, Some(_)) => "bits",
                Write::PortFilter(_, None) => "clear bits",
                Write::AddressFilter(_, Some(_)) => "address bits",
                Write::AddressFilter(_, None) => "clear address bits",
                Write::Backend(_, Some(_)) => "backend",
                Write::Backend(_, None) => "delete backend",
                Write::Service(k, Some(_)) if k.backend_slot == 0 => "frontend",
                Write::Service(_, Some(_)) => "slot",
                Write::Service(k, None) if k.backend_slot == 0 => "delete frontend",
                Write::Service(_, None) => "delete slot",
                Write::SourceRange(_, Some(_)) => "range",
                Write::SourceRange(_, None) => "delete range",
                Write::PodCidr(..) | Write::PodCidrV6(..) => "pod cidr",
                Write::Maglev(_, Some(_)) => "maglev",
                Write::Maglev(_, None) => "delete maglev",
                Write::AffinityMember(_, Some(_)) => "member",
                Write::AffinityMember(_, None) => "delete member",
                Write::BackendV6(..) | Write::ServiceV6(..) | Write::SourceRangeV6(..) => {
                    unreachable!("no IPv6 entries here")
                }
            })
            .collect()
    }

    #[test]
    fn a_new_service_is_built_from_the_bottom_up() {
        let writes = diff(&DesiredMaps::default(), &service(2));
        assert_eq!(phases(&writes), ["ids", "bits", "bits", "backend", "backend", "slot", "slot", "frontend"]);
    }

    #[test]
    fn a_removed_service_is_taken_down_from_the_top() {
        let writes = diff(&service(2), &DesiredMaps::default());
        assert_eq!(
            phases(&writes),
            [
                "delete frontend",
                "delete slot",
                "delete slot",
                "clear bits",
                "clear bits",
                "delete backend",
                "delete backend",
                "ids"
            ]
        );
    }

    #[test]
    fn a_shrinking_service_lowers_its_count_before_its_slot_goes() {
        let writes = diff(&service(2), &service(1));
        assert_eq!(phases(&writes), ["ids", "frontend", "delete slot", "delete backend"]);
    }

    fn maglev_service(count: u16) -> DesiredMaps {
        let mut maps = service(count);
        maps.services.get_mut(&WEB).unwrap().flags |= lb_common::service::FLAG_MAGLEV;
        let endpoint =
            |id: u32| crate::maglev::Endpoint { address: [10, 244, 0, id as u8].into(), port: 8080, proto: 6 };
        let backends: Vec<_> = (1..=u32::from(count)).map(|id| (endpoint(id), id)).collect();
        maps.maglev.insert(1, crate::maglev::Table::new(&crate::maglev::build(&backends)));
        maps
    }

    #[test]
    fn a_maglev_table_is_written_before_its_frontend_and_removed_after_it() {
        let writes = diff(&DesiredMaps::default(), &maglev_service(2));
        assert_eq!(
            phases(&writes),
            ["ids", "bits", "bits", "backend", "backend", "slot", "slot", "maglev", "frontend"]
        );
        let writes = diff(&maglev_service(2), &DesiredMaps::default());
        assert_eq!(
            phases(&writes),
            [
                "delete frontend",
                "delete slot",
                "delete slot",
                "delete maglev",
                "clear bits",
                "clear bits",
                "delete backend",
                "delete backend",
                "ids"
            ]
        );
    }

    #[test]
    fn a_shrinking_maglev_frontend_rewrites_its_table_before_the_backend_goes() {
        let writes = diff(&maglev_service(3), &maglev_service(2));
        assert_eq!(phases(&writes), ["ids", "maglev", "frontend", "delete slot", "delete backend"]);
    }

    #[test]
    fn port_bits_gain_early_and_lose_late() {
        let steps = bits(Some(0b01), Some(0b10));
        assert_eq!(steps.early, Some(Some(0b11)), "both bits while old and new entries coexist");
        assert_eq!(steps.late, Some(Some(0b10)));
        let cleared = bits(Some(0b01), None);
        assert_eq!((cleared.early, cleared.late), (None, Some(None)));
        let same = bits(Some(0b11), Some(0b11));
        assert_eq!((same.early, same.late), (None, None));
    }

    #[test]
    fn apply_to_replays_a_diff() {
        let (from, to) = (service(3), service(1));
        let mut mirror = from.clone();
        apply_to(&mut mirror, &diff(&from, &to));
        assert_eq!(mirror, to);
    }
}
