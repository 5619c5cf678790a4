//! IPv6 + TCP/UDP parsing, with the policy `parse` states plus:
//! - Extension headers: hop-by-hop options, routing and destination
//!   options are walked, at most `IPV6_EXT_HEADERS_MAX` of them, each read
//!   only where it lies inside the packet. A packet whose TCP or UDP
//!   header is not found by then, or that carries AH or ESP (whose
//!   payload cannot be NATed), is passed untouched and counted
//!   (`pass_extension_headers`). Nothing is NATed unless its L4 header
//!   was found.
//! - A fragment header (any fragment, the first and atomic ones
//!   included): passed untouched (`pass_fragment`), as for IPv4.
//! - ICMPv6 (neighbour discovery, echo, errors) and other protocols:
//!   passed untouched.
//! - A payload length that disagrees with the packet: passed untouched
//!   (`pass_truncated`, `pass_malformed`); 0 only on a GSO packet (BIG
//!   TCP), as for IPv4.

use lb_common::{proto, stats::Counter};

use crate::{
    family::v6_from_words,
    frame::Frame,
    parse::{self, ETH_LEN, ETH_P_IPV6_BE, PacketV6},
};

pub const IPV6_HDR_LEN: usize = 40;
/// Extension headers walked before giving up on finding TCP or UDP: the
/// most a normal packet carries (hop-by-hop, destination options,
/// routing, destination options), and a bound the verifier can check.
pub const IPV6_EXT_HEADERS_MAX: usize = 4;

const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_ESP: u8 = 50;
const NEXT_AH: u8 = 51;
const NEXT_DEST_OPTS: u8 = 60;

/// Field offsets in the IPv6 header.
pub const PAYLOAD_LEN_OFF: usize = 4;
pub const NEXT_HEADER_OFF: usize = 6;
pub const SRC_OFF: usize = 8;
pub const DST_OFF: usize = 24;

/// The first 8 bytes of an IPv6 header: version, class, flow label,
/// payload length, next header, hop limit. Addresses are read apart.
type FixedStart = [u8; 8];

/// Parses the headers; `Err` carries the pass reason.
#[inline(always)]
pub fn parse_v6<C: Frame>(ctx: &C) -> Result<PacketV6, Counter> {
    parse::ether_type_is(ctx, ETH_P_IPV6_BE)?;
    let start: *const FixedStart = parse::ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let start = unsafe { &*start };
    if start[0] >> 4 != 6 {
        return Err(Counter::PassTruncated);
    }
    let (src, dst) = addresses(ctx)?;
    let (proto, l4_off) = find_l4(ctx, start[NEXT_HEADER_OFF])?;
    let payload_len = u16::from_be_bytes([start[PAYLOAD_LEN_OFF], start[PAYLOAD_LEN_OFF + 1]]);
    let ip_end = parse::length_field_end(ctx, payload_len, ETH_LEN + IPV6_HDR_LEN, l4_off)?;
    let (sport, dport, tcp_flags) = parse::l4_header(ctx, proto, l4_off, ip_end)?;
    Ok(PacketV6 {
        src,
        dst,
        sport,
        dport,
        proto,
        tcp_syn: parse::is_syn(tcp_flags),
        tcp_flags,
        l4_start: l4_off as u16,
        ip_total_len: (ip_end - ETH_LEN) as u16,
        dont_fragment: true,
    })
}

/// The source and destination addresses of an IPv6 frame.
///
/// Read as four 4-byte words each, as C reads a `struct in6_addr`: the
/// BPF target has no unaligned loads, and byte-wise reads (what an
/// unaligned read compiles to) cost sixteen loads and as many stack
/// slots an address. The verifier checks packet access for bounds, not
/// alignment, and the JITs of the machines the datapath runs on (x86-64,
/// arm64) load misaligned words.
#[inline(always)]
pub fn addresses<C: Frame>(ctx: &C) -> Result<(u128, u128), Counter> {
    let src: *const [u32; 4] = parse::ptr_at(ctx, ETH_LEN + SRC_OFF)?;
    let dst: *const [u32; 4] = parse::ptr_at(ctx, ETH_LEN + DST_OFF)?;
    // SAFETY: bounds checked by ptr_at; alignment: see above.
    let (src, dst) = unsafe { (*src, *dst) };
    Ok((v6_from_words(src), v6_from_words(dst)))
}

/// Walks the extension headers from `next` to TCP or UDP: its protocol
/// and offset in the frame.
#[inline(always)]
fn find_l4<C: Frame>(ctx: &C, mut next: u8) -> Result<(u8, usize), Counter> {
    let mut offset = ETH_LEN + IPV6_HDR_LEN;
    for _ in 0..IPV6_EXT_HEADERS_MAX {
        match next {
            proto::TCP | proto::UDP => return Ok((next, offset)),
            NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTS => {
                let header: *const [u8; 2] = parse::ptr_at(ctx, offset)?;
                // SAFETY: bounds checked by ptr_at.
                let header = unsafe { &*header };
                next = header[0];
                // Length in 8-byte units, not counting the first 8.
                offset += (usize::from(header[1]) + 1) * 8;
            }
            NEXT_FRAGMENT => return Err(Counter::PassFragment),
            NEXT_ESP | NEXT_AH => return Err(Counter::PassExtensionHeaders),
            _ => return Err(Counter::PassOtherProtocol),
        }
    }
    match next {
        proto::TCP | proto::UDP => Ok((next, offset)),
        _ => Err(Counter::PassExtensionHeaders),
    }
}

impl PacketV6 {
    /// Whether extension headers sit between the IPv6 header and TCP/UDP.
    #[inline(always)]
    pub fn has_extension_headers(&self) -> bool {
        self.l4_off() != ETH_LEN + IPV6_HDR_LEN
    }
}
