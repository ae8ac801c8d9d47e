//! Mass balance, lot tracing and loss finding over real gRPC, on a scenario with known answers:
//! a lot split three ways (one shipment short, one never received, one re-lotted, partly used
//! and partly stolen), a stock-take shortfall, a produce corrected after the fact. `FindLosses`
//! must find exactly the injected losses and nothing else.

use crate::common::*;
use ed25519_dalek::SigningKey;
use prost::Message;
use taizhang::api::auth::SignedChannel as Channel;
use taizhang::client::{entry_ref, mg, RecordSigner};
use taizhang::pb::{self, audit_client::AuditClient, record_body::Payload};

const DAY: u64 = 86_400_000;

struct Scene {
    server: Server,
    c: pb::ledger_client::LedgerClient<Channel>,
    a: AuditClient<Channel>,
    w: World,
    b2: RecordSigner,
    b3: RecordSigner,
    b2_code: String,
    b3_code: String,
    ship: [pb::Receipt; 3],
    take: pb::Receipt,
    theft: pb::Receipt,
}

async fn ok(c: &mut pb::ledger_client::LedgerClient<Channel>, r: pb::SignedRecord) -> pb::Receipt {
    submit(c, r)
        .await
        .unwrap_or_else(|s| panic!("refused: {:?} {}", s.code(), s.message()))
}

fn reference(r: &pb::Receipt) -> pb::EntryRef {
    entry_ref(ORIGIN, r.index, &r.leaf_hash)
}

/// The lot `L` (10,000 mg of ephedrine) split three ways: 3,000 to the buyer (received 2,990),
/// 3,000 to B2 (received into B2-L, 1,000 used, 200 stolen), 2,000 to B3 (never received);
/// lot M produced as 5,000 and corrected to 500; a stock-take at plant-1 counting L 1,950 and
/// M 500 against a book of 2,000 and 500.
async fn scene() -> Scene {
    let server = Server::start().await;
    let mut c = server.client().await;
    let a = crate::common::audit_client(&server.url).await;
    let mut w = World::setup(&mut c).await;
    use pb::{Activity::*, Category::*};
    let mut extra = Vec::new();
    for (stem, jur, seed, acts) in [
        ("91440300MA5BUYER2", "440307", 0x62u8, vec![Purchase, Use]),
        ("91440300MA5BUYER3", "440308", 0x63u8, vec![Purchase]),
    ] {
        let credit = code(stem);
        let k = SigningKey::from_bytes(&[seed; 32]);
        let r = w.reg.sign(
            enrol(&credit, jur, vec![licence(Precursor1, &acts)], &["wh-1"]),
            now(),
        );
        ok(&mut c, r).await;
        let r = w.reg.sign(register(&k, &credit), now());
        ok(&mut c, r).await;
        extra.push((credit, RecordSigner::new(k, ORIGIN)));
    }
    let (b3_code, b3) = extra.pop().unwrap();
    let (b2_code, mut b2) = extra.pop().unwrap();
    let producer = w.producer.clone();
    let buyer = w.buyer.clone();
    let r = w.p.sign(produce("plant-1", EPHEDRINE, "L", 10_000), now());
    ok(&mut c, r).await;
    let mut ships = Vec::new();
    for (to, q) in [(&buyer, 3_000), (&b2_code, 3_000), (&b3_code, 2_000)] {
        let p = w
            .permitted(
                &mut c,
                &producer,
                ship("plant-1", EPHEDRINE, "L", q, to, "wh-1"),
            )
            .await;
        let r = w.p.sign(p, now());
        ships.push(ok(&mut c, r).await);
    }
    let r = w.b.sign(receive(&ships[0], "wh-1", 2_990), now());
    ok(&mut c, r).await;
    let r = b2.sign(
        Payload::Receive(pb::Receive {
            ship: Some(reference(&ships[1])),
            site_id: "wh-1".into(),
            quantity: Some(mg(3_000)),
            lot: "B2-L".into(),
        }),
        now(),
    );
    ok(&mut c, r).await;
    let r = b2.sign(
        Payload::Consume(pb::Consume {
            site_id: "wh-1".into(),
            substance: EPHEDRINE.into(),
            lot: "B2-L".into(),
            quantity: Some(mg(1_000)),
            purpose: "production order PO-7".into(),
        }),
        now(),
    );
    ok(&mut c, r).await;
    let r = b2.sign(
        Payload::LossReport(pb::LossReport {
            site_id: "wh-1".into(),
            substance: EPHEDRINE.into(),
            lot: "B2-L".into(),
            quantity: Some(mg(200)),
            kind: pb::LossKind::Theft as i32,
            police_report_ref: "深公(禁)2026-118".into(),
        }),
        now(),
    );
    let theft = ok(&mut c, r).await;
    // Produced as 5,000 by mistake; corrected to 500.
    let r = w.p.sign(produce("plant-1", EPHEDRINE, "M", 5_000), now());
    let m = ok(&mut c, r).await;
    let replacement = pb::RecordBody {
        payload: Some(Payload::Produce(pb::Produce {
            site_id: "plant-1".into(),
            substance: EPHEDRINE.into(),
            lot: "M".into(),
            quantity: Some(mg(500)),
        })),
        ..Default::default()
    };
    let r = w.p.sign(
        Payload::Correction(pb::Correction {
            corrects: Some(reference(&m)),
            reason: "batch record misread: 500 mg, not 5,000".into(),
            approver: "QA 李工".into(),
            replacement: replacement.encode_to_vec(),
        }),
        now(),
    );
    ok(&mut c, r).await;
    let r = w.p.sign(
        Payload::StockTake(pb::StockTake {
            site_id: "plant-1".into(),
            counts: vec![
                pb::StockCount {
                    substance: EPHEDRINE.into(),
                    lot: "L".into(),
                    quantity: Some(mg(1_950)),
                },
                pb::StockCount {
                    substance: EPHEDRINE.into(),
                    lot: "M".into(),
                    quantity: Some(mg(500)),
                },
            ],
        }),
        now(),
    );
    let take = ok(&mut c, r).await;
    Scene {
        server,
        c,
        a,
        w,
        b2,
        b3,
        b2_code,
        b3_code,
        ship: ships.try_into().unwrap(),
        take,
        theft,
    }
}

fn term(r: &pb::MassBalanceResponse, t: pb::BalanceTerm) -> i64 {
    r.terms
        .iter()
        .find(|x| x.term == t as i32)
        .map_or(i64::MIN, |x| x.quantity)
}

async fn balance(s: &mut Scene, who: &str, lot: &str) -> pb::MassBalanceResponse {
    s.a.mass_balance(pb::MassBalanceRequest {
        enterprise: who.into(),
        site: if who == s.w.producer {
            "plant-1"
        } else {
            "wh-1"
        }
        .into(),
        substance: EPHEDRINE.into(),
        lot: lot.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_balance_of_a_site_and_of_a_lot() {
    let mut s = scene().await;
    let producer = s.w.producer.clone();
    use pb::BalanceTerm::*;
    // All lots at plant-1: produced 10,000 + 500 (5,000 corrected by −4,500), shipped 8,000.
    let all = balance(&mut s, &producer, "").await;
    assert_eq!(all.opening, 0);
    assert_eq!(term(&all, Produced), 10_500);
    assert_eq!(term(&all, Shipped), 8_000);
    assert_eq!(term(&all, Received), 0);
    assert_eq!(all.expected_closing, 2_500);
    let count = all.count.as_ref().expect("the stock-take");
    assert_eq!(count.entry.as_ref().unwrap().index, s.take.index);
    assert_eq!(
        (count.counted, count.book, count.variance),
        (2_450, 2_500, -50)
    );
    assert_eq!(all.status, pb::BalanceStatus::Shortfall as i32);
    // The correction is listed under `produced`, citing the entry it corrects.
    let corr: Vec<_> = all
        .postings
        .iter()
        .filter(|p| p.corrects.is_some())
        .collect();
    assert_eq!(corr.len(), 1);
    assert_eq!((corr[0].term, corr[0].quantity), (Produced as i32, -4_500));
    // The rows behind the terms add up to the change over the period.
    let net: i64 = all
        .postings
        .iter()
        .map(|p| {
            let inflow = [Produced, Received, Imported, AdjustedIn]
                .iter()
                .any(|t| *t as i32 == p.term);
            if inflow {
                p.quantity
            } else {
                -p.quantity
            }
        })
        .sum();
    assert_eq!(net, all.expected_closing as i64 - all.opening as i64);
    assert_eq!(
        all.postings.len(),
        6,
        "2 produces, 1 correction, 3 shipments (counts are not terms)"
    );
    // Lot L alone: the 50 is missing from it.
    let l = balance(&mut s, &producer, "L").await;
    assert_eq!((term(&l, Produced), term(&l, Shipped)), (10_000, 8_000));
    assert_eq!(l.expected_closing, 2_000);
    let c = l.count.as_ref().unwrap();
    assert_eq!((c.counted, c.book, c.variance), (1_950, 2_000, -50));
    // B2's re-lotted receipt: received 3,000, consumed 1,000, lost 200.
    let b2 = s.b2_code.clone();
    let r = balance(&mut s, &b2, "").await;
    assert_eq!(
        (term(&r, Received), term(&r, Consumed), term(&r, Lost)),
        (3_000, 1_000, 200)
    );
    assert_eq!(r.expected_closing, 1_800);
    assert_eq!(r.status, pb::BalanceStatus::NotCounted as i32);
    // A period after everything: opening is the closing, no movements.
    let later =
        s.a.mass_balance(pb::MassBalanceRequest {
            enterprise: producer.clone(),
            site: "plant-1".into(),
            substance: EPHEDRINE.into(),
            from_ms: now() + 1,
            to_ms: now() + DAY,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((later.opening, later.expected_closing), (2_500, 2_500));
    assert!(later.terms.iter().all(|t| t.quantity == 0));
    assert!(later.postings.is_empty() && later.count.is_none());
    // Accepting the count's variance books the 50 out (adjusted_out); the balance then agrees.
    let r = s.w.p.sign(
        Payload::Correction(pb::Correction {
            corrects: Some(reference(&s.take)),
            reason: "weighing loss on repacking, investigated".into(),
            approver: "安全主管 王".into(),
            replacement: vec![],
        }),
        now(),
    );
    let accepted = ok(&mut s.c, r).await;
    let l = balance(&mut s, &producer, "L").await;
    assert_eq!(term(&l, AdjustedOut), 50);
    assert_eq!(l.expected_closing, 1_950);
    let losses = find(&mut s, pb::find_losses_request::Scope::Enterprise(producer)).await;
    let short: Vec<_> = losses
        .losses
        .iter()
        .filter(|l| l.kind == pb::LossPointKind::CountShortfall as i32)
        .collect();
    assert_eq!(
        short.len(),
        1,
        "the shortfall is still a loss, now explained"
    );
    assert_eq!(
        short[0].explained_by.as_ref().unwrap().index,
        accepted.index
    );
    // Bad queries name the field.
    for (req, needle) in [
        (
            pb::MassBalanceRequest {
                enterprise: String::new(),
                site: "plant-1".into(),
                substance: EPHEDRINE.into(),
                ..Default::default()
            },
            "enterprise",
        ),
        (
            pb::MassBalanceRequest {
                enterprise: s.w.producer.clone(),
                site: "plant-1".into(),
                substance: "no-such".into(),
                ..Default::default()
            },
            "substance",
        ),
        (
            pb::MassBalanceRequest {
                enterprise: s.w.producer.clone(),
                site: "plant-1".into(),
                substance: EPHEDRINE.into(),
                from_ms: 10,
                to_ms: 5,
                ..Default::default()
            },
            "period",
        ),
    ] {
        let e = s.a.mass_balance(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(needle), "{}", e.message());
    }
}

async fn find(s: &mut Scene, scope: pb::find_losses_request::Scope) -> pb::FindLossesResponse {
    s.a.find_losses(pb::FindLossesRequest {
        scope: Some(scope),
        // Past the 7-day receipt deadline of the shipment to B3.
        as_of_ms: now() + 8 * DAY,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_losses_finds_exactly_the_injected_losses_ranked() {
    let mut s = scene().await;
    use pb::find_losses_request::Scope;
    let all = find(&mut s, Scope::Jurisdiction("44".into())).await;
    let got: Vec<(i32, u64)> = all.losses.iter().map(|l| (l.kind, l.quantity)).collect();
    use pb::LossPointKind::*;
    assert_eq!(
        got,
        vec![
            (NotReceived as i32, 2_000),
            (Reported as i32, 200),
            (CountShortfall as i32, 50),
            (InTransitGap as i32, 10),
        ],
        "{:#?}",
        all.losses
    );
    assert!(all.patterns.is_empty());
    let never = &all.losses[0];
    assert_eq!(never.counterparty, s.b3_code);
    assert_eq!(never.entries[0].index, s.ship[2].index);
    let theft = &all.losses[1];
    assert_eq!(theft.loss_kind, pb::LossKind::Theft as i32);
    assert_eq!(theft.entries[0].index, s.theft.index);
    assert_eq!(theft.enterprise, s.b2_code);
    let gap = &all.losses[3];
    assert_eq!(gap.entries[0].index, s.ship[0].index);
    assert_eq!(gap.entries.len(), 2, "ship and receive");
    assert_eq!(
        all.losses.iter().map(|l| l.rank).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    // Before the deadline the unreceived shipment is in transit, not lost.
    let early =
        s.a.find_losses(pb::FindLossesRequest {
            scope: Some(Scope::Jurisdiction("44".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(early.losses.len(), 3);
    assert!(early.losses.iter().all(|l| l.kind != NotReceived as i32));
    // Scopes: B3 sees the shipment it never received; B2 its theft; the buyer its gap.
    let b3_code = s.b3_code.clone();
    let b3 = find(&mut s, Scope::Enterprise(b3_code)).await;
    assert_eq!(b3.losses.len(), 1);
    assert_eq!(b3.losses[0].kind, NotReceived as i32);
    let buyer_code = s.w.buyer.clone();
    let buyer = find(&mut s, Scope::Enterprise(buyer_code)).await;
    assert_eq!(
        buyer.losses.iter().map(|l| l.kind).collect::<Vec<_>>(),
        vec![InTransitGap as i32]
    );
    // The lot: everything on its custody graph (the theft happened under its new id B2-L).
    let lot = find(&mut s, Scope::Lot("L".into())).await;
    assert_eq!(
        lot.losses
            .iter()
            .map(|l| (l.kind, l.quantity))
            .collect::<Vec<_>>(),
        got
    );
    // Another jurisdiction: nothing.
    let none = find(&mut s, Scope::Jurisdiction("11".into())).await;
    assert!(none.losses.is_empty());
    let e =
        s.a.find_losses(pb::FindLossesRequest::default())
            .await
            .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("scope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_small_gaps_on_one_route_are_a_pattern() {
    let mut s = scene().await;
    let producer = s.w.producer.clone();
    let buyer = s.w.buyer.clone();
    for i in 0..3 {
        let r = s.w.p.sign(
            produce("plant-2", EPHEDRINE, &format!("R{i}"), 1_000),
            now(),
        );
        ok(&mut s.c, r).await;
        let p =
            s.w.permitted(
                &mut s.c,
                &producer,
                ship(
                    "plant-2",
                    EPHEDRINE,
                    &format!("R{i}"),
                    1_000,
                    &buyer,
                    "wh-1",
                ),
            )
            .await;
        let r = s.w.p.sign(p, now());
        let sh = ok(&mut s.c, r).await;
        let r = s.w.b.sign(receive(&sh, "wh-1", 997), now());
        ok(&mut s.c, r).await;
    }
    let f = find(
        &mut s,
        pb::find_losses_request::Scope::Enterprise(buyer.clone()),
    )
    .await;
    // Four gaps into the buyer's wh-1 (the scene's 10 and three of 3) on one route.
    let route = f
        .patterns
        .iter()
        .find(|p| p.kind == pb::PatternKind::Route as i32)
        .expect("a route pattern");
    assert_eq!((route.events, route.quantity), (4, 19));
    assert!(f
        .patterns
        .iter()
        .any(|p| p.kind == pb::PatternKind::Holder as i32 && p.events == 4));
    for &i in &route.losses {
        assert_eq!(
            f.losses[i as usize].kind,
            pb::LossPointKind::InTransitGap as i32
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_lot_forward_and_backward_with_pictures() {
    let mut s = scene().await;
    let g =
        s.a.trace_lot(pb::TraceLotRequest {
            lot: "L".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.nodes.len(), 4, "{:#?}", g.nodes);
    assert_eq!(g.edges.len(), 3);
    assert_eq!(g.lots, vec!["L".to_string(), "B2-L".to_string()]);
    let missing: Vec<u64> = g.edges.iter().map(|e| e.missing).collect();
    assert_eq!(missing, vec![10, 0, 2_000]);
    let b2 = g
        .nodes
        .iter()
        .find(|n| n.enterprise == s.b2_code)
        .expect("B2 node");
    assert_eq!((b2.consumed, b2.lost, b2.on_hand), (1_000, 200, 1_800));
    assert_eq!(b2.lots, vec!["B2-L".to_string()]);
    let src = &g.nodes[g.edges[0].from as usize];
    assert_eq!(src.enterprise, s.w.producer);
    assert_eq!(
        (src.produced, src.shipped, src.on_hand),
        (10_000, 8_000, 2_000)
    );
    // Pictures: every shipment drawn, the two with missing quantity in red.
    assert_eq!(g.svg.matches(r#"class="edge""#).count(), 3);
    assert_eq!(g.svg.matches(r#"class="missing""#).count(), 2);
    assert!(g.svg.contains("missing 2,000"));
    assert!(g.svg.starts_with("<svg") && g.svg.trim_end().ends_with("</svg>"));
    assert_eq!(g.dot.matches(" -> ").count(), 3);
    // `TZ_WRITE_EXAMPLE=1 cargo test --test it trace_lot` refreshes the guide's picture.
    if std::env::var_os("TZ_WRITE_EXAMPLE").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::write(docs.join("trace-example.svg"), &g.svg).unwrap();
        std::fs::write(docs.join("trace-example.dot"), &g.dot).unwrap();
    }
    assert!(g.dot.contains("MISSING 10"));
    // Backward from B2-L: it came from L at plant-1, and nothing else.
    let back =
        s.a.trace_lot(pb::TraceLotRequest {
            lot: "B2-L".into(),
            direction: pb::TraceDirection::Backward as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.edges.len(), 1);
    assert_eq!(back.edges[0].ship.as_ref().unwrap().index, s.ship[1].index);
    assert_eq!(back.lots, vec!["B2-L".to_string(), "L".to_string()]);
    // Forward from B2-L: no further shipments.
    let fwd =
        s.a.trace_lot(pb::TraceLotRequest {
            lot: "B2-L".into(),
            direction: pb::TraceDirection::Forward as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fwd.edges.is_empty());
    assert_eq!(fwd.nodes.len(), 1, "{:#?}", fwd.nodes);
    // The edge limit cuts and says so.
    let cut =
        s.a.trace_lot(pb::TraceLotRequest {
            lot: "L".into(),
            max_edges: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cut.edges.len(), 1);
    assert!(cut.truncated);
    let e =
        s.a.trace_lot(pb::TraceLotRequest {
            lot: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("lot"));
    let _ = (&s.b2, &s.b3, &s.server);
}

fn cli(args: Vec<String>) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .args(&args)
        .env("TAIZHANG_QUERY_KEY", key_file(&national_key()))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_balance_trace_and_losses() {
    let s = scene().await;
    let url = s.server.url.clone();
    let producer = s.w.producer.clone();
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("l.svg");
    let dot = tmp.path().join("l.dot");
    let as_of = (now() + 8 * DAY).to_string();
    let args = |a: &[&str]| -> Vec<String> {
        a.iter()
            .map(|s| s.to_string())
            .chain(["--server".to_string(), url.clone()])
            .collect()
    };
    let runs = vec![
        args(&[
            "audit",
            "balance",
            "--enterprise",
            &producer,
            "--site",
            "plant-1",
            "--substance",
            EPHEDRINE,
        ]),
        args(&[
            "audit",
            "trace",
            "L",
            "--svg",
            svg.to_str().unwrap(),
            "--dot",
            dot.to_str().unwrap(),
        ]),
        args(&[
            "audit",
            "losses",
            "--jurisdiction",
            "44",
            "--as-of-ms",
            &as_of,
        ]),
        args(&[
            "audit",
            "losses",
            "--lot",
            "L",
            "--json",
            "--as-of-ms",
            &as_of,
        ]),
        args(&[
            "audit",
            "balance",
            "--enterprise",
            &producer,
            "--site",
            "plant-1",
            "--substance",
            "nope",
        ]),
    ];
    let outs = tokio::task::spawn_blocking(move || runs.into_iter().map(cli).collect::<Vec<_>>())
        .await
        .unwrap();
    let (ok, text) = &outs[0];
    assert!(ok, "{text}");
    for want in [
        "= expected",
        "2,500 mg",
        "produced",
        "10,500",
        "shipped",
        "8,000",
        "variance −50",
        "SHORTFALL",
    ] {
        assert!(text.contains(want), "`{want}` missing in:\n{text}");
    }
    let (ok, text) = &outs[1];
    assert!(ok, "{text}");
    assert!(
        text.contains("MISSING 2,000 mg") && text.contains("MISSING 10 mg"),
        "{text}"
    );
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    assert!(std::fs::read_to_string(&dot)
        .unwrap()
        .starts_with("digraph"));
    let (ok, text) = &outs[2];
    assert!(ok, "{text}");
    assert!(text.contains("4 found"), "{text}");
    for want in [
        "never received",
        "reported",
        "count shortfall",
        "in transit gap",
    ] {
        assert!(text.contains(want), "`{want}` missing in:\n{text}");
    }
    let (ok, text) = &outs[3];
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(text).expect("JSON");
    assert_eq!(v["losses"].as_array().map(Vec::len), Some(4));
    let (ok, text) = &outs[4];
    assert!(!ok);
    assert!(text.contains("substance"), "{text}");
}
