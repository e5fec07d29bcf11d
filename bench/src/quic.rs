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
}

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
    )
    .await?;
    let Loaded { server, ca, address, admin, tokens, load_s } = loaded;
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
        for _ in 0..settings.in_flight {
            let (clients, state, committed, settings) =
                (clients.clone(), state.clone(), committed.clone(), settings.clone());
            workers
                .spawn(async move { worker(conn, &clients, &state, &committed, &settings, window_start, end).await });
        }
    }
    while let Some(outcome) = workers.join_next().await {
        outcome.map_err(|error| load_error("a worker", error))??;
    }
    for (clients, _) in &connections {
        for client in clients.iter() {
            client.close().await;
        }
    }
    admin.close().await;
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
    Ok(QuicRun { report, data_directory: directory, histogram: overall })
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
) -> Result<Loaded, BenchError> {
    let mut options = ServerOptions::new(directory.to_owned());
    options.listen = "127.0.0.1:0".parse().expect("an address");
    options.durability = durability;
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
    Ok(Loaded { server, ca, address, admin, tokens, load_s })
}

/// One request slot of a connection: build a request, send it, account for its reply; until
/// the window ends.
async fn worker(
    conn: usize,
    clients: &[Client],
    state: &Mutex<Connection>,
    committed: &Mutex<Vec<i64>>,
    settings: &QuicSettings,
    window_start: Instant,
    end: Instant,
) -> Result<(), BenchError> {
    while Instant::now() < end {
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
        let sent = Instant::now();
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
