//! Offline tools over a data directory: `reservoir wal dump` and `reservoir verify`. Both are
//! read-only: a torn tail is reported, not cut (start-up cuts it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use reservoir_engine::{Body, Config, Lsn, Record};
use reservoir_wal::restore::{RestoreTarget, Restored};
use reservoir_wal::{DiskUsage, Flow, LayeredStorage, RetentionPolicy, ScanEnd};

use crate::progress::Progress;

use crate::time::{format_ms, parse_rfc3339_ms, parse_rfc3339_ms_ceiling};

/// Where a data directory keeps its log.
pub fn wal_directory(data_directory: &Path) -> PathBuf {
    reservoir_wal::wal_directory(data_directory)
}

/// The whole log of a data directory: archived segments, then live ones.
fn open_storage(data_directory: &Path) -> anyhow::Result<LayeredStorage> {
    // A base backup's install a crash cut short: the history is in pieces until a start (or an
    // offline `snapshot`) finishes it, which replaces it with the base backup. Regression
    // (review, eleventh session): `verify` passed the old state the next start replaces, or
    // failed a directory that starts.
    let intent = data_directory.join(reservoir_wal::rejoin::SET_ASIDE_INTENT_FILE);
    anyhow::ensure!(
        !intent.exists(),
        "{} holds a base backup's install (or a set-aside of its history) that a crash cut short ({}): \
         start `reservoir serve` on it once, or run `reservoir snapshot --data-dir` on it, to finish it; \
         until then its log and snapshots are in pieces",
        data_directory.display(),
        intent.display()
    );
    let directory = wal_directory(data_directory);
    anyhow::ensure!(
        directory.is_dir(),
        "{} is not a data directory (no {})",
        data_directory.display(),
        directory.display()
    );
    // Creates nothing in the directory it reads (it may be a read-only backup).
    Ok(reservoir_wal::layered_storage_existing(data_directory))
}

fn now_ms() -> anyhow::Result<u64> {
    Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64)
}

/// The archive's bounds (docs/wal.md, "Retention and the archive"): a flag, else the
/// configuration file's `[archive]` (the one the server runs with), else the defaults.
#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// The server's configuration file, for its `[archive]` bounds (README, "Configuration")
    #[arg(long, value_name = "FILE", env = "RESERVOIR_CONFIG")]
    config: Option<PathBuf>,
    /// Archived segments and snapshots older than this are deleted [default: the config
    /// file's, else 168]
    #[arg(long, value_name = "HOURS", requires = "data_dir")]
    archive_age_max_hours: Option<u64>,
    /// The archive is pruned, oldest first, down to this size [default: the config file's,
    /// else 64]
    #[arg(long, value_name = "GIB", requires = "data_dir")]
    archive_bytes_max_gib: Option<u64>,
}

impl RetentionArgs {
    /// Regression (review): an offline `snapshot` pruned the archive by the defaults (168 h,
    /// 64 GiB) whatever the server's configuration kept, deleting restore history for good.
    pub fn policy(&self) -> anyhow::Result<RetentionPolicy> {
        let configured = crate::serve::archive_retention(self.config.as_deref())?;
        Ok(RetentionPolicy {
            archive_age_max_ms: self
                .archive_age_max_hours
                .map_or(configured.archive_age_max_ms, |hours| hours.saturating_mul(3_600_000)),
            archive_bytes_max: self
                .archive_bytes_max_gib
                .map_or(configured.archive_bytes_max, |gib| gib.saturating_mul(1 << 30)),
        })
    }
}

/// Prints what a data directory holds on disk and how far back a restore can reach.
fn print_disk_usage(usage: &DiskUsage) {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    println!(
        "disk       {:.1} MB: wal {} segments {:.1} MB, snapshots {} {:.1} MB, archive {} segments + {} snapshots {:.1} MB",
        mb(usage.total_bytes()),
        usage.wal_segments,
        mb(usage.wal_bytes),
        usage.snapshots,
        mb(usage.snapshot_bytes),
        usage.archive_segments,
        usage.archive_snapshots,
        mb(usage.archive_bytes)
    );
    let reach = match (usage.log_first_lsn, usage.oldest_snapshot) {
        (Some(Lsn(1)), _) => "LSN 0 (the log reaches back to its start)".to_owned(),
        (_, Some(lsn)) => format!("LSN {} (the oldest snapshot)", lsn.0),
        (Some(first), None) => format!("nowhere: the log starts at LSN {} and no snapshot is kept", first.0),
        (None, None) => "LSN 0 (empty)".to_owned(),
    };
    println!("restore    can reach back to {reach}");
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
    // A rewind a crash cut short: what follows the kept LSN is the forked history, half
    // zeroed, and the next start cuts it; only the log it keeps is read (regression: the dump
    // met the zeros and failed as on corruption, or printed forked records without a word).
    let keep_through = reservoir_wal::rejoin::read_rewind_intent(&args.data_dir).context("rewind intent")?;
    if let Some(keep_through) = keep_through {
        eprintln!(
            "note: a rewind that a crash cut short is pending (REWIND-INTENT): the log is kept through LSN {}, \
             the records after it are the forked history and the next start cuts them; printing up to LSN {}",
            keep_through.0, keep_through.0
        );
    }
    // Up to `--to-lsn` only (regression, review: the scan read the whole log whatever the range).
    let limit = keep_through.unwrap_or(Lsn(u64::MAX)).min(Lsn(to));
    // The filter's tenant: from the newest snapshot (a log that begins after the tenant was
    // created, after a base backup or a pruned archive, does not name it), else from the log.
    // Regression (review): only the log was read, so such a dump printed nothing, exit 0.
    let mut filter: Option<u32> = None;
    if let Some(name) = &args.tenant {
        let (engine, _, _) =
            reservoir_wal::load_base(&args.data_dir, Config::default()).context("load a snapshot for tenant names")?;
        filter = engine.tenant_id(name).map(|tenant| tenant.0);
        if let Some(tenant) = filter {
            names.insert(tenant, name.clone());
        }
    }
    // From the start of the log on disk, so that tenant names are known.
    let end = reservoir_wal::scan_until(&storage, Lsn(1), Lsn(0), |record| {
        if record.lsn > limit {
            return Ok(Flow::Stop);
        }
        if let Body::TenantCreated { tenant, name } = &record.body {
            names.insert(tenant.0, name.to_string());
            if args.tenant.as_deref() == Some(&**name) {
                filter = Some(tenant.0);
            }
        }
        let wanted_tenant = match (&args.tenant, record.tenant()) {
            (None, _) => true,
            (Some(_), Some(tenant)) => filter == Some(tenant.0),
            (Some(_), None) => false,
        };
        if record.lsn.0 >= args.from_lsn && record.lsn.0 <= to && wanted_tenant {
            use std::io::Write as _;
            let _ = writeln!(out, "{}", describe(record, &names));
            printed += 1;
        }
        Ok(if record.lsn == limit { Flow::Stop } else { Flow::Continue })
    })
    .context("read the WAL")?;
    match (args.to_lsn, end.first_lsn) {
        // Stopped at the range's end: what lies past it was not read.
        (Some(to), Some(first)) if end.stopped && end.last_lsn.0 >= to => {
            eprintln!("{printed} records printed; read LSN {}..={} of the log (--to-lsn)", first.0, end.last_lsn.0)
        }
        _ => eprintln!("{printed} records printed; {}", summary(&end)),
    }
    if let (Some(name), None) = (&args.tenant, filter) {
        anyhow::bail!(
            "no tenant {name:?} in {}'s snapshot or log (up to LSN {})",
            args.data_dir.display(),
            end.last_lsn.0
        );
    }
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
        Body::EpochChanged { epoch } => format!("{head} epoch_changed epoch={epoch}"),
        Body::CredentialsChanged => format!("{head} credentials_changed"),
    }
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// An offline data directory (no server may be running on it). Without it, asks the
    /// running server (`--server`, with the admin `--token`) to take one now
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    retention: RetentionArgs,
}

/// Takes a snapshot of an offline data directory (newest snapshot + the log after it), then
/// archives what it covers and prunes the archive.
pub fn run_snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let data_directory = args.data_dir.context("--data-dir is needed offline")?;
    let intent = data_directory.join(reservoir_wal::rejoin::SET_ASIDE_INTENT_FILE);
    // Offline only: a running server holds the lock (and snapshots by its own policy).
    let _lock = if intent.exists() {
        // Finished first, as a server's start would: what it leaves is the base backup.
        let lock = reservoir_wal::lock_data_directory(&data_directory).context("snapshot")?;
        reservoir_wal::rejoin::finish_interrupted_set_aside(&data_directory).context("finish a set-aside")?;
        println!("set-aside  finished a base backup's install that a crash cut short");
        // An empty log after the base backup, as a start makes.
        let wal = wal_directory(&data_directory);
        reservoir_wal::storage::create_directory_durably(&wal).with_context(|| format!("create {}", wal.display()))?;
        open_storage(&data_directory)?;
        lock
    } else {
        open_storage(&data_directory)?;
        reservoir_wal::lock_data_directory(&data_directory).context("snapshot")?
    };
    // A rewind a crash cut short is finished first, as a server's start would: a snapshot of
    // the uncut log would cover the forked records.
    if let Some(kept_through) =
        reservoir_wal::rejoin::finish_interrupted_rewind(&data_directory).context("finish a rewind")?
    {
        println!("rewind     finished a rewind that a crash cut short: the log now ends at LSN {}", kept_through.0);
    }
    let (written, retention) =
        reservoir_wal::build_snapshot(&data_directory, Config::default(), None, now_ms()?, &args.retention.policy()?)
            .context("snapshot")?;
    println!(
        "snapshot   {} covers LSN 1..={}: {:.1} MB in {:.2} s",
        written.path.display(),
        written.covers_lsn.0,
        written.bytes as f64 / 1e6,
        written.seconds
    );
    println!(
        "archive    moved {} segments and {} snapshots; pruned {} segments and {} snapshots",
        retention.segments_archived,
        retention.snapshots_archived,
        retention.segments_pruned,
        retention.snapshots_pruned
    );
    print_disk_usage(&retention.usage);
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
    // What start-up refuses, verify refuses too (regression, review: it exited 0, though
    // docs/operations.md says exit 0 means the directory will start). Each check is the one
    // `reservoir_wal::open_data_directory` makes, with its error.
    let log_history = reservoir_wal::log_history(&storage).context("read the log's history")?;
    if let (Some((_, snapshot_history)), Some(log_history)) = (snapshot, log_history) {
        if snapshot_history != log_history {
            return Err(reservoir_wal::WalError::HistoryMismatch { snapshot: snapshot_history, log: log_history })
                .context("verify");
        }
    }
    let from = engine.next_lsn();
    // A rewind a crash cut short: the next start finishes the cut, so the state verified is
    // the log up to the LSN it keeps (what follows may be half zeroed).
    let keep_through = reservoir_wal::rejoin::read_rewind_intent(&args.data_dir).context("rewind intent")?;
    if let Some(keep_through) = keep_through {
        println!(
            "rewind     cut short by a crash: the log is kept through LSN {}, and the next start cuts the rest",
            keep_through.0
        );
    }
    let limit = keep_through.unwrap_or(Lsn(u64::MAX));
    // With a snapshot at the kept LSN, record `from` itself is past it (maybe zeroed): the log
    // is not read at all (regression: the scan met the zeros and reported corruption).
    if keep_through.is_some() && limit < from {
        println!("recovered  the snapshot alone: the pending rewind cuts every record after it");
    } else {
        let progress = Progress::new("recovery");
        let mut replayed = 0u64;
        let end = reservoir_wal::scan_until(&storage, from, from, |record| {
            if record.lsn > limit {
                return Ok(Flow::Stop);
            }
            engine.apply(record).map_err(|source| reservoir_wal::WalError::Replay { lsn: record.lsn, source })?;
            replayed += 1;
            if replayed % reservoir_wal::PROGRESS_RECORDS_INTERVAL == 0 {
                progress.update(record.lsn, replayed);
            }
            Ok(if record.lsn == limit { Flow::Stop } else { Flow::Continue })
        })
        .context("recover")?;
        progress.finish();
        if end.position.next_lsn < from {
            return Err(reservoir_wal::WalError::LogBehindSnapshot {
                covered: Lsn(from.0 - 1),
                log_next: end.position.next_lsn,
            })
            .context("verify");
        }
        let recovered = Lsn(engine.next_lsn().0 - 1);
        if let Some((covers, why)) =
            skipped.iter().filter(|(covers, _)| *covers > recovered).max_by_key(|(covers, _)| *covers)
        {
            anyhow::bail!(
                "a snapshot covering LSN {} could not be loaded ({why}) and the log reaches only LSN {}: start-up \
                 refuses this directory (see `reservoir serve`'s error for what to do)",
                covers.0,
                recovered.0
            );
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "recovered  {} ({} records in {seconds:.2} s, {:.0} records/s)",
            summary(&end),
            end.records_visited,
            end.records_visited as f64 / seconds.max(1e-9)
        );
    }
    print_disk_usage(&reservoir_wal::archive::disk_usage(&args.data_dir).context("disk usage")?);
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

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_time", "to_lsn"])))]
pub struct RestoreArgs {
    /// The data directory to restore from (only read; its archive is used too)
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// Restore to the state at this moment (RFC 3339, e.g. 2026-11-22T10:14:59Z)
    #[arg(long, value_name = "TIME")]
    to_time: Option<String>,
    /// Restore to the state right after this LSN
    #[arg(long, value_name = "N")]
    to_lsn: Option<u64>,
    /// Stop just before the target instead of just after it (PostgreSQL's
    /// recovery_target_inclusive = off)
    #[arg(long)]
    exclusive: bool,
    /// The new data directory to create; with --tenant, the export file to write
    #[arg(long, value_name = "PATH")]
    into: PathBuf,
    /// Restore only this tenant's stock, as a JSON-lines export file (`reservoir print-export`
    /// shows it; its rows are import rows)
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
}

pub fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    open_storage(&args.from)?;
    let target = match (&args.to_time, args.to_lsn) {
        (Some(time), None) => {
            let parse = if args.exclusive { parse_rfc3339_ms_ceiling } else { parse_rfc3339_ms };
            RestoreTarget::Time { unix_ms: parse(time).map_err(anyhow::Error::msg)? }
        }
        (None, Some(lsn)) => RestoreTarget::Lsn(Lsn(lsn)),
        _ => unreachable!("clap requires exactly one target"),
    };
    // Before the replay, which may take long (regression, review: checked only after it).
    match &args.tenant {
        None => reservoir_wal::restore::check_restore_target(&args.into).context("restore")?,
        Some(_) => anyhow::ensure!(!args.into.exists(), "{} exists: export into a new file", args.into.display()),
    }
    let progress = Progress::new("restore");
    let restored = reservoir_wal::restore::restore(&args.from, Config::default(), target, !args.exclusive, |lsn, n| {
        progress.update(lsn, n)
    })
    .context("restore")?;
    progress.finish();
    for (lsn, why) in &restored.snapshots_skipped {
        println!("snapshot   {} skipped: {why}", lsn.0);
    }
    let provenance = describe_restore(&args, &restored);
    print!("{provenance}");
    match &args.tenant {
        None => {
            let written = reservoir_wal::restore::write_data_directory(&restored, &args.into, now_ms()?, &provenance)
                .context("write the restored data directory")?;
            println!("written    {} (snapshot {}, a new history)", args.into.display(), written.path.display());
            println!("next       reservoir verify --data-dir {}", args.into.display());
        }
        Some(tenant) => {
            let rows = write_tenant_export(&restored, tenant, &args.into)?;
            println!("written    {} ({rows} items of tenant {tenant})", args.into.display());
            println!("next       reservoir print-export {}", args.into.display());
        }
    }
    Ok(())
}

fn describe_restore(args: &RestoreArgs, restored: &Restored) -> String {
    let mut text = String::new();
    let target = match (&args.to_time, args.to_lsn) {
        (Some(time), _) => format!("time {time}"),
        (_, Some(lsn)) => format!("LSN {lsn}"),
        _ => String::new(),
    };
    let inclusive = if args.exclusive { "exclusive" } else { "inclusive" };
    text.push_str(&format!(
        "source     {} (history {:016x})\n",
        args.from.display(),
        restored.source_history.unwrap_or(0)
    ));
    text.push_str(&format!("target     {target} ({inclusive}): the state after LSN {}\n", restored.target.lsn.0));
    match restored.base_snapshot {
        Some(lsn) => text.push_str(&format!("base       snapshot covering LSN 1..={}\n", lsn.0)),
        None => text.push_str("base       none: replayed the log from LSN 1\n"),
    }
    text.push_str(&format!(
        "replayed   {} records in {:.2} s{}\n",
        restored.records_replayed,
        restored.seconds,
        restored.last_timestamp_ms.map(|ms| format!(", the last stamped {}", format_ms(ms))).unwrap_or_default()
    ));
    if let Some((lsn, ms)) = restored.target.first_excluded {
        text.push_str(&format!(
            "excluded   from LSN {} (stamped {}) on: `reservoir wal dump --data-dir {} --from-lsn {}` shows it\n",
            lsn.0,
            format_ms(ms),
            args.from.display(),
            lsn.0
        ));
    }
    let report = restored.engine.verify();
    text.push_str(&format!("verify     ok: {} items, {} open reservations\n", report.items, report.open_reservations));
    text
}

/// The first line of a tenant export.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ExportHeader {
    export: String,
    version: u32,
    tenant: String,
    lsn: u64,
}

/// One item of a tenant export: the fields of an import row, plus what was reserved.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ExportRow {
    sku: String,
    location: String,
    on_hand: i64,
    safety_stock: i64,
    backorder_limit: i64,
    /// Informational: reservations are not re-imported (their orders re-reserve).
    reserved: i64,
}

/// Items per page when reading a tenant's items out of an engine.
const EXPORT_PAGE_ITEMS_MAX: usize = 10_000;

fn write_tenant_export(restored: &Restored, tenant: &str, path: &Path) -> anyhow::Result<u64> {
    use std::io::Write as _;
    let engine = &restored.engine;
    let id = engine.tenant_id(tenant).with_context(|| format!("no tenant {tenant:?} at that point"))?;
    anyhow::ensure!(!path.exists(), "{} exists: export into a new file", path.display());
    // Written beside `path` and renamed there once whole and synced: an export cut short
    // leaves no shorter file that `import` would take for the tenant's state (regression,
    // review).
    let name = path.file_name().context("an export file name")?.to_string_lossy().into_owned();
    let building = path.with_file_name(format!(".{name}.exporting"));
    let file = std::fs::File::create(&building).with_context(|| format!("create {}", building.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let header = ExportHeader {
        export: "reservoir-tenant".into(),
        version: 1,
        tenant: tenant.into(),
        lsn: restored.target.lsn.0,
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    let mut rows = 0u64;
    let mut cursor = 0u64;
    loop {
        let page = engine.tenant_items(id, cursor, EXPORT_PAGE_ITEMS_MAX);
        for item in &page.items {
            let row = ExportRow {
                sku: item.sku.clone(),
                location: item.location.clone(),
                on_hand: item.counters.on_hand,
                safety_stock: item.counters.safety_stock,
                backorder_limit: item.counters.backorder_limit,
                reserved: item.counters.reserved,
            };
            writeln!(out, "{}", serde_json::to_string(&row)?)?;
            rows += 1;
        }
        match page.next_cursor {
            Some(next) => cursor = next,
            None => break,
        }
    }
    out.into_inner().map_err(|error| error.into_error())?.sync_all()?;
    anyhow::ensure!(!path.exists(), "{} appeared meanwhile: export into a new file", path.display());
    std::fs::rename(&building, path).with_context(|| format!("rename {} to {}", building.display(), path.display()))?;
    let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(parent).and_then(|directory| directory.sync_all())?;
    Ok(rows)
}

#[derive(Debug, Args)]
pub struct PrintExportArgs {
    /// A tenant export written by `reservoir restore --tenant`
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

pub fn run_print_export(args: PrintExportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("read {}", args.file.display()))?;
    let mut lines = text.lines();
    let header: ExportHeader = serde_json::from_str(lines.next().unwrap_or_default())
        .with_context(|| format!("{} is not a tenant export (bad first line)", args.file.display()))?;
    anyhow::ensure!(header.export == "reservoir-tenant" && header.version == 1, "unsupported export {header:?}");
    println!("tenant {} as of LSN {}", header.tenant, header.lsn);
    println!(
        "{:<24} {:<16} {:>12} {:>12} {:>8} {:>10}",
        "sku", "location", "on_hand", "reserved", "safety", "backorder"
    );
    // 128-bit sums: a tenant's items together may pass 2^63 units (each up to 2^50).
    let (mut on_hand, mut reserved, mut items) = (0i128, 0i128, 0u64);
    for (number, line) in lines.enumerate() {
        let row: ExportRow = serde_json::from_str(line).with_context(|| format!("line {}", number + 2))?;
        println!(
            "{:<24} {:<16} {:>12} {:>12} {:>8} {:>10}",
            row.sku, row.location, row.on_hand, row.reserved, row.safety_stock, row.backorder_limit
        );
        on_hand += i128::from(row.on_hand);
        reserved += i128::from(row.reserved);
        items += 1;
    }
    println!("total      {items} items, on_hand {on_hand}, reserved {reserved}");
    Ok(())
}

/// Mints an admin or replication token in a stopped primary's data directory (`reservoir
/// token issue|rotate SERVICE --data-dir DIR`): the way back in when the admin token is lost.
/// It takes the directory's lock, so it refuses while a server runs there (a running server
/// would overwrite the store; ask it instead). The token is printed once and never logged.
pub fn run_issue_token(
    data_directory: &Path,
    service: reservoir_net::Service,
    revoke_others: bool,
) -> anyhow::Result<()> {
    use reservoir_net::credentials::{Credentials, Grant};
    let _lock = reservoir_wal::lock_data_directory(data_directory).context("token (is a server running there?)")?;
    let path = Credentials::path(data_directory);
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: start the server once first (it prints the first tokens)",
        path.display()
    );
    let credentials = Credentials::open(data_directory).context("token")?;
    let token = credentials.issue(Grant::from(service), revoke_others, now_ms()?).context("token")?;
    println!("{} token (shown once, keep it): {token}", service.name());
    if revoke_others {
        println!("every earlier {} token is revoked", service.name());
    }
    Ok(())
}
