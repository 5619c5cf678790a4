//! Address and port rewrites with incremental checksum updates.
//!
//! The L4 checksum goes through the kernel's helper rather than arithmetic
//! on the packet: it knows the sk_buff's checksum state. A locally generated
//! packet on a veth is CHECKSUM_PARTIAL, whose L4 field holds only the
//! pseudo-header sum; `BPF_F_PSEUDO_HDR` updates it correctly, and a port
//! change (not in the pseudo header) then rightly leaves it alone.
//! `BPF_F_MARK_MANGLED_0` keeps a UDP checksum of 0 ("none") at 0 and turns
//! a computed 0 into 0xffff.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_common::{proto, stats::Counter};

use crate::{
    parse::{ETH_LEN, PacketV4},
    verdict::PathResult,
};

const IP_CSUM_OFF: usize = ETH_LEN + 10;
const IP_SRC_OFF: usize = ETH_LEN + 12;
const IP_DST_OFF: usize = ETH_LEN + 16;
const SPORT_OFF: usize = 0;
const DPORT_OFF: usize = 2;

/// Which side of the tuple to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// Writes `bytes` at `offset` by direct packet access (no helper call;
/// the verifier makes the skb writable once, in the program prologue).
#[inline(always)]
fn write_at<const N: usize>(ctx: &TcContext, offset: usize, bytes: [u8; N]) -> PathResult<()> {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return Err(Counter::DropRewriteFailed);
    }
    // SAFETY: bounds checked just above.
    unsafe { core::ptr::write_unaligned((start + offset) as *mut [u8; N], bytes) };
    Ok(())
}

/// Folds a 32-bit one's-complement sum to 16 bits and complements it:
/// the checksum field's value, big-endian.
#[inline(always)]
pub fn fold_checksum(mut sum: u32) -> [u8; 2] {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// RFC 1624 incremental update of a 16-bit one's-complement checksum for
/// a 4-byte field changing from `from` to `to`.
#[inline(always)]
fn csum_replace4(check: [u8; 2], from: [u8; 4], to: [u8; 4]) -> [u8; 2] {
    let word = |b: [u8; 4], i: usize| u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
    let mut sum = u32::from(!u16::from_be_bytes(check));
    sum += (0xffff - word(from, 0)) + (0xffff - word(from, 2)) + word(to, 0) + word(to, 2);
    fold_checksum(sum)
}

const IP_TTL_OFF: usize = ETH_LEN + 8;

/// Decrements the IPv4 TTL, as forwarding does, for a packet this
/// datapath forwards itself. `Ok(false)`: the TTL would reach zero; the
/// packet is left untouched for the stack, which answers time-exceeded.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext) -> PathResult<bool> {
    // TTL and protocol share one checksummed 16-bit word.
    let word = read_at::<2>(ctx, IP_TTL_OFF)?;
    if word[0] <= 1 {
        return Ok(false);
    }
    let new_word = [word[0] - 1, word[1]];
    let check = read_at::<2>(ctx, IP_CSUM_OFF)?;
    let mut sum = u32::from(!u16::from_be_bytes(check));
    sum += 0xffff - u32::from(u16::from_be_bytes(word)) + u32::from(u16::from_be_bytes(new_word));
    write_at(ctx, IP_CSUM_OFF, fold_checksum(sum))?;
    write_at(ctx, IP_TTL_OFF, new_word)?;
    Ok(true)
}

/// Writes the Ethernet destination and source addresses.
#[inline(always)]
pub fn write_macs(ctx: &TcContext, destination: [u8; 6], source: [u8; 6]) -> PathResult<()> {
    write_at(ctx, 0, destination)?;
    write_at(ctx, 6, source)
}

/// Reads `N` bytes at `offset` by direct packet access.
#[inline(always)]
pub fn read_at<const N: usize>(ctx: &TcContext, offset: usize) -> PathResult<[u8; N]> {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return Err(Counter::DropRewriteFailed);
    }
    // SAFETY: bounds checked just above.
    Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
}

/// Rewrites source or destination address and port of `pkt` in place.
/// Bytes and the IPv4 header checksum are written by direct access (the
/// IP header checksum is always complete, whatever the skb's checksum
/// state, and the header's sum stays constant, so a CHECKSUM_COMPLETE
/// skb->csum stays right); the L4 checksum goes through the kernel's
/// helper, which knows the skb's checksum state.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, pkt: &PacketV4, side: Side, addr: [u8; 4], port: u16) -> PathResult<()> {
    let (old_addr, old_port, addr_off, port_off) = match side {
        Side::Source => (pkt.src, pkt.sport, IP_SRC_OFF, pkt.l4_off + SPORT_OFF),
        Side::Destination => (pkt.dst, pkt.dport, IP_DST_OFF, pkt.l4_off + DPORT_OFF),
    };
    let mangled = if pkt.proto == proto::UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
    let l4_csum_off = pkt.l4_csum_off();
    let addr_changes = addr != old_addr;
    let port_changes = port != old_port;
    if addr_changes {
        let check = read_at::<2>(ctx, IP_CSUM_OFF)?;
        write_at(ctx, IP_CSUM_OFF, csum_replace4(check, old_addr, addr))?;
        write_at(ctx, addr_off, addr)?;
    }
    if port_changes {
        write_at(ctx, port_off, port.to_be_bytes())?;
    }
    if addr_changes {
        let from = u64::from(u32::from_ne_bytes(old_addr));
        let to = u64::from(u32::from_ne_bytes(addr));
        ctx.l4_csum_replace(l4_csum_off, from, to, u64::from(BPF_F_PSEUDO_HDR) | mangled | 4)
            .map_err(|_| Counter::DropRewriteFailed)?;
    }
    if port_changes {
        let from = u64::from(old_port.to_be());
        let to = u64::from(port.to_be());
        ctx.l4_csum_replace(l4_csum_off, from, to, mangled | 2).map_err(|_| Counter::DropRewriteFailed)?;
    }
    Ok(())
}
