//! The WAL on real files: what is appended is recovered exactly (one thread and two), and
//! each file fault has its documented outcome (docs/wal.md, "Recovery").

mod common;

use common::frames;

use std::path::Path;
use std::sync::Arc;

use reservoir_engine::{Engine, Lsn, Record};
use reservoir_wal::{recover, storage::segment_file_name, FsStorage, Wal, WalError, WalOptions, SEGMENT_BYTES_MIN};

fn options() -> WalOptions {
    WalOptions { segment_bytes: SEGMENT_BYTES_MIN, ..WalOptions::default() }
}

/// Writes `per_command` through a real WAL in `directory`, one command at a time, each
/// acknowledged (synced) before the next, as a server would.
fn write_log(directory: &Path, per_command: &[Vec<Record>]) -> Lsn {
    let storage = Arc::new(FsStorage::new(directory).unwrap());
    let engine = Engine::new(common::config());
    let recovery = recover(storage.as_ref(), &engine, |_| {}).unwrap();
    assert_eq!(recovery.scan.last_lsn, Lsn(0));
    let wal = Wal::start(storage, options(), recovery.scan.position).unwrap();
    for records in per_command {
        wal.append(records.clone()).unwrap();
    }
    let stats = wal.stats();
    let last = wal.close().unwrap();
    assert_eq!(stats.records, last.0);
    last
}

fn recover_into_new(directory: &Path) -> Result<(Engine, reservoir_wal::Recovery), WalError> {
    let storage = FsStorage::new(directory).unwrap();
    let engine = Engine::new(common::config());
    let recovery = recover(&storage, &engine, |_| {})?;
    Ok((engine, recovery))
}

fn flip_bit(directory: &Path, sequence: u64, offset: usize) {
    let path = directory.join(segment_file_name(sequence));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn a_durable_log_recovers_exactly_across_segments() {
    let directory = tempfile::tempdir().unwrap();
    let (engine, per_command) = common::history(11, 30_000);
    let last = write_log(directory.path(), &per_command);
    assert_eq!(last.0 + 1, engine.next_lsn().0);
    let segments = frames(directory.path()).iter().map(|frame| frame.0).max().unwrap();
    assert!(segments >= 1, "the history must span at least two segments");
    let (recovered, recovery) = recover_into_new(directory.path()).unwrap();
    assert_eq!(recovery.scan.torn, None);
    assert_eq!(recovery.records_replayed, last.0);
    assert_eq!(recovered.dump(), engine.dump());
    common::assert_verified(&recovered);

    // And the log continues where it stopped: append more, recover again.
    let storage = Arc::new(FsStorage::new(directory.path()).unwrap());
    let wal = Wal::start(storage, options(), recovery.scan.position).unwrap();
    let mut more = Vec::new();
    let command = reservoir_engine::Command::Expire { limit: 10 };
    recovered.execute(&command, 99_000_000, &mut more);
    wal.append(more).unwrap();
    wal.close().unwrap();
    let (again, _) = recover_into_new(directory.path()).unwrap();
    assert_eq!(again.dump(), recovered.dump());
}

#[test]
fn two_threads_appending_concurrently_recover_exactly() {
    let directory = tempfile::tempdir().unwrap();
    let storage = Arc::new(FsStorage::new(directory.path()).unwrap());
    let engine = Engine::new(common::config());
    let recovery = recover(storage.as_ref(), &engine, |_| {}).unwrap();
    let wal = Wal::start(storage, options(), recovery.scan.position).unwrap();
    std::thread::scope(|scope| {
        for thread in 0..2u64 {
            let (engine, wal) = (&engine, &wal);
            scope.spawn(move || {
                let mut workload = reservoir_engine::workload::Workload::new(thread + 100, &format!("t{thread}"), 10);
                for step in 0..4_000u64 {
                    let command = workload.next_command();
                    let mut records = Vec::new();
                    let reply = engine.execute(&command, 1_000_000 + step * 10, &mut records);
                    workload.observe(&command, &reply);
                    wal.append(records).unwrap();
                }
            });
        }
    });
    let stats = wal.stats();
    let last = wal.close().unwrap();
    assert_eq!(last.0 + 1, engine.next_lsn().0);
    assert!(stats.records > stats.batches, "group commit grouped something: {stats:?}");
    let (recovered, _) = recover_into_new(directory.path()).unwrap();
    assert_eq!(recovered.dump(), engine.dump());
    common::assert_verified(&recovered);
}

#[test]
fn a_truncated_tail_is_cut_and_the_log_continues() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(12, 500);
    let last = write_log(directory.path(), &per_command);
    let all: Vec<Record> = per_command.iter().flatten().cloned().collect();
    let (sequence, offset, lsn) = *frames(directory.path()).last().unwrap();
    assert_eq!(lsn, last.0);
    // A torn write: the last record's second half never reached the disk.
    let path = directory.path().join(segment_file_name(sequence));
    let mut bytes = std::fs::read(&path).unwrap();
    let end = offset + 48;
    bytes[end..end + 64].fill(0);
    std::fs::write(&path, bytes).unwrap();

    let (recovered, recovery) = recover_into_new(directory.path()).unwrap();
    let torn = recovery.scan.torn.clone().expect("a torn tail");
    assert_eq!((torn.sequence, torn.offset), (sequence, offset as u64));
    assert_eq!(recovery.scan.last_lsn.0, last.0 - 1);
    assert_eq!(recovered.dump(), common::replayed(&all, last.0 as usize - 1).dump());
    // The cut is durable: a second recovery finds a clean end.
    let (_, second) = recover_into_new(directory.path()).unwrap();
    assert_eq!(second.scan.torn, None);
    assert_eq!(second.scan.last_lsn.0, last.0 - 1);
}

#[test]
fn a_flipped_bit_in_the_last_record_is_cut_as_a_torn_tail() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(13, 500);
    let last = write_log(directory.path(), &per_command);
    let (sequence, offset, _) = *frames(directory.path()).last().unwrap();
    flip_bit(directory.path(), sequence, offset + 45);
    let (_, recovery) = recover_into_new(directory.path()).unwrap();
    let torn = recovery.scan.torn.expect("cut");
    assert!(torn.why.contains("checksum"), "{}", torn.why);
    assert_eq!(recovery.scan.last_lsn.0, last.0 - 1);
}

#[test]
fn a_flipped_bit_in_a_middle_record_refuses_to_start_and_names_the_place() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(14, 500);
    write_log(directory.path(), &per_command);
    let all = frames(directory.path());
    let (sequence, offset, lsn) = all[all.len() / 2];
    flip_bit(directory.path(), sequence, offset + 41);
    let error = match recover_into_new(directory.path()) {
        Err(error) => error,
        Ok(_) => panic!("a corrupt middle record must stop recovery"),
    };
    match &error {
        WalError::Corrupt { offset: at, after_lsn, .. } => {
            assert_eq!(*at, offset as u64);
            assert_eq!(after_lsn.0, lsn - 1);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let message = error.to_string();
    assert!(message.contains(&segment_file_name(sequence)), "{message}");
    assert!(message.contains(&format!("--to-lsn {}", lsn - 1)), "{message}");
    // Nothing was cut: the file still holds every record after the bad one.
    assert_eq!(frames(directory.path()).len(), all.len() / 2);
}

#[test]
fn a_missing_segment_refuses_to_start() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(15, 30_000);
    write_log(directory.path(), &per_command);
    let last_segment = frames(directory.path()).last().unwrap().0;
    assert!(last_segment >= 1);
    // Remove the first segment: the log no longer reaches back to LSN 1.
    std::fs::remove_file(directory.path().join(segment_file_name(0))).unwrap();
    match recover_into_new(directory.path()) {
        Err(WalError::MissingRecords { needed, .. }) => assert_eq!(needed, Lsn(1)),
        Err(other) => panic!("expected MissingRecords, got {other}"),
        Ok(_) => panic!("recovered without segment 0"),
    }
    // With three or more segments, removing one in the middle is a named gap.
    if last_segment >= 2 {
        std::fs::remove_file(directory.path().join(segment_file_name(1))).unwrap();
        assert!(matches!(recover_into_new(directory.path()), Err(WalError::MissingSegment { .. })));
    }
}

#[test]
fn a_corrupt_segment_header_refuses_to_start() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(16, 200);
    write_log(directory.path(), &per_command);
    flip_bit(directory.path(), 0, 20);
    match recover_into_new(directory.path()) {
        Err(WalError::BadSegmentHeader { why, .. }) => assert!(why.contains("checksum"), "{why}"),
        Err(other) => panic!("expected BadSegmentHeader, got {other}"),
        Ok(_) => panic!("recovered with a corrupt segment header"),
    }
}

#[test]
fn a_zeroed_sector_in_the_middle_refuses_to_start() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(17, 500);
    write_log(directory.path(), &per_command);
    let all = frames(directory.path());
    let (sequence, offset, lsn) = all[all.len() / 3];
    // A lost 512-byte sector in synced data (the frame starts a run of zeros).
    let path = directory.path().join(segment_file_name(sequence));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset..offset + 512].fill(0);
    std::fs::write(&path, bytes).unwrap();
    match recover_into_new(directory.path()) {
        Err(WalError::Corrupt { offset: at, after_lsn, .. }) => {
            assert_eq!((at, after_lsn.0), (offset as u64, lsn - 1));
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("recovered past a zeroed sector: acknowledged records would be lost silently"),
    }
}

/// Regression: a zeroed sector at a frame in a segment that is not the last was read as that
/// segment's end, so start-up refused with an error about the *next* segment ("starts at LSN
/// m + 1 but the one before it ends at ..."), not the damaged place. Now the error names the
/// damaged segment and offset, as it does in the last segment.
#[test]
fn a_zeroed_sector_in_an_earlier_segment_refuses_to_start_and_names_the_place() {
    let (_, per_command) = common::large_imports(12);
    let directory = tempfile::tempdir().unwrap();
    write_log(directory.path(), &per_command);
    let all = frames(directory.path());
    assert!(all.iter().any(|&(sequence, ..)| sequence >= 1), "the log has more than one segment");
    // The second frame of the first segment: synced records before and after it.
    let (sequence, offset, lsn) = all[1];
    assert_eq!(sequence, all[0].0);
    let path = directory.path().join(segment_file_name(sequence));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset..offset + 512].fill(0);
    std::fs::write(&path, bytes).unwrap();
    match recover_into_new(directory.path()) {
        Err(WalError::Corrupt { segment, offset: at, after_lsn, .. }) => {
            assert!(segment.ends_with(&segment_file_name(sequence)), "{segment}");
            assert_eq!((at, after_lsn.0), (offset as u64, lsn - 1));
        }
        Err(other) => panic!("expected Corrupt naming the damaged place, got {other}"),
        Ok(_) => panic!("recovered past a zeroed sector: acknowledged records would be lost silently"),
    }
}
