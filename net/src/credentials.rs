//! Bearer tokens: which tenant (or the operator) a connection speaks for.
//!
//! Tokens are `rsv_` + 64 hex digits (256 random bits from the OS), shown once when issued and
//! stored only as their SHA-256 digest in `DATA_DIR/credentials.json` (written to a temporary
//! file, fsynced, renamed, the directory fsynced). With 256 bits of entropy a plain, unsalted
//! SHA-256 is enough: no dictionary or brute force reaches a token from its digest. A lookup is
//! by digest, so the time it takes says nothing about the token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;
use sha2::{Digest as _, Sha256};

use crate::NetError;

/// Bytes of randomness in a token.
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// Tokens kept at most (all tenants and the operator together): bounds the file and memory.
pub const CREDENTIALS_MAX: usize = 100_000;
/// The prefix every token starts with (so that a leaked one is easy to find in logs and code).
pub const TOKEN_PREFIX: &str = "rsv_";

/// A token's SHA-256 digest: what the store is keyed by, and what a connection keeps (never
/// the token) to check again, after the store changed, that its token is still live.
pub type TokenDigest = [u8; 32];

/// What a token grants.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Grant {
    /// The operator: admin operations only.
    Admin,
    /// One tenant's stock, and nothing else.
    Tenant { tenant: String },
    /// A standby's replication stream (issue #5).
    Replication,
}

impl From<crate::Service> for Grant {
    fn from(service: crate::Service) -> Grant {
        match service {
            crate::Service::Admin => Grant::Admin,
            crate::Service::Replication => Grant::Replication,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Entry {
    sha256: String,
    #[serde(flatten)]
    grant: Grant,
    created_ms: u64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct File {
    version: u32,
    tokens: Vec<Entry>,
}

/// The credential store of a data directory.
pub struct Credentials {
    path: PathBuf,
    entries: RwLock<HashMap<TokenDigest, Entry>>,
    /// Bumped at every change, after the change is visible: a primary ships the store to its
    /// standbys when it moves, and a connection checks its token again when it moved.
    generation: std::sync::atomic::AtomicU64,
    /// Notified after every change (a primary's shipping loops wake on it).
    pub changed: tokio::sync::Notify,
}

fn sorted(entries: &HashMap<TokenDigest, Entry>) -> Vec<Entry> {
    let mut tokens: Vec<Entry> = entries.values().cloned().collect();
    tokens.sort_by(|a, b| (a.created_ms, &a.sha256).cmp(&(b.created_ms, &b.sha256)));
    tokens
}

fn digest(token: &[u8]) -> TokenDigest {
    Sha256::digest(token).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Credentials {
    pub fn path(data_directory: &Path) -> PathBuf {
        data_directory.join("credentials.json")
    }

    /// Loads the store of `data_directory` (empty if it has none yet).
    pub fn open(data_directory: &Path) -> Result<Credentials, NetError> {
        let path = Credentials::path(data_directory);
        let bad = |why: String| NetError::Credentials(format!("{}: {why}", path.display()));
        let file: File = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| bad(error.to_string()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => File { version: 1, tokens: Vec::new() },
            Err(error) => return Err(bad(error.to_string())),
        };
        if file.version != 1 || file.tokens.len() > CREDENTIALS_MAX {
            return Err(bad(format!("version {} with {} tokens is not readable", file.version, file.tokens.len())));
        }
        let mut entries = HashMap::with_capacity(file.tokens.len());
        for entry in file.tokens {
            let key = unhex(&entry.sha256).ok_or_else(|| bad(format!("bad digest {:?}", entry.sha256)))?;
            entries.insert(key, entry);
        }
        Ok(Credentials {
            path,
            entries: RwLock::new(entries),
            generation: std::sync::atomic::AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// Changes with every change to the store.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The whole store as its file holds it (digests only, never a token).
    pub fn export(&self) -> Vec<u8> {
        serde_json::to_vec(&File { version: 1, tokens: sorted(&self.entries.read()) }).expect("serializable")
    }

    /// Replaces the store with `json` (a primary's [`Credentials::export`]), durably. A
    /// standby runs this: the same tokens then work on it, before and after a promotion.
    pub fn replace(&self, json: &[u8]) -> Result<(), NetError> {
        let bad = |why: String| NetError::Credentials(format!("replicated credentials: {why}"));
        let file: File = serde_json::from_slice(json).map_err(|error| bad(error.to_string()))?;
        if file.version != 1 || file.tokens.len() > CREDENTIALS_MAX {
            return Err(bad(format!("version {} with {} tokens", file.version, file.tokens.len())));
        }
        let mut next = HashMap::with_capacity(file.tokens.len());
        for entry in file.tokens {
            let key = unhex(&entry.sha256).ok_or_else(|| bad(format!("bad digest {:?}", entry.sha256)))?;
            next.insert(key, entry);
        }
        let mut entries = self.entries.write();
        self.persist(&next)?;
        *entries = next;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        drop(entries);
        self.changed.notify_waiters();
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.read().is_empty()
    }

    /// What `token` grants, if anything, and its digest (for [`Credentials::still_grants`]).
    pub fn authenticate(&self, token: &[u8]) -> Option<(Grant, TokenDigest)> {
        if !token.starts_with(TOKEN_PREFIX.as_bytes()) {
            return None;
        }
        let key = digest(token);
        self.entries.read().get(&key).map(|entry| (entry.grant.clone(), key))
    }

    /// Whether the token of `digest` is still live and still grants `grant` (it was not
    /// revoked, rotated away, or dropped by a standby's replacement of the store).
    pub fn still_grants(&self, digest: &TokenDigest, grant: &Grant) -> bool {
        self.entries.read().get(digest).is_some_and(|entry| entry.grant == *grant)
    }

    /// Mints a token for `grant`; with `revoke_others`, every earlier token of the same grant
    /// stops working (a rotation). Durable before it returns. The token is shown only here.
    pub fn issue(&self, grant: Grant, revoke_others: bool, now_ms: u64) -> Result<String, NetError> {
        use rand::RngCore as _;
        let mut random = [0u8; TOKEN_RANDOM_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let token = format!("{TOKEN_PREFIX}{}", hex(&random));
        let key = digest(token.as_bytes());
        let mut entries = self.entries.write();
        let mut next = entries.clone();
        if revoke_others {
            next.retain(|_, entry| entry.grant != grant);
        }
        if next.len() >= CREDENTIALS_MAX {
            return Err(NetError::Credentials(format!("{CREDENTIALS_MAX} tokens exist: revoke some first")));
        }
        next.insert(key, Entry { sha256: hex(&key), grant, created_ms: now_ms });
        self.persist(&next)?;
        *entries = next;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        assert!(entries.contains_key(&key));
        drop(entries);
        self.changed.notify_waiters();
        Ok(token)
    }

    /// Tokens per tenant (tenants with none are not listed).
    pub fn tenant_token_counts(&self) -> HashMap<String, u32> {
        let mut counts = HashMap::new();
        for entry in self.entries.read().values() {
            if let Grant::Tenant { tenant } = &entry.grant {
                *counts.entry(tenant.clone()).or_insert(0u32) += 1;
            }
        }
        counts
    }

    fn persist(&self, entries: &HashMap<TokenDigest, Entry>) -> Result<(), NetError> {
        use std::io::Write as _;
        let io = |error: std::io::Error| NetError::Credentials(format!("{}: {error}", self.path.display()));
        let tokens = sorted(entries);
        let bytes = serde_json::to_vec_pretty(&File { version: 1, tokens }).expect("serializable");
        let temporary = self.path.with_extension("json.tmp");
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)
                .map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&temporary, &self.path).map_err(io)?;
        let directory = self.path.parent().expect("a file in a directory");
        std::fs::File::open(directory).and_then(|file| file.sync_all()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::wire::{PrimaryMessage, CREDENTIALS_BYTES_MAX, REPLICATION_MESSAGE_BYTES_MAX};

    /// Regression: a primary ships its whole store to every standby in one message, but the
    /// message cap was sized for WAL records (5 MiB): past ~30,000 tenant tokens the store no
    /// longer encoded, and no standby could reconnect. A full store, every entry at its
    /// longest (64-byte tenant names, 20-digit times), fits the store's own cap, and the message
    /// that carries it encodes and decodes.
    #[test]
    fn a_full_credential_store_ships_in_one_replication_message() {
        let directory = tempfile::tempdir().unwrap();
        let credentials = Credentials::open(directory.path()).unwrap();
        {
            let mut entries = credentials.entries.write();
            for number in 0..CREDENTIALS_MAX as u64 {
                let key = digest(&number.to_le_bytes());
                let tenant = format!("{number:0>64}");
                entries.insert(key, Entry { sha256: hex(&key), grant: Grant::Tenant { tenant }, created_ms: u64::MAX });
            }
        }
        let json = credentials.export();
        assert!(json.len() <= CREDENTIALS_BYTES_MAX, "a full store is {} bytes", json.len());
        let mut bytes = Vec::new();
        PrimaryMessage::Credentials { generation: u64::MAX, json: json.clone() }.encode(&mut bytes).unwrap();
        assert!(bytes.len() - 4 <= REPLICATION_MESSAGE_BYTES_MAX);
        assert_eq!(
            PrimaryMessage::decode(&bytes[4..]).unwrap(),
            PrimaryMessage::Credentials { generation: u64::MAX, json }
        );
    }
}
