//! The backend table: backend id → address and port. Ids are allocated by
//! the agent and stay stable while the backend exists, so conntrack entries
//! (which store the id) keep pointing at the same endpoint; when an id
//! disappears, flows pinned to it are re-balanced.

use crate::user_pod;

/// Value of `LB4_BACKENDS` (key: backend id, `u32`, host byte order). 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendV4 {
    /// Endpoint address. Network byte order.
    pub address: [u8; 4],
    /// Endpoint (target) port. Host byte order.
    pub port: u16,
    /// IANA protocol number.
    pub proto: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
}
const _: () = assert!(size_of::<BackendV4>() == 8);

/// The endpoint is terminating (serving but not ready): existing flows
/// stay, new flows only land here when no ready endpoint exists.
pub const FLAG_TERMINATING: u8 = 1 << 0;

/// The endpoint runs on this node. External traffic to a backend on
/// another node is source-NATed to this node's address, so its replies come
/// back through here to be translated; a local backend's replies pass here
/// anyway, so the client's address is kept.
pub const FLAG_LOCAL: u8 = 1 << 1;

/// Value of `LB6_BACKENDS` (key: backend id, from the same id space as
/// `LB4_BACKENDS`). `BackendV4` with a 16-byte address. 20 bytes, 4-byte
/// aligned (see `ServiceKeyV6`).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendV6 {
    /// Network byte order.
    pub address: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}
const _: () = assert!(size_of::<BackendV6>() == 20);

user_pod!(BackendV4, BackendV6);
