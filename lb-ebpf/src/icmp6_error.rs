//! ICMPv6 errors about NATed flows, translated back as `icmp_error` does
//! for IPv4 (the same conntrack lookups and the same rules for who the
//! error is for: `icmp_error::translation`). Without it, a packet too big
//! from a router on a backend's path would never reach the client it is
//! about, and IPv6 routers do not fragment: path MTU discovery through a
//! Service would stall the connection.
//!
//! Policy, stated once:
//! - Translated: destination unreachable (type 1, every code), packet too
//!   big (2) and time exceeded (3). Every other ICMPv6 message (neighbour
//!   discovery, echo, parameter problem, ...) passes untouched
//!   (`pass_other_protocol`).
//! - The ICMPv6 header must follow the IPv6 header directly; one after
//!   extension headers passes untouched (`pass_other_protocol`).
//! - The quote must hold the quoted IPv6 header and the first 8 bytes of
//!   TCP or UDP right after it, inside the outer packet; else the error
//!   passes untouched (`pass_icmp_error_truncated`). A quote with
//!   extension headers (a fragment included) or of another protocol, or
//!   one that names no tracked flow, passes untouched
//!   (`pass_icmp_error_untracked`). Nothing is created or refreshed in
//!   conntrack.
//! - Checksums: see `icmp_nat`. The translated error is sent on by `route`.

use aya_ebpf::programs::TcContext;
use lb_common::{proto, stats::Counter};

use crate::{
    config,
    family::V6,
    icmp_error::{self, load},
    icmp_nat::{self, IcmpError, Quote, Translation},
    parse::{self, ETH_LEN},
    parse6::{self, DST_OFF, IPV6_HDR_LEN, NEXT_HEADER_OFF, PAYLOAD_LEN_OFF, SRC_OFF},
    route::{self, Flow},
    verdict::{Outcome, PathResult, Verdict},
};

const NEXT_ICMPV6: u8 = 58;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_HDR_LEN: usize = 8;
/// Bytes of the quote's L4 header needed: its ports, and UDP's checksum.
const QUOTED_L4_LEN: usize = 8;

/// An IPv6 packet the parser passed as `pass_other_protocol`: translated
/// if it is an ICMPv6 error about a NATed flow, else passed with the
/// reason the policy names. A call of its own: its frame is not on the
/// path of every IPv6 packet.
#[inline(never)]
pub fn handle(ctx: &TcContext) -> Outcome {
    let err = match parse(ctx) {
        Ok(err) => err,
        Err(pass_reason) => return Outcome::next(pass_reason),
    };
    let Some(translation) = icmp_error::translation::<V6>(&err) else {
        return Outcome::next(Counter::PassIcmpErrorUntracked);
    };
    match send_translated(ctx, &err, &translation) {
        Ok(outcome) => outcome,
        Err(drop_reason) => Outcome::drop(drop_reason),
    }
}

#[inline(always)]
fn send_translated(ctx: &TcContext, err: &IcmpError<V6>, t: &Translation<V6>) -> PathResult<Outcome> {
    icmp_nat::rewrite_v6(ctx, err, t)?;
    // Under --forward-through-stack every translated IPv6 packet takes the
    // forward path, which has no martian check.
    if config::forward_through_stack() {
        return Ok(Outcome { verdict: Verdict::Next, counter: Counter::IcmpErrorNat });
    }
    let flow = Flow::<V6> { src: t.outer_src, dst: t.outer_dst, sport: 0, dport: 0, proto: NEXT_ICMPV6 };
    let verdict = route::forward(ctx, &flow, err.ip_total_len)?;
    Ok(Outcome { verdict, counter: Counter::IcmpErrorNat })
}

/// Finds the ICMPv6 error and its quote; `Err` carries the pass reason.
/// The quote is copied out by the kernel's helper, as for IPv4.
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<IcmpError<V6>, Counter> {
    let start: *const [u8; 8] = parse::ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let start = unsafe { &*start };
    if start[NEXT_HEADER_OFF] != NEXT_ICMPV6 {
        return Err(Counter::PassOtherProtocol);
    }
    let icmp_off = ETH_LEN + IPV6_HDR_LEN;
    let [icmp_type, _code] = load::<[u8; 2]>(ctx, icmp_off)?;
    if icmp_type != ICMPV6_DEST_UNREACH && icmp_type != ICMPV6_PACKET_TOO_BIG && icmp_type != ICMPV6_TIME_EXCEEDED {
        return Err(Counter::PassOtherProtocol);
    }
    let payload_len = u16::from_be_bytes([start[PAYLOAD_LEN_OFF], start[PAYLOAD_LEN_OFF + 1]]);
    let ip_end =
        parse::length_field_end(ctx, payload_len, icmp_off, icmp_off).map_err(|_| Counter::PassIcmpErrorTruncated)?;
    let (outer_src, outer_dst) = parse6::addresses(ctx)?;
    let quote = parse_quote(ctx, icmp_off + ICMPV6_HDR_LEN, ip_end)?;
    Ok(IcmpError { outer_src, outer_dst, ip_total_len: (ip_end - ETH_LEN) as u16, icmp_off, quote })
}

/// The quoted IPv6 header at `ip_off` and the ports right after it, all
/// before `ip_end`; `Err` carries the pass reason.
#[inline(always)]
fn parse_quote(ctx: &TcContext, ip_off: usize, ip_end: usize) -> Result<Quote<V6>, Counter> {
    let l4_off = ip_off + IPV6_HDR_LEN;
    if l4_off + QUOTED_L4_LEN > ip_end {
        return Err(Counter::PassIcmpErrorTruncated);
    }
    let start = load::<[u8; 8]>(ctx, ip_off)?;
    if start[0] >> 4 != 6 {
        return Err(Counter::PassIcmpErrorTruncated);
    }
    let proto = start[NEXT_HEADER_OFF];
    if proto != proto::TCP && proto != proto::UDP {
        return Err(Counter::PassIcmpErrorUntracked);
    }
    let src = u128::from_ne_bytes(load::<[u8; 16]>(ctx, ip_off + SRC_OFF)?);
    let dst = u128::from_ne_bytes(load::<[u8; 16]>(ctx, ip_off + DST_OFF)?);
    let ports = load::<[u8; 4]>(ctx, l4_off)?;
    Ok(Quote {
        ip_off,
        l4_off,
        l4_csum_off: icmp_nat::quoted_l4_csum_off(proto, l4_off, ip_end),
        src,
        dst,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        proto,
    })
}
