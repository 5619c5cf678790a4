//! An EndpointSlice reduced to the fields translation reads: what the
//! agent keeps of every slice between syncs.
//!
//! The API's `Endpoint` is 352 bytes before any of its strings (it holds a
//! whole object reference, the deprecated topology map, hostname and zone
//! inline); an endpoint record is 48. Cached as API objects, 100,000
//! endpoints held about 38 MB of heap. A record keeps the first address
//! (the only one kube-proxy and translation use), the conditions as
//! written, the node name and the hints, and is checked by translation
//! exactly as the API object was, problems included.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// One EndpointSlice as translation reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceRecord {
    /// Name, namespace and labels (which Service, which proxy), the
    /// resource version, and of the annotations only
    /// [`LAST_CHANGE_TRIGGER_TIME`].
    pub metadata: ObjectMeta,
    pub address_type: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<EndpointRecord>,
}

/// One endpoint as translation reads it. Conditions stay as written (`None`
/// is not `false`: kube-proxy reads a missing `ready` as true).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The first address; the API calls the others fungible with it.
    pub address: Option<Box<str>>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<Box<str>>,
    /// Boxed: most endpoints carry none.
    pub hints: Option<Box<Hints>>,
}

/// Topology hints: the zones and nodes an endpoint should serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub for_zones: Vec<String>,
    pub for_nodes: Vec<String>,
}

/// The EndpointSlice controller's annotation: when the change that made
/// it write this slice happened (a Pod became ready, was deleted, ...).
/// The only annotation a record keeps.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

impl Hints {
    /// Hints that name no zone and no node are none.
    pub fn kept(hints: Option<Hints>) -> Option<Box<Hints>> {
        hints.filter(|h| !h.for_zones.is_empty() || !h.for_nodes.is_empty()).map(Box::new)
    }
}

impl From<EndpointSlice> for SliceRecord {
    fn from(slice: EndpointSlice) -> Self {
        let EndpointSlice { metadata, address_type, endpoints, ports } = slice;
        let trigger = metadata.annotations.and_then(|mut all| all.remove_entry(LAST_CHANGE_TRIGGER_TIME));
        let metadata = ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            labels: metadata.labels,
            resource_version: metadata.resource_version,
            annotations: trigger.map(|entry| BTreeMap::from([entry])),
            ..ObjectMeta::default()
        };
        let mut ports = ports.unwrap_or_default();
        ports.shrink_to_fit();
        // Not `collect()`: that would reuse the API endpoints' allocation,
        // seven times the records' size, for the records.
        let mut records = Vec::with_capacity(endpoints.len());
        records.extend(endpoints.into_iter().map(EndpointRecord::from));
        Self { metadata, address_type, ports, endpoints: records }
    }
}

impl From<&EndpointSlice> for SliceRecord {
    fn from(slice: &EndpointSlice) -> Self {
        Self::from(slice.clone())
    }
}

impl From<Endpoint> for EndpointRecord {
    fn from(endpoint: Endpoint) -> Self {
        let conditions = endpoint.conditions.unwrap_or_default();
        let hints = endpoint.hints.map(|hints| Hints {
            for_zones: hints.for_zones.unwrap_or_default().into_iter().map(|zone| zone.name).collect(),
            for_nodes: hints.for_nodes.unwrap_or_default().into_iter().map(|node| node.name).collect(),
        });
        Self {
            address: endpoint.addresses.into_iter().next().map(String::into_boxed_str),
            ready: conditions.ready,
            serving: conditions.serving,
            terminating: conditions.terminating,
            node_name: endpoint.node_name.map(String::into_boxed_str),
            hints: Hints::kept(hints),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_record_keeps_what_translation_reads_and_drops_the_rest() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"},
                         "annotations": {"a": "b", LAST_CHANGE_TRIGGER_TIME: "2026-12-01T10:00:00Z"},
                         "uid": "1234", "resourceVersion": "7"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1", "10.0.0.2"], "conditions": {"ready": false, "terminating": true},
                 "nodeName": "node-a", "zone": "a", "hostname": "h", "targetRef": {"kind": "Pod", "name": "p"},
                 "hints": {"forZones": [{"name": "a"}], "forNodes": [{"name": "node-a"}]}},
                {"addresses": []},
            ]
        }))
        .unwrap();
        let record = SliceRecord::from(slice);
        assert_eq!(record.metadata.name.as_deref(), Some("web-abc"));
        assert_eq!(record.metadata.namespace.as_deref(), Some("shop"));
        assert!(record.metadata.labels.is_some());
        assert_eq!(record.metadata.uid, None);
        assert_eq!(record.metadata.resource_version.as_deref(), Some("7"));
        let annotations = record.metadata.annotations.unwrap_or_default();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), [LAST_CHANGE_TRIGGER_TIME]);
        assert_eq!(record.address_type, "IPv4");
        assert_eq!(record.ports.len(), 1);
        assert_eq!(
            record.endpoints,
            [
                EndpointRecord {
                    address: Some("10.0.0.1".into()),
                    ready: Some(false),
                    serving: None,
                    terminating: Some(true),
                    node_name: Some("node-a".into()),
                    hints: Some(Box::new(Hints { for_zones: vec!["a".into()], for_nodes: vec!["node-a".into()] })),
                },
                EndpointRecord::default(),
            ]
        );
        assert_eq!(record.endpoints.capacity(), 2, "not the API endpoints' room, seven times the size");
    }

    #[test]
    fn a_record_is_a_fraction_of_the_api_object() {
        assert!(size_of::<EndpointRecord>() * 6 <= size_of::<Endpoint>(), "{}", size_of::<EndpointRecord>());
    }
}
