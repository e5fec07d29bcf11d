//! Newtypes, validated names and the named limits of the engine.

use std::fmt;

/// Bytes in a tenant, SKU, location, reservation id or operation id.
pub const NAME_BYTES_MAX: usize = 64;
/// Lines in one reservation (and in one commit or release naming lines).
pub const LINES_PER_RESERVATION_MAX: usize = 64;
/// Rows in one import command.
pub const IMPORT_ROWS_MAX: usize = 10_000;
/// The largest quantity one line or one stock operation may carry.
pub const QUANTITY_MAX: i64 = 1 << 40;
/// The largest on_hand or reserved an item may hold.
/// Far below `i64::MAX`, so that sums of a few of them never overflow.
pub const STOCK_MAX: i64 = 1 << 50;
/// The largest safety stock or backorder limit an item may hold: 32 bits each, so both share
/// one word of the item's cell (8 bytes an item less: 80 MB at 10 M items). Four billion
/// units held back, or promised below zero, on one item at one location is far past any
/// warehouse's; on_hand and reserved keep the range of [`STOCK_MAX`].
pub const POLICY_MAX: i64 = u32::MAX as i64;
/// Shortest and longest reservation time to live.
pub const TTL_MS_MIN: u64 = 1_000;
pub const TTL_MS_MAX: u64 = 30 * 24 * 3_600_000;
/// Tenants one engine holds.
pub const TENANTS_MAX: usize = 1 << 20;
/// Items one shard holds (ids are `u32` inside a shard).
pub const ITEMS_PER_SHARD_MAX: usize = 1 << 31;
/// Locations one SKU of a tenant may have. Every location of a SKU is in one shard (the
/// shard hash is the SKU's), and a query of the SKU walks them: without a bound one tenant's
/// SKU could take a shard's whole name space (4 GiB: every other tenant's new items there
/// refused) and one `get_sku` held the shard's lock for seconds (regression, review, eleventh
/// session). 100,000 is past any SKU's warehouses and bins.
pub const LOCATIONS_PER_SKU_MAX: usize = 100_000;
/// The default of `Engine::set_items_per_tenant_max`: 2^24 items (~2.5 GB of RAM at most, and
/// with names of 64 bytes, below half a shard's name space, so that no tenant alone can fill
/// one).
pub const ITEMS_PER_TENANT_MAX_DEFAULT: u32 = 1 << 24;
/// Shards: a power of two between these.
pub const SHARDS_MIN: usize = 1;
pub const SHARDS_MAX: usize = 1 << 16;
/// Items one page of a tenant listing returns.
pub const PAGE_ITEMS_MAX: usize = 10_000;
/// Reservations one expiry sweep releases (the caller loops while more are due).
pub const EXPIRE_BATCH_MAX: usize = 4_096;

/// A tenant, interned. Assigned in creation order from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub u32);

/// A stock item (tenant, SKU, location), interned: its shard and its index inside the shard.
/// Stable for the life of the data directory: the WAL refers to items by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId {
    pub shard: u32,
    pub index: u32,
}

impl ItemId {
    pub fn to_u64(self) -> u64 {
        (u64::from(self.shard) << 32) | u64::from(self.index)
    }
    pub fn from_u64(value: u64) -> ItemId {
        ItemId { shard: (value >> 32) as u32, index: value as u32 }
    }
}

/// A log sequence number: the position of an effect record in the log. Starts at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

/// A positive quantity of units, at most [`QUANTITY_MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quantity(i64);

impl Quantity {
    pub fn new(units: i64) -> Result<Quantity, NameError> {
        if units <= 0 {
            return Err(NameError::QuantityNotPositive);
        }
        if units > QUANTITY_MAX {
            return Err(NameError::QuantityTooLarge);
        }
        Ok(Quantity(units))
    }
    pub fn get(self) -> i64 {
        self.0
    }
}

/// Why a name or quantity was refused at the API boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    NotPrintable,
    QuantityNotPositive,
    QuantityTooLarge,
}

/// A validated name: non-empty, at most [`NAME_BYTES_MAX`] bytes of UTF-8 with no control
/// characters and no white space.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Box<str>);

impl Name {
    pub fn new(text: &str) -> Result<Name, NameError> {
        validate_name(text)?;
        Ok(Name(text.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn validate_name(text: &str) -> Result<(), NameError> {
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if text.len() > NAME_BYTES_MAX {
        return Err(NameError::TooLong);
    }
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(NameError::NotPrintable);
    }
    Ok(())
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! name_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Name);
        impl $name {
            pub fn new(text: &str) -> Result<$name, NameError> {
                Name::new(text).map($name)
            }
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

name_newtype!(
    /// A stock keeping unit, as the tenant names it.
    Sku
);
name_newtype!(
    /// A location (warehouse, zone, bin) as the tenant names it.
    Location
);
name_newtype!(
    /// The client-chosen id of a reservation; also its idempotency key.
    ReservationId
);
name_newtype!(
    /// The client-chosen idempotency key of a mutation other than `reserve`.
    OperationId
);

/// 64-bit FNV-1a. Used where a hash must never change (it decides an item's shard, which the
/// WAL records) and for request fingerprints. Do not replace it without a data migration.
#[derive(Clone, Copy)]
pub struct Fnv64(u64);

impl Fnv64 {
    pub const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    pub const PRIME: u64 = 0x0000_0100_0000_01b3;
    pub fn new() -> Fnv64 {
        Fnv64(Self::OFFSET)
    }
    #[inline]
    pub fn bytes(mut self, bytes: &[u8]) -> Fnv64 {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
        self
    }
    /// A string, length-prefixed so that ("ab","c") and ("a","bc") differ.
    #[inline]
    pub fn str(self, text: &str) -> Fnv64 {
        self.u64(text.len() as u64).bytes(text.as_bytes())
    }
    #[inline]
    pub fn u64(self, value: u64) -> Fnv64 {
        self.bytes(&value.to_le_bytes())
    }
    #[inline]
    pub fn i64(self, value: i64) -> Fnv64 {
        self.bytes(&value.to_le_bytes())
    }
    pub fn finish(self) -> u64 {
        self.0
    }
}

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert_eq!(Name::new("").unwrap_err(), NameError::Empty);
        assert_eq!(Name::new(&"x".repeat(65)).unwrap_err(), NameError::TooLong);
        assert!(Name::new(&"x".repeat(64)).is_ok());
        assert_eq!(Name::new("a b").unwrap_err(), NameError::NotPrintable);
        assert_eq!(Name::new("a\u{7}").unwrap_err(), NameError::NotPrintable);
        assert!(Name::new("SKU-ÄÖ-1").is_ok());
        assert_eq!(Quantity::new(0).unwrap_err(), NameError::QuantityNotPositive);
        assert_eq!(Quantity::new(QUANTITY_MAX + 1).unwrap_err(), NameError::QuantityTooLarge);
    }

    #[test]
    fn fnv_is_the_documented_function() {
        // Regression: the shard of an item is persisted; this value must never change.
        assert_eq!(Fnv64::new().bytes(b"a").finish(), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(ItemId::from_u64(ItemId { shard: 7, index: 9 }.to_u64()), ItemId { shard: 7, index: 9 });
    }
}
