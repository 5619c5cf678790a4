//! ICMP errors about NATed flows, translated back the way the kernel's NAT
//! does (`nf_nat_icmp_reply_translation`). An error about a NATed flow
//! quotes the packet as this node sent it on (client → backend, or
//! frontend → client); unchanged, it matches no socket of the host it is
//! for, so path MTU discovery through a Service and a UDP client's
//! port unreachable would be lost.
//!
//! Policy, stated once:
//! - Translated: destination unreachable (type 3, every code: port
//!   unreachable, fragmentation needed, ...) and time exceeded (type 11).
//!   Every other ICMP message (echo, redirect, parameter problem, ...)
//!   passes untouched (`pass_other_protocol`).
//! - The quote must hold an IPv4 header (options allowed) and the first
//!   8 bytes after it, inside the outer datagram; else the
//!   error passes untouched (`pass_icmp_error_truncated`). A quote that
//!   is not TCP or UDP, is a non-first fragment or names no tracked flow
//!   passes untouched (`pass_icmp_error_untracked`). Nothing is created or
//!   refreshed in conntrack: an error is not traffic of the flow.
//! - Which flow, by the quoted tuple reversed:
//!   - a reply-direction key: the quote is client → backend (node →
//!     backend when SNATed), so the error comes from the backend or a
//!     router on its path and goes to the client (or the node). The quote
//!     becomes client → frontend again; the outer source becomes the
//!     frontend, and for an SNATed flow the outer destination the client.
//!   - an original-direction key: the quote is frontend → client (a reply
//!     after reverse NAT), so the error comes from the client or a router
//!     on its path and goes to the frontend. The quote becomes backend →
//!     client (→ node when SNATed); the outer destination becomes the
//!     backend, and for an SNATed flow the outer source the node address.
//! - Checksums: see `icmp_nat`. The translated error is sent on by `route`,
//!   or under `--forward-through-stack` handed to the stack's forward path
//!   as the flow's other packets are (but for one whose source is the
//!   node's own address, which that path would drop as a martian).

use aya_ebpf::programs::TcContext;
use lb_common::{
    conntrack::{DIR_ORIGINAL, DIR_REPLY, FLAG_LOCAL_FRONTEND},
    proto,
    stats::Counter,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    config, conntrack,
    family::{Backend, CtEntry, Family, V4},
    icmp_nat::{self, IcmpError, Quote, Translation},
    parse::{self, ETH_LEN, IP_MF_AND_OFFSET, IPV4_MIN_LEN},
    route::{self, Flow},
    service,
    verdict::{Outcome, PathResult, Verdict},
};

const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_HDR_LEN: usize = 8;
/// Bytes of the quote's L4 header an error carries at least (RFC 792).
const QUOTED_L4_LEN: usize = 8;

/// An IPv4 packet that is not TCP or UDP (the parser's pass reason
/// `pass_other_protocol`): translated if it is an ICMP error about a
/// NATed flow, else passed with the reason the policy names.
#[inline(always)]
pub fn handle(ctx: &TcContext) -> Outcome {
    let err = match parse(ctx) {
        Ok(err) => err,
        Err(pass_reason) => return Outcome::next(pass_reason),
    };
    let Some(translation) = translation(&err) else {
        return Outcome::next(Counter::PassIcmpErrorUntracked);
    };
    match send_translated(ctx, &err, &translation) {
        Ok(outcome) => outcome,
        Err(drop_reason) => Outcome::drop(drop_reason),
    }
}

#[inline(always)]
fn send_translated(ctx: &TcContext, err: &IcmpError<V4>, t: &Translation<V4>) -> PathResult<Outcome> {
    icmp_nat::rewrite(ctx, err, t)?;
    // Under --forward-through-stack an error takes the forward path as the
    // flow's other packets do, unless that path would drop it as a martian.
    if config::forward_through_stack() && !t.outer_src_local {
        return Ok(Outcome { verdict: Verdict::Next, counter: Counter::IcmpErrorNat });
    }
    let flow = Flow::<V4> { src: t.outer_src, dst: t.outer_dst, sport: 0, dport: 0, proto: IPPROTO_ICMP };
    let verdict = route::forward(ctx, &flow, err.ip_total_len)?;
    Ok(Outcome { verdict, counter: Counter::IcmpErrorNat })
}

/// Finds the ICMP error and its quote; `Err` carries the pass reason.
/// Past the outer header, bytes are copied out by the kernel's helper:
/// offsets that depend on two header lengths are beyond what the
/// verifier follows for direct access, and the helper also reads a quote
/// outside the linear data.
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<IcmpError<V4>, Counter> {
    let ip: *const Ipv4Hdr = parse::ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.proto as u8 != IPPROTO_ICMP {
        return Err(Counter::PassOtherProtocol);
    }
    // The parser checked version and IHL before it named the protocol.
    let icmp_off = ETH_LEN + usize::from(ip.vihl & 0x0f) * 4;
    let [icmp_type, _code] = load::<[u8; 2]>(ctx, icmp_off)?;
    if icmp_type != ICMP_DEST_UNREACH && icmp_type != ICMP_TIME_EXCEEDED {
        return Err(Counter::PassOtherProtocol);
    }
    let ip_total_len = u16::from_be_bytes(ip.tot_len);
    let ip_end = parse::datagram_end(ctx, ip_total_len, icmp_off).map_err(|_| Counter::PassIcmpErrorTruncated)?;
    let quote = parse_quote(ctx, icmp_off + ICMP_HDR_LEN, ip_end)?;
    Ok(IcmpError { outer_src: ip.src_addr, outer_dst: ip.dst_addr, ip_total_len, icmp_off, quote })
}

/// Copies a `T` out of the packet; a packet too short for it is a
/// truncated quote.
#[inline(always)]
pub fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, Counter> {
    ctx.load::<T>(offset).map_err(|_| Counter::PassIcmpErrorTruncated)
}

/// The quoted IPv4 header at `ip_off` and the ports after it, all before
/// `ip_end`; `Err` carries the pass reason.
#[inline(always)]
fn parse_quote(ctx: &TcContext, ip_off: usize, ip_end: usize) -> Result<Quote<V4>, Counter> {
    if ip_off + IPV4_MIN_LEN > ip_end {
        return Err(Counter::PassIcmpErrorTruncated);
    }
    let ip = load::<Ipv4Hdr>(ctx, ip_off)?;
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ip.vihl >> 4 != 4 || ihl < IPV4_MIN_LEN {
        return Err(Counter::PassIcmpErrorTruncated);
    }
    let l4_off = ip_off + ihl;
    if l4_off + QUOTED_L4_LEN > ip_end {
        return Err(Counter::PassIcmpErrorTruncated);
    }
    let proto = ip.proto as u8;
    if (proto != proto::TCP && proto != proto::UDP) || u16::from_be_bytes(ip.frags) & IP_MF_AND_OFFSET != 0 {
        return Err(Counter::PassIcmpErrorUntracked);
    }
    let ports = load::<[u8; 4]>(ctx, l4_off)?;
    Ok(Quote {
        ip_off,
        l4_off,
        l4_csum_off: icmp_nat::quoted_l4_csum_off(proto, l4_off, ip_end),
        src: ip.src_addr,
        dst: ip.dst_addr,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        proto,
    })
}

/// What the error becomes, from the flow its quote belongs to (the
/// quoted tuple reversed is one of the flow's conntrack keys). Either
/// family.
#[inline(always)]
pub fn translation<F: Family>(err: &IcmpError<F>) -> Option<Translation<F>> {
    let q = &err.quote;
    if let Some(entry) = conntrack::lookup_tuple::<F>(q.dst, q.src, q.dport, q.sport, q.proto, DIR_REPLY) {
        return Some(towards_client(err, &entry));
    }
    let entry = conntrack::lookup_tuple::<F>(q.dst, q.src, q.dport, q.sport, q.proto, DIR_ORIGINAL)?;
    towards_backend(err, &entry)
}

/// The quote is client (or SNAT address) → backend; `entry` is the
/// flow's reply entry, whose NAT fields hold the client of an SNATed flow.
#[inline(always)]
fn towards_client<F: Family>(err: &IcmpError<F>, entry: &F::CtValue) -> Translation<F> {
    let q = &err.quote;
    let nat = entry.nat();
    let (client, outer_dst) = if nat.1 != 0 { (nat, nat.0) } else { ((q.src, q.sport), err.outer_dst) };
    let frontend = entry.frontend();
    // Set only under --forward-through-stack, the one place it is read.
    let outer_src_local = entry.flags() & FLAG_LOCAL_FRONTEND != 0;
    Translation { src: client, dst: frontend, outer_src: frontend.0, outer_dst, outer_src_local }
}

/// The quote is frontend → client; `entry` is the flow's original entry,
/// whose NAT fields hold the SNAT address and port, if any. `None` when
/// its backend is gone: nothing to send the error to.
#[inline(always)]
fn towards_backend<F: Family>(err: &IcmpError<F>, entry: &F::CtValue) -> Option<Translation<F>> {
    let q = &err.quote;
    let backend = service::lookup_backend::<F>(entry.backend_id())?;
    let nat = entry.nat();
    let (client, outer_src) = if nat.1 != 0 { (nat, nat.0) } else { ((q.dst, q.dport), err.outer_src) };
    Some(Translation {
        src: (backend.address(), backend.port()),
        dst: client,
        outer_src,
        outer_dst: backend.address(),
        outer_src_local: nat.1 != 0,
    })
}
