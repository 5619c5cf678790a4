//! The answer of a health check server, to any method and path, as
//! kube-proxy's `hcHandler` gives it: 200 when this node has a ready
//! endpoint of the Service and the proxy is healthy, 503 otherwise; the
//! count also in `X-Load-Balancing-Endpoint-Weight` (which weighted cloud
//! load balancers read); a JSON body naming the Service.

use crate::translate::ServiceRef;

/// Status, the count header's value and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub weight: String,
    pub body: String,
}

/// `proxy_healthy`: the agent keeps up with its syncs (`/livez`; as in
/// kube-proxy, the node's own eligibility is not part of it).
pub fn answer(service: &ServiceRef, local_endpoints: usize, proxy_healthy: bool) -> Answer {
    let status = if local_endpoints > 0 && proxy_healthy { 200 } else { 503 };
    let (namespace, name) = service;
    // Laid out as kube-proxy prints it (tab-indented), for anyone diffing
    // the two; names are JSON-quoted.
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        json_string(namespace),
        json_string(name),
    );
    Answer { status, weight: local_endpoints.to_string(), body }
}

fn json_string(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn web() -> ServiceRef {
        ("shop".to_owned(), "web".to_owned())
    }

    #[test]
    fn local_endpoints_and_a_healthy_proxy_answer_200() {
        let answer = answer(&web(), 2, true);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.weight, "2");
        let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(
            body,
            json!({"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 2, "serviceProxyHealthy": true})
        );
    }

    #[test]
    fn no_local_endpoint_or_an_unhealthy_proxy_answers_503() {
        assert_eq!(answer(&web(), 0, true).status, 503);
        let lagging = answer(&web(), 3, false);
        assert_eq!(lagging.status, 503, "a proxy behind on its syncs may route wrongly");
        assert!(lagging.body.contains("\"serviceProxyHealthy\": false"), "{}", lagging.body);
        assert_eq!(lagging.weight, "3");
    }

    #[test]
    fn body_is_laid_out_as_kube_proxys() {
        assert_eq!(
            answer(&web(), 1, true).body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
        );
    }
}
