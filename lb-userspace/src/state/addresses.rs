//! Address-filter bits kept by reference counts: an address's bit
//! (`lb_common::address_filter`) is set while some frontend has that
//! address. Addresses sharing a bit share its count.

use std::collections::HashMap;

use lb_common::address_filter;

use super::family::ServiceKey;

#[derive(Debug, Default)]
pub struct AddressRefs {
    /// Per bit: the frontends whose address has it.
    refs: HashMap<u32, u32>,
    /// Per word: its bits with a count above zero.
    words: HashMap<u32, u64>,
}

impl AddressRefs {
    /// Adds or removes one frontend at `key`'s address; returns the word
    /// it changed and the word's bits afterwards, if any bit changed.
    pub fn change(&mut self, key: ServiceKey, add: bool) -> Option<(u32, u64)> {
        let bit = key.address_filter_bit();
        let count = self.refs.entry(bit).or_default();
        let before = *count;
        *count = if add { before + 1 } else { before.saturating_sub(1) };
        let after = *count;
        if after == 0 {
            self.refs.remove(&bit);
        }
        if (before == 0) == (after == 0) {
            return None;
        }
        let (word, mask) = address_filter::word_and_mask(bit);
        let bits = self.words.entry(word).or_default();
        *bits = if after > 0 { *bits | mask } else { *bits & !mask };
        let bits = *bits;
        if bits == 0 {
            self.words.remove(&word);
        }
        Some((word, bits))
    }
}
