//! Record decoding: any bytes as a `SignedRecord` and as a `RecordBody` (the ledger's strict
//! decoder): no panic, no hang; what decodes re-encodes to something that decodes the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use taizhang::{codec, pb};

fuzz_target!(|data: &[u8]| {
    let _ = pb::SignedRecord::decode(data);
    if let Ok(body) = codec::decode_body(data) {
        let again = codec::encode_body(&body);
        let back = codec::decode_body(&again).expect("a re-encoded body decodes");
        assert_eq!(back, body);
    }
});
