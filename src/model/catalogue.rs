//! The substance catalogue: which substances are controlled, in which category, and in which
//! base unit their quantities are counted.
//!
//! Built from the regulations' lists, copied into `data/` (they are facts): the 2021 precursor
//! list (38 legal items, category 1–3) and a sample of the narcotic and psychotropic lists. The
//! catalogue is versioned data: its version name and BLAKE3 digest are written into the Genesis
//! entry, so every entry is judged against a catalogue everyone can identify.
//!
//! Substance ids: the CAS registry number where the list gives one; otherwise `PC<cat>-<item>`
//! (e.g. `PC1-05`, sassafras oil), with a letter suffix when an item has several such rows
//! (`PC1-12A` ephedra extract, `PC1-12B` ephedra extract powder).

use crate::pb::{Category, Unit};
use std::collections::BTreeMap;

/// The embedded precursor list (易制毒化学品分类和品种目录, 2021).
pub const PRECURSORS_CSV: &str = include_str!("../../data/precursors-cn-2021.csv");
/// The embedded sample of the narcotic and psychotropic drug lists.
pub const CONTROLLED_DRUGS_CSV: &str = include_str!("../../data/controlled-drugs-sample.csv");
/// Version name of the embedded catalogue.
pub const EMBEDDED_VERSION: &str = "cn-precursors-2021+drugs-sample-1";

/// One controlled substance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Substance {
    pub id: String,
    pub category: Category,
    pub name_zh: String,
    pub name_en: String,
    pub cas: String,
    pub pharmaceutical: bool,
    pub unit: Unit,
}

/// A versioned set of substances.
#[derive(Debug, Clone)]
pub struct Catalogue {
    version: String,
    digest: [u8; 32],
    by_id: BTreeMap<String, Substance>,
}

impl Catalogue {
    /// The catalogue built from the embedded lists.
    pub fn embedded() -> Catalogue {
        // INVARIANT: the embedded CSV files are fixed at compile time and covered by tests.
        Catalogue::from_csv(EMBEDDED_VERSION, PRECURSORS_CSV, CONTROLLED_DRUGS_CSV)
            .expect("embedded catalogue parses")
    }

    /// Builds a catalogue from the two CSV lists.
    pub fn from_csv(version: &str, precursors: &str, drugs: &str) -> Result<Catalogue, String> {
        let mut by_id = BTreeMap::new();
        let mut rows = Vec::new();
        let mut rdr = csv::Reader::from_reader(precursors.as_bytes());
        for (n, row) in rdr.records().enumerate() {
            let row = row.map_err(|e| format!("precursor list row {}: {e}", n + 2))?;
            let field = |i: usize| row.get(i).unwrap_or("").trim().to_string();
            let cat: u8 = field(0)
                .parse()
                .map_err(|_| format!("precursor list row {}: bad category", n + 2))?;
            let item: u32 = field(1)
                .parse()
                .map_err(|_| format!("precursor list row {}: bad item", n + 2))?;
            let category = match cat {
                1 => Category::Precursor1,
                2 => Category::Precursor2,
                3 => Category::Precursor3,
                _ => return Err(format!("precursor list row {}: category {cat}", n + 2)),
            };
            rows.push((
                cat,
                item,
                category,
                field(2),
                field(3),
                field(4),
                field(5) == "true",
            ));
        }
        // CAS-less rows: `PC<cat>-<item>`, with a letter suffix when an item has several.
        let mut no_cas: BTreeMap<(u8, u32), usize> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.5.is_empty()) {
            *no_cas.entry((r.0, r.1)).or_insert(0) += 1;
        }
        let mut seen: BTreeMap<(u8, u32), u8> = BTreeMap::new();
        for (cat, item, category, name_zh, name_en, cas, pharmaceutical) in rows {
            let id = if cas.is_empty() {
                let base = format!("PC{cat}-{item:02}");
                if no_cas[&(cat, item)] > 1 {
                    let k = seen.entry((cat, item)).or_insert(0);
                    *k += 1;
                    format!("{base}{}", (b'A' + *k - 1) as char)
                } else {
                    base
                }
            } else {
                cas.clone()
            };
            let s = Substance {
                id,
                category,
                name_zh,
                name_en,
                cas,
                pharmaceutical,
                unit: Unit::Milligram,
            };
            if by_id.insert(s.id.clone(), s).is_some() {
                return Err("precursor list: duplicate substance id".into());
            }
        }
        let mut rdr = csv::Reader::from_reader(drugs.as_bytes());
        for (n, row) in rdr.records().enumerate() {
            let row = row.map_err(|e| format!("drug list row {}: {e}", n + 2))?;
            let field = |i: usize| row.get(i).unwrap_or("").trim().to_string();
            let category = match field(0).as_str() {
                "narcotic" => Category::Narcotic,
                "psychotropic-1" => Category::Psychotropic1,
                "psychotropic-2" => Category::Psychotropic2,
                other => return Err(format!("drug list row {}: schedule `{other}`", n + 2)),
            };
            let cas = field(3);
            if cas.is_empty() {
                return Err(format!("drug list row {}: no CAS number", n + 2));
            }
            let s = Substance {
                id: cas.clone(),
                category,
                name_zh: field(1),
                name_en: field(2),
                cas,
                pharmaceutical: true,
                unit: Unit::Milligram,
            };
            if by_id.insert(s.id.clone(), s).is_some() {
                return Err(format!("drug list row {}: duplicate substance", n + 2));
            }
        }
        let mut h = blake3::Hasher::new();
        h.update(b"taizhang/v1/catalogue\n");
        h.update(version.as_bytes());
        h.update(&[0]);
        h.update(precursors.as_bytes());
        h.update(&[0]);
        h.update(drugs.as_bytes());
        Ok(Catalogue {
            version: version.to_string(),
            digest: *h.finalize().as_bytes(),
            by_id,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// BLAKE3 over the version and the source lists; pinned in Genesis.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    pub fn get(&self, id: &str) -> Option<&Substance> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Substance> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Finds a substance by id, CAS number, or exact English or Chinese name.
    pub fn lookup(&self, key: &str) -> Option<&Substance> {
        self.get(key).or_else(|| {
            self.by_id
                .values()
                .find(|s| s.cas == key || s.name_en.eq_ignore_ascii_case(key) || s.name_zh == key)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalogue_has_every_listed_row() {
        let c = Catalogue::embedded();
        let precursor_rows = PRECURSORS_CSV.lines().count() - 1;
        let drug_rows = CONTROLLED_DRUGS_CSV.lines().count() - 1;
        assert_eq!(c.len(), precursor_rows + drug_rows);
        let count = |cat| c.iter().filter(|s| s.category == cat).count();
        // 19 legal items in category 1 (item 12 has seven rows), 11 in 2, 8 in 3.
        assert_eq!(count(Category::Precursor1), 25);
        assert_eq!(count(Category::Precursor2), 11);
        assert_eq!(count(Category::Precursor3), 8);
    }

    #[test]
    fn ids_and_lookups() {
        let c = Catalogue::embedded();
        let eph = c.get("299-42-3").unwrap();
        assert_eq!(eph.name_en, "Ephedrine");
        assert_eq!(eph.category, Category::Precursor1);
        assert!(eph.pharmaceutical);
        assert_eq!(c.get("PC1-05").unwrap().name_en, "Sassafras oil");
        assert_eq!(c.get("PC1-12A").unwrap().name_en, "Ephedra extract");
        assert_eq!(c.get("PC1-12B").unwrap().name_en, "Ephedra extract powder");
        assert_eq!(c.lookup("Acetone").unwrap().id, "67-64-1");
        assert_eq!(c.lookup("丙酮").unwrap().category, Category::Precursor3);
        assert_eq!(c.get("57-27-2").unwrap().category, Category::Narcotic);
        assert!(c.get("7732-18-5").is_none(), "water is not controlled");
    }

    #[test]
    fn digest_pins_version_and_data() {
        let a = Catalogue::embedded();
        let b = Catalogue::from_csv("other", PRECURSORS_CSV, CONTROLLED_DRUGS_CSV).unwrap();
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), Catalogue::embedded().digest());
        assert!(Catalogue::from_csv("x", "category,item\n9,1\n", "").is_err());
    }
}
