//! `loadBalancerSourceRanges`: which client addresses may reach a
//! LoadBalancer frontend. One LPM trie for all frontends; a key's data is
//! the frontend id followed by the client address, so an entry of prefix
//! length 32 + n means "this frontend, sources inside this /n" and one
//! longest-prefix lookup answers for any number of ranges.

use crate::user_pod;

/// Key of `LB4_SRC_RANGES`, laid out as the kernel's LPM trie key
/// (`struct bpf_lpm_trie_key_u8`): the prefix length, then the data.
/// 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKeyV4 {
    /// Bits of `frontend_id` and `address` that must match: 32 + the
    /// range's prefix length. Host byte order.
    pub prefix_len: u32,
    /// The frontend (`ServiceValue::frontend_id`). Big-endian, so the
    /// trie's bitwise match compares it most significant bit first.
    pub frontend_id: [u8; 4],
    /// The range's address. Network byte order.
    pub address: [u8; 4],
}
const _: () = assert!(size_of::<SourceRangeKeyV4>() == 12);

/// Value of `LB4_SRC_RANGES` entries: the range is allowed.
pub const ALLOWED: u8 = 1;

impl SourceRangeKeyV4 {
    /// The entry for a range `address/len` of a frontend.
    pub const fn range(frontend_id: u32, address: [u8; 4], len: u8) -> Self {
        Self { prefix_len: 32 + len as u32, frontend_id: frontend_id.to_be_bytes(), address }
    }

    /// The lookup key for one client address.
    pub const fn client(frontend_id: u32, address: [u8; 4]) -> Self {
        Self::range(frontend_id, address, 32)
    }

    /// The trie data (frontend id, address), as the datapath builds it.
    pub const fn data(&self) -> [u8; 8] {
        let [a, b, c, d] = self.frontend_id;
        let [e, f, g, h] = self.address;
        [a, b, c, d, e, f, g, h]
    }
}

/// Key of `LB6_SRC_RANGES`: `SourceRangeKeyV4` with a 16-byte address
/// (prefix length 32 + the range's, up to 128). 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKeyV6 {
    pub prefix_len: u32,
    /// Big-endian, as in `SourceRangeKeyV4`.
    pub frontend_id: [u8; 4],
    /// Network byte order.
    pub address: [u8; 16],
}
const _: () = assert!(size_of::<SourceRangeKeyV6>() == 24);

impl SourceRangeKeyV6 {
    /// The entry for a range `address/len` of a frontend.
    pub const fn range(frontend_id: u32, address: [u8; 16], len: u8) -> Self {
        Self { prefix_len: 32 + len as u32, frontend_id: frontend_id.to_be_bytes(), address }
    }

    /// The trie data (frontend id, address).
    pub fn data(&self) -> [u8; 20] {
        let mut data = [0u8; 20];
        data[..4].copy_from_slice(&self.frontend_id);
        data[4..].copy_from_slice(&self.address);
        data
    }
}

user_pod!(SourceRangeKeyV4, SourceRangeKeyV6);
