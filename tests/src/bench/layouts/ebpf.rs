//! This project's datapath on real traffic: the real `lb-agent` binary,
//! attached at tc ingress of every interface of the node namespace and
//! programmed from the table written as a JSON file.

use std::time::{Duration, Instant};

use lb_userspace::datapath::loader::Capacities;

use super::{Installed, Target};
use crate::bench::{
    agent::{Agent, AgentConfig},
    table::Table,
};

/// Map sizes for a table: one Service-map entry per frontend and one per
/// backend slot, with headroom; the defaults when they suffice.
pub fn capacities_for(services: usize, endpoints_per_service: usize) -> Capacities {
    let defaults = Capacities::default();
    let needed = services.saturating_mul(endpoints_per_service + 1).saturating_mul(5) / 4;
    Capacities { services: defaults.services.max(u32::try_from(needed).unwrap_or(u32::MAX)), ..defaults }
}

/// Generous: large tables take seconds to parse and write.
pub fn programming_timeout(services: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(services as u64 * 2)
}

pub fn install(table: &Table, target: &Target<'_>) -> anyhow::Result<Installed> {
    let source = target.work_dir.join("services.json");
    table.write_json(&source)?;
    let endpoints = table.services.first().map_or(0, |s| s.endpoints.len());
    let started = Instant::now();
    let mut agent = Agent::start(&AgentConfig {
        bin: target.agent_bin,
        netns: target.node_netns,
        source: &source,
        capacities: capacities_for(table.services.len(), endpoints),
        extra_args: &[],
    })?;
    agent.wait_programmed(table.services.len(), programming_timeout(table.services.len()))?;
    Ok(Installed::Agent { agent, took: started.elapsed() })
}
