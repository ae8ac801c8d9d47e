//! Reports an enterprise owes, from its own entries: the sales report to public security
//! (category 1 precursors within 5 days of the sale, categories 2 and 3 within 30;
//! REGULATIONS.md), each sale citing its `Ship` entry so the regulator can check it against the
//! ledger.

use super::se;
use crate::ledger::views::{self, key, EnterpriseView, PermitView, ShipmentView};
use crate::ledger::Refusal;
use crate::model::Catalogue;
use crate::pb;
use crate::store::ViewRead;

/// Days to report a sale: category 1 precursors, and the others.
pub const CATEGORY1_DAYS: u64 = 5;
pub const OTHER_DAYS: u64 = 30;
const DAY_MS: u64 = 86_400_000;

/// One sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    pub shipment: ShipmentView,
    /// `pb::Category`.
    pub category: i32,
    pub buyer_name: String,
    /// The permit numbers it drew on (purchase permit, transport permit).
    pub permit_nos: Vec<String>,
    /// When public security must have it.
    pub due_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalesReport {
    pub enterprise: String,
    pub name: String,
    pub sales: Vec<Sale>,
    /// The earliest deadline among the sales (0 when none).
    pub due_ms: u64,
    /// Shipments in the period not reportable here: between the enterprise's own sites, or of
    /// controlled drugs (reported through the drug regulator's monitoring network instead).
    pub excluded: usize,
}

/// The precursor sales of `enterprise` shipped in `[from_ms, to_ms)`.
pub fn sales(
    r: &dyn ViewRead,
    catalogue: &Catalogue,
    enterprise: &str,
    from_ms: u64,
    to_ms: u64,
) -> Result<SalesReport, Refusal> {
    let e: EnterpriseView = match r.get(&key::enterprise(enterprise)).map_err(se)? {
        Some(b) => views::decode(b"e/", &b).map_err(se)?,
        None => {
            return Err(Refusal::not_found(format!(
                "enterprise: `{enterprise}` is not enrolled"
            )))
        }
    };
    let prefix = key::shipments_from(enterprise);
    let mut out = SalesReport {
        enterprise: enterprise.to_string(),
        name: e.name,
        sales: Vec::new(),
        due_ms: 0,
        excluded: 0,
    };
    let name_of = |code: &str| -> Result<String, Refusal> {
        Ok(match r.get(&key::enterprise(code)).map_err(se)? {
            Some(b) => views::decode::<EnterpriseView>(b"e/", &b).map_err(se)?.name,
            None => String::new(),
        })
    };
    for (k, _) in r.scan_prefix(&prefix).map_err(se)? {
        let Some(ship) = k
            .get(prefix.len()..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            continue;
        };
        let Some(b) = r.get(&key::shipment(ship)).map_err(se)? else {
            continue;
        };
        let s: ShipmentView = views::decode(b"s/", &b).map_err(se)?;
        if s.shipped_at_ms < from_ms || s.shipped_at_ms >= to_ms {
            continue;
        }
        let category = catalogue.get(&s.substance).map_or(0, |x| x.category as i32);
        use pb::Category as C;
        let days = match C::try_from(category) {
            Ok(C::Precursor1) => CATEGORY1_DAYS,
            Ok(C::Precursor2 | C::Precursor3) => OTHER_DAYS,
            _ => 0,
        };
        if days == 0 || s.to_enterprise == enterprise {
            out.excluded += 1;
            continue;
        }
        let mut permit_nos = Vec::new();
        for p in &s.permits {
            if let Some(b) = r.get(&key::permit(*p)).map_err(se)? {
                permit_nos.push(
                    views::decode::<PermitView>(b"p/", &b)
                        .map_err(se)?
                        .permit_no,
                );
            }
        }
        let due_ms = s.shipped_at_ms + days * DAY_MS;
        out.due_ms = if out.due_ms == 0 {
            due_ms
        } else {
            out.due_ms.min(due_ms)
        };
        out.sales.push(Sale {
            buyer_name: name_of(&s.to_enterprise)?,
            shipment: s,
            category,
            permit_nos,
            due_ms,
        });
    }
    Ok(out)
}

/// China Standard Time (UTC+8), in which the reporting year runs.
const CST_OFFSET_MS: i64 = 8 * 3_600_000;

/// Midnight (UTC+8) at the start of `month`/`day` of `year`, in ms since the epoch.
fn cst_midnight_ms(year: i32, month: time::Month, day: u8) -> Result<u64, Refusal> {
    let date = time::Date::from_calendar_date(year, month, day)
        .map_err(|e| Refusal::invalid(format!("year: {year}: {e}")))?;
    let utc_ms = date.midnight().assume_utc().unix_timestamp() * 1000;
    u64::try_from(utc_ms - CST_OFFSET_MS)
        .map_err(|_| Refusal::invalid(format!("year: {year} is before 1970")))
}

/// The reporting year `[from_ms, to_ms)` and the day the report is due (the end of 31 March of
/// the next year), all in China Standard Time.
pub fn annual_period(year: u32) -> Result<(u64, u64, u64), Refusal> {
    if !(1971..=9998).contains(&year) {
        return Err(Refusal::invalid(format!(
            "year: {year} is not a reporting year (1971–9998)"
        )));
    }
    let y = year as i32;
    let from = cst_midnight_ms(y, time::Month::January, 1)?;
    let to = cst_midnight_ms(y + 1, time::Month::January, 1)?;
    let due = cst_midnight_ms(y + 1, time::Month::April, 1)?;
    Ok((from, to, due))
}

/// The annual report of one enterprise: which of its stocks (site × substance) it owes it for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnualStocks {
    pub name: String,
    /// Precursor stocks (categories 1–3), by site then substance.
    pub stocks: Vec<(String, String)>,
    /// Stocks of controlled drugs, reported through the drug regulator's channels instead.
    pub excluded: usize,
}

/// Every stock the enterprise has ever held (the `es/` index), split into what the annual
/// precursor report covers and what it does not.
pub fn annual_stocks(
    r: &dyn ViewRead,
    catalogue: &Catalogue,
    enterprise: &str,
) -> Result<AnnualStocks, Refusal> {
    let e: EnterpriseView = match r.get(&key::enterprise(enterprise)).map_err(se)? {
        Some(b) => views::decode(b"e/", &b).map_err(se)?,
        None => {
            return Err(Refusal::not_found(format!(
                "enterprise: `{enterprise}` is not enrolled"
            )))
        }
    };
    let prefix = key::enterprise_stocks(enterprise);
    let mut out = AnnualStocks {
        name: e.name,
        stocks: Vec::new(),
        excluded: 0,
    };
    for (k, _) in r.scan_prefix(&prefix).map_err(se)? {
        let rest = k.get(prefix.len()..).unwrap_or_default();
        let mut parts = rest.split(|&b| b == 0);
        let (Some(site), Some(substance)) = (parts.next(), parts.next()) else {
            return Err(se(crate::store::StoreError::Views(format!(
                "malformed stock index key {}; reindex the views",
                hex::encode(&k)
            ))));
        };
        let site = String::from_utf8_lossy(site).into_owned();
        let substance = String::from_utf8_lossy(substance).into_owned();
        use pb::Category as C;
        match catalogue.get(&substance).map(|s| s.category) {
            Some(C::Precursor1 | C::Precursor2 | C::Precursor3) => {
                out.stocks.push((site, substance))
            }
            _ => out.excluded += 1,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reporting_year_runs_in_china_standard_time_and_is_due_on_31_march() {
        let (from, to, due) = annual_period(2026).unwrap();
        // 2026-01-01T00:00+08:00 = 2025-12-31T16:00Z; 2027-01-01T00:00+08:00; 2027-04-01T00:00+08:00.
        assert_eq!(from, 1_767_196_800_000);
        assert_eq!(to, 1_798_732_800_000);
        assert_eq!(due, 1_806_508_800_000);
        assert_eq!(to - from, 365 * 86_400_000);
        // A leap year is a day longer; the due day is the end of 31 March (90 days after Jan 1
        // in a common year).
        let (f, t, d) = annual_period(2028).unwrap();
        assert_eq!(t - f, 366 * 86_400_000);
        assert_eq!(d - t, 90 * 86_400_000);
        for bad in [0, 1969, 1970, 9999] {
            let e = annual_period(bad).unwrap_err();
            assert!(e.message.contains("year:"), "{}", e.message);
        }
    }
}
