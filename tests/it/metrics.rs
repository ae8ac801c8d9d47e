//! The Prometheus endpoint: what the service counted, scraped over HTTP.

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_accepted_refused_and_latency_and_report_the_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) = taizhang::ledger::Ledger::open(config(tmp.path())).unwrap();
    let metrics = taizhang::api::metrics::Metrics::new();
    let (listener, addr) = taizhang::api::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(taizhang::api::serve_opts(
        ledger.clone(),
        listener,
        std::future::pending(),
        taizhang::api::ServeOptions {
            metrics: metrics.clone(),
            ..Default::default()
        },
    ));
    let (ml, maddr) = taizhang::api::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(taizhang::api::metrics::serve(
        metrics,
        ledger.clone(),
        ml,
        std::future::pending(),
    ));
    let mut c = ledger_client(&format!("http://{addr}")).await;
    let mut w = World::setup(&mut c).await; // 4 records
    let r = w.p.sign(produce("plant-1", EPHEDRINE, "M1", 10), now());
    submit(&mut c, r.clone()).await.unwrap();
    submit(&mut c, r).await.unwrap(); // a duplicate
    let bad =
        w.p.sign_detached(produce("plant-1", EPHEDRINE, "M2", 0), now());
    assert!(submit(&mut c, bad).await.is_err());
    let page = scrape(maddr).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert_eq!(
        value(&page, "taizhang_records_accepted_total"),
        Some(5.0),
        "{page}"
    );
    assert_eq!(
        value(&page, "taizhang_records_duplicate_total"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        value(
            &page,
            "taizhang_records_refused_total{code=\"InvalidArgument\"}"
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        value(&page, "taizhang_receipt_latency_seconds_count"),
        Some(7.0),
        "{page}"
    );
    assert_eq!(value(&page, "taizhang_ledger_entries"), Some(6.0), "{page}");
    assert!(
        value(&page, "taizhang_writer_queue_bytes").is_some(),
        "{page}"
    );
}
