//! Durable ingest over real gRPC on loopback, reported next to the machine's raw Ed25519
//! `verify_strict` rate measured in the same run (these machines are shared and noisy, so the
//! ratio is the figure that means something).
//!
//! Records are signed before any timed phase, so client CPU goes to sending only. "Durable":
//! every receipt is sent after the segment file's fdatasync.
//!
//! Phases: raw verify (1 and 2 threads) → unary gRPC alone (GetSignerHead, a signed query, 64
//! in flight) → the unary floor (GetCheckpoint: public, unsigned, 64 in flight: what a unary call
//! costs here before any work) → the ledger alone (64 in-process submitters, no gRPC) →
//! unary Submit with 64 in flight (64 keys, one sequential client each) → bulk SubmitStream
//! (4 streams; `TZ_BENCH_STREAMS`) → bulk SubmitBatch (batches of 500). Each phase's rate is
//! reported against the 2-thread verify rate measured just before and just after it.
//!
//! Run: `cargo bench --bench ingest` (env `TZ_BENCH_RECORDS` = records per phase, default
//! 100,000: several seconds a phase, so filling and draining the pipeline at either end is a
//! small part of it; `TZ_BENCH_ONLY=unary,stream` runs some phases).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
mod common;
use common::{dir_bytes, status_kib};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taizhang::client::{mg, RecordSigner};
use taizhang::crypto;
use taizhang::ledger::{Config, Ledger};
use taizhang::model::{credit_code_check_char, Catalogue};
use taizhang::pb::{self, ledger_client::LedgerClient, record_body::Payload};
use tokio_stream::StreamExt;

const ORIGIN: &str = "taizhang.bench/ledger";

fn raw_verify_rate(threads: usize, msgs: &[(VerifyingKey, Vec<u8>, Signature)]) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        let chunk = msgs.len().div_ceil(threads);
        for part in msgs.chunks(chunk) {
            s.spawn(move || {
                for (k, m, sig) in part {
                    k.verify_strict(m, sig).expect("valid");
                }
            });
        }
    });
    msgs.len() as f64 / start.elapsed().as_secs_f64()
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn code(stem: &str) -> String {
    format!("{stem}{}", credit_code_check_char(stem).expect("alphabet"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: then run tiny.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("TZ_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench_mode { 100_000 } else { 256 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n));
}

/// A client of the service at `url`, on the coalescing channel the crate's own clients use.
async fn client(url: String) -> LedgerClient<tonic::transport::Channel> {
    LedgerClient::new(taizhang::api::coalesce::channel(url, None).await.unwrap())
}

async fn run(n: usize) {
    // Raw verification baseline on records like the ones submitted.
    let key = SigningKey::from_bytes(&[3; 32]);
    let mut s = RecordSigner::new(key.clone(), ORIGIN);
    let msgs: Vec<_> = (0..n.min(20_000))
        .map(|i| {
            let r = s.sign(produce(i, 0), now());
            let mut m = crypto::RECORD_CONTEXT.to_vec();
            m.extend_from_slice(&r.body);
            (
                key.verifying_key(),
                m,
                Signature::from_slice(&r.signature).unwrap(),
            )
        })
        .collect();
    let v1 = raw_verify_rate(1, &msgs);
    let v2 = raw_verify_rate(2, &msgs);
    println!(
        "raw verify_strict: 1 thread {v1:.0}/s, 2 threads {v2:.0}/s ({} records of ~{} bytes)",
        msgs.len(),
        msgs[0].1.len()
    );

    // A ledger on the real disk (the target dir), served on loopback.
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let tmp = tempfile::tempdir_in(&base).unwrap();
    let regulator = SigningKey::from_bytes(&[0x52; 32]);
    let ledger_key = SigningKey::from_bytes(&[0x4c; 32]);
    let cfg = Config {
        data_dir: tmp.path().join("data"),
        origin: ORIGIN.into(),
        root_regulators: vec![pb::AuthorityKey {
            public_key: regulator.verifying_key().to_bytes().to_vec(),
            name: "bench".into(),
            agency: pb::Agency::PublicSecurity as i32,
            jurisdiction: String::new(),
            validity: None,
        }],
        ledger_key,
        catalogue: Arc::new(Catalogue::embedded()),
        max_segment_bytes: taizhang::ledger::DEFAULT_SEGMENT_BYTES,
        two_person: taizhang::ledger::default_two_person(),
    };
    let data_dir = cfg.data_dir.clone();
    let (ledger, _) = Ledger::open(cfg).unwrap();
    let (listener, addr) = taizhang::api::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(taizhang::api::serve(
        ledger.clone(),
        listener,
        std::future::pending(),
    ));
    let url = format!("http://{addr}");
    let mut c = client(url.clone())
        .await
        .max_decoding_message_size(256 << 20);

    // One producer, 64 + 4 + 1 keys.
    let mut reg = RecordSigner::new(regulator, ORIGIN);
    let ent = code("91440300MA5BENCH1");
    let sub = |r| pb::SubmitRequest { record: Some(r) };
    c.submit(sub(reg.sign(
        Payload::EnrolEnterprise(pb::EnrolEnterprise {
            credit_code: ent.clone(),
            name: "bench".into(),
            jurisdiction: "440305".into(),
            licences: vec![pb::Licence {
                licence_no: "B".into(),
                category: pb::Category::Precursor3 as i32,
                activities: vec![pb::Activity::Produce as i32],
                validity: None,
            }],
            sites: vec![pb::Site {
                site_id: "s".into(),
                name: "s".into(),
                address: String::new(),
            }],
        }),
        now(),
    )))
    .await
    .unwrap();
    let mut signers = Vec::new();
    let streams: usize = std::env::var("TZ_BENCH_STREAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    for i in 0..(65 + streams) as u32 {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&i.to_be_bytes());
        seed[4] = 0xbe;
        let k = SigningKey::from_bytes(&seed);
        c.submit(sub(reg.sign(
            Payload::RegisterKey(pb::RegisterKey {
                public_key: k.verifying_key().to_bytes().to_vec(),
                role: pb::Role::Enterprise as i32,
                enterprise: ent.clone(),
                jurisdiction: String::new(),
                holder: String::new(),
                validity: None,
            }),
            now(),
        )))
        .await
        .unwrap();
        signers.push(RecordSigner::new(k, ORIGIN));
    }
    let mut bulk_batch = signers.pop().unwrap();
    let mut bulk_stream: Vec<RecordSigner> = (0..streams).map(|_| signers.pop().unwrap()).collect();
    let mut unary = signers;

    // `TZ_BENCH_ONLY=unary,stream,...` runs some phases (for profiling).
    let only = std::env::var("TZ_BENCH_ONLY").unwrap_or_default();
    let run_phase = |name: &str| only.is_empty() || only.split(',').any(|p| p == name);
    let mut report = Vec::new();
    let mut direct_rate: Option<f64> = None;
    // Each phase is bracketed by a 2-thread verify measurement, and its rate is reported
    // against their mean: the machine's speed drifts within a run.
    let bracket = |before: f64, after: f64| (before + after) / 2.0;
    // The baseline is measured with the ledger quiet: views flushed, sled's threads settled.
    let quiet = || {
        ledger.flush_views().expect("views flush");
        std::thread::sleep(Duration::from_millis(300));
    };

    // A signed null call: 64 in flight, GetSignerHead (no ledger work to speak of).
    if run_phase("null") {
        let per = n / 64;
        let ids: Vec<Vec<u8>> = unary.iter().map(|s| s.key_id().0.to_vec()).collect();
        let work = ids.into_iter().map(|id| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut c = LedgerClient::new(
                    taizhang::api::auth::connect(url, SigningKey::from_bytes(&[0x52; 32]))
                        .await
                        .unwrap(),
                );
                for _ in 0..per {
                    c.get_signer_head(pb::GetSignerHeadRequest { key_id: id.clone() })
                        .await
                        .expect("head");
                }
            })
        });
        let p = null_phase(work, per * 64, &quiet, &msgs).await;
        report.push(p.line("unary gRPC alone (GetSignerHead, signed)", "record"));
    }

    // The floor of a unary call here: GetCheckpoint (public, unsigned; a ~300-byte answer).
    if run_phase("null0") {
        let per = n / 64;
        let work = (0..64).map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut c = client(url).await;
                for _ in 0..per {
                    c.get_checkpoint(pb::GetCheckpointRequest { witnessed: false })
                        .await
                        .expect("checkpoint");
                }
            })
        });
        let p = null_phase(work, per * 64, &quiet, &msgs).await;
        report.push(p.line("unary gRPC floor (GetCheckpoint, unsigned)", "call"));
    }

    // The ledger alone: 64 tasks in this process submitting one record at a time, no gRPC.
    if run_phase("direct") {
        let per = n / unary.len();
        let pre: Vec<Vec<pb::SignedRecord>> = unary
            .iter_mut()
            .enumerate()
            .map(|(k, s)| {
                (0..per)
                    .map(|i| s.sign(produce(i, k as u32 + 5000), now()))
                    .collect()
            })
            .collect();
        quiet();
        let before = raw_verify_rate(2, &msgs);
        let start = Instant::now();
        let cpu0 = cpu_seconds();
        let tasks: Vec<_> = pre
            .into_iter()
            .map(|recs| {
                let l = ledger.clone();
                tokio::spawn(async move {
                    for r in recs {
                        l.submit(taizhang::ledger::Submission {
                            body: r.body,
                            signature: r.signature,
                            cosignatures: vec![],
                        })
                        .await
                        .expect("accepted");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = (cpu_seconds() - cpu0) / secs / 2.0;
        let rate = (per * 64) as f64 / secs;
        direct_rate = Some(rate);
        quiet();
        let v = bracket(before, raw_verify_rate(2, &msgs));
        report.push(format!(
            "  ledger alone (no gRPC), 64 in flight: {rate:.0}/s = {:.0}% of 2-thread verify ({v:.0}/s); CPU {:.0}% of 2 cores, {:.0} µs per record",
            100.0 * rate / v,
            100.0 * cpu,
            2e6 * cpu / rate
        ));
    }

    // Unary, 64 in flight: 64 clients, each its own connection and key, one record at a time.
    if run_phase("unary") {
        let per = n / unary.len();
        let pre: Vec<Vec<pb::SignedRecord>> = unary
            .iter_mut()
            .enumerate()
            .map(|(k, s)| {
                (0..per)
                    .map(|i| s.sign(produce(i, k as u32 + 1000), now()))
                    .collect()
            })
            .collect();
        let mut clients = Vec::new();
        for _ in 0..pre.len() {
            clients.push(client(url.clone()).await);
        }
        quiet();
        let before = raw_verify_rate(2, &msgs);
        let start = Instant::now();
        let cpu0 = cpu_seconds();
        let tasks: Vec<_> = pre
            .into_iter()
            .zip(clients)
            .map(|(recs, mut c)| {
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(recs.len());
                    for r in recs {
                        let t = Instant::now();
                        c.submit(pb::SubmitRequest { record: Some(r) })
                            .await
                            .expect("accepted");
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = (cpu_seconds() - cpu0) / secs / 2.0;
        let rate = lat.len() as f64 / secs;
        quiet();
        let v = bracket(before, raw_verify_rate(2, &msgs));
        lat.sort();
        report.push(format!(
            "  unary Submit, 64 in flight: {rate:.0}/s = {:.0}% of 2-thread verify ({v:.0}/s); latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; CPU {:.0}% of 2 cores, {:.0} µs per record",
            100.0 * rate / v,
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(percentile(&lat, 1.0)),
            100.0 * cpu,
            2e6 * cpu / rate
        ));
    }

    // Bulk: one SubmitStream per client.
    if run_phase("stream") {
        let per = n / bulk_stream.len();
        let pre: Vec<Vec<pb::SignedRecord>> = bulk_stream
            .iter_mut()
            .enumerate()
            .map(|(k, s)| {
                (0..per)
                    .map(|i| s.sign(produce(i, k as u32 + 2000), now()))
                    .collect()
            })
            .collect();
        let total: usize = pre.iter().map(Vec::len).sum();
        quiet();
        let before = raw_verify_rate(2, &msgs);
        let start = Instant::now();
        let cpu0 = cpu_seconds();
        let tasks: Vec<_> = pre
            .into_iter()
            .map(|recs| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut c = client(url).await.max_decoding_message_size(256 << 20);
                    let input = tokio_stream::iter(
                        recs.into_iter()
                            .map(|r| pb::SubmitRequest { record: Some(r) }),
                    );
                    let mut out = c.submit_stream(input).await.unwrap().into_inner();
                    let mut ok = 0;
                    while let Some(r) = out.next().await {
                        if matches!(
                            r.unwrap().result,
                            Some(pb::submit_result::Result::Receipt(_))
                        ) {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap();
        }
        assert_eq!(ok, total, "every streamed record accepted");
        let secs = start.elapsed().as_secs_f64();
        let cpu = (cpu_seconds() - cpu0) / secs / 2.0;
        let rate = total as f64 / secs;
        quiet();
        let v = bracket(before, raw_verify_rate(2, &msgs));
        report.push(format!(
            "  bulk, {streams} SubmitStreams: {rate:.0}/s = {:.0}% of 2-thread verify ({v:.0}/s); CPU {:.0}% of 2 cores, {:.0} µs per record",
            100.0 * rate / v,
            100.0 * cpu,
            2e6 * cpu / rate
        ));
    }

    // Bulk: batches of 500 from one client, one at a time.
    if run_phase("batch") {
        let recs: Vec<pb::SignedRecord> = (0..n)
            .map(|i| bulk_batch.sign(produce(i, 3000), now()))
            .collect();
        quiet();
        let before = raw_verify_rate(2, &msgs);
        let start = Instant::now();
        for chunk in recs.chunks(500) {
            let r = c
                .submit_batch(pb::SubmitBatchRequest {
                    records: chunk.to_vec(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(r
                .results
                .iter()
                .all(|r| matches!(r.result, Some(pb::submit_result::Result::Receipt(_)))));
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        quiet();
        let v = bracket(before, raw_verify_rate(2, &msgs));
        report.push(format!(
            "  bulk, SubmitBatch of 500, one at a time: {rate:.0}/s = {:.0}% of 2-thread verify ({v:.0}/s)",
            100.0 * rate / v
        ));
    }

    println!("durable ingest (loopback; client and server share the machine; each ratio is to the mean of the 2-thread verify rates measured just before and after its phase):");
    for line in report {
        println!("{line}");
    }
    let entries = ledger.size();
    println!(
        "  ledger size {entries}; RSS {} MiB (peak {} MiB)",
        status_kib("VmRSS:") >> 10,
        status_kib("VmHWM:") >> 10
    );
    // Offline verification of everything ingested (`taizhang verify` on an export), against
    // the 2-thread verify rate around it: signatures are what it checks, so the ratio is per
    // signature.
    let (note, _, _) = ledger.checkpoint().expect("checkpoint");
    let mut export = Vec::new();
    for i in 0..entries {
        let (bytes, hash) = ledger.entry(i).expect("entry");
        export.extend(taizhang::codec::frame(&bytes, &hash));
    }
    quiet();
    let before = raw_verify_rate(2, &msgs);
    let t = Instant::now();
    let checked = taizhang::verify::verify_export(&export, &note, &ledger.ledger_public_key())
        .expect("the export verifies");
    let secs = t.elapsed().as_secs_f64();
    let v = bracket(before, raw_verify_rate(2, &msgs));
    let rate = checked.signatures_checked as f64 / secs;
    println!(
        "  offline verify of the export ({} entries, {} MB): {:.0} entries/s, {rate:.0} signatures/s = {:.0}% of 2-thread verify ({v:.0}/s; target ≥ 80 %)",
        checked.entries,
        export.len() >> 20,
        checked.entries as f64 / secs,
        100.0 * rate / v
    );
    drop(export);
    ledger.close().await;
    let (log, views) = (
        dir_bytes(&data_dir.join("log")),
        dir_bytes(&data_dir.join("views")),
    );
    println!(
        "  disk: log {:.0} bytes per entry, views {:.0} bytes per entry ({:.1} × the log)",
        log as f64 / entries as f64,
        views as f64 / entries as f64,
        views as f64 / log as f64
    );
    // sled's own limit, on the same disk: what the view flusher can write at best.
    let sled_rate = sled_raw_rate(&base);
    println!(
        "  sled raw: {sled_rate:.0} keys/s (batches of 512 keys of ~80 bytes, the ledger's settings) = {:.1} sled keys per record at the ledger-alone rate",
        sled_rate / (direct_rate.unwrap_or(f64::NAN))
    );
}

/// Keys per second sled 0.34 takes in batches of 512 (keys ~80 bytes, scattered; values ~50
/// bytes), configured as the ledger's views are, with 100,000 keys already in the tree.
fn sled_raw_rate(base: &std::path::Path) -> f64 {
    let tmp = tempfile::tempdir_in(base).unwrap();
    let db = sled::Config::new()
        .path(tmp.path())
        .flush_every_ms(Some(1000))
        .mode(sled::Mode::HighThroughput)
        .open()
        .unwrap();
    let t = db.open_tree("views").unwrap();
    let key = |i: u64| {
        let mut k = [
            b"j/91440300MA5PRDCR1X\0site-1\0".as_slice(),
            b"67-64-1\0lot-",
        ]
        .concat();
        k.extend_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
        k.extend_from_slice(&[0; 16]);
        k
    };
    let fill = |from: u64, to: u64| {
        let mut b = sled::Batch::default();
        for i in from..to {
            b.insert(key(i), vec![7u8; 50]);
            if (i + 1) % 512 == 0 {
                t.apply_batch(std::mem::take(&mut b)).unwrap();
            }
        }
        t.apply_batch(b).unwrap();
    };
    fill(0, 100_000);
    let start = Instant::now();
    fill(100_000, 150_000);
    50_000.0 / start.elapsed().as_secs_f64()
}

/// A phase's rate, the share of the 2 cores the process used during it, and the 2-thread
/// verify rate around it.
struct Phase {
    rate: f64,
    cpu: f64,
    verify: f64,
}

impl Phase {
    fn line(&self, what: &str, per: &str) -> String {
        format!(
            "  {what}, 64 in flight: {:.0}/s = {:.0}% of 2-thread verify ({:.0}/s); CPU {:.0}% of 2 cores, {:.0} µs per {per}",
            self.rate,
            100.0 * self.rate / self.verify,
            self.verify,
            100.0 * self.cpu,
            2e6 * self.cpu / self.rate
        )
    }
}

/// With the ledger quiet, spawns `tasks` (lazily: nothing runs before the clock starts) and
/// times the `calls` calls they make, bracketed by 2-thread verify measurements.
async fn null_phase(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<()>>,
    calls: usize,
    quiet: &dyn Fn(),
    msgs: &[(VerifyingKey, Vec<u8>, Signature)],
) -> Phase {
    quiet();
    let before = raw_verify_rate(2, msgs);
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let tasks: Vec<_> = tasks.collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu0) / secs / 2.0;
    quiet();
    Phase {
        rate: calls as f64 / secs,
        cpu,
        verify: (before + raw_verify_rate(2, msgs)) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn produce(i: usize, k: u32) -> Payload {
    Payload::Produce(pb::Produce {
        site_id: "s".into(),
        substance: "67-64-1".into(),
        lot: format!("lot-{k}-{i}"),
        quantity: Some(mg(1_000 + i as u64)),
    })
}
