//! W1 over QUIC on loopback: `reservoir bench server`. Starts a server of its own in a new
//! data directory (durable by default), loads the W1 catalog through it, then runs
//! `conns` client connections, each keeping `in_flight` requests of `batch` operations
//! outstanding, for a warm-up and a measured window. Every figure is client-side: from sending
//! a request to having its whole reply. The check at the end compares the server's final state
//! with what the clients were told: for every item, reserved = the units of the reservations
//! the clients hold open, on_hand = initial - committed units, and `verify()` holds.
//!
//! A credential reaches one tenant, so a W1 "connection" is one QUIC connection per tenant,
//! and a request carries one tenant's operations: each request picks its tenant (hot variant:
//! tenant 0 and its 10 hot SKUs for 90% of requests), then `batch` operations for it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use reservoir_engine::{ResultCode, IMPORT_ROWS_MAX};
use reservoir_net::client::{Client, ClientOptions};
use reservoir_net::replication::{FollowOptions, ReplicationMode, StartRole};
use reservoir_net::server::{Rate, ServerHandle, ServerOptions};
use reservoir_net::{Operation, OperationResult, WireImportRow, WireLine, OPERATIONS_PER_REQUEST_MAX};
use reservoir_wal::Durability;

use crate::{
    sku_name, tenant_name, BenchError, KindReport, Latency, Variant, W1Report, HOT_SKUS_MAX, LATENCY_NS_MAX,
    LINES_PER_RESERVE_MAX, LOCATION_NAME, RESERVE_TTL_MS, UNITS_PER_LINE_MAX,
};

/// Connections of one run.
pub const CONNS_MAX: usize = 256;
/// Requests in flight per connection.
pub const IN_FLIGHT_MAX: usize = 4_096;
/// Most worker threads of the runtime that runs the server, the standby and the clients.
pub const WORKERS_MAX: usize = 256;

#[derive(Clone, Debug)]
pub struct QuicSettings {
    pub variant: Variant,
    pub conns: usize,
    pub in_flight: usize,
    pub batch: usize,
    pub warmup_s: f64,
    pub window_s: f64,
    pub seed: u64,
    pub tenants: usize,
    pub skus_per_tenant: usize,
    pub initial_on_hand: i64,
    pub durability: Durability,
    /// A new or empty directory for the server's data (default: a temporary one).
    pub data_directory: Option<PathBuf>,
    /// Run the server's default snapshot policy during the run. Off by default: on 2 cores a
    /// snapshot build (a private engine replaying the log) takes one core for seconds, which
    /// would make figures depend on whether a run crossed the policy's threshold.
    pub snapshots: bool,
    /// W4: run a standby beside the primary, the primary in this mode; sample the standby's
    /// lag through the window; then stop the primary and time the promotion.
    pub replication: Option<ReplicationMode>,
    /// Offered rate (operations/s over all connections); `None`: as fast as replies come.
    pub rate_ops_per_s: Option<f64>,
    /// Worker threads of the one runtime that runs the server, the standby and the clients
    /// (2 on the 2-core reference machine; more to see how the server scales).
    pub workers: usize,
}

/// What W4 measured (`replication` runs).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicationFigures {
    pub mode: &'static str,
    pub lag_samples: u64,
    /// Lag behind the primary's durable LSN, sampled every `LAG_SAMPLE_INTERVAL_MS`.
    pub lag_records_p50: u64,
    pub lag_records_p99: u64,
    pub lag_records_max: u64,
    /// Age of the oldest record durable on the primary and not applied on the standby,
    /// counted from when it became durable (the `lag.ms` of `reservoir status`).
    pub lag_ms_p50: u64,
    pub lag_ms_p99: u64,
    pub lag_ms_max: u64,
    /// The same age counted from the record's execution (`lag.ms_since_execution`): adds the
    /// primary's own group commit (the definition of the figures before 2026-11-23, evening).
    pub lag_since_execution_ms_p50: u64,
    pub lag_since_execution_ms_p99: u64,
    pub lag_since_execution_ms_max: u64,
    /// Counted from the oldest record durable on the primary and not yet fsynced on the
    /// standby (`lag.flush_ms`).
    pub lag_flush_ms_p50: u64,
    pub lag_flush_ms_p99: u64,
    pub lag_flush_ms_max: u64,
    /// The standby had applied everything the primary had durable when the load stopped.
    pub standby_caught_up: bool,
    /// From sending `promote` to the standby until the first write on it is acknowledged.
    pub promote_to_first_write_ms: f64,
}

/// How often a W4 run samples the standby's lag.
pub const LAG_SAMPLE_INTERVAL_MS: u64 = 5;

impl Default for QuicSettings {
    /// The defaults that gave the best durable throughput on the 2-core reference machine
    /// (docs/benchmarks.md, issue #4).
    fn default() -> QuicSettings {
        QuicSettings {
            variant: Variant::Uniform,
            conns: 2,
            in_flight: 8,
            batch: 64,
            warmup_s: 2.0,
            window_s: 10.0,
            seed: 1,
            tenants: 10,
            skus_per_tenant: 10_000,
            initial_on_hand: 1_000_000,
            durability: Durability::Durable,
            data_directory: None,
            snapshots: false,
            replication: None,
            rate_ops_per_s: None,
            workers: 2,
        }
    }
}

/// A reservation a connection holds open: tenant, id, (SKU index, units) per line.
struct Open {
    id: String,
    lines: Vec<(usize, i64)>,
}

/// What one connection knows and measured.
struct Connection {
    random: Xoshiro256PlusPlus,
    next_id: u64,
    /// Open reservations per tenant, oldest first.
    open: Vec<VecDeque<Open>>,
    histograms: [Histogram<u64>; 3],
    overall: Histogram<u64>,
    counts: [[u64; 3]; 3],
    lines: u64,
    codes: BTreeMap<&'static str, u64>,
}

/// Committed units per item, shared (tenant * skus + sku).
type Committed = Arc<Mutex<Vec<i64>>>;

/// What a request asked for, to account for its reply.
enum Asked {
    Reserve(String, Vec<(usize, i64)>),
    Settle { commit: bool, open: Open },
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid bounds")
}

fn load_error(what: &str, error: impl std::fmt::Display) -> BenchError {
    BenchError::Load(format!("{what}: {error}"))
}

/// The W1 report of a run over QUIC, and the server's data directory.
pub struct QuicRun {
    pub report: W1Report,
    pub data_directory: PathBuf,
    /// The whole-run latency histogram (every operation in the window), for `--hist`.
    pub histogram: Histogram<u64>,
    pub replication: Option<ReplicationFigures>,
}

pub fn run_w1_quic(settings: &QuicSettings) -> Result<QuicRun, BenchError> {
    if settings.conns == 0 || settings.conns > CONNS_MAX {
        return Err(BenchError::Settings(format!("conns must be 1..={CONNS_MAX}")));
    }
    if settings.in_flight == 0 || settings.in_flight > IN_FLIGHT_MAX {
        return Err(BenchError::Settings(format!("in_flight must be 1..={IN_FLIGHT_MAX}")));
    }
    if settings.batch == 0 || settings.batch > OPERATIONS_PER_REQUEST_MAX {
        return Err(BenchError::Settings(format!("batch must be 1..={OPERATIONS_PER_REQUEST_MAX}")));
    }
    if settings.tenants == 0 || settings.skus_per_tenant < HOT_SKUS_MAX {
        return Err(BenchError::Settings(format!("at least 1 tenant and {HOT_SKUS_MAX} SKUs")));
    }
    if settings.workers == 0 || settings.workers > WORKERS_MAX {
        return Err(BenchError::Settings(format!("workers must be 1..={WORKERS_MAX}")));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers)
        .enable_all()
        .build()
        .map_err(|error| load_error("start a runtime", error))?;
    runtime.block_on(run(settings))
}

async fn run(settings: &QuicSettings) -> Result<QuicRun, BenchError> {
    let temporary;
    let directory = match &settings.data_directory {
        Some(directory) => directory.clone(),
        None => {
            temporary = tempfile::tempdir().map_err(|error| load_error("a temporary directory", error))?;
            temporary.path().to_owned()
        }
    };
    let loaded = start_loaded(
        &directory,
        settings.durability,
        settings.snapshots,
        settings.tenants,
        settings.skus_per_tenant,
        settings.initial_on_hand,
        settings.replication,
    )
    .await?;
    let Loaded { server, ca, address, admin, tokens, load_s, standby } = loaded;
    let connect = |token: String| {
        let mut options = ClientOptions::new(vec![address.clone()], ca.clone(), token);
        options.streams = 1;
        Client::connect(options)
    };

    // The connections: one client per tenant each.
    let mut connections = Vec::with_capacity(settings.conns);
    for conn in 0..settings.conns {
        let mut clients = Vec::with_capacity(settings.tenants);
        for token in &tokens {
            clients.push(connect(token.clone()).await.map_err(|error| load_error("connect", error))?);
        }
        let state = Arc::new(Mutex::new(Connection {
            random: Xoshiro256PlusPlus::seed_from_u64(settings.seed.wrapping_add(conn as u64)),
            next_id: 0,
            open: (0..settings.tenants).map(|_| VecDeque::new()).collect(),
            histograms: [histogram(), histogram(), histogram()],
            overall: histogram(),
            counts: [[0; 3]; 3],
            lines: 0,
            codes: BTreeMap::new(),
        }));
        connections.push((Arc::new(clients), state));
    }
    let committed: Committed = Arc::new(Mutex::new(vec![0i64; settings.tenants * settings.skus_per_tenant]));
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(settings.warmup_s);
    let end = window_start + Duration::from_secs_f64(settings.window_s);
    let mut workers = tokio::task::JoinSet::new();
    for (conn, (clients, state)) in connections.iter().enumerate() {
        for in_flight in 0..settings.in_flight {
            let slot = conn * settings.in_flight + in_flight;
            let (clients, state, committed, settings) =
                (clients.clone(), state.clone(), committed.clone(), settings.clone());
            workers.spawn(async move {
                worker(conn, slot, &clients, &state, &committed, &settings, window_start, end).await
            });
        }
    }
    // Wait for the workers; meanwhile (W4) sample the standby's lag as the primary sees it.
    let mut lag_records = Histogram::<u64>::new(3).expect("valid");
    let mut lag_ms = Histogram::<u64>::new(3).expect("valid");
    let mut lag_since_execution_ms = Histogram::<u64>::new(3).expect("valid");
    let mut lag_flush_ms = Histogram::<u64>::new(3).expect("valid");
    let mut tick = tokio::time::interval(Duration::from_millis(LAG_SAMPLE_INTERVAL_MS));
    loop {
        tokio::select! {
            outcome = workers.join_next() => match outcome {
                Some(outcome) => outcome.map_err(|error| load_error("a worker", error))??,
                None => break,
            },
            _ = tick.tick(), if standby.is_some() => {
                let now = Instant::now();
                if now >= window_start && now < end {
                    let status = server.status();
                    let lag = &status["standbys"][0]["lag"];
                    lag_records.record(lag["records"].as_u64().unwrap_or(0)).expect("in range");
                    lag_ms.record(lag["ms"].as_u64().unwrap_or(0)).expect("in range");
                    lag_since_execution_ms.record(lag["ms_since_execution"].as_u64().unwrap_or(0)).expect("in range");
                    lag_flush_ms.record(lag["flush_ms"].as_u64().unwrap_or(0)).expect("in range");
                }
            }
        }
    }
    for (clients, _) in &connections {
        for client in clients.iter() {
            client.close().await;
        }
    }
    admin.close().await;
    let replication = match standby {
        Some(standby) => {
            let lags = Lags {
                records: lag_records,
                ms: lag_ms,
                since_execution_ms: lag_since_execution_ms,
                flush_ms: lag_flush_ms,
            };
            Some(promote(standby, &server, &tokens[0], lags, settings).await?)
        }
        None => None,
    };
    let engine = server.shutdown().await.map_err(|error| load_error("shut the server down", error))?;

    // Merge, then check the ledger against what the clients were told.
    let mut histograms = [histogram(), histogram(), histogram()];
    let mut overall = histogram();
    let mut counts = [[0u64; 3]; 3];
    let mut lines = 0u64;
    let mut codes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut expected_reserved = vec![0i64; settings.tenants * settings.skus_per_tenant];
    let mut open_reservations = 0usize;
    for (_, state) in &connections {
        let state = state.lock();
        for slot in 0..3 {
            histograms[slot].add(&state.histograms[slot]).expect("same bounds");
            for (total, count) in counts[slot].iter_mut().zip(state.counts[slot]) {
                *total += count;
            }
        }
        overall.add(&state.overall).expect("same bounds");
        lines += state.lines;
        for (code, count) in &state.codes {
            *codes.entry(code).or_insert(0) += count;
        }
        for (tenant, queue) in state.open.iter().enumerate() {
            for open in queue {
                open_reservations += 1;
                for &(sku, units) in &open.lines {
                    expected_reserved[tenant * settings.skus_per_tenant + sku] += units;
                }
            }
        }
    }
    let committed = committed.lock();
    let mut failures = Vec::new();
    let report = engine.verify();
    failures.extend(report.violations.iter().cloned());
    if report.open_reservations != open_reservations {
        failures.push(format!("{} open reservations, the clients hold {open_reservations}", report.open_reservations));
    }
    for tenant in 0..settings.tenants {
        let Some(id) = engine.tenant_id(&tenant_name(tenant)) else {
            failures.push(format!("tenant {tenant} is missing"));
            continue;
        };
        for sku in 0..settings.skus_per_tenant {
            let index = tenant * settings.skus_per_tenant + sku;
            match engine.item(id, &sku_name(sku), LOCATION_NAME) {
                Some(item) => {
                    let on_hand = settings.initial_on_hand - committed[index];
                    if item.counters.reserved != expected_reserved[index]
                        || item.counters.on_hand != on_hand
                        || item.available() < 0
                    {
                        failures.push(format!(
                            "tenant {tenant} {}: reserved {} on_hand {}, the clients expect {} and {on_hand}",
                            sku_name(sku),
                            item.counters.reserved,
                            item.counters.on_hand,
                            expected_reserved[index]
                        ));
                    }
                }
                None => failures.push(format!("tenant {tenant} {} is missing", sku_name(sku))),
            }
        }
    }
    let failure_count = failures.len();
    failures.truncate(crate::CHECK_FAILURES_LISTED_MAX);
    let kind = |slot: usize| KindReport {
        ok: counts[slot][0],
        fail: counts[slot][1],
        err: counts[slot][2],
        lat: Latency::of(&histograms[slot]),
    };
    let (reserve, commit, release) = (kind(0), kind(1), kind(2));
    let ops = reserve.ops() + commit.ops() + release.ops();
    let report = W1Report {
        workload: "W1",
        variant: settings.variant,
        durability: settings.durability.name(),
        conns: settings.conns,
        in_flight: settings.in_flight,
        batch: settings.batch,
        window_s: settings.window_s,
        ops_per_s: ops as f64 / settings.window_s,
        lines_per_s: lines as f64 / settings.window_s,
        errors: reserve.err + commit.err + release.err,
        lat: Latency::of(&overall),
        reserve,
        commit,
        release,
        check_ok: failure_count == 0,
        warmup_s: settings.warmup_s,
        seed: settings.seed,
        tenants: settings.tenants,
        skus_per_tenant: settings.skus_per_tenant,
        initial_on_hand: settings.initial_on_hand,
        load_s,
        ops_total: ops,
        codes,
        open_reservations,
        check_failures: failures,
        check_failure_count: failure_count,
        rss_loaded_bytes: None,
        rss_end_bytes: crate::resident_bytes(),
        wal: None,
    };
    Ok(QuicRun { report, data_directory: directory, histogram: overall, replication })
}

/// A W4 standby: its directory, address, admin token, and its `run` task.
pub(crate) struct Standby {
    _directory: tempfile::TempDir,
    address: String,
    ca: Vec<u8>,
    admin_token: String,
    mode: ReplicationMode,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<reservoir_engine::Engine, reservoir_net::NetError>>,
}

/// Starts a standby of the primary at `primary_address` (with the primary's TLS files) and
/// waits until it has applied everything the primary holds.
async fn start_standby(
    primary_directory: &std::path::Path,
    primary_address: &str,
    replication_token: &str,
    admin_token: &str,
    ca: &[u8],
    mode: ReplicationMode,
    primary: &reservoir_net::server::ServerHandle,
) -> Result<Standby, BenchError> {
    let directory = tempfile::tempdir().map_err(|error| load_error("a standby directory", error))?;
    let tls = directory.path().join("tls");
    std::fs::create_dir_all(&tls).map_err(|error| load_error("a standby directory", error))?;
    for entry in std::fs::read_dir(primary_directory.join("tls")).map_err(|error| load_error("tls", error))? {
        let entry = entry.map_err(|error| load_error("tls", error))?;
        std::fs::copy(entry.path(), tls.join(entry.file_name())).map_err(|error| load_error("tls", error))?;
    }
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map_err(|error| load_error("a port", error))?
        .port();
    let mut options = ServerOptions::new(directory.path().to_owned());
    options.listen = format!("127.0.0.1:{port}").parse().expect("an address");
    options.rate_default = Rate { operations_per_second: u32::MAX, burst: u32::MAX };
    options.snapshot.every_records = 0;
    options.snapshot.every_ms = 0;
    options.replication.mode = mode;
    // Alone once promoted: acknowledge after its own fsync rather than wait for a standby.
    options.replication.sync_fallback_ms = Some(0);
    options.role = StartRole::Standby(FollowOptions {
        primary: primary_address.to_owned(),
        token: replication_token.to_owned(),
        ca_pem: ca.to_vec(),
        token_file: None,
        server_name: None,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(reservoir_net::server::run(
        options,
        async move {
            let _ = stopped.await;
        },
        |_| {},
    ));
    let standby = Standby {
        _directory: directory,
        address: format!("127.0.0.1:{port}"),
        ca: ca.to_vec(),
        admin_token: admin_token.to_owned(),
        mode,
        stop,
        task,
    };
    let target = primary.status()["durable_lsn"].as_u64().unwrap_or(0);
    wait_caught_up(&standby, target).await?;
    Ok(standby)
}

async fn standby_status(standby: &Standby) -> Option<serde_json::Value> {
    let mut options =
        ClientOptions::new(vec![standby.address.clone()], standby.ca.clone(), standby.admin_token.clone());
    options.request_timeout_ms = 2_000;
    let client = Client::connect(options).await.ok()?;
    let reply = client.request(vec![Operation::Status]).await.ok();
    client.close().await;
    match &reply?.results[0] {
        OperationResult::Status(Ok(document)) => serde_json::from_str(document).ok(),
        _ => None,
    }
}

/// How long a standby may take to catch up before the figures are called off.
const CATCH_UP_WAIT_MS_MAX: u64 = 120_000;

async fn wait_caught_up(standby: &Standby, target: u64) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_millis(CATCH_UP_WAIT_MS_MAX);
    loop {
        if let Some(status) = standby_status(standby).await {
            if status["applied_lsn"].as_u64().unwrap_or(0) >= target {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Load(format!("the standby did not reach LSN {target}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// p50, p99 and max of a histogram of lag samples.
fn summary(histogram: &Histogram<u64>) -> [u64; 3] {
    [percentile(histogram, 0.5), percentile(histogram, 0.99), histogram.max()]
}

fn percentile(histogram: &Histogram<u64>, quantile: f64) -> u64 {
    if histogram.is_empty() {
        0
    } else {
        histogram.value_at_quantile(quantile)
    }
}

/// The lag samples of a W4 window.
struct Lags {
    records: Histogram<u64>,
    ms: Histogram<u64>,
    since_execution_ms: Histogram<u64>,
    flush_ms: Histogram<u64>,
}

/// After the window: the standby catches up, the primary stops taking writes (as if lost),
/// and the standby is promoted; times the promotion to the first acknowledged write.
async fn promote(
    standby: Standby,
    primary: &reservoir_net::server::ServerHandle,
    tenant_token: &str,
    lags: Lags,
    _settings: &QuicSettings,
) -> Result<ReplicationFigures, BenchError> {
    let target = primary.status()["durable_lsn"].as_u64().unwrap_or(0);
    let caught_up = wait_caught_up(&standby, target).await.is_ok();
    let connect = |token: &str| {
        let mut options = ClientOptions::new(vec![standby.address.clone()], standby.ca.clone(), token.to_owned());
        options.streams = 1;
        Client::connect(options)
    };
    let admin = connect(&standby.admin_token).await.map_err(|error| load_error("connect to the standby", error))?;
    let writer = connect(tenant_token).await.map_err(|error| load_error("connect to the standby", error))?;
    let started = Instant::now();
    let reply = admin.request(vec![Operation::Promote]).await.map_err(|error| load_error("promote", error))?;
    if reply.results[0].code() != ResultCode::Ok {
        return Err(BenchError::Load(format!("promote: {}", reply.results[0].code().name())));
    }
    let write = Operation::Receive {
        operation: "w4-first-write".into(),
        sku: sku_name(0),
        location: LOCATION_NAME.into(),
        quantity: 1,
    };
    let reply = writer.request(vec![write]).await.map_err(|error| load_error("first write", error))?;
    let promote_ms = started.elapsed().as_secs_f64() * 1_000.0;
    if reply.results[0].code() != ResultCode::Ok {
        return Err(BenchError::Load(format!("first write: {}", reply.results[0].code().name())));
    }
    admin.close().await;
    writer.close().await;
    let _ = standby.stop.send(());
    let engine = standby
        .task
        .await
        .map_err(|error| load_error("the standby", error))?
        .map_err(|error| load_error("the standby", error))?;
    if !engine.verify().violations.is_empty() {
        return Err(BenchError::Load("the promoted standby's ledger does not verify".into()));
    }
    let [lag_records_p50, lag_records_p99, lag_records_max] = summary(&lags.records);
    let [lag_ms_p50, lag_ms_p99, lag_ms_max] = summary(&lags.ms);
    let [lag_since_execution_ms_p50, lag_since_execution_ms_p99, lag_since_execution_ms_max] =
        summary(&lags.since_execution_ms);
    let [lag_flush_ms_p50, lag_flush_ms_p99, lag_flush_ms_max] = summary(&lags.flush_ms);
    Ok(ReplicationFigures {
        mode: standby.mode.name(),
        lag_samples: lags.records.len(),
        lag_records_p50,
        lag_records_p99,
        lag_records_max,
        lag_ms_p50,
        lag_ms_p99,
        lag_ms_max,
        lag_since_execution_ms_p50,
        lag_since_execution_ms_p99,
        lag_since_execution_ms_max,
        lag_flush_ms_p50,
        lag_flush_ms_p99,
        lag_flush_ms_max,
        standby_caught_up: caught_up,
        promote_to_first_write_ms: promote_ms,
    })
}

/// A server with W1's catalog loaded through it, for the benchmarks that drive it.
pub(crate) struct Loaded {
    pub server: ServerHandle,
    pub ca: Vec<u8>,
    pub address: String,
    /// An admin connection.
    pub admin: Client,
    /// One token per tenant (`tenant_name(index)`).
    pub tokens: Vec<String>,
    pub load_s: f64,
    /// W4: a standby that followed the load.
    pub(crate) standby: Option<Standby>,
}

/// Starts a server in `directory` (no tenant rate; the snapshot policy only with `snapshots`)
/// and loads W1's catalog through it: `tenants` tenants with a token each, `skus_per_tenant`
/// items each at `LOCATION_NAME` with `initial_on_hand`.
pub(crate) async fn start_loaded(
    directory: &std::path::Path,
    durability: Durability,
    snapshots: bool,
    tenants: usize,
    skus_per_tenant: usize,
    initial_on_hand: i64,
    replication: Option<ReplicationMode>,
) -> Result<Loaded, BenchError> {
    let mut options = ServerOptions::new(directory.to_owned());
    options.listen = "127.0.0.1:0".parse().expect("an address");
    options.durability = durability;
    if let Some(mode) = replication {
        options.replication.mode = mode;
    }
    // The bench measures capacity: no tenant rate applies.
    options.rate_default = Rate { operations_per_second: u32::MAX, burst: u32::MAX };
    if !snapshots {
        options.snapshot.every_records = 0;
        options.snapshot.every_ms = 0;
    }
    let server = reservoir_net::server::start(options).await.map_err(|error| load_error("start the server", error))?;
    let first =
        server.first_start().cloned().ok_or_else(|| BenchError::Load("the data directory is not new".into()))?;
    let ca = std::fs::read(reservoir_net::tls::ca_path(directory)).map_err(|error| load_error("read the CA", error))?;
    let address = server.local_addr().to_string();
    let connect = |token: String| {
        let mut options = ClientOptions::new(vec![address.clone()], ca.clone(), token);
        options.streams = 1;
        Client::connect(options)
    };

    // W4: a standby from the start (a sync primary acknowledges nothing without one).
    let standby = match replication {
        Some(mode) => Some(
            start_standby(directory, &address, &first.replication_token, &first.admin_token, &ca, mode, &server)
                .await?,
        ),
        None => None,
    };

    // Tenants, tokens and the catalog, through the server.
    let load_started = Instant::now();
    let admin = connect(first.admin_token.clone()).await.map_err(|error| load_error("connect as admin", error))?;
    let mut tokens = Vec::with_capacity(tenants);
    for index in 0..tenants {
        let name = tenant_name(index);
        let reply = admin
            .request(vec![
                Operation::CreateTenant { name: name.clone() },
                Operation::IssueToken { tenant: name.clone(), revoke_others: false },
            ])
            .await
            .map_err(|error| load_error("create a tenant", error))?;
        match &reply.results[1] {
            OperationResult::Token(Ok(token)) => tokens.push(token.clone()),
            other => return Err(BenchError::Load(format!("issue a token for {name}: {other:?}"))),
        }
    }
    for (index, token) in tokens.iter().enumerate() {
        let client = connect(token.clone()).await.map_err(|error| load_error("connect", error))?;
        for (chunk_index, chunk) in (0..skus_per_tenant).collect::<Vec<_>>().chunks(IMPORT_ROWS_MAX).enumerate() {
            let rows = chunk
                .iter()
                .map(|&sku| WireImportRow {
                    sku: sku_name(sku),
                    location: LOCATION_NAME.into(),
                    on_hand: initial_on_hand,
                    safety_stock: None,
                    backorder_limit: None,
                })
                .collect();
            let operation = Operation::Import { operation: format!("load-{index}-{chunk_index}"), rows };
            let reply = client.request(vec![operation]).await.map_err(|error| load_error("import", error))?;
            if reply.results[0].code() != ResultCode::Ok {
                return Err(BenchError::Load(format!("import: {}", reply.results[0].code().name())));
            }
        }
        client.close().await;
    }
    let load_s = load_started.elapsed().as_secs_f64();
    debug_assert_eq!(tokens.len(), tenants);
    Ok(Loaded { server, ca, address, admin, tokens, load_s, standby })
}

/// One request slot of a connection: build a request, send it, account for its reply; until
/// the window ends.
#[allow(clippy::too_many_arguments)]
async fn worker(
    conn: usize,
    slot: usize,
    clients: &[Client],
    state: &Mutex<Connection>,
    committed: &Mutex<Vec<i64>>,
    settings: &QuicSettings,
    window_start: Instant,
    end: Instant,
) -> Result<(), BenchError> {
    // Open-loop pacing: with an offered rate, each request slot sends on its own schedule.
    let slots = (settings.conns * settings.in_flight) as f64;
    let interval =
        settings.rate_ops_per_s.map(|rate| Duration::from_secs_f64(settings.batch as f64 * slots / rate.max(1.0)));
    // Slots start staggered over one interval, so that the offered load is even rather than
    // bursts of every slot at once (which queue behind each other and measure the burst).
    let mut next_send =
        Instant::now() + interval.map_or(Duration::ZERO, |interval| interval * slot as u32 / slots as u32);
    while Instant::now() < end {
        // Open loop: a request that is late because its slot was still waiting for the previous
        // reply counts from when it was due, so a server that falls behind is charged for the
        // wait (no coordinated omission); one that waited for its time counts from when the
        // timer woke it (tokio's timers are 1 ms coarse: that lateness is the client's).
        let mut due = None;
        if let Some(interval) = interval {
            if Instant::now() < next_send {
                tokio::time::sleep_until(next_send.into()).await;
            } else {
                due = Some(next_send);
            }
            next_send += interval;
        }
        let (tenant, operations, asked) = {
            let mut state = state.lock();
            let state = &mut *state;
            let hot = settings.variant == Variant::Hot && state.random.gen_range(0..100) < 90;
            let tenant = if hot { 0 } else { state.random.gen_range(0..settings.tenants) };
            let mut operations = Vec::with_capacity(settings.batch);
            let mut asked = Vec::with_capacity(settings.batch);
            for _ in 0..settings.batch {
                let roll = state.random.gen_range(0..100);
                let settle =
                    if roll < 70 { None } else { state.open[tenant].pop_front().map(|open| (roll < 90, open)) };
                match settle {
                    Some((commit, open)) => {
                        state.next_id += 1;
                        let operation = format!("c{conn}-s{}", state.next_id);
                        let reservation = open.id.clone();
                        operations.push(if commit {
                            Operation::Commit { operation, reservation, lines: None }
                        } else {
                            Operation::Release { operation, reservation, lines: None }
                        });
                        asked.push(Asked::Settle { commit, open });
                    }
                    None => {
                        state.next_id += 1;
                        let id = format!("c{conn}-r{}", state.next_id);
                        let count = state.random.gen_range(1..=LINES_PER_RESERVE_MAX);
                        let mut lines = Vec::with_capacity(count);
                        for _ in 0..count {
                            let sku = if hot {
                                state.random.gen_range(0..HOT_SKUS_MAX)
                            } else {
                                state.random.gen_range(0..settings.skus_per_tenant)
                            };
                            lines.push((sku, state.random.gen_range(1..=UNITS_PER_LINE_MAX)));
                        }
                        operations.push(Operation::Reserve {
                            reservation: id.clone(),
                            ttl_ms: RESERVE_TTL_MS,
                            allow_partial: false,
                            lines: lines
                                .iter()
                                .map(|&(sku, units)| WireLine {
                                    sku: sku_name(sku),
                                    location: LOCATION_NAME.into(),
                                    quantity: units,
                                })
                                .collect(),
                        });
                        asked.push(Asked::Reserve(id, lines));
                    }
                }
            }
            (tenant, operations, asked)
        };
        let sent = due.unwrap_or_else(Instant::now);
        let reply = clients[tenant].request(operations).await.map_err(|error| load_error("a request", error))?;
        let done = Instant::now();
        let in_window = sent >= window_start && sent < end;
        let latency_ns = (done - sent).as_nanos().min(u128::from(LATENCY_NS_MAX)) as u64;
        let mut state = state.lock();
        let state = &mut *state;
        for (asked, result) in asked.into_iter().zip(&reply.results) {
            let code = result.code();
            let (slot, lines) = match asked {
                Asked::Reserve(id, lines) => {
                    let count = lines.len() as u64;
                    if code == ResultCode::Ok {
                        state.open[tenant].push_back(Open { id, lines });
                    }
                    (0, count)
                }
                Asked::Settle { commit, open } => {
                    let count = open.lines.len() as u64;
                    if code.is_ok() && commit {
                        let mut committed = committed.lock();
                        for &(sku, units) in &open.lines {
                            committed[tenant * settings.skus_per_tenant + sku] += units;
                        }
                    } else if !code.is_ok() {
                        // Not settled: it is still open on the server.
                        state.open[tenant].push_front(open);
                    }
                    (if commit { 1 } else { 2 }, count)
                }
            };
            if in_window {
                let outcome = match code {
                    code if code.is_ok() => 0,
                    ResultCode::InsufficientStock => 1,
                    _ => 2,
                };
                state.counts[slot][outcome] += 1;
                if !code.is_ok() {
                    *state.codes.entry(code.name()).or_insert(0) += 1;
                }
                state.lines += lines;
                state.histograms[slot].record(latency_ns.max(1)).expect("within bounds");
                state.overall.record(latency_ns.max(1)).expect("within bounds");
            }
        }
    }
    Ok(())
}

/// HdrHistogram's percentile distribution (the text `--hist FILE` writes), in microseconds.
pub fn percentile_distribution(histogram: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for step in histogram.iter_quantiles(5) {
        let percentile = step.percentile() / 100.0;
        let inverse = if percentile < 1.0 { 1.0 / (1.0 - percentile) } else { f64::INFINITY };
        out.push_str(&format!(
            "{:12.3} {:14.12} {:10} {:14.2}\n",
            step.value_iterated_to() as f64 / 1_000.0,
            percentile,
            step.count_since_last_iteration(),
            inverse
        ));
    }
    out.push_str(&format!(
        "#[Mean = {:.3}, StdDeviation = {:.3}]\n#[Max = {:.3}, Total count = {}]\n",
        histogram.mean() / 1_000.0,
        histogram.stdev() / 1_000.0,
        histogram.max() as f64 / 1_000.0,
        histogram.len()
    ));
    out
}

/// A latency-by-percentile plot as SVG (log scale of 1/(1-p), as HdrHistogram plots are).
pub fn latency_svg(histogram: &Histogram<u64>, title: &str) -> String {
    const WIDTH: f64 = 800.0;
    const HEIGHT: f64 = 400.0;
    const MARGIN: f64 = 60.0;
    let points: Vec<(f64, f64)> = [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0]
        .iter()
        .map(|&quantile: &f64| {
            let x = (1.0 / (1.0 - quantile.min(0.99999))).log10();
            (x, histogram.value_at_quantile(quantile) as f64 / 1_000.0)
        })
        .collect();
    let x_max = points.iter().map(|point| point.0).fold(1.0, f64::max);
    let y_max = points.iter().map(|point| point.1).fold(1.0, f64::max) * 1.1;
    let to_screen = |(x, y): (f64, f64)| {
        (MARGIN + x / x_max * (WIDTH - 2.0 * MARGIN), HEIGHT - MARGIN - y / y_max * (HEIGHT - 2.0 * MARGIN))
    };
    let path: Vec<String> = points
        .iter()
        .map(|&point| {
            let (x, y) = to_screen(point);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{MARGIN}\" y=\"24\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{MARGIN}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{MARGIN}\" y1=\"{MARGIN}\" x2=\"{MARGIN}\" y2=\"{}\" stroke=\"black\"/>\n\
         <polyline fill=\"none\" stroke=\"steelblue\" stroke-width=\"2\" points=\"{}\"/>\n",
        HEIGHT - MARGIN,
        WIDTH - MARGIN,
        HEIGHT - MARGIN,
        HEIGHT - MARGIN,
        path.join(" ")
    );
    for (label, quantile) in [("p50", 0.5f64), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999)] {
        let x = (1.0 / (1.0 - quantile)).log10();
        let (sx, _) = to_screen((x, 0.0));
        svg.push_str(&format!(
            "<text x=\"{sx:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            HEIGHT - MARGIN + 18.0
        ));
    }
    for step in 0..=4 {
        let value = y_max * f64::from(step) / 4.0;
        let (_, sy) = to_screen((0.0, value));
        svg.push_str(&format!("<text x=\"{}\" y=\"{sy:.1}\" text-anchor=\"end\">{value:.0} µs</text>\n", MARGIN - 6.0));
    }
    svg.push_str("</svg>\n");
    svg
}
