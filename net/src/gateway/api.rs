//! The endpoints (docs/gateway.md, "Endpoints"): each one is a handler with its request and
//! response types, from which the OpenAPI 3.1 document at `/openapi.json` is generated
//! (utoipa), so the document cannot drift from the code.
//!
//! Every tenant endpoint is under `/v1/tenants/{tenant}/`: the bearer token's tenant (from the
//! server's handshake) must be `{tenant}`, else 403. Every POST carries an `Idempotency-Key`,
//! which becomes the operation id (for a reserve, the reservation id): the engine answers a
//! retry with the original result.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt as _;
use reservoir_engine::{Counters, ResultCode, IMPORT_ROWS_MAX};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::pool::Upstream;
use super::problem::{GatewayCode, Problem, ProblemDetails};
use super::{
    Deadline, Gateway, IMPORT_BODY_BYTES_MAX, IMPORT_BODY_ROWS_MAX, IMPORT_LINE_BYTES_MAX, JSON_BODY_BYTES_MAX,
};
use crate::import::{row_name_refusal, ImportFormat, ImportParser};
use crate::{Operation, OperationResult, ProtocolErrorCode, WireImportRow, WireLine};

/// A reservation's time to live when a reserve names none: 15 minutes.
pub const RESERVE_TTL_MS_DEFAULT: u64 = 15 * 60_000;
/// The header whose value becomes the operation id.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Between an import's key and its part number in the operation ids of an import of more
/// than `IMPORT_ROWS_MAX` rows; no client key contains it.
pub const IMPORT_PART_SEPARATOR: char = '#';

type Shared = Arc<Gateway>;

// ---------------------------------------------------------------------------------------------
// Request bodies.

/// `POST /v1/tenants/{tenant}/receipts`: units arrived at a location.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveRequest {
    pub sku: String,
    pub location: String,
    /// Units received (> 0).
    pub quantity: i64,
}

/// `POST /v1/tenants/{tenant}/picks`: commit (pick) units of one line of a reservation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PickRequest {
    pub reservation: String,
    pub sku: String,
    pub location: String,
    pub quantity: i64,
}

/// `POST /v1/tenants/{tenant}/counts`: a cycle count sets on_hand, compare-and-set when
/// `expected` is given (409 `expected_mismatch` if on_hand is not that now).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CountRequest {
    pub sku: String,
    pub location: String,
    /// The counted units.
    pub on_hand: i64,
    /// What the scanner believes on_hand is now.
    #[serde(default)]
    pub expected: Option<i64>,
}

/// `POST /v1/tenants/{tenant}/moves`: units from one location of a SKU to another.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    pub sku: String,
    pub from: String,
    pub to: String,
    pub quantity: i64,
}

/// One order line.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub sku: String,
    pub location: String,
    pub quantity: i64,
}

/// `POST /v1/tenants/{tenant}/reservations`: reserve an order's lines. The reservation id is
/// the `Idempotency-Key`; `reservation`, when given, must be the same.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    #[serde(default)]
    pub reservation: Option<String>,
    /// Time to live (1 s ..= 30 days); default 15 minutes.
    #[serde(default)]
    #[schema(default = 900000)]
    pub ttl_ms: Option<u64>,
    /// Reserve what is available per line instead of all or nothing.
    #[serde(default)]
    pub allow_partial: bool,
    pub lines: Vec<LineRequest>,
}

/// Commit or release: only these lines and quantities, or (no body, `{}`) everything still
/// reserved.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    #[serde(default)]
    pub lines: Option<Vec<LineRequest>>,
}

/// Moves a reservation's deadline to `ttl_ms` from now.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    pub ttl_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Response bodies.

/// The result of a mutation (receive, pick, count, move, reserve, commit, release, extend).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OperationReply {
    /// The protocol's operation: `receive`, `commit`, `set_on_hand`, `move`, `reserve`, ...
    pub operation: String,
    /// The result code's name (`ok`, `ok_partial`; a refusal is a problem instead).
    pub code: String,
    pub number: u16,
    /// The reservation's deadline after a reserve or extend (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// on_hand of the item after a receive or count (of the source after a move).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_hand: Option<i64>,
    /// Per line (reserve, commit, release, pick).
    pub lines: Vec<LineReply>,
    /// The LSN and epoch the reply reflects (also the `Reservoir-Lsn` and `Reservoir-Epoch`
    /// headers).
    pub lsn: u64,
    pub epoch: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LineReply {
    pub code: String,
    pub number: u16,
    pub requested: i64,
    pub applied: i64,
    /// Available on the line's item when it was decided.
    pub available: i64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StockLevels {
    pub on_hand: i64,
    pub reserved: i64,
    /// on_hand - reserved - safety_stock.
    pub available: i64,
    pub safety_stock: i64,
    pub backorder_limit: i64,
}

impl From<&Counters> for StockLevels {
    fn from(counters: &Counters) -> StockLevels {
        StockLevels {
            on_hand: counters.on_hand,
            reserved: counters.reserved,
            available: counters.available(),
            safety_stock: counters.safety_stock,
            backorder_limit: counters.backorder_limit,
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LocationStock {
    pub location: String,
    pub stock: StockLevels,
}

/// A SKU's stock per location and in total.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StockReply {
    pub sku: String,
    /// Locations the SKU has (`locations` lists at most `PAGE_ITEMS_MAX` of them).
    pub location_count: u32,
    pub total: StockLevels,
    pub locations: Vec<LocationStock>,
    pub lsn: u64,
    pub epoch: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReservationLineReply {
    pub sku: String,
    pub location: String,
    pub requested: i64,
    pub reserved: i64,
    pub committed: i64,
    pub released: i64,
}

/// One reservation with its lines and state.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReservationReply {
    pub reservation: String,
    /// `open`, `partially_committed`, `committed`, `released`, `expired` or `refused`.
    pub state: String,
    pub deadline_ms: u64,
    pub lines: Vec<ReservationLineReply>,
    pub lsn: u64,
    pub epoch: u64,
}

/// The result of one row of an import.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ImportRowReply {
    /// The row's 1-based line in the body.
    pub line: usize,
    pub sku: String,
    pub location: String,
    pub code: String,
    pub number: u16,
    /// on_hand after the row, when it was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_hand: Option<i64>,
}

impl ImportRowReply {
    fn new(line: usize, row: &WireImportRow, code: ResultCode, on_hand: Option<i64>) -> ImportRowReply {
        debug_assert!(on_hand.is_none() || code.is_ok(), "on_hand only for an applied row");
        ImportRowReply {
            line,
            sku: row.sku.clone(),
            location: row.location.clone(),
            code: code.name().to_owned(),
            number: code.number(),
            on_hand,
        }
    }
}

/// One import operation of an import body (`IMPORT_ROWS_MAX` rows each).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ImportPart {
    /// Its operation id: the `Idempotency-Key`, or `KEY#1`, `KEY#2`, ... for a body of more
    /// than one part.
    pub operation_id: String,
    pub code: String,
    pub number: u16,
    pub lsn: u64,
}

/// A result per row.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ImportReply {
    /// `ok` (every row), `ok_partial` (some rows), or the refusal's code.
    pub code: String,
    pub number: u16,
    pub rows: usize,
    /// Rows applied.
    pub applied: usize,
    pub results: Vec<ImportRowReply>,
    pub parts: Vec<ImportPart>,
    pub lsn: u64,
    pub epoch: u64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Health {
    /// `alive` (`/healthz`) or `ready` (`/readyz`).
    pub status: String,
}

// ---------------------------------------------------------------------------------------------
// The document and the router.

/// The problems every tenant endpoint may answer, for the document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Problems {
    /// A problem of the request: docs/gateway.md, "Errors and the status mapping"
    #[response(status = "4XX", content_type = "application/problem+json")]
    Request(ProblemDetails),
    /// No answer from a primary (503 with Retry-After: retry with the same Idempotency-Key)
    #[response(status = "5XX", content_type = "application/problem+json")]
    Upstream(ProblemDetails),
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A tenant's token (the one `reservoir tenant add` prints)"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Reservoir HTTP gateway",
        description = "HTTP/JSON for Reservoir's QUIC protocol: docs/gateway.md. Errors are RFC 9457 problems \
                       (application/problem+json) with Reservoir's stable codes."
    ),
    modifiers(&BearerAuth),
    components(schemas(ProblemDetails)),
    tags(
        (name = "scanner", description = "Warehouse scanner flows"),
        (name = "orders", description = "The order service's operations"),
        (name = "imports", description = "Bulk stock imports"),
        (name = "operations", description = "Health, readiness and this document"),
    )
)]
struct ApiDoc;

/// Every route, and the OpenAPI document generated from them.
pub fn routes() -> (Router<Shared>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(receive))
        .routes(routes!(pick))
        .routes(routes!(count))
        .routes(routes!(move_stock))
        .routes(routes!(stock))
        .routes(routes!(reserve))
        .routes(routes!(reservation))
        .routes(routes!(commit))
        .routes(routes!(release))
        .routes(routes!(extend))
        .routes(routes!(import))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi_json))
        .split_for_parts()
}

// ---------------------------------------------------------------------------------------------
// What every handler does: the token, the tenant, the key, the body, one operation.

fn deadline(parts: &Parts) -> Instant {
    parts.extensions.get::<Deadline>().map_or_else(Instant::now, |deadline| deadline.0)
}

fn path<T>(extracted: Result<Path<T>, PathRejection>) -> Result<T, Problem> {
    extracted
        .map(|Path(value)| value)
        .map_err(|rejection| Problem::gateway(GatewayCode::MalformedRequest, rejection.body_text()))
}

fn bearer(headers: &HeaderMap) -> Result<String, Problem> {
    let unauthenticated = |why: &str| Problem::protocol(ProtocolErrorCode::Unauthenticated, why);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthenticated("send Authorization: Bearer <the tenant's token>"))?;
    let text = value.to_str().map_err(|_| unauthenticated("the Authorization header is not visible ASCII"))?;
    match text.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            let token = token.trim();
            // No token is longer (the protocol's bound): unknown, not a failure to reach the
            // server (regression: it failed to encode upstream and was answered 502).
            if token.len() > crate::wire::TOKEN_BYTES_MAX {
                return Err(unauthenticated("no token is that long: this is not a Reservoir token"));
            }
            Ok(token.to_owned())
        }
        _ => Err(unauthenticated("the Authorization header is not `Bearer <token>`")),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let missing = || {
        Problem::gateway(
            GatewayCode::IdempotencyKeyMissing,
            "every POST needs an Idempotency-Key header: it becomes the operation id, so a retry returns the \
             original result",
        )
    };
    let value = headers.get(IDEMPOTENCY_KEY_HEADER).ok_or_else(missing)?;
    let text = value
        .to_str()
        .map_err(|_| Problem::gateway(GatewayCode::MalformedRequest, "the Idempotency-Key is not visible ASCII"))?
        .trim();
    // A structured-field string ("...") is the same key as its contents.
    let text = text.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')).unwrap_or(text);
    if text.is_empty() {
        return Err(missing());
    }
    // Reserved for the parts of a multi-part import (`KEY#1`, `KEY#2`, ...). Regression
    // (review): parts were `KEY-1`, `KEY-2`, so a client's own key `batch-2` was part 2 of the
    // import `batch`, which was then refused after part 1 was applied, and answered 200.
    if text.contains(IMPORT_PART_SEPARATOR) {
        return Err(Problem::gateway(
            GatewayCode::MalformedRequest,
            format!(
                "an Idempotency-Key may not contain {IMPORT_PART_SEPARATOR:?}: it names the parts of a large import"
            ),
        ));
    }
    Ok(text.to_owned())
}

/// The token's connection, checked against the URL's tenant.
struct Scope {
    gateway: Shared,
    upstream: Arc<Upstream>,
    token: String,
    deadline: Instant,
    /// The tenant's share of the gateway, held until the answer.
    _tenant_slot: super::TokenSlot,
}

async fn scope(gateway: &Shared, tenant: &str, parts: &Parts) -> Result<Scope, Problem> {
    let token = bearer(&parts.headers)?;
    let deadline = deadline(parts);
    let upstream = tokio::time::timeout_at(deadline.into(), gateway.pool.upstream(&token))
        .await
        .map_err(|_| {
            Problem::gateway(
                GatewayCode::UpstreamUnavailable,
                "no Reservoir server answered within the gateway's timeout: retry with the same Idempotency-Key",
            )
        })?
        .map_err(|error| Problem::from_net(&error))?;
    match &upstream.tenant {
        Some(name) if name == tenant => {}
        Some(_) => {
            return Err(Problem::protocol(
                ProtocolErrorCode::Forbidden,
                format!("the token does not reach tenant {tenant:?}"),
            ))
        }
        None => {
            return Err(Problem::protocol(
                ProtocolErrorCode::Forbidden,
                "the admin token runs no tenant operations: use a tenant's token",
            ))
        }
    }
    let tenant_slot = gateway.tenant_slot(tenant).ok_or_else(|| {
        Problem::protocol(
            ProtocolErrorCode::TooManyInFlight,
            format!(
                "tenant {tenant:?} has {} requests in flight at the gateway, with all its tokens",
                super::REQUESTS_IN_FLIGHT_PER_TOKEN_MAX
            ),
        )
    })?;
    Ok(Scope { gateway: gateway.clone(), upstream, token, deadline, _tenant_slot: tenant_slot })
}

/// The answer to one operation: its result and the reply's LSN and epoch.
struct Answer {
    result: OperationResult,
    lsn: u64,
    epoch: u64,
    /// The node that answered is not a primary (a standby, or a fenced former primary): the
    /// answer is read-only and may lag the primary.
    read_only: bool,
}

/// Adds `Reservoir-Read-Only: true` to a lookup answered by a node that is not the primary.
fn mark_read_only(mut response: Response, read_only: bool) -> Response {
    if read_only {
        response.headers_mut().insert(super::READ_ONLY_HEADER, axum::http::HeaderValue::from_static("true"));
    }
    response
}

impl Scope {
    async fn run(&self, operation: Operation) -> Result<Answer, Problem> {
        let request = self.upstream.client.request(vec![operation]);
        let reply = match tokio::time::timeout_at(self.deadline.into(), request).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => {
                if let crate::NetError::Refused(frame) = &error {
                    if frame.code == ProtocolErrorCode::Unauthenticated {
                        // Revoked since the connection was made: the next request shakes hands again.
                        self.gateway.pool.forget(&self.token);
                    }
                }
                return Err(Problem::from_net(&error));
            }
            Err(_) => {
                return Err(Problem::gateway(
                    GatewayCode::UpstreamTimeout,
                    "the server did not answer within the gateway's timeout: retry with the same Idempotency-Key",
                ))
            }
        };
        let (lsn, epoch) = (reply.lsn, reply.epoch);
        let mut results = reply.results;
        if results.len() != 1 {
            return Err(Problem::gateway(
                GatewayCode::BadGateway,
                "the server answered one operation with another count",
            ));
        }
        let result = results.pop().expect("one");
        // The session that answered is the client's current one (it reconnects only on a
        // failure, which this request did not have).
        let read_only = match self.upstream.client.hello().await {
            Ok(hello) => hello.node != crate::NodeRole::Primary,
            Err(_) => false,
        };
        Ok(Answer { result, lsn, epoch, read_only })
    }
}

/// A JSON body with the `Reservoir-Lsn` and `Reservoir-Epoch` of the reply it reflects.
fn json_response(status: StatusCode, body: &impl Serialize, lsn: u64, epoch: u64) -> Response {
    let mut response = json_body_response(status, body);
    super::insert_position(response.headers_mut(), lsn, epoch);
    response
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads a JSON body of at most `JSON_BODY_BYTES_MAX` bytes: 415 for another media type, 413
/// when larger, 400 when it is not JSON, 422 when it is JSON of the wrong shape. With
/// `empty_ok`, no body at all reads as `{}`.
async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body, empty_ok: bool) -> Result<T, Problem> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        if !is_json(content_type.to_str().unwrap_or_default()) {
            return Err(Problem::gateway(GatewayCode::UnsupportedMediaType, "send Content-Type: application/json"));
        }
    }
    let bytes = read_limited(body, JSON_BODY_BYTES_MAX).await?;
    let bytes: &[u8] = if empty_ok && bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
    serde_json::from_slice(bytes).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => Problem::gateway(GatewayCode::InvalidBody, error.to_string()),
        _ => Problem::gateway(GatewayCode::MalformedRequest, format!("the body is not JSON: {error}")),
    })
}

fn too_large(bytes_max: usize) -> Problem {
    Problem::gateway(GatewayCode::BodyTooLarge, format!("the body is larger than {bytes_max} bytes"))
}

async fn read_limited(body: Body, bytes_max: usize) -> Result<Vec<u8>, Problem> {
    match http_body_util::Limited::new(body, bytes_max).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large(bytes_max)),
        Err(_) => Err(Problem::gateway(GatewayCode::MalformedRequest, "the body could not be read")),
    }
}

fn content_length_over(headers: &HeaderMap, bytes_max: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok())
        .is_some_and(|length| length > bytes_max as u64)
}

fn wire_lines(lines: Vec<LineRequest>) -> Vec<WireLine> {
    lines.into_iter().map(|line| WireLine { sku: line.sku, location: line.location, quantity: line.quantity }).collect()
}

fn operation_reply(answer: &Answer) -> OperationReply {
    let (kind, reply) = match &answer.result {
        OperationResult::Reply { kind, reply } => (*kind, reply),
        other => unreachable!("a mutation answers an engine reply, not {other:?}"),
    };
    let deadline_ms = matches!(kind.name(), "reserve" | "extend").then_some(reply.deadline_ms);
    let on_hand = matches!(kind.name(), "receive" | "adjust" | "set_on_hand" | "move").then_some(reply.on_hand);
    OperationReply {
        operation: kind.name().to_owned(),
        code: reply.code.name().to_owned(),
        number: reply.code.number(),
        deadline_ms: deadline_ms.filter(|_| reply.code.is_ok()),
        on_hand: on_hand.filter(|_| reply.code.is_ok()),
        lines: reply
            .lines
            .iter()
            .map(|line| LineReply {
                code: line.code.name().to_owned(),
                number: line.code.number(),
                requested: line.requested,
                applied: line.applied,
                available: line.available,
            })
            .collect(),
        lsn: answer.lsn,
        epoch: answer.epoch,
    }
}

/// A mutation's answer: 200 with its result, or the refusal as a problem (with the result).
fn mutation_response(answer: Result<Answer, Problem>) -> Response {
    let answer = match answer {
        Ok(answer) => answer,
        Err(problem) => return problem.into_response(),
    };
    if !matches!(answer.result, OperationResult::Reply { .. }) {
        return Problem::gateway(GatewayCode::BadGateway, "the server answered a mutation with a query result")
            .into_response();
    }
    let body = operation_reply(&answer);
    let code = answer.result.code();
    if code.is_ok() {
        return json_response(StatusCode::OK, &body, answer.lsn, answer.epoch);
    }
    let result = serde_json::to_value(&body).ok();
    Problem::refused(code, result, answer.lsn, answer.epoch).into_response()
}

/// The common path of a JSON mutation: scope, key, body, one operation.
async fn mutate<T: DeserializeOwned>(
    gateway: Shared,
    tenant: Result<String, Problem>,
    request: Request,
    empty_ok: bool,
    make: impl FnOnce(String, T) -> Result<Operation, Problem>,
) -> Response {
    let outcome = async {
        let tenant = tenant?;
        let (parts, body) = request.into_parts();
        let scope = scope(&gateway, &tenant, &parts).await?;
        let key = idempotency_key(&parts.headers)?;
        if content_length_over(&parts.headers, JSON_BODY_BYTES_MAX) {
            return Err(too_large(JSON_BODY_BYTES_MAX));
        }
        let body: T = json_body(&parts.headers, body, empty_ok).await?;
        let operation = make(key, body)?;
        scope.run(operation).await
    };
    mutation_response(outcome.await)
}

// ---------------------------------------------------------------------------------------------
// Scanner flows.

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/receipts", tag = "scanner",
    summary = "Receive units at a location",
    params(("tenant" = String, Path), ("Idempotency-Key" = String, Header, description = "becomes the operation id")),
    request_body = ReceiveRequest,
    responses(
        (status = 200, description = "received", body = OperationReply),
        Problems,
    ),
    security(("bearer" = []))
)]
async fn receive(
    State(gateway): State<Shared>,
    tenant: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    mutate(gateway, path(tenant), request, false, |key, body: ReceiveRequest| {
        Ok(Operation::Receive { operation: key, sku: body.sku, location: body.location, quantity: body.quantity })
    })
    .await
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/picks", tag = "scanner",
    summary = "Pick: commit units of one line of a reservation",
    params(("tenant" = String, Path), ("Idempotency-Key" = String, Header, description = "becomes the operation id")),
    request_body = PickRequest,
    responses(
        (status = 200, description = "committed", body = OperationReply),
        Problems,
    ),
    security(("bearer" = []))
)]
async fn pick(
    State(gateway): State<Shared>,
    tenant: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    mutate(gateway, path(tenant), request, false, |key, body: PickRequest| {
        let line = WireLine { sku: body.sku, location: body.location, quantity: body.quantity };
        Ok(Operation::Commit { operation: key, reservation: body.reservation, lines: Some(vec![line]) })
    })
    .await
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/counts", tag = "scanner",
    summary = "Count: set on_hand, compare-and-set with the expected value",
    params(("tenant" = String, Path), ("Idempotency-Key" = String, Header, description = "becomes the operation id")),
    request_body = CountRequest,
    responses(
        (status = 200, description = "set", body = OperationReply),
        Problems,
    ),
    security(("bearer" = []))
)]
async fn count(
    State(gateway): State<Shared>,
    tenant: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    mutate(gateway, path(tenant), request, false, |key, body: CountRequest| {
        Ok(Operation::SetOnHand {
            operation: key,
            sku: body.sku,
            location: body.location,
            expected: body.expected,
            on_hand: body.on_hand,
        })
    })
    .await
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/moves", tag = "scanner",
    summary = "Move units between two locations of a SKU",
    params(("tenant" = String, Path), ("Idempotency-Key" = String, Header, description = "becomes the operation id")),
    request_body = MoveRequest,
    responses(
        (status = 200, description = "moved", body = OperationReply),
        Problems,
    ),
    security(("bearer" = []))
)]
async fn move_stock(
    State(gateway): State<Shared>,
    tenant: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    mutate(gateway, path(tenant), request, false, |key, body: MoveRequest| {
        Ok(Operation::Move { operation: key, sku: body.sku, from: body.from, to: body.to, quantity: body.quantity })
    })
    .await
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/stock/{sku}", tag = "scanner",
    summary = "A SKU's stock per location and in total",
    params(("tenant" = String, Path), ("sku" = String, Path)),
    responses(
        (status = 200, description = "the stock", body = StockReply),
        Problems,
    ),
    security(("bearer" = []))
)]
async fn stock(
    State(gateway): State<Shared>,
    names: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    let outcome = async {
        let (tenant, sku) = path(names)?;
        let (parts, _) = request.into_parts();
        let scope = scope(&gateway, &tenant, &parts).await?;
        let answer = scope.run(Operation::GetSku { sku: sku.clone() }).await?;
        match &answer.result {
            OperationResult::Sku(Ok(summary)) => Ok(json_response(
                StatusCode::OK,
                &StockReply {
                    sku,
                    location_count: summary.location_count,
                    total: StockLevels::from(&summary.total),
                    locations: summary
                        .locations
                        .iter()
                        .map(|item| LocationStock {
                            location: item.location.clone(),
                            stock: StockLevels::from(&item.counters),
                        })
                        .collect(),
                    lsn: answer.lsn,
                    epoch: answer.epoch,
                },
                answer.lsn,
                answer.epoch,
            ))
            .map(|response| mark_read_only(response, answer.read_only)),
            other => Err(query_refusal(other, &answer)),
        }
    };
    outcome.await.unwrap_or_else(IntoResponse::into_response)
}

fn query_refusal(result: &OperationResult, answer: &Answer) -> Problem {
    let code = result.code();
    if code.is_ok() {
        return Problem::gateway(GatewayCode::BadGateway, "the server answered a query with another result");
    }
    Problem::refused(code, None, answer.lsn, answer.epoch)
}

#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/reservations/{reservation}", tag = "orders",
    summary = "One reservation with its lines and state",
    params(("tenant" = String, Path), ("reservation" = String, Path)),
    responses(
        (status = 200, description = "the reservation", body = ReservationReply),
        Problems,
    ),
    security(("bearer" = []))
)]
async fn reservation(
    State(gateway): State<Shared>,
    names: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    let outcome = async {
        let (tenant, reservation) = path(names)?;
        let (parts, _) = request.into_parts();
        let scope = scope(&gateway, &tenant, &parts).await?;
        let answer = scope.run(Operation::GetReservation { reservation }).await?;
        match &answer.result {
            OperationResult::Reservation(Ok(view)) => Ok(json_response(
                StatusCode::OK,
                &ReservationReply {
                    reservation: view.reservation.clone(),
                    state: view.state.name().to_owned(),
                    deadline_ms: view.deadline_ms,
                    lines: view
                        .lines
                        .iter()
                        .map(|line| ReservationLineReply {
                            sku: line.sku.clone(),
                            location: line.location.clone(),
                            requested: line.requested,
                            reserved: line.reserved,
                            committed: line.committed,
                            released: line.released,
                        })
                        .collect(),
                    lsn: answer.lsn,
                    epoch: answer.epoch,
                },
                answer.lsn,
                answer.epoch,
            ))
            .map(|response| mark_read_only(response, answer.read_only)),
            other => Err(query_refusal(other, &answer)),
        }
    };
    outcome.await.unwrap_or_else(IntoResponse::into_response)
}

// ---------------------------------------------------------------------------------------------
// The order service's operations.

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/reservations", tag = "orders",
    summary = "Reserve an order's lines (all or nothing unless allow_partial)",
    params(("tenant" = String, Path), ("Idempotency-Key" = String, Header, description = "the reservation id")),
    request_body = ReserveRequest,
    responses(
        (status = 200, description = "reserved (ok or ok_partial)", body = OperationReply),
        Problems,
    ),
    security(("bearer" = []))
)]
async fn reserve(
    State(gateway): State<Shared>,
    tenant: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    mutate(gateway, path(tenant), request, false, |key, body: ReserveRequest| {
        if body.reservation.as_ref().is_some_and(|reservation| *reservation != key) {
            return Err(Problem::gateway(
                GatewayCode::IdempotencyKeyMismatch,
                "a reserve's Idempotency-Key is its reservation id: the body's reservation must be the same",
            ));
        }
        Ok(Operation::Reserve {
            reservation: key,
            ttl_ms: body.ttl_ms.unwrap_or(RESERVE_TTL_MS_DEFAULT),
            allow_partial: body.allow_partial,
            lines: wire_lines(body.lines),
        })
    })
    .await
}

fn settle(commit: bool) -> impl FnOnce(String, String, SettleRequest) -> Result<Operation, Problem> {
    move |key, reservation, body| {
        let lines = body.lines.map(wire_lines);
        Ok(if commit {
            Operation::Commit { operation: key, reservation, lines }
        } else {
            Operation::Release { operation: key, reservation, lines }
        })
    }
}

async fn settle_reservation(
    gateway: Shared,
    names: Result<Path<(String, String)>, PathRejection>,
    request: Request,
    commit: bool,
) -> Response {
    let names = path(names);
    let reservation = names.as_ref().map(|(_, reservation)| reservation.clone()).unwrap_or_default();
    let tenant = names.map(|(tenant, _)| tenant);
    mutate(gateway, tenant, request, true, move |key, body: SettleRequest| settle(commit)(key, reservation, body)).await
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/reservations/{reservation}/commit", tag = "orders",
    summary = "Commit (ship) a reservation, whole (no body) or some lines",
    params(("tenant" = String, Path), ("reservation" = String, Path), ("Idempotency-Key" = String, Header, description = "becomes the operation id")),
    request_body(content = SettleRequest, description = "optional: no body commits everything still reserved"),
    responses(
        (status = 200, description = "committed", body = OperationReply),
        Problems,
    ),
    security(("bearer" = []))
)]
async fn commit(
    State(gateway): State<Shared>,
    names: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    settle_reservation(gateway, names, request, true).await
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/reservations/{reservation}/release", tag = "orders",
    summary = "Release a reservation, whole (no body) or some lines",
    params(("tenant" = String, Path), ("reservation" = String, Path), ("Idempotency-Key" = String, Header, description = "becomes the operation id")),
    request_body(content = SettleRequest, description = "optional: no body releases everything still reserved"),
    responses(
        (status = 200, description = "released", body = OperationReply),
        Problems,
    ),
    security(("bearer" = []))
)]
async fn release(
    State(gateway): State<Shared>,
    names: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    settle_reservation(gateway, names, request, false).await
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/reservations/{reservation}/extend", tag = "orders",
    summary = "Move a reservation's deadline to ttl_ms from now",
    params(("tenant" = String, Path), ("reservation" = String, Path), ("Idempotency-Key" = String, Header, description = "becomes the operation id")),
    request_body = ExtendRequest,
    responses(
        (status = 200, description = "extended", body = OperationReply),
        Problems,
    ),
    security(("bearer" = []))
)]
async fn extend(
    State(gateway): State<Shared>,
    names: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    let names = path(names);
    let reservation = names.as_ref().map(|(_, reservation)| reservation.clone()).unwrap_or_default();
    let tenant = names.map(|(tenant, _)| tenant);
    mutate(gateway, tenant, request, false, move |key, body: ExtendRequest| {
        Ok(Operation::Extend { operation: key, reservation, ttl_ms: body.ttl_ms })
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Imports.

fn import_format(headers: &HeaderMap) -> Result<ImportFormat, Problem> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(ImportFormat::Detect) };
    let essence = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.as_str() {
        "text/csv" => Ok(ImportFormat::Csv),
        "application/x-ndjson" | "application/jsonl" | "application/json-lines" | "application/jsonlines" => {
            Ok(ImportFormat::JsonLines)
        }
        _ => Err(Problem::gateway(
            GatewayCode::UnsupportedMediaType,
            "an import is text/csv or application/x-ndjson (JSON lines)",
        )),
    }
}

/// Reads an import body a chunk at a time, parsing each line as it completes: the body is
/// never held whole, only its rows (at most `IMPORT_BODY_ROWS_MAX`).
async fn read_import(body: Body, format: ImportFormat) -> Result<Vec<(usize, WireImportRow)>, Problem> {
    fn feed(parser: &mut ImportParser, rows: &mut Vec<(usize, WireImportRow)>, line: &[u8]) -> Result<(), Problem> {
        let invalid = |line: usize, why: String| {
            let mut problem = Problem::gateway(GatewayCode::InvalidImport, why);
            problem.line = Some(line);
            problem
        };
        let text =
            std::str::from_utf8(line).map_err(|_| invalid(parser.lines_read() + 1, "the line is not UTF-8".into()))?;
        match parser.line(text) {
            Ok(Some(row)) => rows.push((parser.lines_read(), row)),
            Ok(None) => {}
            Err(error) => return Err(invalid(error.line, error.to_string())),
        }
        if rows.len() > IMPORT_BODY_ROWS_MAX {
            return Err(Problem::gateway(
                GatewayCode::BodyTooLarge,
                format!("an import body has at most {IMPORT_BODY_ROWS_MAX} rows"),
            ));
        }
        Ok(())
    }
    let mut parser = ImportParser::new(format);
    let mut rows = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut bytes_read = 0usize;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Problem::gateway(GatewayCode::MalformedRequest, "the body could not be read"))?;
        let Ok(data) = frame.into_data() else { continue };
        bytes_read += data.len();
        if bytes_read > IMPORT_BODY_BYTES_MAX {
            return Err(too_large(IMPORT_BODY_BYTES_MAX));
        }
        // What `pending` held before holds no line end: only the new bytes are searched, so a
        // body costs one pass however it is cut. Regression (review): the partial line was
        // searched again for every frame, quadratic in a line sent a byte at a time.
        let mut searched = pending.len();
        pending.extend_from_slice(&data);
        let mut start = 0;
        // Every line is held to the limit, whole or not (regression, review, eleventh session:
        // only the unfinished line left at the end of a chunk was, so a long line that came
        // whole in one chunk was parsed and answered per row).
        let line_too_long = |parser: &ImportParser| {
            let mut problem = Problem::gateway(
                GatewayCode::InvalidImport,
                format!("a line is longer than {IMPORT_LINE_BYTES_MAX} bytes"),
            );
            problem.line = Some(parser.lines_read() + 1);
            problem
        };
        while let Some(offset) = pending[searched..].iter().position(|&byte| byte == b'\n') {
            let end = searched + offset;
            if end - start > IMPORT_LINE_BYTES_MAX {
                return Err(line_too_long(&parser));
            }
            feed(&mut parser, &mut rows, &pending[start..end])?;
            start = end + 1;
            searched = start;
        }
        debug_assert!(!pending[start..].contains(&b'\n'), "every complete line was fed");
        pending.drain(..start);
        if pending.len() > IMPORT_LINE_BYTES_MAX {
            return Err(line_too_long(&parser));
        }
    }
    if !pending.is_empty() {
        assert!(pending.len() <= IMPORT_LINE_BYTES_MAX, "checked after every chunk");
        feed(&mut parser, &mut rows, &pending)?;
    }
    debug_assert!(rows.len() <= IMPORT_BODY_ROWS_MAX);
    Ok(rows)
}

#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/imports", tag = "imports",
    summary = "Import stock: a CSV or JSON-lines body streamed through, a result per row",
    params(("tenant" = String, Path), ("Idempotency-Key" = String, Header, description = "the operation id (KEY#1, KEY#2, ... for a body over 10,000 rows; no `#` in a key)")),
    request_body(content = String, content_type = "text/csv", description = "CSV with a header (sku,location,on_hand[,safety_stock,backorder_limit]), or JSON lines (Content-Type: application/x-ndjson) with those fields"),
    responses(
        (status = 200, description = "imported (ok, or ok_partial with per-row codes)", body = ImportReply),
        Problems,
    ),
    security(("bearer" = []))
)]
async fn import(
    State(gateway): State<Shared>,
    tenant: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let outcome = async {
        let tenant = path(tenant)?;
        let (parts, body) = request.into_parts();
        let scope = scope(&gateway, &tenant, &parts).await?;
        let key = idempotency_key(&parts.headers)?;
        let format = import_format(&parts.headers)?;
        // Before the body is read: a tenant's share, then the gateway's.
        let busy = |what: String| Problem::protocol(ProtocolErrorCode::TooManyInFlight, what);
        let _tenant_import = gateway.tenant_import_slot(&tenant).ok_or_else(|| {
            busy(format!(
                "tenant {tenant:?} has {} imports in flight at the gateway",
                super::IMPORTS_IN_FLIGHT_PER_TENANT_MAX
            ))
        })?;
        let _import = gateway
            .imports_in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy(format!("the gateway reads {} imports at once", super::IMPORTS_IN_FLIGHT_MAX)))?;
        if content_length_over(&parts.headers, IMPORT_BODY_BYTES_MAX) {
            return Err(too_large(IMPORT_BODY_BYTES_MAX));
        }
        let rows = read_import(body, format).await?;
        if rows.is_empty() {
            return Err(Problem::gateway(GatewayCode::InvalidImport, "the body has no rows"));
        }
        run_import(&scope, &key, rows).await
    };
    outcome.await.unwrap_or_else(IntoResponse::into_response)
}

async fn run_import(scope: &Scope, key: &str, rows: Vec<(usize, WireImportRow)>) -> Result<Response, Problem> {
    let parts: Vec<&[(usize, WireImportRow)]> = rows.chunks(IMPORT_ROWS_MAX).collect();
    let single = parts.len() == 1;
    // Every part's id must be a name the server takes, checked before the first part is sent.
    // Regression (review): a key of 61-64 bytes named parts 1-9 and not part 10 (65 bytes):
    // nine parts applied, the tenth refused row by row, 200 `ok_partial`, and no retry could
    // ever finish it.
    let last_part_id_bytes = key.len() + IMPORT_PART_SEPARATOR.len_utf8() + parts.len().to_string().len();
    if !single && last_part_id_bytes > reservoir_engine::NAME_BYTES_MAX {
        return Err(Problem::gateway(
            GatewayCode::MalformedRequest,
            format!(
                "an import of {} parts names them KEY{IMPORT_PART_SEPARATOR}1 .. KEY{IMPORT_PART_SEPARATOR}{}: this \
                 Idempotency-Key of {} bytes makes part ids of up to {last_part_id_bytes} bytes, past {}",
                parts.len(),
                parts.len(),
                key.len(),
                reservoir_engine::NAME_BYTES_MAX
            ),
        ));
    }
    let mut reply = ImportReply {
        code: String::new(),
        number: 0,
        rows: rows.len(),
        applied: 0,
        results: Vec::with_capacity(rows.len()),
        parts: Vec::with_capacity(parts.len()),
        lsn: 0,
        epoch: 0,
    };
    let mut first_refusal = None;
    for (index, part) in parts.into_iter().enumerate() {
        let operation_id = if single { key.to_owned() } else { format!("{key}{IMPORT_PART_SEPARATOR}{}", index + 1) };
        // Rows whose names the server refuses are answered here, row by row; the part carries
        // the others (its cut stays where it was, so a part the server remembers is the same
        // part on a retry). Regression (review): one such row refused its whole part of 10,000
        // (a name of 256 bytes or more could not even be encoded: 422 for the part).
        let refusals: Vec<Option<ResultCode>> = part.iter().map(|(_, row)| row_name_refusal(row)).collect();
        let sent: Vec<WireImportRow> = part
            .iter()
            .zip(&refusals)
            .filter(|(_, refusal)| refusal.is_none())
            .map(|((_, row), _)| row.clone())
            .collect();
        if sent.is_empty() {
            for ((line, row), refusal) in part.iter().zip(&refusals) {
                let code = refusal.expect("every row of this part refused");
                first_refusal.get_or_insert(code);
                reply.results.push(ImportRowReply::new(*line, row, code, None));
            }
            continue;
        }
        let sent_count = sent.len();
        let operation = Operation::Import { operation: operation_id.clone(), rows: sent };
        let answer = scope.run(operation).await.map_err(|mut problem| {
            if index > 0 {
                problem.detail = format!(
                    "{} (parts 1..={index} of the import were answered; a retry with the same Idempotency-Key \
                     returns their results and goes on)",
                    problem.detail
                );
            }
            problem
        })?;
        let OperationResult::Reply { reply: engine_reply, .. } = &answer.result else {
            return Err(Problem::gateway(GatewayCode::BadGateway, "the server answered an import with a query result"));
        };
        let code = engine_reply.code;
        if !code.is_ok() && first_refusal.is_none() {
            first_refusal = Some(code);
        }
        let mut position = 0;
        for ((line, row), refusal) in part.iter().zip(&refusals) {
            // A part refused as a whole (a bad operation id, too many rows) has no row results.
            let (row_code, on_hand) = match refusal {
                Some(refusal) => {
                    first_refusal.get_or_insert(*refusal);
                    (*refusal, None)
                }
                None => {
                    position += 1;
                    match engine_reply.lines.get(position - 1) {
                        Some(result) => (result.code, result.code.is_ok().then_some(result.applied)),
                        None => (code, None),
                    }
                }
            };
            if row_code.is_ok() {
                reply.applied += 1;
            }
            reply.results.push(ImportRowReply::new(*line, row, row_code, on_hand));
        }
        assert_eq!(position, sent_count, "every row sent has its place in the part's answer");
        reply.parts.push(ImportPart {
            operation_id,
            code: code.name().to_owned(),
            number: code.number(),
            lsn: answer.lsn,
        });
        reply.lsn = answer.lsn;
        reply.epoch = answer.epoch;
    }
    debug_assert_eq!(reply.results.len(), reply.rows);
    let code = if reply.applied == reply.rows {
        ResultCode::Ok
    } else if reply.applied > 0 {
        ResultCode::OkPartial
    } else {
        first_refusal.unwrap_or(ResultCode::EmptyLines)
    };
    reply.code = code.name().to_owned();
    reply.number = code.number();
    if code.is_ok() {
        return Ok(json_response(StatusCode::OK, &reply, reply.lsn, reply.epoch));
    }
    let (lsn, epoch) = (reply.lsn, reply.epoch);
    Err(Problem::refused(code, serde_json::to_value(&reply).ok(), lsn, epoch))
}

// ---------------------------------------------------------------------------------------------
// Operations.

#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    summary = "The process is alive",
    responses((status = 200, description = "alive", body = Health))
)]
async fn healthz() -> Response {
    json_body_response(StatusCode::OK, &Health { status: "alive".into() })
}

#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    summary = "An upstream server answers a handshake",
    responses(
        (status = 200, description = "ready", body = Health),
        (status = 503, description = "no upstream answers", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(gateway): State<Shared>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let probe_deadline = Instant::now() + std::time::Duration::from_millis(super::READY_PROBE_TIMEOUT_MS);
    let deadline = probe_deadline.min(deadline(&parts));
    match tokio::time::timeout_at(deadline.into(), gateway.pool.probe()).await {
        Ok(Ok(())) => json_body_response(StatusCode::OK, &Health { status: "ready".into() }),
        Ok(Err(error)) => Problem::from_net(&error).into_response(),
        Err(_) => Problem::gateway(GatewayCode::UpstreamUnavailable, "no upstream answered a handshake in time")
            .into_response(),
    }
}

#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    summary = "This document (OpenAPI 3.1)",
    responses((status = 200, description = "the document", content_type = "application/json"))
)]
async fn openapi_json(State(gateway): State<Shared>) -> Response {
    let mut response = gateway.openapi_json.clone().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_body_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) async fn not_found() -> Response {
    Problem::gateway(GatewayCode::NotFound, "no such endpoint: GET /openapi.json lists them").into_response()
}

pub(super) async fn method_not_allowed() -> Response {
    Problem::gateway(GatewayCode::MethodNotAllowed, "the endpoint does not take this method: see /openapi.json")
        .into_response()
}
