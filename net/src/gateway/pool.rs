//! QUIC client connections to the upstream servers, one per bearer token, kept so that a scan
//! does not pay a handshake. Keyed by the SHA-256 of the token; the token itself lives only in
//! the connection's client (it re-sends it when it reconnects) and is never logged or written.
//!
//! Bounded: at most `connections_max` entries (the least recently used goes first), an entry
//! idle for `POOL_IDLE_MS_MAX` is closed, and none lives longer than
//! `POOL_CONNECTION_AGE_MS_MAX`. A revoked token does not wait for that age: the server checks
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
/// A connection unused for this long is closed.
pub const POOL_IDLE_MS_MAX: u64 = 300_000;
/// A connection is replaced (a new handshake, the token checked again) after this long.
pub const POOL_CONNECTION_AGE_MS_MAX: u64 = 60_000;
/// How often idle and old connections are swept.
pub const POOL_SWEEP_INTERVAL_MS: u64 = 5_000;

/// An authenticated connection and whose it is.
pub struct Upstream {
    pub client: Client,
    /// The token's tenant; `None` for the admin token.
    pub tenant: Option<String>,
}

struct Slot {
    upstream: tokio::sync::OnceCell<Arc<Upstream>>,
    created: Instant,
    last_used_ms: AtomicU64,
}

type Key = [u8; 32];

pub struct Pool {
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    endpoints: Vec<String>,
    ca_pem: Vec<u8>,
    server_name: Option<String>,
    request_timeout_ms: u64,
    connections_max: usize,
    epoch: Instant,
}

fn key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

fn close(slot: Arc<Slot>) {
    if let Some(upstream) = slot.upstream.get().cloned() {
        tokio::spawn(async move { upstream.client.close().await });
    }
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
            slots: Mutex::new(HashMap::new()),
            endpoints,
            ca_pem,
            server_name,
            request_timeout_ms,
            connections_max: connections_max.max(1),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The connection for `token`: the pooled one, or a new one (one handshake, however many
    /// requests wait for it). A failed handshake is not kept: the next request tries again.
    pub async fn upstream(&self, token: &str) -> Result<Arc<Upstream>, NetError> {
        let key = key(token);
        let (slot, pooled) = self.slot(key);
        let result = slot.upstream.get_or_try_init(|| self.connect(token)).await.cloned();
        match &result {
            Err(_) if pooled => self.forget_slot(&key, &slot),
            Ok(_) if !pooled => self.adopt(key, slot),
            _ => {}
        }
        result
    }

    /// Pools a connection made while the pool was full, now that its token has shaken hands:
    /// only an authenticated connection evicts another.
    fn adopt(&self, key: Key, slot: Arc<Slot>) {
        assert!(slot.upstream.initialized(), "only a connection that shook hands is adopted");
        let mut slots = self.slots.lock();
        if slots.contains_key(&key) {
            // Another request pooled one for this token meanwhile; this one serves its request
            // and closes when dropped.
            return;
        }
        while slots.len() >= self.connections_max {
            let oldest = slots
                .iter()
                .min_by_key(|(_, slot)| slot.last_used_ms.load(Ordering::Relaxed))
                .map(|(key, _)| *key)
                .expect("not empty");
            let evicted = slots.remove(&oldest).expect("present");
            close(evicted);
        }
        slots.insert(key, slot);
        debug_assert!(slots.len() <= self.connections_max);
    }

    /// Drops `token`'s connection (the server refused it: revoked, or the connection broke).
    pub fn forget(&self, token: &str) {
        let removed = self.slots.lock().remove(&key(token));
        if let Some(slot) = removed {
            close(slot);
        }
    }

    fn forget_slot(&self, key: &Key, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock();
        if slots.get(key).is_some_and(|current| Arc::ptr_eq(current, slot)) {
            slots.remove(key);
        }
    }

    /// The token's slot, and whether it is in the pool. A new token gets a pooled slot while
    /// the pool has room; when it is full, an unpooled one, adopted (evicting the least
    /// recently used) only once its handshake passed ([`Pool::adopt`]). Regression: a new slot
    /// evicted one before its token was checked, so 1,024 requests with made-up tokens closed
    /// every tenant's pooled connection (their requests in flight failed and reconnected).
    fn slot(&self, key: Key) -> (Arc<Slot>, bool) {
        let now_ms = self.now_ms();
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(&key) {
            if slot.created.elapsed() < Duration::from_millis(POOL_CONNECTION_AGE_MS_MAX) {
                slot.last_used_ms.store(now_ms, Ordering::Relaxed);
                return (slot.clone(), true);
            }
            let old = slots.remove(&key).expect("present");
            close(old);
        }
        let slot = Arc::new(Slot {
            upstream: tokio::sync::OnceCell::new(),
            created: Instant::now(),
            last_used_ms: now_ms.into(),
        });
        if slots.len() >= self.connections_max {
            return (slot, false);
        }
        slots.insert(key, slot.clone());
        debug_assert!(slots.len() <= self.connections_max);
        (slot, true)
    }

    async fn connect(&self, token: &str) -> Result<Arc<Upstream>, NetError> {
        let mut options = ClientOptions::new(self.endpoints.clone(), self.ca_pem.clone(), token.to_owned());
        options.server_name = self.server_name.clone();
        options.request_timeout_ms = self.request_timeout_ms;
        // The gateway answers 429 with Retry-After itself; the scanner decides when to retry.
        options.retry_rate_limited = false;
        let client = Client::connect(options).await?;
        let tenant = match client.hello().await?.role {
            Role::Tenant { name } => Some(name),
            Role::Admin | Role::Replication => None,
        };
        Ok(Arc::new(Upstream { client, tenant }))
    }

    /// Closes connections idle past `POOL_IDLE_MS_MAX` or older than
    /// `POOL_CONNECTION_AGE_MS_MAX`; returns how many are left.
    pub fn sweep(&self) -> usize {
        let now_ms = self.now_ms();
        let mut slots = self.slots.lock();
        let stale: Vec<Key> = slots
            .iter()
            .filter(|(_, slot)| {
                now_ms.saturating_sub(slot.last_used_ms.load(Ordering::Relaxed)) > POOL_IDLE_MS_MAX
                    || slot.created.elapsed() > Duration::from_millis(POOL_CONNECTION_AGE_MS_MAX)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            close(slots.remove(&key).expect("present"));
        }
        slots.len()
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection (shutdown).
    pub fn clear(&self) {
        let slots: Vec<_> = self.slots.lock().drain().map(|(_, slot)| slot).collect();
        for slot in slots {
            close(slot);
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
