//! A cache of one kind of object, fed by watcher events (pure, no I/O).
//!
//! After a (re)list, what was not re-listed is gone: `Init` starts a fresh
//! buffer, `InitApply` fills it, `InitDone` replaces the whole cache with
//! it. A delete that happened while the watch was down therefore never
//! leaves a stale object behind.

use std::collections::BTreeMap;

use kube::{Resource, ResourceExt as _, runtime::watcher::Event};

/// Objects by namespace/name. Boxed: a map node holds eleven values,
/// and API objects are most of a kilobyte before their strings, so values
/// held inline in half-full nodes cost half again their size.
#[derive(Debug)]
pub struct ObjectCache<K> {
    objects: BTreeMap<(String, String), Box<K>>,
    relisting: Option<BTreeMap<(String, String), Box<K>>>,
    /// The first list has completed; before that the cache is not usable.
    synced: bool,
}

impl<K> Default for ObjectCache<K> {
    fn default() -> Self {
        Self { objects: BTreeMap::new(), relisting: None, synced: false }
    }
}

/// (namespace, name) of an object.
pub fn key<K: Resource>(object: &K) -> (String, String) {
    (object.namespace().unwrap_or_default(), object.name_any())
}

impl<K: Resource> ObjectCache<K> {
    /// Applies one watcher event. Returns whether the visible content may
    /// have changed (events inside a relist change nothing until it ends).
    pub fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Apply(object) => {
                self.objects.insert(key(&object), Box::new(object));
                true
            }
            Event::Delete(object) => {
                self.objects.remove(&key(&object));
                true
            }
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                self.relisting.get_or_insert_with(BTreeMap::new).insert(key(&object), Box::new(object));
                false
            }
            Event::InitDone => {
                self.objects = self.relisting.take().unwrap_or_default();
                self.synced = true;
                true
            }
        }
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn objects(&self) -> impl Iterator<Item = &K> {
        self.objects.values().map(Box::as_ref)
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&K> {
        self.objects.get(&(namespace.to_owned(), name.to_owned())).map(Box::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;

    use super::*;

    fn svc(name: &str, cluster_ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": cluster_ip}
        }))
        .unwrap()
    }

    fn names(cache: &ObjectCache<Service>) -> Vec<String> {
        cache.objects().map(|s| s.name_any()).collect()
    }

    #[test]
    fn not_synced_until_initial_list_completes() {
        let mut cache = ObjectCache::default();
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(svc("a", "10.96.0.1")));
        assert!(!cache.synced());
        assert!(cache.is_empty(), "listed objects are invisible until InitDone");
        assert!(cache.apply(Event::InitDone));
        assert!(cache.synced());
        assert_eq!(names(&cache), ["a"]);
    }

    #[test]
    fn relist_drops_objects_deleted_while_disconnected() {
        let mut cache = ObjectCache::default();
        for e in [
            Event::Init,
            Event::InitApply(svc("a", "10.96.0.1")),
            Event::InitApply(svc("b", "10.96.0.2")),
            Event::InitDone,
        ] {
            cache.apply(e);
        }
        // The watch broke; "a" was deleted meanwhile; the relist omits it.
        for e in [Event::Init, Event::InitApply(svc("b", "10.96.0.2"))] {
            cache.apply(e);
        }
        assert_eq!(names(&cache), ["a", "b"], "old content stays until the relist is complete");
        cache.apply(Event::InitDone);
        assert_eq!(names(&cache), ["b"]);
    }

    #[test]
    fn apply_and_delete_update_in_place() {
        let mut cache = ObjectCache::default();
        cache.apply(Event::Init);
        cache.apply(Event::InitDone);
        cache.apply(Event::Apply(svc("a", "10.96.0.1")));
        cache.apply(Event::Apply(svc("a", "10.96.0.9")));
        assert_eq!(cache.objects().next().unwrap().spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.9"));
        cache.apply(Event::Delete(svc("a", "10.96.0.9")));
        assert!(cache.is_empty());
    }
}
