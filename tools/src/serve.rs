//! `reservoir serve`: the QUIC server with embedded defaults. Settings come from, in order of
//! precedence: flags, environment variables (`RESERVOIR_*`), a TOML file (`--config`), the
//! embedded defaults (README, "Configuration").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use reservoir_net::replication::{FollowOptions, ReplicationMode, StartRole};
use reservoir_net::server::{Rate, ServerOptions};
use reservoir_net::tls::CertificateFiles;
use reservoir_wal::{Durability, RetentionPolicy, SnapshotPolicy};

use crate::DurabilityArg;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML configuration file (README, "Configuration")
    #[arg(long, value_name = "FILE", env = "RESERVOIR_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory [default: ./reservoir-data]
    #[arg(long, value_name = "DIR", env = "RESERVOIR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where to listen for QUIC [default: 127.0.0.1:7878]
    #[arg(long, value_name = "ADDR", env = "RESERVOIR_LISTEN")]
    listen: Option<SocketAddr>,
    /// fsync before acknowledging (durable, the default); acknowledge once written and fsync
    /// every --sync-interval-ms (relaxed: a power cut may lose that much); or never fsync
    /// (none: tests and benchmarks only)
    #[arg(long, value_enum, env = "RESERVOIR_DURABILITY")]
    durability: Option<DurabilityArg>,
    /// With --durability relaxed: the longest time between fsyncs, its RPO on a power cut
    /// (1..=1000) [default: 10]
    #[arg(long, value_name = "MS", env = "RESERVOIR_SYNC_INTERVAL_MS")]
    sync_interval_ms: Option<u32>,
    /// The operator's certificate chain (PEM); default: generated in DATA_DIR/tls/
    #[arg(long, value_name = "FILE", env = "RESERVOIR_TLS_CERTIFICATE", requires = "tls_key")]
    tls_certificate: Option<PathBuf>,
    /// The private key of --tls-certificate (PEM)
    #[arg(long, value_name = "FILE", env = "RESERVOIR_TLS_KEY", requires = "tls_certificate")]
    tls_key: Option<PathBuf>,
    /// primary (the default) or standby (follows --primary; docs/operations.md)
    #[arg(long, value_enum, env = "RESERVOIR_ROLE")]
    role: Option<RoleArg>,
    /// A standby's primary, host:port
    #[arg(long, value_name = "ADDR", env = "RESERVOIR_PRIMARY")]
    primary: Option<String>,
    /// A standby's replication token (printed at the primary's first start)
    #[arg(long, value_name = "TOKEN", env = "RESERVOIR_REPLICATION_TOKEN", hide_env_values = true)]
    replication_token: Option<String>,
    /// A file holding the replication token instead, read again at every connection attempt:
    /// a rotated token written there is picked up without a restart
    /// (over --replication-token when both are given: clap counts an environment variable as
    /// given, so `conflicts_with` refused a file flag beside RESERVOIR_REPLICATION_TOKEN)
    #[arg(long, value_name = "FILE", env = "RESERVOIR_REPLICATION_TOKEN_FILE")]
    replication_token_file: Option<PathBuf>,
    /// The CA that signed the primary's certificate [default: DATA_DIR/tls/ca.pem]
    #[arg(long, value_name = "FILE", env = "RESERVOIR_PRIMARY_CA")]
    primary_ca: Option<PathBuf>,
    /// When a primary acknowledges: async (after its fsync) or sync (after a standby's too)
    #[arg(long, value_enum, env = "RESERVOIR_REPLICATION")]
    replication: Option<ReplicationArg>,
    /// In sync mode with no standby: fall back to async after this long (e.g. 5s); default: wait
    #[arg(long, value_name = "DURATION", env = "RESERVOIR_SYNC_FALLBACK")]
    sync_fallback: Option<String>,
    /// Warn when replication lag passes this (e.g. 1s) [default: 1s]
    #[arg(long, value_name = "DURATION", env = "RESERVOIR_RPO")]
    rpo: Option<String>,
    /// This node's address as clients and other nodes reach it [default: the listen address]
    #[arg(long, value_name = "ADDR", env = "RESERVOIR_ADVERTISE")]
    advertise: Option<String>,
    /// The other nodes (host:port, comma-separated): a primary asks them at start (with
    /// --replication-token) and starts fenced if one is the primary of a newer epoch
    #[arg(long, value_name = "ADDR,...", env = "RESERVOIR_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// Reservations, and operation ids, remembered for retries at most; past it, ids older
    /// than 5 min are forgotten early, and new mutations get memory_full [default: 20000000]
    #[arg(long, value_name = "N", env = "RESERVOIR_IDEMPOTENCY_ENTRIES_MAX")]
    idempotency_entries_max: Option<usize>,
    /// Connections one tenant's tokens may hold open at once (of the server's 10,000)
    #[arg(long, value_name = "N", env = "RESERVOIR_CONNECTIONS_PER_TENANT_MAX", default_value_t = reservoir_net::server::CONNECTIONS_PER_TENANT_MAX_DEFAULT)]
    connections_per_tenant_max: usize,
    /// Stock items (SKU at a location) one tenant may have; past it a new item is refused
    /// capacity_exceeded
    #[arg(long, value_name = "N", env = "RESERVOIR_ITEMS_PER_TENANT_MAX", default_value_t = reservoir_engine::ITEMS_PER_TENANT_MAX_DEFAULT)]
    items_per_tenant_max: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Primary,
    Standby,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplicationArg {
    Async,
    Sync,
}

/// The configuration file. Every field is optional; what is missing keeps its default.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    durability: Option<String>,
    sync_interval_ms: Option<u32>,
    tls: Option<TlsConfig>,
    rate: Option<RateConfig>,
    snapshot: Option<SnapshotConfig>,
    archive: Option<ArchiveConfig>,
    replication: Option<ReplicationConfig>,
    idempotency: Option<IdempotencyConfig>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IdempotencyConfig {
    entries_max: Option<usize>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicationConfig {
    /// "primary" or "standby".
    role: Option<String>,
    primary: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    primary_ca: Option<PathBuf>,
    /// "async" or "sync".
    mode: Option<String>,
    sync_fallback: Option<String>,
    rpo: Option<String>,
    advertise: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsConfig {
    certificate: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RateConfig {
    operations_per_second: Option<u32>,
    burst: Option<u32>,
    #[serde(default)]
    tenants: HashMap<String, TenantRate>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantRate {
    operations_per_second: u32,
    burst: u32,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotConfig {
    every_records: Option<u64>,
    every_seconds: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchiveConfig {
    age_max_hours: Option<u64>,
    bytes_max_gib: Option<u64>,
}

/// The data directory `serve` uses when nothing says otherwise.
pub const DATA_DIRECTORY_DEFAULT: &str = "reservoir-data";

/// Reads a configuration file (none: every default).
fn read_config(path: Option<&std::path::Path>) -> anyhow::Result<FileConfig> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
            toml::from_str::<FileConfig>(&text).with_context(|| format!("parse {}", path.display()))
        }
        None => Ok(FileConfig::default()),
    }
}

/// The archive's bounds a configuration file sets, the defaults where it is silent.
fn retention_of(archive: Option<ArchiveConfig>) -> RetentionPolicy {
    let archive = archive.unwrap_or_default();
    let retention = RetentionPolicy::default();
    RetentionPolicy {
        archive_age_max_ms: archive
            .age_max_hours
            .map_or(retention.archive_age_max_ms, |hours| hours.saturating_mul(3_600_000)),
        archive_bytes_max: archive.bytes_max_gib.map_or(retention.archive_bytes_max, |gib| gib.saturating_mul(1 << 30)),
    }
}

/// The archive's bounds of the configuration file at `path` (an offline `snapshot` prunes by
/// what the server keeps).
pub fn archive_retention(path: Option<&std::path::Path>) -> anyhow::Result<RetentionPolicy> {
    Ok(retention_of(read_config(path)?.archive))
}

/// Merges flags, environment, file and defaults.
pub fn options(args: &ServeArgs) -> anyhow::Result<ServerOptions> {
    let file = read_config(args.config.as_deref())?;
    let data_directory =
        args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from(DATA_DIRECTORY_DEFAULT));
    let mut options = ServerOptions::new(data_directory);
    if let Some(listen) = args.listen.or(file.listen) {
        options.listen = listen;
    }
    options.durability = match (args.durability, file.durability.as_deref()) {
        (Some(durability), _) => durability.into(),
        (None, Some("durable") | None) => Durability::Durable,
        (None, Some("relaxed")) => Durability::relaxed(),
        (None, Some("none")) => Durability::None,
        (None, Some(other)) => anyhow::bail!("durability {other:?}: durable, relaxed or none"),
    };
    // The file's interval applies only if the durability in force is relaxed: a flag's
    // `--durability durable` wins over a file's relaxed mode and its interval (regression,
    // review: it refused to start). A flag's interval with another durability is an error.
    let overridden = args.durability.is_some() && !matches!(options.durability, Durability::Relaxed { .. });
    let file_interval = file.sync_interval_ms.filter(|_| !overridden);
    if let Some(interval_ms) = args.sync_interval_ms.or(file_interval) {
        let Durability::Relaxed { sync_interval_ms } = &mut options.durability else {
            anyhow::bail!("sync_interval_ms applies to durability \"relaxed\" only");
        };
        anyhow::ensure!(
            (1..=reservoir_wal::SYNC_INTERVAL_MS_MAX).contains(&interval_ms),
            "sync_interval_ms {interval_ms}: 1..={}",
            reservoir_wal::SYNC_INTERVAL_MS_MAX
        );
        *sync_interval_ms = interval_ms;
    }
    options.certificates = match (&args.tls_certificate, &args.tls_key, file.tls) {
        (Some(certificate), Some(key), _) => {
            Some(CertificateFiles { certificate: certificate.clone(), key: key.clone() })
        }
        (None, None, Some(tls)) => Some(CertificateFiles { certificate: tls.certificate, key: tls.key }),
        _ => None,
    };
    if let Some(rate) = file.rate {
        let default = Rate::default();
        options.rate_default = Rate {
            operations_per_second: rate.operations_per_second.unwrap_or(default.operations_per_second),
            burst: rate.burst.unwrap_or(default.burst),
        };
        options.rate_per_tenant = rate
            .tenants
            .into_iter()
            .map(|(tenant, rate)| {
                (tenant, Rate { operations_per_second: rate.operations_per_second, burst: rate.burst })
            })
            .collect();
    }
    if let Some(entries_max) =
        args.idempotency_entries_max.or(file.idempotency.as_ref().and_then(|idempotency| idempotency.entries_max))
    {
        anyhow::ensure!(
            entries_max >= options.engine.id_shards,
            "idempotency entries_max {entries_max}: at least {} (one per id shard)",
            options.engine.id_shards
        );
        options.idempotency_entries_max = entries_max;
    }
    anyhow::ensure!(
        (1..=reservoir_net::server::CONNECTIONS_MAX).contains(&args.connections_per_tenant_max),
        "--connections-per-tenant-max {}: 1 to {}",
        args.connections_per_tenant_max,
        reservoir_net::server::CONNECTIONS_MAX
    );
    options.connections_per_tenant_max = args.connections_per_tenant_max;
    anyhow::ensure!(args.items_per_tenant_max >= 1, "--items-per-tenant-max 0: at least 1");
    options.items_per_tenant_max = args.items_per_tenant_max;
    let defaults = SnapshotPolicy::default();
    let snapshot = file.snapshot.unwrap_or_default();
    options.snapshot = SnapshotPolicy {
        every_records: snapshot.every_records.unwrap_or(defaults.every_records),
        every_ms: snapshot.every_seconds.map_or(defaults.every_ms, |seconds| seconds.saturating_mul(1_000)),
        retention: retention_of(file.archive),
    };
    let replication = file.replication.unwrap_or_default();
    let role = match (args.role, replication.role.as_deref()) {
        (Some(role), _) => role,
        (None, Some("standby")) => RoleArg::Standby,
        (None, Some("primary") | None) => RoleArg::Primary,
        (None, Some(other)) => anyhow::bail!("role {other:?}: primary or standby"),
    };
    options.replication.mode = match (args.replication, replication.mode.as_deref()) {
        (Some(ReplicationArg::Sync), _) | (None, Some("sync")) => ReplicationMode::Sync,
        (Some(ReplicationArg::Async), _) | (None, Some("async") | None) => ReplicationMode::Async,
        (None, Some(other)) => anyhow::bail!("replication mode {other:?}: async or sync"),
    };
    if let Some(text) = args.sync_fallback.clone().or(replication.sync_fallback) {
        options.replication.sync_fallback_ms = Some(crate::time::parse_duration_ms(&text).map_err(anyhow::Error::msg)?);
    }
    if let Some(text) = args.rpo.clone().or(replication.rpo) {
        options.replication.rpo_ms = crate::time::parse_duration_ms(&text).map_err(anyhow::Error::msg)?;
    }
    options.replication.advertise = args.advertise.clone().or(replication.advertise);
    options.replication.peers = if args.peers.is_empty() { replication.peers.clone() } else { args.peers.clone() };
    let primary_ca_path = args
        .primary_ca
        .clone()
        .or(replication.primary_ca.clone())
        .unwrap_or_else(|| reservoir_net::tls::ca_path(&options.data_directory));
    // The replication token: the command line over the file; a token file over a token.
    let token_file = args
        .replication_token_file
        .clone()
        .or_else(|| args.replication_token.is_none().then(|| replication.token_file.clone()).flatten());
    anyhow::ensure!(
        replication.token.is_none() || replication.token_file.is_none(),
        "[replication] has both token and token_file: keep one"
    );
    let token = match &token_file {
        Some(path) => Some(
            reservoir_net::replication::read_token_file(path)
                .with_context(|| format!("read the replication token file {}", path.display()))?,
        ),
        // Trimmed like a token file's (a value from a mounted secret ends in a newline).
        None => args.replication_token.clone().or(replication.token.clone()).map(|token| token.trim().to_owned()),
    };
    // Regression (review): `--primary` without `--role standby` started a writable primary,
    // on a standby's directory a second primary of the same history and epoch.
    anyhow::ensure!(
        role == RoleArg::Standby || (args.primary.is_none() && replication.primary.is_none()),
        "--primary (or [replication] primary) names a standby's primary, but the role is primary: add \
         --role standby to follow it, or drop --primary to serve as a primary"
    );
    if role == RoleArg::Primary && !options.replication.peers.is_empty() {
        let token = token.clone().context("--peers needs --replication-token (to ask the peers who is primary)")?;
        let ca_pem = std::fs::read(&primary_ca_path)
            .with_context(|| format!("read the peers' CA {}", primary_ca_path.display()))?;
        options.replication.peer_check = Some(FollowOptions {
            primary: String::new(),
            token,
            token_file: token_file.clone(),
            ca_pem,
            server_name: None,
        });
    }
    if role == RoleArg::Standby {
        let primary = args
            .primary
            .clone()
            .or(replication.primary)
            .context("a standby needs --primary ADDR (the primary's host:port)")?;
        let token = token.context(
            "a standby needs --replication-token or --replication-token-file (printed at the primary's first start)",
        )?;
        let ca = args
            .primary_ca
            .clone()
            .or(replication.primary_ca)
            .unwrap_or_else(|| reservoir_net::tls::ca_path(&options.data_directory));
        let ca_pem = std::fs::read(&ca).with_context(|| {
            format!("read the primary's CA {} (copy the primary's tls/ directory, docs/operations.md)", ca.display())
        })?;
        options.role = StartRole::Standby(FollowOptions { primary, token, token_file, ca_pem, server_name: None });
    }
    Ok(options)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut options = options(&args)?;
    if let Some(pause_ms) = std::env::var(FAILPOINT_RECOVERY_PAUSE_MS).ok().and_then(|text| text.parse().ok()) {
        options.failpoint_recovery_pause_ms = pause_ms;
    }
    if let Some(pause_ms) = std::env::var(FAILPOINT_RESTART_PAUSE_MS).ok().and_then(|text| text.parse().ok()) {
        options.failpoint_restart_pause_ms = pause_ms;
    }
    init_logging();
    abort_on_panic();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("reservoir").build()?;
    runtime.block_on(serve(options))
}

/// Set (to anything) in the environment of `reservoir serve`, a task panics once the server
/// serves: the failpoint of the end-to-end test that a panic stops the process.
pub const FAILPOINT_PANIC_WHILE_SERVING: &str = "RESERVOIR_FAILPOINT_PANIC_WHILE_SERVING";

/// Set to a number of milliseconds in the environment of `reservoir serve`, recovery holds the
/// data directory that much longer: the failpoint of the end-to-end test that a signal during
/// recovery ends the process at once.
pub const FAILPOINT_RECOVERY_PAUSE_MS: &str = "RESERVOIR_FAILPOINT_RECOVERY_PAUSE_MS";

/// Set to a number of milliseconds in the environment of `reservoir serve --role standby`, a
/// restart to change the data directory (a rewind, a base backup) pauses that long once the
/// server stopped: the failpoint of the end-to-end test that a signal then ends the process.
pub const FAILPOINT_RESTART_PAUSE_MS: &str = "RESERVOIR_FAILPOINT_RESTART_PAUSE_MS";

/// A panic anywhere in the server is a broken invariant (the engine asserts its ledger; the
/// decoders never panic on any input, which the fuzzers check): the process stops at once,
/// with SIGABRT after the usual message, instead of going on without the task that panicked.
/// Going on is worse than stopping: a command that took its LSN and panicked before its record
/// was submitted leaves a gap that holds every later write in the WAL writer, so the node would
/// stop acknowledging writes while it still looked alive. A restart recovers exactly (snapshot
/// + WAL), and a standby can be promoted.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!("panic: {info}; stopping the process (a restart recovers from the WAL)");
        std::process::abort();
    }));
}

async fn serve(options: ServerOptions) -> anyhow::Result<()> {
    let data_directory = options.data_directory.clone();
    let durability = options.durability;
    // SIGINT and SIGTERM, both listened for from here on. During recovery (and a standby's
    // restart to change its data directory, which ends in a recovery) the first ends the
    // process at once, as a crash would (recovery, a rewind and a base backup's install are
    // crash-safe, and until the first recovery nothing was served);
    // once the directory is recovered it stops the server gracefully (requests in flight
    // answered, the log synced, first-start tokens shown), and a second one ends the process
    // at once. Regression (review): SIGINT had no handler until recovery was done, and SIGTERM
    // waited for its end, minutes for a long log; then (review) a signal between recovery and
    // serving ended the process after a first start had stored tokens it never showed.
    use tokio::signal::unix::{signal, SignalKind};
    let (mut interrupt, mut terminate) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    let recovered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut options = options;
    options.recovered = Some(recovered.clone());
    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut stop_sender = Some(stop_sender);
        loop {
            let (name, code) = tokio::select! {
                _ = interrupt.recv() => ("interrupted", 130),
                _ = terminate.recv() => ("terminated", 143),
            };
            let sender = if recovered.load(std::sync::atomic::Ordering::Acquire) { stop_sender.take() } else { None };
            let Some(sender) = sender else {
                use std::io::Write as _;
                let why = if stop_sender.is_some() {
                    "during recovery (or a standby's restart to change its data directory): stopping at once \
                     (the next start recovers again)"
                } else {
                    "again: stopping at once (the next start recovers)"
                };
                let _ = writeln!(std::io::stderr(), "reservoir: {name} {why}");
                std::process::exit(code);
            };
            tracing::info!("{name}: shutting down");
            let _ = sender.send(());
        }
    });
    let stop = async move {
        let _ = stop_receiver.await;
    };
    let on_start = |server: &reservoir_net::server::ServerHandle| {
        // Not `println!`: it panics when stdout is closed (`reservoir serve | head -2`), and a
        // panic aborts the serving process (regression, review).
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Some(first) = server.first_start() {
            let _ = writeln!(out, "reservoir: a new data directory at {}", data_directory.display());
            let _ = writeln!(out, "admin token (shown once, keep it): {}", first.admin_token);
            let _ = writeln!(out, "tenant {:?} token (shown once, keep it): {}", first.demo_tenant, first.demo_token);
            let _ = writeln!(out, "replication token for standbys (shown once, keep it): {}", first.replication_token);
            let _ = writeln!(out, "clients trust: {}", reservoir_net::tls::ca_path(&data_directory).display());
            let _ = writeln!(out, "try: RESERVOIR_TOKEN={} reservoir receive SKU-1@DC1 100", first.demo_token);
        }
        let _ = writeln!(
            out,
            "reservoir: serving {} on {} as {} of epoch {} ({}, recovered up to LSN {})",
            data_directory.display(),
            server.local_addr(),
            server.role().name(),
            server.epoch(),
            match durability {
                Durability::Relaxed { sync_interval_ms } => format!("relaxed: fsync every {sync_interval_ms} ms"),
                other => other.name().to_owned(),
            },
            server.recovered_lsn().0
        );
        let _ = out.flush();
        drop(out);
        if std::env::var_os(FAILPOINT_PANIC_WHILE_SERVING).is_some() {
            tokio::spawn(async { panic!("failpoint {FAILPOINT_PANIC_WHILE_SERVING}: a task panics while serving") });
        }
    };
    let engine = reservoir_net::server::run(options, stop, on_start).await.context("serve")?;
    let report = engine.verify();
    anyhow::ensure!(report.violations.is_empty(), "the ledger does not verify: {:?}", report.violations);
    // Not `println!`: it panics when stdout is a closed pipe, and a panic now aborts the
    // process, which would turn a clean, synced stop into SIGABRT.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout(),
        "reservoir: stopped; {} items, {} open reservations, every invariant holds",
        report.items,
        report.open_reservations
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>) -> ServeArgs {
        ServeArgs {
            config,
            data_dir: None,
            listen: None,
            durability: None,
            sync_interval_ms: None,
            tls_certificate: None,
            tls_key: None,
            role: None,
            primary: None,
            replication_token: None,
            replication_token_file: None,
            primary_ca: None,
            replication: None,
            sync_fallback: None,
            rpo: None,
            advertise: None,
            peers: Vec::new(),
            idempotency_entries_max: None,
            connections_per_tenant_max: reservoir_net::server::CONNECTIONS_PER_TENANT_MAX_DEFAULT,
            items_per_tenant_max: reservoir_engine::ITEMS_PER_TENANT_MAX_DEFAULT,
        }
    }

    #[test]
    fn embedded_defaults_need_no_configuration() {
        let defaults = options(&args(None)).unwrap();
        assert_eq!(defaults.data_directory, PathBuf::from("reservoir-data"));
        assert_eq!(defaults.listen.to_string(), "127.0.0.1:7878");
        assert_eq!(defaults.durability, Durability::Durable);
        assert!(defaults.certificates.is_none());
    }

    #[test]
    fn a_configuration_file_sets_what_it_names_and_flags_win_over_it() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("reservoir.toml");
        std::fs::write(
            &path,
            r#"
data_dir = "/var/lib/reservoir"
listen = "0.0.0.0:7878"
durability = "durable"
[tls]
certificate = "/etc/reservoir/server.pem"
key = "/etc/reservoir/server.key"
[rate]
operations_per_second = 20000
burst = 5000
[rate.tenants.acme]
operations_per_second = 100
burst = 10
[snapshot]
every_records = 500000
every_seconds = 300
[archive]
age_max_hours = 24
bytes_max_gib = 8
[idempotency]
entries_max = 1000000
"#,
        )
        .unwrap();
        let read = options(&args(Some(path.clone()))).unwrap();
        assert_eq!(read.data_directory, PathBuf::from("/var/lib/reservoir"));
        assert_eq!(read.listen.to_string(), "0.0.0.0:7878");
        assert_eq!(read.certificates.unwrap().key, PathBuf::from("/etc/reservoir/server.key"));
        assert_eq!(read.rate_default, Rate { operations_per_second: 20_000, burst: 5_000 });
        assert_eq!(read.rate_per_tenant["acme"], Rate { operations_per_second: 100, burst: 10 });
        assert_eq!(read.snapshot.every_records, 500_000);
        assert_eq!(read.snapshot.every_ms, 300_000);
        assert_eq!(read.snapshot.retention.archive_bytes_max, 8 << 30);
        assert_eq!(read.idempotency_entries_max, 1_000_000);

        let mut flags = args(Some(path));
        flags.listen = Some("127.0.0.1:9000".parse().unwrap());
        flags.durability = Some(DurabilityArg::None);
        flags.idempotency_entries_max = Some(2_000_000);
        let merged = options(&flags).unwrap();
        assert_eq!(merged.idempotency_entries_max, 2_000_000);
        assert_eq!(merged.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(merged.durability, Durability::None);
    }

    #[test]
    fn relaxed_durability_takes_its_sync_interval_from_a_flag_or_the_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("reservoir.toml");
        std::fs::write(&path, "durability = \"relaxed\"\nsync_interval_ms = 50\n").unwrap();
        let read = options(&args(Some(path.clone()))).unwrap();
        assert_eq!(read.durability, Durability::Relaxed { sync_interval_ms: 50 });

        let mut flags = args(None);
        flags.durability = Some(DurabilityArg::Relaxed);
        assert_eq!(options(&flags).unwrap().durability, Durability::Relaxed { sync_interval_ms: 10 });
        flags.sync_interval_ms = Some(5_000);
        let error = options(&flags).unwrap_err().to_string();
        assert!(error.contains("1..=1000"), "{error}");
        // An interval without relaxed durability is a mistake, not ignored.
        let mut flags = args(None);
        flags.sync_interval_ms = Some(20);
        let error = options(&flags).unwrap_err().to_string();
        assert!(error.contains("relaxed"), "{error}");
        // A flag's durability wins over the file's relaxed mode, interval and all (regression,
        // review: it refused to start); the file's own durable mode with an interval is still
        // a mistake.
        let mut flags = args(Some(path));
        flags.durability = Some(DurabilityArg::Durable);
        assert_eq!(options(&flags).unwrap().durability, Durability::Durable);
        let contradiction = directory.path().join("contradiction.toml");
        std::fs::write(&contradiction, "durability = \"durable\"\nsync_interval_ms = 50\n").unwrap();
        assert!(options(&args(Some(contradiction))).is_err());
    }

    #[test]
    fn a_standby_reads_its_token_from_a_file_given_by_flag_or_in_the_file() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(directory.path().join("data/tls")).unwrap();
        std::fs::write(directory.path().join("data/tls/ca.pem"), "not read here").unwrap();
        let token_path = directory.path().join("replication-token");
        std::fs::write(&token_path, "  rsv_from_the_file\n").unwrap();
        let config = directory.path().join("reservoir.toml");
        let standby = |extra: &str| {
            format!(
                "data_dir = {:?}\n[replication]\nrole = \"standby\"\nprimary = \"10.0.0.1:7878\"\n{extra}",
                directory.path().join("data")
            )
        };
        let token_of = |options: ServerOptions| match options.role {
            StartRole::Standby(follow) => (follow.token, follow.token_file),
            other => panic!("not a standby: {other:?}"),
        };
        std::fs::write(&config, standby(&format!("token_file = {token_path:?}\n"))).unwrap();
        let read = options(&args(Some(config.clone()))).unwrap();
        assert_eq!(token_of(read), ("rsv_from_the_file".to_owned(), Some(token_path.clone())));
        // A token on the command line wins over the file's token_file.
        let mut flags = args(Some(config.clone()));
        flags.replication_token = Some("rsv_flag".into());
        assert_eq!(token_of(options(&flags).unwrap()), ("rsv_flag".to_owned(), None));
        // A flag's token file wins over the file's token.
        std::fs::write(&config, standby("token = \"rsv_in_toml\"\n")).unwrap();
        let mut flags = args(Some(config.clone()));
        flags.replication_token_file = Some(token_path.clone());
        assert_eq!(token_of(options(&flags).unwrap()), ("rsv_from_the_file".to_owned(), Some(token_path.clone())));
        // Both in the file, an empty token file, a missing one: errors, not guesses.
        std::fs::write(&config, standby(&format!("token = \"rsv_x\"\ntoken_file = {token_path:?}\n"))).unwrap();
        let error = format!("{:#}", options(&args(Some(config.clone()))).unwrap_err());
        assert!(error.contains("both token and token_file"), "{error}");
        std::fs::write(&token_path, "\n").unwrap();
        let mut flags = args(Some(config.clone()));
        flags.config = None;
        flags.role = Some(RoleArg::Standby);
        flags.primary = Some("10.0.0.1:7878".into());
        flags.data_dir = Some(directory.path().join("data"));
        flags.replication_token_file = Some(token_path.clone());
        let error = format!("{:#}", options(&flags).unwrap_err());
        assert!(error.contains("empty"), "{error}");
        flags.replication_token_file = Some(directory.path().join("missing"));
        let error = format!("{:#}", options(&flags).unwrap_err());
        assert!(error.contains("missing"), "{error}");
    }

    /// Regression (review): `--primary` without `--role standby` was ignored, and the node
    /// started as a writable primary (on a standby's directory, a second primary).
    #[test]
    fn a_primary_address_with_the_primary_role_is_refused() {
        let mut flags = args(None);
        flags.primary = Some("10.0.0.1:7878".into());
        flags.replication_token = Some("rsv_x".into());
        let error = format!("{:#}", options(&flags).unwrap_err());
        assert!(error.contains("--role standby"), "{error}");
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("reservoir.toml");
        std::fs::write(&path, "[replication]\nprimary = \"10.0.0.1:7878\"\n").unwrap();
        let error = format!("{:#}", options(&args(Some(path))).unwrap_err());
        assert!(error.contains("--role standby"), "{error}");
    }

    #[test]
    fn an_unknown_setting_is_an_error_not_ignored() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("reservoir.toml");
        std::fs::write(&path, "listne = \"0.0.0.0:7878\"\n").unwrap();
        let error = options(&args(Some(path))).unwrap_err();
        assert!(format!("{error:#}").contains("listne"), "{error:#}");
    }
}
