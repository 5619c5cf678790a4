//! Services + EndpointSlices → ServiceTable (being written).
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use crate::model::{NodeContext, ServiceTable};
pub fn translate(_services: &[Service], _slices: &[EndpointSlice], _node: &NodeContext) -> ServiceTable { ServiceTable::default() }
