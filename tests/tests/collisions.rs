//! Two Services sharing a backend, reached from one client address and
//! port (legal: the destinations differ, as with a DNS client asking two
//! resolver Services from one socket). Without care both flows would share
//! one reply tuple at the backend, and one flow's replies would come back
//! from the other Service. The second flow gets another source port, as
//! the kernel's NAT does on a clash. Packet level (BPF_PROG_TEST_RUN) and
//! end to end with a real UDP socket. Needs root.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use lb_common::{conntrack::is_snat_port, stats::Counter};
use lb_tests::{
    datapath::{Counters, Datapath},
    packets::{self, Endpoint, ep},
    scenario::{self, DemoCluster},
    servers::in_netns,
    topology,
};
use lb_userspace::{datapath::loader::TC_PROGRAM, model::NodeContext};

const CLIENT: Endpoint = ep([10, 0, 1, 2], 40000);
const RESOLVER_A: Endpoint = ep([10, 96, 0, 70], 53);
const RESOLVER_B: Endpoint = ep([10, 96, 0, 71], 53);

/// `resolver-a` and `resolver-b`: two UDP Services with the same endpoint.
fn services(backend: Ipv4Addr, target_port: u16) -> String {
    let service = |name: &str, ip: &str| {
        format!(
            r#"
- apiVersion: v1
  kind: Service
  metadata: {{name: {name}, namespace: default}}
  spec:
    clusterIP: {ip}
    ports: [{{name: dns, port: 53, protocol: UDP, targetPort: {target_port}}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
  addressType: IPv4
  endpoints: [{{addresses: [{backend}], conditions: {{ready: true}}}}]
  ports: [{{name: dns, port: {target_port}, protocol: UDP}}]
"#
        )
    };
    format!(
        "apiVersion: v1\nkind: List\nitems:{}{}",
        service("resolver-a", "10.96.0.70"),
        service("resolver-b", "10.96.0.71")
    )
}

#[test]
fn the_second_flow_on_a_taken_reply_tuple_gets_another_source_port_and_both_replies_come_back_right() {
    let backend = ep([10, 244, 5, 2], 5353);
    let mut dp = Datapath::load(NodeContext::default()).expect("load datapath (root needed)");
    dp.apply(&services(backend.ip, backend.port)).expect("program services");

    let (first, moved) = dp.run_counted(TC_PROGRAM, &packets::udp(CLIENT, RESOLVER_A, b"a?")).expect("run");
    assert_eq!(first.packet, packets::udp(CLIENT, backend, b"a?"), "the first flow keeps its port");
    assert_eq!(moved, Counters::from([(Counter::NewFlow, 1)]));

    let (second, moved) = dp.run_counted(TC_PROGRAM, &packets::udp(CLIENT, RESOLVER_B, b"b?")).expect("run");
    assert_eq!(moved, Counters::from([(Counter::NewFlow, 1)]));
    let entry = dp.flow_entry(CLIENT, RESOLVER_B).expect("the second flow is tracked");
    assert_eq!(entry.nat_address, CLIENT.ip.octets(), "same client address");
    assert!(is_snat_port(entry.nat_port), "another port: {}", entry.nat_port);
    let moved_client = ep(CLIENT.ip.octets(), entry.nat_port);
    assert_eq!(second.packet, packets::udp(moved_client, backend, b"b?"));

    let (reply_a, _) = dp.run_counted(TC_PROGRAM, &packets::udp(backend, CLIENT, b"a!")).expect("run");
    assert_eq!(reply_a.packet, packets::udp(RESOLVER_A, CLIENT, b"a!"), "A's reply still comes from A");
    let (reply_b, _) = dp.run_counted(TC_PROGRAM, &packets::udp(backend, moved_client, b"b!")).expect("run");
    assert_eq!(reply_b.packet, packets::udp(RESOLVER_B, CLIENT, b"b!"), "B's reply from B, to the client's port");
}

#[test]
fn one_udp_socket_asks_two_services_sharing_a_backend_and_each_answers_from_itself() {
    let backend_ip = topology::backend_ip(1);
    let cluster =
        DemoCluster::start_with(1, &services(backend_ip, scenario::ECHO_PORT), |maps| maps.services.len() >= 4)
            .expect("start the cluster");
    let name = scenario::backend_name(1);
    let answers = in_netns(&cluster.topology.client, || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut answers = Vec::new();
        for (vip, question) in [(RESOLVER_A, "a?"), (RESOLVER_B, "b?"), (RESOLVER_A, "a2?")] {
            socket.send_to(question.as_bytes(), SocketAddr::from((vip.ip, vip.port)))?;
            let mut buf = [0u8; 256];
            let (n, from) = socket.recv_from(&mut buf)?;
            answers.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
        }
        Ok(answers)
    })
    .expect("UDP exchanges");
    let a = SocketAddr::from((RESOLVER_A.ip, RESOLVER_A.port));
    let b = SocketAddr::from((RESOLVER_B.ip, RESOLVER_B.port));
    assert_eq!(
        answers,
        [(format!("{name}: a?"), a), (format!("{name}: b?"), b), (format!("{name}: a2?"), a)],
        "each answer from the Service asked"
    );
}
