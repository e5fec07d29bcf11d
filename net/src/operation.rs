//! Operations (what a request asks) and their results (what a reply answers), with their
//! byte layouts (docs/protocol.md, "Operations" and "Results").
//!
//! Decoding is in two steps. The wire step ([`Operation`]) checks only structure: lengths,
//! counts, UTF-8, flag bytes. Names stay raw `String`s and quantities raw `i64`s, so a name
//! of 65 bytes or a quantity of 0 is a well-formed operation. The engine step
//! ([`Operation::to_action`]) builds the engine's validated types and answers a bad value
//! with the engine's own [`ResultCode`] (`name_too_long`, `quantity_not_positive`, ...) for
//! that operation alone: one bad name never makes a whole frame malformed.
//!
//! Credential operations (`issue_token`, `list_tenants`) are not engine commands: they
//! validate into an [`AdminAction`] that the server runs against its token store.

use reservoir_engine::{
    Command, Counters, Engine, ImportRow, ItemView, Line, LineResult, Location, Name, OperationId, Quantity, Reply,
    ReservationId, ReservationLineView, ReservationState, ReservationView, ResultCode, Sku, TenantId, IMPORT_ROWS_MAX,
    LINES_PER_RESERVATION_MAX, PAGE_ITEMS_MAX,
};

use crate::wire::{Reader, WireError, Writer, TENANTS_PER_LIST_MAX};

/// The kind byte of an operation and of its result. Stable: part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[non_exhaustive]
pub enum OperationKind {
    Reserve = 1,
    Extend = 2,
    Commit = 3,
    Release = 4,
    Receive = 5,
    Adjust = 6,
    SetOnHand = 7,
    Move = 8,
    SetPolicy = 9,
    Import = 10,
    GetItem = 32,
    GetSku = 33,
    ListItems = 34,
    GetReservation = 35,
    CreateTenant = 64,
    IssueToken = 65,
    ListTenants = 66,
    TakeSnapshot = 67,
    Status = 68,
    Promote = 69,
    IssueServiceToken = 70,
}

impl OperationKind {
    pub const ALL: &'static [OperationKind] = &[
        OperationKind::Reserve,
        OperationKind::Extend,
        OperationKind::Commit,
        OperationKind::Release,
        OperationKind::Receive,
        OperationKind::Adjust,
        OperationKind::SetOnHand,
        OperationKind::Move,
        OperationKind::SetPolicy,
        OperationKind::Import,
        OperationKind::GetItem,
        OperationKind::GetSku,
        OperationKind::ListItems,
        OperationKind::GetReservation,
        OperationKind::CreateTenant,
        OperationKind::IssueToken,
        OperationKind::ListTenants,
        OperationKind::TakeSnapshot,
        OperationKind::Status,
        OperationKind::Promote,
        OperationKind::IssueServiceToken,
    ];

    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn from_number(number: u8) -> Option<OperationKind> {
        OperationKind::ALL.iter().copied().find(|kind| kind.number() == number)
    }

    pub fn name(self) -> &'static str {
        match self {
            OperationKind::Reserve => "reserve",
            OperationKind::Extend => "extend",
            OperationKind::Commit => "commit",
            OperationKind::Release => "release",
            OperationKind::Receive => "receive",
            OperationKind::Adjust => "adjust",
            OperationKind::SetOnHand => "set_on_hand",
            OperationKind::Move => "move",
            OperationKind::SetPolicy => "set_policy",
            OperationKind::Import => "import",
            OperationKind::GetItem => "get_item",
            OperationKind::GetSku => "get_sku",
            OperationKind::ListItems => "list_items",
            OperationKind::GetReservation => "get_reservation",
            OperationKind::CreateTenant => "create_tenant",
            OperationKind::IssueToken => "issue_token",
            OperationKind::ListTenants => "list_tenants",
            OperationKind::TakeSnapshot => "take_snapshot",
            OperationKind::Status => "status",
            OperationKind::Promote => "promote",
            OperationKind::IssueServiceToken => "issue_service_token",
        }
    }

    /// Queries: they change nothing, write no record, and a standby may answer them.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            OperationKind::GetItem
                | OperationKind::GetSku
                | OperationKind::ListItems
                | OperationKind::GetReservation
                | OperationKind::ListTenants
                | OperationKind::Status
        )
    }

    /// Whether a standby runs this operation (queries, and the admin operations about the
    /// node itself); every other one it answers `not_primary`.
    pub fn runs_on_standby(self) -> bool {
        self.is_read_only() || matches!(self, OperationKind::Promote | OperationKind::TakeSnapshot)
    }

    /// Operations only an admin credential may send; a tenant credential gets `forbidden`.
    /// Every other operation needs a tenant credential (an admin one gets `forbidden`).
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            OperationKind::CreateTenant
                | OperationKind::IssueToken
                | OperationKind::ListTenants
                | OperationKind::TakeSnapshot
                | OperationKind::Status
                | OperationKind::Promote
                | OperationKind::IssueServiceToken
        )
    }

    /// Whether this kind's result is the engine's [`Reply`] ([`OperationResult::Reply`]): the
    /// kinds that are engine commands. Every other kind's result is a code and, only when it
    /// is `ok`, a body of its own (queries, and the credential operations `issue_token` and
    /// `list_tenants`, which the server answers itself).
    pub fn has_engine_reply(self) -> bool {
        match self {
            OperationKind::Reserve
            | OperationKind::Extend
            | OperationKind::Commit
            | OperationKind::Release
            | OperationKind::Receive
            | OperationKind::Adjust
            | OperationKind::SetOnHand
            | OperationKind::Move
            | OperationKind::SetPolicy
            | OperationKind::Import
            | OperationKind::CreateTenant
            | OperationKind::TakeSnapshot
            | OperationKind::Promote => true,
            OperationKind::GetItem
            | OperationKind::GetSku
            | OperationKind::ListItems
            | OperationKind::GetReservation
            | OperationKind::IssueToken
            | OperationKind::IssueServiceToken
            | OperationKind::ListTenants
            | OperationKind::Status => false,
        }
    }
}

/// One line of a reserve, commit or release, as it came off the wire (not yet validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireLine {
    pub sku: String,
    pub location: String,
    pub quantity: i64,
}

/// A credential that is not a tenant's: what `issue_service_token` mints. Stable numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Service {
    /// The operator's admin token.
    Admin = 1,
    /// A standby's replication token.
    Replication = 2,
}

impl Service {
    pub const ALL: &'static [Service] = &[Service::Admin, Service::Replication];

    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn from_number(number: u8) -> Option<Service> {
        Service::ALL.iter().copied().find(|service| service.number() == number)
    }

    pub fn name(self) -> &'static str {
        match self {
            Service::Admin => "admin",
            Service::Replication => "replication",
        }
    }
}

/// One row of an import, as it came off the wire (not yet validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireImportRow {
    pub sku: String,
    pub location: String,
    pub on_hand: i64,
    pub safety_stock: Option<i64>,
    pub backorder_limit: Option<i64>,
}

/// One operation of a request. The tenant is not in it: tenant operations act on the
/// connection's tenant (its credential); admin operations name their tenant.
///
/// `IssueToken` mints a new bearer token for `tenant` and, with `revoke_others`, revokes the
/// tenant's earlier tokens (a rotation); it is not idempotent (a retry mints another token).
/// `IssueServiceToken` does the same for the node's own credentials: the operator's admin
/// token or the standbys' replication token.
/// `ListTenants` lists every tenant with its count of live tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Reserve {
        reservation: String,
        ttl_ms: u64,
        allow_partial: bool,
        lines: Vec<WireLine>,
    },
    Extend {
        operation: String,
        reservation: String,
        ttl_ms: u64,
    },
    Commit {
        operation: String,
        reservation: String,
        lines: Option<Vec<WireLine>>,
    },
    Release {
        operation: String,
        reservation: String,
        lines: Option<Vec<WireLine>>,
    },
    Receive {
        operation: String,
        sku: String,
        location: String,
        quantity: i64,
    },
    Adjust {
        operation: String,
        sku: String,
        location: String,
        delta: i64,
        reason: String,
    },
    SetOnHand {
        operation: String,
        sku: String,
        location: String,
        expected: Option<i64>,
        on_hand: i64,
    },
    Move {
        operation: String,
        sku: String,
        from: String,
        to: String,
        quantity: i64,
    },
    SetPolicy {
        operation: String,
        sku: String,
        location: String,
        safety_stock: i64,
        backorder_limit: i64,
    },
    Import {
        operation: String,
        rows: Vec<WireImportRow>,
    },
    GetItem {
        sku: String,
        location: String,
    },
    GetSku {
        sku: String,
    },
    ListItems {
        cursor: u64,
        limit: u32,
    },
    GetReservation {
        reservation: String,
    },
    CreateTenant {
        name: String,
    },
    IssueToken {
        tenant: String,
        revoke_others: bool,
    },
    /// Mints an admin or a replication token (admin); with `revoke_others`, every earlier
    /// token of that service stops working.
    IssueServiceToken {
        service: Service,
        revoke_others: bool,
    },
    ListTenants,
    /// Asks the server to take a snapshot now (admin). The reply is the engine-reply shape:
    /// `ok` with `count` = the durable LSN the snapshot will cover at least.
    TakeSnapshot,
    /// The node's replication status (admin; a standby answers it): a JSON document,
    /// docs/protocol.md, "status".
    Status,
    /// Promotes a standby to primary (admin, sent to the standby). The reply is the
    /// engine-reply shape: `ok` with `count` = the new epoch.
    Promote,
}

/// A read-only operation, validated, for [`run_query`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Item { tenant: TenantId, sku: Sku, location: Location },
    Sku { tenant: TenantId, sku: Sku },
    TenantItems { tenant: TenantId, cursor: u64, limit: usize },
    Reservation { tenant: TenantId, reservation: ReservationId },
}

/// A credential operation, validated: the server runs it against its token store (tokens
/// are not the engine's) and answers [`OperationResult::Token`] / [`OperationResult::Tenants`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminAction {
    /// Mint a token for `tenant` (and, with `revoke_others`, revoke its earlier ones). The
    /// server answers `unknown_tenant` when no such tenant exists.
    IssueToken { tenant: Name, revoke_others: bool },
    /// Mint an admin or replication token (and, with `revoke_others`, revoke the earlier ones).
    IssueServiceToken { service: Service, revoke_others: bool },
    /// List every tenant (at most `TENANTS_PER_LIST_MAX`) with its count of live tokens.
    ListTenants,
    /// Take a snapshot now, in the background (the server's snapshotter).
    TakeSnapshot,
    /// Report the node's role, epoch, LSNs and replication lag.
    Status,
    /// Promote this standby to primary of the next epoch.
    Promote,
}

/// What an operation becomes once validated: an engine command, a query, or an admin action
/// the server runs itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Command(Command),
    Query(Query),
    Admin(AdminAction),
}

/// Bytes of the smallest encoded line (two empty strings and a quantity) and row.
const LINE_BYTES_MIN: usize = 1 + 1 + 8;
const ROW_BYTES_MIN: usize = 1 + 1 + 8 + 1 + 1;
/// Bytes of the smallest encoded operation: `list_tenants`, a kind byte alone.
pub(crate) const OPERATION_BYTES_MIN: usize = 1;
/// Bytes of the smallest encoded result (a kind byte and a code).
pub(crate) const RESULT_BYTES_MIN: usize = 3;
const LINE_RESULT_BYTES: usize = 2 + 3 * 8;
const ITEM_STATE_BYTES_MIN: usize = 1 + 1 + COUNTERS_BYTES;
const COUNTERS_BYTES: usize = 6 * 8;
const RESERVATION_LINE_BYTES_MIN: usize = 1 + 1 + 4 * 8;
/// Bytes of the smallest tenant entry of `list_tenants` (an empty name and a token count).
const TENANT_ENTRY_BYTES_MIN: usize = 1 + 4;
/// Lines of a reply (a per-row result per import row at most) and of a reservation view.
const REPLY_LINES_MAX: usize = IMPORT_ROWS_MAX;

fn name<T>(text: &str, make: impl FnOnce(&str) -> Result<T, reservoir_engine::NameError>) -> Result<T, ResultCode> {
    make(text).map_err(ResultCode::from)
}

fn engine_lines(lines: &[WireLine]) -> Result<Vec<Line>, ResultCode> {
    if lines.len() > LINES_PER_RESERVATION_MAX {
        return Err(ResultCode::TooManyLines);
    }
    lines
        .iter()
        .map(|line| {
            Ok(Line {
                sku: name(&line.sku, Sku::new)?,
                location: name(&line.location, Location::new)?,
                quantity: Quantity::new(line.quantity)?,
            })
        })
        .collect()
}

impl Operation {
    /// This operation as the decoder returns it: import rows past `IMPORT_ROWS_MAX + 1` and
    /// lines past `LINES_PER_RESERVATION_MAX + 1` are read and dropped (one past the maximum
    /// is enough for `too_many_rows` and `too_many_lines`).
    pub fn as_decoded(&self) -> Operation {
        let mut operation = self.clone();
        match &mut operation {
            Operation::Import { rows, .. } => rows.truncate(IMPORT_ROWS_MAX + 1),
            Operation::Reserve { lines, .. }
            | Operation::Commit { lines: Some(lines), .. }
            | Operation::Release { lines: Some(lines), .. } => lines.truncate(LINES_PER_RESERVATION_MAX + 1),
            _ => {}
        }
        operation
    }

    /// Whether it mints a token: not idempotent (it carries no id), so never resent when its
    /// outcome is unknown.
    pub fn mints_a_token(&self) -> bool {
        matches!(self, Operation::IssueToken { .. } | Operation::IssueServiceToken { .. })
    }

    /// What the operation costs against its tenant's rate: one per row of an import (each
    /// row writes an item, and an import may carry `IMPORT_ROWS_MAX` of them); a reserve, or a
    /// commit or release naming its lines, one and one more per
    /// `RESERVATION_LINES_PER_ENTRY` (6) lines, as it counts in the idempotency memory; one for
    /// any other operation. The server caps a cost at the tenant's burst and charges a retried
    /// import (its id remembered) one. Regression (found by audit): an import of 10,000 rows
    /// cost one, so a tenant could write 10,000 times its rate; (review, eleventh session) a
    /// reserve of 64 lines cost what one of 1 line did.
    pub fn rate_units(&self) -> u32 {
        match self {
            Operation::Import { rows, .. } => u32::try_from(rows.len()).unwrap_or(u32::MAX).max(1),
            Operation::Reserve { lines, .. }
            | Operation::Commit { lines: Some(lines), .. }
            | Operation::Release { lines: Some(lines), .. } => {
                reservoir_engine::reservation_weight(lines.len().min(LINES_PER_RESERVATION_MAX + 1))
            }
            _ => 1,
        }
    }

    pub fn kind(&self) -> OperationKind {
        match self {
            Operation::Reserve { .. } => OperationKind::Reserve,
            Operation::Extend { .. } => OperationKind::Extend,
            Operation::Commit { .. } => OperationKind::Commit,
            Operation::Release { .. } => OperationKind::Release,
            Operation::Receive { .. } => OperationKind::Receive,
            Operation::Adjust { .. } => OperationKind::Adjust,
            Operation::SetOnHand { .. } => OperationKind::SetOnHand,
            Operation::Move { .. } => OperationKind::Move,
            Operation::SetPolicy { .. } => OperationKind::SetPolicy,
            Operation::Import { .. } => OperationKind::Import,
            Operation::GetItem { .. } => OperationKind::GetItem,
            Operation::GetSku { .. } => OperationKind::GetSku,
            Operation::ListItems { .. } => OperationKind::ListItems,
            Operation::GetReservation { .. } => OperationKind::GetReservation,
            Operation::CreateTenant { .. } => OperationKind::CreateTenant,
            Operation::IssueToken { .. } => OperationKind::IssueToken,
            Operation::IssueServiceToken { .. } => OperationKind::IssueServiceToken,
            Operation::ListTenants => OperationKind::ListTenants,
            Operation::TakeSnapshot => OperationKind::TakeSnapshot,
            Operation::Status => OperationKind::Status,
            Operation::Promote => OperationKind::Promote,
        }
    }

    /// Validates the operation into an engine command or a query on `tenant` (the
    /// connection's tenant; ignored by admin operations, which the server must check with
    /// [`OperationKind::is_admin`] first), or into an [`AdminAction`] (`issue_token`,
    /// `list_tenants`). A bad name or quantity is the engine's own code, for this operation
    /// only; the server answers it with [`OperationResult::refused`].
    pub fn to_action(&self, tenant: TenantId) -> Result<Action, ResultCode> {
        let operation_id = |text: &str| name(text, OperationId::new);
        let command = match self {
            Operation::Reserve { reservation, ttl_ms, allow_partial, lines } => Command::Reserve {
                tenant,
                reservation: name(reservation, ReservationId::new)?,
                lines: engine_lines(lines)?,
                ttl_ms: *ttl_ms,
                allow_partial: *allow_partial,
            },
            Operation::Extend { operation, reservation, ttl_ms } => Command::Extend {
                tenant,
                operation: operation_id(operation)?,
                reservation: name(reservation, ReservationId::new)?,
                ttl_ms: *ttl_ms,
            },
            Operation::Commit { operation, reservation, lines } => Command::Commit {
                tenant,
                operation: operation_id(operation)?,
                reservation: name(reservation, ReservationId::new)?,
                lines: lines.as_deref().map(engine_lines).transpose()?,
            },
            Operation::Release { operation, reservation, lines } => Command::Release {
                tenant,
                operation: operation_id(operation)?,
                reservation: name(reservation, ReservationId::new)?,
                lines: lines.as_deref().map(engine_lines).transpose()?,
            },
            Operation::Receive { operation, sku, location, quantity } => Command::Receive {
                tenant,
                operation: operation_id(operation)?,
                sku: name(sku, Sku::new)?,
                location: name(location, Location::new)?,
                quantity: Quantity::new(*quantity)?,
            },
            Operation::Adjust { operation, sku, location, delta, reason } => Command::Adjust {
                tenant,
                operation: operation_id(operation)?,
                sku: name(sku, Sku::new)?,
                location: name(location, Location::new)?,
                delta: *delta,
                reason: name(reason, Name::new)?,
            },
            Operation::SetOnHand { operation, sku, location, expected, on_hand } => Command::SetOnHand {
                tenant,
                operation: operation_id(operation)?,
                sku: name(sku, Sku::new)?,
                location: name(location, Location::new)?,
                expected: *expected,
                on_hand: *on_hand,
            },
            Operation::Move { operation, sku, from, to, quantity } => Command::Move {
                tenant,
                operation: operation_id(operation)?,
                sku: name(sku, Sku::new)?,
                from: name(from, Location::new)?,
                to: name(to, Location::new)?,
                quantity: Quantity::new(*quantity)?,
            },
            Operation::SetPolicy { operation, sku, location, safety_stock, backorder_limit } => Command::SetPolicy {
                tenant,
                operation: operation_id(operation)?,
                sku: name(sku, Sku::new)?,
                location: name(location, Location::new)?,
                safety_stock: *safety_stock,
                backorder_limit: *backorder_limit,
            },
            Operation::Import { operation, rows } => {
                if rows.len() > IMPORT_ROWS_MAX {
                    return Err(ResultCode::TooManyRows);
                }
                let operation = operation_id(operation)?;
                let rows = rows
                    .iter()
                    .map(|row| {
                        Ok(ImportRow {
                            sku: name(&row.sku, Sku::new)?,
                            location: name(&row.location, Location::new)?,
                            on_hand: row.on_hand,
                            safety_stock: row.safety_stock,
                            backorder_limit: row.backorder_limit,
                        })
                    })
                    .collect::<Result<Vec<_>, ResultCode>>()?;
                Command::Import { tenant, operation, rows }
            }
            Operation::CreateTenant { name: tenant_name } => {
                Command::CreateTenant { name: name(tenant_name, Name::new)? }
            }
            Operation::GetItem { sku, location } => {
                return Ok(Action::Query(Query::Item {
                    tenant,
                    sku: name(sku, Sku::new)?,
                    location: name(location, Location::new)?,
                }))
            }
            Operation::GetSku { sku } => return Ok(Action::Query(Query::Sku { tenant, sku: name(sku, Sku::new)? })),
            Operation::ListItems { cursor, limit } => {
                let limit = (*limit as usize).clamp(1, PAGE_ITEMS_MAX);
                return Ok(Action::Query(Query::TenantItems { tenant, cursor: *cursor, limit }));
            }
            Operation::GetReservation { reservation } => {
                return Ok(Action::Query(Query::Reservation {
                    tenant,
                    reservation: name(reservation, ReservationId::new)?,
                }))
            }
            Operation::IssueToken { tenant: tenant_name, revoke_others } => {
                return Ok(Action::Admin(AdminAction::IssueToken {
                    tenant: name(tenant_name, Name::new)?,
                    revoke_others: *revoke_others,
                }))
            }
            Operation::IssueServiceToken { service, revoke_others } => {
                return Ok(Action::Admin(AdminAction::IssueServiceToken {
                    service: *service,
                    revoke_others: *revoke_others,
                }))
            }
            Operation::ListTenants => return Ok(Action::Admin(AdminAction::ListTenants)),
            Operation::TakeSnapshot => return Ok(Action::Admin(AdminAction::TakeSnapshot)),
            Operation::Status => return Ok(Action::Admin(AdminAction::Status)),
            Operation::Promote => return Ok(Action::Admin(AdminAction::Promote)),
        };
        debug_assert!(self.kind().has_engine_reply(), "queries and admin actions returned above");
        debug_assert_eq!(command.kind(), self.kind().name(), "operation and command kinds agree");
        Ok(Action::Command(command))
    }

    pub(crate) fn encode(&self, writer: &mut Writer<'_>) {
        writer.u8(self.kind().number());
        match self {
            Operation::Reserve { reservation, ttl_ms, allow_partial, lines } => {
                writer.string("reservation", reservation);
                writer.u64(*ttl_ms);
                writer.flag(*allow_partial);
                encode_lines(writer, lines);
            }
            Operation::Extend { operation, reservation, ttl_ms } => {
                writer.string("operation", operation);
                writer.string("reservation", reservation);
                writer.u64(*ttl_ms);
            }
            Operation::Commit { operation, reservation, lines }
            | Operation::Release { operation, reservation, lines } => {
                writer.string("operation", operation);
                writer.string("reservation", reservation);
                writer.flag(lines.is_some());
                if let Some(lines) = lines {
                    encode_lines(writer, lines);
                }
            }
            Operation::Receive { operation, sku, location, quantity } => {
                writer.string("operation", operation);
                writer.string("sku", sku);
                writer.string("location", location);
                writer.i64(*quantity);
            }
            Operation::Adjust { operation, sku, location, delta, reason } => {
                writer.string("operation", operation);
                writer.string("sku", sku);
                writer.string("location", location);
                writer.i64(*delta);
                writer.string("reason", reason);
            }
            Operation::SetOnHand { operation, sku, location, expected, on_hand } => {
                writer.string("operation", operation);
                writer.string("sku", sku);
                writer.string("location", location);
                writer.option_i64(*expected);
                writer.i64(*on_hand);
            }
            Operation::Move { operation, sku, from, to, quantity } => {
                writer.string("operation", operation);
                writer.string("sku", sku);
                writer.string("from", from);
                writer.string("to", to);
                writer.i64(*quantity);
            }
            Operation::SetPolicy { operation, sku, location, safety_stock, backorder_limit } => {
                writer.string("operation", operation);
                writer.string("sku", sku);
                writer.string("location", location);
                writer.i64(*safety_stock);
                writer.i64(*backorder_limit);
            }
            Operation::Import { operation, rows } => {
                writer.string("operation", operation);
                writer.count_u32("import rows", rows.len(), u32::MAX as usize);
                for row in rows {
                    writer.string("sku", &row.sku);
                    writer.string("location", &row.location);
                    writer.i64(row.on_hand);
                    writer.option_i64(row.safety_stock);
                    writer.option_i64(row.backorder_limit);
                }
            }
            Operation::GetItem { sku, location } => {
                writer.string("sku", sku);
                writer.string("location", location);
            }
            Operation::GetSku { sku } => writer.string("sku", sku),
            Operation::ListItems { cursor, limit } => {
                writer.u64(*cursor);
                writer.u32(*limit);
            }
            Operation::GetReservation { reservation } => writer.string("reservation", reservation),
            Operation::CreateTenant { name } => writer.string("tenant name", name),
            Operation::IssueToken { tenant, revoke_others } => {
                writer.string("tenant name", tenant);
                writer.flag(*revoke_others);
            }
            Operation::IssueServiceToken { service, revoke_others } => {
                writer.u8(service.number());
                writer.flag(*revoke_others);
            }
            Operation::ListTenants | Operation::TakeSnapshot | Operation::Status | Operation::Promote => {}
        }
    }

    /// Decodes one operation of request `request_id` (named in an unknown-operation error).
    pub(crate) fn decode(reader: &mut Reader<'_>, request_id: u64) -> Result<Operation, WireError> {
        let at = reader.at();
        let number = reader.u8()?;
        let kind =
            OperationKind::from_number(number).ok_or(WireError::UnknownOperation { request_id, kind: number, at })?;
        let operation = match kind {
            OperationKind::Reserve => Operation::Reserve {
                reservation: reader.string("reservation")?,
                ttl_ms: reader.u64()?,
                allow_partial: reader.flag("allow_partial")?,
                lines: decode_lines(reader)?,
            },
            OperationKind::Extend => Operation::Extend {
                operation: reader.string("operation")?,
                reservation: reader.string("reservation")?,
                ttl_ms: reader.u64()?,
            },
            OperationKind::Commit | OperationKind::Release => {
                let operation = reader.string("operation")?;
                let reservation = reader.string("reservation")?;
                let lines = if reader.flag("lines presence")? { Some(decode_lines(reader)?) } else { None };
                if kind == OperationKind::Commit {
                    Operation::Commit { operation, reservation, lines }
                } else {
                    Operation::Release { operation, reservation, lines }
                }
            }
            OperationKind::Receive => Operation::Receive {
                operation: reader.string("operation")?,
                sku: reader.string("sku")?,
                location: reader.string("location")?,
                quantity: reader.i64()?,
            },
            OperationKind::Adjust => Operation::Adjust {
                operation: reader.string("operation")?,
                sku: reader.string("sku")?,
                location: reader.string("location")?,
                delta: reader.i64()?,
                reason: reader.string("reason")?,
            },
            OperationKind::SetOnHand => Operation::SetOnHand {
                operation: reader.string("operation")?,
                sku: reader.string("sku")?,
                location: reader.string("location")?,
                expected: reader.option_i64("expected presence")?,
                on_hand: reader.i64()?,
            },
            OperationKind::Move => Operation::Move {
                operation: reader.string("operation")?,
                sku: reader.string("sku")?,
                from: reader.string("from")?,
                to: reader.string("to")?,
                quantity: reader.i64()?,
            },
            OperationKind::SetPolicy => Operation::SetPolicy {
                operation: reader.string("operation")?,
                sku: reader.string("sku")?,
                location: reader.string("location")?,
                safety_stock: reader.i64()?,
                backorder_limit: reader.i64()?,
            },
            OperationKind::Import => {
                let operation = reader.string("operation")?;
                let count = reader.count_u32("import rows", u32::MAX as usize, ROW_BYTES_MIN)?;
                // Rows past one more than `IMPORT_ROWS_MAX` are read and dropped: that one is
                // enough for `too_many_rows` (regression, review, eleventh session: the
                // capacity of a 2 MiB frame's ~170 k empty rows was reserved, ~7x the frame).
                let mut rows = Vec::with_capacity(count.min(IMPORT_ROWS_MAX + 1));
                for _ in 0..count {
                    let row = WireImportRow {
                        sku: reader.string("sku")?,
                        location: reader.string("location")?,
                        on_hand: reader.i64()?,
                        safety_stock: reader.option_i64("safety_stock presence")?,
                        backorder_limit: reader.option_i64("backorder_limit presence")?,
                    };
                    if rows.len() <= IMPORT_ROWS_MAX {
                        rows.push(row);
                    }
                }
                debug_assert!(rows.len() <= IMPORT_ROWS_MAX + 1 && rows.capacity() <= IMPORT_ROWS_MAX + 1);
                Operation::Import { operation, rows }
            }
            OperationKind::GetItem => {
                Operation::GetItem { sku: reader.string("sku")?, location: reader.string("location")? }
            }
            OperationKind::GetSku => Operation::GetSku { sku: reader.string("sku")? },
            OperationKind::ListItems => Operation::ListItems { cursor: reader.u64()?, limit: reader.u32()? },
            OperationKind::GetReservation => Operation::GetReservation { reservation: reader.string("reservation")? },
            OperationKind::CreateTenant => Operation::CreateTenant { name: reader.string("tenant name")? },
            OperationKind::IssueToken => Operation::IssueToken {
                tenant: reader.string("tenant name")?,
                revoke_others: reader.flag("revoke_others")?,
            },
            OperationKind::IssueServiceToken => {
                let at = reader.at();
                let number = reader.u8()?;
                let service = Service::from_number(number).ok_or(WireError::BadValue {
                    what: "token service",
                    value: u64::from(number),
                    at,
                })?;
                Operation::IssueServiceToken { service, revoke_others: reader.flag("revoke_others")? }
            }
            OperationKind::ListTenants => Operation::ListTenants,
            OperationKind::TakeSnapshot => Operation::TakeSnapshot,
            OperationKind::Status => Operation::Status,
            OperationKind::Promote => Operation::Promote,
        };
        debug_assert_eq!(operation.kind(), kind);
        Ok(operation)
    }
}

fn encode_lines(writer: &mut Writer<'_>, lines: &[WireLine]) {
    writer.count_u16("lines", lines.len(), usize::from(u16::MAX));
    for line in lines {
        writer.string("sku", &line.sku);
        writer.string("location", &line.location);
        writer.i64(line.quantity);
    }
}

fn decode_lines(reader: &mut Reader<'_>) -> Result<Vec<WireLine>, WireError> {
    // The wire bound is the field's width (and the bytes left), not LINES_PER_RESERVATION_MAX:
    // more lines than that is the engine's `too_many_lines`, for this operation only.
    // Past one more than the maximum, lines are read and dropped, as an import's rows are.
    let count = reader.count_u16("lines", usize::from(u16::MAX), LINE_BYTES_MIN)?;
    let mut lines = Vec::with_capacity(count.min(LINES_PER_RESERVATION_MAX + 1));
    for _ in 0..count {
        let line =
            WireLine { sku: reader.string("sku")?, location: reader.string("location")?, quantity: reader.i64()? };
        if lines.len() <= LINES_PER_RESERVATION_MAX {
            lines.push(line);
        }
    }
    Ok(lines)
}

/// One item as a query reply carries it (the engine's `ItemView` without its internal id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemState {
    pub sku: String,
    pub location: String,
    pub counters: Counters,
}

impl From<&ItemView> for ItemState {
    fn from(view: &ItemView) -> ItemState {
        ItemState { sku: view.sku.clone(), location: view.location.clone(), counters: view.counters }
    }
}

/// The reply to `get_sku`: the SKU's total over every location, and its locations (at most
/// `PAGE_ITEMS_MAX` of them; `location_count` says how many there are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkuSummary {
    pub location_count: u32,
    pub total: Counters,
    pub locations: Vec<ItemState>,
}

/// The reply to `list_items`: a page, and the cursor of the next one (`None` at the end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemPage {
    pub items: Vec<ItemState>,
    pub next_cursor: Option<u64>,
}

/// One tenant of a `list_tenants` result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantEntry {
    pub name: String,
    /// How many live (issued, not revoked) tokens the tenant has.
    pub tokens: u32,
}

/// The result of one operation, in a reply. Every variant but `Reply` is a code and, only
/// when it is `ok`, a body: their `Err` is never an ok code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationResult {
    /// Every mutation (reserve .. import, create_tenant): the engine's reply, whose `lines`
    /// are per line (reserve, commit, release) or per row (import).
    Reply {
        kind: OperationKind,
        reply: Reply,
    },
    Item(Result<ItemState, ResultCode>),
    Sku(Result<SkuSummary, ResultCode>),
    Items(Result<ItemPage, ResultCode>),
    Reservation(Result<ReservationView, ResultCode>),
    /// `issue_token`: the new bearer token (a secret: never log it).
    Token(Result<String, ResultCode>),
    /// `issue_service_token`: the new admin or replication token (a secret: never log it).
    ServiceToken(Result<String, ResultCode>),
    /// `list_tenants`: at most `TENANTS_PER_LIST_MAX` entries.
    Tenants(Result<Vec<TenantEntry>, ResultCode>),
    /// `status`: a JSON document of at most `STATUS_BYTES_MAX` bytes.
    Status(Result<String, ResultCode>),
}

impl OperationResult {
    /// Items this result carries (a page's, a SKU summary's named locations, a reservation's
    /// lines and its reply's line results): what counts against [`QUERY_ITEMS_PER_REQUEST_MAX`].
    pub fn items(&self) -> usize {
        match self {
            OperationResult::Items(Ok(page)) => page.items.len(),
            OperationResult::Sku(Ok(summary)) => summary.locations.len(),
            OperationResult::Reservation(Ok(view)) => reservation_items(view),
            _ => 0,
        }
    }
}

/// Bytes of a `status` document at most.
pub const STATUS_BYTES_MAX: usize = 60_000;

impl OperationResult {
    /// The result of an operation of `kind` that was not run because it did not validate.
    pub fn refused(kind: OperationKind, code: ResultCode) -> OperationResult {
        debug_assert!(!code.is_ok(), "a refusal has a refusal's code");
        match kind {
            OperationKind::GetItem => OperationResult::Item(Err(code)),
            OperationKind::GetSku => OperationResult::Sku(Err(code)),
            OperationKind::ListItems => OperationResult::Items(Err(code)),
            OperationKind::GetReservation => OperationResult::Reservation(Err(code)),
            OperationKind::IssueToken => OperationResult::Token(Err(code)),
            OperationKind::IssueServiceToken => OperationResult::ServiceToken(Err(code)),
            OperationKind::ListTenants => OperationResult::Tenants(Err(code)),
            OperationKind::Status => OperationResult::Status(Err(code)),
            kind => {
                debug_assert!(kind.has_engine_reply());
                OperationResult::Reply { kind, reply: Reply::code(code) }
            }
        }
    }

    pub fn kind(&self) -> OperationKind {
        match self {
            OperationResult::Reply { kind, .. } => *kind,
            OperationResult::Item(_) => OperationKind::GetItem,
            OperationResult::Sku(_) => OperationKind::GetSku,
            OperationResult::Items(_) => OperationKind::ListItems,
            OperationResult::Reservation(_) => OperationKind::GetReservation,
            OperationResult::Token(_) => OperationKind::IssueToken,
            OperationResult::ServiceToken(_) => OperationKind::IssueServiceToken,
            OperationResult::Tenants(_) => OperationKind::ListTenants,
            OperationResult::Status(_) => OperationKind::Status,
        }
    }

    /// The operation's result code.
    pub fn code(&self) -> ResultCode {
        fn of<T>(result: &Result<T, ResultCode>) -> ResultCode {
            result.as_ref().err().copied().unwrap_or(ResultCode::Ok)
        }
        match self {
            OperationResult::Reply { reply, .. } => reply.code,
            OperationResult::Item(result) => of(result),
            OperationResult::Sku(result) => of(result),
            OperationResult::Items(result) => of(result),
            OperationResult::Reservation(result) => of(result),
            OperationResult::Token(result) | OperationResult::ServiceToken(result) => of(result),
            OperationResult::Tenants(result) => of(result),
            OperationResult::Status(result) => of(result),
        }
    }

    pub(crate) fn encode(&self, writer: &mut Writer<'_>) {
        writer.u8(self.kind().number());
        // A query's (or credential operation's) result body follows only an `ok` code.
        fn query<T>(writer: &mut Writer<'_>, result: &Result<T, ResultCode>, body: impl FnOnce(&mut Writer<'_>, &T)) {
            match result {
                Ok(value) => {
                    writer.u16(ResultCode::Ok.number());
                    body(writer, value);
                }
                Err(code) => {
                    if code.is_ok() {
                        writer.fail("query result", "an Err with an ok code");
                    }
                    writer.u16(code.number());
                }
            }
        }
        match self {
            OperationResult::Reply { kind, reply } => {
                if !kind.has_engine_reply() {
                    writer.fail("operation result", "an engine reply for a kind that does not answer one");
                }
                encode_reply(writer, reply);
            }
            OperationResult::Item(result) => query(writer, result, encode_item),
            OperationResult::Sku(result) => query(writer, result, |writer, summary| {
                writer.u32(summary.location_count);
                encode_counters(writer, &summary.total);
                encode_items(writer, &summary.locations);
            }),
            OperationResult::Items(result) => query(writer, result, |writer, page| {
                writer.flag(page.next_cursor.is_some());
                if let Some(cursor) = page.next_cursor {
                    writer.u64(cursor);
                }
                encode_items(writer, &page.items);
            }),
            OperationResult::Reservation(result) => query(writer, result, |writer, view| {
                writer.string("reservation", &view.reservation);
                writer.u8(state_number(view.state));
                writer.u64(view.deadline_ms);
                writer.count_u16("reservation lines", view.lines.len(), usize::from(u16::MAX));
                for line in &view.lines {
                    writer.string("sku", &line.sku);
                    writer.string("location", &line.location);
                    writer.i64(line.requested);
                    writer.i64(line.reserved);
                    writer.i64(line.committed);
                    writer.i64(line.released);
                }
                encode_reply(writer, &view.reply);
            }),
            OperationResult::Token(result) | OperationResult::ServiceToken(result) => {
                query(writer, result, |writer, token| writer.string("token", token))
            }
            OperationResult::Status(result) => query(writer, result, |writer, document| {
                writer.bytes_u16("status document", document.as_bytes(), STATUS_BYTES_MAX)
            }),
            OperationResult::Tenants(result) => query(writer, result, |writer, tenants| {
                writer.count_u32("tenants", tenants.len(), TENANTS_PER_LIST_MAX);
                for tenant in tenants {
                    writer.string("tenant name", &tenant.name);
                    writer.u32(tenant.tokens);
                }
            }),
        }
    }

    pub(crate) fn decode(reader: &mut Reader<'_>) -> Result<OperationResult, WireError> {
        let at = reader.at();
        let number = reader.u8()?;
        let kind = OperationKind::from_number(number).ok_or(WireError::BadValue {
            what: "result kind",
            value: u64::from(number),
            at,
        })?;
        if kind.has_engine_reply() {
            return Ok(OperationResult::Reply { kind, reply: decode_reply(reader)? });
        }
        let at = reader.at();
        let code = decode_code(reader)?;
        if code == ResultCode::OkPartial {
            return Err(WireError::BadValue {
                what: "result code without a reply",
                value: u64::from(code.number()),
                at,
            });
        }
        if code != ResultCode::Ok {
            return Ok(OperationResult::refused(kind, code));
        }
        let result = match kind {
            OperationKind::GetItem => OperationResult::Item(Ok(decode_item(reader)?)),
            OperationKind::GetSku => OperationResult::Sku(Ok(SkuSummary {
                location_count: reader.u32()?,
                total: decode_counters(reader)?,
                locations: decode_items(reader)?,
            })),
            OperationKind::ListItems => {
                let next_cursor = if reader.flag("next cursor presence")? { Some(reader.u64()?) } else { None };
                OperationResult::Items(Ok(ItemPage { next_cursor, items: decode_items(reader)? }))
            }
            OperationKind::IssueToken => OperationResult::Token(Ok(reader.string("token")?)),
            OperationKind::IssueServiceToken => OperationResult::ServiceToken(Ok(reader.string("token")?)),
            OperationKind::Status => {
                OperationResult::Status(Ok(reader.string_u16("status document", STATUS_BYTES_MAX)?))
            }
            OperationKind::ListTenants => {
                let count = reader.count_u32("tenants", TENANTS_PER_LIST_MAX, TENANT_ENTRY_BYTES_MIN)?;
                let mut tenants = Vec::with_capacity(count);
                for _ in 0..count {
                    tenants.push(TenantEntry { name: reader.string("tenant name")?, tokens: reader.u32()? });
                }
                OperationResult::Tenants(Ok(tenants))
            }
            _ => {
                debug_assert_eq!(kind, OperationKind::GetReservation);
                let reservation = reader.string("reservation")?;
                let at = reader.at();
                let state_byte = reader.u8()?;
                let state = state_from(state_byte).ok_or(WireError::BadValue {
                    what: "reservation state",
                    value: u64::from(state_byte),
                    at,
                })?;
                let deadline_ms = reader.u64()?;
                let count = reader.count_u16("reservation lines", usize::from(u16::MAX), RESERVATION_LINE_BYTES_MIN)?;
                let mut lines = Vec::with_capacity(count);
                for _ in 0..count {
                    lines.push(ReservationLineView {
                        sku: reader.string("sku")?,
                        location: reader.string("location")?,
                        requested: reader.i64()?,
                        reserved: reader.i64()?,
                        committed: reader.i64()?,
                        released: reader.i64()?,
                    });
                }
                let reply = decode_reply(reader)?;
                OperationResult::Reservation(Ok(ReservationView { reservation, state, deadline_ms, lines, reply }))
            }
        };
        Ok(result)
    }
}

/// Items the queries of one request return together at most (`list_items` pages and the
/// locations of `get_sku` summaries): one full page. Past it, pages come back short (with a
/// cursor to go on from) and summaries name fewer locations (their count and total stay
/// whole). Regression: each of a request's 1,024 operations could return a 10,000-item page,
/// so one 13 KB request made the server build gigabytes.
pub const QUERY_ITEMS_PER_REQUEST_MAX: usize = PAGE_ITEMS_MAX;

/// Runs a validated query on `engine` and shapes its answer for the wire: an unknown item,
/// SKU or reservation is `unknown_item` / `unknown_reservation`; a page or a SKU summary holds
/// at most `items_max` items (at most `PAGE_ITEMS_MAX`; what is left of the request's
/// [`QUERY_ITEMS_PER_REQUEST_MAX`]).
pub fn run_query(engine: &Engine, query: &Query, items_max: usize) -> OperationResult {
    let items_max = items_max.min(PAGE_ITEMS_MAX);
    match query {
        Query::Item { tenant, sku, location } => OperationResult::Item(
            engine
                .item(*tenant, sku.as_str(), location.as_str())
                .map(|view| ItemState::from(&view))
                .ok_or(ResultCode::UnknownItem),
        ),
        Query::Sku { tenant, sku } => {
            let found = engine.sku(*tenant, sku.as_str(), items_max);
            if found.location_count == 0 {
                return OperationResult::Sku(Err(ResultCode::UnknownItem));
            }
            let total = match found.total {
                Ok(total) => total,
                Err(code) => return OperationResult::Sku(Err(code)),
            };
            let location_count = u32::try_from(found.location_count).unwrap_or(u32::MAX);
            let locations = found.locations.iter().map(ItemState::from).collect();
            OperationResult::Sku(Ok(SkuSummary { location_count, total, locations }))
        }
        Query::TenantItems { tenant, cursor, limit } => {
            if items_max == 0 {
                // The request's item budget is spent: an empty page, to go on from the cursor.
                return OperationResult::Items(Ok(ItemPage { items: Vec::new(), next_cursor: Some(*cursor) }));
            }
            let page = engine.tenant_items(*tenant, *cursor, (*limit).min(items_max));
            debug_assert!(page.items.len() <= PAGE_ITEMS_MAX);
            OperationResult::Items(Ok(ItemPage {
                items: page.items.iter().map(ItemState::from).collect(),
                next_cursor: page.next_cursor,
            }))
        }
        Query::Reservation { tenant, reservation } => {
            let Some(view) = engine.reservation(*tenant, reservation.as_str()) else {
                return OperationResult::Reservation(Err(ResultCode::UnknownReservation));
            };
            // Regression (audit): a reservation cost the budget nothing, so one 30 KB request of
            // 1,024 `get_reservation` of 64-line reservations had the server build and hold a
            // ~12 MB reply. Past the budget, a reservation is not sent; alone it always fits.
            if reservation_items(&view) > items_max {
                return OperationResult::Reservation(Err(ResultCode::ReplyBudgetSpent));
            }
            OperationResult::Reservation(Ok(view))
        }
    }
}

/// What a reservation's view counts against a request's item budget: itself, its lines and
/// its reply's line results (each about an item's bytes on the wire).
fn reservation_items(view: &ReservationView) -> usize {
    1 + view.lines.len() + view.reply.lines.len()
}

// A reservation asked for alone always fits the budget (1 + 2 × its lines at most).
const _: () = assert!(2 * LINES_PER_RESERVATION_MAX < QUERY_ITEMS_PER_REQUEST_MAX);

fn decode_code(reader: &mut Reader<'_>) -> Result<ResultCode, WireError> {
    let at = reader.at();
    let number = reader.u16()?;
    ResultCode::from_number(number).ok_or(WireError::BadValue { what: "result code", value: u64::from(number), at })
}

fn encode_reply(writer: &mut Writer<'_>, reply: &Reply) {
    writer.u16(reply.code.number());
    writer.u64(reply.deadline_ms);
    writer.i64(reply.on_hand);
    writer.u64(reply.count);
    writer.count_u32("reply lines", reply.lines.len(), REPLY_LINES_MAX);
    for line in &reply.lines {
        writer.u16(line.code.number());
        writer.i64(line.requested);
        writer.i64(line.applied);
        writer.i64(line.available);
    }
}

fn decode_reply(reader: &mut Reader<'_>) -> Result<Reply, WireError> {
    let code = decode_code(reader)?;
    let deadline_ms = reader.u64()?;
    let on_hand = reader.i64()?;
    let count = reader.u64()?;
    let line_count = reader.count_u32("reply lines", REPLY_LINES_MAX, LINE_RESULT_BYTES)?;
    let mut lines = Vec::with_capacity(line_count);
    for _ in 0..line_count {
        lines.push(LineResult {
            code: decode_code(reader)?,
            requested: reader.i64()?,
            applied: reader.i64()?,
            available: reader.i64()?,
        });
    }
    Ok(Reply { code, lines: lines.into(), deadline_ms, on_hand, count })
}

fn encode_counters(writer: &mut Writer<'_>, counters: &Counters) {
    for value in [
        counters.on_hand,
        counters.reserved,
        counters.safety_stock,
        counters.backorder_limit,
        counters.inflow_total,
        counters.committed_total,
    ] {
        writer.i64(value);
    }
}

fn decode_counters(reader: &mut Reader<'_>) -> Result<Counters, WireError> {
    Ok(Counters {
        on_hand: reader.i64()?,
        reserved: reader.i64()?,
        safety_stock: reader.i64()?,
        backorder_limit: reader.i64()?,
        inflow_total: reader.i64()?,
        committed_total: reader.i64()?,
    })
}

fn encode_item(writer: &mut Writer<'_>, item: &ItemState) {
    writer.string("sku", &item.sku);
    writer.string("location", &item.location);
    encode_counters(writer, &item.counters);
}

fn decode_item(reader: &mut Reader<'_>) -> Result<ItemState, WireError> {
    Ok(ItemState {
        sku: reader.string("sku")?,
        location: reader.string("location")?,
        counters: decode_counters(reader)?,
    })
}

fn encode_items(writer: &mut Writer<'_>, items: &[ItemState]) {
    writer.count_u32("items", items.len(), PAGE_ITEMS_MAX);
    for item in items {
        encode_item(writer, item);
    }
}

fn decode_items(reader: &mut Reader<'_>) -> Result<Vec<ItemState>, WireError> {
    let count = reader.count_u32("items", PAGE_ITEMS_MAX, ITEM_STATE_BYTES_MIN)?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(decode_item(reader)?);
    }
    Ok(items)
}

/// The wire number of a reservation state (the same numbers as the WAL's).
pub fn state_number(state: ReservationState) -> u8 {
    match state {
        ReservationState::Open => 1,
        ReservationState::PartiallyCommitted => 2,
        ReservationState::Committed => 3,
        ReservationState::Released => 4,
        ReservationState::Expired => 5,
        ReservationState::Refused => 6,
    }
}

pub fn state_from(number: u8) -> Option<ReservationState> {
    Some(match number {
        1 => ReservationState::Open,
        2 => ReservationState::PartiallyCommitted,
        3 => ReservationState::Committed,
        4 => ReservationState::Released,
        5 => ReservationState::Expired,
        6 => ReservationState::Refused,
        _ => return None,
    })
}
