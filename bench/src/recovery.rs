//! W2 of shared/workload.md, recovery half: load a catalog through the durable WAL, snapshot
//! it, run order operations after the snapshot, then measure a cold start from the snapshot
//! alone, the replay rate of the log after it, and a whole recovery (snapshot + replay).

use std::path::PathBuf;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use reservoir_engine::{
    Command, Config, ImportRow, Line, Location, Name, OperationId, Quantity, Record, ReservationId, Sku, TenantId,
    IMPORT_ROWS_MAX,
};
use reservoir_wal::{build_snapshot, open_data_directory, snapshot, snapshot_directory, RetentionPolicy, WalOptions};
use serde::Serialize;

use crate::{sku_name, tenant_name, BenchError, LOCATION_NAME, NOW_MS_BASE, RESERVE_TTL_MS};

/// SKUs per tenant in the recovery benchmark (W2: 10,000).
pub const RECOVERY_SKUS_PER_TENANT: usize = 10_000;
/// The most items and operations it accepts.
pub const RECOVERY_ITEMS_MAX: usize = 20_000_000;
pub const RECOVERY_OPERATIONS_MAX: usize = 50_000_000;
/// Commands executed before their records are submitted and awaited together.
const PIPELINE_COMMANDS_MAX: usize = 512;

#[derive(Clone, Debug)]
pub struct RecoverySettings {
    /// A new or empty data directory.
    pub directory: PathBuf,
    pub items: usize,
    /// Order operations (reserve, commit, release) after the snapshot.
    pub operations: usize,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RecoveryReport {
    pub items: usize,
    pub operations: usize,
    pub load_s: f64,
    pub snapshot_write_s: f64,
    pub snapshot_bytes: u64,
    pub snapshot_bytes_per_item: f64,
    /// Loading the newest snapshot alone (mmap, checks, rkyv validation, restore, verify).
    pub cold_start_s: f64,
    pub replay_records: u64,
    pub replay_s: f64,
    pub replay_records_per_s: f64,
    /// Snapshot + replay, as a restart does it.
    pub recovery_s: f64,
}

impl RecoveryReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializes")
    }

    pub fn render_table(&self) -> String {
        format!(
            "W2 recovery  {} items, {} operations after the snapshot\n\
             load (durable imports)      {:>10.2} s\n\
             snapshot write              {:>10.2} s  {:.1} MB ({:.1} bytes/item)\n\
             cold start from snapshot    {:>10.2} s\n\
             replay of the log after it  {:>10.2} s  {} records ({:.0} records/s)\n\
             whole recovery              {:>10.2} s\n",
            self.items,
            self.operations,
            self.load_s,
            self.snapshot_write_s,
            self.snapshot_bytes as f64 / 1e6,
            self.snapshot_bytes_per_item,
            self.cold_start_s,
            self.replay_s,
            self.replay_records,
            self.replay_records_per_s,
            self.recovery_s
        )
    }
}

pub fn recovery(settings: &RecoverySettings) -> Result<RecoveryReport, BenchError> {
    if !(1..=RECOVERY_ITEMS_MAX).contains(&settings.items) || settings.operations > RECOVERY_OPERATIONS_MAX {
        return Err(BenchError::Settings(format!(
            "items must be 1..={RECOVERY_ITEMS_MAX} and operations at most {RECOVERY_OPERATIONS_MAX}"
        )));
    }
    if std::fs::read_dir(&settings.directory).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(BenchError::Settings(format!("{} must be new or empty", settings.directory.display())));
    }
    let config = Config::default();
    let opened = open_data_directory(&settings.directory, config.clone(), WalOptions::default(), |_| {})?;
    let (engine, wal) = (&opened.engine, &opened.wal);

    let started = Instant::now();
    let location = Location::new(LOCATION_NAME).expect("valid");
    let tenants_needed = settings.items.div_ceil(RECOVERY_SKUS_PER_TENANT);
    let mut tenants = Vec::with_capacity(tenants_needed);
    let mut records: Vec<Record> = Vec::new();
    for index in 0..tenants_needed {
        let name = Name::new(&tenant_name(index)).expect("valid");
        let reply = engine.execute(&Command::CreateTenant { name }, NOW_MS_BASE, &mut records);
        wal.append(std::mem::take(&mut records))?;
        tenants.push(TenantId(reply.count as u32));
    }
    let skus: Vec<Sku> =
        (0..RECOVERY_SKUS_PER_TENANT).map(|index| Sku::new(&sku_name(index)).expect("valid")).collect();
    let mut left = settings.items;
    for (index, &tenant) in tenants.iter().enumerate() {
        let count = left.min(RECOVERY_SKUS_PER_TENANT);
        left -= count;
        for (chunk_index, chunk) in skus[..count].chunks(IMPORT_ROWS_MAX).enumerate() {
            let rows = chunk
                .iter()
                .map(|sku| ImportRow {
                    sku: sku.clone(),
                    location: location.clone(),
                    on_hand: 1_000_000,
                    safety_stock: None,
                    backorder_limit: None,
                })
                .collect();
            let operation = OperationId::new(&format!("load-{index}-{chunk_index}")).expect("valid");
            engine.execute(&Command::Import { tenant, operation, rows }, NOW_MS_BASE, &mut records);
            wal.append(std::mem::take(&mut records))?;
        }
    }
    let load_s = started.elapsed().as_secs_f64();
    let (written, _) = build_snapshot(
        &settings.directory,
        config.clone(),
        Some(wal.durable_lsn()),
        NOW_MS_BASE,
        &RetentionPolicy::default(),
    )?;

    // Order operations after the snapshot: reserve one to three lines, commit or release the
    // oldest open reservation, pipelined through the WAL like a busy connection.
    let mut random = Xoshiro256PlusPlus::seed_from_u64(settings.seed);
    let mut open: std::collections::VecDeque<(TenantId, ReservationId)> = std::collections::VecDeque::new();
    let mut pending: Vec<Record> = Vec::new();
    let mut highest = reservoir_engine::Lsn(0);
    for step in 0..settings.operations {
        let roll = random.gen_range(0..100u32);
        let now_ms = NOW_MS_BASE + 1_000 + step as u64;
        let command = if roll < 70 || open.is_empty() {
            let tenant_index = random.gen_range(0..tenants.len());
            let skus_here = (settings.items - tenant_index * RECOVERY_SKUS_PER_TENANT).min(RECOVERY_SKUS_PER_TENANT);
            let lines = (0..random.gen_range(1..=3))
                .map(|_| Line {
                    sku: skus[random.gen_range(0..skus_here)].clone(),
                    location: location.clone(),
                    quantity: Quantity::new(random.gen_range(1..=5)).expect("positive"),
                })
                .collect();
            let reservation = ReservationId::new(&format!("r{step}")).expect("valid");
            open.push_back((tenants[tenant_index], reservation.clone()));
            Command::Reserve {
                tenant: tenants[tenant_index],
                reservation,
                lines,
                ttl_ms: RESERVE_TTL_MS,
                allow_partial: false,
            }
        } else {
            let (tenant, reservation) = open.pop_front().expect("not empty");
            let operation = OperationId::new(&format!("o{step}")).expect("valid");
            if roll < 90 {
                Command::Commit { tenant, operation, reservation, lines: None }
            } else {
                Command::Release { tenant, operation, reservation, lines: None }
            }
        };
        engine.execute(&command, now_ms, &mut pending);
        if pending.len() >= PIPELINE_COMMANDS_MAX || step + 1 == settings.operations {
            highest = pending.iter().map(|record| record.lsn).max().unwrap_or(highest).max(highest);
            wal.submit(std::mem::take(&mut pending))?;
            wal.wait_durable(highest)?;
        }
    }
    let last = engine.next_lsn();
    drop(opened.engine);
    opened.wal.close()?;

    let cold = Instant::now();
    let loaded = snapshot::load(
        &snapshot_directory(&settings.directory).join(snapshot::snapshot_file_name(written.covers_lsn)),
    )?;
    let cold_start_s = cold.elapsed().as_secs_f64();
    drop(loaded);

    let whole = Instant::now();
    let recovered = open_data_directory(&settings.directory, config, WalOptions::default(), |_| {})?;
    let recovery_s = whole.elapsed().as_secs_f64();
    assert_eq!(recovered.engine.next_lsn(), last, "recovery reaches the last acknowledged record");
    let replay_s = recovered.recovery.seconds;
    let replay_records = recovered.recovery.records_replayed;
    recovered.wal.close()?;
    Ok(RecoveryReport {
        items: settings.items,
        operations: settings.operations,
        load_s,
        snapshot_write_s: written.seconds,
        snapshot_bytes: written.bytes,
        snapshot_bytes_per_item: written.bytes as f64 / settings.items as f64,
        cold_start_s,
        replay_records,
        replay_s,
        replay_records_per_s: replay_records as f64 / replay_s.max(1e-9),
        recovery_s,
    })
}
