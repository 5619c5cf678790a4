//! ICMPv6 destination unreachable, port unreachable (RFC 4443), the IPv6
//! no-endpoints reject: built in place from the packet it answers and
//! sent back out of the interface it came in on, as `icmp_reply` does for
//! IPv4. The quote is the IPv6 header and the first 8 bytes of TCP/UDP,
//! which is what the client's stack matches its socket by. Packets with
//! extension headers are not answered (the caller drops them): the quote
//! would not reach the ports.
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
    parse::{ETH_LEN, PacketV6},
    parse6::IPV6_HDR_LEN,
    verdict::PathResult,
};

const QUOTE_LEN: usize = IPV6_HDR_LEN + 8;
const ICMP6_HDR_LEN: usize = 8;
const ICMP6_LEN: usize = ICMP6_HDR_LEN + QUOTE_LEN;
const REPLY_LEN: usize = ETH_LEN + IPV6_HDR_LEN + ICMP6_LEN;
const ICMP6_DEST_UNREACH: u8 = 1;
const CODE_PORT_UNREACH: u8 = 4;
const NEXT_ICMP6: u8 = 58;
const HOP_LIMIT: u8 = 64;

/// Replaces `pkt` with ICMPv6 port unreachable from its destination (the
/// frontend) to its source, and redirects it to the sender.
#[inline(always)]
pub fn send_port_unreachable(ctx: &TcContext, pkt: &PacketV6) -> PathResult<()> {
    let mut macs = [0u8; 12];
    let mut quote = [0u8; QUOTE_LEN];
    icmp_reply::load_exact(ctx, 0, &mut macs)?;
    icmp_reply::load_exact(ctx, ETH_LEN, &mut quote)?;

    // The checksum covers the pseudo header (both addresses, the ICMPv6
    // length, the next-header value), the ICMPv6 header and the quote;
    // summed by the kernel (`bpf_csum_diff`), in memory order.
    let length = (ICMP6_LEN as u16).to_be_bytes();
    let mut header = [ICMP6_DEST_UNREACH, CODE_PORT_UNREACH, 0, 0, 0, 0, 0, 0];
    let mut rest = [0, 0, length[0], length[1], 0, 0, 0, NEXT_ICMP6];
    let mut addresses = [pkt.src, pkt.dst];
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
    store(ctx, ip + 8, &pkt.dst.to_ne_bytes())?;
    store(ctx, ip + 24, &pkt.src.to_ne_bytes())?;
    store(ctx, icmp, &[ICMP6_DEST_UNREACH, CODE_PORT_UNREACH, checksum[0], checksum[1], 0, 0, 0, 0])?;
    // SAFETY: reads the ingress interface index of the live sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; flags 0 = out through the device's egress.
    unsafe { bpf_redirect(ifindex, 0) };
    Ok(())
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
