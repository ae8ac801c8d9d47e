//! The Python client (examples/python), written from docs/protocol.md alone, against a real
//! server: it signs a query and a record, submits, and verifies the receipt offline. Runs when
//! `python3` with grpcio, grpcio-tools, cryptography and blake3 is present (`.ci/run` installs
//! them from PyPI when it can); otherwise it prints SKIPPED and why.

use crate::common::*;
use std::process::Command;

fn python_ready() -> Result<(), String> {
    let o = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, cryptography, blake3"])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_signs_submits_and_verifies_its_receipt() {
    if let Err(why) = python_ready() {
        eprintln!(
            "SKIPPED: the Python client needs python3 with examples/python/requirements.txt ({why})"
        );
        return;
    }
    let s = Server::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let ledger_pub = tmp.path().join("ledger.pub");
    std::fs::write(
        &ledger_pub,
        taizhang::crypto::public_key_text(&ledger_key().verifying_key()),
    )
    .unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/taizhang_client.py");
    let url = s.url.clone();
    let key = key_file(&national_key());
    let o = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .args(["--server", &url, "--key"])
            .arg(key)
            .arg("--ledger-key")
            .arg(ledger_pub)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    assert!(text.contains("verified offline"), "{text}");
    // And the ledger holds what it submitted: a regulator registered by the national root.
    let size = s.ledger.size();
    let (leaf, _) = s.ledger.entry(size - 1).unwrap();
    let leaf = taizhang::codec::Leaf::decode(&leaf).unwrap();
    let body = taizhang::codec::decode_body(&leaf.body).unwrap();
    assert!(matches!(
        body.payload,
        Some(taizhang::pb::record_body::Payload::RegisterAuthority(_))
    ));
}
