//! Spot checks over real gRPC and the real CLI: the sample is a function of the checkpoint and
//! the log up to it — the same for every call, recomputed identically offline from an export,
//! different for another checkpoint — with the risk weights the protocol documents.

use crate::common::*;
use ed25519_dalek::SigningKey;
use taizhang::client::RecordSigner;
use taizhang::pb;
use tonic::Code;

struct Scene {
    server: Server,
    w: World,
    other: String,
}

/// Producer (440305: plant-1, plant-2) makes 10 g of L1 and ships 3 g to the buyer (440306:
/// wh-1), which receives 2,990 mg; a stock-take at plant-1 counts 6,000 mg against a book of
/// 7,000. An enterprise in Shanghai (310101: sh-1) is enrolled too.
async fn scene() -> Scene {
    let server = Server::start().await;
    let mut c = server.client().await;
    let mut w = World::setup(&mut c).await;
    let other = code("91310000MA5PTCKX1");
    let mut nat = RecordSigner::new(national_key(), ORIGIN);
    let r = nat.sign(enrol(&other, "310101", vec![], &["sh-1"]), now());
    submit(&mut c, r).await.unwrap();
    let (producer, buyer) = (w.producer.clone(), w.buyer.clone());
    let r = w.p.sign(produce("plant-1", EPHEDRINE, "L1", 10_000), now());
    submit(&mut c, r).await.unwrap();
    let p = w
        .permitted(
            &mut c,
            &producer,
            ship("plant-1", EPHEDRINE, "L1", 3_000, &buyer, "wh-1"),
        )
        .await;
    let r = w.p.sign(p, now());
    let s = submit(&mut c, r).await.unwrap();
    let r = w.b.sign(receive(&s, "wh-1", 2_990), now());
    submit(&mut c, r).await.unwrap();
    let r =
        w.p.sign(stock_take("plant-1", EPHEDRINE, "L1", 6_000), now());
    submit(&mut c, r).await.unwrap();
    Scene { server, w, other }
}

fn request(note: &str, j: &str, k: u32) -> pb::SelectSpotChecksRequest {
    pb::SelectSpotChecksRequest {
        checkpoint: note.into(),
        jurisdiction: j.into(),
        sample_size: k,
    }
}

#[tokio::test]
async fn the_sample_is_determined_by_the_checkpoint_and_weighted_by_risk() {
    let s = scene().await;
    let mut c = s.server.client().await;
    let mut a = audit_client(&s.server.url).await;
    let cp = c
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Everything in 4403: the three sites, with the documented weights.
    let all = a
        .select_spot_checks(request(&cp.note, "4403", 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.population, all.sample.len()), (3, 3));
    let weight = |site: &str| all.sample.iter().find(|x| x.site == site).unwrap();
    // Category 1 (×4), under 1 kg moved (×1), one short delivery (+4) and one variance (+2).
    let p1 = weight("plant-1");
    assert_eq!(
        (p1.category_factor, p1.open_losses, p1.variances, p1.weight),
        (4, 1, 1, 28)
    );
    assert_eq!(p1.entries.len(), 2, "the receipt and the stock-take");
    // The receiving end of the short delivery.
    assert_eq!(weight("wh-1").weight, 4 * 5);
    // A site with nothing on it still has weight 1: every site can be drawn.
    assert_eq!(weight("plant-2").weight, 1);
    assert_eq!(all.total_weight, 28 + 20 + 1);
    // The same question, the same answer; the Shanghai site is outside 4403, inside "".
    let again = a
        .select_spot_checks(request(&cp.note, "4403", 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, all);
    let national = a
        .select_spot_checks(request(&cp.note, "", 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(national.population, 4);
    assert!(national.sample.iter().any(|x| x.enterprise == s.other));
    // Another checkpoint draws with another seed; over a few, the first pick moves.
    let mut firsts = std::collections::BTreeSet::new();
    let mut seeds = std::collections::BTreeSet::new();
    let mut reg = RecordSigner::new(national_key(), ORIGIN).resume(1, {
        // The national key signed one record in the scene.
        let h = c
            .get_signer_head(pb::GetSignerHeadRequest {
                key_id: key_id(&national_key()).0.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        h.prev_body_hash.try_into().unwrap()
    });
    for i in 0..12 {
        let r = reg.sign(
            enrol(
                &code(&format!("91310000MA5PTKA{i:02}")),
                "310101",
                vec![],
                &["x"],
            ),
            now(),
        );
        submit(&mut c, r).await.unwrap();
        let cp = c
            .get_checkpoint(pb::GetCheckpointRequest::default())
            .await
            .unwrap()
            .into_inner();
        let r = a
            .select_spot_checks(request(&cp.note, "4403", 1))
            .await
            .unwrap()
            .into_inner();
        seeds.insert(r.seed.clone());
        firsts.insert(r.sample[0].site.clone());
    }
    assert_eq!(seeds.len(), 12, "every checkpoint has its own seed");
    assert!(
        firsts.len() >= 2,
        "the first draw changed with the checkpoint: {firsts:?}"
    );
}

#[tokio::test]
async fn bad_checkpoints_and_scopes_are_refused() {
    let s = scene().await;
    let mut c = s.server.client().await;
    let mut a = audit_client(&s.server.url).await;
    let cp = c
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    // No witnesses here: the default (latest witnessed) does not exist yet.
    let e = a
        .select_spot_checks(request("", "4403", 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // A checkpoint this ledger did not sign, or one whose root is not this log.
    let forged = taizhang::checkpoint::sign_checkpoint(
        &taizhang::checkpoint::Checkpoint {
            origin: ORIGIN.into(),
            size: cp.size,
            root: [9; 32],
            extensions: vec![],
        },
        &taizhang::checkpoint::NoteSigner::new(ORIGIN, ledger_key()).unwrap(),
    )
    .unwrap();
    let e = a
        .select_spot_checks(request(&forged, "4403", 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("not this ledger's log"),
        "{}",
        e.message()
    );
    let other_key = taizhang::checkpoint::sign_checkpoint(
        &taizhang::checkpoint::Checkpoint {
            origin: ORIGIN.into(),
            size: cp.size,
            root: cp.root.clone().try_into().unwrap(),
            extensions: vec![],
        },
        &taizhang::checkpoint::NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[0xee; 32]))
            .unwrap(),
    )
    .unwrap();
    let e = a
        .select_spot_checks(request(&other_key, "4403", 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for (k, want) in [(0, "sample_size"), (1001, "sample_size")] {
        let e = a
            .select_spot_checks(request(&cp.note, "4403", k))
            .await
            .unwrap_err();
        assert!(e.message().contains(want), "{}", e.message());
    }
    // An enterprise draws nothing; an inspector only inside its jurisdiction.
    let e = audit_as(&s.server.url, s.w.p.key().clone())
        .await
        .select_spot_checks(request(&cp.note, "4403", 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let insp = SigningKey::from_bytes(&[0xb4; 32]);
    let mut s = s;
    let r = s.w.reg.sign(
        register_official(&insp, pb::Role::Inspector, "4403", "team 7"),
        now(),
    );
    submit(&mut c, r).await.unwrap();
    let mut ia = audit_as(&s.server.url, insp).await;
    assert!(ia
        .select_spot_checks(request(&cp.note, "440305", 2))
        .await
        .is_ok());
    let e = ia
        .select_spot_checks(request(&cp.note, "44", 2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn anyone_recomputes_the_sample_from_an_export_with_the_cli() {
    let s = scene().await;
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().to_path_buf();
    std::fs::write(
        p.join("ledger.pub"),
        taizhang::crypto::public_key_text(&ledger_key().verifying_key()),
    )
    .unwrap();
    let url = s.server.url.clone();
    let dir = p.clone();
    let cli = move |args: Vec<String>| {
        let o = std::process::Command::new(bin())
            .args(&args)
            .current_dir(&dir)
            .env("TAIZHANG_QUERY_KEY", key_file(&national_key()))
            .output()
            .unwrap();
        (
            o.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }
    let runs = vec![
        v(&[
            "export",
            "--server",
            &url,
            "--out",
            "log.tzl",
            "--checkpoint",
            "cp.note",
        ]),
        v(&[
            "audit",
            "spot-check",
            "--server",
            &url,
            "--checkpoint",
            "cp.note",
            "--jurisdiction",
            "4403",
            "--sample",
            "2",
            "--json",
        ]),
        v(&[
            "audit",
            "spot-check",
            "--server",
            &url,
            "--checkpoint",
            "cp.note",
            "--jurisdiction",
            "4403",
            "--sample",
            "2",
        ]),
    ];
    let c1 = cli.clone();
    let outs = tokio::task::spawn_blocking(move || runs.into_iter().map(c1).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(outs[0].0, Some(0), "{}", outs[0].1);
    assert_eq!(outs[1].0, Some(0), "{}", outs[1].1);
    std::fs::write(p.join("answer.json"), &outs[1].1).unwrap();
    assert!(
        outs[2].1.contains("Spot checks 抽查 — 2 of 3 sites"),
        "{}",
        outs[2].1
    );
    let verify = |sample: &'static str| {
        let mut a = v(&[
            "verify",
            "spot-check",
            "log.tzl",
            "--checkpoint",
            "cp.note",
            "--ledger-key",
            "ledger.pub",
            "--jurisdiction",
            "4403",
            "--expect",
            "answer.json",
            "--sample",
        ]);
        a.push(sample.into());
        a
    };
    let outs = tokio::task::spawn_blocking(move || {
        vec![verify("2"), verify("3")]
            .into_iter()
            .map(cli)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(outs[0].0, Some(0), "{}", outs[0].1);
    assert!(outs[0]
        .1
        .contains("ok: the server's sample is the one the checkpoint determines"));
    assert_eq!(
        outs[1].0,
        Some(3),
        "another sample size is another draw: {}",
        outs[1].1
    );
}

/// The loop closes: an inspector draws a site, counts it, and the shortfall it signs shows in the
/// site's mass balance and in loss finding, citing the inspection.
#[tokio::test]
async fn an_inspection_of_a_drawn_site_flows_into_mass_balance_and_losses() {
    let mut s = scene().await;
    let mut c = s.server.client().await;
    let insp = SigningKey::from_bytes(&[0xb5; 32]);
    let r = s.w.reg.sign(
        register_official(&insp, pb::Role::Inspector, "4403", "team 8"),
        now(),
    );
    submit(&mut c, r).await.unwrap();
    let cp = c
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut a = audit_as(&s.server.url, insp.clone()).await;
    let drawn = a
        .select_spot_checks(request(&cp.note, "4403", 3))
        .await
        .unwrap()
        .into_inner();
    let site = drawn.sample.iter().find(|x| x.site == "plant-1").unwrap();
    // The team counts 5,500 mg of L1 where the book says 7,000.
    let mut team = RecordSigner::new(insp, ORIGIN);
    let r = team.sign(
        pb::record_body::Payload::Inspection(pb::Inspection {
            enterprise: site.enterprise.clone(),
            site_id: site.site.clone(),
            counts: vec![pb::StockCount {
                substance: EPHEDRINE.into(),
                lot: "L1".into(),
                quantity: Some(taizhang::client::mg(5_500)),
            }],
            seals_checked: vec![],
            notes: "drawn in spot check".into(),
        }),
        now(),
    );
    let ins = submit(&mut c, r).await.unwrap();
    let bal = a
        .mass_balance(pb::MassBalanceRequest {
            enterprise: site.enterprise.clone(),
            site: "plant-1".into(),
            substance: EPHEDRINE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let count = bal.count.expect("the inspection is the latest count");
    assert_eq!(count.entry.unwrap().index, ins.index);
    assert!(count.inspector);
    assert_eq!(
        (count.counted, count.book, count.variance),
        (5_500, 7_000, -1_500)
    );
    let losses = a
        .find_losses(pb::FindLossesRequest {
            scope: Some(pb::find_losses_request::Scope::Enterprise(
                site.enterprise.clone(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let shortfall = losses
        .losses
        .iter()
        .find(|l| {
            l.kind == pb::LossPointKind::CountShortfall as i32
                && l.entries.iter().any(|e| e.index == ins.index)
        })
        .expect("the inspection's shortfall is a loss point");
    // Only what is new since the producer's own count (1,000 short): another 500.
    assert_eq!(shortfall.quantity, 500);
}
