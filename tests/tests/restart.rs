//! Agent restarts: the maps are pinned, so a new agent re-opens them,
//! writes only the difference, and tracked connections keep flowing.

use std::{
    net::SocketAddr,
    time::Duration,
};

use lb_tests::{
    scenario::{self, DemoCluster, WEB},
    servers,
};
use lb_userspace::{
    datapath::{
        loader::{self, Capacities},
        maps::ServiceMaps,
    },
    tables::DesiredMaps,
    model::NodeContext,
    source::objects,
    sync::Syncer,
};

/// Loads the datapath with maps pinned in `pin_dir` and syncs the demo
/// Services; returns how many writes the sync made.
fn load_and_sync(pin_dir: &std::path::Path) -> usize {
    let mut ebpf = loader::load(Some(pin_dir), Capacities::default()).expect("load");
    let maps = ServiceMaps::from_ebpf(&mut ebpf).expect("maps");
    let existing = maps.read_all().expect("read pinned maps");
    let mut syncer = Syncer::new(maps, existing, NodeContext::default());
    let objects = objects::parse(scenario::DEMO_SERVICES).unwrap();
    syncer.sync(&objects.services, &objects.slices).expect("sync").writes
}

struct PinDir(std::path::PathBuf);
impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn restart_with_pinned_maps_writes_nothing_when_nothing_changed() {
    let pin_dir = PinDir(format!("/sys/fs/bpf/lbt-restart-{}", std::process::id()).into());
    let first = load_and_sync(&pin_dir.0);
    assert!(first > 0, "the first start programs the maps");
    assert_eq!(load_and_sync(&pin_dir.0), 0, "a restart finds everything in place");
    let held = ServiceMaps::from_pins(&pin_dir.0).unwrap().read_all().unwrap();
    assert_ne!(held, DesiredMaps::default());
}

#[test]
fn established_connection_survives_an_agent_restart() {
    let mut cluster = DemoCluster::start().expect("start demo cluster");
    let mut conn = servers::connect(&cluster.topology.client, SocketAddr::V4(WEB)).unwrap().expect("connect to the ClusterIP");
    let pinned = servers::http_request(&mut conn, false).unwrap();

    cluster.agent.restart().expect("restart the agent");
    // Ready means re-attached and synced against the pinned maps.
    cluster.agent.wait_ready(Duration::from_secs(30)).expect("agent ready again");
    assert_eq!(servers::http_request(&mut conn, false).unwrap(), pinned, "same connection, same backend after the restart");
}
