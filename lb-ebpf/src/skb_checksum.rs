//! The tc packet's checksum state, read from the kernel's `struct
//! sk_buff` (`lb_common::skb_checksum` says how, and why through a
//! placeholder call the agent rewrites).

use aya_ebpf::{EbpfContext, programs::TcContext};
use core::ffi::c_void;
use lb_common::{
    checksum::{self, State},
    skb_checksum::{BitPlace, CAST_TO_KERN_CTX_PLACEHOLDER},
};

/// Where `ip_summed` lies, set by the agent at load time. Read-only to
/// the program, so the verifier knows the offset it reads at.
#[unsafe(no_mangle)]
static LB_SKB_IP_SUMMED: BitPlace = BitPlace { byte_offset: 0, shift: 0 };

/// The state, or `Unknown` where the agent left the kfunc out.
#[inline(always)]
pub fn state(ctx: &TcContext) -> State {
    // SAFETY: the agent rewrites this call into `bpf_cast_to_kern_ctx`
    // (the context in, the sk_buff out) or into `r0 = 0`; both take the
    // context pointer and return a pointer or null.
    let skb = unsafe {
        let cast: unsafe extern "C" fn(*mut c_void) -> *const u8 =
            core::mem::transmute(CAST_TO_KERN_CTX_PLACEHOLDER as usize);
        cast(ctx.as_ptr())
    };
    if skb.is_null() {
        return State::Unknown;
    }
    // SAFETY: the global is plain read-only data; the byte lies inside
    // the sk_buff (the agent took its place from the kernel's BTF), and
    // the verifier checks the read against the same BTF.
    let ip_summed = unsafe {
        let place = core::ptr::read_volatile(&raw const LB_SKB_IP_SUMMED);
        (core::ptr::read_volatile(skb.add(place.byte_offset as usize)) >> place.shift) & 3
    };
    checksum::of_ip_summed(ip_summed)
}
