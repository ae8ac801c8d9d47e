//! Leaf and frame decoding: any bytes as a leaf, and as a run of segment/export frames. A leaf
//! that decodes encodes back to exactly the same bytes (the encoding is canonical).
#![no_main]
use libfuzzer_sys::fuzz_target;
use taizhang::codec::{self, Leaf};

fuzz_target!(|data: &[u8]| {
    if let Ok(leaf) = Leaf::decode(data) {
        assert_eq!(leaf.encode(), data, "leaf decoding accepted a non-canonical encoding");
    }
    let _ = codec::scan_frames(data, 0, [0; 32], |_, leaf, _| {
        Leaf::decode(leaf).map(|_| ()).map_err(|e| e.to_string())
    });
});
