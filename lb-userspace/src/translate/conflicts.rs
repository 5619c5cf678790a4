//! One owner per (address, port, protocol): the datapath keys frontends by
//! that triple, so two claims on it cannot both be served.

use std::net::IpAddr;

use crate::model::{Frontend, FrontendKind, Problem, Protocol};

/// Keeps, for each (address, port, protocol), the claim of the Service
/// that sorts first by (namespace, name) and reports the others. Returns
/// the kept frontends sorted by (address, port, protocol).
pub(super) fn resolve(mut candidates: Vec<Frontend>, problems: &mut Vec<Problem>) -> Vec<Frontend> {
    candidates.sort_by(|a, b| claim_order(a).cmp(&claim_order(b)));
    let mut kept: Vec<Frontend> = Vec::with_capacity(candidates.len());
    for frontend in candidates {
        match kept.last() {
            Some(owner) if key(owner) == key(&frontend) => problems.push(conflict(owner, &frontend)),
            _ => kept.push(frontend),
        }
    }
    kept
}

fn key(frontend: &Frontend) -> (IpAddr, u16, Protocol) {
    (frontend.address, frontend.port, frontend.protocol())
}

/// Sort key: the triple first, then the claimant; kind and port name make
/// the order total when one Service claims a triple twice.
fn claim_order(frontend: &Frontend) -> (IpAddr, u16, Protocol, &str, &str, FrontendKind, &str) {
    let service = &frontend.service;
    let (address, port, protocol) = key(frontend);
    (address, port, protocol, &service.namespace, &service.name, frontend.kind, &service.port)
}

/// Among claims on one (address, port, protocol), the smallest key wins:
/// the same order [`resolve`] uses, owned so a table can keep it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimKey {
    pub namespace: String,
    pub name: String,
    pub kind: FrontendKind,
    pub port_name: String,
}

impl ClaimKey {
    pub fn of(frontend: &Frontend) -> Self {
        let s = &frontend.service;
        Self { namespace: s.namespace.clone(), name: s.name.clone(), kind: frontend.kind, port_name: s.port.clone() }
    }
}

/// The problem reported for a claim that lost to `owner`.
pub fn conflict_problem(owner: &Frontend, loser: &Frontend) -> Problem {
    conflict(owner, loser)
}

fn conflict(owner: &Frontend, loser: &Frontend) -> Problem {
    let message = format!(
        "{} frontend {}:{}/{} of {} is already served by {} ({}); skipped",
        loser.kind.as_str(),
        loser.address,
        loser.port,
        loser.protocol(),
        loser.service,
        owner.service,
        owner.kind.as_str(),
    );
    Problem { kind: "Service", namespace: loser.service.namespace.clone(), name: loser.service.name.clone(), message }
}
