//! `taizhang report --out DIR`: the inspector's report as one self-contained HTML file (no
//! network, no scripts, no external fonts): permit reconciliation, the two-way import/export
//! checks, mass balance of every counted holding, the ranked losses with each lot's custody
//! picture (SVG), and an appendix of every entry cited (index, leaf hash, kind, signer), which
//! every figure links to. Labels are in Chinese and English.
//!
//! Everything comes from the audit service, asked with the caller's key (so the report shows
//! that key's scope), and from an export of the entries the key may read (names of enterprises,
//! which holdings were counted, and what each cited entry is).

use crate::cli_audit::Querier;
use anyhow::{anyhow, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;
use taizhang::crypto::KeyId;
use taizhang::model::Catalogue;
use taizhang::pb::{self, record_body::Payload};

pub struct Summary {
    pub losses: usize,
    pub entries_cited: usize,
}

/// What the export says about each entry the caller may read.
#[derive(Default)]
struct Book {
    names: BTreeMap<String, String>,
    key_enterprise: BTreeMap<KeyId, String>,
    key_name: BTreeMap<KeyId, String>,
    /// (enterprise, site, substance) counted at least once.
    counted: BTreeSet<(String, String, String)>,
}

fn decode(index: u64, leaf: &[u8]) -> Result<(KeyId, Option<Payload>)> {
    let leaf = taizhang::codec::Leaf::decode(leaf).map_err(|e| anyhow!("entry {index}: {e}"))?;
    let body =
        taizhang::codec::decode_body(&leaf.body).map_err(|e| anyhow!("entry {index}: {e}"))?;
    let signer = KeyId(body.signer.as_slice().try_into().unwrap_or([0; 16]));
    Ok((signer, body.payload))
}

impl Book {
    /// An entry's kind and who signed it, for the appendix.
    fn describe(&self, index: u64, leaf: &[u8]) -> Result<(&'static str, String)> {
        let (signer, p) = decode(index, leaf)?;
        let who = self
            .key_enterprise
            .get(&signer)
            .and_then(|c| self.names.get(c).cloned())
            .or_else(|| self.key_name.get(&signer).cloned())
            .unwrap_or_else(|| format!("key {signer}"));
        Ok((
            p.as_ref()
                .map_or("record", taizhang::ledger::rules::kind_name),
            who,
        ))
    }

    /// Learns names, keys and counted holdings from one entry (nothing per entry is kept, so
    /// the scan's memory does not grow with the ledger).
    fn add(&mut self, index: u64, leaf: &[u8]) -> Result<()> {
        let (signer, p) = decode(index, leaf)?;
        let Some(p) = p else {
            return Ok(());
        };
        match p {
            Payload::EnrolEnterprise(e) => {
                self.names.insert(e.credit_code, e.name);
            }
            Payload::RegisterKey(k) => {
                if let Ok(vk) =
                    taizhang::crypto::parse_public_key("register_key.public_key", &k.public_key)
                {
                    let id = KeyId::of(&vk);
                    if k.enterprise.is_empty() {
                        self.key_name.insert(id, k.holder);
                    } else {
                        self.key_enterprise.insert(id, k.enterprise);
                    }
                }
            }
            Payload::RegisterAuthority(a) => {
                if let Some(a) = a.authority {
                    if let Ok(vk) =
                        taizhang::crypto::parse_public_key("authority.public_key", &a.public_key)
                    {
                        self.key_name.insert(KeyId::of(&vk), a.name);
                    }
                }
            }
            Payload::StockTake(s) => {
                if let Some(e) = self.key_enterprise.get(&signer) {
                    for c in s.counts {
                        self.counted
                            .insert((e.clone(), s.site_id.clone(), c.substance));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn name(&self, code: &str) -> String {
        match self.names.get(code) {
            Some(n) => format!("{n} ({code})"),
            None => code.to_string(),
        }
    }
}

/// An SVG with nothing that could run or fetch: no script, event handlers, foreign objects,
/// links or external references.
fn inert_svg(svg: &str) -> bool {
    let lower = svg.to_ascii_lowercase();
    let banned = [
        "<script",
        "javascript:",
        "<foreignobject",
        "<iframe",
        "<use",
        "href=",
        "<image",
        "<a ",
        "<a>",
        "@import",
        "url(",
    ];
    svg.trim_start().starts_with("<svg")
        && !banned.iter().any(|b| lower.contains(b))
        && !lower
            .split(|c: char| c.is_whitespace())
            .any(|w| w.starts_with("on") && w.contains('='))
}

/// HTML text escaping.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

struct Cites<'a> {
    cited: &'a mut BTreeSet<u64>,
}

impl Cites<'_> {
    /// A link to the appendix row of the entry `r` cites.
    fn link(&mut self, r: Option<&pb::EntryRef>) -> String {
        match r {
            Some(r) => {
                self.cited.insert(r.index);
                format!(
                    r##"<a href="#e{0}" title="leaf {1}">#{0}</a>"##,
                    r.index,
                    hex::encode(&r.leaf_hash)
                )
            }
            None => "—".into(),
        }
    }
}

fn qty(unit: i32, n: u64) -> String {
    if unit == pb::Unit::Milligram as i32 || unit == 0 {
        crate::demo::qty(n)
    } else {
        format!("{} {}", crate::cli_audit::thousands(n), unit_suffix(unit))
    }
}

fn unit_suffix(unit: i32) -> &'static str {
    match pb::Unit::try_from(unit) {
        Ok(pb::Unit::Millilitre) => "ml",
        Ok(pb::Unit::Dose) => "doses",
        _ => "units",
    }
}

fn label(full: &str, prefix: &str) -> String {
    full.trim_start_matches(prefix)
        .to_lowercase()
        .replace('_', " ")
}

fn substance(cat: &Catalogue, id: &str) -> String {
    match cat.get(id) {
        Some(s) => format!("{} {} ({id})", s.name_zh, s.name_en),
        None => id.to_string(),
    }
}

const STYLE: &str = "body{font-family:'Noto Sans CJK SC','WenQuanYi Zen Hei','PingFang SC','Microsoft YaHei',sans-serif;margin:24px;color:#222;max-width:1200px}\
h1{font-size:22px}h2{font-size:18px;border-bottom:2px solid #34495e;padding-bottom:4px;margin-top:32px}\
table{border-collapse:collapse;width:100%;font-size:13px;margin:8px 0}th,td{border:1px solid #ccd;padding:4px 6px;text-align:left;vertical-align:top}\
th{background:#eef1f6}td.n{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#a0522d;font-weight:bold}\
.ok{color:#2e7d32}.card{display:inline-block;border:1px solid #ccd;padding:8px 14px;margin:4px;border-radius:4px}\
.card b{font-size:20px;display:block}.pic{border:1px solid #ccd;margin:8px 0;overflow:auto}.pic svg{max-width:100%;height:auto}code{font-size:12px}";

/// Writes `DIR/index.html` for `jurisdiction` ("" = all, national keys only).
pub async fn write(server: &str, q: &Querier, jurisdiction: &str, out: &Path) -> Result<Summary> {
    let cat = Catalogue::embedded();
    let mut l = pb::ledger_client::LedgerClient::new(q.channel(server).await?)
        .max_decoding_message_size(taizhang::api::MAX_MESSAGE_BYTES);
    let mut a = pb::audit_client::AuditClient::new(q.channel(server).await?)
        .max_decoding_message_size(taizhang::api::MAX_MESSAGE_BYTES);
    let st = |what: &str| {
        let what = what.to_string();
        move |s: tonic::Status| anyhow!("{what}: {:?}: {}", s.code(), s.message())
    };
    let cp = l
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .map_err(st("checkpoint"))?
        .into_inner();
    let mut book = Book::default();
    let mut stream = l
        .export_entries(pb::ExportEntriesRequest {
            from: 0,
            to: cp.size,
        })
        .await
        .map_err(st("export"))?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(st("export"))? {
        if !e.redacted {
            book.add(e.index, &e.leaf)?;
        }
    }
    let mut cited = BTreeSet::new();
    let mut c = Cites { cited: &mut cited };
    let mut h = String::new();
    let scope = if jurisdiction.is_empty() {
        "全国 national".to_string()
    } else {
        jurisdiction.to_string()
    };

    // Losses first: they are what an inspector acts on.
    let losses = a
        .find_losses(pb::FindLossesRequest {
            scope: Some(if jurisdiction.is_empty() {
                pb::find_losses_request::Scope::Jurisdiction(String::new())
            } else {
                pb::find_losses_request::Scope::Jurisdiction(jurisdiction.into())
            }),
            ..Default::default()
        })
        .await
        .map_err(st("losses"))?
        .into_inner();
    let mut sec = String::new();
    writeln!(sec, "<h2 id=\"losses\">流失追溯 · Losses, ranked</h2>")?;
    if losses.losses.is_empty() {
        writeln!(sec, "<p class=\"ok\">未发现流失 · no losses found</p>")?;
    } else {
        writeln!(sec, "<table><tr><th>#</th><th>类型 kind</th><th>物品 substance</th><th>数量 quantity</th><th>地点 where</th><th>批号 lot</th><th>时间 when</th><th>证据 entries</th></tr>")?;
        for x in &losses.losses {
            let k = if x.loss_kind != 0 {
                format!(
                    "reported {}",
                    label(
                        pb::LossKind::try_from(x.loss_kind)
                            .map(|k| k.as_str_name())
                            .unwrap_or(""),
                        "LOSS_KIND_"
                    )
                )
            } else {
                label(
                    pb::LossPointKind::try_from(x.kind)
                        .map(|k| k.as_str_name())
                        .unwrap_or(""),
                    "LOSS_POINT_KIND_",
                )
            };
            let wh = if x.counterparty.is_empty() {
                format!("{} / {}", book.name(&x.enterprise), x.site)
            } else {
                format!(
                    "{} → {}",
                    book.name(&x.enterprise),
                    book.name(&x.counterparty)
                )
            };
            let ev: Vec<String> = x.entries.iter().map(|e| c.link(Some(e))).collect();
            writeln!(
                sec,
                "<tr><td><a href=\"#loss-{r}\">{r}</a></td><td class=\"bad\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&k),
                esc(&substance(&cat, &x.substance)),
                qty(x.unit, x.quantity),
                esc(&wh),
                esc(&x.lot),
                crate::cli_audit::when(x.at_ms),
                ev.join(" "),
                r = x.rank
            )?;
        }
        writeln!(sec, "</table>")?;
        for x in &losses.losses {
            writeln!(
                sec,
                "<h3 id=\"loss-{}\">{}. 批号 lot {} — 流向图 custody picture</h3><p>{}</p>",
                x.rank,
                x.rank,
                esc(&x.lot),
                esc(&x.detail)
            )?;
            if x.lot.is_empty() {
                writeln!(sec, "<p>(不限批号 not one lot: the count covers the site's stock of the substance)</p>")?;
                continue;
            }
            match a
                .trace_lot(pb::TraceLotRequest {
                    lot: x.lot.clone(),
                    direction: pb::TraceDirection::Both as i32,
                    max_edges: 2_000,
                })
                .await
            {
                // The server's rendering (picture.rs escapes every text it holds). The report
                // trusts no server with script: anything active is refused here, and the page's
                // content security policy forbids script besides.
                Ok(t) => {
                    let svg = t.into_inner().svg;
                    if inert_svg(&svg) {
                        writeln!(sec, "<div class=\"pic\">{svg}</div>")?
                    } else {
                        writeln!(sec, "<p class=\"bad\">picture left out: the server's SVG holds active content</p>")?
                    }
                }
                Err(s) => writeln!(sec, "<p>trace: {}</p>", esc(s.message()))?,
            }
        }
    }
    for p in &losses.patterns {
        writeln!(
            sec,
            "<p class=\"bad\">模式 pattern: {} — {} ({} events, {})</p>",
            esc(&label(
                pb::PatternKind::try_from(p.kind)
                    .map(|k| k.as_str_name())
                    .unwrap_or(""),
                "PATTERN_KIND_"
            )),
            esc(&p.subject),
            p.events,
            crate::demo::qty(p.quantity)
        )?;
    }
    let loss_sec = sec;

    // Permits.
    let list = a
        .list_permits(pb::ListPermitsRequest {
            scope: Some(pb::list_permits_request::Scope::Jurisdiction(
                jurisdiction.into(),
            )),
            limit: 10_000,
            ..Default::default()
        })
        .await
        .map_err(st("permits"))?
        .into_inner();
    let mut sec = String::new();
    let mut mismatches = 0;
    let mut trade_rows = String::new();
    let mut trade_exceptions = 0;
    writeln!(
        sec,
        "<h2 id=\"permits\">许可证核销 · Permit reconciliation</h2>"
    )?;
    if list.truncated {
        writeln!(sec, "<p class=\"bad\">只列出前 {n} 个 · only the first {n} permits are listed: report on a narrower division code for all of them</p>", n = list.permits.len())?;
    }
    writeln!(sec, "<table><tr><th>编号 permit</th><th>类型 type</th><th>持有人 holder</th><th>物品 substance</th><th>限量 ceiling</th><th>已用 drawn</th><th>已收 received</th><th>剩余 remaining</th><th>状态 state</th><th>核销 draw-downs</th><th>不符 mismatches</th></tr>")?;
    for p in &list.permits {
        let t = pb::PermitType::try_from(p.r#type).unwrap_or(pb::PermitType::Unspecified);
        if matches!(
            t,
            pb::PermitType::ImportLicence | pb::PermitType::ExportLicence
        ) {
            let r = a
                .reconcile_import_export(pb::ReconcileImportExportRequest {
                    licence: Some(pb::reconcile_import_export_request::Licence::PermitNo(
                        p.permit_no.clone(),
                    )),
                    as_of_ms: 0,
                })
                .await
                .map_err(st(&p.permit_no))?
                .into_inner();
            let mut ex = String::new();
            for x in &r.exceptions {
                trade_exceptions += 1;
                write!(
                    ex,
                    "<div class=\"bad\">{} {} → {}: {}</div>",
                    esc(&label(
                        pb::TradeExceptionKind::try_from(x.kind)
                            .map(|k| k.as_str_name())
                            .unwrap_or(""),
                        "TRADE_EXCEPTION_KIND_"
                    )),
                    c.link(x.movement.as_ref()),
                    c.link(x.counterpart.as_ref()),
                    esc(&x.detail)
                )?;
            }
            if ex.is_empty() {
                ex = "<span class=\"ok\">相符 all agree</span>".into();
            }
            writeln!(
                trade_rows,
                "<tr><td>{} {}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(&p.permit_no),
                c.link(p.issued_by.as_ref()),
                esc(&label(t.as_str_name(), "PERMIT_TYPE_")),
                esc(&substance(&cat, &p.substance)),
                qty(p.unit, r.licensed),
                qty(p.unit, r.declared),
                qty(p.unit, r.cleared),
                qty(p.unit, r.endorsed),
                ex
            )?;
        }
        let mut mm = String::new();
        let trade = matches!(
            t,
            pb::PermitType::ImportLicence | pb::PermitType::ExportLicence
        );
        if p.draw_downs > 0 && !trade {
            let r = a
                .reconcile_permit(pb::ReconcilePermitRequest {
                    permit: Some(pb::reconcile_permit_request::Permit::PermitNo(
                        p.permit_no.clone(),
                    )),
                    as_of_ms: 0,
                })
                .await
                .map_err(st(&p.permit_no))?
                .into_inner();
            for m in &r.mismatches {
                mismatches += 1;
                write!(
                    mm,
                    "<div class=\"bad\">{}: {} {} / {} {}</div>",
                    esc(&label(
                        pb::MismatchKind::try_from(m.kind)
                            .map(|k| k.as_str_name())
                            .unwrap_or(""),
                        "MISMATCH_KIND_"
                    )),
                    qty(p.unit, m.shipped),
                    c.link(m.ship.as_ref()),
                    qty(p.unit, m.received),
                    c.link(m.receive.as_ref())
                )?;
            }
        }
        writeln!(
            sec,
            "<tr><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&p.permit_no),
            c.link(p.issued_by.as_ref()),
            esc(&label(t.as_str_name(), "PERMIT_TYPE_")),
            esc(&book.name(&p.holder)),
            esc(&substance(&cat, &p.substance)),
            if p.ceiling == 0 { "—".into() } else { qty(p.unit, p.ceiling) },
            qty(p.unit, p.drawn),
            qty(p.unit, p.received),
            qty(p.unit, p.remaining),
            esc(&label(pb::PermitState::try_from(p.state).map(|s| s.as_str_name()).unwrap_or(""), "PERMIT_STATE_")),
            p.draw_downs,
            mm
        )?;
    }
    writeln!(sec, "</table>")?;
    let permit_sec = sec;
    let mut trade_sec = String::new();
    writeln!(
        trade_sec,
        "<h2 id=\"trade\">进出口双向核查 · Import/export two-way checks</h2>"
    )?;
    writeln!(trade_sec, "<table><tr><th>许可证 licence</th><th>类型 type</th><th>物品 substance</th><th>许可 licensed</th><th>申报 declared</th><th>海关 cleared</th><th>境外确认 endorsed</th><th>核查 exceptions</th></tr>{trade_rows}</table>")?;

    // Mass balance of every counted holding.
    let mut sec = String::new();
    let mut off = 0;
    writeln!(
        sec,
        "<h2 id=\"balance\">账物相符 · Mass balance against the latest count</h2>"
    )?;
    writeln!(sec, "<table><tr><th>企业 enterprise</th><th>场所 site</th><th>物品 substance</th><th>期初 opening</th><th>账面 book at count</th><th>盘点 counted</th><th>差异 variance</th><th>状态 status</th><th>盘点记录 count entry</th></tr>")?;
    for (e, site, s) in &book.counted {
        let r = match a
            .mass_balance(pb::MassBalanceRequest {
                enterprise: e.clone(),
                site: site.clone(),
                substance: s.clone(),
                limit: 1,
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner(),
            // Out of this key's scope: the export showed the count, the books are not ours.
            Err(s) if s.code() == tonic::Code::PermissionDenied => continue,
            Err(s) => return Err(st("mass balance")(s)),
        };
        let status =
            pb::BalanceStatus::try_from(r.status).unwrap_or(pb::BalanceStatus::Unspecified);
        let cls = match status {
            pb::BalanceStatus::Balanced | pb::BalanceStatus::WithinTolerance => "ok",
            _ => {
                off += 1;
                "bad"
            }
        };
        let count = r.count.clone().unwrap_or_default();
        writeln!(
            sec,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"{cls}\">{}</td><td>{}</td></tr>",
            esc(&book.name(e)),
            esc(site),
            esc(&substance(&cat, s)),
            qty(r.unit, r.opening),
            qty(r.unit, count.book),
            qty(r.unit, count.counted),
            if count.variance < 0 { format!("−{}", qty(r.unit, count.variance.unsigned_abs())) } else { qty(r.unit, count.variance as u64) },
            esc(&label(status.as_str_name(), "BALANCE_STATUS_")),
            c.link(count.entry.as_ref())
        )?;
    }
    writeln!(sec, "</table>")?;
    let balance_sec = sec;

    // The appendix: every cited entry.
    let mut app = String::new();
    writeln!(app, "<h2 id=\"entries\">证据条目 · Entries cited</h2><p>每一条都可以用 <code>taizhang verify</code> 对照检查点离线核验 · each can be checked offline against the checkpoint with <code>taizhang verify</code>.</p>")?;
    writeln!(app, "<table><tr><th>序号 index</th><th>叶哈希 leaf hash (BLAKE3)</th><th>类型 kind</th><th>签署 signed by</th></tr>")?;
    for &i in cited.iter() {
        let e = l
            .get_entry(pb::GetEntryRequest { index: i })
            .await
            .ok()
            .map(|e| e.into_inner())
            .filter(|e| !e.redacted);
        match e {
            Some(e) => {
                let (k, who) = book.describe(i, &e.leaf)?;
                writeln!(
                    app,
                    "<tr id=\"e{i}\"><td class=\"n\">{i}</td><td><code>{}</code></td><td>{k}</td><td>{}</td></tr>",
                    hex::encode(&e.leaf_hash),
                    esc(&who)
                )?
            }
            None => writeln!(
                app,
                "<tr id=\"e{i}\"><td class=\"n\">{i}</td><td colspan=\"3\">outside this key's scope</td></tr>"
            )?,
        }
    }
    writeln!(app, "</table>")?;

    let root = cp.note.lines().nth(2).unwrap_or_default().to_string();
    writeln!(h, "<!DOCTYPE html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\"><title>台账稽查报告 · Taizhang inspection report</title><style>{STYLE}</style></head><body>")?;
    writeln!(h, "<h1>台账稽查报告 · Taizhang inspection report</h1>")?;
    writeln!(
        h,
        "<p>账本 ledger <code>{}</code> · 范围 scope <b>{}</b> · 检查点 checkpoint size {} root <code>{}</code> · 生成 generated {}</p>",
        esc(&cp.origin),
        esc(&scope),
        cp.size,
        esc(&root),
        crate::cli_audit::when(crate::cli::now_ms())
    )?;
    writeln!(
        h,
        "<div><span class=\"card\"><b>{}</b>流失 losses</span><span class=\"card\"><b>{}</b>核销不符 permit mismatches</span><span class=\"card\"><b>{}</b>进出口异常 trade exceptions</span><span class=\"card\"><b>{}</b>账物不符 holdings off balance</span><span class=\"card\"><b>{}</b>许可证 permits</span></div>",
        losses.losses.len(),
        mismatches,
        trade_exceptions,
        off,
        list.permits.len()
    )?;
    writeln!(h, "<p><a href=\"#losses\">流失 losses</a> · <a href=\"#permits\">核销 permits</a> · <a href=\"#trade\">进出口 trade</a> · <a href=\"#balance\">账物 balance</a> · <a href=\"#entries\">证据 entries</a></p>")?;
    h.push_str(&loss_sec);
    h.push_str(&permit_sec);
    h.push_str(&trade_sec);
    h.push_str(&balance_sec);
    h.push_str(&app);
    writeln!(
        h,
        "<h2>检查点 · Checkpoint</h2><pre>{}</pre></body></html>",
        esc(&cp.note)
    )?;
    std::fs::create_dir_all(out).with_context(|| format!("--out {}", out.display()))?;
    let path = out.join("index.html");
    std::fs::write(&path, h).with_context(|| format!("writing {}", path.display()))?;
    Ok(Summary {
        losses: losses.losses.len(),
        entries_cited: cited.len(),
    })
}
