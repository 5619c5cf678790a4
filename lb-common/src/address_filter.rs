//! A per-address prefilter for frontend destinations, next to the
//! per-port one (`port_filter`): a packet to a port some frontend uses is
//! common (pods talk to the internet on 443 and 80), a packet to one of
//! the frontend addresses much rarer. One bit per hash of an address, in
//! an array the kernel inlines: a clear bit tells the datapath that no
//! frontend has the packet's destination address, so it passes the packet
//! without the conntrack and Service lookups.
//!
//! The bits are a superset, as the port filter's: a set bit only means
//! "look it up" (another address may share it). The agent sets an
//! address's bit before it writes the frontend entries that need it and
//! clears it only after they are gone. Flows tracked through a removed
//! frontend end with it, as they do once its port or backends go.

/// Words of 64 bits in `LB_ADDR_FILTER`: 4 Mi bits (512 KiB), so 100,000
/// frontend addresses leave about 2 % of other addresses looked up.
pub const WORDS: u32 = 1 << 16;
const BITS_LOG2: u32 = 22;

/// The filter bit of an IPv4 address (network byte order): a
/// multiplicative hash, which spreads consecutive addresses (ClusterIPs
/// are handed out from one range) over the whole filter.
#[inline(always)]
pub const fn bit_v4(address: [u8; 4]) -> u32 {
    mix(u32::from_be_bytes(address))
}

/// The filter bit of an IPv6 address (network byte order): its four
/// words folded into one, then hashed as an IPv4 address is.
#[inline(always)]
pub const fn bit_v6(address: [u8; 16]) -> u32 {
    let a = u32::from_be_bytes([address[0], address[1], address[2], address[3]]);
    let b = u32::from_be_bytes([address[4], address[5], address[6], address[7]]);
    let c = u32::from_be_bytes([address[8], address[9], address[10], address[11]]);
    let d = u32::from_be_bytes([address[12], address[13], address[14], address[15]]);
    mix(a ^ b.rotate_left(8) ^ c.rotate_left(16) ^ d.rotate_left(24))
}

#[inline(always)]
const fn mix(value: u32) -> u32 {
    value.wrapping_mul(0x9e37_79b1) >> (32 - BITS_LOG2)
}

/// The word holding `bit`, and the bit's mask in it.
#[inline(always)]
pub const fn word_and_mask(bit: u32) -> (u32, u64) {
    (bit >> 6, 1 << (bit & 63))
}

const _: () = assert!(1 << BITS_LOG2 == WORDS as u64 * 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bit_is_inside_the_filter() {
        for address in [[0, 0, 0, 0], [10, 96, 0, 1], [255, 255, 255, 255]] {
            assert!(word_and_mask(bit_v4(address)).0 < WORDS);
        }
        assert!(word_and_mask(bit_v6([0xff; 16])).0 < WORDS);
    }

    #[test]
    fn ten_thousand_consecutive_cluster_ips_leave_most_other_addresses_clear() {
        let mut set = [0u64; WORDS as usize];
        for i in 0..10_000u32 {
            let (word, mask) = word_and_mask(bit_v4((0x0a60_0000 + i).to_be_bytes()));
            set[word as usize] |= mask;
        }
        // Addresses of the Pod range, none a frontend.
        let hits = (0..100_000u32)
            .filter(|i| {
                let (word, mask) = word_and_mask(bit_v4((0x0af4_0000 + i).to_be_bytes()));
                set[word as usize] & mask != 0
            })
            .count();
        assert!(hits < 1_000, "{hits} of 100,000 other addresses would be looked up");
    }
}
