//! Reports enterprises owe: the sales report to public security, from the ledger, each sale
//! citing its entry, with the deadline the regulations set for its category.

use crate::common::*;
use taizhang::pb;
use tonic::Code;

const DAY: u64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sales_report_lists_each_sale_with_its_deadline_and_entry() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let mut w = World::setup(&mut c).await;
    let (producer, buyer) = (w.producer.clone(), w.buyer.clone());
    for p in [
        produce("plant-1", EPHEDRINE, "E1", 10_000),
        produce("plant-1", ACETONE, "A1", 50_000),
        produce("plant-2", ACETONE, "A2", 50_000),
    ] {
        let r = w.p.sign(p, now());
        submit(&mut c, r).await.unwrap();
    }
    let mut ships = Vec::new();
    for (sub, lot, q) in [(EPHEDRINE, "E1", 3_000), (ACETONE, "A1", 20_000)] {
        let p = w
            .permitted(
                &mut c,
                &producer,
                ship("plant-1", sub, lot, q, &buyer, "wh-1"),
            )
            .await;
        let r = w.p.sign(p, now());
        ships.push(submit(&mut c, r).await.unwrap());
    }
    // Between its own sites: not a sale.
    let p = w
        .permitted(
            &mut c,
            &producer,
            ship("plant-2", ACETONE, "A2", 1_000, &producer, "plant-1"),
        )
        .await;
    let r = w.p.sign(p, now());
    submit(&mut c, r).await.unwrap();
    let rep = audit_as(&s.url, w.p.key().clone())
        .await
        .sales_report(pb::SalesReportRequest {
            enterprise: producer.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rep.sales.len(), 2);
    assert_eq!(rep.excluded, 1);
    let (e, a) = (&rep.sales[0], &rep.sales[1]);
    assert_eq!((e.substance.as_str(), e.quantity), (EPHEDRINE, 3_000));
    assert_eq!(e.category, pb::Category::Precursor1 as i32);
    assert_eq!(
        e.due_ms,
        e.shipped_at_ms + 5 * DAY,
        "category 1: within 5 days"
    );
    assert_eq!(
        a.due_ms,
        a.shipped_at_ms + 30 * DAY,
        "category 3: within 30 days"
    );
    assert_eq!(rep.due_ms, e.due_ms);
    assert_eq!(e.buyer, buyer);
    assert!(!e.permit_nos.is_empty(), "the permits it drew on are named");
    for (sale, receipt) in rep.sales.iter().zip(&ships) {
        let r = sale.ship.as_ref().unwrap();
        assert_eq!((r.index, &r.leaf_hash), (receipt.index, &receipt.leaf_hash));
    }
    // Another enterprise may not read it.
    let e = audit_as(&s.url, w.b.key().clone())
        .await
        .sales_report(pb::SalesReportRequest {
            enterprise: producer.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // The file to hand in, through the CLI.
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("sales.csv");
    let url = s.url.clone();
    let (p2, csv2) = (producer.clone(), csv.clone());
    let o = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin())
            .args([
                "audit",
                "sales",
                "--server",
                &url,
                "--enterprise",
                &p2,
                "--out",
            ])
            .arg(&csv2)
            .env("TAIZHANG_QUERY_KEY", key_file(&national_key()))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("entry_index,leaf_hash,shipped_at_utc,due_utc"));
    let first: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(first[0], ships[0].index.to_string());
    assert_eq!(first[1], hex::encode(&ships[0].leaf_hash));
    assert_eq!(first[5], "PRECURSOR_1");
    assert!(String::from_utf8_lossy(&o.stdout).contains("Sales report"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_annual_report_balances_each_precursor_stock_over_the_year_citing_every_posting() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let mut w = World::setup(&mut c).await;
    let (producer, buyer) = (w.producer.clone(), w.buyer.clone());
    let mut made = Vec::new();
    for p in [
        produce("plant-1", EPHEDRINE, "E1", 10_000),
        produce("plant-1", ACETONE, "A1", 50_000),
    ] {
        let r = w.p.sign(p, now());
        made.push(submit(&mut c, r).await.unwrap());
    }
    let p = w
        .permitted(
            &mut c,
            &producer,
            ship("plant-1", ACETONE, "A1", 20_000, &buyer, "wh-1"),
        )
        .await;
    let r = w.p.sign(p, now());
    let shipped = submit(&mut c, r).await.unwrap();
    let r =
        w.p.sign(stock_take("plant-1", ACETONE, "A1", 29_000), now());
    let counted = submit(&mut c, r).await.unwrap();
    let year = time::OffsetDateTime::now_utc()
        .to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap())
        .year() as u32;
    let ask = |key, enterprise: &str, year| {
        let url = s.url.clone();
        let enterprise = enterprise.to_string();
        async move {
            audit_as(&url, key)
                .await
                .annual_report(pb::AnnualReportRequest {
                    enterprise,
                    year,
                    limit: 0,
                })
                .await
        }
    };
    let rep = ask(w.p.key().clone(), &producer, year)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rep.year, year);
    assert!(rep.to_ms - rep.from_ms >= 365 * DAY);
    assert_eq!(
        rep.due_ms - rep.to_ms,
        90 * DAY,
        "due at the end of 31 March"
    );
    let line = |sub: &str| {
        rep.lines
            .iter()
            .find(|l| l.query.as_ref().unwrap().substance == sub)
            .unwrap_or_else(|| panic!("no line for {sub}: {rep:?}"))
    };
    let term = |l: &pb::MassBalanceResponse, t: pb::BalanceTerm| {
        l.terms
            .iter()
            .find(|x| x.term == t as i32)
            .map_or(0, |x| x.quantity)
    };
    let a = line(ACETONE);
    assert_eq!(a.opening, 0);
    assert_eq!(term(a, pb::BalanceTerm::Produced), 50_000);
    assert_eq!(term(a, pb::BalanceTerm::Shipped), 20_000);
    assert_eq!(a.expected_closing, 30_000);
    let count = a.count.as_ref().unwrap();
    assert_eq!((count.counted, count.variance), (29_000, -1_000));
    assert_eq!(count.entry.as_ref().unwrap().index, counted.index);
    let cited: Vec<(u64, Vec<u8>)> = a
        .postings
        .iter()
        .map(|p| {
            let e = p.entry.as_ref().unwrap();
            (e.index, e.leaf_hash.clone())
        })
        .collect();
    for r in [&made[1], &shipped] {
        assert!(
            cited.contains(&(r.index, r.leaf_hash.clone())),
            "entry {} not cited",
            r.index
        );
    }
    let e = line(EPHEDRINE);
    assert_eq!(
        (term(e, pb::BalanceTerm::Produced), e.expected_closing),
        (10_000, 10_000)
    );
    assert_eq!(rep.lines.len(), 2, "one line per stock held");
    // The year before: nothing held, nothing moved.
    let before = ask(w.p.key().clone(), &producer, year - 1)
        .await
        .unwrap()
        .into_inner();
    assert!(before.lines.is_empty(), "{before:?}");
    // Another enterprise may not read it; a year that is not one is refused by name.
    let e = ask(w.b.key().clone(), &producer, year).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = ask(w.p.key().clone(), &producer, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("year: 0"), "{}", e.message());

    // A controlled-drug stock is reported through the drug regulator's channels: counted, not listed.
    let lab = code("91440300MA5LABDG1");
    let lk = ed25519_dalek::SigningKey::from_bytes(&[0x6c; 32]);
    for p in [
        enrol(
            &lab,
            "440305",
            vec![
                licence(pb::Category::Precursor3, &[pb::Activity::Produce]),
                licence(pb::Category::Psychotropic2, &[pb::Activity::Produce]),
            ],
            &["lab"],
        ),
        register(&lk, &lab),
    ] {
        submit(&mut c, w.reg.sign(p, now())).await.unwrap();
    }
    let mut l = taizhang::client::RecordSigner::new(lk.clone(), ORIGIN);
    for p in [
        produce("lab", ACETONE, "LA", 9_000),
        produce("lab", "439-14-5", "DZ", 500), // diazepam, class II psychotropic
    ] {
        submit(&mut c, l.sign(p, now())).await.unwrap();
    }
    let r = ask(lk, &lab, year).await.unwrap().into_inner();
    assert_eq!((r.lines.len(), r.excluded), (1, 1), "{r:?}");
    assert_eq!(r.lines[0].query.as_ref().unwrap().substance, ACETONE);

    // The file to hand in, through the CLI: totals, then every posting with its leaf hash.
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("annual.csv");
    let (url, p2, csv2) = (s.url.clone(), producer.clone(), csv.clone());
    let o = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin())
            .args(["audit", "annual", "--server", &url, "--enterprise", &p2])
            .args(["--year", &year.to_string(), "--out"])
            .arg(&csv2)
            .env("TAIZHANG_QUERY_KEY", key_file(&national_key()))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Annual report") && out.contains("2 stocks"),
        "{out}"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("row,enterprise,year,site,substance,category,unit,figure"));
    assert!(
        text.contains(&format!(
            "total,{producer},{year},plant-1,{ACETONE},PRECURSOR_3,mg,closing,30000"
        )),
        "{text}"
    );
    let ship_row = format!("{},{}", shipped.index, hex::encode(&shipped.leaf_hash));
    assert!(
        text.lines()
            .any(|l| l.starts_with("entry,") && l.ends_with(&ship_row)),
        "{text}"
    );
}
