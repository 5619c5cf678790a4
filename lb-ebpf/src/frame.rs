//! The hook a packet arrived at, as the shared packet paths see it: its
//! bytes, its ingress interface, how its L4 checksum is updated, how a
//! routed packet leaves, and what only one hook can do.
//!
//! - **tc** (`TcContext`): finishes every packet. What it cannot send
//!   itself (no route, a local destination, a neighbour the FIB does not
//!   know) it NATs and hands to the stack, and it answers with ICMP. A
//!   packet for a pod behind an interface in `LB_PEER_DEVICES` is handed
//!   straight to the pod's end of the veth (`bpf_redirect_peer`).
//! - **XDP** (`XdpContext`, the `xdp` module): runs before tc on the
//!   node's external interfaces. It finishes a packet only when it can send
//!   it itself: the route is a plain forward to a known neighbour, out of
//!   the interface it came in on (`XDP_TX`) or of one in `LB_XDP_DEVICES`
//!   (`XDP_REDIRECT`). Anything else passes to tc untouched and before
//!   any state was created, so tc decides it as if XDP were not there.

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_REDIRECT, xdp_action},
    helpers::{bpf_csum_update, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::{TcContext, XdpContext},
};
use core::ffi::c_void;
use lb_common::{checksum, stats::Counter};

use crate::{
    icmp_error, icmp_reply, icmp6_reply,
    maps::{LB_PEER_DEVICES, LB_XDP_DEVICES},
    nat,
    parse::PacketV4,
    skb_checksum, stats,
    verdict::{Outcome, PathResult, Verdict},
};

/// `bpf_l4_csum_replace` flags the software update below honours.
const BPF_F_MARK_MANGLED_0: u64 = 0x20;
const CSUM_SIZE_MASK: u64 = 0xf;

pub trait Frame {
    /// tc: a packet this hook cannot send itself is still NATed and handed
    /// to the stack. XDP: it passes to tc untouched.
    const FINISHES_EVERY_PACKET: bool;

    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The packet's length in bytes (tc: the whole sk_buff).
    fn packet_len(&self) -> usize;
    /// The GSO segment size (0: not a GSO packet; always 0 at XDP).
    fn gso_size(&self) -> u16;
    fn ingress_ifindex(&self) -> u32;
    /// The context pointer helpers take.
    fn raw(&self) -> *mut c_void;
    /// `bpf_l4_csum_replace`'s contract: `flags` holds the field size (2
    /// or 4; 0 when `to` is a `bpf_csum_diff` difference) and
    /// `BPF_F_MARK_MANGLED_0`.
    fn l4_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> PathResult<()>;
    /// The L4 checksum's state where this hook can tell it, for an update
    /// in place (`checksum::State`).
    fn l4_checksum_state(&self) -> checksum::State;
    /// Adds `diff` to the packet's received sum (`skb->csum` of a
    /// `CHECKSUM_COMPLETE` skb; nothing otherwise, nor at XDP, which has
    /// none).
    fn add_to_received_sum(&self, diff: u32);
    /// Whether this hook can send a packet out of `ifindex` itself.
    fn sends_to(&self, ifindex: u32) -> bool;
    /// Sends the NATed packet out of `ifindex`; its MACs are written when
    /// `neighbour_known`, else the kernel resolves the next hop.
    fn redirect(&self, ifindex: u32, neighbour_known: bool) -> PathResult<Verdict>;
    /// Answers `pkt` with ICMP destination unreachable `code` (carrying
    /// `mtu` for fragmentation needed). `Ok(false)`: this hook cannot;
    /// the packet is left untouched.
    fn answer_unreachable(&self, pkt: &PacketV4, code: u8, mtu: u16) -> PathResult<bool>;
    /// Answers the IPv6 packet with ICMPv6 port unreachable. `Ok(false)`:
    /// this hook cannot; the packet is left untouched.
    fn answer_port_unreachable_v6(&self) -> PathResult<bool>;
    /// Answers the IPv6 packet with ICMPv6 packet too big carrying `mtu`.
    /// `Ok(false)`: this hook cannot; the packet is left untouched.
    fn answer_packet_too_big_v6(&self, mtu: u16) -> PathResult<bool>;
    /// An ICMP packet: translated if it is an error about a NATed flow.
    fn icmp(&self) -> Outcome;
}

/// The context pointer, read afresh. The verifier takes a context field
/// only at a constant offset from the context pointer itself; given the
/// same pointer everywhere, LLVM may compute a field's address once and
/// keep that (`ctx + 80`), which the verifier refuses. A volatile read
/// of the pointer gives each field read its own base, folded into the
/// load.
#[inline(always)]
fn skb_pointer(ctx: &TcContext) -> *mut aya_ebpf::bindings::__sk_buff {
    // SAFETY: reads the pointer field of a live reference.
    unsafe { core::ptr::read_volatile(&raw const ctx.skb.skb) }
}

impl Frame for TcContext {
    const FINISHES_EVERY_PACKET: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        // SAFETY: reads a field of the live sk_buff.
        unsafe { (*skb_pointer(self)).data as usize }
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: reads a field of the live sk_buff.
        unsafe { (*skb_pointer(self)).data_end as usize }
    }

    #[inline(always)]
    fn packet_len(&self) -> usize {
        self.len() as usize
    }

    #[inline(always)]
    fn gso_size(&self) -> u16 {
        // SAFETY: reads a field of the live sk_buff.
        unsafe { (*self.skb.skb).gso_size as u16 }
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: reads a field of the live sk_buff.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.as_ptr()
    }

    #[inline(always)]
    fn l4_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> PathResult<()> {
        // The kernel's helper: it knows the sk_buff's checksum state
        // (see `nat`).
        TcContext::l4_csum_replace(self, offset, from, to, flags).map_err(|_| Counter::DropRewriteFailed)
    }

    #[inline(always)]
    fn l4_checksum_state(&self) -> checksum::State {
        skb_checksum::state(self)
    }

    #[inline(always)]
    fn add_to_received_sum(&self, diff: u32) {
        // SAFETY: plain helper call on the live sk_buff. It fails (and
        // changes nothing) unless the skb is CHECKSUM_COMPLETE: ignored.
        unsafe { bpf_csum_update(self.skb.skb, diff) };
    }

    #[inline(always)]
    fn sends_to(&self, _ifindex: u32) -> bool {
        true
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32, neighbour_known: bool) -> PathResult<Verdict> {
        let sent = if neighbour_known && LB_PEER_DEVICES.get_ptr(&ifindex).is_some() {
            // A pod's veth: the packet, its MACs already written, enters
            // the pod's namespace at once, as if received there. Only
            // from tc ingress, which is where `lb_tc` runs.
            // SAFETY: plain helper call; flags must be 0.
            unsafe { bpf_redirect_peer(ifindex, 0) }
        } else if neighbour_known {
            // SAFETY: plain helper call; flags 0 = the device's egress.
            unsafe { bpf_redirect(ifindex, 0) }
        } else {
            // SAFETY: no next-hop parameters: the kernel resolves the
            // packet's destination through the route it just found.
            unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) }
        };
        if sent as i32 != TC_ACT_REDIRECT as i32 {
            return Err(Counter::DropRewriteFailed);
        }
        stats::count(Counter::Redirected);
        Ok(Verdict::Redirect)
    }

    #[inline(always)]
    fn answer_unreachable(&self, pkt: &PacketV4, code: u8, mtu: u16) -> PathResult<bool> {
        icmp_reply::send_unreachable(self, pkt, code, mtu)?;
        Ok(true)
    }

    #[inline(always)]
    fn answer_port_unreachable_v6(&self) -> PathResult<bool> {
        icmp6_reply::send_port_unreachable(self)?;
        Ok(true)
    }

    #[inline(always)]
    fn answer_packet_too_big_v6(&self, mtu: u16) -> PathResult<bool> {
        icmp6_reply::send_packet_too_big(self, mtu)?;
        Ok(true)
    }

    #[inline(always)]
    fn icmp(&self) -> Outcome {
        icmp_error::handle(self)
    }
}

impl Frame for XdpContext {
    const FINISHES_EVERY_PACKET: bool = false;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn packet_len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }

    #[inline(always)]
    fn gso_size(&self) -> u16 {
        0
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.as_ptr()
    }

    /// In software (RFC 1624): XDP has no helper for it. Frames arriving
    /// from a NIC carry complete checksums (a partial one exists only on
    /// locally generated sk_buffs), so the pseudo header needs no special
    /// case. A UDP checksum of 0 ("none") stays 0, and a computed 0 is
    /// sent as 0xffff, as `BPF_F_MARK_MANGLED_0` does.
    #[inline(always)]
    fn l4_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> PathResult<()> {
        // Words in memory order throughout: one's-complement sums do not
        // depend on byte order, as long as every term is read the same way.
        let old = u16::from_ne_bytes(nat::read_at::<2>(self, offset)?);
        let mangled_0 = flags & BPF_F_MARK_MANGLED_0 != 0;
        if mangled_0 && old == 0 {
            return Ok(());
        }
        let low = |v: u64| u32::from(v as u16);
        let high = |v: u64| u32::from((v >> 16) as u16);
        let mut sum = u32::from(!old);
        match flags & CSUM_SIZE_MASK {
            2 => sum += low(!from) + low(to),
            4 => sum += low(!from) + high(!from) + low(to) + high(to),
            // `to` is a 32-bit checksum difference.
            0 => sum += low(to) + high(to),
            _ => return Err(Counter::DropRewriteFailed),
        }
        let mut field = nat::fold_checksum_ne(sum);
        if mangled_0 && field == [0, 0] {
            field = [0xff, 0xff];
        }
        nat::write_at(self, offset, field)
    }

    /// Not given: `l4_csum_replace` is already an update in place here,
    /// and the path that calls it keeps the XDP program's stack within
    /// the verifier's bound.
    #[inline(always)]
    fn l4_checksum_state(&self) -> checksum::State {
        checksum::State::Unknown
    }

    /// No sum to keep: XDP frames carry none.
    #[inline(always)]
    fn add_to_received_sum(&self, _diff: u32) {}

    #[inline(always)]
    fn sends_to(&self, ifindex: u32) -> bool {
        ifindex == Frame::ingress_ifindex(self) || LB_XDP_DEVICES.get_ifindex(ifindex).is_some()
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32, neighbour_known: bool) -> PathResult<Verdict> {
        // `sends_to` and the known neighbour were checked before the
        // packet was touched; failing here would lose a NATed packet.
        if !neighbour_known {
            return Err(Counter::DropRewriteFailed);
        }
        let verdict = if ifindex == Frame::ingress_ifindex(self) {
            Verdict::Transmit
        } else {
            match LB_XDP_DEVICES.redirect(ifindex, 0) {
                Ok(action) if action == xdp_action::XDP_REDIRECT => Verdict::Redirect,
                _ => return Err(Counter::DropRewriteFailed),
            }
        };
        stats::count(Counter::XdpSent);
        Ok(verdict)
    }

    #[inline(always)]
    fn answer_unreachable(&self, _pkt: &PacketV4, _code: u8, _mtu: u16) -> PathResult<bool> {
        Ok(false)
    }

    #[inline(always)]
    fn answer_port_unreachable_v6(&self) -> PathResult<bool> {
        Ok(false)
    }

    #[inline(always)]
    fn answer_packet_too_big_v6(&self, _mtu: u16) -> PathResult<bool> {
        Ok(false)
    }

    #[inline(always)]
    fn icmp(&self) -> Outcome {
        // tc translates the errors; XDP counts only what it does itself.
        Outcome::next(Counter::PassOtherProtocol)
    }
}
