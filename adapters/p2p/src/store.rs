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
//!
//! A record of another peer is kept small (about 100 bytes besides its key): the provider's id
//! and addresses are kept once per provider, not once per record (a provider's records carry
//! the addresses it announced last), and the expiry is whole seconds. A full store refuses a
//! record without looking at the others: it looks for expired records only once the earliest
//! expiry has passed, and then at most once per [`StoreLimits::sweep_every`], so a flood against a full
//! store costs constant time per record.

use std::borrow::Cow;
use std::collections::{HashMap, hash_map};
use std::iter;
use std::time::{Duration, Instant};

use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::{Multiaddr, PeerId};

pub use speil_core::limits::StoreLimits;

/// One provider of a key: its index in [`Peers`] and when the record expires, in whole
/// seconds after the store's epoch (`u32::MAX`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    peer: u32,
    expires: u32,
}

/// The providers of one key; most keys have one, so that one needs no allocation of its own.
#[derive(Debug)]
enum Holders {
    One(Entry),
    Many(Vec<Entry>),
}

impl Holders {
    fn as_slice(&self) -> &[Entry] {
        match self {
            Holders::One(e) => std::slice::from_ref(e),
            Holders::Many(v) => v,
        }
    }

    fn push(&mut self, e: Entry) {
        match self {
            Holders::One(first) => *self = Holders::Many(vec![*first, e]),
            Holders::Many(v) => v.push(e),
        }
    }

    /// Keeps the entries `keep` accepts; returns the ones dropped. The caller removes the key
    /// when none is left.
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) -> Vec<Entry> {
        match self {
            Holders::One(e) if keep(e) => Vec::new(),
            Holders::One(e) => {
                let dropped = vec![*e];
                *self = Holders::Many(Vec::new());
                dropped
            }
            Holders::Many(v) => {
                let mut dropped = Vec::new();
                v.retain(|e| {
                    let k = keep(e);
                    if !k {
                        dropped.push(*e);
                    }
                    k
                });
                if v.len() == 1 {
                    *self = Holders::One(v[0]);
                }
                dropped
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

/// A provider the records name: its id, the addresses it announced last, and how many
/// records name it.
#[derive(Debug)]
struct Peer {
    id: PeerId,
    addresses: Vec<Multiaddr>,
    records: u32,
}

/// The providers of the records, each kept once; a provider no record names is dropped.
#[derive(Debug, Default)]
struct Peers {
    slots: Vec<Peer>,
    index: HashMap<PeerId, u32>,
    free: Vec<u32>,
}

impl Peers {
    /// The slot of `id`, with `addresses` as its addresses when any are given.
    fn slot(&mut self, id: PeerId, addresses: Vec<Multiaddr>) -> u32 {
        if let Some(&i) = self.index.get(&id) {
            if !addresses.is_empty() {
                self.slots[i as usize].addresses = addresses;
            }
            return i;
        }
        let peer = Peer {
            id,
            addresses,
            records: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = peer;
                i
            }
            None => {
                self.slots.push(peer);
                u32::try_from(self.slots.len() - 1).expect("fewer peers than records")
            }
        };
        self.index.insert(id, i);
        i
    }

    /// Counts one more record naming slot `i`.
    fn hold(&mut self, i: u32) {
        self.slots[i as usize].records += 1;
    }

    /// Counts one record fewer naming slot `i`; the last one frees the slot.
    fn release(&mut self, i: u32) {
        let peer = &mut self.slots[i as usize];
        peer.records -= 1;
        if peer.records == 0 {
            self.index.remove(&peer.id);
            peer.addresses = Vec::new();
            self.free.push(i);
        }
    }

    fn get(&self, i: u32) -> &Peer {
        &self.slots[i as usize]
    }
}

/// Whether a record expiring at `expires` (epoch seconds, `u32::MAX`: never) has expired at
/// `now`.
fn expired(expires: u32, now: u32) -> bool {
    expires != u32::MAX && expires <= now
}

/// Provider records, bounded (see the module docs).
#[derive(Debug)]
pub struct Store {
    local: PeerId,
    limits: StoreLimits,
    /// Expiries are counted in seconds from here.
    epoch: Instant,
    /// Other peers' provider records per key.
    providers: HashMap<RecordKey, Holders>,
    /// How many records `providers` holds.
    records: usize,
    /// The providers `providers` names.
    peers: Peers,
    /// No record of `providers` expires before this (in the epoch's seconds).
    earliest: u32,
    /// When a full store last looked for expired records.
    last_sweep: Option<Instant>,
    /// How often it did.
    sweeps: u64,
    /// This node's own provider records.
    provided: HashMap<RecordKey, ProviderRecord>,
}

impl Store {
    /// An empty store for the node `local`.
    pub fn new(local: PeerId, limits: StoreLimits) -> Store {
        Store {
            local,
            limits,
            epoch: Instant::now(),
            providers: HashMap::new(),
            records: 0,
            peers: Peers::default(),
            earliest: u32::MAX,
            last_sweep: None,
            sweeps: 0,
            provided: HashMap::new(),
        }
    }

    /// Provider records of other peers held now.
    pub fn other_records(&self) -> usize {
        self.records
    }

    /// Providers the records of other peers name.
    pub fn providers_named(&self) -> usize {
        self.peers.index.len()
    }

    /// `at` in whole seconds after the epoch, rounded up (`u32::MAX`: never).
    fn seconds(&self, at: Option<Instant>) -> u32 {
        match at {
            None => u32::MAX,
            Some(at) => {
                let d = at.saturating_duration_since(self.epoch);
                let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                u32::try_from(s).unwrap_or(u32::MAX - 1)
            }
        }
    }

    fn instant(&self, seconds: u32) -> Option<Instant> {
        (seconds != u32::MAX).then(|| self.epoch + Duration::from_secs(u64::from(seconds)))
    }

    /// Drops every expired record of other peers.
    fn sweep(&mut self, now: Instant) {
        let now = self.seconds(Some(now));
        let mut dropped = Vec::new();
        let mut earliest = u32::MAX;
        self.providers.retain(|_, holders| {
            dropped.extend(holders.retain(|e| {
                let live = !expired(e.expires, now);
                if live {
                    earliest = earliest.min(e.expires);
                }
                live
            }));
            !holders.is_empty()
        });
        self.records -= dropped.len();
        for e in dropped {
            self.peers.release(e.peer);
        }
        self.earliest = earliest;
    }

    /// Makes room in a full store if a record has expired: looks only once the earliest
    /// expiry has passed, and at most once per [`StoreLimits::sweep_every`]. Whether there is room
    /// now.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.records < self.limits.max_records {
            return true;
        }
        let due = expired(self.earliest, self.seconds(Some(now)))
            && self
                .last_sweep
                .is_none_or(|last| now.saturating_duration_since(last) >= self.limits.sweep_every);
        if due {
            self.last_sweep = Some(now);
            self.sweeps += 1;
            self.sweep(now);
        }
        self.records < self.limits.max_records
    }

    fn record_of(&self, key: &RecordKey, e: &Entry) -> ProviderRecord {
        let peer = self.peers.get(e.peer);
        ProviderRecord {
            key: key.clone(),
            provider: peer.id,
            expires: self.instant(e.expires),
            addresses: peer.addresses.clone(),
        }
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

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        self.add_provider_at(record, Instant::now())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let mut all: Vec<ProviderRecord> = self.provided.get(key).cloned().into_iter().collect();
        if let Some(holders) = self.providers.get(key) {
            all.extend(holders.as_slice().iter().map(|e| self.record_of(key, e)));
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
        let Some(&slot) = self.peers.index.get(provider) else {
            return;
        };
        if let hash_map::Entry::Occupied(mut e) = self.providers.entry(key.clone()) {
            let dropped = e.get_mut().retain(|h| h.peer != slot);
            self.records -= dropped.len();
            if e.get().is_empty() {
                e.remove();
            }
            for d in dropped {
                self.peers.release(d.peer);
            }
        }
    }
}

impl Store {
    /// [`RecordStore::add_provider`] at `now`.
    fn add_provider_at(&mut self, mut record: ProviderRecord, now: Instant) -> Result<()> {
        record.addresses.truncate(self.limits.max_addresses);
        if record.provider == self.local {
            let known = self.provided.contains_key(&record.key);
            if !known && self.provided.len() >= self.limits.max_provided_keys {
                return Err(Error::MaxProvidedKeys);
            }
            self.provided.insert(record.key.clone(), record);
            return Ok(());
        }
        let expires = self.seconds(record.expires);
        if let Some(holders) = self.providers.get(&record.key) {
            let known = holders
                .as_slice()
                .iter()
                .position(|e| self.peers.get(e.peer).id == record.provider);
            if let Some(n) = known {
                // A provider that announces again: a new expiry and its latest addresses.
                let peer = self.peers.slot(record.provider, record.addresses);
                let holders = self.providers.get_mut(&record.key).expect("just found");
                match holders {
                    Holders::One(e) => *e = Entry { peer, expires },
                    Holders::Many(v) => v[n] = Entry { peer, expires },
                }
                self.earliest = self.earliest.min(expires);
                return Ok(());
            }
            if holders.as_slice().len() >= self.limits.max_providers_per_key {
                // As Kademlia's own store does: a full key ignores new providers.
                return Ok(());
            }
        }
        if !self.make_room(now) {
            return Err(Error::MaxRecords);
        }
        if !self.peers.index.contains_key(&record.provider)
            && self.peers.index.len() >= self.limits.max_providers
        {
            return Err(Error::MaxRecords);
        }
        let peer = self.peers.slot(record.provider, record.addresses);
        self.peers.hold(peer);
        let entry = Entry { peer, expires };
        match self.providers.entry(record.key) {
            hash_map::Entry::Occupied(mut o) => o.get_mut().push(entry),
            hash_map::Entry::Vacant(v) => {
                v.insert(Holders::One(entry));
            }
        }
        self.records += 1;
        self.earliest = self.earliest.min(expires);
        Ok(())
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
            max_providers: 200,
            max_provided_keys: 10,
            sweep_every: Duration::from_secs(5),
        }
    }

    /// The defaults against a cluster: with the replication factor of 20, a node of a
    /// cluster of at most 20 nodes holds every node's records (a larger cluster spreads them:
    /// each node holds about 20/N of them). 20 nodes announcing 5,000 keys each (a few hundred
    /// images of a dozen blobs) fit. A record costs its key and an entry of 8 bytes; each
    /// provider is kept once, and at most 8,192 of them. Counted from the types: a full store
    /// is under 20 MiB, and under 24 MiB with every provider slot taken.
    #[test]
    fn the_defaults_hold_a_cluster_and_bound_memory() {
        use std::mem::size_of;
        let d = StoreLimits::default();
        let (nodes, keys_per_node) = (20usize, 5_000usize);
        assert!(nodes.min(d.max_providers_per_key) * keys_per_node <= d.max_records);
        // The map's slot (key handle, holders, control byte; a map at most half empty after
        // growing) and the key's bytes (a 34-byte multihash in its own allocation).
        let record = 2 * (size_of::<RecordKey>() + size_of::<Holders>() + 1) + 64;
        assert!(size_of::<Holders>() <= 24, "{}", size_of::<Holders>());
        let cluster = d.max_records * record;
        assert!(cluster < 20 * 1024 * 1024, "{cluster} bytes");
        // A provider: its slot, its index entry and its addresses (of at most 64 bytes).
        let provider = size_of::<Peer>()
            + 2 * (size_of::<PeerId>() + 4 + 1)
            + d.max_addresses * (size_of::<Multiaddr>() + 64);
        let worst = cluster + d.max_providers * provider;
        assert!(worst < 24 * 1024 * 1024, "{worst} bytes");
    }

    /// A full store of live records refuses new ones without looking at the others; once a
    /// record has expired, it looks once and makes room, and then not again within
    /// [`SWEEP_EVERY`].
    #[test]
    fn a_full_store_refuses_in_constant_time() {
        let mut s = Store::new(PeerId::random(), limits());
        let t0 = s.epoch;
        let soon = Some(t0 + Duration::from_secs(60));
        let later = Some(t0 + Duration::from_secs(3600));
        let provider = PeerId::random();
        s.add_provider_at(record(0, provider, soon), t0).unwrap();
        for k in 1..100 {
            s.add_provider_at(record(k, provider, later), t0).unwrap();
        }
        assert_eq!(s.providers_named(), 1, "a provider is kept once");
        for k in 100..10_100 {
            assert!(s.add_provider_at(record(k, provider, later), t0).is_err());
        }
        assert_eq!(s.sweeps, 0, "a full store of live records was searched");
        // Record 0 expired: the next add finds it and takes its place.
        let t1 = t0 + Duration::from_secs(61);
        s.add_provider_at(record(20_000, provider, later), t1)
            .unwrap();
        assert_eq!((s.sweeps, s.other_records()), (1, 100));
        // Full again, nothing expired: no new look within sweep_every, nor after it.
        for k in 0..1_000 {
            let at = t1 + s.limits.sweep_every * 2 * k / 1_000;
            assert!(
                s.add_provider_at(record(30_000 + k, provider, later), at)
                    .is_err()
            );
        }
        assert_eq!(s.sweeps, 1);
        assert!(s.providers(&RecordKey::new(&0u32.to_be_bytes())).is_empty());
        // A provider whose last record goes is forgotten.
        for k in 1..100u32 {
            s.remove_provider(&RecordKey::new(&k.to_be_bytes()), &provider);
        }
        s.remove_provider(&RecordKey::new(&20_000u32.to_be_bytes()), &provider);
        assert_eq!((s.other_records(), s.providers_named()), (0, 0));
    }

    /// Records of providers beyond `max_providers` are refused; known providers still add
    /// records, and a provider slot frees when its last record goes.
    #[test]
    fn providers_are_bounded() {
        let mut s = Store::new(
            PeerId::random(),
            StoreLimits {
                max_providers: 3,
                ..limits()
            },
        );
        let later = Some(s.epoch + Duration::from_secs(3600));
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        let added: Vec<bool> = (0..5u32)
            .map(|k| s.add_provider(record(k, peers[k as usize], later)).is_ok())
            .collect();
        assert_eq!(added, [true, true, true, false, false]);
        s.add_provider(record(10, peers[0], later)).unwrap();
        assert_eq!((s.other_records(), s.providers_named()), (4, 3));
        s.remove_provider(&RecordKey::new(&1u32.to_be_bytes()), &peers[1]);
        s.add_provider(record(3, peers[3], later)).unwrap();
        assert_eq!(s.providers_named(), 3);
    }

    /// A provider's records carry the addresses it announced last, and its record's expiry
    /// is kept to the second (rounded up).
    #[test]
    fn records_carry_their_providers_latest_addresses() {
        let mut s = Store::new(PeerId::random(), limits());
        let t0 = s.epoch;
        let p = PeerId::random();
        let at = |port: u16| -> Multiaddr { format!("/ip4/192.0.2.7/tcp/{port}").parse().unwrap() };
        let expires = t0 + Duration::from_millis(1500);
        let mut r = record(1, p, Some(expires));
        r.addresses = vec![at(1)];
        s.add_provider_at(r, t0).unwrap();
        let mut r = record(2, p, Some(expires));
        r.addresses = vec![at(2), at(3)];
        s.add_provider_at(r, t0).unwrap();
        let mut r = record(3, p, Some(expires));
        r.addresses = Vec::new();
        s.add_provider_at(r, t0).unwrap();
        for k in 1..=3u32 {
            let got = s.providers(&RecordKey::new(&k.to_be_bytes()));
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].provider, p);
            assert_eq!(got[0].addresses, vec![at(2), at(3)], "key {k}");
            assert_eq!(got[0].expires, Some(t0 + Duration::from_secs(2)));
        }
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
