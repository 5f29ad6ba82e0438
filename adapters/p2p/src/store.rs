//! The Kademlia record store: provider records only, bounded.
//!
//! speil uses the DHT for provider records (who holds a key) and never for values, so a
//! `PUT_VALUE` is refused: nothing is stored and the sender gets no confirmation. Provider
//! records that other peers announce are bounded in number ([`StoreLimits::max_records`]), per
//! key (the replication factor, 20) and in the addresses each carries
//! ([`StoreLimits::max_addresses`]), so that a flood cannot grow the node's memory without
//! bound. When the store is full, expired records are dropped first; if none has expired, the
//! new record is refused (the sender cannot push out records that are already held). The keys
//! this node provides itself are kept apart, so that a full store never stops it from
//! announcing its own content.

use std::borrow::Cow;
use std::collections::{HashMap, hash_map};
use std::iter;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};

/// The bounds of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most provider records of other peers kept, over all keys.
    pub max_records: usize,
    /// Most providers kept per key (beyond it, new providers of that key are ignored).
    pub max_providers_per_key: usize,
    /// Most addresses kept per provider record (the rest are dropped).
    pub max_addresses: usize,
    /// Most keys this node provides itself.
    pub max_provided_keys: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_records: 100_000,
            max_providers_per_key: 20,
            max_addresses: 4,
            max_provided_keys: 1 << 20,
        }
    }
}

/// Provider records, bounded (see the module docs).
#[derive(Debug)]
pub struct Store {
    local: PeerId,
    limits: StoreLimits,
    /// Other peers' provider records per key.
    providers: HashMap<RecordKey, Vec<ProviderRecord>>,
    /// How many records `providers` holds.
    records: usize,
    /// This node's own provider records.
    provided: HashMap<RecordKey, ProviderRecord>,
}

impl Store {
    /// An empty store for the node `local`.
    pub fn new(local: PeerId, limits: StoreLimits) -> Store {
        Store {
            local,
            limits,
            providers: HashMap::new(),
            records: 0,
            provided: HashMap::new(),
        }
    }

    /// Provider records of other peers held now.
    pub fn other_records(&self) -> usize {
        self.records
    }

    /// Drops every expired record of other peers.
    fn sweep(&mut self, now: Instant) {
        let mut dropped = 0;
        self.providers.retain(|_, records| {
            let before = records.len();
            records.retain(|r| !r.is_expired(now));
            dropped += before - records.len();
            !records.is_empty()
        });
        self.records -= dropped;
    }
}

type RecordsIter<'a> = iter::Empty<Cow<'a, Record>>;
type ProvidedIter<'a> = iter::Map<
    hash_map::Values<'a, RecordKey, ProviderRecord>,
    fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
>;

impl RecordStore for Store {
    type RecordsIter<'a> = RecordsIter<'a>;
    type ProvidedIter<'a> = ProvidedIter<'a>;

    fn get(&self, _: &RecordKey) -> Option<Cow<'_, Record>> {
        None
    }

    /// Values are never stored: speil does not use them.
    fn put(&mut self, _: Record) -> Result<()> {
        Err(Error::MaxRecords)
    }

    fn remove(&mut self, _: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        iter::empty()
    }

    fn add_provider(&mut self, mut record: ProviderRecord) -> Result<()> {
        record.addresses.truncate(self.limits.max_addresses);
        if record.provider == self.local {
            let known = self.provided.contains_key(&record.key);
            if !known && self.provided.len() >= self.limits.max_provided_keys {
                return Err(Error::MaxProvidedKeys);
            }
            self.provided.insert(record.key.clone(), record);
            return Ok(());
        }
        if let Some(records) = self.providers.get_mut(&record.key) {
            if let Some(r) = records.iter_mut().find(|r| r.provider == record.provider) {
                *r = record;
                return Ok(());
            }
            if records.len() >= self.limits.max_providers_per_key {
                // As Kademlia's own store does: a full key ignores new providers.
                return Ok(());
            }
        }
        if self.records >= self.limits.max_records {
            self.sweep(Instant::now());
            if self.records >= self.limits.max_records {
                return Err(Error::MaxRecords);
            }
        }
        self.providers
            .entry(record.key.clone())
            .or_default()
            .push(record);
        self.records += 1;
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let mut all: Vec<ProviderRecord> = self.provided.get(key).cloned().into_iter().collect();
        if let Some(records) = self.providers.get(key) {
            all.extend(records.iter().cloned());
        }
        all
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.provided.values().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        if *provider == self.local {
            self.provided.remove(key);
            return;
        }
        if let hash_map::Entry::Occupied(mut e) = self.providers.entry(key.clone()) {
            let before = e.get().len();
            e.get_mut().retain(|r| r.provider != *provider);
            self.records -= before - e.get().len();
            if e.get().is_empty() {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::Multiaddr;

    use super::*;

    fn record(key: u32, provider: PeerId, expires: Option<Instant>) -> ProviderRecord {
        ProviderRecord {
            key: RecordKey::new(&key.to_be_bytes()),
            provider,
            expires,
            addresses: (0..10u16)
                .map(|p| {
                    format!("/ip4/192.0.2.1/tcp/{p}")
                        .parse::<Multiaddr>()
                        .unwrap()
                })
                .collect(),
        }
    }

    fn limits() -> StoreLimits {
        StoreLimits {
            max_records: 100,
            max_providers_per_key: 3,
            max_addresses: 4,
            max_provided_keys: 10,
        }
    }

    /// The defaults against a cluster: with the replication factor of 20, a node of a
    /// cluster of at most 20 nodes holds every node's records (a larger cluster spreads them:
    /// each node holds about 20/N of them). 20 nodes announcing 5,000 keys each (a few hundred
    /// images of a dozen blobs) fit, and a record is small enough that the bound is tens of
    /// MiB, not the GiBs of the store it replaced (1,048,576 keys × 20 providers × any number
    /// of addresses).
    #[test]
    fn the_defaults_hold_a_cluster_and_bound_memory() {
        let d = StoreLimits::default();
        let (nodes, keys_per_node) = (20usize, 5_000usize);
        assert!(nodes.min(d.max_providers_per_key) * keys_per_node <= d.max_records);
        // A provider record kept: its key (a 32-byte multihash), the provider's id, the expiry
        // and at most `max_addresses` addresses of at most 64 bytes, with the vectors' own
        // overhead; measured from the types, not guessed.
        let record = std::mem::size_of::<ProviderRecord>()
            + 64
            + d.max_addresses * (std::mem::size_of::<Multiaddr>() + 64);
        let worst = d.max_records * record;
        assert!(worst < 64 * 1024 * 1024, "{worst} bytes");
    }

    #[test]
    fn values_are_refused() {
        let mut s = Store::new(PeerId::random(), limits());
        let r = Record::new(b"k".to_vec(), b"v".to_vec());
        assert!(s.put(r).is_err());
        assert!(s.get(&RecordKey::new(b"k")).is_none());
        assert_eq!(s.records().count(), 0);
    }

    #[test]
    fn others_records_are_bounded_in_number_per_key_and_in_addresses() {
        let local = PeerId::random();
        let mut s = Store::new(local, limits());
        let later = Some(Instant::now() + Duration::from_secs(3600));
        // A flood of 1,000 keys from many peers: 100 are kept, the rest refused.
        let mut refused = 0;
        for k in 0..1000 {
            if s.add_provider(record(k, PeerId::random(), later)).is_err() {
                refused += 1;
            }
        }
        assert_eq!(s.other_records(), 100);
        assert_eq!(refused, 900);
        // Every record keeps at most 4 addresses.
        assert_eq!(
            s.providers(&RecordKey::new(&0u32.to_be_bytes()))[0]
                .addresses
                .len(),
            4
        );
        // Per key: three providers, then new ones are ignored (not an error).
        let mut s = Store::new(local, limits());
        for _ in 0..10 {
            s.add_provider(record(7, PeerId::random(), later)).unwrap();
        }
        assert_eq!(s.providers(&RecordKey::new(&7u32.to_be_bytes())).len(), 3);
        assert_eq!(s.other_records(), 3);
        // A provider that announces again replaces its record.
        let p = s.providers(&RecordKey::new(&7u32.to_be_bytes()))[0].provider;
        s.add_provider(record(7, p, later)).unwrap();
        assert_eq!(s.other_records(), 3);
        s.remove_provider(&RecordKey::new(&7u32.to_be_bytes()), &p);
        assert_eq!(s.other_records(), 2);
    }

    #[test]
    fn a_full_store_drops_expired_records_and_never_blocks_own_keys() {
        let local = PeerId::random();
        let mut s = Store::new(local, limits());
        let past = Some(Instant::now() - Duration::from_secs(1));
        let later = Some(Instant::now() + Duration::from_secs(3600));
        for k in 0..100 {
            s.add_provider(record(k, PeerId::random(), past)).unwrap();
        }
        assert_eq!(s.other_records(), 100);
        // Full of expired records: they make room.
        s.add_provider(record(1000, PeerId::random(), later))
            .unwrap();
        assert_eq!(s.other_records(), 1);
        for k in 0..99 {
            s.add_provider(record(2000 + k, PeerId::random(), later))
                .unwrap();
        }
        // Full of live records: a new one is refused, own keys still go in.
        assert!(
            s.add_provider(record(5000, PeerId::random(), later))
                .is_err()
        );
        for k in 0..10 {
            s.add_provider(record(k, local, None)).unwrap();
        }
        assert_eq!(s.provided().count(), 10);
        assert!(s.add_provider(record(99, local, None)).is_err());
        // Own records are found with the others.
        let key = RecordKey::new(&1000u32.to_be_bytes());
        s.add_provider(record(1000, local, None)).unwrap_err();
        assert_eq!(s.providers(&key).len(), 1);
        s.remove_provider(&RecordKey::new(&3u32.to_be_bytes()), &local);
        assert_eq!(s.provided().count(), 9);
    }
}
