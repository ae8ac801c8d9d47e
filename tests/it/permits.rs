//! Adversarial permit tests over real gRPC on loopback: the movement table (which movement needs
//! which permit), who may issue what, draw-downs and their refusals, write-off and revocation,
//! concurrent sellers drawing on one buyer's permit, reconciliation (核销) with known answers and
//! provable citations, the permit lists, and the `taizhang audit` CLI.
//!
//! The expectations here are written from the regulations (shared/domain/REGULATIONS.md) and
//! DESIGN.md, not read back from `model::regulation`: a wrong row in the table fails a test.
//!
//! Every refusal is checked the way `ingest.rs` does: the exact gRPC code, a message naming the
//! field and rule, and an unchanged ledger (checkpoint size and root, the signer's head, and the
//! derived views byte for byte). A rule found to be violated is pinned by a test marked
//! `#[ignore = "BUG: ..."]`; run those with `cargo test --test it permits -- --ignored`.

use crate::common::*;
use ed25519_dalek::SigningKey;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use taizhang::api::auth::SignedChannel as Channel;
use taizhang::client::{entry_ref, RecordSigner};
use taizhang::codec;
use taizhang::crypto::{self, KeyId};
use taizhang::merkle::{verify_inclusion, Blake3Hasher};
use taizhang::pb::{
    self, audit_client::AuditClient, ledger_client::LedgerClient, record_body::Payload, Activity,
    Agency, Category, DrawStatus, MismatchKind, PermitState as St, PermitType as T,
};
use tonic::Code;

type Client = LedgerClient<Channel>;
type Audit = AuditClient<Channel>;

const P2P: &str = "103-79-7";
const EPH: &str = EPHEDRINE;
const AA: &str = "108-24-7";
const ACE: &str = ACETONE;
const MOR: &str = "57-27-2";
const KET: &str = "6740-88-1";
const DIA: &str = "439-14-5";

const DAY: u64 = 86_400_000;
const FP: Code = Code::FailedPrecondition;
const INVALID: Code = Code::InvalidArgument;
const DENIED: Code = Code::PermissionDenied;

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

/// Regulator keys registered by the root (public security, "44") at start:
/// (name, agency, jurisdiction, key seed).
const AUTHORITIES: &[(&str, Agency, &str, u8)] = &[
    ("drug", Agency::DrugRegulation, "44", 0x72),
    ("commerce", Agency::Commerce, "44", 0x73),
    ("emergency", Agency::Emergency, "44", 0x75),
    ("ps-4401", Agency::PublicSecurity, "4401", 0x90),
    ("ps-4403", Agency::PublicSecurity, "4403", 0x91),
    ("drug-4401", Agency::DrugRegulation, "4401", 0x92),
];

const ALL: &[Category] = &[
    Category::Precursor1,
    Category::Precursor2,
    Category::Precursor3,
    Category::Narcotic,
    Category::Psychotropic1,
    Category::Psychotropic2,
];

struct Ent {
    name: &'static str,
    stem: &'static str,
    jurisdiction: &'static str,
    seed: u8,
    categories: &'static [Category],
    activities: &'static [Activity],
    sites: &'static [&'static str],
}

/// Enterprises enrolled at start, each with one key.
const ENTERPRISES: &[Ent] = &[
    // A producer and seller of everything.
    Ent {
        name: "S",
        stem: "91440300MA5PT0001",
        jurisdiction: "440305",
        seed: 0xA1,
        categories: ALL,
        activities: &[Activity::Produce, Activity::Sell],
        sites: &["s-1", "s-2"],
    },
    // A second seller of categories 2 and 3.
    Ent {
        name: "S2",
        stem: "91440300MA5PT0002",
        jurisdiction: "440305",
        seed: 0xA2,
        categories: &[Category::Precursor2, Category::Precursor3],
        activities: &[Activity::Produce, Activity::Sell],
        sites: &["t-1"],
    },
    // A buyer (a hospital, for drugs): purchase only.
    Ent {
        name: "B",
        stem: "91440300MA5PT0003",
        jurisdiction: "440306",
        seed: 0xA3,
        categories: ALL,
        activities: &[Activity::Purchase],
        sites: &["b-1", "b-2"],
    },
    // A wholesaler: purchase and sell.
    Ent {
        name: "W",
        stem: "91440300MA5PT0004",
        jurisdiction: "440307",
        seed: 0xA4,
        categories: ALL,
        activities: &[Activity::Purchase, Activity::Sell],
        sites: &["w-1"],
    },
    // Carriers.
    Ent {
        name: "C",
        stem: "91440300MA5PT0005",
        jurisdiction: "440308",
        seed: 0xA5,
        categories: ALL,
        activities: &[Activity::Transport],
        sites: &["c-1"],
    },
    Ent {
        name: "C2",
        stem: "91440300MA5PT0006",
        jurisdiction: "440308",
        seed: 0xA6,
        categories: &[Category::Precursor2],
        activities: &[Activity::Transport],
        sites: &["d-1"],
    },
    // A buyer in Guangzhou (4401), outside Shenzhen (4403).
    Ent {
        name: "X",
        stem: "91440100MA5PT0007",
        jurisdiction: "440104",
        seed: 0xA7,
        categories: &[Category::Precursor2],
        activities: &[Activity::Purchase],
        sites: &["x-1"],
    },
];

fn licences(cats: &[Category], acts: &[Activity]) -> Vec<pb::Licence> {
    cats.iter().map(|c| licence(*c, acts)).collect()
}

/// A server, clients for both services, and every signer by name: the regulators ("ps" is the
/// root, public security for "44"; see AUTHORITIES) and the enterprises (see ENTERPRISES; "P"
/// and "BU" are `World::setup`'s producer and buyer).
struct H {
    server: Server,
    c: Client,
    audit: Audit,
    signers: BTreeMap<&'static str, RecordSigner>,
    codes: BTreeMap<&'static str, String>,
    lots: u32,
}

/// What a refusal must leave untouched.
struct Snapshot {
    size: u64,
    root: Vec<u8>,
    head: pb::SignerHead,
    views: Vec<(Vec<u8>, Vec<u8>)>,
}

impl H {
    async fn start() -> H {
        // Narcotic purchases here test permits, not two-person control (custody.rs does).
        let server = Server::start_single_person().await;
        let mut c = server.client().await;
        let audit = crate::common::audit_client(&server.url).await;
        let World {
            reg,
            producer,
            buyer,
            p,
            b,
            ..
        } = World::setup(&mut c).await;
        let mut h = H {
            server,
            c,
            audit,
            signers: BTreeMap::new(),
            codes: BTreeMap::new(),
            lots: 0,
        };
        h.signers.insert("ps", reg);
        h.signers.insert("P", p);
        h.signers.insert("BU", b);
        h.codes.insert("P", producer);
        h.codes.insert("BU", buyer);
        let mut batch = Vec::new();
        for (name, agency, jurisdiction, seed) in AUTHORITIES {
            let k = SigningKey::from_bytes(&[*seed; 32]);
            batch.push(h.sign(
                "ps",
                Payload::RegisterAuthority(pb::RegisterAuthority {
                    authority: Some(pb::AuthorityKey {
                        public_key: k.verifying_key().to_bytes().to_vec(),
                        name: (*name).into(),
                        agency: *agency as i32,
                        jurisdiction: (*jurisdiction).into(),
                        validity: None,
                    }),
                }),
            ));
            h.signers.insert(name, RecordSigner::new(k, ORIGIN));
        }
        for e in ENTERPRISES {
            let credit = code(e.stem);
            let k = SigningKey::from_bytes(&[e.seed; 32]);
            batch.push(h.sign(
                "ps",
                enrol(
                    &credit,
                    e.jurisdiction,
                    licences(e.categories, e.activities),
                    e.sites,
                ),
            ));
            batch.push(h.sign("ps", register(&k, &credit)));
            h.signers.insert(e.name, RecordSigner::new(k, ORIGIN));
            h.codes.insert(e.name, credit);
        }
        let results =
            h.c.submit_batch(pb::SubmitBatchRequest { records: batch })
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
        h
    }

    /// Enrols one more enterprise (by the root regulator) and registers a key for it.
    async fn enrol_extra(
        &mut self,
        name: &'static str,
        stem: &str,
        jurisdiction: &str,
        lics: Vec<pb::Licence>,
        sites: &[&str],
        seed: u8,
    ) -> String {
        let credit = code(stem);
        let k = SigningKey::from_bytes(&[seed; 32]);
        self.ok("ps", enrol(&credit, jurisdiction, lics, sites))
            .await;
        self.ok("ps", register(&k, &credit)).await;
        self.signers.insert(name, RecordSigner::new(k, ORIGIN));
        self.codes.insert(name, credit.clone());
        credit
    }

    fn code(&self, who: &str) -> String {
        self.codes
            .get(who)
            .unwrap_or_else(|| panic!("no enterprise {who}"))
            .clone()
    }

    fn signer(&self, who: &str) -> &RecordSigner {
        self.signers
            .get(who)
            .unwrap_or_else(|| panic!("no signer {who}"))
    }

    fn key_id(&self, who: &str) -> KeyId {
        self.signer(who).key_id()
    }

    /// Signs the signer's next record and advances its chain.
    fn sign(&mut self, who: &str, p: Payload) -> pb::SignedRecord {
        self.signers
            .get_mut(who)
            .unwrap_or_else(|| panic!("no signer {who}"))
            .sign(p, now())
    }

    /// Signs at the signer's chain position without advancing it (for records to be refused).
    fn peek(&self, who: &str, p: Payload) -> pb::SignedRecord {
        peek(self.signer(who), p)
    }

    /// Signs and submits a record that must be accepted as a new entry.
    async fn ok(&mut self, who: &str, p: Payload) -> pb::Receipt {
        let r = self.sign(who, p);
        let receipt = submit(&mut self.c, r).await.unwrap_or_else(|s| {
            panic!(
                "{who}: expected acceptance, got {:?}: {}",
                s.code(),
                s.message()
            )
        });
        assert!(!receipt.duplicate, "a new record came back as a duplicate");
        receipt
    }

    /// Issues a permit signed by regulator `who`; returns the reference to cite it by.
    async fn issue(&mut self, who: &str, p: pb::IssuePermit) -> pb::EntryRef {
        receipt_ref(&self.ok(who, Payload::IssuePermit(p)).await)
    }

    /// Produces a fresh lot of `amount` at `site`; returns the lot id.
    async fn stock(&mut self, who: &str, site: &str, substance: &str, amount: u64) -> String {
        self.lots += 1;
        let lot = format!("LOT-{who}-{}", self.lots);
        self.ok(who, produce(site, substance, &lot, amount)).await;
        lot
    }

    async fn snapshot(&mut self, signer: &KeyId) -> Snapshot {
        let cp = self
            .c
            .get_checkpoint(pb::GetCheckpointRequest::default())
            .await
            .unwrap()
            .into_inner();
        let head = self
            .c
            .get_signer_head(pb::GetSignerHeadRequest {
                key_id: signer.0.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        Snapshot {
            size: cp.size,
            root: cp.root,
            head,
            views: self.server.ledger.dump_views().expect("views dump"),
        }
    }

    /// Submits `p` signed by `who` (without advancing its chain); it must be refused with
    /// `code` and a message containing every needle, and leave the ledger unchanged.
    async fn refuse(
        &mut self,
        what: &str,
        who: &str,
        p: Payload,
        code: Code,
        needles: &[&str],
    ) -> tonic::Status {
        let r = self.peek(who, p);
        let id = self.key_id(who);
        let before = self.snapshot(&id).await;
        let status = match submit(&mut self.c, r).await {
            Ok(rc) => panic!(
                "{what}: expected {code:?}, but it was accepted as entry {}",
                rc.index
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
        let after = self.snapshot(&id).await;
        assert_eq!(before.size, after.size, "{what}: the log size changed");
        assert_eq!(before.root, after.root, "{what}: the root changed");
        assert_eq!(before.head, after.head, "{what}: the signer head moved");
        assert!(
            before.views == after.views,
            "{what}: a refused record changed the derived views"
        );
        status
    }

    async fn reconcile(
        &mut self,
        permit: pb::reconcile_permit_request::Permit,
        as_of_ms: u64,
    ) -> Result<pb::PermitReconciliation, tonic::Status> {
        self.audit
            .reconcile_permit(pb::ReconcilePermitRequest {
                permit: Some(permit),
                as_of_ms,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn rec(&mut self, no: &str, as_of_ms: u64) -> pb::PermitReconciliation {
        self.reconcile(by_no(no), as_of_ms)
            .await
            .unwrap_or_else(|s| panic!("reconcile {no}: {:?}: {}", s.code(), s.message()))
    }

    async fn summary(&mut self, no: &str) -> pb::PermitSummary {
        self.rec(no, 0).await.permit.expect("a summary")
    }

    async fn list(&mut self, req: pb::ListPermitsRequest) -> Result<(Vec<String>, bool), Code> {
        let r = self
            .audit
            .list_permits(req)
            .await
            .map_err(|s| s.code())?
            .into_inner();
        Ok((
            r.permits.into_iter().map(|p| p.permit_no).collect(),
            r.truncated,
        ))
    }

    /// Checks that `r` is provable: the entry's leaf hash (from GetEntry, and recomputed from
    /// its leaf bytes) is the cited one, and its inclusion proof against the latest signed
    /// checkpoint verifies. Returns the entry's record body.
    async fn prove(&mut self, r: &pb::EntryRef) -> pb::RecordBody {
        assert_eq!(r.origin, ORIGIN, "cited origin");
        let cp = self
            .c
            .get_checkpoint(pb::GetCheckpointRequest::default())
            .await
            .unwrap()
            .into_inner();
        let signed =
            taizhang::verify::open_ledger_checkpoint(&cp.note, &ledger_key().verifying_key())
                .expect("the checkpoint is signed by the ledger key");
        assert_eq!(
            (signed.size, signed.root.to_vec()),
            (cp.size, cp.root.clone())
        );
        let e = self
            .c
            .get_entry(pb::GetEntryRequest { index: r.index })
            .await
            .unwrap_or_else(|s| panic!("entry {}: {}", r.index, s.message()))
            .into_inner();
        assert_eq!(
            e.leaf_hash, r.leaf_hash,
            "entry {}: cited leaf hash",
            r.index
        );
        assert_eq!(
            codec::leaf_hash(&e.leaf).to_vec(),
            r.leaf_hash,
            "entry {}: leaf bytes hash",
            r.index
        );
        let p = self
            .c
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                index: r.index,
                tree_size: 0,
            })
            .await
            .unwrap_or_else(|s| panic!("proof of {}: {}", r.index, s.message()))
            .into_inner();
        assert_eq!(
            (p.index, p.tree_size, &p.leaf_hash),
            (r.index, cp.size, &r.leaf_hash)
        );
        verify_inclusion::<Blake3Hasher, _>(r.index, cp.size, &r.leaf_hash, &p.hashes, &cp.root)
            .unwrap_or_else(|e| panic!("inclusion of {} in {}: {e}", r.index, cp.size));
        let leaf = codec::Leaf::decode(&e.leaf).expect("leaf decodes");
        assert_eq!(leaf.index, r.index);
        codec::decode_body(&leaf.body).expect("body decodes")
    }
}

/// Moves a signer past a record it signed with [`peek`] that the ledger accepted.
fn commit(s: &mut RecordSigner, accepted: &pb::SignedRecord) {
    let next = s.next_seq() + 1;
    *s = RecordSigner::new(s.key().clone(), ORIGIN).resume(next, crypto::body_hash(&accepted.body));
}

fn by_no(no: &str) -> pb::reconcile_permit_request::Permit {
    pb::reconcile_permit_request::Permit::PermitNo(no.into())
}

fn by_ref(r: &pb::EntryRef) -> pb::reconcile_permit_request::Permit {
    pb::reconcile_permit_request::Permit::Entry(r.clone())
}

fn tn(t: T) -> &'static str {
    t.as_str_name().trim_start_matches("PERMIT_TYPE_")
}

fn state(s: &pb::PermitSummary) -> St {
    St::try_from(s.state).expect("a permit state")
}

/// (state, drawn, received, remaining, void, draw-downs) of a summary.
fn figures(s: &pb::PermitSummary) -> (St, u64, u64, u64, u64, u32) {
    (
        state(s),
        s.drawn,
        s.received,
        s.remaining,
        s.void,
        s.draw_downs,
    )
}

/// A multi-use permit of `t`, valid from 0 for 30 days.
fn pp(no: &str, t: T, holder: &str, substance: &str, ceiling: u64) -> pb::IssuePermit {
    permit(no, t, holder, substance, ceiling, false)
}

/// A single-use permit of `t` (category-1 purchase permits are single use: REGULATIONS.md).
fn pp1(no: &str, t: T, holder: &str, substance: &str, ceiling: u64) -> pb::IssuePermit {
    permit(no, t, holder, substance, ceiling, true)
}

/// A multi-use transport permit or filing held by the consignor `holder`.
fn tpermit(
    no: &str,
    t: T,
    holder: &str,
    substance: &str,
    ceiling: u64,
    consignee: &str,
) -> pb::IssuePermit {
    pb::IssuePermit {
        consignee: consignee.into(),
        ..pp(no, t, holder, substance, ceiling)
    }
}

fn validity(not_before_ms: u64, not_after_ms: u64) -> Option<pb::Validity> {
    Some(pb::Validity {
        not_before_ms,
        not_after_ms,
    })
}

fn sh(site: &str, substance: &str, lot: &str, amount: u64, to: &str, to_site: &str) -> pb::Ship {
    let Payload::Ship(s) = ship(site, substance, lot, amount, to, to_site) else {
        unreachable!("ship() builds a ship")
    };
    s
}

trait ShipExt {
    fn permit(self, r: &pb::EntryRef) -> Self;
    fn permit_opt(self, r: Option<&pb::EntryRef>) -> Self;
    fn transport(self, r: &pb::EntryRef) -> Self;
    fn transport_opt(self, r: Option<&pb::EntryRef>) -> Self;
    fn carrier(self, c: &str) -> Self;
    fn expected(self, ms: u64) -> Self;
    fn p(self) -> Payload;
}

impl ShipExt for pb::Ship {
    fn permit(mut self, r: &pb::EntryRef) -> Self {
        self.permit = Some(r.clone());
        self
    }
    fn permit_opt(mut self, r: Option<&pb::EntryRef>) -> Self {
        self.permit = r.cloned();
        self
    }
    fn transport(mut self, r: &pb::EntryRef) -> Self {
        self.transport_permit = Some(r.clone());
        self
    }
    fn transport_opt(mut self, r: Option<&pb::EntryRef>) -> Self {
        self.transport_permit = r.cloned();
        self
    }
    fn carrier(mut self, c: &str) -> Self {
        self.carrier = c.into();
        self
    }
    fn expected(mut self, ms: u64) -> Self {
        self.expected_delivery_ms = ms;
        self
    }
    fn p(self) -> Payload {
        Payload::Ship(self)
    }
}

fn write_off(r: &pb::EntryRef, reason: &str) -> Payload {
    Payload::WriteOffPermit(pb::WriteOffPermit {
        permit: Some(r.clone()),
        reason: reason.into(),
    })
}

fn revoke(r: &pb::EntryRef, reason: &str) -> Payload {
    Payload::RevokePermit(pb::RevokePermit {
        permit: Some(r.clone()),
        reason: reason.into(),
    })
}

// ---------------------------------------------------------------------------------------------
// 1. The movement table, row by row (Purchase and Transport; Import/Export are not wired yet)
// ---------------------------------------------------------------------------------------------

/// One class of substance and what the regulations say its movements need.
struct Kind {
    substance: &'static str,
    /// How messages name the class.
    class: &'static str,
    /// The buyer's permit a sale needs, and the regulator that issues it.
    purchase: Option<(T, &'static str)>,
    /// A buyer holding a SELL licence for the category (a designated wholesaler) needs none.
    wholesaler_exempt: bool,
    /// The consignor's transport permit any shipment needs (always public security), and
    /// whether it must be single use.
    transport: Option<(T, bool)>,
    /// Who issues import / export licences for the class (a permit type no movement here uses).
    licence_by: &'static str,
}

const K_P1: Kind = Kind {
    substance: P2P,
    class: "category 1 precursor",
    purchase: Some((T::PurchasePermit, "ps")),
    wholesaler_exempt: false,
    transport: Some((T::TransportPermit, true)),
    licence_by: "commerce",
};
const K_P1_PHARMA: Kind = Kind {
    substance: EPH,
    class: "category 1 pharmaceutical precursor",
    purchase: Some((T::PurchasePermit, "drug")),
    wholesaler_exempt: false,
    transport: Some((T::TransportPermit, true)),
    licence_by: "commerce",
};
const K_P2: Kind = Kind {
    substance: AA,
    class: "category 2 precursor",
    purchase: Some((T::PurchaseFiling, "ps")),
    wholesaler_exempt: false,
    transport: Some((T::TransportPermit, false)),
    licence_by: "commerce",
};
const K_P3: Kind = Kind {
    substance: ACE,
    class: "category 3 precursor",
    purchase: Some((T::PurchaseFiling, "ps")),
    wholesaler_exempt: false,
    transport: Some((T::TransportFiling, false)),
    licence_by: "commerce",
};
const K_NARCOTIC: Kind = Kind {
    substance: MOR,
    class: "narcotic drug",
    purchase: Some((T::PurchaseSealCard, "drug")),
    wholesaler_exempt: true,
    transport: None,
    licence_by: "drug",
};
const K_PSY1: Kind = Kind {
    substance: KET,
    class: "class I psychotropic",
    purchase: Some((T::PurchaseSealCard, "drug")),
    wholesaler_exempt: true,
    transport: None,
    licence_by: "drug",
};
const K_PSY2: Kind = Kind {
    substance: DIA,
    class: "class II psychotropic",
    purchase: None,
    wholesaler_exempt: false,
    transport: None,
    licence_by: "drug",
};

/// The buyer's permit of the kind's purchase type: seal cards carry no ceiling, category-1
/// purchase permits are single use, filings and seal cards multi-use.
fn purchase_permit(k: &Kind, no: &str, holder: &str, ceiling: u64) -> pb::IssuePermit {
    let (t, _) = k.purchase.expect("the kind needs a purchase permit");
    let ceiling = if t == T::PurchaseSealCard { 0 } else { ceiling };
    permit(no, t, holder, k.substance, ceiling, t == T::PurchasePermit)
}

impl H {
    /// The transport permit the kind needs for a shipment from `holder` to `consignee`
    /// (single use where it must be), or `None` where the kind needs none.
    async fn transport_for(
        &mut self,
        k: &Kind,
        no: &str,
        holder: &str,
        consignee: &str,
    ) -> Option<pb::EntryRef> {
        let (t, single_use) = k.transport?;
        let p = pb::IssuePermit {
            single_use,
            ..tpermit(no, t, holder, k.substance, 10_000_000, consignee)
        };
        Some(self.issue("ps", p).await)
    }
}

/// A sale from S to B (hospital) and to W (wholesaler): without the buyer's permit, with one of
/// the wrong type, with the right one, and citing one where none is needed.
async fn purchase_row(k: &Kind) {
    let mut h = H::start().await;
    let (s, b, w) = (h.code("S"), h.code("B"), h.code("W"));
    let lot = h.stock("S", "s-1", k.substance, 10_000_000).await;
    let to = |who: &str, site: &str| sh("s-1", k.substance, &lot, 100_000, who, site);
    // A permit type no purchase uses, held by the buyer for this very substance.
    let import = h
        .issue(
            k.licence_by,
            pp("IMP-B", T::ImportLicence, &b, k.substance, 1_000_000),
        )
        .await;
    let tb = h.transport_for(k, "TR-B", &s, &b).await;
    match k.purchase {
        Some((t, by)) => {
            h.refuse(
                "a sale without the buyer's permit",
                "S",
                to(&b, "b-1").transport_opt(tb.as_ref()).p(),
                FP,
                &[
                    "ship.permit",
                    k.class,
                    &format!("needs a {}", tn(t)),
                    &format!("held by the buyer {b}"),
                    "none cited",
                ],
            )
            .await;
            h.refuse(
                "an import licence cited as the purchase permit",
                "S",
                to(&b, "b-1").permit(&import).transport_opt(tb.as_ref()).p(),
                FP,
                &[
                    "ship.permit",
                    "permit IMP-B",
                    "is a IMPORT_LICENCE",
                    &format!("needs a {}", tn(t)),
                ],
            )
            .await;
            if let Some((tt, single)) = k.transport {
                // The buyer's own transport permit is not a purchase permit either.
                let wrong = h
                    .issue(
                        "ps",
                        pb::IssuePermit {
                            single_use: single,
                            ..tpermit("TR-OF-B", tt, &b, k.substance, 1_000_000, &s)
                        },
                    )
                    .await;
                h.refuse(
                    "a transport permit cited as the purchase permit",
                    "S",
                    to(&b, "b-1").permit(&wrong).transport_opt(tb.as_ref()).p(),
                    FP,
                    &["ship.permit", &format!("is a {}", tn(tt))],
                )
                .await;
            }
            let right = h
                .issue(by, purchase_permit(k, "PUR-B", &b, 1_000_000))
                .await;
            h.ok(
                "S",
                to(&b, "b-1").permit(&right).transport_opt(tb.as_ref()).p(),
            )
            .await;
            let sm = h.summary("PUR-B").await;
            let after_one = if sm.single_use {
                St::WrittenOff
            } else {
                St::PartiallyUsed
            };
            assert_eq!(
                (state(&sm), sm.drawn, sm.draw_downs, sm.holder.as_str()),
                (after_one, 100_000, 1, b.as_str())
            );
            let tw = h.transport_for(k, "TR-W", &s, &w).await;
            if k.wholesaler_exempt {
                // A designated wholesaler buys under its wholesale licence, without a card.
                h.ok("S", to(&w, "w-1").transport_opt(tw.as_ref()).p())
                    .await;
                let card = h.issue(by, purchase_permit(k, "PUR-W", &w, 0)).await;
                h.refuse(
                    "a wholesaler citing a seal card it does not need",
                    "S",
                    to(&w, "w-1").permit(&card).transport_opt(tw.as_ref()).p(),
                    INVALID,
                    &[
                        "ship.permit",
                        &format!("a {} purchase needs no permit", k.class),
                    ],
                )
                .await;
                // A seal card has no quantity ceiling: it carries any number of purchases.
                h.ok(
                    "S",
                    to(&b, "b-1").permit(&right).transport_opt(tb.as_ref()).p(),
                )
                .await;
                let sm = h.summary("PUR-B").await;
                assert_eq!(
                    (state(&sm), sm.ceiling, sm.drawn, sm.draw_downs),
                    (St::PartiallyUsed, 0, 200_000, 2)
                );
            } else {
                // A licensed seller buying precursors still needs its own purchase permit.
                h.refuse(
                    "a wholesaler buying precursors without a permit",
                    "S",
                    to(&w, "w-1").transport_opt(tw.as_ref()).p(),
                    FP,
                    &[
                        "ship.permit",
                        &format!("needs a {}", tn(t)),
                        &format!("held by the buyer {w}"),
                    ],
                )
                .await;
            }
        }
        None => {
            h.ok("S", to(&b, "b-1").transport_opt(tb.as_ref()).p())
                .await;
            h.ok("S", to(&w, "w-1").transport_opt(tb.as_ref()).p())
                .await;
            h.refuse(
                "a permit cited for a purchase that needs none",
                "S",
                to(&b, "b-1").permit(&import).p(),
                INVALID,
                &[
                    "ship.permit",
                    &format!("a {} purchase needs no permit", k.class),
                ],
            )
            .await;
            // A licence's figures come from the two-way check (permit reconciliation points there).
            let sm = h
                .audit
                .reconcile_import_export(pb::ReconcileImportExportRequest {
                    licence: Some(pb::reconcile_import_export_request::Licence::PermitNo(
                        "IMP-B".into(),
                    )),
                    as_of_ms: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .licence
                .unwrap();
            assert_eq!(figures(&sm), (St::Active, 0, 0, 1_000_000, 0, 0));
            let e = h.reconcile(by_no("IMP-B"), 0).await.unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
        }
    }
}

/// A sale from S to B and a transfer between S's own sites: without the consignor's transport
/// permit, with one of the wrong type, with the right one, and citing one where none is needed.
async fn transport_row(k: &Kind) {
    let mut h = H::start().await;
    let (s, b) = (h.code("S"), h.code("B"));
    let lot = h.stock("S", "s-1", k.substance, 10_000_000).await;
    let export = h
        .issue(
            k.licence_by,
            pp("EXP-S", T::ExportLicence, &s, k.substance, 1_000_000),
        )
        .await;
    // The buyer's permit, multi-use, so that the transport permit is the only question.
    let pur = match k.purchase {
        Some((_, by)) => Some(
            h.issue(by, purchase_permit(k, "PUR-B", &b, 5_000_000))
                .await,
        ),
        None => None,
    };
    let to_b = |pur: Option<&pb::EntryRef>| {
        sh("s-1", k.substance, &lot, 100_000, &b, "b-1").permit_opt(pur)
    };
    let to_own = || sh("s-1", k.substance, &lot, 100_000, &s, "s-2");
    match k.transport {
        Some((t, single)) => {
            let needles = [
                "ship.transport_permit",
                k.class,
                &format!("transport needs a {}", tn(t)),
                "none cited",
            ];
            h.refuse(
                "a sale without a transport permit",
                "S",
                to_b(pur.as_ref()).p(),
                FP,
                &needles,
            )
            .await;
            h.refuse(
                "a transfer between own sites without a transport permit",
                "S",
                to_own().p(),
                FP,
                &needles,
            )
            .await;
            h.refuse(
                "an export licence cited as the transport permit",
                "S",
                to_b(pur.as_ref()).transport(&export).p(),
                FP,
                &[
                    "ship.transport_permit",
                    "permit EXP-S",
                    "is a EXPORT_LICENCE",
                    &format!("needs a {}", tn(t)),
                ],
            )
            .await;
            let (pt, by) = k.purchase.expect("every precursor needs a purchase permit");
            h.refuse(
                "the buyer's purchase permit cited as the transport permit",
                "S",
                to_b(pur.as_ref()).transport(pur.as_ref().unwrap()).p(),
                FP,
                &["ship.transport_permit", &format!("is a {}", tn(pt))],
            )
            .await;
            let tp = h.transport_for(k, "TR-B", &s, &b).await.unwrap();
            h.ok("S", to_b(pur.as_ref()).transport(&tp).p()).await;
            // A single-use purchase permit is spent now: the next sale cites a fresh one.
            let pur = if pt == T::PurchasePermit {
                Some(
                    h.issue(by, purchase_permit(k, "PUR-B2", &b, 5_000_000))
                        .await,
                )
            } else {
                pur.clone()
            };
            let own = h.transport_for(k, "TR-S", &s, &s).await.unwrap();
            h.ok("S", to_own().transport(&own).p()).await;
            let sm = h.summary("TR-B").await;
            assert_eq!(
                (sm.drawn, sm.draw_downs, sm.single_use),
                (100_000, 1, single)
            );
            if single {
                assert_eq!(state(&sm), St::WrittenOff, "single use closes at first use");
                h.refuse(
                    "a single-use transport permit used twice",
                    "S",
                    to_b(pur.as_ref()).transport(&tp).p(),
                    FP,
                    &["ship.transport_permit", "permit TR-B", "written off"],
                )
                .await;
            } else {
                assert_eq!(state(&sm), St::PartiallyUsed);
                h.ok("S", to_b(pur.as_ref()).transport(&tp).p()).await;
                assert_eq!(h.summary("TR-B").await.drawn, 200_000);
            }
            assert_eq!(h.summary("TR-S").await.drawn, 100_000);
        }
        None => {
            let w = h.code("W");
            // A sale (to the hospital on its card, to the wholesaler) and a transfer, unpermitted.
            h.ok("S", to_b(pur.as_ref()).p()).await;
            h.ok("S", sh("s-1", k.substance, &lot, 100_000, &w, "w-1").p())
                .await;
            h.ok("S", to_own().p()).await;
            let needles = [
                "ship.transport_permit",
                &format!("a {} transport needs no permit", k.class),
            ];
            h.refuse(
                "a transport permit cited for a sale that needs none",
                "S",
                to_b(pur.as_ref()).transport(&export).p(),
                INVALID,
                &needles,
            )
            .await;
            h.refuse(
                "a transport permit cited for a transfer that needs none",
                "S",
                to_own().transport(&export).p(),
                INVALID,
                &needles,
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_purchase_category_1_needs_a_purchase_permit() {
    purchase_row(&K_P1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_purchase_category_1_pharmaceutical_needs_a_purchase_permit() {
    purchase_row(&K_P1_PHARMA).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_purchase_category_2_needs_a_purchase_filing() {
    purchase_row(&K_P2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_purchase_category_3_needs_a_purchase_filing() {
    purchase_row(&K_P3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_purchase_narcotic_needs_a_seal_card_unless_wholesaler() {
    purchase_row(&K_NARCOTIC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_purchase_psychotropic_1_needs_a_seal_card_unless_wholesaler() {
    purchase_row(&K_PSY1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_purchase_psychotropic_2_needs_no_permit() {
    purchase_row(&K_PSY2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_transport_category_1_needs_a_single_use_transport_permit() {
    transport_row(&K_P1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_transport_category_1_pharmaceutical_needs_a_single_use_transport_permit() {
    transport_row(&K_P1_PHARMA).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_transport_category_2_needs_a_transport_permit() {
    transport_row(&K_P2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_transport_category_3_needs_a_transport_filing() {
    transport_row(&K_P3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_transport_narcotic_needs_no_permit() {
    transport_row(&K_NARCOTIC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_transport_psychotropic_1_needs_no_permit() {
    transport_row(&K_PSY1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_transport_psychotropic_2_needs_no_permit() {
    transport_row(&K_PSY2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wholesaler_whose_sell_licence_lapsed_needs_a_seal_card() {
    let mut h = H::start().await;
    let lapsed = pb::Licence {
        licence_no: "WS-OLD".into(),
        category: Category::Narcotic as i32,
        activities: vec![Activity::Sell as i32],
        validity: validity(1, now() - 60_000),
    };
    let not_yet = pb::Licence {
        licence_no: "WS-NEXT".into(),
        category: Category::Narcotic as i32,
        activities: vec![Activity::Sell as i32],
        validity: validity(now() + DAY, now() + 365 * DAY),
    };
    let wx = h
        .enrol_extra(
            "WX",
            "91440300MA5PT0008",
            "440307",
            vec![
                licence(Category::Narcotic, &[Activity::Purchase]),
                lapsed,
                not_yet,
            ],
            &["wx-1"],
            0xA8,
        )
        .await;
    let lot = h.stock("S", "s-1", MOR, 1_000_000).await;
    h.refuse(
        "a wholesaler without a SELL licence valid now",
        "S",
        sh("s-1", MOR, &lot, 1_000, &wx, "wx-1").p(),
        FP,
        &["ship.permit", "PURCHASE_SEAL_CARD", &wx],
    )
    .await;
    let card = h
        .issue("drug", purchase_permit(&K_NARCOTIC, "CARD-WX", &wx, 0))
        .await;
    h.ok(
        "S",
        sh("s-1", MOR, &lot, 1_000, &wx, "wx-1").permit(&card).p(),
    )
    .await;
}

/// The regulation table's own doc: "designated wholesalers buy under their wholesale licence".
/// The ledger accepts an OPERATING_LICENCE issued as a permit as the licence to SELL
/// (`licensed_for`), but the wholesaler exemption (`purchase_needs`) only looks at enrolment
/// licences: an enterprise may wholesale morphine on its licence yet must show a hospital's seal
/// card to buy it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wholesaler_licensed_by_an_operating_licence_permit_buys_without_a_seal_card() {
    let mut h = H::start().await;
    let b = h.code("B");
    let wl = h
        .enrol_extra(
            "WL",
            "91440300MA5PT0009",
            "440307",
            vec![licence(
                Category::Narcotic,
                &[Activity::Purchase, Activity::Produce],
            )],
            &["wl-1"],
            0xA9,
        )
        .await;
    h.issue("drug", pp("OL-WL", T::OperatingLicence, &wl, MOR, 0))
        .await;
    // The ledger takes the operating licence as a licence to sell morphine...
    let own = h.stock("WL", "wl-1", MOR, 10_000).await;
    let card_b = h
        .issue("drug", purchase_permit(&K_NARCOTIC, "CARD-B", &b, 0))
        .await;
    h.ok(
        "WL",
        sh("wl-1", MOR, &own, 1_000, &b, "b-1").permit(&card_b).p(),
    )
    .await;
    // ...so WL is a designated wholesaler, and buys without a seal card.
    let lot = h.stock("S", "s-1", MOR, 1_000_000).await;
    h.ok("S", sh("s-1", MOR, &lot, 1_000, &wl, "wl-1").p())
        .await;
}

/// REGULATIONS.md: "Purchase permits and filing certificates are single-use and valid one month;
/// a multi-use filing certificate (6 months) can follow after a clean record" — the multi-use
/// exception is for filing certificates (categories 2 and 3) only. A category-1 purchase permit
/// (购买许可证, "一次使用有效") is single use, as the category-1 transport permit is; the shape
/// table requires it of the transport permit only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_category_1_purchase_permit_must_be_single_use() {
    let mut h = H::start().await;
    let b = h.code("B");
    for (who, sub) in [("ps", P2P), ("drug", EPH)] {
        h.refuse(
            "a multi-use category-1 purchase permit",
            who,
            Payload::IssuePermit(pp("PP-MULTI", T::PurchasePermit, &b, sub, 1_000_000)),
            INVALID,
            &["issue_permit.single_use", "single use"],
        )
        .await;
    }
    // A multi-use filing for category 2 stays allowed (after a clean record).
    h.issue("ps", pp("F-MULTI", T::PurchaseFiling, &b, AA, 1_000_000))
        .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Issuing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_needs_the_agency_the_table_names_for_the_class() {
    let mut h = H::start().await;
    let (s, b) = (h.code("S"), h.code("B"));
    let issue = Payload::IssuePermit;
    // (what, signer, permit, the agency that must issue it)
    let wrong_agency: Vec<(&str, &str, pb::IssuePermit, &str)> = vec![
        (
            "ephedrine purchase permit by public security",
            "ps",
            pp1("E-1", T::PurchasePermit, &b, EPH, 1_000),
            "DRUG_REGULATION",
        ),
        (
            "P2P purchase permit by the drug regulator",
            "drug",
            pp1("E-2", T::PurchasePermit, &b, P2P, 1_000),
            "PUBLIC_SECURITY",
        ),
        (
            "morphine seal card by public security",
            "ps",
            pp("E-3", T::PurchaseSealCard, &b, MOR, 0),
            "DRUG_REGULATION",
        ),
        (
            "ephedrine transport permit by the drug regulator",
            "drug",
            pb::IssuePermit {
                single_use: true,
                ..tpermit("E-4", T::TransportPermit, &s, EPH, 1_000, &b)
            },
            "PUBLIC_SECURITY",
        ),
        (
            "acetic anhydride purchase filing by commerce",
            "commerce",
            pp("E-5", T::PurchaseFiling, &b, AA, 1_000),
            "PUBLIC_SECURITY",
        ),
        (
            "acetic anhydride import licence by public security",
            "ps",
            pp("E-6", T::ImportLicence, &b, AA, 1_000),
            "COMMERCE",
        ),
        (
            "morphine import licence by commerce",
            "commerce",
            pp("E-7", T::ImportLicence, &b, MOR, 1_000),
            "DRUG_REGULATION",
        ),
        (
            "P2P operating licence by public security",
            "ps",
            pp("E-8", T::OperatingLicence, &s, P2P, 0),
            "EMERGENCY",
        ),
    ];
    for (what, who, p, agency) in wrong_agency {
        h.refuse(what, who, issue(p), DENIED, &["issue_permit.type", agency])
            .await;
    }
    // The same permits from the right agency are accepted.
    for (who, p) in [
        ("drug", pp1("E-1", T::PurchasePermit, &b, EPH, 1_000)),
        ("ps", pp1("E-2", T::PurchasePermit, &b, P2P, 1_000)),
        ("drug", pp("E-3", T::PurchaseSealCard, &b, MOR, 0)),
        (
            "ps",
            pb::IssuePermit {
                single_use: true,
                ..tpermit("E-4", T::TransportPermit, &s, EPH, 1_000, &b)
            },
        ),
        ("ps", pp("E-5", T::PurchaseFiling, &b, AA, 1_000)),
        ("commerce", pp("E-6", T::ImportLicence, &b, AA, 1_000)),
        ("drug", pp("E-7", T::ImportLicence, &b, MOR, 1_000)),
        ("emergency", pp("E-8", T::OperatingLicence, &s, P2P, 0)),
        ("drug", pp("E-9", T::OperatingLicence, &s, EPH, 0)),
    ] {
        h.issue(who, p).await;
    }
    // Types that do not exist for a class at all.
    let not_for_class: Vec<(&str, &str, pb::IssuePermit, &str)> = vec![
        (
            "purchase filing for a category-1 substance",
            "ps",
            pp("N-1", T::PurchaseFiling, &b, P2P, 1_000),
            "category 1 precursor",
        ),
        (
            "purchase permit for a category-3 substance",
            "ps",
            pp("N-2", T::PurchasePermit, &b, ACE, 1_000),
            "category 3 precursor",
        ),
        (
            "transport filing for a category-2 substance",
            "ps",
            tpermit("N-3", T::TransportFiling, &s, AA, 1_000, &b),
            "category 2 precursor",
        ),
        (
            "transport permit for a category-3 substance",
            "ps",
            tpermit("N-4", T::TransportPermit, &s, ACE, 1_000, &b),
            "category 3 precursor",
        ),
        (
            "seal card for a class II psychotropic",
            "drug",
            pp("N-5", T::PurchaseSealCard, &b, DIA, 0),
            "class II psychotropic",
        ),
        (
            "seal card for a precursor",
            "drug",
            pp("N-6", T::PurchaseSealCard, &b, EPH, 0),
            "category 1 pharmaceutical precursor",
        ),
        (
            "transport permit for a narcotic",
            "ps",
            tpermit("N-7", T::TransportPermit, &s, MOR, 1_000, &b),
            "narcotic drug",
        ),
    ];
    for (what, who, p, class) in not_for_class {
        let t = T::try_from(p.r#type).unwrap();
        h.refuse(
            what,
            who,
            issue(p),
            INVALID,
            &[
                "issue_permit.type",
                &format!("a {} is not issued for a {class}", tn(t)),
            ],
        )
        .await;
    }
    h.refuse(
        "no permit type",
        "ps",
        issue(pp("N-8", T::Unspecified, &b, AA, 1_000)),
        INVALID,
        &["issue_permit.type"],
    )
    .await;
    h.refuse(
        "a substance outside the catalogue",
        "ps",
        issue(pp("N-9", T::PurchaseFiling, &b, "7732-18-5", 1_000)),
        INVALID,
        &["issue_permit.substance", "7732-18-5"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_only_by_a_regulator_covering_the_holder() {
    let mut h = H::start().await;
    let (b, x) = (h.code("B"), h.code("X"));
    let issue = Payload::IssuePermit;
    h.refuse(
        "a Guangzhou regulator issuing to a Shenzhen holder",
        "ps-4401",
        issue(pp("J-1", T::PurchaseFiling, &b, AA, 1_000)),
        DENIED,
        &["issue_permit.type", "`440306` is outside", "`4401`"],
    )
    .await;
    h.refuse(
        "a Shenzhen regulator issuing to a Guangzhou holder",
        "ps-4403",
        issue(pp("J-2", T::PurchaseFiling, &x, AA, 1_000)),
        DENIED,
        &["`440104` is outside", "`4403`"],
    )
    .await;
    h.issue("ps-4403", pp("J-1", T::PurchaseFiling, &b, AA, 1_000))
        .await;
    h.issue("ps-4401", pp("J-2", T::PurchaseFiling, &x, AA, 1_000))
        .await;
    let sm = h.summary("J-1").await;
    assert_eq!(sm.issuer_key, h.key_id("ps-4403").to_string());
    assert_eq!(sm.jurisdiction, "440306");
    // Enterprise keys never issue, not even to themselves.
    for who in ["B", "S"] {
        h.refuse(
            "an enterprise key issuing a permit",
            who,
            issue(pp("J-3", T::PurchaseFiling, &b, AA, 1_000)),
            DENIED,
            &["body.signer", "ROLE_ENTERPRISE", "issue_permit"],
        )
        .await;
    }
    h.refuse(
        "a holder that is not enrolled",
        "ps",
        issue(pp(
            "J-4",
            T::PurchaseFiling,
            &code("91440300MA5PT0099"),
            AA,
            1_000,
        )),
        FP,
        &["issue_permit.holder", "not an enrolled enterprise"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_enforces_each_types_shape() {
    let mut h = H::start().await;
    let (s, b, c) = (h.code("S"), h.code("B"), h.code("C"));
    let issue = Payload::IssuePermit;
    // Category 1 transport permits are single use (Order 445 art. 26).
    for sub in [P2P, EPH] {
        h.refuse(
            "a multi-use category-1 transport permit",
            "ps",
            issue(tpermit("SH-1", T::TransportPermit, &s, sub, 1_000, &b)),
            INVALID,
            &["issue_permit.single_use", "single use"],
        )
        .await;
    }
    h.issue("ps", tpermit("SH-1", T::TransportPermit, &s, AA, 1_000, &b))
        .await;
    assert!(!h.summary("SH-1").await.single_use);
    // A quantity ceiling > 0, except for seal cards and licences.
    for (no, who, p) in [
        ("SH-2", "ps", pp("SH-2", T::PurchaseFiling, &b, AA, 0)),
        ("SH-3", "ps", pp1("SH-3", T::PurchasePermit, &b, P2P, 0)),
        ("SH-4", "drug", pp1("SH-4", T::PurchasePermit, &b, EPH, 0)),
        (
            "SH-5",
            "ps",
            tpermit("SH-5", T::TransportFiling, &s, ACE, 0, &b),
        ),
        ("SH-6", "commerce", pp("SH-6", T::ExportLicence, &s, AA, 0)),
    ] {
        h.refuse(
            &format!("{no}: a zero ceiling"),
            who,
            issue(p),
            INVALID,
            &["issue_permit.ceiling.amount", "greater than 0"],
        )
        .await;
    }
    h.refuse(
        "no ceiling at all",
        "ps",
        issue(pb::IssuePermit {
            ceiling: None,
            ..pp("SH-7", T::PurchaseFiling, &b, AA, 1)
        }),
        INVALID,
        &["issue_permit.ceiling", "required"],
    )
    .await;
    h.refuse(
        "a ceiling in millilitres for a substance counted in milligrams",
        "ps",
        issue(pb::IssuePermit {
            ceiling: Some(pb::Quantity {
                amount: 1_000,
                unit: pb::Unit::Millilitre as i32,
            }),
            ..pp("SH-8", T::PurchaseFiling, &b, AA, 1)
        }),
        INVALID,
        &["issue_permit.ceiling.unit"],
    )
    .await;
    h.issue("drug", pp("SH-9", T::PurchaseSealCard, &b, MOR, 0))
        .await;
    h.issue("emergency", pp("SH-10", T::OperatingLicence, &s, P2P, 0))
        .await;
    h.issue("drug", pp("SH-11", T::ProductionLicence, &s, MOR, 0))
        .await;
    let card = h.summary("SH-9").await;
    assert_eq!(
        (card.ceiling, card.remaining, state(&card)),
        (0, 0, St::Active)
    );
    // A permit must expire.
    for (what, v) in [
        ("open-ended validity", validity(0, 0)),
        ("no validity", None),
        ("open-ended from a start", validity(now(), 0)),
    ] {
        h.refuse(
            what,
            "ps",
            issue(pb::IssuePermit {
                validity: v,
                ..pp("SH-12", T::PurchaseFiling, &b, AA, 1_000)
            }),
            INVALID,
            &["issue_permit.validity.not_after_ms", "must expire"],
        )
        .await;
    }
    h.refuse(
        "validity ending before it starts",
        "ps",
        issue(pb::IssuePermit {
            validity: validity(now() + DAY, now()),
            ..pp("SH-12", T::PurchaseFiling, &b, AA, 1_000)
        }),
        INVALID,
        &["issue_permit.validity"],
    )
    .await;
    // Permit numbers are unique on the ledger, whatever the rest says.
    let first = h
        .issue("ps", pp("SH-DUP", T::PurchaseFiling, &b, AA, 1_000))
        .await;
    for (who, p) in [
        ("ps", pp("SH-DUP", T::PurchaseFiling, &b, AA, 1_000)),
        ("ps", pp("SH-DUP", T::PurchaseFiling, &s, ACE, 5)),
        ("drug", pp1("SH-DUP", T::PurchasePermit, &b, EPH, 5)),
    ] {
        h.refuse(
            "a permit number issued before",
            who,
            issue(p),
            Code::AlreadyExists,
            &[
                "issue_permit.permit_no",
                &format!("`SH-DUP` was issued by entry {}", first.index),
            ],
        )
        .await;
    }
    h.refuse(
        "an empty permit number",
        "ps",
        issue(pp("", T::PurchaseFiling, &b, AA, 1_000)),
        INVALID,
        &["issue_permit.permit_no"],
    )
    .await;
    // Parties.
    h.refuse(
        "the holder as its own counterparty",
        "ps",
        issue(pb::IssuePermit {
            counterparty: b.clone(),
            ..pp("SH-13", T::PurchaseFiling, &b, AA, 1_000)
        }),
        INVALID,
        &["issue_permit.counterparty", "cannot be the holder"],
    )
    .await;
    h.refuse(
        "a counterparty that is not enrolled",
        "ps",
        issue(pb::IssuePermit {
            counterparty: code("91440300MA5PT0098"),
            ..pp("SH-13", T::PurchaseFiling, &b, AA, 1_000)
        }),
        FP,
        &["issue_permit.counterparty", "not an enrolled enterprise"],
    )
    .await;
    // Transport permits name a consignee; sites and carrier must exist; the holder is the owner.
    let tp = |f: fn(&mut pb::IssuePermit)| {
        let mut p = tpermit("SH-14", T::TransportPermit, &s, AA, 1_000, &b);
        f(&mut p);
        issue(p)
    };
    for (what, p, want, needles) in [
        (
            "a transport permit without a consignee",
            tp(|p| p.consignee.clear()),
            INVALID,
            &["issue_permit.consignee", "names its consignee"][..],
        ),
        (
            "a consignee that is not enrolled",
            tp(|p| p.consignee = code("91440300MA5PT0097")),
            FP,
            &["issue_permit.consignee", "not an enrolled enterprise"][..],
        ),
        (
            "an origin site the holder does not have",
            tp(|p| p.origin_site = "b-1".into()),
            FP,
            &["issue_permit.origin_site", "has no site `b-1`"][..],
        ),
        (
            "a destination site the consignee does not have",
            tp(|p| p.destination_site = "s-1".into()),
            FP,
            &["issue_permit.destination_site", "has no site `s-1`"][..],
        ),
        (
            "an owner other than the holder",
            tp(|p| p.owner = code("91440300MA5PT0003")),
            INVALID,
            &["issue_permit.owner", "held by the owner"][..],
        ),
        (
            "a carrier that is not enrolled",
            tp(|p| p.carrier = code("91440300MA5PT0096")),
            FP,
            &["issue_permit.carrier", "not an enrolled enterprise"][..],
        ),
    ] {
        h.refuse(what, "ps", p, want, needles).await;
    }
    h.issue(
        "ps",
        pb::IssuePermit {
            origin_site: "s-1".into(),
            destination_site: "b-1".into(),
            owner: s.clone(),
            carrier: c.clone(),
            ..tpermit("SH-14", T::TransportPermit, &s, AA, 1_000, &b)
        },
    )
    .await;
    // ...and only transport permits name them.
    for (field, f) in [
        (
            "issue_permit.consignee",
            (|p: &mut pb::IssuePermit| p.consignee = code("91440300MA5PT0001"))
                as fn(&mut pb::IssuePermit),
        ),
        ("issue_permit.origin_site", |p| p.origin_site = "b-1".into()),
        ("issue_permit.carrier", |p| {
            p.carrier = code("91440300MA5PT0005")
        }),
    ] {
        let mut p = pp("SH-15", T::PurchaseFiling, &b, AA, 1_000);
        f(&mut p);
        h.refuse(
            "a purchase filing naming transport fields",
            "ps",
            issue(p),
            INVALID,
            &[field, "only transport permits"],
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Draw-downs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdraw_names_the_permit_and_its_exact_remaining() {
    let mut h = H::start().await;
    let (s, b) = (h.code("S"), h.code("B"));
    let f = h
        .issue("ps", pp("F-OD", T::PurchaseFiling, &b, AA, 5_000_000))
        .await;
    let tp = h
        .issue(
            "ps",
            tpermit("T-OD", T::TransportPermit, &s, AA, 100_000_000, &b),
        )
        .await;
    let lot = h.stock("S", "s-1", AA, 4_000_000).await;
    let go = |lot: &str, amount: u64| {
        sh("s-1", AA, lot, amount, &b, "b-1")
            .permit(&f)
            .transport(&tp)
    };
    h.ok("S", go(&lot, 2_000_000).p()).await;
    let st = h
        .refuse(
            "one milligram over the permit",
            "S",
            go(&lot, 3_000_001).p(),
            FP,
            &[],
        )
        .await;
    assert_eq!(
        st.message(),
        format!(
            "ship.quantity.amount: 3000001 exceeds permit F-OD (entry {}) remaining 3000000 mg",
            f.index
        )
    );
    // Within the permit but beyond book stock: refused for the stock, nothing drawn.
    h.refuse(
        "within the permit, beyond the lot's stock",
        "S",
        go(&lot, 2_000_001).p(),
        FP,
        &["ship.quantity.amount", "exceeds book stock 2000000"],
    )
    .await;
    // The transport permit's own ceiling is checked the same way.
    let small = h
        .issue(
            "ps",
            tpermit("T-SMALL", T::TransportPermit, &s, AA, 1_000_000, &b),
        )
        .await;
    let st = h
        .refuse(
            "over the transport permit",
            "S",
            go(&lot, 1_500_000).transport(&small).p(),
            FP,
            &[],
        )
        .await;
    assert_eq!(
        st.message(),
        format!(
            "ship.quantity.amount: 1500000 exceeds permit T-SMALL (entry {}) remaining 1000000 mg",
            small.index
        )
    );
    let sm = h.summary("F-OD").await;
    assert_eq!(
        figures(&sm),
        (St::PartiallyUsed, 2_000_000, 0, 3_000_000, 0, 1)
    );
    // Exactly the remainder (from two lots) is accepted and exhausts the permit.
    let lot2 = h.stock("S", "s-1", AA, 4_000_000).await;
    h.ok("S", go(&lot, 2_000_000).p()).await;
    h.ok("S", go(&lot2, 1_000_000).p()).await;
    let sm = h.summary("F-OD").await;
    assert_eq!(figures(&sm), (St::Exhausted, 5_000_000, 0, 0, 0, 3));
    let st = h
        .refuse(
            "one milligram on an exhausted permit",
            "S",
            go(&lot2, 1).p(),
            FP,
            &[],
        )
        .await;
    assert_eq!(
        st.message(),
        format!(
            "ship.permit: permit F-OD (entry {}) is exhausted: 5000000 of 5000000 mg drawn",
            f.index
        )
    );
    // The transport permit counted every accepted shipment too.
    let t = h.summary("T-OD").await;
    assert_eq!(
        (t.drawn, t.remaining, t.draw_downs),
        (5_000_000, 95_000_000, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_permit_closes_at_first_use_and_voids_the_rest() {
    let mut h = H::start().await;
    let (s, b) = (h.code("S"), h.code("B"));
    let f = h
        .issue(
            "ps",
            permit("F-SU", T::PurchaseFiling, &b, ACE, 1_000_000, true),
        )
        .await;
    let tf = h
        .issue(
            "ps",
            tpermit("T-ACE", T::TransportFiling, &s, ACE, 100_000_000, &b),
        )
        .await;
    let lot = h.stock("S", "s-1", ACE, 5_000_000).await;
    let go = |amount| {
        sh("s-1", ACE, &lot, amount, &b, "b-1")
            .permit(&f)
            .transport(&tf)
    };
    let first = h.ok("S", go(400_000).p()).await;
    let sm = h.summary("F-SU").await;
    assert_eq!(figures(&sm), (St::WrittenOff, 400_000, 0, 0, 600_000, 1));
    assert_eq!(sm.closed_by, Some(receipt_ref(&first)));
    assert_eq!(sm.closed_reason, "single use");
    for amount in [100_000, 600_000] {
        h.refuse(
            "a second draw on a used single-use permit",
            "S",
            go(amount).p(),
            FP,
            &[
                "ship.permit",
                &format!(
                    "permit F-SU (entry {}) is written off (entry {}: single use, used)",
                    f.index, first.index
                ),
            ],
        )
        .await;
    }
    // A category-1 transport permit (single use by law) closes the same way.
    let pur = h
        .issue("ps", pp1("PP-P2P", T::PurchasePermit, &b, P2P, 10_000_000))
        .await;
    let pur2 = h
        .issue(
            "ps",
            pp1("PP-P2P-2", T::PurchasePermit, &b, P2P, 10_000_000),
        )
        .await;
    let tp = h
        .issue(
            "ps",
            pb::IssuePermit {
                single_use: true,
                ..tpermit("T-P2P-1", T::TransportPermit, &s, P2P, 1_000_000, &b)
            },
        )
        .await;
    let plot = h.stock("S", "s-1", P2P, 5_000_000).await;
    let go1 = |pur: &pb::EntryRef, amount| {
        sh("s-1", P2P, &plot, amount, &b, "b-1")
            .permit(pur)
            .transport(&tp)
    };
    let used = h.ok("S", go1(&pur, 250_000).p()).await;
    let t = h.summary("T-P2P-1").await;
    assert_eq!(figures(&t), (St::WrittenOff, 250_000, 0, 0, 750_000, 1));
    assert_eq!(t.closed_by, Some(receipt_ref(&used)));
    h.refuse(
        "a second shipment on a single-use transport permit",
        "S",
        go1(&pur2, 250_000).p(),
        FP,
        &[
            "ship.transport_permit",
            "permit T-P2P-1",
            "single use, used",
        ],
    )
    .await;
    // The purchase permit closed at the same shipment; the fresh one is untouched.
    assert_eq!(
        figures(&h.summary("PP-P2P").await),
        (St::WrittenOff, 250_000, 0, 0, 9_750_000, 1)
    );
    assert_eq!(
        figures(&h.summary("PP-P2P-2").await),
        (St::Active, 0, 0, 10_000_000, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_not_yet_valid_permits_are_refused() {
    let mut h = H::start().await;
    let (s, b) = (h.code("S"), h.code("B"));
    let t = now();
    let expired = h
        .issue(
            "ps",
            pb::IssuePermit {
                validity: validity(0, t - 60_000),
                ..pp("F-EXP", T::PurchaseFiling, &b, AA, 1_000_000)
            },
        )
        .await;
    let future = h
        .issue(
            "ps",
            pb::IssuePermit {
                validity: validity(t + DAY, t + 30 * DAY),
                ..pp("F-FUT", T::PurchaseFiling, &b, AA, 1_000_000)
            },
        )
        .await;
    let good = h
        .issue("ps", pp("F-OK", T::PurchaseFiling, &b, AA, 1_000_000))
        .await;
    let tp = h
        .issue(
            "ps",
            tpermit("T-OK", T::TransportPermit, &s, AA, 10_000_000, &b),
        )
        .await;
    let tp_expired = h
        .issue(
            "ps",
            pb::IssuePermit {
                validity: validity(0, t - 60_000),
                ..tpermit("T-EXP", T::TransportPermit, &s, AA, 10_000_000, &b)
            },
        )
        .await;
    let tp_future = h
        .issue(
            "ps",
            pb::IssuePermit {
                validity: validity(t + DAY, t + 30 * DAY),
                ..tpermit("T-FUT", T::TransportPermit, &s, AA, 10_000_000, &b)
            },
        )
        .await;
    let lot = h.stock("S", "s-1", AA, 5_000_000).await;
    let go = || sh("s-1", AA, &lot, 1_000, &b, "b-1");
    h.refuse(
        "an expired purchase filing",
        "S",
        go().permit(&expired).transport(&tp).p(),
        FP,
        &[
            "ship.permit",
            &format!(
                "permit F-EXP (entry {}) expired at {} ms",
                expired.index,
                t - 60_000
            ),
        ],
    )
    .await;
    h.refuse(
        "a purchase filing not valid yet",
        "S",
        go().permit(&future).transport(&tp).p(),
        FP,
        &[
            "ship.permit",
            &format!(
                "permit F-FUT (entry {}) is not valid before {} ms",
                future.index,
                t + DAY
            ),
        ],
    )
    .await;
    h.refuse(
        "an expired transport permit",
        "S",
        go().permit(&good).transport(&tp_expired).p(),
        FP,
        &["ship.transport_permit", "permit T-EXP", "expired at"],
    )
    .await;
    h.refuse(
        "a transport permit not valid yet",
        "S",
        go().permit(&good).transport(&tp_future).p(),
        FP,
        &[
            "ship.transport_permit",
            "permit T-FUT",
            "is not valid before",
        ],
    )
    .await;
    h.ok("S", go().permit(&good).transport(&tp).p()).await;
    assert_eq!(state(&h.summary("F-EXP").await), St::Expired);
    assert_eq!(state(&h.summary("F-FUT").await), St::Issued);
    // Judged at another moment: the future permit is active then, the good one expired.
    let later = h.rec("F-FUT", t + 2 * DAY).await.permit.unwrap();
    assert_eq!(state(&later), St::Active);
    let after = h.rec("F-OK", t + 31 * DAY).await.permit.unwrap();
    assert_eq!((state(&after), after.remaining), (St::Expired, 999_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_written_off_permits_are_refused() {
    let mut h = H::start().await;
    let (s, b) = (h.code("S"), h.code("B"));
    let revoked = h
        .issue("ps", pp("F-REV", T::PurchaseFiling, &b, AA, 1_000_000))
        .await;
    let written = h
        .issue("ps", pp("F-WO", T::PurchaseFiling, &b, AA, 1_000_000))
        .await;
    let good = h
        .issue("ps", pp("F-OK", T::PurchaseFiling, &b, AA, 1_000_000))
        .await;
    let tp = h
        .issue(
            "ps",
            tpermit("T-OK", T::TransportPermit, &s, AA, 10_000_000, &b),
        )
        .await;
    let tp_rev = h
        .issue(
            "ps",
            tpermit("T-REV", T::TransportPermit, &s, AA, 10_000_000, &b),
        )
        .await;
    let tp_wo = h
        .issue(
            "ps",
            tpermit("T-WO", T::TransportPermit, &s, AA, 10_000_000, &b),
        )
        .await;
    let rv = h.ok("ps", revoke(&revoked, "forged application")).await;
    let wo = h.ok("B", write_off(&written, "order cancelled")).await;
    let trv = h.ok("ps", revoke(&tp_rev, "carrier banned")).await;
    let two = h.ok("S", write_off(&tp_wo, "route closed")).await;
    let lot = h.stock("S", "s-1", AA, 5_000_000).await;
    let go = || sh("s-1", AA, &lot, 1_000, &b, "b-1");
    h.refuse(
        "a revoked purchase filing",
        "S",
        go().permit(&revoked).transport(&tp).p(),
        FP,
        &[
            "ship.permit",
            &format!(
                "permit F-REV (entry {}) is revoked (entry {})",
                revoked.index, rv.index
            ),
        ],
    )
    .await;
    h.refuse(
        "a written-off purchase filing",
        "S",
        go().permit(&written).transport(&tp).p(),
        FP,
        &[
            "ship.permit",
            &format!(
                "permit F-WO (entry {}) is written off (entry {})",
                written.index, wo.index
            ),
        ],
    )
    .await;
    h.refuse(
        "a revoked transport permit",
        "S",
        go().permit(&good).transport(&tp_rev).p(),
        FP,
        &[
            "ship.transport_permit",
            &format!(
                "permit T-REV (entry {}) is revoked (entry {})",
                tp_rev.index, trv.index
            ),
        ],
    )
    .await;
    h.refuse(
        "a written-off transport permit",
        "S",
        go().permit(&good).transport(&tp_wo).p(),
        FP,
        &[
            "ship.transport_permit",
            &format!("is written off (entry {})", two.index),
        ],
    )
    .await;
    h.ok("S", go().permit(&good).transport(&tp).p()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_of_another_holder_counterparty_or_substance_is_refused() {
    let mut h = H::start().await;
    let (s, s2, b, w) = (h.code("S"), h.code("S2"), h.code("B"), h.code("W"));
    let tp = h
        .issue(
            "ps",
            tpermit("T-S", T::TransportPermit, &s, AA, 100_000_000, &b),
        )
        .await;
    let tp_s2 = h
        .issue(
            "ps",
            tpermit("T-S2", T::TransportPermit, &s2, AA, 100_000_000, &b),
        )
        .await;
    let lot = h.stock("S", "s-1", AA, 5_000_000).await;
    let lot2 = h.stock("S2", "t-1", AA, 5_000_000).await;
    let from_s = || sh("s-1", AA, &lot, 1_000, &b, "b-1").transport(&tp);
    let of_w = h
        .issue("ps", pp("F-W", T::PurchaseFiling, &w, AA, 1_000_000))
        .await;
    h.refuse(
        "the wholesaler's filing cited for a sale to the hospital",
        "S",
        from_s().permit(&of_w).p(),
        FP,
        &[
            "ship.permit",
            &format!("permit F-W (entry {}) is held by {w}, not {b}", of_w.index),
        ],
    )
    .await;
    let names_s2 = h
        .issue(
            "ps",
            pb::IssuePermit {
                counterparty: s2.clone(),
                ..pp("F-CP", T::PurchaseFiling, &b, AA, 1_000_000)
            },
        )
        .await;
    h.refuse(
        "a filing naming another seller",
        "S",
        from_s().permit(&names_s2).p(),
        FP,
        &[
            "ship.permit",
            &format!(
                "permit F-CP (entry {}) names counterparty {s2}, not {s}",
                names_s2.index
            ),
        ],
    )
    .await;
    h.ok(
        "S2",
        sh("t-1", AA, &lot2, 1_000, &b, "b-1")
            .permit(&names_s2)
            .transport(&tp_s2)
            .p(),
    )
    .await;
    // Same permit type, another substance: acetone's filing for acetic anhydride.
    let acetone = h
        .issue("ps", pp("F-ACE", T::PurchaseFiling, &b, ACE, 1_000_000))
        .await;
    h.refuse(
        "a filing for another substance",
        "S",
        from_s().permit(&acetone).p(),
        FP,
        &[
            "ship.permit",
            &format!(
                "permit F-ACE (entry {}) is for {ACE}, not {AA}",
                acetone.index
            ),
        ],
    )
    .await;
    // Same type, another category-1 substance: a P2P purchase permit for ephedrine.
    let p2p = h
        .issue("ps", pp1("PP-P2P", T::PurchasePermit, &b, P2P, 1_000_000))
        .await;
    let eph_tp = h
        .issue(
            "ps",
            pb::IssuePermit {
                single_use: true,
                ..tpermit("T-EPH", T::TransportPermit, &s, EPH, 1_000_000, &b)
            },
        )
        .await;
    let elot = h.stock("S", "s-1", EPH, 1_000_000).await;
    h.refuse(
        "a P2P purchase permit for ephedrine",
        "S",
        sh("s-1", EPH, &elot, 1_000, &b, "b-1")
            .permit(&p2p)
            .transport(&eph_tp)
            .p(),
        FP,
        &["ship.permit", &format!("is for {P2P}, not {EPH}")],
    )
    .await;
    // Transport permits: another consignor's, another substance's.
    let good = h
        .issue("ps", pp("F-OK", T::PurchaseFiling, &b, AA, 1_000_000))
        .await;
    h.refuse(
        "another consignor's transport permit",
        "S",
        sh("s-1", AA, &lot, 1_000, &b, "b-1")
            .permit(&good)
            .transport(&tp_s2)
            .p(),
        FP,
        &[
            "ship.transport_permit",
            &format!(
                "permit T-S2 (entry {}) is held by {s2}, not {s}",
                tp_s2.index
            ),
        ],
    )
    .await;
    let p2p_tp = h
        .issue(
            "ps",
            pb::IssuePermit {
                single_use: true,
                ..tpermit("T-P2P", T::TransportPermit, &s, P2P, 1_000_000, &b)
            },
        )
        .await;
    h.refuse(
        "a P2P transport permit for acetic anhydride",
        "S",
        sh("s-1", AA, &lot, 1_000, &b, "b-1")
            .permit(&good)
            .transport(&p2p_tp)
            .p(),
        FP,
        &["ship.transport_permit", &format!("is for {P2P}, not {AA}")],
    )
    .await;
    // A citation whose leaf hash is not the permit entry's.
    let mut forged = good.clone();
    forged.leaf_hash[0] ^= 1;
    h.refuse(
        "a purchase filing cited with a wrong leaf hash",
        "S",
        from_s().permit(&forged).p(),
        FP,
        &[
            "ship.permit.leaf_hash",
            &format!("does not match entry {}", good.index),
        ],
    )
    .await;
    let mut forged_tp = tp.clone();
    forged_tp.leaf_hash[31] ^= 1;
    h.refuse(
        "a transport permit cited with a wrong leaf hash",
        "S",
        sh("s-1", AA, &lot, 1_000, &b, "b-1")
            .permit(&good)
            .transport(&forged_tp)
            .p(),
        FP,
        &["ship.transport_permit.leaf_hash"],
    )
    .await;
    let mut other_index = good.clone();
    other_index.index = acetone.index;
    h.refuse(
        "one permit's index with another's leaf hash",
        "S",
        from_s().permit(&other_index).p(),
        FP,
        &["ship.permit.leaf_hash"],
    )
    .await;
    h.ok("S", from_s().permit(&good).p()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_permit_binds_consignee_carrier_and_sites() {
    let mut h = H::start().await;
    let (s, b, w, c, c2) = (
        h.code("S"),
        h.code("B"),
        h.code("W"),
        h.code("C"),
        h.code("C2"),
    );
    let tp = h
        .issue(
            "ps",
            pb::IssuePermit {
                origin_site: "s-1".into(),
                destination_site: "b-1".into(),
                carrier: c.clone(),
                ..tpermit("T-M", T::TransportPermit, &s, AA, 10_000_000, &b)
            },
        )
        .await;
    let fb = h
        .issue("ps", pp("F-B", T::PurchaseFiling, &b, AA, 10_000_000))
        .await;
    let fw = h
        .issue("ps", pp("F-W", T::PurchaseFiling, &w, AA, 10_000_000))
        .await;
    let lot1 = h.stock("S", "s-1", AA, 5_000_000).await;
    let lot2 = h.stock("S", "s-2", AA, 5_000_000).await;
    let n = |what: &str, want: &str, got: &str| {
        format!(
            "permit T-M (entry {}) names {what} `{want}`, the shipment `{got}`",
            tp.index
        )
    };
    let cases = [
        (
            "another consignee",
            sh("s-1", AA, &lot1, 1_000, &w, "w-1")
                .permit(&fw)
                .carrier(&c),
            n("consignee", &b, &w),
        ),
        (
            "no carrier",
            sh("s-1", AA, &lot1, 1_000, &b, "b-1").permit(&fb),
            n("carrier", &c, ""),
        ),
        (
            "another carrier",
            sh("s-1", AA, &lot1, 1_000, &b, "b-1")
                .permit(&fb)
                .carrier(&c2),
            n("carrier", &c, &c2),
        ),
        (
            "another origin site",
            sh("s-2", AA, &lot2, 1_000, &b, "b-1")
                .permit(&fb)
                .carrier(&c),
            n("origin site", "s-1", "s-2"),
        ),
        (
            "another destination site",
            sh("s-1", AA, &lot1, 1_000, &b, "b-2")
                .permit(&fb)
                .carrier(&c),
            n("destination site", "b-1", "b-2"),
        ),
    ];
    for (what, ship, msg) in cases {
        h.refuse(
            what,
            "S",
            ship.transport(&tp).p(),
            FP,
            &["ship.transport_permit", &msg],
        )
        .await;
    }
    h.ok(
        "S",
        sh("s-1", AA, &lot1, 1_000, &b, "b-1")
            .permit(&fb)
            .carrier(&c)
            .transport(&tp)
            .p(),
    )
    .await;
    // A permit naming only its consignee allows any site and carrier of the parties.
    let open = h
        .issue(
            "ps",
            tpermit("T-OPEN", T::TransportPermit, &s, AA, 10_000_000, &b),
        )
        .await;
    h.ok(
        "S",
        sh("s-2", AA, &lot2, 1_000, &b, "b-2")
            .permit(&fb)
            .carrier(&c2)
            .transport(&open)
            .p(),
    )
    .await;
    h.ok(
        "S",
        sh("s-1", AA, &lot1, 1_000, &b, "b-1")
            .permit(&fb)
            .transport(&open)
            .p(),
    )
    .await;
    h.refuse(
        "an open permit still binds its consignee",
        "S",
        sh("s-1", AA, &lot1, 1_000, &w, "w-1")
            .permit(&fw)
            .transport(&open)
            .p(),
        FP,
        &["ship.transport_permit", "names consignee"],
    )
    .await;
    assert_eq!(h.summary("F-B").await.drawn, 3_000);
    assert_eq!(h.summary("T-M").await.drawn, 1_000);
    assert_eq!(h.summary("T-OPEN").await.drawn, 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draws_in_one_batch_are_serialised_on_the_permit() {
    let mut h = H::start().await;
    let (s, s2, b) = (h.code("S"), h.code("S2"), h.code("B"));
    let f = h
        .issue("ps", pp("F-BATCH", T::PurchaseFiling, &b, AA, 1_000))
        .await;
    let t1 = h
        .issue(
            "ps",
            tpermit("T-1", T::TransportPermit, &s, AA, 1_000_000, &b),
        )
        .await;
    let t2 = h
        .issue(
            "ps",
            tpermit("T-2", T::TransportPermit, &s2, AA, 1_000_000, &b),
        )
        .await;
    let l1 = h.stock("S", "s-1", AA, 1_000_000).await;
    let l2 = h.stock("S2", "t-1", AA, 1_000_000).await;
    let from_s = |q| {
        sh("s-1", AA, &l1, q, &b, "b-1")
            .permit(&f)
            .transport(&t1)
            .p()
    };
    let from_s2 = |q| {
        sh("t-1", AA, &l2, q, &b, "b-1")
            .permit(&f)
            .transport(&t2)
            .p()
    };
    let r1 = h.sign("S", from_s(600));
    let r2 = h.peek("S2", from_s2(600));
    let r3 = h.sign("S2", from_s2(400));
    let r4 = h.peek("S", from_s(1));
    let results =
        h.c.submit_batch(pb::SubmitBatchRequest {
            records: vec![r1, r2, r3, r4],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    use pb::submit_result::Result as R;
    let got: Vec<String> = results
        .iter()
        .map(|r| match &r.result {
            Some(R::Receipt(_)) => "ok".to_string(),
            Some(R::Refusal(f)) => format!("{:?}: {}", Code::from(f.code), f.message),
            None => "nothing".into(),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            "ok".to_string(),
            format!(
                "FailedPrecondition: ship.quantity.amount: 600 exceeds permit F-BATCH (entry {}) remaining 400 mg",
                f.index
            ),
            "ok".to_string(),
            format!(
                "FailedPrecondition: ship.permit: permit F-BATCH (entry {}) is exhausted: 1000 of 1000 mg drawn",
                f.index
            ),
        ]
    );
    let sm = h.summary("F-BATCH").await;
    assert_eq!(figures(&sm), (St::Exhausted, 1_000, 0, 0, 0, 2));
}

// ---------------------------------------------------------------------------------------------
// 4. Write-off and revocation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_off_by_the_holder_or_a_covering_regulator_once() {
    let mut h = H::start().await;
    let (s, b) = (h.code("S"), h.code("B"));
    let f1 = h
        .issue("ps", pp("F-1", T::PurchaseFiling, &b, AA, 5_000_000))
        .await;
    let f2 = h
        .issue("ps", pp("F-2", T::PurchaseFiling, &b, AA, 5_000_000))
        .await;
    let f3 = h
        .issue("ps", pp("F-3", T::PurchaseFiling, &b, AA, 5_000_000))
        .await;
    let tp = h
        .issue(
            "ps",
            tpermit("T-1", T::TransportPermit, &s, AA, 50_000_000, &b),
        )
        .await;
    let lot = h.stock("S", "s-1", AA, 5_000_000).await;
    let shipped = h
        .ok(
            "S",
            sh("s-1", AA, &lot, 1_000_000, &b, "b-1")
                .permit(&f1)
                .transport(&tp)
                .p(),
        )
        .await;
    for who in ["S", "W", "P"] {
        h.refuse(
            "an enterprise writing off another's permit",
            who,
            write_off(&f1, "not mine"),
            DENIED,
            &[
                "write_off_permit.permit",
                &format!("permit F-1 (entry {}) is held by {b}", f1.index),
            ],
        )
        .await;
    }
    h.refuse(
        "a regulator outside the holder's jurisdiction",
        "ps-4401",
        write_off(&f1, "closing"),
        DENIED,
        &["write_off_permit.permit", "`440306` is outside", "`4401`"],
    )
    .await;
    // An inspector audits permits; it does not close them.
    let ik = SigningKey::from_bytes(&[0xB1; 32]);
    h.ok(
        "ps",
        Payload::RegisterKey(pb::RegisterKey {
            public_key: ik.verifying_key().to_bytes().to_vec(),
            role: pb::Role::Inspector as i32,
            enterprise: String::new(),
            jurisdiction: "44".into(),
            holder: "inspector".into(),
            validity: None,
        }),
    )
    .await;
    h.signers.insert("insp", RecordSigner::new(ik, ORIGIN));
    h.refuse(
        "an inspector writing off",
        "insp",
        write_off(&f1, "audit"),
        DENIED,
        &["body.signer", "ROLE_INSPECTOR", "write_off_permit"],
    )
    .await;
    h.refuse(
        "a write-off citing a shipment",
        "B",
        write_off(&receipt_ref(&shipped), "closing"),
        FP,
        &["write_off_permit.permit", "is not a permit"],
    )
    .await;
    let mut stale = f1.clone();
    stale.leaf_hash[0] ^= 1;
    h.refuse(
        "a write-off citing a wrong leaf hash",
        "B",
        write_off(&stale, "closing"),
        FP,
        &["write_off_permit.permit.leaf_hash"],
    )
    .await;
    let wo = h.ok("B", write_off(&f1, "project finished")).await;
    let sm = h.summary("F-1").await;
    assert_eq!(
        figures(&sm),
        (St::WrittenOff, 1_000_000, 0, 0, 4_000_000, 1)
    );
    assert_eq!(
        (sm.closed_by.clone(), sm.closed_reason.as_str()),
        (Some(receipt_ref(&wo)), "project finished")
    );
    for who in ["B", "ps"] {
        h.refuse(
            "a second write-off",
            who,
            write_off(&f1, "again"),
            FP,
            &[
                "write_off_permit.permit",
                &format!(
                    "permit F-1 (entry {}) is already written off (entry {})",
                    f1.index, wo.index
                ),
            ],
        )
        .await;
    }
    h.refuse(
        "revoking a written-off permit",
        "ps",
        revoke(&f1, "too late"),
        FP,
        &["revoke_permit.permit", "already written off"],
    )
    .await;
    // Regulators covering the holder: the root ("44") and Shenzhen ("4403").
    let by_root = h.ok("ps", write_off(&f2, "inspection")).await;
    let by_city = h.ok("ps-4403", write_off(&f3, "inspection")).await;
    for (no, rc) in [("F-2", &by_root), ("F-3", &by_city)] {
        let sm = h.summary(no).await;
        assert_eq!(figures(&sm), (St::WrittenOff, 0, 0, 0, 5_000_000, 0));
        assert_eq!(sm.closed_by, Some(receipt_ref(rc)));
    }
    // The shipment drawn before the write-off is still received and counted.
    h.ok("B", receive(&shipped, "b-1", 1_000_000)).await;
    let sm = h.summary("F-1").await;
    assert_eq!(
        figures(&sm),
        (St::WrittenOff, 1_000_000, 1_000_000, 0, 4_000_000, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_only_by_the_issuing_agency_and_reconcile_shows_it() {
    let mut h = H::start().await;
    let (s, b) = (h.code("S"), h.code("B"));
    // An undrawn ephedrine purchase permit (the drug regulator's), and a filing (public
    // security's) drawn once before it is revoked.
    let pur = h
        .issue("drug", pp1("PP-EPH", T::PurchasePermit, &b, EPH, 3_000_000))
        .await;
    let f = h
        .issue("ps", pp("F-AA", T::PurchaseFiling, &b, AA, 5_000_000))
        .await;
    let tp = h
        .issue(
            "ps",
            tpermit("T-AA", T::TransportPermit, &s, AA, 50_000_000, &b),
        )
        .await;
    let lot = h.stock("S", "s-1", AA, 5_000_000).await;
    let shipped = h
        .ok(
            "S",
            sh("s-1", AA, &lot, 1_000_000, &b, "b-1")
                .permit(&f)
                .transport(&tp)
                .p(),
        )
        .await;
    for who in ["ps", "ps-4403", "commerce", "emergency"] {
        h.refuse(
            "a regulator of another agency revoking",
            who,
            revoke(&pur, "suspicion"),
            DENIED,
            &["revoke_permit.permit", "issued by DRUG_REGULATION"],
        )
        .await;
    }
    for who in ["drug", "commerce"] {
        h.refuse(
            "another agency revoking a public-security filing",
            who,
            revoke(&f, "suspicion"),
            DENIED,
            &["revoke_permit.permit", "issued by PUBLIC_SECURITY"],
        )
        .await;
    }
    h.refuse(
        "the right agency outside the holder's jurisdiction",
        "drug-4401",
        revoke(&pur, "suspicion"),
        DENIED,
        &["revoke_permit.permit", "`440306` is outside", "`4401`"],
    )
    .await;
    h.refuse(
        "public security outside the holder's jurisdiction",
        "ps-4401",
        revoke(&f, "suspicion"),
        DENIED,
        &["revoke_permit.permit", "`440306` is outside"],
    )
    .await;
    h.refuse(
        "a revocation without a reason",
        "drug",
        revoke(&pur, "  "),
        INVALID,
        &["revoke_permit.reason", "must say why"],
    )
    .await;
    h.refuse(
        "the holder revoking",
        "B",
        revoke(&pur, "mine"),
        DENIED,
        &["body.signer", "ROLE_ENTERPRISE", "revoke_permit"],
    )
    .await;
    h.refuse(
        "a revocation citing a shipment",
        "ps",
        revoke(&receipt_ref(&shipped), "x"),
        FP,
        &["revoke_permit.permit", "is not a permit"],
    )
    .await;
    let rv = h.ok("drug", revoke(&pur, "diversion suspected")).await;
    let sm = h.summary("PP-EPH").await;
    assert_eq!(figures(&sm), (St::Revoked, 0, 0, 0, 3_000_000, 0));
    assert_eq!(sm.closed_by, Some(receipt_ref(&rv)));
    assert_eq!(sm.closed_reason, "diversion suspected");
    // The closing entry it cites is provable, and is this revocation by the drug regulator.
    let body = h.prove(sm.closed_by.as_ref().unwrap()).await;
    match body.payload {
        Some(Payload::RevokePermit(p)) => {
            assert_eq!(
                (p.permit, p.reason.as_str()),
                (Some(pur.clone()), "diversion suspected")
            )
        }
        other => panic!("closed_by cites {other:?}"),
    }
    assert_eq!(body.signer, h.key_id("drug").0.to_vec());
    h.refuse(
        "revoking twice",
        "drug",
        revoke(&pur, "again"),
        FP,
        &[
            "revoke_permit.permit",
            &format!(
                "permit PP-EPH (entry {}) is already revoked (entry {})",
                pur.index, rv.index
            ),
        ],
    )
    .await;
    h.refuse(
        "writing off a revoked permit",
        "B",
        write_off(&pur, "closing"),
        FP,
        &["write_off_permit.permit", "already revoked"],
    )
    .await;
    let tp_eph = h
        .issue(
            "ps",
            pb::IssuePermit {
                single_use: true,
                ..tpermit("T-EPH", T::TransportPermit, &s, EPH, 3_000_000, &b)
            },
        )
        .await;
    let elot = h.stock("S", "s-1", EPH, 1_000_000).await;
    h.refuse(
        "a shipment on the revoked permit",
        "S",
        sh("s-1", EPH, &elot, 1_000, &b, "b-1")
            .permit(&pur)
            .transport(&tp_eph)
            .p(),
        FP,
        &[
            "ship.permit",
            &format!(
                "permit PP-EPH (entry {}) is revoked (entry {})",
                pur.index, rv.index
            ),
        ],
    )
    .await;
    // A drawn filing, revoked by the city bureau: the remainder is void, the draw stands.
    let rf = h
        .ok("ps-4403", revoke(&f, "holder under investigation"))
        .await;
    let sm = h.summary("F-AA").await;
    assert_eq!(figures(&sm), (St::Revoked, 1_000_000, 0, 0, 4_000_000, 1));
    assert_eq!(
        (sm.closed_by.clone(), sm.closed_reason.as_str()),
        (Some(receipt_ref(&rf)), "holder under investigation")
    );
    h.refuse(
        "a shipment on the revoked filing",
        "S",
        sh("s-1", AA, &lot, 1_000, &b, "b-1")
            .permit(&f)
            .transport(&tp)
            .p(),
        FP,
        &["ship.permit", &format!("is revoked (entry {})", rf.index)],
    )
    .await;
    // What was shipped before the revocation still arrives, and is counted.
    h.ok("B", receive(&shipped, "b-1", 1_000_000)).await;
    let rec = h.rec("F-AA", 0).await;
    assert_eq!(
        figures(rec.permit.as_ref().unwrap()),
        (St::Revoked, 1_000_000, 1_000_000, 0, 4_000_000, 1)
    );
    assert_eq!(statuses(&rec), vec![(DrawStatus::Received, 0)]);
}

// ---------------------------------------------------------------------------------------------
// 5. Concurrent sellers on one purchase filing
// ---------------------------------------------------------------------------------------------

const RACE_CEILING: u64 = 150_000;
const RACE_SIZES: [u64; 4] = [700, 900, 1_100, 1_300];
const RACE_ROUNDS: usize = 110;

struct Drawer {
    c: Client,
    signer: RecordSigner,
    seller: String,
    site: &'static str,
    lot: String,
    buyer: String,
    filing: pb::EntryRef,
    transport: pb::EntryRef,
    offset: usize,
}

/// (ship index, quantity) of each accepted draw, and (quantity, message) of each refusal.
type Draws = (Vec<(u64, u64)>, Vec<(u64, String)>, RecordSigner);

async fn draw_repeatedly(mut d: Drawer) -> Draws {
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for i in 0..RACE_ROUNDS {
        let q = RACE_SIZES[(i + d.offset) % RACE_SIZES.len()];
        let p = sh(d.site, AA, &d.lot, q, &d.buyer, "b-1")
            .permit(&d.filing)
            .transport(&d.transport)
            .p();
        let r = peek(&d.signer, p);
        match submit(&mut d.c, r.clone()).await {
            Ok(rc) => {
                assert!(!rc.duplicate);
                commit(&mut d.signer, &r);
                accepted.push((rc.index, q));
            }
            Err(s) => {
                assert_eq!(
                    s.code(),
                    FP,
                    "{}: a refused draw: {}",
                    d.seller,
                    s.message()
                );
                assert!(
                    s.message()
                        .contains(&format!("permit F-RACE (entry {})", d.filing.index)),
                    "{}: the refusal does not name the permit: {}",
                    d.seller,
                    s.message()
                );
                refused.push((q, s.message().to_string()));
            }
        }
    }
    (accepted, refused, d.signer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sellers_never_overdraw_a_shared_purchase_filing() {
    let mut h = H::start().await;
    let (s, s2, b) = (h.code("S"), h.code("S2"), h.code("B"));
    let filing = h
        .issue("ps", pp("F-RACE", T::PurchaseFiling, &b, AA, RACE_CEILING))
        .await;
    let mut drawers = Vec::new();
    for (i, (who, credit, site)) in [("S", &s, "s-1"), ("S2", &s2, "t-1")]
        .into_iter()
        .enumerate()
    {
        let transport = h
            .issue(
                "ps",
                tpermit(
                    &format!("T-RACE-{who}"),
                    T::TransportPermit,
                    credit,
                    AA,
                    100_000_000,
                    &b,
                ),
            )
            .await;
        let lot = h.stock(who, site, AA, 10_000_000).await;
        drawers.push((
            who,
            Drawer {
                c: h.server.client().await,
                signer: h.signers.remove(who).unwrap(),
                seller: credit.clone(),
                site,
                lot,
                buyer: b.clone(),
                filing: filing.clone(),
                transport,
                offset: i,
            },
        ));
    }
    // An inspector reconciles the permit all the while: every answer is consistent.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        let mut audit = crate::common::audit_client(&h.server.url).await;
        tokio::spawn(async move {
            let (mut reads, mut last) = (0u32, 0u64);
            while !done.load(Ordering::Relaxed) {
                let r = audit
                    .reconcile_permit(pb::ReconcilePermitRequest {
                        permit: Some(by_no("F-RACE")),
                        as_of_ms: 0,
                    })
                    .await
                    .unwrap_or_else(|s| panic!("reconcile during the race: {s:?}"))
                    .into_inner();
                let p = r.permit.unwrap();
                assert!(p.drawn <= RACE_CEILING, "drawn {} > ceiling", p.drawn);
                assert!(
                    p.drawn >= last,
                    "drawn went back from {last} to {}",
                    p.drawn
                );
                assert_eq!(r.draw_downs.len(), p.draw_downs as usize);
                assert_eq!(r.draw_downs.iter().map(|d| d.shipped).sum::<u64>(), p.drawn);
                assert_eq!(p.remaining, RACE_CEILING - p.drawn);
                last = p.drawn;
                reads += 1;
            }
            reads
        })
    };
    let tasks: Vec<_> = drawers
        .into_iter()
        .map(|(who, d)| (who, d.seller.clone(), tokio::spawn(draw_repeatedly(d))))
        .collect();
    let mut outcomes = Vec::new();
    for (who, seller, t) in tasks {
        let (accepted, refused, signer) = t.await.expect("drawer task");
        h.signers.insert(who, signer);
        outcomes.push((who, seller, accepted, refused));
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.await.expect("reader task");
    assert!(reads > 0, "the inspector never read");

    let attempts: usize = outcomes.iter().map(|o| o.2.len() + o.3.len()).sum();
    assert!(attempts >= 200, "{attempts} attempts");
    let accepted_total: u64 = outcomes
        .iter()
        .flat_map(|o| o.2.iter().map(|(_, q)| q))
        .sum();
    let refusals: usize = outcomes.iter().map(|o| o.3.len()).sum();
    assert!(refusals > 0, "the ceiling was never reached");
    for (who, _, accepted, _) in &outcomes {
        assert!(!accepted.is_empty(), "{who} never drew");
    }
    assert!(accepted_total <= RACE_CEILING);
    // A refusal only when the draw did not fit: so what is left is less than the largest draw.
    assert!(
        RACE_CEILING - accepted_total < RACE_SIZES[3],
        "drawn {accepted_total}: refused draws that would have fit"
    );
    for (_, _, _, refused) in &outcomes {
        for (q, msg) in refused {
            if let Some(rest) = msg.split(" remaining ").nth(1) {
                let left: u64 = rest.trim_end_matches(" mg").parse().unwrap();
                assert!(left < *q, "{msg}");
                assert!(
                    msg.starts_with(&format!("ship.quantity.amount: {q} exceeds permit F-RACE"))
                );
            } else {
                assert!(
                    msg.ends_with(&format!(
                        "is exhausted: {RACE_CEILING} of {RACE_CEILING} mg drawn"
                    )),
                    "{msg}"
                );
            }
        }
    }
    let rec = h.rec("F-RACE", 0).await;
    let p = rec.permit.clone().unwrap();
    let want_state = if accepted_total == RACE_CEILING {
        St::Exhausted
    } else {
        St::PartiallyUsed
    };
    let n_accepted: usize = outcomes.iter().map(|o| o.2.len()).sum();
    assert_eq!(
        figures(&p),
        (
            want_state,
            accepted_total,
            0,
            RACE_CEILING - accepted_total,
            0,
            n_accepted as u32
        )
    );
    let want: BTreeSet<(u64, String, u64)> = outcomes
        .iter()
        .flat_map(|(_, seller, acc, _)| acc.iter().map(move |(i, q)| (*i, seller.clone(), *q)))
        .collect();
    let got: BTreeSet<(u64, String, u64)> = rec
        .draw_downs
        .iter()
        .map(|d| (d.ship.as_ref().unwrap().index, d.seller.clone(), d.shipped))
        .collect();
    assert_eq!(
        got, want,
        "the draw-downs are exactly the accepted shipments"
    );
    // Each seller's transport permit carried exactly its own accepted shipments.
    for (who, _, accepted, _) in &outcomes {
        let t = h.summary(&format!("T-RACE-{who}")).await;
        let sum: u64 = accepted.iter().map(|(_, q)| q).sum();
        assert_eq!((t.drawn, t.draw_downs as usize), (sum, accepted.len()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_draws_on_a_single_use_filing_have_exactly_one_winner() {
    let mut h = H::start().await;
    let (s, s2, b) = (h.code("S"), h.code("S2"), h.code("B"));
    let t1 = h
        .issue(
            "ps",
            tpermit("T-1", T::TransportPermit, &s, AA, 100_000_000, &b),
        )
        .await;
    let t2 = h
        .issue(
            "ps",
            tpermit("T-2", T::TransportPermit, &s2, AA, 100_000_000, &b),
        )
        .await;
    let l1 = h.stock("S", "s-1", AA, 10_000_000).await;
    let l2 = h.stock("S2", "t-1", AA, 10_000_000).await;
    let (mut c1, mut c2) = (h.server.client().await, h.server.client().await);
    let mut k1 = h.signers.remove("S").unwrap();
    let mut k2 = h.signers.remove("S2").unwrap();
    let mut wins = [0u32; 2];
    for round in 0..25 {
        let no = format!("SU-{round}");
        // Together the two draws fit the ceiling: only single use can refuse one.
        let f = h
            .issue("ps", permit(&no, T::PurchaseFiling, &b, AA, 10_000, true))
            .await;
        let r1 = peek(
            &k1,
            sh("s-1", AA, &l1, 3_000, &b, "b-1")
                .permit(&f)
                .transport(&t1)
                .p(),
        );
        let r2 = peek(
            &k2,
            sh("t-1", AA, &l2, 4_000, &b, "b-1")
                .permit(&f)
                .transport(&t2)
                .p(),
        );
        let (a1, a2) = tokio::join!(submit(&mut c1, r1.clone()), submit(&mut c2, r2.clone()));
        let (winner, q, loser) = match (a1, a2) {
            (Ok(w), Err(l)) => {
                commit(&mut k1, &r1);
                wins[0] += 1;
                (w, 3_000, l)
            }
            (Err(l), Ok(w)) => {
                commit(&mut k2, &r2);
                wins[1] += 1;
                (w, 4_000, l)
            }
            (a1, a2) => panic!("{no}: not exactly one winner: {a1:?} / {a2:?}"),
        };
        assert_eq!(loser.code(), FP, "{}", loser.message());
        assert_eq!(
            loser.message(),
            format!(
                "ship.permit: permit {no} (entry {}) is written off (entry {}: single use, used)",
                f.index, winner.index
            )
        );
        let sm = h.summary(&no).await;
        assert_eq!(figures(&sm), (St::WrittenOff, q, 0, 0, 10_000 - q, 1));
        assert_eq!(sm.closed_by, Some(receipt_ref(&winner)));
    }
    h.signers.insert("S", k1);
    h.signers.insert("S2", k2);
    let t = (h.summary("T-1").await, h.summary("T-2").await);
    assert_eq!(
        (t.0.draw_downs, t.1.draw_downs, t.0.drawn, t.1.drawn),
        (
            wins[0],
            wins[1],
            u64::from(wins[0]) * 3_000,
            u64::from(wins[1]) * 4_000
        )
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Reconciliation with known answers
// ---------------------------------------------------------------------------------------------

/// (kind, ship index, receive index, shipped, received, gap) of a mismatch.
type M = (MismatchKind, Option<u64>, Option<u64>, u64, u64, u64);

fn mismatches(r: &pb::PermitReconciliation) -> Vec<M> {
    let mut v: Vec<M> = r
        .mismatches
        .iter()
        .map(|m| {
            (
                MismatchKind::try_from(m.kind).unwrap(),
                m.ship.as_ref().map(|e| e.index),
                m.receive.as_ref().map(|e| e.index),
                m.shipped,
                m.received,
                m.gap,
            )
        })
        .collect();
    v.sort_by_key(|m| (m.1, m.0 as i32));
    v
}

fn statuses(r: &pb::PermitReconciliation) -> Vec<(DrawStatus, u64)> {
    r.draw_downs
        .iter()
        .map(|d| (DrawStatus::try_from(d.status).unwrap(), d.gap))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_gives_known_answers_and_cites_provable_entries() {
    let mut h = H::start().await;
    let (s, b) = (h.code("S"), h.code("B"));
    let t0 = now();
    let f = h
        .issue("ps", pp("F-REC", T::PurchaseFiling, &b, AA, 10_000_000))
        .await;
    let tp = h
        .issue(
            "ps",
            tpermit("T-REC", T::TransportPermit, &s, AA, 100_000_000, &b),
        )
        .await;
    let lot = h.stock("S", "s-1", AA, 20_000_000).await;
    let go = |amount, expected| {
        sh("s-1", AA, &lot, amount, &b, "b-1")
            .permit(&f)
            .transport(&tp)
            .expected(expected)
            .p()
    };
    // 1: received in full. 2: received short. 3: never received, due in 10 minutes.
    // 4: in transit, no expected time (the 7-day default). 5: due in 150 ms, received later.
    let s1 = h.ok("S", go(1_000_000, 0)).await;
    let r1 = h.ok("B", receive(&s1, "b-1", 1_000_000)).await;
    let s2 = h.ok("S", go(2_000_000, 0)).await;
    let r2 = h.ok("B", receive(&s2, "b-1", 1_500_000)).await;
    let due3 = now() + 600_000;
    let s3 = h.ok("S", go(1_500_000, due3)).await;
    let s4 = h.ok("S", go(500_000, 0)).await;
    let due5 = now() + 150;
    let s5 = h.ok("S", go(700_000, due5)).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r5 = h.ok("B", receive(&s5, "b-1", 700_000)).await;
    assert!(r5.integrated_time_ms > due5);
    let week = 7 * DAY;

    let as_of = now() + 3_600_000;
    let rec = h.rec("F-REC", as_of).await;
    assert_eq!(rec.as_of_ms, as_of);
    let cp =
        h.c.get_checkpoint(pb::GetCheckpointRequest::default())
            .await
            .unwrap()
            .into_inner();
    assert_eq!(rec.ledger_size, cp.size);
    let p = rec.permit.clone().unwrap();
    assert_eq!(
        figures(&p),
        (St::PartiallyUsed, 5_700_000, 3_200_000, 4_300_000, 0, 5)
    );
    assert_eq!(
        (
            p.permit_no.as_str(),
            T::try_from(p.r#type).unwrap(),
            p.holder.as_str(),
            p.counterparty.as_str(),
            p.substance.as_str(),
            pb::Unit::try_from(p.unit).unwrap(),
            p.ceiling,
            p.single_use,
            p.jurisdiction.as_str(),
        ),
        (
            "F-REC",
            T::PurchaseFiling,
            b.as_str(),
            "",
            AA,
            pb::Unit::Milligram,
            10_000_000,
            false,
            "440306"
        )
    );
    assert_eq!(p.issued_by, Some(f.clone()));
    assert_eq!(p.closed_by, None);
    assert_eq!(p.issuer_key, h.key_id("ps").to_string());
    assert!(p.validity.unwrap().not_after_ms > t0 + 29 * DAY);

    let ships = [&s1, &s2, &s3, &s4, &s5];
    let receipts = [Some(&r1), Some(&r2), None, None, Some(&r5)];
    let shipped = [1_000_000, 2_000_000, 1_500_000, 500_000, 700_000];
    let received = [1_000_000, 1_500_000, 0, 0, 700_000];
    let deadlines = [
        s1.integrated_time_ms + week,
        s2.integrated_time_ms + week,
        due3,
        s4.integrated_time_ms + week,
        due5,
    ];
    assert_eq!(
        statuses(&rec),
        vec![
            (DrawStatus::Received, 0),
            (DrawStatus::Short, 500_000),
            (DrawStatus::Overdue, 1_500_000),
            (DrawStatus::InTransit, 500_000),
            (DrawStatus::Received, 0),
        ]
    );
    for (i, d) in rec.draw_downs.iter().enumerate() {
        assert_eq!(d.ship, Some(receipt_ref(ships[i])), "draw {i}: ship");
        assert_eq!(d.receive, receipts[i].map(receipt_ref), "draw {i}: receive");
        assert_eq!(
            (
                d.seller.as_str(),
                d.seller_site.as_str(),
                d.consignee.as_str(),
                d.consignee_site.as_str(),
                d.lot.as_str(),
            ),
            (s.as_str(), "s-1", b.as_str(), "b-1", lot.as_str()),
            "draw {i}: parties"
        );
        assert_eq!(
            (
                d.shipped,
                d.received,
                d.shipped_at_ms,
                d.received_at_ms,
                d.deadline_ms
            ),
            (
                shipped[i],
                received[i],
                ships[i].integrated_time_ms,
                receipts[i].map_or(0, |r| r.integrated_time_ms),
                deadlines[i]
            ),
            "draw {i}: figures"
        );
    }
    use MismatchKind::*;
    assert_eq!(
        mismatches(&rec),
        vec![
            (
                QuantityGap,
                Some(s2.index),
                Some(r2.index),
                2_000_000,
                1_500_000,
                500_000
            ),
            (NotReceived, Some(s3.index), None, 1_500_000, 0, 1_500_000),
            (
                ReceivedLate,
                Some(s5.index),
                Some(r5.index),
                700_000,
                700_000,
                0
            ),
        ]
    );
    for m in &rec.mismatches {
        let i = ships
            .iter()
            .position(|r| Some(r.index) == m.ship.as_ref().map(|e| e.index))
            .unwrap();
        assert_eq!(m.ship, Some(receipt_ref(ships[i])));
        assert_eq!(m.receive, receipts[i].map(receipt_ref));
        assert!(!m.detail.is_empty());
    }
    assert!(rec.mismatches.iter().any(|m| m.detail.contains(&format!(
        "shipment {} of 2000000 received as 1500000: 500000 missing",
        s2.index
    ))));

    // By EntryRef: the same answer.
    let by_entry = h.reconcile(by_ref(&f), as_of).await.unwrap();
    assert_eq!(by_entry, rec);

    // Every entry it cites is provable, and is what it claims to be.
    let body = h.prove(p.issued_by.as_ref().unwrap()).await;
    match body.payload {
        Some(Payload::IssuePermit(ip)) => assert_eq!(ip.permit_no, "F-REC"),
        other => panic!("issued_by cites {other:?}"),
    }
    let mut cited = Vec::new();
    for d in &rec.draw_downs {
        cited.push((d.ship.clone().unwrap(), "ship"));
        if let Some(r) = &d.receive {
            cited.push((r.clone(), "receive"));
        }
    }
    for m in &rec.mismatches {
        cited.extend(m.ship.clone().map(|r| (r, "ship")));
        cited.extend(m.receive.clone().map(|r| (r, "receive")));
    }
    for (r, kind) in cited {
        assert!(r.index < rec.ledger_size);
        let body = h.prove(&r).await;
        match (kind, body.payload) {
            ("ship", Some(Payload::Ship(sp))) => {
                assert_eq!(sp.permit, Some(f.clone()));
                assert_eq!(body.signer, h.key_id("S").0.to_vec());
            }
            ("receive", Some(Payload::Receive(rv))) => {
                assert!(ships.iter().any(|s| rv.ship == Some(receipt_ref(s))));
                assert_eq!(body.signer, h.key_id("B").0.to_vec());
            }
            (k, other) => panic!("a cited {k} entry {} is {other:?}", r.index),
        }
    }

    // Now: shipment 3 is not due yet, so only the gap and the late receipt are mismatches.
    let now_rec = h.rec("F-REC", 0).await;
    assert_eq!(statuses(&now_rec)[2], (DrawStatus::InTransit, 1_500_000));
    assert_eq!(
        mismatches(&now_rec).iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![QuantityGap, ReceivedLate]
    );
    // Eight days on: shipment 4 is overdue too.
    let later = h.rec("F-REC", s4.integrated_time_ms + 8 * DAY).await;
    assert_eq!(statuses(&later)[3], (DrawStatus::Overdue, 500_000));
    assert_eq!(
        mismatches(&later)
            .iter()
            .map(|m| (m.0, m.1))
            .collect::<Vec<_>>(),
        vec![
            (QuantityGap, Some(s2.index)),
            (NotReceived, Some(s3.index)),
            (NotReceived, Some(s4.index)),
            (ReceivedLate, Some(s5.index)),
        ]
    );
    // Past its validity the permit is expired; its figures stand.
    let expired = h.rec("F-REC", t0 + 31 * DAY).await.permit.unwrap();
    assert_eq!(
        figures(&expired),
        (St::Expired, 5_700_000, 3_200_000, 4_300_000, 0, 5)
    );

    // The transport permit carried the same five shipments.
    let t = h.rec("T-REC", as_of).await;
    assert_eq!(
        figures(t.permit.as_ref().unwrap()),
        (St::PartiallyUsed, 5_700_000, 3_200_000, 94_300_000, 0, 5)
    );
    assert_eq!(
        t.draw_downs
            .iter()
            .map(|d| d.ship.clone())
            .collect::<Vec<_>>(),
        rec.draw_downs
            .iter()
            .map(|d| d.ship.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(mismatches(&t), mismatches(&rec));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_names_what_it_cannot_find() {
    let mut h = H::start().await;
    let (s, b) = (h.code("S"), h.code("B"));
    let f = h
        .issue("ps", pp("F-1", T::PurchaseFiling, &b, AA, 1_000_000))
        .await;
    let tp = h
        .issue(
            "ps",
            tpermit("T-1", T::TransportPermit, &s, AA, 1_000_000, &b),
        )
        .await;
    let lot = h.stock("S", "s-1", AA, 1_000_000).await;
    let shipped = h
        .ok(
            "S",
            sh("s-1", AA, &lot, 1_000, &b, "b-1")
                .permit(&f)
                .transport(&tp)
                .p(),
        )
        .await;
    let size = h.server.ledger.size();
    let code_of = |r: Result<pb::PermitReconciliation, tonic::Status>| match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    };
    let (c, m) = code_of(h.reconcile(by_no("F-404"), 0).await);
    assert_eq!(c, Code::NotFound, "{m}");
    assert!(m.contains("F-404"), "{m}");
    let (c, m) = code_of(h.reconcile(by_no("f-1"), 0).await);
    assert_eq!(c, Code::NotFound, "permit numbers are exact: {m}");
    let (c, m) = code_of(h.reconcile(by_ref(&receipt_ref(&shipped)), 0).await);
    assert_eq!(c, Code::NotFound, "{m}");
    assert!(m.contains("is not a permit"), "{m}");
    let (c, _) = code_of(
        h.reconcile(
            by_ref(&entry_ref(
                ORIGIN,
                0,
                &h.server.ledger.leaf_hash(0).unwrap(),
            )),
            0,
        )
        .await,
    );
    assert_eq!(c, Code::NotFound, "genesis is not a permit");
    let mut wrong = f.clone();
    wrong.leaf_hash[31] ^= 1;
    let (c, m) = code_of(h.reconcile(by_ref(&wrong), 0).await);
    assert_eq!(c, Code::NotFound, "{m}");
    let (c, m) = code_of(
        h.reconcile(by_ref(&entry_ref(ORIGIN, size + 5, &f.leaf_hash)), 0)
            .await,
    );
    assert_eq!(c, Code::NotFound, "{m}");
    let (c, m) = code_of(
        h.reconcile(
            by_ref(&entry_ref("taizhang.test/elsewhere", f.index, &f.leaf_hash)),
            0,
        )
        .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    let none = h
        .audit
        .reconcile_permit(pb::ReconcilePermitRequest {
            permit: None,
            as_of_ms: 0,
        })
        .await;
    assert_eq!(none.unwrap_err().code(), Code::InvalidArgument);
    // And the permit itself is found both ways.
    assert_eq!(
        h.reconcile(by_ref(&f), 0)
            .await
            .unwrap()
            .permit
            .unwrap()
            .drawn,
        1_000
    );
}

// ---------------------------------------------------------------------------------------------
// 7. ListPermits
// ---------------------------------------------------------------------------------------------

fn by_holder(h: &str, states: &[St], limit: u32, as_of_ms: u64) -> pb::ListPermitsRequest {
    pb::ListPermitsRequest {
        scope: Some(pb::list_permits_request::Scope::Holder(h.into())),
        as_of_ms,
        states: states.iter().map(|s| *s as i32).collect(),
        limit,
    }
}

fn by_region(j: &str, states: &[St], limit: u32) -> pb::ListPermitsRequest {
    pb::ListPermitsRequest {
        scope: Some(pb::list_permits_request::Scope::Jurisdiction(j.into())),
        as_of_ms: 0,
        states: states.iter().map(|s| *s as i32).collect(),
        limit,
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_permits_by_holder_and_jurisdiction_with_states_and_limits() {
    let mut h = H::start().await;
    let (s, b, w, x, c) = (
        h.code("S"),
        h.code("B"),
        h.code("W"),
        h.code("X"),
        h.code("C"),
    );
    let t = now();
    // B's permits, one in each state.
    h.issue("ps", pp("B-ACTIVE", T::PurchaseFiling, &b, AA, 1_000_000))
        .await;
    let part = h
        .issue("ps", pp("B-PART", T::PurchaseFiling, &b, AA, 1_000_000))
        .await;
    let full = h
        .issue("ps", pp("B-FULL", T::PurchaseFiling, &b, AA, 2_000))
        .await;
    h.issue(
        "ps",
        pb::IssuePermit {
            validity: validity(0, t - 1_000),
            ..pp("B-EXPIRED", T::PurchaseFiling, &b, AA, 1_000)
        },
    )
    .await;
    h.issue(
        "ps",
        pb::IssuePermit {
            validity: validity(t + DAY, t + 60 * DAY),
            ..pp("B-LATER", T::PurchaseFiling, &b, AA, 1_000)
        },
    )
    .await;
    let rev = h
        .issue("drug", pp1("B-REVOKED", T::PurchasePermit, &b, EPH, 1_000))
        .await;
    let wo = h
        .issue("drug", pp("B-CARD", T::PurchaseSealCard, &b, MOR, 0))
        .await;
    // Others': W (440307), S (440305) and X (Guangzhou, 440104).
    h.issue("ps", pp("W-1", T::PurchaseFiling, &w, AA, 1_000))
        .await;
    let ts = h
        .issue(
            "ps",
            tpermit("S-T", T::TransportPermit, &s, AA, 10_000_000, &b),
        )
        .await;
    h.issue("ps-4401", pp("X-1", T::PurchaseFiling, &x, AA, 1_000))
        .await;
    let lot = h.stock("S", "s-1", AA, 1_000_000).await;
    for (p, q) in [(&part, 1_000), (&full, 2_000)] {
        h.ok(
            "S",
            sh("s-1", AA, &lot, q, &b, "b-1")
                .permit(p)
                .transport(&ts)
                .p(),
        )
        .await;
    }
    h.ok("drug", revoke(&rev, "diversion")).await;
    h.ok("B", write_off(&wo, "closed ward")).await;
    let of_b = [
        "B-ACTIVE",
        "B-PART",
        "B-FULL",
        "B-EXPIRED",
        "B-LATER",
        "B-REVOKED",
        "B-CARD",
    ];
    assert_eq!(
        h.list(by_holder(&b, &[], 0, 0)).await,
        Ok((names(&of_b), false))
    );
    // Each with the state it is in now.
    let r = h
        .audit
        .list_permits(by_holder(&b, &[], 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.permits.iter().map(state).collect::<Vec<_>>(),
        vec![
            St::Active,
            St::PartiallyUsed,
            St::Exhausted,
            St::Expired,
            St::Issued,
            St::Revoked,
            St::WrittenOff
        ]
    );
    let p = &r.permits[1];
    assert_eq!(
        (
            p.holder.as_str(),
            p.substance.as_str(),
            p.ceiling,
            p.drawn,
            p.remaining,
            p.jurisdiction.as_str(),
            p.issued_by.clone(),
        ),
        (
            b.as_str(),
            AA,
            1_000_000,
            1_000,
            999_000,
            "440306",
            Some(part.clone())
        )
    );
    // A list answer agrees with the reconciliation of the same permit.
    assert_eq!(p, &h.summary("B-PART").await);
    assert_eq!(
        h.list(by_holder(&w, &[], 0, 0)).await,
        Ok((names(&["W-1"]), false))
    );
    assert_eq!(
        h.list(by_holder(&s, &[], 0, 0)).await,
        Ok((names(&["S-T"]), false))
    );
    assert_eq!(h.list(by_holder(&c, &[], 0, 0)).await, Ok((vec![], false)));
    assert_eq!(
        h.list(by_holder(&code("91440300MA5PT0099"), &[], 0, 0))
            .await,
        Ok((vec![], false))
    );
    assert_eq!(
        h.list(by_holder("", &[], 0, 0)).await,
        Err(Code::InvalidArgument)
    );
    // State filters.
    for (states, want) in [
        (&[St::Active][..], &["B-ACTIVE"][..]),
        (&[St::PartiallyUsed], &["B-PART"]),
        (&[St::Exhausted], &["B-FULL"]),
        (&[St::Expired], &["B-EXPIRED"]),
        (&[St::Issued], &["B-LATER"]),
        (&[St::Revoked, St::WrittenOff], &["B-REVOKED", "B-CARD"]),
        (&[St::WrittenOff, St::Active], &["B-ACTIVE", "B-CARD"]),
    ] {
        assert_eq!(
            h.list(by_holder(&b, states, 0, 0)).await,
            Ok((names(want), false)),
            "{states:?}"
        );
    }
    let bad_state = pb::ListPermitsRequest {
        states: vec![99],
        ..by_holder(&b, &[], 0, 0)
    };
    assert_eq!(h.list(bad_state).await, Err(Code::InvalidArgument));
    // Judged a month on: the active one has expired, the later one is active; closed and
    // exhausted permits stay what they are.
    let r = h
        .audit
        .list_permits(by_holder(&b, &[], 0, t + 31 * DAY))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.permits.iter().map(state).collect::<Vec<_>>(),
        vec![
            St::Expired,
            St::Expired,
            St::Exhausted,
            St::Expired,
            St::Active,
            St::Revoked,
            St::WrittenOff
        ]
    );
    // Jurisdictions: the province, the city, the district, and prefixes that match nothing.
    let all_shenzhen: Vec<&str> = of_b.iter().copied().chain(["W-1", "S-T"]).collect();
    let mut everything = all_shenzhen.clone();
    everything.push("X-1");
    for (j, want) in [
        ("44", everything.clone()),
        ("", everything.clone()),
        ("4403", all_shenzhen.clone()),
        ("440306", of_b.to_vec()),
        ("440307", vec!["W-1"]),
        ("4401", vec!["X-1"]),
        ("440104", vec!["X-1"]),
        ("4420", vec![]),
        ("440399", vec![]),
        ("11", vec![]),
    ] {
        // In issue order, whatever the holder (`want` is in issue order).
        assert_eq!(
            h.list(by_region(j, &[], 0)).await,
            Ok((names(&want), false)),
            "jurisdiction `{j}`"
        );
    }
    for bad in ["4", "440", "44030", "4403061", "44a3", "440 06"] {
        assert_eq!(
            h.list(by_region(bad, &[], 0)).await,
            Err(Code::InvalidArgument),
            "jurisdiction `{bad}`"
        );
    }
    assert_eq!(
        h.list(by_region("44", &[St::Expired, St::Issued], 0)).await,
        Ok((names(&["B-EXPIRED", "B-LATER"]), false))
    );
    assert_eq!(
        h.list(by_region("4401", &[St::Revoked], 0)).await,
        Ok((vec![], false))
    );
    // Limits: truncated only when more matched than were listed.
    assert_eq!(
        h.list(by_holder(&b, &[], 3, 0)).await,
        Ok((names(&of_b[..3]), true))
    );
    assert_eq!(
        h.list(by_holder(&b, &[], 6, 0)).await,
        Ok((names(&of_b[..6]), true))
    );
    assert_eq!(
        h.list(by_holder(&b, &[], 7, 0)).await,
        Ok((names(&of_b), false))
    );
    assert_eq!(
        h.list(by_holder(&b, &[], 1_000_000, 0)).await,
        Ok((names(&of_b), false))
    );
    assert_eq!(
        h.list(by_holder(&b, &[St::Revoked, St::WrittenOff], 1, 0))
            .await,
        Ok((names(&["B-REVOKED"]), true))
    );
    assert_eq!(
        h.list(by_holder(&b, &[St::Revoked, St::WrittenOff], 2, 0))
            .await,
        Ok((names(&["B-REVOKED", "B-CARD"]), false))
    );
    assert_eq!(
        h.list(by_region("4403", &[], 9)).await,
        Ok((names(&all_shenzhen), false))
    );
    assert_eq!(
        h.list(by_region("44", &[], 9)).await,
        Ok((names(&all_shenzhen), true))
    );
    // The limit counts matches only: later permits in other states do not truncate.
    assert_eq!(
        h.list(by_holder(&b, &[St::Active], 1, 0)).await,
        Ok((names(&["B-ACTIVE"]), false))
    );
    // State filters judge at as_of_ms.
    assert_eq!(
        h.list(by_holder(&b, &[St::Expired], 0, t + 31 * DAY)).await,
        Ok((names(&["B-ACTIVE", "B-PART", "B-EXPIRED"]), false))
    );
    assert_eq!(
        h.list(by_holder(&b, &[St::Expired], 2, t + 31 * DAY)).await,
        Ok((names(&["B-ACTIVE", "B-PART"]), true))
    );
    let no_scope = pb::ListPermitsRequest {
        scope: None,
        ..by_holder(&b, &[], 0, 0)
    };
    assert_eq!(h.list(no_scope).await, Err(Code::InvalidArgument));
}

// ---------------------------------------------------------------------------------------------
// 8. The CLI
// ---------------------------------------------------------------------------------------------

struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real `taizhang serve` (root regulator: public security, national) and waits for
/// its "listening on ADDR" line.
fn serve_bin(dir: &std::path::Path) -> (Serve, String) {
    use std::io::BufRead;
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("ledger.key"),
        crypto::secret_key_text(&ledger_key()),
    )
    .unwrap();
    std::fs::write(
        keys.join("regulator.pub"),
        crypto::public_key_text(&regulator_key().verifying_key()),
    )
    .unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--origin", ORIGIN])
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--ledger-key")
        .arg(keys.join("ledger.key"))
        .arg("--root-regulator")
        .arg(keys.join("regulator.pub"))
        .env("TAIZHANG_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let serve = Serve(child);
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    (serve, format!("http://{addr}"))
}

/// Runs `taizhang ARGS`: (success, stdout, stderr).
async fn cli(args: &[&str]) -> (bool, String, String) {
    let o = tokio::process::Command::new(bin())
        .args(args)
        .env("TAIZHANG_LOG", "warn")
        .env("TAIZHANG_QUERY_KEY", key_file(&regulator_key()))
        .output()
        .await
        .expect("run taizhang");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_audit_permit_and_permits_print_tables_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (_serve, url) = serve_bin(tmp.path());
    let mut c = client_as(&url, regulator_key()).await;
    let mut w = World::setup(&mut c).await;
    let (producer, buyer) = (w.producer.clone(), w.buyer.clone());
    let no = "粤公备-CLI-1";
    let f = receipt_ref(
        &w.issue(
            &mut c,
            permit(no, T::PurchaseFiling, &buyer, ACE, 5_000_000, false),
        )
        .await
        .expect("filing issued"),
    );
    let tf = receipt_ref(
        &w.issue(
            &mut c,
            pb::IssuePermit {
                consignee: buyer.clone(),
                ..permit(
                    "TF-CLI-1",
                    T::TransportFiling,
                    &producer,
                    ACE,
                    50_000_000,
                    false,
                )
            },
        )
        .await
        .expect("transport filing issued"),
    );
    submit(
        &mut c,
        w.p.sign(produce("plant-1", ACE, "CLI-LOT", 9_000_000), now()),
    )
    .await
    .unwrap();
    let go = |q| {
        sh("plant-1", ACE, "CLI-LOT", q, &buyer, "wh-1")
            .permit(&f)
            .transport(&tf)
            .p()
    };
    let s1 = submit(&mut c, w.p.sign(go(1_200_000), now()))
        .await
        .unwrap();
    submit(&mut c, w.b.sign(receive(&s1, "wh-1", 1_200_000), now()))
        .await
        .unwrap();
    submit(&mut c, w.p.sign(go(800_000), now())).await.unwrap();

    let (ok, out, err) = cli(&["audit", "permit", no, "--server", &url]).await;
    assert!(ok, "{out}{err}");
    for want in [
        &format!("Permit {no}"),
        "PURCHASE_FILING",
        "partially used",
        &format!("holder {buyer}"),
        ACE,
        "ceiling 5,000,000 mg",
        "drawn 2,000,000 mg",
        "received 1,200,000 mg",
        "remaining 3,000,000 mg",
        "Draw-downs (2)",
        "in transit",
        "Mismatches (0)",
        &format!("issued by entry {}", f.index),
    ] {
        assert!(out.contains(want), "table lacks `{want}`:\n{out}");
    }

    let mut audit = audit_as(&url, regulator_key()).await;
    let grpc = audit
        .reconcile_permit(pb::ReconcilePermitRequest {
            permit: Some(by_no(no)),
            as_of_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let by_entry = format!("entry:{}", f.index);
    for args in [
        ["audit", "permit", no, "--server", &url, "--json"],
        ["audit", "permit", &by_entry, "--server", &url, "--json"],
    ] {
        let (ok, out, err) = cli(&args).await;
        assert!(ok, "{args:?}: {out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        let drawn = &v["permit"]["drawn"];
        let drawn = drawn
            .as_u64()
            .or_else(|| drawn.as_str().and_then(|s| s.parse().ok()));
        assert_eq!(drawn, Some(2_000_000), "{out}");
        assert_eq!(v["permit"]["permitNo"].as_str(), Some(no), "{out}");
        let parsed: pb::PermitReconciliation = serde_json::from_str(&out).expect("proto JSON");
        assert_eq!(parsed.permit, grpc.permit, "{args:?}");
        assert_eq!(parsed.draw_downs, grpc.draw_downs, "{args:?}");
        assert_eq!(parsed.mismatches, grpc.mismatches);
    }
    let (ok, out, err) = cli(&["audit", "permits", "--holder", &buyer, "--server", &url]).await;
    assert!(ok, "{out}{err}");
    for want in [
        no,
        "PURCHASE_FILING",
        "partially used",
        "2,000,000 mg",
        "3,000,000 mg",
    ] {
        assert!(out.contains(want), "list lacks `{want}`:\n{out}");
    }
    assert!(!out.contains("TF-CLI-1"), "{out}");
    let (ok, out, _) = cli(&["audit", "permits", "--holder", &producer, "--server", &url]).await;
    assert!(ok);
    assert!(out.contains("TF-CLI-1") && !out.contains(no), "{out}");
    let (ok, out, _) = cli(&[
        "audit",
        "permits",
        "--holder",
        &buyer,
        "--state",
        "written_off",
        "--server",
        &url,
    ])
    .await;
    assert!(ok);
    assert!(!out.contains(no), "{out}");
    let (ok, out, _) = cli(&[
        "audit",
        "permits",
        "--jurisdiction",
        "4403",
        "--json",
        "--server",
        &url,
    ])
    .await;
    assert!(ok);
    let listed: pb::ListPermitsResponse = serde_json::from_str(&out).expect("proto JSON");
    assert_eq!(
        listed
            .permits
            .iter()
            .map(|p| p.permit_no.as_str())
            .collect::<Vec<_>>(),
        vec![no, "TF-CLI-1"]
    );
    // Judged a month on: expired, and the shipment still in transit is now overdue.
    let later = (now() + 31 * DAY).to_string();
    let (ok, out, err) = cli(&[
        "audit",
        "permit",
        no,
        "--server",
        &url,
        "--as-of-ms",
        &later,
    ])
    .await;
    assert!(ok, "{out}{err}");
    for want in [
        &format!("Permit {no}"),
        "— expired",
        "overdue",
        "Mismatches (1)",
        "NOT_RECEIVED",
    ] {
        assert!(
            out.contains(want),
            "table as of later lacks `{want}`:\n{out}"
        );
    }
    let (ok, out, err) = cli(&["audit", "permit", "NO-SUCH-PERMIT", "--server", &url]).await;
    assert!(!ok, "an unknown permit succeeded: {out}");
    assert!(
        err.contains("NotFound") && err.contains("NO-SUCH-PERMIT"),
        "{err}"
    );
}

/// Regression for the review of this suite: a write-off by a regulator needs the agency that
/// issues the permit (as a revocation does), and a transport permit names a consignee, never a
/// counterparty (one with a counterparty could never be drawn on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_off_by_another_agency_and_transport_counterparties_are_refused() {
    let mut h = H::start().await;
    let b = h.code("BU");
    let p = h.code("P");
    // Ephedrine purchase permits are the drug regulator's: public security may not close one.
    let permit = h
        .issue(
            "drug",
            pb::IssuePermit {
                single_use: true,
                ..pp("WO-X", T::PurchasePermit, &b, EPH, 1_000)
            },
        )
        .await;
    h.refuse(
        "write-off by public security of a drug regulator's permit",
        "ps",
        Payload::WriteOffPermit(pb::WriteOffPermit {
            permit: Some(permit.clone()),
            reason: "closing".into(),
        }),
        DENIED,
        &["write_off_permit.permit", "DRUG_REGULATION"],
    )
    .await;
    h.ok(
        "drug",
        Payload::WriteOffPermit(pb::WriteOffPermit {
            permit: Some(permit),
            reason: "closing".into(),
        }),
    )
    .await;
    h.refuse(
        "transport permit naming a counterparty",
        "ps",
        Payload::IssuePermit(pb::IssuePermit {
            counterparty: b.clone(),
            ..tpermit("TP-CP", T::TransportPermit, &p, AA, 1_000, &b)
        }),
        INVALID,
        &["issue_permit.counterparty", "consignee"],
    )
    .await;
}
