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
use crate::types::{Fnv64, ItemId, TenantId, ITEMS_PER_SHARD_MAX, TENANTS_MAX};

/// Items per chunk of a shard.
pub const CHUNK_ITEMS: usize = 1024;
/// Bytes per page of a shard's names. A page is allocated whole and never grows or moves, so
/// adding an item never copies the names already stored (a doubling `Vec` copied half a
/// megabyte per shard at 10 M items, under the shard's write lock, and left the old buffer
/// behind as fragmentation).
pub const NAME_PAGE_BYTES: usize = 64 * 1024;
/// The most bytes one item's names take in a page: two length bytes and two names of at most
/// 255 bytes (the engine's own limit is 64).
const NAME_ENTRY_BYTES_MAX: usize = 2 + 2 * u8::MAX as usize;

const _: () = assert!(NAME_ENTRY_BYTES_MAX <= NAME_PAGE_BYTES);
const _: () = assert!(std::mem::size_of::<Slot>() == 48, "an item slot changed size: update docs/benchmarks.md");

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

/// Whose item it is, and where its names are kept in its shard's name pages.
#[derive(Clone, Copy, Debug)]
pub struct ItemKey {
    pub tenant: TenantId,
    /// Page * `NAME_PAGE_BYTES` + position: the SKU's length byte, the location's, then the
    /// SKU's bytes and the location's.
    names: u32,
}

/// One item: its counters and its key, side by side (one allocation per chunk, no separate
/// key vector to grow).
#[derive(Debug, Default)]
struct Slot {
    cell: ItemCell,
    key: ItemKey,
}

impl Default for ItemKey {
    fn default() -> ItemKey {
        ItemKey { tenant: TenantId(0), names: 0 }
    }
}

/// The names of the items of one shard, in fixed pages.
#[derive(Default)]
struct Names {
    pages: Vec<Box<[u8]>>,
    /// Bytes used in the last page.
    last_used: usize,
}

impl Names {
    /// The SKU and location bytes at `at`.
    fn get(&self, at: u32) -> (&[u8], &[u8]) {
        let at = at as usize;
        let page = &self.pages[at / NAME_PAGE_BYTES];
        let start = at % NAME_PAGE_BYTES;
        let (sku_len, location_len) = (page[start] as usize, page[start + 1] as usize);
        let sku = &page[start + 2..start + 2 + sku_len];
        (sku, &page[start + 2 + sku_len..start + 2 + sku_len + location_len])
    }

    /// Stores the names; `None` when the position would not fit the 32-bit key.
    fn push(&mut self, sku: &str, location: &str) -> Option<u32> {
        assert!(sku.len() <= u8::MAX as usize && location.len() <= u8::MAX as usize, "names over 255 bytes");
        let entry_bytes = 2 + sku.len() + location.len();
        if self.pages.is_empty() || self.last_used + entry_bytes > NAME_PAGE_BYTES {
            if (self.pages.len() + 1) * NAME_PAGE_BYTES > u32::MAX as usize {
                return None;
            }
            self.pages.push(vec![0u8; NAME_PAGE_BYTES].into_boxed_slice());
            self.last_used = 0;
        }
        let page_index = self.pages.len() - 1;
        let start = self.last_used;
        let page = &mut self.pages[page_index];
        page[start] = sku.len() as u8;
        page[start + 1] = location.len() as u8;
        page[start + 2..start + 2 + sku.len()].copy_from_slice(sku.as_bytes());
        page[start + 2 + sku.len()..start + entry_bytes].copy_from_slice(location.as_bytes());
        self.last_used += entry_bytes;
        let at = (page_index * NAME_PAGE_BYTES + start) as u32;
        debug_assert_eq!(self.get(at), (sku.as_bytes(), location.as_bytes()));
        Some(at)
    }

    fn heap_bytes(&self) -> usize {
        self.pages.len() * NAME_PAGE_BYTES + self.pages.capacity() * std::mem::size_of::<Box<[u8]>>()
    }
}

#[derive(Default)]
pub struct ShardItems {
    chunks: Vec<Box<[Slot]>>,
    len: usize,
    names: Names,
    /// (tenant, sku, location) -> index.
    index: HashTable<u32>,
    /// Per tenant, its items in creation order (for paging).
    by_tenant: hashbrown::HashMap<TenantId, Vec<u32>>,
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

    fn slot(&self, index: u32) -> &Slot {
        let index = index as usize;
        assert!(index < self.len, "item index {index} out of range");
        &self.chunks[index / CHUNK_ITEMS][index % CHUNK_ITEMS]
    }

    pub fn cell(&self, index: u32) -> &ItemCell {
        &self.slot(index).cell
    }

    pub fn key(&self, index: u32) -> ItemKey {
        self.slot(index).key
    }

    pub fn sku(&self, index: u32) -> &str {
        std::str::from_utf8(self.names.get(self.slot(index).key.names).0).expect("utf-8 key")
    }

    pub fn location(&self, index: u32) -> &str {
        std::str::from_utf8(self.names.get(self.slot(index).key.names).1).expect("utf-8 key")
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
        let key = self.slot(index).key;
        let (sku, location) = self.names.get(key.names);
        self.item_hash(key.tenant, sku, location)
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
    fn is(&self, index: u32, tenant: TenantId, sku: &str, location: &str) -> bool {
        let key = self.slot(index).key;
        key.tenant == tenant && self.names.get(key.names) == (sku.as_bytes(), location.as_bytes())
    }

    pub fn find(&self, tenant: TenantId, sku: &str, location: &str) -> Option<u32> {
        let hash = self.item_hash(tenant, sku.as_bytes(), location.as_bytes());
        self.index.find(hash, |&index| self.is(index, tenant, sku, location)).copied()
    }

    pub fn tenant_items(&self, tenant: TenantId) -> &[u32] {
        self.by_tenant.get(&tenant).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The per-SKU index's hash of the SKU of the item at `index`, from its stored key.
    fn sku_key_hash_of(&self, index: u32) -> u64 {
        let key = self.slot(index).key;
        self.sku_key_hash(key.tenant, self.names.get(key.names).0)
    }

    /// Whether the item at `index` is a location of (tenant, sku).
    fn is_sku(&self, index: u32, tenant: TenantId, sku: &[u8]) -> bool {
        let key = self.slot(index).key;
        key.tenant == tenant && self.names.get(key.names).0 == sku
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

    /// Adds the item at `index` to `table` as the next location of its SKU.
    fn index_by_sku(&self, table: &mut HashTable<SkuEntry>, index: u32) {
        let key = self.slot(index).key;
        let sku = self.names.get(key.names).0;
        let sku_key_hash = self.sku_key_hash(key.tenant, sku);
        let ordinal = self.sku_items_in(table, key.tenant, sku, sku_key_hash).len() as u32;
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
        let table = self.by_sku.get_or_init(|| {
            let mut table = HashTable::with_capacity(self.len);
            for index in 0..self.len as u32 {
                self.index_by_sku(&mut table, index);
            }
            table
        });
        debug_assert_eq!(table.len(), self.len, "the per-SKU index holds every item");
        let items = self.sku_items_in(table, tenant, sku.as_bytes(), self.sku_key_hash(tenant, sku.as_bytes()));
        debug_assert!(items.windows(2).all(|pair| pair[0] < pair[1]), "locations in creation order");
        items
    }

    /// Appends the slot of a new item (not yet in the index). `None` when the shard is full.
    fn push(&mut self, tenant: TenantId, sku: &str, location: &str) -> Option<u32> {
        if self.len >= ITEMS_PER_SHARD_MAX {
            return None;
        }
        let names = self.names.push(sku, location)?;
        let index = self.len as u32;
        if self.len % CHUNK_ITEMS == 0 {
            let chunk: Vec<Slot> = (0..CHUNK_ITEMS).map(|_| Slot::default()).collect();
            self.chunks.push(chunk.into_boxed_slice());
        }
        self.chunks[self.len / CHUNK_ITEMS][self.len % CHUNK_ITEMS].key = ItemKey { tenant, names };
        self.len += 1;
        self.by_tenant.entry(tenant).or_default().push(index);
        if let Some(mut table) = self.by_sku.take() {
            self.index_by_sku(&mut table, index);
            self.by_sku = std::sync::OnceLock::from(table);
        }
        debug_assert_eq!(self.cell(index).read(), Counters::default());
        Some(index)
    }

    /// Appends an item. The caller holds the shard's write lock and has checked it is absent.
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
    /// restore, where a repeated item means a corrupt file). `None` when the shard is full.
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
        let mut index_table = std::mem::take(&mut self.index);
        let entry =
            index_table.entry(hash, |&other| self.is(other, tenant, sku, location), |&other| self.rehash(other));
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

    /// Makes room for `items` more items with `name_bytes` more name bytes, so that a restore
    /// grows nothing item by item (regression: rehashing while 10 M items were restored one
    /// by one was a tenth of a cold start).
    pub fn reserve(&mut self, items: usize, name_bytes: usize) {
        self.chunks.reserve(items.div_ceil(CHUNK_ITEMS));
        self.names.pages.reserve(name_bytes.div_ceil(NAME_PAGE_BYTES - NAME_ENTRY_BYTES_MAX));
        let mut index_table = std::mem::take(&mut self.index);
        index_table.reserve(items, |&other| self.rehash(other));
        self.index = index_table;
    }

    /// Heap bytes this shard holds (for the memory benchmark): slots, names, the index and
    /// the per-tenant lists with their map.
    pub fn heap_bytes(&self) -> usize {
        let by_tenant_entry = std::mem::size_of::<(TenantId, Vec<u32>)>() + 1;
        self.chunks.len() * CHUNK_ITEMS * std::mem::size_of::<Slot>()
            + self.chunks.capacity() * std::mem::size_of::<Box<[Slot]>>()
            + self.names.heap_bytes()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.by_tenant.capacity() * by_tenant_entry
            + self.by_tenant.values().map(|v| v.capacity() * 4).sum::<usize>()
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
            shard.tenant_items(tenant).iter().copied().filter(|&index| shard.sku(index) == sku).collect()
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
        // 2 + 64 + 2 bytes per item: about 963 per page.
        assert_eq!(shard.names.pages.len(), items.div_ceil(NAME_PAGE_BYTES / 68));
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
        assert_eq!(shard.tenant_items(TenantId(9)), &[items as u32]);
        assert_eq!(shard.len(), items + 1);
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
