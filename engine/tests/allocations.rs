//! Heap allocations per command on the order path, counted by a counting global allocator
//! (its own test binary: the allocator is process-wide). A guard, not a timing: each
//! allocation on this path is paid once per order at hundreds of thousands of orders a second
//! (docs/benchmarks.md, "Reserves alone"), so a change that adds one should say why.
//!
//! Release builds only (`.ci/run` runs it so): debug assertions allocate to check themselves.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use reservoir_engine::{
    Command, Config, Engine, ImportRow, Line, Location, Name, OperationId, Quantity, Record, ReservationId, ResultCode,
    Sku, TenantId,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(pointer, layout) }
    }
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(pointer, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations a granted single-line reserve may make inside `execute`: the line results
/// shared by the reply and the record, the item change and the reserved line of the record,
/// the held lines and the packed reply of the idempotency memory. Ids of up to 22 bytes are
/// kept inline.
const RESERVE_ALLOCATIONS_MAX: u64 = 5;
/// The same for a full commit: the line results, the line change and item change of the
/// record, and the operation's packed reply.
const COMMIT_ALLOCATIONS_MAX: u64 = 4;
const ORDERS: usize = 1_000;
/// One id shard, so that the id tables are past their first sizes after a few orders: with
/// the default 256, 1,000 orders keep growing fresh tables (the map, the per-tenant counts and
/// the deadline heap of each shard), which is a start-up cost, not a per-order one.
const ID_SHARDS: usize = 1;

fn allocations_of(work: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    work();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// Regression: a reserve allocated its line results twice (a `Vec`, then the shared slice)
/// and its record's id once more, and a commit its record's ids twice (7 and 7 before).
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "debug assertions allocate (packed lines unpacked to compare); run with --release"
)]
fn a_single_line_reserve_and_its_commit_allocate_a_bounded_number_of_times() {
    let engine = Engine::new(Config { id_shards: ID_SHARDS, ..Config::default() });
    let mut records: Vec<Record> = Vec::with_capacity(16);
    let now_ms = 1_700_000_000_000;
    let reply = engine.execute(&Command::CreateTenant { name: Name::new("acme").unwrap() }, now_ms, &mut records);
    let tenant = TenantId(reply.count as u32);
    let sku = |number: usize| Sku::new(&format!("SKU-{number:06}")).unwrap();
    let location = Location::new("WH1").unwrap();
    let rows = (0..100)
        .map(|number| ImportRow {
            sku: sku(number),
            location: location.clone(),
            on_hand: 1 << 40,
            safety_stock: None,
            backorder_limit: None,
        })
        .collect();
    let import = Command::Import { tenant, operation: OperationId::new("load").unwrap(), rows };
    assert_eq!(engine.execute(&import, now_ms, &mut records).code, ResultCode::Ok);
    let (mut reserves, mut commits) = (Vec::with_capacity(ORDERS), Vec::with_capacity(ORDERS));
    for order in 0..ORDERS {
        let lines =
            vec![Line { sku: sku(order % 100), location: location.clone(), quantity: Quantity::new(1).unwrap() }];
        let reservation = ReservationId::new(&format!("order-{order}")).unwrap();
        let reserve =
            Command::Reserve { tenant, reservation: reservation.clone(), lines, ttl_ms: 60_000, allow_partial: false };
        let commit = Command::Commit {
            tenant,
            operation: OperationId::new(&format!("pick-{order}")).unwrap(),
            reservation,
            lines: None,
        };
        records.clear();
        reserves
            .push(allocations_of(|| assert_eq!(engine.execute(&reserve, now_ms, &mut records).code, ResultCode::Ok)));
        records.clear();
        commits.push(allocations_of(|| assert_eq!(engine.execute(&commit, now_ms, &mut records).code, ResultCode::Ok)));
    }
    // The median leaves out the inserts that grow a table (amortised, and rarer as it grows).
    reserves.sort_unstable();
    commits.sort_unstable();
    let (reserve, commit) = (reserves[ORDERS / 2], commits[ORDERS / 2]);
    assert!(reserve > 0 && commit > 0, "the counter counts");
    assert!(
        reserve <= RESERVE_ALLOCATIONS_MAX,
        "a reserve allocates {reserve} times (at most {RESERVE_ALLOCATIONS_MAX})"
    );
    assert!(commit <= COMMIT_ALLOCATIONS_MAX, "a commit allocates {commit} times (at most {COMMIT_ALLOCATIONS_MAX})");
}
