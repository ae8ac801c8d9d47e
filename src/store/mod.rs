//! Storage: the append-only segment log (the truth) and the view store (a cache of the log).
//!
//! The view store is a narrow key-value trait so another engine can take sled's place; sled is
//! the production implementation and an in-memory map serves tests. Everything in it is derived
//! from the log and is written after the log is durable, together with the log position it
//! reflects: each batch the store applies is atomic and carries that position.

pub mod segment;
pub mod witness;
mod writeback;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use segment::{Location, Position, Recovery, SegmentLog, SegmentReader, SyncHandle};
pub use writeback::{FlushPolicy, WriteBack};

/// Storage errors: corruption and I/O kept apart from each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("data loss: {what}")]
    DataLoss { what: String },
    #[error("{op} {path}: {reason}")]
    Io {
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error("view store: {0}")]
    Views(String),
}

/// A batch of view changes: key → new value (`None` deletes).
pub type ViewBatch = Vec<(Vec<u8>, Option<Vec<u8>>)>;
/// Key-value pairs read from a view store.
pub type ViewPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The derived-state store.
pub trait ViewStore: Send {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// All keys with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError>;
    /// See [`ViewRead::range`]. The default scans the common prefix; engines override it.
    fn range(&self, r: &Range<'_>) -> Result<ViewPairs, StoreError> {
        Ok(r.select(self.scan_prefix(r.common_prefix())?))
    }
    /// Applies a batch atomically.
    fn apply(&self, batch: ViewBatch) -> Result<(), StoreError>;
    /// `apply` of borrowed pairs (the write-back layer's chunks, which readers still hold),
    /// sparing a copy where the engine copies anyway.
    fn apply_pairs(
        &self,
        pairs: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>,
    ) -> Result<(), StoreError> {
        self.apply(
            pairs
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                .collect(),
        )
    }
    /// Removes everything.
    fn clear(&self) -> Result<(), StoreError>;
    /// Asks the engine to write its buffers out (not a durability promise; see DESIGN §7).
    fn flush(&self) -> Result<(), StoreError>;
    /// A gate that keeps this store's background writes off the engine while held, for a
    /// reader on a critical path (the ledger's writer) whose reads must not wait behind them.
    fn read_gate(&self) -> Option<Arc<ReadGate>> {
        None
    }
    /// A consistent view for a sequence of reads (an audit query reading a permit and then its
    /// draw-downs must not see a group land in between). The default reads the store directly,
    /// which is consistent for stores nothing writes to concurrently.
    fn snapshot(&self) -> Box<dyn ViewRead + '_> {
        Box::new(Direct(self))
    }
}

/// Reads of a view store.
pub trait ViewRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// All keys with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError>;
    /// At most `r.limit` keys in `[r.start, r.end)`, in key order or (with `r.reverse`) from the
    /// end: a journal read is a seek, not a scan of everything under a prefix.
    fn range(&self, r: &Range<'_>) -> Result<ViewPairs, StoreError> {
        Ok(r.select(self.scan_prefix(r.common_prefix())?))
    }
}

/// A bounded key range read: `[start, end)`, at most `limit` pairs, forward or from the end.
#[derive(Debug, Clone, Copy)]
pub struct Range<'a> {
    pub start: &'a [u8],
    pub end: &'a [u8],
    pub limit: usize,
    pub reverse: bool,
}

impl<'a> Range<'a> {
    pub fn forward(start: &'a [u8], end: &'a [u8], limit: usize) -> Self {
        Range {
            start,
            end,
            limit,
            reverse: false,
        }
    }
    pub fn backward(start: &'a [u8], end: &'a [u8], limit: usize) -> Self {
        Range {
            start,
            end,
            limit,
            reverse: true,
        }
    }
    /// Whether `k` lies in `[start, end)`.
    pub fn contains(&self, k: &[u8]) -> bool {
        k >= self.start && k < self.end
    }
    /// The longest prefix `start` and `end` share (every key of the range has it).
    pub fn common_prefix(&self) -> &'a [u8] {
        let n = self
            .start
            .iter()
            .zip(self.end)
            .take_while(|(a, b)| a == b)
            .count();
        &self.start[..n]
    }
    /// The pairs of `sorted` (in key order) that this range selects.
    pub fn select(&self, sorted: ViewPairs) -> ViewPairs {
        let inside = sorted.into_iter().filter(|(k, _)| self.contains(k));
        if self.reverse {
            let mut v: ViewPairs = inside.collect();
            v.reverse();
            v.truncate(self.limit);
            v
        } else {
            inside.take(self.limit).collect()
        }
    }
}

/// The least key greater than every key that starts with `prefix` (`None`: no such key, the
/// prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

struct Direct<'a, S: ViewStore + ?Sized>(&'a S);

impl<S: ViewStore + ?Sized> ViewRead for Direct<'_, S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError> {
        self.0.scan_prefix(prefix)
    }
    fn range(&self, r: &Range<'_>) -> Result<ViewPairs, StoreError> {
        self.0.range(r)
    }
}

/// A view store being rebuilt from nothing (a replay from the log's first entry): it remembers,
/// in a Bloom filter, every key written through it, and answers a read of any other key as
/// absent without asking the store underneath. A replay reads many keys that do not exist yet
/// (every new lot is checked for a namesake); in sled such a miss costs a tree walk, the
/// collection of garbage its other writers left, and a wait behind a batch being applied. The
/// filter has no false negatives, so every answer is the one the store would give, provided
/// the store was empty when the wrapper was made and nothing writes to it around the wrapper.
pub struct Rebuilding<'a> {
    inner: &'a (dyn ViewStore + Sync),
    written: fastbloom::AtomicBloomFilter,
}

impl<'a> Rebuilding<'a> {
    /// Wraps `inner`, which must be empty, sized for about `keys` keys (more only raise the
    /// filter's rate of false positives, which cost a read of `inner`, never a wrong answer).
    pub fn new(inner: &'a (dyn ViewStore + Sync), keys: usize) -> Self {
        Rebuilding {
            inner,
            written: fastbloom::AtomicBloomFilter::with_false_pos(0.01)
                .expected_items(keys.max(1024)),
        }
    }
}

impl ViewStore for Rebuilding<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.written.contains(key) {
            return Ok(None);
        }
        self.inner.get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError> {
        self.inner.scan_prefix(prefix)
    }
    fn range(&self, r: &Range<'_>) -> Result<ViewPairs, StoreError> {
        self.inner.range(r)
    }
    fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
        for (k, _) in &batch {
            self.written.insert(k.as_slice());
        }
        self.inner.apply(batch)
    }
    fn apply_pairs(
        &self,
        pairs: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>,
    ) -> Result<(), StoreError> {
        self.inner.apply_pairs(&mut pairs.inspect(|(k, _)| {
            self.written.insert(*k);
        }))
    }
    fn clear(&self) -> Result<(), StoreError> {
        // Empty again: nothing written stays the truth (a stale bit only costs a read).
        self.inner.clear()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn read_gate(&self) -> Option<Arc<ReadGate>> {
        self.inner.read_gate()
    }
    fn snapshot(&self) -> Box<dyn ViewRead + '_> {
        self.inner.snapshot()
    }
}

/// See [`ViewStore::read_gate`]. Readers hold it with `read()` (letting go with
/// `parking_lot::RwLockReadGuard::unlock_fair`, so a background writer waiting for it gets its
/// turn at once); the background writer holds `write()`.
pub type ReadGate = parking_lot::RwLock<()>;

/// In-memory view store for tests.
#[derive(Default)]
pub struct MemoryViews {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl ViewStore for MemoryViews {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let m = self
            .map
            .lock()
            .map_err(|_| StoreError::Views("poisoned".into()))?;
        Ok(m.get(key).cloned())
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError> {
        let m = self
            .map
            .lock()
            .map_err(|_| StoreError::Views("poisoned".into()))?;
        Ok(m.range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn range(&self, r: &Range<'_>) -> Result<ViewPairs, StoreError> {
        let m = self
            .map
            .lock()
            .map_err(|_| StoreError::Views("poisoned".into()))?;
        if r.start >= r.end {
            return Ok(vec![]);
        }
        let it = m.range(r.start.to_vec()..r.end.to_vec());
        let pair = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if r.reverse {
            it.rev().take(r.limit).map(pair).collect()
        } else {
            it.take(r.limit).map(pair).collect()
        })
    }
    fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
        let mut m = self
            .map
            .lock()
            .map_err(|_| StoreError::Views("poisoned".into()))?;
        for (k, v) in batch {
            match v {
                Some(v) => m.insert(k, v),
                None => m.remove(&k),
            };
        }
        Ok(())
    }
    fn clear(&self) -> Result<(), StoreError> {
        self.map
            .lock()
            .map_err(|_| StoreError::Views("poisoned".into()))?
            .clear();
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// sled-backed view store: one tree, so each batch is atomic.
pub struct SledViews {
    db: sled::Db,
    tree: sled::Tree,
}

fn sled_err(e: sled::Error) -> StoreError {
    StoreError::Views(e.to_string())
}

impl SledViews {
    /// Opens sled in `dir`. A kill during `sled::open` can leave a partial
    /// `snap.*.generating` file after which every open fails (sled #1527/#1533); such files are
    /// removed and the open retried. If sled still refuses, the caller rebuilds it from the log.
    pub fn open(dir: &Path) -> Result<SledViews, StoreError> {
        match Self::open_waiting(dir) {
            Ok(v) => Ok(v),
            Err(first) => {
                let removed = remove_partial_snapshots(dir);
                if removed.is_empty() {
                    return Err(first);
                }
                tracing::warn!(?removed, "removed partial sled snapshot files");
                Self::open_waiting(dir)
            }
        }
    }

    /// sled's own threads may hold its file lock for a moment after a `Db` in this process is
    /// dropped: wait for that (up to 3 s) rather than mistake it for damage.
    fn open_waiting(dir: &Path) -> Result<SledViews, StoreError> {
        let mut tries = 0;
        loop {
            match Self::open_once(dir) {
                Err(e) if is_lock_error(&e) && tries < 60 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn open_once(dir: &Path) -> Result<SledViews, StoreError> {
        prefetch_segment_headers(&dir.join("db"));
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(1000))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(sled_err)?;
        let tree = db.open_tree("views").map_err(sled_err)?;
        Ok(SledViews { db, tree })
    }
}

/// sled 0.34's log is cut into segments of this size (its default, which the ledger keeps),
/// each beginning with a header.
const SLED_SEGMENT_BYTES: u64 = 512 << 10;

/// Asks the kernel to read the first page of every sled segment in `db`, all at once.
///
/// sled's open reads every segment's 20-byte header, one `pread` each: 5,316 of them for the
/// views of a 10 M-entry ledger. From a cold page cache each was a separate random read with the
/// kernel's readahead around it (~100 MB in all), and the open took 0.5–2.2 s, most of a reopen.
/// Told in advance, the kernel queues the reads together. A hint only: if sled's layout differed,
/// the open would be as slow as before, never wrong.
fn prefetch_segment_headers(db: &Path) {
    let Ok(f) = std::fs::File::open(db) else {
        return; // a new store
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let page = std::num::NonZeroU64::new(4096);
    for at in (0..len).step_by(SLED_SEGMENT_BYTES as usize) {
        if rustix::fs::fadvise(&f, at, page, rustix::fs::Advice::WillNeed).is_err() {
            return;
        }
    }
}

/// sled's page cache. Its default (1 GiB, which it overshoots) alone broke the ledger's memory
/// budget at 10 M entries; the pages it drops stay in the kernel's page cache, and the hot
/// views are cached above it (the write-back layer's LRU).
pub const SLED_CACHE_BYTES: u64 = 256 << 20;

/// Whether sled refused because another `Db` holds its lock (not damage).
pub fn is_lock_error(e: &StoreError) -> bool {
    matches!(e, StoreError::Views(m) if m.contains("could not acquire lock"))
}

/// Removes `snap.*.generating` files left by an interrupted sled open.
pub fn remove_partial_snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().to_string();
            if name.starts_with("snap.")
                && name.ends_with(".generating")
                && std::fs::remove_file(ent.path()).is_ok()
            {
                removed.push(ent.path());
            }
        }
    }
    removed
}

/// Helps sled free what a batch of `keys` writes left behind. sled 0.34 frees replaced pages
/// through epoch-based reclamation (crossbeam-epoch), and the deferred frees run only when some
/// thread pins: a few bags every 128 pins, more than one writer's own pins keep up with. Readers
/// used to do most of it; a writer with no readers (a reindex, whose reads no longer reach sled)
/// left it undone, and a 10 M-entry reindex grew to 24 GB and was killed. Each `flush` hands
/// this thread's garbage over and frees up to 8 expired bags of 64.
fn collect_garbage(keys: usize) {
    for _ in 0..(keys / 16).max(4) {
        sled::pin().flush();
    }
}

impl ViewStore for SledViews {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key).map_err(sled_err)?.map(|v| v.to_vec()))
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_err))
            .collect()
    }
    fn range(&self, r: &Range<'_>) -> Result<ViewPairs, StoreError> {
        if r.start >= r.end {
            return Ok(vec![]);
        }
        let it = self.tree.range(r.start..r.end);
        let pair = |x: sled::Result<(sled::IVec, sled::IVec)>| {
            x.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_err)
        };
        if r.reverse {
            it.rev().take(r.limit).map(pair).collect()
        } else {
            it.take(r.limit).map(pair).collect()
        }
    }
    fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        let n = batch.len();
        for (k, v) in batch {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(sled_err)?;
        collect_garbage(n);
        Ok(())
    }
    fn apply_pairs(
        &self,
        pairs: &mut dyn Iterator<Item = (&[u8], Option<&[u8]>)>,
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        let mut n = 0;
        for (k, v) in pairs {
            n += 1;
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(sled_err)?;
        collect_garbage(n);
        Ok(())
    }
    fn clear(&self) -> Result<(), StoreError> {
        self.tree.clear().map_err(sled_err)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(sled_err)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The conformance suite every view store passes.
    pub(crate) fn conformance(v: &dyn ViewStore) {
        v.apply(vec![
            (b"a/1".to_vec(), Some(b"x".to_vec())),
            (b"a/2".to_vec(), Some(b"y".to_vec())),
            (b"b/1".to_vec(), Some(b"z".to_vec())),
        ])
        .unwrap();
        assert_eq!(v.get(b"a/1").unwrap(), Some(b"x".to_vec()));
        let a = v.scan_prefix(b"a/").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1], (b"a/2".to_vec(), b"y".to_vec()));
        let keys =
            |pairs: ViewPairs| -> Vec<Vec<u8>> { pairs.into_iter().map(|(k, _)| k).collect() };
        let r = |start: &'static [u8], end: &'static [u8], limit, reverse| Range {
            start,
            end,
            limit,
            reverse,
        };
        assert_eq!(
            keys(v.range(&r(b"a/", b"a0", 10, false)).unwrap()),
            vec![b"a/1".to_vec(), b"a/2".to_vec()]
        );
        assert_eq!(
            keys(v.range(&r(b"a/", b"b/2", 2, true)).unwrap()),
            vec![b"b/1".to_vec(), b"a/2".to_vec()]
        );
        assert_eq!(
            keys(v.range(&r(b"a/", b"a/2", 10, false)).unwrap()),
            vec![b"a/1".to_vec()]
        );
        assert!(v.range(&r(b"b/", b"a/", 10, false)).unwrap().is_empty());
        assert!(v.range(&r(b"a/", b"b/", 0, true)).unwrap().is_empty());
        v.apply(vec![(b"a/1".to_vec(), None)]).unwrap();
        assert_eq!(v.get(b"a/1").unwrap(), None);
        assert_eq!(
            keys(v.range(&r(b"a/", b"b/", 10, true)).unwrap()),
            vec![b"a/2".to_vec()]
        );
        v.clear().unwrap();
        assert!(v.scan_prefix(b"").unwrap().is_empty());
        v.flush().unwrap();
    }

    #[test]
    fn prefix_end_is_the_least_key_after_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        let r = Range::forward(b"j/x\0", b"j/x\0\x05", 9);
        assert_eq!(r.common_prefix(), b"j/x\0");
    }

    #[test]
    fn memory_views_conform() {
        conformance(&MemoryViews::default());
    }

    #[test]
    fn rebuilding_views_conform() {
        let inner = MemoryViews::default();
        conformance(&Rebuilding::new(&inner, 16));
    }

    #[test]
    fn rebuilding_answers_unwritten_keys_without_the_store() {
        // The store holds a key the wrapper never wrote (breaking its precondition on
        // purpose): a wrapper that asked the store would find it.
        let inner = MemoryViews::default();
        inner
            .apply(vec![(b"l/planted".to_vec(), Some(b"x".to_vec()))])
            .unwrap();
        let r = Rebuilding::new(&inner, 1 << 16);
        assert_eq!(r.get(b"l/planted").unwrap(), None);
        r.apply(vec![(b"l/new".to_vec(), Some(b"y".to_vec()))])
            .unwrap();
        assert_eq!(r.get(b"l/new").unwrap(), Some(b"y".to_vec()));
        r.apply_pairs(&mut [(&b"l/pair"[..], Some(&b"z"[..]))].into_iter())
            .unwrap();
        assert_eq!(r.get(b"l/pair").unwrap(), Some(b"z".to_vec()));
    }

    proptest::proptest! {
        /// Through the wrapper, a store rebuilt from empty answers every read as the store
        /// alone does, whatever was written, deleted and rewritten, and however full the
        /// filter (sized here for 8 keys, so false positives happen).
        #[test]
        fn rebuilding_reads_as_the_store_does(
            batches in proptest::collection::vec(
                proptest::collection::vec((0u8..64, proptest::option::of(0u8..4)), 1..12),
                1..12,
            ),
            pairs in proptest::bool::ANY,
        ) {
            let inner = MemoryViews::default();
            let reference = MemoryViews::default();
            let r = Rebuilding::new(&inner, 8);
            for b in &batches {
                let batch: ViewBatch = b
                    .iter()
                    .map(|(k, v)| (vec![b'k', *k], v.map(|v| vec![v])))
                    .collect();
                reference.apply(batch.clone()).unwrap();
                if pairs {
                    r.apply_pairs(
                        &mut batch.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
                    )
                    .unwrap();
                } else {
                    r.apply(batch).unwrap();
                }
                for k in 0u8..64 {
                    proptest::prop_assert_eq!(
                        r.get(&[b'k', k]).unwrap(),
                        reference.get(&[b'k', k]).unwrap()
                    );
                }
            }
        }
    }

    #[test]
    fn sled_views_conform_and_survive_a_partial_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let v = SledViews::open(dir.path()).unwrap();
            conformance(&v);
            v.apply(vec![(b"k".to_vec(), Some(b"v".to_vec()))]).unwrap();
            v.flush().unwrap();
        }
        // What a kill during sled::open leaves behind.
        std::fs::write(
            dir.path().join("snap.0000000000000001.generating"),
            b"partial",
        )
        .unwrap();
        let v = SledViews::open(dir.path()).unwrap();
        assert_eq!(v.get(b"k").unwrap(), Some(b"v".to_vec()));
        assert!(!dir.path().join("snap.0000000000000001.generating").exists());
    }
}
