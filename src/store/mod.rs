//! Storage: the append-only segment log (the truth) and the view store (a cache of the log).
//!
//! The view store is a narrow key-value trait so another engine can take sled's place; sled is
//! the production implementation and an in-memory map serves tests. Everything in it is derived
//! from the log and is written after the log is durable, together with the log position it
//! reflects, in one atomic batch.

pub mod segment;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub use segment::{Location, Position, Recovery, SegmentLog, SegmentReader};

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
    /// Applies a batch atomically.
    fn apply(&self, batch: ViewBatch) -> Result<(), StoreError>;
    /// Removes everything.
    fn clear(&self) -> Result<(), StoreError>;
    /// Asks the engine to write its buffers out (not a durability promise; see DESIGN §7).
    fn flush(&self) -> Result<(), StoreError>;
}

/// A write-back layer over a view store. The writer's batches land in memory (readers see them
/// at once); a flusher thread writes them to the store underneath in the background, in large
/// coalesced batches, each with the log position it reflects. The views may lag the log by
/// whatever was not flushed when the process died — that tail is replayed at open — but never
/// run ahead of it, because batches reach this layer only after the log is durable.
pub struct WriteBack {
    inner: Arc<dyn ViewStore + Sync>,
    layers: Arc<RwLock<Layers>>,
    tx: Mutex<Option<std::sync::mpsc::Sender<Arc<Overlay>>>>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Serialises hand-offs (the writer's, and `flush` from any thread).
    handoff: Mutex<()>,
    policy: FlushPolicy,
}

type Overlay = HashMap<Vec<u8>, Option<Vec<u8>>>;

#[derive(Default)]
struct Layers {
    /// Applied here, not yet handed to the flusher.
    dirty: Overlay,
    /// Being written to the inner store.
    flushing: Option<Arc<Overlay>>,
    /// Set when the inner store refused a batch: the views can no longer be trusted to
    /// persist, so the ledger stops taking writes.
    failed: Option<String>,
    last_handoff: Option<std::time::Instant>,
}

/// When the write-back layer hands its changes to the flusher.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// Hand off once this many keys are dirty...
    pub max_dirty_keys: usize,
    /// ...or this long after the last hand-off.
    pub max_age: std::time::Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            max_dirty_keys: 100_000,
            max_age: std::time::Duration::from_millis(500),
        }
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Views("write-back layer lock poisoned".into())
}

impl WriteBack {
    pub fn new(inner: Arc<dyn ViewStore + Sync>, policy: FlushPolicy) -> WriteBack {
        let layers = Arc::new(RwLock::new(Layers::default()));
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Overlay>>();
        let (inner2, layers2) = (inner.clone(), layers.clone());
        let flusher = std::thread::Builder::new()
            .name("taizhang-views".into())
            .spawn(move || {
                for batch in rx {
                    let items: ViewBatch =
                        batch.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        inner2.apply(items)
                    }))
                    .unwrap_or_else(|_| Err(StoreError::Views("view flusher panicked".into())));
                    if let Ok(mut l) = layers2.write() {
                        match res {
                            Ok(()) => {
                                if l.flushing.as_ref().is_some_and(|f| Arc::ptr_eq(f, &batch)) {
                                    l.flushing = None;
                                }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "view store refused a batch");
                                l.failed = Some(e.to_string());
                            }
                        }
                    }
                }
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
            tx: Mutex::new(Some(tx)),
            flusher: Mutex::new(flusher),
            handoff: Mutex::new(()),
            policy,
        }
    }

    /// Why the layer stopped persisting, if it did.
    pub fn failure(&self) -> Option<String> {
        self.layers.read().ok().and_then(|l| l.failed.clone())
    }

    /// Waits until no flush is in progress (or one failed).
    fn wait_idle(&self) -> Result<(), StoreError> {
        loop {
            {
                let l = self.layers.read().map_err(poisoned)?;
                if let Some(f) = &l.failed {
                    return Err(StoreError::Views(f.clone()));
                }
                if l.flushing.is_none() {
                    return Ok(());
                }
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Hands the dirty keys to the flusher if the policy says so (or `force`), waiting for a
    /// previous flush only when the dirty set has grown far past its bound.
    fn maybe_hand_off(&self, force: bool) -> Result<(), StoreError> {
        let (due, busy, overfull) = {
            let l = self.layers.read().map_err(poisoned)?;
            let age = l
                .last_handoff
                .is_none_or(|t| t.elapsed() >= self.policy.max_age);
            (
                !l.dirty.is_empty()
                    && (force || age || l.dirty.len() >= self.policy.max_dirty_keys),
                l.flushing.is_some(),
                l.dirty.len() >= 4 * self.policy.max_dirty_keys,
            )
        };
        if !due || (busy && !force && !overfull) {
            return Ok(());
        }
        let _one_at_a_time = self.handoff.lock().map_err(poisoned)?;
        self.wait_idle()?;
        let mut l = self.layers.write().map_err(poisoned)?;
        let batch = Arc::new(std::mem::take(&mut l.dirty));
        l.flushing = Some(batch.clone());
        l.last_handoff = Some(std::time::Instant::now());
        drop(l);
        let tx = self.tx.lock().map_err(poisoned)?;
        match tx.as_ref() {
            Some(tx) if tx.send(batch).is_ok() => Ok(()),
            _ => {
                let why = "view flusher stopped".to_string();
                if let Ok(mut l) = self.layers.write() {
                    l.failed = Some(why.clone());
                }
                Err(StoreError::Views(why))
            }
        }
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
        {
            let l = self.layers.read().map_err(poisoned)?;
            if let Some(v) = l.dirty.get(key) {
                return Ok(v.clone());
            }
            if let Some(v) = l.flushing.as_ref().and_then(|f| f.get(key)) {
                return Ok(v.clone());
            }
        }
        self.inner.get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<ViewPairs, StoreError> {
        // Scans are for open, reindex and audits of the whole store: flush first.
        self.flush()?;
        self.inner.scan_prefix(prefix)
    }
    fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
        {
            let mut l = self.layers.write().map_err(poisoned)?;
            if let Some(f) = &l.failed {
                return Err(StoreError::Views(f.clone()));
            }
            l.dirty.extend(batch);
        }
        self.maybe_hand_off(false)
    }
    fn clear(&self) -> Result<(), StoreError> {
        self.wait_idle()?;
        self.layers.write().map_err(poisoned)?.dirty.clear();
        self.inner.clear()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.maybe_hand_off(true)?;
        self.wait_idle()?;
        self.inner.flush()
    }
}

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
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(1000))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(sled_err)?;
        let tree = db.open_tree("views").map_err(sled_err)?;
        Ok(SledViews { db, tree })
    }
}

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
    fn apply(&self, batch: ViewBatch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(sled_err)
    }
    fn clear(&self) -> Result<(), StoreError> {
        self.tree.clear().map_err(sled_err)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(sled_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conformance suite every view store passes.
    fn conformance(v: &dyn ViewStore) {
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
        v.apply(vec![(b"a/1".to_vec(), None)]).unwrap();
        assert_eq!(v.get(b"a/1").unwrap(), None);
        v.clear().unwrap();
        assert!(v.scan_prefix(b"").unwrap().is_empty());
        v.flush().unwrap();
    }

    #[test]
    fn memory_views_conform() {
        conformance(&MemoryViews::default());
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
