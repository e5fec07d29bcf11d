//! Reads the log's frames forward from an LSN, each read continuing where the last one
//! stopped: what a primary ships to a standby that has fallen behind its in-memory feed.
//!
//! Regression (W4 at the maximum rate on 16 cores, 2026-11-24): each chunk shipped from disk
//! was found by a fresh scan, which read its whole segment (64 MiB) and decoded every record
//! from the segment's start up to the chunk. A 1 MiB chunk cost about a segment's worth of
//! reading and decoding, so a standby that fell behind the feed caught up at ~80 k records/s
//! while the primary wrote 800 k/s: it never caught up. A reader positions once, then reads
//! the log forward through a window of [`READ_WINDOW_BYTES`], refilled when less than the
//! largest frame is left in it: each byte is read at most twice.

use reservoir_engine::Lsn;

use crate::format::{
    decode_frame, Frame, SegmentHeader, FRAME_ALIGNMENT_BYTES, FRAME_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX,
    SEGMENT_HEADER_BYTES,
};
use crate::storage::Storage;
use crate::WalError;

/// The largest frame there can be.
const FRAME_BYTES_MAX: usize = FRAME_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX + FRAME_ALIGNMENT_BYTES;
/// Bytes of a segment a reader holds at once: room for two of the largest frames, so that a
/// refill always leaves a whole frame in the window.
pub const READ_WINDOW_BYTES: usize = 2 * FRAME_BYTES_MAX;

/// Where a reader is: a window of one segment's bytes.
struct Place {
    sequence: u64,
    header: SegmentHeader,
    /// The window holds the segment's bytes from this offset on.
    window_offset: u64,
    window: Vec<u8>,
    /// The next frame's offset in the window.
    cursor: usize,
    /// The LSN of the record at the cursor.
    next_in_segment: Lsn,
    /// The window was read during the current call (so it shows every durable record).
    fresh: bool,
}

impl Place {
    fn offset(&self) -> u64 {
        self.window_offset + self.cursor as u64
    }

    fn window_reaches_end(&self) -> bool {
        self.window_offset + self.window.len() as u64 >= self.header.segment_bytes
    }
}

/// Reads the frames of records `next_lsn()` onwards, in LSN order, as they are on disk.
pub struct FrameReader {
    storage: Box<dyn Storage>,
    next_lsn: Lsn,
    place: Option<Place>,
}

impl FrameReader {
    /// A reader whose first read starts at `from` (nothing is read until then).
    pub fn new(storage: Box<dyn Storage>, from: Lsn) -> FrameReader {
        assert!(from.0 > 0, "LSNs start at 1");
        FrameReader { storage, next_lsn: from, place: None }
    }

    /// The LSN the next read starts at.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Appends to `frames` the frames of records `next_lsn() ..= through`, stopping early once
    /// `bytes_max` bytes were appended (always at least one frame); returns the last LSN
    /// appended. Every record up to `through` must be durable in the log: one that is not
    /// there is an error, as is a frame that does not check.
    pub fn read(&mut self, through: Lsn, bytes_max: usize, frames: &mut Vec<u8>) -> Result<Lsn, WalError> {
        assert!(self.next_lsn <= through, "nothing to read: LSN {} is past {}", self.next_lsn.0, through.0);
        assert!(bytes_max > 0);
        let start = frames.len();
        if let Some(place) = &mut self.place {
            place.fresh = false;
        }
        loop {
            if self.place.is_none() {
                self.place = Some(self.locate()?);
            }
            let place = self.place.as_mut().expect("located");
            let left = place.window.len() - place.cursor;
            if left < FRAME_BYTES_MAX && !place.window_reaches_end() {
                refill(&*self.storage, place)?;
            }
            let (frame, length) = decode_frame(&place.window[place.cursor..]);
            match frame {
                Frame::Record { record, .. } if record.lsn == place.next_in_segment => {
                    place.next_in_segment = Lsn(record.lsn.0 + 1);
                    if record.lsn < self.next_lsn {
                        // Before the first LSN asked for (positioning in the first segment).
                        place.cursor += length;
                        continue;
                    }
                    assert_eq!(record.lsn, self.next_lsn, "records of a segment are consecutive");
                    frames.extend_from_slice(&place.window[place.cursor..place.cursor + length]);
                    place.cursor += length;
                    debug_assert_eq!(place.offset() % FRAME_ALIGNMENT_BYTES as u64, 0);
                    self.next_lsn = Lsn(record.lsn.0 + 1);
                    if record.lsn == through || frames.len() - start >= bytes_max {
                        assert!(frames.len() > start);
                        return Ok(record.lsn);
                    }
                }
                _ if !place.fresh => {
                    // The window was read before this call: the record may have been written
                    // since. Read it again before judging.
                    refill(&*self.storage, place)?;
                }
                Frame::Zeros if place.next_in_segment == self.next_lsn => {
                    // The record is durable but not here: the writer rolled over to the next
                    // segment (whose header must say it starts with this record).
                    self.place = Some(self.next_segment()?);
                }
                other => {
                    let why = match other {
                        Frame::Invalid(why) | Frame::Undecodable(why) => why,
                        Frame::Record { record, .. } => {
                            format!("LSN {} where {} was expected", record.lsn.0, place.next_in_segment.0)
                        }
                        Frame::Zeros => format!("zeros where LSN {} was expected", place.next_in_segment.0),
                    };
                    return Err(WalError::Corrupt {
                        segment: self.storage.describe(place.sequence),
                        offset: place.offset(),
                        after_lsn: Lsn(place.next_in_segment.0 - 1),
                        why: format!("{why} (reading durable records through LSN {})", through.0),
                    });
                }
            }
        }
    }

    /// The segment that holds `next_lsn`: the last one whose first LSN is not after it.
    fn locate(&self) -> Result<Place, WalError> {
        let sequences = self.storage.list().map_err(|source| WalError::io("list the WAL directory", source))?;
        let mut found = None;
        for &sequence in &sequences {
            let header = self.header(sequence)?;
            if header.first_lsn > self.next_lsn {
                break;
            }
            found = Some(header);
        }
        let Some(header) = found else {
            let first = match sequences.first() {
                Some(&sequence) => self.header(sequence)?.first_lsn,
                None => self.next_lsn,
            };
            return Err(WalError::MissingRecords { needed: self.next_lsn, first });
        };
        self.open(header)
    }

    /// The segment after the current one, which must start at `next_lsn`.
    fn next_segment(&self) -> Result<Place, WalError> {
        let place = self.place.as_ref().expect("a current segment");
        let sequence = place.sequence + 1;
        // Listed twice before giving up: retention moves segments from the live directory to
        // the archive, and one moved between the two directories' listings is in neither.
        let mut exists = false;
        for _ in 0..2 {
            let sequences = self.storage.list().map_err(|source| WalError::io("list the WAL directory", source))?;
            exists = sequences.contains(&sequence);
            if exists {
                break;
            }
        }
        if !exists {
            return Err(WalError::Corrupt {
                segment: self.storage.describe(place.sequence),
                offset: place.offset(),
                after_lsn: Lsn(self.next_lsn.0 - 1),
                why: format!("the segment ends before durable LSN {} and no segment follows it", self.next_lsn.0),
            });
        }
        let header = self.header(sequence)?;
        if header.first_lsn != self.next_lsn || header.history != place.header.history {
            return Err(WalError::BadSegmentHeader {
                segment: self.storage.describe(sequence),
                why: format!(
                    "starts at LSN {} of history {:016x} where LSN {} of history {:016x} was expected",
                    header.first_lsn.0, header.history, self.next_lsn.0, place.header.history
                ),
            });
        }
        self.open(header)
    }

    fn header(&self, sequence: u64) -> Result<SegmentHeader, WalError> {
        let bytes = self
            .storage
            .read_prefix(sequence, SEGMENT_HEADER_BYTES)
            .map_err(|source| WalError::io(self.storage.describe(sequence), source))?;
        let header = SegmentHeader::decode(&bytes)
            .map_err(|why| WalError::BadSegmentHeader { segment: self.storage.describe(sequence), why: why.into() })?;
        if header.sequence != sequence {
            return Err(WalError::BadSegmentHeader {
                segment: self.storage.describe(sequence),
                why: "header does not match the file's name".into(),
            });
        }
        Ok(header)
    }

    fn open(&self, header: SegmentHeader) -> Result<Place, WalError> {
        let mut place = Place {
            sequence: header.sequence,
            header,
            window_offset: SEGMENT_HEADER_BYTES as u64,
            window: Vec::new(),
            cursor: 0,
            next_in_segment: header.first_lsn,
            fresh: false,
        };
        refill(&*self.storage, &mut place)?;
        Ok(place)
    }
}

/// Reads the window anew from the cursor on.
fn refill(storage: &dyn Storage, place: &mut Place) -> Result<(), WalError> {
    let offset = place.offset();
    let left = place.header.segment_bytes.saturating_sub(offset);
    let bytes = (left as usize).min(READ_WINDOW_BYTES);
    place.window = storage
        .read_range(place.sequence, offset, bytes)
        .map_err(|source| WalError::io(storage.describe(place.sequence), source))?;
    if place.window.len() != bytes {
        return Err(WalError::BadSegmentHeader {
            segment: storage.describe(place.sequence),
            why: format!("shorter than its header's {} bytes", place.header.segment_bytes),
        });
    }
    place.window_offset = offset;
    place.cursor = 0;
    place.fresh = true;
    assert!(place.window.len() <= READ_WINDOW_BYTES);
    Ok(())
}
