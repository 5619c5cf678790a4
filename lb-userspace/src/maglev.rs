//! Maglev lookup tables (pure): which backend each of a frontend's
//! `lb_common::maglev::TABLE_SIZE` positions names, and which positions
//! changed from one table to the next.
//!
//! Each backend's preference list (its permutation of the positions) is
//! derived from two seeded hashes of its identity (address, port,
//! protocol), never from the agent's node-local id: every node builds the
//! same positions for the same endpoints. Backends take turns in identity
//! order, each claiming its next preferred free position (the paper's
//! population loop, equal weights), so the input order does not matter.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Weak},
};

use lb_common::maglev::TABLE_SIZE;

/// A built table: backend ids by position. Held compactly, as an index
/// per position into the table's distinct ids (one byte each for up to
/// 256 backends, else two): 16 KiB for most tables instead of 64 KiB
/// (the kernel stores it in 128 KiB, `lb_common::maglev::TABLE_BYTES`).
/// Shared, not copied, between the desired maps and the mirror of the
/// kernel's.
#[derive(Clone, PartialEq, Eq)]
pub struct Table(Arc<Positions>);

/// Canonical for its content (`ids` sorted and distinct, the narrow form
/// whenever it fits), so equal representations mean equal tables.
#[derive(PartialEq, Eq)]
struct Positions {
    /// Of `ids` and `at`, computed once: sharing looks a table up by it
    /// more than once.
    digest: u64,
    ids: Box<[u32]>,
    at: Indexes,
}

#[derive(PartialEq, Eq)]
enum Indexes {
    Narrow(Box<[u8]>),
    Wide(Box<[u16]>),
}

/// How many positions each backend id holds, not the positions
/// themselves: a write that fails is logged with its table, and 16,381
/// ids would bury the message.
impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut counts = std::collections::BTreeMap::<u32, usize>::new();
        for id in self.iter() {
            *counts.entry(id).or_default() += 1;
        }
        write!(f, "Table({} positions, by backend id: {counts:?})", self.len())
    }
}

impl Table {
    /// The table naming `ids[p]` at position `p` (one read back from the
    /// kernel).
    pub fn new(ids: &[u32]) -> Self {
        let distinct = distinct_sorted(ids.iter().copied());
        // `of` keeps the ids; the ranks are taken against a copy (a few).
        Self::of(distinct.clone(), ids.iter().map(|id| rank(&distinct, *id)))
    }

    /// The table [`build`] makes, without a search per position: the
    /// population loop names backends by index, mapped once to the rank
    /// of their id.
    pub fn build(backends: &[(Endpoint, u32)]) -> Self {
        let (backends, at) = fill(backends);
        Self::from_fill(&backends, &at)
    }

    /// The table of a population loop run over `backends` (as
    /// [`distinct`] leaves them).
    fn from_fill(backends: &[(Endpoint, u32)], at: &[u16]) -> Self {
        let distinct = distinct_sorted(backends.iter().map(|(_, id)| *id));
        let rank_of_index: Vec<usize> = backends.iter().map(|(_, id)| rank(&distinct, *id)).collect();
        Self::of(distinct, at.iter().map(|&index| rank_of_index[usize::from(index)]))
    }

    /// From the sorted distinct ids and each position's rank among them.
    fn of(distinct: Vec<u32>, ranks: impl Iterator<Item = usize>) -> Self {
        let at = if distinct.len() <= 1 << 8 {
            Indexes::Narrow(ranks.map(|rank| rank as u8).collect())
        } else {
            // TABLE_SIZE < 2^16: a table never names more ids than that.
            Indexes::Wide(ranks.map(|rank| rank as u16).collect())
        };
        let digest = digest_of(&distinct, &at);
        Self(Arc::new(Positions { digest, ids: distinct.into(), at }))
    }

    pub fn len(&self) -> usize {
        match &self.0.at {
            Indexes::Narrow(at) => at.len(),
            Indexes::Wide(at) => at.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backend id at `position`.
    pub fn id(&self, position: usize) -> u32 {
        let index = match &self.0.at {
            Indexes::Narrow(at) => usize::from(at[position]),
            Indexes::Wide(at) => usize::from(at[position]),
        };
        self.0.ids[index]
    }

    /// The backend ids by position. The form is matched once, not at
    /// every position: writing a new table walks all of them.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let ids = &self.0.ids;
        let (narrow, wide) = match &self.0.at {
            Indexes::Narrow(at) => (Some(at.iter().map(|&index| ids[usize::from(index)])), None),
            Indexes::Wide(at) => (None, Some(at.iter().map(|&index| ids[usize::from(index)]))),
        };
        narrow.into_iter().flatten().chain(wide.into_iter().flatten())
    }

    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    /// Whether some position names a backend (0 is never a backend id).
    pub fn names_a_backend(&self) -> bool {
        self.0.ids.iter().any(|&id| id != 0)
    }

    /// A digest of the table: equal tables have equal digests (a match
    /// is confirmed by comparing the tables).
    pub fn digest(&self) -> u64 {
        self.0.digest
    }

    /// Whether both are the same table in memory, not only equal.
    pub fn shares_memory_with(&self, other: &Table) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A multiply-rotate fold over 8-byte words of the ids and positions,
/// not SipHash: every new table is digested, and SipHash over its 16 KiB
/// cost more than writing it to the kernel.
fn digest_of(ids: &[u32], at: &Indexes) -> u64 {
    let words = ids.iter().map(|&id| u64::from(id)).chain(std::iter::once(u64::MAX));
    match at {
        Indexes::Narrow(at) => fold_words(words.chain(words_of(at, |&b| u64::from(b), 8))),
        Indexes::Wide(at) => fold_words(words.chain(words_of(at, |&w| u64::from(w), 4))),
    }
}

/// `values` packed `per_word` to a 64-bit word (each fits in
/// `64 / per_word` bits).
fn words_of<'a, T>(values: &'a [T], widen: fn(&T) -> u64, per_word: usize) -> impl Iterator<Item = u64> + 'a {
    let bits = 64 / per_word;
    values.chunks(per_word).map(move |chunk| chunk.iter().fold(0u64, |word, value| (word << bits) | widen(value)))
}

/// FxHash's step (rotate, xor, multiply) over words, then a finaliser.
fn fold_words(words: impl Iterator<Item = u64>) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let h = words.fold(0u64, |h, word| (h.rotate_left(5) ^ word).wrapping_mul(K));
    (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (h >> 32)
}

/// A table's distinct ids, sorted: what positions index into.
fn distinct_sorted(ids: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut distinct: Vec<u32> = ids.collect();
    distinct.sort_unstable();
    distinct.dedup();
    distinct
}

/// Where `id` is among `distinct` (which holds it).
fn rank(distinct: &[u32], id: u32) -> usize {
    distinct.binary_search(&id).expect("every id is among the distinct ones")
}

/// Tables already built, by the backends they were built from. Frontends
/// over the same backends (a NodePort Service port on each node address,
/// its external and load balancer IPs) get one table, built once and
/// shared, instead of 16 KiB or more and a build each. Tables are held weakly: a
/// table no frontend uses any more is freed.
#[derive(Debug, Default)]
pub struct TableCache {
    built: HashMap<Vec<(Endpoint, u32)>, Weak<Positions>>,
    /// Size at which freed tables' entries are dropped from `built`.
    prune_at: usize,
    /// Population loops run ahead ([`TableCache::prefill`]), by the
    /// distinct endpoints they ran over; each is taken by the first table
    /// built over those endpoints.
    prefilled: HashMap<Vec<Endpoint>, Vec<u16>>,
}

impl TableCache {
    /// The table for `backends` (see [`build`]): a live one built from the
    /// same backends, or a new one.
    pub fn table(&mut self, backends: &[(Endpoint, u32)]) -> Table {
        let mut key = backends.to_vec();
        key.sort_unstable();
        if let Some(positions) = self.built.get(&key).and_then(Weak::upgrade) {
            return Table(positions);
        }
        let backends = distinct(backends);
        let endpoints: Vec<Endpoint> = backends.iter().map(|(endpoint, _)| *endpoint).collect();
        let at = self.prefilled.remove(&endpoints).unwrap_or_else(|| populate(&endpoints));
        let table = Table::from_fill(&backends, &at);
        if self.built.len() >= self.prune_at {
            self.built.retain(|_, table| table.strong_count() > 0);
            self.prune_at = 2 * self.built.len().max(64);
        }
        self.built.insert(key, Arc::downgrade(&table.0));
        table
    }

    /// Runs the population loops for tables about to be built over these
    /// endpoint sets (a frontend's slot backends each), on every core at
    /// once; [`TableCache::table`] then only names the backends. Sets
    /// already run and empty sets are skipped.
    pub fn prefill(&mut self, sets: impl IntoIterator<Item = Vec<Endpoint>>) {
        let mut pending: Vec<Vec<Endpoint>> = sets
            .into_iter()
            .map(distinct_endpoints)
            .filter(|set| !set.is_empty() && !self.prefilled.contains_key(set))
            .collect();
        pending.sort_unstable();
        pending.dedup();
        let filled = populate_all(&pending);
        self.prefilled.extend(pending.into_iter().zip(filled));
    }

    /// How many prefilled loops wait to be taken.
    #[cfg(test)]
    pub fn prefilled(&self) -> usize {
        self.prefilled.len()
    }

    /// Drops the prefilled loops no table took (a frontend that got no
    /// table after all): 32 KiB each.
    pub fn drop_prefilled(&mut self) {
        self.prefilled = HashMap::new();
    }
}

/// What a backend is known as on every node: address, port and protocol.
/// The bytes hashed are exactly these fields, the address in network byte
/// order (4 bytes or 16: a frontend's backends are all of its family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl Endpoint {
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = match self.address {
            IpAddr::V4(address) => address.octets().to_vec(),
            IpAddr::V6(address) => address.octets().to_vec(),
        };
        bytes.extend(self.port.to_be_bytes());
        bytes.push(self.proto);
        bytes
    }
}

/// Seeds of the two hashes (arbitrary, fixed: changing them reshuffles
/// every table on every node at once).
const OFFSET_SEED: u64 = 0x6d61_676c_6576_0001;
const SKIP_SEED: u64 = 0x6d61_676c_6576_0002;

/// FNV-1a over the bytes, started from the seed, then splitmix64's
/// finaliser so that endpoints differing in one byte get unrelated
/// permutations. Stable across builds and architectures.
fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A backend's preference list: position `j` of it is
/// `(offset + j × skip) mod TABLE_SIZE`. With a prime table size and
/// `skip` in 1..TABLE_SIZE, these visit every position exactly once.
#[derive(Clone, Copy, Debug)]
struct Permutation {
    offset: u32,
    skip: u32,
}

impl Permutation {
    fn of(endpoint: &Endpoint) -> Self {
        let bytes = endpoint.bytes();
        let m = u64::from(TABLE_SIZE);
        Self {
            offset: (hash64(OFFSET_SEED, &bytes) % m) as u32,
            skip: (hash64(SKIP_SEED, &bytes) % (m - 1) + 1) as u32,
        }
    }

    #[cfg(test)]
    fn position(&self, j: u32) -> u32 {
        ((u64::from(self.offset) + u64::from(j) * u64::from(self.skip)) % u64::from(TABLE_SIZE)) as u32
    }
}

/// The table for a frontend's backends, each given with the id the
/// datapath knows it by: `TABLE_SIZE` backend ids, position by position.
/// Empty without backends. Duplicated endpoints count once.
pub fn build(backends: &[(Endpoint, u32)]) -> Vec<u32> {
    let (backends, at) = fill(backends);
    at.iter().map(|&index| backends[usize::from(index)].1).collect()
}

/// The population loop: the backends (sorted, duplicates dropped) and,
/// by position, the index of the backend there.
fn fill(backends: &[(Endpoint, u32)]) -> (Vec<(Endpoint, u32)>, Vec<u16>) {
    let backends = distinct(backends);
    let at = populate(&backends.iter().map(|(endpoint, _)| *endpoint).collect::<Vec<_>>());
    (backends, at)
}

/// The backends a table is built over: sorted, one per endpoint, no more
/// than it has positions (a backend past the table's size would never
/// get one).
fn distinct(backends: &[(Endpoint, u32)]) -> Vec<(Endpoint, u32)> {
    let mut backends = backends.to_vec();
    backends.sort_unstable();
    backends.dedup_by_key(|(endpoint, _)| *endpoint);
    backends.truncate(TABLE_SIZE as usize);
    backends
}

/// The endpoints of [`distinct`] backends: the form a prefilled loop is
/// keyed by.
fn distinct_endpoints(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    endpoints.sort_unstable();
    endpoints.dedup();
    endpoints.truncate(TABLE_SIZE as usize);
    endpoints
}

/// The population loop over distinct, sorted endpoints: by position,
/// the index of the endpoint there. Empty without endpoints.
fn populate(endpoints: &[Endpoint]) -> Vec<u16> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    // Each backend's cursor walks its permutation: the next position it
    // prefers, and the step to the one after (additions, no division).
    let mut cursors: Vec<(u32, u32)> = endpoints
        .iter()
        .map(|endpoint| {
            let permutation = Permutation::of(endpoint);
            (permutation.offset, permutation.skip)
        })
        .collect();
    const FREE: u16 = u16::MAX;
    let mut at: Vec<u16> = vec![FREE; TABLE_SIZE as usize];
    let mut filled = 0;
    'fill: loop {
        for (index, (next, skip)) in (0u16..).zip(&mut cursors) {
            let position = loop {
                let candidate = *next as usize;
                *next += *skip;
                if *next >= TABLE_SIZE {
                    *next -= TABLE_SIZE;
                }
                if at[candidate] == FREE {
                    break candidate;
                }
            };
            at[position] = index;
            filled += 1;
            if filled == TABLE_SIZE {
                break 'fill;
            }
        }
    }
    at
}

/// [`populate`] over each set, the sets shared out among the machine's
/// cores: a loop takes about a third of a millisecond, and a node
/// programming a thousand NodePort Services with endpoints of their own
/// would otherwise spend a third of a second on one core.
fn populate_all(sets: &[Vec<Endpoint>]) -> Vec<Vec<u16>> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(sets.len());
    if threads <= 1 {
        return sets.iter().map(|set| populate(set)).collect();
    }
    let per_thread = sets.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = sets
            .chunks(per_thread)
            .map(|part| scope.spawn(move || part.iter().map(|set| populate(set)).collect::<Vec<_>>()))
            .collect();
        parts.into_iter().flat_map(|part| part.join().expect("the population loop does not panic")).collect()
    })
}

/// The positions whose backend differs between `old` and `new` (an empty
/// `old`: all of them), with `new`'s backend: what a writer must write.
pub fn delta(old: &[u32], new: &[u32]) -> Vec<(u32, u32)> {
    (0u32..)
        .zip(new)
        .filter(|&(position, id)| old.get(position as usize) != Some(id))
        .map(|(position, &id)| (position, id))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        net::Ipv4Addr,
    };

    use super::*;

    const M: usize = TABLE_SIZE as usize;

    #[test]
    fn a_table_holds_its_ids_by_position_in_a_byte_each_up_to_256_backends() {
        for n in [1u32, 4, 256, 257, 1000] {
            let built = build(&backends(1..=n));
            let table = Table::new(&built);
            assert_eq!(table.to_vec(), built, "{n} backends: the same ids at every position");
            assert_eq!(matches!(table.0.at, Indexes::Narrow(_)), n <= 256, "{n} backends");
        }
    }

    #[test]
    fn equal_tables_compare_and_digest_equal_however_made() {
        let built = build(&backends(1..=5));
        let (a, b) = (Table::new(&built), TableCache::default().table(&backends((1..=5).rev())));
        assert!(a == b && a.digest() == b.digest() && !a.shares_memory_with(&b));
        let mut changed = built.clone();
        changed[7] = if changed[7] == 1 { 2 } else { 1 };
        let c = Table::new(&changed);
        assert!(a != c && a.digest() != c.digest(), "one position differs");
    }

    #[test]
    fn a_prefilled_table_is_the_one_built_without_it() {
        // Ids in and against endpoint order, a set past 256 backends,
        // one with duplicates and one given twice.
        let sets = [
            backends(1..=3),
            (5..=40).map(|i| (endpoint(i), 1000 - i)).collect(),
            backends(1..=300),
            [backends(7..=9), backends(8..=10)].concat(),
            backends((1..=3).rev()),
        ];
        let mut cache = TableCache::default();
        cache.prefill(sets.iter().map(|set| set.iter().map(|(endpoint, _)| *endpoint).collect()));
        assert_eq!(cache.prefilled.len(), 4, "one loop per distinct set of endpoints");
        for set in &sets {
            assert_eq!(cache.table(set).to_vec(), build(set));
        }
        assert!(cache.prefilled.is_empty(), "every loop taken by its table");
    }

    #[test]
    fn loops_shared_out_among_cores_match_loops_run_in_turn() {
        let sets: Vec<Vec<Endpoint>> = (1..=9u32).map(|n| (n..n * 3).map(endpoint).collect()).collect();
        let in_turn: Vec<Vec<u16>> = sets.iter().map(|set| populate(set)).collect();
        assert_eq!(populate_all(&sets), in_turn);
    }

    #[test]
    fn frontends_over_the_same_backends_share_one_table() {
        let backends: Vec<(Endpoint, u32)> = (1..=4).map(|i| (endpoint(i), i)).collect();
        let reversed: Vec<(Endpoint, u32)> = backends.iter().rev().copied().collect();
        let mut cache = TableCache::default();
        let first = cache.table(&backends);
        assert_eq!(first.to_vec(), build(&backends), "the same table as a fresh build");
        assert!(cache.table(&reversed).shares_memory_with(&first), "in any order, the same backends share");
        let other = cache.table(&backends[..3]);
        assert!(!other.shares_memory_with(&first), "other backends, another table");
        assert_eq!(other.to_vec(), build(&backends[..3]));
        drop(first);
        let again = cache.table(&backends);
        assert_eq!(again.to_vec(), build(&backends), "a freed table is built again");
    }

    fn endpoint(i: u32) -> Endpoint {
        let [_, a, b, c] = i.to_be_bytes();
        Endpoint { address: Ipv4Addr::new(10, a, b, c).into(), port: 8080 + (i % 7) as u16, proto: 6 }
    }

    /// Backends 1..=n, id = index.
    fn backends(ids: impl IntoIterator<Item = u32>) -> Vec<(Endpoint, u32)> {
        ids.into_iter().map(|i| (endpoint(i), i)).collect()
    }

    fn shares(table: &[u32]) -> BTreeMap<u32, usize> {
        let mut out = BTreeMap::new();
        for id in table {
            *out.entry(*id).or_default() += 1;
        }
        out
    }

    fn changed(old: &[u32], new: &[u32]) -> usize {
        delta(old, new).len()
    }

    #[test]
    fn table_size_is_prime() {
        let m = TABLE_SIZE;
        assert!((2..).take_while(|d| d * d <= m).all(|d| !m.is_multiple_of(d)), "{m} is not prime");
    }

    #[test]
    fn every_permutation_visits_every_position_once() {
        for i in [1, 2, 3, 77, 1000, 65_000] {
            let permutation = Permutation::of(&endpoint(i));
            let visited: BTreeSet<u32> = (0..TABLE_SIZE).map(|j| permutation.position(j)).collect();
            assert_eq!(visited.len(), M, "endpoint {i}: {permutation:?}");
        }
    }

    #[test]
    fn permutations_depend_on_address_and_port() {
        let a = Endpoint { address: Ipv4Addr::new(10, 0, 0, 1).into(), port: 80, proto: 6 };
        let moved = [
            Endpoint { port: 81, ..a },
            Endpoint { address: Ipv4Addr::new(10, 0, 0, 2).into(), ..a },
            Endpoint { proto: 17, ..a },
        ];
        for other in moved {
            let (p, q) = (Permutation::of(&a), Permutation::of(&other));
            assert!((p.offset, p.skip) != (q.offset, q.skip), "{a:?} and {other:?}");
        }
    }

    #[test]
    fn each_backend_gets_close_to_an_equal_share() {
        for n in [1u32, 2, 3, 10, 100] {
            let table = build(&backends(1..=n));
            assert_eq!(table.len(), M);
            let shares = shares(&table);
            assert_eq!(shares.len(), n as usize, "every backend has positions");
            let fair = M as f64 / f64::from(n);
            let worst = shares.values().map(|&s| (s as f64 - fair).abs() / fair).fold(0.0, f64::max);
            println!("N={n}: worst share off by {:.2}% of 1/N", worst * 100.0);
            assert!(worst < 0.03, "N={n}: a share is {:.1}% off 1/N", worst * 100.0);
        }
    }

    #[test]
    fn the_same_endpoints_in_any_order_give_the_same_table() {
        let forward = backends(1..=10);
        let mut backward = forward.clone();
        backward.reverse();
        assert_eq!(build(&forward), build(&backward));
    }

    #[test]
    fn positions_follow_endpoints_not_ids() {
        // Another node knows the same endpoints under other ids.
        let here = build(&backends(1..=5));
        let there = build(&(1..=5).map(|i| (endpoint(i), i + 100)).collect::<Vec<_>>());
        assert!(here.iter().zip(&there).all(|(a, b)| a + 100 == *b));
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for n in [3u32, 10, 100] {
            let before = build(&backends(1..=n));
            let after = build(&backends((1..=n).filter(|&i| i != 2)));
            let moved = changed(&before, &after) as f64 / M as f64;
            let ideal = 1.0 / f64::from(n);
            println!("remove 1 of {n}: {:.2}% of positions changed (ideal {:.2}%)", moved * 100.0, ideal * 100.0);
            // The removed backend's own positions must move; others move
            // only where the population order shifts, which Maglev allows
            // a little of (more the fewer positions each backend has:
            // ~160 at N = 100). Modulo hashing would move ~(N-1)/N.
            let own = before.iter().filter(|&&id| id == 2).count();
            assert!(changed(&before, &after) >= own);
            assert!(moved < ideal + 0.02, "remove 1 of {n}: {:.2}% changed", moved * 100.0);
        }
    }

    #[test]
    fn adding_one_moves_about_one_over_n_plus_one() {
        for n in [3u32, 10, 100] {
            let before = build(&backends(1..=n));
            let after = build(&backends(1..=n + 1));
            let moved = changed(&before, &after) as f64 / M as f64;
            let ideal = 1.0 / f64::from(n + 1);
            println!("add 1 to {n}: {:.2}% of positions changed (ideal {:.2}%)", moved * 100.0, ideal * 100.0);
            let own = after.iter().filter(|&&id| id == n + 1).count();
            assert!(changed(&before, &after) >= own, "the new backend's positions changed");
            assert!(moved < ideal + 0.02, "add 1 to {n}: {:.2}% changed", moved * 100.0);
        }
    }

    #[test]
    fn the_delta_names_exactly_the_changed_positions() {
        let before = build(&backends(1..=10));
        let after = build(&backends((1..=10).filter(|&i| i != 4)));
        let delta = delta(&before, &after);
        println!("remove 1 of 10: delta of {} writes out of {M}", delta.len());
        let mut replayed = before.clone();
        for &(position, id) in &delta {
            replayed[position as usize] = id;
        }
        assert_eq!(replayed, after);
        assert!(delta.iter().all(|&(p, _)| before[p as usize] != after[p as usize]));
        assert_eq!(super::delta(&[], &after).len(), M, "a new table is written whole");
        assert!(super::delta(&after, &after).is_empty());
    }

    #[test]
    fn no_backends_no_table() {
        assert!(build(&[]).is_empty());
    }
}
