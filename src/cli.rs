//! Subcommands of the `taizhang` binary. Each is a few calls into the library.

use crate::cli_audit::Querier;
use anyhow::{anyhow, bail, Context, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use clap::{Parser, Subcommand};
use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use taizhang::api::auth::SignedChannel;
use taizhang::client::RecordSigner;
use taizhang::codec::Cosig;
use taizhang::crypto::{self, KeyId};
use taizhang::ledger::{self, Config, Ledger};
use taizhang::model::{credit_code_check_char, Catalogue};
use taizhang::pb::{self, ledger_client::LedgerClient, record_body::Payload};
use taizhang::verify::{self, ReceiptParts};

pub(crate) const DEV_ORIGIN: &str = "taizhang.dev/ledger";

#[derive(Parser)]
#[command(
    name = "taizhang",
    version,
    about = "Tamper-evident ledger for precursor chemicals and controlled drugs (台账)"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make an Ed25519 key pair: PATH.key (secret, mode 0600) and PATH.pub; prints the key id.
    Keygen {
        /// Path without extension.
        path: PathBuf,
    },
    /// Run the gRPC service.
    Serve {
        #[command(flatten)]
        ledger: LedgerArgs,
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: String,
        #[command(flatten)]
        audit: AuditArgs,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Sign and submit records described in a JSON or TOML file.
    Submit {
        /// File with `records = [ { <payload kind> = { ... } }, ... ]` (proto3 JSON field names).
        file: PathBuf,
        /// Secret key file of the signer.
        #[arg(long)]
        key: PathBuf,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        /// PEM certificate to trust for an `https://` server (its CA, or its own).
        #[arg(long, env = "TAIZHANG_TLS_CA")]
        tls_ca: Option<PathBuf>,
        /// Where to write the receipts (JSON lines, with the signed records).
        #[arg(long)]
        receipts: Option<PathBuf>,
    },
    /// Verify offline, with no server.
    Verify {
        #[command(subcommand)]
        what: VerifyCmd,
    },
    /// Fetch the entries covered by the latest checkpoint, and the checkpoint, for offline audit.
    Export {
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        /// Secret key file the query is signed with (an inspector or regulator key of national
        /// scope exports everything; other keys see only the entries they may read). Default:
        /// the development root regulator.
        #[arg(long, env = "TAIZHANG_QUERY_KEY")]
        key: Option<PathBuf>,
        /// PEM certificate to trust for an `https://` server (its CA, or its own).
        #[arg(long, env = "TAIZHANG_TLS_CA")]
        tls_ca: Option<PathBuf>,
        /// Framed entries are written here.
        #[arg(long)]
        out: PathBuf,
        /// The signed checkpoint note is written here.
        #[arg(long)]
        checkpoint: PathBuf,
    },
    /// Inspectors' queries against a running server.
    Audit {
        #[command(subcommand)]
        what: crate::cli_audit::AuditCmd,
        /// Secret key file the queries are signed with (a registered inspector, regulator or
        /// enterprise key; each sees its own scope). Default: the development root regulator.
        #[arg(long, global = true, env = "TAIZHANG_QUERY_KEY")]
        key: Option<PathBuf>,
        /// PEM certificate to trust for an `https://` server (its CA, or its own).
        #[arg(long, global = true, env = "TAIZHANG_TLS_CA")]
        tls_ca: Option<PathBuf>,
    },
    /// GS1 EPCIS 2.0 (JSON-LD): export movements as events, or sign and submit a document's
    /// events as records.
    Epcis {
        #[command(subcommand)]
        what: crate::cli_epcis::EpcisCmd,
        /// Secret key file: the queries are signed with it, and `import` signs the records
        /// with it (an enterprise key). Default: the development root regulator.
        #[arg(long, global = true, env = "TAIZHANG_QUERY_KEY")]
        key: Option<PathBuf>,
        /// PEM certificate to trust for an `https://` server (its CA, or its own).
        #[arg(long, global = true, env = "TAIZHANG_TLS_CA")]
        tls_ca: Option<PathBuf>,
    },
    /// Rebuild the derived views of a data dir from its log (server stopped).
    Reindex {
        #[command(flatten)]
        ledger: LedgerArgs,
    },
    /// Run a witness: cosign the checkpoints of one ledger, each only if it extends the last one
    /// this witness cosigned (docs/protocol.md §14).
    Witness {
        /// The witness's state directory (the last checkpoint it cosigned).
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:50061")]
        listen: String,
        /// The witness's secret key file (registered on the ledger as a WITNESS key).
        #[arg(long)]
        key: PathBuf,
        /// Its cosigner name (no spaces or `+`), e.g. `witness.drugs.example/w1`.
        #[arg(long)]
        name: String,
        /// The ledger's public key file.
        #[arg(long, default_value = "keys/dev-ledger.pub")]
        ledger_key: PathBuf,
        /// The ledger's origin.
        #[arg(long, default_value = DEV_ORIGIN)]
        origin: String,
    },
    /// Fetch the latest (or latest witnessed) checkpoint, and a consistency proof from a
    /// previously trusted one, for offline verification.
    Checkpoint {
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        #[arg(long, env = "TAIZHANG_TLS_CA")]
        tls_ca: Option<PathBuf>,
        /// The checkpoint note is written here.
        #[arg(long)]
        out: PathBuf,
        /// The latest checkpoint the ledger's witness policy accepted, with its cosignatures.
        #[arg(long)]
        witnessed: bool,
        /// A checkpoint note trusted before: write the consistency proof from it to
        /// `--proof-out`.
        #[arg(long, requires = "proof_out")]
        since: Option<PathBuf>,
        /// Where the consistency proof goes (one hex hash per line).
        #[arg(long)]
        proof_out: Option<PathBuf>,
    },
    /// Re-prove receipts (from `submit --receipts`) against the latest witnessed checkpoint:
    /// each gets that checkpoint and a fresh inclusion proof into it, so `verify receipt` can
    /// hold them to a witness policy offline.
    Reprove {
        /// Receipts file (JSON lines).
        file: PathBuf,
        /// Where the re-proven receipts go.
        #[arg(long)]
        out: PathBuf,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        #[arg(long, env = "TAIZHANG_TLS_CA")]
        tls_ca: Option<PathBuf>,
        /// Use the latest signed checkpoint instead of the latest witnessed one.
        #[arg(long)]
        unwitnessed: bool,
    },
    /// Run a whole small scenario against a fresh ledger over real gRPC and verify it offline.
    Demo {
        /// Where to keep the ledger, witnesses, export and report (default: a new directory
        /// under the system's temp dir, kept after the demo).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Days of movements to play (at least 7).
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Write the inspector's HTML report (self-contained, zh-CN / English) for a jurisdiction.
    Report {
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        /// Directory to write `index.html` into.
        #[arg(long)]
        out: PathBuf,
        /// Division code (prefix) to report on, e.g. 4403.
        #[arg(long)]
        jurisdiction: String,
        /// Secret key file the queries are signed with (an inspector or regulator covering
        /// the jurisdiction). Default: the development root regulator.
        #[arg(long, env = "TAIZHANG_QUERY_KEY")]
        key: Option<PathBuf>,
        /// PEM certificate to trust for an `https://` server (its CA, or its own).
        #[arg(long, env = "TAIZHANG_TLS_CA")]
        tls_ca: Option<PathBuf>,
    },
}

/// A witness policy on the command line.
#[derive(clap::Args, Clone, Default)]
struct PolicyArgs {
    /// A trusted witness's verifier key (`name+hash+base64`); repeatable.
    #[arg(long = "witness")]
    witnesses: Vec<String>,
    /// How many of them must have cosigned (default: all named).
    #[arg(long)]
    quorum: Option<usize>,
}

impl PolicyArgs {
    fn policy(&self) -> Result<Option<taizhang::witness::Policy>> {
        if self.witnesses.is_empty() {
            if self.quorum.is_some_and(|q| q > 0) {
                bail!("--quorum: name the trusted witnesses with --witness");
            }
            return Ok(None);
        }
        let q = self.quorum.unwrap_or(self.witnesses.len());
        Ok(Some(taizhang::witness::Policy::from_vkeys(
            &self.witnesses,
            q,
        )?))
    }
}

/// A checkpoint trusted before, and the consistency proof from it to the one being checked.
#[derive(clap::Args, Clone, Default)]
struct TrustedArgs {
    /// A checkpoint note trusted before (with --consistency).
    #[arg(long, requires = "consistency")]
    trusted: Option<PathBuf>,
    /// The consistency proof from --trusted to the checkpoint checked
    /// (`taizhang checkpoint --since T --proof-out P`).
    #[arg(long, requires = "trusted")]
    consistency: Option<PathBuf>,
}

impl TrustedArgs {
    /// The trusted note and the proof, read.
    fn load(&self) -> Result<Option<(String, Vec<[u8; 32]>)>> {
        match (&self.trusted, &self.consistency) {
            (Some(t), Some(c)) => Ok(Some((
                std::fs::read_to_string(t).with_context(|| format!("reading {}", t.display()))?,
                read_proof(c)?,
            ))),
            _ => Ok(None),
        }
    }
}

#[derive(Subcommand)]
enum VerifyCmd {
    /// Check a checkpoint note: the ledger's signature, a witness policy, and consistency with
    /// a previously trusted checkpoint.
    Checkpoint {
        note: PathBuf,
        #[arg(long, default_value = "keys/dev-ledger.pub")]
        ledger_key: PathBuf,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        trusted: TrustedArgs,
    },
    /// Check receipts written by `submit --receipts`.
    Receipt {
        file: PathBuf,
        /// The ledger's public key file.
        #[arg(long, default_value = "keys/dev-ledger.pub")]
        ledger_key: PathBuf,
        /// Each receipt's checkpoint must meet this witness policy.
        #[command(flatten)]
        policy: PolicyArgs,
        /// Each receipt's checkpoint must extend this (all receipts must share one checkpoint,
        /// as `reprove` writes them).
        #[command(flatten)]
        trusted: TrustedArgs,
    },
    /// Check a whole export against a checkpoint.
    Export {
        file: PathBuf,
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, default_value = "keys/dev-ledger.pub")]
        ledger_key: PathBuf,
        /// The checkpoint must meet this witness policy.
        #[command(flatten)]
        policy: PolicyArgs,
        /// A checkpoint note trusted before: the export's tree at its size must have its root.
        #[arg(long)]
        trusted: Option<PathBuf>,
    },
    /// Recompute a spot-check sample from an export and its checkpoint, with no server, and
    /// (with --expect) compare it with the answer the server gave.
    SpotCheck {
        /// The export (`taizhang export`) holding at least the checkpoint's entries.
        file: PathBuf,
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, default_value = "keys/dev-ledger.pub")]
        ledger_key: PathBuf,
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long, default_value = "")]
        jurisdiction: String,
        #[arg(long, default_value_t = 5)]
        sample: u32,
        /// The server's answer (`audit spot-check --json`) to compare with.
        #[arg(long)]
        expect: Option<PathBuf>,
    },
    /// Check a data dir's log (server stopped) against a checkpoint.
    Data {
        dir: PathBuf,
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, default_value = "keys/dev-ledger.pub")]
        ledger_key: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct NetArgs {
    /// PEM certificate chain to serve TLS with (with --tls-key); plaintext without.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A signed query's time may differ from the server's clock by this many seconds.
    #[arg(long, default_value_t = 300)]
    query_window_secs: u64,
    /// A witness to ask for cosignatures: its verifier key, `@`, its URL
    /// (`name+hash+base64@http://host:port`); repeatable. Its key must be registered on the
    /// ledger as a WITNESS key.
    #[arg(long = "witness")]
    witnesses: Vec<String>,
    /// How many witnesses must cosign a checkpoint before it counts as witnessed (default: all).
    #[arg(long)]
    witness_quorum: Option<usize>,
    /// How often to offer the latest checkpoint to the witnesses, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    witness_interval_ms: u64,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g. 127.0.0.1:9464.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Most client connections open at once; further ones are closed on accept.
    #[arg(long, default_value_t = taizhang::api::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// A connection must send its HTTP/2 preface within this many seconds; keepalive pings
    /// find dead peers at the same interval.
    #[arg(long, default_value_t = 20)]
    idle_timeout_secs: u64,
}

impl NetArgs {
    fn witnessing(&self) -> Result<Option<taizhang::api::witnessing::Witnessing>> {
        if self.witnesses.is_empty() {
            return Ok(None);
        }
        let targets = self
            .witnesses
            .iter()
            .map(|w| {
                taizhang::api::witnessing::Target::parse(w).map_err(|e| anyhow!("--witness {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let quorum = self.witness_quorum.unwrap_or(targets.len());
        if quorum == 0 || quorum > targets.len() {
            bail!(
                "--witness-quorum: must be 1..={} (the witnesses named)",
                targets.len()
            );
        }
        Ok(Some(taizhang::api::witnessing::Witnessing {
            targets,
            quorum,
            interval: std::time::Duration::from_millis(self.witness_interval_ms.max(10)),
        }))
    }

    fn tls(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |flag: &str, p: &Path| {
            std::fs::read(p).with_context(|| format!("{flag}: reading {}", p.display()))
        };
        Ok(Some((read("--tls-cert", cert)?, read("--tls-key", key)?)))
    }
}

#[derive(clap::Args, Clone)]
struct AuditArgs {
    /// Audits count a shipment without an expected delivery time as overdue this many
    /// hours after it left.
    #[arg(long, default_value_t = 168)]
    receipt_deadline_hours: u64,
    /// Trade checks flag an import or export customs has not cleared after this many days.
    #[arg(long, default_value_t = 30)]
    clearance_deadline_days: u64,
    /// Trade checks flag an export the importing country has not endorsed after this many
    /// days.
    #[arg(long, default_value_t = 90)]
    endorsement_deadline_days: u64,
    /// A measurement band for a substance, SUBSTANCE=PPM (parts per million of the book);
    /// repeatable. Without one a substance has no tolerance.
    #[arg(long = "tolerance", value_parser = parse_tolerance)]
    tolerance: Vec<(String, u32)>,
    /// Loss finding reports a pattern when this many gaps or shortfalls share a receiver,
    /// route, carrier or site.
    #[arg(long, default_value_t = 3)]
    pattern_min_events: usize,
}

impl AuditArgs {
    fn config(&self) -> taizhang::audit::AuditConfig {
        taizhang::audit::AuditConfig {
            receipt_deadline_ms: self.receipt_deadline_hours.saturating_mul(3_600_000),
            clearance_deadline_ms: self.clearance_deadline_days.saturating_mul(86_400_000),
            endorsement_deadline_ms: self.endorsement_deadline_days.saturating_mul(86_400_000),
            tolerance_ppm: self.tolerance.iter().cloned().collect(),
            pattern_min_events: self.pattern_min_events,
        }
    }
}

fn parse_tolerance(s: &str) -> std::result::Result<(String, u32), String> {
    let (substance, ppm) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected SUBSTANCE=PPM"))?;
    let ppm: u32 = ppm
        .parse()
        .map_err(|e| format!("`{s}`: PPM must be a whole number: {e}"))?;
    if ppm > 1_000_000 {
        return Err(format!("`{s}`: PPM is at most 1000000"));
    }
    Ok((substance.to_string(), ppm))
}

fn parse_category(s: &str) -> std::result::Result<i32, String> {
    let up = s.trim().to_uppercase();
    let name = if up.starts_with("CATEGORY_") {
        up
    } else {
        format!("CATEGORY_{up}")
    };
    pb::Category::from_str_name(&name)
        .filter(|c| *c != pb::Category::Unspecified)
        .map(|c| c as i32)
        .ok_or_else(|| {
            format!("`{s}` is not a category (e.g. NARCOTIC, PSYCHOTROPIC_1, PRECURSOR_1)")
        })
}

#[derive(clap::Args, Clone)]
struct LedgerArgs {
    /// Categories whose stock-in and stock-out records need a second person's co-signature
    /// (双人双锁); `none` for no category.
    #[arg(
        long = "two-person",
        value_delimiter = ',',
        default_value = "NARCOTIC,PSYCHOTROPIC_1"
    )]
    two_person: Vec<String>,
    #[arg(long)]
    data: PathBuf,
    /// TOML config: origin, ledger_key, [[root_regulators]] (public_key, name, agency, jurisdiction).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Ledger origin written in Genesis (new data dirs only).
    #[arg(long, default_value = DEV_ORIGIN)]
    origin: String,
    /// Ledger (checkpoint) secret key.
    #[arg(long, default_value = "keys/dev-ledger.key")]
    ledger_key: PathBuf,
    /// Root regulator public key files (new data dirs only).
    #[arg(long = "root-regulator", default_value = "keys/dev-regulator.pub")]
    root_regulators: Vec<PathBuf>,
}

#[derive(serde::Deserialize)]
struct ConfigFile {
    origin: Option<String>,
    ledger_key: Option<PathBuf>,
    #[serde(default)]
    root_regulators: Vec<RootRegulator>,
}

#[derive(serde::Deserialize)]
struct RootRegulator {
    public_key: PathBuf,
    name: String,
    #[serde(default = "default_agency")]
    agency: String,
    #[serde(default)]
    jurisdiction: String,
}

fn default_agency() -> String {
    "AGENCY_PUBLIC_SECURITY".into()
}

impl Cli {
    /// The log filter when neither `TAIZHANG_LOG` nor `RUST_LOG` is set: the demo prints its
    /// own story and logs only errors; everything else logs at info.
    pub fn default_log(&self) -> &'static str {
        match self.cmd {
            Cmd::Demo { .. } => "error",
            _ => "info",
        }
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Keygen { path } => keygen(&path),
        Cmd::Serve {
            ledger,
            listen,
            audit,
            net,
        } => {
            let opts = taizhang::api::ServeOptions {
                audit: audit.config(),
                query_window_ms: net.query_window_secs.saturating_mul(1000),
                tls: net.tls()?,
                witnessing: net.witnessing()?,
                max_connections: net.max_connections,
                metrics: taizhang::api::metrics::Metrics::new(),
                idle_timeout: std::time::Duration::from_secs(net.idle_timeout_secs.max(1)),
            };
            serve(ledger, &listen, opts, net.metrics_listen.as_deref())
        }
        Cmd::Submit {
            file,
            key,
            server,
            tls_ca,
            receipts,
        } => {
            let ca = read_ca(tls_ca.as_deref())?;
            runtime()?.block_on(submit(&file, &key, &server, ca, receipts.as_deref()))
        }
        Cmd::Verify { what } => verify_cmd(what),
        Cmd::Export {
            server,
            key,
            tls_ca,
            out,
            checkpoint,
        } => {
            let q = Querier {
                key: query_key(key.as_deref())?,
                tls_ca: read_ca(tls_ca.as_deref())?,
            };
            runtime()?.block_on(export(&server, &q, &out, &checkpoint))
        }
        Cmd::Reindex { ledger } => {
            let cfg = ledger_config(&ledger)?;
            let done = std::sync::atomic::AtomicU64::new(0);
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} reindexing: {msg} entries replayed ({elapsed})",
                )
                .map_err(|e| anyhow!("{e}"))?,
            );
            let report = std::thread::scope(|s| {
                let work = s.spawn(|| ledger::reindex_with_progress(cfg, &done));
                while !work.is_finished() {
                    bar.set_message(done.load(std::sync::atomic::Ordering::Relaxed).to_string());
                    bar.tick();
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                work.join()
            })
            .map_err(|_| anyhow!("reindex panicked"))?;
            bar.finish_and_clear();
            let report = report.map_err(|e| anyhow!("{e}"))?;
            println!("reindexed {} entries", report.entries);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { data, days } => {
            runtime()?.block_on(crate::demo::run(crate::demo::Opts { data, days }))
        }
        Cmd::Report {
            server,
            out,
            jurisdiction,
            key,
            tls_ca,
        } => {
            if jurisdiction.is_empty() || !jurisdiction.bytes().all(|b| b.is_ascii_digit()) {
                bail!("--jurisdiction: a division code or prefix of digits (e.g. 44 or 4403), got `{jurisdiction}`");
            }
            let q = Querier {
                key: query_key(key.as_deref())?,
                tls_ca: read_ca(tls_ca.as_deref())?,
            };
            let s = runtime()?.block_on(crate::report::write(&server, &q, &jurisdiction, &out))?;
            println!(
                "report for {jurisdiction}: {} ({} losses, {} entries cited)",
                out.join("index.html").display(),
                s.losses,
                s.entries_cited
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Witness {
            data,
            listen,
            key,
            name,
            ledger_key,
            origin,
        } => {
            let verifier =
                taizhang::checkpoint::NoteVerifier::new(&origin, read_public(&ledger_key)?)
                    .map_err(|e| anyhow!("--origin: {e}"))?;
            let file = taizhang::store::witness::WitnessFile::open(&data)
                .with_context(|| format!("--data {}", data.display()))?;
            let svc = taizhang::api::witness::WitnessService::open(
                &name,
                read_secret(&key)?,
                verifier,
                file,
            )
            .map_err(|e| anyhow!("{e}"))?;
            runtime()?.block_on(async move {
                let (listener, addr) = taizhang::api::bind(&listen).await?;
                // One write: a reader that stops after the first line never breaks the pipe.
                println!("listening on {addr}\nwitness {}", svc.vkey());
                let shutdown = async {
                    let _ = tokio::signal::ctrl_c().await;
                };
                taizhang::api::witness::serve(Arc::new(svc), listener, shutdown)
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Cmd::Reprove {
            file,
            out,
            server,
            tls_ca,
            unwitnessed,
        } => {
            let q = Querier {
                key: query_key(None)?,
                tls_ca: read_ca(tls_ca.as_deref())?,
            };
            runtime()?.block_on(reprove(&file, &out, &server, &q, !unwitnessed))
        }
        Cmd::Checkpoint {
            server,
            tls_ca,
            out,
            witnessed,
            since,
            proof_out,
        } => {
            let q = Querier {
                key: query_key(None)?,
                tls_ca: read_ca(tls_ca.as_deref())?,
            };
            runtime()?.block_on(fetch_checkpoint(
                &server,
                &q,
                &out,
                witnessed,
                since.as_deref(),
                proof_out.as_deref(),
            ))
        }
        Cmd::Epcis { what, key, tls_ca } => {
            let q = Querier {
                key: query_key(key.as_deref())?,
                tls_ca: read_ca(tls_ca.as_deref())?,
            };
            runtime()?.block_on(crate::cli_epcis::run(what, q))
        }
        Cmd::Audit { what, key, tls_ca } => {
            let q = Querier {
                key: query_key(key.as_deref())?,
                tls_ca: read_ca(tls_ca.as_deref())?,
            };
            runtime()?.block_on(crate::cli_audit::run(what, q))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn read_secret(path: &Path) -> Result<SigningKey> {
    let t = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    crypto::parse_secret_key_text(&t).with_context(|| format!("{}", path.display()))
}

/// A consistency proof file: one hex hash per line.
fn read_proof(path: &Path) -> Result<Vec<[u8; 32]>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            hex::decode(l.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| anyhow!("{} line {}: not a 32-byte hex hash", path.display(), i + 1))
        })
        .collect()
}

fn read_public(path: &Path) -> Result<VerifyingKey> {
    let t = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    crypto::parse_public_key_text(&t).with_context(|| format!("{}", path.display()))
}

fn keygen(path: &Path) -> Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret = path.with_extension("key");
    let public = path.with_extension("pub");
    for p in [&secret, &public] {
        if p.exists() {
            bail!("{} exists; keygen never overwrites a key", p.display());
        }
    }
    let key = crypto::generate_key()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("creating {}", secret.display()))?;
    f.write_all(crypto::secret_key_text(&key).as_bytes())?;
    f.sync_all()?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&public)?
        .write_all(crypto::public_key_text(&key.verifying_key()).as_bytes())?;
    println!("{}", KeyId::of(&key.verifying_key()));
    Ok(ExitCode::SUCCESS)
}

fn ledger_config(a: &LedgerArgs) -> Result<Config> {
    let mut origin = a.origin.clone();
    let mut ledger_key = a.ledger_key.clone();
    let mut roots = Vec::new();
    if let Some(path) = &a.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let c: ConfigFile = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if let Some(o) = c.origin {
            origin = o;
        }
        if let Some(k) = c.ledger_key {
            ledger_key = k;
        }
        for r in c.root_regulators {
            let agency = pb::Agency::from_str_name(&r.agency)
                .ok_or_else(|| anyhow!("{}: unknown agency {}", path.display(), r.agency))?;
            roots.push(pb::AuthorityKey {
                public_key: read_public(&r.public_key)?.to_bytes().to_vec(),
                name: r.name,
                agency: agency as i32,
                jurisdiction: r.jurisdiction,
                validity: None,
            });
        }
    }
    // A data dir that already has its log has its Genesis: the root regulators are read only
    // for a new one, so an existing ledger is served with its ledger key alone.
    let new = std::fs::read_dir(ledger::log_dir(&a.data))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true);
    if roots.is_empty() && new {
        for p in &a.root_regulators {
            roots.push(pb::AuthorityKey {
                public_key: read_public(p)?.to_bytes().to_vec(),
                name: p
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default(),
                agency: pb::Agency::PublicSecurity as i32,
                jurisdiction: String::new(),
                validity: None,
            });
        }
    }
    Ok(Config {
        data_dir: a.data.clone(),
        origin,
        root_regulators: roots,
        ledger_key: read_secret(&ledger_key)?,
        catalogue: Arc::new(Catalogue::embedded()),
        max_segment_bytes: ledger::DEFAULT_SEGMENT_BYTES,
        two_person: two_person(&a.two_person)?,
    })
}

fn two_person(names: &[String]) -> Result<Vec<i32>> {
    if names.len() == 1 && names[0].eq_ignore_ascii_case("none") {
        return Ok(vec![]);
    }
    names
        .iter()
        .map(|n| parse_category(n).map_err(|e| anyhow!("--two-person: {e}")))
        .collect()
}

fn serve(
    a: LedgerArgs,
    listen: &str,
    opts: taizhang::api::ServeOptions,
    metrics_listen: Option<&str>,
) -> Result<ExitCode> {
    let cfg = ledger_config(&a)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let data_dir = cfg.data_dir.clone();
        let (ledger, report) = Ledger::open(cfg).map_err(|e| anyhow!("{e}"))?;
        tracing::info!(
            entries = report.entries,
            replayed = report.replayed,
            torn_bytes_cut = report.torn_bytes_cut,
            views_rebuilt = report.views_rebuilt,
            "ledger open"
        );
        let (listener, addr) = taizhang::api::bind(listen).await?;
        if opts.tls.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "serving without TLS on a non-loopback address: queries and records cross the \
                 network in the clear (give --tls-cert and --tls-key)"
            );
        }
        let metrics_stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let metrics_addr = match metrics_listen {
            Some(m) => {
                let (l, a) = taizhang::api::bind(m)
                    .await
                    .with_context(|| format!("--metrics-listen {m}"))?;
                let stop = metrics_stop.clone();
                tokio::spawn(taizhang::api::metrics::serve(
                    opts.metrics.clone(),
                    ledger.clone(),
                    l,
                    async move { stop.notified().await },
                ));
                Some(a)
            }
            None => None,
        };
        // The line tests and scripts wait for (one write: see `witness`).
        println!(
            "listening on {addr}{}{}",
            if opts.tls.is_some() { " (TLS)" } else { "" },
            metrics_addr.map_or(String::new(), |a| format!("\nmetrics on http://{a}/metrics"))
        );
        // Stop on Ctrl-C or SIGTERM (what service managers send).
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        taizhang::api::serve_opts(ledger.clone(), listener, shutdown, opts)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        metrics_stop.notify_one();
        // Let the writer finish and the views reach sled before the process exits.
        ledger.close().await;
        drop(ledger);
        // The last handle finishes in the background (sled's snapshot, for a quick next start).
        if !taizhang::ledger::wait_released(&data_dir, std::time::Duration::from_secs(300)) {
            tracing::warn!("the ledger did not let go of its data dir within 300 s");
        }
        tracing::info!("stopped cleanly");
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(serde::Deserialize)]
struct RecordsFile {
    records: Vec<serde_json::Value>,
}

/// One line of a receipts file.
#[derive(serde::Serialize, serde::Deserialize)]
struct ReceiptLine {
    /// base64 of the SignedRecord protobuf.
    record: String,
    receipt: pb::Receipt,
}

fn load_records(file: &Path) -> Result<Vec<Payload>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed: RecordsFile = if file.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).with_context(|| format!("{}", file.display()))?
    } else {
        serde_json::from_str(&text).with_context(|| format!("{}", file.display()))?
    };
    parsed
        .records
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let body: pb::RecordBody = serde_json::from_value(v)
                .with_context(|| format!("{}: records[{i}]", file.display()))?;
            body.payload
                .ok_or_else(|| anyhow!("{}: records[{i}] has no payload kind", file.display()))
        })
        .collect()
}

/// The key queries are signed with: `path`, or the development root regulator compiled in.
fn query_key(path: Option<&Path>) -> Result<SigningKey> {
    match path {
        Some(p) => read_secret(p),
        None => Ok(crypto::parse_secret_key_text(include_str!(
            "../keys/dev-regulator.key"
        ))?),
    }
}

/// The PEM certificate file `--tls-ca` names, read.
fn read_ca(path: Option<&Path>) -> Result<Option<Vec<u8>>> {
    path.map(|p| std::fs::read(p).with_context(|| format!("--tls-ca: reading {}", p.display())))
        .transpose()
}

/// A ledger client whose queries are signed by `q`.
pub(crate) async fn connect(server: &str, q: &Querier) -> Result<LedgerClient<SignedChannel>> {
    Ok(LedgerClient::new(q.channel(server).await?)
        .max_decoding_message_size(taizhang::api::MAX_MESSAGE_BYTES))
}

pub(crate) async fn signer_for(
    client: &mut LedgerClient<SignedChannel>,
    key: SigningKey,
) -> Result<RecordSigner> {
    let cp = client
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await?
        .into_inner();
    let id = KeyId::of(&key.verifying_key());
    let head = client
        .get_signer_head(pb::GetSignerHeadRequest {
            key_id: id.0.to_vec(),
        })
        .await?
        .into_inner();
    let prev: [u8; 32] = head
        .prev_body_hash
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("server sent a bad signer head"))?;
    Ok(RecordSigner::new(key, &cp.origin).resume(head.next_seq, prev))
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn submit(
    file: &Path,
    key: &Path,
    server: &str,
    tls_ca: Option<Vec<u8>>,
    receipts: Option<&Path>,
) -> Result<ExitCode> {
    let payloads = load_records(file)?;
    let key = read_secret(key)?;
    let q = Querier {
        key: key.clone(),
        tls_ca,
    };
    let mut client = connect(server, &q).await?;
    let mut signer = signer_for(&mut client, key).await?;
    let mut out = Vec::new();
    let mut failed = 0;
    for (i, p) in payloads.into_iter().enumerate() {
        let rec = signer.sign(p, now_ms());
        match client
            .submit(pb::SubmitRequest {
                record: Some(rec.clone()),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                println!(
                    "records[{i}]: entry {} leaf {}{}",
                    r.index,
                    hex::encode(&r.leaf_hash),
                    if r.duplicate {
                        " (already recorded)"
                    } else {
                        ""
                    }
                );
                out.push(ReceiptLine {
                    record: B64.encode(rec.encode_to_vec()),
                    receipt: r,
                });
            }
            Err(s) => {
                println!("records[{i}]: refused {:?}: {}", s.code(), s.message());
                failed += 1;
                // Later records would not follow this one's chain position.
                break;
            }
        }
    }
    if let Some(path) = receipts {
        let mut text = String::new();
        for l in &out {
            text.push_str(&serde_json::to_string(l)?);
            text.push('\n');
        }
        std::fs::write(path, text)?;
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn hash32(field: &str, b: &[u8]) -> Result<[u8; 32]> {
    b.try_into()
        .map_err(|_| anyhow!("{field}: expected 32 bytes"))
}

fn check_receipt_line(line: &ReceiptLine, ledger_key: &VerifyingKey) -> Result<u64> {
    let rec = pb::SignedRecord::decode(B64.decode(&line.record)?.as_slice())?;
    let sig: [u8; 64] = rec
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("record.signature: expected 64 bytes"))?;
    let cosigs = rec
        .cosignatures
        .iter()
        .map(|c| {
            Ok(Cosig {
                key_id: KeyId::from_slice("key_id", &c.key_id)?,
                signature: c
                    .signature
                    .as_slice()
                    .try_into()
                    .map_err(|_| anyhow!("cosignature: expected 64 bytes"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let r = &line.receipt;
    let parts = ReceiptParts {
        index: r.index,
        leaf_hash: hash32("leaf_hash", &r.leaf_hash)?,
        integrated_time_ms: r.integrated_time_ms,
        prev_leaf_hash: hash32("prev_leaf_hash", &r.prev_leaf_hash)?,
        checkpoint: r.checkpoint.clone(),
        tree_size: r.tree_size,
        inclusion_proof: r
            .inclusion_proof
            .iter()
            .map(|h| hash32("inclusion_proof", h))
            .collect::<Result<_>>()?,
    };
    verify::verify_receipt(&rec.body, &sig, &cosigs, &parts, ledger_key)?;
    Ok(r.index)
}

fn verify_cmd(what: VerifyCmd) -> Result<ExitCode> {
    match what {
        VerifyCmd::SpotCheck {
            file,
            checkpoint,
            ledger_key,
            policy,
            jurisdiction,
            sample,
            expect,
        } => {
            let key = read_public(&ledger_key)?;
            let data = std::fs::read(&file)?;
            let note = std::fs::read_to_string(&checkpoint)?;
            let policy = policy.policy()?;
            let report = match verify::verify_export_with(&data, &note, &key, policy.as_ref(), None)
            {
                Ok(r) => r,
                Err(e) => {
                    println!("FAILED: {e}");
                    return Ok(ExitCode::from(3));
                }
            };
            let cp = verify::open_ledger_checkpoint(&note, &key)?;
            let catalogue = Catalogue::embedded();
            let mut f = taizhang::audit::spot::Features::new(
                &catalogue,
                taizhang::audit::spot::DEFAULT_RECEIPT_DEADLINE_MS,
            );
            let mut hashes = Vec::new();
            taizhang::codec::scan_frames(&data, 0, [0; 32], |i, leaf, h| {
                if i < cp.size {
                    f.add(i, leaf)?;
                    hashes.push(h);
                }
                Ok(())
            })
            .map_err(|e| anyhow!("{e}"))?;
            let s = taizhang::audit::spot::draw(
                f.population(&jurisdiction),
                &cp.origin,
                cp.size,
                &cp.root,
                &jurisdiction,
                sample,
            );
            let signed = taizhang::checkpoint::SignedNote::parse(&note)?;
            let r = taizhang::api::audit::spot_pb(
                &s,
                &note,
                cp.size,
                &cp.root,
                signed.signatures.len().saturating_sub(1) as u32,
                &|i| {
                    Ok(pb::EntryRef {
                        origin: cp.origin.clone(),
                        index: i,
                        leaf_hash: hashes[i as usize].to_vec(),
                    })
                },
            )
            .map_err(|e| anyhow!("{}", e.message()))?;
            print!("{}", crate::cli_audit::spot_text(&r));
            println!(
                "recomputed from {} verified entries{}",
                report.entries,
                if policy.is_some() {
                    " under the witness policy"
                } else {
                    ""
                }
            );
            if let Some(path) = expect {
                let theirs: pb::SelectSpotChecksResponse =
                    serde_json::from_str(&std::fs::read_to_string(&path)?)
                        .with_context(|| format!("{}", path.display()))?;
                if theirs != r {
                    println!("FAILED: the server's sample in {} differs", path.display());
                    return Ok(ExitCode::from(3));
                }
                println!("ok: the server's sample is the one the checkpoint determines");
            }
            Ok(ExitCode::SUCCESS)
        }
        VerifyCmd::Checkpoint {
            note,
            ledger_key,
            policy,
            trusted,
        } => {
            let key = read_public(&ledger_key)?;
            let text = std::fs::read_to_string(&note)
                .with_context(|| format!("reading {}", note.display()))?;
            let policy = policy.policy()?;
            let trusted = trusted.load()?;
            match verify::verify_checkpoint(
                &text,
                &key,
                policy.as_ref(),
                trusted.as_ref().map(|(n, p)| (n.as_str(), p.as_slice())),
            ) {
                Ok(r) => {
                    println!(
                        "ok: checkpoint {} size {} root {}",
                        r.checkpoint.origin,
                        r.checkpoint.size,
                        hex::encode(r.checkpoint.root)
                    );
                    if policy.is_some() {
                        println!("  cosigned by {}", r.witnesses.join(", "));
                    }
                    if let Some(from) = r.consistent_from {
                        println!("  consistent with the trusted checkpoint of size {from}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("FAILED: {e}");
                    Ok(ExitCode::from(3))
                }
            }
        }
        VerifyCmd::Receipt {
            file,
            ledger_key,
            policy,
            trusted,
        } => {
            let key = read_public(&ledger_key)?;
            let policy = policy.policy()?;
            let trusted = trusted.load()?;
            let text = std::fs::read_to_string(&file)?;
            let mut bad = 0;
            for (n, l) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let res = serde_json::from_str::<ReceiptLine>(l)
                    .map_err(anyhow::Error::from)
                    .and_then(|line| {
                        if policy.is_some() || trusted.is_some() {
                            verify::verify_checkpoint(
                                &line.receipt.checkpoint,
                                &key,
                                policy.as_ref(),
                                trusted.as_ref().map(|(n, p)| (n.as_str(), p.as_slice())),
                            )?;
                        }
                        check_receipt_line(&line, &key)
                    });
                match res {
                    Ok(i) => println!("line {}: entry {i}: ok", n + 1),
                    Err(e) => {
                        println!("line {}: FAILED: {e:#}", n + 1);
                        bad += 1;
                    }
                }
            }
            Ok(if bad > 0 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        VerifyCmd::Export {
            file,
            checkpoint,
            ledger_key,
            policy,
            trusted,
        } => {
            let key = read_public(&ledger_key)?;
            let data = std::fs::read(&file)?;
            let note = std::fs::read_to_string(&checkpoint)?;
            let trusted = trusted.map(std::fs::read_to_string).transpose()?;
            let policy = policy.policy()?;
            let r =
                verify::verify_export_with(&data, &note, &key, policy.as_ref(), trusted.as_deref());
            if let (Ok(_), Some(p)) = (&r, &policy) {
                println!(
                    "witnesses: the checkpoint carries the cosignatures of at least {} of the {} trusted",
                    p.quorum,
                    p.witnesses.len()
                );
            }
            report_export(r)
        }
        VerifyCmd::Data {
            dir,
            checkpoint,
            ledger_key,
        } => {
            let key = read_public(&ledger_key)?;
            let note = std::fs::read_to_string(&checkpoint)?;
            let log = ledger::log_dir(&dir);
            let mut names: Vec<PathBuf> = std::fs::read_dir(&log)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "tzl"))
                .collect();
            names.sort();
            let mut data = Vec::new();
            for n in names {
                data.extend(std::fs::read(&n)?);
            }
            report_export(verify::verify_export(&data, &note, &key))
        }
    }
}

fn report_export(r: Result<verify::ExportReport, verify::VerifyError>) -> Result<ExitCode> {
    match r {
        Ok(r) => {
            println!(
                "ok: {} entries, chain and {} signatures verified, root of the first {} matches the checkpoint ({})",
                r.entries,
                r.signatures_checked,
                r.checkpoint_size,
                hex::encode(r.root)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::from(3))
        }
    }
}

pub(crate) async fn export(
    server: &str,
    q: &Querier,
    out: &Path,
    checkpoint: &Path,
) -> Result<ExitCode> {
    let key = &q.key;
    let mut client = connect(server, q).await?;
    let cp = client
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await?
        .into_inner();
    let mut stream = client
        .export_entries(pb::ExportEntriesRequest {
            from: 0,
            to: cp.size,
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    let mut n = 0u64;
    let bar = progress_bar(cp.size, "exporting");
    while let Some(e) = stream.message().await? {
        if n.is_multiple_of(1024) {
            bar.set_position(n);
        }
        if e.index != n {
            bail!("server sent entry {} where {n} was expected", e.index);
        }
        if e.redacted {
            bail!(
                "entry {n} is not one key {} may read: a whole export needs an inspector or \
                 regulator key of national scope (--key)",
                KeyId::of(&key.verifying_key())
            );
        }
        data.extend(taizhang::codec::frame(
            &e.leaf,
            &hash32("leaf_hash", &e.leaf_hash)?,
        ));
        n += 1;
    }
    bar.finish_and_clear();
    std::fs::write(out, &data)?;
    std::fs::write(checkpoint, &cp.note)?;
    println!(
        "exported {n} entries to {}; checkpoint (size {}) to {}",
        out.display(),
        cp.size,
        checkpoint.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn reprove(
    file: &Path,
    out: &Path,
    server: &str,
    q: &Querier,
    witnessed: bool,
) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut client = connect(server, q).await?;
    let cp = client
        .get_checkpoint(pb::GetCheckpointRequest { witnessed })
        .await
        .map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut lines = String::new();
    let mut n = 0;
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut line: ReceiptLine = serde_json::from_str(l)
            .with_context(|| format!("{} line {}", file.display(), i + 1))?;
        let index = line.receipt.index;
        if index >= cp.size {
            bail!(
                "{} line {}: entry {index} is not yet covered by the checkpoint of size {}; retry later",
                file.display(),
                i + 1,
                cp.size
            );
        }
        let proof = client
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                index,
                tree_size: cp.size,
            })
            .await
            .map_err(|s| anyhow!("entry {index}: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        line.receipt.checkpoint = cp.note.clone();
        line.receipt.tree_size = cp.size;
        line.receipt.inclusion_proof = proof.hashes;
        lines.push_str(&serde_json::to_string(&line)?);
        lines.push('\n');
        n += 1;
    }
    std::fs::write(out, lines)?;
    println!(
        "{n} receipts re-proven against the {}checkpoint of size {} -> {}",
        if witnessed { "witnessed " } else { "" },
        cp.size,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn fetch_checkpoint(
    server: &str,
    q: &Querier,
    out: &Path,
    witnessed: bool,
    since: Option<&Path>,
    proof_out: Option<&Path>,
) -> Result<ExitCode> {
    let mut client = connect(server, q).await?;
    let cp = client
        .get_checkpoint(pb::GetCheckpointRequest { witnessed })
        .await
        .map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    std::fs::write(out, &cp.note)?;
    println!(
        "checkpoint of size {} written to {}",
        cp.size,
        out.display()
    );
    if let (Some(since), Some(proof_out)) = (since, proof_out) {
        let old = std::fs::read_to_string(since)?;
        let old = taizhang::checkpoint::SignedNote::parse(&old)
            .ok()
            .and_then(|n| taizhang::checkpoint::Checkpoint::parse(&n.text).ok())
            .ok_or_else(|| anyhow!("--since {}: not a checkpoint note", since.display()))?;
        let hashes = if old.size == 0 || old.size >= cp.size {
            vec![]
        } else {
            client
                .get_consistency_proof(pb::GetConsistencyProofRequest {
                    from_size: old.size,
                    to_size: cp.size,
                })
                .await
                .map_err(|s| anyhow!("consistency proof: {:?}: {}", s.code(), s.message()))?
                .into_inner()
                .hashes
        };
        let text: String = hashes
            .iter()
            .map(|h| format!("{}\n", hex::encode(h)))
            .collect();
        std::fs::write(proof_out, text)?;
        println!(
            "consistency proof from size {} ({} hashes) written to {}",
            old.size,
            hashes.len(),
            proof_out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(crate) fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix:>10} [{bar:30}] {pos}/{len} entries ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_string());
    bar
}

pub(crate) fn credit_code(first17: &str) -> String {
    format!(
        "{first17}{}",
        credit_code_check_char(first17).unwrap_or('0')
    )
}
