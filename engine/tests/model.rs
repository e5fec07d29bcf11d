//! Deterministic simulation: random command histories (with a simulated clock, so expiry
//! happens) run against the engine and against a deliberately simple sequential reference
//! model, a BTreeMap ledger. After every step the reply code and the whole ledger must agree;
//! at the end `verify()` must be clean and replaying the records must rebuild the same state.

use std::collections::BTreeMap;

use proptest::prelude::*;
use reservoir_engine::{
    Command, Config, Engine, Line, Location, Name, OperationId, Quantity, Record, ReservationId, ResultCode, Sku,
    TenantId,
};

const TENANTS: u32 = 2;
const SKUS: [&str; 3] = ["S0", "S1", "S2"];
const LOCATIONS: [&str; 2] = ["A", "B"];

type Key = (u32, &'static str, &'static str);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Item {
    on_hand: i64,
    reserved: i64,
    safety: i64,
    backorder: i64,
}

impl Item {
    fn available(&self) -> i64 {
        self.on_hand - self.reserved - self.safety
    }
}

#[derive(Clone, Debug)]
struct ModelReservation {
    request: Step,
    code: ResultCode,
    /// (item, reserved, committed, released)
    lines: Vec<(Key, i64, i64, i64)>,
    open: bool,
    deadline_ms: u64,
    state: &'static str,
}

/// One generated step, in model terms.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Advance(u64),
    Receive { tenant: u32, op: u8, key: (usize, usize), quantity: i64 },
    Adjust { tenant: u32, op: u8, key: (usize, usize), delta: i64 },
    Count { tenant: u32, op: u8, key: (usize, usize), expected: Option<i64>, on_hand: i64 },
    Move { tenant: u32, op: u8, sku: usize, from: usize, to: usize, quantity: i64 },
    Policy { tenant: u32, op: u8, key: (usize, usize), safety: i64, backorder: i64 },
    Reserve { tenant: u32, id: u8, lines: Vec<((usize, usize), i64)>, ttl_ms: u64, partial: bool },
    Settle { commit: bool, tenant: u32, op: u8, id: u8, lines: Option<Vec<((usize, usize), i64)>> },
    Extend { tenant: u32, op: u8, id: u8, ttl_ms: u64 },
    Expire,
}

#[derive(Default)]
struct Model {
    items: BTreeMap<Key, Item>,
    reservations: BTreeMap<(u32, u8), ModelReservation>,
    operations: BTreeMap<(u32, u8), (Step, ResultCode)>,
}

fn key_of((sku, location): (usize, usize), tenant: u32) -> Key {
    (tenant, SKUS[sku], LOCATIONS[location])
}

impl Model {
    fn correction_ok(item: &Item) -> Result<(), ResultCode> {
        if item.on_hand < 0 {
            return Err(ResultCode::NegativeStock);
        }
        if item.reserved > item.on_hand + item.backorder {
            return Err(ResultCode::StockReserved);
        }
        Ok(())
    }

    fn expire_one(&mut self, id: (u32, u8)) {
        let reservation = self.reservations.get_mut(&id).unwrap();
        for line in &mut reservation.lines {
            let open = line.1 - line.2 - line.3;
            self.items.get_mut(&line.0).unwrap().reserved -= open;
            line.3 += open;
        }
        reservation.open = false;
        reservation.state = "expired";
    }

    fn step(&mut self, step: &Step, now_ms: u64) -> ResultCode {
        match step {
            Step::Advance(_) => ResultCode::Ok,
            Step::Expire => {
                let due: Vec<(u32, u8)> = self
                    .reservations
                    .iter()
                    .filter(|(_, r)| r.open && r.deadline_ms <= now_ms)
                    .map(|(id, _)| *id)
                    .collect();
                for id in due {
                    self.expire_one(id);
                }
                ResultCode::Ok
            }
            Step::Reserve { tenant, id, lines, ttl_ms, partial } => {
                if let Some(existing) = self.reservations.get(&(*tenant, *id)) {
                    return if existing.request == *step {
                        existing.code
                    } else {
                        ResultCode::IdReusedWithDifferentRequest
                    };
                }
                let keys: Vec<Key> = lines.iter().map(|(k, _)| key_of(*k, *tenant)).collect();
                let mut code;
                let mut granted = vec![0i64; lines.len()];
                if keys.iter().any(|k| !self.items.contains_key(k)) {
                    code = ResultCode::UnknownItem;
                } else if *partial {
                    for (position, (_, quantity)) in lines.iter().enumerate() {
                        let item = self.items.get_mut(&keys[position]).unwrap();
                        let take = (*quantity).min((item.available() + item.backorder).max(0));
                        item.reserved += take;
                        granted[position] = take;
                    }
                    let total: i64 = granted.iter().sum();
                    let short = lines.iter().zip(&granted).any(|((_, q), g)| g < q);
                    code = if total == 0 {
                        ResultCode::InsufficientStock
                    } else if short {
                        ResultCode::OkPartial
                    } else {
                        ResultCode::Ok
                    };
                } else {
                    let mut wanted: BTreeMap<Key, i64> = BTreeMap::new();
                    for (position, (_, quantity)) in lines.iter().enumerate() {
                        *wanted.entry(keys[position]).or_default() += quantity;
                    }
                    code = ResultCode::Ok;
                    for (key, want) in &wanted {
                        let item = self.items[key];
                        if item.available() - want < -item.backorder {
                            code = ResultCode::InsufficientStock;
                        }
                    }
                    if code == ResultCode::Ok {
                        for (key, want) in &wanted {
                            self.items.get_mut(key).unwrap().reserved += want;
                        }
                        for (position, (_, quantity)) in lines.iter().enumerate() {
                            granted[position] = *quantity;
                        }
                    }
                }
                if !code.is_ok() {
                    granted = vec![0; lines.len()];
                }
                let open = code.is_ok();
                self.reservations.insert(
                    (*tenant, *id),
                    ModelReservation {
                        request: step.clone(),
                        code,
                        lines: if open {
                            keys.iter().zip(&granted).map(|(k, g)| (*k, *g, 0, 0)).collect()
                        } else {
                            Vec::new()
                        },
                        open,
                        deadline_ms: now_ms + ttl_ms,
                        state: if open { "open" } else { "refused" },
                    },
                );
                code
            }
            Step::Settle { tenant, op, .. } | Step::Extend { tenant, op, .. } => {
                if let Some((request, code)) = self.operations.get(&(*tenant, *op)) {
                    return if request == step { *code } else { ResultCode::IdReusedWithDifferentRequest };
                }
                let code = self.settle(step, now_ms);
                self.operations.insert((*tenant, *op), (step.clone(), code));
                code
            }
            Step::Receive { tenant, op, .. }
            | Step::Adjust { tenant, op, .. }
            | Step::Count { tenant, op, .. }
            | Step::Move { tenant, op, .. }
            | Step::Policy { tenant, op, .. } => {
                if let Step::Move { from, to, .. } = step {
                    if from == to {
                        return ResultCode::SameLocation;
                    }
                }
                if let Some((request, code)) = self.operations.get(&(*tenant, *op)) {
                    return if request == step { *code } else { ResultCode::IdReusedWithDifferentRequest };
                }
                let code = self.stock(step);
                self.operations.insert((*tenant, *op), (step.clone(), code));
                code
            }
        }
    }

    fn settle(&mut self, step: &Step, now_ms: u64) -> ResultCode {
        let (tenant, id) = match step {
            Step::Settle { tenant, id, .. } | Step::Extend { tenant, id, .. } => (*tenant, *id),
            _ => unreachable!(),
        };
        let Some(reservation) = self.reservations.get(&(tenant, id)) else { return ResultCode::UnknownReservation };
        if !reservation.open {
            return ResultCode::ReservationNotOpen;
        }
        if reservation.deadline_ms <= now_ms {
            self.expire_one((tenant, id));
            return ResultCode::ReservationExpired;
        }
        let (commit, lines) = match step {
            Step::Extend { ttl_ms, .. } => {
                self.reservations.get_mut(&(tenant, id)).unwrap().deadline_ms = now_ms + ttl_ms;
                return ResultCode::Ok;
            }
            Step::Settle { commit, lines, .. } => (*commit, lines),
            _ => unreachable!(),
        };
        let mut reservation = reservation.clone();
        let mut take = vec![0i64; reservation.lines.len()];
        match lines {
            None => {
                for (position, line) in reservation.lines.iter().enumerate() {
                    take[position] = line.1 - line.2 - line.3;
                }
            }
            Some(lines) => {
                for (k, quantity) in lines {
                    let key = key_of(*k, tenant);
                    let on_item: Vec<usize> =
                        (0..reservation.lines.len()).filter(|&p| reservation.lines[p].0 == key).collect();
                    if on_item.is_empty() {
                        return ResultCode::LineNotInReservation;
                    }
                    let open: i64 = on_item
                        .iter()
                        .map(|&p| reservation.lines[p].1 - reservation.lines[p].2 - reservation.lines[p].3 - take[p])
                        .sum();
                    if open < *quantity {
                        return ResultCode::ExceedsReserved;
                    }
                    let mut want = *quantity;
                    for p in on_item {
                        let line = reservation.lines[p];
                        let got = want.min(line.1 - line.2 - line.3 - take[p]);
                        take[p] += got;
                        want -= got;
                    }
                }
            }
        }
        let mut items = self.items.clone();
        for (position, line) in reservation.lines.iter_mut().enumerate() {
            let item = items.get_mut(&line.0).unwrap();
            item.reserved -= take[position];
            if commit {
                item.on_hand -= take[position];
                line.2 += take[position];
            } else {
                line.3 += take[position];
            }
        }
        if items.values().any(|item| item.on_hand < 0) {
            return ResultCode::InsufficientOnHand;
        }
        self.items = items;
        let open: i64 = reservation.lines.iter().map(|l| l.1 - l.2 - l.3).sum();
        let committed: i64 = reservation.lines.iter().map(|l| l.2).sum();
        reservation.open = open > 0;
        reservation.state = match (open > 0, committed > 0) {
            (true, false) => "open",
            (true, true) => "partially_committed",
            (false, true) => "committed",
            (false, false) => "released",
        };
        self.reservations.insert((tenant, id), reservation);
        ResultCode::Ok
    }

    fn stock(&mut self, step: &Step) -> ResultCode {
        match step {
            Step::Receive { tenant, key, quantity, .. } => {
                self.items.entry(key_of(*key, *tenant)).or_default().on_hand += quantity;
                ResultCode::Ok
            }
            Step::Adjust { tenant, key, delta, .. } => {
                let key = key_of(*key, *tenant);
                if *delta < 0 && !self.items.contains_key(&key) {
                    return ResultCode::UnknownItem;
                }
                let item = self.items.entry(key).or_default();
                let next = Item { on_hand: item.on_hand + delta, ..*item };
                Model::correction_ok(&next).map(|()| *item = next).err().unwrap_or(ResultCode::Ok)
            }
            Step::Count { tenant, key, expected, on_hand, .. } => {
                let item = self.items.entry(key_of(*key, *tenant)).or_default();
                if expected.is_some_and(|e| e != item.on_hand) {
                    return ResultCode::ExpectedMismatch;
                }
                let next = Item { on_hand: *on_hand, ..*item };
                Model::correction_ok(&next).map(|()| *item = next).err().unwrap_or(ResultCode::Ok)
            }
            Step::Move { tenant, sku, from, to, quantity, .. } => {
                let source_key = key_of((*sku, *from), *tenant);
                let Some(source) = self.items.get(&source_key).copied() else { return ResultCode::UnknownItem };
                let destination_key = key_of((*sku, *to), *tenant);
                let destination = *self.items.entry(destination_key).or_default();
                let source = Item { on_hand: source.on_hand - quantity, ..source };
                let destination = Item { on_hand: destination.on_hand + quantity, ..destination };
                if let Err(code) = Model::correction_ok(&source).and(Model::correction_ok(&destination)) {
                    return code;
                }
                self.items.insert(source_key, source);
                self.items.insert(destination_key, destination);
                ResultCode::Ok
            }
            Step::Policy { tenant, key, safety, backorder, .. } => {
                let item = self.items.entry(key_of(*key, *tenant)).or_default();
                if item.reserved > item.on_hand + backorder {
                    return ResultCode::PolicyConflict;
                }
                item.safety = *safety;
                item.backorder = *backorder;
                ResultCode::Ok
            }
            _ => unreachable!(),
        }
    }
}

fn to_command(step: &Step, tenants: &[TenantId]) -> Option<Command> {
    let sku = |s: usize| Sku::new(SKUS[s]).unwrap();
    let location = |l: usize| Location::new(LOCATIONS[l]).unwrap();
    let op = |o: u8| OperationId::new(&format!("op{o}")).unwrap();
    let rid = |r: u8| ReservationId::new(&format!("r{r}")).unwrap();
    let quantity = |q: i64| Quantity::new(q).unwrap();
    let lines = |lines: &[((usize, usize), i64)]| -> Vec<Line> {
        lines.iter().map(|((s, l), q)| Line { sku: sku(*s), location: location(*l), quantity: quantity(*q) }).collect()
    };
    let t = |t: u32| tenants[t as usize];
    Some(match step {
        Step::Advance(_) => return None,
        Step::Expire => Command::Expire { limit: 1_000 },
        Step::Receive { tenant, op: o, key, quantity: q } => Command::Receive {
            tenant: t(*tenant),
            operation: op(*o),
            sku: sku(key.0),
            location: location(key.1),
            quantity: quantity(*q),
        },
        Step::Adjust { tenant, op: o, key, delta } => Command::Adjust {
            tenant: t(*tenant),
            operation: op(*o),
            sku: sku(key.0),
            location: location(key.1),
            delta: *delta,
            reason: Name::new("sim").unwrap(),
        },
        Step::Count { tenant, op: o, key, expected, on_hand } => Command::SetOnHand {
            tenant: t(*tenant),
            operation: op(*o),
            sku: sku(key.0),
            location: location(key.1),
            expected: *expected,
            on_hand: *on_hand,
        },
        Step::Move { tenant, op: o, sku: s, from, to, quantity: q } => Command::Move {
            tenant: t(*tenant),
            operation: op(*o),
            sku: sku(*s),
            from: location(*from),
            to: location(*to),
            quantity: quantity(*q),
        },
        Step::Policy { tenant, op: o, key, safety, backorder } => Command::SetPolicy {
            tenant: t(*tenant),
            operation: op(*o),
            sku: sku(key.0),
            location: location(key.1),
            safety_stock: *safety,
            backorder_limit: *backorder,
        },
        Step::Reserve { tenant, id, lines: l, ttl_ms, partial } => Command::Reserve {
            tenant: t(*tenant),
            reservation: rid(*id),
            lines: lines(l),
            ttl_ms: *ttl_ms,
            allow_partial: *partial,
        },
        Step::Settle { commit, tenant, op: o, id, lines: l } => {
            let (tenant, operation, reservation, lines) = (t(*tenant), op(*o), rid(*id), l.as_deref().map(lines));
            if *commit {
                Command::Commit { tenant, operation, reservation, lines }
            } else {
                Command::Release { tenant, operation, reservation, lines }
            }
        }
        Step::Extend { tenant, op: o, id, ttl_ms } => {
            Command::Extend { tenant: t(*tenant), operation: op(*o), reservation: rid(*id), ttl_ms: *ttl_ms }
        }
    })
}

fn key_strategy() -> impl Strategy<Value = (usize, usize)> + Clone {
    (0..SKUS.len(), 0..LOCATIONS.len())
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let tenant = 0..TENANTS;
    let op = 0u8..24;
    let id = 0u8..10;
    let lines = prop::collection::vec((key_strategy(), 1i64..6), 1..4);
    prop_oneof![
        2 => (1u64..4_000).prop_map(Step::Advance),
        4 => (tenant.clone(), op.clone(), key_strategy(), 1i64..12).prop_map(|(tenant, op, key, quantity)| Step::Receive { tenant, op, key, quantity }),
        1 => (tenant.clone(), op.clone(), key_strategy(), prop_oneof![-6i64..0, 1i64..6]).prop_map(|(tenant, op, key, delta)| Step::Adjust { tenant, op, key, delta }),
        1 => (tenant.clone(), op.clone(), key_strategy(), prop::option::of(0i64..10), 0i64..12)
            .prop_map(|(tenant, op, key, expected, on_hand)| Step::Count { tenant, op, key, expected, on_hand }),
        1 => (tenant.clone(), op.clone(), 0..SKUS.len(), 0..LOCATIONS.len(), 0..LOCATIONS.len(), 1i64..6)
            .prop_map(|(tenant, op, sku, from, to, quantity)| Step::Move { tenant, op, sku, from, to, quantity }),
        1 => (tenant.clone(), op.clone(), key_strategy(), 0i64..3, 0i64..4)
            .prop_map(|(tenant, op, key, safety, backorder)| Step::Policy { tenant, op, key, safety, backorder }),
        8 => (tenant.clone(), id.clone(), lines.clone(), 1_000u64..8_000, prop::bool::weighted(0.2))
            .prop_map(|(tenant, id, lines, ttl_ms, partial)| Step::Reserve { tenant, id, lines, ttl_ms, partial }),
        5 => (any::<bool>(), tenant.clone(), op.clone(), id.clone(), prop::option::weighted(0.3, lines))
            .prop_map(|(commit, tenant, op, id, lines)| Step::Settle { commit, tenant, op, id, lines }),
        1 => (tenant, op, id, 1_000u64..8_000).prop_map(|(tenant, op, id, ttl_ms)| Step::Extend { tenant, op, id, ttl_ms }),
        1 => Just(Step::Expire),
    ]
}

fn run(steps: &[Step]) {
    let config = Config { shards: 2, id_shards: 2, ..Config::default() };
    let engine = Engine::new(config.clone());
    let mut records: Vec<Record> = Vec::new();
    let mut now_ms = 1_000_000;
    let tenants: Vec<TenantId> = (0..TENANTS)
        .map(|t| {
            engine.execute(&Command::CreateTenant { name: Name::new(&format!("t{t}")).unwrap() }, now_ms, &mut records);
            engine.tenant_id(&format!("t{t}")).unwrap()
        })
        .collect();
    let mut model = Model::default();
    for (index, step) in steps.iter().enumerate() {
        if let Step::Advance(ms) = step {
            now_ms += ms;
            continue;
        }
        let command = to_command(step, &tenants).expect("a command");
        let reply = engine.execute(&command, now_ms, &mut records);
        let expected = model.step(step, now_ms);
        assert_eq!(reply.code, expected, "step {index} {step:?}: engine {reply:?}");
        for (key, item) in &model.items {
            let view = engine
                .item(tenants[key.0 as usize], key.1, key.2)
                .unwrap_or_else(|| panic!("step {index}: engine lacks {key:?}"));
            let actual = Item {
                on_hand: view.counters.on_hand,
                reserved: view.counters.reserved,
                safety: view.counters.safety_stock,
                backorder: view.counters.backorder_limit,
            };
            assert_eq!(actual, *item, "step {index} {step:?}: item {key:?}");
        }
        assert_eq!(engine.item_count(), model.items.len(), "step {index}: item count");
        // The per-SKU query: every location of the SKU, only the tenant's own, and their total.
        for tenant in 0..TENANTS {
            for sku in SKUS {
                let found = engine.sku(tenants[tenant as usize], sku, usize::MAX);
                assert_eq!(found.location_count, found.locations.len());
                let (views, total) = (found.locations, found.total.expect("the model's totals fit"));
                let mut actual: Vec<(String, i64, i64)> = views
                    .iter()
                    .map(|view| (view.location.clone(), view.counters.on_hand, view.counters.reserved))
                    .collect();
                actual.sort();
                let expected: Vec<(String, i64, i64)> = model
                    .items
                    .iter()
                    .filter(|(key, _)| key.0 == tenant && key.1 == sku)
                    .map(|(key, item)| (key.2.to_owned(), item.on_hand, item.reserved))
                    .collect();
                assert_eq!(actual, expected, "step {index} {step:?}: locations of t{tenant} {sku}");
                assert_eq!(total.on_hand, expected.iter().map(|entry| entry.1).sum::<i64>());
            }
        }
        for ((tenant, id), reservation) in &model.reservations {
            let view = engine.reservation(tenants[*tenant as usize], &format!("r{id}")).expect("reservation");
            assert_eq!(view.state.name(), reservation.state, "step {index} {step:?}: r{id}");
        }
    }
    let report = engine.verify();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let replica = Engine::new(config);
    for record in &records {
        replica.apply(record).unwrap_or_else(|e| panic!("replay: {e}"));
    }
    assert_eq!(replica.dump(), engine.dump());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_reference_model(steps in prop::collection::vec(step_strategy(), 1..160)) {
        run(&steps);
    }
}
