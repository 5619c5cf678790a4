//! Source NAT for external traffic sent to a backend on another node.
//!
//! A client outside the cluster reaches a NodePort, externalIP or
//! LoadBalancer IP on this node; with `externalTrafficPolicy: Cluster` the
//! chosen backend may run elsewhere. Its reply would go straight to the
//! client with the backend's address, which the client never talked to.
//! So the source becomes this node's address on the route to the backend
//! (as kube-proxy's masquerade does), and the reply returns here to be
//! translated back.
//!
//! A Pod balanced to its own endpoint (hairpin) is source-NATed too, to
//! the frontend's address: with its own address as source it would drop
//! the packet, and its replies to the frontend come back through here.
//!
//! Ports: a flow's SNAT port is unique for its (node address, backend
//! address and port, protocol), which is all a reply tuple holds. It is
//! claimed by inserting the reply conntrack entry only if absent, so
//! concurrent flows on other CPUs can never get the same one. Candidates
//! start at a hash of the flow and step through the SNAT ports
//! (`lb_common::conntrack::SNAT_PORT_SPANS`, in the order
//! `lb_common::conntrack::snat_candidate` gives), skipping any port a
//! frontend uses; after `SNAT_PORT_ATTEMPTS` candidates the flow is
//! dropped and counted.
//!
//! The candidates are tried in a `bpf_loop` callback: the verifier checks
//! its body once, where a plain loop is walked once per iteration (the
//! 32-step loop this replaced was a third of what `lb_tc` cost to verify).

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_loop;
use lb_common::{
    backend::FLAG_LOCAL,
    conntrack::{SNAT_PORT_ATTEMPTS, snat_candidate},
    port_filter::FRONTEND_PORT,
    service::{FLAG_EXTERNAL_IP, FLAG_LOAD_BALANCER, FLAG_LOCAL_ONLY, FLAG_NODE_PORT, ServiceValue},
    stats::Counter,
};

use crate::{
    conntrack,
    family::{CtEntry, Family},
    parse::Packet,
    select, service,
    verdict::PathResult,
};

/// Whether a new flow to a backend (with `backend_flags`) through this
/// frontend needs SNAT:
/// external traffic (the frontend is a node address, externalIP or LB IP)
/// under a Cluster policy, to a backend on another node. A Local policy
/// keeps the client's address: its backends are all on this node.
#[inline(always)]
pub fn needed(service: &ServiceValue, backend_flags: u8) -> bool {
    let external = service.flags & (FLAG_NODE_PORT | FLAG_EXTERNAL_IP | FLAG_LOAD_BALANCER) != 0;
    external && service.flags & FLAG_LOCAL_ONLY == 0 && backend_flags & FLAG_LOCAL == 0
}

/// The SNAT a client tuple's previous entry had (port 0: none), whose
/// port a retransmitted SYN keeps: given a new port, it would reach the
/// backend as a second connection attempt, whose SYN-ACK the client
/// cannot take, and the client's next segment would be reset.
pub struct PreviousSnat<F: Family> {
    backend_id: u32,
    address: F::Addr,
    port: u16,
}

impl<F: Family> Clone for PreviousSnat<F> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family> Copy for PreviousSnat<F> {}

impl<F: Family> PreviousSnat<F> {
    #[inline(always)]
    pub fn none() -> Self {
        Self { backend_id: 0, address: F::unspecified(), port: 0 }
    }

    #[inline(always)]
    pub fn of(entry: &F::CtValue) -> Self {
        let (address, port) = entry.nat();
        Self::new(entry.backend_id(), address, port)
    }

    /// Port `port` on `address`, for a flow to `backend_id` (port 0: none).
    #[inline(always)]
    pub fn new(backend_id: u32, address: F::Addr, port: u16) -> Self {
        Self { backend_id, address, port }
    }

    /// The port to try first for a flow to `backend_id` from `address`.
    #[inline(always)]
    pub fn port_for(self, backend_id: u32, address: F::Addr) -> Option<u16> {
        (self.port != 0 && self.backend_id == backend_id && self.address == address).then_some(self.port)
    }
}

/// Claims a source port on `address` for a new flow to `backend` and
/// records its reply entry (which restores the client's address and port).
/// `original` is the flow's conntrack value so far; `previous` is the port
/// the same client tuple had before (a retransmitted SYN keeps its port, so
/// the backend sees one connection attempt, not two).
#[inline(always)]
pub fn allocate<F: Family>(
    pkt: &Packet<F>,
    backend: &F::Backend,
    address: F::Addr,
    original: &F::CtValue,
    previous: Option<u16>,
) -> PathResult<u16> {
    if let Some(port) = previous
        && reclaim(pkt, backend, address, original, port)
    {
        return Ok(port);
    }
    let reply = reply_value(pkt, original)?;
    let mut claim = Claim::<F> { backend: *backend, address, reply, flow_hash: select::flow_hash(pkt), port: 0 };
    let callback = try_candidate::<F> as *const () as *mut c_void;
    // SAFETY: `claim` outlives the call; the callback reads and writes it
    // only as a `Claim<F>`. bpf_loop fails only on bad arguments
    // (flags, the loop count), which are constants.
    unsafe { bpf_loop(SNAT_PORT_ATTEMPTS, callback, (&raw mut claim).cast(), 0) };
    match claim.port {
        0 => Err(Counter::DropSnatPortsExhausted),
        port => Ok(port),
    }
}

/// Claims `port` on `address` again for a retransmitted SYN (`allocate`'s
/// `previous`): only while its reply entry still restores this client.
#[inline(always)]
pub fn reclaim<F: Family>(
    pkt: &Packet<F>,
    backend: &F::Backend,
    address: F::Addr,
    original: &F::CtValue,
    port: u16,
) -> bool {
    let Ok(reply) = reply_value(pkt, original) else {
        return false;
    };
    conntrack::reclaim_reply::<F>(backend, address, port, reply)
}

/// The reply entry of an SNATed flow: `original`, restoring the client's
/// address and port. Built in this CPU's scratch slot.
#[inline(always)]
fn reply_value<F: Family>(pkt: &Packet<F>, original: &F::CtValue) -> PathResult<&'static mut F::CtValue> {
    let reply = conntrack::scratch::<F>(conntrack::SCRATCH_REPLY)?;
    *reply = *original;
    reply.set_nat(pkt.src, pkt.sport);
    Ok(reply)
}

/// What one candidate port needs, shared with `try_candidate`; `port` is
/// the claimed port, 0 until one is.
struct Claim<F: Family> {
    backend: F::Backend,
    address: F::Addr,
    reply: &'static F::CtValue,
    flow_hash: u32,
    port: u16,
}

/// The `bpf_loop` callback: tries the `attempt`th candidate port. Returns
/// 1 (stop) once a port is claimed, 0 (go on) otherwise.
#[inline(never)]
extern "C" fn try_candidate<F: Family>(attempt: u64, claim: *mut c_void) -> i64 {
    // SAFETY: `allocate` passes its `Claim<F>`, alive for the whole loop.
    let claim = unsafe { &mut *claim.cast::<Claim<F>>() };
    let port = snat_candidate(claim.flow_hash, attempt as u32);
    if service::port_bits(port) & FRONTEND_PORT != 0 {
        return 0;
    }
    // Looked up before the insert: a taken port costs a lockless lookup,
    // not a failed LRU insert (which takes a free entry, and a lock, first).
    if conntrack::reply_taken::<F>(&claim.backend, claim.address, port)
        || !conntrack::claim_reply::<F>(&claim.backend, claim.address, port, claim.reply)
    {
        return 0;
    }
    claim.port = port;
    1
}
