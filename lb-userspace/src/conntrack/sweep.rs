//! One pass of garbage collection over `LB4_CT`, and the UDP purge.
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
use lb_common::{
    backend::BackendV4,
    conntrack::{CtKeyV4, CtValueV4, DIR_ORIGINAL},
};

use super::{
    expiry::{self, State, Timeouts},
    flows,
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

/// `LB4_CT` as the agent opens it.
pub type ConntrackMap = BpfHashMap<MapData, CtKeyV4, CtValueV4>;

/// One flow's idle entries, gathered by original key.
#[derive(Default)]
struct Flow {
    original: Option<CtValueV4>,
    replies: Vec<(CtKeyV4, CtValueV4)>,
}

/// Hands every entry of the table to `each`, in batches when the kernel
/// can, else key by key.
fn read(ct: &ConntrackMap, mut each: impl FnMut(&CtKeyV4, &CtValueV4)) -> anyhow::Result<()> {
    let batched = batch::for_each_chunk(ct.map(), |keys: &[CtKeyV4], values: &[CtValueV4]| {
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
fn delete(ct: &mut ConntrackMap, keys: &[CtKeyV4]) -> anyhow::Result<()> {
    if batch::delete_all(ct.map(), keys)?.is_none() {
        for key in keys {
            let _ = ct.remove(key);
        }
    }
    Ok(())
}

/// Reads the table; returns its size and the entries idle longer than
/// `idle_s`, grouped by flow.
fn candidates(ct: &ConntrackMap, now_s: u32, idle_s: u32) -> anyhow::Result<(usize, HashMap<CtKeyV4, Flow>)> {
    let mut entries = 0;
    let mut flows: HashMap<CtKeyV4, Flow> = HashMap::new();
    read(ct, |key, value| {
        entries += 1;
        if now_s.saturating_sub(value.last_seen_s) <= idle_s {
            return;
        }
        let flow = flows.entry(flows::original_key(key, value)).or_default();
        if key.direction == DIR_ORIGINAL {
            flow.original = Some(*value);
        } else {
            flow.replies.push((*key, *value));
        }
    })?;
    Ok((entries, flows))
}

/// What the sweep decided.
#[derive(Default)]
struct Verdict {
    delete: Vec<CtKeyV4>,
    report: SweepReport,
}

impl Verdict {
    fn remove(&mut self, state: State, keys: impl IntoIterator<Item = CtKeyV4>) {
        let before = self.delete.len();
        self.delete.extend(keys);
        *self.report.removed.entry(state).or_default() += self.delete.len() - before;
    }
}

/// The expiry rules and where to look a partner up.
pub struct Rules<'a> {
    pub timeouts: &'a Timeouts,
    /// Backend id → backend, for an original entry's reply key.
    pub backend: &'a dyn Fn(u32) -> Option<BackendV4>,
    /// The conntrack clock's now (`clock::now_s`).
    pub now_s: u32,
}

/// Decides one flow whose idle entries are `flow`.
fn decide(ct: &ConntrackMap, rules: &Rules, original_key: CtKeyV4, flow: Flow, verdict: &mut Verdict) {
    let proto = original_key.proto;
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
        && let Some(backend) = (rules.backend)(original.backend_id)
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
pub fn sweep(ct: &mut ConntrackMap, rules: &Rules) -> anyhow::Result<SweepReport> {
    let started = Instant::now();
    let (entries, flows) = candidates(ct, rules.now_s, rules.timeouts.shortest())?;
    let mut verdict = Verdict::default();
    for (original_key, flow) in flows {
        decide(ct, rules, original_key, flow, &mut verdict);
    }
    delete(ct, &verdict.delete)?;
    Ok(SweepReport { entries, took: started.elapsed(), ..verdict.report })
}

/// Removes the UDP flows `listed` says are stale (see `stale_udp`);
/// returns how many entries went.
pub fn purge_udp(ct: &mut ConntrackMap, listed: &Listed) -> anyhow::Result<usize> {
    let mut stale = Vec::new();
    read(ct, |key, value| {
        if listed.is_stale(key, value) {
            stale.push(*key);
        }
    })?;
    delete(ct, &stale)?;
    Ok(stale.len())
}
