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
