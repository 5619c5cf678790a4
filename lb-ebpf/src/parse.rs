//! Ethernet + IPv4 + TCP/UDP parsing by direct packet access.
//!
//! Policy, stated once:
//! - Not IPv4 (ARP, IPv6 for now, VLAN-tagged): passed untouched.
//! - IP options (IHL > 5): supported; the L4 header is found at IHL * 4.
//!   IHL < 5 is malformed: passed untouched for the kernel to drop.
//! - Fragments (MF set or offset != 0): passed untouched. Only the first
//!   fragment carries ports, so NATing it would split a datagram between
//!   two destinations; until fragments are tracked, none is NATed.
//! - Protocols other than TCP and UDP: passed untouched.
//! - Truncated headers: passed untouched, never read past `data_end`.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use lb_common::{proto, stats::Counter};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

pub const ETH_LEN: usize = EthHdr::LEN;
pub const IPV4_MIN_LEN: usize = Ipv4Hdr::LEN;
const ETH_P_IP_BE: u16 = 0x0800_u16.to_be();
const IP_MF_AND_OFFSET: u16 = 0x3fff;
/// TCP and UDP both start with source and destination port; 8 bytes cover
/// the UDP header and the part of TCP we read (ports, seq).
const L4_MIN_LEN: usize = 8;
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The fields of an IPv4 TCP/UDP packet the datapath works with.
#[derive(Clone, Copy)]
pub struct PacketV4 {
    /// Network byte order, as in the packet.
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP SYN without ACK: the first packet of a new connection.
    pub tcp_syn: bool,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
    /// The IPv4 header's total length (host byte order), which a route's
    /// MTU is checked against.
    pub ip_total_len: u16,
}

impl PacketV4 {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off + if self.proto == proto::TCP { 16 } else { 6 }
    }

    #[inline(always)]
    pub fn has_ip_options(&self) -> bool {
        self.l4_off != ETH_LEN + IPV4_MIN_LEN
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, Counter> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Counter::PassTruncated);
    }
    Ok((start + offset) as *const T)
}

/// Parses the headers; `Err` carries the pass reason.
#[inline(always)]
pub fn parse_v4(ctx: &TcContext) -> Result<PacketV4, Counter> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).ether_type } != ETH_P_IP_BE {
        return Err(Counter::PassOtherEthertype);
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = usize::from(ip.vihl & 0x0f);
    if ip.vihl >> 4 != 4 || ihl < 5 {
        return Err(Counter::PassTruncated);
    }
    if u16::from_be_bytes(ip.frags) & IP_MF_AND_OFFSET != 0 {
        return Err(Counter::PassFragment);
    }
    let proto = ip.proto as u8;
    if proto != proto::TCP && proto != proto::UDP {
        return Err(Counter::PassOtherProtocol);
    }
    let l4_off = ETH_LEN + ihl * 4;
    let ports: *const [u8; L4_MIN_LEN] = ptr_at(ctx, l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { &*ports };
    let tcp_syn = proto == proto::TCP && {
        let flags: *const u8 = ptr_at(ctx, l4_off + TCP_FLAGS_OFFSET)?;
        // SAFETY: bounds checked by ptr_at.
        let flags = unsafe { *flags };
        flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    };
    Ok(PacketV4 {
        tcp_syn,
        src: ip.src_addr,
        dst: ip.dst_addr,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        proto,
        l4_off,
        ip_total_len: u16::from_be_bytes(ip.tot_len),
    })
}
