//! Map declarations. Names, key and value types and capacities come from
//! `lb-common`; `#[btf_map]` emits BTF so `bpftool map dump` prints named
//! fields. The agent may resize maps at load time.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, DevMapHash, HashMap, HashOfMaps, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use lb_common::{
    address_filter,
    affinity::{AffinityKeyV4, AffinityKeyV6, AffinityMemberKeyV4, AffinityValueV4},
    backend::{BackendV4, BackendV6},
    clock::CachedSeconds,
    config::DatapathConfig,
    conntrack::{CtKeyV4, CtKeyV6, CtValueV4, CtValueV6},
    frontend_stats::FrontendStatsV4,
    ids, maglev,
    maps::{
        AFFINITY_MEMBERS_V4_CAPACITY, AFFINITY_V4_CAPACITY, BACKENDS_V4_CAPACITY, BACKENDS_V6_CAPACITY,
        CONNTRACK_V4_CAPACITY, CONNTRACK_V6_CAPACITY, FILTER_FLAGS, FRONTEND_STATS_V4_CAPACITY, LAYOUT_CAPACITY,
        MAGLEV_V4_CAPACITY, PEER_DEVICES_CAPACITY, POD_CIDRS_V4_CAPACITY, POD_CIDRS_V6_CAPACITY, PORT_FILTER_CAPACITY,
        SERVICES_V4_CAPACITY, SERVICES_V6_CAPACITY, SOCK_REV_V4_CAPACITY, SOCK_REV_V6_CAPACITY,
        SOURCE_RANGES_V4_CAPACITY, SOURCE_RANGES_V6_CAPACITY, WIRE_PORTS_CAPACITY, XDP_DEVICES_CAPACITY,
    },
    service::{ServiceKeyV4, ServiceKeyV6, ServiceValue},
    sock::{SockRevKeyV4, SockRevKeyV6, SockRevValueV4, SockRevValueV6},
    stats::COUNTERS,
};

const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

/// Written only by the agent; not preallocated, so a large capacity is free
/// until used.
#[btf_map]
pub static LB4_SERVICES: HashMap<ServiceKeyV4, ServiceValue, { SERVICES_V4_CAPACITY as usize }, NO_PREALLOC> =
    HashMap::new();

#[btf_map]
pub static LB4_BACKENDS: HashMap<u32, BackendV4, { BACKENDS_V4_CAPACITY as usize }, NO_PREALLOC> = HashMap::new();

/// Written by the datapath for every new flow; LRU so a full table evicts
/// the idlest flow instead of refusing new ones.
#[btf_map]
pub static LB4_CT: LruHashMap<CtKeyV4, CtValueV4, { CONNTRACK_V4_CAPACITY as usize }> = LruHashMap::new();

/// The IPv6 twins of the three maps above. Frontend and backend ids come
/// from the same id space as IPv4's, so the port filter, the per-frontend
/// counters and Maglev tables are shared.
#[btf_map]
pub static LB6_SERVICES: HashMap<ServiceKeyV6, ServiceValue, { SERVICES_V6_CAPACITY as usize }, NO_PREALLOC> =
    HashMap::new();

#[btf_map]
pub static LB6_BACKENDS: HashMap<u32, BackendV6, { BACKENDS_V6_CAPACITY as usize }, NO_PREALLOC> = HashMap::new();

#[btf_map]
pub static LB6_CT: LruHashMap<CtKeyV6, CtValueV6, { CONNTRACK_V6_CAPACITY as usize }> = LruHashMap::new();

/// Per-CPU room in which a new flow's two conntrack values are built
/// (`conntrack::SCRATCH_*`): map memory, not stack, which the longest
/// paths have no room left for. Programs on one CPU do not interleave
/// (both hooks that start flows run in softirq). Not pinned.
#[btf_map]
pub static LB4_CT_SCRATCH: PerCpuArray<CtValueV4, 2> = PerCpuArray::new();

#[btf_map]
pub static LB6_CT_SCRATCH: PerCpuArray<CtValueV6, 2> = PerCpuArray::new();

/// The conntrack clock's seconds at the last jiffy this CPU read it at
/// (`clock`). Not pinned: a new datapath starts with a miss.
#[btf_map]
pub static LB_CLOCK: PerCpuArray<CachedSeconds, 1> = PerCpuArray::new();

/// `lb_common::port_filter` bits by port number.
#[btf_map]
pub static LB_PORT_FILTER: Array<u8, { PORT_FILTER_CAPACITY as usize }, { FILTER_FLAGS as usize }> = Array::new();

/// `lb_common::address_filter` bits, 64 a word.
#[btf_map]
pub static LB_ADDR_FILTER: Array<u64, { address_filter::WORDS as usize }, { FILTER_FLAGS as usize }> = Array::new();

#[btf_map]
pub static LB_STATS: PerCpuArray<u64, { COUNTERS as usize }> = PerCpuArray::new();

/// The agent's id counters (`lb_common::ids`). Declared here so it is
/// created and pinned with the datapath's maps; the datapath never reads it.
#[btf_map]
pub static LB_IDS: Array<u32, { ids::COUNTERS as usize }> = Array::new();

/// A Maglev table for each Maglev frontend: frontend id → an array of
/// `maglev::TABLE_SIZE` backend ids (`lb_common::maglev`); frontends with
/// equal tables name the same array, which no packet path writes. The inner
/// arrays all have that size, so the kernel inlines the inner lookup.
/// Not preallocated: an entry costs nothing until the agent adds a table,
/// and a removed entry is never reused under a reader.
#[btf_map]
pub static LB4_MAGLEV: HashOfMaps<
    u32,
    Array<u32, { maglev::TABLE_SIZE as usize }, { maglev::TABLE_FLAGS as usize }>,
    { MAGLEV_V4_CAPACITY as usize },
    NO_PREALLOC,
> = HashOfMaps::new();

/// `loadBalancerSourceRanges` by (frontend id, client address): see
/// `lb_common::source_ranges`. Written only by the agent.
#[btf_map]
pub static LB4_SRC_RANGES: LpmTrie<[u8; 8], u8, { SOURCE_RANGES_V4_CAPACITY as usize }> = LpmTrie::new();

/// IPv6 `loadBalancerSourceRanges` by (frontend id, client address):
/// 20 bytes of trie data (`lb_common::source_ranges::SourceRangeKeyV6`).
#[btf_map]
pub static LB6_SRC_RANGES: LpmTrie<[u8; 20], u8, { SOURCE_RANGES_V6_CAPACITY as usize }> = LpmTrie::new();

/// The cluster's Pod CIDRs (`lb_common::pod_cidrs`). Written only by the
/// agent.
#[btf_map]
pub static LB4_POD_CIDRS: LpmTrie<[u8; 4], u8, { POD_CIDRS_V4_CAPACITY as usize }> = LpmTrie::new();

/// The cluster's IPv6 Pod CIDRs. Written only by the agent.
#[btf_map]
pub static LB6_POD_CIDRS: LpmTrie<[u8; 16], u8, { POD_CIDRS_V6_CAPACITY as usize }> = LpmTrie::new();

/// Socket-level reverse NAT (`lb_common::sock`): written by connect4 and
/// sendmsg4, read by recvmsg4 and getpeername4. LRU: closed sockets' entries
/// are never deleted, the idlest make room.
#[btf_map]
pub static LB4_SOCK_REV: LruHashMap<SockRevKeyV4, SockRevValueV4, { SOCK_REV_V4_CAPACITY as usize }> =
    LruHashMap::new();

/// Socket-level reverse NAT of IPv6 sockets: written by connect6 and
/// sendmsg6, read by recvmsg6 and getpeername6.
#[btf_map]
pub static LB6_SOCK_REV: LruHashMap<SockRevKeyV6, SockRevValueV6, { SOCK_REV_V6_CAPACITY as usize }> =
    LruHashMap::new();

/// ClientIP affinity (`lb_common::affinity`): written by the datapath for
/// every new flow to an affinity frontend. LRU, so a full map evicts the
/// idlest client instead of refusing new ones.
#[btf_map]
pub static LB4_AFFINITY: LruHashMap<AffinityKeyV4, AffinityValueV4, { AFFINITY_V4_CAPACITY as usize }> =
    LruHashMap::new();

/// ClientIP affinity of IPv6 clients, as `LB4_AFFINITY`.
#[btf_map]
pub static LB6_AFFINITY: LruHashMap<AffinityKeyV6, AffinityValueV4, { AFFINITY_V4_CAPACITY as usize }> =
    LruHashMap::new();

/// The backends each affinity frontend may choose for new flows (either
/// family: keyed by ids). Written
/// only by the agent.
#[btf_map]
pub static LB4_AFF_MEMBERS: HashMap<AffinityMemberKeyV4, u8, { AFFINITY_MEMBERS_V4_CAPACITY as usize }, NO_PREALLOC> =
    HashMap::new();

/// Per-frontend counters (`lb_common::frontend_stats`): created by the
/// datapath at a frontend's first new flow, removed by the agent when the
/// frontend goes.
#[btf_map]
pub static LB4_FE_STATS: PerCpuHashMap<u32, FrontendStatsV4, { FRONTEND_STATS_V4_CAPACITY as usize }, NO_PREALLOC> =
    PerCpuHashMap::new();

/// The agent's settings (`lb_common::config`), one entry.
#[btf_map]
pub static LB_CONFIG: Array<DatapathConfig, 1> = Array::new();

/// The route epoch (`lb_common::maps::ROUTE_EPOCH`), one entry, written
/// by the agent.
#[btf_map]
pub static LB_ROUTE_EPOCH: Array<u32, 1> = Array::new();

/// Each pinned map's layout version (`lb_common::maps::LAYOUT`). Declared
/// here so it is created and pinned with the others; the datapath never
/// reads it.
#[btf_map]
pub static LB_LAYOUT: HashMap<[u8; 16], u32, { LAYOUT_CAPACITY as usize }> = HashMap::new();

/// `lb_common::maps::XDP_DEVICES`: where the XDP program may redirect.
#[btf_map]
pub static LB_XDP_DEVICES: DevMapHash<{ XDP_DEVICES_CAPACITY as usize }> = DevMapHash::new();

/// `lb_common::maps::PEER_DEVICES`: where tc may redirect to a peer.
#[btf_map]
pub static LB_PEER_DEVICES: HashMap<u32, u8, { PEER_DEVICES_CAPACITY as usize }, NO_PREALLOC> = HashMap::new();

/// `lb_common::maps::WIRE_PORTS`: the test LAN's switch table (`wire`).
#[btf_map]
pub static LB_WIRE_PORTS: HashMap<[u8; 6], u32, { WIRE_PORTS_CAPACITY as usize }> = HashMap::new();
