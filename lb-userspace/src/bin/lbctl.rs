//! lbctl: shows what the datapath holds, decoded (addresses, ports,
//! protocols, counters), from the maps the agent pinned.

use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Parser, Subcommand};
use lb_common::{conntrack::DIR_ORIGINAL, service};
use lb_userspace::{
    datapath::{loader, maps},
    model::Protocol,
};

#[derive(Debug, Parser)]
#[command(version, about = "Inspect the in-kernel Service load balancer")]
struct Args {
    /// bpffs directory where the agent pinned its maps.
    #[arg(long, global = true, default_value = loader::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Frontends with their backends, in the order of their slots.
    Services,
    /// Tracked flows (original direction) and the backend each one uses.
    Conntrack,
    /// Packet counters, summed over CPUs.
    Stats,
}

fn proto_name(number: u8) -> String {
    Protocol::from_number(number).map_or_else(|| number.to_string(), |p| p.to_string())
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
    match args.command {
        Command::Services => services(&args.pin_dir),
        Command::Conntrack => conntrack(&args.pin_dir),
        Command::Stats => stats(&args.pin_dir),
    }
}

fn services(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let held = maps::ServiceMaps::from_pins(pin_dir)?.read_all()?;
    for (key, value) in held.services.iter().filter(|(k, _)| k.backend_slot == 0) {
        let frontend = format!("{}:{}/{}", Ipv4Addr::from(key.address), key.port, proto_name(key.proto));
        let affinity = if value.affinity_timeout_s > 0 { format!(" affinity={}s", value.affinity_timeout_s) } else { String::new() };
        let empty = if value.count == 0 && value.flags & service::FLAG_NO_LOCAL_ENDPOINTS != 0 {
            " (no local endpoints: drop)"
        } else if value.count == 0 {
            " (no endpoints: reject)"
        } else {
            ""
        };
        println!("{frontend:<28} {:<12} id={:<6} backends={}{affinity}{empty}", kind_name(value.flags), value.frontend_id, value.count);
        for slot in 1..=value.count {
            let backend = held
                .services
                .get(&key.slot(slot))
                .and_then(|s| held.backends.get(&s.backend_id).map(|b| (s.backend_id, b)));
            match backend {
                Some((id, b)) => {
                    let state = if b.flags & lb_common::backend::FLAG_TERMINATING != 0 { " terminating" } else { "" };
                    println!("    {slot:>3}: {}:{} (backend {id}){state}", Ipv4Addr::from(b.address), b.port);
                }
                None => println!("    {slot:>3}: <missing>"),
            }
        }
    }
    Ok(())
}

fn conntrack(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut entries = maps::conntrack_entries(pin_dir)?;
    entries.retain(|(k, _)| k.direction == DIR_ORIGINAL);
    entries.sort_by_key(|(k, _)| *k);
    for (k, v) in entries {
        println!(
            "{} {}:{} -> {}:{} backend={} frontend={}",
            proto_name(k.proto),
            Ipv4Addr::from(k.src_address),
            k.src_port,
            Ipv4Addr::from(k.dst_address),
            k.dst_port,
            v.backend_id,
            v.frontend_id
        );
    }
    Ok(())
}

fn stats(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    for (counter, value) in maps::counters(pin_dir)? {
        println!("{:<24} {value}", counter.name());
    }
    Ok(())
}
