//! The agent: Kubernetes objects → per-node service table (pure) → map
//! entries (pure) → ordered, minimal writes to the kernel maps (I/O).

pub mod affinity;
pub mod agent;
pub mod cni;
pub mod conntrack;
pub mod datapath;
pub mod encode;
pub mod events;
pub mod frontend_metrics;
pub mod health;
pub mod healthcheck;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod node_addresses;
pub mod problems;
pub mod runner;
pub mod serve;
pub mod snat_ports;
pub mod sock_diag;
pub mod source;
pub mod state;
pub mod sync;
pub mod tables;
pub mod trace;
pub mod translate;
pub mod udp_abort;

/// The datapath object built by build.rs from `lb-ebpf`.
pub const EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
