//! The kernel side: loading and attaching the programs, and the typed
//! maps the agent writes and the CLI reads.

mod batch;
pub mod loader;
pub mod maps;
