//! The Maglev tables as the kernel holds them: a hash of maps from
//! frontend id to an array of `TABLE_SIZE` backend ids. A new table is
//! filled before it is linked into the outer map, so the datapath never
//! sees it half-written; a changed table gets only the positions that
//! differ from what the kernel holds (`maglev::delta`), in one batch.

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::maps::{Array, HashOfMaps, IterableMap as _, Map, MapData};
use lb_common::maglev::TABLE_SIZE;

use super::{batch, maps::is_not_found};
use crate::maglev::{self, Table};

pub(super) struct MaglevTables(HashOfMaps<MapData, u32, Array<MapData, u32>>);

impl MaglevTables {
    pub(super) fn new(map: Map) -> anyhow::Result<Self> {
        Ok(Self(map.try_into()?))
    }

    /// Every non-empty table, by frontend id.
    pub(super) fn read_all(&self) -> anyhow::Result<BTreeMap<u32, Table>> {
        let mut out = BTreeMap::new();
        for frontend_id in self.0.keys() {
            let frontend_id = frontend_id?;
            let inner = match self.0.get(&frontend_id, 0) {
                Err(e) if is_not_found(&e) => continue, // removed meanwhile
                inner => inner?,
            };
            let ids = read_table(&inner)?;
            if ids.iter().any(|&id| id != 0) {
                out.insert(frontend_id, Table::new(ids));
            }
        }
        Ok(out)
    }

    pub(super) fn write(&mut self, frontend_id: u32, table: Option<Table>) -> anyhow::Result<()> {
        let Some(table) = table else {
            return match self.0.remove(&frontend_id) {
                Err(e) if !is_not_found(&e) => Err(e.into()),
                _ => Ok(()),
            };
        };
        match self.0.get(&frontend_id, 0) {
            Ok(mut inner) => {
                let held = read_table(&inner)?;
                write_positions(&mut inner, &maglev::delta(&held, table.ids()))
            }
            Err(e) if is_not_found(&e) => {
                let mut inner = Array::<MapData, u32>::create(TABLE_SIZE, 0).context("creating a Maglev table")?;
                write_positions(&mut inner, &maglev::delta(&[], table.ids()))?;
                self.0.insert(frontend_id, &inner, 0)?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn read_table(inner: &Array<MapData, u32>) -> anyhow::Result<Vec<u32>> {
    let mut ids = vec![0u32; inner.len() as usize];
    match batch::lookup_all::<u32, u32>(inner.map())? {
        Some(entries) => {
            for (position, id) in entries {
                if let Some(slot) = ids.get_mut(position as usize) {
                    *slot = id;
                }
            }
        }
        None => {
            for (slot, id) in ids.iter_mut().zip(inner.iter()) {
                *slot = id?;
            }
        }
    }
    Ok(ids)
}

fn write_positions(inner: &mut Array<MapData, u32>, changes: &[(u32, u32)]) -> anyhow::Result<()> {
    if batch::update_all(inner.map(), changes)? {
        return Ok(());
    }
    for &(position, id) in changes {
        inner.set(position, id, 0)?;
    }
    Ok(())
}
