//! Reading a partition again from an earlier sequence (a rewind), kept pure.
//!
//! A session normally starts after the highest sequence ClickHouse holds for
//! its partition. Rows lost *below* that point (ClickHouse lost a part, e.g.
//! in a power cut before the part reached the disk) would never be written
//! again. `cctvctl audit --repair` names the first sequence that carries a
//! missing event of each partition and writes it as a rewind request
//! (`rewind.p<k>` in the lease bucket); the owner's next session starts
//! there instead, and the part from there through the old resume point is
//! the replay.
//!
//! Why a replay writes nothing twice. When a message was first read, each
//! event it carries was written unless its id had been written within the
//! horizon before (a repeat). A replaying session loads every id the
//! partition wrote since the horizon before its first replayed message was
//! stored (less the margin; at most two horizons back) into its seen-set
//! (from ClickHouse, at its start) and prunes nothing while it replays; it
//! replays only messages stored after `now - horizon + REPLAY_MARGIN`. So
//! for each replayed message, every id written in the horizon before it is
//! in the set, and every id held counts as a repeat to it (however old by
//! today's clock): an event ClickHouse holds, and a repeat that was dropped
//! the first time, are dropped again, and only what is missing is written. Older
//! messages are not read again (their events stay missing; the audit keeps
//! naming them). The margin covers clocks of the NATS servers (a message's
//! stored time) and of the aggregators (a row's insert time) that disagree
//! by less than it.
//!
//! A replay ends with the first delivery at or after its end sequence, or
//! the consumer's last pending message (never on a gap in deliveries: the
//! missing ones may be its last); the batch that holds it goes to the
//! writer at once, so no batch spans the replay and what follows. Once
//! that batch is written, and the owner checked that no newer owner has
//! fenced the partition (a stale owner's inserts are dropped, so its replay
//! proves nothing), the request is deleted (compare-and-set on the revision
//! read, so a newer request stays). A session that ends before that leaves
//! the request, and the next session replays again, which the seen-set
//! makes harmless.

use std::time::Duration;

use cctv_store::ResumePoint;

/// Messages stored less than this before the horizon's start are not
/// replayed either (clock differences between machines).
pub(crate) const REPLAY_MARGIN: Duration = Duration::from_secs(3600);

/// A rewind request as read from the lease bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rewind {
    /// The stream sequence to read from.
    pub from: u64,
    /// The request key's revision.
    pub revision: u64,
}

/// What a session does about the request it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplayPlan {
    /// No request, or one this term already carried out.
    None,
    /// The request starts after what is written, or what is written has
    /// left the stream: nothing to read again. The request is done.
    Nothing(Rewind),
    /// Read again from `from` through `end`.
    Replay(Replay),
}

impl ReplayPlan {
    /// The plan for a session that found `request` and the partition at
    /// `resume`, the stream starting at `first_in_stream`, at `now_secs`
    /// (UTC) with a dedup horizon of `horizon_secs`. `done_revision` is the
    /// request this term completed last (0: none).
    pub(crate) fn new(
        request: Option<Rewind>,
        done_revision: u64,
        resume: &ResumePoint,
        first_in_stream: u64,
        now_secs: u64,
        horizon_secs: u64,
    ) -> Self {
        let Some(request) = request.filter(|request| request.revision != done_revision) else {
            return ReplayPlan::None;
        };
        let end = resume.highest_written();
        if request.from > end || end < first_in_stream {
            return ReplayPlan::Nothing(request);
        }
        let floor_secs = now_secs
            .saturating_sub(horizon_secs)
            .saturating_add(REPLAY_MARGIN.as_secs());
        ReplayPlan::Replay(Replay {
            request,
            end,
            written_through: resume.written_through,
            floor_secs,
            rows: 0,
            too_old: 0,
            ended: false,
        })
    }

    /// From when (UTC seconds) the session loads the ids written into its
    /// seen-set: the horizon; for a replay also the horizon before its
    /// first message was stored (`from_stored_secs`, when known), and never
    /// more than two horizons. A replayed message was first judged against
    /// the ids of the horizon before it was stored; a repeat it carries of
    /// an id written early in that window must still be dropped. The margin
    /// covers clocks that disagree. The session does not prune the set
    /// while it replays.
    pub(crate) fn ids_since(
        &self,
        now_secs: u64,
        horizon_secs: u64,
        from_stored_secs: Option<u64>,
    ) -> u32 {
        let one = now_secs.saturating_sub(horizon_secs);
        let since = match self {
            ReplayPlan::Replay(_) => {
                let two = now_secs.saturating_sub(horizon_secs.saturating_mul(2));
                from_stored_secs.map_or(two, |stored| {
                    stored
                        .saturating_sub(horizon_secs)
                        .saturating_sub(REPLAY_MARGIN.as_secs())
                        .clamp(two, one)
                })
            }
            _ => one,
        };
        u32::try_from(since).unwrap_or(u32::MAX)
    }

    /// The sequence the session's consumer starts at.
    pub(crate) fn start_sequence(&self, resume: &ResumePoint) -> u64 {
        match self {
            ReplayPlan::Replay(replay) => replay.request.from,
            _ => resume.written_through + 1,
        }
    }

    /// The resume point the session's delivery order starts from: before
    /// the replay, which judges every message it reads again as new (the
    /// seen-set drops what is written, also of a cut-short batch).
    pub(crate) fn order_from(&self, resume: ResumePoint) -> ResumePoint {
        match self {
            ReplayPlan::Replay(replay) => ResumePoint {
                written_through: replay.request.from - 1,
                already_written: Default::default(),
            },
            _ => resume,
        }
    }
}

/// One delivery as the replay sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replayed {
    /// Not part of the replay (after its end): as in any session.
    No,
    /// Part of the replay: written where its ids are not in the seen-set.
    Yes,
    /// Part of the replay but stored too long ago: acked, not written.
    TooOld,
}

/// A replay under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replay {
    /// The request being carried out.
    pub request: Rewind,
    /// The last sequence read again (the resume point at the session's
    /// start, or beyond it a cut-short batch's highest).
    pub end: u64,
    /// Every sequence at or below this was written once; above it, a
    /// cut-short batch's gaps were never written, so their messages are
    /// read again however old.
    pub written_through: u64,
    /// Messages stored before this (UTC seconds) are not replayed.
    pub floor_secs: u64,
    /// Rows written again so far (ids the seen-set did not hold).
    pub rows: u64,
    /// Messages not replayed because they were stored too long ago.
    pub too_old: u64,
    /// Whether the last delivery of the replay was seen.
    pub ended: bool,
}

impl Replay {
    /// A request that needs no reading (see [`ReplayPlan::Nothing`]).
    pub(crate) fn nothing(request: Rewind) -> Self {
        Replay {
            request,
            end: 0,
            written_through: 0,
            floor_secs: 0,
            rows: 0,
            too_old: 0,
            ended: true,
        }
    }

    /// Notes a delivery of `stream_sequence` with `pending` messages after
    /// it for the consumer; whether it is part of the replay.
    pub(crate) fn passed(&mut self, stream_sequence: u64, pending: u64) -> bool {
        if self.ended || stream_sequence > self.end {
            self.ended = true;
            return false;
        }
        if stream_sequence == self.end || pending == 0 {
            self.ended = true;
        }
        true
    }

    /// Judges a new delivery of `stream_sequence`, stored at `stored_secs`
    /// (UTC), with `pending` messages after it for the consumer.
    pub(crate) fn judge(
        &mut self,
        stream_sequence: u64,
        stored_secs: u64,
        pending: u64,
    ) -> Replayed {
        if !self.passed(stream_sequence, pending) {
            return Replayed::No;
        }
        if stored_secs < self.floor_secs && stream_sequence <= self.written_through {
            self.too_old += 1;
            return Replayed::TooOld;
        }
        Replayed::Yes
    }

    /// Whether a delivery of `stream_sequence` comes after the replay, which
    /// has not ended yet: the batch read so far must go first.
    pub(crate) fn ends_before(&self, stream_sequence: u64) -> bool {
        !self.ended && stream_sequence > self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;
    const NOW: u64 = 1_800_000_000;

    fn resume(written_through: u64) -> ResumePoint {
        ResumePoint {
            written_through,
            already_written: Default::default(),
        }
    }

    fn request(from: u64, revision: u64) -> Option<Rewind> {
        Some(Rewind { from, revision })
    }

    fn replay(plan: ReplayPlan) -> Replay {
        match plan {
            ReplayPlan::Replay(replay) => replay,
            other => panic!("expected a replay, got {other:?}"),
        }
    }

    #[test]
    fn no_request_or_a_done_one_changes_nothing() {
        let at = resume(100);
        assert_eq!(ReplayPlan::new(None, 0, &at, 1, NOW, DAY), ReplayPlan::None);
        let done = ReplayPlan::new(request(10, 7), 7, &at, 1, NOW, DAY);
        assert_eq!(done, ReplayPlan::None);
        assert_eq!(done.start_sequence(&at), 101);
        assert_eq!(
            done.ids_since(NOW, DAY, Some(NOW - 7200)),
            u32::try_from(NOW - DAY).unwrap()
        );
        assert_eq!(done.order_from(at.clone()), at);
    }

    #[test]
    fn a_request_after_what_is_written_is_done_at_once() {
        let plan = ReplayPlan::new(request(101, 3), 0, &resume(100), 1, NOW, DAY);
        assert_eq!(
            plan,
            ReplayPlan::Nothing(Rewind {
                from: 101,
                revision: 3
            })
        );
        assert_eq!(plan.start_sequence(&resume(100)), 101);
        // Pointing into a cut-short batch beyond the resume point: read again.
        let cut = ResumePoint {
            written_through: 100,
            already_written: [104, 105].into_iter().collect(),
        };
        let mut into_cut = replay(ReplayPlan::new(request(90, 3), 0, &cut, 1, NOW, DAY));
        assert_eq!(into_cut.end, 105);
        // Below the resume point an old message is not read again; a gap of
        // the cut-short batch above it was never written: read, however old.
        assert_eq!(into_cut.judge(95, NOW - DAY, 9), Replayed::TooOld);
        assert_eq!(into_cut.judge(103, NOW - DAY, 8), Replayed::Yes);
        // Everything written has expired from the stream: nothing to read.
        let gone = ReplayPlan::new(request(5, 3), 0, &resume(100), 101, NOW, DAY);
        assert_eq!(
            gone,
            ReplayPlan::Nothing(Rewind {
                from: 5,
                revision: 3
            })
        );
        // Partly expired: the consumer starts at the stream's first message.
        let part = ReplayPlan::new(request(5, 3), 0, &resume(100), 60, NOW, DAY);
        assert_eq!(replay(part).end, 100);
    }

    #[test]
    fn a_replay_starts_at_the_request_and_ends_at_the_resume_point() {
        let at = ResumePoint {
            written_through: 100,
            already_written: [104, 105].into_iter().collect(),
        };
        let plan = ReplayPlan::new(request(40, 3), 0, &at, 1, NOW, DAY);
        assert_eq!(plan.start_sequence(&at), 40);
        let order = plan.order_from(at.clone());
        assert_eq!(order.written_through, 39);
        assert!(
            order.already_written.is_empty(),
            "a replay judges by id, also a cut-short batch's messages"
        );
        let secs = |at: u64| u32::try_from(at).unwrap();
        assert_eq!(plan.ids_since(NOW, DAY, None), secs(NOW - 2 * DAY));
        // Its first message stored 2 h ago: the horizon before it, and the margin.
        assert_eq!(
            plan.ids_since(NOW, DAY, Some(NOW - 7200)),
            secs(NOW - 7200 - DAY - REPLAY_MARGIN.as_secs())
        );
        // Stored just now: never less than the horizon; long ago: never more than two.
        assert_eq!(plan.ids_since(NOW, DAY, Some(NOW + 9999)), secs(NOW - DAY));
        assert_eq!(
            plan.ids_since(NOW, DAY, Some(NOW - 3 * DAY)),
            secs(NOW - 2 * DAY)
        );
        let replay = replay(plan);
        assert_eq!(replay.end, 105, "through the cut-short batch's highest");
        assert_eq!(replay.floor_secs, NOW - DAY + REPLAY_MARGIN.as_secs());
    }

    #[test]
    fn messages_stored_near_or_beyond_the_horizon_are_not_replayed() {
        let mut old = replay(ReplayPlan::new(request(1, 1), 0, &resume(50), 1, NOW, DAY));
        // Stored 23 h 30 min ago: its ids may be older than the horizon
        // by another machine's clock.
        assert_eq!(old.judge(1, NOW - DAY + 1800, 40), Replayed::TooOld);
        // Stored 22 h ago: every id it carries is in the seen-set.
        assert_eq!(old.judge(2, NOW - 22 * 3600, 39), Replayed::Yes);
        assert_eq!(old.too_old, 1);
        // A horizon shorter than the margin replays nothing.
        let mut short = replay(ReplayPlan::new(request(1, 1), 0, &resume(50), 1, NOW, 600));
        assert_eq!(short.judge(1, NOW, 10), Replayed::TooOld);
    }

    #[test]
    fn a_replay_ends_at_its_end_sequence_or_the_last_pending_message() {
        let mut at_end = replay(ReplayPlan::new(request(10, 1), 0, &resume(30), 1, NOW, DAY));
        assert!(!at_end.ends_before(12));
        assert_eq!(at_end.judge(12, NOW, 9), Replayed::Yes);
        assert!(!at_end.ended);
        assert_eq!(at_end.judge(30, NOW, 5), Replayed::Yes);
        assert!(at_end.ended, "the resume point's own message is the last");
        assert!(
            !at_end.ends_before(31),
            "ended already: nothing to hand over"
        );
        assert_eq!(at_end.judge(31, NOW, 4), Replayed::No);

        // The resume point's message is not this partition's (a cut-short
        // batch): the first later delivery ends the replay, after the batch
        // read so far has gone.
        let mut past = replay(ReplayPlan::new(request(10, 1), 0, &resume(30), 1, NOW, DAY));
        assert_eq!(past.judge(20, NOW, 9), Replayed::Yes);
        assert!(past.ends_before(33));
        assert_eq!(past.judge(33, NOW, 8), Replayed::No);
        assert!(past.ended);

        // Nothing more pending: the replay is over whatever its end says.
        let mut drained = replay(ReplayPlan::new(request(10, 1), 0, &resume(30), 1, NOW, DAY));
        assert_eq!(drained.judge(25, NOW, 0), Replayed::Yes);
        assert!(drained.ended);
    }
}
