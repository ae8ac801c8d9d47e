//! Offline verification of a real export: every single-byte change to the export, and every
//! change to the checkpoint note, is detected and located.

use crate::common::*;
use taizhang::pb;
use taizhang::verify::{verify_export, VerifyError};

async fn export_of_scenario() -> (Vec<u8>, String) {
    let s = Server::start().await;
    scenario(&s).await;
    let mut c = s.client().await;
    let cp = c
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut stream = c
        .export_entries(pb::ExportEntriesRequest { from: 0, to: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut data = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        data.extend(taizhang::codec::frame(
            &e.leaf,
            &e.leaf_hash.try_into().unwrap(),
        ));
    }
    (data, cp.note)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_single_byte_flip_in_an_export_fails_verification() {
    let (data, note) = export_of_scenario().await;
    let key = ledger_key().verifying_key();
    let ok = verify_export(&data, &note, &key).unwrap();
    assert_eq!(ok.entries, 13);
    // Exhaustive: every byte position, one flipped bit each (the bit varies with the position).
    for pos in 0..data.len() {
        let mut bad = data.clone();
        bad[pos] ^= 1 << (pos % 8);
        match verify_export(&bad, &note, &key) {
            Err(VerifyError::Export(msg)) => assert!(msg.contains("entry"), "flip at {pos}: {msg}"),
            other => panic!(
                "flip at byte {pos} of {} not detected: {other:?}",
                data.len()
            ),
        }
    }
    eprintln!("{} single-byte flips, all detected", data.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_reordered_or_foreign_exports_fail() {
    let (data, note) = export_of_scenario().await;
    let key = ledger_key().verifying_key();
    // Truncation anywhere.
    for cut in (0..data.len()).step_by(97) {
        assert!(
            verify_export(&data[..cut], &note, &key).is_err(),
            "cut at {cut}"
        );
    }
    // Every byte of the checkpoint note matters too.
    for pos in 0..note.len() {
        let mut b = note.clone().into_bytes();
        b[pos] ^= 1;
        if let Ok(n) = String::from_utf8(b) {
            assert!(
                verify_export(&data, &n, &key).is_err(),
                "note flip at {pos}"
            );
        }
    }
    // A checkpoint by another key.
    let other = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
    assert!(matches!(
        verify_export(&data, &note, &other),
        Err(VerifyError::Checkpoint(_))
    ));
}
