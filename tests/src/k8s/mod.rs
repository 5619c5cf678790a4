//! Kubernetes objects as the control plane would write them, for tests that
//! replay Kubernetes' own Service cases: a [`Service`] builder that renders
//! what the API server stores (defaults filled in, fields the type does not
//! allow cleared), and the EndpointSlice controller's translation of a
//! Service and its [`Pod`]s into EndpointSlices (and, for Services without
//! a selector, a [`manual_slice`] as a user writes it). All are pure: writing
//! them to an API server is the cluster fixture's job
//! (`crate::cluster::Cluster::apply`).

mod manual_slice;
mod service;
mod slice_controller;

pub use manual_slice::manual_slice;
pub use service::{Protocol, Service, ServicePort, ServiceType, TargetPort};
pub use slice_controller::{ContainerPort, MAX_ENDPOINTS_PER_SLICE, Pod, endpoint_slices};

/// The namespace the conformance cases put their objects in.
pub const NAMESPACE: &str = "conformance";
