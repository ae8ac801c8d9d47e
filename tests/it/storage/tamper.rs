//! Issue #6, tampering: random single-byte changes to the stored log (1,000 by default,
//! `TAIZHANG_TAMPER_FLIPS` for more), each caught by the offline verifier of the data dir (naming
//! the entry) and, for a spread of them, by the server refusing to open with `DATA_LOSS` — with
//! the views kept (a replay of only the tail would not read the damage) and with them removed.

use super::*;

/// A deterministic xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_flips_in_the_stored_log_are_all_detected_and_located() {
    let flips: usize = std::env::var("TAIZHANG_TAMPER_FLIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    // Every how many flips the server is also asked to open the damaged dir.
    let open_every: usize = std::env::var("TAIZHANG_TAMPER_OPEN_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    scenario(&s).await;
    shut(s).await;
    let note = std::fs::read_to_string(dir.join("checkpoint.note")).unwrap();
    let key = ledger_key().verifying_key();
    let pristine = std::fs::read(segment(&dir)).unwrap();
    taizhang::verify::verify_export(&pristine, &note, &key).expect("the pristine log verifies");
    let views_backup = tmp.path().join("views-backup");
    copy_dir(&dir.join("views"), &views_backup);
    let mut rng = Rng(0x7a11_2026);
    let (mut located, mut refused, mut scrubbed) = (0usize, 0usize, 0usize);
    for n in 0..flips {
        let pos = (rng.next() % pristine.len() as u64) as usize;
        let mask = (rng.next() % 255 + 1) as u8;
        let mut bad = pristine.clone();
        bad[pos] ^= mask;
        // The offline check of the data dir (`taizhang verify data`).
        match taizhang::verify::verify_export(&bad, &note, &key) {
            Err(e) => {
                let m = e.to_string();
                assert!(
                    m.contains("entry"),
                    "flip {n} at {pos}: `{m}` does not say where"
                );
                located += 1;
            }
            Ok(_) => panic!("flip {n} at byte {pos} (^{mask:#04x}) passed verification"),
        }
        if n.is_multiple_of(open_every) {
            std::fs::write(segment(&dir), &bad).unwrap();
            let keep_views = (n / open_every).is_multiple_of(2);
            let _ = std::fs::remove_dir_all(dir.join("views"));
            if keep_views {
                copy_dir(&views_backup, &dir.join("views"));
            }
            let views = if keep_views { "kept" } else { "removed" };
            match open_again(&dir) {
                Err(e) => {
                    assert_eq!(
                        e.code,
                        Code::DataLoss,
                        "flip {n} at {pos} (views {views}): {e}"
                    );
                    refused += 1;
                }
                Ok((l, _)) => {
                    // Only the part before the views' position is trusted at open, and only
                    // until the scrub has read it.
                    assert!(
                        keep_views,
                        "flip {n} at {pos}: opened as healthy with the views rebuilt"
                    );
                    let why = loop {
                        match l.scrub() {
                            taizhang::ledger::Scrub::Running => {
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await
                            }
                            taizhang::ledger::Scrub::Failed(why) => break why,
                            taizhang::ledger::Scrub::Done(k) => {
                                panic!("flip {n} at {pos}: the scrub passed {k} frames")
                            }
                        }
                    };
                    assert!(
                        why.contains("entry"),
                        "flip {n}: `{why}` does not say where"
                    );
                    assert!(l.poisoned().is_some(), "flip {n}: writes still taken");
                    let served_damaged = (0..l.size())
                        .any(|i| matches!(l.entry(i), Err(e) if e.code == Code::DataLoss));
                    assert!(
                        served_damaged,
                        "flip {n} at {pos}: every entry read back as sound"
                    );
                    l.close().await;
                    scrubbed += 1;
                }
            }
        }
    }
    // Restored, it opens and verifies again.
    std::fs::write(segment(&dir), &pristine).unwrap();
    let _ = std::fs::remove_dir_all(dir.join("views"));
    copy_dir(&views_backup, &dir.join("views"));
    let (l, _) = open_again(&dir).unwrap();
    assert_eq!(
        l.scrub_done().await,
        taizhang::ledger::Scrub::Done(l.size())
    );
    l.close().await;
    eprintln!(
        "{flips} random flips in a {}-byte log: {located} located by the verifier; of {} opened, \
         {refused} refused at open with DATA_LOSS, {scrubbed} caught by the scrub (writes \
         stopped, the damaged entry refused with DATA_LOSS)",
        pristine.len(),
        refused + scrubbed
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
