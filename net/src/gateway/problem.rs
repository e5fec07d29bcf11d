//! Problem details (RFC 9457, `application/problem+json`) and the one table that maps every
//! outcome to an HTTP status: the engine's result codes, the protocol's error codes, the client
//! library's errors and the gateway's own codes (docs/gateway.md, "Status mapping", lists the
//! same table; a test keeps the two in step).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use reservoir_engine::{ResultCode, NAME_BYTES_MAX};
use serde::Serialize;

use crate::wire::ProtocolErrorCode;
use crate::NetError;

/// The media type of every error body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
/// `Retry-After` when the server gave no `retry_after_ms` (upstream unreachable, timeouts).
pub const RETRY_AFTER_MS_DEFAULT: u64 = 1_000;

/// The gateway's own problems (HTTP only; the QUIC protocol has no such codes). Stable numbers
/// in `200..`, after the result codes (`0..99`) and the protocol error codes (`100..`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum GatewayCode {
    MalformedRequest = 200,
    InvalidBody = 201,
    BodyTooLarge = 202,
    UnsupportedMediaType = 203,
    IdempotencyKeyMissing = 204,
    IdempotencyKeyMismatch = 205,
    InvalidImport = 206,
    UpstreamUnavailable = 207,
    UpstreamTimeout = 208,
    NotFound = 209,
    MethodNotAllowed = 210,
    BadGateway = 211,
    RequestTimeout = 212,
}

impl GatewayCode {
    /// Every code, in number order.
    pub const ALL: &'static [GatewayCode] = &[
        GatewayCode::MalformedRequest,
        GatewayCode::InvalidBody,
        GatewayCode::BodyTooLarge,
        GatewayCode::UnsupportedMediaType,
        GatewayCode::IdempotencyKeyMissing,
        GatewayCode::IdempotencyKeyMismatch,
        GatewayCode::InvalidImport,
        GatewayCode::UpstreamUnavailable,
        GatewayCode::UpstreamTimeout,
        GatewayCode::NotFound,
        GatewayCode::MethodNotAllowed,
        GatewayCode::BadGateway,
        GatewayCode::RequestTimeout,
    ];

    pub fn number(self) -> u16 {
        self as u16
    }

    pub fn name(self) -> &'static str {
        match self {
            GatewayCode::MalformedRequest => "malformed_request",
            GatewayCode::InvalidBody => "invalid_body",
            GatewayCode::BodyTooLarge => "body_too_large",
            GatewayCode::UnsupportedMediaType => "unsupported_media_type",
            GatewayCode::IdempotencyKeyMissing => "idempotency_key_missing",
            GatewayCode::IdempotencyKeyMismatch => "idempotency_key_mismatch",
            GatewayCode::InvalidImport => "invalid_import",
            GatewayCode::UpstreamUnavailable => "upstream_unavailable",
            GatewayCode::UpstreamTimeout => "upstream_timeout",
            GatewayCode::NotFound => "not_found",
            GatewayCode::MethodNotAllowed => "method_not_allowed",
            GatewayCode::BadGateway => "bad_gateway",
            GatewayCode::RequestTimeout => "request_timeout",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            GatewayCode::MalformedRequest | GatewayCode::IdempotencyKeyMissing => StatusCode::BAD_REQUEST,
            GatewayCode::InvalidBody | GatewayCode::IdempotencyKeyMismatch | GatewayCode::InvalidImport => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            GatewayCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayCode::UpstreamUnavailable | GatewayCode::UpstreamTimeout => StatusCode::SERVICE_UNAVAILABLE,
            GatewayCode::NotFound => StatusCode::NOT_FOUND,
            GatewayCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayCode::BadGateway => StatusCode::BAD_GATEWAY,
            GatewayCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Whether the answer carries `Retry-After` (retrying later, with the same key, can help).
    pub fn retries(self) -> bool {
        matches!(self, GatewayCode::UpstreamUnavailable | GatewayCode::UpstreamTimeout)
    }
}

/// The status of an operation's result code, by the ranges of docs/protocol.md ("Result
/// codes"): success 200; a stock decision or a wrong state 409 (a missing thing 404);
/// idempotency and invalid input 422; capacity 507.
pub fn result_status(code: ResultCode) -> StatusCode {
    match code {
        ResultCode::UnknownTenant | ResultCode::UnknownItem | ResultCode::UnknownReservation => StatusCode::NOT_FOUND,
        // Not remembered: the same request, retried later, can pass.
        ResultCode::MemoryFull => StatusCode::SERVICE_UNAVAILABLE,
        // Never seen here in practice: the client asks such a query again alone.
        ResultCode::ReplyBudgetSpent => StatusCode::SERVICE_UNAVAILABLE,
        code => match code.number() {
            0..=9 => StatusCode::OK,
            10..=29 => StatusCode::CONFLICT,
            30..=59 => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INSUFFICIENT_STORAGE,
        },
    }
}

/// The status of a protocol error the server answered a request (or the handshake) with.
pub fn protocol_status(code: ProtocolErrorCode) -> StatusCode {
    match code {
        ProtocolErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ProtocolErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ProtocolErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ProtocolErrorCode::TooManyInFlight
        | ProtocolErrorCode::NotPrimary
        | ProtocolErrorCode::ShuttingDown
        | ProtocolErrorCode::Internal => StatusCode::SERVICE_UNAVAILABLE,
        // The gateway and the server disagree about the protocol: the gateway's fault.
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// An RFC 9457 problem (boxed: it is every handler's error, and small errors keep the happy
/// path's futures small).
#[derive(Clone, Debug)]
pub struct Problem(Box<ProblemDetails>);

impl std::ops::Deref for Problem {
    type Target = ProblemDetails;
    fn deref(&self) -> &ProblemDetails {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemDetails {
        &mut self.0
    }
}

/// The body of a problem: RFC 9457's members, with Reservoir's stable `code` and `number`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDetails {
    /// `urn:reservoir:problem:CODE`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// The status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// The stable code name: a result code (`insufficient_stock`), a protocol error code
    /// (`rate_limited`) or a gateway code (`body_too_large`); docs/gateway.md lists them.
    pub code: String,
    /// The code's stable number (result codes 0.., protocol errors 100.., gateway 200..).
    pub number: u16,
    /// When to retry (also in `Retry-After`, in whole seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The primary's address, when a standby answered `not_primary` and knew it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// The 1-based line of an import body that does not parse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The operation's whole result when the engine refused it (its lines say what was
    /// available), in the shape of the endpoint's success body.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The LSN and epoch of the reply the problem reflects, when the server answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, number: u16, detail: impl Into<String>) -> Problem {
        Problem(Box::new(ProblemDetails {
            problem_type: format!("urn:reservoir:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            number,
            retry_after_ms: None,
            primary: None,
            line: None,
            result: None,
            lsn: None,
            epoch: None,
        }))
    }

    /// One of the gateway's own problems.
    pub fn gateway(code: GatewayCode, detail: impl Into<String>) -> Problem {
        let mut problem = Problem::new(code.status(), code.name(), code.number(), detail);
        if code.retries() {
            problem.retry_after_ms = Some(RETRY_AFTER_MS_DEFAULT);
        }
        problem
    }

    /// A protocol error (from the server, or the gateway's check of the same thing).
    pub fn protocol(code: ProtocolErrorCode, detail: impl Into<String>) -> Problem {
        let status = protocol_status(code);
        let mut problem = Problem::new(status, code.name(), code.number(), detail);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            problem.retry_after_ms = Some(RETRY_AFTER_MS_DEFAULT);
        }
        problem
    }

    /// An operation the engine refused; `result` is the endpoint's body for it.
    pub fn refused(code: ResultCode, result: Option<serde_json::Value>, lsn: u64, epoch: u64) -> Problem {
        debug_assert!(!code.is_ok(), "only a refusal is a problem");
        let mut problem = Problem::new(result_status(code), code.name(), code.number(), refusal_detail(code));
        problem.result = result;
        if problem.status == StatusCode::SERVICE_UNAVAILABLE.as_u16() {
            problem.retry_after_ms = Some(RETRY_AFTER_MS_DEFAULT);
        }
        problem.lsn = Some(lsn);
        problem.epoch = Some(epoch);
        problem
    }

    /// What the client library failed with. The details name no internals (addresses, TLS
    /// errors): those go to the gateway's log.
    pub fn from_net(error: &NetError) -> Problem {
        match error {
            NetError::Refused(frame) => {
                let mut problem = Problem::protocol(frame.code, frame.message.clone());
                if let Some(ms) = frame.retry_after_ms {
                    problem.retry_after_ms = Some(u64::from(ms));
                }
                problem.primary = frame.primary.clone();
                if frame.code == ProtocolErrorCode::NotPrimary {
                    problem.detail = "no primary answered (only a standby): retry with the same Idempotency-Key".into();
                }
                problem
            }
            NetError::Connect(_) | NetError::Connection(_) | NetError::Shutdown(_) => {
                tracing::warn!(%error, "upstream unavailable");
                Problem::gateway(
                    GatewayCode::UpstreamUnavailable,
                    "no Reservoir server answered: retry with the same Idempotency-Key",
                )
            }
            // What the engine answers a name over NAME_BYTES_MAX, for one the wire cannot carry.
            NetError::Unencodable(crate::wire::WireError::StringTooLong { what, bytes }) => {
                let code = ResultCode::NameTooLong;
                Problem::new(
                    result_status(code),
                    code.name(),
                    code.number(),
                    format!("the {what} is {bytes} bytes: names are at most {NAME_BYTES_MAX}"),
                )
            }
            NetError::Unencodable(wire) => Problem::gateway(GatewayCode::InvalidBody, wire.to_string()),
            NetError::Timeout(_) => {
                tracing::warn!(%error, "upstream timeout");
                Problem::gateway(
                    GatewayCode::UpstreamTimeout,
                    "the server did not answer in time: retry with the same Idempotency-Key",
                )
            }
            _ => {
                tracing::error!(%error, "upstream failure");
                Problem::gateway(GatewayCode::BadGateway, "the gateway could not talk to the server (see its log)")
            }
        }
    }
}

fn refusal_detail(code: ResultCode) -> String {
    let what = match code {
        ResultCode::InsufficientStock => "not enough available stock: the result's lines say what is available",
        ResultCode::ExpectedMismatch => "on_hand is not the expected value: someone else changed it",
        ResultCode::IdReusedWithDifferentRequest => "the Idempotency-Key was used before with a different request",
        ResultCode::UnknownItem => "no such SKU at that location in this tenant",
        ResultCode::UnknownReservation => "no such reservation in this tenant",
        ResultCode::MemoryFull => {
            "the server's idempotency memory is full of recent ids: retry later with the same Idempotency-Key"
        }
        _ => "the engine refused the operation (docs/protocol.md, \"Result codes\")",
    };
    format!("{}: {what}", code.name())
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let retry_after = self.retry_after_ms.map(|ms| ms.div_ceil(1_000).max(1));
        let lsn_epoch = self.lsn.zip(self.epoch);
        let body = serde_json::to_vec(&*self.0).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some((lsn, epoch)) = lsn_epoch {
            super::insert_position(headers, lsn, epoch);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_status_and_numbers_do_not_collide() {
        for code in ResultCode::ALL {
            let status = result_status(*code);
            assert_eq!(status.is_success(), code.is_ok(), "{code:?}");
            assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
        }
        assert_eq!(result_status(ResultCode::InsufficientStock), StatusCode::CONFLICT);
        assert_eq!(result_status(ResultCode::QuantityNotPositive), StatusCode::UNPROCESSABLE_ENTITY);
        for code in ProtocolErrorCode::ALL {
            assert!(protocol_status(*code).as_u16() >= 400, "{code:?}");
            assert!(code.number() < 200, "protocol numbers stay below the gateway's");
        }
        for (index, code) in GatewayCode::ALL.iter().enumerate() {
            assert_eq!(usize::from(code.number()), 200 + index, "numbered in order");
            assert!(code.status().as_u16() >= 400);
        }
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let mut problem = Problem::protocol(ProtocolErrorCode::RateLimited, "slow down");
        problem.retry_after_ms = Some(1_200);
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
    }
}
