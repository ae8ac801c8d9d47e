//! Import, export and the two-way check (进出口双向核查): licences drawn on, customs' clearances
//! and foreign endorsements recorded, and `ReconcileImportExport` finding every inequality,
//! every counterpart missing after its deadline, every objection and every export made after
//! one — with known answers. Refusals leave the ledger unchanged.

use crate::common::*;
use ed25519_dalek::SigningKey;
use taizhang::api::auth::SignedChannel as Channel;
use taizhang::client::RecordSigner;
use taizhang::pb::{self, audit_client::AuditClient, record_body::Payload, Agency, PermitType};
use tonic::Code;

/// Acetic anhydride, category 2: import and export licences from commerce (商务).
const ANHYDRIDE: &str = "108-24-7";
const DAY: u64 = 86_400_000;

struct Trade {
    s: Server,
    c: pb::ledger_client::LedgerClient<Channel>,
    w: World,
    trader: String,
    t: RecordSigner,
}

async fn setup() -> Trade {
    use pb::{Activity::*, Category::*};
    let s = Server::start().await;
    let mut c = s.client().await;
    let mut w = World::setup(&mut c).await;
    let trader = code("91440300MA5TRADE1");
    let tk = SigningKey::from_bytes(&[0x61; 32]);
    for p in [
        enrol(
            &trader,
            "440304",
            vec![licence(Precursor2, &[Import, Export, Sell, Purchase])],
            &["port-1"],
        ),
        register(&tk, &trader),
    ] {
        submit(&mut c, w.reg.sign(p, now())).await.unwrap();
    }
    Trade {
        s,
        c,
        w,
        trader,
        t: RecordSigner::new(tk, ORIGIN),
    }
}

fn import(lot: &str, amount: u64, licence: Option<pb::EntryRef>, exporter: &str) -> Payload {
    Payload::Import(pb::Import {
        site_id: "port-1".into(),
        substance: ANHYDRIDE.into(),
        lot: lot.into(),
        quantity: Some(taizhang::client::mg(amount)),
        licence,
        country: "DE".into(),
        exporter: exporter.into(),
    })
}

fn export(
    lot: &str,
    amount: u64,
    licence: Option<pb::EntryRef>,
    importer: &str,
    pen: &str,
) -> Payload {
    Payload::Export(pb::Export {
        site_id: "port-1".into(),
        substance: ANHYDRIDE.into(),
        lot: lot.into(),
        quantity: Some(taizhang::client::mg(amount)),
        licence,
        country: "GB".into(),
        importer: importer.into(),
        pen_reference: pen.into(),
    })
}

impl Trade {
    async fn licence(&mut self, no: &str, t: PermitType, ceiling: u64, party: &str) -> pb::Receipt {
        let mut p = permit(no, t, &self.trader, ANHYDRIDE, ceiling, false);
        p.counterparty = party.into();
        self.w.issue(&mut self.c, p).await.expect("licence issued")
    }

    async fn accept_t(&mut self, p: Payload) -> pb::Receipt {
        let r = self.t.sign(p, now());
        submit(&mut self.c, r).await.expect("accepted")
    }

    async fn accept_reg(&mut self, a: Agency, p: Payload) -> pb::Receipt {
        let r = self.w.regulator_sign(&mut self.c, a, p).await;
        submit(&mut self.c, r).await.expect("accepted")
    }

    async fn clear(&mut self, m: &pb::Receipt, no: &str, amount: u64) -> pb::Receipt {
        self.accept_reg(
            Agency::Customs,
            Payload::CustomsClearance(pb::CustomsClearance {
                movement: Some(receipt_ref(m)),
                declaration_no: no.into(),
                quantity: Some(taizhang::client::mg(amount)),
                cleared_ms: 0,
            }),
        )
        .await
    }

    async fn endorse(
        &mut self,
        e: &pb::Receipt,
        pen: &str,
        amount: u64,
        objection: Option<&str>,
    ) -> pb::Receipt {
        self.accept_reg(
            Agency::Commerce,
            endorsement(e, "GB", pen, amount, objection),
        )
        .await
    }

    /// `r` must be refused with `code`, naming every needle, and change nothing.
    async fn refuse(&mut self, what: &str, r: pb::SignedRecord, code: Code, needles: &[&str]) {
        let before = (self.s.ledger.size(), self.s.ledger.dump_views().unwrap());
        let e = submit(&mut self.c, r)
            .await
            .expect_err(&format!("{what}: accepted"));
        assert_eq!(e.code(), code, "{what}: {}", e.message());
        for n in needles {
            assert!(
                e.message().contains(n),
                "{what}: `{}` lacks `{n}`",
                e.message()
            );
        }
        let after = (self.s.ledger.size(), self.s.ledger.dump_views().unwrap());
        assert!(before == after, "{what}: a refusal changed the ledger");
    }

    async fn audit(&self) -> AuditClient<Channel> {
        crate::common::audit_client(&self.s.url).await
    }
}

fn endorsement(
    e: &pb::Receipt,
    country: &str,
    pen: &str,
    amount: u64,
    objection: Option<&str>,
) -> Payload {
    Payload::ForeignEndorsement(pb::ForeignEndorsement {
        export: Some(receipt_ref(e)),
        country: country.into(),
        pen_reference: pen.into(),
        quantity: Some(taizhang::client::mg(amount)),
        endorsed_ms: 0,
        objection: objection.is_some(),
        objection_reason: objection.unwrap_or_default().into(),
    })
}

fn kinds(r: &pb::TradeReconciliation) -> Vec<(pb::TradeExceptionKind, u64)> {
    r.exceptions
        .iter()
        .map(|x| {
            (
                pb::TradeExceptionKind::try_from(x.kind).unwrap(),
                x.movement.as_ref().unwrap().index,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_way_check_finds_every_inequality_missing_counterpart_and_objection() {
    let mut t = setup().await;
    let il = t
        .licence("IL-1", PermitType::ImportLicence, 10_000_000, "ACME GmbH")
        .await;
    let el = t
        .licence("EL-1", PermitType::ExportLicence, 10_000_000, "Globex Ltd")
        .await;
    // Imports: cleared in full, cleared short, never cleared.
    let i1 = t
        .accept_t(import(
            "IMP-1",
            4_000_000,
            Some(receipt_ref(&il)),
            "ACME GmbH",
        ))
        .await;
    let i2 = t
        .accept_t(import(
            "IMP-2",
            3_000_000,
            Some(receipt_ref(&il)),
            "ACME GmbH",
        ))
        .await;
    let i3 = t
        .accept_t(import(
            "IMP-3",
            1_000_000,
            Some(receipt_ref(&il)),
            "ACME GmbH",
        ))
        .await;
    t.clear(&i1, "D-1", 4_000_000).await;
    let c2 = t.clear(&i2, "D-2", 2_500_000).await;
    // Exports from the first import's lot: endorsed in full; endorsed short; objected to; and
    // one made after the objection, neither cleared nor endorsed.
    let lic = || Some(receipt_ref(&el));
    let e1 = t
        .accept_t(export("IMP-1", 2_000_000, lic(), "Globex Ltd", "PEN-1"))
        .await;
    let e2 = t
        .accept_t(export("IMP-1", 1_500_000, lic(), "Globex Ltd", "PEN-2"))
        .await;
    let e3 = t
        .accept_t(export("IMP-1", 400_000, lic(), "Globex Ltd", "PEN-3"))
        .await;
    for (e, d) in [(&e1, "X-1"), (&e2, "X-2"), (&e3, "X-3")] {
        let q = match d {
            "X-1" => 2_000_000,
            "X-2" => 1_500_000,
            _ => 400_000,
        };
        t.clear(e, d, q).await;
    }
    t.endorse(&e1, "PEN-1", 2_000_000, None).await;
    let n2 = t.endorse(&e2, "PEN-2", 1_400_000, None).await;
    let n3 = t
        .endorse(&e3, "PEN-3", 0, Some("no import authorisation on file"))
        .await;
    let e4 = t
        .accept_t(export("IMP-1", 100_000, lic(), "Globex Ltd", "PEN-4"))
        .await;

    let mut a = t.audit().await;
    // A licence is not a purchase permit: its movements are not shipments, and permit
    // reconciliation says where to look instead of reporting empty draw-downs.
    let e = a
        .reconcile_permit(pb::ReconcilePermitRequest {
            permit: Some(pb::reconcile_permit_request::Permit::PermitNo(
                "EL-1".into(),
            )),
            as_of_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(
        e.message().contains("EL-1 is an import or export licence")
            && e.message().contains("ReconcileImportExport"),
        "{}",
        e.message()
    );
    // The export licence, judged 100 days on (past the 30-day clearance and 90-day
    // endorsement deadlines).
    let r = a
        .reconcile_import_export(pb::ReconcileImportExportRequest {
            licence: Some(pb::reconcile_import_export_request::Licence::PermitNo(
                "EL-1".into(),
            )),
            as_of_ms: now() + 100 * DAY,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.licensed, 10_000_000);
    assert_eq!(r.declared, 4_000_000);
    assert_eq!(r.cleared, 3_900_000);
    assert_eq!(r.endorsed, 3_400_000);
    assert_eq!(r.movements.len(), 4);
    use pb::TradeExceptionKind::*;
    assert_eq!(
        kinds(&r),
        vec![
            (EndorsementMismatch, e2.index),
            (Objection, e3.index),
            (ExportAfterObjection, e4.index),
            (ClearanceMissing, e4.index),
            (EndorsementMissing, e4.index),
        ]
    );
    let mismatch = &r.exceptions[0];
    assert_eq!(
        (mismatch.declared, mismatch.counterpart_quantity),
        (1_500_000, 1_400_000)
    );
    assert_eq!(mismatch.counterpart.as_ref().unwrap().index, n2.index);
    assert_eq!(
        r.exceptions[2].counterpart.as_ref().unwrap().index,
        n3.index
    );
    let m3 = &r.movements[2];
    assert!(m3.objection && m3.objection_reason.contains("authorisation"));
    assert_eq!(m3.entry.as_ref().unwrap().leaf_hash, e3.leaf_hash);
    // Judged now, nothing is overdue yet: only the inequalities and the objection remain.
    let now_r = a
        .reconcile_import_export(pb::ReconcileImportExportRequest {
            licence: Some(pb::reconcile_import_export_request::Licence::Entry(
                receipt_ref(&el),
            )),
            as_of_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kinds(&now_r),
        vec![
            (EndorsementMismatch, e2.index),
            (Objection, e3.index),
            (ExportAfterObjection, e4.index),
        ]
    );
    // The import licence, 31 days on: the short clearance and the missing one.
    let r = a
        .reconcile_import_export(pb::ReconcileImportExportRequest {
            licence: Some(pb::reconcile_import_export_request::Licence::PermitNo(
                "IL-1".into(),
            )),
            as_of_ms: now() + 31 * DAY,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.declared, r.cleared, r.endorsed),
        (8_000_000, 6_500_000, 0)
    );
    assert_eq!(
        kinds(&r),
        vec![(ClearanceMismatch, i2.index), (ClearanceMissing, i3.index)]
    );
    assert_eq!(
        r.exceptions[0].counterpart.as_ref().unwrap().index,
        c2.index
    );
    // The licences drew what was declared.
    let p = r.licence.unwrap();
    assert_eq!((p.drawn, p.remaining), (8_000_000, 2_000_000));
    // Book stock: 4 kg imported into IMP-1, 4 kg exported from it.
    let h = taizhang::ledger::views::Holding {
        enterprise: &t.trader,
        site: "port-1",
        substance: ANHYDRIDE,
        lot: "IMP-1",
    };
    let bal = t.s.ledger.holding_totals(&h).unwrap().balance();
    assert_eq!(bal, 0);
    // Not a trade licence, and not a licence at all.
    let e = a
        .reconcile_import_export(pb::ReconcileImportExportRequest {
            licence: Some(pb::reconcile_import_export_request::Licence::Entry(
                receipt_ref(&i1),
            )),
            as_of_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());

    // The CLI shows the same answer.
    let out = std::process::Command::new(bin())
        .env("TAIZHANG_QUERY_KEY", key_file(&national_key()))
        .args(["audit", "trade", "EL-1", "--server", &t.s.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "EL-1",
        "declared 4,000,000 mg",
        "ENDORSEMENT_MISMATCH",
        "OBJECTION",
        "EXPORT_AFTER_OBJECTION",
    ] {
        assert!(text.contains(want), "`{want}` missing in:\n{text}");
    }
    let out = std::process::Command::new(bin())
        .env("TAIZHANG_QUERY_KEY", key_file(&national_key()))
        .args(["audit", "trade", "IL-1", "--json", "--server", &t.s.url])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["declared"], "8000000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_export_and_their_counterparts_refuse_what_does_not_hold() {
    let mut t = setup().await;
    let il = t
        .licence("IL-9", PermitType::ImportLicence, 5_000_000, "ACME GmbH")
        .await;
    let el = t
        .licence("EL-9", PermitType::ExportLicence, 5_000_000, "")
        .await;
    let i1 = t
        .accept_t(import(
            "IMP-9",
            2_000_000,
            Some(receipt_ref(&il)),
            "ACME GmbH",
        ))
        .await;
    let e1 = t
        .accept_t(export(
            "IMP-9",
            1_000_000,
            Some(receipt_ref(&el)),
            "Globex Ltd",
            "PEN-9",
        ))
        .await;
    let cases: Vec<(&str, Payload, Code, Vec<&str>)> = vec![
        (
            "import without a licence",
            import("IMP-10", 1, None, "ACME GmbH"),
            Code::InvalidArgument,
            vec!["import.licence", "required"],
        ),
        (
            "import citing the export licence",
            import("IMP-10", 1, Some(receipt_ref(&el)), "ACME GmbH"),
            Code::FailedPrecondition,
            vec!["import.licence", "EXPORT_LICENCE", "IMPORT_LICENCE"],
        ),
        (
            "import beyond the licence",
            import("IMP-10", 3_000_001, Some(receipt_ref(&il)), "ACME GmbH"),
            Code::FailedPrecondition,
            vec!["import.quantity.amount", "IL-9", "remaining 3000000 mg"],
        ),
        (
            "import from another exporter than the licence names",
            import("IMP-10", 1, Some(receipt_ref(&il)), "Initech"),
            Code::FailedPrecondition,
            vec!["import.licence", "ACME GmbH"],
        ),
        (
            "import into an existing lot",
            import("IMP-9", 1, Some(receipt_ref(&il)), "ACME GmbH"),
            Code::AlreadyExists,
            vec!["import.lot"],
        ),
        (
            "import from China",
            Payload::Import(pb::Import {
                country: "CN".into(),
                ..match import("IMP-10", 1, Some(receipt_ref(&il)), "ACME GmbH") {
                    Payload::Import(i) => i,
                    _ => unreachable!(),
                }
            }),
            Code::InvalidArgument,
            vec!["import.country"],
        ),
        (
            "export without a pre-export notification",
            export("IMP-9", 1, Some(receipt_ref(&el)), "Globex Ltd", ""),
            Code::InvalidArgument,
            vec!["export.pen_reference"],
        ),
        (
            "export beyond book stock",
            export(
                "IMP-9",
                1_000_001,
                Some(receipt_ref(&el)),
                "Globex Ltd",
                "PEN-10",
            ),
            Code::FailedPrecondition,
            vec!["export.quantity.amount", "book stock"],
        ),
        (
            "export to a country code that is not one",
            Payload::Export(pb::Export {
                country: "gb".into(),
                ..match export("IMP-9", 1, Some(receipt_ref(&el)), "Globex Ltd", "PEN-10") {
                    Payload::Export(e) => e,
                    _ => unreachable!(),
                }
            }),
            Code::InvalidArgument,
            vec!["export.country"],
        ),
    ];
    for (what, p, code, needles) in cases {
        let r = peek(&t.t, p);
        t.refuse(what, r, code, &needles).await;
    }
    // An enterprise without an export licence on its enrolment may not export.
    let producer_export = peek(
        &t.w.p,
        Payload::Export(pb::Export {
            site_id: "plant-1".into(),
            ..match export("IMP-9", 1, Some(receipt_ref(&el)), "Globex Ltd", "PEN-11") {
                Payload::Export(e) => e,
                _ => unreachable!(),
            }
        }),
    );
    t.refuse(
        "export by an enterprise not licensed to export",
        producer_export,
        Code::FailedPrecondition,
        &["licence", "EXPORT"],
    )
    .await;
    // Counterparts: customs only, once, on an import or export.
    let public_security_clearance = t.w.reg.sign(
        Payload::CustomsClearance(pb::CustomsClearance {
            movement: Some(receipt_ref(&i1)),
            declaration_no: "D-9".into(),
            quantity: Some(taizhang::client::mg(1)),
            cleared_ms: 0,
        }),
        now(),
    );
    t.refuse(
        "clearance signed by public security",
        public_security_clearance,
        Code::PermissionDenied,
        &["customs_clearance", "AGENCY_CUSTOMS"],
    )
    .await;
    // The refused record consumed the root's seq locally: resume from the ledger.
    let h = t.s.ledger.signer_head(&t.w.reg.key_id()).unwrap();
    t.w.reg = RecordSigner::new(regulator_key(), ORIGIN).resume(h.next_seq, h.prev_body_hash);
    t.clear(&i1, "D-9", 2_000_000).await;
    let twice =
        t.w.regulator_sign(
            &mut t.c,
            Agency::Customs,
            Payload::CustomsClearance(pb::CustomsClearance {
                movement: Some(receipt_ref(&i1)),
                declaration_no: "D-9b".into(),
                quantity: Some(taizhang::client::mg(2_000_000)),
                cleared_ms: 0,
            }),
        )
        .await;
    t.refuse(
        "a second clearance",
        twice,
        Code::AlreadyExists,
        &["customs_clearance.movement"],
    )
    .await;
    resume_agency(&mut t, Agency::Customs);
    let not_a_movement =
        t.w.regulator_sign(
            &mut t.c,
            Agency::Customs,
            Payload::CustomsClearance(pb::CustomsClearance {
                movement: Some(receipt_ref(&il)),
                declaration_no: "D-x".into(),
                quantity: Some(taizhang::client::mg(1)),
                cleared_ms: 0,
            }),
        )
        .await;
    t.refuse(
        "a clearance of a licence",
        not_a_movement,
        Code::FailedPrecondition,
        &["not an import or export"],
    )
    .await;
    resume_agency(&mut t, Agency::Customs);
    // Endorsements: by the licensing agency, of an export, matching its country and PEN.
    let by_customs =
        t.w.regulator_sign(
            &mut t.c,
            Agency::Customs,
            endorsement(&e1, "GB", "PEN-9", 1_000_000, None),
        )
        .await;
    t.refuse(
        "endorsement recorded by customs",
        by_customs,
        Code::PermissionDenied,
        &["foreign_endorsement", "AGENCY_COMMERCE"],
    )
    .await;
    resume_agency(&mut t, Agency::Customs);
    for (what, p, code, needle) in [
        (
            "endorsement of an import",
            endorsement(&i1, "DE", "", 1, None),
            Code::FailedPrecondition,
            "is an import",
        ),
        (
            "endorsement from another country",
            endorsement(&e1, "FR", "PEN-9", 1_000_000, None),
            Code::FailedPrecondition,
            "foreign_endorsement.country",
        ),
        (
            "endorsement of another notification",
            endorsement(&e1, "GB", "PEN-8", 1_000_000, None),
            Code::FailedPrecondition,
            "foreign_endorsement.pen_reference",
        ),
        (
            "objection without a reason",
            endorsement(&e1, "GB", "PEN-9", 0, Some("")),
            Code::InvalidArgument,
            "objection_reason",
        ),
    ] {
        let r = t.w.regulator_sign(&mut t.c, Agency::Commerce, p).await;
        t.refuse(what, r, code, &[needle]).await;
        resume_agency(&mut t, Agency::Commerce);
    }
    t.endorse(&e1, "PEN-9", 1_000_000, None).await;
    let again =
        t.w.regulator_sign(
            &mut t.c,
            Agency::Commerce,
            endorsement(&e1, "GB", "PEN-9", 1_000_000, None),
        )
        .await;
    t.refuse(
        "a second endorsement",
        again,
        Code::AlreadyExists,
        &["foreign_endorsement.export"],
    )
    .await;
    // Licences are commerce's to issue for precursors.
    let by_police = t.w.reg.sign(
        Payload::IssuePermit(permit(
            "IL-P",
            PermitType::ImportLicence,
            &t.trader,
            ANHYDRIDE,
            1,
            false,
        )),
        now(),
    );
    t.refuse(
        "import licence issued by public security",
        by_police,
        Code::PermissionDenied,
        &["issue_permit.type", "COMMERCE"],
    )
    .await;
}

/// After a refused record, the agency signer's local seq is ahead of the ledger: resume it.
fn resume_agency(t: &mut Trade, a: Agency) {
    let s = &mut t.w.agencies.iter_mut().find(|(x, _)| *x == a).unwrap().1;
    let h = t.s.ledger.signer_head(&s.key_id()).unwrap();
    *s = RecordSigner::new(agency_key(a), ORIGIN).resume(h.next_seq, h.prev_body_hash);
}
