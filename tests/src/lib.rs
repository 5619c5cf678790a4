//! Shared pieces of the packet and end-to-end tests: packet builders,
//! a datapath fixture for BPF_PROG_TEST_RUN, network-namespace topologies
//! that clean up after themselves, and small real servers.

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod cluster;
pub mod cni;
pub mod datapath;
pub mod host;
pub mod k8s;
pub mod links;
pub mod load;
pub mod observe;
pub mod packets;
pub mod packets6;
pub mod pin_dir;
pub mod probe;
pub mod routed;
pub mod scenario;
pub mod servers;
pub mod tap;
pub mod topology;
pub mod traffic;
