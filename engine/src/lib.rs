//! Reservoir's reservation core.
//!
//! A sans-IO stock ledger: [`Engine::execute`] takes a [`Command`] and the caller's `now_ms`,
//! returns a [`Reply`] and appends effect [`Record`]s; [`Engine::apply`] rebuilds state from
//! records without deciding anything. No I/O, no clock, no threads of its own: the `wal` and
//! `net` crates drive it. See `docs/ARCHITECTURE.md`.

mod catalog;
mod code;
mod command;
mod engine;
pub mod epoch;
pub mod item;
mod memory;
mod record;
mod state;
pub mod sync;
mod types;
pub mod workload;

pub use code::{LineResult, LineResults, Reply, ResultCode};
pub use command::{Command, ImportRow, Line};
pub use engine::{
    Config, Dump, Engine, IdempotencyUsage, ItemView, Page, ReservationLineView, ReservationView, SkuView,
    VerifyReport, EPOCHS_MAX, EPOCH_FIRST, IDEMPOTENCY_ENTRIES_MAX_DEFAULT, IDEMPOTENCY_RETENTION_FLOOR_MS,
};
pub use item::Counters;
pub use memory::{
    reservation_weight, IdText, OperationEntry, Reservation, ReservationLineState, RESERVATION_LINES_PER_ENTRY,
};
pub use record::{Body, ItemChange, LineChange, OperationMemo, Record, ReservationState, ReservedLine, SettleKind};
pub use state::{SavedItem, SavedOperation, SavedReservation, SavedShard, State};
pub use types::*;

/// Errors of the engine's own API (command outcomes are [`ResultCode`]s, not errors).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineError {
    #[error("record LSN {found} out of order: expected {expected}")]
    LsnOutOfOrder { expected: u64, found: u64 },
    #[error("record at LSN {lsn} does not fit the state: {what}")]
    ReplayMismatch { lsn: u64, what: String },
    #[error("saved state is inconsistent: {what}")]
    BadState { what: String },
}
