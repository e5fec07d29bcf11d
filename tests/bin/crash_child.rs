//! The crash loop's child: recovers the data directory, then runs a random W1-like command
//! stream on two threads through the engine and a durable WAL, printing each command's id as
//! soon as it is acknowledged (its records fdatasynced). The parent SIGKILLs it at random
//! moments and checks that everything printed survived. Replaced by `reservoir serve` once
//! the server exists.
//!
//! The server's snapshotter takes a snapshot every [`SNAPSHOT_INTERVAL_MS`] while the writers
//! run (and moves what it covers to the archive), so kills also land during snapshot writes
//! and archive moves, and recovery starts from snapshots.
//!
//! With `relaxed` as a third argument the WAL runs in `Relaxed` mode: it acknowledges once
//! written to the OS and fdatasyncs every 10 ms, which a SIGKILL (unlike a power cut) must
//! not make lose anything acknowledged.
//!
//! Usage: reservoir-crash-child DATA_DIR RUN [relaxed]

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use reservoir_engine::workload::Workload;
use reservoir_engine::{Command, Config};
use reservoir_wal::{SnapshotPolicy, Snapshotter, WalOptions};

/// Commands per thread before the child exits on its own (the parent normally kills it first).
const COMMANDS_PER_THREAD_MAX: u64 = 1_000_000;
/// How often the child snapshots while it runs.
const SNAPSHOT_INTERVAL_MS: u64 = 60;

fn main() {
    let mut arguments = std::env::args().skip(1);
    let directory = PathBuf::from(arguments.next().expect("DATA_DIR"));
    let run: u64 = arguments.next().expect("RUN").parse().expect("RUN is a number");
    let durability = match arguments.next().as_deref() {
        None => reservoir_wal::Durability::Durable,
        Some("relaxed") => reservoir_wal::Durability::relaxed(),
        Some(other) => panic!("unknown mode {other:?}: relaxed or nothing"),
    };
    // The smallest segments, so that the snapshotter archives some during the loop.
    let options = WalOptions { segment_bytes: reservoir_wal::SEGMENT_BYTES_MIN, durability, ..WalOptions::default() };
    let opened = reservoir_wal::open_data_directory(&directory, Config::default(), options, |_| {}).expect("recover");
    let (engine, wal) = (&opened.engine, &opened.wal);
    println!(
        "recovered {} from snapshot {:?} torn={}",
        opened.recovery.scan.last_lsn.0,
        opened.snapshot,
        opened.recovery.scan.torn.is_some()
    );
    // The server's snapshot policy, on a short timer so that kills land during snapshot
    // builds and archive moves too.
    let policy = SnapshotPolicy { every_records: 0, every_ms: SNAPSHOT_INTERVAL_MS, ..SnapshotPolicy::default() };
    let durable = opened.wal.durable_lsn_reader();
    let snapshotter = Snapshotter::start(
        directory.clone(),
        Config::default(),
        policy,
        opened.snapshot.unwrap_or(reservoir_engine::Lsn(0)),
        move || durable.durable_lsn(),
    )
    .expect("start the snapshotter");
    let tenants: Vec<_> = (0..3).filter_map(|index| engine.tenant_id(&format!("tenant{}", index + 1))).collect();
    std::thread::scope(|scope| {
        for thread in 0..2u64 {
            let (engine, wal, tenants) = (engine, wal, tenants.clone());
            scope.spawn(move || {
                let mut workload =
                    Workload::new(run * 2 + thread, &format!("c{run}t{thread}"), 50).with_tenants(tenants);
                for _ in 0..COMMANDS_PER_THREAD_MAX {
                    let command = workload.next_command();
                    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64;
                    let mut records = Vec::new();
                    let reply = engine.execute(&command, now_ms, &mut records);
                    workload.observe(&command, &reply);
                    let Some(lsn) = records.iter().map(|record| record.lsn.0).max() else { continue };
                    wal.append(records).expect("append");
                    let (tenant, id) = match &command {
                        Command::Reserve { tenant, reservation, .. } => (tenant.0, reservation.as_str()),
                        Command::Extend { tenant, operation, .. }
                        | Command::Commit { tenant, operation, .. }
                        | Command::Release { tenant, operation, .. }
                        | Command::Receive { tenant, operation, .. }
                        | Command::Adjust { tenant, operation, .. }
                        | Command::SetOnHand { tenant, operation, .. }
                        | Command::Move { tenant, operation, .. }
                        | Command::SetPolicy { tenant, operation, .. }
                        | Command::Import { tenant, operation, .. } => (tenant.0, operation.as_str()),
                        _ => (u32::MAX, "-"),
                    };
                    let kind = command.kind();
                    let mut out = std::io::stdout().lock();
                    // " end" marks a whole line: a kill can cut the last one.
                    writeln!(out, "ack {lsn} {kind} {tenant} {id} end").expect("stdout");
                    out.flush().expect("stdout");
                }
            });
        }
    });
    let stats = snapshotter.stop();
    println!("snapshots {} last error {:?}", stats.snapshots, stats.last_error);
}
