//! The agent's id counters, kept in the pinned `LB_IDS` array so that a
//! restarted agent continues where the previous one stopped. Backend ids
//! and frontend ids are handed out from these counters and never handed
//! out twice: a conntrack entry naming a removed backend or frontend must
//! find nothing, never a different endpoint. The datapath never reads
//! this map.

/// Index of the last backend id handed out.
pub const LAST_BACKEND_ID: u32 = 0;
/// Index of the last frontend id handed out.
pub const LAST_FRONTEND_ID: u32 = 1;
/// Number of counters.
pub const COUNTERS: u32 = 2;
