//! Broker membership decisions (pure, no I/O): the replicas to render in this reconcile and
//! the Raft voter change to make, one member at a time.
//!
//! Grow: once every broker is ready and the voters are exactly the current pods, render one
//! more replica; once the new pod is ready (it joined as a learner), make every pod a voter.
//! Shrink: first make the pods without the highest ordinal the voters, and only once no group
//! counts it as a voter, render one replica less. See [`membership_step`].

use std::collections::{BTreeMap, BTreeSet};

use crate::broker_admin::{BrokerNodeStatus, StreamRaftStatus};

/// A broker pod as the controller sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodState {
    /// Pod condition `Ready=True` and not terminating.
    pub ready: bool,
    /// `controller-revision-hash` label.
    pub revision: Option<String>,
    /// `metadata.uid` (delete precondition).
    pub uid: Option<String>,
}

/// What the controller observed about broker ordinal `ordinal`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrokerObservation {
    /// StatefulSet ordinal.
    pub ordinal: i32,
    /// The pod, if it exists.
    pub pod: Option<PodState>,
    /// Its `/status.json`, if it answered.
    pub status: Option<BrokerNodeStatus>,
}

impl BrokerObservation {
    /// Ready pod whose broker answered with its node id and Raft view.
    pub fn is_up(&self) -> bool {
        self.pod.as_ref().is_some_and(|p| p.ready) && self.node_id().is_some()
    }

    /// Node id reported by the broker.
    pub fn node_id(&self) -> Option<u64> {
        self.status.as_ref().and_then(|s| s.known_node_id())
    }
}

/// The next broker membership step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipStep {
    /// No StatefulSet yet: create it with every replica (the brokers bootstrap together).
    Create,
    /// Replicas and voters match the spec.
    Steady,
    /// Render `to` replicas (one more or one less than `from`).
    Scale {
        /// Current replicas.
        from: i32,
        /// Replicas rendered by this step.
        to: i32,
    },
    /// Make the brokers of these ordinals exactly the voters of every Raft group.
    SetVoters {
        /// Ordinals of the wanted voters.
        ordinals: Vec<i32>,
    },
    /// Nothing to do until brokers become ready or elect leaders.
    Wait {
        /// Why.
        reason: String,
    },
}

/// Replicas to render plus the membership step that led to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipPlan {
    /// Broker replicas to render.
    pub replicas: i32,
    /// The step.
    pub step: MembershipStep,
}

/// Per stream, the view of the broker that leads it (highest term wins if several claim it).
pub(crate) fn leader_views(
    brokers: &[BrokerObservation],
) -> BTreeMap<&str, Option<(i32, &StreamRaftStatus)>> {
    let mut out: BTreeMap<&str, Option<(i32, &StreamRaftStatus)>> = BTreeMap::new();
    for b in brokers {
        let Some(s) = b.status.as_ref() else { continue };
        for (name, r) in &s.raft {
            let slot = out.entry(name.as_str()).or_default();
            if r.is_leader && slot.is_none_or(|(_, cur)| r.term > cur.term) {
                *slot = Some((b.ordinal, r));
            }
        }
    }
    out
}

/// Whether the voters of every group (as its leader sees them) are exactly the nodes of
/// `ordinals`. `None` when that cannot be told: a node id is unknown or reported twice, or a
/// group has no leader.
fn voters_converged(ordinals: &[i32], brokers: &[BrokerObservation]) -> Option<bool> {
    let mut ids = BTreeSet::new();
    for o in ordinals {
        ids.insert(brokers.iter().find(|b| b.ordinal == *o)?.node_id()?);
    }
    if ids.len() != ordinals.len() {
        // Two brokers claim the same id (one has not reported its own yet): unknown.
        return None;
    }
    let views = leader_views(brokers);
    if views.is_empty() {
        return None;
    }
    let mut all = true;
    for view in views.values() {
        let (_, r) = (*view)?;
        all &= r.voters == ids;
    }
    Some(all)
}

/// Decides the broker replicas of this reconcile and the membership action (see the module
/// docs). `current` is the live StatefulSet's `spec.replicas` (`None` without a StatefulSet);
/// `brokers` holds one observation per ordinal below `current`.
pub fn membership_step(
    desired: i32,
    current: Option<i32>,
    brokers: &[BrokerObservation],
) -> MembershipPlan {
    let cur = match current {
        Some(c) if c > 0 => c,
        _ => {
            return MembershipPlan {
                replicas: desired,
                step: MembershipStep::Create,
            };
        }
    };
    let wait = |reason: String| MembershipPlan {
        replicas: cur,
        step: MembershipStep::Wait { reason },
    };
    let not_up = |ordinals: &[i32]| -> Option<i32> {
        ordinals
            .iter()
            .copied()
            .find(|o| !brokers.iter().any(|b| b.ordinal == *o && b.is_up()))
    };
    if cur > desired {
        // Shrink: the highest ordinal leaves the groups before its pod goes.
        let keep: Vec<i32> = (0..cur - 1).collect();
        return match voters_converged(&keep, brokers) {
            Some(true) => MembershipPlan {
                replicas: cur - 1,
                step: MembershipStep::Scale {
                    from: cur,
                    to: cur - 1,
                },
            },
            _ => match not_up(&keep) {
                Some(o) => wait(format!(
                    "waiting for broker {o} to be ready before removing broker {}",
                    cur - 1
                )),
                None if leader_views(brokers).values().any(Option::is_none) => {
                    wait("waiting for every Raft group to elect a leader and every broker to report a distinct node id".into())
                }
                None => MembershipPlan {
                    replicas: cur,
                    step: MembershipStep::SetVoters { ordinals: keep },
                },
            },
        };
    }
    let all: Vec<i32> = (0..cur).collect();
    if let Some(o) = not_up(&all) {
        return wait(format!("waiting for broker {o} to be ready"));
    }
    match voters_converged(&all, brokers) {
        None => wait("waiting for every Raft group to elect a leader and every broker to report a distinct node id".into()),
        Some(false) => MembershipPlan {
            replicas: cur,
            step: MembershipStep::SetVoters { ordinals: all },
        },
        Some(true) if cur < desired => MembershipPlan {
            replicas: cur + 1,
            step: MembershipStep::Scale {
                from: cur,
                to: cur + 1,
            },
        },
        Some(true) => MembershipPlan {
            replicas: cur,
            step: MembershipStep::Steady,
        },
    }
}

/// Builders of broker observations shared by the decision tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A broker that is up: ready pod on `rev`, node id `id`, viewing `voters` in two streams,
    /// leading those listed in `leads` (term 2), with the given applied/commit indexes.
    pub(crate) fn up(
        ordinal: i32,
        id: u64,
        voters: &[u64],
        leads: &[&str],
        rev: &str,
    ) -> BrokerObservation {
        let raft = ["transactions", "decisions"]
            .iter()
            .map(|s| {
                (
                    s.to_string(),
                    StreamRaftStatus {
                        is_leader: leads.contains(s),
                        term: 2,
                        voters: voters.iter().copied().collect(),
                        commit_index: 1000,
                        applied_index: 1000,
                        ..Default::default()
                    },
                )
            })
            .collect();
        BrokerObservation {
            ordinal,
            pod: Some(PodState {
                ready: true,
                revision: Some(rev.into()),
                uid: Some(format!("uid-{ordinal}")),
            }),
            status: Some(BrokerNodeStatus {
                ready: true,
                node_id: Some(id),
                raft,
                ..Default::default()
            }),
        }
    }

    pub(crate) fn not_ready(mut b: BrokerObservation) -> BrokerObservation {
        if let Some(p) = b.pod.as_mut() {
            p.ready = false;
        }
        b
    }

    pub(crate) fn lagging(mut b: BrokerObservation, applied: u64) -> BrokerObservation {
        if let Some(s) = b.status.as_mut() {
            for r in s.raft.values_mut() {
                r.applied_index = applied;
            }
        }
        b
    }

    /// Both standard streams.
    pub(crate) const BOTH: &[&str] = &["transactions", "decisions"];
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    /// (case, desired, current, observations, expected plan)
    type MembershipCase = (
        &'static str,
        i32,
        Option<i32>,
        Vec<BrokerObservation>,
        MembershipPlan,
    );

    #[test]
    fn membership_steps() {
        use MembershipStep::*;
        let cases: Vec<MembershipCase> = vec![
            (
                "no StatefulSet: create all replicas at once",
                3,
                None,
                vec![],
                MembershipPlan {
                    replicas: 3,
                    step: Create,
                },
            ),
            (
                "steady single node",
                1,
                Some(1),
                vec![up(0, 0, &[0], BOTH, "r")],
                MembershipPlan {
                    replicas: 1,
                    step: Steady,
                },
            ),
            (
                "grow 1 -> 3: one replica more first",
                3,
                Some(1),
                vec![up(0, 0, &[0], BOTH, "r")],
                MembershipPlan {
                    replicas: 2,
                    step: Scale { from: 1, to: 2 },
                },
            ),
            (
                "grow: the new pod is not ready yet",
                3,
                Some(2),
                vec![
                    up(0, 0, &[0], BOTH, "r"),
                    not_ready(up(1, 7, &[0], &[], "r")),
                ],
                MembershipPlan {
                    replicas: 2,
                    step: Wait {
                        reason: "waiting for broker 1 to be ready".into(),
                    },
                },
            ),
            (
                "grow: the new pod is ready (a learner): make it a voter",
                3,
                Some(2),
                vec![up(0, 0, &[0], BOTH, "r"), up(1, 7, &[0], &[], "r")],
                MembershipPlan {
                    replicas: 2,
                    step: SetVoters {
                        ordinals: vec![0, 1],
                    },
                },
            ),
            (
                "grow: voters converged, next replica",
                3,
                Some(2),
                vec![up(0, 0, &[0, 7], BOTH, "r"), up(1, 7, &[0, 7], &[], "r")],
                MembershipPlan {
                    replicas: 3,
                    step: Scale { from: 2, to: 3 },
                },
            ),
            (
                "the voters are seen by each stream's leader (here broker 1 leads decisions)",
                2,
                Some(2),
                vec![
                    up(0, 0, &[0, 7], &["transactions"], "r"),
                    up(1, 7, &[0], &["decisions"], "r"),
                ],
                MembershipPlan {
                    replicas: 2,
                    step: SetVoters {
                        ordinals: vec![0, 1],
                    },
                },
            ),
            (
                "no leader for a stream: wait",
                3,
                Some(3),
                vec![
                    up(0, 0, &[0, 1, 2], &["transactions"], "r"),
                    up(1, 1, &[0, 1, 2], &[], "r"),
                    up(2, 2, &[0, 1, 2], &[], "r"),
                ],
                MembershipPlan {
                    replicas: 3,
                    step: Wait {
                        reason: "waiting for every Raft group to elect a leader and every broker to report a distinct node id".into(),
                    },
                },
            ),
            (
                "a replaced volume left a stale voter id: reset the voters",
                3,
                Some(3),
                vec![
                    up(0, 0, &[0, 1, 9], BOTH, "r"),
                    up(1, 1, &[0, 1, 9], &[], "r"),
                    up(2, 12, &[0, 1, 9], &[], "r"),
                ],
                MembershipPlan {
                    replicas: 3,
                    step: SetVoters {
                        ordinals: vec![0, 1, 2],
                    },
                },
            ),
            (
                "two brokers report the same node id: wait, never scale on it",
                3,
                Some(2),
                vec![up(0, 0, &[0], BOTH, "r"), up(1, 0, &[0], &[], "r")],
                MembershipPlan {
                    replicas: 2,
                    step: Wait {
                        reason: "waiting for every Raft group to elect a leader and every broker to report a distinct node id".into(),
                    },
                },
            ),
            (
                "shrink 3 -> 1: first remove the highest ordinal from the voters",
                1,
                Some(3),
                vec![
                    up(0, 0, &[0, 1, 2], &[], "r"),
                    up(1, 1, &[0, 1, 2], &[], "r"),
                    up(2, 2, &[0, 1, 2], BOTH, "r"),
                ],
                MembershipPlan {
                    replicas: 3,
                    step: SetVoters {
                        ordinals: vec![0, 1],
                    },
                },
            ),
            (
                "shrink: once it left the voters, remove its pod",
                1,
                Some(3),
                vec![
                    up(0, 0, &[0, 1], BOTH, "r"),
                    up(1, 1, &[0, 1], &[], "r"),
                    up(2, 2, &[0, 1], &[], "r"),
                ],
                MembershipPlan {
                    replicas: 2,
                    step: Scale { from: 3, to: 2 },
                },
            ),
            (
                "shrink: the leaving pod may be down already",
                1,
                Some(3),
                vec![
                    up(0, 0, &[0, 1], BOTH, "r"),
                    up(1, 1, &[0, 1], &[], "r"),
                    BrokerObservation {
                        ordinal: 2,
                        pod: None,
                        status: None,
                    },
                ],
                MembershipPlan {
                    replicas: 2,
                    step: Scale { from: 3, to: 2 },
                },
            ),
            (
                "shrink: a remaining broker is not ready",
                1,
                Some(3),
                vec![
                    up(0, 0, &[0, 1, 2], BOTH, "r"),
                    not_ready(up(1, 1, &[0, 1, 2], &[], "r")),
                    up(2, 2, &[0, 1, 2], &[], "r"),
                ],
                MembershipPlan {
                    replicas: 3,
                    step: Wait {
                        reason: "waiting for broker 1 to be ready before removing broker 2".into(),
                    },
                },
            ),
            (
                "brokers still bootstrapping (not answering): wait",
                3,
                Some(3),
                vec![
                    BrokerObservation {
                        ordinal: 0,
                        pod: Some(PodState::default()),
                        status: Some(BrokerNodeStatus::default()),
                    },
                    BrokerObservation {
                        ordinal: 1,
                        pod: None,
                        status: None,
                    },
                    BrokerObservation {
                        ordinal: 2,
                        pod: None,
                        status: None,
                    },
                ],
                MembershipPlan {
                    replicas: 3,
                    step: Wait {
                        reason: "waiting for broker 0 to be ready".into(),
                    },
                },
            ),
        ];
        for (name, desired, current, brokers, want) in cases {
            assert_eq!(membership_step(desired, current, &brokers), want, "{name}");
        }
    }
}
