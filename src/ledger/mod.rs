//! The ledger: ingest (validation, sequencing, group commit), the derived views, receipts,
//! checkpoints and proofs.
//!
//! Flow of a record: [`Ledger::prepare`] (decode, size limits, origin, signature with the cached
//! key — runs on the caller's thread, in parallel across callers) → the single writer thread
//! (key role and validity, revocation, signer chain, payload rules, against the views plus the
//! changes of the records before it in the same group) → one `write` + `fdatasync` of the group's
//! frames → the group's view changes in one sled batch → a new signed checkpoint → receipts.
//! A receipt is never sent before the fdatasync that makes its entry durable.

mod custody;
pub mod error;
mod index;
mod permits;
pub mod rules;
mod stock;
mod trade;
pub mod views;

use crate::checkpoint::{sign_checkpoint, Checkpoint, NoteSigner};
use crate::codec::{self, Cosig, Leaf, MAX_BODY_BYTES, MAX_COSIGNATURES};
use crate::crypto::{self, KeyId};
use crate::merkle::{self, Blake3Hasher, Hash};
use crate::model::Catalogue;
use crate::pb::{self, record_body::Payload};
use crate::store::{
    FlushPolicy, Location, Position, SegmentLog, SegmentReader, SledViews, StoreError, SyncHandle,
    ViewStore, WriteBack,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
pub use error::{Code, Refusal};
use index::{EntryIndex, Nodes};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};
use views::{key, EntryView, GenesisView, Head, KeyInfo, Views, META_GENESIS, META_POSITION};

/// Most records committed in one group.
pub const MAX_GROUP: usize = 4096;
/// A group stops taking jobs once its bodies pass this many bytes (so a torn tail, which can
/// only be the last group's unfinished write, is bounded: see `store::segment::MAX_TORN_BYTES`).
pub const MAX_GROUP_BYTES: usize = crate::store::segment::MAX_GROUP_BYTES as usize;
/// Default size at which a new segment file is started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 256 << 20;

/// How to open a ledger.
#[derive(Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Used only when the data dir is new: the origin and root regulators written in Genesis.
    pub origin: String,
    pub root_regulators: Vec<pb::AuthorityKey>,
    pub ledger_key: SigningKey,
    pub catalogue: Arc<Catalogue>,
    pub max_segment_bytes: u64,
    /// Categories (`Category` values) whose stock-in and stock-out records need a second
    /// person's co-signature (双人双锁); see [`DEFAULT_TWO_PERSON`].
    pub two_person: Vec<i32>,
}

/// Two-person control by default: narcotics and class I psychotropics.
pub const DEFAULT_TWO_PERSON: &[pb::Category] =
    &[pb::Category::Narcotic, pb::Category::Psychotropic1];

/// [`DEFAULT_TWO_PERSON`] as `Config::two_person` values.
pub fn default_two_person() -> Vec<i32> {
    DEFAULT_TWO_PERSON.iter().map(|c| *c as i32).collect()
}

/// What a caller gets for an accepted record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub index: u64,
    pub leaf_hash: Hash,
    pub integrated_time_ms: u64,
    pub prev_leaf_hash: Hash,
    pub checkpoint: String,
    pub tree_size: u64,
    pub inclusion_proof: Vec<Hash>,
    pub duplicate: bool,
}

/// A record taken apart and checked as far as is possible without the writer.
pub struct Prepared {
    body_bytes: Vec<u8>,
    signature: [u8; 64],
    cosignatures: Vec<Cosig>,
    body: pb::RecordBody,
    payload: Payload,
    signer: KeyId,
    /// Result of the signature check when the key was known at prepare time.
    sig_checked: Option<Result<(), Refusal>>,
}

/// A signed record as received.
pub struct Submission {
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
    /// (key id, signature) pairs.
    pub cosignatures: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Evidence that a key signed two different bodies at one seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    pub key_id: KeyId,
    pub signer_seq: u64,
    pub entry_index: u64,
    pub conflicting: Submission,
    pub observed_ms: u64,
}

impl Clone for Submission {
    fn clone(&self) -> Self {
        Submission {
            body: self.body.clone(),
            signature: self.signature.clone(),
            cosignatures: self.cosignatures.clone(),
        }
    }
}
impl PartialEq for Submission {
    fn eq(&self, o: &Self) -> bool {
        self.body == o.body && self.signature == o.signature && self.cosignatures == o.cosignatures
    }
}
impl Eq for Submission {}
impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Submission({} body bytes)", self.body.len())
    }
}

type Reply = oneshot::Sender<Vec<Result<Receipt, Refusal>>>;

struct Job {
    items: Vec<Result<Prepared, Refusal>>,
    reply: Reply,
    /// Share of the queue's byte budget, given back when the writer takes the job.
    _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Bytes of prepared records that may wait for the writer at once; submitters wait beyond it
/// (and, through gRPC flow control, so do their clients).
pub const QUEUE_BUDGET_BYTES: usize = 256 << 20;
/// Budget unit: one permit per KiB.
const BUDGET_UNIT: usize = 1024;

enum Msg {
    Job(Job),
    /// Stop the writer after the groups before it; answered once the views are flushed.
    Close(oneshot::Sender<()>),
}

/// What readers see: the tree, where entries live, the latest checkpoint.
struct ReadState {
    index: EntryIndex,
    checkpoint: String,
    checkpoint_size: u64,
    last_time_ms: u64,
}

struct Shared {
    genesis: GenesisView,
    ledger_vk: VerifyingKey,
    note_signer: NoteSigner,
    catalogue: Arc<Catalogue>,
    views: Arc<dyn ViewStore + Sync>,
    reader: SegmentReader,
    read: RwLock<ReadState>,
    key_cache: RwLock<HashMap<KeyId, VerifyingKey>>,
    evidence_dir: PathBuf,
    checkpoint_path: PathBuf,
    /// The latest witnessed checkpoint (note with cosignatures, size), and its file.
    witnessed: RwLock<Option<(String, u64)>>,
    witnessed_path: PathBuf,
    size_tx: watch::Sender<u64>,
    poisoned: RwLock<Option<String>>,
    /// The background check of the log before the views' position (see [`Ledger::scrub`]).
    scrub: RwLock<Scrub>,
    /// Groups the writer has written that the syncer has not yet made durable and applied.
    in_flight: Mutex<VecDeque<Arc<InFlight>>>,
    /// Byte budget of the writer's queue.
    queue_budget: Arc<tokio::sync::Semaphore>,
    /// Categories under two-person control.
    two_person: Vec<i32>,
    /// Held for the ledger's lifetime: one process per data dir.
    /// Dropped after `views` (fields drop in order), before `_lock`.
    _sled_snapshot: SledSnapshotOnClose,
    _lock: std::fs::File,
}

/// The data dir's lock, and where sled keeps the views (`None` for another view store).
struct OpenLock {
    file: std::fs::File,
    sled: Option<PathBuf>,
}

/// sled 0.34 writes its snapshot only when it opens, and an open scans everything written since
/// the last snapshot (~2 s per 500 MB here; 25 s for a 10 M-entry ledger built in one run). So
/// once the views are closed the ledger opens sled once more, which writes the snapshot, and
/// the next start after a clean close is quick. A start after a crash still scans.
struct SledSnapshotOnClose(Option<PathBuf>);

impl Drop for SledSnapshotOnClose {
    fn drop(&mut self) {
        let Some(dir) = self.0.take().filter(|d| d.exists()) else {
            return;
        };
        let started = std::time::Instant::now();
        match SledViews::open(&dir) {
            Ok(v) => {
                drop(v);
                tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "view store snapshot written for a quick next start"
                );
            }
            Err(e) => tracing::warn!(error = %e, "writing the view store's snapshot at close"),
        }
    }
}

impl Shared {
    /// Runs `f` on the read state with every entry-index run it touches in memory. `f` runs
    /// under the read lock; the runs it missed are read from the views with the lock released
    /// (sled can stall a read for a whole chunk's apply, and the sync thread waits for this
    /// lock), then `f` runs again. A read that needs more runs than the cache keeps reads them
    /// in place on its last try.
    fn indexed<T>(&self, f: impl Fn(&ReadState, &Nodes<'_>) -> T) -> Result<T, Refusal> {
        let lock = || {
            self.read
                .read()
                .map_err(|_| Refusal::internal("read state poisoned".into()))
        };
        let damaged = |e: StoreError| Refusal::new(Code::DataLoss, e.to_string());
        for _ in 0..3 {
            let missing = {
                let r = lock()?;
                let nodes = Nodes::recording(&r.index);
                let out = f(&r, &nodes);
                let missing = nodes.missing();
                if missing.is_empty() {
                    return Ok(out);
                }
                missing
            };
            for want in missing {
                let got = EntryIndex::fetch(&self.reader, &want).map_err(damaged)?;
                lock()?.index.cache(want.run, got);
            }
        }
        let r = lock()?;
        let nodes = Nodes::fetching(&r.index, &self.reader);
        let out = f(&r, &nodes);
        match nodes.failure() {
            Some(e) => Err(damaged(e)),
            None => Ok(out),
        }
    }
}

/// The entry index the views hold for the first `from.entries` entries: the run roots (`xr/`)
/// and, from the run tail (`xt/`), the entries after the last complete run. Or why the
/// views do not add up (they are then rebuilt from the log).
fn load_index(views: &dyn ViewStore, from: &Position) -> Result<EntryIndex, String> {
    use views::{ROOTS_PER_KEY, RUN};
    let n = from.entries;
    let runs = n / RUN;
    let keys = views.scan_prefix(b"xr/").map_err(|e| e.to_string())?;
    let mut roots = Vec::with_capacity(runs as usize);
    for (k, (name, value)) in (0u64..).zip(&keys) {
        let r = views::decode_run_roots(name, value).map_err(|e| e.to_string())?;
        let full = k + 1 < keys.len() as u64;
        if *name != key::run_roots(k) || (full && r.len() as u64 != ROOTS_PER_KEY) {
            return Err(format!(
                "run roots: {} is out of place",
                views::packed_name(name)
            ));
        }
        roots.extend(r);
    }
    if roots.len() as u64 != runs {
        return Err(format!(
            "the views hold {} run roots; their position says {n} entries ({runs} runs)",
            roots.len()
        ));
    }
    let name = key::run_tail();
    let bytes = views
        .get(&name)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let entries = views::decode_run_tail(&name, &bytes).map_err(|e| e.to_string())?;
    let held = (n - 1) % RUN + 1;
    if entries.len() as u64 != held {
        return Err(format!(
            "the run tail holds {} entries; the views' position says {held}",
            entries.len()
        ));
    }
    if entries.last().map(|e| e.leaf_hash) != Some(from.last_hash) {
        return Err("the run tail does not end at the recorded position".into());
    }
    // A complete run in the tail is among the run roots already.
    let tail = if held == RUN { &[][..] } else { &entries[..] };
    Ok(EntryIndex::from_views(&roots, tail))
}

/// A handle to an open ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
}

/// Counters reported by `open`.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    pub entries: u64,
    pub replayed: u64,
    pub torn_bytes_cut: u64,
    pub views_rebuilt: bool,
    pub views_rebuild_reason: Option<String>,
    /// Where open spent its time, phase by phase.
    pub phases: Vec<(&'static str, std::time::Duration)>,
}

/// The ledger's clock: milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Takes the data dir's exclusive lock (`DATA/LOCK`), waiting up to 3 s for a previous holder
/// (a process shutting down, or a ledger in this process still being dropped) to let go.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, Refusal> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Refusal::unavailable(format!("data dir {}: {e}", dir.display())))?;
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Refusal::unavailable(format!("{}: {e}", path.display())))?;
    for _ in 0..60 {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Refusal::unavailable(format!("{}: {e}", path.display())))
            }
        }
    }
    Err(Refusal::unavailable(format!(
        "data dir {} is in use by another ledger process",
        dir.display()
    )))
}

/// Waits until no ledger holds `data_dir` (its lock is free), for at most `timeout`, and says
/// whether it was let go. A closed ledger finishes when its last handle is dropped, possibly on
/// another thread, and writing sled's snapshot then takes a while on a large ledger
/// (`SledSnapshotOnClose`): a process should wait for it before it exits.
pub fn wait_released(data_dir: &Path, timeout: std::time::Duration) -> bool {
    let Ok(f) = std::fs::File::open(data_dir.join("LOCK")) else {
        return true;
    };
    let started = std::time::Instant::now();
    loop {
        match f.try_lock_shared() {
            Ok(()) => return true,
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < timeout => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(_) => return false,
        }
    }
}

/// File beside the log holding the latest signed checkpoint note.
pub const CHECKPOINT_FILE: &str = "checkpoint.note";
/// File beside the log holding the latest checkpoint the witness policy accepted, cosigned.
pub const WITNESSED_FILE: &str = "witnessed.note";

/// Replaces the kept checkpoint atomically (write and sync the new file, then rename). The
/// rename itself is not synced: after a power cut the note may be the previous one, which only
/// weakens the check, never breaks a start.
fn persist_checkpoint(path: &Path, note: &str) -> Result<(), Refusal> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    // Data first, then the rename: a power cut never leaves an empty note in place.
    std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(note.as_bytes())?;
            f.sync_data()
        })
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Refusal::unavailable(format!("{}: {e}", path.display())))
}

/// The witnessed checkpoint saved in `path`, if it opens with the ledger key and matches `tree`.
fn load_witnessed(
    path: &Path,
    ledger: &crate::checkpoint::NoteVerifier,
    tree: &Nodes<'_>,
) -> Option<(String, u64)> {
    let note = std::fs::read_to_string(path).ok()?;
    match crate::checkpoint::open_checkpoint(&note, ledger) {
        Ok((cp, _)) if merkle::root_at::<Blake3Hasher, _>(tree, cp.size) == Some(cp.root) => {
            Some((note, cp.size))
        }
        _ => {
            tracing::warn!(path = %path.display(), "ignoring a witnessed checkpoint that does not match the log");
            None
        }
    }
}

/// `n` refusals for records whose preparation panicked (keeps results aligned with requests).
pub fn panicked<T>(n: usize) -> Vec<Result<T, Refusal>> {
    (0..n)
        .map(|_| {
            Err(Refusal::internal(
                "preparing the record failed unexpectedly".into(),
            ))
        })
        .collect()
}

/// The single writer's own state.
struct Writer {
    log: SegmentLog,
    /// The written end of the log (durable or not): next index, last leaf hash, last time.
    next: u64,
    prev_hash: Hash,
    last_time: u64,
}

/// The kept checkpoint file is replaced at most this often (and at shutdown).
const KEEP_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Ledger {
    /// Opens (or creates) the ledger in `cfg.data_dir` and starts its writer thread.
    /// Must be called within a tokio runtime only for the returned handle's async methods.
    pub fn open(cfg: Config) -> Result<(Ledger, OpenReport), Refusal> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            Refusal::unavailable(format!("data dir {}: {e}", cfg.data_dir.display()))
        })?;
        let lock = lock_data_dir(&cfg.data_dir)?;
        Self::open_locked(cfg, lock, None)
    }

    fn open_locked(
        cfg: Config,
        lock: std::fs::File,
        progress: Option<&AtomicU64>,
    ) -> Result<(Ledger, OpenReport), Refusal> {
        let evidence_dir = cfg.data_dir.join("evidence");
        std::fs::create_dir_all(&evidence_dir)
            .map_err(|e| Refusal::unavailable(format!("evidence dir: {e}")))?;
        let views_dir = cfg.data_dir.join("views");
        let mut report = OpenReport::default();
        let started = std::time::Instant::now();
        let sled: Arc<dyn ViewStore + Sync> = match SledViews::open(&views_dir) {
            Ok(v) => Arc::new(v),
            Err(e) if crate::store::is_lock_error(&e) => {
                return Err(Refusal::unavailable(format!("view store in use: {e}")))
            }
            Err(e) => {
                tracing::warn!(error = %e, "view store refused to open; rebuilding it from the log");
                report.views_rebuilt = true;
                report.views_rebuild_reason = Some(format!("sled refused to open: {e}"));
                let _ = std::fs::remove_dir_all(&views_dir);
                Arc::new(SledViews::open(&views_dir).map_err(Refusal::from)?)
            }
        };
        report
            .phases
            .push(("open the view store", started.elapsed()));
        // The writer's view changes land in memory and reach sled in the background.
        let views: Arc<dyn ViewStore + Sync> =
            Arc::new(WriteBack::new(sled, FlushPolicy::default()));
        let lock = OpenLock {
            file: lock,
            sled: Some(views_dir),
        };
        Self::open_inner(cfg, views, report, lock, progress)
    }

    /// Opens with a given view store (tests use the in-memory one).
    pub fn open_with(
        cfg: Config,
        views: Arc<dyn ViewStore + Sync>,
        report: OpenReport,
    ) -> Result<(Ledger, OpenReport), Refusal> {
        let lock = lock_data_dir(&cfg.data_dir)?;
        let lock = OpenLock {
            file: lock,
            sled: None,
        };
        Self::open_inner(cfg, views, report, lock, None)
    }

    fn open_inner(
        cfg: Config,
        views: Arc<dyn ViewStore + Sync>,
        mut report: OpenReport,
        lock: OpenLock,
        progress: Option<&AtomicU64>,
    ) -> Result<(Ledger, OpenReport), Refusal> {
        let log_dir = cfg.data_dir.join("log");
        let mut phase = std::time::Instant::now();
        let mut lap = |report: &mut OpenReport, name: &'static str| {
            report.phases.push((name, phase.elapsed()));
            phase = std::time::Instant::now();
        };
        // Where do the views stand?
        let mut from: Position = match views.get(META_POSITION)? {
            Some(b) => views::decode(META_POSITION, &b)?,
            None => Position::START,
        };
        let mut index = EntryIndex::new();
        let mut last_time_ms = 0;
        let format: Option<u32> = match views.get(views::META_FORMAT)? {
            Some(b) => views::decode(views::META_FORMAT, &b).ok(),
            None => None,
        };
        if from.entries > 0 && format != Some(views::VIEW_FORMAT) {
            report.views_rebuild_reason = Some(format!(
                "the views are in format {}, this ledger writes format {}",
                format.map_or("1".to_string(), |f| f.to_string()),
                views::VIEW_FORMAT
            ));
        } else if from.entries > 0 && report.views_rebuild_reason.is_none() {
            match load_index(views.as_ref(), &from) {
                Ok(ix) => index = ix,
                Err(why) => report.views_rebuild_reason = Some(why),
            }
        }
        if report.views_rebuild_reason.is_some() {
            views.clear()?;
            report.views_rebuilt = true;
            from = Position::START;
            index = EntryIndex::new();
        }
        lap(&mut report, "load the entry index");
        // Scan the log from there, replaying each entry into the views.
        let genesis_existing: Option<GenesisView> = match views.get(META_GENESIS)? {
            Some(b) => Some(views::decode(META_GENESIS, &b)?),
            None => None,
        };
        // A replay from the first entry rebuilds the views from nothing: its reads of keys it
        // has not written yet need not reach the store (`store::Rebuilding`).
        let rebuilding = if from.entries == 0 {
            if !report.views_rebuilt {
                views.clear()?;
            }
            Some(crate::store::Rebuilding::new(
                views.as_ref(),
                expected_view_keys(&log_dir),
            ))
        } else {
            None
        };
        let replay_views: &dyn ViewStore = match &rebuilding {
            Some(r) => r,
            None => views.as_ref(),
        };
        let mut replay = Replay {
            views: replay_views,
            catalogue: cfg.catalogue.clone(),
            genesis: genesis_existing,
            pending: Views::new(replay_views),
            entries: Vec::new(),
            index: &mut index,
            last_time_ms: &mut last_time_ms,
            replayed: 0,
            progress,
            reader: SegmentReader::new(&log_dir),
        };
        if from.entries > 0 {
            // Last integrated time, for monotonic time.
            *replay.last_time_ms = 0;
        }
        // Frames before `from` are trusted to the views' entry index here (a fast open); a
        // background scrub re-reads and checks them once the ledger is up.
        let scrub_upto = from;
        let (log, recovery) = SegmentLog::open(&log_dir, cfg.max_segment_bytes, from, |s| {
            replay.entry(s.index, s.leaf, s.hash, s.location)
        })
        .map_err(Refusal::from)?;
        replay.flush(&log.end())?;
        let log_reader = log.reader();
        report.replayed = replay.replayed;
        lap(&mut report, "scan the log after the views, replay it");
        let mut genesis = replay.genesis.take();
        report.torn_bytes_cut = recovery.torn_bytes_cut;
        if let Some(last) = index
            .size()
            .checked_sub(1)
            .and_then(|i| Nodes::fetching(&index, &log_reader).location(i))
        {
            let (bytes, _) = log.reader().read(last).map_err(Refusal::from)?;
            last_time_ms = Leaf::decode(&bytes)
                .map_err(|e| Refusal::new(Code::DataLoss, format!("last entry: {e}")))?
                .integrated_time_ms;
        }
        let mut writer = Writer {
            log,
            next: 0,
            prev_hash: [0; 32],
            last_time: 0,
        };
        let cp_path = cfg.data_dir.join(CHECKPOINT_FILE);
        if index.size() == 0 && cp_path.exists() {
            // Never write a new Genesis where a ledger has already signed checkpoints.
            return Err(Refusal::new(
                Code::DataLoss,
                format!(
                    "the log is empty but {} holds a checkpoint this data dir signed",
                    cp_path.display()
                ),
            ));
        }
        if index.size() == 0 {
            genesis = Some(write_genesis(
                &cfg,
                &mut writer,
                views.as_ref(),
                &mut index,
                &mut last_time_ms,
            )?);
        }
        let genesis = genesis.ok_or_else(|| {
            Refusal::new(Code::DataLoss, "the log has entries but no genesis".into())
        })?;
        if genesis.ledger_public_key != cfg.ledger_key.verifying_key().to_bytes() {
            return Err(Refusal::precondition(format!(
                "ledger key: this data dir belongs to ledger key {}, not {}",
                genesis.ledger_key,
                KeyId::of(&cfg.ledger_key.verifying_key())
            )));
        }
        if genesis.catalogue_digest != cfg.catalogue.digest() {
            return Err(Refusal::precondition(format!(
                "catalogue: the ledger was created with catalogue {} ({}), this binary has {} ({})",
                genesis.catalogue_version,
                hex::encode(genesis.catalogue_digest),
                cfg.catalogue.version(),
                hex::encode(cfg.catalogue.digest())
            )));
        }
        // Never sign a checkpoint inconsistent with one signed before: the last one signed is
        // kept beside the log, and the log must still hold it, with the same root.
        if let Ok(note) = std::fs::read_to_string(&cp_path) {
            let last =
                crate::verify::open_ledger_checkpoint(&note, &cfg.ledger_key.verifying_key())
                    .map_err(|e| {
                        Refusal::new(Code::DataLoss, format!("{}: {e}", cp_path.display()))
                    })?;
            let root = merkle::root_at::<Blake3Hasher, _>(
                &Nodes::fetching(&index, &log_reader),
                last.size,
            );
            if last.size > index.size() || root != Some(last.root) {
                if !report.views_rebuilt && last.size <= index.size() {
                    // The log may be sound and the run roots or entry index in the views
                    // damaged: rebuild the views from the log and look again.
                    drop(writer);
                    report.views_rebuild_reason = Some(format!(
                        "the tree from the views does not match the kept checkpoint of size {}",
                        last.size
                    ));
                    return Self::open_inner(cfg, views, report, lock, progress);
                }
                return Err(Refusal::new(
                    Code::DataLoss,
                    format!(
                        "this ledger signed a checkpoint of size {} that the log ({} entries) no longer matches; refusing to sign an inconsistent one",
                        last.size,
                        index.size()
                    ),
                ));
            }
        }
        let note_signer = NoteSigner::new(&genesis.origin, cfg.ledger_key.clone())
            .map_err(|e| Refusal::invalid(format!("origin: {e}")))?;
        let size = index.size();
        let checkpoint = sign_checkpoint(
            &Checkpoint {
                origin: genesis.origin.clone(),
                size,
                root: index.root(),
                extensions: vec![],
            },
            &note_signer,
        )
        .map_err(|e| Refusal::internal(format!("signing checkpoint: {e}")))?;
        persist_checkpoint(&cp_path, &checkpoint)?;
        lap(&mut report, "check the kept checkpoint, sign one");
        let witnessed_path = cfg.data_dir.join(WITNESSED_FILE);
        let witnessed = load_witnessed(
            &witnessed_path,
            &note_signer.verifier(),
            &Nodes::fetching(&index, &log_reader),
        );
        report.entries = size;
        writer.next = size;
        writer.prev_hash = Nodes::fetching(&index, &log_reader)
            .leaf(size.saturating_sub(1))
            .unwrap_or([0; 32]);
        writer.last_time = last_time_ms;
        let (size_tx, _) = watch::channel(size);
        let shared = Arc::new(Shared {
            ledger_vk: cfg.ledger_key.verifying_key(),
            genesis,
            note_signer,
            catalogue: cfg.catalogue.clone(),
            views,
            reader: writer.log.reader(),
            read: RwLock::new(ReadState {
                index,
                checkpoint,
                checkpoint_size: size,
                last_time_ms,
            }),
            key_cache: RwLock::new(HashMap::new()),
            evidence_dir: cfg.data_dir.join("evidence"),
            checkpoint_path: cp_path,
            witnessed: RwLock::new(witnessed),
            witnessed_path,
            size_tx,
            poisoned: RwLock::new(None),
            scrub: RwLock::new(if scrub_upto.entries > 0 {
                Scrub::Running
            } else {
                Scrub::Done(0)
            }),
            in_flight: Mutex::new(VecDeque::new()),
            two_person: cfg.two_person.clone(),
            _sled_snapshot: SledSnapshotOnClose(lock.sled),
            _lock: lock.file,
            queue_budget: Arc::new(tokio::sync::Semaphore::new(
                QUEUE_BUDGET_BYTES / BUDGET_UNIT,
            )),
        });
        let (tx, rx) = mpsc::channel::<Msg>(MAX_GROUP * 4);
        let s2 = shared.clone();
        std::thread::Builder::new()
            .name("taizhang-writer".into())
            .spawn(move || run_writer(s2, writer, rx))
            .map_err(|e| Refusal::internal(format!("writer thread: {e}")))?;
        if scrub_upto.entries > 0 {
            // Weak: the scrub must not keep a closed ledger (and its lock) alive.
            let s3 = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("taizhang-scrub".into())
                .spawn(move || run_scrub(s3, log_dir, scrub_upto))
                .map_err(|e| Refusal::internal(format!("scrub thread: {e}")))?;
        }
        Ok((Ledger { shared, tx }, report))
    }

    /// Where the background check of the log stands. At open the ledger reads only the log
    /// after the views' position and trusts the views' entry index for what is before it; a
    /// scrub thread then re-reads those frames and checks each (hash, index, chain, and the
    /// hash the index holds). Damage stops writes (`DATA_LOSS` in the reason) and health
    /// reports not serving; every read of a damaged frame is refused with `DATA_LOSS` anyway.
    /// Waits for the background check of the log to finish, and returns its outcome.
    pub async fn scrub_done(&self) -> Scrub {
        loop {
            match self.scrub() {
                Scrub::Running => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                s => return s,
            }
        }
    }

    pub fn scrub(&self) -> Scrub {
        self.shared
            .scrub
            .read()
            .map(|s| s.clone())
            .unwrap_or(Scrub::Failed("scrub state poisoned".into()))
    }

    pub fn origin(&self) -> &str {
        &self.shared.genesis.origin
    }

    pub fn ledger_public_key(&self) -> VerifyingKey {
        self.shared.ledger_vk
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.shared.catalogue
    }

    fn cached_key(&self, id: &KeyId) -> Option<VerifyingKey> {
        if let Some(k) = self.shared.key_cache.read().ok()?.get(id) {
            return Some(*k);
        }
        let info: KeyInfo =
            views::decode(b"k/", &self.shared.views.get(&key::key(id)).ok()??).ok()?;
        let vk = VerifyingKey::from_bytes(&info.public_key).ok()?;
        if let Ok(mut c) = self.shared.key_cache.write() {
            c.insert(*id, vk);
        }
        Some(vk)
    }

    /// Decodes and checks what can be checked before the writer: sizes, encoding, origin, and the
    /// signature when the key is already registered.
    pub fn prepare(&self, s: Submission) -> Result<Prepared, Refusal> {
        if s.body.len() > MAX_BODY_BYTES {
            return Err(Refusal::invalid(format!(
                "record.body: {} bytes exceeds the limit of {MAX_BODY_BYTES}",
                s.body.len()
            )));
        }
        let signature: [u8; 64] = s.signature.as_slice().try_into().map_err(|_| {
            Refusal::invalid(format!(
                "record.signature: expected 64 bytes, got {}",
                s.signature.len()
            ))
        })?;
        if s.cosignatures.len() > MAX_COSIGNATURES {
            return Err(Refusal::invalid(format!(
                "record.cosignatures: {} exceeds the limit of {MAX_COSIGNATURES}",
                s.cosignatures.len()
            )));
        }
        let mut cosignatures = Vec::with_capacity(s.cosignatures.len());
        for (i, (k, sig)) in s.cosignatures.iter().enumerate() {
            let key_id = KeyId::from_slice("key_id", k)
                .map_err(|e| Refusal::invalid(format!("record.cosignatures[{i}].{e}")))?;
            let signature: [u8; 64] = sig.as_slice().try_into().map_err(|_| {
                Refusal::invalid(format!(
                    "record.cosignatures[{i}].signature: expected 64 bytes, got {}",
                    sig.len()
                ))
            })?;
            if cosignatures.iter().any(|c: &Cosig| c.key_id == key_id) {
                return Err(Refusal::invalid(format!(
                    "record.cosignatures[{i}].key_id: {key_id} cosigns twice"
                )));
            }
            cosignatures.push(Cosig { key_id, signature });
        }
        let body =
            codec::decode_body(&s.body).map_err(|e| Refusal::invalid(format!("record.{e}")))?;
        let mut body = body;
        let payload = body.payload.take().ok_or_else(|| {
            Refusal::invalid("body.payload: a record must carry one payload".into())
        })?;
        if body.ledger_origin != self.shared.genesis.origin {
            return Err(Refusal::invalid(format!(
                "body.ledger_origin: `{}` is not this ledger (`{}`)",
                body.ledger_origin, self.shared.genesis.origin
            )));
        }
        let signer = KeyId::from_slice("signer", &body.signer)
            .map_err(|e| Refusal::invalid(format!("body.{e}")))?;
        if body.signer_prev.len() != 32 {
            return Err(Refusal::invalid(format!(
                "body.signer_prev: expected 32 bytes, got {}",
                body.signer_prev.len()
            )));
        }
        let sig_checked = self.cached_key(&signer).map(|vk| {
            crypto::verify_record(&vk, &s.body, &signature)
                .map_err(|e| Refusal::unauthenticated(format!("record.{e} for key {signer}")))
        });
        Ok(Prepared {
            body_bytes: s.body,
            signature,
            cosignatures,
            body,
            payload,
            signer,
            sig_checked,
        })
    }

    /// Hands prepared records (or refusals from preparing them) to the writer as one job, in
    /// call order, and returns a future of their results (each after its group is durable).
    pub async fn enqueue(
        &self,
        items: Vec<Result<Prepared, Refusal>>,
    ) -> impl std::future::Future<Output = Vec<Result<Receipt, Refusal>>> + Send + 'static {
        let n = items.len();
        let stopped = move || -> Vec<Result<Receipt, Refusal>> {
            (0..n)
                .map(|_| Err(Refusal::unavailable("ledger writer stopped".into())))
                .collect()
        };
        let bytes: usize = items
            .iter()
            .map(|i| i.as_ref().map_or(0, |p| p.body_bytes.len() + 256))
            .sum();
        let units = (bytes / BUDGET_UNIT + 1).min(QUEUE_BUDGET_BYTES / BUDGET_UNIT) as u32;
        let budget = self
            .shared
            .queue_budget
            .clone()
            .acquire_many_owned(units)
            .await
            .ok();
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .send(Msg::Job(Job {
                items,
                reply,
                _budget: budget,
            }))
            .await
            .is_ok();
        async move {
            if !sent {
                return stopped();
            }
            rx.await.unwrap_or_else(|_| stopped())
        }
    }

    /// Submits prepared records as one job and waits for their results.
    pub async fn submit_prepared(
        &self,
        items: Vec<Result<Prepared, Refusal>>,
    ) -> Vec<Result<Receipt, Refusal>> {
        self.enqueue(items).await.await
    }

    /// Submits one signed record.
    pub async fn submit(&self, s: Submission) -> Result<Receipt, Refusal> {
        let p = self.prepare(s);
        self.submit_prepared(vec![p])
            .await
            .pop()
            .unwrap_or_else(|| Err(Refusal::internal("no result".into())))
    }

    /// Submits many records; signatures are checked on all cores first.
    pub async fn submit_many(&self, subs: Vec<Submission>) -> Vec<Result<Receipt, Refusal>> {
        let n = subs.len();
        let this = self.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            this.prepare_all(subs.into_iter().map(Ok).collect())
        })
        .await
        .unwrap_or_else(|_| panicked(n));
        self.submit_prepared(prepared).await
    }

    /// Prepares submissions on all available cores, keeping their order; refusals pass through.
    /// The signature checks run on the verify pool ([`verify_pool`]), below the writer's
    /// priority.
    pub fn prepare_all(
        &self,
        subs: Vec<Result<Submission, Refusal>>,
    ) -> Vec<Result<Prepared, Refusal>> {
        use rayon::prelude::*;
        let one = |s: Result<Submission, Refusal>| s.and_then(|s| self.prepare(s));
        match verify_pool() {
            Some(pool) if subs.len() > 1 => {
                pool.install(|| subs.into_par_iter().with_min_len(16).map(one).collect())
            }
            _ => subs.into_iter().map(one).collect(),
        }
    }

    /// Stops the writer after what was submitted before this call and flushes the views.
    /// Later submissions through any clone of this handle are refused as unavailable.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// A consistent view of the derived state, for a sequence of reads (audit queries). It
    /// holds off the view flusher while it lives: drop it soon.
    pub fn snapshot(&self) -> Box<dyn crate::store::ViewRead + '_> {
        self.shared.views.snapshot()
    }

    /// Leaf hashes of durable entries, under one lock.
    pub fn leaf_hashes(&self, indices: &[u64]) -> Vec<Option<Hash>> {
        self.shared
            .indexed(|_, n| indices.iter().map(|i| n.leaf(*i)).collect())
            .unwrap_or_else(|_| vec![None; indices.len()])
    }

    /// Leaf hash of a durable entry.
    pub fn leaf_hash(&self, index: u64) -> Option<Hash> {
        self.shared.indexed(|_, n| n.leaf(index)).ok().flatten()
    }

    /// Writes the views held in memory through to the view store (they reach it in the
    /// background anyway; this waits for it).
    pub fn flush_views(&self) -> Result<(), Refusal> {
        Ok(self.shared.views.flush()?)
    }

    /// Number of entries durable in the log.
    pub fn size(&self) -> u64 {
        self.shared.read.read().map(|r| r.index.size()).unwrap_or(0)
    }

    /// A watch on the log size (for `WatchEntries`).
    pub fn subscribe_size(&self) -> watch::Receiver<u64> {
        self.shared.size_tx.subscribe()
    }

    /// The latest signed checkpoint: (note, size, root).
    pub fn checkpoint(&self) -> Result<(String, u64, Hash), Refusal> {
        let r = self.read()?;
        Ok((r.checkpoint.clone(), r.checkpoint_size, r.index.root()))
    }

    /// The Merkle root of the first `size` entries, if the log has that many.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        self.shared
            .indexed(|_, n| merkle::root_at::<Blake3Hasher, _>(n, size))
            .ok()
            .flatten()
    }

    /// Bytes of records waiting for the writer (what backpressure counts).
    pub fn queued_bytes(&self) -> usize {
        let free = self.shared.queue_budget.available_permits();
        (QUEUE_BUDGET_BYTES / BUDGET_UNIT).saturating_sub(free) * BUDGET_UNIT
    }

    /// The latest checkpoint the witness policy accepted: its note (with the cosignatures) and
    /// size.
    pub fn witnessed(&self) -> Option<(String, u64)> {
        self.shared.witnessed.read().ok()?.clone()
    }

    /// Publishes a witnessed checkpoint (made durable first). It must open with the ledger key
    /// and match the log; an older one than the current is ignored.
    pub fn publish_witnessed(&self, note: &str) -> Result<(), Refusal> {
        let (cp, _) = crate::checkpoint::open_checkpoint(note, &self.shared.note_signer.verifier())
            .map_err(|e| Refusal::invalid(format!("witnessed checkpoint: {e}")))?;
        {
            let root = self
                .shared
                .indexed(|_, n| merkle::root_at::<Blake3Hasher, _>(n, cp.size))?;
            if root != Some(cp.root) {
                return Err(Refusal::invalid(format!(
                    "witnessed checkpoint: size {} does not match this log",
                    cp.size
                )));
            }
        }
        let mut w = self
            .shared
            .witnessed
            .write()
            .map_err(|_| Refusal::internal("witnessed state poisoned".into()))?;
        if w.as_ref().is_some_and(|(_, size)| *size > cp.size) {
            return Ok(());
        }
        persist_checkpoint(&self.shared.witnessed_path, note)?;
        *w = Some((note.to_string(), cp.size));
        Ok(())
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, ReadState>, Refusal> {
        self.shared
            .read
            .read()
            .map_err(|_| Refusal::internal("read state poisoned".into()))
    }

    /// The leaf bytes and hash of entry `index`.
    pub fn entry(&self, index: u64) -> Result<(Vec<u8>, Hash), Refusal> {
        let loc = self.shared.indexed(|r, n| {
            n.location(index).ok_or_else(|| {
                Refusal::not_found(format!(
                    "index: entry {index} does not exist (the log has {} entries)",
                    r.index.size()
                ))
            })
        })??;
        self.shared.reader.read(loc).map_err(Refusal::from)
    }

    fn size_or_latest(r: &ReadState, size: u64) -> Result<u64, Refusal> {
        if size == 0 {
            return Ok(r.checkpoint_size);
        }
        if size > r.index.size() {
            return Err(Refusal::out_of_range(format!(
                "tree_size: {size} exceeds the log size {}",
                r.index.size()
            )));
        }
        Ok(size)
    }

    /// Inclusion proof of `index` in the tree of `tree_size` (0 = latest checkpoint).
    pub fn inclusion_proof(
        &self,
        index: u64,
        tree_size: u64,
    ) -> Result<(u64, Hash, Vec<Hash>), Refusal> {
        self.shared.indexed(|r, n| {
            let size = Self::size_or_latest(r, tree_size)?;
            if index >= size {
                return Err(Refusal::out_of_range(format!(
                    "index: {index} is not below tree_size {size}"
                )));
            }
            let proof = merkle::inclusion_proof::<Blake3Hasher, _>(n, index, size)
                .map_err(|e| Refusal::internal(e.to_string()))?;
            let leaf = n
                .leaf(index)
                .ok_or_else(|| Refusal::internal("leaf missing".into()))?;
            Ok((size, leaf, proof))
        })?
    }

    /// Consistency proof from `from` to `to` (0 = latest checkpoint).
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<(u64, Vec<Hash>), Refusal> {
        self.shared.indexed(|r, n| {
            let to = Self::size_or_latest(r, to)?;
            if from == 0 || from > to {
                return Err(Refusal::out_of_range(format!(
                    "from_size: must be in 1..={to} (a proof from the empty tree is meaningless)"
                )));
            }
            let proof = merkle::consistency_proof::<Blake3Hasher, _>(n, from, to)
                .map_err(|e| Refusal::internal(e.to_string()))?;
            Ok((to, proof))
        })?
    }

    /// Where a key's chain stands.
    pub fn signer_head(&self, id: &KeyId) -> Result<Head, Refusal> {
        Ok(match self.shared.views.get(&key::head(id))? {
            Some(b) => views::decode(b"h/", &b)?,
            None => Head::default(),
        })
    }

    /// A registered key.
    pub fn key_info(&self, id: &KeyId) -> Result<Option<KeyInfo>, Refusal> {
        Ok(match self.shared.views.get(&key::key(id))? {
            Some(b) => Some(views::decode(b"k/", &b)?),
            None => None,
        })
    }

    /// A typed view value by key (for audits and tests).
    pub fn view<T: serde::de::DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>, Refusal> {
        Ok(match self.shared.views.get(k)? {
            Some(b) => Some(views::decode(k, &b)?),
            None => None,
        })
    }

    /// A lot holding's running totals (zero for a holding that never held anything).
    pub fn holding_totals(&self, h: &views::Holding<'_>) -> Result<views::Totals, Refusal> {
        Ok(views::holding_totals(&|k| self.shared.views.get(k), h)?.unwrap_or_default())
    }

    /// Every view key and value, for comparing a reindexed store with the original.
    pub fn dump_views(&self) -> Result<crate::store::ViewPairs, Refusal> {
        Ok(self.shared.views.scan_prefix(b"")?)
    }

    /// Equivocation evidence recorded against a key.
    pub fn equivocations(&self, id: &KeyId) -> Result<Vec<Equivocation>, Refusal> {
        let mut out = Vec::new();
        let prefix = format!("{id}-");
        let rd = std::fs::read_dir(&self.shared.evidence_dir)
            .map_err(|e| Refusal::unavailable(format!("evidence dir: {e}")))?;
        let mut names: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if !name.starts_with(&prefix) || !name.ends_with(".evidence") {
                continue;
            }
            let bytes =
                std::fs::read(&p).map_err(|e| Refusal::unavailable(format!("evidence: {e}")))?;
            out.push(decode_evidence(&bytes).ok_or_else(|| {
                Refusal::new(
                    Code::DataLoss,
                    format!("evidence file {name} does not decode"),
                )
            })?);
        }
        Ok(out)
    }

    /// Is the ledger refusing writes after a failure it cannot recover from in-process?
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned.read().ok().and_then(|p| p.clone())
    }
}

/// Replays log entries into the views (on open and reindex).
struct Replay<'a> {
    views: &'a dyn ViewStore,
    catalogue: Arc<Catalogue>,
    genesis: Option<GenesisView>,
    pending: Views<'a>,
    /// Entry index records since the last flush.
    entries: Vec<EntryView>,
    index: &'a mut EntryIndex,
    last_time_ms: &'a mut u64,
    replayed: u64,
    /// Entries replayed so far, for a progress display (updated every 1,024).
    progress: Option<&'a AtomicU64>,
    /// Reads earlier entries of the log being replayed (`rules::Ctx::body_of`).
    reader: SegmentReader,
}

impl Replay<'_> {
    fn entry(
        &mut self,
        index: u64,
        leaf_bytes: &[u8],
        hash: Hash,
        location: Location,
    ) -> Result<(), StoreError> {
        let dl = |what: String| StoreError::DataLoss {
            what: format!("entry {index}: {what}"),
        };
        let leaf = Leaf::decode(leaf_bytes).map_err(|e| dl(e.to_string()))?;
        let body = codec::decode_body(&leaf.body).map_err(|e| dl(e.to_string()))?;
        let signer = KeyId::from_slice("signer", &body.signer).map_err(|e| dl(e.to_string()))?;
        let mut body = body;
        let payload = body.payload.take().ok_or_else(|| dl("no payload".into()))?;
        if index == 0 {
            let Payload::Genesis(g) = &payload else {
                return Err(dl("entry 0 is not genesis".into()));
            };
            rules::apply_genesis(&mut self.pending, &signer, g, &leaf.body)
                .map_err(|r| dl(r.message))?;
            self.genesis = Some(GenesisView {
                origin: g.origin.clone(),
                ledger_key: signer,
                ledger_public_key: g
                    .ledger_public_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| dl("bad ledger key".into()))?,
                catalogue_version: g.catalogue_version.clone(),
                catalogue_digest: g
                    .catalogue_digest
                    .as_slice()
                    .try_into()
                    .map_err(|_| dl("bad digest".into()))?,
            });
        } else {
            let genesis = self
                .genesis
                .clone()
                .ok_or_else(|| dl("no genesis before it".into()))?;
            let (index_so_far, reader) = (&*self.index, &self.reader);
            let leaf_hash = |i: u64| Nodes::fetching(index_so_far, reader).leaf(i);
            let leaf_of = |i: u64| -> Result<Leaf, Refusal> {
                let loc = Nodes::fetching(index_so_far, reader)
                    .location(i)
                    .ok_or_else(|| Refusal::internal(format!("no location for entry {i}")))?;
                Leaf::decode(&reader.read(loc)?.0)
                    .map_err(|e| Refusal::new(Code::DataLoss, format!("entry {i}: {e}")))
            };
            let cosigners: Vec<KeyId> = leaf.cosignatures.iter().map(|c| c.key_id).collect();
            let ctx = rules::Ctx {
                origin: &genesis.origin,
                catalogue: &self.catalogue,
                index,
                now_ms: leaf.integrated_time_ms,
                leaf_hash: &leaf_hash,
                leaf_of: &leaf_of,
                cosigners: &cosigners,
                two_person: None,
            };
            let key: KeyInfo = self
                .pending
                .get(&key::key(&signer))?
                .ok_or_else(|| dl(format!("signer {signer} unknown")))?;
            admit_rules(
                &ctx,
                &mut self.pending,
                RecordRef {
                    signer: &signer,
                    key_info: &key,
                    body: &body,
                    body_bytes: &leaf.body,
                    payload: &payload,
                },
                None,
            )
            .map_err(|r| dl(format!("no longer validates: {}", r.message)))?;
        }
        self.entries.push(EntryView {
            location,
            leaf_hash: hash,
        });
        self.index.push(hash, location);
        *self.last_time_ms = leaf.integrated_time_ms;
        self.replayed += 1;
        if let Some(p) = self.progress.filter(|_| self.replayed.is_multiple_of(1024)) {
            p.store(self.replayed, std::sync::atomic::Ordering::Relaxed);
        }
        if self.replayed.is_multiple_of(10_000) {
            let pos = Position {
                entries: index + 1,
                last_hash: hash,
                segment: location.segment,
                offset: location.offset
                    + location.len as u64
                    + crate::store::segment::FRAME_OVERHEAD,
            };
            self.flush(&pos)?;
        }
        Ok(())
    }

    fn flush(&mut self, pos: &Position) -> Result<(), StoreError> {
        let first = pos.entries - self.entries.len() as u64;
        self.pending.push_entries(first, &self.entries)?;
        self.entries.clear();
        let pending = std::mem::replace(&mut self.pending, Views::new(self.views));
        if pending.is_dirty() {
            self.views.apply(pending.into_batch(pos))?;
        }
        Ok(())
    }
}

/// The chain and payload rules, shared by ingest and replay (signatures are checked by the
/// caller: at ingest before this, at replay not at all — `verify` re-checks them offline).
/// A record as the rules see it.
struct RecordRef<'a> {
    signer: &'a KeyId,
    key_info: &'a KeyInfo,
    body: &'a pb::RecordBody,
    body_bytes: &'a [u8],
    payload: &'a Payload,
}

fn admit_rules(
    ctx: &rules::Ctx<'_>,
    v: &mut Views<'_>,
    rec: RecordRef<'_>,
    head: Option<Head>,
) -> Result<(), Refusal> {
    let RecordRef {
        signer,
        key_info,
        body,
        body_bytes,
        payload,
    } = rec;
    // At ingest the caller has checked the key and the chain already (and passes the head);
    // at replay they are checked here.
    let head = match head {
        Some(h) => h,
        None => {
            rules::check_signer(key_info, signer, payload, ctx.now_ms)?;
            v.head(signer)?
        }
    };
    if body.signer_seq != head.next_seq || body.signer_prev.as_slice() != head.prev_body_hash {
        return Err(Refusal::precondition(format!(
            "body.signer_seq: chain position {} does not follow the head {}",
            body.signer_seq, head.next_seq
        )));
    }
    rules::apply(ctx, v, signer, key_info, payload)?;
    v.advance_head(signer, &head, ctx.index, crypto::body_hash(body_bytes))?;
    Ok(())
}

fn write_genesis(
    cfg: &Config,
    w: &mut Writer,
    views: &dyn ViewStore,
    index: &mut EntryIndex,
    last_time_ms: &mut u64,
) -> Result<GenesisView, Refusal> {
    if cfg.origin.is_empty() || cfg.origin.contains(char::is_whitespace) || cfg.origin.contains('+')
    {
        return Err(Refusal::invalid(
            "origin: must be non-empty without spaces or '+'".into(),
        ));
    }
    if cfg.root_regulators.is_empty() {
        return Err(Refusal::invalid(
            "root_regulators: genesis needs at least one root regulator key".into(),
        ));
    }
    let vk = cfg.ledger_key.verifying_key();
    let id = KeyId::of(&vk);
    let body = pb::RecordBody {
        ledger_origin: cfg.origin.clone(),
        signer: id.0.to_vec(),
        signer_seq: 0,
        signer_prev: vec![0; 32],
        client_time_ms: now_ms(),
        payload: Some(Payload::Genesis(pb::Genesis {
            origin: cfg.origin.clone(),
            ledger_public_key: vk.to_bytes().to_vec(),
            root_regulators: cfg.root_regulators.clone(),
            catalogue_version: cfg.catalogue.version().to_string(),
            catalogue_digest: cfg.catalogue.digest().to_vec(),
        })),
    };
    let body_bytes = codec::encode_body(&body);
    let signature = crypto::sign_record(&cfg.ledger_key, &body_bytes);
    let t = now_ms();
    let leaf = Leaf {
        index: 0,
        integrated_time_ms: t,
        prev_leaf_hash: [0; 32],
        body: body_bytes.clone(),
        signature,
        cosignatures: vec![],
    };
    let bytes = leaf.encode();
    let hash = codec::leaf_hash(&bytes);
    let mut v = Views::new(views);
    let Some(Payload::Genesis(g)) = &body.payload else {
        return Err(Refusal::internal("genesis payload".into()));
    };
    rules::apply_genesis(&mut v, &id, g, &body_bytes)?;
    let locs = w.log.append(&[(&bytes, hash)])?;
    v.push_entries(
        0,
        &[EntryView {
            location: locs[0],
            leaf_hash: hash,
        }],
    )?;
    let genesis: GenesisView = v
        .get(META_GENESIS)?
        .ok_or_else(|| Refusal::internal("genesis view".into()))?;
    views.apply(v.into_batch(&w.log.end()))?;
    index.push(hash, locs[0]);
    *last_time_ms = t;
    tracing::info!(origin = %cfg.origin, ledger_key = %id, "wrote genesis");
    Ok(genesis)
}

enum Outcome {
    New(u64),
    Duplicate(u64),
    Refused(Refusal),
}

struct PendingLeaf {
    leaf: Leaf,
    bytes: Vec<u8>,
    hash: Hash,
}

/// A group the writer has checked and written to the log but that is not yet durable. Later
/// groups are checked against its view changes (and may cite or retry its entries) until the
/// syncer has made it durable and applied it to the views.
struct InFlight {
    base: u64,
    leaves: Vec<PendingLeaf>,
    locations: Vec<Location>,
    /// The views after this group (its changes, its entry index, its log position).
    overlay: views::Overlay,
}

impl InFlight {
    fn leaf(&self, index: u64) -> Option<&PendingLeaf> {
        index
            .checked_sub(self.base)
            .and_then(|i| self.leaves.get(i as usize))
    }
}

/// What the writer hands to the syncer for one group.
struct Staged {
    base: u64,
    /// The group's new entries; `None` when it has none, or its write failed.
    written: Option<Arc<InFlight>>,
    sync: Option<SyncHandle>,
    /// Why the group's write failed (its new entries are refused with it).
    failure: Option<Refusal>,
    outcomes: Vec<Vec<Outcome>>,
    replies: Vec<Reply>,
    /// Equivocation evidence against entries not yet durable: written once this group is.
    deferred: Vec<Equivocation>,
    last_time: u64,
}

enum ToSync {
    Group(Staged),
    Close(oneshot::Sender<()>),
}

/// Groups the writer may have written ahead of the syncer (one being synced, the rest queued).
const GROUPS_IN_FLIGHT: usize = 4;

fn run_writer(shared: Arc<Shared>, mut w: Writer, mut rx: mpsc::Receiver<Msg>) {
    let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel::<ToSync>(GROUPS_IN_FLIGHT);
    let s2 = shared.clone();
    let syncer = std::thread::Builder::new()
        .name("taizhang-sync".into())
        .spawn(move || run_syncer(s2, sync_rx));
    if let Err(e) = &syncer {
        if let Ok(mut p) = shared.poisoned.write() {
            *p = Some(format!("sync thread did not start: {e}"));
        }
    }
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = Vec::new();
        let mut close = None;
        let mut n = 0;
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Job(j) => {
                    n += j.items.len();
                    bytes += j
                        .items
                        .iter()
                        .map(|i| i.as_ref().map_or(0, |p| p.body_bytes.len() + 512))
                        .sum::<usize>();
                    jobs.push(j);
                }
                Msg::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if n < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if !jobs.is_empty() {
            if let Some(staged) = stage_group(&shared, &mut w, jobs) {
                if let Err(std::sync::mpsc::SendError(ToSync::Group(g))) =
                    sync_tx.send(ToSync::Group(staged))
                {
                    refuse_all(
                        g.replies,
                        g.outcomes.iter().map(Vec::len),
                        "sync thread stopped",
                    );
                }
            }
        }
        if let Some(done) = close {
            if let Err(std::sync::mpsc::SendError(ToSync::Close(done))) =
                sync_tx.send(ToSync::Close(done))
            {
                let _ = done.send(());
            }
            break;
        }
    }
    drop(sync_tx);
    if let Ok(h) = syncer {
        let _ = h.join();
    }
    tracing::info!("ledger writer stopped");
}

fn refuse_all(replies: Vec<Reply>, sizes: impl Iterator<Item = usize>, why: &str) {
    for (reply, n) in replies.into_iter().zip(sizes) {
        let _ = reply.send(
            (0..n)
                .map(|_| {
                    let m = format!("ledger is refusing writes: {why}");
                    Err(if why.starts_with("data loss") {
                        Refusal::new(Code::DataLoss, m)
                    } else {
                        Refusal::unavailable(m)
                    })
                })
                .collect(),
        );
    }
}

/// Checks a group's records (against the views as changed by the groups still in flight) and
/// writes the admitted ones to the log, without waiting for them to be durable. Returns `None`
/// when the ledger refuses writes (the jobs are answered here).
fn stage_group(shared: &Arc<Shared>, w: &mut Writer, jobs: Vec<Job>) -> Option<Staged> {
    if let Some(why) = shared.poisoned.read().ok().and_then(|p| p.clone()) {
        let sizes: Vec<usize> = jobs.iter().map(|j| j.items.len()).collect();
        refuse_all(
            jobs.into_iter().map(|j| j.reply).collect(),
            sizes.into_iter(),
            &why,
        );
        return None;
    }
    // Keep the view flusher off sled while this group is checked: sled's batches lock out
    // every read, and this thread is the ledger's critical path.
    let gate = shared.views.read_gate();
    let _gate = FairGuard(gate.as_ref().map(|g| g.read()));
    // The groups not yet durable, oldest first. One that becomes durable meanwhile stays
    // readable here; one already gone from the list is in the views and the tree.
    let in_flight: Vec<Arc<InFlight>> = shared
        .in_flight
        .lock()
        .map(|q| q.iter().cloned().collect())
        .unwrap_or_default();
    let base = w.next;
    let mut prev_hash = w.prev_hash;
    let mut last_time = w.last_time;
    let mut v = Views::staged(
        shared.views.as_ref(),
        in_flight.iter().map(|g| &g.overlay).collect(),
    );
    let mut pending: Vec<PendingLeaf> = Vec::new();
    let mut deferred: Vec<Equivocation> = Vec::new();
    let mut outcomes: Vec<Vec<Outcome>> = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut out = Vec::with_capacity(job.items.len());
        for item in job.items {
            let o = match item {
                Err(r) => Outcome::Refused(r),
                Ok(p) => {
                    let index = base + pending.len() as u64;
                    let t = now_ms().max(last_time);
                    let mut g = GroupCtx {
                        pending: &pending,
                        base,
                        in_flight: &in_flight,
                        evidence: &mut deferred,
                    };
                    v.begin();
                    let admitted = admit(shared, &mut v, &mut g, &p, index, t);
                    if matches!(admitted, Ok(Admitted::New)) {
                        v.commit();
                    } else {
                        v.rollback();
                    }
                    match admitted {
                        Ok(Admitted::New) => {
                            let leaf = Leaf {
                                index,
                                integrated_time_ms: t,
                                prev_leaf_hash: prev_hash,
                                body: p.body_bytes,
                                signature: p.signature,
                                cosignatures: p.cosignatures,
                            };
                            let bytes = leaf.encode();
                            let hash = codec::leaf_hash(&bytes);
                            prev_hash = hash;
                            last_time = t;
                            pending.push(PendingLeaf { leaf, bytes, hash });
                            Outcome::New(index)
                        }
                        Ok(Admitted::Duplicate(i)) => Outcome::Duplicate(i),
                        Err(r) => Outcome::Refused(r),
                    }
                }
            };
            out.push(o);
        }
        outcomes.push(out);
        replies.push(job.reply);
    }
    let mut staged = Staged {
        base,
        written: None,
        sync: None,
        failure: None,
        outcomes,
        replies,
        deferred,
        last_time,
    };
    if pending.is_empty() {
        return Some(staged);
    }
    let frames: Vec<(&[u8], Hash)> = pending
        .iter()
        .map(|p| (p.bytes.as_slice(), p.hash))
        .collect();
    let written = w.log.write(&frames);
    drop(frames);
    match written {
        Ok(locations) => {
            let entries: Vec<EntryView> = pending
                .iter()
                .zip(&locations)
                .map(|(p, loc)| EntryView {
                    location: *loc,
                    leaf_hash: p.hash,
                })
                .collect();
            if let Err(e) = v.push_entries(base, &entries) {
                // The entry index disagrees with the log: an internal fault. The group may yet
                // reach the disk, so stop taking writes until a restart replays the log.
                poison(shared, format!("entry index: {e}"));
                staged.failure = Some(Refusal::internal(format!("entry index: {e}")));
                return Some(staged);
            }
            let overlay = v.into_overlay(&w.log.end());
            let g = Arc::new(InFlight {
                base,
                leaves: pending,
                locations,
                overlay,
            });
            if let Ok(mut q) = shared.in_flight.lock() {
                q.push_back(g.clone());
            }
            w.next = base + g.leaves.len() as u64;
            w.prev_hash = prev_hash;
            w.last_time = last_time;
            staged.written = Some(g);
            staged.sync = Some(w.log.sync_handle());
        }
        Err(e) => {
            tracing::error!(error = %e, "group write failed; nothing in it is acknowledged");
            staged.failure = Some(Refusal::from(e));
            // A segment roll may have left part of the group durable: reopen to learn.
            if w.log.end().entries != base {
                poison(
                    shared,
                    "a partly written group needs a restart to be replayed".into(),
                );
            }
        }
    }
    Some(staged)
}

/// The threads that check signatures ahead of the writer: one per core, each at the lowest
/// scheduling priority (nice 19). Signature checks are most of ingest's CPU and can wait; the
/// writer, the sync thread, the view flusher and the network cannot without stalling the whole
/// pipeline. At equal priority the writer got a fair share among up to 16 verifying threads
/// and, with every record already checked, finished the backlog alone on a half-idle machine
/// (docs/performance.md). `None` if the pool could not be started: records are then checked on
/// the caller's thread.
pub fn verify_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
            )
            .thread_name(|i| format!("taizhang-verify-{i}"))
            .start_handler(|_| lowest_priority("verify"))
            .build()
            .map_err(|e| tracing::warn!(error = %e, "no verify pool"))
            .ok()
    })
    .as_ref()
}

/// Puts the calling thread at the lowest scheduling priority (nice 19), for background work
/// (`what`) that must not take the cores from the writer, the sync thread or queries.
fn lowest_priority(what: &str) {
    if let Err(e) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::warn!(error = ?e, "the {what} thread keeps its priority");
    }
}

/// Holds the view store's read gate; on drop, hands it to whoever waits for it (the flusher)
/// before this thread can take it again.
struct FairGuard<'a>(Option<parking_lot::RwLockReadGuard<'a, ()>>);

impl Drop for FairGuard<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            parking_lot::RwLockReadGuard::unlock_fair(g);
        }
    }
}

/// The background check of the log (see [`Ledger::scrub`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scrub {
    Running,
    /// Frames checked, all sound.
    Done(u64),
    /// What was found.
    Failed(String),
}

fn run_scrub(shared: std::sync::Weak<Shared>, dir: PathBuf, upto: Position) {
    // A re-read of the whole log: it may take a core for seconds after a start, and queries
    // and ingest come first (proofs' 99th percentile went from ~22 µs to ~260 µs beside it).
    lowest_priority("scrub");
    let started = std::time::Instant::now();
    // Each complete run is checked against what the entry index holds for it in memory: its
    // leaf hashes make its root, and it starts where the index says. No run is read from the
    // log a second time, and the run cache proofs use is left alone. The entries after the
    // last complete run are checked one by one (they are in memory too). Stops (as a failure
    // nobody will see) once the ledger is gone.
    let mut run: Vec<(Hash, Location)> = Vec::with_capacity(views::RUN as usize);
    let result = SegmentLog::scrub(&dir, &upto, |i, hash, location| {
        let s = shared.upgrade().ok_or("the ledger closed")?;
        run.push((*hash, location));
        let first = i + 1 - run.len() as u64;
        if run.len() as u64 == views::RUN {
            let hashes: Vec<Hash> = run.iter().map(|(h, _)| *h).collect();
            // A run's start is kept without the leaf's length (`views::RunView`).
            let place = |l: Location| (l.segment, l.offset);
            let found = (
                merkle::root_from_leaves::<Blake3Hasher>(&hashes),
                place(run[0].1),
            );
            let held = s
                .read
                .read()
                .ok()
                .and_then(|r| r.index.run_root_and_start(i / views::RUN))
                .map(|(root, start)| (root, place(start)));
            run.clear();
            if held != Some(found) {
                return Err(format!(
                    "entry {first} to entry {i}: their leaf hashes and place in the log are not \
                     the root and start the views' entry index holds for their run"
                ));
            }
        } else if i + 1 == upto.entries {
            for (e, found) in (first..).zip(&run) {
                let held = s
                    .indexed(|_, n| n.leaf(e).zip(n.location(e)))
                    .ok()
                    .flatten();
                if held.as_ref() != Some(found) {
                    return Err(format!(
                        "entry {e}: its leaf hash or place in the log differs from the views' \
                         entry index"
                    ));
                }
            }
        }
        Ok(())
    });
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let state = match result {
        Ok(n) => {
            tracing::info!(
                frames = n,
                secs = started.elapsed().as_secs_f64(),
                "log scrub: sound"
            );
            Scrub::Done(n)
        }
        Err(e) => {
            let why = format!("data loss: the background check of the log found {e}");
            poison(&shared, why.clone());
            Scrub::Failed(why)
        }
    };
    if let Ok(mut s) = shared.scrub.write() {
        *s = state;
    };
}

fn poison(shared: &Shared, why: String) {
    tracing::error!(%why, "ledger stops taking writes");
    if let Ok(mut p) = shared.poisoned.write() {
        if p.is_none() {
            *p = Some(why);
        }
    }
}

/// The syncer's own state.
struct Syncer {
    /// When the kept checkpoint file was last replaced, and whether a newer note exists.
    kept_at: Option<std::time::Instant>,
    kept_stale: bool,
}

/// Makes staged groups durable — everything queued at once, with one `fdatasync` — then
/// applies them to the views and the tree, signs one checkpoint and answers every record.
fn run_syncer(shared: Arc<Shared>, rx: std::sync::mpsc::Receiver<ToSync>) {
    let mut s = Syncer {
        kept_at: None,
        kept_stale: false,
    };
    let mut close = None;
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                ToSync::Group(g) => batch.push(g),
                ToSync::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            next = rx.try_recv().ok();
        }
        finish_batch(&shared, &mut s, batch);
        if close.is_some() {
            break;
        }
    }
    if let Err(e) = shared.views.flush() {
        tracing::warn!(error = %e, "flushing views at close");
    }
    if s.kept_stale {
        if let Ok(r) = shared.read.read() {
            if let Err(e) = persist_checkpoint(&shared.checkpoint_path, &r.checkpoint) {
                tracing::warn!(error = %e, "keeping the latest checkpoint");
            }
        }
    }
    if let Some(done) = close {
        let _ = done.send(());
    }
}

fn finish_batch(shared: &Arc<Shared>, s: &mut Syncer, batch: Vec<Staged>) {
    // Durability first: one fdatasync per segment file the batch wrote to (almost always one).
    let mut failure: Option<Refusal> = shared
        .poisoned
        .read()
        .ok()
        .and_then(|p| p.clone())
        .map(|why| Refusal::unavailable(format!("ledger is refusing writes: {why}")));
    if failure.is_none() {
        let mut synced: Vec<&SyncHandle> = Vec::new();
        for h in batch.iter().filter_map(|g| g.sync.as_ref()) {
            if synced.iter().any(|d| d.same_file(h)) {
                continue;
            }
            if let Err(e) = h.sync() {
                // After a failed fdatasync the page cache no longer says what is on disk
                // (the kernel may have dropped the dirty pages): stop, and let a restart
                // read back what really is there.
                poison(shared, format!("fdatasync failed: {e}"));
                failure = Some(Refusal::from(e));
                break;
            }
            synced.push(h);
        }
    }
    let written: Vec<&Arc<InFlight>> = batch.iter().filter_map(|g| g.written.as_ref()).collect();
    if failure.is_none() {
        // The entries these forks conflict with are durable now (in this batch or before).
        for g in &batch {
            for e in &g.deferred {
                if let Err(r) = record_evidence(shared, e) {
                    tracing::error!(error = %r, "recording equivocation evidence");
                }
            }
        }
    }
    if failure.is_none() && !written.is_empty() {
        // The tree first, then the views: a query that finds an entry in the views can
        // always prove it.
        let mut new_size = None;
        if let Ok(mut r) = shared.read.write() {
            for g in &written {
                for (p, loc) in g.leaves.iter().zip(&g.locations) {
                    r.index.push(p.hash, *loc);
                }
            }
            if let Some(t) = batch
                .iter()
                .filter(|g| g.written.is_some())
                .map(|g| g.last_time)
                .max()
            {
                r.last_time_ms = r.last_time_ms.max(t);
            }
            let size = r.index.size();
            match sign_checkpoint(
                &Checkpoint {
                    origin: shared.genesis.origin.clone(),
                    size,
                    root: r.index.root(),
                    extensions: vec![],
                },
                &shared.note_signer,
            ) {
                Ok(note) => {
                    if s.kept_at
                        .is_none_or(|t| t.elapsed() >= KEEP_CHECKPOINT_EVERY)
                    {
                        if let Err(e) = persist_checkpoint(&shared.checkpoint_path, &note) {
                            tracing::warn!(error = %e, "keeping the latest checkpoint");
                        }
                        s.kept_at = Some(std::time::Instant::now());
                        s.kept_stale = false;
                    } else {
                        s.kept_stale = true;
                    }
                    r.checkpoint = note;
                    r.checkpoint_size = size;
                }
                Err(e) => {
                    // Receipts need a checkpoint covering their entries: stop taking writes.
                    poison(shared, format!("signing a checkpoint failed: {e}"));
                }
            }
            drop(r);
            new_size = Some(size);
        }
        for g in &written {
            let changes: crate::store::ViewBatch = g
                .overlay
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Err(e) = shared.views.apply(changes) {
                // Entries are durable but the views missed them: refuse further writes
                // until a restart replays the tail into the views.
                poison(
                    shared,
                    format!("view store failed after a durable append: {e}"),
                );
            }
        }
        if let Some(size) = new_size {
            // send_replace: `send` would drop the value while nobody is watching.
            shared.size_tx.send_replace(size);
        }
    }
    // The batch's groups are in the views and the tree now (or never will be): the writer
    // stops looking for them in flight.
    if !written.is_empty() {
        if let Ok(mut q) = shared.in_flight.lock() {
            for g in &written {
                if q.front().is_some_and(|f| Arc::ptr_eq(f, g)) {
                    q.pop_front();
                }
            }
        }
    }
    // Receipts, only for entries the signed tree holds.
    let Ok(r) = shared.read.read() else { return };
    let durable = r.checkpoint_size;
    for g in batch {
        let own_failure = g.failure.clone();
        for (out, reply) in g.outcomes.into_iter().zip(g.replies) {
            let results = out
                .into_iter()
                .map(|o| {
                    let (i, dup) = match o {
                        Outcome::Refused(r) => return Err(r),
                        Outcome::New(i) => (i, false),
                        Outcome::Duplicate(i) => (i, true),
                    };
                    // A group whose write failed had its indices reused by the next group.
                    if let Some(f) = own_failure.as_ref().filter(|_| i >= g.base) {
                        return Err(f.clone());
                    }
                    if i >= durable {
                        return Err(failure.clone().unwrap_or_else(|| {
                            Refusal::unavailable("the entry did not become durable".into())
                        }));
                    }
                    let leaf = g
                        .written
                        .as_ref()
                        .filter(|_| !dup)
                        .and_then(|w| w.leaf(i))
                        .map(|p| &p.leaf);
                    receipt(shared, &r, i, dup, leaf)
                })
                .collect();
            let _ = reply.send(results);
        }
    }
}

fn receipt(
    shared: &Shared,
    r: &ReadState,
    index: u64,
    duplicate: bool,
    leaf: Option<&Leaf>,
) -> Result<Receipt, Refusal> {
    // The sync thread reads runs in place: it is the only thread that waits for the write lock.
    let nodes = Nodes::fetching(&r.index, &shared.reader);
    let (integrated_time_ms, prev_leaf_hash) = match leaf {
        Some(l) => (l.integrated_time_ms, l.prev_leaf_hash),
        None => {
            let loc = nodes
                .location(index)
                .ok_or_else(|| Refusal::internal("location".into()))?;
            let (bytes, _) = shared.reader.read(loc)?;
            let l = Leaf::decode(&bytes)
                .map_err(|e| Refusal::new(Code::DataLoss, format!("entry {index}: {e}")))?;
            (l.integrated_time_ms, l.prev_leaf_hash)
        }
    };
    let size = r.checkpoint_size;
    let proof = merkle::inclusion_proof::<Blake3Hasher, _>(&nodes, index, size)
        .map_err(|e| Refusal::internal(e.to_string()))?;
    Ok(Receipt {
        index,
        leaf_hash: nodes
            .leaf(index)
            .ok_or_else(|| Refusal::internal("leaf".into()))?,
        integrated_time_ms,
        prev_leaf_hash,
        checkpoint: r.checkpoint.clone(),
        tree_size: size,
        inclusion_proof: proof,
        duplicate,
    })
}

enum Admitted {
    New,
    Duplicate(u64),
}

/// The writer's checks for one prepared record, in DESIGN §5 order.
/// The group being assembled, as `admit` sees it.
struct GroupCtx<'a> {
    pending: &'a [PendingLeaf],
    base: u64,
    /// Earlier groups written but not yet durable, oldest first.
    in_flight: &'a [Arc<InFlight>],
    /// Equivocation evidence against entries not yet durable: written once this group is.
    evidence: &'a mut Vec<Equivocation>,
}

impl GroupCtx<'_> {
    /// Entries from this index on are not yet durable.
    fn durable_end(&self) -> u64 {
        self.in_flight.first().map_or(self.base, |g| g.base)
    }

    /// An entry of this group or of one in flight.
    fn not_durable(&self, index: u64) -> Option<&PendingLeaf> {
        if index >= self.base {
            return self.pending.get((index - self.base) as usize);
        }
        self.in_flight.iter().find_map(|g| g.leaf(index))
    }
}

/// Entry `i`, from a group not yet durable or from the log.
fn leaf_at(shared: &Shared, g: &GroupCtx<'_>, i: u64) -> Result<Leaf, Refusal> {
    if let Some(p) = g.not_durable(i) {
        return Ok(p.leaf.clone());
    }
    let loc = shared
        .indexed(|_, n| n.location(i))?
        .ok_or_else(|| Refusal::internal(format!("no location for entry {i}")))?;
    Leaf::decode(&shared.reader.read(loc)?.0)
        .map_err(|e| Refusal::new(Code::DataLoss, format!("entry {i}: {e}")))
}

fn admit(
    shared: &Shared,
    v: &mut Views<'_>,
    g: &mut GroupCtx<'_>,
    p: &Prepared,
    index: u64,
    now: u64,
) -> Result<Admitted, Refusal> {
    let key_info: KeyInfo = v.get(&key::key(&p.signer))?.ok_or_else(|| {
        Refusal::unauthenticated(format!(
            "body.signer: key {} is not registered on this ledger",
            p.signer
        ))
    })?;
    let head = v.head(&p.signer)?;
    let seq = p.body.signer_seq;
    // Signature (precomputed when the key was known at prepare time).
    let sig = || -> Result<(), Refusal> {
        match &p.sig_checked {
            Some(r) => r.clone(),
            None => {
                let vk = VerifyingKey::from_bytes(&key_info.public_key)
                    .map_err(|_| Refusal::internal("stored key".into()))?;
                crypto::verify_record(&vk, &p.body_bytes, &p.signature).map_err(|e| {
                    Refusal::unauthenticated(format!("record.{e} for key {}", p.signer))
                })
            }
        }
    };
    if seq < head.next_seq {
        let held: u64 = v
            .signer_seq_index(&p.signer, seq)?
            .ok_or_else(|| Refusal::internal(format!("no entry for {} seq {seq}", p.signer)))?;
        let held_leaf = leaf_at(shared, g, held)?;
        // A retry is answered before the key's role and validity are judged again: the entry
        // was valid when recorded, and a client that lost its receipt (say, to a crash) must be
        // able to get it even after the key expired or was revoked.
        if held_leaf.body == p.body_bytes {
            if held_leaf.signature == p.signature && held_leaf.cosignatures == p.cosignatures {
                return Ok(Admitted::Duplicate(held));
            }
            return Err(Refusal::already_exists(format!(
                "record: entry {held} already holds this body, with other signatures or cosignatures"
            )));
        }
        // A different body at a used seq: keep it as evidence if the key really signed it —
        // once the entry it conflicts with is durable (it may be in this very group).
        sig()?;
        if held >= g.durable_end() {
            g.evidence.push(evidence_of(p, held, now));
        } else {
            record_evidence(shared, &evidence_of(p, held, now))?;
        }
        return Err(Refusal::already_exists(format!(
            "body.signer_seq: seq {seq} of key {} is already used by entry {held} with a different body; the conflicting record is kept as equivocation evidence",
            p.signer
        )));
    }
    rules::check_signer(&key_info, &p.signer, &p.payload, now)?;
    if seq > head.next_seq {
        return Err(Refusal::precondition(format!(
            "body.signer_seq: {seq} leaves a gap; key {} must submit seq {} next",
            p.signer, head.next_seq
        )));
    }
    if p.body.signer_prev.as_slice() != head.prev_body_hash {
        return Err(Refusal::precondition(format!(
            "body.signer_prev: does not match the hash of key {}'s previous body (seq {})",
            p.signer,
            seq.wrapping_sub(1)
        )));
    }
    sig()?;
    for (i, c) in p.cosignatures.iter().enumerate() {
        let ck: KeyInfo = v.get(&key::key(&c.key_id))?.ok_or_else(|| {
            Refusal::unauthenticated(format!(
                "record.cosignatures[{i}].key_id: key {} is not registered",
                c.key_id
            ))
        })?;
        if ck.revoked_at_ms.is_some_and(|t| t <= now)
            || now < ck.not_before_ms
            || (ck.not_after_ms != 0 && now >= ck.not_after_ms)
        {
            return Err(Refusal::permission_denied(format!(
                "record.cosignatures[{i}].key_id: key {} is revoked or not valid now",
                c.key_id
            )));
        }
        if c.key_id == p.signer {
            return Err(Refusal::invalid(format!(
                "record.cosignatures[{i}].key_id: the signer cannot cosign its own record"
            )));
        }
        let vk = VerifyingKey::from_bytes(&ck.public_key)
            .map_err(|_| Refusal::internal("stored key".into()))?;
        crypto::verify_cosignature(&vk, &p.body_bytes, &c.signature)
            .map_err(|e| Refusal::unauthenticated(format!("record.cosignatures[{i}]: {e}")))?;
    }
    let pending_hash = |i: u64| -> Option<Hash> {
        if i >= g.durable_end() {
            g.not_durable(i).map(|p| p.hash)
        } else {
            shared.indexed(|_, n| n.leaf(i)).ok().flatten()
        }
    };
    let leaf_of = |i: u64| leaf_at(shared, g, i);
    let cosigners: Vec<KeyId> = p.cosignatures.iter().map(|c| c.key_id).collect();
    let ctx = rules::Ctx {
        origin: &shared.genesis.origin,
        catalogue: &shared.catalogue,
        index,
        now_ms: now,
        leaf_hash: &pending_hash,
        leaf_of: &leaf_of,
        cosigners: &cosigners,
        two_person: Some(&shared.two_person),
    };
    admit_rules(
        &ctx,
        v,
        RecordRef {
            signer: &p.signer,
            key_info: &key_info,
            body: &p.body,
            body_bytes: &p.body_bytes,
            payload: &p.payload,
        },
        Some(head),
    )?;
    Ok(Admitted::New)
}

fn evidence_of(p: &Prepared, held: u64, now: u64) -> Equivocation {
    Equivocation {
        key_id: p.signer,
        signer_seq: p.body.signer_seq,
        entry_index: held,
        conflicting: Submission {
            body: p.body_bytes.clone(),
            signature: p.signature.to_vec(),
            cosignatures: p
                .cosignatures
                .iter()
                .map(|c| (c.key_id.0.to_vec(), c.signature.to_vec()))
                .collect(),
        },
        observed_ms: now,
    }
}

fn record_evidence(shared: &Shared, e: &Equivocation) -> Result<(), Refusal> {
    let name = format!(
        "{}-{:020}-{}.evidence",
        e.key_id,
        e.signer_seq,
        &hex::encode(crypto::body_hash(&e.conflicting.body))[..16]
    );
    let path = shared.evidence_dir.join(&name);
    if path.exists() {
        return Ok(());
    }
    let bytes = encode_evidence(e);
    let tmp = shared.evidence_dir.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&shared.evidence_dir)?.sync_all()
    };
    write().map_err(|e| Refusal::unavailable(format!("recording equivocation evidence: {e}")))
}

fn encode_evidence(e: &Equivocation) -> Vec<u8> {
    use prost::Message;
    pb::Equivocation {
        key_id: e.key_id.0.to_vec(),
        signer_seq: e.signer_seq,
        entry_index: e.entry_index,
        conflicting: Some(pb::SignedRecord {
            body: e.conflicting.body.clone(),
            signature: e.conflicting.signature.clone(),
            cosignatures: e
                .conflicting
                .cosignatures
                .iter()
                .map(|(k, s)| pb::Cosignature {
                    key_id: k.clone(),
                    signature: s.clone(),
                })
                .collect(),
        }),
        observed_ms: e.observed_ms,
    }
    .encode_to_vec()
}

fn decode_evidence(bytes: &[u8]) -> Option<Equivocation> {
    use prost::Message;
    let m = pb::Equivocation::decode(bytes).ok()?;
    let c = m.conflicting?;
    Some(Equivocation {
        key_id: KeyId::from_slice("key_id", &m.key_id).ok()?,
        signer_seq: m.signer_seq,
        entry_index: m.entry_index,
        conflicting: Submission {
            body: c.body,
            signature: c.signature,
            cosignatures: c
                .cosignatures
                .into_iter()
                .map(|x| (x.key_id, x.signature))
                .collect(),
        },
        observed_ms: m.observed_ms,
    })
}

/// Rebuilds the views of a data dir from its log (the server must not be running).
pub fn reindex(cfg: Config) -> Result<OpenReport, Refusal> {
    reindex_with_progress(cfg, &AtomicU64::new(0))
}

/// As [`reindex`], counting the entries replayed into `progress` as it goes.
pub fn reindex_with_progress(cfg: Config, progress: &AtomicU64) -> Result<OpenReport, Refusal> {
    // The lock first: a running server keeps it, and its views must not be touched.
    let lock = lock_data_dir(&cfg.data_dir)?;
    let views_dir = cfg.data_dir.join("views");
    if views_dir.exists() {
        std::fs::remove_dir_all(&views_dir)
            .map_err(|e| Refusal::unavailable(format!("removing {}: {e}", views_dir.display())))?;
    }
    let (ledger, mut report) = Ledger::open_locked(cfg, lock, Some(progress))?;
    report.views_rebuilt = true;
    ledger.shared.views.flush()?;
    Ok(report)
}

/// About how many view keys a replay of the whole log writes: a generous bound from the log's
/// size (an entry is ~280 bytes and writes ~1 key of its own; shared keys are rewritten).
fn expected_view_keys(log_dir: &Path) -> usize {
    let bytes: u64 = std::fs::read_dir(log_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    usize::try_from(bytes / 128).unwrap_or(usize::MAX)
}

/// Path helpers for a data dir.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

#[cfg(test)]
mod tests {
    /// This thread's nice value, from `/proc/thread-self/stat` (Linux).
    fn nice() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .expect("fields")
            .split_whitespace()
            .collect();
        // Field 19 of stat (nice) is at 16 after the command name.
        fields[16].parse().expect("nice")
    }

    #[test]
    fn background_threads_run_at_the_lowest_priority() {
        let (mine, theirs) = std::thread::scope(|s| {
            let mine = nice();
            let theirs = s
                .spawn(|| {
                    super::lowest_priority("test");
                    nice()
                })
                .join()
                .unwrap();
            (mine, theirs)
        });
        assert_eq!(theirs, 19);
        assert_eq!(nice(), mine, "only the thread that asked");
    }

    #[test]
    fn signatures_are_checked_below_the_callers_priority() {
        let pool = super::verify_pool().expect("the verify pool starts");
        let mine = nice();
        let theirs = pool.install(nice);
        assert_eq!(theirs, 19, "verify threads run at the lowest priority");
        assert_eq!(nice(), mine, "the caller keeps its own priority");
        let names: Vec<String> = pool.install(|| {
            use rayon::prelude::*;
            (0..64)
                .into_par_iter()
                .map(|_| std::thread::current().name().unwrap_or("").to_string())
                .collect()
        });
        assert!(
            names.iter().all(|n| n.starts_with("taizhang-verify-")),
            "{names:?}"
        );
    }
}
