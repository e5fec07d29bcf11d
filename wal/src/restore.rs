//! Point-in-time restore: the state of a data directory as of an LSN or a moment, rebuilt from
//! the newest snapshot (live or archived) at or before that point plus the log (archived and
//! live segments) up to it. The source is only read. docs/wal.md, "Point-in-time restore".
//!
//! A target time is resolved like PostgreSQL's `recovery_target_time`: the restore stops
//! before the first record stamped after the target (inclusive, the default) or at or after it
//! (`inclusive = false`), so it ends with the last record at or before the target. Timestamps
//! are the primary's clock at each record: if that clock stepped back, "the first record past
//! the target" is still well defined and is where the restore stops.

use std::path::Path;
use std::time::Instant;

use reservoir_engine::{Config, Engine, Lsn};

use crate::archive::all_snapshots;
use crate::format::new_history;
use crate::scan::{scan_until, Flow};
use crate::snapshot::{self, SnapshotWritten};
use crate::{layered_storage_existing, log_history, WalError, PROGRESS_RECORDS_INTERVAL};

/// Where to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreTarget {
    /// The state right after this LSN (inclusive) or right before it (exclusive).
    Lsn(Lsn),
    /// The state after the last record stamped at or before (inclusive) or before (exclusive)
    /// this Unix time in milliseconds.
    Time { unix_ms: u64 },
}

/// A target made concrete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// The last LSN the restored state includes (0: the empty ledger).
    pub lsn: Lsn,
    /// The first record left out, with its timestamp (None: the target is the log's end).
    pub first_excluded: Option<(Lsn, u64)>,
}

/// A restored engine and how it was built.
pub struct Restored {
    pub engine: Engine,
    pub target: ResolvedTarget,
    /// The snapshot it started from (None: the log from LSN 1).
    pub base_snapshot: Option<Lsn>,
    /// Newer snapshots at or before the target that did not load, and why.
    pub snapshots_skipped: Vec<(Lsn, String)>,
    pub records_replayed: u64,
    /// The timestamp of the last record replayed, if any was.
    pub last_timestamp_ms: Option<u64>,
    /// The source directory's history.
    pub source_history: Option<u64>,
    pub seconds: f64,
}

fn refuse(why: String) -> WalError {
    WalError::Restore(why)
}

/// Refuses a source directory with a rewind a crash cut short: its log past the kept LSN is
/// half cut (valid records from the forked history, or zeros before them).
fn refuse_pending_rewind(data_directory: &Path) -> Result<(), WalError> {
    // A set-aside (a base backup's install) a crash cut short: the history is in pieces.
    let intent = data_directory.join(crate::rejoin::SET_ASIDE_INTENT_FILE);
    if intent.exists() {
        return Err(refuse(format!(
            "{} has a base backup's install (or a set-aside) that a crash cut short ({}): start \
             `reservoir serve` on it once, or take `reservoir snapshot --data-dir` of it, to finish it, then \
             restore",
            data_directory.display(),
            intent.display()
        )));
    }
    match crate::rejoin::read_rewind_intent(data_directory)? {
        None => Ok(()),
        Some(keep_through) => Err(refuse(format!(
            "{} has a rewind that a crash cut short (REWIND-INTENT keeps LSN 1..={}): start \
             `reservoir serve` on it once, or take `reservoir snapshot --data-dir` of it, to finish the \
             cut, then restore",
            data_directory.display(),
            keep_through.0
        ))),
    }
}

/// Resolves `target` against the log of `data_directory` (archive and live).
pub fn resolve(data_directory: &Path, target: RestoreTarget, inclusive: bool) -> Result<ResolvedTarget, WalError> {
    refuse_pending_rewind(data_directory)?;
    match target {
        RestoreTarget::Lsn(lsn) => {
            if !inclusive && lsn.0 == 0 {
                return Err(refuse("there is no state before LSN 0".into()));
            }
            let lsn = if inclusive { lsn } else { Lsn(lsn.0 - 1) };
            Ok(ResolvedTarget { lsn, first_excluded: None })
        }
        RestoreTarget::Time { unix_ms } => {
            let storage = layered_storage_existing(data_directory);
            let in_time = |taken: u64| if inclusive { taken <= unix_ms } else { taken < unix_ms };
            // The newest snapshot taken by the target holds only records from before it: the
            // search starts after it, and the state is at least its own (regression, review,
            // eleventh session: the search read the log from LSN 1, so a log that ends inside
            // what the newest snapshot covers, a start-up refusal that names `restore` as the
            // way out, resolved to its last whole record and dropped the acknowledged records
            // only the snapshot held; and one damaged byte in an archived segment every
            // snapshot covers failed every restore to a time).
            let past = |timestamp_ms: u64| if inclusive { timestamp_ms > unix_ms } else { timestamp_ms >= unix_ms };
            let mut floor = None;
            for (lsn, path) in all_snapshots(data_directory)? {
                // A snapshot whose header does not read is passed over, as `restore` passes it.
                if !snapshot::created_ms(&path).is_ok_and(in_time) {
                    continue;
                }
                // Its time is its taker's clock (a standby's, maybe behind), a record's the
                // primary's: where the log still holds the snapshot's last record, that
                // record's stamp must be in time too (review, eleventh session: a standby's
                // snapshot stamped before the bad import it holds was taken as the floor).
                if last_record_timestamp_ms(&storage, lsn).is_some_and(past) {
                    continue;
                }
                floor = Some(lsn);
                break;
            }
            // From after the floor, or from the log's start without one.
            let from = floor.map_or(Lsn(1), |floor| Lsn(floor.0 + 1));
            let mut first_excluded = None;
            let mut first_on_disk = None;
            let end = scan_until(&storage, from, Lsn(0), |record| {
                assert!(record.lsn >= from, "the scan starts after the snapshot");
                first_on_disk.get_or_insert(record.lsn);
                if past(record.timestamp_ms) {
                    first_excluded = Some((record.lsn, record.timestamp_ms));
                    return Ok(Flow::Stop);
                }
                Ok(Flow::Continue)
            })?;
            let lsn = match first_excluded {
                Some((lsn, _)) => Lsn(lsn.0 - 1),
                None => end.last_lsn,
            };
            if let Some(floor) = floor {
                let lsn = lsn.max(floor);
                assert!(first_excluded.is_none_or(|(excluded, _)| excluded.0 == lsn.0 + 1));
                return Ok(ResolvedTarget { lsn, first_excluded });
            }
            assert!(first_excluded.is_none_or(|(excluded, _)| excluded.0 == lsn.0 + 1));
            // No record on disk is at or before the target: the state at it is the one just
            // before the log's first record (the newest snapshot's, with no log at all), which
            // only a snapshot of that very LSN, taken at or before the target, shows. Regression
            // (review): this resolved to that LSN (or to 0, an empty ledger, with no log) whatever
            // the snapshot's time, so a time before the oldest reachable state restored a later
            // one without a word.
            let none_before = match first_on_disk {
                Some(first) => first_excluded.is_some_and(|(excluded, _)| excluded == first) && first.0 > 1,
                None => true,
            };
            if none_before {
                let snapshots = all_snapshots(data_directory)?;
                let wanted = match first_on_disk {
                    Some(first) => Some(Lsn(first.0 - 1)),
                    None => snapshots.iter().map(|(lsn, _)| *lsn).max(),
                };
                if let Some(wanted) = wanted {
                    let taken_ms = match snapshots.iter().find(|(lsn, _)| *lsn == wanted) {
                        Some((_, path)) => Some(snapshot::created_ms(path)?),
                        None => None,
                    };
                    match taken_ms {
                        Some(taken) if in_time(taken) => {}
                        Some(taken) => {
                            return Err(refuse(format!(
                                "the oldest state this directory holds is its snapshot of LSN {} taken at {} ms \
                                 (the log before it is gone): a time before that cannot be restored from here",
                                wanted.0, taken
                            )));
                        }
                        None => {
                            return Err(refuse(format!(
                                "no record on disk is at or before that time and no snapshot covers LSN {} \
                                 (the log before it is gone): that time cannot be restored from here",
                                wanted.0
                            )));
                        }
                    }
                    return Ok(ResolvedTarget { lsn: wanted, first_excluded });
                }
            }
            Ok(ResolvedTarget { lsn, first_excluded })
        }
    }
}

/// The timestamp of the record at `lsn`, if the log holds it and it reads (`None` otherwise:
/// pruned, past the end, or in damaged bytes, which the caller does not need to read).
fn last_record_timestamp_ms(storage: &crate::LayeredStorage, lsn: Lsn) -> Option<u64> {
    if lsn.0 == 0 {
        return None;
    }
    let mut found = None;
    let scanned = scan_until(storage, lsn, Lsn(0), |record| {
        if record.lsn == lsn {
            found = Some(record.timestamp_ms);
        }
        Ok(Flow::Stop)
    });
    scanned.ok().and(found)
}

/// Rebuilds the state of `data_directory` at `target`. `config` is used only if no snapshot
/// is at or before the target (the log is then replayed from LSN 1). `progress` is called
/// every [`PROGRESS_RECORDS_INTERVAL`] records with the LSN reached and the records so far.
pub fn restore(
    data_directory: &Path,
    config: Config,
    target: RestoreTarget,
    inclusive: bool,
    mut progress: impl FnMut(Lsn, u64),
) -> Result<Restored, WalError> {
    let started = Instant::now();
    refuse_pending_rewind(data_directory)?;
    let storage = layered_storage_existing(data_directory);
    let source_history = log_history(&storage)?;
    let resolved = resolve(data_directory, target, inclusive)?;

    // The newest snapshot at or before the target that loads.
    let mut snapshots_skipped = Vec::new();
    let mut base = None;
    for (lsn, path) in all_snapshots(data_directory)? {
        if lsn > resolved.lsn {
            continue;
        }
        let archived = crate::archive::archived_path(data_directory, lsn);
        let loaded = match snapshot::load(&path) {
            // Moved to the archive since it was listed (a server's retention).
            Err(_) if !path.exists() && archived.exists() => snapshot::load(&archived),
            other => other,
        };
        match loaded {
            Ok(loaded) if loaded.covers_lsn == lsn => {
                if let Some(log) = source_history.filter(|&log| log != loaded.history) {
                    return Err(WalError::HistoryMismatch { snapshot: loaded.history, log });
                }
                base = Some(loaded);
                break;
            }
            Ok(_) => snapshots_skipped.push((lsn, "file name and contents disagree on the LSN".into())),
            Err(error) => snapshots_skipped.push((lsn, error.to_string())),
        }
    }
    let base_snapshot = base.as_ref().map(|loaded| loaded.covers_lsn);
    let engine = base.map_or_else(|| Engine::new(config), |loaded| loaded.engine);

    let from = engine.next_lsn();
    let mut records_replayed = 0u64;
    let mut last_timestamp_ms = None;
    if resolved.lsn >= from {
        scan_until(&storage, from, from, |record| {
            assert!(record.lsn <= resolved.lsn, "the scan stops at the target");
            engine.apply(record).map_err(|source| WalError::Replay { lsn: record.lsn, source })?;
            records_replayed += 1;
            last_timestamp_ms = Some(record.timestamp_ms);
            if records_replayed % PROGRESS_RECORDS_INTERVAL == 0 {
                progress(record.lsn, records_replayed);
            }
            Ok(if record.lsn == resolved.lsn { Flow::Stop } else { Flow::Continue })
        })?;
    }
    let reached = Lsn(engine.next_lsn().0 - 1);
    if reached != resolved.lsn {
        return Err(refuse(format!(
            "the log ends at LSN {}, before the target LSN {} (nothing was written)",
            reached.0, resolved.lsn.0
        )));
    }
    let report = engine.verify();
    if !report.violations.is_empty() {
        return Err(refuse(format!("the restored state does not verify: {}", report.violations.join("; "))));
    }
    Ok(Restored {
        engine,
        target: resolved,
        base_snapshot,
        snapshots_skipped,
        records_replayed,
        last_timestamp_ms,
        source_history,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes a restored state as a new data directory `into` (which must not exist, or be
/// empty): one snapshot at the target LSN under a new history id, so that its future log can
/// never be mixed with the source's, and an empty log that continues after the target.
/// `provenance` is written beside them as `RESTORED.txt`, for the operator.
pub fn write_data_directory(
    restored: &Restored,
    into: &Path,
    created_ms: u64,
    provenance: &str,
) -> Result<SnapshotWritten, WalError> {
    // Each error names the path it was about (regression, review, eleventh session: every one
    // named `into`, which does not exist until the last rename).
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| WalError::io(path, source)
    };
    check_restore_target(into)?;
    // Built beside `into` and renamed into place once whole and synced: a restore cut short
    // (Ctrl-C, a full disk) leaves no directory at `into` that could start as an empty ledger.
    // Regression (review): the directory was written in place, and an interrupted restore
    // left `wal/` and a half-written snapshot that `verify` passed as an empty ledger.
    let building = building_path(into);
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(io(&building))?;
    }
    let wal = crate::wal_directory(&building);
    crate::storage::create_directory_durably(&wal).map_err(io(&wal))?;
    let history = new_history();
    assert_ne!(Some(history), restored.source_history, "a restore starts a new history");
    let written = snapshot::write(&crate::snapshot_directory(&building), &restored.engine, history, created_ms)?;
    assert_eq!(written.covers_lsn, restored.target.lsn, "the snapshot covers exactly the target");
    {
        use std::io::Write as _;
        let provenance_path = building.join("RESTORED.txt");
        let mut file = std::fs::File::create(&provenance_path).map_err(io(&provenance_path))?;
        file.write_all(provenance.as_bytes()).map_err(io(&provenance_path))?;
        file.sync_all().map_err(io(&provenance_path))?;
    }
    std::fs::File::open(&building).and_then(|directory| directory.sync_all()).map_err(io(&building))?;
    // Over an empty directory, or where none is: rename(2) takes either.
    std::fs::rename(&building, into).map_err(io(into))?;
    let parent = into.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(parent).and_then(|directory| directory.sync_all()).map_err(io(parent))?;
    let path = crate::snapshot_directory(into).join(written.path.file_name().expect("a snapshot file"));
    assert!(path.exists(), "the snapshot moved with its directory");
    Ok(SnapshotWritten { path, ..written })
}

/// Refuses a restore target that exists and is not an empty directory: checked before the
/// replay (which may take long) and again before writing.
pub fn check_restore_target(into: &Path) -> Result<(), WalError> {
    let io = |source| WalError::io(into.display().to_string(), source);
    if into.exists() && (!into.is_dir() || std::fs::read_dir(into).map_err(io)?.next().is_some()) {
        return Err(refuse(format!("{} exists and is not empty: restore into a new directory", into.display())));
    }
    Ok(())
}

/// Where a restore into `into` is built before it is renamed there: a hidden sibling.
fn building_path(into: &Path) -> std::path::PathBuf {
    let name = into.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_else(|| "restore".into());
    into.with_file_name(format!(".{name}.restoring"))
}
