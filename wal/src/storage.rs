//! Where segments live. [`FsStorage`] is the real one (files in a directory, pwrite, fdatasync);
//! [`CrashStorage`] is a deterministic fake that keeps synced and unsynced writes apart and can
//! produce the image a power cut would leave (unsynced writes lost, the last one torn), for
//! simulation beside the real-file tests.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::format::SEGMENT_BYTES_MAX;

/// Segment files named `{sequence:016}.wal` in one directory.
pub trait Storage: Send + Sync + 'static {
    /// The sequences of the segments present, ascending.
    fn list(&self) -> io::Result<Vec<u64>>;
    /// A whole segment's bytes.
    fn read(&self, sequence: u64) -> io::Result<Vec<u8>>;
    /// The first `bytes` bytes of a segment (fewer if it is shorter): its header, without
    /// reading the whole segment.
    fn read_prefix(&self, sequence: u64, bytes: usize) -> io::Result<Vec<u8>> {
        let mut whole = self.read(sequence)?;
        whole.truncate(bytes);
        Ok(whole)
    }
    /// `bytes` bytes of a segment from `offset` on (fewer where the segment ends first).
    fn read_range(&self, sequence: u64, offset: u64, bytes: usize) -> io::Result<Vec<u8>> {
        let whole = self.read(sequence)?;
        let start = (offset as usize).min(whole.len());
        let end = start.saturating_add(bytes).min(whole.len());
        Ok(whole[start..end].to_vec())
    }
    /// Creates a segment of `bytes` zero bytes starting with `header`, durably (file and
    /// directory entry synced) before returning.
    fn create(&self, sequence: u64, bytes: u64, header: &[u8]) -> io::Result<()>;
    /// Writes into an existing segment. Not durable until [`Storage::sync`].
    fn write(&self, sequence: u64, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes every write to the segment durable (fdatasync).
    fn sync(&self, sequence: u64) -> io::Result<()>;
    /// Removes a segment, durably.
    fn remove(&self, sequence: u64) -> io::Result<()>;
    /// Drops the segment's pages from the operating system's cache (after syncing it), so that
    /// the next read sees what is on the disk. Nothing to do where there is no such cache.
    fn evict_cached(&self, sequence: u64) -> io::Result<()> {
        let _ = sequence;
        Ok(())
    }
    /// Records, durably, that a write or sync failed: the page cache may hold pages of this log
    /// that never reached the disk (fsyncgate), which the next recovery must not trust.
    fn mark_write_failed(&self) -> io::Result<()> {
        Ok(())
    }
    /// Whether [`Storage::mark_write_failed`] was called and not cleared since.
    fn write_failed_marked(&self) -> bool {
        false
    }
    /// Clears the mark, durably (after a recovery that read the disk).
    fn clear_write_failed(&self) -> io::Result<()> {
        Ok(())
    }
    /// A readable name for messages: the path of the segment file.
    fn describe(&self, sequence: u64) -> String;
}

pub fn segment_file_name(sequence: u64) -> String {
    format!("{sequence:016}.wal")
}

/// In a WAL directory: a write or sync of its log failed (see [`Storage::mark_write_failed`]).
pub const WRITE_FAILED_FILE: &str = "WRITE_FAILED";

/// The real thing.
pub struct FsStorage {
    directory: PathBuf,
    open: Mutex<BTreeMap<u64, File>>,
    /// A missing directory lists no segments ([`FsStorage::existing`]), instead of an error.
    missing_is_empty: bool,
}

/// Open segment files kept at once; older ones are closed (they are only read at recovery).
const OPEN_FILES_MAX: usize = 4;

/// Keeps `file` open as segment `sequence`, closing the lowest sequences past
/// [`OPEN_FILES_MAX`] (the writer only appends to the highest). Regression: `create` kept
/// every segment it made open, so a long-running writer held one descriptor per segment,
/// archived and pruned ones too (their disk space never freed), until `EMFILE`.
fn keep_open(open: &mut BTreeMap<u64, File>, sequence: u64, file: File) {
    while open.len() >= OPEN_FILES_MAX {
        open.pop_first();
    }
    open.insert(sequence, file);
    assert!(open.len() <= OPEN_FILES_MAX);
}

/// Directories created at once by [`create_directory_durably`], at most (a data directory's
/// deepest is `archive/wal` below it).
const DIRECTORY_LEVELS_CREATED_MAX: usize = 16;

/// Creates `directory` and any missing parents, and makes each new entry durable: every new
/// directory's parent is fsynced once the directories exist. A directory that exists costs one
/// `stat`. Regression (review): `wal/`, `snapshots/`, `archive/...` and `replaced/` were made
/// with `create_dir_all` alone, so under a strict reading of POSIX a power cut could lose the
/// entry of a directory whose files had been fsynced (archived segments moved into it).
pub fn create_directory_durably(directory: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(directory);
    while let Some(path) = at.filter(|path| !path.as_os_str().is_empty() && !path.exists()) {
        if missing.len() == DIRECTORY_LEVELS_CREATED_MAX {
            return Err(io::Error::other(format!(
                "more than {DIRECTORY_LEVELS_CREATED_MAX} directory levels to create"
            )));
        }
        missing.push(path);
        at = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(directory)?;
    for created in missing.iter().rev() {
        let parent = created.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(parent)?.sync_all()?;
    }
    debug_assert!(directory.is_dir());
    Ok(())
}

impl FsStorage {
    /// Uses (and creates durably, if missing) `directory`.
    pub fn new(directory: &Path) -> io::Result<FsStorage> {
        create_directory_durably(directory)?;
        Ok(FsStorage { directory: directory.to_owned(), open: Mutex::new(BTreeMap::new()), missing_is_empty: false })
    }

    /// Uses `directory` as it is and creates nothing: for reading a data directory that may be
    /// a read-only backup (`verify`, `wal dump`, `restore`). Missing, it lists no segments.
    pub fn existing(directory: &Path) -> FsStorage {
        FsStorage { directory: directory.to_owned(), open: Mutex::new(BTreeMap::new()), missing_is_empty: true }
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    fn path(&self, sequence: u64) -> PathBuf {
        self.directory.join(segment_file_name(sequence))
    }

    fn with_file<R>(&self, sequence: u64, f: impl FnOnce(&File) -> io::Result<R>) -> io::Result<R> {
        let mut open = self.open.lock();
        if open.get(&sequence).is_none() {
            let file = OpenOptions::new().read(true).write(true).open(self.path(sequence))?;
            keep_open(&mut open, sequence, file);
        }
        f(open.get(&sequence).expect("just opened"))
    }

    fn sync_directory(&self) -> io::Result<()> {
        File::open(&self.directory)?.sync_all()
    }
}

impl Storage for FsStorage {
    fn list(&self) -> io::Result<Vec<u64>> {
        let mut sequences = Vec::new();
        let entries = match std::fs::read_dir(&self.directory) {
            Err(error) if error.kind() == io::ErrorKind::NotFound && self.missing_is_empty => return Ok(sequences),
            entries => entries?,
        };
        for entry in entries {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".wal") {
                if stem.len() == 16 && stem.bytes().all(|byte| byte.is_ascii_digit()) {
                    sequences.push(stem.parse().expect("16 digits"));
                }
            }
        }
        sequences.sort_unstable();
        Ok(sequences)
    }

    fn read(&self, sequence: u64) -> io::Result<Vec<u8>> {
        let path = self.path(sequence);
        let length = std::fs::metadata(&path)?.len();
        if length > SEGMENT_BYTES_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is over 1 GiB", path.display())));
        }
        std::fs::read(path)
    }

    fn read_prefix(&self, sequence: u64, bytes: usize) -> io::Result<Vec<u8>> {
        use std::io::Read as _;
        let file = File::open(self.path(sequence))?;
        let mut prefix = Vec::with_capacity(bytes.min(1 << 20));
        file.take(bytes as u64).read_to_end(&mut prefix)?;
        debug_assert!(prefix.len() <= bytes);
        Ok(prefix)
    }

    fn read_range(&self, sequence: u64, offset: u64, bytes: usize) -> io::Result<Vec<u8>> {
        let file = File::open(self.path(sequence))?;
        let length = file.metadata()?.len();
        let bytes = length.saturating_sub(offset).min(bytes as u64) as usize;
        let mut range = vec![0u8; bytes];
        file.read_exact_at(&mut range, offset)?;
        Ok(range)
    }

    fn create(&self, sequence: u64, bytes: u64, header: &[u8]) -> io::Result<()> {
        assert!(header.len() as u64 <= bytes);
        let path = self.path(sequence);
        // Written under a temporary name and renamed, so a crash never leaves a segment file
        // without its header.
        let temporary = self.directory.join(format!("{}.creating", segment_file_name(sequence)));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&temporary)?;
        preallocate(&file, bytes)?;
        file.write_all_at(header, 0)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        self.sync_directory()?;
        keep_open(&mut self.open.lock(), sequence, file);
        Ok(())
    }

    fn write(&self, sequence: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.with_file(sequence, |file| file.write_all_at(bytes, offset))
    }

    fn sync(&self, sequence: u64) -> io::Result<()> {
        self.with_file(sequence, |file| file.sync_data())
    }

    fn remove(&self, sequence: u64) -> io::Result<()> {
        self.open.lock().remove(&sequence);
        std::fs::remove_file(self.path(sequence))?;
        self.sync_directory()
    }

    fn mark_write_failed(&self) -> io::Result<()> {
        let mut file = File::create(self.directory.join(WRITE_FAILED_FILE))?;
        std::io::Write::write_all(
            &mut file,
            b"a write or fdatasync of this log failed; the next start reads the log from the disk\n",
        )?;
        file.sync_all()?;
        self.sync_directory()
    }

    fn write_failed_marked(&self) -> bool {
        self.directory.join(WRITE_FAILED_FILE).exists()
    }

    fn clear_write_failed(&self) -> io::Result<()> {
        match std::fs::remove_file(self.directory.join(WRITE_FAILED_FILE)) {
            Ok(()) => self.sync_directory(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn evict_cached(&self, sequence: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let file = File::open(self.path(sequence))?;
        // Dirty pages first (POSIX_FADV_DONTNEED drops only clean ones); an error here is a
        // write the kernel could not make durable.
        file.sync_data()?;
        // SAFETY: the descriptor is open for the duration of the call; posix_fadvise only
        // reads its arguments.
        let result = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        match result {
            0 | libc::ENOSYS | libc::EINVAL => Ok(()),
            code => Err(io::Error::from_raw_os_error(code)),
        }
    }

    fn describe(&self, sequence: u64) -> String {
        self.path(sequence).display().to_string()
    }
}

impl FsStorage {
    /// Whether the segment's file is in this directory.
    pub fn contains(&self, sequence: u64) -> bool {
        self.path(sequence).is_file()
    }
}

/// The whole log of a data directory as one [`Storage`]: the segments moved to the archive
/// (`archive/wal/`) and the live ones (`wal/`), in one sequence. A segment is in one place or
/// the other (archiving renames); if a crash ever left it in both, the live copy wins. Writes
/// go to the place that holds the segment, new segments to the live directory: recovery cuts
/// a torn tail through it (the tail is always live: only segments with a live successor are
/// archived).
pub struct LayeredStorage {
    archive: FsStorage,
    live: FsStorage,
}

impl LayeredStorage {
    pub fn new(archive_directory: &Path, live_directory: &Path) -> io::Result<LayeredStorage> {
        assert_ne!(archive_directory, live_directory, "two distinct directories");
        Ok(LayeredStorage { archive: FsStorage::new(archive_directory)?, live: FsStorage::new(live_directory)? })
    }

    /// Both directories as they are, creating neither ([`FsStorage::existing`]).
    pub fn existing(archive_directory: &Path, live_directory: &Path) -> LayeredStorage {
        assert_ne!(archive_directory, live_directory, "two distinct directories");
        LayeredStorage { archive: FsStorage::existing(archive_directory), live: FsStorage::existing(live_directory) }
    }

    fn holder(&self, sequence: u64) -> &FsStorage {
        if self.live.contains(sequence) || !self.archive.contains(sequence) {
            &self.live
        } else {
            &self.archive
        }
    }
}

impl Storage for LayeredStorage {
    fn list(&self) -> io::Result<Vec<u64>> {
        // The live directory first: segments move only from it to the archive, so one moved
        // between the two listings is in the second. Regression (review): listed the other
        // way round, such a segment was in neither, and a reader reported the log corrupt or
        // a segment missing.
        let mut sequences = self.live.list()?;
        sequences.extend(self.archive.list()?);
        sequences.sort_unstable();
        sequences.dedup();
        Ok(sequences)
    }

    fn read(&self, sequence: u64) -> io::Result<Vec<u8>> {
        self.holder(sequence).read(sequence)
    }

    fn read_prefix(&self, sequence: u64, bytes: usize) -> io::Result<Vec<u8>> {
        self.holder(sequence).read_prefix(sequence, bytes)
    }

    fn read_range(&self, sequence: u64, offset: u64, bytes: usize) -> io::Result<Vec<u8>> {
        self.holder(sequence).read_range(sequence, offset, bytes)
    }

    fn create(&self, sequence: u64, bytes: u64, header: &[u8]) -> io::Result<()> {
        self.live.create(sequence, bytes, header)
    }

    fn write(&self, sequence: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.holder(sequence).write(sequence, offset, bytes)
    }

    fn sync(&self, sequence: u64) -> io::Result<()> {
        if !self.live.contains(sequence) && self.archive.contains(sequence) {
            // Archived segments all have a successor, so the writer synced each when it rolled
            // over from it, before it was archived: nothing to do (and an archive may be
            // read-only, or far larger than the live log).
            return Ok(());
        }
        self.live.sync(sequence)
    }

    fn remove(&self, sequence: u64) -> io::Result<()> {
        self.holder(sequence).remove(sequence)
    }

    fn evict_cached(&self, sequence: u64) -> io::Result<()> {
        self.holder(sequence).evict_cached(sequence)
    }

    fn mark_write_failed(&self) -> io::Result<()> {
        self.live.mark_write_failed()
    }

    fn write_failed_marked(&self) -> bool {
        self.live.write_failed_marked()
    }

    fn clear_write_failed(&self) -> io::Result<()> {
        self.live.clear_write_failed()
    }

    fn describe(&self, sequence: u64) -> String {
        self.holder(sequence).describe(sequence)
    }
}

/// Reserves the file's blocks so that appends never allocate (and fdatasync never has to
/// write metadata). Falls back to a sparse file where the file system cannot preallocate.
fn preallocate(file: &File, bytes: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let length = libc::off_t::try_from(bytes).map_err(|_| io::Error::other("segment size too large"))?;
    // SAFETY: the descriptor is open for the duration of the call; posix_fallocate only
    // reads its arguments.
    let result = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, length) };
    match result {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(bytes),
        code => Err(io::Error::from_raw_os_error(code)),
    }
}

/// A fake disk for simulation: every segment has the bytes that are durable and the writes
/// made since the last sync. [`CrashStorage::crash_image`] returns what a power cut at this
/// moment could leave: a prefix of the unsynced writes, the last of them torn.
#[derive(Default)]
pub struct CrashStorage {
    segments: Mutex<BTreeMap<u64, FakeSegment>>,
}

#[derive(Clone, Default)]
struct FakeSegment {
    durable: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
}

impl CrashStorage {
    pub fn new() -> CrashStorage {
        CrashStorage::default()
    }

    /// The disk after a power cut: of the unsynced writes (all of which belong to the one
    /// group commit in flight), the first `kept` survive whole, the next one is torn, and the
    /// rest are lost. A torn write keeps the 512-byte sectors whose bit is set in
    /// `torn_sectors` (sector i: bit i % 64): disks persist sectors in any order, so a tear
    /// is not always a prefix.
    pub fn crash_image(&self, kept: usize, torn_sectors: u64) -> CrashStorage {
        const SECTOR_BYTES: usize = 512;
        let segments = self.segments.lock();
        let mut image = BTreeMap::new();
        let mut budget = kept;
        let mut lost = false;
        for (&sequence, segment) in segments.iter() {
            let mut bytes = segment.durable.clone();
            for (offset, write) in &segment.unsynced {
                if lost {
                    break;
                }
                if budget > 0 {
                    budget -= 1;
                    apply_write(&mut bytes, *offset, write);
                    continue;
                }
                lost = true;
                for (index, sector) in write.chunks(SECTOR_BYTES).enumerate() {
                    if torn_sectors & (1 << (index % 64)) != 0 {
                        apply_write(&mut bytes, *offset + (index * SECTOR_BYTES) as u64, sector);
                    }
                }
            }
            image.insert(sequence, FakeSegment { durable: bytes, unsynced: Vec::new() });
        }
        CrashStorage { segments: Mutex::new(image) }
    }

    /// The disk after a power cut that came when the unsynced writes span several group
    /// commits (`Relaxed` mode): the page cache writes dirty pages back in any order, so every
    /// 512-byte sector of every unsynced write, in any segment, is kept or lost independently
    /// (a seeded choice). A later write can survive where an earlier one is lost.
    pub fn crash_image_scattered(&self, seed: u64) -> CrashStorage {
        const SECTOR_BYTES: usize = 512;
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut keep = move || {
            // xorshift64*: enough for a fair coin per sector.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 63 == 1
        };
        let segments = self.segments.lock();
        let mut image = BTreeMap::new();
        for (&sequence, segment) in segments.iter() {
            let mut bytes = segment.durable.clone();
            for (offset, write) in &segment.unsynced {
                for (index, sector) in write.chunks(SECTOR_BYTES).enumerate() {
                    if keep() {
                        apply_write(&mut bytes, *offset + (index * SECTOR_BYTES) as u64, sector);
                    }
                }
            }
            image.insert(sequence, FakeSegment { durable: bytes, unsynced: Vec::new() });
        }
        CrashStorage { segments: Mutex::new(image) }
    }

    /// How many writes are not yet durable.
    pub fn unsynced_writes(&self) -> usize {
        self.segments.lock().values().map(|segment| segment.unsynced.len()).sum()
    }

    /// Flips one bit of a durable byte (for corruption tests).
    pub fn flip_bit(&self, sequence: u64, offset: usize, bit: u8) {
        let mut segments = self.segments.lock();
        let segment = segments.get_mut(&sequence).expect("segment exists");
        segment.durable[offset] ^= 1 << (bit % 8);
    }
}

fn apply_write(bytes: &mut [u8], offset: u64, write: &[u8]) {
    let start = offset as usize;
    bytes[start..start + write.len()].copy_from_slice(write);
}

fn missing(sequence: u64) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("segment {sequence} does not exist"))
}

impl Storage for CrashStorage {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self.segments.lock().keys().copied().collect())
    }

    fn read(&self, sequence: u64) -> io::Result<Vec<u8>> {
        // What a reader sees before a crash: durable bytes plus the page cache.
        let segments = self.segments.lock();
        let segment = segments.get(&sequence).ok_or_else(|| missing(sequence))?;
        let mut bytes = segment.durable.clone();
        for (offset, write) in &segment.unsynced {
            apply_write(&mut bytes, *offset, write);
        }
        Ok(bytes)
    }

    fn create(&self, sequence: u64, bytes: u64, header: &[u8]) -> io::Result<()> {
        let mut durable = vec![0u8; bytes as usize];
        durable[..header.len()].copy_from_slice(header);
        self.segments.lock().insert(sequence, FakeSegment { durable, unsynced: Vec::new() });
        Ok(())
    }

    fn write(&self, sequence: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut segments = self.segments.lock();
        let segment = segments.get_mut(&sequence).ok_or_else(|| missing(sequence))?;
        if offset as usize + bytes.len() > segment.durable.len() {
            return Err(io::Error::other("write past the preallocated segment"));
        }
        segment.unsynced.push((offset, bytes.to_vec()));
        Ok(())
    }

    fn sync(&self, sequence: u64) -> io::Result<()> {
        let mut segments = self.segments.lock();
        let segment = segments.get_mut(&sequence).ok_or_else(|| missing(sequence))?;
        for (offset, write) in std::mem::take(&mut segment.unsynced) {
            apply_write(&mut segment.durable, offset, &write);
        }
        Ok(())
    }

    fn remove(&self, sequence: u64) -> io::Result<()> {
        self.segments.lock().remove(&sequence).map(|_| ()).ok_or_else(|| missing(sequence))
    }

    fn describe(&self, sequence: u64) -> String {
        format!("fake:{}", segment_file_name(sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_keeps_at_most_open_files_max_segments_open() {
        let directory = tempfile::tempdir().unwrap();
        let storage = FsStorage::new(directory.path()).unwrap();
        for sequence in 1..=3 * OPEN_FILES_MAX as u64 {
            storage.create(sequence, 4_096, b"header").unwrap();
            storage.write(sequence, 6, b"frames").unwrap();
            storage.sync(sequence).unwrap();
            assert!(storage.open.lock().len() <= OPEN_FILES_MAX, "segment {sequence}");
        }
        let last = 3 * OPEN_FILES_MAX as u64;
        assert!(storage.open.lock().contains_key(&last), "the segment being written stays open");
        assert_eq!(&storage.read(1).unwrap()[..12], b"headerframes", "a closed segment reads back");
    }
}
