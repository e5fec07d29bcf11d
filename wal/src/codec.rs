//! The payload of a WAL record: an engine effect [`Body`], in a hand-written little-endian
//! layout (docs/wal.md, "Payload"). Hand-written rather than rkyv because records are small,
//! written once and read once, and a fixed layout is what docs/wal.md can specify byte by byte.
//!
//! Decoding never trusts a length: every count is checked against the bytes that are left
//! before anything is allocated, so no input can make the decoder allocate more than the
//! payload's own size (bounded by [`crate::RECORD_PAYLOAD_BYTES_MAX`]) or panic.

use reservoir_engine::{
    Body, Counters, IdText, ItemChange, ItemId, LineChange, LineResult, LineResults, OperationMemo, Reply,
    ReservationState, ReservedLine, ResultCode, SettleKind, TenantId, NAME_BYTES_MAX,
};

/// The kind byte of each body variant. Stable: part of the on-disk format.
pub mod kind {
    pub const TENANT_CREATED: u8 = 1;
    pub const ITEM_CREATED: u8 = 2;
    pub const STOCK: u8 = 3;
    pub const RESERVED: u8 = 4;
    pub const SETTLED: u8 = 5;
    pub const REFUSED: u8 = 6;
    pub const FORGOTTEN: u8 = 7;
    pub const EPOCH_CHANGED: u8 = 8;
    pub const CREDENTIALS_CHANGED: u8 = 9;
}

/// Whether `kind` names a body variant ([`decode`] refuses every other).
pub fn is_kind(kind: u8) -> bool {
    (kind::TENANT_CREATED..=kind::CREDENTIALS_CHANGED).contains(&kind)
}

/// Why a payload does not decode. Carried inside [`crate::WalError`] with its position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("payload ends early: needs {needed} more bytes at byte {at}")]
    Truncated { at: usize, needed: usize },
    #[error("{left} bytes left over after the body")]
    TrailingBytes { left: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("bad {what} value {value} at byte {at}")]
    BadValue { what: &'static str, value: u64, at: usize },
    #[error("name at byte {at} is not valid: {why}")]
    BadName { at: usize, why: &'static str },
}

/// The kind byte of `body`.
pub fn kind_of(body: &Body) -> u8 {
    match body {
        Body::TenantCreated { .. } => kind::TENANT_CREATED,
        Body::ItemCreated { .. } => kind::ITEM_CREATED,
        Body::Stock { .. } => kind::STOCK,
        Body::Reserved { .. } => kind::RESERVED,
        Body::Settled { .. } => kind::SETTLED,
        Body::Refused { .. } => kind::REFUSED,
        Body::Forgotten { .. } => kind::FORGOTTEN,
        Body::EpochChanged { .. } => kind::EPOCH_CHANGED,
        Body::CredentialsChanged => kind::CREDENTIALS_CHANGED,
    }
}

/// Appends `body`'s payload to `out`.
pub fn encode(body: &Body, out: &mut Vec<u8>) {
    let start = out.len();
    let mut writer = Writer(out);
    match body {
        Body::TenantCreated { tenant, name } => {
            writer.u32(tenant.0);
            writer.name(name);
        }
        Body::ItemCreated { item, tenant, sku, location } => {
            writer.item(*item);
            writer.u32(tenant.0);
            writer.name(sku);
            writer.name(location);
        }
        Body::Stock { tenant, memo, changes } => {
            writer.u32(tenant.0);
            writer.memo(memo);
            writer.changes(changes);
        }
        Body::Reserved { tenant, reservation, fingerprint, deadline_ms, reply, lines, changes } => {
            writer.u32(tenant.0);
            writer.name(reservation);
            writer.u64(*fingerprint);
            writer.u64(*deadline_ms);
            writer.reply(reply);
            writer.u32(lines.len() as u32);
            for line in lines {
                writer.item(line.item);
                writer.i64(line.requested);
                writer.i64(line.reserved);
            }
            writer.changes(changes);
        }
        Body::Settled { tenant, reservation, kind, memo, deadline_ms, state, line_changes, changes } => {
            writer.u32(tenant.0);
            writer.name(reservation);
            writer.u8(settle_kind_number(*kind));
            match memo {
                Some(memo) => {
                    writer.u8(1);
                    writer.memo(memo);
                }
                None => writer.u8(0),
            }
            writer.u64(*deadline_ms);
            writer.u8(state_number(*state));
            writer.u32(line_changes.len() as u32);
            for change in line_changes {
                writer.u16(change.line);
                writer.i64(change.committed);
                writer.i64(change.released);
            }
            writer.changes(changes);
        }
        Body::Refused { tenant, memo } => {
            writer.u32(tenant.0);
            writer.memo(memo);
        }
        Body::Forgotten { before_ms } => writer.u64(*before_ms),
        Body::EpochChanged { epoch } => writer.u64(*epoch),
        // A mark: the kind says everything.
        Body::CredentialsChanged => {}
    }
    assert_eq!(out.len() == start, matches!(body, Body::CredentialsChanged), "every body but a mark has a payload");
    // Pair assertion: what was written reads back as what was meant (debug builds; the
    // round-trip property test and the fuzzer cover release builds' decoder).
    debug_assert_eq!(decode(kind_of(body), &out[start..]).as_ref(), Ok(body), "encode/decode disagree");
}

/// Decodes a payload of kind `kind`. Never panics, never allocates more than `payload.len()`
/// bytes' worth of elements.
pub fn decode(kind: u8, payload: &[u8]) -> Result<Body, DecodeError> {
    let mut reader = Reader { bytes: payload, at: 0 };
    let body = match kind {
        kind::TENANT_CREATED => Body::TenantCreated { tenant: TenantId(reader.u32()?), name: reader.name()? },
        kind::ITEM_CREATED => Body::ItemCreated {
            item: reader.item()?,
            tenant: TenantId(reader.u32()?),
            sku: reader.name()?,
            location: reader.name()?,
        },
        kind::STOCK => {
            Body::Stock { tenant: TenantId(reader.u32()?), memo: reader.memo()?, changes: reader.changes()? }
        }
        kind::RESERVED => {
            let tenant = TenantId(reader.u32()?);
            let reservation = reader.id()?;
            let fingerprint = reader.u64()?;
            let deadline_ms = reader.u64()?;
            let reply = reader.reply()?;
            let count = reader.count(RESERVED_LINE_BYTES)?;
            let mut lines = Vec::with_capacity(count);
            for _ in 0..count {
                lines.push(ReservedLine { item: reader.item()?, requested: reader.i64()?, reserved: reader.i64()? });
            }
            let changes = reader.changes()?;
            Body::Reserved { tenant, reservation, fingerprint, deadline_ms, reply, lines, changes }
        }
        kind::SETTLED => {
            let tenant = TenantId(reader.u32()?);
            let reservation = reader.id()?;
            let at = reader.at;
            let kind = settle_kind_from(reader.u8()?).ok_or(DecodeError::BadValue {
                what: "settle kind",
                value: u64::from(payload[at]),
                at,
            })?;
            let at = reader.at;
            let memo = match reader.u8()? {
                0 => None,
                1 => Some(reader.memo()?),
                flag => return Err(DecodeError::BadValue { what: "memo flag", value: u64::from(flag), at }),
            };
            let deadline_ms = reader.u64()?;
            let at = reader.at;
            let state_byte = reader.u8()?;
            let state = state_from(state_byte).ok_or(DecodeError::BadValue {
                what: "reservation state",
                value: u64::from(state_byte),
                at,
            })?;
            let count = reader.count(LINE_CHANGE_BYTES)?;
            let mut line_changes = Vec::with_capacity(count);
            for _ in 0..count {
                line_changes.push(LineChange {
                    line: reader.u16()?,
                    committed: reader.i64()?,
                    released: reader.i64()?,
                });
            }
            let changes = reader.changes()?;
            Body::Settled { tenant, reservation, kind, memo, deadline_ms, state, line_changes, changes }
        }
        kind::REFUSED => Body::Refused { tenant: TenantId(reader.u32()?), memo: reader.memo()? },
        kind::FORGOTTEN => Body::Forgotten { before_ms: reader.u64()? },
        kind::EPOCH_CHANGED => {
            let at = reader.at;
            let epoch = reader.u64()?;
            if epoch <= reservoir_engine::EPOCH_FIRST {
                return Err(DecodeError::BadValue { what: "epoch", value: epoch, at });
            }
            Body::EpochChanged { epoch }
        }
        kind::CREDENTIALS_CHANGED => Body::CredentialsChanged,
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if reader.at != payload.len() {
        return Err(DecodeError::TrailingBytes { left: payload.len() - reader.at });
    }
    Ok(body)
}

const ITEM_BYTES: usize = 8;
const COUNTERS_BYTES: usize = 6 * 8;
const ITEM_CHANGE_BYTES: usize = ITEM_BYTES + 16 + COUNTERS_BYTES;
const RESERVED_LINE_BYTES: usize = ITEM_BYTES + 16;
const LINE_CHANGE_BYTES: usize = 2 + 16;
const LINE_RESULT_BYTES: usize = 2 + 24;

fn settle_kind_number(kind: SettleKind) -> u8 {
    match kind {
        SettleKind::Commit => 1,
        SettleKind::Release => 2,
        SettleKind::Extend => 3,
        SettleKind::Expire => 4,
    }
}

fn settle_kind_from(number: u8) -> Option<SettleKind> {
    Some(match number {
        1 => SettleKind::Commit,
        2 => SettleKind::Release,
        3 => SettleKind::Extend,
        4 => SettleKind::Expire,
        _ => return None,
    })
}

pub(crate) fn state_number(state: ReservationState) -> u8 {
    match state {
        ReservationState::Open => 1,
        ReservationState::PartiallyCommitted => 2,
        ReservationState::Committed => 3,
        ReservationState::Released => 4,
        ReservationState::Expired => 5,
        ReservationState::Refused => 6,
    }
}

pub(crate) fn state_from(number: u8) -> Option<ReservationState> {
    Some(match number {
        1 => ReservationState::Open,
        2 => ReservationState::PartiallyCommitted,
        3 => ReservationState::Committed,
        4 => ReservationState::Released,
        5 => ReservationState::Expired,
        6 => ReservationState::Refused,
        _ => return None,
    })
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    fn u16(&mut self, value: u16) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn i64(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn name(&mut self, name: &str) {
        assert!(!name.is_empty() && name.len() <= NAME_BYTES_MAX, "names are validated before they are logged");
        self.u8(name.len() as u8);
        self.0.extend_from_slice(name.as_bytes());
    }
    fn item(&mut self, item: ItemId) {
        self.u32(item.shard);
        self.u32(item.index);
    }
    fn counters(&mut self, counters: &Counters) {
        for value in [
            counters.on_hand,
            counters.reserved,
            counters.safety_stock,
            counters.backorder_limit,
            counters.inflow_total,
            counters.committed_total,
        ] {
            self.i64(value);
        }
    }
    fn reply(&mut self, reply: &Reply) {
        self.u16(reply.code.number());
        self.u64(reply.deadline_ms);
        self.i64(reply.on_hand);
        self.u64(reply.count);
        self.u32(u32::try_from(reply.lines.len()).expect("line count fits u32"));
        for line in &reply.lines {
            self.u16(line.code.number());
            self.i64(line.requested);
            self.i64(line.applied);
            self.i64(line.available);
        }
    }
    fn memo(&mut self, memo: &OperationMemo) {
        self.name(&memo.operation);
        self.u64(memo.fingerprint);
        self.reply(&memo.reply);
    }
    fn changes(&mut self, changes: &[ItemChange]) {
        self.u32(u32::try_from(changes.len()).expect("change count fits u32"));
        for change in changes {
            self.item(change.item);
            self.i64(change.on_hand_delta);
            self.i64(change.reserved_delta);
            self.counters(&change.after);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let left = self.bytes.len() - self.at;
        if left < N {
            return Err(DecodeError::Truncated { at: self.at, needed: N - left });
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.at..self.at + N]);
        self.at += N;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    /// A u32 element count, refused unless that many elements of `element_bytes` each could
    /// still fit in the payload: the bound on what decoding may allocate.
    fn count(&mut self, element_bytes: usize) -> Result<usize, DecodeError> {
        let at = self.at;
        let count = self.u32()? as usize;
        let left = self.bytes.len() - self.at;
        if count.checked_mul(element_bytes).is_none_or(|bytes| bytes > left) {
            return Err(DecodeError::BadValue { what: "element count", value: count as u64, at });
        }
        Ok(count)
    }
    fn name(&mut self) -> Result<Box<str>, DecodeError> {
        Ok(self.text()?.into())
    }
    /// A reservation or operation id: inline in the [`IdText`] when short, so decoding it
    /// allocates nothing (replay decodes one or two per record).
    fn id(&mut self) -> Result<IdText, DecodeError> {
        Ok(IdText::new(self.text()?))
    }
    fn text(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.at;
        let length = self.u8()? as usize;
        if length == 0 || length > NAME_BYTES_MAX {
            return Err(DecodeError::BadName { at, why: "length out of range" });
        }
        let left = self.bytes.len() - self.at;
        if left < length {
            return Err(DecodeError::Truncated { at: self.at, needed: length - left });
        }
        let text = std::str::from_utf8(&self.bytes[self.at..self.at + length])
            .map_err(|_| DecodeError::BadName { at, why: "not UTF-8" })?;
        self.at += length;
        Ok(text)
    }
    fn item(&mut self) -> Result<ItemId, DecodeError> {
        Ok(ItemId { shard: self.u32()?, index: self.u32()? })
    }
    fn counters(&mut self) -> Result<Counters, DecodeError> {
        Ok(Counters {
            on_hand: self.i64()?,
            reserved: self.i64()?,
            safety_stock: self.i64()?,
            backorder_limit: self.i64()?,
            inflow_total: self.i64()?,
            committed_total: self.i64()?,
        })
    }
    fn code(&mut self) -> Result<ResultCode, DecodeError> {
        let at = self.at;
        let number = self.u16()?;
        ResultCode::from_number(number).ok_or(DecodeError::BadValue {
            what: "result code",
            value: u64::from(number),
            at,
        })
    }
    fn reply(&mut self) -> Result<Reply, DecodeError> {
        let code = self.code()?;
        let deadline_ms = self.u64()?;
        let on_hand = self.i64()?;
        let count = self.u64()?;
        let line_count = self.count(LINE_RESULT_BYTES)?;
        // Collected inline, then shared in one allocation.
        let mut lines: smallvec::SmallVec<[LineResult; 4]> = smallvec::SmallVec::with_capacity(line_count);
        for _ in 0..line_count {
            lines.push(LineResult {
                code: self.code()?,
                requested: self.i64()?,
                applied: self.i64()?,
                available: self.i64()?,
            });
        }
        Ok(Reply { code, lines: LineResults::from(&lines[..]), deadline_ms, on_hand, count })
    }
    fn memo(&mut self) -> Result<OperationMemo, DecodeError> {
        Ok(OperationMemo { operation: self.id()?, fingerprint: self.u64()?, reply: self.reply()? })
    }
    fn changes(&mut self) -> Result<Vec<ItemChange>, DecodeError> {
        let count = self.count(ITEM_CHANGE_BYTES)?;
        let mut changes = Vec::with_capacity(count);
        for _ in 0..count {
            changes.push(ItemChange {
                item: self.item()?,
                on_hand_delta: self.i64()?,
                reserved_delta: self.i64()?,
                after: self.counters()?,
            });
        }
        Ok(changes)
    }
}
