//! The sans-IO codec of Reservoir's QUIC binary protocol (docs/protocol.md): frames, the
//! operations a request carries and the results a reply carries, and a [`FrameDecoder`] that
//! cuts a stream into frames. No sockets, no clock, no async: the QUIC server and client
//! (issue #4) feed it bytes and send what it encodes.
//!
//! - `wire`: limits, frame header, protocol error codes, [`WireError`].
//! - `message`: [`ClientFrame`] / [`ServerFrame`], [`decode_client_frame`],
//!   [`decode_server_frame`], [`encode_reply`] (splits a large reply into parts).
//! - `operation`: [`Operation`] (raw, structurally checked) and its validation into engine
//!   types (or an [`AdminAction`]) with [`Operation::to_action`]; [`OperationResult`];
//!   [`run_query`].
//! - `decoder`: [`FrameDecoder`].

pub mod decoder;
pub mod message;
pub mod operation;
pub mod wire;

pub use decoder::FrameDecoder;
pub use message::{
    decode_client_frame, decode_server_frame, encode_reply, negotiate_version, ClientFrame, ErrorFrame, Hello,
    HelloReply, ReplyFrame, Request, Role, ServerFrame, ServerLimits,
};
pub use operation::{
    run_query, Action, AdminAction, ItemPage, ItemState, Operation, OperationKind, OperationResult, Query, SkuSummary,
    TenantEntry, WireImportRow, WireLine,
};
pub use wire::{
    ProtocolErrorCode, WireError, ALPN, ERROR_MESSAGE_BYTES_MAX, FRAME_BYTES_MAX, FRAME_HEADER_BYTES,
    OPERATIONS_PER_REQUEST_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, REQUESTS_IN_FLIGHT_MAX, STRING_BYTES_MAX,
    TENANTS_PER_LIST_MAX, TOKEN_BYTES_MAX,
};
