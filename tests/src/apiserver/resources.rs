//! The resource types the stand-in serves, and how their URLs look.
//!
//! The real server discovers these from its registry; a fixed table is
//! enough here because the agent only ever talks to these few.

/// One REST resource: where it lives and what its objects are called.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group; empty for the legacy core group served under `/api`.
    pub group: &'static str,
    pub version: &'static str,
    /// The lowercase plural used in URLs.
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl Resource {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Index into [`RESOURCES`]; stored keys use it so they stay `Copy`-cheap
    /// and order objects by resource first.
    pub fn id(&'static self) -> usize {
        RESOURCES.iter().position(|r| std::ptr::eq(r, self)).expect("resource from RESOURCES")
    }
}

/// Everything the stand-in serves. Both Event APIs are listed: the agent may
/// post through either, and the real server accepts both.
pub static RESOURCES: [Resource; 5] = [
    Resource { group: "", version: "v1", plural: "services", kind: "Service", namespaced: true },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
    },
    Resource { group: "", version: "v1", plural: "nodes", kind: "Node", namespaced: false },
    Resource { group: "", version: "v1", plural: "events", kind: "Event", namespaced: true },
    Resource { group: "events.k8s.io", version: "v1", plural: "events", kind: "Event", namespaced: true },
];

/// The resource for an object's `apiVersion` and `kind`. Without an
/// `apiVersion` the first resource of that kind wins (core/v1 for Event).
pub fn by_kind(api_version: Option<&str>, kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind && api_version.is_none_or(|v| v == r.api_version()))
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub resource: &'static Resource,
    /// Set for `/namespaces/{ns}/...` paths; `None` means all namespaces
    /// (or a cluster-scoped resource).
    pub namespace: Option<String>,
    /// Set for a single object; `None` for the collection.
    pub name: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/{group}/{version}/...` paths. `None` for
/// anything the stand-in does not serve, which becomes a 404 like on the real
/// server (subresources such as `/status` included).
pub fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => return None,
    };
    let resource = RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)?;
    // Namespaced objects are only addressable inside their namespace, and
    // cluster-scoped ones never are.
    let valid = !matches!((resource.namespaced, namespace, name), (false, Some(_), _) | (true, None, Some(_)));
    valid.then(|| Target { resource, namespace: namespace.map(str::to_owned), name: name.map(str::to_owned) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = parse_path("/api/v1/namespaces/default/services").unwrap();
        assert_eq!((t.resource.kind, t.namespace.as_deref(), t.name), ("Service", Some("default"), None));
        let t = parse_path("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!((t.resource.kind, t.namespace), ("EndpointSlice", None));
        let t = parse_path("/api/v1/nodes/n1").unwrap();
        assert_eq!((t.resource.kind, t.name.as_deref()), ("Node", Some("n1")));
        let t = parse_path("/apis/events.k8s.io/v1/namespaces/x/events/e").unwrap();
        assert_eq!(t.resource.api_version(), "events.k8s.io/v1");
        assert!(parse_path("/api/v1/services/x").is_none());
        assert!(parse_path("/api/v1/namespaces/x/nodes").is_none());
        assert!(parse_path("/api/v1/namespaces/x/services/y/status").is_none());
        assert!(parse_path("/api/v1/pods").is_none());
    }

    #[test]
    fn kinds() {
        assert_eq!(by_kind(None, "Event").unwrap().group, "");
        assert_eq!(by_kind(Some("events.k8s.io/v1"), "Event").unwrap().group, "events.k8s.io");
        assert!(by_kind(Some("v1"), "EndpointSlice").is_none());
    }
}
