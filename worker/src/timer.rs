//! A high-resolution async timer for the external-call stage.
//!
//! `tokio::time::sleep` rounds every deadline up to its 1 ms wheel, which would turn a 100 µs
//! issuer call into 1 ms; `std::thread::sleep` is precise but blocks the runtime thread. This
//! timer keeps the exact deadlines (`Instant + Duration`, nanosecond resolution, never
//! rounded) in a min-heap owned by one dedicated thread. The thread waits on a condition
//! variable until the earliest deadline (a futex wait with a timeout on Linux: no CPU is
//! burnt while waiting), then completes every sleep whose deadline has passed in one wake-up,
//! so a batch of calls issued together costs one wake-up. Precision is the kernel's timer
//! slack (set to 1 µs for the timer thread with `prctl(PR_SET_TIMERSLACK)`; 50 µs by default)
//! plus scheduling latency.
//!
//! Dropping the last [`HiResTimer`] handle stops the thread; sleeps still pending then resolve
//! at once (their deadline is not honoured at shutdown).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

struct Entry {
    deadline: Instant,
    seq: u64,
    done: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    stopped: bool,
    wakeups: u64,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// Handle to the timer thread; cheap to clone.
#[derive(Clone)]
pub struct HiResTimer {
    shared: Arc<Shared>,
    _guard: Arc<StopGuard>,
}

impl std::fmt::Debug for HiResTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HiResTimer").finish_non_exhaustive()
    }
}

struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.state.lock() {
            st.stopped = true;
        }
        self.0.cv.notify_all();
    }
}

/// How long the timer thread should wait before its next check, given the earliest pending
/// deadline: exactly the time left (no rounding), zero if it has passed, `None` (wait for a
/// new sleep) if nothing is pending.
pub fn wait_for(earliest: Option<Instant>, now: Instant) -> Option<Duration> {
    earliest.map(|d| d.saturating_duration_since(now))
}

/// The deadline of a sleep of `duration` starting at `now`: exact, not rounded to any tick.
pub fn deadline_of(now: Instant, duration: Duration) -> Instant {
    now + duration
}

impl HiResTimer {
    /// Starts the timer thread (`txpipe-timer`). Errors: the OS refused to spawn a thread.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("txpipe-timer".into())
            .spawn(move || {
                // Timer slack (default 50 µs) delays every timed wait; 1 µs keeps the issuer
                // call close to its requested latency. Best effort: ignored if refused.
                let _ = nix::sys::prctl::set_timerslack(1_000);
                timer_thread(&s)
            })?;
        Ok(Self {
            _guard: Arc::new(StopGuard(shared.clone())),
            shared,
        })
    }

    /// A future that completes once `duration` has passed (never earlier), without blocking
    /// the calling thread.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        let (done, rx) = oneshot::channel();
        let deadline = deadline_of(Instant::now(), duration);
        let mut st = self.shared.state.lock().expect("timer state poisoned");
        if st.stopped {
            drop(done);
        } else {
            let earliest = st.heap.peek().map(|e| e.0.deadline);
            st.seq += 1;
            let seq = st.seq;
            st.heap.push(Reverse(Entry {
                deadline,
                seq,
                done,
            }));
            if earliest.is_none_or(|e| deadline < e) {
                self.shared.cv.notify_one();
            }
        }
        Sleep { rx, deadline }
    }

    /// Times the timer thread has woken up to complete sleeps (for metrics and tests).
    pub fn wakeups(&self) -> u64 {
        self.shared.state.lock().map(|s| s.wakeups).unwrap_or(0)
    }
}

fn timer_thread(shared: &Shared) {
    let mut st = shared.state.lock().expect("timer state poisoned");
    loop {
        let now = Instant::now();
        let mut fired = false;
        while st.heap.peek().is_some_and(|e| e.0.deadline <= now) {
            let Reverse(e) = st.heap.pop().expect("peeked");
            let _ = e.done.send(());
            fired = true;
        }
        if fired {
            st.wakeups += 1;
        }
        if st.stopped {
            // Pending senders are dropped: their sleeps resolve at once.
            st.heap.clear();
            return;
        }
        st = match wait_for(st.heap.peek().map(|e| e.0.deadline), now) {
            None => shared.cv.wait(st).expect("timer state poisoned"),
            Some(d) => {
                shared
                    .cv
                    .wait_timeout(st, d)
                    .expect("timer state poisoned")
                    .0
            }
        };
    }
}

/// Future returned by [`HiResTimer::sleep`].
#[derive(Debug)]
pub struct Sleep {
    rx: oneshot::Receiver<()>,
    deadline: Instant,
}

impl Sleep {
    /// The exact deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_keep_sub_millisecond_resolution() {
        let now = Instant::now();
        let d = deadline_of(now, Duration::from_micros(100));
        assert_eq!(d - now, Duration::from_micros(100));
        assert_eq!(wait_for(Some(d), now), Some(Duration::from_micros(100)));
        assert_eq!(
            wait_for(Some(d), now + Duration::from_micros(37)),
            Some(Duration::from_micros(63))
        );
        assert_eq!(
            wait_for(Some(d), now + Duration::from_millis(2)),
            Some(Duration::ZERO)
        );
        assert_eq!(wait_for(None, now), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sleeps_never_complete_before_their_deadline_and_are_well_below_a_millisecond() {
        let timer = HiResTimer::start().unwrap();
        let mut elapsed = Vec::new();
        for _ in 0..200 {
            let start = Instant::now();
            let s = timer.sleep(Duration::from_micros(100));
            let deadline = s.deadline();
            s.await;
            let now = Instant::now();
            assert!(now >= deadline, "woke before the deadline");
            elapsed.push(now - start);
        }
        elapsed.sort();
        assert!(elapsed[0] >= Duration::from_micros(100));
        // Generous bound: tokio's timer would give >= 1 ms for every sample.
        let median = elapsed[elapsed.len() / 2];
        assert!(median < Duration::from_micros(900), "median {median:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_of_sleeps_with_one_deadline_completes_in_few_wakeups() {
        let timer = HiResTimer::start().unwrap();
        let sleeps: Vec<Sleep> = (0..256)
            .map(|_| timer.sleep(Duration::from_micros(200)))
            .collect();
        futures::future::join_all(sleeps).await;
        assert!(timer.wakeups() < 64, "wakeups {}", timer.wakeups());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_earlier_sleep_is_not_held_back_by_a_later_one() {
        let timer = HiResTimer::start().unwrap();
        let long = timer.sleep(Duration::from_secs(5));
        let short = timer.sleep(Duration::from_micros(50));
        let short_deadline = short.deadline();
        short.await;
        let now = Instant::now();
        assert!(now >= short_deadline);
        assert!(
            now < long.deadline(),
            "a later sleep delayed an earlier one"
        );
    }
}
