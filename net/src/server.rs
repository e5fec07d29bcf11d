//! The QUIC server: quinn connections in, the engine and the WAL's group commit behind them.
//!
//! The request path (docs/ARCHITECTURE.md, "The request path"): a stream task reads frames,
//! decodes a request, checks the credential and the tenant's rate, runs every operation on the
//! engine right there (microseconds, no lock held across an await), hands the records to the
//! WAL writer and queues the encoded reply behind the LSN it needs. One thread turns the WAL's
//! durable LSN into a `watch` channel; each stream writes its queued replies as that LSN passes
//! them. Group commit comes from many streams and connections submitting at once: one
//! fdatasync acknowledges all of them.
//!
//! Limits: frames (`FRAME_BYTES_MAX`, checked before buffering), operations per request,
//! requests in flight per connection (a semaphore), streams per connection (quinn), replies
//! queued per stream (reading stops while full, so a client that does not read its replies
//! stops being read, and QUIC flow control pushes back on it), a per-tenant rate with burst.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::Clock as _;
use parking_lot::RwLock;
use reservoir_engine::{Command, Config, Engine, Lsn, Name, Record, ResultCode, TenantId, EXPIRE_BATCH_MAX};
use reservoir_wal::{Durability, DurableLsnReader, SnapshotPolicy, Snapshotter, Wal, WalOptions, WalProgress};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::credentials::{Credentials, Grant, TokenDigest};
use crate::message::{ClientFrame, ErrorFrame, Hello, HelloReply, NodeRole, Request, Role, ServerFrame, ServerLimits};
use crate::operation::{
    run_query, Action, AdminAction, Operation, OperationKind, OperationResult, Service, TenantEntry,
    QUERY_ITEMS_PER_REQUEST_MAX,
};
use crate::replication::{
    FencedFile, Following, Hub, NodeState, ReplicationMode, ReplicationOptions, Restart, StartRole,
    DEGRADED_WARNING_INTERVAL_MS, LAG_CHECK_INTERVAL_MS, LAG_WARNING_INTERVAL_MS,
};
use crate::tls::CertificateFiles;
use crate::wire::{
    ProtocolErrorCode, WireError, ERROR_MESSAGE_BYTES_MAX, FRAME_BYTES_MAX, HELLO_FRAME_BYTES_MAX,
    REQUESTS_IN_FLIGHT_MAX, TENANTS_PER_LIST_MAX,
};
use crate::{decode_client_frame, encode_reply, negotiate_version, FrameDecoder, NetError};

/// Replies a stream holds, encoded, waiting for the durable LSN they need. While full, the
/// stream is not read.
pub const REPLIES_QUEUED_PER_STREAM_MAX: usize = 1_024;
/// Bytes of encoded replies a stream holds waiting for durability at most (reading stops while
/// over it): with replies of up to a full page each, the count above alone bounded a stream at
/// ~2 GB.
pub const REPLY_BYTES_QUEUED_PER_STREAM_MAX: usize = 8 << 20;
/// Bytes of encoded replies one connection holds at most over all its streams, queued for
/// durability or being written (reading stops on every stream of it while over): the
/// per-stream cap alone let a connection that never reads hold 64 streams x 8 MiB.
pub const REPLY_BYTES_HELD_PER_CONNECTION_MAX: usize = 32 << 20;
/// Bytes of encoded replies one tenant's connections hold at most together (reading stops
/// on all of them while over): the per-connection cap times `connections_per_tenant_max`
/// would still be 32 GB.
pub const REPLY_BYTES_HELD_PER_TENANT_MAX: usize = 256 << 20;
/// Bytes of encoded replies the server holds at most over all its connections (reading stops
/// everywhere while over): what memory unread replies can take, whoever sends the requests.
pub const REPLY_BYTES_HELD_MAX: usize = 2 << 30;
/// How soon a stream stopped by the replies others hold (its connection's, its tenant's, the
/// server's) first looks again whether it may read; it waits twice as long each time it is
/// still stopped, up to [`REPLY_BYTES_RECHECK_MS_MAX`] (64,000 stopped streams of one tenant
/// then wake 64,000 times a second, not millions).
const REPLY_BYTES_RECHECK_MS: u64 = 10;
const REPLY_BYTES_RECHECK_MS_MAX: u64 = 1_000;
/// Frames one connection may send that are refused as a client's mistake (an unknown frame
/// type or operation, too many operations, `forbidden`) before it is closed with
/// `malformed_frame`: each costs a decode and a reply, and none reaches the rate limiter, so a
/// connection sending nothing else could spend a worker for free (review). A correct client
/// sends none; the flow-control refusals (`rate_limited`, `too_many_in_flight`,
/// `not_primary`, `shutting_down`) are not counted.
pub const REFUSED_FRAMES_PER_CONNECTION_MAX: u32 = 64;
/// Bytes read from a stream at once.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// A connection must send its `Hello` within this long.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// How often the server expires reservations past their deadline.
pub const EXPIRE_INTERVAL_MS: u64 = 100;
/// How often the server forgets idempotency memory past its retention.
pub const FORGET_INTERVAL_MS: u64 = 60_000;
/// How often the server checks whether the idempotency memory is past 90% of its limit (and
/// then forgets the oldest, see `Engine::set_idempotency_entries_max`).
pub const FORGET_CHECK_INTERVAL_MS: u64 = 1_000;
/// How often, at most, the server logs that the idempotency memory is full.
pub const MEMORY_FULL_WARNING_INTERVAL_MS: u64 = 10_000;
/// Expiry commands one timer tick runs at most (each releases up to `EXPIRE_BATCH_MAX`).
pub const EXPIRE_COMMANDS_PER_TICK_MAX: usize = 16;
/// How long a graceful shutdown waits for requests in flight to be answered.
pub const SHUTDOWN_WAIT_MS_MAX: u64 = 10_000;
/// How long a graceful shutdown keeps its connections open after the requests in flight are
/// answered, so that every stream's `Goodbye` reaches its client before the close.
pub const GOODBYE_GRACE_MS: u64 = 50;
/// Connections served at once; more are refused at the QUIC handshake.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Connections one tenant may hold open by default ([`ServerOptions::connections_per_tenant_max`]):
/// a tenth of [`CONNECTIONS_MAX`], so that one tenant's idle connections leave the others room.
pub const CONNECTIONS_PER_TENANT_MAX_DEFAULT: usize = CONNECTIONS_MAX / 10;
/// The longest `retry_after_ms` the server asks for.
pub const RETRY_AFTER_MS_MAX: u32 = 60_000;
/// Tenants with a rate limiter in memory at once (one per tenant that has connected).
pub const RATE_LIMITERS_MAX: usize = 100_000;

/// A tenant's rate: operations per second, and how many may come at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub operations_per_second: u32,
    pub burst: u32,
}

impl Default for Rate {
    /// 500,000 operations/s with bursts of 100,000: above what one tenant reaches on the
    /// 2-core reference machine, so the limit bites only a flood (docs/benchmarks.md, W3).
    fn default() -> Rate {
        Rate { operations_per_second: 500_000, burst: 100_000 }
    }
}

/// Everything `reservoir serve` is configured with.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub data_directory: PathBuf,
    pub durability: Durability,
    /// The operator's certificate chain and key; `None` generates them in `DATA_DIR/tls/`.
    pub certificates: Option<CertificateFiles>,
    pub rate_default: Rate,
    pub rate_per_tenant: HashMap<String, Rate>,
    pub snapshot: SnapshotPolicy,
    pub engine: Config,
    pub segment_bytes: u64,
    /// Primary (the default) or a standby of a given primary.
    pub role: StartRole,
    pub replication: ReplicationOptions,
    /// Reservations, and operation ids, remembered at most (`Engine::set_idempotency_entries_max`).
    pub idempotency_entries_max: usize,
    /// Connections one tenant's tokens hold open at once, at most (of `CONNECTIONS_MAX`).
    pub connections_per_tenant_max: usize,
    /// Items one tenant may have (`Engine::set_items_per_tenant_max`).
    pub items_per_tenant_max: u32,
    /// A failpoint for tests: recovery holds the data directory this much longer (0: none),
    /// as a long replay would (`reservoir serve` sets it from
    /// `RESERVOIR_FAILPOINT_RECOVERY_PAUSE_MS`).
    pub failpoint_recovery_pause_ms: u64,
    /// A failpoint for tests: a standby's restart to change its data directory (a rewind, a
    /// base backup) pauses this long between stopping and changing it (0: none; `reservoir
    /// serve` sets it from `RESERVOIR_FAILPOINT_RESTART_PAUSE_MS`).
    pub failpoint_restart_pause_ms: u64,
    /// Set once the data directory is recovered, before anything else happens in it (first-start
    /// tokens, serving): until then a stop may simply end the process (`reservoir serve` does).
    pub recovered: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl ServerOptions {
    /// The embedded defaults: `./reservoir-data`, `127.0.0.1:7878`, durable.
    pub fn new(data_directory: PathBuf) -> ServerOptions {
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            data_directory,
            durability: Durability::Durable,
            certificates: None,
            rate_default: Rate::default(),
            rate_per_tenant: HashMap::new(),
            snapshot: SnapshotPolicy::default(),
            engine: Config::default(),
            segment_bytes: WalOptions::default().segment_bytes,
            role: StartRole::Primary,
            replication: ReplicationOptions::default(),
            idempotency_entries_max: reservoir_engine::IDEMPOTENCY_ENTRIES_MAX_DEFAULT,
            connections_per_tenant_max: CONNECTIONS_PER_TENANT_MAX_DEFAULT,
            items_per_tenant_max: reservoir_engine::ITEMS_PER_TENANT_MAX_DEFAULT,
            failpoint_recovery_pause_ms: 0,
            failpoint_restart_pause_ms: 0,
            recovered: None,
        }
    }
}

/// Tokens made on a data directory's first start, shown once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstStart {
    pub admin_token: String,
    pub demo_tenant: String,
    pub demo_token: String,
    /// For standbys (`reservoir serve --role standby --replication-token ...`).
    pub replication_token: String,
}

/// The name of the tenant a new data directory starts with.
pub const DEMO_TENANT: &str = "demo";

/// Counters of what the server did (a place for metrics to read from).
#[derive(Debug, Default)]
pub struct ServerCounters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub operations: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub rate_limited: AtomicU64,
    pub in_flight: AtomicU64,
    /// Bytes of encoded replies held, queued for durability or being written, at most
    /// [`REPLY_BYTES_HELD_MAX`] (plus a reply per worker thread).
    pub reply_bytes_held: AtomicU64,
}

/// What the request path shares.
pub(crate) struct Core {
    pub(crate) engine: Engine,
    pub(crate) wal: Wal,
    pub(crate) snapshotter: Snapshotter,
    pub(crate) credentials: Credentials,
    pub(crate) data_directory: PathBuf,
    /// Mirrors the engine's epoch (the last `EpochChanged` record applied or written).
    pub(crate) epoch: AtomicU64,
    /// The highest epoch another node has named to this one (0: none): a promotion goes past
    /// it, as a Raft candidate goes past every term it has seen.
    pub(crate) epoch_heard: AtomicU64,
    /// Held while a fence is checked, recorded and set, so that the highest one wins.
    pub(crate) fence_lock: parking_lot::Mutex<()>,
    pub(crate) node: RwLock<NodeState>,
    /// Changed whenever `node` changes.
    pub(crate) node_changed: tokio::sync::Notify,
    /// What may be acknowledged: the local durable LSN, or in `sync` mode the lower of it and
    /// a standby's.
    pub(crate) durable: watch::Receiver<Lsn>,
    /// The local WAL's durable LSN (what a primary ships).
    pub(crate) local_durable: watch::Receiver<Lsn>,
    /// The local WAL's acknowledgeable LSN: `local_durable`, or ahead of it in `relaxed` mode.
    pub(crate) local_acknowledgeable: watch::Receiver<Lsn>,
    pub(crate) hub: Hub,
    pub(crate) following: parking_lot::Mutex<Following>,
    /// Held while a standby applies a message's records and while a promotion switches roles,
    /// so that no LSN is both applied and handed out.
    pub(crate) apply_lock: parking_lot::Mutex<()>,
    pub(crate) replication: ReplicationOptions,
    pub(crate) start_role: StartRole,
    /// This node's address as others reach it.
    pub(crate) advertise: String,
    /// Whether the data directory had a log or snapshot when opened (else a standby needs a
    /// base backup).
    pub(crate) history_known: bool,
    pub(crate) sync_degraded: AtomicBool,
    pub(crate) restart: parking_lot::Mutex<Option<Restart>>,
    pub(crate) restart_notify: tokio::sync::Notify,
    rate_default: Rate,
    rate_per_tenant: HashMap<String, Rate>,
    limiters: RwLock<HashMap<String, Arc<governor::DefaultDirectRateLimiter>>>,
    /// Open connections per tenant (an entry only while one is open).
    /// Each tenant's open connections, and the reply bytes they hold together.
    tenant_connections: parking_lot::Mutex<HashMap<TenantId, (usize, Arc<AtomicUsize>)>>,
    connections_per_tenant_max: usize,
    shutting_down: AtomicBool,
    /// Set once, when a graceful shutdown starts: every stream then sends `Goodbye`.
    goodbye: watch::Sender<bool>,
    pub(crate) counters: ServerCounters,
}

impl Core {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn role(&self) -> NodeRole {
        self.node.read().role
    }

    pub(crate) fn primary_address(&self) -> Option<String> {
        self.node.read().primary.clone()
    }

    pub(crate) fn set_node(&self, role: NodeRole, primary: Option<String>) {
        *self.node.write() = NodeState { role, primary, fenced_by: 0 };
        self.node_changed.notify_waiters();
    }

    /// A node of a higher epoch exists: stop taking writes, for good (until this node rejoins
    /// as a standby), and say who the primary is.
    pub(crate) fn fence(&self, epoch: u64, primary: Option<String>) {
        let _fencing = self.fence_lock.lock();
        self.hear_epoch(epoch);
        {
            let node = self.node.read();
            // A fence keeps the highest epoch it has heard of (and that epoch's primary).
            if node.role == NodeRole::Standby || (node.role == NodeRole::Fenced && epoch <= node.fenced_by) {
                return;
            }
        }
        tracing::warn!(
            epoch,
            own_epoch = self.epoch(),
            primary = primary.as_deref().unwrap_or("unknown"),
            "a higher epoch exists: this node is fenced and refuses writes; rejoin it with \
             `reservoir serve --role standby --primary NEW_PRIMARY`"
        );
        let file = FencedFile { epoch, primary: primary.clone().unwrap_or_default(), fenced_ms: now_ms() };
        let path = crate::replication::fenced_path(&self.data_directory);
        if let Err(error) = write_synced(&path, &serde_json::to_vec_pretty(&file).expect("serializable")) {
            tracing::error!(%error, "cannot record the fence in {}", path.display());
        }
        *self.node.write() = NodeState { role: NodeRole::Fenced, primary, fenced_by: epoch };
        self.node_changed.notify_waiters();
    }

    /// Notes an epoch another node named (a bogus one past `EPOCH_MAX` is ignored).
    pub(crate) fn hear_epoch(&self, epoch: u64) {
        if epoch <= reservoir_engine::epoch::EPOCH_MAX {
            self.epoch_heard.fetch_max(epoch, Ordering::AcqRel);
        }
    }

    /// The highest epoch this node knows of, and the address of its primary if known: its own
    /// epoch (and address) while it leads it, else the epoch that fenced it.
    pub(crate) fn highest_epoch(&self) -> (u64, String) {
        let node = self.node.read();
        let own = self.epoch();
        match node.role {
            NodeRole::Primary => (own, self.advertise.clone()),
            NodeRole::Fenced if node.fenced_by > own => (node.fenced_by, node.primary.clone().unwrap_or_default()),
            NodeRole::Fenced | NodeRole::Standby => (own, node.primary.clone().unwrap_or_default()),
        }
    }

    /// Whether a restart (or a stop) was requested and not yet carried out.
    pub(crate) fn restart_pending(&self) -> bool {
        self.restart.lock().is_some()
    }

    pub(crate) fn request_restart(&self, restart: Restart) {
        *self.restart.lock() = Some(restart);
        self.restart_notify.notify_waiters();
        self.restart_notify.notify_one();
    }
}

/// The epoch kept in `EPOCH_HEARD.json` (0 without the file).
fn read_epoch_heard(path: &std::path::Path) -> Result<u64, NetError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<crate::replication::EpochHeardFile>(&bytes)
            .ok()
            .map(|file| file.epoch)
            .filter(|&epoch| epoch <= reservoir_engine::epoch::EPOCH_MAX)
            .ok_or_else(|| NetError::Config(format!("{}: not an epoch this build can reach", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(NetError::io(path.display().to_string(), source)),
    }
}

/// Writes `bytes` to `path` durably (temporary file, fsync, rename, directory fsync).
pub(crate) fn write_synced(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(path.parent().expect("a file in a directory"))?.sync_all()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// A running server.
pub struct ServerHandle {
    local_addr: SocketAddr,
    first_start: Option<FirstStart>,
    core: Arc<Core>,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    notifier: Option<std::thread::JoinHandle<()>>,
    stop_notifier: Arc<AtomicBool>,
    recovered_lsn: Lsn,
}

/// Opens (recovering) the data directory, makes first-start credentials and certificates,
/// binds the QUIC endpoint and starts serving. Call within a tokio runtime.
pub async fn start(options: ServerOptions) -> Result<ServerHandle, NetError> {
    // A standby's feedback says what it wrote as on disk, and a `sync` primary acknowledges
    // on it: with no fsync that is a lie (regression, review, tenth session).
    if matches!(options.role, StartRole::Standby(_)) && options.durability == reservoir_wal::Durability::None {
        return Err(NetError::Config(
            "a standby cannot run with durability none: it reports what it wrote as on disk, and a sync \
             primary acknowledges on that; use durable (the default) or relaxed"
                .into(),
        ));
    }
    if let Some(tag) = options.replication.promotion_tag {
        if !(1..=reservoir_engine::epoch::EPOCH_TAG_MAX).contains(&tag) {
            let max = reservoir_engine::epoch::EPOCH_TAG_MAX;
            return Err(NetError::Config(format!("promotion tag {tag} is not in 1..={max}")));
        }
    }
    let directory = options.data_directory.clone();
    std::fs::create_dir_all(&directory).map_err(|source| NetError::io(directory.display().to_string(), source))?;
    let wal_options = WalOptions { durability: options.durability, segment_bytes: options.segment_bytes, epoch: 1 };
    let opened = tokio::task::block_in_place(|| {
        let opened = reservoir_wal::open_data_directory(&directory, options.engine.clone(), wal_options, |lsn| {
            tracing::info!(lsn = lsn.0, "recovery in progress");
        });
        if options.failpoint_recovery_pause_ms > 0 {
            tracing::warn!(pause_ms = options.failpoint_recovery_pause_ms, "failpoint: recovery paused");
            std::thread::sleep(Duration::from_millis(options.failpoint_recovery_pause_ms));
        }
        opened
    })?;
    if let Some(recovered) = &options.recovered {
        recovered.store(true, Ordering::Release);
    }
    for (covers, why) in &opened.snapshots_skipped {
        tracing::warn!(
            covers_lsn = covers.0,
            why = %why,
            "a snapshot did not load: recovered from an older snapshot or the log instead"
        );
    }
    if let Some(kept_through) = opened.rewind_finished {
        tracing::warn!(
            kept_through = kept_through.0,
            "finished a rewind that a crash cut short: the log now ends at LSN {} (the cut records are under rewound/)",
            kept_through.0
        );
    }
    tracing::info!(
        records = opened.recovery.records_replayed,
        seconds = opened.recovery.seconds,
        snapshot = ?opened.snapshot,
        "recovered {}",
        directory.display()
    );
    let recovered_lsn = Lsn(opened.engine.next_lsn().0 - 1);
    let history_known = opened.recovery.scan.position.history.is_some();
    // Bound before a first start makes its tokens: a port in use must not cost the operator
    // tokens that are stored but never shown (regression: the retry of a first start found
    // credentials and printed none). After the data directory's lock, so a second server on
    // one directory is told that first.
    let socket = std::net::UdpSocket::bind(options.listen)
        .map_err(|source| NetError::io(format!("listen on {}", options.listen), source))?;
    let credentials = Credentials::open(&directory)?;
    let is_standby = matches!(options.role, StartRole::Standby(_));
    // A standby's credentials come from its primary; it writes nothing of its own.
    let first_start = if credentials.is_empty() && !is_standby {
        Some(bootstrap(&opened.engine, &opened.wal, &credentials)?)
    } else {
        None
    };
    let fenced_path = crate::replication::fenced_path(&directory);
    let epoch_heard_path = crate::replication::epoch_heard_path(&directory);
    let node = match &options.role {
        StartRole::Standby(follow) => {
            // The operator rejoins this node as a standby: a fence no longer applies, but the
            // epoch that fenced it is kept (synced first) for a later promotion of it.
            if let Ok(bytes) = std::fs::read(&fenced_path) {
                let fenced: FencedFile = serde_json::from_slice(&bytes)
                    .map_err(|error| NetError::Config(format!("{}: {error}", fenced_path.display())))?;
                let heard = read_epoch_heard(&epoch_heard_path)?;
                if fenced.epoch > heard {
                    let file = crate::replication::EpochHeardFile { epoch: fenced.epoch };
                    write_synced(&epoch_heard_path, &serde_json::to_vec_pretty(&file).expect("serializable"))
                        .map_err(|source| NetError::io(epoch_heard_path.display().to_string(), source))?;
                }
                std::fs::remove_file(&fenced_path)
                    .map_err(|source| NetError::io(fenced_path.display().to_string(), source))?;
            }
            NodeState { role: NodeRole::Standby, primary: Some(follow.primary.clone()), fenced_by: 0 }
        }
        StartRole::Primary => match std::fs::read(&fenced_path) {
            Ok(bytes) => {
                let fenced: FencedFile = serde_json::from_slice(&bytes)
                    .map_err(|error| NetError::Config(format!("{}: {error}", fenced_path.display())))?;
                tracing::warn!(
                    epoch = fenced.epoch,
                    primary = %fenced.primary,
                    "this node was fenced by a promotion and refuses writes; rejoin it with \
                     `reservoir serve --role standby --primary {}`",
                    fenced.primary
                );
                NodeState {
                    role: NodeRole::Fenced,
                    primary: Some(fenced.primary).filter(|p| !p.is_empty()),
                    fenced_by: fenced.epoch,
                }
            }
            Err(_) => NodeState { role: NodeRole::Primary, primary: None, fenced_by: 0 },
        },
    };
    // A primary that did not see a failover (down while a standby was promoted) asks its
    // peers before it takes a write.
    let node = match (&node.role, &options.replication.peer_check) {
        (NodeRole::Primary, Some(check)) if !options.replication.peers.is_empty() => {
            let own_epoch = opened.engine.epoch();
            match crate::replication::find_newer_primary(&options.replication.peers, check, own_epoch).await {
                Some((primary, epoch)) => {
                    tracing::warn!(
                        %primary,
                        epoch,
                        own_epoch,
                        "a peer is the primary of a newer epoch: starting fenced; rejoin with \
                         `reservoir serve --role standby --primary {primary}`"
                    );
                    let file = FencedFile { epoch, primary: primary.clone(), fenced_ms: now_ms() };
                    write_synced(&fenced_path, &serde_json::to_vec_pretty(&file).expect("serializable"))
                        .map_err(|source| NetError::io(fenced_path.display().to_string(), source))?;
                    NodeState { role: NodeRole::Fenced, primary: Some(primary), fenced_by: epoch }
                }
                None => node,
            }
        }
        _ => node,
    };
    let certificates = match &options.certificates {
        Some(files) => files.clone(),
        None => crate::tls::ensure_generated(&directory, &[options.listen.ip().to_string()])?,
    };
    let server_config = crate::tls::server_config(&certificates)?;
    let runtime = quinn::default_runtime().ok_or_else(|| NetError::Shutdown("no async runtime".into()))?;
    let endpoint_config = crate::tls::endpoint_config(&directory)?;
    let endpoint = quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
        .map_err(|source| NetError::io(format!("listen on {}", options.listen), source))?;
    let local_addr = endpoint.local_addr().map_err(|source| NetError::io("the bound address", source))?;

    let (durable_sender, durable) = watch::channel(opened.wal.durable_lsn());
    let (local_sender, local_durable) = watch::channel(opened.wal.durable_lsn());
    let (acknowledgeable_sender, local_acknowledgeable) = watch::channel(opened.wal.acknowledgeable_lsn());
    let stop_notifier = Arc::new(AtomicBool::new(false));
    let notifier = {
        let reader = opened.wal.durable_lsn_reader();
        let stop = stop_notifier.clone();
        std::thread::Builder::new()
            .name("durable-notifier".into())
            .spawn(move || notify_durable(&reader, &local_sender, &acknowledgeable_sender, &stop))
            .map_err(|source| NetError::io("start the durability notifier", source))?
    };
    let snapshotter = {
        let reader = opened.wal.durable_lsn_reader();
        Snapshotter::start(
            directory.clone(),
            options.engine.clone(),
            options.snapshot.clone(),
            opened.snapshot.unwrap_or(Lsn(0)),
            move || reader.durable_lsn(),
        )?
    };
    let advertise = options.replication.advertise.clone().unwrap_or_else(|| local_addr.to_string());
    let following = match &options.role {
        StartRole::Standby(follow) => {
            Following { primary: follow.primary.clone(), state: "connecting", ..Following::default() }
        }
        StartRole::Primary => Following::default(),
    };
    opened.engine.set_idempotency_entries_max(options.idempotency_entries_max.max(options.engine.id_shards));
    opened.engine.set_items_per_tenant_max(options.items_per_tenant_max.max(1));
    let core = Arc::new(Core {
        epoch: AtomicU64::new(opened.engine.epoch()),
        epoch_heard: AtomicU64::new(node.fenced_by.max(read_epoch_heard(&epoch_heard_path)?)),
        fence_lock: parking_lot::Mutex::new(()),
        engine: opened.engine,
        wal: opened.wal,
        snapshotter,
        credentials,
        data_directory: directory.clone(),
        node: RwLock::new(node),
        node_changed: tokio::sync::Notify::new(),
        durable,
        local_durable,
        local_acknowledgeable,
        hub: Hub::default(),
        following: parking_lot::Mutex::new(following),
        apply_lock: parking_lot::Mutex::new(()),
        replication: options.replication.clone(),
        start_role: options.role.clone(),
        advertise,
        history_known,
        sync_degraded: AtomicBool::new(false),
        restart: parking_lot::Mutex::new(None),
        restart_notify: tokio::sync::Notify::new(),
        rate_default: options.rate_default,
        rate_per_tenant: options.rate_per_tenant.clone(),
        limiters: RwLock::new(HashMap::new()),
        tenant_connections: parking_lot::Mutex::new(HashMap::new()),
        connections_per_tenant_max: options.connections_per_tenant_max.clamp(1, CONNECTIONS_MAX),
        shutting_down: AtomicBool::new(false),
        goodbye: watch::Sender::new(false),
        counters: ServerCounters::default(),
    });
    let mut tasks = vec![
        tokio::spawn(accept_loop(core.clone(), endpoint.clone())),
        tokio::spawn(timers(core.clone())),
        tokio::spawn(acknowledge(core.clone(), durable_sender)),
        tokio::spawn(watch_lag(core.clone())),
    ];
    if let StartRole::Standby(follow) = &options.role {
        tasks.push(tokio::spawn(crate::replication::standby::follow(core.clone(), follow.clone())));
    }
    tracing::info!(%local_addr, "serving QUIC (ALPN reservoir/1)");
    Ok(ServerHandle {
        local_addr,
        first_start,
        core,
        endpoint,
        tasks,
        notifier: Some(notifier),
        stop_notifier,
        recovered_lsn,
    })
}

/// A new data directory's tenant and tokens: the `demo` tenant (created through the WAL
/// like any command), an admin token and a `demo` token.
fn bootstrap(engine: &Engine, wal: &Wal, credentials: &Credentials) -> Result<FirstStart, NetError> {
    if engine.tenant_id(DEMO_TENANT).is_none() {
        let mut records = Vec::new();
        let command = Command::CreateTenant { name: Name::new(DEMO_TENANT).expect("a valid name") };
        let reply = engine.execute(&command, now_ms(), &mut records);
        assert!(reply.code.is_ok(), "a new engine takes the demo tenant: {reply:?}");
        // Synced before the tokens are stored, in every durability mode: a `demo` token whose
        // tenant a power loss took away would never be bootstrapped again (review).
        let highest = records.iter().map(|record| record.lsn).max().expect("a tenant's record");
        wal.append(records)?;
        wal.wait_durable(highest)?;
    }
    let admin_token = credentials.issue(Grant::Admin, false, now_ms())?;
    let demo_token = credentials.issue(Grant::Tenant { tenant: DEMO_TENANT.into() }, false, now_ms())?;
    let replication_token = credentials.issue(Grant::Replication, false, now_ms())?;
    Ok(FirstStart { admin_token, demo_tenant: DEMO_TENANT.into(), demo_token, replication_token })
}

/// Publishes the WAL's durable and acknowledgeable LSNs to the async tasks as they move.
fn notify_durable(
    reader: &DurableLsnReader,
    durable_sender: &watch::Sender<Lsn>,
    acknowledgeable_sender: &watch::Sender<Lsn>,
    stop: &AtomicBool,
) {
    /// How long one wait for the durable LSN lasts before the stop flag is looked at again.
    const NOTIFY_WAIT_MS: u64 = 50;
    let mut seen = WalProgress { acknowledgeable: *acknowledgeable_sender.borrow(), durable: *durable_sender.borrow() };
    while !stop.load(Ordering::Acquire) {
        let now = reader.wait_progress(seen, Duration::from_millis(NOTIFY_WAIT_MS));
        if now.durable > seen.durable {
            durable_sender.send_replace(now.durable);
        }
        if now.acknowledgeable > seen.acknowledgeable {
            acknowledgeable_sender.send_replace(now.acknowledgeable);
        }
        seen = WalProgress {
            acknowledgeable: now.acknowledgeable.max(seen.acknowledgeable),
            durable: now.durable.max(seen.durable),
        };
    }
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The tokens made on this start, if the data directory was new.
    pub fn first_start(&self) -> Option<&FirstStart> {
        self.first_start.as_ref()
    }

    /// The last LSN recovery rebuilt at start.
    pub fn recovered_lsn(&self) -> Lsn {
        self.recovered_lsn
    }

    pub fn engine(&self) -> &Engine {
        &self.core.engine
    }

    pub fn counters(&self) -> &ServerCounters {
        &self.core.counters
    }

    /// Takes a snapshot now (in the background).
    pub fn request_snapshot(&self) {
        self.core.snapshotter.request();
    }

    /// The node's role now (a standby becomes primary when promoted; a primary is fenced when
    /// it learns of a higher epoch).
    pub fn role(&self) -> NodeRole {
        self.core.role()
    }

    pub fn epoch(&self) -> u64 {
        self.core.epoch()
    }

    /// The node's status document (the admin `status` operation's answer).
    pub fn status(&self) -> serde_json::Value {
        crate::replication::primary::status(&self.core)
    }

    /// Waits until this standby must be restarted to change its data directory (a rewind or a
    /// base backup); [`run`] does it.
    pub async fn restart_requested(&self) -> Restart {
        loop {
            let notified = self.core.restart_notify.notified();
            if let Some(restart) = self.core.restart.lock().clone() {
                return restart;
            }
            notified.await;
        }
    }

    /// Graceful shutdown: new requests get `shutting_down`, requests in flight are answered
    /// (for at most `SHUTDOWN_WAIT_MS_MAX`), connections close, the WAL writes and syncs
    /// what it has. Returns the engine, for a final check.
    pub async fn shutdown(mut self) -> Result<Engine, NetError> {
        self.core.shutting_down.store(true, Ordering::Release);
        self.endpoint.set_server_config(None);
        self.core.goodbye.send_replace(true);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_WAIT_MS_MAX);
        while self.core.counters.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.endpoint.open_connections() > 0 {
            // Time for the `Goodbye` frames to reach the clients before the connections close
            // (closing drops stream data not yet sent).
            tokio::time::sleep(Duration::from_millis(GOODBYE_GRACE_MS)).await;
        }
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.stop_notifier.store(true, Ordering::Release);
        if let Some(notifier) = self.notifier.take() {
            let _ = tokio::task::block_in_place(|| notifier.join());
        }
        // Connection tasks end once their connections are closed; wait (bounded) for them.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_WAIT_MS_MAX);
        while Arc::strong_count(&self.core) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let core = Arc::try_unwrap(self.core)
            .map_err(|_| NetError::Shutdown("a connection task still holds the engine".into()))?;
        let Core { engine, wal, snapshotter, .. } = core;
        tokio::task::block_in_place(|| drop(snapshotter));
        let durable = tokio::task::block_in_place(|| wal.close())?;
        tracing::info!(durable_lsn = durable.0, "stopped");
        Ok(engine)
    }
}

async fn accept_loop(core: Arc<Core>, endpoint: quinn::Endpoint) {
    let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    while let Some(incoming) = endpoint.accept().await {
        // A stateless retry before anything is kept: a connection takes a slot only once its
        // peer has shown it receives at its address (review: Initial packets from forged
        // addresses, ~1,000 a second, each held a slot through its 10 s handshake timeout and
        // kept every real client out). It costs a new connection one round trip.
        if !incoming.remote_address_validated() {
            if let Err(refused) = incoming.retry() {
                refused.into_incoming().refuse();
            }
            continue;
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let core = core.clone();
        tokio::spawn(async move {
            core.counters.connections.fetch_add(1, Ordering::Relaxed);
            serve_connection(core, incoming).await;
            drop(permit);
        });
    }
}

/// Expiry and retention, driven by the server's clock (the engine reads none).
async fn timers(core: Arc<Core>) {
    let mut interval = tokio::time::interval(Duration::from_millis(EXPIRE_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_forget_ms = now_ms();
    let mut last_check_ms = now_ms();
    let mut warned_ms: Option<u64> = None;
    loop {
        interval.tick().await;
        if core.role() != NodeRole::Primary {
            // Only a primary decides: a standby applies its primary's expiries.
            continue;
        }
        let now = now_ms();
        for _ in 0..EXPIRE_COMMANDS_PER_TICK_MAX {
            let mut records = Vec::new();
            core.engine.execute(&Command::Expire { limit: EXPIRE_BATCH_MAX }, now, &mut records);
            let expired = records.len();
            if !submit(&core, records) || expired < EXPIRE_BATCH_MAX {
                break;
            }
        }
        let mut forget = now.saturating_sub(last_forget_ms) >= FORGET_INTERVAL_MS;
        if now.saturating_sub(last_check_ms) >= FORGET_CHECK_INTERVAL_MS {
            last_check_ms = now;
            // Past 90% of the limit: forget the oldest now rather than at the next interval.
            forget |= core.engine.idempotency_usage().over_target();
        }
        if forget {
            last_forget_ms = now;
            let mut records = Vec::new();
            let reply = core.engine.execute(&Command::Forget, now, &mut records);
            submit(&core, records);
            let usage = core.engine.idempotency_usage();
            if usage.over_target()
                && warned_ms.is_none_or(|at| now.saturating_sub(at) >= MEMORY_FULL_WARNING_INTERVAL_MS)
            {
                warned_ms = Some(now);
                tracing::warn!(
                    reservations = usage.reservations,
                    operations = usage.operations,
                    entries_max = usage.entries_max,
                    fullest_shard = usage.fullest_shard,
                    shard_max = usage.shard_max,
                    forgotten = reply.count,
                    "IDEMPOTENCY MEMORY NEAR FULL: an id shard is over 90% of its share of the limit after \
                     forgetting every id older than the {} s floor; new mutations there get \
                     memory_full once it is at the limit (raise --idempotency-entries-max, or lower \
                     the offered rate)",
                    reservoir_engine::IDEMPOTENCY_RETENTION_FLOOR_MS / 1_000
                );
            }
        }
    }
}

/// How far behind what was acknowledged a reconnected standby may be for a degraded `sync`
/// primary to wait for it again: at a standby's ~0.4 M records/s of apply, ~25 ms of
/// acknowledgements held back at the switch.
pub const SYNC_RESUME_RECORDS_MAX: u64 = 10_000;

/// Publishes what may be acknowledged: the local WAL's acknowledgeable LSN (durable, or only
/// written in `relaxed` mode), or in `sync` mode on a primary the lower of it and the best
/// standby's written LSN (with the configured fallback when no standby streams). A token's
/// change waits here too, for its mark record (`mark_credentials_changed`).
async fn acknowledge(core: Arc<Core>, sender: watch::Sender<Lsn>) {
    let mut local = core.local_acknowledgeable.clone();
    let mut alone_since: Option<std::time::Instant> = None;
    let mut warned: Option<std::time::Instant> = None;
    loop {
        let changed = core.hub.changed.notified();
        let local_lsn = *local.borrow_and_update();
        let current = *sender.borrow();
        let role = core.role();
        let sync = core.replication.mode == ReplicationMode::Sync && role == NodeRole::Primary;
        let target = if role == NodeRole::Fenced {
            // A fenced node acknowledges nothing more: what it has not acknowledged yet was
            // never confirmed by the new primary (regression: it acknowledged, after the fence,
            // writes that a sync standby never had).
            current
        } else if !sync {
            local_lsn
        } else {
            match core.hub.best_written() {
                Some(written) if core.sync_degraded.load(Ordering::Acquire) => {
                    alone_since = None;
                    // Degraded until a standby has caught up, not merely reconnected
                    // (regression, review, tenth session: every write then waited for the
                    // standby's whole backlog, minutes after an hour's outage, while `status`
                    // said `sync`): within `SYNC_RESUME_RECORDS_MAX` of what was acknowledged.
                    if written.saturating_add(SYNC_RESUME_RECORDS_MAX) >= current.0 {
                        core.sync_degraded.store(false, Ordering::Release);
                        tracing::warn!(
                            written,
                            acknowledged = current.0,
                            "a standby caught up: acknowledgements are synchronous again"
                        );
                        local_lsn.min(Lsn(written))
                    } else {
                        local_lsn
                    }
                }
                Some(written) => {
                    alone_since = None;
                    local_lsn.min(Lsn(written))
                }
                None => {
                    let since = *alone_since.get_or_insert_with(std::time::Instant::now);
                    match core.replication.sync_fallback_ms {
                        Some(after_ms) if since.elapsed() >= Duration::from_millis(after_ms) => {
                            core.sync_degraded.store(true, Ordering::Release);
                            if warned
                                .is_none_or(|at| at.elapsed() >= Duration::from_millis(DEGRADED_WARNING_INTERVAL_MS))
                            {
                                warned = Some(std::time::Instant::now());
                                tracing::warn!(
                                    after_ms,
                                    "SYNC REPLICATION DEGRADED: no standby for {after_ms} ms, acknowledging \
                                     after the local fsync only; a failover now may lose acknowledged writes"
                                );
                            }
                            local_lsn
                        }
                        _ => current,
                    }
                }
            }
        };
        if target > current {
            sender.send_replace(target);
        }
        tokio::select! {
            result = local.changed() => if result.is_err() { return },
            _ = changed => {}
            _ = core.node_changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Warns when a standby's lag (on a primary) or this standby's lag passes the RPO.
async fn watch_lag(core: Arc<Core>) {
    let mut interval = tokio::time::interval(Duration::from_millis(LAG_CHECK_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let rpo_ms = core.replication.rpo_ms;
    loop {
        interval.tick().await;
        let now = now_ms();
        let durable = core.wal.durable_lsn().0;
        let reader = core.wal.durable_lsn_reader();
        for entry in core.hub.standbys.lock().iter_mut() {
            let lag = entry.lag(durable, now, |lsn| reader.feed_times_from(Lsn(lsn)));
            if lag.ms > rpo_ms && now.saturating_sub(entry.warned_ms) >= LAG_WARNING_INTERVAL_MS {
                entry.warned_ms = now;
                tracing::warn!(standby = %entry.name, lag_ms = lag.ms, lag_records = lag.records, rpo_ms, "standby lag above the RPO");
            }
        }
        if core.role() == NodeRole::Standby {
            let applied = core.engine.next_lsn().0 - 1;
            let mut following = core.following.lock();
            let lag = following.lag(applied);
            if lag.ms > rpo_ms && now.saturating_sub(following.warned_ms) >= LAG_WARNING_INTERVAL_MS {
                following.warned_ms = now;
                tracing::warn!(
                    lag_ms = lag.ms,
                    lag_records = lag.records,
                    rpo_ms,
                    "this standby's lag is above the RPO"
                );
            }
        }
    }
}

/// Hands records to the WAL writer. A failed writer acknowledges nothing more: the caller
/// answers `internal` and the process should be restarted (recovery is exact).
fn submit(core: &Core, records: Vec<Record>) -> bool {
    if records.is_empty() {
        return true;
    }
    // Blocks only while the writer's queue is full: the back-pressure point.
    match core.wal.submit(records) {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, "the WAL refused records");
            false
        }
    }
}

/// Who a connection speaks for.
#[derive(Clone)]
enum Principal {
    Tenant {
        id: TenantId,
        name: String,
        limiter: Arc<governor::DefaultDirectRateLimiter>,
    },
    Admin,
    /// A standby (or a promoted node fencing this one): the stream carries replication.
    Replication,
}

struct Session {
    principal: Principal,
    /// The token's digest and what it granted at the handshake: checked again whenever the
    /// credential store changes (a rotation revokes the connections of the old token too).
    token: TokenDigest,
    grant: Grant,
    /// The store's generation read before the token was looked up at the handshake.
    credentials_generation: u64,
    in_flight: Arc<Semaphore>,
    /// A tenant's session holds one of its connection slots until the connection's last stream
    /// ends.
    tenant_connection: Option<TenantConnection>,
    /// Reply bytes the connection's streams hold together.
    reply_bytes_held: AtomicUsize,
    /// Frames of the connection refused as a client's mistake, at most
    /// [`REFUSED_FRAMES_PER_CONNECTION_MAX`] before it is closed.
    refused_frames: std::sync::atomic::AtomicU32,
}

impl Session {
    /// Whether the connection, its tenant and the server all hold fewer reply bytes than their
    /// caps: a stream reads and decodes only then.
    fn may_hold_more_replies(&self, core: &Core) -> bool {
        self.reply_bytes_held.load(Ordering::Acquire) < REPLY_BYTES_HELD_PER_CONNECTION_MAX
            && self.tenant_connection.as_ref().is_none_or(|connection| {
                connection.reply_bytes_held.load(Ordering::Acquire) < REPLY_BYTES_HELD_PER_TENANT_MAX
            })
            && core.counters.reply_bytes_held.load(Ordering::Acquire) < REPLY_BYTES_HELD_MAX as u64
    }
}

/// The reply bytes one stream holds, counted on its connection, its tenant and the server
/// while it holds them, and let go of when it ends, however it ends.
struct HeldReplies {
    core: Arc<Core>,
    session: Arc<Session>,
    bytes: usize,
}

impl HeldReplies {
    fn hold(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.count(bytes, true);
    }

    fn let_go(&mut self, bytes: usize) {
        assert!(bytes <= self.bytes, "let go of {bytes} reply bytes, {} held", self.bytes);
        self.bytes -= bytes;
        self.count(bytes, false);
    }

    fn count(&self, bytes: usize, up: bool) {
        let change = |counter: &AtomicUsize| {
            if up {
                counter.fetch_add(bytes, Ordering::AcqRel);
            } else {
                let before = counter.fetch_sub(bytes, Ordering::AcqRel);
                assert!(before >= bytes, "reply bytes held went below zero");
            }
        };
        change(&self.session.reply_bytes_held);
        if let Some(connection) = &self.session.tenant_connection {
            change(&connection.reply_bytes_held);
        }
        if up {
            self.core.counters.reply_bytes_held.fetch_add(bytes as u64, Ordering::AcqRel);
        } else {
            self.core.counters.reply_bytes_held.fetch_sub(bytes as u64, Ordering::AcqRel);
        }
    }
}

impl Drop for HeldReplies {
    fn drop(&mut self) {
        let bytes = self.bytes;
        self.let_go(bytes);
    }
}

/// One of a tenant's open connections, counted against `connections_per_tenant_max`.
struct TenantConnection {
    core: Arc<Core>,
    tenant: TenantId,
    /// The reply bytes the tenant's connections hold together.
    reply_bytes_held: Arc<AtomicUsize>,
}

impl TenantConnection {
    /// Counts a new connection of `tenant`, or refuses it at the tenant's cap. Regression
    /// (review): a tenant with a valid token could hold every one of the server's 10,000
    /// connection slots with idle connections, keeping every other tenant out.
    fn open(core: &Arc<Core>, tenant: TenantId) -> Option<TenantConnection> {
        let mut open = core.tenant_connections.lock();
        let (count, reply_bytes_held) = open.entry(tenant).or_insert_with(|| (0, Arc::new(AtomicUsize::new(0))));
        if *count >= core.connections_per_tenant_max {
            return None;
        }
        *count += 1;
        Some(TenantConnection { core: core.clone(), tenant, reply_bytes_held: reply_bytes_held.clone() })
    }
}

impl Drop for TenantConnection {
    fn drop(&mut self) {
        let mut open = self.core.tenant_connections.lock();
        let (count, _) = open.get_mut(&self.tenant).expect("counted when opened");
        assert!(*count > 0, "tenant connection count underflow");
        *count -= 1;
        if *count == 0 {
            open.remove(&self.tenant);
        }
    }
}

fn error_frame(request_id: Option<u64>, code: ProtocolErrorCode, message: impl Into<String>) -> ErrorFrame {
    let mut message = message.into();
    message.truncate(ERROR_MESSAGE_BYTES_MAX.min(message.len()));
    while !message.is_char_boundary(message.len()) {
        message.pop();
    }
    ErrorFrame { request_id, code, message, retry_after_ms: None, primary: None }
}

fn encode(frame: &ServerFrame) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out).expect("server frames are built within the limits");
    out
}

/// Sends `error` on `send` and closes the connection with the error's number.
async fn refuse(connection: &quinn::Connection, send: &mut quinn::SendStream, error: ErrorFrame) {
    let code = error.code;
    let _ = send.write_all(&encode(&ServerFrame::Error(error))).await;
    let _ = send.finish();
    // Let the frame leave before the close (a close discards unsent stream data).
    let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
    connection.close(quinn::VarInt::from_u32(u32::from(code.number())), code.name().as_bytes());
}

/// Reads one whole frame (the handshake's `Hello`), and returns it with the bytes read after
/// it (at most one read's worth): frames a client sent before its `HelloReply`, which wait
/// for it. Regression (review): such bytes were refused (`malformed_frame`) when they came in
/// the `Hello`'s read, and served when they came in a later one, by how the packets split.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<(Vec<u8>, Vec<u8>), ErrorFrame> {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        match recv.read(&mut chunk).await {
            Ok(Some(read)) => {
                let taken = decoder.push(&chunk[..read]).map_err(|error| ErrorFrame::from_wire_error(&error))?;
                if let Some(frame) = decoder.pop() {
                    let after = chunk[taken..read].to_vec();
                    debug_assert!(after.len() <= READ_CHUNK_BYTES);
                    return Ok((frame.to_vec(), after));
                }
                if taken < read {
                    return Err(error_frame(
                        None,
                        ProtocolErrorCode::MalformedFrame,
                        "a first frame the decoder did not take",
                    ));
                }
            }
            Ok(None) | Err(_) => return Err(error_frame(None, ProtocolErrorCode::Unauthenticated, "no Hello")),
        }
    }
}

async fn serve_connection(core: Arc<Core>, incoming: quinn::Incoming) {
    let Ok(connection) = incoming.await else { return };
    let Ok(Ok((mut send, mut recv))) =
        tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), connection.accept_bi()).await
    else {
        connection.close(quinn::VarInt::from_u32(u32::from(ProtocolErrorCode::Unauthenticated.number())), b"no Hello");
        return;
    };
    // Regression: the Hello was read with the 2 MiB frame cap, so an unauthenticated peer could
    // make the server hold 2 MiB for each of its connections by announcing a big "Hello".
    let mut decoder = FrameDecoder::with_frame_bytes_max(HELLO_FRAME_BYTES_MAX);
    let (hello, after_hello) =
        match tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), read_hello(&mut recv, &mut decoder))
            .await
        {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => return refuse(&connection, &mut send, error).await,
            Err(_) => {
                let error = error_frame(None, ProtocolErrorCode::Unauthenticated, "no Hello in time");
                return refuse(&connection, &mut send, error).await;
            }
        };
    let session = match authenticate(&core, &hello) {
        Ok(session) => session,
        Err(error) => return refuse(&connection, &mut send, error).await,
    };
    decoder.set_frame_bytes_max(FRAME_BYTES_MAX);
    let role = match &session.principal {
        Principal::Tenant { name, .. } => Role::Tenant { name: name.clone() },
        Principal::Admin => Role::Admin,
        Principal::Replication => Role::Replication,
    };
    let version = negotiate_version(&hello).expect("checked by authenticate");
    let reply = ServerFrame::HelloReply(HelloReply {
        version,
        role,
        epoch: core.highest_epoch().0,
        limits: ServerLimits::THIS_BUILD,
        node: core.role(),
    });
    if send.write_all(&encode(&reply)).await.is_err() {
        return;
    }
    if matches!(session.principal, Principal::Replication) {
        // The WAL feed may cross regions: a wider window than a client's (`tls.rs`).
        connection.set_send_window(crate::tls::REPLICATION_SEND_WINDOW_BYTES);
        // A standby sends its `Start` after the `HelloReply` (the stream then carries
        // replication messages, not frames): anything read with the `Hello` is refused.
        if !after_hello.is_empty() {
            let error = error_frame(None, ProtocolErrorCode::MalformedFrame, "replication messages before HelloReply");
            return refuse(&connection, &mut send, error).await;
        }
        crate::replication::primary::serve(core, connection, send, recv, session.token).await;
        return;
    }
    let session = Arc::new(session);
    tokio::spawn(serve_stream(core.clone(), session.clone(), connection.clone(), send, recv, decoder, after_hello));
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(
                    core.clone(),
                    session.clone(),
                    connection.clone(),
                    send,
                    recv,
                    FrameDecoder::new(),
                    Vec::new(),
                ));
            }
            Err(_) => return,
        }
    }
}

/// The connection's `Hello`, and the bytes read after it (see [`read_frame`]).
async fn read_hello(recv: &mut quinn::RecvStream, decoder: &mut FrameDecoder) -> Result<(Hello, Vec<u8>), ErrorFrame> {
    let (frame, after) = read_frame(recv, decoder).await?;
    match decode_client_frame(&frame) {
        Ok(ClientFrame::Hello(hello)) => Ok((hello, after)),
        Ok(_) | Err(WireError::UnknownFrameType { .. }) => {
            Err(error_frame(None, ProtocolErrorCode::Unauthenticated, "the first frame must be Hello"))
        }
        // A first frame of another type is `unauthenticated` however it decodes (regression,
        // review: a request that failed to decode got its own error, `too_many_operations` or
        // `unknown_operation`, a code that does not close, and the connection was closed).
        Err(_) if frame.get(crate::wire::FRAME_HEADER_BYTES) != Some(&crate::wire::frame_type::HELLO) => {
            Err(error_frame(None, ProtocolErrorCode::Unauthenticated, "the first frame must be Hello"))
        }
        Err(error) => Err(ErrorFrame::from_wire_error(&error)),
    }
}

fn authenticate(core: &Arc<Core>, hello: &Hello) -> Result<Session, ErrorFrame> {
    if negotiate_version(hello).is_none() {
        return Err(error_frame(
            None,
            ProtocolErrorCode::UnsupportedVersion,
            format!("this server speaks versions {}..={}", crate::PROTOCOL_VERSION_MIN, crate::PROTOCOL_VERSION_MAX),
        ));
    }
    let unauthenticated = || error_frame(None, ProtocolErrorCode::Unauthenticated, "unknown or revoked token");
    // Read before the lookup: a change after it moves the generation past this one, so the
    // connection's next request checks the token again.
    let credentials_generation = core.credentials.generation();
    let (grant, token) = core.credentials.authenticate(&hello.token).ok_or_else(unauthenticated)?;
    let mut tenant_connection = None;
    let principal = match &grant {
        Grant::Admin => Principal::Admin,
        Grant::Tenant { tenant } => {
            let id = core.engine.tenant_id(tenant).ok_or_else(unauthenticated)?;
            let Some(slot) = TenantConnection::open(core, id) else {
                let mut error = error_frame(
                    None,
                    ProtocolErrorCode::RateLimited,
                    format!(
                        "tenant {tenant} has {} connections open, its most: share one (a client multiplexes \
                         streams) or close one",
                        core.connections_per_tenant_max
                    ),
                );
                error.retry_after_ms = Some(1_000);
                return Err(error);
            };
            tenant_connection = Some(slot);
            Principal::Tenant { id, limiter: limiter(core, tenant), name: tenant.clone() }
        }
        Grant::Replication => Principal::Replication,
    };
    Ok(Session {
        principal,
        token,
        grant,
        credentials_generation,
        in_flight: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
        tenant_connection,
        reply_bytes_held: AtomicUsize::new(0),
        refused_frames: std::sync::atomic::AtomicU32::new(0),
    })
}

/// The tenant's rate limiter, shared by all its connections.
fn limiter(core: &Core, tenant: &str) -> Arc<governor::DefaultDirectRateLimiter> {
    if let Some(limiter) = core.limiters.read().get(tenant) {
        return limiter.clone();
    }
    let rate = core.rate_per_tenant.get(tenant).copied().unwrap_or(core.rate_default);
    let quota = governor::Quota::per_second(NonZeroU32::new(rate.operations_per_second.max(1)).expect("at least 1"))
        .allow_burst(NonZeroU32::new(rate.burst.max(1)).expect("at least 1"));
    let mut limiters = core.limiters.write();
    if limiters.len() >= RATE_LIMITERS_MAX {
        // Drop only the limiters no session holds. Regression (found by audit): all were
        // dropped, and a tenant's open sessions kept its old bucket while new ones got a
        // fresh one, two rates for one tenant. What stays is bounded by the sessions open
        // (the connection and stream caps).
        limiters.retain(|_, limiter| Arc::strong_count(limiter) > 1);
    }
    limiters.entry(tenant.to_owned()).or_insert_with(|| Arc::new(governor::RateLimiter::direct(quota))).clone()
}

/// A reply waiting for the LSN it needs to be durable. It counts as in flight (for the
/// connection's cap and for a graceful shutdown) until it is dropped: written, or abandoned
/// with its connection.
struct QueuedReply {
    lsn: Lsn,
    bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
    _counted: InFlight,
}

/// One request in the server's in-flight count, from decoding to its reply.
struct InFlight(Arc<Core>);

impl InFlight {
    fn new(core: &Arc<Core>) -> InFlight {
        core.counters.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(core.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let before = self.0.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "in-flight count underflow");
    }
}

async fn serve_stream(
    core: Arc<Core>,
    session: Arc<Session>,
    connection: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder,
    // Bytes already read and not yet decoded (those that came with the `Hello`).
    mut unread: Vec<u8>,
) {
    assert!(unread.len() <= READ_CHUNK_BYTES, "at most one read is held undecoded");
    let mut durable = core.durable.clone();
    let mut goodbye = core.goodbye.subscribe();
    let mut goodbye_sent = false;
    let mut queued: VecDeque<QueuedReply> = VecDeque::new();
    let mut queued_bytes = 0usize;
    // Every reply from when it is made until it is written (queued, or waiting in `write_all`
    // on a client that does not read), counted on the connection, the tenant and the server.
    let mut held = HeldReplies { core: core.clone(), session: session.clone(), bytes: 0 };
    let mut recheck_ms = REPLY_BYTES_RECHECK_MS;
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut reading = true;
    // The credential store's generation this stream last saw the token valid at.
    let mut credentials_checked = session.credentials_generation;
    loop {
        // Write every queued reply whose records are durable (in LSN order: they were queued
        // in execution order, and LSNs grow with it).
        let durable_lsn = *durable.borrow_and_update();
        while queued.front().is_some_and(|reply| reply.lsn <= durable_lsn) {
            let reply = queued.pop_front().expect("a front");
            queued_bytes -= reply.bytes.len();
            if send.write_all(&reply.bytes).await.is_err() {
                return;
            }
            held.let_go(reply.bytes.len());
        }
        // A graceful shutdown started: say so once, ahead of the replies still to come (the
        // requests in flight are answered; later ones get `shutting_down`).
        if !goodbye_sent && *goodbye.borrow_and_update() {
            goodbye_sent = true;
            if send.write_all(&encode(&ServerFrame::Goodbye)).await.is_err() {
                return;
            }
        }
        // Decode what was read, as far as the queue has room: frames past that wait in
        // `unread` (regression: the caps were checked only before a read, so every reply of
        // one 64 KiB chunk of small requests was queued, ~2,000 pages, gigabytes).
        let mut decoded = 0;
        while decoded < unread.len()
            && queued.len() < REPLIES_QUEUED_PER_STREAM_MAX
            && queued_bytes < REPLY_BYTES_QUEUED_PER_STREAM_MAX
            && session.may_hold_more_replies(&core)
        {
            let taken = match decoder.push(&unread[decoded..]) {
                Ok(taken) => taken,
                Err(error) => {
                    core.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    return refuse(&connection, &mut send, ErrorFrame::from_wire_error(&error)).await;
                }
            };
            decoded += taken;
            let Some(frame) = decoder.pop() else { continue };
            match handle_frame(&core, &session, &mut credentials_checked, frame) {
                Outcome::Reply(reply) => {
                    let ready = reply.lsn <= *durable.borrow();
                    held.hold(reply.bytes.len());
                    if ready && queued.is_empty() {
                        if send.write_all(&reply.bytes).await.is_err() {
                            return;
                        }
                        held.let_go(reply.bytes.len());
                    } else {
                        queued_bytes += reply.bytes.len();
                        queued.push_back(reply);
                    }
                }
                Outcome::Error(error) => {
                    core.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    if error.code.closes_connection() {
                        return refuse(&connection, &mut send, error).await;
                    }
                    let mistake = matches!(
                        error.code,
                        ProtocolErrorCode::UnknownFrameType
                            | ProtocolErrorCode::UnknownOperation
                            | ProtocolErrorCode::TooManyOperations
                            | ProtocolErrorCode::Forbidden
                    );
                    if mistake
                        && session.refused_frames.fetch_add(1, Ordering::AcqRel) + 1 > REFUSED_FRAMES_PER_CONNECTION_MAX
                    {
                        let why = format!(
                            "more than {REFUSED_FRAMES_PER_CONNECTION_MAX} frames refused on this connection (the last: {})",
                            error.code.name()
                        );
                        return refuse(
                            &connection,
                            &mut send,
                            error_frame(None, ProtocolErrorCode::MalformedFrame, why),
                        )
                        .await;
                    }
                    if send.write_all(&encode(&ServerFrame::Error(error))).await.is_err() {
                        return;
                    }
                }
                Outcome::Goodbye => reading = false,
            }
        }
        unread.drain(..decoded);
        assert!(unread.len() <= READ_CHUNK_BYTES, "at most one read is held undecoded");
        if !reading && queued.is_empty() && unread.is_empty() {
            let _ = send.finish();
            return;
        }
        assert_eq!(held.bytes, queued_bytes, "a stream holds its queued replies, and nothing more between writes");
        let may_hold_more = session.may_hold_more_replies(&core);
        if may_hold_more {
            recheck_ms = REPLY_BYTES_RECHECK_MS;
        }
        tokio::select! {
            read = recv.read(&mut chunk),
                if reading
                    && unread.is_empty()
                    && queued.len() < REPLIES_QUEUED_PER_STREAM_MAX
                    && queued_bytes < REPLY_BYTES_QUEUED_PER_STREAM_MAX
                    && may_hold_more =>
            {
                match read {
                    Ok(Some(count)) => unread.extend_from_slice(&chunk[..count]),
                    Ok(None) | Err(_) => reading = false,
                }
            }
            changed = durable.changed(), if !queued.is_empty() => {
                if changed.is_err() {
                    return;
                }
            }
            // The peer is gone: its queued replies can never be sent. Regression (review): a
            // task whose replies waited on a standby's acknowledgement outlived its closed
            // connection, holding them and its buffers, and a client reconnecting and doing it
            // again grew the server's memory without bound.
            _ = connection.closed() => return,
            // Stopped by the replies other streams hold (its connection's, its tenant's, the
            // server's): look again soon. Regression (review): only a stream's own queue was
            // capped, so a tenant whose connections never read their replies held 8 MiB per
            // stream, 64 streams per connection, 1,000 connections: far past any memory.
            () = tokio::time::sleep(Duration::from_millis(recheck_ms)), if reading && !may_hold_more => {
                recheck_ms = (recheck_ms * 2).min(REPLY_BYTES_RECHECK_MS_MAX);
            }
            // The sender lives in `core`, which this task holds: `changed` fails only if that
            // were dropped, and then there is no Goodbye to send.
            changed = goodbye.changed(), if !goodbye_sent => {
                if changed.is_err() {
                    goodbye_sent = true;
                }
            }
        }
    }
}

enum Outcome {
    Reply(QueuedReply),
    Error(ErrorFrame),
    Goodbye,
}

fn handle_frame(core: &Arc<Core>, session: &Session, credentials_checked: &mut u64, frame: &[u8]) -> Outcome {
    match decode_client_frame(frame) {
        Ok(ClientFrame::Request(request)) => match handle_request(core, session, credentials_checked, request) {
            Ok(reply) => Outcome::Reply(reply),
            Err(error) => Outcome::Error(error),
        },
        Ok(ClientFrame::Goodbye) => Outcome::Goodbye,
        Ok(ClientFrame::Hello(_)) => {
            Outcome::Error(error_frame(None, ProtocolErrorCode::MalformedFrame, "a second Hello"))
        }
        Err(WireError::UnknownFrameType { frame_type }) => {
            // Skipped, answered, the connection goes on.
            let error = WireError::UnknownFrameType { frame_type };
            Outcome::Error(ErrorFrame::from_wire_error(&error))
        }
        Err(error) => Outcome::Error(ErrorFrame::from_wire_error(&error)),
    }
}

/// Whether the connection's token still grants what it did at the handshake. While the
/// credential store is unchanged this is one atomic load; after a change (an issue, a
/// rotation, a standby's copy of its primary's store) one lookup of the token's digest.
fn still_authenticated(core: &Core, session: &Session, credentials_checked: &mut u64) -> bool {
    let generation = core.credentials.generation();
    if generation == *credentials_checked {
        return true;
    }
    // The store is updated before its generation moves, so this lookup sees at least the
    // change that moved it; a later change moves the generation again.
    if !core.credentials.still_grants(&session.token, &session.grant) {
        return false;
    }
    *credentials_checked = generation;
    true
}

fn handle_request(
    core: &Arc<Core>,
    session: &Session,
    credentials_checked: &mut u64,
    request: Request,
) -> Result<QueuedReply, ErrorFrame> {
    let id = Some(request.request_id);
    if !still_authenticated(core, session, credentials_checked) {
        // `unauthenticated` closes the connection (with its number as the QUIC application
        // error code) once this error is sent: no request of a revoked token runs.
        tracing::info!(grant = ?session.grant, "a request with a revoked token: closing its connection");
        return Err(error_frame(
            id,
            ProtocolErrorCode::Unauthenticated,
            "the connection's token was revoked (or rotated) since its handshake: connect with a current token",
        ));
    }
    if core.shutting_down.load(Ordering::Acquire) {
        let mut error = error_frame(id, ProtocolErrorCode::ShuttingDown, "the server is shutting down");
        error.retry_after_ms = Some(1_000);
        return Err(error);
    }
    let admin = matches!(session.principal, Principal::Admin);
    // Forbidden before not_primary (protocol.md): a tenant token asking a standby for an admin
    // operation is told it may not, not sent to the primary to be told so there.
    if let Some(operation) = request.operations.iter().find(|operation| operation.kind().is_admin() != admin) {
        let why = if admin {
            "an admin token runs admin operations only"
        } else {
            "a tenant token cannot run admin operations"
        };
        return Err(error_frame(id, ProtocolErrorCode::Forbidden, format!("{}: {why}", operation.kind().name())));
    }
    let role = core.role();
    if role != NodeRole::Primary {
        // A standby runs queries; a fenced former primary only `status` (its state may hold
        // writes the new primary's history does not have).
        let runs = |kind: OperationKind| match role {
            NodeRole::Fenced => kind == OperationKind::Status,
            _ => kind.runs_on_standby(),
        };
        if let Some(operation) = request.operations.iter().find(|operation| !runs(operation.kind())) {
            let mut error = error_frame(
                id,
                ProtocolErrorCode::NotPrimary,
                format!("{}: this node is a {} and takes no writes", operation.kind().name(), role.name()),
            );
            error.primary = core.primary_address();
            error.retry_after_ms = Some(100);
            return Err(error);
        }
    }
    // Taken before the rate is charged: a request refused for the cap costs no rate (review).
    let Ok(permit) = session.in_flight.clone().try_acquire_owned() else {
        let mut error = error_frame(id, ProtocolErrorCode::TooManyInFlight, "wait for replies before sending more");
        error.retry_after_ms = Some(10);
        return Err(error);
    };
    if let Principal::Tenant { id: tenant, name, limiter } = &session.principal {
        // What the request costs: an import one per row, at most the tenant's burst (an import
        // larger than the burst, as the clients cut them, passes once the bucket is full and
        // takes all of it), and one if its id is remembered (a retry is answered from memory;
        // charging its rows again would keep a retried large import from getting past the
        // parts it already did); any other operation one.
        let burst = core.rate_per_tenant.get(name).copied().unwrap_or(core.rate_default).burst.max(1);
        let units = request
            .operations
            .iter()
            .map(|operation| match operation {
                // Looked up only where the answer changes the cost, and without unpacking the
                // remembered reply (review: 1,024 empty imports naming a 10,000-row import's id
                // unpacked 1,024 replies of 320 KB each under its id shard's lock, before the
                // limiter refused anything).
                crate::Operation::Import { operation: id, rows }
                    if rows.len() > 1 && core.engine.remembers_operation(*tenant, id) =>
                {
                    1
                }
                // A SKU's total walks every location of it: one unit per location, as an
                // import's rows (regression, review: 1,024 queries of a SKU at 10,000
                // locations were 10 M lookups on a worker for 1,024 units).
                crate::Operation::GetSku { sku } => {
                    u32::try_from(core.engine.sku_location_count(*tenant, sku)).unwrap_or(u32::MAX).clamp(1, burst)
                }
                _ => operation.rate_units().min(burst),
            })
            .fold(0u32, u32::saturating_add)
            // A request of no operation costs one all the same (review: pings were free).
            .max(1);
        if let Some(count) = NonZeroU32::new(units) {
            let refused = match limiter.check_n(count) {
                Ok(Ok(())) => None,
                Ok(Err(not_until)) => {
                    Some(not_until.wait_time_from(governor::clock::DefaultClock::default().now()).as_millis() as u32)
                }
                // More operations than the burst: never allowed at once; split the request.
                Err(_) => Some(u32::MAX),
            };
            if let Some(wait_ms) = refused {
                core.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                // Larger than the burst: waiting cannot help, so no retry_after (split it).
                let (message, retry_after_ms) = if wait_ms == u32::MAX {
                    ("a request with more operations than the tenant's burst: split it", None)
                } else {
                    ("over the tenant's rate", Some(wait_ms.clamp(1, RETRY_AFTER_MS_MAX)))
                };
                let mut error = error_frame(id, ProtocolErrorCode::RateLimited, message);
                error.retry_after_ms = retry_after_ms;
                return Err(error);
            }
        }
    }
    let tenant = match &session.principal {
        Principal::Tenant { id, .. } => *id,
        // Admin operations name their tenant themselves.
        Principal::Admin | Principal::Replication => TenantId(u32::MAX),
    };
    let now = now_ms();
    let mut records = Vec::new();
    let mut results = Vec::with_capacity(request.operations.len());
    let mut query_items_left = QUERY_ITEMS_PER_REQUEST_MAX;
    for operation in &request.operations {
        let kind = operation.kind();
        let result = match operation.to_action(tenant) {
            Err(code) => OperationResult::refused(kind, code),
            Ok(Action::Command(command)) => {
                let reply = core.engine.execute(&command, now, &mut records);
                OperationResult::Reply { kind, reply }
            }
            Ok(Action::Query(query)) => {
                let result = run_query(&core.engine, &query, query_items_left);
                query_items_left = query_items_left.checked_sub(result.items()).expect("a query keeps to its budget");
                result
            }
            Ok(Action::Admin(action)) => run_admin(core, &action, now, &mut records),
        };
        debug_assert_eq!(result.kind(), kind, "a result answers its operation");
        results.push(result);
    }
    core.counters.requests.fetch_add(1, Ordering::Relaxed);
    core.counters.operations.fetch_add(results.len() as u64, Ordering::Relaxed);
    // A reply waits until what it reflects is durable: everything it may have seen, its own
    // records included (no client ever sees a state a crash could undo). Regression (found by
    // audit): a request with records of its own waited for those only, so a retry batched
    // beside them and answered from the idempotency memory, or a query beside them, could
    // reflect another connection's record not yet durable; a crash then undid an answer.
    let reflects = Lsn(core.engine.next_lsn().0 - 1);
    debug_assert!(records.iter().all(|record| record.lsn <= reflects));
    // Admin requests about the node wait for nothing but their own records' local durability:
    // a promotion's reply must not wait for a standby that a new primary may not have yet, and
    // `status` must answer on a node whose acknowledgements are frozen (fenced, or `sync` with
    // no standby). One that changes the ledger (`create_tenant`) waits like any other write.
    // Regression (review): `create_tenant` was acknowledged in `sync` mode before a standby had
    // it, so a failover could lose an acknowledged tenant.
    //
    // A tenant or admin token issued or rotated waits like a write too: for its mark's LSN
    // (`mark_credentials_changed`), so on a `sync` primary until a standby whose log holds the
    // mark, and with it the new store, has it durable. Regression (review): it was answered
    // once the primary's file was fsynced, so a failover in the next heartbeat brought a
    // revoked token back on the new primary; then (review) once any standby reported the
    // store, which with several standbys need not be the one furthest ahead on the log, the
    // one an operator promotes. Not a replication token: its answer carries what a standby cut
    // off by the rotation needs to come back, so waiting for a standby could wait forever.
    let changed_credentials = request.operations.iter().zip(&results).any(|(operation, result)| match result {
        OperationResult::Token(Ok(_)) => true,
        OperationResult::ServiceToken(Ok(_)) => {
            !matches!(operation, Operation::IssueServiceToken { service: Service::Replication, .. })
        }
        _ => false,
    });
    let admin_only = admin
        && request.operations.iter().all(|operation| operation.kind().is_admin())
        && !request.operations.iter().any(|operation| operation.kind() == OperationKind::CreateTenant)
        && !changed_credentials;
    let highest = records.iter().map(|record| record.lsn).max();
    if !submit(core, records) {
        return Err(error_frame(
            id,
            ProtocolErrorCode::Internal,
            "the write-ahead log failed: retry with the same ids",
        ));
    }
    let mut bytes = Vec::new();
    encode_reply(request.request_id, core.epoch(), reflects.0, &results, &mut bytes)
        .expect("replies built from the engine fit the frame limits");
    // Admin requests wait for their records' local sync, also those that wait for a standby
    // after it: in `relaxed` mode a tenant created or a token issued is acknowledged only once
    // synced (docs/wal.md). Regression (review): they waited for the written LSN there.
    let wait = if admin {
        if let Some(highest) = highest {
            if let Err(error) = tokio::task::block_in_place(|| core.wal.wait_durable(highest)) {
                tracing::error!(%error, "the WAL failed under an admin request");
                return Err(error_frame(id, ProtocolErrorCode::Internal, "the write-ahead log failed"));
            }
        }
        if admin_only {
            Lsn(0)
        } else {
            reflects
        }
    } else {
        reflects
    };
    Ok(QueuedReply { lsn: wait, bytes, _permit: permit, _counted: InFlight::new(core) })
}

/// Writes the mark of a credential store change (`Body::CredentialsChanged`) after the
/// change: every standby gets the new store ahead of the records that follow the change (the
/// shipping loop), so one whose log holds the mark holds the store, and an answer that waits
/// for the mark's LSN waits, in `sync` mode, for a standby holding the store.
fn mark_credentials_changed(core: &Core, now: u64, records: &mut Vec<Record>) {
    let before = records.len();
    let reply = core.engine.execute(&Command::MarkCredentialsChanged, now, records);
    assert!(reply.is_ok(), "a mark is never refused: {reply:?}");
    assert_eq!(records.len(), before + 1, "a mark is one record");
}

/// Credential operations (not engine commands: tokens are the server's, not the ledger's).
fn run_admin(core: &Arc<Core>, action: &AdminAction, now: u64, records: &mut Vec<Record>) -> OperationResult {
    match action {
        AdminAction::Status => {
            let mut document = crate::replication::primary::status(core).to_string();
            if document.len() > crate::operation::STATUS_BYTES_MAX {
                document = serde_json::json!({ "error": "status document over its size limit" }).to_string();
            }
            OperationResult::Status(Ok(document))
        }
        AdminAction::Promote => {
            let reply = crate::replication::standby::promote(core, now, records);
            OperationResult::Reply { kind: OperationKind::Promote, reply }
        }
        AdminAction::IssueToken { tenant, revoke_others } => {
            if core.engine.tenant_id(tenant.as_str()).is_none() {
                return OperationResult::Token(Err(ResultCode::UnknownTenant));
            }
            let grant = Grant::Tenant { tenant: tenant.as_str().to_owned() };
            match core.credentials.issue(grant, *revoke_others, now) {
                Ok(token) => {
                    tracing::info!(tenant = tenant.as_str(), revoke_others, "token issued");
                    mark_credentials_changed(core, now, records);
                    OperationResult::Token(Ok(token))
                }
                Err(error) => {
                    tracing::error!(%error, "cannot issue a token");
                    OperationResult::Token(Err(ResultCode::CapacityExceeded))
                }
            }
        }
        AdminAction::IssueServiceToken { service, revoke_others } => {
            match core.credentials.issue(Grant::from(*service), *revoke_others, now) {
                Ok(token) => {
                    // Which service and whether it revoked: never the token.
                    tracing::warn!(service = service.name(), revoke_others, "a service token issued");
                    mark_credentials_changed(core, now, records);
                    OperationResult::ServiceToken(Ok(token))
                }
                Err(error) => {
                    tracing::error!(%error, "cannot issue a token");
                    OperationResult::ServiceToken(Err(ResultCode::CapacityExceeded))
                }
            }
        }
        AdminAction::TakeSnapshot => {
            core.snapshotter.request();
            let mut reply = reservoir_engine::Reply::code(ResultCode::Ok);
            reply.count = core.wal.durable_lsn().0;
            tracing::info!(at_least = reply.count, "snapshot requested");
            OperationResult::Reply { kind: OperationKind::TakeSnapshot, reply }
        }
        AdminAction::ListTenants => {
            let counts = core.credentials.tenant_token_counts();
            let tenants = (0..TENANTS_PER_LIST_MAX as u32)
                .map_while(|id| core.engine.tenant_name(TenantId(id)))
                .map(|name| TenantEntry { tokens: counts.get(&name).copied().unwrap_or(0), name })
                .collect();
            OperationResult::Tenants(Ok(tenants))
        }
    }
}

/// Runs a node until `stop` resolves: starts it, and whenever a standby must change its data
/// directory offline (a rewind after a fork, a base backup), stops it, does that and starts it
/// again (clients see one reconnection). `on_start` sees every start: first-start tokens are
/// shown from it. Returns the engine of the last start, after a graceful shutdown.
pub async fn run(
    options: ServerOptions,
    stop: impl std::future::Future<Output = ()>,
    mut on_start: impl FnMut(&ServerHandle),
) -> Result<Engine, NetError> {
    /// Restarts in a row without a stop; a loop past it is a bug, not a state to serve from.
    const RESTARTS_MAX: usize = 1_000;
    /// After a restart the old endpoint's socket may linger a moment (quinn's driver task
    /// lets go of it once it sees the endpoint closed): retry the bind this long.
    const REBIND_WAIT_MS_MAX: u64 = 10_000;
    tokio::pin!(stop);
    for restart in 0..RESTARTS_MAX {
        let handle = if restart == 0 {
            start(options.clone()).await?
        } else {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(REBIND_WAIT_MS_MAX);
            loop {
                match start(options.clone()).await {
                    Ok(handle) => break handle,
                    Err(NetError::Io { what, source })
                        if source.kind() == std::io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline =>
                    {
                        tracing::info!(%what, "the address is still held by the stopped server: retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(NetError::Wal(reservoir_wal::WalError::Locked { .. }))
                        if tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        on_start(&handle);
        let restart = tokio::select! {
            // A stop asked for before a restart wins it: the restart may take minutes.
            biased;
            () = &mut stop => return handle.shutdown().await,
            restart = handle.restart_requested() => restart,
        };
        // From here until the next start has recovered, the node is as during recovery: a
        // stop may end the process at once (`reservoir serve` does), as a crash would; the
        // rewind and the base backup's install are crash-safe, and the primary asks for them
        // again. Regression (review): a signal waited for the whole restart, a base backup's
        // install and the recovery after it.
        if let Some(recovered) = &options.recovered {
            recovered.store(false, Ordering::Release);
        }
        handle.shutdown().await?;
        if options.failpoint_restart_pause_ms > 0 {
            tracing::warn!(pause_ms = options.failpoint_restart_pause_ms, "failpoint: restart paused");
            tokio::time::sleep(Duration::from_millis(options.failpoint_restart_pause_ms)).await;
        }
        if let Restart::Stop { why } = restart {
            return Err(NetError::Replication(why));
        }
        let directory = options.data_directory.clone();
        tokio::task::spawn_blocking(move || apply_restart(&directory, &restart))
            .await
            .map_err(|error| NetError::Shutdown(error.to_string()))??;
    }
    Err(NetError::Replication(format!("{RESTARTS_MAX} restarts in a row")))
}

/// Changes a standby's data directory as `restart` says (offline).
pub fn apply_restart(data_directory: &std::path::Path, restart: &Restart) -> Result<(), NetError> {
    use reservoir_wal::rejoin;
    match restart {
        Restart::Rewind { keep_through } => match rejoin::rewind(data_directory, Lsn(*keep_through), now_ms()) {
            Ok(report) => {
                tracing::warn!(
                    kept_through = report.kept_through.0,
                    records_cut = report.records_cut,
                    saved_in = %report.saved_in.display(),
                    "rewound the log to where the new primary's history forks from it; the cut records are saved"
                );
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "cannot rewind: setting the log aside to take a base backup instead");
                let aside = rejoin::set_aside(data_directory, now_ms())?;
                tracing::warn!(saved_in = %aside.display(), "log and snapshots set aside");
                Ok(())
            }
        },
        Restart::Stop { why } => Err(NetError::Replication(why.clone())),
        Restart::BaseBackup { snapshot } => {
            let replaced = rejoin::install_base_backup(data_directory, snapshot, now_ms())?;
            tracing::warn!(replaced = %replaced.display(), "installed a base backup from the primary; the old log and snapshots were moved aside");
            Ok(())
        }
    }
}
