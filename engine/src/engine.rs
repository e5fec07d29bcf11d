//! The engine: commands and `now` in, replies and effect records out. No I/O, no clock.

use std::collections::BTreeMap;

use parking_lot::RwLockReadGuard;
use smallvec::SmallVec;

use crate::catalog::{sku_hash, Catalog, ShardItems};
use crate::code::{LineResult, LineResults, Reply, ResultCode};
use crate::command::{Command, ImportRow, Line};
use crate::item::{Counters, ItemGuard};
use crate::memory::{
    reservation_weight, HeldReservation, IdText, Key, KeyRef, OperationEntry, OperationShard, Reservation,
    ReservationLineState, ReservationShard, Sharded, StoredReply, TenantEntries,
};
use crate::record::{Body, ItemChange, LineChange, OperationMemo, Record, ReservationState, ReservedLine, SettleKind};
use crate::sync::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use crate::types::{
    ItemId, Location, Lsn, Name, OperationId, ReservationId, Sku, TenantId, EXPIRE_BATCH_MAX, IMPORT_ROWS_MAX,
    ITEMS_PER_TENANT_MAX_DEFAULT, LINES_PER_RESERVATION_MAX, LOCATIONS_PER_SKU_MAX, PAGE_ITEMS_MAX, POLICY_MAX,
    QUANTITY_MAX, SHARDS_MAX, STOCK_MAX, TTL_MS_MAX, TTL_MS_MIN,
};
use crate::EngineError;

/// Inline capacity of the per-command scratch vectors: orders have a few lines.
const SMALL: usize = 4;

/// How an engine is laid out. `shards` is part of the data: a data directory keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Item shards, a power of two.
    pub shards: usize,
    /// Shards of the reservation and operation-id tables, a power of two.
    pub id_shards: usize,
    /// How long a closed reservation id or an operation id is remembered for retries.
    pub idempotency_retention_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config { shards: 256, id_shards: 256, idempotency_retention_ms: 24 * 3_600_000 }
    }
}

pub struct Engine {
    pub(crate) config: Config,
    pub(crate) catalog: Catalog,
    pub(crate) reservations: Sharded<ReservationShard>,
    pub(crate) operations: Sharded<OperationShard>,
    /// The next LSN to hand out. Taken while every item the record touches is latched, so
    /// LSN order agrees with each item's update order.
    pub(crate) next_lsn: AtomicU64,
    /// Every epoch after the first (1), with the LSN of the record that began it, ascending.
    pub(crate) epochs: parking_lot::RwLock<Vec<(u64, Lsn)>>,
    /// How many reservations, and how many operation ids, the engine remembers at most (an
    /// operational limit, not data: replay never refuses). See [`Engine::set_idempotency_entries_max`].
    idempotency_entries_max: AtomicUsize,
    /// Its share per id shard (`entries_max / id_shards`, rounded up): what is enforced.
    idempotency_shard_max: AtomicUsize,
    /// Items one tenant may create (an operational limit, not data: replay never refuses).
    items_per_tenant_max: AtomicU32,
    /// The id shard the next `expire` begins with: each begins after the shard where the one
    /// before it ran out of its limit, so a backlog in one shard (one tenant's, say) does not
    /// hold back what falls due in the others.
    expire_next_shard: AtomicUsize,
}

/// The default of [`Engine::set_idempotency_entries_max`]: 20 M reservations and 20 M operation
/// ids, ~4-8 GB at the measured 200-400 bytes an entry.
pub const IDEMPOTENCY_ENTRIES_MAX_DEFAULT: usize = 20_000_000;
/// Ids younger than this are never forgotten to make room: when the memory is full of them,
/// new mutations are refused with `memory_full` instead (a retry within this window always
/// gets its original outcome, whatever the load).
pub const IDEMPOTENCY_RETENTION_FLOOR_MS: u64 = 5 * 60_000;
/// `forget` brings each table down to this share of its limit (per mille), so that the limit
/// itself is reached only when the floor stops it.
pub const IDEMPOTENCY_FORGET_TARGET_PER_MILLE: usize = 900;

/// How full the idempotency memory is (for status and the server's retention timer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdempotencyUsage {
    /// Reservations remembered (open and closed), each counted as
    /// [`crate::memory::reservation_weight`] entries (one, and one more per 6 lines).
    pub reservations: usize,
    /// Operation ids remembered.
    pub operations: usize,
    /// The limit of each of the two.
    pub entries_max: usize,
    /// The most entries one id shard of either table holds: the limit is enforced per shard,
    /// so this, not the totals, says when new ids meet `memory_full`.
    pub fullest_shard: usize,
    /// What one id shard may hold.
    pub shard_max: usize,
}

impl IdempotencyUsage {
    /// Some shard is past the level `forget` brings it back to: time for a `Command::Forget`.
    pub fn over_target(&self) -> bool {
        self.fullest_shard > forget_target(self.shard_max)
    }
}

fn forget_target(entries_max: usize) -> usize {
    entries_max / 1000 * IDEMPOTENCY_FORGET_TARGET_PER_MILLE
        + entries_max % 1000 * IDEMPOTENCY_FORGET_TARGET_PER_MILLE / 1000
}

/// Epochs a log goes through at most (one per promotion).
pub const EPOCHS_MAX: usize = 65_536;
/// The epoch of a new log, before any promotion.
pub const EPOCH_FIRST: u64 = 1;

/// A SKU at its locations ([`Engine::sku`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkuView {
    /// The first locations, in creation order (at most the `locations_max` asked for).
    pub locations: Vec<ItemView>,
    /// How many locations the SKU has (0: the tenant has no such SKU).
    pub location_count: usize,
    /// The sum over every location, or `quantity_overflow` past 64 bits.
    pub total: Result<Counters, ResultCode>,
}

/// One item as a query sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemView {
    pub item: ItemId,
    pub sku: String,
    pub location: String,
    pub counters: Counters,
}

impl ItemView {
    pub fn available(&self) -> i64 {
        self.counters.available()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationView {
    pub reservation: String,
    pub state: ReservationState,
    pub deadline_ms: u64,
    pub lines: Vec<ReservationLineView>,
    pub reply: Reply,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationLineView {
    pub sku: String,
    pub location: String,
    pub requested: i64,
    pub reserved: i64,
    pub committed: i64,
    pub released: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<ItemView>,
    /// Pass back to get the next page; `None` at the end.
    pub next_cursor: Option<u64>,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub items: usize,
    pub open_reservations: usize,
    /// Per tenant name: (on_hand, reserved) summed over its items, in 128 bits (a tenant's
    /// items together may pass 2^63 units).
    pub tenant_totals: BTreeMap<String, (i128, i128)>,
    /// Human-readable descriptions of every broken invariant. Empty: all holds.
    pub violations: Vec<String>,
}

/// The whole state, in canonical order, for comparing two engines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    pub next_lsn: u64,
    pub tenants: Vec<String>,
    pub items: BTreeMap<ItemId, (TenantId, String, String, Counters)>,
    pub reservations: BTreeMap<(TenantId, String), Reservation>,
    pub operations: BTreeMap<(TenantId, String), OperationEntry>,
    pub epochs: Vec<(u64, Lsn)>,
}

/// An item a command needs, resolved.
struct Resolved {
    item: ItemId,
}

impl Engine {
    pub fn new(config: Config) -> Engine {
        assert!(config.shards.is_power_of_two() && config.shards <= SHARDS_MAX);
        assert!(config.id_shards.is_power_of_two() && config.id_shards <= SHARDS_MAX);
        let placement = std::hash::RandomState::new();
        Engine {
            catalog: Catalog::new(config.shards),
            // One placement key for both tables: an id's reservation and operation shards have
            // the same index (`id_shard`).
            reservations: Sharded::new(config.id_shards, placement.clone()),
            operations: Sharded::new(config.id_shards, placement),
            next_lsn: AtomicU64::new(1),
            epochs: parking_lot::RwLock::new(Vec::new()),
            idempotency_entries_max: AtomicUsize::new(IDEMPOTENCY_ENTRIES_MAX_DEFAULT),
            idempotency_shard_max: AtomicUsize::new(IDEMPOTENCY_ENTRIES_MAX_DEFAULT.div_ceil(config.id_shards)),
            items_per_tenant_max: AtomicU32::new(ITEMS_PER_TENANT_MAX_DEFAULT),
            expire_next_shard: AtomicUsize::new(0),
            config,
        }
    }

    /// The epoch the last applied or executed record belongs to.
    pub fn epoch(&self) -> u64 {
        self.epochs.read().last().map_or(EPOCH_FIRST, |&(epoch, _)| epoch)
    }

    /// Every epoch after the first with the LSN of the record that began it, ascending: the
    /// log's timeline history (where a former primary's log forks from this one).
    pub fn epoch_history(&self) -> Vec<(u64, Lsn)> {
        self.epochs.read().clone()
    }

    /// Where another log, whose epoch history is `theirs` (its tail only, if not
    /// `theirs_complete`), parts from this one ([`crate::epoch::fork_between`]).
    pub fn fork_from(&self, theirs: &[(u64, Lsn)], theirs_complete: bool) -> crate::epoch::Fork {
        crate::epoch::fork_between(&self.epochs.read(), theirs, theirs_complete)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets how many reservations (open and closed), and how many operation ids, this engine
    /// remembers at most. Enforced per id shard (`entries_max / id_shards` each): a new
    /// reservation or operation that would pass it is refused with `memory_full` and not
    /// remembered. `Command::Forget` forgets the oldest closed ones first, once older than
    /// [`IDEMPOTENCY_RETENTION_FLOOR_MS`], to stay under 90% of it.
    pub fn set_idempotency_entries_max(&self, entries_max: usize) {
        assert!(entries_max >= self.config.id_shards, "idempotency limit {entries_max} below one per shard");
        self.idempotency_entries_max.store(entries_max, Ordering::Relaxed);
        self.idempotency_shard_max.store(entries_max.div_ceil(self.config.id_shards), Ordering::Relaxed);
    }

    /// Sets how many items one tenant may have: a new item past it is refused
    /// `capacity_exceeded` (its row of an import, or the mutation that would create it), the
    /// tenant's other items unaffected. Without it one tenant's flood of new items (an import
    /// is a row a rate unit) filled the process's memory, or one shard's name space, for every
    /// tenant (regression, review, eleventh session).
    pub fn set_items_per_tenant_max(&self, items_max: u32) {
        assert!(items_max >= 1, "a tenant may have at least one item");
        self.items_per_tenant_max.store(items_max, Ordering::Relaxed);
    }

    /// Which id shard of this engine remembers `id` (status, and tests that fill one shard).
    /// Chosen under a key drawn when the engine was made, so another engine (a restart, a
    /// standby) places the same id elsewhere.
    pub fn id_shard(&self, tenant: TenantId, id: &str) -> usize {
        let shard = self.operations.index(tenant, id);
        debug_assert_eq!(shard, self.reservations.index(tenant, id));
        shard
    }

    /// How full the idempotency memory is. Takes every id shard's lock in turn.
    pub fn idempotency_usage(&self) -> IdempotencyUsage {
        let reservations: Vec<usize> = self.reservations.all().iter().map(|shard| shard.lock().weight()).collect();
        let operations: Vec<usize> = self.operations.all().iter().map(|shard| shard.lock().map.len()).collect();
        IdempotencyUsage {
            reservations: reservations.iter().sum(),
            operations: operations.iter().sum(),
            entries_max: self.idempotency_entries_max.load(Ordering::Relaxed),
            fullest_shard: reservations.iter().chain(&operations).copied().max().unwrap_or(0),
            shard_max: self.idempotency_shard_max(),
        }
    }

    /// Whether a new id of `tenant` is refused by an id shard that holds `entries`, counted per
    /// tenant in `tenants`: at the shard's share of the limit; past 90% of it, if another
    /// tenant holds some entries and this one holds at least an even share (its entries times
    /// the tenants holding entries reach the shard's entries); and past 95% if it is alone.
    /// Without the second rule one tenant's flood of new ids, all younger than the retention
    /// floor so that none may be forgotten, filled the memory and every tenant's new ids were
    /// refused; with it the flood stops at 90% and the other tenants keep the rest (see
    /// `a_tenant_flooding_new_ids_leaves_the_others_room`).
    /// `weight`: the entries the new id counts as (a reservation's [`reservation_weight`]).
    fn refuses_new_id(&self, entries: usize, weight: usize, tenants: &TenantEntries, tenant: TenantId) -> bool {
        let shard_max = self.idempotency_shard_max();
        debug_assert!(tenants.of(tenant) <= entries, "a tenant counted more entries than its shard holds");
        debug_assert!(weight >= 1);
        // An empty shard takes any id: a reservation heavier than a small limit's whole share
        // could otherwise never be made (review, eleventh session). It passes the share by
        // less than its weight, at most 10 entries.
        if entries == 0 {
            return false;
        }
        // With a weight of one, `entries + weight > x` is the `entries >= x` it was.
        let entries_after = entries + weight - 1;
        if entries_after >= shard_max {
            return true;
        }
        let target = forget_target(shard_max);
        if tenants.tenants() <= 1 && tenants.of(tenant) == entries {
            // Alone in the shard: it stops halfway between the target and the limit, leaving
            // the rest to the next tenant. Above the target, so that `forget` (which trims a
            // shard back to the target) still makes room for it. Regression (found by audit):
            // a tenant alone filled the shard, with open reservations (never forgotten), and
            // a latecomer's first new id there was refused.
            return entries_after >= target + (shard_max - target).div_ceil(2);
        }
        entries_after >= target && tenants.of(tenant).saturating_mul(tenants.tenants()) >= entries
    }

    /// What one id shard may hold.
    fn idempotency_shard_max(&self) -> usize {
        let shard_max = self.idempotency_shard_max.load(Ordering::Relaxed);
        debug_assert!(shard_max >= 1);
        shard_max
    }

    /// The LSN the next record will get.
    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.next_lsn.load(Ordering::Acquire))
    }

    fn take_lsn(&self) -> Lsn {
        // Relaxed is enough: callers hold the latches that order dependent records, and the
        // modification order of one atomic respects happens-before.
        let lsn = self.next_lsn.fetch_add(1, Ordering::Relaxed);
        assert!(lsn < u64::MAX / 2, "LSN space exhausted");
        Lsn(lsn)
    }

    pub fn tenant_id(&self, name: &str) -> Option<TenantId> {
        self.catalog.tenants.read().get(name)
    }

    pub fn tenant_name(&self, tenant: TenantId) -> Option<String> {
        self.catalog.tenants.read().name(tenant).map(str::to_owned)
    }

    fn tenant_exists(&self, tenant: TenantId) -> bool {
        (tenant.0 as usize) < self.catalog.tenants.read().len()
    }

    // ---------------------------------------------------------------------------------------
    // Commands.

    /// Executes one command at time `now_ms`. Records (zero or more, in LSN order) are
    /// appended to `records`; the reply must only reach the client once they are durable.
    pub fn execute(&self, command: &Command, now_ms: u64, records: &mut Vec<Record>) -> Reply {
        let records_before = records.len();
        let reply = match command {
            Command::CreateTenant { name } => self.create_tenant(name, now_ms, records),
            Command::Reserve { tenant, reservation, lines, ttl_ms, allow_partial } => self.reserve(
                *tenant,
                reservation,
                lines,
                *ttl_ms,
                *allow_partial,
                command.fingerprint(),
                now_ms,
                records,
            ),
            Command::Extend { tenant, operation, reservation, ttl_ms } => self.settle(
                *tenant,
                operation,
                reservation,
                SettleKind::Extend,
                None,
                *ttl_ms,
                command,
                now_ms,
                records,
            ),
            Command::Commit { tenant, operation, reservation, lines } => self.settle(
                *tenant,
                operation,
                reservation,
                SettleKind::Commit,
                lines.as_deref(),
                0,
                command,
                now_ms,
                records,
            ),
            Command::Release { tenant, operation, reservation, lines } => self.settle(
                *tenant,
                operation,
                reservation,
                SettleKind::Release,
                lines.as_deref(),
                0,
                command,
                now_ms,
                records,
            ),
            Command::Receive { tenant, operation, .. }
            | Command::Adjust { tenant, operation, .. }
            | Command::SetOnHand { tenant, operation, .. }
            | Command::Move { tenant, operation, .. }
            | Command::SetPolicy { tenant, operation, .. }
            | Command::Import { tenant, operation, .. } => self.stock(*tenant, operation, command, now_ms, records),
            Command::Expire { limit } => self.expire(*limit, now_ms, records),
            Command::Forget => self.forget(now_ms, records),
            Command::BeginEpoch { epoch } => self.begin_epoch(*epoch, now_ms, records),
            Command::MarkCredentialsChanged => {
                let lsn = self.take_lsn();
                records.push(Record { lsn, timestamp_ms: now_ms, body: Body::CredentialsChanged });
                Reply { count: lsn.0, ..Reply::code(ResultCode::Ok) }
            }
        };
        debug_assert!(records[records_before..].windows(2).all(|w| w[0].lsn < w[1].lsn));
        debug_assert!(records[records_before..].iter().all(|r| r.timestamp_ms == now_ms));
        reply
    }

    fn create_tenant(&self, name: &Name, now_ms: u64, records: &mut Vec<Record>) -> Reply {
        let mut tenants = self.catalog.tenants.write();
        if tenants.get(name.as_str()).is_some() {
            return Reply::code(ResultCode::TenantExists);
        }
        let Some(tenant) = tenants.insert(name.as_str()) else {
            return Reply::code(ResultCode::CapacityExceeded);
        };
        let lsn = self.take_lsn();
        records.push(Record {
            lsn,
            timestamp_ms: now_ms,
            body: Body::TenantCreated { tenant, name: name.as_str().into() },
        });
        Reply { count: u64::from(tenant.0), ..Reply::code(ResultCode::Ok) }
    }

    /// Finds an item, or creates it (recording the creation) when `create`.
    fn resolve(
        &self,
        tenant: TenantId,
        sku: &Sku,
        location: &Location,
        create: bool,
        now_ms: u64,
        records: &mut Vec<Record>,
    ) -> Result<Resolved, ResultCode> {
        let hash = sku_hash(tenant, sku.as_str());
        let shard = self.catalog.shard_of(hash);
        if let Some(index) = self.catalog.read_shard(shard).find(tenant, sku.as_str(), location.as_str()) {
            return Ok(Resolved { item: ItemId { shard, index } });
        }
        if !create {
            return Err(ResultCode::UnknownItem);
        }
        let mut items = self.catalog.shards[shard as usize].items.write();
        if let Some(index) = items.find(tenant, sku.as_str(), location.as_str()) {
            return Ok(Resolved { item: ItemId { shard, index } });
        }
        if items.sku_location_count(tenant, sku.as_str()) >= LOCATIONS_PER_SKU_MAX {
            return Err(ResultCode::CapacityExceeded);
        }
        // Recursive: `verify` and `dump` hold the tenants' read lock while they take each
        // shard's; a plain read here, behind a queued `create_tenant`, could wait on a
        // `verify` that waits on this shard (review, eleventh session).
        let tenants = self.catalog.tenants.read_recursive();
        if !tenants.count_item(tenant, self.items_per_tenant_max.load(Ordering::Relaxed)) {
            return Err(ResultCode::CapacityExceeded);
        }
        let Some(index) = items.insert(tenant, sku.as_str(), location.as_str()) else {
            tenants.uncount_item(tenant);
            return Err(ResultCode::CapacityExceeded);
        };
        drop(tenants);
        let item = ItemId { shard, index };
        // Under the shard's write lock: creation order in a shard is LSN order.
        let lsn = self.take_lsn();
        records.push(Record {
            lsn,
            timestamp_ms: now_ms,
            body: Body::ItemCreated { item, tenant, sku: sku.as_str().into(), location: location.as_str().into() },
        });
        Ok(Resolved { item })
    }

    /// Latches `items` (sorted, distinct) in order (so no two commands can deadlock), runs
    /// `f` on them, and publishes every change at once when the latches drop.
    fn with_items<R>(&self, items: &[ItemId], f: impl FnOnce(&mut [ItemGuard<'_>]) -> R) -> R {
        assert!(items.windows(2).all(|w| w[0] < w[1]), "items must be sorted and distinct");
        assert!(items.len() <= IMPORT_ROWS_MAX * 2);
        let mut shards: SmallVec<[(u32, RwLockReadGuard<'_, ShardItems>); SMALL]> = SmallVec::new();
        for item in items {
            if shards.last().is_none_or(|(shard, _)| *shard != item.shard) {
                shards.push((item.shard, self.catalog.read_shard(item.shard)));
            }
        }
        let mut guards: SmallVec<[ItemGuard<'_>; SMALL]> = SmallVec::with_capacity(items.len());
        let mut position = 0;
        for item in items {
            while shards[position].0 != item.shard {
                position += 1;
            }
            guards.push(shards[position].1.cell(item.index).latch());
        }
        let result = f(&mut guards);
        drop(guards);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn reserve(
        &self,
        tenant: TenantId,
        reservation: &ReservationId,
        lines: &[Line],
        ttl_ms: u64,
        allow_partial: bool,
        fingerprint: u64,
        now_ms: u64,
        records: &mut Vec<Record>,
    ) -> Reply {
        if lines.is_empty() {
            return Reply::code(ResultCode::EmptyLines);
        }
        if lines.len() > LINES_PER_RESERVATION_MAX {
            return Reply::code(ResultCode::TooManyLines);
        }
        if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ttl_ms) {
            return Reply::code(ResultCode::TtlOutOfRange);
        }
        if !self.tenant_exists(tenant) {
            return Reply::code(ResultCode::UnknownTenant);
        }
        let id = reservation.as_str();
        let mut shard = self.reservations.shard(tenant, id).lock();
        if let Some(existing) = shard.map.get(&KeyRef(tenant, id)) {
            return if existing.fingerprint == fingerprint {
                existing.reply()
            } else {
                Reply::code(ResultCode::IdReusedWithDifferentRequest)
            };
        }
        if self.refuses_new_id(shard.weight(), reservation_weight(lines.len()) as usize, &shard.tenants, tenant) {
            // Not remembered: a retry once memory is free is decided afresh.
            return Reply::code(ResultCode::MemoryFull);
        }
        let deadline_ms = now_ms.saturating_add(ttl_ms);

        // Resolve every line; an unknown item refuses the whole reserve.
        let mut line_items: SmallVec<[Option<ItemId>; SMALL]> = SmallVec::with_capacity(lines.len());
        let mut unknown = false;
        for line in lines {
            match self.resolve(tenant, &line.sku, &line.location, false, now_ms, records) {
                Ok(resolved) => line_items.push(Some(resolved.item)),
                Err(_) => {
                    unknown = true;
                    line_items.push(None);
                }
            }
        }

        let (reply, reserved_lines, changes, lsn) = if unknown {
            let results = lines
                .iter()
                .zip(&line_items)
                .map(|(line, item)| LineResult {
                    code: if item.is_some() { ResultCode::Ok } else { ResultCode::UnknownItem },
                    requested: line.quantity.get(),
                    applied: 0,
                    available: 0,
                })
                .collect();
            let reply = Reply { lines: results, ..Reply::code(ResultCode::UnknownItem) };
            (reply, Vec::new(), Vec::new(), self.take_lsn())
        } else {
            let line_items: SmallVec<[ItemId; SMALL]> =
                line_items.into_iter().map(|item| item.expect("resolved")).collect();
            let mut distinct = line_items.clone();
            distinct.sort_unstable();
            distinct.dedup();
            self.with_items(&distinct, |guards| {
                let guard_of = |item: ItemId| distinct.binary_search(&item).expect("latched");
                let mut results: SmallVec<[LineResult; SMALL]> = SmallVec::with_capacity(lines.len());
                let mut granted: SmallVec<[i64; SMALL]> = smallvec::smallvec![0i64; lines.len()];
                let mut short_items = false;
                if allow_partial {
                    for (position, line) in lines.iter().enumerate() {
                        let guard = &mut guards[guard_of(line_items[position])];
                        let room = (guard.counters.available() + guard.counters.backorder_limit)
                            .min(STOCK_MAX - guard.counters.reserved)
                            .max(0);
                        let take = line.quantity.get().min(room);
                        guard.counters.reserved += take;
                        granted[position] = take;
                    }
                } else {
                    // Two lines on one item count together.
                    let mut wanted: SmallVec<[i64; SMALL]> = smallvec::smallvec![0i64; distinct.len()];
                    for (position, line) in lines.iter().enumerate() {
                        wanted[guard_of(line_items[position])] += line.quantity.get();
                    }
                    let fits: SmallVec<[bool; SMALL]> =
                        guards.iter().zip(&wanted).map(|(guard, &want)| guard.counters.can_reserve(want)).collect();
                    if fits.iter().all(|&fit| fit) {
                        for (guard, want) in guards.iter_mut().zip(&wanted) {
                            guard.counters.reserved += want;
                        }
                        for (position, line) in lines.iter().enumerate() {
                            granted[position] = line.quantity.get();
                        }
                    } else {
                        for (position, line) in lines.iter().enumerate() {
                            // Marks the lines on items that cannot take what is asked of them.
                            if fits[guard_of(line_items[position])] {
                                granted[position] = line.quantity.get();
                            }
                        }
                        short_items = true;
                    }
                }
                let total: i64 = if short_items { 0 } else { granted.iter().sum() };
                let short = lines.iter().zip(&granted).any(|(line, &got)| got < line.quantity.get());
                let code = match (total > 0, short) {
                    (true, false) => ResultCode::Ok,
                    (true, true) => ResultCode::OkPartial,
                    (false, _) => ResultCode::InsufficientStock,
                };
                for (position, line) in lines.iter().enumerate() {
                    let guard = &guards[guard_of(line_items[position])];
                    let available =
                        if code.is_ok() { guard.counters.available() } else { guard.original().available() };
                    results.push(LineResult {
                        code: if granted[position] < line.quantity.get() {
                            ResultCode::InsufficientStock
                        } else {
                            ResultCode::Ok
                        },
                        requested: line.quantity.get(),
                        applied: if code.is_ok() { granted[position] } else { 0 },
                        available,
                    });
                }
                let mut changes = Vec::new();
                let mut reserved_lines = Vec::new();
                if code.is_ok() {
                    for guard in guards.iter() {
                        assert!(guard.counters.holds(), "reserve broke the ledger: {:?}", guard.counters);
                    }
                    changes = changes_of(&distinct, guards);
                    reserved_lines = lines
                        .iter()
                        .enumerate()
                        .map(|(position, line)| ReservedLine {
                            item: line_items[position],
                            requested: line.quantity.get(),
                            reserved: granted[position],
                        })
                        .collect();
                } else {
                    for guard in guards.iter_mut() {
                        guard.counters = guard.original();
                    }
                }
                let reply = Reply {
                    lines: LineResults::from(&results[..]),
                    deadline_ms: if code.is_ok() { deadline_ms } else { 0 },
                    ..Reply::code(code)
                };
                (reply, reserved_lines, changes, self.take_lsn())
            })
        };

        let state = if reply.is_ok() { ReservationState::Open } else { ReservationState::Refused };
        // One copy of the id for the memory and the record: inline ids cost no allocation,
        // longer ones one shared allocation.
        let id = IdText::new(id);
        install_reservation(
            &mut shard,
            tenant,
            id.clone(),
            fingerprint,
            &reply,
            state,
            deadline_ms,
            &reserved_lines,
            now_ms,
            lsn,
        );
        records.push(Record {
            lsn,
            timestamp_ms: now_ms,
            body: Body::Reserved {
                tenant,
                reservation: id,
                fingerprint,
                deadline_ms,
                reply: reply.clone(),
                lines: reserved_lines,
                changes,
            },
        });
        reply
    }

    /// Commit, release or extend.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        tenant: TenantId,
        operation: &OperationId,
        reservation: &ReservationId,
        kind: SettleKind,
        lines: Option<&[Line]>,
        ttl_ms: u64,
        command: &Command,
        now_ms: u64,
        records: &mut Vec<Record>,
    ) -> Reply {
        if let Some(lines) = lines {
            if lines.is_empty() {
                return Reply::code(ResultCode::EmptyLines);
            }
            if lines.len() > LINES_PER_RESERVATION_MAX {
                return Reply::code(ResultCode::TooManyLines);
            }
        }
        if kind == SettleKind::Extend && !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ttl_ms) {
            return Reply::code(ResultCode::TtlOutOfRange);
        }
        if !self.tenant_exists(tenant) {
            return Reply::code(ResultCode::UnknownTenant);
        }
        let fingerprint = command.fingerprint();
        let operation = operation.as_str();
        let mut operations = self.operations.shard(tenant, operation).lock();
        if let Some(reply) = recall(&operations, tenant, operation, fingerprint) {
            return reply;
        }
        if self.refuses_new_id(operations.map.len(), 1, &operations.tenants, tenant) {
            // Not remembered: a retry once memory is free is decided afresh.
            return Reply::code(ResultCode::MemoryFull);
        }
        let id = reservation.as_str();
        let mut shard = self.reservations.shard(tenant, id).lock();
        let key = KeyRef(tenant, id);
        let refuse =
            |code: ResultCode, lines: Vec<LineResult>, records: &mut Vec<Record>, operations: &mut OperationShard| {
                let reply = Reply { lines: lines.into(), ..Reply::code(code) };
                let lsn = self.take_lsn();
                operations.remember(tenant, operation, fingerprint, reply.clone(), now_ms, lsn);
                records.push(Record {
                    lsn,
                    timestamp_ms: now_ms,
                    body: Body::Refused {
                        tenant,
                        memo: OperationMemo { operation: operation.into(), fingerprint, reply: reply.clone() },
                    },
                });
                reply
            };
        let Some(current) = shard.map.get(&key) else {
            return refuse(ResultCode::UnknownReservation, Vec::new(), records, &mut operations);
        };
        if !current.state.is_open() {
            return refuse(ResultCode::ReservationNotOpen, Vec::new(), records, &mut operations);
        }

        // Past its deadline: the engine expires it now, and says so.
        let (kind, line_changes, results, code) = if current.deadline_ms <= now_ms {
            let changes: Vec<LineChange> = current
                .lines
                .iter()
                .enumerate()
                .filter(|(_, line)| line.open() > 0)
                .map(|(position, line)| LineChange { line: position as u16, committed: 0, released: line.open() })
                .collect();
            // The reply says of each line asked for that it is expired, nothing applied
            // (regression, review: the lines were the released ones, each `ok`, as if applied).
            let results = lines
                .unwrap_or_default()
                .iter()
                .map(|line| LineResult {
                    code: ResultCode::ReservationExpired,
                    requested: line.quantity.get(),
                    applied: 0,
                    available: 0,
                })
                .collect();
            (SettleKind::Expire, changes, results, ResultCode::ReservationExpired)
        } else if kind == SettleKind::Extend {
            (SettleKind::Extend, Vec::new(), Vec::new(), ResultCode::Ok)
        } else {
            match self.plan_settle(tenant, current, lines, kind) {
                Ok((changes, results)) => (kind, changes, results, ResultCode::Ok),
                Err((code, results)) => return refuse(code, results, records, &mut operations),
            }
        };

        let deadline_ms = match kind {
            SettleKind::Extend => now_ms.saturating_add(ttl_ms),
            _ => current.deadline_ms,
        };
        // The item of each change, in change order (the reservation stays locked meanwhile).
        let change_items: SmallVec<[ItemId; SMALL]> =
            line_changes.iter().map(|change| current.lines[change.line as usize].item).collect();
        let mut items = change_items.clone();
        items.sort_unstable();
        items.dedup();
        let outcome = self.with_items(&items, |guards| {
            for (change, item) in line_changes.iter().zip(&change_items) {
                let guard = &mut guards[items.binary_search(item).expect("latched")];
                guard.counters.reserved -= change.committed + change.released;
                guard.counters.on_hand -= change.committed;
                guard.counters.committed_total += change.committed;
            }
            if guards.iter().any(|guard| guard.counters.on_hand < 0) {
                // Only with backorders: cannot ship what is not there.
                for guard in guards.iter_mut() {
                    guard.counters = guard.original();
                }
                return Err(ResultCode::InsufficientOnHand);
            }
            for guard in guards.iter() {
                assert!(guard.counters.holds(), "settle broke the ledger: {:?}", guard.counters);
            }
            Ok((changes_of(&items, guards), self.take_lsn()))
        });
        let (changes, lsn) = match outcome {
            Ok(done) => done,
            Err(code) => {
                // Nothing was applied (regression, review: the lines kept their planned amounts).
                let mut results = results;
                for result in &mut results {
                    result.applied = 0;
                }
                return refuse(code, results, records, &mut operations);
            }
        };

        let current = shard.map.get_mut(&key).expect("present");
        let old_deadline = current.deadline_ms;
        for change in &line_changes {
            let line = &mut current.lines[change.line as usize];
            line.committed += change.committed;
            line.released += change.released;
            assert!(line.open() >= 0);
        }
        let state = current.derived_state((kind == SettleKind::Expire).then_some(ReservationState::Expired));
        current.state = state;
        current.deadline_ms = deadline_ms;
        if state.is_open() && deadline_ms != old_deadline {
            assert_eq!(kind, SettleKind::Extend, "only an extend moves a deadline");
            let shared = shard.key(tenant, id);
            shard.index_deadline(deadline_ms, tenant, shared);
        }
        if !state.is_open() {
            shard.map.get_mut(&key).expect("present").close(now_ms);
            shard.close(tenant, id, now_ms, lsn);
        }
        let reply_lines: LineResults = if results.is_empty() && kind != SettleKind::Expire {
            line_changes
                .iter()
                .map(|change| LineResult {
                    code: ResultCode::Ok,
                    requested: change.committed + change.released,
                    applied: change.committed + change.released,
                    available: 0,
                })
                .collect()
        } else {
            LineResults::from(&results[..])
        };
        let reply = Reply {
            lines: reply_lines,
            deadline_ms: if state.is_open() { deadline_ms } else { 0 },
            ..Reply::code(code)
        };
        operations.remember(tenant, operation, fingerprint, reply.clone(), now_ms, lsn);
        records.push(Record {
            lsn,
            timestamp_ms: now_ms,
            body: Body::Settled {
                tenant,
                reservation: id.into(),
                kind,
                memo: Some(OperationMemo { operation: operation.into(), fingerprint, reply: reply.clone() }),
                deadline_ms,
                state,
                line_changes,
                changes,
            },
        });
        reply
    }

    /// Which reservation lines a commit or release takes how much from.
    #[allow(clippy::type_complexity)]
    fn plan_settle(
        &self,
        tenant: TenantId,
        reservation: &HeldReservation,
        lines: Option<&[Line]>,
        kind: SettleKind,
    ) -> Result<(Vec<LineChange>, Vec<LineResult>), (ResultCode, Vec<LineResult>)> {
        let split = |amount: i64| match kind {
            SettleKind::Commit => (amount, 0),
            _ => (0, amount),
        };
        let Some(lines) = lines else {
            let changes: Vec<LineChange> = reservation
                .lines
                .iter()
                .enumerate()
                .filter(|(_, line)| line.open() > 0)
                .map(|(position, line)| {
                    let (committed, released) = split(line.open());
                    LineChange { line: position as u16, committed, released }
                })
                .collect();
            return Ok((changes, Vec::new()));
        };
        let mut remaining: Vec<i64> = reservation.lines.iter().map(ReservationLineState::open).collect();
        let mut taken = vec![0i64; reservation.lines.len()];
        let mut results = Vec::with_capacity(lines.len());
        let mut failed = None;
        for line in lines {
            let item = self.catalog.find(tenant, line.sku.as_str(), line.location.as_str());
            let mut want = line.quantity.get();
            let mut code = ResultCode::Ok;
            let on_item: Vec<usize> = match item {
                Some(item) => (0..reservation.lines.len()).filter(|&p| reservation.lines[p].item == item).collect(),
                None => Vec::new(),
            };
            if on_item.is_empty() {
                code = ResultCode::LineNotInReservation;
            } else if on_item.iter().map(|&p| remaining[p]).sum::<i64>() < want {
                code = ResultCode::ExceedsReserved;
            } else {
                for position in on_item {
                    let take = want.min(remaining[position]);
                    remaining[position] -= take;
                    taken[position] += take;
                    want -= take;
                }
                debug_assert_eq!(want, 0);
            }
            if code != ResultCode::Ok && failed.is_none() {
                failed = Some(code);
            }
            results.push(LineResult {
                code,
                requested: line.quantity.get(),
                applied: if code == ResultCode::Ok { line.quantity.get() } else { 0 },
                available: 0,
            });
        }
        if let Some(code) = failed {
            for result in &mut results {
                result.applied = 0;
            }
            return Err((code, results));
        }
        let changes = taken
            .iter()
            .enumerate()
            .filter(|(_, &amount)| amount > 0)
            .map(|(position, &amount)| {
                let (committed, released) = split(amount);
                LineChange { line: position as u16, committed, released }
            })
            .collect();
        Ok((changes, results))
    }

    /// receive, adjust, set_on_hand, move, set_policy, import.
    fn stock(
        &self,
        tenant: TenantId,
        operation: &OperationId,
        command: &Command,
        now_ms: u64,
        records: &mut Vec<Record>,
    ) -> Reply {
        if let Some(code) = validate_stock(command) {
            return Reply::code(code);
        }
        if !self.tenant_exists(tenant) {
            return Reply::code(ResultCode::UnknownTenant);
        }
        let fingerprint = command.fingerprint();
        let operation = operation.as_str();
        let mut operations = self.operations.shard(tenant, operation).lock();
        if let Some(reply) = recall(&operations, tenant, operation, fingerprint) {
            return reply;
        }
        if self.refuses_new_id(operations.map.len(), 1, &operations.tenants, tenant) {
            // Not remembered: a retry once memory is free is decided afresh.
            return Reply::code(ResultCode::MemoryFull);
        }

        // Resolve (and where the command may, create) the items it touches.
        let mut targets: Vec<Result<ItemId, ResultCode>> = Vec::new();
        match command {
            Command::Receive { sku, location, .. }
            | Command::SetOnHand { sku, location, .. }
            | Command::SetPolicy { sku, location, .. } => {
                targets.push(self.resolve(tenant, sku, location, true, now_ms, records).map(|r| r.item));
            }
            Command::Adjust { sku, location, delta, .. } => {
                targets.push(self.resolve(tenant, sku, location, *delta > 0, now_ms, records).map(|r| r.item));
            }
            Command::Move { sku, from, to, .. } => {
                let source = self.resolve(tenant, sku, from, false, now_ms, records).map(|r| r.item);
                targets.push(source);
                if source.is_ok() {
                    targets.push(self.resolve(tenant, sku, to, true, now_ms, records).map(|r| r.item));
                }
            }
            Command::Import { rows, .. } => {
                for row in rows {
                    targets.push(if row_invalid(row).is_some() {
                        Err(row_invalid(row).expect("some"))
                    } else {
                        self.resolve(tenant, &row.sku, &row.location, true, now_ms, records).map(|r| r.item)
                    });
                }
            }
            _ => unreachable!("not a stock command"),
        }

        let mut items: Vec<ItemId> = targets.iter().filter_map(|t| t.as_ref().ok().copied()).collect();
        items.sort_unstable();
        items.dedup();
        let (reply, changes, lsn) = self.with_items(&items, |guards| {
            let position = |item: ItemId| items.binary_search(&item).expect("latched");
            let reply = match command {
                Command::Import { rows, .. } => {
                    let mut results = Vec::with_capacity(rows.len());
                    for (row, target) in rows.iter().zip(&targets) {
                        let result = match target {
                            Err(code) => Err(*code),
                            Ok(item) => {
                                let guard = &mut guards[position(*item)];
                                let mut next = guard.counters;
                                next.inflow_total += row.on_hand - next.on_hand;
                                next.on_hand = row.on_hand;
                                if let Some(safety_stock) = row.safety_stock {
                                    next.safety_stock = safety_stock;
                                }
                                if let Some(backorder_limit) = row.backorder_limit {
                                    next.backorder_limit = backorder_limit;
                                }
                                match check_correction(&next) {
                                    Ok(()) => {
                                        guard.counters = next;
                                        Ok(next)
                                    }
                                    Err(code) => Err(code),
                                }
                            }
                        };
                        results.push(match result {
                            Ok(next) => LineResult {
                                code: ResultCode::Ok,
                                requested: row.on_hand,
                                applied: next.on_hand,
                                available: next.available(),
                            },
                            Err(code) => LineResult { code, requested: row.on_hand, applied: 0, available: 0 },
                        });
                    }
                    let code = if results.iter().all(|r| r.code == ResultCode::Ok) {
                        ResultCode::Ok
                    } else if results.iter().any(|r| r.code == ResultCode::Ok) {
                        ResultCode::OkPartial
                    } else {
                        results[0].code
                    };
                    Reply { lines: results.into(), ..Reply::code(code) }
                }
                _ => {
                    let single = decide_single(command, &targets, guards, &position);
                    match single {
                        Ok(on_hand) => Reply { on_hand, ..Reply::code(ResultCode::Ok) },
                        Err((code, on_hand)) => {
                            for guard in guards.iter_mut() {
                                guard.counters = guard.original();
                            }
                            Reply { on_hand, ..Reply::code(code) }
                        }
                    }
                }
            };
            for guard in guards.iter() {
                assert!(guard.counters.holds(), "stock command broke the ledger: {:?}", guard.counters);
            }
            let changes = changes_of(&items, guards);
            (reply, changes, self.take_lsn())
        });
        operations.remember(tenant, operation, fingerprint, reply.clone(), now_ms, lsn);
        records.push(Record {
            lsn,
            timestamp_ms: now_ms,
            body: Body::Stock {
                tenant,
                memo: OperationMemo { operation: operation.into(), fingerprint, reply: reply.clone() },
                changes,
            },
        });
        reply
    }

    fn expire(&self, limit: usize, now_ms: u64, records: &mut Vec<Record>) -> Reply {
        let limit = limit.min(EXPIRE_BATCH_MAX);
        let mut expired = 0u64;
        // Round robin over the id shards (regression, review, eleventh session: every call
        // began with shard 0, so a backlog due there, a flood of one tenant's reservations,
        // took each call's whole limit and what fell due in later shards stayed reserved).
        let shards = self.reservations.all();
        let first = self.expire_next_shard.load(Ordering::Relaxed) % shards.len();
        for index in (first..shards.len()).chain(0..first) {
            if expired as usize >= limit {
                self.expire_next_shard.store(index, Ordering::Relaxed);
                break;
            }
            let mut shard = shards[index].lock();
            while (expired as usize) < limit {
                let Some((deadline_ms, tenant, id)) = shard.take_due(now_ms) else { break };
                let key = Key(tenant, id.clone());
                let reservation = shard.map.get(&key).expect("deadline entry without reservation");
                assert!(reservation.state.is_open());
                let line_changes: Vec<LineChange> = reservation
                    .lines
                    .iter()
                    .enumerate()
                    .filter(|(_, line)| line.open() > 0)
                    .map(|(position, line)| LineChange { line: position as u16, committed: 0, released: line.open() })
                    .collect();
                let change_items: SmallVec<[ItemId; SMALL]> =
                    line_changes.iter().map(|c| reservation.lines[c.line as usize].item).collect();
                let mut items = change_items.clone();
                items.sort_unstable();
                items.dedup();
                let (changes, lsn) = self.with_items(&items, |guards| {
                    for (change, item) in line_changes.iter().zip(&change_items) {
                        guards[items.binary_search(item).expect("latched")].counters.reserved -= change.released;
                    }
                    (changes_of(&items, guards), self.take_lsn())
                });
                let reservation = shard.map.get_mut(&key).expect("present");
                for change in &line_changes {
                    reservation.lines[change.line as usize].released += change.released;
                }
                reservation.state = ReservationState::Expired;
                reservation.close(now_ms);
                shard.close(tenant, &id, now_ms, lsn);
                records.push(Record {
                    lsn,
                    timestamp_ms: now_ms,
                    body: Body::Settled {
                        tenant,
                        reservation: id.as_str().into(),
                        kind: SettleKind::Expire,
                        memo: None,
                        deadline_ms,
                        state: ReservationState::Expired,
                        line_changes,
                        changes,
                    },
                });
                expired += 1;
            }
        }
        Reply { count: expired, ..Reply::code(ResultCode::Ok) }
    }

    fn forget(&self, now_ms: u64, records: &mut Vec<Record>) -> Reply {
        let by_age_ms = now_ms.saturating_sub(self.config.idempotency_retention_ms);
        let before_ms = by_age_ms.max(self.forget_cutoff_by_count(by_age_ms, now_ms));
        debug_assert!(before_ms <= by_age_ms.max(now_ms.saturating_sub(IDEMPOTENCY_RETENTION_FLOOR_MS)));
        let lsn = self.take_lsn();
        let forgotten = self.forget_before(before_ms, lsn);
        records.push(Record { lsn, timestamp_ms: now_ms, body: Body::Forgotten { before_ms } });
        Reply { count: forgotten as u64, ..Reply::code(ResultCode::Ok) }
    }

    fn begin_epoch(&self, epoch: u64, now_ms: u64, records: &mut Vec<Record>) -> Reply {
        let mut epochs = self.epochs.write();
        let current = epochs.last().map_or(EPOCH_FIRST, |&(epoch, _)| epoch);
        if epoch <= current {
            // An epoch only grows: a promotion to an epoch already seen is refused.
            return Reply { count: current, ..Reply::code(ResultCode::ExpectedMismatch) };
        }
        if epochs.len() >= EPOCHS_MAX || epoch > crate::epoch::EPOCH_MAX {
            return Reply::code(ResultCode::CapacityExceeded);
        }
        let lsn = self.take_lsn();
        epochs.push((epoch, lsn));
        debug_assert!(epochs.windows(2).all(|pair| pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1));
        records.push(Record { lsn, timestamp_ms: now_ms, body: Body::EpochChanged { epoch } });
        Reply { count: epoch, ..Reply::code(ResultCode::Ok) }
    }

    /// The earliest time such that forgetting what closed (or was remembered) before it brings
    /// both tables to their target, but never later than the retention floor allows; `floor_ms`
    /// when neither is over its target.
    fn forget_cutoff_by_count(&self, floor_ms: u64, now_ms: u64) -> u64 {
        let usage = self.idempotency_usage();
        if !usage.over_target() {
            return floor_ms;
        }
        // Per shard: the limit is enforced per shard, so every shard must come back under it.
        let target = forget_target(usage.shard_max);
        let latest_ms = now_ms.saturating_sub(IDEMPOTENCY_RETENTION_FLOOR_MS);
        if latest_ms <= floor_ms {
            return floor_ms;
        }
        // Whether forgetting what closed (or was remembered) before `before_ms` leaves every
        // shard of both tables at most at the target. The queues are in LSN order, which is
        // time order up to clock skew between threads, so this is an estimate; `forget` itself
        // stops at the first entry not old enough.
        let enough = |before_ms: u64| -> bool {
            self.reservations.all().iter().all(|shard| {
                let shard = shard.lock();
                shard.weight().saturating_sub(shard.closed_weight_before(before_ms)) <= target
            }) && self.operations.all().iter().all(|shard| {
                let shard = shard.lock();
                shard.map.len().saturating_sub(shard.order.partition_point(|entry| entry.0 < before_ms)) <= target
            })
        };
        if enough(floor_ms) {
            // The time bound alone is enough.
            return floor_ms;
        }
        if !enough(latest_ms) {
            // Even the floor does not make room: forget all that may go; new ids meet
            // `memory_full` until older ones can go.
            return latest_ms;
        }
        // The smallest cutoff that is enough (binary search over milliseconds: at most 64 steps).
        let (mut low_ms, mut high_ms) = (floor_ms, latest_ms);
        while low_ms + 1 < high_ms {
            let middle_ms = low_ms + (high_ms - low_ms) / 2;
            if enough(middle_ms) {
                high_ms = middle_ms;
            } else {
                low_ms = middle_ms;
            }
        }
        debug_assert!(high_ms <= latest_ms && high_ms > floor_ms);
        high_ms
    }

    /// Forgets, in each table, every entry logged before the table's first entry (in LSN
    /// order, over all its shards, among those logged before `lsn`) that is not older than
    /// `before_ms`. Times are not monotone in LSN order (`now` is read before the LSN is taken,
    /// and clocks step back), and which shard holds an id depends on a key each engine draws
    /// for itself: a bound per shard would forget different entries on the engine that made
    /// the `Forgotten` record and on the ones that replay it. This bound is the same on all of
    /// them: every entry logged before `lsn` is in its shard once the shard's lock is taken
    /// here (LSNs are taken under the locks of the shards their entries go to), and each
    /// engine holds the same entries.
    fn forget_before(&self, before_ms: u64, lsn: Lsn) -> usize {
        let below_reservations = self
            .reservations
            .all()
            .iter()
            .filter_map(|shard| shard.lock().first_young(before_ms, lsn))
            .fold(lsn, Lsn::min);
        let below_operations = self
            .operations
            .all()
            .iter()
            .filter_map(|shard| shard.lock().first_young(before_ms, lsn))
            .fold(lsn, Lsn::min);
        assert!(below_reservations <= lsn && below_operations <= lsn);
        let mut forgotten = 0;
        for shard in self.reservations.all() {
            forgotten += shard.lock().forget(before_ms, below_reservations);
        }
        for shard in self.operations.all() {
            forgotten += shard.lock().forget(before_ms, below_operations);
        }
        forgotten
    }

    // ---------------------------------------------------------------------------------------
    // Replay.

    /// Applies a record made by `execute` (here or on another engine), deciding nothing.
    /// Records must come in LSN order with no gap. A record that does not fit the state it
    /// is applied to (a corrupt or foreign log) is an error, and the engine must be dropped.
    pub fn apply(&self, record: &Record) -> Result<(), EngineError> {
        let expected = self.next_lsn.load(Ordering::Acquire);
        if record.lsn.0 != expected {
            return Err(EngineError::LsnOutOfOrder { expected, found: record.lsn.0 });
        }
        let lsn = record.lsn;
        let mismatch = |what: String| EngineError::ReplayMismatch { lsn: lsn.0, what };
        if record.timestamp_ms == u64::MAX {
            // The memory keeps u64::MAX as "still open" (`HeldReservation`); no clock reads it.
            return Err(mismatch("a timestamp of u64::MAX ms".into()));
        }
        match &record.body {
            Body::TenantCreated { tenant, name } => {
                // As `restore` checks (review: a name it refuses, replayed, left every later
                // snapshot unloadable).
                if crate::types::validate_name(name).is_err() {
                    return Err(mismatch(format!("tenant name {name:?} is not a name")));
                }
                let mut tenants = self.catalog.tenants.write();
                if tenants.get(name).is_some() || tenants.len() != tenant.0 as usize {
                    return Err(mismatch(format!("tenant {name} cannot be {tenant:?}")));
                }
                tenants.insert(name).ok_or_else(|| mismatch("too many tenants".into()))?;
            }
            Body::ItemCreated { item, tenant, sku, location } => {
                // Regression: a tenant past TENANTS_MAX (the record's field is any u32) reached
                // the catalog's assertion and panicked replay, where a foreign log is an error.
                if tenant.0 as usize >= self.catalog.tenants.read().len() {
                    return Err(mismatch(format!("item {sku}@{location} of unknown tenant {}", tenant.0)));
                }
                let hash = sku_hash(*tenant, sku);
                if self.catalog.shard_of(hash) != item.shard || item.shard as usize >= self.catalog.shard_count() {
                    return Err(mismatch(format!("item {sku}@{location} is not in shard {}", item.shard)));
                }
                let mut items = self.catalog.shards[item.shard as usize].items.write();
                if items.len() != item.index as usize || items.find(*tenant, sku, location).is_some() {
                    return Err(mismatch(format!("item {sku}@{location} cannot be {item:?}")));
                }
                items.insert(*tenant, sku, location).ok_or_else(|| mismatch("shard full".into()))?;
                // Counted, never refused: the limit is the primary's, at execution.
                assert!(self.catalog.tenants.read_recursive().count_item(*tenant, u32::MAX));
            }
            Body::Stock { tenant, memo, changes } => {
                // Checked before any item changes: a refused record leaves nothing behind.
                self.replayed_tenant(*tenant, lsn)?;
                memo_fits(memo, lsn)?;
                self.apply_changes(lsn, changes)?;
                self.remember_replayed(*tenant, memo, record.timestamp_ms, lsn)?;
            }
            Body::Reserved { tenant, reservation, fingerprint, deadline_ms, reply, lines, changes } => {
                self.replayed_tenant(*tenant, lsn)?;
                if !HeldReservation::holds_reply(reply) {
                    return Err(mismatch(format!("reservation {reservation}: its reply is not a reserve's")));
                }
                // What `execute` writes (review: a record it never writes reached assertions, or
                // left counts that only a later command tripped over): lines exactly when the
                // reply is a success, each within its request, and the items' reserved counts
                // moved by what the lines reserved on them, nothing else.
                if reply.is_ok() == lines.is_empty() || lines.len() > LINES_PER_RESERVATION_MAX {
                    return Err(mismatch(format!("reservation {reservation}: reply and lines disagree")));
                }
                let mut reserved_by_item: SmallVec<[(ItemId, i64); SMALL]> = SmallVec::new();
                for line in lines.iter() {
                    if !(1..=QUANTITY_MAX).contains(&line.requested) || !(0..=line.requested).contains(&line.reserved) {
                        return Err(mismatch(format!("reservation {reservation}: a line of {line:?}")));
                    }
                    add_to_item(&mut reserved_by_item, line.item, line.reserved);
                }
                let expected = reserved_by_item.iter().copied().filter(|(_, reserved)| *reserved != 0);
                if !same_item_deltas(
                    expected,
                    changes,
                    |change| (change.reserved_delta, change.on_hand_delta),
                    |r| (r, 0),
                ) {
                    return Err(mismatch(format!("reservation {reservation}: its item changes are not its lines'")));
                }
                self.apply_changes(lsn, changes)?;
                let mut shard = self.reservations.shard(*tenant, reservation).lock();
                if shard.map.contains_key(&KeyRef(*tenant, reservation)) {
                    return Err(mismatch(format!("reservation {reservation} exists")));
                }
                let state = if reply.is_ok() { ReservationState::Open } else { ReservationState::Refused };
                install_reservation(
                    &mut shard,
                    *tenant,
                    reservation.clone(),
                    *fingerprint,
                    reply,
                    state,
                    *deadline_ms,
                    lines,
                    record.timestamp_ms,
                    lsn,
                );
            }
            Body::Settled { tenant, reservation, kind, memo, deadline_ms, state, line_changes, changes } => {
                self.replayed_tenant(*tenant, lsn)?;
                if let Some(memo) = memo {
                    memo_fits(memo, lsn)?;
                }
                // The reservation first (the order `execute` locks in), so that every check of
                // the record comes before any item changes.
                let mut shard = self.reservations.shard(*tenant, reservation).lock();
                let key = KeyRef(*tenant, reservation);
                let Some(current) = shard.map.get_mut(&key) else {
                    return Err(mismatch(format!("reservation {reservation} unknown")));
                };
                if !current.state.is_open() {
                    return Err(mismatch(format!("reservation {reservation} not open")));
                }
                // Each line settles at most what it holds, by amounts of zero or more, and the
                // items move by what their lines settled: reserved down by all of it, on_hand by
                // the committed part (review: a negative release was taken, and the item's
                // counts were never compared with the lines').
                let mut settled_by_item: SmallVec<[(ItemId, (i64, i64)); SMALL]> = SmallVec::new();
                let mut settled_by_line: SmallVec<[(usize, i64, i64); SMALL]> = SmallVec::new();
                for change in line_changes {
                    let index = change.line as usize;
                    let Some(line) = current.lines.get(index) else {
                        return Err(mismatch(format!("reservation {reservation} has no line {}", change.line)));
                    };
                    // Bounded before any sum: a line holds at most QUANTITY_MAX, and a record
                    // has fewer line changes than its 4 MiB hold, so no sum below overflows.
                    if !(0..=QUANTITY_MAX).contains(&change.committed) || !(0..=QUANTITY_MAX).contains(&change.released)
                    {
                        return Err(mismatch(format!("reservation {reservation} line {} over-settled", change.line)));
                    }
                    let (committed, released) = settled_by_line
                        .iter()
                        .find(|(at, _, _)| *at == index)
                        .map_or((change.committed, change.released), |(_, c, r)| {
                            (c + change.committed, r + change.released)
                        });
                    if committed + released > line.open() {
                        return Err(mismatch(format!("reservation {reservation} line {} over-settled", change.line)));
                    }
                    match settled_by_line.iter_mut().find(|(at, _, _)| *at == index) {
                        Some(entry) => *entry = (index, committed, released),
                        None => settled_by_line.push((index, committed, released)),
                    }
                    match settled_by_item.iter_mut().find(|(item, _)| *item == line.item) {
                        Some((_, (c, r))) => (*c, *r) = (*c + change.committed, *r + change.released),
                        None => settled_by_item.push((line.item, (change.committed, change.released))),
                    }
                }
                let expected = settled_by_item.iter().filter(|(_, (c, r))| c + r != 0).map(|(item, cr)| (*item, *cr));
                if !same_item_deltas(
                    expected,
                    changes,
                    |change| (change.reserved_delta, change.on_hand_delta),
                    |(c, r)| (-(c + r), -c),
                ) {
                    return Err(mismatch(format!("reservation {reservation}: its item changes are not its lines'")));
                }
                self.apply_changes(lsn, changes)?;
                let current = shard.map.get_mut(&key).expect("present");
                let old_deadline = current.deadline_ms;
                for change in line_changes {
                    let line = &mut current.lines[change.line as usize];
                    line.committed += change.committed;
                    line.released += change.released;
                    assert!(line.open() >= 0, "checked above");
                }
                let derived = current.derived_state((*kind == SettleKind::Expire).then_some(ReservationState::Expired));
                if derived != *state {
                    return Err(mismatch(format!(
                        "reservation {reservation}: state {derived:?}, record says {state:?}"
                    )));
                }
                current.state = *state;
                current.deadline_ms = *deadline_ms;
                if state.is_open() {
                    if *deadline_ms != old_deadline {
                        let shared = shard.key(*tenant, reservation);
                        shard.index_deadline(*deadline_ms, *tenant, shared);
                    }
                } else {
                    shard.map.get_mut(&key).expect("present").close(record.timestamp_ms);
                    shard.close(*tenant, reservation, record.timestamp_ms, lsn);
                }
                drop(shard);
                if let Some(memo) = memo {
                    self.remember_replayed(*tenant, memo, record.timestamp_ms, lsn)?;
                }
            }
            Body::Refused { tenant, memo } => {
                self.replayed_tenant(*tenant, lsn)?;
                self.remember_replayed(*tenant, memo, record.timestamp_ms, lsn)?;
            }
            Body::Forgotten { before_ms } => {
                self.forget_before(*before_ms, lsn);
            }
            Body::EpochChanged { epoch } => {
                let mut epochs = self.epochs.write();
                let current = epochs.last().map_or(EPOCH_FIRST, |&(epoch, _)| epoch);
                if *epoch <= current || *epoch > crate::epoch::EPOCH_MAX || epochs.len() >= EPOCHS_MAX {
                    return Err(mismatch(format!("epoch {epoch} cannot follow epoch {current}")));
                }
                epochs.push((*epoch, lsn));
            }
            // A mark in the log for the server (its credential store lives beside the ledger).
            Body::CredentialsChanged => {}
        }
        self.next_lsn.store(expected + 1, Ordering::Release);
        Ok(())
    }

    fn apply_changes(&self, lsn: Lsn, changes: &[ItemChange]) -> Result<(), EngineError> {
        // `with_items` latches at most this many (review: a longer list, which the decoder
        // takes, reached its assertion).
        if changes.len() > IMPORT_ROWS_MAX * 2 {
            return Err(EngineError::ReplayMismatch { lsn: lsn.0, what: format!("{} item changes", changes.len()) });
        }
        let mut items: Vec<ItemId> = changes.iter().map(|change| change.item).collect();
        items.sort_unstable();
        items.dedup();
        if items.len() != changes.len() {
            return Err(EngineError::ReplayMismatch { lsn: lsn.0, what: "an item changes twice in one record".into() });
        }
        for item in &items {
            if item.shard as usize >= self.catalog.shard_count()
                || item.index as usize >= self.catalog.read_shard(item.shard).len()
            {
                return Err(EngineError::ReplayMismatch { lsn: lsn.0, what: format!("unknown item {item:?}") });
            }
        }
        self.with_items(&items, |guards| {
            for change in changes {
                let guard = &mut guards[items.binary_search(&change.item).expect("latched")];
                let now = guard.counters;
                if now.on_hand.checked_add(change.on_hand_delta) != Some(change.after.on_hand)
                    || now.reserved.checked_add(change.reserved_delta) != Some(change.after.reserved)
                    || !change.after.holds()
                {
                    return Err(EngineError::ReplayMismatch {
                        lsn: lsn.0,
                        what: format!(
                            "item {:?} is {now:?}, record expects {:?} after {:+}/{:+}",
                            change.item, change.after, change.on_hand_delta, change.reserved_delta
                        ),
                    });
                }
                guard.counters = change.after;
            }
            Ok(())
        })
    }

    fn remember_replayed(
        &self,
        tenant: TenantId,
        memo: &OperationMemo,
        at_ms: u64,
        lsn: Lsn,
    ) -> Result<(), EngineError> {
        memo_fits(memo, lsn)?;
        let mut operations = self.operations.shard(tenant, &memo.operation).lock();
        if operations.map.contains_key(&KeyRef(tenant, &memo.operation)) {
            return Err(EngineError::ReplayMismatch {
                lsn: lsn.0,
                what: format!("operation {} remembered twice", memo.operation),
            });
        }
        operations.remember(tenant, &memo.operation, memo.fingerprint, memo.reply.clone(), at_ms, lsn);
        Ok(())
    }

    /// A replayed record's tenant exists (review: records of a tenant the log never created
    /// were taken, and `restore` then refused every later snapshot).
    fn replayed_tenant(&self, tenant: TenantId, lsn: Lsn) -> Result<(), EngineError> {
        if self.tenant_exists(tenant) {
            Ok(())
        } else {
            Err(EngineError::ReplayMismatch { lsn: lsn.0, what: format!("unknown tenant {}", tenant.0) })
        }
    }

    // ---------------------------------------------------------------------------------------
    // Queries (read-only; never block writers).

    pub fn item(&self, tenant: TenantId, sku: &str, location: &str) -> Option<ItemView> {
        let item = self.catalog.find(tenant, sku, location)?;
        let shard = self.catalog.read_shard(item.shard);
        Some(view(&shard, item))
    }

    /// A SKU at its locations: the first `locations_max` of them (in creation order) named,
    /// how many there are, and the total over all of them. Only the named locations copy their
    /// names (regression: every location was copied, under the shard's read lock, before the
    /// caller kept the first `PAGE_ITEMS_MAX`). The total is `quantity_overflow` when a sum does
    /// not fit 64 bits: one item's counters are at most `STOCK_MAX` (2^50), but a SKU may have
    /// any number of locations (8,192 of them at `STOCK_MAX` reach 2^63).
    /// How many locations (tenant, sku) has: O(log n) lookups, for charging a query of it
    /// by the work it takes (a walk of every location) before running it.
    pub fn sku_location_count(&self, tenant: TenantId, sku: &str) -> usize {
        let hash = sku_hash(tenant, sku);
        let shard = self.catalog.read_shard(self.catalog.shard_of(hash));
        shard.sku_location_count(tenant, sku)
    }

    pub fn sku(&self, tenant: TenantId, sku: &str, locations_max: usize) -> SkuView {
        let hash = sku_hash(tenant, sku);
        let shard_id = self.catalog.shard_of(hash);
        let shard = self.catalog.read_shard(shard_id);
        let indexes = shard.sku_items(tenant, sku);
        let locations: Vec<ItemView> =
            indexes.iter().take(locations_max).map(|&index| view(&shard, ItemId { shard: shard_id, index })).collect();
        let total = indexes.iter().try_fold(Counters::default(), |total, &index| {
            let counters = shard.cell(index).read();
            Some(Counters {
                on_hand: total.on_hand.checked_add(counters.on_hand)?,
                reserved: total.reserved.checked_add(counters.reserved)?,
                safety_stock: total.safety_stock.checked_add(counters.safety_stock)?,
                backorder_limit: total.backorder_limit.checked_add(counters.backorder_limit)?,
                inflow_total: total.inflow_total.checked_add(counters.inflow_total)?,
                committed_total: total.committed_total.checked_add(counters.committed_total)?,
            })
        });
        debug_assert!(total.is_none_or(|total| total.on_hand >= 0 && total.reserved >= 0));
        debug_assert!(locations.len() == indexes.len().min(locations_max));
        SkuView { locations, location_count: indexes.len(), total: total.ok_or(ResultCode::QuantityOverflow) }
    }

    /// A page of a tenant's items. `cursor` 0 starts; pages are in a stable order (shard by
    /// shard, each in creation order). A cursor is the shard in its high 32 bits and, in its low
    /// 32, 0 for the shard's first item of the tenant or 1 + the index of the item to go on
    /// from. A cursor that names no item of this tenant (forged, or of another tenant) goes on
    /// from the next shard: it never reads another tenant's items.
    pub fn tenant_items(&self, tenant: TenantId, cursor: u64, limit: usize) -> Page {
        let limit = limit.clamp(1, PAGE_ITEMS_MAX);
        let (mut shard_id, mut from) = ((cursor >> 32) as usize, (cursor & 0xffff_ffff) as u32);
        let mut items = Vec::new();
        while shard_id < self.catalog.shard_count() {
            let shard = self.catalog.read_shard(shard_id as u32);
            let start = from.checked_sub(1);
            for index in shard.tenant_items(tenant, start).into_iter().flatten() {
                if items.len() == limit {
                    let next_cursor = ((shard_id as u64) << 32) | (u64::from(index) + 1);
                    return Page { items, next_cursor: Some(next_cursor) };
                }
                debug_assert_eq!(shard.key(index).tenant, tenant, "a tenant's list holds only its items");
                items.push(view(&shard, ItemId { shard: shard_id as u32, index }));
            }
            shard_id += 1;
            from = 0;
        }
        debug_assert!(items.len() <= limit);
        Page { items, next_cursor: None }
    }

    /// The remembered reply of an operation id, if it is still remembered.
    /// Whether operation `id` of `tenant` is remembered: one probe, its reply left packed.
    pub fn remembers_operation(&self, tenant: TenantId, id: &str) -> bool {
        self.operations.shard(tenant, id).lock().map.contains_key(&KeyRef(tenant, id))
    }

    pub fn operation(&self, tenant: TenantId, id: &str) -> Option<Reply> {
        let shard = self.operations.shard(tenant, id).lock();
        shard.map.get(&KeyRef(tenant, id)).map(|entry| entry.reply.reply())
    }

    pub fn reservation(&self, tenant: TenantId, id: &str) -> Option<ReservationView> {
        let shard = self.reservations.shard(tenant, id).lock();
        let reservation = shard.map.get(&KeyRef(tenant, id))?.clone();
        drop(shard);
        let lines = reservation
            .lines
            .iter()
            .map(|line| {
                let shard = self.catalog.read_shard(line.item.shard);
                ReservationLineView {
                    sku: shard.sku(line.item.index).to_owned(),
                    location: shard.location(line.item.index).to_owned(),
                    requested: line.requested,
                    reserved: line.reserved,
                    committed: line.committed,
                    released: line.released,
                }
            })
            .collect();
        Some(ReservationView {
            reservation: id.to_owned(),
            state: reservation.state,
            deadline_ms: reservation.deadline_ms,
            lines,
            reply: reservation.reply(),
        })
    }

    /// Checks the ledger: per item, reserved = the open reservation lines on it, the no-oversell
    /// bound, on_hand = inflow - committed. Meant for a quiescent engine (tests, offline
    /// `reservoir verify`): under concurrent writes it can report transient differences.
    pub fn verify(&self) -> VerifyReport {
        let mut report = VerifyReport::default();
        // Hashed, not ordered: one entry per item with open lines, looked up once per item.
        // Summed in 128 bits: the lines of millions of reservations cannot wrap them.
        // Per item: the units its open lines hold, and the tenant of their reservations (None
        // once two tenants' reservations hold it), checked against the item's own tenant below.
        let mut open_by_item: hashbrown::HashMap<ItemId, (i128, Option<TenantId>)> = hashbrown::HashMap::new();
        for shard in self.reservations.all() {
            let shard = shard.lock();
            let mut open_in_shard = 0;
            for (Key(tenant, id), reservation) in &shard.map {
                let open: i128 = reservation.lines.iter().map(|line| i128::from(line.open())).sum();
                if reservation.state.is_open() {
                    open_in_shard += 1;
                    for line in &reservation.lines {
                        let entry = open_by_item.entry(line.item).or_insert((0, Some(*tenant)));
                        entry.0 += i128::from(line.open());
                        if entry.1 != Some(*tenant) {
                            entry.1 = None;
                        }
                    }
                } else if open != 0 {
                    report.violations.push(format!("closed reservation {id} still holds {open}"));
                }
            }
            report.open_reservations += open_in_shard;
            // Each live entry is one open reservation, distinct entries distinct ones: as many
            // entries as open reservations means every open one has its entry.
            if shard.open_by_deadline().len() != open_in_shard || shard.open_count() != open_in_shard {
                report.violations.push("deadline index and open reservations differ".into());
            }
            let weights = shard.map.iter().map(|(key, held)| (key.0, reservation_weight(held.lines.len())));
            if !shard.tenants.count(weights) {
                report.violations.push("reservations counted per tenant differ from those remembered".into());
            }
        }
        for shard in self.operations.all() {
            let shard = shard.lock();
            if !shard.tenants.count(shard.map.keys().map(|key| (key.0, 1))) {
                report.violations.push("operation ids counted per tenant differ from those remembered".into());
            }
        }
        let tenants = self.catalog.tenants.read();
        // Summed per tenant number, named at the end: one string per tenant, not per item
        // (regression: a name copy and a map lookup per item were 40% of a 10 M-item cold start).
        // In 128 bits: a tenant's items may hold far more than 2^63 units together (each item
        // up to STOCK_MAX, 2^50). Regression: i64 sums overflowed, and `verify`, which the
        // server runs on its timer and at shutdown, panicked on a valid ledger.
        let mut totals_by_tenant: Vec<Option<(i128, i128)>> = vec![None; tenants.len() + 1];
        let mut items_by_tenant: Vec<u32> = vec![0; tenants.len() + 1];
        for (shard_id, shard) in self.catalog.shards.iter().enumerate() {
            let shard = shard.items.read();
            for index in 0..shard.len() as u32 {
                let item = ItemId { shard: shard_id as u32, index };
                let counters = shard.cell(index).read();
                report.items += 1;
                // Past the known tenants: the last slot, reported as "?".
                let slot = (shard.key(index).tenant.0 as usize).min(tenants.len());
                items_by_tenant[slot] += 1;
                let totals = totals_by_tenant[slot].get_or_insert((0, 0));
                totals.0 += i128::from(counters.on_hand);
                totals.1 += i128::from(counters.reserved);
                if !counters.holds() {
                    report.violations.push(format!(
                        "item {}@{} breaks the ledger: {counters:?}",
                        shard.sku(index),
                        shard.location(index)
                    ));
                }
                let owner = shard.key(index).tenant;
                let (open, holder) = open_by_item.remove(&item).unwrap_or((0, Some(owner)));
                // A reservation holds its own tenant's items only.
                if holder != Some(owner) {
                    report.violations.push(format!(
                        "item {}@{}: held by a reservation of another tenant",
                        shard.sku(index),
                        shard.location(index)
                    ));
                }
                if open != i128::from(counters.reserved) {
                    report.violations.push(format!(
                        "item {}@{}: reserved {} but open reservation lines hold {open}",
                        shard.sku(index),
                        shard.location(index),
                        counters.reserved
                    ));
                }
            }
        }
        for (tenant, name) in tenants.iter() {
            if tenants.items_of(tenant) != items_by_tenant[tenant.0 as usize] {
                report.violations.push(format!(
                    "tenant {name}: {} items counted, {} in the shards",
                    tenants.items_of(tenant),
                    items_by_tenant[tenant.0 as usize]
                ));
            }
        }
        let mut unknown: Vec<(ItemId, i128)> = open_by_item.into_iter().map(|(item, (open, _))| (item, open)).collect();
        unknown.sort_unstable();
        for (item, open) in unknown {
            report.violations.push(format!("reservations hold {open} on unknown item {item:?}"));
        }
        for (slot, totals) in totals_by_tenant.into_iter().enumerate() {
            if let Some(totals) = totals {
                let name = tenants.name(TenantId(slot as u32)).unwrap_or("?");
                let named = report.tenant_totals.entry(name.to_owned()).or_default();
                named.0 += totals.0;
                named.1 += totals.1;
            }
        }
        report
    }

    /// The whole state in canonical order (tests compare engines with it).
    pub fn dump(&self) -> Dump {
        let tenants = self.catalog.tenants.read();
        let mut items = BTreeMap::new();
        for (shard_id, shard) in self.catalog.shards.iter().enumerate() {
            let shard = shard.items.read();
            for index in 0..shard.len() as u32 {
                items.insert(
                    ItemId { shard: shard_id as u32, index },
                    (
                        shard.key(index).tenant,
                        shard.sku(index).to_owned(),
                        shard.location(index).to_owned(),
                        shard.cell(index).read(),
                    ),
                );
            }
        }
        let mut reservations = BTreeMap::new();
        for shard in self.reservations.all() {
            for (Key(tenant, id), reservation) in &shard.lock().map {
                reservations.insert((*tenant, id.to_string()), reservation.plain());
            }
        }
        let mut operations = BTreeMap::new();
        for shard in self.operations.all() {
            for (tenant, id, entry) in shard.lock().entries() {
                operations.insert((tenant, id.to_string()), entry);
            }
        }
        Dump {
            next_lsn: self.next_lsn.load(Ordering::Acquire),
            tenants: tenants.iter().map(|(_, name)| name.to_owned()).collect(),
            items,
            reservations,
            operations,
            epochs: self.epoch_history(),
        }
    }

    /// Heap bytes held by items (cells, keys, indexes), for the memory benchmark.
    pub fn item_heap_bytes(&self) -> usize {
        self.catalog.shards.iter().map(|shard| shard.items.read().heap_bytes()).sum()
    }

    pub fn item_count(&self) -> usize {
        self.catalog.shards.iter().map(|shard| shard.items.read().len()).sum()
    }
}

fn view(shard: &ShardItems, item: ItemId) -> ItemView {
    ItemView {
        item,
        sku: shard.sku(item.index).to_owned(),
        location: shard.location(item.index).to_owned(),
        counters: shard.cell(item.index).read(),
    }
}

fn recall(operations: &OperationShard, tenant: TenantId, id: &str, fingerprint: u64) -> Option<Reply> {
    let entry = operations.map.get(&KeyRef(tenant, id))?;
    Some(if entry.fingerprint == fingerprint {
        entry.reply.reply()
    } else {
        Reply::code(ResultCode::IdReusedWithDifferentRequest)
    })
}

/// Adds `amount` to `item`'s entry of a short list, made on first use.
fn add_to_item(by_item: &mut SmallVec<[(ItemId, i64); SMALL]>, item: ItemId, amount: i64) {
    match by_item.iter_mut().find(|(at, _)| *at == item) {
        Some((_, total)) => *total += amount,
        None => by_item.push((item, amount)),
    }
}

/// Whether `changes` name exactly the items of `expected`, once each, each with the (reserved,
/// on_hand) deltas `delta` makes of its value.
fn same_item_deltas<V: Copy>(
    expected: impl Iterator<Item = (ItemId, V)> + Clone,
    changes: &[ItemChange],
    deltas_of: impl Fn(&ItemChange) -> (i64, i64),
    delta: impl Fn(V) -> (i64, i64),
) -> bool {
    expected.clone().count() == changes.len()
        && expected.into_iter().all(|(item, value)| {
            let mut named = changes.iter().filter(|change| change.item == item);
            matches!((named.next(), named.next()), (Some(change), None) if deltas_of(change) == delta(value))
        })
}

#[allow(clippy::too_many_arguments)]
fn install_reservation(
    shard: &mut ReservationShard,
    tenant: TenantId,
    id: IdText,
    fingerprint: u64,
    reply: &Reply,
    state: ReservationState,
    deadline_ms: u64,
    lines: &[ReservedLine],
    now_ms: u64,
    lsn: Lsn,
) {
    assert_eq!(state.is_open(), !lines.is_empty(), "open reservations have lines, refused ones none");
    let reservation = HeldReservation::new(Reservation {
        fingerprint,
        reply: reply.clone(),
        state,
        deadline_ms,
        lines: lines
            .iter()
            .map(|line| ReservationLineState {
                item: line.item,
                requested: line.requested,
                reserved: line.reserved,
                committed: 0,
                released: 0,
            })
            .collect(),
        closed_ms: (!state.is_open()).then_some(now_ms),
    })
    .expect("a reserve's reply sets neither on_hand nor count");
    let previous = shard.insert(tenant, id.clone(), reservation);
    assert!(previous.is_none(), "reservation installed twice");
    if state.is_open() {
        shard.opened(deadline_ms, tenant, id);
    } else {
        shard.push_closed(now_ms, lsn, tenant, id);
    }
}

fn changes_of(items: &[ItemId], guards: &[ItemGuard<'_>]) -> Vec<ItemChange> {
    // Sized for every item: a filtered `collect` starts at 4 (288 bytes for one change).
    let mut changes = Vec::with_capacity(items.len());
    changes.extend(items.iter().zip(guards).filter(|(_, guard)| guard.counters != guard.original()).map(
        |(item, guard)| ItemChange {
            item: *item,
            on_hand_delta: guard.counters.on_hand - guard.original().on_hand,
            reserved_delta: guard.counters.reserved - guard.original().reserved,
            after: guard.counters,
        },
    ));
    changes
}

fn check_correction(next: &Counters) -> Result<(), ResultCode> {
    if next.on_hand < 0 {
        return Err(ResultCode::NegativeStock);
    }
    if next.on_hand > STOCK_MAX || next.inflow_total.abs() > STOCK_MAX * 4 {
        return Err(ResultCode::QuantityOverflow);
    }
    if next.reserved > next.on_hand + next.backorder_limit {
        return Err(ResultCode::StockReserved);
    }
    Ok(())
}

fn row_invalid(row: &ImportRow) -> Option<ResultCode> {
    if row.on_hand < 0 || row.safety_stock.is_some_and(|v| v < 0) || row.backorder_limit.is_some_and(|v| v < 0) {
        return Some(ResultCode::NegativeStock);
    }
    if row.on_hand > STOCK_MAX
        || row.safety_stock.is_some_and(|v| v > POLICY_MAX)
        || row.backorder_limit.is_some_and(|v| v > POLICY_MAX)
    {
        return Some(ResultCode::QuantityOverflow);
    }
    None
}

fn validate_stock(command: &Command) -> Option<ResultCode> {
    match command {
        Command::Adjust { delta, .. } => {
            if *delta == 0 {
                Some(ResultCode::QuantityNotPositive)
            } else if delta.unsigned_abs() > QUANTITY_MAX as u64 {
                Some(ResultCode::QuantityTooLarge)
            } else {
                None
            }
        }
        Command::SetOnHand { on_hand, expected, .. } => {
            if *on_hand < 0 || expected.is_some_and(|e| e < 0) {
                Some(ResultCode::NegativeStock)
            } else if *on_hand > STOCK_MAX {
                Some(ResultCode::QuantityOverflow)
            } else {
                None
            }
        }
        Command::Move { from, to, .. } if from == to => Some(ResultCode::SameLocation),
        Command::SetPolicy { safety_stock, backorder_limit, .. } => {
            if *safety_stock < 0 || *backorder_limit < 0 {
                Some(ResultCode::NegativeStock)
            } else if *safety_stock > POLICY_MAX || *backorder_limit > POLICY_MAX {
                Some(ResultCode::QuantityOverflow)
            } else {
                None
            }
        }
        Command::Import { rows, .. } => {
            if rows.is_empty() {
                Some(ResultCode::EmptyLines)
            } else if rows.len() > IMPORT_ROWS_MAX {
                Some(ResultCode::TooManyRows)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The single- or two-item stock commands. `Ok(on_hand after)` or `Err((code, on_hand seen))`.
fn decide_single(
    command: &Command,
    targets: &[Result<ItemId, ResultCode>],
    guards: &mut [ItemGuard<'_>],
    position: &dyn Fn(ItemId) -> usize,
) -> Result<i64, (ResultCode, i64)> {
    let first = match targets[0] {
        Ok(item) => position(item),
        Err(code) => return Err((code, 0)),
    };
    let seen = guards[first].counters.on_hand;
    let mut next = guards[first].counters;
    match command {
        Command::Receive { quantity, .. } => {
            next.on_hand += quantity.get();
            next.inflow_total += quantity.get();
        }
        Command::Adjust { delta, .. } => {
            next.on_hand += delta;
            next.inflow_total += delta;
        }
        Command::SetOnHand { expected, on_hand, .. } => {
            if expected.is_some_and(|expected| expected != next.on_hand) {
                return Err((ResultCode::ExpectedMismatch, seen));
            }
            next.inflow_total += on_hand - next.on_hand;
            next.on_hand = *on_hand;
        }
        Command::SetPolicy { safety_stock, backorder_limit, .. } => {
            next.safety_stock = *safety_stock;
            if next.reserved > next.on_hand + backorder_limit {
                return Err((ResultCode::PolicyConflict, seen));
            }
            next.backorder_limit = *backorder_limit;
        }
        Command::Move { quantity, .. } => {
            let second = match targets[1] {
                Ok(item) => position(item),
                Err(code) => return Err((code, seen)),
            };
            next.on_hand -= quantity.get();
            next.inflow_total -= quantity.get();
            check_correction(&next).map_err(|code| (code, seen))?;
            let mut destination = guards[second].counters;
            destination.on_hand += quantity.get();
            destination.inflow_total += quantity.get();
            check_correction(&destination).map_err(|code| (code, seen))?;
            guards[first].counters = next;
            guards[second].counters = destination;
            return Ok(next.on_hand);
        }
        _ => unreachable!("not a single-item stock command"),
    }
    check_correction(&next).map_err(|code| (code, seen))?;
    guards[first].counters = next;
    Ok(next.on_hand)
}

/// Whether a replayed operation's reply fits the memory's [`StoredReply`] (it sets at most one
/// value); a record whose reply does not is refused, never cut.
fn memo_fits(memo: &OperationMemo, lsn: Lsn) -> Result<(), EngineError> {
    if StoredReply::holds(&memo.reply) {
        Ok(())
    } else {
        Err(EngineError::ReplayMismatch {
            lsn: lsn.0,
            what: format!("operation {}: its reply sets more than one value", memo.operation),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (review, eleventh session): every `expire` began with id shard 0, so one
    /// tenant's backlog due there took each call's whole limit, and a reservation due in a
    /// later shard stayed reserved (its stock unavailable) until the backlog was gone. Calls
    /// now go round the shards: here, with a limit of one, the other tenant's reservation in
    /// the last shard expires by the second call, not after the 40 in shard 0.
    #[test]
    fn expiry_goes_round_the_id_shards_so_one_backlog_does_not_hold_back_the_rest() {
        let engine = Engine::new(Config { id_shards: 4, ..Config::default() });
        let mut records = Vec::new();
        let name = |text: &str| Name::new(text).unwrap();
        let mut tenants = Vec::new();
        for tenant in ["flood", "other"] {
            let reply = engine.execute(&Command::CreateTenant { name: name(tenant) }, 1_000, &mut records);
            assert_eq!(reply.code, ResultCode::Ok);
            let tenant = engine.tenant_id(tenant).unwrap();
            let receive = Command::Receive {
                tenant,
                operation: OperationId::new("stock").unwrap(),
                sku: Sku::new("SKU").unwrap(),
                location: Location::new("DC").unwrap(),
                quantity: crate::types::Quantity::new(1_000).unwrap(),
            };
            assert_eq!(engine.execute(&receive, 1_000, &mut records).code, ResultCode::Ok);
            tenants.push(tenant);
        }
        let (flood, other) = (tenants[0], tenants[1]);
        let ids = |tenant: TenantId, shard: usize, count: usize| -> Vec<String> {
            (0..)
                .map(|n| format!("r{n}"))
                .filter(|id| engine.reservations.index(tenant, id) == shard)
                .take(count)
                .collect()
        };
        let reserve = |tenant: TenantId, id: &str| Command::Reserve {
            tenant,
            reservation: ReservationId::new(id).unwrap(),
            lines: vec![Line {
                sku: Sku::new("SKU").unwrap(),
                location: Location::new("DC").unwrap(),
                quantity: crate::types::Quantity::new(1).unwrap(),
            }],
            ttl_ms: TTL_MS_MIN,
            allow_partial: false,
        };
        for id in ids(flood, 0, 40) {
            assert_eq!(engine.execute(&reserve(flood, &id), 2_000, &mut records).code, ResultCode::Ok);
        }
        let last = ids(other, 3, 1).remove(0);
        assert_eq!(engine.execute(&reserve(other, &last), 2_000, &mut records).code, ResultCode::Ok);

        let due_ms = 2_000 + TTL_MS_MIN;
        for _ in 0..2 {
            let reply = engine.execute(&Command::Expire { limit: 1 }, due_ms, &mut records);
            assert_eq!(reply.count, 1);
        }
        let view = engine.reservation(other, &last).unwrap();
        assert_eq!(view.state, ReservationState::Expired, "the other tenant's due reservation waited its turn");
        assert!(engine.verify().violations.is_empty());
    }

    /// Regression (review, eleventh session): every reservation counted as one entry of the
    /// idempotency memory, whatever its lines, though one of 64 lines holds ten times the
    /// bytes the limit was sized for: a tenant reserving 64 lines of one unit each could hold
    /// ~60 GB before `memory_full`. A reservation now counts `1 + lines / 6` entries.
    #[test]
    fn a_reservation_counts_against_the_idempotency_memory_by_its_lines() {
        let accepted_within = |entries_max: usize, lines_per_reservation: usize| -> (usize, IdempotencyUsage) {
            let engine = Engine::new(Config { id_shards: 1, ..Config::default() });
            engine.set_idempotency_entries_max(entries_max);
            let mut records = Vec::new();
            let name = Name::new("acme").unwrap();
            assert_eq!(engine.execute(&Command::CreateTenant { name }, 1_000, &mut records).code, ResultCode::Ok);
            let tenant = engine.tenant_id("acme").unwrap();
            let receive = Command::Receive {
                tenant,
                operation: OperationId::new("stock").unwrap(),
                sku: Sku::new("SKU").unwrap(),
                location: Location::new("DC").unwrap(),
                quantity: crate::types::Quantity::new(1_000_000).unwrap(),
            };
            assert_eq!(engine.execute(&receive, 1_000, &mut records).code, ResultCode::Ok);
            let line = Line {
                sku: Sku::new("SKU").unwrap(),
                location: Location::new("DC").unwrap(),
                quantity: crate::types::Quantity::new(1).unwrap(),
            };
            let mut accepted = 0;
            for number in 0..200 {
                let reserve = Command::Reserve {
                    tenant,
                    reservation: ReservationId::new(&format!("r{number}")).unwrap(),
                    lines: vec![line.clone(); lines_per_reservation],
                    ttl_ms: TTL_MS_MAX,
                    allow_partial: false,
                };
                match engine.execute(&reserve, 2_000, &mut records).code {
                    ResultCode::Ok => accepted += 1,
                    ResultCode::MemoryFull => break,
                    other => panic!("{other:?}"),
                }
            }
            assert!(engine.verify().violations.is_empty());
            (accepted, engine.idempotency_usage())
        };
        let accepted = |lines_per_reservation: usize| accepted_within(100, lines_per_reservation);
        // One line: one entry each. A tenant alone in its shard stops at 95 of 100.
        let (one_line, usage) = accepted(1);
        assert_eq!((one_line, usage.reservations), (95, 95));
        // 64 lines: 11 entries each, so 8 of them (88 entries; a ninth would pass 95).
        let (many_lines, usage) = accepted(LINES_PER_RESERVATION_MAX);
        assert_eq!((many_lines, usage.reservations), (8, 88));
        assert_eq!(crate::memory::reservation_weight(LINES_PER_RESERVATION_MAX), 11);
        assert_eq!(usage.fullest_shard, 88);
        // A share smaller than one heavy reservation still takes one, in an empty shard
        // (review: else no reservation of 64 lines could ever be made under a small limit).
        let (heavy_in_small, usage) = accepted_within(5, LINES_PER_RESERVATION_MAX);
        assert_eq!((heavy_in_small, usage.reservations), (1, 11));
    }
    fn import(engine: &Engine, tenant: TenantId, operation: &str, rows: &[(&str, String)]) -> Reply {
        let rows = rows
            .iter()
            .map(|(sku, location)| ImportRow {
                sku: Sku::new(sku).unwrap(),
                location: Location::new(location).unwrap(),
                on_hand: 1,
                safety_stock: None,
                backorder_limit: None,
            })
            .collect();
        let command = Command::Import { tenant, operation: OperationId::new(operation).unwrap(), rows };
        let mut records = Vec::new();
        let reply = engine.execute(&command, 1_000, &mut records);
        RECORDS.with(|all| all.borrow_mut().extend(records));
        reply
    }

    thread_local! {
        static RECORDS: std::cell::RefCell<Vec<Record>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Regression (review, eleventh session): nothing bounded the items of a tenant, so one
    /// tenant's flood of new items (an import is a rate unit a row) could fill the process's
    /// memory, or, aimed at one shard, its 4 GiB name space, for every tenant. Past
    /// `set_items_per_tenant_max` a new item is refused `capacity_exceeded`, its tenant's other
    /// rows and every other tenant unaffected; replay and a restore count the same items.
    #[test]
    fn a_tenant_past_its_items_max_gets_capacity_exceeded_and_the_others_do_not() {
        RECORDS.with(|all| all.borrow_mut().clear());
        let engine = Engine::new(Config::default());
        engine.set_items_per_tenant_max(3);
        let mut records = Vec::new();
        for name in ["flood", "other"] {
            let reply = engine.execute(&Command::CreateTenant { name: Name::new(name).unwrap() }, 1_000, &mut records);
            assert_eq!(reply.code, ResultCode::Ok);
        }
        RECORDS.with(|all| all.borrow_mut().extend(records));
        let (flood, other) = (engine.tenant_id("flood").unwrap(), engine.tenant_id("other").unwrap());
        let rows: Vec<(&str, String)> = (0..5).map(|n| ("SKU", format!("L{n}"))).collect();
        let reply = import(&engine, flood, "i1", &rows);
        let codes: Vec<ResultCode> = reply.lines.iter().map(|line| line.code).collect();
        use ResultCode::{CapacityExceeded, Ok as Fine};
        assert_eq!(codes, vec![Fine, Fine, Fine, CapacityExceeded, CapacityExceeded]);
        // Its existing items still take changes; the other tenant creates its own.
        assert_eq!(import(&engine, flood, "i2", &rows[..2]).code, Fine);
        assert_eq!(import(&engine, other, "i3", &rows[..3]).code, Fine);
        assert_eq!(engine.catalog.tenants.read().items_of(flood), 3);
        assert!(engine.verify().violations.is_empty());

        let replayed = Engine::new(Config::default());
        for record in RECORDS.with(|all| all.borrow().clone()) {
            replayed.apply(&record).unwrap();
        }
        assert!(replayed.verify().violations.is_empty(), "replay counts the items it creates");
        let restored = Engine::restore(&engine.export()).unwrap();
        assert!(restored.verify().violations.is_empty(), "a restore counts the items it loads");
        assert_eq!(restored.catalog.tenants.read().items_of(other), 3);
        restored.set_items_per_tenant_max(3);
        assert_eq!(import(&restored, flood, "i4", &[("NEW", "L0".into())]).code, CapacityExceeded);
    }

    /// Regression (review, eleventh session): a SKU's locations were unbounded, and every one
    /// of them is in the SKU's shard: one SKU could take that shard's name space (every other
    /// tenant's new items there refused) and a `get_sku` walked millions under its lock. A SKU
    /// has at most `LOCATIONS_PER_SKU_MAX` locations.
    #[test]
    fn a_sku_past_its_locations_max_gets_capacity_exceeded() {
        let engine = Engine::new(Config::default());
        let mut records = Vec::new();
        let name = Name::new("acme").unwrap();
        assert_eq!(engine.execute(&Command::CreateTenant { name }, 1_000, &mut records).code, ResultCode::Ok);
        let tenant = engine.tenant_id("acme").unwrap();
        for part in 0..LOCATIONS_PER_SKU_MAX / IMPORT_ROWS_MAX {
            let rows: Vec<(&str, String)> =
                (0..IMPORT_ROWS_MAX).map(|n| ("SKU", format!("L{}", part * IMPORT_ROWS_MAX + n))).collect();
            assert_eq!(import(&engine, tenant, &format!("part{part}"), &rows).code, ResultCode::Ok);
        }
        let past = import(&engine, tenant, "past", &[("SKU", "ONE-MORE".into()), ("OTHER-SKU", "L0".into())]);
        let codes: Vec<ResultCode> = past.lines.iter().map(|line| line.code).collect();
        assert_eq!(codes, vec![ResultCode::CapacityExceeded, ResultCode::Ok]);
        assert_eq!(engine.catalog.tenants.read().items_of(tenant) as usize, LOCATIONS_PER_SKU_MAX + 1);
    }
}
