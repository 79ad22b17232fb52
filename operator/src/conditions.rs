//! Status conditions (pure, no I/O): `Ready`, `Progressing` and `Degraded` from what a
//! reconcile observed ([`desired_conditions`]), the conditions of a refused spec
//! ([`invalid_spec_conditions`]), and the merge by type that keeps transition times
//! ([`merge_conditions`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::membership::MembershipStep;
use crate::rolling::RestartStep;

/// Worker Deployment state used for the conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkersObservation {
    /// `status.replicas`.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// A rollout is under way (new generation not observed, or pods not all updated).
    pub rolling: bool,
}

/// Everything [`desired_conditions`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `metadata.generation` of the pipeline.
    pub generation: Option<i64>,
    /// `spec.broker.replicas`.
    pub desired_brokers: i32,
    /// Ready broker replicas (StatefulSet `status.readyReplicas`).
    pub ready_brokers: i32,
    /// This reconcile's membership step.
    pub membership: MembershipStep,
    /// This reconcile's restart step (`None` when not evaluated, during membership changes).
    pub restart: Option<RestartStep>,
    /// `spec.workers.replicas`.
    pub desired_workers: i32,
    /// Worker Deployment state.
    pub workers: WorkersObservation,
    /// `(reason, message)` of every degradation (first one is reported).
    pub degraded: Vec<(String, String)>,
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// The `Ready`, `Progressing` and `Degraded` conditions for what was observed (with
/// `lastTransitionTime` = now; [`merge_conditions`] keeps older times of unchanged statuses).
///
/// - `Ready`: every desired broker and worker is ready (`Available`), else `BrokersNotReady` /
///   `WorkersNotReady`.
/// - `Progressing`: `Creating`, `ScalingBrokers`, `ChangingMembership`, `WaitingForBrokers`,
///   `RollingRestart`, `RollingOutWorkers`, `WaitingForWorkers`; else False `Stable`.
/// - `Degraded`: the first of `degraded`, else False `AsExpected`.
pub fn desired_conditions(o: &Observed) -> Vec<Condition> {
    let g = o.generation;
    let brokers_ok = o.ready_brokers >= o.desired_brokers;
    let workers_ok = o.workers.ready >= o.desired_workers;
    let ready = match (brokers_ok, workers_ok) {
        (true, true) => condition(
            "Ready",
            true,
            "Available",
            format!(
                "{}/{} brokers and {}/{} workers ready",
                o.ready_brokers, o.desired_brokers, o.workers.ready, o.desired_workers
            ),
            g,
        ),
        (false, _) => condition(
            "Ready",
            false,
            "BrokersNotReady",
            format!("{}/{} brokers ready", o.ready_brokers, o.desired_brokers),
            g,
        ),
        (true, false) => condition(
            "Ready",
            false,
            "WorkersNotReady",
            format!("{}/{} workers ready", o.workers.ready, o.desired_workers),
            g,
        ),
    };
    let progressing: Option<(&str, String)> = match &o.membership {
        MembershipStep::Create => Some(("Creating", "creating the broker StatefulSet".into())),
        MembershipStep::Scale { from, to } => Some((
            "ScalingBrokers",
            format!(
                "brokers {from} -> {to} (target {}), one member at a time",
                o.desired_brokers
            ),
        )),
        MembershipStep::SetVoters { ordinals } => Some((
            "ChangingMembership",
            format!("making brokers {ordinals:?} the Raft voters"),
        )),
        MembershipStep::Wait { reason } => Some(("WaitingForBrokers", reason.clone())),
        MembershipStep::Steady => None,
    }
    .or_else(|| match &o.restart {
        Some(RestartStep::Restart { ordinal }) => Some((
            "RollingRestart",
            format!("restarting broker {ordinal} on the new revision"),
        )),
        Some(RestartStep::Wait { reason }) => Some(("RollingRestart", reason.clone())),
        _ => None,
    })
    .or_else(|| {
        (!brokers_ok).then(|| {
            (
                "WaitingForBrokers",
                format!("{}/{} brokers ready", o.ready_brokers, o.desired_brokers),
            )
        })
    })
    .or_else(|| {
        o.workers.rolling.then(|| {
            (
                "RollingOutWorkers",
                "worker Deployment rolling out".to_string(),
            )
        })
    })
    .or_else(|| {
        (!workers_ok).then(|| {
            (
                "WaitingForWorkers",
                format!("{}/{} workers ready", o.workers.ready, o.desired_workers),
            )
        })
    });
    let progressing = match progressing {
        Some((reason, message)) => condition("Progressing", true, reason, message, g),
        None => condition(
            "Progressing",
            false,
            "Stable",
            "the pipeline matches its spec".into(),
            g,
        ),
    };
    let degraded = match o.degraded.first() {
        Some((reason, message)) => condition("Degraded", true, reason, message.clone(), g),
        None => condition("Degraded", false, "AsExpected", String::new(), g),
    };
    vec![ready, progressing, degraded]
}

/// Type of the condition about `spec.tls` certificates.
pub const CERTIFICATES_READY: &str = "CertificatesReady";

/// State of the certificates as the certificates phase found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertsCondition {
    /// Every certificate is issued and valid.
    pub ready: bool,
    /// CamelCase reason: `Issued`, `Renewed`, `Valid`, `WaitingForCertManager`,
    /// `CertManagerNotInstalled`.
    pub reason: String,
    /// What, with expiry or the names still missing.
    pub message: String,
}

/// The `CertificatesReady` condition: from `state` when TLS is on; when it is off, `True`
/// `TlsDisabled` only if the pipeline had the condition before (so a stale one does not
/// linger), else none.
pub fn certificates_condition(
    state: Option<&CertsCondition>,
    had_condition: bool,
    generation: Option<i64>,
) -> Option<Condition> {
    match state {
        Some(c) => Some(condition(
            CERTIFICATES_READY,
            c.ready,
            &c.reason,
            c.message.clone(),
            generation,
        )),
        None if had_condition => Some(condition(
            CERTIFICATES_READY,
            true,
            "TlsDisabled",
            "spec.tls is off: no certificates".into(),
            generation,
        )),
        None => None,
    }
}

/// Conditions for a spec the operator refuses (`reason` from [`crate::Error::InvalidSpec`]): `Ready`
/// and `Degraded` carry the reason, `Progressing` is False (nothing is applied).
pub fn invalid_spec_conditions(
    generation: Option<i64>,
    reason: &str,
    message: &str,
) -> Vec<Condition> {
    vec![
        condition("Ready", false, reason, message.into(), generation),
        condition(
            "Progressing",
            false,
            "InvalidSpec",
            "nothing applied until the spec is fixed".into(),
            generation,
        ),
        condition("Degraded", true, reason, message.into(), generation),
    ]
}

/// Merges `new` into `old` by `type`: one entry per type, `new`'s values win, but an entry
/// whose `status` did not change keeps its old `lastTransitionTime`. Types only in `old` are
/// kept (after the new ones).
pub fn merge_conditions(old: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
    let mut out: Vec<Condition> = new
        .into_iter()
        .map(|mut c| {
            if let Some(prev) = old.iter().find(|o| o.type_ == c.type_)
                && prev.status == c.status
            {
                c.last_transition_time = prev.last_transition_time.clone();
            }
            c
        })
        .collect();
    for o in old {
        if !out.iter().any(|c| c.type_ == o.type_) {
            out.push(o.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (case, observed, expected (status, reason) of Ready, Progressing, Degraded)
    type ConditionCase = (&'static str, Observed, [(&'static str, &'static str); 3]);
    /// (case, old, new, merged)
    type MergeCase = (&'static str, Vec<Condition>, Vec<Condition>, Vec<Condition>);

    fn observed() -> Observed {
        Observed {
            generation: Some(4),
            desired_brokers: 3,
            ready_brokers: 3,
            membership: MembershipStep::Steady,
            restart: Some(RestartStep::UpToDate),
            desired_workers: 2,
            workers: WorkersObservation {
                replicas: 2,
                ready: 2,
                rolling: false,
            },
            degraded: vec![],
        }
    }

    fn summary(cs: &[Condition]) -> Vec<(String, String, String)> {
        cs.iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    #[test]
    fn conditions_for_observed_states() {
        let t = |s: &str| s.to_string();
        let cases: Vec<ConditionCase> = vec![
            (
                "all ready",
                observed(),
                [
                    ("True", "Available"),
                    ("False", "Stable"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "creating",
                Observed {
                    ready_brokers: 0,
                    membership: MembershipStep::Create,
                    restart: None,
                    workers: WorkersObservation::default(),
                    ..observed()
                },
                [
                    ("False", "BrokersNotReady"),
                    ("True", "Creating"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "scaling brokers",
                Observed {
                    desired_brokers: 5,
                    membership: MembershipStep::Scale { from: 3, to: 4 },
                    restart: None,
                    ..observed()
                },
                [
                    ("False", "BrokersNotReady"),
                    ("True", "ScalingBrokers"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "changing membership",
                Observed {
                    membership: MembershipStep::SetVoters {
                        ordinals: vec![0, 1, 2],
                    },
                    restart: None,
                    ..observed()
                },
                [
                    ("True", "Available"),
                    ("True", "ChangingMembership"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "rolling restart",
                Observed {
                    ready_brokers: 2,
                    restart: Some(RestartStep::Restart { ordinal: 1 }),
                    ..observed()
                },
                [
                    ("False", "BrokersNotReady"),
                    ("True", "RollingRestart"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "workers rolling out",
                Observed {
                    workers: WorkersObservation {
                        replicas: 3,
                        ready: 2,
                        rolling: true,
                    },
                    ..observed()
                },
                [
                    ("True", "Available"),
                    ("True", "RollingOutWorkers"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "workers not ready",
                Observed {
                    workers: WorkersObservation {
                        replicas: 2,
                        ready: 1,
                        rolling: false,
                    },
                    ..observed()
                },
                [
                    ("False", "WorkersNotReady"),
                    ("True", "WaitingForWorkers"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "degraded without ServiceMonitor CRD",
                Observed {
                    degraded: vec![(t("ServiceMonitorUnavailable"), t("no CRD"))],
                    ..observed()
                },
                [
                    ("True", "Available"),
                    ("False", "Stable"),
                    ("True", "ServiceMonitorUnavailable"),
                ],
            ),
        ];
        for (name, o, want) in cases {
            let got = summary(&desired_conditions(&o));
            let want: Vec<_> = ["Ready", "Progressing", "Degraded"]
                .iter()
                .zip(want)
                .map(|(ty, (s, r))| (t(ty), t(s), t(r)))
                .collect();
            assert_eq!(got, want, "{name}");
            assert!(
                desired_conditions(&o)
                    .iter()
                    .all(|c| c.observed_generation == Some(4))
            );
        }
    }

    #[test]
    fn certificates_condition_follows_the_state_and_clears_when_tls_is_turned_off() {
        let waiting = CertsCondition {
            ready: false,
            reason: "WaitingForCertManager".into(),
            message: "demo-worker-tls".into(),
        };
        let c = certificates_condition(Some(&waiting), false, Some(3)).expect("condition");
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            (CERTIFICATES_READY, "False", "WaitingForCertManager")
        );
        assert_eq!(c.observed_generation, Some(3));
        let off = certificates_condition(None, true, Some(3)).expect("condition");
        assert_eq!(
            (off.status.as_str(), off.reason.as_str()),
            ("True", "TlsDisabled")
        );
        assert_eq!(certificates_condition(None, false, Some(3)), None);
    }

    #[test]
    fn invalid_spec_conditions_carry_the_reason() {
        let cs = invalid_spec_conditions(Some(2), "VolumeShrinkRefused", "10Gi < 20Gi");
        assert_eq!(
            summary(&cs),
            vec![
                ("Ready".into(), "False".into(), "VolumeShrinkRefused".into()),
                ("Progressing".into(), "False".into(), "InvalidSpec".into()),
                (
                    "Degraded".into(),
                    "True".into(),
                    "VolumeShrinkRefused".into()
                ),
            ]
        );
        assert_eq!(cs[0].message, "10Gi < 20Gi");
    }

    fn cond(type_: &str, status: &str, reason: &str, at: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::from_second(at).unwrap()),
        }
    }

    #[test]
    fn merging_conditions() {
        let cases: Vec<MergeCase> = vec![
            (
                "first status: new times",
                vec![],
                vec![cond("Ready", "False", "BrokersNotReady", 100)],
                vec![cond("Ready", "False", "BrokersNotReady", 100)],
            ),
            (
                "same status, new reason: time kept, reason updated",
                vec![cond("Ready", "False", "BrokersNotReady", 10)],
                vec![cond("Ready", "False", "WorkersNotReady", 100)],
                vec![cond("Ready", "False", "WorkersNotReady", 10)],
            ),
            (
                "status changed: new time",
                vec![cond("Ready", "False", "BrokersNotReady", 10)],
                vec![cond("Ready", "True", "Available", 100)],
                vec![cond("Ready", "True", "Available", 100)],
            ),
            (
                "one entry per type; unknown old types kept after the new ones",
                vec![
                    cond("Custom", "True", "X", 5),
                    cond("Ready", "True", "Available", 10),
                ],
                vec![
                    cond("Ready", "True", "Available", 100),
                    cond("Degraded", "False", "AsExpected", 100),
                ],
                vec![
                    cond("Ready", "True", "Available", 10),
                    cond("Degraded", "False", "AsExpected", 100),
                    cond("Custom", "True", "X", 5),
                ],
            ),
        ];
        for (name, old, new, want) in cases {
            assert_eq!(merge_conditions(&old, new), want, "{name}");
        }
    }
}
