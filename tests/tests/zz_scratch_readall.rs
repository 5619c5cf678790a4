use std::{net::Ipv4Addr, time::Instant};
use lb_tests::{bench::{layouts::ebpf::capacities_for, table::{Table, TableSpec, HTTP}}, datapath::Datapath};
use lb_userspace::{model::NodeContext, sync::MapWriter};
#[test]
fn scratch() {
    let table = Table::generate(&TableSpec { services: 10_000, port: HTTP, pool: (0..20_000).map(|i| Ipv4Addr::new(10, 244, (i / 250) as u8, (2 + i % 250) as u8)).collect(), endpoints_per_service: 10, node_ports: 0 });
    let mut dp = Datapath::load_with(NodeContext::default(), capacities_for(10_000, 10)).unwrap();
    let svcs = table.service_objects(); let slices = table.slice_objects();
    let t = Instant::now(); let r = dp.syncer_mut().sync(&svcs, &slices).unwrap(); eprintln!("initial {:?} writes {}", t.elapsed(), r.writes);
    for _ in 0..3 {
        let t = Instant::now(); let m = dp.syncer_mut().writer().read_all().unwrap(); eprintln!("read_all {:?} ({} services)", t.elapsed(), m.services.len());
        let t = Instant::now(); let r = dp.syncer_mut().sync(&svcs, &slices).unwrap(); eprintln!("full sync {:?} writes {}", t.elapsed(), r.writes);
    }
}
