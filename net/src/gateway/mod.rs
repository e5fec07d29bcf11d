//! The HTTP/JSON gateway (issue #6, docs/gateway.md): handheld scanners and services without a
//! QUIC client reach Reservoir over HTTP. It translates each request into one operation of the
//! QUIC protocol, sent with the Rust client library, and the reply into JSON. It keeps no state
//! of its own (tenants, idempotency and stock are the server's), so any number of gateways can
//! run side by side.
//!
//! - `api`: the endpoints under `/v1`, their request and response types (which the OpenAPI
//!   document at `/openapi.json` is generated from), `/healthz` and `/readyz`.
//! - `problem`: RFC 9457 problem details and the status mapping table.
//! - `pool`: upstream connections, one per bearer token, bounded and swept.
//!
//! Every request has a deadline (`request_timeout_ms`, 10 s by default): past it the answer is
//! a problem (503 `upstream_timeout` or 408 `request_timeout`), never a hang.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::{oneshot, Semaphore};

use crate::NetError;

pub mod api;
pub mod pool;
pub mod problem;

pub use problem::{GatewayCode, Problem};

/// How long one HTTP request may take, by default (upstream retries included).
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Requests the gateway serves at once; more are answered 503 `too_many_in_flight` at once.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 4_096;
/// Requests with one bearer token (one tenant's scanners, usually: they share its token) the
/// gateway serves at once: a flood from one tenant leaves the rest of
/// [`REQUESTS_IN_FLIGHT_MAX`] to the others. Regression (found by audit): the cap was global
/// only, so one tenant holding 4,096 slow requests shut every other tenant out.
pub const REQUESTS_IN_FLIGHT_PER_TOKEN_MAX: usize = 256;
/// Import bodies the gateway reads and sends at once, over all tenants, and per tenant: each
/// holds up to `IMPORT_BODY_BYTES_MAX` of rows several times over (parsed, per part, results,
/// the reply), ~150-250 MB at the largest. More are 503 `too_many_in_flight` at once.
/// Regression (review): only the requests in flight were capped, and 256 large imports of one
/// token could take the gateway's memory.
pub const IMPORTS_IN_FLIGHT_MAX: usize = 8;
pub const IMPORTS_IN_FLIGHT_PER_TENANT_MAX: usize = 2;
/// Bytes of a JSON request body.
pub const JSON_BODY_BYTES_MAX: usize = 64 << 10;
/// Bytes of an import body (CSV or JSON lines).
pub const IMPORT_BODY_BYTES_MAX: usize = 32 << 20;
/// Rows of one import body: 10 import operations of `IMPORT_ROWS_MAX` rows.
pub const IMPORT_BODY_ROWS_MAX: usize = 10 * reservoir_engine::IMPORT_ROWS_MAX;
/// Bytes of one line of an import body.
pub const IMPORT_LINE_BYTES_MAX: usize = 4_096;
/// HTTP connections the gateway holds open at once (`GatewayOptions::connections_max`). A
/// connection past it closes the least recently active one (gracefully: after the request it
/// serves, if any) and waits up to `CONNECTION_ROOM_WAIT_MS` for its place. Each holds a task
/// and up to hyper's ~400 KB header buffer.
pub const CONNECTIONS_MAX: usize = 8_192;
/// How long a new connection past `connections_max` waits for the one it closed.
pub const CONNECTION_ROOM_WAIT_MS: u64 = 1_000;
/// New connections waiting at once for room; past it, one is closed at once.
pub const CONNECTIONS_WAITING_MAX: usize = 64;
/// How long a connection may take to send a request's headers, counted from when the gateway
/// waits for them: it also closes a keep-alive connection idle that long. Regression (review):
/// `axum::serve` gives hyper no timer, so a client sending a header a byte at a time, or
/// opening connections and sending nothing, held them forever, before any in-flight cap.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// How long one connection lives: past it the gateway closes it after its request in flight
/// (a client then reconnects), and a request-timeout later closes it whatever it does (a
/// client that never reads its answer).
pub const CONNECTION_LIFETIME_MS_MAX: u64 = 600_000;
/// How long `/readyz` waits for an upstream's handshake.
pub const READY_PROBE_TIMEOUT_MS: u64 = 2_000;
/// Headers of every answer the server gave: the LSN and epoch the reply reflects.
pub const LSN_HEADER: &str = "reservoir-lsn";
pub const EPOCH_HEADER: &str = "reservoir-epoch";
/// `true` on a lookup answered by a node that is not the primary (a hot standby while no
/// primary is reachable): the answer is read-only and may lag (docs/gateway.md, "Failover").
pub const READ_ONLY_HEADER: &str = "reservoir-read-only";

/// What `reservoir gateway` is configured with.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// Where to listen for HTTP (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// `host:port` of every upstream node (a primary and its standbys), in order.
    pub upstreams: Vec<String>,
    /// PEM of the CA that signed the servers' certificates.
    pub ca_pem: Vec<u8>,
    /// The TLS name to check the servers' certificates against; default: each host.
    pub server_name: Option<String>,
    pub request_timeout_ms: u64,
    /// Upstream connections (tokens) kept at once.
    pub pool_connections_max: usize,
    /// HTTP connections held open at once ([`CONNECTIONS_MAX`]).
    pub connections_max: usize,
}

impl GatewayOptions {
    /// The embedded defaults: listen on `127.0.0.1:8080`, upstream `127.0.0.1:7878`.
    pub fn new(ca_pem: Vec<u8>) -> GatewayOptions {
        GatewayOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstreams: vec!["127.0.0.1:7878".into()],
            ca_pem,
            server_name: None,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            pool_connections_max: pool::POOL_CONNECTIONS_MAX,
            connections_max: CONNECTIONS_MAX,
        }
    }
}

/// What every handler shares.
pub struct Gateway {
    pool: pool::Pool,
    request_timeout: Duration,
    in_flight: Arc<Semaphore>,
    pub(crate) imports_in_flight: Arc<Semaphore>,
    /// Requests in flight per bearer token (keyed by the hash of [`token_key`]; an entry lives
    /// while its count is above zero, so at most `REQUESTS_IN_FLIGHT_MAX` entries).
    in_flight_per_token: parking_lot::Mutex<std::collections::HashMap<u64, usize>>,
    token_hasher: std::collections::hash_map::RandomState,
    openapi_json: String,
}

/// The token of an `Authorization` header as the handlers read it: after a `Bearer` scheme in
/// any case, spaces trimmed; a header of another form is its own key (it is refused 401).
fn token_key(authorization: &[u8]) -> &[u8] {
    let trimmed = authorization.trim_ascii();
    match trimmed.iter().position(|&byte| byte == b' ') {
        Some(space) if trimmed[..space].eq_ignore_ascii_case(b"bearer") => trimmed[space..].trim_ascii(),
        _ => trimmed,
    }
}

/// One request's place among its token's requests in flight; given back when dropped.
pub(crate) struct TokenSlot {
    gateway: Arc<Gateway>,
    key: u64,
}

impl Drop for TokenSlot {
    fn drop(&mut self) {
        let mut counts = self.gateway.in_flight_per_token.lock();
        let count = counts.get_mut(&self.key).expect("a slot's token is counted");
        assert!(*count > 0 && *count <= REQUESTS_IN_FLIGHT_PER_TOKEN_MAX);
        *count -= 1;
        if *count == 0 {
            counts.remove(&self.key);
        }
    }
}

impl Gateway {
    /// A slot for a request with this token (see [`token_key`]), or `None` when that token
    /// has [`REQUESTS_IN_FLIGHT_PER_TOKEN_MAX`] in flight.
    fn token_slot(self: &Arc<Self>, token: &[u8]) -> Option<TokenSlot> {
        use std::hash::BuildHasher as _;
        self.counted_slot(self.token_hasher.hash_one((0u8, token)), REQUESTS_IN_FLIGHT_PER_TOKEN_MAX)
    }

    /// A slot for an import of `tenant`, or `None` when it has
    /// [`IMPORTS_IN_FLIGHT_PER_TENANT_MAX`] in flight.
    pub(crate) fn tenant_import_slot(self: &Arc<Self>, tenant: &str) -> Option<TokenSlot> {
        use std::hash::BuildHasher as _;
        self.counted_slot(self.token_hasher.hash_one((2u8, tenant.as_bytes())), IMPORTS_IN_FLIGHT_PER_TENANT_MAX)
    }

    /// A slot for a request of `tenant` (after its token was checked), or `None` when that
    /// tenant has [`REQUESTS_IN_FLIGHT_PER_TOKEN_MAX`] in flight with all its tokens together.
    /// Regression (review): the cap was per token only, and a tenant holds as many tokens as
    /// it likes (`issue_token` without revoking), so 16 tokens of one tenant took all 4,096.
    pub(crate) fn tenant_slot(self: &Arc<Self>, tenant: &str) -> Option<TokenSlot> {
        use std::hash::BuildHasher as _;
        self.counted_slot(self.token_hasher.hash_one((1u8, tenant.as_bytes())), REQUESTS_IN_FLIGHT_PER_TOKEN_MAX)
    }

    fn counted_slot(self: &Arc<Self>, key: u64, count_max: usize) -> Option<TokenSlot> {
        assert!(count_max <= REQUESTS_IN_FLIGHT_PER_TOKEN_MAX);
        let mut counts = self.in_flight_per_token.lock();
        let count = counts.entry(key).or_insert(0);
        if *count >= count_max {
            return None;
        }
        *count += 1;
        // Each request holds a token's, a tenant's and an import's slot at most.
        debug_assert!(counts.len() <= 3 * REQUESTS_IN_FLIGHT_MAX);
        Some(TokenSlot { gateway: self.clone(), key })
    }
}

/// When the request must be answered by (set by the outermost layer).
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

/// A running gateway.
pub struct GatewayHandle {
    local_addr: SocketAddr,
    gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl GatewayHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Upstream connections held now.
    pub fn pooled_connections(&self) -> usize {
        self.gateway.pool.len()
    }

    /// Stops accepting, lets the requests in flight finish (each within its deadline), closes
    /// the upstream connections.
    pub async fn shutdown(mut self) -> Result<(), NetError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let wait = self.gateway.request_timeout + Duration::from_secs(1);
        let served = tokio::time::timeout(wait, &mut self.served).await;
        self.sweeper.abort();
        self.gateway.pool.clear();
        match served {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(NetError::io("serve HTTP", error)),
            Ok(Err(error)) => Err(NetError::Shutdown(format!("the HTTP server task failed: {error}"))),
            Err(_) => {
                self.served.abort();
                Err(NetError::Shutdown("requests were still in flight past their deadline".into()))
            }
        }
    }
}

/// The router with its state, and the OpenAPI document of its routes.
pub fn router(options: &GatewayOptions) -> (Router, Arc<Gateway>) {
    let (routes, openapi) = api::routes();
    let gateway = Arc::new(Gateway {
        pool: pool::Pool::new(
            options.upstreams.clone(),
            options.ca_pem.clone(),
            options.server_name.clone(),
            options.request_timeout_ms,
            options.pool_connections_max,
        ),
        request_timeout: Duration::from_millis(options.request_timeout_ms.max(1)),
        in_flight: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX)),
        imports_in_flight: Arc::new(Semaphore::new(IMPORTS_IN_FLIGHT_MAX)),
        in_flight_per_token: parking_lot::Mutex::new(std::collections::HashMap::new()),
        token_hasher: std::collections::hash_map::RandomState::new(),
        openapi_json: openapi.to_json().unwrap_or_else(|_| "{}".into()),
    });
    let router = routes
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), admit))
        .with_state(gateway.clone());
    (router, gateway)
}

/// Binds `options.listen` and serves until [`GatewayHandle::shutdown`].
pub async fn start(options: GatewayOptions) -> Result<GatewayHandle, NetError> {
    if options.upstreams.is_empty() {
        return Err(NetError::Connect("no upstream given".into()));
    }
    crate::tls::client_config(&options.ca_pem)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|error| NetError::io(format!("bind {}", options.listen), error))?;
    let local_addr = listener.local_addr().map_err(|error| NetError::io("the bound address", error))?;
    let (router, gateway) = router(&options);
    let (stop, stopped) = oneshot::channel::<()>();
    let request_timeout = Duration::from_millis(options.request_timeout_ms.max(1));
    let connections_max = options.connections_max.clamp(1, CONNECTIONS_MAX);
    let served = tokio::spawn(serve_http(listener, router, stopped, request_timeout, connections_max));
    let sweeping = gateway.clone();
    let sweeper = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(pool::POOL_SWEEP_INTERVAL_MS));
        loop {
            interval.tick().await;
            sweeping.pool.sweep();
        }
    });
    tracing::info!(%local_addr, upstreams = ?options.upstreams, "gateway serving");
    Ok(GatewayHandle { local_addr, gateway, stop: Some(stop), served, sweeper })
}

/// One open HTTP connection, as the accept loop sees it: when it opened or last began a
/// request (`u64::MAX` once asked to close), and how to close it.
struct OpenConnection {
    active_ms: std::sync::atomic::AtomicU64,
    close: tokio::sync::Notify,
}

/// The open connections, to close the least recently active one when a new one finds no room.
/// Regression (review, eleventh session): the cap was one pool refused at once past it, so one
/// client holding every connection with a keep-alive `/healthz` every 9 s (no token needed)
/// shut every new scanner out.
#[derive(Default)]
struct OpenConnections {
    by_id: parking_lot::Mutex<std::collections::HashMap<u64, Arc<OpenConnection>>>,
    next_id: std::sync::atomic::AtomicU64,
    started: std::sync::OnceLock<Instant>,
}

impl OpenConnections {
    fn now_ms(&self) -> u64 {
        self.started.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    fn open(&self) -> (u64, Arc<OpenConnection>) {
        use std::sync::atomic::Ordering;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(OpenConnection {
            active_ms: std::sync::atomic::AtomicU64::new(self.now_ms()),
            close: tokio::sync::Notify::new(),
        });
        let mut by_id = self.by_id.lock();
        by_id.insert(id, connection.clone());
        assert!(by_id.len() <= CONNECTIONS_MAX + CONNECTIONS_WAITING_MAX, "more connections than permits");
        (id, connection)
    }

    fn closed(&self, id: u64) {
        self.by_id.lock().remove(&id);
    }

    /// Asks the least recently active connection to close (after its request, if it serves
    /// one). A scan of at most `CONNECTIONS_MAX` entries, made only when the cap is reached.
    fn close_least_recently_active(&self) {
        use std::sync::atomic::Ordering;
        let by_id = self.by_id.lock();
        let oldest = by_id.values().min_by_key(|connection| connection.active_ms.load(Ordering::Relaxed));
        if let Some(connection) = oldest {
            // Marked active now: the next one past the cap picks another.
            connection.active_ms.store(u64::MAX, Ordering::Relaxed);
            connection.close.notify_one();
        }
    }
}

/// Accepts HTTP/1.1 connections, at most `connections_max` at once (one past it closes the
/// least recently active: [`OpenConnections`]), each with a header-read timer and a lifetime;
/// on `stopped`, stops accepting and lets each connection finish the request it is serving.
async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
    mut stopped: oneshot::Receiver<()>,
    request_timeout: Duration,
    connections_max: usize,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    assert!((1..=CONNECTIONS_MAX).contains(&connections_max));
    let connections = Arc::new(Semaphore::new(connections_max));
    let waiting = Arc::new(Semaphore::new(CONNECTIONS_WAITING_MAX));
    let open = Arc::new(OpenConnections::default());
    // Each connection task holds a receiver; `closed()` on the sender waits for them all.
    let (shutdown, watching) = tokio::sync::watch::channel(false);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stopped => break,
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            // Out of descriptors, or a connection reset before it was accepted: go on, after a
            // pause that keeps a full descriptor table from spinning this loop.
            Err(error) => {
                tracing::warn!(%error, "the gateway could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = connections.clone().try_acquire_owned().ok();
        let wait = match permit {
            Some(_) => None,
            None => match waiting.clone().try_acquire_owned() {
                Ok(waiter) => {
                    open.close_least_recently_active();
                    Some(waiter)
                }
                // Closed at once: the client sees a reset and may retry; the others keep theirs.
                Err(_) => {
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // A `Router` serves any request body: hyper's goes in as it is.
        let router = router.clone();
        let mut watching = watching.clone();
        let (connections, open) = (connections.clone(), open.clone());
        tokio::spawn(async move {
            let _permit = match (permit, wait) {
                (Some(permit), _) => permit,
                (None, waiter) => {
                    let room = tokio::time::timeout(
                        Duration::from_millis(CONNECTION_ROOM_WAIT_MS),
                        connections.acquire_owned(),
                    )
                    .await;
                    drop(waiter);
                    match room {
                        Ok(Ok(permit)) => permit,
                        _ => return drop(stream),
                    }
                }
            };
            let (id, this) = open.open();
            let (touched, clock) = (this.clone(), open.clone());
            let inner = hyper_util::service::TowerToHyperService::new(router);
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                use std::sync::atomic::Ordering;
                // A request makes its connection the most recently active, unless it is
                // already asked to close (it keeps that mark).
                if touched.active_ms.load(Ordering::Relaxed) != u64::MAX {
                    touched.active_ms.store(clock.now_ms(), Ordering::Relaxed);
                }
                hyper::service::Service::call(&inner, request)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS));
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let lifetime = tokio::time::sleep(Duration::from_millis(CONNECTION_LIFETIME_MS_MAX));
            tokio::pin!(lifetime);
            let closing = tokio::select! {
                result = connection.as_mut() => {
                    open.closed(id);
                    return drop(result);
                }
                _ = &mut lifetime => true,
                _ = this.close.notified() => true,
                _ = watching.wait_for(|stop| *stop) => true,
            };
            debug_assert!(closing);
            connection.as_mut().graceful_shutdown();
            // The request in flight finishes within its deadline; a client that does not read
            // its answer is dropped after it.
            let _ = tokio::time::timeout(request_timeout + Duration::from_secs(1), connection).await;
            open.closed(id);
        });
    }
    shutdown.send_replace(true);
    drop(watching);
    shutdown.closed().await;
    Ok(())
}

/// The outermost layer: bounds the requests in flight (shedding, not queueing) and gives each
/// its deadline; past it, a problem instead of a hang.
async fn admit(State(gateway): State<Arc<Gateway>>, mut request: Request, next: Next) -> Response {
    let Ok(_permit) = gateway.in_flight.clone().try_acquire_owned() else {
        return Problem::protocol(
            crate::ProtocolErrorCode::TooManyInFlight,
            format!("the gateway serves {REQUESTS_IN_FLIGHT_MAX} requests at once"),
        )
        .into_response();
    };
    // Keyed by the token as the handlers read it (any case of "Bearer", spaces trimmed), so
    // that spelling the header another way is not another share. Requests without one (health
    // probes, the OpenAPI document, and requests refused 401 at once) have the global cap only.
    let token = request.headers().get(axum::http::header::AUTHORIZATION).map(|value| token_key(value.as_bytes()));
    let _slot = match token {
        None => None,
        Some(token) => match gateway.token_slot(token) {
            Some(slot) => Some(slot),
            None => {
                return Problem::protocol(
                    crate::ProtocolErrorCode::TooManyInFlight,
                    format!("this token has {REQUESTS_IN_FLIGHT_PER_TOKEN_MAX} requests in flight at the gateway"),
                )
                .into_response()
            }
        },
    };
    let deadline = Instant::now() + gateway.request_timeout;
    request.extensions_mut().insert(Deadline(deadline));
    // The handlers answer by the deadline themselves (an upstream timeout is a 503); this
    // backstop catches a client that sends its body too slowly.
    let backstop = tokio::time::Instant::from_std(deadline) + Duration::from_millis(250);
    match tokio::time::timeout_at(backstop, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::gateway(
            GatewayCode::RequestTimeout,
            format!("the request was not complete within {} ms", gateway.request_timeout.as_millis()),
        )
        .into_response(),
    }
}

/// Sets the `Reservoir-Lsn` and `Reservoir-Epoch` headers.
pub(crate) fn insert_position(headers: &mut HeaderMap, lsn: u64, epoch: u64) {
    headers.insert(LSN_HEADER, HeaderValue::from(lsn));
    headers.insert(EPOCH_HEADER, HeaderValue::from(epoch));
}
