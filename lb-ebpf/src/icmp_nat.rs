//! The byte rewrites of an ICMP or ICMPv6 error's translation
//! (`icmp_error` and `icmp6_error` decide what it becomes). Every checksum
//! is updated incrementally (RFC 1624):
//! the outer IPv4 header's; the quoted IPv4 header's; the quoted L4
//! checksum when the quote holds it (UDP's, within the first 8 bytes,
//! unless it is 0, "none"; TCP's only when the whole 20-byte header is
//! quoted, as nf_nat's TCP rewrite does); and the ICMP checksum, for
//! every quoted byte changed. ICMPv6's checksum covers a pseudo header
//! too, so the outer addresses enter it; IPv6 headers have no checksum.
//! A truncated quote needs no bytes it lacks.
//! Each rewrite changes a checksum by exactly what it changes in the data
//! the checksum covers, so the packet's sum stays the same and a
//! CHECKSUM_COMPLETE skb->csum stays right.

use aya_ebpf::programs::TcContext;
use lb_common::{proto, stats::Counter};

use crate::{
    family::{Family, V4, V6},
    nat,
    parse::ETH_LEN,
    parse6,
    verdict::PathResult,
};

const IP_CSUM: usize = 10;
const IP_SRC: usize = 12;
const IP_DST: usize = 16;
const ICMP_CSUM: usize = 2;
const TCP_CSUM: usize = 16;
const TCP_MIN_LEN: usize = 20;
const UDP_CSUM: usize = 6;

/// An ICMP error about a TCP/UDP packet, as parsed by `icmp_error` or
/// `icmp6_error`.
pub struct IcmpError<F: Family> {
    /// Network byte order.
    pub outer_src: F::Addr,
    pub outer_dst: F::Addr,
    /// The whole IP packet's length (IPv6: its fixed header included).
    pub ip_total_len: u16,
    /// Offset of the ICMP header from the start of the frame.
    pub icmp_off: usize,
    pub quote: Quote<F>,
}

/// The quoted packet: where its headers are, and its tuple.
pub struct Quote<F: Family> {
    /// Offsets from the start of the frame.
    pub ip_off: usize,
    pub l4_off: usize,
    /// Offset of the L4 checksum, when the quote holds it.
    pub l4_csum_off: Option<usize>,
    /// Network byte order.
    pub src: F::Addr,
    pub dst: F::Addr,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// The quoted tuple and outer addresses the error is given: addresses in
/// network byte order, ports in host byte order.
pub struct Translation<F: Family> {
    pub src: (F::Addr, u16),
    pub dst: (F::Addr, u16),
    pub outer_src: F::Addr,
    pub outer_dst: F::Addr,
    /// `outer_src` is one of the node's own addresses: a node-address
    /// frontend, or the source-NAT address. The IPv4 forward path drops
    /// such a packet as a martian, so the datapath sends it itself even
    /// under `--forward-through-stack`.
    pub outer_src_local: bool,
}

/// An address as the 16-bit words a checksum sums.
pub trait Summed: Copy {
    fn replace_in(self, to: Self, sum: &mut CsumUpdate);
}

impl Summed for [u8; 4] {
    #[inline(always)]
    fn replace_in(self, to: Self, sum: &mut CsumUpdate) {
        sum.replace4(self, to);
    }
}

impl Summed for u128 {
    /// IPv6 addresses are kept as their bytes in memory order
    /// (`family::V6`).
    #[inline(always)]
    fn replace_in(self, to: Self, sum: &mut CsumUpdate) {
        let (from, to) = (self.to_ne_bytes(), to.to_ne_bytes());
        for i in 0..8 {
            sum.replace2([from[2 * i], from[2 * i + 1]], [to[2 * i], to[2 * i + 1]]);
        }
    }
}

/// Where the quoted L4 checksum is, if the quote (ending at `quote_end`)
/// holds it.
#[inline(always)]
pub fn quoted_l4_csum_off(proto: u8, l4_off: usize, quote_end: usize) -> Option<usize> {
    if proto == proto::UDP {
        return Some(l4_off + UDP_CSUM);
    }
    (l4_off + TCP_MIN_LEN <= quote_end).then_some(l4_off + TCP_CSUM)
}

/// Reads `N` bytes at `offset` through the kernel's helper (offsets past
/// two header lengths are beyond what the verifier follows for direct
/// access).
#[inline(always)]
fn read_at<const N: usize>(ctx: &TcContext, offset: usize) -> PathResult<[u8; N]> {
    ctx.load::<[u8; N]>(offset).map_err(|_| Counter::DropRewriteFailed)
}

/// Writes `bytes` at `offset` through the kernel's helper, which leaves
/// skb->csum alone: each rewrite below keeps the packet's sum.
#[inline(always)]
fn write_at<const N: usize>(ctx: &TcContext, offset: usize, bytes: [u8; N]) -> PathResult<()> {
    ctx.store(offset, &bytes, 0).map_err(|_| Counter::DropRewriteFailed)
}

/// A running incremental update of one checksum field.
#[derive(Clone, Copy)]
pub struct CsumUpdate(u32);

impl CsumUpdate {
    #[inline(always)]
    fn of(check: [u8; 2]) -> Self {
        Self(u32::from(!u16::from_be_bytes(check)))
    }

    #[inline(always)]
    fn replace2(&mut self, from: [u8; 2], to: [u8; 2]) {
        self.0 += u32::from(!u16::from_be_bytes(from)) + u32::from(u16::from_be_bytes(to));
    }

    #[inline(always)]
    fn replace4(&mut self, from: [u8; 4], to: [u8; 4]) {
        self.replace2([from[0], from[1]], [to[0], to[1]]);
        self.replace2([from[2], from[3]], [to[2], to[3]]);
    }

    #[inline(always)]
    fn finish(self) -> [u8; 2] {
        nat::fold_checksum(self.0)
    }
}

/// Rewrites the quote, then the outer header, as `t` says.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, err: &IcmpError<V4>, t: &Translation<V4>) -> PathResult<()> {
    let icmp_csum = err.icmp_off + ICMP_CSUM;
    let mut icmp = CsumUpdate::of(read_at(ctx, icmp_csum)?);
    rewrite_quoted_ip(ctx, &err.quote, t, &mut icmp)?;
    rewrite_quoted_l4(ctx, &err.quote, t, &mut icmp)?;
    write_at(ctx, icmp_csum, icmp.finish())?;
    rewrite_outer(ctx, err, t)
}

/// The IPv6 twin of `rewrite`: the same quote and outer rewrites, the
/// outer addresses summed into the ICMPv6 checksum's pseudo header.
#[inline(always)]
pub fn rewrite_v6(ctx: &TcContext, err: &IcmpError<V6>, t: &Translation<V6>) -> PathResult<()> {
    let icmp_csum = err.icmp_off + ICMP_CSUM;
    let mut icmp = CsumUpdate::of(read_at(ctx, icmp_csum)?);
    let q = &err.quote;
    q.src.replace_in(t.src.0, &mut icmp);
    q.dst.replace_in(t.dst.0, &mut icmp);
    write_at(ctx, q.ip_off + parse6::SRC_OFF, t.src.0.to_ne_bytes())?;
    write_at(ctx, q.ip_off + parse6::DST_OFF, t.dst.0.to_ne_bytes())?;
    rewrite_quoted_l4(ctx, q, t, &mut icmp)?;
    err.outer_src.replace_in(t.outer_src, &mut icmp);
    err.outer_dst.replace_in(t.outer_dst, &mut icmp);
    write_at(ctx, icmp_csum, icmp.finish())?;
    write_at(ctx, ETH_LEN + parse6::SRC_OFF, t.outer_src.to_ne_bytes())?;
    write_at(ctx, ETH_LEN + parse6::DST_OFF, t.outer_dst.to_ne_bytes())
}

#[inline(always)]
fn rewrite_quoted_ip(ctx: &TcContext, q: &Quote<V4>, t: &Translation<V4>, icmp: &mut CsumUpdate) -> PathResult<()> {
    let old_csum = read_at::<2>(ctx, q.ip_off + IP_CSUM)?;
    let mut ip = CsumUpdate::of(old_csum);
    ip.replace4(q.src, t.src.0);
    ip.replace4(q.dst, t.dst.0);
    let new_csum = ip.finish();
    icmp.replace4(q.src, t.src.0);
    icmp.replace4(q.dst, t.dst.0);
    icmp.replace2(old_csum, new_csum);
    write_at(ctx, q.ip_off + IP_SRC, t.src.0)?;
    write_at(ctx, q.ip_off + IP_DST, t.dst.0)?;
    write_at(ctx, q.ip_off + IP_CSUM, new_csum)
}

#[inline(always)]
fn rewrite_quoted_l4<F: Family>(
    ctx: &TcContext,
    q: &Quote<F>,
    t: &Translation<F>,
    icmp: &mut CsumUpdate,
) -> PathResult<()>
where
    F::Addr: Summed,
{
    let (old_ports, new_ports) = (ports(q.sport, q.dport), ports(t.src.1, t.dst.1));
    icmp.replace4(old_ports, new_ports);
    write_at(ctx, q.l4_off, new_ports)?;
    let Some(csum_off) = q.l4_csum_off else {
        return Ok(());
    };
    let old_csum = read_at::<2>(ctx, csum_off)?;
    if q.proto == proto::UDP && old_csum == [0, 0] {
        return Ok(());
    }
    // The pseudo header's addresses and the ports.
    let mut l4 = CsumUpdate::of(old_csum);
    q.src.replace_in(t.src.0, &mut l4);
    q.dst.replace_in(t.dst.0, &mut l4);
    l4.replace4(old_ports, new_ports);
    let mut new_csum = l4.finish();
    if q.proto == proto::UDP && new_csum == [0, 0] {
        // 0 means "no checksum" in UDP; a computed 0 is sent as all ones.
        new_csum = [0xff, 0xff];
    }
    icmp.replace2(old_csum, new_csum);
    write_at(ctx, csum_off, new_csum)
}

#[inline(always)]
fn rewrite_outer(ctx: &TcContext, err: &IcmpError<V4>, t: &Translation<V4>) -> PathResult<()> {
    let mut ip = CsumUpdate::of(read_at(ctx, ETH_LEN + IP_CSUM)?);
    ip.replace4(err.outer_src, t.outer_src);
    ip.replace4(err.outer_dst, t.outer_dst);
    write_at(ctx, ETH_LEN + IP_SRC, t.outer_src)?;
    write_at(ctx, ETH_LEN + IP_DST, t.outer_dst)?;
    write_at(ctx, ETH_LEN + IP_CSUM, ip.finish())
}

#[inline(always)]
fn ports(sport: u16, dport: u16) -> [u8; 4] {
    let (s, d) = (sport.to_be_bytes(), dport.to_be_bytes());
    [s[0], s[1], d[0], d[1]]
}
