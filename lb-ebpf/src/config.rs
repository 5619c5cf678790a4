//! The agent's settings for the datapath (`lb_common::config`).

use lb_common::config::FLAG_FORWARD_THROUGH_STACK;

use crate::maps::LB_CONFIG;

/// Whether NATed packets that may take the kernel's forward path do so
/// (see `FLAG_FORWARD_THROUGH_STACK`). Off until the agent writes the map.
#[inline(always)]
pub fn forward_through_stack() -> bool {
    LB_CONFIG.get(0).is_some_and(|config| config.flags & FLAG_FORWARD_THROUGH_STACK != 0)
}
