//! The Maglev tables as the kernel holds them: a hash of maps from
//! frontend id to an array of `TABLE_SIZE` backend ids. Frontends with
//! equal tables name one inner map (`shared_tables`). A new table is
//! filled before it is linked into the outer map, so the datapath never
//! sees it half-written; a changed table of a map no other frontend uses
//! gets only the positions that differ from what the kernel holds
//! (`maglev::delta`).
//!
//! Linking a table into the outer map, or unlinking it, makes the kernel
//! wait for an RCU grace period before the syscall returns (so that no
//! program still runs with the old value: `maybe_wait_bpf_programs`), a
//! few milliseconds each on a small node. One by one, a node's first
//! thousand NodePort tables took seconds; consecutive links, and
//! consecutive unlinks, go to the kernel as one batch, which waits once.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::Mutex,
};

use anyhow::Context as _;
use aya::maps::{Array, HashOfMaps, IterableMap as _, Map, MapData};
use lb_common::maglev::{TABLE_FLAGS, TABLE_SIZE};

use super::{
    batch,
    mapped::MappedArray,
    maps::is_not_found,
    shared_tables::{Plan, SharedTables},
};
use crate::maglev::{self, Table};

type Inner = Array<MapData, u32>;

/// What `MaglevTables::count` found.
pub(super) struct TableCount {
    pub(super) frontends: usize,
    pub(super) tables: usize,
}

pub(super) struct MaglevTables {
    outer: HashOfMaps<MapData, u32, Inner>,
    /// The same outer map, for batched syscalls (aya's `HashOfMaps` does
    /// not lend its `MapData`).
    outer_data: MapData,
    /// Which inner map each frontend names; `None` until read from the
    /// kernel, and again after a failed write (then not to be trusted).
    shared: Mutex<Option<SharedTables<Inner>>>,
}

/// A link waiting for its batch: its place in the run, its frontend id,
/// and the inner map's fd (kept open until linked).
type PendingLink = (usize, u32, OwnedFd);

impl MaglevTables {
    pub(super) fn new(map: Map) -> anyhow::Result<Self> {
        let Map::HashOfMaps(data) = &map else {
            anyhow::bail!("not a hash of maps");
        };
        let fd = data.fd().as_fd().try_clone_to_owned().context("duplicating the Maglev map's fd")?;
        let outer_data = MapData::from_fd(fd)?;
        Ok(Self { outer: map.try_into()?, outer_data, shared: Mutex::new(None) })
    }

    /// Every non-empty table, by frontend id. Also relearns which inner
    /// map each frontend names.
    pub(super) fn read_all(&self) -> anyhow::Result<BTreeMap<u32, Table>> {
        let mut guard = self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Until read again, not known (a failed read leaves it so).
        let known = guard.take();
        let (shared, tables) = self.read_shared(known.as_ref());
        *guard = Some(shared?);
        Ok(tables)
    }

    /// The inner maps the outer map names, each read once, and the
    /// non-empty tables by frontend id (a frontend's is its map's). A map
    /// `known` already holds (by kernel id: its fd there keeps the id
    /// from being reused) and whose ids are unchanged keeps its table: a
    /// comparison, where building a table from 16,381 ids sorts them.
    fn read_shared(
        &self,
        known: Option<&SharedTables<Inner>>,
    ) -> (anyhow::Result<SharedTables<Inner>>, BTreeMap<u32, Table>) {
        let mut shared = SharedTables::default();
        let mut tables = BTreeMap::new();
        let result = self.for_each_linked(|frontend_id, id, inner| {
            if !shared.contains(id) {
                let ids = read_table(&inner)?;
                let table = match known.and_then(|known| known.table(id)) {
                    Some(table) if table.iter().eq(ids.iter().copied()) => table.clone(),
                    _ => Table::new(&ids),
                };
                shared.add(id, inner, table);
            }
            shared.link(frontend_id, id);
            if let Some(table) = shared.table(id).filter(|t| t.names_a_backend()) {
                tables.insert(frontend_id, table.clone());
            }
            Ok(())
        });
        (result.map(|()| shared), tables)
    }

    /// Hands each frontend id, the kernel id of the inner map it names and
    /// that map to `each`, a lookup per frontend; a frontend removed
    /// meanwhile is skipped.
    fn for_each_linked(&self, mut each: impl FnMut(u32, u32, Inner) -> anyhow::Result<()>) -> anyhow::Result<()> {
        for frontend_id in self.outer.keys() {
            let frontend_id = frontend_id?;
            let inner = match self.outer.get(&frontend_id, 0) {
                Err(e) if is_not_found(&e) => continue, // removed meanwhile
                inner => inner?,
            };
            let id = inner.map().info().context("Maglev table info")?.id();
            each(frontend_id, id, inner)?;
        }
        Ok(())
    }

    /// How many frontends name a table and how many distinct tables
    /// (inner maps) they name, from the outer map alone: no table is read.
    pub(super) fn count(&self) -> anyhow::Result<TableCount> {
        // Read from user space, a map-in-map's value is the inner map's id.
        let named: Vec<(u32, u32)> = match batch::lookup_all(&self.outer_data).context("reading the outer map")? {
            Some(named) => named,
            None => self.named_one_by_one()?,
        };
        let tables: BTreeSet<u32> = named.iter().map(|&(_, id)| id).collect();
        Ok(TableCount { frontends: named.len(), tables: tables.len() })
    }

    /// (frontend id, inner map id) of every frontend, a lookup each: for
    /// kernels that cannot batch a map-in-map.
    fn named_one_by_one(&self) -> anyhow::Result<Vec<(u32, u32)>> {
        let mut named = Vec::new();
        self.for_each_linked(|frontend_id, id, _| {
            named.push((frontend_id, id));
            Ok(())
        })?;
        Ok(named)
    }

    /// Moves frontends so that the kernel holds each distinct table once
    /// (`SharedTables::duplicates`), in one batch; the maps left unnamed
    /// are freed. Returns how many frontends moved. No packet sees a
    /// change: the map a frontend moves to holds the same table.
    pub(super) fn merge_duplicates(&mut self) -> anyhow::Result<usize> {
        let mut shared = self.take_shared()?;
        let moves = shared.duplicates();
        let mut links = Vec::with_capacity(moves.len());
        for (index, &(frontend_id, id)) in moves.iter().enumerate() {
            links.push((index, frontend_id, fd_of(&shared, id)?));
        }
        self.link(&mut links).map_err(|(_, e)| e)?;
        for &(frontend_id, id) in &moves {
            shared.link(frontend_id, id);
        }
        self.put_shared(shared);
        Ok(moves.len())
    }

    /// The bookkeeping, taken out (read from the kernel if not known):
    /// until [`Self::put_shared`] puts it back, as after a failure, it is
    /// not known.
    fn take_shared(&mut self) -> anyhow::Result<SharedTables<Inner>> {
        match self.shared.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            Some(shared) => Ok(shared),
            None => self.read_shared(None).0,
        }
    }

    fn put_shared(&mut self, shared: SharedTables<Inner>) {
        *self.shared.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(shared);
    }

    /// One table write: a run of one. Takes the table by value like every
    /// other map's `write`, which one macro calls alike.
    #[allow(clippy::needless_pass_by_value)]
    pub(super) fn write(&mut self, frontend_id: u32, table: Option<Table>) -> anyhow::Result<()> {
        self.write_in_order(&[(frontend_id, table.as_ref())]).map_err(|(_, error)| error)
    }

    /// Writes a run of tables in order (`None`: remove). A table another
    /// inner map already holds is shared; one of a map only this frontend
    /// names is rewritten in place; otherwise a new map is filled. Links
    /// wait and go in one batch, and so do unlinks (module comment). On
    /// error: how many writes of the run are known to be applied (some
    /// after them may be too; writing those again changes nothing).
    pub(super) fn write_in_order(&mut self, run: &[(u32, Option<&Table>)]) -> Result<(), (usize, anyhow::Error)> {
        let mut shared = self.take_shared().map_err(|e| (0, e))?;
        self.write_shared(&mut shared, run)?;
        self.put_shared(shared);
        Ok(())
    }

    fn write_shared(
        &mut self,
        shared: &mut SharedTables<Inner>,
        run: &[(u32, Option<&Table>)],
    ) -> Result<(), (usize, anyhow::Error)> {
        let mut links: Vec<PendingLink> = Vec::new();
        let mut unlinks: Vec<(usize, u32)> = Vec::new();
        for (index, (frontend_id, table)) in run.iter().enumerate() {
            // Pending writes of the other kind go first: the run's order
            // holds for every frontend id.
            let Some(table) = table else {
                self.link(&mut links)?;
                unlinks.push((index, *frontend_id));
                shared.unlink(*frontend_id);
                continue;
            };
            self.unlink(&mut unlinks)?;
            let applied = links.first().map_or(index, |(first, ..)| *first);
            let id = match shared.plan(*frontend_id, table) {
                Plan::Keep => continue,
                Plan::Share(id) => id,
                Plan::Rewrite(id) => {
                    let inner = shared.handle_mut(id).expect("planned from a known map");
                    rewrite(inner, table).map_err(|e| (applied, e))?;
                    shared.retable(id, (*table).clone());
                    continue;
                }
                Plan::Fill => {
                    let inner = filled(table).map_err(|e| (applied, e))?;
                    let id = inner.map().info().context("new Maglev table info").map_err(|e| (applied, e))?;
                    let id = id.id();
                    shared.add(id, inner, (*table).clone());
                    id
                }
            };
            let fd = fd_of(shared, id).map_err(|e| (applied, e.into()))?;
            links.push((index, *frontend_id, fd));
            shared.link(*frontend_id, id);
        }
        self.link(&mut links)?;
        self.unlink(&mut unlinks)
    }

    /// Links the pending tables into the outer map, in order.
    fn link(&mut self, tables: &mut Vec<PendingLink>) -> Result<(), (usize, anyhow::Error)> {
        let entries: Vec<(u32, u32)> = tables.iter().map(|(_, id, fd)| (*id, fd.as_raw_fd() as u32)).collect();
        let result = match batch::update_in_order(&self.outer_data, &entries) {
            Ok(true) => Ok(()),
            Err(stopped) => Err((stopped.done, anyhow::Error::from(stopped.error))),
            Ok(false) => tables.iter().enumerate().try_for_each(|(done, (_, id, fd))| {
                let inner = fd
                    .try_clone()
                    .map_err(anyhow::Error::from)
                    .and_then(|fd| Ok(Inner::try_from(Map::Array(MapData::from_fd(fd)?))?));
                let linked = inner.and_then(|inner| Ok(self.outer.insert(*id, &inner, 0)?));
                linked.map_err(|e| (done, e))
            }),
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

/// An fd of known map `id`, for a pending link.
fn fd_of(shared: &SharedTables<Inner>, id: u32) -> std::io::Result<OwnedFd> {
    shared.handle(id).expect("a known map").map().fd().as_fd().try_clone_to_owned()
}

/// A new inner map holding `table`.
fn filled(table: &Table) -> anyhow::Result<Array<MapData, u32>> {
    let mut inner = Array::<MapData, u32>::create(TABLE_SIZE, TABLE_FLAGS).context("creating a Maglev table")?;
    // A new table is written whole, straight from its compact form.
    match MappedArray::of(&inner) {
        Ok(mapped) => mapped.write_all(table.iter()),
        Err(_) => write_positions(&mut inner, &maglev::delta(&[], &table.to_vec()))?,
    }
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

/// Rewrites the positions of `inner` that differ from `table`.
fn rewrite(inner: &mut Inner, table: &Table) -> anyhow::Result<()> {
    let held = read_table(inner)?;
    write_positions(inner, &maglev::delta(&held, &table.to_vec()))
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
