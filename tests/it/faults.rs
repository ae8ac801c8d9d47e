//! Issue #6, resource faults: a data dir on a small tmpfs that fills up, and one remounted
//! read-only. Writes are refused with `UNAVAILABLE` and change nothing, nothing acknowledged is
//! lost or damaged, and the service takes writes again when space (or write access) returns.
//! Needs root to mount a tmpfs; without it each test prints `SKIPPED` and why.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use taizhang::pb;
use tonic::Code;

/// A tmpfs mounted for the test's lifetime.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            Some(Mount(dir.to_path_buf()))
        } else {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs at {} (needs root); resource-fault tests not run",
                dir.display()
            );
            None
        }
    }

    fn remount(&self, opts: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {opts}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` to the last byte; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 << 10];
    loop {
        if f.write_all(&block).is_err() {
            break;
        }
    }
    // And the last few bytes.
    while f.write_all(&[0u8; 512]).is_ok() {}
    while f.write_all(&[0u8]).is_ok() {}
    path
}

async fn produce_n(
    c: &mut pb::ledger_client::LedgerClient<taizhang::api::auth::SignedChannel>,
    w: &mut World,
    tag: &str,
    n: usize,
) -> Vec<Result<pb::Receipt, tonic::Status>> {
    let mut out = Vec::new();
    for i in 0..n {
        let rec = w.p.sign_detached(
            produce("plant-1", ACETONE, &format!("{tag}-{i}"), 1_000),
            now(),
        );
        let r = submit(c, rec.clone()).await;
        if r.is_ok() {
            advance(&mut w.p, &rec);
        }
        out.push(r);
    }
    out
}

/// Every acknowledged receipt is in the log, identical, and the whole log verifies offline.
async fn all_acknowledged_present(s: &Server, acked: &[pb::Receipt]) {
    let mut c = s.client().await;
    for r in acked {
        let e = c
            .get_entry(pb::GetEntryRequest { index: r.index })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(e.leaf_hash, r.leaf_hash, "entry {} changed", r.index);
    }
    let cp = c
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut st = c
        .export_entries(pb::ExportEntriesRequest { from: 0, to: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut data = Vec::new();
    while let Some(e) = st.message().await.unwrap() {
        data.extend(taizhang::codec::frame(
            &e.leaf,
            &e.leaf_hash.try_into().unwrap(),
        ));
    }
    taizhang::verify::verify_export(&data, &cp.note, &ledger_key().verifying_key())
        .expect("the log verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_unavailable_and_recovers_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(m) = Mount::tmpfs(&tmp.path().join("mnt"), "24m") else {
        return;
    };
    let dir = m.0.join("data");
    let s = Server::start_in(&dir).await;
    let mut c = s.client().await;
    let mut w = World::setup(&mut c).await;
    let mut acked: Vec<pb::Receipt> = produce_n(&mut c, &mut w, "before", 20)
        .await
        .into_iter()
        .map(|r| r.expect("accepted with space"))
        .collect();
    s.ledger.flush_views().unwrap();
    let filler = fill(&m.0);
    let during = produce_n(&mut c, &mut w, "full", 10).await;
    let refused: Vec<&tonic::Status> = during.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!refused.is_empty(), "a full disk refused nothing");
    for e in &refused {
        assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    }
    acked.extend(during.into_iter().filter_map(Result::ok));
    // Space returns: writes are taken again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let after = produce_n(&mut c, &mut w, "after", 5).await;
    for r in &after {
        assert!(r.is_ok(), "not recovered: {:?}", r.as_ref().err());
    }
    acked.extend(after.into_iter().map(Result::unwrap));
    all_acknowledged_present(&s, &acked).await;
    // And across a restart.
    s.ledger.close().await;
    let keep = s.stop().await;
    let s = Server::start_in(&dir).await;
    all_acknowledged_present(&s, &acked).await;
    assert_eq!(
        s.ledger.scrub_done().await,
        taizhang::ledger::Scrub::Done(s.ledger.size())
    );
    s.ledger.close().await;
    drop(s.stop().await);
    drop(keep);
}

/// Linux refuses to remount read-only while the ledger holds its segment open for writing, so
/// a data dir goes read-only between runs: the ledger refuses to start on it (`UNAVAILABLE`,
/// naming the path), changes nothing, and starts normally once it is writable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_is_refused_at_start_and_opens_when_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(m) = Mount::tmpfs(&tmp.path().join("mnt"), "64m") else {
        return;
    };
    let dir = m.0.join("data");
    let s = Server::start_in(&dir).await;
    let mut c = s.client().await;
    let mut w = World::setup(&mut c).await;
    let acked: Vec<pb::Receipt> = produce_n(&mut c, &mut w, "rw", 10)
        .await
        .into_iter()
        .map(|r| r.expect("accepted"))
        .collect();
    drop(c);
    s.ledger.close().await;
    drop(s.stop().await);
    let before = std::fs::read(dir.join("log").join(format!("seg-{:020}.tzl", 0))).unwrap();
    // The ledger's files close a moment after it stops.
    let mut ro = false;
    for _ in 0..100 {
        if Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&m.0)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            ro = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ro, "could not remount read-only");
    let e = match taizhang::ledger::Ledger::open(config(&dir)) {
        Ok(_) => panic!("a ledger opened on a read-only data dir"),
        Err(e) => e,
    };
    assert_eq!(e.code, taizhang::ledger::Code::Unavailable, "{e}");
    assert!(
        e.message.contains(dir.to_str().unwrap()),
        "the refusal names the path: {e}"
    );
    m.remount("rw");
    let after = std::fs::read(dir.join("log").join(format!("seg-{:020}.tzl", 0))).unwrap();
    assert_eq!(before, after, "the log changed");
    let s = Server::start_in(&dir).await;
    all_acknowledged_present(&s, &acked).await;
    let mut c = s.client().await;
    let r = w.p.sign(produce("plant-1", ACETONE, "again", 1_000), now());
    submit(&mut c, r).await.expect("writable again");
    s.ledger.close().await;
    drop(s.stop().await);
}
