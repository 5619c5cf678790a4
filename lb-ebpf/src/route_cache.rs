//! An established flow's route, kept on its conntrack entry (one per
//! direction, `lb_common::conntrack::RouteCache`), so its packets skip the
//! route lookup. On hosts whose helper calls go through mitigation thunks
//! the lookup is most of what forwarding a translated packet costs
//! (`lb-bench --only packet-cost`, the `lb_forward_only` row).
//!
//! What is kept: the lookup's answer when it was a plain forward to a
//! known neighbour (the interface and MACs) or the stack's to decide (a
//! local destination, no route, forwarding off: the stack then decides
//! again, with all its own checks); for a packet arriving on the same
//! interface, and no longer than the longest one looked up (a longer
//! packet is looked up again, against the route's MTU). Any other answer
//! (an unresolved neighbour, a packet too big) is looked up on every
//! packet, as before.
//!
//! When it is used: while `LB_ROUTE_EPOCH` holds the value it was kept
//! under. The agent changes that value whenever the kernel announces a
//! change to routes, rules, nexthops, neighbours, links, addresses or
//! forwarding settings, so each flow's next packet looks its route up
//! again. Until the agent has read the announcement (milliseconds; for as
//! long as no agent runs, while it restarts) an established flow keeps the
//! route it had. A path MTU the node learns from an ICMP error is not
//! announced: a kept route then still sends packets up to the length it
//! was looked up for, and the hop that cannot carry them answers the
//! client. Epoch 0, before any agent has written one, keeps nothing.
//!
//! The original direction's entry of an IPv4 flow also keeps the backend
//! its route leads to (address and port), so that its packets skip the
//! backend lookup too (an IPv6 flow looks its backend up by id). A backend
//! id names one address and port for as long as it exists, so what can
//! go stale is only whether it still exists: the agent moves the epoch
//! after it removes a backend, and a flow whose backend went is then
//! balanced afresh on its next packet, as when the lookup finds nothing.
//!
//! The epoch is read once per packet, before the lookups whose answers
//! are kept under it (`Kept::at`): a change that lands between the lookup
//! and the keeping moves the epoch past the one read, so the stale answer
//! is never used. Two CPUs may keep a flow's answers at once; the epoch
//! is cleared before and written after the other fields, and read before
//! and after them, so a reader never takes fields kept under two
//! different epochs.

use lb_common::conntrack::RouteCache;

use crate::{
    family::Family,
    frame::Frame,
    maps::LB_ROUTE_EPOCH,
    route::{Lookup, Route},
};

/// `RouteCache::ifindex` of a kept answer that is the stack's.
const TO_STACK: u32 = 0;

/// Where one direction of a flow keeps its answers, and the epoch current
/// when its packet began to be handled (0: nothing is kept or recalled).
#[derive(Clone, Copy)]
pub struct Kept {
    cache: *mut RouteCache,
    epoch: u32,
}

impl Kept {
    /// The answers kept at `cache`, with the current epoch read now:
    /// before any lookup whose answer may be kept.
    #[inline(always)]
    pub fn at(cache: *mut RouteCache) -> Self {
        let epoch = LB_ROUTE_EPOCH.get(0).copied().unwrap_or(0);
        Self { cache, epoch }
    }

    /// Nothing kept or recalled: a flow not tracked yet.
    #[inline(always)]
    pub fn none() -> Self {
        Self { cache: core::ptr::null_mut(), epoch: 0 }
    }

    /// The backend kept under the current epoch (address, port): it still
    /// exists. `None`: look it up.
    #[inline(always)]
    pub fn backend(&self) -> Option<([u8; 4], u16)> {
        if self.epoch == 0 {
            return None;
        }
        // SAFETY: fields of a map value, valid for this run of the
        // program. All reads volatile: kept in this order, the epoch's
        // two around the others.
        let (before, address, port, after) = unsafe {
            use core::ptr::read_volatile as read;
            let cache = self.cache;
            (
                read(&raw const (*cache).epoch),
                read(&raw const (*cache).backend_address),
                read(&raw const (*cache).backend_port),
                read(&raw const (*cache).epoch),
            )
        };
        // Port 0: kept by the reply direction, or carried over from a
        // layout that kept no backend.
        if before != self.epoch || after != self.epoch || port == 0 {
            return None;
        }
        Some((address, port))
    }

    /// The route kept for a packet of `ip_total_len` bytes arriving on
    /// this packet's interface, if it is still current: a route
    /// (`Some(Some(route))`, as looked up; whether this hook can send
    /// along it is the caller's to ask) or the stack (`Some(None)`).
    /// `None`: nothing usable kept; look the route up.
    #[inline(always)]
    pub fn route<F: Family, C: Frame>(&self, ctx: &C, ip_total_len: u16) -> Option<Option<Route<F>>> {
        let (ifindex, dmac, smac) = self.current(ctx, ip_total_len)?;
        if ifindex == TO_STACK {
            return Some(None);
        }
        Some(Some(Route::to_neighbour(ifindex, dmac, smac, F::unspecified())))
    }

    /// The kept answer's egress interface (`TO_STACK`: the stack's) and
    /// MACs, if current for this packet (see `route`).
    #[inline(always)]
    fn current<C: Frame>(&self, ctx: &C, ip_total_len: u16) -> Option<(u32, [u8; 6], [u8; 6])> {
        if self.epoch == 0 {
            return None;
        }
        // SAFETY: as in `backend`.
        let (before, ingress, ifindex, dmac, smac, fits_len, after) = unsafe {
            use core::ptr::read_volatile as read;
            let cache = self.cache;
            (
                read(&raw const (*cache).epoch),
                read(&raw const (*cache).ingress_ifindex),
                read(&raw const (*cache).ifindex),
                read(&raw const (*cache).dmac),
                read(&raw const (*cache).smac),
                read(&raw const (*cache).fits_len),
                read(&raw const (*cache).epoch),
            )
        };
        if before != self.epoch || after != self.epoch || ingress != ctx.ingress_ifindex() || ip_total_len > fits_len {
            return None;
        }
        Some((ifindex, dmac, smac))
    }

    /// Keeps `lookup`, just made for a packet of `ip_total_len` bytes,
    /// under the epoch read before it, if it is an answer that is kept
    /// (see the module comment); in the original direction with the
    /// backend the route leads to (address, port), found existing after
    /// that epoch was read.
    #[inline(always)]
    pub fn keep<F: Family, C: Frame>(
        &self,
        ctx: &C,
        lookup: &Lookup<F>,
        ip_total_len: u16,
        backend: Option<([u8; 4], u16)>,
    ) {
        let (ifindex, (dmac, smac)) = match lookup {
            Lookup::Route(route) => match route.neighbour() {
                Some(macs) => (route.ifindex, macs),
                None => return,
            },
            Lookup::Stack => (TO_STACK, ([0; 6], [0; 6])),
            Lookup::TooBig { .. } => return,
        };
        if self.epoch == 0 {
            return;
        }
        // SAFETY: fields of a map value, valid for this run of the
        // program. All writes volatile: kept in this order, the epoch's
        // two around the others.
        unsafe {
            use core::ptr::write_volatile as write;
            let cache = self.cache;
            write(&raw mut (*cache).epoch, 0);
            write(&raw mut (*cache).ingress_ifindex, ctx.ingress_ifindex());
            write(&raw mut (*cache).ifindex, ifindex);
            write(&raw mut (*cache).dmac, dmac);
            write(&raw mut (*cache).smac, smac);
            write(&raw mut (*cache).fits_len, ip_total_len);
            let (backend_address, backend_port) = backend.unwrap_or(([0; 4], 0));
            write(&raw mut (*cache).backend_port, backend_port);
            write(&raw mut (*cache).backend_address, backend_address);
            write(&raw mut (*cache).epoch, self.epoch);
        }
    }
}
