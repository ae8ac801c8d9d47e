//! Authenticated queries over real gRPC: every role × query × own / other party or jurisdiction
//! with its expected outcome; replays, stale times, revoked, unregistered and wrong-role keys;
//! tampered signatures; what a scoped reader sees of an export and of a custody graph.

use crate::common::*;
use ed25519_dalek::SigningKey;
use taizhang::api::auth::{self, SignedChannel as Channel};
use taizhang::client::RecordSigner;
use taizhang::crypto;
use taizhang::pb::{self, audit_client::AuditClient, ledger_client::LedgerClient};
use tonic::Code;

const OTHER: &str = "91310000MA5PUDNG1";

struct Scene {
    server: Server,
    producer: String,
    buyer: String,
    other: String,
    /// The producer's shipment to the buyer, the buyer's receipt, the other's produce.
    ship: pb::Receipt,
    receive: pb::Receipt,
    other_produce: pb::Receipt,
    /// Keys by name: producer, buyer, other (enterprises), insp4403, insp31, national
    /// (inspectors), witness, revoked, unregistered.
    keys: Vec<(&'static str, SigningKey)>,
}

impl Scene {
    fn key(&self, name: &str) -> SigningKey {
        self.keys
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no key {name}"))
            .1
            .clone()
    }
    async fn ledger(&self, name: &str) -> LedgerClient<Channel> {
        client_as(&self.server.url, self.key(name)).await
    }
    async fn audit(&self, name: &str) -> AuditClient<Channel> {
        audit_as(&self.server.url, self.key(name)).await
    }
    /// A ledger client that signs nothing.
    async fn bare(&self) -> LedgerClient<tonic::transport::Channel> {
        LedgerClient::connect(self.server.url.clone())
            .await
            .unwrap()
    }
}

async fn ok(c: &mut LedgerClient<Channel>, r: pb::SignedRecord) -> pb::Receipt {
    submit(c, r)
        .await
        .unwrap_or_else(|s| panic!("refused: {:?} {}", s.code(), s.message()))
}

/// A producer (440305) ships 3 g of lot L1 to a buyer (440306), which receives it; an
/// enterprise in Shanghai (310101) produces its own lot. Inspectors of 4403, of 31 and of the
/// nation, a witness, a revoked key and a key never registered.
async fn scene() -> Scene {
    let server = Server::start().await;
    let mut c = server.client().await;
    let mut w = World::setup(&mut c).await;
    use pb::{Activity::*, Category::*};
    let other = code(OTHER);
    let ok_key = SigningKey::from_bytes(&[0xa1; 32]);
    let mut o = RecordSigner::new(ok_key.clone(), ORIGIN);
    let officials = [
        ("insp4403", 0xa2u8, pb::Role::Inspector, "4403"),
        ("insp31", 0xa3, pb::Role::Inspector, "31"),
        ("national", 0xa4, pb::Role::Inspector, ""),
        ("witness", 0xa5, pb::Role::Witness, "44"),
    ];
    let revoked = SigningKey::from_bytes(&[0xa6; 32]);
    let mut setup = vec![
        enrol(
            &other,
            "310101",
            vec![licence(Precursor1, &[Produce, Sell])],
            &["sh-1"],
        ),
        register(&ok_key, &other),
        register(&revoked, &w.producer),
        pb::record_body::Payload::RevokeKey(pb::RevokeKey {
            key_id: key_id(&revoked).0.to_vec(),
            reason: "laptop lost".into(),
        }),
    ];
    let mut keys = vec![
        ("producer", w.p.key().clone()),
        ("buyer", w.b.key().clone()),
        ("other", ok_key),
        ("revoked", revoked),
        ("unregistered", SigningKey::from_bytes(&[0xa7; 32])),
    ];
    for (name, seed, role, j) in officials {
        let k = SigningKey::from_bytes(&[seed; 32]);
        setup.push(register_official(&k, role, j, name));
        keys.push((name, k));
    }
    // The national root regulator enrols outside Guangdong.
    let mut nat = RecordSigner::new(national_key(), ORIGIN);
    for p in setup {
        let r = nat.sign(p, now());
        ok(&mut c, r).await;
    }
    let producer = w.producer.clone();
    let buyer = w.buyer.clone();
    let r = w.p.sign(produce("plant-1", EPHEDRINE, "L1", 10_000), now());
    ok(&mut c, r).await;
    let p = w
        .permitted(
            &mut c,
            &producer,
            ship("plant-1", EPHEDRINE, "L1", 3_000, &buyer, "wh-1"),
        )
        .await;
    let r = w.p.sign(p, now());
    let ship_r = ok(&mut c, r).await;
    let r = w.b.sign(receive(&ship_r, "wh-1", 3_000), now());
    let receive_r = ok(&mut c, r).await;
    let r = o.sign(produce("sh-1", EPHEDRINE, "SH-L", 5_000), now());
    let other_produce = ok(&mut c, r).await;
    Scene {
        server,
        producer,
        buyer,
        other,
        ship: ship_r,
        receive: receive_r,
        other_produce,
        keys,
    }
}

/// The outcome of a call: `Ok` or the status code.
fn outcome<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<(), Code> {
    r.map(|_| ()).map_err(|s| s.code())
}

const READERS: [&str; 6] = [
    "producer", "buyer", "other", "insp4403", "insp31", "national",
];

/// Expected outcomes, one per reader in [`READERS`] order: `y` allowed, `n` permission denied.
fn expect(row: &str) -> Vec<Result<(), Code>> {
    row.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            'y' => Ok(()),
            'n' => Err(Code::PermissionDenied),
            _ => panic!("bad expectation {c}"),
        })
        .collect()
}

#[tokio::test]
async fn each_role_reads_its_own_party_or_jurisdiction_only() {
    let s = scene().await;
    let permit_no = "TP-1"; // the buyer's purchase permit (World::permitted)
    let transport = "TT-2"; // the producer's transport permit, consignee the buyer
    let lot = "L1";
    let pk = key_id(&s.key("producer")).0.to_vec();
    //                                    producer buyer other insp4403 insp31 national
    let table: Vec<(&str, &str)> = vec![
        ("GetEntry ship", "y y n y n y"),
        ("GetEntry receive", "y y n y n y"),
        ("GetEntry other's produce", "n n y n y y"),
        ("GetEntry genesis", "y y y y y y"),
        ("GetSignerHead producer key", "y n n y n y"),
        ("GetEquivocations producer key", "y n n y n y"),
        ("ReconcilePermit buyer's purchase permit", "n y n y n y"),
        ("ReconcilePermit producer's transport permit", "y y n y n y"),
        ("ListPermits holder buyer", "n y n y n y"),
        ("ListPermits jurisdiction 4403", "n n n y n y"),
        ("ListPermits jurisdiction 31", "n n n n y y"),
        ("MassBalance producer plant-1", "y n n y n y"),
        ("MassBalance other sh-1", "n n y n y y"),
        ("FindLosses enterprise producer", "y n n y n y"),
        ("FindLosses jurisdiction 44", "n n n n n y"),
        ("FindLosses jurisdiction 440305", "n n n y n y"),
        ("TraceLot L1", "y y n y n y"),
        ("TraceLot SH-L", "n n y n y y"),
        ("SelectSpotChecks 4403", "n n n y n y"),
        ("SelectSpotChecks 31", "n n n n y y"),
        ("WatchEntries", "y y y y y y"),
    ];
    let note = s
        .bare()
        .await
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner()
        .note;
    let mut failures = Vec::new();
    for (query, row) in &table {
        let want = expect(row);
        assert_eq!(want.len(), READERS.len(), "{query}");
        for (reader, want) in READERS.iter().zip(want) {
            let mut l = s.ledger(reader).await;
            let mut a = s.audit(reader).await;
            let holder = |h: &str| pb::ListPermitsRequest {
                scope: Some(pb::list_permits_request::Scope::Holder(h.into())),
                ..Default::default()
            };
            let division = |j: &str| pb::ListPermitsRequest {
                scope: Some(pb::list_permits_request::Scope::Jurisdiction(j.into())),
                ..Default::default()
            };
            let balance = |e: &str, site: &str| pb::MassBalanceRequest {
                enterprise: e.into(),
                site: site.into(),
                substance: EPHEDRINE.into(),
                ..Default::default()
            };
            let losses = |scope| pb::FindLossesRequest {
                scope: Some(scope),
                ..Default::default()
            };
            let reconcile = |no: &str| pb::ReconcilePermitRequest {
                permit: Some(pb::reconcile_permit_request::Permit::PermitNo(no.into())),
                as_of_ms: 0,
            };
            let trace = |lot: &str| pb::TraceLotRequest {
                lot: lot.into(),
                ..Default::default()
            };
            use pb::find_losses_request::Scope as L;
            let got = match *query {
                "GetEntry ship" => outcome(
                    l.get_entry(pb::GetEntryRequest {
                        index: s.ship.index,
                    })
                    .await,
                ),
                "GetEntry receive" => outcome(
                    l.get_entry(pb::GetEntryRequest {
                        index: s.receive.index,
                    })
                    .await,
                ),
                "GetEntry other's produce" => outcome(
                    l.get_entry(pb::GetEntryRequest {
                        index: s.other_produce.index,
                    })
                    .await,
                ),
                "GetEntry genesis" => outcome(l.get_entry(pb::GetEntryRequest { index: 0 }).await),
                "GetSignerHead producer key" => outcome(
                    l.get_signer_head(pb::GetSignerHeadRequest { key_id: pk.clone() })
                        .await,
                ),
                "GetEquivocations producer key" => outcome(
                    l.get_equivocations(pb::GetEquivocationsRequest { key_id: pk.clone() })
                        .await,
                ),
                "ReconcilePermit buyer's purchase permit" => {
                    outcome(a.reconcile_permit(reconcile(permit_no)).await)
                }
                "ReconcilePermit producer's transport permit" => {
                    outcome(a.reconcile_permit(reconcile(transport)).await)
                }
                "ListPermits holder buyer" => outcome(a.list_permits(holder(&s.buyer)).await),
                "ListPermits jurisdiction 4403" => outcome(a.list_permits(division("4403")).await),
                "ListPermits jurisdiction 31" => outcome(a.list_permits(division("31")).await),
                "MassBalance producer plant-1" => {
                    outcome(a.mass_balance(balance(&s.producer, "plant-1")).await)
                }
                "MassBalance other sh-1" => {
                    outcome(a.mass_balance(balance(&s.other, "sh-1")).await)
                }
                "FindLosses enterprise producer" => outcome(
                    a.find_losses(losses(L::Enterprise(s.producer.clone())))
                        .await,
                ),
                "FindLosses jurisdiction 44" => {
                    outcome(a.find_losses(losses(L::Jurisdiction("44".into()))).await)
                }
                "FindLosses jurisdiction 440305" => outcome(
                    a.find_losses(losses(L::Jurisdiction("440305".into())))
                        .await,
                ),
                "TraceLot L1" => outcome(a.trace_lot(trace(lot)).await),
                "TraceLot SH-L" => outcome(a.trace_lot(trace("SH-L")).await),
                "SelectSpotChecks 4403" | "SelectSpotChecks 31" => outcome(
                    a.select_spot_checks(pb::SelectSpotChecksRequest {
                        checkpoint: note.clone(),
                        jurisdiction: query.rsplit(' ').next().unwrap().into(),
                        sample_size: 2,
                    })
                    .await,
                ),
                // Everyone may watch; what it sees is redacted to its scope (tested below).
                "WatchEntries" => {
                    outcome(l.watch_entries(pb::WatchEntriesRequest { from: 0 }).await)
                }
                q => panic!("no query {q}"),
            };
            if got != want {
                failures.push(format!("{query} as {reader}: got {got:?}, want {want:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_witness_reads_nothing_and_refusals_leak_nothing() {
    let s = scene().await;
    // The witness: permission denied on every query, however harmless.
    let mut w = s.ledger("witness").await;
    let e = w
        .get_entry(pb::GetEntryRequest { index: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("witness"), "{}", e.message());
    let e = s
        .audit("witness")
        .await
        .find_losses(pb::FindLossesRequest {
            scope: Some(pb::find_losses_request::Scope::Jurisdiction("44".into())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // A scoped reader cannot tell another party's permit or lot from one that does not exist.
    let mut a = s.audit("other").await;
    let reconcile = |no: &str| pb::ReconcilePermitRequest {
        permit: Some(pb::reconcile_permit_request::Permit::PermitNo(no.into())),
        as_of_ms: 0,
    };
    let real = a.reconcile_permit(reconcile("TP-1")).await.unwrap_err();
    let absent = a.reconcile_permit(reconcile("TP-9")).await.unwrap_err();
    assert_eq!(real.code(), Code::PermissionDenied);
    assert_eq!(absent.code(), Code::PermissionDenied);
    assert_eq!(
        real.message().replace("TP-1", "X"),
        absent.message().replace("TP-9", "X")
    );
    let trace = |lot: &str| pb::TraceLotRequest {
        lot: lot.into(),
        ..Default::default()
    };
    let real = a.trace_lot(trace("L1")).await.unwrap_err();
    let absent = a.trace_lot(trace("NO-SUCH-LOT")).await.unwrap_err();
    assert_eq!(
        (real.code(), absent.code()),
        (Code::PermissionDenied, Code::PermissionDenied)
    );
    assert_eq!(
        real.message().replace("L1", "X"),
        absent.message().replace("NO-SUCH-LOT", "X")
    );
    // A national reader is told the truth: it does not exist.
    let e = s
        .audit("national")
        .await
        .reconcile_permit(reconcile("TP-9"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn scoped_exports_redact_and_scoped_traces_stop_at_the_edge_of_scope() {
    let s = scene().await;
    let export = |mut c: LedgerClient<Channel>| async move {
        let mut st = c
            .export_entries(pb::ExportEntriesRequest { from: 0, to: 0 })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(e) = st.message().await.unwrap() {
            out.push(e);
        }
        out
    };
    let all = export(s.ledger("national").await).await;
    let mine = export(s.ledger("buyer").await).await;
    assert_eq!(all.len(), mine.len());
    assert!(all.iter().all(|e| !e.redacted && !e.leaf.is_empty()));
    for (a, m) in all.iter().zip(&mine) {
        assert_eq!((a.index, &a.leaf_hash), (m.index, &m.leaf_hash));
        if m.redacted {
            assert!(m.leaf.is_empty());
        } else {
            assert_eq!(a.leaf, m.leaf);
        }
    }
    let shown = |i: u64| !mine[i as usize].redacted;
    assert!(shown(0), "genesis is readable by all");
    assert!(shown(s.ship.index) && shown(s.receive.index));
    assert!(
        !shown(s.other_produce.index),
        "another party's produce is redacted"
    );
    // The producer's own produce of L1 (just before the permits) is not the buyer's.
    let redacted = mine.iter().filter(|e| e.redacted).count();
    assert!(redacted >= 3, "only {redacted} redacted");

    // The buyer traces L1: it sees the shipment it received, the producer named at the far end
    // with none of the producer's figures.
    let t = s
        .audit("buyer")
        .await
        .trace_lot(pb::TraceLotRequest {
            lot: "L1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.edges.len(), 1);
    let from = &t.nodes[t.edges[0].from as usize];
    let to = &t.nodes[t.edges[0].to as usize];
    assert_eq!(
        (from.enterprise.as_str(), to.enterprise.as_str()),
        (s.producer.as_str(), s.buyer.as_str())
    );
    assert_eq!((from.produced, from.on_hand, from.entries.len()), (0, 0, 0));
    assert_eq!(to.received, 3_000);
    let full = s
        .audit("producer")
        .await
        .trace_lot(pb::TraceLotRequest {
            lot: "L1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let p = full
        .nodes
        .iter()
        .find(|n| n.enterprise == s.producer)
        .unwrap();
    assert_eq!(p.produced, 10_000);
}

/// A query signed by hand: (key, time, nonce, the request the signature covers).
fn signed<T: prost::Message>(
    key: &SigningKey,
    method: &str,
    time: u64,
    nonce: [u8; 16],
    signed_over: &T,
    sent: T,
) -> tonic::Request<T> {
    let sig = crypto::sign_query(key, method, time, &nonce, &signed_over.encode_to_vec());
    let mut r = tonic::Request::new(sent);
    let m = r.metadata_mut();
    m.insert(auth::KEY_HEADER, key_id(key).to_hex().parse().unwrap());
    m.insert(auth::TIME_HEADER, time.to_string().parse().unwrap());
    m.insert(auth::NONCE_HEADER, hex::encode(nonce).parse().unwrap());
    m.insert(auth::SIGNATURE_HEADER, hex::encode(sig).parse().unwrap());
    r
}

#[tokio::test]
async fn bad_query_signatures_are_unauthenticated_and_public_rpcs_need_none() {
    let s = scene().await;
    let mut c = s.bare().await;
    const GET: &str = "/taizhang.v1.Ledger/GetEntry";
    let q = |index| pb::GetEntryRequest { index };
    let national = s.key("national");
    let refused = |r: Result<tonic::Response<pb::Entry>, tonic::Status>, code: Code, says: &str| {
        let e = r.expect_err("must be refused");
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().contains(says),
            "`{}` should say `{says}`",
            e.message()
        );
    };
    // No signature at all.
    refused(
        c.get_entry(q(0)).await,
        Code::Unauthenticated,
        "tz-key: required",
    );
    // A good one, then its replay.
    let t = now();
    assert!(c
        .get_entry(signed(&national, GET, t, [1; 16], &q(0), q(0)))
        .await
        .is_ok());
    refused(
        c.get_entry(signed(&national, GET, t, [1; 16], &q(0), q(0)))
            .await,
        Code::Unauthenticated,
        "tz-nonce",
    );
    // Stale and future times.
    refused(
        c.get_entry(signed(&national, GET, t - 600_000, [2; 16], &q(0), q(0)))
            .await,
        Code::Unauthenticated,
        "tz-time",
    );
    refused(
        c.get_entry(signed(&national, GET, t + 600_000, [3; 16], &q(0), q(0)))
            .await,
        Code::Unauthenticated,
        "tz-time",
    );
    // Signed over another request, or for another method.
    refused(
        c.get_entry(signed(&national, GET, t, [4; 16], &q(1), q(0)))
            .await,
        Code::Unauthenticated,
        "tz-signature",
    );
    refused(
        c.get_entry(signed(
            &national,
            "/taizhang.v1.Ledger/ExportEntries",
            t,
            [5; 16],
            &q(0),
            q(0),
        ))
        .await,
        Code::Unauthenticated,
        "tz-signature",
    );
    // Revoked, unregistered.
    refused(
        c.get_entry(signed(&s.key("revoked"), GET, t, [6; 16], &q(0), q(0)))
            .await,
        Code::Unauthenticated,
        "revoked",
    );
    refused(
        c.get_entry(signed(&s.key("unregistered"), GET, t, [7; 16], &q(0), q(0)))
            .await,
        Code::Unauthenticated,
        "not registered",
    );
    // Malformed headers name the header.
    let mut r = signed(&national, GET, t, [8; 16], &q(0), q(0));
    r.metadata_mut()
        .insert(auth::SIGNATURE_HEADER, "zz".parse().unwrap());
    refused(
        c.get_entry(r).await,
        Code::Unauthenticated,
        "tz-signature: not lowercase hex",
    );
    let mut r = signed(&national, GET, t, [9; 16], &q(0), q(0));
    r.metadata_mut()
        .insert(auth::TIME_HEADER, "soon".parse().unwrap());
    refused(c.get_entry(r).await, Code::Unauthenticated, "tz-time");
    // A refused nonce was not spent: the same nonce with a valid signature is accepted.
    assert!(c
        .get_entry(signed(&national, GET, t, [4; 16], &q(0), q(0)))
        .await
        .is_ok());

    // Public: checkpoints, proofs, health, with no signature.
    let cp = c
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    c.get_inclusion_proof(pb::GetInclusionProofRequest {
        index: 0,
        tree_size: 0,
    })
    .await
    .unwrap();
    c.get_consistency_proof(pb::GetConsistencyProofRequest {
        from_size: 1,
        to_size: cp.size,
    })
    .await
    .unwrap();
    let ch = tonic::transport::Endpoint::from_shared(s.server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let h = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "taizhang.v1.Ledger".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

#[tokio::test]
async fn tls_serves_signed_queries_and_refuses_plaintext_and_untrusted_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, _) = taizhang::ledger::Ledger::open(config(tmp.path())).unwrap();
    let (cert, key) = self_signed();
    let (listener, addr) = taizhang::api::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(taizhang::api::serve_opts(
        ledger.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
        taizhang::api::ServeOptions {
            tls: Some((cert.clone().into_bytes(), key.into_bytes())),
            ..Default::default()
        },
    ));
    let url = format!("https://localhost:{}", addr.port());
    let ch = auth::connect_tls(url.clone(), national_key(), Some(cert.as_bytes()))
        .await
        .unwrap();
    let mut c = LedgerClient::new(ch);
    let e = c
        .get_entry(pb::GetEntryRequest { index: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.index, 0);
    assert!(!e.leaf.is_empty());
    // The query signature still matters under TLS.
    let mut bare = LedgerClient::new(
        tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&cert)),
            )
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let s = bare
        .get_entry(pb::GetEntryRequest { index: 0 })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    // A plaintext client, and a TLS client that does not trust the certificate, get nowhere.
    let plain = auth::connect(format!("http://127.0.0.1:{}", addr.port()), national_key()).await;
    if let Ok(ch) = plain {
        let r = LedgerClient::new(ch)
            .get_checkpoint(pb::GetCheckpointRequest::default())
            .await;
        assert!(r.is_err(), "plaintext must not be served");
    }
    let (other_cert, _) = self_signed();
    let untrusted = auth::connect_tls(url, national_key(), Some(other_cert.as_bytes())).await;
    if let Ok(ch) = untrusted {
        let r = LedgerClient::new(ch)
            .get_checkpoint(pb::GetCheckpointRequest::default())
            .await;
        assert!(
            r.is_err(),
            "a certificate the client does not trust must fail"
        );
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
