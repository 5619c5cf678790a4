//! ICMPv6 errors the datapath answers with (RFC 4443): destination
//! unreachable, port unreachable (the no-endpoints reject) and packet too
//! big (path MTU through a frontend, `pmtu`). Built in place from the
//! packet it answers and sent back out of the interface it came in on,
//! as `icmp_reply` does for IPv4. The quote is the IPv6 header and the
//! first 8 bytes of TCP/UDP, which is what the client's stack matches its
//! socket (and, for TCP, the sequence number) by. Packets with extension
//! headers are not answered (callers drop them or leave them to the
//! stack): the quote would not reach the ports.
//!
//! Built piece by piece into the packet rather than in one buffer: the
//! IPv6 paths' call chain has little stack to spare.

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_redirect},
    programs::TcContext,
};
use lb_common::stats::Counter;

use crate::{
    icmp_reply, nat,
    parse::ETH_LEN,
    parse6::{DST_OFF, IPV6_HDR_LEN, SRC_OFF},
    verdict::PathResult,
};

const QUOTE_LEN: usize = IPV6_HDR_LEN + 8;
const ICMP6_HDR_LEN: usize = 8;
const ICMP6_LEN: usize = ICMP6_HDR_LEN + QUOTE_LEN;
const REPLY_LEN: usize = ETH_LEN + IPV6_HDR_LEN + ICMP6_LEN;
const ICMP6_DEST_UNREACH: u8 = 1;
const CODE_PORT_UNREACH: u8 = 4;
const ICMP6_PACKET_TOO_BIG: u8 = 2;
const NEXT_ICMP6: u8 = 58;
const HOP_LIMIT: u8 = 64;

/// Replaces `pkt` with ICMPv6 port unreachable from its destination (the
/// frontend) to its source, and redirects it to the sender.
#[inline(always)]
pub fn send_port_unreachable(ctx: &TcContext) -> PathResult<()> {
    send_error(ctx, [ICMP6_DEST_UNREACH, CODE_PORT_UNREACH], [0; 4])
}

/// Replaces `pkt` with ICMPv6 packet too big carrying `mtu`, from its
/// destination (the frontend) to its source, and redirects it to the
/// sender.
#[inline(always)]
pub fn send_packet_too_big(ctx: &TcContext, mtu: u16) -> PathResult<()> {
    send_error(ctx, [ICMP6_PACKET_TOO_BIG, 0], u32::from(mtu).to_be_bytes())
}

/// Replaces the packet with an ICMPv6 error of `kind` (type, code) whose
/// second word is `param`, from its destination to its source, and
/// redirects it to the sender. The addresses are read from the packet's
/// own header (in the quote): the caller's parsed copy, passed as well,
/// would take registers a BPF call does not have.
#[inline(always)]
fn send_error(ctx: &TcContext, kind: [u8; 2], param: [u8; 4]) -> PathResult<()> {
    let mut macs = [0u8; 12];
    let mut quote = [0u8; QUOTE_LEN];
    icmp_reply::load_exact(ctx, 0, &mut macs)?;
    icmp_reply::load_exact(ctx, ETH_LEN, &mut quote)?;

    // The checksum covers the pseudo header (both addresses, the ICMPv6
    // length, the next-header value), the ICMPv6 header and the quote;
    // summed by the kernel (`bpf_csum_diff`), in memory order.
    let length = (ICMP6_LEN as u16).to_be_bytes();
    let mut header = [kind[0], kind[1], 0, 0, param[0], param[1], param[2], param[3]];
    let mut rest = [0, 0, length[0], length[1], 0, 0, 0, NEXT_ICMP6];
    let (src, dst) = (address_at(&quote, SRC_OFF), address_at(&quote, DST_OFF));
    let mut addresses = [src, dst];
    let mut sum = partial_sum(&mut quote, 0)?;
    sum = partial_sum(&mut header, sum)?;
    sum = partial_sum(&mut rest, sum)?;
    sum = partial_sum(&mut addresses, sum)?;
    let checksum = nat::fold_checksum_ne(sum);

    // SAFETY: the context's sk_buff pointer is valid for the program's run.
    if unsafe { aya_ebpf::helpers::bpf_skb_change_tail(ctx.skb.skb, REPLY_LEN as u32, 0) } != 0 {
        return Err(Counter::DropRewriteFailed);
    }
    let ip = ETH_LEN;
    let icmp = ip + IPV6_HDR_LEN;
    // The quote first: it is what the packet held where the new headers go.
    store(ctx, icmp + ICMP6_HDR_LEN, &quote)?;
    store(ctx, 0, &[macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]])?;
    store(ctx, 6, &[macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]])?;
    store(ctx, ip, &[0x60, 0, 0, 0, length[0], length[1], NEXT_ICMP6, HOP_LIMIT])?;
    store(ctx, ip + SRC_OFF, &dst.to_ne_bytes())?;
    store(ctx, ip + DST_OFF, &src.to_ne_bytes())?;
    store(ctx, icmp, &[kind[0], kind[1], checksum[0], checksum[1], param[0], param[1], param[2], param[3]])?;
    // SAFETY: reads the ingress interface index of the live sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; flags 0 = out through the device's egress.
    unsafe { bpf_redirect(ifindex, 0) };
    Ok(())
}

/// The 16-byte address at `offset` of an IPv6 header, as `family::V6`
/// keeps it (its bytes in memory order).
#[inline(always)]
fn address_at(header: &[u8; QUOTE_LEN], offset: usize) -> u128 {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&header[offset..offset + 16]);
    u128::from_ne_bytes(bytes)
}

/// The kernel's one's-complement sum of `bytes` (a multiple of 4 long)
/// added to `seed`.
#[inline(always)]
fn partial_sum<T>(bytes: &mut T, seed: u32) -> PathResult<u32> {
    let len = size_of::<T>() as u32;
    // SAFETY: a live stack buffer of `len` bytes; nothing is subtracted.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, (bytes as *mut T).cast(), len, seed) };
    if sum < 0 { Err(Counter::DropRewriteFailed) } else { Ok(sum as u32) }
}

#[inline(always)]
fn store<const N: usize>(ctx: &TcContext, offset: usize, bytes: &[u8; N]) -> PathResult<()> {
    ctx.store(offset, bytes, 0).map_err(|_| Counter::DropRewriteFailed)
}
