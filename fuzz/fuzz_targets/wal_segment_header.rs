//! Any bytes as a segment header: `SegmentHeader::decode` never panics, and what it accepts
//! encodes back to the same 64 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reservoir_wal::format::{SegmentHeader, SEGMENT_HEADER_BYTES};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(header) = SegmentHeader::decode(bytes) {
        assert_eq!(&header.encode()[..], &bytes[..SEGMENT_HEADER_BYTES]);
    }
});
