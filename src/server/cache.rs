//! The prefix-state cache: the recurrent state (and the logits) after prompt prefixes, in
//! host memory, least recently used first out under a byte budget. A recurrent model's
//! whole context is its fixed-size state, so a request whose prompt extends a cached prefix
//! continues from that state and prefills only the rest (a multi-turn chat, each new turn).

use crate::runtime::Snapshot;

/// One cached prefix.
struct Entry {
    ids: Vec<u32>,
    snapshot: Snapshot,
    /// The logits after the last id (V), when known: without them the entry serves only
    /// prompts that continue past it.
    logits: Option<Vec<f32>>,
    /// Recency stamp (larger = used later).
    used: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.snapshot.bytes() + 4 * (self.logits.as_ref().map_or(0, Vec::len) + self.ids.len())
    }

    /// Whether `prompt` can start from this entry.
    fn serves(&self, prompt: &[u32]) -> bool {
        prompt.starts_with(&self.ids) && (prompt.len() > self.ids.len() || self.logits.is_some())
    }
}

/// A hit: the state after `len` prompt ids, and the logits after them (when the whole
/// prompt is cached).
pub(crate) struct Hit<'a> {
    pub len: usize,
    pub snapshot: &'a Snapshot,
    pub logits: Option<&'a [f32]>,
}

/// Cached prefixes under a byte budget (0 disables the cache).
pub(crate) struct PrefixCache {
    entries: Vec<Entry>,
    budget: usize,
    clock: u64,
}

impl PrefixCache {
    pub fn new(budget: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            budget,
            clock: 0,
        }
    }

    /// Host bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(Entry::bytes).sum()
    }

    /// The longest cached prefix of `prompt` (possibly all of it), marked as used.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<Hit<'_>> {
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.serves(prompt))
            .max_by_key(|(_, e)| e.ids.len())
            .map(|(i, _)| i)?;
        self.clock += 1;
        let e = &mut self.entries[best];
        e.used = self.clock;
        Some(Hit {
            len: e.ids.len(),
            snapshot: &e.snapshot,
            logits: e.logits.as_deref().filter(|_| e.ids.len() == prompt.len()),
        })
    }

    /// Whether an entry of `bytes` could be kept at all.
    pub fn admits(&self, bytes: usize) -> bool {
        bytes <= self.budget
    }

    /// Keeps the state after `ids`, evicting the least recently used entries to stay within
    /// the budget; an entry for the same ids is replaced.
    pub fn insert(&mut self, ids: Vec<u32>, snapshot: Snapshot, logits: Option<Vec<f32>>) {
        self.clock += 1;
        let entry = Entry {
            ids,
            snapshot,
            logits,
            used: self.clock,
        };
        if !self.admits(entry.bytes()) {
            return;
        }
        self.entries.retain(|e| e.ids != entry.ids);
        while !self.entries.is_empty() && self.bytes() + entry.bytes() > self.budget {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].used)
                .expect("not empty");
            self.entries.swap_remove(oldest);
        }
        self.entries.push(entry);
    }
}
