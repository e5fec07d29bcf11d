//! The primary's side of a replication stream, the answer to a `Fence`, and the status
//! document.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reservoir_engine::epoch::{epoch_within_reach, Fork, EPOCH_TERMS_AHEAD_MAX};
use reservoir_engine::Lsn;
use reservoir_wal::feed::FeedRead;
use reservoir_wal::{RecordTimes, WalError};

use super::wire::{
    read_message_at_most, write_message, PrimaryMessage, StandbyMessage, SNAPSHOT_CHUNK_BYTES_MAX,
    STANDBY_MESSAGE_BYTES_MAX, WAL_CHUNK_BYTES_MAX,
};
use crate::credentials::{Grant, TokenDigest};
use crate::message::NodeRole;
use crate::server::{now_ms, Core};
use crate::wire::ProtocolErrorCode;
use crate::NetError;

/// How long a base backup waits for the snapshotter to write a first snapshot.
pub const BASE_BACKUP_WAIT_MS_MAX: u64 = 120_000;
/// How long a primary waits for a replication stream's first message.
pub const START_WAIT_MS_MAX: u64 = 10_000;

/// Serves a replication stream (after `HelloReply` with the replication role). `token` is
/// the digest of the replication token it was opened with: a stream whose token is revoked
/// (a rotation) ends with `unauthenticated`, as a client connection's next request would.
pub(crate) async fn serve(
    core: Arc<Core>,
    connection: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    token: TokenDigest,
) {
    // A standby sends its `Start` (or `Fence`) at once: one that does not within
    // `START_WAIT_MS_MAX` holds a stream for nothing.
    let start_wait = Duration::from_millis(START_WAIT_MS_MAX);
    let first = match tokio::time::timeout(start_wait, read_message_at_most(&mut recv, STANDBY_MESSAGE_BYTES_MAX)).await
    {
        Ok(Ok(Some(body))) => StandbyMessage::decode(&body),
        Ok(Err(error)) => {
            tracing::info!(%error, "replication stream refused before its start");
            return;
        }
        Ok(Ok(None)) => return,
        Err(_) => {
            tracing::info!("replication stream sent no start within {START_WAIT_MS_MAX} ms");
            return;
        }
    };
    let outcome = match first {
        Ok(StandbyMessage::Start { next_lsn, history, epoch, epochs, epochs_complete, name }) => {
            let address = connection.remote_address().to_string();
            let name = if name.is_empty() { address.clone() } else { name };
            let epochs = StandbyEpochs {
                last: epoch,
                history: epochs.into_iter().map(|(epoch, lsn)| (epoch, Lsn(lsn))).collect(),
                complete: epochs_complete,
            };
            stream(&core, &mut send, recv, token, next_lsn, history, epochs, name, address).await
        }
        Ok(StandbyMessage::Fence { epoch, primary: _ }) if !epoch_within_reach(core.epoch(), epoch) => {
            let why = out_of_reach(core.epoch(), epoch, "a fence");
            refuse(&mut send, ProtocolErrorCode::Forbidden, why, None).await
        }
        Ok(StandbyMessage::Fence { epoch, primary }) => {
            if epoch > core.epoch() {
                core.fence(epoch, Some(primary).filter(|primary| !primary.is_empty()));
            }
            let (epoch, primary) = core.highest_epoch();
            let answer = PrimaryMessage::Fenced { epoch, primary };
            write_message(&mut send, |out| answer.encode(out)).await
        }
        Ok(StandbyMessage::Feedback { .. } | StandbyMessage::CredentialsStored { .. }) => {
            Err(NetError::Protocol("feedback before start".into()))
        }
        Err(error) => Err(NetError::Protocol(error.to_string())),
    };
    if let Err(error) = outcome {
        tracing::info!(%error, "replication stream ended");
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
}

/// Why a peer's epoch `theirs` is not believed (`what` names the message), logged as an error:
/// either a promotion chain this node never heard of, or a replication token in the wrong hands.
fn out_of_reach(own: u64, theirs: u64, what: &str) -> String {
    debug_assert!(!epoch_within_reach(own, theirs));
    let why = format!(
        "{what} names epoch {theirs}, more than {EPOCH_TERMS_AHEAD_MAX} promotions past this node's epoch {own}: \
         refused, not believed"
    );
    tracing::error!(own_epoch = own, their_epoch = theirs, "{why}; check who holds the replication token");
    why
}

async fn refuse(
    send: &mut quinn::SendStream,
    code: ProtocolErrorCode,
    message: String,
    primary: Option<String>,
) -> Result<(), NetError> {
    let refusal = PrimaryMessage::Refused { code, message: message.clone(), primary };
    write_message(send, |out| refusal.encode(out)).await?;
    Err(NetError::Replication(message))
}

/// The first LSN this primary can still read from its segments (archive included).
fn first_lsn_on_disk(core: &Core) -> Result<Option<Lsn>, WalError> {
    let storage = reservoir_wal::layered_storage(&core.data_directory)?;
    let sequences = reservoir_wal::Storage::list(&storage).map_err(|source| WalError::io("list the WAL", source))?;
    let Some(&first) = sequences.first() else { return Ok(None) };
    let bytes = reservoir_wal::Storage::read_prefix(&storage, first, reservoir_wal::format::SEGMENT_HEADER_BYTES)
        .map_err(|source| WalError::io("read a segment header", source))?;
    let header = reservoir_wal::format::SegmentHeader::decode(&bytes)
        .map_err(|why| WalError::BadSegmentHeader { segment: first.to_string(), why: why.into() })?;
    Ok(Some(header.first_lsn))
}

/// What a standby's `Start` says of its epochs.
struct StandbyEpochs {
    /// The epoch of its last record.
    last: u64,
    /// Its epoch history, or the newest part of it.
    history: Vec<(u64, Lsn)>,
    /// Whether `history` is all of it.
    complete: bool,
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    core: &Arc<Core>,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
    token: TokenDigest,
    next_lsn: u64,
    history: u64,
    epochs: StandbyEpochs,
    name: String,
    address: String,
) -> Result<(), NetError> {
    let own_epoch = core.epoch();
    let epoch = epochs.last;
    if core.role() != NodeRole::Primary {
        let why = format!("this node is a {}, not a primary", core.role().name());
        return refuse(send, ProtocolErrorCode::NotPrimary, why, core.primary_address()).await;
    }
    if !epoch_within_reach(own_epoch, epoch) {
        let why = out_of_reach(own_epoch, epoch, "a standby's start");
        return refuse(send, ProtocolErrorCode::Forbidden, why, None).await;
    }
    if epoch > own_epoch {
        core.fence(epoch, None);
        let why = format!("the standby has seen epoch {epoch}, this primary is at {own_epoch}: fenced");
        return refuse(send, ProtocolErrorCode::NotPrimary, why, None).await;
    }
    let durable = core.wal.durable_lsn().0;
    let needs_base = history == 0 || history != core.wal.history() || next_lsn == 0;
    if !needs_base {
        match core.engine.fork_from(&epochs.history, epochs.complete) {
            Fork::At(fork) if next_lsn > fork.0 => {
                // The standby's log holds records past where the two histories part.
                let rewind = PrimaryMessage::Rewind { keep_through: fork.0 - 1, epoch: own_epoch };
                tracing::warn!(standby = %name, keep_through = fork.0 - 1, "standby's log forks from this one: it must rewind");
                return write_message(send, |out| rewind.encode(out)).await;
            }
            Fork::Unknown => {
                tracing::warn!(standby = %name, "no epoch of the standby's history tail is this log's: a base backup");
                return base_backup(core, send, &name).await;
            }
            Fork::At(_) | Fork::None => {}
        }
        if next_lsn > durable + 1 {
            let why = format!(
                "the standby holds records up to LSN {} but this primary only up to {durable}: it is not a \
                 standby of this log (restore it from this primary with a fresh data directory)",
                next_lsn - 1
            );
            return refuse(send, ProtocolErrorCode::Internal, why, None).await;
        }
    }
    let reachable = next_lsn > durable
        || matches!(core.wal.durable_lsn_reader().feed_read(Lsn(next_lsn), 1), FeedRead::Frames { .. })
        || first_lsn_on_disk(core)?.is_some_and(|first| first.0 <= next_lsn);
    if needs_base || !reachable {
        return base_backup(core, send, &name).await;
    }
    core.wal.durable_lsn_reader().enable_feed();
    let accept = PrimaryMessage::Accept { epoch: own_epoch, history: core.wal.history(), durable_lsn: durable };
    write_message(send, |out| accept.encode(out)).await?;
    let Some(id) = core.hub.register(name.clone(), address, next_lsn, now_ms()) else {
        return refuse(
            send,
            ProtocolErrorCode::TooManyInFlight,
            format!("{} standbys already", super::STANDBYS_MAX),
            None,
        )
        .await;
    };
    tracing::info!(standby = %name, from_lsn = next_lsn, "standby connected");
    let result = ship(core, send, recv, &token, id, Lsn(next_lsn)).await;
    core.hub.unregister(id);
    tracing::info!(standby = %name, "standby disconnected");
    result
}

/// Messages from a standby read ahead of the shipping loop at most.
const FEEDBACK_QUEUED_MAX: usize = 64;

/// What a standby said on its stream, past its `Start`.
enum Heard {
    /// `written_lsn`, `applied_lsn`.
    Feedback(u64, u64),
    /// The credential store of this generation is durable there.
    CredentialsStored(u64),
}

/// How long a stream whose replication token was revoked waits for the standby to store the
/// credential store that revoked it, before the stream ends.
pub const CREDENTIALS_STORED_WAIT_MS_MAX: u64 = 5_000;

/// Reads the standby's messages until it reports the credential store of `generation` (or
/// later) durable, at most [`CREDENTIALS_STORED_WAIT_MS_MAX`].
async fn wait_for_credentials_stored(
    core: &Arc<Core>,
    id: u64,
    feedback: &mut tokio::sync::mpsc::Receiver<Result<Heard, NetError>>,
    generation: u64,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(CREDENTIALS_STORED_WAIT_MS_MAX);
    loop {
        match tokio::time::timeout_at(deadline, feedback.recv()).await {
            Ok(Some(Ok(Heard::CredentialsStored(stored)))) => {
                if core.hub.credentials_stored(id, stored).is_some_and(|held| held >= generation) {
                    return;
                }
            }
            Ok(Some(Ok(Heard::Feedback(written, applied)))) => {
                core.hub.update(id, |entry| entry.acknowledged(written, applied));
            }
            Ok(Some(Err(_)) | None) | Err(_) => return,
        }
    }
}

/// Ships the credential store if it changed since `shipped` (which it updates). `Ok(false)`:
/// the change revoked this stream's own replication token; the standby has been given a while
/// to store the store that revoked it, and the caller ends the stream.
async fn ship_credentials(
    core: &Arc<Core>,
    send: &mut quinn::SendStream,
    token: &TokenDigest,
    id: u64,
    feedback: &mut tokio::sync::mpsc::Receiver<Result<Heard, NetError>>,
    shipped: &mut u64,
) -> Result<bool, NetError> {
    let generation = core.credentials.generation();
    if generation == *shipped {
        return Ok(true);
    }
    *shipped = generation;
    // Shipped first even when this stream's own token was revoked: the standby then refuses
    // every other token revoked by now too. Exported after the generation was read: the store
    // shipped holds every change up to it (a change updates the store before it moves the
    // generation).
    let message = PrimaryMessage::Credentials { generation, json: core.credentials.export() };
    write_message(send, |out| message.encode(out)).await?;
    core.hub.update(id, |entry| entry.credentials_sent = Some(generation));
    // The store is updated before its generation moves: this lookup sees the change.
    if core.credentials.still_grants(token, &Grant::Replication) {
        return Ok(true);
    }
    // Its `CredentialsStored` first, for a while: the rotation's answer carries the token this
    // standby needs to come back, and it may be the only one.
    wait_for_credentials_stored(core, id, feedback, generation).await;
    tracing::warn!(standby = id, "the standby's replication token was revoked: its stream ends");
    Ok(false)
}

/// Ships WAL from `cursor` on, forever: durable records as they become durable, heartbeats
/// when idle, the credential store when it changes; and reads the standby's feedback. Ends
/// when the stream's replication token is revoked.
async fn ship(
    core: &Arc<Core>,
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
    token: &TokenDigest,
    id: u64,
    mut cursor: Lsn,
) -> Result<(), NetError> {
    let mut local = core.local_durable.clone();
    let mut heartbeat = tokio::time::interval(Duration::from_millis(core.replication.heartbeat_ms.max(1)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut credentials_generation = u64::MAX;
    let reader = core.wal.durable_lsn_reader();
    // Where the last read from the segments stopped (a standby behind the feed).
    let mut disk: Option<reservoir_wal::FrameReader> = None;
    // Feedback arrives on the same stream; a separate task reads it so writes never wait on it.
    let (feedback_sender, mut feedback) = tokio::sync::mpsc::channel::<Result<Heard, NetError>>(FEEDBACK_QUEUED_MAX);
    let reader_task = tokio::spawn(async move {
        loop {
            let message = match read_message_at_most(&mut recv, STANDBY_MESSAGE_BYTES_MAX).await {
                Ok(Some(body)) => StandbyMessage::decode(&body).map_err(|error| NetError::Protocol(error.to_string())),
                Ok(None) => Err(NetError::Connection("the standby closed the stream".into())),
                Err(error) => Err(error),
            };
            let item = match message {
                Ok(StandbyMessage::Feedback { written_lsn, applied_lsn }) => {
                    Ok(Heard::Feedback(written_lsn, applied_lsn))
                }
                Ok(StandbyMessage::CredentialsStored { generation }) => Ok(Heard::CredentialsStored(generation)),
                Ok(other) => Err(NetError::Protocol(format!("unexpected {other:?}"))),
                Err(error) => Err(error),
            };
            let stop = item.is_err();
            if feedback_sender.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    let outcome = loop {
        if core.role() != NodeRole::Primary {
            let why = format!("this node is now a {}", core.role().name());
            break refuse(send, ProtocolErrorCode::NotPrimary, why, core.primary_address()).await;
        }
        // Registered before the generation is read, so a change after the read still wakes
        // the wait below at once (not only once its `credentials_changed` record is durable).
        let credentials_changed = core.credentials.changed.notified();
        // Read before the generation: a record durable by now was written after any change the
        // generation read misses, so the store goes out ahead of the records that followed its
        // change (frames from the feed may reach further: checked again before each chunk).
        let durable = *local.borrow_and_update();
        let revoked = "the replication token was revoked (or rotated): give the standby a current one";
        match ship_credentials(core, send, token, id, &mut feedback, &mut credentials_generation).await {
            Ok(true) => {}
            Ok(false) => break refuse(send, ProtocolErrorCode::Unauthenticated, revoked.into(), None).await,
            Err(error) => break Err(error),
        }
        let mut failed = None;
        let mut token_revoked = false;
        while cursor <= durable {
            let (last_lsn, frames, durable_ms) = match reader.feed_read(cursor, WAL_CHUNK_BYTES_MAX) {
                FeedRead::Frames { last_lsn, frames, durable_ms } => {
                    disk = None;
                    (last_lsn, frames, Some(durable_ms))
                }
                FeedRead::Nothing => break,
                FeedRead::NotHeld => {
                    // Behind the feed: read from the segments, continuing the last disk read
                    // when it stopped at the cursor (one pass over the log, not a scan from the
                    // segment's start per chunk).
                    let directory = core.data_directory.clone();
                    let continued = disk.take().filter(|reader| reader.next_lsn() == cursor);
                    let from = cursor;
                    let read = tokio::task::spawn_blocking(move || -> Result<_, WalError> {
                        let mut reader = match continued {
                            Some(reader) => reader,
                            None => reservoir_wal::frame_reader(&directory, from)?,
                        };
                        let mut frames = Vec::new();
                        let last_lsn = reader.read(durable, WAL_CHUNK_BYTES_MAX, &mut frames)?;
                        Ok((reader, last_lsn, frames))
                    })
                    .await;
                    match read {
                        // Read back from the segments: durable long ago, when is not kept (the
                        // lag then counts from the record's execution, an upper bound).
                        Ok(Ok((reader, last_lsn, frames))) => {
                            disk = Some(reader);
                            (last_lsn, frames, None)
                        }
                        Ok(Err(error)) => {
                            failed = Some(NetError::Wal(error));
                            break;
                        }
                        Err(error) => {
                            failed = Some(NetError::Replication(error.to_string()));
                            break;
                        }
                    }
                }
            };
            assert!(last_lsn >= cursor && !frames.is_empty(), "a chunk holds the cursor's record");
            // The feed's frames may reach past `durable` (read before the generation above), to
            // a `credentials_changed` record whose store that read missed: the store goes out
            // again first if it changed, so a standby never holds such a record without its
            // store. Regression (review): the record could be shipped, written and reported
            // ahead of the store, and the rotation answered.
            match ship_credentials(core, send, token, id, &mut feedback, &mut credentials_generation).await {
                Ok(true) => {}
                Ok(false) => {
                    token_revoked = true;
                    break;
                }
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
            let timestamp_ms = reservoir_wal::format::frame_timestamp_ms(&frames);
            let first = RecordTimes { timestamp_ms, durable_ms: durable_ms.unwrap_or(timestamp_ms) };
            let bytes = frames.len() as u64;
            let message = PrimaryMessage::Wal { durable_lsn: durable.0, now_ms: now_ms(), frames };
            if let Err(error) = write_message(send, |out| message.encode(out)).await {
                failed = Some(error);
                break;
            }
            core.hub.update(id, |entry| {
                entry.state = "streaming";
                entry.sent(last_lsn.0, bytes, first);
            });
            cursor = Lsn(last_lsn.0 + 1);
        }
        if let Some(error) = failed {
            break Err(error);
        }
        if token_revoked {
            break refuse(send, ProtocolErrorCode::Unauthenticated, revoked.into(), None).await;
        }
        tokio::select! {
            changed = local.changed() => if changed.is_err() { break Ok(()) },
            _ = heartbeat.tick() => {
                let message = PrimaryMessage::Heartbeat { durable_lsn: core.wal.durable_lsn().0, now_ms: now_ms() };
                if let Err(error) = write_message(send, |out| message.encode(out)).await {
                    break Err(error);
                }
                core.hub.update(id, |entry| if entry.sent_lsn >= durable.0 { entry.state = "streaming" });
            }
            item = feedback.recv() => match item {
                Some(Ok(Heard::Feedback(written, applied))) => core.hub.update(id, |entry| entry.acknowledged(written, applied)),
                Some(Ok(Heard::CredentialsStored(generation))) => {
                    core.hub.credentials_stored(id, generation);
                }
                Some(Err(error)) => break Err(error),
                None => break Err(NetError::Connection("the feedback reader stopped".into())),
            },
            _ = core.node_changed.notified() => {}
            _ = credentials_changed => {}
        }
    };
    reader_task.abort();
    outcome
}

/// Sends the newest snapshot (asking the snapshotter for one if there is none yet).
async fn base_backup(core: &Arc<Core>, send: &mut quinn::SendStream, name: &str) -> Result<(), NetError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(BASE_BACKUP_WAIT_MS_MAX);
    let mut requested = false;
    let (covers, path) = loop {
        let snapshots = reservoir_wal::archive::all_snapshots(&core.data_directory)?;
        if let Some((lsn, path)) = snapshots.into_iter().max_by_key(|(lsn, _)| *lsn) {
            break (lsn, path);
        }
        if !requested {
            core.snapshotter.request();
            requested = true;
        }
        if tokio::time::Instant::now() >= deadline {
            return refuse(send, ProtocolErrorCode::Internal, "no snapshot for a base backup".into(), None).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Retention may have moved it to the archive since it was listed.
    let file = std::fs::File::open(&path)
        .or_else(|error| {
            std::fs::File::open(reservoir_wal::archive::archived_path(&core.data_directory, covers)).map_err(|_| error)
        })
        .map_err(|source| NetError::io(path.display().to_string(), source))?;
    let bytes = file.metadata().map_err(|source| NetError::io(path.display().to_string(), source))?.len();
    tracing::info!(standby = %name, covers_lsn = covers.0, bytes, "sending a base backup");
    let header = PrimaryMessage::BaseBackup { covers_lsn: covers.0, bytes };
    write_message(send, |out| header.encode(out)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut left = bytes;
    while left > 0 {
        use tokio::io::AsyncReadExt as _;
        let mut chunk = vec![0u8; (left as usize).min(SNAPSHOT_CHUNK_BYTES_MAX)];
        file.read_exact(&mut chunk).await.map_err(|source| NetError::io(path.display().to_string(), source))?;
        left -= chunk.len() as u64;
        let message = PrimaryMessage::SnapshotChunk { bytes: chunk };
        write_message(send, |out| message.encode(out)).await?;
    }
    Ok(())
}

/// The node's status document (docs/protocol.md, "status"; `reservoir status`).
pub(crate) fn status(core: &Core) -> serde_json::Value {
    let now = now_ms();
    let durable = core.wal.durable_lsn().0;
    let applied = core.engine.next_lsn().0 - 1;
    let acknowledged = core.durable.borrow().0;
    let reader = core.wal.durable_lsn_reader();
    let standbys: Vec<serde_json::Value> = core
        .hub
        .standbys
        .lock()
        .iter()
        .map(|entry| {
            let lag = entry.lag(durable, now, |lsn| reader.feed_times_from(Lsn(lsn)));
            serde_json::json!({
                "name": entry.name,
                "address": entry.address,
                "state": entry.state,
                "connected_ms": entry.connected_ms,
                "sent_lsn": entry.sent_lsn,
                "written_lsn": entry.written_lsn,
                "applied_lsn": entry.applied_lsn,
                "lag": lag,
            })
        })
        .collect();
    let role = core.role();
    let sync_state = match (role, core.replication.mode) {
        (NodeRole::Primary, super::ReplicationMode::Sync) => {
            if core.sync_degraded.load(Ordering::Acquire) {
                "degraded_to_async"
            } else if core.hub.best_written().is_some() {
                "sync"
            } else {
                "waiting_for_standby"
            }
        }
        _ => "async",
    };
    let following = (role == NodeRole::Standby).then(|| {
        let following = core.following.lock();
        serde_json::json!({
            "primary": following.primary,
            "connected": following.connected,
            "state": following.state,
            "primary_durable_lsn": following.primary_durable_lsn,
            "written_lsn": durable,
            "applied_lsn": applied,
            "lag": following.lag(applied),
            "last_error": following.last_error,
            "sessions": following.sessions,
        })
    });
    let usage = core.engine.idempotency_usage();
    let wal_stats = core.wal.stats();
    serde_json::json!({
        "role": role.name(),
        "epoch": core.epoch(),
        "term": reservoir_engine::epoch::epoch_term(core.epoch()),
        "epochs": core.engine.epoch_history().iter().map(|&(epoch, lsn)| serde_json::json!({"epoch": epoch, "first_lsn": lsn.0})).collect::<Vec<_>>(),
        "primary": core.primary_address(),
        "advertise": core.advertise,
        "history": format!("{:016x}", core.wal.history()),
        "applied_lsn": applied,
        "durable_lsn": durable,
        "acknowledged_lsn": acknowledged,
        "requests_in_flight": core.counters.in_flight.load(std::sync::atomic::Ordering::Acquire),
        "reply_bytes_held": core.counters.reply_bytes_held.load(std::sync::atomic::Ordering::Acquire),
        "wal": {
            "durability": core.wal.durability().name(),
            "sync_interval_ms": match core.wal.durability() {
                reservoir_wal::Durability::Relaxed { sync_interval_ms } => Some(sync_interval_ms),
                _ => None,
            },
            "written_lsn": core.wal.written_lsn().0,
            "stats": {
                "records": wal_stats.records,
                "group_commits": wal_stats.batches,
                "syncs": wal_stats.syncs,
                "bytes": wal_stats.bytes,
                "sync_ms_total": wal_stats.sync_ns / 1_000_000,
            },
        },
        "replication": {
            "mode": core.replication.mode.name(),
            "sync_state": sync_state,
            "sync_fallback_ms": core.replication.sync_fallback_ms,
            "rpo_ms": core.replication.rpo_ms,
        },
        "standbys": standbys,
        "following": following,
        "idempotency": {
            "reservations": usage.reservations,
            "operations": usage.operations,
            "entries_max": usage.entries_max,
            "fullest_shard": usage.fullest_shard,
            "shard_max": usage.shard_max,
            "retention_ms": core.engine.config().idempotency_retention_ms,
            "retention_floor_ms": reservoir_engine::IDEMPOTENCY_RETENTION_FLOOR_MS,
        },
        "now_ms": now,
    })
}
