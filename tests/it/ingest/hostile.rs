//! Issue #6: one table of hostile requests over real gRPC, each with its exact status and a check
//! that the ledger is unchanged (size, root, signer head, every derived view); the races and
//! connection floods that do not fit a table follow it.

use super::*;
use std::time::Duration;
use taizhang::client::mg;

/// What a hostile request must get.
enum Want {
    /// Refused with this code and a message naming these.
    Refused(Code, &'static [&'static str]),
    /// An identical retry: the original receipt, flagged duplicate, nothing appended.
    Duplicate,
}

/// A hostile query: refused with this code.
type Query = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + Send>>;

enum Attempt {
    Record(pb::SubmitRequest),
    Query(Query),
}

struct Row {
    name: &'static str,
    attempt: Attempt,
    want: Want,
}

fn rec(
    name: &'static str,
    r: pb::SignedRecord,
    code: Code,
    needles: &'static [&'static str],
) -> Row {
    Row {
        name,
        attempt: Attempt::Record(pb::SubmitRequest { record: Some(r) }),
        want: Want::Refused(code, needles),
    }
}

fn query(name: &'static str, q: Query, code: Code, needles: &'static [&'static str]) -> Row {
    Row {
        name,
        attempt: Attempt::Query(q),
        want: Want::Refused(code, needles),
    }
}

fn qq<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
) -> Query {
    Box::pin(async move { f.await.map(|_| ()) })
}

/// Signs with `key` as if at seq `seq` after `prev` (for keys the harness does not track).
fn signed_at(key: &SigningKey, seq: u64, prev: [u8; 32], p: Payload) -> pb::SignedRecord {
    RecordSigner::new(key.clone(), ORIGIN)
        .resume(seq, prev)
        .sign_detached(p, now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_hostile_requests_each_get_their_status_and_change_nothing() {
    let mut h = Harness::start().await;
    let (producer, buyer) = (h.w.producer.clone(), h.w.buyer.clone());
    // Setup the hostile rows need: stock, a shipment received, a revoked key, an inspector,
    // a permit with a small ceiling, a third enterprise in Shanghai.
    let produced_rec =
        h.w.p
            .sign(produce("plant-1", EPHEDRINE, "L1", 100_000), now());
    let produced = h.accept(produced_rec.clone()).await;
    let p = h
        .permitted(ship("plant-1", EPHEDRINE, "L1", 3_000, &buyer, "wh-1"))
        .await;
    let r = h.w.p.sign(p, now());
    let shipped = h.accept(r).await;
    let r = h.w.b.sign(receive(&shipped, "wh-1", 3_000), now());
    h.accept(r).await;
    let p2 = h
        .permitted(ship("plant-1", EPHEDRINE, "L1", 1_000, &buyer, "wh-1"))
        .await;
    let r = h.w.p.sign(p2, now());
    let open_ship = h.accept(r).await;
    let revoked = SigningKey::from_bytes(&[0xe1; 32]);
    let stranger = SigningKey::from_bytes(&[0xe2; 32]);
    let inspector = SigningKey::from_bytes(&[0xe3; 32]);
    let other = code("91310000MA5HXTLE1");
    let other_key = SigningKey::from_bytes(&[0xe4; 32]);
    let mut nat = RecordSigner::new(national_key(), ORIGIN);
    for p in [
        register(&revoked, &producer),
        revoke(&key_id(&revoked)),
        register_official(&inspector, pb::Role::Inspector, "4403", "team"),
        enrol(
            &other,
            "310101",
            vec![licence(
                pb::Category::Precursor1,
                &[pb::Activity::Purchase, pb::Activity::Produce],
            )],
            &["sh-1"],
        ),
        register(&other_key, &other),
    ] {
        let r = nat.sign(p, now());
        h.accept(r).await;
    }
    let small =
        h.w.issue(
            &mut h.c,
            permit(
                "SMALL-1",
                pb::PermitType::PurchasePermit,
                &buyer,
                EPHEDRINE,
                500,
                true,
            ),
        )
        .await
        .unwrap();
    let mut o = RecordSigner::new(other_key.clone(), ORIGIN);
    let r = o.sign(produce("sh-1", EPHEDRINE, "SH-1", 1_000), now());
    let other_produce = h.accept(r).await;

    let beyond = h
        .permitted(ship("plant-1", EPHEDRINE, "L1", 1_000_000, &buyer, "wh-1"))
        .await;
    let mut overdraw = match h
        .permitted(ship("plant-1", EPHEDRINE, "L1", 400, &buyer, "wh-1"))
        .await
    {
        Payload::Ship(s) => s,
        _ => unreachable!(),
    };
    overdraw.permit = Some(receipt_ref(&small));
    overdraw.quantity = Some(mg(600));
    let overdraw = h.w.p.sign_detached(Payload::Ship(overdraw), now());
    let p = &h.w.p;
    let b = &h.w.b;
    let good = || produce("plant-1", EPHEDRINE, "L9", 1_000);
    let mut flipped = p.sign_detached(good(), now());
    flipped.signature[5] ^= 1;
    let mut bad_cosig = p.sign_detached(good(), now());
    bad_cosig.cosignatures.push(pb::Cosignature {
        key_id: key_id(&inspector).0.to_vec(),
        signature: vec![7; 64],
    });
    let mut short_sig = p.sign_detached(good(), now());
    short_sig.signature.truncate(10);
    let padded = signed_bytes(
        p.key(),
        padded_body(&p.body(good(), now()), MAX_BODY_BYTES + 1),
    );
    let wrapped = u64::MAX - 999; // "−1,000" as a wrapped u64
    let edited = |f: fn(&mut pb::Ship)| {
        let Payload::Ship(mut s) = ship("plant-1", EPHEDRINE, "L1", 100, &buyer, "wh-1") else {
            unreachable!()
        };
        f(&mut s);
        p.sign_detached(Payload::Ship(s), now())
    };
    let cash = edited(|s| s.payment_method = "现金".into());
    let to_nobody = edited(|s| s.consignee = code("91440300MA5NBDYX1"));
    let destroy = Payload::Destroy(pb::Destroy {
        site_id: "plant-1".into(),
        substance: EPHEDRINE.into(),
        lot: "L1".into(),
        quantity: Some(mg(10)),
        method: "incineration".into(),
        application_ref: "D-1".into(),
    });
    let foreign_ship_ref = entry_ref(ORIGIN, open_ship.index, &open_ship.leaf_hash);
    let forged_ref = entry_ref(ORIGIN, open_ship.index, &[9; 32]);
    let other_origin_ref = entry_ref(OTHER_ORIGIN, open_ship.index, &open_ship.leaf_hash);
    let produced_ref = entry_ref(ORIGIN, produced.index, &produced.leaf_hash);
    let small_order = {
        // The identity point: a small-order public key.
        let mut k = [0u8; 32];
        k[0] = 1;
        k.to_vec()
    };
    let mut unknown_unit = match produce("plant-1", EPHEDRINE, "L9", 5) {
        Payload::Produce(mut x) => {
            x.quantity = Some(pb::Quantity {
                amount: 5,
                unit: 99,
            });
            x
        }
        _ => unreachable!(),
    };
    unknown_unit.lot = "L9".into();
    let seq = p.next_seq();

    let mut rows: Vec<Row> = vec![
        // Decoding and limits.
        Row {
            name: "no record",
            attempt: Attempt::Record(pb::SubmitRequest { record: None }),
            want: Want::Refused(Code::InvalidArgument, &["record"]),
        },
        rec(
            "garbage body bytes",
            signed_bytes(p.key(), vec![0xff; 40]),
            Code::InvalidArgument,
            &["body"],
        ),
        rec(
            "empty body",
            signed_bytes(p.key(), vec![]),
            Code::InvalidArgument,
            &["body"],
        ),
        rec(
            "body one byte over 64 KiB",
            padded,
            Code::InvalidArgument,
            &["record.body"],
        ),
        rec(
            "signature of 10 bytes",
            short_sig,
            Code::InvalidArgument,
            &["signature"],
        ),
        rec(
            "no payload",
            tweak(p, good(), |b| b.payload = None),
            Code::InvalidArgument,
            &["payload"],
        ),
        rec(
            "unknown unit enum value",
            p.sign_detached(Payload::Produce(unknown_unit), now()),
            Code::InvalidArgument,
            &["unit"],
        ),
        rec(
            "NUL inside an identifier",
            p.sign_detached(produce("plant-1", EPHEDRINE, "L\0X", 5), now()),
            Code::InvalidArgument,
            &["lot"],
        ),
        // Origin, keys and signatures.
        rec(
            "wrong origin",
            tweak(p, good(), |b| b.ledger_origin = OTHER_ORIGIN.into()),
            Code::InvalidArgument,
            &["ledger_origin"],
        ),
        rec(
            "forged signature",
            flipped,
            Code::Unauthenticated,
            &["signature"],
        ),
        rec(
            "unregistered key",
            signed_at(&stranger, 0, [0; 32], good()),
            Code::Unauthenticated,
            &["not registered"],
        ),
        rec(
            "revoked key",
            signed_at(&revoked, 0, [0; 32], good()),
            Code::PermissionDenied,
            &["revoked"],
        ),
        rec(
            "garbage cosignature",
            bad_cosig,
            Code::Unauthenticated,
            &["cosignature"],
        ),
        // The signer's chain.
        rec(
            "seq gap",
            tweak(p, good(), |b| b.signer_seq = seq + 5),
            Code::FailedPrecondition,
            &["signer_seq"],
        ),
        rec(
            "wrong signer_prev",
            tweak(p, good(), |b| b.signer_prev = vec![3; 32]),
            Code::FailedPrecondition,
            &["signer_prev"],
        ),
        rec(
            "seq fork (equivocation)",
            tweak(p, good(), |b| b.signer_seq = 0),
            Code::AlreadyExists,
            &["equivocation"],
        ),
        Row {
            name: "replay of an accepted record",
            attempt: Attempt::Record(pb::SubmitRequest {
                record: Some(produced_rec.clone()),
            }),
            want: Want::Duplicate,
        },
        // Roles.
        rec(
            "enterprise key enrolling an enterprise",
            p.sign_detached(
                enrol(&code("91440300MA5RGUEX1"), "440305", vec![], &["x"]),
                now(),
            ),
            Code::PermissionDenied,
            &["may not sign"],
        ),
        rec(
            "small-order key registration",
            nat.sign_detached(
                register_with(small_order, pb::Role::Enterprise, &producer, None),
                now(),
            ),
            Code::InvalidArgument,
            &["public_key"],
        ),
        rec(
            "registering a key twice",
            nat.sign_detached(register(p.key(), &producer), now()),
            Code::AlreadyExists,
            &["already registered"],
        ),
        // Quantities and the catalogue.
        rec(
            "zero quantity",
            p.sign_detached(produce("plant-1", EPHEDRINE, "L9", 0), now()),
            Code::InvalidArgument,
            &["quantity"],
        ),
        rec(
            "no quantity",
            p.sign_detached(produce_q("plant-1", EPHEDRINE, "L9", None), now()),
            Code::InvalidArgument,
            &["quantity"],
        ),
        rec(
            "wrong unit for the substance",
            p.sign_detached(produce_q("plant-1", EPHEDRINE, "L9", Some(ml(5))), now()),
            Code::InvalidArgument,
            &["unit"],
        ),
        rec(
            "negative as a wrapped u64 (ship)",
            p.sign_detached(
                ship("plant-1", EPHEDRINE, "L1", wrapped, &buyer, "wh-1"),
                now(),
            ),
            Code::FailedPrecondition,
            &[],
        ),
        rec(
            "overflowing book stock",
            p.sign_detached(produce("plant-1", EPHEDRINE, "LMAX", u64::MAX), now()),
            Code::FailedPrecondition,
            &["u64"],
        ),
        rec(
            "producing into an existing lot",
            p.sign_detached(produce("plant-1", EPHEDRINE, "L1", 5), now()),
            Code::AlreadyExists,
            &["lot"],
        ),
        rec(
            "unknown substance",
            p.sign_detached(produce("plant-1", "0000-00-0", "L9", 5), now()),
            Code::InvalidArgument,
            &["substance"],
        ),
        rec(
            "not a controlled substance",
            p.sign_detached(produce("plant-1", WATER, "L9", 5), now()),
            Code::InvalidArgument,
            &["substance"],
        ),
        // Licences, sites, stock.
        rec(
            "unlicensed activity (buyer produces)",
            b.sign_detached(produce("wh-1", EPHEDRINE, "B1", 5), now()),
            Code::FailedPrecondition,
            &["licence"],
        ),
        rec(
            "unlicensed category",
            p.sign_detached(produce("plant-1", "108-24-7", "L9", 5), now()),
            Code::FailedPrecondition,
            &["licence"],
        ),
        rec(
            "site the enterprise does not have",
            p.sign_detached(produce("wh-1", EPHEDRINE, "L9", 5), now()),
            Code::FailedPrecondition,
            &["has no site"],
        ),
        rec(
            "stock-take of a site the enterprise does not have",
            p.sign_detached(counts("wh-1", &[(EPHEDRINE, "L1", 1)]), now()),
            Code::FailedPrecondition,
            &["has no site"],
        ),
        rec(
            "ship beyond book stock",
            p.sign_detached(beyond, now()),
            Code::FailedPrecondition,
            &["stock"],
        ),
        rec(
            "ship without the buyer's permit",
            p.sign_detached(ship("plant-1", EPHEDRINE, "L1", 10, &buyer, "wh-1"), now()),
            Code::FailedPrecondition,
            &["PURCHASE_PERMIT"],
        ),
        rec(
            "ship to an enterprise not enrolled",
            to_nobody,
            Code::FailedPrecondition,
            &["consignee"],
        ),
        rec("cash payment", cash, Code::FailedPrecondition, &["cash"]),
        rec(
            "permit overdraw",
            overdraw,
            Code::FailedPrecondition,
            &["remaining"],
        ),
        rec(
            "destroy without an inspector's co-signature",
            p.sign_detached(destroy, now()),
            Code::PermissionDenied,
            &["inspector"],
        ),
        // Receipts.
        rec(
            "receipt of someone else's shipment",
            o.sign_detached(
                receive_ref(Some(foreign_ship_ref), "sh-1", Some(mg(1_000)), ""),
                now(),
            ),
            Code::FailedPrecondition,
            &["not a shipment to"],
        ),
        rec(
            "receipt citing a forged leaf hash",
            b.sign_detached(
                receive_ref(Some(forged_ref), "wh-1", Some(mg(1_000)), ""),
                now(),
            ),
            Code::FailedPrecondition,
            &["leaf_hash"],
        ),
        rec(
            "receipt citing another ledger",
            b.sign_detached(
                receive_ref(Some(other_origin_ref), "wh-1", Some(mg(1_000)), ""),
                now(),
            ),
            Code::FailedPrecondition,
            &["not this ledger"],
        ),
        rec(
            "receipt citing a produce, not a shipment",
            b.sign_detached(
                receive_ref(Some(produced_ref), "wh-1", Some(mg(1_000)), ""),
                now(),
            ),
            Code::FailedPrecondition,
            &["ship"],
        ),
        rec(
            "receiving the received shipment again",
            b.sign_detached(receive(&shipped, "wh-1", 3_000), now()),
            Code::AlreadyExists,
            &["already received"],
        ),
    ];
    // Queries across parties and jurisdictions, and bad query signatures.
    let url = h.server.url.clone();
    let mut enterprise = client_as(&url, h.w.p.key().clone()).await;
    let mut insp = audit_as(&url, inspector.clone()).await;
    let mut bare = LedgerClient::connect(url.clone()).await.unwrap();
    let t = now();
    let replayed = || {
        let q = pb::GetEntryRequest { index: 0 };
        let sig = crypto::sign_query(
            &national_key(),
            "/taizhang.v1.Ledger/GetEntry",
            t,
            &[4; 16],
            &prost::Message::encode_to_vec(&q),
        );
        let mut r = tonic::Request::new(q);
        let m = r.metadata_mut();
        m.insert("tz-key", key_id(&national_key()).to_hex().parse().unwrap());
        m.insert("tz-time", t.to_string().parse().unwrap());
        m.insert("tz-nonce", hex::encode([4u8; 16]).parse().unwrap());
        m.insert("tz-signature", hex::encode(sig).parse().unwrap());
        r
    };
    bare.get_entry(replayed())
        .await
        .expect("the first use of the query signature");
    rows.extend([
        query(
            "enterprise reads another party's entry",
            qq({
                let idx = other_produce.index;
                async move {
                    enterprise
                        .get_entry(pb::GetEntryRequest { index: idx })
                        .await
                }
            }),
            Code::PermissionDenied,
            &["index"],
        ),
        query(
            "inspector reads outside its jurisdiction",
            qq({
                let other = other.clone();
                async move {
                    insp.mass_balance(pb::MassBalanceRequest {
                        enterprise: other,
                        site: "sh-1".into(),
                        substance: EPHEDRINE.into(),
                        ..Default::default()
                    })
                    .await
                }
            }),
            Code::PermissionDenied,
            &["scope"],
        ),
        query(
            "replayed query signature",
            qq({
                let mut bare = bare.clone();
                let r = replayed();
                async move { bare.get_entry(r).await }
            }),
            Code::Unauthenticated,
            &["tz-nonce"],
        ),
        query(
            "unsigned query",
            qq({
                let mut bare = bare.clone();
                async move { bare.get_entry(pb::GetEntryRequest { index: 0 }).await }
            }),
            Code::Unauthenticated,
            &["tz-key"],
        ),
        query(
            "query signed by a revoked key",
            qq({
                let url = url.clone();
                let revoked = revoked.clone();
                async move {
                    client_as(&url, revoked)
                        .await
                        .get_entry(pb::GetEntryRequest { index: 0 })
                        .await
                }
            }),
            Code::Unauthenticated,
            &["revoked"],
        ),
    ]);
    assert!(rows.len() >= 40, "only {} hostile cases", rows.len());
    let n = rows.len();
    let mut wrong = Vec::new();
    for row in rows {
        let before = h.snapshot(None).await;
        let outcome = match row.attempt {
            Attempt::Record(req) => h.c.submit(req).await.map(|r| Some(r.into_inner())),
            Attempt::Query(q) => q.await.map(|_| None),
        };
        match (outcome, row.want) {
            (Err(e), Want::Refused(code, needles)) => {
                if e.code() != code || needles.iter().any(|n| !e.message().contains(n)) {
                    wrong.push(format!(
                        "{}: got {:?} `{}`, want {code:?} naming {needles:?}",
                        row.name,
                        e.code(),
                        e.message()
                    ));
                }
            }
            (Ok(Some(r)), Want::Duplicate) if r.duplicate => {}
            (got, _) => wrong.push(format!("{}: got {got:?}", row.name)),
        }
        let after = h.snapshot(None).await;
        assert_eq!(
            (before.size, &before.root),
            (after.size, &after.root),
            "{}: the log changed",
            row.name
        );
        assert!(
            before.views == after.views,
            "{}: the views changed",
            row.name
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    println!("{n} hostile cases, each refused as expected with the ledger unchanged");
    // The fork is kept as evidence.
    let ev = equivocations(&mut h.c, &h.w.p.key_id()).await;
    assert_eq!(ev.len(), 1);
}

/// Two sellers race to draw on one single-use permit of the buyer: exactly one shipment is
/// accepted, and the permit is drawn once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_spend_raced_by_two_sellers_is_accepted_once() {
    let mut h = Harness::start().await;
    let (producer, buyer) = (h.w.producer.clone(), h.w.buyer.clone());
    // A second seller: the buyer itself may sell, so enrol a third trader.
    let seller2 = code("91440300MA5KELRB1");
    let k2 = SigningKey::from_bytes(&[0xe5; 32]);
    for p in [
        enrol(
            &seller2,
            "440307",
            vec![licence(
                pb::Category::Precursor1,
                &[pb::Activity::Produce, pb::Activity::Sell],
            )],
            &["s2"],
        ),
        register(&k2, &seller2),
    ] {
        let r = h.w.reg.sign(p, now());
        h.accept(r).await;
    }
    let mut s2 = RecordSigner::new(k2, ORIGIN);
    let r = h.w.p.sign(produce("plant-1", EPHEDRINE, "A", 5_000), now());
    h.accept(r).await;
    let r = s2.sign(produce("s2", EPHEDRINE, "B", 5_000), now());
    h.accept(r).await;
    let permit =
        h.w.issue(
            &mut h.c,
            permit(
                "RACE-1",
                pb::PermitType::PurchasePermit,
                &buyer,
                EPHEDRINE,
                1_000,
                true,
            ),
        )
        .await
        .unwrap();
    let mut ships = Vec::new();
    for (seller, site, lot) in [(&producer, "plant-1", "A"), (&seller2, "s2", "B")] {
        let p =
            h.w.permitted(
                &mut h.c,
                seller,
                ship(site, EPHEDRINE, lot, 1_000, &buyer, "wh-1"),
            )
            .await;
        let Payload::Ship(mut s) = p else {
            unreachable!()
        };
        s.permit = Some(receipt_ref(&permit));
        ships.push(Payload::Ship(s));
    }
    let a = h.w.p.sign(ships.remove(0), now());
    let b = s2.sign(ships.remove(0), now());
    let (mut c1, mut c2) = (h.server.client().await, h.server.client().await);
    let (ra, rb) = tokio::join!(submit(&mut c1, a), submit(&mut c2, b));
    let outcomes = [ra.is_ok(), rb.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|x| **x).count(),
        1,
        "exactly one seller draws: {ra:?} {rb:?}"
    );
    let refused = ra.err().or(rb.err()).unwrap();
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "{}",
        refused.message()
    );
    let rec = audit_client(&h.server.url)
        .await
        .reconcile_permit(pb::ReconcilePermitRequest {
            permit: Some(pb::reconcile_permit_request::Permit::PermitNo(
                "RACE-1".into(),
            )),
            as_of_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rec.draw_downs.len(), 1);
    assert_eq!(rec.permit.unwrap().drawn, 1_000);
}

/// Slow-loris connections that never finish the HTTP/2 preface, silent ones, and a flood past
/// the connection limit: the server keeps answering, closes the stalled ones at the deadline,
/// refuses what is over the limit, and serves new clients once the flood has been cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_and_connection_floods_are_bounded_and_the_server_stays_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) = taizhang::ledger::Ledger::open(config(tmp.path())).unwrap();
    let (listener, addr) = taizhang::api::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(taizhang::api::serve_opts(
        ledger.clone(),
        listener,
        std::future::pending(),
        taizhang::api::ServeOptions {
            max_connections: 64,
            idle_timeout: Duration::from_millis(800),
            ..Default::default()
        },
    ));
    let url = format!("http://{addr}");
    // A client that is already connected keeps its connection through the flood.
    let mut c = ledger_client(&url).await;
    c.get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .unwrap();
    let mut held = Vec::new();
    for i in 0..300 {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        if i % 2 == 0 {
            // Half a preface, then silence.
            let _ = s.write_all(b"PRI * HTTP/2.0\r\n").await;
        }
        held.push(s);
    }
    let cp = tokio::time::timeout(
        Duration::from_secs(10),
        c.get_checkpoint(pb::GetCheckpointRequest::default()),
    )
    .await
    .expect("the connected client is answered during the flood")
    .expect("checkpoint")
    .into_inner();
    // Every stalled connection is closed by the server: over the limit at once, the rest at the
    // preface deadline.
    let mut closed = 0;
    for s in &mut held {
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        closed += r.is_ok() as usize;
    }
    assert_eq!(
        closed,
        held.len(),
        "only {closed} of {} stalled connections were closed",
        held.len()
    );
    drop(held);
    // New clients are served, and records accepted.
    let mut fresh = ledger_client(&url).await;
    let mut reg = RecordSigner::new(national_key(), ORIGIN);
    let r = reg.sign(
        enrol(&code("91440300MA5LRXXX1"), "440305", vec![], &["s"]),
        now(),
    );
    let got = tokio::time::timeout(Duration::from_secs(10), submit(&mut fresh, r))
        .await
        .expect("a new client is served after the flood")
        .expect("accepted");
    assert_eq!(got.index, cp.size);
}
