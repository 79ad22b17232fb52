//! Local mode: the whole pipeline on one machine, as separate processes.
//!
//! [`run_local`] starts one broker, `workers` workers (each in its own cgroup with a
//! `worker_cpus` CPU quota where the machine allows it) and the producer, all as child
//! processes of this binary (`txpipe broker|worker|producer ...`), shows progress, waits until
//! every produced transaction is resolved, runs the [audit](crate::audit), stops everything and
//! returns the [`RunReport`]. With chaos enabled it kills (SIGKILL) the broker or a worker at
//! seeded points of the run's progress and restarts it on the same data directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use txpipe_client::broker::v1::broker_client::BrokerClient;
use txpipe_client::streams;

use crate::audit::{self, AuditReport};
use crate::cgroup::CpuLimiter;
use crate::procstat::{self, ProcSample};

/// Settings of a local run (see `txpipe run --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// Transactions to generate.
    #[arg(long, env = "TXPIPE_COUNT", default_value_t = 2_000_000)]
    pub count: u64,
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
    /// Kill the broker or a worker (SIGKILL) at seeded points of the run and restart it.
    #[arg(long, env = "TXPIPE_CHAOS")]
    pub chaos: bool,
    /// Number of chaos kills over the run.
    #[arg(long, env = "TXPIPE_CHAOS_EVENTS", default_value_t = 6)]
    pub chaos_events: u32,
    /// Seed of the chaos schedule.
    #[arg(long, env = "TXPIPE_CHAOS_SEED", default_value_t = 1)]
    pub chaos_seed: u64,
    /// Only kill workers in chaos mode (never the broker).
    #[arg(long, env = "TXPIPE_CHAOS_WORKERS_ONLY")]
    pub chaos_workers_only: bool,
    /// Only kill the broker in chaos mode (never a worker).
    #[arg(
        long,
        env = "TXPIPE_CHAOS_BROKER_ONLY",
        conflicts_with = "chaos_workers_only"
    )]
    pub chaos_broker_only: bool,
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
    /// Extra arguments passed to the broker.
    #[arg(long = "broker-arg", allow_hyphen_values = true)]
    pub broker_args: Vec<String>,
    /// Directory holding txpipe-broker, txpipe-worker and txpipe-producer (default: the
    /// directory of this binary, e.g. target/release).
    #[arg(long, env = "TXPIPE_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Extra arguments passed to the producer.
    #[arg(long = "producer-arg", allow_hyphen_values = true)]
    pub producer_args: Vec<String>,
}

impl LocalArgs {
    /// Checks cross-field rules before anything starts.
    pub fn validate(&self) -> Result<()> {
        if self.count == 0 {
            bail!("--count must be at least 1");
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
        if !matches!(self.progress.as_str(), "auto" | "always" | "never") {
            bail!(
                "--progress must be auto, always or never, got {:?}",
                self.progress
            );
        }
        Ok(())
    }
}

/// CPU and memory of one role over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoleUsage {
    /// Role name ("broker", "worker-0", "producer").
    pub name: String,
    /// CPU seconds (user + system), summed over restarts.
    pub cpu_s: f64,
    /// Peak RSS of any incarnation, MiB.
    pub peak_rss_mib: f64,
    /// Times the process was (re)started.
    pub starts: u32,
}

/// Everything a local run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Transactions requested.
    pub count: u64,
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
    /// Per-process CPU and memory.
    pub roles: Vec<RoleUsage>,
    /// Chaos kills performed.
    pub chaos_kills: Vec<String>,
    /// The audit.
    pub audit: AuditReport,
    /// Where data and logs are.
    pub data_dir: String,
}

/// A supervised child process.
struct Proc {
    role: String,
    exe: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    pid: u32,
    usage: RoleUsage,
    last: ProcSample,
    cpu_done: Duration,
}

impl Proc {
    fn new(role: &str, exe: PathBuf, args: Vec<String>, dir: &Path) -> Self {
        Self {
            role: role.to_string(),
            exe,
            args,
            log: dir.join(format!("{role}.log")),
            child: None,
            pid: 0,
            usage: RoleUsage {
                name: role.to_string(),
                ..Default::default()
            },
            last: ProcSample::default(),
            cpu_done: Duration::ZERO,
        }
    }

    fn start(&mut self) -> Result<u32> {
        let exe = self.exe.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.role, exe.display()))?;
        self.pid = child.id().unwrap_or(0);
        self.child = Some(child);
        self.usage.starts += 1;
        self.last = ProcSample::default();
        Ok(self.pid)
    }

    fn sample(&mut self) {
        if self.child.is_some()
            && let Some(s) = procstat::sample(self.pid)
        {
            self.last = s;
            self.usage.peak_rss_mib = self
                .usage
                .peak_rss_mib
                .max(s.peak_rss_bytes as f64 / (1 << 20) as f64);
        }
    }

    /// Exit status if the process has exited.
    fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.retire();
        Some(st)
    }

    fn retire(&mut self) {
        self.cpu_done += self.last.cpu;
        self.last = ProcSample::default();
        self.child = None;
    }

    async fn kill9(&mut self) {
        self.sample();
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill().await;
        }
        self.retire();
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL.
    async fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.sample();
        let pid = self.pid;
        let c = self.child.as_mut()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let st = match tokio::time::timeout(grace, c.wait()).await {
            Ok(Ok(st)) => Some(st),
            _ => {
                let _ = c.kill().await;
                None
            }
        };
        self.retire();
        st
    }

    fn finish_usage(&mut self) -> RoleUsage {
        let mut u = self.usage.clone();
        u.cpu_s = (self.cpu_done + self.last.cpu).as_secs_f64();
        u
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

/// A loopback port that was free a moment ago (bind to port 0, read it, release it).
pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// A channel to `addr` if the broker there answers GetStream for `transactions` (it has
/// recovered and serves), else `None`.
pub(crate) async fn broker_answers(addr: &str) -> Option<Channel> {
    let ch = txpipe_client::connect::endpoint(addr)
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut c = BrokerClient::new(ch.clone());
    audit::stream_info(&mut c, streams::TRANSACTIONS)
        .await
        .ok()?;
    Some(ch)
}

/// Waits until the broker answers GetStream for `transactions`, or `deadline` passes.
async fn wait_ready(addr: &str, broker: &mut Proc, deadline: Duration) -> Result<Channel> {
    let began = Instant::now();
    loop {
        if let Some(st) = broker.try_exited() {
            bail!(
                "broker exited during start-up ({st}); last log lines:\n{}",
                broker.log_tail(30)
            );
        }
        if let Ok(ep) = txpipe_client::connect::endpoint(addr)
            && let Ok(ch) = ep.connect().await
        {
            let mut c = BrokerClient::new(ch.clone());
            if audit::stream_info(&mut c, streams::TRANSACTIONS)
                .await
                .is_ok()
            {
                return Ok(ch);
            }
        }
        if began.elapsed() > deadline {
            bail!(
                "broker not ready after {deadline:?}; last log lines:\n{}",
                broker.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    /// `None` = the broker, `Some(i)` = worker i.
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

/// Runs the pipeline locally. `exe` is this binary; the services are the `txpipe-broker`,
/// `txpipe-worker` and `txpipe-producer` binaries beside it (or in `--bin-dir`).
pub async fn run_local(args: LocalArgs, exe: PathBuf) -> Result<RunReport> {
    args.validate()?;
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
    let grpc_port = free_port()?;
    let addr = format!("http://127.0.0.1:{grpc_port}");
    let brokers = format!("127.0.0.1:{grpc_port}");

    let mut broker_args = vec![
        format!("--listen=127.0.0.1:{grpc_port}"),
        format!("--admin-listen=127.0.0.1:{}", free_port()?),
        format!("--data-dir={}", dir.join("broker-0").display()),
    ];
    broker_args.extend(args.broker_args.iter().cloned());
    let mut broker = Proc::new("broker", broker_exe, broker_args, &dir);
    broker.start()?;
    eprintln!("txpipe: data and logs in {}", dir.display());
    let channel = wait_ready(&addr, &mut broker, Duration::from_secs(60)).await?;
    let mut client = BrokerClient::new(channel.clone());

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
    producer_args.extend(args.producer_args.iter().cloned());
    let mut producer = Proc::new("producer", producer_exe, producer_args, &dir);
    let started = Instant::now();
    producer.start()?;

    let bar = progress_bar(&args.progress, args.count);
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
    let mut chaos_kills = Vec::new();
    let mut producer_done = false;
    let mut last_progress = (0u64, Instant::now());
    let mut last_log = Instant::now();
    let mut resolved;
    let mut target = args.count;
    let finished_at;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        broker.sample();
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
        // Unexpected exits: restart (a supervisor's job, like a Deployment's).
        for w in workers.iter_mut() {
            if let Some(st) = w.try_exited() {
                eprintln!("txpipe: {} exited ({st}); restarting", w.role);
                let pid = w.start()?;
                limit(&mut limiter, &mut cpu_limit_note, w, pid);
            }
        }
        if let Some(st) = broker.try_exited() {
            eprintln!("txpipe: broker exited ({st}); restarting on the same data directory");
            broker.start()?;
            wait_ready(&addr, &mut broker, Duration::from_secs(60)).await?;
        }
        let info = match audit::stream_info(&mut client, streams::TRANSACTIONS).await {
            Ok(i) => i,
            Err(_) => continue, // broker restarting
        };
        resolved = info.acked_total + info.dead_lettered_total;
        if let Some(b) = &bar {
            b.set_position(resolved.min(args.count));
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
                args.count,
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
        if let Some(ev) = schedule.last().cloned()
            && resolved as f64 >= ev.at_fraction * args.count as f64
        {
            schedule.pop();
            match ev.worker {
                None => {
                    chaos_kills.push(format!("broker at {resolved} resolved"));
                    broker.kill9().await;
                    broker.start()?;
                    wait_ready(&addr, &mut broker, Duration::from_secs(60)).await?;
                }
                Some(i) => {
                    let w = &mut workers[i as usize];
                    chaos_kills.push(format!("{} at {resolved} resolved", w.role));
                    w.kill9().await;
                    let pid = w.start()?;
                    limit(&mut limiter, &mut cpu_limit_note, w, pid);
                }
            }
            if let Some(b) = &bar {
                b.println(format!(
                    "chaos: killed {}",
                    chaos_kills.last().map(String::as_str).unwrap_or("")
                ));
            } else {
                eprintln!(
                    "txpipe: chaos: killed {}",
                    chaos_kills.last().map(String::as_str).unwrap_or("")
                );
            }
        }
        if producer_done && info.end_offset >= target && info.pending == 0 && resolved >= target {
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
    let audit = audit::run_audit(channel)
        .await
        .context("running the audit")?;
    broker.stop(Duration::from_secs(30)).await;
    roles.insert(0, broker.finish_usage());
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
        count: args.count,
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
        "== txpipe local run: {} transactions, {} workers ==",
        r.count, r.workers
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
        let _ = writeln!(
            s,
            "chaos: {} kills: {}",
            r.chaos_kills.len(),
            r.chaos_kills.join(", ")
        );
    }
    s.push_str(&audit::render(&r.audit));
    s
}

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
    fn invalid_local_arguments_are_rejected_before_anything_starts() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: LocalArgs,
        }
        assert!(T::parse_from(["t", "--count", "0"]).a.validate().is_err());
        assert!(T::parse_from(["t", "--workers", "0"]).a.validate().is_err());
        assert!(
            T::parse_from(["t", "--progress", "sometimes"])
                .a
                .validate()
                .is_err()
        );
        assert!(T::parse_from(["t"]).a.validate().is_ok());
    }
}
