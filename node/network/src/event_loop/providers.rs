//! Which provider records other peers may store on this node (THREATS N19). Kademlia stored
//! every `ADD_PROVIDER` it received, in one table of 1,024 keys that also holds this node's
//! own: a stranger announcing 1,024 made-up keys filled it, so this node's own files and images
//! could no longer be announced (`MaxProvidedKeys`), and records nobody asks for are never
//! expired by Kademlia. Now the swarm hands each record here first (`StoreInserts::FilterBoth`):
//! at most [`MAX_KEYS_PER_PROVIDER`] keys per provider, [`MAX_STRANGER_KEYS`] for all strangers
//! together, [`MAX_REMOTE_KEYS`] in all (the store has room for this node's own beyond that),
//! [`MAX_RECORD_ADDRS`] addresses per record; expired records are dropped from the store here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::kad::RecordKey;

/// Keys one provider may have stored here at once (each of its files' and images' roots).
pub(crate) const MAX_KEYS_PER_PROVIDER: usize = 256;
/// Keys all strangers together may have stored here.
pub(crate) const MAX_STRANGER_KEYS: usize = 2_048;
/// Keys all other providers together may have stored here.
pub(crate) const MAX_REMOTE_KEYS: usize = 8_192;
/// Room in the store for this node's own keys beyond the others'.
pub(crate) const OWN_KEYS: usize = 4_096;
/// Addresses kept per record.
pub(crate) const MAX_RECORD_ADDRS: usize = 8;
/// How long a record lives when Kademlia gives it no expiry (its default TTL).
const DEFAULT_TTL: Duration = Duration::from_secs(48 * 3600);
/// How often, at most, a full table is swept for expired records.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What to do with one received provider record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Store it.
    Store,
    /// Refused: its provider holds its share.
    ProviderFull,
    /// Refused: strangers hold theirs.
    StrangersFull,
    /// Refused: the table is full.
    Full,
}

#[derive(Debug)]
struct Entry {
    expires: Instant,
    stranger: bool,
}

/// The records admitted, by provider.
#[derive(Debug, Default)]
pub(crate) struct ProviderAdmission {
    by_provider: HashMap<PeerId, HashMap<RecordKey, Entry>>,
    total: usize,
    strangers: usize,
    last_sweep: Option<Instant>,
}

impl ProviderAdmission {
    /// Judges `provider`'s record for `key` (expiring at `expires`); `expired` receives every
    /// record this drops as expired, for the caller to remove from the store.
    pub(crate) fn admit(
        &mut self,
        provider: PeerId,
        key: &RecordKey,
        expires: Option<Instant>,
        stranger: bool,
        now: Instant,
        expired: &mut Vec<(RecordKey, PeerId)>,
    ) -> Verdict {
        let expires = expires.unwrap_or(now + DEFAULT_TTL);
        if let Some(e) = self
            .by_provider
            .get_mut(&provider)
            .and_then(|keys| keys.get_mut(key))
        {
            // A renewal of a record already admitted.
            e.expires = expires;
            return Verdict::Store;
        }
        let mine = self.by_provider.get(&provider).map_or(0, HashMap::len);
        if mine >= MAX_KEYS_PER_PROVIDER {
            self.drop_expired_of(provider, now, expired);
        }
        if (stranger && self.strangers >= MAX_STRANGER_KEYS) || self.total >= MAX_REMOTE_KEYS {
            self.sweep(now, expired);
        }
        if self.by_provider.get(&provider).map_or(0, HashMap::len) >= MAX_KEYS_PER_PROVIDER {
            return Verdict::ProviderFull;
        }
        if stranger && self.strangers >= MAX_STRANGER_KEYS {
            return Verdict::StrangersFull;
        }
        if self.total >= MAX_REMOTE_KEYS {
            return Verdict::Full;
        }
        self.by_provider
            .entry(provider)
            .or_default()
            .insert(key.clone(), Entry { expires, stranger });
        self.total += 1;
        if stranger {
            self.strangers += 1;
        }
        Verdict::Store
    }

    /// Records admitted now.
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// `provider`'s record for `key` was not stored after all (the store refused it): it no
    /// longer counts against any share.
    pub(crate) fn forget(&mut self, provider: PeerId, key: &RecordKey) {
        let Some(keys) = self.by_provider.get_mut(&provider) else {
            return;
        };
        if let Some(e) = keys.remove(key) {
            self.total -= 1;
            self.strangers -= usize::from(e.stranger);
        }
        if keys.is_empty() {
            self.by_provider.remove(&provider);
        }
    }

    fn drop_expired_of(
        &mut self,
        provider: PeerId,
        now: Instant,
        expired: &mut Vec<(RecordKey, PeerId)>,
    ) {
        let Some(keys) = self.by_provider.get_mut(&provider) else {
            return;
        };
        let before = keys.len();
        let mut strangers = 0;
        keys.retain(|k, e| {
            let keep = e.expires > now;
            if !keep {
                strangers += usize::from(e.stranger);
                expired.push((k.clone(), provider));
            }
            keep
        });
        self.total -= before - keys.len();
        self.strangers -= strangers;
        if keys.is_empty() {
            self.by_provider.remove(&provider);
        }
    }

    /// Drops every expired record, at most once per [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant, expired: &mut Vec<(RecordKey, PeerId)>) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        let providers: Vec<PeerId> = self.by_provider.keys().copied().collect();
        for p in providers {
            self.drop_expired_of(p, now, expired);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> RecordKey {
        RecordKey::new(&n.to_be_bytes())
    }

    #[test]
    fn one_provider_holds_its_share_and_renewals_stay_free() {
        let mut a = ProviderAdmission::default();
        let (p, t0) = (PeerId::random(), Instant::now());
        let mut gone = Vec::new();
        for n in 0..MAX_KEYS_PER_PROVIDER {
            assert_eq!(
                a.admit(p, &key(n), None, false, t0, &mut gone),
                Verdict::Store
            );
        }
        assert_eq!(
            a.admit(p, &key(9_999), None, false, t0, &mut gone),
            Verdict::ProviderFull
        );
        // A key it already has is renewed.
        assert_eq!(
            a.admit(p, &key(3), None, false, t0, &mut gone),
            Verdict::Store
        );
        // Another provider has its own share.
        assert_eq!(
            a.admit(PeerId::random(), &key(9_999), None, false, t0, &mut gone),
            Verdict::Store
        );
        // Once its records expire, the provider has room again and the expired go.
        let later = t0 + DEFAULT_TTL + Duration::from_secs(1);
        assert_eq!(
            a.admit(p, &key(9_999), None, false, later, &mut gone),
            Verdict::Store
        );
        assert_eq!(gone.len(), MAX_KEYS_PER_PROVIDER);
        assert_eq!(a.len(), 2);
        // A record the store refused does not count.
        a.forget(p, &key(9_999));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn strangers_share_one_budget_and_the_table_is_bounded() {
        let mut a = ProviderAdmission::default();
        let t0 = Instant::now();
        let mut gone = Vec::new();
        let mut n = 0;
        // Strangers, each at its share, until their budget is spent.
        'fill: loop {
            let p = PeerId::random();
            for _ in 0..MAX_KEYS_PER_PROVIDER {
                match a.admit(p, &key(n), None, true, t0, &mut gone) {
                    Verdict::Store => n += 1,
                    Verdict::StrangersFull => break 'fill,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(n, MAX_STRANGER_KEYS);
        // A vouched peer is still taken, up to the whole table.
        loop {
            let p = PeerId::random();
            let mut full = false;
            for _ in 0..MAX_KEYS_PER_PROVIDER {
                match a.admit(p, &key(n), None, false, t0, &mut gone) {
                    Verdict::Store => n += 1,
                    Verdict::Full => full = true,
                    other => panic!("{other:?}"),
                }
                if full {
                    break;
                }
            }
            if full {
                break;
            }
        }
        assert_eq!(a.len(), MAX_REMOTE_KEYS);
        assert!(gone.is_empty());
    }
}
