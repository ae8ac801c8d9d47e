//! The pure core, one operation at a time (criterion): leaf encoding and decoding, leaf and
//! node hashing, Merkle append, inclusion and consistency proofs (generation over a tree of
//! `TZ_BENCH_TREE` leaves, default 1 M; verification), and `verify_strict`, the baseline
//! every other figure is a ratio to.
//!
//! Run: `cargo bench --bench core` (`TZ_BENCH_TREE=10000000 cargo bench --bench core` for
//! proofs at 10 M leaves; the tree then takes ~640 MB).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::{Signer, SigningKey};
use taizhang::codec::{self, Cosig, Leaf};
use taizhang::crypto::KeyId;
use taizhang::merkle::{self, Blake3Hasher, MemoryTree, TreeHasher};

/// A leaf of the size a `Ship` with one cosignature has on the ledger (~300 bytes of body).
fn typical_leaf() -> Leaf {
    let key = SigningKey::from_bytes(&[7; 32]);
    let body = vec![0x5a; 300];
    Leaf {
        index: 1_234_567,
        integrated_time_ms: 1_764_000_000_000,
        prev_leaf_hash: [3; 32],
        signature: key.sign(&body).to_bytes(),
        cosignatures: vec![Cosig {
            key_id: KeyId::of(&key.verifying_key()),
            signature: [9; 64],
        }],
        body,
    }
}

fn leaf_hash(i: u64) -> merkle::Hash {
    Blake3Hasher::leaf(&i.to_be_bytes())
}

fn encoding(c: &mut Criterion) {
    let leaf = typical_leaf();
    let bytes = leaf.encode();
    let mut g = c.benchmark_group("leaf");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| black_box(&leaf).encode()));
    g.bench_function("decode", |b| {
        b.iter(|| Leaf::decode(black_box(&bytes)).expect("decodes"))
    });
    g.bench_function("leaf_hash", |b| {
        b.iter(|| codec::leaf_hash(black_box(&bytes)))
    });
    g.finish();
    let (l, r) = (leaf_hash(1), leaf_hash(2));
    c.bench_function("node_hash", |b| {
        b.iter(|| Blake3Hasher::node(black_box(&l), black_box(&r)))
    });
}

fn tree(c: &mut Criterion) {
    let n: u64 = std::env::var("TZ_BENCH_TREE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let mut t = MemoryTree::<Blake3Hasher>::new();
    for i in 0..n {
        t.push(leaf_hash(i));
    }
    let mut g = c.benchmark_group(format!("tree_{n}"));
    g.throughput(Throughput::Elements(1));
    // Amortized: `iters` leaves pushed into an empty tree (every node they complete hashed).
    g.bench_function("append", |b| {
        b.iter_custom(|iters| {
            let mut fresh = MemoryTree::<Blake3Hasher>::new();
            let start = std::time::Instant::now();
            for i in 0..iters {
                let mut h = [0u8; 32];
                h[..8].copy_from_slice(&i.to_le_bytes());
                fresh.push(h);
            }
            start.elapsed()
        })
    });
    g.bench_function("root", |b| b.iter(|| t.root()));
    // Indices spread over the whole tree, so no proof shares a cached path with the last.
    let mut k = 0u64;
    let mut next = move || {
        k = (k + 0x9e37_79b9) % n;
        k
    };
    let root = t.root();
    g.bench_function("inclusion_proof", |b| {
        b.iter(|| merkle::inclusion_proof::<Blake3Hasher, _>(&t, next(), n).expect("in range"))
    });
    let i = n / 3;
    let proof = merkle::inclusion_proof::<Blake3Hasher, _>(&t, i, n).expect("in range");
    let leaf = t.leaf(i).expect("leaf");
    g.bench_function("verify_inclusion", |b| {
        b.iter(|| {
            merkle::verify_inclusion::<Blake3Hasher, _>(i, n, &leaf, black_box(&proof), &root)
                .expect("verifies")
        })
    });
    g.bench_function("consistency_proof", |b| {
        b.iter(|| {
            let from = next().max(1);
            merkle::consistency_proof::<Blake3Hasher, _>(&t, from, n).expect("in range")
        })
    });
    let from = n / 3 + 17;
    let old = merkle::root_at::<Blake3Hasher, _>(&t, from).expect("root");
    let proof = merkle::consistency_proof::<Blake3Hasher, _>(&t, from, n).expect("in range");
    g.bench_function("verify_consistency", |b| {
        b.iter(|| {
            merkle::verify_consistency::<Blake3Hasher, _>(from, n, &old, &root, black_box(&proof))
                .expect("verifies")
        })
    });
    g.finish();
}

fn signatures(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[5; 32]);
    let vk = key.verifying_key();
    let body = vec![0x42; 300];
    let sig = key.sign(&body);
    let mut g = c.benchmark_group("ed25519");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_strict", |b| {
        b.iter(|| vk.verify_strict(black_box(&body), &sig).expect("verifies"))
    });
    g.bench_function("sign", |b| b.iter(|| key.sign(black_box(&body))));
    g.finish();
}

criterion_group!(benches, encoding, tree, signatures);
criterion_main!(benches);
