//! The fault schedule: a pure function of the seed.
//!
//! [`Schedule::new`] draws, from a seed, a list of [`Fault`]s that fill `duration`: each has a
//! [`FaultKind`], a length of 1-5 s and a gap of 1-3 s before the next one (the previous
//! fault is healed before the gap starts). Roles (leader, follower) are resolved only when a
//! fault begins, from the cluster as it is then; the seed also picks which follower, which
//! stream's leader and which worker, so the same seed replays the same kinds of fault at the
//! same times.

use std::fmt;
use std::time::Duration;

use txpipe_client::streams;

/// Which way traffic is cut between a node and the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways: the node neither sends to nor hears the others.
    Both,
    /// The node hears nothing from the others (DROP on its INPUT); what it sends arrives.
    Inbound,
    /// Nothing the node sends reaches the others (DROP on its OUTPUT); it hears them.
    Outbound,
}

/// A broker chosen by role when the fault begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The leader of `stream` (any node while nobody leads it).
    Leader {
        /// The stream whose leader is meant.
        stream: &'static str,
    },
    /// A follower of `transactions`; `pick` chooses among the followers.
    Follower {
        /// Seeded choice among the followers (modulo their number).
        pick: u64,
    },
    /// Any broker, by ordinal (modulo the number of brokers).
    Any {
        /// Seeded choice among the brokers.
        pick: u64,
    },
}

/// One kind of fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// The node is cut from every other broker (clients still reach it).
    Isolate {
        /// Which node.
        node: Role,
        /// Which way.
        direction: Direction,
    },
    /// A minority of the brokers (those of `picks`, distinct, at most (n-1)/2 of them, always
    /// at least one) is cut from the majority both ways.
    Split {
        /// Seeded choice of the minority.
        pick: u64,
    },
    /// SIGSTOP, SIGCONT at the heal.
    Pause {
        /// Which node.
        node: Role,
    },
    /// kill -9, restarted on its data directory at the heal.
    KillBroker {
        /// Which node.
        node: Role,
    },
    /// kill -9 of a worker, restarted at the heal.
    KillWorker {
        /// Seeded choice among the workers.
        pick: u64,
    },
    /// kill -9 of the producer, restarted at the heal with the same command line.
    KillProducer,
    /// Two faults at once (a network or pause fault and a process kill).
    Both(Box<FaultKind>, Box<FaultKind>),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Leader { stream } => write!(f, "leader of {stream}"),
            Role::Follower { .. } => write!(f, "a follower"),
            Role::Any { .. } => write!(f, "a broker"),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Isolate { node, direction } => {
                let how = match direction {
                    Direction::Both => "isolate",
                    Direction::Inbound => "deafen (inbound cut)",
                    Direction::Outbound => "mute (outbound cut)",
                };
                write!(f, "{how} {node}")
            }
            FaultKind::Split { .. } => write!(f, "majority/minority split"),
            FaultKind::Pause { node } => write!(f, "pause {node}"),
            FaultKind::KillBroker { node } => write!(f, "kill -9 {node}"),
            FaultKind::KillWorker { .. } => write!(f, "kill -9 a worker"),
            FaultKind::KillProducer => write!(f, "kill -9 the producer"),
            FaultKind::Both(a, b) => write!(f, "{a} + {b}"),
        }
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// When it begins, from the start of the nemesis.
    pub at: Duration,
    /// How long it lasts before it is healed.
    pub length: Duration,
    /// What it is.
    pub kind: FaultKind,
}

/// The whole schedule of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The faults, in time order, none overlapping.
    pub faults: Vec<Fault>,
}

/// SplitMix64: the seeded generator (as [`crate::chaos`] uses).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x6E65_6D65_7369_7321)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// Streams whose leader a leader fault may target (the producer's, the checker's, the
/// workers' output).
const LEADER_STREAMS: [&str; 3] = [streams::TRANSACTIONS, streams::LABELS, streams::DECISIONS];

impl Schedule {
    /// The faults of `seed` filling `duration` (the first after 3 s of calm, the last healed
    /// before `duration` ends).
    pub fn new(seed: u64, duration: Duration) -> Self {
        let mut rng = Rng::new(seed);
        let mut faults = Vec::new();
        let mut at = Duration::from_secs(3);
        loop {
            let length = rng.millis(1_000, 5_000);
            if at + length > duration {
                break;
            }
            let kind = Self::kind(&mut rng, true);
            faults.push(Fault { at, length, kind });
            at += length + rng.millis(1_000, 3_000);
        }
        Self { faults }
    }

    fn node(rng: &mut Rng) -> Role {
        match rng.next() % 3 {
            0 => Role::Leader {
                stream: LEADER_STREAMS[(rng.next() % 3) as usize],
            },
            1 => Role::Follower { pick: rng.next() },
            _ => Role::Any { pick: rng.next() },
        }
    }

    fn kind(rng: &mut Rng, combine: bool) -> FaultKind {
        let leader_or_follower = |rng: &mut Rng| {
            if rng.next().is_multiple_of(2) {
                Role::Leader {
                    stream: LEADER_STREAMS[(rng.next() % 3) as usize],
                }
            } else {
                Role::Follower { pick: rng.next() }
            }
        };
        match rng.next() % 12 {
            0 | 1 => FaultKind::Isolate {
                node: leader_or_follower(rng),
                direction: Direction::Both,
            },
            2 => FaultKind::Isolate {
                node: leader_or_follower(rng),
                direction: Direction::Inbound,
            },
            3 => FaultKind::Isolate {
                node: leader_or_follower(rng),
                direction: Direction::Outbound,
            },
            4 => FaultKind::Split { pick: rng.next() },
            5 | 6 => FaultKind::Pause {
                node: leader_or_follower(rng),
            },
            7 => FaultKind::KillBroker {
                node: Self::node(rng),
            },
            8 => FaultKind::KillWorker { pick: rng.next() },
            9 => FaultKind::KillProducer,
            _ if combine => {
                let net = Self::kind_network(rng);
                let proc = match rng.next() % 2 {
                    0 => FaultKind::KillWorker { pick: rng.next() },
                    _ => FaultKind::KillProducer,
                };
                FaultKind::Both(Box::new(net), Box::new(proc))
            }
            _ => FaultKind::KillProducer,
        }
    }

    fn kind_network(rng: &mut Rng) -> FaultKind {
        loop {
            let k = Self::kind(rng, false);
            if matches!(
                k,
                FaultKind::Isolate { .. } | FaultKind::Split { .. } | FaultKind::Pause { .. }
            ) {
                return k;
            }
        }
    }
}

/// The minority of a split among `n` brokers: `max(1, (n-1)/2)` distinct ordinals from `pick`.
pub fn minority(n: usize, pick: u64) -> Vec<usize> {
    let size = ((n.saturating_sub(1)) / 2).max(1);
    let mut rng = Rng::new(pick);
    let mut out: Vec<usize> = Vec::with_capacity(size);
    while out.len() < size.min(n) {
        let i = (rng.next() % n as u64) as usize;
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_faults_never_overlap() {
        let d = Duration::from_secs(60);
        let a = Schedule::new(7, d);
        assert_eq!(a, Schedule::new(7, d));
        assert_ne!(a, Schedule::new(8, d));
        assert!(a.faults.len() >= 6, "{}", a.faults.len());
        let mut end = Duration::ZERO;
        for f in &a.faults {
            assert!(
                f.at >= end + Duration::from_secs(1),
                "{f:?} starts before a gap"
            );
            assert!((1_000..=5_000).contains(&(f.length.as_millis() as u64)));
            end = f.at + f.length;
        }
        assert!(end <= d);
    }

    #[test]
    fn many_seeds_reach_every_kind_of_fault() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..50 {
            for f in Schedule::new(seed, Duration::from_secs(60)).faults {
                let name = match &f.kind {
                    FaultKind::Isolate { direction, .. } => format!("isolate-{direction:?}"),
                    FaultKind::Split { .. } => "split".into(),
                    FaultKind::Pause { .. } => "pause".into(),
                    FaultKind::KillBroker { .. } => "kill-broker".into(),
                    FaultKind::KillWorker { .. } => "kill-worker".into(),
                    FaultKind::KillProducer => "kill-producer".into(),
                    FaultKind::Both(a, _) => {
                        assert!(!matches!(**a, FaultKind::Both(..)));
                        "both".into()
                    }
                };
                seen.insert(name);
            }
        }
        assert_eq!(seen.len(), 9, "{seen:?}");
    }

    #[test]
    fn a_split_cuts_a_minority_of_distinct_nodes() {
        for pick in 0..20 {
            assert_eq!(minority(3, pick).len(), 1);
            let m = minority(5, pick);
            assert_eq!(m.len(), 2);
            assert_ne!(m[0], m[1]);
            assert!(m.iter().all(|&i| i < 5));
        }
        assert_eq!(minority(1, 3), vec![0]);
    }

    #[test]
    fn a_short_run_has_no_fault_that_outlasts_it() {
        assert!(Schedule::new(1, Duration::from_secs(3)).faults.is_empty());
        for f in Schedule::new(1, Duration::from_secs(10)).faults {
            assert!(f.at + f.length <= Duration::from_secs(10));
        }
    }
}
