//! `lb_wire`: a switch at XDP for the LAN ports of the tests' and
//! benchmarks' namespace topologies; the datapath never runs it.
//!
//! A frame to a station in `LB_WIRE_PORTS` is redirected to the port that
//! leads to it, as an XDP frame: the station's interface then receives a
//! frame in a page with no sk_buff yet, as a NIC's driver does after DMA.
//! Without it, a node's XDP program on a veth gets the sender's own
//! sk_buff, which the veth copies into a page first (a socket's sk_buff
//! is a clone, or short of XDP's headroom), and whatever XDP sends on is
//! built into an sk_buff again: costs no NIC has. Every other frame
//! (broadcast, multicast, a station not in the table) passes to the
//! bridge the ports belong to.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, programs::XdpContext};

use crate::maps::LB_WIRE_PORTS;

const MAC_LEN: usize = 6;

#[inline(always)]
pub fn switch_frame(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + MAC_LEN > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the six bytes were bounds-checked against `data_end` above.
    let destination = unsafe { *(start as *const [u8; MAC_LEN]) };
    // SAFETY: the value is a plain u32 the map owns for this program run.
    match unsafe { LB_WIRE_PORTS.get(&destination) } {
        // SAFETY: a helper call; an ifindex that no longer exists makes
        // the redirect fail and the frame dropped, as an unplugged port.
        Some(&port) => unsafe { bpf_redirect(port, 0) as u32 },
        None => xdp_action::XDP_PASS,
    }
}
