//! Map names and default capacities, used by the datapath's declarations
//! and by the agent when it opens, sizes and pins maps.
//!
//! Names are at most 15 bytes (the kernel's BPF_OBJ_NAME_LEN less the NUL).
//! The datapath's `static`s carry these exact names; a test in the agent
//! checks that the built object has every one of them.

/// Frontends and their backend slots: `ServiceKeyV4` → `ServiceValue`.
pub const SERVICES_V4: &str = "LB4_SERVICES";
/// Backends by id: `u32` → `BackendV4`.
pub const BACKENDS_V4: &str = "LB4_BACKENDS";
/// Connection tracking (LRU): `CtKeyV4` → `CtValueV4`.
pub const CONNTRACK_V4: &str = "LB4_CT";
/// The IPv6 twins of the three maps above, with `ServiceKeyV6`,
/// `BackendV6` and `CtKeyV6` / `CtValueV6`. Backend and frontend ids come
/// from one id space for both families, so the per-frontend counters,
/// Maglev tables and the port filter are shared.
pub const SERVICES_V6: &str = "LB6_SERVICES";
pub const BACKENDS_V6: &str = "LB6_BACKENDS";
pub const CONNTRACK_V6: &str = "LB6_CT";
/// Which ports may belong to a frontend or a backend (array, by port).
pub const PORT_FILTER: &str = "LB_PORT_FILTER";
/// Which destination addresses may belong to a frontend (array of 64-bit
/// words, by `address_filter` bit).
pub const ADDRESS_FILTER: &str = "LB_ADDR_FILTER";
/// Per-CPU packet counters, indexed by `stats::Counter`.
pub const STATS: &str = "LB_STATS";
/// `loadBalancerSourceRanges` (LPM trie): `SourceRangeKeyV4` → `u8`.
pub const SOURCE_RANGES_V4: &str = "LB4_SRC_RANGES";
/// IPv6 `loadBalancerSourceRanges` (LPM trie): `SourceRangeKeyV6` → `u8`.
pub const SOURCE_RANGES_V6: &str = "LB6_SRC_RANGES";
/// The cluster's Pod CIDRs (LPM trie): `PodCidrKeyV4` → `u8`.
pub const POD_CIDRS_V4: &str = "LB4_POD_CIDRS";
/// The cluster's IPv6 Pod CIDRs (LPM trie): `PodCidrKeyV6` → `u8`.
pub const POD_CIDRS_V6: &str = "LB6_POD_CIDRS";
/// Socket-level reverse NAT (LRU): `SockRevKeyV4` → `SockRevValueV4`.
pub const SOCK_REV_V4: &str = "LB4_SOCK_REV";
/// Socket-level reverse NAT of IPv6 sockets (LRU): `SockRevKeyV6` →
/// `SockRevValueV6`.
pub const SOCK_REV_V6: &str = "LB6_SOCK_REV";
/// ClientIP affinity (LRU): `AffinityKeyV4` → `AffinityValueV4`.
pub const AFFINITY_V4: &str = "LB4_AFFINITY";
/// ClientIP affinity of IPv6 clients (LRU): `AffinityKeyV6` →
/// `AffinityValueV4`. The members map is shared (it holds ids).
pub const AFFINITY_V6: &str = "LB6_AFFINITY";
/// Backends each affinity frontend may choose: `AffinityMemberKeyV4` → `u8`.
pub const AFFINITY_MEMBERS_V4: &str = "LB4_AFF_MEMBERS";
/// Per-frontend counters (per-CPU hash): frontend id (`u32`) →
/// `FrontendStatsV4`.
pub const FRONTEND_STATS_V4: &str = "LB4_FE_STATS";
/// Each pinned map's layout version (hash): `layout_key(name)` →
/// `layout_version(name)` as of the build that last loaded it. Read and
/// written by the agent only.
pub const LAYOUT: &str = "LB_LAYOUT";
/// Datapath settings (array of one): `u32` 0 → `DatapathConfig`.
pub const CONFIG: &str = "LB_CONFIG";
/// The route epoch (array of one): `u32` 0 → a number the agent changes
/// whenever the kernel announces a change to routes, rules, nexthops,
/// neighbours, links, addresses or forwarding settings, and after it
/// removes an IPv4 backend. A route (and backend) kept on a conntrack
/// entry (`conntrack::RouteCache`) is used only while the epoch it was
/// kept under is current; 0 (no agent has written one) keeps none.
pub const ROUTE_EPOCH: &str = "LB_ROUTE_EPOCH";
/// The agent's id counters (array, indexed by `ids::NEXT_*`), pinned with
/// the other maps so ids stay unique across agent restarts.
pub const IDS: &str = "LB_IDS";

/// Maglev lookup tables (hash of maps): frontend id (`u32`) → an array of
/// `maglev::TABLE_SIZE` backend ids.
pub const MAGLEV_V4: &str = "LB4_MAGLEV";

/// Interfaces the XDP program may send frames out of (`DEVMAP_HASH`):
/// ifindex → the same ifindex. The agent writes the interfaces it attached
/// XDP to; an XDP path whose route leaves elsewhere passes to tc. Not
/// pinned: each agent fills its own when it attaches.
pub const XDP_DEVICES: &str = "LB_XDP_DEVICES";
pub const XDP_DEVICES_CAPACITY: u32 = 64;

/// Interfaces tc may hand a packet to with `bpf_redirect_peer` (`HASH`:
/// ifindex → 1). The agent writes each interface it attached `lb_tc` to
/// that is a veth (or netkit) whose peer lives in another network namespace (a
/// pod's); the packet then enters the pod's namespace directly, without
/// a second pass through the veth and the receive backlog. Any other
/// interface (a NIC, a veth with both ends here) is sent to as before:
/// the kernel drops a peer redirect to a device without a peer elsewhere.
/// Not pinned, like `XDP_DEVICES`.
pub const PEER_DEVICES: &str = "LB_PEER_DEVICES";
pub const PEER_DEVICES_CAPACITY: u32 = 4096;

/// The test LAN's switch table, read by `lb_wire` only (`HASH`: a
/// station's MAC address → the ifindex of the LAN port that leads to it).
/// The agent never writes it and does not pin it.
pub const WIRE_PORTS: &str = "LB_WIRE_PORTS";
pub const WIRE_PORTS_CAPACITY: u32 = 64;

/// All maps the agent pins, in the order it lists them.
pub const ALL: [&str; 24] = [
    SERVICES_V4,
    BACKENDS_V4,
    CONNTRACK_V4,
    SERVICES_V6,
    BACKENDS_V6,
    CONNTRACK_V6,
    PORT_FILTER,
    ADDRESS_FILTER,
    STATS,
    IDS,
    SOURCE_RANGES_V4,
    SOURCE_RANGES_V6,
    POD_CIDRS_V4,
    POD_CIDRS_V6,
    MAGLEV_V4,
    SOCK_REV_V4,
    SOCK_REV_V6,
    AFFINITY_V4,
    AFFINITY_V6,
    AFFINITY_MEMBERS_V4,
    FRONTEND_STATS_V4,
    CONFIG,
    ROUTE_EPOCH,
    LAYOUT,
];

/// Frontend entries plus one entry per backend slot. 10,000 Services with
/// 10 endpoints each need 110,000; the agent can raise it at load time.
/// The map is not preallocated, so unused capacity costs nothing.
pub const SERVICES_V4_CAPACITY: u32 = 1 << 18;
/// Distinct backends (address, port, protocol) across all Services.
pub const BACKENDS_V4_CAPACITY: u32 = 1 << 18;
/// Tracked flows, two entries each (original and reply direction). An LRU
/// map is always preallocated: 144 bytes an entry with its bucket (the
/// kernel's memlock for this map; 32 of them the kept route and backend,
/// `conntrack::RouteCache`), so 1 Mi entries is 151 MB of kernel
/// memory. Sized for 512 Ki flows: the benchmark's
/// TCP case opens about 25,000 connections a second for 4.5 s per run and
/// three runs per table size, about 340,000 flows, which fit here even
/// before garbage collection removes the closed ones (a quarter of this
/// overflowed). The agent can change it at load time (`--conntrack-max`).
pub const CONNTRACK_V4_CAPACITY: u32 = 1 << 20;
/// IPv6 frontends and slots, not preallocated.
pub const SERVICES_V6_CAPACITY: u32 = 1 << 18;
pub const BACKENDS_V6_CAPACITY: u32 = 1 << 18;
/// IPv6 tracked flows. Preallocated like `CONNTRACK_V4_CAPACITY`, at
/// about 150 bytes an entry with its bucket: 256 Ki entries (128 Ki
/// flows) is ~40 MB of kernel memory, a quarter of the IPv4 table's
/// entries, since most clusters still carry most Service traffic over
/// IPv4. The agent can change it at load time (`--conntrack-max-v6`).
pub const CONNTRACK_V6_CAPACITY: u32 = 1 << 18;
/// Sockets translated by the socket-level hooks, one entry per (socket,
/// backend). LRU: a closed socket's entry is never deleted (no hook runs
/// at close for every socket), so the idlest entries make room. About
/// 100 bytes an entry, preallocated: 64 Ki entries is ~6.5 MB.
pub const SOCK_REV_V4_CAPACITY: u32 = 1 << 16;
/// IPv6 sockets translated by the socket-level hooks, as above.
pub const SOCK_REV_V6_CAPACITY: u32 = 1 << 16;
/// Clients with ClientIP affinity, one entry per (frontend, client
/// address). LRU: an entry is never deleted when it expires (the datapath
/// only compares its age), so the idlest make room; a client whose entry
/// was evicted is balanced afresh. About 80 bytes an entry, preallocated:
/// 64 Ki entries is ~5 MB. The agent can change it at load time
/// (`--affinity-max`).
pub const AFFINITY_V4_CAPACITY: u32 = 1 << 16;
/// Backends of affinity frontends, one entry per (frontend, backend) slot.
/// Not preallocated.
pub const AFFINITY_MEMBERS_V4_CAPACITY: u32 = 1 << 18;
/// Source ranges across all LoadBalancer frontends. Not preallocated.
pub const SOURCE_RANGES_V4_CAPACITY: u32 = 1 << 16;
pub const SOURCE_RANGES_V6_CAPACITY: u32 = 1 << 16;
/// Frontends counted in `FRONTEND_STATS_V4`: one entry per frontend that
/// has seen a new flow, removed by the agent when the frontend goes. Not
/// preallocated (per-CPU values: 24 bytes per CPU an entry).
pub const FRONTEND_STATS_V4_CAPACITY: u32 = 1 << 17;
/// Pod CIDRs: a cluster has a few.
pub const POD_CIDRS_V4_CAPACITY: u32 = 64;
pub const POD_CIDRS_V6_CAPACITY: u32 = 64;
/// One entry per port number.
pub const PORT_FILTER_CAPACITY: u32 = 1 << 16;

/// The kernel's `BPF_F_MMAPABLE`: an array the agent maps into its
/// memory.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Map flags of the port and address filters: `BPF_F_MMAPABLE`, so the
/// agent reads and writes their 65,536 values as memory instead of one
/// syscall-copied element at a time (a full read took 16–18 ms each).
pub const FILTER_FLAGS: u32 = BPF_F_MMAPABLE;
/// Maglev frontends (each names a table of `maglev::TABLE_BYTES` = 128
/// KiB of kernel memory plus a page; frontends with equal tables name the
/// same one, and a table exists only while a frontend names it). By
/// default NodePort, externalIP and LoadBalancer frontends use Maglev: a
/// node with 3 addresses and 500 NodePort Service ports has 1,500 of them
/// over 500 tables, about 65 MiB. The agent can change it at load time
/// (`--maglev-max`).
pub const MAGLEV_V4_CAPACITY: u32 = 4096;

/// Entries of `LAYOUT`: one per map, with room to grow.
pub const LAYOUT_CAPACITY: u32 = 64;

/// The version of a map's layout: what its keys and values mean, beyond
/// their sizes (which the agent compares too). Bumped when a field changes
/// meaning at the same size, so a map pinned by a build that read it the
/// old way is recreated (or refused, for the id counters) rather than
/// misread. Maps pinned before versions were recorded are version 1.
/// Every map is at version 1: none has changed meaning at a constant size
/// since versions were first recorded (a change adds its map here).
pub fn layout_version(_map: &str) -> u32 {
    1
}

/// `LAYOUT`'s key for a map: its name, NUL-padded to 16 bytes.
pub fn layout_key(map: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let name = &map.as_bytes()[..map.len().min(15)];
    key[..name.len()].copy_from_slice(name);
    key
}
