//! The snapshot policy of a running server: a background thread that takes a snapshot every
//! N records or T milliseconds (whichever comes first) and on demand, then applies retention.
//!
//! Writers never wait for it: each snapshot is built from a private engine that replays the
//! newest snapshot plus the durable log ([`crate::build_snapshot`]), so the only cost to the
//! live engine is CPU and memory while the build runs. One snapshot at a time.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use reservoir_engine::{Config, Lsn};

use crate::archive::RetentionPolicy;
use crate::{build_snapshot, WalError};

/// How often the thread looks at the durable LSN and the clock.
pub const SNAPSHOT_POLL_MS: u64 = 50;

/// When to take a snapshot. 0 turns a trigger off; both 0 means on demand only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// After this many records past the last snapshot.
    pub every_records: u64,
    /// After this long since the last snapshot (if any record came meanwhile).
    pub every_ms: u64,
    pub retention: RetentionPolicy,
}

impl Default for SnapshotPolicy {
    /// Every 1,000,000 records or 10 minutes: at W1's ~350 B per record that bounds the live
    /// log to ~350 MB and a recovery's replay to a million records (~3 s measured).
    fn default() -> SnapshotPolicy {
        SnapshotPolicy { every_records: 1_000_000, every_ms: 600_000, retention: RetentionPolicy::default() }
    }
}

/// What the snapshotter did so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotterStats {
    pub snapshots: u64,
    pub last_covers_lsn: Lsn,
    pub last_seconds: f64,
    pub longest_seconds: f64,
    pub segments_archived: u64,
    /// The last failure, if the last attempt failed (it is retried at the next trigger).
    pub last_error: Option<String>,
}

struct Control {
    stop: bool,
    requested: bool,
    stats: SnapshotterStats,
}

struct Shared {
    control: Mutex<Control>,
    changed: Condvar,
}

/// The background snapshot thread. Dropping it (or [`Snapshotter::stop`]) ends the thread
/// after the snapshot in progress, if any.
pub struct Snapshotter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Snapshotter {
    /// Starts the thread for `data_directory`. `durable_lsn` says how far the log is durable
    /// (a snapshot never covers more); `base` is what the directory's newest snapshot covers.
    pub fn start(
        data_directory: PathBuf,
        config: Config,
        policy: SnapshotPolicy,
        base: Lsn,
        durable_lsn: impl Fn() -> Lsn + Send + 'static,
    ) -> Result<Snapshotter, WalError> {
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                stop: false,
                requested: false,
                stats: SnapshotterStats { last_covers_lsn: base, ..SnapshotterStats::default() },
            }),
            changed: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("snapshotter".into())
            .spawn(move || run(&data_directory, &config, &policy, &thread_shared, &durable_lsn))
            .map_err(|source| WalError::io("start the snapshot thread", source))?;
        Ok(Snapshotter { shared, thread: Some(thread) })
    }

    /// Asks for a snapshot now (it covers what is durable when the thread gets to it).
    pub fn request(&self) {
        self.shared.control.lock().requested = true;
        self.shared.changed.notify_all();
    }

    pub fn stats(&self) -> SnapshotterStats {
        self.shared.control.lock().stats.clone()
    }

    /// Waits until a snapshot covering at least `lsn` exists, or `timeout` passes. Returns
    /// whether it does.
    pub fn wait_for(&self, lsn: Lsn, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut control = self.shared.control.lock();
        while control.stats.last_covers_lsn < lsn {
            if self.shared.changed.wait_until(&mut control, deadline).timed_out() {
                return control.stats.last_covers_lsn >= lsn;
            }
        }
        true
    }

    /// Stops the thread (after the snapshot in progress) and returns what it did.
    pub fn stop(mut self) -> SnapshotterStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.shared.control.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            // A panic in the thread is a broken invariant: pass it on.
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.shutdown();
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn run(
    data_directory: &std::path::Path,
    config: &Config,
    policy: &SnapshotPolicy,
    shared: &Shared,
    durable_lsn: &dyn Fn() -> Lsn,
) {
    let mut last_at = Instant::now();
    loop {
        let mut control = shared.control.lock();
        if control.stop {
            return;
        }
        shared.changed.wait_for(&mut control, Duration::from_millis(SNAPSHOT_POLL_MS));
        if control.stop {
            return;
        }
        let durable = durable_lsn();
        let covered = control.stats.last_covers_lsn;
        let behind = durable.0.saturating_sub(covered.0);
        let due = control.requested
            || (policy.every_records > 0 && behind >= policy.every_records)
            || (policy.every_ms > 0 && behind > 0 && last_at.elapsed() >= Duration::from_millis(policy.every_ms));
        if !due || durable.0 == 0 {
            continue;
        }
        control.requested = false;
        drop(control);

        let started = Instant::now();
        let result = build_snapshot(data_directory, config.clone(), Some(durable), now_ms(), &policy.retention);
        let seconds = started.elapsed().as_secs_f64();
        last_at = Instant::now();
        let mut control = shared.control.lock();
        match result {
            Ok((written, retention)) => {
                assert!(written.covers_lsn <= durable, "a snapshot never covers more than is durable");
                let stats = &mut control.stats;
                stats.snapshots += 1;
                stats.last_covers_lsn = stats.last_covers_lsn.max(written.covers_lsn);
                stats.last_seconds = seconds;
                stats.longest_seconds = stats.longest_seconds.max(seconds);
                stats.segments_archived += retention.segments_archived;
                stats.last_error = None;
            }
            Err(error) => control.stats.last_error = Some(error.to_string()),
        }
        drop(control);
        shared.changed.notify_all();
    }
}
