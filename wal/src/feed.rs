//! The replication feed: the frames of the most recent durable group commits, kept in memory
//! so that a primary ships WAL to caught-up standbys without reading its segment files. A
//! standby further behind than the feed reaches is served from disk (`reservoir_net`'s
//! sender falls back to a scan).

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use reservoir_engine::Lsn;

use crate::format::{FRAME_ALIGNMENT_BYTES, FRAME_HEADER_BYTES};

/// Bytes of frames the feed holds at most; the oldest groups go first.
pub const FEED_BYTES_MAX: usize = 32 << 20;
/// Groups the feed holds at most.
pub const FEED_GROUPS_MAX: usize = 65_536;

/// One durable group commit: its frames back to back, as written to the segment.
#[derive(Debug)]
struct Group {
    first_lsn: Lsn,
    last_lsn: Lsn,
    frames: Vec<u8>,
    /// When the group's sync returned (ms since the Unix epoch, the writer's clock).
    durable_ms: u64,
}

#[derive(Default)]
struct Held {
    groups: VecDeque<Arc<Group>>,
    bytes: usize,
}

/// Recent durable groups (module docs).
pub struct Feed {
    held: Mutex<Held>,
    /// Off until a standby asks: a primary with no standby copies no frame.
    enabled: std::sync::atomic::AtomicBool,
}

/// What [`Feed::read_from`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedRead {
    /// Frames of records `lsn ..= last_lsn`, whole and in order; `durable_ms` is when the
    /// record at `lsn` became durable (ms since the Unix epoch): where a standby's lag starts.
    Frames { last_lsn: Lsn, frames: Vec<u8>, durable_ms: u64 },
    /// `lsn` is older than everything held: read it from the segments.
    NotHeld,
    /// Nothing at or after `lsn` is durable yet.
    Nothing,
}

/// When a record held by the feed was executed (its timestamp) and became durable, both in ms
/// since the Unix epoch ([`Feed::times_from`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordTimes {
    pub timestamp_ms: u64,
    pub durable_ms: u64,
}

/// The LSN of the frame at the start of `bytes`, and its length on disk.
fn frame_at(bytes: &[u8]) -> (Lsn, usize) {
    assert!(bytes.len() >= FRAME_HEADER_BYTES, "a whole frame");
    let payload = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    let lsn = Lsn(u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")));
    (lsn, (FRAME_HEADER_BYTES + payload).next_multiple_of(FRAME_ALIGNMENT_BYTES))
}

impl Default for Feed {
    fn default() -> Feed {
        Feed::new()
    }
}

impl Feed {
    pub fn new() -> Feed {
        Feed { held: Mutex::new(Held::default()), enabled: std::sync::atomic::AtomicBool::new(false) }
    }

    pub fn enable(&self) {
        self.enabled.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Adds a durable group, synced at `durable_ms` (called by the writer, in LSN order,
    /// before the durable LSN moves).
    pub fn publish(&self, first_lsn: Lsn, last_lsn: Lsn, frames: Vec<u8>, durable_ms: u64) {
        if frames.is_empty() {
            return;
        }
        assert!(first_lsn <= last_lsn);
        debug_assert_eq!(frame_at(&frames).0, first_lsn, "a group starts with its first record");
        let mut held = self.held.lock();
        if let Some(newest) = held.groups.back() {
            assert!(newest.last_lsn < first_lsn, "groups are published in LSN order");
            if newest.last_lsn.0 + 1 != first_lsn.0 {
                // Groups written while the feed was off are missing: what is held no longer
                // continues, so readers of it go to the segments.
                held.groups.clear();
                held.bytes = 0;
            }
        }
        held.bytes += frames.len();
        held.groups.push_back(Arc::new(Group { first_lsn, last_lsn, frames, durable_ms }));
        while held.groups.len() > 1 && (held.bytes > FEED_BYTES_MAX || held.groups.len() > FEED_GROUPS_MAX) {
            let oldest = held.groups.pop_front().expect("more than one");
            held.bytes -= oldest.frames.len();
        }
    }

    /// When the first record the feed holds at or after `lsn` was executed and became durable:
    /// `lsn`'s own times when it is held, the oldest record's (a lower bound of `lsn`'s age)
    /// when `lsn` is older than everything held; `None` when nothing at or after `lsn` is.
    /// For the age of records durable and not yet shipped, in a standby's lag. Walks one
    /// group's frames at most.
    pub fn times_from(&self, lsn: Lsn) -> Option<RecordTimes> {
        let group = {
            let held = self.held.lock();
            let index = held.groups.partition_point(|group| group.last_lsn < lsn);
            held.groups.get(index)?.clone()
        };
        let lsn = lsn.max(group.first_lsn);
        let mut offset = 0;
        while offset < group.frames.len() {
            let (frame_lsn, length) = frame_at(&group.frames[offset..]);
            if frame_lsn == lsn {
                let timestamp_ms = crate::format::frame_timestamp_ms(&group.frames[offset..]);
                return Some(RecordTimes { timestamp_ms, durable_ms: group.durable_ms });
            }
            offset += length;
        }
        unreachable!("a group holds every LSN from its first to its last")
    }

    /// Frames from `lsn` on: whole groups' frames, the first one cut to start at `lsn`, until
    /// about `bytes_max` (at least one record is returned when there is one).
    pub fn read_from(&self, lsn: Lsn, bytes_max: usize) -> FeedRead {
        let groups: Vec<Arc<Group>> = {
            let held = self.held.lock();
            let Some(oldest) = held.groups.front() else { return FeedRead::NotHeld };
            if lsn < oldest.first_lsn {
                return FeedRead::NotHeld;
            }
            if lsn > held.groups.back().expect("non-empty").last_lsn {
                return FeedRead::Nothing;
            }
            let start = held.groups.partition_point(|group| group.last_lsn < lsn);
            let mut taken = Vec::new();
            let mut bytes = 0;
            for group in held.groups.iter().skip(start) {
                if !taken.is_empty() && bytes + group.frames.len() > bytes_max {
                    break;
                }
                bytes += group.frames.len();
                taken.push(group.clone());
            }
            taken
        };
        let durable_ms = groups.first().expect("lsn is within the groups held").durable_ms;
        let mut frames = Vec::new();
        let mut last_lsn = Lsn(0);
        for group in &groups {
            let mut offset = 0;
            while offset < group.frames.len() {
                let (frame_lsn, length) = frame_at(&group.frames[offset..]);
                if frame_lsn >= lsn {
                    if frames.is_empty() {
                        assert_eq!(frame_lsn, lsn, "the feed holds every LSN of its groups");
                    }
                    if !frames.is_empty() && frames.len() + length > bytes_max {
                        return FeedRead::Frames { last_lsn, frames, durable_ms };
                    }
                    frames.extend_from_slice(&group.frames[offset..offset + length]);
                    last_lsn = frame_lsn;
                }
                offset += length;
            }
        }
        assert!(!frames.is_empty(), "lsn is within the groups held");
        FeedRead::Frames { last_lsn, frames, durable_ms }
    }
}

#[cfg(test)]
mod tests {
    use reservoir_engine::{Body, Record};

    use super::*;

    fn frames(first: u64, last: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for lsn in first..=last {
            let record = Record { lsn: Lsn(lsn), timestamp_ms: lsn, body: Body::Forgotten { before_ms: lsn } };
            crate::format::encode_frame(&record, Lsn(first), 1, &mut out);
        }
        out
    }

    #[test]
    fn reads_start_at_the_lsn_asked_and_a_gap_drops_what_no_longer_continues() {
        let feed = Feed::new();
        assert!(!feed.is_enabled(), "off until a standby asks");
        assert_eq!(feed.read_from(Lsn(1), 1 << 20), FeedRead::NotHeld);
        feed.publish(Lsn(1), Lsn(3), frames(1, 3), 1_000);
        feed.publish(Lsn(4), Lsn(5), frames(4, 5), 2_000);
        let FeedRead::Frames { last_lsn, frames: read, durable_ms } = feed.read_from(Lsn(2), 1 << 20) else { panic!() };
        assert_eq!(last_lsn, Lsn(5));
        assert_eq!(frame_at(&read).0, Lsn(2), "cut to start at the LSN asked");
        assert_eq!(durable_ms, 1_000, "when the first record read became durable");
        let FeedRead::Frames { durable_ms, .. } = feed.read_from(Lsn(4), 1 << 20) else { panic!() };
        assert_eq!(durable_ms, 2_000, "the second group's sync, not the first's");
        assert_eq!(feed.times_from(Lsn(3)), Some(RecordTimes { timestamp_ms: 3, durable_ms: 1_000 }));
        assert_eq!(feed.times_from(Lsn(5)), Some(RecordTimes { timestamp_ms: 5, durable_ms: 2_000 }));
        assert_eq!(feed.times_from(Lsn(6)), None, "not durable yet");
        assert_eq!(feed.read_from(Lsn(6), 1 << 20), FeedRead::Nothing);
        // Groups 6..=9 were written while the feed was off: 10.. does not continue 1..=5.
        feed.publish(Lsn(10), Lsn(11), frames(10, 11), 3_000);
        assert_eq!(feed.read_from(Lsn(5), 1 << 20), FeedRead::NotHeld);
        assert!(matches!(feed.read_from(Lsn(10), 1 << 20), FeedRead::Frames { last_lsn: Lsn(11), .. }));
        // Older than everything held: the oldest held record's times, a lower bound of its age.
        assert_eq!(feed.times_from(Lsn(7)), Some(RecordTimes { timestamp_ms: 10, durable_ms: 3_000 }));
    }
}
