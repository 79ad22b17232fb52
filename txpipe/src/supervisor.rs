//! Supervised child processes of a local run: start, sample, kill, restart, CPU quotas.
//!
//! [`Proc`] is one child process (a service binary with a fixed command line, output appended
//! to `<dir>/<role>.log`), sampled for CPU and peak RSS over every incarnation; local mode and
//! the benchmarks ([`crate::bench`]) use it. [`Supervisor`] holds every process of a local run
//! ([`crate::local`]): the broker replicas (a [`BrokerCluster`]), the workers (each in its own
//! cgroup with a CPU quota where the machine allows it, see [`crate::cgroup`]) and the
//! producer. It restarts a process that exits unexpectedly, as a Deployment or StatefulSet
//! would, and carries out the kills and restarts the [chaos schedule](crate::chaos) decides
//! (a [`Target`] names the process).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::cgroup::CpuLimiter;
use crate::chaos::Target;
use crate::cluster::BrokerCluster;
use crate::procstat::{self, ProcSample};

/// CPU and memory of one role over the run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RoleUsage {
    /// Role name ("broker-0", "worker-0", "producer").
    pub name: String,
    /// CPU seconds (user + system), summed over restarts.
    pub cpu_s: f64,
    /// Peak RSS of any incarnation, MiB.
    pub peak_rss_mib: f64,
    /// Times the process was (re)started.
    pub starts: u32,
}

/// A supervised child process: started, sampled (CPU, RSS), killed and restarted with the
/// same arguments; output appended to `<dir>/<role>.log`.
pub(crate) struct Proc {
    pub(crate) role: String,
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
    pub(crate) fn new(role: &str, exe: PathBuf, args: Vec<String>, dir: &Path) -> Self {
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

    /// Appends `args` to the command line (before the first start).
    pub(crate) fn push_args(&mut self, args: impl IntoIterator<Item = String>) {
        self.args.extend(args);
    }

    /// Starts the process; returns its pid.
    pub(crate) fn start(&mut self) -> Result<u32> {
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

    /// True while a started process has not been seen to exit.
    pub(crate) fn running(&self) -> bool {
        self.child.is_some()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn sample(&mut self) {
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
    pub(crate) fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.retire();
        Some(st)
    }

    fn retire(&mut self) {
        self.cpu_done += self.last.cpu;
        self.last = ProcSample::default();
        self.child = None;
    }

    /// SIGKILL, and reap.
    pub(crate) async fn kill9(&mut self) {
        self.sample();
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill().await;
        }
        self.retire();
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL.
    pub(crate) async fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
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

    /// CPU (over every incarnation so far), peak RSS and starts.
    pub(crate) fn finish_usage(&self) -> RoleUsage {
        let mut u = self.usage.clone();
        u.cpu_s = (self.cpu_done + self.last.cpu).as_secs_f64();
        u
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

/// A loopback port that was free a moment ago, below the kernel's ephemeral port range.
///
/// A broker killed by the chaos schedule is restarted on the same ports. A port from the
/// ephemeral range (what binding port 0 gives) can meanwhile be taken as the local port of an
/// outgoing connection, for as long as that connection lives, and the restart then fails with
/// "address in use". Ports below the range are never handed out that way, so the search starts
/// at a seeded place in `10000..` up to the range's first port (`/proc/sys/net/ipv4/
/// ip_local_port_range`; 32768 when unreadable) and binds port 0 only when none is free.
pub(crate) fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(65_535);
    if high > LOW + 100 {
        let span = high - LOW;
        // Seeded by the process id and the clock, so concurrent runs start apart.
        let seed = std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        let _ = NEXT.compare_exchange(0, seed % span + 1, Ordering::Relaxed, Ordering::Relaxed);
        for _ in 0..512 {
            let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % span;
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return Ok(port as u16);
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(l.local_addr()?.port())
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

/// CPU time (user + system) of every child process this process has waited for
/// (getrusage RUSAGE_CHILDREN); zero when unavailable.
pub fn children_cpu() -> Duration {
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

/// Every process of a local run (see the module docs).
pub(crate) struct Supervisor {
    /// The broker replicas.
    pub cluster: BrokerCluster,
    /// The workers (role `worker-<i>`).
    pub workers: Vec<Proc>,
    /// The producer.
    pub producer: Proc,
    worker_cpus: f64,
    limiter: Option<CpuLimiter>,
    cpu_limit_note: Option<String>,
}

impl Supervisor {
    /// Laid out, nothing started. `worker_cpus` is the CPU quota per worker (0 = none).
    pub fn new(
        cluster: BrokerCluster,
        workers: Vec<Proc>,
        producer: Proc,
        worker_cpus: f64,
    ) -> Self {
        Self {
            cluster,
            workers,
            producer,
            worker_cpus,
            limiter: None,
            cpu_limit_note: None,
        }
    }

    /// Starts the broker replicas and waits (up to 90 s) until they serve, then sets up the
    /// CPU quota (cgroup `txpipe-<run_id>`) and starts the workers. `dir` is for messages.
    /// Errors: a process cannot be started, or the brokers do not serve in time.
    pub async fn start_services(&mut self, run_id: &str, dir: &Path) -> Result<()> {
        self.cluster.start_all()?;
        eprintln!(
            "txpipe: {} broker replica(s) at {}; data and logs in {}",
            self.cluster.nodes.len(),
            self.cluster.client_list(),
            dir.display()
        );
        self.cluster.wait_ready(Duration::from_secs(90)).await?;
        if self.worker_cpus > 0.0 {
            match CpuLimiter::new(run_id) {
                Ok(l) => {
                    eprintln!(
                        "txpipe: each worker limited to {} CPU ({})",
                        self.worker_cpus,
                        l.describe()
                    );
                    self.limiter = Some(l);
                }
                Err(why) => {
                    eprintln!(
                        "txpipe: cannot limit worker CPU ({why}); workers run without a quota"
                    );
                    self.cpu_limit_note = Some(why);
                }
            }
        }
        for i in 0..self.workers.len() {
            self.start_worker(i)?;
        }
        Ok(())
    }

    /// Starts the producer.
    pub fn start_producer(&mut self) -> Result<()> {
        self.producer.start().map(drop)
    }

    /// Starts worker `i` and puts it in its cgroup.
    fn start_worker(&mut self, i: usize) -> Result<()> {
        let w = &mut self.workers[i];
        let pid = w.start()?;
        if let Some(l) = self.limiter.as_mut()
            && let Err(e) = l.limit(&w.role, pid, self.worker_cpus)
        {
            eprintln!("txpipe: cannot limit {} CPU: {e}", w.role);
            self.cpu_limit_note = Some(e);
        }
        Ok(())
    }

    /// Why the worker CPU quota is not (fully) applied, if it is not.
    pub fn cpu_limit_note(&self) -> Option<&str> {
        self.cpu_limit_note.as_deref()
    }

    /// Samples CPU and RSS of every running process.
    pub fn sample(&mut self) {
        self.cluster.sample();
        self.producer.sample();
        for w in &mut self.workers {
            w.sample();
        }
    }

    /// The producer's exit status, once it has exited (reported once).
    pub fn producer_exited(&mut self) -> Option<ExitStatus> {
        self.producer.try_exited()
    }

    /// Restarts every worker and broker that exited on its own (a broker on its data
    /// directory), except broker `down` (killed on purpose, restarted by the chaos schedule).
    pub fn restart_exited(&mut self, down: Option<usize>) -> Result<()> {
        for i in 0..self.workers.len() {
            if let Some(st) = self.workers[i].try_exited() {
                eprintln!("txpipe: {} exited ({st}); restarting", self.workers[i].role);
                self.start_worker(i)?;
            }
        }
        for (i, n) in self.cluster.nodes.iter_mut().enumerate() {
            if down == Some(i) {
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
        Ok(())
    }

    fn proc(&self, t: Target) -> &Proc {
        match t {
            Target::Broker(i) => &self.cluster.nodes[i].proc,
            Target::Worker(i) => &self.workers[i as usize],
            Target::Producer => &self.producer,
        }
    }

    /// SIGKILL `t`.
    pub async fn kill(&mut self, t: Target) {
        match t {
            Target::Broker(i) => self.cluster.nodes[i].proc.kill9().await,
            Target::Worker(i) => self.workers[i as usize].kill9().await,
            Target::Producer => self.producer.kill9().await,
        }
    }

    /// Starts `t` again with its command line (a worker in its cgroup).
    pub fn restart(&mut self, t: Target) -> Result<()> {
        match t {
            Target::Broker(i) => self.cluster.nodes[i].proc.start().map(drop),
            Target::Worker(i) => self.start_worker(i as usize),
            Target::Producer => self.start_producer(),
        }
    }

    /// The last `lines` lines of `t`'s log.
    pub fn log_tail(&self, t: Target, lines: usize) -> String {
        self.proc(t).log_tail(lines)
    }

    /// Stops every worker (SIGTERM, SIGKILL after `grace`), one after the other.
    pub async fn stop_workers(&mut self, grace: Duration) {
        for w in &mut self.workers {
            w.stop(grace).await;
        }
    }

    /// Stops every broker replica (SIGTERM, SIGKILL after `grace`).
    pub async fn stop_brokers(&mut self, grace: Duration) {
        self.cluster.stop_all(grace).await;
    }

    /// CPU, peak RSS and starts of every role: brokers, producer, workers.
    pub fn usage(&self) -> Vec<RoleUsage> {
        let brokers = self.cluster.nodes.iter().map(|n| &n.proc);
        brokers
            .chain(std::iter::once(&self.producer))
            .chain(&self.workers)
            .map(Proc::finish_usage)
            .collect()
    }
}
