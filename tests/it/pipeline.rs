//! The write pipeline: the writer checks and writes group N+1 while group N is still being made
//! durable. Records that depend on a group still in flight — a key registered there, the chain
//! head it moved, a lot it created, a retry or a fork of one of its entries — must be judged
//! exactly as if that group were durable already. Jobs are handed to the writer one by one
//! without waiting for their results, so consecutive jobs land in different groups while the
//! earlier ones are in flight (how many overlap depends on timing; the answers must not).

use crate::common::*;
use std::future::Future;
use taizhang::ledger::{Code, Ledger, Receipt, Refusal, Submission};
use taizhang::pb::{self, record_body::Payload};

fn submission(r: pb::SignedRecord) -> Submission {
    Submission {
        body: r.body,
        signature: r.signature,
        cosignatures: vec![],
    }
}

/// Hands one record to the writer as its own job; the result comes later.
async fn enqueue(
    l: &Ledger,
    r: pb::SignedRecord,
) -> impl Future<Output = Vec<Result<Receipt, Refusal>>> {
    let p = l.prepare(submission(r));
    l.enqueue(vec![p]).await
}

async fn one(f: impl Future<Output = Vec<Result<Receipt, Refusal>>>) -> Result<Receipt, Refusal> {
    let mut v = f.await;
    assert_eq!(v.len(), 1);
    v.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_depending_on_groups_in_flight_are_judged_as_if_durable() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let mut w = World::setup(&mut c).await;
    let l = &s.ledger;
    for round in 0..20 {
        // A new key, registered and used at once; a lot produced and shipped from at once; the
        // producer's chain advanced by every job.
        let k = ed25519_dalek::SigningKey::from_bytes(&[0x60 + round as u8; 32]);
        let mut ks = taizhang::client::RecordSigner::new(k.clone(), ORIGIN);
        let lot = format!("LOT-P{round}");
        // Acetone (category 3): the buyer's purchase filing and the producer's transport
        // filing may be multi-use, so one pair covers the round's shipments.
        let mut filing = permit(
            &format!("PF-{round}"),
            pb::PermitType::PurchaseFiling,
            &w.buyer,
            ACETONE,
            5_020,
            false,
        );
        filing.counterparty = w.producer.clone();
        let filing = w.issue(&mut c, filing).await.expect("purchase filing");
        let mut transport = permit(
            &format!("TF-{round}"),
            pb::PermitType::TransportFiling,
            &w.producer,
            ACETONE,
            20_000,
            false,
        );
        transport.consignee = w.buyer.clone();
        let transport = w.issue(&mut c, transport).await.expect("transport filing");
        let with_permits = |p: Payload| {
            let Payload::Ship(mut s) = p else {
                unreachable!()
            };
            s.permit = Some(receipt_ref(&filing));
            s.transport_permit = Some(receipt_ref(&transport));
            Payload::Ship(s)
        };
        let mut futs = Vec::new();
        futs.push(enqueue(l, w.reg.sign(register(&k, &w.producer), now())).await);
        futs.push(enqueue(l, ks.sign(produce("plant-1", ACETONE, &lot, 10_000), now())).await);
        for i in 0..5 {
            futs.push(
                enqueue(
                    l,
                    w.p.sign(
                        with_permits(ship("plant-1", ACETONE, &lot, 1_000 + i, &w.buyer, "wh-1")),
                        now(),
                    ),
                )
                .await,
            );
        }
        // More than the purchase filing has left (10 of its 5,020 mg): refused, whichever
        // group the earlier draws are in.
        futs.push(
            enqueue(
                l,
                w.p.sign(
                    with_permits(ship("plant-1", ACETONE, &lot, 11, &w.buyer, "wh-1")),
                    now(),
                ),
            )
            .await,
        );
        let mut results = Vec::new();
        for f in futs {
            results.push(one(f).await);
        }
        let overdraw = results.pop().unwrap().expect_err("overdraw refused");
        assert_eq!(
            overdraw.code,
            Code::FailedPrecondition,
            "{}",
            overdraw.message
        );
        assert!(
            overdraw.message.contains("remaining 10 mg"),
            "{}",
            overdraw.message
        );
        // The refused record left a gap in the producer's chain: resume from the ledger's head.
        let head = l.signer_head(&w.p.key_id()).unwrap();
        w.p = taizhang::client::RecordSigner::new(
            ed25519_dalek::SigningKey::from_bytes(&[0x50; 32]),
            ORIGIN,
        )
        .resume(head.next_seq, head.prev_body_hash);
        let receipts: Vec<Receipt> = results.into_iter().map(|r| r.expect("accepted")).collect();
        for pair in receipts.windows(2) {
            assert_eq!(pair[1].index, pair[0].index + 1, "one entry each, in order");
        }
        assert!(receipts.iter().all(|r| !r.duplicate));
    }
    // Everything the pipeline admitted is exactly what a replay of the log admits.
    let views = l.dump_views().unwrap();
    let dir = s.dir.clone();
    s.ledger.close().await;
    let _tmp = s.stop().await;
    taizhang::ledger::reindex(config(&dir)).unwrap();
    let (l2, _) = Ledger::open(config(&dir)).unwrap();
    assert_eq!(l2.dump_views().unwrap(), views);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_or_a_fork_of_an_entry_in_flight_is_answered_like_one_that_is_durable() {
    let s = Server::start().await;
    let mut c = s.client().await;
    let mut w = World::setup(&mut c).await;
    let l = &s.ledger;
    for round in 0..20 {
        let head = w.p.next_seq();
        let rec = w.p.sign(
            produce("plant-1", ACETONE, &format!("ACE-R{round}"), 1_000),
            now(),
        );
        // The same seq with another body, signed by the same key: a fork.
        let mut fork_signer = taizhang::client::RecordSigner::new(
            ed25519_dalek::SigningKey::from_bytes(&[0x50; 32]),
            ORIGIN,
        );
        let h = l.signer_head(&w.p.key_id()).unwrap();
        assert_eq!(h.next_seq, head);
        fork_signer = fork_signer.resume(h.next_seq, h.prev_body_hash);
        let fork = fork_signer.sign(
            produce("plant-1", ACETONE, &format!("ACE-F{round}"), 1_000),
            now(),
        );
        let first = enqueue(l, rec.clone()).await;
        let retry = enqueue(l, rec.clone()).await;
        let forked = enqueue(l, fork).await;
        let first = one(first).await.expect("accepted");
        let retry = one(retry).await.expect("a retry gets the original receipt");
        assert!(retry.duplicate);
        assert_eq!(
            (retry.index, retry.leaf_hash),
            (first.index, first.leaf_hash)
        );
        let e = one(forked).await.expect_err("a fork is refused");
        assert_eq!(e.code, Code::AlreadyExists, "{}", e.message);
        assert!(e.message.contains("equivocation evidence"), "{}", e.message);
    }
    // Every fork was kept as evidence, against the entry it conflicts with.
    let ev = l.equivocations(&w.p.key_id()).unwrap();
    assert_eq!(ev.len(), 20);
    let _ = w.reg.next_seq();
}
