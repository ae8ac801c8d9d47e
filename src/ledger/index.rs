//! The entry index readers use: every entry's leaf hash and location, and every node of the
//! Merkle tree, without holding them all in memory.
//!
//! The tree is cut at its runs of [`RUN`] leaves (see [`views::RUN_LEVEL`]). Above the runs it
//! lives in memory: a [`MemoryTree`] whose leaves are the runs' roots (~2 × 32 bytes per 32
//! entries, ~20 MB at 10 M entries), rebuilt at open from the roots the views keep (`xr/`).
//! Below, a run's nodes are computed from its 32 leaf hashes, read with its locations from its
//! frames in the log (one read: a run's frames are contiguous, and where it starts is kept
//! with its root) and checked against the run's root before use; recently used runs stay in a
//! small cache. The last few complete runs (`hot`, for receipts and citations of recent
//! entries) and the run being filled (`tail`) are always in memory.
//!
//! Readers never read a run while holding the ledger's read lock: they look with
//! [`Nodes::recording`], which notes the runs missing, read those with the lock released
//! ([`EntryIndex::fetch`]), and look again (`Shared::indexed`).

use super::views::{EntryView, RunView, RUN, RUN_LEVEL};
use crate::merkle::{Blake3Hasher, Hash, MemoryTree, NodeSource};
use crate::store::{Location, SegmentReader, StoreError};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

/// Runs read from the log kept for the next reader (~2.8 KB each).
const CACHED_RUNS: usize = 4096;
/// The latest complete runs always kept in memory, for the receipts and citations of recent
/// entries.
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
    /// Where each complete run's first entry is in the segments.
    starts: Vec<Location>,
    /// Complete runs `[hot_first, hot_first + hot.len())`.
    hot: VecDeque<Arc<Run>>,
    hot_first: u64,
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
            starts: Vec::new(),
            hot: VecDeque::new(),
            hot_first: 0,
            tail: Run::new(),
            cache: parking_lot::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(CACHED_RUNS).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }

    /// The index of a ledger whose views hold `runs` complete runs (their roots) followed by
    /// the entries `tail` (fewer than a run).
    pub fn from_views(runs: &[RunView], tail: &[EntryView]) -> EntryIndex {
        let mut ix = EntryIndex::new();
        for r in runs {
            ix.upper.push(r.root);
            ix.starts.push(r.start);
        }
        ix.hot_first = ix.upper.size();
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
            self.starts.push(run.locations[0]);
            self.hot.push_back(Arc::new(run));
            if self.hot.len() > KEEP_HOT {
                if let Some(old) = self.hot.pop_front() {
                    self.cache.get_mut().put(self.hot_first, old);
                }
                self.hot_first += 1;
            }
        }
    }

    /// Root of the whole tree (from memory alone).
    pub fn root(&self) -> Hash {
        let n = Nodes::recording(self);
        crate::merkle::root_at::<Blake3Hasher, _>(&n, self.size())
            .expect("the tree's own root needs only the upper tree and the tail")
    }

    /// Complete run `run`'s root and where its first entry is in the segments, as the index
    /// holds them (in memory).
    pub fn run_root_and_start(&self, run: u64) -> Option<(Hash, Location)> {
        self.want(run).map(|w| (w.root, w.start))
    }

    /// A complete run, if it is in memory.
    fn run_in_memory(&self, run: u64) -> Option<Arc<Run>> {
        if run >= self.hot_first {
            return self.hot.get((run - self.hot_first) as usize).cloned();
        }
        self.cache.lock().get(&run).cloned()
    }

    /// What reading complete run `run` takes: its root, where it starts and (if known) where
    /// the entry after it starts.
    fn want(&self, run: u64) -> Option<Want> {
        let at = usize::try_from(run).ok()?;
        Some(Want {
            run,
            root: self.upper.leaf(run)?,
            start: *self.starts.get(at)?,
            end: match self.starts.get(at + 1) {
                Some(next) => Some(*next),
                None => self.tail.locations.first().copied(),
            },
        })
    }

    /// Reads a complete run's frames from the log and checks them against its root. Never
    /// call it holding the ledger's read lock where a writer may wait (see the module docs):
    /// take the [`Want`] under the lock, read without it, then [`EntryIndex::cache`] it.
    pub fn fetch(reader: &SegmentReader, want: &Want) -> Result<Arc<Run>, StoreError> {
        let (first, run) = (want.run * RUN, want.run);
        let damaged = |what: String| {
            StoreError::DataLoss {
            what: format!(
                "entries {first}..{}, run {run} of the tree: {what}; if the log is sound, `taizhang reindex` rebuilds the views",
                first + RUN
            ),
        }
        };
        let frames = reader
            .read_frames(first, want.start, want.end, RUN as usize)
            .map_err(|e| damaged(format!("reading them where the views (xr/) say: {e}")))?;
        let mut r = Run::new();
        for (location, hash) in frames {
            r.push(hash, location);
        }
        if r.len() != RUN || r.tree.root() != want.root {
            return Err(damaged(
                "their frames in the log do not match the run's root kept in the views (xr/)"
                    .into(),
            ));
        }
        Ok(Arc::new(r))
    }

    /// Keeps a run [`EntryIndex::fetch`] read.
    pub fn cache(&self, run: u64, r: Arc<Run>) {
        self.cache.lock().put(run, r);
    }
}

/// A run to read from the log (see [`EntryIndex::fetch`]).
#[derive(Debug, Clone, Copy)]
pub struct Want {
    pub run: u64,
    root: Hash,
    start: Location,
    end: Option<Location>,
}

/// A reader's look at the index: as a [`NodeSource`] for proofs and roots, and for leaves
/// and locations. A run not in memory is either noted as missing (`recording`) or read from
/// the log on the spot (`fetching`: for threads no writer waits on, and for open).
pub struct Nodes<'a> {
    index: &'a EntryIndex,
    reader: Option<&'a SegmentReader>,
    missing: RefCell<Vec<Want>>,
    failed: RefCell<Option<StoreError>>,
}

impl<'a> Nodes<'a> {
    /// Notes runs not in memory instead of reading them.
    pub fn recording(index: &'a EntryIndex) -> Nodes<'a> {
        Nodes {
            index,
            reader: None,
            missing: RefCell::new(Vec::new()),
            failed: RefCell::new(None),
        }
    }

    /// Reads runs not in memory from the log.
    pub fn fetching(index: &'a EntryIndex, reader: &'a SegmentReader) -> Nodes<'a> {
        Nodes {
            reader: Some(reader),
            ..Nodes::recording(index)
        }
    }

    /// The runs a recording look missed.
    pub fn missing(&self) -> Vec<Want> {
        self.missing.take()
    }

    /// What reading a run from the log failed with, if it did.
    pub fn failure(&self) -> Option<StoreError> {
        self.failed.take()
    }

    /// Complete run `run`, or the tail if `run` is the run being filled.
    fn with_run<T>(&self, run: u64, f: impl FnOnce(&Run) -> Option<T>) -> Option<T> {
        let ix = self.index;
        if run == ix.upper.size() {
            return f(&ix.tail);
        }
        if let Some(r) = ix.run_in_memory(run) {
            return f(&r);
        }
        let want = ix.want(run)?;
        match self.reader {
            None => {
                let mut m = self.missing.borrow_mut();
                if !m.iter().any(|w| w.run == run) {
                    m.push(want);
                }
                None
            }
            Some(reader) => match EntryIndex::fetch(reader, &want) {
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
    use crate::ledger::views::{self, Views};
    use crate::merkle::{consistency_proof, inclusion_proof, root_at};
    use crate::store::{MemoryViews, Position, SegmentLog, ViewStore};

    fn hash(i: u64) -> Hash {
        *blake3::hash(&i.to_be_bytes()).as_bytes()
    }

    /// A log of `n` entries (leaf bytes of varying length, stored hash `hash(i)`) in segments
    /// of at most `segment_bytes`, and a view store holding its entry index as the writer
    /// leaves it.
    struct Fixture {
        _dir: tempfile::TempDir,
        reader: SegmentReader,
        store: MemoryViews,
        locations: Vec<Location>,
    }

    fn fixture(n: u64, segment_bytes: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) =
            SegmentLog::open(dir.path(), segment_bytes, Position::START, |_| Ok(())).unwrap();
        let mut locations = Vec::new();
        for i in 0..n {
            let bytes = vec![i as u8; 40 + (i % 7) as usize * 13];
            locations.extend(log.append(&[(&bytes, hash(i))]).unwrap());
        }
        let store = MemoryViews::default();
        let mut v = Views::new(&store);
        let entries: Vec<EntryView> = (0..n)
            .map(|i| EntryView {
                location: locations[i as usize],
                leaf_hash: hash(i),
            })
            .collect();
        v.push_entries(0, &entries).unwrap();
        store.apply(v.into_batch(&Position::START)).unwrap();
        Fixture {
            reader: log.reader(),
            _dir: dir,
            store,
            locations,
        }
    }

    /// The index as open builds it from the views.
    fn opened(f: &Fixture, n: u64) -> EntryIndex {
        let mut runs = Vec::new();
        for (k, v) in f.store.scan_prefix(b"xr/").unwrap() {
            runs.extend(views::decode_run_roots(&k, &v).unwrap());
        }
        // The run tail holds the latest run's entries, complete or not.
        let held = views::decode_run_tail(
            b"xt/",
            &f.store.get(&views::key::run_tail()).unwrap().unwrap(),
        )
        .unwrap();
        let want: Vec<EntryView> = ((n - 1) / RUN * RUN..n)
            .map(|i| EntryView {
                location: f.locations[i as usize],
                leaf_hash: hash(i),
            })
            .collect();
        assert_eq!(held, want, "the run tail of {n} entries");
        let tail = if n.is_multiple_of(RUN) {
            &[][..]
        } else {
            &held[..]
        };
        EntryIndex::from_views(&runs, tail)
    }

    #[test]
    fn proofs_and_leaves_match_a_full_tree_whether_pushed_or_reopened() {
        // Large segments, and segments so small that runs cross them.
        for segment_bytes in [1 << 30, 700] {
            for n in [1u64, 31, 32, 33, 255, 256, 257, 1000, 2100] {
                let f = fixture(n, segment_bytes);
                let mut full = MemoryTree::<Blake3Hasher>::new();
                let mut pushed = EntryIndex::new();
                for i in 0..n {
                    full.push(hash(i));
                    pushed.push(hash(i), f.locations[i as usize]);
                }
                let reopened = opened(&f, n);
                assert_eq!(reopened.size(), n);
                for ix in [&pushed, &reopened] {
                    assert_eq!(ix.root(), full.root(), "n={n}");
                    let nodes = Nodes::fetching(ix, &f.reader);
                    for i in (0..n).step_by(7).chain([n - 1]) {
                        assert_eq!(nodes.leaf(i), Some(hash(i)));
                        assert_eq!(nodes.location(i), Some(f.locations[i as usize]));
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
    }

    #[test]
    fn a_recording_look_names_the_runs_it_missed_and_finds_them_once_fetched() {
        let n = 40 * RUN + 5;
        let f = fixture(n, 1 << 30);
        let ix = opened(&f, n);
        let nodes = Nodes::recording(&ix);
        assert_eq!(nodes.leaf(3), None);
        assert_eq!(nodes.leaf(RUN + 1), None);
        assert_eq!(nodes.leaf(4), None);
        // The tail is in memory.
        assert_eq!(nodes.leaf(n - 1), Some(hash(n - 1)));
        let missing = nodes.missing();
        assert_eq!(
            missing.iter().map(|w| w.run).collect::<Vec<_>>(),
            vec![0, 1]
        );
        for want in missing {
            ix.cache(want.run, EntryIndex::fetch(&f.reader, &want).unwrap());
        }
        let again = Nodes::recording(&ix);
        assert_eq!(again.leaf(3), Some(hash(3)));
        assert_eq!(again.location(RUN + 1), Some(f.locations[RUN as usize + 1]));
        assert!(again.missing().is_empty());
    }

    #[test]
    fn a_run_that_does_not_match_its_root_is_refused_not_served() {
        let n = 3 * RUN;
        let f = fixture(n, 1 << 30);
        // The views claim another root for run 1.
        let mut runs = Vec::new();
        for (k, v) in f.store.scan_prefix(b"xr/").unwrap() {
            runs.extend(views::decode_run_roots(&k, &v).unwrap());
        }
        runs[1].root[0] ^= 1;
        let ix = EntryIndex::from_views(&runs, &[]);
        let nodes = Nodes::fetching(&ix, &f.reader);
        assert_eq!(nodes.leaf(40), None);
        let e = nodes.failure().expect("the mismatch is reported");
        assert!(
            e.to_string().contains("run 1") && e.to_string().contains("reindex"),
            "{e}"
        );
        // Runs 0 and 2 still match and are served.
        assert_eq!(nodes.leaf(3), Some(hash(3)));
        assert_eq!(nodes.leaf(70), Some(hash(70)));
        // Nothing that failed went into the cache.
        assert_eq!(Nodes::recording(&ix).leaf(40), None);
    }

    #[test]
    fn the_latest_runs_stay_in_memory_and_older_ones_go_to_the_cache() {
        let mut ix = EntryIndex::new();
        let n = 100 * RUN;
        let loc = |i: u64| Location {
            segment: 0,
            offset: i * 100,
            len: 90,
        };
        for i in 0..n {
            ix.push(hash(i), loc(i));
        }
        assert_eq!(ix.hot.len(), KEEP_HOT);
        // Nothing was ever read from a log: every run is answered from memory.
        let nodes = Nodes::recording(&ix);
        assert_eq!(nodes.leaf(0), Some(hash(0)));
        assert_eq!(nodes.location(n / 2), Some(loc(n / 2)));
        assert_eq!(nodes.leaf(n - 1), Some(hash(n - 1)));
        assert!(nodes.missing().is_empty());
    }
}
