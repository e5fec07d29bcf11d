//! Effect records: what a mutation changed, in enough detail that applying records in LSN
//! order rebuilds the state without deciding anything again. The WAL persists them, the
//! standby applies them. Every record states the counters *after* the change as well as the
//! change, so `apply` can check that it is applying the record to the state it was made from
//! (a pair assertion across the log).

use crate::code::Reply;
use crate::item::Counters;
use crate::memory::IdText;
use crate::types::{ItemId, Lsn, TenantId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    /// The `now_ms` of the command that made it (the primary's clock, never the engine's).
    pub timestamp_ms: u64,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    TenantCreated {
        tenant: TenantId,
        name: Box<str>,
    },
    /// An item appears. `item` is where the engine put it; replay puts it at the same place.
    ItemCreated {
        item: ItemId,
        tenant: TenantId,
        sku: Box<str>,
        location: Box<str>,
    },
    /// A stock command (receive, adjust, set_on_hand, move, set_policy, import): its answer,
    /// remembered under its operation id, and the items it changed (none if refused).
    Stock {
        tenant: TenantId,
        memo: OperationMemo,
        changes: Vec<ItemChange>,
    },
    /// A reserve, granted or refused. Remembered under its reservation id.
    Reserved {
        tenant: TenantId,
        reservation: IdText,
        fingerprint: u64,
        deadline_ms: u64,
        reply: Reply,
        /// Per requested line (empty if refused).
        lines: Vec<ReservedLine>,
        changes: Vec<ItemChange>,
    },
    /// A later step in a reservation's life: commit, release, extend, expiry.
    Settled {
        tenant: TenantId,
        reservation: IdText,
        kind: SettleKind,
        /// Remembered under its operation id (`None` for engine-driven expiry).
        memo: Option<OperationMemo>,
        deadline_ms: u64,
        state: ReservationState,
        line_changes: Vec<LineChange>,
        changes: Vec<ItemChange>,
    },
    /// An operation refused without touching any reservation or item (unknown reservation,
    /// not open ...). Remembered so that a retry gets the same answer.
    Refused {
        tenant: TenantId,
        memo: OperationMemo,
    },
    /// Idempotency memory older than `before_ms` was dropped (retention).
    Forgotten {
        before_ms: u64,
    },
    /// Epoch `epoch` starts with this record (a standby was promoted). Every record after
    /// it, up to the next such record, was made by that epoch's primary.
    EpochChanged {
        epoch: u64,
    },
    /// The server's credential store changed (a token issued or revoked) just before this
    /// record. It changes nothing in the ledger: it marks the place in the log past which
    /// every node holds the new store (a standby gets the store ahead of the records that
    /// follow its change), so an answer that waits for this record's LSN waits for a standby
    /// that holds the store, and the standby furthest ahead always holds the newest one.
    CredentialsChanged,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationMemo {
    pub operation: IdText,
    pub fingerprint: u64,
    pub reply: Reply,
}

/// One item's change. `after` is the whole counter set once the change is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemChange {
    pub item: ItemId,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
    pub after: Counters,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedLine {
    pub item: ItemId,
    pub requested: i64,
    pub reserved: i64,
}

/// Units committed and released on line `line` of a reservation by one settle step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineChange {
    pub line: u16,
    pub committed: i64,
    pub released: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SettleKind {
    Commit,
    Release,
    Extend,
    Expire,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReservationState {
    /// Units reserved, nothing committed yet.
    Open,
    /// Some units committed, some still reserved.
    PartiallyCommitted,
    /// Nothing left reserved; some units were committed.
    Committed,
    /// Nothing left reserved, nothing committed: released by the client.
    Released,
    /// The deadline passed before everything was committed; the engine released the rest.
    Expired,
    /// The reserve was refused (its reply says why). Kept for idempotency only.
    Refused,
}

impl ReservationState {
    pub fn is_open(self) -> bool {
        matches!(self, ReservationState::Open | ReservationState::PartiallyCommitted)
    }
    pub fn name(self) -> &'static str {
        match self {
            ReservationState::Open => "open",
            ReservationState::PartiallyCommitted => "partially_committed",
            ReservationState::Committed => "committed",
            ReservationState::Released => "released",
            ReservationState::Expired => "expired",
            ReservationState::Refused => "refused",
        }
    }
}

impl Record {
    /// Items this record changes.
    pub fn changes(&self) -> &[ItemChange] {
        match &self.body {
            Body::Stock { changes, .. } | Body::Reserved { changes, .. } | Body::Settled { changes, .. } => changes,
            _ => &[],
        }
    }

    /// The tenant a record belongs to, if any.
    pub fn tenant(&self) -> Option<TenantId> {
        match &self.body {
            Body::TenantCreated { tenant, .. }
            | Body::ItemCreated { tenant, .. }
            | Body::Stock { tenant, .. }
            | Body::Reserved { tenant, .. }
            | Body::Settled { tenant, .. }
            | Body::Refused { tenant, .. } => Some(*tenant),
            Body::Forgotten { .. } | Body::EpochChanged { .. } | Body::CredentialsChanged => None,
        }
    }
}
