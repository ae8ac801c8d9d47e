//! The write-back layer between the ledger's writer and the view store: changes land in memory
//! at once and a flusher thread persists them in the background.

use super::{StoreError, ViewBatch, ViewPairs, ViewStore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

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
