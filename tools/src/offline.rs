//! Offline tools over a data directory: `reservoir wal dump` and `reservoir verify`. Both are
//! read-only: a torn tail is reported, not cut (start-up cuts it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use reservoir_engine::{Body, Config, Lsn, Record};
use reservoir_wal::{FsStorage, ScanEnd};

use crate::time::format_ms;

/// Where a data directory keeps its log.
pub fn wal_directory(data_directory: &Path) -> PathBuf {
    reservoir_wal::wal_directory(data_directory)
}

fn open_storage(data_directory: &Path) -> anyhow::Result<FsStorage> {
    let directory = wal_directory(data_directory);
    anyhow::ensure!(
        directory.is_dir(),
        "{} is not a data directory (no {})",
        data_directory.display(),
        directory.display()
    );
    FsStorage::new(&directory).with_context(|| format!("open {}", directory.display()))
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The data directory
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// First LSN to print
    #[arg(long, value_name = "N", default_value_t = 1)]
    from_lsn: u64,
    /// Last LSN to print
    #[arg(long, value_name = "N")]
    to_lsn: Option<u64>,
    /// Only records of this tenant (by name)
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
}

pub fn run_wal_dump(args: DumpArgs) -> anyhow::Result<()> {
    let storage = open_storage(&args.data_dir)?;
    let to = args.to_lsn.unwrap_or(u64::MAX);
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    // From the start of the log on disk, so that tenant names are known for the filter.
    let end = reservoir_wal::scan(&storage, Lsn(1), Lsn(0), |record| {
        if let Body::TenantCreated { tenant, name } = &record.body {
            names.insert(tenant.0, name.to_string());
        }
        let wanted_tenant = match (&args.tenant, record.tenant()) {
            (None, _) => true,
            (Some(name), Some(tenant)) => names.get(&tenant.0) == Some(name),
            (Some(_), None) => false,
        };
        if record.lsn.0 >= args.from_lsn && record.lsn.0 <= to && wanted_tenant {
            use std::io::Write as _;
            let _ = writeln!(out, "{}", describe(record, &names));
            printed += 1;
        }
        Ok(())
    })
    .context("read the WAL")?;
    eprintln!("{printed} records printed; {}", summary(&end));
    Ok(())
}

fn summary(end: &ScanEnd) -> String {
    let mut text = match end.first_lsn {
        Some(first) => format!("the log holds LSN {}..={}", first.0, end.last_lsn.0),
        None => "the log is empty".to_owned(),
    };
    if let Some(torn) = &end.torn {
        text.push_str(&format!(
            "; a torn tail at segment {} offset {} ({}) will be cut at start-up",
            torn.sequence, torn.offset, torn.why
        ));
    }
    text
}

/// One record as one line.
fn describe(record: &Record, names: &BTreeMap<u32, String>) -> String {
    let tenant = |id: u32| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
    let head = format!("lsn={} time={}", record.lsn.0, format_ms(record.timestamp_ms));
    let changes = |changes: &[reservoir_engine::ItemChange]| -> String {
        changes
            .iter()
            .map(|change| {
                format!(
                    "item={}/{} on_hand{:+}={} reserved{:+}={}",
                    change.item.shard,
                    change.item.index,
                    change.on_hand_delta,
                    change.after.on_hand,
                    change.reserved_delta,
                    change.after.reserved
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &record.body {
        Body::TenantCreated { tenant: id, name } => format!("{head} tenant_created id={} name={name}", id.0),
        Body::ItemCreated { item, tenant: id, sku, location } => format!(
            "{head} item_created tenant={} item={}/{} sku={sku} location={location}",
            tenant(id.0),
            item.shard,
            item.index
        ),
        Body::Stock { tenant: id, memo, changes: items } => format!(
            "{head} stock tenant={} operation={} code={} changes=[{}]",
            tenant(id.0),
            memo.operation,
            memo.reply.code.name(),
            changes(items)
        ),
        Body::Reserved { tenant: id, reservation, deadline_ms, reply, lines, changes: items, .. } => format!(
            "{head} reserved tenant={} reservation={reservation} code={} lines={} deadline={} changes=[{}]",
            tenant(id.0),
            reply.code.name(),
            lines.len(),
            format_ms(*deadline_ms),
            changes(items)
        ),
        Body::Settled { tenant: id, reservation, kind, memo, state, changes: items, .. } => format!(
            "{head} settled tenant={} reservation={reservation} kind={kind:?} operation={} state={} changes=[{}]",
            tenant(id.0),
            memo.as_ref().map_or("-", |memo| &*memo.operation),
            state.name(),
            changes(items)
        ),
        Body::Refused { tenant: id, memo } => format!(
            "{head} refused tenant={} operation={} code={}",
            tenant(id.0),
            memo.operation,
            memo.reply.code.name()
        ),
        Body::Forgotten { before_ms } => format!("{head} forgotten before={}", format_ms(*before_ms)),
    }
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The data directory (offline: no server may be writing to it)
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

/// Takes a snapshot of an offline data directory: newest snapshot + the log after it.
pub fn run_snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    open_storage(&args.data_dir)?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let written = reservoir_wal::build_snapshot(&args.data_dir, Config::default(), None, now_ms).context("snapshot")?;
    println!(
        "snapshot   {} covers LSN 1..={}: {:.1} MB in {:.2} s",
        written.path.display(),
        written.covers_lsn.0,
        written.bytes as f64 / 1e6,
        written.seconds
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The data directory
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

pub fn run_verify(args: VerifyArgs) -> anyhow::Result<()> {
    let storage = open_storage(&args.data_dir)?;
    let started = std::time::Instant::now();
    let (engine, snapshot, skipped) =
        reservoir_wal::load_base(&args.data_dir, Config::default()).context("load a snapshot")?;
    for (lsn, why) in &skipped {
        println!("snapshot   {} skipped: {why}", lsn.0);
    }
    match snapshot {
        Some((lsn, history)) => println!("snapshot   covers LSN 1..={} (history {history:016x})", lsn.0),
        None => println!("snapshot   none: replaying the whole log"),
    }
    let from = engine.next_lsn();
    let end = reservoir_wal::scan(&storage, from, from, |record| {
        engine.apply(record).map_err(|source| reservoir_wal::WalError::Replay { lsn: record.lsn, source })
    })
    .context("recover")?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "recovered  {} ({} records in {seconds:.2} s, {:.0} records/s)",
        summary(&end),
        end.records_visited,
        end.records_visited as f64 / seconds.max(1e-9)
    );
    let report = engine.verify();
    println!("items      {}", report.items);
    println!("open       {} reservations", report.open_reservations);
    println!("{:<20} {:>16} {:>16}", "tenant", "on_hand", "reserved");
    for (tenant, (on_hand, reserved)) in &report.tenant_totals {
        println!("{tenant:<20} {on_hand:>16} {reserved:>16}");
    }
    if report.violations.is_empty() {
        println!("verify     ok: every invariant holds");
        Ok(())
    } else {
        for violation in &report.violations {
            println!("violation  {violation}");
        }
        anyhow::bail!("{} invariants broken", report.violations.len())
    }
}
