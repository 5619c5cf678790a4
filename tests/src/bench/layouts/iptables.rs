//! kube-proxy's iptables layout, written the way its iptables proxier
//! (pkg/proxy/iptables/proxier.go) writes it for ClusterIP Services with
//! the Cluster traffic policy: an `iptables-restore` input with the
//! filter and nat tables, the jumps from the built-in chains, one
//! KUBE-SERVICES rule per Service port, a KUBE-SVC-<hash> chain per
//! Service port choosing among KUBE-SEP-<hash> endpoint chains with
//! `-m statistic --mode random --probability 1/(n-i)`, and the
//! KUBE-MARK-MASQ / KUBE-POSTROUTING masquerade marking.
//!
//! Chain names are kube-proxy's (sha256, base32, 16 characters), and, as
//! kube-proxy does above 1,000 endpoints ("large cluster mode"), the
//! per-endpoint comments are left out then.

use std::fmt::Write as _;

use super::{CLUSTER_CIDR, MASQUERADE_MARK, kube_hash, service_port_name};
use crate::bench::table::Table;

/// kube-proxy's largeClusterEndpointsThreshold.
const LARGE_CLUSTER_ENDPOINTS: usize = 1_000;

/// A generated `iptables-restore` input.
#[derive(Debug)]
pub struct Ruleset {
    pub text: String,
    /// `-A` lines.
    pub rules: usize,
}

/// KUBE-SVC-<hash> of a Service port.
pub fn service_chain(service_port_name: &str, protocol: &str) -> String {
    format!("KUBE-SVC-{}", &kube_hash(&format!("{service_port_name}{protocol}"))[..16])
}

/// KUBE-SEP-<hash> of one endpoint (`ip:port`) of a Service port.
pub fn endpoint_chain(service_port_name: &str, protocol: &str, endpoint: &str) -> String {
    format!("KUBE-SEP-{}", &kube_hash(&format!("{service_port_name}{protocol}{endpoint}"))[..16])
}

/// The probability kube-proxy writes for the i-th of n endpoints: 1/(n-i)
/// with ten decimals (computeProbability).
fn probability(remaining: usize) -> String {
    format!("{:.10}", 1.0 / remaining as f64)
}

pub fn ruleset(table: &Table) -> Ruleset {
    let protocol = table.port.protocol.as_str().to_ascii_lowercase();
    let total_endpoints: usize = table.services.iter().map(|s| s.endpoints.len()).sum();
    let large_cluster = total_endpoints > LARGE_CLUSTER_ENDPOINTS;
    let mut out = String::with_capacity(table.services.len() * 3_000 + 4_096);
    let mut rules = 0;
    let mut rule = |out: &mut String, line: &str| {
        out.push_str(line);
        out.push('\n');
        rules += 1;
    };

    // filter: the jumps kube-proxy ensures in the built-in chains, and its
    // own chains (no Service here lacks endpoints, so KUBE-SERVICES in
    // filter stays empty, as kube-proxy leaves it).
    out.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for chain in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let new = "-m conntrack --ctstate NEW";
    for line in [
        format!("-A INPUT {new} -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL"),
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS".to_owned(),
        format!("-A INPUT {new} -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES"),
        "-A INPUT -j KUBE-FIREWALL".to_owned(),
        format!("-A FORWARD {new} -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL"),
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD".to_owned(),
        format!("-A FORWARD {new} -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
        format!("-A FORWARD {new} -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES"),
        format!("-A OUTPUT {new} -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL"),
        format!("-A OUTPUT {new} -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
        "-A OUTPUT -j KUBE-FIREWALL".to_owned(),
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP".to_owned(),
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP".to_owned(),
        format!("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j ACCEPT"),
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_owned(),
    ] {
        rule(&mut out, &line);
    }
    out.push_str("COMMIT\n");

    // nat: chain declarations first (iptables-restore creates them), then rules.
    out.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    for chain in ["KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let names: Vec<String> = table.services.iter().map(|s| service_port_name(&s.name, table.port.name)).collect();
    let target_port = table.port.target_port;
    let endpoint_text = |ip: &std::net::Ipv4Addr| format!("{ip}:{target_port}");
    for (svc, spn) in table.services.iter().zip(&names) {
        let _ = writeln!(out, ":{} - [0:0]", service_chain(spn, &protocol));
        for ip in &svc.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", endpoint_chain(spn, &protocol, &endpoint_text(ip)));
        }
    }
    rule(&mut out, "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES");
    rule(&mut out, "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES");
    rule(&mut out, "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING");
    rule(&mut out, &format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQUERADE_MARK}"));
    rule(&mut out, &format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQUERADE_MARK}/{MASQUERADE_MARK} -j RETURN"));
    rule(&mut out, &format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQUERADE_MARK}"));
    rule(
        &mut out,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
    );
    let port = table.port.port;
    for (svc, spn) in table.services.iter().zip(&names) {
        let svc_chain = service_chain(spn, &protocol);
        let capture = format!(
            "-m comment --comment \"{spn} cluster IP\" -m {protocol} -p {protocol} -d {} --dport {port}",
            svc.cluster_ip
        );
        rule(&mut out, &format!("-A KUBE-SERVICES {capture} -j {svc_chain}"));
        rule(&mut out, &format!("-A {svc_chain} {capture} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"));
        let n = svc.endpoints.len();
        for (i, ip) in svc.endpoints.iter().enumerate() {
            let endpoint = endpoint_text(ip);
            let sep = endpoint_chain(spn, &protocol, &endpoint);
            let comment =
                if large_cluster { String::new() } else { format!(" -m comment --comment \"{spn} -> {endpoint}\"") };
            let statistic = if i + 1 < n {
                format!(" -m statistic --mode random --probability {}", probability(n - i))
            } else {
                String::new()
            };
            rule(&mut out, &format!("-A {svc_chain}{comment}{statistic} -j {sep}"));
        }
        for ip in &svc.endpoints {
            let endpoint = endpoint_text(ip);
            let sep = endpoint_chain(spn, &protocol, &endpoint);
            let comment = if large_cluster { String::new() } else { format!(" -m comment --comment {spn}") };
            rule(&mut out, &format!("-A {sep}{comment} -s {ip} -j KUBE-MARK-MASQ"));
            rule(
                &mut out,
                &format!("-A {sep}{comment} -m {protocol} -p {protocol} -j DNAT --to-destination {endpoint}"),
            );
        }
    }
    rule(
        &mut out,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    );
    out.push_str("COMMIT\n");
    Ruleset { text: out, rules }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::bench::table::{HTTP, TableSpec};

    /// Names from kube-proxy's own proxier tests.
    #[test]
    fn chain_names_match_kube_proxy() {
        assert_eq!(service_chain("ns1/svc1:p80", "tcp"), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        assert_eq!(service_chain("ns1/svc1", "tcp"), "KUBE-SVC-AQI2S6QIMU7PVVRP");
        assert_eq!(endpoint_chain("ns1/svc1", "tcp", "10.0.1.1:80"), "KUBE-SEP-3JOIVZTXZZRGORX4");
    }

    #[test]
    fn probabilities_make_a_uniform_choice() {
        assert_eq!(probability(3), "0.3333333333");
        assert_eq!(probability(2), "0.5000000000");
        assert_eq!(probability(10), "0.1000000000");
    }

    #[test]
    fn one_service_layout() {
        let spec = TableSpec {
            services: 1,
            port: HTTP,
            pool: (2..=11).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect(),
            endpoints_per_service: 10,
            node_ports: 0,
        };
        let rules = ruleset(&Table::generate(&spec));
        let text = &rules.text;
        let svc = service_chain("bench/svc-000000:http", "tcp");
        assert!(text.contains(&format!(
            "-A KUBE-SERVICES -m comment --comment \"bench/svc-000000:http cluster IP\" -m tcp -p tcp -d 10.96.0.1 --dport 80 -j {svc}\n"
        )));
        let sep = endpoint_chain("bench/svc-000000:http", "tcp", "10.244.1.2:8080");
        assert!(text.contains(&format!(
            "-A {svc} -m comment --comment \"bench/svc-000000:http -> 10.244.1.2:8080\" -m statistic --mode random --probability 0.1000000000 -j {sep}\n"
        )));
        assert!(text.contains(&format!("-A {sep} -m comment --comment bench/svc-000000:http -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080\n")));
        // The last endpoint is taken unconditionally.
        let last = endpoint_chain("bench/svc-000000:http", "tcp", "10.244.1.11:8080");
        assert!(text.contains(&format!(
            "-A {svc} -m comment --comment \"bench/svc-000000:http -> 10.244.1.11:8080\" -j {last}\n"
        )));
        // 15 filter + 7 fixed nat + 1 capture + 1 masq + 10 jumps + 20 endpoint rules + nodeports.
        assert_eq!(rules.rules, 15 + 7 + 1 + 1 + 10 + 20 + 1);
        // The NodePort catch-all stays the last rule of KUBE-SERVICES.
        let last_services_rule = text.lines().rfind(|l| l.starts_with("-A KUBE-SERVICES")).unwrap();
        assert!(last_services_rule.contains("KUBE-NODEPORTS"));
    }
}
