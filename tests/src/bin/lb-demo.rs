//! lb-demo: builds a small cluster out of network namespaces (a client, a
//! node, three backends running real HTTP and UDP echo servers), starts
//! lb-agent in the node namespace with the bundled Services file, sends
//! real traffic through the datapath and shows where it went. Everything
//! is removed at the end (also on failure).

use std::{collections::BTreeMap, net::SocketAddr, process::Command, time::Instant};

use anyhow::Context as _;
use clap::Parser;
use lb_tests::{
    agent,
    scenario::{self, DemoCluster, ECHO, NOTHING_HERE, WEB},
    servers, topology,
};

#[derive(Debug, Parser)]
#[command(about = "Run the load balancer on a namespace topology with real traffic")]
struct Args {
    /// HTTP requests to send through the ClusterIP.
    #[arg(long, default_value_t = 30)]
    requests: usize,
    /// Keep the topology up until Ctrl-C, to explore it (`ip netns`, lbctl).
    #[arg(long)]
    keep: bool,
}

fn heading(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn lbctl(cluster: &DemoCluster, command: &str) -> anyhow::Result<()> {
    let out = Command::new(agent::binary("lbctl")?)
        .args(["--pin-dir", cluster.agent.pin_dir.to_str().context("UTF-8 pin dir")?, command])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    anyhow::ensure!(out.status.success(), "lbctl {command}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn spread(cluster: &DemoCluster, n: usize) -> anyhow::Result<()> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let body = servers::http_get(&cluster.topology.client, SocketAddr::V4(WEB))?;
        *seen.entry(body).or_insert(0usize) += 1;
    }
    for (backend, count) in seen {
        println!("  {backend:<10} {count:>4} {}", "#".repeat(count * 40 / n.max(1)));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    heading("Building the topology: client, node, 3 backends (network namespaces only)");
    let mut cluster = DemoCluster::start()?;
    let t = &cluster.topology;
    println!("  client {} ({})  node {}  backends {}", t.client, topology::CLIENT_IP, t.node, t.backends.join(" "));
    println!("  lb-agent runs in {} with maps pinned at {}", t.node, cluster.agent.pin_dir.display());

    heading("What the datapath holds (lbctl services)");
    lbctl(&cluster, "services")?;

    heading(&format!("{} HTTP requests to the ClusterIP {WEB}", args.requests));
    spread(&cluster, args.requests)?;

    heading(&format!("UDP echo through the ClusterIP {ECHO}"));
    let (reply, from) = servers::udp_exchange(&cluster.topology.client, SocketAddr::V4(ECHO), b"hello")?;
    println!("  reply {reply:?} from {from} (the ClusterIP: replies are reverse-NATed)");

    heading(&format!("A Service without endpoints ({NOTHING_HERE})"));
    let started = Instant::now();
    let result = servers::connect(&cluster.topology.client, SocketAddr::V4(NOTHING_HERE))?;
    match result {
        Err(e) => println!("  connect failed after {:?}: {e}", started.elapsed()),
        Ok(_) => println!("  unexpectedly connected"),
    }

    heading("Removing backend-3 from the Services file while the agent runs");
    let text = scenario::demo_services_without_web_endpoint(topology::backend_ip(3));
    cluster.update(&text, |m| scenario::backend_count(m, WEB) == Some(2))?;
    spread(&cluster, args.requests)?;

    heading("Tracked flows (lbctl conntrack, first 5)");
    let out = Command::new(agent::binary("lbctl")?)
        .args(["--pin-dir", cluster.agent.pin_dir.to_str().context("UTF-8 pin dir")?, "conntrack"])
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines().take(5) {
        println!("{line}");
    }
    heading("Each frontend's new and refused flows (lbctl services)");
    lbctl(&cluster, "services")?;
    heading("Packet counters (lbctl stats)");
    lbctl(&cluster, "stats")?;

    if args.keep {
        heading("Topology kept up; press Ctrl-C to remove it");
        println!("  try: ip netns exec {} curl -s http://{WEB}/", cluster.topology.client);
        wait_for_interrupt();
    }
    heading("Cleaning up");
    drop(cluster);
    println!("  done: namespaces, links, attachments and pinned maps removed");
    Ok(())
}

fn wait_for_interrupt() {
    // SAFETY: blocks SIGINT/SIGTERM and waits for one synchronously, so the
    // normal drop path cleans up.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}
