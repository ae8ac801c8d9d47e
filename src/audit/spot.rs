//! Verifiable spot checks (普查与抽查相结合, docs/protocol.md §15): which sites an inspection
//! team visits, drawn at random with risk weights, where the randomness comes only from a
//! checkpoint's root and the risk only from the log up to that checkpoint. Anyone holding the
//! checkpoint and the entries it covers (an export) recomputes exactly the same sample.
//!
//! Pure: [`Features::add`] is fed the leaves `0..size` in order; [`select`] draws.

use crate::codec::{self, Leaf};
use crate::crypto::KeyId;
use crate::model::Catalogue;
use crate::pb::{self, record_body::Payload};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Domain separator of the sampling seed.
pub const SEED_CONTEXT: &[u8] = b"taizhang/v1/spot-check\n";
/// A shipment with no expected delivery time counts as not received this long after it left.
pub const DEFAULT_RECEIPT_DEADLINE_MS: u64 = 7 * 86_400_000;
/// Base units of volume per step of the volume factor (1 kg in mg, 1 l in ml, 10^6 doses).
pub const VOLUME_UNIT: u128 = 1_000_000;
/// Losses and variances counted per site at most (keeps weights in range).
pub const MAX_EVENTS: u64 = 1_000;

/// One site's risk, from the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Risk {
    /// Sum of every quantity moved at the site, in base units (any substance).
    pub volume: u128,
    /// The riskiest category handled there: 4 for category 1 precursors, narcotics and class I
    /// psychotropics, 2 for category 2 and class II, 1 for category 3 or nothing.
    pub category_factor: u64,
    /// Short deliveries into or out of the site, shipments not received by their deadline,
    /// and loss reports at the site.
    pub open_losses: u64,
    /// Counts (stock-takes, inspections) that disagreed with the book.
    pub variances: u64,
    /// Entries behind `open_losses` and `variances`.
    pub entries: Vec<u64>,
}

impl Risk {
    /// The weight: `category × (1 + bits(volume / 10^6)) × (1 + 4·losses + 2·variances)`.
    pub fn weight(&self) -> u64 {
        let steps = (self.volume / VOLUME_UNIT) as u64;
        let bits = 64 - steps.leading_zeros() as u64;
        self.category_factor.max(1)
            * (1 + bits)
            * (1 + 4 * self.open_losses.min(MAX_EVENTS) + 2 * self.variances.min(MAX_EVENTS))
    }
}

/// A site: (enterprise credit code, site id).
pub type Site = (String, String);

struct Ship {
    from: Site,
    to: Site,
    substance: String,
    lot: String,
    quantity: u64,
    due_ms: u64,
    received: bool,
}

/// The pass over the log that gathers every enrolled site's risk.
pub struct Features<'c> {
    catalogue: &'c Catalogue,
    deadline_ms: u64,
    keys: HashMap<KeyId, String>,
    /// Enterprise → (jurisdiction, sites).
    enterprises: BTreeMap<String, (String, Vec<String>)>,
    risk: BTreeMap<Site, Risk>,
    /// (site, substance, lot) → book stock.
    book: HashMap<(Site, String, String), i128>,
    ships: HashMap<u64, Ship>,
    last_time_ms: u64,
    size: u64,
}

fn category_factor(c: i32) -> u64 {
    use pb::Category as C;
    match C::try_from(c) {
        Ok(C::Precursor1 | C::Narcotic | C::Psychotropic1) => 4,
        Ok(C::Precursor2 | C::Psychotropic2) => 2,
        _ => 1,
    }
}

fn amount(q: &Option<pb::Quantity>) -> u64 {
    q.as_ref().map_or(0, |q| q.amount)
}

impl<'c> Features<'c> {
    pub fn new(catalogue: &'c Catalogue, deadline_ms: u64) -> Self {
        Features {
            catalogue,
            deadline_ms,
            keys: HashMap::new(),
            enterprises: BTreeMap::new(),
            risk: BTreeMap::new(),
            book: HashMap::new(),
            ships: HashMap::new(),
            last_time_ms: 0,
            size: 0,
        }
    }

    /// How many entries have been added.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn site(&mut self, s: &Site) -> &mut Risk {
        self.risk.entry(s.clone()).or_default()
    }

    fn moved(&mut self, s: &Site, substance: &str, q: u64) {
        let f = self
            .catalogue
            .get(substance)
            .map_or(1, |x| category_factor(x.category as i32));
        let r = self.site(s);
        r.volume += q as u128;
        r.category_factor = r.category_factor.max(f);
    }

    fn post(&mut self, s: &Site, substance: &str, lot: &str, delta: i128) {
        *self
            .book
            .entry((s.clone(), substance.to_string(), lot.to_string()))
            .or_default() += delta;
    }

    fn count(&mut self, s: &Site, counts: &[pb::StockCount], entry: u64) {
        for c in counts {
            let book = self
                .book
                .get(&(s.clone(), c.substance.clone(), c.lot.clone()))
                .copied()
                .unwrap_or(0);
            if book != amount(&c.quantity) as i128 {
                let r = self.site(s);
                r.variances += 1;
                r.entries.push(entry);
            }
        }
    }

    fn loss(&mut self, s: &Site, entry: u64) {
        let r = self.site(s);
        r.open_losses += 1;
        r.entries.push(entry);
    }

    /// Adds entry `index` (its leaf bytes); entries must come in order from 0.
    pub fn add(&mut self, index: u64, leaf: &[u8]) -> Result<(), String> {
        if index != self.size {
            return Err(format!("entry {index}: expected entry {}", self.size));
        }
        self.size += 1;
        let leaf = Leaf::decode(leaf).map_err(|e| format!("entry {index}: {e}"))?;
        self.last_time_ms = self.last_time_ms.max(leaf.integrated_time_ms);
        let body = codec::decode_body(&leaf.body).map_err(|e| format!("entry {index}: {e}"))?;
        let ent = KeyId::from_slice("signer", &body.signer)
            .ok()
            .and_then(|k| self.keys.get(&k).cloned())
            .unwrap_or_default();
        let at = |site: &str| (ent.clone(), site.to_string());
        match body.payload {
            Some(Payload::EnrolEnterprise(e)) => {
                let sites = e.sites.iter().map(|s| s.site_id.clone()).collect();
                self.enterprises
                    .insert(e.credit_code, (e.jurisdiction, sites));
            }
            Some(Payload::RegisterKey(k)) if !k.enterprise.is_empty() => {
                if let Ok(vk) = crate::crypto::parse_public_key("public_key", &k.public_key) {
                    self.keys.insert(KeyId::of(&vk), k.enterprise);
                }
            }
            Some(Payload::Produce(p)) => {
                let s = at(&p.site_id);
                self.moved(&s, &p.substance, amount(&p.quantity));
                self.post(&s, &p.substance, &p.lot, amount(&p.quantity) as i128);
            }
            Some(Payload::Import(p)) => {
                let s = at(&p.site_id);
                self.moved(&s, &p.substance, amount(&p.quantity));
                self.post(&s, &p.substance, &p.lot, amount(&p.quantity) as i128);
            }
            Some(Payload::Ship(p)) => {
                let s = at(&p.site_id);
                let q = amount(&p.quantity);
                self.moved(&s, &p.substance, q);
                self.post(&s, &p.substance, &p.lot, -(q as i128));
                let due = if p.expected_delivery_ms > 0 {
                    p.expected_delivery_ms
                } else {
                    leaf.integrated_time_ms.saturating_add(self.deadline_ms)
                };
                self.ships.insert(
                    index,
                    Ship {
                        from: s,
                        to: (p.consignee, p.consignee_site),
                        substance: p.substance,
                        lot: p.lot,
                        quantity: q,
                        due_ms: due,
                        received: false,
                    },
                );
            }
            Some(Payload::Receive(r)) => {
                let s = at(&r.site_id);
                let q = amount(&r.quantity);
                let Some(sh) = r.ship.as_ref().and_then(|e| self.ships.get_mut(&e.index)) else {
                    return Ok(());
                };
                sh.received = true;
                let (from, short) = (sh.from.clone(), q < sh.quantity);
                let substance = sh.substance.clone();
                let lot = if r.lot.is_empty() {
                    sh.lot.clone()
                } else {
                    r.lot.clone()
                };
                if short {
                    self.loss(&from, index);
                    self.loss(&s, index);
                }
                self.moved(&s, &substance, q);
                self.post(&s, &substance, &lot, q as i128);
            }
            Some(Payload::Export(p)) => {
                let s = at(&p.site_id);
                self.moved(&s, &p.substance, amount(&p.quantity));
                self.post(&s, &p.substance, &p.lot, -(amount(&p.quantity) as i128));
            }
            Some(Payload::Consume(p)) => {
                let s = at(&p.site_id);
                self.moved(&s, &p.substance, amount(&p.quantity));
                self.post(&s, &p.substance, &p.lot, -(amount(&p.quantity) as i128));
            }
            Some(Payload::Destroy(p)) => {
                let s = at(&p.site_id);
                self.moved(&s, &p.substance, amount(&p.quantity));
                self.post(&s, &p.substance, &p.lot, -(amount(&p.quantity) as i128));
            }
            Some(Payload::LossReport(p)) => {
                let s = at(&p.site_id);
                self.post(&s, &p.substance, &p.lot, -(amount(&p.quantity) as i128));
                self.loss(&s, index);
            }
            Some(Payload::StockTake(t)) => {
                let s = at(&t.site_id);
                self.count(&s, &t.counts, index);
            }
            Some(Payload::Inspection(i)) => {
                let s = (i.enterprise.clone(), i.site_id.clone());
                self.count(&s, &i.counts, index);
            }
            _ => {}
        }
        Ok(())
    }

    /// Shipments not received by their deadline (judged at the last entry's time) count as
    /// open losses of both ends; then every site of an enterprise enrolled under `jurisdiction`
    /// (a division code prefix, "" = all), in (enterprise, site) byte order, with its risk.
    pub fn population(mut self, jurisdiction: &str) -> Vec<(Site, Risk)> {
        let now = self.last_time_ms;
        let mut late: Vec<(Site, Site, u64)> = self
            .ships
            .iter()
            .filter(|(_, s)| !s.received && s.due_ms < now)
            .map(|(i, s)| (s.from.clone(), s.to.clone(), *i))
            .collect();
        late.sort_by_key(|(_, _, i)| *i);
        for (from, to, i) in late {
            self.loss(&from, i);
            self.loss(&to, i);
        }
        let mut out = Vec::new();
        for (code, (j, sites)) in &self.enterprises {
            if !j.starts_with(jurisdiction) {
                continue;
            }
            let unique: BTreeSet<&String> = sites.iter().collect();
            for site in unique {
                let key = (code.clone(), site.clone());
                let mut r = self.risk.get(&key).cloned().unwrap_or_default();
                r.category_factor = r.category_factor.max(1);
                r.entries.sort_unstable();
                r.entries.dedup();
                out.push((key, r));
            }
        }
        out
    }
}

/// The sampling seed: `BLAKE3(context || origin || "\n" || size || "\n" || root || "\n" ||
/// jurisdiction || "\n" || sample size)`, with size and sample size in decimal.
pub fn seed(origin: &str, size: u64, root: &[u8; 32], jurisdiction: &str, k: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(SEED_CONTEXT);
    h.update(origin.as_bytes());
    h.update(b"\n");
    h.update(size.to_string().as_bytes());
    h.update(b"\n");
    h.update(root);
    h.update(b"\n");
    h.update(jurisdiction.as_bytes());
    h.update(b"\n");
    h.update(k.to_string().as_bytes());
    *h.finalize().as_bytes()
}

/// A uniform integer in `[0, bound)` for draw `draw`: the first 16 bytes of
/// `BLAKE3(seed || u32 BE draw || u32 BE attempt)` as a big-endian u128, rejected (next
/// attempt) when at or above the largest multiple of `bound`, else reduced mod `bound`.
pub fn uniform(seed: &[u8; 32], draw: u32, bound: u128) -> u128 {
    assert!(bound > 0);
    let zone = u128::MAX - (u128::MAX % bound + 1) % bound;
    for attempt in 0u32.. {
        let mut h = blake3::Hasher::new();
        h.update(seed);
        h.update(&draw.to_be_bytes());
        h.update(&attempt.to_be_bytes());
        let x = u128::from_be_bytes(h.finalize().as_bytes()[..16].try_into().expect("16 bytes"));
        if x <= zone {
            return x % bound;
        }
    }
    unreachable!("2^32 rejections")
}

/// Draws up to `k` distinct items without replacement, each draw with probability proportional
/// to its weight among those left: draw `j` takes `x = uniform(seed, j, W)` over the remaining
/// total `W` and picks the first item (in the given order) whose running weight exceeds `x`.
/// Returns the indices drawn, in draw order.
pub fn select(weights: &[u64], seed: &[u8; 32], k: usize) -> Vec<usize> {
    let mut left: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
    let mut out = Vec::with_capacity(k.min(left.len()));
    for draw in 0..k {
        if left.is_empty() {
            break;
        }
        let total: u128 = left.iter().map(|&i| weights[i] as u128).sum();
        let x = uniform(seed, draw as u32, total);
        let mut run = 0u128;
        let pos = left
            .iter()
            .position(|&i| {
                run += weights[i] as u128;
                run > x
            })
            .expect("x < total");
        out.push(left.remove(pos));
    }
    out
}

/// A drawn sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub seed: [u8; 32],
    pub population: usize,
    pub total_weight: u64,
    /// (site, risk, weight), in draw order.
    pub drawn: Vec<(Site, Risk, u64)>,
}

/// Draws `k` sites of `jurisdiction` from a population gathered over the checkpoint's entries.
pub fn draw(
    population: Vec<(Site, Risk)>,
    origin: &str,
    size: u64,
    root: &[u8; 32],
    jurisdiction: &str,
    k: u32,
) -> Sample {
    let seed = seed(origin, size, root, jurisdiction, k);
    let weights: Vec<u64> = population.iter().map(|(_, r)| r.weight()).collect();
    let total_weight = weights.iter().fold(0u64, |a, w| a.saturating_add(*w));
    let picks = select(&weights, &seed, k as usize);
    let n = population.len();
    let mut slots: Vec<Option<(Site, Risk)>> = population.into_iter().map(Some).collect();
    let drawn = picks
        .into_iter()
        .map(|i| {
            let (s, r) = slots[i].take().expect("drawn once");
            (s, r, weights[i])
        })
        .collect();
    Sample {
        seed,
        population: n,
        total_weight,
        drawn,
    }
}

/// Gathers the features of the first `size` entries of `ledger`'s log.
pub fn gather<'c>(
    ledger: &crate::ledger::Ledger,
    catalogue: &'c Catalogue,
    size: u64,
    deadline_ms: u64,
) -> Result<Features<'c>, crate::ledger::Refusal> {
    let mut f = Features::new(catalogue, deadline_ms);
    for i in 0..size {
        let (leaf, _) = ledger.entry(i)?;
        f.add(i, &leaf).map_err(crate::ledger::Refusal::internal)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_of(i: u32) -> [u8; 32] {
        *blake3::hash(&i.to_be_bytes()).as_bytes()
    }

    #[test]
    fn weights_follow_the_documented_formula() {
        let r = |volume, category_factor, open_losses, variances| Risk {
            volume,
            category_factor,
            open_losses,
            variances,
            entries: vec![],
        };
        assert_eq!(r(0, 1, 0, 0).weight(), 1);
        assert_eq!(r(999_999, 1, 0, 0).weight(), 1);
        assert_eq!(r(1_000_000, 1, 0, 0).weight(), 2);
        assert_eq!(r(5_000_000, 4, 0, 0).weight(), 4 * 4);
        assert_eq!(r(0, 2, 1, 1).weight(), 2 * (1 + 4 + 2));
        // Saturated event counts keep the weight in range.
        assert!(r(u128::MAX, 4, u64::MAX, u64::MAX).weight() < u64::MAX / 1_000_000);
    }

    #[test]
    fn uniform_stays_in_range_and_is_a_function_of_its_inputs() {
        let s = seed_of(1);
        for bound in [1u128, 2, 3, 7, 1 << 64, u128::MAX] {
            for d in 0..50 {
                let x = uniform(&s, d, bound);
                assert!(x < bound);
                assert_eq!(x, uniform(&s, d, bound));
            }
        }
        assert_ne!(uniform(&s, 0, 1 << 64), uniform(&s, 1, 1 << 64));
        assert_ne!(uniform(&s, 0, 1 << 64), uniform(&seed_of(2), 0, 1 << 64));
    }

    #[test]
    fn select_draws_distinct_items_never_weightless_ones_and_is_deterministic() {
        let w = [3, 0, 5, 1, 0, 2];
        let s = seed_of(9);
        let a = select(&w, &s, 10);
        assert_eq!(a, select(&w, &s, 10));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 2, 3, 5], "all with weight, each once");
        assert_eq!(
            select(&w, &s, 2),
            a[..2].to_vec(),
            "a smaller sample is a prefix"
        );
        assert!(select(&[0, 0], &s, 3).is_empty());
        // Different seeds give different orders.
        let orders: BTreeSet<Vec<usize>> = (0..20).map(|i| select(&w, &seed_of(i), 4)).collect();
        assert!(orders.len() > 5);
    }

    /// The weighting works: over many seeds, a first draw lands on each item in proportion to
    /// its weight (a synthetic population of 8 sites, weights 1..128), within 3 standard
    /// deviations; and a riskier site is inspected more often in samples of 3 of 20.
    #[test]
    fn draws_follow_the_weights_on_a_synthetic_population() {
        let w: Vec<u64> = vec![1, 2, 4, 8, 16, 32, 64, 128];
        let total: u64 = w.iter().sum();
        let n = 40_000u32;
        let mut hits = vec![0u32; w.len()];
        for i in 0..n {
            hits[select(&w, &seed_of(i), 1)[0]] += 1;
        }
        for (i, &h) in hits.iter().enumerate() {
            let p = w[i] as f64 / total as f64;
            let mean = n as f64 * p;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (h as f64 - mean).abs() <= 3.0 * sd + 1.0,
                "item {i} (weight {}): {h} hits, expected {mean:.0} ± {:.0}",
                w[i],
                3.0 * sd
            );
        }
        // 19 ordinary sites of weight 1 and one with a theft report (weight 5 = 1 + 4·1).
        let mut pop = vec![1u64; 20];
        pop[7] = 5;
        let (mut risky, mut ordinary) = (0u32, 0u32);
        for i in 0..5_000u32 {
            let s = select(&pop, &seed_of(i + 1_000_000), 3);
            risky += s.contains(&7) as u32;
            ordinary += s.contains(&3) as u32;
        }
        assert!(
            risky > 2 * ordinary,
            "the risky site was drawn {risky} times, an ordinary one {ordinary}"
        );
    }

    #[test]
    fn the_seed_binds_every_input() {
        let root = [7u8; 32];
        let base = seed("o", 10, &root, "4403", 5);
        assert_ne!(base, seed("p", 10, &root, "4403", 5));
        assert_ne!(base, seed("o", 11, &root, "4403", 5));
        assert_ne!(base, seed("o", 10, &[8; 32], "4403", 5));
        assert_ne!(base, seed("o", 10, &root, "440", 5));
        assert_ne!(base, seed("o", 10, &root, "4403", 6));
        let mut h = blake3::Hasher::new();
        h.update(b"taizhang/v1/spot-check\no\n10\n");
        h.update(&root);
        h.update(b"\n4403\n5");
        assert_eq!(base, *h.finalize().as_bytes());
    }
}
