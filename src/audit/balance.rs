//! Mass balance (账物相符): for a site × substance (or one lot of it) and a period,
//! opening + produced + received + imported − shipped − exported − consumed − destroyed − lost
//! (± accepted count variances) = expected closing, against the latest signed count.
//!
//! Every journal row carries the holding's running totals (`ledger::stock`), so the terms of a
//! period are the difference of two rows found by two backward seeks, and the latest count a
//! third: the answer costs the same at 10 entries or 10 million. The rows behind the terms are
//! listed up to a limit.

use super::{se, AuditConfig};
use crate::ledger::views::{self, key, Event, Holding, JournalOf, JournalRow, Stock, Term, Totals};
use crate::ledger::Refusal;
use crate::store::{Range, ViewRead};

/// What to balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub enterprise: String,
    pub site: String,
    pub substance: String,
    /// One lot, or all lots of the substance at the site.
    pub lot: Option<String>,
    /// The period `[from_ms, to_ms)`.
    pub from_ms: u64,
    pub to_ms: u64,
    /// At most this many rows listed behind the terms.
    pub limit: usize,
}

/// A row behind a term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub entry: u64,
    pub at_ms: u64,
    pub lot: String,
    pub term: Term,
    /// The change to the term (negative: a correction lowered it).
    pub quantity: i128,
    pub shipment: Option<u64>,
    /// The entry this row corrects, for a correction.
    pub corrects: Option<u64>,
}

/// The latest signed count in the period, against the book at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountFigure {
    pub entry: u64,
    pub at_ms: u64,
    pub counted: u64,
    pub book: u64,
    /// counted − book.
    pub variance: i128,
    pub inspector: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The count equals the book.
    Balanced,
    /// The count differs from the book by no more than the substance's tolerance.
    WithinTolerance,
    Shortfall,
    Surplus,
    /// No signed count in the period.
    NotCounted,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Balanced => "balanced",
            Status::WithinTolerance => "within tolerance",
            Status::Shortfall => "SHORTFALL",
            Status::Surplus => "SURPLUS",
            Status::NotCounted => "not counted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub query: Query,
    pub opening: u64,
    /// Each term's change over the period, in `Term::ALL` order.
    pub terms: Vec<(Term, i128)>,
    pub expected_closing: u64,
    pub count: Option<CountFigure>,
    /// Book movement after the count, up to the end of the period.
    pub after_count: i128,
    /// The tolerance applied to the count (base units).
    pub tolerance: u64,
    pub status: Status,
    pub postings: Vec<Posting>,
    /// More rows than `limit` lie behind the terms.
    pub truncated: bool,
}

fn last_before(
    r: &dyn ViewRead,
    prefix: &[u8],
    before: &[u8],
) -> Result<Option<JournalRow>, Refusal> {
    let rows = r.range(&Range::backward(prefix, before, 1)).map_err(se)?;
    rows.first()
        .map(|(k, v)| views::decode::<JournalRow>(k, v).map_err(se))
        .transpose()
}

/// The substance's count tolerance for a book of `book`: `ppm` parts per million of it.
pub fn tolerance(cfg: &AuditConfig, substance: &str, book: u64) -> u64 {
    let ppm = cfg.tolerance_ppm.get(substance).copied().unwrap_or(0) as u128;
    (book as u128 * ppm / 1_000_000) as u64
}

pub fn balance(r: &dyn ViewRead, cfg: &AuditConfig, q: Query) -> Result<Balance, Refusal> {
    if q.to_ms <= q.from_ms {
        return Err(Refusal::invalid(format!(
            "period: to_ms {} must be after from_ms {}",
            q.to_ms, q.from_ms
        )));
    }
    let (journal, counts) = match &q.lot {
        Some(lot) => {
            let h = Holding {
                enterprise: &q.enterprise,
                site: &q.site,
                substance: &q.substance,
                lot,
            };
            let counts = key::lot_counts(&h);
            (JournalOf::Holding(h), counts)
        }
        None => {
            let s = Stock {
                enterprise: &q.enterprise,
                site: &q.site,
                substance: &q.substance,
            };
            let counts = key::stock_counts(&s);
            (JournalOf::Stock(s), counts)
        }
    };
    let (from, to) = ((q.from_ms, 0), (q.to_ms, 0));
    let open = journal.last_before(r, from).map_err(se)?;
    let close = journal.last_before(r, to).map_err(se)?;
    if open.is_none()
        && close.is_none()
        && r.get(&key::enterprise(&q.enterprise))
            .map_err(se)?
            .is_none()
    {
        return Err(Refusal::not_found(format!(
            "enterprise: `{}` is not enrolled",
            q.enterprise
        )));
    }
    let t_open = open.as_ref().map(|r| r.totals).unwrap_or_default();
    let t_close = close.as_ref().map(|r| r.totals).unwrap_or(t_open);
    let terms: Vec<(Term, i128)> = Term::ALL
        .iter()
        .map(|&t| (t, t_close.get(t) as i128 - t_open.get(t) as i128))
        .collect();
    let opening = t_open.balance() as u64;
    let expected_closing = t_close.balance() as u64;
    let count = last_before(r, &counts, &key::at(&counts, q.to_ms, 0))?
        .filter(|row| row.at_ms >= q.from_ms)
        .and_then(|row| match row.event {
            Event::Count {
                counted,
                book,
                inspector,
            } => Some(CountFigure {
                entry: row.entry,
                at_ms: row.at_ms,
                counted,
                book,
                variance: counted as i128 - book as i128,
                inspector,
            }),
            _ => None,
        });
    let (status, tol, after_count) = match &count {
        None => (Status::NotCounted, 0, 0),
        Some(c) => {
            let tol = tolerance(cfg, &q.substance, c.book);
            let status = if c.variance == 0 {
                Status::Balanced
            } else if c.variance.unsigned_abs() <= tol as u128 {
                Status::WithinTolerance
            } else if c.variance < 0 {
                Status::Shortfall
            } else {
                Status::Surplus
            };
            (status, tol, expected_closing as i128 - c.book as i128)
        }
    };
    let rows = journal
        .rows(r, from, to, q.limit.saturating_add(1))
        .map_err(se)?;
    let truncated = rows.len() > q.limit;
    let mut postings = Vec::new();
    for row in rows.into_iter().take(q.limit) {
        match row.event {
            Event::Move {
                term,
                quantity,
                shipment,
            } => postings.push(Posting {
                entry: row.entry,
                at_ms: row.at_ms,
                lot: row.lot,
                term,
                quantity: quantity as i128,
                shipment,
                corrects: None,
            }),
            Event::Correct {
                term,
                corrects,
                delta,
            } => postings.push(Posting {
                entry: row.entry,
                at_ms: row.at_ms,
                lot: row.lot,
                term,
                quantity: delta as i128,
                shipment: None,
                corrects: Some(corrects),
            }),
            Event::Count { .. } => {}
        }
    }
    Ok(Balance {
        query: q,
        opening,
        terms,
        expected_closing,
        count,
        after_count,
        tolerance: tol,
        status,
        postings,
        truncated,
    })
}

/// The running totals of a lot holding now (for tracing and tests).
pub fn lot_totals(r: &dyn ViewRead, h: &Holding<'_>) -> Result<Totals, Refusal> {
    Ok(views::holding_totals(&|k| r.get(k), h)
        .map_err(se)?
        .unwrap_or_default())
}
