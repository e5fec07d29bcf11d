//! WAL shipping to standbys, hot standby, promotion and epoch fencing (docs/operations.md;
//! the messages: docs/protocol.md, "Replication").
//!
//! - A **primary** serves each standby's stream ([`primary`]): it ships the frames of durable
//!   records, from its in-memory feed when the standby is close behind, from its segments when
//!   it is further behind, or a snapshot first (a base backup) when its log no longer reaches
//!   back far enough; it tells a standby whose log forked (a former primary) where to cut.
//! - A **standby** follows its primary ([`standby`]): it applies each record to its engine
//!   (queries see it at once), writes it to its own WAL, and reports what is written and
//!   applied, which the primary turns into lag, and, in `sync` mode, into acknowledgements.
//! - **Promotion** (admin `promote`, sent to a standby) stops following, writes an
//!   `EpochChanged` record (the next term, with a random tag: `reservoir_engine::epoch`) and
//!   takes writes; the promoted node then keeps telling its former primary (`Fence`) until
//!   that one answers, after which the former primary
//!   refuses writes, also after a restart, until it rejoins as a standby.

pub(crate) mod primary;
pub(crate) mod standby;
pub mod wire;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use parking_lot::Mutex;
use reservoir_wal::RecordTimes;

use crate::message::NodeRole;
use crate::NetError;

/// When a primary acknowledges a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationMode {
    /// After its own fsync (a standby may be behind: the lag is the RPO).
    Async,
    /// After its own fsync and a standby's (PostgreSQL's `synchronous_commit = on`).
    Sync,
}

impl ReplicationMode {
    pub fn name(self) -> &'static str {
        match self {
            ReplicationMode::Async => "async",
            ReplicationMode::Sync => "sync",
        }
    }
}

/// How a node replicates.
#[derive(Clone, Debug)]
pub struct ReplicationOptions {
    /// On a primary (and on a standby once promoted).
    pub mode: ReplicationMode,
    /// In `sync` mode with no standby connected: `None` keeps waiting (writes are not
    /// acknowledged); `Some(ms)` falls back to async acknowledgements after that long, with a
    /// warning in the log every `DEGRADED_WARNING_INTERVAL_MS` and `sync_state` =
    /// `degraded_to_async` in status, until a standby catches up again.
    pub sync_fallback_ms: Option<u64>,
    /// Lag above this is logged as a warning (the recovery point objective).
    pub rpo_ms: u64,
    /// How often a primary sends a heartbeat and a standby its feedback when idle.
    pub heartbeat_ms: u64,
    /// This node's address as others should reach it (`host:port`): named in `not_primary`
    /// errors of its standbys and in the `Fence` it sends once promoted. Default: the
    /// listening address.
    pub advertise: Option<String>,
    /// A name for this node in a primary's status (default: the advertised address).
    pub name: Option<String>,
    /// The other nodes (`host:port`), asked at a primary's start: if one of them is the
    /// primary of a higher epoch, this node starts fenced instead of taking writes (a former
    /// primary restarted after a failover it did not see). Needs `peer_check`.
    pub peers: Vec<String>,
    /// The replication token and CA to ask `peers` with.
    pub peer_check: Option<FollowOptions>,
    /// The tag (1..=`EPOCH_TAG_MAX`) of the epoch this node begins if promoted
    /// (`reservoir_engine::epoch`); checked when the server starts. `None`, the default and what `reservoir serve` uses: drawn
    /// at random at each promotion, so that two standbys promoted from one epoch lead
    /// different ones. Tests set it to choose which of two such nodes leads the higher.
    pub promotion_tag: Option<u32>,
}

impl Default for ReplicationOptions {
    fn default() -> ReplicationOptions {
        ReplicationOptions {
            mode: ReplicationMode::Async,
            sync_fallback_ms: None,
            rpo_ms: 1_000,
            heartbeat_ms: 100,
            advertise: None,
            name: None,
            peers: Vec::new(),
            peer_check: None,
            promotion_tag: None,
        }
    }
}

/// Bytes of a token file at most (a token is 68 bytes; the rest may be whitespace).
pub const TOKEN_FILE_BYTES_MAX: u64 = 4_096;

/// The token in `path`: its content without surrounding whitespace, at most
/// `TOKEN_FILE_BYTES_MAX` bytes, not empty.
pub fn read_token_file(path: &std::path::Path) -> Result<String, NetError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|source| NetError::io(path.display().to_string(), source))?;
    let mut text = String::new();
    file.take(TOKEN_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|source| NetError::io(path.display().to_string(), source))?;
    if text.len() as u64 > TOKEN_FILE_BYTES_MAX {
        return Err(NetError::Replication(format!(
            "{}: over {TOKEN_FILE_BYTES_MAX} bytes, not a token file",
            path.display()
        )));
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(NetError::Replication(format!("{}: empty, no token in it", path.display())));
    }
    Ok(token.to_owned())
}

impl FollowOptions {
    /// The token to connect with now: the token file's content when there is one.
    pub fn current_token(&self) -> Result<String, NetError> {
        match &self.token_file {
            Some(path) => read_token_file(path),
            None => Ok(self.token.clone()),
        }
    }
}

/// Where a standby's primary is and how to reach it.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// `host:port` of the primary.
    pub primary: String,
    /// A replication token issued by the primary.
    pub token: String,
    /// A file holding the token instead (`--replication-token-file`), read again at every
    /// connection attempt: a rotated token written there is picked up without a restart.
    /// `token` is then what the file held at start.
    pub token_file: Option<PathBuf>,
    /// PEM of the CA that signed the primary's certificate.
    pub ca_pem: Vec<u8>,
    /// TLS name to check the primary's certificate against (default: the host of `primary`).
    pub server_name: Option<String>,
}

/// The role a server starts in.
#[derive(Clone, Debug)]
pub enum StartRole {
    Primary,
    Standby(FollowOptions),
}

/// Why a standby's server must stop, change its data directory offline and start again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Cut the log after this LSN ([`reservoir_wal::rejoin::rewind`]).
    Rewind { keep_through: u64 },
    /// Install this snapshot file as the only state ([`reservoir_wal::rejoin::install_base_backup`]).
    BaseBackup { snapshot: PathBuf },
    /// Stop the node with this error: a replicated record did not apply, so the engine is not
    /// a state to serve reads from (its log, which holds only what applied before, is intact).
    Stop { why: String },
}

/// Standbys one primary serves at once.
pub const STANDBYS_MAX: usize = 16;
/// Sent chunks remembered per standby for lag (past it two neighbours are merged).
pub const SENT_CHUNKS_TRACKED_MAX: usize = 4_096;
/// How often the lag against the RPO is checked.
pub const LAG_CHECK_INTERVAL_MS: u64 = 1_000;
/// A lag warning about one standby is repeated at most this often.
pub const LAG_WARNING_INTERVAL_MS: u64 = 10_000;
/// The degraded-sync warning is repeated this often while it lasts.
pub const DEGRADED_WARNING_INTERVAL_MS: u64 = 10_000;

/// A connected standby, as its primary sees it.
#[derive(Clone, Debug)]
pub(crate) struct StandbyEntry {
    pub id: u64,
    pub name: String,
    pub address: String,
    pub state: &'static str,
    pub connected_ms: u64,
    pub sent_lsn: u64,
    pub written_lsn: u64,
    pub applied_lsn: u64,
    pub bytes_sent: u64,
    pub records_sent: u64,
    /// Chunks sent and not yet applied, oldest first.
    pub chunks: VecDeque<SentChunk>,
    pub warned_ms: u64,
    /// The generation of the credential store last shipped on this stream, and the highest
    /// one the standby reported durable (never above what was shipped).
    pub credentials_sent: Option<u64>,
    pub credentials_stored: Option<u64>,
}

/// A chunk of WAL shipped to a standby and not yet applied there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SentChunk {
    pub last_lsn: u64,
    pub bytes: u64,
    /// Its first record's times: executed (the record's timestamp) and durable here.
    pub first: RecordTimes,
}

/// The lag of one standby.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    /// Records durable here and not applied there.
    pub records: u64,
    pub bytes: u64,
    /// How long ago the oldest record durable here and not applied there became durable
    /// here (PostgreSQL's `replay_lag` counts from the same moment). A standby applies a
    /// message and hands it to its own WAL in one step, so a promotion keeps what it applied:
    /// acknowledged writes of the last `ms` are what losing the primary now would lose.
    /// 0 when nothing is behind.
    pub ms: u64,
    /// The same record's age counted from its execution (its timestamp): `ms` plus the time
    /// it waited for its group commit here.
    pub ms_since_execution: u64,
    /// Like `ms`, for the oldest record not yet fsynced there (`flush_lag`): what losing both
    /// the primary and the standby's own machine at once would lose.
    pub flush_ms: u64,
}

impl StandbyEntry {
    /// A chunk went out.
    pub fn sent(&mut self, last_lsn: u64, bytes: u64, first: RecordTimes) {
        // A wall clock stepped back between execution and sync must not make `ms` exceed
        // `ms_since_execution`.
        let first = RecordTimes { durable_ms: first.durable_ms.max(first.timestamp_ms), ..first };
        assert!(last_lsn > self.sent_lsn, "chunks go out in LSN order");
        self.records_sent += last_lsn - self.sent_lsn;
        self.sent_lsn = last_lsn;
        self.bytes_sent += bytes;
        if self.chunks.len() >= SENT_CHUNKS_TRACKED_MAX {
            // Two neighbours become one, keeping the older one's times. Both applied (and not
            // written yet), or both not applied: so each lag still finds its oldest record's
            // times, and the bytes not applied stay exact.
            let applied = self.chunks.partition_point(|chunk| chunk.last_lsn <= self.applied_lsn);
            let older = if applied >= 2 { 0 } else { applied };
            assert!(older + 1 < self.chunks.len(), "SENT_CHUNKS_TRACKED_MAX >= 3");
            let merged = self.chunks.remove(older).expect("held");
            let newer = &mut self.chunks[older];
            newer.bytes += merged.bytes;
            newer.first = merged.first;
        }
        self.chunks.push_back(SentChunk { last_lsn, bytes, first });
    }

    /// The standby reported what it wrote and applied.
    pub fn acknowledged(&mut self, written_lsn: u64, applied_lsn: u64) {
        self.written_lsn = self.written_lsn.max(written_lsn.min(self.sent_lsn));
        self.applied_lsn = self.applied_lsn.max(applied_lsn.min(self.sent_lsn));
        let caught_up = self.caught_up_lsn();
        while self.chunks.front().is_some_and(|chunk| chunk.last_lsn <= caught_up) {
            self.chunks.pop_front();
        }
    }

    /// The standby reported the credential store of `generation` durable. A report past what
    /// this stream shipped is held to it (a standby cannot vouch for a store it never got).
    fn credentials_stored(&mut self, generation: u64) -> Option<u64> {
        let sent = self.credentials_sent?;
        let stored = generation.min(sent);
        self.credentials_stored = Some(self.credentials_stored.map_or(stored, |before| before.max(stored)));
        assert!(self.credentials_stored <= self.credentials_sent);
        self.credentials_stored
    }

    /// Every record up to it is both durable and applied on the standby (it applies a message
    /// before its fsync, so `written` is usually the lower).
    fn caught_up_lsn(&self) -> u64 {
        self.written_lsn.min(self.applied_lsn)
    }

    /// The lag behind `durable_lsn` (the primary's), at `now_ms`: records and bytes durable on
    /// the primary and not applied on the standby, and the age of the oldest of them (and of
    /// the oldest not fsynced there). `times_from` gives the times of the first durable record
    /// not shipped yet (the feed's [`reservoir_wal::feed::Feed::times_from`]); it is called
    /// once at most.
    pub fn lag(&self, durable_lsn: u64, now_ms: u64, times_from: impl FnOnce(u64) -> Option<RecordTimes>) -> Lag {
        let records = durable_lsn.saturating_sub(self.applied_lsn);
        let unsent = durable_lsn.saturating_sub(self.sent_lsn);
        let mean = self.bytes_sent.checked_div(self.records_sent).unwrap_or(128).max(1);
        let bytes = self
            .chunks
            .iter()
            .filter(|chunk| chunk.last_lsn > self.applied_lsn)
            .map(|chunk| chunk.bytes)
            .sum::<u64>()
            .saturating_add(unsent.saturating_mul(mean));
        // The first record not shipped: the feed's times (clamped: a wall clock stepped back
        // between execution and sync must not make `ms` exceed `ms_since_execution`). Not in
        // the feed at all, it was durable before the feed was turned on for this standby:
        // older than its connection, whose time is then a lower bound of its age.
        let unsent_times = (unsent > 0).then(|| {
            times_from(self.sent_lsn + 1)
                .map(|times| RecordTimes { durable_ms: times.durable_ms.max(times.timestamp_ms), ..times })
                .unwrap_or(RecordTimes { timestamp_ms: self.connected_ms, durable_ms: self.connected_ms })
        });
        // The times of the oldest record past `lsn`: the first chunk still holding some (its
        // times clamped when sent), or the first record not sent yet.
        let oldest_after = |lsn: u64| -> Option<RecordTimes> {
            if lsn >= durable_lsn {
                return None;
            }
            match self.chunks.iter().find(|chunk| chunk.last_lsn > lsn) {
                Some(chunk) => Some(chunk.first),
                None => unsent_times,
            }
        };
        let applied = oldest_after(self.applied_lsn);
        let flushed = oldest_after(self.written_lsn);
        let lag = Lag {
            records,
            bytes: if records == 0 { 0 } else { bytes },
            ms: applied.map_or(0, |times| now_ms.saturating_sub(times.durable_ms)),
            ms_since_execution: applied.map_or(0, |times| now_ms.saturating_sub(times.timestamp_ms)),
            flush_ms: flushed.map_or(0, |times| now_ms.saturating_sub(times.durable_ms)),
        };
        assert!(lag.ms <= lag.ms_since_execution, "a record is durable after it is executed");
        assert!(records > 0 || lag.ms == 0, "no age without a record behind");
        // Chunks cover every LSN from the applied one to the sent one (they are dropped only
        // below both acknowledged LSNs, and merged rather than dropped past the cap).
        debug_assert!(records == 0 || applied.is_some(), "an age for every lag");
        lag
    }
}

/// The standbys a primary serves.
#[derive(Default)]
pub(crate) struct Hub {
    pub standbys: Mutex<Vec<StandbyEntry>>,
    pub changed: tokio::sync::Notify,
    next_id: std::sync::atomic::AtomicU64,
}

impl Hub {
    pub fn register(&self, name: String, address: String, next_lsn: u64, now_ms: u64) -> Option<u64> {
        let mut standbys = self.standbys.lock();
        if standbys.len() >= STANDBYS_MAX {
            return None;
        }
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let held = next_lsn.saturating_sub(1);
        standbys.push(StandbyEntry {
            id,
            name,
            address,
            state: "starting",
            connected_ms: now_ms,
            sent_lsn: held,
            // Not `held`: a standby that reconnects without a restart has applied records it
            // has not fsynced yet, and a sync primary must not count them written before its
            // first feedback says so (it comes at once).
            written_lsn: 0,
            applied_lsn: held,
            bytes_sent: 0,
            records_sent: 0,
            chunks: VecDeque::new(),
            warned_ms: 0,
            credentials_sent: None,
            credentials_stored: None,
        });
        Some(id)
    }

    pub fn unregister(&self, id: u64) {
        self.standbys.lock().retain(|entry| entry.id != id);
        self.changed.notify_waiters();
    }

    pub fn update(&self, id: u64, change: impl FnOnce(&mut StandbyEntry)) {
        if let Some(entry) = self.standbys.lock().iter_mut().find(|entry| entry.id == id) {
            change(entry);
        }
        self.changed.notify_waiters();
    }

    /// The highest LSN durable on a connected standby (`None`: no standby streaming).
    pub fn best_written(&self) -> Option<u64> {
        self.standbys.lock().iter().filter(|entry| entry.state == "streaming").map(|entry| entry.written_lsn).max()
    }

    /// Standby `id` reported the credential store of `generation` durable; returns what it
    /// holds (`None`: nothing was shipped to it yet).
    pub fn credentials_stored(&self, id: u64, generation: u64) -> Option<u64> {
        let mut stored = None;
        self.update(id, |entry| stored = entry.credentials_stored(generation));
        stored
    }
}

/// What a standby knows of its primary and itself.
#[derive(Clone, Debug, Default)]
pub(crate) struct Following {
    pub primary: String,
    pub connected: bool,
    pub state: &'static str,
    pub primary_durable_lsn: u64,
    pub primary_now_ms: u64,
    pub last_applied_timestamp_ms: u64,
    /// The primary's clock the last time this standby had applied all the primary had made
    /// durable: every record it lacks was made durable after that.
    pub caught_up_primary_ms: u64,
    pub bytes_received: u64,
    pub records_received: u64,
    pub last_error: Option<String>,
    pub warned_ms: u64,
    /// Streaming sessions accepted by the primary since start (a steady stream stays at 1).
    pub sessions: u64,
}

impl Following {
    /// The standby's lag, given its applied LSN.
    pub fn lag(&self, applied_lsn: u64) -> Lag {
        let records = self.primary_durable_lsn.saturating_sub(applied_lsn);
        if records == 0 {
            return Lag::default();
        }
        let mean = self.bytes_received / self.records_received.max(1);
        let since_last_applied = self.primary_now_ms.saturating_sub(self.last_applied_timestamp_ms);
        // The oldest record missing is no older than the last time it was caught up
        // (regression, review, tenth session: after an idle spell the first write showed the
        // whole idle time, the age of the last record applied).
        let since_caught_up = self.primary_now_ms.saturating_sub(self.caught_up_primary_ms);
        Lag {
            records,
            bytes: records.saturating_mul(mean.max(1)),
            ms: since_last_applied.min(since_caught_up),
            ms_since_execution: since_last_applied,
            flush_ms: 0,
        }
    }

    /// Takes a message from the primary: its durable LSN and clock, and whether this standby
    /// (having applied through `applied_lsn`) is caught up with it.
    pub fn heard(&mut self, durable_lsn: u64, now_ms: u64, applied_lsn: u64) {
        self.primary_durable_lsn = durable_lsn;
        self.primary_now_ms = now_ms;
        if applied_lsn >= durable_lsn {
            self.caught_up_primary_ms = now_ms;
        }
    }
}

/// A node's role and whom it points clients to.
#[derive(Clone, Debug)]
pub(crate) struct NodeState {
    pub role: NodeRole,
    /// The primary's address, for `not_primary` (a standby's primary, or who fenced us).
    pub primary: Option<String>,
    /// The epoch that fenced this node (0: not fenced).
    pub fenced_by: u64,
}

/// The file that keeps a fenced former primary fenced across restarts.
pub(crate) fn fenced_path(data_directory: &std::path::Path) -> PathBuf {
    data_directory.join("FENCED.json")
}

/// The highest epoch this node has been fenced by, kept when it rejoins as a standby (which
/// removes `FENCED.json`): a later promotion of it goes past that epoch even if the node
/// never hears of it again (regression, review, tenth session: the rejoined node forgot it,
/// and a promotion of it while the node that fenced it was down could draw a lower epoch,
/// whose writes were cut when that node came back).
pub(crate) fn epoch_heard_path(data_directory: &std::path::Path) -> PathBuf {
    data_directory.join("EPOCH_HEARD.json")
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct EpochHeardFile {
    pub epoch: u64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct FencedFile {
    pub epoch: u64,
    pub primary: String,
    pub fenced_ms: u64,
}

/// Asks each peer for its role and epoch (a replication handshake, at most
/// `standby::CONNECT_TIMEOUT_MS` each, all at once): the address of a primary of an epoch
/// higher than `own_epoch`, and its epoch, if one answers.
pub(crate) async fn find_newer_primary(
    peers: &[String],
    check: &FollowOptions,
    own_epoch: u64,
) -> Option<(String, u64)> {
    let mut probes = tokio::task::JoinSet::new();
    for peer in peers.iter().take(STANDBYS_MAX) {
        let (peer, check) = (peer.clone(), check.clone());
        probes.spawn(async move {
            let link = standby::connect(&peer, &check).await;
            match link {
                Ok(link) => {
                    link.connection.close(quinn::VarInt::from_u32(0), b"peer check");
                    Ok((peer, link.node, link.epoch))
                }
                Err(error) => Err((peer, error)),
            }
        });
    }
    let mut newest: Option<(String, u64)> = None;
    while let Some(joined) = probes.join_next().await {
        match joined {
            Ok(Ok((peer, NodeRole::Primary, epoch))) if epoch > own_epoch => {
                if newest.as_ref().is_none_or(|(_, held)| epoch > *held) {
                    newest = Some((peer, epoch));
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err((peer, error))) => tracing::info!(%peer, %error, "peer check: no answer"),
            Err(_) => {}
        }
    }
    newest
}

/// How long to wait between two reconnection attempts of a standby, at most.
pub const RECONNECT_WAIT_MS_MAX: u64 = 2_000;

pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((20u64 << attempt.min(7)).min(RECONNECT_WAIT_MS_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(timestamp_ms: u64, durable_ms: u64) -> RecordTimes {
        RecordTimes { timestamp_ms, durable_ms }
    }

    fn check(hub: &Hub, id: u64, durable_lsn: u64, now_ms: u64, unsent: Option<RecordTimes>) -> Lag {
        let standbys = hub.standbys.lock();
        let entry = standbys.iter().find(|entry| entry.id == id).expect("registered");
        entry.lag(durable_lsn, now_ms, |_| unsent)
    }

    /// Regression (found by audit): the standby's lag in bytes multiplied the records behind
    /// (from the primary's durable LSN, as the primary says it) by the mean record size
    /// unchecked, which overflows (a panic in debug builds) for an LSN far ahead.
    #[test]
    fn a_standby_lag_far_behind_saturates_instead_of_overflowing() {
        let following = Following {
            primary_durable_lsn: u64::MAX,
            bytes_received: 4 << 20,
            records_received: 1,
            primary_now_ms: 5_000,
            last_applied_timestamp_ms: 1_000,
            ..Following::default()
        };
        let lag = following.lag(1);
        assert_eq!((lag.records, lag.bytes, lag.ms), (u64::MAX - 1, u64::MAX, 4_000));
    }

    #[test]
    fn lag_counts_from_when_the_oldest_record_behind_became_durable() {
        let hub = Hub::default();
        let id = hub.register("standby".into(), "127.0.0.1:1".into(), 1, 0).expect("room");
        assert_eq!(check(&hub, id, 0, 1_000, None), Lag::default(), "nothing durable, nothing behind");
        // Records 1..=10 executed at 100, durable at 104; 11..=20 executed at 110, durable at 113.
        hub.update(id, |entry| entry.sent(10, 1_000, times(100, 104)));
        hub.update(id, |entry| entry.sent(20, 1_000, times(110, 113)));
        let lag = check(&hub, id, 20, 120, None);
        assert_eq!(lag, Lag { records: 20, bytes: 2_000, ms: 16, ms_since_execution: 20, flush_ms: 16 });
        // The first chunk applied, not yet fsynced: `ms` moves on, `flush_ms` does not.
        hub.update(id, |entry| entry.acknowledged(0, 10));
        let lag = check(&hub, id, 20, 120, None);
        assert_eq!(lag, Lag { records: 10, bytes: 1_000, ms: 7, ms_since_execution: 10, flush_ms: 16 });
        // Both chunks applied and fsynced; records 21..=25 durable at 118 and not sent yet.
        hub.update(id, |entry| entry.acknowledged(20, 20));
        assert!(hub.standbys.lock()[0].chunks.is_empty(), "chunks caught up are forgotten");
        let lag = check(&hub, id, 25, 121, Some(times(117, 118)));
        assert_eq!((lag.records, lag.ms, lag.ms_since_execution, lag.flush_ms), (5, 3, 4, 3));
        assert_eq!(check(&hub, id, 20, 121, None), Lag::default(), "caught up");
    }

    /// Regression (a known limit since review, closed in the eleventh session): a standby's
    /// own lag was the age of the last record it applied, so after an idle spell the first
    /// write it had not yet applied showed the whole idle time. What it lacks was made durable
    /// after it was last caught up, so the lag is never more than the time since.
    #[test]
    fn a_standbys_own_lag_after_an_idle_spell_is_not_the_idle_time() {
        let mut following = Following::default();
        following.heard(100, 1_000, 100);
        following.last_applied_timestamp_ms = 990;
        // An hour idle, caught up all the while.
        following.heard(100, 3_601_000, 100);
        assert_eq!(following.lag(100), Lag::default());
        // A write: heard of, not yet applied.
        following.heard(101, 3_601_040, 100);
        let lag = following.lag(100);
        assert_eq!((lag.records, lag.ms), (1, 40), "{lag:?}");
        assert_eq!(lag.ms_since_execution, 3_600_050, "the last record applied is that old");
        // Behind for a while: the lag grows from when it was last caught up.
        following.heard(150, 3_602_000, 120);
        assert_eq!(following.lag(120).ms, 1_000);
    }

    #[test]
    fn a_standby_vouches_only_for_credential_stores_shipped_to_it() {
        let hub = Hub::default();
        let id = hub.register("standby".into(), "127.0.0.1:1".into(), 1, 0).expect("room");
        assert_eq!(hub.credentials_stored(id, 7), None, "nothing shipped yet");
        hub.update(id, |entry| entry.credentials_sent = Some(3));
        assert_eq!(hub.credentials_stored(id, 9), Some(3), "held to what was shipped");
        hub.update(id, |entry| entry.credentials_sent = Some(5));
        assert_eq!(hub.credentials_stored(id, 2), Some(3), "never goes back");
        assert_eq!(hub.credentials_stored(id, 5), Some(5));
    }

    #[test]
    fn lag_keeps_the_oldest_times_when_chunks_are_merged_and_clocks_step_back() {
        let hub = Hub::default();
        let id = hub.register("standby".into(), "127.0.0.1:1".into(), 1, 0).expect("room");
        // Durable "before" executed (the wall clock stepped back): counted as executed, so
        // `ms` never exceeds `ms_since_execution` (the lag asserts it).
        hub.update(id, |entry| entry.sent(1, 10, times(50, 40)));
        for lsn in 2..=(SENT_CHUNKS_TRACKED_MAX as u64 + 10) {
            hub.update(id, |entry| entry.sent(lsn, 10, times(50 + lsn, 50 + lsn)));
        }
        let standbys = hub.standbys.lock();
        let entry = &standbys[0];
        assert_eq!(entry.chunks.len(), SENT_CHUNKS_TRACKED_MAX, "bounded");
        let lag = entry.lag(entry.sent_lsn, 1_000, |_| None);
        assert_eq!(lag.ms, 950, "the first record's age survives the merges");
        assert_eq!(lag.ms_since_execution, 950);
        assert_eq!(lag.bytes, 10 * entry.sent_lsn, "merged chunks keep their bytes");
        // The same for a record not shipped yet whose times the feed gives stepped back.
        drop(standbys);
        let fresh = hub.register("second".into(), "127.0.0.1:2".into(), 1, 0).expect("room");
        let lag = check(&hub, fresh, 3, 1_000, Some(times(60, 20)));
        assert_eq!((lag.ms, lag.ms_since_execution), (940, 940));
    }

    #[test]
    fn merging_chunks_keeps_the_applied_lag_exact_while_the_standby_has_not_fsynced() {
        let hub = Hub::default();
        let id = hub.register("standby".into(), "127.0.0.1:1".into(), 1, 0).expect("room");
        // One chunk a record, each durable at its LSN (ms).
        let count = SENT_CHUNKS_TRACKED_MAX as u64;
        for lsn in 1..=count {
            hub.update(id, |entry| entry.sent(lsn, 10, times(lsn, lsn)));
        }
        // The first 100 applied, none fsynced: no chunk can be forgotten; then more are sent.
        hub.update(id, |entry| entry.acknowledged(0, 100));
        for lsn in count + 1..=count + 200 {
            hub.update(id, |entry| entry.sent(lsn, 10, times(lsn, lsn)));
        }
        let standbys = hub.standbys.lock();
        let entry = &standbys[0];
        assert_eq!(entry.chunks.len(), SENT_CHUNKS_TRACKED_MAX, "bounded");
        let now = 10_000;
        let lag = entry.lag(entry.sent_lsn, now, |_| None);
        assert_eq!(lag.ms, now - 101, "the oldest record not applied, exactly");
        assert_eq!(lag.flush_ms, now - 1, "the oldest record not fsynced, exactly");
        assert_eq!(lag.bytes, 10 * (entry.sent_lsn - 100), "bytes of what is not applied, exactly");
    }

    #[test]
    fn a_reconnected_standby_counts_as_written_only_once_it_says_so() {
        // Regression: `register` took the standby's next LSN for its written LSN too, but a
        // standby that reconnects without a restart has applied records it has not fsynced
        // yet; a sync primary then acknowledged them before they were durable there.
        let hub = Hub::default();
        let id = hub.register("standby".into(), "127.0.0.1:1".into(), 101, 5_000).expect("room");
        hub.update(id, |entry| entry.state = "streaming");
        assert_eq!(hub.best_written(), Some(0), "nothing counts as written before feedback");
        hub.update(id, |entry| entry.acknowledged(90, 100));
        assert_eq!(hub.best_written(), Some(90));
        assert_eq!(hub.standbys.lock()[0].applied_lsn, 100);
    }

    #[test]
    fn records_durable_before_the_feed_was_on_age_at_least_from_the_connection() {
        // The feed holds nothing for them (it is turned on when a standby connects): the lag
        // is not 0 but at least the time since the connection.
        let hub = Hub::default();
        let id = hub.register("standby".into(), "127.0.0.1:1".into(), 1, 5_000).expect("room");
        let lag = check(&hub, id, 40, 7_500, None);
        assert_eq!((lag.records, lag.ms, lag.ms_since_execution), (40, 2_500, 2_500));
    }
}
