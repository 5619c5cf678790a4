//! End to end: what flows to an endpoint that leaves its Service do.
//! UDP has no connection to end, so a client sending from a fixed port
//! would keep its tracked backend forever; the agent removes such flows
//! after the sync (kube-proxy flushes their conntrack entries) and the
//! next datagram reaches a live endpoint. Established TCP is left alone,
//! as with kube-proxy: once its backend is gone, the next segment is
//! balanced afresh and the new backend resets the connection it never saw.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use lb_tests::{
    scenario::{self, DemoCluster, ECHO, ECHO_PORT, WEB},
    servers, topology,
};
use lb_userspace::tables::DesiredMaps;

/// A second UDP Service on the same endpoints as `echo`.
const ECHO_2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 54), 53);
/// The client's fixed source port, as a resolver's.
const CLIENT_PORT: u16 = 40053;
/// The longest a client may be answered by a removed endpoint.
const PURGED_WITHIN: Duration = Duration::from_secs(1);

/// `name` (a UDP Service on port 53 to the backends' echo port) at `ip`
/// with backends `backends` (1-based).
fn udp_service(name: &str, ip: Ipv4Addr, backends: &[usize]) -> String {
    let endpoints: String =
        backends.iter().map(|&i| format!("  - addresses: [{}]\n", topology::backend_ip(i))).collect();
    let endpoints = if endpoints.is_empty() { "  []\n".to_owned() } else { endpoints };
    format!(
        "- apiVersion: v1\n  kind: Service\n  metadata: {{name: {name}, namespace: demo}}\n  spec:\n    clusterIP: {ip}\n    ports: [{{name: echo, port: 53, protocol: UDP, targetPort: {ECHO_PORT}}}]\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: {name}-1, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}\n  addressType: IPv4\n  ports: [{{name: echo, port: {ECHO_PORT}, protocol: UDP}}]\n  endpoints:\n{endpoints}"
    )
}

/// `echo` with `backends`; with `shared`, also `echo-2` on all three.
fn services(backends: &[usize], shared: bool) -> String {
    let mut text = format!("apiVersion: v1\nkind: List\nitems:\n{}", udp_service("echo", *ECHO.ip(), backends));
    if shared {
        text += &udp_service("echo-2", *ECHO_2.ip(), &[1, 2, 3]);
    }
    text
}

/// A UDP socket on the client's fixed port, in the client namespace.
fn client_socket(cluster: &DemoCluster) -> UdpSocket {
    let socket = servers::in_netns(&cluster.topology.client, || Ok(UdpSocket::bind(("0.0.0.0", CLIENT_PORT))?))
        .expect("bind the client port");
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    socket
}

/// One datagram to `echo`; the name of the backend that answered.
fn answered_by(socket: &UdpSocket) -> Option<String> {
    socket.send_to(b"ping", SocketAddr::V4(ECHO)).ok()?;
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    reply.split_once(':').map(|(name, _)| name.to_owned())
}

fn echo_has(count: u16) -> impl Fn(&DesiredMaps) -> bool {
    move |m| scenario::udp_backend_count(m, ECHO) == Some(count)
}

/// Removes the endpoint a fixed-port client is balanced to and checks
/// that, within `PURGED_WITHIN` of the agent programming the change, the
/// client is answered by the endpoints left, and only by them.
fn fixed_port_client_moves_off_a_removed_endpoint(shared: bool) {
    let mut cluster = DemoCluster::start_with(3, &services(&[1, 2, 3], shared), echo_has(3)).expect("start cluster");
    let socket = client_socket(&cluster);
    let first = answered_by(&socket).expect("an answer through the ClusterIP");
    let removed = (1..=3).find(|&i| scenario::backend_name(i) == first).expect("a known backend answered");
    let left: Vec<usize> = (1..=3).filter(|&i| i != removed).collect();
    assert_eq!(answered_by(&socket).as_deref(), Some(first.as_str()), "a tracked flow keeps its backend");

    cluster.update(&services(&left, shared), echo_has(2)).expect("agent removes the endpoint");
    let still_listed = cluster
        .agent
        .maps()
        .unwrap()
        .backends
        .values()
        .any(|b| b.address == topology::backend_ip(removed).octets() && b.port == ECHO_PORT);
    assert_eq!(still_listed, shared, "the endpoint keeps its backend entry exactly when echo-2 still uses it");
    let programmed = Instant::now();
    loop {
        match answered_by(&socket) {
            Some(name) if name != first => break,
            answer => assert!(
                programmed.elapsed() < PURGED_WITHIN,
                "{PURGED_WITHIN:?} after the change, the client is still answered by {answer:?} (removed: {first})"
            ),
        }
    }
    for _ in 0..5 {
        let name = answered_by(&socket).expect("answered by an endpoint left");
        assert_ne!(name, first, "the removed endpoint answered again");
    }
}

#[test]
fn a_fixed_port_udp_client_moves_off_an_endpoint_removed_everywhere() {
    fixed_port_client_moves_off_a_removed_endpoint(false);
}

#[test]
fn a_fixed_port_udp_client_moves_off_an_endpoint_another_service_still_uses() {
    fixed_port_client_moves_off_a_removed_endpoint(true);
}

#[test]
fn an_established_tcp_connection_whose_backend_is_gone_is_reset_by_the_new_one() {
    let mut cluster = DemoCluster::start().expect("start demo cluster");
    let mut conn =
        servers::connect(&cluster.topology.client, SocketAddr::V4(WEB)).unwrap().expect("connect to the ClusterIP");
    let pinned = servers::http_request(&mut conn, false).expect("first request");
    let removed = (1..=scenario::BACKENDS).find(|&i| scenario::backend_name(i) == pinned).unwrap();
    let text = scenario::demo_services_without_web_endpoint(topology::backend_ip(removed));
    cluster.update(&text, |m| scenario::backend_count(m, WEB) == Some(2)).expect("agent removes the endpoint");

    let error = servers::http_request(&mut conn, false).expect_err("the new backend cannot continue the connection");
    let io = error.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
    assert_eq!(io, Some(std::io::ErrorKind::ConnectionReset), "{error:#}");
}
