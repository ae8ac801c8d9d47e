//! Lot tracing (追溯): the custody graph of a lot — forward, where it went; backward, where it
//! came from. Nodes are holdings (enterprise × site); edges are shipments with what was shipped
//! and what was received; what left custody otherwise (consumed, destroyed, lost, exported)
//! is a figure of the node it left. A lot that is re-lotted on receipt is followed under its new
//! id; a lot merged into a receiver's lot is followed into that lot (whose other inputs then
//! appear as its backward side only when tracing backward from it).
//!
//! Reads: per lot, the holdings index `lh/` and each holding's journal (its book and `j/`); per shipment, its
//! view. Nothing scans the log.

use super::se;
use crate::ledger::views::{self, key, Event, Holding, JournalOf, LotView, ShipmentView, Term};
use crate::ledger::Refusal;
use crate::store::ViewRead;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
    Both,
}

/// A holding in the graph, with what the traced lots did there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    pub enterprise: String,
    pub site: String,
    pub name: String,
    /// Traced lots held here.
    pub lots: Vec<String>,
    /// Running totals of the traced lots here, by term name.
    pub figures: BTreeMap<&'static str, u128>,
    /// Book stock of the traced lots here now.
    pub on_hand: u64,
    /// Entries behind the figures (production, use, destruction, losses, exports).
    pub entries: Vec<u64>,
}

/// A shipment between two holdings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Edge {
    pub ship_entry: u64,
    pub from: usize,
    pub to: usize,
    pub lot: String,
    pub shipped: u64,
    pub shipped_at_ms: u64,
    pub receive_entry: Option<u64>,
    /// The lot it was received into.
    pub received_lot: Option<String>,
    pub received: Option<u64>,
    pub received_at_ms: Option<u64>,
    /// Shipped − received (everything, while not received).
    pub missing: u64,
    pub carrier: String,
    /// Leg entries (pickup, handovers, delivery).
    pub legs: Vec<u64>,
    pub seals_changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Graph {
    pub lot: String,
    pub substance: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Lots followed (the start, and what it was re-lotted or merged into, or came from).
    pub lots: Vec<String>,
    /// The edge limit cut the graph short.
    pub truncated: bool,
}

struct Builder<'r> {
    r: &'r dyn ViewRead,
    nodes: Vec<Node>,
    index: BTreeMap<(String, String), usize>,
    edges: BTreeMap<u64, Edge>,
    names: BTreeMap<String, String>,
}

impl Builder<'_> {
    fn node(&mut self, enterprise: &str, site: &str) -> Result<usize, Refusal> {
        if let Some(&i) = self.index.get(&(enterprise.to_string(), site.to_string())) {
            return Ok(i);
        }
        let name = match self.names.get(enterprise) {
            Some(n) => n.clone(),
            None => {
                let n = match self.r.get(&key::enterprise(enterprise)).map_err(se)? {
                    Some(b) => {
                        views::decode::<views::EnterpriseView>(b"e/", &b)
                            .map_err(se)?
                            .name
                    }
                    None => String::new(),
                };
                self.names.insert(enterprise.to_string(), n.clone());
                n
            }
        };
        self.nodes.push(Node {
            enterprise: enterprise.to_string(),
            site: site.to_string(),
            name,
            lots: vec![],
            figures: BTreeMap::new(),
            on_hand: 0,
            entries: vec![],
        });
        let i = self.nodes.len() - 1;
        self.index
            .insert((enterprise.to_string(), site.to_string()), i);
        Ok(i)
    }

    fn shipment(&self, ship: u64) -> Result<ShipmentView, Refusal> {
        let b = self
            .r
            .get(&key::shipment(ship))
            .map_err(se)?
            .ok_or_else(|| {
                Refusal::internal(format!("journal cites shipment {ship} without a view"))
            })?;
        views::decode(b"s/", &b).map_err(se)
    }

    fn edge(&mut self, s: &ShipmentView) -> Result<(), Refusal> {
        if self.edges.contains_key(&s.ship_entry) {
            return Ok(());
        }
        let from = self.node(&s.from_enterprise, &s.from_site)?;
        let to = self.node(&s.to_enterprise, &s.to_site)?;
        let received = s.received.as_ref().map(|r| r.quantity);
        self.edges.insert(
            s.ship_entry,
            Edge {
                ship_entry: s.ship_entry,
                from,
                to,
                lot: s.lot.clone(),
                shipped: s.quantity,
                shipped_at_ms: s.shipped_at_ms,
                receive_entry: s.received.as_ref().map(|r| r.receive_entry),
                received_lot: s.received.as_ref().map(|r| r.lot.clone()),
                received,
                received_at_ms: s.received.as_ref().map(|r| r.at_ms),
                missing: s.quantity - received.unwrap_or(0).min(s.quantity),
                carrier: s.carrier.clone(),
                legs: s.legs.iter().map(|l| l.entry).collect(),
                seals_changed: s.legs.iter().any(|l| l.seals_changed),
            },
        );
        Ok(())
    }
}

/// The custody graph of `lot`, following at most `max_edges` shipments.
pub fn trace(
    r: &dyn ViewRead,
    lot: &str,
    direction: Direction,
    max_edges: usize,
) -> Result<Graph, Refusal> {
    let lv: LotView = match r.get(&key::lot(lot)).map_err(se)? {
        Some(b) => views::decode(b"l/", &b).map_err(se)?,
        None => return Err(Refusal::not_found(format!("lot: `{lot}` does not exist"))),
    };
    let mut b = Builder {
        r,
        nodes: vec![],
        index: BTreeMap::new(),
        edges: BTreeMap::new(),
        names: BTreeMap::new(),
    };
    let mut truncated = false;
    // A holding of a lot, and which way to follow it from there: forward along its shipments,
    // backward along its receipts. The start lot is followed from every holding of it.
    type Item = (String, String, String, bool);
    let mut followed: BTreeSet<Item> = BTreeSet::new();
    let mut queue: VecDeque<Item> = VecDeque::new();
    let mut holdings = vec![(lv.created_by.clone(), lv.site.clone())];
    for (k, _) in r.scan_prefix(&key::lot_holdings(lot)).map_err(se)? {
        let rest = &k[key::lot_holdings(lot).len()..];
        let mut parts = rest.split(|&c| c == 0);
        if let (Some(ent), Some(site)) = (parts.next(), parts.next()) {
            holdings.push((
                String::from_utf8_lossy(ent).to_string(),
                String::from_utf8_lossy(site).to_string(),
            ));
        }
    }
    for (ent, site) in holdings {
        for forward in [true, false] {
            if (forward && direction != Direction::Backward)
                || (!forward && direction != Direction::Forward)
            {
                queue.push_back((ent.clone(), site.clone(), lot.to_string(), forward));
            }
        }
    }
    let mut lots_seen: Vec<String> = Vec::new();
    let mut described: BTreeSet<(usize, String)> = BTreeSet::new();
    while let Some(item) = queue.pop_front() {
        if !followed.insert(item.clone()) {
            continue;
        }
        let (ent, site, l, forward) = item;
        if !lots_seen.contains(&l) {
            lots_seen.push(l.clone());
        }
        let h = Holding {
            enterprise: &ent,
            site: &site,
            substance: &lv.substance,
            lot: &l,
        };
        let node = b.node(&ent, &site)?;
        let first_visit = described.insert((node, l.clone()));
        let rows = JournalOf::Holding(h.clone())
            .rows(r, (0, 0), (u64::MAX, u64::MAX), usize::MAX)
            .map_err(se)?;
        let mut last_totals = None;
        for row in rows {
            last_totals = Some(row.totals);
            let (term, shipment) = match row.event {
                Event::Move { term, shipment, .. } => (term, shipment),
                Event::Correct { term, .. } => (term, None),
                Event::Count { .. } => continue,
            };
            match (term, shipment) {
                (Term::Shipped, Some(ship)) if forward => {
                    if b.edges.len() >= max_edges && !b.edges.contains_key(&ship) {
                        truncated = true;
                        continue;
                    }
                    let s = b.shipment(ship)?;
                    b.edge(&s)?;
                    if let Some(rv) = &s.received {
                        queue.push_back((
                            s.to_enterprise.clone(),
                            rv.site.clone(),
                            rv.lot.clone(),
                            true,
                        ));
                    }
                }
                (Term::Received, Some(ship)) if !forward => {
                    if b.edges.len() >= max_edges && !b.edges.contains_key(&ship) {
                        truncated = true;
                        continue;
                    }
                    let s = b.shipment(ship)?;
                    b.edge(&s)?;
                    queue.push_back((
                        s.from_enterprise.clone(),
                        s.from_site.clone(),
                        s.lot.clone(),
                        false,
                    ));
                }
                (Term::Shipped | Term::Received, _) => {}
                _ => {
                    if first_visit {
                        b.nodes[node].entries.push(row.entry);
                    }
                }
            }
        }
        if first_visit {
            let n = &mut b.nodes[node];
            n.lots.push(l.clone());
            if let Some(t) = last_totals {
                for term in Term::ALL {
                    let q = t.get(term);
                    if q > 0 {
                        *n.figures.entry(term.name()).or_default() += q;
                    }
                }
                n.on_hand += t.balance() as u64;
            }
        }
    }
    Ok(Graph {
        lot: lot.to_string(),
        substance: lv.substance,
        nodes: b.nodes,
        edges: b.edges.into_values().collect(),
        lots: lots_seen,
        truncated,
    })
}
