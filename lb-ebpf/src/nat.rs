//! Address and port rewrites with incremental checksum updates.
//!
//! At tc, the L4 checksum goes through the kernel's helper rather than
//! arithmetic on the packet: it knows the sk_buff's checksum state. A
//! locally generated packet on a veth is CHECKSUM_PARTIAL, whose L4 field
//! holds only the pseudo-header sum; `BPF_F_PSEUDO_HDR` updates it
//! correctly, and a port change (not in the pseudo header) then rightly
//! leaves it alone. `BPF_F_MARK_MANGLED_0` keeps a UDP checksum of 0
//! ("none") at 0 and turns a computed 0 into 0xffff. A translation calls
//! the helper once, for both addresses, and updates the ports itself in
//! the state the helper's result reveals (`translate`,
//! `lb_common::checksum`). A packet a NIC summed on receipt
//! (CHECKSUM_COMPLETE) keeps a `skb->csum` that sums it: see
//! `write_ports_and_l4_checksum` for IPv6, whose header has no checksum.
//! At XDP, which has no such helper, `frame` does the same arithmetic in
//! software.

use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
use lb_common::{checksum, proto, stats::Counter};

use crate::{
    family::Family,
    frame::Frame,
    parse::{ETH_LEN, Packet, PacketV4, PacketV6},
    verdict::PathResult,
};

const IP_CSUM_OFF: usize = ETH_LEN + 10;
const IP_SRC_OFF: usize = ETH_LEN + 12;
const IP_DST_OFF: usize = ETH_LEN + 16;
const IP6_SRC_OFF: usize = ETH_LEN + 8;
const IP6_DST_OFF: usize = ETH_LEN + 24;
const IP6_HOP_LIMIT_OFF: usize = ETH_LEN + 7;
const SPORT_OFF: usize = 0;
const DPORT_OFF: usize = 2;

/// Writes `bytes` at `offset` by direct packet access (no helper call;
/// the verifier makes the skb writable once, in the program prologue).
#[inline(always)]
pub fn write_at<const N: usize>(ctx: &impl Frame, offset: usize, bytes: [u8; N]) -> PathResult<()> {
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
pub fn fold_checksum(sum: u32) -> [u8; 2] {
    (!checksum::fold(sum)).to_be_bytes()
}

/// `fold_checksum` for a sum of words read in memory order (as the
/// kernel's `bpf_csum_diff` sums them): the field's bytes as they go into
/// the packet.
#[inline(always)]
pub fn fold_checksum_ne(sum: u32) -> [u8; 2] {
    (!checksum::fold(sum)).to_ne_bytes()
}

const IP_TTL_OFF: usize = ETH_LEN + 8;

/// Decrements the IPv4 TTL, as forwarding does, for a packet this
/// datapath forwards itself. `Ok(false)`: the TTL would reach zero; the
/// packet is left untouched for the stack, which answers time-exceeded.
#[inline(always)]
pub fn decrement_ttl<C: Frame>(ctx: &C) -> PathResult<bool> {
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
pub fn write_macs<C: Frame>(ctx: &C, destination: [u8; 6], source: [u8; 6]) -> PathResult<()> {
    write_at(ctx, 0, destination)?;
    write_at(ctx, 6, source)
}

/// Reads `N` bytes at `offset` by direct packet access.
#[inline(always)]
pub fn read_at<const N: usize>(ctx: &impl Frame, offset: usize) -> PathResult<[u8; N]> {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return Err(Counter::DropRewriteFailed);
    }
    // SAFETY: bounds checked just above.
    Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
}

/// Decrements the IPv6 hop limit. No header checksum absorbs the change,
/// so a received sum (`CHECKSUM_COMPLETE`, see
/// `write_ports_and_l4_checksum`) is moved with it.
/// `Ok(false)`: it would reach zero; left for the stack to answer.
#[inline(always)]
pub fn decrement_hop_limit<C: Frame>(ctx: &C) -> PathResult<bool> {
    // The 16-bit word the hop limit shares with the next header.
    let [next, hops] = read_at::<2>(ctx, IP6_HOP_LIMIT_OFF - 1)?;
    if hops <= 1 {
        return Ok(false);
    }
    write_at(ctx, IP6_HOP_LIMIT_OFF, [hops - 1])?;
    ctx.add_to_received_sum(checksum::diff2([next, hops], [next, hops - 1]));
    Ok(true)
}

/// The L4 checksum flags for `pkt`'s protocol (see the module comment).
#[inline(always)]
fn mangled<F: Family>(pkt: &Packet<F>) -> u64 {
    if pkt.proto == proto::UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 }
}

/// Rewrites `pkt`'s source and destination (address, port) to `src` and
/// `dst` in place, fields that do not change left alone. Bytes and the
/// IPv4 header checksum are written by direct access (the IP header
/// checksum is always complete, whatever the skb's checksum state, and
/// the header's sum stays constant, so a CHECKSUM_COMPLETE skb->csum
/// stays right); the ports and the L4 checksum as
/// `write_ports_and_l4_checksum` says.
#[inline(always)]
pub fn translate<C: Frame>(ctx: &C, pkt: &PacketV4, src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> PathResult<()> {
    let addresses_change = src.0 != pkt.src || dst.0 != pkt.dst;
    let address_diff = checksum::diff4(pkt.src, src.0) + checksum::diff4(pkt.dst, dst.0);
    if addresses_change {
        let check = u16::from_ne_bytes(read_at::<2>(ctx, IP_CSUM_OFF)?);
        write_at(ctx, IP_CSUM_OFF, checksum::applied_complete(check, address_diff).to_ne_bytes())?;
        write_at(ctx, IP_SRC_OFF, src.0)?;
        write_at(ctx, IP_DST_OFF, dst.0)?;
    }
    let address_diff = addresses_change.then_some(address_diff);
    write_ports_and_l4_checksum(ctx, pkt, src.1, dst.1, address_diff)
}

/// `translate` for IPv6 (no header checksum).
#[inline(always)]
pub fn translate_v6<C: Frame>(ctx: &C, pkt: &PacketV6, src: (u128, u16), dst: (u128, u16)) -> PathResult<()> {
    let addresses_change = src.0 != pkt.src || dst.0 != pkt.dst;
    let address_diff = checksum::diff16(pkt.src.to_ne_bytes(), src.0.to_ne_bytes())
        + checksum::diff16(pkt.dst.to_ne_bytes(), dst.0.to_ne_bytes());
    if addresses_change {
        write_at(ctx, IP6_SRC_OFF, src.0.to_ne_bytes())?;
        write_at(ctx, IP6_DST_OFF, dst.0.to_ne_bytes())?;
    }
    let address_diff = addresses_change.then_some(address_diff);
    write_ports_and_l4_checksum(ctx, pkt, src.1, dst.1, address_diff)
}

/// Writes `pkt`'s new ports and updates its L4 checksum for them and for
/// addresses whose change summed to `address_diff` (`None`: none
/// changed). Where the hook tells the checksum state, the field is
/// updated here (`update_in_place`). Otherwise the address change goes
/// through the kernel's helper, which knows the skb's checksum state; what
/// the helper wrote tells that state, and the port change is then made
/// here the way the helper would have (`lb_common::checksum`), saving a
/// helper call per port. When the state is not told, the helper makes the
/// port change too.
///
/// A received packet whose NIC summed it (`CHECKSUM_COMPLETE`) carries
/// that sum in `skb->csum`, and it must still sum the packet afterwards.
/// Every change here leaves the packet's sum as it was: ports and the L4
/// checksum move by opposite amounts, and so do IPv4's addresses and its
/// header checksum. With `BPF_F_PSEUDO_HDR` the helper takes the address
/// change out of `skb->csum` all the same, right for IPv4, whose L4
/// checksum is the only field it changes, wrong for IPv6 (no
/// `Family::HEADER_CHECKSUM`), whose addresses this module wrote without a
/// header checksum to absorb them: there the change is put back.
/// (Kernels since 6.16, and stable ones backported to, take `BPF_F_IPV6`
/// for this; putting it back works on every kernel.)
#[inline(always)]
fn write_ports_and_l4_checksum<F: Family, C: Frame>(
    ctx: &C,
    pkt: &Packet<F>,
    sport: u16,
    dport: u16,
    address_diff: Option<u32>,
) -> PathResult<()> {
    let ports_change = sport != pkt.sport || dport != pkt.dport;
    if ports_change {
        let l4 = pkt.l4_off();
        write_at(ctx, l4 + SPORT_OFF, sport.to_be_bytes())?;
        write_at(ctx, l4 + DPORT_OFF, dport.to_be_bytes())?;
    }
    let udp = pkt.proto == proto::UDP;
    let csum_off = pkt.l4_csum_off();
    let before = u16::from_ne_bytes(read_at::<2>(ctx, csum_off)?);
    if udp && before == 0 {
        // A UDP checksum of 0 ("none"): left alone, as the helper
        // leaves it.
        return Ok(());
    }
    if address_diff.is_none() && !ports_change {
        return Ok(());
    }
    let port_diff = checksum::diff2(pkt.sport.to_be_bytes(), sport.to_be_bytes())
        + checksum::diff2(pkt.dport.to_be_bytes(), dport.to_be_bytes());
    let known = ctx.l4_checksum_state();
    if known != checksum::State::Unknown {
        return update_in_place(ctx, csum_off, before, known, address_diff, port_diff, udp);
    }
    let state = match address_diff {
        Some(diff) => {
            // Size 0: `to` is a checksum difference, both addresses at once.
            ctx.l4_csum_replace(csum_off, 0, u64::from(diff), u64::from(BPF_F_PSEUDO_HDR) | mangled(pkt))?;
            let after = u16::from_ne_bytes(read_at::<2>(ctx, csum_off)?);
            let state = checksum::revealed(before, after, diff, udp);
            if !F::HEADER_CHECKSUM && matches!(state, checksum::State::Complete) {
                ctx.add_to_received_sum(diff);
            }
            state
        }
        None => checksum::State::Unknown,
    };
    if !ports_change {
        return Ok(());
    }
    match state {
        checksum::State::Complete => {
            let field = u16::from_ne_bytes(read_at::<2>(ctx, csum_off)?);
            update_in_place(ctx, csum_off, field, checksum::State::Complete, None, port_diff, udp)
        }
        // Ports are not in the pseudo header.
        checksum::State::Partial => Ok(()),
        // Without `BPF_F_PSEUDO_HDR`: a partial checksum is left alone.
        checksum::State::Unknown => ctx.l4_csum_replace(csum_off, 0, u64::from(port_diff), mangled(pkt)),
    }
}

/// The L4 checksum field, `before` and in a known `state`, updated here
/// for both changes at once, as the kernel's helper would (a UDP result
/// of 0 sent as 0xffff). It keeps no received sum: the caller has, or
/// the packet has none to keep.
#[inline(always)]
fn update_in_place<C: Frame>(
    ctx: &C,
    csum_off: usize,
    before: u16,
    state: checksum::State,
    address_diff: Option<u32>,
    port_diff: u32,
    udp: bool,
) -> PathResult<()> {
    let address_diff = address_diff.unwrap_or(0);
    let mut updated = match state {
        checksum::State::Complete => checksum::applied_complete(before, address_diff + port_diff),
        // Ports are not in the pseudo header.
        _ => checksum::applied_partial(before, address_diff),
    };
    if udp && updated == 0 {
        updated = 0xffff;
    }
    write_at(ctx, csum_off, updated.to_ne_bytes())
}
