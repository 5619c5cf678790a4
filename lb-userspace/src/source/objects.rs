//! Kubernetes objects from text: one or more YAML documents, or JSON, each
//! an object or a `List` (what `kubectl get svc,endpointslices -o yaml`
//! prints). An object that does not parse is reported and skipped; the
//! others are kept.

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::{
    Deserialize as _, Deserializer,
    de::{DeserializeSeed, MapAccess, SeqAccess, Visitor},
};
use serde_json::Value;

use crate::{model::Problem, translate::SliceRecord};

/// The objects found in a document, and the ones that could not be read.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    /// What translation reads of each EndpointSlice.
    pub slices: Vec<SliceRecord>,
    pub problems: Vec<Problem>,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not valid YAML or JSON: {0}")]
    Syntax(String),
}

/// Parses a whole document. A syntax error fails the document (nothing in
/// it can be trusted); a bad object inside only loses that object.
pub fn parse(text: &str) -> Result<Objects, ParseError> {
    let mut objects = Objects::default();
    if text.trim_start().starts_with('{') {
        // JSON, possibly a large generated List: stream its items, so only
        // one item at a time exists as an untyped tree.
        let mut de = serde_json::Deserializer::from_str(text);
        DocumentSeed(&mut objects).deserialize(&mut de).map_err(|e| ParseError::Syntax(e.to_string()))?;
        de.end().map_err(|e| ParseError::Syntax(e.to_string()))?;
        return Ok(objects);
    }
    let documents: Vec<Value> = {
        // The YAML parser's default budget guards against hostile input;
        // very large generated tables should use JSON.
        serde_saphyr::from_multiple(text).map_err(|e| ParseError::Syntax(e.to_string()))?
    };
    for document in documents {
        collect(document, &mut objects);
    }
    Ok(objects)
}

/// One JSON document: a List's `items` are collected one by one as they
/// are read; any other object is collected whole.
struct DocumentSeed<'a>(&'a mut Objects);

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Kubernetes object or List")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut fields = serde_json::Map::new();
        let mut was_list = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                map.next_value_seed(ItemsSeed(&mut *self.0))?;
                was_list = true;
            } else {
                fields.insert(key, map.next_value()?);
            }
        }
        if !was_list {
            collect(Value::Object(fields), self.0);
        }
        Ok(())
    }
}

struct ItemsSeed<'a>(&'a mut Objects);

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<Value>()? {
            collect(item, self.0);
        }
        Ok(())
    }
}

fn collect(value: Value, out: &mut Objects) {
    match value.get("kind").and_then(Value::as_str) {
        Some(kind) if kind.ends_with("List") => {
            if let Value::Object(mut map) = value
                && let Some(Value::Array(items)) = map.remove("items")
            {
                for item in items {
                    collect(item, out);
                }
            }
        }
        Some("Service") => match Service::deserialize(&value) {
            Ok(service) => out.services.push(service),
            Err(e) => out.problems.push(problem("Service", &value, &e)),
        },
        Some("EndpointSlice") => match EndpointSlice::deserialize(&value) {
            Ok(slice) => out.slices.push(slice.into()),
            Err(e) => out.problems.push(problem("EndpointSlice", &value, &e)),
        },
        // Other kinds (Pods, Nodes, ...) may sit in the same file: ignored.
        _ => {}
    }
}

fn problem(kind: &'static str, value: &Value, error: &serde_json::Error) -> Problem {
    let meta =
        |field: &str| value.pointer(&format!("/metadata/{field}")).and_then(Value::as_str).unwrap_or("?").to_owned();
    Problem { kind, namespace: meta("namespace"), name: meta("name"), message: format!("cannot be read: {error}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: default}
  spec:
    clusterIP: 10.96.0.10
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-abc
    namespace: default
    labels: {kubernetes.io/service-name: web}
  addressType: IPv4
  endpoints: [{addresses: [10.0.1.1], conditions: {ready: true}}]
  ports: [{name: http, port: 8080, protocol: TCP}]
"#;

    #[test]
    fn kubectl_list_yields_services_and_slices() {
        let objects = parse(LIST).unwrap();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.slices.len(), 1);
        assert_eq!(objects.services[0].metadata.name.as_deref(), Some("web"));
        assert!(objects.problems.is_empty());
    }

    #[test]
    fn multi_document_yaml_is_read_whole() {
        let text = "kind: Service\napiVersion: v1\nmetadata: {name: a, namespace: x}\n---\nkind: Service\napiVersion: v1\nmetadata: {name: b, namespace: x}\n";
        let objects = parse(text).unwrap();
        let names: Vec<_> = objects.services.iter().filter_map(|s| s.metadata.name.clone()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn json_list_is_accepted() {
        let text =
            r#"{"kind":"List","items":[{"kind":"Service","apiVersion":"v1","metadata":{"name":"j","namespace":"n"}}]}"#;
        assert_eq!(parse(text).unwrap().services.len(), 1);
    }

    #[test]
    fn unreadable_object_is_reported_and_others_kept() {
        let text = "kind: Service\napiVersion: v1\nmetadata: {name: bad, namespace: x}\nspec: {ports: 7}\n---\nkind: Service\napiVersion: v1\nmetadata: {name: good, namespace: x}\n";
        let objects = parse(text).unwrap();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.problems.len(), 1);
        assert_eq!(objects.problems[0].name, "bad");
    }

    #[test]
    fn json_single_object_and_bad_list_items() {
        let one = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"solo","namespace":"n"}}"#;
        assert_eq!(parse(one).unwrap().services.len(), 1);
        let list = r#"{"kind":"List","items":[{"kind":"Service","apiVersion":"v1","metadata":{"name":"bad","namespace":"n"},"spec":{"ports":7}},{"kind":"Service","apiVersion":"v1","metadata":{"name":"ok","namespace":"n"}}]}"#;
        let objects = parse(list).unwrap();
        assert_eq!(objects.services.len(), 1);
        assert_eq!(objects.problems[0].name, "bad");
        assert!(parse(r#"{"kind":"List","items":[{"kind":"Service"}"#).is_err(), "truncated JSON fails whole");
    }

    #[test]
    fn syntax_error_fails_the_document() {
        assert!(parse("kind: [unclosed").is_err());
    }
}
