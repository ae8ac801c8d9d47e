//! The real `taizhang` binary: keygen, serve, submit (JSON and TOML), verify, export, reindex,
//! demo — as a user runs them.

use crate::common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use taizhang::crypto;

/// Runs `taizhang ARGS` in `cwd`; queries are signed with `cwd/keys/regulator.key` when there
/// is one (the root regulator `serve` is started with).
fn run(args: &[&str], cwd: &Path) -> std::process::Output {
    let mut cmd = Command::new(bin());
    let key = cwd.join("keys/regulator.key");
    if key.exists() {
        cmd.env("TAIZHANG_QUERY_KEY", key);
    }
    cmd.args(args)
        .current_dir(cwd)
        .env("TAIZHANG_LOG", "warn")
        .output()
        .expect("run taizhang")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Serve(Child);
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, keys: &Path) -> (Serve, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--origin", ORIGIN])
        .arg("--data")
        .arg(dir)
        .arg("--ledger-key")
        .arg(keys.join("ledger.key"))
        .arg("--root-regulator")
        .arg(keys.join("regulator.pub"));
    start(cmd)
}

/// Starts a `serve` command and waits for its "listening on ADDR" line.
fn start(mut cmd: Command) -> (Serve, String) {
    let mut child = cmd
        .env("TAIZHANG_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // Keep reading what it prints later, so it never writes to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    (Serve(child), format!("http://{addr}"))
}

fn keys_in(dir: &Path) -> std::path::PathBuf {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("ledger.key"),
        crypto::secret_key_text(&ledger_key()),
    )
    .unwrap();
    std::fs::write(
        keys.join("ledger.pub"),
        crypto::public_key_text(&ledger_key().verifying_key()),
    )
    .unwrap();
    std::fs::write(
        keys.join("regulator.key"),
        crypto::secret_key_text(&regulator_key()),
    )
    .unwrap();
    std::fs::write(
        keys.join("regulator.pub"),
        crypto::public_key_text(&regulator_key().verifying_key()),
    )
    .unwrap();
    keys
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&["keygen", "alice"], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_eq!(id.len(), 32);
    let secret = tmp.path().join("alice.key");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret key mode {mode:o}");
    let pk = crypto::parse_public_key_text(
        &std::fs::read_to_string(tmp.path().join("alice.pub")).unwrap(),
    )
    .unwrap();
    assert_eq!(crypto::KeyId::of(&pk).to_hex(), id);
    let sk = crypto::parse_secret_key_text(&std::fs::read_to_string(&secret).unwrap()).unwrap();
    assert_eq!(sk.verifying_key(), pk);
    let before = std::fs::read(&secret).unwrap();
    let again = run(&["keygen", "alice"], tmp.path());
    assert!(!again.status.success());
    assert!(
        text(&again).contains("never overwrites"),
        "{}",
        text(&again)
    );
    assert_eq!(std::fs::read(&secret).unwrap(), before);
}

#[test]
fn submit_json_and_toml_then_verify_receipts_and_export_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys_in(tmp.path());
    let (_srv, url) = serve(&tmp.path().join("data"), &keys);
    let p = tmp.path();
    let producer = code("91440300MA5JXN001");
    let ent_key = ed25519_dalek::SigningKey::from_bytes(&[0x33; 32]);
    std::fs::write(keys.join("ent.key"), crypto::secret_key_text(&ent_key)).unwrap();
    let pk_b64 = base64_std(&ent_key.verifying_key().to_bytes());
    let regulator_json = format!(
        r#"{{"records": [
  {{"enrolEnterprise": {{"creditCode": "{producer}", "name": "示例化工", "jurisdiction": "440305",
     "licences": [{{"licenceNo": "P-1", "category": "CATEGORY_PRECURSOR_3", "activities": ["ACTIVITY_PRODUCE", "ACTIVITY_SELL"]}}],
     "sites": [{{"siteId": "plant-1", "name": "Plant 1"}}]}}}},
  {{"registerKey": {{"publicKey": "{pk_b64}", "role": "ROLE_ENTERPRISE", "enterprise": "{producer}", "holder": "ERP"}}}}
]}}"#
    );
    std::fs::write(p.join("reg.json"), regulator_json).unwrap();
    let o = run(
        &[
            "submit",
            "reg.json",
            "--key",
            "keys/regulator.key",
            "--server",
            &url,
            "--receipts",
            "reg.receipts",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("records[1]: entry 2"), "{}", text(&o));
    let toml = r#"
[[records]]
produce = { siteId = "plant-1", substance = "67-64-1", lot = "ACE-1", quantity = { amount = "5000000", unit = "UNIT_MILLIGRAM" } }

[[records]]
stock_take = { site_id = "plant-1", counts = [ { substance = "67-64-1", lot = "ACE-1", quantity = { amount = 4999000, unit = "UNIT_MILLIGRAM" } } ] }
"#;
    std::fs::write(p.join("ent.toml"), toml).unwrap();
    let o = run(
        &[
            "submit",
            "ent.toml",
            "--key",
            "keys/ent.key",
            "--server",
            &url,
            "--receipts",
            "ent.receipts",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    // Submitting the same file again continues the key's chain from the server's head.
    let o = run(
        &[
            "submit",
            "ent.toml",
            "--key",
            "keys/ent.key",
            "--server",
            &url,
        ],
        p,
    );
    assert!(
        !o.status.success(),
        "a second produce of lot ACE-1 must be refused"
    );
    assert!(
        text(&o).contains("AlreadyExists") && text(&o).contains("produce.lot"),
        "{}",
        text(&o)
    );

    for f in ["reg.receipts", "ent.receipts"] {
        let o = run(
            &["verify", "receipt", f, "--ledger-key", "keys/ledger.pub"],
            p,
        );
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(text(&o).matches(": ok").count(), 2, "{}", text(&o));
    }
    // A tampered receipt (another index) fails with exit code 3.
    let receipts = std::fs::read_to_string(p.join("ent.receipts")).unwrap();
    let tampered = receipts.replacen("\"index\":\"3\"", "\"index\":\"2\"", 1);
    assert_ne!(
        tampered, receipts,
        "receipt JSON layout changed: {receipts}"
    );
    std::fs::write(p.join("bad.receipts"), tampered).unwrap();
    let o = run(
        &[
            "verify",
            "receipt",
            "bad.receipts",
            "--ledger-key",
            "keys/ledger.pub",
        ],
        p,
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    let o = run(
        &[
            "export",
            "--server",
            &url,
            "--out",
            "log.tzl",
            "--checkpoint",
            "cp.note",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        &[
            "verify",
            "export",
            "log.tzl",
            "--checkpoint",
            "cp.note",
            "--ledger-key",
            "keys/ledger.pub",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ok: 5 entries"), "{}", text(&o));
    let mut log = std::fs::read(p.join("log.tzl")).unwrap();
    let mid = log.len() / 2;
    log[mid] ^= 1;
    std::fs::write(p.join("bad.tzl"), &log).unwrap();
    let o = run(
        &[
            "verify",
            "export",
            "bad.tzl",
            "--checkpoint",
            "cp.note",
            "--ledger-key",
            "keys/ledger.pub",
        ],
        p,
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("entry"),
        "the failure names where: {}",
        text(&o)
    );
    // Checked against another ledger's key, the checkpoint itself fails.
    let o = run(
        &[
            "verify",
            "export",
            "log.tzl",
            "--checkpoint",
            "cp.note",
            "--ledger-key",
            "keys/regulator.pub",
        ],
        p,
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

#[test]
fn reindex_and_verify_a_stopped_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys_in(tmp.path());
    let data = tmp.path().join("data");
    let p = tmp.path();
    {
        let (_srv, url) = serve(&data, &keys);
        let o = run(
            &[
                "export",
                "--server",
                &url,
                "--out",
                "log.tzl",
                "--checkpoint",
                "cp.note",
            ],
            p,
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let d = data.to_str().unwrap();
    let o = run(
        &[
            "reindex",
            "--data",
            d,
            "--ledger-key",
            "keys/ledger.key",
            "--root-regulator",
            "keys/regulator.pub",
            "--origin",
            ORIGIN,
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("reindexed 1 entries"), "{}", text(&o));
    let o = run(
        &[
            "verify",
            "data",
            d,
            "--checkpoint",
            "cp.note",
            "--ledger-key",
            "keys/ledger.pub",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn serve_takes_genesis_from_a_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys_in(tmp.path());
    let p = tmp.path();
    std::fs::write(
        p.join("ledger.toml"),
        format!(
            "origin = \"city.example/ledger\"\nledger_key = \"{}\"\n\n[[root_regulators]]\npublic_key = \"{}\"\nname = \"市公安局禁毒支队\"\nagency = \"AGENCY_PUBLIC_SECURITY\"\njurisdiction = \"4403\"\n",
            keys.join("ledger.key").display(),
            keys.join("regulator.pub").display()
        ),
    )
    .unwrap();
    let data = p.join("data");
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--config",
        "ledger.toml",
    ])
    .arg("--data")
    .arg(&data)
    .current_dir(p);
    let (_srv, url) = start(cmd);
    let o = run(
        &[
            "export",
            "--server",
            &url,
            "--out",
            "log.tzl",
            "--checkpoint",
            "cp.note",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let note = std::fs::read_to_string(p.join("cp.note")).unwrap();
    assert!(note.starts_with("city.example/ledger\n1\n"), "{note}");
    // Genesis names the configured root regulator, with its name and jurisdiction.
    let log = std::fs::read(p.join("log.tzl")).unwrap();
    let leaf = taizhang::codec::Leaf::decode(&log[4..log.len() - 32]).unwrap();
    let body = taizhang::codec::decode_body(&leaf.body).unwrap();
    let Some(taizhang::pb::record_body::Payload::Genesis(g)) = body.payload else {
        panic!("entry 0 is not genesis")
    };
    assert_eq!(g.origin, "city.example/ledger");
    assert_eq!(g.root_regulators.len(), 1);
    assert_eq!(g.root_regulators[0].jurisdiction, "4403");
    assert_eq!(g.root_regulators[0].name, "市公安局禁毒支队");
    assert_eq!(
        g.root_regulators[0].public_key,
        regulator_key().verifying_key().to_bytes().to_vec()
    );
}

#[test]
fn serve_over_tls_and_query_with_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys_in(tmp.path());
    let p = tmp.path();
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(p.join("tls.crt"), c.cert.pem()).unwrap();
    std::fs::write(p.join("tls.key"), c.key_pair.serialize_pem()).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--origin", ORIGIN])
        .arg("--data")
        .arg(p.join("data"))
        .arg("--ledger-key")
        .arg(keys.join("ledger.key"))
        .arg("--root-regulator")
        .arg(keys.join("regulator.pub"))
        .arg("--tls-cert")
        .arg(p.join("tls.crt"))
        .arg("--tls-key")
        .arg(p.join("tls.key"));
    let (_srv, url) = start(cmd);
    let url = url.replace("http://127.0.0.1", "https://localhost");
    let args = |extra: &[&str]| -> Vec<String> {
        [
            "export",
            "--server",
            &url,
            "--out",
            "log.tzl",
            "--checkpoint",
            "cp.note",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(&["--tls-ca", "tls.crt"]);
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), p);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("exported 1 entries"), "{}", text(&o));
    // Without trusting the certificate the CLI cannot connect, and says so.
    let a = args(&[]);
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), p);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("connecting to"), "{}", text(&o));
    // Giving only half of the TLS pair is refused before anything starts.
    let o = run(
        &[
            "serve",
            "--data",
            p.join("data2").to_str().unwrap(),
            "--tls-cert",
            "tls.crt",
        ],
        p,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("--tls-key"), "{}", text(&o));
}

#[test]
fn a_witness_process_cosigns_and_the_cli_verifies_the_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys_in(tmp.path());
    let p = tmp.path();
    let wkey = ed25519_dalek::SigningKey::from_bytes(&[0xc9; 32]);
    std::fs::write(keys.join("witness.key"), crypto::secret_key_text(&wkey)).unwrap();
    let name = "witness.cli/w1";
    let vkey = taizhang::checkpoint::cosigner_vkey(name, &wkey.verifying_key()).unwrap();
    let mut w = Command::new(bin());
    w.args([
        "witness",
        "--listen",
        "127.0.0.1:0",
        "--origin",
        ORIGIN,
        "--name",
        name,
    ])
    .arg("--data")
    .arg(p.join("witness-state"))
    .arg("--key")
    .arg(keys.join("witness.key"))
    .arg("--ledger-key")
    .arg(keys.join("ledger.pub"));
    let (_w, wurl) = start(w);
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--origin", ORIGIN])
        .arg("--data")
        .arg(p.join("data"))
        .arg("--ledger-key")
        .arg(keys.join("ledger.key"))
        .arg("--root-regulator")
        .arg(keys.join("regulator.pub"))
        .arg("--witness")
        .arg(format!("{vkey}@{wurl}"))
        .args(["--witness-interval-ms", "50"]);
    let (_srv, url) = start(cmd);
    // Nothing is witnessed until the regulator registers the witness's key.
    let o = run(
        &[
            "checkpoint",
            "--server",
            &url,
            "--witnessed",
            "--out",
            "w.note",
        ],
        p,
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no checkpoint has been witnessed"),
        "{}",
        text(&o)
    );
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = client_as(&url, regulator_key()).await;
        let mut reg = taizhang::client::RecordSigner::new(regulator_key(), ORIGIN);
        let r = reg.sign(
            register_official(&wkey, taizhang::pb::Role::Witness, "", name),
            now(),
        );
        submit(&mut c, r).await.unwrap();
    });
    let mut fetched = false;
    for _ in 0..200 {
        let o = run(
            &[
                "checkpoint",
                "--server",
                &url,
                "--witnessed",
                "--out",
                "w.note",
            ],
            p,
        );
        if o.status.success() {
            fetched = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(fetched, "the checkpoint was never witnessed");
    let o = run(
        &[
            "verify",
            "checkpoint",
            "w.note",
            "--ledger-key",
            "keys/ledger.pub",
            "--witness",
            &vkey,
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("cosigned by witness.cli/w1"),
        "{}",
        text(&o)
    );
    let stranger = taizhang::checkpoint::cosigner_vkey(
        "witness.cli/w2",
        &ed25519_dalek::SigningKey::from_bytes(&[0xca; 32]).verifying_key(),
    )
    .unwrap();
    let o = run(
        &[
            "verify",
            "checkpoint",
            "w.note",
            "--ledger-key",
            "keys/ledger.pub",
            "--witness",
            &stranger,
        ],
        p,
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("0 of the 1 trusted witnesses"),
        "{}",
        text(&o)
    );
    // An export verified against the witnessed checkpoint, under the policy, from a trusted one.
    std::fs::copy(p.join("w.note"), p.join("trusted.note")).unwrap();
    let o = run(
        &[
            "export",
            "--server",
            &url,
            "--out",
            "log.tzl",
            "--checkpoint",
            "latest.note",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        &[
            "verify",
            "export",
            "log.tzl",
            "--checkpoint",
            "w.note",
            "--ledger-key",
            "keys/ledger.pub",
            "--witness",
            &vkey,
            "--trusted",
            "trusted.note",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    // A receipt carries the checkpoint current at ingest; re-proven against the witnessed one
    // it meets the policy, and it extends the checkpoint trusted before.
    let ent = code("91440300MA5CLWTN1");
    std::fs::write(
        p.join("more.json"),
        format!(r#"{{"records": [{{"enrolEnterprise": {{"creditCode": "{ent}", "name": "W", "jurisdiction": "440305", "sites": [{{"siteId": "s"}}]}}}}]}}"#),
    )
    .unwrap();
    let o = run(
        &[
            "submit",
            "more.json",
            "--key",
            "keys/regulator.key",
            "--server",
            &url,
            "--receipts",
            "r.jsonl",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let policy = [
        "--ledger-key",
        "keys/ledger.pub",
        "--witness",
        vkey.as_str(),
    ];
    let o = run(
        &[&["verify", "receipt", "r.jsonl"][..], &policy].concat(),
        p,
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "not witnessed at ingest: {}",
        text(&o)
    );
    let mut reproven = false;
    for _ in 0..200 {
        let o = run(
            &["reprove", "r.jsonl", "--out", "w.jsonl", "--server", &url],
            p,
        );
        if o.status.success() {
            reproven = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(
        reproven,
        "the receipt was never covered by a witnessed checkpoint"
    );
    let o = run(
        &[&["verify", "receipt", "w.jsonl"][..], &policy].concat(),
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    // The consistency proof from the trusted checkpoint to the receipts' (now stable) one.
    let o = run(
        &[
            "checkpoint",
            "--server",
            &url,
            "--witnessed",
            "--out",
            "w2.note",
            "--since",
            "trusted.note",
            "--proof-out",
            "p.txt",
        ],
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        &[
            &[
                "verify",
                "receipt",
                "w.jsonl",
                "--trusted",
                "trusted.note",
                "--consistency",
                "p.txt",
            ][..],
            &policy,
        ]
        .concat(),
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(
        &[
            &[
                "verify",
                "checkpoint",
                "w2.note",
                "--trusted",
                "trusted.note",
                "--consistency",
                "p.txt",
            ][..],
            &policy,
        ]
        .concat(),
        p,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("consistent with the trusted checkpoint"),
        "{}",
        text(&o)
    );
    // A tampered proof fails.
    std::fs::write(p.join("bad.txt"), format!("{}\n", "00".repeat(32))).unwrap();
    let o = run(
        &[
            &[
                "verify",
                "checkpoint",
                "w2.note",
                "--trusted",
                "trusted.note",
                "--consistency",
                "bad.txt",
            ][..],
            &policy,
        ]
        .concat(),
        p,
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

#[test]
fn serving_an_existing_ledger_needs_only_its_ledger_key() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys_in(tmp.path());
    let data = tmp.path().join("data");
    {
        let (_s, _url) = serve(&data, &keys);
    }
    // From a directory without keys/ and without --root-regulator: the Genesis is on the log.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .arg("--ledger-key")
        .arg(keys.join("ledger.key"))
        .current_dir(elsewhere.path());
    let (_s, url) = start(cmd);
    let o = run(
        &["checkpoint", "--server", &url, "--out", "cp.note"],
        elsewhere.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let note = std::fs::read_to_string(elsewhere.path().join("cp.note")).unwrap();
    assert!(note.starts_with(ORIGIN), "{note}");
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}
