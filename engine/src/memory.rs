//! Reservations and the idempotency memory, sharded by id.
//!
//! Each shard is a `parking_lot::Mutex`: these are looked up by client-chosen id and touched
//! once per command, never across shards, so the locks are short and uncontended unless two
//! requests carry the same id (a retry racing its original, which must serialise anyway).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};
use parking_lot::Mutex;

use crate::code::{LineResult, LineResults, Reply, ResultCode};
use crate::record::ReservationState;
use crate::types::{ItemId, Lsn, TenantId};

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

/// A reservation as plain data: what snapshots, [`crate::Dump`] and views carry. The memory
/// holds it as a [`HeldReservation`].
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

/// `HeldReservation::closed_ms` of an open reservation.
const CLOSED_MS_OPEN: u64 = u64::MAX;

/// A reservation as the memory holds it: 72 bytes where the plain [`Reservation`] takes 112,
/// so a map slot is 104 bytes, not 144. The reserve's reply keeps what a reserve's reply sets
/// (code, lines, deadline; never `on_hand` or `count`), the closing time is `u64::MAX` while
/// open instead of an `Option`, and the lines are a boxed slice (they never grow). The memory
/// holds up to `idempotency_entries_max` of these (20 M at the default), and a W1 reserve adds
/// one, so every byte is paid ~20 M times in RAM and once per reserve in page faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldReservation {
    pub fingerprint: u64,
    reply_lines: PackedLines,
    reply_deadline_ms: u64,
    pub deadline_ms: u64,
    closed_ms: u64,
    pub lines: Box<[ReservationLineState]>,
    reply_code: ResultCode,
    pub state: ReservationState,
}

const _: () = assert!(std::mem::size_of::<HeldReservation>() == 72);

impl HeldReservation {
    /// Whether `reply` can be kept as a reserve's reply: one that sets neither `on_hand` nor
    /// `count` (every reserve's; a snapshot or record with another is refused).
    pub fn holds_reply(reply: &Reply) -> bool {
        reply.on_hand == 0 && reply.count == 0
    }

    /// `None` if `reservation` has a reply [`HeldReservation::holds_reply`] refuses, or closed
    /// at `u64::MAX` ms.
    pub fn new(reservation: Reservation) -> Option<HeldReservation> {
        let Reservation { fingerprint, reply, state, deadline_ms, lines, closed_ms } = reservation;
        if !Self::holds_reply(&reply) || closed_ms == Some(CLOSED_MS_OPEN) {
            return None;
        }
        let held = HeldReservation {
            fingerprint,
            reply_lines: PackedLines::new(&reply.lines),
            reply_deadline_ms: reply.deadline_ms,
            deadline_ms,
            closed_ms: closed_ms.unwrap_or(CLOSED_MS_OPEN),
            lines: lines.into_boxed_slice(),
            reply_code: reply.code,
            state,
        };
        debug_assert_eq!(held.closed_ms(), closed_ms);
        debug_assert_eq!(held.reply().code, reply.code);
        Some(held)
    }

    /// The plain form, equal to the one it was made from.
    pub fn plain(&self) -> Reservation {
        Reservation {
            fingerprint: self.fingerprint,
            reply: self.reply(),
            state: self.state,
            deadline_ms: self.deadline_ms,
            lines: self.lines.to_vec(),
            closed_ms: self.closed_ms(),
        }
    }

    /// The reserve's answer, returned again to a retry.
    pub fn reply(&self) -> Reply {
        Reply {
            code: self.reply_code,
            lines: self.reply_lines.unpack(),
            deadline_ms: self.reply_deadline_ms,
            on_hand: 0,
            count: 0,
        }
    }

    /// When it stopped being open (for retention), or `None` while open.
    pub fn closed_ms(&self) -> Option<u64> {
        (self.closed_ms != CLOSED_MS_OPEN).then_some(self.closed_ms)
    }

    /// Records when it stopped being open; once.
    pub fn close(&mut self, now_ms: u64) {
        assert_eq!(self.closed_ms, CLOSED_MS_OPEN, "a reservation closed twice");
        assert_ne!(now_ms, CLOSED_MS_OPEN, "a closing time of u64::MAX ms");
        self.closed_ms = now_ms;
    }

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

/// A reply as the idempotency memory keeps it for a retry: 32 bytes where a [`Reply`] takes
/// 48, since a reply sets at most one of `deadline_ms`, `on_hand` and `count`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReply {
    lines: PackedLines,
    value: u64,
    code: ResultCode,
    field: ReplyField,
}

/// Which field of a [`Reply`] a [`StoredReply`]'s value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplyField {
    None,
    DeadlineMs,
    OnHand,
    Count,
}

const _: () = assert!(std::mem::size_of::<StoredReply>() == 32);

impl StoredReply {
    /// `None` if `reply` sets more than one of `deadline_ms`, `on_hand` and `count` (no
    /// command's reply does; a snapshot or record with one is refused).
    pub fn new(reply: Reply) -> Option<StoredReply> {
        let set = Self::values_set(&reply);
        let (field, value) = match set {
            [false, false, false] => (ReplyField::None, 0),
            [true, false, false] => (ReplyField::DeadlineMs, reply.deadline_ms),
            [false, true, false] => (ReplyField::OnHand, reply.on_hand as u64),
            [false, false, true] => (ReplyField::Count, reply.count),
            _ => return None,
        };
        let stored = StoredReply { lines: PackedLines::new(&reply.lines), value, code: reply.code, field };
        debug_assert_eq!(stored.field == ReplyField::None, stored.value == 0);
        Some(stored)
    }

    /// Whether [`StoredReply::new`] takes `reply` (without copying it).
    pub fn holds(reply: &Reply) -> bool {
        Self::values_set(reply).iter().filter(|&&set| set).count() <= 1
    }

    fn values_set(reply: &Reply) -> [bool; 3] {
        [reply.deadline_ms != 0, reply.on_hand != 0, reply.count != 0]
    }

    /// The reply, equal to the one it was made from.
    pub fn reply(&self) -> Reply {
        let value_if = |field: ReplyField| if self.field == field { self.value } else { 0 };
        Reply {
            code: self.code,
            lines: self.lines.unpack(),
            deadline_ms: value_if(ReplyField::DeadlineMs),
            on_hand: value_if(ReplyField::OnHand) as i64,
            count: value_if(ReplyField::Count),
        }
    }
}

/// A reply's line results as the idempotency memory keeps them: per line, the code and three
/// zigzag varints (`requested`, `applied - requested`, `available - applied`), typically 5-6
/// bytes where a [`LineResult`] takes 32. The memory keeps a reply for every remembered id for
/// up to a day, and an import's reply has a result per row: a 10,000-row import kept 320 KB,
/// 32 bytes per item loaded (a quarter of the item store's own bytes), where this keeps ~60 KB.
/// The differences wrap, so every `i64` comes back exactly. Decoded only for a retry, a
/// snapshot or a view; the encoding is private to the process (never persisted).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PackedLines(Option<Box<[u8]>>);

/// Bytes one packed line takes at most: a code and three varints of up to 10 bytes.
const PACKED_LINE_BYTES_MAX: usize = 3 + 3 * 10;
/// Packed bytes built on the stack before the one exact allocation (a reserve of up to ~10
/// lines; longer ones spill to the heap while being built).
const PACKED_STACK_BYTES: usize = 64;

impl PackedLines {
    pub fn new(lines: &[LineResult]) -> PackedLines {
        if lines.is_empty() {
            return PackedLines(None);
        }
        // Packed on the stack first, so the kept copy is one allocation of its exact size.
        let mut bytes: smallvec::SmallVec<[u8; PACKED_STACK_BYTES]> = smallvec::SmallVec::new();
        for line in lines {
            put_varint(&mut bytes, u64::from(line.code.number()));
            put_varint(&mut bytes, zigzag(line.requested));
            put_varint(&mut bytes, zigzag(line.applied.wrapping_sub(line.requested)));
            put_varint(&mut bytes, zigzag(line.available.wrapping_sub(line.applied)));
        }
        debug_assert!(bytes.len() <= lines.len() * PACKED_LINE_BYTES_MAX);
        let packed = PackedLines(Some(Box::from(&bytes[..])));
        debug_assert!(packed.unpack().iter().eq(lines.iter()), "packed lines do not come back equal");
        packed
    }

    /// The line results, equal to the ones it was made from.
    pub fn unpack(&self) -> LineResults {
        let Some(bytes) = &self.0 else {
            return LineResults::new();
        };
        let mut lines = Vec::with_capacity(bytes.len() / 4);
        let mut at = 0;
        while at < bytes.len() {
            let number = take_varint(bytes, &mut at);
            let code = u16::try_from(number).ok().and_then(ResultCode::from_number).expect("packed by `new`");
            let requested = unzigzag(take_varint(bytes, &mut at));
            let applied = requested.wrapping_add(unzigzag(take_varint(bytes, &mut at)));
            let available = applied.wrapping_add(unzigzag(take_varint(bytes, &mut at)));
            lines.push(LineResult { code, requested, applied, available });
        }
        assert_eq!(at, bytes.len(), "packed lines end inside a line");
        lines.into()
    }

    /// Bytes of the encoding.
    #[cfg(test)]
    fn packed_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |bytes| bytes.len())
    }
}

impl std::fmt::Debug for PackedLines {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_list().entries(self.unpack().iter()).finish()
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_varint(bytes: &mut smallvec::SmallVec<[u8; PACKED_STACK_BYTES]>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

/// Reads a varint `put_varint` wrote (the bytes never come from outside the process).
fn take_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("a packed varint runs past 64 bits");
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

/// An entry of the deadline index: an open reservation's deadline, tenant and id. Ordered by
/// deadline first, so the index yields the most overdue first, ties in (tenant, id) order.
pub type DeadlineEntry = (u64, TenantId, IdText);

/// Entries the deadline index may hold beyond twice the open reservations before it drops the
/// stale ones (see [`ReservationShard::index_deadline`]).
#[cfg(not(test))]
pub const DEADLINE_STALE_SLACK_MAX: usize = 1_024;
/// Small in unit tests, so that they reach the bulk drop of stale entries.
#[cfg(test)]
pub const DEADLINE_STALE_SLACK_MAX: usize = 8;

/// Reservation lines that count as one more entry of the idempotency memory. A reservation
/// costs a map slot (104 bytes), 40 bytes a line and its packed reply (~8 bytes a line): about
/// 300 bytes with 4 lines, 3 KB with 64. The limit was sized at 200-400 bytes an entry, so each
/// reservation counts as `1 + lines / 6` entries ([`reservation_weight`]). Regression (review,
/// eleventh session): every reservation counted one, so 20 M reservations of 64 lines (one
/// unit each, on one item) would have held ~60 GB before `memory_full`.
pub const RESERVATION_LINES_PER_ENTRY: usize = 6;

/// The entries of the idempotency memory a reservation of `lines` lines counts as.
pub fn reservation_weight(lines: usize) -> u32 {
    let weight = 1 + lines / RESERVATION_LINES_PER_ENTRY;
    debug_assert!(weight <= 1 + crate::types::LINES_PER_RESERVATION_MAX / RESERVATION_LINES_PER_ENTRY);
    weight as u32
}

/// How many entries each tenant has in one id shard (a reservation counted by its
/// [`reservation_weight`]): the fair-share guard of the idempotency memory
/// ([`crate::Engine::set_idempotency_entries_max`]). Only tenants with entries appear.
#[derive(Default)]
pub struct TenantEntries(HashMap<TenantId, u32>);

impl TenantEntries {
    pub fn add(&mut self, tenant: TenantId, weight: u32) {
        assert!(weight >= 1);
        let count = self.0.entry(tenant).or_insert(0);
        *count += weight;
        debug_assert!(*count >= weight);
    }

    pub fn remove(&mut self, tenant: TenantId, weight: u32) {
        let count = self.0.get_mut(&tenant).expect("removing an entry of a tenant with none counted");
        assert!(*count >= weight && weight >= 1);
        *count -= weight;
        if *count == 0 {
            self.0.remove(&tenant);
        }
    }

    /// The tenant's entries in this shard.
    pub fn of(&self, tenant: TenantId) -> usize {
        self.0.get(&tenant).map_or(0, |&count| count as usize)
    }

    /// Tenants with at least one entry in this shard.
    pub fn tenants(&self) -> usize {
        self.0.len()
    }

    /// Whether these counts are the entries `entries` (tenant, weight) add up to (`verify`).
    pub fn count(&self, entries: impl Iterator<Item = (TenantId, u32)>) -> bool {
        let mut recount: HashMap<TenantId, u32> = HashMap::new();
        for (tenant, weight) in entries {
            *recount.entry(tenant).or_insert(0) += weight;
        }
        recount == self.0
    }

    /// Every tenant's entries together.
    pub fn total(&self) -> usize {
        self.0.values().map(|&count| count as usize).sum()
    }
}

/// A closed reservation in its shard's retention queue.
#[derive(Clone, Debug)]
pub struct ClosedEntry {
    pub closed_ms: u64,
    pub lsn: Lsn,
    pub tenant: TenantId,
    /// The weights of every entry queued before this one, summed with wrap-around: the weight
    /// of a stretch of the queue is a difference of two of these (`closed_weight_before`).
    weight_queued_before: u32,
    pub id: IdText,
}

// The weight's running sum sits in what was padding: an entry is as large as the tuple was.
const _: () = assert!(std::mem::size_of::<ClosedEntry>() == std::mem::size_of::<(u64, Lsn, TenantId, IdText)>());

#[derive(Default)]
pub struct ReservationShard {
    pub map: HashMap<Key, HeldReservation>,
    /// The entries of `map` per tenant.
    pub tenants: TenantEntries,
    /// Open reservations by deadline: a min-heap with lazy deletion. Settling a reservation
    /// leaves its entry behind (stale); an entry is live only while its reservation is open with
    /// that deadline (see [`ReservationShard::is_live`]). Stale entries are dropped when they
    /// come first, and all at once when they outnumber the open reservations
    /// (`DEADLINE_STALE_SLACK_MAX` aside), so the heap holds at most about twice the open ones.
    /// A B-tree paid a search on every reserve and another on every settle (~15% of a
    /// single-thread W1 profile); the heap's push is O(1) for the usual increasing deadlines and a
    /// settle costs nothing here.
    deadlines: BinaryHeap<Reverse<DeadlineEntry>>,
    /// Open reservations in `map` (the live entries of `deadlines`).
    open: usize,
    /// Closed reservations in the order they closed (= LSN order), for retention.
    pub closed: VecDeque<ClosedEntry>,
    /// The weights of every entry ever queued in `closed`, summed with wrap-around.
    weight_queued: u32,
    /// Every reservation of `map` by its weight: the sum of `tenants`, kept apart so that a
    /// reserve does not sum it over the shard's tenants.
    weight: usize,
}

impl ReservationShard {
    /// Indexes an open reservation's deadline: when it is installed, and again when an extend
    /// moves it (the old entry turns stale by itself).
    pub fn index_deadline(&mut self, deadline_ms: u64, tenant: TenantId, id: IdText) {
        debug_assert!(
            self.map.get(&KeyRef(tenant, &id)).is_some_and(|r| r.state.is_open() && r.deadline_ms == deadline_ms),
            "indexing a deadline its reservation does not have"
        );
        self.deadlines.push(Reverse((deadline_ms, tenant, id)));
        self.bound_stale_deadlines();
    }

    /// Drops the stale entries once they outnumber the live ones by the slack: a drop costs a
    /// map lookup per entry, at least half of them stale, so about two lookups per settle.
    fn bound_stale_deadlines(&mut self) {
        if self.deadlines.len() > 2 * self.open + DEADLINE_STALE_SLACK_MAX {
            self.drop_stale_deadlines();
        }
        debug_assert!(self.deadlines.len() <= 2 * self.open + DEADLINE_STALE_SLACK_MAX);
    }

    /// Counts a reservation just installed open in `map` and indexes its deadline.
    pub fn opened(&mut self, deadline_ms: u64, tenant: TenantId, id: IdText) {
        self.open += 1;
        assert!(self.open <= self.map.len(), "more open reservations than reservations");
        self.index_deadline(deadline_ms, tenant, id);
    }

    /// The first open reservation due at `now_ms`, taken out of the index (the caller expires
    /// it). Stale entries met on the way are dropped.
    pub fn take_due(&mut self, now_ms: u64) -> Option<DeadlineEntry> {
        while let Some(Reverse(first)) = self.deadlines.peek() {
            if !Self::is_live(&self.map, first) {
                self.deadlines.pop();
                continue;
            }
            if first.0 > now_ms {
                return None;
            }
            let Reverse(due) = self.deadlines.pop().expect("peeked");
            return Some(due);
        }
        debug_assert_eq!(self.open, 0, "open reservations without a deadline entry");
        None
    }

    /// Whether `entry` stands for an open reservation with that deadline. Every open reservation
    /// has a live entry. A live entry can have twins (an extend back to an earlier deadline
    /// revives the old entry; an id forgotten and reused can meet its old entry): they are the
    /// same tuple, so they come out of the heap together, and compaction keeps one.
    fn is_live(map: &HashMap<Key, HeldReservation>, entry: &DeadlineEntry) -> bool {
        map.get(&KeyRef(entry.1, &entry.2)).is_some_and(|r| r.state.is_open() && r.deadline_ms == entry.0)
    }

    fn drop_stale_deadlines(&mut self) {
        let mut entries = std::mem::take(&mut self.deadlines).into_vec();
        let map = &self.map;
        entries.retain(|Reverse(entry)| Self::is_live(map, entry));
        if entries.len() != self.open {
            // Twins of live entries (rare): sort to find them.
            entries.sort_unstable();
            entries.dedup();
        }
        self.deadlines = BinaryHeap::from(entries);
        assert_eq!(self.deadlines.len(), self.open, "live deadline entries and open reservations differ");
    }

    /// The open reservations' deadline entries, most overdue first, each once (snapshots and
    /// `verify`).
    pub fn open_by_deadline(&self) -> Vec<DeadlineEntry> {
        let mut entries: Vec<DeadlineEntry> = self
            .deadlines
            .iter()
            .filter(|Reverse(entry)| Self::is_live(&self.map, entry))
            .map(|Reverse(entry)| entry.clone())
            .collect();
        entries.sort_unstable();
        entries.dedup();
        entries
    }

    /// Open reservations, as counted on the way in and out.
    pub fn open_count(&self) -> usize {
        self.open
    }

    /// Moves a reservation that just stopped being open to the retention queue. Its deadline
    /// entry turns stale by itself.
    pub fn close(&mut self, tenant: TenantId, id: &str, now_ms: u64, lsn: Lsn) {
        // One lookup for the shared id and the weight (a settle's hot path).
        let (key, reservation) = self.map.get_key_value(&KeyRef(tenant, id)).expect("reservation present");
        let (key, weight) = (key.1.clone(), reservation_weight(reservation.lines.len()));
        assert!(!reservation.state.is_open(), "closing a reservation still open");
        assert!(self.open > 0, "closing a reservation that was not counted open");
        self.open -= 1;
        self.queue_closed(now_ms, lsn, tenant, key, weight);
        self.bound_stale_deadlines();
    }

    /// Queues a closed reservation of `map` for retention, in LSN order.
    pub fn push_closed(&mut self, closed_ms: u64, lsn: Lsn, tenant: TenantId, id: IdText) {
        let reservation = self.map.get(&KeyRef(tenant, &id)).expect("a closed reservation is remembered");
        assert!(!reservation.state.is_open(), "queueing an open reservation for retention");
        let weight = reservation_weight(reservation.lines.len());
        self.queue_closed(closed_ms, lsn, tenant, id, weight);
    }

    fn queue_closed(&mut self, closed_ms: u64, lsn: Lsn, tenant: TenantId, id: IdText, weight: u32) {
        debug_assert!(self.closed.back().is_none_or(|last| last.lsn < lsn), "closed out of LSN order");
        debug_assert!(weight >= 1);
        self.closed.push_back(ClosedEntry { closed_ms, lsn, tenant, weight_queued_before: self.weight_queued, id });
        self.weight_queued = self.weight_queued.wrapping_add(weight);
    }

    /// The weight of the closed reservations queued that closed before `before_ms` (the queue
    /// is in LSN order, time order up to clock skew: an estimate, as `forget` itself stops at
    /// the first entry not old enough).
    pub fn closed_weight_before(&self, before_ms: u64) -> usize {
        let count = self.closed.partition_point(|entry| entry.closed_ms < before_ms);
        let Some(first) = self.closed.front() else { return 0 };
        let end = self.closed.get(count).map_or(self.weight_queued, |entry| entry.weight_queued_before);
        let weight = end.wrapping_sub(first.weight_queued_before) as usize;
        debug_assert!(weight >= count && weight <= self.weight);
        weight
    }

    /// Every entry of this shard, reservations counted by their weight.
    pub fn weight(&self) -> usize {
        debug_assert_eq!(self.weight, self.tenants.total());
        self.weight
    }

    /// Remembers a new reservation (open or closed: the caller indexes it) and counts it for its
    /// tenant.
    pub fn insert(&mut self, tenant: TenantId, id: IdText, reservation: HeldReservation) -> Option<HeldReservation> {
        let weight = reservation_weight(reservation.lines.len());
        let previous = self.map.insert(Key(tenant, id), reservation);
        if let Some(previous) = &previous {
            let previous_weight = reservation_weight(previous.lines.len());
            self.tenants.remove(tenant, previous_weight);
            self.weight -= previous_weight as usize;
        }
        self.tenants.add(tenant, weight);
        self.weight += weight as usize;
        previous
    }

    /// The shared id of a reservation this shard holds.
    pub fn key(&self, tenant: TenantId, id: &str) -> IdText {
        self.map.get_key_value(&KeyRef(tenant, id)).expect("reservation present").0 .1.clone()
    }

    /// The LSN of the first reservation in the retention queue, among those closed by records
    /// before `lsn`, that closed at or after `before_ms`; `None` if all of them closed before.
    pub fn first_young(&self, before_ms: u64, lsn: Lsn) -> Option<Lsn> {
        let mut closed = self.closed.iter().take_while(|entry| entry.lsn < lsn);
        closed.find(|entry| entry.closed_ms >= before_ms).map(|entry| entry.lsn)
    }

    /// Forgets the reservations closed by records before `below` (the engine's bound, the same
    /// on every engine that applies one log: `Engine::forget_before`), all of which closed
    /// before `before_ms`.
    pub fn forget(&mut self, before_ms: u64, below: Lsn) -> usize {
        let mut forgotten = 0;
        while let Some(entry) = self.closed.front() {
            if entry.lsn >= below {
                break;
            }
            assert!(entry.closed_ms < before_ms, "forgetting a reservation closed within the retention");
            let ClosedEntry { tenant, id, .. } = self.closed.pop_front().expect("front exists");
            let removed = self.map.remove(&Key(tenant, id)).expect("a queued reservation is remembered");
            assert!(!removed.state.is_open(), "forgot an open reservation");
            let weight = reservation_weight(removed.lines.len());
            self.tenants.remove(tenant, weight);
            self.weight -= weight as usize;
            forgotten += 1;
        }
        forgotten
    }
}

/// A remembered operation as plain data (snapshots, [`crate::Dump`]). The memory holds it as
/// a [`HeldOperation`], its time and LSN in the retention queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationEntry {
    pub fingerprint: u64,
    pub reply: Reply,
    pub at_ms: u64,
    pub lsn: Lsn,
}

/// A remembered operation as the memory holds it: 40 bytes (a map slot 72, not 104). Its time
/// and LSN are in the shard's `order` only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldOperation {
    pub fingerprint: u64,
    pub reply: StoredReply,
}

const _: () = assert!(std::mem::size_of::<HeldOperation>() == 40);

#[derive(Default)]
pub struct OperationShard {
    pub map: HashMap<Key, HeldOperation>,
    /// The entries of `map` per tenant.
    pub tenants: TenantEntries,
    /// In the order remembered (= LSN order), for retention.
    pub order: VecDeque<(u64, Lsn, TenantId, IdText)>,
}

impl OperationShard {
    /// Every remembered operation, in the order remembered, as plain data.
    pub fn entries(&self) -> impl Iterator<Item = (TenantId, &IdText, OperationEntry)> + '_ {
        self.order.iter().map(|(at_ms, lsn, tenant, id)| {
            let held = self.map.get(&KeyRef(*tenant, id)).expect("an ordered operation is remembered");
            (
                *tenant,
                id,
                OperationEntry { fingerprint: held.fingerprint, reply: held.reply.reply(), at_ms: *at_ms, lsn: *lsn },
            )
        })
    }

    /// Remembers an operation's reply. Panics on a reply [`StoredReply::new`] refuses: callers
    /// check what comes from outside (`restore`, `apply`).
    pub fn remember(&mut self, tenant: TenantId, id: &str, fingerprint: u64, reply: Reply, at_ms: u64, lsn: Lsn) {
        let id = IdText::new(id);
        let reply = StoredReply::new(reply).expect("a reply sets at most one of deadline_ms, on_hand and count");
        let previous = self.map.insert(Key(tenant, id.clone()), HeldOperation { fingerprint, reply });
        assert!(previous.is_none(), "operation id remembered twice");
        self.tenants.add(tenant, 1);
        debug_assert!(self.order.back().is_none_or(|last| last.1 < lsn), "memory out of LSN order");
        self.order.push_back((at_ms, lsn, tenant, id));
    }

    /// The LSN of the first operation in the retention queue, among those remembered by
    /// records before `lsn`, remembered at or after `before_ms`; `None` if all of them were
    /// remembered before.
    pub fn first_young(&self, before_ms: u64, lsn: Lsn) -> Option<Lsn> {
        let mut order = self.order.iter().take_while(|(_, at_lsn, _, _)| *at_lsn < lsn);
        order.find(|(at_ms, _, _, _)| *at_ms >= before_ms).map(|(_, at_lsn, _, _)| *at_lsn)
    }

    /// Forgets the operations remembered by records before `below` (see
    /// [`ReservationShard::forget`]), all of which were remembered before `before_ms`.
    pub fn forget(&mut self, before_ms: u64, below: Lsn) -> usize {
        let mut forgotten = 0;
        while let Some((at_ms, at_lsn, _, _)) = self.order.front() {
            if *at_lsn >= below {
                break;
            }
            assert!(*at_ms < before_ms, "forgetting an operation remembered within the retention");
            let (_, _, tenant, id) = self.order.pop_front().expect("front exists");
            assert!(self.map.remove(&Key(tenant, id)).is_some(), "forgot an unknown operation");
            self.tenants.remove(tenant, 1);
            forgotten += 1;
        }
        forgotten
    }
}

/// Tables sharded by (tenant, client-chosen id).
///
/// The shard is chosen by SipHash-1-3 under `placement`, a key drawn at random when the engine
/// is made and never persisted. A client picks its ids, and each shard holds only its share of
/// the idempotency limit, so a fixed hash (FNV, before) let one tenant aim thousands of ids at
/// one shard, fill it, and have every other tenant's new ids there refused with `memory_full`.
/// Nothing persisted, replayed or answered depends on which shard holds an id.
pub struct Sharded<T> {
    shards: Box<[Mutex<T>]>,
    mask: u64,
    placement: std::hash::RandomState,
}

impl<T: Default> Sharded<T> {
    pub fn new(count: usize, placement: std::hash::RandomState) -> Sharded<T> {
        assert!(count.is_power_of_two());
        let shards: Box<[Mutex<T>]> = (0..count).map(|_| Mutex::new(T::default())).collect();
        Sharded { shards, mask: count as u64 - 1, placement }
    }

    /// The index of the shard that holds (tenant, id).
    pub fn index(&self, tenant: TenantId, id: &str) -> usize {
        let index = (self.placement.hash_one(KeyRef(tenant, id)) & self.mask) as usize;
        debug_assert!(index < self.shards.len());
        index
    }

    pub fn shard(&self, tenant: TenantId, id: &str) -> &Mutex<T> {
        &self.shards[self.index(tenant, id)]
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

    /// Packed line results come back exactly, at the ends of `i64` too (the differences wrap),
    /// for every code, and in a fraction of a `LineResult`'s 32 bytes for the usual values.
    #[test]
    fn packed_line_results_come_back_exactly() {
        use crate::code::{LineResult, ResultCode};
        assert_eq!(PackedLines::new(&[]), PackedLines::default());
        assert!(PackedLines::new(&[]).unpack().is_empty());
        let values = [0, 1, -1, 5, 1_000_000, -(1 << 50), 1 << 50, i64::MIN, i64::MAX, i64::MIN + 1];
        let mut lines = Vec::new();
        for (index, &code) in ResultCode::ALL.iter().enumerate() {
            for (offset, &requested) in values.iter().enumerate() {
                lines.push(LineResult {
                    code,
                    requested,
                    applied: values[(index + offset + 1) % values.len()],
                    available: values[(index + 2 * offset + 3) % values.len()],
                });
            }
        }
        let packed = PackedLines::new(&lines);
        assert_eq!(&*packed.unpack(), &lines[..]);
        assert!(packed.packed_bytes() <= lines.len() * PACKED_LINE_BYTES_MAX);
        // An import row that set on_hand to 1,000,000 on a fresh item, and a reserve's line.
        let row = LineResult { code: ResultCode::Ok, requested: 1_000_000, applied: 1_000_000, available: 1_000_000 };
        let reserve = LineResult { code: ResultCode::Ok, requested: 3, applied: 3, available: 999_997 };
        assert_eq!(PackedLines::new(&vec![row; 10_000]).packed_bytes(), 60_000, "6 bytes a row, not 32");
        assert_eq!(PackedLines::new(std::slice::from_ref(&reserve)).packed_bytes(), 6);
        assert_eq!(&*PackedLines::new(std::slice::from_ref(&reserve)).unpack(), &[reserve][..]);
    }

    /// The memory keeps replies and reservations in a smaller form than the plain ones: every
    /// form a command's reply takes comes back equal, and what the smaller form cannot hold is
    /// refused (never silently changed).
    #[test]
    /// The retention queue's weights (`closed_weight_before`, what `forget` sizes its cutoff
    /// by) are differences of running sums, right across a wrap of the `u32` sum.
    fn the_retention_queue_weighs_what_closed_before_a_time_also_across_a_wrap() {
        let closed = |lines: usize, closed_ms: u64| {
            let line = ReservationLineState {
                item: ItemId { shard: 0, index: 1 },
                requested: 1,
                reserved: 1,
                committed: 1,
                released: 0,
            };
            HeldReservation::new(Reservation {
                fingerprint: 1,
                reply: Reply::code(ResultCode::Ok),
                state: ReservationState::Committed,
                deadline_ms: 90_000,
                lines: vec![line; lines],
                closed_ms: Some(closed_ms),
            })
            .expect("held")
        };
        for start in [0, u32::MAX - 5] {
            let mut shard = ReservationShard { weight_queued: start, ..ReservationShard::default() };
            let tenant = TenantId(1);
            // Weights 1, 11, 2, 1: closed at 10, 20, 30, 40 ms.
            for (number, (lines, closed_ms)) in [(1, 10), (64, 20), (6, 30), (5, 40)].into_iter().enumerate() {
                let id = IdText::new(&format!("r{number}"));
                assert!(shard.insert(tenant, id.clone(), closed(lines, closed_ms)).is_none());
                shard.push_closed(closed_ms, Lsn(number as u64 + 1), tenant, id);
            }
            assert_eq!(shard.weight(), 15);
            let before: Vec<usize> = [0, 11, 21, 31, 41].iter().map(|&ms| shard.closed_weight_before(ms)).collect();
            assert_eq!(before, vec![0, 1, 12, 14, 15], "start {start}");
            assert_eq!(shard.forget(21, Lsn(3)), 2);
            assert_eq!((shard.weight(), shard.tenants.of(tenant)), (3, 3));
            assert_eq!(shard.closed_weight_before(41), 3);
        }
    }

    #[test]
    fn held_replies_and_reservations_come_back_equal() {
        use crate::code::{LineResult, ResultCode};
        let lines: LineResults =
            vec![LineResult { code: ResultCode::Ok, requested: 3, applied: 3, available: -7 }].into();
        let replies = [
            Reply::code(ResultCode::Ok),
            Reply { lines: lines.clone(), deadline_ms: 61_000, ..Reply::code(ResultCode::Ok) },
            Reply { on_hand: -12, ..Reply::code(ResultCode::Ok) },
            Reply { on_hand: i64::MIN, ..Reply::code(ResultCode::ExpectedMismatch) },
            Reply { count: u64::MAX, ..Reply::code(ResultCode::Ok) },
            Reply { lines: lines.clone(), ..Reply::code(ResultCode::InsufficientStock) },
        ];
        for reply in replies {
            assert!(StoredReply::holds(&reply));
            assert_eq!(StoredReply::new(reply.clone()).expect("held").reply(), reply);
        }
        for two in [
            Reply { deadline_ms: 1, on_hand: 1, ..Reply::code(ResultCode::Ok) },
            Reply { on_hand: 1, count: 1, ..Reply::code(ResultCode::Ok) },
            Reply { deadline_ms: 1, count: 1, ..Reply::code(ResultCode::Ok) },
        ] {
            assert!(!StoredReply::holds(&two));
            assert_eq!(StoredReply::new(two), None);
        }
        let line = ReservationLineState {
            item: ItemId { shard: 3, index: 9 },
            requested: 3,
            reserved: 3,
            committed: 1,
            released: 0,
        };
        let open = Reservation {
            fingerprint: 42,
            reply: Reply { lines, deadline_ms: 61_000, ..Reply::code(ResultCode::Ok) },
            state: ReservationState::Open,
            deadline_ms: 90_000,
            lines: vec![line.clone(), line],
            closed_ms: None,
        };
        let mut held = HeldReservation::new(open.clone()).expect("held");
        assert_eq!(held.plain(), open);
        assert_eq!(held.closed_ms(), None);
        held.state = ReservationState::Released;
        held.close(0);
        assert_eq!(held.plain(), Reservation { state: ReservationState::Released, closed_ms: Some(0), ..open.clone() });
        let refused = Reservation { reply: Reply::code(ResultCode::UnknownItem), lines: Vec::new(), ..open.clone() };
        assert_eq!(HeldReservation::new(refused.clone()).expect("held").plain(), refused);
        let not_a_reserve = Reservation { reply: Reply { count: 1, ..Reply::code(ResultCode::Ok) }, ..open.clone() };
        assert_eq!(HeldReservation::new(not_a_reserve), None);
        assert_eq!(HeldReservation::new(Reservation { closed_ms: Some(u64::MAX), ..open }), None);
    }

    /// An extend back to an earlier deadline revives the old entry beside the new one: the bulk
    /// drop of stale entries keeps one of the twins (it asserts live entries = open ones).
    #[test]
    fn the_bulk_drop_of_stale_deadlines_keeps_one_of_twin_entries() {
        use crate::code::ResultCode;
        let open = |shard: &mut ReservationShard, id: &str, deadline_ms: u64| {
            let reservation = HeldReservation::new(Reservation {
                fingerprint: 0,
                reply: Reply::code(ResultCode::Ok),
                state: ReservationState::Open,
                deadline_ms,
                lines: Vec::new(),
                closed_ms: None,
            })
            .unwrap();
            shard.insert(TenantId(0), IdText::new(id), reservation);
            shard.opened(deadline_ms, TenantId(0), IdText::new(id));
        };
        let mut shard = ReservationShard::default();
        open(&mut shard, "twin", 100);
        for deadline_ms in [200, 100] {
            shard.map.get_mut(&KeyRef(TenantId(0), "twin")).unwrap().deadline_ms = deadline_ms;
            shard.index_deadline(deadline_ms, TenantId(0), IdText::new("twin"));
        }
        assert_eq!(shard.deadlines.len(), 3, "100 twice (both live) and 200 (stale)");
        // Others opened and closed until their stale entries force a bulk drop.
        for number in 0..2 * DEADLINE_STALE_SLACK_MAX {
            let id = format!("other{number}");
            open(&mut shard, &id, 300);
            shard.map.get_mut(&KeyRef(TenantId(0), &id)).unwrap().state = ReservationState::Released;
            shard.close(TenantId(0), &id, 0, Lsn(number as u64 + 1));
        }
        assert!(shard.deadlines.len() < 2 * DEADLINE_STALE_SLACK_MAX, "a bulk drop ran");
        assert_eq!(shard.open_by_deadline(), vec![(100, TenantId(0), IdText::new("twin"))]);
        assert_eq!(shard.take_due(100), Some((100, TenantId(0), IdText::new("twin"))));
    }

    /// The deadline index against a `BTreeSet` of the open reservations' deadlines (what the
    /// index was before it became a heap with lazy deletion): random installs, extends (back to
    /// earlier deadlines too), closes, forgets with ids reused, and expiries at a moving `now`.
    #[test]
    fn the_deadline_heap_yields_what_an_ordered_set_of_open_deadlines_would() {
        use crate::code::ResultCode;
        use crate::workload::SplitMix64;
        use std::collections::BTreeSet;

        for seed in 0..8 {
            let mut random = SplitMix64::new(seed);
            let mut shard = ReservationShard::default();
            let mut reference: BTreeSet<DeadlineEntry> = BTreeSet::new();
            let mut now_ms = 0u64;
            let mut lsn = 0u64;
            let (mut expired, mut compactions) = (0, 0);
            for step in 0..20_000 {
                let tenant = TenantId(random.below(3) as u32);
                // Few ids, so ids are forgotten and reused while their old entries linger.
                let id = format!("r{}", random.below(400));
                let key = KeyRef(tenant, &id);
                // Phases of short deadlines (most expire) and long ones (most are settled first,
                // leaving stale entries behind).
                let ttl_ms_max = if (step / 2_000) % 2 == 0 { 200 } else { 20_000 };
                let deadline_ms = now_ms + 1 + random.below(ttl_ms_max);
                match (random.below(10), shard.map.get(&key).map(|r| r.state)) {
                    (0..=3, None) => {
                        let reservation = HeldReservation::new(Reservation {
                            fingerprint: 0,
                            reply: Reply::code(ResultCode::Ok),
                            state: ReservationState::Open,
                            deadline_ms,
                            lines: Vec::new(),
                            closed_ms: None,
                        })
                        .unwrap();
                        shard.insert(tenant, IdText::new(&id), reservation);
                        let before = shard.deadlines.len();
                        shard.opened(deadline_ms, tenant, IdText::new(&id));
                        compactions += usize::from(shard.deadlines.len() <= before);
                        reference.insert((deadline_ms, tenant, IdText::new(&id)));
                    }
                    (4, Some(ReservationState::Open)) => {
                        let current = shard.map.get_mut(&key).expect("present");
                        let old = current.deadline_ms;
                        // Now and then back to a deadline it had, reviving its old entry.
                        let new = if random.below(4) == 0 {
                            old.saturating_sub(random.below(3)).max(now_ms + 1)
                        } else {
                            deadline_ms
                        };
                        current.deadline_ms = new;
                        assert!(reference.remove(&(old, tenant, IdText::new(&id))));
                        reference.insert((new, tenant, IdText::new(&id)));
                        if new != old {
                            shard.index_deadline(new, tenant, IdText::new(&id));
                        }
                    }
                    (5..=7, Some(ReservationState::Open)) => {
                        let current = shard.map.get_mut(&key).expect("present");
                        current.state = ReservationState::Released;
                        current.close(now_ms);
                        assert!(reference.remove(&(current.deadline_ms, tenant, IdText::new(&id))));
                        lsn += 1;
                        let before = shard.deadlines.len();
                        shard.close(tenant, &id, now_ms, Lsn(lsn));
                        compactions += usize::from(shard.deadlines.len() < before);
                    }
                    (8, _) => {
                        let below = shard.first_young(now_ms, Lsn(lsn + 1)).unwrap_or(Lsn(lsn + 1));
                        shard.forget(now_ms, below);
                    }
                    (9, _) if random.below(4) == 0 => {
                        now_ms += random.below(20);
                        while let Some(due) = shard.take_due(now_ms) {
                            assert_eq!(reference.pop_first().as_ref(), Some(&due), "seed {seed} step {step}");
                            let current = shard.map.get_mut(&KeyRef(due.1, &due.2)).expect("due one exists");
                            current.state = ReservationState::Expired;
                            current.close(now_ms);
                            lsn += 1;
                            shard.close(due.1, &due.2, now_ms, Lsn(lsn));
                            expired += 1;
                        }
                        assert!(reference.first().is_none_or(|first| first.0 > now_ms), "seed {seed} step {step}");
                    }
                    _ => {}
                }
                if step % 1_000 == 999 {
                    // A bulk release: every open reservation settled at once, all their entries
                    // stale, so the bulk drop has to run from `close`.
                    let before = shard.deadlines.len();
                    for (deadline_ms, tenant, id) in std::mem::take(&mut reference) {
                        let current = shard.map.get_mut(&KeyRef(tenant, &id)).expect("open one exists");
                        assert_eq!(current.deadline_ms, deadline_ms);
                        current.state = ReservationState::Released;
                        current.close(now_ms);
                        lsn += 1;
                        shard.close(tenant, &id, now_ms, Lsn(lsn));
                    }
                    compactions += usize::from(shard.deadlines.len() < before);
                }
                assert_eq!(shard.open_count(), reference.len(), "seed {seed} step {step}");
                assert!(shard.deadlines.len() <= 2 * shard.open_count() + DEADLINE_STALE_SLACK_MAX);
                if step % 500 == 0 {
                    let listed: Vec<DeadlineEntry> = shard.open_by_deadline();
                    assert_eq!(listed, reference.iter().cloned().collect::<Vec<_>>(), "seed {seed} step {step}");
                }
            }
            // Stale entries must have been dropped in bulk, and reservations expired, or the run
            // tested only the easy half.
            assert!(expired > 500 && compactions > 2, "seed {seed}: {expired} expired, {compactions} compactions");
        }
    }

    /// Regression: id shards were chosen by a fixed FNV hash of (tenant, id), so a tenant could
    /// pick ids that all land in one shard and fill that shard's share of the idempotency limit,
    /// refusing other tenants' new ids there with `memory_full`. Ids picked that way now spread
    /// like any others, and two engines place them differently.
    #[test]
    fn a_tenant_cannot_aim_its_ids_at_one_id_shard() {
        use crate::types::Fnv64;
        let shard_count = 256;
        let tenant = TenantId(7);
        let fnv = |id: &str| Fnv64::new().u64(u64::from(tenant.0)).str(id).finish();
        // What an attacker computes offline: 200 ids in FNV's shard 0.
        let aimed: Vec<String> =
            (0u64..).map(|n| format!("r{n}")).filter(|id| fnv(id) % shard_count == 0).take(200).collect();
        let first = Sharded::<OperationShard>::new(shard_count as usize, std::hash::RandomState::new());
        let second = Sharded::<OperationShard>::new(shard_count as usize, std::hash::RandomState::new());
        let placed: Vec<usize> = aimed.iter().map(|id| first.index(tenant, id)).collect();
        let distinct: std::collections::BTreeSet<usize> = placed.iter().copied().collect();
        // 200 ids over 256 shards at random fill ~139 shards; fewer than 100 is a ~1e-12 event.
        assert!(distinct.len() >= 100, "aimed ids filled only {} shards", distinct.len());
        let fullest = placed.iter().map(|shard| placed.iter().filter(|other| *other == shard).count()).max();
        assert!(fullest.unwrap() <= 10, "one shard took {fullest:?} of the aimed ids");
        let placed_again: Vec<usize> = aimed.iter().map(|id| second.index(tenant, id)).collect();
        assert_ne!(placed, placed_again, "two engines placed 200 ids alike: the key is not random");
        for id in &aimed {
            assert!(std::ptr::eq(first.shard(tenant, id), &first.all()[first.index(tenant, id)]));
        }
    }
}
