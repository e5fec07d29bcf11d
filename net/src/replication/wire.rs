//! The replication stream's messages (docs/protocol.md, "Replication"). A standby opens a
//! connection with a replication token; after `HelloReply` the first stream carries these
//! messages instead of requests. Each is `u32` length (little-endian, of what follows), a type
//! byte and its fields, at most [`REPLICATION_MESSAGE_BYTES_MAX`] bytes: larger than a request
//! frame, because one WAL record's frame may be up to 4 MiB.

use reservoir_engine::epoch::EPOCH_MAX;
use reservoir_engine::{Lsn, EPOCH_FIRST};
use reservoir_wal::RECORD_PAYLOAD_BYTES_MAX;

use crate::wire::{ProtocolErrorCode, Reader, WireError, Writer, ERROR_MESSAGE_BYTES_MAX};
use crate::NetError;

/// Bytes of one replication message at most (after its length): room for the largest WAL
/// record and for the whole credential store, each with 1 MiB to spare for the fields around
/// it. Regression: it was sized for WAL records only (5 MiB), so a store past ~5 MiB (some
/// 30,000 tenant tokens) could not be shipped, and every standby's reconnect failed on it.
pub const REPLICATION_MESSAGE_BYTES_MAX: usize = max(RECORD_PAYLOAD_BYTES_MAX, CREDENTIALS_BYTES_MAX) + (1 << 20);

const fn max(left: usize, right: usize) -> usize {
    if left > right {
        left
    } else {
        right
    }
}
/// Bytes of WAL frames one `Wal` message carries at most (a single larger record goes alone).
pub const WAL_CHUNK_BYTES_MAX: usize = 1 << 20;
/// Bytes of snapshot one `SnapshotChunk` carries at most.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;
/// Bytes of the credential store a primary ships at most.
pub const CREDENTIALS_BYTES_MAX: usize = 32 << 20;
/// Bytes of a node name or address.
pub const NAME_BYTES_MAX: usize = 255;
/// Entries of its epoch history a standby sends in `Start` at most: the newest ones, enough to
/// hold the last epoch it shares with its primary after any realistic run of failovers (with
/// none of them shared, it gets a base backup).
pub const EPOCHS_SENT_MAX: usize = 64;

mod message_type {
    pub const START: u8 = 0x21;
    pub const FEEDBACK: u8 = 0x22;
    pub const FENCE: u8 = 0x23;
    pub const CREDENTIALS_STORED: u8 = 0x24;
    pub const ACCEPT: u8 = 0xA1;
    pub const REWIND: u8 = 0xA2;
    pub const BASE_BACKUP: u8 = 0xA3;
    pub const SNAPSHOT_CHUNK: u8 = 0xA4;
    pub const WAL: u8 = 0xA5;
    pub const HEARTBEAT: u8 = 0xA6;
    pub const CREDENTIALS: u8 = 0xA7;
    pub const REFUSED: u8 = 0xA8;
    pub const FENCED: u8 = 0xA9;
}

/// What a standby (or a promoted node fencing its former primary) sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StandbyMessage {
    /// Start streaming: the standby holds every record before `next_lsn`, in `history`
    /// (0: an empty standby), and its last record belongs to `epoch`. `epochs` is its epoch
    /// history (each epoch after the first with its first LSN, ascending: the newest
    /// [`EPOCHS_SENT_MAX`] entries, all of them if `epochs_complete`), from which the primary
    /// finds where the two logs fork.
    Start { next_lsn: u64, history: u64, epoch: u64, epochs: Vec<(u64, u64)>, epochs_complete: bool, name: String },
    /// Records up to `written_lsn` are durable on the standby, up to `applied_lsn` applied.
    Feedback { written_lsn: u64, applied_lsn: u64 },
    /// Sent by the primary of `epoch` (reachable at `primary`) to a node of a lower epoch:
    /// stop taking writes.
    Fence { epoch: u64, primary: String },
    /// The credential store shipped as `generation` is durable on the standby (it answers each
    /// `Credentials` once its file is fsynced). A primary ending a stream whose replication
    /// token was revoked reads it first, for a while; a tenant or admin token's change waits
    /// instead for its `credentials_changed` record, like a write.
    CredentialsStored { generation: u64 },
}

/// What a primary sends on a replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryMessage {
    /// `Start` accepted: `Wal` messages from the standby's `next_lsn` follow.
    Accept {
        epoch: u64,
        history: u64,
        durable_lsn: u64,
    },
    /// The standby's log forks from the primary's after `keep_through`: cut it there
    /// (its records after it were never in the primary's history), then start again.
    Rewind {
        keep_through: u64,
        epoch: u64,
    },
    /// The standby needs a base backup: a snapshot covering `covers_lsn`, `bytes` long, follows
    /// in `SnapshotChunk`s; then the primary closes the stream.
    BaseBackup {
        covers_lsn: u64,
        bytes: u64,
    },
    SnapshotChunk {
        bytes: Vec<u8>,
    },
    /// WAL frames (docs/wal.md's frame layout), whole and consecutive. `durable_lsn` and
    /// `now_ms` are the primary's, for lag.
    Wal {
        durable_lsn: u64,
        now_ms: u64,
        frames: Vec<u8>,
    },
    Heartbeat {
        durable_lsn: u64,
        now_ms: u64,
    },
    /// The primary's credential store (`credentials.json`), whole, as of the primary's store
    /// `generation` (a count of changes since the primary started; it only grows on a stream).
    Credentials {
        generation: u64,
        json: Vec<u8>,
    },
    /// The stream cannot go on (not a primary, standby ahead of the primary ...).
    Refused {
        code: ProtocolErrorCode,
        message: String,
        primary: Option<String>,
    },
    /// Answer to `Fence`: this node now refuses writes. `epoch` is the highest epoch it knows
    /// of (its own, or the one that fenced it), led by `primary` (empty: unknown). A fencing
    /// node that learns of an epoch higher than its own from it is fenced in turn.
    Fenced {
        epoch: u64,
        primary: String,
    },
}

fn finish(out: &mut Vec<u8>, start: usize, writer_error: Option<WireError>) -> Result<(), WireError> {
    if let Some(error) = writer_error {
        out.truncate(start);
        return Err(error);
    }
    let length = out.len() - start - 4;
    if length > REPLICATION_MESSAGE_BYTES_MAX {
        out.truncate(start);
        return Err(WireError::FrameTooLarge { announced: length as u64 });
    }
    out[start..start + 4].copy_from_slice(&(length as u32).to_le_bytes());
    Ok(())
}

fn encode_with(out: &mut Vec<u8>, message_type: u8, body: impl FnOnce(&mut Writer<'_>)) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut writer = Writer::new(out);
    writer.u8(message_type);
    body(&mut writer);
    let error = writer.error.take();
    finish(out, start, error)
}

fn bytes_u32(writer: &mut Writer<'_>, bytes: &[u8]) {
    writer.u32(bytes.len() as u32);
    writer.bytes(bytes);
}

/// An epoch, at most `EPOCH_MAX` (a fence of a bogus one would pin a node's highest epoch).
fn epoch(reader: &mut Reader<'_>) -> Result<u64, WireError> {
    let at = reader.at();
    let epoch = reader.u64()?;
    if epoch > EPOCH_MAX {
        return Err(WireError::BadValue { what: "epoch", value: epoch, at });
    }
    Ok(epoch)
}

fn read_bytes_u32(reader: &mut Reader<'_>, what: &'static str, max: usize) -> Result<Vec<u8>, WireError> {
    let at = reader.at();
    let length = reader.u32()? as usize;
    if length > max || length > reader.left() {
        return Err(WireError::BadValue { what, value: length as u64, at });
    }
    Ok(reader.take(length)?.to_vec())
}

impl StandbyMessage {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        match self {
            StandbyMessage::Start { next_lsn, history, epoch, epochs, epochs_complete, name } => {
                assert!(epochs.len() <= EPOCHS_SENT_MAX, "{} epochs in a start", epochs.len());
                encode_with(out, message_type::START, |w| {
                    w.u64(*next_lsn);
                    w.u64(*history);
                    w.u64(*epoch);
                    w.u16(epochs.len() as u16);
                    for &(epoch, lsn) in epochs {
                        w.u64(epoch);
                        w.u64(lsn);
                    }
                    w.flag(*epochs_complete);
                    w.string("node name", name);
                })?
            }
            StandbyMessage::Feedback { written_lsn, applied_lsn } => encode_with(out, message_type::FEEDBACK, |w| {
                w.u64(*written_lsn);
                w.u64(*applied_lsn);
            })?,
            StandbyMessage::Fence { epoch, primary } => encode_with(out, message_type::FENCE, |w| {
                w.u64(*epoch);
                w.string("primary address", primary);
            })?,
            StandbyMessage::CredentialsStored { generation } => {
                encode_with(out, message_type::CREDENTIALS_STORED, |w| w.u64(*generation))?
            }
        }
        debug_assert_eq!(StandbyMessage::decode(&out[start + 4..]).as_ref(), Ok(self), "encode/decode disagree");
        Ok(())
    }

    /// Decodes one message's body (after its length).
    pub fn decode(body: &[u8]) -> Result<StandbyMessage, WireError> {
        let mut reader = Reader::new(body);
        let at = reader.at();
        let message = match reader.u8()? {
            message_type::START => {
                let (next_lsn, history, epoch) = (reader.u64()?, reader.u64()?, reader.u64()?);
                let at = reader.at();
                let count = usize::from(reader.u16()?);
                if count > EPOCHS_SENT_MAX {
                    return Err(WireError::BadValue { what: "epoch history length", value: count as u64, at });
                }
                let mut epochs = Vec::with_capacity(count);
                for _ in 0..count {
                    epochs.push((reader.u64()?, reader.u64()?));
                }
                let epochs_complete = reader.flag("epoch history completeness")?;
                let as_history: Vec<_> = epochs.iter().map(|&(epoch, lsn)| (epoch, Lsn(lsn))).collect();
                let last = epochs.last().map_or(EPOCH_FIRST, |&(epoch, _)| epoch);
                // A tail is only sent when the whole history does not fit.
                let truncated_short = !epochs_complete && count < EPOCHS_SENT_MAX;
                // A standby's epochs begin at records it holds.
                let beyond_log = epochs.last().is_some_and(|&(_, lsn)| lsn >= next_lsn);
                if !reservoir_engine::epoch::is_history(&as_history) || last != epoch || truncated_short || beyond_log {
                    return Err(WireError::BadValue { what: "epoch history", value: count as u64, at });
                }
                StandbyMessage::Start {
                    next_lsn,
                    history,
                    epoch,
                    epochs,
                    epochs_complete,
                    name: reader.string("node name")?,
                }
            }
            message_type::FEEDBACK => {
                StandbyMessage::Feedback { written_lsn: reader.u64()?, applied_lsn: reader.u64()? }
            }
            message_type::FENCE => {
                StandbyMessage::Fence { epoch: epoch(&mut reader)?, primary: reader.string("primary address")? }
            }
            message_type::CREDENTIALS_STORED => StandbyMessage::CredentialsStored { generation: reader.u64()? },
            other => return Err(WireError::BadValue { what: "replication message type", value: u64::from(other), at }),
        };
        reader.finish()?;
        Ok(message)
    }
}

impl PrimaryMessage {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        match self {
            PrimaryMessage::Accept { epoch, history, durable_lsn } => encode_with(out, message_type::ACCEPT, |w| {
                w.u64(*epoch);
                w.u64(*history);
                w.u64(*durable_lsn);
            })?,
            PrimaryMessage::Rewind { keep_through, epoch } => encode_with(out, message_type::REWIND, |w| {
                w.u64(*keep_through);
                w.u64(*epoch);
            })?,
            PrimaryMessage::BaseBackup { covers_lsn, bytes } => encode_with(out, message_type::BASE_BACKUP, |w| {
                w.u64(*covers_lsn);
                w.u64(*bytes);
            })?,
            PrimaryMessage::SnapshotChunk { bytes } => {
                encode_with(out, message_type::SNAPSHOT_CHUNK, |w| bytes_u32(w, bytes))?
            }
            PrimaryMessage::Wal { durable_lsn, now_ms, frames } => encode_with(out, message_type::WAL, |w| {
                w.u64(*durable_lsn);
                w.u64(*now_ms);
                bytes_u32(w, frames);
            })?,
            PrimaryMessage::Heartbeat { durable_lsn, now_ms } => encode_with(out, message_type::HEARTBEAT, |w| {
                w.u64(*durable_lsn);
                w.u64(*now_ms);
            })?,
            PrimaryMessage::Credentials { generation, json } => encode_with(out, message_type::CREDENTIALS, |w| {
                w.u64(*generation);
                bytes_u32(w, json);
            })?,
            PrimaryMessage::Refused { code, message, primary } => encode_with(out, message_type::REFUSED, |w| {
                w.u16(code.number());
                w.bytes_u16("message", message.as_bytes(), ERROR_MESSAGE_BYTES_MAX);
                w.flag(primary.is_some());
                if let Some(primary) = primary {
                    w.string("primary address", primary);
                }
            })?,
            PrimaryMessage::Fenced { epoch, primary } => encode_with(out, message_type::FENCED, |w| {
                w.u64(*epoch);
                w.string("primary address", primary);
            })?,
        }
        debug_assert_eq!(PrimaryMessage::decode(&out[start + 4..]).as_ref(), Ok(self), "encode/decode disagree");
        Ok(())
    }

    /// Decodes one message's body (after its length).
    pub fn decode(body: &[u8]) -> Result<PrimaryMessage, WireError> {
        let mut reader = Reader::new(body);
        let at = reader.at();
        let message = match reader.u8()? {
            message_type::ACCEPT => {
                PrimaryMessage::Accept { epoch: reader.u64()?, history: reader.u64()?, durable_lsn: reader.u64()? }
            }
            message_type::REWIND => PrimaryMessage::Rewind { keep_through: reader.u64()?, epoch: reader.u64()? },
            message_type::BASE_BACKUP => PrimaryMessage::BaseBackup { covers_lsn: reader.u64()?, bytes: reader.u64()? },
            message_type::SNAPSHOT_CHUNK => {
                PrimaryMessage::SnapshotChunk { bytes: read_bytes_u32(&mut reader, "chunk", SNAPSHOT_CHUNK_BYTES_MAX)? }
            }
            message_type::WAL => PrimaryMessage::Wal {
                durable_lsn: reader.u64()?,
                now_ms: reader.u64()?,
                frames: read_bytes_u32(&mut reader, "frames", REPLICATION_MESSAGE_BYTES_MAX)?,
            },
            message_type::HEARTBEAT => PrimaryMessage::Heartbeat { durable_lsn: reader.u64()?, now_ms: reader.u64()? },
            message_type::CREDENTIALS => PrimaryMessage::Credentials {
                generation: reader.u64()?,
                json: read_bytes_u32(&mut reader, "credentials", CREDENTIALS_BYTES_MAX)?,
            },
            message_type::REFUSED => {
                let at = reader.at();
                let number = reader.u16()?;
                let code = ProtocolErrorCode::from_number(number).ok_or(WireError::BadValue {
                    what: "protocol error code",
                    value: u64::from(number),
                    at,
                })?;
                let message = reader.string_u16("message", ERROR_MESSAGE_BYTES_MAX)?;
                let primary =
                    if reader.flag("primary presence")? { Some(reader.string("primary address")?) } else { None };
                PrimaryMessage::Refused { code, message, primary }
            }
            message_type::FENCED => {
                PrimaryMessage::Fenced { epoch: epoch(&mut reader)?, primary: reader.string("primary address")? }
            }
            other => return Err(WireError::BadValue { what: "replication message type", value: u64::from(other), at }),
        };
        reader.finish()?;
        Ok(message)
    }
}

/// The largest message a standby sends: a `Start` with [`EPOCHS_SENT_MAX`] epochs and the
/// longest name is about 1.3 KB. What a primary reads from a standby is bounded by it, not by
/// [`REPLICATION_MESSAGE_BYTES_MAX`] (regression, found by audit: a replication-token holder
/// could make the primary allocate 33 MiB per stream).
pub const STANDBY_MESSAGE_BYTES_MAX: usize = 4_096;

/// Reads one message's body from `recv` (`None` at a clean end of the stream). The length is
/// checked before anything is allocated.
pub async fn read_message(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, NetError> {
    read_message_at_most(recv, REPLICATION_MESSAGE_BYTES_MAX).await
}

/// [`read_message`], refusing a message over `bytes_max`.
pub async fn read_message_at_most(recv: &mut quinn::RecvStream, bytes_max: usize) -> Result<Option<Vec<u8>>, NetError> {
    assert!(bytes_max <= REPLICATION_MESSAGE_BYTES_MAX);
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(error) => return Err(NetError::Connection(error.to_string())),
    }
    let length = u32::from_le_bytes(header) as usize;
    if length == 0 || length > bytes_max {
        return Err(NetError::Protocol(format!("replication message of {length} bytes")));
    }
    let mut body = vec![0u8; length];
    recv.read_exact(&mut body).await.map_err(|error| NetError::Connection(error.to_string()))?;
    Ok(Some(body))
}

/// Encodes and writes one message.
pub async fn write_message(
    send: &mut quinn::SendStream,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), WireError>,
) -> Result<(), NetError> {
    let mut bytes = Vec::new();
    encode(&mut bytes).map_err(|error| NetError::Protocol(error.to_string()))?;
    send.write_all(&bytes).await.map_err(|error| NetError::Connection(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_standby_message_fits_the_bound_a_primary_reads() {
        // A valid history of the most epochs (each epoch after the one before it, each
        // beginning at a later record).
        let mut epochs = vec![(reservoir_engine::epoch::epoch_after(reservoir_engine::EPOCH_FIRST, 1).unwrap(), 1u64)];
        while epochs.len() < EPOCHS_SENT_MAX {
            let &(epoch, lsn) = epochs.last().unwrap();
            epochs.push((reservoir_engine::epoch::epoch_after(epoch, 1).unwrap(), lsn + 1_000_000));
        }
        let start = StandbyMessage::Start {
            next_lsn: u64::MAX,
            history: u64::MAX,
            epoch: epochs.last().unwrap().0,
            epochs,
            epochs_complete: false,
            name: "n".repeat(crate::wire::STRING_BYTES_MAX),
        };
        let mut bytes = Vec::new();
        start.encode(&mut bytes).unwrap();
        let fence = StandbyMessage::Fence {
            epoch: reservoir_engine::epoch::EPOCH_MAX,
            primary: "p".repeat(crate::wire::STRING_BYTES_MAX),
        };
        let mut fence_bytes = Vec::new();
        fence.encode(&mut fence_bytes).unwrap();
        // Each message is a 4-byte length and its body.
        assert!(bytes.len() - 4 <= STANDBY_MESSAGE_BYTES_MAX, "{} bytes", bytes.len());
        assert!(fence_bytes.len() - 4 <= STANDBY_MESSAGE_BYTES_MAX);
        assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
    }
}
