//! Reading the kernel maps back, as every full sync does to repair drift:
//! what the agent reads is exactly what it wrote, across several batches.

use std::{net::Ipv4Addr, time::Instant};

use lb_tests::{
    bench::{
        layouts::ebpf::capacities_for,
        table::{HTTP, Table, TableSpec},
    },
    datapath::Datapath,
};
use lb_userspace::model::NodeContext;

#[test]
fn maps_read_back_equal_what_was_written() {
    let services = 1_000;
    let table = Table::generate(&TableSpec {
        services,
        port: HTTP,
        pool: (0..2_000).map(|i| Ipv4Addr::new(10, 244, (i / 250) as u8, (2 + i % 250) as u8)).collect(),
        endpoints_per_service: 10,
        node_ports: 0,
    });
    let mut dp = Datapath::load_with(NodeContext::default(), capacities_for(services, 10)).expect("load (root needed)");
    dp.syncer_mut().sync(&table.service_objects(), &table.slice_records()).expect("program");
    let started = Instant::now();
    let held = dp.syncer_mut().writer().read_all().expect("read the maps back");
    eprintln!("read {} entries in {:?}", held.services.len() + held.backends.len(), started.elapsed());
    assert_eq!(held.services.len(), services * 11, "frontends and slots, more than one batch");
    assert_eq!(&held, dp.syncer_mut().current(), "read back exactly what was written");
}
