//! Many threads on a few hot SKUs (more threads than this machine's 2 cores, so they are
//! preempted mid-command): reserves of 1-3 lines across shards, commits, releases, receives
//! and corrections race. Checks: no oversell ever observed by a reader, `verify()` clean at
//! the end, units conserved, and the records of all threads, sorted by LSN, replay to exactly
//! the same state (log order agrees with every item's update order).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use reservoir_engine::{
    Command, Config, Engine, Line, Location, Name, OperationId, Quantity, Record, ReservationId, ResultCode, Sku,
};

const THREADS: usize = 6;
const OPERATIONS_PER_THREAD: usize = 40_000;
const HOT_SKUS: usize = 4;
const INITIAL_ON_HAND: i64 = 200;

#[test]
fn hot_skus_under_contention_never_oversell_and_replay_exactly() {
    let config = Config { shards: 8, id_shards: 8, ..Config::default() };
    let engine = Engine::new(config.clone());
    let mut setup = Vec::new();
    engine.execute(&Command::CreateTenant { name: Name::new("hot").unwrap() }, 0, &mut setup);
    let tenant = engine.tenant_id("hot").unwrap();
    let sku = |s: usize| Sku::new(&format!("HOT-{s}")).unwrap();
    let location = Location::new("DC1").unwrap();
    for s in 0..HOT_SKUS {
        let receive = Command::Receive {
            tenant,
            operation: OperationId::new(&format!("init-{s}")).unwrap(),
            sku: sku(s),
            location: location.clone(),
            quantity: Quantity::new(INITIAL_ON_HAND).unwrap(),
        };
        assert!(engine.execute(&receive, 0, &mut setup).is_ok());
    }
    // One SKU allows backorders of 10: available may go to -10 there and no further.
    let policy = Command::SetPolicy {
        tenant,
        operation: OperationId::new("policy").unwrap(),
        sku: sku(0),
        location: location.clone(),
        safety_stock: 0,
        backorder_limit: 10,
    };
    assert!(engine.execute(&policy, 0, &mut setup).is_ok());

    let received = AtomicI64::new(0);
    let committed = AtomicI64::new(0);
    let adjusted = AtomicI64::new(0);
    let running = AtomicBool::new(true);
    let oversold = AtomicBool::new(false);
    let mut per_thread: Vec<Vec<Record>> = Vec::new();
    std::thread::scope(|scope| {
        // A reader that checks the no-oversell bound on every snapshot it sees.
        scope.spawn(|| {
            while running.load(Ordering::Relaxed) {
                for s in 0..HOT_SKUS {
                    let view = engine.item(tenant, sku(s).as_str(), "DC1").unwrap();
                    if !view.counters.holds()
                        || view.available() < -view.counters.backorder_limit - view.counters.safety_stock
                    {
                        oversold.store(true, Ordering::Relaxed);
                    }
                }
            }
        });
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (engine, received, committed, adjusted, sku, location) =
                    (&engine, &received, &committed, &adjusted, &sku, &location);
                scope.spawn(move || {
                    let mut random = Xoshiro256PlusPlus::seed_from_u64(0x5eed + thread as u64);
                    let mut records = Vec::new();
                    let mut open: std::collections::VecDeque<ReservationId> = Default::default();
                    for n in 0..OPERATIONS_PER_THREAD {
                        let now_ms = 1_000 + n as u64;
                        let choice = random.gen_range(0..100);
                        let operation = OperationId::new(&format!("t{thread}-{n}")).unwrap();
                        if choice < 55 || open.is_empty() {
                            let lines = (0..random.gen_range(1..=3))
                                .map(|_| Line {
                                    sku: sku(random.gen_range(0..HOT_SKUS)),
                                    location: location.clone(),
                                    quantity: Quantity::new(random.gen_range(1..=4)).unwrap(),
                                })
                                .collect();
                            let id = ReservationId::new(&format!("r{thread}-{n}")).unwrap();
                            let reply = engine.execute(
                                &Command::Reserve {
                                    tenant,
                                    reservation: id.clone(),
                                    lines,
                                    ttl_ms: 3_600_000,
                                    allow_partial: random.gen_bool(0.1),
                                },
                                now_ms,
                                &mut records,
                            );
                            if reply.is_ok() {
                                open.push_back(id);
                            } else {
                                assert_eq!(reply.code, ResultCode::InsufficientStock);
                            }
                        } else if choice < 80 {
                            let reservation = open.pop_front().unwrap();
                            let reply = engine.execute(
                                &Command::Commit { tenant, operation, reservation, lines: None },
                                now_ms,
                                &mut records,
                            );
                            match reply.code {
                                ResultCode::Ok => committed
                                    .fetch_add(reply.lines.iter().map(|l| l.applied).sum::<i64>(), Ordering::Relaxed),
                                // Backordered units cannot ship until stock arrives.
                                ResultCode::InsufficientOnHand => 0,
                                other => panic!("commit: {other:?}"),
                            };
                        } else if choice < 92 {
                            let reservation = open.pop_front().unwrap();
                            let reply = engine.execute(
                                &Command::Release { tenant, operation, reservation, lines: None },
                                now_ms,
                                &mut records,
                            );
                            assert_eq!(reply.code, ResultCode::Ok);
                        } else if choice < 97 {
                            let quantity = random.gen_range(1..=8);
                            let receive = Command::Receive {
                                tenant,
                                operation,
                                sku: sku(random.gen_range(0..HOT_SKUS)),
                                location: location.clone(),
                                quantity: Quantity::new(quantity).unwrap(),
                            };
                            assert!(engine.execute(&receive, now_ms, &mut records).is_ok());
                            received.fetch_add(quantity, Ordering::Relaxed);
                        } else {
                            let delta = -random.gen_range(1..=3);
                            let adjust = Command::Adjust {
                                tenant,
                                operation,
                                sku: sku(random.gen_range(0..HOT_SKUS)),
                                location: location.clone(),
                                delta,
                                reason: Name::new("damaged").unwrap(),
                            };
                            let reply = engine.execute(&adjust, now_ms, &mut records);
                            if reply.is_ok() {
                                adjusted.fetch_add(delta, Ordering::Relaxed);
                            } else {
                                assert!(
                                    matches!(reply.code, ResultCode::StockReserved | ResultCode::NegativeStock),
                                    "{reply:?}"
                                );
                            }
                        }
                    }
                    records
                })
            })
            .collect();
        for handle in handles {
            per_thread.push(handle.join().unwrap());
        }
        running.store(false, Ordering::Relaxed);
    });
    assert!(!oversold.load(Ordering::Relaxed), "a reader saw an oversold item");
    let report = engine.verify();
    assert!(report.violations.is_empty(), "{:?}", report.violations);

    // Units are conserved.
    let on_hand: i64 =
        (0..HOT_SKUS).map(|s| engine.item(tenant, sku(s).as_str(), "DC1").unwrap().counters.on_hand).sum();
    assert_eq!(
        on_hand,
        INITIAL_ON_HAND * HOT_SKUS as i64 + received.load(Ordering::Relaxed) + adjusted.load(Ordering::Relaxed)
            - committed.load(Ordering::Relaxed)
    );
    assert!(committed.load(Ordering::Relaxed) > 0, "the run committed nothing: it tested nothing");

    // The log, in LSN order, is gap-free and rebuilds exactly this state.
    let mut log: Vec<Record> = setup;
    for records in per_thread {
        log.extend(records);
    }
    log.sort_by_key(|record| record.lsn);
    assert!(log.windows(2).all(|w| w[1].lsn.0 == w[0].lsn.0 + 1), "LSNs have a gap");
    let replica = Engine::new(config);
    for record in &log {
        replica.apply(record).unwrap_or_else(|e| panic!("replay: {e}"));
    }
    assert_eq!(replica.dump(), engine.dump());
}
