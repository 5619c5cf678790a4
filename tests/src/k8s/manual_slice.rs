//! An EndpointSlice written by hand for a Service without a selector, as
//! Kubernetes' EndpointSlice cases do: labelled with the Service's name
//! and a `managed-by` of its own, so the EndpointSlice controller leaves it
//! alone, with whatever ports and endpoints its author chose.

use serde_json::{Value, json};

use super::{NAMESPACE, Pod, Protocol, Service, slice_controller::endpoint};

/// A slice named `name` for `service`, managed by `managed_by`, listing
/// `pods` (conditions as the controller would write them) on `ports`
/// (name, port, protocol).
pub fn manual_slice(
    service: &Service,
    name: &str,
    managed_by: &str,
    ports: &[(&str, u16, Protocol)],
    pods: &[Pod],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, port, protocol)| json!({"name": port_name, "port": port, "protocol": protocol.as_str()}))
        .collect();
    let endpoints: Vec<Value> = pods.iter().map(|pod| endpoint(service, pod)).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": service.name,
                "endpointslice.kubernetes.io/managed-by": managed_by,
            },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}
