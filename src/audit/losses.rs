//! Loss finding (流失追溯): every point where quantity disappears — a shipment received short
//! (in-transit gap), a shipment never received by its deadline, a count short of the book, a
//! reported theft, robbery, disappearance or spillage — ranked by category and quantity, each with
//! the entries that prove it; and repeated gaps at one holder, on one route or with one carrier,
//! or repeated count shortfalls at one site (a continuing pattern of small losses is significant).
//!
//! Destruction is not a loss (a witnessed event), nor is use. A count shortfall is measured
//! against the book at the moment of the count and only what is new since the previous count (if
//! that one's variance was never accepted) is reported, so one missing quantity is found once.

use super::balance::tolerance;
use super::trace::{self, Direction};
use super::{se, AuditConfig};
use crate::ledger::views::{
    self, key, CountedView, EnterpriseView, Event, Holding, JournalRow, LossView, ShipmentView,
    Stock,
};
use crate::ledger::Refusal;
use crate::model::ids::within;
use crate::model::Catalogue;
use crate::pb;
use crate::store::{Range, ViewRead};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Enterprise(String),
    Lot(String),
    /// A division code prefix ("" = national).
    Jurisdiction(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Received less than shipped.
    InTransitGap,
    /// Not received by its deadline.
    NotReceived,
    /// A signed count short of the book.
    CountShortfall,
    /// A loss report (`LossKind` value).
    Reported(i32),
}

impl Kind {
    pub fn name(self) -> String {
        match self {
            Kind::InTransitGap => "in-transit gap".into(),
            Kind::NotReceived => "never received".into(),
            Kind::CountShortfall => "count shortfall".into(),
            Kind::Reported(k) => format!(
                "reported {}",
                pb::LossKind::try_from(k)
                    .map(|k| k
                        .as_str_name()
                        .trim_start_matches("LOSS_KIND_")
                        .to_lowercase())
                    .unwrap_or_else(|_| "loss".into())
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub kind: Kind,
    pub substance: String,
    /// `Category` of the substance.
    pub category: i32,
    pub lot: String,
    /// Where it went missing: the holder (counts, reports) or the sender (shipments).
    pub enterprise: String,
    pub site: String,
    /// For shipments: the consignee and its site.
    pub counterparty: String,
    pub counterparty_site: String,
    pub carrier: String,
    pub quantity: u64,
    pub at_ms: u64,
    /// The entries that prove it (ship and receive; the count; the report).
    pub entries: Vec<u64>,
    pub detail: String,
    /// A correction that accepted a count's variance into the books (with its reason).
    pub explained_by: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PatternKind {
    /// Repeated in-transit gaps into one receiving site.
    Holder,
    /// Repeated in-transit gaps between one sender and one receiver.
    Route,
    /// Repeated in-transit gaps with one carrier.
    Carrier,
    /// Repeated count shortfalls at one site × substance.
    Counts,
}

impl PatternKind {
    pub fn name(self) -> &'static str {
        match self {
            PatternKind::Holder => "repeated gaps at one receiver",
            PatternKind::Route => "repeated gaps on one route",
            PatternKind::Carrier => "repeated gaps with one carrier",
            PatternKind::Counts => "repeated count shortfalls",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub kind: PatternKind,
    /// Who or what repeats (a site, a route `A → B`, a carrier).
    pub subject: String,
    pub substance: String,
    pub events: usize,
    pub quantity: u64,
    /// Indices into `Findings::losses`.
    pub losses: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings {
    pub losses: Vec<Loss>,
    pub patterns: Vec<Pattern>,
    pub as_of_ms: u64,
}

/// Ranks categories: 1 for category 1 precursors, narcotics and class I psychotropics; 2 for
/// category 2 and class II psychotropics; 3 for category 3.
pub fn severity(category: i32) -> u8 {
    use pb::Category::*;
    match pb::Category::try_from(category) {
        Ok(Precursor1 | Narcotic | Psychotropic1) => 1,
        Ok(Precursor2 | Psychotropic2) => 2,
        _ => 3,
    }
}

struct Finder<'a> {
    r: &'a dyn ViewRead,
    cfg: &'a AuditConfig,
    catalogue: &'a Catalogue,
    from_ms: u64,
    to_ms: u64,
    as_of_ms: u64,
    losses: Vec<Loss>,
}

impl Finder<'_> {
    fn category(&self, substance: &str) -> i32 {
        self.catalogue
            .get(substance)
            .map_or(0, |s| s.category as i32)
    }

    fn in_period(&self, at: u64) -> bool {
        at >= self.from_ms && at < self.to_ms
    }

    fn shipment(&mut self, s: &ShipmentView) {
        if !self.in_period(s.shipped_at_ms) {
            return;
        }
        let deadline = if s.expected_delivery_ms > 0 {
            s.expected_delivery_ms
        } else {
            s.shipped_at_ms.saturating_add(self.cfg.receipt_deadline_ms)
        };
        let (kind, quantity, entries, detail) = match &s.received {
            Some(rv) => {
                let gap = s.quantity.saturating_sub(rv.quantity);
                if gap == 0 || gap <= tolerance(self.cfg, &s.substance, s.quantity) {
                    return;
                }
                let mut entries = vec![s.ship_entry, rv.receive_entry];
                entries.extend(rv.corrected_by.iter().copied());
                (
                    Kind::InTransitGap,
                    gap,
                    entries,
                    format!(
                        "shipped {} (entry {}), received {} (entry {}): {gap} missing in transit",
                        s.quantity, s.ship_entry, rv.quantity, rv.receive_entry
                    ),
                )
            }
            None if self.as_of_ms > deadline => (
                Kind::NotReceived,
                s.quantity,
                vec![s.ship_entry],
                format!(
                    "shipped {} (entry {}), not received by its deadline ({} ms since the epoch)",
                    s.quantity, s.ship_entry, deadline
                ),
            ),
            None => return,
        };
        let mut entries = entries;
        entries.extend(s.legs.iter().map(|l| l.entry));
        let seals = if s.legs.iter().any(|l| l.seals_changed) {
            "; the seals changed in transit"
        } else {
            ""
        };
        self.losses.push(Loss {
            kind,
            substance: s.substance.clone(),
            category: self.category(&s.substance),
            lot: s.lot.clone(),
            enterprise: s.from_enterprise.clone(),
            site: s.from_site.clone(),
            counterparty: s.to_enterprise.clone(),
            counterparty_site: s.to_site.clone(),
            carrier: s.carrier.clone(),
            quantity,
            at_ms: s.shipped_at_ms,
            entries,
            detail: format!("{detail}{seals}"),
            explained_by: None,
        });
    }

    fn reported(
        &mut self,
        enterprise: &str,
        lots: Option<&BTreeSet<String>>,
    ) -> Result<(), Refusal> {
        for (k, v) in self.r.scan_prefix(&key::losses(enterprise)).map_err(se)? {
            let l: LossView = views::decode(&k, &v).map_err(se)?;
            if !self.in_period(l.at_ms) || l.quantity == 0 {
                continue;
            }
            if lots.is_some_and(|lots| !lots.contains(&l.lot)) {
                continue;
            }
            self.losses.push(Loss {
                kind: Kind::Reported(l.kind),
                category: self.category(&l.substance),
                substance: l.substance,
                lot: l.lot,
                enterprise: enterprise.to_string(),
                site: l.site,
                counterparty: String::new(),
                counterparty_site: String::new(),
                carrier: String::new(),
                quantity: l.quantity,
                at_ms: l.at_ms,
                entries: vec![l.entry],
                detail: format!("police report {}", l.police_report_ref),
                explained_by: None,
            });
        }
        Ok(())
    }

    /// Count shortfalls in the count rows under `prefix` (one holding's or one stock's).
    fn counts(
        &mut self,
        prefix: &[u8],
        enterprise: &str,
        site: &str,
        substance: &str,
        lot: &str,
    ) -> Result<(), Refusal> {
        let from = key::at(prefix, self.from_ms, 0);
        let to = key::at(prefix, self.to_ms, 0);
        let mut previous = self
            .r
            .range(&Range::backward(prefix, &from, 1))
            .map_err(se)?
            .into_iter()
            .next();
        let rows = self
            .r
            .range(&Range::forward(&from, &to, usize::MAX))
            .map_err(se)?;
        let mut carried = match previous.take() {
            Some((k, v)) => self.unaccepted_shortfall(&k, &v)?,
            None => 0,
        };
        for (k, v) in rows {
            let row: JournalRow = views::decode(&k, &v).map_err(se)?;
            let Event::Count { counted, book, .. } = row.event else {
                continue;
            };
            let shortfall = book.saturating_sub(counted);
            let accepted = self.accepted(row.entry)?;
            let new = shortfall.saturating_sub(carried);
            carried = if accepted.is_some() { 0 } else { shortfall };
            if new == 0 || shortfall <= tolerance(self.cfg, substance, book) {
                continue;
            }
            let mut entries = vec![row.entry];
            entries.extend(accepted);
            self.losses.push(Loss {
                kind: Kind::CountShortfall,
                substance: substance.to_string(),
                category: self.category(substance),
                lot: lot.to_string(),
                enterprise: enterprise.to_string(),
                site: site.to_string(),
                counterparty: String::new(),
                counterparty_site: String::new(),
                carrier: String::new(),
                quantity: new,
                at_ms: row.at_ms,
                entries,
                detail: format!(
                    "counted {counted} against a book of {book} (entry {}){}",
                    row.entry,
                    match accepted {
                        Some(c) => format!("; the variance was accepted by correction {c}"),
                        None => String::new(),
                    }
                ),
                explained_by: accepted,
            });
        }
        Ok(())
    }

    fn accepted(&self, count_entry: u64) -> Result<Option<u64>, Refusal> {
        Ok(match self.r.get(&key::counted(count_entry)).map_err(se)? {
            Some(b) => {
                views::decode::<CountedView>(b"ct/", &b)
                    .map_err(se)?
                    .accepted_by
            }
            None => None,
        })
    }

    fn unaccepted_shortfall(&self, k: &[u8], v: &[u8]) -> Result<u64, Refusal> {
        let row: JournalRow = views::decode(k, v).map_err(se)?;
        let Event::Count { counted, book, .. } = row.event else {
            return Ok(0);
        };
        Ok(if self.accepted(row.entry)?.is_some() {
            0
        } else {
            book.saturating_sub(counted)
        })
    }

    fn enterprise(&mut self, code: &str, seen: &mut BTreeSet<u64>) -> Result<(), Refusal> {
        for prefix in [key::shipments_from(code), key::shipments_to(code)] {
            for (k, _) in self.r.scan_prefix(&prefix).map_err(se)? {
                let Some(ship) = k
                    .get(prefix.len()..)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                else {
                    continue;
                };
                if !seen.insert(ship) {
                    continue;
                }
                if let Some(b) = self.r.get(&key::shipment(ship)).map_err(se)? {
                    let s: ShipmentView = views::decode(b"s/", &b).map_err(se)?;
                    self.shipment(&s);
                }
            }
        }
        self.reported(code, None)?;
        let prefix = key::enterprise_stocks(code);
        for (k, _) in self.r.scan_prefix(&prefix).map_err(se)? {
            let rest = &k[prefix.len()..];
            let mut parts = rest.split(|&c| c == 0);
            let (Some(site), Some(substance)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (site, substance) = (
                String::from_utf8_lossy(site).to_string(),
                String::from_utf8_lossy(substance).to_string(),
            );
            let stock = Stock {
                enterprise: code,
                site: &site,
                substance: &substance,
            };
            self.counts(&key::stock_counts(&stock), code, &site, &substance, "")?;
        }
        Ok(())
    }
}

/// Finds the losses in `scope` over `[from_ms, to_ms)`, judging deadlines at `as_of_ms`.
pub fn find(
    r: &dyn ViewRead,
    cfg: &AuditConfig,
    catalogue: &Catalogue,
    scope: &Scope,
    from_ms: u64,
    to_ms: u64,
    as_of_ms: u64,
) -> Result<Findings, Refusal> {
    let mut f = Finder {
        r,
        cfg,
        catalogue,
        from_ms,
        to_ms,
        as_of_ms,
        losses: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    match scope {
        Scope::Enterprise(code) => {
            if r.get(&key::enterprise(code)).map_err(se)?.is_none() {
                return Err(Refusal::not_found(format!(
                    "enterprise: `{code}` is not enrolled"
                )));
            }
            f.enterprise(code, &mut seen)?;
        }
        Scope::Jurisdiction(j) => {
            for (k, v) in r.scan_prefix(b"e/").map_err(se)? {
                let e: EnterpriseView = views::decode(&k, &v).map_err(se)?;
                if within(j, &e.jurisdiction) {
                    f.enterprise(&e.credit_code, &mut seen)?;
                }
            }
        }
        Scope::Lot(lot) => {
            let g = trace::trace(r, lot, Direction::Both, usize::MAX)?;
            for e in &g.edges {
                if let Some(b) = r.get(&key::shipment(e.ship_entry)).map_err(se)? {
                    let s: ShipmentView = views::decode(b"s/", &b).map_err(se)?;
                    f.shipment(&s);
                }
            }
            let lots: BTreeSet<String> = g.lots.iter().cloned().collect();
            let holders: BTreeSet<&str> = g.nodes.iter().map(|n| n.enterprise.as_str()).collect();
            for h in holders {
                f.reported(h, Some(&lots))?;
            }
            for n in &g.nodes {
                for l in &n.lots {
                    let h = Holding {
                        enterprise: &n.enterprise,
                        site: &n.site,
                        substance: &g.substance,
                        lot: l,
                    };
                    f.counts(
                        &key::lot_counts(&h),
                        &n.enterprise,
                        &n.site,
                        &g.substance,
                        l,
                    )?;
                }
            }
        }
    }
    let mut losses = f.losses;
    losses.sort_by(|a, b| {
        (
            severity(a.category),
            std::cmp::Reverse(a.quantity),
            a.entries.first(),
        )
            .cmp(&(
                severity(b.category),
                std::cmp::Reverse(b.quantity),
                b.entries.first(),
            ))
    });
    let patterns = patterns(cfg, &losses);
    Ok(Findings {
        losses,
        patterns,
        as_of_ms,
    })
}

fn patterns(cfg: &AuditConfig, losses: &[Loss]) -> Vec<Pattern> {
    let mut groups: BTreeMap<(PatternKind, String, String), Vec<usize>> = BTreeMap::new();
    for (i, l) in losses.iter().enumerate() {
        let mut add = |k: PatternKind, subject: String| {
            groups
                .entry((k, subject, l.substance.clone()))
                .or_default()
                .push(i)
        };
        match l.kind {
            Kind::InTransitGap => {
                add(
                    PatternKind::Holder,
                    format!("{} site {}", l.counterparty, l.counterparty_site),
                );
                add(
                    PatternKind::Route,
                    format!("{} → {}", l.enterprise, l.counterparty),
                );
                if !l.carrier.is_empty() {
                    add(PatternKind::Carrier, l.carrier.clone());
                }
            }
            Kind::CountShortfall => add(
                PatternKind::Counts,
                format!("{} site {}", l.enterprise, l.site),
            ),
            _ => {}
        }
    }
    let mut out: Vec<Pattern> = groups
        .into_iter()
        .filter(|(_, v)| v.len() >= cfg.pattern_min_events.max(2))
        .map(|((kind, subject, substance), v)| Pattern {
            kind,
            subject,
            substance,
            events: v.len(),
            quantity: v.iter().map(|&i| losses[i].quantity).sum(),
            losses: v,
        })
        .collect();
    out.sort_by(|a, b| b.events.cmp(&a.events).then(b.quantity.cmp(&a.quantity)));
    out
}
