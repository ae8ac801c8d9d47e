//! GS1 EPCIS 2.0 through the binary: a ledger's movements exported as a document, read back into
//! exactly the records they came from, and a hand-written document signed and submitted; what
//! cannot be resolved is refused before anything is submitted.

use crate::common::*;
use taizhang::pb::{self, record_body::Payload};

fn payload_at(s: &Server, index: u64) -> Payload {
    let (leaf, _) = s.ledger.entry(index).unwrap();
    let leaf = taizhang::codec::Leaf::decode(&leaf).unwrap();
    taizhang::codec::decode_body(&leaf.body)
        .unwrap()
        .payload
        .unwrap()
}

async fn tz(args: Vec<String>, key: std::path::PathBuf) -> (bool, String, String) {
    let o = tokio::process::Command::new(bin())
        .args(&args)
        .env("TAIZHANG_QUERY_KEY", key)
        .env("TAIZHANG_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epcis_export_reads_back_into_the_same_records_and_import_signs_and_submits() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let mut w = World::setup(&mut c).await;
    let producer = w.producer.clone();
    let buyer = w.buyer.clone();
    submit(
        &mut c,
        w.p.sign(produce("plant-1", EPHEDRINE, "LOT-A", 5_000_000), now()),
    )
    .await
    .unwrap();
    let sp = w
        .permitted(
            &mut c,
            &producer,
            ship("plant-1", EPHEDRINE, "LOT-A", 2_000_000, &buyer, "wh-1"),
        )
        .await;
    let sh = submit(&mut c, w.p.sign(sp, now())).await.unwrap();
    submit(&mut c, w.b.sign(receive(&sh, "wh-1", 1_999_000), now()))
        .await
        .unwrap();
    submit(
        &mut c,
        w.p.sign(stock_take("plant-1", EPHEDRINE, "LOT-A", 3_000_000), now()),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc.jsonld");
    let national = key_file(&national_key());
    let url = s.url.clone();
    let a = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // Export: one event per movement, each named by its entry.
    let (ok, out, err) = tz(
        a(&[
            "epcis",
            "export",
            "--server",
            &url,
            "--out",
            doc.to_str().unwrap(),
        ]),
        national.clone(),
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("4 events written"), "{out}");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&doc).unwrap()).unwrap();
    assert_eq!(d["type"], "EPCISDocument");
    assert_eq!(d["schemaVersion"], "2.0");
    let events = d["epcisBody"]["eventList"].as_array().unwrap();
    let steps: Vec<&str> = events
        .iter()
        .map(|e| e["bizStep"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["commissioning", "shipping", "receiving", "cycle_counting"]
    );
    let mut indices = Vec::new();
    for e in events {
        let id = e["eventID"].as_str().unwrap();
        let (i, h) = id
            .strip_prefix("urn:taizhang:entry:")
            .unwrap()
            .split_once(':')
            .unwrap();
        let i: u64 = i.parse().unwrap();
        assert_eq!(
            h,
            hex::encode(s.ledger.entry(i).unwrap().1),
            "eventID names the leaf hash"
        );
        indices.push(i);
    }
    assert_eq!(
        events[1]["bizTransactionList"].as_array().unwrap().len(),
        2,
        "purchase and transport permits"
    );

    // Read back: exactly the records on the ledger.
    let (ok, out, err) = tz(
        a(&[
            "epcis",
            "import",
            doc.to_str().unwrap(),
            "--server",
            &url,
            "--dry-run",
        ]),
        national.clone(),
    )
    .await;
    assert!(ok, "{out}{err}");
    let records: serde_json::Value = serde_json::from_str(&out).unwrap();
    let records = records["records"].as_array().unwrap();
    assert_eq!(records.len(), indices.len());
    for (r, i) in records.iter().zip(&indices) {
        let body: pb::RecordBody = serde_json::from_value(r.clone()).unwrap();
        assert_eq!(body.payload.unwrap(), payload_at(&s, *i), "entry {i}");
    }

    // Import a hand-written document as the producer: a new lot and its count.
    let hand = serde_json::json!({
        "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
        "type": "EPCISDocument", "schemaVersion": "2.0",
        "epcisBody": {"eventList": [
            {"type": "ObjectEvent", "action": "ADD", "bizStep": "commissioning", "disposition": "active",
             "eventTime": "2026-12-01T09:00:00Z", "eventTimeZoneOffset": "+08:00",
             "readPoint": {"id": format!("urn:taizhang:site:{producer}:plant-1")},
             "quantityList": [{"epcClass": format!("urn:taizhang:lot:{EPHEDRINE}:EP-EPCIS"), "quantity": 700, "uom": "MGM"}]},
            {"type": "ObjectEvent", "action": "OBSERVE", "bizStep": "cycle_counting",
             "eventTime": "2026-12-01T18:00:00Z", "eventTimeZoneOffset": "+08:00",
             "readPoint": {"id": format!("urn:taizhang:site:{producer}:plant-1")},
             "quantityList": [{"epcClass": format!("urn:taizhang:lot:{EPHEDRINE}:EP-EPCIS"), "quantity": 700, "uom": "MGM"}]}
        ]}
    });
    let hand_file = dir.path().join("erp.jsonld");
    std::fs::write(&hand_file, hand.to_string()).unwrap();
    let before = s.ledger.size();
    let (ok, out, err) = tz(
        a(&[
            "epcis",
            "import",
            hand_file.to_str().unwrap(),
            "--server",
            &url,
        ]),
        key_file(w.p.key()),
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("events[0]: entry") && out.contains("events[1]: entry"),
        "{out}"
    );
    assert_eq!(s.ledger.size(), before + 2);
    assert_eq!(
        payload_at(&s, before),
        produce("plant-1", EPHEDRINE, "EP-EPCIS", 700)
    );
    assert_eq!(
        payload_at(&s, before + 1),
        stock_take("plant-1", EPHEDRINE, "EP-EPCIS", 700)
    );

    // An event at another enterprise's site is refused, even where a site of that name is ours.
    let foreign = serde_json::json!({
        "type": "EPCISDocument", "schemaVersion": "2.0",
        "epcisBody": {"eventList": [
            {"type": "ObjectEvent", "action": "ADD", "bizStep": "commissioning",
             "readPoint": {"id": format!("urn:taizhang:site:{buyer}:plant-1")},
             "quantityList": [{"epcClass": format!("urn:taizhang:lot:{EPHEDRINE}:EP-3"), "quantity": 1, "uom": "MGM"}]}
        ]}
    });
    std::fs::write(&hand_file, foreign.to_string()).unwrap();
    let size = s.ledger.size();
    let (ok, out, err) = tz(
        a(&[
            "epcis",
            "import",
            hand_file.to_str().unwrap(),
            "--server",
            &url,
        ]),
        key_file(w.p.key()),
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        err.contains("epcisBody.eventList[0].readPoint.id: names enterprise")
            && err.contains(&buyer),
        "{err}"
    );
    assert_eq!(s.ledger.size(), size, "nothing submitted");

    // As the buyer: only what it is party to, every site and party named.
    let (ok, out, err) = tz(
        a(&[
            "epcis",
            "export",
            "--server",
            &url,
            "--out",
            doc.to_str().unwrap(),
        ]),
        key_file(w.b.key()),
    )
    .await;
    assert!(ok, "{out}{err}");
    let text = std::fs::read_to_string(&doc).unwrap();
    assert!(
        !text.contains("urn:taizhang:site::") && !text.contains("\"urn:taizhang:party:\""),
        "{text}"
    );
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    for e in d["epcisBody"]["eventList"].as_array().unwrap() {
        let site = e["readPoint"]["id"].as_str().unwrap();
        assert!(site.starts_with("urn:taizhang:site:9"), "{site}");
    }

    // A permit named by a number the ledger does not know: refused before anything is signed.
    let bad = serde_json::json!({
        "type": "EPCISDocument", "schemaVersion": "2.0",
        "epcisBody": {"eventList": [
            {"type": "ObjectEvent", "action": "ADD", "bizStep": "commissioning",
             "readPoint": {"id": format!("urn:taizhang:site:{producer}:plant-1")},
             "quantityList": [{"epcClass": format!("urn:taizhang:lot:{EPHEDRINE}:EP-2"), "quantity": 1, "uom": "MGM"}]},
            {"type": "TransactionEvent", "action": "ADD", "bizStep": "shipping",
             "readPoint": {"id": format!("urn:taizhang:site:{producer}:plant-1")},
             "quantityList": [{"epcClass": format!("urn:taizhang:lot:{EPHEDRINE}:EP-2"), "quantity": 1, "uom": "MGM"}],
             "tz:paymentMethod": "bank_transfer",
             "bizTransactionList": [{"type": "urn:taizhang:btt:permit", "bizTransaction": "urn:taizhang:permit:NOPE-1"}],
             "destinationList": [{"type": "owning_party", "destination": format!("urn:taizhang:party:{buyer}")},
                                 {"type": "location", "destination": format!("urn:taizhang:site:{buyer}:wh-1")}]}
        ]}
    });
    std::fs::write(&hand_file, bad.to_string()).unwrap();
    let size = s.ledger.size();
    let (ok, out, err) = tz(
        a(&[
            "epcis",
            "import",
            hand_file.to_str().unwrap(),
            "--server",
            &url,
        ]),
        key_file(w.p.key()),
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        err.contains("epcisBody.eventList[1].bizTransactionList")
            && err.contains("permit `NOPE-1`"),
        "{err}"
    );
    assert_eq!(s.ledger.size(), size, "nothing submitted");
    // An event shape with no record here is refused by field, and nothing is submitted.
    let agg = serde_json::json!({"type": "EPCISDocument", "schemaVersion": "2.0",
        "epcisBody": {"eventList": [{"type": "AggregationEvent", "action": "ADD", "parentID": "urn:x"}]}});
    std::fs::write(&hand_file, agg.to_string()).unwrap();
    let (ok, _, err) = tz(
        a(&[
            "epcis",
            "import",
            hand_file.to_str().unwrap(),
            "--server",
            &url,
        ]),
        key_file(w.p.key()),
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("epcisBody.eventList[0].type: `AggregationEvent` is not supported"),
        "{err}"
    );
    assert_eq!(s.ledger.size(), size);
}
