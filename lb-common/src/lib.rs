//! Map keys, values, names and capacities shared by the eBPF datapath
//! (`lb-ebpf`) and the agent (`lb-userspace`). Every type here is defined
//! once, `#[repr(C)]`, with explicit padding and its size asserted at compile
//! time, so both sides agree on the bytes.
//!
//! Byte order, everywhere: **addresses are in network byte order** (stored as
//! byte arrays, so `bpftool map dump` prints them as dotted bytes), **ports,
//! counts and ids are in host byte order** (readable in dumps; the datapath
//! swaps a packet's port once when it builds a key).
//!
//! IPv4 and IPv6 live in separate maps (`*_V4`, later `*_V6`): keys differ in
//! size, and a v4 packet never pays for a 16-byte address.
#![no_std]

pub mod address_filter;
pub mod affinity;
pub mod backend;
pub mod checksum;
pub mod clock;
pub mod config;
pub mod conntrack;
pub mod flow;
pub mod frontend_stats;
pub mod ids;
pub mod maglev;
pub mod maps;
pub mod pod_cidrs;
pub mod port_filter;
pub mod service;
pub mod skb_checksum;
pub mod sock;
pub mod source_ranges;
pub mod stats;

/// IANA protocol numbers the datapath balances.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Implements `aya::Pod` for map types when the agent builds this crate.
/// Every such type is `#[repr(C)]`, `Copy`, and has no implicit padding
/// (asserted next to its definition), which is what `Pod` requires.
macro_rules! user_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: repr(C), Copy, all padding explicit (sizes asserted).
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pub(crate) use user_pod;
