//! Ctrl-C (and SIGTERM/SIGHUP): the handler only sets a flag. Every loop
//! of the benchmark checks it and returns an error, so the stack unwinds
//! through the Drop guards that delete namespaces, stop the agent and
//! remove its pins. Exiting from the handler would skip all of that.

use std::sync::atomic::{AtomicBool, Ordering};

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once per process).
pub fn install() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        if CANCELLED.swap(true, Ordering::SeqCst) {
            eprintln!("lb-bench: still cleaning up (namespaces, agent, pins); please wait");
        } else {
            eprintln!("lb-bench: interrupted; cleaning up");
        }
    })?;
    Ok(())
}

pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::Relaxed)
}

/// Fails once an interrupt arrived.
pub fn check() -> anyhow::Result<()> {
    if cancelled() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}
