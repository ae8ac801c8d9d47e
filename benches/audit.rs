//! Audit query latency on a ledger of realistic size: `ReconcilePermit` on a permit with 1,000
//! draw-downs (half of them received short), `ListPermits`, `MassBalance` of the seller's site
//! (1,001 journal rows) and `TraceLot` of its lot (1,000 edges), over real gRPC on loopback and
//! in-process, next to a null unary call (`GetSignerHead`) measured in the same run.
//!
//! The ledger is built through the ordinary append path (signed records, every rule checked):
//! `TZ_BENCH_ENTRIES` entries in all (default 200,000), the permit's shipments and receipts
//! spread evenly through them, the rest `Produce` records from 64 keys. The views are flushed
//! to sled before anything is timed, so queries read sled, not the write-back layer.
//!
//! Run: `cargo bench --bench audit` (`TZ_BENCH_ENTRIES=1000000 cargo bench --bench audit`).
//! `TZ_BENCH_KEEP=1` keeps the data dir built; `TZ_BENCH_REOPEN=DIR` then measures only the
//! reopen of it (with `TZ_BENCH_PROOFS=N`, N proofs while the scrub runs and N after it; with
//! `TZ_BENCH_REINDEX=1`, the reindex).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{dir_bytes, status_kib};
use ed25519_dalek::SigningKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taizhang::client::{entry_ref, mg, RecordSigner};
use taizhang::ledger::{Config, Ledger, Submission};
use taizhang::model::{credit_code_check_char, Catalogue};
use taizhang::pb::{self, record_body::Payload};

const ORIGIN: &str = "taizhang.bench/audit";
/// Acetic anhydride: category 2, so the purchase filing and transport permit may be multi-use.
const SUBSTANCE: &str = "108-24-7";
const DRAWS: usize = 1_000;

fn code(stem: &str) -> String {
    format!("{stem}{}", credit_code_check_char(stem).expect("alphabet"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn sub(r: pb::SignedRecord) -> Submission {
    Submission {
        body: r.body,
        signature: r.signature,
        cosignatures: vec![],
    }
}

async fn one(l: &Ledger, r: pb::SignedRecord) -> pb::EntryRef {
    let rc = l.submit(sub(r)).await.expect("accepted");
    entry_ref(ORIGIN, rc.index, &rc.leaf_hash)
}

fn report(name: &str, mut lat: Vec<Duration>) -> Duration {
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "  {name}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} calls)",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 1.0)),
        lat.len()
    );
    percentile(&lat, 0.99)
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let entries: usize = std::env::var("TZ_BENCH_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench_mode { 200_000 } else { 3_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // `TZ_BENCH_REOPEN=DIR`: only the reopen figures, of a data dir this bench built before
    // (a copy taken while it ran opens as after a crash).
    if let Ok(dir) = std::env::var("TZ_BENCH_REOPEN") {
        println!("reopening {dir}:");
        rt.block_on(reopen_figures(config(std::path::PathBuf::from(dir))));
        return;
    }
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let tmp = tempfile::tempdir_in(&base).unwrap();
    let cfg = rt.block_on(run(&tmp, entries, if bench_mode { 1_000 } else { 20 }));
    // `TZ_BENCH_KEEP=1`: the data dir stays, for `TZ_BENCH_REOPEN=DIR` (or a profile of it).
    // Otherwise it goes when `_tmp` does, at the end.
    let _tmp = if std::env::var_os("TZ_BENCH_KEEP").is_some() {
        println!("  data dir kept: {}", cfg.data_dir.display());
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };
    // The runtime goes first: its tasks (the server's connections) hold the ledger too.
    drop(rt);
    released(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(reopen_figures(cfg));
}

/// Builds the ledger in `tmp`, times the queries, and gives back how to open it again.
/// The bench ledger's configuration, for its data dir.
fn config(data_dir: std::path::PathBuf) -> Config {
    let regulator = SigningKey::from_bytes(&[0x52; 32]);
    Config {
        data_dir,
        origin: ORIGIN.into(),
        root_regulators: vec![pb::AuthorityKey {
            public_key: regulator.verifying_key().to_bytes().to_vec(),
            name: "bench".into(),
            agency: pb::Agency::PublicSecurity as i32,
            jurisdiction: String::new(),
            validity: None,
        }],
        ledger_key: SigningKey::from_bytes(&[0x4c; 32]),
        catalogue: Arc::new(Catalogue::embedded()),
        max_segment_bytes: taizhang::ledger::DEFAULT_SEGMENT_BYTES,
        two_person: taizhang::ledger::default_two_person(),
    }
}

async fn run(tmp: &tempfile::TempDir, entries: usize, calls: usize) -> Config {
    let regulator = SigningKey::from_bytes(&[0x52; 32]);
    let cfg = config(tmp.path().join("data"));
    let ledger_cfg = cfg.clone();
    let (ledger, _) = Ledger::open(cfg).unwrap();
    let mut reg = RecordSigner::new(regulator, ORIGIN);
    let seller = code("91440300MA5PRDCR1");
    let buyer = code("91440300MA5BUYER1");
    use pb::{Activity::*, Category::*};
    let enrol = |c: &str, j: &str, acts: &[pb::Activity], site: &str| {
        Payload::EnrolEnterprise(pb::EnrolEnterprise {
            credit_code: c.into(),
            name: c.into(),
            jurisdiction: j.into(),
            licences: [Precursor2, Precursor3]
                .iter()
                .map(|cat| pb::Licence {
                    licence_no: format!("L-{c}-{}", *cat as i32),
                    category: *cat as i32,
                    activities: acts.iter().map(|a| *a as i32).collect(),
                    validity: None,
                })
                .collect(),
            sites: vec![pb::Site {
                site_id: site.into(),
                name: site.into(),
                address: String::new(),
            }],
        })
    };
    let register = |k: &SigningKey, e: &str| {
        Payload::RegisterKey(pb::RegisterKey {
            public_key: k.verifying_key().to_bytes().to_vec(),
            role: pb::Role::Enterprise as i32,
            enterprise: e.into(),
            jurisdiction: String::new(),
            holder: String::new(),
            validity: None,
        })
    };
    let sk = SigningKey::from_bytes(&[0x53; 32]);
    let bk = SigningKey::from_bytes(&[0x42; 32]);
    let filler_keys: Vec<SigningKey> = (0..64u8)
        .map(|i| SigningKey::from_bytes(&[i.wrapping_add(0x80); 32]))
        .collect();
    let mut setup = vec![
        enrol(&seller, "440305", &[Produce, Sell], "plant"),
        enrol(&buyer, "440306", &[Purchase], "wh"),
        register(&sk, &seller),
        register(&bk, &buyer),
    ];
    setup.extend(filler_keys.iter().map(|k| register(k, &seller)));
    for p in setup {
        one(&ledger, reg.sign(p, now())).await;
    }
    let validity = Some(pb::Validity {
        not_before_ms: 0,
        not_after_ms: now() + 365 * 86_400_000,
    });
    let filing = one(
        &ledger,
        reg.sign(
            Payload::IssuePermit(pb::IssuePermit {
                permit_no: "BENCH-PF-1".into(),
                r#type: pb::PermitType::PurchaseFiling as i32,
                holder: buyer.clone(),
                substance: SUBSTANCE.into(),
                ceiling: Some(mg(u64::MAX / 2)),
                validity,
                ..Default::default()
            }),
            now(),
        ),
    )
    .await;
    let transport = one(
        &ledger,
        reg.sign(
            Payload::IssuePermit(pb::IssuePermit {
                permit_no: "BENCH-TP-1".into(),
                r#type: pb::PermitType::TransportPermit as i32,
                holder: seller.clone(),
                substance: SUBSTANCE.into(),
                ceiling: Some(mg(u64::MAX / 2)),
                validity,
                consignee: buyer.clone(),
                ..Default::default()
            }),
            now(),
        ),
    )
    .await;
    let mut s = RecordSigner::new(sk, ORIGIN);
    let mut b = RecordSigner::new(bk, ORIGIN);
    one(
        &ledger,
        s.sign(
            Payload::Produce(pb::Produce {
                site_id: "plant".into(),
                substance: SUBSTANCE.into(),
                lot: "BIG".into(),
                quantity: Some(mg(1 << 50)),
            }),
            now(),
        ),
    )
    .await;

    // The body of the ledger: filler interleaved with the permit's shipments and receipts.
    let built = Instant::now();
    let mut fillers: Vec<RecordSigner> = filler_keys
        .into_iter()
        .map(|k| RecordSigner::new(k, ORIGIN))
        .collect();
    let filler_total = entries.saturating_sub(ledger.size() as usize + 2 * DRAWS);
    let per_draw = filler_total / DRAWS;
    let mut made = 0usize;
    for d in 0..DRAWS {
        let chunk: Vec<Result<Submission, taizhang::ledger::Refusal>> = (0..per_draw)
            .map(|i| {
                let k = (made + i) % fillers.len();
                Ok(sub(fillers[k].sign(
                    Payload::Produce(pb::Produce {
                        site_id: "plant".into(),
                        substance: "67-64-1".into(),
                        lot: format!("F-{}", made + i),
                        quantity: Some(mg(1_000)),
                    }),
                    now(),
                )))
            })
            .collect();
        made += chunk.len();
        let l2 = ledger.clone();
        let prepared = tokio::task::spawn_blocking(move || l2.prepare_all(chunk))
            .await
            .unwrap();
        for r in ledger.submit_prepared(prepared).await {
            r.expect("filler accepted");
        }
        let ship = one(
            &ledger,
            s.sign(
                Payload::Ship(pb::Ship {
                    site_id: "plant".into(),
                    substance: SUBSTANCE.into(),
                    lot: "BIG".into(),
                    quantity: Some(mg(1_000_000)),
                    consignee: buyer.clone(),
                    consignee_site: "wh".into(),
                    permit: Some(filing.clone()),
                    transport_permit: Some(transport.clone()),
                    payment_method: "bank_transfer".into(),
                    ..Default::default()
                }),
                now(),
            ),
        )
        .await;
        one(
            &ledger,
            b.sign(
                Payload::Receive(pb::Receive {
                    ship: Some(ship),
                    site_id: "wh".into(),
                    quantity: Some(mg(if d % 2 == 0 { 1_000_000 } else { 999_000 })),
                    lot: String::new(),
                }),
                now(),
            ),
        )
        .await;
    }
    ledger.flush_views().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "ledger of {} entries built through the append path in {:.1} s; permit BENCH-PF-1 has {DRAWS} draw-downs",
        ledger.size(),
        built.elapsed().as_secs_f64()
    );

    let (listener, addr) = taizhang::api::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(taizhang::api::serve(ledger.clone(), listener, async {
        let _ = stopped.await;
    }));
    let url = format!("http://{addr}");
    // A client that expects large answers opens its HTTP/2 windows (the 64 KiB default
    // costs a round trip per 64 KiB of a ~250 KB reconciliation).
    let channel = taizhang::api::coalesce::connect_endpoint(
        &tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(8 << 20),
    )
    .await
    .unwrap();
    let inspector = SigningKey::from_bytes(&[0x52; 32]);
    let mut audit = pb::audit_client::AuditClient::new(taizhang::api::auth::Signed::new(
        channel,
        inspector.clone(),
    ))
    .max_decoding_message_size(64 << 20);
    let mut lc = pb::ledger_client::LedgerClient::new(
        taizhang::api::auth::connect(url, inspector.clone())
            .await
            .unwrap(),
    );
    let key_id = s.key_id().0.to_vec();

    // Warm up, and check the answer is the known one.
    let req = || pb::ReconcilePermitRequest {
        permit: Some(pb::reconcile_permit_request::Permit::PermitNo(
            "BENCH-PF-1".into(),
        )),
        as_of_ms: 0,
    };
    let r = audit.reconcile_permit(req()).await.unwrap().into_inner();
    assert_eq!(r.draw_downs.len(), DRAWS);
    assert_eq!(
        r.mismatches.len(),
        DRAWS / 2,
        "every other receipt is short"
    );

    // Proofs of entries spread over the whole ledger, in-process: each touches a different
    // 32-leaf run, read from the entry index in the views (the common case for an inspector's
    // `GetInclusionProof`; receipts prove recent entries, which are in memory).
    proof_figures(&ledger, calls);

    println!("query latency, one client, sequential (loopback gRPC unless noted):");
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        lc.get_signer_head(pb::GetSignerHeadRequest {
            key_id: key_id.clone(),
        })
        .await
        .unwrap();
        lat.push(t.elapsed());
    }
    report("null call (GetSignerHead)", lat);
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        audit.reconcile_permit(req()).await.unwrap();
        lat.push(t.elapsed());
    }
    let p99 = report("ReconcilePermit, 1,000 draw-downs (response ~250 KB)", lat);
    let mut lat = Vec::with_capacity(calls);
    let cfg = taizhang::audit::AuditConfig::default();
    for _ in 0..calls {
        let t = Instant::now();
        let snap = ledger.snapshot();
        let e = taizhang::audit::permits::find(snap.as_ref(), "BENCH-PF-1")
            .unwrap()
            .unwrap();
        let rec = taizhang::audit::permits::reconcile(snap.as_ref(), &cfg, e, now()).unwrap();
        assert_eq!(rec.draw_downs.len(), DRAWS);
        drop(snap);
        lat.push(t.elapsed());
    }
    report(
        "ReconcilePermit in-process (snapshot, get + range scan)",
        lat,
    );
    // The service itself, called without the network: snapshot, reconciliation, protobuf.
    let gate = std::sync::Arc::new(taizhang::api::auth::Gate::new(
        ledger.clone(),
        taizhang::api::auth::DEFAULT_WINDOW_MS,
    ));
    let svc = taizhang::api::audit::AuditService::new(ledger.clone(), cfg.clone(), gate);
    let mut lat = Vec::with_capacity(calls);
    let mut bytes = 0;
    for _ in 0..calls {
        use pb::audit_server::Audit;
        let t = Instant::now();
        let r = svc
            .reconcile_permit(
                taizhang::api::auth::signed_request(
                    &inspector,
                    "/taizhang.v1.Audit/ReconcilePermit",
                    req(),
                )
                .unwrap(),
            )
            .await
            .unwrap()
            .into_inner();
        let enc = prost::Message::encode_to_vec(&r);
        bytes = enc.len();
        lat.push(t.elapsed());
    }
    report(
        &format!("ReconcilePermit service + encoding, no network ({bytes} bytes)"),
        lat,
    );
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let r = audit
            .list_permits(pb::ListPermitsRequest {
                scope: Some(pb::list_permits_request::Scope::Jurisdiction("44".into())),
                as_of_ms: 0,
                states: vec![],
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.permits.len(), 2);
        lat.push(t.elapsed());
    }
    report("ListPermits, jurisdiction 44", lat);
    println!(
        "  target (issue #3): ReconcilePermit p99 ≤ 5 ms with 1,000 draw-downs: {}",
        if p99 <= Duration::from_millis(5) {
            "met"
        } else {
            "NOT met"
        }
    );

    // Mass balance of the seller's plant (1,000 shipments, a produce) and of one lot; the
    // whole history, and a window holding a tenth of it.
    let balance_req = |lot: &str, from_ms: u64, to_ms: u64, limit: u32| pb::MassBalanceRequest {
        enterprise: seller.clone(),
        site: "plant".into(),
        substance: SUBSTANCE.into(),
        lot: lot.into(),
        from_ms,
        to_ms,
        limit,
    };
    let r = audit
        .mass_balance(balance_req("", 0, 0, 10_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.postings.len(), DRAWS + 1);
    assert_eq!(r.expected_closing, (1 << 50) - DRAWS as u64 * 1_000_000);
    let (first, last) = (r.postings[1].at_ms, r.postings[DRAWS].at_ms);
    let window = (first + (last - first) * 4 / 10, first + (last - first) / 2);
    let mut balance_p99 = Duration::ZERO;
    for (name, req) in [
        (
            "MassBalance, site × substance, all 1,001 rows listed",
            balance_req("", 0, 0, 10_000),
        ),
        (
            "MassBalance, site × substance, figures only (limit 1)",
            balance_req("", 0, 0, 1),
        ),
        (
            "MassBalance, one lot, a tenth of the history",
            balance_req("BIG", window.0, window.1, 10_000),
        ),
    ] {
        let mut lat = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            audit.mass_balance(req.clone()).await.unwrap();
            lat.push(t.elapsed());
        }
        balance_p99 = balance_p99.max(report(name, lat));
    }
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let snap = ledger.snapshot();
        let b = taizhang::audit::balance::balance(
            snap.as_ref(),
            &cfg,
            taizhang::audit::balance::Query {
                enterprise: seller.clone(),
                site: "plant".into(),
                substance: SUBSTANCE.into(),
                lot: None,
                from_ms: 0,
                to_ms: now() + 1,
                limit: 1,
            },
        )
        .unwrap();
        assert_eq!(b.opening, 0);
        drop(snap);
        lat.push(t.elapsed());
    }
    report("MassBalance in-process, figures only (three seeks)", lat);
    // The lot BIG: 1,000 shipments out of it, each received.
    let mut lat = Vec::with_capacity(calls.min(200));
    let mut svg_bytes = 0;
    for _ in 0..calls.min(200) {
        let t = Instant::now();
        let g = audit
            .trace_lot(pb::TraceLotRequest {
                lot: "BIG".into(),
                direction: pb::TraceDirection::Both as i32,
                max_edges: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.edges.len(), DRAWS);
        svg_bytes = g.svg.len();
        lat.push(t.elapsed());
    }
    let trace_p99 = report(
        &format!("TraceLot, 1,000 edges, with DOT and SVG ({svg_bytes} SVG bytes)"),
        lat,
    );
    let mut lat = Vec::with_capacity(calls.min(200));
    for _ in 0..calls.min(200) {
        let t = Instant::now();
        let snap = ledger.snapshot();
        let g = taizhang::audit::trace::trace(
            snap.as_ref(),
            "BIG",
            taizhang::audit::trace::Direction::Both,
            10_000,
        )
        .unwrap();
        assert_eq!(g.edges.len(), DRAWS);
        drop(snap);
        lat.push(t.elapsed());
    }
    report("TraceLot in-process, 1,000 edges (graph only)", lat);
    println!(
        "  targets (issue #4): MassBalance p99 ≤ 5 ms: {}; TraceLot of a 1,000-edge lot ≤ 50 ms: {}",
        if balance_p99 <= Duration::from_millis(5) {
            "met"
        } else {
            "NOT met"
        },
        if trace_p99 <= Duration::from_millis(50) {
            "met"
        } else {
            "NOT met"
        }
    );
    storage_figures(&ledger_cfg, ledger, stop, server).await;
    ledger_cfg
}

/// Memory while serving and disk (issue #7's storage targets).
async fn storage_figures(
    cfg: &Config,
    ledger: Ledger,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), Box<dyn std::error::Error + Send + Sync>>>,
) {
    let entries = ledger.size();
    println!(
        "storage at {entries} entries: RSS while serving {} MiB (peak {} MiB)",
        status_kib("VmRSS:") >> 10,
        status_kib("VmHWM:") >> 10
    );
    let _ = stop.send(());
    let _ = server.await;
    let t = Instant::now();
    ledger.close().await;
    println!(
        "  close: {:.2} s (writer stopped, views flushed to sled)",
        t.elapsed().as_secs_f64()
    );
    drop(ledger);
    let (log, views) = (
        dir_bytes(&cfg.data_dir.join("log")),
        dir_bytes(&cfg.data_dir.join("views")),
    );
    println!(
        "  disk: log {:.1} MB ({:.0} bytes per entry), views {:.1} MB; all / log = {:.2} (target ≤ 2.5)",
        log as f64 / 1e6,
        log as f64 / entries as f64,
        views as f64 / 1e6,
        (log + views) as f64 / log as f64
    );
}

/// Waits until the ledger's last handle has let go of its data dir (it reopens sled once, so
/// that sled writes its snapshot) and says how long that took.
fn released(cfg: &Config) {
    let t = Instant::now();
    assert!(taizhang::ledger::wait_released(
        &cfg.data_dir,
        Duration::from_secs(900)
    ));
    println!(
        "  close: released {:.2} s after the last handle (sled reopened to write its snapshot)",
        t.elapsed().as_secs_f64()
    );
}

/// Inclusion and consistency proofs of entries spread over the whole ledger, in-process, each
/// checked against the latest checkpoint's root.
fn proof_figures(ledger: &Ledger, calls: usize) {
    println!("proofs in-process, indices spread over the whole ledger:");
    let size = ledger.size();
    let (_, _, root) = ledger.checkpoint().unwrap();
    let mut k = 12_345u64;
    let mut spread = move || {
        k = (k.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1)) >> 1;
        k % size
    };
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let i = spread();
        let t = Instant::now();
        let (n, leaf, proof) = ledger.inclusion_proof(i, size).unwrap();
        lat.push(t.elapsed());
        taizhang::merkle::verify_inclusion::<taizhang::merkle::Blake3Hasher, _>(
            i, n, &leaf, &proof, &root,
        )
        .unwrap();
    }
    report("inclusion proof (random entry, latest size)", lat);
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let from = spread().max(1);
        let t = Instant::now();
        let (_, proof) = ledger.consistency_proof(from, size).unwrap();
        lat.push(t.elapsed());
        let old = ledger.root_at(from).unwrap();
        taizhang::merkle::verify_consistency::<taizhang::merkle::Blake3Hasher, _>(
            from, size, &old, &root, &proof,
        )
        .unwrap();
    }
    report("consistency proof (random size to latest)", lat);
    println!("  target (issue #7): inclusion / consistency proof at 10 M entries ≤ 50 µs each");
}

/// Reopen (twice: the second after a clean close of the first) and (up to 1 M entries, or with
/// `TZ_BENCH_REINDEX=1`) reindex of the ledger built.
async fn reopen_figures(cfg: Config) {
    let mut entries = 0;
    for round in ["reopen", "reopen again"] {
        let t = Instant::now();
        let (reopened, report) = Ledger::open(cfg.clone()).unwrap();
        let took = t.elapsed();
        println!(
            "  {round}: {:.2} s ({} entries replayed; target ≤ 2 s at 10 M); RSS after {} MiB",
            took.as_secs_f64(),
            report.replayed,
            status_kib("VmRSS:") >> 10
        );
        for (phase, took) in &report.phases {
            println!("    {phase}: {:.3} s", took.as_secs_f64());
        }
        entries = reopened.size();
        // `TZ_BENCH_PROOFS=N`: N proofs on the reopened ledger (cold caches, as after a restart).
        if let Some(calls) = std::env::var("TZ_BENCH_PROOFS")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|_| round == "reopen")
        {
            // While the scrub re-reads the log (at the lowest priority), as after a restart.
            println!(
                "  scrub of the log before the proofs: {:?}",
                reopened.scrub()
            );
            proof_figures(&reopened, calls);
            let t = Instant::now();
            let scrub = reopened.scrub_done().await;
            println!(
                "  scrub of the log: {scrub:?}, {:.1} s after the proofs; once it is done:",
                t.elapsed().as_secs_f64()
            );
            proof_figures(&reopened, calls);
        }
        reopened.close().await;
        drop(reopened);
        released(&cfg);
    }
    let reindex = match std::env::var("TZ_BENCH_REINDEX") {
        Ok(v) => v == "1",
        Err(_) => entries <= 1_000_000,
    };
    if reindex {
        let t = Instant::now();
        let report = taizhang::ledger::reindex(cfg).unwrap();
        let took = t.elapsed().as_secs_f64();
        println!(
            "  reindex: {} entries in {took:.1} s = {:.0} entries/s (target ≥ 100,000/s)",
            report.replayed,
            report.replayed as f64 / took
        );
    }
}
