//! The Maglev tables as the kernel holds them: a hash of maps from
//! frontend id to an array of `TABLE_SIZE` backend ids. A new table is
//! filled before it is linked into the outer map, so the datapath never
//! sees it half-written; a changed table gets only the positions that
//! differ from what the kernel holds (`maglev::delta`), in one batch.
//!
//! Linking a table into the outer map, or unlinking it, makes the kernel
//! wait for an RCU grace period before the syscall returns (so that no
//! program still runs with the old value: `maybe_wait_bpf_programs`), a
//! few milliseconds each on a small node. One by one, a node's first
//! thousand NodePort tables took seconds; consecutive links, and
//! consecutive unlinks, go to the kernel as one batch, which waits once.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::Context as _;
use aya::maps::{Array, HashOfMaps, IterableMap as _, Map, MapData};
use lb_common::maglev::{TABLE_FLAGS, TABLE_SIZE};

use super::{batch, mapped::MappedArray, maps::is_not_found};
use crate::maglev::{self, Table};

pub(super) struct MaglevTables {
    outer: HashOfMaps<MapData, u32, Array<MapData, u32>>,
    /// The same outer map, for batched syscalls (aya's `HashOfMaps` does
    /// not lend its `MapData`).
    outer_data: MapData,
}

/// A table filled and waiting to be linked: its place in the run, its
/// frontend id, and the inner map (its fd stays open until linked).
type NewTable = (usize, u32, Array<MapData, u32>);

impl MaglevTables {
    pub(super) fn new(map: Map) -> anyhow::Result<Self> {
        let Map::HashOfMaps(data) = &map else {
            anyhow::bail!("not a hash of maps");
        };
        let fd = data.fd().as_fd().try_clone_to_owned().context("duplicating the Maglev map's fd")?;
        let outer_data = MapData::from_fd(fd)?;
        Ok(Self { outer: map.try_into()?, outer_data })
    }

    /// Every non-empty table, by frontend id.
    pub(super) fn read_all(&self) -> anyhow::Result<BTreeMap<u32, Table>> {
        let mut out = BTreeMap::new();
        for frontend_id in self.outer.keys() {
            let frontend_id = frontend_id?;
            let inner = match self.outer.get(&frontend_id, 0) {
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

    /// One table write: a run of one. Takes the table by value like every
    /// other map's `write`, which one macro calls alike.
    #[allow(clippy::needless_pass_by_value)]
    pub(super) fn write(&mut self, frontend_id: u32, table: Option<Table>) -> anyhow::Result<()> {
        self.write_in_order(&[(frontend_id, table.as_ref())]).map_err(|(_, error)| error)
    }

    /// Writes a run of tables in order (`None`: remove). A changed table
    /// is written in place; new tables are filled, then linked in one
    /// batch, and removed ones unlinked in one batch (module comment). On
    /// error: how many writes of the run are known to be applied (some
    /// after them may be too; writing those again changes nothing).
    pub(super) fn write_in_order(&mut self, run: &[(u32, Option<&Table>)]) -> Result<(), (usize, anyhow::Error)> {
        let mut links: Vec<NewTable> = Vec::new();
        let mut unlinks: Vec<(usize, u32)> = Vec::new();
        for (index, (frontend_id, table)) in run.iter().enumerate() {
            // Pending writes of the other kind go first: the run's order
            // holds for every frontend id.
            let Some(table) = table else {
                self.link(&mut links)?;
                unlinks.push((index, *frontend_id));
                continue;
            };
            self.unlink(&mut unlinks)?;
            let applied = links.first().map_or(index, |(first, ..)| *first);
            match self.outer.get(frontend_id, 0) {
                Ok(mut inner) => read_table(&inner)
                    .and_then(|held| write_positions(&mut inner, &maglev::delta(&held, table.ids())))
                    .map_err(|e| (applied, e))?,
                Err(e) if is_not_found(&e) => {
                    links.push((index, *frontend_id, filled(table).map_err(|e| (applied, e))?))
                }
                Err(e) => return Err((applied, e.into())),
            }
        }
        self.link(&mut links)?;
        self.unlink(&mut unlinks)
    }

    /// Links the filled `tables` into the outer map, in order.
    fn link(&mut self, tables: &mut Vec<NewTable>) -> Result<(), (usize, anyhow::Error)> {
        let entries: Vec<(u32, u32)> =
            tables.iter().map(|(_, id, inner)| (*id, inner.map().fd().as_fd().as_raw_fd() as u32)).collect();
        let result = match batch::update_in_order(&self.outer_data, &entries) {
            Ok(true) => Ok(()),
            Err(stopped) => Err((stopped.done, anyhow::Error::from(stopped.error))),
            Ok(false) => tables
                .iter()
                .enumerate()
                .try_for_each(|(done, (_, id, inner))| self.outer.insert(*id, inner, 0).map_err(|e| (done, e.into()))),
        };
        let result = result.map_err(|(done, e)| (tables[done].0, e.context("linking Maglev tables")));
        tables.clear();
        result
    }

    /// Unlinks the tables of these frontend ids (already gone: fine).
    fn unlink(&mut self, ids: &mut Vec<(usize, u32)>) -> Result<(), (usize, anyhow::Error)> {
        let Some(&(first, _)) = ids.first() else {
            return Ok(());
        };
        let keys: Vec<u32> = ids.iter().map(|(_, id)| *id).collect();
        let result = match batch::delete_all(&self.outer_data, &keys) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => ids.iter().try_for_each(|&(index, id)| match self.outer.remove(&id) {
                Err(e) if !is_not_found(&e) => Err((index, e.into())),
                _ => Ok(()),
            }),
            // Where the batch stopped is not known: count none of it.
            Err(e) => Err((first, anyhow::Error::from(e).context("unlinking Maglev tables"))),
        };
        ids.clear();
        result
    }
}

/// A new inner map holding `table`.
fn filled(table: &Table) -> anyhow::Result<Array<MapData, u32>> {
    let mut inner = Array::<MapData, u32>::create(TABLE_SIZE, TABLE_FLAGS).context("creating a Maglev table")?;
    write_positions(&mut inner, &maglev::delta(&[], table.ids()))?;
    Ok(inner)
}

/// A table's ids: as memory where the table is mapped (every table this
/// build creates), else by batch or element by element.
fn read_table(inner: &Array<MapData, u32>) -> anyhow::Result<Vec<u32>> {
    if let Ok(mapped) = MappedArray::of(inner) {
        return Ok(mapped.read_all());
    }
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

/// Sets the given positions, as [`read_table`] reads them.
fn write_positions(inner: &mut Array<MapData, u32>, changes: &[(u32, u32)]) -> anyhow::Result<()> {
    if let Ok(mapped) = MappedArray::of(inner) {
        mapped.write(changes);
        return Ok(());
    }
    if batch::update_all(inner.map(), changes)? {
        return Ok(());
    }
    for &(position, id) in changes {
        inner.set(position, id, 0)?;
    }
    Ok(())
}
