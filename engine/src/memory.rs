//! Reservations and the idempotency memory, sharded by id.
//!
//! Each shard is a `parking_lot::Mutex`: these are looked up by client-chosen id and touched
//! once per command, never across shards, so the locks are short and uncontended unless two
//! requests carry the same id (a retry racing its original, which must serialise anyway).

use std::collections::{BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};
use parking_lot::Mutex;

use crate::code::Reply;
use crate::record::ReservationState;
use crate::types::{Fnv64, ItemId, Lsn, TenantId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationLineState {
    pub item: ItemId,
    pub requested: i64,
    pub reserved: i64,
    pub committed: i64,
    pub released: i64,
}

impl ReservationLineState {
    pub fn open(&self) -> i64 {
        let open = self.reserved - self.committed - self.released;
        debug_assert!(open >= 0, "line over-settled: {self:?}");
        open
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub fingerprint: u64,
    /// The reserve's answer, returned again to a retry.
    pub reply: Reply,
    pub state: ReservationState,
    pub deadline_ms: u64,
    pub lines: Vec<ReservationLineState>,
    /// When it stopped being open (for retention), or `None` while open.
    pub closed_ms: Option<u64>,
}

impl Reservation {
    /// The state its lines imply, once no longer Refused or Expired.
    pub fn derived_state(&self, closing: Option<ReservationState>) -> ReservationState {
        let open: i64 = self.lines.iter().map(ReservationLineState::open).sum();
        let committed: i64 = self.lines.iter().map(|l| l.committed).sum();
        match (open > 0, committed > 0, closing) {
            (_, _, Some(ReservationState::Expired)) => ReservationState::Expired,
            (true, false, _) => ReservationState::Open,
            (true, true, _) => ReservationState::PartiallyCommitted,
            (false, true, _) => ReservationState::Committed,
            (false, false, _) => ReservationState::Released,
        }
    }
}

/// A reservation or operation id within its tenant. The id's one allocation is shared by the
/// map key, the deadline index and the retention queue.
pub type Key = (TenantId, Arc<str>);

/// Looks a [`Key`] up without allocating. Hashes exactly as the tuple does.
pub struct KeyRef<'a>(pub TenantId, pub &'a str);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1 == &*key.1
    }
}

pub fn key_hash(tenant: TenantId, id: &str) -> u64 {
    Fnv64::new().u64(u64::from(tenant.0)).str(id).finish()
}

#[derive(Default)]
pub struct ReservationShard {
    pub map: HashMap<Key, Reservation>,
    /// Open reservations by deadline.
    pub deadlines: BTreeSet<(u64, TenantId, Arc<str>)>,
    /// Closed reservations in the order they closed (= LSN order), for retention.
    pub closed: VecDeque<(u64, Lsn, TenantId, Arc<str>)>,
}

impl ReservationShard {
    pub fn close(&mut self, tenant: TenantId, id: &str, deadline_ms: u64, now_ms: u64, lsn: Lsn) {
        let key = self.key(tenant, id);
        let removed = self.deadlines.remove(&(deadline_ms, tenant, key.clone()));
        assert!(removed, "closing a reservation that had no deadline entry");
        self.closed.push_back((now_ms, lsn, tenant, key));
    }

    /// The shared id of a reservation this shard holds.
    pub fn key(&self, tenant: TenantId, id: &str) -> Arc<str> {
        self.map.get_key_value(&KeyRef(tenant, id)).expect("reservation present").0 .1.clone()
    }

    /// Forgets reservations closed before `before_ms` by records before `lsn`. The LSN bound
    /// makes replay forget exactly what the live engine forgot.
    pub fn forget(&mut self, before_ms: u64, lsn: Lsn) -> usize {
        let mut forgotten = 0;
        while let Some((closed_ms, closed_lsn, _, _)) = self.closed.front() {
            if *closed_ms >= before_ms || *closed_lsn >= lsn {
                break;
            }
            let (_, _, tenant, id) = self.closed.pop_front().expect("front exists");
            let removed = self.map.remove(&(tenant, id));
            assert!(removed.is_some_and(|r| !r.state.is_open()), "forgot an open reservation");
            forgotten += 1;
        }
        forgotten
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationEntry {
    pub fingerprint: u64,
    pub reply: Reply,
    pub at_ms: u64,
    pub lsn: Lsn,
}

#[derive(Default)]
pub struct OperationShard {
    pub map: HashMap<Key, OperationEntry>,
    /// In the order remembered (= LSN order), for retention.
    pub order: VecDeque<(u64, Lsn, TenantId, Arc<str>)>,
}

impl OperationShard {
    pub fn remember(&mut self, tenant: TenantId, id: &str, fingerprint: u64, reply: Reply, at_ms: u64, lsn: Lsn) {
        let id: Arc<str> = id.into();
        let previous = self.map.insert((tenant, id.clone()), OperationEntry { fingerprint, reply, at_ms, lsn });
        assert!(previous.is_none(), "operation id remembered twice");
        debug_assert!(self.order.back().is_none_or(|last| last.1 < lsn), "memory out of LSN order");
        self.order.push_back((at_ms, lsn, tenant, id));
    }

    pub fn forget(&mut self, before_ms: u64, lsn: Lsn) -> usize {
        let mut forgotten = 0;
        while let Some((at_ms, at_lsn, _, _)) = self.order.front() {
            if *at_ms >= before_ms || *at_lsn >= lsn {
                break;
            }
            let (_, _, tenant, id) = self.order.pop_front().expect("front exists");
            assert!(self.map.remove(&(tenant, id)).is_some(), "forgot an unknown operation");
            forgotten += 1;
        }
        forgotten
    }
}

pub struct Sharded<T> {
    shards: Box<[Mutex<T>]>,
    mask: u64,
}

impl<T: Default> Sharded<T> {
    pub fn new(count: usize) -> Sharded<T> {
        assert!(count.is_power_of_two());
        Sharded { shards: (0..count).map(|_| Mutex::new(T::default())).collect(), mask: count as u64 - 1 }
    }
    pub fn shard(&self, tenant: TenantId, id: &str) -> &Mutex<T> {
        &self.shards[(key_hash(tenant, id) & self.mask) as usize]
    }
    pub fn all(&self) -> &[Mutex<T>] {
        &self.shards
    }
}
