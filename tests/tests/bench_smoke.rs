//! `lb-bench --smoke` end to end: it must run every part at tiny sizes,
//! exit 0 and write the CSV with the expected header and rows. Needs root
//! and the workspace's binaries (`cargo build --bins`). No
//! timing is asserted: only that each measurement exists.

use std::{path::PathBuf, process::Command};

use lb_tests::bench::report::CSV_HEADER;

/// target/<profile>/deps/bench_smoke-<hash> → target/<profile>/<name>
fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let path = profile_dir.join(name);
    assert!(path.is_file(), "{} not built: run `cargo build --bins` first", path.display());
    path
}

#[test]
fn smoke_run_writes_every_measurement() {
    let out = std::env::temp_dir().join(format!("lb-bench-smoke-{}", std::process::id()));
    let status = Command::new(sibling_binary("lb-bench"))
        .args(["--smoke", "--out"])
        .arg(&out)
        .args(["--agent"])
        .arg(sibling_binary("lb-agent"))
        .status()
        .expect("run lb-bench");
    let csv = std::fs::read_to_string(out.join("results.csv"));
    let summary_exists = out.join("summary.md").is_file();
    let _ = std::fs::remove_dir_all(&out);
    assert!(status.success(), "lb-bench --smoke failed: {status}");
    let csv = csv.expect("results.csv written");
    assert!(summary_exists, "summary.md written");

    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == CSV_HEADER.split(',').count()), "every row has every column");
    let has = |section: &str, datapath: &str, case: &str, metric: &str| {
        rows.iter().any(|r| r[0] == section && r[1] == datapath && r[2] == case && r[4] == metric)
    };
    for case in [
        "parse_only_new",
        "clusterip_new_flow",
        "clusterip_new_flow_full",
        "nodeport_new_flow",
        "parse_only_repeated",
        "conntrack_hit",
        "route_only",
        "miss_unused_port",
        "miss_other_address",
        "external_remote_tc",
        "external_remote_xdp",
    ] {
        assert!(has("packet_cost", "ebpf", case, "ns_per_packet"), "packet_cost {case}");
        assert!(has("packet_cost", "ebpf", case, "ratio_to_parse_only"), "packet_cost {case} ratio");
    }
    for datapath in ["none", "forward_only", "ebpf", "iptables", "nftables"] {
        for case in ["tcp_connections", "udp_new_flows", "udp_packets"] {
            assert!(has("traffic", datapath, case, "rate"), "traffic {datapath} {case} rate");
            assert!(has("traffic", datapath, case, "cpu"), "traffic {datapath} {case} cpu");
            if datapath != "none" {
                assert!(has("traffic", datapath, case, "ratio_to_floor"), "traffic {datapath} {case} ratio");
            }
            if datapath == "forward_only" || datapath == "ebpf" {
                assert!(has("traffic", datapath, case, "program_time"), "traffic {datapath} {case} program time");
            }
        }
    }
    for datapath in ["nftables", "tc", "xdp"] {
        for case in ["nodeport_tcp_connections", "nodeport_udp_new_flows"] {
            assert!(has("nodeport", datapath, case, "rate"), "nodeport {datapath} {case} rate");
            if datapath != "nftables" {
                assert!(has("nodeport", datapath, case, "ratio_to_floor"), "nodeport {datapath} {case} ratio");
            }
        }
    }
    for (case, metric) in [
        ("agent_startup", "startup"),
        ("agent_memory", "peak_rss"),
        ("endpoint_change", "sync_p50"),
        ("endpoint_change", "sync_p99"),
        ("endpoint_change_incremental", "sync_p50"),
        ("endpoint_change_incremental", "sync_p99"),
    ] {
        assert!(has("control_plane", "ebpf", case, metric), "control_plane {case} {metric}");
    }
    // Every value is a number.
    for r in &rows {
        for field in &r[6..9] {
            assert!(field.parse::<f64>().is_ok(), "not a number: {field} in {r:?}");
        }
    }
}
