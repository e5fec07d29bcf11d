//! Unit tests of the core through one `check` helper.
//!
//! A test is a script, one step a line. `check` runs it against a fresh engine and, besides
//! what each line expects, checks after every step that `verify()` finds nothing wrong, and at
//! the end that replaying the records on a second engine rebuilds exactly the same state.
//!
//! ```text
//! at 5000                                   now_ms for the following steps
//! limit 3                                   set_idempotency_entries_max (reservations, operations)
//! tenant acme => ok
//! receive acme op1 SKU1@A 10 => ok
//! adjust acme op2 SKU1@A -2 damaged => ok
//! count acme op3 SKU1@A 7 [expect=8] => ok  set_on_hand, compare-and-set when expect= is given
//! move acme op4 SKU1 A B 3 => ok
//! policy acme op5 SKU1@A safety=1 backorder=0 => ok
//! import acme op6 SKU1@A=5 SKU2@A=3 => ok rows=ok,ok
//! reserve acme r1 SKU1@A:3 SKU2@A:1 [ttl=60000] [partial] => ok lines=ok,ok applied=3,1
//! commit acme op7 r1 [SKU1@A:2 ...] => ok
//! release acme op8 r1 [SKU1@A:1 ...] => ok
//! extend acme op9 r1 60000 => ok
//! expire => count=1
//! forget => count=2
//! stock acme SKU1@A on_hand=10 reserved=3 available=7
//! reservation acme r1 state=open
//! ```

use reservoir_engine::{
    Body, Command, Config, Engine, ImportRow, Line, Location, Lsn, Name, OperationId, Quantity, Record, Reply,
    ReservationId, ResultCode, Sku, TenantId, POLICY_MAX,
};

fn tenant(engine: &Engine, name: &str) -> TenantId {
    engine.tenant_id(name).unwrap_or(TenantId(9_999))
}

fn item(text: &str) -> (Sku, Location) {
    let (sku, location) = text.split_once('@').unwrap_or_else(|| panic!("want SKU@LOC, got {text}"));
    (Sku::new(sku).unwrap(), Location::new(location).unwrap())
}

fn line(text: &str) -> Line {
    let (item_text, quantity) = text.rsplit_once(':').unwrap_or_else(|| panic!("want SKU@LOC:QTY, got {text}"));
    let (sku, location) = item(item_text);
    Line { sku, location, quantity: Quantity::new(quantity.parse().unwrap()).unwrap() }
}

fn op(text: &str) -> OperationId {
    OperationId::new(text).unwrap()
}

fn option<'a>(words: &'a [&'a str], key: &str) -> Option<&'a str> {
    words.iter().find_map(|word| word.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

fn parse(engine: &Engine, words: &[&str]) -> Command {
    let t = |i: usize| tenant(engine, words[i]);
    let lines = |from: usize| -> Vec<Line> {
        words[from..].iter().filter(|w| w.contains(':') && !w.contains('=')).map(|w| line(w)).collect()
    };
    match words[0] {
        "tenant" => Command::CreateTenant { name: Name::new(words[1]).unwrap() },
        "receive" => {
            let (sku, location) = item(words[3]);
            Command::Receive {
                tenant: t(1),
                operation: op(words[2]),
                sku,
                location,
                quantity: Quantity::new(words[4].parse().unwrap()).unwrap(),
            }
        }
        "adjust" => {
            let (sku, location) = item(words[3]);
            Command::Adjust {
                tenant: t(1),
                operation: op(words[2]),
                sku,
                location,
                delta: words[4].parse().unwrap(),
                reason: Name::new(words[5]).unwrap(),
            }
        }
        "count" => {
            let (sku, location) = item(words[3]);
            Command::SetOnHand {
                tenant: t(1),
                operation: op(words[2]),
                sku,
                location,
                expected: option(words, "expect").map(|v| v.parse().unwrap()),
                on_hand: words[4].parse().unwrap(),
            }
        }
        "move" => Command::Move {
            tenant: t(1),
            operation: op(words[2]),
            sku: Sku::new(words[3]).unwrap(),
            from: Location::new(words[4]).unwrap(),
            to: Location::new(words[5]).unwrap(),
            quantity: Quantity::new(words[6].parse().unwrap()).unwrap(),
        },
        "policy" => {
            let (sku, location) = item(words[3]);
            Command::SetPolicy {
                tenant: t(1),
                operation: op(words[2]),
                sku,
                location,
                safety_stock: option(words, "safety").unwrap().parse().unwrap(),
                backorder_limit: option(words, "backorder").unwrap().parse().unwrap(),
            }
        }
        "import" => Command::Import {
            tenant: t(1),
            operation: op(words[2]),
            rows: words[3..]
                .iter()
                .map(|w| {
                    let (item_text, on_hand) = w.split_once('=').unwrap();
                    let (sku, location) = item(item_text);
                    ImportRow {
                        sku,
                        location,
                        on_hand: on_hand.parse().unwrap(),
                        safety_stock: None,
                        backorder_limit: None,
                    }
                })
                .collect(),
        },
        "reserve" => Command::Reserve {
            tenant: t(1),
            reservation: ReservationId::new(words[2]).unwrap(),
            lines: lines(3),
            ttl_ms: option(words, "ttl").map_or(60_000, |v| v.parse().unwrap()),
            allow_partial: words.contains(&"partial"),
        },
        "commit" | "release" => {
            let picked = lines(4);
            let lines = (!picked.is_empty()).then_some(picked);
            let (tenant, operation, reservation) = (t(1), op(words[2]), ReservationId::new(words[3]).unwrap());
            if words[0] == "commit" {
                Command::Commit { tenant, operation, reservation, lines }
            } else {
                Command::Release { tenant, operation, reservation, lines }
            }
        }
        "extend" => Command::Extend {
            tenant: t(1),
            operation: op(words[2]),
            reservation: ReservationId::new(words[3]).unwrap(),
            ttl_ms: words[4].parse().unwrap(),
        },
        "expire" => Command::Expire { limit: 1_000 },
        "epoch" => Command::BeginEpoch { epoch: words[1].parse().unwrap() },
        "forget" => Command::Forget,
        other => panic!("unknown step {other}"),
    }
}

fn check_reply(step: &str, reply: &Reply, expected: &[&str]) {
    let code = expected[0];
    assert_eq!(reply.code.name(), code, "step `{step}`: {reply:?}");
    for word in &expected[1..] {
        let (key, value) = word.split_once('=').unwrap();
        let actual = match key {
            "lines" | "rows" => reply.lines.iter().map(|l| l.code.name().to_owned()).collect::<Vec<_>>().join(","),
            "applied" => reply.lines.iter().map(|l| l.applied.to_string()).collect::<Vec<_>>().join(","),
            "available" => reply.lines.iter().map(|l| l.available.to_string()).collect::<Vec<_>>().join(","),
            "count" => reply.count.to_string(),
            "on_hand" => reply.on_hand.to_string(),
            "deadline" => reply.deadline_ms.to_string(),
            other => panic!("unknown expectation {other}"),
        };
        assert_eq!(actual, value, "step `{step}`: {key}, reply {reply:?}");
    }
}

/// Runs `script`; returns the engine for further checks.
fn check(script: &str) -> Engine {
    check_with(Config { shards: 4, id_shards: 4, ..Config::default() }, script)
}

fn check_with(config: Config, script: &str) -> Engine {
    check_on(Engine::new(config), script)
}

/// Runs `script` on `engine` (made empty by the caller, who may have asked it where ids go).
fn check_on(engine: Engine, script: &str) -> Engine {
    let config = engine.config().clone();
    let mut records: Vec<Record> = Vec::new();
    let mut now_ms = 1_000_000u64;
    for step in script.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let words: Vec<&str> = step.split_whitespace().collect();
        match words[0] {
            "at" => now_ms = words[1].parse().unwrap(),
            "limit" => engine.set_idempotency_entries_max(words[1].parse().unwrap()),
            "stock" => {
                let (sku, location) = words[2].split_once('@').unwrap();
                let view = engine
                    .item(tenant(&engine, words[1]), sku, location)
                    .unwrap_or_else(|| panic!("`{step}`: no item"));
                for expectation in &words[3..] {
                    let (key, value) = expectation.split_once('=').unwrap();
                    let actual = match key {
                        "on_hand" => view.counters.on_hand,
                        "reserved" => view.counters.reserved,
                        "available" => view.available(),
                        "safety" => view.counters.safety_stock,
                        "backorder" => view.counters.backorder_limit,
                        other => panic!("unknown stock field {other}"),
                    };
                    assert_eq!(actual.to_string(), value, "step `{step}`: {view:?}");
                }
            }
            "reservation" => {
                let view = engine.reservation(tenant(&engine, words[1]), words[2]);
                match option(&words, "state") {
                    Some("none") => assert!(view.is_none(), "step `{step}`: {view:?}"),
                    Some(state) => assert_eq!(
                        view.unwrap_or_else(|| panic!("`{step}`: none")).state.name(),
                        state,
                        "step `{step}`"
                    ),
                    None => panic!("reservation step needs state="),
                }
            }
            _ => {
                let (command_words, expected) = match words.iter().position(|w| *w == "=>") {
                    Some(arrow) => (&words[..arrow], &words[arrow + 1..]),
                    None => panic!("step `{step}` needs `=> expectation`"),
                };
                let command = parse(&engine, command_words);
                let before = records.len();
                let reply = engine.execute(&command, now_ms, &mut records);
                if expected[0].starts_with("count=") {
                    check_reply(step, &reply, &[&["ok"], expected].concat());
                } else {
                    check_reply(step, &reply, expected);
                }
                // A retry of any mutation returns the same reply and records nothing new.
                // (A promotion carries no id: its repeat is refused, below.)
                if !matches!(
                    command,
                    Command::Expire { .. }
                        | Command::Forget
                        | Command::CreateTenant { .. }
                        | Command::BeginEpoch { .. }
                        | Command::MarkCredentialsChanged
                ) {
                    let again = engine.execute(&command, now_ms, &mut records);
                    if records.len() == before {
                        // Refused before anything was remembered (invalid input): must be stable too.
                        assert_eq!(again.code, reply.code, "step `{step}`: retry of a stateless refusal");
                    } else {
                        assert_eq!(again, reply, "step `{step}`: a retry must return the original reply");
                    }
                }
            }
        }
        let report = engine.verify();
        assert!(report.violations.is_empty(), "after `{step}`: {:?}", report.violations);
    }
    // Replaying the records rebuilds exactly this state.
    let replica = Engine::new(config);
    for record in &records {
        replica.apply(record).unwrap_or_else(|e| panic!("replay of {record:?}: {e}"));
    }
    assert_eq!(replica.dump(), engine.dump(), "replay differs");
    engine
}

#[test]
fn reserve_is_all_or_nothing_and_names_the_short_lines() {
    check(
        "tenant acme => ok
         receive acme op1 SKU1@A 10 => ok on_hand=10
         receive acme op2 SKU2@A 2 => ok
         reserve acme r1 SKU1@A:3 SKU2@A:5 => insufficient_stock lines=ok,insufficient_stock applied=0,0 available=10,2
         stock acme SKU1@A on_hand=10 reserved=0 available=10
         reservation acme r1 state=refused
         reserve acme r2 SKU1@A:3 SKU2@A:2 => ok lines=ok,ok applied=3,2 available=7,0
         stock acme SKU1@A reserved=3 available=7
         stock acme SKU2@A reserved=2 available=0
         reservation acme r2 state=open",
    );
}

#[test]
fn two_lines_on_one_item_count_together() {
    check(
        "tenant acme => ok
         receive acme op1 SKU1@A 5 => ok
         reserve acme r1 SKU1@A:3 SKU1@A:3 => insufficient_stock
         reserve acme r2 SKU1@A:3 SKU1@A:2 => ok applied=3,2
         stock acme SKU1@A reserved=5 available=0
         commit acme c1 r2 SKU1@A:4 => ok
         stock acme SKU1@A on_hand=1 reserved=1
         reservation acme r2 state=partially_committed",
    );
}

#[test]
fn allow_partial_reserves_what_is_there_and_says_so() {
    check(
        "tenant acme => ok
         receive acme op1 SKU1@A 4 => ok
         receive acme op2 SKU2@A 9 => ok
         reserve acme r1 SKU1@A:6 SKU2@A:2 partial => ok_partial lines=insufficient_stock,ok applied=4,2
         stock acme SKU1@A reserved=4 available=0
         reserve acme r2 SKU1@A:1 partial => insufficient_stock applied=0
         commit acme c1 r1 => ok
         stock acme SKU1@A on_hand=0 reserved=0
         reservation acme r1 state=committed",
    );
}

#[test]
fn a_retry_returns_the_original_outcome_and_a_changed_request_is_refused() {
    check(
        "tenant acme => ok
         receive acme op1 SKU1@A 10 => ok
         reserve acme r1 SKU1@A:4 => ok
         # Same id, different content: refused, nothing changes.
         reserve acme r1 SKU1@A:5 => id_reused_with_different_request
         stock acme SKU1@A reserved=4
         commit acme c1 r1 => ok
         # Same id, same content after the commit: still the original answer.
         reserve acme r1 SKU1@A:4 => ok applied=4
         stock acme SKU1@A on_hand=6 reserved=0
         # Operation ids too: a retried receive does not receive twice.
         receive acme op1 SKU1@A 10 => ok on_hand=10
         stock acme SKU1@A on_hand=6
         receive acme op1 SKU1@A 11 => id_reused_with_different_request
         # A refusal is remembered as well: a retry gets it even after stock arrives.
         reserve acme r2 SKU1@A:50 => insufficient_stock
         receive acme op2 SKU1@A 100 => ok
         reserve acme r2 SKU1@A:50 => insufficient_stock",
    );
}

/// Regression (audit): an import row's absent policy field and a field of -1 gave the same
/// fingerprint, so a retry that changed one into the other got the original outcome instead of
/// `id_reused_with_different_request`. Fingerprints of every other row are what they were.
#[test]
fn an_import_retried_with_an_absent_policy_field_given_is_another_request() {
    let engine = check("tenant acme => ok");
    let acme = tenant(&engine, "acme");
    let import = |safety_stock: Option<i64>| Command::Import {
        tenant: acme,
        operation: op("i"),
        rows: vec![ImportRow {
            sku: Sku::new("S").unwrap(),
            location: Location::new("A").unwrap(),
            on_hand: 5,
            safety_stock,
            backorder_limit: None,
        }],
    };
    let mut records = Vec::new();
    assert_eq!(engine.execute(&import(None), 0, &mut records).code, ResultCode::Ok);
    assert_eq!(engine.execute(&import(None), 0, &mut records).code, ResultCode::Ok, "a retry");
    for changed in [Some(-1), Some(0), Some(-2)] {
        assert_eq!(
            engine.execute(&import(changed), 0, &mut records).code,
            ResultCode::IdReusedWithDifferentRequest,
            "safety stock {changed:?} where the first request had none"
        );
    }
    assert_ne!(import(Some(-1)).fingerprint(), import(None).fingerprint());
    assert_eq!(import(Some(3)).fingerprint(), import(Some(3)).fingerprint());
}

#[test]
fn commit_and_release_whole_or_by_line() {
    check(
        "tenant acme => ok
         import acme op1 SKU1@A=10 SKU2@A=10 => ok rows=ok,ok
         reserve acme r1 SKU1@A:4 SKU2@A:4 => ok
         commit acme c1 r1 SKU1@A:1 => ok
         release acme c2 r1 SKU2@A:3 => ok
         stock acme SKU1@A on_hand=9 reserved=3
         stock acme SKU2@A on_hand=10 reserved=1
         commit acme c3 r1 SKU1@A:4 => exceeds_reserved lines=exceeds_reserved
         commit acme c4 r1 SKU3@A:1 => line_not_in_reservation
         release acme c5 r1 => ok
         stock acme SKU1@A on_hand=9 reserved=0
         stock acme SKU2@A reserved=0
         reservation acme r1 state=committed
         commit acme c6 r1 => reservation_not_open
         release acme c7 r9 => unknown_reservation
         reserve acme r2 SKU1@A:2 => ok
         release acme c8 r2 => ok
         reservation acme r2 state=released",
    );
}

#[test]
fn expiry_is_a_command_driven_by_now() {
    check(
        "at 1000000
         tenant acme => ok
         receive acme op1 SKU1@A 10 => ok
         reserve acme r1 SKU1@A:4 ttl=10000 => ok deadline=1010000
         reserve acme r2 SKU1@A:4 ttl=20000 => ok
         at 1009999
         expire => count=0
         extend acme e1 r2 30000 => ok deadline=1039999
         at 1010000
         expire => count=1
         reservation acme r1 state=expired
         stock acme SKU1@A reserved=4
         # Past its deadline but not yet swept: commit finds it expired and releases it.
         at 1040000
         commit acme c1 r2 => reservation_expired
         reservation acme r2 state=expired
         stock acme SKU1@A on_hand=10 reserved=0
         expire => count=0
         extend acme e2 r2 1000 => reservation_not_open",
    );
}

#[test]
fn stock_commands() {
    check(
        "tenant acme => ok
         receive acme op1 SKU1@A 10 => ok on_hand=10
         adjust acme op2 SKU1@A -3 damaged => ok on_hand=7
         adjust acme op3 SKU1@A -8 damaged => negative_stock
         adjust acme op4 SKU9@A -1 lost => unknown_item
         count acme op5 SKU1@A 9 expect=6 => expected_mismatch on_hand=7
         count acme op6 SKU1@A 9 expect=7 => ok on_hand=9
         count acme op7 SKU1@A 8 => ok
         move acme op8 SKU1 A B 5 => ok on_hand=3
         stock acme SKU1@A on_hand=3
         stock acme SKU1@B on_hand=5
         move acme op9 SKU1 A B 4 => negative_stock
         move acme op10 SKU1 A A 1 => same_location
         move acme op11 SKU1 C A 1 => unknown_item
         policy acme op12 SKU1@B safety=2 backorder=0 => ok
         stock acme SKU1@B available=3 safety=2
         reserve acme r1 SKU1@B:4 => insufficient_stock
         reserve acme r2 SKU1@B:3 => ok
         # Corrections may not leave fewer on hand than reserved.
         count acme op13 SKU1@B 2 => stock_reserved
         move acme op14 SKU1 B A 3 => stock_reserved
         import acme op15 SKU1@B=1 SKU5@A=4 => ok_partial rows=stock_reserved,ok
         stock acme SKU5@A on_hand=4",
    );
}

#[test]
fn backorders_up_to_the_limit_and_no_further() {
    check(
        "tenant acme => ok
         receive acme op1 SKU1@A 2 => ok
         policy acme op2 SKU1@A safety=0 backorder=3 => ok
         reserve acme r1 SKU1@A:4 => ok available=-2
         reserve acme r2 SKU1@A:2 => insufficient_stock available=-2
         reserve acme r3 SKU1@A:1 => ok
         stock acme SKU1@A on_hand=2 reserved=5 available=-3
         # The limit cannot be lowered below what is in use.
         policy acme op3 SKU1@A safety=0 backorder=2 => policy_conflict
         # Cannot ship what is not on hand.
         commit acme c1 r1 => insufficient_on_hand
         commit acme c2 r1 SKU1@A:2 => ok
         stock acme SKU1@A on_hand=0 reserved=3
         receive acme op4 SKU1@A 5 => ok
         commit acme c3 r1 => ok
         stock acme SKU1@A on_hand=3 reserved=1",
    );
}

/// Regression (review): a commit refused for `insufficient_on_hand` answered its lines with
/// the quantities it had planned as `applied`, though nothing was; and a commit or release
/// past the deadline answered the reservation's released lines, each `ok` and applied, not
/// the request's. Both replies now say of each line asked for that nothing was applied.
#[test]
fn a_refused_or_expired_settle_says_nothing_was_applied() {
    check(
        "at 1000000
         tenant acme => ok
         receive acme op1 SKU1@A 2 => ok
         receive acme op2 SKU2@A 10 => ok
         policy acme op3 SKU1@A safety=0 backorder=3 => ok
         reserve acme r1 SKU1@A:4 => ok
         commit acme c1 r1 SKU1@A:3 => insufficient_on_hand lines=ok applied=0
         stock acme SKU1@A on_hand=2 reserved=4
         reserve acme r2 SKU1@A:1 SKU2@A:4 ttl=10000 => ok
         at 1010000
         commit acme c2 r2 SKU2@A:1 => reservation_expired lines=reservation_expired applied=0
         reserve acme r3 SKU2@A:2 ttl=10000 => ok
         at 1020000
         release acme c3 r3 => reservation_expired lines= applied=
         stock acme SKU2@A on_hand=10 reserved=0",
    );
}

#[test]
fn bad_input_gets_its_own_code() {
    check(
        "tenant acme => ok
         tenant acme => tenant_exists
         receive acme op1 SKU1@A 10 => ok
         reserve acme r1 SKU1@A:1 ttl=10 => ttl_out_of_range
         reserve acme r2 SKU1@A:1 ttl=999999999999 => ttl_out_of_range
         reserve nobody r3 SKU1@A:1 => unknown_tenant
         reserve acme r4 SKU9@A:1 => unknown_item lines=unknown_item
         extend acme e1 r404 60000 => unknown_reservation
         import acme op2 SKU2@A=1125899906842624 => ok
         receive acme op3 SKU2@A 1 => quantity_overflow
         import acme op4 SKU1@A=-1 => negative_stock rows=negative_stock
         policy acme op5 SKU1@A safety=4294967295 backorder=4294967295 => ok
         policy acme op6 SKU1@A safety=4294967296 backorder=0 => quantity_overflow
         policy acme op7 SKU1@A safety=0 backorder=4294967296 => quantity_overflow",
    );
    let engine = Engine::new(Config::default());
    let mut records = Vec::new();
    engine.execute(&Command::CreateTenant { name: Name::new("acme").unwrap() }, 0, &mut records);
    let acme = engine.tenant_id("acme").unwrap();
    let many: Vec<Line> = (0..65).map(|i| line(&format!("S{i}@A:1"))).collect();
    let reserve = |lines: Vec<Line>| Command::Reserve {
        tenant: acme,
        reservation: ReservationId::new("r").unwrap(),
        lines,
        ttl_ms: 60_000,
        allow_partial: false,
    };
    assert_eq!(engine.execute(&reserve(Vec::new()), 0, &mut records).code, ResultCode::EmptyLines);
    assert_eq!(engine.execute(&reserve(many), 0, &mut records).code, ResultCode::TooManyLines);
    // Names and quantities are refused at the boundary, each with its own code.
    assert_eq!(ResultCode::from(Sku::new("").unwrap_err()), ResultCode::NameEmpty);
    assert_eq!(ResultCode::from(Sku::new(&"x".repeat(65)).unwrap_err()), ResultCode::NameTooLong);
    assert_eq!(ResultCode::from(Sku::new("a\tb").unwrap_err()), ResultCode::NameNotPrintable);
    assert_eq!(ResultCode::from(Quantity::new(0).unwrap_err()), ResultCode::QuantityNotPositive);
    assert_eq!(ResultCode::from(Quantity::new(1 << 41).unwrap_err()), ResultCode::QuantityTooLarge);
    let adjust = Command::Adjust {
        tenant: acme,
        operation: op("a"),
        sku: Sku::new("S").unwrap(),
        location: Location::new("A").unwrap(),
        delta: 0,
        reason: Name::new("x").unwrap(),
    };
    assert_eq!(engine.execute(&adjust, 0, &mut records).code, ResultCode::QuantityNotPositive);
    let rows = (0..10_001)
        .map(|i| ImportRow {
            sku: Sku::new(&format!("S{i}")).unwrap(),
            location: Location::new("A").unwrap(),
            on_hand: 1,
            safety_stock: None,
            backorder_limit: None,
        })
        .collect();
    let import = Command::Import { tenant: acme, operation: op("i"), rows };
    assert_eq!(engine.execute(&import, 0, &mut records).code, ResultCode::TooManyRows);
    // An import row's policy: POLICY_MAX is held, one more is refused for that row alone.
    let row = |sku: &str, safety_stock: i64, backorder_limit: i64| ImportRow {
        sku: Sku::new(sku).unwrap(),
        location: Location::new("A").unwrap(),
        on_hand: 1,
        safety_stock: Some(safety_stock),
        backorder_limit: Some(backorder_limit),
    };
    let rows = vec![row("P1", POLICY_MAX, POLICY_MAX), row("P2", POLICY_MAX + 1, 0), row("P3", 0, POLICY_MAX + 1)];
    let reply = engine.execute(&Command::Import { tenant: acme, operation: op("p"), rows }, 0, &mut records);
    assert_eq!(reply.code, ResultCode::OkPartial);
    let codes: Vec<ResultCode> = reply.lines.iter().map(|line| line.code).collect();
    assert_eq!(codes, [ResultCode::Ok, ResultCode::QuantityOverflow, ResultCode::QuantityOverflow]);
}

#[test]
fn ids_are_remembered_for_the_retention_and_then_forgotten() {
    let config = Config { shards: 2, id_shards: 2, idempotency_retention_ms: 100_000 };
    let engine = check_with(
        config,
        "at 1000000
         tenant acme => ok
         receive acme op1 SKU1@A 10 => ok
         reserve acme r1 SKU1@A:4 => ok
         commit acme c1 r1 => ok
         reserve acme r2 SKU1@A:1 => ok
         at 1099999
         forget => count=0
         at 1100001
         # op1, c1 and the closed r1 go; the open r2 stays however old.
         forget => count=3
         reservation acme r1 state=none
         reservation acme r2 state=open
         # A forgotten id is a new request.
         receive acme op1 SKU1@A 10 => ok on_hand=16",
    );
    assert_eq!(engine.dump().operations.len(), 1);
}

#[test]
fn the_idempotency_memory_is_bounded_and_forgets_the_oldest_past_the_floor() {
    // One id shard holding 3 of each: forget brings each table back to 90% of 3 = 2.
    let config = Config { shards: 2, id_shards: 1, idempotency_retention_ms: 24 * 3_600_000 };
    let engine = check_with(
        config,
        "limit 3
         at 1000000
         tenant acme => ok
         receive acme op1 SKU1@A 10 => ok
         reserve acme r1 SKU1@A:1 => ok
         reserve acme r2 SKU1@A:1 => ok
         reserve acme r3 SKU1@A:1 => ok
         # Full: a new reservation is refused and not remembered (check retries it: same code).
         reserve acme r4 SKU1@A:1 => memory_full
         reservation acme r4 state=none
         stock acme SKU1@A on_hand=10 reserved=3
         at 1000100
         commit acme c1 r1 => ok
         at 1000200
         release acme c2 r2 => ok
         receive acme op3 SKU1@A 1 => memory_full
         # Everything is younger than the 5-minute floor: nothing may go, however full.
         at 1200000
         forget => count=0
         reserve acme r4 SKU1@A:1 => memory_full
         # Past the floor: the oldest go first, just enough to get back under the target:
         # r1 (closed at 1000100), op1 and c1; r2 and c2 (1000200) stay, and so does the open r3.
         at 1300201
         forget => count=3
         reservation acme r1 state=none
         reservation acme r2 state=released
         reservation acme r3 state=open
         reserve acme r4 SKU1@A:1 => ok
         receive acme op3 SKU1@A 1 => ok on_hand=10",
    );
    assert_eq!(engine.dump().operations.len(), 2, "c2 and op3");
    let usage = engine.idempotency_usage();
    assert_eq!((usage.reservations, usage.operations, usage.entries_max), (3, 2, 3));
}

/// Regression: the limit is enforced per id shard, but `forget` used to look at the totals
/// only, so one full shard (ids a client picked to land together, or a small limit) stayed
/// full, refusing its new ids, for the whole 24 h retention while the totals looked fine.
#[test]
fn one_full_id_shard_is_forgotten_into_though_the_totals_are_low() {
    let config = Config { shards: 2, id_shards: 4, idempotency_retention_ms: 24 * 3_600_000 };
    // Operation ids that all land in one id shard of this engine (acme will be tenant 0).
    let engine = Engine::new(config);
    let acme = reservoir_engine::TenantId(0);
    let target_shard = engine.id_shard(acme, "op0");
    let ids: Vec<String> =
        (0..).map(|i| format!("op{i}")).filter(|id| engine.id_shard(acme, id) == target_shard).take(3).collect();
    // A limit of 8: 2 per shard, and forget brings a shard back to 1. The totals stay at 2 of 8.
    let engine = check_on(
        engine,
        &format!(
            "limit 8
             at 1000000
             tenant acme => ok
             receive acme {a} SKU1@A 10 => ok
             at 1000100
             receive acme {b} SKU1@A 10 => ok
             receive acme {c} SKU1@A 10 => memory_full
             at 1300101
             forget => count=1
             receive acme {c} SKU1@A 10 => ok on_hand=30
             receive acme {b} SKU1@A 10 => ok on_hand=20",
            a = ids[0],
            b = ids[1],
            c = ids[2]
        ),
    );
    let usage = engine.idempotency_usage();
    assert_eq!((usage.operations, usage.fullest_shard, usage.shard_max), (2, 2, 2), "{usage:?}");
}

/// Regression (promise 5): one tenant's flood of new ids, all younger than the retention floor
/// so that none may be forgotten, filled the idempotency memory, and from then on every
/// tenant's new ids were refused with `memory_full`. Past 90% of a shard's share, a tenant
/// holding at least an even share of it (its entries times the tenants holding entries reach
/// the shard's entries) is refused, and the others keep the rest.
#[test]
fn a_tenant_flooding_new_ids_leaves_the_others_room() {
    // One id shard holding 20 of each kind: the guard starts at 18. Each tenant starts with 100
    // of SKU1@A.
    let run = |tenants: &[&str], script: &str| {
        let config = Config { shards: 2, id_shards: 1, idempotency_retention_ms: 24 * 3_600_000 };
        let setup: String =
            tenants.iter().map(|name| format!("tenant {name} => ok\nreceive {name} o1 SKU1@A 100 => ok\n")).collect();
        check_with(config, &format!("limit 20\nat 1000000\n{setup}{script}"));
    };
    let reserves = |tenant: &str, prefix: &str, numbers: std::ops::RangeInclusive<u32>| -> String {
        numbers.map(|n| format!("reserve {tenant} {prefix}{n} SKU1@A:1 => ok\n")).collect()
    };
    run(
        &["acme", "globex"],
        &format!(
            "reserve globex s1 SKU1@A:1 => ok
             {}
             # 18 reservations remembered, 17 of them acme's: acme is refused, globex is not.
             reserve acme r18 SKU1@A:1 => memory_full
             reservation acme r18 state=none
             reserve globex s2 SKU1@A:1 => ok
             reserve globex s3 SKU1@A:1 => ok
             # The shard's whole share is used: now everyone is refused.
             reserve globex s4 SKU1@A:1 => memory_full
             stock acme SKU1@A on_hand=100 reserved=17
             stock globex SKU1@A on_hand=100 reserved=3",
            reserves("acme", "r", 1..=17)
        ),
    );
    // Three tenants: the even share is a third, not a half. acme holds 8 of 18, under half but
    // over a third, and is refused; globex and initech hold 5 each and are not.
    run(
        &["acme", "globex", "initech"],
        &format!(
            "{}{}{}
             reserve acme r9 SKU1@A:1 => memory_full
             reserve globex s6 SKU1@A:1 => ok
             reserve initech t6 SKU1@A:1 => ok
             reserve initech t7 SKU1@A:1 => memory_full
             stock acme SKU1@A on_hand=100 reserved=8
             stock globex SKU1@A on_hand=100 reserved=6
             stock initech SKU1@A on_hand=100 reserved=6",
            reserves("acme", "r", 1..=8),
            reserves("globex", "s", 1..=5),
            reserves("initech", "t", 1..=5)
        ),
    );
    // Regression (found by audit): one tenant alone used the whole share, and the first tenant
    // to come later was refused its first id. Alone, a tenant stops halfway between 90% and
    // the limit (19 of 20 here); a newcomer gets the rest.
    run(
        &["acme", "globex"],
        &format!(
            "{}reserve acme r20 SKU1@A:1 => memory_full
             reserve globex s1 SKU1@A:1 => ok
             reserve globex s2 SKU1@A:1 => memory_full
             stock acme SKU1@A on_hand=100 reserved=19
             stock globex SKU1@A on_hand=100 reserved=1",
            reserves("acme", "r", 1..=19)
        ),
    );
}

#[test]
fn tenants_are_walled_off() {
    check(
        "tenant acme => ok
         tenant globex => ok
         receive acme op1 SKU1@A 10 => ok
         stock acme SKU1@A on_hand=10
         # Same names in another tenant are another item.
         reserve globex r1 SKU1@A:1 => unknown_item
         receive globex op1 SKU1@A 3 => ok on_hand=3
         # globex's r1 was refused and is remembered: a new attempt takes a new id.
         reserve globex r1 SKU1@A:3 => id_reused_with_different_request
         reserve globex r2 SKU1@A:3 => ok
         reserve acme r1 SKU1@A:3 => ok
         commit globex c1 r2 => ok
         stock acme SKU1@A on_hand=10 reserved=3
         stock globex SKU1@A on_hand=0 reserved=0",
    );
}

#[test]
fn queries_by_sku_and_by_tenant_page() {
    let engine = check(
        "tenant acme => ok
         tenant globex => ok
         import acme op1 SKU1@A=5 SKU1@B=7 SKU2@A=1 SKU3@C=2 => ok
         receive globex op1 SKU1@A 3 => ok
         reserve acme r1 SKU1@A:2 SKU1@B:1 => ok",
    );
    let acme = engine.tenant_id("acme").unwrap();
    let found = engine.sku(acme, "SKU1", usize::MAX);
    let (locations, total) = (found.locations, found.total.unwrap());
    // Only the first locations are named when fewer are asked for; the total is over all.
    let first = engine.sku(acme, "SKU1", 1);
    assert_eq!((first.locations.len(), first.location_count), (1, 2));
    assert_eq!(first.total, Ok(total));
    assert_eq!(first.locations[0], locations[0]);
    assert_eq!(locations.len(), 2);
    assert_eq!((total.on_hand, total.reserved), (12, 3));
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let page = engine.tenant_items(acme, cursor, 3);
        assert!(page.items.len() <= 3);
        seen.extend(page.items.into_iter().map(|v| format!("{}@{}", v.sku, v.location)));
        match page.next_cursor {
            Some(next) => cursor = next,
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["SKU1@A", "SKU1@B", "SKU2@A", "SKU3@C"]);
    let view = engine.reservation(acme, "r1").unwrap();
    assert_eq!(view.lines.iter().map(|l| (l.location.as_str(), l.reserved)).collect::<Vec<_>>(), [("A", 2), ("B", 1)]);
}

/// A tenant's pages are every one of its items once, in the same order at every page size,
/// and a cursor taken from another tenant's pages reads none of that tenant's items (the
/// cursor names an item since the per-tenant lists are threaded through the items; regression
/// guard for that change: a cursor naming another tenant's item must not start a walk of that
/// tenant's list).
#[test]
fn tenant_pages_hold_each_item_once_and_a_cursor_never_crosses_tenants() {
    let rows = |prefix: &str| (0..300).map(|n| format!("{prefix}{n}@L{}=1", n % 3)).collect::<Vec<_>>().join(" ");
    let engine = check(&format!(
        "tenant acme => ok
         tenant globex => ok
         import acme op1 {} => ok
         import globex op1 {} => ok
         import acme op2 {} => ok",
        rows("A"),
        rows("G"),
        rows("B"),
    ));
    let (acme, globex) = (engine.tenant_id("acme").unwrap(), engine.tenant_id("globex").unwrap());
    let walk = |tenant, mut cursor: u64, limit: usize| -> (Vec<String>, Vec<u64>) {
        let (mut seen, mut cursors) = (Vec::new(), Vec::new());
        for _ in 0..10_000 {
            let page = engine.tenant_items(tenant, cursor, limit);
            assert!(page.items.len() <= limit);
            seen.extend(page.items.into_iter().map(|v| format!("{}@{}", v.sku, v.location)));
            match page.next_cursor {
                Some(next) => {
                    cursors.push(next);
                    cursor = next;
                }
                None => return (seen, cursors),
            }
        }
        panic!("paging did not end");
    };
    let (whole, _) = walk(acme, 0, 10_000);
    assert_eq!(whole.len(), 600);
    let mut sorted = whole.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 600, "every item once");
    assert!(whole.iter().all(|name| name.starts_with('A') || name.starts_with('B')));
    for limit in [1, 2, 7, 599] {
        assert_eq!(walk(acme, 0, limit).0, whole, "page size {limit}");
    }
    let (globex_items, globex_cursors) = walk(globex, 0, 1);
    assert_eq!(globex_items.len(), 300);
    for cursor in globex_cursors {
        let (read, _) = walk(acme, cursor, 50);
        assert!(read.iter().all(|name| !name.starts_with('G')), "acme read globex's items from cursor {cursor:#x}");
    }
    for forged in [u64::MAX, 0xffff_ffff, 1 << 32 | 0xffff_ffff, 255 << 32 | 0x7fff_ffff] {
        let (read, _) = walk(acme, forged, 50);
        assert!(read.iter().all(|name| !name.starts_with('G')));
    }
}

/// Regression: the per-SKU total summed its locations with `+=`, so 8,192 locations each at
/// `STOCK_MAX` (2^50, every row valid) reached 2^63: a panic under overflow checks, a negative
/// total without; `verify`'s per-tenant sums (run by the server on its timer and at shutdown)
/// panicked the same way on this valid ledger. The SKU sum is checked now, and such a total is
/// `quantity_overflow`; `verify` sums in 128 bits (`check` runs it after every step).
#[test]
fn a_sku_total_past_64_bits_is_quantity_overflow_not_a_wrap() {
    let rows = |from: usize, to: usize| -> String {
        (from..to)
            .map(|location| format!("S@L{location}={}", reservoir_engine::STOCK_MAX))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let engine = check(&format!(
        "tenant acme => ok
         import acme op1 {} => ok
         import acme op2 {} => ok",
        rows(0, 8_191),
        rows(8_191, 8_192),
    ));
    let acme = engine.tenant_id("acme").unwrap();
    let found = engine.sku(acme, "S", 10);
    assert_eq!((found.locations.len(), found.location_count), (10, 8_192));
    assert_eq!(found.total, Err(ResultCode::QuantityOverflow));
    // One location fewer fits, exactly.
    let total = check(&format!("tenant acme => ok\n import acme op1 {} => ok", rows(0, 8_191))).sku(acme, "S", 0).total;
    assert_eq!(total.unwrap().on_hand, 8_191 * reservoir_engine::STOCK_MAX);
}

/// An engine with tenant acme and 5 of S@A received by operation `o`: the engine, acme, the
/// receive and the three records.
fn acme_received_five() -> (Engine, TenantId, Command, Vec<Record>) {
    let engine = Engine::new(Config::default());
    let mut records = Vec::new();
    engine.execute(&Command::CreateTenant { name: Name::new("acme").unwrap() }, 0, &mut records);
    let acme = engine.tenant_id("acme").unwrap();
    let receive = Command::Receive {
        tenant: acme,
        operation: op("o"),
        sku: Sku::new("S").unwrap(),
        location: Location::new("A").unwrap(),
        quantity: Quantity::new(5).unwrap(),
    };
    engine.execute(&receive, 0, &mut records);
    assert_eq!(records.len(), 3, "the tenant, the item and the receive");
    (engine, acme, receive, records)
}

#[test]
fn replay_refuses_a_record_that_does_not_fit() {
    let (_, _, _, records) = acme_received_five();
    // Skipping a record is a gap.
    let replica = Engine::new(Config::default());
    replica.apply(&records[0]).unwrap();
    assert!(matches!(replica.apply(&records[2]), Err(reservoir_engine::EngineError::LsnOutOfOrder { .. })));
    // A record whose stated result does not follow from the state is a mismatch.
    let mut forged = records[2].clone();
    if let reservoir_engine::Body::Stock { changes, .. } = &mut forged.body {
        changes[0].on_hand_delta = 4;
    }
    replica.apply(&records[1]).unwrap();
    assert!(matches!(replica.apply(&forged), Err(reservoir_engine::EngineError::ReplayMismatch { .. })));
}

/// `verify` finds a reservation holding another tenant's item (a forged or foreign record:
/// `execute` never writes one, and replay does not look up each line's tenant, to stay cheap).
#[test]
fn verify_finds_a_reservation_holding_another_tenants_item() {
    let (engine, _, _, _, records) = acme_received_five_and_reserved_two();
    let mut more = Vec::new();
    engine.execute(&Command::CreateTenant { name: Name::new("other").unwrap() }, 0, &mut more);
    let other = engine.tenant_id("other").unwrap();
    let replica = Engine::new(Config::default());
    let reserve_at = records.len() - 1;
    for record in &records[..reserve_at] {
        replica.apply(record).unwrap();
    }
    replica.apply(&Record { lsn: records[reserve_at].lsn, ..more[0].clone() }).unwrap();
    let mut forged = records[reserve_at].clone();
    forged.lsn = reservoir_engine::Lsn(forged.lsn.0 + 1);
    let reservoir_engine::Body::Reserved { tenant, .. } = &mut forged.body else { panic!() };
    *tenant = other;
    replica.apply(&forged).unwrap();
    let report = replica.verify();
    assert!(
        report.violations.iter().any(|violation| violation.contains("held by a reservation of another tenant")),
        "{:?}",
        report.violations
    );
    assert!(engine.verify().violations.is_empty());
}

/// Regression: replay created an item for any tenant id an `ItemCreated` record named, and
/// since tenant ids live in the items' name entries (LEB128, up to `TENANTS_MAX`) one past
/// `TENANTS_MAX` panicked replay. An item of a tenant the log has not created is refused.
#[test]
fn replay_refuses_an_item_of_a_tenant_the_log_never_created() {
    let (_, _, _, records) = acme_received_five();
    let one_shard = Config { shards: 1, id_shards: 1, ..Config::default() };
    let on_one_shard = |tenant: Option<TenantId>| {
        let mut record = records[1].clone();
        let reservoir_engine::Body::ItemCreated { item, tenant: its_tenant, .. } = &mut record.body else {
            panic!("the second record creates the item: {record:?}");
        };
        item.shard = 0;
        if let Some(tenant) = tenant {
            *its_tenant = tenant;
        }
        record
    };
    // The control: the item as logged, placed on a one-shard replica, is applied.
    let replica = Engine::new(one_shard.clone());
    replica.apply(&records[0]).unwrap();
    replica.apply(&on_one_shard(None)).unwrap();
    for tenant in [TenantId(1), TenantId(1 << 20), TenantId(u32::MAX)] {
        let replica = Engine::new(one_shard.clone());
        replica.apply(&records[0]).unwrap();
        let outcome = replica.apply(&on_one_shard(Some(tenant)));
        assert!(
            matches!(outcome, Err(reservoir_engine::EngineError::ReplayMismatch { .. })),
            "{tenant:?}: {outcome:?}"
        );
        assert_eq!(replica.dump().items.len(), 0, "nothing created");
    }
}

/// [`acme_received_five`], then reservation `r` of 2 units of that item; returns the reserve
/// command too.
fn acme_received_five_and_reserved_two() -> (Engine, TenantId, Command, Command, Vec<Record>) {
    let (engine, acme, receive, mut records) = acme_received_five();
    let reserve = Command::Reserve {
        tenant: acme,
        reservation: ReservationId::new("r").unwrap(),
        lines: vec![line("S@A:2")],
        ttl_ms: 60_000,
        allow_partial: false,
    };
    assert_eq!(engine.execute(&reserve, 0, &mut records).code, ResultCode::Ok);
    (engine, acme, receive, reserve, records)
}

/// Applies `records[..before]` to a new replica, then `forged`, which must be refused as a
/// replay mismatch (`why` says what it forges) with nothing of it applied.
fn assert_replay_refuses(records: &[Record], forged: &Record, before: usize, why: &str) {
    let replica = Engine::new(Config::default());
    for record in &records[..before] {
        replica.apply(record).unwrap();
    }
    let untouched = replica.dump();
    let outcome = replica.apply(forged);
    assert!(matches!(outcome, Err(reservoir_engine::EngineError::ReplayMismatch { .. })), "{why}: {outcome:?}");
    // Regression: a receive whose reply the memory cannot hold changed the item first.
    assert_eq!(replica.dump(), untouched, "{why}: a refused record leaves nothing behind");
}

/// The memory keeps replies in a smaller form (a reserve's without `on_hand` and `count`,
/// others with one value) and `u64::MAX` ms as "still open", and an item's cell keeps its
/// policy in 32 bits a field: a record those cannot hold is refused with a precise error, never
/// applied with its values cut.
#[test]
fn replay_refuses_a_record_the_held_forms_cannot_keep() {
    let (engine, _, receive, reserve, records) = acme_received_five_and_reserved_two();
    let (receive_at, reserve_at) = (records.len() - 2, records.len() - 1);
    // Each forgery against a replica that applied everything before it.
    let refused = |forged: &Record, before: usize| assert_replay_refuses(&records, forged, before, "forged");
    let mut forged = records[reserve_at].clone();
    if let reservoir_engine::Body::Reserved { reply, .. } = &mut forged.body {
        reply.count = 1;
    }
    refused(&forged, reserve_at);
    let mut forged = records[reserve_at].clone();
    forged.timestamp_ms = u64::MAX;
    refused(&forged, reserve_at);
    let mut forged = records[receive_at].clone();
    if let reservoir_engine::Body::Stock { memo, .. } = &mut forged.body {
        memo.reply.deadline_ms = 1;
        assert_ne!(memo.reply.on_hand, 0, "a receive's reply sets on_hand");
    }
    refused(&forged, receive_at);
    // A policy past POLICY_MAX: the cell keeps safety stock and backorder limit in 32 bits each.
    let mut forged = records[receive_at].clone();
    if let reservoir_engine::Body::Stock { changes, .. } = &mut forged.body {
        changes[0].after.backorder_limit = POLICY_MAX + 1;
    }
    refused(&forged, receive_at);
    let mut forged = records[receive_at].clone();
    if let reservoir_engine::Body::Stock { changes, .. } = &mut forged.body {
        changes[0].after.safety_stock = POLICY_MAX + 1;
    }
    refused(&forged, receive_at);
    // Deltas and totals that would overflow are refused, not wrapped (or, with overflow
    // checks, panicked on).
    let mut forged = records[reserve_at].clone();
    if let reservoir_engine::Body::Reserved { changes, .. } = &mut forged.body {
        assert_eq!(changes[0].after.on_hand, 5, "5 on hand before and after the reserve");
        changes[0].on_hand_delta = i64::MAX;
    }
    refused(&forged, reserve_at);
    let mut forged = records[reserve_at].clone();
    if let reservoir_engine::Body::Reserved { changes, .. } = &mut forged.body {
        changes[0].after.inflow_total = i64::MIN;
        changes[0].after.committed_total = 1;
    }
    refused(&forged, reserve_at);
    // The records as written apply, and the replica answers a retry as the engine does.
    let replica = Engine::new(Config::default());
    for record in &records {
        replica.apply(record).unwrap();
    }
    assert_eq!(replica.dump(), engine.dump());
    assert_eq!(replica.execute(&reserve, 1, &mut Vec::new()), engine.execute(&reserve, 1, &mut Vec::new()));
    assert_eq!(replica.execute(&receive, 1, &mut Vec::new()), engine.execute(&receive, 1, &mut Vec::new()));
}

/// Regression (review): replay took records `execute` never writes as long as each item's
/// counts added up: a reserve whose success had no lines (an assertion panicked), a release of
/// a negative amount (a later release then panicked on the ledger), item changes that were not
/// what the lines reserved or settled, a record of a tenant the log never created or a tenant
/// name `restore` refuses (every later snapshot then failed to load). Each is refused, with
/// nothing applied.
#[test]
fn replay_refuses_records_whose_lines_and_item_changes_disagree() {
    let (engine, acme, _, _, mut records) = acme_received_five_and_reserved_two();
    let release = Command::Release {
        tenant: acme,
        operation: op("rel"),
        reservation: ReservationId::new("r").unwrap(),
        lines: None,
    };
    assert_eq!(engine.execute(&release, 0, &mut records).code, ResultCode::Ok);
    let (reserve_at, release_at) = (records.len() - 2, records.len() - 1);
    let refused = |forged: &Record, before: usize, why: &str| assert_replay_refuses(&records, forged, before, why);
    let reserved =
        |change: &dyn Fn(&mut Vec<reservoir_engine::ReservedLine>, &mut Vec<reservoir_engine::ItemChange>)| {
            let mut forged = records[reserve_at].clone();
            let reservoir_engine::Body::Reserved { lines, changes, .. } = &mut forged.body else { panic!() };
            change(lines, changes);
            forged
        };
    refused(
        &reserved(&|lines, changes| {
            lines.clear();
            changes.clear();
        }),
        reserve_at,
        "a success without lines",
    );
    refused(&reserved(&|lines, _| lines[0].reserved = 1), reserve_at, "a line reserving less than its item moved");
    refused(&reserved(&|lines, _| lines[0].reserved = 3), reserve_at, "a line reserving more than it requested");
    refused(&reserved(&|_, changes| changes[0].on_hand_delta = 1), reserve_at, "a reserve moving on_hand");
    refused(&reserved(&|_, changes| changes.clear()), reserve_at, "a reserve moving no item");
    let mut forged = records[reserve_at].clone();
    if let reservoir_engine::Body::Reserved { tenant, .. } = &mut forged.body {
        *tenant = TenantId(7);
    }
    refused(&forged, reserve_at, "a tenant the log never created");
    let settled = |change: &dyn Fn(&mut Vec<reservoir_engine::LineChange>, &mut Vec<reservoir_engine::ItemChange>)| {
        let mut forged = records[release_at].clone();
        let reservoir_engine::Body::Settled { line_changes, changes, .. } = &mut forged.body else { panic!() };
        change(line_changes, changes);
        forged
    };
    refused(
        &settled(&|lines, _| {
            lines[0].released = -2;
            lines.push(reservoir_engine::LineChange { line: 0, committed: 0, released: 4 });
        }),
        release_at,
        "a negative release made up by a second",
    );
    refused(&settled(&|_, changes| changes[0].on_hand_delta = -2), release_at, "a release moving on_hand");
    refused(
        &settled(&|lines, _| {
            lines.push(reservoir_engine::LineChange { line: 0, committed: i64::MAX, released: i64::MAX })
        }),
        release_at,
        "amounts whose sums would overflow",
    );
    refused(&settled(&|lines, _| lines[0].line = 1), release_at, "a line the reservation does not have");
    let mut forged = records[0].clone();
    if let reservoir_engine::Body::TenantCreated { name, .. } = &mut forged.body {
        *name = "a b".into();
    }
    refused(&forged, 0, "a tenant name restore refuses");
    // The records as written apply.
    let replica = Engine::new(Config::default());
    for record in &records {
        replica.apply(record).unwrap();
    }
    assert_eq!(replica.dump(), engine.dump());
}

/// Keeps `docs/protocol.md`'s code table and `ResultCode` in step: every code is listed with
/// its number and name, and the table lists nothing else.
#[test]
fn result_codes_match_docs_protocol_md() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md")).unwrap();
    let section = text.split("## Result codes").nth(1).expect("a result code section").split("\n## ").next().unwrap();
    let mut listed = Vec::new();
    for row in section
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| number") && !line.starts_with("| -"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let number: u16 = cells[1].parse().unwrap_or_else(|_| panic!("bad number in {row}"));
        listed.push((number, cells[2].trim_matches('`').to_owned()));
    }
    let actual: Vec<(u16, String)> =
        ResultCode::ALL.iter().map(|code| (code.number(), code.name().to_owned())).collect();
    assert_eq!(listed, actual, "docs/protocol.md and engine/src/code.rs disagree");
}

/// An epoch only grows, and fits the 4 bytes a WAL frame has for it
/// (`reservoir_engine::epoch`): a promotion past either is refused, and so is a record of one
/// at replay.
#[test]
fn epochs_only_grow_and_fit_a_frame() {
    let engine = check(
        "
        epoch 5 => ok count=5
        epoch 5 => expected_mismatch count=5
        epoch 3 => expected_mismatch count=5
        epoch 4294967296 => capacity_exceeded
        epoch 4294967295 => ok count=4294967295
        ",
    );
    assert_eq!(engine.epoch_history(), vec![(5, Lsn(1)), (4_294_967_295, Lsn(2))]);
    let replica = Engine::new(Config { shards: 4, id_shards: 4, ..Config::default() });
    let too_high = Record { lsn: Lsn(1), timestamp_ms: 1, body: Body::EpochChanged { epoch: 1 << 32 } };
    assert!(replica.apply(&too_high).is_err(), "a record of an epoch past 2^32 - 1 does not replay");
    assert_eq!(replica.epoch(), reservoir_engine::EPOCH_FIRST);
}

/// Regression: `Forget` popped each id shard's retention queue up to its first entry not old
/// enough. Times are not monotone in LSN order (`now` is read per request, before the LSN is
/// taken; clocks step back), and each engine places ids in shards by a key of its own, so a
/// primary and the engine replaying its log (a restart, a standby, the snapshotter) forgot
/// different entries. A client reusing an id the primary forgot then stopped replay with
/// "operation remembered twice". Now every engine forgets exactly the entries logged before
/// the first one (in LSN order, over all shards) that is not old enough.
#[test]
fn replay_forgets_exactly_what_the_primary_forgot_when_times_go_back_in_lsn_order() {
    const RETENTION_MS: u64 = 1_000;
    const T_MS: u64 = 10_000;
    let config = Config { shards: 2, id_shards: 4, idempotency_retention_ms: RETENTION_MS };
    let engine = Engine::new(config.clone());
    let mut records = Vec::new();
    engine.execute(&Command::CreateTenant { name: Name::new("acme").unwrap() }, T_MS, &mut records);
    let acme = engine.tenant_id("acme").unwrap();
    let receive = |id: &str, quantity: i64| Command::Receive {
        tenant: acme,
        operation: op(id),
        sku: Sku::new("S").unwrap(),
        location: Location::new("A").unwrap(),
        quantity: Quantity::new(quantity).unwrap(),
    };
    // One operation at T + 1, then a hundred at T (each on whichever shard this engine's key
    // puts it): the hundred are older than the first, and logged after it.
    assert!(engine.execute(&receive("young", 1), T_MS + 1, &mut records).is_ok());
    let mut originals = Vec::new();
    for index in 0..100 {
        let reply = engine.execute(&receive(&format!("old-{index}"), 1), T_MS, &mut records);
        assert!(reply.is_ok());
        originals.push(reply);
    }
    // Everything before T + 1 may go, but the first entry in LSN order is at T + 1.
    let reply = engine.execute(&Command::Forget, T_MS + 1 + RETENTION_MS, &mut records);
    assert_eq!(reply.count, 0, "nothing logged before the first young entry: nothing forgotten");
    for (index, original) in originals.iter().enumerate() {
        let retry = engine.execute(&receive(&format!("old-{index}"), 1), T_MS + 2 + RETENTION_MS, &mut records);
        assert_eq!(&retry, original, "old-{index} is still remembered");
    }
    let replica = Engine::new(config.clone());
    for record in &records {
        replica.apply(record).unwrap_or_else(|e| panic!("replay of {record:?}: {e}"));
    }
    assert_eq!(replica.dump(), engine.dump(), "replay differs");

    // Once the first entry is old enough too, all of them go, on every engine alike; an id
    // reused after that is new, and replays.
    let reply = engine.execute(&Command::Forget, T_MS + 2 + RETENTION_MS, &mut records);
    assert_eq!(reply.count, 101);
    let reused = engine.execute(&receive("old-7", 2), T_MS + 3 + RETENTION_MS, &mut records);
    assert_eq!(reused.on_hand, 103, "a forgotten id is a new operation");
    let replica = Engine::new(config);
    for record in &records {
        replica.apply(record).unwrap_or_else(|e| panic!("replay of {record:?}: {e}"));
    }
    assert_eq!(replica.dump(), engine.dump(), "replay differs");
}
