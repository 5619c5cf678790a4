//! Every Service's health check, kept up to date one Service at a time by
//! the sync (which already re-translates exactly the changed Services),
//! and turned into one listener per port.

use std::collections::BTreeMap;

use crate::translate::{HealthCheck, ServiceRef};

/// What one port serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub service: ServiceRef,
    pub local_endpoints: usize,
}

/// The listeners to run, by port, and the Services left without one
/// because another Service has their port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub listeners: BTreeMap<u16, Listener>,
    /// (Service, port, the Service that has the port).
    pub conflicts: Vec<(ServiceRef, u16, ServiceRef)>,
}

/// The health checks of all Services that have one.
#[derive(Debug, Default)]
pub struct HealthChecks {
    by_service: BTreeMap<ServiceRef, HealthCheck>,
    changed: bool,
}

impl HealthChecks {
    /// Records one Service's check (`None`: it has none, or is gone).
    pub fn set(&mut self, service: &ServiceRef, check: Option<HealthCheck>) {
        let before = match check {
            Some(check) => self.by_service.insert(service.clone(), check),
            None => self.by_service.remove(service),
        };
        self.changed |= before != check;
    }

    /// Whether any check changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// One listener per port. Two Services on one port (the API server
    /// never allocates that; a hand-written file can) leave it to the
    /// first by (namespace, name), deterministically, where kube-proxy's
    /// second bind would fail in map order.
    pub fn desired(&self) -> Desired {
        let mut desired = Desired::default();
        for (service, check) in &self.by_service {
            match desired.listeners.get(&check.port) {
                Some(owner) => desired.conflicts.push((service.clone(), check.port, owner.service.clone())),
                None => {
                    let listener = Listener { service: service.clone(), local_endpoints: check.local_endpoints };
                    desired.listeners.insert(check.port, listener);
                }
            }
        }
        desired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ServiceRef {
        ("default".to_owned(), name.to_owned())
    }

    fn check(port: u16, local_endpoints: usize) -> Option<HealthCheck> {
        Some(HealthCheck { port, local_endpoints })
    }

    #[test]
    fn a_change_is_noticed_once_and_a_repeat_is_no_change() {
        let mut checks = HealthChecks::default();
        checks.set(&svc("web"), check(32000, 1));
        assert!(checks.take_changed());
        assert!(!checks.take_changed());
        checks.set(&svc("web"), check(32000, 1));
        checks.set(&svc("gone"), None);
        assert!(!checks.take_changed(), "same check, and removing what was never there");
        checks.set(&svc("web"), check(32000, 2));
        assert!(checks.take_changed(), "a new count");
    }

    #[test]
    fn counts_and_ports_follow_each_service() {
        let mut checks = HealthChecks::default();
        checks.set(&svc("a"), check(32000, 1));
        checks.set(&svc("b"), check(32001, 0));
        checks.set(&svc("a"), check(32002, 3));
        checks.set(&svc("b"), None);
        let desired = checks.desired();
        assert_eq!(desired.listeners, BTreeMap::from([(32002, Listener { service: svc("a"), local_endpoints: 3 })]));
        assert!(desired.conflicts.is_empty());
    }

    #[test]
    fn a_port_claimed_twice_goes_to_the_first_service_by_name() {
        let mut checks = HealthChecks::default();
        checks.set(&svc("zeta"), check(32000, 0));
        checks.set(&svc("alpha"), check(32000, 2));
        let desired = checks.desired();
        assert_eq!(desired.listeners[&32000].service, svc("alpha"));
        assert_eq!(desired.conflicts, [(svc("zeta"), 32000, svc("alpha"))]);
        checks.set(&svc("alpha"), None);
        assert_eq!(checks.desired().listeners[&32000].service, svc("zeta"), "served once the winner goes");
    }
}
