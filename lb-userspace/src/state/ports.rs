//! Port-filter bits kept by reference counts: a port's frontend bit is set
//! while some frontend listens on it, its backend bit while some backend
//! sends from it.

use std::collections::HashMap;

use lb_common::port_filter;

#[derive(Debug, Default)]
pub struct PortRefs {
    /// Per port: (frontends using it, backends using it).
    refs: HashMap<u16, (u32, u32)>,
}

/// Which side of a flow a port is used on.
#[derive(Clone, Copy, Debug)]
pub enum PortUse {
    Frontend,
    Backend,
}

impl PortRefs {
    /// Adds or removes one use; returns the port's bits afterwards.
    pub fn change(&mut self, port: u16, use_: PortUse, add: bool) -> u8 {
        let refs = self.refs.entry(port).or_default();
        let count = match use_ {
            PortUse::Frontend => &mut refs.0,
            PortUse::Backend => &mut refs.1,
        };
        *count = if add { *count + 1 } else { count.saturating_sub(1) };
        let (frontends, backends) = *refs;
        if (frontends, backends) == (0, 0) {
            self.refs.remove(&port);
        }
        (if frontends > 0 { port_filter::FRONTEND_PORT } else { 0 })
            | (if backends > 0 { port_filter::BACKEND_PORT } else { 0 })
    }
}
