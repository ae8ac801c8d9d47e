//! `taizhang epcis export|import`: ledger movements as a GS1 EPCIS 2.0 JSON-LD document, and an
//! EPCIS document's events signed and submitted as records (the mapping is `taizhang::epcis`).

use crate::cli::{connect, now_ms, progress_bar};
use crate::cli_audit::Querier;
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use ed25519_dalek::SigningKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use taizhang::crypto::KeyId;
use taizhang::epcis::{self, Cited, Slot};
use taizhang::model::Catalogue;
use taizhang::pb::{self, record_body::Payload};

#[derive(Subcommand)]
pub enum EpcisCmd {
    /// Write the movements the key may read as an EPCIS 2.0 document (JSON-LD).
    Export {
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        /// First entry index (inclusive).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last entry index (exclusive); default: the latest checkpoint's size.
        #[arg(long)]
        to: Option<u64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign the events of an EPCIS 2.0 document with `--key` and submit them, in order.
    Import {
        file: PathBuf,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        /// A second person's key, co-signing every record (two-person control; an
        /// inspector's, for a destruction). Repeatable.
        #[arg(long)]
        cosign: Vec<PathBuf>,
        /// Print the records (as a `taizhang submit` file) instead of submitting them.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(cmd: EpcisCmd, q: Querier) -> Result<ExitCode> {
    match cmd {
        EpcisCmd::Export {
            server,
            from,
            to,
            out,
        } => export(&server, &q, from, to, &out).await,
        EpcisCmd::Import {
            file,
            server,
            cosign,
            dry_run,
        } => {
            let cosigners = cosign
                .iter()
                .map(|p| crate::cli::read_secret(p))
                .collect::<Result<Vec<_>>>()?;
            import(&file, &server, &q, &cosigners, dry_run).await
        }
    }
}

async fn export(
    server: &str,
    q: &Querier,
    from: u64,
    to: Option<u64>,
    out: &Path,
) -> Result<ExitCode> {
    let mut c = connect(server, q).await?;
    let cp = c
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await?
        .into_inner();
    let to = to.unwrap_or(cp.size).min(cp.size);
    // Names need the whole history (key registrations, the shipments receipts answer), so the
    // scan starts at 0; events are written for [from, to).
    let mut stream = c
        .export_entries(pb::ExportEntriesRequest { from: 0, to })
        .await?
        .into_inner();
    let catalogue = Catalogue::embedded();
    let mut key_ent: HashMap<KeyId, String> = HashMap::new();
    let mut shipped: HashMap<u64, (String, String)> = HashMap::new();
    let (mut events, mut other, mut hidden, mut unnamed) = (Vec::new(), 0u64, 0u64, 0u64);
    let bar = progress_bar(to, "exporting");
    while let Some(e) = stream.message().await? {
        if e.index.is_multiple_of(1024) {
            bar.set_position(e.index);
        }
        if e.redacted {
            hidden += u64::from(e.index >= from);
            continue;
        }
        let leaf = taizhang::codec::Leaf::decode(&e.leaf)
            .map_err(|x| anyhow!("entry {}: {x}", e.index))?;
        let body = taizhang::codec::decode_body(&leaf.body)
            .map_err(|x| anyhow!("entry {}: {x}", e.index))?;
        let Some(payload) = body.payload else {
            continue;
        };
        let signer = KeyId::from_slice("signer", &body.signer)
            .map_err(|x| anyhow!("entry {}: {x}", e.index))?;
        match &payload {
            Payload::RegisterKey(k) if !k.enterprise.is_empty() => {
                if let Ok(vk) = taizhang::crypto::parse_public_key("public_key", &k.public_key) {
                    key_ent.insert(KeyId::of(&vk), k.enterprise.clone());
                }
            }
            Payload::Ship(s) => {
                shipped.insert(e.index, (s.substance.clone(), s.lot.clone()));
            }
            _ => {}
        }
        if e.index < from {
            continue;
        }
        // A movement's sites and parties are named by its signer's enterprise; when the key's
        // registration is not readable here, the event is left out rather than written wrong.
        let enterprise = match key_ent.get(&signer) {
            Some(e) => e.clone(),
            None if epcis_kind(&payload) => {
                unnamed += 1;
                continue;
            }
            None => String::new(),
        };
        let ship_of = match &payload {
            Payload::Receive(r) => r.ship.as_ref().and_then(|s| shipped.get(&s.index)),
            _ => None,
        };
        let entry = epcis::Entry {
            index: e.index,
            leaf_hash: &e.leaf_hash,
            integrated_time_ms: leaf.integrated_time_ms,
            enterprise: &enterprise,
            payload: &payload,
            shipped: ship_of.map(|(s, l)| (s.as_str(), l.as_str())),
        };
        match epcis::event(&entry, &catalogue) {
            Some(ev) => events.push(ev),
            None => other += 1,
        }
    }
    bar.finish_and_clear();
    let n = events.len();
    let doc = epcis::document(&cp.origin, now_ms(), events);
    std::fs::write(out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{n} events written to {} (entries {from}..{to}; {other} are not movements{}{})",
        out.display(),
        if hidden > 0 {
            format!(", {hidden} not readable by this key")
        } else {
            String::new()
        },
        if unnamed > 0 {
            format!(", {unnamed} movements left out: their signer's registration is not readable by this key")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether a payload becomes an event (a movement).
fn epcis_kind(p: &Payload) -> bool {
    matches!(
        p,
        Payload::Produce(_)
            | Payload::Import(_)
            | Payload::Ship(_)
            | Payload::Receive(_)
            | Payload::Export(_)
            | Payload::StockTake(_)
            | Payload::Consume(_)
            | Payload::Destroy(_)
            | Payload::LossReport(_)
    )
}

async fn import(
    file: &Path,
    server: &str,
    q: &Querier,
    cosigners: &[SigningKey],
    dry_run: bool,
) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
    let mut events = epcis::parse(&doc).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let mut c = connect(server, q).await?;
    let origin = c
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await?
        .into_inner()
        .origin;
    // Each event's site must be the signing key's enterprise's (a dry run signs nothing, and
    // may read a document of several enterprises).
    let head = c
        .get_signer_head(pb::GetSignerHeadRequest {
            key_id: KeyId::of(&q.key.verifying_key()).0.to_vec(),
        })
        .await?
        .into_inner();
    if !dry_run && head.enterprise.is_empty() {
        bail!(
            "--key: key {} is not an enterprise key registered on this ledger",
            KeyId::of(&q.key.verifying_key())
        );
    }
    for (i, ev) in events.iter().enumerate() {
        if !dry_run && ev.site_owner != head.enterprise {
            bail!(
                "{}: epcisBody.eventList[{i}].readPoint.id: names enterprise `{}`; key {} is registered to {}",
                file.display(),
                ev.site_owner,
                KeyId::of(&q.key.verifying_key()),
                head.enterprise
            );
        }
    }
    let mut audit = pb::audit_client::AuditClient::new(q.channel(server).await?)
        .max_decoding_message_size(taizhang::api::MAX_MESSAGE_BYTES);
    // Resolve what the events cite: entries as given, permits by their numbers.
    for (i, ev) in events.iter_mut().enumerate() {
        for (slot, cited) in ev.cites.clone() {
            let r = match cited {
                Cited::Entry(mut r) => {
                    r.origin = origin.clone();
                    r
                }
                Cited::PermitNo(no) => resolve(&mut audit, slot, &no)
                    .await
                    .with_context(|| format!("epcisBody.eventList[{i}].bizTransactionList"))?,
            };
            ev.fill(slot, r);
        }
    }
    if dry_run {
        let records: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                serde_json::to_value(pb::RecordBody {
                    payload: Some(e.payload.clone()),
                    ..Default::default()
                })
            })
            .collect::<Result<_, _>>()?;
        let text = serde_json::to_string_pretty(&serde_json::json!({ "records": records }))?;
        // A reader that stops early (`| head`) is not an error.
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut signer = crate::cli::signer_for(&mut c, q.key.clone()).await?;
    let co: Vec<&SigningKey> = cosigners.iter().collect();
    let bar = progress_bar(events.len() as u64, "importing");
    for (i, ev) in events.into_iter().enumerate() {
        let body = taizhang::codec::encode_body(&signer.body(ev.payload, now_ms()));
        // Advance only once accepted: a refused record takes no seq.
        let mut next = signer.clone();
        let rec = next.sign_bytes(body, &co);
        match c.submit(pb::SubmitRequest { record: Some(rec) }).await {
            Ok(r) => {
                let r = r.into_inner();
                bar.suspend(|| {
                    println!(
                        "events[{i}]: entry {} leaf {}",
                        r.index,
                        hex::encode(&r.leaf_hash)
                    )
                });
                bar.inc(1);
                signer = next;
            }
            Err(s) => {
                bar.finish_and_clear();
                println!("events[{i}]: refused {:?}: {}", s.code(), s.message());
                // Later events would not follow this one's chain position.
                return Ok(ExitCode::from(1));
            }
        }
    }
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}

/// The issuing entry of a permit (or licence) named by its number, as the key may see it.
async fn resolve(
    audit: &mut pb::audit_client::AuditClient<taizhang::api::auth::SignedChannel>,
    slot: Slot,
    no: &str,
) -> Result<pb::EntryRef> {
    let issued = match slot {
        Slot::Licence => audit
            .reconcile_import_export(pb::ReconcileImportExportRequest {
                licence: Some(pb::reconcile_import_export_request::Licence::PermitNo(no.into())),
                as_of_ms: 0,
            })
            .await
            .map(|r| r.into_inner().licence.and_then(|l| l.issued_by)),
        Slot::Permit | Slot::TransportPermit => audit
            .reconcile_permit(pb::ReconcilePermitRequest {
                permit: Some(pb::reconcile_permit_request::Permit::PermitNo(no.into())),
                as_of_ms: 0,
            })
            .await
            .map(|r| r.into_inner().permit.and_then(|p| p.issued_by)),
        Slot::Shipment => bail!("a shipment is cited by its entry (urn:taizhang:entry:<index>:<leaf hash>), not by `{no}`"),
    };
    match issued {
        Ok(Some(r)) => Ok(r),
        Ok(None) => bail!("permit `{no}`: the server named no issuing entry"),
        Err(s) => bail!(
            "permit `{no}`: {:?}: {} (cite it as urn:taizhang:entry:<index>:<leaf hash> instead)",
            s.code(),
            s.message()
        ),
    }
}
