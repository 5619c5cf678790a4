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
//! Two CPUs may keep a flow's route at once; the epoch is cleared before
//! and written after the other fields, and read before and after them, so
//! a reader never takes fields kept under two different epochs.

use lb_common::conntrack::RouteCache;

use crate::{
    family::Family,
    frame::Frame,
    maps::LB_ROUTE_EPOCH,
    route::{self, Lookup, Route},
};

/// `RouteCache::ifindex` of a kept answer that is the stack's.
const TO_STACK: u32 = 0;

/// The current epoch; 0 keeps nothing.
#[inline(always)]
fn current_epoch() -> u32 {
    LB_ROUTE_EPOCH.get(0).copied().unwrap_or(0)
}

/// The answer kept at `cache` for a packet of `ip_total_len` bytes
/// arriving on this packet's interface, if it is still current: a route
/// (`Some(Some(route))`, one this hook can send along) or the stack
/// (`Some(None)`). `None`: nothing usable kept; look the route up.
#[inline(always)]
pub fn recall<F: Family, C: Frame>(ctx: &C, cache: *const RouteCache, ip_total_len: u16) -> Option<Option<Route<F>>> {
    let epoch = current_epoch();
    if epoch == 0 {
        return None;
    }
    // SAFETY: fields of a map value, valid for this run of the program.
    // All reads volatile: kept in this order, the epoch's two around the
    // others.
    let (before, ingress, ifindex, dmac, smac, fits_len, after) = unsafe {
        use core::ptr::read_volatile as read;
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
    if before != epoch || after != epoch || ingress != ctx.ingress_ifindex() || ip_total_len > fits_len {
        return None;
    }
    if ifindex == TO_STACK {
        return Some(None);
    }
    let route = Route::to_neighbour(ifindex, dmac, smac, F::unspecified());
    route::can_send(ctx, &Some(route)).then_some(Some(route))
}

/// Keeps `lookup`, just made for a packet of `ip_total_len` bytes, at
/// `cache`, if it is an answer that is kept (see the module comment).
#[inline(always)]
pub fn keep<F: Family, C: Frame>(ctx: &C, cache: *mut RouteCache, lookup: &Lookup<F>, ip_total_len: u16) {
    let epoch = current_epoch();
    let (ifindex, (dmac, smac)) = match lookup {
        Lookup::Route(route) => match route.neighbour() {
            Some(macs) => (route.ifindex, macs),
            None => return,
        },
        Lookup::Stack => (TO_STACK, ([0; 6], [0; 6])),
        Lookup::TooBig { .. } => return,
    };
    if epoch == 0 {
        return;
    }
    // SAFETY: fields of a map value, valid for this run of the program.
    // All writes volatile: kept in this order, the epoch's two around the
    // others.
    unsafe {
        use core::ptr::write_volatile as write;
        write(&raw mut (*cache).epoch, 0);
        write(&raw mut (*cache).ingress_ifindex, ctx.ingress_ifindex());
        write(&raw mut (*cache).ifindex, ifindex);
        write(&raw mut (*cache).dmac, dmac);
        write(&raw mut (*cache).smac, smac);
        write(&raw mut (*cache).fits_len, ip_total_len);
        write(&raw mut (*cache).epoch, epoch);
    }
}
