//! Checkpoint notes and cosignatures: any text through the signed-note and checkpoint parsers,
//! the ledger-key opener, witness policies and the witness's decision: no panic, and nothing
//! unsigned is accepted.
#![no_main]
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use taizhang::checkpoint::{self, Checkpoint, NoteVerifier, SignedNote};
use taizhang::witness::{self, Cosigned, Policy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Checkpoint::parse(text);
    let key = SigningKey::from_bytes(&[7; 32]);
    let v = NoteVerifier::new("fuzz.example/log", key.verifying_key()).unwrap();
    if let Ok(note) = SignedNote::parse(text) {
        let _ = note.to_note_string();
        let w = SigningKey::from_bytes(&[8; 32]);
        let vkey = checkpoint::cosigner_vkey("w", &w.verifying_key()).unwrap();
        let p = Policy::from_vkeys(&[vkey], 1).unwrap();
        assert!(p.check(&note).is_err(), "a fuzzed note carried a valid cosignature");
    }
    assert!(
        checkpoint::open_checkpoint(text, &v).is_err(),
        "a fuzzed note opened with a key the fuzzer does not have"
    );
    let state = Cosigned { size: 5, root: [1; 32] };
    assert!(witness::decide(&v, Some(&state), text, 5, &[]).is_err());
    let _ = checkpoint::parse_cosigner_vkey(text);
    let _ = NoteVerifier::from_vkey(text);
});
