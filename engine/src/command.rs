//! Commands: everything that changes the ledger. Names and quantities arrive validated (the
//! newtypes refuse bad ones at the boundary, each with its own [`crate::ResultCode`]); what
//! only the engine can check (line counts, TTLs, state) it checks.

use crate::types::{Fnv64, Location, Name, OperationId, Quantity, ReservationId, Sku, TenantId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub sku: Sku,
    pub location: Location,
    pub quantity: Quantity,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRow {
    pub sku: Sku,
    pub location: Location,
    /// The new on_hand (as counted).
    pub on_hand: i64,
    pub safety_stock: Option<i64>,
    pub backorder_limit: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    CreateTenant {
        name: Name,
    },
    /// Reserves stock for an order's lines, all or nothing unless `allow_partial`.
    Reserve {
        tenant: TenantId,
        reservation: ReservationId,
        lines: Vec<Line>,
        ttl_ms: u64,
        allow_partial: bool,
    },
    /// Moves an open reservation's deadline to `now + ttl_ms`.
    Extend {
        tenant: TenantId,
        operation: OperationId,
        reservation: ReservationId,
        ttl_ms: u64,
    },
    /// Picks/ships: on_hand and reserved both drop. `lines: None` commits everything still open.
    Commit {
        tenant: TenantId,
        operation: OperationId,
        reservation: ReservationId,
        lines: Option<Vec<Line>>,
    },
    /// Gives reserved units back. `lines: None` releases everything still open.
    Release {
        tenant: TenantId,
        operation: OperationId,
        reservation: ReservationId,
        lines: Option<Vec<Line>>,
    },
    Receive {
        tenant: TenantId,
        operation: OperationId,
        sku: Sku,
        location: Location,
        quantity: Quantity,
    },
    /// A correction, + or -, with a reason (damage, found, ...).
    Adjust {
        tenant: TenantId,
        operation: OperationId,
        sku: Sku,
        location: Location,
        delta: i64,
        reason: Name,
    },
    /// A cycle count: on_hand := `on_hand`, if it is `expected` now (compare-and-set).
    SetOnHand {
        tenant: TenantId,
        operation: OperationId,
        sku: Sku,
        location: Location,
        expected: Option<i64>,
        on_hand: i64,
    },
    /// Moves units between two locations of one SKU, atomically.
    Move {
        tenant: TenantId,
        operation: OperationId,
        sku: Sku,
        from: Location,
        to: Location,
        quantity: Quantity,
    },
    SetPolicy {
        tenant: TenantId,
        operation: OperationId,
        sku: Sku,
        location: Location,
        safety_stock: i64,
        backorder_limit: i64,
    },
    /// Many items at once, a result per row. Each row is decided on its own.
    Import {
        tenant: TenantId,
        operation: OperationId,
        rows: Vec<ImportRow>,
    },
    /// Releases up to `limit` reservations whose deadline is at or before `now`.
    Expire {
        limit: usize,
    },
    /// Drops idempotency memory older than the retention (`Config::idempotency_retention_ms`).
    Forget,
    /// Starts epoch `epoch` (a promotion): every record after this one belongs to it. The
    /// node that runs it is the primary of that epoch (docs/operations.md, "Promotion").
    BeginEpoch {
        epoch: u64,
    },
    /// Marks a change of the server's credential store in the log (`Body::CredentialsChanged`).
    /// The server runs it after every token issue or revocation; the ledger is unchanged.
    MarkCredentialsChanged,
}

/// An import row's optional policy field into a fingerprint. `None` is hashed as -1 and a
/// value as itself, as they always were (remembered fingerprints, in snapshots and logs, stay
/// valid); a negative value (refused, but still part of the request) adds a marker after it.
/// Regression (audit): `Some(-1)` hashed like `None`, so a retry that changed one into the
/// other was taken for the same request and given the original outcome.
fn optional_policy(hash: Fnv64, value: Option<i64>) -> Fnv64 {
    match value {
        None => hash.i64(-1),
        Some(value) if value >= 0 => hash.i64(value),
        Some(value) => hash.i64(value).u64(u64::MAX),
    }
}

impl Command {
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateTenant { .. } => "create_tenant",
            Command::Reserve { .. } => "reserve",
            Command::Extend { .. } => "extend",
            Command::Commit { .. } => "commit",
            Command::Release { .. } => "release",
            Command::Receive { .. } => "receive",
            Command::Adjust { .. } => "adjust",
            Command::SetOnHand { .. } => "set_on_hand",
            Command::Move { .. } => "move",
            Command::SetPolicy { .. } => "set_policy",
            Command::Import { .. } => "import",
            Command::Expire { .. } => "expire",
            Command::Forget => "forget",
            Command::BeginEpoch { .. } => "begin_epoch",
            Command::MarkCredentialsChanged => "mark_credentials_changed",
        }
    }

    /// A stable 64-bit digest of everything in the request but its id: two requests with
    /// one id and equal fingerprints are the same request (a retry).
    pub fn fingerprint(&self) -> u64 {
        let hash = Fnv64::new().str(self.kind());
        let lines = |mut hash: Fnv64, lines: &[Line]| {
            hash = hash.u64(lines.len() as u64);
            for line in lines {
                hash = hash.str(line.sku.as_str()).str(line.location.as_str()).i64(line.quantity.get());
            }
            hash
        };
        let hash = match self {
            Command::CreateTenant { name } => hash.str(name.as_str()),
            Command::Reserve { tenant, lines: l, ttl_ms, allow_partial, .. } => {
                lines(hash.u64(u64::from(tenant.0)), l).u64(*ttl_ms).u64(u64::from(*allow_partial))
            }
            Command::Extend { tenant, reservation, ttl_ms, .. } => {
                hash.u64(u64::from(tenant.0)).str(reservation.as_str()).u64(*ttl_ms)
            }
            Command::Commit { tenant, reservation, lines: l, .. }
            | Command::Release { tenant, reservation, lines: l, .. } => {
                let hash = hash.u64(u64::from(tenant.0)).str(reservation.as_str());
                match l {
                    None => hash.u64(0),
                    Some(l) => lines(hash.u64(1), l),
                }
            }
            Command::Receive { tenant, sku, location, quantity, .. } => {
                hash.u64(u64::from(tenant.0)).str(sku.as_str()).str(location.as_str()).i64(quantity.get())
            }
            Command::Adjust { tenant, sku, location, delta, reason, .. } => {
                hash.u64(u64::from(tenant.0)).str(sku.as_str()).str(location.as_str()).i64(*delta).str(reason.as_str())
            }
            Command::SetOnHand { tenant, sku, location, expected, on_hand, .. } => hash
                .u64(u64::from(tenant.0))
                .str(sku.as_str())
                .str(location.as_str())
                .u64(u64::from(expected.is_some()))
                .i64(expected.unwrap_or(0))
                .i64(*on_hand),
            Command::Move { tenant, sku, from, to, quantity, .. } => {
                hash.u64(u64::from(tenant.0)).str(sku.as_str()).str(from.as_str()).str(to.as_str()).i64(quantity.get())
            }
            Command::SetPolicy { tenant, sku, location, safety_stock, backorder_limit, .. } => hash
                .u64(u64::from(tenant.0))
                .str(sku.as_str())
                .str(location.as_str())
                .i64(*safety_stock)
                .i64(*backorder_limit),
            Command::Import { tenant, rows, .. } => {
                let mut hash = hash.u64(u64::from(tenant.0)).u64(rows.len() as u64);
                for row in rows {
                    hash = hash.str(row.sku.as_str()).str(row.location.as_str()).i64(row.on_hand);
                    hash = optional_policy(optional_policy(hash, row.safety_stock), row.backorder_limit);
                }
                hash
            }
            Command::Expire { limit } => hash.u64(*limit as u64),
            Command::Forget => hash,
            Command::BeginEpoch { epoch } => hash.u64(*epoch),
            Command::MarkCredentialsChanged => hash,
        };
        hash.finish()
    }
}
