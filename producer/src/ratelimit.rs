//! Token-bucket rate limiter with an injected clock (Turner, "New directions in
//! communications", IEEE Communications Magazine 24(10), 1986; the classic token bucket).
//!
//! The bucket holds up to `capacity` tokens and refills at `rate_per_s`. [`TokenBucket::reserve`]
//! takes tokens immediately, going into debt when there are not enough, and returns how long the
//! caller must wait before acting; because the debt is carried, the long-run rate is exact
//! whatever the batch size. Time is passed in by the caller (seconds from any origin), so the
//! arithmetic is tested without sleeping.

/// A token bucket. See the module docs.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_s: f64,
    capacity: f64,
    tokens: f64,
    last_s: f64,
}

impl TokenBucket {
    /// A full bucket refilling at `rate_per_s` (> 0) tokens per second, holding at most
    /// `capacity` (≥ 1) tokens, at time `now_s`.
    pub fn new(rate_per_s: f64, capacity: f64, now_s: f64) -> Self {
        let capacity = capacity.max(1.0);
        Self {
            rate_per_s: rate_per_s.max(f64::MIN_POSITIVE),
            capacity,
            tokens: capacity,
            last_s: now_s,
        }
    }

    fn refill(&mut self, now_s: f64) {
        if now_s > self.last_s {
            self.tokens =
                (self.tokens + (now_s - self.last_s) * self.rate_per_s).min(self.capacity);
            self.last_s = now_s;
        }
    }

    /// Takes `n` tokens at time `now_s`; returns the seconds to wait before using them (0 when
    /// the bucket had enough).
    pub fn reserve(&mut self, n: f64, now_s: f64) -> f64 {
        self.refill(now_s);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            0.0
        } else {
            -self.tokens / self.rate_per_s
        }
    }

    /// Tokens available at `now_s` (negative while in debt).
    pub fn available(&mut self, now_s: f64) -> f64 {
        self.refill(now_s);
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_admits_its_capacity_at_once_then_paces_at_the_rate() {
        let mut b = TokenBucket::new(1000.0, 500.0, 0.0);
        assert_eq!(b.reserve(500.0, 0.0), 0.0);
        // Empty now: 500 more tokens take 0.5 s.
        assert!((b.reserve(500.0, 0.0) - 0.5).abs() < 1e-9);
        // The caller waited 0.5 s: the debt is paid, the next 100 need 0.1 s.
        assert!((b.reserve(100.0, 0.5) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn the_long_run_rate_is_exact_for_any_batch_size() {
        let mut b = TokenBucket::new(2_000.0, 100.0, 0.0);
        let mut now = 0.0;
        let mut sent = 0.0;
        for _ in 0..1_000 {
            now += b.reserve(333.0, now);
            sent += 333.0;
        }
        // Everything beyond the initial burst of 100 paced at 2000/s.
        assert!(((sent - 100.0) / 2_000.0 - now).abs() < 1e-6, "now {now}");
    }

    #[test]
    fn idle_time_refills_only_up_to_capacity() {
        let mut b = TokenBucket::new(10.0, 50.0, 0.0);
        b.reserve(50.0, 0.0);
        assert!((b.available(100.0) - 50.0).abs() < 1e-9);
        assert_eq!(b.reserve(50.0, 100.0), 0.0);
        assert!((b.reserve(10.0, 100.0) - 1.0).abs() < 1e-9);
    }
}
