//! Per-CPU counters, one slot per `Counter`. Each names what happened to
//! a packet (tc or XDP) or to a socket operation (`Sock*`, the cgroup hooks);
//! drop and error reasons double as metric labels.

/// Index into `LB_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Not Service traffic: passed untouched.
    Passed = 0,
    /// First packet of a flow to a frontend: backend chosen, DNATed.
    NewFlow,
    /// Later packet of a tracked flow: DNATed to its backend.
    Established,
    /// Reply from a backend: source rewritten back to the frontend.
    ReplyNat,
    /// A tracked flow's backend is gone: re-balanced to a live one.
    Rebalanced,
    /// New flow to a frontend with no endpoints: rejected with ICMP port unreachable.
    RejectNoEndpoints,
    /// IPv4 fragment: passed untouched (policy: no fragment tracking yet, so
    /// never NAT part of a datagram).
    PassFragment,
    /// Protocol the datapath does not balance (SCTP for now, ...), or an ICMP
    /// message that is not an error it translates (echo, ...): passed.
    PassOtherProtocol,
    /// Neither IPv4 nor IPv6 (ARP, VLAN-tagged, ...): passed.
    PassOtherEthertype,
    /// Header shorter than its fields claim: dropped if addressed to a
    /// frontend would be guesswork, so passed untouched for the kernel to judge.
    PassTruncated,
    /// Headers that disagree with each other or with the packet (IPv4
    /// total length, TCP data offset, UDP length): passed untouched, never
    /// NATed, for the kernel to drop.
    PassMalformed,
    /// A slot or backend entry referenced by a frontend is missing (the
    /// agent is mid-update): the packet is dropped rather than mis-NATed.
    DropMissingBackend,
    /// The conntrack map refused an insert: dropped so the flow is retried.
    DropConntrackFull,
    /// A packet rewrite helper failed: dropped.
    DropRewriteFailed,
    /// New flow to a frontend whose Local traffic policy leaves no endpoint
    /// on this node while the Service has endpoints elsewhere: dropped.
    DropNoLocalEndpoints,
    /// New flow that needed source NAT, but every port tried was taken.
    DropSnatPortsExhausted,
    /// New flow that needed source NAT, but the route to the backend is no
    /// plain forward from this node (no route, or no source address on
    /// it), or the first packet exceeds the route's MTU without DF (with
    /// DF it is answered: `IcmpFragNeeded`).
    DropSnatNoAddress,
    /// New flow to a LoadBalancer frontend from a source outside its
    /// `loadBalancerSourceRanges`: dropped.
    DropSourceRange,
    /// NATed packet sent straight to the interface the routing table names
    /// (the node's forwarding path is skipped).
    Redirected,
    /// Socket-level (a process in the node's network namespace): a
    /// connect or an unconnected UDP send to a frontend went to a backend.
    SockTranslated,
    /// Socket-level: a connect or send to a frontend with no endpoints
    /// failed with ECONNREFUSED.
    SockRejectNoEndpoints,
    /// Socket-level: a connect or send to a frontend whose Local policy
    /// leaves no endpoint on this node (and which has no in-cluster entry)
    /// failed with ECONNREFUSED.
    SockRejectNoLocalEndpoints,
    /// Socket-level: a slot or backend entry was missing (the agent is
    /// mid-update): the connect or send failed with EAGAIN.
    SockMissingBackend,
    /// Socket-level: the reverse-NAT map refused an insert: the connect or
    /// send failed with ENOMEM rather than show the backend as the peer.
    SockRevNatFull,
    /// Socket-level: a frontend with `loadBalancerSourceRanges` was left
    /// untranslated (the source address is not chosen yet at connect
    /// time); the packet goes out to the load balancer like any other.
    SockPassSourceRanges,
    /// Socket-level: a reply's source (recvmsg) or a socket's peer
    /// (getpeername) was shown as the frontend again.
    SockReverseNat,
    /// ICMP error (destination unreachable, time exceeded) about a NATed
    /// flow: its quoted packet and outer header translated back, sent on.
    IcmpErrorNat,
    /// ICMP error whose quoted packet belongs to no tracked flow (or is not
    /// a TCP/UDP first fragment): passed untouched.
    PassIcmpErrorUntracked,
    /// ICMP error whose quote is cut short (less than an IPv4 header plus
    /// 8 bytes of it) or is not IPv4: passed untouched, no state created.
    PassIcmpErrorTruncated,
    /// A packet with DF set, about to be DNATed onto a route whose MTU it
    /// exceeds: answered with ICMP fragmentation needed quoting the
    /// packet as the client sent it.
    IcmpFragNeeded,
    /// A new flow (or socket) to a ClientIP affinity frontend followed the
    /// client's recent choice (in addition to its own counter).
    AffinityHit,
    /// A new flow to an affinity frontend from a client without an entry:
    /// balanced, and the choice recorded.
    AffinityMiss,
    /// A new flow to an affinity frontend whose client's entry was ignored
    /// (older than the timeout, or naming a backend this frontend no longer
    /// chooses): balanced afresh, and the new choice recorded.
    AffinityStale,
    /// IPv6 packet whose L4 header was not found within the extension
    /// headers walked (hop-by-hop, routing, destination options, at most
    /// `parse::IPV6_EXT_HEADERS_MAX` of them), or behind one not walked
    /// (AH, ESP, ...): passed untouched, never NATed.
    PassExtensionHeaders,
    /// XDP: a packet to a frontend (or a reply) the XDP program cannot
    /// finish itself (the route leaves through an interface that does not
    /// take XDP frames, the neighbour is unknown, it must be rejected or
    /// answered, ...): passed to tc untouched, before any state was
    /// created. tc then counts what it does with it.
    XdpPassToTc,
    /// XDP: NATed and sent out by the XDP program (`XDP_TX` back out of
    /// the interface it came in on, or `XDP_REDIRECT` to another).
    XdpSent,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 36] = [
        Counter::Passed,
        Counter::NewFlow,
        Counter::Established,
        Counter::ReplyNat,
        Counter::Rebalanced,
        Counter::RejectNoEndpoints,
        Counter::PassFragment,
        Counter::PassOtherProtocol,
        Counter::PassOtherEthertype,
        Counter::PassTruncated,
        Counter::PassMalformed,
        Counter::DropMissingBackend,
        Counter::DropConntrackFull,
        Counter::DropRewriteFailed,
        Counter::DropNoLocalEndpoints,
        Counter::DropSnatPortsExhausted,
        Counter::DropSnatNoAddress,
        Counter::DropSourceRange,
        Counter::Redirected,
        Counter::SockTranslated,
        Counter::SockRejectNoEndpoints,
        Counter::SockRejectNoLocalEndpoints,
        Counter::SockMissingBackend,
        Counter::SockRevNatFull,
        Counter::SockPassSourceRanges,
        Counter::SockReverseNat,
        Counter::IcmpErrorNat,
        Counter::PassIcmpErrorUntracked,
        Counter::PassIcmpErrorTruncated,
        Counter::IcmpFragNeeded,
        Counter::AffinityHit,
        Counter::AffinityMiss,
        Counter::AffinityStale,
        Counter::PassExtensionHeaders,
        Counter::XdpPassToTc,
        Counter::XdpSent,
    ];

    /// Stable snake_case name, used as a metric label and in the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Passed => "passed",
            Counter::NewFlow => "new_flow",
            Counter::Established => "established",
            Counter::ReplyNat => "reply_nat",
            Counter::Rebalanced => "rebalanced",
            Counter::RejectNoEndpoints => "reject_no_endpoints",
            Counter::PassFragment => "pass_fragment",
            Counter::PassOtherProtocol => "pass_other_protocol",
            Counter::PassOtherEthertype => "pass_other_ethertype",
            Counter::PassTruncated => "pass_truncated",
            Counter::PassMalformed => "pass_malformed",
            Counter::DropMissingBackend => "drop_missing_backend",
            Counter::DropConntrackFull => "drop_conntrack_full",
            Counter::DropRewriteFailed => "drop_rewrite_failed",
            Counter::DropNoLocalEndpoints => "drop_no_local_endpoints",
            Counter::DropSnatPortsExhausted => "drop_snat_ports_exhausted",
            Counter::DropSnatNoAddress => "drop_snat_no_address",
            Counter::DropSourceRange => "drop_source_range",
            Counter::Redirected => "redirected",
            Counter::SockTranslated => "sock_translated",
            Counter::SockRejectNoEndpoints => "sock_reject_no_endpoints",
            Counter::SockRejectNoLocalEndpoints => "sock_reject_no_local_endpoints",
            Counter::SockMissingBackend => "sock_missing_backend",
            Counter::SockRevNatFull => "sock_rev_nat_full",
            Counter::SockPassSourceRanges => "sock_pass_source_ranges",
            Counter::SockReverseNat => "sock_reverse_nat",
            Counter::IcmpErrorNat => "icmp_error_nat",
            Counter::PassIcmpErrorUntracked => "pass_icmp_error_untracked",
            Counter::PassIcmpErrorTruncated => "pass_icmp_error_truncated",
            Counter::IcmpFragNeeded => "icmp_frag_needed",
            Counter::AffinityHit => "affinity_hit",
            Counter::AffinityMiss => "affinity_miss",
            Counter::AffinityStale => "affinity_stale",
            Counter::PassExtensionHeaders => "pass_extension_headers",
            Counter::XdpPassToTc => "xdp_pass_to_tc",
            Counter::XdpSent => "xdp_sent",
        }
    }
}

/// Number of slots in `LB_STATS`.
pub const COUNTERS: u32 = Counter::ALL.len() as u32;
