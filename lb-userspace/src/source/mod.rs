//! Where Services and EndpointSlices come from: a YAML/JSON file in the
//! Kubernetes object format (standalone mode), or the API server.

pub mod file;
pub mod objects;
