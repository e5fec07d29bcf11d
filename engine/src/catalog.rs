//! Interning and storage of tenants and stock items.
//!
//! Items live in shards chosen by a fixed hash of (tenant, SKU), so every location of a SKU
//! is in one shard. A shard's index and key bytes sit behind a `RwLock` that writers take only
//! to create an item; the hot path takes it for reading and then works on the item's own
//! latch ([`crate::item::ItemCell`]). Cells sit in fixed-size chunks that never move.

use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;
use parking_lot::{RwLock, RwLockReadGuard};

use crate::item::{Counters, ItemCell};
use crate::sync::{AtomicU32, Ordering};
use crate::types::{Fnv64, ItemId, TenantId, ITEMS_PER_SHARD_MAX, NAME_BYTES_MAX, TENANTS_MAX};

/// Items per chunk of a shard.
pub const CHUNK_ITEMS: usize = 1024;
/// Bytes per page of a shard's names. A page is allocated whole and never grows or moves, so
/// adding an item never copies the names already stored (a doubling `Vec` copied half a
/// megabyte per shard at 10 M items, under the shard's write lock, and left the old buffer
/// behind as fragmentation).
pub const NAME_PAGE_BYTES: usize = 64 * 1024;
/// The most bytes a tenant id takes in a name entry (LEB128, 7 bits a byte, of at most
/// `TENANTS_MAX` = 2^20).
const TENANT_BYTES_MAX: usize = 3;
/// The most bytes one item's entry takes in a page: its tenant, two length bytes and two names
/// of at most `NAME_BYTES_MAX` (so a lookup builds the entry it looks for on the stack).
const NAME_ENTRY_BYTES_MAX: usize = TENANT_BYTES_MAX + 2 + 2 * NAME_BYTES_MAX;
/// No next item in a tenant's list.
const NO_ITEM: u32 = u32::MAX;

const _: () = assert!(NAME_ENTRY_BYTES_MAX <= NAME_PAGE_BYTES && NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(TENANTS_MAX <= 1 << (7 * TENANT_BYTES_MAX));
const _: () = assert!(ITEMS_PER_SHARD_MAX <= NO_ITEM as usize, "an item index never reads as the end of a list");

/// Which shard holds the SKU. Fixed forever: an item's shard is part of its persisted id.
pub fn sku_hash(tenant: TenantId, sku: &str) -> u64 {
    Fnv64::new().u64(u64::from(tenant.0)).str(sku).finish()
}

/// An entry of the per-SKU index: an item, and which of its SKU's locations (in creation
/// order) it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SkuEntry {
    item: u32,
    ordinal: u32,
}

/// [`ShardItems::insert_if_absent`] found the item already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemPresent;

/// Whose item it is. The tenant is kept with the names, not beside the counters: an item's
/// cell has room for one 32-bit word ([`ItemCell::key`]), and that is where the names are.
#[derive(Clone, Copy, Debug)]
pub struct ItemKey {
    pub tenant: TenantId,
}

/// A tenant's items in one shard, in creation order: a list threaded through
/// [`ShardItems::next`], 4 bytes an item with no slack (a `Vec` per tenant and shard doubled,
/// ~8 bytes an item at 10 M items over 1,000 tenants).
#[derive(Clone, Copy, Debug)]
struct TenantList {
    first: u32,
    last: u32,
}

/// The names of the items of one shard, in fixed pages. An entry: the tenant id (LEB128, 1-3
/// bytes), the SKU's length byte, the location's, then the SKU's bytes and the location's.
#[derive(Default)]
struct Names {
    pages: Vec<Box<[u8]>>,
    /// Bytes used in the last page.
    last_used: usize,
}

impl Names {
    /// The tenant, SKU and location bytes at `at`.
    fn get(&self, at: u32) -> (TenantId, &[u8], &[u8]) {
        let at = at as usize;
        let page = &self.pages[at / NAME_PAGE_BYTES];
        let mut start = at % NAME_PAGE_BYTES;
        let mut tenant = 0u32;
        for shift in (0..TENANT_BYTES_MAX as u32).map(|byte| 7 * byte) {
            let byte = page[start];
            start += 1;
            tenant |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let (sku_len, location_len) = (page[start] as usize, page[start + 1] as usize);
        let sku = &page[start + 2..start + 2 + sku_len];
        (TenantId(tenant), sku, &page[start + 2 + sku_len..start + 2 + sku_len + location_len])
    }

    /// Whether the entry at `at` is `entry` (as [`encode_entry`] writes it). An entry says its
    /// own length, so equal leading bytes are the whole entry: one compare per probe.
    fn is(&self, at: u32, entry: &[u8]) -> bool {
        let at = at as usize;
        let start = at % NAME_PAGE_BYTES;
        self.pages[at / NAME_PAGE_BYTES].get(start..start + entry.len()) == Some(entry)
    }

    /// Stores the names; `None` when the position would not fit the 32-bit key.
    fn push(&mut self, tenant: TenantId, sku: &str, location: &str) -> Option<u32> {
        let mut entry = [0u8; NAME_ENTRY_BYTES_MAX];
        let entry_bytes = encode_entry(tenant, sku, location, &mut entry);
        if self.pages.is_empty() || self.last_used + entry_bytes > NAME_PAGE_BYTES {
            if (self.pages.len() + 1) * NAME_PAGE_BYTES > u32::MAX as usize {
                return None;
            }
            self.pages.push(vec![0u8; NAME_PAGE_BYTES].into_boxed_slice());
            self.last_used = 0;
        }
        let page_index = self.pages.len() - 1;
        let start = self.last_used;
        self.pages[page_index][start..start + entry_bytes].copy_from_slice(&entry[..entry_bytes]);
        self.last_used += entry_bytes;
        let at = (page_index * NAME_PAGE_BYTES + start) as u32;
        debug_assert_eq!(self.get(at), (tenant, sku.as_bytes(), location.as_bytes()));
        Some(at)
    }

    fn heap_bytes(&self) -> usize {
        self.pages.len() * NAME_PAGE_BYTES + self.pages.capacity() * std::mem::size_of::<Box<[u8]>>()
    }
}

/// Writes the name entry of (tenant, sku, location) to the front of `out`; returns its length.
fn encode_entry(tenant: TenantId, sku: &str, location: &str, out: &mut [u8; NAME_ENTRY_BYTES_MAX]) -> usize {
    assert!(sku.len() <= NAME_BYTES_MAX && location.len() <= NAME_BYTES_MAX, "names past NAME_BYTES_MAX");
    assert!((tenant.0 as usize) < TENANTS_MAX, "tenant {} past TENANTS_MAX", tenant.0);
    let mut length = 0;
    let mut rest = tenant.0;
    loop {
        out[length] = (rest & 0x7f) as u8 | if rest >= 0x80 { 0x80 } else { 0 };
        length += 1;
        rest >>= 7;
        if rest == 0 {
            break;
        }
    }
    out[length] = sku.len() as u8;
    out[length + 1] = location.len() as u8;
    length += 2;
    out[length..length + sku.len()].copy_from_slice(sku.as_bytes());
    length += sku.len();
    out[length..length + location.len()].copy_from_slice(location.as_bytes());
    length += location.len();
    debug_assert!(length <= NAME_ENTRY_BYTES_MAX);
    length
}

#[derive(Default)]
pub struct ShardItems {
    /// The items' cells; each cell's key is where its entry in `names` starts.
    chunks: Vec<Box<[ItemCell]>>,
    len: usize,
    names: Names,
    /// (tenant, sku, location) -> index.
    index: HashTable<u32>,
    /// Per tenant, its items in creation order (for paging): the first and the last, and
    /// `next` links the rest.
    by_tenant: hashbrown::HashMap<TenantId, TenantList>,
    /// Per item, the next item of the same tenant ([`NO_ITEM`] at the end), in chunks of
    /// `CHUNK_ITEMS` beside the cells'.
    next: Vec<Box<[u32]>>,
    /// (tenant, sku, ordinal) -> the item of that SKU's `ordinal`-th location, for the
    /// per-SKU query. Built on the shard's first such query, so a node that never answers one
    /// (and a cold start) pays nothing for it; kept up to date from then on.
    by_sku: std::sync::OnceLock<HashTable<SkuEntry>>,
    /// The key of both in-shard indexes' hashes (SipHash-1-3), drawn when the shard is made
    /// and never persisted. Tenants choose SKU and location names, so under a fixed hash (FNV,
    /// before) one could compute offline thousands of locations whose hashes collide and make
    /// every probe through them, its own and other tenants' items alike, walk the whole run
    /// (and every insert there, under the shard's write lock, cost the run's length). Which
    /// shard holds a SKU is another, fixed hash ([`sku_hash`]): it is persisted.
    index_key: std::hash::RandomState,
}

/// Ends a name inside a hashed key: 0xff never occurs in UTF-8, so (sku, location) pairs
/// cannot run into each other.
const NAME_END: u8 = 0xff;

impl ShardItems {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn cell(&self, index: u32) -> &ItemCell {
        let index = index as usize;
        assert!(index < self.len, "item index {index} out of range");
        &self.chunks[index / CHUNK_ITEMS][index % CHUNK_ITEMS]
    }

    /// The item's tenant, SKU and location bytes.
    fn entry(&self, index: u32) -> (TenantId, &[u8], &[u8]) {
        self.names.get(self.cell(index).key())
    }

    pub fn key(&self, index: u32) -> ItemKey {
        ItemKey { tenant: self.entry(index).0 }
    }

    pub fn sku(&self, index: u32) -> &str {
        std::str::from_utf8(self.entry(index).1).expect("utf-8 key")
    }

    pub fn location(&self, index: u32) -> &str {
        std::str::from_utf8(self.entry(index).2).expect("utf-8 key")
    }

    /// The hash under which the index keeps the item (tenant, sku, location).
    fn item_hash(&self, tenant: TenantId, sku: &[u8], location: &[u8]) -> u64 {
        let mut hasher = self.index_key.build_hasher();
        hasher.write_u32(tenant.0);
        hasher.write(sku);
        hasher.write_u8(NAME_END);
        hasher.write(location);
        hasher.write_u8(NAME_END);
        hasher.finish()
    }

    /// The index hash of the item at `index`, from its stored key (when the index grows).
    fn rehash(&self, index: u32) -> u64 {
        let (tenant, sku, location) = self.entry(index);
        self.item_hash(tenant, sku, location)
    }

    /// The hash of (tenant, sku) that the per-SKU index starts from.
    fn sku_key_hash(&self, tenant: TenantId, sku: &[u8]) -> u64 {
        let mut hasher = self.index_key.build_hasher();
        hasher.write_u32(tenant.0);
        hasher.write(sku);
        hasher.write_u8(NAME_END);
        hasher.finish()
    }

    /// The hash under which the per-SKU index keeps the `ordinal`-th location of a SKU. Every
    /// location hashes apart, so a SKU with many locations makes no cluster that other SKUs'
    /// probes would have to cross.
    fn sku_location_hash(&self, sku_key_hash: u64, ordinal: u32) -> u64 {
        let mut hasher = self.index_key.build_hasher();
        hasher.write_u64(sku_key_hash);
        hasher.write_u32(ordinal);
        hasher.finish()
    }

    /// Whether the item at `index` is (tenant, sku, location). Bytes, not &str: the keys were
    /// validated on the way in, so no UTF-8 check here.
    fn is(&self, index: u32, entry: &[u8]) -> bool {
        self.names.is(self.cell(index).key(), entry)
    }

    pub fn find(&self, tenant: TenantId, sku: &str, location: &str) -> Option<u32> {
        if sku.len() > NAME_BYTES_MAX || location.len() > NAME_BYTES_MAX || tenant.0 as usize >= TENANTS_MAX {
            return None; // no such item can have been made
        }
        let hash = self.item_hash(tenant, sku.as_bytes(), location.as_bytes());
        let mut buffer = [0u8; NAME_ENTRY_BYTES_MAX];
        let length = encode_entry(tenant, sku, location, &mut buffer);
        let entry = &buffer[..length];
        let found = self.index.find(hash, |&index| self.is(index, entry)).copied();
        debug_assert!(found.is_none_or(|index| self.entry(index) == (tenant, sku.as_bytes(), location.as_bytes())));
        found
    }

    /// The tenant's items in creation order, from its first, or from `from` on when that is one
    /// of its items (`None` when it is not: an index out of range or another tenant's item
    /// starts nothing, so a forged cursor never reads across tenants).
    pub fn tenant_items(&self, tenant: TenantId, from: Option<u32>) -> Option<impl Iterator<Item = u32> + '_> {
        let start = match from {
            None => self.by_tenant.get(&tenant).map_or(NO_ITEM, |list| list.first),
            Some(index) if (index as usize) < self.len && self.entry(index).0 == tenant => index,
            Some(_) => return None,
        };
        let mut at = start;
        Some(std::iter::from_fn(move || {
            if at == NO_ITEM {
                return None;
            }
            let item = at;
            at = self.next_of(item);
            debug_assert!(at == NO_ITEM || at > item, "a tenant's list runs in creation order");
            Some(item)
        }))
    }

    /// The next item of the same tenant after `index`.
    fn next_of(&self, index: u32) -> u32 {
        let index = index as usize;
        assert!(index < self.len, "item index {index} out of range");
        self.next[index / CHUNK_ITEMS][index % CHUNK_ITEMS]
    }

    /// The link from `index` to the next item of its tenant, to set.
    fn next_of_mut(&mut self, index: u32) -> &mut u32 {
        let index = index as usize;
        assert!(index < self.len, "item index {index} out of range");
        &mut self.next[index / CHUNK_ITEMS][index % CHUNK_ITEMS]
    }

    /// The per-SKU index's hash of the SKU of the item at `index`, from its stored key.
    fn sku_key_hash_of(&self, index: u32) -> u64 {
        let (tenant, sku, _) = self.entry(index);
        self.sku_key_hash(tenant, sku)
    }

    /// Whether the item at `index` is a location of (tenant, sku).
    fn is_sku(&self, index: u32, tenant: TenantId, sku: &[u8]) -> bool {
        let (its_tenant, its_sku, _) = self.entry(index);
        its_tenant == tenant && its_sku == sku
    }

    /// The items of (tenant, sku) in `table`, in creation order: ordinals 0, 1, ... until one
    /// is missing (items are never removed, so the ordinals have no gaps).
    fn sku_items_in(&self, table: &HashTable<SkuEntry>, tenant: TenantId, sku: &[u8], sku_key_hash: u64) -> Vec<u32> {
        let mut items = Vec::new();
        for ordinal in 0..=self.len as u32 {
            let entry = table.find(self.sku_location_hash(sku_key_hash, ordinal), |entry| {
                entry.ordinal == ordinal && self.is_sku(entry.item, tenant, sku)
            });
            match entry {
                Some(entry) => items.push(entry.item),
                None => return items,
            }
        }
        unreachable!("a SKU has more locations in its shard ({}) than the shard has items", items.len())
    }

    /// How many locations (tenant, sku) has in `table`: the first missing ordinal, found in
    /// O(log n) lookups (doubling, then halving), since the ordinals have no gaps. Regression
    /// (review): adding a location walked every earlier one, so a SKU's n-th location cost n
    /// lookups and an import of 10,000 locations of one SKU 50 M.
    fn sku_location_count_in(
        &self,
        table: &HashTable<SkuEntry>,
        tenant: TenantId,
        sku: &[u8],
        sku_key_hash: u64,
    ) -> u32 {
        let present = |ordinal: u32| {
            table
                .find(self.sku_location_hash(sku_key_hash, ordinal), |entry| {
                    entry.ordinal == ordinal && self.is_sku(entry.item, tenant, sku)
                })
                .is_some()
        };
        if !present(0) {
            return 0;
        }
        // present(low) and, once found, !present(high).
        let (mut low, mut high) = (0u32, 1u32);
        while present(high) {
            assert!(high as usize <= self.len, "a SKU has more locations than its shard has items");
            low = high;
            high = high.saturating_mul(2);
        }
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if present(middle) {
                low = middle;
            } else {
                high = middle;
            }
        }
        debug_assert!(present(low) && !present(high));
        high
    }

    /// How many locations (tenant, sku) has in this shard: O(log n) lookups, what a query of
    /// the SKU is charged by before it walks them.
    pub fn sku_location_count(&self, tenant: TenantId, sku: &str) -> usize {
        let table = self.sku_table();
        self.sku_location_count_in(table, tenant, sku.as_bytes(), self.sku_key_hash(tenant, sku.as_bytes())) as usize
    }

    /// Adds the item at `index` to `table` as the next location of its SKU.
    fn index_by_sku(&self, table: &mut HashTable<SkuEntry>, index: u32) {
        let (tenant, sku, _) = self.entry(index);
        let sku_key_hash = self.sku_key_hash(tenant, sku);
        let ordinal = self.sku_location_count_in(table, tenant, sku, sku_key_hash);
        let hash = self.sku_location_hash(sku_key_hash, ordinal);
        table.insert_unique(hash, SkuEntry { item: index, ordinal }, |entry| {
            self.sku_location_hash(self.sku_key_hash_of(entry.item), entry.ordinal)
        });
    }

    /// Every location of (tenant, sku) in this shard, in creation order: a lookup per
    /// location, however many items the tenant has (regression: this scanned all of the
    /// tenant's items in the shard: 79 µs per query for a tenant of 1 M items, criterion
    /// `sku_query`).
    pub fn sku_items(&self, tenant: TenantId, sku: &str) -> Vec<u32> {
        let table = self.sku_table();
        let items = self.sku_items_in(table, tenant, sku.as_bytes(), self.sku_key_hash(tenant, sku.as_bytes()));
        debug_assert!(items.windows(2).all(|pair| pair[0] < pair[1]), "locations in creation order");
        items
    }

    /// The per-SKU index, built on first use.
    fn sku_table(&self) -> &HashTable<SkuEntry> {
        let table = self.by_sku.get_or_init(|| {
            let mut table = HashTable::with_capacity(self.len);
            for index in 0..self.len as u32 {
                self.index_by_sku(&mut table, index);
            }
            table
        });
        debug_assert_eq!(table.len(), self.len, "the per-SKU index holds every item");
        table
    }

    /// Appends the slot of a new item (not yet in the index). `None` when the shard is full.
    fn push(&mut self, tenant: TenantId, sku: &str, location: &str) -> Option<u32> {
        if self.len >= ITEMS_PER_SHARD_MAX {
            return None;
        }
        let names = self.names.push(tenant, sku, location)?;
        let index = self.len as u32;
        if self.len % CHUNK_ITEMS == 0 {
            let chunk: Vec<ItemCell> = (0..CHUNK_ITEMS).map(|_| ItemCell::default()).collect();
            self.chunks.push(chunk.into_boxed_slice());
            self.next.push(vec![NO_ITEM; CHUNK_ITEMS].into_boxed_slice());
        }
        self.chunks[self.len / CHUNK_ITEMS][self.len % CHUNK_ITEMS].set_key(names);
        self.len += 1;
        match self.by_tenant.entry(tenant) {
            hashbrown::hash_map::Entry::Occupied(mut list) => {
                let last = std::mem::replace(&mut list.get_mut().last, index);
                let link = self.next_of_mut(last);
                assert_eq!(*link, NO_ITEM, "a tenant's last item links to nothing");
                *link = index;
            }
            hashbrown::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(TenantList { first: index, last: index });
            }
        }
        if let Some(mut table) = self.by_sku.take() {
            self.index_by_sku(&mut table, index);
            self.by_sku = std::sync::OnceLock::from(table);
        }
        debug_assert_eq!(self.cell(index).read(), Counters::default());
        Some(index)
    }

    /// Appends an item. The caller holds the shard's write lock and has checked it is absent,
    /// and that the tenant exists and the names are valid (below `TENANTS_MAX`, at most
    /// `NAME_BYTES_MAX`): past those it panics.
    pub fn insert(&mut self, tenant: TenantId, sku: &str, location: &str) -> Option<u32> {
        debug_assert!(self.find(tenant, sku, location).is_none());
        let index = self.push(tenant, sku, location)?;
        let hash = self.item_hash(tenant, sku.as_bytes(), location.as_bytes());
        let mut index_table = std::mem::take(&mut self.index);
        index_table.insert_unique(hash, index, |&other| self.rehash(other));
        self.index = index_table;
        Some(index)
    }

    /// Appends an item unless it is already there (one hash and one probe: a snapshot's
    /// restore, where a repeated item means a corrupt file). `None` when the shard is full. The
    /// tenant and names are checked by the caller, as for [`ShardItems::insert`].
    pub fn insert_if_absent(
        &mut self,
        tenant: TenantId,
        sku: &str,
        location: &str,
    ) -> Option<Result<u32, ItemPresent>> {
        if self.len >= ITEMS_PER_SHARD_MAX {
            return None;
        }
        let hash = self.item_hash(tenant, sku.as_bytes(), location.as_bytes());
        let mut buffer = [0u8; NAME_ENTRY_BYTES_MAX];
        let length = encode_entry(tenant, sku, location, &mut buffer);
        let names = &buffer[..length];
        let mut index_table = std::mem::take(&mut self.index);
        let entry = index_table.entry(hash, |&other| self.is(other, names), |&other| self.rehash(other));
        let outcome = match entry {
            hashbrown::hash_table::Entry::Occupied(_) => Some(Err(ItemPresent)),
            hashbrown::hash_table::Entry::Vacant(vacant) => match self.push(tenant, sku, location) {
                Some(index) => {
                    vacant.insert(index);
                    Some(Ok(index))
                }
                None => None,
            },
        };
        self.index = index_table;
        debug_assert!(outcome.is_none_or(|placed| placed.is_err() || self.find(tenant, sku, location) == placed.ok()));
        outcome
    }

    /// Makes room for `items` more items with `name_bytes` more name bytes (the names alone: the
    /// entries' tenant and length bytes are added here), so that a restore
    /// grows nothing item by item (regression: rehashing while 10 M items were restored one
    /// by one was a tenth of a cold start).
    pub fn reserve(&mut self, items: usize, name_bytes: usize) {
        self.chunks.reserve(items.div_ceil(CHUNK_ITEMS));
        self.next.reserve(items.div_ceil(CHUNK_ITEMS));
        let entry_bytes = name_bytes + items * (TENANT_BYTES_MAX + 2);
        self.names.pages.reserve(entry_bytes.div_ceil(NAME_PAGE_BYTES - NAME_ENTRY_BYTES_MAX));
        let mut index_table = std::mem::take(&mut self.index);
        index_table.reserve(items, |&other| self.rehash(other));
        self.index = index_table;
    }

    /// Heap bytes this shard holds (for the memory benchmark): cells, names, the index and
    /// the per-tenant lists with their map.
    pub fn heap_bytes(&self) -> usize {
        let by_tenant_entry = std::mem::size_of::<(TenantId, TenantList)>() + 1;
        self.chunks.len() * CHUNK_ITEMS * std::mem::size_of::<ItemCell>()
            + self.chunks.capacity() * std::mem::size_of::<Box<[ItemCell]>>()
            + self.next.len() * CHUNK_ITEMS * std::mem::size_of::<u32>()
            + self.next.capacity() * std::mem::size_of::<Box<[u32]>>()
            + self.names.heap_bytes()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.by_tenant.capacity() * by_tenant_entry
            + self.by_sku.get().map_or(0, |table| table.capacity() * (std::mem::size_of::<SkuEntry>() + 1))
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
    /// Each tenant's items (`Engine::set_items_per_tenant_max`): counted on every insertion
    /// into a shard (execution, replay, restore), under that shard's write lock.
    items: Vec<AtomicU32>,
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
        self.items.push(AtomicU32::new(0));
        debug_assert_eq!(self.items.len(), self.names.len());
        Some(tenant)
    }

    /// The tenant's items.
    pub fn items_of(&self, tenant: TenantId) -> u32 {
        self.items[tenant.0 as usize].load(Ordering::Relaxed)
    }

    /// Counts one more item of `tenant` if it has fewer than `items_max`; false (nothing
    /// counted) if not. Taken before the item is created: two shards creating at once cannot
    /// both pass the last one. An insertion that then does not happen gives it back
    /// ([`Tenants::uncount_item`]).
    pub fn count_item(&self, tenant: TenantId, items_max: u32) -> bool {
        let counter = &self.items[tenant.0 as usize];
        let before = counter.fetch_add(1, Ordering::Relaxed);
        assert!(before < u32::MAX, "item count overflow");
        if before >= items_max {
            counter.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts `count` items of `tenant` restored from a snapshot (never refused).
    pub fn add_items(&self, tenant: TenantId, count: u32) {
        let before = self.items[tenant.0 as usize].fetch_add(count, Ordering::Relaxed);
        assert!(before.checked_add(count).is_some(), "item count overflow");
    }

    pub fn uncount_item(&self, tenant: TenantId) {
        let before = self.items[tenant.0 as usize].fetch_sub(1, Ordering::Relaxed);
        assert!(before >= 1, "giving back an item never counted");
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
        let index = self.read_shard(shard).find(tenant, sku, location)?;
        Some(ItemId { shard, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-SKU index answers exactly what a scan of the tenant's items would, before it is
    /// built (items created first), after (items created since), for SKUs with one location
    /// and with many, and for the same SKU name under two tenants (regression: the per-SKU
    /// query scanned every item of the tenant in the shard).
    #[test]
    fn the_per_sku_index_finds_every_location_and_only_the_tenants_own() {
        let mut shard = ShardItems::default();
        let scan = |shard: &ShardItems, tenant: TenantId, sku: &str| -> Vec<u32> {
            shard.tenant_items(tenant, None).expect("from the first").filter(|&index| shard.sku(index) == sku).collect()
        };
        let skus: Vec<String> = (0..40).map(|number| format!("S{number}")).collect();
        let create = |shard: &mut ShardItems, round: usize| {
            for (number, sku) in skus.iter().enumerate() {
                // SKU n has n % 9 + 1 locations per round; tenants 1 and 2 share SKU names.
                for location in 0..number % 9 + 1 {
                    for tenant in [TenantId(1), TenantId(2)] {
                        if tenant == TenantId(2) && number % 2 == 0 {
                            continue;
                        }
                        let location = format!("L{round}-{location}");
                        shard.insert(tenant, sku, &location).expect("room");
                    }
                }
            }
        };
        create(&mut shard, 0);
        assert!(shard.by_sku.get().is_none(), "not built before the first query");
        for round in 1..3 {
            for sku in &skus {
                for tenant in [TenantId(1), TenantId(2), TenantId(3)] {
                    let found = shard.sku_items(tenant, sku);
                    assert_eq!(found, scan(&shard, tenant, sku), "{tenant:?} {sku}");
                }
            }
            assert!(!shard.sku_items(TenantId(1), "S7").is_empty());
            assert_eq!(shard.by_sku.get().map(HashTable::len), Some(shard.len()));
            create(&mut shard, round);
        }
        assert!(shard.sku_items(TenantId(1), "absent").is_empty());
    }

    /// The name pages: entries never straddle two pages, and every item is found again by
    /// its names after many pages and several index growths.
    /// Regression (review, ninth session): adding a SKU's n-th location walked the n before
    /// it (an import of 10,000 locations of one SKU took 50 M lookups). The count is now found
    /// by doubling and halving; it must be exact at every size, built before or after the index.
    #[test]
    fn a_skus_location_count_is_exact_at_every_size() {
        let tenant = TenantId(5);
        let mut late = ShardItems::default();
        let mut early = ShardItems::default();
        assert_eq!(early.sku_location_count(tenant, "SKU"), 0, "builds the index while empty");
        for count in 1..=300usize {
            late.insert(tenant, "SKU", &format!("L{count}")).expect("room");
            early.insert(tenant, "SKU", &format!("L{count}")).expect("room");
            early.insert(TenantId(6), "SKU", &format!("L{count}")).expect("room");
            assert_eq!(early.sku_location_count(tenant, "SKU"), count);
            assert_eq!(early.sku_items(tenant, "SKU").len(), count);
        }
        assert_eq!(late.sku_location_count(tenant, "SKU"), 300, "the index built at once from 300 items");
        assert_eq!(late.sku_items(tenant, "SKU").len(), 300);
        assert_eq!(early.sku_location_count(TenantId(6), "SKU"), 300);
        assert_eq!(early.sku_location_count(tenant, "OTHER"), 0);
    }

    #[test]
    fn names_fill_several_pages_and_every_item_is_found_again() {
        let mut shard = ShardItems::default();
        let name = |number: usize| (format!("{number:0>64}"), format!("L{}", number % 7));
        let items = 2_000;
        for number in 0..items {
            let tenant = TenantId((number % 3) as u32);
            let (sku, location) = name(number);
            assert_eq!(shard.insert(tenant, &sku, &location), Some(number as u32));
        }
        // 1 + 2 + 64 + 2 bytes per item (a tenant id below 128 takes one byte): about 949 per page.
        assert_eq!(shard.names.pages.len(), items.div_ceil(NAME_PAGE_BYTES / 69));
        for number in 0..items {
            let tenant = TenantId((number % 3) as u32);
            let (sku, location) = name(number);
            let index = number as u32;
            assert_eq!(shard.find(tenant, &sku, &location), Some(index));
            assert_eq!((shard.sku(index), shard.location(index)), (sku.as_str(), location.as_str()));
            assert_eq!(shard.key(index).tenant, tenant);
            // Another tenant's item of the same names is another item.
            let other = TenantId(9);
            assert_eq!(shard.find(other, &sku, &location), None);
        }
        let (sku, location) = name(5);
        let tenant = TenantId(2);
        assert_eq!(shard.insert_if_absent(tenant, &sku, &location), Some(Err(ItemPresent)));
        let placed = shard.insert_if_absent(TenantId(9), &sku, &location);
        assert_eq!(placed, Some(Ok(items as u32)));
        assert_eq!(shard.tenant_items(TenantId(9), None).expect("first").collect::<Vec<_>>(), [items as u32]);
        assert_eq!(shard.len(), items + 1);
    }

    /// The tenant id in a name entry, at each width of its LEB128 (1, 2 and 3 bytes) up to
    /// `TENANTS_MAX` - 1: every item reads back its own tenant, and one tenant never finds
    /// another's item of the same names (the tenant left the cell for the names, to give the
    /// cell's spare word to where the names are).
    #[test]
    fn tenant_ids_of_every_width_come_back_from_the_name_entries() {
        let tenants = [0, 1, 127, 128, 16_383, 16_384, TENANTS_MAX as u32 - 1];
        let mut shard = ShardItems::default();
        let mut used = 0;
        for (index, &tenant) in tenants.iter().enumerate() {
            assert_eq!(shard.insert(TenantId(tenant), "SKU", "L"), Some(index as u32));
            let width = shard.names.last_used - used - 2 - "SKU".len() - "L".len();
            used = shard.names.last_used;
            assert_eq!(width, [1, 1, 1, 2, 2, 3, 3][index], "tenant {tenant}");
        }
        for (index, &tenant) in tenants.iter().enumerate() {
            let index = index as u32;
            assert_eq!(shard.key(index).tenant, TenantId(tenant));
            assert_eq!((shard.sku(index), shard.location(index)), ("SKU", "L"));
            assert_eq!(shard.find(TenantId(tenant), "SKU", "L"), Some(index));
            assert_eq!(shard.tenant_items(TenantId(tenant), None).expect("first").collect::<Vec<_>>(), [index]);
            // An item of another tenant does not start this tenant's walk.
            let other = (index + 1) % tenants.len() as u32;
            assert!(shard.tenant_items(TenantId(tenant), Some(other)).is_none());
        }
        assert_eq!(shard.find(TenantId(2), "SKU", "L"), None);
        assert_eq!(shard.find(TenantId(TENANTS_MAX as u32), "SKU", "L"), None, "past TENANTS_MAX: none, no panic");
        assert!(shard.tenant_items(TenantId(0), Some(tenants.len() as u32)).is_none(), "past the end");
        // The compare a lookup makes of each candidate, directly (the hash includes the tenant,
        // so `find` alone seldom compares against another tenant's entry): equal names of
        // another tenant are another entry.
        for (index, _) in tenants.iter().enumerate() {
            for (other, &tenant) in tenants.iter().enumerate() {
                let mut buffer = [0u8; NAME_ENTRY_BYTES_MAX];
                let length = encode_entry(TenantId(tenant), "SKU", "L", &mut buffer);
                assert_eq!(
                    shard.is(index as u32, &buffer[..length]),
                    index == other,
                    "item {index} as tenant {tenant}"
                );
            }
        }
    }

    /// Regression: the in-shard index hashed FNV(FNV(tenant, sku), location), which anyone can
    /// compute, so a tenant could make locations that all start their probe at one place of
    /// the index (and, with more work, collide outright) and slow every lookup and insert that
    /// crosses them. Under the shard's own random key such names spread like any others.
    #[test]
    fn names_aimed_at_one_place_of_the_index_spread_under_its_key() {
        let tenant = TenantId(3);
        let buckets = 512u64;
        let fnv_item_hash = |location: &str| {
            let sku = Fnv64::new().u64(u64::from(tenant.0)).str("SKU").finish();
            Fnv64::new().u64(sku).str(location).finish()
        };
        // What an attacker computes offline: 200 locations of one SKU in FNV's bucket 0 of 512.
        let aimed: Vec<String> =
            (0u64..).map(|n| format!("L{n}")).filter(|l| fnv_item_hash(l) % buckets == 0).take(200).collect();
        let mut shard = ShardItems::default();
        for location in &aimed {
            shard.insert(tenant, "SKU", location).expect("room");
        }
        let placed: Vec<u64> =
            aimed.iter().map(|location| shard.item_hash(tenant, b"SKU", location.as_bytes()) % buckets).collect();
        let distinct: std::collections::BTreeSet<u64> = placed.iter().copied().collect();
        // 200 keys over 512 buckets at random take ~165; fewer than 120 is a ~1e-9 event.
        assert!(distinct.len() >= 120, "aimed names took only {} of {buckets} buckets", distinct.len());
        let other = ShardItems::default();
        let elsewhere: Vec<u64> =
            aimed.iter().map(|location| other.item_hash(tenant, b"SKU", location.as_bytes()) % buckets).collect();
        assert_ne!(placed, elsewhere, "two shards hashed 200 names alike: the key is not random");
        for (index, location) in aimed.iter().enumerate() {
            assert_eq!(shard.find(tenant, "SKU", location), Some(index as u32));
        }
        assert_eq!(shard.sku_items(tenant, "SKU").len(), aimed.len());
    }
}
