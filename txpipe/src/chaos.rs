//! The chaos schedule of local mode as a pure state machine.
//!
//! [`Chaos`] decides *what* to kill and restart and *when*; it does no I/O, reads no clock and
//! starts no process. Local mode ([`crate::local`]) calls [`Chaos::step`] every supervision
//! tick with a [`Tick`]: the time since the producer started, the transactions resolved so far
//! (`None` while the statistics are unreadable, e.g. during a failover), the run's length, and
//! (when [`Chaos::needs_cluster`] asked for it) a [`ClusterView`] of the broker replicas (who
//! leads `transactions`, in which term, which replicas have rejoined). It answers with
//! [`Action`]s as data: [`Action::Kill`] and [`Action::Restart`] of a [`Target`], which the
//! [supervisor](crate::supervisor) carries out, and the [`ChaosKill`] records to announce and
//! report.
//!
//! The rules:
//! - **Progress kills**: `--chaos-events` kills at seeded fractions (5-90%) of the run's
//!   transactions resolved ([`chaos_schedule`]); each kills worker *i* (restarted at once) or
//!   the current leader of `transactions`.
//! - **Interval kills**: with `--chaos-kill-interval-ms`, the leader of `transactions` again
//!   every interval (seeded jitter 0.5-1.5x), counted from the previous killed broker's rejoin
//!   and only once the run has resolved more since; none after 95% of the run.
//! - **Producer kills**: `--chaos-producer-kills` kills of the producer at seeded fractions
//!   (10-80%) of the run's transactions *stored* (the `transactions` end offset), each
//!   followed at once by a restart with the same command line, as a Kubernetes Job restarts
//!   its pod. The restarted producer registers under the same name, fences the old epoch and
//!   resumes after its last acknowledged position (issue 12), so the audit still finds every
//!   transaction stored once. Kills due after the producer has finished are dropped.
//! - **One broker down at a time**: a broker kill waits until the previous killed broker has
//!   rejoined (ready, knowing a leader of every stream), so a quorum always survives. With no
//!   leader in sight (an election under way) the kill is retried at the next tick.
//! - **Restart after a failover**: a killed broker is restarted after a seeded delay of
//!   ¼..1 × `--chaos-restart-delay-ms`, counted from the kill with one broker and from the
//!   election of a new leader with several (so every leader kill causes a real failover; after
//!   30 s without an election it is restarted anyway). It must rejoin within
//!   [`REJOIN_DEADLINE`] of its kill, or the run fails ([`Action::RejoinTimeout`]).
//!
//! Every random choice comes from `--chaos-seed` (SplitMix64), so a run's schedule is
//! reproducible; the times it happens at depend on the machine.

use std::time::Duration;

use serde::Serialize;

/// A killed broker must have rejoined within this long of its kill.
pub const REJOIN_DEADLINE: Duration = Duration::from_secs(90);

/// With several brokers and no election seen this long after a kill, the killed broker is
/// restarted anyway (the [`REJOIN_DEADLINE`] then reports a cluster that cannot elect).
pub const ELECTION_WAIT: Duration = Duration::from_secs(30);

/// No interval kill once this fraction of the run is resolved.
pub const INTERVAL_KILLS_UNTIL: f64 = 0.95;

/// A process of a local run that chaos kills and restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Broker replica `i` (role `broker-<i>`), restarted on its data directory.
    Broker(usize),
    /// Worker `i` (role `worker-<i>`), restarted in its cgroup.
    Worker(u32),
    /// The producer (role `producer`), restarted with the same command line.
    Producer,
}

impl Target {
    /// The role name, as in logs and the report: `broker-<i>`, `worker-<i>`.
    pub fn role(self) -> String {
        match self {
            Self::Broker(i) => format!("broker-{i}"),
            Self::Worker(i) => format!("worker-{i}"),
            Self::Producer => "producer".into(),
        }
    }
}

/// What the state machine asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// SIGKILL the target now.
    Kill(Target),
    /// Start the target again with the same command line.
    Restart(Target),
    /// A broker kill was done and its outcome (failover, rejoin) is still open: announce it.
    Began(ChaosKill),
    /// A kill is over; its record goes to the report.
    Finished(ChaosKill),
    /// The killed broker has not rejoined within [`REJOIN_DEADLINE`]: fail the run.
    RejoinTimeout(Target),
}

/// One chaos kill and what followed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChaosKill {
    /// The process killed: `broker-<i>` or `worker-<i>`.
    pub target: String,
    /// What scheduled it: `progress` (a --chaos-events point) or `interval`.
    pub trigger: String,
    /// Seconds since the producer started.
    pub at_s: f64,
    /// Transactions resolved when it happened.
    pub at_resolved: u64,
    /// Streams the killed broker led (empty for a worker).
    pub leader_of: Vec<String>,
    /// The broker that led `transactions` next (a broker kill; `None` if never seen).
    pub new_leader: Option<String>,
    /// Kill to the first moment a replica said it leads `transactions`, seconds.
    pub leader_gap_s: Option<f64>,
    /// Kill to restart of a broker, seconds (with several replicas: the election plus the
    /// seeded restart delay; rounded up to the supervision tick). A worker is restarted at
    /// once.
    pub restart_after_s: Option<f64>,
    /// Kill to the restarted broker being ready and knowing a leader of every stream,
    /// seconds.
    pub downtime_s: Option<f64>,
}

impl ChaosKill {
    /// One line for the report.
    pub fn describe(&self) -> String {
        let mut s = if self.leader_of.is_empty() {
            format!(
                "{:>7.1} s  {} at {} resolved [{}]",
                self.at_s, self.target, self.at_resolved, self.trigger
            )
        } else {
            format!(
                "{:>7.1} s  {} (leader of {}) at {} resolved [{}]",
                self.at_s,
                self.target,
                self.leader_of.join(", "),
                self.at_resolved,
                self.trigger
            )
        };
        if let (Some(l), Some(g)) = (&self.new_leader, self.leader_gap_s) {
            let again = if *l == self.target { " again" } else { "" };
            s.push_str(&format!(": transactions led{again} by {l} after {g:.2} s"));
        }
        if let Some(r) = self.restart_after_s {
            s.push_str(&format!("; restarted after {r:.2} s"));
        }
        if let Some(d) = self.downtime_s {
            s.push_str(&format!("; rejoined after {d:.2} s"));
        }
        s
    }
}

/// The leader of `transactions` as the replicas report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Leader {
    /// Its ordinal.
    pub node: usize,
    /// The term it leads in.
    pub term: u64,
    /// Every stream it leads (for the report).
    pub leads: Vec<String>,
}

/// What the broker replicas say right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// The leader of `transactions`; `None` during an election.
    pub leader: Option<Leader>,
    /// Per ordinal: the replica runs, is ready and knows a leader of every stream.
    pub rejoined: Vec<bool>,
}

/// One supervision tick's input.
#[derive(Debug, Clone, Copy)]
pub struct Tick<'a> {
    /// Since the producer started.
    pub now: Duration,
    /// Transactions resolved (acked or dead-lettered); `None` when unknown this tick.
    pub resolved: Option<u64>,
    /// The run's length in transactions (the producer's planned count once known).
    pub total: u64,
    /// Transactions stored so far (the `transactions` end offset); `None` when unknown.
    pub stored: Option<u64>,
    /// The producer is still running (it has not exited successfully).
    pub producer_running: bool,
    /// The replicas' view; given when [`Chaos::needs_cluster`] said so.
    pub cluster: Option<&'a ClusterView>,
}

/// Settings of the chaos schedule (`txpipe run --chaos*`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChaosConfig {
    /// `--chaos`: off means no kill at all.
    pub enabled: bool,
    /// `--chaos-seed`.
    pub seed: u64,
    /// `--chaos-events`: progress kills.
    pub events: u32,
    /// Worker processes.
    pub workers: u32,
    /// Broker replicas.
    pub brokers: usize,
    /// `--chaos-workers-only`.
    pub workers_only: bool,
    /// `--chaos-broker-only`.
    pub broker_only: bool,
    /// `--chaos-kill-interval-ms`; zero = no interval kills.
    pub interval: Duration,
    /// `--chaos-restart-delay-ms`: the longest restart delay.
    pub max_restart_delay: Duration,
    /// `--chaos-producer-kills`: kills (and restarts) of the producer.
    pub producer_kills: u32,
}

/// A chaos kill planned at a fraction of resolved transactions.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosEvent {
    /// Fraction of the run resolved when the kill happens, 0.05-0.9.
    pub at_fraction: f64,
    /// `None` = a broker (the current leader of `transactions`), `Some(i)` = worker i.
    pub worker: Option<u32>,
}

/// The seeded progress kills: `events` kills spread over 5%-90% of the run, sorted.
pub fn chaos_schedule(
    seed: u64,
    events: u32,
    workers: u32,
    workers_only: bool,
    broker_only: bool,
) -> Vec<ChaosEvent> {
    let mut s = seed;
    let mut v: Vec<ChaosEvent> = (0..events)
        .map(|_| {
            let at_fraction = 0.05 + 0.85 * unit(splitmix(&mut s));
            let pick = splitmix(&mut s);
            let broker = !workers_only && (broker_only || pick.is_multiple_of(3));
            ChaosEvent {
                at_fraction,
                worker: if broker {
                    None
                } else {
                    Some(((pick >> 8) % u64::from(workers)) as u32)
                },
            }
        })
        .collect();
    v.sort_by(|a, b| a.at_fraction.total_cmp(&b.at_fraction));
    v
}

/// The seeded producer kills: `kills` fractions of the stored transactions in 10%-80%,
/// ascending. A stream of its own (`seed` mixed with a constant), so adding producer kills
/// leaves the other kills of a seed where they were.
pub fn producer_kill_schedule(seed: u64, kills: u32) -> Vec<f64> {
    let mut s = seed ^ 0x9D0D_0CE5_0000_0001;
    let mut v: Vec<f64> = (0..kills)
        .map(|_| 0.1 + 0.7 * unit(splitmix(&mut s)))
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// SplitMix64 step (Steele et al. 2014).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The top 53 bits of `x` as a uniform number in [0, 1).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Seeded source of the chaos decisions other than the progress schedule.
#[derive(Debug, Clone)]
struct ChaosRng(u64);

impl ChaosRng {
    /// `max / 4 ..= max`.
    fn restart_delay(&mut self, max: Duration) -> Duration {
        max.mul_f64(0.25 + 0.75 * unit(splitmix(&mut self.0)))
    }

    /// `interval × 0.5..1.5`.
    fn interval(&mut self, interval: Duration) -> Duration {
        interval.mul_f64(0.5 + unit(splitmix(&mut self.0)))
    }
}

/// A broker kill waiting for its replica to come back.
#[derive(Debug, Clone)]
struct Outage {
    node: usize,
    killed_at: Duration,
    old_term: u64,
    /// Seeded delay before the restart (see the module docs).
    delay: Duration,
    wait_for_election: bool,
    restarted: bool,
    record: ChaosKill,
}

/// The chaos state machine (see the module docs).
#[derive(Debug, Clone)]
pub struct Chaos {
    /// Progress kills still to come, the next one last.
    schedule: Vec<ChaosEvent>,
    /// Producer kills still to come (fractions of stored transactions), the next one last.
    producer_schedule: Vec<f64>,
    rng: ChaosRng,
    interval: Duration,
    max_delay: Duration,
    brokers: usize,
    /// When the next interval kill is due; `None` = no (more) interval kills.
    next_interval: Option<Duration>,
    outage: Option<Outage>,
    /// Transactions resolved when the last killed broker rejoined.
    rejoined_resolved: u64,
    /// The latest known resolved count.
    resolved: u64,
}

impl Chaos {
    /// The machine at the producer's start (time zero).
    pub fn new(cfg: &ChaosConfig) -> Self {
        let mut schedule = if cfg.enabled {
            chaos_schedule(
                cfg.seed,
                cfg.events,
                cfg.workers,
                cfg.workers_only,
                cfg.broker_only,
            )
        } else {
            Vec::new()
        };
        schedule.reverse();
        let mut producer_schedule = if cfg.enabled {
            producer_kill_schedule(cfg.seed, cfg.producer_kills)
        } else {
            Vec::new()
        };
        producer_schedule.reverse();
        let mut rng = ChaosRng(cfg.seed ^ 0x5EED_C4A0_5000_0000);
        let next_interval =
            (cfg.enabled && !cfg.interval.is_zero()).then(|| rng.interval(cfg.interval));
        Self {
            schedule,
            producer_schedule,
            rng,
            interval: cfg.interval,
            max_delay: cfg.max_restart_delay,
            brokers: cfg.brokers,
            next_interval,
            outage: None,
            rejoined_resolved: 0,
            resolved: 0,
        }
    }

    /// The broker that is down on purpose (killed and not yet restarted): the supervisor must
    /// not restart it on its own. Once the schedule has restarted it, a crash of the new process
    /// (a start-up failure) is the supervisor's to restart again, as a pod's restart policy
    /// would; the rejoin deadline still fails a run whose broker never comes back.
    pub fn down_broker(&self) -> Option<usize> {
        self.outage
            .as_ref()
            .filter(|o| !o.restarted)
            .map(|o| o.node)
    }

    /// No kill is in progress: the run may end.
    pub fn idle(&self) -> bool {
        self.outage.is_none()
    }

    /// Whether the next [`Chaos::step`] needs a [`ClusterView`]: a killed broker is being
    /// watched, or a broker kill may be due.
    pub fn needs_cluster(&self, now: Duration, resolved: Option<u64>, total: u64) -> bool {
        self.outage.is_some()
            || resolved.is_some_and(|r| {
                self.progress_kill_due(r, total)
                    .is_some_and(|e| e.worker.is_none())
                    || self.interval_kill_due(now, r)
            })
    }

    /// Advances the machine by one tick; returns what to do, in order.
    pub fn step(&mut self, tick: &Tick<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(r) = tick.resolved {
            self.resolved = r;
        }
        if let Some(view) = tick.cluster {
            self.advance_outage(tick.now, view, &mut out);
        }
        if let Some(resolved) = tick.resolved {
            self.progress_kill(tick, resolved, &mut out);
            self.interval_kill(tick, resolved, &mut out);
        }
        self.producer_kill(tick, &mut out);
        out
    }

    /// Kills and restarts the producer when the next producer kill is due.
    fn producer_kill(&mut self, tick: &Tick<'_>, out: &mut Vec<Action>) {
        if !tick.producer_running {
            self.producer_schedule.clear();
            return;
        }
        let (Some(stored), Some(&at)) = (tick.stored, self.producer_schedule.last()) else {
            return;
        };
        if tick.total == 0 || (stored as f64) < at * tick.total as f64 {
            return;
        }
        self.producer_schedule.pop();
        out.push(Action::Kill(Target::Producer));
        out.push(Action::Restart(Target::Producer));
        out.push(Action::Finished(ChaosKill {
            target: Target::Producer.role(),
            trigger: "progress".into(),
            at_s: tick.now.as_secs_f64(),
            at_resolved: self.resolved,
            ..ChaosKill::default()
        }));
    }

    fn progress_kill_due(&self, resolved: u64, total: u64) -> Option<&ChaosEvent> {
        self.schedule
            .last()
            .filter(|e| resolved as f64 >= e.at_fraction * total as f64)
    }

    fn interval_kill_due(&self, now: Duration, resolved: u64) -> bool {
        self.next_interval.is_some_and(|at| now >= at)
            && self.outage.is_none()
            && resolved > self.rejoined_resolved
    }

    fn progress_kill(&mut self, tick: &Tick<'_>, resolved: u64, out: &mut Vec<Action>) {
        let Some(event) = self.progress_kill_due(resolved, tick.total).cloned() else {
            return;
        };
        match event.worker {
            Some(i) => {
                self.schedule.pop();
                let target = Target::Worker(i);
                out.push(Action::Kill(target));
                out.push(Action::Restart(target));
                out.push(Action::Finished(ChaosKill {
                    target: target.role(),
                    trigger: "progress".into(),
                    at_s: tick.now.as_secs_f64(),
                    at_resolved: resolved,
                    ..ChaosKill::default()
                }));
            }
            // A broker kill waits until the previous killed broker has rejoined; without a
            // leader in sight it is retried at the next tick.
            None => {
                if self.outage.is_none() && self.kill_leader(tick, resolved, "progress", out) {
                    self.schedule.pop();
                }
            }
        }
    }

    fn interval_kill(&mut self, tick: &Tick<'_>, resolved: u64, out: &mut Vec<Action>) {
        if !self.interval_kill_due(tick.now, resolved) {
            return;
        }
        if resolved as f64 >= INTERVAL_KILLS_UNTIL * tick.total as f64 {
            self.next_interval = None;
        } else {
            // The next one is scheduled when this broker has rejoined.
            self.kill_leader(tick, resolved, "interval", out);
        }
    }

    /// Kills the leader of `transactions`, if the view shows one; false otherwise (an
    /// election is under way, or no view was given: retried at a later tick).
    fn kill_leader(
        &mut self,
        tick: &Tick<'_>,
        resolved: u64,
        trigger: &str,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(leader) = tick.cluster.and_then(|c| c.leader.as_ref()) else {
            return false;
        };
        let target = Target::Broker(leader.node);
        let record = ChaosKill {
            target: target.role(),
            trigger: trigger.to_string(),
            at_s: tick.now.as_secs_f64(),
            at_resolved: resolved,
            leader_of: leader.leads.clone(),
            ..ChaosKill::default()
        };
        out.push(Action::Kill(target));
        out.push(Action::Began(record.clone()));
        self.outage = Some(Outage {
            node: leader.node,
            killed_at: tick.now,
            old_term: leader.term,
            delay: self.rng.restart_delay(self.max_delay),
            wait_for_election: self.brokers > 1,
            restarted: false,
            record,
        });
        true
    }

    /// Notes the first new leader of `transactions`, restarts the killed replica when its
    /// delay has passed, and finishes the kill once the replica has rejoined.
    fn advance_outage(&mut self, now: Duration, view: &ClusterView, out: &mut Vec<Action>) {
        let Some(o) = self.outage.as_mut() else {
            return;
        };
        let since_kill = now.saturating_sub(o.killed_at);
        if o.record.new_leader.is_none()
            && let Some(l) = &view.leader
            && (l.term > o.old_term || l.node == o.node)
        {
            // A higher term: another replica won an election. A single broker simply comes
            // back (and a killed replica restarted before any election would resume its
            // leadership in the same term, as it still holds the term's vote).
            o.record.new_leader = Some(Target::Broker(l.node).role());
            o.record.leader_gap_s = Some(since_kill.as_secs_f64());
        }
        if !o.restarted {
            let from = match (o.wait_for_election, o.record.leader_gap_s) {
                (false, _) => Some(Duration::ZERO),
                (true, Some(gap)) => Some(Duration::from_secs_f64(gap)),
                (true, None) if since_kill > ELECTION_WAIT => Some(ELECTION_WAIT),
                (true, None) => None,
            };
            if from.is_some_and(|from| since_kill >= from + o.delay) {
                out.push(Action::Restart(Target::Broker(o.node)));
                o.restarted = true;
                o.record.restart_after_s = Some(since_kill.as_secs_f64());
                return;
            }
        }
        if o.restarted
            && o.record.new_leader.is_some()
            && view.rejoined.get(o.node).copied().unwrap_or(false)
        {
            let mut record = o.record.clone();
            record.downtime_s = Some(since_kill.as_secs_f64());
            out.push(Action::Finished(record));
            self.outage = None;
            // The next timed kill comes an interval after the replica rejoined, and only once
            // the pipeline has made progress since: the run always moves forward.
            self.rejoined_resolved = self.resolved;
            if self.next_interval.is_some() {
                self.next_interval = Some(now + self.rng.interval(self.interval));
            }
        } else if since_kill > REJOIN_DEADLINE {
            out.push(Action::RejoinTimeout(Target::Broker(o.node)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `d` in whole milliseconds, rounded up (a tick at this time is at or after `d`).
    fn ceil_ms(d: Duration) -> u64 {
        (d.as_micros() as u64).div_ceil(1000)
    }

    fn config(brokers: usize) -> ChaosConfig {
        ChaosConfig {
            enabled: true,
            seed: 1,
            events: 0,
            workers: 2,
            brokers,
            max_restart_delay: ms(1000),
            ..ChaosConfig::default()
        }
    }

    fn led_by(node: usize, term: u64, brokers: usize) -> ClusterView {
        ClusterView {
            leader: Some(Leader {
                node,
                term,
                leads: vec!["transactions".into()],
            }),
            rejoined: vec![true; brokers],
        }
    }

    fn tick(now: u64, resolved: Option<u64>, cluster: Option<&ClusterView>) -> Tick<'_> {
        Tick {
            now: ms(now),
            resolved,
            total: 1000,
            stored: None,
            producer_running: false,
            cluster,
        }
    }

    #[test]
    fn producer_kills_fire_at_their_stored_fractions_and_stop_once_the_producer_is_done() {
        let cfg = ChaosConfig {
            producer_kills: 2,
            ..config(3)
        };
        let plan = producer_kill_schedule(cfg.seed, 2);
        assert_eq!(plan.len(), 2);
        assert!(plan.iter().all(|f| (0.1..0.8).contains(f)) && plan[0] <= plan[1]);
        let mut c = Chaos::new(&cfg);
        let at = |stored: u64, running: bool| Tick {
            stored: Some(stored),
            producer_running: running,
            ..tick(0, Some(0), None)
        };
        let first = (plan[0] * 1000.0).ceil() as u64;
        assert!(kinds(&c.step(&at(first - 1, true))).is_empty());
        assert_eq!(
            kinds(&c.step(&at(first, true))),
            ["kill producer", "restart producer", "finished producer"]
        );
        // Not twice for the same fraction.
        assert!(kinds(&c.step(&at(first, true))).is_empty());
        // The producer finished before the second kill: it is dropped.
        assert!(kinds(&c.step(&at(1000, false))).is_empty());
        assert!(kinds(&c.step(&at(1000, true))).is_empty());
    }

    #[test]
    fn producer_kills_leave_the_other_kills_of_a_seed_unchanged() {
        let a = chaos_schedule(7, 5, 4, false, false);
        let cfg = ChaosConfig {
            seed: 7,
            events: 5,
            workers: 4,
            producer_kills: 3,
            ..config(3)
        };
        let _ = Chaos::new(&cfg);
        assert_eq!(a, chaos_schedule(7, 5, 4, false, false));
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Kill(t) => format!("kill {}", t.role()),
                Action::Restart(t) => format!("restart {}", t.role()),
                Action::Began(k) => format!("began {}", k.target),
                Action::Finished(k) => format!("finished {}", k.target),
                Action::RejoinTimeout(t) => format!("timeout {}", t.role()),
            })
            .collect()
    }

    #[test]
    fn chaos_schedule_is_seeded_sorted_and_respects_the_target_filter() {
        let a = chaos_schedule(7, 10, 4, false, false);
        assert_eq!(a, chaos_schedule(7, 10, 4, false, false));
        assert_ne!(a, chaos_schedule(8, 10, 4, false, false));
        assert!(a.windows(2).all(|w| w[0].at_fraction <= w[1].at_fraction));
        assert!(a.iter().all(|e| (0.05..=0.9).contains(&e.at_fraction)));
        let only_workers = chaos_schedule(7, 10, 4, true, false);
        assert!(only_workers.iter().all(|e| e.worker.is_some()));
        let only_brokers = chaos_schedule(7, 10, 4, false, true);
        assert!(only_brokers.iter().all(|e| e.worker.is_none()));
        let many = chaos_schedule(3, 50, 4, false, false);
        assert!(many.iter().filter_map(|e| e.worker).all(|w| w < 4));
    }

    #[test]
    fn chaos_delays_are_seeded_and_bounded() {
        let mut a = ChaosRng(5);
        let mut b = ChaosRng(5);
        let max = ms(1000);
        for _ in 0..100 {
            let d = a.restart_delay(max);
            assert_eq!(d, b.restart_delay(max));
            assert!(d >= max / 4 && d <= max);
            let i = a.interval(Duration::from_secs(2));
            assert_eq!(i, b.interval(Duration::from_secs(2)));
            assert!(i >= Duration::from_secs(1) && i < Duration::from_secs(3));
        }
    }

    #[test]
    fn without_chaos_nothing_is_ever_killed() {
        let mut c = Chaos::new(&ChaosConfig {
            enabled: false,
            events: 6,
            interval: ms(500),
            ..config(3)
        });
        let view = led_by(0, 1, 3);
        for t in 0..100 {
            assert!(!c.needs_cluster(ms(t * 100), Some(t * 10), 1000));
            assert!(c.step(&tick(t * 100, Some(t * 10), Some(&view))).is_empty());
        }
    }

    #[test]
    fn a_worker_kill_at_its_progress_point_kills_restarts_and_records_at_once() {
        let mut c = Chaos::new(&ChaosConfig {
            events: 1,
            workers_only: true,
            ..config(3)
        });
        let at = c.schedule[0].at_fraction;
        let before = ((at * 1000.0).ceil() as u64).saturating_sub(1);
        assert!(!c.needs_cluster(ms(10), Some(before), 1000));
        assert!(c.step(&tick(10, Some(before), None)).is_empty());
        let a = c.step(&tick(20, Some(before + 1), None));
        assert!(c.schedule.is_empty(), "the event is consumed");
        let k = kinds(&a);
        assert!(k[0].starts_with("kill worker-"), "{k:?}");
        assert_eq!(k[1], k[0].replace("kill", "restart"));
        assert_eq!(k[2], k[0].replace("kill", "finished"));
        assert!(c.idle());
    }

    /// A leader kill with three brokers, step by step: (tick in ms, resolved, view) -> what
    /// the machine does.
    #[test]
    fn a_leader_kill_waits_for_the_election_then_the_delay_then_the_rejoin() {
        let mut c = Chaos::new(&ChaosConfig {
            events: 1,
            broker_only: true,
            ..config(3)
        });
        let due = (c.schedule[0].at_fraction * 1000.0).ceil() as u64;
        let electing = ClusterView {
            leader: None,
            rejoined: vec![false, true, true],
        };
        let old = led_by(0, 3, 3);
        let mut new = led_by(2, 4, 3);
        new.rejoined[0] = false;
        // Due, but no leader in sight: retried, the event stays.
        assert!(c.needs_cluster(ms(0), Some(due), 1000));
        assert!(c.step(&tick(0, Some(due), Some(&electing))).is_empty());
        let a = c.step(&tick(100, Some(due), Some(&old)));
        assert_eq!(kinds(&a), ["kill broker-0", "began broker-0"]);
        assert_eq!(c.down_broker(), Some(0));
        let delay = ceil_ms(c.outage.as_ref().unwrap().delay);
        assert!((250..=1000).contains(&delay));
        // No election yet: not restarted however long the delay has passed.
        assert!(c.step(&tick(2000, None, Some(&electing))).is_empty());
        // Node 2 wins term 4 at 2.5 s: restart one delay later.
        assert!(c.step(&tick(2600, None, Some(&new))).is_empty());
        assert!(
            c.step(&tick(2600 + delay - 200, Some(due), Some(&new)))
                .is_empty()
        );
        let a = c.step(&tick(2600 + delay, Some(due), Some(&new)));
        assert_eq!(kinds(&a), ["restart broker-0"]);
        assert!(!c.idle());
        // Restarted: a crash of the new process is the supervisor's to restart.
        assert_eq!(c.down_broker(), None);
        // Rejoined: the record is complete and the machine is idle again.
        let a = c.step(&tick(4000 + delay, Some(due + 5), Some(&led_by(2, 4, 3))));
        assert_eq!(kinds(&a), ["finished broker-0"]);
        let Action::Finished(k) = &a[0] else {
            unreachable!()
        };
        assert_eq!(k.new_leader.as_deref(), Some("broker-2"));
        assert_eq!(k.leader_gap_s, Some(2.5));
        assert!(k.restart_after_s.unwrap() >= 2.5);
        assert!((k.downtime_s.unwrap() - (3900 + delay) as f64 / 1000.0).abs() < 1e-9);
        assert!(c.idle() && c.down_broker().is_none());
    }

    #[test]
    fn a_single_broker_is_restarted_one_delay_after_its_kill() {
        let mut c = Chaos::new(&ChaosConfig {
            events: 1,
            broker_only: true,
            ..config(1)
        });
        let view = led_by(0, 1, 1);
        let a = c.step(&tick(0, Some(1000), Some(&view)));
        assert_eq!(kinds(&a), ["kill broker-0", "began broker-0"]);
        let delay = ceil_ms(c.outage.as_ref().unwrap().delay);
        let down = ClusterView {
            leader: None,
            rejoined: vec![false],
        };
        assert!(c.step(&tick(delay - 1, None, Some(&down))).is_empty());
        assert_eq!(
            kinds(&c.step(&tick(delay, None, Some(&down)))),
            ["restart broker-0"]
        );
        let a = c.step(&tick(delay + 500, Some(1000), Some(&view)));
        assert_eq!(kinds(&a), ["finished broker-0"]);
    }

    #[test]
    fn a_broker_that_does_not_rejoin_in_time_fails_the_run() {
        let mut c = Chaos::new(&ChaosConfig {
            events: 1,
            broker_only: true,
            ..config(3)
        });
        c.step(&tick(0, Some(1000), Some(&led_by(1, 1, 3))));
        let mut new = led_by(2, 2, 3);
        new.rejoined[1] = false;
        c.step(&tick(1000, None, Some(&new)));
        c.step(&tick(3000, None, Some(&new)));
        let late = REJOIN_DEADLINE.as_millis() as u64 + 1;
        assert_eq!(
            kinds(&c.step(&tick(late, None, Some(&new)))),
            ["timeout broker-1"]
        );
    }

    /// Interval kills: (now ms, resolved) -> kills, with every kill followed by an immediate
    /// failover and rejoin.
    #[test]
    fn interval_kills_follow_rejoins_need_progress_and_stop_at_95_percent() {
        let mut c = Chaos::new(&ChaosConfig {
            interval: ms(1000),
            ..config(3)
        });
        let first = ceil_ms(c.next_interval.unwrap());
        assert!((500..=1500).contains(&first));
        let view = led_by(0, 1, 3);
        assert!(!c.needs_cluster(ms(first - 1), Some(10), 1000));
        assert!(c.needs_cluster(ms(first), Some(10), 1000));
        let a = c.step(&tick(first, Some(10), Some(&view)));
        assert_eq!(kinds(&a), ["kill broker-0", "began broker-0"]);
        // Failover to node 1 in term 2; restart; rejoin at resolved 20.
        let mut failed_over = led_by(1, 2, 3);
        failed_over.rejoined[0] = false;
        c.step(&tick(first + 100, Some(15), Some(&failed_over)));
        let a = c.step(&tick(first + 5000, Some(20), Some(&failed_over)));
        assert_eq!(kinds(&a), ["restart broker-0"]);
        let back = led_by(1, 2, 3);
        let a = c.step(&tick(first + 5100, Some(20), Some(&back)));
        assert_eq!(kinds(&a), ["finished broker-0"]);
        let next = ceil_ms(c.next_interval.unwrap());
        assert!((first + 5100 + 500..=first + 5100 + 1500).contains(&next));
        // Due, but no progress since the rejoin: wait.
        assert!(c.step(&tick(next, Some(20), Some(&back))).is_empty());
        let a = c.step(&tick(next + 100, Some(21), Some(&back)));
        assert_eq!(kinds(&a), ["kill broker-1", "began broker-1"]);
        // Past 95%: interval kills end for good.
        let mut c = Chaos::new(&ChaosConfig {
            interval: ms(1000),
            ..config(3)
        });
        assert!(c.step(&tick(5000, Some(950), Some(&view))).is_empty());
        assert_eq!(c.next_interval, None);
        assert!(!c.needs_cluster(ms(9000), Some(960), 1000));
    }

    #[test]
    fn a_broker_kill_is_described_with_leadership_and_downtime() {
        let k = ChaosKill {
            target: "broker-1".into(),
            trigger: "interval".into(),
            at_s: 4.2,
            at_resolved: 1000,
            leader_of: vec!["transactions".into(), "labels".into()],
            new_leader: Some("broker-2".into()),
            leader_gap_s: Some(1.9),
            restart_after_s: Some(0.5),
            downtime_s: Some(3.25),
        };
        let d = k.describe();
        assert!(
            d.contains("broker-1 (leader of transactions, labels) at 1000 resolved [interval]")
        );
        assert!(d.contains("transactions led by broker-2 after 1.90 s"));
        assert!(d.contains("rejoined after 3.25 s"));
    }
}
