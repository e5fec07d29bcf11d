//! The whole engine state as plain data, for snapshots: [`Engine::export`] and
//! [`Engine::restore`]. Restoring puts every item back at its `ItemId` (so later records still
//! name the right items), every reservation and remembered operation back in its retention
//! order, and checks every invariant on the way in: a snapshot that does not hold is refused,
//! never served.

use crate::catalog::sku_hash;
use crate::engine::{Config, Engine};
use crate::item::Counters;
use crate::memory::{HeldReservation, IdText, Key, OperationEntry, Reservation, StoredReply};
use crate::sync::Ordering;
use crate::types::{ItemId, Lsn, TenantId, NAME_BYTES_MAX};
use crate::EngineError;

/// Everything an engine holds, as of `next_lsn - 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub config: Config,
    /// The LSN the next record will get: the snapshot covers everything before it.
    pub next_lsn: Lsn,
    /// Tenant names by id.
    pub tenants: Vec<String>,
    /// Item shards, by shard number.
    pub shards: Vec<SavedShard>,
    /// Every remembered reservation: the closed ones in the order they closed (their retention
    /// order, by closing LSN), then the open ones by (deadline, tenant, id). No id shard shows
    /// in the order: each engine places ids under its own random key.
    pub reservations: Vec<SavedReservation>,
    /// Every remembered operation, in the order remembered (by LSN).
    pub operations: Vec<SavedOperation>,
    /// The epochs after the first with the LSN that began each ([`Engine::epoch_history`]).
    pub epochs: Vec<(u64, Lsn)>,
}

/// One item shard: items in index order; their names back to back in `names`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedShard {
    pub items: Vec<SavedItem>,
    pub names: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedItem {
    pub tenant: TenantId,
    /// The SKU's bytes come first in the shard's `names`, then the location's.
    pub sku_bytes: u8,
    pub location_bytes: u8,
    pub counters: Counters,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedReservation {
    pub tenant: TenantId,
    pub id: String,
    pub reservation: Reservation,
    /// For a closed reservation: the LSN of the record that closed it (retention forgets by
    /// time and LSN).
    pub closed_lsn: Option<Lsn>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedOperation {
    pub tenant: TenantId,
    pub id: String,
    pub entry: OperationEntry,
}

fn refuse(what: String) -> EngineError {
    EngineError::BadState { what }
}

impl Engine {
    /// A copy of the whole state. Consistent only while nothing else changes the engine
    /// (snapshots are taken from an engine that only the snapshotter touches).
    pub fn export(&self) -> State {
        let tenants = self.catalog.tenants.read().iter().map(|(_, name)| name.to_owned()).collect();
        let shards = self
            .catalog
            .shards
            .iter()
            .map(|shard| {
                let shard = shard.items.read();
                let mut saved = SavedShard { items: Vec::with_capacity(shard.len()), names: Vec::new() };
                for index in 0..shard.len() as u32 {
                    let (sku, location) = (shard.sku(index), shard.location(index));
                    saved.names.extend_from_slice(sku.as_bytes());
                    saved.names.extend_from_slice(location.as_bytes());
                    saved.items.push(SavedItem {
                        tenant: shard.key(index).tenant,
                        sku_bytes: sku.len() as u8,
                        location_bytes: location.len() as u8,
                        counters: shard.cell(index).read(),
                    });
                }
                saved
            })
            .collect();
        let mut reservations = Vec::new();
        let mut open_reservations = Vec::new();
        for shard in self.reservations.all() {
            let shard = shard.lock();
            for entry in &shard.closed {
                let reservation =
                    shard.map.get(&Key(entry.tenant, entry.id.clone())).expect("closed entry has a reservation");
                reservations.push(SavedReservation {
                    tenant: entry.tenant,
                    id: entry.id.to_string(),
                    reservation: reservation.plain(),
                    closed_lsn: Some(entry.lsn),
                });
            }
            let open = shard.open_by_deadline();
            assert_eq!(open.len(), shard.open_count(), "every open reservation has its deadline entry");
            for (deadline_ms, tenant, id) in open {
                let reservation = shard.map.get(&Key(tenant, id.clone())).expect("deadline entry has a reservation");
                open_reservations.push((
                    deadline_ms,
                    SavedReservation { tenant, id: id.to_string(), reservation: reservation.plain(), closed_lsn: None },
                ));
            }
            assert_eq!(shard.closed.len() + shard.open_count(), shard.map.len(), "every reservation is indexed once");
        }
        // The same order whatever shard each id sits in (see `State::reservations`): closing
        // LSNs are unique, and so are (tenant, id).
        reservations.sort_unstable_by_key(|saved| saved.closed_lsn);
        open_reservations.sort_unstable_by(|(a_deadline, a), (b_deadline, b)| {
            (a_deadline, a.tenant, &a.id).cmp(&(b_deadline, b.tenant, &b.id))
        });
        reservations.extend(open_reservations.into_iter().map(|(_, saved)| saved));
        let mut operations = Vec::new();
        for shard in self.operations.all() {
            let shard = shard.lock();
            for (tenant, id, entry) in shard.entries() {
                operations.push(SavedOperation { tenant, id: id.to_string(), entry });
            }
        }
        operations.sort_unstable_by_key(|saved| saved.entry.lsn);
        State {
            config: self.config.clone(),
            next_lsn: self.next_lsn(),
            tenants,
            shards,
            reservations,
            operations,
            epochs: self.epoch_history(),
        }
    }

    /// Rebuilds an engine from `state`, checking it as it goes: names, item placement, the
    /// ledger invariant of every item, reservations against the items' reserved counts
    /// (`verify`). Any inconsistency is an error, not a panic.
    pub fn restore(state: &State) -> Result<Engine, EngineError> {
        Engine::restore_on_threads(state, 1)
    }

    /// [`Engine::restore`], restoring item shards on `threads` threads.
    pub fn restore_on_threads(state: &State, threads: usize) -> Result<Engine, EngineError> {
        let config = &state.config;
        // Regression (review): a count past SHARDS_MAX reached `Engine::new`'s assertion.
        if !config.shards.is_power_of_two()
            || config.shards > crate::types::SHARDS_MAX
            || state.shards.len() != config.shards
        {
            return Err(refuse(format!("{} item shards for a config of {}", state.shards.len(), config.shards)));
        }
        if !config.id_shards.is_power_of_two() || config.id_shards > crate::types::SHARDS_MAX {
            return Err(refuse(format!("bad id shard count {}", config.id_shards)));
        }
        if state.next_lsn.0 == 0 {
            return Err(refuse("next LSN 0".into()));
        }
        let engine = Engine::new(config.clone());
        engine.next_lsn.store(state.next_lsn.0, Ordering::Release);
        let ascending = state.epochs.windows(2).all(|pair| pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1);
        if !ascending
            || state.epochs.len() > crate::engine::EPOCHS_MAX
            || state.epochs.iter().any(|&(epoch, lsn)| {
                epoch <= crate::engine::EPOCH_FIRST || epoch > crate::epoch::EPOCH_MAX || lsn >= state.next_lsn
            })
        {
            return Err(refuse("epoch history out of order or past the state's LSN".into()));
        }
        *engine.epochs.write() = state.epochs.clone();
        {
            let mut tenants = engine.catalog.tenants.write();
            for name in &state.tenants {
                if crate::types::validate_name(name).is_err() || tenants.get(name).is_some() {
                    return Err(refuse(format!("bad or repeated tenant name {name:?}")));
                }
                tenants.insert(name).ok_or_else(|| refuse("too many tenants".into()))?;
            }
        }
        let tenant_count = state.tenants.len() as u32;
        // Item shards are independent: restored on `threads` threads, each taking every
        // `threads`-th shard (the engine does no I/O; the caller picks the parallelism).
        let threads = threads.clamp(1, state.shards.len());
        let outcomes: Vec<Result<(), EngineError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|first| {
                    let engine = &engine;
                    scope.spawn(move || {
                        for shard_number in (first..state.shards.len()).step_by(threads) {
                            restore_items(engine, shard_number, &state.shards[shard_number], tenant_count)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().map(|worker| worker.join().expect("a restore thread panicked")).collect()
        });
        outcomes.into_iter().collect::<Result<(), EngineError>>()?;
        let item_exists = |item: ItemId| {
            (item.shard as usize) < state.shards.len()
                && (item.index as usize) < state.shards[item.shard as usize].items.len()
        };
        // Closed ones in closing order, whatever order the state lists them in (snapshots from
        // before ids were placed under a random key list them shard by shard): each shard's
        // retention queue must come out in LSN order.
        let mut reservation_order: Vec<&SavedReservation> = state.reservations.iter().collect();
        reservation_order.sort_by_key(|saved| (saved.closed_lsn.is_none(), saved.closed_lsn));
        for saved in reservation_order {
            let reservation = &saved.reservation;
            if saved.tenant.0 >= tenant_count || crate::types::validate_name(&saved.id).is_err() {
                return Err(refuse(format!("reservation {:?}: bad tenant or id", saved.id)));
            }
            if reservation.lines.iter().any(|line| !item_exists(line.item) || !line_holds(line)) {
                return Err(refuse(format!("reservation {}: bad line", saved.id)));
            }
            if reservation.state.is_open() == saved.closed_lsn.is_some()
                || reservation.state.is_open() == reservation.closed_ms.is_some()
            {
                return Err(refuse(format!("reservation {}: open/closed fields disagree", saved.id)));
            }
            let Some(held) = HeldReservation::new(reservation.clone()) else {
                return Err(refuse(format!(
                    "reservation {}: its reply is not a reserve's, or it closed at u64::MAX ms",
                    saved.id
                )));
            };
            let mut shard = engine.reservations.shard(saved.tenant, &saved.id).lock();
            let id = IdText::new(&saved.id);
            if shard.insert(saved.tenant, id.clone(), held).is_some() {
                return Err(refuse(format!("reservation {} appears twice", saved.id)));
            }
            match (saved.closed_lsn, reservation.closed_ms) {
                (Some(lsn), Some(closed_ms)) => {
                    if shard.closed.back().is_some_and(|last| last.lsn >= lsn) {
                        return Err(refuse(format!("reservation {}: out of retention order", saved.id)));
                    }
                    shard.push_closed(closed_ms, lsn, saved.tenant, id);
                }
                _ => {
                    shard.opened(reservation.deadline_ms, saved.tenant, id);
                }
            }
        }
        let mut operation_order: Vec<&SavedOperation> = state.operations.iter().collect();
        operation_order.sort_by_key(|saved| saved.entry.lsn);
        for saved in operation_order {
            if saved.tenant.0 >= tenant_count || crate::types::validate_name(&saved.id).is_err() {
                return Err(refuse(format!("operation {:?}: bad tenant or id", saved.id)));
            }
            let mut shard = engine.operations.shard(saved.tenant, &saved.id).lock();
            if shard.map.get(&crate::memory::KeyRef(saved.tenant, &saved.id)).is_some()
                || shard.order.back().is_some_and(|last| last.1 >= saved.entry.lsn)
            {
                return Err(refuse(format!("operation {} repeated or out of order", saved.id)));
            }
            let entry = &saved.entry;
            if !StoredReply::holds(&entry.reply) {
                return Err(refuse(format!("operation {}: its reply sets more than one value", saved.id)));
            }
            shard.remember(saved.tenant, &saved.id, entry.fingerprint, entry.reply.clone(), entry.at_ms, entry.lsn);
        }
        let report = engine.verify();
        if !report.violations.is_empty() {
            return Err(refuse(format!("the restored state does not verify: {}", report.violations.join("; "))));
        }
        Ok(engine)
    }
}

/// Restores one item shard of a snapshot into `engine` (its placement, names and ledger
/// checked item by item).
fn restore_items(
    engine: &Engine,
    shard_number: usize,
    saved: &SavedShard,
    tenant_count: u32,
) -> Result<(), EngineError> {
    let mut shard = engine.catalog.shards[shard_number].items.write();
    assert_eq!(shard.len(), 0, "a shard is restored once, into a new engine");
    shard.reserve(saved.items.len(), saved.names.len());
    // Counted per tenant here and added once at the end: the restore threads would contend
    // on the counters item by item.
    let mut items_by_tenant: hashbrown::HashMap<TenantId, u32> = hashbrown::HashMap::new();
    let mut at = 0usize;
    for (index, item) in saved.items.iter().enumerate() {
        let location_end = at + item.sku_bytes as usize + item.location_bytes as usize;
        let names = saved.names.get(at..location_end).ok_or_else(|| refuse("item names run out".into()))?;
        let (sku, location) = names.split_at(item.sku_bytes as usize);
        let (sku, location) = match (std::str::from_utf8(sku), std::str::from_utf8(location)) {
            (Ok(sku), Ok(location)) => (sku, location),
            _ => return Err(refuse(format!("item {shard_number}/{index}: names are not UTF-8"))),
        };
        if item.tenant.0 >= tenant_count
            || sku.is_empty()
            || location.is_empty()
            || sku.len() > NAME_BYTES_MAX
            || location.len() > NAME_BYTES_MAX
        {
            return Err(refuse(format!("item {shard_number}/{index}: bad tenant or names")));
        }
        let hash = sku_hash(item.tenant, sku);
        if engine.catalog.shard_of(hash) as usize != shard_number {
            return Err(refuse(format!("item {sku}@{location} is misplaced")));
        }
        if !item.counters.holds() {
            return Err(refuse(format!("item {sku}@{location} breaks the ledger: {:?}", item.counters)));
        }
        let placed = shard
            .insert_if_absent(item.tenant, sku, location)
            .ok_or_else(|| refuse("shard full".into()))?
            .map_err(|_| refuse(format!("item {sku}@{location} is repeated")))?;
        assert_eq!(placed as usize, index, "items are appended in index order");
        *items_by_tenant.entry(item.tenant).or_insert(0) += 1;
        shard.cell(placed).latch().counters = item.counters;
        at = location_end;
    }
    if at != saved.names.len() {
        return Err(refuse(format!("shard {shard_number}: {} unused name bytes", saved.names.len() - at)));
    }
    let tenants = engine.catalog.tenants.read();
    for (tenant, count) in items_by_tenant {
        tenants.add_items(tenant, count);
    }
    Ok(())
}

/// A restored reservation line is one `execute` could have made: it requested 1 to
/// `QUANTITY_MAX` units, reserved at most that, and settled at most what it reserved, in
/// amounts of zero or more. Regression (review): only `committed + released <= reserved` was
/// checked, unchecked, so lines of 2^62 units wrapped the sums `verify` makes and passed it.
fn line_holds(line: &crate::memory::ReservationLineState) -> bool {
    (1..=crate::types::QUANTITY_MAX).contains(&line.requested)
        && (0..=line.requested).contains(&line.reserved)
        && (0..=line.reserved).contains(&line.committed)
        && (0..=line.reserved - line.committed).contains(&line.released)
}
