//! Address and port rewrites with incremental checksum updates.
//!
//! The kernel's checksum helpers are used rather than arithmetic on the
//! packet: they know the sk_buff's checksum state. A locally generated
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

use crate::{parse::{ETH_LEN, PacketV4}, verdict::PathResult};

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

/// Rewrites source or destination address and port of `pkt` in place.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, pkt: &PacketV4, side: Side, addr: [u8; 4], port: u16) -> PathResult<()> {
    let (old_addr, old_port, addr_off, port_off) = match side {
        Side::Source => (pkt.src, pkt.sport, IP_SRC_OFF, pkt.l4_off + SPORT_OFF),
        Side::Destination => (pkt.dst, pkt.dport, IP_DST_OFF, pkt.l4_off + DPORT_OFF),
    };
    let mangled = if pkt.proto == proto::UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
    let l4_csum_off = pkt.l4_csum_off();

    if addr != old_addr {
        let from = u64::from(u32::from_ne_bytes(old_addr));
        let to = u64::from(u32::from_ne_bytes(addr));
        ctx.store(addr_off, &addr, 0).map_err(|_| Counter::DropRewriteFailed)?;
        ctx.l3_csum_replace(IP_CSUM_OFF, from, to, 4).map_err(|_| Counter::DropRewriteFailed)?;
        ctx.l4_csum_replace(l4_csum_off, from, to, u64::from(BPF_F_PSEUDO_HDR) | mangled | 4)
            .map_err(|_| Counter::DropRewriteFailed)?;
    }
    if port != old_port {
        let new_be = port.to_be();
        let from = u64::from(old_port.to_be());
        let to = u64::from(new_be);
        ctx.store(port_off, &new_be, 0).map_err(|_| Counter::DropRewriteFailed)?;
        ctx.l4_csum_replace(l4_csum_off, from, to, mangled | 2).map_err(|_| Counter::DropRewriteFailed)?;
    }
    Ok(())
}
