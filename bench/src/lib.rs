//! The standard Reservoir workloads (`../shared/workload.md`) as a library.
//!
//! * [`run_w1`]: W1 (order flow) against an in-process [`Engine`]: no network, no WAL
//!   (durability "none"), one thread per connection, one request in flight, batch 1.
//! * [`run_w1_quic`]: W1 over QUIC on loopback against a server it starts (engine + durable
//!   WAL), with connections, requests in flight and batch size as settings.
//! * [`memory`]: resident bytes per stock item and per open reservation (the memory part of W2).
//!
//! The bench reads the clock (`std::time::Instant`); the engine never does: every command gets
//! `now_ms` = [`NOW_MS_BASE`] + milliseconds since the run started.

pub mod gateway;
pub mod quic;
mod recovery;
pub use gateway::{run_w1_gateway, GatewayReport, GatewaySettings};
pub use quic::{run_w1_quic, QuicRun, QuicSettings};
pub use recovery::{recovery, RecoveryReport, RecoverySettings};

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use reservoir_engine::{
    Command, Config, Engine, ImportRow, Line, Location, Name, OperationId, Quantity, Record, ReservationId, ResultCode,
    Sku, TenantId, IMPORT_ROWS_MAX, STOCK_MAX, TTL_MS_MAX,
};
use serde::Serialize;

/// The `now_ms` of the first command of a run (a fixed, realistic epoch time).
pub const NOW_MS_BASE: u64 = 1_700_000_000_000;
/// Reservation time to live: the longest the engine allows, so that nothing can expire during a
/// run (runs are capped at [`RUN_SECONDS_MAX`], far below it).
pub const RESERVE_TTL_MS: u64 = TTL_MS_MAX;
/// Longest warm-up plus window of one W1 run.
pub const RUN_SECONDS_MAX: f64 = 86_400.0;
/// Client threads of one W1 run.
pub const THREADS_MAX: usize = 1_024;
/// Tenants of one W1 run (each thread keeps a committed-units counter per item for the check).
pub const W1_TENANTS_MAX: usize = 10_000;
/// SKUs per tenant of one W1 run.
pub const W1_SKUS_PER_TENANT_MAX: usize = 1_000_000;
/// Items of one W1 run (tenants x SKUs).
pub const W1_ITEMS_MAX: usize = 10_000_000;
/// Threads x items: each thread counts the units it committed per item, for the ledger check.
pub const W1_TRACKED_COUNTERS_MAX: usize = 100_000_000;
/// Order lines per reserve: uniform over 1..=this.
pub const LINES_PER_RESERVE_MAX: usize = 3;
/// Units per order line: uniform over 1..=this.
pub const UNITS_PER_LINE_MAX: i64 = 5;
/// The hot variant's SKUs: tenant 0, SKUs 0..this.
pub const HOT_SKUS_MAX: usize = 10;
/// Operations one W1 thread may issue (a safety bound; the clock stops a run long before).
pub const OPS_PER_THREAD_MAX: u64 = 1 << 40;
/// Check failures a report lists (all are counted).
pub const CHECK_FAILURES_LISTED_MAX: usize = 20;
/// Items the memory benchmark may create.
pub const MEMORY_ITEMS_MAX: usize = 200_000_000;
/// Reservations the memory benchmark may open.
pub const MEMORY_RESERVATIONS_MAX: usize = 100_000_000;
/// Latencies above this (ns) are recorded as this.
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Slots for per-code counters (result code numbers are below this).
const CODE_SLOTS_MAX: usize = 64;

/// Names of the generated data: tenant `tenant-0003`, SKU `SKU-000042`, location `WH1`.
pub fn tenant_name(index: usize) -> String {
    format!("tenant-{index:04}")
}
pub fn sku_name(index: usize) -> String {
    format!("SKU-{index:06}")
}
pub const LOCATION_NAME: &str = "WH1";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("loading data failed: {0}")]
    Load(String),
    #[error("cannot read resident memory (VmRSS in /proc/self/status)")]
    NoResidentMemory,
    #[error("WAL: {0}")]
    Wal(#[from] reservoir_wal::WalError),
}

// -------------------------------------------------------------------------------------------
// W1 settings and report.

/// Which W1 variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Tenant uniform, SKU uniform over the tenant's SKUs.
    Uniform,
    /// 90% of reserves on tenant 0, SKUs 0..10 (each line drawn independently); 10% uniform.
    Hot,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Uniform => "uniform",
            Variant::Hot => "hot",
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(text: &str) -> Result<Variant, String> {
        match text {
            "uniform" => Ok(Variant::Uniform),
            "hot" => Ok(Variant::Hot),
            other => Err(format!("unknown variant {other:?} (uniform or hot)")),
        }
    }
}

/// How to run W1. `Default` is the standard workload with 2 threads, 2 s warm-up, 10 s window.
#[derive(Clone, Debug, PartialEq)]
pub struct W1Settings {
    pub variant: Variant,
    /// Client threads (= connections, each with one request in flight).
    pub threads: usize,
    /// Seconds run but not measured.
    pub warmup_s: f64,
    /// Seconds measured.
    pub window_s: f64,
    /// Thread `i` draws from `Xoshiro256PlusPlus::seed_from_u64(seed + i)`.
    pub seed: u64,
    pub tenants: usize,
    pub skus_per_tenant: usize,
    pub initial_on_hand: i64,
    /// Requests each connection keeps in flight (sends before waiting for the oldest reply).
    /// Only meaningful with a WAL: without one every reply is immediate.
    pub in_flight: usize,
    /// Run through a write-ahead log in this (new or empty) directory. `None`: engine only.
    pub wal: Option<WalSettings>,
}

/// W1 through the WAL.
#[derive(Clone, Debug, PartialEq)]
pub struct WalSettings {
    pub directory: std::path::PathBuf,
    pub durability: reservoir_wal::Durability,
}

/// The most requests one connection may keep in flight.
pub const IN_FLIGHT_MAX: usize = 4_096;

impl Default for W1Settings {
    fn default() -> W1Settings {
        W1Settings {
            variant: Variant::Uniform,
            threads: 2,
            warmup_s: 2.0,
            window_s: 10.0,
            seed: 1,
            tenants: 10,
            skus_per_tenant: 10_000,
            initial_on_hand: 1_000_000,
            in_flight: 1,
            wal: None,
        }
    }
}

impl W1Settings {
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |what: String| Err(BenchError::Settings(what));
        if !(1..=THREADS_MAX).contains(&self.threads) {
            return bad(format!("threads must be 1..={THREADS_MAX}, not {}", self.threads));
        }
        if !(1..=W1_TENANTS_MAX).contains(&self.tenants) {
            return bad(format!("tenants must be 1..={W1_TENANTS_MAX}, not {}", self.tenants));
        }
        if !(1..=W1_SKUS_PER_TENANT_MAX).contains(&self.skus_per_tenant) {
            return bad(format!("SKUs per tenant must be 1..={W1_SKUS_PER_TENANT_MAX}, not {}", self.skus_per_tenant));
        }
        if self.tenants * self.skus_per_tenant > W1_ITEMS_MAX {
            return bad(format!("tenants x SKUs must be at most {W1_ITEMS_MAX}"));
        }
        if self.threads * self.tenants * self.skus_per_tenant > W1_TRACKED_COUNTERS_MAX {
            return bad(format!("threads x tenants x SKUs must be at most {W1_TRACKED_COUNTERS_MAX}"));
        }
        if !(1..=IN_FLIGHT_MAX).contains(&self.in_flight) {
            return bad(format!("in-flight must be 1..={IN_FLIGHT_MAX}, not {}", self.in_flight));
        }
        if self.in_flight > 1 && self.wal.is_none() {
            return bad("in-flight above 1 needs a WAL (without one every reply is immediate)".into());
        }
        if !(1..=STOCK_MAX).contains(&self.initial_on_hand) {
            return bad(format!("initial on_hand must be 1..={STOCK_MAX}, not {}", self.initial_on_hand));
        }
        let finite = |v: f64| v.is_finite() && v >= 0.0;
        if !finite(self.warmup_s) || !finite(self.window_s) || self.window_s == 0.0 {
            return bad("warm-up must be >= 0 and the window > 0 seconds".into());
        }
        if self.warmup_s + self.window_s > RUN_SECONDS_MAX {
            return bad(format!("warm-up plus window must be at most {RUN_SECONDS_MAX} s"));
        }
        Ok(())
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Latency {
            p50_us: us(histogram.value_at_quantile(0.50)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
        }
    }
}

/// One op kind's outcomes in the window. `fail` = refused for insufficient stock; `err` = any
/// other non-ok code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct KindReport {
    pub ok: u64,
    pub fail: u64,
    pub err: u64,
    pub lat: Latency,
}

impl KindReport {
    pub fn ops(&self) -> u64 {
        self.ok + self.fail + self.err
    }
}

/// A W1 run's result. Serializes to exactly the JSON object of `workload.md`; the fields marked
/// `skip` are extra detail for the human table.
#[derive(Clone, Debug, Serialize)]
pub struct W1Report {
    pub workload: &'static str,
    pub variant: Variant,
    pub durability: &'static str,
    pub conns: usize,
    pub in_flight: usize,
    pub batch: usize,
    pub window_s: f64,
    /// Operations (all three kinds, any outcome) started in the window, per second.
    pub ops_per_s: f64,
    /// Order lines of those operations (a reserve's requested lines, a commit's or release's
    /// reservation lines) per second.
    pub lines_per_s: f64,
    /// Operations in the window that ended with a code other than ok or insufficient_stock.
    pub errors: u64,
    pub lat: Latency,
    pub reserve: KindReport,
    pub commit: KindReport,
    pub release: KindReport,
    pub check_ok: bool,

    #[serde(skip)]
    pub warmup_s: f64,
    #[serde(skip)]
    pub seed: u64,
    #[serde(skip)]
    pub tenants: usize,
    #[serde(skip)]
    pub skus_per_tenant: usize,
    #[serde(skip)]
    pub initial_on_hand: i64,
    #[serde(skip)]
    pub load_s: f64,
    /// Operations of the whole run, warm-up included.
    #[serde(skip)]
    pub ops_total: u64,
    /// Non-ok codes in the window, by name.
    #[serde(skip)]
    pub codes: BTreeMap<&'static str, u64>,
    /// Open reservations after the run (tracked by the threads and confirmed by `verify`).
    #[serde(skip)]
    pub open_reservations: usize,
    /// Every check that failed (at most [`CHECK_FAILURES_LISTED_MAX`] listed).
    #[serde(skip)]
    pub check_failures: Vec<String>,
    #[serde(skip)]
    pub check_failure_count: usize,
    /// Resident bytes after the load and after the run (`None` where VmRSS cannot be read).
    /// The growth is mostly the engine's reservations and idempotency memory (nothing is
    /// forgotten during a run); the threads' own record of their open reservations (about
    /// 80 bytes each) is in it too.
    #[serde(skip)]
    pub rss_loaded_bytes: Option<u64>,
    #[serde(skip)]
    pub rss_end_bytes: Option<u64>,
    /// What the WAL writer did during the run (warm-up included), if there was one.
    #[serde(skip)]
    pub wal: Option<WalFigures>,
}

/// The WAL's share of a W1 run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WalFigures {
    pub records: u64,
    pub group_commits: u64,
    pub syncs: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Mean time in fdatasync, microseconds.
    pub sync_mean_us: f64,
}

impl WalFigures {
    pub fn syncs_per_s(&self) -> f64 {
        self.syncs as f64 / self.seconds
    }
    pub fn records_per_group(&self) -> f64 {
        self.records as f64 / (self.group_commits.max(1)) as f64
    }
}

impl W1Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a W1 report serializes")
    }

    /// A plain, aligned text table.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let items = self.tenants * self.skus_per_tenant;
        let _ = writeln!(
            out,
            "{} order flow  variant={}  durability={}  conns={} in_flight={} batch={}",
            self.workload, self.variant, self.durability, self.conns, self.in_flight, self.batch
        );
        let _ = writeln!(
            out,
            "data    {} tenants x {} SKUs = {} items, on_hand {}, loaded in {:.2} s",
            self.tenants, self.skus_per_tenant, items, self.initial_on_hand, self.load_s
        );
        let _ = writeln!(
            out,
            "window  {:.2} s after {:.2} s warm-up, seed {}, {} ops in all",
            self.window_s, self.warmup_s, self.seed, self.ops_total
        );
        let _ = writeln!(
            out,
            "rate    {:.0} ops/s  {:.0} lines/s  errors {}",
            self.ops_per_s, self.lines_per_s, self.errors
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<8} {:>11} {:>11} {:>9} {:>7} {:>9} {:>9} {:>9} {:>10}",
            "kind", "ops", "ok", "fail", "err", "p50_us", "p99_us", "p999_us", "max_us"
        );
        let all = KindReport {
            ok: self.reserve.ok + self.commit.ok + self.release.ok,
            fail: self.reserve.fail + self.commit.fail + self.release.fail,
            err: self.reserve.err + self.commit.err + self.release.err,
            lat: self.lat,
        };
        for (name, kind) in
            [("reserve", &self.reserve), ("commit", &self.commit), ("release", &self.release), ("all", &all)]
        {
            let _ = writeln!(
                out,
                "{:<8} {:>11} {:>11} {:>9} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>10.2}",
                name,
                kind.ops(),
                kind.ok,
                kind.fail,
                kind.err,
                kind.lat.p50_us,
                kind.lat.p99_us,
                kind.lat.p999_us,
                kind.lat.max_us
            );
        }
        let _ = writeln!(out);
        if let (Some(loaded), Some(end)) = (self.rss_loaded_bytes, self.rss_end_bytes) {
            let growth = end.saturating_sub(loaded);
            let _ = writeln!(
                out,
                "memory  resident {:.0} MiB after the load, +{:.0} MiB during the run ({:.0} bytes/op)",
                loaded as f64 / (1u64 << 20) as f64,
                growth as f64 / (1u64 << 20) as f64,
                growth as f64 / self.ops_total.max(1) as f64
            );
        }
        if let Some(wal) = &self.wal {
            let _ = writeln!(
                out,
                "wal     {} records in {} group commits ({:.1} records/group), {:.0} fsyncs/s (mean {:.0} us), {:.1} MB/s",
                wal.records,
                wal.group_commits,
                wal.records_per_group(),
                wal.syncs_per_s(),
                wal.sync_mean_us,
                wal.bytes as f64 / wal.seconds / 1e6
            );
        }
        if !self.codes.is_empty() {
            let codes: Vec<String> = self.codes.iter().map(|(name, count)| format!("{name}={count}")).collect();
            let _ = writeln!(out, "codes   {}", codes.join(" "));
        }
        if self.check_ok {
            let _ = writeln!(
                out,
                "check   ok ({} items, {} open reservations: reserved, on_hand, available and verify() agree)",
                items, self.open_reservations
            );
        } else {
            let _ = writeln!(out, "check   FAILED ({} problems)", self.check_failure_count);
            for failure in &self.check_failures {
                let _ = writeln!(out, "  {failure}");
            }
        }
        out
    }
}

// -------------------------------------------------------------------------------------------
// Loading.

/// The generated names, built once and cloned into commands.
struct Data {
    tenants: Vec<TenantId>,
    skus: Vec<Sku>,
    location: Location,
}

fn build_skus(count: usize) -> Vec<Sku> {
    (0..count).map(|index| Sku::new(&sku_name(index)).expect("generated SKU names are valid")).collect()
}

fn location() -> Location {
    Location::new(LOCATION_NAME).expect("valid location")
}

fn create_tenants(
    engine: &Engine,
    count: usize,
    records: &mut Vec<Record>,
    log: &mut impl FnMut(&mut Vec<Record>) -> Result<(), BenchError>,
) -> Result<Vec<TenantId>, BenchError> {
    let mut tenants = Vec::with_capacity(count);
    for index in 0..count {
        let name = Name::new(&tenant_name(index)).expect("generated tenant names are valid");
        let reply = engine.execute(&Command::CreateTenant { name }, NOW_MS_BASE, records);
        log(records)?;
        if !reply.is_ok() {
            return Err(BenchError::Load(format!("create tenant {index}: {}", reply.code.name())));
        }
        tenants.push(TenantId(u32::try_from(reply.count).expect("tenant ids fit u32")));
    }
    Ok(tenants)
}

/// Imports SKUs `0..count` of `tenant` at one location, [`IMPORT_ROWS_MAX`] rows a command.
fn import_skus(
    engine: &Engine,
    tenant: TenantId,
    skus: &[Sku],
    location: &Location,
    on_hand: i64,
    records: &mut Vec<Record>,
    log: &mut impl FnMut(&mut Vec<Record>) -> Result<(), BenchError>,
) -> Result<(), BenchError> {
    for (chunk_index, chunk) in skus.chunks(IMPORT_ROWS_MAX).enumerate() {
        let rows = chunk
            .iter()
            .map(|sku| ImportRow {
                sku: sku.clone(),
                location: location.clone(),
                on_hand,
                safety_stock: None,
                backorder_limit: None,
            })
            .collect();
        let operation = OperationId::new(&format!("load-{}-{chunk_index}", tenant.0)).expect("valid id");
        let reply = engine.execute(&Command::Import { tenant, operation, rows }, NOW_MS_BASE, records);
        log(records)?;
        if reply.code != ResultCode::Ok {
            return Err(BenchError::Load(format!("import for tenant {}: {}", tenant.0, reply.code.name())));
        }
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------
// W1.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reserve = 0,
    Commit = 1,
    Release = 2,
}

/// A reservation this thread opened and has not settled.
struct Open {
    tenant: u32,
    id: ReservationId,
    count: u8,
    /// (SKU index, units) per line.
    lines: [(u32, u8); LINES_PER_RESERVE_MAX],
}

/// What a thread must remember about the command in flight.
enum Pending {
    Reserve { tenant: u32, count: u8, lines: [(u32, u8); LINES_PER_RESERVE_MAX] },
    Settle { tenant: u32, count: u8, lines: [(u32, u8); LINES_PER_RESERVE_MAX] },
}

#[derive(Default, Clone, Copy)]
struct Counts {
    ok: u64,
    fail: u64,
    err: u64,
}

/// What one thread did.
struct ThreadResult {
    histograms: [Histogram<u64>; 3],
    counts: [Counts; 3],
    lines: u64,
    codes: [u64; CODE_SLOTS_MAX],
    ops_total: u64,
    /// Committed units per item (tenant * skus_per_tenant + sku).
    committed: Vec<i64>,
    open: VecDeque<Open>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

struct Clock {
    start: Instant,
    window_start: Instant,
    end: Instant,
}

impl Clock {
    fn now_ms(&self, at: Instant) -> u64 {
        NOW_MS_BASE + at.duration_since(self.start).as_millis() as u64
    }
}

/// One connection's loop: choose an op, build it, send it, time it, account for it.
///
/// The clock is read twice per op, right around `execute` (for the latency); the same two
/// readings decide the phase, so the loop needs no extra clock reads. An op is measured when it
/// was sent inside `[window_start, end)`; the loop stops once a reply arrives at or after `end`.
fn w1_thread(
    engine: &Engine,
    wal: Option<&reservoir_wal::Wal>,
    data: &Data,
    settings: &W1Settings,
    clock: &Clock,
    thread: usize,
) -> ThreadResult {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(settings.seed.wrapping_add(thread as u64));
    let skus_per_tenant = settings.skus_per_tenant;
    let hot_skus = skus_per_tenant.min(HOT_SKUS_MAX);
    let quantities: Vec<Quantity> =
        (1..=UNITS_PER_LINE_MAX).map(|units| Quantity::new(units).expect("valid")).collect();
    let mut result = ThreadResult {
        histograms: [new_histogram(), new_histogram(), new_histogram()],
        counts: [Counts::default(); 3],
        lines: 0,
        codes: [0; CODE_SLOTS_MAX],
        ops_total: 0,
        committed: vec![0; settings.tenants * skus_per_tenant],
        open: VecDeque::new(),
    };
    let mut records: Vec<Record> = Vec::new();
    let mut line_buffer: Vec<Line> = Vec::with_capacity(LINES_PER_RESERVE_MAX);
    let mut id_text = String::with_capacity(32);
    let mut last_reply = Instant::now();
    // With a WAL: requests executed but not yet acknowledged (durable), oldest first.
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(settings.in_flight);

    for counter in 0..OPS_PER_THREAD_MAX {
        if last_reply >= clock.end {
            break;
        }
        let roll = rng.gen_range(0..100u32);
        let kind = match result.open.front() {
            None => Kind::Reserve,
            Some(_) if roll < 70 => Kind::Reserve,
            Some(_) if roll < 90 => Kind::Commit,
            Some(_) => Kind::Release,
        };
        id_text.clear();
        let (command, pending) = if kind == Kind::Reserve {
            let hot = settings.variant == Variant::Hot && rng.gen_range(0..10u32) < 9;
            let tenant = if hot { 0 } else { rng.gen_range(0..settings.tenants) };
            let count = rng.gen_range(1..=LINES_PER_RESERVE_MAX);
            let mut open_lines = [(0u32, 0u8); LINES_PER_RESERVE_MAX];
            line_buffer.clear();
            for slot in open_lines.iter_mut().take(count) {
                let sku = if hot { rng.gen_range(0..hot_skus) } else { rng.gen_range(0..skus_per_tenant) };
                let units = rng.gen_range(1..=UNITS_PER_LINE_MAX);
                *slot = (sku as u32, units as u8);
                line_buffer.push(Line {
                    sku: data.skus[sku].clone(),
                    location: data.location.clone(),
                    quantity: quantities[units as usize - 1],
                });
            }
            let _ = write!(id_text, "r{thread}-{counter}");
            let command = Command::Reserve {
                tenant: data.tenants[tenant],
                reservation: ReservationId::new(&id_text).expect("valid id"),
                lines: std::mem::take(&mut line_buffer),
                ttl_ms: RESERVE_TTL_MS,
                allow_partial: false,
            };
            (command, Pending::Reserve { tenant: tenant as u32, count: count as u8, lines: open_lines })
        } else {
            let open = result.open.pop_front().expect("an open reservation");
            let _ = write!(id_text, "o{thread}-{counter}");
            let tenant = data.tenants[open.tenant as usize];
            let operation = OperationId::new(&id_text).expect("valid id");
            let Open { tenant: tenant_index, id: reservation, count, lines } = open;
            let command = if kind == Kind::Commit {
                Command::Commit { tenant, operation, reservation, lines: None }
            } else {
                Command::Release { tenant, operation, reservation, lines: None }
            };
            (command, Pending::Settle { tenant: tenant_index, count, lines })
        };

        let sent = Instant::now();
        let reply = engine.execute(&command, clock.now_ms(sent), &mut records);
        result.ops_total += 1;
        let code = reply.code;
        let measured = sent >= clock.window_start && sent < clock.end;
        match wal {
            None => {
                let replied = Instant::now();
                last_reply = replied;
                records.clear();
                if measured {
                    let nanos = u64::try_from(replied.duration_since(sent).as_nanos()).unwrap_or(u64::MAX);
                    result.histograms[kind as usize].saturating_record(nanos);
                }
            }
            Some(wal) => {
                // The reply may go out only once the records are durable: submit now, and
                // acknowledge when the group commit that carries them is synced.
                let lsn = records.iter().map(|record| record.lsn).max().expect("every command makes a record");
                wal.submit(std::mem::take(&mut records)).expect("WAL submit");
                in_flight.push_back(InFlight { sent, lsn, slot: kind as usize, measured });
                if in_flight.len() >= settings.in_flight {
                    last_reply = acknowledge(wal, &mut in_flight, &mut result, true);
                }
            }
        }
        if measured {
            let slot = kind as usize;
            let counts = &mut result.counts[slot];
            match code {
                ResultCode::Ok => counts.ok += 1,
                ResultCode::InsufficientStock => counts.fail += 1,
                _ => counts.err += 1,
            }
            if code != ResultCode::Ok {
                result.codes[(code.number() as usize).min(CODE_SLOTS_MAX - 1)] += 1;
            }
        }

        match (command, pending) {
            (Command::Reserve { reservation, lines, .. }, Pending::Reserve { tenant, count, lines: open_lines }) => {
                if measured {
                    result.lines += lines.len() as u64;
                }
                if code == ResultCode::Ok {
                    result.open.push_back(Open { tenant, id: reservation, count, lines: open_lines });
                }
                line_buffer = lines;
            }
            (
                Command::Commit { reservation, .. } | Command::Release { reservation, .. },
                Pending::Settle { tenant, count, lines },
            ) => {
                let open = Open { tenant, id: reservation, count, lines };
                if measured {
                    result.lines += u64::from(open.count);
                }
                if code != ResultCode::Ok {
                    // Not settled (an error): it stays open as far as this thread knows; the
                    // ledger check decides whether the engine agrees.
                    result.open.push_front(open);
                } else if kind == Kind::Commit {
                    let base = open.tenant as usize * skus_per_tenant;
                    for &(sku, units) in &open.lines[..usize::from(open.count)] {
                        result.committed[base + sku as usize] += i64::from(units);
                    }
                }
            }
            _ => unreachable!("a command and its pending state match"),
        }
    }
    if let Some(wal) = wal {
        while !in_flight.is_empty() {
            acknowledge(wal, &mut in_flight, &mut result, true);
        }
    }
    result
}

/// A request executed and submitted to the WAL, waiting for its acknowledgement.
struct InFlight {
    sent: Instant,
    lsn: reservoir_engine::Lsn,
    slot: usize,
    measured: bool,
}

/// Waits (if `wait`) until the oldest request in flight may be acknowledged (durable; written,
/// in `relaxed` mode), then acknowledges every request that may: its latency is send to
/// acknowledgement. Returns the acknowledgement time.
fn acknowledge(
    wal: &reservoir_wal::Wal,
    in_flight: &mut VecDeque<InFlight>,
    result: &mut ThreadResult,
    wait: bool,
) -> Instant {
    let oldest = in_flight.front().expect("something in flight").lsn;
    if wait {
        wal.wait_acknowledgeable(oldest).expect("WAL failed");
    }
    let durable = wal.acknowledgeable_lsn();
    let acknowledged = Instant::now();
    while let Some(request) = in_flight.front() {
        if request.lsn > durable {
            break;
        }
        if request.measured {
            let nanos = u64::try_from(acknowledged.duration_since(request.sent).as_nanos()).unwrap_or(u64::MAX);
            result.histograms[request.slot].saturating_record(nanos);
        }
        in_flight.pop_front();
    }
    acknowledged
}

/// Loads the W1 data, runs W1 for warm-up + window on `settings.threads` threads, then checks
/// the ledger against what the threads did.
pub fn run_w1(settings: &W1Settings) -> Result<W1Report, BenchError> {
    run_w1_then(settings, |_, _| {})
}

/// [`run_w1`], calling `before_check` between the run and the ledger check (tests use it to
/// break the ledger behind the threads' back).
fn run_w1_then(settings: &W1Settings, before_check: impl FnOnce(&Engine, &Data)) -> Result<W1Report, BenchError> {
    settings.validate()?;
    let engine = Engine::new(Config::default());
    let wal = match &settings.wal {
        None => None,
        Some(wal_settings) => {
            let fresh = std::fs::read_dir(&wal_settings.directory).map_or(true, |mut entries| entries.next().is_none());
            if !fresh {
                return Err(BenchError::Settings(format!(
                    "the WAL directory {} must be new or empty",
                    wal_settings.directory.display()
                )));
            }
            let options = reservoir_wal::WalOptions {
                durability: wal_settings.durability,
                ..reservoir_wal::WalOptions::default()
            };
            Some(reservoir_wal::open(&wal_settings.directory, &engine, options)?.0)
        }
    };
    let mut records = Vec::new();
    let load_started = Instant::now();
    let skus = build_skus(settings.skus_per_tenant);
    let location = location();
    let mut log = |records: &mut Vec<Record>| -> Result<(), BenchError> {
        match &wal {
            Some(wal) => Ok(wal.append(std::mem::take(records))?),
            None => {
                records.clear();
                Ok(())
            }
        }
    };
    let tenants = create_tenants(&engine, settings.tenants, &mut records, &mut log)?;
    for &tenant in &tenants {
        import_skus(&engine, tenant, &skus, &location, settings.initial_on_hand, &mut records, &mut log)?;
    }
    let load_s = load_started.elapsed().as_secs_f64();
    let wal_before = wal.as_ref().map(|wal| wal.stats());
    let rss_loaded_bytes = resident_bytes();
    // Tenants are created in order from a fresh engine; the threads rely on it.
    assert!(tenants.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    let data = Data { tenants, skus, location };

    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(settings.warmup_s);
    let clock = Clock { start, window_start, end: window_start + Duration::from_secs_f64(settings.window_s) };
    let results: Vec<ThreadResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..settings.threads)
            .map(|thread| {
                let (engine, data, clock, wal) = (&engine, &data, &clock, wal.as_ref());
                scope.spawn(move || w1_thread(engine, wal, data, settings, clock, thread))
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("a W1 thread panicked")).collect()
    });

    let rss_end_bytes = resident_bytes();
    let run_seconds = start.elapsed().as_secs_f64();
    let wal_figures = wal.as_ref().zip(wal_before).map(|(wal, before)| {
        let after = wal.stats();
        let syncs = after.syncs - before.syncs;
        WalFigures {
            records: after.records - before.records,
            group_commits: after.batches - before.batches,
            syncs,
            bytes: after.bytes - before.bytes,
            seconds: run_seconds,
            sync_mean_us: if syncs == 0 {
                0.0
            } else {
                (after.sync_ns - before.sync_ns) as f64 / 1_000.0 / syncs as f64
            },
        }
    });
    if let Some(wal) = wal {
        wal.close()?;
    }

    // Merge.
    let mut histograms = [new_histogram(), new_histogram(), new_histogram()];
    let mut counts = [Counts::default(); 3];
    let mut overall = new_histogram();
    let mut lines = 0u64;
    let mut codes = [0u64; CODE_SLOTS_MAX];
    let mut ops_total = 0u64;
    for result in &results {
        for slot in 0..3 {
            histograms[slot].add(&result.histograms[slot]).expect("same bounds");
            overall.add(&result.histograms[slot]).expect("same bounds");
            counts[slot].ok += result.counts[slot].ok;
            counts[slot].fail += result.counts[slot].fail;
            counts[slot].err += result.counts[slot].err;
        }
        lines += result.lines;
        for (total, count) in codes.iter_mut().zip(&result.codes) {
            *total += count;
        }
        ops_total += result.ops_total;
    }
    let kind = |slot: usize| KindReport {
        ok: counts[slot].ok,
        fail: counts[slot].fail,
        err: counts[slot].err,
        lat: Latency::of(&histograms[slot]),
    };
    let (reserve, commit, release) = (kind(0), kind(1), kind(2));
    let ops = reserve.ops() + commit.ops() + release.ops();
    let errors = reserve.err + commit.err + release.err;
    let codes: BTreeMap<&'static str, u64> = ResultCode::ALL
        .iter()
        .filter(|code| (code.number() as usize) < CODE_SLOTS_MAX && codes[code.number() as usize] > 0)
        .map(|code| (code.name(), codes[code.number() as usize]))
        .collect();

    before_check(&engine, &data);
    let (failures, failure_count, open_reservations) = check_ledger(&engine, &data, settings, &results);
    Ok(W1Report {
        workload: "W1",
        variant: settings.variant,
        durability: settings.wal.as_ref().map_or("none", |wal| wal.durability.name()),
        conns: settings.threads,
        in_flight: settings.in_flight,
        batch: 1,
        window_s: settings.window_s,
        ops_per_s: ops as f64 / settings.window_s,
        lines_per_s: lines as f64 / settings.window_s,
        errors,
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
        ops_total,
        codes,
        open_reservations,
        check_failures: failures,
        check_failure_count: failure_count,
        rss_loaded_bytes,
        rss_end_bytes,
        wal: wal_figures,
    })
}

/// The W1 ledger check: for every item, reserved = the units of the open reservations on it,
/// on_hand = initial - committed units, available >= 0; and `verify()` finds nothing wrong and
/// the same number of open reservations. Returns (failures listed, failure count, open).
fn check_ledger(
    engine: &Engine,
    data: &Data,
    settings: &W1Settings,
    results: &[ThreadResult],
) -> (Vec<String>, usize, usize) {
    let items = settings.tenants * settings.skus_per_tenant;
    let mut reserved = vec![0i64; items];
    let mut committed = vec![0i64; items];
    let mut open_count = 0usize;
    for result in results {
        for (total, units) in committed.iter_mut().zip(&result.committed) {
            *total += units;
        }
        for open in &result.open {
            open_count += 1;
            let base = open.tenant as usize * settings.skus_per_tenant;
            for &(sku, units) in &open.lines[..usize::from(open.count)] {
                reserved[base + sku as usize] += i64::from(units);
            }
        }
    }
    let mut failures = Vec::new();
    let mut count = 0usize;
    let mut fail = |text: String| {
        count += 1;
        if failures.len() < CHECK_FAILURES_LISTED_MAX {
            failures.push(text);
        }
    };
    if engine.item_count() != items {
        fail(format!("engine holds {} items, expected {items}", engine.item_count()));
    }
    for (tenant_index, &tenant) in data.tenants.iter().enumerate() {
        for (sku_index, sku) in data.skus.iter().enumerate() {
            let index = tenant_index * settings.skus_per_tenant + sku_index;
            let Some(view) = engine.item(tenant, sku.as_str(), data.location.as_str()) else {
                fail(format!("tenant {tenant_index} {sku}: missing"));
                continue;
            };
            let counters = view.counters;
            let on_hand = settings.initial_on_hand - committed[index];
            if counters.reserved != reserved[index] || counters.on_hand != on_hand || view.available() < 0 {
                fail(format!(
                    "tenant {tenant_index} {sku}: on_hand {} reserved {} available {}, expected on_hand {on_hand} reserved {}",
                    counters.on_hand,
                    counters.reserved,
                    view.available(),
                    reserved[index]
                ));
            }
        }
    }
    let report = engine.verify();
    for violation in &report.violations {
        fail(format!("verify: {violation}"));
    }
    if report.open_reservations != open_count {
        fail(format!("verify counts {} open reservations, the threads hold {open_count}", report.open_reservations));
    }
    (failures, count, open_count)
}

// -------------------------------------------------------------------------------------------
// Memory.

#[derive(Clone, Debug, PartialEq)]
pub struct MemorySettings {
    /// Items created (1 location each), `skus_per_tenant` per tenant.
    pub items: usize,
    pub skus_per_tenant: usize,
    /// Reservations opened afterwards, 1 line of 1 unit each, spread over the items.
    pub reservations: usize,
}

impl Default for MemorySettings {
    fn default() -> MemorySettings {
        MemorySettings { items: 10_000_000, skus_per_tenant: 10_000, reservations: 1_000_000 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub items: usize,
    pub tenants: usize,
    pub reservations: usize,
    /// Resident bytes when the engine was empty.
    pub rss_empty_bytes: u64,
    pub rss_items_bytes: u64,
    pub rss_reservations_bytes: u64,
    /// Growth of resident memory over the item load, per item. Includes what the load left
    /// behind besides the items (the imports' idempotency memory).
    pub rss_bytes_per_item: f64,
    /// `engine.item_heap_bytes() / items`: the item store alone.
    pub heap_bytes_per_item: f64,
    pub rss_bytes_per_reservation: f64,
    pub load_s: f64,
    pub reserve_s: f64,
}

impl MemoryReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a memory report serializes")
    }

    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
        let _ = writeln!(
            out,
            "memory  {} items ({} tenants), then {} open reservations",
            self.items, self.tenants, self.reservations
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<28} {:>12} {:>14} {:>10}", "step", "seconds", "resident MiB", "bytes/each");
        let _ = writeln!(out, "{:<28} {:>12} {:>14.1} {:>10}", "empty engine", "", mib(self.rss_empty_bytes), "");
        let _ = writeln!(
            out,
            "{:<28} {:>12.2} {:>14.1} {:>10.1}",
            "items (import)",
            self.load_s,
            mib(self.rss_items_bytes),
            self.rss_bytes_per_item
        );
        let _ = writeln!(
            out,
            "{:<28} {:>12.2} {:>14.1} {:>10.1}",
            "open reservations (1 line)",
            self.reserve_s,
            mib(self.rss_reservations_bytes),
            self.rss_bytes_per_reservation
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "item store heap (engine.item_heap_bytes): {:.1} bytes/item", self.heap_bytes_per_item);
        out
    }
}

/// Resident memory of this process (VmRSS).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Creates `items` items through imports and reports resident bytes per item, then opens
/// `reservations` one-line reservations and reports resident bytes per reservation.
pub fn memory(settings: &MemorySettings) -> Result<MemoryReport, BenchError> {
    if !(1..=MEMORY_ITEMS_MAX).contains(&settings.items) {
        return Err(BenchError::Settings(format!("items must be 1..={MEMORY_ITEMS_MAX}")));
    }
    if !(1..=W1_SKUS_PER_TENANT_MAX).contains(&settings.skus_per_tenant) {
        return Err(BenchError::Settings(format!("SKUs per tenant must be 1..={W1_SKUS_PER_TENANT_MAX}")));
    }
    if settings.reservations > MEMORY_RESERVATIONS_MAX {
        return Err(BenchError::Settings(format!("reservations must be at most {MEMORY_RESERVATIONS_MAX}")));
    }
    let tenant_count = settings.items.div_ceil(settings.skus_per_tenant);
    let skus = build_skus(settings.skus_per_tenant.min(settings.items));
    let location = location();
    let engine = Engine::new(Config::default());
    let mut records = Vec::new();

    let rss_empty = resident_bytes().ok_or(BenchError::NoResidentMemory)?;
    let started = Instant::now();
    let mut forget = |records: &mut Vec<Record>| -> Result<(), BenchError> {
        records.clear();
        Ok(())
    };
    let tenants = create_tenants(&engine, tenant_count, &mut records, &mut forget)?;
    for (index, &tenant) in tenants.iter().enumerate() {
        let count = (settings.items - index * settings.skus_per_tenant).min(settings.skus_per_tenant);
        import_skus(&engine, tenant, &skus[..count], &location, 1_000_000, &mut records, &mut forget)?;
    }
    let load_s = started.elapsed().as_secs_f64();
    records = Vec::new();
    let rss_items = resident_bytes().ok_or(BenchError::NoResidentMemory)?;
    if engine.item_count() != settings.items {
        return Err(BenchError::Load(format!(
            "engine holds {} items, expected {}",
            engine.item_count(),
            settings.items
        )));
    }
    let heap_bytes_per_item = engine.item_heap_bytes() as f64 / settings.items as f64;

    let started = Instant::now();
    let quantity = Quantity::new(1).expect("valid");
    let mut id_text = String::with_capacity(16);
    for number in 0..settings.reservations {
        let item = number % settings.items;
        id_text.clear();
        let _ = write!(id_text, "m{number}");
        let command = Command::Reserve {
            tenant: tenants[item / settings.skus_per_tenant],
            reservation: ReservationId::new(&id_text).expect("valid id"),
            lines: vec![Line {
                sku: skus[item % settings.skus_per_tenant].clone(),
                location: location.clone(),
                quantity,
            }],
            ttl_ms: RESERVE_TTL_MS,
            allow_partial: false,
        };
        let reply = engine.execute(&command, NOW_MS_BASE, &mut records);
        records.clear();
        if reply.code != ResultCode::Ok {
            return Err(BenchError::Load(format!("reserve {number}: {}", reply.code.name())));
        }
    }
    let reserve_s = started.elapsed().as_secs_f64();
    let rss_reservations = resident_bytes().ok_or(BenchError::NoResidentMemory)?;
    let per = |to: u64, from: u64, count: usize| {
        if count == 0 {
            0.0
        } else {
            to.saturating_sub(from) as f64 / count as f64
        }
    };
    Ok(MemoryReport {
        items: settings.items,
        tenants: tenant_count,
        reservations: settings.reservations,
        rss_empty_bytes: rss_empty,
        rss_items_bytes: rss_items,
        rss_reservations_bytes: rss_reservations,
        rss_bytes_per_item: per(rss_items, rss_empty, settings.items),
        heap_bytes_per_item,
        rss_bytes_per_reservation: per(rss_reservations, rss_items, settings.reservations),
        load_s,
        reserve_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(variant: Variant) -> W1Settings {
        W1Settings {
            variant,
            threads: 2,
            warmup_s: 0.05,
            window_s: 0.3,
            seed: 7,
            tenants: 2,
            skus_per_tenant: 100,
            initial_on_hand: 1_000_000,
            in_flight: 1,
            wal: None,
        }
    }

    #[test]
    fn w1_through_a_durable_wal_acknowledges_after_fsync_and_the_log_recovers() {
        let directory = tempfile::tempdir().unwrap();
        let settings = W1Settings {
            in_flight: 8,
            wal: Some(WalSettings {
                directory: directory.path().join("wal"),
                durability: reservoir_wal::Durability::Durable,
            }),
            ..tiny(Variant::Uniform)
        };
        let report = run_w1(&settings).unwrap();
        assert!(report.check_ok, "{:?}", report.check_failures);
        assert_eq!(report.durability, "durable");
        let wal = report.wal.expect("WAL figures");
        assert!(wal.syncs > 0 && wal.records >= report.ops_total);
        // What the run acknowledged is on disk: the log replays into an engine that verifies.
        let storage = reservoir_wal::FsStorage::new(&directory.path().join("wal")).unwrap();
        let engine = Engine::new(Config::default());
        let recovery = reservoir_wal::recover(&storage, &engine, |_| {}).unwrap();
        assert_eq!(recovery.scan.torn, None);
        assert!(engine.verify().violations.is_empty());
        // A second run into the same directory is refused rather than mixed in.
        assert!(matches!(run_w1(&settings), Err(BenchError::Settings(_))));
    }

    #[test]
    fn w1_runs_and_the_ledger_checks_out() {
        for variant in [Variant::Uniform, Variant::Hot] {
            let report = run_w1(&tiny(variant)).expect("runs");
            assert!(report.check_ok, "{variant}: {:?}", report.check_failures);
            assert!(report.reserve.ok > 100, "{variant}: too few reserves: {:?}", report.reserve);
            assert!(report.commit.ok > 0 && report.release.ok > 0, "{variant}: {report:?}");
            assert_eq!(report.errors, 0, "{variant}: {:?}", report.codes);
            assert!(report.ops_per_s > 0.0 && report.lines_per_s >= report.ops_per_s);
            assert!(report.lat.p50_us > 0.0 && report.lat.p50_us <= report.lat.max_us);
            assert!(report.render_table().contains("check   ok"));
        }
    }

    #[test]
    fn report_json_has_exactly_the_workload_fields() {
        let report = run_w1(&W1Settings { window_s: 0.05, warmup_s: 0.0, ..tiny(Variant::Hot) }).expect("runs");
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
        let keys: Vec<&str> = value.as_object().expect("object").keys().map(String::as_str).collect();
        let mut expected = vec![
            "workload",
            "variant",
            "durability",
            "conns",
            "in_flight",
            "batch",
            "window_s",
            "ops_per_s",
            "lines_per_s",
            "errors",
            "lat",
            "reserve",
            "commit",
            "release",
            "check_ok",
        ];
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(value["workload"], "W1");
        assert_eq!(value["variant"], "hot");
        assert_eq!(value["durability"], "none");
        let lat_keys: Vec<&str> =
            value["reserve"]["lat"].as_object().expect("lat").keys().map(String::as_str).collect();
        assert_eq!(lat_keys.len(), 4);
        for key in ["p50_us", "p99_us", "p999_us", "max_us"] {
            assert!(value["lat"][key].is_number() && value["commit"]["lat"][key].is_number());
        }
        for key in ["ok", "fail", "err"] {
            assert!(value["release"][key].is_u64());
        }
    }

    #[test]
    fn the_check_notices_a_reservation_the_threads_did_not_make() {
        let settings = W1Settings { window_s: 0.05, warmup_s: 0.0, ..tiny(Variant::Uniform) };
        let report = run_w1_then(&settings, |engine, data| {
            let command = Command::Reserve {
                tenant: data.tenants[1],
                reservation: ReservationId::new("rogue").unwrap(),
                lines: vec![Line {
                    sku: data.skus[3].clone(),
                    location: data.location.clone(),
                    quantity: Quantity::new(2).unwrap(),
                }],
                ttl_ms: RESERVE_TTL_MS,
                allow_partial: false,
            };
            assert!(engine.execute(&command, NOW_MS_BASE, &mut Vec::new()).is_ok());
        })
        .expect("runs");
        assert!(!report.check_ok);
        // The item's reserved count and verify's open-reservation count both disagree.
        assert_eq!(report.check_failure_count, 2, "{:?}", report.check_failures);
        assert!(report.render_table().contains("FAILED"));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(run_w1(&W1Settings { threads: 0, ..W1Settings::default() }).is_err());
        assert!(run_w1(&W1Settings { window_s: 0.0, ..W1Settings::default() }).is_err());
        assert!(run_w1(&W1Settings { warmup_s: f64::NAN, ..W1Settings::default() }).is_err());
    }

    #[test]
    fn memory_reports_per_item_and_per_reservation() {
        let report =
            memory(&MemorySettings { items: 25_000, skus_per_tenant: 10_000, reservations: 5_000 }).expect("runs");
        assert_eq!(report.tenants, 3);
        assert!(report.heap_bytes_per_item > 0.0);
    }
}
