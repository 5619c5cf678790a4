//! The datapath loaded into the kernel (not attached anywhere), its maps
//! programmed through the agent's own translate → encode → diff path, and
//! packets pushed through it with BPF_PROG_TEST_RUN.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use crate::{packets::Endpoint, packets6::Endpoint6};
use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, HashOfMaps, IterableMap as _, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, TestRunResult},
};
use lb_common::{
    affinity::{AffinityKeyV4, AffinityValueV4},
    backend::BackendV4,
    conntrack::{CtKeyV4, CtKeyV6, CtValueV4, CtValueV6, DIR_ORIGINAL},
    maps as names,
    stats::Counter,
};
use lb_userspace::{
    conntrack::flows::FlowKey,
    datapath::{
        loader::{self, Capacities},
        maps::ServiceMaps,
        skb_checksum::StateSource,
    },
    model::NodeContext,
    source::objects,
    sync::Syncer,
    tables::DesiredMaps,
    trace::xdp_md,
};

/// tc verdicts as the program returns them.
pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

/// XDP verdicts as the program returns them.
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;
pub const XDP_REDIRECT: i32 = 4;

pub struct Datapath {
    ebpf: Ebpf,
    syncer: Syncer<ServiceMaps>,
    /// Kernel id of LB4_BACKENDS (the syncer owns the map itself), so a
    /// test can change it behind the agent's back.
    backends_map_id: u32,
    /// Kernel id of LB4_MAGLEV, for the same reason.
    maglev_map_id: u32,
    /// Kernel id of LB4_AFFINITY, for the same reason.
    affinity_map_id: u32,
}

/// Packet counters summed over CPUs, by counter.
pub type Counters = BTreeMap<Counter, u64>;

/// The counters that moved between two readings, and by how much.
pub fn moved(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .map(|(&c, &n)| (c, n - before.get(&c).copied().unwrap_or(0)))
        .filter(|&(_, delta)| delta != 0)
        .collect()
}

/// What one run of a program did to a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    pub verdict: i32,
    pub packet: Vec<u8>,
}

impl Datapath {
    /// Loads and verifies the programs with fresh, unpinned maps.
    pub fn load(node: NodeContext) -> anyhow::Result<Self> {
        Self::load_with(node, Capacities::default())
    }

    pub fn load_with(node: NodeContext, capacities: Capacities) -> anyhow::Result<Self> {
        Self::load_reading(node, capacities, &StateSource::detect())
    }

    /// `load_with`, the tc programs learning checksum states from
    /// `source` (`StateSource::helper`: as where the kernel does not let
    /// them read the sk_buff).
    pub fn load_reading(node: NodeContext, capacities: Capacities, source: &StateSource) -> anyhow::Result<Self> {
        isolate_thread()?;
        let mut ebpf = loader::load_reading(None, capacities, source)?;
        let (backends_map_id, maglev_map_id) = (backends_map_id(&ebpf)?, map_id(&ebpf, names::MAGLEV_V4)?);
        let affinity_map_id = map_id(&ebpf, names::AFFINITY_V4)?;
        let maps = ServiceMaps::from_ebpf(&mut ebpf)?;
        let syncer = Syncer::new(maps, DesiredMaps::default(), node);
        Ok(Self { ebpf, syncer, backends_map_id, maglev_map_id, affinity_map_id })
    }

    /// Loads the programs with their maps pinned in `pin_dir`, re-using
    /// maps already pinned there (conntrack included), and resumes from
    /// what they hold: what an agent does when it starts again.
    pub fn load_pinned(node: NodeContext, pin_dir: &Path) -> anyhow::Result<Self> {
        isolate_thread()?;
        let mut ebpf = loader::load(Some(pin_dir), Capacities::default())?;
        let (backends_map_id, maglev_map_id) = (backends_map_id(&ebpf)?, map_id(&ebpf, names::MAGLEV_V4)?);
        let affinity_map_id = map_id(&ebpf, names::AFFINITY_V4)?;
        let syncer = Syncer::resume(ServiceMaps::from_ebpf(&mut ebpf)?, node)?;
        Ok(Self { ebpf, syncer, backends_map_id, maglev_map_id, affinity_map_id })
    }

    /// Every map as the agent last wrote it.
    pub fn maps(&self) -> &DesiredMaps {
        self.syncer.current()
    }

    /// The backend table as the agent last wrote it: id → backend.
    pub fn backends(&self) -> &BTreeMap<u32, BackendV4> {
        &self.syncer.current().backends
    }

    /// Deletes the LB4_BACKENDS entry of `backend` directly in the kernel
    /// map, without telling the agent; returns the id it had.
    pub fn remove_backend_entry(&mut self, backend: SocketAddrV4) -> anyhow::Result<u32> {
        let id = self
            .backends()
            .iter()
            .find(|(_, b)| b.address == backend.ip().octets() && b.port == backend.port())
            .map(|(id, _)| *id)
            .with_context(|| format!("no backend {backend} in the table"))?;
        let mut map: HashMap<MapData, u32, BackendV4> =
            aya::maps::Map::from_map_data(MapData::from_id(self.backends_map_id)?)?.try_into()?;
        map.remove(&id)?;
        Ok(id)
    }

    /// Writes one position of a frontend's Maglev table directly in the
    /// kernel, without telling the agent.
    pub fn overwrite_maglev_position(
        &mut self,
        frontend_id: u32,
        position: u32,
        backend_id: u32,
    ) -> anyhow::Result<()> {
        let map = aya::maps::Map::from_map_data(MapData::from_id(self.maglev_map_id)?)?;
        let outer: HashOfMaps<MapData, u32, Array<MapData, u32>> = map.try_into()?;
        outer.get(&frontend_id, 0)?.set(position, backend_id, 0)?;
        Ok(())
    }

    /// Gives a frontend its own copy of its Maglev table directly in the
    /// kernel, without telling the agent: how an earlier build, which
    /// held one table per frontend, left the map.
    pub fn copy_maglev_table(&mut self, frontend_id: u32) -> anyhow::Result<()> {
        let map = aya::maps::Map::from_map_data(MapData::from_id(self.maglev_map_id)?)?;
        let mut outer: HashOfMaps<MapData, u32, Array<MapData, u32>> = map.try_into()?;
        let held = outer.get(&frontend_id, 0)?;
        let mut copy = Array::<MapData, u32>::create(held.len(), lb_common::maglev::TABLE_FLAGS)?;
        for (position, id) in held.iter().enumerate() {
            copy.set(position as u32, id?, 0)?;
        }
        outer.insert(frontend_id, &copy, 0)?;
        Ok(())
    }

    /// The kernel map id of each frontend's Maglev table, by frontend id:
    /// frontends with equal tables name the same map.
    pub fn maglev_map_ids(&self) -> anyhow::Result<BTreeMap<u32, u32>> {
        let map = aya::maps::Map::from_map_data(MapData::from_id(self.maglev_map_id)?)?;
        let outer: HashOfMaps<MapData, u32, Array<MapData, u32>> = map.try_into()?;
        let mut ids = BTreeMap::new();
        for frontend_id in outer.keys() {
            let frontend_id = frontend_id?;
            ids.insert(frontend_id, outer.get(&frontend_id, 0)?.map().info()?.id());
        }
        Ok(ids)
    }

    /// The datapath's ClientIP affinity entries.
    pub fn affinity(&self) -> anyhow::Result<BTreeMap<AffinityKeyV4, AffinityValueV4>> {
        let map: HashMap<MapData, AffinityKeyV4, AffinityValueV4> =
            aya::maps::Map::from_map_data(MapData::from_id(self.affinity_map_id)?)?.try_into()?;
        map.iter().map(|entry| Ok(entry?)).collect()
    }

    /// Writes an affinity entry behind the datapath's back (an aged one,
    /// or one naming a backend the frontend no longer chooses).
    pub fn insert_affinity(&mut self, key: AffinityKeyV4, value: AffinityValueV4) -> anyhow::Result<()> {
        let mut map: HashMap<MapData, AffinityKeyV4, AffinityValueV4> =
            aya::maps::Map::from_map_data(MapData::from_id(self.affinity_map_id)?)?.try_into()?;
        Ok(map.insert(key, value, 0)?)
    }

    /// A full sync, as the agent runs every `--sync-period`, of the
    /// objects last applied: returns how many entries it repaired.
    pub fn resync(&mut self, text: &str) -> anyhow::Result<usize> {
        let objects = objects::parse(text)?;
        Ok(self.syncer.sync(&objects.services, &objects.slices)?.repaired)
    }

    /// The original-direction conntrack entry of the flow from `client` to
    /// `frontend`, if the datapath tracks one.
    pub fn flow_entry(&self, client: Endpoint, frontend: Endpoint) -> Option<CtValueV4> {
        let (client, frontend) = ((client.ip, client.port).into(), (frontend.ip, frontend.port).into());
        original_entry(self.conntrack().expect("read conntrack"), client, frontend)
    }

    /// The conntrack entries the datapath has written.
    pub fn conntrack(&self) -> anyhow::Result<Vec<(CtKeyV4, CtValueV4)>> {
        self.syncer.writer().conntrack_entries()
    }

    /// Writes a conntrack entry behind the datapath's back (to fill a
    /// range a test wants exhausted).
    pub fn insert_conntrack(&mut self, entries: impl IntoIterator<Item = (CtKeyV4, CtValueV4)>) -> anyhow::Result<()> {
        let id = self.syncer.writer().conntrack_map_id()?;
        let mut map: HashMap<MapData, CtKeyV4, CtValueV4> =
            aya::maps::Map::from_map_data(MapData::from_id(id)?)?.try_into()?;
        for (key, value) in entries {
            map.insert(key, value, 0)?;
        }
        Ok(())
    }

    /// The IPv6 flows the datapath has tracked (LB6_CT), by key.
    pub fn conntrack_v6(&self) -> anyhow::Result<Vec<(CtKeyV6, CtValueV6)>> {
        self.syncer.writer().conntrack_v6_entries()
    }

    /// `flow_entry` for an IPv6 flow.
    pub fn flow_entry_v6(&self, client: Endpoint6, frontend: Endpoint6) -> Option<CtValueV6> {
        let (client, frontend) = ((client.ip, client.port).into(), (frontend.ip, frontend.port).into());
        original_entry(self.conntrack_v6().expect("read conntrack"), client, frontend)
    }

    /// LB4_CT itself, as the agent's conntrack worker opens it.
    pub fn conntrack_map(&self) -> anyhow::Result<lb_userspace::conntrack::sweep::ConntrackMap> {
        let id = self.syncer.writer().conntrack_map_id()?;
        Ok(aya::maps::Map::from_map_data(MapData::from_id(id)?)?.try_into()?)
    }

    /// LB_STATS, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let map: PerCpuArray<&MapData, u64> = self.ebpf.map(names::STATS).context("stats map")?.try_into()?;
        Counter::ALL.iter().map(|&c| Ok((c, map.get(&(c as u32), 0)?.iter().sum()))).collect()
    }

    /// Programs the maps from Kubernetes objects (YAML or JSON text).
    pub fn apply(&mut self, text: &str) -> anyhow::Result<()> {
        let objects = objects::parse(text)?;
        anyhow::ensure!(objects.problems.is_empty(), "unreadable objects: {:?}", objects.problems);
        let report = self.syncer.sync(&objects.services, &objects.slices)?;
        anyhow::ensure!(report.problems.is_empty(), "untranslatable objects: {:?}", report.problems);
        Ok(())
    }

    /// Runs `program` once on `packet` and also returns the counters the
    /// run moved.
    pub fn run_counted(&mut self, program: &str, packet: &[u8]) -> anyhow::Result<(RunResult, Counters)> {
        let before = self.counters()?;
        let result = self.run(program, packet)?;
        Ok((result, moved(&before, &self.counters()?)))
    }

    pub fn syncer_mut(&mut self) -> &mut Syncer<ServiceMaps> {
        &mut self.syncer
    }

    /// Runs `program` once on `packet`.
    pub fn run(&mut self, program: &str, packet: &[u8]) -> anyhow::Result<RunResult> {
        run_once(loader::program(&mut self.ebpf, program)?, packet, None)
    }

    /// Runs the tc program `program` once on `packet` as a NIC that sums
    /// what it receives hands it over: `CHECKSUM_COMPLETE`, `skb->csum`
    /// the sum of the packet from its IP header on. The kernel checks
    /// after the run that `skb->csum` still sums the packet the program
    /// left: a program that rewrites bytes and does not keep it right
    /// fails the run (the receiving stack would see a checksum error).
    pub fn run_checksum_complete(&mut self, program: &str, packet: &[u8]) -> anyhow::Result<RunResult> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let prog = loader::program(&mut self.ebpf, program)?;
        let fd = prog.fd()?.as_fd().as_raw_fd();
        checksum_complete_run(fd, packet)
    }

    /// Runs `lb_xdp` once on `packet` as received on interface `ingress`
    /// (0: the namespace's loopback, test runs' default).
    pub fn run_xdp(&mut self, packet: &[u8], ingress: u32) -> anyhow::Result<RunResult> {
        let ctx = xdp_md(packet.len(), ingress);
        run_once(loader::xdp_program(&mut self.ebpf)?, packet, (ingress != 0).then_some(ctx.as_slice()))
    }

    /// `run_xdp`, with the counters the run moved.
    pub fn run_xdp_counted(&mut self, packet: &[u8], ingress: u32) -> anyhow::Result<(RunResult, Counters)> {
        let before = self.counters()?;
        let result = self.run_xdp(packet, ingress)?;
        Ok((result, moved(&before, &self.counters()?)))
    }

    /// `time` for `lb_xdp`, the frame received on interface `ingress`.
    pub fn time_xdp(&mut self, packet: &[u8], repeat: u32, ingress: u32) -> anyhow::Result<Duration> {
        let ctx = xdp_md(packet.len(), ingress);
        timed(loader::xdp_program(&mut self.ebpf)?, packet, repeat, (ingress != 0).then_some(ctx.as_slice()))
    }

    /// Writes the datapath's settings (`LB_CONFIG`), as the agent does
    /// from its flags.
    pub fn set_config(&mut self, config: lb_common::config::DatapathConfig) -> anyhow::Result<()> {
        let mut map: Array<&mut MapData, lb_common::config::DatapathConfig> =
            self.ebpf.map_mut(names::CONFIG).context("config map")?.try_into()?;
        map.set(0, config, 0)?;
        Ok(())
    }

    /// Writes the route epoch (`LB_ROUTE_EPOCH`), as the agent does at
    /// start and on every routing change it is told of: 0 keeps no route.
    pub fn set_route_epoch(&mut self, epoch: u32) -> anyhow::Result<()> {
        let mut map: Array<&mut MapData, u32> =
            self.ebpf.map_mut(names::ROUTE_EPOCH).context("route epoch map")?.try_into()?;
        map.set(0, epoch, 0)?;
        Ok(())
    }

    /// The route epoch the maps hold now.
    pub fn route_epoch(&self) -> anyhow::Result<u32> {
        let map: Array<&MapData, u32> = self.ebpf.map(names::ROUTE_EPOCH).context("route epoch map")?.try_into()?;
        Ok(map.get(&0, 0)?)
    }

    /// Lets `lb_xdp` redirect to interface `ifindex`, as the agent does for
    /// each interface it attaches XDP to.
    pub fn allow_xdp_device(&mut self, ifindex: u32) -> anyhow::Result<()> {
        let mut map: DevMapHash<&mut MapData> =
            self.ebpf.map_mut(names::XDP_DEVICES).context("XDP devices map")?.try_into()?;
        map.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    /// Runs `program` on `packet` `repeat` times in the kernel and returns
    /// the kernel's average time per run. The kernel reuses one buffer for
    /// all repetitions, so a rewriting program sees its own output from the
    /// second run on: callers pick packets whose output takes the same path.
    pub fn time(&mut self, program: &str, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        timed(loader::program(&mut self.ebpf, program)?, packet, repeat, None)
    }
}

/// A packet program (tc or XDP) as BPF_PROG_TEST_RUN runs it.
trait PacketProgram: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult> {}

impl<P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>> PacketProgram for P {}

/// One run of `prog` on `packet`, given context `ctx_in` if any: its
/// verdict and the packet it left.
fn run_once(prog: &impl PacketProgram, packet: &[u8], ctx_in: Option<&[u8]>) -> anyhow::Result<RunResult> {
    let mut out = vec![0u8; packet.len() + 256];
    let result = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in,
        repeat: 1,
        ..Default::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok(RunResult { verdict: result.return_value as i32, packet: out })
}

/// `BPF_PROG_TEST_RUN`'s flag (kernel 6.11+) for a tc program's run on
/// an skb with `CHECKSUM_COMPLETE`, its sum checked after the run. aya's
/// test-run options cannot set it, hence the raw system call.
const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr`'s `test` member.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn checksum_complete_run(prog_fd: i32, packet: &[u8]) -> anyhow::Result<RunResult> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        flags: BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of its own size; the
    // buffers it points to outlive the call and are as long as it says.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, std::ptr::from_mut(&mut attr), size_of::<TestRunAttr>())
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EBADMSG) {
            anyhow::bail!("the run left skb->csum (CHECKSUM_COMPLETE) out of step with the packet it wrote");
        }
        return Err(err).context("BPF_PROG_TEST_RUN with BPF_F_TEST_SKB_CHECKSUM_COMPLETE (kernel 6.11 or later)");
    }
    out.truncate(attr.data_size_out as usize);
    Ok(RunResult { verdict: attr.retval as i32, packet: out })
}

/// The kernel's average time per run of `repeat` runs of `prog` on `packet`.
fn timed(prog: &impl PacketProgram, packet: &[u8], repeat: u32, ctx_in: Option<&[u8]>) -> anyhow::Result<Duration> {
    Ok(prog.test_run(TestRunOptions { data_in: Some(packet), ctx_in, repeat, ..Default::default() })?.duration)
}

/// Moves the calling thread into a network namespace of its own, unless
/// it is in one already. BPF_PROG_TEST_RUN runs a program in the caller's
/// namespace, and the datapath asks that namespace's routing table where a
/// NATed packet goes; a fresh namespace (no routes, forwarding off) makes
/// every lookup miss the same way on every machine, so the fixtures never
/// depend on the host's routes. Tests that want a route create it here.
fn isolate_thread() -> anyhow::Result<()> {
    thread_local!(static ISOLATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if ISOLATED.get() {
        return Ok(());
    }
    // SAFETY: unshare(2) with CLONE_NEWNET affects only the calling thread's
    // namespace membership; no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    ISOLATED.set(true);
    Ok(())
}

/// Kernel id of one of the object's maps (a hash of maps or an LRU hash).
fn map_id(ebpf: &Ebpf, name: &str) -> anyhow::Result<u32> {
    let map = ebpf.map(name).with_context(|| format!("map {name}"))?;
    Ok(aya::maps::MapData::info(match map {
        aya::maps::Map::HashOfMaps(data) | aya::maps::Map::LruHashMap(data) => data,
        _ => anyhow::bail!("{name} is neither a hash of maps nor an LRU hash"),
    })?
    .id())
}

/// Seconds of the clock the datapath stamps affinity entries with
/// (`bpf_ktime_get_coarse_ns` is `CLOCK_MONOTONIC_COARSE`).
pub fn monotonic_coarse_s() -> u32 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE)");
    now.tv_sec as u32
}

/// Kernel id of the object's LB4_BACKENDS.
fn backends_map_id(ebpf: &Ebpf) -> anyhow::Result<u32> {
    let map: HashMap<&MapData, u32, BackendV4> = ebpf.map(names::BACKENDS_V4).context("backends map")?.try_into()?;
    Ok(map.map().info()?.id())
}

/// The original-direction entry of the flow from `client` to `frontend`
/// among `entries`, of either family.
fn original_entry<K: FlowKey>(
    entries: Vec<(K, K::Value)>,
    client: SocketAddr,
    frontend: SocketAddr,
) -> Option<K::Value> {
    entries.into_iter().find_map(|(k, v)| {
        let matches = k.direction() == DIR_ORIGINAL && k.source() == client && k.destination() == frontend;
        matches.then_some(v)
    })
}
