//! Health that tells the truth: which streams this broker can serve, and whether the process
//! must be restarted.
//!
//! Kubernetes acts on two probes the operator renders: readiness (`grpc.health.v1` for the
//! service `""`, and `/readyz`) takes a pod out of the client Service; liveness (`/healthz`)
//! restarts it. [`HealthTracker`] turns what each stream reports into both answers; it is a
//! pure state machine (the caller passes the time), so every rule has a table-driven test.
//!
//! Per stream, in order:
//! 1. **Failed storage** (the group-commit writer is poisoned by a write or fsync error, e.g.
//!    ENOSPC or EIO): the stream is `NOT_SERVING`, `/readyz` is 503 and `/healthz` is 500. A
//!    poisoned writer never recovers in place (the kernel may have dropped the dirty pages of
//!    a failed fsync, so the only safe continuation is to recover from what is on disk): a
//!    restart by the kubelet re-opens the log, truncates a torn tail, and serves again once
//!    space is back.
//! 2. **No leader** for longer than `leaderless_grace` (default twice the maximum election
//!    timeout: one timeout to notice the old leader is gone, one for the election) after a
//!    leader was seen: `NOT_SERVING` and `/readyz` 503 with the stream and for how long. The
//!    process stays alive (`/healthz` 200): a minority partition heals by itself.
//! 3. Otherwise `SERVING`. In a cluster of several replicas, a stream that has *never* had a
//!    leader since this process started (the cluster is forming, or every replica restarted
//!    at once) stays `SERVING`: a StatefulSet with `podManagementPolicy: OrderedReady` starts
//!    pod `i + 1` only when pod `i` is ready, so readiness that waited for a quorum would never
//!    get one. A single replica needs nobody else to elect itself, so there the clock of rule 2
//!    starts at the first probe.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What one stream reports at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamProbe {
    /// Stream name.
    pub name: String,
    /// The writer's poison error (`Some`: the log failed and needs a restart).
    pub poisoned: Option<String>,
    /// Whether this node currently knows a leader of the stream's Raft group.
    pub has_leader: bool,
}

/// The verdict for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHealth {
    /// Stream name.
    pub name: String,
    /// `None`: serving; `Some(reason)`: not serving, and why (one line, for people).
    pub not_serving: Option<String>,
}

/// The verdict for the whole process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthReport {
    /// One entry per stream, in the order probed.
    pub streams: Vec<StreamHealth>,
    /// `Some(reason)`: the process must be restarted (`/healthz` fails).
    pub restart: Option<String>,
}

impl HealthReport {
    /// True when every stream is serving.
    pub fn all_serving(&self) -> bool {
        self.streams.iter().all(|s| s.not_serving.is_none())
    }

    /// The reasons of the streams that are not serving, one per line (`stream: reason`).
    pub fn reasons(&self) -> String {
        self.streams
            .iter()
            .filter_map(|s| s.not_serving.as_ref().map(|r| format!("{}: {r}\n", s.name)))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Seen {
    /// A leader was known at some point since start.
    ever: bool,
    /// Since when no leader is known (`None`: a leader is known now).
    leaderless_since: Option<Instant>,
}

/// Tracks leaderless periods per stream and evaluates probes (see the module docs).
#[derive(Debug)]
pub struct HealthTracker {
    leaderless_grace: Duration,
    single_node: bool,
    seen: BTreeMap<String, Seen>,
}

impl HealthTracker {
    /// A tracker that declares a stream unavailable after `leaderless_grace` without a leader;
    /// `single_node`: this replica is the whole cluster (see rule 3 of the module docs).
    pub fn new(leaderless_grace: Duration, single_node: bool) -> Self {
        Self {
            leaderless_grace,
            single_node,
            seen: BTreeMap::new(),
        }
    }

    /// Evaluates `probes` taken at `now` (monotonic; never earlier than the previous call).
    pub fn evaluate(&mut self, now: Instant, probes: &[StreamProbe]) -> HealthReport {
        let mut report = HealthReport::default();
        let mut restart = Vec::new();
        for p in probes {
            let seen = self.seen.entry(p.name.clone()).or_insert_with(|| Seen {
                ever: self.single_node,
                leaderless_since: None,
            });
            if p.has_leader {
                seen.ever = true;
                seen.leaderless_since = None;
            } else if seen.leaderless_since.is_none() {
                seen.leaderless_since = Some(now);
            }
            let not_serving = if let Some(e) = &p.poisoned {
                restart.push(format!("stream {}: log failed: {e}", p.name));
                Some(format!("log failed, restart needed: {e}"))
            } else {
                match seen.leaderless_since {
                    Some(since) if seen.ever && now - since > self.leaderless_grace => {
                        Some(format!(
                            "no Raft leader for {} ms (limit {} ms)",
                            (now - since).as_millis(),
                            self.leaderless_grace.as_millis()
                        ))
                    }
                    _ => None,
                }
            };
            report.streams.push(StreamHealth {
                name: p.name.clone(),
                not_serving,
            });
        }
        if !restart.is_empty() {
            report.restart = Some(restart.join("; "));
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(name: &str, has_leader: bool, poisoned: Option<&str>) -> StreamProbe {
        StreamProbe {
            name: name.into(),
            poisoned: poisoned.map(str::to_string),
            has_leader,
        }
    }

    const GRACE: Duration = Duration::from_millis(900);

    #[test]
    fn each_rule_gives_its_verdict() {
        struct Case {
            what: &'static str,
            /// (ms since start, has_leader, poisoned) probes of stream "s", in order.
            steps: &'static [(u64, bool, Option<&'static str>)],
            serving: bool,
            restart: bool,
        }
        let cases = [
            Case {
                what: "leader known: serving",
                steps: &[(0, true, None)],
                serving: true,
                restart: false,
            },
            Case {
                what: "never had a leader (cluster forming): serving however long",
                steps: &[(0, false, None), (60_000, false, None)],
                serving: true,
                restart: false,
            },
            Case {
                what: "lost the leader within the grace: serving",
                steps: &[(0, true, None), (100, false, None), (1_000, false, None)],
                serving: true,
                restart: false,
            },
            Case {
                what: "lost the leader beyond the grace: not serving, no restart",
                steps: &[(0, true, None), (100, false, None), (1_001, false, None)],
                serving: false,
                restart: false,
            },
            Case {
                what: "leader back after a long gap: serving again",
                steps: &[
                    (0, true, None),
                    (100, false, None),
                    (5_000, false, None),
                    (5_100, true, None),
                ],
                serving: true,
                restart: false,
            },
            Case {
                what: "a new leaderless period starts its own clock",
                steps: &[
                    (0, true, None),
                    (100, false, None),
                    (5_000, true, None),
                    (5_100, false, None),
                    (5_500, false, None),
                ],
                serving: true,
                restart: false,
            },
            Case {
                what: "poisoned writer: not serving and restart, even with a leader",
                steps: &[(0, true, Some("No space left on device"))],
                serving: false,
                restart: true,
            },
        ];
        for c in cases {
            let t0 = Instant::now();
            let mut t = HealthTracker::new(GRACE, false);
            let mut last = HealthReport::default();
            for &(ms, leader, poison) in c.steps {
                last = t.evaluate(
                    t0 + Duration::from_millis(ms),
                    &[probe("s", leader, poison)],
                );
            }
            assert_eq!(last.all_serving(), c.serving, "{}: {last:?}", c.what);
            assert_eq!(last.restart.is_some(), c.restart, "{}: {last:?}", c.what);
        }
    }

    #[test]
    fn a_single_replica_that_never_elects_itself_stops_serving_after_the_grace() {
        let t0 = Instant::now();
        let mut t = HealthTracker::new(GRACE, true);
        assert!(t.evaluate(t0, &[probe("s", false, None)]).all_serving());
        let r = t.evaluate(
            t0 + GRACE + Duration::from_millis(1),
            &[probe("s", false, None)],
        );
        assert!(!r.all_serving(), "{r:?}");
        assert!(r.restart.is_none());
    }

    #[test]
    fn reasons_name_the_stream_and_the_cause() {
        let t0 = Instant::now();
        let mut t = HealthTracker::new(GRACE, false);
        t.evaluate(t0, &[probe("a", true, None), probe("b", true, None)]);
        t.evaluate(
            t0 + Duration::from_millis(10),
            &[probe("a", false, None), probe("b", true, None)],
        );
        let r = t.evaluate(
            t0 + Duration::from_millis(2_000),
            &[probe("a", false, None), probe("b", true, Some("EIO"))],
        );
        let reasons = r.reasons();
        assert!(
            reasons.contains("a: no Raft leader for 1990 ms"),
            "{reasons}"
        );
        assert!(
            reasons.contains("b: log failed, restart needed: EIO"),
            "{reasons}"
        );
        assert_eq!(r.restart.as_deref(), Some("stream b: log failed: EIO"));
    }
}
