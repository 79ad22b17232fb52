//! CPU quotas for local-mode workers through Linux cgroups.
//!
//! Each worker gets its own cgroup with a CFS bandwidth quota of `cpus` CPUs (0.5 by default,
//! the same limit as the worker containers and pods): `cpu.max = "50000 100000"` on cgroup v2,
//! `cpu.cfs_quota_us = 50000` / `cpu.cfs_period_us = 100000` on cgroup v1 (kernel
//! Documentation/scheduler/sched-bwc.rst). Where neither can be written (no permission, no cpu
//! controller), [`CpuLimiter::new`] says why and local mode runs the workers unlimited.

use std::path::{Path, PathBuf};

/// CFS period, microseconds (the kernel default).
pub const PERIOD_US: u64 = 100_000;

/// Which cgroup hierarchy is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Flavor {
    V2,
    V1,
}

/// A parent cgroup for one local-mode run; child cgroups per worker are created inside it and
/// everything is removed on drop.
#[derive(Debug)]
pub struct CpuLimiter {
    parent: PathBuf,
    flavor: Flavor,
    children: Vec<PathBuf>,
}

impl CpuLimiter {
    /// Creates `txpipe-<run_id>` under the writable cpu hierarchy. Errors with the reason when
    /// no hierarchy can be used.
    pub fn new(run_id: &str) -> Result<Self, String> {
        Self::new_under(Path::new("/sys/fs/cgroup"), run_id)
    }

    fn new_under(root: &Path, run_id: &str) -> Result<Self, String> {
        let name = format!("txpipe-{run_id}");
        // cgroup v2: unified hierarchy at the root with a cpu controller available.
        let controllers = root.join("cgroup.controllers");
        if let Ok(c) = std::fs::read_to_string(&controllers)
            && c.split_whitespace().any(|x| x == "cpu")
        {
            let parent = root.join(&name);
            std::fs::create_dir_all(&parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu");
            return Ok(Self {
                parent,
                flavor: Flavor::V2,
                children: Vec::new(),
            });
        }
        // cgroup v1: a separate cpu hierarchy.
        for dir in ["cpu", "cpu,cpuacct"] {
            let base = root.join(dir);
            if base.join("cpu.cfs_quota_us").exists() {
                let parent = base.join(&name);
                std::fs::create_dir_all(&parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
                return Ok(Self {
                    parent,
                    flavor: Flavor::V1,
                    children: Vec::new(),
                });
            }
        }
        Err(format!(
            "no writable cgroup cpu controller under {}",
            root.display()
        ))
    }

    /// Hierarchy name for messages: "cgroup v2" or "cgroup v1".
    pub fn describe(&self) -> &'static str {
        match self.flavor {
            Flavor::V2 => "cgroup v2 cpu.max",
            Flavor::V1 => "cgroup v1 cpu.cfs_quota_us",
        }
    }

    /// Puts `pid` in a new child cgroup `name` limited to `cpus` CPUs (e.g. 0.5).
    pub fn limit(&mut self, name: &str, pid: u32, cpus: f64) -> Result<(), String> {
        let dir = self.parent.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let quota = ((cpus * PERIOD_US as f64).round() as u64).max(1000);
        let w = |file: &str, value: String| {
            std::fs::write(dir.join(file), &value).map_err(|e| {
                format!(
                    "cannot write {value:?} to {}: {e}",
                    dir.join(file).display()
                )
            })
        };
        match self.flavor {
            Flavor::V2 => w("cpu.max", format!("{quota} {PERIOD_US}"))?,
            Flavor::V1 => {
                w("cpu.cfs_period_us", PERIOD_US.to_string())?;
                w("cpu.cfs_quota_us", quota.to_string())?;
            }
        }
        w("cgroup.procs", pid.to_string())?;
        if !self.children.contains(&dir) {
            self.children.push(dir);
        }
        Ok(())
    }

    /// CPU time the kernel throttled child `name` for, microseconds (from `cpu.stat`), if known.
    pub fn throttled_us(&self, name: &str) -> Option<u64> {
        let stat = std::fs::read_to_string(self.parent.join(name).join("cpu.stat")).ok()?;
        for line in stat.lines() {
            let mut it = line.split_whitespace();
            match (it.next(), it.next()) {
                (Some("throttled_usec"), Some(v)) => return v.parse().ok(),
                (Some("throttled_time"), Some(v)) => {
                    return v.parse::<u64>().ok().map(|ns| ns / 1000);
                }
                _ => {}
            }
        }
        None
    }
}

impl Drop for CpuLimiter {
    fn drop(&mut self) {
        // A cgroup can only be removed once its processes have exited; the runner stops every
        // child before dropping the limiter.
        for c in self.children.drain(..) {
            let _ = std::fs::remove_dir(&c);
        }
        let _ = std::fs::remove_dir(&self.parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_writes_a_v2_quota_of_half_a_cpu() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory",
        )
        .unwrap();
        let mut l = CpuLimiter::new_under(root.path(), "t1").unwrap();
        // The fake hierarchy accepts any write, so limiting pid 1 only creates files.
        l.limit("worker-0", 1, 0.5).unwrap();
        let dir = root.path().join("txpipe-t1/worker-0");
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            "1"
        );
    }

    #[test]
    fn limiter_writes_a_v1_quota_and_reports_missing_controllers() {
        let root = tempfile::tempdir().unwrap();
        assert!(CpuLimiter::new_under(root.path(), "t2").is_err());
        std::fs::create_dir_all(root.path().join("cpu")).unwrap();
        std::fs::write(root.path().join("cpu/cpu.cfs_quota_us"), "-1").unwrap();
        let mut l = CpuLimiter::new_under(root.path(), "t2").unwrap();
        l.limit("worker-1", 1, 0.5).unwrap();
        let dir = root.path().join("cpu/txpipe-t2/worker-1");
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap(),
            "50000"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.cfs_period_us")).unwrap(),
            "100000"
        );
    }
}
