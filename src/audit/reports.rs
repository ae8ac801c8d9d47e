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
