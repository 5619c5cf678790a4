//! Map-entry encodings of the model (pure): what a frontend's slot-0
//! entry holds, and the full desired map contents.

use std::collections::BTreeMap;

use lb_common::{
    backend::BackendV4,
    service::{self, ServiceKeyV4, ServiceValue},
};

use crate::model::{Frontend, FrontendKind};

/// Everything the kernel maps should hold, in map-entry form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredMaps {
    /// Frontend entries (slot 0) and backend slots.
    pub services: BTreeMap<ServiceKeyV4, ServiceValue>,
    pub backends: BTreeMap<u32, BackendV4>,
    /// Non-zero port filter bits by port.
    pub port_filter: BTreeMap<u16, u8>,
}

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
    kind | affinity | local
}

/// The slot-0 entry of a frontend with `count` backend slots.
pub fn frontend_value(frontend: &Frontend, service_id: u32, count: u16) -> ServiceValue {
    ServiceValue {
        backend_id: 0,
        service_id,
        count,
        flags: frontend_flags(frontend),
        affinity_timeout_s: frontend.affinity_timeout_s.unwrap_or(0),
    }
}
