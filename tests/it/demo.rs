//! The README's first command, as a newcomer runs it: `taizhang demo` plays a city's month over
//! real gRPC, injects seven anomalies, and must report exactly those; its HTML report is
//! self-contained and, rendered in headless Chromium, shows the custody pictures; its export
//! verifies offline with the printed command.

use crate::common::bin;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn run(args: &[&str], cwd: &Path) -> (bool, String) {
    let o = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("TAIZHANG_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run taizhang");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn the_demo_finds_exactly_what_it_injected_and_its_report_and_export_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("city");
    // From a directory without keys/: the demo's keys are compiled in.
    let (ok, t) = run(
        &["demo", "--days", "7", "--data", data.to_str().unwrap()],
        tmp.path(),
    );
    assert!(ok, "{t}");
    for want in [
        "1. reported theft: 3 g morphine",
        "in transit gap: 1.2 g ephedrine",
        "not received: 300 kg toluene",
        "count shortfall: 3 kg acetone",
        "endorsement mismatch",
        "exported 2,000 kg, endorsed as imported 1,800 kg",
        "overdrawn purchase permit: FailedPrecondition: ship.quantity.amount: 12000000 exceeds permit",
        "second seller on an exhausted filing: FailedPrecondition: ship.permit:",
        "is exhausted",
        "shortfall — book",
        "self-check: the audits found each of the 7 injected anomalies, and nothing else",
        "cosigned by 2 of 2 witnesses",
    ] {
        assert!(t.contains(want), "missing `{want}` in:\n{t}");
    }
    // No log noise in the story (the demo logs errors only unless asked).
    assert!(!t.contains(" WARN "), "{t}");
    let played: u64 = t
        .split("played ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the record count");
    assert!(
        played > 500,
        "a week of the city is hundreds of records, got {played}"
    );

    // The printed verification command works, as printed (from the repo, for keys/).
    let line = t
        .lines()
        .find(|l| l.contains(" verify export "))
        .expect("a verify command");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        Path::new(words[0]),
        bin(),
        "the command names the binary that ran"
    );
    let args: Vec<&str> = words[1..].to_vec();
    let elsewhere = tempfile::tempdir().unwrap();
    let repo = elsewhere.path();
    let (ok, v) = run(&args, repo);
    assert!(ok, "{line}\n{v}");
    assert!(v.contains("witnesses"), "{v}");
    // A witness the checkpoint lacks makes the same command fail.
    let mut strict = args.clone();
    strict.extend(["--quorum", "3"]);
    let (ok, v) = run(&strict, repo);
    assert!(!ok, "a quorum of 3 of 2 witnesses passed: {v}");

    // The report: one self-contained file, every citation resolves, a picture per loss.
    let html = std::fs::read_to_string(data.join("report/index.html")).unwrap();
    for needle in [
        "src=\"http",
        "href=\"http",
        "<script",
        "@import",
        "url(http",
    ] {
        assert!(!html.contains(needle), "the report reaches out: {needle}");
    }
    for label in [
        "流失追溯 · Losses, ranked",
        "许可证核销 · Permit reconciliation",
        "进出口双向核查 · Import/export two-way checks",
        "账物相符 · Mass balance",
        "证据条目 · Entries cited",
    ] {
        assert!(html.contains(label), "missing section {label}");
    }
    let ids: BTreeSet<&str> = html
        .split("id=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    let links: Vec<&str> = html
        .split("href=\"#")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    assert!(links.len() > 20, "few links: {}", links.len());
    for l in &links {
        assert!(ids.contains(l), "link #{l} has no target");
    }
    assert!(
        html.matches("<svg").count() >= 3,
        "custody pictures missing"
    );
    // Each cited entry's leaf hash in the appendix is the export's.
    let export = std::fs::read(data.join("export.tzl")).unwrap();
    let mut hashes = BTreeSet::new();
    taizhang::codec::scan_frames(&export, 0, [0; 32], |_, leaf, _| {
        hashes.insert(hex::encode(taizhang::codec::leaf_hash(leaf)));
        Ok(())
    })
    .unwrap();
    let rows: Vec<&str> = html.split("<tr id=\"e").skip(1).collect();
    assert!(!rows.is_empty());
    for r in rows {
        let h = r
            .split("<code>")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .unwrap();
        assert!(hashes.contains(h), "appendix hash {h} is not in the export");
    }
    screenshot(&data.join("report/index.html"));
}

/// Renders the report in headless Chromium and checks the custody pictures are drawn: the
/// pictures mark what went missing in red (#d7191c), a colour nothing else in the report uses.
fn screenshot(page: &Path) {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        println!("SKIPPED: the screenshot check (no chromium; `apt-get install chromium`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("report.png");
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,2400",
            &format!("--user-data-dir={}", dir.path().join("profile").display()),
            &format!("--screenshot={}", png.display()),
            &format!("file://{}", page.display()),
        ])
        .output()
        .unwrap();
    assert!(png.exists(), "{}", String::from_utf8_lossy(&o.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let px = &buf[..info.buffer_size()];
    let near = |p: &[u8], c: [u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 24);
    let red = px
        .chunks(channels)
        .filter(|p| near(&p[..3], [0xd7, 0x19, 0x1c]))
        .count();
    let white = px
        .chunks(channels)
        .filter(|p| near(&p[..3], [0xff, 0xff, 0xff]))
        .count();
    let total = px.len() / channels;
    assert!(white < total, "a blank page");
    assert!(
        red > 200,
        "no custody picture drawn ({red} red pixels of {total})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taizhang_report_writes_the_html_for_a_jurisdiction_in_the_keys_scope() {
    use crate::common::{key_file, regulator_key, scenario, Server};
    let s = Server::start().await;
    scenario(&s).await;
    // A lot name that is markup: the report must show it, never run it.
    let mut c = s.client().await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[0x50; 32]); // World's producer
    let head = c
        .get_signer_head(taizhang::pb::GetSignerHeadRequest {
            key_id: crate::common::key_id(&key).0.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut p = taizhang::client::RecordSigner::new(key, crate::common::ORIGIN)
        .resume(head.next_seq, head.prev_body_hash.try_into().unwrap());
    let lot = "<img src=x onerror=alert(1)>";
    for r in [
        crate::common::produce("plant-1", crate::common::EPHEDRINE, lot, 1_000),
        taizhang::pb::record_body::Payload::LossReport(taizhang::pb::LossReport {
            site_id: "plant-1".into(),
            substance: crate::common::EPHEDRINE.into(),
            lot: lot.into(),
            quantity: Some(taizhang::client::mg(400)),
            kind: taizhang::pb::LossKind::Theft as i32,
            police_report_ref: "<script>x</script>".into(),
        }),
    ] {
        crate::common::submit(&mut c, p.sign(r, crate::common::now()))
            .await
            .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let report = |j: &str, key: std::path::PathBuf| {
        tokio::process::Command::new(bin())
            .args(["report", "--server", &s.url, "--jurisdiction", j, "--out"])
            .arg(out.path())
            .env("TAIZHANG_QUERY_KEY", key)
            .env("TAIZHANG_LOG", "warn")
            .output()
    };
    // The scenario's regulator covers 44; its one loss is a receipt 1 g short.
    let o = report("44", key_file(&regulator_key())).await.unwrap();
    let t = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("report for 44:") && t.contains("(2 losses"),
        "{t}"
    );
    let html = std::fs::read_to_string(out.path().join("index.html")).unwrap();
    assert!(
        !html.contains("<img") && !html.contains("<script"),
        "markup from the ledger reached the page"
    );
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "the lot is not shown escaped"
    );
    assert!(html.contains("Content-Security-Policy"));
    assert!(html.contains("in transit gap"), "no loss row");
    assert!(html.contains("<svg"), "no custody picture");
    assert!(html.contains("LOT-A"), "the lot is not named");
    assert!(!html.contains("BALANCE_STATUS_") && html.contains("balanced"));
    // A jurisdiction outside the key's scope is refused, and nothing is written.
    std::fs::remove_file(out.path().join("index.html")).unwrap();
    let o = report("11", key_file(&regulator_key())).await.unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("PermissionDenied"),
        "{o:?}"
    );
    assert!(!out.path().join("index.html").exists());
    // A malformed jurisdiction is a usage error naming the flag.
    let o = report("44x", key_file(&regulator_key())).await.unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--jurisdiction"),
        "{o:?}"
    );
}
