//! The flow hash that picks a new flow's backend: the datapath computes
//! it per packet, the agent and the tests compute it to tell which slot
//! or Maglev position a given flow lands on.

/// murmur3's 32-bit finaliser: cheap, and spreads nearby tuples evenly.
#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a 5-tuple: addresses in network byte order, ports in host
/// byte order (as the datapath parses them).
#[inline(always)]
pub fn hash(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let ports = (u32::from(sport) << 16) | u32::from(dport);
    let mut h = mix(u32::from_ne_bytes(src) ^ 0x9e37_79b9);
    h = mix(h ^ u32::from_ne_bytes(dst));
    h = mix(h ^ ports);
    mix(h ^ u32::from(proto))
}

/// An IPv6 address folded to 32 bits, so IPv6 tuples hash through the
/// same function as IPv4 ones: byte i of the result is the XOR of bytes
/// i, 4+i, 8+i and 12+i. The address is held as a `u128` of its bytes
/// in memory order (`u128::from_ne_bytes`), as the datapath holds it; on
/// a little-endian machine (BPF's `bpfel`, the agent's hosts) its low 32
/// bits are the first four bytes.
#[inline(always)]
pub fn fold_u128(address: u128) -> [u8; 4] {
    let halves = address ^ (address >> 64);
    ((halves ^ (halves >> 32)) as u32).to_ne_bytes()
}

/// Hash of a client address alone: ClientIP affinity frontends balance
/// a client's first flow by it, so every node (and every flow of the
/// client) picks the same slot or Maglev position until the backends change.
#[inline(always)]
pub fn client(src: [u8; 4]) -> u32 {
    mix(mix(u32::from_ne_bytes(src) ^ 0x9e37_79b9))
}

/// Hash of a socket cookie (the socket-level hooks, where no source port
/// exists yet at connect time).
#[inline(always)]
pub fn socket(cookie: u64) -> u32 {
    mix(mix(cookie as u32 ^ 0x9e37_79b9) ^ (cookie >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_xors_the_address_s_four_words_byte_by_byte() {
        let address = [0xfd, 0, 0, 0, 0, 0, 0, 0x01, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
        let expected: [u8; 4] =
            core::array::from_fn(|i| address[i] ^ address[4 + i] ^ address[8 + i] ^ address[12 + i]);
        assert_eq!(fold_u128(u128::from_ne_bytes(address)), expected);
        assert_ne!(expected, [0; 4]);
    }
}
