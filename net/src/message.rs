//! Frames: what a client sends ([`ClientFrame`]) and what a server sends ([`ServerFrame`]),
//! encoded into a `Vec<u8>` and decoded from a `&[u8]` holding exactly one whole frame
//! (header included, as [`crate::FrameDecoder::pop`] returns it). docs/protocol.md, "Frames".

use reservoir_engine::{IMPORT_ROWS_MAX, LINES_PER_RESERVATION_MAX, NAME_BYTES_MAX, PAGE_ITEMS_MAX};

use crate::operation::{Operation, OperationResult, OPERATION_BYTES_MIN, RESULT_BYTES_MIN};
use crate::wire::{
    frame_length, frame_type, ProtocolErrorCode, Reader, WireError, Writer, ERROR_MESSAGE_BYTES_MAX, FRAME_BYTES_MAX,
    FRAME_HEADER_BYTES, OPERATIONS_PER_REQUEST_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, REQUESTS_IN_FLIGHT_MAX,
    TOKEN_BYTES_MAX,
};

/// The first frame of a connection: the versions the client speaks and its credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version_min: u16,
    pub version_max: u16,
    /// The bearer token (opaque bytes, at most [`TOKEN_BYTES_MAX`]).
    pub token: Vec<u8>,
}

/// Who a credential is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A tenant token: every tenant operation acts on this tenant, and only on it.
    Tenant { name: String },
    /// An admin token: admin operations only.
    Admin,
    /// A standby's replication token: the connection carries a replication stream
    /// (docs/protocol.md, "Replication").
    Replication,
}

/// What a node is doing, told in [`HelloReply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    /// Takes writes for its epoch.
    Primary = 1,
    /// Follows a primary; answers queries, refuses writes with `not_primary`.
    Standby = 2,
    /// A former primary that saw a higher epoch: refuses writes and queries (`status` only), and
    /// acknowledges nothing more, until it rejoins as a standby.
    Fenced = 3,
}

impl NodeRole {
    pub fn name(self) -> &'static str {
        match self {
            NodeRole::Primary => "primary",
            NodeRole::Standby => "standby",
            NodeRole::Fenced => "fenced",
        }
    }

    fn from_number(number: u8) -> Option<NodeRole> {
        [NodeRole::Primary, NodeRole::Standby, NodeRole::Fenced].into_iter().find(|role| *role as u8 == number)
    }
}

/// The limits a server enforces, told to the client in [`HelloReply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    pub frame_bytes_max: u32,
    pub operations_per_request_max: u16,
    pub requests_in_flight_max: u32,
    pub name_bytes_max: u8,
    pub lines_per_reservation_max: u16,
    pub import_rows_max: u32,
    pub page_items_max: u32,
}

impl ServerLimits {
    /// This build's limits (the constants of `wire.rs` and of the engine).
    pub const THIS_BUILD: ServerLimits = ServerLimits {
        frame_bytes_max: FRAME_BYTES_MAX as u32,
        operations_per_request_max: OPERATIONS_PER_REQUEST_MAX as u16,
        requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX as u32,
        name_bytes_max: NAME_BYTES_MAX as u8,
        lines_per_reservation_max: LINES_PER_RESERVATION_MAX as u16,
        import_rows_max: IMPORT_ROWS_MAX as u32,
        page_items_max: PAGE_ITEMS_MAX as u32,
    };
}

/// The server's answer to a [`Hello`] it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloReply {
    /// The version chosen for this connection.
    pub version: u16,
    pub role: Role,
    /// The server's epoch (raised at every promotion of a standby); a fenced node's is the
    /// epoch that fenced it, when higher.
    pub epoch: u64,
    pub limits: ServerLimits,
    /// Whether the node takes writes (a client given several endpoints picks the primary
    /// with the highest epoch).
    pub node: NodeRole,
}

/// A batch of operations, run in order, answered by one reply (in one or more parts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the client, unique among its requests in flight on the connection.
    pub request_id: u64,
    pub operations: Vec<Operation>,
}

/// A reply, or one part of a reply too large for one frame: the results of operations
/// `first_operation ..` of request `request_id`, in order. The last part has `is_final`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyFrame {
    pub request_id: u64,
    pub epoch: u64,
    /// The LSN the reply reflects: every record up to it is included in what it answers.
    pub lsn: u64,
    pub first_operation: u16,
    pub is_final: bool,
    pub results: Vec<OperationResult>,
}

/// A protocol-level error, about the request `request_id` or (when `None`) the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    pub request_id: Option<u64>,
    pub code: ProtocolErrorCode,
    /// For people: at most [`ERROR_MESSAGE_BYTES_MAX`] bytes of UTF-8.
    pub message: String,
    /// With `rate_limited` (and allowed with `too_many_in_flight`, `shutting_down`).
    pub retry_after_ms: Option<u32>,
    /// With `not_primary`: the primary's address (`host:port`), when known.
    pub primary: Option<String>,
}

impl ErrorFrame {
    /// The error frame that answers a [`WireError`] of a received frame.
    pub fn from_wire_error(error: &WireError) -> ErrorFrame {
        let mut message = error.to_string();
        message.truncate(ERROR_MESSAGE_BYTES_MAX.min(message.len()));
        while !message.is_char_boundary(message.len()) {
            message.pop();
        }
        ErrorFrame { request_id: error.request_id(), code: error.code(), message, retry_after_ms: None, primary: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Hello(Hello),
    Request(Request),
    /// No more requests follow; the server answers those in flight, then closes.
    Goodbye,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    HelloReply(HelloReply),
    Reply(ReplyFrame),
    Error(ErrorFrame),
    /// The server takes no new requests on this connection (shutting down, or demoted); it
    /// answers those in flight, then closes. Later requests get `shutting_down`.
    Goodbye,
}

/// The highest version both this build and `hello` speak, or `None` (`unsupported_version`).
pub fn negotiate_version(hello: &Hello) -> Option<u16> {
    let low = hello.version_min.max(PROTOCOL_VERSION_MIN);
    let high = hello.version_max.min(PROTOCOL_VERSION_MAX);
    let chosen = (low <= high).then_some(high);
    debug_assert!(chosen.is_none_or(|version| (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version)));
    chosen
}

/// Writes one frame: header, `frame_type`, then what `body` writes. On an error (a field
/// that cannot be encoded, a frame over [`FRAME_BYTES_MAX`]) `out` is left as it was.
fn encode_frame(out: &mut Vec<u8>, frame_type: u8, body: impl FnOnce(&mut Writer<'_>)) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    let mut writer = Writer::new(out);
    writer.u8(frame_type);
    body(&mut writer);
    let error = writer.error.take();
    let length = out.len() - start - FRAME_HEADER_BYTES;
    if let Some(error) = error {
        out.truncate(start);
        return Err(error);
    }
    if length > FRAME_BYTES_MAX {
        out.truncate(start);
        return Err(WireError::FrameTooLarge { announced: length as u64 });
    }
    out[start..start + FRAME_HEADER_BYTES].copy_from_slice(&(length as u32).to_le_bytes());
    debug_assert!(length >= 1, "a frame has its type byte");
    Ok(())
}

/// Checks one whole frame's header against its size; returns its type byte and a reader
/// over its body.
fn open_frame(frame: &[u8]) -> Result<(u8, Reader<'_>), WireError> {
    let Some((header, rest)) = frame.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(WireError::Truncated { at: 0, needed: FRAME_HEADER_BYTES - frame.len() });
    };
    let length = frame_length(*header)?;
    if rest.len() < length {
        return Err(WireError::Truncated { at: frame.len(), needed: length - rest.len() });
    }
    if rest.len() > length {
        return Err(WireError::TrailingBytes { left: rest.len() - length });
    }
    debug_assert!(length >= 1);
    Ok((rest[0], Reader::new(&rest[1..])))
}

impl ClientFrame {
    /// Appends the whole frame to `out` (untouched on error).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        match self {
            ClientFrame::Hello(hello) => encode_frame(out, frame_type::HELLO, |writer| {
                writer.u16(hello.version_min);
                writer.u16(hello.version_max);
                writer.bytes_u16("token", &hello.token, TOKEN_BYTES_MAX);
            })?,
            ClientFrame::Request(request) => encode_frame(out, frame_type::REQUEST, |writer| {
                writer.u64(request.request_id);
                writer.count_u16("operations", request.operations.len(), OPERATIONS_PER_REQUEST_MAX);
                for operation in &request.operations {
                    operation.encode(writer);
                }
            })?,
            ClientFrame::Goodbye => encode_frame(out, frame_type::CLIENT_GOODBYE, |_| {})?,
        }
        // Pair assertion: what was written reads back as what was meant.
        if cfg!(debug_assertions) {
            assert_eq!(
                decode_client_frame(&out[start..]),
                Ok(self.as_decoded()),
                "client frame encode/decode disagree"
            );
        }
        Ok(())
    }

    /// The frame the decoder returns for this one: an operation's import rows or lines past one
    /// more than their maximum are read and dropped (`Operation::as_decoded`).
    pub fn as_decoded(&self) -> ClientFrame {
        match self {
            ClientFrame::Request(request) => ClientFrame::Request(Request {
                request_id: request.request_id,
                operations: request.operations.iter().map(Operation::as_decoded).collect(),
            }),
            other => other.clone(),
        }
    }
}

/// Decodes one whole client frame (header included). Never panics; never allocates more
/// than the frame's own size.
pub fn decode_client_frame(frame: &[u8]) -> Result<ClientFrame, WireError> {
    let (kind, mut reader) = open_frame(frame)?;
    let decoded = match kind {
        frame_type::HELLO => ClientFrame::Hello(Hello {
            version_min: reader.u16()?,
            version_max: reader.u16()?,
            token: reader.bytes_u16("token", TOKEN_BYTES_MAX)?,
        }),
        frame_type::REQUEST => {
            let request_id = reader.u64()?;
            let at = reader.at();
            let count = reader.u16()?;
            if usize::from(count) > OPERATIONS_PER_REQUEST_MAX {
                return Err(WireError::TooManyOperations { request_id, count: usize::from(count) });
            }
            let count = reader.check_count(
                "operations",
                u64::from(count),
                OPERATIONS_PER_REQUEST_MAX,
                OPERATION_BYTES_MIN,
                at,
            )?;
            let mut operations = Vec::with_capacity(count);
            for _ in 0..count {
                operations.push(Operation::decode(&mut reader, request_id)?);
            }
            ClientFrame::Request(Request { request_id, operations })
        }
        frame_type::CLIENT_GOODBYE => ClientFrame::Goodbye,
        frame_type => return Err(WireError::UnknownFrameType { frame_type }),
    };
    reader.finish()?;
    Ok(decoded)
}

/// Bytes of a reply frame before its results: header, type, request id, epoch, LSN, first
/// operation, final flag, result count.
const REPLY_OVERHEAD_BYTES: usize = FRAME_HEADER_BYTES + 1 + 8 + 8 + 8 + 2 + 1 + 2;

impl ServerFrame {
    /// Appends the whole frame to `out` (untouched on error).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        match self {
            ServerFrame::HelloReply(hello) => encode_frame(out, frame_type::HELLO_REPLY, |writer| {
                writer.u16(hello.version);
                match &hello.role {
                    Role::Tenant { name } => {
                        writer.u8(1);
                        writer.string("tenant name", name);
                    }
                    Role::Admin => writer.u8(2),
                    Role::Replication => writer.u8(3),
                }
                writer.u64(hello.epoch);
                let limits = &hello.limits;
                writer.u32(limits.frame_bytes_max);
                writer.u16(limits.operations_per_request_max);
                writer.u32(limits.requests_in_flight_max);
                writer.u8(limits.name_bytes_max);
                writer.u16(limits.lines_per_reservation_max);
                writer.u32(limits.import_rows_max);
                writer.u32(limits.page_items_max);
                writer.u8(hello.node as u8);
            })?,
            ServerFrame::Reply(reply) => encode_frame(out, frame_type::REPLY, |writer| {
                writer.u64(reply.request_id);
                writer.u64(reply.epoch);
                writer.u64(reply.lsn);
                writer.u16(reply.first_operation);
                writer.flag(reply.is_final);
                let room = OPERATIONS_PER_REQUEST_MAX.saturating_sub(usize::from(reply.first_operation));
                if usize::from(reply.first_operation) > OPERATIONS_PER_REQUEST_MAX {
                    writer.fail("reply", "first operation past OPERATIONS_PER_REQUEST_MAX");
                }
                writer.count_u16("results", reply.results.len(), room);
                for result in &reply.results {
                    result.encode(writer);
                }
            })?,
            ServerFrame::Error(error) => encode_frame(out, frame_type::ERROR, |writer| {
                writer.flag(error.request_id.is_some());
                if let Some(request_id) = error.request_id {
                    writer.u64(request_id);
                }
                writer.u16(error.code.number());
                writer.bytes_u16("error message", error.message.as_bytes(), ERROR_MESSAGE_BYTES_MAX);
                writer.flag(error.retry_after_ms.is_some());
                if let Some(retry_after_ms) = error.retry_after_ms {
                    writer.u32(retry_after_ms);
                }
                writer.flag(error.primary.is_some());
                if let Some(primary) = &error.primary {
                    writer.string("primary address", primary);
                }
            })?,
            ServerFrame::Goodbye => encode_frame(out, frame_type::SERVER_GOODBYE, |_| {})?,
        }
        debug_assert_eq!(decode_server_frame(&out[start..]).as_ref(), Ok(self), "server frame encode/decode disagree");
        Ok(())
    }
}

/// Decodes one whole server frame (header included). Never panics; never allocates more
/// than the frame's own size.
pub fn decode_server_frame(frame: &[u8]) -> Result<ServerFrame, WireError> {
    let (kind, mut reader) = open_frame(frame)?;
    let decoded = match kind {
        frame_type::HELLO_REPLY => {
            let version = reader.u16()?;
            let at = reader.at();
            let role = match reader.u8()? {
                1 => Role::Tenant { name: reader.string("tenant name")? },
                2 => Role::Admin,
                3 => Role::Replication,
                other => return Err(WireError::BadValue { what: "role", value: u64::from(other), at }),
            };
            let epoch = reader.u64()?;
            let limits = ServerLimits {
                frame_bytes_max: reader.u32()?,
                operations_per_request_max: reader.u16()?,
                requests_in_flight_max: reader.u32()?,
                name_bytes_max: reader.u8()?,
                lines_per_reservation_max: reader.u16()?,
                import_rows_max: reader.u32()?,
                page_items_max: reader.u32()?,
            };
            let at = reader.at();
            let number = reader.u8()?;
            let node = NodeRole::from_number(number).ok_or(WireError::BadValue {
                what: "node role",
                value: u64::from(number),
                at,
            })?;
            ServerFrame::HelloReply(HelloReply { version, role, epoch, limits, node })
        }
        frame_type::REPLY => {
            let request_id = reader.u64()?;
            let epoch = reader.u64()?;
            let lsn = reader.u64()?;
            let at = reader.at();
            let first_operation = reader.u16()?;
            if usize::from(first_operation) > OPERATIONS_PER_REQUEST_MAX {
                return Err(WireError::BadValue { what: "first operation", value: u64::from(first_operation), at });
            }
            let is_final = reader.flag("final flag")?;
            let room = OPERATIONS_PER_REQUEST_MAX - usize::from(first_operation);
            let count = reader.count_u16("results", room, RESULT_BYTES_MIN)?;
            let mut results = Vec::with_capacity(count);
            for _ in 0..count {
                results.push(OperationResult::decode(&mut reader)?);
            }
            ServerFrame::Reply(ReplyFrame { request_id, epoch, lsn, first_operation, is_final, results })
        }
        frame_type::ERROR => {
            let request_id = if reader.flag("request id presence")? { Some(reader.u64()?) } else { None };
            let at = reader.at();
            let number = reader.u16()?;
            let code = ProtocolErrorCode::from_number(number).ok_or(WireError::BadValue {
                what: "protocol error code",
                value: u64::from(number),
                at,
            })?;
            let message = reader.string_u16("error message", ERROR_MESSAGE_BYTES_MAX)?;
            let retry_after_ms = if reader.flag("retry_after_ms presence")? { Some(reader.u32()?) } else { None };
            let primary = if reader.flag("primary presence")? { Some(reader.string("primary address")?) } else { None };
            ServerFrame::Error(ErrorFrame { request_id, code, message, retry_after_ms, primary })
        }
        frame_type::SERVER_GOODBYE => ServerFrame::Goodbye,
        frame_type => return Err(WireError::UnknownFrameType { frame_type }),
    };
    reader.finish()?;
    Ok(decoded)
}

/// Appends the reply to request `request_id` as one or more [`ReplyFrame`]s, each within
/// [`FRAME_BYTES_MAX`], cutting between results; returns how many frames it wrote. Fails
/// (leaving `out` as it was) only if one result alone cannot fit in a frame, which the
/// limits rule out for every result a server builds from the engine.
pub fn encode_reply(
    request_id: u64,
    epoch: u64,
    lsn: u64,
    results: &[OperationResult],
    out: &mut Vec<u8>,
) -> Result<usize, WireError> {
    if results.len() > OPERATIONS_PER_REQUEST_MAX {
        return Err(WireError::Unencodable { what: "reply", why: "more results than OPERATIONS_PER_REQUEST_MAX" });
    }
    // Encode every result once, remembering where each ends.
    let mut scratch = Vec::new();
    let mut ends = Vec::with_capacity(results.len());
    {
        let mut writer = Writer::new(&mut scratch);
        for result in results {
            result.encode(&mut writer);
            ends.push(writer.len());
        }
        if let Some(error) = writer.error.take() {
            return Err(error);
        }
    }
    let budget = FRAME_BYTES_MAX + FRAME_HEADER_BYTES - REPLY_OVERHEAD_BYTES;
    let start = out.len();
    let (mut first, mut frames) = (0usize, 0usize);
    loop {
        let from = if first == 0 { 0 } else { ends[first - 1] };
        let mut last = first;
        while last < results.len() && ends[last] - from <= budget {
            last += 1;
        }
        if last == first && first < results.len() {
            out.truncate(start);
            return Err(WireError::Unencodable { what: "reply", why: "one result is larger than a frame" });
        }
        let to = if last == 0 { 0 } else { ends[last - 1] };
        let frame_start = out.len();
        encode_frame(out, frame_type::REPLY, |writer| {
            writer.u64(request_id);
            writer.u64(epoch);
            writer.u64(lsn);
            writer.u16(first as u16);
            writer.flag(last == results.len());
            writer.u16((last - first) as u16);
            writer.bytes(&scratch[from..to]);
        })?;
        debug_assert_eq!(out.len() - frame_start, REPLY_OVERHEAD_BYTES + (to - from), "overhead is as counted");
        debug_assert!(
            matches!(decode_server_frame(&out[frame_start..]), Ok(ServerFrame::Reply(ref part))
                if part.results[..] == results[first..last] && part.is_final == (last == results.len())),
            "reply part encode/decode disagree"
        );
        frames += 1;
        first = last;
        if first == results.len() {
            return Ok(frames);
        }
    }
}
