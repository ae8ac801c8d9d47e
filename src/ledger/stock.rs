//! The books (台账): every quantity that moves into or out of a holding is posted here, once per
//! holding per entry, to two journals — the lot's and the site × substance's — each row carrying
//! the running totals of every mass-balance term after it. A journal's first rows ride in its
//! book (`b/`, `bs/`, or the lot's view for its first holding), the rest in blocks (`j/`, `js/`;
//! see `views::Journal`). A mass balance over any period is then two seeks and a difference
//! (`audit::balance`); nothing scans the log.
//!
//! Like every rule, a posting is checked in full (`prepare`) before anything is written
//! (`Posting::write`), so a refused record changes nothing.

use super::error::Refusal;
use super::rules::{precondition, se, Ctx};
use super::views::*;

/// A change to one term of a holding.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change {
    /// A movement adds `quantity` to `term`.
    Move {
        term: Term,
        quantity: u64,
        shipment: Option<u64>,
    },
    /// A correction of entry `corrects` changes `term` by `delta`.
    Correct {
        term: Term,
        corrects: u64,
        delta: i64,
    },
}

impl Change {
    fn term(&self) -> Term {
        match *self {
            Change::Move { term, .. } | Change::Correct { term, .. } => term,
        }
    }
    fn event(&self) -> Event {
        match *self {
            Change::Move {
                term,
                quantity,
                shipment,
            } => Event::Move {
                term,
                quantity,
                shipment,
            },
            Change::Correct {
                term,
                corrects,
                delta,
            } => Event::Correct {
                term,
                corrects,
                delta,
            },
        }
    }
    /// The signed change to the term's running total.
    fn delta(&self) -> i128 {
        match *self {
            Change::Move { quantity, .. } => quantity as i128,
            Change::Correct { delta, .. } => delta as i128,
        }
    }
}

/// A checked posting, ready to write.
pub(super) struct Posting {
    writes: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Posting {
    pub fn write(self, v: &mut Views<'_>) {
        for (k, val) in self.writes {
            v.put_raw(k, val);
        }
    }
}

fn changed(
    old: Totals,
    change: &Change,
    field: &str,
    what: &dyn Fn() -> String,
) -> Result<Totals, Refusal> {
    let term = change.term();
    let bal = old.balance();
    let effect = if term.inflow() {
        change.delta()
    } else {
        -change.delta()
    };
    let after = bal + effect;
    if after < 0 {
        return Err(precondition(
            field,
            format!(
                "{} exceeds book stock {bal} of {}; book stock may not go negative",
                -effect,
                what()
            ),
        ));
    }
    if after > u64::MAX as i128 {
        return Err(precondition(
            field,
            format!("book stock of {} would overflow u64", what()),
        ));
    }
    let mut new = old;
    let t = new.get_mut(term);
    *t = u128::try_from(*t as i128 + change.delta()).map_err(|_| {
        precondition(
            field,
            format!(
                "the running total {} of {} would leave u128",
                term.name(),
                what()
            ),
        )
    })?;
    Ok(new)
}

/// Checks `change` to holding `h` at entry `ctx.index` and prepares its rows: the lot's totals
/// and journal, the site × substance's totals and journal, and the indexes of where a lot is
/// held and what an enterprise stocks.
pub(super) fn prepare(
    ctx: &Ctx<'_>,
    v: &Views<'_>,
    h: &Holding<'_>,
    change: Change,
    field: &str,
) -> Result<Posting, Refusal> {
    prepare_at(ctx, v, h, change, field, None)
}

/// `prepare` for the posting that creates lot `h.lot` at `h`, described by `lot`: the posting
/// writes the lot's view, which names this holding (so the holdings index `lh/` need not) and
/// keeps its totals.
pub(super) fn prepare_new_lot(
    ctx: &Ctx<'_>,
    v: &Views<'_>,
    h: &Holding<'_>,
    change: Change,
    field: &str,
    lot: LotView,
) -> Result<Posting, Refusal> {
    debug_assert!(lot.is_first_holding(h));
    prepare_at(ctx, v, h, change, field, Some(lot))
}

fn prepare_at(
    ctx: &Ctx<'_>,
    v: &Views<'_>,
    h: &Holding<'_>,
    change: Change,
    field: &str,
    creates: Option<LotView>,
) -> Result<Posting, Refusal> {
    let creates_lot = creates.is_some();
    let stock = Stock {
        enterprise: h.enterprise,
        site: h.site,
        substance: h.substance,
    };
    let stock_key = key::stock(&stock);
    // A lot being created has no holding anywhere yet (its name was just found unused).
    debug_assert!(!creates_lot || matches!(v.get::<Book>(&key::balance(h)), Ok(None)));
    let (first, mut lot_book) = holding_book(v, h, creates)?;
    let mut stock_book = v.get::<Book>(&stock_key).map_err(se)?.unwrap_or_default();
    lot_book.totals = changed(lot_book.totals, &change, field, &|| {
        format!("lot `{}` at site `{}`", h.lot, h.site)
    })?;
    stock_book.totals = changed(stock_book.totals, &change, field, &|| {
        format!("{} at site `{}`", h.substance, h.site)
    })?;
    let row = |totals: Totals| JournalRow {
        entry: ctx.index,
        at_ms: ctx.now_ms,
        lot: h.lot.to_string(),
        event: change.event(),
        totals,
    };
    let get = |k: &[u8]| v.raw_get(k);
    let mut writes = Vec::with_capacity(4);
    writes.extend(
        lot_book
            .journal
            .push(&key::journal(h), &row(lot_book.totals), &get)
            .map_err(se)?,
    );
    writes.extend(
        stock_book
            .journal
            .push(&key::stock_journal(&stock), &row(stock_book.totals), &get)
            .map_err(se)?,
    );
    if first.is_none() && !lot_book.listed {
        lot_book.listed = true;
        writes.push((key::lot_holding(h.lot, h.enterprise, h.site), Vec::new()));
    }
    if !stock_book.listed {
        stock_book.listed = true;
        writes.push((key::enterprise_stock(&stock), Vec::new()));
    }
    writes.push(book_write(h, first, lot_book));
    writes.push((stock_key, encode(&stock_book)));
    Ok(Posting { writes })
}

/// Holding `h`'s book, and the lot's view that keeps it if `h` is the lot's first holding:
/// `creates` for a lot being created, else the lot's view as it stands.
fn holding_book(
    v: &Views<'_>,
    h: &Holding<'_>,
    creates: Option<LotView>,
) -> Result<(Option<LotView>, Book), Refusal> {
    let first = match creates {
        Some(lot) => Some(lot),
        None => v
            .get::<LotView>(&key::lot(h.lot))
            .map_err(se)?
            .filter(|l| l.is_first_holding(h)),
    };
    let book = match &first {
        Some(lot) => lot.book.clone(),
        None => v
            .get::<Book>(&key::balance(h))
            .map_err(se)?
            .unwrap_or_default(),
    };
    Ok((first, book))
}

/// The write that keeps holding `h`'s `book`: its lot's view `first` if it is the lot's first
/// holding, else its own key.
fn book_write(h: &Holding<'_>, first: Option<LotView>, book: Book) -> (Vec<u8>, Vec<u8>) {
    match first {
        Some(lot) => (key::lot(h.lot), encode(&LotView { book, ..lot })),
        None => (key::balance(h), encode(&book)),
    }
}

/// One counted lot.
pub(super) struct Counted<'a> {
    pub substance: &'a str,
    pub lot: &'a str,
    pub quantity: u64,
}

/// Records a signed physical count of `site` (all of it for each substance counted: a lot of a
/// counted substance that the count omits is counted as zero in the substance's row), against
/// the book at this moment.
pub(super) fn count(
    ctx: &Ctx<'_>,
    v: &mut Views<'_>,
    enterprise: &str,
    site: &str,
    counts: &[Counted<'_>],
    inspector: bool,
) -> Result<(), Refusal> {
    let mut lots = Vec::with_capacity(counts.len());
    let mut writes = Vec::new();
    let mut per_substance: std::collections::BTreeMap<&str, u64> = Default::default();
    let get = |k: &[u8]| v.raw_get(k);
    for c in counts {
        let h = Holding {
            enterprise,
            site,
            substance: c.substance,
            lot: c.lot,
        };
        let (first, mut book) = holding_book(v, &h, None)?;
        let totals = book.totals;
        let book_qty = totals.balance() as u64;
        lots.push((
            c.substance.to_string(),
            c.lot.to_string(),
            c.quantity,
            book_qty,
        ));
        let sum = per_substance.entry(c.substance).or_default();
        *sum = sum.checked_add(c.quantity).ok_or_else(|| {
            precondition(
                "counts",
                format!("the counts of {} overflow u64", c.substance),
            )
        })?;
        let row = JournalRow {
            entry: ctx.index,
            at_ms: ctx.now_ms,
            lot: c.lot.to_string(),
            event: Event::Count {
                counted: c.quantity,
                book: book_qty,
                inspector,
            },
            totals,
        };
        writes.push((
            key::at(&key::lot_counts(&h), ctx.now_ms, ctx.index),
            encode(&row),
        ));
        writes.extend(
            book.journal
                .push(&key::journal(&h), &row, &get)
                .map_err(se)?,
        );
        writes.push(book_write(&h, first, book));
        if !inspector {
            writes.push((
                key::count(&h),
                encode(&CountView {
                    quantity: c.quantity,
                    entry: ctx.index,
                    at_ms: ctx.now_ms,
                }),
            ));
        }
    }
    for (substance, counted) in per_substance {
        let stock = Stock {
            enterprise,
            site,
            substance,
        };
        let stock_key = key::stock(&stock);
        let mut book = v.get::<Book>(&stock_key).map_err(se)?.unwrap_or_default();
        let row = JournalRow {
            entry: ctx.index,
            at_ms: ctx.now_ms,
            lot: String::new(),
            event: Event::Count {
                counted,
                book: book.totals.balance() as u64,
                inspector,
            },
            totals: book.totals,
        };
        writes.push((
            key::at(&key::stock_counts(&stock), ctx.now_ms, ctx.index),
            encode(&row),
        ));
        writes.extend(
            book.journal
                .push(&key::stock_journal(&stock), &row, &get)
                .map_err(se)?,
        );
        writes.push((stock_key, encode(&book)));
    }
    for (k, val) in writes {
        v.put_raw(k, val);
    }
    v.put(
        key::counted(ctx.index),
        &CountedView {
            enterprise: enterprise.to_string(),
            site: site.to_string(),
            at_ms: ctx.now_ms,
            inspector,
            lots,
            accepted_by: None,
        },
    );
    Ok(())
}
