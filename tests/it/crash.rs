//! The kill -9 campaign: the real `taizhang serve` process is killed with SIGKILL at random
//! moments — while many clients submit, and during start-up — and restarted. After every restart:
//! every acknowledged receipt's entry is present with the same leaf hash; the latest checkpoint
//! is consistent with every checkpoint handed out before; and the exported log verifies offline
//! (hash chain, every signature, per-signer chains without gaps or duplicates, Merkle root).
//!
//! `TAIZHANG_CRASH_KILLS` sets the number of kills (default 10, the CI version; the full campaign
//! is 200). `TAIZHANG_CRASH_SEED` fixes the random schedule.

use crate::common::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taizhang::client::RecordSigner;
use taizhang::crypto;
use taizhang::merkle::{self, Blake3Hasher};
use taizhang::pb::{self, ledger_client::LedgerClient};
use taizhang::verify;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CLIENTS: usize = 8;

/// A tiny deterministic PRNG (xorshift64*), so a failing schedule can be replayed by seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn spawn(dir: &Path, keys: &Path, log: &Path) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--origin", ORIGIN])
        .arg("--data")
        .arg(dir)
        .arg("--ledger-key")
        .arg(keys.join("ledger.key"))
        .arg("--root-regulator")
        .arg(keys.join("regulator.pub"))
        .env("TAIZHANG_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn taizhang serve")
}

/// Waits for "listening on ADDR" and returns the URL.
async fn listening(child: &mut Child, log: &Path) -> String {
    let out = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "server did not start in 60 s; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "server exited at start; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line}"));
    format!("http://{addr}")
}

async fn connect(url: &str) -> LedgerClient<taizhang::api::auth::SignedChannel> {
    for _ in 0..100 {
        if let Ok(c) = taizhang::api::auth::connect(url.to_string(), regulator_key()).await {
            return LedgerClient::new(c).max_decoding_message_size(64 << 20);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {url}");
}

#[derive(Default)]
struct Acked {
    /// index → leaf hash of every acknowledged entry.
    entries: HashMap<u64, Vec<u8>>,
    /// (size, root) of every checkpoint handed out in a receipt.
    checkpoints: Vec<(u64, [u8; 32])>,
}

async fn client_loop(
    url: String,
    mut signer: RecordSigner,
    acked: Arc<Mutex<Acked>>,
    n: usize,
) -> RecordSigner {
    let mut c = match taizhang::api::auth::connect(url, regulator_key()).await {
        Ok(c) => LedgerClient::new(c),
        Err(_) => return signer,
    };
    let ledger = ledger_key().verifying_key();
    loop {
        let seq = signer.next_seq();
        let rec = signer.sign(
            produce("plant-1", ACETONE, &format!("c{n}-s{seq}"), 1_000 + seq),
            now(),
        );
        match c.submit(pb::SubmitRequest { record: Some(rec) }).await {
            Ok(r) => {
                let r = r.into_inner();
                let cp = verify::open_ledger_checkpoint(&r.checkpoint, &ledger)
                    .expect("receipt checkpoint verifies");
                let mut a = acked.lock().unwrap();
                assert!(
                    a.entries.insert(r.index, r.leaf_hash).is_none(),
                    "index {} acknowledged twice",
                    r.index
                );
                a.checkpoints.push((cp.size, cp.root));
            }
            Err(_) => return signer,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_no_acknowledged_entry() {
    let kills: usize = std::env::var("TAIZHANG_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("TAIZHANG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now);
    eprintln!("crash campaign: {kills} kills, seed {seed}");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let keys = tmp.path().join("keys");
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
    let log = tmp.path().join("server.log");

    // Set up an enterprise with one key per client, before any kill.
    let mut child = spawn(&dir, &keys, &log);
    let url = listening(&mut child, &log).await;
    let mut c = connect(&url).await;
    let mut reg = RecordSigner::new(regulator_key(), ORIGIN);
    // The CLI's default root regulator jurisdiction is national.
    let producer = code("91440300MA5KRAXH1");
    use pb::{Activity::*, Category::*};
    submit(
        &mut c,
        reg.sign(
            enrol(
                &producer,
                "440305",
                vec![licence(Precursor3, &[Produce, Sell])],
                &["plant-1"],
            ),
            now(),
        ),
    )
    .await
    .unwrap();
    let mut signers = Vec::new();
    for i in 0..CLIENTS {
        let k = ed25519_dalek::SigningKey::from_bytes(&[0x80 + i as u8; 32]);
        submit(&mut c, reg.sign(register(&k, &producer), now()))
            .await
            .unwrap();
        signers.push(RecordSigner::new(k, ORIGIN));
    }
    let acked = Arc::new(Mutex::new(Acked::default()));
    let (mut killed_in_startup, mut killed_under_load, mut checked, mut proofs) =
        (0, 0, 0u64, 0u64);
    let mut running = Some((child, url));

    for round in 0..kills {
        if round % 4 == 3 {
            // Kill during start-up, at a random instant (possibly inside sled::open).
            if let Some((mut ch, _)) = running.take() {
                ch.kill().await.unwrap();
            }
            let mut ch = spawn(&dir, &keys, &log);
            tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
            ch.kill().await.unwrap();
            killed_in_startup += 1;
        } else {
            let (mut ch, url) = match running.take() {
                Some(r) => r,
                None => {
                    let mut ch = spawn(&dir, &keys, &log);
                    let url = listening(&mut ch, &log).await;
                    (ch, url)
                }
            };
            let tasks: Vec<_> = signers
                .drain(..)
                .enumerate()
                .map(|(n, s)| tokio::spawn(client_loop(url.clone(), s, acked.clone(), n)))
                .collect();
            tokio::time::sleep(Duration::from_millis(30 + rng.below(300))).await;
            ch.kill().await.unwrap();
            for t in tasks {
                signers.push(t.await.unwrap());
            }
            killed_under_load += 1;
        }

        // Restart and check everything acknowledged so far.
        let mut ch = spawn(&dir, &keys, &log);
        let url = listening(&mut ch, &log).await;
        let mut c = connect(&url).await;
        let (e, p) = check(&mut c, &acked, round + 1 == kills || round % 5 == 0).await;
        checked += e;
        proofs += p;
        // Clients resume from their heads (a record in flight at the kill may or may not be in).
        signers = resume(&mut c, signers).await;
        running = Some((ch, url));
    }
    if let Some((mut ch, _)) = running.take() {
        ch.kill().await.unwrap();
    }
    let a = acked.lock().unwrap();
    eprintln!(
        "crash campaign: {kills} kills ({killed_under_load} under load, {killed_in_startup} during start-up), \
         {} acknowledged entries, {checked} entry checks, {proofs} consistency proofs verified",
        a.entries.len()
    );
    assert!(!a.entries.is_empty(), "the campaign acknowledged nothing");
}

async fn resume(
    c: &mut LedgerClient<taizhang::api::auth::SignedChannel>,
    signers: Vec<RecordSigner>,
) -> Vec<RecordSigner> {
    let mut out = Vec::new();
    for (i, s) in signers.into_iter().enumerate() {
        let h = c
            .get_signer_head(pb::GetSignerHeadRequest {
                key_id: s.key_id().0.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        let k = ed25519_dalek::SigningKey::from_bytes(&[0x80 + i as u8; 32]);
        out.push(
            RecordSigner::new(k, ORIGIN).resume(h.next_seq, h.prev_body_hash.try_into().unwrap()),
        );
    }
    out
}

/// Checks acknowledged entries and checkpoint consistency; with `full`, exports and verifies
/// the whole log offline. Returns the entries checked and the consistency proofs verified.
async fn check(
    c: &mut LedgerClient<taizhang::api::auth::SignedChannel>,
    acked: &Arc<Mutex<Acked>>,
    full: bool,
) -> (u64, u64) {
    let (entries, checkpoints) = {
        let a = acked.lock().unwrap();
        (a.entries.clone(), a.checkpoints.clone())
    };
    let ledger = ledger_key().verifying_key();
    let cp = c
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    let latest =
        verify::open_ledger_checkpoint(&cp.note, &ledger).expect("latest checkpoint verifies");
    // The whole log, streamed (ExportEntries), against every acknowledged receipt.
    let mut stream = c
        .export_entries(pb::ExportEntriesRequest {
            from: 0,
            to: latest.size,
        })
        .await
        .unwrap()
        .into_inner();
    let mut data = Vec::new();
    let mut hashes = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        assert_eq!(e.index, hashes.len() as u64, "export out of order");
        data.extend(taizhang::codec::frame(
            &e.leaf,
            &e.leaf_hash.clone().try_into().unwrap(),
        ));
        hashes.push(e.leaf_hash);
    }
    assert_eq!(hashes.len() as u64, latest.size);
    for (&index, hash) in &entries {
        let held = hashes.get(index as usize).unwrap_or_else(|| {
            panic!(
                "acknowledged entry {index} is beyond the log size {}",
                latest.size
            )
        });
        assert_eq!(held, hash, "acknowledged entry {index} changed");
    }
    // Every checkpoint ever handed out is a prefix of the current one.
    let mut sizes: Vec<(u64, [u8; 32])> = checkpoints;
    sizes.sort();
    sizes.dedup();
    let mut proofs = 0;
    for (size, root) in sizes.iter().rev().take(20).chain(sizes.iter().take(5)) {
        if *size == latest.size {
            assert_eq!(
                *root, latest.root,
                "two different roots signed for size {size}"
            );
            continue;
        }
        let p = c
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                from_size: *size,
                to_size: latest.size,
            })
            .await
            .unwrap()
            .into_inner();
        merkle::verify_consistency::<Blake3Hasher, _>(
            *size,
            latest.size,
            root,
            &latest.root,
            &p.hashes,
        )
        .unwrap_or_else(|e| {
            panic!(
                "checkpoint {size} is inconsistent with {}: {e}",
                latest.size
            )
        });
        proofs += 1;
    }
    if full {
        let report = verify::verify_export(&data, &cp.note, &ledger)
            .unwrap_or_else(|e| panic!("export fails verification: {e}"));
        assert_eq!(report.entries, latest.size);
    }
    (entries.len() as u64, proofs)
}
