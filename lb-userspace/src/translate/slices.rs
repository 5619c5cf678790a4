//! EndpointSlices → endpoints per Service port, merged across the
//! Service's slices the way kube-proxy's endpointslicecache does.

use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    net::IpAddr,
};

use k8s_openapi::api::discovery::v1::EndpointPort;

use super::{
    endpoints::Endpoint,
    fields, namespaced_name,
    record::{EndpointRecord, SliceRecord},
    service, slice_problem,
};
use crate::model::{IpFamily, NodeContext, Problem, Protocol};

const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The usable slices, grouped by the (namespace, name) of their Service.
#[derive(Debug, Default)]
pub(super) struct SliceIndex {
    by_service: BTreeMap<(String, String), Vec<Slice>>,
}

/// One slice, validated: only what translation needs.
#[derive(Debug)]
struct Slice {
    name: String,
    ports: Vec<SlicePort>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug)]
struct SlicePort {
    name: String,
    protocol: Protocol,
    port: u16,
}

/// An endpoint without its port, which depends on the Service port.
#[derive(Debug)]
struct SliceEndpoint {
    address: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node_name: Option<String>,
    zone_hints: BTreeSet<String>,
    node_hints: BTreeSet<String>,
}

impl SliceIndex {
    pub(super) fn build<'a>(
        slices: impl IntoIterator<Item = &'a SliceRecord>,
        node: &NodeContext,
        problems: &mut Vec<Problem>,
    ) -> Self {
        let mut index = SliceIndex::default();
        for slice in slices {
            let Some(service_name) = service_name(slice, node) else {
                continue;
            };
            let namespace = namespaced_name(&slice.metadata).0.to_owned();
            let parsed = parse(slice, node.family, problems);
            index.by_service.entry((namespace, service_name.to_owned())).or_default().push(parsed);
        }
        // Slice order decides between equally good copies of an endpoint.
        for slices in index.by_service.values_mut() {
            slices.sort_by(|a, b| a.name.cmp(&b.name));
        }
        index
    }

    /// Every (port name, protocol) the Service's slices list, each once.
    pub(super) fn port_names(&self, namespace: &str, service: &str) -> BTreeSet<(String, Protocol)> {
        let key = (namespace.to_owned(), service.to_owned());
        let slices = self.by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
        slices.iter().flat_map(|slice| slice.ports.iter().map(|p| (p.name.clone(), p.protocol))).collect()
    }

    /// The endpoints of one Service port: from every slice port with the
    /// same name and protocol, which is how a (possibly named) targetPort
    /// resolves. One endpoint per (address, port), chosen by [`prefer`].
    pub(super) fn endpoints(
        &self,
        namespace: &str,
        service: &str,
        port_name: &str,
        protocol: Protocol,
    ) -> Vec<Endpoint> {
        let key = (namespace.to_owned(), service.to_owned());
        let slices = self.by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
        let mut chosen: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
        for slice in slices {
            for port in slice.ports.iter().filter(|p| p.name == port_name && p.protocol == protocol) {
                for endpoint in &slice.endpoints {
                    let candidate = endpoint.with_port(port.port);
                    match chosen.entry((candidate.address, candidate.port)) {
                        Entry::Vacant(slot) => {
                            slot.insert(candidate);
                        }
                        Entry::Occupied(mut slot) => prefer(slot.get_mut(), candidate),
                    }
                }
            }
        }
        chosen.into_values().collect()
    }
}

/// Two copies of one (address, port): an endpoint moving between slices,
/// or a new Pod that got the IP of a Pod still terminating. A copy that is
/// not terminating replaces a terminating one, so the new Pod is not
/// hidden behind the old one (kube-proxy's addEndpoints); otherwise the
/// first copy in slice-name order stays, which keeps the result stable
/// where kube-proxy leaves it to map order.
fn prefer(kept: &mut Endpoint, candidate: Endpoint) {
    if kept.terminating && !candidate.terminating {
        *kept = candidate;
    }
}

impl SliceEndpoint {
    fn with_port(&self, port: u16) -> Endpoint {
        Endpoint {
            address: self.address,
            port,
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
            node_name: self.node_name.clone(),
            zone_hints: self.zone_hints.clone(),
            node_hints: self.node_hints.clone(),
        }
    }
}

/// The (namespace, name) of the Service a slice belongs to, whatever its
/// other labels say (for grouping slices by Service).
pub fn owner(slice: &SliceRecord) -> Option<(String, String)> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME)?;
    Some((namespaced_name(&slice.metadata).0.to_owned(), name.clone()))
}

/// The Service a slice feeds, if the slice is one this node uses: labelled
/// with its Service, not headless, not another proxy's, and of the family
/// the table is built for (other families' and FQDN slices are skipped
/// without a problem: they are valid, just not for this table, as each of
/// kube-proxy's per-family proxiers takes only its own address type).
fn service_name<'a>(slice: &'a SliceRecord, node: &NodeContext) -> Option<&'a str> {
    let labels = slice.metadata.labels.as_ref()?;
    let name = labels.get(SERVICE_NAME)?;
    let usable = !labels.contains_key(service::HEADLESS)
        && service::belongs_to_us(&slice.metadata, node)
        && slice.address_type == node.family.as_str();
    usable.then_some(name.as_str())
}

fn parse(slice: &SliceRecord, family: IpFamily, problems: &mut Vec<Problem>) -> Slice {
    Slice {
        name: namespaced_name(&slice.metadata).1.to_owned(),
        ports: slice
            .ports
            .iter()
            .filter_map(|p| parse_port(p).map_err(|e| problems.push(slice_problem(slice, e))).ok())
            .collect(),
        endpoints: slice
            .endpoints
            .iter()
            .filter_map(|ep| parse_endpoint(ep, family).map_err(|e| problems.push(slice_problem(slice, e))).ok())
            .collect(),
    }
}

fn parse_port(port: &EndpointPort) -> Result<SlicePort, String> {
    // kube-proxy skips a port without a name: a Service port is matched by
    // name, and "no name" is not the empty name an unnamed Service port has.
    let Some(name) = port.name.clone() else {
        return Err(format!("port {}: no name; port skipped", port.port.unwrap_or_default()));
    };
    let reject = |error: String| format!("port {name:?}: {error}; port skipped");
    let protocol = fields::protocol(port.protocol.as_deref()).map_err(reject)?;
    // A port without a number means "all ports" in the API; nothing can be
    // translated from it (kube-proxy ignores it too).
    let number = port.port.ok_or_else(|| reject("no port number".to_owned()))?;
    let number = fields::port(number).map_err(reject)?;
    Ok(SlicePort { name, protocol, port: number })
}

/// Conditions are read as kube-proxy reads them: ready and serving nil =
/// true, terminating nil = false. Only the first address counts (the
/// record keeps no other): the API says all addresses of an endpoint are
/// fungible.
fn parse_endpoint(ep: &EndpointRecord, family: IpFamily) -> Result<SliceEndpoint, String> {
    let first = ep.address.as_deref().ok_or_else(|| "endpoint without addresses, skipped".to_owned())?;
    let address = fields::address_of(family, first, "endpoint address")?;
    let (zone_hints, node_hints) = ep.hints.as_deref().map_or((&[][..], &[][..]), |h| (&h.for_zones, &h.for_nodes));
    Ok(SliceEndpoint {
        address,
        ready: ep.ready.unwrap_or(true),
        serving: ep.serving.unwrap_or(true),
        terminating: ep.terminating.unwrap_or(false),
        node_name: ep.node_name.as_deref().map(str::to_owned),
        zone_hints: zone_hints.iter().cloned().collect(),
        node_hints: node_hints.iter().cloned().collect(),
    })
}
