//! Per-frontend counters: what new flows to each frontend became. Per-CPU
//! hash keyed by frontend id (`u32`), summed over CPUs by the agent, which
//! labels them with the frontend's Service (`lb_service_*` metrics).
//!
//! Only a flow's first packet is counted here (a new flow balanced, or
//! refused): the established path, every later packet, pays nothing for
//! them. Packets of established flows are counted per reason only
//! (`stats`).

/// One frontend's counters on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendStatsV4 {
    /// New flows balanced to a backend (a TCP SYN re-opening a tracked
    /// tuple included).
    pub new_flows: u64,
    /// New flows rejected because the Service has no endpoints.
    pub rejected: u64,
    /// New flows dropped: outside `loadBalancerSourceRanges`, or a Local
    /// traffic policy with no endpoint on this node.
    pub dropped: u64,
}
const _: () = assert!(size_of::<FrontendStatsV4>() == 24);

/// Which counter of `FrontendStatsV4` an event moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendEvent {
    NewFlow,
    Rejected,
    Dropped,
}

impl FrontendStatsV4 {
    /// The counter `event` moves.
    pub fn counter_mut(&mut self, event: FrontendEvent) -> &mut u64 {
        match event {
            FrontendEvent::NewFlow => &mut self.new_flows,
            FrontendEvent::Rejected => &mut self.rejected,
            FrontendEvent::Dropped => &mut self.dropped,
        }
    }

    /// A value with one event counted, for a frontend's first. Each field
    /// is written as such: a zeroed value with one field set through
    /// `counter_mut` compiles, for BPF, to a `memset` call, one more frame
    /// on the datapath's longest call chain.
    pub fn first(event: FrontendEvent) -> Self {
        let one = |counted: FrontendEvent| u64::from(event == counted);
        Self {
            new_flows: one(FrontendEvent::NewFlow),
            rejected: one(FrontendEvent::Rejected),
            dropped: one(FrontendEvent::Dropped),
        }
    }

    /// Sums the CPUs' values.
    pub fn plus(self, other: Self) -> Self {
        Self {
            new_flows: self.new_flows.wrapping_add(other.new_flows),
            rejected: self.rejected.wrapping_add(other.rejected),
            dropped: self.dropped.wrapping_add(other.dropped),
        }
    }
}

crate::user_pod!(FrontendStatsV4);
