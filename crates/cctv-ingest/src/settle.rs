//! What one raw message of a pull turned into, and when it may be acked,
//! kept pure.
//!
//! A raw message (or each item of a gateway batch) ends as units: events
//! routed into event batches, ignored, or a dead letter published. The raw
//! message is acked only when every publish it caused was stored by
//! JetStream (a duplicate counts as stored: an earlier attempt got there);
//! otherwise it is nak'ed and redelivered, and the event ids and dead-letter
//! message ids make the repeat harmless.

use crate::metrics::FormatLabel;

/// What one vendor message (a raw message, or one item of a gateway batch)
/// turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Offences routed into event batches.
    Published(u64),
    /// Not an offence: nothing to publish.
    Ignored(&'static str),
    /// A dead letter published: its index in the pull's publishes, and its reason.
    DeadLetter(usize, &'static str),
}

/// One raw message of a pull, waiting for its publishes' acks.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Its vendor messages (one, or a gateway batch's items).
    pub(crate) units: Vec<(FormatLabel, Unit)>,
    /// Event batches holding its events (indexes into the sealed list).
    pub(crate) batches: Vec<usize>,
    /// A publish could not even be sent: leave the message for redelivery.
    pub(crate) failed: bool,
}

impl Pending {
    /// Records what one vendor message became; `None` is a publish that
    /// could not be sent.
    pub(crate) fn add(&mut self, format: FormatLabel, unit: Option<Unit>) {
        match unit {
            Some(unit) => self.units.push((format, unit)),
            None => self.failed = true,
        }
    }

    /// Whether the raw message may be acked: every publish it caused was
    /// sent and stored. `batch_stored[i]` says whether sealed event batch
    /// `i` was stored, `publish_stored(j)` whether publish `j` of the pull
    /// (a dead letter) was.
    pub(crate) fn may_ack(
        &self,
        batch_stored: &[bool],
        publish_stored: impl Fn(usize) -> bool,
    ) -> bool {
        !self.failed
            && self
                .batches
                .iter()
                .all(|index| batch_stored.get(*index).copied().unwrap_or(false))
            && self.units.iter().all(|(_, unit)| match unit {
                Unit::DeadLetter(index, _) => publish_stored(*index),
                Unit::Published(_) | Unit::Ignored(_) => true,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(units: &[Unit], batches: &[usize]) -> Pending {
        let mut pending = Pending::default();
        for unit in units {
            pending.add(FormatLabel::Batch, Some(*unit));
        }
        pending.batches = batches.to_vec();
        pending
    }

    #[test]
    fn acked_only_when_every_event_batch_and_dead_letter_was_stored() {
        let stored = [true, false, true];
        let letters = |index: usize| index != 7;
        let both = pending(
            &[Unit::Published(3), Unit::DeadLetter(4, "malformed")],
            &[0, 2],
        );
        assert!(both.may_ack(&stored, letters));
        let lost_batch = pending(&[Unit::Published(1)], &[0, 1]);
        assert!(!lost_batch.may_ack(&stored, letters));
        let lost_letter = pending(
            &[Unit::Ignored("heartbeat"), Unit::DeadLetter(7, "malformed")],
            &[],
        );
        assert!(!lost_letter.may_ack(&stored, letters));
        // Nothing to publish: acked at once.
        assert!(pending(&[Unit::Ignored("heartbeat")], &[]).may_ack(&[], letters));
        // A batch index the pull never sealed is not stored.
        assert!(!pending(&[Unit::Published(1)], &[9]).may_ack(&stored, letters));
    }

    #[test]
    fn a_publish_that_could_not_be_sent_holds_the_message_back() {
        let mut entry = pending(&[Unit::Published(2)], &[0]);
        entry.add(FormatLabel::Batch, None);
        assert!(entry.failed);
        assert!(!entry.may_ack(&[true], |_| true));
        assert_eq!(entry.units.len(), 1);
    }
}
