//! IPv6 packets built with etherparse (checksums from scratch), and the
//! extension-header splicing the parser's policy is tested with.

use std::net::Ipv6Addr;

use etherparse::{Icmpv6Type, PacketBuilder};

use crate::packets::{CLIENT_MAC, NODE_MAC};

/// One end of an IPv6 flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint6 {
    pub ip: Ipv6Addr,
    pub port: u16,
}

pub const fn ep6(ip: Ipv6Addr, port: u16) -> Endpoint6 {
    Endpoint6 { ip, port }
}

pub const ETH_LEN: usize = 14;
pub const IPV6_LEN: usize = 40;
const NEXT_HEADER_OFF: usize = ETH_LEN + 6;
const PAYLOAD_LEN_OFF: usize = ETH_LEN + 4;
pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_DEST_OPTS: u8 = 60;
pub const NEXT_FRAGMENT: u8 = 44;

fn builder(src: Endpoint6, dst: Endpoint6) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv6(src.ip.octets(), dst.ip.octets(), 64)
}

/// A TCP segment (SYN or ACK) with a payload.
pub fn tcp(src: Endpoint6, dst: Endpoint6, syn: bool, payload: &[u8]) -> Vec<u8> {
    let builder = builder(src, dst).tcp(src.port, dst.port, 1000, 64240);
    let builder = if syn { builder.syn() } else { builder.ack(2000) };
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("build tcp");
    out
}

pub fn udp(src: Endpoint6, dst: Endpoint6, payload: &[u8]) -> Vec<u8> {
    let builder = builder(src, dst).udp(src.port, dst.port);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("build udp");
    out
}

/// A neighbour solicitation for `target`, as a node sends before it can
/// reach an address on its link.
pub fn neighbour_solicitation(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let builder = builder(ep6(src, 0), ep6(target, 0)).icmpv6(Icmpv6Type::Unknown {
        type_u8: 135,
        code_u8: 0,
        bytes5to8: [0; 4],
    });
    let body = target.octets();
    let mut out = Vec::with_capacity(builder.size(body.len()));
    builder.write(&mut out, &body).expect("build icmpv6");
    out
}

/// An ICMPv6 message of `kind` from `from` to `to` whose body is `quote`
/// (for an error: the packet it is about, from its IPv6 header on, as
/// much of it as the sender kept).
pub fn icmp6(from: Ipv6Addr, to: Ipv6Addr, kind: Icmpv6Type, quote: &[u8]) -> Vec<u8> {
    let builder = builder(ep6(from, 0), ep6(to, 0)).icmpv6(kind);
    let mut out = Vec::with_capacity(builder.size(quote.len()));
    builder.write(&mut out, quote).expect("build icmpv6");
    out
}

/// `packet` with extension headers inserted between the IPv6 header and
/// its payload: each `(next-header value, its length in bytes)` in
/// order, padded with zeros (a PadN-free options body; a fragment header
/// is 8 bytes of zero: offset 0, more fragments unset). The upper-layer
/// checksum does not cover extension headers, so it stays right.
pub fn with_extension_headers(packet: &[u8], headers: &[(u8, usize)]) -> Vec<u8> {
    let mut out = packet[..ETH_LEN + IPV6_LEN].to_vec();
    let upper = packet[NEXT_HEADER_OFF];
    let mut inserted = 0;
    for (i, &(kind, len)) in headers.iter().enumerate() {
        assert!(len % 8 == 0 && len >= 8, "extension headers are whole 8-byte units");
        let next = headers.get(i + 1).map_or(upper, |&(k, _)| k);
        let mut header = vec![0u8; len];
        header[0] = next;
        if kind != NEXT_FRAGMENT {
            header[1] = (len / 8 - 1) as u8;
        }
        out.extend_from_slice(&header);
        inserted += len;
    }
    if let Some(&(first, _)) = headers.first() {
        out[NEXT_HEADER_OFF] = first;
    }
    let payload_len = u16::from_be_bytes([packet[PAYLOAD_LEN_OFF], packet[PAYLOAD_LEN_OFF + 1]]) as usize + inserted;
    out[PAYLOAD_LEN_OFF..PAYLOAD_LEN_OFF + 2].copy_from_slice(&(payload_len as u16).to_be_bytes());
    out.extend_from_slice(&packet[ETH_LEN + IPV6_LEN..]);
    out
}

/// `packet` as forwarding sends it on: the given MACs, the hop limit
/// one lower (IPv6 has no header checksum to follow it).
pub fn routed(mut packet: Vec<u8>, destination_mac: [u8; 6], source_mac: [u8; 6]) -> Vec<u8> {
    packet[0..6].copy_from_slice(&destination_mac);
    packet[6..12].copy_from_slice(&source_mac);
    packet[ETH_LEN + 7] -= 1;
    packet
}

/// True when the packet's upper-layer checksum (TCP, UDP or ICMPv6 over
/// the IPv6 pseudo header) verifies when recomputed from scratch.
pub fn checksums_verify(packet: &[u8]) -> bool {
    let Ok(sliced) = etherparse::SlicedPacket::from_ethernet(packet) else {
        return false;
    };
    let Some(etherparse::NetSlice::Ipv6(ip)) = &sliced.net else {
        return false;
    };
    let header = ip.header().to_header();
    match &sliced.transport {
        Some(etherparse::TransportSlice::Tcp(tcp)) => {
            let h = tcp.to_header();
            h.calc_checksum_ipv6(&header, tcp.payload()).ok() == Some(h.checksum)
        }
        Some(etherparse::TransportSlice::Udp(udp)) => {
            let h = udp.to_header();
            h.calc_checksum_ipv6(&header, udp.payload()).ok() == Some(h.checksum)
        }
        Some(etherparse::TransportSlice::Icmpv6(icmp)) => {
            let h = icmp.header();
            h.icmp_type.calc_checksum(header.source, header.destination, icmp.payload()).ok() == Some(h.checksum)
        }
        _ => false,
    }
}
