//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a frontend
//! flagged `service::FLAG_MAGLEV` picks a new flow's backend from a lookup
//! table of `TABLE_SIZE` backend ids, indexed by the flow hash modulo the
//! table size. The agent builds the table from the endpoints' addresses
//! and ports, not from its own ids, so every node fills the same position
//! with the same endpoint: a flow that an upstream load balancer moves to
//! another node keeps its backend. When a backend goes, only about 1/N of
//! the positions change, so most flows not yet tracked keep theirs too.
//!
//! `LB4_MAGLEV` is a hash of maps: frontend id (`u32`, host byte order) →
//! an inner array of `TABLE_SIZE` backend ids (`u32`, host byte order; 0
//! is never a backend id). Inner arrays are created by the agent when a
//! frontend gets its first backend, and shared by frontends with equal
//! tables, so the kernel memory is paid per distinct table only.

/// Positions in each table. Must be prime (the permutation's step is
/// then coprime with it, so every backend's permutation visits every
/// position). The imbalance between backends is at most about
/// N / `TABLE_SIZE` of the traffic; for it to stay under 1%, the table
/// needs about 100 positions per backend: 16,381 serves ~160 backends
/// per frontend that well. Each table costs `TABLE_BYTES` of kernel
/// memory (128 KiB here); to raise it, pick a larger prime (Cilium
/// offers 32,749, 65,521, 131,071, ...), and budget that memory times the
/// number of distinct tables (at most the number of Maglev frontends). A pinned map holding tables of another
/// size is recreated on start.
pub const TABLE_SIZE: u32 = 16_381;

/// Kernel bytes of one table's entries: the kernel stores each array
/// value in 8 bytes (value sizes are rounded up to 8), and the array's
/// own header adds a page.
pub const TABLE_BYTES: u32 = TABLE_SIZE * 8;

/// Map flags of every inner table: `BPF_F_MMAPABLE`, so the agent writes
/// and reads a table as memory instead of one element at a time. The
/// kernel takes into the outer map only tables with the flags of its
/// template (`LB4_MAGLEV`'s inner array), so both sides use this.
pub const TABLE_FLAGS: u32 = crate::maps::BPF_F_MMAPABLE;

/// The table position a flow hash (`flow::hash`) lands on.
#[inline(always)]
pub fn position(flow_hash: u32) -> u32 {
    flow_hash % TABLE_SIZE
}
