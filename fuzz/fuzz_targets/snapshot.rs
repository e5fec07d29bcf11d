//! Any bytes as a snapshot file: header checks, checksums, rkyv validation and the engine's
//! restore checks refuse them with an error, never a panic or an unbounded allocation. The
//! input is copied to a 16-byte aligned buffer, as a mapped file would be. When the first
//! byte is odd, the checksums are fixed up first, so that the fuzzer reaches rkyv validation
//! and `Engine::restore` instead of stopping at crc32c.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reservoir_wal::snapshot::SNAPSHOT_HEADER_BYTES;
use rkyv::util::AlignedVec;

fuzz_target!(|bytes: &[u8]| {
    let Some((&mode, bytes)) = bytes.split_first() else { return };
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    if mode & 1 == 1 && aligned.len() >= SNAPSHOT_HEADER_BYTES {
        let archive_crc = crc32c(&aligned[SNAPSHOT_HEADER_BYTES..]);
        aligned[32..36].copy_from_slice(&archive_crc.to_le_bytes());
        let length = (aligned.len() - SNAPSHOT_HEADER_BYTES) as u64;
        aligned[24..32].copy_from_slice(&length.to_le_bytes());
        aligned[12..16].fill(0);
        let header_crc = crc32c(&aligned[..SNAPSHOT_HEADER_BYTES]);
        aligned[12..16].copy_from_slice(&header_crc.to_le_bytes());
    }
    let _ = reservoir_wal::snapshot::decode(&aligned, "fuzz");
});

fn crc32c(bytes: &[u8]) -> u32 {
    // Castagnoli, bitwise: the fuzz target needs no extra dependency and speed is not its point.
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}
