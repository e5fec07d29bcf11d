//! Deterministic crash simulation on the fake disk (`CrashStorage`): group commits are written,
//! then either synced (acknowledged) or cut by a power failure that keeps some unsynced writes
//! and tears the next. Recovery must always succeed (a torn group is never "corruption"), keep
//! every acknowledged record, and rebuild exactly the state of some prefix of the written log.

mod common;

use std::sync::Arc;

use proptest::prelude::*;
use reservoir_engine::{Engine, Lsn, Record};
use reservoir_wal::{recover, CrashStorage, Storage, WalOptions, Writer, SEGMENT_BYTES_MIN};

fn options() -> WalOptions {
    WalOptions { segment_bytes: SEGMENT_BYTES_MIN, ..WalOptions::default() }
}

struct Crash {
    image: CrashStorage,
    acknowledged: Lsn,
    written: Lsn,
}

/// Writes `per_command` in groups of `group_size` commands; the `crash_group`-th group is
/// written but the power fails before its sync.
fn run_until_crash(
    per_command: &[Vec<Record>],
    group_size: usize,
    crash_group: usize,
    kept_writes: usize,
    torn_sectors: u64,
) -> Crash {
    let storage = Arc::new(CrashStorage::new());
    let empty = Engine::new(common::config());
    let position = recover(storage.as_ref(), &empty, |_| {}).unwrap().scan.position;
    let mut writer = Writer::new(storage.clone(), options(), position);
    let mut acknowledged = Lsn(0);
    let mut written = Lsn(0);
    for (index, group) in per_command.chunks(group_size).enumerate() {
        for records in group {
            writer.take(records.clone());
        }
        let write = writer.write_group().unwrap();
        if write.records > 0 {
            written = write.last_lsn;
        }
        if index == crash_group {
            let image = storage.crash_image(kept_writes, torn_sectors);
            return Crash { image, acknowledged, written };
        }
        writer.sync(&write).unwrap();
        assert_eq!(storage.unsynced_writes(), 0);
        acknowledged = written;
    }
    Crash { image: storage.crash_image(0, 0), acknowledged, written }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn recovery_after_a_power_cut_keeps_every_acknowledged_record(
        seed in any::<u64>(),
        commands in 20usize..300,
        group_size in 1usize..40,
        crash_group in 0usize..40,
        kept_writes in 0usize..3,
        torn_sectors in any::<u64>(),
    ) {
        let (_, per_command) = common::history(seed, commands);
        let all: Vec<Record> = per_command.iter().flatten().cloned().collect();
        let crash = run_until_crash(&per_command, group_size, crash_group, kept_writes, torn_sectors);

        let engine = Engine::new(common::config());
        let recovery = recover(&crash.image, &engine, |_| {})
            .unwrap_or_else(|error| panic!("recovery after a power cut must succeed: {error}"));
        let last = recovery.scan.last_lsn;
        prop_assert!(last >= crash.acknowledged, "lost acknowledged records: {last:?} < {:?}", crash.acknowledged);
        prop_assert!(last <= crash.written);
        prop_assert_eq!(engine.dump(), common::replayed(&all, last.0 as usize).dump());
        common::assert_verified(&engine);

        // The cut is clean: the log continues from the recovered position and recovers again.
        let image = Arc::new(crash.image);
        let mut writer = Writer::new(image.clone(), options(), recovery.scan.position);
        let mut more = Vec::new();
        engine.execute(&reservoir_engine::Command::Expire { limit: 5 }, 50_000_000, &mut more);
        let count = more.len();
        writer.take(more);
        let write = writer.write_group().unwrap();
        writer.sync(&write).unwrap();
        let again = Engine::new(common::config());
        let second = recover(image.as_ref() as &dyn Storage, &again, |_| {}).unwrap();
        prop_assert_eq!(second.scan.torn, None);
        prop_assert_eq!(second.scan.last_lsn.0, last.0 + count as u64);
        prop_assert_eq!(again.dump(), engine.dump());
    }
}

/// A fresh log holding one group of a seeded history's records, synced or not.
fn one_group_written(seed: u64, commands: usize, synced: bool) -> (Arc<CrashStorage>, reservoir_wal::GroupWrite) {
    let (_, per_command) = common::history(seed, commands);
    let storage = Arc::new(CrashStorage::new());
    let empty = Engine::new(common::config());
    let position = recover(storage.as_ref(), &empty, |_| {}).unwrap().scan.position;
    let mut writer = Writer::new(storage.clone(), options(), position);
    for records in &per_command {
        writer.take(records.clone());
    }
    let write = writer.write_group().unwrap();
    if synced {
        writer.sync(&write).unwrap();
    }
    (storage, write)
}

/// Regression: a process killed between a group's write and its fdatasync left the group in
/// the page cache; recovery read it back, replayed it and started the writer as if it were
/// durable, without syncing it. A retry of one of its commands was then answered from the
/// idempotency memory at once, and a power cut afterwards took the record back. Recovery now
/// syncs what it replays before anything builds on it.
#[test]
fn recovery_makes_the_records_it_replays_from_the_page_cache_durable() {
    let (storage, write) = one_group_written(7, 60, false); // SIGKILL: written, never synced
    assert!(storage.unsynced_writes() > 0, "the group is in the page cache only");

    let engine = Engine::new(common::config());
    let recovery = recover(storage.as_ref(), &engine, |_| {}).unwrap();
    assert_eq!(recovery.scan.last_lsn, write.last_lsn, "recovery reads the page cache back");
    assert_eq!(storage.unsynced_writes(), 0, "what recovery replayed is on disk before the writer starts");

    // A power cut now keeps every record the restarted engine holds.
    let image = storage.crash_image(0, 0);
    let after_power_cut = Engine::new(common::config());
    let again = recover(&image, &after_power_cut, |_| {}).unwrap();
    assert_eq!(again.scan.last_lsn, write.last_lsn);
    assert_eq!(after_power_cut.dump(), engine.dump());
}

/// Regression: when the records at the end of the log were lost or damaged although a snapshot
/// covered them (a flipped bit at the first frame of the last segment, or records never synced
/// and cut by a power cut), recovery accepted the log: it found a torn tail or a clean end at
/// the segment's first LSN, zeroed the segment, and started the writer there, below the
/// engine's next LSN. Every later write then waited forever for LSNs the engine never hands
/// out. Now it refuses to start, naming both LSNs, and leaves the segment as it found it.
#[test]
fn a_log_that_ends_before_what_the_snapshot_covers_is_refused() {
    let (storage, write) = one_group_written(11, 40, true);
    // The engine a snapshot of every record would load.
    let covered = Engine::new(common::config());
    recover(storage.as_ref(), &covered, |_| {}).unwrap();
    assert_eq!(covered.next_lsn(), Lsn(write.last_lsn.0 + 1));

    // The first frame of the (only) segment is damaged: the log now holds no valid record.
    let first_frame_at = reservoir_wal::format::SEGMENT_HEADER_BYTES + 12;
    storage.flip_bit(0, first_frame_at, 3);
    let before = storage.read(0).unwrap();
    match recover(storage.as_ref(), &covered, |_| {}) {
        Err(reservoir_wal::WalError::LogBehindSnapshot { covered: through, log_next }) => {
            assert_eq!(through, write.last_lsn);
            assert_eq!(log_next, Lsn(1));
        }
        other => panic!("expected LogBehindSnapshot, got {other:?}"),
    }
    assert_eq!(storage.read(0).unwrap(), before, "the damaged segment is left as it was found");
}

/// A disk whose writes panic (a stand-in for any broken invariant in the writer thread).
struct PanickingStorage(CrashStorage);

impl Storage for PanickingStorage {
    fn list(&self) -> std::io::Result<Vec<u64>> {
        self.0.list()
    }
    fn read(&self, sequence: u64) -> std::io::Result<Vec<u8>> {
        self.0.read(sequence)
    }
    fn create(&self, sequence: u64, bytes: u64, header: &[u8]) -> std::io::Result<()> {
        self.0.create(sequence, bytes, header)
    }
    fn write(&self, _: u64, _: u64, _: &[u8]) -> std::io::Result<()> {
        panic!("a broken invariant in the writer thread");
    }
    fn sync(&self, sequence: u64) -> std::io::Result<()> {
        self.0.sync(sequence)
    }
    fn remove(&self, sequence: u64) -> std::io::Result<()> {
        self.0.remove(sequence)
    }
    fn describe(&self, sequence: u64) -> String {
        self.0.describe(sequence)
    }
}

/// Regression: the writer thread handled its errors (every waiter then gets `Failed`) but not
/// its panics: a panic there left every `append`, `wait_*` and server reply waiting forever.
/// Now a panic fails the log the same way, and then goes on unwinding.
#[test]
fn a_panic_in_the_writer_thread_fails_the_waiters_instead_of_hanging_them() {
    let storage = Arc::new(PanickingStorage(CrashStorage::new()));
    let empty = Engine::new(common::config());
    let position = recover(storage.as_ref() as &dyn Storage, &empty, |_| {}).unwrap().scan.position;
    let wal = reservoir_wal::Wal::start(storage, options(), position).unwrap();
    let (_, per_command) = common::history(5, 3);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(wal.append(per_command.into_iter().flatten().collect()));
    });
    match receiver.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(Err(reservoir_wal::WalError::Failed(why))) => assert!(why.contains("panicked"), "{why}"),
        Ok(other) => panic!("expected Failed, got {other:?}"),
        Err(_) => panic!("the append still waits a minute after the writer thread died"),
    }
}
