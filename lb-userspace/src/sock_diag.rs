//! Aborting UDP sockets through the kernel's socket-diagnostics netlink
//! interface (`NETLINK_SOCK_DIAG`): a dump of the UDP sockets of one family in the
//! caller's network namespace, and `SOCK_DESTROY` of one of them (needs
//! CAP_NET_ADMIN and a kernel with CONFIG_INET_DIAG_DESTROY). A destroyed
//! UDP socket is disconnected and its next call fails with ECONNABORTED:
//! the application reconnects, and the connect picks a live backend.
//!
//! Why not `bpf_sock_destroy` from a socket iterator (Cilium's way on
//! kernels ≥ 6.5): it needs a kfunc call and an `iter/udp` program, which
//! aya's eBPF side does not offer yet; this does the same from userspace.

use std::{
    io,
    mem::size_of,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const HEADER_LEN: usize = size_of::<NlMsgHdr>();

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockId {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub interface: u32,
    pub cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// `struct inet_diag_msg`, up to the fields read here.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
}

impl SockId {
    /// The socket cookie, as `bpf_get_socket_cookie` returns it.
    pub fn cookie(&self) -> u64 {
        u64::from(self.cookie[0]) | (u64::from(self.cookie[1]) << 32)
    }

    /// Destination address and port (host byte order), read as the
    /// address family the socket was listed under.
    pub fn destination(&self, family: Family) -> (IpAddr, u16) {
        let port = u16::from_be_bytes(self.dport);
        match family {
            Family::V4 => (IpAddr::from([self.dst[0], self.dst[1], self.dst[2], self.dst[3]]), port),
            Family::V6 => (IpAddr::from(self.dst), port),
        }
    }
}

/// The address families of sockets listed and destroyed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn number(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(fd: &OwnedFd, kind: u16, flags: u16, family: Family, id: SockId) -> io::Result<()> {
    #[repr(C)]
    struct Message {
        header: NlMsgHdr,
        request: Request,
    }
    let request = Request {
        family: family.number(),
        protocol: libc::IPPROTO_UDP as u8,
        states: u32::MAX,
        id,
        ..Request::default()
    };
    let header = NlMsgHdr { len: size_of::<Message>() as u32, kind, flags, seq: 1, pid: 0 };
    let message = Message { header, request };
    // SAFETY: sends the bytes of a live repr(C) value without padding.
    let sent = unsafe { libc::send(fd.as_raw_fd(), std::ptr::from_ref(&message).cast(), size_of::<Message>(), 0) };
    if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn read_struct<T: Copy + Default>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = bytes.len().min(size_of::<T>());
    // SAFETY: copies at most size_of::<T>() bytes into a plain-data value.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), std::ptr::from_mut(&mut value).cast::<u8>(), n) };
    value
}

/// Reads replies until the dump ends (or the ack arrives), handing each
/// socket's id to `each`.
fn receive(fd: &OwnedFd, mut each: impl FnMut(SockId)) -> io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: receives into a live buffer of the length given.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= HEADER_LEN {
            let header: NlMsgHdr = read_struct(rest);
            let len = (header.len as usize).clamp(HEADER_LEN, rest.len());
            let body = &rest[HEADER_LEN..len];
            match header.kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(body.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
                    return if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) };
                }
                _ => each(read_struct::<DiagMsg>(body).id),
            }
            rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
        }
    }
}

/// Every UDP socket of `family` in this network namespace.
pub fn udp_sockets(family: Family) -> io::Result<Vec<SockId>> {
    let fd = open()?;
    send(&fd, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family, SockId::default())?;
    let mut sockets = Vec::new();
    receive(&fd, |id| sockets.push(id))?;
    Ok(sockets)
}

/// Aborts the UDP socket `id` (from `udp_sockets`; its cookie makes sure
/// no other socket with the same addresses is hit).
pub fn destroy_udp(family: Family, id: SockId) -> io::Result<()> {
    let fd = open()?;
    send(&fd, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, family, id)?;
    receive(&fd, |_| {})
}
