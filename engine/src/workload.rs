//! A seeded generator of random, mostly-valid command streams: every kind of mutation, retries
//! of earlier commands, expiry and retention, over a few tenants and SKUs. Used by simulation
//! and crash tests (WAL replay, the crash loop) that need realistic histories. Deterministic:
//! the same seed and the same replies give the same commands. No I/O, no clock.

use std::collections::VecDeque;

use crate::code::Reply;
use crate::command::{Command, ImportRow, Line};
use crate::types::{Location, Name, OperationId, Quantity, ReservationId, Sku, TenantId};

/// Tenants the generator creates before it does anything else.
pub const WORKLOAD_TENANTS: usize = 3;
/// Earlier commands kept for retries.
pub const RETRY_WINDOW_MAX: usize = 32;
/// Open reservations the generator remembers (older ones are left to expire).
pub const OPEN_TRACKED_MAX: usize = 256;

/// SplitMix64: small, seedable, good enough for test streams, and no dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub struct Workload {
    random: SplitMix64,
    /// Makes ids unique across runs that share a data directory.
    id_prefix: String,
    skus_per_tenant: u64,
    tenants: Vec<TenantId>,
    tenant_names_created: usize,
    open: VecDeque<(TenantId, String)>,
    recent: VecDeque<Command>,
    next_id: u64,
}

impl Workload {
    pub fn new(seed: u64, id_prefix: &str, skus_per_tenant: u64) -> Workload {
        assert!(skus_per_tenant >= 2);
        assert!(id_prefix.len() <= 24, "ids must stay within NAME_BYTES_MAX");
        Workload {
            random: SplitMix64::new(seed),
            id_prefix: id_prefix.to_owned(),
            skus_per_tenant,
            tenants: Vec::new(),
            tenant_names_created: 0,
            open: VecDeque::new(),
            recent: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Tenants that already exist (when continuing on a recovered engine).
    pub fn with_tenants(mut self, tenants: Vec<TenantId>) -> Workload {
        self.tenant_names_created = tenants.len();
        self.tenants = tenants;
        self
    }

    fn id(&mut self, kind: &str) -> String {
        self.next_id += 1;
        format!("{}-{kind}{}", self.id_prefix, self.next_id)
    }

    fn sku(&mut self) -> Sku {
        Sku::new(&format!("SKU{}", self.random.below(self.skus_per_tenant))).expect("valid")
    }

    fn location(&mut self) -> Location {
        Location::new(["A", "B"][self.random.below(2) as usize]).expect("valid")
    }

    fn tenant(&mut self) -> TenantId {
        self.tenants[self.random.below(self.tenants.len() as u64) as usize]
    }

    fn quantity(&mut self, max: u64) -> Quantity {
        Quantity::new(1 + self.random.below(max) as i64).expect("positive")
    }

    fn operation(&mut self) -> OperationId {
        let id = self.id("op");
        OperationId::new(&id).expect("valid")
    }

    /// The next command, for a clock at `now_ms`.
    pub fn next_command(&mut self) -> Command {
        if self.tenant_names_created < WORKLOAD_TENANTS {
            self.tenant_names_created += 1;
            let name = format!("tenant{}", self.tenant_names_created);
            return Command::CreateTenant { name: Name::new(&name).expect("valid") };
        }
        if self.tenants.is_empty() {
            // Tenants were asked for but not confirmed (refused as existing): go on with ids.
            self.tenants = (0..WORKLOAD_TENANTS as u32).map(TenantId).collect();
        }
        if !self.recent.is_empty() && self.random.chance(4) {
            let pick = self.random.below(self.recent.len() as u64) as usize;
            return self.recent[pick].clone();
        }
        let roll = self.random.below(100);
        let command = match roll {
            0..=29 => {
                let tenant = self.tenant();
                let count = 1 + self.random.below(3);
                let lines = (0..count)
                    .map(|_| Line { sku: self.sku(), location: self.location(), quantity: self.quantity(5) })
                    .collect();
                let id = self.id("r");
                Command::Reserve {
                    tenant,
                    reservation: ReservationId::new(&id).expect("valid"),
                    lines,
                    ttl_ms: 1_000 + self.random.below(60_000),
                    allow_partial: self.random.chance(10),
                }
            }
            30..=54 if !self.open.is_empty() => {
                let (tenant, id) = self.open.pop_front().expect("not empty");
                let operation = self.operation();
                let reservation = ReservationId::new(&id).expect("valid");
                match self.random.below(10) {
                    0..=5 => Command::Commit { tenant, operation, reservation, lines: None },
                    6..=8 => Command::Release { tenant, operation, reservation, lines: None },
                    _ => {
                        self.open.push_back((tenant, id));
                        Command::Extend { tenant, operation, reservation, ttl_ms: 1_000 + self.random.below(60_000) }
                    }
                }
            }
            55..=74 => {
                let tenant = self.tenant();
                let operation = self.operation();
                Command::Receive {
                    tenant,
                    operation,
                    sku: self.sku(),
                    location: self.location(),
                    quantity: self.quantity(40),
                }
            }
            75..=79 => {
                let tenant = self.tenant();
                let operation = self.operation();
                let delta = self.random.below(11) as i64 - 5;
                Command::Adjust {
                    tenant,
                    operation,
                    sku: self.sku(),
                    location: self.location(),
                    delta: if delta == 0 { 1 } else { delta },
                    reason: Name::new("damaged").expect("valid"),
                }
            }
            80..=83 => {
                let tenant = self.tenant();
                let operation = self.operation();
                Command::SetOnHand {
                    tenant,
                    operation,
                    sku: self.sku(),
                    location: self.location(),
                    expected: None,
                    on_hand: self.random.below(60) as i64,
                }
            }
            84..=86 => {
                let tenant = self.tenant();
                let operation = self.operation();
                Command::Move {
                    tenant,
                    operation,
                    sku: self.sku(),
                    from: Location::new("A").expect("valid"),
                    to: Location::new("B").expect("valid"),
                    quantity: self.quantity(5),
                }
            }
            87..=88 => {
                let tenant = self.tenant();
                let operation = self.operation();
                Command::SetPolicy {
                    tenant,
                    operation,
                    sku: self.sku(),
                    location: self.location(),
                    safety_stock: self.random.below(3) as i64,
                    backorder_limit: if self.random.chance(30) { 5 } else { 0 },
                }
            }
            89..=90 => {
                let tenant = self.tenant();
                let operation = self.operation();
                let rows = (0..1 + self.random.below(5))
                    .map(|_| ImportRow {
                        sku: self.sku(),
                        location: self.location(),
                        on_hand: 20 + self.random.below(50) as i64,
                        safety_stock: None,
                        backorder_limit: None,
                    })
                    .collect();
                Command::Import { tenant, operation, rows }
            }
            91..=97 => Command::Expire { limit: 64 },
            98 if self.random.chance(50) => Command::Forget,
            98 => Command::MarkCredentialsChanged,
            _ => {
                // A commit of an unknown reservation: a refusal that must be remembered too.
                let tenant = self.tenant();
                let operation = self.operation();
                let id = self.id("missing");
                Command::Commit { tenant, operation, reservation: ReservationId::new(&id).expect("valid"), lines: None }
            }
        };
        self.recent.push_back(command.clone());
        if self.recent.len() > RETRY_WINDOW_MAX {
            self.recent.pop_front();
        }
        command
    }

    /// Tells the generator what a command answered (tenant ids, open reservations).
    pub fn observe(&mut self, command: &Command, reply: &Reply) {
        match command {
            Command::CreateTenant { .. } if reply.is_ok() => {
                let tenant = TenantId(reply.count as u32);
                if !self.tenants.contains(&tenant) {
                    self.tenants.push(tenant);
                }
            }
            Command::Reserve { tenant, reservation, .. } if reply.is_ok() => {
                let entry = (*tenant, reservation.as_str().to_owned());
                if !self.open.contains(&entry) {
                    self.open.push_back(entry);
                    if self.open.len() > OPEN_TRACKED_MAX {
                        self.open.pop_front();
                    }
                }
            }
            _ => {}
        }
    }
}
