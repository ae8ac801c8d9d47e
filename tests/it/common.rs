//! Shared fixtures: a ledger served over real gRPC on 127.0.0.1:0 in a temporary directory,
//! signers for a regulator and enterprises, and helpers to build records.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use taizhang::api::auth::SignedChannel as Channel;
use taizhang::client::{entry_ref, mg, RecordSigner};
use taizhang::crypto::{self, KeyId};
use taizhang::ledger::{Config, Ledger};
use taizhang::model::{credit_code_check_char, Catalogue};
use taizhang::pb::{self, ledger_client::LedgerClient, record_body::Payload};

pub const ORIGIN: &str = "taizhang.test/ledger";
pub const EPHEDRINE: &str = "299-42-3";
pub const ACETONE: &str = "67-64-1";

pub fn regulator_key() -> SigningKey {
    SigningKey::from_bytes(&[0x52; 32])
}

/// A root regulator of national scope named in the test Genesis: the key the fixtures' clients
/// sign their queries with, so they read everything.
pub fn national_key() -> SigningKey {
    SigningKey::from_bytes(&[0x4e; 32])
}

/// The secret key file of `key`, written once into a directory that lives as long as the tests.
pub fn key_file(key: &SigningKey) -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let path = dir.path().join(format!("{}.key", key_id(key)));
    if !path.exists() {
        let tmp = dir.path().join(format!(
            "{}.tmp{:?}",
            key_id(key),
            std::thread::current().id()
        ));
        std::fs::write(&tmp, crypto::secret_key_text(key)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// A ledger client at `url` whose queries are signed by the national root regulator.
pub async fn ledger_client(url: &str) -> LedgerClient<Channel> {
    client_as(url, national_key()).await
}

/// A ledger client at `url` whose queries are signed by `key`.
pub async fn client_as(url: &str, key: SigningKey) -> LedgerClient<Channel> {
    LedgerClient::new(
        taizhang::api::auth::connect(url.to_string(), key)
            .await
            .unwrap(),
    )
    .max_decoding_message_size(64 << 20)
}

/// An audit client at `url` whose queries are signed by the national root regulator.
pub async fn audit_client(url: &str) -> pb::audit_client::AuditClient<Channel> {
    audit_as(url, national_key()).await
}

/// An audit client at `url` whose queries are signed by `key`.
pub async fn audit_as(url: &str, key: SigningKey) -> pb::audit_client::AuditClient<Channel> {
    pb::audit_client::AuditClient::new(
        taizhang::api::auth::connect(url.to_string(), key)
            .await
            .unwrap(),
    )
    .max_decoding_message_size(64 << 20)
}

pub fn ledger_key() -> SigningKey {
    SigningKey::from_bytes(&[0x4c; 32])
}

/// A valid credit code from a 17-character stem.
pub fn code(stem: &str) -> String {
    format!(
        "{stem}{}",
        credit_code_check_char(stem).expect("stem in alphabet")
    )
}

pub fn config(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        origin: ORIGIN.into(),
        root_regulators: vec![
            pb::AuthorityKey {
                public_key: regulator_key().verifying_key().to_bytes().to_vec(),
                name: "test-regulator".into(),
                agency: pb::Agency::PublicSecurity as i32,
                jurisdiction: "44".into(),
                validity: None,
            },
            pb::AuthorityKey {
                public_key: national_key().verifying_key().to_bytes().to_vec(),
                name: "test-national".into(),
                agency: pb::Agency::PublicSecurity as i32,
                jurisdiction: String::new(),
                validity: None,
            },
        ],
        ledger_key: ledger_key(),
        catalogue: Arc::new(Catalogue::embedded()),
        max_segment_bytes: taizhang::ledger::DEFAULT_SEGMENT_BYTES,
        two_person: taizhang::ledger::default_two_person(),
    }
}

/// A ledger served on loopback; dropped = server stopped.
pub struct Server {
    pub ledger: Ledger,
    pub url: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(&dir).await;
        s._tmp = Some(tmp);
        s
    }

    /// A server whose ledger puts no category under two-person control (for suites about
    /// other rules; `custody.rs` tests the control itself).
    pub async fn start_single_person() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(&tmp.path().join("data"));
        cfg.two_person = vec![];
        let mut s = Server::start_with(cfg).await;
        s._tmp = Some(tmp);
        s
    }

    pub async fn start_in(dir: &Path) -> Server {
        Server::start_with(config(dir)).await
    }

    pub async fn start_with(cfg: Config) -> Server {
        let dir = cfg.data_dir.clone();
        let (ledger, _) = Ledger::open(cfg).expect("ledger opens");
        let (listener, addr) = taizhang::api::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let l2 = ledger.clone();
        let task = tokio::spawn(async move {
            taizhang::api::serve(l2, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            ledger,
            url: format!("http://{addr}"),
            dir,
            _tmp: None,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A ledger client whose queries are signed by the national root regulator.
    pub async fn client(&self) -> LedgerClient<Channel> {
        ledger_client(&self.url).await
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self._tmp.take()
    }
}

/// Everything a scenario needs: a regulator, a producer and a buyer with keys and sites.
pub struct World {
    pub reg: RecordSigner,
    pub producer: String,
    pub buyer: String,
    pub p: RecordSigner,
    pub b: RecordSigner,
    /// Regulator keys of the other agencies, registered by the root on first use.
    pub agencies: Vec<(pb::Agency, RecordSigner)>,
    /// Permits issued so far (for unique numbers).
    pub permits_issued: u32,
}

/// Key seed of the test regulator of an agency (the root regulator is public security).
pub fn agency_key(a: pb::Agency) -> SigningKey {
    SigningKey::from_bytes(&[0x70 + a as u8; 32])
}

/// An `IssuePermit` payload valid from now for 30 days.
pub fn permit(
    no: &str,
    t: pb::PermitType,
    holder: &str,
    substance: &str,
    ceiling: u64,
    single_use: bool,
) -> pb::IssuePermit {
    pb::IssuePermit {
        permit_no: no.into(),
        r#type: t as i32,
        holder: holder.into(),
        substance: substance.into(),
        ceiling: Some(mg(ceiling)),
        validity: Some(pb::Validity {
            not_before_ms: 0,
            not_after_ms: now() + 30 * 86_400_000,
        }),
        single_use,
        ..Default::default()
    }
}

pub fn receipt_ref(r: &pb::Receipt) -> pb::EntryRef {
    entry_ref(ORIGIN, r.index, &r.leaf_hash)
}

pub fn licence(cat: pb::Category, acts: &[pb::Activity]) -> pb::Licence {
    pb::Licence {
        licence_no: format!("L-{}", cat as i32),
        category: cat as i32,
        activities: acts.iter().map(|a| *a as i32).collect(),
        validity: None,
    }
}

pub fn site(id: &str) -> pb::Site {
    pb::Site {
        site_id: id.into(),
        name: id.into(),
        address: "test".into(),
    }
}

pub fn enrol(
    code: &str,
    jurisdiction: &str,
    licences: Vec<pb::Licence>,
    sites: &[&str],
) -> Payload {
    Payload::EnrolEnterprise(pb::EnrolEnterprise {
        credit_code: code.into(),
        name: format!("enterprise {code}"),
        jurisdiction: jurisdiction.into(),
        licences,
        sites: sites.iter().map(|s| site(s)).collect(),
    })
}

pub fn register(key: &SigningKey, enterprise: &str) -> Payload {
    Payload::RegisterKey(pb::RegisterKey {
        public_key: key.verifying_key().to_bytes().to_vec(),
        role: pb::Role::Enterprise as i32,
        enterprise: enterprise.into(),
        jurisdiction: String::new(),
        holder: "test".into(),
        validity: None,
    })
}

pub async fn submit(
    c: &mut LedgerClient<Channel>,
    r: pb::SignedRecord,
) -> Result<pb::Receipt, tonic::Status> {
    c.submit(pb::SubmitRequest { record: Some(r) })
        .await
        .map(|r| r.into_inner())
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl World {
    /// Enrols a producer (category 1 and 3: produce, sell) and a buyer (purchase, sell) with one
    /// site each, and registers one key for each.
    pub async fn setup(c: &mut LedgerClient<Channel>) -> World {
        let mut reg = RecordSigner::new(regulator_key(), ORIGIN).resume(0, [0; 32]);
        let producer = code("91440300MA5PRDCR1");
        let buyer = code("91440300MA5BUYER1");
        let pk = SigningKey::from_bytes(&[0x50; 32]);
        let bk = SigningKey::from_bytes(&[0x42; 32]);
        use pb::{Activity::*, Category::*};
        for p in [
            enrol(
                &producer,
                "440305",
                vec![
                    licence(Precursor1, &[Produce, Sell]),
                    licence(Precursor3, &[Produce, Sell]),
                ],
                &["plant-1", "plant-2"],
            ),
            enrol(
                &buyer,
                "440306",
                vec![
                    licence(Precursor1, &[Purchase, Sell]),
                    licence(Precursor3, &[Purchase]),
                ],
                &["wh-1"],
            ),
            register(&pk, &producer),
            register(&bk, &buyer),
        ] {
            submit(c, reg.sign(p, now()))
                .await
                .expect("setup record accepted");
        }
        World {
            reg,
            producer,
            buyer,
            p: RecordSigner::new(pk, ORIGIN),
            b: RecordSigner::new(bk, ORIGIN),
            agencies: Vec::new(),
            permits_issued: 0,
        }
    }

    /// Signs `p` with the regulator of agency `a` (jurisdiction "44"): the root regulator for
    /// public security, otherwise a key the root registers on first use.
    pub async fn regulator_sign(
        &mut self,
        c: &mut LedgerClient<Channel>,
        a: pb::Agency,
        p: Payload,
    ) -> pb::SignedRecord {
        if a == pb::Agency::PublicSecurity {
            return self.reg.sign(p, now());
        }
        if !self.agencies.iter().any(|(x, _)| *x == a) {
            let k = agency_key(a);
            let r = self.reg.sign(
                Payload::RegisterAuthority(pb::RegisterAuthority {
                    authority: Some(pb::AuthorityKey {
                        public_key: k.verifying_key().to_bytes().to_vec(),
                        name: format!("test {}", a.as_str_name()),
                        agency: a as i32,
                        jurisdiction: "44".into(),
                        validity: None,
                    }),
                }),
                now(),
            );
            submit(c, r).await.expect("authority registered");
            self.agencies.push((a, RecordSigner::new(k, ORIGIN)));
        }
        let s = &mut self.agencies.iter_mut().find(|(x, _)| *x == a).unwrap().1;
        s.sign(p, now())
    }

    /// Issues a permit through the agency the regulation table names; returns its receipt.
    pub async fn issue(
        &mut self,
        c: &mut LedgerClient<Channel>,
        p: pb::IssuePermit,
    ) -> Result<pb::Receipt, tonic::Status> {
        let cat = Catalogue::embedded();
        let class =
            taizhang::model::regulation::Class::of(cat.get(&p.substance).expect("substance"));
        let t = pb::PermitType::try_from(p.r#type).expect("type");
        let a = taizhang::model::regulation::issuer(t, class).expect("issuer");
        let r = self.regulator_sign(c, a, Payload::IssuePermit(p)).await;
        submit(c, r).await
    }

    /// A `Ship` payload from `seller` with fresh permits attached — exactly the ones the
    /// regulation table asks for (the buyer's purchase permit, the seller's transport permit),
    /// each for `amount`, single use.
    pub async fn permitted(
        &mut self,
        c: &mut LedgerClient<Channel>,
        seller: &str,
        p: Payload,
    ) -> Payload {
        use taizhang::model::regulation::{needs, Class, Movement};
        let Payload::Ship(mut s) = p else {
            panic!("not a ship payload")
        };
        let cat = Catalogue::embedded();
        let class = Class::of(cat.get(&s.substance).expect("substance"));
        let ceiling = s.quantity.as_ref().map_or(1, |q| q.amount.max(1));
        if s.consignee != seller {
            if let Some(t) = needs(class, Movement::Purchase).needs.first() {
                self.permits_issued += 1;
                let no = format!("TP-{}", self.permits_issued);
                let r = self
                    .issue(
                        c,
                        permit(&no, *t, &s.consignee, &s.substance, ceiling, true),
                    )
                    .await
                    .expect("purchase permit issued");
                s.permit = Some(receipt_ref(&r));
            }
        }
        if let Some(t) = needs(class, Movement::Transport).needs.first() {
            self.permits_issued += 1;
            let no = format!("TT-{}", self.permits_issued);
            let mut tp = permit(&no, *t, seller, &s.substance, ceiling, true);
            tp.consignee = s.consignee.clone();
            let r = self.issue(c, tp).await.expect("transport permit issued");
            s.transport_permit = Some(receipt_ref(&r));
        }
        Payload::Ship(s)
    }
}

pub fn produce(site: &str, substance: &str, lot: &str, amount: u64) -> Payload {
    Payload::Produce(pb::Produce {
        site_id: site.into(),
        substance: substance.into(),
        lot: lot.into(),
        quantity: Some(mg(amount)),
    })
}

pub fn ship(
    site: &str,
    substance: &str,
    lot: &str,
    amount: u64,
    consignee: &str,
    consignee_site: &str,
) -> Payload {
    Payload::Ship(pb::Ship {
        site_id: site.into(),
        substance: substance.into(),
        lot: lot.into(),
        quantity: Some(mg(amount)),
        consignee: consignee.into(),
        consignee_site: consignee_site.into(),
        payment_method: "bank_transfer".into(),
        ..Default::default()
    })
}

pub fn receive(ship: &pb::Receipt, site: &str, amount: u64) -> Payload {
    Payload::Receive(pb::Receive {
        ship: Some(entry_ref(ORIGIN, ship.index, &ship.leaf_hash)),
        site_id: site.into(),
        quantity: Some(mg(amount)),
        lot: String::new(),
    })
}

pub fn stock_take(site: &str, substance: &str, lot: &str, amount: u64) -> Payload {
    Payload::StockTake(pb::StockTake {
        site_id: site.into(),
        counts: vec![pb::StockCount {
            substance: substance.into(),
            lot: lot.into(),
            quantity: Some(mg(amount)),
        }],
    })
}

pub fn key_id(k: &SigningKey) -> KeyId {
    KeyId::of(&k.verifying_key())
}

pub fn sign_raw(key: &SigningKey, body: &pb::RecordBody) -> pb::SignedRecord {
    let bytes = taizhang::codec::encode_body(body);
    let signature = crypto::sign_record(key, &bytes).to_vec();
    pb::SignedRecord {
        body: bytes,
        signature,
        cosignatures: vec![],
    }
}

/// Signs `payload` at the signer's next position without advancing it (for records expected
/// to be refused).
pub fn peek(s: &RecordSigner, payload: Payload) -> pb::SignedRecord {
    s.sign_detached(payload, now())
}

/// Path of the built `taizhang` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_taizhang"))
}

/// Submits a small scenario and returns the number of entries.
pub async fn scenario(s: &Server) -> u64 {
    let mut c = s.client().await;
    let mut w = World::setup(&mut c).await;
    submit(
        &mut c,
        w.p.sign(produce("plant-1", EPHEDRINE, "LOT-A", 5_000_000), now()),
    )
    .await
    .unwrap();
    let producer = w.producer.clone();
    let buyer = w.buyer.clone();
    let sp = w
        .permitted(
            &mut c,
            &producer,
            ship("plant-1", EPHEDRINE, "LOT-A", 2_000_000, &buyer, "wh-1"),
        )
        .await;
    let sh = submit(&mut c, w.p.sign(sp, now())).await.unwrap();
    submit(&mut c, w.b.sign(receive(&sh, "wh-1", 1_999_000), now()))
        .await
        .unwrap();
    submit(
        &mut c,
        w.p.sign(stock_take("plant-1", EPHEDRINE, "LOT-A", 3_000_000), now()),
    )
    .await
    .unwrap();
    submit(
        &mut c,
        w.p.sign(produce("plant-2", ACETONE, "ACE-1", 9_000_000), now()),
    )
    .await
    .unwrap();
    s.ledger.size()
}

// ---------------------------------------------------------------------------------------------
// Helpers for custody.rs: keys of named holders, officials, and co-signed records.
// ---------------------------------------------------------------------------------------------

/// Registers an enterprise key held by `holder` (two-person control compares holders).
pub fn register_held(key: &SigningKey, enterprise: &str, holder: &str) -> Payload {
    Payload::RegisterKey(pb::RegisterKey {
        public_key: key.verifying_key().to_bytes().to_vec(),
        role: pb::Role::Enterprise as i32,
        enterprise: enterprise.into(),
        jurisdiction: String::new(),
        holder: holder.into(),
        validity: None,
    })
}

/// Registers an inspector or witness key covering `jurisdiction`.
pub fn register_official(
    key: &SigningKey,
    role: pb::Role,
    jurisdiction: &str,
    holder: &str,
) -> Payload {
    Payload::RegisterKey(pb::RegisterKey {
        public_key: key.verifying_key().to_bytes().to_vec(),
        role: role as i32,
        enterprise: String::new(),
        jurisdiction: jurisdiction.into(),
        holder: holder.into(),
        validity: None,
    })
}

/// Signs `payload` at the signer's next position with co-signatures by `cosigners` over the
/// same body, without advancing the signer (see [`advance`]).
pub fn cosigned(s: &RecordSigner, payload: Payload, cosigners: &[&SigningKey]) -> pb::SignedRecord {
    let body = taizhang::codec::encode_body(&s.body(payload, now()));
    pb::SignedRecord {
        signature: crypto::sign_record(s.key(), &body).to_vec(),
        cosignatures: cosigners
            .iter()
            .map(|k| pb::Cosignature {
                key_id: key_id(k).0.to_vec(),
                signature: crypto::cosign_record(k, &body).to_vec(),
            })
            .collect(),
        body,
    }
}

/// Moves a signer past a record it signed without advancing that the ledger accepted.
pub fn advance(s: &mut RecordSigner, accepted: &pb::SignedRecord) {
    let next = s.next_seq() + 1;
    *s = RecordSigner::new(s.key().clone(), ORIGIN).resume(next, crypto::body_hash(&accepted.body));
}
