//! `txpipe bench failover`: what a fault of one broker costs a producer, and which Raft groups
//! it disturbs.
//!
//! Three (or five) replicas, one producer sending continuously to `transactions` with one batch
//! in flight. `--faults` times, the chosen `--fault` hits one replica:
//!
//! - `kill`: kill -9 the leader of `transactions`; restart it on its data directory once the
//!   first batch sent after the kill is acknowledged.
//! - `leader-pause` / `follower-pause`: SIGSTOP the leader of `transactions`, or a follower of
//!   it (the follower that leads the fewest streams, so the fault hits as few leaders as
//!   possible); SIGCONT after `--fault-ms` (or once the first batch sent after the fault began
//!   is acknowledged, when that takes longer; at most 30 s).
//! - `leader-partition` / `follower-partition`: the same replica cut from the other replicas in
//!   both directions (clients still reach it), healed after the same time. The replicas then
//!   run in network namespaces of their own (the nemesis's [`Net`]), which needs root.
//!
//! For each fault it measures the time from the fault to a replica reporting itself leader of
//! `transactions` in a higher term (status polled every 20 ms), to the acknowledgement of the
//! first batch sent after the fault (only a leader with a quorum can have committed it), and
//! the longest gap between two acknowledgements while the fault lasted. After the replica is
//! back and caught up (every stream led, its applied index at the leader's commit index) and
//! one more second, it compares every stream's (leader, term) with the moment before the
//! fault: a changed pair is a leader change. Changes in streams the victim only followed are
//! counted apart: with pre-vote and the leader lease a follower's fault must cause none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use txpipe_client::broker::v1::Record;
use txpipe_client::produce::{Producer, ProducerConfig};
use txpipe_client::streams;

use super::percentile;
use crate::cluster::{BrokerCluster, every_stream_led, leader_in, leaders, pick_follower};
use crate::nemesis::net::{self, Net};
use crate::nemesis::schedule::Direction;

/// Ports of a replica inside its own network namespace (client gRPC, peer gRPC, admin HTTP):
/// each namespace has its own address, so the ports can be fixed.
const NETNS_PORTS: (u16, u16, u16) = (9100, 9200, 9180);

/// Longest wait for the first acknowledged batch after a fault, and for recovery.
const FAULT_DEADLINE: Duration = Duration::from_secs(30);

/// How often the replicas' status is polled for a new leader.
const POLL: Duration = Duration::from_millis(20);

/// Wait after recovery before leaders are compared, so that an election the returning replica
/// provokes is seen (more than twice the default election timeout, 300-450 ms).
const SETTLE: Duration = Duration::from_secs(1);

/// What a fault does to the chosen replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverFault {
    /// kill -9 the leader of `transactions`, restart it after the failover.
    Kill,
    /// SIGSTOP the leader of `transactions` for `--fault-ms`.
    LeaderPause,
    /// SIGSTOP a follower of `transactions` for `--fault-ms`.
    FollowerPause,
    /// Cut the leader of `transactions` from the other replicas (both directions) for
    /// `--fault-ms`; needs root (network namespaces).
    LeaderPartition,
    /// Cut a follower of `transactions` from the other replicas for `--fault-ms`; needs root.
    FollowerPartition,
}

impl FailoverFault {
    /// Whether it hits the leader of `transactions` (else a follower).
    pub fn hits_leader(self) -> bool {
        matches!(self, Self::Kill | Self::LeaderPause | Self::LeaderPartition)
    }

    /// Whether the replicas must run in network namespaces.
    pub fn needs_netns(self) -> bool {
        matches!(self, Self::LeaderPartition | Self::FollowerPartition)
    }

    /// The kebab-case name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::LeaderPause => "leader-pause",
            Self::FollowerPause => "follower-pause",
            Self::LeaderPartition => "leader-partition",
            Self::FollowerPartition => "follower-partition",
        }
    }
}

/// Settings of `txpipe bench failover`.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverBenchArgs {
    /// The fault to inject.
    #[arg(long, value_enum, default_value_t = FailoverFault::Kill)]
    pub fault: FailoverFault,
    /// Faults to measure.
    #[arg(long, alias = "kills", default_value_t = 20)]
    pub faults: u32,
    /// How long a pause or a partition lasts at least, milliseconds (it lasts until the first
    /// batch sent after it began is acknowledged when that takes longer, at most 30 s).
    #[arg(long, default_value_t = 3000)]
    pub fault_ms: u64,
    /// The producer's acknowledgement timeout, milliseconds (how long it stays on a leader that
    /// answers nothing; the producer's default).
    #[arg(long, default_value_t = 2_000)]
    pub ack_timeout_ms: u64,
    /// The producer's leader probe, milliseconds: how late acknowledgements may be before it
    /// asks the other brokers who leads (the producer's default); 0 disables it.
    #[arg(long, default_value_t = 500)]
    pub leader_probe_after_ms: u64,
    /// Broker replicas: 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Records (200 bytes each) per produce batch; one batch is in flight at a time.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Extra arguments passed to every broker replica (e.g. "--election-timeout-ms=500").
    #[arg(long = "broker-arg", allow_hyphen_values = true)]
    pub broker_args: Vec<String>,
    /// Keep the brokers' data directory and logs (printed at the end).
    #[arg(long)]
    pub keep_data: bool,
    /// Write results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One fault of the failover benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverSample {
    /// Replica hit (`broker-<i>`).
    pub victim: String,
    /// Streams the victim led when the fault began.
    pub victim_led: Vec<String>,
    /// Fault to the acknowledgement of the first batch sent after it, milliseconds; `None`
    /// when none was acknowledged within 30 s.
    pub failover_ms: Option<f64>,
    /// Fault to the first moment a replica said it leads `transactions` in a higher term
    /// (polled every 20 ms), milliseconds; `None` if that was not seen (no election, or the
    /// acknowledgement came first).
    pub elected_ms: Option<f64>,
    /// Replica leading `transactions` after recovery.
    pub new_leader: String,
    /// Longest time between two acknowledgements (or the fault's start and the first one)
    /// while the fault lasted, milliseconds.
    pub max_ack_gap_ms: f64,
    /// Fault to the victim being back (restarted, resumed or healed) and caught up,
    /// milliseconds.
    pub recovered_ms: f64,
    /// Streams whose (leader, term) changed between just before the fault and one second
    /// after recovery.
    pub leader_changes: u64,
    /// Of those, streams the victim did not lead (target: 0).
    pub follower_stream_changes: u64,
}

/// Summary of the failover benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// The fault injected.
    pub fault: FailoverFault,
    /// Replicas.
    pub replicas: u32,
    /// `--fault-ms` (pauses and partitions), milliseconds.
    pub fault_ms: u64,
    /// Every fault, in order.
    pub samples: Vec<FailoverSample>,
    /// Median of fault → new leader reported, milliseconds (over the faults that had one).
    pub election_p50_ms: f64,
    /// 99th percentile of fault → new leader reported, milliseconds.
    pub election_p99_ms: f64,
    /// Median of fault → first acknowledged produce, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank) of fault → first acknowledged produce, milliseconds.
    pub p99_ms: f64,
    /// Slowest fault → first acknowledged produce, milliseconds.
    pub max_ms: f64,
    /// Faults after which no produce was acknowledged within 30 s.
    pub unanswered: u64,
    /// 99th percentile of the longest acknowledgement gap per fault, milliseconds.
    pub ack_gap_p99_ms: f64,
    /// Leader changes summed over the faults.
    pub leader_changes: u64,
    /// Leader changes in streams the victim did not lead, summed over the faults.
    pub follower_stream_changes: u64,
}

/// Sends `sig` to replica `i`.
fn signal(cluster: &BrokerCluster, i: usize, sig: nix::sys::signal::Signal) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(cluster.nodes[i].proc.pid() as i32);
    nix::sys::signal::kill(pid, sig)
        .with_context(|| format!("sending {sig} to {}", cluster.nodes[i].proc.role))
}

/// Waits for the next acknowledged batch `(sent, acked)` from the producer task, up to
/// `timeout`; `Ok(None)` when nothing came in time. Errors when the producer stopped.
async fn next_ack(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, Instant)>,
    task: &mut tokio::task::JoinHandle<Result<()>>,
    timeout: Duration,
) -> Result<Option<(Instant, Instant)>> {
    tokio::select! {
        ev = rx.recv() => match ev {
            Some(ev) => Ok(Some(ev)),
            None => match task.await {
                Ok(Err(e)) => Err(e.context("producer stopped")),
                _ => bail!("producer stopped"),
            },
        },
        _ = tokio::time::sleep(timeout) => Ok(None),
    }
}

/// Runs the failover benchmark and prints each fault and the percentiles.
///
/// Errors: invalid arguments; the brokers do not start; a partition fault without network
/// namespaces; the producer stops; no leader, or no recovery, within 30 s of a fault.
pub async fn failover_bench(args: FailoverBenchArgs, exe: PathBuf) -> Result<FailoverReport> {
    if !matches!(args.replicas, 3 | 5) {
        bail!("--replicas must be 3 or 5, got {}", args.replicas);
    }
    if args.faults == 0 || args.batch == 0 {
        bail!("--faults and --batch must be at least 1");
    }
    let mut bench = Bench::start(&args, &exe).await?;
    print_header(&args, bench.net.is_some());
    let mut samples = Vec::new();
    for k in 0..args.faults {
        let s = bench.fault(&args, k).await?;
        print_sample(args.fault, k, &s);
        samples.push(s);
    }
    let dir = bench.stop().await;
    let report = summarize(&args, samples);
    print_summary(&report);
    if args.keep_data {
        let kept = dir.keep();
        println!("data and logs kept in {}", kept.display());
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report)
}

/// Acknowledged batches of the load: (sent, acknowledged).
type Acks = tokio::sync::mpsc::UnboundedReceiver<(Instant, Instant)>;

/// A running benchmark: the load, the replicas, their namespaces and data. The fields are
/// dropped in this order when a fault fails the run: the processes are killed before their
/// namespaces and data directory are removed.
struct Bench {
    acks: Acks,
    task: tokio::task::JoinHandle<Result<()>>,
    cluster: BrokerCluster,
    net: Option<Net>,
    dir: tempfile::TempDir,
}

/// What the fault's measurement loop saw (times from the fault).
struct Measured {
    elected: Option<Duration>,
    first_ack: Option<Duration>,
    max_gap: Duration,
}

impl Bench {
    /// Starts the replicas (in network namespaces for a partition fault) and the load.
    async fn start(args: &FailoverBenchArgs, exe: &Path) -> Result<Self> {
        let n = args.replicas as usize;
        let bin_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        let exe = crate::supervisor::service_binary(&bin_dir, "broker")?;
        let dir = tempfile::Builder::new()
            .prefix("txpipe-failover-")
            .tempdir()?;
        let net = if args.fault.needs_netns() {
            if let Some(why) = net::unsupported() {
                bail!(
                    "--fault {} needs network namespaces: {why}",
                    args.fault.name()
                );
            }
            Some(Net::create(n).context("creating the network namespaces")?)
        } else {
            None
        };
        let mut cluster = match &net {
            Some(net) => BrokerCluster::in_namespaces(
                &exe,
                net,
                n,
                NETNS_PORTS,
                dir.path(),
                &args.broker_args,
            )?,
            None => BrokerCluster::new(&exe, n, dir.path(), &args.broker_args)?,
        };
        cluster.start_all()?;
        cluster
            .wait_ready(Duration::from_secs(60))
            .await
            .with_context(|| {
                format!("starting txpipe brokers (logs in {})", dir.path().display())
            })?;
        let (acks, task) = start_load(&cluster, args);
        Ok(Self {
            acks,
            task,
            cluster,
            net,
            dir,
        })
    }

    /// Fault `k` (0-based): waits for a steady state, hits a replica, measures, brings it back
    /// and compares the leaders before and after.
    async fn fault(&mut self, args: &FailoverBenchArgs, k: u32) -> Result<FailoverSample> {
        let (fault, n) = (args.fault, self.cluster.nodes.len());
        self.steady().await?;
        let (before, tx_leader, old_term) = self.leaders().await?;
        let victim = if fault.hits_leader() {
            tx_leader
        } else {
            pick_follower(&before, n, Some(tx_leader), u64::from(k))
        };
        let victim_led: Vec<String> = before
            .iter()
            .filter(|(_, (l, _))| *l == victim)
            .map(|(s, _)| s.clone())
            .collect();
        self.inject(fault, victim).await?;
        let hit = Instant::now();
        let min_len = if fault == FailoverFault::Kill {
            Duration::ZERO
        } else {
            Duration::from_millis(args.fault_ms)
        };
        let m = self.measure(hit, min_len, victim, old_term).await?;
        self.recover(fault, victim, k).await?;
        let recovered = hit.elapsed();
        tokio::time::sleep(SETTLE).await;
        let views = self.cluster.views().await;
        let after = leaders(&views);
        let changed: Vec<&String> = before
            .iter()
            .filter(|(s, was)| after.get(*s) != Some(was))
            .map(|(s, _)| s)
            .collect();
        let follower_changes = changed.iter().filter(|s| !victim_led.contains(s)).count();
        let new_leader = match leader_in(&views, streams::TRANSACTIONS) {
            Some((l, _)) => self.cluster.nodes[l].proc.role.clone(),
            None => "?".into(),
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Ok(FailoverSample {
            victim: self.cluster.nodes[victim].proc.role.clone(),
            victim_led,
            failover_ms: m.first_ack.map(ms),
            elected_ms: m.elected.map(ms),
            new_leader,
            max_ack_gap_ms: ms(m.max_gap),
            recovered_ms: ms(recovered),
            leader_changes: changed.len() as u64,
            follower_stream_changes: follower_changes as u64,
        })
    }

    /// Steady state first: a few acknowledged batches since the last recovery.
    async fn steady(&mut self) -> Result<()> {
        while self.acks.try_recv().is_ok() {}
        for _ in 0..5 {
            next_ack(&mut self.acks, &mut self.task, FAULT_DEADLINE)
                .await?
                .context("no produce acknowledged within 30 s before a fault")?;
        }
        Ok(())
    }

    /// Every stream's (leader, term), the leader of `transactions` and its term, once it has
    /// one (within 30 s).
    async fn leaders(&self) -> Result<(BTreeMap<String, (usize, u64)>, usize, u64)> {
        let began = Instant::now();
        loop {
            let views = self.cluster.views().await;
            if let Some((l, term)) = leader_in(&views, streams::TRANSACTIONS) {
                return Ok((leaders(&views), l, term));
            }
            if began.elapsed() > FAULT_DEADLINE {
                bail!("no leader of transactions for 30 s");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Hits replica `victim` with `fault`.
    async fn inject(&mut self, fault: FailoverFault, victim: usize) -> Result<()> {
        let others: Vec<usize> = (0..self.cluster.nodes.len())
            .filter(|&i| i != victim)
            .collect();
        match fault {
            FailoverFault::Kill => self.cluster.nodes[victim].proc.kill9().await,
            FailoverFault::LeaderPause | FailoverFault::FollowerPause => {
                signal(&self.cluster, victim, nix::sys::signal::Signal::SIGSTOP)?
            }
            FailoverFault::LeaderPartition | FailoverFault::FollowerPartition => self
                .net
                .as_ref()
                .context("no network namespaces")?
                .cut(victim, &others, Direction::Both)?,
        }
        Ok(())
    }

    /// Until the first batch sent after the fault (at `hit`) is acknowledged and the fault has
    /// lasted `min_len` (at most 30 s): records acknowledgement gaps, and polls for a leader
    /// of `transactions` in a term above `old_term` (asking every replica but the victim).
    async fn measure(
        &mut self,
        hit: Instant,
        min_len: Duration,
        victim: usize,
        old_term: u64,
    ) -> Result<Measured> {
        let mut m = Measured {
            elected: None,
            first_ack: None,
            max_gap: Duration::ZERO,
        };
        let mut last_ack = hit;
        let mut next_poll = Instant::now();
        while (m.first_ack.is_none() || hit.elapsed() < min_len) && hit.elapsed() < FAULT_DEADLINE {
            let wait = next_poll
                .saturating_duration_since(Instant::now())
                .min(FAULT_DEADLINE.saturating_sub(hit.elapsed()));
            if let Some((sent, acked)) = next_ack(&mut self.acks, &mut self.task, wait).await? {
                m.max_gap = m.max_gap.max(acked.saturating_duration_since(last_ack));
                last_ack = acked;
                if sent >= hit && m.first_ack.is_none() {
                    m.first_ack = Some(acked - hit);
                }
            }
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + POLL;
                if m.elected.is_none()
                    && let Some((_, term)) = leader_in(
                        &self.cluster.views_except(Some(victim)).await,
                        streams::TRANSACTIONS,
                    )
                    && term > old_term
                {
                    m.elected = Some(hit.elapsed());
                }
            }
        }
        m.max_gap = m.max_gap.max(hit.elapsed().saturating_sub(last_ack - hit));
        Ok(m)
    }

    /// Ends fault `k` on `victim` (restart, SIGCONT or heal) and waits until every stream is
    /// led and the victim has caught up (at most 30 s).
    async fn recover(&mut self, fault: FailoverFault, victim: usize, k: u32) -> Result<()> {
        match fault {
            FailoverFault::Kill => {
                self.cluster.nodes[victim].proc.start()?;
                self.cluster
                    .wait_node(victim, Duration::from_secs(60))
                    .await
                    .with_context(|| format!("fault {}: replica did not rejoin", k + 1))?;
            }
            FailoverFault::LeaderPause | FailoverFault::FollowerPause => {
                signal(&self.cluster, victim, nix::sys::signal::Signal::SIGCONT)?
            }
            FailoverFault::LeaderPartition | FailoverFault::FollowerPartition => {
                self.net.as_ref().context("no network namespaces")?.heal()?
            }
        }
        let healed = Instant::now();
        loop {
            let views = self.cluster.views().await;
            if every_stream_led(&views) && caught_up(&self.cluster, victim).await {
                return Ok(());
            }
            if healed.elapsed() > FAULT_DEADLINE {
                bail!(
                    "fault {}: not every stream has a leader with {} caught up 30 s after it was back",
                    k + 1,
                    self.cluster.nodes[victim].proc.role
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the load and the replicas and removes the namespaces; the data directory is the
    /// caller's to keep or drop.
    async fn stop(self) -> tempfile::TempDir {
        let Self {
            acks,
            task,
            mut cluster,
            net,
            dir,
        } = self;
        drop(acks);
        task.abort();
        cluster.stop_all(Duration::from_secs(5)).await;
        drop(net);
        dir
    }
}

/// The load: one producer sending batches of `--batch` records of 200 bytes to
/// `transactions`, one in flight, reporting each acknowledgement; it stops when the receiver
/// is dropped.
fn start_load(
    cluster: &BrokerCluster,
    args: &FailoverBenchArgs,
) -> (Acks, tokio::task::JoinHandle<Result<()>>) {
    let (ack_tx, acks) = tokio::sync::mpsc::unbounded_channel::<(Instant, Instant)>();
    let mut cfg = ProducerConfig::new(
        cluster
            .client_addrs()
            .into_iter()
            .map(|a| format!("http://{a}"))
            .collect(),
        streams::TRANSACTIONS,
    );
    cfg.max_in_flight = 1;
    cfg.reconnect_deadline = Duration::from_secs(60);
    cfg.ack_timeout = Duration::from_millis(args.ack_timeout_ms);
    cfg.leader_probe_after = Duration::from_millis(args.leader_probe_after_ms);
    let batch = args.batch;
    let task = tokio::spawn(async move {
        let producer = Producer::connect(cfg).await?;
        let payload = bytes::Bytes::from(vec![0x5Au8; 200]);
        for n in 0u64.. {
            let records: Vec<Record> = (0..batch)
                .map(|i| Record {
                    key: format!("f{n}-{i}").into_bytes().into(),
                    value: payload.clone(),
                    timestamp_us: 0,
                })
                .collect();
            let sent = Instant::now();
            let receipt = producer.send(records).await?;
            receipt.await.context("producer task ended")??;
            if ack_tx.send((sent, Instant::now())).is_err() {
                break;
            }
        }
        producer.close().await?;
        Ok(())
    });
    (acks, task)
}

/// The benchmark's first line: its settings.
fn print_header(args: &FailoverBenchArgs, in_namespaces: bool) {
    println!(
        "failover benchmark: {} replicas{}, {} x {}{}, batches of {} x 200 B, one in flight, producer ack timeout {} ms, leader probe after {} ms",
        args.replicas,
        if in_namespaces {
            " in network namespaces"
        } else {
            ""
        },
        args.faults,
        args.fault.name(),
        if args.fault == FailoverFault::Kill {
            String::new()
        } else {
            format!(" of at least {} ms", args.fault_ms)
        },
        args.batch,
        args.ack_timeout_ms,
        args.leader_probe_after_ms
    );
}

/// One line per fault.
fn print_sample(fault: FailoverFault, k: u32, s: &FailoverSample) {
    println!(
        "  {} {:>2}: {} (led {}) -> {}: new leader after {}; first acknowledged produce after {}; longest ack gap {:.0} ms; {} leader change(s), {} in streams it followed; recovered after {:.0} ms",
        fault.name(),
        k + 1,
        s.victim,
        if s.victim_led.is_empty() {
            "nothing".to_string()
        } else {
            s.victim_led.join(", ")
        },
        s.new_leader,
        s.elected_ms
            .map_or_else(|| "-".to_string(), |m| format!("{m:.0} ms")),
        s.failover_ms
            .map_or_else(|| "none in 30 s".to_string(), |m| format!("{m:.1} ms")),
        s.max_ack_gap_ms,
        s.leader_changes,
        s.follower_stream_changes,
        s.recovered_ms
    );
}

/// The percentiles and totals.
fn print_summary(report: &FailoverReport) {
    let fault = report.fault;
    println!(
        "{} -> new leader reported:        p50 {:.0} ms  p99 {:.0} ms  ({} of {} faults saw an election)",
        fault.name(),
        report.election_p50_ms,
        report.election_p99_ms,
        report
            .samples
            .iter()
            .filter(|s| s.elected_ms.is_some())
            .count(),
        report.samples.len()
    );
    println!(
        "{} -> first acknowledged produce: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms  ({} faults, {} without one within 30 s)",
        fault.name(),
        report.p50_ms,
        report.p99_ms,
        report.max_ms,
        report.samples.len(),
        report.unanswered
    );
    println!(
        "{} -> longest acknowledgement gap p99 {:.0} ms; leader changes {} in all, {} in streams the victim followed (target 0)",
        fault.name(),
        report.ack_gap_p99_ms,
        report.leader_changes,
        report.follower_stream_changes
    );
}

/// Whether replica `victim` has applied, for every stream, at least the commit index its
/// leader reports: the next kill then starts from a healthy cluster, as a kill in production
/// would (a kill right after a restart measures catch-up, not failover).
async fn caught_up(cluster: &crate::cluster::BrokerCluster, victim: usize) -> bool {
    let all = futures::future::join_all((0..cluster.nodes.len()).map(|i| cluster.status(i))).await;
    let Some(me) = all[victim].as_ref() else {
        return false;
    };
    me.raft.iter().all(|(stream, g)| {
        let commit = g.leader_id.and_then(|leader| {
            all.iter()
                .flatten()
                .find(|st| st.node_id == Some(leader))
                .and_then(|st| st.raft.get(stream))
                .map(|r| r.commit_index)
        });
        commit.is_some_and(|c| g.applied_index >= c)
    })
}

/// Percentiles and totals of `samples`.
fn summarize(args: &FailoverBenchArgs, samples: Vec<FailoverSample>) -> FailoverReport {
    let sorted = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v
    };
    let times = sorted(samples.iter().filter_map(|s| s.failover_ms).collect());
    let elections = sorted(samples.iter().filter_map(|s| s.elected_ms).collect());
    let gaps = sorted(samples.iter().map(|s| s.max_ack_gap_ms).collect());
    FailoverReport {
        fault: args.fault,
        replicas: args.replicas,
        fault_ms: args.fault_ms,
        election_p50_ms: percentile(&elections, 0.5),
        election_p99_ms: percentile(&elections, 0.99),
        p50_ms: percentile(&times, 0.5),
        p99_ms: percentile(&times, 0.99),
        max_ms: times.last().copied().unwrap_or(0.0),
        unanswered: samples.iter().filter(|s| s.failover_ms.is_none()).count() as u64,
        ack_gap_p99_ms: percentile(&gaps, 0.99),
        leader_changes: samples.iter().map(|s| s.leader_changes).sum(),
        follower_stream_changes: samples.iter().map(|s| s.follower_stream_changes).sum(),
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partitions_need_namespaces_and_only_leader_faults_hit_the_leader() {
        use FailoverFault::*;
        for f in [Kill, LeaderPause, LeaderPartition] {
            assert!(f.hits_leader(), "{f:?}");
        }
        for f in [FollowerPause, FollowerPartition] {
            assert!(!f.hits_leader(), "{f:?}");
        }
        assert!(LeaderPartition.needs_netns() && FollowerPartition.needs_netns());
        assert!(!Kill.needs_netns() && !LeaderPause.needs_netns() && !FollowerPause.needs_netns());
    }

    #[test]
    fn a_fault_without_an_acknowledgement_counts_as_unanswered_not_as_zero() {
        let args = FailoverBenchArgs {
            fault: FailoverFault::LeaderPause,
            faults: 2,
            fault_ms: 3000,
            ack_timeout_ms: 2000,
            leader_probe_after_ms: 500,
            replicas: 3,
            batch: 10,
            broker_args: vec![],
            keep_data: false,
            json: None,
        };
        let sample = |ms: Option<f64>, changes: u64| FailoverSample {
            victim: "broker-0".into(),
            victim_led: vec!["transactions".into()],
            failover_ms: ms,
            elected_ms: Some(400.0),
            new_leader: "broker-1".into(),
            max_ack_gap_ms: 900.0,
            recovered_ms: 3500.0,
            leader_changes: changes,
            follower_stream_changes: changes.saturating_sub(1),
        };
        let r = summarize(&args, vec![sample(Some(800.0), 1), sample(None, 2)]);
        assert_eq!(r.unanswered, 1);
        assert_eq!(r.p50_ms, 800.0);
        assert_eq!(r.max_ms, 800.0);
        assert_eq!(r.leader_changes, 3);
        assert_eq!(r.follower_stream_changes, 1);
    }
}
