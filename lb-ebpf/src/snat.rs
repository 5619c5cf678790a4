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
//! start at a hash of the flow and step through `SNAT_PORT_MIN..=MAX`; after
//! `SNAT_PORT_ATTEMPTS` taken ports the flow is dropped and counted.

use lb_common::{
    backend::FLAG_LOCAL,
    conntrack::{SNAT_PORT_ATTEMPTS, SNAT_PORT_MAX, SNAT_PORT_MIN},
    service::{FLAG_EXTERNAL_IP, FLAG_LOAD_BALANCER, FLAG_LOCAL_ONLY, FLAG_NODE_PORT, ServiceValue},
    stats::Counter,
};

use crate::{
    conntrack,
    family::{CtEntry, Family},
    parse::Packet,
    select,
    verdict::PathResult,
};

const PORT_SPAN: u32 = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
/// Candidate ports are this far apart: odd, so the walk visits the whole
/// span, and large, so neighbouring hashes do not compete for one run of
/// ports.
const PORT_STRIDE: u32 = 997;

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
    let mut reply = *original;
    reply.set_nat(pkt.src, pkt.sport);
    if let Some(port) = previous
        && conntrack::reclaim_reply::<F>(backend, address, port, &reply)
    {
        return Ok(port);
    }
    let start = select::flow_hash(pkt) % PORT_SPAN;
    let mut attempt = 0;
    while attempt < SNAT_PORT_ATTEMPTS {
        let port = SNAT_PORT_MIN + ((start + attempt * PORT_STRIDE) % PORT_SPAN) as u16;
        if conntrack::claim_reply::<F>(backend, address, port, &reply) {
            return Ok(port);
        }
        attempt += 1;
    }
    Err(Counter::DropSnatPortsExhausted)
}
