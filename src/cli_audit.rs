//! `taizhang audit ...`: the inspectors' queries from the command line — a readable table by
//! default, the proto3 JSON mapping of the answer with `--json`.

use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::SigningKey;
use std::process::ExitCode;
use taizhang::api::auth::SignedChannel;
use taizhang::pb::{self, audit_client::AuditClient};

#[derive(clap::Subcommand)]
pub enum AuditCmd {
    /// Permit reconciliation (核销): figures, every draw-down matched with its receipt, mismatches.
    Permit {
        /// Permit number, or `entry:<index>` for the IssuePermit entry.
        id: String,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        /// Judge as of this moment (ms since the epoch) instead of now.
        #[arg(long)]
        as_of_ms: Option<u64>,
        /// Print the answer as JSON (proto3 JSON mapping).
        #[arg(long)]
        json: bool,
    },
    /// Two-way import / export check (进出口双向核查) of a licence: licensed, declared, cleared by
    /// customs, endorsed abroad; every exception.
    Trade {
        /// Licence number, or `entry:<index>` for its IssuePermit entry.
        id: String,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        #[arg(long)]
        as_of_ms: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Permits of an enterprise (`--holder`) or a region (`--jurisdiction`), with state and
    /// remaining.
    Permits {
        #[arg(
            long,
            conflicts_with = "jurisdiction",
            required_unless_present = "jurisdiction"
        )]
        holder: Option<String>,
        /// Administrative division code or prefix (e.g. 4403).
        #[arg(long)]
        jurisdiction: Option<String>,
        /// Only these states (issued, active, partially_used, exhausted, expired, revoked,
        /// written_off); repeatable.
        #[arg(long = "state")]
        states: Vec<String>,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        #[arg(long)]
        as_of_ms: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Mass balance (账物相符) of a site × substance (× lot) over a period, against the latest
    /// signed count in it.
    Balance {
        /// Credit code of the enterprise.
        #[arg(long)]
        enterprise: String,
        #[arg(long)]
        site: String,
        /// Substance id (CAS number or catalogue id).
        #[arg(long)]
        substance: String,
        /// One lot; all lots of the substance at the site without it.
        #[arg(long)]
        lot: Option<String>,
        /// Period start, ms since the epoch (default: the beginning).
        #[arg(long, default_value_t = 0)]
        from_ms: u64,
        /// Period end (exclusive), ms since the epoch (default: now).
        #[arg(long, default_value_t = 0)]
        to_ms: u64,
        /// Rows listed behind the terms (at most 10000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        #[arg(long)]
        json: bool,
    },
    /// The custody graph of a lot: where it went and where it came from. Writes DOT and SVG
    /// pictures with --dot / --svg.
    Trace {
        lot: String,
        /// both, forward or backward.
        #[arg(long, default_value = "both")]
        direction: String,
        #[arg(long, default_value_t = 10_000)]
        max_edges: u32,
        /// Write the Graphviz DOT rendering here.
        #[arg(long)]
        dot: Option<std::path::PathBuf>,
        /// Write the SVG flow diagram here.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        #[arg(long)]
        json: bool,
    },
    /// Every point where quantity went missing, ranked by category and quantity, with the entries
    /// that prove each; repeated patterns.
    Losses {
        #[arg(long, conflicts_with_all = ["lot", "jurisdiction"], required_unless_present_any = ["lot", "jurisdiction"])]
        enterprise: Option<String>,
        #[arg(long, conflicts_with = "jurisdiction")]
        lot: Option<String>,
        /// Administrative division code or prefix.
        #[arg(long)]
        jurisdiction: Option<String>,
        #[arg(long, default_value_t = 0)]
        from_ms: u64,
        #[arg(long, default_value_t = 0)]
        to_ms: u64,
        #[arg(long)]
        as_of_ms: Option<u64>,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        #[arg(long)]
        json: bool,
    },
    /// An enterprise's annual precursor report (due 31 March): the year's mass balance of each
    /// site × substance, every posting citing its entry.
    Annual {
        #[arg(long)]
        enterprise: String,
        /// Calendar year (China Standard Time).
        #[arg(long)]
        year: u32,
        /// Write the report as CSV (UTF-8): a `total` row per figure, an `entry` row per posting.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        #[arg(long)]
        json: bool,
    },
    /// Sites to inspect (抽查): a risk-weighted sample drawn from a checkpoint's root, which
    /// anyone can recompute from an export (`taizhang verify spot-check`).
    SpotCheck {
        /// Division code prefix to draw from.
        #[arg(long, default_value = "")]
        jurisdiction: String,
        /// How many sites.
        #[arg(long, default_value_t = 5)]
        sample: u32,
        /// The checkpoint note to draw from (default: the latest witnessed).
        #[arg(long)]
        checkpoint: Option<std::path::PathBuf>,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        #[arg(long)]
        json: bool,
    },
    /// An enterprise's sales report to public security (category 1 within 5 days, 2 and 3
    /// within 30), each sale citing its entry; `--out FILE.csv` writes the file to hand in.
    Sales {
        #[arg(long)]
        enterprise: String,
        #[arg(long, default_value_t = 0)]
        from_ms: u64,
        /// Exclusive; default now.
        #[arg(long, default_value_t = 0)]
        to_ms: u64,
        /// Write the report as CSV (UTF-8, one sale per row, with entry index and leaf hash).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        #[arg(
            long,
            env = "TAIZHANG_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        #[arg(long)]
        json: bool,
    },
}

/// Who queries, and which certificate it trusts for an `https://` server.
#[derive(Clone)]
pub struct Querier {
    pub key: SigningKey,
    pub tls_ca: Option<Vec<u8>>,
}

impl Querier {
    /// A signing channel to `server`.
    pub async fn channel(&self, server: &str) -> Result<SignedChannel> {
        taizhang::api::auth::connect_tls(
            server.to_string(),
            self.key.clone(),
            self.tls_ca.as_deref(),
        )
        .await
        .with_context(|| format!("connecting to {server}"))
    }
}

async fn client(server: &str, key: &Querier) -> Result<AuditClient<SignedChannel>> {
    Ok(AuditClient::new(key.channel(server).await?)
        .max_decoding_message_size(taizhang::api::MAX_MESSAGE_BYTES))
}

/// An `EntryRef` for `entry:<index>`, read from the server; `None` for a permit number.
async fn entry_arg(server: &str, key: &Querier, id: &str) -> Result<Option<pb::EntryRef>> {
    let Some(i) = id.strip_prefix("entry:") else {
        return Ok(None);
    };
    let index: u64 = i.parse().with_context(|| format!("`{id}`: entry index"))?;
    let mut l = pb::ledger_client::LedgerClient::new(key.channel(server).await?);
    let e = l
        .get_entry(pb::GetEntryRequest { index })
        .await
        .map_err(|s| anyhow!("entry {index}: {}", s.message()))?
        .into_inner();
    let cp = l
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .map_err(|s| anyhow!("checkpoint: {}", s.message()))?
        .into_inner();
    Ok(Some(pb::EntryRef {
        origin: cp.origin,
        index,
        leaf_hash: e.leaf_hash,
    }))
}

/// Runs an audit query, signed with `key`.
pub async fn run(cmd: AuditCmd, key: Querier) -> Result<ExitCode> {
    match cmd {
        AuditCmd::Trade {
            id,
            server,
            as_of_ms,
            json,
        } => {
            use pb::reconcile_import_export_request::Licence;
            let licence = match entry_arg(&server, &key, &id).await? {
                Some(e) => Licence::Entry(e),
                None => Licence::PermitNo(id.clone()),
            };
            let r = client(&server, &key)
                .await?
                .reconcile_import_export(pb::ReconcileImportExportRequest {
                    licence: Some(licence),
                    as_of_ms: as_of_ms.unwrap_or(0),
                })
                .await
                .map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            show(json, &r, trade_text)
        }
        AuditCmd::Permit {
            id,
            server,
            as_of_ms,
            json,
        } => {
            let permit = match entry_arg(&server, &key, &id).await? {
                Some(e) => pb::reconcile_permit_request::Permit::Entry(e),
                None => pb::reconcile_permit_request::Permit::PermitNo(id.clone()),
            };
            let r = client(&server, &key)
                .await?
                .reconcile_permit(pb::ReconcilePermitRequest {
                    permit: Some(permit),
                    as_of_ms: as_of_ms.unwrap_or(0),
                })
                .await
                .map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            show(json, &r, reconciliation_text)
        }
        AuditCmd::Permits {
            holder,
            jurisdiction,
            states,
            server,
            as_of_ms,
            json,
        } => {
            let scope = match (holder, jurisdiction) {
                (Some(h), _) => pb::list_permits_request::Scope::Holder(h),
                (None, Some(j)) => pb::list_permits_request::Scope::Jurisdiction(j),
                (None, None) => bail!("name --holder or --jurisdiction"),
            };
            let states = states
                .iter()
                .map(|s| {
                    let name = format!("PERMIT_STATE_{}", s.to_uppercase().replace('-', "_"));
                    pb::PermitState::from_str_name(&name)
                        .map(|s| s as i32)
                        .ok_or_else(|| anyhow!("--state {s}: not a permit state"))
                })
                .collect::<Result<Vec<_>>>()?;
            let r = client(&server, &key)
                .await?
                .list_permits(pb::ListPermitsRequest {
                    scope: Some(scope),
                    as_of_ms: as_of_ms.unwrap_or(0),
                    states,
                    limit: 0,
                })
                .await
                .map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            show(json, &r, list_text)
        }
        AuditCmd::Balance {
            enterprise,
            site,
            substance,
            lot,
            from_ms,
            to_ms,
            limit,
            server,
            json,
        } => {
            let r = client(&server, &key)
                .await?
                .mass_balance(pb::MassBalanceRequest {
                    enterprise,
                    site,
                    substance,
                    lot: lot.unwrap_or_default(),
                    from_ms,
                    to_ms,
                    limit,
                })
                .await
                .map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            show(json, &r, balance_text)
        }
        AuditCmd::Trace {
            lot,
            direction,
            max_edges,
            dot,
            svg,
            server,
            json,
        } => {
            let direction = match direction.as_str() {
                "both" => pb::TraceDirection::Both,
                "forward" => pb::TraceDirection::Forward,
                "backward" => pb::TraceDirection::Backward,
                d => bail!("--direction {d}: expected both, forward or backward"),
            };
            let r = client(&server, &key)
                .await?
                .trace_lot(pb::TraceLotRequest {
                    lot,
                    direction: direction as i32,
                    max_edges,
                })
                .await
                .map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            for (path, body) in [(&dot, &r.dot), (&svg, &r.svg)] {
                if let Some(p) = path {
                    std::fs::write(p, body).with_context(|| format!("writing {}", p.display()))?;
                }
            }
            show(json, &r, trace_text)
        }
        AuditCmd::Losses {
            enterprise,
            lot,
            jurisdiction,
            from_ms,
            to_ms,
            as_of_ms,
            server,
            json,
        } => {
            use pb::find_losses_request::Scope;
            let scope = match (enterprise, lot, jurisdiction) {
                (Some(e), _, _) => Scope::Enterprise(e),
                (None, Some(l), _) => Scope::Lot(l),
                (None, None, Some(j)) => Scope::Jurisdiction(j),
                _ => bail!("name --enterprise, --lot or --jurisdiction"),
            };
            let r = client(&server, &key)
                .await?
                .find_losses(pb::FindLossesRequest {
                    scope: Some(scope),
                    from_ms,
                    to_ms,
                    as_of_ms: as_of_ms.unwrap_or(0),
                })
                .await
                .map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            show(json, &r, losses_text)
        }
        AuditCmd::Sales {
            enterprise,
            from_ms,
            to_ms,
            out,
            server,
            json,
        } => {
            let r = client(&server, &key)
                .await?
                .sales_report(pb::SalesReportRequest {
                    enterprise,
                    from_ms,
                    to_ms,
                })
                .await
                .map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            if let Some(path) = out {
                write_sales_csv(&path, &r)?;
                eprintln!("{} sales written to {}", r.sales.len(), path.display());
            }
            show(json, &r, sales_text)
        }
        AuditCmd::Annual {
            enterprise,
            year,
            out,
            server,
            json,
        } => {
            let r = client(&server, &key)
                .await?
                .annual_report(pb::AnnualReportRequest {
                    enterprise,
                    year,
                    limit: 0,
                })
                .await
                .map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            if let Some(path) = out {
                write_annual_csv(&path, &r)?;
                eprintln!(
                    "{} lines ({} postings) written to {}",
                    r.lines.len(),
                    r.lines.iter().map(|l| l.postings.len()).sum::<usize>(),
                    path.display()
                );
            }
            show(json, &r, annual_text)
        }
        AuditCmd::SpotCheck {
            jurisdiction,
            sample,
            checkpoint,
            server,
            json,
        } => {
            let note = checkpoint
                .map(|p| {
                    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
                })
                .transpose()?
                .unwrap_or_default();
            let r = client(&server, &key)
                .await?
                .select_spot_checks(pb::SelectSpotChecksRequest {
                    checkpoint: note,
                    jurisdiction,
                    sample_size: sample,
                })
                .await
                .map_err(|s| anyhow!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            show(json, &r, spot_text)
        }
    }
}

fn unit_name(u: i32) -> &'static str {
    match pb::Unit::try_from(u) {
        Ok(pb::Unit::Milligram) => "mg",
        Ok(pb::Unit::Millilitre) => "ml",
        Ok(pb::Unit::Dose) => "doses",
        _ => "",
    }
}

fn category_name(c: i32) -> String {
    pb::Category::try_from(c)
        .map(|c| c.as_str_name().trim_start_matches("CATEGORY_").to_string())
        .unwrap_or_default()
}

/// The sales report as the CSV file an enterprise hands in.
pub fn write_sales_csv(path: &std::path::Path, r: &pb::SalesReportResponse) -> Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| format!("{}", path.display()))?;
    w.write_record([
        "entry_index",
        "leaf_hash",
        "shipped_at_utc",
        "due_utc",
        "substance",
        "category",
        "lot",
        "quantity",
        "unit",
        "from_site",
        "buyer",
        "buyer_name",
        "buyer_site",
        "permits",
        "carrier",
        "received",
    ])?;
    for s in &r.sales {
        let e = s.ship.clone().unwrap_or_default();
        w.write_record([
            e.index.to_string(),
            hex::encode(&e.leaf_hash),
            when(s.shipped_at_ms),
            when(s.due_ms),
            s.substance.clone(),
            category_name(s.category),
            s.lot.clone(),
            s.quantity.to_string(),
            unit_name(s.unit).to_string(),
            s.from_site.clone(),
            s.buyer.clone(),
            s.buyer_name.clone(),
            s.buyer_site.clone(),
            s.permit_nos.join(";"),
            s.carrier.clone(),
            s.received.map_or(String::new(), |q| q.to_string()),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// The sales report as a table.
fn term_label(t: i32) -> String {
    enum_name(
        pb::BalanceTerm::try_from(t).map_or("", |t| t.as_str_name()),
        "BALANCE_TERM_",
    )
}

/// One CSV for the annual report: per line, `total` rows (opening, each term, closing, the
/// count and its variance), then an `entry` row for each posting behind the terms.
pub fn write_annual_csv(path: &std::path::Path, r: &pb::AnnualReportResponse) -> Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| format!("{}", path.display()))?;
    w.write_record([
        "row",
        "enterprise",
        "year",
        "site",
        "substance",
        "category",
        "unit",
        "figure",
        "quantity",
        "at_utc",
        "lot",
        "entry_index",
        "leaf_hash",
    ])?;
    let cat = taizhang::model::Catalogue::embedded();
    for l in &r.lines {
        let q = l.query.clone().unwrap_or_default();
        let category = cat
            .get(&q.substance)
            .map_or(String::new(), |s| category_name(s.category as i32));
        let unit = unit_name(l.unit).to_string();
        let mut row = |kind: &str,
                       figure: String,
                       quantity: String,
                       at: u64,
                       lot: &str,
                       e: Option<&pb::EntryRef>| {
            w.write_record([
                kind.to_string(),
                r.enterprise.clone(),
                r.year.to_string(),
                q.site.clone(),
                q.substance.clone(),
                category.clone(),
                unit.clone(),
                figure,
                quantity,
                if at == 0 { String::new() } else { when(at) },
                lot.to_string(),
                e.map_or(String::new(), |e| e.index.to_string()),
                e.map_or(String::new(), |e| hex::encode(&e.leaf_hash)),
            ])
        };
        row(
            "total",
            "opening".into(),
            l.opening.to_string(),
            r.from_ms,
            "",
            None,
        )?;
        for t in &l.terms {
            row(
                "total",
                term_label(t.term),
                t.quantity.to_string(),
                0,
                "",
                None,
            )?;
        }
        row(
            "total",
            "closing".into(),
            l.expected_closing.to_string(),
            r.to_ms,
            "",
            None,
        )?;
        if let Some(c) = &l.count {
            row(
                "total",
                "last count".into(),
                c.counted.to_string(),
                c.at_ms,
                "",
                c.entry.as_ref(),
            )?;
            row(
                "total",
                "variance".into(),
                c.variance.to_string(),
                c.at_ms,
                "",
                c.entry.as_ref(),
            )?;
        }
        for p in &l.postings {
            row(
                "entry",
                term_label(p.term),
                p.quantity.to_string(),
                p.at_ms,
                &p.lot,
                p.entry.as_ref(),
            )?;
        }
        if l.truncated {
            // Said in the file itself: the list behind the totals is not complete.
            row(
                "truncated",
                format!("only the first {} postings are listed", l.postings.len()),
                String::new(),
                0,
                "",
                None,
            )?;
        }
    }
    w.flush()?;
    Ok(())
}

pub fn annual_text(r: &pb::AnnualReportResponse) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Annual report 年度报告 {} — {} {}: {} stocks, due {}{}",
        r.year,
        r.enterprise,
        r.name,
        r.lines.len(),
        when(r.due_ms),
        if r.excluded > 0 {
            format!(
                " ({} controlled-drug stocks reported elsewhere)",
                r.excluded
            )
        } else {
            String::new()
        }
    );
    for l in &r.lines {
        let q = l.query.clone().unwrap_or_default();
        let terms: Vec<String> = l
            .terms
            .iter()
            .filter(|t| t.quantity != 0)
            .map(|t| format!("{} {}", term_label(t.term), signed(t.quantity)))
            .collect();
        let _ = writeln!(
            o,
            "  {} {}: opening {}, {}, closing {} {}{}  ({} postings cited{})",
            q.site,
            q.substance,
            thousands(l.opening),
            if terms.is_empty() {
                "no movement".to_string()
            } else {
                terms.join(", ")
            },
            thousands(l.expected_closing),
            unit_name(l.unit),
            l.count.as_ref().map_or(String::new(), |c| format!(
                "; last count {} (variance {})",
                thousands(c.counted),
                signed(c.variance)
            )),
            l.postings.len(),
            if l.truncated {
                "; TRUNCATED: there are more"
            } else {
                ""
            }
        );
    }
    o
}

pub fn sales_text(r: &pb::SalesReportResponse) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Sales report 销售情况报告 — {} {}, {} to {}: {} sales, first due {}{}",
        r.enterprise,
        r.name,
        when(r.from_ms),
        when(r.to_ms),
        r.sales.len(),
        when(r.due_ms),
        if r.excluded > 0 {
            format!(" ({} other shipments not reportable here)", r.excluded)
        } else {
            String::new()
        }
    );
    for s in &r.sales {
        let _ = writeln!(
            o,
            "  entry {:>6}  {}  {} {} {} lot {} → {} {} ({})  permits {}  due {}",
            s.ship.as_ref().map_or(0, |e| e.index),
            when(s.shipped_at_ms),
            thousands(s.quantity),
            unit_name(s.unit),
            s.substance,
            s.lot,
            s.buyer,
            s.buyer_site,
            s.buyer_name,
            if s.permit_nos.is_empty() {
                "—".to_string()
            } else {
                s.permit_nos.join(", ")
            },
            when(s.due_ms)
        );
    }
    o
}

/// The spot-check sample as a table.
pub fn spot_text(r: &pb::SelectSpotChecksResponse) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Spot checks 抽查 — {} of {} sites (total weight {}), drawn from checkpoint size {} \
         ({} cosignatures), seed {}",
        r.sample.len(),
        r.population,
        thousands(r.total_weight),
        r.size,
        r.cosignatures,
        hex::encode(&r.seed)
    );
    for s in &r.sample {
        let _ = writeln!(
            o,
            "  {:>3}. {} {}  weight {} (category ×{}, volume {}, open losses {}, variances {}){}",
            s.rank,
            s.enterprise,
            s.site,
            s.weight,
            s.category_factor,
            thousands(s.volume),
            s.open_losses,
            s.variances,
            if s.entries.is_empty() {
                String::new()
            } else {
                format!(
                    "  entries {}",
                    s.entries
                        .iter()
                        .map(|e| e.index.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    o
}

fn signed(q: i64) -> String {
    if q < 0 {
        format!("−{}", thousands(q.unsigned_abs()))
    } else {
        thousands(q as u64)
    }
}

pub fn balance_text(r: &pb::MassBalanceResponse) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let Some(q) = &r.query else {
        return o;
    };
    let u = unit(r.unit);
    let _ = writeln!(
        o,
        "Mass balance 账物相符 — {} site {} · {}{}",
        q.enterprise,
        q.site,
        q.substance,
        if q.lot.is_empty() {
            " (all lots)".to_string()
        } else {
            format!(" lot {}", q.lot)
        }
    );
    let _ = writeln!(o, "  period       {} … {}", when(q.from_ms), when(q.to_ms));
    let _ = writeln!(o, "  opening      {:>16} {u}", thousands(r.opening));
    for t in &r.terms {
        if t.quantity == 0 {
            continue;
        }
        let name = pb::BalanceTerm::try_from(t.term)
            .map(|t| enum_name(t.as_str_name(), "BALANCE_TERM_"))
            .unwrap_or_default();
        let inflow = matches!(
            pb::BalanceTerm::try_from(t.term),
            Ok(pb::BalanceTerm::Produced
                | pb::BalanceTerm::Received
                | pb::BalanceTerm::Imported
                | pb::BalanceTerm::AdjustedIn)
        );
        let _ = writeln!(
            o,
            "  {} {name:<11}{:>16} {u}",
            if inflow { "+" } else { "−" },
            signed(t.quantity)
        );
    }
    let _ = writeln!(
        o,
        "  = expected   {:>16} {u}",
        thousands(r.expected_closing)
    );
    match &r.count {
        Some(c) => {
            let _ =
                writeln!(
                o,
                "  count        {:>16} {u} by {} at {} (entry {}), book then {}: variance {} {u}",
                thousands(c.counted),
                if c.inspector { "an inspector" } else { "the enterprise" },
                when(c.at_ms),
                cite(&c.entry),
                thousands(c.book),
                signed(c.variance)
            );
            if r.after_count != 0 {
                let _ = writeln!(o, "  after count  {:>16} {u} moved", signed(r.after_count));
            }
        }
        None => {
            let _ = writeln!(o, "  count        none in the period");
        }
    }
    let status = pb::BalanceStatus::try_from(r.status)
        .map(|s| enum_name(s.as_str_name(), "BALANCE_STATUS_").to_uppercase())
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "  status       {status} (tolerance {} {u})",
        thousands(r.tolerance)
    );
    if !r.postings.is_empty() {
        let _ = writeln!(
            o,
            "\n  {:<22} {:<14} {:<12} {:>14}  at",
            "entry", "term", "lot", "quantity"
        );
        for p in &r.postings {
            let name = pb::BalanceTerm::try_from(p.term)
                .map(|t| enum_name(t.as_str_name(), "BALANCE_TERM_"))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  {:<22} {:<14} {:<12} {:>14}  {}{}",
                cite(&p.entry),
                name,
                p.lot,
                signed(p.quantity),
                when(p.at_ms),
                match &p.corrects {
                    Some(c) => format!("  corrects {}", c.index),
                    None => String::new(),
                }
            );
        }
        if r.truncated {
            let _ = writeln!(o, "  … more rows (raise --limit)");
        }
    }
    o
}

pub fn trace_text(r: &pb::TraceLotResponse) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let u = unit(r.unit);
    let _ = writeln!(
        o,
        "Custody of lot {} ({}) — {} holdings, {} shipments; lots followed: {}",
        r.lot,
        r.substance,
        r.nodes.len(),
        r.edges.len(),
        r.lots.join(", ")
    );
    for (i, n) in r.nodes.iter().enumerate() {
        let _ = writeln!(
            o,
            "  [{i}] {} {} site {} — lots {}; on hand {} {u}{}{}{}{}",
            n.enterprise,
            n.name,
            n.site,
            n.lots.join(","),
            thousands(n.on_hand),
            if n.consumed > 0 {
                format!("; consumed {}", thousands(n.consumed))
            } else {
                String::new()
            },
            if n.destroyed > 0 {
                format!("; destroyed {}", thousands(n.destroyed))
            } else {
                String::new()
            },
            if n.lost > 0 {
                format!("; LOST {}", thousands(n.lost))
            } else {
                String::new()
            },
            if n.exported > 0 {
                format!("; exported {}", thousands(n.exported))
            } else {
                String::new()
            },
        );
    }
    for e in &r.edges {
        let _ = writeln!(
            o,
            "  [{}] → [{}] ship {} lot {}: shipped {} {u}, {}{}",
            e.from,
            e.to,
            cite(&e.ship),
            e.lot,
            thousands(e.shipped),
            match &e.receive {
                Some(rv) => format!("received {} (entry {})", thousands(e.received), rv.index),
                None => "not received".into(),
            },
            if e.missing > 0 {
                format!(" — MISSING {} {u}", thousands(e.missing))
            } else {
                String::new()
            }
        );
    }
    if r.truncated {
        let _ = writeln!(o, "  … cut at the edge limit (raise --max-edges)");
    }
    o
}

pub fn losses_text(r: &pb::FindLossesResponse) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Losses 流失 — {} found, judged at {}",
        r.losses.len(),
        when(r.as_of_ms)
    );
    for l in &r.losses {
        let kind = match pb::LossPointKind::try_from(l.kind) {
            Ok(pb::LossPointKind::NotReceived) => "never received".to_string(),
            Ok(pb::LossPointKind::Reported) => format!(
                "reported {}",
                pb::LossKind::try_from(l.loss_kind)
                    .map(|k| enum_name(k.as_str_name(), "LOSS_KIND_"))
                    .unwrap_or_default()
            ),
            Ok(k) => enum_name(k.as_str_name(), "LOSS_POINT_KIND_"),
            Err(_) => "unknown".into(),
        };
        let cat = pb::Category::try_from(l.category)
            .map(|c| enum_name(c.as_str_name(), "CATEGORY_"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  {:>3}. {:<16} {:>14} {} {} ({cat}) {} at {} site {}{} — {}; entries {}",
            l.rank,
            kind,
            thousands(l.quantity),
            unit(l.unit),
            l.substance,
            if l.lot.is_empty() {
                "all lots".to_string()
            } else {
                format!("lot {}", l.lot)
            },
            l.enterprise,
            l.site,
            if l.counterparty.is_empty() {
                String::new()
            } else {
                format!(" → {} site {}", l.counterparty, l.counterparty_site)
            },
            l.detail,
            l.entries
                .iter()
                .map(|e| e.index.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    for p in &r.patterns {
        let kind = pb::PatternKind::try_from(p.kind)
            .map(|k| enum_name(k.as_str_name(), "PATTERN_KIND_"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  pattern ({kind}): {} losses of {} at {}, {} in all",
            p.events,
            p.substance,
            p.subject,
            thousands(p.quantity)
        );
    }
    o
}

/// Prints an answer as JSON (proto3 mapping) or as the readable text `text` makes of it.
fn show<T: serde::Serialize>(json: bool, r: &T, text: fn(&T) -> String) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print!("{}", text(r));
    }
    Ok(ExitCode::SUCCESS)
}

/// 12345678 → "12,345,678".
pub fn thousands(n: u64) -> String {
    taizhang::audit::thousands(n.into())
}

/// Milliseconds since the epoch as `2026-12-01 09:54 UTC`.
pub fn when(ms: u64) -> String {
    if ms == 0 {
        return "—".into();
    }
    let fmt = time::format_description::parse_borrowed::<2>(
        "[year]-[month]-[day] [hour]:[minute]:[second]",
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .zip(fmt.ok())
        .and_then(|(t, f)| t.format(&f).ok())
        .map_or_else(|| format!("{ms} ms"), |s| format!("{s} UTC"))
}

fn unit(u: i32) -> &'static str {
    match pb::Unit::try_from(u) {
        Ok(pb::Unit::Milligram) => "mg",
        Ok(pb::Unit::Millilitre) => "ml",
        Ok(pb::Unit::Dose) => "doses",
        _ => "units",
    }
}

fn enum_name(full: &str, prefix: &str) -> String {
    full.trim_start_matches(prefix)
        .to_lowercase()
        .replace('_', " ")
}

fn state_name(s: i32) -> String {
    pb::PermitState::try_from(s)
        .map(|s| enum_name(s.as_str_name(), "PERMIT_STATE_"))
        .unwrap_or_else(|_| "unknown".into())
}

fn type_name(t: i32) -> String {
    pb::PermitType::try_from(t)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("PERMIT_TYPE_")
                .to_string()
        })
        .unwrap_or_else(|_| "UNKNOWN".into())
}

fn cite(r: &Option<pb::EntryRef>) -> String {
    match r {
        Some(e) => format!("{} ({}…)", e.index, &hex::encode(&e.leaf_hash)[..12]),
        None => "—".into(),
    }
}

pub fn reconciliation_text(r: &pb::PermitReconciliation) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let Some(p) = &r.permit else {
        return o;
    };
    let u = unit(p.unit);
    let v = p.validity.unwrap_or_default();
    let _ = writeln!(
        o,
        "Permit {}  {}  — {}   (as of {}, ledger size {})",
        p.permit_no,
        type_name(p.r#type),
        state_name(p.state),
        when(r.as_of_ms),
        r.ledger_size
    );
    let _ = writeln!(
        o,
        "  holder {}   counterparty {}   substance {}   jurisdiction {}",
        p.holder,
        if p.counterparty.is_empty() {
            "—"
        } else {
            &p.counterparty
        },
        p.substance,
        p.jurisdiction
    );
    let _ = writeln!(
        o,
        "  valid {} .. {}   single use: {}   issued by entry {}",
        when(v.not_before_ms),
        when(v.not_after_ms),
        if p.single_use { "yes" } else { "no" },
        cite(&p.issued_by)
    );
    let ceiling = if p.ceiling == 0 {
        "none".to_string()
    } else {
        format!("{} {u}", thousands(p.ceiling))
    };
    let _ = writeln!(
        o,
        "  ceiling {ceiling}   drawn {} {u}   received {} {u}   remaining {} {u}   void {} {u}",
        thousands(p.drawn),
        thousands(p.received),
        thousands(p.remaining),
        thousands(p.void)
    );
    if p.closed_by.is_some() {
        let _ = writeln!(
            o,
            "  closed by entry {}: {}",
            cite(&p.closed_by),
            p.closed_reason
        );
    }
    let _ = writeln!(o, "\n  Draw-downs ({}):", r.draw_downs.len());
    let _ = writeln!(
        o,
        "  {:<18} {:>14} {:<23} {:<28} {:<18} {:>14} {:>10}  status",
        "ship entry", "shipped", "at", "from → to", "receive entry", "received", "gap"
    );
    for d in &r.draw_downs {
        let status = pb::DrawStatus::try_from(d.status)
            .map(|s| enum_name(s.as_str_name(), "DRAW_STATUS_"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  {:<18} {:>14} {:<23} {:<28} {:<18} {:>14} {:>10}  {status}",
            cite(&d.ship),
            thousands(d.shipped),
            when(d.shipped_at_ms),
            format!("{} → {}", d.seller_site, d.consignee_site),
            cite(&d.receive),
            thousands(d.received),
            thousands(d.gap),
        );
    }
    let _ = writeln!(o, "\n  Mismatches ({}):", r.mismatches.len());
    for m in &r.mismatches {
        let kind = pb::MismatchKind::try_from(m.kind)
            .map(|k| {
                k.as_str_name()
                    .trim_start_matches("MISMATCH_KIND_")
                    .to_string()
            })
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  {kind:<26} ship {}  receive {}  shipped {} {u}  received {} {u}  gap {} {u}: {}",
            cite(&m.ship),
            cite(&m.receive),
            thousands(m.shipped),
            thousands(m.received),
            thousands(m.gap),
            m.detail
        );
    }
    o
}

pub fn trade_text(r: &pb::TradeReconciliation) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let Some(p) = &r.licence else {
        return o;
    };
    let u = unit(p.unit);
    let _ = writeln!(
        o,
        "Licence {}  {}  — {}   holder {}   substance {}   (as of {}, ledger size {})",
        p.permit_no,
        type_name(p.r#type),
        state_name(p.state),
        p.holder,
        p.substance,
        when(r.as_of_ms),
        r.ledger_size
    );
    let _ = writeln!(
        o,
        "  licensed {} {u}   declared {} {u}   cleared by customs {} {u}   endorsed abroad {} {u}",
        thousands(r.licensed),
        thousands(r.declared),
        thousands(r.cleared),
        thousands(r.endorsed)
    );
    let _ = writeln!(o, "\n  Movements ({}):", r.movements.len());
    for m in &r.movements {
        let _ = writeln!(
            o,
            "  {} {:<7} {:>14} {u}  {}  {} {}{}  customs {} {}  endorsement {} {}{}",
            cite(&m.entry),
            if m.export { "export" } else { "import" },
            thousands(m.declared),
            when(m.at_ms),
            m.country,
            m.counterparty,
            if m.pen_reference.is_empty() {
                String::new()
            } else {
                format!(" (PEN {})", m.pen_reference)
            },
            cite(&m.clearance),
            if m.clearance.is_some() {
                format!("{} {u}", thousands(m.cleared))
            } else {
                String::new()
            },
            cite(&m.endorsement),
            if m.endorsement.is_some() && !m.objection {
                format!("{} {u}", thousands(m.endorsed))
            } else {
                String::new()
            },
            if m.objection {
                format!("OBJECTION: {}", m.objection_reason)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(o, "\n  Exceptions ({}):", r.exceptions.len());
    for x in &r.exceptions {
        let kind = pb::TradeExceptionKind::try_from(x.kind)
            .map(|k| {
                k.as_str_name()
                    .trim_start_matches("TRADE_EXCEPTION_KIND_")
                    .to_string()
            })
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  {kind:<22} movement {}  counterpart {}: {}",
            cite(&x.movement),
            cite(&x.counterpart),
            x.detail
        );
    }
    o
}

pub fn list_text(r: &pb::ListPermitsResponse) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<22} {:<18} {:<19} {:<12} {:>14} {:>14} {:>14}  {:<15} issued by",
        "permit", "type", "holder", "substance", "ceiling", "drawn", "remaining", "state"
    );
    for p in &r.permits {
        let u = unit(p.unit);
        let _ = writeln!(
            o,
            "{:<22} {:<18} {:<19} {:<12} {:>14} {:>14} {:>14}  {:<15} {}",
            p.permit_no,
            type_name(p.r#type),
            p.holder,
            p.substance,
            if p.ceiling == 0 {
                "none".into()
            } else {
                format!("{} {u}", thousands(p.ceiling))
            },
            format!("{} {u}", thousands(p.drawn)),
            format!("{} {u}", thousands(p.remaining)),
            state_name(p.state),
            cite(&p.issued_by)
        );
    }
    if r.truncated {
        let _ = writeln!(o, "(more permits matched than listed)");
    }
    o
}
