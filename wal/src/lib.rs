//! Reservoir's write-ahead log: segmented, checksummed, group-committed; and recovery, which
//! replays it into an [`Engine`]. The byte layout and the crash argument are in docs/wal.md.
//!
//! The engine decides; this crate only persists and replays its effect records. It depends on
//! `reservoir-engine`, never the reverse.

pub mod codec;
pub mod format;
mod scan;
pub mod storage;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use reservoir_engine::{Engine, EngineError, Lsn};

pub use format::{RECORD_PAYLOAD_BYTES_MAX, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};
pub use scan::{scan, AppendPosition, ScanEnd, TornTail};
pub use storage::{CrashStorage, FsStorage, Storage};
pub use writer::{
    Durability, GroupWrite, Wal, WalOptions, WalStats, Writer, BATCH_BYTES_MAX, BATCH_RECORDS_MAX, REORDER_RECORDS_MAX,
    SUBMISSIONS_QUEUED_MAX,
};

/// Everything that can go wrong persisting or reading the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{segment}: bad segment header: {why}")]
    BadSegmentHeader { segment: String, why: String },
    #[error(
        "WAL segment {missing} is missing (the one before it is {after}); the log cannot be \
         replayed past it. Restore from an archive copy of the segment, or restore to a point \
         before it (`reservoir restore --to-lsn`)"
    )]
    MissingSegment { after: String, missing: String },
    #[error("the WAL starts at LSN {}, but recovery needs LSN {} (no snapshot covers the records before it)", first.0, needed.0)]
    MissingRecords { needed: Lsn, first: Lsn },
    #[error(
        "{segment} at offset {offset}: corrupt record after LSN {}: {why}. Refusing to start: \
         records after it were acknowledged. The log is intact up to LSN {}; restore to it with \
         `reservoir restore --to-lsn {}` or repair the segment from a replica",
        after_lsn.0, after_lsn.0, after_lsn.0
    )]
    Corrupt { segment: String, offset: u64, after_lsn: Lsn, why: String },
    #[error("replaying LSN {}: {source}", lsn.0)]
    Replay {
        lsn: Lsn,
        #[source]
        source: EngineError,
    },
    #[error("the WAL writer failed and acknowledges nothing more: {0}")]
    Failed(String),
    #[error("invalid WAL configuration: {0}")]
    Config(String),
}

impl WalError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> WalError {
        WalError::Io { what: what.into(), source }
    }
}

/// What recovery did.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovery {
    pub scan: ScanEnd,
    pub records_replayed: u64,
    pub seconds: f64,
}

impl Recovery {
    pub fn records_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.records_replayed as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Records between two calls of the progress callback during replay.
pub const PROGRESS_RECORDS_INTERVAL: u64 = 100_000;

/// Replays the log into `engine` (which holds the state up to `engine.next_lsn() - 1`, from a
/// snapshot or empty), cuts a torn tail, and returns where a writer continues. `progress` is
/// called every [`PROGRESS_RECORDS_INTERVAL`] records with the LSN reached.
pub fn recover(storage: &dyn Storage, engine: &Engine, mut progress: impl FnMut(Lsn)) -> Result<Recovery, WalError> {
    let started = Instant::now();
    let from = engine.next_lsn();
    let mut replayed = 0u64;
    let scan = scan::scan(storage, from, from, |record| {
        engine.apply(record).map_err(|source| WalError::Replay { lsn: record.lsn, source })?;
        replayed += 1;
        if replayed % PROGRESS_RECORDS_INTERVAL == 0 {
            progress(record.lsn);
        }
        Ok(())
    })?;
    if scan.last_lsn.0 + 1 < from.0 && scan.first_lsn.is_some() {
        return Err(WalError::MissingRecords { needed: from, first: Lsn(scan.last_lsn.0 + 1) });
    }
    if let Some(torn) = &scan.torn {
        cut_torn_tail(storage, torn)?;
    }
    assert_eq!(engine.next_lsn(), scan.position.next_lsn.max(from), "replay and scan disagree on the next LSN");
    Ok(Recovery { scan, records_replayed: replayed, seconds: started.elapsed().as_secs_f64() })
}

/// Zeroes a torn tail and removes the segments after it, durably, so that what follows the
/// cut can never be mistaken for records again.
pub fn cut_torn_tail(storage: &dyn Storage, torn: &TornTail) -> Result<(), WalError> {
    for &later in torn.later_segments.iter().rev() {
        storage.remove(later).map_err(|source| WalError::io(storage.describe(later), source))?;
    }
    let length =
        storage.read(torn.sequence).map_err(|source| WalError::io(storage.describe(torn.sequence), source))?.len()
            as u64;
    assert!(torn.offset <= length);
    const ZEROS_BYTES: usize = 1 << 20;
    let zeros = vec![0u8; ZEROS_BYTES];
    let mut at = torn.offset;
    while at < length {
        let chunk = (length - at).min(ZEROS_BYTES as u64) as usize;
        storage
            .write(torn.sequence, at, &zeros[..chunk])
            .map_err(|source| WalError::io(storage.describe(torn.sequence), source))?;
        at += chunk as u64;
    }
    storage.sync(torn.sequence).map_err(|source| WalError::io(storage.describe(torn.sequence), source))?;
    Ok(())
}

/// Opens the WAL in `directory` for `engine`: recovers, then starts a writer.
pub fn open(directory: &Path, engine: &Engine, options: WalOptions) -> Result<(Wal, Recovery), WalError> {
    let storage =
        Arc::new(FsStorage::new(directory).map_err(|source| WalError::io(directory.display().to_string(), source))?);
    let recovery = recover(storage.as_ref(), engine, |_| {})?;
    let wal = Wal::start(storage, options, recovery.scan.position)?;
    Ok((wal, recovery))
}
