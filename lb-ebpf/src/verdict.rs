//! What the datapath decides for a packet, and the counter it bumps.

use aya_ebpf::bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC};
use lb_common::stats::Counter;

#[derive(Clone, Copy)]
pub enum Verdict {
    /// Continue: the next tc program (another CNI's) or the stack.
    /// `TC_ACT_UNSPEC`, which tcx reads as `TCX_NEXT`, so this datapath
    /// chains after or before other programs without hiding packets.
    Next,
    Drop,
    /// Sent out through `bpf_redirect` (rejects go back where they came from).
    Redirect,
}

impl Verdict {
    #[inline(always)]
    pub fn tc_action(self) -> i32 {
        match self {
            Verdict::Next => TC_ACT_UNSPEC,
            Verdict::Drop => TC_ACT_SHOT as i32,
            Verdict::Redirect => TC_ACT_REDIRECT as i32,
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
}

/// Everything past parsing either produces an outcome or fails with the
/// counter that names why; a failure drops the packet.
pub type PathResult<T> = Result<T, Counter>;
