//! Adversarial custody tests over real gRPC on loopback: what happens to goods after they
//! arrive (use, supervised destruction, losses), the carrier's legs of a shipment, inspectors'
//! counts, corrections (which add, never edit), two-person control (双人双锁), conservation of
//! quantity across all of it, and a replay of the log that rebuilds the same views.
//!
//! The expectations are written from the rules as a regulator states them (see the brief in
//! `src/ledger/custody.rs` and shared/domain/REGULATIONS.md), not read back from the code.
//! Every refusal is checked for the exact gRPC code, a message naming the field at fault, and an
//! unchanged ledger: the same log size and the same derived views byte for byte. Rules this suite
//! found broken were fixed; their tests stay as regressions.

use crate::common::*;
use ed25519_dalek::SigningKey;
use std::collections::BTreeMap;
use taizhang::api::auth::SignedChannel as Channel;
use taizhang::client::{entry_ref, mg, RecordSigner};
use taizhang::codec;
use taizhang::crypto;
use taizhang::ledger::views::{
    key, Book, CountedView, Event, Holding, JournalOf, JournalRow, LossView, PermitView,
    PostedView, ShipmentView, Stock, Term, Totals,
};
use taizhang::pb::{
    self, ledger_client::LedgerClient, record_body::Payload, Activity, Category, LegKind, LossKind,
    Role,
};
use tonic::Code;

type Client = LedgerClient<Channel>;

/// Ephedrine: category 1, pharmaceutical (purchase permits from the drug regulator).
const EPH: &str = EPHEDRINE;
/// Acetone: category 3.
const ACE: &str = ACETONE;
/// Morphine: a narcotic drug (two-person control by default).
const MOR: &str = "57-27-2";
/// Ketamine: class I psychotropic (two-person control by default).
const KET: &str = "6740-88-1";
/// Diazepam: class II psychotropic (not under two-person control by default).
const DIA: &str = "439-14-5";
/// Not a controlled substance.
const WATER: &str = "7732-18-5";

const FP: Code = Code::FailedPrecondition;
const INVALID: Code = Code::InvalidArgument;
const DENIED: Code = Code::PermissionDenied;

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

struct Ent {
    stem: &'static str,
    jurisdiction: &'static str,
    licences: &'static [(Category, &'static [Activity])],
    sites: &'static [&'static str],
    /// (signer name, key seed, holder).
    keys: &'static [(&'static str, u8, &'static str)],
}

use Activity::{
    Export as Exp, Import as Imp, Produce as Pro, Purchase as Pur, Sell, Transport as Tra, Use,
};
use Category::{Narcotic, Precursor1, Precursor3, Psychotropic1, Psychotropic2};

/// Enterprises enrolled besides `World::setup`'s producer "P" (440305: category 1 and 3
/// produce and sell; plant-1, plant-2) and buyer "B" (440306: category 1 purchase and sell,
/// category 3 purchase; wh-1).
const EXTRA: &[Ent] = &[
    // A user: buys and uses precursors (a factory), never produces.
    Ent {
        stem: "91440300MA5CU0001",
        jurisdiction: "440305",
        licences: &[(Precursor1, &[Pur, Use]), (Precursor3, &[Pur, Use])],
        sites: &["u-1"],
        keys: &[("U", 0xC1, "ursula")],
    },
    // A buyer with a purchase licence only.
    Ent {
        stem: "91440300MA5CU0002",
        jurisdiction: "440307",
        licences: &[(Precursor1, &[Pur])],
        sites: &["r-1"],
        keys: &[("R", 0xC2, "rita")],
    },
    // Carriers.
    Ent {
        stem: "91440300MA5CU0003",
        jurisdiction: "440308",
        licences: &[
            (Precursor1, &[Tra]),
            (Precursor3, &[Tra]),
            (Narcotic, &[Tra]),
        ],
        sites: &["c-1"],
        keys: &[("C", 0xC3, "carl")],
    },
    Ent {
        stem: "91440300MA5CU0004",
        jurisdiction: "440308",
        licences: &[(Precursor1, &[Tra])],
        sites: &["c2-1"],
        keys: &[("C2", 0xC4, "cleo")],
    },
    // A maker of controlled drugs, with three keys: alice, bob, and a second key of alice.
    Ent {
        stem: "91440300MA5CU0005",
        jurisdiction: "440305",
        licences: &[
            (Narcotic, &[Pro, Sell, Imp, Exp]),
            (Psychotropic1, &[Pro, Sell]),
            (Psychotropic2, &[Pro, Sell]),
            (Precursor1, &[Pro, Sell]),
        ],
        sites: &["m-1", "m-2"],
        keys: &[
            ("M", 0xC5, "alice"),
            ("M2", 0xC6, "bob"),
            ("M1b", 0xC7, "alice"),
            ("M3", 0xCB, "erin"),
        ],
    },
    // A hospital: buys and dispenses drugs; two people.
    Ent {
        stem: "91440300MA5CU0006",
        jurisdiction: "440306",
        licences: &[(Narcotic, &[Pur, Use]), (Psychotropic1, &[Pur, Use])],
        sites: &["ho-1"],
        keys: &[("HO", 0xC8, "carol"), ("HO2", 0xC9, "dave")],
    },
    // A producer in Guangzhou (4401), outside Shenzhen (4403).
    Ent {
        stem: "91440100MA5CU0007",
        jurisdiction: "440104",
        licences: &[(Precursor1, &[Pro])],
        sites: &["gz-1"],
        keys: &[("GZ", 0xCA, "gina")],
    },
];

/// Officials registered by the root regulator: (name, key seed, role, jurisdiction).
const OFFICIALS: &[(&str, u8, Role, &str)] = &[
    ("I44", 0xD1, Role::Inspector, "44"),
    ("I4403", 0xD2, Role::Inspector, "4403"),
    ("I4401", 0xD3, Role::Inspector, "4401"),
    ("W44", 0xD4, Role::Witness, "44"),
    ("Irev", 0xD5, Role::Inspector, "44"),
];

/// A server, a client, the standard world, and every signer by name ("reg" is the root
/// regulator; enterprise signers map to their enterprise's credit code).
struct H {
    server: Server,
    c: Client,
    w: World,
    s: BTreeMap<&'static str, RecordSigner>,
    codes: BTreeMap<&'static str, String>,
}

/// One row of a refusal table: what, signer, payload, cosigners, code, needles.
type Case = (
    &'static str,
    &'static str,
    Payload,
    &'static [&'static str],
    Code,
    &'static [&'static str],
);

impl H {
    async fn start() -> H {
        H::with(Server::start().await).await
    }

    async fn with(server: Server) -> H {
        let mut c = server.client().await;
        let mut w = World::setup(&mut c).await;
        let mut s = BTreeMap::new();
        let mut codes = BTreeMap::new();
        s.insert("P", RecordSigner::new(w.p.key().clone(), ORIGIN));
        s.insert("B", RecordSigner::new(w.b.key().clone(), ORIGIN));
        codes.insert("P", w.producer.clone());
        codes.insert("B", w.buyer.clone());
        let mut batch = Vec::new();
        for e in EXTRA {
            let credit = code(e.stem);
            let lics = e.licences.iter().map(|(c, a)| licence(*c, a)).collect();
            batch.push(
                w.reg
                    .sign(enrol(&credit, e.jurisdiction, lics, e.sites), now()),
            );
            for (name, seed, holder) in e.keys {
                let k = SigningKey::from_bytes(&[*seed; 32]);
                batch.push(w.reg.sign(register_held(&k, &credit, holder), now()));
                s.insert(*name, RecordSigner::new(k, ORIGIN));
                codes.insert(*name, credit.clone());
            }
        }
        for (name, seed, role, jurisdiction) in OFFICIALS {
            let k = SigningKey::from_bytes(&[*seed; 32]);
            batch.push(
                w.reg
                    .sign(register_official(&k, *role, jurisdiction, name), now()),
            );
            s.insert(*name, RecordSigner::new(k, ORIGIN));
        }
        let results = c
            .submit_batch(pb::SubmitBatchRequest { records: batch })
            .await
            .expect("setup batch answered")
            .into_inner()
            .results;
        for r in results {
            assert!(
                matches!(r.result, Some(pb::submit_result::Result::Receipt(_))),
                "setup record refused: {r:?}"
            );
        }
        H {
            server,
            c,
            w,
            s,
            codes,
        }
    }

    fn code(&self, who: &str) -> String {
        self.codes
            .get(who)
            .unwrap_or_else(|| panic!("no enterprise {who}"))
            .clone()
    }

    fn key(&self, who: &str) -> SigningKey {
        self.signer(who).key().clone()
    }

    fn signer(&self, who: &str) -> &RecordSigner {
        if who == "reg" {
            &self.w.reg
        } else {
            self.s.get(who).unwrap_or_else(|| panic!("no signer {who}"))
        }
    }

    fn signer_mut(&mut self, who: &str) -> &mut RecordSigner {
        if who == "reg" {
            &mut self.w.reg
        } else {
            self.s.get_mut(who).expect("signer")
        }
    }

    /// `payload` signed by `who` at its next position, co-signed by `cos`, not advancing.
    fn record(&self, who: &str, payload: Payload, cos: &[&str]) -> pb::SignedRecord {
        let keys: Vec<SigningKey> = cos.iter().map(|n| self.key(n)).collect();
        let refs: Vec<&SigningKey> = keys.iter().collect();
        cosigned(self.signer(who), payload, &refs)
    }

    /// Submits a record that must be accepted; advances its signer.
    async fn ok_rec(&mut self, what: &str, who: &str, r: pb::SignedRecord) -> pb::Receipt {
        let receipt = submit(&mut self.c, r.clone()).await.unwrap_or_else(|s| {
            panic!(
                "{what}: expected acceptance, got {:?}: {}",
                s.code(),
                s.message()
            )
        });
        assert!(!receipt.duplicate, "{what}: came back as a duplicate");
        advance(self.signer_mut(who), &r);
        receipt
    }

    async fn ok(&mut self, who: &str, payload: Payload, cos: &[&str]) -> pb::Receipt {
        let what = format!("{} by {who}", kind(&payload));
        let r = self.record(who, payload, cos);
        self.ok_rec(&what, who, r).await
    }

    /// Submits `r`, which must be refused with `code` and a message naming every needle, and
    /// checks that the log and the views did not change.
    async fn refuse_rec(
        &mut self,
        what: &str,
        r: pb::SignedRecord,
        code: Code,
        needles: &[&str],
    ) -> String {
        let before = (self.server.ledger.size(), self.views());
        let status = match submit(&mut self.c, r).await {
            Ok(r) => panic!(
                "{what}: expected {code:?}, but it was accepted as entry {}",
                r.index
            ),
            Err(s) => s,
        };
        assert_eq!(
            status.code(),
            code,
            "{what}: wrong code; message: {}",
            status.message()
        );
        for n in needles {
            assert!(
                status.message().contains(n),
                "{what}: message `{}` does not mention `{n}`",
                status.message()
            );
        }
        assert_eq!(
            before.0,
            self.server.ledger.size(),
            "{what}: a refused record changed the log size"
        );
        assert!(
            before.1 == self.views(),
            "{what}: a refused record changed the derived views"
        );
        status.message().to_string()
    }

    async fn refuse(
        &mut self,
        what: &str,
        who: &str,
        payload: Payload,
        cos: &[&str],
        code: Code,
        needles: &[&str],
    ) -> String {
        let r = self.record(who, payload, cos);
        self.refuse_rec(what, r, code, needles).await
    }

    async fn refuse_all(&mut self, cases: Vec<Case>) {
        assert!(!cases.is_empty());
        for (what, who, p, cos, code, needles) in cases {
            self.refuse(what, who, p, cos, code, needles).await;
        }
    }

    /// Submits a record signed by the root regulator.
    async fn reg_ok(&mut self, p: Payload) -> pb::Receipt {
        self.ok("reg", p, &[]).await
    }

    fn views(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.server.ledger.dump_views().expect("views dump")
    }

    fn totals(&self, who: &str, site: &str, substance: &str, lot: &str) -> Totals {
        let code = self.code(who);
        let h = Holding {
            enterprise: &code,
            site,
            substance,
            lot,
        };
        self.server.ledger.holding_totals(&h).expect("view")
    }

    /// Book stock of a lot holding.
    fn bal(&self, who: &str, site: &str, substance: &str, lot: &str) -> u64 {
        let b = self.totals(who, site, substance, lot).balance();
        assert!(b >= 0, "negative book stock {b} of {lot} at {site}");
        b as u64
    }

    fn site_totals(&self, who: &str, site: &str, substance: &str) -> Totals {
        let code = self.code(who);
        let s = Stock {
            enterprise: &code,
            site,
            substance,
        };
        self.server
            .ledger
            .view::<Totals>(&key::stock(&s))
            .expect("view")
            .unwrap_or_default()
    }

    /// The lot holding's journal, oldest first.
    fn journal(&self, who: &str, site: &str, substance: &str, lot: &str) -> Vec<JournalRow> {
        let code = self.code(who);
        self.journal_rows(JournalOf::Holding(Holding {
            enterprise: &code,
            site,
            substance,
            lot,
        }))
    }

    /// Every row of a journal, oldest first, as the audit reads them.
    fn journal_rows(&self, j: JournalOf<'_>) -> Vec<JournalRow> {
        j.rows(
            &*self.server.ledger.snapshot(),
            (0, 0),
            (u64::MAX, u64::MAX),
            usize::MAX,
        )
        .expect("journal")
    }

    /// The site × substance journal, oldest first.
    fn stock_journal(&self, who: &str, site: &str, substance: &str) -> Vec<JournalRow> {
        let code = self.code(who);
        self.journal_rows(JournalOf::Stock(Stock {
            enterprise: &code,
            site,
            substance,
        }))
    }

    fn last_event(&self, who: &str, site: &str, substance: &str, lot: &str) -> (u64, Event) {
        let rows = self.journal(who, site, substance, lot);
        let last = rows.last().expect("a journal row");
        (last.entry, last.event.clone())
    }

    fn shipment(&self, ship: &pb::Receipt) -> ShipmentView {
        self.server
            .ledger
            .view(&key::shipment(ship.index))
            .expect("view")
            .expect("shipment")
    }

    fn posted(&self, r: &pb::Receipt) -> PostedView {
        self.server
            .ledger
            .view(&key::posted(r.index))
            .expect("view")
            .expect("posted view")
    }

    fn counted(&self, r: &pb::Receipt) -> CountedView {
        self.server
            .ledger
            .view(&key::counted(r.index))
            .expect("view")
            .expect("counted view")
    }

    fn loss_view(&self, who: &str, r: &pb::Receipt) -> LossView {
        self.server
            .ledger
            .view(&key::loss(&self.code(who), r.index))
            .expect("view")
            .expect("loss view")
    }

    fn permit(&self, issue_entry: u64) -> PermitView {
        self.server
            .ledger
            .view(&key::permit(issue_entry))
            .expect("view")
            .expect("permit view")
    }

    /// Produces `amount` of `substance` as lot `lot` at `site`.
    async fn produce(
        &mut self,
        who: &str,
        site: &str,
        substance: &str,
        lot: &str,
        amount: u64,
        cos: &[&str],
    ) -> pb::Receipt {
        self.ok(who, produce(site, substance, lot, amount), cos)
            .await
    }

    /// A `Ship` payload with the permits the regulation table asks for; `carrier` is a signer
    /// name or "".
    #[allow(clippy::too_many_arguments)]
    async fn ship_payload(
        &mut self,
        from: &str,
        site: &str,
        substance: &str,
        lot: &str,
        amount: u64,
        to: &str,
        to_site: &str,
        carrier: &str,
    ) -> Payload {
        let seller = self.code(from);
        let to = self.code(to);
        let carrier = if carrier.is_empty() {
            String::new()
        } else {
            self.code(carrier)
        };
        let mut p = ship(site, substance, lot, amount, &to, to_site);
        if let Payload::Ship(s) = &mut p {
            s.carrier = carrier;
        }
        self.w.permitted(&mut self.c, &seller, p).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn ship(
        &mut self,
        from: &str,
        site: &str,
        substance: &str,
        lot: &str,
        amount: u64,
        to: &str,
        to_site: &str,
        carrier: &str,
        cos: &[&str],
    ) -> pb::Receipt {
        let p = self
            .ship_payload(from, site, substance, lot, amount, to, to_site, carrier)
            .await;
        self.ok(from, p, cos).await
    }
}

fn kind(p: &Payload) -> &'static str {
    taizhang::ledger::rules::kind_name(p)
}

fn ml(amount: u64) -> pb::Quantity {
    pb::Quantity {
        amount,
        unit: pb::Unit::Millilitre as i32,
    }
}

fn cons(site: &str, substance: &str, lot: &str, amount: u64) -> pb::Consume {
    pb::Consume {
        site_id: site.into(),
        substance: substance.into(),
        lot: lot.into(),
        quantity: Some(mg(amount)),
        purpose: "production order PO-1".into(),
    }
}

fn consume(site: &str, substance: &str, lot: &str, amount: u64) -> Payload {
    Payload::Consume(cons(site, substance, lot, amount))
}

fn dest(site: &str, substance: &str, lot: &str, amount: u64) -> pb::Destroy {
    pb::Destroy {
        site_id: site.into(),
        substance: substance.into(),
        lot: lot.into(),
        quantity: Some(mg(amount)),
        method: "incineration".into(),
        application_ref: "DA-2024-001".into(),
    }
}

fn destroy(site: &str, substance: &str, lot: &str, amount: u64) -> Payload {
    Payload::Destroy(dest(site, substance, lot, amount))
}

fn lost(
    site: &str,
    substance: &str,
    lot: &str,
    amount: u64,
    k: LossKind,
    police: &str,
) -> pb::LossReport {
    pb::LossReport {
        site_id: site.into(),
        substance: substance.into(),
        lot: lot.into(),
        quantity: Some(mg(amount)),
        kind: k as i32,
        police_report_ref: police.into(),
    }
}

fn loss(site: &str, substance: &str, lot: &str, amount: u64, k: LossKind, police: &str) -> Payload {
    Payload::LossReport(lost(site, substance, lot, amount, k, police))
}

fn leg_of(ship: Option<pb::EntryRef>, k: LegKind, seals: &[&str], next: &str) -> pb::TransportLeg {
    pb::TransportLeg {
        ship,
        kind: k as i32,
        location: "G4 expressway km 12".into(),
        seal_numbers: seals.iter().map(|s| s.to_string()).collect(),
        next_carrier: next.into(),
    }
}

fn leg(ship: &pb::Receipt, k: LegKind, seals: &[&str], next: &str) -> Payload {
    Payload::TransportLeg(leg_of(Some(receipt_ref(ship)), k, seals, next))
}

fn inspection(enterprise: &str, site: &str, counts: &[(&str, &str, u64)]) -> pb::Inspection {
    pb::Inspection {
        enterprise: enterprise.into(),
        site_id: site.into(),
        counts: counts
            .iter()
            .map(|(s, l, q)| pb::StockCount {
                substance: (*s).into(),
                lot: (*l).into(),
                quantity: Some(mg(*q)),
            })
            .collect(),
        seals_checked: vec![],
        notes: String::new(),
    }
}

fn counts(site: &str, rows: &[(&str, &str, u64)]) -> Payload {
    Payload::StockTake(pb::StockTake {
        site_id: site.into(),
        counts: rows
            .iter()
            .map(|(s, l, q)| pb::StockCount {
                substance: (*s).into(),
                lot: (*l).into(),
                quantity: Some(mg(*q)),
            })
            .collect(),
    })
}

/// A replacement as the rules want it: a `RecordBody` carrying only the payload.
fn replacement(p: Payload) -> Vec<u8> {
    codec::encode_body(&pb::RecordBody {
        payload: Some(p),
        ..Default::default()
    })
}

fn corr_of(corrects: Option<pb::EntryRef>, replacement: Vec<u8>) -> pb::Correction {
    pb::Correction {
        corrects,
        reason: "transcription error in the batch record".into(),
        approver: "QA manager Li".into(),
        replacement,
    }
}

/// A correction of `corrects`: to `with`, or voiding it (`None`).
fn correction(corrects: &pb::Receipt, with: Option<Payload>) -> Payload {
    Payload::Correction(corr_of(
        Some(receipt_ref(corrects)),
        with.map(replacement).unwrap_or_default(),
    ))
}

fn ship_ref(ship: &pb::Receipt) -> Option<pb::EntryRef> {
    Some(entry_ref(ORIGIN, ship.index, &ship.leaf_hash))
}

// ---------------------------------------------------------------------------------------------
// 1. Consume
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_draws_an_existing_lot_of_a_producer_or_user_down_to_zero_and_no_further() {
    let mut h = H::start().await;
    h.produce("P", "plant-1", EPH, "E-1", 10_000, &[]).await;
    h.produce("P", "plant-1", ACE, "A-1", 5_000, &[]).await;
    let r = h.ok("P", consume("plant-1", EPH, "E-1", 4_000), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 6_000);
    let t = h.totals("P", "plant-1", EPH, "E-1");
    assert_eq!(
        (t.get(Term::Produced), t.get(Term::Consumed)),
        (10_000, 4_000)
    );
    assert_eq!(
        h.last_event("P", "plant-1", EPH, "E-1"),
        (
            r.index,
            Event::Move {
                term: Term::Consumed,
                quantity: 4_000,
                shipment: None
            }
        )
    );
    let js = h.stock_journal("P", "plant-1", EPH);
    assert_eq!(
        js.last().map(|r| (r.entry, r.totals.balance())),
        Some((r.index, 6_000))
    );
    assert_eq!(h.site_totals("P", "plant-1", EPH).balance(), 6_000);
    let po = h.posted(&r);
    assert_eq!(
        (po.kind.as_str(), po.term, po.quantity, po.lot.as_str()),
        ("consume", Term::Consumed, 4_000, "E-1")
    );

    // A user (USE licence, no PRODUCE) consumes what it received.
    let sh = h
        .ship("P", "plant-1", EPH, "E-1", 1_000, "U", "u-1", "", &[])
        .await;
    h.ok("U", receive(&sh, "u-1", 1_000), &[]).await;
    h.ok("U", consume("u-1", EPH, "E-1", 600), &[]).await;
    assert_eq!(h.bal("U", "u-1", EPH, "E-1"), 400);
    // A buyer licensed to purchase and sell only holds goods it may not use.
    let sh = h
        .ship("P", "plant-1", EPH, "E-1", 1_000, "B", "wh-1", "", &[])
        .await;
    h.ok("B", receive(&sh, "wh-1", 1_000), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 4_000);

    let long = "x".repeat(257);
    let cases: Vec<Case> = vec![
        (
            "a site the enterprise does not have",
            "P",
            consume("wh-1", EPH, "E-1", 1),
            &[],
            FP,
            &["consume.site_id", "wh-1"],
        ),
        (
            "a substance not in the catalogue",
            "P",
            consume("plant-1", WATER, "E-1", 1),
            &[],
            INVALID,
            &["consume.substance", WATER],
        ),
        (
            "a quantity in another unit",
            "P",
            Payload::Consume(pb::Consume {
                quantity: Some(ml(1)),
                ..cons("plant-1", EPH, "E-1", 1)
            }),
            &[],
            INVALID,
            &["consume.quantity.unit", "UNIT_MILLILITRE"],
        ),
        (
            "no quantity",
            "P",
            Payload::Consume(pb::Consume {
                quantity: None,
                ..cons("plant-1", EPH, "E-1", 1)
            }),
            &[],
            INVALID,
            &["consume.quantity", "required"],
        ),
        (
            "a zero quantity",
            "P",
            consume("plant-1", EPH, "E-1", 0),
            &[],
            INVALID,
            &["consume.quantity.amount", "greater than 0"],
        ),
        (
            "no lot",
            "P",
            consume("plant-1", EPH, "", 1),
            &[],
            INVALID,
            &["consume.lot"],
        ),
        (
            "a lot that does not exist",
            "P",
            consume("plant-1", EPH, "NOPE", 1),
            &[],
            FP,
            &["consume.lot", "`NOPE` does not exist"],
        ),
        (
            "a lot of another substance",
            "P",
            consume("plant-1", EPH, "A-1", 1),
            &[],
            FP,
            &["consume.lot", "is 67-64-1, not 299-42-3"],
        ),
        (
            "no purpose",
            "P",
            Payload::Consume(pb::Consume {
                purpose: String::new(),
                ..cons("plant-1", EPH, "E-1", 1)
            }),
            &[],
            INVALID,
            &["consume.purpose", "required"],
        ),
        (
            "a blank purpose",
            "P",
            Payload::Consume(pb::Consume {
                purpose: " \t ".into(),
                ..cons("plant-1", EPH, "E-1", 1)
            }),
            &[],
            INVALID,
            &["consume.purpose", "required"],
        ),
        (
            "one more than the book stock",
            "P",
            consume("plant-1", EPH, "E-1", 4_001),
            &[],
            FP,
            &["consume.quantity.amount", "exceeds book stock 4000", "E-1"],
        ),
        (
            "an existing lot not held at this site",
            "P",
            consume("plant-2", EPH, "E-1", 1),
            &[],
            FP,
            &["consume.quantity.amount", "exceeds book stock 0"],
        ),
        (
            "another enterprise's stock, at the consumer's own site",
            "U",
            consume("u-1", ACE, "A-1", 1),
            &[],
            FP,
            &["consume.quantity.amount", "exceeds book stock 0"],
        ),
        (
            "a buyer licensed to purchase and sell, not to produce or use",
            "B",
            consume("wh-1", EPH, "E-1", 1),
            &[],
            FP,
            &["licence", "PRECURSOR_1 × USE"],
        ),
        (
            "an inspector's key",
            "I4403",
            consume("plant-1", EPH, "E-1", 1),
            &[],
            DENIED,
            &["body.signer", "ROLE_INSPECTOR", "`consume`"],
        ),
        (
            "a regulator's key",
            "reg",
            consume("plant-1", EPH, "E-1", 1),
            &[],
            DENIED,
            &["body.signer", "ROLE_ROOT_REGULATOR", "`consume`"],
        ),
    ];
    h.refuse_all(cases).await;
    h.refuse(
        "a purpose of 257 bytes",
        "P",
        Payload::Consume(pb::Consume {
            purpose: long,
            ..cons("plant-1", EPH, "E-1", 1)
        }),
        &[],
        INVALID,
        &["consume.purpose", "longer than 256"],
    )
    .await;
    // 256 bytes of purpose is the limit, and the whole book stock may be consumed.
    h.ok(
        "P",
        Payload::Consume(pb::Consume {
            purpose: "p".repeat(256),
            ..cons("plant-1", EPH, "E-1", 3_999)
        }),
        &[],
    )
    .await;
    h.ok("P", consume("plant-1", EPH, "E-1", 1), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 0);
    h.refuse(
        "a consume of an empty lot",
        "P",
        consume("plant-1", EPH, "E-1", 1),
        &[],
        FP,
        &["consume.quantity.amount", "exceeds book stock 0"],
    )
    .await;
    // A category-3 producer consumes under its PRODUCE licence; the other lot is untouched.
    h.ok("P", consume("plant-1", ACE, "A-1", 5_000), &[]).await;
    assert_eq!(h.bal("P", "plant-1", ACE, "A-1"), 0);
    assert_eq!(h.bal("U", "u-1", EPH, "E-1"), 400);
    assert_eq!(h.bal("B", "wh-1", EPH, "E-1"), 1_000);
    let t = h.totals("P", "plant-1", EPH, "E-1");
    assert_eq!(
        (t.get(Term::Consumed), t.get(Term::Shipped)),
        (8_000, 2_000)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Destroy
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_needs_an_inspector_of_the_enterprises_jurisdiction_cosigning_the_same_body() {
    let mut h = H::start().await;
    h.produce("P", "plant-1", EPH, "E-1", 10_000, &[]).await;
    h.produce("P", "plant-1", ACE, "A-1", 100, &[]).await;
    let r = h
        .ok("P", destroy("plant-1", EPH, "E-1", 1_000), &["I4403"])
        .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 9_000);
    assert_eq!(
        h.last_event("P", "plant-1", EPH, "E-1"),
        (
            r.index,
            Event::Move {
                term: Term::Destroyed,
                quantity: 1_000,
                shipment: None
            }
        )
    );
    assert_eq!(
        (h.posted(&r).kind.as_str(), h.posted(&r).term),
        ("destroy", Term::Destroyed)
    );
    // A provincial inspector covers the city; one covering inspector among others suffices.
    h.ok("P", destroy("plant-1", EPH, "E-1", 500), &["I44"])
        .await;
    h.ok(
        "P",
        destroy("plant-1", EPH, "E-1", 500),
        &["I4401", "I4403"],
    )
    .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 8_000);
    assert_eq!(
        h.totals("P", "plant-1", EPH, "E-1").get(Term::Destroyed),
        2_000
    );

    // Revoke one inspector so its co-signature is stale.
    let irev = key_id(&h.key("Irev"));
    h.reg_ok(Payload::RevokeKey(pb::RevokeKey {
        key_id: irev.0.to_vec(),
        reason: "retired".into(),
    }))
    .await;

    let cases: Vec<Case> = vec![
        (
            "no co-signature",
            "P",
            destroy("plant-1", EPH, "E-1", 1),
            &[],
            DENIED,
            &[
                "record.cosignatures",
                "inspector covering `440305`",
                "none of its 0",
            ],
        ),
        (
            "an inspector of another city (Guangzhou)",
            "P",
            destroy("plant-1", EPH, "E-1", 1),
            &["I4401"],
            DENIED,
            &["record.cosignatures", "`440305`", "none of its 1"],
        ),
        (
            "a witness key of the province",
            "P",
            destroy("plant-1", EPH, "E-1", 1),
            &["W44"],
            DENIED,
            &["record.cosignatures", "inspector"],
        ),
        (
            "another enterprise's key",
            "P",
            destroy("plant-1", EPH, "E-1", 1),
            &["B"],
            DENIED,
            &["record.cosignatures", "inspector"],
        ),
        (
            "an enterprise key of the same jurisdiction",
            "P",
            destroy("plant-1", EPH, "E-1", 1),
            &["U"],
            DENIED,
            &["record.cosignatures", "inspector"],
        ),
        (
            "the signer co-signing its own record",
            "P",
            destroy("plant-1", EPH, "E-1", 1),
            &["P"],
            INVALID,
            &[
                "record.cosignatures[0].key_id",
                "cannot cosign its own record",
            ],
        ),
        (
            "a revoked inspector",
            "P",
            destroy("plant-1", EPH, "E-1", 1),
            &["Irev"],
            DENIED,
            &["record.cosignatures[0].key_id", "revoked"],
        ),
        (
            "no method",
            "P",
            Payload::Destroy(pb::Destroy {
                method: String::new(),
                ..dest("plant-1", EPH, "E-1", 1)
            }),
            &["I4403"],
            INVALID,
            &["destroy.method", "required"],
        ),
        (
            "a blank method",
            "P",
            Payload::Destroy(pb::Destroy {
                method: "   ".into(),
                ..dest("plant-1", EPH, "E-1", 1)
            }),
            &["I4403"],
            INVALID,
            &["destroy.method", "required"],
        ),
        (
            "no application reference",
            "P",
            Payload::Destroy(pb::Destroy {
                application_ref: String::new(),
                ..dest("plant-1", EPH, "E-1", 1)
            }),
            &["I4403"],
            INVALID,
            &["destroy.application_ref", "required"],
        ),
        (
            "one more than the book stock",
            "P",
            destroy("plant-1", EPH, "E-1", 8_001),
            &["I4403"],
            FP,
            &["destroy.quantity.amount", "exceeds book stock 8000"],
        ),
        (
            "a lot that does not exist",
            "P",
            destroy("plant-1", EPH, "E-9", 1),
            &["I4403"],
            FP,
            &["destroy.lot", "does not exist"],
        ),
        (
            "a lot of another substance",
            "P",
            destroy("plant-1", EPH, "A-1", 1),
            &["I4403"],
            FP,
            &["destroy.lot", "is 67-64-1"],
        ),
        (
            "a zero quantity",
            "P",
            destroy("plant-1", EPH, "E-1", 0),
            &["I4403"],
            INVALID,
            &["destroy.quantity.amount"],
        ),
        (
            "an inspector signing the destruction itself",
            "I4403",
            destroy("plant-1", EPH, "E-1", 1),
            &[],
            DENIED,
            &["body.signer", "ROLE_INSPECTOR", "`destroy`"],
        ),
    ];
    h.refuse_all(cases).await;

    // The inspector's co-signature must be over this very body.
    let mut r = h.record("P", destroy("plant-1", EPH, "E-1", 1), &["I4403"]);
    let other = h.record("P", destroy("plant-1", EPH, "E-1", 2), &[]);
    r.cosignatures[0].signature = crypto::cosign_record(&h.key("I4403"), &other.body).to_vec();
    h.refuse_rec(
        "an inspector's co-signature over another body",
        r,
        Code::Unauthenticated,
        &["record.cosignatures[0]"],
    )
    .await;
    // An inspector's record signature is not a co-signature.
    let mut r = h.record("P", destroy("plant-1", EPH, "E-1", 1), &["I4403"]);
    r.cosignatures[0].signature = crypto::sign_record(&h.key("I4403"), &r.body).to_vec();
    h.refuse_rec(
        "a record signature offered as a co-signature",
        r,
        Code::Unauthenticated,
        &["record.cosignatures[0]"],
    )
    .await;

    // In Guangzhou it is the other way round.
    h.produce("GZ", "gz-1", EPH, "G-1", 1_000, &[]).await;
    h.refuse(
        "a Shenzhen inspector in Guangzhou",
        "GZ",
        destroy("gz-1", EPH, "G-1", 10),
        &["I4403"],
        DENIED,
        &["record.cosignatures", "`440104`"],
    )
    .await;
    h.ok("GZ", destroy("gz-1", EPH, "G-1", 10), &["I4401"])
        .await;
    assert_eq!(h.bal("GZ", "gz-1", EPH, "G-1"), 990);
    // Any holder may have its stock destroyed under supervision (no licence asked).
    let sh = h
        .ship("P", "plant-1", EPH, "E-1", 2_000, "B", "wh-1", "", &[])
        .await;
    h.ok("B", receive(&sh, "wh-1", 2_000), &[]).await;
    h.ok("B", destroy("wh-1", EPH, "E-1", 2_000), &["I4403"])
        .await;
    assert_eq!(h.bal("B", "wh-1", EPH, "E-1"), 0);
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 6_000);
}

// ---------------------------------------------------------------------------------------------
// 3. Loss reports
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_reports_name_a_kind_and_a_police_report_except_for_spillage() {
    let mut h = H::start().await;
    h.produce("P", "plant-1", EPH, "E-1", 10_000, &[]).await;
    h.produce("P", "plant-1", ACE, "A-1", 100, &[]).await;
    let theft = h
        .ok(
            "P",
            loss(
                "plant-1",
                EPH,
                "E-1",
                1_000,
                LossKind::Theft,
                "PSB-2024-0001",
            ),
            &[],
        )
        .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 9_000);
    let lv = h.loss_view("P", &theft);
    assert_eq!(
        (
            lv.kind,
            lv.police_report_ref.as_str(),
            lv.quantity,
            lv.lot.as_str()
        ),
        (LossKind::Theft as i32, "PSB-2024-0001", 1_000, "E-1")
    );
    assert_eq!(
        h.last_event("P", "plant-1", EPH, "E-1"),
        (
            theft.index,
            Event::Move {
                term: Term::Lost,
                quantity: 1_000,
                shipment: None
            }
        )
    );
    let spill = h
        .ok(
            "P",
            loss("plant-1", EPH, "E-1", 200, LossKind::Spillage, ""),
            &[],
        )
        .await;
    assert_eq!(h.loss_view("P", &spill).kind, LossKind::Spillage as i32);
    h.ok(
        "P",
        loss("plant-1", EPH, "E-1", 100, LossKind::Robbery, "PSB-2"),
        &[],
    )
    .await;
    h.ok(
        "P",
        loss("plant-1", EPH, "E-1", 100, LossKind::Disappearance, "PSB-3"),
        &[],
    )
    .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 8_600);
    assert_eq!(h.totals("P", "plant-1", EPH, "E-1").get(Term::Lost), 1_400);
    assert_eq!(h.posted(&spill).kind, "loss_report");

    let cases: Vec<Case> = vec![
        (
            "a theft without a police report",
            "P",
            loss("plant-1", EPH, "E-1", 1, LossKind::Theft, ""),
            &[],
            INVALID,
            &["loss_report.police_report_ref", "theft"],
        ),
        (
            "a robbery with a blank police report",
            "P",
            loss("plant-1", EPH, "E-1", 1, LossKind::Robbery, "  "),
            &[],
            INVALID,
            &["loss_report.police_report_ref", "robbery"],
        ),
        (
            "a disappearance without a police report",
            "P",
            loss("plant-1", EPH, "E-1", 1, LossKind::Disappearance, ""),
            &[],
            INVALID,
            &["loss_report.police_report_ref", "disappearance"],
        ),
        (
            "no kind",
            "P",
            loss("plant-1", EPH, "E-1", 1, LossKind::Unspecified, "PSB-9"),
            &[],
            INVALID,
            &["loss_report.kind"],
        ),
        (
            "an unknown kind",
            "P",
            Payload::LossReport(pb::LossReport {
                kind: 9,
                ..lost("plant-1", EPH, "E-1", 1, LossKind::Theft, "PSB-9")
            }),
            &[],
            INVALID,
            &["loss_report.kind", "9 is not"],
        ),
        (
            "a police reference of 129 bytes",
            "P",
            loss("plant-1", EPH, "E-1", 1, LossKind::Theft, &"r".repeat(129)),
            &[],
            INVALID,
            &["loss_report.police_report_ref", "longer than 128"],
        ),
        (
            "one more than the book stock",
            "P",
            loss("plant-1", EPH, "E-1", 8_601, LossKind::Spillage, ""),
            &[],
            FP,
            &["loss_report.quantity.amount", "exceeds book stock 8600"],
        ),
        (
            "a lot of another substance",
            "P",
            loss("plant-1", EPH, "A-1", 1, LossKind::Spillage, ""),
            &[],
            FP,
            &["loss_report.lot", "is 67-64-1"],
        ),
        (
            "a lot that does not exist",
            "P",
            loss("plant-1", EPH, "E-7", 1, LossKind::Spillage, ""),
            &[],
            FP,
            &["loss_report.lot", "does not exist"],
        ),
        (
            "a site of another enterprise",
            "P",
            loss("wh-1", EPH, "E-1", 1, LossKind::Spillage, ""),
            &[],
            FP,
            &["loss_report.site_id", "wh-1"],
        ),
        (
            "a zero quantity",
            "P",
            loss("plant-1", EPH, "E-1", 0, LossKind::Spillage, ""),
            &[],
            INVALID,
            &["loss_report.quantity.amount"],
        ),
        (
            "an inspector's key",
            "I4403",
            loss("plant-1", EPH, "E-1", 1, LossKind::Spillage, ""),
            &[],
            DENIED,
            &["body.signer", "ROLE_INSPECTOR"],
        ),
    ];
    h.refuse_all(cases).await;
    // The police reference may be 128 bytes, and a loss may take the whole book stock.
    h.ok(
        "P",
        loss(
            "plant-1",
            EPH,
            "E-1",
            8_600,
            LossKind::Theft,
            &"r".repeat(128),
        ),
        &[],
    )
    .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 0);
    assert_eq!(h.site_totals("P", "plant-1", EPH).get(Term::Lost), 10_000);
}

// ---------------------------------------------------------------------------------------------
// 4. Transport legs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_legs_follow_the_chain_of_custody_from_pickup_to_delivery() {
    use LegKind::{Delivery, Handover, Pickup};
    let mut h = H::start().await;
    let made = h.produce("P", "plant-1", EPH, "E-1", 10_000, &[]).await;
    // The carrier a shipment names is an enrolled enterprise licensed to transport.
    let p = h
        .ship_payload("P", "plant-1", EPH, "E-1", 2_000, "B", "wh-1", "R")
        .await;
    h.refuse(
        "a carrier without a TRANSPORT licence",
        "P",
        p.clone(),
        &[],
        FP,
        &["ship.carrier", "PRECURSOR_1 × TRANSPORT"],
    )
    .await;
    let Payload::Ship(mut s) = p else {
        unreachable!()
    };
    s.carrier = code("91440300MA5CU0099");
    h.refuse(
        "a carrier that is not enrolled",
        "P",
        Payload::Ship(s.clone()),
        &[],
        FP,
        &["ship.carrier", "not an enrolled enterprise"],
    )
    .await;
    s.carrier = h.code("C");
    let sh = h.ok("P", Payload::Ship(s), &[]).await;
    let c2 = h.code("C2");
    let r_code = h.code("R");
    let nobody = code("91440300MA5CU0098");

    let cases: Vec<Case> = vec![
        (
            "a handover before the pickup",
            "C",
            leg(&sh, Handover, &["S-1"], &c2),
            &[],
            FP,
            &["transport_leg.kind", "has not been picked up"],
        ),
        (
            "a delivery before the pickup",
            "C",
            leg(&sh, Delivery, &["S-1"], ""),
            &[],
            FP,
            &["transport_leg.kind", "has not been picked up"],
        ),
        (
            "a pickup by a carrier the shipment does not name",
            "C2",
            leg(&sh, Pickup, &["S-1"], ""),
            &[],
            DENIED,
            &["transport_leg.ship", "in the custody of carrier"],
        ),
        (
            "a pickup recorded by the shipper",
            "P",
            leg(&sh, Pickup, &["S-1"], ""),
            &[],
            DENIED,
            &["transport_leg.ship", "in the custody of carrier"],
        ),
        (
            "a pickup recorded by the consignee",
            "B",
            leg(&sh, Pickup, &["S-1"], ""),
            &[],
            DENIED,
            &["transport_leg.ship", "in the custody of carrier"],
        ),
        (
            "no seals",
            "C",
            leg(&sh, Pickup, &[], ""),
            &[],
            INVALID,
            &["transport_leg.seal_numbers", "1 to 32"],
        ),
        (
            "an empty seal number",
            "C",
            leg(&sh, Pickup, &["S-1", ""], ""),
            &[],
            INVALID,
            &["transport_leg.seal_numbers[1]"],
        ),
        (
            "no kind",
            "C",
            leg(&sh, LegKind::Unspecified, &["S-1"], ""),
            &[],
            INVALID,
            &["transport_leg.kind"],
        ),
        (
            "an unknown kind",
            "C",
            Payload::TransportLeg(pb::TransportLeg {
                kind: 7,
                ..leg_of(ship_ref(&sh), Pickup, &["S-1"], "")
            }),
            &[],
            INVALID,
            &["transport_leg.kind", "7 is not"],
        ),
        (
            "no location",
            "C",
            Payload::TransportLeg(pb::TransportLeg {
                location: " ".into(),
                ..leg_of(ship_ref(&sh), Pickup, &["S-1"], "")
            }),
            &[],
            INVALID,
            &["transport_leg.location", "required"],
        ),
        (
            "a pickup naming a next carrier",
            "C",
            leg(&sh, Pickup, &["S-1"], &c2),
            &[],
            INVALID,
            &["transport_leg.next_carrier", "only a handover"],
        ),
        (
            "no shipment cited",
            "C",
            Payload::TransportLeg(leg_of(None, Pickup, &["S-1"], "")),
            &[],
            INVALID,
            &["transport_leg.ship", "required"],
        ),
        (
            "a produce entry cited as the shipment",
            "C",
            leg(&made, Pickup, &["S-1"], ""),
            &[],
            FP,
            &["transport_leg.ship", "is not a shipment"],
        ),
        (
            "a shipment cited with a wrong leaf hash",
            "C",
            Payload::TransportLeg(leg_of(
                Some(entry_ref(ORIGIN, sh.index, &[7; 32])),
                Pickup,
                &["S-1"],
                "",
            )),
            &[],
            FP,
            &["transport_leg.ship.leaf_hash"],
        ),
        (
            "an inspector's key",
            "I4403",
            leg(&sh, Pickup, &["S-1"], ""),
            &[],
            DENIED,
            &["body.signer", "ROLE_INSPECTOR"],
        ),
    ];
    h.refuse_all(cases).await;
    let seals33: Vec<String> = (0..33).map(|i| format!("S-{i}")).collect();
    let s33: Vec<&str> = seals33.iter().map(String::as_str).collect();
    h.refuse(
        "33 seals",
        "C",
        leg(&sh, Pickup, &s33, ""),
        &[],
        INVALID,
        &["transport_leg.seal_numbers", "1 to 32"],
    )
    .await;

    let before = h
        .views()
        .into_iter()
        .filter(|(k, _)| k.starts_with(b"b/"))
        .collect::<Vec<_>>();
    let pickup = h.ok("C", leg(&sh, Pickup, &["S-1", "S-2"], ""), &[]).await;
    let v = h.shipment(&sh);
    assert_eq!(v.legs.len(), 1);
    let l = &v.legs[0];
    assert_eq!(
        (
            l.entry,
            l.kind,
            l.carrier.as_str(),
            l.seals.len(),
            l.seals_changed
        ),
        (pickup.index, Pickup as i32, h.code("C").as_str(), 2, false)
    );
    assert_eq!(v.custodian(), h.code("C"));
    h.refuse(
        "a second pickup",
        "C",
        leg(&sh, Pickup, &["S-1", "S-2"], ""),
        &[],
        Code::AlreadyExists,
        &["transport_leg.kind", "was picked up by entry"],
    )
    .await;
    let cases: Vec<Case> = vec![
        (
            "a handover to the custodian itself",
            "C",
            leg(&sh, Handover, &["S-1"], &h.code("C")),
            &[],
            INVALID,
            &["transport_leg.next_carrier", "another carrier"],
        ),
        (
            "a handover to an enterprise without a TRANSPORT licence",
            "C",
            leg(&sh, Handover, &["S-1"], &r_code),
            &[],
            FP,
            &["transport_leg.next_carrier", "PRECURSOR_1 × TRANSPORT"],
        ),
        (
            "a handover to an enterprise that is not enrolled",
            "C",
            leg(&sh, Handover, &["S-1"], &nobody),
            &[],
            FP,
            &["transport_leg.next_carrier", "not an enrolled enterprise"],
        ),
        (
            "a handover naming no next carrier",
            "C",
            leg(&sh, Handover, &["S-1"], ""),
            &[],
            FP,
            &["transport_leg.next_carrier"],
        ),
        (
            "a handover recorded by the carrier that is to take over",
            "C2",
            leg(&sh, Handover, &["S-1"], &c2),
            &[],
            DENIED,
            &["transport_leg.ship", "in the custody of carrier"],
        ),
        (
            "a delivery recorded by the consignee",
            "B",
            leg(&sh, Delivery, &["S-1"], ""),
            &[],
            DENIED,
            &["transport_leg.ship", "in the custody of carrier"],
        ),
    ];
    h.refuse_all(cases).await;
    // The same seals in another order are the same seals.
    let handover = h
        .ok("C", leg(&sh, Handover, &["S-2", "S-1"], &c2), &[])
        .await;
    let v = h.shipment(&sh);
    assert_eq!(v.custodian(), c2);
    assert_eq!(
        (
            v.legs[1].entry,
            v.legs[1].next_carrier.as_str(),
            v.legs[1].seals_changed
        ),
        (handover.index, c2.as_str(), false)
    );
    h.refuse(
        "a delivery by the carrier that handed over",
        "C",
        leg(&sh, Delivery, &["S-1", "S-2"], ""),
        &[],
        DENIED,
        &["transport_leg.ship", "in the custody of carrier"],
    )
    .await;
    // A seal broken and replaced in transit is recorded, not refused.
    let delivery = h
        .ok("C2", leg(&sh, Delivery, &["S-1", "S-3"], ""), &[])
        .await;
    let v = h.shipment(&sh);
    assert_eq!(v.legs.len(), 3);
    assert_eq!(
        (
            v.legs[2].entry,
            v.legs[2].kind,
            v.legs[2].carrier.as_str(),
            v.legs[2].seals_changed
        ),
        (delivery.index, Delivery as i32, c2.as_str(), true)
    );
    let cases: Vec<Case> = vec![
        (
            "a second delivery",
            "C2",
            leg(&sh, Delivery, &["S-1", "S-3"], ""),
            &[],
            Code::AlreadyExists,
            &["transport_leg.kind", "was delivered by entry"],
        ),
        (
            "a handover after the delivery",
            "C2",
            leg(&sh, Handover, &["S-1"], &h.code("C")),
            &[],
            FP,
            &["transport_leg.kind", "was delivered by entry"],
        ),
    ];
    h.refuse_all(cases).await;
    let after = h
        .views()
        .into_iter()
        .filter(|(k, _)| k.starts_with(b"b/"))
        .collect::<Vec<_>>();
    assert!(before == after, "transport legs changed book stock");
    h.ok("B", receive(&sh, "wh-1", 2_000), &[]).await;
    assert_eq!(h.shipment(&sh).legs.len(), 3);

    // A shipment received before the carrier recorded anything: its transport is over.
    let sh2 = h
        .ship("P", "plant-1", EPH, "E-1", 1_000, "B", "wh-1", "C", &[])
        .await;
    h.ok("B", receive(&sh2, "wh-1", 1_000), &[]).await;
    let cases: Vec<Case> = vec![
        (
            "a pickup after the receipt",
            "C",
            leg(&sh2, Pickup, &["S-9"], ""),
            &[],
            FP,
            &["transport_leg.ship", "its transport is over"],
        ),
        (
            "a handover after the receipt",
            "C",
            leg(&sh2, Handover, &["S-9"], &c2),
            &[],
            FP,
            &["transport_leg.ship", "its transport is over"],
        ),
        (
            "a delivery without a pickup, after the receipt",
            "C",
            leg(&sh2, Delivery, &["S-9"], ""),
            &[],
            FP,
            &["transport_leg.kind", "has not been picked up"],
        ),
    ];
    h.refuse_all(cases).await;
    // Picked up, then received: no more handovers, but the carrier may still close its record.
    let sh3 = h
        .ship("P", "plant-1", EPH, "E-1", 1_000, "B", "wh-1", "C", &[])
        .await;
    h.ok("C", leg(&sh3, Pickup, &["S-5"], ""), &[]).await;
    h.ok("B", receive(&sh3, "wh-1", 1_000), &[]).await;
    h.refuse(
        "a handover after the receipt",
        "C",
        leg(&sh3, Handover, &["S-5"], &c2),
        &[],
        FP,
        &["transport_leg.ship", "its transport is over"],
    )
    .await;
    h.ok("C", leg(&sh3, Delivery, &["S-5"], ""), &[]).await;
    assert_eq!(h.shipment(&sh3).legs.len(), 2);
    // A shipment that names no carrier has no legs.
    let sh4 = h
        .ship("P", "plant-1", EPH, "E-1", 1_000, "B", "wh-1", "", &[])
        .await;
    h.refuse(
        "a leg of a shipment without a carrier",
        "C",
        leg(&sh4, Pickup, &["S-1"], ""),
        &[],
        FP,
        &["transport_leg.ship", "names no carrier"],
    )
    .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 5_000);
    assert_eq!(h.bal("B", "wh-1", EPH, "E-1"), 4_000);
}

// ---------------------------------------------------------------------------------------------
// 5. Inspections
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspections_by_an_inspector_of_the_jurisdiction_are_journalled_as_inspector_counts() {
    let mut h = H::start().await;
    h.produce("P", "plant-1", EPH, "E-1", 10_000, &[]).await;
    h.produce("P", "plant-1", ACE, "A-1", 5_000, &[]).await;
    let p = h.code("P");
    let mut ins = inspection(&p, "plant-1", &[(EPH, "E-1", 9_000), (ACE, "A-1", 5_000)]);
    ins.seals_checked = vec!["SEAL-7".into()];
    ins.notes = "cage lock worn".into();
    let r = h.ok("I4403", Payload::Inspection(ins), &[]).await;
    assert_eq!(
        h.last_event("P", "plant-1", EPH, "E-1"),
        (
            r.index,
            Event::Count {
                counted: 9_000,
                book: 10_000,
                inspector: true
            }
        )
    );
    let js = h.stock_journal("P", "plant-1", EPH);
    let last = js.last().expect("stock journal row");
    assert_eq!(
        (last.entry, &last.event),
        (
            r.index,
            &Event::Count {
                counted: 9_000,
                book: 10_000,
                inspector: true
            }
        )
    );
    assert_eq!(
        h.bal("P", "plant-1", EPH, "E-1"),
        10_000,
        "a count moves nothing"
    );
    let cv = h.counted(&r);
    assert!(cv.inspector);
    assert_eq!(
        (cv.enterprise.as_str(), cv.site.as_str()),
        (p.as_str(), "plant-1")
    );
    assert_eq!(
        cv.lots,
        vec![
            (EPH.to_string(), "E-1".to_string(), 9_000, 10_000),
            (ACE.to_string(), "A-1".to_string(), 5_000, 5_000)
        ]
    );
    assert_eq!(cv.accepted_by, None);
    // Seals alone or notes alone are findings too.
    let mut seals = inspection(&p, "plant-2", &[]);
    seals.seals_checked = vec!["SEAL-8".into()];
    h.ok("I44", Payload::Inspection(seals), &[]).await;
    let mut notes = inspection(&p, "plant-2", &[]);
    notes.notes = "nothing stored here".into();
    h.ok("I4403", Payload::Inspection(notes), &[]).await;

    let gz = h.code("GZ");
    let nobody = code("91440300MA5CU0097");
    let cases: Vec<Case> = vec![
        (
            "an inspector of another city",
            "I4401",
            Payload::Inspection(inspection(&p, "plant-1", &[(EPH, "E-1", 1)])),
            &[],
            DENIED,
            &[
                "inspection.enterprise",
                "`440305`",
                "outside the inspector's jurisdiction `4401`",
            ],
        ),
        (
            "a Shenzhen inspector in Guangzhou",
            "I4403",
            Payload::Inspection(inspection(&gz, "gz-1", &[(EPH, "G-1", 1)])),
            &[],
            DENIED,
            &["inspection.enterprise", "`440104`"],
        ),
        (
            "an enterprise key",
            "P",
            Payload::Inspection(inspection(&p, "plant-1", &[(EPH, "E-1", 1)])),
            &[],
            DENIED,
            &["body.signer", "ROLE_ENTERPRISE", "`inspection`"],
        ),
        (
            "a regulator key",
            "reg",
            Payload::Inspection(inspection(&p, "plant-1", &[(EPH, "E-1", 1)])),
            &[],
            DENIED,
            &["body.signer", "ROLE_ROOT_REGULATOR"],
        ),
        (
            "a witness key",
            "W44",
            Payload::Inspection(inspection(&p, "plant-1", &[(EPH, "E-1", 1)])),
            &[],
            DENIED,
            &["body.signer", "ROLE_WITNESS"],
        ),
        (
            "an enterprise that is not enrolled",
            "I44",
            Payload::Inspection(inspection(&nobody, "x-1", &[(EPH, "E-1", 1)])),
            &[],
            FP,
            &["inspection.enterprise", "not an enrolled enterprise"],
        ),
        (
            "a site of another enterprise",
            "I4403",
            Payload::Inspection(inspection(&p, "wh-1", &[(EPH, "E-1", 1)])),
            &[],
            FP,
            &["inspection.site_id", "wh-1"],
        ),
        (
            "no finding at all",
            "I4403",
            Payload::Inspection(inspection(&p, "plant-1", &[])),
            &[],
            INVALID,
            &["inspection", "records a finding"],
        ),
        (
            "a count of a substance not in the catalogue",
            "I4403",
            Payload::Inspection(inspection(&p, "plant-1", &[(WATER, "E-1", 1)])),
            &[],
            INVALID,
            &["inspection.counts[0].substance"],
        ),
        (
            "the same lot counted twice",
            "I4403",
            Payload::Inspection(inspection(
                &p,
                "plant-1",
                &[(EPH, "E-1", 1), (EPH, "E-1", 2)],
            )),
            &[],
            INVALID,
            &["inspection.counts[1]", "counted twice"],
        ),
        (
            "a count in another unit",
            "I4403",
            Payload::Inspection(pb::Inspection {
                counts: vec![pb::StockCount {
                    substance: EPH.into(),
                    lot: "E-1".into(),
                    quantity: Some(ml(1)),
                }],
                ..inspection(&p, "plant-1", &[])
            }),
            &[],
            INVALID,
            &["inspection.counts[0].quantity.unit"],
        ),
        (
            "an empty seal number",
            "I4403",
            Payload::Inspection(pb::Inspection {
                seals_checked: vec![String::new()],
                ..inspection(&p, "plant-1", &[(EPH, "E-1", 1)])
            }),
            &[],
            INVALID,
            &["inspection.seals_checked[0]"],
        ),
    ];
    h.refuse_all(cases).await;
    // The province covers Guangzhou.
    h.produce("GZ", "gz-1", EPH, "G-1", 100, &[]).await;
    let g = h
        .ok(
            "I44",
            Payload::Inspection(inspection(&gz, "gz-1", &[(EPH, "G-1", 100)])),
            &[],
        )
        .await;
    assert_eq!(
        h.last_event("GZ", "gz-1", EPH, "G-1"),
        (
            g.index,
            Event::Count {
                counted: 100,
                book: 100,
                inspector: true
            }
        )
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Corrections
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_restate_produce_consume_destroy_and_loss_and_change_stock_by_the_difference() {
    let mut h = H::start().await;
    let made = h.produce("P", "plant-1", EPH, "E-1", 10_000, &[]).await;
    // A produce keeps no correctable-movement record of its own (its lot describes it) until
    // a correction writes one.
    assert_eq!(
        h.server
            .ledger
            .view::<PostedView>(&key::posted(made.index))
            .expect("view"),
        None
    );
    let c1 = h
        .ok(
            "P",
            correction(&made, Some(produce("plant-1", EPH, "E-1", 12_000))),
            &[],
        )
        .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 12_000);
    assert_eq!(
        h.totals("P", "plant-1", EPH, "E-1").get(Term::Produced),
        12_000
    );
    assert_eq!(
        h.last_event("P", "plant-1", EPH, "E-1"),
        (
            c1.index,
            Event::Correct {
                term: Term::Produced,
                corrects: made.index,
                delta: 2_000
            }
        )
    );
    let po = h.posted(&made);
    assert_eq!(
        (po.quantity, po.corrected_by.clone()),
        (12_000, vec![c1.index])
    );
    assert_eq!(h.site_totals("P", "plant-1", EPH).balance(), 12_000);

    // A consume corrected down, then up: each correction moves the book by the difference
    // from the quantity in force, not from the original.
    let used = h.ok("P", consume("plant-1", EPH, "E-1", 3_000), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 9_000);
    h.ok(
        "P",
        correction(&used, Some(consume("plant-1", EPH, "E-1", 2_500))),
        &[],
    )
    .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 9_500);
    h.ok(
        "P",
        correction(&used, Some(consume("plant-1", EPH, "E-1", 4_000))),
        &[],
    )
    .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 8_000);
    assert_eq!(
        h.totals("P", "plant-1", EPH, "E-1").get(Term::Consumed),
        4_000
    );
    assert_eq!(h.posted(&used).corrected_by.len(), 2);
    // Voided: as if it never happened.
    h.ok("P", correction(&used, None), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 12_000);
    assert_eq!(h.totals("P", "plant-1", EPH, "E-1").get(Term::Consumed), 0);
    assert_eq!(h.posted(&used).quantity, 0);

    // A destruction is corrected under an inspector's eye again.
    let burnt = h
        .ok("P", destroy("plant-1", EPH, "E-1", 1_000), &["I4403"])
        .await;
    let fix = correction(&burnt, Some(destroy("plant-1", EPH, "E-1", 800)));
    h.refuse(
        "a destroy correction without an inspector",
        "P",
        fix.clone(),
        &[],
        DENIED,
        &["record.cosignatures", "inspector"],
    )
    .await;
    h.refuse(
        "a destroy correction co-signed by an inspector of another city",
        "P",
        fix.clone(),
        &["I4401"],
        DENIED,
        &["record.cosignatures", "inspector"],
    )
    .await;
    h.refuse(
        "voiding a destroy without an inspector",
        "P",
        correction(&burnt, None),
        &[],
        DENIED,
        &["record.cosignatures", "inspector"],
    )
    .await;
    h.ok("P", fix, &["I4403"]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 11_200);
    assert_eq!(
        h.totals("P", "plant-1", EPH, "E-1").get(Term::Destroyed),
        800
    );

    // A theft that turns out to have been a smaller spillage.
    let gone = h
        .ok(
            "P",
            loss("plant-1", EPH, "E-1", 500, LossKind::Theft, "PSB-1"),
            &[],
        )
        .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 10_700);
    h.ok(
        "P",
        correction(
            &gone,
            Some(loss("plant-1", EPH, "E-1", 400, LossKind::Spillage, "")),
        ),
        &[],
    )
    .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 10_800);
    let lv = h.loss_view("P", &gone);
    assert_eq!(
        (lv.kind, lv.police_report_ref.as_str(), lv.quantity),
        (LossKind::Spillage as i32, "", 400)
    );

    // What a correction must state.
    let used = h.ok("P", consume("plant-1", EPH, "E-1", 800), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 10_000);
    let body = |edit: fn(&mut pb::RecordBody)| {
        let mut b = pb::RecordBody {
            payload: Some(consume("plant-1", EPH, "E-1", 700)),
            ..Default::default()
        };
        edit(&mut b);
        codec::encode_body(&b)
    };
    let with = |bytes: Vec<u8>| Payload::Correction(corr_of(Some(receipt_ref(&used)), bytes));
    let fixed = |p: Payload| correction(&used, Some(p));
    let mut cases: Vec<Case> = vec![
        (
            "no reason",
            "P",
            Payload::Correction(pb::Correction {
                reason: String::new(),
                ..corr_of(Some(receipt_ref(&used)), vec![])
            }),
            &[],
            INVALID,
            &["correction.reason", "required"],
        ),
        (
            "a blank approver",
            "P",
            Payload::Correction(pb::Correction {
                approver: "  ".into(),
                ..corr_of(Some(receipt_ref(&used)), vec![])
            }),
            &[],
            INVALID,
            &["correction.approver", "required"],
        ),
        (
            "no entry corrected",
            "P",
            Payload::Correction(corr_of(None, vec![])),
            &[],
            INVALID,
            &["correction.corrects", "required"],
        ),
        (
            "an entry that does not exist",
            "P",
            Payload::Correction(corr_of(
                Some(entry_ref(ORIGIN, 1_000_000, &used.leaf_hash)),
                vec![],
            )),
            &[],
            FP,
            &["correction.corrects.index", "does not exist"],
        ),
        (
            "a wrong leaf hash",
            "P",
            Payload::Correction(corr_of(
                Some(entry_ref(ORIGIN, used.index, &[1; 32])),
                vec![],
            )),
            &[],
            FP,
            &["correction.corrects.leaf_hash"],
        ),
        (
            "an entry of another ledger",
            "P",
            Payload::Correction(corr_of(
                Some(entry_ref(
                    "taizhang.test/other",
                    used.index,
                    &used.leaf_hash,
                )),
                vec![],
            )),
            &[],
            FP,
            &["correction.corrects.origin"],
        ),
        (
            "a replacement that is not a record body",
            "P",
            with(vec![0xff, 0xff, 0xff]),
            &[],
            INVALID,
            &["correction.replacement", "not a serialized RecordBody"],
        ),
        (
            "a replacement body without a payload (only an unknown field)",
            "P",
            with(vec![0xc2, 0x3e, 0x00]),
            &[],
            INVALID,
            &["correction.replacement", "has no payload"],
        ),
        (
            "a replacement naming a ledger",
            "P",
            with(body(|b| b.ledger_origin = ORIGIN.into())),
            &[],
            INVALID,
            &["correction.replacement", "carries only the payload"],
        ),
        (
            "a replacement naming a signer",
            "P",
            with(body(|b| b.signer = vec![1; 16])),
            &[],
            INVALID,
            &["correction.replacement", "carries only the payload"],
        ),
        (
            "a replacement with a seq",
            "P",
            with(body(|b| b.signer_seq = 3)),
            &[],
            INVALID,
            &["correction.replacement", "carries only the payload"],
        ),
        (
            "a replacement with a prev hash",
            "P",
            with(body(|b| b.signer_prev = vec![0; 32])),
            &[],
            INVALID,
            &["correction.replacement", "carries only the payload"],
        ),
        (
            "a replacement with a client time",
            "P",
            with(body(|b| b.client_time_ms = 1)),
            &[],
            INVALID,
            &["correction.replacement", "carries only the payload"],
        ),
        (
            "a replacement of another kind",
            "P",
            fixed(produce("plant-1", EPH, "E-1", 700)),
            &[],
            INVALID,
            &[
                "correction.replacement",
                "is a `consume`",
                "must be one too",
            ],
        ),
        (
            "a replacement at another site",
            "P",
            fixed(consume("plant-2", EPH, "E-1", 700)),
            &[],
            INVALID,
            &["correction.replacement", "must keep site `plant-1`"],
        ),
        (
            "a replacement of another lot",
            "P",
            fixed(consume("plant-1", EPH, "E-2", 700)),
            &[],
            INVALID,
            &["correction.replacement", "lot `E-1`"],
        ),
        (
            "a replacement of another substance",
            "P",
            fixed(consume("plant-1", ACE, "E-1", 700)),
            &[],
            INVALID,
            &["correction.replacement", "substance 299-42-3"],
        ),
        (
            "a replacement of quantity zero (voiding is an empty replacement)",
            "P",
            fixed(consume("plant-1", EPH, "E-1", 0)),
            &[],
            INVALID,
            &["correction.replacement.consume.quantity.amount"],
        ),
        (
            "a replacement without a quantity",
            "P",
            fixed(Payload::Consume(pb::Consume {
                quantity: None,
                ..cons("plant-1", EPH, "E-1", 1)
            })),
            &[],
            INVALID,
            &["correction.replacement.consume.quantity", "required"],
        ),
        (
            "a replacement in another unit",
            "P",
            fixed(Payload::Consume(pb::Consume {
                quantity: Some(ml(700)),
                ..cons("plant-1", EPH, "E-1", 1)
            })),
            &[],
            INVALID,
            &["correction.replacement.consume.quantity.unit"],
        ),
        (
            "a replacement consume without a purpose",
            "P",
            fixed(Payload::Consume(pb::Consume {
                purpose: String::new(),
                ..cons("plant-1", EPH, "E-1", 700)
            })),
            &[],
            INVALID,
            &["correction.replacement.consume.purpose", "required"],
        ),
        (
            "a consume corrected beyond the book stock",
            "P",
            fixed(consume("plant-1", EPH, "E-1", 10_801)),
            &[],
            FP,
            &["correction.replacement", "exceeds book stock 10000"],
        ),
        (
            "a correction signed by an inspector",
            "I4403",
            fixed(consume("plant-1", EPH, "E-1", 700)),
            &[],
            DENIED,
            &["body.signer", "ROLE_INSPECTOR", "`correction`"],
        ),
    ];
    cases.push((
        "a destroy replacement without a method",
        "P",
        correction(
            &burnt,
            Some(Payload::Destroy(pb::Destroy {
                method: String::new(),
                ..dest("plant-1", EPH, "E-1", 700)
            })),
        ),
        &["I4403"],
        INVALID,
        &["correction.replacement.destroy.method", "required"],
    ));
    cases.push((
        "a destroy replacement without an application reference",
        "P",
        correction(
            &burnt,
            Some(Payload::Destroy(pb::Destroy {
                application_ref: " ".into(),
                ..dest("plant-1", EPH, "E-1", 700)
            })),
        ),
        &["I4403"],
        INVALID,
        &["correction.replacement.destroy.application_ref", "required"],
    ));
    cases.push((
        "a loss restated as a theft without a police report",
        "P",
        correction(
            &gone,
            Some(loss("plant-1", EPH, "E-1", 400, LossKind::Theft, "")),
        ),
        &[],
        INVALID,
        &["police_report_ref", "theft"],
    ));
    cases.push((
        "a loss restated without a kind",
        "P",
        correction(
            &gone,
            Some(loss("plant-1", EPH, "E-1", 400, LossKind::Unspecified, "X")),
        ),
        &[],
        INVALID,
        &["loss_report.kind"],
    ));
    h.refuse_all(cases).await;
    // Exactly the whole book stock: allowed.
    h.ok(
        "P",
        correction(&used, Some(consume("plant-1", EPH, "E-1", 10_800))),
        &[],
    )
    .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 0);

    // A produce whose goods have gone cannot be voided or cut below what is left.
    let made2 = h.produce("P", "plant-2", EPH, "E-2", 1_000, &[]).await;
    h.ok("P", consume("plant-2", EPH, "E-2", 600), &[]).await;
    let cases: Vec<Case> = vec![
        (
            "voiding a produce whose goods were used",
            "P",
            correction(&made2, None),
            &[],
            FP,
            &["correction.replacement", "exceeds book stock 400"],
        ),
        (
            "cutting a produce below what was used",
            "P",
            correction(&made2, Some(produce("plant-2", EPH, "E-2", 599))),
            &[],
            FP,
            &["correction.replacement", "exceeds book stock 400"],
        ),
    ];
    h.refuse_all(cases).await;
    h.ok(
        "P",
        correction(&made2, Some(produce("plant-2", EPH, "E-2", 600))),
        &[],
    )
    .await;
    assert_eq!(h.bal("P", "plant-2", EPH, "E-2"), 0);
    assert_eq!(h.site_totals("P", "plant-2", EPH).balance(), 0);
    assert_eq!(h.site_totals("P", "plant-1", EPH).balance(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_accepts_a_counts_variance_into_the_books_once() {
    let mut h = H::start().await;
    h.produce("P", "plant-1", EPH, "E-1", 10_000, &[]).await;
    h.produce("P", "plant-1", ACE, "A-1", 5_000, &[]).await;
    let short = h
        .ok("P", counts("plant-1", &[(EPH, "E-1", 9_500)]), &[])
        .await;
    assert_eq!(
        h.bal("P", "plant-1", EPH, "E-1"),
        10_000,
        "a count moves nothing"
    );
    let acc = h.ok("P", correction(&short, None), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 9_500);
    assert_eq!(
        h.totals("P", "plant-1", EPH, "E-1").get(Term::AdjustedOut),
        500
    );
    assert_eq!(
        h.last_event("P", "plant-1", EPH, "E-1"),
        (
            acc.index,
            Event::Correct {
                term: Term::AdjustedOut,
                corrects: short.index,
                delta: 500
            }
        )
    );
    assert_eq!(h.counted(&short).accepted_by, Some(acc.index));
    assert_eq!(h.site_totals("P", "plant-1", EPH).balance(), 9_500);
    let msg = h
        .refuse(
            "accepting the same count twice",
            "P",
            correction(&short, None),
            &[],
            Code::AlreadyExists,
            &["correction.corrects", "were accepted by entry"],
        )
        .await;
    assert!(msg.contains(&acc.index.to_string()), "{msg}");
    // A surplus.
    let over = h
        .ok("P", counts("plant-1", &[(ACE, "A-1", 5_200)]), &[])
        .await;
    h.ok("P", correction(&over, None), &[]).await;
    assert_eq!(h.bal("P", "plant-1", ACE, "A-1"), 5_200);
    assert_eq!(
        h.totals("P", "plant-1", ACE, "A-1").get(Term::AdjustedIn),
        200
    );
    // A count that agrees with the book, a count with a replacement, someone else's count.
    let agrees = h
        .ok("P", counts("plant-1", &[(EPH, "E-1", 9_500)]), &[])
        .await;
    let cases: Vec<Case> = vec![
        (
            "a count without a variance",
            "P",
            correction(&agrees, None),
            &[],
            FP,
            &["correction.corrects", "no variance"],
        ),
        (
            "a count corrected with a replacement",
            "P",
            correction(&short, Some(counts("plant-1", &[(EPH, "E-1", 9_400)]))),
            &[],
            INVALID,
            &["correction.replacement", "is a count"],
        ),
        (
            "a count corrected with a replacement movement",
            "P",
            correction(&agrees, Some(consume("plant-1", EPH, "E-1", 1))),
            &[],
            INVALID,
            &["correction.replacement", "is a count"],
        ),
        (
            "another enterprise accepting the producer's count",
            "B",
            correction(&over, None),
            &[],
            FP,
            &["correction.corrects"],
        ),
    ];
    h.refuse_all(cases).await;
    // An inspector's count is accepted by the enterprise it counted.
    let p = h.code("P");
    let ins = h
        .ok(
            "I4403",
            Payload::Inspection(inspection(&p, "plant-1", &[(EPH, "E-1", 9_000)])),
            &[],
        )
        .await;
    h.ok("P", correction(&ins, None), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 9_000);
    assert_eq!(
        h.totals("P", "plant-1", EPH, "E-1").get(Term::AdjustedOut),
        1_000
    );
    // A shortfall no longer in the books cannot be accepted.
    let zero = h.ok("P", counts("plant-1", &[(EPH, "E-1", 0)]), &[]).await;
    h.ok("P", consume("plant-1", EPH, "E-1", 1_000), &[]).await;
    h.refuse(
        "a stale shortfall larger than the book",
        "P",
        correction(&zero, None),
        &[],
        FP,
        &["correction.corrects", "exceeds book stock 8000"],
    )
    .await;
    // Two substances with variances in one count: each lot adjusted.
    let both = h
        .ok(
            "P",
            counts("plant-1", &[(EPH, "E-1", 7_900), (ACE, "A-1", 5_100)]),
            &[],
        )
        .await;
    h.ok("P", correction(&both, None), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 7_900);
    assert_eq!(h.bal("P", "plant-1", ACE, "A-1"), 5_100);
    assert_eq!(h.site_totals("P", "plant-1", EPH).balance(), 7_900);
    assert_eq!(h.site_totals("P", "plant-1", ACE).balance(), 5_100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_is_restated_by_a_replacement_receive_of_the_same_shipment_site_and_lot() {
    let mut h = H::start().await;
    h.produce("P", "plant-1", EPH, "E-1", 10_000, &[]).await;
    let sh = h
        .ship("P", "plant-1", EPH, "E-1", 2_000, "B", "wh-1", "", &[])
        .await;
    let other = h
        .ship("P", "plant-1", EPH, "E-1", 1_000, "B", "wh-1", "", &[])
        .await;
    let got = h.ok("B", receive(&sh, "wh-1", 1_900), &[]).await;
    h.ok("B", receive(&other, "wh-1", 1_000), &[]).await;
    let permits = h.shipment(&sh).permits;
    assert_eq!(permits.len(), 2, "a purchase permit and a transport permit");
    for &p in &permits {
        assert_eq!(h.permit(p).received, 1_900);
    }
    let fix = h
        .ok(
            "B",
            correction(&got, Some(receive(&sh, "wh-1", 1_950))),
            &[],
        )
        .await;
    assert_eq!(h.bal("B", "wh-1", EPH, "E-1"), 2_950);
    let rv = h.shipment(&sh).received.expect("received");
    assert_eq!(
        (rv.quantity, rv.corrected_by.clone()),
        (1_950, vec![fix.index])
    );
    for &p in &permits {
        assert_eq!(
            h.permit(p).received,
            1_950,
            "permit {p} learns the corrected receipt"
        );
    }
    assert_eq!(
        h.last_event("B", "wh-1", EPH, "E-1"),
        (
            fix.index,
            Event::Correct {
                term: Term::Received,
                corrects: got.index,
                delta: 50
            }
        )
    );
    // The full shipment may be restated; the shipper's books do not move.
    h.ok(
        "B",
        correction(&got, Some(receive(&sh, "wh-1", 2_000))),
        &[],
    )
    .await;
    assert_eq!(h.bal("B", "wh-1", EPH, "E-1"), 3_000);
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 7_000);
    assert_eq!(h.shipment(&sh).received.map(|r| r.quantity), Some(2_000));

    let recv = |amount: u64, site: &str, lot: &str| {
        Payload::Receive(pb::Receive {
            ship: ship_ref(&sh),
            site_id: site.into(),
            quantity: Some(mg(amount)),
            lot: lot.into(),
        })
    };
    let cases: Vec<Case> = vec![
        (
            "more than was shipped",
            "B",
            correction(&got, Some(recv(2_001, "wh-1", ""))),
            &[],
            FP,
            &[
                "correction.replacement.receive.quantity.amount",
                "exceeds the 2000 shipped",
            ],
        ),
        (
            "nothing received (a receipt is not voided)",
            "B",
            correction(&got, Some(recv(0, "wh-1", ""))),
            &[],
            INVALID,
            &["correction.replacement.receive.quantity.amount"],
        ),
        (
            "another site",
            "B",
            correction(&got, Some(recv(1_000, "wh-2", ""))),
            &[],
            INVALID,
            &[
                "correction.replacement",
                "keeps its site `wh-1` and lot `E-1`",
            ],
        ),
        (
            "another lot",
            "B",
            correction(&got, Some(recv(1_000, "wh-1", "B-LOT"))),
            &[],
            INVALID,
            &[
                "correction.replacement",
                "keeps its site `wh-1` and lot `E-1`",
            ],
        ),
        (
            "a replacement citing another shipment",
            "B",
            correction(&got, Some(receive(&other, "wh-1", 900))),
            &[],
            FP,
            &["correction.corrects"],
        ),
        (
            "a replacement citing no shipment",
            "B",
            correction(
                &got,
                Some(Payload::Receive(pb::Receive {
                    ship: None,
                    ..Default::default()
                })),
            ),
            &[],
            INVALID,
            &["correction.replacement.receive.ship", "required"],
        ),
        (
            "a receipt voided by an empty replacement",
            "B",
            correction(&got, None),
            &[],
            FP,
            &["correction.corrects"],
        ),
        (
            "a receipt restated as a consume",
            "B",
            correction(&got, Some(consume("wh-1", EPH, "E-1", 1))),
            &[],
            FP,
            &["correction.corrects"],
        ),
        (
            "the shipper restating the buyer's receipt",
            "P",
            correction(&got, Some(recv(1_000, "wh-1", ""))),
            &[],
            FP,
            &["correction.corrects"],
        ),
    ];
    h.refuse_all(cases).await;
    // A receipt taken into a lot of the receiver's own is restated in that lot.
    let third = h
        .ship("P", "plant-1", EPH, "E-1", 500, "B", "wh-1", "", &[])
        .await;
    let relot = h
        .ok(
            "B",
            Payload::Receive(pb::Receive {
                ship: ship_ref(&third),
                site_id: "wh-1".into(),
                quantity: Some(mg(400)),
                lot: "B-7".into(),
            }),
            &[],
        )
        .await;
    let restate = |lot: &str, q: u64| {
        correction(
            &relot,
            Some(Payload::Receive(pb::Receive {
                ship: ship_ref(&third),
                site_id: "wh-1".into(),
                quantity: Some(mg(q)),
                lot: lot.into(),
            })),
        )
    };
    h.refuse(
        "a re-lotted receipt restated in the shipped lot",
        "B",
        restate("", 450),
        &[],
        INVALID,
        &[
            "correction.replacement",
            "keeps its site `wh-1` and lot `B-7`",
        ],
    )
    .await;
    h.ok("B", restate("B-7", 450), &[]).await;
    assert_eq!(h.bal("B", "wh-1", EPH, "B-7"), 450);
    assert_eq!(h.bal("B", "wh-1", EPH, "E-1"), 3_000);
    // A receipt cut below what is left after a destruction drives stock negative.
    h.ok("B", destroy("wh-1", EPH, "E-1", 2_800), &["I4403"])
        .await;
    h.refuse(
        "a receipt restated below what is left",
        "B",
        correction(&got, Some(recv(1_000, "wh-1", ""))),
        &[],
        FP,
        &[
            "correction.replacement.receive.quantity.amount",
            "exceeds book stock 200",
        ],
    )
    .await;
    h.ok("B", correction(&got, Some(recv(1_800, "wh-1", ""))), &[])
        .await;
    assert_eq!(h.bal("B", "wh-1", EPH, "E-1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipments_regulator_records_legs_corrections_and_other_enterprises_entries_are_not_corrected(
) {
    let mut h = H::start().await;
    let made = h.produce("P", "plant-1", EPH, "E-1", 10_000, &[]).await;
    let sh = h
        .ship("P", "plant-1", EPH, "E-1", 2_000, "B", "wh-1", "C", &[])
        .await;
    let pickup = h
        .ok("C", leg(&sh, LegKind::Pickup, &["S-1"], ""), &[])
        .await;
    let got = h.ok("B", receive(&sh, "wh-1", 2_000), &[]).await;
    let burnt = h
        .ok("B", destroy("wh-1", EPH, "E-1", 100), &["I4403"])
        .await;
    let count = h
        .ok("P", counts("plant-1", &[(EPH, "E-1", 7_000)]), &[])
        .await;
    let fixed = h
        .ok(
            "P",
            correction(&made, Some(produce("plant-1", EPH, "E-1", 10_100))),
            &[],
        )
        .await;
    let enrol = h
        .reg_ok(enrol(
            &code("91440300MA5CU0010"),
            "440305",
            vec![licence(Precursor3, &[Pur])],
            &["z-1"],
        ))
        .await;
    let ship_again = h
        .ship_payload("P", "plant-1", EPH, "E-1", 1_500, "B", "wh-1", "C")
        .await;
    let cases: Vec<Case> = vec![
        (
            "a shipment",
            "P",
            correction(&sh, None),
            &[],
            FP,
            &["correction.corrects", "is not a produce, consume"],
        ),
        (
            "a shipment restated",
            "P",
            correction(&sh, Some(ship_again)),
            &[],
            FP,
            &["correction.corrects"],
        ),
        (
            "a regulator's enrolment",
            "P",
            correction(&enrol, None),
            &[],
            FP,
            &["correction.corrects"],
        ),
        (
            "a carrier's transport leg",
            "C",
            correction(&pickup, None),
            &[],
            FP,
            &["correction.corrects"],
        ),
        (
            "a correction",
            "P",
            correction(&fixed, Some(produce("plant-1", EPH, "E-1", 10_200))),
            &[],
            FP,
            &["correction.corrects"],
        ),
        (
            "another enterprise's produce",
            "B",
            correction(&made, Some(produce("plant-1", EPH, "E-1", 1))),
            &[],
            FP,
            &["correction.corrects"],
        ),
        (
            "another enterprise's destruction",
            "P",
            correction(&burnt, None),
            &["I4403"],
            FP,
            &["correction.corrects"],
        ),
        (
            "another enterprise's count",
            "B",
            correction(&count, None),
            &[],
            FP,
            &["correction.corrects"],
        ),
        (
            "another enterprise's receipt",
            "P",
            correction(&got, Some(receive(&sh, "wh-1", 1_000))),
            &[],
            FP,
            &["correction.corrects"],
        ),
        (
            "a shipment cited by the receiver with a replacement receive",
            "B",
            correction(&sh, Some(receive(&sh, "wh-1", 1_000))),
            &[],
            FP,
            &["correction.corrects"],
        ),
    ];
    h.refuse_all(cases).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 8_100);
    assert_eq!(h.bal("B", "wh-1", EPH, "E-1"), 1_900);
}

// ---------------------------------------------------------------------------------------------
// 7. Two-person control (双人双锁)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narcotics_and_class_one_psychotropics_move_only_with_a_second_person_of_the_enterprise() {
    let mut h = H::start().await;
    let mk = produce("m-1", MOR, "MOR-1", 50_000);
    let cases: Vec<Case> = vec![
        (
            "a narcotic produced by one person",
            "M",
            mk.clone(),
            &[],
            DENIED,
            &[
                "record.cosignatures",
                "`produce` of 57-27-2 (CATEGORY_NARCOTIC)",
                "two-person control",
                "`alice`",
            ],
        ),
        (
            "co-signed by a second key of the same holder",
            "M",
            mk.clone(),
            &["M1b"],
            DENIED,
            &["record.cosignatures", "two-person control"],
        ),
        (
            "signed by the second key of the same holder, co-signed by the first",
            "M1b",
            mk.clone(),
            &["M"],
            DENIED,
            &["record.cosignatures", "two-person control"],
        ),
        (
            "co-signed by a person of another enterprise",
            "M",
            mk.clone(),
            &["HO"],
            DENIED,
            &["record.cosignatures", "two-person control"],
        ),
        (
            "co-signed by an inspector",
            "M",
            mk.clone(),
            &["I4403"],
            DENIED,
            &["record.cosignatures", "two-person control"],
        ),
        (
            "a class I psychotropic produced by one person",
            "M",
            produce("m-1", KET, "KET-1", 1_000),
            &[],
            DENIED,
            &[
                "record.cosignatures",
                "CATEGORY_PSYCHOTROPIC_1",
                "two-person control",
            ],
        ),
    ];
    h.refuse_all(cases).await;
    // The second person may sign or co-sign; the first person's other key beside them is fine.
    h.ok("M", mk, &["M1b", "M2"]).await;
    h.produce("M2", "m-1", KET, "KET-1", 1_000, &["M"]).await;
    assert_eq!(h.bal("M", "m-1", MOR, "MOR-1"), 50_000);
    assert_eq!(h.bal("M", "m-1", KET, "KET-1"), 1_000);
    // Class II psychotropics and precursors are not under the control.
    h.produce("M", "m-1", DIA, "DIA-1", 1_000, &[]).await;
    h.produce("M", "m-1", EPH, "EPH-1", 1_000, &[]).await;
    h.ok("M", consume("m-1", EPH, "EPH-1", 10), &[]).await;

    // Ship (with the hospital's seal card), receive, consume, destroy.
    let p = h
        .ship_payload("M", "m-1", MOR, "MOR-1", 10_000, "HO", "ho-1", "")
        .await;
    let cases: Vec<Case> = vec![
        (
            "a narcotic shipped by one person",
            "M",
            p.clone(),
            &[],
            DENIED,
            &["record.cosignatures", "`ship`", "two-person control"],
        ),
        (
            "a narcotic shipped under one holder's two keys",
            "M",
            p.clone(),
            &["M1b"],
            DENIED,
            &["record.cosignatures", "two-person control"],
        ),
    ];
    h.refuse_all(cases).await;
    let sh = h.ok("M", p, &["M2"]).await;
    assert_eq!(h.bal("M", "m-1", MOR, "MOR-1"), 40_000);
    let cases: Vec<Case> = vec![
        (
            "a narcotic received by one person",
            "HO",
            receive(&sh, "ho-1", 10_000),
            &[],
            DENIED,
            &[
                "record.cosignatures",
                "`receive`",
                "two-person control",
                "`carol`",
            ],
        ),
        (
            "a receipt co-signed by the seller's second person",
            "HO",
            receive(&sh, "ho-1", 10_000),
            &["M2"],
            DENIED,
            &["record.cosignatures", "two-person control"],
        ),
    ];
    h.refuse_all(cases).await;
    let got = h.ok("HO", receive(&sh, "ho-1", 10_000), &["HO2"]).await;
    assert_eq!(h.bal("HO", "ho-1", MOR, "MOR-1"), 10_000);
    h.refuse(
        "a narcotic dispensed by one person",
        "HO",
        consume("ho-1", MOR, "MOR-1", 3_000),
        &[],
        DENIED,
        &["record.cosignatures", "`consume`", "two-person control"],
    )
    .await;
    let used = h
        .ok("HO", consume("ho-1", MOR, "MOR-1", 3_000), &["HO2"])
        .await;
    let cases: Vec<Case> = vec![
        (
            "a narcotic destroyed with an inspector but one person of the hospital",
            "HO",
            destroy("ho-1", MOR, "MOR-1", 1_000),
            &["I4403"],
            DENIED,
            &["record.cosignatures", "`destroy`", "two-person control"],
        ),
        (
            "a narcotic destroyed by two people of the hospital without an inspector",
            "HO",
            destroy("ho-1", MOR, "MOR-1", 1_000),
            &["HO2"],
            DENIED,
            &["record.cosignatures", "inspector"],
        ),
    ];
    h.refuse_all(cases).await;
    h.ok(
        "HO",
        destroy("ho-1", MOR, "MOR-1", 1_000),
        &["I4403", "HO2"],
    )
    .await;
    assert_eq!(h.bal("HO", "ho-1", MOR, "MOR-1"), 6_000);
    // Counting moves nothing and needs one person.
    h.ok("HO", counts("ho-1", &[(MOR, "MOR-1", 6_000)]), &[])
        .await;

    // Corrections of the stock-in and stock-out are under the same control.
    let cases: Vec<Case> = vec![
        (
            "a narcotic dispensation corrected by one person",
            "HO",
            correction(&used, Some(consume("ho-1", MOR, "MOR-1", 2_000))),
            &[],
            DENIED,
            &["record.cosignatures", "`correction`", "two-person control"],
        ),
        (
            "a narcotic receipt corrected by one person",
            "HO",
            correction(&got, Some(receive(&sh, "ho-1", 9_000))),
            &[],
            DENIED,
            &["record.cosignatures", "`correction`", "two-person control"],
        ),
    ];
    h.refuse_all(cases).await;
    h.ok(
        "HO",
        correction(&used, Some(consume("ho-1", MOR, "MOR-1", 2_000))),
        &["HO2"],
    )
    .await;
    h.ok(
        "HO",
        correction(&got, Some(receive(&sh, "ho-1", 9_500))),
        &["HO2"],
    )
    .await;
    assert_eq!(h.bal("HO", "ho-1", MOR, "MOR-1"), 6_500);

    let made = h.produce("M", "m-1", MOR, "MOR-3", 1_000, &["M2"]).await;
    let fix = correction(&made, Some(produce("m-1", MOR, "MOR-3", 900)));
    h.refuse(
        "a narcotic production corrected by one person",
        "M",
        fix.clone(),
        &[],
        DENIED,
        &["record.cosignatures", "`correction`", "two-person control"],
    )
    .await;
    h.refuse(
        "a narcotic production corrected under one holder's two keys",
        "M",
        fix.clone(),
        &["M1b"],
        DENIED,
        &["record.cosignatures", "two-person control"],
    )
    .await;
    h.ok("M", fix, &["M2"]).await;
    assert_eq!(h.bal("M", "m-1", MOR, "MOR-3"), 900);

    // A revoked second key is no second person.
    let m3 = key_id(&h.key("M3"));
    h.reg_ok(Payload::RevokeKey(pb::RevokeKey {
        key_id: m3.0.to_vec(),
        reason: "left the company".into(),
    }))
    .await;
    h.refuse(
        "a narcotic produced with a revoked second key",
        "M",
        produce("m-1", MOR, "MOR-2", 1),
        &["M3"],
        DENIED,
        &["record.cosignatures[0].key_id", "revoked"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narcotic_imports_and_exports_need_two_people_and_are_not_corrected() {
    let mut h = H::start().await;
    let m = h.code("M");
    let mut il = permit(
        "IL-1",
        pb::PermitType::ImportLicence,
        &m,
        MOR,
        10_000,
        false,
    );
    il.counterparty = "Pharma GmbH".into();
    let il = h.w.issue(&mut h.c, il).await.expect("import licence");
    let mut el = permit(
        "EL-1",
        pb::PermitType::ExportLicence,
        &m,
        MOR,
        10_000,
        false,
    );
    el.counterparty = "UK Importer Ltd".into();
    let el = h.w.issue(&mut h.c, el).await.expect("export licence");
    let imp = Payload::Import(pb::Import {
        site_id: "m-1".into(),
        substance: MOR.into(),
        lot: "MOR-IMP".into(),
        quantity: Some(mg(4_000)),
        licence: Some(receipt_ref(&il)),
        country: "DE".into(),
        exporter: "Pharma GmbH".into(),
    });
    h.refuse(
        "a narcotic imported by one person",
        "M",
        imp.clone(),
        &[],
        DENIED,
        &["record.cosignatures", "`import`", "two-person control"],
    )
    .await;
    h.refuse(
        "a narcotic imported under one holder's two keys",
        "M",
        imp.clone(),
        &["M1b"],
        DENIED,
        &["record.cosignatures", "two-person control"],
    )
    .await;
    let imported = h.ok("M", imp, &["M2"]).await;
    assert_eq!(h.bal("M", "m-1", MOR, "MOR-IMP"), 4_000);
    assert_eq!(
        h.totals("M", "m-1", MOR, "MOR-IMP").get(Term::Imported),
        4_000
    );
    let exp = Payload::Export(pb::Export {
        site_id: "m-1".into(),
        substance: MOR.into(),
        lot: "MOR-IMP".into(),
        quantity: Some(mg(1_000)),
        licence: Some(receipt_ref(&el)),
        country: "GB".into(),
        importer: "UK Importer Ltd".into(),
        pen_reference: "PEN-2024-1".into(),
    });
    h.refuse(
        "a narcotic exported by one person",
        "M",
        exp.clone(),
        &[],
        DENIED,
        &["record.cosignatures", "`export`", "two-person control"],
    )
    .await;
    let exported = h.ok("M", exp, &["M2"]).await;
    assert_eq!(h.bal("M", "m-1", MOR, "MOR-IMP"), 3_000);
    let cases: Vec<Case> = vec![
        (
            "an import",
            "M",
            correction(&imported, None),
            &["M2"],
            FP,
            &["correction.corrects", "imports"],
        ),
        (
            "an export",
            "M",
            correction(&exported, None),
            &["M2"],
            FP,
            &["correction.corrects", "exports"],
        ),
    ];
    h.refuse_all(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_two_person_policy_one_person_moves_narcotics() {
    let mut h = H::with(Server::start_single_person().await).await;
    h.produce("M", "m-1", MOR, "MOR-1", 1_000, &[]).await;
    h.ok("M", consume("m-1", MOR, "MOR-1", 100), &[]).await;
    assert_eq!(h.bal("M", "m-1", MOR, "MOR-1"), 900);
    // The inspector's witness is a rule of its own, not part of the policy.
    h.refuse(
        "a destruction without an inspector",
        "M",
        destroy("m-1", MOR, "MOR-1", 100),
        &[],
        DENIED,
        &["record.cosignatures", "inspector"],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. Refusals inside a group, and the books' own consistency
// ---------------------------------------------------------------------------------------------

/// The writer admits a batch as one group over one overlay of the views; a record refused
/// halfway through its rule must leave nothing behind for the records after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_refused_inside_a_batch_leaves_the_loss_report_as_it_was() {
    let mut h = H::start().await;
    h.produce("P", "plant-1", EPH, "E-1", 1_000, &[]).await;
    let gone = h
        .ok(
            "P",
            loss("plant-1", EPH, "E-1", 500, LossKind::Theft, "PSB-1"),
            &[],
        )
        .await;
    // Restating the theft as a larger robbery would drive the lot below zero: refused, but only
    // after the loss particulars were read.
    let bad = h.record(
        "P",
        correction(
            &gone,
            Some(loss(
                "plant-1",
                EPH,
                "E-1",
                2_000,
                LossKind::Robbery,
                "PSB-2",
            )),
        ),
        &[],
    );
    let good = h.record("B", counts("wh-1", &[(EPH, "E-1", 0)]), &[]);
    let results =
        h.c.submit_batch(pb::SubmitBatchRequest {
            records: vec![bad, good.clone()],
        })
        .await
        .expect("batch answered")
        .into_inner()
        .results;
    match &results[0].result {
        Some(pb::submit_result::Result::Refusal(e)) => {
            assert_eq!(e.code, Code::FailedPrecondition as i32, "{e:?}");
            assert!(e.message.contains("exceeds book stock 500"), "{e:?}");
        }
        other => panic!("the over-large correction was not refused: {other:?}"),
    }
    assert!(
        matches!(
            results[1].result,
            Some(pb::submit_result::Result::Receipt(_))
        ),
        "{:?}",
        results[1]
    );
    advance(h.signer_mut("B"), &good);
    let lv = h.loss_view("P", &gone);
    assert_eq!(
        (lv.kind, lv.police_report_ref.as_str(), lv.quantity),
        (LossKind::Theft as i32, "PSB-1", 500),
        "a refused correction changed the loss report"
    );
    let po = h.posted(&gone);
    assert_eq!((po.quantity, po.corrected_by.len()), (500, 0));
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 500);
}

/// Records of one group see each other: two consumes that fit the book one by one, not
/// together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumes_in_one_batch_cannot_together_exceed_the_book() {
    let mut h = H::start().await;
    h.produce("P", "plant-1", EPH, "E-1", 1_000, &[]).await;
    let first = h.record("P", consume("plant-1", EPH, "E-1", 600), &[]);
    let mut next = RecordSigner::new(h.key("P"), ORIGIN);
    next = next.resume(h.signer("P").next_seq() + 1, crypto::body_hash(&first.body));
    let second = cosigned(&next, consume("plant-1", EPH, "E-1", 600), &[]);
    let results =
        h.c.submit_batch(pb::SubmitBatchRequest {
            records: vec![first.clone(), second],
        })
        .await
        .expect("batch answered")
        .into_inner()
        .results;
    assert!(
        matches!(
            results[0].result,
            Some(pb::submit_result::Result::Receipt(_))
        ),
        "{:?}",
        results[0]
    );
    match &results[1].result {
        Some(pb::submit_result::Result::Refusal(e)) => {
            assert_eq!(e.code, Code::FailedPrecondition as i32, "{e:?}");
            assert!(
                e.message.contains("consume.quantity.amount")
                    && e.message.contains("exceeds book stock 400"),
                "{e:?}"
            );
        }
        other => panic!("the second consume was not refused: {other:?}"),
    }
    advance(h.signer_mut("P"), &first);
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 400);
    assert_eq!(h.site_totals("P", "plant-1", EPH).balance(), 400);
    h.ok("P", consume("plant-1", EPH, "E-1", 400), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepting_variances_of_two_lots_of_one_substance_keeps_the_site_total_the_sum_of_its_lots()
{
    let mut h = H::start().await;
    h.produce("P", "plant-1", EPH, "E-1", 10_000, &[]).await;
    h.produce("P", "plant-1", EPH, "E-2", 10_000, &[]).await;
    let count = h
        .ok(
            "P",
            counts("plant-1", &[(EPH, "E-1", 9_000), (EPH, "E-2", 9_500)]),
            &[],
        )
        .await;
    h.ok("P", correction(&count, None), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 9_000);
    assert_eq!(h.bal("P", "plant-1", EPH, "E-2"), 9_500);
    let site = h.site_totals("P", "plant-1", EPH);
    assert_eq!(
        (site.balance(), site.get(Term::AdjustedOut)),
        (18_500, 1_500),
        "the site × substance totals lost one lot's adjustment"
    );
    let js = h.stock_journal("P", "plant-1", EPH);
    assert_eq!(js.last().map(|r| r.totals.balance()), Some(18_500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narcotic_shortfall_is_written_off_only_under_two_person_control() {
    let mut h = H::start().await;
    h.produce("M", "m-1", MOR, "MOR-1", 10_000, &["M2"]).await;
    // One person counts nothing where the book says 10 g, then accepts the "variance".
    let count = h.ok("M", counts("m-1", &[(MOR, "MOR-1", 0)]), &[]).await;
    h.refuse(
        "a narcotic count shortfall accepted by one person",
        "M",
        correction(&count, None),
        &[],
        DENIED,
        &["record.cosignatures", "two-person control"],
    )
    .await;
    h.ok("M", correction(&count, None), &["M2"]).await;
    assert_eq!(h.bal("M", "m-1", MOR, "MOR-1"), 0);
}

/// A stock take and an inspection that found the same shortfall: once one is accepted the book
/// it was measured against is gone, and the other cannot take the same quantity out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shortfall_seen_by_two_counts_is_accepted_once() {
    let mut h = H::start().await;
    h.produce("P", "plant-1", EPH, "E-1", 100, &[]).await;
    let take = h.ok("P", counts("plant-1", &[(EPH, "E-1", 90)]), &[]).await;
    let producer = h.code("P");
    let insp = h
        .ok(
            "I44",
            Payload::Inspection(inspection(&producer, "plant-1", &[(EPH, "E-1", 90)])),
            &[],
        )
        .await;
    h.ok("P", correction(&insp, None), &[]).await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 90);
    h.refuse(
        "the stock take's variance after the inspection's was accepted",
        "P",
        correction(&take, None),
        &[],
        FP,
        &[
            "correction.corrects",
            "adjusted by another count",
            "count again",
        ],
    )
    .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "E-1"), 90, "90 are on the shelf");
}

/// Counts name lots of the substance counted; found goods of unknown origin are counted (the
/// surplus shows) but not booked into a lot that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_name_real_lots_and_unknown_goods_are_not_booked_by_a_correction() {
    let mut h = H::start().await;
    h.produce("P", "plant-1", EPH, "E-1", 100, &[]).await;
    h.produce("P", "plant-1", ACE, "A-1", 100, &[]).await;
    h.refuse(
        "acetone counted under an ephedrine lot",
        "P",
        counts("plant-1", &[(ACE, "E-1", 100)]),
        &[],
        INVALID,
        &["stock_take.counts[0].lot", "is 299-42-3"],
    )
    .await;
    let ghost = h
        .ok("P", counts("plant-1", &[(EPH, "GHOST", 40)]), &[])
        .await;
    h.refuse(
        "booking found goods of unknown origin",
        "P",
        correction(&ghost, None),
        &[],
        FP,
        &["correction.corrects", "GHOST", "does not exist"],
    )
    .await;
    assert_eq!(h.bal("P", "plant-1", EPH, "GHOST"), 0);
}

/// A loss of a narcotic takes it out of the books like any stock-out: two people report it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narcotic_loss_is_reported_by_two_people() {
    let mut h = H::start().await;
    h.produce("M", "m-1", MOR, "MOR-1", 1_000, &["M2"]).await;
    h.refuse(
        "a narcotic spilled, by one person",
        "M",
        loss("m-1", MOR, "MOR-1", 1_000, LossKind::Spillage, ""),
        &[],
        DENIED,
        &["record.cosignatures", "two-person control"],
    )
    .await;
    // Holders are people: alice's second key is still alice.
    h.refuse(
        "alice's second key is still alice",
        "M",
        loss("m-1", MOR, "MOR-1", 1_000, LossKind::Spillage, ""),
        &["M1b"],
        DENIED,
        &["two-person control"],
    )
    .await;
    h.ok(
        "M",
        loss("m-1", MOR, "MOR-1", 1_000, LossKind::Spillage, ""),
        &["M2"],
    )
    .await;
    assert_eq!(h.bal("M", "m-1", MOR, "MOR-1"), 0);
}

// ---------------------------------------------------------------------------------------------
// 9. Conservation and replay
// ---------------------------------------------------------------------------------------------

/// Ledger-wide sums for one substance, read from the views: every lot's totals, and every
/// shipment's quantity shipped and received.
#[derive(Debug, Default, Clone, PartialEq)]
struct Sums {
    t: [u128; 10],
    balance: i128,
    shipped: u128,
    received: u128,
}

impl Sums {
    fn get(&self, t: Term) -> u128 {
        self.t[t as usize]
    }
    fn in_transit(&self) -> u128 {
        self.shipped - self.received
    }
}

/// Sums every lot holding and shipment by substance, and checks on the way that every
/// site × substance total is exactly the sum of its lots' totals.
fn ledger_books(h: &H, what: &str) -> BTreeMap<String, Sums> {
    let views = h.views();
    let mut out: BTreeMap<String, Sums> = BTreeMap::new();
    let mut lots_by_stock: BTreeMap<Vec<u8>, Totals> = BTreeMap::new();
    for (k, _) in &views {
        // A lot holding's totals live under `b/`, or, for the lot's first holding, in its
        // lot view (`l/`).
        let holding: Option<([Vec<u8>; 3], Totals)> =
            if let Some(rest) = k.strip_prefix(b"b/".as_slice()) {
                let parts: Vec<&[u8]> = rest.split(|b| *b == 0).collect();
                assert_eq!(parts.len(), 5, "{what}: balance key {k:?}");
                let b: Book = h.server.ledger.view(k).expect("view").expect("book");
                Some(([parts[0], parts[1], parts[2]].map(<[u8]>::to_vec), b.totals))
            } else if k.starts_with(b"l/") {
                let l: taizhang::ledger::views::LotView =
                    h.server.ledger.view(k).expect("view").expect("lot");
                Some((
                    [l.created_by, l.site, l.substance].map(String::into_bytes),
                    l.book.totals,
                ))
            } else {
                None
            };
        if let Some((parts, t)) = holding {
            assert!(t.balance() >= 0, "{what}: negative book stock at {k:?}");
            let s = out
                .entry(String::from_utf8(parts[2].to_vec()).expect("utf-8"))
                .or_default();
            for (i, q) in t.0.iter().enumerate() {
                s.t[i] += q;
            }
            s.balance += t.balance();
            let stock_key = [
                b"bs/".as_slice(),
                &parts[0],
                b"\0",
                &parts[1],
                b"\0",
                &parts[2],
                b"\0",
            ]
            .concat();
            let e = lots_by_stock.entry(stock_key).or_default();
            for (i, q) in t.0.iter().enumerate() {
                e.0[i] += q;
            }
        } else if k.len() == 10 && k.starts_with(b"s/") {
            let sh: ShipmentView = h.server.ledger.view(k).expect("view").expect("shipment");
            let s = out.entry(sh.substance.clone()).or_default();
            s.shipped += u128::from(sh.quantity);
            s.received += u128::from(sh.received.map_or(0, |r| r.quantity));
        }
    }
    let stocks: Vec<&Vec<u8>> = views
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(b"bs/"))
        .collect();
    assert_eq!(
        stocks.len(),
        lots_by_stock.len(),
        "{what}: site × substance totals and lot holdings disagree on which stocks exist"
    );
    for k in stocks {
        let t = h
            .server
            .ledger
            .view::<Book>(k)
            .expect("view")
            .expect("book")
            .totals;
        assert_eq!(
            Some(&t),
            lots_by_stock.get(k),
            "{what}: site × substance totals at {} are not the sum of its lots",
            String::from_utf8_lossy(k)
        );
    }
    out
}

/// Everything that came into the books is in a lot, used, destroyed, lost, adjusted out,
/// exported, or on the road.
fn assert_conserved(books: &BTreeMap<String, Sums>, what: &str) {
    for (substance, s) in books {
        use Term::*;
        assert_eq!(s.get(Shipped), s.shipped, "{what}: {substance} shipped");
        assert_eq!(s.get(Received), s.received, "{what}: {substance} received");
        let came_in = s.get(Produced) + s.get(Imported) + s.get(AdjustedIn);
        let went_out =
            s.get(Consumed) + s.get(Destroyed) + s.get(Lost) + s.get(Exported) + s.get(AdjustedOut);
        assert_eq!(
            s.balance as u128 + went_out + s.in_transit(),
            came_in,
            "{what}: {substance}: book stock {} + out of the books {went_out} + in transit {} \
             != into the books {came_in}",
            s.balance,
            s.in_transit()
        );
    }
}

/// Expected book stock of each holding after [`custody_scenario`], and per substance the terms
/// (produced, imported, exported, consumed, destroyed, lost, adjusted out, in transit).
struct Expected {
    holdings: Vec<(&'static str, &'static str, &'static str, &'static str, u64)>,
    terms: Vec<(&'static str, [u128; 8])>,
}

/// A lot of ephedrine split three ways (one receiver short-delivered, one late), used, lost,
/// destroyed, counted and corrected; a lot of acetone still on the road; morphine made,
/// shipped, dispensed, destroyed, moved between sites, imported and exported under two-person
/// control; keys revoked and a licence withdrawn afterwards.
async fn custody_scenario(h: &mut H) -> Expected {
    use LegKind::{Delivery, Pickup};
    // Ephedrine.
    let made = h.produce("P", "plant-1", EPH, "E-1", 100_000, &[]).await;
    let s1 = h
        .ship("P", "plant-1", EPH, "E-1", 30_000, "B", "wh-1", "C", &[])
        .await;
    let s2 = h
        .ship("P", "plant-1", EPH, "E-1", 25_000, "U", "u-1", "", &[])
        .await;
    let s3 = h
        .ship("P", "plant-1", EPH, "E-1", 20_000, "R", "r-1", "C2", &[])
        .await;
    h.ok("C", leg(&s1, Pickup, &["S-1", "S-2"], ""), &[]).await;
    h.ok("C", leg(&s1, Delivery, &["S-1", "S-2"], ""), &[])
        .await;
    let rb = h.ok("B", receive(&s1, "wh-1", 30_000), &[]).await;
    h.ok("U", receive(&s2, "u-1", 24_000), &[]).await;
    let uc = h.ok("U", consume("u-1", EPH, "E-1", 10_000), &[]).await;
    h.ok(
        "U",
        correction(&uc, Some(consume("u-1", EPH, "E-1", 9_000))),
        &[],
    )
    .await;
    h.ok(
        "U",
        loss("u-1", EPH, "E-1", 500, LossKind::Spillage, ""),
        &[],
    )
    .await;
    h.ok("B", destroy("wh-1", EPH, "E-1", 2_000), &["I4403"])
        .await;
    h.ok(
        "P",
        loss("plant-1", EPH, "E-1", 1_000, LossKind::Theft, "PSB-77"),
        &[],
    )
    .await;
    h.ok(
        "P",
        correction(&made, Some(produce("plant-1", EPH, "E-1", 101_000))),
        &[],
    )
    .await;
    let count = h
        .ok("P", counts("plant-1", &[(EPH, "E-1", 24_800)]), &[])
        .await;
    h.ok("P", correction(&count, None), &[]).await;
    let u = h.code("U");
    h.ok(
        "I44",
        Payload::Inspection(inspection(&u, "u-1", &[(EPH, "E-1", 14_500)])),
        &[],
    )
    .await;
    h.ok("C2", leg(&s3, Pickup, &["S-3"], ""), &[]).await;
    h.ok("C2", leg(&s3, Delivery, &["S-4"], ""), &[]).await;
    h.ok("R", receive(&s3, "r-1", 19_000), &[]).await;
    h.ok(
        "B",
        correction(&rb, Some(receive(&s1, "wh-1", 29_500))),
        &[],
    )
    .await;
    // Acetone: a shipment never received.
    h.produce("P", "plant-2", ACE, "A-1", 5_000, &[]).await;
    h.ship("P", "plant-2", ACE, "A-1", 2_000, "U", "u-1", "", &[])
        .await;
    h.ok("P", consume("plant-2", ACE, "A-1", 1_000), &[]).await;
    // Morphine, two people at every step.
    h.produce("M", "m-1", MOR, "MOR-1", 50_000, &["M2"]).await;
    let s4 = h
        .ship("M", "m-1", MOR, "MOR-1", 10_000, "HO", "ho-1", "C", &["M2"])
        .await;
    h.ok("C", leg(&s4, Pickup, &["N-1"], ""), &[]).await;
    h.ok("C", leg(&s4, Delivery, &["N-1"], ""), &[]).await;
    h.ok("HO", receive(&s4, "ho-1", 10_000), &["HO2"]).await;
    h.ok("HO", consume("ho-1", MOR, "MOR-1", 3_000), &["HO2"])
        .await;
    h.ok(
        "HO",
        destroy("ho-1", MOR, "MOR-1", 1_000),
        &["I4403", "HO2"],
    )
    .await;
    let s5 = h
        .ship("M", "m-1", MOR, "MOR-1", 5_000, "M", "m-2", "", &["M2"])
        .await;
    h.ok("M", receive(&s5, "m-2", 5_000), &["M2"]).await;
    let m = h.code("M");
    let mut il = permit(
        "IL-9",
        pb::PermitType::ImportLicence,
        &m,
        MOR,
        10_000,
        false,
    );
    il.counterparty = "Pharma GmbH".into();
    let il = h.w.issue(&mut h.c, il).await.expect("import licence");
    let mut el = permit(
        "EL-9",
        pb::PermitType::ExportLicence,
        &m,
        MOR,
        10_000,
        false,
    );
    el.counterparty = "UK Importer Ltd".into();
    let el = h.w.issue(&mut h.c, el).await.expect("export licence");
    h.ok(
        "M",
        Payload::Import(pb::Import {
            site_id: "m-1".into(),
            substance: MOR.into(),
            lot: "MOR-IMP".into(),
            quantity: Some(mg(4_000)),
            licence: Some(receipt_ref(&il)),
            country: "DE".into(),
            exporter: "Pharma GmbH".into(),
        }),
        &["M2"],
    )
    .await;
    h.ok(
        "M",
        Payload::Export(pb::Export {
            site_id: "m-2".into(),
            substance: MOR.into(),
            lot: "MOR-1".into(),
            quantity: Some(mg(2_000)),
            licence: Some(receipt_ref(&el)),
            country: "GB".into(),
            importer: "UK Importer Ltd".into(),
            pen_reference: "PEN-9".into(),
        }),
        &["M2"],
    )
    .await;
    // Afterwards: the inspector and the second person leave, the user loses its USE licence.
    // History stays valid (replay must not re-judge it by today's keys and licences).
    for k in ["I4403", "M2"] {
        let id = key_id(&h.key(k));
        h.reg_ok(Payload::RevokeKey(pb::RevokeKey {
            key_id: id.0.to_vec(),
            reason: "left".into(),
        }))
        .await;
    }
    h.reg_ok(enrol(
        &u,
        "440305",
        vec![licence(Precursor1, &[Pur]), licence(Precursor3, &[Pur])],
        &["u-1"],
    ))
    .await;
    h.refuse(
        "a consume after the USE licence was withdrawn",
        "U",
        consume("u-1", EPH, "E-1", 1),
        &[],
        FP,
        &["licence", "USE"],
    )
    .await;
    Expected {
        holdings: vec![
            ("P", "plant-1", EPH, "E-1", 24_800),
            ("B", "wh-1", EPH, "E-1", 27_500),
            ("U", "u-1", EPH, "E-1", 14_500),
            ("R", "r-1", EPH, "E-1", 19_000),
            ("P", "plant-2", ACE, "A-1", 2_000),
            ("U", "u-1", ACE, "A-1", 0),
            ("M", "m-1", MOR, "MOR-1", 35_000),
            ("M", "m-1", MOR, "MOR-IMP", 4_000),
            ("M", "m-2", MOR, "MOR-1", 3_000),
            ("HO", "ho-1", MOR, "MOR-1", 6_000),
        ],
        // produced, imported, exported, consumed, destroyed, lost, adjusted out, in transit
        terms: vec![
            (EPH, [101_000, 0, 0, 9_000, 2_000, 1_500, 200, 2_500]),
            (ACE, [5_000, 0, 0, 1_000, 0, 0, 0, 2_000]),
            (MOR, [50_000, 4_000, 2_000, 3_000, 1_000, 0, 0, 0]),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lot_split_three_ways_is_conserved_through_use_loss_destruction_and_correction() {
    let mut h = H::start().await;
    let want = custody_scenario(&mut h).await;
    for (who, site, substance, lot, q) in &want.holdings {
        assert_eq!(h.bal(who, site, substance, lot), *q, "{who} {site} {lot}");
        assert_eq!(
            h.site_totals(who, site, substance).balance(),
            want.holdings
                .iter()
                .filter(|x| (x.0, x.1, x.2) == (*who, *site, *substance))
                .map(|x| i128::from(x.4))
                .sum::<i128>(),
            "{who} {site} {substance}: site total"
        );
    }
    let books = ledger_books(&h, "after the scenario");
    assert_conserved(&books, "after the scenario");
    for (substance, [produced, imported, exported, consumed, destroyed, lost, adj_out, transit]) in
        &want.terms
    {
        let s = &books[*substance];
        use Term::*;
        assert_eq!(
            [
                s.get(Produced),
                s.get(Imported),
                s.get(Exported),
                s.get(Consumed),
                s.get(Destroyed),
                s.get(Lost),
                s.get(AdjustedOut),
                s.in_transit()
            ],
            [*produced, *imported, *exported, *consumed, *destroyed, *lost, *adj_out, *transit],
            "{substance}: produced, imported, exported, consumed, destroyed, lost, adjusted \
             out, in transit"
        );
        assert_eq!(s.get(AdjustedIn), 0);
        let held: u64 = want
            .holdings
            .iter()
            .filter(|x| x.2 == *substance)
            .map(|x| x.4)
            .sum();
        assert_eq!(
            s.balance,
            i128::from(held),
            "{substance}: sum of lot balances"
        );
    }
    assert_eq!(books.len(), 3, "only the scenario's substances have books");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_custody_log_rebuilds_the_same_views() {
    let mut h = H::start().await;
    let want = custody_scenario(&mut h).await;
    let views = h.views();
    let size = h.server.ledger.size();
    let H { server, c, .. } = h;
    drop(c);
    let dir = server.dir.clone();
    server.ledger.close().await;
    let _tmp = server.stop().await;
    let report = taizhang::ledger::reindex(config(&dir)).expect("reindex");
    assert_eq!((report.entries, report.replayed), (size, size));
    let (l, _) = taizhang::ledger::Ledger::open(config(&dir)).expect("reopens");
    let again = l.dump_views().expect("views");
    if again != views {
        let a: BTreeMap<_, _> = views.into_iter().collect();
        let b: BTreeMap<_, _> = again.into_iter().collect();
        let differ: Vec<String> = a
            .keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        panic!("replay rebuilt different views at {differ:?}");
    }
    // And the rebuilt books say what the scenario did.
    let m = code("91440300MA5CU0005");
    let t: Totals = l
        .holding_totals(&Holding {
            enterprise: &m,
            site: "m-1",
            substance: MOR,
            lot: "MOR-1",
        })
        .expect("view");
    assert_ne!(t, Totals::default(), "the rebuilt books hold MOR-1 at m-1");
    let want_m1 = want
        .holdings
        .iter()
        .find(|x| (x.0, x.1, x.3) == ("M", "m-1", "MOR-1"))
        .expect("holding")
        .4;
    assert_eq!(t.balance(), i128::from(want_m1));
}

// ---------------------------------------------------------------------------------------------
// 10. Randomised custody sequences
// ---------------------------------------------------------------------------------------------

/// A deterministic xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A holding in the model: (signer, site, lot); the substance is always ephedrine.
type MHold = (&'static str, &'static str, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MKind {
    Produce,
    Consume,
    Destroy,
    Loss,
}

struct MShip {
    receipt: pb::Receipt,
    to: &'static str,
    to_site: &'static str,
    lot: String,
    qty: u64,
    received: Option<u64>,
}

struct MPost {
    receipt: pb::Receipt,
    kind: MKind,
    hold: MHold,
    /// The quantity in force.
    qty: u64,
}

/// What the books must say.
#[derive(Default)]
struct Model {
    bal: BTreeMap<MHold, u64>,
    ships: Vec<MShip>,
    posts: Vec<MPost>,
    next_lot: u64,
    /// produced, consumed, destroyed, lost.
    terms: [u128; 4],
}

impl Model {
    fn held(&self) -> Vec<(MHold, u64)> {
        self.bal
            .iter()
            .filter(|(_, b)| **b > 0)
            .map(|(h, b)| (h.clone(), *b))
            .collect()
    }

    fn in_transit(&self) -> u128 {
        self.ships
            .iter()
            .map(|s| u128::from(s.qty - s.received.unwrap_or(0)))
            .sum()
    }

    fn payload(kind: MKind, h: &MHold, q: u64) -> Payload {
        match kind {
            MKind::Produce => produce(h.1, EPH, &h.2, q),
            MKind::Consume => consume(h.1, EPH, &h.2, q),
            MKind::Destroy => destroy(h.1, EPH, &h.2, q),
            MKind::Loss => loss(h.1, EPH, &h.2, q, LossKind::Spillage, ""),
        }
    }

    fn term(kind: MKind) -> usize {
        match kind {
            MKind::Produce => 0,
            MKind::Consume => 1,
            MKind::Destroy => 2,
            MKind::Loss => 3,
        }
    }
}

#[derive(Default, Debug)]
struct Tally {
    accepted: usize,
    refused: usize,
    received: usize,
    corrected: usize,
    out: usize,
}

/// One seeded run of `steps` records; every step is checked against the model.
async fn custody_run(seed: u64, steps: usize) -> Tally {
    let mut h = H::start().await;
    let mut rng = Rng::new(seed);
    let mut m = Model::default();
    let mut tally = Tally::default();
    for step in 0..steps {
        let what = format!("seed {seed} step {step}");
        match rng.below(12) {
            0 | 1 => {
                // Produce a new lot (the user has no PRODUCE licence).
                m.next_lot += 1;
                let lot = format!("R-{}", m.next_lot);
                let q = 1 + rng.below(5_000);
                if rng.below(8) == 0 {
                    let p = produce("u-1", EPH, &lot, q);
                    h.refuse(&what, "U", p, &[], FP, &["licence"]).await;
                    tally.refused += 1;
                    continue;
                }
                let site = *rng.pick(&["plant-1", "plant-2"]);
                let hold: MHold = ("P", site, lot.clone());
                let r = h.produce("P", site, EPH, &lot, q, &[]).await;
                *m.bal.entry(hold.clone()).or_default() += q;
                m.terms[0] += u128::from(q);
                m.posts.push(MPost {
                    receipt: r,
                    kind: MKind::Produce,
                    hold,
                    qty: q,
                });
                tally.accepted += 1;
            }
            2 | 3 => {
                // Ship from one of the producer's holdings, to the user or to its other site.
                let held: Vec<_> = m.held().into_iter().filter(|(h, _)| h.0 == "P").collect();
                if held.is_empty() {
                    continue;
                }
                let (from, b) = rng.pick(&held).clone();
                let q = 1 + rng.below(b + b / 4 + 1);
                let (to, to_site) = if rng.below(3) == 0 {
                    (
                        "P",
                        if from.1 == "plant-1" {
                            "plant-2"
                        } else {
                            "plant-1"
                        },
                    )
                } else {
                    ("U", "u-1")
                };
                let p = h
                    .ship_payload("P", from.1, EPH, &from.2, q, to, to_site, "")
                    .await;
                if q > b {
                    h.refuse(&what, "P", p, &[], FP, &["ship.quantity.amount"])
                        .await;
                    tally.refused += 1;
                    continue;
                }
                let r = h.ok("P", p, &[]).await;
                *m.bal.get_mut(&from).expect("held") -= q;
                m.ships.push(MShip {
                    receipt: r,
                    to,
                    to_site,
                    lot: from.2.clone(),
                    qty: q,
                    received: None,
                });
                tally.accepted += 1;
            }
            4 | 5 => {
                if m.ships.is_empty() {
                    continue;
                }
                let i = rng.below(m.ships.len() as u64) as usize;
                let s = &m.ships[i];
                let q = if rng.below(5) == 0 {
                    s.qty + 1
                } else {
                    s.qty - rng.below(s.qty.min(3))
                };
                let p = receive(&s.receipt, s.to_site, q);
                let to = s.to;
                if s.received.is_some() {
                    h.refuse(&what, to, p, &[], Code::AlreadyExists, &["receive.ship"])
                        .await;
                    tally.refused += 1;
                } else if q > s.qty {
                    h.refuse(&what, to, p, &[], FP, &["receive.quantity.amount"])
                        .await;
                    tally.refused += 1;
                } else {
                    h.ok(to, p, &[]).await;
                    let s = &mut m.ships[i];
                    s.received = Some(q);
                    *m.bal.entry((s.to, s.to_site, s.lot.clone())).or_default() += q;
                    tally.accepted += 1;
                    tally.received += 1;
                }
            }
            6..=9 => {
                // Consume, destroy (an inspector witnessing, mostly) or lose from any holding.
                let held = m.held();
                if held.is_empty() {
                    continue;
                }
                let (hold, b) = rng.pick(&held).clone();
                let q = 1 + rng.below(b + b / 4 + 1);
                let kind = match rng.below(4) {
                    0 | 1 => MKind::Consume,
                    2 => MKind::Destroy,
                    _ => MKind::Loss,
                };
                let witnessed = kind != MKind::Destroy || rng.below(6) != 0;
                let cos: &[&str] = if kind == MKind::Destroy && witnessed {
                    &["I4403"]
                } else {
                    &[]
                };
                let p = Model::payload(kind, &hold, q);
                if !witnessed {
                    h.refuse(&what, hold.0, p, cos, DENIED, &["record.cosignatures"])
                        .await;
                    tally.refused += 1;
                } else if q > b {
                    h.refuse(&what, hold.0, p, cos, FP, &["exceeds book stock"])
                        .await;
                    tally.refused += 1;
                } else {
                    let r = h.ok(hold.0, p, cos).await;
                    *m.bal.get_mut(&hold).expect("held") -= q;
                    m.terms[Model::term(kind)] += u128::from(q);
                    m.posts.push(MPost {
                        receipt: r,
                        kind,
                        hold,
                        qty: q,
                    });
                    tally.accepted += 1;
                    tally.out += 1;
                }
            }
            _ => {
                // Correct an earlier movement to a new quantity, or void it.
                if m.posts.is_empty() {
                    continue;
                }
                let i = rng.below(m.posts.len() as u64) as usize;
                let post = &m.posts[i];
                let new = rng.below(2 * post.qty + 2);
                let p = correction(
                    &post.receipt,
                    (new > 0).then(|| Model::payload(post.kind, &post.hold, new)),
                );
                let witnessed = post.kind != MKind::Destroy || rng.below(6) != 0;
                let cos: &[&str] = if post.kind == MKind::Destroy && witnessed {
                    &["I4403"]
                } else {
                    &[]
                };
                let b = i128::from(m.bal[&post.hold]);
                let delta = i128::from(new) - i128::from(post.qty);
                let after = if post.kind == MKind::Produce {
                    b + delta
                } else {
                    b - delta
                };
                let who = post.hold.0;
                if !witnessed {
                    h.refuse(&what, who, p, cos, DENIED, &["record.cosignatures"])
                        .await;
                    tally.refused += 1;
                } else if after < 0 {
                    h.refuse(&what, who, p, cos, FP, &["exceeds book stock"])
                        .await;
                    tally.refused += 1;
                } else {
                    h.ok(who, p, cos).await;
                    let post = &mut m.posts[i];
                    m.bal.insert(post.hold.clone(), after as u64);
                    let t = &mut m.terms[Model::term(post.kind)];
                    *t = (*t as i128 + delta) as u128;
                    post.qty = new;
                    tally.accepted += 1;
                    tally.corrected += 1;
                }
            }
        }
        for (hold, want) in &m.bal {
            assert_eq!(
                h.bal(hold.0, hold.1, EPH, &hold.2),
                *want,
                "{what}: book stock of {hold:?}"
            );
        }
        let books = ledger_books(&h, &what);
        assert_conserved(&books, &what);
        if let Some(s) = books.get(EPH) {
            use Term::*;
            assert_eq!(
                [
                    s.get(Produced),
                    s.get(Consumed),
                    s.get(Destroyed),
                    s.get(Lost)
                ],
                m.terms,
                "{what}: produced, consumed, destroyed, lost"
            );
            assert_eq!(s.in_transit(), m.in_transit(), "{what}: in transit");
        }
    }
    // `reindex` rebuilds every balance, journal and index of this random history exactly.
    let views = h.views();
    let H { server, c, .. } = h;
    drop(c);
    let dir = server.dir.clone();
    server.ledger.close().await;
    let _tmp = server.stop().await;
    taizhang::ledger::reindex(config(&dir)).expect("reindex");
    let (l, _) = taizhang::ledger::Ledger::open(config(&dir)).expect("reopens");
    assert!(
        l.dump_views().expect("views") == views,
        "seed {seed}: reindex rebuilt different views"
    );
    l.close().await;
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantity_is_conserved_across_random_custody_sequences() {
    let mut all = Tally::default();
    for seed in 1..=4 {
        let t = custody_run(seed, 50).await;
        all.accepted += t.accepted;
        all.refused += t.refused;
        all.received += t.received;
        all.corrected += t.corrected;
        all.out += t.out;
    }
    // The generator must exercise every path, accepted and refused.
    assert!(
        all.accepted > 120
            && all.refused > 15
            && all.received > 10
            && all.corrected > 15
            && all.out > 35,
        "{all:?}"
    );
}
