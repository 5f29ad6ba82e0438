//! DHT lookups: one shared query per key, its providers cached for a while, and new
//! requests started against them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use super::{
    Candidate, Lookup, LookupId, Mirror, MirrorError, MirrorRequest, Output, Phase, Request,
    RequestId,
};
use crate::keys::Key;

impl<P: Clone + Ord + fmt::Debug> Mirror<P> {
    /// A request to mirror.
    pub(crate) fn handle_request(
        &mut self,
        now: Instant,
        id: RequestId,
        req: MirrorRequest,
    ) -> Result<(), MirrorError> {
        if self.requests.contains_key(&id) {
            return Err(MirrorError::DuplicateRequest(id));
        }
        self.expire_cache(now);
        let key = req.key.clone();
        let running = self
            .lookups
            .values()
            .filter(|l| l.finished_at.is_none())
            .count();
        let busy = if self.requests.len() >= self.config.max_requests {
            Some(format!(
                "{} requests are being mirrored, the most this node mirrors at once",
                self.requests.len()
            ))
        } else if !self.lookups.contains_key(&key) && running >= self.config.max_lookups {
            Some(format!(
                "{running} lookups are running, the most this node runs at once"
            ))
        } else {
            None
        };
        if let Some(why) = busy {
            self.misses += 1;
            self.outputs.push_back(Output::Fail {
                request: id,
                error: crate::node::unknown(
                    &req.target,
                    format!("{why}; not looking up {}", key.as_str()),
                ),
                reason: crate::FailReason::Busy,
            });
            return Ok(());
        }
        let mut request = Request {
            req,
            started: now,
            phase: Phase::Resolving,
            candidates: Vec::new(),
            attempts: 0,
            in_flight: BTreeSet::new(),
            first_fetch_at: None,
            hedges_due: 0,
            idle_since: now,
            lookup_finished: false,
            size: None,
            fed_by: Vec::new(),
            held: 0,
        };
        match self.lookups.get_mut(&key) {
            Some(lookup) => {
                for (p, addrs) in &lookup.providers {
                    if !distrusted(&self.distrusted, now, &key, p) {
                        request.add_candidate(p, addrs);
                    }
                }
                request.lookup_finished = lookup.finished_at.is_some();
                lookup.waiters.insert(id);
            }
            None => {
                let lid = LookupId(self.next_lookup);
                self.next_lookup += 1;
                let mut waiters = BTreeSet::new();
                waiters.insert(id);
                self.lookups.insert(
                    key.clone(),
                    Lookup {
                        id: lid,
                        providers: Vec::new(),
                        finished_at: None,
                        waiters,
                    },
                );
                self.lookup_keys.insert(lid, key.clone());
                self.outputs.push_back(Output::Lookup {
                    id: lid,
                    key,
                    count: self.config.resolve_count,
                });
            }
        }
        self.requests.insert(id, request);
        self.pump(now, id);
        Ok(())
    }

    /// Providers found by a lookup (may be called several times per lookup), with their
    /// registry addresses in order of preference. A provider without an address cannot be
    /// reached and is ignored; a provider reported again adds the addresses it did not have.
    pub(crate) fn handle_providers(
        &mut self,
        now: Instant,
        id: LookupId,
        providers: Vec<(P, Vec<SocketAddr>)>,
    ) -> Result<(), MirrorError> {
        let key = self.lookup_key(id)?;
        let Some(lookup) = self.lookups.get_mut(&key) else {
            return Err(MirrorError::UnknownLookup(id));
        };
        let mut fresh = Vec::new();
        for (p, addrs) in providers {
            if p == self.local {
                continue;
            }
            let known = match lookup.providers.iter_mut().find(|(q, _)| *q == p) {
                Some((_, known)) => known,
                None => {
                    lookup.providers.push((p.clone(), Vec::new()));
                    let last = lookup.providers.len() - 1;
                    &mut lookup.providers[last].1
                }
            };
            let new: Vec<SocketAddr> =
                addrs
                    .into_iter()
                    .filter(|a| !known.contains(a))
                    .fold(Vec::new(), |mut v, a| {
                        if !v.contains(&a) {
                            v.push(a);
                        }
                        v
                    });
            known.extend(new.iter().copied());
            if !new.is_empty() {
                fresh.push((p, new));
            }
        }
        lookup.providers.retain(|(_, addrs)| !addrs.is_empty());
        let waiters: Vec<RequestId> = lookup.waiters.iter().copied().collect();
        for rid in waiters {
            if let Some(r) = self.requests.get_mut(&rid) {
                for (p, addrs) in &fresh {
                    if !distrusted(&self.distrusted, now, &key, p) {
                        r.add_candidate(p, addrs);
                    }
                }
            }
            self.pump(now, rid);
        }
        Ok(())
    }

    /// A lookup finished (or failed): no more providers will come from it.
    pub(crate) fn handle_lookup_finished(
        &mut self,
        now: Instant,
        id: LookupId,
    ) -> Result<(), MirrorError> {
        let key = self.lookup_key(id)?;
        let Some(lookup) = self.lookups.get_mut(&key) else {
            return Err(MirrorError::UnknownLookup(id));
        };
        lookup.finished_at = Some(now);
        let waiters: Vec<RequestId> = lookup.waiters.iter().copied().collect();
        // Only found providers are worth remembering; a miss is asked again next time.
        if lookup.providers.is_empty() {
            self.lookups.remove(&key);
            self.lookup_keys.remove(&id);
        }
        for rid in waiters {
            if let Some(r) = self.requests.get_mut(&rid) {
                r.lookup_finished = true;
            }
            self.pump(now, rid);
        }
        Ok(())
    }

    pub(super) fn lookup_key(&self, id: LookupId) -> Result<Key, MirrorError> {
        self.lookup_keys
            .get(&id)
            .cloned()
            .ok_or(MirrorError::UnknownLookup(id))
    }

    pub(super) fn expire_cache(&mut self, now: Instant) {
        let ttl = self.config.lookup_cache_ttl;
        let expired: Vec<Key> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.finished_at.is_some_and(|t| t + ttl <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some(l) = self.lookups.remove(&k) {
                self.lookup_keys.remove(&l.id);
            }
        }
        self.distrusted.retain(|_, until| *until > now);
    }

    /// Remembers that `peers` sent a body for `key` that did not match its digest: none of
    /// them is asked for `key` again before `distrust_for` passed. The memory is bounded: when
    /// it is full, the entry that expires first goes.
    pub(super) fn distrust(&mut self, now: Instant, key: &Key, peers: &[P]) {
        let until = now + self.config.distrust_for;
        self.distrusted.retain(|_, t| *t > now);
        for p in peers {
            let entry = (key.clone(), p.clone());
            let cap = self.config.max_distrusted.max(1);
            if !self.distrusted.contains_key(&entry) && self.distrusted.len() >= cap {
                let first = self
                    .distrusted
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| k.clone());
                if let Some(k) = first {
                    self.distrusted.remove(&k);
                }
            }
            self.distrusted.insert(entry, until);
        }
    }
}

/// Whether `peer` is distrusted for `key` at `now`.
pub(super) fn distrusted<P: Ord + Clone>(
    set: &BTreeMap<(Key, P), Instant>,
    now: Instant,
    key: &Key,
    peer: &P,
) -> bool {
    set.get(&(key.clone(), peer.clone()))
        .is_some_and(|until| *until > now)
}

impl<P: Clone + Ord> Request<P> {
    /// Adds `peer` as a candidate, or the addresses it did not have to an existing one.
    pub(super) fn add_candidate(&mut self, peer: &P, addrs: &[SocketAddr]) {
        let c = match self.candidates.iter_mut().position(|c| c.peer == *peer) {
            Some(i) => &mut self.candidates[i],
            None => {
                self.candidates.push(Candidate {
                    peer: peer.clone(),
                    addrs: Vec::new(),
                    used: 0,
                    done: false,
                });
                let last = self.candidates.len() - 1;
                &mut self.candidates[last]
            }
        };
        for a in addrs {
            if !c.addrs.contains(a) {
                c.addrs.push(*a);
            }
        }
    }
}
