//! The primitives of the QUIC binary protocol (docs/protocol.md, "QUIC binary protocol"):
//! its limits, the frame header, the protocol error codes, [`WireError`], and the bounded
//! [`Reader`] / [`Writer`] every frame is decoded and encoded with.
//!
//! Decoding never trusts a length: every string length and element count is checked against
//! its `_MAX` and against the bytes that are left *before* anything is allocated, so no input
//! makes the decoder allocate more than the frame's own size or panic.

/// The ALPN protocol id of version 1 (TLS application-layer protocol negotiation).
pub const ALPN: &[u8] = b"reservoir/1";
/// The protocol versions this build speaks, lowest and highest.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
pub const PROTOCOL_VERSION_MAX: u16 = 1;

/// Bytes of the frame header: the `u32` little-endian length of the rest of the frame.
pub const FRAME_HEADER_BYTES: usize = 4;
/// The largest value of the frame header's length (frame type byte + body).
///
/// Sized for the two largest single operations a frame must carry: an import of
/// `IMPORT_ROWS_MAX` (10,000) rows with 64-byte names is 10,000 x 155 = 1.55 MB, and a full
/// page of `PAGE_ITEMS_MAX` (10,000) items in a reply is 10,000 x 178 = 1.78 MB. 2 MiB holds
/// either with ~15% headroom and still bounds what one frame may make a peer buffer.
pub const FRAME_BYTES_MAX: usize = 2 << 20;
/// Operations in one request (batching).
pub const OPERATIONS_PER_REQUEST_MAX: usize = 1_024;
/// Requests a server accepts in flight (sent, not yet answered) per connection; more are
/// answered `too_many_in_flight`.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 4_096;
/// Bytes of a string with a `u8` length (names, addresses). Names are further limited to
/// `NAME_BYTES_MAX` (64) by the engine, which answers a longer one with `name_too_long`.
pub const STRING_BYTES_MAX: usize = u8::MAX as usize;
/// Bytes of the bearer token in `Hello`.
pub const TOKEN_BYTES_MAX: usize = 4_096;
/// Bytes of a `Hello` frame's body at most (type, two versions, the token with its length): what
/// a server reads from a connection before it has authenticated.
pub const HELLO_FRAME_BYTES_MAX: usize = 1 + 2 + 2 + 2 + TOKEN_BYTES_MAX;
/// Bytes of the human-readable message of an `Error` frame.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1_024;
/// Entries in a `list_tenants` result. With names of at most `NAME_BYTES_MAX` (64) bytes a
/// full list is 10,000 x 69 = 690 KB, well within [`FRAME_BYTES_MAX`].
pub const TENANTS_PER_LIST_MAX: usize = 10_000;
/// Capacity a [`crate::FrameDecoder`] keeps between frames; a larger buffer (after a large
/// frame) is given back.
pub const DECODER_RETAINED_BYTES_MAX: usize = 64 << 10;

/// The frame type byte. Client frames are `0x01..`, server frames `0x81..`, so a frame sent
/// the wrong way is an unknown frame type.
pub mod frame_type {
    pub const HELLO: u8 = 0x01;
    pub const REQUEST: u8 = 0x02;
    pub const CLIENT_GOODBYE: u8 = 0x03;
    pub const HELLO_REPLY: u8 = 0x81;
    pub const REPLY: u8 = 0x82;
    pub const ERROR: u8 = 0x83;
    pub const SERVER_GOODBYE: u8 = 0x84;
}

/// A protocol-level error: about frames, connections and requests as a whole, never about
/// what an operation decided (that is a [`reservoir_engine::ResultCode`], `0..99`). Stable
/// numbers in `100..`; docs/protocol.md lists them and a test keeps the two in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
#[non_exhaustive]
pub enum ProtocolErrorCode {
    MalformedFrame = 100,
    FrameTooLarge = 101,
    UnknownFrameType = 102,
    UnknownOperation = 103,
    UnsupportedVersion = 104,
    Unauthenticated = 105,
    Forbidden = 106,
    TooManyOperations = 107,
    TooManyInFlight = 108,
    RateLimited = 109,
    NotPrimary = 110,
    ShuttingDown = 111,
    Internal = 112,
}

impl ProtocolErrorCode {
    /// Every code, in number order.
    pub const ALL: &'static [ProtocolErrorCode] = &[
        ProtocolErrorCode::MalformedFrame,
        ProtocolErrorCode::FrameTooLarge,
        ProtocolErrorCode::UnknownFrameType,
        ProtocolErrorCode::UnknownOperation,
        ProtocolErrorCode::UnsupportedVersion,
        ProtocolErrorCode::Unauthenticated,
        ProtocolErrorCode::Forbidden,
        ProtocolErrorCode::TooManyOperations,
        ProtocolErrorCode::TooManyInFlight,
        ProtocolErrorCode::RateLimited,
        ProtocolErrorCode::NotPrimary,
        ProtocolErrorCode::ShuttingDown,
        ProtocolErrorCode::Internal,
    ];

    pub fn number(self) -> u16 {
        self as u16
    }

    pub fn from_number(number: u16) -> Option<ProtocolErrorCode> {
        ProtocolErrorCode::ALL.iter().copied().find(|code| code.number() == number)
    }

    /// The snake_case name used in docs, JSON and logs.
    pub fn name(self) -> &'static str {
        match self {
            ProtocolErrorCode::MalformedFrame => "malformed_frame",
            ProtocolErrorCode::FrameTooLarge => "frame_too_large",
            ProtocolErrorCode::UnknownFrameType => "unknown_frame_type",
            ProtocolErrorCode::UnknownOperation => "unknown_operation",
            ProtocolErrorCode::UnsupportedVersion => "unsupported_version",
            ProtocolErrorCode::Unauthenticated => "unauthenticated",
            ProtocolErrorCode::Forbidden => "forbidden",
            ProtocolErrorCode::TooManyOperations => "too_many_operations",
            ProtocolErrorCode::TooManyInFlight => "too_many_in_flight",
            ProtocolErrorCode::RateLimited => "rate_limited",
            ProtocolErrorCode::NotPrimary => "not_primary",
            ProtocolErrorCode::ShuttingDown => "shutting_down",
            ProtocolErrorCode::Internal => "internal",
        }
    }

    /// Whether the server closes the connection after sending this error. Frames the server
    /// could not delimit or trust (malformed, oversized), failed handshakes and a token revoked
    /// since the handshake (`unauthenticated` for the next request) close it; the others
    /// concern one request or frame and leave the connection open.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ProtocolErrorCode::MalformedFrame
                | ProtocolErrorCode::FrameTooLarge
                | ProtocolErrorCode::UnsupportedVersion
                | ProtocolErrorCode::Unauthenticated
        )
    }
}

/// Why bytes do not decode (or a frame cannot be encoded). Each variant maps to a stable
/// [`ProtocolErrorCode`] with [`WireError::code`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("frame ends early: needs {needed} more bytes at byte {at}")]
    Truncated { at: usize, needed: usize },
    #[error("{left} bytes left over after the frame body")]
    TrailingBytes { left: usize },
    #[error("bad {what} value {value} at byte {at}")]
    BadValue { what: &'static str, value: u64, at: usize },
    #[error("{what} at byte {at} is not UTF-8")]
    NotUtf8 { what: &'static str, at: usize },
    #[error("{what} of {count} at byte {at} exceeds its maximum {max}")]
    CountOverMax { what: &'static str, count: u64, max: usize, at: usize },
    #[error("{what} of {count} at byte {at} cannot fit in the {left} bytes left")]
    CountOverBytes { what: &'static str, count: u64, left: usize, at: usize },
    #[error("frame announces {announced} bytes, more than FRAME_BYTES_MAX ({FRAME_BYTES_MAX})")]
    FrameTooLarge { announced: u64 },
    /// Within `FRAME_BYTES_MAX` but over what this point of the connection allows (a `Hello`).
    #[error("frame announces {announced} bytes, more than {limit} allowed here")]
    FrameOverLimit { announced: u64, limit: usize },
    #[error("unknown frame type {frame_type:#04x}")]
    UnknownFrameType { frame_type: u8 },
    #[error("request {request_id}: unknown operation kind {kind} at byte {at}")]
    UnknownOperation { request_id: u64, kind: u8, at: usize },
    #[error("request {request_id}: {count} operations, more than OPERATIONS_PER_REQUEST_MAX")]
    TooManyOperations { request_id: u64, count: usize },
    #[error("cannot encode {what}: {why}")]
    Unencodable { what: &'static str, why: &'static str },
    /// A string longer than a `u8` length can say: a name the engine would refuse anyway
    /// (`name_too_long`: its names are at most `NAME_BYTES_MAX`). Only an encoder fails so.
    #[error("cannot encode {what}: {bytes} bytes, more than STRING_BYTES_MAX ({STRING_BYTES_MAX})")]
    StringTooLong { what: &'static str, bytes: usize },
}

impl WireError {
    /// The protocol error code a peer is told.
    pub fn code(&self) -> ProtocolErrorCode {
        match self {
            WireError::Truncated { .. }
            | WireError::TrailingBytes { .. }
            | WireError::BadValue { .. }
            | WireError::NotUtf8 { .. }
            | WireError::CountOverMax { .. }
            | WireError::CountOverBytes { .. } => ProtocolErrorCode::MalformedFrame,
            WireError::FrameTooLarge { .. } | WireError::FrameOverLimit { .. } => ProtocolErrorCode::FrameTooLarge,
            WireError::UnknownFrameType { .. } => ProtocolErrorCode::UnknownFrameType,
            WireError::UnknownOperation { .. } => ProtocolErrorCode::UnknownOperation,
            WireError::TooManyOperations { .. } => ProtocolErrorCode::TooManyOperations,
            WireError::Unencodable { .. } | WireError::StringTooLong { .. } => ProtocolErrorCode::Internal,
        }
    }

    /// The request the error concerns, where the frame got far enough to name one.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            WireError::UnknownOperation { request_id, .. } | WireError::TooManyOperations { request_id, .. } => {
                Some(*request_id)
            }
            _ => None,
        }
    }

    pub fn closes_connection(&self) -> bool {
        self.code().closes_connection()
    }
}

/// Reads a frame header: the length of the rest of the frame, refused when it is zero (a
/// frame has at least its type byte) or above [`FRAME_BYTES_MAX`].
pub fn frame_length(header: [u8; FRAME_HEADER_BYTES]) -> Result<usize, WireError> {
    let announced = u32::from_le_bytes(header);
    if announced == 0 {
        return Err(WireError::BadValue { what: "frame length", value: 0, at: 0 });
    }
    if announced as usize > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge { announced: u64::from(announced) });
    }
    Ok(announced as usize)
}

/// A cursor over one frame's bytes. Every read checks the bytes left first.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }
    pub(crate) fn at(&self) -> usize {
        self.at
    }
    pub(crate) fn left(&self) -> usize {
        self.bytes.len() - self.at
    }
    pub(crate) fn take(&mut self, count: usize) -> Result<&'a [u8], WireError> {
        let left = self.left();
        if left < count {
            return Err(WireError::Truncated { at: self.at, needed: count - left });
        }
        let slice = &self.bytes[self.at..self.at + count];
        self.at += count;
        debug_assert!(self.at <= self.bytes.len());
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, WireError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    /// A byte that must be 0 (false) or 1 (true): booleans and presence bytes.
    pub(crate) fn flag(&mut self, what: &'static str) -> Result<bool, WireError> {
        let at = self.at;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(WireError::BadValue { what, value: u64::from(other), at }),
        }
    }
    pub(crate) fn option_i64(&mut self, what: &'static str) -> Result<Option<i64>, WireError> {
        Ok(if self.flag(what)? { Some(self.i64()?) } else { None })
    }
    /// An element count already read, refused over `max` or when `count` elements of at
    /// least `element_bytes_min` bytes each cannot fit in what is left: the bound on what
    /// decoding may allocate.
    pub(crate) fn check_count(
        &self,
        what: &'static str,
        count: u64,
        max: usize,
        element_bytes_min: usize,
        at: usize,
    ) -> Result<usize, WireError> {
        debug_assert!(element_bytes_min > 0, "every element takes bytes");
        if count > max as u64 {
            return Err(WireError::CountOverMax { what, count, max, at });
        }
        let count = count as usize;
        if count.checked_mul(element_bytes_min).is_none_or(|bytes| bytes > self.left()) {
            return Err(WireError::CountOverBytes { what, count: count as u64, left: self.left(), at });
        }
        Ok(count)
    }
    pub(crate) fn count_u16(
        &mut self,
        what: &'static str,
        max: usize,
        element_bytes_min: usize,
    ) -> Result<usize, WireError> {
        let at = self.at;
        let count = self.u16()?;
        self.check_count(what, u64::from(count), max, element_bytes_min, at)
    }
    pub(crate) fn count_u32(
        &mut self,
        what: &'static str,
        max: usize,
        element_bytes_min: usize,
    ) -> Result<usize, WireError> {
        let at = self.at;
        let count = self.u32()?;
        self.check_count(what, u64::from(count), max, element_bytes_min, at)
    }
    fn utf8(&mut self, what: &'static str, length: usize) -> Result<String, WireError> {
        let at = self.at;
        let bytes = self.take(length)?;
        let text = std::str::from_utf8(bytes).map_err(|_| WireError::NotUtf8 { what, at })?;
        Ok(text.to_owned())
    }
    /// A string with a `u8` length (at most [`STRING_BYTES_MAX`] bytes). Not validated as a
    /// name: that is the engine's business and gets a per-operation result code.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, WireError> {
        let length = self.u8()? as usize;
        self.utf8(what, length)
    }
    /// A string with a `u16` length, at most `max` bytes.
    pub(crate) fn string_u16(&mut self, what: &'static str, max: usize) -> Result<String, WireError> {
        let length = self.count_u16(what, max, 1)?;
        self.utf8(what, length)
    }
    /// Opaque bytes with a `u16` length, at most `max`.
    pub(crate) fn bytes_u16(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, WireError> {
        let length = self.count_u16(what, max, 1)?;
        Ok(self.take(length)?.to_vec())
    }
    /// Refuses bytes left over after a frame's body.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        match self.left() {
            0 => Ok(()),
            left => Err(WireError::TrailingBytes { left }),
        }
    }
}

/// Appends little-endian fields to a buffer. A field that cannot be encoded (a string over
/// its length prefix) is remembered as the first error, so encoders write straight through
/// and check once at the end.
pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
    pub(crate) error: Option<WireError>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { out, error: None }
    }
    pub(crate) fn len(&self) -> usize {
        self.out.len()
    }
    pub(crate) fn fail(&mut self, what: &'static str, why: &'static str) {
        if self.error.is_none() {
            self.error = Some(WireError::Unencodable { what, why });
        }
    }
    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }
    pub(crate) fn u8(&mut self, value: u8) {
        self.out.push(value);
    }
    pub(crate) fn u16(&mut self, value: u16) {
        self.bytes(&value.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, value: i64) {
        self.bytes(&value.to_le_bytes());
    }
    pub(crate) fn flag(&mut self, value: bool) {
        self.u8(u8::from(value));
    }
    pub(crate) fn option_i64(&mut self, value: Option<i64>) {
        self.flag(value.is_some());
        if let Some(value) = value {
            self.i64(value);
        }
    }
    /// A `u16` count, or an error when `count` is over `max`.
    pub(crate) fn count_u16(&mut self, what: &'static str, count: usize, max: usize) {
        debug_assert!(max <= usize::from(u16::MAX));
        if count > max {
            self.fail(what, "more elements than its maximum");
        }
        self.u16(count.min(max) as u16);
    }
    /// A `u32` count, or an error when `count` is over `max`.
    pub(crate) fn count_u32(&mut self, what: &'static str, count: usize, max: usize) {
        debug_assert!(max <= u32::MAX as usize);
        if count > max {
            self.fail(what, "more elements than its maximum");
        }
        self.u32(count.min(max) as u32);
    }
    pub(crate) fn string(&mut self, what: &'static str, text: &str) {
        if text.len() > STRING_BYTES_MAX {
            if self.error.is_none() {
                self.error = Some(WireError::StringTooLong { what, bytes: text.len() });
            }
            self.u8(0);
            return;
        }
        self.u8(text.len() as u8);
        self.bytes(text.as_bytes());
    }
    pub(crate) fn bytes_u16(&mut self, what: &'static str, bytes: &[u8], max: usize) {
        if bytes.len() > max {
            self.fail(what, "longer than its maximum");
            self.u16(0);
            return;
        }
        self.count_u16(what, bytes.len(), max);
        self.bytes(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for code in ProtocolErrorCode::ALL {
            assert_eq!(ProtocolErrorCode::from_number(code.number()), Some(*code));
            assert!(code.number() >= 100, "protocol codes live above the engine's result codes");
        }
        assert!(ProtocolErrorCode::ALL.windows(2).all(|w| w[0].number() < w[1].number()));
    }

    #[test]
    fn counts_are_checked_before_allocating() {
        // A count of 60,000 lines with 3 bytes left: refused without reading further.
        let bytes = [0x60, 0xea, 1, 2, 3];
        let mut reader = Reader::new(&bytes);
        let error = reader.count_u16("lines", usize::from(u16::MAX), 10).unwrap_err();
        assert!(matches!(error, WireError::CountOverBytes { count: 60_000, left: 3, .. }), "{error:?}");
        let mut reader = Reader::new(&bytes);
        let error = reader.count_u16("operations", 1_024, 1).unwrap_err();
        assert!(matches!(error, WireError::CountOverMax { count: 60_000, max: 1_024, .. }), "{error:?}");
    }

    #[test]
    fn frame_length_bounds() {
        assert_eq!(frame_length((FRAME_BYTES_MAX as u32).to_le_bytes()), Ok(FRAME_BYTES_MAX));
        assert_eq!(
            frame_length((FRAME_BYTES_MAX as u32 + 1).to_le_bytes()),
            Err(WireError::FrameTooLarge { announced: FRAME_BYTES_MAX as u64 + 1 })
        );
        assert_eq!(frame_length([0; 4]).unwrap_err().code(), ProtocolErrorCode::MalformedFrame);
    }
}
