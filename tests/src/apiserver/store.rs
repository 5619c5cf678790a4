//! Objects and their change history, under one resourceVersion counter.
//!
//! Like etcd behind the real server, every write to any resource takes the
//! next value of a single global counter, and that value becomes the
//! object's `metadata.resourceVersion`. The history of changes is what
//! watches replay from and what consistent list snapshots are rebuilt from;
//! compaction forgets it, after which older resourceVersions are `Expired`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{
    resources::{RESOURCES, Resource},
    status::ApiError,
};

/// Where an object lives. Ordered by resource, then namespace, then name,
/// which is also the order lists return (as the real server's key order).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    resource: usize,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// `namespace` is ignored for cluster-scoped resources.
    pub fn new(resource: &'static Resource, namespace: &str, name: &str) -> Self {
        let namespace = if resource.namespaced { namespace } else { "" };
        Self { resource: resource.id(), namespace: namespace.to_owned(), name: name.to_owned() }
    }

    pub fn resource(&self) -> &'static Resource {
        &RESOURCES[self.resource]
    }
}

/// One write: the object before and after it (`None` when absent).
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub key: ObjectKey,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

#[derive(Debug)]
pub struct Store {
    /// The resourceVersion of the latest write.
    rv: u64,
    /// History is kept for every write after this resourceVersion; asking
    /// for anything older is `Expired`.
    horizon: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: Vec<Change>,
    /// uids are issued in sequence so tests can order objects by creation.
    uids: u64,
}

impl Default for Store {
    fn default() -> Self {
        // Start above zero: resourceVersion "0" means "any version" in
        // requests and must never name a real point in history.
        Self { rv: 1, horizon: 1, objects: BTreeMap::new(), history: Vec::new(), uids: 0 }
    }
}

/// Reads an object's `metadata.name`.
pub fn name_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["name"].as_str().filter(|n| !n.is_empty())
}

fn now() -> String {
    use k8s_openapi::jiff::{Timestamp, fmt::strtime};
    strtime::format("%Y-%m-%dT%H:%M:%SZ", Timestamp::now()).expect("formattable time")
}

fn metadata(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata is an object")
}

impl Store {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Creates or replaces the object at `key`, as an update through the
    /// real API would: identity (uid, creationTimestamp) survives updates,
    /// and writing back an identical object is a no-op that takes no new
    /// resourceVersion and emits no watch event.
    pub fn put(&mut self, key: &ObjectKey, mut obj: Value) -> Value {
        let resource = key.resource();
        obj["kind"] = resource.kind.into();
        obj["apiVersion"] = resource.api_version().into();
        let before = self.objects.get(key).cloned();
        let meta = metadata(&mut obj);
        meta.insert("name".into(), key.name.clone().into());
        if resource.namespaced {
            meta.insert("namespace".into(), key.namespace.clone().into());
        } else {
            meta.remove("namespace");
        }
        if let Some(before) = &before {
            for field in ["uid", "creationTimestamp", "resourceVersion"] {
                meta.insert(field.into(), before["metadata"][field].clone());
            }
            if before == &obj {
                return obj;
            }
        } else {
            self.uids += 1;
            meta.insert("uid".into(), format!("00000000-0000-4000-8000-{:012x}", self.uids).into());
            meta.insert("creationTimestamp".into(), now().into());
        }
        self.write(key.clone(), before, Some(obj)).expect("a put stores an object")
    }

    /// Creates the object, failing if it exists. Honours
    /// `metadata.generateName` when no name is given.
    pub fn create(&mut self, resource: &'static Resource, namespace: &str, mut obj: Value) -> Result<Value, ApiError> {
        let name = match (name_of(&obj), obj["metadata"]["generateName"].as_str()) {
            (Some(name), _) => name.to_owned(),
            (None, Some(prefix)) => format!("{prefix}{:05x}", self.uids + 1),
            (None, None) => {
                return Err(ApiError::new(422, "Invalid", "metadata.name: Required value"));
            }
        };
        if let Some(ns) = obj["metadata"]["namespace"].as_str()
            && resource.namespaced
            && ns != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let key = ObjectKey::new(resource, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", resource.plural)));
        }
        metadata(&mut obj).remove("resourceVersion");
        Ok(self.put(&key, obj))
    }

    /// Applies a JSON merge patch (RFC 7386) to an existing object.
    pub fn merge_patch(&mut self, key: &ObjectKey, patch: &Value) -> Result<Value, ApiError> {
        let mut obj =
            self.objects.get(key).cloned().ok_or_else(|| ApiError::not_found(key.resource().plural, &key.name))?;
        merge(&mut obj, patch);
        Ok(self.put(key, obj))
    }

    /// Deletes the object, returning it as the watch `DELETED` event shows
    /// it: the last state, stamped with the deletion's resourceVersion.
    pub fn delete(&mut self, key: &ObjectKey) -> Option<Value> {
        let before = self.objects.get(key).cloned()?;
        self.write(key.clone(), Some(before.clone()), None);
        Some(stamped(&before, self.rv))
    }

    fn write(&mut self, key: ObjectKey, before: Option<Value>, mut after: Option<Value>) -> Option<Value> {
        self.rv += 1;
        if let Some(obj) = &mut after {
            metadata(obj).insert("resourceVersion".into(), self.rv.to_string().into());
            self.objects.insert(key.clone(), obj.clone());
        } else {
            self.objects.remove(&key);
        }
        self.history.push(Change { rv: self.rv, key, before, after: after.clone() });
        after
    }

    /// Forgets all history: from now on only the current resourceVersion
    /// (or later) can be watched from or listed at exactly.
    pub fn compact(&mut self) {
        self.horizon = self.rv;
        self.history.clear();
    }

    /// Fails when history after `rv` is no longer complete.
    fn check_retained(&self, rv: u64) -> Result<(), ApiError> {
        if rv < self.horizon {
            Err(ApiError::expired(format!("too old resource version: {rv} ({})", self.horizon)))
        } else {
            Ok(())
        }
    }

    /// Every change after `rv`, oldest first.
    pub fn changes_after(&self, rv: u64) -> Result<&[Change], ApiError> {
        self.check_retained(rv)?;
        let start = self.history.partition_point(|c| c.rv <= rv);
        Ok(&self.history[start..])
    }

    /// The objects of `resource` as they were at `rv`, in key order. The
    /// current state is rolled back through the history, which is how a
    /// paginated list stays one consistent snapshot across pages.
    /// Borrowed, not copied: a list of a large table is served without
    /// cloning every object.
    pub fn snapshot(&self, resource: &'static Resource, rv: u64) -> Result<Vec<(&ObjectKey, &Value)>, ApiError> {
        let changes = self.changes_after(rv)?;
        let mut objects: BTreeMap<&ObjectKey, &Value> =
            self.objects.iter().filter(|(k, _)| k.resource() == resource).collect();
        for change in changes.iter().rev().filter(|c| c.key.resource() == resource) {
            match &change.before {
                Some(before) => objects.insert(&change.key, before),
                None => objects.remove(&change.key),
            };
        }
        Ok(objects.into_iter().collect())
    }

    /// All current objects of `resource`, in creation order.
    pub fn by_creation(&self, resource: &'static Resource) -> Vec<Value> {
        let mut objects: Vec<Value> =
            self.objects.iter().filter(|(k, _)| k.resource() == resource).map(|(_, v)| v.clone()).collect();
        objects.sort_by(|a, b| a["metadata"]["uid"].as_str().cmp(&b["metadata"]["uid"].as_str()));
        objects
    }
}

/// A copy of `obj` carrying resourceVersion `rv`. The real server reports
/// an object leaving a watch (deleted, or no longer selected) as its last
/// known state stamped with the version of the change that removed it.
pub fn stamped(obj: &Value, rv: u64) -> Value {
    let mut obj = obj.clone();
    metadata(&mut obj).insert("resourceVersion".into(), rv.to_string().into());
    obj
}

/// RFC 7386: objects merge recursively, `null` removes, anything else
/// replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("just made an object");
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_kind;

    fn svc_key(name: &str) -> ObjectKey {
        ObjectKey::new(by_kind(None, "Service").unwrap(), "default", name)
    }

    #[test]
    fn writes_take_global_versions_and_keep_identity() {
        let mut store = Store::default();
        let a = store.put(&svc_key("a"), json!({"spec": {"clusterIP": "10.0.0.1"}}));
        assert_eq!(a["metadata"]["resourceVersion"], "2");
        let node = ObjectKey::new(by_kind(None, "Node").unwrap(), "ignored", "n1");
        let n = store.put(&node, json!({"metadata": {"namespace": "x"}}));
        assert_eq!(n["metadata"]["resourceVersion"], "3");
        assert!(n["metadata"].get("namespace").is_none());
        let a2 = store.put(&svc_key("a"), json!({"spec": {"clusterIP": "10.0.0.2"}}));
        assert_eq!(a2["metadata"]["resourceVersion"], "4");
        assert_eq!(a2["metadata"]["uid"], a["metadata"]["uid"]);
        // Identical content: no write.
        let a3 = store.put(&svc_key("a"), json!({"spec": {"clusterIP": "10.0.0.2"}}));
        assert_eq!(a3, a2);
        assert_eq!(store.resource_version(), 4);
        let gone = store.delete(&svc_key("a")).unwrap();
        assert_eq!(gone["metadata"]["resourceVersion"], "5");
        assert_eq!(gone["spec"]["clusterIP"], "10.0.0.2");
    }

    #[test]
    fn snapshots_and_compaction() {
        let mut store = Store::default();
        let svc = by_kind(None, "Service").unwrap();
        store.put(&svc_key("a"), json!({}));
        let rv = store.resource_version();
        store.put(&svc_key("b"), json!({}));
        store.put(&svc_key("a"), json!({"spec": {}}));
        store.delete(&svc_key("b"));
        let then = store.snapshot(svc, rv).unwrap();
        assert_eq!(then.len(), 1);
        assert_eq!(then[0].1["metadata"]["resourceVersion"], rv.to_string());
        assert_eq!(store.changes_after(rv).unwrap().len(), 3);
        store.compact();
        assert_eq!(store.snapshot(svc, rv).unwrap_err().code, 410);
        assert_eq!(store.changes_after(rv).unwrap_err().reason, "Expired");
        assert!(store.changes_after(store.resource_version()).unwrap().is_empty());
    }

    #[test]
    fn merge_patch() {
        let mut obj = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge(&mut obj, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(obj, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }
}
