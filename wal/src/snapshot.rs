//! Snapshots: the whole engine state as of an LSN, archived with rkyv, written to a temporary
//! file, fsynced, renamed, the directory fsynced; loaded with memmap2, checked (header
//! checksum, archive checksum, rkyv validation, then `Engine::restore`'s own checks).
//!
//! rkyv format, chosen deliberately and recorded in the header: little-endian, aligned,
//! 64-bit relative pointers (a 10 M-item catalog is about 1 GB archived, and the 32-bit
//! default would cap archives at 2 GiB). Validation is on (bytecheck): a snapshot is read from
//! disk, and a flipped bit must be an error, not undefined behaviour; the checksum catches
//! almost everything first, validation is the guarantee.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use reservoir_engine::{
    Config, Counters, Engine, ItemId, LineResult, Lsn, OperationEntry, Reply, Reservation, ReservationLineState,
    ResultCode, SavedItem, SavedOperation, SavedReservation, SavedShard, State, TenantId,
};
use rkyv::rancor;

use crate::codec::{state_from, state_number};
use crate::WalError;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RSVRSNAP";
/// 2: the state carries the epoch history.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// The rkyv format flags this build writes and reads: bit 0 little-endian, bit 1 aligned,
/// bit 2 64-bit relative pointers.
pub const RKYV_FORMAT: u32 = 0b111;
pub const SNAPSHOT_HEADER_BYTES: usize = 64;
/// Snapshots kept in the snapshot directory (older ones move to the archive after a new one is
/// durable; recovery falls back from a corrupt newest one to the one before it).
pub const SNAPSHOTS_KEPT_MAX: usize = 3;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapState {
    shards: u32,
    id_shards: u32,
    retention_ms: u64,
    next_lsn: u64,
    tenants: Vec<String>,
    item_shards: Vec<SnapShard>,
    reservations: Vec<SnapReservation>,
    operations: Vec<SnapOperation>,
    /// (epoch, LSN of the record that began it), ascending.
    epochs: Vec<[u64; 2]>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapShard {
    items: Vec<SnapItem>,
    names: Vec<u8>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapItem {
    tenant: u32,
    sku_bytes: u8,
    location_bytes: u8,
    /// on_hand, reserved, safety_stock, backorder_limit, inflow_total, committed_total.
    counters: [i64; 6],
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapReply {
    code: u16,
    lines: Vec<SnapLineResult>,
    deadline_ms: u64,
    on_hand: i64,
    count: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapLineResult {
    code: u16,
    requested: i64,
    applied: i64,
    available: i64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapReservation {
    tenant: u32,
    id: String,
    fingerprint: u64,
    reply: SnapReply,
    state: u8,
    deadline_ms: u64,
    lines: Vec<SnapLine>,
    closed_ms: Option<u64>,
    closed_lsn: Option<u64>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapLine {
    shard: u32,
    index: u32,
    requested: i64,
    reserved: i64,
    committed: i64,
    released: i64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapOperation {
    tenant: u32,
    id: String,
    fingerprint: u64,
    reply: SnapReply,
    at_ms: u64,
    lsn: u64,
}

fn reply_to_snap(reply: &Reply) -> SnapReply {
    SnapReply {
        code: reply.code.number(),
        lines: reply
            .lines
            .iter()
            .map(|line| SnapLineResult {
                code: line.code.number(),
                requested: line.requested,
                applied: line.applied,
                available: line.available,
            })
            .collect(),
        deadline_ms: reply.deadline_ms,
        on_hand: reply.on_hand,
        count: reply.count,
    }
}

fn code_from(number: u16) -> Result<ResultCode, String> {
    ResultCode::from_number(number).ok_or_else(|| format!("unknown result code {number}"))
}

fn reply_from_snap(reply: SnapReply) -> Result<Reply, String> {
    let mut lines = Vec::with_capacity(reply.lines.len());
    for line in reply.lines {
        lines.push(LineResult {
            code: code_from(line.code)?,
            requested: line.requested,
            applied: line.applied,
            available: line.available,
        });
    }
    Ok(Reply {
        code: code_from(reply.code)?,
        lines: lines.into(),
        deadline_ms: reply.deadline_ms,
        on_hand: reply.on_hand,
        count: reply.count,
    })
}

fn to_snap(state: &State) -> SnapState {
    SnapState {
        shards: state.config.shards as u32,
        id_shards: state.config.id_shards as u32,
        retention_ms: state.config.idempotency_retention_ms,
        next_lsn: state.next_lsn.0,
        tenants: state.tenants.clone(),
        item_shards: state
            .shards
            .iter()
            .map(|shard| SnapShard {
                items: shard
                    .items
                    .iter()
                    .map(|item| SnapItem {
                        tenant: item.tenant.0,
                        sku_bytes: item.sku_bytes,
                        location_bytes: item.location_bytes,
                        counters: [
                            item.counters.on_hand,
                            item.counters.reserved,
                            item.counters.safety_stock,
                            item.counters.backorder_limit,
                            item.counters.inflow_total,
                            item.counters.committed_total,
                        ],
                    })
                    .collect(),
                names: shard.names.clone(),
            })
            .collect(),
        reservations: state
            .reservations
            .iter()
            .map(|saved| SnapReservation {
                tenant: saved.tenant.0,
                id: saved.id.clone(),
                fingerprint: saved.reservation.fingerprint,
                reply: reply_to_snap(&saved.reservation.reply),
                state: state_number(saved.reservation.state),
                deadline_ms: saved.reservation.deadline_ms,
                lines: saved
                    .reservation
                    .lines
                    .iter()
                    .map(|line| SnapLine {
                        shard: line.item.shard,
                        index: line.item.index,
                        requested: line.requested,
                        reserved: line.reserved,
                        committed: line.committed,
                        released: line.released,
                    })
                    .collect(),
                closed_ms: saved.reservation.closed_ms,
                closed_lsn: saved.closed_lsn.map(|lsn| lsn.0),
            })
            .collect(),
        operations: state
            .operations
            .iter()
            .map(|saved| SnapOperation {
                tenant: saved.tenant.0,
                id: saved.id.clone(),
                fingerprint: saved.entry.fingerprint,
                reply: reply_to_snap(&saved.entry.reply),
                at_ms: saved.entry.at_ms,
                lsn: saved.entry.lsn.0,
            })
            .collect(),
        epochs: state.epochs.iter().map(|&(epoch, lsn)| [epoch, lsn.0]).collect(),
    }
}

/// The state of an archive (validated by `rkyv::access`). Item shards, nearly all of a
/// snapshot's bytes, are copied straight out of the archive on `threads` threads; the rest is
/// deserialized.
fn from_archive(archived: &ArchivedSnapState, threads: usize) -> Result<State, String> {
    let config = Config {
        shards: archived.shards.to_native() as usize,
        id_shards: archived.id_shards.to_native() as usize,
        idempotency_retention_ms: archived.retention_ms.to_native(),
    };
    let shard_count = archived.item_shards.len();
    let threads = threads.clamp(1, shard_count.max(1));
    let mut shards: Vec<SavedShard> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|first| {
                scope.spawn(move || {
                    (first..shard_count)
                        .step_by(threads)
                        .map(|number| (number, shard_from_archive(&archived.item_shards[number])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut numbered: Vec<(usize, SavedShard)> =
            workers.into_iter().flat_map(|worker| worker.join().expect("a snapshot thread panicked")).collect();
        numbered.sort_by_key(|&(number, _)| number);
        numbered.into_iter().map(|(_, shard)| shard).collect()
    });
    assert_eq!(shards.len(), shard_count, "every shard converted once");
    let rest = |error: rancor::Error| format!("rkyv deserialization failed: {error}");
    let snap = SnapState {
        shards: archived.shards.to_native(),
        id_shards: archived.id_shards.to_native(),
        retention_ms: archived.retention_ms.to_native(),
        next_lsn: archived.next_lsn.to_native(),
        tenants: rkyv::deserialize::<Vec<String>, rancor::Error>(&archived.tenants).map_err(rest)?,
        item_shards: Vec::new(),
        reservations: rkyv::deserialize::<Vec<SnapReservation>, rancor::Error>(&archived.reservations).map_err(rest)?,
        operations: rkyv::deserialize::<Vec<SnapOperation>, rancor::Error>(&archived.operations).map_err(rest)?,
        epochs: rkyv::deserialize::<Vec<[u64; 2]>, rancor::Error>(&archived.epochs).map_err(rest)?,
    };
    let mut state = from_snap(snap, config)?;
    std::mem::swap(&mut state.shards, &mut shards);
    assert!(shards.is_empty(), "from_snap converts no item shard");
    Ok(state)
}

fn shard_from_archive(shard: &ArchivedSnapShard) -> SavedShard {
    SavedShard {
        items: shard
            .items
            .iter()
            .map(|item| SavedItem {
                tenant: TenantId(item.tenant.to_native()),
                sku_bytes: item.sku_bytes,
                location_bytes: item.location_bytes,
                counters: Counters {
                    on_hand: item.counters[0].to_native(),
                    reserved: item.counters[1].to_native(),
                    safety_stock: item.counters[2].to_native(),
                    backorder_limit: item.counters[3].to_native(),
                    inflow_total: item.counters[4].to_native(),
                    committed_total: item.counters[5].to_native(),
                },
            })
            .collect(),
        names: shard.names.as_slice().to_vec(),
    }
}

/// Everything but the item shards (see [`from_archive`]).
fn from_snap(snap: SnapState, config: Config) -> Result<State, String> {
    assert!(snap.item_shards.is_empty(), "item shards come from the archive");
    let shards = Vec::new();
    let mut reservations = Vec::with_capacity(snap.reservations.len());
    for saved in snap.reservations {
        let state =
            state_from(saved.state).ok_or_else(|| format!("reservation {}: bad state {}", saved.id, saved.state))?;
        reservations.push(SavedReservation {
            tenant: TenantId(saved.tenant),
            reservation: Reservation {
                fingerprint: saved.fingerprint,
                reply: reply_from_snap(saved.reply)?,
                state,
                deadline_ms: saved.deadline_ms,
                lines: saved
                    .lines
                    .into_iter()
                    .map(|line| ReservationLineState {
                        item: ItemId { shard: line.shard, index: line.index },
                        requested: line.requested,
                        reserved: line.reserved,
                        committed: line.committed,
                        released: line.released,
                    })
                    .collect(),
                closed_ms: saved.closed_ms,
            },
            closed_lsn: saved.closed_lsn.map(Lsn),
            id: saved.id,
        });
    }
    let mut operations = Vec::with_capacity(snap.operations.len());
    for saved in snap.operations {
        operations.push(SavedOperation {
            tenant: TenantId(saved.tenant),
            entry: OperationEntry {
                fingerprint: saved.fingerprint,
                reply: reply_from_snap(saved.reply)?,
                at_ms: saved.at_ms,
                lsn: Lsn(saved.lsn),
            },
            id: saved.id,
        });
    }
    let epochs = snap.epochs.iter().map(|&[epoch, lsn]| (epoch, Lsn(lsn))).collect();
    Ok(State { config, next_lsn: Lsn(snap.next_lsn), tenants: snap.tenants, shards, reservations, operations, epochs })
}

/// The file of the snapshot that covers every record up to `lsn`.
pub fn snapshot_file_name(lsn: Lsn) -> String {
    format!("{:020}.snap", lsn.0)
}

/// A snapshot written: where, what it covers, how big.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotWritten {
    pub path: PathBuf,
    pub covers_lsn: Lsn,
    pub bytes: u64,
    pub seconds: f64,
}

/// Writes `engine`'s state (which must not change meanwhile) as a snapshot in `directory`,
/// durably. Older snapshots stay: [`crate::archive::retain`] moves those beyond
/// [`SNAPSHOTS_KEPT_MAX`] to the archive.
pub fn write(directory: &Path, engine: &Engine, history: u64, created_ms: u64) -> Result<SnapshotWritten, WalError> {
    assert!(history != 0, "a snapshot belongs to a history");
    let started = std::time::Instant::now();
    crate::storage::create_directory_durably(directory)
        .map_err(|source| WalError::io(directory.display().to_string(), source))?;
    remove_leftovers(directory)?;
    let state = engine.export();
    let covers_lsn = Lsn(state.next_lsn.0 - 1);
    let archive = rkyv::to_bytes::<rancor::Error>(&to_snap(&state))
        .map_err(|error| WalError::Snapshot { path: directory.display().to_string(), why: error.to_string() })?;
    drop(state);
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..12].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&covers_lsn.0.to_le_bytes());
    header[24..32].copy_from_slice(&(archive.len() as u64).to_le_bytes());
    header[32..36].copy_from_slice(&crc32c::crc32c(&archive).to_le_bytes());
    header[36..40].copy_from_slice(&RKYV_FORMAT.to_le_bytes());
    header[40..48].copy_from_slice(&created_ms.to_le_bytes());
    header[48..56].copy_from_slice(&history.to_le_bytes());
    let crc = crc32c::crc32c(&header);
    header[12..16].copy_from_slice(&crc.to_le_bytes());

    let path = directory.join(snapshot_file_name(covers_lsn));
    let temporary = directory.join(format!("{}.tmp", snapshot_file_name(covers_lsn)));
    let io = |source| WalError::io(temporary.display().to_string(), source);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temporary).map_err(io)?;
    file.write_all(&header).map_err(io)?;
    file.write_all(&archive).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(io)?;
    File::open(directory).and_then(|directory| directory.sync_all()).map_err(io)?;
    let bytes = (SNAPSHOT_HEADER_BYTES + archive.len()) as u64;
    Ok(SnapshotWritten { path, covers_lsn, bytes, seconds: started.elapsed().as_secs_f64() })
}

/// Removes temporary files of snapshot writes that a crash interrupted.
fn remove_leftovers(directory: &Path) -> Result<(), WalError> {
    let entries =
        std::fs::read_dir(directory).map_err(|source| WalError::io(directory.display().to_string(), source))?;
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|name| name.ends_with(".snap.tmp")) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The LSNs of the snapshots in `directory`, ascending.
pub fn list(directory: &Path) -> Result<Vec<Lsn>, WalError> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(source) => return Err(WalError::io(directory.display().to_string(), source)),
    };
    for entry in entries {
        let entry = entry.map_err(|source| WalError::io(directory.display().to_string(), source))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|name| name.strip_suffix(".snap")) else { continue };
        // Twenty digits may name more than `u64::MAX`: no snapshot the server writes, so
        // skipped like any other stray file (regression, review, eleventh session: it
        // panicked start-up, restore and verify).
        if stem.len() == 20 && stem.bytes().all(|byte| byte.is_ascii_digit()) {
            if let Ok(lsn) = stem.parse::<u64>() {
                found.push(Lsn(lsn));
            }
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// A loaded snapshot.
pub struct Loaded {
    pub engine: Engine,
    pub covers_lsn: Lsn,
    /// The history of the log it was made from.
    pub history: u64,
}

/// Threads that restore a snapshot's item shards, at most.
pub const RESTORE_THREADS_MAX: usize = 16;

/// Loads and checks one snapshot file into an engine.
pub fn load(path: &Path) -> Result<Loaded, WalError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| WalError::io(name.clone(), source))?;
    let length = file.metadata().map_err(|source| WalError::io(name.clone(), source))?.len();
    let length = usize::try_from(length)
        .map_err(|_| WalError::Snapshot { path: name.clone(), why: format!("{length} bytes do not fit memory") })?;
    if length == 0 {
        return decode(&[], &name);
    }
    let map = map_readable(&file, length).map_err(|error| WalError::Snapshot {
        path: name.clone(),
        why: format!("cannot be read from the disk ({error}); an older snapshot and a longer replay are used"),
    })?;
    decode(&map, &name)
}

/// Maps `length` bytes of `file` and reads every page in before anything touches one, so
/// that a page the disk cannot give back (a bad sector; bytes past the end of a file cut
/// short under us) is an error here, which recovery answers with an older snapshot, not a
/// SIGBUS at the first touch. Regression: `MAP_POPULATE` ignores a page it cannot read, and
/// start-up then died of SIGBUS in the checksum pass.
///
/// `MADV_POPULATE_READ` (Linux 5.14) reads the pages in and reports the failure; an older
/// kernel answers `EINVAL`, and the file is then read once through `read(2)`, which reports
/// it too and leaves the pages in the page cache for the map.
fn map_readable(file: &File, length: usize) -> std::io::Result<memmap2::Mmap> {
    assert!(length > 0, "an empty file has nothing to map");
    // SAFETY: the file is opened read-only and snapshots are never modified after the rename
    // that publishes them. A page that cannot be read would be a SIGBUS on access: every
    // page is read in below before the map is returned, and a failure is an error.
    let map = unsafe { memmap2::MmapOptions::new().len(length).map(file) }?;
    match map.advise(memmap2::Advice::PopulateRead) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => read_through(file, length)?,
        Err(error) => return Err(error),
    }
    debug_assert_eq!(map.len(), length);
    Ok(map)
}

/// Reads the first `length` bytes of `file` through `read(2)`, in chunks: an error for a
/// page the disk cannot give back, or for a file shorter than `length`.
fn read_through(file: &File, length: usize) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    const CHUNK_BYTES: usize = 1 << 20;
    let mut chunk = vec![0u8; CHUNK_BYTES.min(length)];
    let mut offset = 0usize;
    while offset < length {
        let want = chunk.len().min(length - offset);
        file.read_exact_at(&mut chunk[..want], offset as u64)?;
        offset += want;
    }
    assert_eq!(offset, length);
    Ok(())
}

/// The header of the snapshot at `path`, its magic and checksum checked (the archive is not
/// read).
fn read_checked_header(path: &Path) -> Result<[u8; SNAPSHOT_HEADER_BYTES], WalError> {
    use std::io::Read;
    let bad = |why: &str| WalError::Snapshot { path: path.display().to_string(), why: why.into() };
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .map_err(|source| WalError::io(path.display().to_string(), source))?;
    if header[0..8] != SNAPSHOT_MAGIC {
        return Err(bad("not a Reservoir snapshot (bad magic)"));
    }
    let stored_crc = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    let mut zeroed = header;
    zeroed[12..16].fill(0);
    if crc32c::crc32c(&zeroed) != stored_crc {
        return Err(bad("header checksum mismatch"));
    }
    Ok(header)
}

/// The LSN the snapshot at `path` covers, from its checked header alone.
pub fn covers_lsn_of(path: &Path) -> Result<Lsn, WalError> {
    let header = read_checked_header(path)?;
    Ok(Lsn(u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"))))
}

/// When the snapshot at `path` was taken (ms since the epoch), from its checked header alone.
pub fn created_ms(path: &Path) -> Result<u64, WalError> {
    let header = read_checked_header(path)?;
    Ok(u64::from_le_bytes(header[40..48].try_into().expect("8 bytes")))
}

/// Checks and loads a snapshot's bytes (a whole file; `name` for messages). Never panics on
/// any input; the archive must start 16-byte aligned (a mapped file is page aligned), else
/// rkyv validation refuses it.
pub fn decode(map: &[u8], name: &str) -> Result<Loaded, WalError> {
    let bad = |why: String| WalError::Snapshot { path: name.to_owned(), why };
    if map.len() < SNAPSHOT_HEADER_BYTES {
        return Err(bad("shorter than a snapshot header".into()));
    }
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header.copy_from_slice(&map[..SNAPSHOT_HEADER_BYTES]);
    if header[0..8] != SNAPSHOT_MAGIC {
        return Err(bad("not a Reservoir snapshot (bad magic)".into()));
    }
    let stored_crc = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
    header[12..16].fill(0);
    if crc32c::crc32c(&header) != stored_crc {
        return Err(bad("header checksum mismatch".into()));
    }
    let field = |range: std::ops::Range<usize>| u64::from_le_bytes(map[range].try_into().expect("8 bytes"));
    let word = |range: std::ops::Range<usize>| u32::from_le_bytes(map[range].try_into().expect("4 bytes"));
    if word(8..12) != SNAPSHOT_FORMAT_VERSION || word(36..40) != RKYV_FORMAT {
        return Err(bad("written by an incompatible version (format or rkyv layout)".into()));
    }
    if field(56..64) != 0 {
        // Regression: the header's zero bytes were ignored; a later format that used them
        // would have been read as this one.
        return Err(bad("header bytes documented as zero are set: written by a later format".into()));
    }
    let covers_lsn = field(16..24);
    let archive_bytes = field(24..32);
    if archive_bytes != (map.len() - SNAPSHOT_HEADER_BYTES) as u64 {
        return Err(bad(format!(
            "archive is {} bytes, header says {archive_bytes}",
            map.len() - SNAPSHOT_HEADER_BYTES
        )));
    }
    let archive = &map[SNAPSHOT_HEADER_BYTES..];
    if crc32c::crc32c(archive) != word(32..36) {
        return Err(bad("archive checksum mismatch".into()));
    }
    let archived = rkyv::access::<ArchivedSnapState, rancor::Error>(archive)
        .map_err(|error| bad(format!("rkyv validation failed: {error}")))?;
    if covers_lsn.checked_add(1) != Some(archived.next_lsn.to_native()) {
        return Err(bad("header and archive disagree on the LSN".into()));
    }
    let history = field(48..56);
    // The conversion and the restore are CPU work over independent item shards: use the
    // machine's cores.
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(RESTORE_THREADS_MAX);
    let state = from_archive(archived, threads).map_err(bad)?;
    let engine = Engine::restore_on_threads(&state, threads).map_err(|error| bad(error.to_string()))?;
    Ok(Loaded { engine, covers_lsn: Lsn(covers_lsn), history })
}

/// The newest snapshot that loads, and the newer ones that did not (with why).
#[allow(clippy::type_complexity)]
pub fn load_newest(directory: &Path) -> Result<(Option<Loaded>, Vec<(Lsn, String)>), WalError> {
    let mut skipped = Vec::new();
    for lsn in list(directory)?.into_iter().rev() {
        match load(&directory.join(snapshot_file_name(lsn))) {
            Ok(loaded) if loaded.covers_lsn == lsn => return Ok((Some(loaded), skipped)),
            Ok(_) => skipped.push((lsn, "file name and contents disagree on the LSN".into())),
            Err(error) => skipped.push((lsn, error.to_string())),
        }
    }
    Ok((None, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE_BYTES: usize = 4096;

    fn file_of(directory: &Path, bytes: usize) -> File {
        let path = directory.join("snapshot");
        std::fs::write(&path, vec![7u8; bytes]).expect("write");
        File::open(&path).expect("open")
    }

    /// Regression: a snapshot page the disk cannot give back ended start-up with SIGBUS (the
    /// map was populated with `MAP_POPULATE`, which ignores such a page, and the checksum pass
    /// touched it). Pages past the end of a file fail as a bad sector does; the map of them is
    /// now an error, and a readable file maps whole.
    #[test]
    fn a_snapshot_page_that_cannot_be_read_is_an_error_not_a_sigbus() {
        let directory = tempfile::tempdir().expect("tempdir");
        let file = file_of(directory.path(), PAGE_BYTES);
        match map_readable(&file, 3 * PAGE_BYTES) {
            Err(error) => assert_ne!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}"),
            Ok(map) => {
                // Without the fix this touch is the SIGBUS that ends the test process.
                let sum: u64 = map.iter().map(|&byte| u64::from(byte)).sum();
                panic!("a map reaching past the file's end was taken (its bytes sum to {sum})");
            }
        }
        let map = map_readable(&file, PAGE_BYTES).expect("a readable file maps");
        assert!(map.iter().all(|&byte| byte == 7));
    }

    /// Regression: the snapshot header's last 8 bytes, documented as zero, were not checked;
    /// a later format that used them would have been read as this one. Set (under a checksum
    /// that holds), the snapshot is refused, naming why; zero, it loads.
    #[test]
    fn a_snapshot_header_with_its_zero_bytes_set_is_refused() {
        let directory = tempfile::tempdir().expect("tempdir");
        let written = write(directory.path(), &Engine::new(Config::default()), 1, 0).expect("written");
        assert!(load(&written.path).is_ok());
        let mut bytes = std::fs::read(&written.path).expect("read");
        assert_eq!(bytes[56..64], [0; 8]);
        bytes[60] = 1;
        bytes[12..16].fill(0);
        let crc = crc32c::crc32c(&bytes[..SNAPSHOT_HEADER_BYTES]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&written.path, &bytes).expect("write");
        match load(&written.path) {
            Err(WalError::Snapshot { why, .. }) => assert!(why.contains("documented as zero"), "{why}"),
            Err(other) => panic!("expected a refused snapshot, got {other}"),
            Ok(_) => panic!("a snapshot with its zero bytes set was loaded"),
        }
    }

    /// The path for kernels without `MADV_POPULATE_READ` reports the same failure.
    #[test]
    fn reading_a_snapshot_through_read_reports_what_cannot_be_read() {
        let directory = tempfile::tempdir().expect("tempdir");
        let file = file_of(directory.path(), 3 * 1024 * 1024 + 5);
        read_through(&file, 3 * 1024 * 1024 + 5).expect("the whole file reads");
        let error = read_through(&file, 3 * 1024 * 1024 + 6).expect_err("one byte past the end");
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
