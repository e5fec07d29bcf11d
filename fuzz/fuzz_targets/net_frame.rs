//! Any bytes from the network: the stream decoder and the frame decoders never panic, never
//! buffer more than one frame, and a client frame they accept re-encodes to its bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reservoir_net::wire::{DECODER_RETAINED_BYTES_MAX, FRAME_BYTES_MAX, FRAME_HEADER_BYTES};
use reservoir_net::{decode_client_frame, decode_server_frame, FrameDecoder};

fuzz_target!(|bytes: &[u8]| {
    // The whole input as one frame, both ways.
    if let Ok(frame) = decode_client_frame(bytes) {
        let mut again = Vec::new();
        if frame.encode(&mut again).is_ok() {
            assert_eq!(again, bytes, "an accepted client frame re-encodes to its bytes");
        }
    }
    let _ = decode_server_frame(bytes);
    // As a stream, fed in uneven pieces.
    let mut decoder = FrameDecoder::new();
    let mut rest = bytes;
    let mut step = 1;
    while !rest.is_empty() {
        let piece = &rest[..step.min(rest.len())];
        match decoder.push(piece) {
            Ok(taken) => rest = &rest[taken..],
            Err(_) => break,
        }
        assert!(decoder.buffered_bytes() <= FRAME_HEADER_BYTES + FRAME_BYTES_MAX.max(DECODER_RETAINED_BYTES_MAX));
        if let Some(frame) = decoder.pop() {
            let _ = decode_client_frame(frame);
        }
        step = step % 7 + 1;
    }
});
