//! The Rust client library.
//!
//! A [`Client`] holds one QUIC connection (to the first of its endpoints that answers) with a
//! few long-lived streams, and:
//! - **pipelines**: any number of requests in flight per stream, replies matched by request id;
//! - **batches**: [`Client::call`] puts concurrent single operations into shared requests
//!   (up to `batch_operations_max` each), the way group commit shares an fsync;
//! - **retries** with the same idempotency ids (they are inside the operations, so a resend is
//!   the same request): after a lost connection, on the next endpoint; after `rate_limited`,
//!   `too_many_in_flight` or `shutting_down`, once the server's `retry_after_ms` has passed;
//!   after `not_primary`, on the next endpoint (the standby names its primary). Never after
//!   `unauthenticated` (an unknown token, or one revoked while its connection was open): that
//!   refusal is returned at once; nor after a request that cannot be encoded
//!   ([`NetError::Unencodable`]: a string over 255 bytes, a list over its maximum); nor a
//!   token's issue once it may have minted one (a lost reply, `internal`).
//! - **says when the outcome is unknown**: once an attempt of a request with mutations lost
//!   its reply (it may have run), the error is [`NetError::Timeout`] or
//!   [`NetError::Connection`], whatever a later attempt was refused with (the refusal is named
//!   in it): retry with the same ids, never new ones. A [`NetError::Refused`] means the
//!   request did not run.
//! - **moves on after `Goodbye`** (the server's graceful shutdown): requests in flight are
//!   answered on the old connection; new ones open a new one (with several endpoints, to
//!   whichever answers as primary with the highest epoch).
//!
//! ```no_run
//! # async fn example() -> Result<(), reservoir_net::NetError> {
//! use reservoir_net::client::{Client, ClientOptions};
//! use reservoir_net::{Operation, WireLine};
//!
//! let ca = std::fs::read("reservoir-data/tls/ca.pem").expect("the server's CA");
//! let client = Client::connect(ClientOptions::new(vec!["127.0.0.1:7878".into()], ca, "rsv_...".into())).await?;
//! let result = client
//!     .call(Operation::Reserve {
//!         reservation: "order-1001".into(),
//!         ttl_ms: 15 * 60_000,
//!         allow_partial: false,
//!         lines: vec![WireLine { sku: "SKU-1".into(), location: "DC1".into(), quantity: 2 }],
//!     })
//!     .await?;
//! println!("{}", result.code().name());
//! # Ok(())
//! # }
//! ```
//!
//! `net/examples/client.rs` is the same, runnable against a server it starts itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::message::{ClientFrame, ErrorFrame, Hello, HelloReply, NodeRole, Request, ServerFrame};
use crate::operation::{Operation, OperationResult};
use crate::wire::{ProtocolErrorCode, OPERATIONS_PER_REQUEST_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use crate::{decode_server_frame, FrameDecoder, NetError};
use reservoir_engine::{ResultCode, PAGE_ITEMS_MAX};

/// Streams a client opens on its connection at most.
pub const CLIENT_STREAMS_MAX: usize = 16;
/// Calls waiting for the batcher at most; `call` waits while it is full.
pub const CALLS_QUEUED_MAX: usize = 65_536;
/// Batched requests in flight at once.
pub const BATCHES_IN_FLIGHT_MAX: usize = 256;
/// Attempts of one request at most (the first and its retries).
pub const ATTEMPTS_MAX: u32 = 8;
/// The longest wait between two attempts.
pub const RETRY_WAIT_MS_MAX: u64 = 5_000;
/// How long the client waits for each of several endpoints to answer when it looks for the
/// primary.
pub const PROBE_TIMEOUT_MS: u64 = 1_500;
/// How long the client waits for its one endpoint's handshake.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Bytes read from a stream at once.
const READ_CHUNK_BYTES: usize = 64 << 10;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host:port` of every node the client may use, tried in order (a primary and its
    /// standbys: the client ends on the one that takes writes).
    pub endpoints: Vec<String>,
    /// PEM of the CA that signed the servers' certificates (`DATA_DIR/tls/ca.pem`).
    pub ca_pem: Vec<u8>,
    pub token: String,
    /// Streams on the connection; requests are spread over them.
    pub streams: usize,
    /// Operations `call` puts into one request at most.
    pub batch_operations_max: usize,
    /// How long one attempt of a request may take.
    pub request_timeout_ms: u64,
    /// The TLS name to check the server's certificate against; default: the endpoint's host.
    pub server_name: Option<String>,
    /// Wait out `rate_limited` refusals and retry (the default); off, the refusal is returned at
    /// once (a gateway answers its own caller 429 with Retry-After instead).
    pub retry_rate_limited: bool,
}

impl ClientOptions {
    pub fn new(endpoints: Vec<String>, ca_pem: Vec<u8>, token: String) -> ClientOptions {
        ClientOptions {
            endpoints,
            ca_pem,
            token,
            streams: 2,
            batch_operations_max: 256,
            request_timeout_ms: 30_000,
            server_name: None,
            retry_rate_limited: true,
        }
    }
}

/// A whole reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub epoch: u64,
    pub lsn: u64,
    pub results: Vec<OperationResult>,
}

type Waiter = oneshot::Sender<Result<Reply, NetError>>;

struct Pending {
    waiter: Waiter,
    results: Vec<OperationResult>,
    /// The request's operations: a reply brings exactly one result for each (regression,
    /// review, tenth session: a reply with fewer or more was taken, and a caller's
    /// `expect("one result")` panicked, or a request collected parts without bound).
    operations: usize,
}

/// One open connection and its streams.
struct Session {
    connection: quinn::Connection,
    hello: HelloReply,
    senders: Vec<tokio::sync::Mutex<quinn::SendStream>>,
    pending: Arc<Mutex<HashMap<u64, Pending>>>,
    next_stream: AtomicUsize,
    generation: u64,
    /// The server said `Goodbye` (a graceful shutdown): requests in flight are still answered
    /// here, new ones go to a new session.
    draining: Arc<AtomicBool>,
}

struct Inner {
    options: ClientOptions,
    client_config: quinn::ClientConfig,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// The endpoint to try first (the last one that worked).
    preferred: AtomicUsize,
    generations: AtomicU64,
    next_request_id: AtomicU64,
}

/// A connection to a Reservoir server (module docs).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    calls: mpsc::Sender<(Operation, oneshot::Sender<Result<OperationResult, NetError>>)>,
}

impl Client {
    /// Connects to the first endpoint that answers and authenticates.
    pub async fn connect(options: ClientOptions) -> Result<Client, NetError> {
        if options.endpoints.is_empty() {
            return Err(NetError::Connect("no endpoint given".into()));
        }
        let client_config = crate::tls::client_config(&options.ca_pem)?;
        let mut options = options;
        options.streams = options.streams.clamp(1, CLIENT_STREAMS_MAX);
        options.batch_operations_max = options.batch_operations_max.clamp(1, OPERATIONS_PER_REQUEST_MAX);
        let inner = Arc::new(Inner {
            options,
            client_config,
            session: tokio::sync::Mutex::new(None),
            preferred: AtomicUsize::new(0),
            generations: AtomicU64::new(0),
            next_request_id: AtomicU64::new(1),
        });
        inner.session().await?;
        let (calls, receiver) = mpsc::channel(CALLS_QUEUED_MAX);
        tokio::spawn(batcher(inner.clone(), receiver));
        Ok(Client { inner, calls })
    }

    /// What the server said at the handshake (role, epoch, limits).
    pub async fn hello(&self) -> Result<HelloReply, NetError> {
        Ok(self.inner.session().await?.hello.clone())
    }

    /// Sends `operations` as one request (retrying as the module docs say) and returns the
    /// whole reply.
    pub async fn request(&self, operations: Vec<Operation>) -> Result<Reply, NetError> {
        self.inner.request(&operations).await
    }

    /// One operation, batched with other concurrent calls into shared requests.
    pub async fn call(&self, operation: Operation) -> Result<OperationResult, NetError> {
        let (sender, receiver) = oneshot::channel();
        self.calls
            .send((operation, sender))
            .await
            .map_err(|_| NetError::Shutdown("the client's batcher stopped".into()))?;
        receiver.await.map_err(|_| NetError::Shutdown("the client's batcher dropped the call".into()))?
    }

    /// Whether the client holds a connection that is open now (false after [`Client::close`],
    /// or once the server closed it, until the next call reconnects).
    pub async fn is_open(&self) -> bool {
        self.inner.session.lock().await.as_ref().is_some_and(|session| session.connection.close_reason().is_none())
    }

    /// Says goodbye and closes the connection.
    pub async fn close(&self) {
        if let Some(session) = self.inner.session.lock().await.take() {
            session.connection.close(quinn::VarInt::from_u32(0), b"goodbye");
        }
    }
}

async fn batcher(
    inner: Arc<Inner>,
    mut receiver: mpsc::Receiver<(Operation, oneshot::Sender<Result<OperationResult, NetError>>)>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT_MAX));
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < inner.options.batch_operations_max {
            match receiver.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let inner = inner.clone();
        tokio::spawn(async move {
            let (operations, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            match batch_request(&inner, &operations).await {
                Ok(results) => {
                    for (waiter, result) in waiters.into_iter().zip(results) {
                        let _ = waiter.send(result);
                    }
                }
                Err(error) => {
                    // Every call of the batch gets the request's error; a refusal keeps its
                    // frame (code, retry_after_ms) so callers can tell `forbidden` from a
                    // lost connection.
                    let text = error.to_string();
                    for waiter in waiters {
                        let copy = match &error {
                            NetError::Refused(frame) => NetError::Refused(frame.clone()),
                            NetError::Unencodable(wire) => NetError::Unencodable(wire.clone()),
                            _ => NetError::Connection(text.clone()),
                        };
                        let _ = waiter.send(Err(copy));
                    }
                }
            }
            drop(slot);
        });
    }
}

/// Sends the operations of unrelated `call`s as one request, and keeps each caller's answer
/// what it would be alone: a batch that cannot be encoded (one caller's over-long name), or
/// that costs more than the tenant's burst (`rate_limited` with no retry-after), is sent again
/// one operation at a time, so only a caller whose own operation fails gets the error; and a SKU summary
/// that the request's shared item budget (`QUERY_ITEMS_PER_REQUEST_MAX`) cut short, or a
/// reservation it left out (`reply_budget_spent`), is asked again alone (a page cut short
/// carries its cursor and needs nothing).
async fn batch_request(
    inner: &Inner,
    operations: &[Operation],
) -> Result<Vec<Result<OperationResult, NetError>>, NetError> {
    let alone_would_differ = |error: &NetError| match error {
        NetError::Unencodable(_) => true,
        // Regression (review): the batch cost more than the tenant's burst, which no wait can
        // pay, so every caller in it failed for good though each alone would pass.
        // Regression (review, tenth session): one caller's operation its token may not run
        // (`forbidden` refuses the whole request) failed every other caller's with it.
        NetError::Refused(refusal) => {
            (refusal.code == ProtocolErrorCode::RateLimited && refusal.retry_after_ms.is_none())
                || refusal.code == ProtocolErrorCode::Forbidden
        }
        _ => false,
    };
    let reply = match inner.request(operations).await {
        Err(error) if operations.len() > 1 && alone_would_differ(&error) => {
            let mut results = Vec::with_capacity(operations.len());
            // Each caller gets its own operation's answer, an error included (regression,
            // review, tenth session: the first error failed every caller, those whose
            // operations had already run alone too).
            for operation in operations {
                results.push(match inner.request(std::slice::from_ref(operation)).await {
                    Ok(mut alone) => Ok(alone.results.pop().expect("one result: checked as read")),
                    Err(error) => Err(error),
                });
            }
            return Ok(results);
        }
        other => other?,
    };
    let mut results = Vec::with_capacity(reply.results.len());
    for (index, result) in reply.results.into_iter().enumerate() {
        let cut_short = operations.len() > 1
            && (matches!(&result, OperationResult::Sku(Ok(summary))
                if summary.locations.len() < (summary.location_count as usize).min(PAGE_ITEMS_MAX))
                || matches!(&result, OperationResult::Reservation(Err(ResultCode::ReplyBudgetSpent))));
        // A re-ask that fails fails its own caller only (regression, review, tenth session:
        // it failed the whole batch, a reserve applied in it included).
        results.push(if cut_short {
            match inner.request(std::slice::from_ref(&operations[index])).await {
                Ok(mut alone) => Ok(alone.results.pop().expect("one result: checked as read")),
                Err(error) => Err(error),
            }
        } else {
            Ok(result)
        });
    }
    Ok(results)
}

/// Whether every operation is a query (then whether an attempt ran does not matter).
fn read_only(operations: &[Operation]) -> bool {
    operations.iter().all(|operation| operation.kind().is_read_only())
}

/// The error for a request that an earlier attempt may have run, when a later one was
/// refused: of the earlier attempt's kind (`Timeout` or `Connection`: the outcome is
/// unknown, retry with the same ids), naming the refusal too.
fn outcome_unknown(earlier: &NetError, refusal: &NetError) -> NetError {
    let why =
        format!("{earlier}; a later attempt: {refusal}. The earlier attempt may have run: retry with the same ids");
    match earlier {
        NetError::Timeout(_) => NetError::Timeout(why),
        _ => NetError::Connection(why),
    }
}

fn retry_wait(error: &ErrorFrame, attempt: u32) -> Duration {
    let backoff = 10u64 << attempt.min(8);
    Duration::from_millis(error.retry_after_ms.map_or(backoff, u64::from).clamp(1, RETRY_WAIT_MS_MAX))
}

/// Closes its connection when dropped armed: a request's frame was cut part-way through its
/// write (`Inner::send`).
struct TornFrameGuard<'a> {
    connection: &'a quinn::Connection,
    armed: bool,
}

impl TornFrameGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TornFrameGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.connection.close(quinn::VarInt::from_u32(0), b"a request was cancelled in the middle of its frame");
        }
    }
}

impl Inner {
    async fn request(&self, operations: &[Operation]) -> Result<Reply, NetError> {
        if operations.len() > OPERATIONS_PER_REQUEST_MAX {
            return Err(NetError::Protocol(format!(
                "{} operations: at most {OPERATIONS_PER_REQUEST_MAX}",
                operations.len()
            )));
        }
        let mut last_error = None;
        // An attempt whose request may have run (its reply lost): from then on, a refusal
        // that means "not run" speaks for the later attempt only, and the caller must hear
        // that the outcome is unknown (regression, review, tenth session: a reserve applied,
        // its reply lost in a failover, then `not_primary` from the nodes asked after it was
        // returned, and a caller that took it at its word reserved again under a new id).
        let mut unknown: Option<NetError> = None;
        let answer = |error: NetError, unknown: &Option<NetError>| match (unknown, &error) {
            (Some(earlier), NetError::Refused(_)) => outcome_unknown(earlier, &error),
            _ => error,
        };
        for attempt in 0..ATTEMPTS_MAX {
            let session = match self.session().await {
                Ok(session) => session,
                // The token is unknown or was revoked (the server closed the connection it had
                // for it): another handshake with the same token cannot pass.
                // Nor can a server that speaks none of this client's versions start to
                // (regression, review, tenth session: it was retried 8 times, ~2.5 s).
                Err(NetError::Refused(error))
                    if matches!(
                        error.code,
                        ProtocolErrorCode::Unauthenticated | ProtocolErrorCode::UnsupportedVersion
                    ) =>
                {
                    return Err(answer(NetError::Refused(error), &unknown));
                }
                Err(error) => {
                    last_error = Some(error);
                    tokio::time::sleep(Duration::from_millis((10u64 << attempt).min(RETRY_WAIT_MS_MAX))).await;
                    continue;
                }
            };
            let timeout = Duration::from_millis(self.options.request_timeout_ms);
            let outcome = match tokio::time::timeout(timeout, self.send(&session, operations.to_vec())).await {
                Ok(outcome) => outcome,
                Err(_) => Err(NetError::Timeout(format!("no reply within {} ms", self.options.request_timeout_ms))),
            };
            match outcome {
                Ok(reply) => return Ok(reply),
                Err(NetError::Refused(error)) => match error.code {
                    // Without retry_after the request can never pass (larger than the burst).
                    ProtocolErrorCode::RateLimited
                        if error.retry_after_ms.is_none() || !self.options.retry_rate_limited =>
                    {
                        return Err(answer(NetError::Refused(error), &unknown));
                    }
                    // A token's issue that failed past the point where the token was stored
                    // (`internal`: the log's write failed) may have minted it: resent, it
                    // would mint again (regression, review, tenth session: up to 8 live
                    // tokens no one was shown).
                    ProtocolErrorCode::Internal if operations.iter().any(Operation::mints_a_token) => {
                        self.drop_session(&session).await;
                        return Err(answer(NetError::Refused(error), &unknown));
                    }
                    ProtocolErrorCode::RateLimited
                    | ProtocolErrorCode::TooManyInFlight
                    | ProtocolErrorCode::ShuttingDown => {
                        if error.code == ProtocolErrorCode::ShuttingDown {
                            self.drop_session(&session).await;
                        }
                        tokio::time::sleep(retry_wait(&error, attempt)).await;
                        last_error = Some(NetError::Refused(error));
                    }
                    ProtocolErrorCode::NotPrimary | ProtocolErrorCode::Internal => {
                        self.drop_session(&session).await;
                        self.preferred.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(retry_wait(&error, attempt)).await;
                        // `internal`: the request's mutations may have run (docs/protocol.md).
                        if error.code == ProtocolErrorCode::Internal && !read_only(operations) {
                            unknown = Some(NetError::Connection(NetError::Refused(error.clone()).to_string()));
                        }
                        last_error = Some(NetError::Refused(error));
                    }
                    _ => return Err(answer(NetError::Refused(error), &unknown)),
                },
                // Regression: an over-long name failed to encode, was taken for a lost
                // connection, and cost the shared connection, 8 reconnects and ~2.5 s of waits
                // before the caller heard anything (a gateway answered 502).
                Err(error @ NetError::Unencodable(_)) => return Err(error),
                // A token's issue has no id to answer a resend from the first outcome: resent,
                // it would mint (and with `revoke_others` revoke) again. Its outcome is unknown,
                // and the caller hears so. Regression (review): a reply held past the timeout
                // (a `sync` primary waiting for a standby) was resent every 30 s.
                Err(error) if operations.iter().any(Operation::mints_a_token) => {
                    self.drop_session(&session).await;
                    return Err(error);
                }
                Err(error) => {
                    // The reply was lost with the connection: resend, same ids, maybe elsewhere.
                    self.drop_session(&session).await;
                    tokio::time::sleep(Duration::from_millis((10u64 << attempt).min(RETRY_WAIT_MS_MAX))).await;
                    // Queries change nothing: whether they ran does not matter.
                    if !read_only(operations) {
                        unknown = Some(match &error {
                            NetError::Timeout(why) => NetError::Timeout(why.clone()),
                            other => NetError::Connection(other.to_string()),
                        });
                    }
                    last_error = Some(error);
                }
            }
        }
        let error = last_error.unwrap_or_else(|| NetError::Connect("no attempt made".into()));
        Err(answer(error, &unknown))
    }

    async fn send(&self, session: &Session, operations: Vec<Operation>) -> Result<Reply, NetError> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let operations_count = operations.len();
        let mut bytes = Vec::new();
        ClientFrame::Request(Request { request_id, operations }).encode(&mut bytes).map_err(NetError::Unencodable)?;
        let (waiter, receiver) = oneshot::channel();
        let pending = Pending { waiter, results: Vec::new(), operations: operations_count };
        session.pending.lock().insert(request_id, pending);
        let stream = session.next_stream.fetch_add(1, Ordering::Relaxed) % session.senders.len();
        let mut sender = session.senders[stream].lock().await;
        // A caller that gives up in the middle of the write (a gateway's timeout around a large
        // import, the server slow to read) would leave part of a frame on the shared stream:
        // the server would take the next request's bytes as the rest of it and answer neither.
        // Until the last byte is out, the guard closes the connection if dropped; requests in
        // flight on it are resent with their ids (regression, review, tenth session).
        let guard = TornFrameGuard { connection: &session.connection, armed: true };
        let written = sender.write_all(&bytes).await;
        guard.disarm();
        drop(sender);
        if let Err(error) = written {
            session.pending.lock().remove(&request_id);
            return Err(NetError::Connection(error.to_string()));
        }
        match receiver.await {
            Ok(result) => result,
            Err(_) => Err(NetError::Connection("the connection closed before the reply".into())),
        }
    }

    async fn drop_session(&self, failed: &Session) {
        let mut current = self.session.lock().await;
        if current.as_ref().is_some_and(|session| session.generation == failed.generation) {
            if let Some(session) = current.take() {
                session.connection.close(quinn::VarInt::from_u32(0), b"reconnecting");
            }
        }
    }

    /// The open session, or a new one. With one endpoint, that one. With several, every
    /// endpoint is asked at once (each within `PROBE_TIMEOUT_MS`) and the client keeps the
    /// primary with the highest epoch; with no primary answering, the standby with the
    /// highest epoch (queries work there; writes get `not_primary` and are retried).
    async fn session(&self) -> Result<Arc<Session>, NetError> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref() {
            if session.connection.close_reason().is_none() && !session.draining.load(Ordering::Acquire) {
                return Ok(session.clone());
            }
        }
        // A draining session is left to finish what it carries (its requests hold it).
        current.take();
        let count = self.options.endpoints.len();
        if count == 1 {
            let session = Arc::new(self.open(&self.options.endpoints[0]).await?);
            *current = Some(session.clone());
            return Ok(session);
        }
        let mut probes = tokio::task::JoinSet::new();
        for (index, endpoint) in self.options.endpoints.iter().enumerate() {
            let probe = Probe { options: self.options.clone(), client_config: self.client_config.clone() };
            let endpoint = endpoint.clone();
            probes.spawn(async move {
                let timeout = Duration::from_millis(PROBE_TIMEOUT_MS);
                let outcome = match tokio::time::timeout(timeout, probe.open(&endpoint)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(NetError::Timeout(format!("{endpoint}: no handshake within {PROBE_TIMEOUT_MS} ms"))),
                };
                (index, outcome)
            });
        }
        let mut best: Option<(usize, Session)> = None;
        let mut errors = Vec::new();
        let mut refusal = None;
        while let Some(joined) = probes.join_next().await {
            let Ok((index, outcome)) = joined else { continue };
            match outcome {
                Ok(session) => {
                    // A fenced node answers only `status`: below any standby, whatever epoch it
                    // names (regression, review, tenth session: it names the epoch that fenced
                    // it, so it outranked the standbys that could serve the queries).
                    let rank = |session: &Session| {
                        (
                            session.hello.node == NodeRole::Primary,
                            session.hello.node != NodeRole::Fenced,
                            session.hello.epoch,
                        )
                    };
                    if best.as_ref().is_none_or(|(_, held)| rank(&session) > rank(held)) {
                        if let Some((_, dropped)) = best.replace((index, session)) {
                            dropped.connection.close(quinn::VarInt::from_u32(0), b"another node");
                        }
                    } else {
                        session.connection.close(quinn::VarInt::from_u32(0), b"another node");
                    }
                }
                Err(NetError::Refused(error)) if error.code != ProtocolErrorCode::NotPrimary => {
                    refusal = Some(error);
                }
                Err(error) => errors.push(format!("{}: {error}", self.options.endpoints[index])),
            }
        }
        match best {
            Some((index, session)) => {
                self.preferred.store(index, Ordering::Relaxed);
                let mut session = session;
                session.generation = self.generations.fetch_add(1, Ordering::Relaxed);
                let session = Arc::new(session);
                *current = Some(session.clone());
                Ok(session)
            }
            None => match refusal {
                Some(error) => Err(NetError::Refused(error)),
                None => Err(NetError::Connect(errors.join("; "))),
            },
        }
    }

    async fn open(&self, endpoint_text: &str) -> Result<Session, NetError> {
        let probe = Probe { options: self.options.clone(), client_config: self.client_config.clone() };
        // A dead host never answers a QUIC handshake: bound the wait (else QUIC's idle timeout).
        let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
        let mut session = tokio::time::timeout(timeout, probe.open(endpoint_text)).await.map_err(|_| {
            NetError::Timeout(format!("{endpoint_text}: no handshake within {HANDSHAKE_TIMEOUT_MS} ms"))
        })??;
        session.generation = self.generations.fetch_add(1, Ordering::Relaxed);
        Ok(session)
    }
}

/// What opening a session needs, owned (so that several endpoints are tried at once).
struct Probe {
    options: ClientOptions,
    client_config: quinn::ClientConfig,
}

/// Opens a QUIC connection to `endpoint_text` (`host:port`), checking the server's certificate
/// against `server_name` or the endpoint's host. Shared by clients and standbys.
pub(crate) async fn dial(
    endpoint_text: &str,
    server_name: Option<&str>,
    client_config: &quinn::ClientConfig,
) -> Result<quinn::Connection, NetError> {
    let address: SocketAddr = tokio::net::lookup_host(endpoint_text)
        .await
        .map_err(|error| NetError::Connect(format!("{endpoint_text}: {error}")))?
        .next()
        .ok_or_else(|| NetError::Connect(format!("{endpoint_text}: no address")))?;
    let host = match server_name {
        Some(name) => name.to_owned(),
        None => {
            endpoint_text.rsplit_once(':').map_or(endpoint_text, |(host, _)| host).trim_matches(['[', ']']).to_owned()
        }
    };
    let bind: SocketAddr = if address.is_ipv6() {
        "[::]:0".parse().expect("an address")
    } else {
        "0.0.0.0:0".parse().expect("an address")
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|source| NetError::io("bind a UDP socket", source))?;
    endpoint.set_default_client_config(client_config.clone());
    endpoint
        .connect(address, &host)
        .map_err(|error| NetError::Connect(format!("{endpoint_text}: {error}")))?
        .await
        .map_err(|error| NetError::Connect(format!("{endpoint_text}: {error}")))
}

impl Probe {
    async fn open(&self, endpoint_text: &str) -> Result<Session, NetError> {
        let connection = dial(endpoint_text, self.options.server_name.as_deref(), &self.client_config).await?;
        let (mut send, mut recv) =
            connection.open_bi().await.map_err(|error| NetError::Connection(error.to_string()))?;
        let mut bytes = Vec::new();
        ClientFrame::Hello(Hello {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_MAX,
            token: self.options.token.as_bytes().to_vec(),
        })
        .encode(&mut bytes)
        .map_err(|error| NetError::Protocol(error.to_string()))?;
        send.write_all(&bytes).await.map_err(|error| NetError::Connection(error.to_string()))?;
        let mut decoder = FrameDecoder::new();
        let hello = match read_frame(&mut recv, &mut decoder).await? {
            ServerFrame::HelloReply(hello) => hello,
            ServerFrame::Error(error) => return Err(NetError::Refused(error)),
            other => return Err(NetError::Protocol(format!("expected HelloReply, got {other:?}"))),
        };
        let pending = Arc::new(Mutex::new(HashMap::new()));
        let draining = Arc::new(AtomicBool::new(false));
        let mut senders = vec![tokio::sync::Mutex::new(send)];
        tokio::spawn(read_replies(recv, decoder, pending.clone(), draining.clone()));
        for _ in 1..self.options.streams {
            let (send, recv) = connection.open_bi().await.map_err(|error| NetError::Connection(error.to_string()))?;
            senders.push(tokio::sync::Mutex::new(send));
            tokio::spawn(read_replies(recv, FrameDecoder::new(), pending.clone(), draining.clone()));
        }
        Ok(Session { connection, hello, senders, pending, next_stream: AtomicUsize::new(0), generation: 0, draining })
    }
}

async fn read_frame(recv: &mut quinn::RecvStream, decoder: &mut FrameDecoder) -> Result<ServerFrame, NetError> {
    let mut chunk = vec![0u8; 4096];
    loop {
        if let Some(frame) = decoder.pop() {
            return decode_server_frame(frame).map_err(|error| NetError::Protocol(error.to_string()));
        }
        // Read only what one frame needs at most, so that nothing after it is taken here.
        match recv.read(&mut chunk[..1]).await {
            Ok(Some(count)) => {
                let taken = decoder.push(&chunk[..count]).map_err(|error| NetError::Protocol(error.to_string()))?;
                debug_assert_eq!(taken, count);
            }
            Ok(None) => return Err(NetError::Connection("the server closed the stream".into())),
            Err(error) => return Err(NetError::Connection(error.to_string())),
        }
    }
}

/// Reads replies from one stream and hands each whole one to its waiter.
async fn read_replies(
    mut recv: quinn::RecvStream,
    mut decoder: FrameDecoder,
    pending: Arc<Mutex<HashMap<u64, Pending>>>,
    draining: Arc<AtomicBool>,
) {
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let failure = loop {
        let count = match recv.read(&mut chunk).await {
            Ok(Some(count)) => count,
            Ok(None) => break "the server closed the stream".to_owned(),
            Err(error) => break error.to_string(),
        };
        let mut rest = &chunk[..count];
        let mut broken = None;
        while !rest.is_empty() {
            let taken = match decoder.push(rest) {
                Ok(taken) => taken,
                Err(error) => {
                    broken = Some(error.to_string());
                    break;
                }
            };
            rest = &rest[taken..];
            let Some(frame) = decoder.pop() else { continue };
            match decode_server_frame(frame) {
                Ok(ServerFrame::Reply(part)) => {
                    let mut pending = pending.lock();
                    let Some(entry) = pending.get_mut(&part.request_id) else { continue };
                    if usize::from(part.first_operation) != entry.results.len() {
                        broken = Some(format!("reply part of request {} out of order", part.request_id));
                        break;
                    }
                    let results = entry.results.len() + part.results.len();
                    if results > entry.operations || (part.is_final && results != entry.operations) {
                        broken = Some(format!(
                            "the reply to request {} has {results} results for its {} operations",
                            part.request_id, entry.operations
                        ));
                        break;
                    }
                    entry.results.extend(part.results);
                    if part.is_final {
                        let entry = pending.remove(&part.request_id).expect("present");
                        let _ =
                            entry.waiter.send(Ok(Reply { epoch: part.epoch, lsn: part.lsn, results: entry.results }));
                    }
                }
                Ok(ServerFrame::Error(error)) => match error.request_id {
                    Some(id) => {
                        if let Some(entry) = pending.lock().remove(&id) {
                            let _ = entry.waiter.send(Err(NetError::Refused(error)));
                        }
                    }
                    None => {
                        broken = Some(format!("{} ({})", error.code.name(), error.message));
                        break;
                    }
                },
                Ok(ServerFrame::Goodbye) => draining.store(true, Ordering::Release),
                Ok(ServerFrame::HelloReply(_)) => {}
                Err(error) => {
                    broken = Some(error.to_string());
                    break;
                }
            }
        }
        if let Some(why) = broken {
            break why;
        }
    };
    // Everything still waiting on this connection fails; the callers retry with the same ids.
    let mut pending = pending.lock();
    for (_, entry) in pending.drain() {
        let _ = entry.waiter.send(Err(NetError::Connection(failure.clone())));
    }
}
