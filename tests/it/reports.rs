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
