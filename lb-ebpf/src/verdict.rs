//! What the datapath decides for a packet, and the counter it bumps.

use aya_ebpf::bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action};
use lb_common::stats::Counter;

#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Verdict {
    /// Continue: the next tc program (another CNI's) or the stack.
    /// `TC_ACT_UNSPEC`, which tcx reads as `TCX_NEXT`, so this datapath
    /// chains after or before other programs without hiding packets.
    Next,
    Drop,
    /// Sent out through `bpf_redirect` (rejects go back where they came
    /// from); at XDP, `XDP_REDIRECT` to another interface.
    Redirect,
    /// XDP only: sent back out of the interface it came in on (`XDP_TX`).
    Transmit,
}

impl Verdict {
    #[inline(always)]
    pub fn tc_action(self) -> i32 {
        match self {
            Verdict::Next => TC_ACT_UNSPEC,
            Verdict::Drop => TC_ACT_SHOT as i32,
            // tc never transmits; a redirect is its nearest meaning.
            Verdict::Redirect | Verdict::Transmit => TC_ACT_REDIRECT as i32,
        }
    }

    /// At XDP, `Next` passes the frame on to the stack (and tc).
    #[inline(always)]
    pub fn xdp_action(self) -> u32 {
        match self {
            Verdict::Next => xdp_action::XDP_PASS,
            Verdict::Drop => xdp_action::XDP_DROP,
            Verdict::Redirect => xdp_action::XDP_REDIRECT,
            Verdict::Transmit => xdp_action::XDP_TX,
        }
    }
}

#[derive(Clone, Copy)]
pub struct Outcome {
    pub verdict: Verdict,
    pub counter: Counter,
}

impl Outcome {
    #[inline(always)]
    pub const fn next(counter: Counter) -> Self {
        Self { verdict: Verdict::Next, counter }
    }

    #[inline(always)]
    pub const fn drop(counter: Counter) -> Self {
        Self { verdict: Verdict::Drop, counter }
    }

    /// One scalar, for a BPF-to-BPF call to return: an aggregate returned
    /// through memory may leave the pointer to the caller's stack in R0,
    /// and the verifier refuses a call that returns one.
    #[inline(always)]
    pub fn into_bits(self) -> u64 {
        (u64::from(self.verdict as u32) << 32) | u64::from(self.counter as u32)
    }

    /// The outcome `into_bits` made `bits` of.
    #[inline(always)]
    pub fn from_bits(bits: u64) -> Self {
        let verdict = match (bits >> 32) as u32 {
            v if v == Verdict::Drop as u32 => Verdict::Drop,
            v if v == Verdict::Redirect as u32 => Verdict::Redirect,
            v if v == Verdict::Transmit as u32 => Verdict::Transmit,
            _ => Verdict::Next,
        };
        // SAFETY: the low half is a `Counter` (`repr(u32)`) written by
        // `into_bits`, the only maker of these bits.
        let counter = unsafe { core::mem::transmute::<u32, Counter>(bits as u32) };
        Self { verdict, counter }
    }
}

/// Everything past parsing either produces an outcome or fails with the
/// counter that names why; a failure drops the packet.
pub type PathResult<T> = Result<T, Counter>;
