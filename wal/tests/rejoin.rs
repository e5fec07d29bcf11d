//! Rewind on real files (a former primary cuts its log where the new primary's history forks
//! from it): nothing past the fork survives where a later start reads it, and a directory
//! whose state at the fork cannot be recovered is refused, so that the caller takes a base
//! backup instead of restarting into the same rewind.

mod common;

use std::path::Path;

use reservoir_engine::workload::Workload;
use reservoir_engine::Lsn;
use reservoir_wal::archive::{all_snapshots, archive_snapshot_directory};
use reservoir_wal::rejoin::{install_base_backup, rewind};
use reservoir_wal::snapshot::{self, snapshot_file_name, SNAPSHOTS_KEPT_MAX};
use reservoir_wal::{build_snapshot, snapshot_directory, Opened, RetentionPolicy, WalError};

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
