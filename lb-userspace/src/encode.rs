//! Map-entry encodings of the model (pure): what a frontend's slot-0
//! entry and its Maglev table hold.

use ipnet::IpNet;
use lb_common::{
    affinity::AffinityMemberKeyV4,
    pod_cidrs::{PodCidrKeyV4, PodCidrKeyV6},
    service::{self, ServiceValue},
    source_ranges::{SourceRangeKeyV4, SourceRangeKeyV6},
};

use crate::{
    maglev::{Endpoint, Table, TableCache},
    model::{Balancing, Frontend, FrontendKind, WhenEmpty},
};

/// `FLAG_*` bits of a frontend entry.
pub fn frontend_flags(frontend: &Frontend) -> u16 {
    let kind = match frontend.kind {
        FrontendKind::ClusterIp => service::FLAG_CLUSTER_IP,
        FrontendKind::NodePort => service::FLAG_NODE_PORT,
        FrontendKind::ExternalIp => service::FLAG_EXTERNAL_IP,
        FrontendKind::LoadBalancer => service::FLAG_LOAD_BALANCER,
    };
    let affinity = if frontend.affinity_timeout_s.is_some() { service::FLAG_SESSION_AFFINITY } else { 0 };
    let local = if frontend.local_only { service::FLAG_LOCAL_ONLY } else { 0 };
    let drop_when_empty = frontend.backends.is_empty() && frontend.when_empty == WhenEmpty::Drop;
    let no_local = if drop_when_empty { service::FLAG_NO_LOCAL_ENDPOINTS } else { 0 };
    let ranges = if frontend.source_ranges.is_some() { service::FLAG_SOURCE_RANGES } else { 0 };
    let short_circuit = if frontend.in_cluster.is_some() { service::FLAG_SHORT_CIRCUIT } else { 0 };
    let maglev =
        if frontend.balancing == Balancing::Maglev && !frontend.backends.is_empty() { service::FLAG_MAGLEV } else { 0 };
    kind | affinity | local | no_local | ranges | short_circuit | maglev
}

/// The `LB4_POD_CIDRS` entries for the cluster's Pod CIDRs (IPv4 ones).
pub fn pod_cidr_keys(cidrs: &[IpNet]) -> Vec<PodCidrKeyV4> {
    let mut keys: Vec<PodCidrKeyV4> = cidrs
        .iter()
        .filter_map(|cidr| match cidr {
            IpNet::V4(net) => {
                Some(PodCidrKeyV4 { prefix_len: u32::from(net.prefix_len()), address: net.network().octets() })
            }
            IpNet::V6(_) => None,
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The `LB6_POD_CIDRS` keys of the cluster's IPv6 Pod CIDRs, sorted and
/// without duplicates.
pub fn pod_cidr_keys_v6(cidrs: &[IpNet]) -> Vec<PodCidrKeyV6> {
    let mut keys: Vec<PodCidrKeyV6> = cidrs
        .iter()
        .filter_map(|cidr| match cidr {
            IpNet::V6(net) => {
                Some(PodCidrKeyV6 { prefix_len: u32::from(net.prefix_len()), address: net.network().octets() })
            }
            IpNet::V4(_) => None,
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The `LB4_SRC_RANGES` entries of a frontend (its IPv4 ranges).
pub fn source_range_keys(frontend: &Frontend, frontend_id: u32) -> Vec<SourceRangeKeyV4> {
    range_keys(frontend, |range| match range {
        IpNet::V4(net) => Some(SourceRangeKeyV4::range(frontend_id, net.network().octets(), net.prefix_len())),
        IpNet::V6(_) => None,
    })
}

/// The `LB6_SRC_RANGES` entries of a frontend (its IPv6 ranges).
pub fn source_range_keys_v6(frontend: &Frontend, frontend_id: u32) -> Vec<SourceRangeKeyV6> {
    range_keys(frontend, |range| match range {
        IpNet::V6(net) => Some(SourceRangeKeyV6::range(frontend_id, net.network().octets(), net.prefix_len())),
        IpNet::V4(_) => None,
    })
}

/// The keys `key` makes of a frontend's ranges, sorted, once each.
fn range_keys<K: Ord>(frontend: &Frontend, key: impl Fn(&IpNet) -> Option<K>) -> Vec<K> {
    let mut keys: Vec<K> = frontend.source_ranges.iter().flatten().filter_map(key).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The `LB4_AFF_MEMBERS` entries of a frontend over its slot backends'
/// ids: one per backend for a ClientIP affinity frontend (the backends it
/// chooses new flows from; draining ones are not among them), none
/// otherwise, as only affinity frontends look them up.
pub fn affinity_member_keys(frontend: &Frontend, frontend_id: u32, slot_ids: &[u32]) -> Vec<AffinityMemberKeyV4> {
    if frontend.affinity_timeout_s.is_none() {
        return Vec::new();
    }
    let mut keys: Vec<AffinityMemberKeyV4> =
        slot_ids.iter().map(|&backend_id| AffinityMemberKeyV4 { frontend_id, backend_id }).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The slot-0 entry of a frontend with `count` backend slots.
pub fn frontend_value(frontend: &Frontend, frontend_id: u32, count: u16) -> ServiceValue {
    ServiceValue {
        backend_id: 0,
        frontend_id,
        count,
        flags: frontend_flags(frontend),
        affinity_timeout_s: frontend.affinity_timeout_s.unwrap_or(0),
    }
}

/// A Maglev frontend's table over its slot backends (endpoint and backend
/// id each); `None` for other frontends and for one without backends,
/// which has no table.
pub fn maglev_table(frontend: &Frontend, backends: &[(Endpoint, u32)], built: &mut TableCache) -> Option<Table> {
    (frontend.balancing == Balancing::Maglev && !backends.is_empty()).then(|| built.table(backends))
}
