//! kube-proxy's per-Service health check servers: for every LoadBalancer
//! Service with `externalTrafficPolicy: Local`, an HTTP server on its
//! `healthCheckNodePort` answering 200 while this node has a ready
//! endpoint of it (and the agent keeps up with its syncs), 503 otherwise,
//! so a cloud load balancer sends only to nodes that can serve locally.
//!
//! - `translate::health_check`: one Service → its port and local count (pure).
//! - [`desired`]: every Service's check → one owner per port (pure).
//! - [`reply`]: the answer, as kube-proxy words it (pure).
//! - [`servers`]: listeners opened, updated in place and closed to match (I/O).

pub mod desired;
pub mod reply;
pub mod servers;

pub use self::{
    desired::{Desired, HealthChecks, Listener},
    servers::{Failure, HealthCheckAddresses, ServiceHealthServers},
};
