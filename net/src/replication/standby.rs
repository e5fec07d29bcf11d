//! The standby's side: follow the primary, apply and persist what it ships; promotion; and,
//! once promoted, fencing the former primary.

use std::sync::Arc;
use std::time::Duration;

use reservoir_engine::epoch::{epoch_after, EPOCH_TAG_MAX};
use reservoir_engine::{Body, Command, Lsn, Record, Reply, ResultCode};
use reservoir_wal::format::{decode_frame, Frame};

use super::wire::{read_message, write_message, PrimaryMessage, StandbyMessage, EPOCHS_SENT_MAX};
use super::{backoff, FollowOptions, Restart};
use crate::message::{ClientFrame, Hello, NodeRole, Role, ServerFrame};
use crate::server::Core;
use crate::wire::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use crate::{decode_server_frame, FrameDecoder, NetError};

/// Bytes of a base backup at most (a snapshot of the largest engine this build holds).
pub const BASE_BACKUP_BYTES_MAX: u64 = 256 << 30;
/// How many times a promoted node sends its former primary a `Fence` (to fence it, then to
/// hear of a higher epoch), [`FENCE_INTERVAL_MS`] apart.
pub const FENCE_ATTEMPTS_MAX: u32 = 3_600;
/// The pause between two `Fence`s of a promoted node.
pub const FENCE_INTERVAL_MS: u64 = 1_000;
/// How long one connection attempt to a primary may take.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// The `following.state`s of a standby that is about to change its data directory offline (it
/// stays in one until the restart): a promotion is refused in them, since the restart would
/// move aside or cut the log of the promoted node's own epoch.
pub const DIRECTORY_CHANGE_STATES: [&str; 2] = ["base_backup", "rewinding"];

/// An open replication connection: the QUIC connection and its first stream, after the
/// handshake.
pub(crate) struct Link {
    pub connection: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub epoch: u64,
    pub node: NodeRole,
}

/// Connects to `address` with a replication token and completes the handshake.
pub(crate) async fn connect(address: &str, options: &FollowOptions) -> Result<Link, NetError> {
    let attempt = async {
        let token = options.current_token()?;
        let client_config = crate::tls::client_config(&options.ca_pem)?;
        let connection = crate::client::dial(address, options.server_name.as_deref(), &client_config).await?;
        let (mut send, mut recv) =
            connection.open_bi().await.map_err(|error| NetError::Connection(error.to_string()))?;
        let mut bytes = Vec::new();
        ClientFrame::Hello(Hello {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_MAX,
            token: token.into_bytes(),
        })
        .encode(&mut bytes)
        .map_err(|error| NetError::Protocol(error.to_string()))?;
        send.write_all(&bytes).await.map_err(|error| NetError::Connection(error.to_string()))?;
        let mut decoder = FrameDecoder::new();
        let mut byte = [0u8; 1];
        let frame = loop {
            if let Some(frame) = decoder.pop() {
                break decode_server_frame(frame).map_err(|error| NetError::Protocol(error.to_string()))?;
            }
            // One byte at a time: nothing after the HelloReply may be taken here.
            recv.read_exact(&mut byte).await.map_err(|error| NetError::Connection(error.to_string()))?;
            decoder.push(&byte).map_err(|error| NetError::Protocol(error.to_string()))?;
        };
        match frame {
            ServerFrame::HelloReply(hello) if hello.role == Role::Replication => {
                Ok(Link { connection, send, recv, epoch: hello.epoch, node: hello.node })
            }
            ServerFrame::HelloReply(hello) => {
                Err(NetError::Replication(format!("the token is not a replication token (role {:?})", hello.role)))
            }
            ServerFrame::Error(error) => Err(NetError::Refused(error)),
            other => Err(NetError::Protocol(format!("expected HelloReply, got {other:?}"))),
        }
    };
    tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), attempt)
        .await
        .map_err(|_| NetError::Timeout(format!("{address}: no handshake within {CONNECT_TIMEOUT_MS} ms")))?
}

/// What one session with the primary ended with.
enum Ended {
    /// This node is no longer a standby (promoted).
    Promoted,
    Restart(Restart),
}

/// Follows the primary until promoted or until the data directory must change offline.
pub(crate) async fn follow(core: Arc<Core>, options: FollowOptions) {
    let mut attempt = 0u32;
    loop {
        if core.role() != NodeRole::Standby {
            return;
        }
        match follow_once(&core, &options, &mut attempt).await {
            Ok(Ended::Promoted) => return,
            Ok(Ended::Restart(restart)) => {
                // Never once promoted: the restart would undo the promotion and its writes.
                if core.role() != NodeRole::Standby {
                    tracing::warn!(?restart, "no longer a standby: not restarting to change the data directory");
                    return;
                }
                tracing::warn!(?restart, "the standby restarts to change its data directory");
                core.request_restart(restart);
                return;
            }
            Err(error) => {
                if core.restart_pending() {
                    // Stopping (a record that does not apply): no more following.
                    return;
                }
                {
                    let mut following = core.following.lock();
                    following.connected = false;
                    following.state = "disconnected";
                    following.last_error = Some(error.to_string());
                }
                if attempt == 0 || attempt % 50 == 0 {
                    tracing::warn!(primary = %options.primary, %error, "replication: not following (retrying)");
                }
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
}

/// The `Start` this standby sends: where its log ends and its epoch history (the newest
/// [`EPOCHS_SENT_MAX`] entries of it).
fn start_message(core: &Core, next_lsn: u64, history: u64, name: String) -> StandbyMessage {
    let mut epochs: Vec<(u64, u64)> =
        core.engine.epoch_history().into_iter().map(|(epoch, lsn)| (epoch, lsn.0)).collect();
    let epochs_complete = epochs.len() <= EPOCHS_SENT_MAX;
    epochs.drain(..epochs.len().saturating_sub(EPOCHS_SENT_MAX));
    let epoch = epochs.last().map_or(reservoir_engine::EPOCH_FIRST, |&(epoch, _)| epoch);
    debug_assert!(epochs.len() <= EPOCHS_SENT_MAX && epoch >= core.epoch());
    StandbyMessage::Start { next_lsn, history, epoch, epochs, epochs_complete, name }
}

async fn follow_once(core: &Arc<Core>, options: &FollowOptions, attempt: &mut u32) -> Result<Ended, NetError> {
    let mut link = connect(&options.primary, options).await?;
    // A fenced primary names the epoch that fenced it: a later promotion of this node must
    // go past it (regression: promoted after another standby had been, and had fenced this
    // one's primary, it drew the same term and, with a lower tag, fenced itself).
    core.hear_epoch(link.epoch);
    if link.node != NodeRole::Primary {
        return Err(NetError::Replication(format!("{} is a {}, not a primary", options.primary, link.node.name())));
    }
    if link.epoch < core.epoch() {
        return Err(NetError::Replication(format!(
            "{} is at epoch {}, older than this node's {}: not following a stale primary",
            options.primary,
            link.epoch,
            core.epoch()
        )));
    }
    let next_lsn = core.engine.next_lsn().0;
    let history = if core.history_known { core.wal.history() } else { 0 };
    let name = core.replication.name.clone().unwrap_or_else(|| core.advertise.clone());
    let start = start_message(core, next_lsn, history, name);
    write_message(&mut link.send, |out| start.encode(out)).await?;
    let first = read_message(&mut link.recv)
        .await?
        .ok_or_else(|| NetError::Connection("the primary closed the stream".into()))?;
    match PrimaryMessage::decode(&first).map_err(|error| NetError::Protocol(error.to_string()))? {
        PrimaryMessage::Accept { epoch, history, durable_lsn } => {
            tracing::info!(primary = %options.primary, epoch, from_lsn = next_lsn, primary_durable_lsn = durable_lsn, "following");
            if core.history_known && history != core.wal.history() {
                return Err(NetError::Replication("the primary accepted a log of another history".into()));
            }
            *attempt = 0;
            let mut following = core.following.lock();
            following.connected = true;
            following.state = "streaming";
            following.last_error = None;
            following.primary_durable_lsn = durable_lsn;
            following.sessions += 1;
        }
        PrimaryMessage::Rewind { keep_through, epoch } => {
            if !begin_directory_change(core, "rewinding") {
                return Ok(Ended::Promoted);
            }
            tracing::warn!(keep_through, epoch, "this node's log forks from the primary's: rewinding");
            return Ok(Ended::Restart(Restart::Rewind { keep_through }));
        }
        PrimaryMessage::BaseBackup { covers_lsn, bytes } => {
            if !begin_directory_change(core, "base_backup") {
                return Ok(Ended::Promoted);
            }
            let snapshot = receive_base_backup(core, &mut link.recv, covers_lsn, bytes).await?;
            return Ok(Ended::Restart(Restart::BaseBackup { snapshot }));
        }
        PrimaryMessage::Refused { code, message, primary } => {
            return Err(NetError::Replication(format!(
                "{} ({message}){}",
                code.name(),
                primary.map(|p| format!(", primary {p}")).unwrap_or_default()
            )));
        }
        other => return Err(NetError::Protocol(format!("unexpected first message {other:?}"))),
    }
    stream(core, link).await
}

/// Enters `state` (one of [`DIRECTORY_CHANGE_STATES`]) unless this node stopped being a
/// standby: under the apply lock, so that a promotion either came first (false) or is refused
/// until the restart (or until the session fails, which leaves the state).
fn begin_directory_change(core: &Core, state: &'static str) -> bool {
    assert!(DIRECTORY_CHANGE_STATES.contains(&state), "{state}");
    let _guard = core.apply_lock.lock();
    if core.role() != NodeRole::Standby {
        return false;
    }
    core.following.lock().state = state;
    true
}

async fn receive_base_backup(
    core: &Core,
    recv: &mut quinn::RecvStream,
    covers_lsn: u64,
    bytes: u64,
) -> Result<std::path::PathBuf, NetError> {
    if bytes > BASE_BACKUP_BYTES_MAX {
        return Err(NetError::Replication(format!("a base backup of {bytes} bytes is over the limit")));
    }
    tracing::info!(covers_lsn, bytes, "receiving a base backup");
    let directory = core.data_directory.join("incoming");
    std::fs::create_dir_all(&directory).map_err(|source| NetError::io(directory.display().to_string(), source))?;
    // One base backup at a time: whatever an earlier one left (cut short, or refused by its
    // check) goes (regression, review, tenth session: each stayed, up to the 256 GiB cap
    // each). Recovery has already finished any install that named a file here.
    if let Ok(entries) = std::fs::read_dir(&directory) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let temporary = directory.join(format!("base-{covers_lsn}.snap.tmp"));
    let path = directory.join(format!("base-{covers_lsn}.snap"));
    let outcome = receive_into(recv, bytes, &temporary, &path).await;
    if outcome.is_err() {
        let _ = std::fs::remove_file(&temporary);
        let _ = std::fs::remove_file(&path);
    }
    outcome.map(|()| path)
}

/// Receives a base backup's `bytes` into `temporary`, syncs it, renames it to `path`, and
/// checks it (on a blocking thread: loading a large snapshot takes seconds).
async fn receive_into(
    recv: &mut quinn::RecvStream,
    bytes: u64,
    temporary: &std::path::Path,
    path: &std::path::Path,
) -> Result<(), NetError> {
    use tokio::io::AsyncWriteExt as _;
    let io = |source| NetError::io(temporary.display().to_string(), source);
    let mut file = tokio::fs::File::create(temporary).await.map_err(io)?;
    let mut received = 0u64;
    while received < bytes {
        let body = read_message(recv).await?.ok_or_else(|| NetError::Connection("base backup cut short".into()))?;
        match PrimaryMessage::decode(&body).map_err(|error| NetError::Protocol(error.to_string()))? {
            PrimaryMessage::SnapshotChunk { bytes: chunk } => {
                if received + chunk.len() as u64 > bytes {
                    return Err(NetError::Protocol("base backup longer than announced".into()));
                }
                file.write_all(&chunk).await.map_err(io)?;
                received += chunk.len() as u64;
            }
            other => return Err(NetError::Protocol(format!("expected a snapshot chunk, got {other:?}"))),
        }
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    std::fs::rename(temporary, path).map_err(io)?;
    // Checked before anything is replaced: a bad transfer never costs the standby its state.
    let checked = path.to_owned();
    tokio::task::spawn_blocking(move || reservoir_wal::snapshot::load(&checked).map(drop))
        .await
        .map_err(|error| NetError::Replication(format!("the base backup's check ended: {error}")))?
        .map_err(NetError::Wal)?;
    assert_eq!(received, bytes);
    Ok(())
}

/// Applies and persists shipped WAL; reports progress; ends when promoted.
/// Messages read ahead of the apply loop at most (a WAL message is at most a 4 MiB record and
/// its fields; only the rare credential store may reach `REPLICATION_MESSAGE_BYTES_MAX`, 33 MiB).
pub const MESSAGES_READ_AHEAD_MAX: usize = 4;

async fn stream(core: &Arc<Core>, link: Link) -> Result<Ended, NetError> {
    let Link { connection: _connection, mut send, mut recv, .. } = link;
    // Reading a message is not cancel-safe (a partly read message would be lost and the
    // stream misread from there), so one task reads whole messages and hands them over a
    // channel, which the loop below can wait on beside its timers.
    let (sender, mut messages) = tokio::sync::mpsc::channel::<Result<Vec<u8>, NetError>>(MESSAGES_READ_AHEAD_MAX);
    let reader = tokio::spawn(async move {
        loop {
            let item = match read_message(&mut recv).await {
                Ok(Some(body)) => Ok(body),
                Ok(None) => Err(NetError::Connection("the primary closed the stream".into())),
                Err(error) => Err(error),
            };
            let stop = item.is_err();
            if sender.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    let outcome = follow_stream(core, &mut send, &mut messages).await;
    reader.abort();
    outcome
}

async fn follow_stream(
    core: &Arc<Core>,
    send: &mut quinn::SendStream,
    messages: &mut tokio::sync::mpsc::Receiver<Result<Vec<u8>, NetError>>,
) -> Result<Ended, NetError> {
    let mut local = core.local_durable.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(core.replication.heartbeat_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = (0u64, 0u64);
    // No feedback before the stream's first store (the primary ships it first) is stored here:
    // what this node holds may predate a credential change its log already covers (a base
    // backup's snapshot, a reconnect after the change), and a `sync` primary answers a token's
    // change once a standby's written LSN passes its record. Regression (review): the first
    // tick's feedback could report a base backup's LSN before the store that came with it.
    let mut stored_first = false;
    loop {
        tokio::select! {
            body = messages.recv() => {
                let body = body.ok_or_else(|| NetError::Connection("the stream reader stopped".into()))??;
                match PrimaryMessage::decode(&body).map_err(|error| NetError::Protocol(error.to_string()))? {
                    PrimaryMessage::Wal { durable_lsn, now_ms, frames } => {
                        if !apply(core, &frames)? {
                            return Ok(Ended::Promoted);
                        }
                        let applied_lsn = core.engine.next_lsn().0 - 1;
                        let mut following = core.following.lock();
                        following.heard(durable_lsn, now_ms, applied_lsn);
                        following.bytes_received += frames.len() as u64;
                    }
                    PrimaryMessage::Heartbeat { durable_lsn, now_ms } => {
                        let applied_lsn = core.engine.next_lsn().0 - 1;
                        core.following.lock().heard(durable_lsn, now_ms, applied_lsn);
                    }
                    PrimaryMessage::Credentials { generation, json } => {
                        // Durable (fsynced) before it is reported: a `sync` primary answers a
                        // token's rotation only once a standby holds it. Under the apply lock,
                        // as a standby only: a promotion in between must not have a token just
                        // issued on the new primary overwritten (review).
                        {
                            let _guard = core.apply_lock.lock();
                            if core.role() != NodeRole::Standby {
                                return Ok(Ended::Promoted);
                            }
                            core.credentials.replace(&json)?;
                        }
                        stored_first = true;
                        let stored = StandbyMessage::CredentialsStored { generation };
                        write_message(send, |out| stored.encode(out)).await?;
                    }
                    PrimaryMessage::Refused { code, message, primary } => {
                        return Err(NetError::Replication(format!("{} ({message}){}", code.name(), primary.map(|p| format!(", primary {p}")).unwrap_or_default())));
                    }
                    other => return Err(NetError::Protocol(format!("unexpected {other:?}"))),
                }
            }
            changed = local.changed() => {
                if changed.is_err() {
                    return Err(NetError::Shutdown("the WAL notifier stopped".into()));
                }
            }
            _ = tick.tick() => {}
            _ = core.node_changed.notified() => {}
        }
        if core.role() != NodeRole::Standby {
            return Ok(Ended::Promoted);
        }
        let written = local.borrow().0;
        let applied = core.engine.next_lsn().0 - 1;
        if stored_first && (written, applied) != reported {
            reported = (written, applied);
            let feedback = StandbyMessage::Feedback { written_lsn: written, applied_lsn: applied };
            write_message(send, |out| feedback.encode(out)).await?;
        }
    }
}

/// Decodes `frames` and applies and persists their records, all under the apply lock (never
/// half a message). Returns false if the node stopped being a standby first.
fn apply(core: &Core, frames: &[u8]) -> Result<bool, NetError> {
    let mut records: Vec<Record> = Vec::new();
    let mut offset = 0;
    while offset < frames.len() {
        match decode_frame(&frames[offset..]) {
            (Frame::Record { record, .. }, length) => {
                records.push(record);
                offset += length;
            }
            (Frame::Zeros, _) => return Err(NetError::Protocol("zeros inside shipped WAL".into())),
            (Frame::Invalid(why) | Frame::Undecodable(why), _) => {
                return Err(NetError::Protocol(format!("shipped WAL frame: {why}")))
            }
        }
    }
    let _guard = core.apply_lock.lock();
    if core.role() != NodeRole::Standby {
        return Ok(false);
    }
    // The whole run of LSNs is checked before any record applies (regression, review, tenth
    // session: a gap inside a message was found after the records before it had applied, and
    // the engine ran ahead of the log it never wrote them to).
    let next = core.engine.next_lsn();
    for (position, record) in records.iter().enumerate() {
        let expected = next.0 + position as u64;
        if record.lsn.0 != expected {
            return Err(NetError::Protocol(format!("shipped LSN {} where {expected} was next", record.lsn.0)));
        }
    }
    let mut last_timestamp_ms = None;
    let mut epoch = None;
    for record in &records {
        assert_eq!(record.lsn, core.engine.next_lsn(), "the run was checked under the apply lock");
        // A record that does not fit this engine means the two logs differ: a broken
        // invariant, never a state to serve from. The node stops with the error (its WAL holds
        // only what applied before this message). Regression (found by audit): a panic here
        // ended the follower task alone, and the node went on serving reads, its status
        // still "streaming".
        if let Err(error) = core.engine.apply(record) {
            let why = format!("replicated record {} does not apply to this standby's state: {error}", record.lsn.0);
            tracing::error!(%why, "stopping: this node cannot follow its primary's log");
            {
                let mut following = core.following.lock();
                following.state = "failed";
                following.last_error = Some(why.clone());
            }
            core.request_restart(super::Restart::Stop { why: why.clone() });
            return Err(NetError::Replication(why));
        }
        if let Body::EpochChanged { epoch: new } = record.body {
            epoch = Some(new);
        }
        last_timestamp_ms = Some(record.timestamp_ms);
    }
    let count = records.len() as u64;
    if !records.is_empty() {
        core.wal.submit(records)?;
    }
    if let Some(epoch) = epoch {
        core.epoch.store(epoch, std::sync::atomic::Ordering::Release);
    }
    let mut following = core.following.lock();
    following.records_received += count;
    if let Some(timestamp) = last_timestamp_ms {
        following.last_applied_timestamp_ms = timestamp;
    }
    Ok(true)
}

/// Promotes this standby: no more following; an `EpochChanged` record (the next term past
/// every epoch it has seen or heard of, with a tag: `reservoir_engine::epoch`) is the first
/// of its own; then it takes writes, and fences its former primary in the background.
/// The reply is `ok` with `count` = the new epoch once the record is durable (the caller's
/// reply waits for it like any write's); `expected_mismatch` from a fenced node, and from a
/// standby about to change its data directory ([`DIRECTORY_CHANGE_STATES`]).
pub(crate) fn promote(core: &Arc<Core>, now_ms: u64, records: &mut Vec<Record>) -> Reply {
    let guard = core.apply_lock.lock();
    match core.role() {
        NodeRole::Standby => {
            let state = core.following.lock().state;
            if DIRECTORY_CHANGE_STATES.contains(&state) {
                tracing::warn!(state, "promote refused: this standby restarts to change its data directory first");
                return Reply::code(ResultCode::ExpectedMismatch);
            }
            // A standby stopping (a record that did not apply) must not lead, nor fence the
            // former primary on its way out (review, tenth session).
            if state == "failed" || core.restart_pending() {
                tracing::warn!(state, "promote refused: this standby is stopping");
                return Reply::code(ResultCode::ExpectedMismatch);
            }
        }
        NodeRole::Primary => return Reply { count: core.epoch(), ..Reply::code(ResultCode::Ok) },
        NodeRole::Fenced => return Reply::code(ResultCode::ExpectedMismatch),
    }
    let tag = core.replication.promotion_tag.unwrap_or_else(|| rand::random::<u32>() % EPOCH_TAG_MAX + 1);
    let highest = core.epoch().max(core.epoch_heard.load(std::sync::atomic::Ordering::Acquire));
    let Some(epoch) = epoch_after(highest, tag) else {
        tracing::error!(epoch = core.epoch(), "promote refused: this log has been through every term there is");
        return Reply::code(ResultCode::CapacityExceeded);
    };
    let reply = core.engine.execute(&Command::BeginEpoch { epoch }, now_ms, records);
    assert!(reply.code.is_ok(), "a standby's next epoch is new: {reply:?}");
    let epoch_lsn = records.last().expect("the epoch's record").lsn;
    core.epoch.store(epoch, std::sync::atomic::Ordering::Release);
    core.set_node(NodeRole::Primary, None);
    drop(guard);
    {
        let mut following = core.following.lock();
        following.connected = false;
        following.state = "promoted";
    }
    tracing::warn!(epoch, "promoted: this node is the primary of epoch {epoch}");
    if let super::StartRole::Standby(follow) = &core.start_role {
        tokio::spawn(fence_former_primary(Arc::downgrade(core), follow.clone(), epoch, epoch_lsn));
    }
    reply
}

/// Tells the former primary that epoch `epoch` began, until it answers (it may be down now and
/// come back later: it is fenced as soon as it is reachable); then goes on asking it, while the
/// attempts last, for the highest epoch it has heard of since. One above `epoch` means another
/// standby was promoted beside this one, to a higher epoch (and fenced the former primary
/// after this node did): this node is fenced in turn.
/// Holds the node weakly: a shutdown is never kept waiting by it.
/// Nothing is sent before the epoch's record (`epoch_lsn`) is durable here (regression,
/// review, tenth session: the fence went out at once, and a crash before the sync left the
/// former primary fenced by an epoch no log held, and no primary at all).
async fn fence_former_primary(weak: std::sync::Weak<Core>, options: FollowOptions, epoch: u64, epoch_lsn: Lsn) {
    let Some(mut local_durable) = weak.upgrade().map(|core| core.local_durable.clone()) else { return };
    if local_durable.wait_for(|durable| *durable >= epoch_lsn).await.is_err() {
        return; // the node stopped first
    }
    let mut answered = false;
    for attempt in 0..FENCE_ATTEMPTS_MAX {
        let Some(core) = weak.upgrade() else { return };
        if core.epoch() != epoch || core.role() != NodeRole::Primary {
            return;
        }
        let advertise = core.advertise.clone();
        drop(core);
        let outcome = async {
            let mut link = connect(&options.primary, &options).await?;
            let fence = StandbyMessage::Fence { epoch, primary: advertise.clone() };
            write_message(&mut link.send, |out| fence.encode(out)).await?;
            let body = read_message(&mut link.recv).await?.ok_or_else(|| NetError::Connection("closed".into()))?;
            let answer = PrimaryMessage::decode(&body).map_err(|error| NetError::Protocol(error.to_string()))?;
            link.connection.close(quinn::VarInt::from_u32(0), b"fenced");
            Ok::<_, NetError>(answer)
        }
        .await;
        match outcome {
            Ok(PrimaryMessage::Fenced { epoch: theirs, primary }) => {
                if let Some(core) = weak.upgrade() {
                    core.hear_epoch(theirs);
                }
                if !answered {
                    tracing::info!(former_primary = %options.primary, their_epoch = theirs, "the former primary is fenced");
                    answered = true;
                }
                if theirs > epoch {
                    // Another standby was promoted too, to a higher epoch: it leads, not this node.
                    if let Some(core) = weak.upgrade() {
                        core.fence(theirs, Some(primary).filter(|primary| !primary.is_empty()));
                    }
                    return;
                }
            }
            Ok(other) => tracing::warn!(?other, "unexpected answer to a fence"),
            Err(error) => {
                if attempt == 0 {
                    tracing::warn!(former_primary = %options.primary, %error, "cannot fence the former primary yet (retrying)");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(FENCE_INTERVAL_MS)).await;
    }
}
