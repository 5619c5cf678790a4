//! What differs between IPv4 and IPv6 for the flow logic: the address
//! type, the map types and the maps. Modules that do the same work for
//! both families (`conntrack`, `service`, `select`) are generic over
//! [`Family`]; each is compiled once per family, with no run-time cost,
//! and a packet's type (`parse::Packet<F>`) says which.

use lb_common::{
    address_filter,
    backend::{BackendV4, BackendV6},
    conntrack::{CtKeyV4, CtKeyV6, CtValueV4, CtValueV6, RouteCache},
    flow,
    service::{ServiceKeyV4, ServiceKeyV6, ServiceValue},
};

use aya_ebpf::btf_maps::lpm_trie::Key;

use crate::maps::{
    LB4_BACKENDS, LB4_CT, LB4_CT_SCRATCH, LB4_POD_CIDRS, LB4_SERVICES, LB6_BACKENDS, LB6_CT, LB6_CT_SCRATCH,
    LB6_POD_CIDRS, LB6_SERVICES,
};

/// An address family's types and maps.
pub trait Family: Copy {
    /// An address, network byte order.
    type Addr: Copy + PartialEq;
    /// The all-zero address.
    fn unspecified() -> Self::Addr;
    /// Whether the IP header has a checksum, which absorbs a change of
    /// its addresses (IPv4) or not (IPv6).
    const HEADER_CHECKSUM: bool;
    type ServiceKey: ServiceKey<Addr = Self::Addr>;
    type Backend: Backend<Addr = Self::Addr>;
    type CtKey;
    type CtValue: CtEntry<Addr = Self::Addr> + 'static;

    /// The 5-tuple hash new flows are balanced by.
    fn flow_hash(src: Self::Addr, dst: Self::Addr, sport: u16, dport: u16, proto: u8) -> u32;

    fn service(key: &Self::ServiceKey) -> Option<ServiceValue>;
    fn backend(id: u32) -> Option<Self::Backend>;
    /// Whether `address` is inside one of the cluster's Pod CIDRs.
    fn is_pod(address: Self::Addr) -> bool;
    /// `address`'s bit in `lb_common::address_filter`.
    fn filter_bit(address: Self::Addr) -> u32;

    fn ct_key(src: Self::Addr, dst: Self::Addr, sport: u16, dport: u16, proto: u8, direction: u8) -> Self::CtKey;
    /// The entry at `key`, in place.
    fn ct_entry(key: &Self::CtKey) -> Option<*mut Self::CtValue>;
    fn ct_insert(key: &Self::CtKey, value: &Self::CtValue, flags: u64) -> Result<(), i32>;
    /// This CPU's scratch value `slot` (`maps::LB4_CT_SCRATCH`).
    fn ct_scratch(slot: u32) -> Option<*mut Self::CtValue>;
}

/// A frontend key (`LB4_SERVICES` / `LB6_SERVICES`).
pub trait ServiceKey: Copy {
    type Addr: Copy + PartialEq;
    fn frontend(address: Self::Addr, port: u16, proto: u8) -> Self;
    fn slot(self, slot: u16) -> Self;
    /// The in-cluster entry of this frontend (`FLAG_SHORT_CIRCUIT`).
    fn in_cluster(self) -> Self;
    fn address(&self) -> Self::Addr;
    fn port(&self) -> u16;
}

/// A backend (`LB4_BACKENDS` / `LB6_BACKENDS`).
pub trait Backend: Copy {
    type Addr: Copy + PartialEq;
    fn address(&self) -> Self::Addr;
    fn port(&self) -> u16;
    fn proto(&self) -> u8;
}

/// A conntrack value (`LB4_CT` / `LB6_CT`): the fields the flow logic
/// reads and the datapath records on every packet.
pub trait CtEntry: Copy {
    type Addr: Copy + PartialEq;
    fn new(backend_id: u32, frontend_id: u32, frontend: (Self::Addr, u16), now_s: u32) -> Self;
    fn frontend(&self) -> (Self::Addr, u16);
    fn backend_id(&self) -> u32;
    /// The SNAT address and port; port 0: none.
    fn nat(&self) -> (Self::Addr, u16);
    fn set_nat(&mut self, address: Self::Addr, port: u16);
    fn flags(&self) -> u16;
    fn flags_mut(&mut self) -> &mut u16;
    fn last_seen_mut(&mut self) -> &mut u32;
    /// Where the entry at `entry` keeps its route (`route_cache`); a
    /// field's address, nothing is read.
    fn route(entry: *mut Self) -> *mut RouteCache;
}

/// An IPv6 address (`V6::Addr`) as the four 32-bit words, in memory
/// order, that the kernel's structures and helpers take
/// (`bpf_fib_lookup`, `bpf_sock_addr`, `bpf_csum_diff`).
#[inline(always)]
pub fn v6_words(address: u128) -> [u32; 4] {
    // SAFETY: any 16 bytes are four valid words.
    unsafe { core::mem::transmute::<u128, [u32; 4]>(address) }
}

/// The inverse of [`v6_words`].
#[inline(always)]
pub fn v6_from_words(words: [u32; 4]) -> u128 {
    // SAFETY: any four words are 16 valid bytes.
    unsafe { core::mem::transmute::<[u32; 4], u128>(words) }
}

#[derive(Clone, Copy)]
pub struct V4;

#[derive(Clone, Copy)]
pub struct V6;

/// Implements the entry traits for one family's `lb-common` types, whose
/// fields have the same names in both families. `$into` and `$from`
/// convert between the family's `Addr` and the types' address fields.
macro_rules! entry_traits {
    ($family:ty, $addr:ty, $into:path, $from:path, $key:ty, $backend:ty, $value:ty) => {
        impl ServiceKey for $key {
            type Addr = $addr;
            #[inline(always)]
            fn frontend(address: $addr, port: u16, proto: u8) -> Self {
                <$key>::frontend($from(address), port, proto)
            }
            #[inline(always)]
            fn slot(self, slot: u16) -> Self {
                <$key>::slot(self, slot)
            }
            #[inline(always)]
            fn in_cluster(self) -> Self {
                <$key>::in_cluster(self)
            }
            #[inline(always)]
            fn address(&self) -> $addr {
                $into(self.address)
            }
            #[inline(always)]
            fn port(&self) -> u16 {
                self.port
            }
        }

        impl Backend for $backend {
            type Addr = $addr;
            #[inline(always)]
            fn address(&self) -> $addr {
                $into(self.address)
            }
            #[inline(always)]
            fn port(&self) -> u16 {
                self.port
            }
            #[inline(always)]
            fn proto(&self) -> u8 {
                self.proto
            }
        }

        impl CtEntry for $value {
            type Addr = $addr;
            #[inline(always)]
            fn new(backend_id: u32, frontend_id: u32, frontend: ($addr, u16), now_s: u32) -> Self {
                Self {
                    backend_id,
                    frontend_id,
                    frontend_address: $from(frontend.0),
                    frontend_port: frontend.1,
                    flags: 0,
                    created_s: now_s,
                    last_seen_s: now_s,
                    nat_address: $from(<$family>::unspecified()),
                    nat_port: 0,
                    _pad: [0; 2],
                    route: RouteCache::default(),
                }
            }
            #[inline(always)]
            fn frontend(&self) -> ($addr, u16) {
                ($into(self.frontend_address), self.frontend_port)
            }
            #[inline(always)]
            fn backend_id(&self) -> u32 {
                self.backend_id
            }
            #[inline(always)]
            fn nat(&self) -> ($addr, u16) {
                ($into(self.nat_address), self.nat_port)
            }
            #[inline(always)]
            fn set_nat(&mut self, address: $addr, port: u16) {
                self.nat_address = $from(address);
                self.nat_port = port;
            }
            #[inline(always)]
            fn flags(&self) -> u16 {
                self.flags
            }
            #[inline(always)]
            fn flags_mut(&mut self) -> &mut u16 {
                &mut self.flags
            }
            #[inline(always)]
            fn last_seen_mut(&mut self) -> &mut u32 {
                &mut self.last_seen_s
            }
            #[inline(always)]
            fn route(entry: *mut Self) -> *mut RouteCache {
                // SAFETY: a field's address; nothing is read.
                unsafe { core::ptr::addr_of_mut!((*entry).route) }
            }
        }
    };
}

entry_traits!(V4, [u8; 4], same, same, ServiceKeyV4, BackendV4, CtValueV4);
entry_traits!(V6, u128, u128::from_ne_bytes, u128::to_ne_bytes, ServiceKeyV6, BackendV6, CtValueV6);

#[inline(always)]
fn same(address: [u8; 4]) -> [u8; 4] {
    address
}

impl Family for V4 {
    const HEADER_CHECKSUM: bool = true;
    type Addr = [u8; 4];
    type ServiceKey = ServiceKeyV4;
    type Backend = BackendV4;
    type CtKey = CtKeyV4;
    type CtValue = CtValueV4;

    #[inline(always)]
    fn unspecified() -> [u8; 4] {
        [0; 4]
    }

    #[inline(always)]
    fn flow_hash(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> u32 {
        flow::hash(src, dst, sport, dport, proto)
    }

    #[inline(always)]
    fn service(key: &ServiceKeyV4) -> Option<ServiceValue> {
        // SAFETY: copied out at once, before any map update.
        unsafe { LB4_SERVICES.get(*key) }.copied()
    }

    #[inline(always)]
    fn is_pod(address: [u8; 4]) -> bool {
        LB4_POD_CIDRS.get(&Key::new(32, address)).is_some()
    }

    #[inline(always)]
    fn filter_bit(address: [u8; 4]) -> u32 {
        address_filter::bit_v4(address)
    }

    #[inline(always)]
    fn backend(id: u32) -> Option<BackendV4> {
        // SAFETY: copied out at once.
        unsafe { LB4_BACKENDS.get(id) }.copied()
    }

    #[inline(always)]
    fn ct_key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8, direction: u8) -> CtKeyV4 {
        CtKeyV4 { src_address: src, dst_address: dst, src_port: sport, dst_port: dport, proto, direction, _pad: [0; 2] }
    }

    #[inline(always)]
    fn ct_entry(key: &CtKeyV4) -> Option<*mut CtValueV4> {
        LB4_CT.get_ptr_mut(key)
    }

    #[inline(always)]
    fn ct_insert(key: &CtKeyV4, value: &CtValueV4, flags: u64) -> Result<(), i32> {
        LB4_CT.insert(key, value, flags)
    }

    #[inline(always)]
    fn ct_scratch(slot: u32) -> Option<*mut CtValueV4> {
        LB4_CT_SCRATCH.get_ptr_mut(slot)
    }
}

impl Family for V6 {
    const HEADER_CHECKSUM: bool = false;
    /// The address's bytes in memory order (`u128::from_ne_bytes`): a
    /// byte array has alignment 1, which the compiler copies and compares
    /// a byte at a time; a `u128` moves in two 8-byte halves.
    type Addr = u128;
    type ServiceKey = ServiceKeyV6;
    type Backend = BackendV6;
    type CtKey = CtKeyV6;
    type CtValue = CtValueV6;

    #[inline(always)]
    fn unspecified() -> u128 {
        0
    }

    #[inline(always)]
    fn flow_hash(src: u128, dst: u128, sport: u16, dport: u16, proto: u8) -> u32 {
        flow::hash(flow::fold_u128(src), flow::fold_u128(dst), sport, dport, proto)
    }

    #[inline(always)]
    fn service(key: &ServiceKeyV6) -> Option<ServiceValue> {
        // SAFETY: copied out at once, before any map update.
        unsafe { LB6_SERVICES.get(key) }.copied()
    }

    #[inline(always)]
    fn is_pod(address: u128) -> bool {
        LB6_POD_CIDRS.get(&Key::new(128, address.to_ne_bytes())).is_some()
    }

    #[inline(always)]
    fn filter_bit(address: u128) -> u32 {
        address_filter::bit_v6(address.to_ne_bytes())
    }

    #[inline(always)]
    fn backend(id: u32) -> Option<BackendV6> {
        // SAFETY: copied out at once.
        unsafe { LB6_BACKENDS.get(id) }.copied()
    }

    #[inline(always)]
    fn ct_key(src: u128, dst: u128, sport: u16, dport: u16, proto: u8, direction: u8) -> CtKeyV6 {
        CtKeyV6 {
            src_address: src.to_ne_bytes(),
            dst_address: dst.to_ne_bytes(),
            src_port: sport,
            dst_port: dport,
            proto,
            direction,
            _pad: [0; 2],
        }
    }

    #[inline(always)]
    fn ct_entry(key: &CtKeyV6) -> Option<*mut CtValueV6> {
        LB6_CT.get_ptr_mut(key)
    }

    #[inline(always)]
    fn ct_insert(key: &CtKeyV6, value: &CtValueV6, flags: u64) -> Result<(), i32> {
        LB6_CT.insert(key, value, flags)
    }

    #[inline(always)]
    fn ct_scratch(slot: u32) -> Option<*mut CtValueV6> {
        LB6_CT_SCRATCH.get_ptr_mut(slot)
    }
}
