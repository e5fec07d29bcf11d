//! Result codes: every outcome of every command has one, with a stable number that goes on
//! the wire and into the WAL. Numbers are never reused or renumbered; new codes are appended.
//! `docs/protocol.md` lists them; a test there keeps the two in step.

/// The outcome code of a command, or of one line or row of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
#[non_exhaustive]
pub enum ResultCode {
    Ok = 0,
    /// `reserve` with `allow_partial`: some line got less than it asked for.
    OkPartial = 1,

    // Stock decisions (10..).
    /// Not enough available stock; the reply's lines name the short ones and what was available.
    InsufficientStock = 10,
    /// A commit would ship more units than are on hand (only possible with backorders).
    InsufficientOnHand = 11,
    /// A correction (adjust, count, move, import) would leave fewer units on hand than are
    /// reserved beyond the backorder limit. Release reservations first.
    StockReserved = 12,
    /// `set_on_hand`: on_hand was not the expected value (someone else changed it).
    ExpectedMismatch = 13,
    /// `set_policy` would lower the backorder limit below the backorder now in use.
    PolicyConflict = 14,
    /// A counter would exceed [`crate::STOCK_MAX`], or a policy field [`crate::POLICY_MAX`].
    QuantityOverflow = 15,

    // Things that do not exist or are in the wrong state (20..).
    UnknownTenant = 20,
    UnknownItem = 21,
    UnknownReservation = 22,
    /// The reservation is committed, released, expired or was refused.
    ReservationNotOpen = 23,
    /// The reservation's deadline passed; the engine released it.
    ReservationExpired = 24,
    /// A commit or release names more than is still reserved on that line.
    ExceedsReserved = 25,
    /// A commit or release names an item that is not in the reservation.
    LineNotInReservation = 26,
    TenantExists = 27,

    // Idempotency (30..).
    /// The id was used before with a different request.
    IdReusedWithDifferentRequest = 30,

    // Invalid input (40..): the request itself is wrong; retrying it cannot help.
    EmptyLines = 40,
    QuantityNotPositive = 41,
    QuantityTooLarge = 42,
    TooManyLines = 43,
    NameEmpty = 44,
    NameTooLong = 45,
    NameNotPrintable = 46,
    TtlOutOfRange = 47,
    SameLocation = 48,
    TooManyRows = 49,
    NegativeStock = 50,

    // Capacity (60..).
    CapacityExceeded = 60,
    /// The idempotency memory is full of ids too young to forget. Not remembered: retrying
    /// later can succeed.
    MemoryFull = 61,
    /// A query of a request whose earlier queries already fill what one reply may carry
    /// (`QUERY_ITEMS_PER_REQUEST_MAX` items, a reservation's lines counted as items). Not run:
    /// ask it again in a request of its own, where it always fits.
    ReplyBudgetSpent = 62,
}

impl ResultCode {
    /// Every code, in number order.
    pub const ALL: &'static [ResultCode] = &[
        ResultCode::Ok,
        ResultCode::OkPartial,
        ResultCode::InsufficientStock,
        ResultCode::InsufficientOnHand,
        ResultCode::StockReserved,
        ResultCode::ExpectedMismatch,
        ResultCode::PolicyConflict,
        ResultCode::QuantityOverflow,
        ResultCode::UnknownTenant,
        ResultCode::UnknownItem,
        ResultCode::UnknownReservation,
        ResultCode::ReservationNotOpen,
        ResultCode::ReservationExpired,
        ResultCode::ExceedsReserved,
        ResultCode::LineNotInReservation,
        ResultCode::TenantExists,
        ResultCode::IdReusedWithDifferentRequest,
        ResultCode::EmptyLines,
        ResultCode::QuantityNotPositive,
        ResultCode::QuantityTooLarge,
        ResultCode::TooManyLines,
        ResultCode::NameEmpty,
        ResultCode::NameTooLong,
        ResultCode::NameNotPrintable,
        ResultCode::TtlOutOfRange,
        ResultCode::SameLocation,
        ResultCode::TooManyRows,
        ResultCode::NegativeStock,
        ResultCode::CapacityExceeded,
        ResultCode::MemoryFull,
        ResultCode::ReplyBudgetSpent,
    ];

    pub fn number(self) -> u16 {
        self as u16
    }

    pub fn from_number(number: u16) -> Option<ResultCode> {
        ResultCode::ALL.iter().copied().find(|code| code.number() == number)
    }

    pub fn is_ok(self) -> bool {
        matches!(self, ResultCode::Ok | ResultCode::OkPartial)
    }

    /// The snake_case name used in docs, JSON and logs.
    pub fn name(self) -> &'static str {
        match self {
            ResultCode::Ok => "ok",
            ResultCode::OkPartial => "ok_partial",
            ResultCode::InsufficientStock => "insufficient_stock",
            ResultCode::InsufficientOnHand => "insufficient_on_hand",
            ResultCode::StockReserved => "stock_reserved",
            ResultCode::ExpectedMismatch => "expected_mismatch",
            ResultCode::PolicyConflict => "policy_conflict",
            ResultCode::QuantityOverflow => "quantity_overflow",
            ResultCode::UnknownTenant => "unknown_tenant",
            ResultCode::UnknownItem => "unknown_item",
            ResultCode::UnknownReservation => "unknown_reservation",
            ResultCode::ReservationNotOpen => "reservation_not_open",
            ResultCode::ReservationExpired => "reservation_expired",
            ResultCode::ExceedsReserved => "exceeds_reserved",
            ResultCode::LineNotInReservation => "line_not_in_reservation",
            ResultCode::TenantExists => "tenant_exists",
            ResultCode::IdReusedWithDifferentRequest => "id_reused_with_different_request",
            ResultCode::EmptyLines => "empty_lines",
            ResultCode::QuantityNotPositive => "quantity_not_positive",
            ResultCode::QuantityTooLarge => "quantity_too_large",
            ResultCode::TooManyLines => "too_many_lines",
            ResultCode::NameEmpty => "name_empty",
            ResultCode::NameTooLong => "name_too_long",
            ResultCode::NameNotPrintable => "name_not_printable",
            ResultCode::TtlOutOfRange => "ttl_out_of_range",
            ResultCode::SameLocation => "same_location",
            ResultCode::TooManyRows => "too_many_rows",
            ResultCode::NegativeStock => "negative_stock",
            ResultCode::CapacityExceeded => "capacity_exceeded",
            ResultCode::MemoryFull => "memory_full",
            ResultCode::ReplyBudgetSpent => "reply_budget_spent",
        }
    }
}

impl From<crate::types::NameError> for ResultCode {
    fn from(error: crate::types::NameError) -> ResultCode {
        use crate::types::NameError;
        match error {
            NameError::Empty => ResultCode::NameEmpty,
            NameError::TooLong => ResultCode::NameTooLong,
            NameError::NotPrintable => ResultCode::NameNotPrintable,
            NameError::QuantityNotPositive => ResultCode::QuantityNotPositive,
            NameError::QuantityTooLarge => ResultCode::QuantityTooLarge,
        }
    }
}

/// The result of one line of a reserve, commit or release, or one row of an import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineResult {
    pub code: ResultCode,
    /// What the line asked for.
    pub requested: i64,
    /// What the line got (reserved, committed or released; for an import row, the new on_hand).
    pub applied: i64,
    /// Available on the line's item when it was decided (after the command, when it succeeded).
    pub available: i64,
}

/// The per-line results of a reply, shared: the reply returned and its record hold one
/// allocation (the idempotency memory keeps its own packed copy, `memory::PackedLines`). No
/// allocation when empty.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LineResults(Option<std::sync::Arc<[LineResult]>>);

impl LineResults {
    pub fn new() -> LineResults {
        LineResults(None)
    }
}

impl std::ops::Deref for LineResults {
    type Target = [LineResult];
    fn deref(&self) -> &[LineResult] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl From<Vec<LineResult>> for LineResults {
    fn from(lines: Vec<LineResult>) -> LineResults {
        if lines.is_empty() {
            LineResults(None)
        } else {
            LineResults(Some(lines.into()))
        }
    }
}

impl From<&[LineResult]> for LineResults {
    /// One allocation (none when empty), where `Vec` -> `Arc<[_]>` takes a second.
    fn from(lines: &[LineResult]) -> LineResults {
        if lines.is_empty() {
            LineResults(None)
        } else {
            LineResults(Some(lines.into()))
        }
    }
}

impl FromIterator<LineResult> for LineResults {
    fn from_iter<I: IntoIterator<Item = LineResult>>(lines: I) -> LineResults {
        let lines: smallvec::SmallVec<[LineResult; 4]> = lines.into_iter().collect();
        LineResults::from(&lines[..])
    }
}

impl<'a> IntoIterator for &'a LineResults {
    type Item = &'a LineResult;
    type IntoIter = std::slice::Iter<'a, LineResult>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl std::fmt::Debug for LineResults {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_list().entries(self.iter()).finish()
    }
}

/// What a mutation answered. Stored (in memory and in the WAL) so that a retry with the same
/// id returns exactly this, also after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: ResultCode,
    /// Per line (reserve, commit, release) or per row (import); empty otherwise.
    pub lines: LineResults,
    /// The reservation deadline after the command (reserve, extend), else 0.
    pub deadline_ms: u64,
    /// For single-item stock commands: on_hand after the command (or as found, on refusal).
    pub on_hand: i64,
    /// For `expire` and `forget`: how many; for `create_tenant`: the tenant id.
    pub count: u64,
}

impl Reply {
    pub fn code(code: ResultCode) -> Reply {
        Reply { code, lines: LineResults::new(), deadline_ms: 0, on_hand: 0, count: 0 }
    }
    pub fn is_ok(&self) -> bool {
        self.code.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_numbers_round_trip_and_are_unique() {
        let mut numbers: Vec<u16> = ResultCode::ALL.iter().map(|c| c.number()).collect();
        for code in ResultCode::ALL {
            assert_eq!(ResultCode::from_number(code.number()), Some(*code));
        }
        let count = numbers.len();
        numbers.dedup();
        assert_eq!(numbers.len(), count);
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "ALL must be in number order");
    }
}
