//! Raw IPv4 sockets in a namespace, for cases that must see or forge
//! single TCP segments: a [`TcpTap`] gets a copy of every TCP segment the
//! namespace receives (the kernel hands raw sockets each packet before TCP
//! handles it, so segments no socket wants are seen too), and
//! [`send_ipv4`] sends a hand-built IPv4 packet from a namespace as it is,
//! addresses included, as a process with `CAP_NET_RAW` can.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::Context as _;

use crate::servers::in_netns;

/// One TCP segment as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub source: SocketAddrV4,
    pub destination: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub rst: bool,
    pub fin: bool,
    pub payload: Vec<u8>,
}

impl Segment {
    /// The sequence number after this segment.
    pub fn seq_end(&self) -> u32 {
        self.seq.wrapping_add(self.payload.len() as u32).wrapping_add(u32::from(self.fin))
    }
}

/// A raw IPv4 socket for `protocol`, opened inside `netns` (it stays
/// there once the opening thread is gone).
fn raw_socket(netns: &str, protocol: libc::c_int) -> anyhow::Result<OwnedFd> {
    in_netns(netns, move || {
        // SAFETY: socket(2) takes no pointers; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_INET, SOCK_RAW)");
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

/// Every TCP segment a namespace receives, from when it is opened.
#[derive(Debug)]
pub struct TcpTap {
    fd: OwnedFd,
}

impl TcpTap {
    pub fn open(netns: &str) -> anyhow::Result<Self> {
        Ok(Self { fd: raw_socket(netns, libc::IPPROTO_TCP)? })
    }

    /// The segments received since the last call, without waiting: once a
    /// socket in the namespace has read data, the segments that carried it
    /// are already here.
    pub fn drain(&self) -> anyhow::Result<Vec<Segment>> {
        let mut segments = Vec::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok(segments);
                }
                return Err(err).context("recv on the TCP tap");
            }
            segments.extend(parse(&buf[..n as usize]));
        }
    }
}

fn parse(packet: &[u8]) -> Option<Segment> {
    let sliced = etherparse::SlicedPacket::from_ip(packet).ok()?;
    let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(tcp))) =
        (&sliced.net, &sliced.transport)
    else {
        return None;
    };
    Some(Segment {
        source: SocketAddrV4::new(ip.header().source_addr(), tcp.source_port()),
        destination: SocketAddrV4::new(ip.header().destination_addr(), tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        rst: tcp.rst(),
        fin: tcp.fin(),
        payload: tcp.payload().to_vec(),
    })
}

/// Sends `packet` (an IPv4 header and what follows, checksums computed)
/// from inside `netns` to its destination, routed as the namespace routes
/// it.
pub fn send_ipv4(netns: &str, packet: &[u8]) -> anyhow::Result<()> {
    let header = etherparse::Ipv4HeaderSlice::from_slice(packet).context("an IPv4 packet")?;
    let destination: Ipv4Addr = header.destination_addr();
    // IPPROTO_RAW: the kernel sends the header as given (IP_HDRINCL).
    let fd = raw_socket(netns, libc::IPPROTO_RAW)?;
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(destination).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: `packet` and `to` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            std::ptr::from_ref(&to).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error()).context("sendto on a raw socket");
    }
    anyhow::ensure!(sent as usize == packet.len(), "sent {sent} of {} bytes", packet.len());
    Ok(())
}
