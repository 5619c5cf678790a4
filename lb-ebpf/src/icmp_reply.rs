//! ICMP destination-unreachable errors the datapath answers itself, built
//! in place from the packet they are about and sent back out of the
//! interface it came in on: the no-endpoints reject (`reject`) and
//! fragmentation needed (`pmtu`).
//!
//! The packet is rebuilt in place: Ethernet (addresses swapped), a new IPv4
//! header from the packet's destination (the frontend) to its source (the
//! client), the ICMP header, and the original IP header plus the first 8
//! bytes of its payload (RFC 792). The quote is the packet as it arrived,
//! so the caller answers before any NAT. Callers do not answer packets
//! with IP options: the quoted header would vary in length.

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use lb_common::stats::Counter;
use network_types::eth::EthHdr;

use crate::{
    nat,
    parse::{ETH_LEN, IPV4_MIN_LEN, PacketV4},
    verdict::PathResult,
};

const QUOTE_LEN: usize = IPV4_MIN_LEN + 8;
const ICMP_HDR_LEN: usize = 8;
const REPLY_IP_LEN: usize = IPV4_MIN_LEN + ICMP_HDR_LEN + QUOTE_LEN;
const REPLY_LEN: usize = ETH_LEN + REPLY_IP_LEN;
const ICMP_DEST_UNREACH: u8 = 3;
pub const CODE_PORT_UNREACH: u8 = 3;
pub const CODE_FRAG_NEEDED: u8 = 4;
const IPPROTO_ICMP: u8 = 1;
const REPLY_TTL: u8 = 64;
/// DF, as Linux sets on the ICMP errors it sends.
const IP_DONT_FRAGMENT: u8 = 0x40;

/// One's-complement sum of big-endian 16-bit words, folded and inverted.
#[inline(always)]
fn checksum(bytes: &[u8]) -> [u8; 2] {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    nat::fold_checksum(sum)
}

/// Copies exactly `dst.len()` bytes (aya's `load_bytes` clamps the length
/// to the packet, which the verifier cannot prove non-zero).
#[inline(always)]
pub fn load_exact<const N: usize>(ctx: &TcContext, offset: usize, dst: &mut [u8; N]) -> PathResult<()> {
    // SAFETY: `dst` is a live stack buffer of exactly N bytes.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), offset as u32, dst.as_mut_ptr().cast(), N as u32) };
    if ret == 0 { Ok(()) } else { Err(Counter::DropRewriteFailed) }
}

/// Writes the IPv4 header of the reply: `pkt`'s destination → its source.
#[inline(always)]
fn write_ip_header(reply: &mut [u8; REPLY_LEN], pkt: &PacketV4) {
    let ip = ETH_LEN;
    reply[ip] = 0x45;
    reply[ip + 2..ip + 4].copy_from_slice(&(REPLY_IP_LEN as u16).to_be_bytes());
    reply[ip + 6] = IP_DONT_FRAGMENT;
    reply[ip + 8] = REPLY_TTL;
    reply[ip + 9] = IPPROTO_ICMP;
    reply[ip + 12..ip + 16].copy_from_slice(&pkt.dst);
    reply[ip + 16..ip + 20].copy_from_slice(&pkt.src);
    let ip_csum = checksum(&reply[ip..ip + IPV4_MIN_LEN]);
    reply[ip + 10..ip + 12].copy_from_slice(&ip_csum);
}

/// Replaces `pkt` with ICMP destination unreachable `code` (carrying
/// `next_hop_mtu`, 0 unless fragmentation is needed) quoting it, and
/// redirects that to the sender. The caller's verdict is `Redirect`.
#[inline(always)]
pub fn send_unreachable(ctx: &TcContext, pkt: &PacketV4, code: u8, next_hop_mtu: u16) -> PathResult<()> {
    let mut eth = [0u8; EthHdr::LEN];
    let mut quote = [0u8; QUOTE_LEN];
    load_exact(ctx, 0, &mut eth)?;
    load_exact(ctx, ETH_LEN, &mut quote)?;

    let mut reply = [0u8; REPLY_LEN];
    // Ethernet: back to where it came from.
    reply[0..6].copy_from_slice(&eth[6..12]);
    reply[6..12].copy_from_slice(&eth[0..6]);
    reply[12..14].copy_from_slice(&eth[12..14]);
    write_ip_header(&mut reply, pkt);
    // ICMP: type, code, checksum, 2 unused bytes, next-hop MTU (RFC 1191),
    // then the quote.
    let icmp = ETH_LEN + IPV4_MIN_LEN;
    reply[icmp] = ICMP_DEST_UNREACH;
    reply[icmp + 1] = code;
    reply[icmp + 6..icmp + 8].copy_from_slice(&next_hop_mtu.to_be_bytes());
    reply[icmp + ICMP_HDR_LEN..].copy_from_slice(&quote);
    let icmp_csum = checksum(&reply[icmp..]);
    reply[icmp + 2..icmp + 4].copy_from_slice(&icmp_csum);

    // SAFETY: the context's sk_buff pointer is valid for the program's run.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, REPLY_LEN as u32, 0) } != 0 {
        return Err(Counter::DropRewriteFailed);
    }
    ctx.store(0, &reply, 0).map_err(|_| Counter::DropRewriteFailed)?;
    // SAFETY: reads the ingress interface index of the live sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; flags 0 = out through the device's egress.
    unsafe { bpf_redirect(ifindex, 0) };
    Ok(())
}
