//! Retention, the archive, the snapshot policy and point-in-time restore, on real files: what
//! a snapshot covers moves to the archive and recovery still reads it when it falls back;
//! pruning keeps the archive within its bound but never deletes what a fallback needs; a
//! restore to any LSN or moment equals the reference replay of the log up to it, also to the
//! point before a corrupt record; a restored directory is a new history that takes writes.

mod common;

use std::path::Path;
use std::time::Duration;

use reservoir_engine::workload::Workload;
use reservoir_engine::{Lsn, Record};
use reservoir_wal::archive::{archive_snapshot_directory, archive_wal_directory, disk_usage, retain};
use reservoir_wal::restore::{restore, write_data_directory, RestoreTarget};
use reservoir_wal::snapshot::{self, snapshot_file_name};
use reservoir_wal::{
    build_snapshot, open_data_directory, snapshot_directory, wal_directory, FsStorage, Opened, RetentionPolicy,
    SnapshotPolicy, Snapshotter, Storage as _, WalError,
};

use common::{files_only_options as options, open_files_only as open};

/// A data directory being written, with every record it was given (the reference log).
struct Run {
    opened: Opened,
    workload: Workload,
    records: Vec<Record>,
    now_ms: u64,
}

impl Run {
    fn new(directory: &Path, seed: u64) -> Run {
        Run { opened: open(directory), workload: Workload::new(seed, "r", 200), records: Vec::new(), now_ms: 1_000_000 }
    }

    /// `commands` commands, 50 ms of simulated time apart.
    fn drive(&mut self, commands: usize) {
        for _ in 0..commands {
            self.now_ms += 50;
            let command = self.workload.next_command();
            let mut records = Vec::new();
            let reply = self.opened.engine.execute(&command, self.now_ms, &mut records);
            self.workload.observe(&command, &reply);
            self.records.extend(records.iter().cloned());
            self.opened.wal.append(records).unwrap();
        }
    }

    fn snapshot(&self, directory: &Path, policy: &RetentionPolicy) -> reservoir_wal::RetentionReport {
        let durable = self.opened.wal.durable_lsn();
        let (written, report) =
            build_snapshot(directory, common::config(), Some(durable), self.now_ms, policy).unwrap();
        assert_eq!(written.covers_lsn, durable);
        report
    }
}

fn live_segments(directory: &Path) -> Vec<u64> {
    FsStorage::new(&wal_directory(directory)).unwrap().list().unwrap()
}

fn archived_segments(directory: &Path) -> Vec<u64> {
    FsStorage::new(&archive_wal_directory(directory)).unwrap().list().unwrap()
}

fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Enough commands to fill several minimum-size segments.
const COMMANDS_PER_PHASE: usize = 30_000;

#[test]
fn what_the_newest_snapshot_covers_moves_to_the_archive_and_a_fallback_still_reads_it() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 1);
    run.drive(COMMANDS_PER_PHASE);
    let first = run.snapshot(directory.path(), &RetentionPolicy::default());
    let first_lsn = run.opened.wal.durable_lsn();
    run.drive(COMMANDS_PER_PHASE);
    let second = run.snapshot(directory.path(), &RetentionPolicy::default());
    run.drive(500);
    let expected = run.opened.engine.dump();
    run.opened.wal.close().unwrap();

    let archived = archived_segments(directory.path());
    assert!(first.segments_archived + second.segments_archived >= 2, "{first:?} {second:?}");
    assert_eq!(archived.len() as u64, first.segments_archived + second.segments_archived);
    let live = live_segments(directory.path());
    assert_eq!(archived.last().unwrap() + 1, live[0], "the archive ends where the live log begins");
    assert_eq!(second.usage.archive_segments, archived.len() as u64);

    // The newest snapshot covers what moved: recovery reads only the live log after it.
    let recovered = open(directory.path());
    assert_eq!(recovered.engine.dump(), expected);
    drop(recovered);

    // A corrupt newest snapshot: the fallback to the first one replays archived segments.
    let snapshots = snapshot::list(&snapshot_directory(directory.path())).unwrap();
    assert_eq!(snapshots.len(), 2);
    corrupt(&snapshot_directory(directory.path()).join(snapshot_file_name(snapshots[1])));
    let recovered = open(directory.path());
    assert_eq!(recovered.snapshot, Some(first_lsn));
    assert_eq!(recovered.engine.dump(), expected, "the fallback read the archive");
    common::assert_verified(&recovered.engine);
}

#[test]
fn pruning_bounds_the_archive_but_keeps_what_a_fallback_to_the_oldest_snapshot_needs() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 2);
    let mut snapshots = Vec::new();
    for _ in 0..5 {
        run.drive(COMMANDS_PER_PHASE / 2);
        run.snapshot(directory.path(), &RetentionPolicy::default());
        snapshots.push(run.opened.wal.durable_lsn());
    }
    let before = disk_usage(directory.path()).unwrap();
    assert_eq!(before.snapshots, 3, "the newest three stay live");
    assert_eq!(before.archive_snapshots, 2, "older ones move to the archive");
    assert_eq!(before.log_first_lsn, Some(Lsn(1)), "nothing was pruned yet");

    // An archive bounded to zero bytes keeps only what recovery may need.
    run.drive(200);
    let report =
        run.snapshot(directory.path(), &RetentionPolicy { archive_age_max_ms: u64::MAX, archive_bytes_max: 0 });
    let expected = run.opened.engine.dump();
    run.opened.wal.close().unwrap();
    assert!(report.segments_pruned >= 1 && report.snapshots_pruned >= 2, "{report:?}");
    assert_eq!(report.usage.archive_snapshots, 0);
    let oldest_live = snapshot::list(&snapshot_directory(directory.path())).unwrap()[0];
    let first_kept = report.usage.log_first_lsn.unwrap();
    assert!(first_kept.0 <= oldest_live.0 + 1, "the log still reaches back to the oldest live snapshot");

    // Fall back to the oldest live snapshot: the kept archive suffices.
    for lsn in snapshot::list(&snapshot_directory(directory.path())).unwrap().into_iter().skip(1) {
        corrupt(&snapshot_directory(directory.path()).join(snapshot_file_name(lsn)));
    }
    let recovered = open(directory.path());
    assert_eq!(recovered.snapshot, Some(oldest_live));
    assert_eq!(recovered.engine.dump(), expected);
}

#[test]
fn pruning_by_age_removes_only_old_archive_files() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 3);
    for _ in 0..5 {
        run.drive(COMMANDS_PER_PHASE / 2);
        run.snapshot(directory.path(), &RetentionPolicy::default());
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    // Files written seconds ago are younger than an hour: nothing goes.
    let young = retain(
        directory.path(),
        &RetentionPolicy { archive_age_max_ms: 3_600_000, archive_bytes_max: u64::MAX },
        now_ms,
    )
    .unwrap();
    assert_eq!((young.segments_pruned, young.snapshots_pruned), (0, 0));
    // A day later, everything old in the archive goes but what a fallback needs.
    let later = now_ms + 24 * 3_600_000;
    let old = retain(
        directory.path(),
        &RetentionPolicy { archive_age_max_ms: 3_600_000, archive_bytes_max: u64::MAX },
        later,
    )
    .unwrap();
    assert_eq!(old.snapshots_pruned, 2, "{old:?}");
    assert!(std::fs::read_dir(archive_snapshot_directory(directory.path())).unwrap().next().is_none());
    run.opened.wal.close().unwrap();
}

/// The engine a reference replay of the first `count` records builds.
fn reference(records: &[Record], count: usize) -> reservoir_engine::Dump {
    common::replayed(records, count).dump()
}

#[test]
fn a_restore_to_any_lsn_equals_the_reference_replay_up_to_it() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 4);
    run.drive(COMMANDS_PER_PHASE / 2);
    run.snapshot(directory.path(), &RetentionPolicy::default());
    let snapshot_lsn = run.opened.wal.durable_lsn();
    run.drive(COMMANDS_PER_PHASE / 2);
    run.snapshot(directory.path(), &RetentionPolicy::default());
    run.drive(2_000);
    let last = run.opened.wal.close().unwrap();
    let records = run.records;
    assert_eq!(records.len() as u64, last.0);

    // Before the first snapshot (the log from LSN 1), at a snapshot, between, after the last.
    for target in [1, 777, snapshot_lsn.0, snapshot_lsn.0 + 1, last.0 - 1_000, last.0] {
        let restored =
            restore(directory.path(), common::config(), RestoreTarget::Lsn(Lsn(target)), true, |_, _| {}).unwrap();
        assert_eq!(restored.target.lsn, Lsn(target));
        assert_eq!(restored.engine.dump(), reference(&records, target as usize), "inclusive restore to LSN {target}");
        if target == snapshot_lsn.0 {
            assert_eq!(restored.base_snapshot, Some(snapshot_lsn));
            assert_eq!(restored.records_replayed, 0);
        }
    }
    let exclusive =
        restore(directory.path(), common::config(), RestoreTarget::Lsn(Lsn(900)), false, |_, _| {}).unwrap();
    assert_eq!(exclusive.engine.dump(), reference(&records, 899), "exclusive stops before the target");

    match restore(directory.path(), common::config(), RestoreTarget::Lsn(Lsn(last.0 + 5)), true, |_, _| {}) {
        Err(WalError::Restore(why)) => assert!(why.contains(&format!("the log ends at LSN {}", last.0)), "{why}"),
        other => panic!("a target past the end: {:?}", other.map(|restored| restored.target)),
    }
}

#[test]
fn a_restore_to_a_time_stops_before_the_first_record_stamped_after_it() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 5);
    run.drive(3_000);
    run.snapshot(directory.path(), &RetentionPolicy::default());
    run.drive(3_000);
    run.opened.wal.close().unwrap();
    let records = run.records;

    // A moment between two records' stamps, and one exactly on a record's stamp.
    let within = records[4_000].timestamp_ms;
    for (unix_ms, inclusive) in [(within - 1, true), (within, true), (within, false), (u64::MAX, true)] {
        let restored =
            restore(directory.path(), common::config(), RestoreTarget::Time { unix_ms }, inclusive, |_, _| {}).unwrap();
        let past =
            |record: &&Record| if inclusive { record.timestamp_ms > unix_ms } else { record.timestamp_ms >= unix_ms };
        let expected = records.iter().position(|record| past(&record)).unwrap_or(records.len());
        assert_eq!(restored.target.lsn, Lsn(expected as u64), "time {unix_ms} inclusive={inclusive}");
        assert_eq!(restored.engine.dump(), reference(&records, expected));
        match restored.target.first_excluded {
            Some((lsn, stamp)) => {
                assert_eq!(lsn, Lsn(expected as u64 + 1));
                assert_eq!(stamp, records[expected].timestamp_ms);
            }
            None => assert_eq!(expected, records.len()),
        }
    }
}

#[test]
fn a_restore_reaches_the_lsn_before_a_corrupt_record_that_stops_start_up() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 6);
    run.drive(2_000);
    run.opened.wal.close().unwrap();
    let records = run.records;
    let segment = wal_directory(directory.path()).join(reservoir_wal::storage::segment_file_name(0));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[300_000] ^= 0x04;
    std::fs::write(&segment, bytes).unwrap();

    let after_lsn = match open_data_directory(directory.path(), common::config(), options(), |_| {}) {
        Err(WalError::Corrupt { after_lsn, .. }) => after_lsn,
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a corrupt middle record was accepted"),
    };
    assert!(after_lsn.0 > 100 && (after_lsn.0 as usize) < records.len());
    let restored = restore(directory.path(), common::config(), RestoreTarget::Lsn(after_lsn), true, |_, _| {}).unwrap();
    assert_eq!(restored.engine.dump(), reference(&records, after_lsn.0 as usize));
    // One past it cannot be reached: the corrupt record is in the way.
    let past = restore(directory.path(), common::config(), RestoreTarget::Lsn(Lsn(after_lsn.0 + 1)), true, |_, _| {});
    assert!(matches!(past, Err(WalError::Corrupt { .. })), "{:?}", past.map(|restored| restored.target));
}

#[test]
fn a_restored_directory_is_a_new_history_that_recovers_and_takes_writes() {
    let (source, into) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut run = Run::new(source.path(), 7);
    run.drive(3_000);
    run.opened.wal.close().unwrap();
    let target = Lsn(2_500);
    let restored = restore(source.path(), common::config(), RestoreTarget::Lsn(target), true, |_, _| {}).unwrap();
    let written = write_data_directory(&restored, into.path(), 42, "test restore\n").unwrap();
    assert_eq!(written.covers_lsn, target);
    assert!(matches!(
        write_data_directory(&restored, into.path(), 42, "again\n"),
        Err(WalError::Restore(why)) if why.contains("not empty")
    ));

    let mut again = Run {
        opened: open(into.path()),
        workload: Workload::new(70, "n", 200),
        records: Vec::new(),
        now_ms: 9_000_000,
    };
    assert_eq!(again.opened.snapshot, Some(target));
    assert_eq!(again.opened.engine.next_lsn(), Lsn(target.0 + 1));
    again.drive(500);
    let expected = again.opened.engine.dump();
    again.opened.wal.close().unwrap();
    let reopened = open(into.path());
    assert_eq!(reopened.engine.dump(), expected);
    let source_history = reservoir_wal::log_history(&FsStorage::new(&wal_directory(source.path())).unwrap()).unwrap();
    let new_history = reservoir_wal::log_history(&FsStorage::new(&wal_directory(into.path())).unwrap()).unwrap();
    assert!(source_history.is_some() && new_history.is_some());
    assert_ne!(source_history, new_history, "a restore is a new history");
}

/// Regression (review): a time with no record at or before it on disk resolved to the LSN
/// just before the log's first record, or to 0 (an empty ledger) when the directory had a
/// snapshot and no log yet, whatever the snapshot's time: a restored directory, restored
/// again to a time before its snapshot, gave a later state or nothing, without a word. A time
/// at or after the snapshot's gives its state; one before it is refused.
#[test]
fn a_restore_to_a_time_before_the_oldest_reachable_state_is_refused() {
    let (source, into) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut run = Run::new(source.path(), 9);
    run.drive(2_000);
    run.opened.wal.close().unwrap();
    let target = Lsn(1_500);
    let restored = restore(source.path(), common::config(), RestoreTarget::Lsn(target), true, |_, _| {}).unwrap();
    let expected = restored.engine.dump();
    const TAKEN_MS: u64 = 5_000_000;
    write_data_directory(&restored, into.path(), TAKEN_MS, "test restore\n").unwrap();
    let at = |unix_ms: u64| restore(into.path(), common::config(), RestoreTarget::Time { unix_ms }, true, |_, _| {});
    let refused = |outcome: Result<reservoir_wal::restore::Restored, WalError>| match outcome {
        Err(WalError::Restore(why)) => assert!(why.contains("cannot be restored from here"), "{why}"),
        other => panic!("a time before the snapshot: {:?}", other.map(|restored| restored.target)),
    };

    // A snapshot and no log yet.
    let restored = at(TAKEN_MS).unwrap();
    assert_eq!((restored.target.lsn, restored.engine.dump()), (target, expected.clone()));
    refused(at(TAKEN_MS - 1));

    // The log starts after the snapshot, its records stamped later than the time asked for.
    let mut again = Run {
        opened: open(into.path()),
        workload: Workload::new(71, "n", 200),
        records: Vec::new(),
        now_ms: 9_000_000,
    };
    again.drive(300);
    again.opened.wal.close().unwrap();
    let restored = at(TAKEN_MS + 1).unwrap();
    assert_eq!((restored.target.lsn, restored.engine.dump()), (target, expected));
    refused(at(TAKEN_MS - 1));
}

/// Regression (review): an offline snapshot (`reservoir snapshot --data-dir`) after a failed
/// write or sync read the log through the page cache, which may hold records the disk lost;
/// the snapshot covered them, recovery (reading the disk) cut them, and the directory refused
/// to start. With the log marked, the offline snapshot is refused until a start has read the
/// log back and cleared the mark.
#[test]
fn an_offline_snapshot_of_a_log_marked_write_failed_is_refused_until_a_start() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 10);
    run.drive(500);
    run.opened.wal.close().unwrap();
    let live = FsStorage::new(&wal_directory(directory.path())).unwrap();
    reservoir_wal::Storage::mark_write_failed(&live).unwrap();
    let policy = RetentionPolicy::default();
    match build_snapshot(directory.path(), common::config(), None, 1, &policy) {
        Err(WalError::Config(why)) => assert!(why.contains("WRITE_FAILED"), "{why}"),
        other => panic!("a snapshot of a marked log: {:?}", other.map(|(written, _)| written.covers_lsn)),
    }
    let reopened = open(directory.path());
    reopened.wal.close().unwrap();
    assert!(!reservoir_wal::Storage::write_failed_marked(&live), "the start read the log back and cleared the mark");
    let (written, _) = build_snapshot(directory.path(), common::config(), None, 1, &policy).unwrap();
    assert!(written.covers_lsn.0 > 0);
}

#[test]
fn the_snapshotter_follows_its_record_policy_and_takes_one_on_demand() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 8);
    let policy = SnapshotPolicy { every_records: 2_000, every_ms: 0, retention: RetentionPolicy::default() };
    let reader = run.opened.wal.durable_lsn_reader();
    let snapshotter =
        Snapshotter::start(directory.path().to_owned(), common::config(), policy, Lsn(0), move || reader.durable_lsn())
            .unwrap();
    run.drive(COMMANDS_PER_PHASE);
    let durable = run.opened.wal.durable_lsn();
    // The record policy fires on its own once 2,000 records are durable past the last one.
    assert!(snapshotter.wait_for(Lsn(durable.0 - 2_000), Duration::from_secs(60)), "{:?}", snapshotter.stats());
    run.drive(10);
    snapshotter.request();
    let now_durable = run.opened.wal.durable_lsn();
    assert!(snapshotter.wait_for(now_durable, Duration::from_secs(60)), "{:?}", snapshotter.stats());
    let stats = snapshotter.stop();
    assert!(stats.snapshots >= 2, "{stats:?}");
    assert!(stats.last_error.is_none(), "{stats:?}");
    assert!(stats.segments_archived >= 1, "{stats:?}");
    let expected = run.opened.engine.dump();
    run.opened.wal.close().unwrap();
    let recovered = open(directory.path());
    assert_eq!(recovered.snapshot, Some(stats.last_covers_lsn));
    assert_eq!(recovered.engine.dump(), expected);
}

#[test]
fn a_data_directory_has_one_writer_at_a_time() {
    let directory = tempfile::tempdir().unwrap();
    let first = open(directory.path());
    match open_data_directory(directory.path(), common::config(), options(), |_| {}) {
        Err(WalError::Locked { holder, .. }) => assert_eq!(holder, format!("pid {}", std::process::id())),
        Err(other) => panic!("expected the lock to refuse, got {other}"),
        Ok(_) => panic!("two writers opened one data directory"),
    }
    // The lock goes with the writer.
    first.wal.close().unwrap();
    let again = open(directory.path());
    drop(again);
}

/// Regression (review, eleventh session): a segment whose header names another sequence than
/// its file (one copied over another) failed an `assert_eq!` where the archive reads a
/// segment's first LSN, panicking `verify` and the snapshotter's retention. It is an error
/// naming the file now.
#[test]
fn a_segment_whose_header_names_another_sequence_is_an_error_not_a_panic() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 4);
    run.drive(COMMANDS_PER_PHASE);
    run.opened.wal.close().unwrap();
    let segments = live_segments(directory.path());
    assert!(segments.len() >= 2, "{segments:?}");
    let wal = wal_directory(directory.path());
    let second = wal.join(reservoir_wal::storage::segment_file_name(segments[1]));
    std::fs::copy(&second, wal.join(reservoir_wal::storage::segment_file_name(segments[0]))).unwrap();
    let error = disk_usage(directory.path()).unwrap_err();
    assert!(matches!(error, WalError::BadSegmentHeader { .. }), "{error}");
    assert!(error.to_string().contains(&format!("the file name {}", segments[0])), "{error}");
}

/// Regression (review, eleventh session): a restore to a time read the log from LSN 1 and took
/// the log's last whole record as the end, whatever the snapshots held. A log that ends inside
/// what the newest snapshot covers (start-up refuses it, `LogBehindSnapshot`, and restore is
/// the way out) resolved to its last whole record, dropping acknowledged records the snapshot
/// held; and one damaged byte in a segment every snapshot covers failed every restore to a
/// time. The newest snapshot taken by the target is now a floor, and the search starts after it.
#[test]
fn a_restore_to_a_time_starts_from_the_newest_snapshot_taken_by_it() {
    // A log whose last record is gone, which the snapshot covers.
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 8);
    run.drive(2_000);
    run.snapshot(directory.path(), &RetentionPolicy::default());
    let covered = run.opened.wal.close().unwrap();
    let records = run.records;
    let storage = reservoir_wal::layered_storage_existing(directory.path());
    let before_last = reservoir_wal::scan_until(&storage, Lsn(1), Lsn(1), |record| {
        Ok(if record.lsn.0 + 1 == covered.0 { reservoir_wal::Flow::Stop } else { reservoir_wal::Flow::Continue })
    })
    .unwrap()
    .position;
    let end = reservoir_wal::scan(&storage, Lsn(1), Lsn(1), |_| Ok(())).unwrap().position;
    assert_eq!((before_last.sequence, end.next_lsn), (end.sequence, Lsn(covered.0 + 1)));
    let segment = storage.describe(end.sequence);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[before_last.offset as usize..end.offset as usize].fill(0);
    std::fs::write(&segment, bytes).unwrap();
    match open_data_directory(directory.path(), common::config(), options(), |_| {}) {
        Err(WalError::LogBehindSnapshot { covered: through, .. }) => assert_eq!(through, covered),
        other => panic!("expected LogBehindSnapshot, got {:?}", other.map(|opened| opened.engine.next_lsn())),
    }
    let restored =
        restore(directory.path(), common::config(), RestoreTarget::Time { unix_ms: u64::MAX }, true, |_, _| {})
            .unwrap();
    assert_eq!(restored.target.lsn, covered, "every acknowledged record, the last one from the snapshot");
    assert_eq!(restored.engine.dump(), reference(&records, covered.0 as usize));

    // Damage in a segment the snapshot covers: a time after the snapshot needs none of it.
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 9);
    run.drive(COMMANDS_PER_PHASE);
    run.snapshot(directory.path(), &RetentionPolicy::default());
    let snapshot_lsn = run.opened.wal.durable_lsn();
    run.drive(2_000);
    run.opened.wal.close().unwrap();
    let records = run.records;
    let storage = reservoir_wal::layered_storage_existing(directory.path());
    let first = storage.list().unwrap()[0];
    corrupt(Path::new(&storage.describe(first)));
    let within = records[snapshot_lsn.0 as usize + 500].timestamp_ms;
    for unix_ms in [within, u64::MAX] {
        let restored =
            restore(directory.path(), common::config(), RestoreTarget::Time { unix_ms }, true, |_, _| {}).unwrap();
        let expected = records.iter().position(|record| record.timestamp_ms > unix_ms).unwrap_or(records.len());
        assert_eq!(restored.target.lsn, Lsn(expected as u64), "time {unix_ms}");
        assert_eq!(restored.engine.dump(), reference(&records, expected));
    }
}

/// Regression (review, eleventh session): pruning went oldest first and stopped at the first
/// file within the policy, so the oldest archived snapshot could go while the segments after
/// it stayed: segments no snapshot could start a replay of, kept for good, and a restore to a
/// time within them failed on the missing base. Once the log no longer starts at LSN 1, the
/// segments the oldest remaining snapshot covers are pruned with it.
#[test]
fn pruning_leaves_no_archived_segment_that_no_remaining_snapshot_can_start_from() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 10);
    let mut snapshots = Vec::new();
    for _ in 0..5 {
        run.drive(COMMANDS_PER_PHASE);
        run.snapshot(directory.path(), &RetentionPolicy::default());
        snapshots.push(run.opened.wal.durable_lsn());
    }
    run.opened.wal.close().unwrap();
    let archived_snapshots = snapshot::list(&archive_snapshot_directory(directory.path())).unwrap();
    assert_eq!(archived_snapshots, snapshots[..2].to_vec());
    // Each archived segment's last LSN: where the next one (archived or live) starts, less one.
    let storage = reservoir_wal::layered_storage_existing(directory.path());
    let first_lsn = |sequence: u64| {
        let bytes = storage.read_prefix(sequence, reservoir_wal::format::SEGMENT_HEADER_BYTES).unwrap();
        reservoir_wal::format::SegmentHeader::decode(&bytes).unwrap().first_lsn
    };
    let last_lsn = |sequence: u64| Lsn(first_lsn(sequence + 1).0 - 1);
    let segments = archived_segments(directory.path());
    // The oldest snapshot, and the segments that end by it, are a week old; the rest is new.
    let week_ago = std::time::SystemTime::now() - Duration::from_secs(7 * 24 * 3_600);
    let age = |path: &Path| std::fs::File::options().write(true).open(path).unwrap().set_modified(week_ago).unwrap();
    age(&archive_snapshot_directory(directory.path()).join(snapshot_file_name(snapshots[0])));
    let aged: Vec<u64> = segments.iter().copied().filter(|&sequence| last_lsn(sequence) <= snapshots[0]).collect();
    for &sequence in &aged {
        age(&archive_wal_directory(directory.path()).join(reservoir_wal::storage::segment_file_name(sequence)));
    }
    let covered_by_second: Vec<u64> = segments
        .iter()
        .copied()
        .filter(|&sequence| last_lsn(sequence) > snapshots[0] && last_lsn(sequence) <= snapshots[1])
        .collect();
    assert!(!aged.is_empty() && !covered_by_second.is_empty(), "{segments:?} {snapshots:?}");

    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let report = retain(
        directory.path(),
        &RetentionPolicy { archive_age_max_ms: 24 * 3_600_000, archive_bytes_max: u64::MAX },
        now_ms,
    )
    .unwrap();
    assert_eq!(report.snapshots_pruned, 1, "{report:?}");
    assert_eq!(report.segments_pruned as usize, aged.len() + covered_by_second.len(), "{report:?}");
    let left = archived_segments(directory.path());
    assert!(left.iter().all(|&sequence| last_lsn(sequence) > snapshots[1]), "{left:?}");
    // The archive's oldest state still restores, and the log from it reaches the end.
    let restored =
        restore(directory.path(), common::config(), RestoreTarget::Lsn(Lsn(snapshots[1].0 + 1)), true, |_, _| {})
            .unwrap();
    assert_eq!(restored.base_snapshot, Some(snapshots[1]));
    assert_eq!(restored.engine.dump(), reference(&run.records, snapshots[1].0 as usize + 1));
}

/// Review (eleventh session) of the fix above: a snapshot's time is its taker's clock (a
/// standby's may run behind the primary's), a record's the primary's. A snapshot stamped
/// before the records it holds was taken as the floor of a restore to a time between them,
/// and the restore held records stamped after the target. Where the log still holds a
/// snapshot's last record, that record's stamp must be in time too.
#[test]
fn a_snapshot_stamped_before_the_records_it_holds_is_no_floor_for_an_earlier_time() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path(), 11);
    run.drive(2_000);
    let covered = run.opened.wal.durable_lsn();
    // Taken by a node whose clock is far behind: stamped before every record it holds.
    build_snapshot(directory.path(), common::config(), Some(covered), 1, &RetentionPolicy::default()).unwrap();
    run.drive(200);
    run.opened.wal.close().unwrap();
    let records = run.records;
    let within = records[1_000].timestamp_ms;
    let restored =
        restore(directory.path(), common::config(), RestoreTarget::Time { unix_ms: within }, true, |_, _| {}).unwrap();
    let expected = records.iter().position(|record| record.timestamp_ms > within).unwrap();
    assert!(expected < covered.0 as usize);
    assert_eq!(restored.target.lsn, Lsn(expected as u64), "nothing stamped after the target");
    assert_eq!(restored.engine.dump(), reference(&records, expected));
}
