//! kube-proxy's nftables layout, written the way its nftables proxier
//! (pkg/proxy/nftables/proxier.go, through knftables) writes it for
//! ClusterIP Services with the Cluster traffic policy: `table ip
//! kube-proxy` with its base chains, the `service-ips` verdict map keyed
//! on `ip daddr . meta l4proto . th dport`, a `service-<hash>-ns/name/proto/port`
//! chain per Service port that picks an endpoint with
//! `numgen random mod N vmap { … }`, and `endpoint-<hash>-…` chains doing
//! `dnat to`. A NodePort (Cluster policy) adds the `service-nodeports`
//! element and its `external-<hash>-…` chain, which marks the flow for
//! masquerade and goes on to the Service's chain. Loaded in one `nft -f`
//! transaction, as knftables does.

use std::fmt::Write as _;

use super::{CLUSTER_CIDR, MASQUERADE_MARK, SERVICE_CIDR, kube_hash};
use crate::bench::table::{NAMESPACE, Table};

const TABLE: &str = "ip kube-proxy";
/// nftables' name length limit (256) less the longest chain prefix.
const CHAIN_BASE_MAX: usize = 256 - 16;

/// A generated `nft -f` script.
#[derive(Debug)]
pub struct Script {
    pub text: String,
    /// Rules plus map/set elements (each is one lookup entry).
    pub rules: usize,
}

/// hashAndTruncate: the first 8 base32 characters of the name's hash,
/// a dash, then the name.
fn hash_and_truncate(name: &str) -> String {
    let mut out = format!("{}-{name}", &kube_hash(name)[..8]);
    if out.len() > CHAIN_BASE_MAX {
        out.truncate(CHAIN_BASE_MAX - 3);
        out.push_str("...");
    }
    out
}

/// `service-<hash>-namespace/name/protocol/port`.
pub fn service_chain(namespace: &str, name: &str, protocol: &str, port_name: &str) -> String {
    format!("service-{}", hash_and_truncate(&format!("{namespace}/{name}/{protocol}/{port_name}")))
}

/// `external-<hash>-namespace/name/protocol/port`.
pub fn external_chain(namespace: &str, name: &str, protocol: &str, port_name: &str) -> String {
    format!("external-{}", hash_and_truncate(&format!("{namespace}/{name}/{protocol}/{port_name}")))
}

/// `endpoint-<hash>-namespace/name/protocol/port__ip/port`.
pub fn endpoint_chain(namespace: &str, name: &str, protocol: &str, port_name: &str, ip: &str, port: u16) -> String {
    format!("endpoint-{}", hash_and_truncate(&format!("{namespace}/{name}/{protocol}/{port_name}__{ip}/{port}")))
}

pub fn script(table: &Table) -> Script {
    let protocol = table.port.protocol.as_str().to_ascii_lowercase();
    let mut out = String::with_capacity(table.services.len() * 4_000 + 8_192);
    let mut rules = 0;
    let mut line = |out: &mut String, text: &str, counts: bool| {
        out.push_str(text);
        out.push('\n');
        if counts {
            rules += 1;
        }
    };

    // setupNFTables: the table, base chains (filter chains at dstnat-10 so
    // they see pre-DNAT addresses; dstnat+10 for output after DNAT), the
    // top-level chains and the jumps into them.
    line(&mut out, &format!("add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}"), false);
    for (name, kind, hook, priority) in [
        ("filter-prerouting", "filter", "prerouting", -110),
        ("filter-input", "filter", "input", -110),
        ("filter-forward", "filter", "forward", -110),
        ("filter-output", "filter", "output", -110),
        ("filter-output-post-dnat", "filter", "output", -90),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
    ] {
        line(&mut out, &format!("add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority} ; }}"), false);
    }
    for chain in [
        "nodeport-endpoints-check",
        "service-endpoints-check",
        "firewall-check",
        "services",
        "masquerading",
        "cluster-ips-check",
        "mark-for-masquerade",
    ] {
        line(&mut out, &format!("add chain {TABLE} {chain}"), false);
    }
    for (dst, src, extra) in [
        ("nodeport-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-input", "ct state new "),
        ("service-endpoints-check", "filter-forward", "ct state new "),
        ("service-endpoints-check", "filter-output", "ct state new "),
        ("firewall-check", "filter-prerouting", "ct state new "),
        ("firewall-check", "filter-output", "ct state new "),
        ("services", "nat-output", ""),
        ("services", "nat-prerouting", ""),
        ("masquerading", "nat-postrouting", ""),
        ("cluster-ips-check", "filter-forward", "ct state new "),
        ("cluster-ips-check", "filter-output-post-dnat", "ct state new "),
    ] {
        line(&mut out, &format!("add rule {TABLE} {src} {extra}jump {dst}"), true);
    }
    line(&mut out, &format!("add rule {TABLE} mark-for-masquerade mark set mark or {MASQUERADE_MARK}"), true);
    line(&mut out, &format!("add rule {TABLE} masquerading mark and {MASQUERADE_MARK} == 0 return"), true);
    line(&mut out, &format!("add rule {TABLE} masquerading mark set mark xor {MASQUERADE_MARK}"), true);
    line(&mut out, &format!("add rule {TABLE} masquerading masquerade fully-random"), true);
    line(
        &mut out,
        &format!("add set {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"),
        false,
    );
    line(
        &mut out,
        &format!(
            "add rule {TABLE} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
        ),
        true,
    );
    line(
        &mut out,
        &format!(
            "add rule {TABLE} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
        ),
        true,
    );
    let addr_proto_port = "ipv4_addr . inet_proto . inet_service : verdict";
    line(
        &mut out,
        &format!(
            "add map {TABLE} no-endpoint-services {{ type {addr_proto_port} ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
        ),
        false,
    );
    line(
        &mut out,
        &format!(
            "add map {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
        ),
        false,
    );
    line(
        &mut out,
        &format!(
            "add chain {TABLE} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
        ),
        false,
    );
    line(&mut out, &format!("add rule {TABLE} reject-chain reject"), true);
    line(
        &mut out,
        &format!(
            "add rule {TABLE} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
        ),
        true,
    );
    line(
        &mut out,
        &format!(
            "add rule {TABLE} nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
        ),
        true,
    );
    line(
        &mut out,
        &format!(
            "add map {TABLE} firewall-ips {{ type {addr_proto_port} ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
        ),
        false,
    );
    line(
        &mut out,
        &format!("add rule {TABLE} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips"),
        true,
    );
    line(
        &mut out,
        &format!(
            "add map {TABLE} service-ips {{ type {addr_proto_port} ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
        ),
        false,
    );
    line(
        &mut out,
        &format!(
            "add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
        ),
        false,
    );
    line(&mut out, &format!("add rule {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips"), true);
    line(
        &mut out,
        &format!(
            "add rule {TABLE} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
        ),
        true,
    );

    // syncProxyRules, per Service port.
    let (port, port_name, target_port) = (table.port.port, table.port.name, table.port.target_port);
    for svc in &table.services {
        let chain = service_chain(NAMESPACE, &svc.name, &protocol, port_name);
        let endpoints: Vec<(String, String)> = svc
            .endpoints
            .iter()
            .map(|ip| {
                (
                    endpoint_chain(NAMESPACE, &svc.name, &protocol, port_name, &ip.to_string(), target_port),
                    ip.to_string(),
                )
            })
            .collect();
        for (ep_chain, _) in &endpoints {
            line(&mut out, &format!("add chain {TABLE} {ep_chain}"), false);
        }
        line(&mut out, &format!("add chain {TABLE} {chain}"), false);
        line(&mut out, &format!("add element {TABLE} cluster-ips {{ {} }}", svc.cluster_ip), true);
        line(
            &mut out,
            &format!("add element {TABLE} service-ips {{ {} . {protocol} . {port} : goto {chain} }}", svc.cluster_ip),
            true,
        );
        line(
            &mut out,
            &format!(
                "add rule {TABLE} {chain} ip daddr {} {protocol} dport {port} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
                svc.cluster_ip
            ),
            true,
        );
        if let Some(node_port) = svc.node_port {
            // Cluster policy: external traffic may cross to another node,
            // so it is masqueraded.
            let external = external_chain(NAMESPACE, &svc.name, &protocol, port_name);
            line(&mut out, &format!("add chain {TABLE} {external}"), false);
            line(&mut out, &format!("add rule {TABLE} {external} jump mark-for-masquerade"), true);
            line(&mut out, &format!("add rule {TABLE} {external} goto {chain}"), true);
            line(
                &mut out,
                &format!("add element {TABLE} service-nodeports {{ {protocol} . {node_port} : goto {external} }}"),
                true,
            );
        }
        let mut vmap = String::new();
        for (i, (ep_chain, _)) in endpoints.iter().enumerate() {
            if i > 0 {
                vmap.push_str(" , ");
            }
            let _ = write!(vmap, "{i} : goto {ep_chain}");
        }
        line(
            &mut out,
            &format!("add rule {TABLE} {chain} numgen random mod {} vmap {{ {vmap} }}", endpoints.len()),
            true,
        );
        for (ep_chain, ip) in &endpoints {
            line(&mut out, &format!("add rule {TABLE} {ep_chain} ip saddr {ip} jump mark-for-masquerade"), true);
            line(
                &mut out,
                &format!("add rule {TABLE} {ep_chain} meta l4proto {protocol} dnat to {ip}:{target_port}"),
                true,
            );
        }
    }
    Script { text: out, rules }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::bench::table::{DNS, TableSpec};

    /// Names from kube-proxy's own nftables proxier tests.
    #[test]
    fn chain_names_match_kube_proxy() {
        assert_eq!(service_chain("ns1", "svc1", "tcp", "p80"), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            endpoint_chain("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn one_udp_service_layout() {
        let spec = TableSpec {
            services: 1,
            port: DNS,
            pool: (2..=11).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect(),
            endpoints_per_service: 10,
            node_ports: 0,
        };
        let text = script(&Table::generate(&spec)).text;
        let chain = service_chain("bench", "svc-000000", "udp", "dns");
        assert!(
            text.contains(&format!(
                "add element ip kube-proxy service-ips {{ 10.96.0.1 . udp . 53 : goto {chain} }}\n"
            ))
        );
        assert!(
            text.contains(&format!("add rule ip kube-proxy {chain} numgen random mod 10 vmap {{ 0 : goto endpoint-"))
        );
        let ep = endpoint_chain("bench", "svc-000000", "udp", "dns", "10.244.1.2", 5353);
        assert!(text.contains(&format!("add rule ip kube-proxy {ep} meta l4proto udp dnat to 10.244.1.2:5353\n")));
    }

    /// A NodePort: its `service-nodeports` element goes to the external
    /// chain (kube-proxy names it after the same Service port), which
    /// marks for masquerade and goes on to the Service chain.
    #[test]
    fn node_port_is_masqueraded_then_balanced() {
        let spec = TableSpec {
            services: 1,
            port: DNS,
            pool: (2..=11).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect(),
            endpoints_per_service: 10,
            node_ports: 1,
        };
        let table = Table::generate(&spec);
        let node_port = table.services[0].node_port.expect("a NodePort");
        let text = script(&table).text;
        let chain = service_chain("bench", "svc-000000", "udp", "dns");
        let external = external_chain("bench", "svc-000000", "udp", "dns");
        assert_eq!(external, chain.replacen("service-", "external-", 1));
        for line in [
            format!("add element ip kube-proxy service-nodeports {{ udp . {node_port} : goto {external} }}"),
            format!("add rule ip kube-proxy {external} jump mark-for-masquerade"),
            format!("add rule ip kube-proxy {external} goto {chain}"),
        ] {
            assert!(text.contains(&format!("{line}\n")), "missing: {line}");
        }
    }
}
