//! Shared by the WAL tests: random histories from the engine's workload generator.

#![allow(dead_code)]

use reservoir_engine::workload::Workload;
use std::path::Path;

use reservoir_engine::{Config, Engine, Record};
use reservoir_wal::{open_data_directory, Durability, Opened, WalOptions, SEGMENT_BYTES_MIN};

pub fn config() -> Config {
    // A short retention so that `Forget` drops things within a test's simulated time.
    Config { shards: 16, id_shards: 16, idempotency_retention_ms: 120_000 }
}

/// Runs `commands` random commands (seeded) on a fresh engine; returns the engine and each
/// command's records.
pub fn history(seed: u64, commands: usize) -> (Engine, Vec<Vec<Record>>) {
    let engine = Engine::new(config());
    let mut workload = Workload::new(seed, &format!("s{seed}"), 20);
    let mut now_ms = 1_000_000u64;
    let mut out = Vec::with_capacity(commands);
    for step in 0..commands {
        now_ms += (seed.wrapping_mul(31).wrapping_add(step as u64 * 7919)) % 400;
        let command = workload.next_command();
        let mut records = Vec::new();
        let reply = engine.execute(&command, now_ms, &mut records);
        workload.observe(&command, &reply);
        out.push(records);
    }
    (engine, out)
}

/// An engine rebuilt from the first `count` records (in LSN order).
pub fn replayed(records: &[Record], count: usize) -> Engine {
    let engine = Engine::new(config());
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|record| record.lsn);
    for record in sorted.into_iter().take(count) {
        engine.apply(record).unwrap_or_else(|error| panic!("reference replay failed: {error}"));
    }
    engine
}

pub fn assert_verified(engine: &Engine) {
    let report = engine.verify();
    assert!(report.violations.is_empty(), "verify: {:?}", report.violations);
}

/// A tenant and `imports` imports of `IMPORT_ROWS_MAX` rows with 64-byte SKUs on a fresh
/// engine: records near a megabyte each, so that a few span several `SEGMENT_BYTES_MIN`
/// segments. Returns the engine and each command's records.
pub fn large_imports(imports: usize) -> (Engine, Vec<Vec<Record>>) {
    use reservoir_engine::{Command, ImportRow, Location, Name, OperationId, Sku};
    let engine = Engine::new(config());
    let mut per_command = Vec::new();
    let mut records = Vec::new();
    engine.execute(&Command::CreateTenant { name: Name::new("acme").unwrap() }, 1_000, &mut records);
    per_command.push(std::mem::take(&mut records));
    let tenant = engine.tenant_id("acme").unwrap();
    for import in 0..imports {
        let rows = (0..reservoir_engine::IMPORT_ROWS_MAX)
            .map(|row| ImportRow {
                sku: Sku::new(&format!("{import:0>8}-{row:0>55}")).unwrap(),
                location: Location::new("DC1").unwrap(),
                on_hand: 1,
                safety_stock: None,
                backorder_limit: None,
            })
            .collect();
        let command =
            Command::Import { tenant, operation: OperationId::new(&format!("import-{import}")).unwrap(), rows };
        engine.execute(&command, 2_000, &mut records);
        per_command.push(std::mem::take(&mut records));
    }
    (engine, per_command)
}

/// Small segments, no fsync: for tests about which files go where, not durability (the crash
/// tests and the crash loop cover that with fsync on).
pub fn files_only_options() -> WalOptions {
    WalOptions { durability: Durability::None, segment_bytes: SEGMENT_BYTES_MIN, ..WalOptions::default() }
}

/// Opens (recovers) `directory` with [`files_only_options`].
pub fn open_files_only(directory: &Path) -> Opened {
    open_data_directory(directory, config(), files_only_options(), |_| {}).unwrap()
}

/// (segment, offset, LSN) of every frame on disk in the WAL directory `directory`.
pub fn frames(directory: &Path) -> Vec<(u64, usize, u64)> {
    use reservoir_wal::format::{decode_frame, Frame, SEGMENT_HEADER_BYTES};
    let storage = reservoir_wal::FsStorage::new(directory).unwrap();
    let mut out = Vec::new();
    for sequence in reservoir_wal::Storage::list(&storage).unwrap() {
        let bytes = std::fs::read(directory.join(reservoir_wal::storage::segment_file_name(sequence))).unwrap();
        let mut offset = SEGMENT_HEADER_BYTES;
        while let (Frame::Record { record, .. }, length) = decode_frame(&bytes[offset..]) {
            out.push((sequence, offset, record.lsn.0));
            offset += length;
        }
    }
    out
}
