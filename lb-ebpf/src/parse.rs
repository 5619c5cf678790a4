//! Ethernet + IPv4 + TCP/UDP parsing by direct packet access, and what
//! the IPv6 parser (`parse6`) shares with it.
//!
//! Policy, stated once (IPv6 adds its own in `parse6`):
//! - Neither IPv4 nor IPv6 (ARP, VLAN-tagged): passed untouched.
//! - IP options (IHL > 5): supported; the L4 header is found at IHL * 4.
//!   IHL < 5 is malformed: passed untouched for the kernel to drop.
//! - Fragments (MF set or offset != 0): passed untouched. Only the first
//!   fragment carries ports, so NATing it would split a datagram between
//!   two destinations; until fragments are tracked, none is NATed.
//! - Protocols other than TCP and UDP: passed untouched, except ICMP
//!   errors about NATed flows (`icmp_error`, which states its own policy).
//! - Truncated headers: passed untouched, never read past `data_end`.
//! - Headers that disagree (an IPv4 total length shorter than its headers
//!   or longer than the packet, a TCP data offset below 5 or past the
//!   datagram, a UDP length outside it): passed untouched and counted
//!   (`pass_truncated`, `pass_malformed`) for the kernel to drop. Such a
//!   packet is never NATed and creates no state. An IPv4 total length of 0
//!   is accepted on a GSO packet only (BIG TCP packets over 64 KiB carry
//!   0 there); the packet's own length stands in for it.

use core::mem::size_of;

use lb_common::{proto, stats::Counter};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    family::{Family, V4, V6},
    frame::Frame,
};

pub const ETH_LEN: usize = EthHdr::LEN;
pub const IPV4_MIN_LEN: usize = Ipv4Hdr::LEN;
const ETH_P_IP_BE: u16 = 0x0800_u16.to_be();
pub const ETH_P_IPV6_BE: u16 = 0x86dd_u16.to_be();
pub const IP_MF_AND_OFFSET: u16 = 0x3fff;
const IP_DONT_FRAGMENT: u16 = 0x4000;
/// TCP and UDP both start with source and destination port.
const L4_MIN_LEN: usize = 8;
const UDP_LEN: usize = 8;
const TCP_MIN_LEN: usize = 20;
const TCP_DATA_OFFSET_OFFSET: usize = 12;
const UDP_LENGTH_OFFSET: usize = 4;
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The fields of a TCP/UDP packet of family `F` the datapath works with.
pub struct Packet<F: Family> {
    /// Network byte order, as in the packet.
    pub src: F::Addr,
    pub dst: F::Addr,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP SYN without ACK: the first packet of a new connection.
    pub tcp_syn: bool,
    /// The TCP header's flags byte (0 for UDP), for conntrack's state bits.
    pub tcp_flags: u8,
    /// Offset of the L4 header from the start of the frame (`l4_off`).
    /// A `u16`: a packet is kept on the stack of the longest call
    /// chains, and a `usize` here costs the IPv6 one 16 bytes of it.
    pub l4_start: u16,
    /// The IP packet's whole length (IPv4 total length; IPv6 payload
    /// length plus its fixed header), host byte order, which a route's MTU
    /// is checked against.
    pub ip_total_len: u16,
    /// IPv4 DF set: a packet too big for its route is answered, not
    /// fragmented. Always set for IPv6, which routers never fragment.
    pub dont_fragment: bool,
}

impl<F: Family> Clone for Packet<F> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family> Copy for Packet<F> {}

pub type PacketV4 = Packet<V4>;
pub type PacketV6 = Packet<V6>;

/// Every L4 offset the parsers produce is below this (IPv4: 14 + 60;
/// IPv6: 54 + four extension headers of at most 2,048 bytes each).
const L4_OFF_MASK: usize = 0x3fff;
const _: () = assert!(ETH_LEN + 40 + crate::parse6::IPV6_EXT_HEADERS_MAX * 2048 <= L4_OFF_MASK);

impl<F: Family> Packet<F> {
    /// Offset of the L4 header from the start of the frame.
    ///
    /// Masked to the bound the parsers keep it under: a `u16` read back
    /// may be anything to 0xffff for the verifier, and a packet offset
    /// that large gets no range from a bounds check at all.
    #[inline(always)]
    pub fn l4_off(&self) -> usize {
        usize::from(self.l4_start) & L4_OFF_MASK
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off() + if self.proto == proto::TCP { 16 } else { 6 }
    }
}

impl PacketV4 {
    #[inline(always)]
    pub fn has_ip_options(&self) -> bool {
        self.l4_off() != ETH_LEN + IPV4_MIN_LEN
    }
}

/// A pointer to a `T` at `offset` in the frame, if all of it is there.
#[inline(always)]
pub fn ptr_at<T, C: Frame>(ctx: &C, offset: usize) -> Result<*const T, Counter> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Counter::PassTruncated);
    }
    Ok((start + offset) as *const T)
}

/// Where the IPv4 datagram ends (offset from the frame's start), after
/// checking its total length against its header and the packet.
#[inline(always)]
pub fn datagram_end<C: Frame>(ctx: &C, total_len: u16, l4_off: usize) -> Result<usize, Counter> {
    length_field_end(ctx, total_len, ETH_LEN, l4_off)
}

/// Where an IP packet ends whose length field says `length` bytes from
/// `counted_from` (IPv4: the IP header; IPv6: the end of its fixed
/// header), checked against the L4 header and the packet. A length of 0
/// is accepted on a GSO packet only (BIG TCP): the packet's own length
/// stands in for it.
#[inline(always)]
pub fn length_field_end<C: Frame>(ctx: &C, length: u16, counted_from: usize, l4_off: usize) -> Result<usize, Counter> {
    let packet_len = ctx.packet_len();
    let gso = ctx.gso_size() != 0;
    let ip_end = match length {
        0 if gso => packet_len,
        len => counted_from + usize::from(len),
    };
    if ip_end < l4_off + L4_MIN_LEN {
        return Err(Counter::PassMalformed);
    }
    if ip_end > packet_len {
        return Err(Counter::PassTruncated);
    }
    Ok(ip_end)
}

/// Checks the TCP header (whole, its data offset inside the datagram) and
/// returns its flags byte.
#[inline(always)]
fn tcp_flags<C: Frame>(ctx: &C, l4_off: usize, ip_end: usize) -> Result<u8, Counter> {
    let header: *const [u8; TCP_MIN_LEN] = ptr_at(ctx, l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    let header = unsafe { &*header };
    let data_offset = usize::from(header[TCP_DATA_OFFSET_OFFSET] >> 4) * 4;
    if data_offset < TCP_MIN_LEN || l4_off + data_offset > ip_end {
        return Err(Counter::PassMalformed);
    }
    Ok(header[TCP_FLAGS_OFFSET])
}

/// Checks the UDP header's length against the datagram. No TCP flags.
#[inline(always)]
fn udp_fits<C: Frame>(ctx: &C, l4_off: usize, ip_end: usize) -> Result<u8, Counter> {
    let header: *const [u8; UDP_LEN] = ptr_at(ctx, l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    let header = unsafe { &*header };
    let length = usize::from(u16::from_be_bytes([header[UDP_LENGTH_OFFSET], header[UDP_LENGTH_OFFSET + 1]]));
    if length < UDP_LEN || l4_off + length > ip_end {
        return Err(Counter::PassMalformed);
    }
    Ok(0)
}

/// `Err(PassOtherEthertype)` unless the frame carries `ether_type` (big-endian).
#[inline(always)]
pub fn ether_type_is<C: Frame>(ctx: &C, ether_type: u16) -> Result<(), Counter> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).ether_type } != ether_type {
        return Err(Counter::PassOtherEthertype);
    }
    Ok(())
}

/// Whether the frame carries IPv6 (a short frame does not).
#[inline(always)]
pub fn is_ipv6<C: Frame>(ctx: &C) -> bool {
    ether_type_is(ctx, ETH_P_IPV6_BE).is_ok()
}

/// Checks the TCP or UDP header at `l4_off` against the datagram (ending
/// at `ip_end`) and returns the ports and TCP flags: what every family's
/// parse ends with.
#[inline(always)]
pub fn l4_header<C: Frame>(ctx: &C, proto: u8, l4_off: usize, ip_end: usize) -> Result<(u16, u16, u8), Counter> {
    let ports: *const [u8; L4_MIN_LEN] = ptr_at(ctx, l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { &*ports };
    let tcp_flags = if proto == proto::TCP { tcp_flags(ctx, l4_off, ip_end)? } else { udp_fits(ctx, l4_off, ip_end)? };
    Ok((u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]]), tcp_flags))
}

/// Whether TCP flags open a new connection: SYN without ACK.
#[inline(always)]
pub fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Parses the headers; `Err` carries the pass reason.
#[inline(always)]
pub fn parse_v4<C: Frame>(ctx: &C) -> Result<PacketV4, Counter> {
    ether_type_is(ctx, ETH_P_IP_BE)?;
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = usize::from(ip.vihl & 0x0f);
    if ip.vihl >> 4 != 4 || ihl < 5 {
        return Err(Counter::PassTruncated);
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & IP_MF_AND_OFFSET != 0 {
        return Err(Counter::PassFragment);
    }
    let proto = ip.proto as u8;
    if proto != proto::TCP && proto != proto::UDP {
        return Err(Counter::PassOtherProtocol);
    }
    let l4_off = ETH_LEN + ihl * 4;
    let ip_end = datagram_end(ctx, u16::from_be_bytes(ip.tot_len), l4_off)?;
    let (sport, dport, tcp_flags) = l4_header(ctx, proto, l4_off, ip_end)?;
    Ok(PacketV4 {
        tcp_syn: is_syn(tcp_flags),
        tcp_flags,
        src: ip.src_addr,
        dst: ip.dst_addr,
        sport,
        dport,
        proto,
        l4_start: l4_off as u16,
        ip_total_len: u16::from_be_bytes(ip.tot_len),
        dont_fragment: frags & IP_DONT_FRAGMENT != 0,
    })
}
