//! W1 through the HTTP gateway: `reservoir bench gateway`. Starts a server (durable by
//! default) and a gateway in front of it, both in this process on loopback, loads W1's catalog
//! (shared/workload.md) through the server, then drives W1's order flow over HTTP/1.1: every
//! request is one scan (one operation: a reserve, or the commit or release of the oldest
//! reservation its connection holds open), on `conns` keep-alive connections.
//!
//! Two phases, each a warm-up and a measured window:
//! 1. **capacity** (closed loop): every connection sends its next request when the last is
//!    answered; scans/s is what the window completed.
//! 2. **half rate** (open loop): requests are scheduled at `rate_fraction` (1/2) of that
//!    capacity, at fixed intervals, whatever the answers do, on twice as many connections;
//!    latency runs from the scheduled time when a request starts late because its connection was
//!    busy (no coordinated omission), else from when it was sent.
//!
//! The load generator shares the machine's cores with the gateway and the server.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use reservoir_net::gateway::api::IDEMPOTENCY_KEY_HEADER;
use reservoir_net::gateway::GatewayOptions;
use reservoir_wal::Durability;
use serde::Serialize;

use crate::quic::{start_loaded, Loaded};
use crate::{
    sku_name, tenant_name, BenchError, Latency, HOT_SKUS_MAX, LATENCY_NS_MAX, LINES_PER_RESERVE_MAX, LOCATION_NAME,
    RESERVE_TTL_MS, UNITS_PER_LINE_MAX,
};

/// HTTP connections of one phase.
pub const GATEWAY_CONNS_MAX: usize = 512;
/// Requests one connection may send in a run (a safety bound; the clock stops a run first).
const REQUESTS_PER_CONNECTION_MAX: u64 = 1 << 32;

#[derive(Clone, Debug)]
pub struct GatewaySettings {
    /// Connections of the capacity phase (the half-rate phase uses twice as many).
    pub conns: usize,
    pub warmup_s: f64,
    pub window_s: f64,
    pub seed: u64,
    pub tenants: usize,
    pub skus_per_tenant: usize,
    pub initial_on_hand: i64,
    pub durability: Durability,
    /// The open-loop rate as a fraction of the measured capacity.
    pub rate_fraction: f64,
    pub data_directory: Option<PathBuf>,
}

impl Default for GatewaySettings {
    /// 128 connections: the most scans/s on the 2-core reference machine (docs/benchmarks.md,
    /// issue #6: 64 gave 11% less, 256 9% less).
    fn default() -> GatewaySettings {
        GatewaySettings {
            conns: 128,
            warmup_s: 2.0,
            window_s: 10.0,
            seed: 1,
            tenants: 10,
            skus_per_tenant: 10_000,
            initial_on_hand: 1_000_000,
            durability: Durability::Durable,
            rate_fraction: 0.5,
            data_directory: None,
        }
    }
}

/// One phase's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    pub conns: usize,
    /// The scheduled rate (open loop); 0 for the closed loop.
    pub rate_per_s: f64,
    /// Scans answered in the window, per second.
    pub scans_per_s: f64,
    /// Answers other than 200, by HTTP status.
    pub errors: BTreeMap<u16, u64>,
    pub lat: Latency,
}

#[derive(Clone, Debug, Serialize)]
pub struct GatewayReport {
    pub workload: &'static str,
    pub via: &'static str,
    pub durability: &'static str,
    pub window_s: f64,
    pub warmup_s: f64,
    pub tenants: usize,
    pub skus_per_tenant: usize,
    pub load_s: f64,
    pub capacity: PhaseReport,
    pub half_rate: PhaseReport,
    /// The engine's invariants hold and its open reservations are the ones the clients hold.
    pub check_ok: bool,
    pub check_failures: Vec<String>,
}

impl GatewayReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn render_table(&self) -> String {
        let mut out = format!(
            "W1 uniform through the HTTP gateway, {}: {} tenants x {} SKUs (loaded in {:.1} s), {:.0} s window\n",
            self.durability, self.tenants, self.skus_per_tenant, self.load_s, self.window_s
        );
        out.push_str(&format!(
            "{:<10} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}  errors\n",
            "phase", "conns", "rate/s", "scans/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
        ));
        for (name, phase) in [("capacity", &self.capacity), ("half rate", &self.half_rate)] {
            out.push_str(&format!(
                "{:<10} {:>6} {:>10.0} {:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}  {:?}\n",
                name,
                phase.conns,
                phase.rate_per_s,
                phase.scans_per_s,
                phase.lat.p50_us,
                phase.lat.p99_us,
                phase.lat.p999_us,
                phase.lat.max_us,
                phase.errors
            ));
        }
        out.push_str(&format!("check: {}\n", if self.check_ok { "ok".into() } else { self.check_failures.join("; ") }));
        out
    }
}

fn setup_error(what: &str, error: impl std::fmt::Display) -> BenchError {
    BenchError::Load(format!("{what}: {error}"))
}

pub fn run_w1_gateway(settings: &GatewaySettings) -> Result<GatewayReport, BenchError> {
    if settings.conns == 0 || settings.conns * 2 > GATEWAY_CONNS_MAX {
        return Err(BenchError::Settings(format!("conns must be 1..={}", GATEWAY_CONNS_MAX / 2)));
    }
    if settings.tenants == 0 || settings.skus_per_tenant < HOT_SKUS_MAX {
        return Err(BenchError::Settings(format!("at least 1 tenant and {HOT_SKUS_MAX} SKUs")));
    }
    if !(settings.rate_fraction > 0.0 && settings.rate_fraction <= 1.0) || settings.window_s <= 0.0 {
        return Err(BenchError::Settings("rate_fraction in (0, 1] and a window above 0".into()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| setup_error("start a runtime", error))?;
    runtime.block_on(run(settings))
}

/// What a connection's next request asked, to account for its answer.
enum Asked {
    Reserve { tenant: usize, id: String },
    Settle { tenant: usize, id: String },
}

/// One HTTP connection and the W1 state of its client.
struct Connection {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    random: Xoshiro256PlusPlus,
    name: String,
    next_id: u64,
    /// Open reservation ids per tenant, oldest first.
    open: Vec<VecDeque<String>>,
}

/// What every connection shares.
struct Shared {
    address: std::net::SocketAddr,
    tokens: Vec<String>,
    skus_per_tenant: usize,
}

/// What a phase measured.
struct Measured {
    histogram: Histogram<u64>,
    answered: u64,
    errors: BTreeMap<u16, u64>,
}

impl Measured {
    fn new() -> Measured {
        Measured {
            histogram: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid bounds"),
            answered: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Connection {
    async fn open(shared: &Shared, name: String, seed: u64, tenants: usize) -> Result<Connection, BenchError> {
        Ok(Connection {
            send: Self::connect(shared).await?,
            random: Xoshiro256PlusPlus::seed_from_u64(seed),
            name,
            next_id: 0,
            open: (0..tenants).map(|_| VecDeque::new()).collect(),
        })
    }

    /// A new HTTP/1.1 keep-alive connection to the gateway.
    async fn connect(shared: &Shared) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, BenchError> {
        let stream =
            tokio::net::TcpStream::connect(shared.address).await.map_err(|error| setup_error("connect", error))?;
        stream.set_nodelay(true).map_err(|error| setup_error("nodelay", error))?;
        let (send, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|error| setup_error("HTTP handshake", error))?;
        tokio::spawn(connection);
        Ok(send)
    }

    /// The next W1 scan: a reserve (70%, or when nothing is open), else the commit (20%) or
    /// release (10%) of the oldest open reservation of a tenant.
    fn next_request(&mut self, shared: &Shared) -> (hyper::Request<Full<Bytes>>, Asked) {
        self.next_id += 1;
        let tenant = self.random.gen_range(0..shared.tokens.len());
        let roll = self.random.gen_range(0..100);
        let settle = if roll < 70 { None } else { self.open[tenant].pop_front().map(|id| (roll < 90, id)) };
        let (path, key, body, asked) = match settle {
            Some((commit, id)) => (
                format!(
                    "/v1/tenants/{}/reservations/{id}/{}",
                    tenant_name(tenant),
                    if commit { "commit" } else { "release" }
                ),
                format!("{}-s{}", self.name, self.next_id),
                String::new(),
                Asked::Settle { tenant, id },
            ),
            None => {
                let id = format!("{}-r{}", self.name, self.next_id);
                let count = self.random.gen_range(1..=LINES_PER_RESERVE_MAX);
                let lines: Vec<String> = (0..count)
                    .map(|_| {
                        let sku = self.random.gen_range(0..shared.skus_per_tenant);
                        let quantity = self.random.gen_range(1..=UNITS_PER_LINE_MAX);
                        format!(r#"{{"sku":"{}","location":"{LOCATION_NAME}","quantity":{quantity}}}"#, sku_name(sku))
                    })
                    .collect();
                let body = format!(r#"{{"ttl_ms":{RESERVE_TTL_MS},"lines":[{}]}}"#, lines.join(","));
                (
                    format!("/v1/tenants/{}/reservations", tenant_name(tenant)),
                    id.clone(),
                    body,
                    Asked::Reserve { tenant, id },
                )
            }
        };
        let request = hyper::Request::post(path)
            .header("host", "gateway")
            .header("authorization", format!("Bearer {}", shared.tokens[tenant]))
            .header(IDEMPOTENCY_KEY_HEADER, key)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a well-formed request");
        (request, asked)
    }

    /// Sends one scan and reads its whole answer; the HTTP status.
    async fn scan(&mut self, shared: &Shared) -> Result<u16, BenchError> {
        let (request, asked) = self.next_request(shared);
        // The gateway closes a keep-alive connection idle for `HEADER_READ_TIMEOUT_MS` (the
        // spare connections of the half-rate phase wait through the capacity phase): open a
        // new one, as an HTTP client's pool does. Nothing was sent on the closed one.
        if self.send.ready().await.is_err() {
            self.send = Self::connect(shared).await?;
            self.send.ready().await.map_err(|error| setup_error("connection", error))?;
        }
        let response = self.send.send_request(request).await.map_err(|error| setup_error("request", error))?;
        let status = response.status().as_u16();
        response.into_body().collect().await.map_err(|error| setup_error("answer", error))?;
        match asked {
            Asked::Reserve { tenant, id } if status == 200 => self.open[tenant].push_back(id),
            Asked::Settle { tenant, id } if status != 200 => self.open[tenant].push_front(id),
            _ => {}
        }
        Ok(status)
    }
}

/// How requests are paced.
#[derive(Clone, Copy)]
enum Pace {
    /// Each connection sends when its last answer came.
    Closed,
    /// Request `i` is due at `start + i / rate`.
    Open { rate_per_s: f64 },
}

async fn phase(
    shared: &Arc<Shared>,
    connections: Vec<Connection>,
    pace: Pace,
    warmup_s: f64,
    window_s: f64,
) -> Result<(Measured, Vec<Connection>), BenchError> {
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(warmup_s);
    let end = window_start + Duration::from_secs_f64(window_s);
    let measured = Arc::new(Mutex::new(Measured::new()));
    let next_slot = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for mut connection in connections {
        let (shared, measured, next_slot) = (shared.clone(), measured.clone(), next_slot.clone());
        tasks.spawn(async move {
            for _ in 0..REQUESTS_PER_CONNECTION_MAX {
                let began = match pace {
                    Pace::Closed => Instant::now(),
                    Pace::Open { rate_per_s } => {
                        let slot = next_slot.fetch_add(1, Ordering::Relaxed);
                        let due = start + Duration::from_secs_f64(slot as f64 / rate_per_s);
                        if due >= end {
                            break;
                        }
                        if Instant::now() < due {
                            tokio::time::sleep_until(due.into()).await;
                            Instant::now()
                        } else {
                            due // late because this connection was busy: its wait counts
                        }
                    }
                };
                if began >= end {
                    break;
                }
                let status = connection.scan(&shared).await?;
                let latency_ns = began.elapsed().as_nanos().min(u128::from(LATENCY_NS_MAX)) as u64;
                if began >= window_start {
                    let mut measured = measured.lock();
                    measured.answered += 1;
                    measured.histogram.record(latency_ns.max(1)).expect("within bounds");
                    if status != 200 {
                        *measured.errors.entry(status).or_insert(0) += 1;
                    }
                }
            }
            Ok::<Connection, BenchError>(connection)
        });
    }
    let mut connections = Vec::new();
    while let Some(outcome) = tasks.join_next().await {
        connections.push(outcome.map_err(|error| setup_error("a connection", error))??);
    }
    let measured = std::mem::replace(&mut *measured.lock(), Measured::new());
    Ok((measured, connections))
}

async fn run(settings: &GatewaySettings) -> Result<GatewayReport, BenchError> {
    let temporary;
    let directory = match &settings.data_directory {
        Some(directory) => directory.clone(),
        None => {
            temporary = tempfile::tempdir().map_err(|error| setup_error("a temporary directory", error))?;
            temporary.path().to_owned()
        }
    };
    let Loaded { server, ca, address, admin, tokens, load_s, .. } = start_loaded(
        &directory,
        settings.durability,
        false,
        settings.tenants,
        settings.skus_per_tenant,
        settings.initial_on_hand,
        None,
    )
    .await?;
    admin.close().await;
    let mut options = GatewayOptions::new(ca);
    options.listen = "127.0.0.1:0".parse().expect("an address");
    options.upstreams = vec![address];
    let gateway =
        reservoir_net::gateway::start(options).await.map_err(|error| setup_error("start the gateway", error))?;
    let shared = Arc::new(Shared { address: gateway.local_addr(), tokens, skus_per_tenant: settings.skus_per_tenant });

    let mut connections = Vec::new();
    for index in 0..settings.conns * 2 {
        let seed = settings.seed.wrapping_add(index as u64);
        connections.push(Connection::open(&shared, format!("c{index}"), seed, settings.tenants).await?);
    }
    let spare = connections.split_off(settings.conns);
    let (capacity, mut connections) =
        phase(&shared, connections, Pace::Closed, settings.warmup_s, settings.window_s).await?;
    let scans_per_s = capacity.answered as f64 / settings.window_s;
    let rate_per_s = (scans_per_s * settings.rate_fraction).max(1.0);
    connections.extend(spare);
    let half_warmup_s = settings.warmup_s.min(1.0);
    let (half, connections) =
        phase(&shared, connections, Pace::Open { rate_per_s }, half_warmup_s, settings.window_s).await?;

    let held: usize =
        connections.iter().map(|connection| connection.open.iter().map(VecDeque::len).sum::<usize>()).sum();
    drop(connections);
    gateway.shutdown().await.map_err(|error| setup_error("stop the gateway", error))?;
    let engine = server.shutdown().await.map_err(|error| setup_error("stop the server", error))?;
    let verify = engine.verify();
    let mut check_failures = verify.violations.clone();
    if verify.open_reservations != held {
        check_failures.push(format!("{} open reservations, the clients hold {held}", verify.open_reservations));
    }
    check_failures.truncate(crate::CHECK_FAILURES_LISTED_MAX);
    let report_phase = |measured: &Measured, conns: usize, rate_per_s: f64| PhaseReport {
        conns,
        rate_per_s,
        scans_per_s: measured.answered as f64 / settings.window_s,
        errors: measured.errors.clone(),
        lat: Latency::of(&measured.histogram),
    };
    Ok(GatewayReport {
        workload: "W1",
        via: "http-gateway",
        durability: settings.durability.name(),
        window_s: settings.window_s,
        warmup_s: settings.warmup_s,
        tenants: settings.tenants,
        skus_per_tenant: settings.skus_per_tenant,
        load_s,
        capacity: report_phase(&capacity, settings.conns, 0.0),
        half_rate: report_phase(&half, settings.conns * 2, rate_per_s),
        check_ok: check_failures.is_empty(),
        check_failures,
    })
}
