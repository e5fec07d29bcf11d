//! QUIC client connections to the upstream servers, one per bearer token, kept so that a scan
//! does not pay a handshake. Keyed by the SHA-256 of the token; the token itself lives only in
//! the connection's client (it re-sends it when it reconnects) and is never logged or written.
//!
//! Bounded: at most `connections_max` entries (the least recently used goes first), an entry
//! idle for `POOL_IDLE_MS_MAX` leaves it, and none stays longer than
//! `POOL_CONNECTION_AGE_MS_MAX`; a connection out of the pool closes when its last request is
//! answered. Handshakes in progress take no pool room. A revoked token does not wait for that age: the server checks
//! an open connection's token again after every change of its credentials, answers the next
//! request of a revoked one `unauthenticated` and closes it, and the gateway answers 401 and
//! [`Pool::forget`]s the entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

use crate::client::{Client, ClientOptions};
use crate::{NetError, Role};

/// Upstream connections (tokens) kept at once, by default.
pub const POOL_CONNECTIONS_MAX: usize = 1_024;
/// Handshakes of tokens not pooled yet that later requests of the same token may join (one
/// handshake for all of them). Past it a request shakes hands alone: a flood of made-up tokens
/// costs handshakes, which the gateway's in-flight caps bound, never pool room.
pub const POOL_HANDSHAKES_SHARED_MAX: usize = 256;
/// A connection unused for this long is closed.
pub const POOL_IDLE_MS_MAX: u64 = 300_000;
/// A connection is replaced (a new handshake, the token checked again) after this long.
pub const POOL_CONNECTION_AGE_MS_MAX: u64 = 60_000;
/// How often idle and old connections are swept.
pub const POOL_SWEEP_INTERVAL_MS: u64 = 5_000;

/// An authenticated connection and whose it is. Its last user closes it: a connection that
/// leaves the pool (aged, idle, evicted) still serves the requests that hold it.
pub struct Upstream {
    pub client: Client,
    /// The token's tenant; `None` for the admin token.
    pub tenant: Option<String>,
}

impl Upstream {
    /// Closes the connection from a task of its own (outside a runtime, quinn closes it when
    /// its last handle drops), whoever still holds it.
    fn close_soon(&self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            runtime.spawn(async move { client.close().await });
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.close_soon();
    }
}

/// A pooled connection: one whose token shook hands.
struct Pooled {
    upstream: Arc<Upstream>,
    created: Instant,
    last_used_ms: AtomicU64,
}

/// A handshake in progress, which requests of the same token join.
type Handshake = Arc<tokio::sync::OnceCell<Arc<Upstream>>>;

/// A wait on a handshake, which takes the handshake out of the map when it ends (only that
/// handshake: a later one for the token may have replaced it).
struct SharedHandshake<'a> {
    pool: &'a Pool,
    key: Key,
    handshake: Handshake,
}

impl Drop for SharedHandshake<'_> {
    fn drop(&mut self) {
        let mut slots = self.pool.slots.lock();
        if slots.handshakes.get(&self.key).is_some_and(|shared| Arc::ptr_eq(shared, &self.handshake)) {
            slots.handshakes.remove(&self.key);
        }
    }
}

type Key = [u8; 32];

#[derive(Default)]
struct Slots {
    /// At most `connections_max`; only connections that shook hands.
    pooled: HashMap<Key, Pooled>,
    /// At most `POOL_HANDSHAKES_SHARED_MAX`.
    handshakes: HashMap<Key, Handshake>,
}

pub struct Pool {
    slots: Mutex<Slots>,
    endpoints: Vec<String>,
    ca_pem: Vec<u8>,
    server_name: Option<String>,
    request_timeout_ms: u64,
    connections_max: usize,
    connection_age_ms_max: u64,
    epoch: Instant,
}

fn key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

impl Pool {
    pub fn new(
        endpoints: Vec<String>,
        ca_pem: Vec<u8>,
        server_name: Option<String>,
        request_timeout_ms: u64,
        connections_max: usize,
    ) -> Pool {
        assert!(!endpoints.is_empty(), "at least one upstream");
        Pool {
            slots: Mutex::new(Slots::default()),
            endpoints,
            ca_pem,
            server_name,
            request_timeout_ms,
            connections_max: connections_max.max(1),
            connection_age_ms_max: POOL_CONNECTION_AGE_MS_MAX,
            epoch: Instant::now(),
        }
    }

    /// The age past which a connection is replaced (`POOL_CONNECTION_AGE_MS_MAX` unless set).
    pub fn with_connection_age_ms_max(mut self, connection_age_ms_max: u64) -> Pool {
        self.connection_age_ms_max = connection_age_ms_max.max(1);
        self
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn aged(&self, pooled: &Pooled) -> bool {
        pooled.created.elapsed() >= Duration::from_millis(self.connection_age_ms_max)
    }

    /// The connection for `token`: the pooled one, or a new one (one handshake, however many
    /// requests wait for it). A connection enters the pool only once its token shook hands
    /// (evicting the least recently used when the pool is full), so made-up tokens never take
    /// pool room from tenants. A failed handshake is not kept: the next request tries again.
    /// Regressions (review): a handshake took a pool slot while in progress, so a flood of
    /// made-up tokens filled the pool and a tenant's new connection then evicted another
    /// tenant's; and an aged connection was closed under the requests still using it.
    pub async fn upstream(&self, token: &str) -> Result<Arc<Upstream>, NetError> {
        let key = key(token);
        let handshake = {
            let mut slots = self.slots.lock();
            if let Some(pooled) = slots.pooled.get(&key) {
                if !self.aged(pooled) {
                    pooled.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
                    return Ok(pooled.upstream.clone());
                }
                // Out of the pool; its last user closes it.
                slots.pooled.remove(&key);
            }
            match slots.handshakes.get(&key) {
                Some(handshake) => handshake.clone(),
                None => {
                    let handshake = Handshake::default();
                    if slots.handshakes.len() < POOL_HANDSHAKES_SHARED_MAX {
                        slots.handshakes.insert(key, handshake.clone());
                    }
                    handshake
                }
            }
        };
        // Leaves the map however this wait ends: answered, failed, or dropped (the request's
        // deadline, a client gone). Regression (review): a dropped wait left its entry, and
        // 256 of them (an upstream outage, one-off tokens) ended all sharing for good.
        let shared = SharedHandshake { pool: self, key, handshake };
        let result = shared.handshake.get_or_try_init(|| self.connect(token)).await.cloned();
        drop(shared);
        let mut slots = self.slots.lock();
        if let Ok(upstream) = &result {
            self.adopt(&mut slots, key, upstream);
        }
        debug_assert!(slots.pooled.len() <= self.connections_max);
        debug_assert!(slots.handshakes.len() <= POOL_HANDSHAKES_SHARED_MAX);
        result
    }

    /// Pools `upstream`, whose token shook hands, unless the pool holds one for the token
    /// already (that one stays; this one serves its requests and closes with them).
    fn adopt(&self, slots: &mut Slots, key: Key, upstream: &Arc<Upstream>) {
        if slots.pooled.contains_key(&key) {
            return;
        }
        while slots.pooled.len() >= self.connections_max {
            let oldest = slots
                .pooled
                .iter()
                .min_by_key(|(_, pooled)| pooled.last_used_ms.load(Ordering::Relaxed))
                .map(|(key, _)| *key)
                .expect("not empty");
            slots.pooled.remove(&oldest).expect("present");
        }
        let pooled = Pooled { upstream: upstream.clone(), created: Instant::now(), last_used_ms: self.now_ms().into() };
        slots.pooled.insert(key, pooled);
        assert!(slots.pooled.len() <= self.connections_max);
    }

    /// Drops `token`'s connection and closes it now (the server refused it: revoked, or the
    /// connection broke).
    pub fn forget(&self, token: &str) {
        let removed = self.slots.lock().pooled.remove(&key(token));
        if let Some(pooled) = removed {
            pooled.upstream.close_soon();
        }
    }

    async fn connect(&self, token: &str) -> Result<Arc<Upstream>, NetError> {
        let mut options = ClientOptions::new(self.endpoints.clone(), self.ca_pem.clone(), token.to_owned());
        options.server_name = self.server_name.clone();
        options.request_timeout_ms = self.request_timeout_ms;
        // The gateway answers 429 with Retry-After itself; the scanner decides when to retry.
        options.retry_rate_limited = false;
        let client = Client::connect(options).await?;
        let tenant = match client.hello().await {
            Ok(hello) => match hello.role {
                Role::Tenant { name } => Some(name),
                Role::Admin | Role::Replication => None,
            },
            Err(error) => {
                client.close().await;
                return Err(error);
            }
        };
        Ok(Arc::new(Upstream { client, tenant }))
    }

    /// Drops connections idle past `POOL_IDLE_MS_MAX` or older than the age limit from the
    /// pool (each closes once its last request is answered); returns how many are left.
    pub fn sweep(&self) -> usize {
        let now_ms = self.now_ms();
        let mut slots = self.slots.lock();
        slots.pooled.retain(|_, pooled| {
            now_ms.saturating_sub(pooled.last_used_ms.load(Ordering::Relaxed)) <= POOL_IDLE_MS_MAX && !self.aged(pooled)
        });
        slots.pooled.len()
    }

    /// Connections pooled now (handshakes in progress are not).
    pub fn len(&self) -> usize {
        self.slots.lock().pooled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Handshakes in progress that later requests may join.
    pub fn handshakes_shared(&self) -> usize {
        self.slots.lock().handshakes.len()
    }

    /// Closes every pooled connection now (shutdown).
    pub fn clear(&self) {
        let pooled: Vec<Pooled> = self.slots.lock().pooled.drain().map(|(_, pooled)| pooled).collect();
        for pooled in pooled {
            pooled.upstream.close_soon();
        }
    }

    /// A client for a one-off probe (readiness): a handshake with a token that is no one's.
    pub async fn probe(&self) -> Result<(), NetError> {
        let mut options = ClientOptions::new(self.endpoints.clone(), self.ca_pem.clone(), "readiness-probe".into());
        options.server_name = self.server_name.clone();
        match Client::connect(options).await {
            Ok(client) => {
                client.close().await;
                Ok(())
            }
            // The server answered the handshake: it is up.
            Err(NetError::Refused(frame)) if frame.code == crate::ProtocolErrorCode::Unauthenticated => Ok(()),
            Err(error) => Err(error),
        }
    }
}
