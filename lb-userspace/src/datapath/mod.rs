//! The kernel side: loading and attaching the programs, and the typed
//! maps the agent writes and the CLI reads.

pub mod attach;
pub mod batch;
pub mod bpffs;
pub mod chained;
mod conntrack_carry;
pub mod interfaces;
pub mod inventory;
mod kernel_btf;
pub mod layout;
pub mod link_info;
pub mod links;
pub mod loader;
mod maglev;
mod mapped;
pub mod maps;
pub mod route_epoch;
mod shared_tables;
pub mod skb_checksum;
pub mod sock_links;
