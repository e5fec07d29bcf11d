//! Reservoir's QUIC service. Two layers, like quinn-proto and quinn:
//!
//! The **sans-IO codec** of the binary protocol (docs/protocol.md): frames, the operations a
//! request carries and the results a reply carries, and a [`FrameDecoder`] that cuts a stream
//! into frames. No sockets, no clock, no async:
//!
//! - `wire`: limits, frame header, protocol error codes, [`WireError`].
//! - `message`: [`ClientFrame`] / [`ServerFrame`], [`decode_client_frame`],
//!   [`decode_server_frame`], [`encode_reply`] (splits a large reply into parts).
//! - `operation`: [`Operation`] (raw, structurally checked) and its validation into engine
//!   types (or an [`AdminAction`]) with [`Operation::to_action`]; [`OperationResult`];
//!   [`run_query`].
//! - `decoder`: [`FrameDecoder`].
//!
//! The **I/O layer** on quinn and tokio, which feeds the codec bytes and sends what it encodes:
//!
//! - `server`: `reservoir serve`: connections, authentication, limits, the request path
//!   (decode -> engine -> WAL group commit -> reply).
//! - `client`: the Rust client library (batching, pipelining, retries with the same ids).
//! - `credentials`: bearer tokens, stored hashed; `tls`: certificates and TLS configuration.
//! - `gateway`: the HTTP/JSON gateway (`reservoir gateway`, docs/gateway.md) on axum, in
//!   front of one or more servers, through the client library.
//! - `import`: CSV and JSON-lines stock import files, parsed a line at a time.

pub mod client;
pub mod credentials;
pub mod decoder;
pub mod gateway;
pub mod import;
pub mod message;
pub mod operation;
pub mod replication;
pub mod server;
pub mod tls;
pub mod wire;

pub use decoder::FrameDecoder;
pub use message::{
    decode_client_frame, decode_server_frame, encode_reply, negotiate_version, ClientFrame, ErrorFrame, Hello,
    HelloReply, NodeRole, ReplyFrame, Request, Role, ServerFrame, ServerLimits,
};
pub use operation::{
    run_query, Action, AdminAction, ItemPage, ItemState, Operation, OperationKind, OperationResult, Query, Service,
    SkuSummary, TenantEntry, WireImportRow, WireLine,
};
pub use wire::{
    ProtocolErrorCode, WireError, ALPN, ERROR_MESSAGE_BYTES_MAX, FRAME_BYTES_MAX, FRAME_HEADER_BYTES,
    HELLO_FRAME_BYTES_MAX, OPERATIONS_PER_REQUEST_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN,
    REQUESTS_IN_FLIGHT_MAX, STRING_BYTES_MAX, TENANTS_PER_LIST_MAX, TOKEN_BYTES_MAX,
};

/// Everything the I/O layer can fail with (the codec's own errors are [`WireError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Wal(#[from] reservoir_wal::WalError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the connection failed: {0}")]
    Connection(String),
    /// The server answered with a protocol error (`docs/protocol.md`, "Protocol errors").
    #[error("the server refused: {} ({}){}", .0.code.name(), .0.message, .0.retry_after_ms.map(|ms| format!(", retry after {ms} ms")).unwrap_or_default())]
    Refused(ErrorFrame),
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    /// The request cannot be put on the wire (a string over `STRING_BYTES_MAX`, a list over
    /// its maximum): sending it again cannot help, so the client returns this at once.
    #[error("the request cannot be encoded: {0}")]
    Unencodable(WireError),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("shutdown: {0}")]
    Shutdown(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("replication: {0}")]
    Replication(String),
}

impl NetError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> NetError {
        NetError::Io { what: what.into(), source }
    }
}
