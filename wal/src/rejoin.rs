//! What a standby does to its data directory, offline, before it can follow a primary:
//! - [`rewind`]: a former primary's log went on past the point where the new primary's epoch
//!   began (the fork); cut it there, keeping a copy of what was cut (PostgreSQL's pg_rewind
//!   with timelines is the model; docs/operations.md, "Rejoin the old primary");
//! - [`install_base_backup`]: the standby is new, from another history, or further behind
//!   than the primary's log reaches; replace its log and snapshots with the primary's
//!   snapshot (the old ones are moved aside, never deleted).
//!
//! Both take the data directory's lock: they run while no server has it open.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use reservoir_engine::{Body, Lsn};

use crate::scan::{scan_until, Flow, TornTail};
use crate::storage::{FsStorage, Storage};
use crate::{archive, lock_data_directory, snapshot, snapshot_directory, wal_directory, WalError};

/// Records described one per line in a rewind's report at most (the cut segments are copied
/// whole beside it, so nothing is lost past this).
pub const REWIND_REPORT_RECORDS_MAX: usize = 100_000;

/// What [`rewind`] cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewindReport {
    /// The last LSN kept.
    pub kept_through: Lsn,
    /// Records removed from the log (`kept_through + 1 ..= last_lsn_cut`).
    pub records_cut: u64,
    pub last_lsn_cut: Lsn,
    /// Snapshots past `kept_through` (live and archived), moved aside.
    pub snapshots_moved: Vec<Lsn>,
    /// Where the copies and `REWIND.txt` are.
    pub saved_in: PathBuf,
}

fn io(what: &Path) -> impl Fn(std::io::Error) -> WalError + '_ {
    move |source| WalError::io(what.display().to_string(), source)
}

fn sync_directory(directory: &Path) -> Result<(), WalError> {
    std::fs::File::open(directory).and_then(|file| file.sync_all()).map_err(io(directory))
}

/// Cuts the log of `data_directory` after `keep_through`: the records after it are copied to
/// `DATA_DIR/rewound/<now_ms>/` (the segment files as they were, and a one-line-per-record
/// `REWIND.txt`), every snapshot past `keep_through`, live or archived, moves there too (the
/// records past the fork may live only in one: a base backup with nothing logged after it;
/// base backups and restores read archived ones), and the log is cut the way a torn tail is
/// (zeroed, later segments removed, synced). Refused (the caller then takes a base backup
/// instead) when what remains could not be recovered: no snapshot at or before
/// `keep_through` and a live log that is empty or does not start early enough.
pub fn rewind(data_directory: &Path, keep_through: Lsn, now_ms: u64) -> Result<RewindReport, WalError> {
    let _lock = lock_data_directory(data_directory)?;
    // An earlier rewind cut short by a crash is finished first: the scan below reads its tail.
    finish_interrupted_rewind(data_directory)?;
    let directory = wal_directory(data_directory);
    let storage = FsStorage::new(&directory).map_err(io(&directory))?;
    let snapshots_directory = snapshot_directory(data_directory);
    let snapshots = snapshot::list(&snapshots_directory)?;
    let base = snapshots.iter().copied().filter(|&lsn| lsn <= keep_through).max().unwrap_or(Lsn(0));

    // Find where record `keep_through + 1` starts, and what follows it.
    let mut records_cut = 0u64;
    let mut last_lsn_cut = keep_through;
    let mut described = String::new();
    let from = Lsn(base.0.max(1));
    let scanned = scan_until(&storage, from, Lsn(0), |record| {
        if record.lsn <= keep_through {
            return Ok(Flow::Continue);
        }
        records_cut += 1;
        last_lsn_cut = record.lsn;
        if (records_cut as usize) <= REWIND_REPORT_RECORDS_MAX {
            let _ = writeln!(described, "{} {}", record.lsn.0, describe(&record.body));
        }
        Ok(Flow::Continue)
    })?;
    // Where the live log starts: its first record, or its first segment's header if it holds
    // none; with no segment at all, the state after a rewind is the base snapshot's alone.
    let sequences = storage.list().map_err(io(&directory))?;
    let log_start = (!sequences.is_empty()).then(|| scanned.first_lsn.unwrap_or(scanned.position.next_lsn));
    let recoverable = match log_start {
        Some(first) => first.0 <= base.0 + 1,
        None => base.0 > 0,
    };
    if !recoverable {
        let log = match log_start {
            Some(first) => format!("the live log starts at LSN {}", first.0),
            None => "the live log is empty".to_owned(),
        };
        return Err(WalError::Restore(format!(
            "cannot rewind to LSN {}: {log} and no snapshot at or before the fork covers the records \
             before it; take a base backup instead",
            keep_through.0
        )));
    }
    // Records past the fork may live only in a snapshot (a base backup installed, nothing
    // logged after it): those snapshots go too, or the node would recover past the fork again.
    // So do archived ones, which base backups and restores read.
    let snapshots_past: Vec<Lsn> = snapshots.iter().copied().filter(|&lsn| lsn > keep_through).collect();
    let archived_directory = archive::archive_snapshot_directory(data_directory);
    let archived_past: Vec<Lsn> =
        snapshot::list(&archived_directory)?.into_iter().filter(|&lsn| lsn > keep_through).collect();
    if records_cut == 0 && snapshots_past.is_empty() && archived_past.is_empty() {
        return Ok(RewindReport {
            kept_through: keep_through,
            records_cut: 0,
            last_lsn_cut: keep_through,
            snapshots_moved: Vec::new(),
            saved_in: PathBuf::new(),
        });
    }
    let cut_at = match records_cut {
        0 => None,
        _ => Some(cut_position(
            &storage,
            &directory,
            keep_through,
            scanned.first_lsn.expect("records are cut, so the live log holds records"),
            scanned.position.history,
        )?),
    };
    let segments_cut: Vec<u64> = match &cut_at {
        Some(cut) => std::iter::once(cut.sequence).chain(cut.later_segments.iter().copied()).collect(),
        None => Vec::new(),
    };

    // Save before changing anything.
    let saved_in = data_directory.join("rewound").join(format!("{now_ms}-after-{}", keep_through.0));
    std::fs::create_dir_all(&saved_in).map_err(io(&saved_in))?;
    // The new directories' entries are durable too, not only the files in them.
    let rewound = saved_in.parent().expect("rewound/<name>");
    sync_directory(rewound)?;
    sync_directory(data_directory)?;
    for sequence in segments_cut {
        let name = crate::storage::segment_file_name(sequence);
        let copy = saved_in.join(&name);
        std::fs::copy(directory.join(&name), &copy).map_err(io(&copy))?;
        // Durable before the cut: the copy is then the only one of the cut records.
        std::fs::File::open(&copy).and_then(|file| file.sync_all()).map_err(io(&copy))?;
    }
    let mut snapshots_moved = Vec::new();
    for &lsn in &snapshots_past {
        let name = snapshot::snapshot_file_name(lsn);
        std::fs::rename(snapshots_directory.join(&name), saved_in.join(&name)).map_err(io(&saved_in))?;
        snapshots_moved.push(lsn);
    }
    let archived_saved_in = saved_in.join("archived");
    if !archived_past.is_empty() {
        crate::storage::create_directory_durably(&archived_saved_in).map_err(io(&archived_saved_in))?;
    }
    for &lsn in &archived_past {
        let name = snapshot::snapshot_file_name(lsn);
        std::fs::rename(archived_directory.join(&name), archived_saved_in.join(&name))
            .map_err(io(&archived_saved_in))?;
        snapshots_moved.push(lsn);
    }
    snapshots_moved.sort_unstable();
    let cut = if records_cut == 0 {
        "no record after it was in the live log".to_owned()
    } else {
        format!("{records_cut} records after it (LSN {}..={}) were cut", keep_through.0 + 1, last_lsn_cut.0)
    };
    let mut report = format!(
        "Rewound at {now_ms} (ms since the epoch): the log kept LSN 1..={kept}; {cut} because the \
         new primary's log forks there. What came after it here was never part of the new \
         primary's history. The segment files as they were and the snapshots that covered LSNs \
         after it are beside this file (archived ones in `archived/`).\n\n",
        kept = keep_through.0,
    );
    report.push_str(&described);
    if records_cut as usize > REWIND_REPORT_RECORDS_MAX {
        let _ = writeln!(
            report,
            "... and {} more (see the segment copies)",
            records_cut as usize - REWIND_REPORT_RECORDS_MAX
        );
    }
    let report_path = saved_in.join("REWIND.txt");
    std::fs::write(&report_path, report).map_err(io(&report_path))?;
    std::fs::File::open(&report_path).and_then(|file| file.sync_all()).map_err(io(&report_path))?;
    sync_directory(&saved_in)?;
    if !snapshots_past.is_empty() {
        // Only then: a directory never snapshotted has no `snapshots/` (regression: such a
        // rewind failed with "No such file or directory").
        sync_directory(&snapshots_directory)?;
    }
    if !archived_past.is_empty() {
        sync_directory(&archived_saved_in)?;
        sync_directory(&archived_directory)?;
    }

    if cut_at.is_some() {
        // The cut zeroes in several writes, and what lies past it is later groups, not zeros: a
        // crash half-way would leave zeros followed by valid frames, which recovery reads as
        // corruption. The intent, durable before the first write, lets whoever opens the
        // directory next finish the cut instead (regression: such a crash refused start-up).
        write_rewind_intent(data_directory, keep_through)?;
        finish_interrupted_rewind(data_directory)?;
    }
    assert!(records_cut == 0 || last_lsn_cut > keep_through);
    Ok(RewindReport { kept_through: keep_through, records_cut, last_lsn_cut, snapshots_moved, saved_in })
}

/// The file that says a rewind's cut has begun and where it keeps to (`DATA_DIR/REWIND-INTENT`).
pub const REWIND_INTENT_FILE: &str = "REWIND-INTENT";

/// Bytes of a rewind intent read at most (it is one short line).
const REWIND_INTENT_BYTES_MAX: u64 = 256;

/// The first line of a rewind intent; the second is `keep_through=<LSN>`.
const REWIND_INTENT_HEADER: &str = "reservoir rewind intent v1";

fn rewind_intent_path(data_directory: &Path) -> PathBuf {
    data_directory.join(REWIND_INTENT_FILE)
}

/// Records, durably, that the log of `data_directory` is to be cut after `keep_through`
/// (written whole or not at all: a temporary file, synced, renamed, the directory synced).
/// Only written once the cut records are saved elsewhere.
pub fn write_rewind_intent(data_directory: &Path, keep_through: Lsn) -> Result<(), WalError> {
    assert!(keep_through.0 < u64::MAX, "an intent keeps a real LSN");
    let path = rewind_intent_path(data_directory);
    let temporary = data_directory.join(format!("{REWIND_INTENT_FILE}.tmp"));
    let text = format!("{REWIND_INTENT_HEADER}\nkeep_through={}\n", keep_through.0);
    std::fs::write(&temporary, &text).map_err(io(&temporary))?;
    std::fs::File::open(&temporary).and_then(|file| file.sync_all()).map_err(io(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(io(&path))?;
    sync_directory(data_directory)?;
    debug_assert_eq!(read_rewind_intent(data_directory).ok().flatten(), Some(keep_through));
    Ok(())
}

/// An intent file's first `bytes_max` bytes; `None` when there is no such file.
fn read_intent(path: &Path, bytes_max: u64) -> Result<Option<Vec<u8>>, WalError> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(WalError::io(path.display().to_string(), error)),
    };
    let mut bytes = Vec::new();
    file.take(bytes_max).read_to_end(&mut bytes).map_err(io(path))?;
    Ok(Some(bytes))
}

/// The LSN an unfinished rewind keeps through, if `data_directory` has a rewind intent.
pub fn read_rewind_intent(data_directory: &Path) -> Result<Option<Lsn>, WalError> {
    let path = rewind_intent_path(data_directory);
    let Some(bytes) = read_intent(&path, REWIND_INTENT_BYTES_MAX)? else { return Ok(None) };
    // Not UTF-8 is as unreadable as a wrong line: the same typed error.
    let text = String::from_utf8_lossy(&bytes);
    let keep_through = text
        .strip_prefix(REWIND_INTENT_HEADER)
        .and_then(|rest| rest.strip_prefix("\nkeep_through="))
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|number| number.parse::<u64>().ok())
        .ok_or_else(|| WalError::RewindIntent {
            path: path.display().to_string(),
            why: format!("not a rewind intent ({} bytes)", bytes.len()),
        })?;
    Ok(Some(Lsn(keep_through)))
}

/// Finishes a rewind whose cut a crash interrupted: if `data_directory` has a rewind intent,
/// cuts the log after the LSN it names (again: the cut is idempotent), syncs, and removes the
/// intent. Returns that LSN. The caller holds the directory's lock; recovery
/// ([`crate::open_data_directory`]) and [`rewind`] call it before they read the log.
pub fn finish_interrupted_rewind(data_directory: &Path) -> Result<Option<Lsn>, WalError> {
    let Some(keep_through) = read_rewind_intent(data_directory)? else { return Ok(None) };
    let directory = wal_directory(data_directory);
    let storage = FsStorage::new(&directory).map_err(io(&directory))?;
    let sequences = storage.list().map_err(io(&directory))?;
    if let Some(&first) = sequences.first() {
        let header_of = |sequence: u64| -> Result<crate::format::SegmentHeader, WalError> {
            let bytes = storage
                .read_prefix(sequence, crate::format::SEGMENT_HEADER_BYTES)
                .map_err(|source| WalError::io(storage.describe(sequence), source))?;
            crate::format::SegmentHeader::decode(&bytes)
                .map_err(|why| WalError::BadSegmentHeader { segment: storage.describe(sequence), why: why.into() })
        };
        let header = header_of(first)?;
        // Segments that start past `keep_through` (the first one aside, which is cut from its
        // header on) go first, by their headers alone: the cut removes them before it zeroes,
        // and a file system that persisted those removals out of order would otherwise leave a
        // gap the scan below refuses.
        let mut removed = false;
        for &sequence in sequences.iter().skip(1).rev() {
            if header_of(sequence)?.first_lsn > keep_through {
                storage.remove(sequence).map_err(|source| WalError::io(storage.describe(sequence), source))?;
                removed = true;
            }
        }
        if removed {
            sync_directory(&directory)?;
        }
        // The log up to the cut is intact (the cut writes only past it), so it is read up to
        // `keep_through` and no further.
        let cut_at = cut_position(&storage, &directory, keep_through, header.first_lsn, Some(header.history))?;
        crate::cut_torn_tail(&storage, &cut_at)?;
        sync_directory(&directory)?;
    }
    let path = rewind_intent_path(data_directory);
    std::fs::remove_file(&path).map_err(io(&path))?;
    sync_directory(data_directory)?;
    assert!(read_rewind_intent(data_directory)?.is_none(), "the intent is gone once the cut is done");
    Ok(Some(keep_through))
}

/// Where the log is cut: right after record `keep_through` (or at the first frame, if nothing
/// of the live log is kept), with every later segment. `first_lsn` is the first LSN the live log
/// holds (its first segment's).
fn cut_position(
    storage: &FsStorage,
    directory: &Path,
    keep_through: Lsn,
    first_lsn: Lsn,
    history: Option<u64>,
) -> Result<TornTail, WalError> {
    let position = if keep_through.0 >= first_lsn.0 {
        let stopped = scan_until(storage, keep_through, Lsn(0), |record| {
            Ok(if record.lsn == keep_through { Flow::Stop } else { Flow::Continue })
        })?;
        if !(stopped.stopped && stopped.last_lsn == keep_through) {
            return Err(WalError::Restore(format!(
                "cannot cut the log after LSN {}: it ends at LSN {} without it",
                keep_through.0, stopped.last_lsn.0
            )));
        }
        stopped.position
    } else {
        let sequences = storage.list().map_err(io(directory))?;
        crate::scan::AppendPosition {
            sequence: sequences[0],
            offset: crate::format::SEGMENT_HEADER_BYTES as u64,
            segment_exists: true,
            next_lsn: first_lsn,
            history,
        }
    };
    let sequences = storage.list().map_err(io(directory))?;
    let later: Vec<u64> = sequences.iter().copied().filter(|&sequence| sequence > position.sequence).collect();
    Ok(TornTail {
        sequence: position.sequence,
        offset: position.offset,
        later_segments: later,
        why: format!("rewound after LSN {}", keep_through.0),
    })
}

fn describe(body: &Body) -> String {
    match body {
        Body::TenantCreated { name, .. } => format!("tenant_created {name}"),
        Body::ItemCreated { tenant, sku, location, .. } => format!("item_created tenant={} {sku}@{location}", tenant.0),
        Body::Stock { tenant, memo, changes } => {
            format!(
                "stock tenant={} op={} code={} items={}",
                tenant.0,
                memo.operation,
                memo.reply.code.name(),
                changes.len()
            )
        }
        Body::Reserved { tenant, reservation, reply, .. } => {
            format!("reserved tenant={} reservation={reservation} code={}", tenant.0, reply.code.name())
        }
        Body::Settled { tenant, reservation, kind, .. } => {
            format!("settled tenant={} reservation={reservation} kind={kind:?}", tenant.0)
        }
        Body::Refused { tenant, memo } => format!("refused tenant={} op={}", tenant.0, memo.operation),
        Body::Forgotten { before_ms } => format!("forgotten before_ms={before_ms}"),
        Body::EpochChanged { epoch } => format!("epoch_changed epoch={epoch}"),
        Body::CredentialsChanged => "credentials_changed".to_owned(),
    }
}

/// Moves the log, snapshots and archive of `data_directory` to `DATA_DIR/replaced/<now_ms>/`
/// (the directory then holds no history: a standby takes a base backup). Returns where.
pub fn set_aside(data_directory: &Path, now_ms: u64) -> Result<PathBuf, WalError> {
    let _lock = lock_data_directory(data_directory)?;
    move_aside(data_directory, now_ms, None)
}

/// The parts of a data directory that hold its history, which a set-aside moves.
const HISTORY_PARTS: [&str; 3] = ["wal", "snapshots", "archive"];

fn move_aside(data_directory: &Path, now_ms: u64, install: Option<&Path>) -> Result<PathBuf, WalError> {
    let replaced_name = now_ms.to_string();
    let replaced = data_directory.join("replaced").join(&replaced_name);
    crate::storage::create_directory_durably(&replaced).map_err(io(&replaced))?;
    // Several renames: a crash between two must not leave a directory that holds pieces of
    // its history (regression, review, tenth session: `wal/` moved and `snapshots/` not made
    // start-up refuse the directory). The intent, durable first, lets the next start finish.
    write_set_aside_intent(data_directory, &replaced_name, install)?;
    finish_interrupted_set_aside(data_directory)?;
    Ok(replaced)
}

/// The file that says a set-aside (and a base backup's install) has begun
/// (`DATA_DIR/SET-ASIDE-INTENT`): where the history goes, and the snapshot to install, if any.
pub const SET_ASIDE_INTENT_FILE: &str = "SET-ASIDE-INTENT";

/// Bytes of a set-aside intent read at most (a header and two paths).
const SET_ASIDE_INTENT_BYTES_MAX: u64 = 16 << 10;

const SET_ASIDE_INTENT_HEADER: &str = "reservoir set-aside intent v1";

/// The line a set-aside intent ends with once the history has moved: the next start then
/// skips the moves, whose sources may by then be the installed snapshot's.
const SET_ASIDE_MOVED_LINE: &str = "moved=yes\n";

/// Records, durably, that the history of `data_directory` is to move to
/// `replaced/<replaced_name>/` and then, if given, `install` (a checked snapshot file) is to
/// become its only snapshot.
pub fn write_set_aside_intent(
    data_directory: &Path,
    replaced_name: &str,
    install: Option<&Path>,
) -> Result<(), WalError> {
    let install = install.map(|path| path.to_str().expect("a UTF-8 path").to_owned()).unwrap_or_default();
    write_set_aside_intent_text(data_directory, replaced_name, &install, false)
}

fn write_set_aside_intent_text(
    data_directory: &Path,
    replaced_name: &str,
    install: &str,
    moved: bool,
) -> Result<(), WalError> {
    assert!(!replaced_name.is_empty() && !replaced_name.contains(['/', '\n']), "a directory name");
    assert!(!install.contains('\n'), "one line");
    let path = data_directory.join(SET_ASIDE_INTENT_FILE);
    let temporary = data_directory.join(format!("{SET_ASIDE_INTENT_FILE}.tmp"));
    let moved_line = if moved { SET_ASIDE_MOVED_LINE } else { "" };
    let text = format!("{SET_ASIDE_INTENT_HEADER}\ninto={replaced_name}\ninstall={install}\n{moved_line}");
    assert!(text.len() as u64 <= SET_ASIDE_INTENT_BYTES_MAX, "a path far past PATH_MAX");
    std::fs::write(&temporary, &text).map_err(io(&temporary))?;
    std::fs::File::open(&temporary).and_then(|file| file.sync_all()).map_err(io(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(io(&path))?;
    sync_directory(data_directory)
}

/// Finishes a set-aside (and its install) a crash interrupted, if `data_directory` has its
/// intent: every part of the history still in place moves to where the intent says, a
/// rewind intent goes with the log, the intent says so durably (`moved=yes`), the snapshot to
/// install (if it is still where it came from) becomes the only one; then the intent is
/// removed. Every step is idempotent, and a start after the moves does not move again (what
/// it would find in place is the installed snapshot: regression, review, eleventh session).
/// Returns whether there was one. The caller holds the directory's lock; recovery calls it
/// first.
pub fn finish_interrupted_set_aside(data_directory: &Path) -> Result<bool, WalError> {
    Ok(finish_set_aside_steps(data_directory, usize::MAX)?.is_some())
}

/// The crash tests' entry: does at most `steps_max` of the steps of
/// `finish_interrupted_set_aside` that change the directory, as a crash after that many would
/// leave it. Returns the steps done (`None` without an intent); fewer than `steps_max` means
/// the set-aside is finished.
#[doc(hidden)]
pub fn finish_set_aside_steps(data_directory: &Path, steps_max: usize) -> Result<Option<usize>, WalError> {
    let path = data_directory.join(SET_ASIDE_INTENT_FILE);
    let Some(bytes) = read_intent(&path, SET_ASIDE_INTENT_BYTES_MAX)? else { return Ok(None) };
    let text = String::from_utf8_lossy(&bytes);
    let (body, moved) = match text.strip_suffix(SET_ASIDE_MOVED_LINE) {
        Some(body) if body.ends_with('\n') => (body, true),
        _ => (&text[..], false),
    };
    let parsed = body
        .strip_prefix(SET_ASIDE_INTENT_HEADER)
        .and_then(|rest| rest.strip_prefix("\ninto="))
        .and_then(|rest| rest.strip_suffix('\n'))
        .and_then(|rest| rest.split_once("\ninstall="))
        .filter(|(into, install)| !into.is_empty() && !into.contains('/') && !install.contains('\n'));
    let Some((into, install)) = parsed else {
        return Err(WalError::SetAsideIntent {
            path: path.display().to_string(),
            why: format!("not a set-aside intent ({} bytes)", bytes.len()),
        });
    };
    let mut steps = 0;
    let mut step = || {
        let go = steps < steps_max;
        steps += usize::from(go);
        go
    };
    let replaced = data_directory.join("replaced").join(into);
    if !moved {
        if !step() {
            return Ok(Some(steps));
        }
        crate::storage::create_directory_durably(&replaced).map_err(io(&replaced))?;
        for part in HISTORY_PARTS {
            let from = data_directory.join(part);
            if from.exists() {
                let to = replaced.join(part);
                if to.exists() {
                    return Err(WalError::SetAsideIntent {
                        path: path.display().to_string(),
                        why: format!("{} and {} both exist", from.display(), to.display()),
                    });
                }
                if !step() {
                    return Ok(Some(steps));
                }
                std::fs::rename(&from, &to).map_err(io(&from))?;
            }
        }
        // A rewind that failed or was cut short has nothing left to cut: its log is gone.
        let rewind_intent = rewind_intent_path(data_directory);
        if rewind_intent.exists() {
            if !step() {
                return Ok(Some(steps));
            }
            std::fs::remove_file(&rewind_intent).map_err(io(&rewind_intent))?;
        }
        sync_directory(&replaced)?;
        sync_directory(data_directory)?;
        if !step() {
            return Ok(Some(steps));
        }
        write_set_aside_intent_text(data_directory, into, install, true)?;
    }
    // Nothing of Reservoir's makes a log or an archive before the intent is gone (recovery
    // waits for it); one there was made by hand, and is refused, not moved or panicked on.
    for part in ["wal", "archive"] {
        let stray = data_directory.join(part);
        if stray.exists() {
            return Err(WalError::SetAsideIntent {
                path: path.display().to_string(),
                why: format!("{} exists though the history was moved aside", stray.display()),
            });
        }
    }
    if !install.is_empty() && Path::new(install).exists() {
        let snapshot_file = Path::new(install);
        let covers = snapshot::covers_lsn_of(snapshot_file)?;
        let snapshots_directory = snapshot_directory(data_directory);
        if !step() {
            return Ok(Some(steps));
        }
        crate::storage::create_directory_durably(&snapshots_directory).map_err(io(&snapshots_directory))?;
        let target = snapshots_directory.join(snapshot::snapshot_file_name(covers));
        if !step() {
            return Ok(Some(steps));
        }
        std::fs::rename(snapshot_file, &target).map_err(io(&target))?;
        sync_directory(&snapshots_directory)?;
        if let Some(parent) = snapshot_file.parent() {
            sync_directory(parent)?;
        }
    }
    if !step() {
        return Ok(Some(steps));
    }
    std::fs::remove_file(&path).map_err(io(&path))?;
    sync_directory(data_directory)?;
    assert!(!path.exists(), "the intent is gone once the set-aside is done");
    Ok(Some(steps))
}

/// Replaces the log and snapshots of `data_directory` with the snapshot in `snapshot_file`
/// (checked first): `wal/`, `snapshots/` and `archive/` move to `DATA_DIR/replaced/<now_ms>/`,
/// the snapshot becomes the only one. Recovery then starts from it with an empty log in its
/// history. Returns where the old files went.
pub fn install_base_backup(data_directory: &Path, snapshot_file: &Path, now_ms: u64) -> Result<PathBuf, WalError> {
    let _lock = lock_data_directory(data_directory)?;
    let loaded = snapshot::load(snapshot_file)?;
    let covers = loaded.covers_lsn;
    drop(loaded);
    let snapshot_file = std::path::absolute(snapshot_file).map_err(io(snapshot_file))?;
    let replaced = move_aside(data_directory, now_ms, Some(&snapshot_file))?;
    let target = snapshot_directory(data_directory).join(snapshot::snapshot_file_name(covers));
    assert!(target.exists(), "the install put the snapshot in place");
    Ok(replaced)
}
