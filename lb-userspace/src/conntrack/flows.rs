//! The two entries of one flow: which key an entry's partner has.
//!
//! A reply entry names its flow's original key by itself (it holds the
//! frontend, and for a source-NATed flow the client). An original entry
//! names only a backend id: its reply key needs that backend's address.

use std::{fmt::Debug, hash::Hash, net::SocketAddr};

use aya::Pod;
use lb_common::{
    backend::{BackendV4, BackendV6},
    conntrack::{CtKeyV4, CtKeyV6, CtValueV4, CtValueV6, DIR_ORIGINAL, DIR_REPLY, RouteCache},
};

/// The fields of a conntrack entry the garbage collection reads, the same
/// in both families.
pub trait CtEntry: Pod + Copy + Debug {
    fn flags(&self) -> u16;
    fn last_seen_s(&self) -> u32;
    fn created_s(&self) -> u32;
    fn frontend_id(&self) -> u32;
    fn backend_id(&self) -> u32;
    /// The address standing in for the client, for a source-NATed flow.
    fn nat(&self) -> Option<SocketAddr>;
    /// The route the entry keeps.
    fn kept_route(&self) -> RouteCache;
}

/// A conntrack key of one family (`CtKeyV4`, `CtKeyV6`), with the value
/// and backend types of that family and how its flow's two keys name
/// each other. The IPv6 entries hold the same fields as the IPv4 ones,
/// with 16-byte addresses, so one body serves both (see `family!`).
pub trait FlowKey: Pod + Copy + Eq + Hash + Debug {
    type Value: CtEntry;
    type Backend: Pod + Copy;

    fn proto(&self) -> u8;
    fn direction(&self) -> u8;
    fn source(&self) -> SocketAddr;
    fn destination(&self) -> SocketAddr;
    fn backend_address(backend: &Self::Backend) -> SocketAddr;
    /// See [`original_key`].
    fn original_of(&self, value: &Self::Value) -> Self;
    /// See [`reply_key`].
    fn reply_of(&self, value: &Self::Value, backend: &Self::Backend) -> Self;
    /// See [`partners`].
    fn are_partners(original: (&Self, &Self::Value), reply: (&Self, &Self::Value)) -> bool;
}

/// The original-direction key of the flow `key` belongs to (`key` itself
/// for an original entry).
pub fn original_key<K: FlowKey>(key: &K, value: &K::Value) -> K {
    key.original_of(value)
}

/// The reply-direction key of an original entry whose backend is `backend`.
pub fn reply_key<K: FlowKey>(key: &K, value: &K::Value, backend: &K::Backend) -> K {
    key.reply_of(value, backend)
}

/// Whether `reply` is the reply entry of the flow whose original entry is
/// `original`: not a leftover of an earlier flow with the same client
/// tuple, re-balanced to another backend since.
pub fn partners<K: FlowKey>(original: (&K, &K::Value), reply: (&K, &K::Value)) -> bool {
    K::are_partners(original, reply)
}

macro_rules! family {
    ($key:ident, $value:ident, $backend:ident) => {
        impl CtEntry for $value {
            fn flags(&self) -> u16 {
                self.flags
            }

            fn last_seen_s(&self) -> u32 {
                self.last_seen_s
            }

            fn created_s(&self) -> u32 {
                self.created_s
            }

            fn nat(&self) -> Option<SocketAddr> {
                self.has_snat().then(|| SocketAddr::new(self.nat_address.into(), self.nat_port))
            }

            fn frontend_id(&self) -> u32 {
                self.frontend_id
            }

            fn backend_id(&self) -> u32 {
                self.backend_id
            }

            fn kept_route(&self) -> RouteCache {
                self.route
            }
        }

        impl FlowKey for $key {
            type Value = $value;
            type Backend = $backend;

            fn proto(&self) -> u8 {
                self.proto
            }

            fn direction(&self) -> u8 {
                self.direction
            }

            fn source(&self) -> SocketAddr {
                SocketAddr::new(self.src_address.into(), self.src_port)
            }

            fn destination(&self) -> SocketAddr {
                SocketAddr::new(self.dst_address.into(), self.dst_port)
            }

            fn backend_address(backend: &$backend) -> SocketAddr {
                SocketAddr::new(backend.address.into(), backend.port)
            }

            fn original_of(&self, value: &$value) -> Self {
                if self.direction == DIR_ORIGINAL {
                    return *self;
                }
                // Replies go to the client, or for a source-NATed flow to
                // the node address standing in for it; the entry then
                // holds the client.
                let (client, client_port) = if value.has_snat() {
                    (value.nat_address, value.nat_port)
                } else {
                    (self.dst_address, self.dst_port)
                };
                $key {
                    src_address: client,
                    dst_address: value.frontend_address,
                    src_port: client_port,
                    dst_port: value.frontend_port,
                    proto: self.proto,
                    direction: DIR_ORIGINAL,
                    _pad: [0; 2],
                }
            }

            fn reply_of(&self, value: &$value, backend: &$backend) -> Self {
                // The backend answers the address it saw as source: the
                // client's, or the node's for a source-NATed flow.
                let (to, to_port) = if value.has_snat() {
                    (value.nat_address, value.nat_port)
                } else {
                    (self.src_address, self.src_port)
                };
                $key {
                    src_address: backend.address,
                    dst_address: to,
                    src_port: backend.port,
                    dst_port: to_port,
                    proto: self.proto,
                    direction: DIR_REPLY,
                    _pad: [0; 2],
                }
            }

            fn are_partners(original: (&Self, &$value), reply: (&Self, &$value)) -> bool {
                let (ok, ov) = original;
                let (rk, rv) = reply;
                rk.original_of(rv) == *ok && ov.backend_id == rv.backend_id && ov.frontend_id == rv.frontend_id && {
                    let (to, to_port) =
                        if ov.has_snat() { (ov.nat_address, ov.nat_port) } else { (ok.src_address, ok.src_port) };
                    (rk.dst_address, rk.dst_port) == (to, to_port)
                }
            }
        }
    };
}

family!(CtKeyV4, CtValueV4, BackendV4);
family!(CtKeyV6, CtValueV6, BackendV6);

#[cfg(test)]
mod tests {
    use lb_common::proto;

    use super::*;

    const CLIENT: ([u8; 4], u16) = ([10, 0, 1, 2], 40000);
    const FRONTEND: ([u8; 4], u16) = ([10, 96, 0, 10], 80);
    const NODE: ([u8; 4], u16) = ([192, 168, 0, 10], 61000);
    const BACKEND: BackendV4 = BackendV4 { address: [10, 244, 1, 2], port: 8080, proto: proto::TCP, flags: 0 };

    fn k(src: ([u8; 4], u16), dst: ([u8; 4], u16), direction: u8) -> CtKeyV4 {
        CtKeyV4 {
            src_address: src.0,
            dst_address: dst.0,
            src_port: src.1,
            dst_port: dst.1,
            proto: proto::TCP,
            direction,
            _pad: [0; 2],
        }
    }

    fn value(nat: Option<([u8; 4], u16)>) -> CtValueV4 {
        let (nat_address, nat_port) = nat.unwrap_or(([0; 4], 0));
        CtValueV4 {
            backend_id: 7,
            frontend_id: 3,
            frontend_address: FRONTEND.0,
            frontend_port: FRONTEND.1,
            nat_address,
            nat_port,
            ..CtValueV4::default()
        }
    }

    const B: ([u8; 4], u16) = (BACKEND.address, BACKEND.port);

    #[test]
    fn a_plain_flows_entries_name_each_other() {
        let (original, reply) =
            ((k(CLIENT, FRONTEND, DIR_ORIGINAL), value(None)), (k(B, CLIENT, DIR_REPLY), value(None)));
        assert_eq!(reply_key(&original.0, &original.1, &BACKEND), reply.0);
        assert_eq!(original_key(&reply.0, &reply.1), original.0);
        assert_eq!(original_key(&original.0, &original.1), original.0);
        assert!(partners((&original.0, &original.1), (&reply.0, &reply.1)));
    }

    #[test]
    fn a_source_nated_flows_entries_name_each_other_through_the_node_address() {
        // The original entry holds the node address and port the backend
        // sees; the reply entry holds the client to restore.
        let original = (k(CLIENT, FRONTEND, DIR_ORIGINAL), value(Some(NODE)));
        let reply = (k(B, NODE, DIR_REPLY), value(Some(CLIENT)));
        assert_eq!(reply_key(&original.0, &original.1, &BACKEND), reply.0);
        assert_eq!(original_key(&reply.0, &reply.1), original.0);
        assert!(partners((&original.0, &original.1), (&reply.0, &reply.1)));
    }

    #[test]
    fn a_reply_entry_left_by_an_earlier_backend_is_not_the_partner() {
        let original = (k(CLIENT, FRONTEND, DIR_ORIGINAL), CtValueV4 { backend_id: 8, ..value(None) });
        let stale = (k(B, CLIENT, DIR_REPLY), value(None));
        assert_eq!(original_key(&stale.0, &stale.1), original.0);
        assert!(!partners((&original.0, &original.1), (&stale.0, &stale.1)));
    }

    /// `CtKeyV6` with the addresses given (IPv6 `::a:b`-style, last two
    /// bytes) and TCP.
    fn k6(src: ([u8; 2], u16), dst: ([u8; 2], u16), direction: u8) -> CtKeyV6 {
        let address = |[a, b]: [u8; 2]| {
            let mut address = [0u8; 16];
            address[0] = 0xfd;
            address[14..].copy_from_slice(&[a, b]);
            address
        };
        CtKeyV6 {
            src_address: address(src.0),
            dst_address: address(dst.0),
            src_port: src.1,
            dst_port: dst.1,
            proto: proto::TCP,
            direction,
            _pad: [0; 2],
        }
    }

    #[test]
    fn ipv6_entries_name_each_other_as_ipv4_ones_do() {
        let (client, frontend, backend) = (([0, 1], 40000), ([0, 0xa], 80), ([1, 2], 8080));
        let original = k6(client, frontend, DIR_ORIGINAL);
        let reply = k6(backend, client, DIR_REPLY);
        let value = CtValueV6 {
            backend_id: 7,
            frontend_id: 3,
            frontend_address: original.dst_address,
            frontend_port: 80,
            ..CtValueV6::default()
        };
        let b = BackendV6 { address: reply.src_address, port: 8080, proto: proto::TCP, flags: 0 };
        assert_eq!(reply_key(&original, &value, &b), reply);
        assert_eq!(original_key(&reply, &value), original);
        assert!(partners((&original, &value), (&reply, &value)));
        assert_eq!(original.source().to_string(), "[fd00::1]:40000");
    }
}
