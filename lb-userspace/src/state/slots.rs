//! Stable backend slots: when a frontend's backend set changes, a backend
//! that stays keeps its slot. A removed backend's slot is filled by the
//! last slot's backend (swap-remove) and new backends are appended, so a
//! change costs map writes in proportion to what changed, not to the
//! number of backends.

use std::{collections::HashSet, hash::Hash};

/// The new slot order (slot k+1 holds element k) for the backends
/// `wanted`, starting from the old order `old`. `wanted` has no duplicates.
pub fn reassign<T: Copy + Eq + Hash>(old: &[T], wanted: &[T]) -> Vec<T> {
    let wanted_set: HashSet<T> = wanted.iter().copied().collect();
    let mut slots = old.to_vec();
    let mut i = 0;
    while i < slots.len() {
        if wanted_set.contains(&slots[i]) {
            i += 1;
        } else {
            // The last slot's backend moves into the hole; look at it next.
            slots.swap_remove(i);
        }
    }
    let kept: HashSet<T> = slots.iter().copied().collect();
    slots.extend(wanted.iter().copied().filter(|b| !kept.contains(b)));
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_backends_keep_their_slots_and_new_ones_are_appended() {
        assert_eq!(reassign(&[1, 2, 3], &[1, 2, 3, 4]), [1, 2, 3, 4]);
        assert_eq!(reassign(&[], &[5, 6]), [5, 6]);
    }

    #[test]
    fn a_removed_backend_is_replaced_by_the_last_one() {
        // Removing 2 of 5 rewrites one slot and drops the last: two writes.
        assert_eq!(reassign(&[1, 2, 3, 4, 5], &[1, 3, 4, 5]), [1, 5, 3, 4]);
    }

    #[test]
    fn removals_and_additions_together() {
        assert_eq!(reassign(&[1, 2, 3, 4], &[2, 4, 9]), [4, 2, 9]);
        assert_eq!(reassign(&[1, 2], &[]), Vec::<i32>::new());
    }

    #[test]
    fn only_changed_slots_differ() {
        let old: Vec<u32> = (0..100).collect();
        let wanted: Vec<u32> = (0..100).filter(|b| *b != 37).collect();
        let new = reassign(&old, &wanted);
        let changed = old.iter().zip(&new).filter(|(a, b)| a != b).count();
        assert_eq!((changed, new.len()), (1, 99));
    }
}
