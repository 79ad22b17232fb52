//! Local mode: the whole pipeline on one machine, as separate processes.
//!
//! [`run_local`] starts `brokers` broker replicas (a [`BrokerCluster`]: every stream is
//! replicated to all of them), `workers` workers (each in its own cgroup with a `worker_cpus`
//! CPU quota where the machine allows it) and the producer, all as child processes (the
//! `txpipe-broker`, `txpipe-worker` and `txpipe-producer` binaries), shows progress, waits
//! until every produced transaction is resolved, runs the [audit](crate::audit), stops
//! everything and returns the [`RunReport`].
//!
//! With chaos enabled it kills (SIGKILL) brokers and workers and restarts each on its own data
//! directory: at seeded points of the run's progress (`--chaos-events`) and, optionally, every
//! few seconds (`--chaos-kill-interval-ms`). A broker kill always hits the current leader of
//! the `transactions` stream (read from the replicas' `/status.json`), restarts it after a
//! short seeded delay, and is not followed by another broker kill until the restarted replica
//! has rejoined (ready, and it knows a leader of every stream), so a quorum always survives.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use txpipe_client::streams;

use crate::audit::{self, AuditReport};
use crate::cgroup::CpuLimiter;
use crate::cluster::{BrokerCluster, Proc, free_port, leader_in};

pub use crate::cluster::RoleUsage;

/// Settings of a local run (see `txpipe run --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// Transactions to generate.
    #[arg(long, env = "TXPIPE_COUNT", default_value_t = 2_000_000)]
    pub count: u64,
    /// Broker replicas: 1, 3 or 5. Every stream is replicated to all of them through Raft and
    /// survives the loss of any minority.
    #[arg(long, env = "TXPIPE_BROKER_REPLICAS", default_value_t = 3)]
    pub brokers: u32,
    /// Worker processes.
    #[arg(long, env = "TXPIPE_WORKERS", default_value_t = 4)]
    pub workers: u32,
    /// CPU quota per worker, in CPUs (cgroup cpu.max); 0 disables the quota.
    #[arg(long, env = "TXPIPE_WORKER_CPUS", default_value_t = 0.5)]
    pub worker_cpus: f64,
    /// Generator seed.
    #[arg(long, env = "TXPIPE_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Producer rate limit, transactions per second (0 = unlimited).
    #[arg(long, env = "TXPIPE_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Directory for broker data and process logs (default: a new temporary directory).
    #[arg(long, env = "TXPIPE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the data directory after the run (always kept when the audit fails).
    #[arg(long, env = "TXPIPE_KEEP_DATA")]
    pub keep_data: bool,
    /// Kill -9 brokers or workers at seeded points of the run and restart each on its data
    /// directory. A broker kill hits the current leader of the `transactions` stream.
    #[arg(long, env = "TXPIPE_CHAOS")]
    pub chaos: bool,
    /// Number of chaos kills spread over 5-90% of the run's progress.
    #[arg(long, env = "TXPIPE_CHAOS_EVENTS", default_value_t = 6)]
    pub chaos_events: u32,
    /// Seed of the chaos schedule (kill points, targets, restart delays, interval jitter).
    #[arg(long, env = "TXPIPE_CHAOS_SEED", default_value_t = 1)]
    pub chaos_seed: u64,
    /// Only kill workers at the --chaos-events points (never a broker).
    #[arg(long, env = "TXPIPE_CHAOS_WORKERS_ONLY")]
    pub chaos_workers_only: bool,
    /// Only kill brokers (the leader) at the --chaos-events points (never a worker).
    #[arg(
        long,
        env = "TXPIPE_CHAOS_BROKER_ONLY",
        conflicts_with = "chaos_workers_only"
    )]
    pub chaos_broker_only: bool,
    /// With --chaos: also kill -9 the leader of `transactions` every this many milliseconds
    /// (seeded jitter, 0.5-1.5x), until 95% of the run is resolved; 0 = off. Minimum 500.
    #[arg(
        long,
        env = "TXPIPE_CHAOS_KILL_INTERVAL_MS",
        default_value_t = 0,
        requires = "chaos"
    )]
    pub chaos_kill_interval_ms: u64,
    /// A killed broker is restarted after a seeded delay of a quarter of this up to this,
    /// milliseconds: counted from the kill with one broker, and from the election of a new
    /// leader of `transactions` with several (so every leader kill causes a real failover).
    #[arg(long, env = "TXPIPE_CHAOS_RESTART_DELAY_MS", default_value_t = 1000)]
    pub chaos_restart_delay_ms: u64,
    /// Give up when no transaction is resolved for this many seconds.
    #[arg(long, env = "TXPIPE_STALL_TIMEOUT_S", default_value_t = 120)]
    pub stall_timeout_s: u64,
    /// Write the report as JSON to this file.
    #[arg(long, env = "TXPIPE_REPORT_JSON")]
    pub report_json: Option<PathBuf>,
    /// Progress display: auto (bar on a terminal), always, never (log lines).
    #[arg(long, env = "TXPIPE_PROGRESS", default_value = "auto")]
    pub progress: String,
    /// Extra arguments passed to every worker (e.g. "--crypto-rounds=100").
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    pub worker_args: Vec<String>,
    /// Extra arguments passed to every broker replica.
    #[arg(long = "broker-arg", allow_hyphen_values = true)]
    pub broker_args: Vec<String>,
    /// Directory holding txpipe-broker, txpipe-worker and txpipe-producer (default: the
    /// directory of this binary, e.g. target/release).
    #[arg(long, env = "TXPIPE_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Extra arguments passed to the producer.
    #[arg(long = "producer-arg", allow_hyphen_values = true)]
    pub producer_args: Vec<String>,
    /// Read the transactions from this file instead of generating them (every row, up to
    /// --count). See docs/input-formats.md.
    #[arg(long, env = "TXPIPE_INPUT")]
    pub input: Option<PathBuf>,
    /// Format of --input: csv, jsonl (card transactions) or features (pre-featurised, e.g.
    /// the ULB creditcard.csv as-is). Default: from the file extension (csv/jsonl).
    #[arg(long, env = "TXPIPE_INPUT_FORMAT")]
    pub input_format: Option<String>,
    /// Features format: send only rows whose time column is >= this, seconds.
    #[arg(long, env = "TXPIPE_TIME_FROM")]
    pub time_from: Option<f64>,
    /// Features format: send only rows whose time column is < this, seconds.
    #[arg(long, env = "TXPIPE_TIME_UNTIL")]
    pub time_until: Option<f64>,
    /// Features format: send only the held-out part of the model's data set, i.e. the rows at
    /// or after the split time the model records (`training.split.split_time_s`).
    #[arg(long, env = "TXPIPE_HELD_OUT")]
    pub held_out: bool,
    /// Worker model (txpipe-worker --model): `builtin:card` (default), `builtin:ulb-gbt`,
    /// `builtin:ulb-lr` or a model file.
    #[arg(long, env = "TXPIPE_MODEL")]
    pub model: Option<String>,
    /// Review threshold of the workers (0-1); default: the model's.
    #[arg(long, env = "TXPIPE_REVIEW_THRESHOLD")]
    pub review_threshold: Option<f32>,
    /// Decline threshold of the workers (0-1); default: the model's.
    #[arg(long, env = "TXPIPE_DECLINE_THRESHOLD")]
    pub decline_threshold: Option<f32>,
    /// Fail the run (exit 1) when the audit's AUPRC is below this (or cannot be computed).
    #[arg(long, env = "TXPIPE_MIN_AUPRC")]
    pub min_auprc: Option<f64>,
}

/// What a model file says about its own evaluation (`training` of a vector model).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelCard {
    /// `model_version`.
    pub model_version: String,
    /// Split time: rows at or after it are the held-out part, seconds.
    pub split_time_s: Option<f64>,
    /// The trainer's AUPRC on the held-out part.
    pub held_out_auprc: Option<f64>,
    /// The trainer's held-out rows.
    pub held_out_rows: Option<u64>,
    /// The trainer's (precision, recall, F1) at the decline threshold on the held-out part.
    pub held_out_declined: Option<(f64, f64, f64)>,
}

impl ModelCard {
    /// Reads the card of the model `spec` names (`builtin:<name>` or a file); `Ok(None)` for
    /// the card model, which records no such figures. Errors: unreadable file or bad JSON.
    pub fn load(spec: &str) -> Result<Option<Self>> {
        let json = match spec.strip_prefix("builtin:") {
            Some("card") => return Ok(None),
            Some(name) => match txpipe_worker::vector::builtin_json(name) {
                Some(j) => j.to_string(),
                None => bail!("unknown built-in model {name:?} (card, ulb-gbt, ulb-lr)"),
            },
            None => std::fs::read_to_string(spec).with_context(|| format!("reading {spec}"))?,
        };
        let v: serde_json::Value =
            serde_json::from_str(&json).with_context(|| format!("parsing model {spec}"))?;
        if !txpipe_worker::vector::is_vector_model(&json) {
            return Ok(None);
        }
        let t = &v["training"];
        let d = &t["held_out"]["declined"];
        Ok(Some(Self {
            model_version: v["model_version"].as_str().unwrap_or_default().to_string(),
            split_time_s: t["split"]["split_time_s"].as_f64(),
            held_out_auprc: t["held_out"]["auprc"].as_f64(),
            held_out_rows: t["held_out"]["rows"].as_u64(),
            held_out_declined: match (
                d["precision"].as_f64(),
                d["recall"].as_f64(),
                d["f1"].as_f64(),
            ) {
                (Some(p), Some(r), Some(f)) => Some((p, r, f)),
                _ => None,
            },
        }))
    }
}

impl LocalArgs {
    /// Checks cross-field rules before anything starts.
    pub fn validate(&self) -> Result<()> {
        if self.count == 0 {
            bail!("--count must be at least 1");
        }
        if !matches!(self.brokers, 1 | 3 | 5) {
            bail!("--brokers must be 1, 3 or 5, got {}", self.brokers);
        }
        if self.workers == 0 {
            bail!("--workers must be at least 1");
        }
        if !(0.0..=64.0).contains(&self.worker_cpus) {
            bail!(
                "--worker-cpus must be between 0 and 64, got {}",
                self.worker_cpus
            );
        }
        if self.chaos_kill_interval_ms != 0 && self.chaos_kill_interval_ms < 500 {
            bail!(
                "--chaos-kill-interval-ms must be 0 (off) or at least 500, got {}",
                self.chaos_kill_interval_ms
            );
        }
        if self.chaos_restart_delay_ms > 60_000 {
            bail!(
                "--chaos-restart-delay-ms must be at most 60000, got {}",
                self.chaos_restart_delay_ms
            );
        }
        let features = self.input_format.as_deref() == Some("features");
        if self.input_format.is_some() && self.input.is_none() {
            bail!("--input-format needs --input");
        }
        if (self.time_from.is_some() || self.time_until.is_some() || self.held_out) && !features {
            bail!("--time-from, --time-until and --held-out apply to --input-format features");
        }
        if features && self.model.as_deref().is_none_or(|m| m == "builtin:card") {
            bail!(
                "pre-featurised input needs a vector model: add --model builtin:ulb-gbt (or builtin:ulb-lr, or a model file trained on the file's columns)"
            );
        }
        if self.held_out && self.time_from.is_some() {
            bail!("--held-out sets the start time itself; drop --time-from");
        }
        if let Some(m) = self.min_auprc
            && !(0.0..=1.0).contains(&m)
        {
            bail!("--min-auprc must be between 0 and 1, got {m}");
        }
        if !matches!(self.progress.as_str(), "auto" | "always" | "never") {
            bail!(
                "--progress must be auto, always or never, got {:?}",
                self.progress
            );
        }
        Ok(())
    }
}

/// One chaos kill and what followed it.
#[derive(Debug, Clone, Default, Serialize)]
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
        let mut s = format!(
            "{:>7.1} s  {} at {} resolved [{}]",
            self.at_s, self.target, self.at_resolved, self.trigger
        );
        if !self.leader_of.is_empty() {
            s = format!(
                "{:>7.1} s  {} (leader of {}) at {} resolved [{}]",
                self.at_s,
                self.target,
                self.leader_of.join(", "),
                self.at_resolved,
                self.trigger
            );
        }
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

/// Everything a local run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Transactions requested.
    pub count: u64,
    /// Broker replicas.
    pub brokers: u32,
    /// Worker processes.
    pub workers: u32,
    /// CPU quota per worker, or `None` when it could not be applied.
    pub worker_cpus: Option<f64>,
    /// Why the quota was not applied, when it was not.
    pub cpu_limit_note: Option<String>,
    /// Producer start to last transaction resolved, seconds.
    pub elapsed_s: f64,
    /// Transactions resolved per second over `elapsed_s`.
    pub tx_per_s: f64,
    /// CPU seconds of every child process (getrusage RUSAGE_CHILDREN).
    pub total_cpu_s: f64,
    /// `total_cpu_s` / transactions, microseconds.
    pub cpu_per_tx_us: f64,
    /// Cores on this machine.
    pub cores: usize,
    /// Measured rate / (cores / CPU per transaction).
    pub efficiency: f64,
    /// Per-process CPU and memory (each broker replica, producer, each worker).
    pub roles: Vec<RoleUsage>,
    /// Chaos kills performed.
    pub chaos_kills: Vec<ChaosKill>,
    /// The audit.
    pub audit: AuditReport,
    /// Where data and logs are.
    pub data_dir: String,
    /// The vector model's own figures (`--model` of a vector model), shown next to the
    /// audit's.
    pub model_card: Option<ModelCard>,
    /// `--min-auprc`.
    pub min_auprc: Option<f64>,
}

impl RunReport {
    /// Why the run failed, one line per reason: the audit's failures, and an AUPRC below
    /// `--min-auprc`.
    pub fn failures(&self) -> Vec<String> {
        let mut f = self.audit.failures();
        if let Some(min) = self.min_auprc {
            match self.audit.auprc {
                Some(a) if a >= min => {}
                Some(a) => f.push(format!("AUPRC {a:.4} is below --min-auprc {min}")),
                None => f.push(format!(
                    "no AUPRC (no labelled fraud was decided) but --min-auprc {min} was asked"
                )),
            }
        }
        f
    }

    /// True when [`Self::failures`] is empty.
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }
}

/// A broker kill waiting for its replica to come back.
struct Outage {
    node: usize,
    killed_at: Instant,
    old_term: u64,
    /// Seeded delay before the restart: counted from the kill with one broker, from the
    /// election of a new leader of `transactions` with several (every leader kill causes a
    /// real failover, not the old leader's return within its election timeout).
    delay: Duration,
    wait_for_election: bool,
    restarted: bool,
    record: ChaosKill,
}

/// Seeded source of chaos decisions other than the progress schedule.
struct ChaosRng(u64);

impl ChaosRng {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (splitmix(&mut self.0) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `max / 4 ..= max`.
    fn restart_delay(&mut self, max: Duration) -> Duration {
        max.mul_f64(0.25 + 0.75 * self.unit())
    }

    /// `interval × 0.5..1.5`.
    fn interval(&mut self, interval: Duration) -> Duration {
        interval.mul_f64(0.5 + self.unit())
    }
}

/// SplitMix64 step (Steele et al. 2014), for the chaos schedule.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A chaos kill planned at a fraction of resolved transactions.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosEvent {
    /// Fraction of `count` resolved when the kill happens, 0.05-0.9.
    pub at_fraction: f64,
    /// `None` = a broker (the current leader of `transactions`), `Some(i)` = worker i.
    pub worker: Option<u32>,
}

/// The seeded chaos schedule: `events` kills spread over 5%-90% of the run, sorted.
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
            let at_fraction = 0.05 + 0.85 * (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
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

/// Locates `txpipe-<name>` in `bin_dir`, with a hint when it has not been built.
pub fn service_binary(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let p = bin_dir.join(format!("txpipe-{name}"));
    if !p.is_file() {
        bail!(
            "{} not found: build every service first (`cargo build --release --workspace`, or `make run`), or pass --bin-dir",
            p.display()
        );
    }
    Ok(p)
}

/// Prints a line above the progress bar, or to stderr without one.
fn say(bar: &Option<indicatif::ProgressBar>, line: String) {
    match bar {
        Some(b) => b.println(line),
        None => eprintln!("txpipe: {line}"),
    }
}

/// Kills the current leader of `transactions` (SIGKILL). `None` when no replica claims the
/// leadership right now (an election is under way): the caller retries later.
async fn kill_leader(
    cluster: &mut BrokerCluster,
    rng: &mut ChaosRng,
    max_delay: Duration,
    trigger: &str,
    at_s: f64,
    at_resolved: u64,
) -> Option<Outage> {
    let views = cluster.views().await;
    let (node, term) = leader_in(&views, streams::TRANSACTIONS)?;
    let leader_of = views[node].as_ref().map(|v| v.leads()).unwrap_or_default();
    cluster.nodes[node].proc.kill9().await;
    let killed_at = Instant::now();
    Some(Outage {
        node,
        killed_at,
        old_term: term,
        delay: rng.restart_delay(max_delay),
        wait_for_election: cluster.nodes.len() > 1,
        restarted: false,
        record: ChaosKill {
            target: cluster.nodes[node].proc.role.clone(),
            trigger: trigger.to_string(),
            at_s,
            at_resolved,
            leader_of,
            ..ChaosKill::default()
        },
    })
}

/// Advances a broker outage: notes the first new leader of `transactions`, restarts the
/// killed replica when its delay has passed, and returns the finished record once the replica
/// has rejoined. Errors when the replica cannot be restarted or does not rejoin in 90 s.
async fn advance_outage(cluster: &mut BrokerCluster, o: &mut Outage) -> Result<Option<ChaosKill>> {
    let views = cluster.views().await;
    if o.record.new_leader.is_none()
        && let Some((l, term)) = leader_in(&views, streams::TRANSACTIONS)
        && (term > o.old_term || l == o.node)
    {
        // A higher term: another replica won an election. A single broker simply comes back
        // (and a killed replica restarted before any election would resume its leadership in
        // the same term, as it still holds the term's vote).
        o.record.new_leader = Some(cluster.nodes[l].proc.role.clone());
        o.record.leader_gap_s = Some(o.killed_at.elapsed().as_secs_f64());
    }
    if !o.restarted {
        let from = match (o.wait_for_election, o.record.leader_gap_s) {
            (false, _) => Some(Duration::ZERO),
            (true, Some(gap)) => Some(Duration::from_secs_f64(gap)),
            // No election after 30 s: restart anyway (the rejoin deadline reports it).
            (true, None) if o.killed_at.elapsed() > Duration::from_secs(30) => {
                Some(Duration::from_secs(30))
            }
            (true, None) => None,
        };
        if let Some(from) = from
            && o.killed_at.elapsed() >= from + o.delay
        {
            cluster.nodes[o.node].proc.start()?;
            o.restarted = true;
            o.record.restart_after_s = Some(o.killed_at.elapsed().as_secs_f64());
        }
    }
    if o.restarted
        && o.record.new_leader.is_some()
        && views[o.node]
            .as_ref()
            .is_some_and(|v| v.knows_all_leaders())
    {
        o.record.downtime_s = Some(o.killed_at.elapsed().as_secs_f64());
        return Ok(Some(o.record.clone()));
    }
    if o.killed_at.elapsed() > Duration::from_secs(90) {
        let p = &cluster.nodes[o.node].proc;
        bail!(
            "{} did not rejoin within 90 s of its kill; last log lines:\n{}",
            p.role,
            p.log_tail(30)
        );
    }
    Ok(None)
}

/// Runs the pipeline locally. `exe` is this binary; the services are the `txpipe-broker`,
/// `txpipe-worker` and `txpipe-producer` binaries beside it (or in `--bin-dir`).
pub async fn run_local(mut args: LocalArgs, exe: PathBuf) -> Result<RunReport> {
    args.validate()?;
    let model_card = match &args.model {
        Some(m) => ModelCard::load(m)?,
        None => None,
    };
    if args.held_out {
        let Some(t) = model_card.as_ref().and_then(|c| c.split_time_s) else {
            bail!("--held-out: the model records no split time (training.split.split_time_s)");
        };
        args.time_from = Some(t);
    }
    // With an input file the run is as long as the file (the producer's summary gives the
    // exact number at its end); the row count is the progress bar's length until then.
    let mut display_count = args.count;
    if let Some(path) = &args.input {
        use std::io::BufRead;
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let lines = std::io::BufReader::new(f).lines().count() as u64;
        let rows = if args.input_format.as_deref() == Some("jsonl")
            || path
                .extension()
                .is_some_and(|e| e == "jsonl" || e == "ndjson")
        {
            lines
        } else {
            lines.saturating_sub(1)
        };
        display_count = display_count.min(rows.max(1));
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => exe.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let broker_exe = service_binary(&bin_dir, "broker")?;
    let worker_exe = service_binary(&bin_dir, "worker")?;
    let producer_exe = service_binary(&bin_dir, "producer")?;
    let run_id = format!(
        "{}-{}",
        txpipe_client::now_us() / 1_000_000,
        std::process::id()
    );
    let (dir, temp) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("txpipe-run-{run_id}")),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut cluster =
        BrokerCluster::new(&broker_exe, args.brokers as usize, &dir, &args.broker_args)?;
    let brokers = cluster.client_list();
    cluster.start_all()?;
    eprintln!(
        "txpipe: {} broker replica(s) at {brokers}; data and logs in {}",
        args.brokers,
        dir.display()
    );
    cluster.wait_ready(Duration::from_secs(90)).await?;

    let mut limiter = None;
    let mut cpu_limit_note = None;
    if args.worker_cpus > 0.0 {
        match CpuLimiter::new(&run_id) {
            Ok(l) => {
                eprintln!(
                    "txpipe: each worker limited to {} CPU ({})",
                    args.worker_cpus,
                    l.describe()
                );
                limiter = Some(l);
            }
            Err(why) => {
                eprintln!("txpipe: cannot limit worker CPU ({why}); workers run without a quota");
                cpu_limit_note = Some(why);
            }
        }
    }
    let mut workers: Vec<Proc> = (0..args.workers)
        .map(|i| {
            let mut a = vec![
                format!("--brokers={brokers}"),
                format!("--name=worker-{i}"),
                format!("--admin-listen=127.0.0.1:{}", free_port().unwrap_or(0)),
            ];
            if let Some(m) = &args.model {
                a.push(format!("--model={m}"));
            }
            if let Some(t) = args.review_threshold {
                a.push(format!("--review-threshold={t}"));
            }
            if let Some(t) = args.decline_threshold {
                a.push(format!("--decline-threshold={t}"));
            }
            a.extend(args.worker_args.iter().cloned());
            Proc::new(&format!("worker-{i}"), worker_exe.clone(), a, &dir)
        })
        .collect();
    let limit =
        |limiter: &mut Option<CpuLimiter>, note: &mut Option<String>, w: &Proc, pid: u32| {
            if let Some(l) = limiter.as_mut()
                && let Err(e) = l.limit(&w.role, pid, args.worker_cpus)
            {
                eprintln!("txpipe: cannot limit {} CPU: {e}", w.role);
                *note = Some(e);
            }
        };
    for w in workers.iter_mut() {
        let pid = w.start()?;
        limit(&mut limiter, &mut cpu_limit_note, w, pid);
    }

    let mut producer_args = vec![
        format!("--brokers={brokers}"),
        format!("--count={}", args.count),
        format!("--seed={}", args.seed),
        format!("--rate={}", args.rate),
        "--progress=never".to_string(),
        format!(
            "--summary-json={}",
            dir.join("producer-summary.json").display()
        ),
    ];
    if let Some(p) = &args.input {
        producer_args.push(format!("--input={}", p.display()));
    }
    if let Some(f) = &args.input_format {
        producer_args.push(format!("--input-format={f}"));
    }
    if let Some(t) = args.time_from {
        producer_args.push(format!("--time-from={t}"));
    }
    if let Some(t) = args.time_until {
        producer_args.push(format!("--time-until={t}"));
    }
    producer_args.extend(args.producer_args.iter().cloned());
    let mut producer = Proc::new("producer", producer_exe, producer_args, &dir);
    let started = Instant::now();
    producer.start()?;

    let bar = progress_bar(&args.progress, display_count);
    let mut schedule = if args.chaos {
        chaos_schedule(
            args.chaos_seed,
            args.chaos_events,
            args.workers,
            args.chaos_workers_only,
            args.chaos_broker_only,
        )
    } else {
        Vec::new()
    };
    schedule.reverse();
    let mut rng = ChaosRng(args.chaos_seed ^ 0x5EED_C4A0_5000_0000);
    let interval = Duration::from_millis(args.chaos_kill_interval_ms);
    let mut next_interval_kill =
        (args.chaos && !interval.is_zero()).then(|| started + rng.interval(interval));
    let max_delay = Duration::from_millis(args.chaos_restart_delay_ms);
    let mut outage: Option<Outage> = None;
    let mut rejoined_at = (started, 0u64);
    let mut chaos_kills = Vec::new();
    let mut producer_done = false;
    let mut last_progress = (0u64, Instant::now());
    let mut last_log = Instant::now();
    let mut resolved = 0u64;
    let mut target = args.count;
    let finished_at;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.sample();
        producer.sample();
        for w in workers.iter_mut() {
            w.sample();
        }
        if !producer_done && let Some(st) = producer.try_exited() {
            if !st.success() {
                bail!(
                    "producer failed ({st}); last log lines:\n{}",
                    producer.log_tail(30)
                );
            }
            producer_done = true;
            if let Ok(text) = std::fs::read_to_string(dir.join("producer-summary.json"))
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(n) = v.get("transactions_acked").and_then(|x| x.as_u64())
            {
                target = n;
            }
        }
        // Unexpected exits: restart (a supervisor's job, like a Deployment's or a
        // StatefulSet's).
        for w in workers.iter_mut() {
            if let Some(st) = w.try_exited() {
                eprintln!("txpipe: {} exited ({st}); restarting", w.role);
                let pid = w.start()?;
                limit(&mut limiter, &mut cpu_limit_note, w, pid);
            }
        }
        for (i, n) in cluster.nodes.iter_mut().enumerate() {
            if outage.as_ref().is_some_and(|o| o.node == i) {
                continue;
            }
            if let Some(st) = n.proc.try_exited() {
                eprintln!(
                    "txpipe: {} exited ({st}); restarting on its data directory",
                    n.proc.role
                );
                n.proc.start()?;
            }
        }
        if let Some(o) = outage.as_mut()
            && let Some(rec) = advance_outage(&mut cluster, o).await?
        {
            say(&bar, format!("chaos: {}", rec.describe()));
            chaos_kills.push(rec);
            outage = None;
            // The next timed kill comes an interval after the replica rejoined, and only
            // once the pipeline has made progress since: the run always moves forward.
            rejoined_at = (Instant::now(), resolved);
            if next_interval_kill.is_some() {
                next_interval_kill = Some(Instant::now() + rng.interval(interval));
            }
        }

        let info = match cluster
            .stream_info(streams::TRANSACTIONS, Duration::from_millis(500))
            .await
        {
            Ok(i) => i,
            Err(_) => continue, // failover under way
        };
        resolved = info.acked_total + info.dead_lettered_total;
        if let Some(b) = &bar {
            b.set_position(resolved.min(display_count));
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            b.set_message(format!(
                "stored {}  pending {}  in flight {}  {:.0} tx/s",
                info.end_offset,
                info.pending,
                info.in_flight,
                resolved as f64 / secs
            ));
        } else if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            eprintln!(
                "txpipe: {resolved}/{} resolved, {} stored, {} pending, {:.0} tx/s",
                display_count,
                info.end_offset,
                info.pending,
                resolved as f64 / started.elapsed().as_secs_f64().max(1e-3)
            );
        }
        if resolved > last_progress.0 {
            last_progress = (resolved, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(args.stall_timeout_s) {
            bail!(
                "no progress for {} s ({resolved} of {target} resolved); logs in {}",
                args.stall_timeout_s,
                dir.display()
            );
        }
        let at_s = started.elapsed().as_secs_f64();
        if let Some(ev) = schedule.last().cloned()
            && resolved as f64 >= ev.at_fraction * args.count as f64
        {
            match ev.worker {
                // A broker kill waits until the previous killed broker has rejoined.
                None if outage.is_none() => {
                    outage = kill_leader(
                        &mut cluster,
                        &mut rng,
                        max_delay,
                        "progress",
                        at_s,
                        resolved,
                    )
                    .await;
                    if let Some(o) = &outage {
                        schedule.pop();
                        say(
                            &bar,
                            format!(
                                "chaos: killed {} (leader of {})",
                                o.record.target,
                                o.record.leader_of.join(", ")
                            ),
                        );
                    }
                }
                None => {}
                Some(i) => {
                    schedule.pop();
                    let w = &mut workers[i as usize];
                    w.kill9().await;
                    let pid = w.start()?;
                    limit(&mut limiter, &mut cpu_limit_note, w, pid);
                    let rec = ChaosKill {
                        target: w.role.clone(),
                        trigger: "progress".into(),
                        at_s,
                        at_resolved: resolved,
                        ..ChaosKill::default()
                    };
                    say(&bar, format!("chaos: {}", rec.describe()));
                    chaos_kills.push(rec);
                }
            }
        }
        if let Some(at) = next_interval_kill
            && Instant::now() >= at
            && outage.is_none()
            && resolved > rejoined_at.1
        {
            if (resolved as f64) >= 0.95 * args.count as f64 {
                next_interval_kill = None;
            } else if let Some(o) = kill_leader(
                &mut cluster,
                &mut rng,
                max_delay,
                "interval",
                at_s,
                resolved,
            )
            .await
            {
                say(
                    &bar,
                    format!(
                        "chaos: killed {} (leader of {})",
                        o.record.target,
                        o.record.leader_of.join(", ")
                    ),
                );
                outage = Some(o);
            }
        }
        if outage.is_none()
            && producer_done
            && info.end_offset >= target
            && info.pending == 0
            && resolved >= target
        {
            finished_at = started.elapsed();
            break;
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }

    let mut roles = Vec::new();
    for w in workers.iter_mut() {
        w.stop(Duration::from_secs(30)).await;
        roles.push(w.finish_usage());
    }
    roles.insert(0, producer.finish_usage());
    let audit = run_cluster_audit(&cluster)
        .await
        .context("running the audit")?;
    cluster.stop_all(Duration::from_secs(30)).await;
    for (i, n) in cluster.nodes.iter().enumerate() {
        roles.insert(i, n.proc.finish_usage());
    }
    drop(limiter);

    let total_cpu = children_cpu();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let elapsed_s = finished_at.as_secs_f64();
    let n = resolved.max(1) as f64;
    let tx_per_s = resolved as f64 / elapsed_s.max(1e-6);
    let cpu_per_tx = total_cpu.as_secs_f64() / n;
    let report = RunReport {
        count: if args.input.is_some() {
            resolved
        } else {
            args.count
        },
        model_card,
        min_auprc: args.min_auprc,
        brokers: args.brokers,
        workers: args.workers,
        worker_cpus: if cpu_limit_note.is_none() && args.worker_cpus > 0.0 {
            Some(args.worker_cpus)
        } else {
            None
        },
        cpu_limit_note,
        elapsed_s,
        tx_per_s,
        total_cpu_s: total_cpu.as_secs_f64(),
        cpu_per_tx_us: cpu_per_tx * 1e6,
        cores,
        efficiency: if cpu_per_tx > 0.0 {
            tx_per_s / (cores as f64 / cpu_per_tx)
        } else {
            0.0
        },
        roles,
        chaos_kills,
        audit,
        data_dir: dir.display().to_string(),
    };
    if let Some(p) = &args.report_json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if report.audit.passed() && temp && !args.keep_data {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

/// The audit over every replica's client address (each read goes to its stream's leader).
async fn run_cluster_audit(cluster: &BrokerCluster) -> Result<AuditReport> {
    audit::run_audit_cluster(&cluster.client_addrs(), Duration::from_secs(30)).await
}

fn children_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

fn progress_bar(mode: &str, count: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    let show = match mode {
        "always" => true,
        "never" => false,
        _ => std::io::stderr().is_terminal(),
    };
    if !show {
        return None;
    }
    let b = indicatif::ProgressBar::new(count);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} decided  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    Some(b)
}

/// Human-readable report of a run.
pub fn render(r: &RunReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== txpipe local run: {} transactions, {} broker replica{}, {} workers ==",
        r.count,
        r.brokers,
        if r.brokers == 1 { "" } else { "s" },
        r.workers
    );
    let quota = match (&r.worker_cpus, &r.cpu_limit_note) {
        (Some(c), _) => format!("{c} CPU each (cgroup quota)"),
        (None, Some(n)) => format!("no CPU quota ({n})"),
        (None, None) => "no CPU quota".into(),
    };
    let _ = writeln!(s, "workers: {quota}");
    let _ = writeln!(
        s,
        "throughput: {:.0} transactions/s over {:.2} s",
        r.tx_per_s, r.elapsed_s
    );
    let _ = writeln!(
        s,
        "cpu: {:.1} s total, {:.1} µs per transaction; efficiency {:.0}% of the {}-core bound ({:.0} tx/s)",
        r.total_cpu_s,
        r.cpu_per_tx_us,
        100.0 * r.efficiency,
        r.cores,
        if r.cpu_per_tx_us > 0.0 {
            r.cores as f64 / (r.cpu_per_tx_us / 1e6)
        } else {
            0.0
        }
    );
    for role in &r.roles {
        let _ = writeln!(
            s,
            "  {:<10} cpu {:>7.1} s   peak RSS {:>7.1} MiB   starts {}",
            role.name, role.cpu_s, role.peak_rss_mib, role.starts
        );
    }
    if !r.chaos_kills.is_empty() {
        let brokers = r
            .chaos_kills
            .iter()
            .filter(|k| k.target.starts_with("broker"))
            .count();
        let _ = writeln!(
            s,
            "chaos: {} kills ({} broker, {} worker):",
            r.chaos_kills.len(),
            brokers,
            r.chaos_kills.len() - brokers
        );
        for k in &r.chaos_kills {
            let _ = writeln!(s, "  {}", k.describe());
        }
    }
    s.push_str(&audit::render(&r.audit));
    if let Some(c) = &r.model_card {
        let _ = writeln!(
            s,
            "model {} (its trainer, on the held-out rows):",
            c.model_version
        );
        if let (Some(a), Some(n)) = (c.held_out_auprc, c.held_out_rows) {
            let _ = write!(s, "  AUPRC {a:.4} over {n} rows");
        }
        if let Some((p, rc, f)) = c.held_out_declined {
            let _ = write!(
                s,
                "; decline only: precision {p:.3}  recall {rc:.3}  F1 {f:.3}"
            );
        }
        let _ = writeln!(s);
        if c.model_version.starts_with("ulb-") {
            s.push_str(ULB_BASELINES);
        }
    }
    if let Some(min) = r.min_auprc {
        let met = !r.failures().iter().any(|f| f.contains("AUPRC"));
        let _ = writeln!(
            s,
            "--min-auprc {min}: {}",
            if met { "met" } else { "FAILED" }
        );
    }
    s
}

/// Published figures for the ULB credit-card data, printed next to a ULB model's run (see
/// docs/model-card-ulb.md for the comparison's caveats: these use random stratified splits,
/// txpipe's models a chronological one).
pub const ULB_BASELINES: &str = "published baselines (random stratified 80/20 splits, not comparable one-to-one with this chronological split):
  Sabado, Yu & Ricafort 2026 (IJLTEMAS XV(4), doi:10.51583/IJLTEMAS.2026.150400092): XGBoost AUPRC 0.817, random forest AUPRC 0.805, logistic regression recall 0.86 at precision 0.10
  Zhetpisbay & Kuatbayeva 2026 (Universum 2(143), doi:10.32743/UniTech.2026.143.2.22067): tree ensembles PR-AUC above 0.84 (stratified cross-validation)
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_schedule_is_seeded_sorted_and_respects_the_target_filter() {
        let a = chaos_schedule(7, 10, 4, false, false);
        assert_eq!(a, chaos_schedule(7, 10, 4, false, false));
        assert_ne!(a, chaos_schedule(8, 10, 4, false, false));
        assert!(a.windows(2).all(|w| w[0].at_fraction <= w[1].at_fraction));
        assert!(a.iter().all(|e| (0.05..=0.9).contains(&e.at_fraction)));
        assert!(
            chaos_schedule(7, 10, 4, true, false)
                .iter()
                .all(|e| e.worker.is_some())
        );
        assert!(
            chaos_schedule(7, 10, 4, false, true)
                .iter()
                .all(|e| e.worker.is_none())
        );
        assert!(
            chaos_schedule(3, 50, 4, false, false)
                .iter()
                .filter_map(|e| e.worker)
                .all(|w| w < 4)
        );
    }

    #[test]
    fn chaos_delays_are_seeded_and_bounded() {
        let mut a = ChaosRng(5);
        let mut b = ChaosRng(5);
        let max = Duration::from_millis(1000);
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
    fn featurised_runs_need_a_vector_model_and_consistent_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: LocalArgs,
        }
        let err = |args: &[&str]| {
            let mut v = vec!["t"];
            v.extend_from_slice(args);
            T::parse_from(v).a.validate().unwrap_err().to_string()
        };
        let f = ["--input", "x.csv", "--input-format", "features"];
        assert!(err(&f).contains("vector model"));
        assert!(err(&[&f[..], &["--model", "builtin:card"]].concat()).contains("vector model"));
        assert!(err(&["--input-format", "features"]).contains("needs --input"));
        assert!(err(&["--held-out"]).contains("features"));
        assert!(err(&["--input", "x.csv", "--time-from", "3"]).contains("features"));
        let gbt = [&f[..], &["--model", "builtin:ulb-gbt"]].concat();
        assert!(
            err(&[&gbt[..], &["--held-out", "--time-from", "3"]].concat()).contains("--held-out")
        );
        assert!(err(&[&gbt[..], &["--min-auprc", "1.5"]].concat()).contains("--min-auprc"));
        let mut v = vec!["t"];
        v.extend_from_slice(&gbt);
        v.extend_from_slice(&["--held-out", "--min-auprc", "0.78"]);
        assert!(T::parse_from(v).a.validate().is_ok());
    }

    #[test]
    fn the_model_card_of_a_builtin_vector_model_gives_its_split_and_auprc() {
        let c = ModelCard::load("builtin:ulb-gbt").unwrap().unwrap();
        assert_eq!(c.model_version, "ulb-gbt-1");
        assert_eq!(c.split_time_s, Some(145_249.0));
        assert_eq!(c.held_out_rows, Some(56_961));
        assert!(c.held_out_auprc.unwrap() > 0.7);
        assert!(ModelCard::load("builtin:card").unwrap().is_none());
        assert!(ModelCard::load("builtin:nope").is_err());
    }

    #[test]
    fn a_run_below_min_auprc_fails_with_the_reason() {
        let mut r = RunReport {
            count: 1,
            brokers: 1,
            workers: 1,
            worker_cpus: None,
            cpu_limit_note: None,
            elapsed_s: 1.0,
            tx_per_s: 1.0,
            total_cpu_s: 1.0,
            cpu_per_tx_us: 1.0,
            cores: 1,
            efficiency: 1.0,
            roles: vec![],
            chaos_kills: vec![],
            audit: AuditReport {
                produced: 1,
                transactions_stored: 1,
                decisions: 1,
                decided_once: 1,
                ..AuditReport::default()
            },
            data_dir: String::new(),
            model_card: None,
            min_auprc: Some(0.78),
        };
        assert!(r.audit.passed(), "{:?}", r.audit.failures());
        assert!(r.failures().iter().any(|f| f.contains("no AUPRC")));
        r.audit.auprc = Some(0.0017);
        assert!(r.failures().iter().any(|f| f.contains("below --min-auprc")));
        r.audit.auprc = Some(0.79);
        assert!(r.passed(), "{:?}", r.failures());
        r.min_auprc = None;
        r.audit.auprc = None;
        assert!(r.passed());
    }

    #[test]
    fn invalid_local_arguments_are_rejected_before_anything_starts() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: LocalArgs,
        }
        assert!(T::parse_from(["t", "--count", "0"]).a.validate().is_err());
        assert!(T::parse_from(["t", "--workers", "0"]).a.validate().is_err());
        assert!(T::parse_from(["t", "--brokers", "2"]).a.validate().is_err());
        assert!(
            T::parse_from(["t", "--chaos", "--chaos-kill-interval-ms", "100"])
                .a
                .validate()
                .is_err()
        );
        assert!(T::try_parse_from(["t", "--chaos-kill-interval-ms", "3000"]).is_err());
        assert!(
            T::parse_from(["t", "--progress", "sometimes"])
                .a
                .validate()
                .is_err()
        );
        let ok = T::parse_from(["t"]).a;
        assert!(ok.validate().is_ok());
        assert_eq!(ok.brokers, 3);
        assert!(
            T::parse_from([
                "t",
                "--brokers",
                "5",
                "--chaos",
                "--chaos-kill-interval-ms",
                "3000"
            ])
            .a
            .validate()
            .is_ok()
        );
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
