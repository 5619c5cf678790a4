//! The cluster's Pod CIDRs (`--cluster-cidr`, either family), as kube-proxy's
//! `detect-local-mode=ClusterCIDR` uses them: a source inside one is a Pod,
//! and Pod traffic to a NodePort, external IP or load balancer IP of a
//! Service with `externalTrafficPolicy: Local` goes to endpoints anywhere
//! in the cluster (the frontend's in-cluster entry), not only this node's.

use crate::user_pod;

/// Key of `LB4_POD_CIDRS`, laid out as the kernel's LPM trie key. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodCidrKeyV4 {
    /// Prefix length in bits. Host byte order.
    pub prefix_len: u32,
    /// Network byte order.
    pub address: [u8; 4],
}
const _: () = assert!(size_of::<PodCidrKeyV4>() == 8);

/// Key of `LB6_POD_CIDRS`, laid out as the kernel's LPM trie key. 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodCidrKeyV6 {
    /// Prefix length in bits. Host byte order.
    pub prefix_len: u32,
    /// Network byte order.
    pub address: [u8; 16],
}
const _: () = assert!(size_of::<PodCidrKeyV6>() == 20);

/// Value of `LB4_POD_CIDRS` and `LB6_POD_CIDRS` entries.
pub const POD_CIDR: u8 = 1;

user_pod!(PodCidrKeyV4, PodCidrKeyV6);
