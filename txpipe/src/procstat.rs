//! CPU time and peak memory of child processes, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (proc(5)). Values are sampled while the process runs; the last sample
//! before it exits is what the report uses.

use std::time::Duration;

/// One sample of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU time consumed so far.
    pub cpu: Duration,
    /// Peak resident set size (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
}

/// Clock ticks per second for `/proc/<pid>/stat` times (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(100)
}

/// Reads a sample of `pid`, or `None` when the process is gone or /proc is unavailable.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks();
    let cpu = Duration::from_micros((utime + stime) * 1_000_000 / ticks);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_rss_bytes = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    Some(ProcSample {
        cpu,
        peak_rss_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_of_this_process_reports_cpu_and_memory() {
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let s = sample(std::process::id()).expect("/proc is readable");
        assert!(s.peak_rss_bytes > 1 << 20, "{s:?}");
        assert!(sample(u32::MAX).is_none());
    }
}
