//! The WAL on real files: what is appended is recovered exactly (one thread and two), and
//! each file fault has its documented outcome (docs/wal.md, "Recovery").

mod common;

use common::frames;

use std::path::Path;
use std::sync::Arc;

use reservoir_engine::{Engine, Lsn, Record};
use reservoir_wal::{
    recover, storage::segment_file_name, FrameReader, FsStorage, Storage, Wal, WalError, WalOptions, SEGMENT_BYTES_MIN,
};

fn options() -> WalOptions {
    WalOptions { segment_bytes: SEGMENT_BYTES_MIN, ..WalOptions::default() }
}

/// Writes `per_command` through a real WAL in `directory`, one command at a time, each
/// acknowledged (synced) before the next, as a server would.
fn write_log(directory: &Path, per_command: &[Vec<Record>]) -> Lsn {
    let storage = Arc::new(FsStorage::new(directory).unwrap());
    let engine = Engine::new(common::config());
    let recovery = recover(storage.as_ref(), &engine, |_| {}).unwrap();
    assert_eq!(recovery.scan.last_lsn, Lsn(0));
    let wal = Wal::start(storage, options(), recovery.scan.position).unwrap();
    for records in per_command {
        wal.append(records.clone()).unwrap();
    }
    let stats = wal.stats();
    let last = wal.close().unwrap();
    assert_eq!(stats.records, last.0);
    last
}

fn recover_into_new(directory: &Path) -> Result<(Engine, reservoir_wal::Recovery), WalError> {
    let storage = FsStorage::new(directory).unwrap();
    let engine = Engine::new(common::config());
    let recovery = recover(&storage, &engine, |_| {})?;
    Ok((engine, recovery))
}

fn flip_bit(directory: &Path, sequence: u64, offset: usize) {
    let path = directory.join(segment_file_name(sequence));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn a_durable_log_recovers_exactly_across_segments() {
    let directory = tempfile::tempdir().unwrap();
    let (engine, per_command) = common::history(11, 30_000);
    let last = write_log(directory.path(), &per_command);
    assert_eq!(last.0 + 1, engine.next_lsn().0);
    let segments = frames(directory.path()).iter().map(|frame| frame.0).max().unwrap();
    assert!(segments >= 1, "the history must span at least two segments");
    let (recovered, recovery) = recover_into_new(directory.path()).unwrap();
    assert_eq!(recovery.scan.torn, None);
    assert_eq!(recovery.records_replayed, last.0);
    assert_eq!(recovered.dump(), engine.dump());
    common::assert_verified(&recovered);

    // And the log continues where it stopped: append more, recover again.
    let storage = Arc::new(FsStorage::new(directory.path()).unwrap());
    let wal = Wal::start(storage, options(), recovery.scan.position).unwrap();
    let mut more = Vec::new();
    let command = reservoir_engine::Command::Expire { limit: 10 };
    recovered.execute(&command, 99_000_000, &mut more);
    wal.append(more).unwrap();
    wal.close().unwrap();
    let (again, _) = recover_into_new(directory.path()).unwrap();
    assert_eq!(again.dump(), recovered.dump());
}

#[test]
fn two_threads_appending_concurrently_recover_exactly() {
    let directory = tempfile::tempdir().unwrap();
    let storage = Arc::new(FsStorage::new(directory.path()).unwrap());
    let engine = Engine::new(common::config());
    let recovery = recover(storage.as_ref(), &engine, |_| {}).unwrap();
    let wal = Wal::start(storage, options(), recovery.scan.position).unwrap();
    std::thread::scope(|scope| {
        for thread in 0..2u64 {
            let (engine, wal) = (&engine, &wal);
            scope.spawn(move || {
                let mut workload = reservoir_engine::workload::Workload::new(thread + 100, &format!("t{thread}"), 10);
                for step in 0..4_000u64 {
                    let command = workload.next_command();
                    let mut records = Vec::new();
                    let reply = engine.execute(&command, 1_000_000 + step * 10, &mut records);
                    workload.observe(&command, &reply);
                    wal.append(records).unwrap();
                }
            });
        }
    });
    let stats = wal.stats();
    let last = wal.close().unwrap();
    assert_eq!(last.0 + 1, engine.next_lsn().0);
    assert!(stats.records > stats.batches, "group commit grouped something: {stats:?}");
    let (recovered, _) = recover_into_new(directory.path()).unwrap();
    assert_eq!(recovered.dump(), engine.dump());
    common::assert_verified(&recovered);
}

#[test]
fn a_truncated_tail_is_cut_and_the_log_continues() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(12, 500);
    let last = write_log(directory.path(), &per_command);
    let all: Vec<Record> = per_command.iter().flatten().cloned().collect();
    let (sequence, offset, lsn) = *frames(directory.path()).last().unwrap();
    assert_eq!(lsn, last.0);
    // A torn write: the last record's second half never reached the disk.
    let path = directory.path().join(segment_file_name(sequence));
    let mut bytes = std::fs::read(&path).unwrap();
    let end = offset + 48;
    bytes[end..end + 64].fill(0);
    std::fs::write(&path, bytes).unwrap();

    let (recovered, recovery) = recover_into_new(directory.path()).unwrap();
    let torn = recovery.scan.torn.clone().expect("a torn tail");
    assert_eq!((torn.sequence, torn.offset), (sequence, offset as u64));
    assert_eq!(recovery.scan.last_lsn.0, last.0 - 1);
    assert_eq!(recovered.dump(), common::replayed(&all, last.0 as usize - 1).dump());
    // The cut is durable: a second recovery finds a clean end.
    let (_, second) = recover_into_new(directory.path()).unwrap();
    assert_eq!(second.scan.torn, None);
    assert_eq!(second.scan.last_lsn.0, last.0 - 1);
}

#[test]
fn a_flipped_bit_in_the_last_record_is_cut_as_a_torn_tail() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(13, 500);
    let last = write_log(directory.path(), &per_command);
    let (sequence, offset, _) = *frames(directory.path()).last().unwrap();
    flip_bit(directory.path(), sequence, offset + 45);
    let (_, recovery) = recover_into_new(directory.path()).unwrap();
    let torn = recovery.scan.torn.expect("cut");
    assert!(torn.why.contains("checksum"), "{}", torn.why);
    assert_eq!(recovery.scan.last_lsn.0, last.0 - 1);
}

/// Regression (found by audit): a last frame whose checksum holds but whose payload does not
/// decode was cut as a torn tail. No torn write leaves a checksum-valid frame: another encoder
/// (a newer version, a bug) wrote it whole, and cutting it would drop an acknowledged record.
#[test]
fn a_checksum_valid_last_record_that_does_not_decode_refuses_to_start() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(15, 500);
    let last = write_log(directory.path(), &per_command);
    let (sequence, offset, lsn) = *frames(directory.path()).last().unwrap();
    assert_eq!(lsn, last.0);
    let path = directory.path().join(segment_file_name(sequence));
    let mut bytes = std::fs::read(&path).unwrap();
    let frame = &mut bytes[offset..];
    frame[36] = 0xEE; // a record kind no version has written
    let payload_bytes = u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
    let checksum = crc32c::crc32c(&frame[4..reservoir_wal::format::FRAME_HEADER_BYTES + payload_bytes]);
    frame[0..4].copy_from_slice(&checksum.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    match recover_into_new(directory.path()) {
        Err(WalError::Corrupt { segment, offset: at, after_lsn, why }) => {
            assert!(segment.ends_with(&segment_file_name(sequence)), "{segment}");
            assert_eq!((at, after_lsn), (offset as u64, Lsn(lsn - 1)));
            assert!(why.contains("checksum holds"), "{why}");
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok((_, recovery)) => panic!("the record was cut: {:?}", recovery.scan.torn),
    }
    assert!(std::fs::read(&path).unwrap() == bytes, "nothing was cut");
}

/// Regression: header bytes documented as zero (segment bytes 36..40 and 56..64, frame bytes
/// 37..40) were not checked, so a later format that used them would have been read as this
/// one. Set under a checksum that holds, each refuses to start, naming why and where; nothing
/// is cut.
#[test]
fn header_bytes_documented_as_zero_refuse_to_start_when_set() {
    for (case, at) in [("segment", 36), ("segment", 57), ("frame", 37), ("frame", 39)] {
        let directory = tempfile::tempdir().unwrap();
        let (_, per_command) = common::history(17, 200);
        write_log(directory.path(), &per_command);
        let (sequence, offset, lsn) = *frames(directory.path()).last().unwrap();
        let path = directory.path().join(segment_file_name(sequence));
        let mut bytes = std::fs::read(&path).unwrap();
        if case == "segment" {
            let header = &mut bytes[..reservoir_wal::format::SEGMENT_HEADER_BYTES];
            assert_eq!(header[at], 0, "byte {at} is documented as zero");
            header[at] = 1;
            header[12..16].fill(0);
            let checksum = crc32c::crc32c(header);
            header[12..16].copy_from_slice(&checksum.to_le_bytes());
        } else {
            let frame = &mut bytes[offset..];
            assert_eq!(frame[at], 0, "byte {at} is documented as zero");
            frame[at] = 1;
            let payload_bytes = u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
            let checksum = crc32c::crc32c(&frame[4..reservoir_wal::format::FRAME_HEADER_BYTES + payload_bytes]);
            frame[0..4].copy_from_slice(&checksum.to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        match (case, recover_into_new(directory.path())) {
            ("segment", Err(WalError::BadSegmentHeader { why, .. })) => {
                assert!(why.contains("documented as zero"), "{why}")
            }
            ("frame", Err(WalError::Corrupt { offset: found, after_lsn, why, .. })) => {
                assert_eq!((found, after_lsn), (offset as u64, Lsn(lsn - 1)));
                assert!(why.contains("documented as zero"), "{why}");
            }
            (_, Err(other)) => panic!("{case} byte {at}: unexpected error {other}"),
            (_, Ok(_)) => panic!("{case} byte {at}: recovered with a byte documented as zero set"),
        }
        assert!(std::fs::read(&path).unwrap() == bytes, "{case} byte {at}: nothing was cut");
    }
}

#[test]
fn a_flipped_bit_in_a_middle_record_refuses_to_start_and_names_the_place() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(14, 500);
    write_log(directory.path(), &per_command);
    let all = frames(directory.path());
    let (sequence, offset, lsn) = all[all.len() / 2];
    flip_bit(directory.path(), sequence, offset + 41);
    let error = match recover_into_new(directory.path()) {
        Err(error) => error,
        Ok(_) => panic!("a corrupt middle record must stop recovery"),
    };
    match &error {
        WalError::Corrupt { offset: at, after_lsn, .. } => {
            assert_eq!(*at, offset as u64);
            assert_eq!(after_lsn.0, lsn - 1);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let message = error.to_string();
    assert!(message.contains(&segment_file_name(sequence)), "{message}");
    assert!(message.contains(&format!("--to-lsn {}", lsn - 1)), "{message}");
    // Nothing was cut: the file still holds every record after the bad one.
    assert_eq!(frames(directory.path()).len(), all.len() / 2);
}

#[test]
fn a_missing_segment_refuses_to_start() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(15, 30_000);
    write_log(directory.path(), &per_command);
    let last_segment = frames(directory.path()).last().unwrap().0;
    assert!(last_segment >= 1);
    // Remove the first segment: the log no longer reaches back to LSN 1.
    std::fs::remove_file(directory.path().join(segment_file_name(0))).unwrap();
    match recover_into_new(directory.path()) {
        Err(WalError::MissingRecords { needed, .. }) => assert_eq!(needed, Lsn(1)),
        Err(other) => panic!("expected MissingRecords, got {other}"),
        Ok(_) => panic!("recovered without segment 0"),
    }
    // With three or more segments, removing one in the middle is a named gap.
    if last_segment >= 2 {
        std::fs::remove_file(directory.path().join(segment_file_name(1))).unwrap();
        assert!(matches!(recover_into_new(directory.path()), Err(WalError::MissingSegment { .. })));
    }
}

#[test]
fn a_corrupt_segment_header_refuses_to_start() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(16, 200);
    write_log(directory.path(), &per_command);
    flip_bit(directory.path(), 0, 20);
    match recover_into_new(directory.path()) {
        Err(WalError::BadSegmentHeader { why, .. }) => assert!(why.contains("checksum"), "{why}"),
        Err(other) => panic!("expected BadSegmentHeader, got {other}"),
        Ok(_) => panic!("recovered with a corrupt segment header"),
    }
}

#[test]
fn a_zeroed_sector_in_the_middle_refuses_to_start() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(17, 500);
    write_log(directory.path(), &per_command);
    let all = frames(directory.path());
    let (sequence, offset, lsn) = all[all.len() / 3];
    // A lost 512-byte sector in synced data (the frame starts a run of zeros).
    let path = directory.path().join(segment_file_name(sequence));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset..offset + 512].fill(0);
    std::fs::write(&path, bytes).unwrap();
    match recover_into_new(directory.path()) {
        Err(WalError::Corrupt { offset: at, after_lsn, .. }) => {
            assert_eq!((at, after_lsn.0), (offset as u64, lsn - 1));
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("recovered past a zeroed sector: acknowledged records would be lost silently"),
    }
}

/// Regression: a zeroed sector at a frame in a segment that is not the last was read as that
/// segment's end, so start-up refused with an error about the *next* segment ("starts at LSN
/// m + 1 but the one before it ends at ..."), not the damaged place. Now the error names the
/// damaged segment and offset, as it does in the last segment.
#[test]
fn a_zeroed_sector_in_an_earlier_segment_refuses_to_start_and_names_the_place() {
    let (_, per_command) = common::large_imports(12);
    let directory = tempfile::tempdir().unwrap();
    write_log(directory.path(), &per_command);
    let all = frames(directory.path());
    assert!(all.iter().any(|&(sequence, ..)| sequence >= 1), "the log has more than one segment");
    // The second frame of the first segment: synced records before and after it.
    let (sequence, offset, lsn) = all[1];
    assert_eq!(sequence, all[0].0);
    let path = directory.path().join(segment_file_name(sequence));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset..offset + 512].fill(0);
    std::fs::write(&path, bytes).unwrap();
    match recover_into_new(directory.path()) {
        Err(WalError::Corrupt { segment, offset: at, after_lsn, .. }) => {
            assert!(segment.ends_with(&segment_file_name(sequence)), "{segment}");
            assert_eq!((at, after_lsn.0), (offset as u64, lsn - 1));
        }
        Err(other) => panic!("expected Corrupt naming the damaged place, got {other}"),
        Ok(_) => panic!("recovered past a zeroed sector: acknowledged records would be lost silently"),
    }
}

/// The bytes of the frames of records `from ..= through` as they lie on disk, back to back.
fn frames_on_disk(directory: &Path, from: u64, through: u64) -> Vec<u8> {
    let mut segments = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for (sequence, offset, lsn) in frames(directory) {
        if lsn < from || lsn > through {
            continue;
        }
        let bytes = segments
            .entry(sequence)
            .or_insert_with(|| std::fs::read(directory.join(segment_file_name(sequence))).unwrap());
        let (_, length) = reservoir_wal::format::decode_frame(&bytes[offset..]);
        assert!(length > 0);
        out.extend_from_slice(&bytes[offset..offset + length]);
    }
    out
}

/// What [`Instrumented`] saw: bytes read, and which segments were evicted or read whole.
#[derive(Default)]
struct Seen {
    bytes_read: std::sync::atomic::AtomicU64,
    events: std::sync::Mutex<Vec<(&'static str, u64)>>,
    syncs: std::sync::atomic::AtomicUsize,
}

/// Real files, watched: counts the bytes read, logs evictions and whole-segment reads, and
/// fails every fdatasync from the `fail_syncs_from`-th on (an injected EIO).
struct Instrumented {
    inner: FsStorage,
    seen: Arc<Seen>,
    fail_syncs_from: usize,
}

impl Instrumented {
    fn new(directory: &Path) -> Instrumented {
        Instrumented { inner: FsStorage::new(directory).unwrap(), seen: Arc::default(), fail_syncs_from: usize::MAX }
    }

    fn count(&self, bytes: &std::io::Result<Vec<u8>>) {
        if let Ok(bytes) = bytes {
            self.seen.bytes_read.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn log(&self, event: &'static str, sequence: u64) {
        self.seen.events.lock().unwrap().push((event, sequence));
    }
}

impl Storage for Instrumented {
    fn list(&self) -> std::io::Result<Vec<u64>> {
        self.inner.list()
    }
    fn read(&self, sequence: u64) -> std::io::Result<Vec<u8>> {
        self.log("read", sequence);
        let read = self.inner.read(sequence);
        self.count(&read);
        read
    }
    fn read_prefix(&self, sequence: u64, bytes: usize) -> std::io::Result<Vec<u8>> {
        let read = self.inner.read_prefix(sequence, bytes);
        self.count(&read);
        read
    }
    fn read_range(&self, sequence: u64, offset: u64, bytes: usize) -> std::io::Result<Vec<u8>> {
        let read = self.inner.read_range(sequence, offset, bytes);
        self.count(&read);
        read
    }
    fn create(&self, sequence: u64, bytes: u64, header: &[u8]) -> std::io::Result<()> {
        self.inner.create(sequence, bytes, header)
    }
    fn write(&self, sequence: u64, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write(sequence, offset, bytes)
    }
    fn sync(&self, sequence: u64) -> std::io::Result<()> {
        if self.seen.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= self.fail_syncs_from {
            return Err(std::io::Error::other("injected EIO"));
        }
        self.inner.sync(sequence)
    }
    fn remove(&self, sequence: u64) -> std::io::Result<()> {
        self.inner.remove(sequence)
    }
    fn evict_cached(&self, sequence: u64) -> std::io::Result<()> {
        self.log("evict", sequence);
        self.inner.evict_cached(sequence)
    }
    fn mark_write_failed(&self) -> std::io::Result<()> {
        self.inner.mark_write_failed()
    }
    fn write_failed_marked(&self) -> bool {
        self.inner.write_failed_marked()
    }
    fn clear_write_failed(&self) -> std::io::Result<()> {
        self.inner.clear_write_failed()
    }
    fn describe(&self, sequence: u64) -> String {
        self.inner.describe(sequence)
    }
}

/// Reads `from ..= through` with `reader` in chunks of about `bytes_max`; checks each chunk
/// ends where it says; returns the frames.
fn read_in_chunks(reader: &mut FrameReader, through: Lsn, bytes_max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while reader.next_lsn() <= through {
        let before = reader.next_lsn();
        let chunk_start = out.len();
        let last = reader.read(through, bytes_max, &mut out).unwrap();
        assert!(last >= before && last <= through);
        assert_eq!(reader.next_lsn(), Lsn(last.0 + 1));
        let (frame, _) = reservoir_wal::format::decode_frame(&out[chunk_start..]);
        assert!(matches!(frame, reservoir_wal::format::Frame::Record { record, .. } if record.lsn == before));
    }
    out
}

/// What a primary ships to a standby behind its feed: every record from any LSN on, byte for
/// byte as on disk, in chunks, across segments. Regression (W4 at the maximum rate on 16
/// cores): each chunk was found by a fresh scan that read its whole segment and decoded it from
/// the start, so a standby behind the feed caught up at a tenth of the primary's rate. Here the
/// reader reads the log about once: at most the log's bytes plus a window per segment.
#[test]
fn a_frame_reader_reads_every_record_once_in_chunks_across_segments() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(12, 30_000);
    let last = write_log(directory.path(), &per_command);
    let placed = frames(directory.path());
    let second_segment_first = placed.iter().find(|frame| frame.0 == 1).expect("two segments at least").2;
    let log_bytes: u64 =
        std::fs::read_dir(directory.path()).unwrap().map(|entry| entry.unwrap().metadata().unwrap().len()).sum();
    let segments = placed.last().unwrap().0 + 1;
    for (from, bytes_max) in [
        (1, 1 << 20),
        (2, 1),
        (last.0 / 3, 4_096),
        (second_segment_first - 1, 1),
        (second_segment_first, 1 << 20),
        (last.0, 4_096),
    ] {
        let storage = Instrumented::new(directory.path());
        let seen = storage.seen.clone();
        let mut reader = FrameReader::new(Box::new(storage), Lsn(from));
        let read = read_in_chunks(&mut reader, last, bytes_max);
        assert!(read == frames_on_disk(directory.path(), from, last.0), "from {from}, chunks of {bytes_max}");
        let read_bytes = seen.bytes_read.load(std::sync::atomic::Ordering::Relaxed);
        let bound = log_bytes + segments * (reservoir_wal::READ_WINDOW_BYTES as u64 + 4_096);
        assert!(
            read_bytes <= bound,
            "from {from}, chunks of {bytes_max}: read {read_bytes} bytes of a {log_bytes}-byte log"
        );
    }
}

/// A reader kept between reads follows a log that grows under it: the live segment's new
/// records, and the segments the writer rolls over to.
#[test]
fn a_frame_reader_follows_a_growing_log() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(13, 30_000);
    let storage = Arc::new(FsStorage::new(directory.path()).unwrap());
    let recovery = recover(storage.as_ref(), &Engine::new(common::config()), |_| {}).unwrap();
    let wal = Wal::start(storage, options(), recovery.scan.position).unwrap();
    let mut reader = FrameReader::new(Box::new(FsStorage::new(directory.path()).unwrap()), Lsn(1));
    let mut read = Vec::new();
    for part in per_command.chunks(3_000) {
        for records in part {
            wal.append(records.clone()).unwrap();
        }
        let durable = wal.durable_lsn();
        read.extend(read_in_chunks(&mut reader, durable, 64 << 10));
        assert_eq!(reader.next_lsn(), Lsn(durable.0 + 1));
    }
    let last = wal.close().unwrap();
    assert!(frames(directory.path()).last().unwrap().0 >= 1, "the log must span two segments");
    assert!(read == frames_on_disk(directory.path(), 1, last.0));
}

/// A reader never passes over damage or a gap: a flipped bit names the segment and offset;
/// records before the log's first, or past its end, are errors.
#[test]
fn a_frame_reader_reports_damage_and_missing_records() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(14, 30_000);
    let last = write_log(directory.path(), &per_command);
    let reader = |from: u64| FrameReader::new(Box::new(FsStorage::new(directory.path()).unwrap()), Lsn(from));

    let past_the_end = reader(last.0).read(Lsn(last.0 + 1), 1 << 20, &mut Vec::new());
    assert!(matches!(past_the_end, Err(WalError::Corrupt { .. })), "{past_the_end:?}");

    let placed = frames(directory.path());
    let (sequence, offset, lsn) = placed[placed.len() / 2];
    flip_bit(directory.path(), sequence, offset + 50);
    let mut frames_read = Vec::new();
    match reader(1).read(last, usize::MAX, &mut frames_read) {
        Err(WalError::Corrupt { segment, offset: at, after_lsn, .. }) => {
            assert!(segment.ends_with(&segment_file_name(sequence)), "{segment}");
            assert_eq!((at, after_lsn), (offset as u64, Lsn(lsn - 1)));
        }
        other => panic!("a flipped bit must be reported, got {other:?}"),
    }
    assert!(frames_read == frames_on_disk(directory.path(), 1, lsn - 1), "everything before the damage is read");

    std::fs::remove_file(directory.path().join(segment_file_name(0))).unwrap();
    let missing = reader(1).read(last, 1 << 20, &mut Vec::new());
    assert!(matches!(missing, Err(WalError::MissingRecords { needed: Lsn(1), .. })), "{missing:?}");
}

/// Regression (found by audit): a writer restarted with a larger `segment_bytes` sized the
/// segment it resumed by its options, not its header, wrote past the file's preallocated end,
/// and the next start refused the segment as a bad header. It now fills the resumed segment to
/// its own size and makes new segments of the new one; both starts recover every record.
#[test]
fn a_restart_with_another_segment_size_keeps_each_segment_to_its_own() {
    let directory = tempfile::tempdir().unwrap();
    let (engine, per_command) = common::history(16, 30_000);
    let (first, second) = per_command.split_at(per_command.len() / 4);
    write_log(directory.path(), first);
    let larger = WalOptions { segment_bytes: 2 * SEGMENT_BYTES_MIN, ..WalOptions::default() };
    let storage = Arc::new(FsStorage::new(directory.path()).unwrap());
    let recovery = recover(storage.as_ref(), &Engine::new(common::config()), |_| {}).unwrap();
    let wal = Wal::start(storage, larger, recovery.scan.position).unwrap();
    for records in second {
        wal.append(records.clone()).unwrap();
    }
    let last = wal.close().unwrap();
    assert!(frames(directory.path()).last().unwrap().0 >= 1, "the log went on into a new segment");
    let sizes: Vec<u64> = (0..=frames(directory.path()).last().unwrap().0)
        .map(|sequence| std::fs::metadata(directory.path().join(segment_file_name(sequence))).unwrap().len())
        .collect();
    assert_eq!(sizes[0], SEGMENT_BYTES_MIN, "the resumed segment kept its size: {sizes:?}");
    assert!(sizes[1..].iter().all(|&size| size == 2 * SEGMENT_BYTES_MIN), "{sizes:?}");
    let (recovered, recovery) = recover_into_new(directory.path()).unwrap();
    assert_eq!(recovery.scan.last_lsn, last);
    assert_eq!(recovered.dump(), engine.dump());
}

/// Regression (found by audit): a log that ends before what the engine already holds (a
/// snapshot covering records whose segments were lost) was reported as `MissingRecords`, "the
/// WAL starts at LSN N", naming its end as its start. It is `LogBehindSnapshot`: the log's
/// end and what the snapshot covers.
#[test]
fn a_log_ending_before_the_snapshot_is_reported_as_behind_it_not_as_starting_late() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(17, 2_000);
    let all: Vec<Record> = per_command.iter().flatten().cloned().collect();
    let on_disk = write_log(directory.path(), &per_command[..1_000]);
    let covered = on_disk.0 as usize + 100;
    assert!(covered < all.len());
    let engine = common::replayed(&all, covered);
    let storage = FsStorage::new(directory.path()).unwrap();
    match recover(&storage, &engine, |_| {}) {
        Err(WalError::LogBehindSnapshot { covered: said_covered, log_next }) => {
            assert_eq!((said_covered, log_next), (Lsn(covered as u64), Lsn(on_disk.0 + 1)));
        }
        Err(other) => panic!("expected LogBehindSnapshot, got {other}"),
        Ok(_) => panic!("a log behind the snapshot must not recover"),
    }
}

/// fsyncgate: after a failed fdatasync the kernel may keep pages it never wrote, marked clean,
/// and a restart on the same boot would replay them (records a reboot then loses, with later
/// ones after the hole). A writer that fails marks the log; the next recovery then syncs and
/// evicts every segment it replays from the page cache before it reads it, so that replay reads
/// the disk, and clears the mark. Segments wholly before the start are left alone, and without
/// the mark nothing is evicted (it made every restart's replay ~1.6x slower).
#[test]
fn after_a_marked_write_failure_recovery_reads_the_segments_it_replays_from_the_disk() {
    let directory = tempfile::tempdir().unwrap();
    let (engine, per_command) = common::history(18, 30_000);
    let all: Vec<Record> = per_command.iter().flatten().cloned().collect();
    let last = write_log(directory.path(), &per_command);
    let placed = frames(directory.path());
    let segments = placed.last().unwrap().0 + 1;
    assert!(segments >= 2, "the log must span two segments");
    let recording = || Instrumented::new(directory.path());
    let evicted = |storage: &Instrumented| -> Vec<u64> {
        storage.seen.events.lock().unwrap().iter().filter(|event| event.0 == "evict").map(|event| event.1).collect()
    };
    // No mark: the cache is trusted.
    let storage = recording();
    recover(&storage, &Engine::new(common::config()), |_| {}).unwrap();
    assert!(evicted(&storage).is_empty());
    // Marked: every segment is evicted before it is read, and the mark is cleared.
    let storage = recording();
    storage.mark_write_failed().unwrap();
    assert!(directory.path().join(reservoir_wal::storage::WRITE_FAILED_FILE).exists());
    let recovered = Engine::new(common::config());
    let recovery = recover(&storage, &recovered, |_| {}).unwrap();
    assert_eq!((recovery.scan.last_lsn, recovered.dump()), (last, engine.dump()));
    let log = storage.seen.events.lock().unwrap().clone();
    for sequence in 0..segments {
        let evicted = log.iter().position(|&event| event == ("evict", sequence));
        let read = log.iter().position(|&event| event == ("read", sequence));
        assert!(evicted.is_some() && evicted < read, "segment {sequence}: {log:?}");
    }
    assert!(!storage.write_failed_marked(), "cleared after the recovery");
    // From the last segment's first record (as after a snapshot): only that one.
    let from = placed.iter().find(|frame| frame.0 == segments - 1).unwrap().2;
    let storage = recording();
    storage.mark_write_failed().unwrap();
    recover(&storage, &common::replayed(&all, from as usize - 1), |_| {}).unwrap();
    assert_eq!(evicted(&storage), vec![segments - 1]);
}

/// The writer marks its log when an fdatasync fails, so that the next start distrusts the
/// page cache (above).
#[test]
fn a_failed_sync_marks_the_log_for_the_next_start() {
    let directory = tempfile::tempdir().unwrap();
    let (_, per_command) = common::history(19, 200);
    let storage = Arc::new(Instrumented { fail_syncs_from: 20, ..Instrumented::new(directory.path()) });
    let recovery = recover(storage.as_ref(), &Engine::new(common::config()), |_| {}).unwrap();
    let wal = Wal::start(storage, options(), recovery.scan.position).unwrap();
    let failed = per_command.iter().any(|records| wal.append(records.clone()).is_err());
    assert!(failed, "the injected EIO fails an append");
    let _ = wal.close();
    assert!(FsStorage::new(directory.path()).unwrap().write_failed_marked());
}
