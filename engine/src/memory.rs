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

/// Bytes an id keeps inline, without an allocation (the ids clients use are mostly shorter).
pub const ID_INLINE_BYTES_MAX: usize = 22;

/// A reservation or operation id as the engine keeps it: inline when it is at most
/// [`ID_INLINE_BYTES_MAX`] bytes, else one shared allocation. Inline ids cost no allocation and
/// compare without following a pointer (the id tables are large, so a pointer is a cache miss).
/// Hashes, compares and orders exactly as the `str` it holds.
#[derive(Clone)]
pub enum IdText {
    Inline { length: u8, bytes: [u8; ID_INLINE_BYTES_MAX] },
    Shared(Arc<str>),
}

impl IdText {
    pub fn new(id: &str) -> IdText {
        if id.len() <= ID_INLINE_BYTES_MAX {
            let mut bytes = [0u8; ID_INLINE_BYTES_MAX];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            IdText::Inline { length: id.len() as u8, bytes }
        } else {
            IdText::Shared(id.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            IdText::Inline { length, bytes } => {
                debug_assert!(*length as usize <= ID_INLINE_BYTES_MAX);
                // Built from a `&str` in `new`, so the bytes are UTF-8.
                std::str::from_utf8(&bytes[..*length as usize]).expect("inline id is UTF-8")
            }
            IdText::Shared(text) => text,
        }
    }
}

impl IdText {
    /// The id's bytes, without the UTF-8 check of [`IdText::as_str`]: comparisons and hashing
    /// (the hot path) use these.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            IdText::Inline { length, bytes } => &bytes[..*length as usize],
            IdText::Shared(text) => text.as_bytes(),
        }
    }
}

/// How a tenant's id is hashed, by [`KeyRef`] and [`Key`] alike (they must agree).
fn hash_id<H: Hasher>(tenant: TenantId, id: &[u8], state: &mut H) {
    tenant.hash(state);
    state.write(id);
    state.write_u8(0xff);
}

impl std::ops::Deref for IdText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for IdText {
    fn eq(&self, other: &IdText) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for IdText {}

impl PartialOrd for IdText {
    fn partial_cmp(&self, other: &IdText) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for IdText {
    fn cmp(&self, other: &IdText) -> std::cmp::Ordering {
        // Byte order is `str` order.
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for IdText {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), formatter)
    }
}

impl std::fmt::Display for IdText {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl From<&str> for IdText {
    fn from(id: &str) -> IdText {
        IdText::new(id)
    }
}

/// A reservation or operation id within its tenant, as the map key, the deadline index and
/// the retention queue hold it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key(pub TenantId, pub IdText);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_id(self.0, self.1.as_bytes(), state);
    }
}

/// Looks a [`Key`] up without allocating. Hashes exactly as [`Key`] does.
pub struct KeyRef<'a>(pub TenantId, pub &'a str);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_id(self.0, self.1.as_bytes(), state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1.as_bytes() == key.1.as_bytes()
    }
}

pub fn key_hash(tenant: TenantId, id: &str) -> u64 {
    Fnv64::new().u64(u64::from(tenant.0)).str(id).finish()
}

#[derive(Default)]
pub struct ReservationShard {
    pub map: HashMap<Key, Reservation>,
    /// Open reservations by deadline.
    pub deadlines: BTreeSet<(u64, TenantId, IdText)>,
    /// Closed reservations in the order they closed (= LSN order), for retention.
    pub closed: VecDeque<(u64, Lsn, TenantId, IdText)>,
}

impl ReservationShard {
    pub fn close(&mut self, tenant: TenantId, id: &str, deadline_ms: u64, now_ms: u64, lsn: Lsn) {
        let key = self.key(tenant, id);
        let removed = self.deadlines.remove(&(deadline_ms, tenant, key.clone()));
        assert!(removed, "closing a reservation that had no deadline entry");
        self.closed.push_back((now_ms, lsn, tenant, key));
    }

    /// The shared id of a reservation this shard holds.
    pub fn key(&self, tenant: TenantId, id: &str) -> IdText {
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
            let removed = self.map.remove(&Key(tenant, id));
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
    pub order: VecDeque<(u64, Lsn, TenantId, IdText)>,
}

impl OperationShard {
    pub fn remember(&mut self, tenant: TenantId, id: &str, fingerprint: u64, reply: Reply, at_ms: u64, lsn: Lsn) {
        let id = IdText::new(id);
        let previous = self.map.insert(Key(tenant, id.clone()), OperationEntry { fingerprint, reply, at_ms, lsn });
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
            assert!(self.map.remove(&Key(tenant, id)).is_some(), "forgot an unknown operation");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(value: &impl Hash) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    #[test]
    fn an_id_text_is_its_str_inline_or_shared() {
        for length in [0, 1, ID_INLINE_BYTES_MAX - 1, ID_INLINE_BYTES_MAX, ID_INLINE_BYTES_MAX + 1, 64] {
            let id: String = "é".repeat(length / 2) + &"x".repeat(length % 2);
            let text = IdText::new(&id);
            assert_eq!(text.as_str(), id);
            assert_eq!(matches!(text, IdText::Inline { .. }), id.len() <= ID_INLINE_BYTES_MAX, "{length}");
            // The map finds a key by a `KeyRef` only if both hash alike.
            assert_eq!(hash_of(&Key(TenantId(3), text.clone())), hash_of(&KeyRef(TenantId(3), &id)));
            assert!(KeyRef(TenantId(3), &id).equivalent(&Key(TenantId(3), text.clone())));
            assert!(!KeyRef(TenantId(4), &id).equivalent(&Key(TenantId(3), text)));
        }
        assert!(IdText::new("a") < IdText::new("b") && IdText::new("ab") > IdText::new("a"));
        assert_eq!(std::mem::size_of::<IdText>(), 24, "an id costs 24 bytes in every table");
    }
}
