//! The full validation path. A ledger (in a temporary dir) with an enrolled producer and its
//! key; each input is taken as a `RecordBody`, given the producer's origin, signer and chain
//! position, signed with its key, and submitted — so fuzzed payloads reach every payload rule.
//! Also the raw input as a `SignedRecord`. No panic, no hang; an accepted record moves the
//! chain, a refused one leaves the log size as it was.
#![no_main]
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::{Arc, Mutex, OnceLock};
use taizhang::client::RecordSigner;
use taizhang::ledger::{Config, Ledger, Submission};
use taizhang::model::Catalogue;
use taizhang::{codec, pb};

const ORIGIN: &str = "fuzz.example/ledger";

struct World {
    rt: tokio::runtime::Runtime,
    ledger: Ledger,
    signer: Mutex<RecordSigner>,
    _dir: tempfile::TempDir,
}

fn submission(r: &pb::SignedRecord) -> Submission {
    Submission {
        body: r.body.clone(),
        signature: r.signature.clone(),
        cosignatures: r
            .cosignatures
            .iter()
            .map(|c| (c.key_id.clone(), c.signature.clone()))
            .collect(),
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let regulator = SigningKey::from_bytes(&[0x52; 32]);
        let cfg = Config {
            data_dir: dir.path().join("d"),
            origin: ORIGIN.into(),
            root_regulators: vec![pb::AuthorityKey {
                public_key: regulator.verifying_key().to_bytes().to_vec(),
                name: "fuzz".into(),
                agency: pb::Agency::PublicSecurity as i32,
                jurisdiction: String::new(),
                validity: None,
            }],
            ledger_key: SigningKey::from_bytes(&[0x4c; 32]),
            catalogue: Arc::new(Catalogue::embedded()),
            max_segment_bytes: taizhang::ledger::DEFAULT_SEGMENT_BYTES,
            two_person: taizhang::ledger::default_two_person(),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (ledger, _) = rt.block_on(async { Ledger::open(cfg) }).unwrap();
        let mut reg = RecordSigner::new(regulator, ORIGIN);
        let producer = "91440300MA5PRDCR1C".to_string();
        let pk = SigningKey::from_bytes(&[0x50; 32]);
        use pb::record_body::Payload;
        let lic = |c: pb::Category| pb::Licence {
            licence_no: format!("L-{}", c as i32),
            category: c as i32,
            activities: (1..=8).collect(),
            validity: None,
        };
        for p in [
            Payload::EnrolEnterprise(pb::EnrolEnterprise {
                credit_code: producer.clone(),
                name: "fuzz".into(),
                jurisdiction: "440305".into(),
                licences: (1..=6)
                    .map(|c| lic(pb::Category::try_from(c).unwrap()))
                    .collect(),
                sites: vec![pb::Site {
                    site_id: "plant-1".into(),
                    name: "p".into(),
                    address: String::new(),
                }],
            }),
            Payload::RegisterKey(pb::RegisterKey {
                public_key: pk.verifying_key().to_bytes().to_vec(),
                role: pb::Role::Enterprise as i32,
                enterprise: producer,
                jurisdiction: String::new(),
                holder: "fuzz".into(),
                validity: None,
            }),
        ] {
            let r = reg.sign(p, 0);
            rt.block_on(ledger.submit(submission(&r))).expect("setup accepted");
        }
        World {
            rt,
            ledger,
            signer: Mutex::new(RecordSigner::new(pk, ORIGIN)),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    // Raw bytes as a signed record.
    if let Ok(r) = pb::SignedRecord::decode(data) {
        let before = w.ledger.size();
        if w.rt.block_on(w.ledger.submit(submission(&r))).is_err() {
            assert_eq!(w.ledger.size(), before, "a refused record grew the log");
        }
    }
    // As a body the producer signs at its next position.
    let Ok(mut body) = codec::decode_body(data) else {
        return;
    };
    let mut s = w.signer.lock().unwrap();
    let template = s.body(pb::record_body::Payload::StockTake(Default::default()), 0);
    body.ledger_origin = template.ledger_origin;
    body.signer = template.signer;
    body.signer_seq = template.signer_seq;
    body.signer_prev = template.signer_prev;
    let Some(payload) = body.payload.take() else {
        return;
    };
    let rec = s.sign_detached(payload, body.client_time_ms);
    let before = w.ledger.size();
    match w.rt.block_on(w.ledger.submit(submission(&rec))) {
        Ok(r) => {
            assert!(r.index >= before);
            let next = s.next_seq() + 1;
            *s = RecordSigner::new(s.key().clone(), ORIGIN)
                .resume(next, taizhang::crypto::body_hash(&rec.body));
        }
        Err(_) => assert_eq!(w.ledger.size(), before, "a refused record grew the log"),
    }
});
