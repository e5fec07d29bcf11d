//! The record codec: every record of random histories survives encode/decode exactly, and no
//! truncated or mutated frame makes the decoder panic or over-allocate.

mod common;

use reservoir_engine::workload::SplitMix64;
use reservoir_engine::Lsn;
use reservoir_wal::format::{
    could_begin_record_after, decode_frame, decode_payload, encode_frame, Frame, FRAME_HEADER_BYTES,
};

#[test]
fn every_record_of_random_histories_round_trips() {
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 1..=4 {
        let (_, per_command) = common::history(seed, 3_000);
        for record in per_command.iter().flatten() {
            let mut frame = Vec::new();
            encode_frame(record, record.lsn, 7, &mut frame);
            let (decoded, length) = decode_frame(&frame);
            assert_eq!(length, frame.len());
            match decoded {
                Frame::Record { header, record: read } => {
                    assert_eq!(&read, record);
                    assert_eq!(header.epoch, 7);
                    kinds.insert(header.kind);
                }
                other => panic!("record {} does not read back: {other:?}", record.lsn.0),
            }
        }
    }
    // Every kind but epoch_changed (8), which only a promotion writes.
    let expected: std::collections::BTreeSet<u8> = (1..=9).filter(|&kind| kind != 8).collect();
    assert_eq!(kinds, expected, "the histories cover every record kind");
}

/// The corruption search checks a header's fields before it computes a checksum: the filter
/// must let through every frame the search would accept (else corruption would be cut as a
/// torn tail), and it must turn away nearly every position of random bytes (else a damaged
/// segment costs start-up a checksum over up to 4 MiB at one position in a thousand; found by
/// review as a known limit).
#[test]
fn a_header_filter_never_refuses_a_frame_the_search_accepts() {
    let (_, per_command) = common::history(5, 2_000);
    let mut accepted = 0;
    for record in per_command.iter().flatten() {
        for batch_back in [0, 1, 3] {
            let batch_lsn = Lsn(record.lsn.0.saturating_sub(batch_back).max(1));
            let mut frame = Vec::new();
            encode_frame(record, batch_lsn, 3, &mut frame);
            for expected in [batch_lsn.0 - 1, batch_lsn.0, batch_lsn.0 + 1] {
                let expected = Lsn(expected);
                let search_accepts =
                    matches!(decode_frame(&frame), (Frame::Record { header, .. }, _) if header.batch_lsn > expected);
                let filter_passes = could_begin_record_after(&frame[..FRAME_HEADER_BYTES], expected);
                assert!(filter_passes || !search_accepts, "record {} refused by the filter", record.lsn.0);
                assert_eq!(filter_passes, search_accepts, "the fields decide it for an intact frame");
                accepted += usize::from(search_accepts);
            }
        }
    }
    assert!(accepted > 1_000, "the search accepted {accepted} frames");
    let mut random = SplitMix64::new(7);
    let mut head = [0u8; FRAME_HEADER_BYTES];
    let positions = 1_000_000;
    let mut passed = 0;
    for _ in 0..positions {
        for chunk in head.chunks_mut(8) {
            chunk.copy_from_slice(&random.next_u64().to_le_bytes());
        }
        passed += usize::from(could_begin_record_after(&head, Lsn(1_000)));
    }
    // About one in 65,536 expected (length bound 1/1,024, LSN order 1/2, kind 8/256): ~15.
    assert!(passed < 100, "{passed} of {positions} random headers reach a checksum");
}

#[test]
fn truncated_and_mutated_frames_never_panic() {
    let (_, per_command) = common::history(9, 1_500);
    let mut random = SplitMix64::new(42);
    let mut checked = 0;
    for record in per_command.iter().flatten().take(400) {
        let mut frame = Vec::new();
        encode_frame(record, Lsn(1), 1, &mut frame);
        // Every cut of the payload is an error, never a panic.
        let payload = &frame[FRAME_HEADER_BYTES..];
        let kind = frame[36];
        let payload_length = u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
        for cut in 0..payload_length {
            assert!(decode_payload(kind, &payload[..cut]).is_err(), "a payload cut at {cut} decoded");
        }
        // Random corruption of the frame: decoded as invalid (checksum), never a panic.
        for _ in 0..20 {
            let mut bad = frame.clone();
            let at = random.below(bad.len() as u64) as usize;
            bad[at] ^= 1 << random.below(8);
            if let (Frame::Record { record: read, .. }, _) = decode_frame(&bad) {
                // Only a flip in the zero padding leaves the frame valid.
                assert_eq!(&read, record, "a corrupted frame decoded as a different record");
            }
        }
        // Random payload bytes under every kind: no panic.
        for kind in 0..11u8 {
            let junk: Vec<u8> = (0..random.below(200)).map(|_| random.below(256) as u8).collect();
            let _ = decode_payload(kind, &junk);
        }
        checked += 1;
    }
    assert!(checked > 100);
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    // A Stock payload (kind 3) claiming 2^32 - 1 changes in 40 bytes.
    let mut payload = Vec::new();
    payload.extend_from_slice(&0u32.to_le_bytes()); // tenant
    payload.push(2);
    payload.extend_from_slice(b"op");
    payload.extend_from_slice(&0u64.to_le_bytes()); // fingerprint
    payload.extend_from_slice(&0u16.to_le_bytes()); // reply code
    payload.extend_from_slice(&[0u8; 24]); // deadline, on_hand, count
    payload.extend_from_slice(&u32::MAX.to_le_bytes()); // reply lines
    let error = decode_payload(3, &payload).unwrap_err();
    assert!(error.to_string().contains("element count"), "{error}");
}
