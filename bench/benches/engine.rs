//! Criterion micro-benchmarks of the engine's order path: one iteration is a reserve followed
//! by the commit (group `reserve_commit`) or release (group `reserve_release`) of everything it
//! reserved.
//!
//! Group `reserve` measures issue #2's two throughput targets as they are worded: single-line
//! reserves alone (no settle), uniform over the catalog and all on one hot SKU, on 1, 2 and
//! then powers of two up to the machine's cores (issue #2 speaks of 1 thread uniform and 2
//! threads on one hot SKU; the larger counts show how the engine scales).
//! One element = one reserve; between samples (untimed) the clock jumps past the deadlines and
//! the retention, and `Expire` then `Forget` drop what the sample left behind.
//!
//! Each group sets up one engine (10 tenants x 10,000 SKUs x 1 location) and runs, for
//! 1 and 3 lines, uniform and hot (every line on tenant 0, SKUs 0..10), 1 and 2 threads.
//!
//! Timing: `iter_custom`. With T threads, each of T scoped threads does `iters` pairs and the
//! wall time of the whole is returned, so "time" is per round of T concurrent pairs and the
//! throughput (`Throughput::Elements(T)`) is pairs per second over all threads. The command
//! building (ids, line vectors) is inside the timed loop, as a server would do it per request.
//!
//! Between samples (untimed) the clock jumps past the idempotency retention and `Forget` drops
//! what the previous sample left behind, so memory stays flat however many iterations run.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use reservoir_engine::{
    Command, Config, Engine, ImportRow, Line, Location, Name, OperationId, Quantity, Record, ReservationId, ResultCode,
    Sku, TenantId, PAGE_ITEMS_MAX,
};

const TENANTS: usize = 10;
const SKUS_PER_TENANT: usize = 10_000;
const HOT_SKUS: usize = 10;
/// Large enough that no amount of committing runs the hot items dry.
const ON_HAND: i64 = 1 << 45;
const TTL_MS: u64 = 600_000;
const NOW_MS_BASE: u64 = 1_700_000_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Commit,
    Release,
}

struct Setup {
    engine: Engine,
    tenants: Vec<TenantId>,
    skus: Vec<Sku>,
    location: Location,
    /// Advanced (untimed) between samples.
    now_ms: std::sync::atomic::AtomicU64,
    /// Makes ids unique across samples and benchmarks.
    round: std::sync::atomic::AtomicU64,
}

fn setup() -> Setup {
    let engine = Engine::new(Config::default());
    let mut records: Vec<Record> = Vec::new();
    let skus: Vec<Sku> = (0..SKUS_PER_TENANT).map(|i| Sku::new(&format!("SKU-{i:06}")).unwrap()).collect();
    let location = Location::new("WH1").unwrap();
    let mut tenants = Vec::new();
    for t in 0..TENANTS {
        let reply = engine.execute(
            &Command::CreateTenant { name: Name::new(&format!("tenant-{t:04}")).unwrap() },
            NOW_MS_BASE,
            &mut records,
        );
        assert!(reply.is_ok());
        let tenant = TenantId(reply.count as u32);
        let rows = skus
            .iter()
            .map(|sku| ImportRow {
                sku: sku.clone(),
                location: location.clone(),
                on_hand: ON_HAND,
                safety_stock: None,
                backorder_limit: None,
            })
            .collect();
        let operation = OperationId::new(&format!("load-{t}")).unwrap();
        let reply = engine.execute(&Command::Import { tenant, operation, rows }, NOW_MS_BASE, &mut records);
        assert_eq!(reply.code, ResultCode::Ok);
        records.clear();
        tenants.push(tenant);
    }
    Setup {
        engine,
        tenants,
        skus,
        location,
        now_ms: std::sync::atomic::AtomicU64::new(NOW_MS_BASE),
        round: std::sync::atomic::AtomicU64::new(0),
    }
}

/// One benchmark's parameters.
#[derive(Clone, Copy)]
struct Case {
    settle: Settle,
    lines: usize,
    /// Every line on tenant 0, SKUs 0..HOT_SKUS.
    hot: bool,
    threads: usize,
}

/// `iters` reserve + settle pairs on one thread.
fn pairs(setup: &Setup, case: Case, thread: usize, round: u64, now_ms: u64, iters: u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(round * 64 + thread as u64);
    let mut records: Vec<Record> = Vec::with_capacity(4);
    let mut id = String::with_capacity(32);
    let quantity = Quantity::new(1).unwrap();
    for i in 0..iters {
        let tenant_index = if case.hot { 0 } else { rng.gen_range(0..TENANTS) };
        let tenant = setup.tenants[tenant_index];
        let order: Vec<Line> = (0..case.lines)
            .map(|_| {
                let sku = if case.hot { rng.gen_range(0..HOT_SKUS) } else { rng.gen_range(0..SKUS_PER_TENANT) };
                Line { sku: setup.skus[sku].clone(), location: setup.location.clone(), quantity }
            })
            .collect();
        id.clear();
        let _ = write!(id, "r{round}-{thread}-{i}");
        let reservation = ReservationId::new(&id).unwrap();
        let reserve = Command::Reserve { tenant, reservation, lines: order, ttl_ms: TTL_MS, allow_partial: false };
        let reply = setup.engine.execute(&reserve, now_ms, &mut records);
        assert_eq!(reply.code, ResultCode::Ok);
        records.clear();
        let Command::Reserve { reservation, .. } = reserve else { unreachable!() };
        id.clear();
        let _ = write!(id, "o{round}-{thread}-{i}");
        let operation = OperationId::new(&id).unwrap();
        let command = match case.settle {
            Settle::Commit => Command::Commit { tenant, operation, reservation, lines: None },
            Settle::Release => Command::Release { tenant, operation, reservation, lines: None },
        };
        let reply = setup.engine.execute(&command, now_ms, &mut records);
        assert_eq!(reply.code, ResultCode::Ok);
        records.clear();
        black_box(reply);
    }
}

/// `iters` single-line reserves on one thread: uniform over the catalog, or every one on
/// tenant 0's first SKU (`one_hot`).
fn reserves(setup: &Setup, one_hot: bool, thread: usize, round: u64, now_ms: u64, iters: u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(round * 64 + thread as u64);
    let mut records: Vec<Record> = Vec::with_capacity(4);
    let mut id = String::with_capacity(32);
    let quantity = Quantity::new(1).unwrap();
    for i in 0..iters {
        let (tenant_index, sku) =
            if one_hot { (0, 0) } else { (rng.gen_range(0..TENANTS), rng.gen_range(0..SKUS_PER_TENANT)) };
        let tenant = setup.tenants[tenant_index];
        let lines = vec![Line { sku: setup.skus[sku].clone(), location: setup.location.clone(), quantity }];
        id.clear();
        let _ = write!(id, "r{round}-{thread}-{i}");
        let reservation = ReservationId::new(&id).unwrap();
        let reserve = Command::Reserve { tenant, reservation, lines, ttl_ms: TTL_MS, allow_partial: false };
        let reply = setup.engine.execute(&reserve, now_ms, &mut records);
        assert_eq!(reply.code, ResultCode::Ok);
        records.clear();
        black_box(reply);
    }
}

/// One sample of group `reserve`: `threads` threads, `iters` reserves each; returns the wall
/// time. Afterwards, untimed, expires and forgets every reservation the sample made.
fn reserve_sample(setup: &Setup, one_hot: bool, threads: usize, iters: u64) -> Duration {
    use std::sync::atomic::Ordering;
    let round = setup.round.fetch_add(1, Ordering::Relaxed);
    let now_ms = setup.now_ms.load(Ordering::Relaxed);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 1..threads {
            scope.spawn(move || reserves(setup, one_hot, thread, round, now_ms, iters));
        }
        reserves(setup, one_hot, 0, round, now_ms, iters);
    });
    let elapsed = started.elapsed();
    let later = now_ms + TTL_MS + setup.engine.config().idempotency_retention_ms + 1;
    setup.now_ms.store(later, Ordering::Relaxed);
    let mut records = Vec::new();
    let mut expired = 0;
    loop {
        let reply = setup.engine.execute(&Command::Expire { limit: usize::MAX }, later, &mut records);
        assert!(reply.is_ok());
        records.clear();
        if reply.count == 0 {
            break;
        }
        expired += reply.count;
    }
    assert_eq!(expired, iters * threads as u64, "every reserve of the sample expires");
    let reply = setup.engine.execute(&Command::Forget, later, &mut records);
    assert!(reply.is_ok());
    elapsed
}

/// Thread counts of group `reserve`: 1, 2, then powers of two up to the machine's cores, at
/// most `RESERVE_THREADS_MAX` (how the engine scales past the 2 cores of the CI machine).
fn reserve_thread_counts() -> Vec<usize> {
    const RESERVE_THREADS_MAX: usize = 64;
    let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get()).clamp(2, RESERVE_THREADS_MAX);
    let counts: Vec<usize> = std::iter::successors(Some(1usize), |threads| Some(threads * 2))
        .take_while(|threads| *threads <= cores)
        .collect();
    assert!(counts.starts_with(&[1, 2]));
    counts
}

/// Issue #2's targets: >= 3 M single-line reserves/s on one core uncontended, >= 1 M/s on one
/// hot SKU with 2 threads.
fn reserve(c: &mut Criterion) {
    let setup = setup();
    let mut group = c.benchmark_group("reserve");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for (variant, one_hot) in [("uniform", false), ("onehot", true)] {
        for threads in reserve_thread_counts() {
            group.throughput(Throughput::Elements(threads as u64));
            let id = BenchmarkId::new(format!("1line/{variant}"), format!("{threads}t"));
            group.bench_function(id, |b| b.iter_custom(|iters| reserve_sample(&setup, one_hot, threads, iters)));
        }
    }
    group.finish();
}

/// Runs one sample: `case.threads` threads, `iters` pairs each; returns the wall time.
/// Afterwards, untimed, forgets what the sample left in the idempotency memory.
fn sample(setup: &Setup, case: Case, iters: u64) -> Duration {
    use std::sync::atomic::Ordering;
    let round = setup.round.fetch_add(1, Ordering::Relaxed);
    let now_ms = setup.now_ms.load(Ordering::Relaxed);
    let started = Instant::now();
    if case.threads == 1 {
        pairs(setup, case, 0, round, now_ms, iters);
    } else {
        std::thread::scope(|scope| {
            for thread in 0..case.threads {
                scope.spawn(move || pairs(setup, case, thread, round, now_ms, iters));
            }
        });
    }
    let elapsed = started.elapsed();
    let later = now_ms + setup.engine.config().idempotency_retention_ms + 1;
    setup.now_ms.store(later, Ordering::Relaxed);
    let mut records = Vec::new();
    let reply = setup.engine.execute(&Command::Forget, later, &mut records);
    assert!(reply.is_ok());
    elapsed
}

fn group(c: &mut Criterion, name: &str, settle: Settle) {
    let setup = setup();
    let mut group = c.benchmark_group(name);
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for lines in [1usize, 3] {
        for hot in [false, true] {
            for threads in [1usize, 2] {
                let case = Case { settle, lines, hot, threads };
                group.throughput(Throughput::Elements(threads as u64));
                let id = BenchmarkId::new(
                    format!("{lines}line/{}", if hot { "hot" } else { "uniform" }),
                    format!("{threads}t"),
                );
                group.bench_function(id, |b| b.iter_custom(|iters| sample(&setup, case, iters)));
            }
        }
    }
    group.finish();
}

fn reserve_commit(c: &mut Criterion) {
    group(c, "reserve_commit", Settle::Commit);
}

fn reserve_release(c: &mut Criterion) {
    group(c, "reserve_release", Settle::Release);
}

/// Tenant sizes of the per-SKU query benchmark: a small tenant, and one of a million items.
const SKU_QUERY_TENANT_ITEMS: [usize; 2] = [10_000, 1_000_000];
/// Locations of each SKU in the per-SKU query benchmark.
const SKU_QUERY_LOCATIONS: usize = 4;

/// The per-SKU query (`Engine::sku`: every location of one SKU and their total), for a tenant
/// of 10 k and of 1 M items (4 locations per SKU), each alone in its engine. One element = one
/// query of a random SKU of the tenant. The first query of each shard builds that shard's
/// per-SKU index; the warm-up pays for it.
fn sku_query(c: &mut Criterion) {
    let mut group = c.benchmark_group("sku_query");
    group.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(3));
    for items in SKU_QUERY_TENANT_ITEMS {
        let engine = Engine::new(Config::default());
        let mut records: Vec<Record> = Vec::new();
        let reply =
            engine.execute(&Command::CreateTenant { name: Name::new("tenant").unwrap() }, NOW_MS_BASE, &mut records);
        let tenant = TenantId(reply.count as u32);
        let skus = items / SKU_QUERY_LOCATIONS;
        let sku_name = |number: usize| format!("SKU-{number:08}");
        let rows: Vec<ImportRow> = (0..items)
            .map(|item| ImportRow {
                sku: Sku::new(&sku_name(item % skus)).unwrap(),
                location: Location::new(&format!("BIN-{}", item / skus)).unwrap(),
                on_hand: 1,
                safety_stock: None,
                backorder_limit: None,
            })
            .collect();
        for (chunk_index, chunk) in rows.chunks(reservoir_engine::IMPORT_ROWS_MAX).enumerate() {
            let operation = OperationId::new(&format!("load-{chunk_index}")).unwrap();
            let command = Command::Import { tenant, operation, rows: chunk.to_vec() };
            assert_eq!(engine.execute(&command, NOW_MS_BASE, &mut records).code, ResultCode::Ok);
            records.clear();
        }
        let names: Vec<String> = (0..skus).map(sku_name).collect();
        let mut random = Xoshiro256PlusPlus::seed_from_u64(7);
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("tenant_items", items), |b| {
            b.iter(|| {
                let found = engine.sku(tenant, &names[random.gen_range(0..skus)], PAGE_ITEMS_MAX);
                assert_eq!(found.locations.len(), SKU_QUERY_LOCATIONS);
                black_box(found.total.expect("the totals fit"))
            })
        });
    }
    group.finish();
}

/// Locations of the one SKU the location-adding benchmark imports.
const SKU_LOCATIONS_ADDED: usize = 10_000;

/// Adding locations to one SKU whose shard's per-SKU index is built (a query of the SKU came
/// first): one import of 10,000 rows, each a new location of the same SKU, in a fresh engine
/// per iteration. One element = one location added. Each new location looks up how many the
/// SKU has (regression: by walking them all, so the n-th cost n lookups).
fn sku_locations(c: &mut Criterion) {
    let mut group = c.benchmark_group("sku_locations");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let rows: Vec<ImportRow> = (0..SKU_LOCATIONS_ADDED)
        .map(|location| ImportRow {
            sku: Sku::new("SKU-1").unwrap(),
            location: Location::new(&format!("BIN-{location:05}")).unwrap(),
            on_hand: 1,
            safety_stock: None,
            backorder_limit: None,
        })
        .collect();
    group.throughput(Throughput::Elements(SKU_LOCATIONS_ADDED as u64));
    group.bench_function(BenchmarkId::new("import_of_one_sku", SKU_LOCATIONS_ADDED), |b| {
        b.iter_batched(
            || {
                let engine = Engine::new(Config::default());
                let mut records: Vec<Record> = Vec::new();
                let name = Name::new("tenant").unwrap();
                let tenant =
                    TenantId(engine.execute(&Command::CreateTenant { name }, NOW_MS_BASE, &mut records).count as u32);
                assert_eq!(engine.sku(tenant, "SKU-1", PAGE_ITEMS_MAX).location_count, 0, "builds the index");
                (engine, tenant)
            },
            |(engine, tenant)| {
                let mut records: Vec<Record> = Vec::new();
                let operation = OperationId::new("load").unwrap();
                let command = Command::Import { tenant, operation, rows: rows.clone() };
                assert_eq!(engine.execute(&command, NOW_MS_BASE, &mut records).code, ResultCode::Ok);
                black_box(records.len());
                engine
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Tenants and SKUs per tenant of the paging benchmark: W2's shape at a tenth of its tenants
/// (1 M items), every tenant's items spread over every shard among the others'.
const PAGE_TENANTS: usize = 100;
const PAGE_SKUS_PER_TENANT: usize = 10_000;

/// A tenant's items page by page (`Engine::tenant_items`, pages of `PAGE_ITEMS_MAX`), in an
/// engine of 100 tenants x 10,000 SKUs whose imports took turns, so each tenant's items in a
/// shard lie among the other tenants'. One element = one item listed; an iteration lists all
/// 10,000 items of a random tenant.
fn tenant_pages(c: &mut Criterion) {
    let mut group = c.benchmark_group("tenant_pages");
    group.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(3));
    let engine = Engine::new(Config::default());
    let mut records: Vec<Record> = Vec::new();
    let tenants: Vec<TenantId> = (0..PAGE_TENANTS)
        .map(|number| {
            let name = Name::new(&format!("tenant-{number}")).unwrap();
            let reply = engine.execute(&Command::CreateTenant { name }, NOW_MS_BASE, &mut records);
            TenantId(reply.count as u32)
        })
        .collect();
    let location = Location::new("DC-1").unwrap();
    let chunk_rows = 1_000;
    for chunk in 0..PAGE_SKUS_PER_TENANT / chunk_rows {
        for &tenant in &tenants {
            let rows: Vec<ImportRow> = (chunk * chunk_rows..(chunk + 1) * chunk_rows)
                .map(|sku| ImportRow {
                    sku: Sku::new(&format!("SKU-{sku:06}")).unwrap(),
                    location: location.clone(),
                    on_hand: 1,
                    safety_stock: None,
                    backorder_limit: None,
                })
                .collect();
            let operation = OperationId::new(&format!("load-{chunk}")).unwrap();
            let command = Command::Import { tenant, operation, rows };
            assert_eq!(engine.execute(&command, NOW_MS_BASE, &mut records).code, ResultCode::Ok);
            records.clear();
        }
    }
    let mut random = Xoshiro256PlusPlus::seed_from_u64(11);
    group.throughput(Throughput::Elements(PAGE_SKUS_PER_TENANT as u64));
    group.bench_function(BenchmarkId::new("all_items", PAGE_TENANTS * PAGE_SKUS_PER_TENANT), |b| {
        b.iter(|| {
            let tenant = tenants[random.gen_range(0..PAGE_TENANTS)];
            let (mut cursor, mut listed) = (0, 0);
            loop {
                let page = engine.tenant_items(tenant, cursor, PAGE_ITEMS_MAX);
                listed += page.items.len();
                black_box(&page.items);
                match page.next_cursor {
                    Some(next) => cursor = next,
                    None => break,
                }
            }
            assert_eq!(listed, PAGE_SKUS_PER_TENANT);
        })
    });
    group.finish();
}

criterion_group!(benches, reserve, reserve_commit, reserve_release, sku_query, sku_locations, tenant_pages);
criterion_main!(benches);
