//! Loads the datapath object and creates (or re-opens) its maps pinned
//! under a bpffs directory. Attaching is `links`' job.
//!
//! Maps are pinned by name, so a restarted agent re-opens the same maps
//! (conntrack included) instead of starting empty: established flows keep
//! flowing while it restarts. Pinned maps are checked against this build's
//! layout first (`layout`), so a map pinned by another version is never
//! misread.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TcAttachType, Xdp, tc::SchedClassifierLinkId},
};
use lb_common::{maps as names, skb_checksum::IP_SUMMED_GLOBAL};
use tracing::{debug, info, warn};

use super::{
    bpffs, conntrack_carry, layout,
    skb_checksum::{self, StateSource},
    sock_links,
};

/// The tc program balancing Service traffic.
pub const TC_PROGRAM: &str = "lb_tc";
/// The tc egress program: replies of host-network backends on this node.
pub const EGRESS_PROGRAM: &str = "lb_tc_egress";
/// Parses like `lb_tc` and passes everything (the benchmarks' floor).
pub const PARSE_ONLY_PROGRAM: &str = "lb_parse_only";
/// Forwards by the FIB with no Service work: the benchmarks' limit.
pub const FORWARD_ONLY_PROGRAM: &str = "lb_forward_only";
/// The switch at XDP of the tests' namespace LAN; no part of a node's
/// datapath, never loaded by the agent.
pub const WIRE_PROGRAM: &str = "lb_wire";
/// The XDP fast path (`--xdp-interfaces`).
pub const XDP_PROGRAM: &str = "lb_xdp";
/// Default bpffs directory for pinned maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";

/// Map sizes, overridable at load time.
#[derive(Clone, Copy, Debug)]
pub struct Capacities {
    pub services: u32,
    pub backends: u32,
    pub conntrack: u32,
    pub conntrack_v6: u32,
    pub maglev: u32,
    pub affinity: u32,
}

impl Capacities {
    /// Room for a handful of flows: a datapath loaded for a test that
    /// programs almost nothing.
    pub fn minimal() -> Self {
        Self { services: 64, backends: 64, conntrack: 1024, conntrack_v6: 1024, maglev: 4, affinity: 64 }
    }
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            services: names::SERVICES_V4_CAPACITY,
            backends: names::BACKENDS_V4_CAPACITY,
            conntrack: names::CONNTRACK_V4_CAPACITY,
            conntrack_v6: names::CONNTRACK_V6_CAPACITY,
            maglev: names::MAGLEV_V4_CAPACITY,
            affinity: names::AFFINITY_V4_CAPACITY,
        }
    }
}

/// Path of a pinned map.
pub fn pin_path(pin_dir: &Path, map: &str) -> PathBuf {
    pin_dir.join(map)
}

/// Loads the object and verifies its programs (`load_maps`, then
/// `verify`).
pub fn load(pin_dir: Option<&Path>, capacities: Capacities) -> anyhow::Result<Ebpf> {
    load_reading(pin_dir, capacities, &StateSource::detect())
}

/// `load`, the checksum state read as `source` says rather than as the
/// kernel allows.
pub fn load_reading(pin_dir: Option<&Path>, capacities: Capacities, source: &StateSource) -> anyhow::Result<Ebpf> {
    let mut ebpf = load_maps_reading(pin_dir, capacities, source)?;
    verify(&mut ebpf)?;
    Ok(ebpf)
}

/// Loads the object: creates its maps, or re-opens them, and relocates
/// the programs, verifying none. With `pin_dir`, every map is pinned there
/// (re-used if already pinned); without, maps live as long as the
/// returned `Ebpf`.
pub fn load_maps(pin_dir: Option<&Path>, capacities: Capacities) -> anyhow::Result<Ebpf> {
    load_maps_reading(pin_dir, capacities, &StateSource::detect())
}

fn load_maps_reading(pin_dir: Option<&Path>, capacities: Capacities, source: &StateSource) -> anyhow::Result<Ebpf> {
    let prepared = skb_checksum::prepare(crate::EBPF_OBJECT, source)?;
    match source {
        StateSource::SkBuff { .. } => debug!(calls = prepared.calls, "tc reads checksum states from the sk_buff"),
        StateSource::Helper { why } => info!("tc learns checksum states through the kernel's helper: {why}"),
    }
    let mut loader = EbpfLoader::new();
    loader.override_global(IP_SUMMED_GLOBAL, &prepared.place, true);
    loader
        .map_max_entries(names::SERVICES_V4, capacities.services)
        .map_max_entries(names::BACKENDS_V4, capacities.backends)
        .map_max_entries(names::CONNTRACK_V4, capacities.conntrack)
        .map_max_entries(names::SERVICES_V6, capacities.services)
        .map_max_entries(names::BACKENDS_V6, capacities.backends)
        .map_max_entries(names::CONNTRACK_V6, capacities.conntrack_v6)
        .map_max_entries(names::MAGLEV_V4, capacities.maglev)
        .map_max_entries(names::AFFINITY_V4, capacities.affinity)
        .map_max_entries(names::AFFINITY_V6, capacities.affinity);
    let mut carried = Vec::new();
    let paths: Vec<(&str, PathBuf)> = match pin_dir {
        Some(dir) => {
            bpffs::ensure_mounted(dir)?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating pin directory {}", dir.display()))?;
            carried = layout::reconcile(dir, capacities)?.carried;
            names::ALL.iter().map(|&m| (m, pin_path(dir, m))).collect()
        }
        None => Vec::new(),
    };
    for (map, path) in &paths {
        loader.map_pin_path(map, path.as_path());
    }
    let ebpf = loader.load(&prepared.object).context("loading the datapath object")?;
    for previous in &carried {
        carry_conntrack(&ebpf, previous);
    }
    if let Some(dir) = pin_dir {
        layout::record_versions(dir)?;
    }
    Ok(ebpf)
}

/// Copies the previous build's tracked flows of one family into the new
/// table (`conntrack_carry`); a failure only loses them, as a recreate
/// does.
fn carry_conntrack(ebpf: &Ebpf, previous: &conntrack_carry::Previous) {
    let name = previous.name();
    let copied = match ebpf.map(name) {
        Some(aya::maps::Map::LruHashMap(new)) => previous.carry_into(new),
        _ => Err(anyhow::anyhow!("{name} is missing from the object")),
    };
    match copied {
        Ok(entries) => info!(map = name, entries, "tracked flows carried over into the new conntrack table"),
        Err(e) => {
            warn!(map = name, "{e:#}: tracked flows are lost, established connections through Services reset once")
        }
    }
}

/// Verifies the programs every node uses (the kernel's verifier: a few
/// hundred milliseconds, most of it `lb_tc`). The maps may have been
/// taken out of `ebpf` already: the programs name them by fd since
/// `load_maps`.
pub fn verify(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    for name in [TC_PROGRAM, EGRESS_PROGRAM, PARSE_ONLY_PROGRAM, FORWARD_ONLY_PROGRAM] {
        program(ebpf, name)?.load().with_context(|| format!("verifying program {name}"))?;
    }
    for name in sock_links::PROGRAMS {
        sock_links::program(ebpf, name)?.load().with_context(|| format!("verifying program {name}"))?;
    }
    Ok(())
}

/// The XDP program, verified on first use: a node without XDP
/// interfaces does not pay for its verification at start.
pub fn xdp_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .with_context(|| format!("program {XDP_PROGRAM} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {XDP_PROGRAM} is not an XDP program"))?;
    if prog.fd().is_err() {
        prog.load().with_context(|| format!("verifying program {XDP_PROGRAM}"))?;
    }
    Ok(prog)
}

/// A loaded classifier by name.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a tc classifier"))
}

/// Attaches `lb_tc` at ingress of each interface (tcx on kernels ≥ 6.6,
/// clsact otherwise), unpinned: the attachments last while `ebpf` lives.
/// The agent pins its attachments instead (`links`).
pub fn attach_ingress(ebpf: &mut Ebpf, interfaces: &[String]) -> anyhow::Result<Vec<SchedClassifierLinkId>> {
    attach_program_ingress(ebpf, TC_PROGRAM, interfaces)
}

/// Attaches the classifier `name` as [`attach_ingress`] does `lb_tc`.
pub fn attach_program_ingress(
    ebpf: &mut Ebpf,
    name: &str,
    interfaces: &[String],
) -> anyhow::Result<Vec<SchedClassifierLinkId>> {
    let prog = program(ebpf, name)?;
    interfaces
        .iter()
        .map(|iface| {
            prog.attach(iface, TcAttachType::Ingress).with_context(|| format!("attaching {name} to {iface} ingress"))
        })
        .collect()
}
