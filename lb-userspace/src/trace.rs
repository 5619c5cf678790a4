//! "Where would this packet go?": builds a hypothetical packet and runs it
//! through a datapath program (`lb_tc`, or `lb_xdp` as the interfaces
//! chosen for XDP run it) with BPF_PROG_TEST_RUN, against the maps the
//! agent pinned (the live Service table, conntrack and counters).
//!
//! The run is real: a new flow creates conntrack entries and moves a
//! packet counter, as the same packet arriving on an interface would.
//! [`trace`] removes the conntrack entries it created unless asked to
//! keep them; the counter it moved stays moved.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{Context as _, bail};
use aya::{
    Pod,
    maps::{HashMap, Map, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use lb_common::{
    conntrack::{CtKeyV4, CtKeyV6, CtValueV4, CtValueV6, DIR_ORIGINAL, DIR_REPLY},
    maps as names,
};
use serde::Serialize;

use crate::{
    datapath::{loader, maps},
    model::Protocol,
};

/// tc verdicts the program returns (linux/pkt_cls.h).
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
/// `struct __sk_buff`: its size, and where `ifindex` sits in it (the
/// only field a trace sets; the kernel wants the others zero).
const SK_BUFF_SIZE: usize = 192;
const SK_BUFF_IFINDEX: usize = 40;
/// XDP verdicts (linux/bpf.h).
const XDP_ABORTED: i32 = 0;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;
const XDP_REDIRECT: i32 = 4;

/// The program a probe runs through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// `lb_tc`, at tc ingress of every selected interface.
    #[default]
    Tc,
    /// `lb_xdp`, on the interfaces chosen for XDP: what it cannot finish
    /// it passes on to tc (verdict `pass`, counter `xdp_pass_to_tc`).
    Xdp,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Tc => "tc",
            Hook::Xdp => "xdp",
        }
    }
}

/// The hypothetical packet: IPv4 or IPv6, both ends of one family.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: Protocol,
    /// TCP: a SYN (a new connection) rather than an ACK.
    pub syn: bool,
    /// The interface it arrives on (rejects are sent back out of it);
    /// `None`: the kernel's default for test runs (loopback).
    pub ifindex: Option<u32>,
    pub hook: Hook,
}

/// Addresses and ports of a packet, as it went in or came out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Header {
    pub proto: String,
    pub src: String,
    pub dst: String,
    /// ICMP: type and code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<(u8, u8)>,
}

/// What the datapath did with the packet.
#[derive(Clone, Debug, Serialize)]
pub struct Trace {
    pub hook: Hook,
    /// tc: `pass` (left to the kernel's stack), `drop`, `redirect`, `ok`;
    /// XDP: `pass` (on to tc and the stack), `drop`, `tx` (back out of the
    /// interface it came in on), `redirect`, `aborted`; or the raw code.
    pub verdict: String,
    pub input: Header,
    pub output: Option<Header>,
    /// Counters that moved during the run, with how much.
    pub counters: Vec<(String, u64)>,
    /// Conntrack entries the run created (and, unless kept, removed again).
    pub conntrack_created: usize,
    pub conntrack_removed: bool,
}

pub fn verdict_name(hook: Hook, code: i32) -> String {
    let name = match (hook, code) {
        (Hook::Tc, TC_ACT_UNSPEC) => "pass",
        (Hook::Tc, TC_ACT_OK) => "ok",
        (Hook::Tc, TC_ACT_SHOT) => "drop",
        (Hook::Tc, TC_ACT_REDIRECT) => "redirect",
        (Hook::Xdp, XDP_ABORTED) => "aborted",
        (Hook::Xdp, XDP_DROP) => "drop",
        (Hook::Xdp, XDP_PASS) => "pass",
        (Hook::Xdp, XDP_TX) => "tx",
        (Hook::Xdp, XDP_REDIRECT) => "redirect",
        _ => return code.to_string(),
    };
    name.into()
}

/// The context of a test run: `__sk_buff` for tc, `xdp_md` for XDP, with
/// the interface the probe arrives on; `None`: the kernel's default.
fn run_context(probe: &Probe, frame_len: usize) -> Option<Vec<u8>> {
    let ifindex = probe.ifindex?;
    Some(match probe.hook {
        Hook::Tc => {
            let mut ctx = vec![0u8; SK_BUFF_SIZE];
            ctx[SK_BUFF_IFINDEX..SK_BUFF_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
            ctx
        }
        Hook::Xdp => xdp_md(frame_len, ifindex),
    })
}

/// A `struct xdp_md` for a test run of a `len`-byte frame received on
/// interface `ingress`: data at 0, data_end at `len`, no metadata, queue 0.
pub fn xdp_md(len: usize, ingress: u32) -> Vec<u8> {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    [0, len as u32, 0, ingress, 0, 0].iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Builds the probe's Ethernet frame.
pub fn build(probe: &Probe) -> anyhow::Result<Vec<u8>> {
    let ethernet = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]);
    let ip = match (probe.src.ip(), probe.dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => ethernet.ipv4(src.octets(), dst.octets(), 64),
        (IpAddr::V6(src), IpAddr::V6(dst)) => ethernet.ipv6(src.octets(), dst.octets(), 64),
        _ => bail!("source {} and destination {} are of different families", probe.src, probe.dst),
    };
    let mut out = Vec::new();
    match probe.proto {
        Protocol::Tcp => {
            let tcp = ip.tcp(probe.src.port(), probe.dst.port(), 1000, 64240);
            let tcp = if probe.syn { tcp.syn() } else { tcp.ack(1) };
            tcp.write(&mut out, &[])?;
        }
        Protocol::Udp => ip.udp(probe.src.port(), probe.dst.port()).write(&mut out, b"lbctl trace")?,
        other => bail!("cannot trace {other}: only TCP and UDP"),
    }
    Ok(out)
}

/// Reads addresses and ports back from a frame.
pub fn header(frame: &[u8]) -> Option<Header> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        Some(NetSlice::Ipv6(ip)) => (ip.header().source_addr().into(), ip.header().destination_addr().into()),
        _ => return None,
    };
    let with_port = |ip: IpAddr, port: u16| SocketAddr::new(ip, port).to_string();
    Some(match packet.transport {
        Some(TransportSlice::Tcp(t)) => Header {
            proto: "TCP".into(),
            src: with_port(src, t.source_port()),
            dst: with_port(dst, t.destination_port()),
            icmp: None,
        },
        Some(TransportSlice::Udp(u)) => Header {
            proto: "UDP".into(),
            src: with_port(src, u.source_port()),
            dst: with_port(dst, u.destination_port()),
            icmp: None,
        },
        Some(TransportSlice::Icmpv4(i)) => Header {
            proto: "ICMP".into(),
            src: src.to_string(),
            dst: dst.to_string(),
            icmp: Some((i.type_u8(), i.code_u8())),
        },
        Some(TransportSlice::Icmpv6(i)) => Header {
            proto: "ICMPv6".into(),
            src: src.to_string(),
            dst: dst.to_string(),
            icmp: Some((i.type_u8(), i.code_u8())),
        },
        _ => Header { proto: "other".into(), src: src.to_string(), dst: dst.to_string(), icmp: None },
    })
}

fn pinned(pin_dir: &Path, name: &str) -> anyhow::Result<MapData> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path)
        .with_context(|| format!("opening {} (is the agent running with this --pin-dir?)", path.display()))
}

/// The capacities the agent gave its maps: loading with others would not
/// match the pinned maps.
fn pinned_capacities(pin_dir: &Path) -> anyhow::Result<loader::Capacities> {
    let max = |name| -> anyhow::Result<u32> { Ok(pinned(pin_dir, name)?.info()?.max_entries()) };
    Ok(loader::Capacities {
        services: max(names::SERVICES_V4)?,
        backends: max(names::BACKENDS_V4)?,
        conntrack: max(names::CONNTRACK_V4)?,
        conntrack_v6: max(names::CONNTRACK_V6)?,
        maglev: max(names::MAGLEV_V4)?,
        affinity: max(names::AFFINITY_V4)?,
    })
}

/// A conntrack key of the probe's family; `None` for an address of the
/// other family.
type KeyOf<K> = fn(SocketAddr, SocketAddr, u8, u8) -> Option<K>;

fn ct_key_v4(src: SocketAddr, dst: SocketAddr, proto: u8, direction: u8) -> Option<CtKeyV4> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else { return None };
    Some(CtKeyV4 {
        src_address: src.ip().octets(),
        dst_address: dst.ip().octets(),
        src_port: src.port(),
        dst_port: dst.port(),
        proto,
        direction,
        _pad: [0; 2],
    })
}

fn ct_key_v6(src: SocketAddr, dst: SocketAddr, proto: u8, direction: u8) -> Option<CtKeyV6> {
    let (SocketAddr::V6(src), SocketAddr::V6(dst)) = (src, dst) else { return None };
    Some(CtKeyV6 {
        src_address: src.ip().octets(),
        dst_address: dst.ip().octets(),
        src_port: src.port(),
        dst_port: dst.port(),
        proto,
        direction,
        _pad: [0; 2],
    })
}

/// Runs the probe through its hook's program with the maps pinned in `pin_dir`.
/// Unless `keep_conntrack`, conntrack entries the run created are removed.
pub fn trace(pin_dir: &Path, probe: &Probe, keep_conntrack: bool) -> anyhow::Result<Trace> {
    match probe.src {
        SocketAddr::V4(_) => {
            trace_in::<CtKeyV4, CtValueV4>(pin_dir, probe, keep_conntrack, names::CONNTRACK_V4, ct_key_v4)
        }
        SocketAddr::V6(_) => {
            trace_in::<CtKeyV6, CtValueV6>(pin_dir, probe, keep_conntrack, names::CONNTRACK_V6, ct_key_v6)
        }
    }
}

/// `trace`, with the conntrack table of the probe's family.
fn trace_in<K: Pod, V: Pod + PartialEq>(
    pin_dir: &Path,
    probe: &Probe,
    keep_conntrack: bool,
    conntrack_map: &str,
    key: KeyOf<K>,
) -> anyhow::Result<Trace> {
    let frame = build(probe)?;
    let capacities = pinned_capacities(pin_dir)?;
    let mut conntrack: HashMap<MapData, K, V> =
        Map::from_map_data(pinned(pin_dir, conntrack_map)?)?.try_into().context(conntrack_map.to_owned())?;
    let proto = probe.proto.number();
    let original = key(probe.src, probe.dst, proto, DIR_ORIGINAL).context("the probe's family")?;
    let had_original = conntrack.get(&original, 0).is_ok();

    // Every map re-opened from its pin: the program sees the live tables.
    let mut ebpf = loader::load(Some(pin_dir), capacities)?;
    let before = maps::counters(pin_dir)?;
    let ctx = run_context(probe, frame.len());
    let mut out = vec![0u8; frame.len() + 256];
    let options = TestRunOptions {
        data_in: Some(&frame),
        data_out: Some(&mut out),
        ctx_in: ctx.as_deref(),
        repeat: 1,
        ..Default::default()
    };
    let result = match probe.hook {
        Hook::Tc => loader::program(&mut ebpf, loader::TC_PROGRAM)?.test_run(options),
        Hook::Xdp => loader::xdp_program(&mut ebpf)?.test_run(options),
    }
    .context("BPF_PROG_TEST_RUN")?;
    out.truncate(result.data_size_out as usize);
    let after = maps::counters(pin_dir)?;
    let counters = before
        .iter()
        .zip(&after)
        .filter(|((_, b), (_, a))| a > b)
        .map(|((c, b), (_, a))| (c.name().to_owned(), a - b))
        .collect();

    let output = header(&out);
    let mut created = Vec::new();
    if !had_original && let Ok(value) = conntrack.get(&original, 0) {
        created.push(original);
        // Replies come from the backend to the packet's source as sent,
        // the node's own address when source-NATed. A source-NAT port is
        // only chosen where no reply entry exists, so one there now is
        // this run's; otherwise it must be the original's twin.
        let sent = output.as_ref().and_then(|h| Some((h.dst.parse::<SocketAddr>().ok()?, h.src.parse().ok()?)));
        let snat = sent.is_some_and(|(_, source)| source != probe.src);
        if let Some(reply) = sent.and_then(|(backend, source)| key(backend, source, proto, DIR_REPLY))
            && conntrack.get(&reply, 0).is_ok_and(|v| snat || v == value)
        {
            created.push(reply);
        }
    }
    if !keep_conntrack {
        for key in &created {
            conntrack.remove(key).context("removing the trace's conntrack entry")?;
        }
    }
    Ok(Trace {
        hook: probe.hook,
        verdict: verdict_name(probe.hook, result.return_value as i32),
        input: header(&frame).context("the probe does not parse")?,
        output,
        counters,
        conntrack_created: created.len(),
        conntrack_removed: !keep_conntrack && !created.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(proto: Protocol, syn: bool) -> Probe {
        Probe {
            src: "10.0.1.2:40000".parse().unwrap(),
            dst: "10.96.0.10:80".parse().unwrap(),
            proto,
            syn,
            ifindex: None,
            hook: Hook::Tc,
        }
    }

    #[test]
    fn a_built_probe_reads_back_as_itself() {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let header = header(&build(&probe(proto, true)).unwrap()).unwrap();
            assert_eq!(header.proto, proto.as_str());
            assert_eq!((header.src.as_str(), header.dst.as_str()), ("10.0.1.2:40000", "10.96.0.10:80"));
        }
    }

    #[test]
    fn an_ipv6_probe_reads_back_as_itself_and_mixed_families_are_refused() {
        let v6 = Probe {
            src: "[fd00:1::2]:40000".parse().unwrap(),
            dst: "[fd00:96::10]:80".parse().unwrap(),
            ..probe(Protocol::Udp, false)
        };
        let header = header(&build(&v6).unwrap()).unwrap();
        assert_eq!((header.src.as_str(), header.dst.as_str()), ("[fd00:1::2]:40000", "[fd00:96::10]:80"));
        let mixed = Probe { dst: "10.96.0.10:80".parse().unwrap(), ..v6 };
        assert!(build(&mixed).is_err());
    }

    #[test]
    fn syn_flag_follows_the_probe() {
        let syn = |frame: Vec<u8>| match SlicedPacket::from_ethernet(&frame).unwrap().transport {
            Some(TransportSlice::Tcp(t)) => t.syn(),
            _ => panic!("not TCP"),
        };
        assert!(syn(build(&probe(Protocol::Tcp, true)).unwrap()));
        assert!(!syn(build(&probe(Protocol::Tcp, false)).unwrap()));
        assert!(build(&probe(Protocol::Sctp, false)).is_err(), "SCTP cannot be traced yet");
    }

    #[test]
    fn verdicts_are_named() {
        assert_eq!(verdict_name(Hook::Tc, -1), "pass");
        assert_eq!(verdict_name(Hook::Tc, 2), "drop");
        assert_eq!(verdict_name(Hook::Tc, 7), "redirect");
        assert_eq!(verdict_name(Hook::Tc, 42), "42");
        assert_eq!(verdict_name(Hook::Xdp, 2), "pass");
        assert_eq!(verdict_name(Hook::Xdp, 3), "tx");
        assert_eq!(verdict_name(Hook::Xdp, 7), "7");
    }
}
