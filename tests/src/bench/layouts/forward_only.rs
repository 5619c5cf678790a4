//! The limit: `lb_forward_only` at tc ingress of every node interface. It
//! parses like the datapath and sends each packet on the way the datapath
//! sends a NATed one (FIB lookup, then `bpf_redirect`, `bpf_redirect_peer`
//! into a pod's namespace, or `bpf_redirect_neigh`), with no Service
//! work; the client addresses the endpoints directly, as with no rules. The datapath's distance from
//! this program is the cost of its own per-flow work.

use std::time::Instant;

use anyhow::Context as _;
use aya::Ebpf;
use lb_userspace::datapath::{
    attach, interfaces,
    loader::{self, Capacities, FORWARD_ONLY_PROGRAM},
};

use super::Installed;
use crate::servers::enter_netns;

/// Loads the object in `netns` and attaches the program to `interfaces`
/// there, unpinned: it runs while the returned object lives.
pub fn install(netns: &str, interfaces: &[String]) -> anyhow::Result<Installed> {
    let started = Instant::now();
    let (netns, interfaces) = (netns.to_owned(), interfaces.to_vec());
    // Interface names resolve in the attaching thread's namespace: a
    // thread of its own enters the node's and hands the object back.
    let ebpf = std::thread::spawn(move || -> anyhow::Result<Ebpf> {
        enter_netns(&netns)?;
        let mut ebpf = loader::load(None, Capacities::default())?;
        // The peers the agent would enter for the same interfaces.
        for (index, link) in interfaces::list_now()? {
            if interfaces.contains(&link.name) {
                attach::set_peer_device(&mut ebpf, index, link.peer_elsewhere)?;
            }
        }
        loader::attach_program_ingress(&mut ebpf, FORWARD_ONLY_PROGRAM, &interfaces)?;
        Ok(ebpf)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
    .context("attaching lb_forward_only")?;
    Ok(Installed::Program { _ebpf: Box::new(ebpf), took: started.elapsed() })
}
