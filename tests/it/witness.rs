//! Witnesses: an honest ledger gets its checkpoints cosigned and published under a quorum
//! policy; a forked or rolled-back ledger is refused by the witness; offline verification
//! passes and fails with the policy and a previously trusted checkpoint; the real binaries.

use crate::common::*;
use ed25519_dalek::SigningKey;
use std::sync::Arc;
use std::time::Duration;
use taizhang::api::witness::WitnessService;
use taizhang::api::witnessing::{Target, Witnessing};
use taizhang::checkpoint::{cosigner_vkey, NoteVerifier};
use taizhang::client::RecordSigner;
use taizhang::pb::{self, witness_client::WitnessClient};
use taizhang::store::witness::WitnessFile;
use taizhang::witness::Policy;
use tonic::Code;

struct W {
    name: String,
    key: SigningKey,
    url: String,
    svc: Arc<WitnessService>,
    _dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

impl W {
    fn vkey(&self) -> String {
        cosigner_vkey(&self.name, &self.key.verifying_key()).unwrap()
    }
    async fn client(&self) -> WitnessClient<tonic::transport::Channel> {
        WitnessClient::connect(self.url.clone()).await.unwrap()
    }
}

fn ledger_verifier() -> NoteVerifier {
    NoteVerifier::new(ORIGIN, ledger_key().verifying_key()).unwrap()
}

async fn witness(n: u8) -> W {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_bytes(&[0xc0 + n; 32]);
    let name = format!("witness.test/w{n}");
    let svc = Arc::new(
        WitnessService::open(
            &name,
            key.clone(),
            ledger_verifier(),
            WitnessFile::open(dir.path()).unwrap(),
        )
        .unwrap(),
    );
    let (listener, addr) = taizhang::api::bind("127.0.0.1:0").await.unwrap();
    let task = tokio::spawn({
        let svc = svc.clone();
        async move {
            taizhang::api::witness::serve(svc, listener, std::future::pending())
                .await
                .unwrap()
        }
    });
    W {
        name,
        key,
        url: format!("http://{addr}"),
        svc,
        _dir: dir,
        _task: task,
    }
}

/// A ledger served with witnessing every 20 ms by `targets` under `quorum`.
async fn ledger_with(
    dir: &std::path::Path,
    targets: Vec<Target>,
    quorum: usize,
) -> (taizhang::ledger::Ledger, String) {
    let (ledger, _) = taizhang::ledger::Ledger::open(config(dir)).unwrap();
    let (listener, addr) = taizhang::api::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(taizhang::api::serve_opts(
        ledger.clone(),
        listener,
        std::future::pending(),
        taizhang::api::ServeOptions {
            witnessing: Some(Witnessing {
                targets,
                quorum,
                interval: Duration::from_millis(20),
            }),
            ..Default::default()
        },
    ));
    (ledger, format!("http://{addr}"))
}

fn target(w: &W) -> Target {
    Target::parse(&format!("{}@{}", w.vkey(), w.url)).unwrap()
}

/// Waits until the ledger publishes a witnessed checkpoint of at least `size`.
async fn witnessed_at_least(
    c: &mut pb::ledger_client::LedgerClient<taizhang::api::auth::SignedChannel>,
    size: u64,
) -> pb::Checkpoint {
    for _ in 0..500 {
        if let Ok(cp) = c
            .get_checkpoint(pb::GetCheckpointRequest { witnessed: true })
            .await
        {
            let cp = cp.into_inner();
            if cp.size >= size {
                return cp;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no witnessed checkpoint of size {size}");
}

fn register_witnesses(ws: &[&W]) -> Vec<pb::record_body::Payload> {
    ws.iter()
        .map(|w| register_official(&w.key, pb::Role::Witness, "44", &w.name))
        .collect()
}

#[tokio::test]
async fn an_honest_ledger_is_witnessed_under_its_quorum_and_verifies_offline() {
    let (w1, w2, w3, stranger) = (
        witness(1).await,
        witness(2).await,
        witness(3).await,
        witness(4).await,
    );
    let tmp = tempfile::tempdir().unwrap();
    // w3 is configured but never registered on the ledger: it cannot count.
    let (_ledger, url) =
        ledger_with(tmp.path(), vec![target(&w1), target(&w2), target(&w3)], 2).await;
    let mut c = ledger_client(&url).await;
    let e = c
        .get_checkpoint(pb::GetCheckpointRequest { witnessed: true })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let mut reg = RecordSigner::new(national_key(), ORIGIN);
    for p in register_witnesses(&[&w1, &w2]) {
        submit(&mut c, reg.sign(p, now())).await.unwrap();
    }
    let first = witnessed_at_least(&mut c, 3).await;
    let key = ledger_key().verifying_key();
    let all = [w1.vkey(), w2.vkey(), w3.vkey()];
    let two_of_three = Policy::from_vkeys(&all, 2).unwrap();
    let r =
        taizhang::verify::verify_checkpoint(&first.note, &key, Some(&two_of_three), None).unwrap();
    assert_eq!(r.witnesses, vec![w1.name.clone(), w2.name.clone()]);
    // A stricter policy, or one trusting only other witnesses, fails and says why.
    let all_three = Policy::from_vkeys(&all, 3).unwrap();
    let e =
        taizhang::verify::verify_checkpoint(&first.note, &key, Some(&all_three), None).unwrap_err();
    assert!(
        e.to_string()
            .contains("2 of the 3 trusted witnesses cosigned"),
        "{e}"
    );
    let others = Policy::from_vkeys(&[stranger.vkey()], 1).unwrap();
    assert!(taizhang::verify::verify_checkpoint(&first.note, &key, Some(&others), None).is_err());
    // The ledger grows; the witnesses follow it with consistency proofs.
    let r = reg.sign(
        enrol(&code("91440300MA5WTNEX1"), "440305", vec![], &["s"]),
        now(),
    );
    submit(&mut c, r).await.unwrap();
    let second = witnessed_at_least(&mut c, first.size + 1).await;
    let proof = c
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            from_size: first.size,
            to_size: second.size,
        })
        .await
        .unwrap()
        .into_inner()
        .hashes
        .into_iter()
        .map(|h| <[u8; 32]>::try_from(h).unwrap())
        .collect::<Vec<_>>();
    let r = taizhang::verify::verify_checkpoint(
        &second.note,
        &key,
        Some(&two_of_three),
        Some((&first.note, &proof)),
    )
    .unwrap();
    assert_eq!(r.consistent_from, Some(first.size));
    // The other way round is a rollback.
    let e = taizhang::verify::verify_checkpoint(&first.note, &key, None, Some((&second.note, &[])))
        .unwrap_err();
    assert!(e.to_string().contains("rollback"), "{e}");
    // Each witness kept what it cosigned.
    let st = w1
        .client()
        .await
        .get_witness_state(pb::GetWitnessStateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.size >= second.size);
    assert_eq!(st.vkey, w1.vkey());
    let st3 = w3
        .client()
        .await
        .get_witness_state(pb::GetWitnessStateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st3.size, 0,
        "the ledger offers nothing to a witness it has not registered"
    );
    assert_eq!(second.note.matches("\n— witness.test/").count(), 2);
}

#[tokio::test]
async fn a_witness_refuses_forks_rollbacks_and_foreign_checkpoints_and_remembers_across_restarts() {
    let w = witness(5).await;
    // Two ledgers with the same key and origin that diverge: a fork.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, _) = taizhang::ledger::Ledger::open(config(da.path())).unwrap();
    let (b, _) = taizhang::ledger::Ledger::open(config(db.path())).unwrap();
    async fn grow(l: &taizhang::ledger::Ledger, reg: &mut RecordSigner, stem: &str, n: u32) {
        {
            for i in 0..n {
                let stem = format!("{stem}{i}");
                let p = enrol(&code(&stem), "440305", vec![], &["s"]);
                let r = reg.sign(p, now());
                l.submit(taizhang::ledger::Submission {
                    body: r.body,
                    signature: r.signature,
                    cosignatures: vec![],
                })
                .await
                .unwrap();
            }
        }
    }
    let mut ra = RecordSigner::new(national_key(), ORIGIN);
    let mut rb = RecordSigner::new(national_key(), ORIGIN);
    grow(&a, &mut ra, "91440300MA5FRKA0", 4).await;
    grow(&b, &mut rb, "91440300MA5FRKB0", 6).await;
    let (a_note, a_size, _) = a.checkpoint().unwrap();
    let (b_note, b_size, _) = b.checkpoint().unwrap();
    assert_eq!((a_size, b_size), (5, 7));
    let mut c = w.client().await;
    let offer = |note: &str, old: u64, proof: Vec<Vec<u8>>| pb::AddCheckpointRequest {
        old_size: old,
        consistency_proof: proof,
        checkpoint: note.to_string(),
    };
    // The first checkpoint is trusted on first use.
    let r = c
        .add_checkpoint(offer(&a_note, 0, vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.conflict && r.cosignature.starts_with("— witness.test/w5 "));
    // Offered from the wrong size: the witness says where it is.
    let r = c
        .add_checkpoint(offer(&b_note, 0, vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(r.conflict);
    assert_eq!(r.witness_size, 5);
    // The fork's bigger checkpoint with its own consistency proof from 5: refused.
    let proof: Vec<Vec<u8>> = b
        .consistency_proof(5, 7)
        .unwrap()
        .1
        .iter()
        .map(|h| h.to_vec())
        .collect();
    let e = c
        .add_checkpoint(offer(&b_note, 5, proof))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("forked"), "{}", e.message());
    // An older checkpoint of the honest ledger: a rollback.
    let old = taizhang::checkpoint::sign_checkpoint(
        &taizhang::checkpoint::Checkpoint {
            origin: ORIGIN.into(),
            size: 3,
            root: taizhang::merkle::root_from_leaves::<taizhang::merkle::Blake3Hasher>(
                &a.leaf_hashes(&[0, 1, 2])
                    .into_iter()
                    .map(Option::unwrap)
                    .collect::<Vec<_>>(),
            ),
            extensions: vec![],
        },
        &taizhang::checkpoint::NoteSigner::new(ORIGIN, ledger_key()).unwrap(),
    )
    .unwrap();
    let e = c.add_checkpoint(offer(&old, 5, vec![])).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("rollback"), "{}", e.message());
    // A checkpoint another key signed.
    let forged = taizhang::checkpoint::sign_checkpoint(
        &taizhang::checkpoint::Checkpoint {
            origin: ORIGIN.into(),
            size: 9,
            root: [7; 32],
            extensions: vec![],
        },
        &taizhang::checkpoint::NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[0xee; 32]))
            .unwrap(),
    )
    .unwrap();
    let e = c
        .add_checkpoint(offer(&forged, 5, vec![]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // The honest ledger grows and is cosigned again with a real proof.
    grow(&a, &mut ra, "91440300MA5FRKC0", 2).await;
    let (a2, a2_size, _) = a.checkpoint().unwrap();
    let proof = a
        .consistency_proof(5, a2_size)
        .unwrap()
        .1
        .iter()
        .map(|h| h.to_vec())
        .collect();
    let r = c
        .add_checkpoint(offer(&a2, 5, proof))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.conflict);
    // A witness restarted from its state dir remembers: the fork is still refused.
    let reopened = WitnessService::open(
        &w.name,
        w.key.clone(),
        ledger_verifier(),
        WitnessFile::open(w._dir.path()).unwrap(),
    )
    .unwrap();
    let e = reopened.offer(&b_note, 0, &[], 1).unwrap();
    assert_eq!(e.witness_size, a2_size);
    let _ = w.svc.vkey();
}
