//! Interning and storage of tenants and stock items.
//!
//! Items live in shards chosen by a fixed hash of (tenant, SKU), so every location of a SKU
//! is in one shard. A shard's index and key bytes sit behind a `RwLock` that writers take only
//! to create an item; the hot path takes it for reading and then works on the item's own
//! latch ([`crate::item::ItemCell`]). Cells sit in fixed-size chunks that never move.

use hashbrown::HashTable;
use parking_lot::{RwLock, RwLockReadGuard};

use crate::item::{Counters, ItemCell};
use crate::types::{Fnv64, ItemId, TenantId, ITEMS_PER_SHARD_MAX, TENANTS_MAX};

/// Cells per chunk of a shard.
pub const CHUNK_ITEMS: usize = 1024;

/// Which shard holds the SKU. Fixed forever: an item's shard is part of its persisted id.
pub fn sku_hash(tenant: TenantId, sku: &str) -> u64 {
    Fnv64::new().u64(u64::from(tenant.0)).str(sku).finish()
}

fn item_hash(sku_hash: u64, location: &str) -> u64 {
    Fnv64::new().u64(sku_hash).str(location).finish()
}

/// The index hash of the item at `index`, from its stored key (when the index grows).
fn rehash(keys: &[ItemKey], key_bytes: &[u8], index: u32) -> u64 {
    let key = keys[index as usize];
    let start = key.offset as usize;
    let middle = start + key.sku_len as usize;
    let sku = &key_bytes[start..middle];
    let location = &key_bytes[middle..middle + key.location_len as usize];
    let sku_hash = Fnv64::new().u64(u64::from(key.tenant.0)).u64(sku.len() as u64).bytes(sku).finish();
    Fnv64::new().u64(sku_hash).u64(location.len() as u64).bytes(location).finish()
}

/// [`ShardItems::insert_if_absent`] found the item already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemPresent;

/// Where an item's names are kept in its shard's key bytes.
#[derive(Clone, Copy, Debug)]
pub struct ItemKey {
    pub tenant: TenantId,
    offset: u32,
    sku_len: u8,
    location_len: u8,
}

#[derive(Default)]
pub struct ShardItems {
    chunks: Vec<Box<[ItemCell]>>,
    keys: Vec<ItemKey>,
    /// SKU bytes then location bytes, for every item, back to back.
    key_bytes: Vec<u8>,
    /// (tenant, sku, location) -> index.
    index: HashTable<u32>,
    /// Per tenant, its items in creation order (for paging).
    by_tenant: hashbrown::HashMap<TenantId, Vec<u32>>,
}

impl ShardItems {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn cell(&self, index: u32) -> &ItemCell {
        let index = index as usize;
        assert!(index < self.keys.len(), "item index {index} out of range");
        &self.chunks[index / CHUNK_ITEMS][index % CHUNK_ITEMS]
    }

    pub fn key(&self, index: u32) -> ItemKey {
        self.keys[index as usize]
    }

    pub fn sku(&self, index: u32) -> &str {
        let key = self.keys[index as usize];
        let start = key.offset as usize;
        std::str::from_utf8(&self.key_bytes[start..start + key.sku_len as usize]).expect("utf-8 key")
    }

    pub fn location(&self, index: u32) -> &str {
        let key = self.keys[index as usize];
        let start = key.offset as usize + key.sku_len as usize;
        std::str::from_utf8(&self.key_bytes[start..start + key.location_len as usize]).expect("utf-8 key")
    }

    pub fn find(&self, tenant: TenantId, sku: &str, location: &str, sku_hash: u64) -> Option<u32> {
        let hash = item_hash(sku_hash, location);
        self.index
            .find(hash, |&index| {
                // Bytes, not &str: the keys were validated on the way in, so no UTF-8 check here.
                let key = self.keys[index as usize];
                let start = key.offset as usize;
                let middle = start + key.sku_len as usize;
                key.tenant == tenant
                    && &self.key_bytes[start..middle] == sku.as_bytes()
                    && &self.key_bytes[middle..middle + key.location_len as usize] == location.as_bytes()
            })
            .copied()
    }

    pub fn tenant_items(&self, tenant: TenantId) -> &[u32] {
        self.by_tenant.get(&tenant).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Appends an item. The caller holds the shard's write lock and has checked it is absent.
    pub fn insert(&mut self, tenant: TenantId, sku: &str, location: &str, sku_hash: u64) -> Option<u32> {
        if self.keys.len() >= ITEMS_PER_SHARD_MAX {
            return None;
        }
        debug_assert!(self.find(tenant, sku, location, sku_hash).is_none());
        let index = self.keys.len() as u32;
        if self.keys.len() % CHUNK_ITEMS == 0 {
            let chunk: Vec<ItemCell> = (0..CHUNK_ITEMS).map(|_| ItemCell::default()).collect();
            self.chunks.push(chunk.into_boxed_slice());
        }
        assert!(sku.len() <= u8::MAX as usize && location.len() <= u8::MAX as usize);
        let offset = u32::try_from(self.key_bytes.len()).ok()?;
        self.key_bytes.extend_from_slice(sku.as_bytes());
        self.key_bytes.extend_from_slice(location.as_bytes());
        self.keys.push(ItemKey { tenant, offset, sku_len: sku.len() as u8, location_len: location.len() as u8 });
        let hash = item_hash(sku_hash, location);
        let (keys, key_bytes) = (&self.keys, &self.key_bytes);
        self.index.insert_unique(hash, index, |&other| rehash(keys, key_bytes, other));
        self.by_tenant.entry(tenant).or_default().push(index);
        debug_assert_eq!(self.cell(index).read(), Counters::default());
        Some(index)
    }

    /// Appends an item unless it is already there (one hash and one probe: a snapshot's
    /// restore, where a repeated item means a corrupt file). `None` when the shard is full.
    pub fn insert_if_absent(
        &mut self,
        tenant: TenantId,
        sku: &str,
        location: &str,
        sku_hash: u64,
    ) -> Option<Result<u32, ItemPresent>> {
        if self.keys.len() >= ITEMS_PER_SHARD_MAX {
            return None;
        }
        assert!(sku.len() <= u8::MAX as usize && location.len() <= u8::MAX as usize);
        let index = self.keys.len() as u32;
        let hash = item_hash(sku_hash, location);
        let (keys, key_bytes) = (&self.keys, &self.key_bytes);
        let entry = self.index.entry(
            hash,
            |&other| {
                let key = keys[other as usize];
                let start = key.offset as usize;
                let middle = start + key.sku_len as usize;
                key.tenant == tenant
                    && &key_bytes[start..middle] == sku.as_bytes()
                    && &key_bytes[middle..middle + key.location_len as usize] == location.as_bytes()
            },
            |&other| rehash(keys, key_bytes, other),
        );
        let hashbrown::hash_table::Entry::Vacant(vacant) = entry else { return Some(Err(ItemPresent)) };
        let offset = u32::try_from(self.key_bytes.len()).ok()?;
        vacant.insert(index);
        if self.keys.len() % CHUNK_ITEMS == 0 {
            let chunk: Vec<ItemCell> = (0..CHUNK_ITEMS).map(|_| ItemCell::default()).collect();
            self.chunks.push(chunk.into_boxed_slice());
        }
        self.key_bytes.extend_from_slice(sku.as_bytes());
        self.key_bytes.extend_from_slice(location.as_bytes());
        self.keys.push(ItemKey { tenant, offset, sku_len: sku.len() as u8, location_len: location.len() as u8 });
        self.by_tenant.entry(tenant).or_default().push(index);
        debug_assert_eq!(self.find(tenant, sku, location, sku_hash), Some(index));
        Some(Ok(index))
    }

    /// Makes room for `items` more items with `key_bytes` more name bytes, so that a restore
    /// grows nothing item by item (regression: rehashing while 10 M items were restored one
    /// by one was a tenth of a cold start).
    pub fn reserve(&mut self, items: usize, key_bytes: usize) {
        self.keys.reserve(items);
        self.key_bytes.reserve(key_bytes);
        self.chunks.reserve(items.div_ceil(CHUNK_ITEMS));
        let (keys, key_bytes) = (&self.keys, &self.key_bytes);
        self.index.reserve(items, |&other| rehash(keys, key_bytes, other));
    }

    /// Heap bytes this shard holds (for the memory benchmark).
    pub fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK_ITEMS * std::mem::size_of::<ItemCell>()
            + self.keys.capacity() * std::mem::size_of::<ItemKey>()
            + self.key_bytes.capacity()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.by_tenant.values().map(|v| v.capacity() * 4).sum::<usize>()
    }
}

pub struct Shard {
    pub items: RwLock<ShardItems>,
}

/// A tenant's name and the locations it has used (for per-SKU totals).
#[derive(Default)]
pub struct Tenants {
    names: Vec<Box<str>>,
    by_name: hashbrown::HashMap<Box<str>, TenantId>,
}

impl Tenants {
    pub fn get(&self, name: &str) -> Option<TenantId> {
        self.by_name.get(name).copied()
    }
    pub fn name(&self, tenant: TenantId) -> Option<&str> {
        self.names.get(tenant.0 as usize).map(|name| &**name)
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn insert(&mut self, name: &str) -> Option<TenantId> {
        if self.names.len() >= TENANTS_MAX {
            return None;
        }
        assert!(self.get(name).is_none(), "tenant {name} exists");
        let tenant = TenantId(self.names.len() as u32);
        self.names.push(name.into());
        self.by_name.insert(name.into(), tenant);
        Some(tenant)
    }
    pub fn iter(&self) -> impl Iterator<Item = (TenantId, &str)> {
        self.names.iter().enumerate().map(|(i, name)| (TenantId(i as u32), &**name))
    }
}

pub struct Catalog {
    pub shards: Box<[Shard]>,
    shard_mask: u64,
    pub tenants: RwLock<Tenants>,
}

impl Catalog {
    pub fn new(shard_count: usize) -> Catalog {
        assert!(shard_count.is_power_of_two(), "shard count {shard_count} is not a power of two");
        let shards = (0..shard_count).map(|_| Shard { items: RwLock::new(ShardItems::default()) }).collect();
        Catalog { shards, shard_mask: shard_count as u64 - 1, tenants: RwLock::new(Tenants::default()) }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard of a SKU: the high bits of its hash (the low bits index inside the shard).
    pub fn shard_of(&self, sku_hash: u64) -> u32 {
        ((sku_hash >> 40) & self.shard_mask) as u32
    }

    pub fn read_shard(&self, shard: u32) -> RwLockReadGuard<'_, ShardItems> {
        self.shards[shard as usize].items.read()
    }

    /// Looks an item up without creating it.
    pub fn find(&self, tenant: TenantId, sku: &str, location: &str) -> Option<ItemId> {
        let hash = sku_hash(tenant, sku);
        let shard = self.shard_of(hash);
        let index = self.read_shard(shard).find(tenant, sku, location, hash)?;
        Some(ItemId { shard, index })
    }
}
