//! The Service table: one frontend entry per (address, port, protocol) at
//! slot 0, and one entry per backend slot (1..=count) naming a backend id.
//! A lookup of slot 0 is the O(1) "is this a Service?" test; slot k is the
//! O(1) step from a hash to a backend.

use crate::user_pod;

/// Key of `LB4_SERVICES`. 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKeyV4 {
    /// Frontend address: ClusterIP, node address, external or LB IP. Network byte order.
    pub address: [u8; 4],
    /// Frontend port (Service port or NodePort). Host byte order.
    pub port: u16,
    /// IANA protocol number (`proto::TCP`, ...).
    pub proto: u8,
    /// `SCOPE_EXTERNAL` for every frontend; `SCOPE_INTERNAL` for the
    /// in-cluster entry of an external frontend with a Local policy (see
    /// `FLAG_SHORT_CIRCUIT`), which Pod traffic uses instead.
    pub scope: u8,
    /// 0 for the frontend entry, 1..=count for backend slots. Host byte order.
    pub backend_slot: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<ServiceKeyV4>() == 12);

pub const SCOPE_EXTERNAL: u8 = 0;
pub const SCOPE_INTERNAL: u8 = 1;

/// Value of `LB4_SERVICES`. 16 bytes. In a frontend entry (slot 0),
/// `frontend_id`, `count`, `flags` and `affinity_timeout_s` are set; in a
/// slot entry only `backend_id` is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Slot entries: the backend this slot points to. Host byte order.
    pub backend_id: u32,
    /// Frontend entry: this frontend's own id (the reverse-NAT index
    /// stored in conntrack), one per (address, port, protocol), so the
    /// ClusterIP and NodePort frontends of one Service port are told apart.
    /// Host byte order, never 0 for a live frontend, never reused (see
    /// `ids`). 32 bits: more than 65,535 frontends must fit.
    pub frontend_id: u32,
    /// Frontend entry: number of backend slots. 0 means "no endpoints":
    /// the datapath rejects new flows (ICMP port unreachable) as kube-proxy
    /// does, or drops them when `FLAG_NO_LOCAL_ENDPOINTS` is set.
    pub count: u16,
    /// Frontend entry: `FLAG_*` bits.
    pub flags: u16,
    /// Frontend entry: ClientIP session affinity timeout, seconds (0 = off).
    pub affinity_timeout_s: u32,
}
const _: () = assert!(size_of::<ServiceValue>() == 16);

/// What kind of frontend an entry is. Informational for the datapath so
/// far; the CLI and later policies (SNAT for NodePort, Local) use them.
pub const FLAG_CLUSTER_IP: u16 = 1 << 0;
pub const FLAG_NODE_PORT: u16 = 1 << 1;
pub const FLAG_EXTERNAL_IP: u16 = 1 << 2;
pub const FLAG_LOAD_BALANCER: u16 = 1 << 3;
/// sessionAffinity: ClientIP (timeout in `affinity_timeout_s`).
pub const FLAG_SESSION_AFFINITY: u16 = 1 << 4;
/// The backends are node-local only (a Local traffic policy applied).
pub const FLAG_LOCAL_ONLY: u16 = 1 << 5;
/// `count` is 0 because a Local traffic policy leaves no endpoint on this
/// node while the Service has endpoints elsewhere: new flows are dropped,
/// not rejected (kube-proxy's choice: the client or its load balancer
/// retries elsewhere instead of being told the Service is down).
pub const FLAG_NO_LOCAL_ENDPOINTS: u16 = 1 << 6;
/// New flows pick their backend from this frontend's Maglev table
/// (`LB4_MAGLEV`, keyed by `frontend_id`) instead of a slot. The slots
/// stay written: `count` still says whether there are endpoints at all.
pub const FLAG_MAGLEV: u16 = 1 << 7;
/// `loadBalancerSourceRanges` apply: a new flow's source must match one of
/// this frontend's entries in `LB4_SRC_RANGES`, or it is dropped.
pub const FLAG_SOURCE_RANGES: u16 = 1 << 8;
/// An external frontend under `externalTrafficPolicy: Local` that has an
/// in-cluster entry (the same key with `SCOPE_INTERNAL`): new flows from
/// the cluster's Pod CIDRs use its cluster-wide backends, as kube-proxy's
/// short-circuit of Pod traffic does.
pub const FLAG_SHORT_CIRCUIT: u16 = 1 << 9;

/// Key of `LB6_SERVICES`: `ServiceKeyV4` with a 16-byte address. 24 bytes.
/// The value is the same `ServiceValue`: ids, counts and flags do not
/// depend on the family. 8-byte aligned (no padding added: the size is a
/// multiple), so the datapath copies addresses in two 8-byte moves, not
/// sixteen 1-byte ones.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKeyV6 {
    /// Network byte order.
    pub address: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
    pub backend_slot: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<ServiceKeyV6>() == 24);

user_pod!(ServiceKeyV4, ServiceKeyV6, ServiceValue);

impl ServiceKeyV4 {
    /// The frontend entry (slot 0) for an address, port and protocol.
    pub const fn frontend(address: [u8; 4], port: u16, proto: u8) -> Self {
        Self { address, port, proto, scope: SCOPE_EXTERNAL, backend_slot: 0, _pad: [0; 2] }
    }

    /// The in-cluster entry of this frontend (see `FLAG_SHORT_CIRCUIT`).
    pub const fn in_cluster(self) -> Self {
        Self { scope: SCOPE_INTERNAL, ..self }
    }

    /// The key of backend slot `slot` (1-based) of this frontend.
    pub const fn slot(self, slot: u16) -> Self {
        Self { backend_slot: slot, ..self }
    }
}

impl ServiceKeyV6 {
    /// The frontend entry (slot 0) for an address, port and protocol.
    pub const fn frontend(address: [u8; 16], port: u16, proto: u8) -> Self {
        Self { address, port, proto, scope: SCOPE_EXTERNAL, backend_slot: 0, _pad: [0; 2] }
    }

    /// The in-cluster entry of this frontend (see `FLAG_SHORT_CIRCUIT`).
    pub const fn in_cluster(self) -> Self {
        Self { scope: SCOPE_INTERNAL, ..self }
    }

    /// The key of backend slot `slot` (1-based) of this frontend.
    pub const fn slot(self, slot: u16) -> Self {
        Self { backend_slot: slot, ..self }
    }
}
