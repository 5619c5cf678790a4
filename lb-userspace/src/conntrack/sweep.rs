//! One pass of garbage collection over `LB4_CT` or `LB6_CT`, and the UDP
//! purge.
//!
//! The table is read in batches (`BPF_MAP_LOOKUP_BATCH`); only entries
//! idle for longer than the shortest timeout are kept as candidates, so
//! memory follows the idle entries, not the table. Candidates are grouped
//! into flows; a flow missing an entry among them has it looked up by key
//! (one lookup: the partner was used recently, or it is gone and the
//! entry is an orphan). Expired flows are deleted in batches. A packet
//! arriving between the read and the delete loses its flow's entries and
//! is balanced afresh: the window is one sweep, and only flows already
//! idle past their timeout are exposed to it.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData};
use lb_common::conntrack::{CtKeyV4, DIR_ORIGINAL};

use super::{
    expiry::{self, State, Timeouts},
    flows::{self, CtEntry as _, FlowKey},
    stale_udp::Listed,
};
use crate::datapath::batch;

/// What one sweep found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Entries in the table when read.
    pub entries: usize,
    /// Entries removed, by the state whose timeout their flow passed.
    pub removed: BTreeMap<State, usize>,
    /// Idle entries whose partner entry does not exist (evicted by the
    /// LRU, or left by an older version or a re-balanced flow).
    pub orphans: usize,
    pub took: Duration,
}

impl SweepReport {
    pub fn removed_total(&self) -> usize {
        self.removed.values().sum()
    }
}

/// A conntrack table (`LB4_CT` with `CtKeyV4`, `LB6_CT` with `CtKeyV6`)
/// as the agent opens it.
pub type ConntrackTable<K> = BpfHashMap<MapData, K, <K as FlowKey>::Value>;

/// `LB4_CT` as the agent opens it.
pub type ConntrackMap = ConntrackTable<CtKeyV4>;

/// One flow's idle entries, gathered by original key.
struct Flow<K: FlowKey> {
    original: Option<K::Value>,
    replies: Vec<(K, K::Value)>,
}

impl<K: FlowKey> Default for Flow<K> {
    fn default() -> Self {
        Self { original: None, replies: Vec::new() }
    }
}

/// Hands every entry of the table to `each`, in batches when the kernel
/// can, else key by key.
fn read<K: FlowKey>(ct: &ConntrackTable<K>, mut each: impl FnMut(&K, &K::Value)) -> anyhow::Result<()> {
    let batched = batch::for_each_chunk(ct.map(), |keys: &[K], values: &[K::Value]| {
        keys.iter().zip(values).for_each(|(k, v)| each(k, v));
    })?;
    if !batched {
        for entry in ct.iter() {
            let (k, v) = entry.context("reading conntrack")?;
            each(&k, &v);
        }
    }
    Ok(())
}

/// Deletes `keys` (batched when the kernel can); keys already gone are
/// fine.
fn delete<K: FlowKey>(ct: &mut ConntrackTable<K>, keys: &[K]) -> anyhow::Result<()> {
    if batch::delete_all(ct.map(), keys)?.is_none() {
        for key in keys {
            let _ = ct.remove(key);
        }
    }
    Ok(())
}

/// Reads the table; returns its size and the entries idle longer than
/// `idle_s`, grouped by flow.
type Candidates<K> = (usize, HashMap<K, Flow<K>>);

fn candidates<K: FlowKey>(ct: &ConntrackTable<K>, now_s: u32, idle_s: u32) -> anyhow::Result<Candidates<K>> {
    let mut entries = 0;
    let mut flows: HashMap<K, Flow<K>> = HashMap::new();
    read(ct, |key, value| {
        entries += 1;
        if now_s.saturating_sub(value.last_seen_s()) <= idle_s {
            return;
        }
        let flow = flows.entry(flows::original_key(key, value)).or_default();
        if key.direction() == DIR_ORIGINAL {
            flow.original = Some(*value);
        } else {
            flow.replies.push((*key, *value));
        }
    })?;
    Ok((entries, flows))
}

/// What the sweep decided.
struct Verdict<K> {
    delete: Vec<K>,
    report: SweepReport,
}

impl<K> Verdict<K> {
    fn remove(&mut self, state: State, keys: impl IntoIterator<Item = K>) {
        let before = self.delete.len();
        self.delete.extend(keys);
        *self.report.removed.entry(state).or_default() += self.delete.len() - before;
    }
}

/// The expiry rules and where to look a partner up.
pub struct Rules<'a, B> {
    pub timeouts: &'a Timeouts,
    /// Backend id → backend (of the table's family), for an original
    /// entry's reply key.
    pub backend: &'a dyn Fn(u32) -> Option<B>,
    /// The conntrack clock's now (`clock::now_s`).
    pub now_s: u32,
}

/// Decides one flow whose idle entries are `flow`.
fn decide<K: FlowKey>(
    ct: &ConntrackTable<K>,
    rules: &Rules<K::Backend>,
    original_key: K,
    flow: Flow<K>,
    verdict: &mut Verdict<K>,
) {
    let proto = original_key.proto();
    let original = flow.original.or_else(|| ct.get(&original_key, 0).ok());
    let mut reply = None;
    for (key, value) in flow.replies {
        if original.is_some_and(|o| flows::partners((&original_key, &o), (&key, &value))) {
            reply = Some((key, value));
            continue;
        }
        verdict.report.orphans += 1;
        if let Some(state) = expiry::expired(proto, None, Some(&value), rules.now_s, rules.timeouts) {
            verdict.remove(state, [key]);
        }
    }
    let Some(original) = original else { return };
    if reply.is_none()
        && let Some(backend) = (rules.backend)(original.backend_id())
    {
        let key = flows::reply_key(&original_key, &original, &backend);
        reply =
            ct.get(&key, 0).ok().filter(|v| flows::partners((&original_key, &original), (&key, v))).map(|v| (key, v));
        verdict.report.orphans += usize::from(reply.is_none());
    }
    let reply_value = reply.as_ref().map(|(_, v)| v);
    if let Some(state) = expiry::expired(proto, Some(&original), reply_value, rules.now_s, rules.timeouts) {
        verdict.remove(state, std::iter::once(original_key).chain(reply.map(|(k, _)| k)));
    }
}

/// One garbage collection pass: removes every flow past its timeout.
pub fn sweep<K: FlowKey>(ct: &mut ConntrackTable<K>, rules: &Rules<K::Backend>) -> anyhow::Result<SweepReport> {
    let started = Instant::now();
    let (entries, flows) = candidates(ct, rules.now_s, rules.timeouts.shortest())?;
    let mut verdict = Verdict { delete: Vec::new(), report: SweepReport::default() };
    for (original_key, flow) in flows {
        decide(ct, rules, original_key, flow, &mut verdict);
    }
    delete(ct, &verdict.delete)?;
    Ok(SweepReport { entries, took: started.elapsed(), ..verdict.report })
}

/// Removes the UDP flows `listed` says are stale (see `stale_udp`);
/// returns how many entries went.
pub fn purge_udp<K: FlowKey>(ct: &mut ConntrackTable<K>, listed: &Listed) -> anyhow::Result<usize> {
    let mut stale = Vec::new();
    read(ct, |key, value| {
        if listed.is_stale(key, value) {
            stale.push(*key);
        }
    })?;
    delete(ct, &stale)?;
    Ok(stale.len())
}
