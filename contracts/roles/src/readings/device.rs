//! One device's state in the readings machine: watermark, buffer, and the checkpoint
//! statements kept about it.

use std::collections::BTreeMap;
use std::sync::Arc;

use agora_market::{NodeId, Timestamp};

use super::{Counter, DeviceId, DeviceView};

/// What one author last stated about a device.
#[derive(Clone, Debug)]
pub(super) struct Statement {
    /// Highest counter its checkpoint covers for the device, if it covers any.
    pub last: Option<Counter>,
    /// Whether it gives the device up.
    pub released: bool,
    /// The author's time.
    pub at: Timestamp,
    /// The signed envelope.
    pub envelope: Arc<[u8]>,
}

/// The statements kept of one author: its furthest coverage and its latest release.
#[derive(Clone, Debug, Default)]
pub(super) struct Kept {
    best: Option<(Counter, Arc<[u8]>)>,
    release: Option<(Timestamp, Arc<[u8]>)>,
    at: Timestamp,
}

impl Kept {
    fn merge(&mut self, s: Statement) {
        if let Some(last) = s.last
            && self.best.as_ref().is_none_or(|(b, _)| last > *b)
        {
            self.best = Some((last, s.envelope.clone()));
        }
        if s.released {
            self.release = Some((s.at, s.envelope));
        } else if self.release.as_ref().is_some_and(|(t, _)| s.at > *t) {
            // It fed the device again after giving it up.
            self.release = None;
        }
        self.at = self.at.max(s.at);
    }

    /// The envelopes worth relaying.
    pub fn envelopes(&self) -> impl Iterator<Item = &Arc<[u8]>> {
        self.best
            .iter()
            .map(|(_, e)| e)
            .chain(self.release.iter().map(|(_, e)| e))
    }
}

#[derive(Clone, Debug)]
pub(super) struct Device {
    /// Highest counter heard (live or replayed).
    pub heard_max: Option<Counter>,
    /// Watermark: highest counter processed by an edge whose word counts (this one included).
    pub done: Option<Counter>,
    /// A trusted coverage claim that arrived before anything was heard, checked against the
    /// first counter heard.
    parked: Option<Counter>,
    /// Frames above the watermark, by counter.
    buffer: BTreeMap<Counter, Vec<u8>>,
    /// Service it is assigned to here.
    pub service: Option<String>,
    /// A takeover's replay request in progress: buffer, do not feed.
    pub filling: Option<u64>,
    /// Labelled as covered on standby.
    pub listening: bool,
    /// Whether it was fed at the last check (to notice authority lapsing).
    pub feeding: bool,
    claims: BTreeMap<NodeId, Kept>,
    pub received: u64,
    pub processed: u64,
    pub replayed: u64,
    pub duplicates: u64,
    pub first_processed_at: Option<Timestamp>,
    pub last_processed: Option<Counter>,
    pub peer_covered: Option<Counter>,
    pub last_activity: Timestamp,
}

impl Device {
    pub fn new(now: Timestamp) -> Self {
        Device {
            heard_max: None,
            done: None,
            parked: None,
            buffer: BTreeMap::new(),
            service: None,
            filling: None,
            listening: false,
            feeding: false,
            claims: BTreeMap::new(),
            received: 0,
            processed: 0,
            replayed: 0,
            duplicates: 0,
            first_processed_at: None,
            last_processed: None,
            peer_covered: None,
            last_activity: now,
        }
    }

    pub fn view(&self, device: DeviceId, feeding: bool) -> DeviceView {
        DeviceView {
            device,
            service: self.service.clone(),
            feeding,
            buffering: self.listening,
            buffered: self.buffer.len(),
            received: self.received,
            processed: self.processed,
            replayed: self.replayed,
            duplicates: self.duplicates,
            first_processed_at: self.first_processed_at,
            last_processed: self.last_processed,
            peer_covered: self.peer_covered,
            done: self.done,
        }
    }

    /// Whether `counter` is at or below the watermark.
    pub fn covered(&self, counter: Counter) -> bool {
        self.done.is_some_and(|d| counter <= d)
    }

    /// Buffers a frame above the watermark; returns whether a frame was evicted for it.
    pub fn buffer_insert(&mut self, counter: Counter, bytes: Vec<u8>, cap: usize) -> bool {
        if self.covered(counter) || self.buffer.contains_key(&counter) {
            return false;
        }
        self.buffer.insert(counter, bytes);
        if self.buffer.len() > cap {
            self.buffer.pop_first();
            return true;
        }
        false
    }

    /// Whether `counter` is buffered.
    pub fn buffered(&self, counter: Counter) -> bool {
        self.buffer.contains_key(&counter)
    }

    /// Buffered frames in counter order (for replay answers).
    pub fn buffer_iter(&self) -> impl Iterator<Item = (&Counter, &Vec<u8>)> {
        self.buffer.iter()
    }

    /// Empties the buffer, returning the frames above the watermark in counter order.
    pub fn take_buffer(&mut self) -> Vec<(Counter, Vec<u8>)> {
        let done = self.done;
        std::mem::take(&mut self.buffer)
            .into_iter()
            .filter(|(c, _)| done.is_none_or(|d| *c > d))
            .collect()
    }

    /// Records that this edge fed `counter`.
    pub fn mark_fed(&mut self, counter: Counter, now: Timestamp, from_buffer: bool) {
        self.done = Some(self.done.map_or(counter, |d| d.max(counter)));
        self.last_processed = Some(self.last_processed.map_or(counter, |d| d.max(counter)));
        self.processed += 1;
        self.replayed += u64::from(from_buffer);
        self.first_processed_at.get_or_insert(now);
    }

    /// A trusted edge processed everything up to `last`.
    pub fn cover(&mut self, last: Counter) {
        self.done = Some(self.done.map_or(last, |d| d.max(last)));
        self.peer_covered = Some(self.peer_covered.map_or(last, |p| p.max(last)));
        self.buffer.retain(|c, _| *c > last);
    }

    /// Keeps a trusted claim until something is heard to check it against.
    pub fn park(&mut self, last: Counter) {
        self.parked = Some(self.parked.map_or(last, |p| p.max(last)));
    }

    /// Applies a parked claim now that a counter was heard; returns whether it was refused as
    /// implausible (too far past the first counter heard).
    pub fn resolve_parked(&mut self, gap: u32) -> bool {
        let (Some(p), Some(h)) = (self.parked, self.heard_max) else {
            return false;
        };
        self.parked = None;
        if p > h.saturating_add(gap) {
            return true;
        }
        self.cover(p);
        false
    }

    /// Whether `node` stated it released the device at or after `since`.
    pub fn released_since(&self, node: &NodeId, since: Timestamp) -> bool {
        self.claims
            .get(node)
            .and_then(|k| k.release.as_ref())
            .is_some_and(|(at, _)| *at >= since)
    }

    /// Keeps `author`'s statement for relaying. With the table full, an unauthorised author's
    /// statement (the oldest) makes room; returns whether a statement was dropped.
    pub fn store_claim(
        &mut self,
        author: NodeId,
        s: Statement,
        max_authors: usize,
        authorised: impl Fn(&NodeId) -> bool,
    ) -> bool {
        if let Some(k) = self.claims.get_mut(&author) {
            k.merge(s);
            return false;
        }
        let mut dropped = false;
        if self.claims.len() >= max_authors {
            let victim = self
                .claims
                .iter()
                .filter(|(n, _)| !authorised(n))
                .min_by_key(|(_, k)| k.at)
                .map(|(n, _)| *n)
                .or_else(|| {
                    authorised(&author)
                        .then(|| {
                            self.claims
                                .iter()
                                .min_by_key(|(_, k)| k.at)
                                .map(|(n, _)| *n)
                        })
                        .flatten()
                });
            match victim {
                Some(v) => {
                    self.claims.remove(&v);
                    dropped = true;
                }
                None => return true,
            }
        }
        let mut k = Kept::default();
        k.merge(s);
        self.claims.insert(author, k);
        dropped
    }

    /// Signed statements kept about this device.
    pub fn claims(&self) -> impl Iterator<Item = &Kept> {
        self.claims.values()
    }
}
