//! The docs never rot: every `taizhang` command in README.md, ARCHITECTURE.md and docs/*.md
//! (in shell code blocks, as `taizhang …`, `$B …` or `cargo run --release -- …`) must parse
//! against the real binary — subcommands, flags and values as they are today. What each
//! command does is tested where its capability is (cli.rs, demo.rs, reports.rs, epcis.rs, …).

use crate::common::bin;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Shell code blocks' lines, continuation lines joined, with file and line number.
fn shell_lines(file: &Path) -> Vec<(String, usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    let mut in_block = false;
    let mut shell = false;
    let mut pending: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(lang) = t.strip_prefix("```") {
            in_block = !in_block;
            shell = in_block && matches!(lang.trim(), "" | "sh" | "bash" | "console" | "shell");
            continue;
        }
        if !(in_block && shell) {
            continue;
        }
        let (start, mut acc) = pending.take().unwrap_or((n + 1, String::new()));
        let t = t.strip_prefix("$ ").unwrap_or(t);
        if let Some(cont) = t.strip_suffix('\\') {
            acc.push_str(cont);
            acc.push(' ');
            pending = Some((start, acc));
        } else {
            acc.push_str(t);
            out.push((file.display().to_string(), start, acc));
        }
    }
    out
}

/// Cuts a `#` comment (at a word start, outside quotes).
fn uncomment(s: &str) -> &str {
    let (mut quote, mut prev_space) = (None, true);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return &s[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    s
}

/// The arguments after the program, if the line runs `taizhang`.
fn taizhang_args(line: &str) -> Option<Vec<String>> {
    let words = shell_words::split(uncomment(line)).ok()?;
    // Up to the first pipe, redirection or list operator; without leading VAR=value.
    let words: Vec<String> = words
        .into_iter()
        .take_while(|w| !matches!(w.as_str(), "|" | "&" | "&&" | ";" | "||") && !w.starts_with('>'))
        .skip_while(|w| w.contains('=') && w.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .collect();
    let first = words.first()?;
    match first.as_str() {
        "taizhang" | "$B" | "target/release/taizhang" | "./target/release/taizhang" => {
            Some(words[1..].to_vec())
        }
        "cargo" if words.get(1).map(String::as_str) == Some("run") => {
            let at = words.iter().position(|w| w == "--")?;
            Some(words[at + 1..].to_vec())
        }
        _ => None,
    }
}

#[test]
fn every_command_in_the_docs_parses_against_the_binary() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut checked = 0;
    let mut failures = Vec::new();
    for f in &files {
        for (file, line, text) in shell_lines(f) {
            let Some(args) = taizhang_args(&text) else {
                continue;
            };
            let o = Command::new(bin())
                .args(&args)
                .env("TAIZHANG_PARSE_ONLY", "1")
                .output()
                .unwrap();
            checked += 1;
            if !o.status.success() {
                failures.push(format!(
                    "{file}:{line}: `{text}`\n    {}",
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .next()
                        .unwrap_or("")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} documented commands do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        checked >= 50,
        "only {checked} commands found in the docs: is the extraction broken?"
    );
}

#[test]
fn the_extraction_sees_what_a_reader_sees() {
    assert_eq!(
        taizhang_args("$B audit trace LOT --svg lot.svg    # custody graph (追溯)"),
        Some(vec![
            "audit".into(),
            "trace".into(),
            "LOT".into(),
            "--svg".into(),
            "lot.svg".into()
        ])
    );
    assert_eq!(
        taizhang_args("TAIZHANG_QUERY_KEY=k taizhang audit permit 'P 1' --json > out.json"),
        Some(vec![
            "audit".into(),
            "permit".into(),
            "P 1".into(),
            "--json".into()
        ])
    );
    assert_eq!(
        taizhang_args("cargo run --release -- demo --days 7"),
        Some(vec!["demo".into(), "--days".into(), "7".into()])
    );
    assert_eq!(taizhang_args("cargo test"), None);
    assert_eq!(taizhang_args("taizhang-ed25519-public d75a98"), None);
    // And the check rejects what does not parse.
    let o = Command::new(bin())
        .args(["audit", "permit", "--no-such-flag"])
        .env("TAIZHANG_PARSE_ONLY", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// The README's tour, run as a reader runs it (with this build's binary as `$B`).
#[test]
fn the_readme_tour_runs_as_written() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let block = readme
        .split("<!-- tour: tests/it/docs.rs runs this block -->")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the README has its tour block");
    // A failing step must not leave the server holding the output pipes open.
    let mut script =
        String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n");
    for line in block.lines() {
        match line.trim() {
            // Built already: this test runs against the binary under test.
            "cargo build --release" => {}
            l if l.starts_with("B=") => script.push_str(&format!("B='{}'\n", bin().display())),
            _ => {
                script.push_str(line);
                script.push('\n');
            }
        }
    }
    // As from the repository's root (the development keys in keys/), without writing there.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("keys"),
        dir.path().join("keys"),
    )
    .unwrap();
    let o = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env_remove("TAIZHANG_QUERY_KEY")
        .env_remove("TAIZHANG_SERVER")
        .env("TAIZHANG_LOG", "error")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "the tour failed:\n{script}\n--- stdout\n{out}\n--- stderr\n{err}"
    );
    for want in [
        "count shortfall",
        "in transit gap",
        "not received",
        "reported theft",
        "QUANTITY_GAP",
        "ENDORSEMENT_MISMATCH",
        "SHORTFALL",
        "report for 4403:",
        "ok: ",
    ] {
        assert!(
            out.contains(want),
            "the tour's output lacks `{want}`:\n{out}\n{err}"
        );
    }
    // The permit's reconciliation shows the 1.2 g gap itself.
    let permit = out
        .split("粤药购-2026-0041")
        .nth(1)
        .and_then(|rest| rest.split("商出-2026-0001").next())
        .expect("the permit's reconciliation");
    assert!(permit.contains("1,200"), "no 1.2 g gap in:\n{permit}");
    assert!(dir.path().join("eph-10.svg").exists());
    assert!(dir.path().join("report/index.html").exists());
    let city = std::fs::read_to_string(dir.path().join("city.txt")).unwrap();
    assert!(city.contains("nothing else"), "{city}");
}
