//! Local mode: the whole pipeline on one machine, as separate processes.
//!
//! [`run_local`] starts `brokers` broker replicas (every stream is replicated to all of them),
//! `workers` workers (each in its own cgroup with a `worker_cpus` CPU quota where the machine
//! allows it) and the producer, all as child processes (the `txpipe-broker`, `txpipe-worker`
//! and `txpipe-producer` binaries), shows progress, waits until every produced transaction is
//! resolved, runs the [audit](crate::audit), stops everything and returns the
//! [`RunReport`].
//!
//! Unless `--insecure`, every connection of the run is mutual TLS: the run's certificates
//! ([`crate::certs`], a throw-away CA and one certificate per process in `<data dir>/tls/`)
//! are issued before anything starts, each process is given its own, and the audit and the
//! supervision loop's probes present the reader's.
//!
//! It is built from parts, each in its own module:
//! - [`crate::supervisor`]: the processes: start, sample, restart on an unexpected exit, CPU
//!   quotas, kill and restart on the chaos schedule's behalf;
//! - [`crate::chaos`]: the chaos schedule, a pure state machine that turns the time, the
//!   progress and the replicas' view into kill and restart actions;
//! - [`crate::progress`]: the progress bar or log lines;
//! - [`crate::report`]: the report and its text.
//!
//! This module holds the settings ([`LocalArgs`]), lays out the run (binaries, data directory,
//! command lines) and runs the supervision loop: every 100 ms it samples the processes,
//! restarts crashed ones, reads the `transactions` stream's statistics, steps the chaos
//! machine and carries out its actions, until the producer has finished and every
//! transaction it stored is resolved.
//!
//! The run's length comes from the producer: it writes its summary
//! (`<data dir>/producer-summary.json`, [`txpipe_client::summary::Summary`]) once before it
//! sends anything, with `planned` (its `--count`, or the input file's data rows up to
//! `--count`), which becomes the progress bar's length and the base of the chaos schedule's
//! progress points; and again at its end, whose `transactions_acked` is what must be resolved.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use txpipe_client::broker::v1::StreamInfo;
use txpipe_client::streams;
use txpipe_client::summary::Summary;
use txpipe_client::tls::TlsOptions;

use crate::audit::{self, AuditReport};
use crate::certs::{RunCerts, tls_flags};
use crate::chaos::{Action, Chaos, ChaosConfig, ChaosKill, ClusterView, Leader, Tick};
use crate::cluster::{BrokerCluster, NodeView, leader_in};
use crate::progress::Progress;
use crate::report::{Measured, ModelCard, RunReport};
use crate::supervisor::{Proc, Supervisor, children_cpu, free_port, service_binary};

/// The supervision tick.
const TICK: Duration = Duration::from_millis(100);

/// Grace of SIGTERM before SIGKILL when the run stops its processes.
const STOP_GRACE: Duration = Duration::from_secs(30);

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
    /// With --chaos: kill -9 the producer this many times, at seeded points of the stored
    /// transactions (10-80%), restarting it at once with the same command line; it resumes
    /// after its last acknowledged transaction (none with --chaos-workers-only or
    /// --chaos-broker-only).
    #[arg(long, env = "TXPIPE_CHAOS_PRODUCER_KILLS", default_value_t = 2)]
    pub chaos_producer_kills: u32,
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
    /// Run plaintext and unauthenticated (for benchmarks). By default every connection of the
    /// run is mutual TLS with a throw-away CA and one certificate per process, in
    /// `<data dir>/tls/` (see docs/security.md).
    #[arg(long, env = "TXPIPE_INSECURE")]
    pub insecure: bool,
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

    /// The chaos machine's settings.
    fn chaos_config(&self) -> ChaosConfig {
        ChaosConfig {
            enabled: self.chaos,
            seed: self.chaos_seed,
            events: self.chaos_events,
            workers: self.workers,
            brokers: self.brokers as usize,
            workers_only: self.chaos_workers_only,
            broker_only: self.chaos_broker_only,
            interval: Duration::from_millis(self.chaos_kill_interval_ms),
            max_restart_delay: Duration::from_millis(self.chaos_restart_delay_ms),
            producer_kills: if self.chaos_workers_only || self.chaos_broker_only {
                0
            } else {
                self.chaos_producer_kills
            },
        }
    }

    /// Command line of worker `i`, with its TLS files (`None`: plaintext).
    fn worker_command(&self, brokers: &str, i: u32, tls: Option<&TlsOptions>) -> Vec<String> {
        let mut a = vec![
            format!("--brokers={brokers}"),
            format!("--name=worker-{i}"),
            format!("--admin-listen=127.0.0.1:{}", free_port().unwrap_or(0)),
        ];
        if let Some(m) = &self.model {
            a.push(format!("--model={m}"));
        }
        if let Some(t) = self.review_threshold {
            a.push(format!("--review-threshold={t}"));
        }
        if let Some(t) = self.decline_threshold {
            a.push(format!("--decline-threshold={t}"));
        }
        a.extend(tls.map(tls_flags).unwrap_or_default());
        a.extend(self.worker_args.iter().cloned());
        a
    }

    /// Command line of the producer, writing its summary to `summary`, with its TLS files
    /// (`None`: plaintext).
    fn producer_command(
        &self,
        brokers: &str,
        summary: &Path,
        tls: Option<&TlsOptions>,
    ) -> Vec<String> {
        let mut a = vec![
            format!("--brokers={brokers}"),
            format!("--count={}", self.count),
            format!("--seed={}", self.seed),
            format!("--rate={}", self.rate),
            "--progress=never".to_string(),
            format!("--summary-json={}", summary.display()),
        ];
        if let Some(p) = &self.input {
            a.push(format!("--input={}", p.display()));
        }
        if let Some(f) = &self.input_format {
            a.push(format!("--input-format={f}"));
        }
        if let Some(t) = self.time_from {
            a.push(format!("--time-from={t}"));
        }
        if let Some(t) = self.time_until {
            a.push(format!("--time-until={t}"));
        }
        a.extend(tls.map(tls_flags).unwrap_or_default());
        a.extend(self.producer_args.iter().cloned());
        a
    }

    /// The model's card, and `--held-out` turned into `--time-from` (the model's split
    /// time). Errors: unreadable model; `--held-out` with a model that records no split.
    fn resolve_model(&mut self) -> Result<Option<ModelCard>> {
        let card = match &self.model {
            Some(m) => ModelCard::load(m)?,
            None => None,
        };
        if self.held_out {
            let Some(t) = card.as_ref().and_then(|c| c.split_time_s) else {
                bail!("--held-out: the model records no split time (training.split.split_time_s)");
            };
            self.time_from = Some(t);
        }
        Ok(card)
    }
}

/// Where a run's binaries and files are.
struct Layout {
    broker: PathBuf,
    worker: PathBuf,
    producer: PathBuf,
    /// `<unix seconds>-<pid>`: names the temporary directory and the cgroup.
    run_id: String,
    /// Data and logs.
    dir: PathBuf,
    /// `dir` is a temporary directory of this run.
    temp: bool,
}

impl Layout {
    /// Finds the service binaries (in `--bin-dir` or beside `exe`) and creates the data
    /// directory. Errors: a binary is missing, or the directory cannot be created.
    fn new(args: &LocalArgs, exe: &Path) -> Result<Self> {
        let bin_dir = match &args.bin_dir {
            Some(d) => d.clone(),
            None => exe.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
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
        let layout = Self {
            broker: service_binary(&bin_dir, "broker")?,
            worker: service_binary(&bin_dir, "worker")?,
            producer: service_binary(&bin_dir, "producer")?,
            run_id,
            dir,
            temp,
        };
        std::fs::create_dir_all(&layout.dir)
            .with_context(|| format!("creating {}", layout.dir.display()))?;
        Ok(layout)
    }

    /// The producer's summary file.
    fn summary(&self) -> PathBuf {
        self.dir.join("producer-summary.json")
    }

    /// The run's certificates (`<dir>/tls`).
    fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// Every process of the run, laid out (ports picked, and without `--insecure` the run's
    /// certificates issued), nothing started. Errors: no free port; a certificate cannot be
    /// written.
    fn supervisor(&self, args: &LocalArgs) -> Result<Supervisor> {
        let mut cluster = BrokerCluster::new(
            &self.broker,
            args.brokers as usize,
            &self.dir,
            &args.broker_args,
        )?;
        let certs = if args.insecure {
            None
        } else {
            let certs = RunCerts::issue(&self.tls_dir(), &cluster.broker_hosts(), args.workers)
                .context("issuing the run's certificates")?;
            cluster.use_tls(&certs)?;
            Some(certs)
        };
        let brokers = cluster.client_list();
        let keys = crate::secrets::pan_keyring(&self.dir)?;
        let workers = (0..args.workers)
            .map(|i| {
                let tls = certs.as_ref().map(|c| c.worker(i));
                let a = crate::secrets::with_pan_key(
                    args.worker_command(&brokers, i, tls.as_ref()),
                    &keys,
                );
                Proc::new(&format!("worker-{i}"), self.worker.clone(), a, &self.dir)
            })
            .collect();
        let tls = certs.as_ref().map(RunCerts::producer);
        let a = crate::secrets::with_pan_key(
            args.producer_command(&brokers, &self.summary(), tls.as_ref()),
            &keys,
        );
        let producer = Proc::new("producer", self.producer.clone(), a, &self.dir);
        Ok(Supervisor::new(
            cluster,
            workers,
            producer,
            args.worker_cpus,
        ))
    }
}

/// Runs the pipeline locally. `exe` is this binary; the services are the `txpipe-broker`,
/// `txpipe-worker` and `txpipe-producer` binaries beside it (or in `--bin-dir`).
///
/// The steps: check the arguments; lay out the run (binaries, data directory, ports,
/// certificates); start the brokers and workers; start the producer and supervise until
/// every transaction is resolved; stop the workers, audit, stop the brokers; build the
/// report; write it (`--report-json`) and remove a passing run's temporary directory.
///
/// Errors: invalid arguments; a binary is missing; a process cannot be started or restarted;
/// the producer fails; the run stalls; the audit cannot read the streams.
pub async fn run_local(mut args: LocalArgs, exe: PathBuf) -> Result<RunReport> {
    args.validate()?;
    let model_card = args.resolve_model()?;
    let layout = Layout::new(&args, &exe)?;
    let mut sup = layout.supervisor(&args)?;
    announce_security(&args, &layout);
    let outcome = supervise(&args, &layout, &mut sup).await?;
    let audit = audit_and_stop(&mut sup).await?;
    let report = build_report(&args, &layout, &sup, outcome, audit, model_card);
    drop(sup); // removes the cgroups, now that every process has exited
    if let Some(p) = &args.report_json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if report.audit.passed() && layout.temp && !args.keep_data {
        let _ = std::fs::remove_dir_all(&layout.dir);
    }
    Ok(report)
}

/// Says on stderr whether the run is mutual TLS (and where its certificates are) or
/// plaintext.
fn announce_security(args: &LocalArgs, layout: &Layout) {
    if args.insecure {
        eprintln!("txpipe: --insecure: plaintext and unauthenticated connections");
    } else {
        eprintln!(
            "txpipe: mutual TLS; CA and certificates in {} (reader.pem and reader-key.pem for grpcurl)",
            layout.tls_dir().display()
        );
    }
}

/// Starts the brokers and workers, then the producer, and supervises until every transaction
/// is resolved (see [`Monitor`]).
async fn supervise(args: &LocalArgs, layout: &Layout, sup: &mut Supervisor) -> Result<Outcome> {
    sup.start_services(&layout.run_id, &layout.dir).await?;
    // A summary left by an earlier run in the same --data-dir must not be taken for this one.
    let _ = std::fs::remove_file(layout.summary());
    let started = Instant::now();
    sup.start_producer()?;
    Monitor::new(args, layout.summary(), &layout.dir, started)
        .run(sup)
        .await
}

/// Stops the workers, audits the streams (over mutual TLS with the reader's certificate, when
/// the run uses TLS) and stops the brokers.
async fn audit_and_stop(sup: &mut Supervisor) -> Result<AuditReport> {
    sup.stop_workers(STOP_GRACE).await;
    let tls = sup.cluster.client_tls().cloned();
    let audit = audit::run_audit_cluster(&sup.cluster.client_addrs(), STOP_GRACE, tls)
        .await
        .context("running the audit")?;
    sup.stop_brokers(STOP_GRACE).await;
    Ok(audit)
}

/// The run's report: its settings, what the supervisor measured, the audit.
fn build_report(
    args: &LocalArgs,
    layout: &Layout,
    sup: &Supervisor,
    outcome: Outcome,
    audit: AuditReport,
    model_card: Option<ModelCard>,
) -> RunReport {
    let cpu_limit_note = sup.cpu_limit_note().map(str::to_string);
    RunReport {
        // Requested; for a file, what the producer's rows came to.
        count: if args.input.is_some() {
            outcome.resolved
        } else {
            args.count
        },
        brokers: args.brokers,
        workers: args.workers,
        tls: !args.insecure,
        worker_cpus: (cpu_limit_note.is_none() && args.worker_cpus > 0.0)
            .then_some(args.worker_cpus),
        cpu_limit_note,
        roles: sup.usage(),
        chaos_kills: outcome.kills,
        audit,
        data_dir: layout.dir.display().to_string(),
        model_card,
        min_auprc: args.min_auprc,
        ..RunReport::default()
    }
    .with_measured(Measured {
        resolved: outcome.resolved,
        elapsed: outcome.elapsed,
        total_cpu: children_cpu(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// What the supervision loop ends with.
struct Outcome {
    /// Transactions resolved.
    resolved: u64,
    /// Producer start to the last one resolved.
    elapsed: Duration,
    /// The chaos kills, finished.
    kills: Vec<ChaosKill>,
}

/// The supervision loop's state (see the module docs).
struct Monitor<'a> {
    args: &'a LocalArgs,
    summary: PathBuf,
    dir: &'a Path,
    started: Instant,
    progress: Progress,
    chaos: Chaos,
    kills: Vec<ChaosKill>,
    /// The producer's planned count has been read.
    planned_known: bool,
    /// The producer has exited successfully.
    producer_done: bool,
    /// Transactions stored (`transactions` end offset) at the last read.
    stored: u64,
    /// Take [`Self::target`] from the next read of the stream (see `watch_producer`).
    target_from_stream: bool,
    /// Transactions that must be resolved: `--count` until the producer's final summary.
    target: u64,
    resolved: u64,
    last_progress: (u64, Instant),
}

impl<'a> Monitor<'a> {
    fn new(args: &'a LocalArgs, summary: PathBuf, dir: &'a Path, started: Instant) -> Self {
        Self {
            args,
            summary,
            dir,
            started,
            progress: Progress::new(&args.progress, args.count, started),
            chaos: Chaos::new(&args.chaos_config()),
            kills: Vec::new(),
            planned_known: false,
            producer_done: false,
            stored: 0,
            target_from_stream: false,
            target: args.count,
            resolved: 0,
            last_progress: (0, Instant::now()),
        }
    }

    /// Supervises until the run is complete. Errors: the producer fails, the run stalls,
    /// a process cannot be restarted, or a killed broker does not rejoin.
    async fn run(mut self, sup: &mut Supervisor) -> Result<Outcome> {
        loop {
            tokio::time::sleep(TICK).await;
            sup.sample();
            self.watch_producer(sup)?;
            sup.restart_exited(self.chaos.down_broker())?;
            let info = sup
                .cluster
                .stream_info(streams::TRANSACTIONS, Duration::from_millis(500))
                .await
                .ok(); // None while a failover is under way
            if let Some(info) = &info {
                self.note_progress(info)?;
            }
            self.step_chaos(sup, info.is_some()).await?;
            if info.is_some_and(|i| self.complete(&i)) {
                self.progress.finish();
                return Ok(Outcome {
                    resolved: self.resolved,
                    elapsed: self.started.elapsed(),
                    kills: self.kills,
                });
            }
        }
    }

    /// Reads the producer's planned count once it is written, and its totals once it has
    /// exited. Errors: the producer failed, or its final summary is unreadable.
    fn watch_producer(&mut self, sup: &mut Supervisor) -> Result<()> {
        if !self.planned_known
            && let Ok(s) = Summary::read(&self.summary)
            && s.planned > 0
        {
            self.planned_known = true;
            self.progress.set_len(s.planned);
        }
        if self.producer_done {
            return Ok(());
        }
        let Some(st) = sup.producer_exited() else {
            return Ok(());
        };
        if !st.success() {
            bail!(
                "producer failed ({st}); last log lines:\n{}",
                sup.producer.log_tail(30)
            );
        }
        self.producer_done = true;
        let s = Summary::read(&self.summary).context("reading the producer's final summary")?;
        if s.transactions_resumed_from == 0 {
            self.target = s.transactions_acked;
        } else {
            // A chaos-killed producer: earlier processes stored part of the run. Every
            // transaction is acknowledged now, so the stream's end offset at the next read
            // is the run's total.
            self.target_from_stream = true;
        }
        Ok(())
    }

    /// Shows the progress; errors when nothing was resolved for `--stall-timeout-s`.
    fn note_progress(&mut self, info: &StreamInfo) -> Result<()> {
        self.resolved = info.acked_total + info.dead_lettered_total;
        self.stored = info.end_offset;
        if std::mem::take(&mut self.target_from_stream) {
            self.target = info.end_offset;
        }
        self.progress.show(self.resolved, info);
        if self.resolved > self.last_progress.0 {
            self.last_progress = (self.resolved, Instant::now());
        } else if self.last_progress.1.elapsed() > Duration::from_secs(self.args.stall_timeout_s) {
            bail!(
                "no progress for {} s ({} of {} resolved); logs in {}",
                self.args.stall_timeout_s,
                self.resolved,
                self.target,
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Steps the chaos machine (with the replicas' view when it asks for one) and carries
    /// out its actions. `fresh`: this tick's statistics were read.
    async fn step_chaos(&mut self, sup: &mut Supervisor, fresh: bool) -> Result<()> {
        let now = self.started.elapsed();
        let resolved = fresh.then_some(self.resolved);
        let total = self.progress.len();
        let view = if self.chaos.needs_cluster(now, resolved, total) {
            Some(chaos_view(&sup.cluster.views().await))
        } else {
            None
        };
        let tick = Tick {
            now,
            resolved,
            total,
            stored: fresh.then_some(self.stored),
            producer_running: !self.producer_done,
            cluster: view.as_ref(),
        };
        for action in self.chaos.step(&tick) {
            match action {
                Action::Kill(t) => sup.kill(t).await,
                Action::Restart(t) => sup.restart(t)?,
                Action::Began(k) => self.progress.say(&format!(
                    "chaos: killed {} (leader of {})",
                    k.target,
                    k.leader_of.join(", ")
                )),
                Action::Finished(k) => {
                    self.progress.say(&format!("chaos: {}", k.describe()));
                    self.kills.push(k);
                }
                Action::RejoinTimeout(t) => bail!(
                    "{} did not rejoin within {:?} of its kill; last log lines:\n{}",
                    t.role(),
                    crate::chaos::REJOIN_DEADLINE,
                    sup.log_tail(t, 30)
                ),
            }
        }
        Ok(())
    }

    /// The producer has finished, every transaction it stored is resolved, and no chaos
    /// kill is in progress.
    fn complete(&self, info: &StreamInfo) -> bool {
        self.chaos.idle()
            && self.producer_done
            && info.end_offset >= self.target
            && info.pending == 0
            && self.resolved >= self.target
    }
}

/// The chaos machine's view of the replicas: the leader of `transactions` and who has
/// rejoined (running, ready, knowing a leader of every stream).
fn chaos_view(views: &[Option<NodeView>]) -> ClusterView {
    ClusterView {
        leader: leader_in(views, streams::TRANSACTIONS).map(|(node, term)| Leader {
            node,
            term,
            leads: views[node]
                .as_ref()
                .map(NodeView::leads)
                .unwrap_or_default(),
        }),
        rejoined: views
            .iter()
            .map(|v| v.as_ref().is_some_and(NodeView::knows_all_leaders))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_chaos_flags_and_command_lines_follow_the_arguments() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: LocalArgs,
        }
        let a = T::parse_from([
            "t",
            "--chaos",
            "--chaos-kill-interval-ms=3000",
            "--chaos-broker-only",
            "--input=x.csv",
            "--producer-arg=--batch-size=10",
        ])
        .a;
        let c = a.chaos_config();
        assert!(c.enabled && c.broker_only && !c.workers_only);
        assert_eq!((c.brokers, c.workers), (3, 4));
        assert_eq!(c.interval, Duration::from_secs(3));
        let p = a.producer_command("127.0.0.1:1", Path::new("/d/s.json"), None);
        assert!(p.contains(&"--summary-json=/d/s.json".to_string()));
        assert!(p.contains(&"--input=x.csv".to_string()));
        assert_eq!(p.last().unwrap(), "--batch-size=10");
        let w = a.worker_command("127.0.0.1:1", 2, None);
        assert!(w.contains(&"--name=worker-2".to_string()));
        assert!(!w.iter().any(|f| f.starts_with("--tls")));
        let tls = TlsOptions {
            ca: "/t/ca.pem".into(),
            cert: "/t/worker-2.pem".into(),
            key: "/t/worker-2-key.pem".into(),
        };
        let w = a.worker_command("127.0.0.1:1", 2, Some(&tls));
        assert!(w.contains(&"--tls-cert-file=/t/worker-2.pem".to_string()));
        let p = a.producer_command("127.0.0.1:1", Path::new("/d/s.json"), Some(&tls));
        assert!(p.contains(&"--tls-ca-file=/t/ca.pem".to_string()));
        assert_eq!(
            p.last().unwrap(),
            "--batch-size=10",
            "extra arguments come last"
        );
    }
}
