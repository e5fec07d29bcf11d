//! The group-commit writer: one thread that takes the records of concurrent commands, puts
//! them in LSN order, writes each group with one `pwrite` and makes it durable with one
//! `fdatasync`, then tells the waiting commands. docs/wal.md, "Commit protocol".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use parking_lot::{Condvar, Mutex};
use reservoir_engine::{Lsn, Record};

use crate::format::{encode_frame, SegmentHeader, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES};
use crate::scan::AppendPosition;
use crate::storage::Storage;
use crate::WalError;

/// Submissions (one command's records each) queued for the writer before `submit` blocks:
/// the back-pressure point between the engine and the disk.
pub const SUBMISSIONS_QUEUED_MAX: usize = 16_384;
/// Records in one group commit.
pub const BATCH_RECORDS_MAX: usize = 16_384;
/// Bytes of one group commit's write.
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// Records waiting in the reorder buffer for an earlier LSN. Each command takes its LSNs and
/// submits them right away, so the buffer holds at most a few records per concurrent command.
pub const REORDER_RECORDS_MAX: usize = 1 << 20;
/// The longest sync interval `Relaxed` mode accepts: its RPO on a power cut.
pub const SYNC_INTERVAL_MS_MAX: u32 = 1_000;
/// The default sync interval of `Relaxed` mode.
pub const SYNC_INTERVAL_MS_DEFAULT: u32 = 10;
/// Bytes `Relaxed` mode writes before it syncs, whatever the interval: bounds what a power cut
/// can take and what waits to be published to standbys.
pub const UNSYNCED_BYTES_MAX: u64 = 8 << 20;

/// When an acknowledgement may be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After the record's group commit was fdatasynced (the default, and the one that counts).
    Durable,
    /// After the record was written to the OS; the writer fdatasyncs at least every
    /// `sync_interval_ms` (and every `UNSYNCED_BYTES_MAX` bytes). A process crash loses
    /// nothing acknowledged (the OS holds the writes); a power cut or kernel crash loses at most
    /// the acknowledged records of the last `sync_interval_ms` plus one fdatasync's duration:
    /// that is its RPO (docs/wal.md, "Relaxed mode"). Standbys are shipped synced records only.
    Relaxed { sync_interval_ms: u32 },
    /// After the record was written to the OS (no fsync): a power cut loses acknowledged
    /// records. For tests and benchmarks only; every figure taken with it says so.
    None,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::Durable => "durable",
            Durability::Relaxed { .. } => "relaxed",
            Durability::None => "none",
        }
    }

    /// `Relaxed` with the default interval.
    pub fn relaxed() -> Durability {
        Durability::Relaxed { sync_interval_ms: SYNC_INTERVAL_MS_DEFAULT }
    }

    /// Whether the writer fdatasyncs at all.
    pub fn syncs(self) -> bool {
        self != Durability::None
    }
}

#[derive(Clone, Debug)]
pub struct WalOptions {
    pub durability: Durability,
    /// Size of each (preallocated) segment.
    pub segment_bytes: u64,
    /// The primary's epoch, written into every segment and record.
    pub epoch: u32,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions { durability: Durability::Durable, segment_bytes: 64 << 20, epoch: 1 }
    }
}

/// Counters of what the writer did, for benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WalStats {
    pub records: u64,
    pub batches: u64,
    pub syncs: u64,
    pub bytes: u64,
    /// Time spent in fdatasync, summed.
    pub sync_ns: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Recent durable groups, for replication (docs/operations.md).
    feed: crate::feed::Feed,
}

struct State {
    /// Every record up to this LSN is written and synced (only written, in `None` mode).
    durable_lsn: Lsn,
    /// Every record up to this LSN is written to the OS (`durable_lsn` <= it).
    written_lsn: Lsn,
    /// Set once when a write or sync fails: nothing after it is ever acknowledged.
    failed: Option<String>,
    stats: WalStats,
}

/// The write-ahead log, open for appending.
pub struct Wal {
    shared: Arc<Shared>,
    sender: Option<Sender<Vec<Record>>>,
    thread: Option<JoinHandle<()>>,
    durability: Durability,
    /// The data directory's lock, held while this writer may append (released after the
    /// writer's last write, at close or drop).
    lock: Option<crate::DirectoryLock>,
    history: u64,
}

impl Wal {
    /// Starts the writer at `position` (from [`crate::scan`]; after [`crate::cut_torn_tail`]
    /// if the scan found a torn tail).
    pub fn start(storage: Arc<dyn Storage>, options: WalOptions, position: AppendPosition) -> Result<Wal, WalError> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&options.segment_bytes) {
            return Err(WalError::Config(format!(
                "segment size {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX} bytes",
                options.segment_bytes
            )));
        }
        if let Durability::Relaxed { sync_interval_ms } = options.durability {
            if !(1..=SYNC_INTERVAL_MS_MAX).contains(&sync_interval_ms) {
                return Err(WalError::Config(format!(
                    "sync interval {sync_interval_ms} ms is outside 1..={SYNC_INTERVAL_MS_MAX} ms"
                )));
            }
        }
        assert!(position.next_lsn.0 >= 1);
        assert!(position.offset >= SEGMENT_HEADER_BYTES as u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                durable_lsn: Lsn(position.next_lsn.0 - 1),
                written_lsn: Lsn(position.next_lsn.0 - 1),
                failed: None,
                stats: WalStats::default(),
            }),
            changed: Condvar::new(),
            feed: crate::feed::Feed::new(),
        });
        let (sender, receiver) = crossbeam_channel::bounded(SUBMISSIONS_QUEUED_MAX);
        let durability = options.durability;
        let writer = Writer::new(storage, options, position);
        let history = writer.history();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || run(writer, receiver, thread_shared))
            .map_err(|source| WalError::io("start the WAL writer thread", source))?;
        Ok(Wal { shared, sender: Some(sender), thread: Some(thread), durability, lock: None, history })
    }

    /// The log's history id (the one this writer writes into new segments).
    pub fn history(&self) -> u64 {
        self.history
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Keeps `lock` until this writer is closed or dropped.
    pub(crate) fn hold(&mut self, lock: crate::DirectoryLock) {
        assert!(self.lock.is_none(), "one lock per writer");
        self.lock = Some(lock);
    }

    /// Hands one command's records to the writer. Blocks while `SUBMISSIONS_QUEUED_MAX`
    /// submissions are queued. Every LSN the engine hands out must be submitted, or the
    /// writer waits for it forever.
    pub fn submit(&self, records: Vec<Record>) -> Result<(), WalError> {
        if records.is_empty() {
            return Ok(());
        }
        if let Some(why) = &self.shared.state.lock().failed {
            return Err(WalError::Failed(why.clone()));
        }
        let sender = self.sender.as_ref().expect("open until closed");
        sender.send(records).map_err(|_| self.failure())
    }

    /// Blocks until every record up to `lsn` is durable (synced; written, in `None` mode).
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        self.wait_until(|state| state.durable_lsn >= lsn)
    }

    /// Blocks until every record up to `lsn` may be acknowledged under this log's durability:
    /// synced in `Durable` mode, written to the OS in `Relaxed` and `None` modes.
    pub fn wait_acknowledgeable(&self, lsn: Lsn) -> Result<(), WalError> {
        let durability = self.durability;
        self.wait_until(|state| state.acknowledgeable_lsn(durability) >= lsn)
    }

    fn wait_until(&self, done: impl Fn(&State) -> bool) -> Result<(), WalError> {
        let mut state = self.shared.state.lock();
        loop {
            if done(&state) {
                return Ok(());
            }
            if let Some(why) = &state.failed {
                return Err(WalError::Failed(why.clone()));
            }
            self.shared.changed.wait(&mut state);
        }
    }

    /// `submit` then `wait_acknowledgeable` for the highest LSN among `records`.
    pub fn append(&self, records: Vec<Record>) -> Result<(), WalError> {
        let Some(highest) = records.iter().map(|record| record.lsn).max() else { return Ok(()) };
        self.submit(records)?;
        self.wait_acknowledgeable(highest)
    }

    /// Every record up to it is synced (written, in `None` mode): what snapshots cover and
    /// standbys are shipped.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.state.lock().durable_lsn
    }

    /// Every record up to it is written to the OS.
    pub fn written_lsn(&self) -> Lsn {
        self.shared.state.lock().written_lsn
    }

    /// Every record up to it may be acknowledged ([`Wal::wait_acknowledgeable`]).
    pub fn acknowledgeable_lsn(&self) -> Lsn {
        self.shared.state.lock().acknowledgeable_lsn(self.durability)
    }

    /// A handle that reads the durable LSN from another thread (the snapshotter's).
    pub fn durable_lsn_reader(&self) -> DurableLsnReader {
        DurableLsnReader { shared: self.shared.clone(), durability: self.durability }
    }

    pub fn stats(&self) -> WalStats {
        self.shared.state.lock().stats
    }

    /// Writes what was submitted, stops the writer and returns the last durable LSN.
    pub fn close(mut self) -> Result<Lsn, WalError> {
        self.shutdown();
        let state = self.shared.state.lock();
        match &state.failed {
            Some(why) => Err(WalError::Failed(why.clone())),
            None => Ok(state.durable_lsn),
        }
    }

    fn shutdown(&mut self) {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                let mut state = self.shared.state.lock();
                state.failed.get_or_insert_with(|| "the WAL writer thread panicked".into());
            }
        }
    }

    fn failure(&self) -> WalError {
        let state = self.shared.state.lock();
        WalError::Failed(state.failed.clone().unwrap_or_else(|| "the WAL writer stopped".into()))
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl State {
    fn acknowledgeable_lsn(&self, durability: Durability) -> Lsn {
        match durability {
            Durability::Durable => self.durable_lsn,
            Durability::Relaxed { .. } | Durability::None => self.written_lsn,
        }
    }
}

/// The two LSNs a server watches: what may be acknowledged, and what is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalProgress {
    /// [`Wal::acknowledgeable_lsn`].
    pub acknowledgeable: Lsn,
    /// [`Wal::durable_lsn`].
    pub durable: Lsn,
}

/// Reads a [`Wal`]'s durable LSN; outlives nothing but the counters it shares.
#[derive(Clone)]
pub struct DurableLsnReader {
    shared: Arc<Shared>,
    durability: Durability,
}

impl DurableLsnReader {
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.state.lock().durable_lsn
    }

    /// Waits until either LSN of `seen` moves, the writer fails, or `timeout` passes;
    /// returns both then.
    pub fn wait_progress(&self, seen: WalProgress, timeout: std::time::Duration) -> WalProgress {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock();
        let mut timed_out = false;
        loop {
            let now =
                WalProgress { acknowledgeable: state.acknowledgeable_lsn(self.durability), durable: state.durable_lsn };
            assert!(now.durable <= now.acknowledgeable, "nothing is durable before it is written");
            let moved = now.durable > seen.durable || now.acknowledgeable > seen.acknowledgeable;
            if moved || timed_out || state.failed.is_some() {
                return now;
            }
            timed_out = self.shared.changed.wait_until(&mut state, deadline).timed_out();
        }
    }

    /// Why the writer failed, if it did (it then acknowledges nothing more).
    pub fn failure(&self) -> Option<String> {
        self.shared.state.lock().failed.clone()
    }

    /// The frames of durable records from `lsn` on, as written (at most about `bytes_max`),
    /// if the in-memory feed still holds `lsn` ([`crate::feed::Feed::read_from`]).
    pub fn feed_read(&self, lsn: Lsn, bytes_max: usize) -> crate::feed::FeedRead {
        self.shared.feed.read_from(lsn, bytes_max)
    }

    /// When the durable record at `lsn` (or the oldest the feed still holds after it) was
    /// executed and synced ([`crate::feed::Feed::times_from`]).
    pub fn feed_times_from(&self, lsn: Lsn) -> Option<crate::feed::RecordTimes> {
        self.shared.feed.times_from(lsn)
    }

    /// Starts keeping durable groups in the feed (a primary calls it when a standby first
    /// connects; until then the writer copies nothing).
    pub fn enable_feed(&self) {
        self.shared.feed.enable();
    }
}

/// The writer's state and steps, without a thread: [`Wal`] runs it on its own thread;
/// simulations drive it directly to stop between a write and its sync.
pub struct Writer {
    storage: Arc<dyn Storage>,
    options: WalOptions,
    /// The current segment's size, from its header (new segments: `options.segment_bytes`).
    segment_bytes: u64,
    sequence: u64,
    offset: u64,
    segment_exists: bool,
    next_lsn: Lsn,
    reorder: BTreeMap<u64, Record>,
    buffer: Vec<u8>,
    history: u64,
    /// Whether written frames are also kept for the replication feed, and those of the
    /// current group.
    publishing: bool,
    published: Vec<u8>,
    /// `Relaxed` mode: segments written since the last sync, and the bytes.
    unsynced_segments: Vec<u64>,
    unsynced_bytes: u64,
    /// `Relaxed` mode: the first LSN written since the last sync. Every frame written until
    /// the next sync carries it as its batch LSN: the unit recovery reasons about (docs/wal.md,
    /// "Relaxed mode") is what one sync makes durable, not one write.
    window_first_lsn: Option<Lsn>,
}

/// What one group's write did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupWrite {
    pub records: u64,
    pub bytes: u64,
    /// Segments written, to be synced.
    pub segments: Vec<u64>,
    /// The last LSN written.
    pub last_lsn: Lsn,
}

fn run(mut writer: Writer, receiver: Receiver<Vec<Record>>, shared: Arc<Shared>) {
    // A broken invariant in the writer panics, as everywhere; but the waiters must hear of it
    // (regression: a panic here left every `wait_*` and every reply waiting forever).
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_until_closed(&mut writer, &receiver, &shared)));
    let failure = match &outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(panic) => Some(format!(
            "the WAL writer panicked: {}",
            panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied()).unwrap_or("?")
        )),
    };
    if let Some(mut failure) = failure {
        // Best effort: a disk that failed a sync may fail this too, and the failure stands
        // either way (the next recovery then trusts the page cache, as before the mark).
        if let Err(error) = writer.storage.mark_write_failed() {
            failure = format!("{failure} (and marking the log for the next start failed: {error})");
        }
        let mut state = shared.state.lock();
        // fsyncgate: after a failed write or fsync nothing is retried or acknowledged.
        state.failed = Some(failure);
        drop(state);
        shared.changed.notify_all();
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn run_until_closed(writer: &mut Writer, receiver: &Receiver<Vec<Record>>, shared: &Shared) -> Result<(), WalError> {
    let sync_interval = match writer.options.durability {
        Durability::Relaxed { sync_interval_ms } => Some(Duration::from_millis(u64::from(sync_interval_ms))),
        Durability::Durable | Durability::None => None,
    };
    // `Relaxed` mode: when the oldest write not yet synced was made.
    let mut unsynced_since: Option<Instant> = None;
    loop {
        // Block for the first submission of a group, then take whatever else is queued:
        // everything that arrived while the previous group was being written and synced. In
        // `Relaxed` mode the wait ends when the pending writes are due to be synced.
        let first = match (sync_interval, unsynced_since) {
            (Some(interval), Some(since)) => match receiver.recv_deadline(since + interval) {
                Ok(records) => Some(records),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    sync_relaxed(writer, shared)?;
                    return closed(writer);
                }
            },
            _ => match receiver.recv() {
                Ok(records) => Some(records),
                Err(_) => return closed(writer),
            },
        };
        if let Some(first) = first {
            // Frames are copied for the feed only once a standby has asked for them.
            writer.publishing = shared.feed.is_enabled();
            writer.take(first);
            while writer.reorder.len() < BATCH_RECORDS_MAX {
                match receiver.try_recv() {
                    Ok(records) => writer.take(records),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let group = writer.write_group()?;
            if group.records > 0 {
                let sync_started = Instant::now();
                let syncs = writer.sync(&group)?;
                let sync_ns = if syncs > 0 { sync_started.elapsed().as_nanos() as u64 } else { 0 };
                let durable = sync_interval.is_none();
                if durable {
                    // Published before the durable LSN moves: whoever sees the new LSN finds
                    // its frames. (`Relaxed` mode publishes at its sync.)
                    let (first_lsn, frames) = writer.take_published();
                    if !frames.is_empty() {
                        shared.feed.publish(first_lsn, group.last_lsn, frames, unix_ms());
                    }
                } else {
                    unsynced_since.get_or_insert_with(Instant::now);
                }
                let mut state = shared.state.lock();
                assert!(state.written_lsn < group.last_lsn, "the written LSN only grows");
                state.written_lsn = group.last_lsn;
                if durable {
                    state.durable_lsn = group.last_lsn;
                }
                state.stats.records += group.records;
                state.stats.batches += 1;
                state.stats.syncs += syncs;
                state.stats.bytes += group.bytes;
                state.stats.sync_ns += sync_ns;
                drop(state);
                shared.changed.notify_all();
            }
        }
        if let (Some(interval), Some(since)) = (sync_interval, unsynced_since) {
            if since.elapsed() >= interval || writer.unsynced_bytes() >= UNSYNCED_BYTES_MAX {
                sync_relaxed(writer, shared)?;
                unsynced_since = None;
            }
        }
    }
}

/// The wall clock in ms since the Unix epoch, as records' timestamps are kept: when a group
/// became durable, for a standby's lag.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

fn closed(writer: &Writer) -> Result<(), WalError> {
    assert!(writer.reorder.is_empty(), "closed with records waiting for an earlier LSN");
    assert_eq!(writer.unsynced_bytes, 0, "closed with writes not synced");
    Ok(())
}

/// `Relaxed` mode: syncs what was written since the last sync, publishes it to the feed and
/// moves the durable LSN to the written one.
fn sync_relaxed(writer: &mut Writer, shared: &Shared) -> Result<(), WalError> {
    let written = Lsn(writer.next_lsn.0 - 1);
    let sync_started = Instant::now();
    let syncs = writer.sync_pending()?;
    let sync_ns = sync_started.elapsed().as_nanos() as u64;
    let (first_lsn, frames) = writer.take_published();
    if !frames.is_empty() {
        shared.feed.publish(first_lsn, written, frames, unix_ms());
    }
    let mut state = shared.state.lock();
    assert_eq!(state.written_lsn, written, "every written group was counted");
    assert!(state.durable_lsn <= written, "the durable LSN only grows");
    state.durable_lsn = written;
    state.stats.syncs += syncs;
    state.stats.sync_ns += sync_ns;
    drop(state);
    shared.changed.notify_all();
    Ok(())
}

impl Writer {
    pub fn new(storage: Arc<dyn Storage>, options: WalOptions, position: AppendPosition) -> Writer {
        assert!(position.next_lsn.0 >= 1);
        assert!(position.offset >= SEGMENT_HEADER_BYTES as u64);
        // The current segment's size is its header's, which may differ from the options' (a
        // restart with another `segment_bytes`). Regression (found by audit): the options'
        // size was used, and a larger one wrote past the preallocated end, which the next
        // start refused as a bad header. The scan has just read this header, so it reads.
        let segment_bytes = if position.segment_exists {
            storage
                .read_prefix(position.sequence, SEGMENT_HEADER_BYTES)
                .ok()
                .and_then(|bytes| SegmentHeader::decode(&bytes).ok())
                .map_or(options.segment_bytes, |header| header.segment_bytes)
        } else {
            options.segment_bytes
        };
        assert!(position.offset <= segment_bytes, "the append position is inside its segment");
        Writer {
            storage,
            options,
            segment_bytes,
            sequence: position.sequence,
            offset: position.offset,
            segment_exists: position.segment_exists,
            next_lsn: position.next_lsn,
            reorder: BTreeMap::new(),
            buffer: Vec::with_capacity(1 << 20),
            history: position.history.unwrap_or_else(crate::format::new_history),
            publishing: false,
            published: Vec::new(),
            unsynced_segments: Vec::new(),
            unsynced_bytes: 0,
            window_first_lsn: None,
        }
    }

    /// The first LSN and the frames of the group written since the last call.
    fn take_published(&mut self) -> (Lsn, Vec<u8>) {
        let frames = std::mem::take(&mut self.published);
        let first_lsn = if frames.is_empty() {
            self.next_lsn
        } else {
            Lsn(u64::from_le_bytes(frames[8..16].try_into().expect("a frame header")))
        };
        (first_lsn, frames)
    }

    /// The history id this writer writes into new segments.
    pub fn history(&self) -> u64 {
        self.history
    }

    /// The LSN the next written record will have.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Adds records to the reorder buffer.
    pub fn take(&mut self, records: Vec<Record>) {
        for record in records {
            assert!(record.lsn >= self.next_lsn, "record {} submitted twice or after its turn", record.lsn.0);
            let previous = self.reorder.insert(record.lsn.0, record);
            assert!(previous.is_none(), "two records with one LSN");
        }
        assert!(self.reorder.len() <= REORDER_RECORDS_MAX, "reorder buffer over its bound: an LSN was never submitted");
    }

    /// Writes the run of records that continues the log (not synced: see [`Writer::sync`]).
    pub fn write_group(&mut self) -> Result<GroupWrite, WalError> {
        let batch_lsn = match self.options.durability {
            Durability::Relaxed { .. } => *self.window_first_lsn.get_or_insert(self.next_lsn),
            Durability::Durable | Durability::None => self.next_lsn,
        };
        assert!(batch_lsn <= self.next_lsn);
        let mut group = GroupWrite::default();
        self.buffer.clear();
        while let Some(entry) = self.reorder.first_entry() {
            if *entry.key() != self.next_lsn.0 || self.buffer.len() >= BATCH_BYTES_MAX {
                break;
            }
            let record = entry.remove();
            if let reservoir_engine::Body::EpochChanged { epoch } = record.body {
                // Frames carry the epoch of the primary that made them: this one's on.
                assert!(u64::from(self.options.epoch) < epoch, "an epoch only grows");
                self.options.epoch = u32::try_from(epoch).expect("epochs fit in 32 bits");
            }
            let before = self.buffer.len();
            encode_frame(&record, batch_lsn, self.options.epoch, &mut self.buffer);
            let frame_bytes = self.buffer.len() - before;
            if !self.segment_exists || self.offset + (self.buffer.len() as u64) > self.segment_bytes {
                // The frame does not fit: write what is buffered to this segment, start the next.
                let carried = self.buffer.split_off(before);
                if !self.buffer.is_empty() {
                    group.bytes += self.flush_buffer(&mut group.segments)?;
                }
                self.roll_over(record.lsn)?;
                self.buffer = carried;
            }
            if self.publishing {
                self.published.extend_from_slice(&self.buffer[self.buffer.len() - frame_bytes..]);
            }
            group.last_lsn = record.lsn;
            self.next_lsn = Lsn(self.next_lsn.0 + 1);
            group.records += 1;
        }
        if group.records > 0 {
            group.bytes += self.flush_buffer(&mut group.segments)?;
        }
        Ok(group)
    }

    /// Makes a written group durable (`Durable` mode; nothing in `None` mode; in `Relaxed`
    /// mode the group waits for [`Writer::sync_pending`]). Returns the number of fdatasyncs.
    pub fn sync(&mut self, group: &GroupWrite) -> Result<u64, WalError> {
        match self.options.durability {
            Durability::Durable => {
                for &sequence in &group.segments {
                    self.sync_segment(sequence)?;
                }
                Ok(group.segments.len() as u64)
            }
            Durability::Relaxed { .. } => {
                // Every segment before the current one was synced when the writer rolled over
                // from it (`roll_over`): only the current one can hold unsynced frames.
                // Regression: every segment the group touched was counted again, so a group
                // (or a sync window) over three segments broke the old "at most two" assertion
                // and the writer thread died, leaving every waiter waiting.
                if let Some(&last) = group.segments.last() {
                    assert_eq!(last, self.sequence, "a group ends in the current segment");
                    assert!(
                        self.unsynced_segments.iter().all(|&sequence| sequence == last),
                        "older segments were synced when the writer rolled over from them"
                    );
                    self.unsynced_segments.clear();
                    self.unsynced_segments.push(last);
                }
                self.unsynced_bytes += group.bytes;
                assert!(self.unsynced_segments.len() <= 1, "only the current segment is unsynced");
                Ok(0)
            }
            Durability::None => Ok(0),
        }
    }

    /// `Relaxed` mode: syncs every segment written since the last sync, making every written
    /// record durable. Returns the number of fdatasyncs.
    pub fn sync_pending(&mut self) -> Result<u64, WalError> {
        assert!(self.options.durability.syncs() || self.unsynced_segments.is_empty());
        let segments = std::mem::take(&mut self.unsynced_segments);
        for &sequence in &segments {
            self.sync_segment(sequence)?;
        }
        self.unsynced_bytes = 0;
        // Frames written from now on may be on disk only if everything before them is.
        self.window_first_lsn = None;
        Ok(segments.len() as u64)
    }

    /// Bytes written since the last sync (`Relaxed` mode; 0 in the others).
    pub fn unsynced_bytes(&self) -> u64 {
        self.unsynced_bytes
    }

    fn sync_segment(&self, sequence: u64) -> Result<(), WalError> {
        self.storage.sync(sequence).map_err(|source| WalError::io(self.storage.describe(sequence), source))
    }

    fn flush_buffer(&mut self, touched: &mut Vec<u64>) -> Result<u64, WalError> {
        assert!(self.segment_exists);
        assert!(self.offset + self.buffer.len() as u64 <= self.segment_bytes);
        self.storage
            .write(self.sequence, self.offset, &self.buffer)
            .map_err(|source| WalError::io(self.storage.describe(self.sequence), source))?;
        let written = self.buffer.len() as u64;
        self.offset += written;
        self.buffer.clear();
        if touched.last() != Some(&self.sequence) {
            touched.push(self.sequence);
        }
        Ok(written)
    }

    /// Starts a new segment whose first record is `first_lsn`. The previous segment's tail
    /// is synced first (in `Durable` mode), so segments become durable in order.
    fn roll_over(&mut self, first_lsn: Lsn) -> Result<(), WalError> {
        if self.segment_exists {
            if self.options.durability.syncs() {
                self.sync_segment(self.sequence)?;
                let sequence = self.sequence;
                self.unsynced_segments.retain(|&unsynced| unsynced != sequence);
            }
            self.sequence += 1;
        }
        let header = SegmentHeader {
            sequence: self.sequence,
            first_lsn,
            epoch: self.options.epoch,
            segment_bytes: self.options.segment_bytes,
            history: self.history,
        };
        self.storage
            .create(self.sequence, self.options.segment_bytes, &header.encode())
            .map_err(|source| WalError::io(self.storage.describe(self.sequence), source))?;
        self.segment_exists = true;
        self.segment_bytes = self.options.segment_bytes;
        self.offset = SEGMENT_HEADER_BYTES as u64;
        Ok(())
    }
}
