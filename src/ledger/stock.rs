//! The books (台账): every quantity that moves into or out of a holding is posted here, once per
//! holding per entry, to two journals — the lot's (`j/`) and the site × substance's (`js/`) —
//! each row carrying the running totals of every mass-balance term after it. A mass balance over
//! any period is then two seeks and a difference (`audit::balance`); nothing scans the log.
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
    // Where this holding's totals live: in the lot's view for its first holding (the one
    // being created, or the one it was created at), under `b/` for any other.
    let first: Option<LotView> = match creates {
        Some(lot) => Some(lot),
        None => v
            .get::<LotView>(&key::lot(h.lot))
            .map_err(se)?
            .filter(|l| l.is_first_holding(h)),
    };
    // A lot being created has no holding anywhere yet (its name was just found unused).
    let old_lot = match &first {
        Some(_) if creates_lot => {
            debug_assert!(matches!(v.get::<Totals>(&key::balance(h)), Ok(None)));
            None
        }
        Some(lot) => Some(lot.totals),
        None => v.get::<Totals>(&key::balance(h)).map_err(se)?,
    };
    let old_stock = v.get::<Totals>(&stock_key).map_err(se)?;
    let lot_new = changed(old_lot.unwrap_or_default(), &change, field, &|| {
        format!("lot `{}` at site `{}`", h.lot, h.site)
    })?;
    let stock_new = changed(old_stock.unwrap_or_default(), &change, field, &|| {
        format!("{} at site `{}`", h.substance, h.site)
    })?;
    let row = |totals: Totals| JournalRow {
        entry: ctx.index,
        at_ms: ctx.now_ms,
        lot: h.lot.to_string(),
        event: change.event(),
        totals,
    };
    let lot_write = match first {
        Some(lot) => (
            key::lot(h.lot),
            encode(&LotView {
                totals: lot_new,
                ..lot
            }),
        ),
        None => (key::balance(h), encode(&lot_new)),
    };
    let mut writes = vec![
        lot_write,
        (
            key::journal_row(h, ctx.now_ms, ctx.index),
            encode(&row(lot_new)),
        ),
        (stock_key, encode(&stock_new)),
        (
            key::stock_journal_row(&stock, ctx.now_ms, ctx.index),
            encode(&row(stock_new)),
        ),
    ];
    if old_lot.is_none() && !creates_lot {
        writes.push((key::lot_holding(h.lot, h.enterprise, h.site), Vec::new()));
    }
    if old_stock.is_none() {
        writes.push((key::enterprise_stock(&stock), Vec::new()));
    }
    Ok(Posting { writes })
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
    for c in counts {
        let h = Holding {
            enterprise,
            site,
            substance: c.substance,
            lot: c.lot,
        };
        let totals = v.totals(&h).map_err(se)?;
        let book = totals.balance() as u64;
        lots.push((c.substance.to_string(), c.lot.to_string(), c.quantity, book));
        let sum = per_substance.entry(c.substance).or_default();
        *sum = sum.checked_add(c.quantity).ok_or_else(|| {
            precondition(
                "counts",
                format!("the counts of {} overflow u64", c.substance),
            )
        })?;
        let row = encode(&JournalRow {
            entry: ctx.index,
            at_ms: ctx.now_ms,
            lot: c.lot.to_string(),
            event: Event::Count {
                counted: c.quantity,
                book,
                inspector,
            },
            totals,
        });
        writes.push((
            key::at(&key::lot_counts(&h), ctx.now_ms, ctx.index),
            row.clone(),
        ));
        writes.push((key::journal_row(&h, ctx.now_ms, ctx.index), row));
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
        let totals = v
            .get::<Totals>(&key::stock(&stock))
            .map_err(se)?
            .unwrap_or_default();
        let row = encode(&JournalRow {
            entry: ctx.index,
            at_ms: ctx.now_ms,
            lot: String::new(),
            event: Event::Count {
                counted,
                book: totals.balance() as u64,
                inspector,
            },
            totals,
        });
        writes.push((
            key::at(&key::stock_counts(&stock), ctx.now_ms, ctx.index),
            row.clone(),
        ));
        writes.push((key::stock_journal_row(&stock, ctx.now_ms, ctx.index), row));
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
