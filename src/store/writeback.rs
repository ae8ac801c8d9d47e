//! The write-back layer between the ledger's writer and the view store: changes land in memory
//! at once and a flusher thread persists them in the background.
//!
//! Why chunks: sled 0.34 applies a batch under a process-wide write lock that every `get` also
//! takes (its `concurrency_control`), so one large batch stalls every reader — the ledger's
//! writer among them — for as long as the batch takes (tens of ms for a few thousand keys).
//! The layer therefore hands its changes over in *chunks* of bounded size. A chunk is sealed
//! only between two `apply` calls, so it holds whole batches, and the store applies each chunk
//! atomically with the last log position it contains: after a crash the store reflects exactly
//! the batches of the chunks that reached it, never part of one.
//!
//! Chunks keep each stall short; the [`ReadGate`] removes it from the critical path: the
//! ledger's writer holds the gate while it checks a group, and the flusher writes a chunk only
//! while it holds the gate, so the writer's reads never wait behind sled's lock (the writer
//! hands the gate over fairly between groups).
//!
//! Reads that reach the store are cached ([`ReadCache`]): the writer reads the same enterprise,
//! key, head and index-block views for record after record, and a sled read costs several µs
//! (and, through sled's epoch reclamation, frees the nodes the flusher replaced).

use super::{Range, ReadGate, StoreError, ViewBatch, ViewPairs, ViewRead, ViewStore};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Coalesced changes: key → new value (`None` deletes).
type Overlay = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// A write-back layer over a view store. The writer's batches land in memory (readers see them
/// at once); a flusher thread writes them to the store underneath in the background, chunk by
/// chunk, each chunk atomically and with the log position it reflects. The views may lag the
/// log by whatever was not flushed when the process died — that tail is replayed at open — but
/// never run ahead of it, because batches reach this layer only after the log is durable.
pub struct WriteBack {
    inner: Arc<dyn ViewStore + Sync>,
    layers: Arc<RwLock<Layers>>,
    /// Signalled by the flusher whenever a chunk is done (or failed).
    progress: Arc<(Mutex<()>, Condvar)>,
    tx: Mutex<Option<std::sync::mpsc::Sender<Arc<Overlay>>>>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    gate: Arc<ReadGate>,
    cache: Arc<parking_lot::Mutex<ReadCache>>,
    policy: FlushPolicy,
}

/// The values recently read from the store underneath (`None`: the store had no such key),
/// least recently used dropped first. It stays coherent with the store: the flusher, the only
/// writer of the store while the layer lives, updates every cached key a chunk writes before
/// the chunk leaves the layer, and a reader caches what it read only if no chunk reached the
/// store since it began looking (`generation`).
struct ReadCache {
    map: lru::LruCache<Vec<u8>, Option<Vec<u8>>>,
    /// Chunks written to the store (and `clear`s) so far.
    generation: u64,
}

impl ReadCache {
    fn new(keys: usize) -> ReadCache {
        ReadCache {
            map: lru::LruCache::new(
                std::num::NonZeroUsize::new(keys).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
            generation: 0,
        }
    }
}

/// Values longer than this are not cached: the packed indexes (entry index blocks, run
/// roots) are read whole by the ledger's entry index, which keeps what it decoded itself, and
/// a count-bounded cache of them would hold hundreds of MB.
const CACHE_MAX_VALUE: usize = 4096;

fn cacheable(v: &Option<Vec<u8>>) -> bool {
    v.as_ref().is_none_or(|v| v.len() <= CACHE_MAX_VALUE)
}

/// Reads `key` from `inner` through `cache`. The caller has already looked in the layers; the
/// generation it saw then (`seen`) decides whether what the store answers may be cached.
fn cached_get(
    inner: &(dyn ViewStore + Sync),
    cache: &parking_lot::Mutex<ReadCache>,
    key: &[u8],
    seen: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    if let Some(v) = cache.lock().map.get(key) {
        return Ok(v.clone());
    }
    let v = inner.get(key)?;
    let mut c = cache.lock();
    if c.generation == seen && cacheable(&v) {
        c.map.put(key.to_vec(), v.clone());
    }
    Ok(v)
}

#[derive(Default)]
struct Layers {
    /// The open chunk: applied here, not yet handed to the flusher. Shared with snapshots
    /// (copied on the next write while one holds it).
    dirty: Arc<Overlay>,
    /// Handed to the flusher, oldest first; the front one is being written.
    sealed: VecDeque<Arc<Overlay>>,
    sealed_keys: usize,
    /// Set when the inner store refused a chunk: the views can no longer be trusted to
    /// persist, so the ledger stops taking writes.
    failed: Option<String>,
    /// When the open chunk received its first change since the last seal.
    opened: Option<Instant>,
}

/// When the write-back layer seals its open chunk and hands it to the flusher.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// Seal the open chunk once it holds this many keys (bounds how long one atomic write
    /// holds the store's lock)...
    pub max_chunk_keys: usize,
    /// ...or once its first change is this old.
    pub max_age: Duration,
    /// Writers wait while the flusher has more than this many keys queued (bounds memory).
    pub max_queued_keys: usize,
    /// A flusher that has fallen behind writes the chunks queued together, up to this many
    /// keys in one atomic batch (fewer writes of the keys they share, at the price of a
    /// longer hold of sled's lock).
    pub max_merged_keys: usize,
    /// How many values read from the store are kept for the next read of the same key.
    pub read_cache_keys: usize,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            max_chunk_keys: 512,
            max_age: Duration::from_millis(500),
            max_queued_keys: 400_000,
            max_merged_keys: 2048,
            read_cache_keys: 65_536,
        }
    }
}

/// The flusher thread's side of the layer.
struct Flusher {
    inner: Arc<dyn ViewStore + Sync>,
    layers: Arc<RwLock<Layers>>,
    progress: Arc<(Mutex<()>, Condvar)>,
    gate: Arc<ReadGate>,
    cache: Arc<parking_lot::Mutex<ReadCache>>,
    merge_keys: usize,
}

impl Flusher {
    /// Writes the chunks it is sent to the store, in order. When it has fallen behind, the
    /// chunks queued are written together in one atomic batch of up to `merge_keys` keys: a
    /// key that several of them change (a signer's head, a running total, an index block) is
    /// written once, and the batch still ends where its last chunk does, at a group boundary.
    /// Once the store refuses a batch nothing more is written, so the store keeps reflecting a
    /// prefix of the log.
    fn run(self, rx: std::sync::mpsc::Receiver<Arc<Overlay>>) {
        let mut next = None;
        loop {
            let Some(first) = next.take().or_else(|| rx.recv().ok()) else {
                return;
            };
            let mut keys = first.len();
            let mut chunks = vec![first];
            while let Ok(c) = rx.try_recv() {
                if keys + c.len() > self.merge_keys {
                    next = Some(c);
                    break;
                }
                keys += c.len();
                chunks.push(c);
            }
            let failed = self.layers.read().map_or(true, |l| l.failed.is_some());
            if !failed {
                self.write(&chunks);
            }
            let _guard = self.progress.0.lock();
            self.progress.1.notify_all();
        }
    }

    /// Writes `chunks` (oldest first) as one batch, then lets them go from the layer.
    fn write(&self, chunks: &[Arc<Overlay>]) {
        let merged: Option<Overlay> = (chunks.len() > 1).then(|| {
            let mut m = Overlay::with_capacity(chunks.iter().map(|c| c.len()).sum());
            for c in chunks {
                m.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            m
        });
        let batch: &Overlay = merged.as_ref().unwrap_or(&chunks[0]);
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _gate = self.gate.write();
            let res = self
                .inner
                .apply_pairs(&mut batch.iter().map(|(k, v)| (k.as_slice(), v.as_deref())));
            // Whether or not the store took the batch, what the cache holds for its keys may
            // now be wrong: refresh them (or, after a failure, drop them) before the chunks
            // leave the layer.
            let mut c = self.cache.lock();
            c.generation += 1;
            for (k, v) in batch.iter() {
                if res.is_ok() && cacheable(v) {
                    if let Some(cached) = c.map.peek_mut(k) {
                        cached.clone_from(v);
                    }
                } else {
                    c.map.pop(k);
                }
            }
            res
        }))
        .unwrap_or_else(|_| Err(StoreError::Views("view flusher panicked".into())));
        if let Ok(mut l) = self.layers.write() {
            match res {
                // Only now may readers stop finding the chunks here: the store answers for
                // them from this point on.
                Ok(()) => {
                    for chunk in chunks {
                        if l.sealed.front().is_some_and(|f| Arc::ptr_eq(f, chunk)) {
                            l.sealed.pop_front();
                            l.sealed_keys -= chunk.len();
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "view store refused a chunk");
                    l.failed = Some(e.to_string());
                }
            }
        }
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Views("write-back layer lock poisoned".into())
}

impl WriteBack {
    pub fn new(inner: Arc<dyn ViewStore + Sync>, policy: FlushPolicy) -> WriteBack {
        let layers = Arc::new(RwLock::new(Layers::default()));
        let progress = Arc::new((Mutex::new(()), Condvar::new()));
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Overlay>>();
        let gate = Arc::new(ReadGate::new(()));
        let cache = Arc::new(parking_lot::Mutex::new(ReadCache::new(
            policy.read_cache_keys,
        )));
        let (inner2, layers2, progress2) = (inner.clone(), layers.clone(), progress.clone());
        let (gate2, cache2) = (gate.clone(), cache.clone());
        let flusher = std::thread::Builder::new()
            .name("taizhang-views".into())
            .spawn(move || {
                let flusher = Flusher {
                    inner: inner2,
                    layers: layers2,
                    progress: progress2,
                    gate: gate2,
                    cache: cache2,
                    merge_keys: policy.max_merged_keys,
                };
                flusher.run(rx)
            });
        if let Err(e) = &flusher {
            if let Ok(mut l) = layers.write() {
                l.failed = Some(format!("view flusher did not start: {e}"));
            }
        }
        let flusher = flusher.ok();
        WriteBack {
            inner,
            layers,
            progress,
            tx: Mutex::new(Some(tx)),
            flusher: Mutex::new(flusher),
            gate,
            cache,
            policy,
        }
    }

    /// Why the layer stopped persisting, if it did.
    pub fn failure(&self) -> Option<String> {
        self.layers.read().ok().and_then(|l| l.failed.clone())
    }

    /// Waits until the flusher has at most `keys` keys queued (or one chunk failed).
    fn wait_queued_at_most(&self, keys: usize) -> Result<(), StoreError> {
        let (lock, cv) = &*self.progress;
        let mut guard = lock.lock().map_err(poisoned)?;
        loop {
            {
                let l = self.layers.read().map_err(poisoned)?;
                if let Some(f) = &l.failed {
                    return Err(StoreError::Views(f.clone()));
                }
                if l.sealed_keys <= keys {
                    return Ok(());
                }
            }
            // The flusher takes `progress` before notifying, so no notification is lost
            // between the check above and this wait; the timeout is only a safety net.
            guard = cv
                .wait_timeout(guard, Duration::from_millis(5))
                .map_err(poisoned)?
                .0;
        }
    }

    /// Seals the open chunk if the policy says so (or `force`) and hands it to the flusher.
    /// Sealing happens only here, between whole batches, so a chunk never splits a batch.
    fn maybe_seal(&self, force: bool) -> Result<(), StoreError> {
        let overfull = {
            let mut l = self.layers.write().map_err(poisoned)?;
            if let Some(f) = &l.failed {
                return Err(StoreError::Views(f.clone()));
            }
            let due = !l.dirty.is_empty()
                && (force
                    || l.dirty.len() >= self.policy.max_chunk_keys
                    || l.opened.is_some_and(|t| t.elapsed() >= self.policy.max_age));
            if due {
                let chunk = std::mem::take(&mut l.dirty);
                l.opened = None;
                l.sealed_keys += chunk.len();
                l.sealed.push_back(chunk.clone());
                // Sent while holding the layers lock, so chunks reach the flusher in order.
                let tx = self.tx.lock().map_err(poisoned)?;
                if tx.as_ref().is_none_or(|tx| tx.send(chunk).is_err()) {
                    let why = "view flusher stopped".to_string();
                    l.failed = Some(why.clone());
                    return Err(StoreError::Views(why));
                }
            }
            l.sealed_keys > self.policy.max_queued_keys
        };
        if overfull {
            self.wait_queued_at_most(self.policy.max_queued_keys)?;
        }
        Ok(())
    }
}

impl Drop for WriteBack {
    fn drop(&mut self) {
        let _ = self.flush();
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut h) = self.flusher.lock() {
            if let Some(h) = h.take() {
                let _ = h.join();
            }
        }
    }
}

impl ViewStore for WriteBack {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let seen = self.cache.lock().generation;
        {
            let l = self.layers.read().map_err(poisoned)?;
            if let Some(v) = l.dirty.get(key) {
                return Ok(v.clone());
            }
            for chunk in l.sealed.iter().rev() {
                if let Some(v) = chunk.get(key) {
                    return Ok(v.clone());
                }
            }
        }
        // A chunk leaves `sealed` only after the store holds it (and the cache agrees with
        // it), so a key missing above is either in the store or nowhere.
        cached_get(self.inner.as_ref(), &self.cache, key, seen)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError> {
        // Scans are for open, reindex and audits of the whole store: flush first.
        self.flush()?;
        self.inner.scan_prefix(prefix)
    }
    fn range(&self, r: &Range<'_>) -> Result<ViewPairs, StoreError> {
        self.snapshot().range(r)
    }
    fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
        {
            let mut l = self.layers.write().map_err(poisoned)?;
            if let Some(f) = &l.failed {
                return Err(StoreError::Views(f.clone()));
            }
            if l.opened.is_none() {
                l.opened = Some(Instant::now());
            }
            Arc::make_mut(&mut l.dirty).extend(batch);
        }
        self.maybe_seal(false)
    }
    fn clear(&self) -> Result<(), StoreError> {
        self.wait_queued_at_most(0)?;
        self.layers.write().map_err(poisoned)?.dirty = Arc::default();
        let res = self.inner.clear();
        let mut c = self.cache.lock();
        c.map.clear();
        c.generation += 1;
        res
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.maybe_seal(true)?;
        self.wait_queued_at_most(0)?;
        self.inner.flush()
    }
    fn read_gate(&self) -> Option<Arc<ReadGate>> {
        Some(self.gate.clone())
    }
    fn snapshot(&self) -> Box<dyn ViewRead + '_> {
        // The gate keeps the flusher from changing the store underneath; the layers are
        // immutable once captured (the next write to the open chunk copies it).
        let gate = self.gate.read();
        // Read with the gate held: no chunk reaches the store while the snapshot lives.
        let generation = self.cache.lock().generation;
        let layers = match self.layers.read() {
            Ok(l) => {
                let mut v: Vec<Arc<Overlay>> = l.sealed.iter().cloned().collect();
                v.push(l.dirty.clone());
                Ok(v)
            }
            Err(_) => Err(StoreError::Views("write-back layer lock poisoned".into())),
        };
        Box::new(Snapshot {
            inner: self.inner.as_ref(),
            cache: &self.cache,
            generation,
            layers,
            _gate: gate,
        })
    }
}

/// A consistent view of a write-back layer: its chunks as they were, over a store the flusher
/// may not touch while the snapshot lives.
struct Snapshot<'a> {
    inner: &'a (dyn ViewStore + Sync),
    cache: &'a parking_lot::Mutex<ReadCache>,
    generation: u64,
    /// Oldest first.
    layers: Result<Vec<Arc<Overlay>>, StoreError>,
    _gate: parking_lot::RwLockReadGuard<'a, ()>,
}

impl ViewRead for Snapshot<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let layers = self.layers.as_ref().map_err(Clone::clone)?;
        for l in layers.iter().rev() {
            if let Some(v) = l.get(key) {
                return Ok(v.clone());
            }
        }
        cached_get(self.inner, self.cache, key, self.generation)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError> {
        let layers = self.layers.as_ref().map_err(Clone::clone)?;
        let mut merged: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .inner
            .scan_prefix(prefix)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for l in layers {
            for (k, v) in l.iter().filter(|(k, _)| k.starts_with(prefix)) {
                merged.insert(k.clone(), v.clone());
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }
    fn range(&self, r: &Range<'_>) -> Result<ViewPairs, StoreError> {
        let layers = self.layers.as_ref().map_err(Clone::clone)?;
        if r.start >= r.end {
            return Ok(vec![]);
        }
        // The layers may delete keys the store holds: read past the limit by as many keys as
        // the layers hold in the range, then merge and cut.
        fn in_layer<'l>(
            l: &'l Overlay,
            r: &'l Range<'_>,
        ) -> impl Iterator<Item = (&'l Vec<u8>, &'l Option<Vec<u8>>)> {
            l.iter().filter(|(k, _)| r.contains(k))
        }
        let extra: usize = layers.iter().map(|l| in_layer(l, r).count()).sum();
        let mut merged: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .inner
            .range(&Range {
                limit: r.limit.saturating_add(extra),
                ..*r
            })?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for l in layers {
            for (k, v) in in_layer(l, r) {
                merged.insert(k.clone(), v.clone());
            }
        }
        let live = merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)));
        Ok(if r.reverse {
            live.rev().take(r.limit).collect()
        } else {
            live.take(r.limit).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryViews;

    /// A store that records every batch it is given, to see how the layer splits its changes.
    #[derive(Default)]
    struct Recording {
        inner: MemoryViews,
        batches: Mutex<Vec<ViewBatch>>,
    }

    impl ViewStore for Recording {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError> {
            self.inner.scan_prefix(prefix)
        }
        fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
            self.batches.lock().unwrap().push(batch.clone());
            self.inner.apply(batch)
        }
        fn clear(&self) -> Result<(), StoreError> {
            self.inner.clear()
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn batch(i: u32) -> ViewBatch {
        // Three keys per batch: one of its own, one shared by all, and the position.
        vec![
            (format!("own/{i:04}").into_bytes(), Some(vec![1])),
            (b"shared".to_vec(), Some(i.to_be_bytes().to_vec())),
            (b"meta/position".to_vec(), Some(i.to_be_bytes().to_vec())),
        ]
    }

    #[test]
    fn write_back_conforms() {
        let wb = WriteBack::new(Arc::new(MemoryViews::default()), FlushPolicy::default());
        crate::store::tests::conformance(&wb);
    }

    #[test]
    fn chunks_are_bounded_and_hold_whole_batches_in_order() {
        let rec = Arc::new(Recording::default());
        let policy = FlushPolicy {
            max_chunk_keys: 10,
            max_age: Duration::from_secs(3600),
            max_queued_keys: 1_000_000,
            max_merged_keys: 0,
            read_cache_keys: 16,
        };
        let wb = WriteBack::new(rec.clone(), policy);
        for i in 0..100 {
            wb.apply(batch(i)).unwrap();
            // Readers see every change at once, wherever it is.
            assert_eq!(wb.get(b"shared").unwrap(), Some(i.to_be_bytes().to_vec()));
            assert_eq!(
                wb.get(format!("own/{i:04}").as_bytes()).unwrap(),
                Some(vec![1])
            );
        }
        wb.flush().unwrap();
        let batches = rec.batches.lock().unwrap().clone();
        // 100 batches of which each adds one new key besides the two shared ones: a chunk is
        // sealed when it reaches 10 keys, i.e. every 8 batches, and the rest at flush.
        assert_eq!(batches.len(), 13);
        let mut last = None;
        for b in &batches {
            assert!(b.len() <= 10, "chunk of {} keys", b.len());
            let m: HashMap<_, _> = b.iter().cloned().collect();
            let pos = u32::from_be_bytes(
                m[&b"meta/position".to_vec()]
                    .clone()
                    .unwrap()
                    .try_into()
                    .unwrap(),
            );
            // The chunk holds exactly the batches after the previous chunk's position up to
            // its own: whole batches, in order, and the latest value of each shared key.
            let first = last.map_or(0, |p: u32| p + 1);
            for i in first..=pos {
                assert!(m.contains_key(format!("own/{i:04}").as_bytes()));
            }
            assert_eq!(m.len() as u32, pos - first + 1 + 2);
            assert_eq!(m[&b"shared".to_vec()], Some(pos.to_be_bytes().to_vec()));
            last = Some(pos);
        }
        assert_eq!(last, Some(99));
        assert_eq!(
            rec.inner.get(b"shared").unwrap(),
            Some(99u32.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn an_old_open_chunk_is_sealed_on_the_next_apply() {
        let rec = Arc::new(Recording::default());
        let policy = FlushPolicy {
            max_chunk_keys: 1_000,
            max_age: Duration::from_millis(20),
            max_queued_keys: 1_000_000,
            max_merged_keys: 0,
            read_cache_keys: 16,
        };
        let wb = WriteBack::new(rec.clone(), policy);
        wb.apply(batch(0)).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        wb.apply(batch(1)).unwrap();
        wb.wait_queued_at_most(0).unwrap();
        let batches = rec.batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 1, "both batches in one chunk, sealed by age");
        assert_eq!(batches[0].len(), 4);
    }

    #[test]
    fn a_snapshot_keeps_what_it_saw_while_writes_go_on() {
        let rec = Arc::new(Recording::default());
        let policy = FlushPolicy {
            max_chunk_keys: 4,
            max_age: Duration::from_secs(3600),
            max_queued_keys: 1_000_000,
            max_merged_keys: 0,
            read_cache_keys: 16,
        };
        let wb = WriteBack::new(rec.clone(), policy);
        wb.apply(vec![
            (b"p/a".to_vec(), Some(b"1".to_vec())),
            (b"p/b".to_vec(), Some(b"1".to_vec())),
        ])
        .unwrap();
        wb.flush().unwrap();
        wb.apply(vec![
            (b"p/b".to_vec(), None),
            (b"p/c".to_vec(), Some(b"1".to_vec())),
        ])
        .unwrap();
        {
            let snap = wb.snapshot();
            let want = vec![
                (b"p/a".to_vec(), b"1".to_vec()),
                (b"p/c".to_vec(), b"1".to_vec()),
            ];
            assert_eq!(
                snap.scan_prefix(b"p/").unwrap(),
                want,
                "deletes and adds merged"
            );
            // Later writes, in the open chunk and beyond it, are not seen by the snapshot.
            wb.apply(vec![(b"p/a".to_vec(), Some(b"2".to_vec()))])
                .unwrap();
            wb.apply(vec![(b"p/d".to_vec(), Some(b"1".to_vec()))])
                .unwrap();
            assert_eq!(snap.get(b"p/a").unwrap(), Some(b"1".to_vec()));
            assert_eq!(snap.get(b"p/d").unwrap(), None);
            assert_eq!(snap.scan_prefix(b"p/").unwrap(), want);
            // The flusher cannot write under a snapshot: nothing sealed meanwhile reached it.
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(rec.inner.get(b"p/c").unwrap(), None);
        }
        wb.flush().unwrap();
        assert_eq!(wb.snapshot().get(b"p/a").unwrap(), Some(b"2".to_vec()));
        assert_eq!(rec.inner.get(b"p/d").unwrap(), Some(b"1".to_vec()));
    }

    /// A store that refuses everything: the layer must say so and refuse further changes.
    struct Refusing;
    impl ViewStore for Refusing {
        fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        fn scan_prefix(&self, _: &[u8]) -> Result<ViewPairs, StoreError> {
            Ok(vec![])
        }
        fn apply(&self, _: ViewBatch) -> Result<(), StoreError> {
            Err(StoreError::Views("disk full".into()))
        }
        fn clear(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// A store that refuses its first batch and would take the rest (a disk that filled up
    /// and was then cleared): after the refusal nothing later may reach it, or the views
    /// would claim a log position past changes they never got.
    #[derive(Default)]
    struct RefusesOnce {
        inner: Recording,
        refused: std::sync::atomic::AtomicBool,
    }
    impl ViewStore for RefusesOnce {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError> {
            self.inner.scan_prefix(prefix)
        }
        fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
            if !self.refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                return Err(StoreError::Views("disk full".into()));
            }
            self.inner.apply(batch)
        }
        fn clear(&self) -> Result<(), StoreError> {
            self.inner.clear()
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[test]
    fn nothing_reaches_the_store_after_a_refused_chunk() {
        let store = Arc::new(RefusesOnce::default());
        let policy = FlushPolicy {
            max_chunk_keys: 3,
            max_age: Duration::from_secs(3600),
            max_queued_keys: 1_000_000,
            max_merged_keys: 0,
            read_cache_keys: 16,
        };
        let wb = WriteBack::new(store.clone(), policy);
        // The first chunk is refused (slowly); the ones queued behind it must not be written.
        for i in 0..10 {
            let _ = wb.apply(batch(i));
        }
        assert!(wb.flush().is_err());
        assert!(wb.failure().is_some());
        assert!(store.inner.batches.lock().unwrap().is_empty());
        assert!(wb.apply(batch(10)).is_err());
    }

    /// A flusher that has fallen behind writes the queued chunks as one batch: each key once,
    /// with its last value, and the batch ends with a whole chunk.
    #[test]
    fn queued_chunks_are_written_together() {
        let rec = Arc::new(Recording::default());
        let policy = FlushPolicy {
            max_chunk_keys: 3,
            max_age: Duration::from_secs(3600),
            max_queued_keys: 1_000_000,
            max_merged_keys: 12,
            read_cache_keys: 16,
        };
        let wb = WriteBack::new(rec.clone(), policy);
        // Hold the gate so the flusher falls behind while 20 chunks queue up.
        let gate = wb.read_gate().unwrap();
        let held = gate.read();
        for i in 0..20 {
            wb.apply(batch(i)).unwrap();
        }
        drop(held);
        wb.flush().unwrap();
        let batches = rec.batches.lock().unwrap();
        assert!(
            batches.len() < 20,
            "{} batches for 20 chunks",
            batches.len()
        );
        let mut written_own = 0;
        for b in batches.iter() {
            // A batch never exceeds the limit, names each key once...
            assert!(b.len() <= 12);
            let mut keys: Vec<_> = b.iter().map(|(k, _)| k.clone()).collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), b.len());
            // ...and its position is that of its newest chunk (the newest `own/` key in it).
            let newest = b
                .iter()
                .filter(|(k, _)| k.starts_with(b"own/"))
                .map(|(k, _)| {
                    String::from_utf8(k[4..].to_vec())
                        .unwrap()
                        .parse::<u32>()
                        .unwrap()
                })
                .max()
                .unwrap();
            let pos = b.iter().find(|(k, _)| k == b"meta/position").unwrap();
            assert_eq!(pos.1, Some(newest.to_be_bytes().to_vec()));
            written_own += b.iter().filter(|(k, _)| k.starts_with(b"own/")).count();
        }
        assert_eq!(written_own, 20);
        assert_eq!(
            wb.get(b"shared").unwrap(),
            Some(19u32.to_be_bytes().to_vec())
        );
        assert_eq!(
            rec.inner.get(b"shared").unwrap(),
            Some(19u32.to_be_bytes().to_vec())
        );
    }

    /// A store whose reads take a while, so that readers and the flusher overlap.
    #[derive(Default)]
    struct Slow(MemoryViews);
    impl ViewStore for Slow {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            let v = self.0.get(key);
            std::thread::sleep(Duration::from_micros(200));
            v
        }
        fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError> {
            self.0.scan_prefix(prefix)
        }
        fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
            self.0.apply(batch)
        }
        fn clear(&self) -> Result<(), StoreError> {
            self.0.clear()
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// The read cache never answers with a value older than one a reader has already seen:
    /// a reader racing the flusher (small chunks, a cache smaller than the keys in play) sees
    /// every key's value only grow, and ends at the last one written.
    #[test]
    fn cached_reads_never_go_back_in_time() {
        let policy = FlushPolicy {
            max_chunk_keys: 2,
            max_age: Duration::from_secs(3600),
            max_queued_keys: 8,
            max_merged_keys: 4,
            read_cache_keys: 3,
        };
        let wb = Arc::new(WriteBack::new(Arc::new(Slow::default()), policy));
        let keys: Vec<Vec<u8>> = (0..5u8).map(|k| vec![b'c', k]).collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (wb, keys, done) = (wb.clone(), keys.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut seen = vec![0u32; keys.len()];
                    let mut reads = 0u64;
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        for (i, k) in keys.iter().enumerate() {
                            let v = wb
                                .get(k)
                                .unwrap()
                                .map_or(0, |v| u32::from_be_bytes(v.try_into().unwrap()));
                            assert!(v >= seen[i], "key {i} went back from {} to {v}", seen[i]);
                            seen[i] = v;
                            reads += 1;
                        }
                        let snap = wb.snapshot();
                        for (i, k) in keys.iter().enumerate() {
                            let v = snap
                                .get(k)
                                .unwrap()
                                .map_or(0, |v| u32::from_be_bytes(v.try_into().unwrap()));
                            assert!(v >= seen[i], "snapshot: key {i} went back");
                            seen[i] = v;
                        }
                    }
                    reads
                })
            })
            .collect();
        for n in 1..=3000u32 {
            let k = keys[(n as usize * 7) % keys.len()].clone();
            wb.apply(vec![(k, Some(n.to_be_bytes().to_vec()))]).unwrap();
            if n % 4 == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        wb.flush().unwrap();
        done.store(true, std::sync::atomic::Ordering::Release);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        for (i, k) in keys.iter().enumerate() {
            let last = (1..=3000u32)
                .filter(|n| (*n as usize * 7) % keys.len() == i)
                .max();
            assert_eq!(wb.get(k).unwrap(), last.map(|n| n.to_be_bytes().to_vec()));
        }
    }

    proptest::proptest! {
        /// A snapshot's range reads agree with a plain map of everything applied, whatever
        /// mix of chunks are still in memory, flushed or deleted.
        #[test]
        fn snapshot_ranges_agree_with_a_model(
            ops in proptest::collection::vec((0u8..40, proptest::option::of(0u8..4), proptest::bool::ANY), 1..120),
            queries in proptest::collection::vec((0u8..40, 0u8..40, 0usize..12, proptest::bool::ANY), 1..20),
        ) {
            let policy = FlushPolicy {
                max_chunk_keys: 3,
                max_age: Duration::from_secs(3600),
                max_queued_keys: 1_000_000,
                max_merged_keys: 5,
                read_cache_keys: 4,
            };
            let wb = WriteBack::new(Arc::new(MemoryViews::default()), policy);
            let mut model = std::collections::BTreeMap::new();
            for (k, v, flush) in ops {
                let key = vec![b'k', k];
                match v {
                    Some(v) => {
                        model.insert(key.clone(), vec![v]);
                        wb.apply(vec![(key, Some(vec![v]))]).unwrap();
                    }
                    None => {
                        model.remove(&key);
                        wb.apply(vec![(key, None)]).unwrap();
                    }
                }
                if flush {
                    wb.flush().unwrap();
                }
                // Reads race the flusher through a cache smaller than the keys in play.
                let probe = vec![b'k', k.wrapping_mul(7) % 40];
                proptest::prop_assert_eq!(wb.get(&probe).unwrap(), model.get(&probe).cloned());
            }
            let snap = wb.snapshot();
            for (a, b, limit, reverse) in queries {
                let (start, end) = (vec![b'k', a], vec![b'k', b]);
                let got = snap
                    .range(&Range { start: &start, end: &end, limit, reverse })
                    .unwrap();
                let inside = model
                    .iter()
                    .filter(|(k, _)| **k >= start && **k < end)
                    .map(|(k, v)| (k.clone(), v.clone()));
                let want: ViewPairs = if reverse {
                    inside.rev().take(limit).collect()
                } else {
                    inside.take(limit).collect()
                };
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn a_refused_chunk_stops_the_layer() {
        let wb = WriteBack::new(Arc::new(Refusing), FlushPolicy::default());
        wb.apply(batch(0)).unwrap();
        let e = wb.flush().unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert!(wb.failure().is_some_and(|f| f.contains("disk full")));
        assert!(wb.apply(batch(1)).is_err());
        // What was accepted before the failure is still readable.
        assert_eq!(wb.get(b"own/0000").unwrap(), Some(vec![1]));
    }
}
