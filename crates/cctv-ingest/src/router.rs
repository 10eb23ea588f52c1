//! Routing a pull's events into event batches, kept pure: each event goes
//! to the batch of its partition (its id mod the partition count), a batch
//! is sealed at `max_events` events or before it would pass `max_bytes`, and
//! every sealed batch knows which raw messages of the pull it carries
//! events of (their acks wait for its publish).

use bytes::Bytes;
use cctv_bus::{subjects, EventBatchWriter};
use cctv_event::OffenceEvent;

/// Room a partition's batch reserves for its first event and those after
/// (most batches of a busy pull reach tens of KiB).
const FIRST_RESERVE: usize = 32 * 1024;

/// An event batch ready to publish.
#[derive(Debug)]
pub(crate) struct Sealed {
    pub(crate) partition: u16,
    pub(crate) payload: Bytes,
    /// Raw messages (indexes in the pull) with events in it, ascending.
    pub(crate) members: Vec<usize>,
}

/// The open event batch of each partition.
#[derive(Debug)]
pub(crate) struct Router {
    partitions: u16,
    writers: Vec<EventBatchWriter>,
    members: Vec<Vec<usize>>,
    sealed: Vec<Sealed>,
    max_events: usize,
    max_bytes: usize,
    /// One event's encoding, reused.
    encoded: Vec<u8>,
}

impl Router {
    /// Batches for `partitions` partitions, sealed at `max_events` events
    /// or `max_bytes` bytes (a single larger event goes alone).
    pub(crate) fn new(partitions: u16, max_events: usize, max_bytes: usize) -> Self {
        let partitions = partitions.max(1);
        let count = usize::from(partitions);
        Self {
            partitions,
            writers: (0..count).map(|_| EventBatchWriter::new()).collect(),
            members: vec![Vec::new(); count],
            sealed: Vec::new(),
            max_events: max_events.max(1),
            max_bytes,
            encoded: Vec::with_capacity(512),
        }
    }

    /// Adds `event` of raw message `member` (its index in the pull; members
    /// come in ascending order) to its partition's batch.
    pub(crate) fn push(&mut self, event: &OffenceEvent, member: usize) {
        let partition = subjects::partition_of(event.event_id.as_bytes(), self.partitions);
        let index = usize::from(partition);
        self.encoded.clear();
        event.write_binary(&mut self.encoded);
        if !self.writers[index].is_empty()
            && self.writers[index].bytes_len() + self.encoded.len() + 4 > self.max_bytes
        {
            self.seal(index);
        }
        if self.writers[index].is_empty() {
            // A fresh writer would double its way up from a few bytes.
            self.writers[index].reserve(self.max_bytes.min(FIRST_RESERVE));
        }
        self.writers[index].push_encoded(&self.encoded);
        if self.members[index].last() != Some(&member) {
            self.members[index].push(member);
        }
        if self.writers[index].len() >= self.max_events {
            self.seal(index);
        }
    }

    fn seal(&mut self, index: usize) {
        if self.writers[index].is_empty() {
            return;
        }
        let payload = self.writers[index].finish();
        // The index is below the partition count, a u16.
        #[allow(clippy::cast_possible_truncation)]
        let partition = index as u16;
        self.sealed.push(Sealed {
            partition,
            payload,
            members: std::mem::take(&mut self.members[index]),
        });
    }

    /// Every batch, the open ones sealed.
    pub(crate) fn finish(mut self) -> Vec<Sealed> {
        for index in 0..self.writers.len() {
            self.seal(index);
        }
        self.sealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u128) -> OffenceEvent {
        OffenceEvent {
            event_id: uuid::Uuid::from_u128(n),
            ..OffenceEvent::example()
        }
    }

    fn events_of(sealed: &Sealed) -> Vec<OffenceEvent> {
        cctv_bus::decode_event_batch(&sealed.payload)
            .expect("a batch")
            .map(|item| item.expect("framed").to_event().expect("an event"))
            .collect()
    }

    #[test]
    fn events_go_to_the_batch_of_their_partition_in_order() {
        let mut router = Router::new(4, 100, 1 << 20);
        for n in 0..40u128 {
            router.push(&event(n), usize::try_from(n / 10).unwrap_or(0));
        }
        let sealed = router.finish();
        assert_eq!(sealed.len(), 4, "one batch per partition");
        let mut seen = 0;
        for batch in &sealed {
            let events = events_of(batch);
            seen += events.len();
            let mut previous = None;
            for event in &events {
                assert_eq!(
                    subjects::partition_of(event.event_id.as_bytes(), 4),
                    batch.partition
                );
                assert!(previous < Some(event.event_id.as_u128()), "pull order kept");
                previous = Some(event.event_id.as_u128());
            }
            // Members: the raw messages (ids / 10) whose events it carries.
            let mut members: Vec<usize> = events
                .iter()
                .map(|event| usize::try_from(event.event_id.as_u128() / 10).unwrap_or(0))
                .collect();
            members.dedup();
            assert_eq!(batch.members, members);
        }
        assert_eq!(seen, 40);
    }

    #[test]
    fn a_batch_is_sealed_at_its_event_and_byte_limits() {
        let mut router = Router::new(1, 3, 1 << 20);
        for n in 0..7 {
            router.push(&event(n), 0);
        }
        let sizes: Vec<usize> = router.finish().iter().map(|b| events_of(b).len()).collect();
        assert_eq!(sizes, vec![3, 3, 1]);

        let mut one = Vec::new();
        event(0).write_binary(&mut one);
        // Room for two events and the header, not three.
        let max_bytes = 12 + 2 * (4 + one.len()) + 1;
        let mut router = Router::new(1, 100, max_bytes);
        for n in 0..5 {
            router.push(&event(n), usize::try_from(n).unwrap_or(0));
        }
        let sealed = router.finish();
        let sizes: Vec<usize> = sealed.iter().map(|b| events_of(b).len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert!(sealed.iter().all(|b| b.payload.len() <= max_bytes));
        assert_eq!(sealed[1].members, vec![2, 3]);
        // An event larger than the limit still goes, alone.
        let mut router = Router::new(1, 100, 10);
        router.push(&event(1), 0);
        router.push(&event(2), 0);
        assert_eq!(router.finish().len(), 2);
    }
}
