//! ClientIP affinity, the agent's part (pure): which frontends' entries in
//! the datapath's affinity map must go when a sync is written.
//!
//! Switching affinity off must not leave a client bound when it is
//! switched on again (the frontend keeps its id), and a frontend that goes
//! takes its entries with it. Entries are found by a scan of the map, so
//! only a sync that switches affinity or removes an affinity frontend
//! pays for one.

use std::collections::BTreeSet;

use lb_common::service::{FLAG_SESSION_AFFINITY, ServiceValue};

use crate::tables::{DesiredMaps, Write};

/// Frontend ids whose affinity entries to delete, around one batch of writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forget {
    /// Before the writes: frontends whose affinity is being switched on,
    /// so the first flows after the switch start fresh and are not
    /// deleted behind them.
    pub before: BTreeSet<u32>,
    /// After the writes: frontends whose affinity was switched off or that
    /// are gone, once the datapath no longer writes entries for them (a
    /// flow already past the frontend lookup may still write one; it is
    /// never followed while affinity is off, and the switch back on
    /// deletes it).
    pub after: BTreeSet<u32>,
}

impl Forget {
    /// What `writes`, applied to maps that hold `current`, switch.
    pub fn of(current: &DesiredMaps, writes: &[Write]) -> Self {
        let mut forget = Self::default();
        let affinity_id = |value: Option<&ServiceValue>| {
            value.filter(|v| v.flags & FLAG_SESSION_AFFINITY != 0).map(|v| v.frontend_id)
        };
        // Frontends of both families: ids are one space, and the datapath
        // keeps each family's entries in its own map.
        for write in writes {
            let (old, new) = match write {
                Write::Service(key, new) if key.backend_slot == 0 => (current.services.get(key), new),
                Write::ServiceV6(key, new) if key.backend_slot == 0 => (current.services_v6.get(key), new),
                _ => continue,
            };
            let (old, new) = (affinity_id(old), affinity_id(new.as_ref()));
            if old == new {
                continue;
            }
            forget.after.extend(old);
            forget.before.extend(new);
        }
        forget
    }
}

#[cfg(test)]
mod tests {
    use lb_common::service::{FLAG_CLUSTER_IP, ServiceKeyV4, ServiceKeyV6};

    use super::*;

    const WEB: ServiceKeyV4 = ServiceKeyV4::frontend([10, 96, 0, 10], 80, 6);

    fn frontend(id: u32, affinity: bool) -> ServiceValue {
        let flags = FLAG_CLUSTER_IP | if affinity { FLAG_SESSION_AFFINITY } else { 0 };
        ServiceValue {
            frontend_id: id,
            count: 2,
            flags,
            affinity_timeout_s: if affinity { 30 } else { 0 },
            backend_id: 0,
        }
    }

    fn holding(value: ServiceValue) -> DesiredMaps {
        let mut maps = DesiredMaps::default();
        maps.services.insert(WEB, value);
        maps
    }

    fn ids(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    #[test]
    fn switching_off_forgets_after_the_writes() {
        let forget = Forget::of(&holding(frontend(7, true)), &[Write::Service(WEB, Some(frontend(7, false)))]);
        assert_eq!(forget, Forget { before: ids(&[]), after: ids(&[7]) });
    }

    #[test]
    fn switching_on_forgets_before_the_writes() {
        let forget = Forget::of(&holding(frontend(7, false)), &[Write::Service(WEB, Some(frontend(7, true)))]);
        assert_eq!(forget, Forget { before: ids(&[7]), after: ids(&[]) });
    }

    #[test]
    fn ipv6_frontends_switch_as_ipv4_ones_do() {
        const WEB6: ServiceKeyV6 =
            ServiceKeyV6::frontend([0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10], 80, 6);
        let mut current = DesiredMaps::default();
        current.services_v6.insert(WEB6, frontend(9, true));
        let forget = Forget::of(&current, &[Write::ServiceV6(WEB6, Some(frontend(9, false)))]);
        assert_eq!(forget, Forget { before: ids(&[]), after: ids(&[9]) });
        let forget = Forget::of(&current, &[Write::ServiceV6(WEB6, None)]);
        assert_eq!(forget.after, ids(&[9]));
    }

    #[test]
    fn a_removed_affinity_frontend_is_forgotten() {
        let forget = Forget::of(&holding(frontend(7, true)), &[Write::Service(WEB, None)]);
        assert_eq!(forget.after, ids(&[7]));
    }

    #[test]
    fn a_changed_timeout_or_backend_count_forgets_nothing() {
        let mut changed = frontend(7, true);
        changed.affinity_timeout_s = 2;
        changed.count = 3;
        let slot = Write::Service(WEB.slot(3), Some(ServiceValue { backend_id: 4, ..Default::default() }));
        let forget = Forget::of(&holding(frontend(7, true)), &[slot, Write::Service(WEB, Some(changed))]);
        assert_eq!(forget, Forget::default());
    }

    #[test]
    fn frontends_without_affinity_forget_nothing() {
        let forget = Forget::of(&DesiredMaps::default(), &[Write::Service(WEB, Some(frontend(7, false)))]);
        assert_eq!(forget, Forget::default());
        let forget = Forget::of(&holding(frontend(7, false)), &[Write::Service(WEB, None)]);
        assert_eq!(forget, Forget::default());
    }
}
