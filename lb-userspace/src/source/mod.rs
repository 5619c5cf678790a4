//! Where Services and EndpointSlices come from: a YAML/JSON file in the
//! Kubernetes object format (standalone mode), or the API server.

pub mod cache;
pub mod file;
pub mod kubernetes;
pub mod objects;
mod slice_wire;
pub mod tracker;
