//! Proof verification on arbitrary sizes, indices, roots and proof hashes: no panic, no hang,
//! and nothing random verifies against the real root of a small tree.
#![no_main]
use libfuzzer_sys::fuzz_target;
use taizhang::merkle::{self, Blake3Hasher, MemoryTree};

fn u64_at(d: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in d.iter().skip(i).take(8).enumerate() {
        b[k] = *x;
    }
    u64::from_be_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let (a, b) = (u64_at(data, 0), u64_at(data, 8));
    let root = &data[16..data.len().min(48)];
    let proof: Vec<&[u8]> = data[data.len().min(48)..].chunks(32).collect();
    let _ = merkle::verify_inclusion::<Blake3Hasher, _>(a, b, root, &proof, root);
    let _ = merkle::verify_consistency::<Blake3Hasher, _>(a, b, root, root, &proof);
    // Against a real tree of 13 leaves: a fuzzed proof must not verify unless it is the proof.
    let mut t = MemoryTree::<Blake3Hasher>::new();
    for i in 0..13u8 {
        t.push([i; 32]);
    }
    let (index, size) = (a % 13, 13);
    let leaf = t.leaf(index).unwrap();
    if merkle::verify_inclusion::<Blake3Hasher, _>(index, size, &leaf, &proof, &t.root()).is_ok() {
        let real = merkle::inclusion_proof::<Blake3Hasher, _>(&t, index, size).unwrap();
        let got: Vec<Vec<u8>> = proof.iter().map(|p| p.to_vec()).collect();
        let want: Vec<Vec<u8>> = real.iter().map(|p| p.to_vec()).collect();
        assert_eq!(got, want, "a forged inclusion proof verified");
    }
});
