//! lb-agent: keeps the eBPF datapath's maps in line with the cluster's
//! Services and EndpointSlices.

use std::{path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use ipnet::IpNet;
use lb_userspace::{
    agent::{self, Observers, Pacing, ProblemSink, Source},
    conntrack::{self, expiry, metrics::ConntrackMetrics},
    datapath::{
        attach::Attacher,
        chained::{self, PodHook},
        interfaces,
        links::Attachments,
        loader,
        maps::ServiceMaps,
        route_epoch, sock_links,
    },
    events::{EventPublisher, LogOnly},
    frontend_metrics::{FrontendCollector, FrontendDirectory},
    healthcheck::HealthCheckAddresses,
    metrics::Metrics,
    model::NodeContext,
    netns, node_addresses, serve,
    source::{
        file::FileSource,
        kubernetes::{self, KubeSource},
    },
    sync::Syncer,
};
use tracing::{info, warn};

/// Where Services and EndpointSlices come from.
#[derive(Clone, Debug)]
enum SourceArg {
    /// `kubernetes`: watch the API server (see --kubeconfig).
    Kubernetes,
    /// `file:PATH`: a YAML or JSON file of Kubernetes objects, re-read on change.
    File(PathBuf),
}

impl FromStr for SourceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "kubernetes" => Ok(SourceArg::Kubernetes),
            Some(("file", path)) if !path.is_empty() => Ok(SourceArg::File(path.into())),
            _ => Err(format!("unsupported source {s:?}: expected `kubernetes` or file:PATH")),
        }
    }
}

#[derive(Debug, Parser)]
#[command(version, about = "In-kernel Kubernetes Service load balancer: the node agent")]
struct Args {
    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// log collectors). The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Where Services and EndpointSlices come from: `kubernetes` (watch the
    /// API server) or `file:PATH` (YAML or JSON in the Kubernetes object
    /// format, as `kubectl get svc,endpointslices -o yaml` prints; re-read
    /// when it changes).
    #[arg(long, value_name = "SOURCE", default_value = "kubernetes")]
    source: SourceArg,
    /// kubeconfig for the API server. Default: in-cluster configuration,
    /// then $KUBECONFIG (or ~/.kube/config).
    #[arg(long, env = "KUBECONFIG_PATH")]
    kubeconfig: Option<PathBuf>,
    /// Minimum time between two syncs: bursts of changes are coalesced.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    min_sync_period: Duration,
    /// A full resync at least this often, changes or not.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    sync_period: Duration,
    /// Interfaces to attach the datapath to at tc ingress: comma-separated
    /// names or patterns where `*` matches any run of characters
    /// (`veth*,eth0`). `*` (or `all`) is every interface except loopback.
    /// Interfaces appearing later (new pods' veths) are attached within a
    /// second; the attachments of removed ones are dropped.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    interfaces: Vec<String>,
    /// The node's external interfaces (NICs facing clients outside the
    /// cluster), to also run the XDP fast path on, ahead of tc: same
    /// patterns as --interfaces; none by default. Traffic from outside to
    /// NodePorts, LoadBalancer and external IPs whose route leaves through
    /// one of these interfaces (a backend on another node) is translated
    /// and sent at XDP; everything else passes to tc untouched. Keep them
    /// in --interfaces too: tc handles what XDP passes on.
    #[arg(long, value_delimiter = ',', value_name = "PATTERNS")]
    xdp_interfaces: Vec<String>,
    /// Enter this network namespace (`ip netns` name) before anything else.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// bpffs directory for pinned maps, links (`links/<interface>`), the
    /// programs lb-cni attaches (`progs/`) and lb-cni's links
    /// (`cni-links/`, `cni-egress-links/`).
    /// Mounts bpffs if the directory is not on it. What is pinned here
    /// outlives the agent: the datapath keeps running between restarts.
    #[arg(long, default_value = loader::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Translate Service traffic of the processes in this cgroup (and its
    /// descendants) at the socket level: connect, sendmsg, recvmsg and
    /// getpeername of IPv4 and IPv6 sockets. The default, the host's root cgroup (in
    /// a DaemonSet: the host's cgroup2 mounted there), covers every process
    /// of the node, so kubelet and host-network Pods reach ClusterIPs and
    /// NodePorts. `none` detaches the socket-level programs. The links are
    /// pinned under --pin-dir (`cgroup-links/`) and outlive the agent.
    #[arg(long, value_name = "PATH|none", default_value = "/sys/fs/cgroup", value_parser = parse_cgroup_path)]
    cgroup_path: CgroupPath,
    /// Remove everything pinned under --pin-dir (this detaches the
    /// datapath from every interface, the ones lb-cni attached included,
    /// and from the cgroup, and drops its maps), then exit.
    #[arg(long)]
    cleanup: bool,
    /// This node's name (for Local traffic policies).
    #[arg(long = "hostname-override", alias = "node-name", env = "NODE_NAME")]
    node_name: Option<String>,
    /// This node's topology zone (for topology-aware routing).
    #[arg(long, env = "NODE_ZONE")]
    zone: Option<String>,
    /// Serve NodePorts only on local addresses inside these CIDRs
    /// (comma-separated, either family; a family none of them is of serves
    /// no NodePorts). Default: every local address but loopback and IPv6
    /// link-local.
    /// Addresses are followed while the agent runs (added: served at once;
    /// removed: no longer).
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<IpNet>,
    /// Serve only Services whose `service.kubernetes.io/service-proxy-name`
    /// label has this value. Without it, only Services without that label
    /// are served, as kube-proxy does (see docs/semantics.md).
    #[arg(long)]
    proxy_name: Option<String>,
    /// The cluster's Pod CIDRs (comma-separated), as kube-proxy's
    /// `--cluster-cidr` with `--detect-local-mode=ClusterCIDR`: Pods (sources
    /// inside them) reaching a NodePort, external IP or load balancer IP of
    /// a Service with `externalTrafficPolicy: Local` use endpoints anywhere
    /// in the cluster. Without it, such traffic gets only this node's.
    #[arg(long = "cluster-cidr", value_delimiter = ',')]
    cluster_cidrs: Vec<ipnet::IpNet>,
    /// How often the source file is checked for changes.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Send NATed packets on through the kernel's forward path, netfilter's
    /// FORWARD chain included, instead of out of the egress interface
    /// directly: for chaining after a CNI plugin that enforces
    /// NetworkPolicy with iptables there. IPv4 packets whose source after
    /// translation is a node address (SNATed flows, replies from a
    /// NodePort or another frontend address the node holds) are still sent
    /// directly: the forward path would drop them as martians (IPv6's has
    /// no such check).
    /// `--forward-through-stack` alone means true.
    #[arg(long, default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    forward_through_stack: bool,
    /// Hand translated packets for a pod on this node straight to the
    /// pod's end of its veth (`bpf_redirect_peer`), skipping the node's
    /// end. Set it to false where something must see those packets on
    /// the node's end: a qdisc there (the CNI bandwidth plugin's ingress
    /// limit), or a capture.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    redirect_to_peer: bool,
    /// Created once the datapath is attached and first programmed; removed
    /// on exit (for readiness probes).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Conntrack table size in entries (two per flow). Preallocated: 144
    /// bytes of kernel memory an entry (151 MB for the default). A full table evicts the idlest
    /// flows; the agent warns above 90%.
    #[arg(long, default_value_t = lb_common::maps::CONNTRACK_V4_CAPACITY)]
    conntrack_max: u32,
    /// IPv6 conntrack table size in entries (two per flow). Preallocated:
    /// about 150 bytes of kernel memory an entry (40 MB for the default).
    #[arg(long, default_value_t = lb_common::maps::CONNTRACK_V6_CAPACITY)]
    conntrack_max_v6: u32,
    /// How often conntrack is swept for flows past their timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    conntrack_gc_interval: Duration,
    /// Idle timeout of an established TCP connection (also half-closed:
    /// FIN one way only). Default 24h, what kube-proxy sets for the kernel.
    #[arg(long, value_parser = parse_duration)]
    conntrack_tcp_timeout_established: Option<Duration>,
    /// Idle timeout of a TCP connection whose handshake did not complete.
    /// Default 60s.
    #[arg(long, value_parser = parse_duration)]
    conntrack_tcp_timeout_syn: Option<Duration>,
    /// Idle timeout of a TCP connection after FIN both ways or an RST.
    /// Default 10s.
    #[arg(long, value_parser = parse_duration)]
    conntrack_tcp_timeout_close: Option<Duration>,
    /// Idle timeout of a UDP flow the backend has not answered. Default
    /// 30s (the kernel's nf_conntrack_udp_timeout).
    #[arg(long, value_parser = parse_duration)]
    conntrack_udp_timeout: Option<Duration>,
    /// Idle timeout of a UDP flow the backend answered. Default 2m (the
    /// kernel's nf_conntrack_udp_timeout_stream).
    #[arg(long, value_parser = parse_duration)]
    conntrack_udp_timeout_stream: Option<Duration>,
    /// Service table size (frontends + backend slots).
    #[arg(long, default_value_t = lb_common::maps::SERVICES_V4_CAPACITY)]
    services_max: u32,
    /// Backend table size.
    #[arg(long, default_value_t = lb_common::maps::BACKENDS_V4_CAPACITY)]
    backends_max: u32,
    /// Maglev frontends (NodePort, externalIP and LoadBalancer frontends,
    /// and those opted in). Each distinct table costs about 130 KiB of
    /// kernel memory while a frontend names it; frontends over the same
    /// backends share one.
    #[arg(long, default_value_t = lb_common::maps::MAGLEV_V4_CAPACITY)]
    maglev_max: u32,
    /// ClientIP affinity entries, one per (frontend, client address).
    /// Preallocated, about 80 bytes each; when full, the idlest client's
    /// entry makes room and that client is balanced afresh.
    #[arg(long, default_value_t = lb_common::maps::AFFINITY_V4_CAPACITY)]
    affinity_max: u32,
    /// Serve Prometheus metrics at /metrics on this address (as
    /// kube-proxy does); empty to disable.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:10249")]
    metrics_bind_address: BindAddress,
    /// Serve /healthz and /livez on this address (kube-proxy's semantics:
    /// unhealthy when a change waits longer than 2 × --sync-period for its
    /// sync; /healthz also while the Node is being deleted or tainted for
    /// scale-down); empty to disable.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:10256")]
    healthz_bind_address: BindAddress,
}

/// `IP:PORT`, or empty for "off".
#[derive(Clone, Copy, Debug)]
struct BindAddress(Option<std::net::SocketAddr>);

impl FromStr for BindAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(BindAddress(None));
        }
        s.parse().map(|a| BindAddress(Some(a))).map_err(|e| format!("{s:?}: {e} (expected IP:PORT)"))
    }
}

/// `--cgroup-path`: a cgroup directory, or `none`.
#[derive(Clone, Debug)]
struct CgroupPath(Option<PathBuf>);

fn parse_cgroup_path(s: &str) -> Result<CgroupPath, String> {
    match s {
        "" => Err("empty cgroup path (use `none` to disable socket-level translation)".to_owned()),
        "none" => Ok(CgroupPath(None)),
        path => Ok(CgroupPath(Some(PathBuf::from(path)))),
    }
}

/// `10ms`, `30s`, `1m30s` (humantime's forms), or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(seconds) = s.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// glibc's allocator tuned for the agent's shape: a few large buffers
/// that live briefly (an initial list's response and its decoding, one
/// sync's diff) next to a table that lives long.
fn tune_allocator() {
    // One arena for all threads: the lists are decoded on the runtime's
    // worker and synced on the main thread, and memory one frees should
    // serve the other's next allocations, not sit in a second arena.
    // A fixed mmap threshold (which also stops glibc from raising it after
    // each large free): buffers from 1 MiB up are mapped and given back
    // whole when freed, instead of pinning heap pages the table then
    // grows around.
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // Before the runtime starts its threads: they inherit the namespace.
    if let Some(name) = &args.netns {
        netns::enter(name)?;
    }
    if args.cleanup {
        return cleanup(&args.pin_dir);
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?.block_on(run(args))
}

/// Removing the pinned links detaches the program (lb-cni's links in
/// `cni-links/` and `cni-egress-links/` too: they are under the same
/// directory); removing the
/// pinned maps frees them once no program uses them.
fn cleanup(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", pin_dir.display()))
        }
        _ => {
            info!(pin_dir = %pin_dir.display(), "removed pinned links and maps");
            Ok(())
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let capacities = loader::Capacities {
        services: args.services_max,
        backends: args.backends_max,
        conntrack: args.conntrack_max,
        conntrack_v6: args.conntrack_max_v6,
        maglev: args.maglev_max,
        affinity: args.affinity_max,
    };
    // The watchers start listing on the runtime's worker while this thread
    // loads and attaches the datapath: with many Services both take a
    // while, and neither needs the other.
    let kube = match &args.source {
        SourceArg::Kubernetes => {
            let client = kubernetes::client(args.kubeconfig.as_deref()).await?;
            let source = KubeSource::new(client.clone(), args.node_name.as_deref(), args.proxy_name.as_deref());
            Some((client, source))
        }
        SourceArg::File(_) => None,
    };
    let mut ebpf = loader::load_maps(Some(&args.pin_dir), capacities)?;
    write_config(&args)?;
    // Before any program of this agent runs: routes kept under an earlier
    // agent's epoch are looked up again.
    route_epoch::follow(&args.pin_dir)?;
    warn_if_snat_ports_are_ephemeral();
    let mut maps = ServiceMaps::from_ebpf(&mut ebpf)?;
    let seeded = maps.seed_address_filter()?;
    if seeded > 0 {
        info!(words = seeded, "address filter seeded from the Service table the maps hold");
    }
    // The kernel's verifier takes a few hundred milliseconds, most of it
    // lb_tc's: it runs on a thread of its own while the Services are read
    // and translated and the maps written, and the programs are attached
    // as soon as it is done. Meanwhile a previous agent's programs, if
    // any, keep serving from the same pinned maps.
    let verified = tokio::task::spawn_blocking(move || loader::verify(&mut ebpf).map(|()| ebpf));
    let follower = std::sync::Mutex::new(None);
    let attach = async {
        let ebpf = verified.await.context("verifying the programs")??;
        let handle = attach_verified(ebpf, &args).await?;
        *follower.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
        Ok(())
    };

    let node_addresses = node_addresses::follow(args.nodeport_addresses.clone()).await?;
    let node = NodeContext {
        node_name: args.node_name.clone(),
        zone: args.zone.clone(),
        node_addresses: node_addresses.borrow().clone(),
        proxy_name: args.proxy_name.clone(),
        cluster_cidrs: args.cluster_cidrs.clone(),
        family: lb_userspace::model::IpFamily::V4,
        dual_stack: true,
    };
    info!(node = ?node.node_name, nodeport_addresses = ?node.node_addresses, "node");
    let mut syncer = Syncer::resume(maps, node)?;
    syncer.set_maglev_budget(args.maglev_max);
    let held = syncer.current().services.len() + syncer.current().services_v6.len();
    if held > 0 {
        info!(entries = held, "resuming from pinned maps");
    }

    let (mut source, mut sink): (Source, Box<dyn ProblemSink>) = match &args.source {
        SourceArg::File(path) => (Source::file(FileSource::new(path, args.poll_interval)), Box::new(LogOnly)),
        SourceArg::Kubernetes => {
            let (client, source) = kube.context("the Kubernetes source was started above")?;
            let node_name = args.node_name.as_deref();
            (Source::Kubernetes(Box::new(source)), Box::new(EventPublisher::new(client, node_name)))
        }
    };
    let pacing = Pacing { min_sync_interval: args.min_sync_period, sync_period: args.sync_period };
    if let Some(path) = &args.ready_file {
        // A file from a previous run must not claim readiness.
        let _ = std::fs::remove_file(path);
    }
    // kube-proxy's health timeout: twice the sync period.
    let mut observers =
        Observers::new(args.sync_period * 2, health_check_addresses(&args, &syncer.node().node_addresses));
    let conntrack_metrics = conntrack::worker::Metrics {
        v4: Arc::new(ConntrackMetrics::new(args.conntrack_max)),
        v6: Arc::new(ConntrackMetrics::new_v6(args.conntrack_max_v6)),
    };
    let gc = conntrack::worker::spawn(
        args.pin_dir.clone(),
        conntrack_config(&args),
        conntrack::worker::Metrics { v4: conntrack_metrics.v4.clone(), v6: conntrack_metrics.v6.clone() },
    );
    observers.conntrack = Some(Arc::new(gc));
    observers.frontends = Arc::new(FrontendDirectory::new(args.pin_dir.clone()));
    serve_endpoints(&args, &observers, &conntrack_metrics).await?;
    let outcome = agent::run(
        &mut syncer,
        &mut source,
        sink.as_mut(),
        pacing,
        args.ready_file.as_deref(),
        &observers,
        node_addresses,
        attach,
        shutdown_signal(),
    )
    .await;
    if let Some(follower) = follower.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
        follower.abort();
    }
    outcome?;
    if let Some(path) = &args.ready_file {
        let _ = std::fs::remove_file(path);
    }
    info!("shutting down; pinned links and maps stay: the datapath keeps running until the next start");
    Ok(())
}

/// Attaches the verified programs: published for lb-cni, at the socket
/// hooks, and at every interface the flags select, present or to come
/// (the returned task follows them).
async fn attach_verified(mut ebpf: aya::Ebpf, args: &Args) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    publish_for_cni(&mut ebpf, &args.pin_dir)?;
    attach_sockets(&mut ebpf, args)?;
    // Subscribed before attaching, so no interface slips between the two.
    let (present, link_events) = interfaces::watch().await?;
    let mut attacher =
        Attacher::new(ebpf, Attachments::open(&args.pin_dir)?, interfaces::Selector::new(&args.interfaces))
            .with_egress(Attachments::open_egress(&args.pin_dir)?);
    // Without XDP interfaces, the pinned XDP links of an earlier agent
    // still go (an empty selector matches nothing).
    attacher =
        attacher.with_xdp(Attachments::open_xdp(&args.pin_dir)?, interfaces::Selector::new(&args.xdp_interfaces));
    if !args.redirect_to_peer {
        attacher = attacher.without_peer_redirects();
    }
    attacher.attach_present(&present)?;
    if attacher.attached().is_empty() {
        warn!(interfaces = args.interfaces.join(","), "no interface matches yet: attaching as they appear");
    }
    info!(
        interfaces = ?attacher.attached(),
        xdp_interfaces = ?attacher.attached_xdp(),
        pin_dir = %args.pin_dir.display(),
        "datapath attached"
    );
    Ok(tokio::spawn(attacher.follow(link_events)))
}

/// The datapath's settings from the flags, written before any program is
/// attached (a restart rewrites them for the running programs too).
fn write_config(args: &Args) -> anyhow::Result<()> {
    let mut flags = 0;
    if args.forward_through_stack {
        flags |= lb_common::config::FLAG_FORWARD_THROUGH_STACK;
    }
    lb_userspace::datapath::maps::write_config(&args.pin_dir, lb_common::config::DatapathConfig { flags })?;
    info!(forward_through_stack = args.forward_through_stack, "datapath settings written");
    Ok(())
}

/// The conntrack worker's settings from the flags (unset timeouts: the
/// `expiry` defaults).
fn conntrack_config(args: &Args) -> conntrack::worker::Config {
    let or = |flag: Option<Duration>, default| flag.unwrap_or(default);
    let timeouts = expiry::Timeouts::from_durations(
        or(args.conntrack_tcp_timeout_syn, expiry::TCP_SYN_TIMEOUT),
        or(args.conntrack_tcp_timeout_established, expiry::TCP_ESTABLISHED_TIMEOUT),
        or(args.conntrack_tcp_timeout_close, expiry::TCP_CLOSE_TIMEOUT),
        or(args.conntrack_udp_timeout, expiry::UDP_TIMEOUT),
        or(args.conntrack_udp_timeout_stream, expiry::UDP_STREAM_TIMEOUT),
    );
    conntrack::worker::Config {
        interval: args.conntrack_gc_interval,
        timeouts,
        capacity: args.conntrack_max,
        capacity_v6: args.conntrack_max_v6,
    }
}

/// Pins the programs for the CNI plugin and moves the plugin's links to
/// them (`datapath::chained`), before anything else is attached.
fn publish_for_cni(ebpf: &mut aya::Ebpf, pin_dir: &std::path::Path) -> anyhow::Result<()> {
    for hook in PodHook::ALL {
        let prog = loader::program(ebpf, hook.program())?;
        let published = chained::publish(prog, pin_dir, hook).context("publishing the programs for lb-cni")?;
        for name in &published.stale {
            info!(link = name, "CNI link without its interface (or deleted meanwhile): pin removed");
        }
        info!(
            hook = hook.name(),
            program_id = published.program_id,
            cni_links = published.updated.len(),
            "program published for lb-cni"
        );
    }
    Ok(())
}

/// Attaches the socket-level programs to --cgroup-path, or detaches them
/// (`none`).
fn attach_sockets(ebpf: &mut aya::Ebpf, args: &Args) -> anyhow::Result<()> {
    match &args.cgroup_path.0 {
        Some(cgroup) => {
            sock_links::attach(ebpf, &args.pin_dir, cgroup).context("attaching the socket-level programs")?;
            abort_stale_udp_sockets(args.pin_dir.clone());
        }
        None => {
            sock_links::detach(&args.pin_dir)?;
            info!("--cgroup-path none: socket-level translation off");
        }
    }
    Ok(())
}

/// How often connected UDP sockets are checked for a removed backend
/// (`udp_abort`): the longest a socket keeps sending to a backend that
/// has left its Service.
const UDP_ABORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `udp_abort::sweep` every `UDP_ABORT_INTERVAL` on a thread of its
/// own (it makes blocking syscalls), in the agent's network namespace.
fn abort_stale_udp_sockets(pin_dir: PathBuf) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(UDP_ABORT_INTERVAL);
            match lb_userspace::udp_abort::sweep(&pin_dir) {
                Ok(0) => {}
                Ok(aborted) => info!(sockets = aborted, "aborted UDP sockets connected to removed backends"),
                Err(e) => warn!(error = %format!("{e:#}"), "checking UDP sockets for removed backends"),
            }
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
}

/// Binds the metrics and health addresses (failing at start, not later,
/// when one is taken) and serves them in the background.
async fn serve_endpoints(
    args: &Args,
    observers: &Observers,
    conntrack_metrics: &conntrack::worker::Metrics,
) -> anyhow::Result<()> {
    if let BindAddress(Some(addr)) = args.metrics_bind_address {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the metrics address {addr}"))?;
        let mut metrics = Metrics::new(&observers.metrics, args.pin_dir.clone());
        metrics.register_conntrack(&conntrack_metrics.v4);
        metrics.register_conntrack(&conntrack_metrics.v6);
        metrics.register_frontends(FrontendCollector {
            pin_dir: args.pin_dir.clone(),
            directory: observers.frontends.clone(),
        });
        tokio::spawn(serve::metrics(listener, std::sync::Arc::new(metrics)));
        info!(address = %addr, "serving /metrics");
    }
    if let BindAddress(Some(addr)) = args.healthz_bind_address {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the health address {addr}"))?;
        tokio::spawn(serve::health(listener, observers.health.clone(), observers.metrics.clone()));
        info!(address = %addr, "serving /healthz and /livez");
    }
    Ok(())
}

/// kube-proxy's rule for Services' health check ports: every address
/// when `--nodeport-addresses` is not given, else the node addresses it
/// selects.
fn health_check_addresses(args: &Args, node_addresses: &[std::net::IpAddr]) -> HealthCheckAddresses {
    if args.nodeport_addresses.is_empty() {
        HealthCheckAddresses::Any
    } else {
        HealthCheckAddresses::Node(node_addresses.to_vec())
    }
}

/// SNAT ports the node's own connections may also pick: a reply to one
/// could be taken for the other's (`snat_ports`).
fn warn_if_snat_ports_are_ephemeral() {
    let path = lb_userspace::snat_ports::LOCAL_PORT_RANGE;
    match std::fs::read_to_string(path).ok().as_deref().and_then(lb_userspace::snat_ports::overlap) {
        Some(shared) if !shared.is_empty() => warn!(
            ?shared,
            "{path} reaches into the ports source NAT hands out: a connection of the node to a backend \
             could share its reply tuple with a translated flow. Keep it within 32768–60999"
        ),
        Some(_) => {}
        None => warn!("{path} unreadable: the ports source NAT hands out are not checked against it"),
    }
}
