//! The datapath's per-CPU cache of the conntrack clock (see `lb-ebpf`'s
//! `clock`): the seconds worked out at one jiffy, reused for the rest of
//! it. Not pinned and never read by the agent: a new datapath starts
//! with an empty cache, which is a miss.

/// `LB_CLOCK` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedSeconds {
    /// The jiffy `seconds` was read at (0: nothing cached yet).
    pub jiffies: u64,
    /// Seconds of `CLOCK_MONOTONIC_COARSE` at that jiffy.
    pub seconds: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<CachedSeconds>() == 16);

crate::user_pod!(CachedSeconds);
