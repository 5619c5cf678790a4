//! Who each frontend id belongs to, for the per-frontend counters'
//! metric labels: the datapath counts by id only.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::model::{Frontend, FrontendKind, ServicePortName};

/// The Service port and the address a frontend id serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendLabel {
    pub service: ServicePortName,
    pub kind: FrontendKind,
    pub address: IpAddr,
    pub port: u16,
}

impl FrontendLabel {
    pub fn of(frontend: &Frontend) -> Self {
        Self { service: frontend.service.clone(), kind: frontend.kind, address: frontend.address, port: frontend.port }
    }
}

/// Frontend id → label, with a generation that moves on every change, so
/// readers copy the table only when it changed.
#[derive(Debug, Default)]
pub struct FrontendLabels {
    by_id: HashMap<u32, FrontendLabel>,
    generation: u64,
}

impl FrontendLabels {
    pub fn set(&mut self, frontend_id: u32, label: FrontendLabel) {
        if self.by_id.get(&frontend_id) != Some(&label) {
            self.by_id.insert(frontend_id, label);
            self.generation += 1;
        }
    }

    pub fn remove(&mut self, frontend_id: u32) {
        if self.by_id.remove(&frontend_id).is_some() {
            self.generation += 1;
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A shareable copy of the table.
    pub fn snapshot(&self) -> Arc<HashMap<u32, FrontendLabel>> {
        Arc::new(self.by_id.clone())
    }
}
