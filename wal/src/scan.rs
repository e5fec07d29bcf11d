//! Reading the log back: every segment in order, every frame in LSN order, and the decision
//! at the first frame that is not a valid next record: the clean end, a torn tail (cut it), or
//! corruption (refuse to start). The rules and why they are safe: docs/wal.md, "Recovery".

use reservoir_engine::{Lsn, Record};

use crate::format::{
    self, decode_frame, Frame, SegmentHeader, FRAME_ALIGNMENT_BYTES, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::storage::Storage;
use crate::WalError;

/// Where the next frame goes: the state a writer continues from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendPosition {
    /// The segment to append to (it exists unless `segment_exists` is false).
    pub sequence: u64,
    pub offset: u64,
    pub segment_exists: bool,
    /// The LSN the next record must have.
    pub next_lsn: Lsn,
    /// The log's history id (`None` for a log with no segment yet).
    pub history: Option<u64>,
}

/// A torn tail: where the valid log ends, and what follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub sequence: u64,
    pub offset: u64,
    /// Segment files after the torn one (written in the same, unfinished group commit).
    pub later_segments: Vec<u64>,
    pub why: String,
}

/// What a scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEnd {
    /// The last valid record's LSN (0 if the log is empty).
    pub last_lsn: Lsn,
    /// Records passed to the visitor (those at or after `from_lsn`).
    pub records_visited: u64,
    pub position: AppendPosition,
    pub torn: Option<TornTail>,
    /// The LSN of the first record on disk (None if empty).
    pub first_lsn: Option<Lsn>,
    /// The visitor stopped the scan ([`Flow::Stop`]) before the end of the log.
    pub stopped: bool,
}

/// What a visitor of [`scan_until`] wants after a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop after this record: nothing later is read, so damage later in the log does not
    /// matter (point-in-time restore to a point before a corrupt record).
    Stop,
}

/// Reads every record with LSN >= `from_lsn` in order and passes it to `visit`.
/// `start_lsn` is the LSN an empty log starts at (1 for a new data directory); the log must
/// reach back to `from_lsn` (else [`WalError::MissingRecords`]) unless `start_lsn` is 0, which
/// means "wherever the log on disk starts" (for tools that print what is there).
///
/// Segments whose every record is before `from_lsn` (the next segment starts at or before it)
/// are not read beyond their header: recovery after a snapshot reads only the log after it.
pub fn scan(
    storage: &dyn Storage,
    from_lsn: Lsn,
    start_lsn: Lsn,
    mut visit: impl FnMut(&Record) -> Result<(), WalError>,
) -> Result<ScanEnd, WalError> {
    scan_until(storage, from_lsn, start_lsn, |record| visit(record).map(|()| Flow::Continue))
}

/// [`scan`], with a visitor that may stop early. A stopped scan's `position` is where the next
/// record would have been read and `stopped` is true; a writer must never continue from it.
pub fn scan_until(
    storage: &dyn Storage,
    from_lsn: Lsn,
    start_lsn: Lsn,
    mut visit: impl FnMut(&Record) -> Result<Flow, WalError>,
) -> Result<ScanEnd, WalError> {
    let sequences = storage.list().map_err(|source| WalError::io("list the WAL directory", source))?;
    for pair in sequences.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(WalError::MissingSegment {
                after: storage.describe(pair[0]),
                missing: storage.describe(pair[0] + 1),
            });
        }
    }
    let mut expected: Option<Lsn> = None;
    let mut first_lsn = None;
    let mut visited = 0u64;
    let mut position = AppendPosition {
        sequence: 0,
        offset: SEGMENT_HEADER_BYTES as u64,
        segment_exists: false,
        next_lsn: Lsn(start_lsn.0.max(1)),
        history: None,
    };
    let mut history: Option<u64> = None;
    for (place, &sequence) in sequences.iter().enumerate() {
        let is_last = place + 1 == sequences.len();
        let read_segment_header = |sequence: u64| -> Result<SegmentHeader, WalError> {
            let bytes = storage
                .read_prefix(sequence, SEGMENT_HEADER_BYTES)
                .map_err(|source| WalError::io(storage.describe(sequence), source))?;
            SegmentHeader::decode(&bytes)
                .map_err(|why| WalError::BadSegmentHeader { segment: storage.describe(sequence), why: why.into() })
        };
        if !is_last && from_lsn.0 > 1 {
            let next = read_segment_header(sequences[place + 1])?;
            if next.first_lsn <= from_lsn {
                // Every record here is before `from_lsn`: check the header, skip the body.
                let header = read_segment_header(sequence)?;
                if header.sequence != sequence || history.is_some_and(|known| known != header.history) {
                    return Err(WalError::BadSegmentHeader {
                        segment: storage.describe(sequence),
                        why: "header does not match the file's name or the log's history".into(),
                    });
                }
                history = Some(header.history);
                if expected.is_none() {
                    first_lsn = Some(header.first_lsn);
                }
                expected = Some(next.first_lsn);
                continue;
            }
        }
        let bytes = storage.read(sequence).map_err(|source| WalError::io(storage.describe(sequence), source))?;
        let header = SegmentHeader::decode(&bytes)
            .map_err(|why| WalError::BadSegmentHeader { segment: storage.describe(sequence), why: why.into() })?;
        if header.sequence != sequence || header.segment_bytes != bytes.len() as u64 {
            return Err(WalError::BadSegmentHeader {
                segment: storage.describe(sequence),
                why: "header does not match the file's name or size".into(),
            });
        }
        match history {
            None => history = Some(header.history),
            Some(known) if known != header.history => {
                return Err(WalError::BadSegmentHeader {
                    segment: storage.describe(sequence),
                    why: format!("from another history ({:016x}, the log before it is {known:016x})", header.history),
                });
            }
            Some(_) => {}
        }
        match expected {
            None => {
                if start_lsn.0 > 0 && header.first_lsn > from_lsn.max(start_lsn) {
                    return Err(WalError::MissingRecords { needed: from_lsn.max(start_lsn), first: header.first_lsn });
                }
                first_lsn = Some(header.first_lsn);
            }
            Some(lsn) if lsn != header.first_lsn => {
                return Err(WalError::Corrupt {
                    segment: storage.describe(sequence),
                    offset: 0,
                    after_lsn: Lsn(lsn.0 - 1),
                    why: format!(
                        "segment starts at LSN {} but the one before it ends at {}",
                        header.first_lsn.0,
                        lsn.0 - 1
                    ),
                });
            }
            Some(_) => {}
        }
        let mut next = header.first_lsn;
        let mut offset = SEGMENT_HEADER_BYTES;
        loop {
            let (frame, length) = decode_frame(&bytes[offset..]);
            match frame {
                Frame::Record { record, .. } if record.lsn == next => {
                    next = Lsn(next.0 + 1);
                    offset += length;
                    debug_assert_eq!(offset % FRAME_ALIGNMENT_BYTES, 0);
                    if record.lsn >= from_lsn {
                        visited += 1;
                        if visit(&record)? == Flow::Stop {
                            let position = AppendPosition {
                                sequence,
                                offset: offset as u64,
                                segment_exists: true,
                                next_lsn: next,
                                history,
                            };
                            return Ok(ScanEnd {
                                last_lsn: record.lsn,
                                records_visited: visited,
                                position,
                                torn: None,
                                first_lsn,
                                stopped: true,
                            });
                        }
                    }
                }
                // The end of a segment the writer rolled over from: zeros to its end. Zeros with
                // bytes after them are damage, in this segment as in the last (regression: they
                // were taken for the end, and the error named the next segment's start instead
                // of the damaged place).
                Frame::Zeros if !is_last && bytes[offset..].iter().all(|&byte| byte == 0) => break,
                Frame::Zeros if bytes[offset..].iter().all(|&byte| byte == 0) => {
                    position = AppendPosition {
                        sequence,
                        offset: offset as u64,
                        segment_exists: true,
                        next_lsn: next,
                        history,
                    };
                    break;
                }
                // Regression (found by audit): a checksum-valid frame that does not decode was
                // cut as a torn tail when it was the last one, though no torn write produces a
                // frame whose checksum holds: a newer or buggy encoder wrote it whole, and
                // cutting it would drop an acknowledged record. Refused wherever it is.
                Frame::Undecodable(why) => {
                    return Err(WalError::Corrupt {
                        segment: storage.describe(sequence),
                        offset: offset as u64,
                        after_lsn: Lsn(next.0 - 1),
                        why: format!(
                            "{why}; the frame is whole (its checksum holds), so it is no torn write: \
                             it was written by another version of Reservoir, or by a bug"
                        ),
                    });
                }
                other => {
                    let why = match other {
                        Frame::Invalid(why) => why,
                        Frame::Undecodable(_) => unreachable!("refused above"),
                        Frame::Record { record, .. } => format!("LSN {} where {} was expected", record.lsn.0, next.0),
                        // Leftovers of a torn group after a lost sector: cut them too, so that
                        // they can never be read as records that continue a later log.
                        Frame::Zeros => "zeros followed by leftover bytes".to_owned(),
                    };
                    // Not the next record. Torn tail or corruption: corruption if any later
                    // group commit made it to disk (it was written only after this one was
                    // synced, so this one was complete once).
                    if let Some((later_sequence, later_offset, later_lsn)) =
                        find_later_batch(storage, &sequences[place..], &bytes, offset, next)?
                    {
                        return Err(WalError::Corrupt {
                            segment: storage.describe(sequence),
                            offset: offset as u64,
                            after_lsn: Lsn(next.0 - 1),
                            why: format!(
                                "{why}; a later group commit (LSN {} in {} at offset {later_offset}) is on disk",
                                later_lsn.0,
                                storage.describe(later_sequence)
                            ),
                        });
                    }
                    let torn = TornTail {
                        sequence,
                        offset: offset as u64,
                        later_segments: sequences[place + 1..].to_vec(),
                        why,
                    };
                    let position = AppendPosition {
                        sequence,
                        offset: offset as u64,
                        segment_exists: true,
                        next_lsn: next,
                        history,
                    };
                    let last_lsn = Lsn(next.0 - 1);
                    return Ok(ScanEnd {
                        last_lsn,
                        records_visited: visited,
                        position,
                        torn: Some(torn),
                        first_lsn: first_lsn.filter(|first| first.0 <= last_lsn.0),
                        stopped: false,
                    });
                }
            }
            if offset + FRAME_HEADER_BYTES > bytes.len() {
                if is_last {
                    position = AppendPosition {
                        sequence,
                        offset: offset as u64,
                        segment_exists: true,
                        next_lsn: next,
                        history,
                    };
                }
                break;
            }
        }
        expected = Some(next);
    }
    if let Some(next) = expected {
        if position.next_lsn != next {
            // The last segment is full to its end: the next record starts a new segment.
            let last = *sequences.last().expect("segments exist");
            position = AppendPosition {
                sequence: last + 1,
                offset: SEGMENT_HEADER_BYTES as u64,
                segment_exists: false,
                next_lsn: next,
                history,
            };
        }
    }
    let last_lsn = Lsn(position.next_lsn.0 - 1);
    Ok(ScanEnd {
        last_lsn,
        records_visited: visited,
        position,
        torn: None,
        first_lsn: first_lsn.filter(|first| first.0 <= last_lsn.0),
        stopped: false,
    })
}

/// Looks past a bad frame at `offset` of `bytes` (the segment `sequences[0]`) and in every later
/// segment for a valid record of a group commit that began after `expected` (the LSN the bad
/// frame should have had). Returns where the first one is.
fn find_later_batch(
    storage: &dyn Storage,
    sequences: &[u64],
    bytes: &[u8],
    offset: usize,
    expected: Lsn,
) -> Result<Option<(u64, usize, Lsn)>, WalError> {
    let later_in = |bytes: &[u8], from: usize| -> Option<(usize, Lsn)> {
        let mut at = from.next_multiple_of(FRAME_ALIGNMENT_BYTES);
        while at + FRAME_HEADER_BYTES <= bytes.len() {
            // The checksum is the search's cost: only where the header's fields could pass.
            let plausible = format::could_begin_record_after(&bytes[at..at + FRAME_HEADER_BYTES], expected);
            if !plausible {
                at += FRAME_ALIGNMENT_BYTES;
                continue;
            }
            if let (Frame::Record { header, .. }, _) = decode_frame(&bytes[at..]) {
                if header.batch_lsn > expected {
                    return Some((at, header.lsn));
                }
            }
            at += FRAME_ALIGNMENT_BYTES;
        }
        None
    };
    if let Some((at, lsn)) = later_in(bytes, offset + FRAME_ALIGNMENT_BYTES) {
        return Ok(Some((sequences[0], at, lsn)));
    }
    for &sequence in &sequences[1..] {
        let later = storage.read(sequence).map_err(|source| WalError::io(storage.describe(sequence), source))?;
        if let Some((at, lsn)) = later_in(&later, SEGMENT_HEADER_BYTES) {
            return Ok(Some((sequence, at, lsn)));
        }
    }
    Ok(None)
}
