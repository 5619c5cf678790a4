//! `labelSelector` and `fieldSelector` query parameters.
//!
//! Only the forms the agent uses are understood: `key=value`, `key==value`,
//! `key!=value`, `key` and `!key` for labels, and `metadata.name` /
//! `metadata.namespace` (in)equality for fields. Anything else is rejected
//! with 400, as the real server rejects what it cannot parse, so a test never
//! silently gets an unfiltered result.

use serde_json::Value;

use super::status::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    /// `value` is the label (or field) value if the object has it.
    fn matches(&self, value: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Self::Equals(k, v) => value(k).as_deref() == Some(v),
            // Like the real server: a missing label satisfies `!=`.
            Self::NotEquals(k, v) => value(k).as_deref() != Some(v),
            Self::Exists(k) => value(k).is_some(),
            Self::NotExists(k) => value(k).is_none(),
        }
    }
}

/// Splits `a=b,!c,d!=e` into requirements.
fn parse(selector: &str, what: &str) -> Result<Vec<Requirement>, ApiError> {
    let invalid = |term: &str| ApiError::bad_request(format!("unable to parse requirement in {what} {term:?}"));
    let mut requirements = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        // Set-based forms (`in`, `notin`) are not supported.
        if term.contains(['(', ')', ' ']) {
            return Err(invalid(term));
        }
        let requirement = if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEquals(k.into(), v.into())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::Equals(k.into(), v.into())
        } else if let Some(k) = term.strip_prefix('!') {
            Requirement::NotExists(k.into())
        } else {
            Requirement::Exists(term.into())
        };
        let key = match &requirement {
            Requirement::Equals(k, _) | Requirement::NotEquals(k, _) => k,
            Requirement::Exists(k) | Requirement::NotExists(k) => k,
        };
        if key.is_empty() || key.contains(['=', '!']) {
            return Err(invalid(term));
        }
        requirements.push(requirement);
    }
    Ok(requirements)
}

/// A parsed `labelSelector` plus `fieldSelector`; the empty filter matches
/// everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Filter {
    pub fn parse(label_selector: Option<&str>, field_selector: Option<&str>) -> Result<Self, ApiError> {
        let labels = parse(label_selector.unwrap_or(""), "labelSelector")?;
        let fields = parse(field_selector.unwrap_or(""), "fieldSelector")?;
        for field in &fields {
            match field {
                Requirement::Equals(k, _) | Requirement::NotEquals(k, _)
                    if k == "metadata.name" || k == "metadata.namespace" => {}
                Requirement::Equals(k, _) | Requirement::NotEquals(k, _) => {
                    return Err(ApiError::bad_request(format!("field label not supported: {k}")));
                }
                _ => {
                    return Err(ApiError::bad_request("invalid field selector: existence is not supported"));
                }
            }
        }
        Ok(Self { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let metadata = &obj["metadata"];
        let label = |k: &str| metadata["labels"][k].as_str().map(str::to_owned);
        let field = |k: &str| {
            let value = match k {
                "metadata.name" => metadata["name"].as_str(),
                // Cluster-scoped objects have the empty namespace.
                _ => Some(metadata["namespace"].as_str().unwrap_or("")),
            };
            value.map(str::to_owned)
        };
        self.labels.iter().all(|r| r.matches(label)) && self.fields.iter().all(|r| r.matches(field))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(name: &str, labels: &Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn labels() {
        let svc = obj("a", &json!({"app": "web", "service.kubernetes.io/headless": ""}));
        let m = |s: &str| Filter::parse(Some(s), None).unwrap().matches(&svc);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web"));
        assert!(!m("app!=web"));
        assert!(m("tier!=db"));
        assert!(m("app"));
        assert!(!m("!service.kubernetes.io/headless"));
        assert!(m("!service.kubernetes.io/service-proxy-name,app=web"));
        assert!(!m("app=web,tier=db"));
        assert!(Filter::parse(Some("app in (web)"), None).is_err());
    }

    #[test]
    fn fields() {
        let node = json!({"metadata": {"name": "n1"}});
        let m = |s: &str| Filter::parse(None, Some(s)).unwrap().matches(&node);
        assert!(m("metadata.name=n1"));
        assert!(!m("metadata.name=n2"));
        assert!(m("metadata.name!=n2"));
        assert!(m("metadata.namespace="));
        assert_eq!(Filter::parse(None, Some("spec.nodeName=x")).unwrap_err().code, 400);
    }
}
