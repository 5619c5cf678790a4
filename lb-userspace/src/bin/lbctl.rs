//! lbctl: shows what the datapath holds, decoded (addresses, ports,
//! protocols, counters), from the maps the agent pinned; and traces a
//! hypothetical packet through the datapath.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lb_common::{backend, conntrack::DIR_ORIGINAL, service};
use lb_userspace::{
    conntrack::{
        clock, expiry,
        flows::{self, CtEntry, FlowKey},
        kept_route,
    },
    datapath::{
        inventory::{self, Hook, Owner, PinnedLink},
        loader, maps, route_epoch,
    },
    model::Protocol,
    netns,
    trace::{self, Probe},
};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(version, about = "Inspect the in-kernel Service load balancer")]
struct Args {
    /// bpffs directory where the agent pinned its maps.
    #[arg(long, global = true, default_value = loader::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Enter this network namespace (`ip netns` name) first, as the
    /// agent's --netns does (interface names are looked up there).
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Frontends with their backends, in the order of their slots.
    Services,
    /// The backend table: id, address, state.
    Backends,
    /// Tracked flows (original direction) and the backend each one uses.
    Conntrack,
    /// ClientIP session affinity: per frontend and client, the backend
    /// the client's new flows follow and how long ago its last one began.
    Affinity,
    /// Packet counters, summed over CPUs.
    Stats,
    /// The pinned links that attach the datapath: the agent's (interfaces
    /// --interfaces selects) and lb-cni's (pods' interfaces), with the
    /// interface, link and program ids, and whether each runs the
    /// program the agent pinned last.
    Links,
    /// Runs a hypothetical packet through the datapath (BPF_PROG_TEST_RUN
    /// against the live pinned maps) and shows what it does with it.
    ///
    /// The run is real: a packet of a new flow creates conntrack entries,
    /// as the same packet on the wire would (they are removed again unless
    /// --keep-conntrack), and it moves one packet counter by one (shown;
    /// on a busy node other traffic moves counters too).
    Trace(TraceArgs),
}

#[derive(Debug, clap::Args)]
struct TraceArgs {
    /// Source, IP:PORT.
    #[arg(long)]
    src: SocketAddr,
    /// Destination, IP:PORT (IPv6: [ADDRESS]:PORT, the source's family).
    #[arg(long)]
    dst: SocketAddr,
    /// tcp or udp.
    #[arg(long, default_value = "tcp", value_parser = parse_proto)]
    proto: Protocol,
    /// TCP: send a SYN (opening a connection); otherwise an ACK.
    #[arg(long)]
    syn: bool,
    /// The interface the packet arrives on (where a reject is sent back).
    #[arg(long, value_name = "NAME")]
    iface: Option<String>,
    /// The program to run it through: tc (`lb_tc`), or xdp (`lb_xdp`, as
    /// on the --xdp-interfaces; give --iface one of them).
    #[arg(long, value_enum, default_value_t = trace::Hook::Tc)]
    hook: trace::Hook,
    /// Keep the conntrack entries the trace created.
    #[arg(long)]
    keep_conntrack: bool,
}

fn parse_proto(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("{s:?}: expected tcp or udp")),
    }
}

fn proto_name(number: u8) -> String {
    Protocol::from_number(number).map_or_else(|| number.to_string(), |p| p.to_string())
}

/// The TYPE column: the kind, then what changes how it balances.
fn type_label(f: &Frontend) -> String {
    let mut label = f.kind.to_owned();
    for (on, note) in [(f.for_pods, "pods"), (f.maglev, "maglev"), (f.source_ranges, "ranges")] {
        if on {
            label.push('+');
            label.push_str(note);
        }
    }
    label
}

fn kind_name(flags: u16) -> &'static str {
    [
        (service::FLAG_CLUSTER_IP, "ClusterIP"),
        (service::FLAG_NODE_PORT, "NodePort"),
        (service::FLAG_EXTERNAL_IP, "ExternalIP"),
        (service::FLAG_LOAD_BALANCER, "LoadBalancer"),
    ]
    .into_iter()
    .find(|(bit, _)| flags & bit != 0)
    .map_or("?", |(_, name)| name)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(name) = &args.netns {
        netns::enter(name)?;
    }
    let pin_dir = args.pin_dir.as_path();
    match &args.command {
        Command::Services => print(args.output, services(pin_dir)?.as_slice(), services_table),
        Command::Backends => print(args.output, backends(pin_dir)?.as_slice(), backends_table),
        Command::Conntrack => print(args.output, conntrack(pin_dir)?.as_slice(), conntrack_table),
        Command::Affinity => print(args.output, affinity(pin_dir)?.as_slice(), affinity_table),
        Command::Stats => print(args.output, stats(pin_dir)?.as_slice(), stats_table),
        Command::Links => print(args.output, inventory::pinned_links(pin_dir)?.as_slice(), links_table),
        Command::Trace(t) => {
            let ifindex = t.iface.as_deref().map(if_index).transpose()?;
            let probe = Probe { src: t.src, dst: t.dst, proto: t.proto, syn: t.syn, ifindex, hook: t.hook };
            print(args.output, &trace::trace(pin_dir, &probe, t.keep_conntrack)?, trace_text)
        }
    }
}

fn print<T: Serialize + ?Sized>(format: Format, value: &T, table: fn(&T) -> String) -> anyhow::Result<()> {
    let text = match format {
        Format::Table => table(value),
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
    };
    // `lbctl conntrack | head` closes the pipe early: not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn if_index(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(index != 0, "no interface {name:?}");
    Ok(index)
}

/// Renders rows as columns, each as wide as its widest cell.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[derive(Serialize)]
struct Frontend {
    address: IpAddr,
    port: u16,
    proto: String,
    kind: &'static str,
    /// The in-cluster entry of a Local-policy external frontend: what Pods
    /// reaching it use (`SCOPE_INTERNAL`).
    for_pods: bool,
    /// New flows pick backends from a Maglev table, not a slot.
    maglev: bool,
    /// `loadBalancerSourceRanges` restrict who may connect.
    source_ranges: bool,
    id: u32,
    /// `ok`, `reject` (no endpoints), `drop` (no local endpoints).
    empty_action: Option<&'static str>,
    affinity_timeout_s: Option<u32>,
    /// New flows balanced, rejected and dropped since the frontend was
    /// created (or this node's counters were reset).
    new_flows: u64,
    rejected: u64,
    dropped: u64,
    backends: Vec<SlotBackend>,
}

#[derive(Serialize)]
struct SlotBackend {
    slot: u16,
    /// `None`: the slot names a backend the table does not hold.
    id: Option<u32>,
    address: Option<IpAddr>,
    port: Option<u16>,
    terminating: bool,
}

fn services(pin_dir: &Path) -> anyhow::Result<Vec<Frontend>> {
    let held = maps::ServiceMaps::from_pins(pin_dir)?.read_all()?;
    // Maps pinned by an older agent have no per-frontend counters: zeros.
    let counted = maps::frontend_stats(pin_dir).unwrap_or_default();
    let v4 = held.services.iter().filter(|(k, _)| k.backend_slot == 0).map(|(key, value)| {
        let slot = |slot| {
            let id = held.services.get(&key.slot(slot)).map(|s| s.backend_id);
            let b = id.and_then(|id| held.backends.get(&id));
            (id, b.map(|b| (IpAddr::from(b.address), b.port, b.flags)))
        };
        frontend(FrontendEntry::from(key), value, slot, &counted)
    });
    let v6 = held.services_v6.iter().filter(|(k, _)| k.backend_slot == 0).map(|(key, value)| {
        let slot = |slot| {
            let id = held.services_v6.get(&key.slot(slot)).map(|s| s.backend_id);
            let b = id.and_then(|id| held.backends_v6.get(&id));
            (id, b.map(|b| (IpAddr::from(b.address), b.port, b.flags)))
        };
        frontend(FrontendEntry::from(key), value, slot, &counted)
    });
    Ok(v4.chain(v6).collect())
}

/// A frontend entry's key, of either family.
#[derive(Clone, Copy)]
struct FrontendEntry {
    address: IpAddr,
    port: u16,
    proto: u8,
    scope: u8,
}

impl From<&service::ServiceKeyV4> for FrontendEntry {
    fn from(key: &service::ServiceKeyV4) -> Self {
        Self { address: key.address.into(), port: key.port, proto: key.proto, scope: key.scope }
    }
}

impl From<&service::ServiceKeyV6> for FrontendEntry {
    fn from(key: &service::ServiceKeyV6) -> Self {
        Self { address: key.address.into(), port: key.port, proto: key.proto, scope: key.scope }
    }
}

/// One frontend, decoded; `slot` gives a slot's backend id and, when the
/// table holds it, the backend's address, port and flags.
fn frontend(
    key: FrontendEntry,
    value: &service::ServiceValue,
    slot: impl Fn(u16) -> (Option<u32>, Option<(IpAddr, u16, u8)>),
    counted: &BTreeMap<u32, lb_common::frontend_stats::FrontendStatsV4>,
) -> Frontend {
    let empty_action = match (value.count, value.flags & service::FLAG_NO_LOCAL_ENDPOINTS != 0) {
        (0, true) => Some("drop"),
        (0, false) => Some("reject"),
        _ => None,
    };
    let backends = (1..=value.count)
        .map(|number| {
            let (id, b) = slot(number);
            SlotBackend {
                slot: number,
                id,
                address: b.map(|(address, _, _)| address),
                port: b.map(|(_, port, _)| port),
                terminating: b.is_some_and(|(_, _, flags)| flags & backend::FLAG_TERMINATING != 0),
            }
        })
        .collect();
    let flows = counted.get(&value.frontend_id).copied().unwrap_or_default();
    Frontend {
        address: key.address,
        port: key.port,
        proto: proto_name(key.proto),
        kind: kind_name(value.flags),
        for_pods: key.scope == service::SCOPE_INTERNAL,
        maglev: value.flags & service::FLAG_MAGLEV != 0,
        source_ranges: value.flags & service::FLAG_SOURCE_RANGES != 0,
        id: value.frontend_id,
        empty_action,
        affinity_timeout_s: (value.affinity_timeout_s > 0).then_some(value.affinity_timeout_s),
        new_flows: flows.new_flows,
        rejected: flows.rejected,
        dropped: flows.dropped,
        backends,
    }
}

fn services_table(frontends: &[Frontend]) -> String {
    let rows: Vec<Vec<String>> = frontends
        .iter()
        .map(|f| {
            let backends = match f.empty_action {
                Some("drop") => "none (no local endpoints: drop)".to_owned(),
                Some(_) => "none (no endpoints: reject)".to_owned(),
                None => f
                    .backends
                    .iter()
                    .map(|b| match (b.address, b.port) {
                        (Some(a), Some(p)) => {
                            format!("{}{}", SocketAddr::new(a, p), if b.terminating { " (terminating)" } else { "" })
                        }
                        _ => format!("<slot {} missing>", b.slot),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let affinity = f.affinity_timeout_s.map_or_else(|| "-".to_owned(), |s| format!("{s}s"));
            // New flows balanced / refused (rejected + dropped).
            let flows = format!("{}/{}", f.new_flows, f.rejected + f.dropped);
            vec![
                format!("{}/{}", SocketAddr::new(f.address, f.port), f.proto),
                type_label(f),
                f.id.to_string(),
                affinity,
                flows,
                backends,
            ]
        })
        .collect();
    columns(&["FRONTEND", "TYPE", "ID", "AFFINITY", "FLOWS/REFUSED", "BACKENDS"], &rows)
}

#[derive(Serialize)]
struct Backend {
    id: u32,
    address: IpAddr,
    port: u16,
    proto: String,
    terminating: bool,
    /// Runs on this node (external traffic to other nodes is SNATed).
    local: bool,
}

fn backends(pin_dir: &Path) -> anyhow::Result<Vec<Backend>> {
    let held = maps::ServiceMaps::from_pins(pin_dir)?.read_all()?;
    let v4 = held.backends.iter().map(|(&id, b)| (id, IpAddr::from(b.address), b.port, b.proto, b.flags));
    let v6 = held.backends_v6.iter().map(|(&id, b)| (id, IpAddr::from(b.address), b.port, b.proto, b.flags));
    // One id space: in id order across both families.
    let mut all: Vec<_> = v4.chain(v6).collect();
    all.sort_by_key(|(id, ..)| *id);
    Ok(all
        .into_iter()
        .map(|(id, address, port, proto, flags)| Backend {
            id,
            address,
            port,
            proto: proto_name(proto),
            terminating: flags & backend::FLAG_TERMINATING != 0,
            local: flags & backend::FLAG_LOCAL != 0,
        })
        .collect())
}

fn backends_table(backends: &[Backend]) -> String {
    let rows: Vec<Vec<String>> = backends
        .iter()
        .map(|b| {
            let state = if b.terminating { "terminating" } else { "ready" };
            let node = if b.local { "local" } else { "remote" };
            let backend = format!("{}/{}", SocketAddr::new(b.address, b.port), b.proto);
            vec![b.id.to_string(), backend, state.to_owned(), node.to_owned()]
        })
        .collect();
    columns(&["ID", "BACKEND", "STATE", "NODE"], &rows)
}

#[derive(Serialize)]
struct Flow {
    proto: String,
    client: SocketAddr,
    frontend: SocketAddr,
    backend_id: u32,
    /// `None`: the backend is gone (the next packet re-balances the flow).
    backend: Option<SocketAddr>,
    frontend_id: u32,
    /// The source the backend sees, when the flow is source-NATed.
    snat: Option<SocketAddr>,
    /// `syn`, `established` or `closing` (TCP); `unreplied` or `replied` (UDP).
    state: &'static str,
    /// Seconds since the flow was opened, and since it last carried a packet.
    age_s: u32,
    idle_s: u32,
    /// The route each direction keeps, current: "stack" or
    /// "out IFACE to MAC". `None`: its next packet looks the route up.
    route_to_backend: Option<String>,
    route_back: Option<String>,
}

fn conntrack(pin_dir: &Path) -> anyhow::Result<Vec<Flow>> {
    let held = maps::ServiceMaps::from_pins(pin_dir)?.read_all()?;
    let now = clock::now_s();
    let epoch = route_epoch::pinned(pin_dir)?;
    let backend_v4 = |id| held.backends.get(&id).copied();
    let mut out = family_flows(maps::conntrack_entries(pin_dir)?, backend_v4, now, epoch);
    let backend_v6 = |id| held.backends_v6.get(&id).copied();
    out.extend(family_flows(maps::conntrack_v6_entries(pin_dir)?, backend_v6, now, epoch));
    Ok(out)
}

/// What `entry` keeps as its route, if current under `epoch`.
fn kept_route(entry: Option<&impl CtEntry>, epoch: u32) -> Option<String> {
    let route = kept_route::current(&entry?.kept_route(), epoch)?;
    Some(route.describe(interface_name))
}

/// The name of interface `ifindex` in this namespace.
fn interface_name(ifindex: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes the call may write.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned())
}

/// The flows of one family's conntrack table, `backend` looking up that
/// family's backends by id.
fn family_flows<K: FlowKey + Ord>(
    entries: Vec<(K, K::Value)>,
    backend: impl Fn(u32) -> Option<K::Backend>,
    now: u32,
    epoch: u32,
) -> Vec<Flow> {
    let entries: BTreeMap<K, K::Value> = entries.into_iter().collect();
    entries
        .iter()
        .filter(|(k, _)| k.direction() == DIR_ORIGINAL)
        .map(|(k, v)| {
            let backend = backend(v.backend_id());
            let reply = backend.as_ref().and_then(|b| entries.get(&flows::reply_key(k, v, b)));
            Flow {
                state: expiry::state(k.proto(), Some(v), reply).name(),
                age_s: now.saturating_sub(v.created_s()),
                idle_s: expiry::idle_s(now, Some(v), reply),
                proto: proto_name(k.proto()),
                client: k.source(),
                frontend: k.destination(),
                backend_id: v.backend_id(),
                backend: backend.as_ref().map(K::backend_address),
                frontend_id: v.frontend_id(),
                snat: v.nat(),
                route_to_backend: kept_route(Some(v), epoch),
                route_back: kept_route(reply, epoch),
            }
        })
        .collect()
}

fn conntrack_table(flows: &[Flow]) -> String {
    let rows: Vec<Vec<String>> = flows
        .iter()
        .map(|f| {
            let backend = f.backend.map_or_else(|| format!("gone (id {})", f.backend_id), |b| b.to_string());
            let snat = f.snat.map_or_else(|| "-".to_owned(), |s| s.to_string());
            let route = f.route_to_backend.clone().unwrap_or_else(|| "-".to_owned());
            let (age, idle) = (format!("{}s", f.age_s), format!("{}s", f.idle_s));
            vec![
                f.proto.clone(),
                f.client.to_string(),
                f.frontend.to_string(),
                backend,
                snat,
                f.state.to_owned(),
                age,
                idle,
                route,
            ]
        })
        .collect();
    columns(&["PROTO", "CLIENT", "FRONTEND", "BACKEND", "SNAT", "STATE", "AGE", "IDLE", "ROUTE"], &rows)
}

#[derive(Serialize)]
struct Affinity {
    frontend_id: u32,
    /// `None`: the frontend is gone (its entries age out of the LRU map).
    frontend: Option<String>,
    /// `None`: the node's own processes (socket-level hooks).
    client: Option<IpAddr>,
    backend_id: u32,
    /// `None`: the backend is gone (the client's next flow is balanced afresh).
    backend: Option<SocketAddr>,
    /// Seconds since the client's last new flow to the frontend.
    age_s: u32,
    /// Whether that is within the frontend's current timeout.
    fresh: bool,
}

fn affinity(pin_dir: &Path) -> anyhow::Result<Vec<Affinity>> {
    let held = maps::ServiceMaps::from_pins(pin_dir)?.read_all()?;
    // Frontend ids are one space over both families.
    let v4 = held.services.iter().filter(|(k, _)| k.backend_slot == 0).map(|(k, v)| (k.into(), v));
    let v6 = held.services_v6.iter().filter(|(k, _)| k.backend_slot == 0).map(|(k, v)| (k.into(), v));
    let frontends: BTreeMap<u32, (String, &service::ServiceValue)> =
        v4.chain(v6).map(|(entry, v): (FrontendEntry, _)| (v.frontend_id, (frontend_label(entry), v))).collect();
    let backend = |id: u32| {
        let v4 = held.backends.get(&id).map(|b| SocketAddr::new(b.address.into(), b.port));
        v4.or_else(|| held.backends_v6.get(&id).map(|b| SocketAddr::new(b.address.into(), b.port)))
    };
    let now_s = monotonic_coarse_s()?;
    // The node's own processes are recorded as one client: 0.0.0.0 or ::.
    let v4 = maps::affinity_entries(pin_dir)?.into_iter().map(|(k, v)| (k.frontend_id, IpAddr::from(k.client), v));
    let v6 = maps::affinity_v6_entries(pin_dir)?.into_iter().map(|(k, v)| (k.frontend_id, IpAddr::from(k.client), v));
    let mut entries: Vec<_> = v4.chain(v6).collect();
    entries.sort_by_key(|(frontend_id, client, _)| (*frontend_id, *client));
    Ok(entries
        .into_iter()
        .map(|(frontend_id, client, v)| {
            let frontend = frontends.get(&frontend_id);
            Affinity {
                frontend_id,
                frontend: frontend.map(|(label, _)| label.clone()),
                client: (!client.is_unspecified()).then_some(client),
                backend_id: v.backend_id,
                backend: backend(v.backend_id),
                age_s: now_s.saturating_sub(v.last_used_s),
                fresh: frontend.is_some_and(|(_, f)| v.is_fresh(now_s, f.affinity_timeout_s)),
            }
        })
        .collect())
}

/// A frontend as `PROTO ADDRESS:PORT`, `(pods)` for an in-cluster entry.
fn frontend_label(key: FrontendEntry) -> String {
    let pods = if key.scope == service::SCOPE_INTERNAL { " (pods)" } else { "" };
    format!("{} {}{pods}", proto_name(key.proto), SocketAddr::new(key.address, key.port))
}

/// The datapath's clock (`bpf_ktime_get_coarse_ns`), in seconds.
fn monotonic_coarse_s() -> anyhow::Result<u32> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime");
    }
    Ok(now.tv_sec as u32)
}

fn affinity_table(entries: &[Affinity]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|a| {
            let frontend = a.frontend.clone().unwrap_or_else(|| format!("gone (id {})", a.frontend_id));
            let client = a.client.map_or_else(|| "this node".to_owned(), |c| c.to_string());
            let backend = a.backend.map_or_else(|| format!("gone (id {})", a.backend_id), |b| b.to_string());
            let state = if a.fresh { "active" } else { "expired" };
            vec![frontend, client, backend, format!("{}s", a.age_s), state.to_owned()]
        })
        .collect();
    columns(&["FRONTEND", "CLIENT", "BACKEND", "AGE", "STATE"], &rows)
}

#[derive(Serialize)]
struct Stat {
    counter: &'static str,
    packets: u64,
}

fn stats(pin_dir: &Path) -> anyhow::Result<Vec<Stat>> {
    Ok(maps::counters(pin_dir)
        .context("reading LB_STATS")?
        .into_iter()
        .map(|(c, packets)| Stat { counter: c.name(), packets })
        .collect())
}

fn stats_table(stats: &[Stat]) -> String {
    let rows: Vec<Vec<String>> = stats.iter().map(|s| vec![s.counter.to_owned(), s.packets.to_string()]).collect();
    columns(&["COUNTER", "PACKETS"], &rows)
}

fn trace_text(t: &trace::Trace) -> String {
    let show = |h: &trace::Header| match h.icmp {
        Some((kind, code)) => format!("{} {} -> {} (type {kind} code {code})", h.proto, h.src, h.dst),
        None => format!("{} {} -> {}", h.proto, h.src, h.dst),
    };
    let mut out = format!("packet:   {}\n", show(&t.input));
    out += &format!("verdict:  {} (at {})\n", t.verdict, t.hook.name());
    match &t.output {
        Some(h) if *h != t.input => out += &format!("rewritten: {}\n", show(h)),
        Some(_) => out += "rewritten: no (unchanged)\n",
        None => {}
    }
    let counters: Vec<String> = t.counters.iter().map(|(name, n)| format!("{name} +{n}")).collect();
    out += &format!("counters: {}\n", if counters.is_empty() { "none moved".to_owned() } else { counters.join(", ") });
    if t.conntrack_created > 0 {
        let fate = if t.conntrack_removed { "removed again" } else { "kept" };
        out += &format!("conntrack: {} entries created ({fate})\n", t.conntrack_created);
    }
    out
}

fn links_table(links: &[PinnedLink]) -> String {
    let rows: Vec<Vec<String>> = links
        .iter()
        .map(|l| {
            let owner = match l.owner {
                Owner::Agent => "agent",
                Owner::Cni => "cni",
            };
            let pod = match (&l.container_id, &l.pod_interface) {
                (Some(id), Some(ifname)) => format!("{id}/{ifname}"),
                _ => "-".to_owned(),
            };
            let interface = l.interface.clone().unwrap_or_else(|| "gone".to_owned());
            let hook = match l.hook {
                Hook::Tc => "tc",
                Hook::TcEgress => "tc-egress",
                Hook::Xdp => "xdp",
            };
            let current = match l.current {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            let cells = [owner, hook, &interface, &pod, &l.link_id.to_string(), &l.program_id.to_string(), current];
            cells.map(str::to_owned).to_vec()
        })
        .collect();
    columns(&["OWNER", "HOOK", "INTERFACE", "POD", "LINK", "PROGRAM", "CURRENT"], &rows)
}
