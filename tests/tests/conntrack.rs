//! The conntrack lifecycle on a real `LB4_CT`: the datapath's state bits
//! and last-seen time through BPF_PROG_TEST_RUN (a TCP connection from
//! SYN to FIN both ways, an RST from either side), and the agent's
//! garbage collection sweeping a table of entries written with old
//! timestamps. Needs root (CAP_BPF).

use std::collections::BTreeMap;

use lb_common::{
    backend::BackendV4,
    conntrack::{CtKeyV4, CtValueV4, DIR_ORIGINAL, DIR_REPLY, FLAG_ESTABLISHED, FLAG_FIN, FLAG_RST},
    proto,
    stats::Counter,
};
use lb_tests::{
    datapath::{Counters, Datapath, TC_ACT_SHOT},
    packets::{self, Endpoint, TcpFlags, ep},
};
use lb_userspace::{
    conntrack::{
        clock,
        expiry::{self, State, Timeouts},
        flows,
        sweep::{self, Rules},
    },
    datapath::loader::TC_PROGRAM,
    model::NodeContext,
};

const CLIENT: Endpoint = ep([10, 0, 1, 2], 40000);
const WEB_VIP: Endpoint = ep([10, 96, 0, 10], 80);
const WEB_BACKEND: Endpoint = ep([10, 244, 1, 2], 8080);
const DNS_VIP: Endpoint = ep([10, 96, 0, 53], 53);
const DNS_BACKEND: Endpoint = ep([10, 244, 2, 2], 5353);
const NODE: [u8; 4] = [192, 168, 0, 10];

const SERVICES: &str = r#"
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
  metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.2], conditions: {ready: true}}]
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: kube-system}
  spec:
    clusterIP: 10.96.0.53
    ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.2.2], conditions: {ready: true}}]
  ports: [{name: dns, port: 5353, protocol: UDP}]
"#;

fn datapath() -> Datapath {
    let mut dp = Datapath::load(NodeContext::default()).expect("load datapath (root needed)");
    dp.apply(SERVICES).expect("program services");
    dp
}

/// The backend id and entry for an endpoint.
fn backend(dp: &Datapath, endpoint: Endpoint) -> (u32, BackendV4) {
    dp.backends()
        .iter()
        .find(|(_, b)| b.address == endpoint.ip.octets() && b.port == endpoint.port)
        .map(|(id, b)| (*id, *b))
        .expect("backend programmed")
}

fn original_key(client: Endpoint, frontend: Endpoint, proto: u8) -> CtKeyV4 {
    CtKeyV4 {
        src_address: client.ip.octets(),
        dst_address: frontend.ip.octets(),
        src_port: client.port,
        dst_port: frontend.port,
        proto,
        direction: DIR_ORIGINAL,
        _pad: [0; 2],
    }
}

/// Both entries of the flow from `client` to the web frontend.
fn web_flow(dp: &Datapath, client: Endpoint) -> (CtValueV4, CtValueV4) {
    let table: BTreeMap<CtKeyV4, CtValueV4> = dp.conntrack().expect("read conntrack").into_iter().collect();
    let key = original_key(client, WEB_VIP, proto::TCP);
    let original = *table.get(&key).expect("original entry");
    let reply_key = flows::reply_key(&key, &original, &backend(dp, WEB_BACKEND).1);
    (original, *table.get(&reply_key).expect("reply entry"))
}

fn flags(syn: bool, ack: bool, fin: bool, rst: bool) -> TcpFlags {
    TcpFlags { syn, ack, fin, rst }
}

/// Runs one segment and checks the path it took.
fn segment(dp: &mut Datapath, from: Endpoint, to: Endpoint, bits: TcpFlags, counter: Counter) {
    let (out, moved) = dp.run_counted(TC_PROGRAM, &packets::tcp_with(from, to, bits)).expect("run");
    assert_ne!(out.verdict, TC_ACT_SHOT, "{bits:?} from {from:?} dropped");
    assert_eq!(moved, Counters::from([(counter, 1)]), "{bits:?} from {from:?}");
}

/// One segment of a connection and what both entries hold after it.
struct Step {
    what: &'static str,
    from: Endpoint,
    to: Endpoint,
    bits: TcpFlags,
    counter: Counter,
    original_flags: u16,
    reply_flags: u16,
    state: State,
}

const fn step(what: &'static str, from: Endpoint, to: Endpoint, bits: TcpFlags, counter: Counter) -> Step {
    Step { what, from, to, bits, counter, original_flags: 0, reply_flags: 0, state: State::Syn }
}

#[test]
fn tcp_state_bits_follow_a_connection_from_syn_to_fin_both_ways() {
    let mut dp = datapath();
    let before = clock::now_s();
    let (est, fin) = (FLAG_ESTABLISHED, FLAG_ESTABLISHED | FLAG_FIN);
    let (to_web, to_client) = (Counter::Established, Counter::ReplyNat);
    let steps = [
        step("SYN", CLIENT, WEB_VIP, flags(true, false, false, false), Counter::NewFlow),
        step("SYN-ACK", WEB_BACKEND, CLIENT, flags(true, true, false, false), to_client),
        Step {
            original_flags: est,
            state: State::Established,
            ..step("ACK", CLIENT, WEB_VIP, flags(false, true, false, false), to_web)
        },
        Step {
            original_flags: fin,
            state: State::Established,
            ..step("client FIN (half-closed)", CLIENT, WEB_VIP, flags(false, true, true, false), to_web)
        },
        Step {
            original_flags: fin,
            reply_flags: est,
            state: State::Established,
            ..step("data from the backend", WEB_BACKEND, CLIENT, flags(false, true, false, false), to_client)
        },
        Step {
            original_flags: fin,
            reply_flags: fin,
            state: State::Closing,
            ..step("backend FIN", WEB_BACKEND, CLIENT, flags(false, true, true, false), to_client)
        },
    ];
    for s in steps {
        segment(&mut dp, s.from, s.to, s.bits, s.counter);
        let (original, reply) = web_flow(&dp, CLIENT);
        assert_eq!((original.flags, reply.flags), (s.original_flags, s.reply_flags), "after {}", s.what);
        assert_eq!(expiry::state(proto::TCP, Some(&original), Some(&reply)), s.state, "after {}", s.what);
        let after = clock::now_s();
        for entry in [original, reply] {
            assert!((before..=after).contains(&entry.last_seen_s), "after {}: last seen {entry:?}", s.what);
        }
    }
}

#[test]
fn an_rst_from_either_side_marks_both_entries() {
    let mut dp = datapath();
    for (client_port, rst_from_client) in [(41000, true), (41001, false)] {
        let client = ep([10, 0, 1, 2], client_port);
        segment(&mut dp, client, WEB_VIP, flags(true, false, false, false), Counter::NewFlow);
        segment(&mut dp, client, WEB_VIP, flags(false, true, false, false), Counter::Established);
        let (original, reply) = web_flow(&dp, client);
        assert_eq!((original.flags & FLAG_RST, reply.flags & FLAG_RST), (0, 0));
        if rst_from_client {
            segment(&mut dp, client, WEB_VIP, flags(false, false, false, true), Counter::Established);
        } else {
            segment(&mut dp, WEB_BACKEND, client, flags(false, false, false, true), Counter::ReplyNat);
        }
        let (original, reply) = web_flow(&dp, client);
        let side = if rst_from_client { "client" } else { "backend" };
        assert_ne!(original.flags & FLAG_RST, 0, "RST from the {side}: original entry {original:?}");
        assert_ne!(reply.flags & FLAG_RST, 0, "RST from the {side}: reply entry {reply:?}");
        assert_eq!(expiry::state(proto::TCP, Some(&original), Some(&reply)), State::Closing);
    }
}

#[test]
fn a_packet_moves_its_entrys_last_seen_to_now() {
    let mut dp = datapath();
    segment(&mut dp, CLIENT, WEB_VIP, flags(true, false, false, false), Counter::NewFlow);
    let (original, _) = web_flow(&dp, CLIENT);
    let key = original_key(CLIENT, WEB_VIP, proto::TCP);
    let old = CtValueV4 { last_seen_s: original.last_seen_s - 100, ..original };
    dp.insert_conntrack([(key, old)]).expect("age the entry");
    // The next packet comes a clock second later: the stamp must follow
    // the clock, not what the datapath read earlier.
    while clock::now_s() == original.last_seen_s {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = clock::now_s();
    segment(&mut dp, CLIENT, WEB_VIP, flags(false, true, false, false), Counter::Established);
    let (original, _) = web_flow(&dp, CLIENT);
    assert!(original.last_seen_s >= before, "last seen not refreshed: {original:?}");
    assert_eq!(original.created_s, old.created_s, "creation time kept");
}

/// One flow written straight into the table: `None` leaves an entry out
/// (an orphan). Idle times in seconds before `now`.
struct Synthetic {
    client_port: u16,
    frontend: Endpoint,
    backend: (u32, BackendV4),
    snat: bool,
    original: Option<(u16, u32)>,
    reply: Option<(u16, u32)>,
}

impl Synthetic {
    fn entries(&self, now: u32) -> Vec<(CtKeyV4, CtValueV4)> {
        let client = ep([10, 0, 2, 2], self.client_port);
        let key = original_key(client, self.frontend, self.backend.1.proto);
        let base = CtValueV4 {
            backend_id: self.backend.0,
            frontend_id: 1,
            frontend_address: self.frontend.ip.octets(),
            frontend_port: self.frontend.port,
            created_s: now - OLDEST_STAMP_S,
            ..CtValueV4::default()
        };
        let nat_port = 61000 + self.client_port % 1000;
        let original = if self.snat { CtValueV4 { nat_address: NODE, nat_port, ..base } } else { base };
        let reply_key = flows::reply_key(&key, &original, &self.backend.1);
        let reply =
            if self.snat { CtValueV4 { nat_address: client.ip.octets(), nat_port: client.port, ..base } } else { base };
        let stamp = |value: CtValueV4, (flags, idle): (u16, u32)| CtValueV4 { flags, last_seen_s: now - idle, ..value };
        let mut out = Vec::new();
        out.extend(self.original.map(|s| (key, stamp(original, s))));
        out.extend(self.reply.map(|s| (reply_key, stamp(reply, s))));
        out
    }
}

/// The furthest in the past a synthetic entry is stamped, in seconds.
const OLDEST_STAMP_S: u32 = 200;

/// The conntrack clock, once it reads at least `seconds`: it counts from
/// boot, and a stamp `seconds` in the past must not fall before it.
fn clock_past(seconds: u32) -> u32 {
    loop {
        let now = clock::now_s();
        if now >= seconds {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_secs(u64::from(seconds - now)));
    }
}

#[test]
fn one_sweep_removes_expired_flows_and_keeps_live_and_one_way_ones() {
    let mut dp = datapath();
    // A real connection, just used.
    segment(&mut dp, CLIENT, WEB_VIP, flags(true, false, false, false), Counter::NewFlow);
    let (web, dns) = (backend(&dp, WEB_BACKEND), backend(&dp, DNS_BACKEND));
    let (est, fin, rst) = (FLAG_ESTABLISHED, FLAG_ESTABLISHED | FLAG_FIN, FLAG_ESTABLISHED | FLAG_RST);
    let flow = |client_port, frontend, backend, snat, original, reply| Synthetic {
        client_port,
        frontend,
        backend,
        snat,
        original,
        reply,
    };
    let flows = [
        // Removed: closed 6 s ago, past the 5 s close timeout.
        flow(1, WEB_VIP, web, false, Some((fin, 6)), Some((fin, 6))),
        // Kept: established, idle 60 s of 100.
        flow(2, WEB_VIP, web, false, Some((est, 50)), Some((est, 60))),
        // Kept: the client went quiet long ago, the backend still streams.
        flow(3, DNS_VIP, dns, false, Some((0, 150)), Some((est, 1))),
        // Removed: UDP never answered, idle 11 s of 10.
        flow(4, DNS_VIP, dns, false, Some((0, 11)), Some((0, 11))),
        // Removed: source-NATed, handshake never completed, idle 21 s of 20.
        flow(5, WEB_VIP, web, true, Some((0, 21)), Some((0, 21))),
        // Orphans: a reset reply entry (removed), an established original
        // idle past its timeout (removed) and one within it (kept).
        flow(6, WEB_VIP, web, false, None, Some((rst, 6))),
        flow(7, WEB_VIP, web, false, Some((est, 101)), None),
        flow(8, WEB_VIP, web, false, Some((est, 10)), None),
    ];
    let now = clock_past(OLDEST_STAMP_S);
    let kept: Vec<CtKeyV4> = [1, 2, 7].iter().flat_map(|&i| flows[i].entries(now)).map(|(k, _)| k).collect();
    dp.insert_conntrack(flows.iter().flat_map(|f| f.entries(now))).expect("write entries");
    let live: Vec<CtKeyV4> = dp
        .conntrack()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.src_port == CLIENT.port || k.dst_port == CLIENT.port)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(live.len(), 2, "the real connection's entries");

    let timeouts = Timeouts { tcp_syn: 20, tcp_established: 100, tcp_close: 5, udp: 10, udp_stream: 30 };
    let backends = dp.backends().clone();
    let rules = Rules { timeouts: &timeouts, backend: &|id| backends.get(&id).copied(), now_s: now };
    let report = sweep::sweep(&mut dp.conntrack_map().unwrap(), &rules).expect("sweep");

    let removed =
        BTreeMap::from([(State::Syn, 2), (State::Established, 1), (State::Closing, 3), (State::Unreplied, 2)]);
    assert_eq!(report.removed, removed, "{report:?}");
    assert_eq!(report.orphans, 3, "{report:?}");
    assert_eq!(report.entries, 2 + 13);
    let mut left: Vec<CtKeyV4> = dp.conntrack().unwrap().into_iter().map(|(k, _)| k).collect();
    let mut expected: Vec<CtKeyV4> = live.into_iter().chain(kept).collect();
    left.sort();
    expected.sort();
    assert_eq!(left, expected);
    assert!(
        left.iter().any(|k| k.direction == DIR_REPLY && k.proto == proto::UDP),
        "the one-way stream keeps both entries"
    );
}
