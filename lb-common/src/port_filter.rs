//! A per-port prefilter, indexed by port number (host byte order). Most
//! packets a node forwards are not Service traffic; one array read (which
//! the kernel inlines, no hashing) tells the datapath that no frontend
//! listens on a packet's destination port and no backend sends from its
//! source port, so it can pass the packet without any hash lookup.
//!
//! The bits are a superset: a set bit only means "look it up". The agent
//! sets a bit before it writes the entries that need it and clears it only
//! after they are gone.

/// Some frontend uses this port as its destination port.
pub const FRONTEND_PORT: u8 = 1 << 0;
/// Some backend uses this port (replies come from it).
pub const BACKEND_PORT: u8 = 1 << 1;
