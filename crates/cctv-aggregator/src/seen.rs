//! The seen-set of one partition: every event id written within the dedup
//! horizon, with its insert time (UTC seconds), so that a repeat of an
//! offence (a redelivery, a republish, a vendor repeat hours later) is
//! recognised however it arrives. Rebuilt from ClickHouse, the source of
//! truth, at every session start; expired ids are pruned as time passes.

use std::collections::HashMap;

/// Ids written within the horizon.
#[derive(Debug, Default)]
pub struct SeenSet {
    ids: HashMap<[u8; 16], u32>,
    horizon_secs: u32,
    /// Insert time of the oldest id possibly still held.
    oldest: u32,
}

impl SeenSet {
    /// An empty set keeping ids for `horizon_secs`.
    pub fn new(horizon_secs: u32) -> Self {
        Self {
            ids: HashMap::new(),
            horizon_secs,
            oldest: u32::MAX,
        }
    }

    /// Records an id written at `at` (UTC seconds); false when it was
    /// written within the horizon before `at` (a repeat: not written, so its
    /// time stays that of the write, as ClickHouse holds it). An id held but
    /// written longer ago (not pruned yet) is written again.
    pub fn insert(&mut self, id: [u8; 16], at: u32) -> bool {
        match self.ids.entry(id) {
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(at);
                self.oldest = self.oldest.min(at);
                true
            }
            std::collections::hash_map::Entry::Occupied(mut held) => {
                if *held.get() < at.saturating_sub(self.horizon_secs) {
                    held.insert(at);
                    return true;
                }
                false
            }
        }
    }

    /// Records an id written at `at` unless it is held, however long ago it
    /// was written (for a replayed message, first judged when it was
    /// stored: the set holds only ids of the horizon before that, and those
    /// were repeats to it then); false when it was held.
    pub fn insert_unless_held(&mut self, id: [u8; 16], at: u32) -> bool {
        !self.ids.contains_key(&id) && self.insert(id, at)
    }

    /// Records an id ClickHouse holds as written at `at` (a rebuild): of
    /// several writes (a repeat beyond the horizon is written again, and
    /// every replica reports its copy), the latest counts.
    pub fn load(&mut self, id: [u8; 16], at: u32) {
        self.oldest = self.oldest.min(at);
        self.ids
            .entry(id)
            .and_modify(|held| *held = (*held).max(at))
            .or_insert(at);
    }

    /// Whether `id` is held.
    #[cfg(test)]
    pub(crate) fn contains(&self, id: &[u8; 16]) -> bool {
        self.ids.contains_key(id)
    }

    /// Forgets `id`.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, id: &[u8; 16]) {
        self.ids.remove(id);
    }

    /// Drops ids written before `now - horizon`. Cheap when nothing expired.
    pub fn prune(&mut self, now: u32) {
        let cutoff = now.saturating_sub(self.horizon_secs);
        if self.oldest >= cutoff {
            return;
        }
        self.ids.retain(|_, at| *at >= cutoff);
        self.oldest = self.ids.values().copied().min().unwrap_or(u32::MAX);
        if self.ids.capacity() > self.ids.len() * 4 + 1024 {
            self.ids.shrink_to_fit();
        }
    }

    /// The first second still inside the horizon at `now`.
    pub fn cutoff(&self, now: u32) -> u32 {
        now.saturating_sub(self.horizon_secs)
    }

    /// Gives back the table's room beyond what it holds (after a replay,
    /// which held two horizons of ids, is pruned to one).
    pub fn compact(&mut self) {
        self.ids.shrink_to_fit();
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Heap bytes held: the table's buckets (key, value, one control byte
    /// each). The table holds up to 7/8 of its buckets, a power of two.
    pub fn heap_bytes(&self) -> usize {
        let capacity = self.ids.capacity();
        if capacity == 0 {
            return 0;
        }
        (capacity * 8).div_ceil(7).next_power_of_two() * (16 + 4 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    #[test]
    fn a_repeat_does_not_move_the_time_of_the_write() {
        let mut seen = SeenSet::new(100);
        assert!(seen.insert(id(1), 1_000));
        // Repeats within the horizon of the write are dropped ...
        assert!(!seen.insert(id(1), 1_080));
        assert!(!seen.insert(id(1), 1_100));
        // ... and do not extend it: as a rebuild from ClickHouse sees it.
        assert!(seen.insert(id(1), 1_101), "written again past the horizon");
        assert!(!seen.insert(id(1), 1_150));
        // A rebuild keeps an id's latest write.
        let mut rebuilt = SeenSet::new(100);
        rebuilt.load(id(1), 1_101);
        rebuilt.load(id(1), 1_000);
        assert!(!rebuilt.insert(id(1), 1_150));
        assert!(rebuilt.insert(id(1), 1_202));
        // A replayed message judges every id held a repeat, however old.
        let mut replaying = SeenSet::new(100);
        replaying.load(id(2), 1_000);
        assert!(!replaying.insert_unless_held(id(2), 1_500));
        assert!(replaying.insert_unless_held(id(3), 1_500));
        assert!(!replaying.insert_unless_held(id(3), 1_501));
    }

    #[test]
    fn repeats_are_recognised() {
        let mut seen = SeenSet::new(100);
        assert!(seen.insert(id(1), 1_000));
        assert!(!seen.insert(id(1), 1_050));
        assert!(seen.contains(&id(1)));
        assert!(!seen.contains(&id(2)));
        seen.remove(&id(1));
        assert!(seen.is_empty());
    }

    #[test]
    fn ids_older_than_the_horizon_are_pruned() {
        let mut seen = SeenSet::new(100);
        seen.insert(id(1), 1_000);
        seen.insert(id(2), 1_090);
        seen.prune(1_100);
        assert_eq!(seen.len(), 2);
        seen.prune(1_101);
        assert!(!seen.contains(&id(1)));
        assert!(seen.contains(&id(2)));
        assert_eq!(seen.cutoff(1_101), 1_001);
        assert!(seen.heap_bytes() >= 21);
    }

    #[test]
    fn a_set_pruned_to_a_few_ids_gives_its_room_back_when_compacted() {
        let mut seen = SeenSet::new(100);
        for n in 0..10_000u32 {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&n.to_le_bytes());
            // Half of them a horizon older.
            seen.insert(key, if n % 2 == 0 { 1_000 } else { 1_200 });
        }
        let full = seen.heap_bytes();
        seen.prune(1_250);
        assert_eq!(seen.len(), 5_000);
        seen.compact();
        assert!(seen.heap_bytes() < full, "{} of {full}", seen.heap_bytes());
        assert_eq!(seen.len(), 5_000);
    }
}
