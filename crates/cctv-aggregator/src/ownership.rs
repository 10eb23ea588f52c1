//! Who should own which partition, and what this instance must do about it:
//! a pure state machine over what was read from the lease bucket, with time
//! passed in (tests need no clock and no NATS).
//!
//! Rules:
//! - A key (member or lease) is alive while its revision keeps changing: it
//!   is expired once the observer has seen the same revision for a whole TTL
//!   on its own monotonic clock. No two machines' clocks are compared.
//! - The live members, sorted by id, share the partitions round robin:
//!   partition `k` belongs to member `k mod n`. Every member computes the
//!   same assignment from the same bucket.
//! - A free partition (no lease) is taken by its assigned member, or by
//!   anyone once it has been free for a TTL (its assignee may be dead).
//!   An expired lease is taken over the same way, with a compare-and-set on
//!   the revision seen, so of several takers one wins.
//! - A held partition assigned to another live member is handed over: the
//!   term is drained, then the lease deleted, and the assignee takes it.
//! - An owner renews every TTL/3 and trusts its lease only until
//!   `last renewal sent + TTL - margin`: past that it stops writing even if
//!   nobody told it, and whatever it still sends is fenced in ClickHouse.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A key as last observed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    revision: u64,
    owner: String,
    /// When this observer first saw this revision.
    since: Instant,
}

/// A lease this instance holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// Revision of the last successful write.
    pub revision: u64,
    /// Fencing token of the term (fixed at acquisition).
    pub epoch: u64,
    /// When the last successful write was sent.
    pub renewed_at: Instant,
    /// Whether the term is being drained for a handover or shutdown.
    pub draining: bool,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Take partition `partition`: create its lease (`revision: None`) or
    /// take over an expired one seen at `revision`.
    Acquire {
        /// The partition.
        partition: u16,
        /// Revision expected (None: the key must not exist).
        revision: Option<u64>,
    },
    /// Renew a held lease.
    Renew {
        /// The partition.
        partition: u16,
        /// Revision of our last write.
        revision: u64,
    },
    /// Drain a held partition (handover): stop reading, flush, then release.
    Drain {
        /// The partition.
        partition: u16,
    },
    /// Stop at once: the lease is no longer trusted (not renewed in time).
    Abandon {
        /// The partition.
        partition: u16,
    },
    /// Delete a dead member's key.
    ForgetMember {
        /// Its key's member id.
        member: String,
        /// Revision seen.
        revision: u64,
    },
}

/// The ownership state of one instance.
#[derive(Debug)]
pub(crate) struct Ownership {
    me: String,
    partitions: u16,
    ttl: Duration,
    leases: BTreeMap<u16, Seen>,
    /// Partitions seen free, and since when.
    free_since: BTreeMap<u16, Instant>,
    members: BTreeMap<String, Seen>,
    held: BTreeMap<u16, Held>,
}

impl Ownership {
    /// A fresh state for member `me`.
    pub(crate) fn new(me: impl Into<String>, partitions: u16, ttl: Duration) -> Self {
        Self {
            me: me.into(),
            partitions,
            ttl,
            leases: BTreeMap::new(),
            free_since: BTreeMap::new(),
            members: BTreeMap::new(),
            held: BTreeMap::new(),
        }
    }

    /// How long before expiry an owner stops trusting its lease.
    pub(crate) fn margin(&self) -> Duration {
        self.ttl / 5
    }

    /// Records a read of the bucket: every lease `(partition, owner,
    /// revision)` and every member `(id, revision)` present now.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        leases: &[(u16, String, u64)],
        members: &[(String, u64)],
    ) {
        let mut present = BTreeSet::new();
        for (partition, owner, revision) in leases {
            present.insert(*partition);
            self.free_since.remove(partition);
            let changed = self
                .leases
                .get(partition)
                .is_none_or(|seen| seen.revision != *revision);
            if changed {
                self.leases.insert(
                    *partition,
                    Seen {
                        revision: *revision,
                        owner: owner.clone(),
                        since: now,
                    },
                );
            }
        }
        self.leases
            .retain(|partition, _| present.contains(partition));
        for partition in 0..self.partitions {
            if !present.contains(&partition) {
                self.free_since.entry(partition).or_insert(now);
            }
        }
        let ids: BTreeSet<&String> = members.iter().map(|(id, _)| id).collect();
        self.members.retain(|id, _| ids.contains(id));
        for (id, revision) in members {
            let changed = self
                .members
                .get(id)
                .is_none_or(|seen| seen.revision != *revision);
            if changed {
                self.members.insert(
                    id.clone(),
                    Seen {
                        revision: *revision,
                        owner: id.clone(),
                        since: now,
                    },
                );
            }
        }
    }

    /// The live members, sorted (always including this one).
    pub(crate) fn live_members(&self, now: Instant) -> Vec<String> {
        let mut live: BTreeSet<String> = self
            .members
            .iter()
            .filter(|(_, seen)| now.duration_since(seen.since) < self.ttl)
            .map(|(id, _)| id.clone())
            .collect();
        live.insert(self.me.clone());
        live.into_iter().collect()
    }

    /// The member partition `partition` is assigned to among `live`.
    pub(crate) fn assignee(partition: u16, live: &[String]) -> Option<&str> {
        if live.is_empty() {
            return None;
        }
        live.get(usize::from(partition) % live.len())
            .map(String::as_str)
    }

    /// What to do at `now`.
    pub(crate) fn plan(&self, now: Instant) -> Vec<Action> {
        let live = self.live_members(now);
        let mut actions = Vec::new();
        for partition in 0..self.partitions {
            let assignee = Self::assignee(partition, &live);
            let mine = assignee == Some(self.me.as_str());
            if let Some(held) = self.held.get(&partition) {
                if now >= held.renewed_at + self.ttl - self.margin() {
                    actions.push(Action::Abandon { partition });
                    continue;
                }
                if now.duration_since(held.renewed_at) >= self.ttl / 3 {
                    actions.push(Action::Renew {
                        partition,
                        revision: held.revision,
                    });
                }
                if !mine && !held.draining {
                    actions.push(Action::Drain { partition });
                }
                continue;
            }
            match self.leases.get(&partition) {
                None => {
                    let free_long = self
                        .free_since
                        .get(&partition)
                        .is_some_and(|since| now.duration_since(*since) >= self.ttl);
                    if mine || free_long {
                        actions.push(Action::Acquire {
                            partition,
                            revision: None,
                        });
                    }
                }
                Some(seen) => {
                    let stale = now.duration_since(seen.since);
                    if (mine && stale >= self.ttl) || stale >= self.ttl * 2 {
                        actions.push(Action::Acquire {
                            partition,
                            revision: Some(seen.revision),
                        });
                    }
                }
            }
        }
        for (id, seen) in &self.members {
            if id != &self.me && now.duration_since(seen.since) >= self.ttl * 3 {
                actions.push(Action::ForgetMember {
                    member: id.clone(),
                    revision: seen.revision,
                });
            }
        }
        actions
    }

    /// A lease was taken (or renewed) with a write of `revision` sent at `sent_at`.
    pub(crate) fn acquired(&mut self, partition: u16, revision: u64, epoch: u64, sent_at: Instant) {
        self.held.insert(
            partition,
            Held {
                revision,
                epoch,
                renewed_at: sent_at,
                draining: false,
            },
        );
    }

    /// A renewal succeeded.
    pub(crate) fn renewed(&mut self, partition: u16, revision: u64, sent_at: Instant) {
        if let Some(held) = self.held.get_mut(&partition) {
            held.revision = revision;
            held.renewed_at = sent_at;
        }
    }

    /// A held partition is being drained.
    pub(crate) fn draining(&mut self, partition: u16) {
        if let Some(held) = self.held.get_mut(&partition) {
            held.draining = true;
        }
    }

    /// This instance no longer holds `partition` (released, lost or abandoned).
    pub(crate) fn dropped(&mut self, partition: u16) -> Option<Held> {
        self.held.remove(&partition)
    }

    /// A held lease.
    pub(crate) fn held(&self, partition: u16) -> Option<Held> {
        self.held.get(&partition).copied()
    }

    /// Every held partition.
    pub(crate) fn held_partitions(&self) -> Vec<u16> {
        self.held.keys().copied().collect()
    }

    /// Until when the lease of `partition` may be trusted.
    pub(crate) fn valid_until(&self, partition: u16) -> Option<Instant> {
        self.held
            .get(&partition)
            .map(|held| held.renewed_at + self.ttl - self.margin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn lease(partition: u16, owner: &str, revision: u64) -> (u16, String, u64) {
        (partition, owner.to_string(), revision)
    }

    fn members(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter()
            .map(|(id, rev)| ((*id).to_string(), *rev))
            .collect()
    }

    fn acquires(actions: &[Action]) -> Vec<u16> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Acquire { partition, .. } => Some(*partition),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_lone_member_takes_every_free_partition() {
        let now = Instant::now();
        let mut state = Ownership::new("a", 4, TTL);
        state.observe(now, &[], &members(&[("a", 1)]));
        assert_eq!(acquires(&state.plan(now)), vec![0, 1, 2, 3]);
    }

    #[test]
    fn two_members_split_the_partitions_evenly() {
        let now = Instant::now();
        let mut a = Ownership::new("a", 4, TTL);
        let mut b = Ownership::new("b", 4, TTL);
        let seen = members(&[("a", 1), ("b", 2)]);
        a.observe(now, &[], &seen);
        b.observe(now, &[], &seen);
        assert_eq!(acquires(&a.plan(now)), vec![0, 2]);
        assert_eq!(acquires(&b.plan(now)), vec![1, 3]);
    }

    #[test]
    fn a_live_lease_is_left_alone_and_an_expired_one_taken_over() {
        let start = Instant::now();
        let mut b = Ownership::new("b", 2, TTL);
        let seen = members(&[("a", 1), ("b", 2)]);
        b.observe(start, &[lease(1, "a", 10)], &seen);
        assert_eq!(acquires(&b.plan(start)), Vec::<u16>::new());
        // a stops renewing (killed): its member key and lease stay at the same
        // revision; after a TTL b is the only live member and takes over.
        let later = start + TTL;
        b.observe(later, &[lease(1, "a", 10)], &members(&[("a", 1), ("b", 3)]));
        assert_eq!(
            b.plan(later),
            vec![
                Action::Acquire {
                    partition: 0,
                    revision: None
                },
                Action::Acquire {
                    partition: 1,
                    revision: Some(10)
                }
            ]
        );
    }

    #[test]
    fn a_renewed_lease_never_expires() {
        let start = Instant::now();
        let mut b = Ownership::new("b", 1, TTL);
        for step in 0..10u64 {
            let now = start + Duration::from_secs(step * 3);
            b.observe(
                now,
                &[lease(0, "a", 10 + step)],
                &members(&[("a", 1 + step), ("b", 1)]),
            );
            assert!(acquires(&b.plan(now)).is_empty(), "step {step}");
        }
    }

    #[test]
    fn holders_renew_and_hand_over_to_a_newcomer() {
        let start = Instant::now();
        let mut a = Ownership::new("a", 2, TTL);
        a.observe(start, &[], &members(&[("a", 1)]));
        a.acquired(0, 5, 5, start);
        a.acquired(1, 6, 6, start);
        assert!(a.plan(start).is_empty());
        let later = start + TTL / 3;
        a.observe(
            later,
            &[lease(0, "a", 5), lease(1, "a", 6)],
            &members(&[("a", 2), ("b", 1)]),
        );
        let plan = a.plan(later);
        assert!(plan.contains(&Action::Renew {
            partition: 0,
            revision: 5
        }));
        assert!(plan.contains(&Action::Drain { partition: 1 }));
        assert!(!plan.contains(&Action::Drain { partition: 0 }));
        a.draining(1);
        assert!(!a.plan(later).contains(&Action::Drain { partition: 1 }));
    }

    #[test]
    fn an_owner_not_renewed_in_time_abandons_its_lease() {
        let start = Instant::now();
        let mut a = Ownership::new("a", 1, TTL);
        a.observe(start, &[], &members(&[("a", 1)]));
        a.acquired(0, 5, 5, start);
        let almost = start + TTL - a.margin() - Duration::from_millis(1);
        assert!(!a.plan(almost).contains(&Action::Abandon { partition: 0 }));
        let late = start + TTL - a.margin();
        assert_eq!(a.plan(late), vec![Action::Abandon { partition: 0 }]);
        assert_eq!(a.valid_until(0), Some(late));
        assert!(a.dropped(0).is_some());
        assert!(a.held_partitions().is_empty());
    }

    #[test]
    fn a_partition_free_for_a_ttl_is_taken_by_anyone_and_dead_members_forgotten() {
        let start = Instant::now();
        let mut b = Ownership::new("b", 2, TTL);
        let seen = members(&[("a", 1), ("b", 1)]);
        b.observe(start, &[], &seen);
        assert_eq!(acquires(&b.plan(start)), vec![1]);
        // Partition 0 is a's, but a never takes it (stuck, yet renewing its
        // member key): after a TTL free, b takes it.
        let later = start + TTL;
        b.observe(later, &[], &members(&[("a", 2), ("b", 1)]));
        assert_eq!(acquires(&b.plan(later)), vec![0, 1]);
        let much_later = later + TTL * 3;
        b.observe(much_later, &[], &members(&[("a", 2), ("b", 1)]));
        assert!(b.plan(much_later).contains(&Action::ForgetMember {
            member: "a".into(),
            revision: 2
        }));
    }
}
