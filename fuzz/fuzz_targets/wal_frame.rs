//! Any bytes where a WAL frame should be: `decode_frame` never panics and never allocates
//! beyond the payload it was given; a record it accepts re-encodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reservoir_wal::format::{decode_frame, decode_payload, encode_frame, Frame};

fuzz_target!(|bytes: &[u8]| {
    if let (Frame::Record { header, record }, length) = decode_frame(bytes) {
        assert!(length <= bytes.len());
        let mut again = Vec::new();
        encode_frame(&record, header.batch_lsn, header.epoch, &mut again);
        assert_eq!(&again[..], &bytes[..length], "a decoded frame re-encodes to its bytes");
    }
    // The payload decoder on its own, with the first byte as the kind.
    if let Some((&kind, payload)) = bytes.split_first() {
        let _ = decode_payload(kind, payload);
    }
});
