//! `taizhang demo`: a city's month of precursor and controlled-drug movements played over the
//! real gRPC service, with the anomalies inspectors hunt for injected into it; then the audits
//! that must find exactly those, the HTML report, and the offline verification of everything.
//!
//! The city (Shenzhen, division 4403): a pharmaceutical producer, a chemical producer, two
//! chemical distributors, a designated narcotics wholesaler, a pharmaceutical user, four
//! chemical users, two hospitals, a carrier and an importer/exporter; the root regulator, the
//! city public-security bureau, the provincial drug regulator, commerce, customs, a city
//! inspector; two witnesses of other departments. Keys are derived from fixed names, so two runs
//! play the same records (only the times differ). The ledger's times are its own clock: the
//! "month" is played in seconds, day by day.

use crate::cli::{connect, credit_code, export, now_ms, DEV_ORIGIN};
use crate::cli_audit::Querier;
use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::SigningKey;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use taizhang::api::auth::SignedChannel;
use taizhang::client::{entry_ref, mg, RecordSigner};
use taizhang::crypto::{self, KeyId};
use taizhang::ledger::{self, Config, Ledger};
use taizhang::model::Catalogue;
use taizhang::pb::{self, ledger_client::LedgerClient, record_body::Payload, Activity, Category};

const EPH: &str = "299-42-3"; // ephedrine: category 1, pharmaceutical
const MOR: &str = "57-27-2"; // morphine: narcotic (two-person control)
const DZP: &str = "439-14-5"; // diazepam: class II psychotropic
const AA: &str = "108-24-7"; // acetic anhydride: category 2
const ACE: &str = "67-64-1"; // acetone: category 3
const TOL: &str = "108-88-3"; // toluene: category 3
const G: u64 = 1_000;
const KG: u64 = 1_000_000;
const DAY_MS: u64 = 86_400_000;

pub struct Opts {
    pub data: Option<PathBuf>,
    pub days: u32,
}

/// Key of a named demo party: derived from its name, so every run plays the same records.
fn demo_key(name: &str) -> SigningKey {
    SigningKey::from_bytes(&blake3::derive_key(
        "taizhang demo key 2026-12-01",
        name.as_bytes(),
    ))
}

struct Ent {
    short: &'static str,
    code: String,
    name: &'static str,
    jurisdiction: &'static str,
    site: &'static str,
    licences: Vec<(Category, Vec<Activity>)>,
    /// Under two-person control for narcotics: a second key, held by another person.
    two_person: bool,
}

struct Actor {
    s: RecordSigner,
    second: Option<SigningKey>,
}

/// What was injected, by the entries that carry it.
#[derive(Default)]
struct Injected {
    short_ship: Option<u64>,
    never_received: Option<(u64, u64)>,
    shortfall: Option<u64>,
    theft: Option<u64>,
    short_endorsement: Option<u64>,
    refused: Vec<(&'static str, tonic::Status)>,
}

struct City {
    c: LedgerClient<SignedChannel>,
    actors: BTreeMap<&'static str, Actor>,
    ents: BTreeMap<&'static str, Ent>,
    /// The demo's own books: (enterprise, substance, lot) → quantity (one site per enterprise).
    books: BTreeMap<(&'static str, &'static str, String), u64>,
    /// Permits by purpose: `buy:SUB:TO`, `tr:SUB:FROM:TO`, `import`, `export`, `seal:TO`.
    permits: BTreeMap<String, pb::EntryRef>,
    permit_seq: u32,
    records: u64,
    injected: Injected,
    bar: ProgressBar,
}

fn lic(cat: Category, acts: &[Activity]) -> (Category, Vec<Activity>) {
    (cat, acts.to_vec())
}

fn enterprises() -> Vec<Ent> {
    use Activity::*;
    use Category::*;
    let e = |short, stem: &str, name, jurisdiction, site, licences, two_person| Ent {
        short,
        code: credit_code(stem),
        name,
        jurisdiction,
        site,
        licences,
        two_person,
    };
    vec![
        e(
            "P",
            "91440300MA5NLPHM1",
            "深圳南岭制药有限公司",
            "440305",
            "plant",
            vec![
                lic(Precursor1, &[Produce, Sell]),
                lic(Narcotic, &[Produce, Sell]),
                lic(Psychotropic2, &[Produce, Sell]),
            ],
            true,
        ),
        e(
            "C",
            "91440300MA5WANCH1",
            "深圳湾化工有限公司",
            "440306",
            "works",
            vec![lic(Precursor3, &[Produce, Sell])],
            false,
        ),
        e(
            "D1",
            "91440300MA5PCHEM1",
            "鹏城化学品经营有限公司",
            "440303",
            "warehouse",
            vec![
                lic(Precursor2, &[Purchase, Sell]),
                lic(Precursor3, &[Purchase, Sell]),
            ],
            false,
        ),
        e(
            "D2",
            "91440300MA5QHTRD1",
            "前海化工贸易有限公司",
            "440305",
            "warehouse",
            vec![lic(Precursor3, &[Purchase, Sell])],
            false,
        ),
        e(
            "W",
            "91440300MA5HNMED1",
            "华南医药物流有限公司",
            "440304",
            "dc",
            vec![
                lic(Narcotic, &[Purchase, Sell]),
                lic(Psychotropic2, &[Purchase, Sell]),
            ],
            true,
        ),
        e(
            "M",
            "91440300MA5KTPHA1",
            "康泰药业有限公司",
            "440307",
            "plant",
            vec![lic(Precursor1, &[Purchase, Use])],
            false,
        ),
        e(
            "U1",
            "91440300MA5HYPNT1",
            "华彩涂料有限公司",
            "440306",
            "plant",
            vec![
                lic(Precursor2, &[Purchase, Use]),
                lic(Precursor3, &[Purchase, Use]),
            ],
            false,
        ),
        e(
            "U2",
            "91440300MA5XDELC1",
            "芯电电子科技有限公司",
            "440303",
            "fab",
            vec![lic(Precursor3, &[Purchase, Use])],
            false,
        ),
        e(
            "U3",
            "91440300MA5YNPRT1",
            "印南印刷有限公司",
            "440307",
            "plant",
            vec![lic(Precursor3, &[Purchase, Use])],
            false,
        ),
        e(
            "U4",
            "12440300MB2UNLAB1",
            "深圳大学分析测试中心",
            "440305",
            "lab",
            vec![lic(Precursor3, &[Purchase, Use])],
            false,
        ),
        e(
            "H1",
            "12440300MB2HPT011",
            "深圳市第一人民医院",
            "440303",
            "pharmacy",
            vec![
                lic(Narcotic, &[Purchase, Use]),
                lic(Psychotropic2, &[Purchase, Use]),
            ],
            true,
        ),
        e(
            "H2",
            "12440300MB2HPT021",
            "南山区人民医院",
            "440305",
            "pharmacy",
            vec![
                lic(Narcotic, &[Purchase, Use]),
                lic(Psychotropic2, &[Purchase, Use]),
            ],
            true,
        ),
        e(
            "K",
            "91440300MA5KHNAT1",
            "顺安危险品运输有限公司",
            "440306",
            "depot",
            vec![
                lic(Precursor1, &[Transport]),
                lic(Precursor2, &[Transport]),
                lic(Precursor3, &[Transport]),
            ],
            false,
        ),
        e(
            "T",
            "91440300MA5GKTRD1",
            "深港进出口贸易有限公司",
            "440304",
            "port",
            vec![lic(Precursor2, &[Import, Export, Sell, Purchase])],
            false,
        ),
    ]
}

/// Quantities for people: kg, g or mg.
pub fn qty(mg: u64) -> String {
    let (whole, frac, unit) = if mg >= KG && mg.is_multiple_of(G) {
        (mg / KG, format!("{:03}", (mg % KG) / G), "kg")
    } else if mg >= G && mg.is_multiple_of(100) {
        (mg / G, format!("{}", (mg % G) / 100), "g")
    } else {
        (mg, String::new(), "mg")
    };
    let frac = frac.trim_end_matches('0');
    let whole = crate::cli_audit::thousands(whole);
    if frac.is_empty() {
        format!("{whole} {unit}")
    } else {
        format!("{whole}.{frac} {unit}")
    }
}

impl City {
    fn code(&self, who: &str) -> String {
        self.ents[who].code.clone()
    }

    fn site(&self, who: &str) -> &'static str {
        self.ents[who].site
    }

    fn sign(&mut self, who: &str, p: Payload, cosign: bool, advance: bool) -> pb::SignedRecord {
        let a = self.actors.get_mut(who).expect("a demo actor");
        let second = if cosign { a.second.clone() } else { None };
        let co: Vec<&SigningKey> = second.iter().collect();
        let body = taizhang::codec::encode_body(&a.s.body(p, now_ms()));
        if advance {
            a.s.sign_bytes(body, &co)
        } else {
            // Not advancing the chain: a refused record takes no seq.
            pb::SignedRecord {
                signature: crypto::sign_record(a.s.key(), &body).to_vec(),
                cosignatures: co
                    .iter()
                    .map(|k| pb::Cosignature {
                        key_id: KeyId::of(&k.verifying_key()).0.to_vec(),
                        signature: crypto::cosign_record(k, &body).to_vec(),
                    })
                    .collect(),
                body,
            }
        }
    }

    /// Signs and submits; a refusal here is a bug in the demo.
    async fn put_as(&mut self, who: &str, p: Payload, cosign: bool) -> Result<pb::Receipt> {
        let what = taizhang::ledger::rules::kind_name(&p);
        let r = self.sign(who, p, cosign, true);
        let receipt = self
            .c
            .submit(pb::SubmitRequest { record: Some(r) })
            .await
            .map_err(|s| anyhow!("{who}'s {what} refused: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        self.records += 1;
        self.bar.set_message(format!("{} records", self.records));
        Ok(receipt)
    }

    async fn put(&mut self, who: &str, p: Payload) -> Result<pb::Receipt> {
        self.put_as(who, p, false).await
    }

    /// Under two-person control: co-signed by the enterprise's second key holder.
    async fn put2(&mut self, who: &str, p: Payload) -> Result<pb::Receipt> {
        self.put_as(who, p, true).await
    }

    /// Submits a record that the ledger must refuse; records the refusal.
    async fn refused(&mut self, what: &'static str, who: &str, p: Payload) -> Result<()> {
        let r = self.sign(who, p, false, false);
        match self.c.submit(pb::SubmitRequest { record: Some(r) }).await {
            Ok(r) => bail!("{what}: accepted as entry {}", r.into_inner().index),
            Err(s) => {
                self.injected.refused.push((what, s));
                Ok(())
            }
        }
    }

    async fn issue(&mut self, by: &str, p: pb::IssuePermit) -> Result<pb::EntryRef> {
        let r = self.put(by, Payload::IssuePermit(p)).await?;
        Ok(entry_ref(DEV_ORIGIN, r.index, &r.leaf_hash))
    }

    fn permit_no(&mut self, prefix: &str) -> String {
        self.permit_seq += 1;
        format!("{prefix}-2026-{:04}", self.permit_seq)
    }

    fn add(&mut self, who: &'static str, sub: &'static str, lot: &str, q: u64) {
        *self.books.entry((who, sub, lot.to_string())).or_default() += q;
    }

    fn take(&mut self, who: &'static str, sub: &'static str, lot: &str, q: u64) {
        let k = (who, sub, lot.to_string());
        let b = self
            .books
            .get_mut(&k)
            .expect("the demo takes only what it holds");
        *b -= q;
        if *b == 0 {
            self.books.remove(&k);
        }
    }

    /// The oldest lot holding at least `q` (lot names sort by day).
    fn lot_with(&self, who: &'static str, sub: &'static str, q: u64) -> Option<String> {
        self.books
            .iter()
            .find(|((w, s, _), b)| *w == who && *s == sub && **b >= q)
            .map(|((_, _, l), _)| l.clone())
    }

    /// The oldest lot with any stock, and how much.
    fn oldest_lot(&self, who: &'static str, sub: &'static str) -> Option<(String, u64)> {
        self.books
            .iter()
            .find(|((w, s, _), _)| *w == who && *s == sub)
            .map(|((_, _, l), b)| (l.clone(), *b))
    }

    async fn produce(
        &mut self,
        who: &'static str,
        sub: &'static str,
        lot: String,
        q: u64,
    ) -> Result<()> {
        let p = Payload::Produce(pb::Produce {
            site_id: self.site(who).into(),
            substance: sub.into(),
            lot: lot.clone(),
            quantity: Some(mg(q)),
        });
        if sub == MOR {
            self.put2(who, p).await?;
        } else {
            self.put(who, p).await?;
        }
        self.add(who, sub, &lot, q);
        Ok(())
    }

    fn ship_payload(
        &self,
        from: &'static str,
        to: &'static str,
        sub: &'static str,
        lot: &str,
        q: u64,
    ) -> pb::Ship {
        let get = |k: String| self.permits.get(&k).cloned();
        let permit = get(format!("buy:{sub}:{to}"))
            .or_else(|| get(format!("seal:{to}")).filter(|_| sub == MOR));
        pb::Ship {
            site_id: self.site(from).into(),
            substance: sub.into(),
            lot: lot.into(),
            quantity: Some(mg(q)),
            consignee: self.code(to),
            consignee_site: self.site(to).into(),
            permit,
            transport_permit: get(format!("tr:{sub}:{from}:{to}")),
            expected_delivery_ms: now_ms() + 2 * DAY_MS,
            payment_method: "bank_transfer".into(),
            ..Default::default()
        }
    }

    /// Ships `q` of the seller's oldest sufficient lot; the seller's books go down.
    async fn ship(
        &mut self,
        from: &'static str,
        to: &'static str,
        sub: &'static str,
        q: u64,
    ) -> Result<Option<(pb::Receipt, String)>> {
        let Some(lot) = self.lot_with(from, sub, q) else {
            return Ok(None);
        };
        let s = self.ship_payload(from, to, sub, &lot, q);
        let r = if sub == MOR {
            self.put2(from, Payload::Ship(s)).await?
        } else {
            self.put(from, Payload::Ship(s)).await?
        };
        self.take(from, sub, &lot, q);
        Ok(Some((r, lot)))
    }

    async fn receive(
        &mut self,
        to: &'static str,
        sub: &'static str,
        ship: &pb::Receipt,
        lot: &str,
        q: u64,
    ) -> Result<pb::Receipt> {
        let p = Payload::Receive(pb::Receive {
            ship: Some(entry_ref(DEV_ORIGIN, ship.index, &ship.leaf_hash)),
            site_id: self.site(to).into(),
            quantity: Some(mg(q)),
            lot: String::new(),
        });
        let r = if sub == MOR {
            self.put2(to, p).await?
        } else {
            self.put(to, p).await?
        };
        self.add(to, sub, lot, q);
        Ok(r)
    }

    /// A sale: ship and receive in full.
    async fn trade(
        &mut self,
        from: &'static str,
        to: &'static str,
        sub: &'static str,
        q: u64,
    ) -> Result<()> {
        if let Some((r, lot)) = self.ship(from, to, sub, q).await? {
            self.receive(to, sub, &r, &lot, q).await?;
        }
        Ok(())
    }

    /// Uses up to `q` from the oldest lot.
    async fn consume(
        &mut self,
        who: &'static str,
        sub: &'static str,
        q: u64,
        purpose: String,
    ) -> Result<()> {
        let Some((lot, have)) = self.oldest_lot(who, sub) else {
            return Ok(());
        };
        let q = q.min(have);
        let p = Payload::Consume(pb::Consume {
            site_id: self.site(who).into(),
            substance: sub.into(),
            lot: lot.clone(),
            quantity: Some(mg(q)),
            purpose,
        });
        if sub == MOR {
            self.put2(who, p).await?;
        } else {
            self.put(who, p).await?;
        }
        self.take(who, sub, &lot, q);
        Ok(())
    }

    /// Every enterprise counts every lot it holds, as its book says (but `short`).
    async fn stock_takes(
        &mut self,
        short: Option<(&'static str, &'static str, u64)>,
    ) -> Result<()> {
        let holders: Vec<&'static str> = self.ents.keys().copied().collect();
        for who in holders {
            let mut counts: Vec<pb::StockCount> = self
                .books
                .iter()
                .filter(|((w, _, _), _)| *w == who)
                .map(|((_, s, l), q)| pb::StockCount {
                    substance: s.to_string(),
                    lot: l.clone(),
                    quantity: Some(mg(*q)),
                })
                .collect();
            if counts.is_empty() {
                continue;
            }
            let mut shorted = false;
            if let Some((w, s, by)) = short {
                if w == who {
                    if let Some(c) = counts.iter_mut().find(|c| {
                        c.substance == s && c.quantity.as_ref().is_some_and(|q| q.amount > by)
                    }) {
                        c.quantity = Some(mg(c.quantity.as_ref().map_or(0, |q| q.amount) - by));
                        shorted = true;
                    }
                }
            }
            let r = self
                .put(
                    who,
                    Payload::StockTake(pb::StockTake {
                        site_id: self.site(who).into(),
                        counts,
                    }),
                )
                .await?;
            if shorted {
                self.injected.shortfall = Some(r.index);
            }
        }
        Ok(())
    }
}

/// A permit valid from now for 60 days (a year for trade licences).
fn permit(
    no: String,
    t: pb::PermitType,
    holder: String,
    sub: &str,
    ceiling: u64,
    single_use: bool,
) -> pb::IssuePermit {
    let days = if matches!(
        t,
        pb::PermitType::ImportLicence | pb::PermitType::ExportLicence
    ) {
        365
    } else {
        60
    };
    pb::IssuePermit {
        permit_no: no,
        r#type: t as i32,
        holder,
        substance: sub.into(),
        ceiling: Some(mg(ceiling)),
        validity: Some(pb::Validity {
            not_before_ms: 0,
            not_after_ms: now_ms() + days * DAY_MS,
        }),
        single_use,
        ..Default::default()
    }
}

fn authority(key: &SigningKey, name: &str, agency: pb::Agency, jurisdiction: &str) -> Payload {
    Payload::RegisterAuthority(pb::RegisterAuthority {
        authority: Some(pb::AuthorityKey {
            public_key: key.verifying_key().to_bytes().to_vec(),
            name: name.into(),
            agency: agency as i32,
            jurisdiction: jurisdiction.into(),
            validity: None,
        }),
    })
}

fn official(key: &SigningKey, role: pb::Role, jurisdiction: &str, holder: &str) -> Payload {
    Payload::RegisterKey(pb::RegisterKey {
        public_key: key.verifying_key().to_bytes().to_vec(),
        role: role as i32,
        enterprise: String::new(),
        jurisdiction: jurisdiction.into(),
        holder: holder.into(),
        validity: None,
    })
}

pub async fn run(opts: Opts) -> Result<ExitCode> {
    if !(7..=365).contains(&opts.days) {
        bail!(
            "--days: 7 (a week between stock takes) to 365, got {}",
            opts.days
        );
    }
    let days = opts.days;
    // The data dir is kept after the demo, so the export, the report and the verification
    // commands it prints work afterwards.
    let dir = match opts.data {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("taizhang-demo-")
            .tempdir()?
            .keep(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("--data {}", dir.display()))?;
    let regulator = crypto::parse_secret_key_text(include_str!("../keys/dev-regulator.key"))?;
    let ledger_key = crypto::parse_secret_key_text(include_str!("../keys/dev-ledger.key"))?;
    let cfg = Config {
        data_dir: dir.join("ledger"),
        origin: DEV_ORIGIN.into(),
        root_regulators: vec![pb::AuthorityKey {
            public_key: regulator.verifying_key().to_bytes().to_vec(),
            name: "dev-regulator".into(),
            agency: pb::Agency::PublicSecurity as i32,
            jurisdiction: String::new(),
            validity: None,
        }],
        ledger_key: ledger_key.clone(),
        catalogue: Arc::new(Catalogue::embedded()),
        max_segment_bytes: ledger::DEFAULT_SEGMENT_BYTES,
        two_person: ledger::default_two_person(),
    };
    let (ledger, _) = Ledger::open(cfg).map_err(|e| anyhow!("{e}"))?;
    if ledger.size() > 1 {
        bail!(
            "--data {}: this ledger already has {} entries; the demo needs a new directory",
            dir.display(),
            ledger.size()
        );
    }

    // Two witnesses of other departments, each with its own state.
    let mut targets = Vec::new();
    let mut witness_vkeys = Vec::new();
    let mut witness_keys = Vec::new();
    let mut tasks = Vec::new();
    for (i, name) in [
        (1, "witness.sz-amr.example/w1"),
        (2, "witness.sz-emergency.example/w2"),
    ] {
        let key = demo_key(name);
        let verifier =
            taizhang::checkpoint::NoteVerifier::new(DEV_ORIGIN, ledger_key.verifying_key())
                .map_err(|e| anyhow!("{e}"))?;
        let file = taizhang::store::witness::WitnessFile::open(&dir.join(format!("witness-{i}")))?;
        let svc = Arc::new(
            taizhang::api::witness::WitnessService::open(name, key.clone(), verifier, file)
                .map_err(|e| anyhow!("{e}"))?,
        );
        let (listener, addr) = taizhang::api::bind("127.0.0.1:0").await?;
        let vkey = svc.vkey();
        targets.push(
            taizhang::api::witnessing::Target::parse(&format!("{vkey}@http://{addr}"))
                .map_err(|e| anyhow!("{e}"))?,
        );
        witness_vkeys.push(vkey);
        witness_keys.push((name, key));
        tasks.push(tokio::spawn(taizhang::api::witness::serve(
            svc,
            listener,
            std::future::pending(),
        )));
    }
    let (listener, addr) = taizhang::api::bind("127.0.0.1:0").await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(taizhang::api::serve_opts(
        ledger,
        listener,
        async {
            let _ = stop_rx.await;
        },
        taizhang::api::ServeOptions {
            witnessing: Some(taizhang::api::witnessing::Witnessing {
                targets,
                quorum: 2,
                interval: Duration::from_millis(250),
            }),
            ..Default::default()
        },
    ));
    let url = format!("http://{addr}");
    println!(
        "Taizhang demo: ledger {DEV_ORIGIN} on {url}, data in {}",
        dir.display()
    );
    println!(
        "Shenzhen (4403), {days} days: 14 enterprises, 6 authorities, 2 witnesses; movements of \
         ephedrine, morphine, diazepam, acetic anhydride, acetone and toluene\n"
    );

    let q = Querier {
        key: regulator.clone(),
        tls_ca: None,
    };
    let client = connect(&url, &q).await?;
    let bar = ProgressBar::new(u64::from(days) + 2);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
            .map_err(|e| anyhow!("{e}"))?
            .progress_chars("=> "),
    );
    bar.set_prefix("setting up");
    let mut city = City {
        c: client,
        actors: BTreeMap::new(),
        ents: enterprises().into_iter().map(|e| (e.short, e)).collect(),
        books: BTreeMap::new(),
        permits: BTreeMap::new(),
        permit_seq: 0,
        records: 0,
        injected: Injected::default(),
        bar,
    };
    city.actors.insert(
        "root",
        Actor {
            s: RecordSigner::new(regulator.clone(), DEV_ORIGIN).resume(0, [0; 32]),
            second: None,
        },
    );
    let inspector = demo_key("inspector 4403");
    setup(&mut city, &inspector, &witness_keys, days).await?;
    city.bar.inc(1);
    city.bar.set_prefix("playing");
    for d in 1..=days {
        day(&mut city, d, days).await?;
        city.bar.inc(1);
    }
    // The shipment that never arrives must be past its deadline when the inspectors look.
    if let Some((_, deadline)) = city.injected.never_received {
        let now = now_ms();
        if now <= deadline {
            tokio::time::sleep(Duration::from_millis(deadline + 1 - now)).await;
        }
    }
    city.bar.set_prefix("auditing");
    let records = city.records;
    let audit_key = Querier {
        key: inspector.clone(),
        tls_ca: None,
    };
    let findings = audit(&url, &audit_key, &city).await;
    city.bar.inc(1);
    city.bar.finish_and_clear();
    println!(
        "played {records} records over gRPC ({} refused, as intended)",
        city.injected.refused.len()
    );
    let findings = findings?;
    print!("{}", findings.text);

    // The HTML report, written by the same code as `taizhang report`.
    let report_dir = dir.join("report");
    let summary = crate::report::write(&url, &audit_key, "4403", &report_dir).await?;
    println!(
        "\nHTML report (zh-CN / English): {}  ({} losses pictured, {} entries cited)",
        report_dir.join("index.html").display(),
        summary.losses,
        summary.entries_cited
    );

    // The witnessed checkpoint, and everything verified offline against it.
    let mut c = connect(&url, &q).await?;
    let witnessed = wait_witnessed(&mut c, records + 1).await?;
    let out = dir.join("export.tzl");
    let cpf = dir.join("checkpoint.note");
    let quiet = export(&url, &q, &out, &cpf).await;
    quiet?;
    std::fs::write(dir.join("witnessed.note"), &witnessed.note)?;
    let policy =
        taizhang::witness::Policy::from_vkeys(&witness_vkeys, 2).map_err(|e| anyhow!("{e}"))?;
    let report = taizhang::verify::verify_export_with(
        &std::fs::read(&out)?,
        &witnessed.note,
        &ledger_key.verifying_key(),
        Some(&policy),
        None,
    )
    .map_err(|e| anyhow!("offline verification failed: {e}"))?;
    println!(
        "verified offline: {} entries, {} signatures, root {}, cosigned by 2 of 2 witnesses",
        report.entries,
        report.signatures_checked,
        hex::encode(report.root)
    );
    println!(
        "\nledger size {} entries ({records} records submitted over gRPC, and genesis); \
         the checkpoint both witnesses cosigned ({}):\n{}",
        report.entries,
        dir.join("witnessed.note").display(),
        witnessed.note
    );
    let pubkey = dir.join("ledger.pub");
    std::fs::write(&pubkey, include_str!("../keys/dev-ledger.pub"))?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "taizhang".into());
    println!("verify it yourself, with no server:");
    println!(
        "  {exe} verify export {} --checkpoint {} --ledger-key {} {}",
        out.display(),
        dir.join("witnessed.note").display(),
        pubkey.display(),
        witness_vkeys
            .iter()
            .map(|v| format!("--witness {v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = stop_tx.send(());
    let _ = server.await;
    for t in tasks {
        t.abort();
    }
    Ok(if findings.ok {
        ExitCode::SUCCESS
    } else {
        println!("\nSELF-CHECK FAILED: the audits did not find exactly what was injected");
        ExitCode::from(1)
    })
}

struct Witnessed {
    note: String,
}

/// Waits (up to 30 s) for a checkpoint of at least `size` cosigned by the quorum.
async fn wait_witnessed(c: &mut LedgerClient<SignedChannel>, size: u64) -> Result<Witnessed> {
    let start = std::time::Instant::now();
    loop {
        if let Ok(cp) = c
            .get_checkpoint(pb::GetCheckpointRequest { witnessed: true })
            .await
        {
            let cp = cp.into_inner();
            if cp.size >= size {
                return Ok(Witnessed { note: cp.note });
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("no checkpoint of size {size} was cosigned by both witnesses within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn setup(
    city: &mut City,
    inspector: &SigningKey,
    witnesses: &[(&str, SigningKey)],
    days: u32,
) -> Result<()> {
    use pb::Agency;
    use pb::PermitType as T;
    let authorities: [(&str, &str, Agency, &str); 4] = [
        (
            "psb",
            "深圳市公安局禁毒支队",
            Agency::PublicSecurity,
            "4403",
        ),
        ("drug", "广东省药品监督管理局", Agency::DrugRegulation, "44"),
        ("commerce", "商务部对外贸易司", Agency::Commerce, ""),
        ("customs", "深圳海关", Agency::Customs, "4403"),
    ];
    for (short, name, agency, j) in authorities {
        let k = demo_key(name);
        city.put("root", authority(&k, name, agency, j)).await?;
        city.actors.insert(
            short,
            Actor {
                s: RecordSigner::new(k, DEV_ORIGIN),
                second: None,
            },
        );
    }
    city.put(
        "root",
        official(
            inspector,
            pb::Role::Inspector,
            "4403",
            "深圳市禁毒支队检查组",
        ),
    )
    .await?;
    for (name, k) in witnesses {
        city.put("root", official(k, pb::Role::Witness, "", name))
            .await?;
    }
    let shorts: Vec<&'static str> = city.ents.keys().copied().collect();
    for short in shorts {
        let e = &city.ents[short];
        let enrol = Payload::EnrolEnterprise(pb::EnrolEnterprise {
            credit_code: e.code.clone(),
            name: e.name.into(),
            jurisdiction: e.jurisdiction.into(),
            licences: e
                .licences
                .iter()
                .enumerate()
                .map(|(i, (cat, acts))| pb::Licence {
                    licence_no: format!("{}-L{}", e.short, i + 1),
                    category: *cat as i32,
                    activities: acts.iter().map(|a| *a as i32).collect(),
                    validity: None,
                })
                .collect(),
            sites: vec![pb::Site {
                site_id: e.site.into(),
                name: format!("{} {}", e.name, e.site),
                address: "广东省深圳市".into(),
            }],
        });
        let code = e.code.clone();
        let two = e.two_person;
        city.put("root", enrol).await?;
        let key = demo_key(&format!("{short} key 1"));
        let second = two.then(|| demo_key(&format!("{short} key 2")));
        for (k, holder) in [(Some(&key), "保管员甲"), (second.as_ref(), "保管员乙")] {
            let Some(k) = k else { continue };
            city.put(
                "root",
                Payload::RegisterKey(pb::RegisterKey {
                    public_key: k.verifying_key().to_bytes().to_vec(),
                    role: pb::Role::Enterprise as i32,
                    enterprise: code.clone(),
                    jurisdiction: String::new(),
                    holder: holder.into(),
                    validity: None,
                }),
            )
            .await?;
        }
        city.actors.insert(
            short,
            Actor {
                s: RecordSigner::new(key, DEV_ORIGIN),
                second,
            },
        );
    }
    // Standing permits: purchase filings (categories 2, 3) and transport filings / permits per
    // route, seal cards for the hospitals, the trader's licences.
    let routes: &[(&str, &str, &str)] = &[
        (ACE, "C", "D1"),
        (ACE, "C", "D2"),
        (ACE, "C", "U1"),
        (ACE, "C", "U2"),
        (ACE, "C", "U3"),
        (ACE, "C", "U4"),
        (ACE, "D1", "U1"),
        (ACE, "D1", "U2"),
        (ACE, "D1", "U3"),
        (ACE, "D1", "U4"),
        (ACE, "D2", "U1"),
        (ACE, "D2", "U2"),
        (ACE, "D2", "U3"),
        (ACE, "D2", "U4"),
        (TOL, "C", "U1"),
        (TOL, "C", "U3"),
        (TOL, "C", "D2"),
        (TOL, "C", "U2"),
        (TOL, "D2", "U2"),
        (AA, "T", "D1"),
        (AA, "D1", "U1"),
    ];
    for &(sub, from, to) in routes {
        let buy = format!("buy:{sub}:{to}");
        // U2's toluene filing is the one-off the injected exhausted-permit scene uses.
        if !(city.permits.contains_key(&buy) || (sub == TOL && to == "U2")) {
            let no = city.permit_no("深公易购备");
            let p = permit(
                no,
                T::PurchaseFiling,
                city.code(to),
                sub,
                200_000 * KG,
                false,
            );
            let r = city.issue("psb", p).await?;
            city.permits.insert(buy, r);
        }
        let t = if sub == AA {
            T::TransportPermit
        } else {
            T::TransportFiling
        };
        let no = city.permit_no("深公易运");
        let mut p = permit(no, t, city.code(from), sub, 200_000 * KG, false);
        p.consignee = city.code(to);
        let r = city.issue("psb", p).await?;
        city.permits.insert(format!("tr:{sub}:{from}:{to}"), r);
    }
    for h in ["H1", "H2"] {
        let no = city.permit_no("粤药印鉴");
        let p = permit(no, T::PurchaseSealCard, city.code(h), MOR, 0, false);
        let r = city.issue("drug", p).await?;
        city.permits.insert(format!("seal:{h}"), r);
    }
    let mut il = permit(
        "商进-2026-0001".into(),
        T::ImportLicence,
        city.code("T"),
        AA,
        // A weekly import of 5,000 kg, and room for more.
        5_000 * KG * (u64::from(days) / 7 + 2),
        false,
    );
    il.counterparty = "Rheinchem GmbH".into();
    let r = city.issue("commerce", il).await?;
    city.permits.insert("import".into(), r);
    let mut el = permit(
        "商出-2026-0001".into(),
        T::ExportLicence,
        city.code("T"),
        AA,
        // An export of 2,000 kg every ten days, and the short one.
        2_000 * KG * (u64::from(days) / 10 + 2),
        false,
    );
    el.counterparty = "Albion Chemicals Ltd".into();
    let r = city.issue("commerce", el).await?;
    city.permits.insert("export".into(), r);
    Ok(())
}

/// One day of the month.
async fn day(city: &mut City, d: u32, days: u32) -> Result<()> {
    use pb::PermitType as T;
    // Production.
    city.produce("C", ACE, format!("ACE-{d:02}"), 3_000 * KG)
        .await?;
    if d % 2 == 1 {
        city.produce("C", TOL, format!("TOL-{d:02}"), 2_000 * KG)
            .await?;
    }
    if d % 3 == 1 {
        city.produce("P", EPH, format!("EPH-{d:02}"), 20 * KG)
            .await?;
    }
    if d % 7 == 1 {
        city.produce("P", MOR, format!("MOR-{d:02}"), 400 * G)
            .await?;
        city.produce("P", DZP, format!("DZP-{d:02}"), 2 * KG)
            .await?;
    }
    // Imports: every week, cleared by customs.
    if d % 7 == 3 {
        let lot = format!("AA-IMP-{d:02}");
        let r = city
            .put(
                "T",
                Payload::Import(pb::Import {
                    site_id: "port".into(),
                    substance: AA.into(),
                    lot: lot.clone(),
                    quantity: Some(mg(5_000 * KG)),
                    licence: city.permits.get("import").cloned(),
                    country: "DE".into(),
                    exporter: "Rheinchem GmbH".into(),
                }),
            )
            .await?;
        city.add("T", AA, &lot, 5_000 * KG);
        clear(city, &r, 5_000 * KG, d).await?;
    }
    // Wholesale of category 3 solvents.
    city.trade("C", "D1", ACE, 400 * KG).await?;
    city.trade("C", "D2", ACE, 300 * KG).await?;
    let users = ["U1", "U2", "U3", "U4"];
    city.trade("C", users[d as usize % 4], ACE, 200 * KG)
        .await?;
    city.trade("D1", users[(d as usize + 1) % 4], ACE, 150 * KG)
        .await?;
    city.trade("D2", users[(d as usize + 2) % 4], ACE, 100 * KG)
        .await?;
    if d.is_multiple_of(2) {
        city.trade("C", "U1", TOL, 300 * KG).await?;
        city.trade("C", "U3", TOL, 300 * KG).await?;
    }
    if d % 7 == 2 {
        city.trade("C", "D2", TOL, 500 * KG).await?;
    }
    // Acetic anhydride: the trader sells to a distributor, which sells to a coatings maker.
    if d % 7 == 4 {
        city.trade("T", "D1", AA, 1_000 * KG).await?;
    }
    if d % 7 == 5 || d % 7 == 1 {
        city.trade("D1", "U1", AA, 200 * KG).await?;
    }
    // Exports, cleared and endorsed abroad; one endorsement is short (injected).
    let short_export = d == days - 2;
    if d % 10 == 4 || short_export {
        export_one(city, d, short_export).await?;
    }
    // Ephedrine to the tablet maker: a single-use purchase permit and transport permit per
    // consignment, carried by the carrier.
    if d % 3 == 2 {
        let first_cycle = d == 2;
        let short = city.injected.short_ship.is_none() && d >= days / 3;
        ephedrine(city, first_cycle, short).await?;
    }
    // Narcotics and psychotropics: producer → designated wholesaler → hospitals.
    if d % 7 == 2 {
        city.trade("P", "W", MOR, 300 * G).await?;
        city.trade("P", "W", DZP, 1_500 * G).await?;
    }
    if d.is_multiple_of(2) {
        city.trade("W", "H1", MOR, 40 * G).await?;
        city.trade("W", "H2", MOR, 30 * G).await?;
    }
    if d.is_multiple_of(3) {
        city.trade("W", "H1", DZP, 100 * G).await?;
        city.trade("W", "H2", DZP, 80 * G).await?;
    }
    // Use.
    for (i, u) in users.iter().enumerate() {
        for b in 0..6 {
            city.consume(
                u,
                ACE,
                (12 + 2 * i as u64) * KG,
                format!("工单 WO-{d:02}{b}"),
            )
            .await?;
        }
    }
    for u in ["U1", "U3"] {
        for b in 0..2 {
            city.consume(u, TOL, 70 * KG, format!("工单 WO-T{d:02}{b}"))
                .await?;
        }
    }
    city.consume("U1", AA, 25 * KG, format!("批号 C-{d:02}"))
        .await?;
    for b in 0..2 {
        city.consume("M", EPH, 1_500 * G, format!("片剂批 TAB-{d:02}{b}"))
            .await?;
    }
    for (h, n) in [("H1", 16), ("H2", 12)] {
        for rx in 0..n {
            city.consume(h, MOR, 900, format!("处方 RX-{h}-{d:02}{rx:02}"))
                .await?;
            city.consume(h, DZP, 1_500, format!("处方 RX-{h}-D{d:02}{rx:02}"))
                .await?;
        }
    }
    // Injected: a theft of morphine at a hospital, reported with the police case number.
    if d == days / 2 {
        let (lot, have) = city
            .oldest_lot("H1", MOR)
            .ok_or_else(|| anyhow!("demo: the hospital holds no morphine on day {d}"))?;
        {
            let q = (3 * G).min(have);
            let r = city
                .put2(
                    "H1",
                    Payload::LossReport(pb::LossReport {
                        site_id: "pharmacy".into(),
                        substance: MOR.into(),
                        lot: lot.clone(),
                        quantity: Some(mg(q)),
                        kind: pb::LossKind::Theft as i32,
                        police_report_ref: "深公福(刑)立字〔2026〕1207号".into(),
                    }),
                )
                .await?;
            city.take("H1", MOR, &lot, q);
            city.injected.theft = Some(r.index);
        }
    }
    // Injected: a one-off toluene filing drawn to its ceiling by one seller; a second seller
    // then tries to draw on it.
    if d == days / 2 + 1 {
        let no = city.permit_no("深公易购备");
        let p = permit(no, T::PurchaseFiling, city.code("U2"), TOL, 500 * KG, false);
        let r = city.issue("psb", p).await?;
        city.permits.insert(format!("buy:{TOL}:U2"), r);
        city.trade("C", "U2", TOL, 500 * KG).await?;
        let lot = city
            .lot_with("D2", TOL, 100 * KG)
            .ok_or_else(|| anyhow!("demo: the distributor holds no toluene on day {d}"))?;
        {
            let s = city.ship_payload("D2", "U2", TOL, &lot, 100 * KG);
            city.refused(
                "second seller on an exhausted filing",
                "D2",
                Payload::Ship(s),
            )
            .await?;
        }
    }
    // Injected: a toluene consignment that never arrives (due the same day).
    if d == (2 * days) / 3 {
        let lot = city
            .lot_with("C", TOL, 300 * KG)
            .ok_or_else(|| anyhow!("demo: the producer holds no toluene on day {d}"))?;
        {
            let mut s = city.ship_payload("C", "U3", TOL, &lot, 300 * KG);
            let deadline = now_ms() + 1_000;
            s.expected_delivery_ms = deadline;
            let r = city.put("C", Payload::Ship(s)).await?;
            city.take("C", TOL, &lot, 300 * KG);
            city.injected.never_received = Some((r.index, deadline));
        }
    }
    // Weekly stock takes, and the last day's; on that one a distributor's acetone is 3 kg short.
    if d.is_multiple_of(7) || d == days {
        let short = (d == days).then_some(("D2", ACE, 3 * KG));
        city.stock_takes(short).await?;
    }
    Ok(())
}

async fn clear(city: &mut City, m: &pb::Receipt, q: u64, d: u32) -> Result<()> {
    city.put(
        "customs",
        Payload::CustomsClearance(pb::CustomsClearance {
            movement: Some(entry_ref(DEV_ORIGIN, m.index, &m.leaf_hash)),
            declaration_no: format!("531620260{d:02}{:06}", m.index),
            quantity: Some(mg(q)),
            cleared_ms: 0,
        }),
    )
    .await?;
    Ok(())
}

async fn export_one(city: &mut City, d: u32, short: bool) -> Result<()> {
    let q = 2_000 * KG;
    let Some(lot) = city.lot_with("T", AA, q) else {
        return Ok(());
    };
    let pen = format!("PEN-CN-2026-{d:03}");
    let r = city
        .put(
            "T",
            Payload::Export(pb::Export {
                site_id: "port".into(),
                substance: AA.into(),
                lot: lot.clone(),
                quantity: Some(mg(q)),
                licence: city.permits.get("export").cloned(),
                country: "GB".into(),
                importer: "Albion Chemicals Ltd".into(),
                pen_reference: pen.clone(),
            }),
        )
        .await?;
    city.take("T", AA, &lot, q);
    clear(city, &r, q, d).await?;
    let endorsed = if short { 1_800 * KG } else { q };
    city.put(
        "commerce",
        Payload::ForeignEndorsement(pb::ForeignEndorsement {
            export: Some(entry_ref(DEV_ORIGIN, r.index, &r.leaf_hash)),
            country: "GB".into(),
            pen_reference: pen,
            quantity: Some(mg(endorsed)),
            endorsed_ms: 0,
            objection: false,
            objection_reason: String::new(),
        }),
    )
    .await?;
    if short {
        city.injected.short_endorsement = Some(r.index);
    }
    Ok(())
}

async fn ephedrine(city: &mut City, overdraw_first: bool, short: bool) -> Result<()> {
    use pb::PermitType as T;
    let q = 10 * KG;
    let no = city.permit_no("粤药购");
    let mut p = permit(no, T::PurchasePermit, city.code("M"), EPH, q, true);
    p.counterparty = city.code("P");
    let purchase = city.issue("drug", p).await?;
    let no = city.permit_no("深公运");
    let mut t = permit(no, T::TransportPermit, city.code("P"), EPH, 12 * KG, true);
    t.consignee = city.code("M");
    t.carrier = city.code("K");
    t.origin_site = "plant".into();
    t.destination_site = "plant".into();
    let transport = city.issue("psb", t).await?;
    let Some(lot) = city.lot_with("P", EPH, 12 * KG) else {
        return Ok(());
    };
    let ship = |amount: u64, city: &City| pb::Ship {
        site_id: "plant".into(),
        substance: EPH.into(),
        lot: lot.clone(),
        quantity: Some(mg(amount)),
        consignee: city.code("M"),
        consignee_site: "plant".into(),
        permit: Some(purchase.clone()),
        carrier: city.code("K"),
        transport_permit: Some(transport.clone()),
        expected_delivery_ms: now_ms() + 2 * DAY_MS,
        payment_method: "bank_transfer".into(),
    };
    if overdraw_first {
        // Injected: 12 kg against a 10 kg single-use permit.
        let s = ship(12 * KG, city);
        city.refused("overdrawn purchase permit", "P", Payload::Ship(s))
            .await?;
    }
    let s = ship(q, city);
    let r = city.put("P", Payload::Ship(s)).await?;
    city.take("P", EPH, &lot, q);
    let leg = |kind: pb::LegKind, location: &str| {
        Payload::TransportLeg(pb::TransportLeg {
            ship: Some(entry_ref(DEV_ORIGIN, r.index, &r.leaf_hash)),
            kind: kind as i32,
            location: location.into(),
            seal_numbers: vec![format!("SA-{:06}", r.index)],
            next_carrier: String::new(),
        })
    };
    city.put("K", leg(pb::LegKind::Pickup, "南岭制药 plant gate"))
        .await?;
    city.put("K", leg(pb::LegKind::Delivery, "康泰药业 plant dock"))
        .await?;
    // Injected once: 1.2 g short on arrival (category 1: no tolerance).
    let received = if short { q - 1_200 } else { q };
    city.receive("M", EPH, &r, &lot, received).await?;
    if short {
        city.injected.short_ship = Some(r.index);
    }
    Ok(())
}

struct Findings {
    text: String,
    ok: bool,
}

/// The inspector's audits, and the check that they find exactly what was injected.
async fn audit(url: &str, q: &Querier, city: &City) -> Result<Findings> {
    use std::fmt::Write;
    let mut a = pb::audit_client::AuditClient::new(q.channel(url).await?)
        .max_decoding_message_size(taizhang::api::MAX_MESSAGE_BYTES);
    let name = |code: &str| {
        city.ents
            .values()
            .find(|e| e.code == code)
            .map_or_else(|| code.to_string(), |e| e.name.to_string())
    };
    let sub_name = |id: &str| match id {
        EPH => "ephedrine 麻黄素",
        MOR => "morphine 吗啡",
        DZP => "diazepam 地西泮",
        AA => "acetic anhydride 醋酸酐",
        ACE => "acetone 丙酮",
        TOL => "toluene 甲苯",
        _ => "substance",
    };
    let mut t = String::new();
    let mut problems = Vec::new();
    let inj = &city.injected;

    writeln!(
        t,
        "\nWhat the city inspector's audits found (signed as inspector 4403):"
    )?;
    // Losses.
    let losses = a
        .find_losses(pb::FindLossesRequest {
            scope: Some(pb::find_losses_request::Scope::Jurisdiction("4403".into())),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("find losses: {}", s.message()))?
        .into_inner();
    writeln!(
        t,
        "\n  losses (流失), ranked — taizhang audit losses --jurisdiction 4403"
    )?;
    let cites = |l: &pb::LossPoint| {
        l.entries
            .iter()
            .map(|e| format!("#{}", e.index))
            .collect::<Vec<_>>()
            .join(" ")
    };
    use pb::LossPointKind as K;
    let mut expect: Vec<(K, &str, Option<u64>)> = vec![
        (K::InTransitGap, "in-transit gap", inj.short_ship),
        (
            K::NotReceived,
            "shipment never received",
            inj.never_received.map(|n| n.0),
        ),
        (K::CountShortfall, "count shortfall", inj.shortfall),
        (K::Reported, "theft report", inj.theft),
    ];
    for l in &losses.losses {
        let what = if l.loss_kind != 0 {
            format!(
                "reported {}",
                enum_label(
                    pb::LossKind::try_from(l.loss_kind).map_or("", |k| k.as_str_name()),
                    "LOSS_KIND_"
                )
            )
        } else {
            enum_label(
                K::try_from(l.kind).map_or("", |k| k.as_str_name()),
                "LOSS_POINT_KIND_",
            )
        };
        let party = if l.counterparty.is_empty() {
            name(&l.enterprise)
        } else {
            format!("{} → {}", name(&l.enterprise), name(&l.counterparty))
        };
        writeln!(
            t,
            "    {}. {what}: {} {} at {party} (entries {})",
            l.rank,
            qty(l.quantity),
            sub_name(&l.substance),
            cites(l)
        )?;
        let found = expect.iter().position(|(k, _, e)| {
            *k as i32 == l.kind && e.is_some_and(|e| l.entries.iter().any(|c| c.index == e))
        });
        match found {
            Some(i) => {
                expect.remove(i);
            }
            None => problems.push(format!("unexpected loss: {what} (entries {})", cites(l))),
        }
    }
    for (_, k, _) in expect {
        problems.push(format!("injected {k} not found"));
    }
    for p in &losses.patterns {
        problems.push(format!(
            "unexpected pattern: {} ({} events)",
            p.subject, p.events
        ));
    }

    // Import/export two-way checks.
    writeln!(
        t,
        "\n  import/export (进出口双向核查) — taizhang audit trade 商出-2026-0001"
    )?;
    let mut trade_found = 0;
    for no in ["商进-2026-0001", "商出-2026-0001"] {
        let r = a
            .reconcile_import_export(pb::ReconcileImportExportRequest {
                licence: Some(pb::reconcile_import_export_request::Licence::PermitNo(
                    no.into(),
                )),
                as_of_ms: 0,
            })
            .await
            .map_err(|s| anyhow!("trade check {no}: {}", s.message()))?
            .into_inner();
        writeln!(
            t,
            "    {no}: licensed {}, declared {}, cleared {}{}; {} exception(s)",
            qty(r.licensed),
            qty(r.declared),
            qty(r.cleared),
            if r.endorsed > 0 {
                format!(", endorsed abroad {}", qty(r.endorsed))
            } else {
                String::new()
            },
            r.exceptions.len()
        )?;
        for x in &r.exceptions {
            let m = x.movement.as_ref().map_or(0, |m| m.index);
            writeln!(
                t,
                "      - {} (export #{m}, endorsement #{}): exported {}, endorsed as imported {}",
                enum_label(
                    pb::TradeExceptionKind::try_from(x.kind).map_or("", |k| k.as_str_name()),
                    "TRADE_EXCEPTION_KIND_"
                ),
                x.counterpart.as_ref().map_or(0, |c| c.index),
                qty(x.declared),
                qty(x.counterpart_quantity)
            )?;
            if x.kind == pb::TradeExceptionKind::EndorsementMismatch as i32
                && Some(m) == inj.short_endorsement
            {
                trade_found += 1;
            } else {
                problems.push(format!(
                    "unexpected trade exception on entry {m}: {}",
                    x.detail
                ));
            }
        }
    }
    if trade_found != 1 {
        problems.push("the short foreign endorsement was not found".into());
    }

    // Permit reconciliation.
    let list = a
        .list_permits(pb::ListPermitsRequest {
            scope: Some(pb::list_permits_request::Scope::Jurisdiction("4403".into())),
            limit: 10_000,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("list permits: {}", s.message()))?
        .into_inner();
    let is_trade = |p: &pb::PermitSummary| {
        p.r#type == pb::PermitType::ImportLicence as i32
            || p.r#type == pb::PermitType::ExportLicence as i32
    };
    let drawn: Vec<&pb::PermitSummary> = list
        .permits
        .iter()
        .filter(|p| p.draw_downs > 0 && !is_trade(p))
        .collect();
    let draws: u32 = drawn.iter().map(|p| p.draw_downs).sum();
    writeln!(
        t,
        "\n  permits (许可证核销) — taizhang audit permits --jurisdiction 4403: {} permits, {} with draw-downs ({draws} shipments)",
        list.permits.len(),
        drawn.len()
    )?;
    let mut mismatched = Vec::new();
    for p in drawn {
        let r = a
            .reconcile_permit(pb::ReconcilePermitRequest {
                permit: Some(pb::reconcile_permit_request::Permit::PermitNo(
                    p.permit_no.clone(),
                )),
                as_of_ms: 0,
            })
            .await
            .map_err(|s| anyhow!("reconcile {}: {}", p.permit_no, s.message()))?
            .into_inner();
        for m in &r.mismatches {
            let ship = m.ship.as_ref().map_or(0, |s| s.index);
            writeln!(
                t,
                "    {}: {} — shipped {}, received {} (ship #{ship})",
                p.permit_no,
                enum_label(
                    pb::MismatchKind::try_from(m.kind)
                        .map(|k| k.as_str_name())
                        .unwrap_or(""),
                    "MISMATCH_KIND_"
                ),
                qty(m.shipped),
                qty(m.received)
            )?;
            mismatched.push(ship);
        }
    }
    mismatched.sort_unstable();
    // A shipment draws on the buyer's permit and on the transport permit: it shows on both.
    mismatched.dedup();
    let mut want: Vec<u64> = [inj.short_ship, inj.never_received.map(|n| n.0)]
        .into_iter()
        .flatten()
        .collect();
    want.sort_unstable();
    if mismatched != want {
        problems.push(format!(
            "permit mismatches on shipments {mismatched:?}, expected {want:?}"
        ));
    }
    let exhausted = list
        .permits
        .iter()
        .filter(|p| p.state == pb::PermitState::Exhausted as i32)
        .count();
    let used = list
        .permits
        .iter()
        .filter(|p| p.state == pb::PermitState::WrittenOff as i32)
        .count();
    writeln!(
        t,
        "    {exhausted} drawn to their ceiling, {used} closed by their single use"
    )?;

    // Mass balance of every holding that was counted.
    writeln!(t, "\n  mass balance (账物相符) against the last counts")?;
    let mut counted: Vec<(&'static str, &'static str)> = Vec::new();
    for (w, s, _) in city.books.keys() {
        if !counted.contains(&(*w, *s)) {
            counted.push((*w, *s));
        }
    }
    let mut balanced = 0;
    let mut off = 0;
    for (w, s) in counted {
        let r = a
            .mass_balance(pb::MassBalanceRequest {
                enterprise: city.code(w),
                site: city.site(w).into(),
                substance: s.into(),
                limit: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("mass balance {w} {s}: {}", e.message()))?
            .into_inner();
        let status =
            pb::BalanceStatus::try_from(r.status).unwrap_or(pb::BalanceStatus::Unspecified);
        match status {
            pb::BalanceStatus::Balanced => balanced += 1,
            pb::BalanceStatus::NotCounted => {}
            _ => {
                off += 1;
                let c = r.count.unwrap_or_default();
                writeln!(
                    t,
                    "    {} {}: {} — book {}, counted {} (count #{})",
                    name(&city.code(w)),
                    sub_name(s),
                    enum_label(status.as_str_name(), "BALANCE_STATUS_"),
                    qty(c.book),
                    qty(c.counted),
                    c.entry.map_or(0, |e| e.index)
                )?;
                let expected = w == "D2" && s == ACE && status == pb::BalanceStatus::Shortfall;
                if !expected {
                    problems.push(format!("{w} {s} out of balance: {status:?}"));
                }
            }
        }
    }
    writeln!(t, "    {balanced} holdings balanced, {off} not")?;

    writeln!(t, "\n  refused at ingest (nothing written)")?;
    for (what, s) in &inj.refused {
        writeln!(t, "    {what}: {:?}: {}", s.code(), s.message())?;
    }
    if inj.refused.len() != 2
        || inj
            .refused
            .iter()
            .any(|(_, s)| s.code() != tonic::Code::FailedPrecondition)
    {
        problems
            .push("the two injected refusals did not both come back FAILED_PRECONDITION".into());
    }
    if problems.is_empty() {
        writeln!(
            t,
            "\nself-check: the audits found each of the 7 injected anomalies, and nothing else"
        )?;
    } else {
        for p in &problems {
            writeln!(t, "\nself-check: {p}")?;
        }
    }
    Ok(Findings {
        text: t,
        ok: problems.is_empty(),
    })
}

fn enum_label(full: &str, prefix: &str) -> String {
    full.trim_start_matches(prefix)
        .to_lowercase()
        .replace('_', " ")
}
