//! `txpipe nemesis`: brokers as separate hosts, seeded faults, and an independent checker.
//!
//! [`run_nemesis`] builds its own network ([`net`]: a namespace per broker on a private
//! bridge), starts the brokers inside their namespaces (`ip netns exec`), and the workers and
//! the producer in the root namespace, reaching the brokers over the bridge. It then carries
//! out the seeded [`schedule`] — partitions (symmetric and one-way) of leaders and followers,
//! majority/minority splits, SIGSTOP pauses, kill -9 of brokers, workers and the producer,
//! and combinations — one fault at a time, each healed before the next, printing what it did
//! and when. Meanwhile the [`checker`] runs its own client workload with its own history; at
//! the end, after the pipeline has settled, it reads every stream back over gRPC and reports
//! lost, duplicated, unexpected and misplaced records, stale reads, and whether every
//! transaction of the producer was stored once and decided once.
//!
//! Everything is torn down when the run ends, fails, panics or is interrupted (the
//! processes are killed on drop, then [`net::Net`]'s `Drop` deletes the namespaces, bridge
//! and FORWARD rule); `--cleanup` removes what an earlier, killed run left behind. See
//! docs/nemesis.md.

pub mod checker;
pub mod net;
pub mod schedule;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use txpipe_client::broker::v1::GetStreamRequest;
use txpipe_client::leader::LeaderRouter;
use txpipe_client::status::BrokerStatus;
use txpipe_client::streams;

use crate::cluster::{NodeView, every_stream_led, leader_in, leaders, pick_follower};
use crate::supervisor::{Proc, free_port, service_binary};
use checker::{CheckerReport, PipelineReport, Workload};
use net::Net;
use schedule::{Direction, Fault, FaultKind, Role, Schedule};

/// Ports every broker listens on, at its namespace's address.
const CLIENT_PORT: u16 = 9100;
const PEER_PORT: u16 = 9200;
const ADMIN_PORT: u16 = 9180;
/// The supervision tick.
const TICK: Duration = Duration::from_millis(100);
/// How often the brokers' `/status.json` is read.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Grace of SIGTERM before SIGKILL at the end.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Settings of `txpipe nemesis`.
#[derive(Debug, Clone, clap::Args)]
pub struct NemesisArgs {
    /// Seed of the fault schedule.
    #[arg(long, env = "TXPIPE_NEMESIS_SEED", default_value_t = 1)]
    pub seed: u64,
    /// How long faults are injected, seconds; the run then settles and is checked.
    #[arg(long, env = "TXPIPE_NEMESIS_DURATION_S", default_value_t = 60)]
    pub duration_s: u64,
    /// Broker replicas, each in its own network namespace: 3 or 5.
    #[arg(long, env = "TXPIPE_BROKER_REPLICAS", default_value_t = 3)]
    pub brokers: u32,
    /// Worker processes.
    #[arg(long, env = "TXPIPE_WORKERS", default_value_t = 2)]
    pub workers: u32,
    /// Producer rate, transactions per second; it sends `rate × duration × 1.25` transactions (so it runs through every fault).
    #[arg(long, env = "TXPIPE_RATE", default_value_t = 200)]
    pub rate: u64,
    /// After the faults: how long the producer may take to finish and the workers to decide
    /// everything, seconds.
    #[arg(long, env = "TXPIPE_NEMESIS_SETTLE_S", default_value_t = 120)]
    pub settle_s: u64,
    /// Directory for broker data and logs (default: a new temporary directory, removed when
    /// the run passes).
    #[arg(long, env = "TXPIPE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the data directory after a passing run (a failing run always keeps it).
    #[arg(long, env = "TXPIPE_KEEP_DATA")]
    pub keep_data: bool,
    /// Directory holding txpipe-broker, txpipe-worker and txpipe-producer (default: the
    /// directory of this binary).
    #[arg(long, env = "TXPIPE_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Write the report as JSON to this file too.
    #[arg(long, env = "TXPIPE_REPORT_JSON")]
    pub report_json: Option<PathBuf>,
    /// Extra arguments passed to every broker.
    #[arg(long = "broker-arg", allow_hyphen_values = true)]
    pub broker_args: Vec<String>,
    /// Remove the namespaces, links and FORWARD rules earlier runs left behind, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

impl NemesisArgs {
    /// Checks the settings before anything starts.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.brokers, 3 | 5) {
            bail!("--brokers must be 3 or 5, got {}", self.brokers);
        }
        if self.workers == 0 {
            bail!("--workers must be at least 1");
        }
        if !(5..=86_400).contains(&self.duration_s) {
            bail!("--duration-s must be 5-86400, got {}", self.duration_s);
        }
        if self.rate == 0 {
            bail!("--rate must be at least 1");
        }
        Ok(())
    }

    fn count(&self) -> u64 {
        self.rate * self.duration_s * 5 / 4
    }
}

/// How a nemesis invocation ended.
pub enum Outcome {
    /// It cannot run here (not root, no network namespaces): exit code 3.
    Skipped(String),
    /// `--cleanup`: what was removed.
    Cleaned(Vec<String>),
    /// A run, checked.
    Checked(Box<NemesisReport>),
}

/// One line of the run's log.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Since the faults' clock started, milliseconds.
    pub at_ms: u64,
    /// What happened.
    pub what: String,
}

/// Leadership of one stream over the run, as the brokers' `/status.json` told it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamLeadership {
    /// Highest term seen when the faults began.
    pub first_term: u64,
    /// Highest term seen at the end.
    pub last_term: u64,
    /// Times the leader (the node claiming it with the highest term) changed.
    pub leader_changes: u64,
    /// Status samples in which two nodes claimed to lead it, each holding its quorum lease
    /// (`has_quorum`). The samples of different nodes are taken up to a few hundred
    /// milliseconds apart, so a handover can show here; a count that grows with the run would
    /// mean two leaders serving at once.
    pub two_leader_samples: u64,
    /// Status samples in which a node claimed to lead it without its quorum lease: a deposed
    /// or cut-off leader that has not heard of a higher term yet. It serves nothing (reads and
    /// writes need the lease), so this is expected under partitions, not a violation.
    pub leaseless_leader_samples: u64,
    #[serde(skip)]
    leader: Option<usize>,
}

/// One fault as it was carried out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultRecord {
    /// When it began, milliseconds since the faults' clock started.
    pub at_ms: u64,
    /// Its scheduled length, milliseconds.
    pub length_ms: u64,
    /// Its kind (as in `faults_by_kind`).
    pub kind: String,
    /// What was done, with the nodes it hit.
    pub what: String,
    /// Term increases summed over the streams from its start to the next fault's start (or
    /// the end of the faults): the elections it caused.
    pub elections: u64,
    /// The broker it hit, for faults of one broker (partition, pause, kill).
    pub victim: Option<usize>,
    /// Streams the victim led when the fault began.
    pub victim_led: Vec<String>,
    /// Of `elections`, those in streams the victim did not lead: with pre-vote and the leader
    /// lease, a follower's pause or partition should cause none.
    pub followed_stream_elections: u64,
}

/// The report of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NemesisReport {
    /// Schedule seed.
    pub seed: u64,
    /// Fault injection time, seconds.
    pub duration_s: u64,
    /// Broker replicas and workers.
    pub brokers: u32,
    /// Workers.
    pub workers: u32,
    /// Name prefix and subnet of the run's network.
    pub network: String,
    /// Faults scheduled and carried out.
    pub faults_injected: usize,
    /// Faults by kind.
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Every fault carried out.
    pub faults: Vec<FaultRecord>,
    /// Elections (term increases) caused, by kind of fault.
    pub elections_by_kind: BTreeMap<String, u64>,
    /// Elections caused in streams the victim did not lead, by kind of fault (faults of one
    /// broker only).
    pub followed_stream_elections_by_kind: BTreeMap<String, u64>,
    /// What was done and when.
    pub log: Vec<LogLine>,
    /// Leadership per stream.
    pub leadership: BTreeMap<String, StreamLeadership>,
    /// Term increases summed over the streams (elections that raised the term).
    pub elections: u64,
    /// Processes that exited without being killed (restarted).
    pub unexpected_exits: Vec<String>,
    /// Seconds from the end of the faults until the pipeline had settled.
    pub settle_s: f64,
    /// The checker's own workload.
    pub checker: CheckerReport,
    /// The pipeline's records.
    pub pipeline: PipelineReport,
    /// Every violation found.
    pub violations: Vec<String>,
    /// Data and logs.
    pub data_dir: String,
}

impl NemesisReport {
    /// No violation.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// What undoes a fault at its heal.
#[derive(Debug, Clone, Copy)]
enum Undo {
    Heal,
    Cont(usize),
    StartBroker(usize),
    StartWorker(usize),
    StartProducer,
}

/// Runs the nemesis (see the module docs). `exe` is this binary.
pub async fn run_nemesis(args: NemesisArgs, exe: PathBuf) -> Result<Outcome> {
    if let Some(why) = net::unsupported() {
        return Ok(Outcome::Skipped(why));
    }
    if args.cleanup {
        return Ok(Outcome::Cleaned(net::cleanup()?));
    }
    args.validate()?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => exe.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let bins = (
        service_binary(&bin_dir, "broker")?,
        service_binary(&bin_dir, "worker")?,
        service_binary(&bin_dir, "producer")?,
    );
    let net = Net::create(args.brokers as usize).context("creating the namespaces")?;
    let (dir, temp) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "txpipe-nemesis-{}-{}",
                net.prefix,
                std::process::id()
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "nemesis: seed {}, {} s, {} brokers in namespaces {}-b* on {}, {} workers; data and logs in {}",
        args.seed,
        args.duration_s,
        args.brokers,
        net.prefix,
        net.subnet(),
        args.workers,
        dir.display()
    );
    let mut run = Run::new(&args, net, &dir, bins)?;
    let report = run.execute(&args).await?;
    run.stop().await;
    drop(run);
    if let Some(p) = &args.report_json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if report.passed() && temp && !args.keep_data {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Outcome::Checked(Box::new(report)))
}

/// Every process of a run and its network. Fields drop in order: the processes (killed on
/// drop) before the network.
struct Run {
    brokers: Vec<Proc>,
    workers: Vec<Proc>,
    producer: Proc,
    admin: Vec<String>,
    clients: Vec<String>,
    http: reqwest::Client,
    started: Instant,
    log: Vec<LogLine>,
    broker_down: Vec<bool>,
    worker_down: Vec<bool>,
    producer_down: bool,
    producer_done: bool,
    unexpected_exits: Vec<String>,
    leadership: BTreeMap<String, StreamLeadership>,
    views: Vec<Option<NodeView>>,
    dir: PathBuf,
    net: Net,
}

impl Run {
    fn new(
        args: &NemesisArgs,
        net: Net,
        dir: &Path,
        (broker, worker, producer): (PathBuf, PathBuf, PathBuf),
    ) -> Result<Self> {
        let n = args.brokers as usize;
        let clients: Vec<String> = (0..n)
            .map(|i| format!("{}:{CLIENT_PORT}", net.addr(i)))
            .collect();
        let peers: Vec<String> = (0..n)
            .map(|i| format!("{}:{PEER_PORT}", net.addr(i)))
            .collect();
        let admin: Vec<String> = (0..n)
            .map(|i| format!("{}:{ADMIN_PORT}", net.addr(i)))
            .collect();
        let brokers = (0..n)
            .map(|i| {
                let mut a = vec![
                    "netns".to_string(),
                    "exec".to_string(),
                    net.netns(i),
                    broker.display().to_string(),
                    format!("--listen={}", clients[i]),
                    format!("--peer-listen={}", peers[i]),
                    format!("--admin-listen={}", admin[i]),
                    format!("--data-dir={}", dir.join(format!("broker-{i}")).display()),
                    format!("--node-id={i}"),
                    format!("--peers={}", peers.join(",")),
                    format!("--client-addrs={}", clients.join(",")),
                    // The checker reads `transactions` back.
                    "--retain-acked=true".to_string(),
                    "--ack-deadline-ms=10000".to_string(),
                ];
                a.extend(args.broker_args.iter().cloned());
                Proc::new(&format!("broker-{i}"), PathBuf::from("ip"), a, dir)
            })
            .collect();
        let list = clients.join(",");
        let keys = crate::secrets::pan_keyring(dir)?;
        let workers = (0..args.workers)
            .map(|i| {
                let a = vec![
                    format!("--pan-key-file={}", keys.display()),
                    format!("--brokers={list}"),
                    format!("--name=worker-{i}"),
                    format!("--admin-listen=127.0.0.1:{}", free_port()?),
                ];
                Ok(Proc::new(&format!("worker-{i}"), worker.clone(), a, dir))
            })
            .collect::<Result<Vec<_>>>()?;
        let p = vec![
            format!("--pan-key-file={}", keys.display()),
            format!("--brokers={list}"),
            format!("--count={}", args.count()),
            format!("--seed={}", args.seed),
            format!("--rate={}", args.rate),
            "--progress=never".to_string(),
            format!(
                "--summary-json={}",
                dir.join("producer-summary.json").display()
            ),
        ];
        Ok(Self {
            brokers,
            workers,
            producer: Proc::new("producer", producer, p, dir),
            admin,
            clients,
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .context("building the admin HTTP client")?,
            started: Instant::now(),
            log: Vec::new(),
            broker_down: vec![false; n],
            worker_down: vec![false; args.workers as usize],
            producer_down: false,
            producer_done: false,
            unexpected_exits: Vec::new(),
            leadership: BTreeMap::new(),
            views: vec![None; n],
            dir: dir.to_path_buf(),
            net,
        })
    }

    fn say(&mut self, what: String) {
        let at = self.started.elapsed();
        eprintln!("nemesis [{:>7.3}s] {what}", at.as_secs_f64());
        self.log.push(LogLine {
            at_ms: at.as_millis() as u64,
            what,
        });
    }

    /// `/status.json` of every broker (`None`: down, paused or unreachable).
    async fn poll(&mut self) {
        let futs = self.admin.iter().map(|a| {
            let url = format!("http://{a}/status.json");
            let http = self.http.clone();
            async move {
                let s: BrokerStatus = http.get(url).send().await.ok()?.json().await.ok()?;
                Some(NodeView {
                    ready: s.ready,
                    status: Some(s),
                })
            }
        });
        self.views = futures::future::join_all(futs).await;
        for stream in [
            streams::TRANSACTIONS,
            streams::DECISIONS,
            streams::LABELS,
            streams::TRANSACTIONS_DLQ,
        ] {
            let claims: Vec<bool> = self
                .views
                .iter()
                .flatten()
                .filter_map(|v| v.status.as_ref()?.raft.get(stream))
                .filter(|r| r.is_leader)
                .map(|r| r.has_quorum)
                .collect();
            let leased = claims.iter().filter(|&&q| q).count();
            let term = self
                .views
                .iter()
                .flatten()
                .filter_map(|v| v.status.as_ref()?.raft.get(stream).map(|r| r.term))
                .max()
                .unwrap_or(0);
            let leader = leader_in(&self.views, stream).map(|(i, _)| i);
            let l = self.leadership.entry(stream.to_string()).or_default();
            if l.first_term == 0 {
                l.first_term = term;
            }
            l.last_term = l.last_term.max(term);
            if leased > 1 {
                l.two_leader_samples += 1;
            }
            if claims.len() > leased {
                l.leaseless_leader_samples += 1;
            }
            if let Some(now) = leader {
                if l.leader.is_some_and(|before| before != now) {
                    l.leader_changes += 1;
                }
                l.leader = Some(now);
            }
        }
    }

    /// Highest term seen so far, summed over the streams.
    fn terms(&self) -> u64 {
        self.leadership.values().map(|l| l.last_term).sum()
    }

    /// Highest term seen so far, summed over the streams not in `except`.
    fn terms_except(&self, except: &[String]) -> u64 {
        self.leadership
            .iter()
            .filter(|(s, _)| !except.contains(s))
            .map(|(_, l)| l.last_term)
            .sum()
    }

    /// Streams broker `i` leads now, as last polled.
    fn led_by(&self, i: usize) -> Vec<String> {
        leaders(&self.views)
            .into_iter()
            .filter(|(_, (l, _))| *l == i)
            .map(|(s, _)| s)
            .collect()
    }
    /// Starts the brokers and waits until every stream has a leader every broker knows.
    async fn start_brokers(&mut self) -> Result<()> {
        for b in &mut self.brokers {
            b.start()?;
        }
        let began = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for b in &mut self.brokers {
                if let Some(st) = b.try_exited() {
                    bail!(
                        "{} exited during start-up ({st}); last log lines:\n{}",
                        b.role,
                        b.log_tail(30)
                    );
                }
            }
            self.poll().await;
            if every_stream_led(&self.views)
                && self
                    .views
                    .iter()
                    .all(|v| v.as_ref().is_some_and(NodeView::knows_all_leaders))
            {
                return Ok(());
            }
            if began.elapsed() > Duration::from_secs(90) {
                let tails: Vec<String> = self
                    .brokers
                    .iter()
                    .map(|b| format!("-- {}:\n{}", b.role, b.log_tail(15)))
                    .collect();
                bail!(
                    "brokers not ready after 90 s; last log lines:\n{}",
                    tails.join("\n")
                );
            }
        }
    }

    /// Restarts whatever exited without being killed; notes the producer's end.
    fn supervise(&mut self) -> Result<()> {
        let mut notes = Vec::new();
        for (i, b) in self.brokers.iter_mut().enumerate() {
            if !self.broker_down[i]
                && let Some(st) = b.try_exited()
            {
                notes.push(format!(
                    "{} exited unexpectedly ({st}); restarting. Last log lines:\n{}",
                    b.role,
                    b.log_tail(10)
                ));
                b.start()?;
            }
        }
        for (i, w) in self.workers.iter_mut().enumerate() {
            if !self.worker_down[i]
                && let Some(st) = w.try_exited()
            {
                notes.push(format!("{} exited unexpectedly ({st}); restarting", w.role));
                w.start()?;
            }
        }
        if !self.producer_down
            && !self.producer_done
            && let Some(st) = self.producer.try_exited()
        {
            if st.success() {
                self.producer_done = true;
                self.say("producer finished: every transaction acknowledged".into());
            } else {
                notes.push(format!(
                    "producer exited unexpectedly ({st}); restarting. Last log lines:\n{}",
                    self.producer.log_tail(5)
                ));
                self.producer.start()?;
            }
        }
        for n in notes {
            self.unexpected_exits.push(n.clone());
            self.say(n);
        }
        Ok(())
    }

    /// The broker `role` names now.
    fn resolve(&self, role: &Role) -> usize {
        let n = self.brokers.len();
        let leader = |stream: &str| leader_in(&self.views, stream).map(|(i, _)| i);
        match role {
            Role::Leader { stream } => leader(stream).unwrap_or(0),
            Role::Follower { pick } => pick_follower(
                &leaders(&self.views),
                n,
                leader(streams::TRANSACTIONS),
                *pick,
            ),
            Role::Any { pick } => (*pick % n as u64) as usize,
        }
    }

    fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.brokers[i].pid() as i32);
        if let Err(e) = nix::sys::signal::kill(pid, sig) {
            eprintln!("nemesis: {sig} to broker-{i}: {e}");
        }
    }

    /// The broker a fault of one broker hits (partition, pause, kill); `None` for others.
    fn victim_of(&self, kind: &FaultKind) -> Option<usize> {
        match kind {
            FaultKind::Isolate { node, .. }
            | FaultKind::Pause { node }
            | FaultKind::KillBroker { node } => Some(self.resolve(node)),
            _ => None,
        }
    }

    /// Carries out `kind`; returns what heals it and a description.
    async fn begin(&mut self, kind: &FaultKind) -> Result<(Vec<Undo>, String)> {
        let n = self.brokers.len();
        Ok(match kind {
            FaultKind::Isolate { node, direction } => {
                let i = self.resolve(node);
                let others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
                self.net.cut(i, &others, *direction)?;
                let how = match direction {
                    Direction::Both => "both ways",
                    Direction::Inbound => "inbound only: it hears no peer",
                    Direction::Outbound => "outbound only: no peer hears it",
                };
                (
                    vec![Undo::Heal],
                    format!("{kind}: broker-{i} cut from {others:?} ({how})"),
                )
            }
            FaultKind::Split { pick } => {
                let minority = schedule::minority(n, *pick);
                let majority: Vec<usize> = (0..n).filter(|j| !minority.contains(j)).collect();
                for &i in &minority {
                    self.net.cut(i, &majority, Direction::Both)?;
                }
                (
                    vec![Undo::Heal],
                    format!("{kind}: {minority:?} | {majority:?}"),
                )
            }
            FaultKind::Pause { node } => {
                let i = self.resolve(node);
                self.signal(i, nix::sys::signal::Signal::SIGSTOP);
                (vec![Undo::Cont(i)], format!("{kind}: SIGSTOP broker-{i}"))
            }
            FaultKind::KillBroker { node } => {
                let i = self.resolve(node);
                self.brokers[i].kill9().await;
                self.broker_down[i] = true;
                (vec![Undo::StartBroker(i)], format!("{kind}: broker-{i}"))
            }
            FaultKind::KillWorker { pick } => {
                let i = (*pick % self.workers.len() as u64) as usize;
                self.workers[i].kill9().await;
                self.worker_down[i] = true;
                (vec![Undo::StartWorker(i)], format!("{kind}: worker-{i}"))
            }
            FaultKind::KillProducer => {
                if self.producer_done {
                    (Vec::new(), format!("{kind}: skipped, it has finished"))
                } else {
                    self.producer.kill9().await;
                    self.producer_down = true;
                    (vec![Undo::StartProducer], kind.to_string())
                }
            }
            FaultKind::Both(a, b) => {
                let (mut u1, d1) = Box::pin(self.begin(a)).await?;
                let (u2, d2) = Box::pin(self.begin(b)).await?;
                u1.extend(u2);
                (u1, format!("{d1} + {d2}"))
            }
        })
    }

    /// Undoes a fault.
    fn heal(&mut self, undo: &[Undo]) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for u in undo {
            match *u {
                Undo::Heal => {
                    self.net.heal()?;
                    done.push("links restored".to_string());
                }
                Undo::Cont(i) => {
                    self.signal(i, nix::sys::signal::Signal::SIGCONT);
                    done.push(format!("SIGCONT broker-{i}"));
                }
                Undo::StartBroker(i) => {
                    self.brokers[i].start()?;
                    self.broker_down[i] = false;
                    done.push(format!("broker-{i} restarted"));
                }
                Undo::StartWorker(i) => {
                    self.workers[i].start()?;
                    self.worker_down[i] = false;
                    done.push(format!("worker-{i} restarted"));
                }
                Undo::StartProducer => {
                    self.producer.start()?;
                    self.producer_down = false;
                    done.push("producer restarted (same command line)".to_string());
                }
            }
        }
        Ok(done)
    }

    /// Starts everything, injects the faults, lets the pipeline settle and checks it.
    async fn execute(&mut self, args: &NemesisArgs) -> Result<NemesisReport> {
        self.start_brokers().await?;
        for w in &mut self.workers {
            w.start()?;
        }
        let _ = std::fs::remove_file(self.dir.join("producer-summary.json"));
        self.producer.start()?;
        let duration = Duration::from_secs(args.duration_s);
        let schedule = Schedule::new(args.seed, duration);
        self.started = Instant::now();
        self.leadership.clear();
        self.poll().await;
        self.say(format!(
            "{} faults scheduled over {} s (seed {})",
            schedule.faults.len(),
            args.duration_s,
            args.seed
        ));
        for f in &schedule.faults {
            eprintln!(
                "nemesis   plan {:>7.3}s +{:.3}s {}",
                f.at.as_secs_f64(),
                f.length.as_secs_f64(),
                f.kind
            );
        }
        let tag = format!("{}-s{}-{}", self.net.prefix, args.seed, std::process::id());
        let workload = Workload::start(self.clients.clone(), tag.clone())?;
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        let faults = self.inject(&schedule.faults, &mut by_kind).await?;
        let mut elections_by_kind: BTreeMap<String, u64> = BTreeMap::new();
        let mut followed_stream_elections_by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for f in &faults {
            *elections_by_kind.entry(f.kind.clone()).or_default() += f.elections;
            if f.victim.is_some() {
                *followed_stream_elections_by_kind
                    .entry(f.kind.clone())
                    .or_default() += f.followed_stream_elections;
            }
        }
        self.say("faults over; checker workload stopping".into());
        let history = workload.finish().await;
        let settled = self.settle(Duration::from_secs(args.settle_s)).await?;
        self.say(format!(
            "settled after {:.1} s; reading every stream back",
            settled.as_secs_f64()
        ));
        let router = LeaderRouter::new(self.clients.clone()).context("broker address list")?;
        let own = checker::read_own(&router, &tag).await?;
        let checker = checker::analyse(&history, &own);
        let records = checker::read_pipeline(&router).await?;
        let pipeline = checker::check_pipeline(&records, args.count(), self.producer_done);
        self.poll().await;
        let mut violations = checker.violations();
        violations.extend(pipeline.violations());
        let mut unexpected = self.unexpected_exits.clone();
        unexpected.retain(|e| e.starts_with("broker"));
        if !unexpected.is_empty() {
            violations.push(format!(
                "{} broker(s) exited without being killed",
                unexpected.len()
            ));
        }
        let elections = self
            .leadership
            .values()
            .map(|l| l.last_term.saturating_sub(l.first_term))
            .sum();
        Ok(NemesisReport {
            seed: args.seed,
            duration_s: args.duration_s,
            brokers: args.brokers,
            workers: args.workers,
            network: format!("{} {}", self.net.prefix, self.net.subnet()),
            faults_injected: by_kind.values().sum::<u64>() as usize,
            faults_by_kind: by_kind,
            faults,
            elections_by_kind,
            followed_stream_elections_by_kind,
            log: std::mem::take(&mut self.log),
            leadership: self.leadership.clone(),
            elections,
            unexpected_exits: self.unexpected_exits.clone(),
            settle_s: settled.as_secs_f64(),
            checker,
            pipeline,
            violations,
            data_dir: self.dir.display().to_string(),
        })
    }

    /// The fault loop: each fault begins at its time and is healed after its length.
    async fn inject(
        &mut self,
        faults: &[Fault],
        by_kind: &mut BTreeMap<String, u64>,
    ) -> Result<Vec<FaultRecord>> {
        let mut records: Vec<FaultRecord> = Vec::new();
        let mut terms_before = 0u64;
        // Terms summed over the streams the current fault's victim did not lead, at its start.
        let mut followed_before = 0u64;
        let mut next = 0;
        let mut active: Option<(Duration, Vec<Undo>)> = None;
        let mut polled = Instant::now();
        let end = faults.last().map_or(Duration::ZERO, |f| f.at + f.length);
        loop {
            tokio::time::sleep(TICK).await;
            self.supervise()?;
            if polled.elapsed() >= POLL_EVERY {
                self.poll().await;
                polled = Instant::now();
            }
            let now = self.started.elapsed();
            if let Some((until, undo)) = &active
                && now >= *until
            {
                let undo = undo.clone();
                active = None;
                let done = self.heal(&undo)?;
                self.say(format!("healed: {}", done.join(", ")));
            }
            if active.is_none() && next < faults.len() && now >= faults[next].at {
                let f = &faults[next];
                next += 1;
                self.poll().await;
                let terms = self.terms();
                if let Some(last) = records.last_mut() {
                    last.elections = terms.saturating_sub(terms_before);
                    last.followed_stream_elections = self
                        .terms_except(&last.victim_led)
                        .saturating_sub(followed_before);
                }
                terms_before = terms;
                let victim = self.victim_of(&f.kind);
                let victim_led = victim.map(|v| self.led_by(v)).unwrap_or_default();
                followed_before = self.terms_except(&victim_led);
                let (undo, what) = self.begin(&f.kind).await?;
                *by_kind.entry(kind_name(&f.kind)).or_default() += 1;
                records.push(FaultRecord {
                    at_ms: self.started.elapsed().as_millis() as u64,
                    length_ms: f.length.as_millis() as u64,
                    kind: kind_name(&f.kind),
                    what: what.clone(),
                    elections: 0,
                    victim,
                    victim_led,
                    followed_stream_elections: 0,
                });
                self.say(format!(
                    "fault {next}/{}: {what} for {:.3} s",
                    faults.len(),
                    f.length.as_secs_f64()
                ));
                active = Some((self.started.elapsed() + f.length, undo));
            }
            if active.is_none() && next >= faults.len() && now >= end {
                // The last fault's elections: up to one more poll after the heal.
                self.poll().await;
                let terms = self.terms();
                if let Some(last) = records.last_mut() {
                    last.elections = terms.saturating_sub(terms_before);
                    last.followed_stream_elections = self
                        .terms_except(&last.victim_led)
                        .saturating_sub(followed_before);
                }
                return Ok(records);
            }
        }
    }

    /// Waits until the producer has finished and `transactions` has nothing pending or in
    /// flight, or `limit` passes; returns how long it took.
    async fn settle(&mut self, limit: Duration) -> Result<Duration> {
        let began = Instant::now();
        let router = LeaderRouter::new(self.clients.clone()).context("broker address list")?;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.supervise()?;
            self.poll().await;
            if self.producer_done {
                let info = router
                    .call(
                        streams::TRANSACTIONS,
                        Duration::from_secs(2),
                        |mut c| async move {
                            c.get_stream(GetStreamRequest {
                                stream: streams::TRANSACTIONS.into(),
                            })
                            .await
                        },
                    )
                    .await
                    .ok()
                    .and_then(|r| r.stream);
                if info.is_some_and(|i| i.pending == 0 && i.in_flight == 0) {
                    return Ok(began.elapsed());
                }
            }
            if began.elapsed() > limit {
                self.say(format!(
                    "not settled within {} s (producer finished: {})",
                    limit.as_secs(),
                    self.producer_done
                ));
                return Ok(began.elapsed());
            }
        }
    }

    /// Stops every process (workers and producer first).
    async fn stop(&mut self) {
        for w in &mut self.workers {
            w.stop(STOP_GRACE).await;
        }
        self.producer.stop(STOP_GRACE).await;
        let futs = self.brokers.iter_mut().map(|b| b.stop(STOP_GRACE));
        futures::future::join_all(futs).await;
    }
}

/// Short name of a fault kind for the per-kind counts.
fn kind_name(k: &FaultKind) -> String {
    match k {
        FaultKind::Isolate { node, direction } => {
            let who = match node {
                Role::Leader { .. } => "leader",
                Role::Follower { .. } => "follower",
                Role::Any { .. } => "node",
            };
            let how = match direction {
                Direction::Both => "partition",
                Direction::Inbound => "inbound-cut",
                Direction::Outbound => "outbound-cut",
            };
            format!("{who}-{how}")
        }
        FaultKind::Split { .. } => "majority-minority-split".into(),
        FaultKind::Pause {
            node: Role::Leader { .. },
        } => "leader-pause".into(),
        FaultKind::Pause { .. } => "follower-pause".into(),
        FaultKind::KillBroker { .. } => "broker-kill".into(),
        FaultKind::KillWorker { .. } => "worker-kill".into(),
        FaultKind::KillProducer => "producer-kill".into(),
        FaultKind::Both(a, b) => format!("{} + {}", kind_name(a), kind_name(b)),
    }
}

/// Text summary of a report (the JSON is printed too).
pub fn render(r: &NemesisReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "nemesis seed {}: {} faults in {} s, {} elections (term increases), settled in {:.1} s",
        r.seed, r.faults_injected, r.duration_s, r.elections, r.settle_s
    );
    for (stream, l) in &r.leadership {
        let _ = writeln!(
            s,
            "  {stream:<17} term {} -> {}, {} leader changes, {} samples with two leased leaders, {} with a leader without lease",
            l.first_term,
            l.last_term,
            l.leader_changes,
            l.two_leader_samples,
            l.leaseless_leader_samples
        );
    }
    let by_kind: Vec<String> = r
        .faults_by_kind
        .iter()
        .map(|(k, n)| match r.followed_stream_elections_by_kind.get(k) {
            Some(f) => format!(
                "{k} x{n}: {} elections ({f} in streams the victim followed)",
                r.elections_by_kind.get(k).unwrap_or(&0)
            ),
            None => format!(
                "{k} x{n}: {} elections",
                r.elections_by_kind.get(k).unwrap_or(&0)
            ),
        })
        .collect();
    let _ = writeln!(s, "  faults: {}", by_kind.join("; "));
    let c = &r.checker;
    let _ = writeln!(
        s,
        "  checker: {} sent, {} acked, {} stored; lost {}, duplicated {}, unexpected {}, misplaced {}; {} reads, {} stale, {} failed",
        c.sent,
        c.acked,
        c.stored,
        c.lost,
        c.duplicated,
        c.unexpected,
        c.misplaced,
        c.reads,
        c.stale_reads,
        c.read_errors
    );
    let p = &r.pipeline;
    let _ = writeln!(
        s,
        "  pipeline: {} of {} transactions stored, {} decided once, {} dead-lettered, {} undecided, {} duplicate decisions, {} lost",
        p.transactions_stored,
        p.expected,
        p.decided_once,
        p.dead_lettered,
        p.undecided,
        p.decisions_duplicated,
        p.transactions_lost
    );
    if r.passed() {
        let _ = writeln!(s, "nemesis: PASSED");
    } else {
        let _ = writeln!(s, "nemesis: FAILED");
        for v in &r.violations {
            let _ = writeln!(s, "  - {v}");
        }
        let _ = writeln!(s, "  data and logs kept in {}", r.data_dir);
    }
    s
}
