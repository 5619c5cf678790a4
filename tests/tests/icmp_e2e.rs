//! ICMP errors through a Service, end to end: real namespaces, the real
//! agent, real sockets. A large upload through a ClusterIP crosses a link
//! narrower than both ends' own (so neither end's MSS knows about it) and
//! completes because the client learns the path MTU; a connected UDP
//! client of a backend without a listener gets ECONNREFUSED. Needs root;
//! run one test at a time (`--test-threads=1`).

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use lb_tests::{
    scenario::{self, DemoCluster},
    servers, topology,
};

/// Counts the bytes it receives (port 9000 of backend 1).
const SINK: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 70), 80);
const SINK_PORT: u16 = 9000;
/// UDP to a backend port where nothing listens.
const DEAF: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 71), 53);
const DEAF_PORT: u16 = 9999;
/// The node-side MTU of the link to backend 1; both ends keep 1500.
const NARROW_MTU: &str = "1400";
const UPLOAD_LEN: usize = 1 << 20;
/// How long a read may wait: a stalled upload fails here.
const PATIENCE: Duration = Duration::from_secs(10);

fn services() -> String {
    let service = |name: &str, vip: SocketAddrV4, proto: &str, target: u16| {
        format!(
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: {name}, namespace: demo}}\n  spec:\n    clusterIP: {ip}\n    ports: [{{port: {port}, protocol: {proto}, targetPort: {target}}}]\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: {name}-1, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}\n  addressType: IPv4\n  ports: [{{name: \"\", port: {target}, protocol: {proto}}}]\n  endpoints: [{{addresses: [{backend}], conditions: {{ready: true}}}}]\n",
            ip = vip.ip(),
            port = vip.port(),
            backend = topology::backend_ip(1),
        )
    };
    format!(
        "apiVersion: v1\nkind: List\nitems:\n{}{}",
        service("sink", SINK, "TCP", SINK_PORT),
        service("deaf", DEAF, "UDP", DEAF_PORT)
    )
}

fn start() -> DemoCluster {
    DemoCluster::start_with(1, &services(), |m| {
        scenario::backend_count(m, SINK) == Some(1) && scenario::udp_backend_count(m, DEAF) == Some(1)
    })
    .expect("start cluster")
}

/// Counts the bytes of one connection on backend 1 (`servers::byte_counter`).
fn sink(cluster: &DemoCluster) {
    let addr = SocketAddr::from((topology::backend_ip(1), SINK_PORT));
    servers::byte_counter(&cluster.topology.backends[0], addr).expect("listen on the backend");
}

#[test]
fn large_upload_through_a_clusterip_completes_over_a_narrower_link() {
    let cluster = start();
    let node_side = &cluster.topology.node_interfaces[1];
    topology::run_in(&cluster.topology.node, &["ip", "link", "set", node_side, "mtu", NARROW_MTU])
        .expect("narrow link");
    sink(&cluster);
    let mut conn = servers::connect(&cluster.topology.client, SocketAddr::V4(SINK)).unwrap().expect("connect");
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    conn.set_write_timeout(Some(PATIENCE)).unwrap();
    conn.write_all(&vec![0x55; UPLOAD_LEN]).expect("upload");
    conn.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("the backend's count: the upload did not stall");
    assert_eq!(answer, UPLOAD_LEN.to_string(), "every byte arrived");
}

#[test]
fn connected_udp_client_of_a_backend_without_listener_gets_connection_refused() {
    let cluster = start();
    let err = servers::in_netns(&cluster.topology.client, || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(DEAF)?;
        socket.set_read_timeout(Some(PATIENCE))?;
        socket.send(b"anyone?")?;
        let mut buf = [0u8; 64];
        Ok(socket.recv(&mut buf).expect_err("nothing listens: no answer"))
    })
    .expect("exchange from the client");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "the backend's port unreachable reached the client: {err}");
}
