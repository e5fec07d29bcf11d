//! Model-checks the item counter protocol with loom: every interleaving (up to a preemption
//! bound) of reserve vs reserve and reserve vs release on one item, and of a seqlock reader against a
//! writer. Run with:
//!
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p reservoir-engine --test loom --release
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::{Arc, Mutex};
use reservoir_engine::item::{Counters, ItemCell};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// What a writer logged: its LSN, the change and the counters after it.
type Log = Arc<Mutex<Vec<(u64, i64, Counters)>>>;

/// The engine's reserve step on one item: latch, decide, take the LSN, publish.
fn reserve(cell: &ItemCell, lsn: &AtomicU64, log: &Log, quantity: i64) -> bool {
    let mut guard = cell.latch();
    if !guard.counters.can_reserve(quantity) {
        return false;
    }
    guard.counters.reserved += quantity;
    let at = lsn.fetch_add(1, Ordering::Relaxed);
    log.lock().unwrap().push((at, quantity, guard.counters));
    true
}

fn release(cell: &ItemCell, lsn: &AtomicU64, log: &Log, quantity: i64) -> bool {
    let mut guard = cell.latch();
    if guard.counters.reserved < quantity {
        return false;
    }
    guard.counters.reserved -= quantity;
    let at = lsn.fetch_add(1, Ordering::Relaxed);
    log.lock().unwrap().push((at, -quantity, guard.counters));
    true
}

fn start() -> Counters {
    Counters { on_hand: 3, reserved: 1, inflow_total: 3, ..Counters::default() }
}

#[derive(Clone, Copy)]
enum Step {
    Reserve(i64),
    Release(i64),
}

/// Runs two writers on one item under every interleaving and checks: no oversell in the end
/// state, and replaying the logged changes in LSN order passes through exactly the states the
/// item was in (log order = the item's update order).
fn two_writers(first: Step, second: Step) {
    model(move || {
        let cell = Arc::new(ItemCell::new(start()));
        let lsn = Arc::new(AtomicU64::new(1));
        let log: Log = Arc::new(Mutex::new(Vec::new()));
        let spawn = |step: Step| {
            let (cell, lsn, log) = (cell.clone(), lsn.clone(), log.clone());
            loom::thread::spawn(move || match step {
                Step::Reserve(quantity) => reserve(&cell, &lsn, &log, quantity),
                Step::Release(quantity) => release(&cell, &lsn, &log, quantity),
            })
        };
        let other = spawn(second);
        let won_first = match first {
            Step::Reserve(quantity) => reserve(&cell, &lsn, &log, quantity),
            Step::Release(quantity) => release(&cell, &lsn, &log, quantity),
        };
        let won_second = other.join().unwrap();
        let end = cell.read();
        assert!(end.holds(), "oversold: {end:?}");
        let mut log = log.lock().unwrap().clone();
        log.sort_by_key(|entry| entry.0);
        let mut replayed = start();
        for (_, change, after) in &log {
            replayed.reserved += change;
            assert_eq!(replayed, *after, "LSN order disagrees with the item's update order");
            assert!(replayed.holds());
        }
        assert_eq!(replayed, end);
        assert_eq!(log.len(), usize::from(won_first) + usize::from(won_second));
    });
}

#[test]
fn two_reserves_for_the_last_units_one_wins() {
    // 2 free units (3 on hand, 1 reserved): 2 + 2 cannot both fit.
    two_writers(Step::Reserve(2), Step::Reserve(2));
}

#[test]
fn two_reserves_that_fit_both_win() {
    two_writers(Step::Reserve(1), Step::Reserve(1));
}

#[test]
fn reserve_against_release() {
    // The reserve of 3 fits only if the release ran first.
    two_writers(Step::Reserve(3), Step::Release(1));
}

#[test]
fn a_seqlock_reader_never_sees_a_torn_item() {
    model(|| {
        let cell = Arc::new(ItemCell::new(start()));
        let writer = {
            let cell = cell.clone();
            loom::thread::spawn(move || {
                // A commit: on_hand and reserved drop together, the ledger moves with them.
                let mut guard = cell.latch();
                guard.counters.on_hand -= 1;
                guard.counters.reserved -= 1;
                guard.counters.committed_total += 1;
            })
        };
        let seen = cell.read();
        assert!(
            seen == start() || seen == Counters { on_hand: 2, reserved: 0, committed_total: 1, ..start() },
            "torn read: {seen:?}"
        );
        writer.join().unwrap();
        assert_eq!(cell.read().on_hand, 2);
    });
}
