//! The socket-level reverse-NAT table: which frontend a socket was
//! translated from. connect4 / sendmsg4 rewrite a socket's destination
//! from a frontend to a backend and record the pair here; recvmsg4 and
//! getpeername4 look it up to show the application the frontend again.
//! Keyed by socket cookie and backend, so one unconnected UDP socket
//! talking to several Services (or several backends of one) keeps each
//! pair apart.

use crate::user_pod;

/// Key of `LB4_SOCK_REV`. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKeyV4 {
    /// The kernel's socket cookie (`bpf_get_socket_cookie`): unique per
    /// socket for the life of the boot, never reused.
    pub cookie: u64,
    /// Backend address the socket was sent to. Network byte order.
    pub address: [u8; 4],
    /// Backend port. Host byte order.
    pub port: u16,
    /// IANA protocol number of the socket (`proto::TCP`, `proto::UDP`).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<SockRevKeyV4>() == 16);

/// Value of `LB4_SOCK_REV`. 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevValueV4 {
    /// Frontend address the application asked for. Network byte order.
    pub address: [u8; 4],
    /// Frontend port. Host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
    /// The backend's id in `LB4_BACKENDS` when the socket was translated:
    /// once that id is gone (or names another address), the agent knows
    /// the socket's backend was removed and aborts a connected UDP socket
    /// still sending to it. Host byte order.
    pub backend_id: u32,
}
const _: () = assert!(size_of::<SockRevValueV4>() == 12);

/// Key of `LB6_SOCK_REV`: `SockRevKeyV4` with a 16-byte address. 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKeyV6 {
    pub cookie: u64,
    /// Network byte order.
    pub address: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<SockRevKeyV6>() == 32);

/// Value of `LB6_SOCK_REV`: `SockRevValueV4` with a 16-byte address. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevValueV6 {
    /// Network byte order.
    pub address: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 2],
    pub backend_id: u32,
}
const _: () = assert!(size_of::<SockRevValueV6>() == 24);

user_pod!(SockRevKeyV4, SockRevValueV4, SockRevKeyV6, SockRevValueV6);

impl SockRevKeyV6 {
    pub const fn new(cookie: u64, address: [u8; 16], port: u16, proto: u8) -> Self {
        Self { cookie, address, port, proto, _pad: [0; 5] }
    }
}

impl SockRevValueV6 {
    pub const fn new(address: [u8; 16], port: u16, backend_id: u32) -> Self {
        Self { address, port, _pad: [0; 2], backend_id }
    }
}

impl SockRevKeyV4 {
    pub const fn new(cookie: u64, address: [u8; 4], port: u16, proto: u8) -> Self {
        Self { cookie, address, port, proto, _pad: 0 }
    }
}

impl SockRevValueV4 {
    pub const fn new(address: [u8; 4], port: u16, backend_id: u32) -> Self {
        Self { address, port, _pad: [0; 2], backend_id }
    }
}
