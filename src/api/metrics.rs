//! Prometheus metrics (`serve --metrics-listen ADDR`, then `GET /metrics`): records accepted
//! and refused by status, receipt latency, the writer's queue, the ledger's size and witnessing.

use crate::ledger::{Ledger, Receipt, Refusal};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: String,
}

/// The service's counters; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    accepted: Counter,
    duplicates: Counter,
    refused: Family<Code, Counter>,
    latency: Histogram,
    entries: Gauge<u64, AtomicU64>,
    queued: Gauge<u64, AtomicU64>,
    witnessed: Gauge<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("taizhang");
        let accepted = Counter::default();
        let duplicates = Counter::default();
        let refused = Family::<Code, Counter>::default();
        // 0.25 ms … ~8 s.
        let latency = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let entries = Gauge::<u64, AtomicU64>::default();
        let queued = Gauge::<u64, AtomicU64>::default();
        let witnessed = Gauge::<u64, AtomicU64>::default();
        r.register(
            "records_accepted",
            "Records appended (durable)",
            accepted.clone(),
        );
        r.register(
            "records_duplicate",
            "Identical retries answered with the original receipt",
            duplicates.clone(),
        );
        r.register(
            "records_refused",
            "Records refused, by gRPC status",
            refused.clone(),
        );
        r.register(
            "receipt_latency_seconds",
            "From a record's arrival to its receipt or refusal",
            latency.clone(),
        );
        r.register("ledger_entries", "Entries in the log", entries.clone());
        r.register(
            "writer_queue_bytes",
            "Bytes of records waiting for the writer",
            queued.clone(),
        );
        r.register(
            "witnessed_entries",
            "Size of the latest witnessed checkpoint",
            witnessed.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            accepted,
            duplicates,
            refused,
            latency,
            entries,
            queued,
            witnessed,
        }
    }

    /// Counts one record's outcome, `started` when it arrived.
    pub fn record(&self, r: &Result<Receipt, Refusal>, started: Instant) {
        self.latency.observe(started.elapsed().as_secs_f64());
        match r {
            Ok(x) if x.duplicate => {
                self.duplicates.inc();
            }
            Ok(_) => {
                self.accepted.inc();
            }
            Err(e) => {
                let code = super::status(e.clone()).code();
                self.refused
                    .get_or_create(&Code {
                        code: format!("{code:?}"),
                    })
                    .inc();
            }
        }
    }

    /// Counts a record refused before it reached the ledger (bad request shape).
    pub fn refused_early(&self, s: &tonic::Status) {
        self.refused
            .get_or_create(&Code {
                code: format!("{:?}", s.code()),
            })
            .inc();
    }

    /// The text exposition, with the gauges read from `ledger` now.
    pub fn render(&self, ledger: &Ledger) -> String {
        self.entries.set(ledger.size());
        self.queued.set(ledger.queued_bytes() as u64);
        self.witnessed.set(ledger.witnessed().map_or(0, |(_, s)| s));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    metrics: Metrics,
    ledger: Ledger,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (m, l) = (metrics.clone(), ledger.clone());
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(&l),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
