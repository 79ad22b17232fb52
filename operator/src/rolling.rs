//! Rolling restart of the broker pods (pure, no I/O): which outdated pod, if any, to delete
//! now. The StatefulSet uses `OnDelete`, so the operator decides: one pod at a time, only when
//! every broker is ready and caught up, followers first and leaders last. See
//! [`restart_step`].

use std::collections::BTreeMap;

use crate::membership::{BrokerObservation, leader_views};

/// A broker counts as caught up when, for every stream, its applied index is at most this
/// many entries behind the leader's commit index.
pub const MAX_APPLY_LAG: u64 = 100;

/// The next step of a rolling restart of the broker pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartStep {
    /// Every pod runs the StatefulSet's update revision.
    UpToDate,
    /// Delete this pod (it is outdated; every broker is ready and caught up).
    Restart {
        /// Ordinal of the pod to delete.
        ordinal: i32,
    },
    /// Some pods are outdated but it is not safe to restart one now.
    Wait {
        /// Why.
        reason: String,
    },
}

/// Chooses at most one outdated broker pod to delete (the StatefulSet uses `OnDelete`).
///
/// Nothing is deleted unless every broker `0..replicas` is ready and, for every stream, applied
/// up to `max_lag` entries of its leader's commit index. Among the outdated pods, those leading
/// no Raft group go first (highest ordinal first), leaders last.
pub fn restart_step(
    update_revision: Option<&str>,
    replicas: i32,
    brokers: &[BrokerObservation],
    max_lag: u64,
) -> RestartStep {
    let Some(update) = update_revision else {
        return RestartStep::UpToDate;
    };
    let brokers: Vec<BrokerObservation> = brokers
        .iter()
        .filter(|b| b.ordinal < replicas)
        .cloned()
        .collect();
    let outdated: Vec<&BrokerObservation> = brokers
        .iter()
        .filter(|b| {
            b.pod
                .as_ref()
                .and_then(|p| p.revision.as_deref())
                .is_some_and(|r| r != update)
        })
        .collect();
    if outdated.is_empty() {
        return RestartStep::UpToDate;
    }
    for o in 0..replicas {
        if !brokers.iter().any(|b| b.ordinal == o && b.is_up()) {
            return RestartStep::Wait {
                reason: format!("waiting for broker {o} to be ready before restarting another"),
            };
        }
    }
    let views = leader_views(&brokers);
    let mut leads: BTreeMap<i32, usize> = BTreeMap::new();
    for (stream, view) in &views {
        let Some((leader, lr)) = view else {
            return RestartStep::Wait {
                reason: format!("waiting for stream {stream} to elect a leader"),
            };
        };
        *leads.entry(*leader).or_default() += 1;
        for b in &brokers {
            let applied = b
                .status
                .as_ref()
                .and_then(|s| s.raft.get(*stream))
                .map_or(0, |r| r.applied_index);
            if applied.saturating_add(max_lag) < lr.commit_index {
                return RestartStep::Wait {
                    reason: format!(
                        "waiting for broker {} to catch up on stream {stream} (applied {applied}, leader committed {})",
                        b.ordinal, lr.commit_index
                    ),
                };
            }
        }
    }
    let pick = outdated
        .iter()
        .min_by_key(|b| {
            (
                leads.get(&b.ordinal).copied().unwrap_or(0),
                std::cmp::Reverse(b.ordinal),
            )
        })
        .map(|b| b.ordinal);
    match pick {
        Some(ordinal) => RestartStep::Restart { ordinal },
        None => RestartStep::UpToDate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::fixtures::*;

    #[test]
    fn restart_steps() {
        let v = &[0, 1, 2];
        let cases: Vec<(&str, Option<&str>, Vec<BrokerObservation>, RestartStep)> = vec![
            (
                "all pods on the update revision",
                Some("new"),
                vec![up(0, 0, v, BOTH, "new"), up(1, 1, v, &[], "new"), up(2, 2, v, &[], "new")],
                RestartStep::UpToDate,
            ),
            (
                "no update revision known yet",
                None,
                vec![up(0, 0, v, BOTH, "old")],
                RestartStep::UpToDate,
            ),
            (
                "followers first, highest ordinal first",
                Some("new"),
                vec![up(0, 0, v, BOTH, "old"), up(1, 1, v, &[], "old"), up(2, 2, v, &[], "old")],
                RestartStep::Restart { ordinal: 2 },
            ),
            (
                "the leader last",
                Some("new"),
                vec![up(0, 0, v, BOTH, "old"), up(1, 1, v, &[], "new"), up(2, 2, v, &[], "new")],
                RestartStep::Restart { ordinal: 0 },
            ),
            (
                "equal leadership: the highest ordinal first",
                Some("new"),
                vec![
                    up(0, 0, v, &["transactions"], "old"),
                    up(1, 1, v, &["decisions"], "old"),
                    up(2, 2, v, &[], "new"),
                ],
                RestartStep::Restart { ordinal: 1 },
            ),
            (
                "one broker not ready: none",
                Some("new"),
                vec![
                    up(0, 0, v, BOTH, "old"),
                    not_ready(up(1, 1, v, &[], "new")),
                    up(2, 2, v, &[], "old"),
                ],
                RestartStep::Wait {
                    reason: "waiting for broker 1 to be ready before restarting another".into(),
                },
            ),
            (
                "one broker missing (just deleted): none",
                Some("new"),
                vec![up(0, 0, v, BOTH, "old"), up(2, 2, v, &[], "old")],
                RestartStep::Wait {
                    reason: "waiting for broker 1 to be ready before restarting another".into(),
                },
            ),
            (
                "one broker lagging behind the leader's commit index: none",
                Some("new"),
                vec![
                    up(0, 0, v, BOTH, "old"),
                    lagging(up(1, 1, v, &[], "new"), 800),
                    up(2, 2, v, &[], "old"),
                ],
                RestartStep::Wait {
                    reason: "waiting for broker 1 to catch up on stream decisions (applied 800, leader committed 1000)".into(),
                },
            ),
            (
                "a lag within the bound is caught up",
                Some("new"),
                vec![
                    up(0, 0, v, BOTH, "old"),
                    lagging(up(1, 1, v, &[], "new"), 950),
                    up(2, 2, v, &[], "new"),
                ],
                RestartStep::Restart { ordinal: 0 },
            ),
        ];
        for (name, rev, brokers, want) in cases {
            assert_eq!(
                restart_step(rev, 3, &brokers, MAX_APPLY_LAG),
                want,
                "{name}"
            );
        }
    }
}
