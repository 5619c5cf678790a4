//! Id allocation. Backend and frontend ids come from counters that only go
//! up and are persisted in the pinned `LB_IDS` map (written before any
//! entry that uses a new id), so an id is never handed out twice, across
//! agent restarts too: a conntrack entry naming a removed backend or
//! frontend finds nothing and its flow is re-balanced, instead of silently
//! following the id to a different endpoint. After 2^32 allocations the
//! counter wraps and skips ids still in use; a conntrack entry outlives
//! far fewer allocations than that.

use std::collections::HashSet;

/// One id space.
#[derive(Debug, Default)]
pub struct IdCounter {
    /// The last id handed out (0: none yet).
    last: u32,
    live: HashSet<u32>,
}

impl IdCounter {
    /// Continues after `last` (the persisted counter, or the highest id
    /// the maps or conntrack name).
    pub fn resume(last: u32) -> Self {
        Self { last, live: HashSet::new() }
    }

    pub fn last(&self) -> u32 {
        self.last
    }

    /// A fresh id, never handed out before by this counter's history.
    pub fn allocate(&mut self) -> u32 {
        loop {
            self.last = self.last.wrapping_add(1);
            if self.last != 0 && !self.live.contains(&self.last) {
                self.live.insert(self.last);
                return self.last;
            }
        }
    }

    /// Marks an id taken over from the maps as live.
    pub fn adopt(&mut self, id: u32) {
        self.live.insert(id);
        self.last = self.last.max(id);
    }

    pub fn release(&mut self, id: u32) {
        self.live.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_ids_are_not_handed_out_again() {
        let mut ids = IdCounter::default();
        let a = ids.allocate();
        ids.release(a);
        assert_ne!(ids.allocate(), a);
    }

    #[test]
    fn a_resumed_counter_continues_after_the_persisted_value() {
        let mut ids = IdCounter::resume(41);
        assert_eq!(ids.allocate(), 42);
        ids.adopt(100);
        assert_eq!(ids.allocate(), 101);
    }

    #[test]
    fn the_counter_wraps_past_zero_and_live_ids() {
        let mut ids = IdCounter::resume(u32::MAX - 1);
        ids.adopt(1);
        assert_eq!(ids.allocate(), u32::MAX);
        assert_eq!(ids.allocate(), 2, "0 is never an id, 1 is live");
    }
}
