//! Packets built with etherparse, which computes every checksum from
//! scratch: an expected packet built here is the reference a rewritten
//! packet must equal byte for byte.

use std::net::Ipv4Addr;

use etherparse::{Icmpv4Type, IpNumber, Ipv4Header, Ipv4Options, PacketBuilder, icmpv4::DestUnreachableHeader};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// One end of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

pub const fn ep(ip: [u8; 4], port: u16) -> Endpoint {
    Endpoint { ip: Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]), port }
}

fn ip_builder(src: Endpoint, dst: Endpoint) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(src.ip.octets(), dst.ip.octets(), 64)
}

/// A TCP SYN with a few payload-free options-less bytes.
pub fn tcp_syn(src: Endpoint, dst: Endpoint) -> Vec<u8> {
    tcp(src, dst, true, &[])
}

/// A TCP segment (SYN or ACK) with a payload.
pub fn tcp(src: Endpoint, dst: Endpoint, syn: bool, payload: &[u8]) -> Vec<u8> {
    let builder = ip_builder(src, dst).tcp(src.port, dst.port, 1000, 64240);
    let builder = if syn { builder.syn() } else { builder.ack(2000) };
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("build tcp");
    out
}

/// TCP control bits for [`tcp_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// A payload-free TCP segment with exactly these control bits.
pub fn tcp_with(src: Endpoint, dst: Endpoint, flags: TcpFlags) -> Vec<u8> {
    let mut builder = ip_builder(src, dst).tcp(src.port, dst.port, 1000, 64240);
    if flags.syn {
        builder = builder.syn();
    }
    if flags.ack {
        builder = builder.ack(2000);
    }
    if flags.fin {
        builder = builder.fin();
    }
    if flags.rst {
        builder = builder.rst();
    }
    let mut out = Vec::with_capacity(builder.size(0));
    builder.write(&mut out, &[]).expect("build tcp");
    out
}

pub fn udp(src: Endpoint, dst: Endpoint, payload: &[u8]) -> Vec<u8> {
    let builder = ip_builder(src, dst).udp(src.port, dst.port);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("build udp");
    out
}

/// A UDP datagram whose checksum field is 0 ("no checksum", legal in IPv4).
pub fn udp_without_checksum(src: Endpoint, dst: Endpoint, payload: &[u8]) -> Vec<u8> {
    let mut out = udp(src, dst, payload);
    let csum = 14 + 20 + 6;
    out[csum..csum + 2].copy_from_slice(&[0, 0]);
    out
}

/// A TCP SYN whose IPv4 header carries options (IHL > 5): a record-route
/// style option padded to 8 bytes.
pub fn tcp_syn_with_ip_options(src: Endpoint, dst: Endpoint) -> Vec<u8> {
    let mut ip = Ipv4Header::new(20, 64, IpNumber::TCP, src.ip.octets(), dst.ip.octets()).expect("ip header");
    ip.options = Ipv4Options::try_from(&[0x07, 0x07, 0x04, 0, 0, 0, 0, 0x01][..]).expect("options");
    let builder =
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ip(etherparse::IpHeaders::Ipv4(ip, Default::default()));
    let builder = builder.tcp(src.port, dst.port, 1000, 64240).syn();
    let mut out = Vec::new();
    builder.write(&mut out, &[]).expect("build");
    out
}

/// The same packet as a non-first IPv4 fragment (offset set).
pub fn as_fragment(mut packet: Vec<u8>) -> Vec<u8> {
    // Flags/offset: offset 8 units (64 bytes); fix the header checksum.
    packet[14 + 6..14 + 8].copy_from_slice(&8u16.to_be_bytes());
    refresh_ip_checksum(&mut packet);
    packet
}

fn refresh_ip_checksum(packet: &mut [u8]) {
    let ihl = usize::from(packet[14] & 0x0f) * 4;
    packet[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let header = Ipv4Header::from_slice(&packet[14..14 + ihl]).expect("ip header").0;
    let csum = header.calc_header_checksum();
    packet[14 + 10..14 + 12].copy_from_slice(&csum.to_be_bytes());
}

/// ICMP port unreachable from `from` to the sender of `original`, quoting
/// its IP header and first 8 payload bytes, with the Ethernet addresses
/// swapped: what a kube-proxy-style reject sends back.
pub fn icmp_port_unreachable(original: &[u8], from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    icmp_unreachable_reply(original, from, to, DestUnreachableHeader::Port)
}

/// ICMP destination unreachable (`header` names the code) from `from` to
/// the sender of `original`, quoting its IP header and first 8 payload
/// bytes, with the Ethernet addresses swapped.
pub fn icmp_unreachable_reply(original: &[u8], from: Ipv4Addr, to: Ipv4Addr, header: DestUnreachableHeader) -> Vec<u8> {
    let towards_node = icmp_error(from, to, Icmpv4Type::DestinationUnreachable(header), quote(original, 8));
    // Ethernet destination first: back to the client, from the node.
    [&CLIENT_MAC[..], &NODE_MAC[..], &towards_node[12..]].concat()
}

/// An ICMP error (`kind`) from `from` to `to` carrying `quote`, as a
/// router or host sends it (TTL 64, DF set).
pub fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, kind: Icmpv4Type, quote: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(from.octets(), to.octets(), 64).icmpv4(kind);
    let mut out = Vec::new();
    builder.write(&mut out, quote).expect("build icmp");
    out
}

/// What an ICMP error quotes of `packet`: its IPv4 header (no options)
/// and the first `l4_bytes` bytes after it.
pub fn quote(packet: &[u8], l4_bytes: usize) -> &[u8] {
    &packet[14..(14 + 20 + l4_bytes).min(packet.len())]
}

/// An ICMP echo request from `from` to `to`.
pub fn icmp_echo(from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let builder =
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(from.octets(), to.octets(), 64).icmpv4_echo_request(7, 1);
    let mut out = Vec::new();
    builder.write(&mut out, b"ping").expect("build echo");
    out
}

/// The same packet with DF cleared (the IPv4 header checksum refreshed).
pub fn without_dont_fragment(mut packet: Vec<u8>) -> Vec<u8> {
    packet[14 + 6] &= !0x40;
    refresh_ip_checksum(&mut packet);
    packet
}

/// `packet` as a router sends it on: new Ethernet addresses, TTL one less,
/// IPv4 header checksum computed from scratch.
pub fn routed(mut packet: Vec<u8>, destination_mac: [u8; 6], source_mac: [u8; 6]) -> Vec<u8> {
    packet[0..6].copy_from_slice(&destination_mac);
    packet[6..12].copy_from_slice(&source_mac);
    let (mut header, _) = Ipv4Header::from_slice(&packet[14..]).expect("an IPv4 packet");
    header.time_to_live -= 1;
    header.header_checksum = header.calc_header_checksum();
    let bytes = header.to_bytes();
    packet[14..14 + bytes.len()].copy_from_slice(&bytes);
    packet
}

/// True when every checksum in the packet (IPv4 header, TCP/UDP over the
/// pseudo header, ICMP) verifies when recomputed from scratch.
pub fn checksums_verify(packet: &[u8]) -> bool {
    let Ok(sliced) = etherparse::SlicedPacket::from_ethernet(packet) else {
        return false;
    };
    let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
        return false;
    };
    let header = ip.header().to_header();
    if header.calc_header_checksum() != header.header_checksum {
        return false;
    }
    let payload = ip.payload().payload;
    match &sliced.transport {
        Some(etherparse::TransportSlice::Tcp(tcp)) => {
            let h = tcp.to_header();
            h.calc_checksum_ipv4(&header, tcp.payload()).ok() == Some(h.checksum)
        }
        Some(etherparse::TransportSlice::Udp(udp)) => {
            let h = udp.to_header();
            h.checksum == 0 || h.calc_checksum_ipv4(&header, udp.payload()).ok() == Some(h.checksum)
        }
        Some(etherparse::TransportSlice::Icmpv4(icmp)) => {
            let h = icmp.header();
            h.icmp_type.calc_checksum(icmp.payload()) == h.checksum
        }
        _ => !payload.is_empty(),
    }
}
