//! Which kernel map holds each frontend's Maglev table, and which
//! frontends share each map.
//!
//! Frontends over the same backends (a NodePort Service port on every
//! node address, its external and load balancer IPs) have equal tables,
//! and the outer map lets several frontends name one inner map: the
//! kernel then holds one table (about 130 KiB) for all of them instead
//! of one each. The price is that a shared map must never be written in
//! place for one of its frontends, or the others would follow; this
//! bookkeeping says, for each new table, whether to keep the frontend's
//! map, move it to a map that already holds the table, rewrite its own
//! map (no other frontend uses it), or fill a new one.
//!
//! Maps are known by their kernel ids, so the bookkeeping is rebuilt from
//! what the outer map holds (at every full sync, and after any failed
//! write) and never trusts itself past a failure.

use std::collections::{BTreeSet, HashMap};

use crate::maglev::Table;

/// What a frontend's new table takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Its map already holds the table.
    Keep,
    /// Another map holds the table: the frontend is moved to it.
    Share(u32),
    /// Its map is its own: rewritten in place (only what differs).
    Rewrite(u32),
    /// No map holds the table, and the frontend's is shared or missing:
    /// a new map is filled.
    Fill,
}

/// The inner maps (`M`: a handle that keeps one open) by kernel map id.
pub struct SharedTables<M> {
    maps: HashMap<u32, Inner<M>>,
    by_fingerprint: HashMap<u64, Vec<u32>>,
    by_frontend: HashMap<u32, u32>,
}

struct Inner<M> {
    handle: M,
    table: Table,
    frontends: BTreeSet<u32>,
}

impl<M> Default for SharedTables<M> {
    fn default() -> Self {
        Self { maps: HashMap::new(), by_fingerprint: HashMap::new(), by_frontend: HashMap::new() }
    }
}

impl<M> SharedTables<M> {
    /// What `frontend` taking `table` needs.
    pub fn plan(&self, frontend: u32, table: &Table) -> Plan {
        let own = self.by_frontend.get(&frontend).copied();
        if let Some(id) = own
            && self.maps[&id].table == *table
        {
            return Plan::Keep;
        }
        if let Some(id) = self.holding(table) {
            return Plan::Share(id);
        }
        match own {
            Some(id) if self.maps[&id].frontends.len() == 1 => Plan::Rewrite(id),
            _ => Plan::Fill,
        }
    }

    /// A map holding `table` (any of them, if several do).
    fn holding(&self, table: &Table) -> Option<u32> {
        let candidates = self.by_fingerprint.get(&table.digest())?;
        candidates.iter().copied().find(|id| self.maps[id].table == *table)
    }

    /// Records map `id`, holding `table`, used by no frontend yet.
    pub fn add(&mut self, id: u32, handle: M, table: Table) {
        self.by_fingerprint.entry(table.digest()).or_default().push(id);
        self.maps.insert(id, Inner { handle, table, frontends: BTreeSet::new() });
    }

    pub fn contains(&self, id: u32) -> bool {
        self.maps.contains_key(&id)
    }

    pub fn handle(&self, id: u32) -> Option<&M> {
        self.maps.get(&id).map(|inner| &inner.handle)
    }

    pub fn handle_mut(&mut self, id: u32) -> Option<&mut M> {
        self.maps.get_mut(&id).map(|inner| &mut inner.handle)
    }

    pub fn table(&self, id: u32) -> Option<&Table> {
        self.maps.get(&id).map(|inner| &inner.table)
    }

    /// Map `id` now holds `table` (it was rewritten in place).
    pub fn retable(&mut self, id: u32, table: Table) {
        let Some(inner) = self.maps.get_mut(&id) else { return };
        let old = std::mem::replace(&mut inner.table, table).digest();
        let new = inner.table.digest();
        self.forget_fingerprint(old, id);
        self.by_fingerprint.entry(new).or_default().push(id);
    }

    /// `frontend` now uses map `id`. A map no frontend uses any more is
    /// dropped (its handle closed): the kernel frees it once the outer
    /// map no longer names it.
    pub fn link(&mut self, frontend: u32, id: u32) {
        self.unlink(frontend);
        if let Some(inner) = self.maps.get_mut(&id) {
            inner.frontends.insert(frontend);
            self.by_frontend.insert(frontend, id);
        }
    }

    /// `frontend` uses no map any more.
    pub fn unlink(&mut self, frontend: u32) {
        let Some(id) = self.by_frontend.remove(&frontend) else { return };
        let Some(inner) = self.maps.get_mut(&id) else { return };
        inner.frontends.remove(&frontend);
        if inner.frontends.is_empty()
            && let Some(dropped) = self.maps.remove(&id)
        {
            self.forget_fingerprint(dropped.table.digest(), id);
        }
    }

    fn forget_fingerprint(&mut self, fingerprint: u64, id: u32) {
        if let Some(ids) = self.by_fingerprint.get_mut(&fingerprint) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_fingerprint.remove(&fingerprint);
            }
        }
    }

    /// Frontends to move so that equal tables are held once: each
    /// frontend of a map whose table another map also holds, with the map
    /// to move to (of equal maps, the one most frontends name already).
    /// Writes that find a shared table keep it shared; duplicates come
    /// from elsewhere (an earlier build held one table per frontend).
    pub fn duplicates(&self) -> Vec<(u32, u32)> {
        let mut moves = Vec::new();
        for ids in self.by_fingerprint.values().filter(|ids| ids.len() > 1) {
            let mut left: Vec<u32> = ids.clone();
            // Most frontends first, then the lowest id: a stable choice.
            left.sort_by_key(|id| (std::cmp::Reverse(self.maps[id].frontends.len()), *id));
            while let Some((&target, rest)) = left.split_first() {
                let (equal, other): (Vec<u32>, Vec<u32>) =
                    rest.iter().partition(|id| self.maps[*id].table == self.maps[&target].table);
                for id in equal {
                    moves.extend(self.maps[&id].frontends.iter().map(|&frontend| (frontend, target)));
                }
                left = other;
            }
        }
        moves.sort_unstable();
        moves
    }

    /// How many maps are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.maps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(ids: &[u32]) -> Table {
        Table::new(ids)
    }

    /// Frontends 1 and 2 on map 10 (table A), frontend 3 on map 20 (B).
    fn two_maps() -> SharedTables<()> {
        let mut shared = SharedTables::default();
        shared.add(10, (), table(&[1, 2, 1]));
        shared.add(20, (), table(&[2, 2, 2]));
        shared.link(1, 10);
        shared.link(2, 10);
        shared.link(3, 20);
        shared
    }

    #[test]
    fn a_frontend_whose_map_holds_the_table_keeps_it() {
        assert_eq!(two_maps().plan(1, &table(&[1, 2, 1])), Plan::Keep);
    }

    #[test]
    fn a_table_another_map_holds_is_shared_not_written() {
        let shared = two_maps();
        assert_eq!(shared.plan(3, &table(&[1, 2, 1])), Plan::Share(10));
        assert_eq!(shared.plan(4, &table(&[2, 2, 2])), Plan::Share(20), "a new frontend too");
    }

    #[test]
    fn a_shared_map_is_never_rewritten_for_one_of_its_frontends() {
        assert_eq!(two_maps().plan(1, &table(&[3, 3, 3])), Plan::Fill);
    }

    #[test]
    fn a_map_of_one_frontend_is_rewritten_in_place() {
        let mut shared = two_maps();
        assert_eq!(shared.plan(3, &table(&[3, 3, 3])), Plan::Rewrite(20));
        shared.retable(20, table(&[3, 3, 3]));
        assert_eq!(shared.plan(4, &table(&[3, 3, 3])), Plan::Share(20), "found by its new table");
        assert_eq!(shared.plan(4, &table(&[2, 2, 2])), Plan::Fill, "not by its old one");
    }

    #[test]
    fn a_map_no_frontend_uses_is_dropped() {
        let mut shared = two_maps();
        shared.link(3, 10);
        assert!(!shared.contains(20), "frontend 3 moved away");
        assert_eq!(shared.plan(4, &table(&[2, 2, 2])), Plan::Fill);
        shared.unlink(1);
        assert!(shared.contains(10), "frontends 2 and 3 still use it");
        assert_eq!(shared.plan(2, &table(&[4, 4, 4])), Plan::Fill, "still shared with 3");
        shared.unlink(3);
        assert_eq!(shared.plan(2, &table(&[4, 4, 4])), Plan::Rewrite(10), "now 2's alone");
        shared.unlink(2);
        assert_eq!(shared.len(), 0);
    }

    #[test]
    fn equal_tables_in_several_maps_are_merged_into_the_most_named_one() {
        let mut shared = two_maps();
        shared.add(30, (), table(&[1, 2, 1]));
        shared.link(4, 30);
        shared.add(5, (), table(&[2, 2, 2]));
        shared.link(5, 5);
        shared.add(40, (), table(&[7, 7, 7]));
        shared.link(6, 40);
        // 10 (two frontends) over 30 (one); 5 and 20 (one each): the lower id.
        assert_eq!(shared.duplicates(), [(3, 5), (4, 10)]);
        for (frontend, target) in shared.duplicates() {
            shared.link(frontend, target);
        }
        assert_eq!(shared.duplicates(), []);
        assert_eq!(shared.len(), 3, "maps 20 and 30 are no longer named");
    }

    #[test]
    fn a_new_frontend_without_a_matching_map_fills_one() {
        assert_eq!(two_maps().plan(9, &table(&[5, 5, 5])), Plan::Fill);
    }
}
