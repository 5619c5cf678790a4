//! One's-complement checksum arithmetic for NAT (RFC 1071, RFC 1624), on
//! 16-bit words read in memory order, as the kernel's `csum_*` functions
//! read them: sums do not depend on byte order as long as every term is
//! read the same way.
//!
//! At tc, the update of the L4 checksum of a packet the datapath
//! translates depends on the sk_buff's checksum state (`ip_summed`): a
//! complete checksum (`CHECKSUM_NONE`, `_UNNECESSARY`, `_COMPLETE`) changes
//! with every rewritten field; a `CHECKSUM_PARTIAL` packet's field holds
//! only the pseudo-header sum, uncomplemented, so it changes with
//! addresses and not at all with ports; and a `CHECKSUM_COMPLETE`
//! packet's received sum (`skb->csum`) must follow an address change too.
//! The kernel's `bpf_l4_csum_replace` knows the state, but each call costs
//! about 20 ns on a host whose returns go through a mitigation thunk.
//!
//! Where the datapath can read the state (`of_ip_summed`, through
//! `skb_checksum`; XDP frames are always complete), it updates the field
//! itself and calls no helper, except for `CHECKSUM_COMPLETE`. Where it
//! cannot, it hands the kernel the address change (pseudo header) in one
//! call and reads back what the kernel wrote: the two states give
//! different results (`revealed`) whenever the addresses' sum changes,
//! which tells the state exactly; the ports are then updated here, the way
//! the kernel would have (`applied_complete`, or nothing for a partial
//! checksum). When the result cannot tell (the address words sum to the
//! same value, or no address changed), the ports go through the helper
//! too.

/// Folds a 32-bit sum of 16-bit words to 16 bits, end-around carry, not
/// complemented. 0 only for a sum of 0.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum difference of a field changing `from` → `to`: the sum of
/// the old words complemented and the new words. At most 0x3fffc, so
/// several differences add up in a `u32` without overflow.
#[inline(always)]
pub const fn diff4(from: [u8; 4], to: [u8; 4]) -> u32 {
    diff2([from[0], from[1]], [to[0], to[1]]) + diff2([from[2], from[3]], [to[2], to[3]])
}

/// `diff4` for a 16-byte field (an IPv6 address). At most 0xffff0.
#[inline(always)]
pub const fn diff16(from: [u8; 16], to: [u8; 16]) -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while i < 16 {
        sum += diff2([from[i], from[i + 1]], [to[i], to[i + 1]]);
        i += 2;
    }
    sum
}

/// `diff4` for a 2-byte field.
#[inline(always)]
pub const fn diff2(from: [u8; 2], to: [u8; 2]) -> u32 {
    (!u16::from_ne_bytes(from)) as u32 + u16::from_ne_bytes(to) as u32
}

/// A complete checksum field `field` after its data changed by `diff`
/// (RFC 1624 eqn. 3): what the kernel writes for a packet that is not
/// `CHECKSUM_PARTIAL` (`inet_proto_csum_replace_by_diff`). The kernel's
/// sum includes the complemented field widened to 32 bits (0xffff in the
/// upper half), so it is never 0: nor is this one.
#[inline(always)]
pub const fn applied_complete(field: u16, diff: u32) -> u16 {
    !fold(0xffff + (!field) as u32 + (diff & 0xffff) + (diff >> 16))
}

/// A `CHECKSUM_PARTIAL` packet's field (the uncomplemented pseudo-header
/// sum) after a pseudo-header field changed by `diff`: what the kernel
/// writes for such a packet.
#[inline(always)]
pub const fn applied_partial(field: u16, diff: u32) -> u16 {
    fold(field as u32 + (diff & 0xffff) + (diff >> 16))
}

/// `BPF_F_MARK_MANGLED_0`, as the kernel applies it to UDP: a field of 0
/// ("no checksum") is left alone, and a computed 0 is written as 0xffff.
#[inline(always)]
const fn mangled(before: u16, after: u16) -> u16 {
    if before == 0 {
        0
    } else if after == 0 {
        0xffff
    } else {
        after
    }
}

/// The checksum state a packet's L4 checksum field is in, as far as NAT
/// cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Complete (`CHECKSUM_NONE`, `_UNNECESSARY`, `_COMPLETE`): every
    /// rewritten field changes it.
    Complete,
    /// `CHECKSUM_PARTIAL`: only pseudo-header fields change it.
    Partial,
    /// Not told apart, or a received sum to keep: let the kernel update
    /// the rest.
    Unknown,
}

/// The state a tc packet's `ip_summed` gives. `CHECKSUM_COMPLETE` is
/// `Unknown` on purpose: its received sum follows an address change only
/// through the helper.
#[inline(always)]
pub const fn of_ip_summed(ip_summed: u8) -> State {
    use crate::skb_checksum::{CHECKSUM_NONE, CHECKSUM_PARTIAL, CHECKSUM_UNNECESSARY};
    match ip_summed {
        CHECKSUM_NONE | CHECKSUM_UNNECESSARY => State::Complete,
        CHECKSUM_PARTIAL => State::Partial,
        _ => State::Unknown,
    }
}

/// The state the kernel's update of a field from `before` to `after`,
/// for a pseudo-header change of `diff` (`BPF_F_PSEUDO_HDR`), reveals.
/// `udp`: the update was made with `BPF_F_MARK_MANGLED_0`.
#[inline(always)]
pub const fn revealed(before: u16, after: u16, diff: u32, udp: bool) -> State {
    let (mut complete, mut partial) = (applied_complete(before, diff), applied_partial(before, diff));
    if udp {
        complete = mangled(before, complete);
        partial = mangled(before, partial);
    }
    if complete == partial {
        State::Unknown
    } else if after == complete {
        State::Complete
    } else if after == partial {
        State::Partial
    } else {
        State::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's `csum_add`: 32-bit add, end-around carry.
    fn csum_add(a: u32, b: u32) -> u32 {
        let (sum, carry) = a.overflowing_add(b);
        sum + u32::from(carry)
    }

    /// The kernel's `csum_fold`: folded and complemented.
    fn csum_fold(sum: u32) -> u16 {
        !fold(sum)
    }

    /// `inet_proto_csum_replace_by_diff` on a field, transcribed from
    /// net/core/utils.c, then `bpf_l4_csum_replace`'s mangled-0 rule.
    fn kernel(field: u16, diff: u32, partial: bool, udp: bool) -> u16 {
        if udp && field == 0 {
            return 0;
        }
        let after = if partial {
            !csum_fold(csum_add(diff, u32::from(field)))
        } else {
            csum_fold(csum_add(diff, !u32::from(field)))
        };
        if udp && after == 0 { 0xffff } else { after }
    }

    /// A full checksum over `words`, complemented, as a sender writes it.
    fn checksum(words: &[u16]) -> u16 {
        !fold(words.iter().map(|w| u32::from(*w)).sum())
    }

    /// Deterministic pseudo-random values (xorshift).
    fn values(seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed;
        core::iter::from_fn(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Some(x)
        })
    }

    #[test]
    fn updates_match_the_kernel_on_every_field_and_difference() {
        let mut random = values(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200_000 {
            let r = random.next().unwrap();
            let field = r as u16;
            let from = ((r >> 16) as u32).to_ne_bytes();
            let to = random.next().unwrap().to_ne_bytes();
            let diff = diff4(from, [to[0], to[1], to[2], to[3]]) + diff4([to[4], to[5], to[6], to[7]], from);
            assert_eq!(applied_complete(field, diff), kernel(field, diff, false, false), "{field:#x} {diff:#x}");
            assert_eq!(applied_partial(field, diff), kernel(field, diff, true, false), "{field:#x} {diff:#x}");
        }
        for field in [0, 1, 0xfffe, 0xffff] {
            for diff in [0, 0xffff, 0x1_fffe, 0x3_fffc] {
                assert_eq!(applied_complete(field, diff), kernel(field, diff, false, false));
                assert_eq!(applied_partial(field, diff), kernel(field, diff, true, false));
            }
        }
    }

    #[test]
    fn an_updated_checksum_is_the_checksum_of_the_new_data() {
        let mut random = values(7);
        for _ in 0..10_000 {
            let mut words = [0u16; 8];
            for word in &mut words {
                *word = random.next().unwrap() as u16;
            }
            let before = checksum(&words);
            let (old, new) = ([words[2], words[3]], [random.next().unwrap() as u16, random.next().unwrap() as u16]);
            let bytes = |w: [u16; 2]| {
                let (a, b) = (w[0].to_ne_bytes(), w[1].to_ne_bytes());
                [a[0], a[1], b[0], b[1]]
            };
            let diff = diff4(bytes(old), bytes(new));
            words[2] = new[0];
            words[3] = new[1];
            // Equal as checksums: 0 and 0xffff are the same one's-complement value.
            let (updated, recomputed) = (applied_complete(before, diff), checksum(&words));
            assert!(updated == recomputed || (updated | recomputed == 0xffff && updated & recomputed == 0));
        }
    }

    #[test]
    fn the_kernel_result_tells_a_partial_checksum_from_a_complete_one() {
        let mut random = values(11);
        for _ in 0..100_000 {
            let r = random.next().unwrap();
            let field = r as u16;
            let udp = r & (1 << 20) != 0;
            let diff = diff4(((r >> 24) as u32).to_ne_bytes(), ((r >> 40) as u32).to_ne_bytes());
            for partial in [false, true] {
                let after = kernel(field, diff, partial, udp);
                let expected = if partial { State::Partial } else { State::Complete };
                let state = revealed(field, after, diff, udp);
                assert!(state == expected || state == State::Unknown, "{field:#x} {diff:#x} {udp}");
                if state == State::Unknown {
                    assert_eq!(kernel(field, diff, true, udp), kernel(field, diff, false, udp), "only when alike");
                }
            }
        }
    }

    #[test]
    fn only_states_updated_without_the_helper_are_read_from_ip_summed() {
        use crate::skb_checksum::*;
        assert_eq!(of_ip_summed(CHECKSUM_NONE), State::Complete);
        assert_eq!(of_ip_summed(CHECKSUM_UNNECESSARY), State::Complete);
        assert_eq!(of_ip_summed(CHECKSUM_PARTIAL), State::Partial);
        assert_eq!(of_ip_summed(CHECKSUM_COMPLETE), State::Unknown);
    }

    #[test]
    fn a_16_byte_difference_is_its_words_differences() {
        let (from, to) = ([0x20u8; 16], core::array::from_fn(|i| i as u8 * 17));
        let words: u32 =
            (0..4).map(|w| diff4(from[4 * w..][..4].try_into().unwrap(), to[4 * w..][..4].try_into().unwrap())).sum();
        assert_eq!(diff16(from, to), words);
        let field = 0x4321;
        assert_eq!(applied_complete(field, diff16(from, to)), kernel(field, diff16(from, to), false, false));
    }

    #[test]
    fn an_unchanged_address_sum_or_an_absent_udp_checksum_tells_nothing() {
        // 10.96.0.90 → 10.90.0.96: the same words, swapped.
        let diff = diff4([10, 96, 0, 90], [0, 90, 10, 96]);
        let after = kernel(0x1234, diff, false, false);
        assert_eq!(revealed(0x1234, after, diff, false), State::Unknown);
        let diff = diff4([10, 96, 0, 90], [10, 244, 1, 7]);
        assert_eq!(revealed(0, 0, diff, true), State::Unknown, "UDP without checksum");
    }
}
