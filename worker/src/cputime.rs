//! CPU-time clocks (`clock_gettime(2)` through `nix`, no `unsafe` here).

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

fn read(clock: ClockId) -> Duration {
    clock_gettime(clock)
        .map(|t| {
            Duration::new(
                t.tv_sec().max(0) as u64,
                t.tv_nsec().clamp(0, 999_999_999) as u32,
            )
        })
        .unwrap_or_default()
}

/// CPU time consumed by the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu() -> Duration {
    read(ClockId::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time consumed by the whole process, every thread (`CLOCK_PROCESS_CPUTIME_ID`).
pub fn process_cpu() -> Duration {
    read(ClockId::CLOCK_PROCESS_CPUTIME_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_advances_with_work() {
        let a = thread_cpu();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(thread_cpu() > a);
        assert!(process_cpu() >= thread_cpu());
    }
}
