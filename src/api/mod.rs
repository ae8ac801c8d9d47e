//! The gRPC layer: tonic services over the ledger (`taizhang.v1.Ledger`, and in `audit` the
//! inspectors' `taizhang.v1.Audit`). The only place that converts service
//! messages to and from domain types, and the one place a `Refusal` becomes a `Status`.

pub mod audit;
pub mod auth;
pub mod coalesce;
pub mod metrics;
pub mod witness;
pub mod witnessing;

use crate::audit::access::Access;
use crate::crypto::KeyId;
use crate::ledger::{Code, Ledger, Receipt, Refusal, Submission};
use crate::pb::{self, ledger_server::LedgerServer};
use std::net::SocketAddr;
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Largest gRPC message accepted (a batch of records).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Most records in one `SubmitBatch`.
pub const MAX_BATCH: usize = 10_000;

/// Maps a ledger refusal to a gRPC status (the single mapping point).
pub fn status(r: Refusal) -> Status {
    let code = match r.code {
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::Unauthenticated => tonic::Code::Unauthenticated,
        Code::AlreadyExists => tonic::Code::AlreadyExists,
        Code::NotFound => tonic::Code::NotFound,
        Code::OutOfRange => tonic::Code::OutOfRange,
        Code::Unimplemented => tonic::Code::Unimplemented,
        Code::DataLoss => tonic::Code::DataLoss,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::Internal => tonic::Code::Internal,
    };
    Status::new(code, r.message)
}

fn receipt_pb(r: Receipt) -> pb::Receipt {
    pb::Receipt {
        index: r.index,
        leaf_hash: r.leaf_hash.to_vec(),
        integrated_time_ms: r.integrated_time_ms,
        prev_leaf_hash: r.prev_leaf_hash.to_vec(),
        checkpoint: r.checkpoint,
        tree_size: r.tree_size,
        inclusion_proof: r.inclusion_proof.iter().map(|h| h.to_vec()).collect(),
        duplicate: r.duplicate,
    }
}

fn submission(r: Option<pb::SignedRecord>) -> Result<Submission, Refusal> {
    let r = r.ok_or_else(|| Refusal::invalid("record: is required".into()))?;
    Ok(Submission {
        body: r.body,
        signature: r.signature,
        cosignatures: r
            .cosignatures
            .into_iter()
            .map(|c| (c.key_id, c.signature))
            .collect(),
    })
}

fn result_pb(r: Result<Receipt, Refusal>) -> pb::SubmitResult {
    pb::SubmitResult {
        result: Some(match r {
            Ok(r) => pb::submit_result::Result::Receipt(receipt_pb(r)),
            Err(e) => {
                let s = status(e);
                pb::submit_result::Result::Refusal(pb::Refusal {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                })
            }
        }),
    }
}

fn entry_pb(index: u64, leaf: Vec<u8>, hash: [u8; 32]) -> pb::Entry {
    pb::Entry {
        index,
        leaf,
        leaf_hash: hash.to_vec(),
        redacted: false,
    }
}

/// Entry `index` as `access` may see it: whole, or only its index and leaf hash.
fn entry_for(ledger: &Ledger, access: &Access, index: u64) -> Result<pb::Entry, Status> {
    let (leaf, hash) = ledger.entry(index).map_err(status)?;
    // A national reader sees everything: no snapshot (and no read gate) per exported entry.
    if access.is_all()
        || access
            .covers_entry(ledger, ledger.snapshot().as_ref(), index)
            .map_err(status)?
    {
        Ok(entry_pb(index, leaf, hash))
    } else {
        Ok(pb::Entry {
            index,
            leaf: Vec::new(),
            leaf_hash: hash.to_vec(),
            redacted: true,
        })
    }
}

/// Whether `caller` may read the chain head and evidence of key `id`: its own, its
/// enterprise's, or (for officials) a key registered inside its jurisdiction.
fn may_read_key(ledger: &Ledger, caller: &auth::Caller, id: &KeyId) -> Result<(), Status> {
    if caller.access.is_all() || caller.key == *id {
        return Ok(());
    }
    let info = ledger.key_info(id).map_err(status)?;
    let snap = ledger.snapshot();
    let ok = match &info {
        None => false,
        Some(k) if !k.enterprise.is_empty() => caller
            .access
            .covers_enterprise(snap.as_ref(), &k.enterprise)
            .map_err(status)?,
        Some(k) => !k.jurisdiction.is_empty() && caller.access.covers_jurisdiction(&k.jurisdiction),
    };
    if ok {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "key_id: {id} is not a key of your enterprise or jurisdiction"
        )))
    }
}

/// The `taizhang.v1.Ledger` service.
#[derive(Clone)]
pub struct LedgerService {
    ledger: Ledger,
    gate: std::sync::Arc<auth::Gate>,
    metrics: metrics::Metrics,
}

impl LedgerService {
    pub fn new(
        ledger: Ledger,
        gate: std::sync::Arc<auth::Gate>,
        metrics: metrics::Metrics,
    ) -> Self {
        LedgerService {
            ledger,
            gate,
            metrics,
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::Receipt>, Status> {
        let started = std::time::Instant::now();
        let s = submission(req.into_inner().record)
            .map_err(status)
            .inspect_err(|e| self.metrics.refused_early(e))?;
        let r = self.ledger.submit(s).await;
        self.metrics.record(&r, started);
        Ok(Response::new(receipt_pb(r.map_err(status)?)))
    }

    async fn submit_batch(
        &self,
        req: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let started = std::time::Instant::now();
        let records = req.into_inner().records;
        if records.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "records: {} exceeds the batch limit of {MAX_BATCH}",
                records.len()
            )));
        }
        let subs: Vec<Submission> = records
            .into_iter()
            .map(|r| submission(Some(r)))
            .collect::<Result<_, _>>()
            .map_err(status)?;
        let results = self.ledger.submit_many(subs).await;
        for r in &results {
            self.metrics.record(r, started);
        }
        Ok(Response::new(pb::SubmitBatchResponse {
            results: results.into_iter().map(result_pb).collect(),
        }))
    }

    type SubmitStreamStream = BoxStream<pb::SubmitResult>;

    async fn submit_stream(
        &self,
        req: Request<Streaming<pb::SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        // Three stages, each in order: read chunks and prepare them in parallel (signatures on
        // all cores) → hand them to the writer in stream order → send results in stream order.
        let mut input = req.into_inner();
        let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<pb::SubmitResult, Status>>(1024);
        let (prep_tx, mut prep_rx) =
            tokio::sync::mpsc::channel::<Stage<tokio::task::JoinHandle<Prepped>>>(4);
        let (wait_tx, mut wait_rx) = tokio::sync::mpsc::channel::<Stage<Pending>>(64);
        let ledger = self.ledger.clone();
        tokio::spawn(async move {
            loop {
                let first = match input.next().await {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        let _ = prep_tx.send(Stage::Error(e)).await;
                        break;
                    }
                    None => break,
                };
                let mut failed = None;
                let mut bytes = record_bytes(&first);
                let mut chunk = vec![first];
                // Take what has already arrived, without waiting.
                while chunk.len() < STREAM_CHUNK && bytes < STREAM_CHUNK_BYTES {
                    match poll_now(&mut input) {
                        Some(Some(Ok(m))) => {
                            bytes += record_bytes(&m);
                            chunk.push(m);
                        }
                        Some(Some(Err(e))) => {
                            failed = Some(e);
                            break;
                        }
                        _ => break,
                    }
                }
                let n = chunk.len();
                let stop = failed.take();
                let subs: Vec<_> = chunk.into_iter().map(|m| submission(m.record)).collect();
                let l = ledger.clone();
                let h = tokio::task::spawn_blocking(move || l.prepare_all(subs));
                if prep_tx
                    .send(Stage::Chunk((n, std::time::Instant::now()), h))
                    .await
                    .is_err()
                {
                    break;
                }
                if let Some(e) = stop {
                    let _ = prep_tx.send(Stage::Error(e)).await;
                    break;
                }
            }
        });
        let ledger = self.ledger.clone();
        tokio::spawn(async move {
            while let Some(stage) = prep_rx.recv().await {
                let next = match stage {
                    Stage::Chunk((n, t), h) => {
                        let items = h.await.unwrap_or_else(|_| crate::ledger::panicked(n));
                        Stage::Chunk((n, t), Box::pin(ledger.enqueue(items).await) as Pending)
                    }
                    Stage::Error(e) => Stage::Error(e),
                };
                if wait_tx.send(next).await.is_err() {
                    break;
                }
            }
        });
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            while let Some(stage) = wait_rx.recv().await {
                match stage {
                    Stage::Chunk((_, started), results) => {
                        for r in results.await {
                            metrics.record(&r, started);
                            if out_tx.send(Ok(result_pb(r))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Stage::Error(e) => {
                        let _ = out_tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let caller = self.gate.check(&req, "/taizhang.v1.Ledger/GetEntry")?;
        let index = req.into_inner().index;
        let e = entry_for(&self.ledger, &caller.access, index)?;
        if e.redacted {
            return Err(Status::permission_denied(format!(
                "index: entry {index} is not one your key may read (an enterprise reads what it \
                 is party to, an official its jurisdiction)"
            )));
        }
        Ok(Response::new(e))
    }

    async fn get_checkpoint(
        &self,
        req: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        let (note, size, root) = if req.get_ref().witnessed {
            let (note, size) = self.ledger.witnessed().ok_or_else(|| {
                Status::failed_precondition(
                    "witnessed: no checkpoint has been witnessed yet (no witnesses configured, \
                     or too few of them have cosigned)",
                )
            })?;
            let root = crate::checkpoint::SignedNote::parse(&note)
                .ok()
                .and_then(|n| crate::checkpoint::Checkpoint::parse(&n.text).ok())
                .map(|c| c.root)
                .ok_or_else(|| Status::internal("witnessed note does not parse"))?;
            (note, size, root)
        } else {
            self.ledger.checkpoint().map_err(status)?
        };
        Ok(Response::new(pb::Checkpoint {
            note,
            size,
            root: root.to_vec(),
            origin: self.ledger.origin().to_string(),
            ledger_public_key: self.ledger.ledger_public_key().to_bytes().to_vec(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let r = req.into_inner();
        let (size, leaf, proof) = self
            .ledger
            .inclusion_proof(r.index, r.tree_size)
            .map_err(status)?;
        Ok(Response::new(pb::InclusionProof {
            index: r.index,
            tree_size: size,
            leaf_hash: leaf.to_vec(),
            hashes: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let r = req.into_inner();
        let (to, proof) = self
            .ledger
            .consistency_proof(r.from_size, r.to_size)
            .map_err(status)?;
        Ok(Response::new(pb::ConsistencyProof {
            from_size: r.from_size,
            to_size: to,
            hashes: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_signer_head(
        &self,
        req: Request<pb::GetSignerHeadRequest>,
    ) -> Result<Response<pb::SignerHead>, Status> {
        let caller = self.gate.check(&req, "/taizhang.v1.Ledger/GetSignerHead")?;
        let id = KeyId::from_slice("key_id", &req.into_inner().key_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        may_read_key(&self.ledger, &caller, &id)?;
        let h = self.ledger.signer_head(&id).map_err(status)?;
        Ok(Response::new(pb::SignerHead {
            key_id: id.0.to_vec(),
            next_seq: h.next_seq,
            prev_body_hash: h.prev_body_hash.to_vec(),
            last_index: h.last_index,
            enterprise: self
                .ledger
                .key_info(&id)
                .map_err(status)?
                .map(|k| k.enterprise)
                .unwrap_or_default(),
        }))
    }

    async fn get_equivocations(
        &self,
        req: Request<pb::GetEquivocationsRequest>,
    ) -> Result<Response<pb::GetEquivocationsResponse>, Status> {
        let caller = self
            .gate
            .check(&req, "/taizhang.v1.Ledger/GetEquivocations")?;
        let id = KeyId::from_slice("key_id", &req.into_inner().key_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        may_read_key(&self.ledger, &caller, &id)?;
        let list = self.ledger.equivocations(&id).map_err(status)?;
        Ok(Response::new(pb::GetEquivocationsResponse {
            equivocations: list
                .into_iter()
                .map(|e| pb::Equivocation {
                    key_id: e.key_id.0.to_vec(),
                    signer_seq: e.signer_seq,
                    entry_index: e.entry_index,
                    conflicting: Some(pb::SignedRecord {
                        body: e.conflicting.body,
                        signature: e.conflicting.signature,
                        cosignatures: e
                            .conflicting
                            .cosignatures
                            .into_iter()
                            .map(|(k, s)| pb::Cosignature {
                                key_id: k,
                                signature: s,
                            })
                            .collect(),
                    }),
                    observed_ms: e.observed_ms,
                })
                .collect(),
        }))
    }

    type ExportEntriesStream = BoxStream<pb::Entry>;

    async fn export_entries(
        &self,
        req: Request<pb::ExportEntriesRequest>,
    ) -> Result<Response<Self::ExportEntriesStream>, Status> {
        let access = self
            .gate
            .check(&req, "/taizhang.v1.Ledger/ExportEntries")?
            .access;
        let r = req.into_inner();
        let (_, size, _) = self.ledger.checkpoint().map_err(status)?;
        let to = if r.to == 0 {
            size
        } else {
            r.to.min(self.ledger.size())
        };
        if r.from > to {
            return Err(Status::out_of_range(format!(
                "from: {} is beyond to {to}",
                r.from
            )));
        }
        let ledger = self.ledger.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::task::spawn_blocking(move || {
            for i in r.from..to {
                let item = entry_for(&ledger, &access, i);
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type WatchEntriesStream = BoxStream<pb::Entry>;

    async fn watch_entries(
        &self,
        req: Request<pb::WatchEntriesRequest>,
    ) -> Result<Response<Self::WatchEntriesStream>, Status> {
        let access = self
            .gate
            .check(&req, "/taizhang.v1.Ledger/WatchEntries")?
            .access;
        let mut next = req.into_inner().from;
        let ledger = self.ledger.clone();
        let mut size_rx = ledger.subscribe_size();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let size = *size_rx.borrow_and_update();
                while next < size {
                    let item = entry_for(&ledger, &access, next);
                    if tx.send(item).await.is_err() {
                        return;
                    }
                    next += 1;
                }
                if size_rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Most records a stream hands to the writer as one job.
const STREAM_CHUNK: usize = 1024;
/// A stream's job closes once its records pass this many bytes.
const STREAM_CHUNK_BYTES: usize = 8 << 20;

fn record_bytes(m: &pb::SubmitRequest) -> usize {
    m.record.as_ref().map_or(0, |r| {
        r.body.len() + r.signature.len() + 88 * r.cosignatures.len()
    })
}

type Prepped = Vec<Result<crate::ledger::Prepared, Refusal>>;
type Pending = Pin<Box<dyn std::future::Future<Output = Vec<Result<Receipt, Refusal>>> + Send>>;

/// A stage of the streaming pipeline: a chunk of `n` records (and when it arrived), or the
/// input stream's error.
enum Stage<T> {
    Chunk((usize, std::time::Instant), T),
    Error(Status),
}

/// Polls a stream once without waiting: `Some(item)` if one is ready.
fn poll_now<S: Stream + Unpin>(s: &mut S) -> Option<Option<S::Item>> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match Pin::new(s).poll_next(&mut cx) {
        std::task::Poll::Ready(x) => Some(x),
        std::task::Poll::Pending => None,
    }
}

/// Serves the ledger, the audit service, health and reflection on `listener` until `shutdown`
/// resolves, with default audit settings.
pub async fn serve(
    ledger: Ledger,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    serve_with(
        ledger,
        listener,
        shutdown,
        crate::audit::AuditConfig::default(),
    )
    .await
}

/// As [`serve`], with the audit settings given.
pub async fn serve_with(
    ledger: Ledger,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    audit_cfg: crate::audit::AuditConfig,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    serve_opts(
        ledger,
        listener,
        shutdown,
        ServeOptions {
            audit: audit_cfg,
            ..ServeOptions::default()
        },
    )
    .await
}

/// Most connections served at once by default; more are closed as soon as they are accepted.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The HTTP/2 connection preface: the first bytes every client must send.
const PREFACE_LEN: usize = 24;

/// A TCP connection that holds one of the server's connection slots while it is open, and is
/// closed if its first [`PREFACE_LEN`] bytes do not arrive before a deadline (slow-loris).
struct Slot {
    stream: coalesce::Coalesce<tokio::net::TcpStream>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// Until the preface has arrived.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    seen: usize,
}

impl tonic::transport::server::Connected for Slot {
    type ConnectInfo = <tokio::net::TcpStream as tonic::transport::server::Connected>::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.get_ref().connect_info()
    }
}

impl tokio::io::AsyncRead for Slot {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(d) = self.deadline.as_mut() {
            if std::future::Future::poll(d.as_mut(), cx).is_ready() {
                return std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no connection preface in time",
                )));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if r.is_ready() {
            self.seen += buf.filled().len() - before;
            if self.seen >= PREFACE_LEN {
                self.deadline = None;
            }
        }
        r
    }
}

impl tokio::io::AsyncWrite for Slot {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// How to serve: audit settings, the query window, TLS.
#[derive(Clone)]
pub struct ServeOptions {
    pub audit: crate::audit::AuditConfig,
    /// How far a signed query's time may be from the server's clock.
    pub query_window_ms: u64,
    /// PEM certificate chain and private key: serve TLS (rustls) instead of plaintext.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Witnesses to ask for cosignatures, and the quorum that makes a checkpoint witnessed.
    pub witnessing: Option<witnessing::Witnessing>,
    /// Most connections open at once; those beyond are closed on accept.
    pub max_connections: usize,
    /// What the service counts (serve it with [`metrics::serve`]).
    pub metrics: metrics::Metrics,
    /// A connection that has not finished its HTTP/2 handshake and first request headers in
    /// this long is dropped (slow-loris), and keepalive pings find dead peers this often.
    pub idle_timeout: std::time::Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            audit: crate::audit::AuditConfig::default(),
            query_window_ms: auth::DEFAULT_WINDOW_MS,
            tls: None,
            witnessing: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            metrics: metrics::Metrics::new(),
            idle_timeout: std::time::Duration::from_secs(20),
        }
    }
}

/// As [`serve`], with everything configurable.
pub async fn serve_opts(
    ledger: Ledger,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    opts: ServeOptions,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<LedgerServer<LedgerService>>()
        .await;
    health_reporter
        .set_serving::<pb::audit_server::AuditServer<audit::AuditService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let gate = std::sync::Arc::new(auth::Gate::new(ledger.clone(), opts.query_window_ms));
    let audit_svc = pb::audit_server::AuditServer::new(audit::AuditService::new(
        ledger.clone(),
        opts.audit,
        gate.clone(),
    ))
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let svc = LedgerServer::new(LedgerService::new(
        ledger.clone(),
        gate,
        opts.metrics.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Small request/response messages: Nagle's algorithm would hold each for a delayed ACK.
    // Connections beyond the limit are closed at once, so a flood cannot exhaust descriptors.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(opts.max_connections));
    let idle = opts.idle_timeout;
    let incoming =
        tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |conn| {
            let stream = match conn {
                Ok(s) => s,
                Err(e) => return Some(Err(e)),
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!("connection limit reached: closing a new connection");
                return None;
            };
            if let Err(e) = stream.set_nodelay(true) {
                return Some(Err(e));
            }
            Some(Ok(Slot {
                stream: coalesce::Coalesce::new(stream),
                _permit: permit,
                deadline: Some(Box::pin(tokio::time::sleep(idle))),
                seen: 0,
            }))
        });
    // Background tasks end with the server: none may keep the ledger (and its lock) alive.
    let (stop_tasks, tasks_stopped) = tokio::sync::watch::channel(false);
    // A ledger that stops taking writes (a failed fdatasync, damage found by the scrub) is not
    // serving: say so to health checks.
    tokio::spawn({
        let ledger = ledger.clone();
        let health_reporter = health_reporter.clone();
        let mut stopped = tasks_stopped.clone();
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                    _ = stopped.changed() => return,
                }
                if let Some(why) = ledger.poisoned() {
                    tracing::error!(%why, "health: NOT_SERVING");
                    health_reporter
                        .set_not_serving::<LedgerServer<LedgerService>>()
                        .await;
                    return;
                }
            }
        }
    });
    if let Some(w) = opts.witnessing.clone() {
        tokio::spawn(witnessing::run(ledger.clone(), w, tasks_stopped));
    }
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &opts.tls {
        builder = builder.tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key)),
        )?;
    }
    builder
        .concurrency_limit_per_connection(256)
        .http2_keepalive_interval(Some(opts.idle_timeout))
        .http2_keepalive_timeout(Some(opts.idle_timeout))
        .tcp_keepalive(Some(opts.idle_timeout))
        .add_service(health)
        .add_service(reflection)
        .add_service(svc)
        .add_service(audit_svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    let _ = stop_tasks.send(true);
    Ok(())
}

/// Binds `addr` (port 0 picks one) and returns the listener and its address.
pub async fn bind(addr: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
