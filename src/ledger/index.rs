//! The entry index readers use: every entry's leaf hash and location, and every node of the
//! Merkle tree, without holding them all in memory.
//!
//! The tree is cut at its runs of [`RUN`] leaves (see [`views::RUN_LEVEL`]). Above the runs it
//! lives in memory: a [`MemoryTree`] whose leaves are the runs' roots (~2 × 32 bytes per 32
//! entries, ~20 MB at 10 M entries), rebuilt at open from the roots the views keep (`xr/`).
//! Below, a run's nodes are computed from its 32 leaf hashes, read from the entry index
//! blocks in the views (`x/`) and checked against the run's root before use; recently used runs
//! stay in a small cache. The runs the views may not hold yet (the ones completed since the
//! sync thread last applied the views, `hot`) and the run being filled (`tail`) are always in
//! memory.
//!
//! Reading a run from the views can wait on sled, so readers never do it while holding the
//! ledger's read lock: they look with [`Nodes::recording`], which notes the runs missing, fetch
//! those with the lock released ([`EntryIndex::fetch`]), and look again (`Shared::indexed`).

use super::views::{self, EntryView, RUN, RUN_LEVEL};
use crate::merkle::{Blake3Hasher, Hash, MemoryTree, NodeSource};
use crate::store::{Location, StoreError, ViewStore};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

/// Runs read from the views kept for the next reader (~2.8 KB each).
const CACHED_RUNS: usize = 4096;
/// Complete runs kept in memory after the views hold them, for the receipts and citations of
/// recent entries.
const KEEP_HOT: usize = 16;

/// One run's leaves: all its tree levels and its entries' locations.
pub struct Run {
    tree: MemoryTree<Blake3Hasher>,
    locations: Vec<Location>,
}

impl Run {
    fn new() -> Run {
        Run {
            tree: MemoryTree::new(),
            locations: Vec::with_capacity(RUN as usize),
        }
    }

    fn push(&mut self, hash: Hash, location: Location) {
        self.tree.push(hash);
        self.locations.push(location);
    }

    fn len(&self) -> u64 {
        self.tree.size()
    }
}

/// See the module docs.
pub struct EntryIndex {
    /// Leaves = roots of the complete runs: node `(l, i)` here is node `(l + RUN_LEVEL, i)`
    /// of the ledger's tree.
    upper: MemoryTree<Blake3Hasher>,
    /// Complete runs `[hot_first, hot_first + hot.len())`, in memory whatever the views hold;
    /// the views hold every complete run below `readable`.
    hot: VecDeque<Arc<Run>>,
    hot_first: u64,
    readable: u64,
    /// Run `upper.size()`, not yet complete.
    tail: Run,
    cache: parking_lot::Mutex<lru::LruCache<u64, Arc<Run>>>,
}

impl Default for EntryIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl EntryIndex {
    /// An empty index.
    pub fn new() -> EntryIndex {
        EntryIndex {
            upper: MemoryTree::new(),
            hot: VecDeque::new(),
            hot_first: 0,
            readable: 0,
            tail: Run::new(),
            cache: parking_lot::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(CACHED_RUNS).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }

    /// The index of a ledger whose views hold `runs` complete runs (their roots) followed by
    /// the entries `tail` (fewer than a run).
    pub fn from_views(runs: &[Hash], tail: &[EntryView]) -> EntryIndex {
        let mut ix = EntryIndex::new();
        for root in runs {
            ix.upper.push(*root);
        }
        ix.readable = ix.upper.size();
        ix.hot_first = ix.readable;
        for e in tail {
            ix.tail.push(e.leaf_hash, e.location);
        }
        ix
    }

    /// Number of entries.
    pub fn size(&self) -> u64 {
        self.upper.size() * RUN + self.tail.len()
    }

    /// Appends an entry.
    pub fn push(&mut self, hash: Hash, location: Location) {
        self.tail.push(hash, location);
        if self.tail.len() == RUN {
            let run = std::mem::replace(&mut self.tail, Run::new());
            self.upper.push(run.tree.root());
            self.hot.push_back(Arc::new(run));
        }
    }

    /// The views now hold the entry index of the first `size` entries: runs they hold may
    /// leave memory (into the cache), but for the last few.
    pub fn views_hold(&mut self, size: u64) {
        self.readable = self.readable.max((size / RUN).min(self.upper.size()));
        let cache = self.cache.get_mut();
        while self.hot.len() > KEEP_HOT && self.hot_first < self.readable {
            if let Some(run) = self.hot.pop_front() {
                cache.put(self.hot_first, run);
            }
            self.hot_first += 1;
        }
    }

    /// Root of the whole tree (from memory alone).
    pub fn root(&self) -> Hash {
        let n = Nodes::recording(self);
        crate::merkle::root_at::<Blake3Hasher, _>(&n, self.size())
            .expect("the tree's own root needs only the upper tree and the tail")
    }

    /// A complete run, if it is in memory.
    fn run_in_memory(&self, run: u64) -> Option<Arc<Run>> {
        if run >= self.hot_first {
            return self.hot.get((run - self.hot_first) as usize).cloned();
        }
        self.cache.lock().get(&run).cloned()
    }

    /// Reads complete run `run` from the views and checks it against its root (`expected`,
    /// from [`Nodes::missing`]), then caches it. Never call it holding the ledger's read
    /// lock where a writer may wait (see the module docs): take `expected` under the lock,
    /// fetch without it.
    pub fn fetch(views: &dyn ViewStore, run: u64, expected: Hash) -> Result<Arc<Run>, StoreError> {
        let block = run * RUN / views::BLOCK;
        let key = views::key::entry_block(block);
        let bytes = views.get(&key)?.unwrap_or_default();
        let entries = views::decode_entry_block(&key, &bytes)?;
        let start = (run * RUN % views::BLOCK) as usize;
        let mut r = Run::new();
        for e in entries.iter().skip(start).take(RUN as usize) {
            r.push(e.leaf_hash, e.location);
        }
        if r.len() != RUN || r.tree.root() != expected {
            return Err(StoreError::Views(format!(
                "entry index block {block} does not match the root of run {run} (xr/): the views are damaged; `taizhang reindex` rebuilds them from the log"
            )));
        }
        Ok(Arc::new(r))
    }

    /// Keeps a run [`EntryIndex::fetch`] read.
    pub fn cache(&self, run: u64, r: Arc<Run>) {
        self.cache.lock().put(run, r);
    }
}

/// A reader's look at the index: as a [`NodeSource`] for proofs and roots, and for leaves
/// and locations. A run not in memory is either noted as missing (`recording`) or read from
/// the views on the spot (`fetching`: for threads no writer waits on, and for open).
pub struct Nodes<'a> {
    index: &'a EntryIndex,
    views: Option<&'a dyn ViewStore>,
    missing: RefCell<Vec<(u64, Hash)>>,
    failed: RefCell<Option<StoreError>>,
}

impl<'a> Nodes<'a> {
    /// Notes runs not in memory instead of reading them.
    pub fn recording(index: &'a EntryIndex) -> Nodes<'a> {
        Nodes {
            index,
            views: None,
            missing: RefCell::new(Vec::new()),
            failed: RefCell::new(None),
        }
    }

    /// Reads runs not in memory from `views`.
    pub fn fetching(index: &'a EntryIndex, views: &'a dyn ViewStore) -> Nodes<'a> {
        Nodes {
            views: Some(views),
            ..Nodes::recording(index)
        }
    }

    /// The runs a recording look missed, with their roots.
    pub fn missing(&self) -> Vec<(u64, Hash)> {
        self.missing.take()
    }

    /// What reading a run from the views failed with, if it did.
    pub fn failure(&self) -> Option<StoreError> {
        self.failed.take()
    }

    /// Complete run `run`, or the tail if `run` is the run being filled.
    fn with_run<T>(&self, run: u64, f: impl FnOnce(&Run) -> Option<T>) -> Option<T> {
        let ix = self.index;
        if run == ix.upper.size() {
            return f(&ix.tail);
        }
        let root = ix.upper.leaf(run)?;
        if let Some(r) = ix.run_in_memory(run) {
            return f(&r);
        }
        match self.views {
            None => {
                let mut m = self.missing.borrow_mut();
                if !m.iter().any(|(r, _)| *r == run) {
                    m.push((run, root));
                }
                None
            }
            Some(views) => match EntryIndex::fetch(views, run, root) {
                Ok(r) => {
                    let out = f(&r);
                    ix.cache(run, r);
                    out
                }
                Err(e) => {
                    tracing::error!(error = %e, run, "reading the entry index");
                    *self.failed.borrow_mut() = Some(e);
                    None
                }
            },
        }
    }

    /// Leaf hash of entry `i`, if the ledger has it.
    pub fn leaf(&self, i: u64) -> Option<Hash> {
        self.complete_node(0, i)
    }

    /// Where entry `i` lives in the segments.
    pub fn location(&self, i: u64) -> Option<Location> {
        if i >= self.index.size() {
            return None;
        }
        self.with_run(i / RUN, |r| r.locations.get((i % RUN) as usize).copied())
    }
}

impl NodeSource for Nodes<'_> {
    fn complete_node(&self, level: u32, index: u64) -> Option<Hash> {
        if level >= RUN_LEVEL {
            return self.index.upper.complete_node(level - RUN_LEVEL, index);
        }
        let first_leaf = index.checked_shl(level)?;
        let run = first_leaf / RUN;
        let local = (first_leaf % RUN) >> level;
        self.with_run(run, |r| r.tree.complete_node(level, local))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{consistency_proof, inclusion_proof, root_at};
    use crate::store::{MemoryViews, ViewStore};
    use views::Views;

    fn loc(i: u64) -> Location {
        Location {
            segment: 0,
            offset: i * 100,
            len: 90,
        }
    }

    fn hash(i: u64) -> Hash {
        *blake3::hash(&i.to_be_bytes()).as_bytes()
    }

    /// A view store holding the entry index of `n` entries (as the writer would leave it).
    fn views_with(n: u64) -> MemoryViews {
        let store = MemoryViews::default();
        let mut v = Views::new(&store);
        let entries: Vec<EntryView> = (0..n)
            .map(|i| EntryView {
                location: loc(i),
                leaf_hash: hash(i),
            })
            .collect();
        v.push_entries(0, &entries).unwrap();
        store
            .apply(v.into_batch(&crate::store::Position::START))
            .unwrap();
        store
    }

    /// The index as open would build it from the views.
    fn opened(store: &MemoryViews, n: u64) -> EntryIndex {
        let mut roots = Vec::new();
        for (k, v) in store.scan_prefix(b"xr/").unwrap() {
            roots.extend(views::decode_run_roots(&k, &v).unwrap());
        }
        let start = n / RUN * RUN;
        let tail: Vec<EntryView> = (start..n)
            .map(|i| EntryView {
                location: loc(i),
                leaf_hash: hash(i),
            })
            .collect();
        EntryIndex::from_views(&roots, &tail)
    }

    #[test]
    fn proofs_and_leaves_match_a_full_tree_whether_pushed_or_reopened() {
        for n in [1u64, 31, 32, 33, 255, 256, 257, 1000, 8200] {
            let mut full = MemoryTree::<Blake3Hasher>::new();
            let mut pushed = EntryIndex::new();
            for i in 0..n {
                full.push(hash(i));
                pushed.push(hash(i), loc(i));
            }
            let store = views_with(n);
            pushed.views_hold(n);
            let reopened = opened(&store, n);
            assert_eq!(reopened.size(), n);
            for ix in [&pushed, &reopened] {
                assert_eq!(ix.root(), full.root(), "n={n}");
                let nodes = Nodes::fetching(ix, &store);
                for i in (0..n).step_by(7).chain([n - 1]) {
                    assert_eq!(nodes.leaf(i), Some(hash(i)));
                    assert_eq!(nodes.location(i), Some(loc(i)));
                    for size in [i + 1, n] {
                        assert_eq!(
                            inclusion_proof::<Blake3Hasher, _>(&nodes, i, size).unwrap(),
                            inclusion_proof::<Blake3Hasher, _>(&full, i, size).unwrap(),
                            "n={n} i={i} size={size}"
                        );
                        assert_eq!(
                            root_at::<Blake3Hasher, _>(&nodes, size),
                            root_at::<Blake3Hasher, _>(&full, size)
                        );
                    }
                    if i > 0 {
                        assert_eq!(
                            consistency_proof::<Blake3Hasher, _>(&nodes, i, n).unwrap(),
                            consistency_proof::<Blake3Hasher, _>(&full, i, n).unwrap()
                        );
                    }
                }
                assert_eq!(nodes.leaf(n), None);
                assert_eq!(nodes.location(n), None);
                assert!(nodes.failure().is_none());
            }
        }
    }

    #[test]
    fn a_recording_look_names_the_runs_it_missed_and_finds_them_once_fetched() {
        let n = 40 * RUN + 5;
        let store = views_with(n);
        let ix = opened(&store, n);
        let nodes = Nodes::recording(&ix);
        assert_eq!(nodes.leaf(3), None);
        assert_eq!(nodes.leaf(RUN + 1), None);
        assert_eq!(nodes.leaf(4), None);
        // The tail is in memory.
        assert_eq!(nodes.leaf(n - 1), Some(hash(n - 1)));
        let missing = nodes.missing();
        assert_eq!(
            missing.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            vec![0, 1]
        );
        for (run, root) in missing {
            ix.cache(run, EntryIndex::fetch(&store, run, root).unwrap());
        }
        let again = Nodes::recording(&ix);
        assert_eq!(again.leaf(3), Some(hash(3)));
        assert_eq!(again.location(RUN + 1), Some(loc(RUN + 1)));
        assert!(again.missing().is_empty());
    }

    #[test]
    fn a_damaged_entry_index_block_is_refused_not_served() {
        let n = 3 * RUN;
        let store = views_with(n);
        let ix = opened(&store, n);
        // Change one leaf hash in block 0 (entry 40, run 1).
        let k = views::key::entry_block(0);
        let mut b = store.get(&k).unwrap().unwrap();
        b[40 * EntryView::WIDTH + 20] ^= 1;
        let mut v = Views::new(&store);
        v.put_raw(k, b);
        store
            .apply(v.into_batch(&crate::store::Position::START))
            .unwrap();
        let nodes = Nodes::fetching(&ix, &store);
        assert_eq!(nodes.leaf(40), None);
        let e = nodes.failure().expect("the damage is reported");
        assert!(e.to_string().contains("run 1"), "{e}");
        // Run 0 of the same block is intact and still served.
        assert_eq!(nodes.leaf(3), Some(hash(3)));
        // Nothing damaged went into the cache.
        assert_eq!(Nodes::recording(&ix).leaf(40), None);
    }

    #[test]
    fn hot_runs_stay_in_memory_until_the_views_hold_them() {
        let store = MemoryViews::default();
        let mut ix = EntryIndex::new();
        let n = 100 * RUN;
        for i in 0..n {
            ix.push(hash(i), loc(i));
        }
        // The views hold nothing: every complete run is still answered from memory.
        let nodes = Nodes::fetching(&ix, &store);
        assert_eq!(nodes.leaf(0), Some(hash(0)));
        assert_eq!(nodes.location(n / 2), Some(loc(n / 2)));
        assert_eq!(ix.hot.len(), 100);
        ix.views_hold(n);
        assert_eq!(ix.hot.len(), KEEP_HOT);
        // What left memory went to the cache.
        assert_eq!(Nodes::recording(&ix).leaf(0), Some(hash(0)));
    }
}
