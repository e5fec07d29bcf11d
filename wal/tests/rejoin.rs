//! Rewind on real files (a former primary cuts its log where the new primary's history forks
//! from it): nothing past the fork survives where a later start reads it, and a directory
//! whose state at the fork cannot be recovered is refused, so that the caller takes a base
//! backup instead of restarting into the same rewind.

mod common;

use std::path::Path;

use reservoir_engine::workload::Workload;
use reservoir_engine::Lsn;
use reservoir_wal::archive::{all_snapshots, archive_snapshot_directory};
use reservoir_wal::rejoin::{
    finish_set_aside_steps, install_base_backup, read_rewind_intent, rewind, write_rewind_intent,
    write_set_aside_intent, REWIND_INTENT_FILE, SET_ASIDE_INTENT_FILE,
};
use reservoir_wal::snapshot::{self, snapshot_file_name, SNAPSHOTS_KEPT_MAX};
use reservoir_wal::storage::segment_file_name;
use reservoir_wal::{
    build_snapshot, open_data_directory, snapshot_directory, wal_directory, Opened, RetentionPolicy, WalError,
};

use common::open_files_only as open;

/// A data directory being written by the workload generator.
struct Run {
    opened: Opened,
    workload: Workload,
    now_ms: u64,
}

impl Run {
    fn new(directory: &Path) -> Run {
        Run { opened: open(directory), workload: Workload::new(7, "w", 50), now_ms: 1_000_000 }
    }

    /// `commands` commands, 50 ms of simulated time apart.
    fn drive(&mut self, commands: usize) {
        for _ in 0..commands {
            self.now_ms += 50;
            let command = self.workload.next_command();
            let mut records = Vec::new();
            let reply = self.opened.engine.execute(&command, self.now_ms, &mut records);
            self.workload.observe(&command, &reply);
            self.opened.wal.append(records).unwrap();
        }
    }

    /// Takes a snapshot of everything durable (with the default retention); returns what it
    /// covers.
    fn snapshot(&self, directory: &Path) -> Lsn {
        let durable = self.opened.wal.durable_lsn();
        let (written, _) =
            build_snapshot(directory, common::config(), Some(durable), self.now_ms, &RetentionPolicy::default())
                .unwrap();
        assert_eq!(written.covers_lsn, durable);
        durable
    }
}

/// The next LSN a data directory recovers to.
fn recovered_next_lsn(directory: &Path) -> Lsn {
    let opened = open(directory);
    let next = opened.engine.next_lsn();
    opened.wal.close().unwrap();
    next
}

/// Copies `directory`'s snapshot covering `lsn` to `into` (as a base backup arrives).
fn copy_snapshot(directory: &Path, lsn: Lsn, into: &Path) {
    let name = snapshot_file_name(lsn);
    std::fs::create_dir_all(into.parent().unwrap()).unwrap();
    std::fs::copy(snapshot_directory(directory).join(name), into).unwrap();
}

/// Regression: a rewind of a directory whose only state is a snapshot past the fork (a base
/// backup installed, nothing logged since) found no record to cut, fell back to "the log
/// starts at LSN 1" for the empty log, and returned Ok with the snapshot in place: the node
/// recovered past the fork again, was told to rewind again, and restarted forever. Nothing
/// before the fork can be recovered there, so the rewind is refused (the caller then takes a
/// base backup).
#[test]
fn a_rewind_of_a_base_backup_past_the_fork_with_an_empty_log_is_refused() {
    let primary = tempfile::tempdir().unwrap();
    let mut run = Run::new(primary.path());
    run.drive(200);
    let covers = run.snapshot(primary.path());
    run.opened.wal.close().unwrap();
    let standby = tempfile::tempdir().unwrap();
    let incoming = standby.path().join("incoming").join("base.snap");
    copy_snapshot(primary.path(), covers, &incoming);
    install_base_backup(standby.path(), &incoming, 1).unwrap();

    let keep_through = Lsn(covers.0 - 10);
    match rewind(standby.path(), keep_through, 2) {
        Err(WalError::Restore(why)) => assert!(why.contains("take a base backup instead"), "{why}"),
        Ok(report) => {
            let next = recovered_next_lsn(standby.path());
            panic!("rewound ({report:?}) to a directory that recovers to LSN {} past the fork", next.0)
        }
        Err(other) => panic!("not the refusal: {other}"),
    }
}

/// Regression: with nothing past the fork in the log, a rewind returned Ok before it moved the
/// snapshots past the fork aside, so the node recovered from one of them, past the fork. They
/// go now, and the node recovers from the snapshot before the fork.
#[test]
fn a_rewind_with_nothing_to_cut_in_the_log_moves_the_snapshots_past_the_fork_aside() {
    let primary = tempfile::tempdir().unwrap();
    let mut run = Run::new(primary.path());
    run.drive(200);
    let before_fork = run.snapshot(primary.path());
    run.drive(200);
    let past_fork = run.snapshot(primary.path());
    run.opened.wal.close().unwrap();
    // Both snapshots and no log.
    let node = tempfile::tempdir().unwrap();
    for lsn in [before_fork, past_fork] {
        copy_snapshot(primary.path(), lsn, &snapshot_directory(node.path()).join(snapshot_file_name(lsn)));
    }

    let keep_through = Lsn(before_fork.0 + 5);
    assert!(keep_through < past_fork);
    let report = rewind(node.path(), keep_through, 2).unwrap();
    assert_eq!(report.records_cut, 0);
    assert_eq!(report.snapshots_moved, vec![past_fork]);
    assert!(report.saved_in.join(snapshot_file_name(past_fork)).exists(), "{report:?}");
    assert_eq!(snapshot::list(&snapshot_directory(node.path())).unwrap(), vec![before_fork]);
    assert_eq!(recovered_next_lsn(node.path()), Lsn(before_fork.0 + 1));
}

/// Regression: a rewind moved aside only the live snapshots past the fork; an archived one
/// stayed in `archive/snapshots/`, where the base backups this node sends once it is a primary
/// again and a point-in-time restore read it: a state from the cut history.
#[test]
fn a_rewind_moves_the_archived_snapshots_past_the_fork_aside_too() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path());
    run.drive(200);
    let keep_through = run.opened.wal.durable_lsn();
    // Past the fork, more snapshots than are kept live: the oldest is archived. The log is one
    // segment, so none of it is archived and it still starts at LSN 1.
    for _ in 0..=SNAPSHOTS_KEPT_MAX {
        run.drive(50);
        run.snapshot(directory.path());
    }
    run.opened.wal.close().unwrap();
    let archived = snapshot::list(&archive_snapshot_directory(directory.path())).unwrap();
    assert!(!archived.is_empty() && archived.iter().all(|&lsn| lsn > keep_through), "{archived:?}");

    let report = rewind(directory.path(), keep_through, 2).unwrap();
    assert!(report.records_cut > 0, "{report:?}");
    let left: Vec<Lsn> = all_snapshots(directory.path()).unwrap().into_iter().map(|(lsn, _)| lsn).collect();
    assert!(left.iter().all(|&lsn| lsn <= keep_through), "snapshots past the fork are left: {left:?}");
    assert_eq!(report.snapshots_moved.len(), SNAPSHOTS_KEPT_MAX + 1, "{report:?}");
    assert!(report.saved_in.join("archived").join(snapshot_file_name(archived[0])).exists(), "{report:?}");
    assert_eq!(recovered_next_lsn(directory.path()), Lsn(keep_through.0 + 1));
}

/// Opens `directory` as a server would, or says why it cannot.
fn try_open(directory: &Path) -> Result<Opened, WalError> {
    open_data_directory(directory, common::config(), common::files_only_options(), |_| {})
}

/// A log of 400 commands, forked after the first 200, whose cut a crash stopped after its
/// first zeroing write (4 KiB from record `keep_through + 1`): the rest of the tail is valid
/// frames of the forked history. The intent is not written. Returns `keep_through` and the last
/// LSN written.
fn half_cut(directory: &Path) -> (Lsn, Lsn) {
    let mut run = Run::new(directory);
    run.drive(200);
    let keep_through = run.opened.wal.durable_lsn();
    run.drive(200);
    let last = run.opened.wal.durable_lsn();
    run.opened.wal.close().unwrap();
    let all = common::frames(&wal_directory(directory));
    let &(sequence, cut_offset, first_cut) = all.iter().find(|&&(_, _, lsn)| lsn > keep_through.0).unwrap();
    assert_eq!(first_cut, keep_through.0 + 1);
    assert!(all.iter().all(|&(other, ..)| other == sequence), "one segment: the cut zeroes its tail");
    let zeroed = 4_096;
    let (_, last_offset, _) = *all.last().unwrap();
    assert!(cut_offset + zeroed < last_offset, "valid frames follow the zeros");
    let path = wal_directory(directory).join(segment_file_name(sequence));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[cut_offset..cut_offset + zeroed].fill(0);
    std::fs::write(&path, bytes).unwrap();
    (keep_through, last)
}

/// Regression: a rewind zeroes the tail after the fork in several writes, and the bytes past
/// the cut are later records, not zeros. A crash after the first write left zeros followed by
/// valid frames, which recovery refuses as corruption: the node could not start until an
/// operator finished the rewind by hand. The intent, durable before the cut, lets the next
/// start finish it.
#[test]
fn a_rewind_cut_short_by_a_crash_after_its_first_zeroing_write_is_finished_at_the_next_start() {
    let directory = tempfile::tempdir().unwrap();
    let (keep_through, last) = half_cut(directory.path());
    match try_open(directory.path()) {
        Err(WalError::Corrupt { .. }) => {}
        Err(other) => panic!("without the intent, the half-cut log should read as corrupt, got {other}"),
        Ok(_) => panic!("a half-cut log recovered without its intent"),
    }
    write_rewind_intent(directory.path(), keep_through).unwrap();

    the_next_start_finishes_the_cut(directory.path(), keep_through, last);
    assert_eq!(read_rewind_intent(directory.path()).unwrap(), None, "the intent is removed once the cut is done");
    assert!(common::frames(&wal_directory(directory.path())).iter().all(|&(_, _, lsn)| lsn <= keep_through.0));
    assert_eq!(recovered_next_lsn(directory.path()), Lsn(keep_through.0 + 1));
}

/// The next start of `directory` (whose log reached `last`) finishes the pending cut: it says
/// so, recovers through `keep_through` and no further, and the state verifies.
fn the_next_start_finishes_the_cut(directory: &std::path::Path, keep_through: Lsn, last: Lsn) {
    let opened = try_open(directory).unwrap_or_else(|error| panic!("the next start refused: {error}"));
    assert_eq!(opened.rewind_finished, Some(keep_through));
    assert_eq!(
        opened.engine.next_lsn(),
        Lsn(keep_through.0 + 1),
        "recovered to the fork, not past it (LSN {})",
        last.0
    );
    common::assert_verified(&opened.engine);
    opened.wal.close().unwrap();
}

/// The cut removes the later segments before it zeroes: a crash in between left a log that
/// recovers past the fork without a word (no zeros, every frame valid). The intent makes the
/// next start cut it.
#[test]
fn a_rewind_cut_short_before_it_zeroed_anything_is_finished_at_the_next_start() {
    let (_, per_command) = common::large_imports(12);
    let directory = tempfile::tempdir().unwrap();
    let opened = common::open_files_only(directory.path());
    for records in &per_command {
        opened.wal.append(records.clone()).unwrap();
    }
    let last = opened.wal.durable_lsn();
    opened.wal.close().unwrap();
    let all = common::frames(&wal_directory(directory.path()));
    let sequences: std::collections::BTreeSet<u64> = all.iter().map(|&(sequence, ..)| sequence).collect();
    assert!(sequences.len() >= 3, "the log spans at least three segments: {sequences:?}");
    // Keep through the second record of the first segment; the crash removed the last segment
    // only.
    let first = *sequences.first().unwrap();
    let keep_through = Lsn(all.iter().filter(|&&(sequence, ..)| sequence == first).nth(1).unwrap().2);
    let last_segment = *sequences.last().unwrap();
    std::fs::remove_file(wal_directory(directory.path()).join(segment_file_name(last_segment))).unwrap();
    write_rewind_intent(directory.path(), keep_through).unwrap();

    the_next_start_finishes_the_cut(directory.path(), keep_through, last);
    assert!(!directory.path().join(REWIND_INTENT_FILE).exists());
    let left: Vec<u64> =
        reservoir_wal::Storage::list(&reservoir_wal::FsStorage::new(&wal_directory(directory.path())).unwrap())
            .unwrap();
    assert_eq!(left, vec![first], "the later segments are removed");
}

/// A rewind asked for again after a crash cut the first one short finishes the first cut
/// before it reads the log (whose tail would otherwise read as corrupt).
#[test]
fn a_new_rewind_finishes_an_interrupted_one_first() {
    let directory = tempfile::tempdir().unwrap();
    let (keep_through, _) = half_cut(directory.path());
    write_rewind_intent(directory.path(), keep_through).unwrap();

    let earlier = Lsn(keep_through.0 - 20);
    let report =
        rewind(directory.path(), earlier, 3).unwrap_or_else(|error| panic!("the second rewind refused: {error}"));
    assert_eq!((report.records_cut, report.last_lsn_cut), (20, keep_through), "{report:?}");
    assert_eq!(read_rewind_intent(directory.path()).unwrap(), None);
    assert_eq!(recovered_next_lsn(directory.path()), Lsn(earlier.0 + 1));
}

/// An intent that is not one (damaged by hand: the file is written whole or not at all) stops
/// start-up with an error that names it, rather than being skipped or guessed at.
#[test]
fn an_unreadable_rewind_intent_refuses_to_start_and_names_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path());
    run.drive(50);
    run.opened.wal.close().unwrap();
    for unreadable in [&b"keep_through=twelve\n"[..], &[0xff, 0xfe, 0x00, 0x80][..]] {
        std::fs::write(directory.path().join(REWIND_INTENT_FILE), unreadable).unwrap();
        match try_open(directory.path()) {
            Err(error @ WalError::RewindIntent { .. }) => {
                assert!(error.to_string().contains(REWIND_INTENT_FILE), "{error}");
            }
            Err(other) => panic!("expected RewindIntent, got {other}"),
            Ok(_) => panic!("started with an unreadable rewind intent"),
        }
    }
}

/// Regression (review, tenth session): a base backup's install moved `wal/`, `snapshots/`
/// and `archive/` aside one rename at a time, and a crash (or a signal, which ends a restart
/// at once) between two left a directory whose start-up refused it: the old snapshot with no
/// log, or an archive with no snapshot. The install now writes its intent first, and the next
/// start finishes it: here the crash came after the first rename, before the others and the
/// install, and the directory opens on the base backup alone, the old history under
/// `replaced/`.
#[test]
fn a_base_backup_install_cut_short_by_a_crash_is_finished_at_the_next_start() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path());
    run.drive(200);
    let old = run.snapshot(directory.path());
    run.drive(100);
    // The base backup is newer than anything the directory holds: taken here, then removed.
    let covers = run.snapshot(directory.path());
    run.opened.wal.close().unwrap();
    let incoming = directory.path().join("incoming").join("base.snap");
    copy_snapshot(directory.path(), covers, &incoming);
    std::fs::remove_file(snapshot_directory(directory.path()).join(snapshot_file_name(covers))).unwrap();
    assert!(old < covers);
    // What the install does before the crash: its intent, then the first of its renames.
    write_set_aside_intent(directory.path(), "7", Some(&incoming)).unwrap();
    let replaced = directory.path().join("replaced").join("7");
    std::fs::create_dir_all(&replaced).unwrap();
    std::fs::rename(wal_directory(directory.path()), replaced.join("wal")).unwrap();

    let opened = try_open(directory.path()).expect("the next start finishes the install");
    assert_eq!(opened.engine.next_lsn(), Lsn(covers.0 + 1), "the base backup's state, nothing after it");
    assert_eq!(opened.snapshot, Some(covers));
    opened.wal.close().unwrap();
    assert!(!directory.path().join(SET_ASIDE_INTENT_FILE).exists());
    assert!(!incoming.exists(), "the base backup was moved in");
    assert!(replaced.join("wal").exists() && replaced.join("snapshots").exists(), "the old history is kept");
    let live: Vec<_> = std::fs::read_dir(snapshot_directory(directory.path())).unwrap().flatten().collect();
    assert_eq!(live.len(), 1, "the base backup is the only live snapshot");
    // A whole install (no crash) leaves the same shape, and a later start has nothing to finish.
    let incoming = directory.path().join("incoming").join("again.snap");
    copy_snapshot(directory.path(), covers, &incoming);
    install_base_backup(directory.path(), &incoming, 8).unwrap();
    assert!(!directory.path().join(SET_ASIDE_INTENT_FILE).exists());
    assert_eq!(recovered_next_lsn(directory.path()), Lsn(covers.0 + 1));
}

/// Regression (review, eleventh session): a crash after the install had made `snapshots/`
/// anew, before the intent was gone, made the next start move again: it found `snapshots/` in
/// both places and refused to start, or, where the old directory had none, moved the installed
/// base backup aside and started on an empty ledger. The install now stops after every step
/// in turn, as a crash there would, and each next start ends on the base backup's state.
#[test]
fn a_base_backup_install_cut_short_after_any_of_its_steps_is_finished_at_the_next_start() {
    for old_has_snapshots in [true, false] {
        let mut steps_max = 0;
        loop {
            let directory = tempfile::tempdir().unwrap();
            let mut run = Run::new(directory.path());
            run.drive(200);
            let covers = run.snapshot(directory.path());
            run.drive(50);
            run.opened.wal.close().unwrap();
            let incoming = directory.path().join("incoming").join("base.snap");
            copy_snapshot(directory.path(), covers, &incoming);
            let snapshots = snapshot_directory(directory.path());
            if old_has_snapshots {
                std::fs::remove_file(snapshots.join(snapshot_file_name(covers))).unwrap();
            } else {
                std::fs::remove_dir_all(&snapshots).unwrap();
            }
            write_rewind_intent(directory.path(), Lsn(covers.0 - 5)).unwrap();
            write_set_aside_intent(directory.path(), "7", Some(&incoming)).unwrap();
            let done = finish_set_aside_steps(directory.path(), steps_max).unwrap().expect("an intent");

            let opened = try_open(directory.path())
                .unwrap_or_else(|error| panic!("stopped after {done} steps (snapshots {old_has_snapshots}): {error}"));
            assert_eq!(opened.engine.next_lsn(), Lsn(covers.0 + 1), "after {done} steps: the base backup's state");
            assert_eq!(opened.snapshot, Some(covers), "after {done} steps");
            assert_eq!(opened.rewind_finished, None, "the rewind intent went with the log");
            opened.wal.close().unwrap();
            assert!(!directory.path().join(SET_ASIDE_INTENT_FILE).exists());
            let replaced = directory.path().join("replaced").join("7");
            assert!(replaced.join("wal").exists(), "after {done} steps: the old log is kept");
            assert_eq!(replaced.join("snapshots").exists(), old_has_snapshots, "after {done} steps");
            if done < steps_max {
                break;
            }
            steps_max += 1;
        }
        assert!(steps_max >= 5, "the install has its steps: {steps_max}");
    }
}

/// Review (eleventh session): once the moves are recorded done, a `wal/` made by hand before
/// the intent is gone made every start panic (an assertion); it is refused with an error
/// naming it.
#[test]
fn a_log_made_by_hand_during_a_cut_short_install_is_refused_not_a_panic() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path());
    run.drive(100);
    let covers = run.snapshot(directory.path());
    run.opened.wal.close().unwrap();
    let incoming = directory.path().join("incoming").join("base.snap");
    copy_snapshot(directory.path(), covers, &incoming);
    write_set_aside_intent(directory.path(), "9", Some(&incoming)).unwrap();
    // Stopped as a crash would, as soon as the intent records the moves: each call makes
    // `replaced/9` (step 1) and moves one part (step 2), until none is left; then step 2 is
    // the record of the moves.
    let intent = directory.path().join(SET_ASIDE_INTENT_FILE);
    let parts_left = || ["wal", "snapshots", "archive"].iter().any(|part| directory.path().join(part).exists());
    let mut calls = 0;
    while parts_left() {
        calls += 1;
        assert!(calls <= 3, "one part moved a call");
        finish_set_aside_steps(directory.path(), 2).unwrap();
    }
    finish_set_aside_steps(directory.path(), 2).unwrap();
    assert!(std::fs::read_to_string(&intent).unwrap().ends_with("moved=yes\n"));
    assert!(!directory.path().join("snapshots").exists(), "the install has not begun");
    std::fs::create_dir(directory.path().join("wal")).unwrap();
    match try_open(directory.path()) {
        Err(WalError::SetAsideIntent { why, .. }) => assert!(why.contains("wal"), "{why}"),
        other => panic!("expected SetAsideIntent, got {:?}", other.map(|opened| opened.engine.next_lsn())),
    }
}

/// Review finding: a rewind that failed (the caller then sets the log aside for a base
/// backup) left its intent behind, and the next start "finished a rewind" on an empty log.
#[test]
fn setting_the_log_aside_drops_a_rewind_intent_with_it() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path());
    run.drive(50);
    let keep_through = run.opened.wal.durable_lsn();
    run.opened.wal.close().unwrap();
    write_rewind_intent(directory.path(), Lsn(keep_through.0 - 5)).unwrap();
    reservoir_wal::rejoin::set_aside(directory.path(), 2).unwrap();
    assert_eq!(read_rewind_intent(directory.path()).unwrap(), None);
    let opened = try_open(directory.path()).unwrap();
    assert_eq!((opened.rewind_finished, opened.engine.next_lsn()), (None, Lsn(1)));
    opened.wal.close().unwrap();
}

/// Regression: a rewind synced `snapshots/` unconditionally, and a directory that never took a
/// snapshot (a primary demoted before its first) has none: the rewind failed with "No such
/// file or directory" and the node could not rejoin.
#[test]
fn a_rewind_of_a_directory_never_snapshotted_cuts_the_log() {
    let directory = tempfile::tempdir().unwrap();
    let mut run = Run::new(directory.path());
    run.drive(100);
    let keep_through = run.opened.wal.durable_lsn();
    run.drive(100);
    run.opened.wal.close().unwrap();
    assert!(!snapshot_directory(directory.path()).exists());
    let report = rewind(directory.path(), keep_through, 2).unwrap_or_else(|error| panic!("refused: {error}"));
    assert!(report.records_cut > 0, "{report:?}");
    assert_eq!(recovered_next_lsn(directory.path()), Lsn(keep_through.0 + 1));
}

/// A log whose only segment holds nothing but its header (a base backup, records logged after
/// it, then a rewind to the backup's LSN, which cuts them all): a second rewind to that LSN or
/// later cuts nothing and keeps the snapshot; one before it is refused (nothing at or before
/// the fork could be recovered), and the directory still recovers to the snapshot afterwards.
#[test]
fn a_rewind_of_a_log_that_is_one_header_only_segment_cuts_nothing_or_is_refused() {
    let primary = tempfile::tempdir().unwrap();
    let mut run = Run::new(primary.path());
    run.drive(200);
    let covers = run.snapshot(primary.path());
    run.opened.wal.close().unwrap();
    let standby = tempfile::tempdir().unwrap();
    let incoming = standby.path().join("incoming").join("base.snap");
    copy_snapshot(primary.path(), covers, &incoming);
    install_base_backup(standby.path(), &incoming, 1).unwrap();
    let mut after = Run { opened: open(standby.path()), workload: Workload::new(8, "x", 20), now_ms: run.now_ms };
    after.drive(50);
    after.opened.wal.close().unwrap();
    let first = rewind(standby.path(), covers, 2).unwrap();
    assert!(first.records_cut > 0, "{first:?}");
    assert_eq!(recovered_next_lsn(standby.path()), Lsn(covers.0 + 1));
    let segments = common::frames(&wal_directory(standby.path()));
    assert!(segments.is_empty(), "no record logged: {segments:?}");
    assert_eq!(
        reservoir_wal::Storage::list(&reservoir_wal::FsStorage::new(&wal_directory(standby.path())).unwrap())
            .unwrap()
            .len(),
        1,
        "one segment, its header only"
    );

    for keep_through in [covers, Lsn(covers.0 + 5)] {
        let report = rewind(standby.path(), keep_through, 2).unwrap_or_else(|error| panic!("refused: {error}"));
        assert_eq!((report.records_cut, report.snapshots_moved.len()), (0, 0), "{report:?}");
    }
    match rewind(standby.path(), Lsn(covers.0 - 1), 3) {
        Err(WalError::Restore(why)) => assert!(why.contains("take a base backup instead"), "{why}"),
        other => panic!("expected the refusal, got {other:?}"),
    }
    assert_eq!(recovered_next_lsn(standby.path()), Lsn(covers.0 + 1), "the refusals changed nothing");
}
