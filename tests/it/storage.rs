//! Storage behaviour across restarts: the log is the truth, the views are a cache of it.
//! Restart, reindex, missing / stale / unopenable views, torn tails, and damage that must be
//! reported as data loss rather than skipped.

use crate::common::*;
use std::path::Path;
use taizhang::ledger::{Code, Ledger};
use taizhang::pb;

/// Closes the ledger and stops the server so the data dir can be reopened.
async fn shut(s: Server) -> Option<tempfile::TempDir> {
    s.ledger.close().await;
    let dir = s.dir.clone();
    let tmp = s.stop().await;
    // The last handle may be dropped on the writer's thread, which then writes sled's snapshot.
    assert!(taizhang::ledger::wait_released(
        &dir,
        std::time::Duration::from_secs(30)
    ));
    tmp
}

fn open_again(
    dir: &Path,
) -> Result<(Ledger, taizhang::ledger::OpenReport), taizhang::ledger::Refusal> {
    Ledger::open(config(dir))
}

fn segment(dir: &Path) -> std::path::PathBuf {
    dir.join("log").join(format!("seg-{:020}.tzl", 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_entry_checkpoint_and_view() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    let n = scenario(&s).await;
    let (note, size, root) = s.ledger.checkpoint().unwrap();
    let views = s.ledger.dump_views().unwrap();
    shut(s).await;
    let (l, report) = open_again(&dir).unwrap();
    assert_eq!(report.entries, n);
    assert_eq!(report.replayed, 0, "views were current; nothing to replay");
    let (note2, size2, root2) = l.checkpoint().unwrap();
    assert_eq!((size2, root2), (size, root));
    assert_eq!(
        note2, note,
        "Ed25519 is deterministic: the same checkpoint re-signed is the same note"
    );
    assert_eq!(l.dump_views().unwrap(), views);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_rebuilds_identical_views() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    let n = scenario(&s).await;
    let views = s.ledger.dump_views().unwrap();
    assert!(views.len() > 10);
    shut(s).await;
    let report = taizhang::ledger::reindex(config(&dir)).unwrap();
    assert_eq!(report.entries, n);
    assert_eq!(report.replayed, n, "reindex replays the whole log");
    let (l, _) = open_again(&dir).unwrap();
    assert_eq!(l.dump_views().unwrap(), views);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_views_are_rebuilt_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    let n = scenario(&s).await;
    let views = s.ledger.dump_views().unwrap();
    shut(s).await;
    std::fs::remove_dir_all(dir.join("views")).unwrap();
    let (l, report) = open_again(&dir).unwrap();
    assert_eq!(report.replayed, n);
    assert_eq!(l.dump_views().unwrap(), views);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_views_catch_up_by_replaying_only_the_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    let mut c = s.client().await;
    let mut w = World::setup(&mut c).await;
    submit(
        &mut c,
        w.p.sign(produce("plant-1", EPHEDRINE, "LOT-A", 5_000_000), now()),
    )
    .await
    .unwrap();
    let early = s.ledger.size();
    // Snapshot the views as they are now (sled must be closed to copy it).
    let p_head = s.ledger.signer_head(&w.p.key_id()).unwrap();
    let stash = tmp.path().join("views-early");
    shut(s).await;
    copy_dir(&dir.join("views"), &stash);
    let s = Server::start_in(&dir).await;
    let mut c = s.client().await;
    let mut p = taizhang::client::RecordSigner::new(
        ed25519_dalek::SigningKey::from_bytes(&[0x50; 32]),
        ORIGIN,
    )
    .resume(p_head.next_seq, p_head.prev_body_hash);
    for i in 0..5 {
        submit(
            &mut c,
            p.sign(
                produce("plant-1", EPHEDRINE, &format!("LOT-T{i}"), 1_000),
                now(),
            ),
        )
        .await
        .unwrap();
    }
    let full = s.ledger.size();
    let views = s.ledger.dump_views().unwrap();
    shut(s).await;
    std::fs::remove_dir_all(dir.join("views")).unwrap();
    copy_dir(&stash, &dir.join("views"));
    let (l, report) = open_again(&dir).unwrap();
    assert_eq!(report.replayed, full - early, "only the tail is replayed");
    assert!(!report.views_rebuilt);
    assert_eq!(l.dump_views().unwrap(), views);
    let _ = w.reg.next_seq();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unopenable_views_are_rebuilt_and_partial_snapshots_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    scenario(&s).await;
    let views = s.ledger.dump_views().unwrap();
    shut(s).await;
    // What sled leaves after a kill during open (upstream #1527/#1533).
    std::fs::write(
        dir.join("views").join("snap.00000000000000AB.generating"),
        b"partial",
    )
    .unwrap();
    let (l, _) = open_again(&dir).unwrap();
    assert_eq!(l.dump_views().unwrap(), views);
    l.close().await;
    drop(l);
    // Now make sled itself refuse: overwrite its config file with garbage.
    std::fs::write(dir.join("views").join("conf"), b"\xff\xfe garbage").unwrap();
    let (l, report) = open_again(&dir).unwrap();
    assert!(report.views_rebuilt, "{report:?}");
    assert_eq!(l.dump_views().unwrap(), views);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_cut_and_nothing_acknowledged_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    let n = scenario(&s).await;
    let (_, _, root) = s.ledger.checkpoint().unwrap();
    shut(s).await;
    for tail in [vec![0u8, 0, 1, 200, 1, 2, 3], vec![0u8; 4096], vec![0u8, 0]] {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(segment(&dir))
            .unwrap();
        std::io::Write::write_all(&mut f, &tail).unwrap();
        drop(f);
        let (l, report) = open_again(&dir).unwrap();
        assert_eq!(report.torn_bytes_cut, tail.len() as u64);
        assert_eq!(l.size(), n);
        assert_eq!(l.checkpoint().unwrap().2, root);
        l.close().await;
    }
}

async fn damaged(dir: &Path) -> taizhang::ledger::Refusal {
    match open_again(dir) {
        Ok(_) => panic!("damaged log opened as healthy"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_the_log_is_data_loss_not_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    scenario(&s).await;
    shut(s).await;
    let pristine = std::fs::read(segment(&dir)).unwrap();
    // A spread of positions, including inside the first and the last frame.
    let len = pristine.len();
    for pos in [0, 3, 4, 50, len / 3, len / 2, len - 40, len - 33, len - 1] {
        let mut bad = pristine.clone();
        bad[pos] ^= 0x20;
        std::fs::write(segment(&dir), &bad).unwrap();
        let _ = std::fs::remove_dir_all(dir.join("views"));
        let e = damaged(&dir).await;
        assert_eq!(e.code, Code::DataLoss, "flip at {pos}: {e}");
        assert!(
            e.message.contains("offset") || e.message.contains("entry"),
            "{e}"
        );
    }
    std::fs::write(segment(&dir), &pristine).unwrap();
    open_again(&dir).unwrap();
}

/// Frame boundaries of a segment.
fn frames(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < data.len() {
        let len = u32::from_be_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        out.push((off, off + 4 + len + 32));
        off += 4 + len + 32;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_or_swapped_entries_are_data_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    scenario(&s).await;
    shut(s).await;
    let pristine = std::fs::read(segment(&dir)).unwrap();
    let f = frames(&pristine);
    assert!(f.len() >= 8);
    // Delete entry 3.
    let mut del = pristine[..f[3].0].to_vec();
    del.extend_from_slice(&pristine[f[3].1..]);
    // Swap entries 4 and 5.
    let mut swap = pristine[..f[4].0].to_vec();
    swap.extend_from_slice(&pristine[f[5].0..f[5].1]);
    swap.extend_from_slice(&pristine[f[4].0..f[4].1]);
    swap.extend_from_slice(&pristine[f[5].1..]);
    // Delete the last entry while the views remember it.
    let last = pristine[..f[f.len() - 1].0].to_vec();
    for (what, bytes, drop_views) in [
        ("delete", del, true),
        ("swap", swap, true),
        ("delete last", last, false),
    ] {
        std::fs::write(segment(&dir), &bytes).unwrap();
        if drop_views {
            let _ = std::fs::remove_dir_all(dir.join("views"));
        }
        let e = damaged(&dir).await;
        assert_eq!(e.code, Code::DataLoss, "{what}: {e}");
        std::fs::write(segment(&dir), &pristine).unwrap();
        let (l, _) = open_again(&dir).unwrap();
        l.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ledger_key_or_catalogue_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    shut(s).await;
    let mut cfg = config(&dir);
    cfg.ledger_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let e = Ledger::open(cfg)
        .err()
        .expect("a different ledger key is refused");
    assert_eq!(e.code, Code::FailedPrecondition);
    assert!(e.message.contains("ledger key"), "{e}");
    let mut cfg = config(&dir);
    cfg.catalogue = std::sync::Arc::new(
        taizhang::model::Catalogue::from_csv(
            "other",
            taizhang::model::catalogue::PRECURSORS_CSV,
            "schedule,name_zh,name_en,cas,note\n",
        )
        .unwrap(),
    );
    let e = Ledger::open(cfg)
        .err()
        .expect("a different catalogue is refused");
    assert!(e.message.contains("catalogue"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_roll_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut cfg = config(&dir);
    cfg.max_segment_bytes = 700;
    let s = Server::start_with(cfg.clone()).await;
    let n = scenario(&s).await;
    let (_, _, root) = s.ledger.checkpoint().unwrap();
    let mut c = s.client().await;
    for i in [0, n / 2, n - 1] {
        let e = c
            .get_entry(pb::GetEntryRequest { index: i })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(e.index, i);
    }
    shut(s).await;
    let segs = std::fs::read_dir(dir.join("log")).unwrap().count();
    assert!(
        segs as u64 >= n / 2,
        "expected about one segment per entry, got {segs} for {n}"
    );
    let (l, report) = Ledger::open(cfg).unwrap();
    assert_eq!(report.entries, n);
    assert_eq!(l.checkpoint().unwrap().2, root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_shorter_than_a_signed_checkpoint_is_refused_even_with_views_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    scenario(&s).await;
    shut(s).await;
    let pristine = std::fs::read(segment(&dir)).unwrap();
    let f = frames(&pristine);
    // Cut whole entries off the end: every remaining frame is intact, and the views are gone,
    // so only the checkpoint kept beside the log remembers how long it was.
    std::fs::write(segment(&dir), &pristine[..f[f.len() - 2].0]).unwrap();
    std::fs::remove_dir_all(dir.join("views")).unwrap();
    let e = damaged(&dir).await;
    assert_eq!(e.code, Code::DataLoss, "{e}");
    assert!(e.message.contains("signed a checkpoint"), "{e}");
    std::fs::write(segment(&dir), &pristine).unwrap();
    open_again(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_per_data_dir_and_reindex_never_touches_a_live_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    scenario(&s).await;
    let views = s.ledger.dump_views().unwrap();
    let e = open_again(&dir)
        .err()
        .expect("a second ledger on a live data dir is refused");
    assert_eq!(e.code, Code::Unavailable, "{e}");
    assert!(e.message.contains("in use"), "{e}");
    let e =
        taizhang::ledger::reindex(config(&dir)).expect_err("reindex of a live data dir is refused");
    assert!(e.message.contains("in use"), "{e}");
    // The live ledger's views are untouched.
    assert_eq!(s.ledger.dump_views().unwrap(), views);
    shut(s).await;
    open_again(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_log_never_gets_a_new_genesis() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    scenario(&s).await;
    shut(s).await;
    // The log is gone, but the checkpoint this data dir signed remains.
    std::fs::remove_dir_all(dir.join("log")).unwrap();
    std::fs::remove_dir_all(dir.join("views")).unwrap();
    let e = damaged(&dir).await;
    assert_eq!(e.code, Code::DataLoss, "{e}");
    assert!(e.message.contains("log is empty"), "{e}");
    assert!(
        !segment(&dir).exists() || std::fs::read(segment(&dir)).unwrap().is_empty(),
        "no Genesis was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_in_another_format_are_rebuilt_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    let n = scenario(&s).await;
    let views = s.ledger.dump_views().unwrap();
    shut(s).await;
    // What a ledger from before the format key looks like: views without `meta/format`.
    {
        let v = taizhang::store::SledViews::open(&dir.join("views")).unwrap();
        use taizhang::store::ViewStore;
        v.apply(vec![(b"meta/format".to_vec(), None)]).unwrap();
        v.flush().unwrap();
    }
    let (l, report) = open_again(&dir).unwrap();
    assert!(report.views_rebuilt);
    let why = report.views_rebuild_reason.unwrap_or_default();
    assert!(
        why.contains("format 1")
            && why.contains(&format!("format {}", taizhang::ledger::views::VIEW_FORMAT)),
        "{why}"
    );
    assert_eq!(report.replayed, n);
    assert_eq!(l.dump_views().unwrap(), views);
}

mod tamper;

/// A ledger with a few hundred entries (several 32-leaf runs, more than one entry index
/// block), closed; returns its size.
async fn several_runs(dir: &Path) -> u64 {
    let s = Server::start_in(dir).await;
    let mut c = s.client().await;
    let mut w = World::setup(&mut c).await;
    for i in 0..300 {
        let lot = format!("RUN-{i}");
        submit(
            &mut c,
            w.p.sign(produce("plant-1", EPHEDRINE, &lot, 1_000 + i), now()),
        )
        .await
        .unwrap();
    }
    let n = s.ledger.size();
    assert!(n > 300, "{n}");
    shut(s).await;
    n
}

/// Flips one bit of the view `key` in the closed ledger's view store.
fn flip_view(dir: &Path, key: &[u8], at: usize) {
    use taizhang::store::ViewStore;
    let v = taizhang::store::SledViews::open(&dir.join("views")).unwrap();
    let mut value = v.get(key).unwrap().expect("the view exists");
    value[at] ^= 0x01;
    v.apply(vec![(key.to_vec(), Some(value))]).unwrap();
    v.flush().unwrap();
}

/// Checks entry `i`'s inclusion proof against the ledger's latest checkpoint.
fn proves(l: &Ledger, i: u64) -> Result<(), taizhang::ledger::Refusal> {
    let (_, _, root) = l.checkpoint()?;
    let (size, leaf, proof) = l.inclusion_proof(i, l.size())?;
    taizhang::merkle::verify_inclusion::<taizhang::merkle::Blake3Hasher, _>(
        i, size, &leaf, &proof, &root,
    )
    .map_err(|e| taizhang::ledger::Refusal::internal(e.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_run_roots_in_the_views_are_rebuilt_from_the_log() {
    use taizhang::ledger::views::key;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let n = several_runs(&dir).await;
    let views = open_again(&dir).unwrap().0.dump_views().unwrap();
    // The root of run 2 (entries 64..96), as the views keep it.
    flip_view(&dir, &key::run_roots(0), 2 * 32 + 5);
    let (l, report) = open_again(&dir).unwrap();
    assert!(report.views_rebuilt, "{report:?}");
    let why = report.views_rebuild_reason.unwrap_or_default();
    assert!(why.contains("kept checkpoint"), "{why}");
    assert_eq!(report.replayed, n);
    assert_eq!(l.dump_views().unwrap(), views);
    for i in [0, 70, n / 2, n - 1] {
        proves(&l, i).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_views_misplace_is_data_loss_never_a_wrong_proof() {
    use taizhang::ledger::views::{key, RunView};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let n = several_runs(&dir).await;
    // Where run 1 (entries 32..64) starts in the log, as the views keep it: its offset's last
    // byte. Its root is intact, so open trusts the views.
    flip_view(&dir, &key::run_roots(0), RunView::WIDTH + 47);
    let (l, report) = open_again(&dir).unwrap();
    assert!(!report.views_rebuilt);
    let e = proves(&l, 40).unwrap_err();
    assert_eq!(e.code, Code::DataLoss, "{e}");
    assert!(
        e.message.contains("run 1") && e.message.contains("reindex"),
        "{e}"
    );
    assert!(
        l.entry(40).is_err(),
        "no entry is served from the misplaced run"
    );
    // The other runs are sound and still proved.
    for i in [0, 31, 64, n - 1] {
        proves(&l, i).unwrap();
    }
    // The background scrub finds it too.
    let failed = loop {
        match l.scrub() {
            taizhang::ledger::Scrub::Running => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            s => break s,
        }
    };
    assert!(
        matches!(failed, taizhang::ledger::Scrub::Failed(_)),
        "{failed:?}"
    );
    l.close().await;
    drop(l);
    assert!(taizhang::ledger::wait_released(
        &dir,
        std::time::Duration::from_secs(30)
    ));
    taizhang::ledger::reindex(config(&dir)).unwrap();
    let (l, _) = open_again(&dir).unwrap();
    proves(&l, 40).unwrap();
}

/// The newest sled snapshot's log position in a view store directory.
fn sled_snapshot_lsn(views: &Path) -> u64 {
    std::fs::read_dir(views)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            u64::from_str_radix(name.strip_prefix("snap.")?, 16).ok()
        })
        .max()
        .unwrap_or(0)
}

/// sled 0.34 writes its snapshot only when it opens, and the next open scans everything
/// written after it: a clean close opens it once more, so a restart starts from a snapshot
/// that covers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_leaves_sled_a_snapshot_of_everything_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let s = Server::start_in(&dir).await;
    scenario(&s).await;
    s.ledger.flush_views().unwrap();
    let while_open = sled_snapshot_lsn(&dir.join("views"));
    shut(s).await;
    let after_close = sled_snapshot_lsn(&dir.join("views"));
    assert!(
        after_close > while_open,
        "snapshot at {while_open} while open, {after_close} after close"
    );
    let (l, report) = open_again(&dir).unwrap();
    assert!(!report.views_rebuilt);
    assert_eq!(report.replayed, 0);
    assert!(l.size() > 10);
}
