//! The generator's own pseudo-random number generator and samplers.
//!
//! txpipe does not use the `rand` crates' value streams: they may change between minor versions,
//! and the golden-hash test pins the exact records a seed produces. Everything here is a few
//! lines of published arithmetic:
//!
//! - [`Rng`] is xoshiro256** (Blackman & Vigna, "Scrambled linear pseudorandom number
//!   generators", ACM TOMS 47(4), 2021; reference code at prng.di.unimi.it), seeded by expanding
//!   the 64-bit seed with SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number
//!   generators", OOPSLA 2014), as the xoshiro authors recommend.
//! - [`Rng::f64`] takes the top 53 bits (uniform on `[0, 1)` with step 2^-53).
//! - [`Rng::below`] is Lemire's nearly-divisionless bounded integer method ("Fast random integer
//!   generation in an interval", ACM TOMACS 29(1), 2019).
//! - [`Rng::normal`] is the Marsaglia polar method (Marsaglia & Bray, SIAM Review 6(3), 1964),
//!   caching the second variate.
//! - [`Rng::exponential`] is inversion; [`Rng::lognormal`] is `exp` of a normal.
//! - [`Rng::poisson`] is Knuth's multiplication method for λ < 30 (TAOCP vol. 2, 3.4.1) and a
//!   rounded normal approximation N(λ, λ) above.
//! - [`WeightedIndex`] is inversion on the cumulative weights (binary search).

/// One SplitMix64 step: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** with samplers. Deterministic for a given seed on every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
    spare_normal: Option<f64>,
}

impl Rng {
    /// A generator whose 256-bit state is four SplitMix64 outputs of `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Self {
            s,
            spare_normal: None,
        }
    }

    /// The next 64 random bits (xoshiro256** output function and state transition).
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform on `[0, 1)`, 53 bits of precision.
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer on `[0, n)`; `n` must be > 0 (returns 0 for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire 2019: multiply, reject the small biased region.
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        let mut low = m as u64;
        if low < n {
            let threshold = n.wrapping_neg() % n;
            while low < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
                low = m as u64;
            }
        }
        (m >> 64) as u64
    }

    /// Uniform index into a slice of length `len` (> 0).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// Uniform integer on the closed range `[lo, hi]`.
    pub fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi);
        lo + self.below((hi - lo) as u64 + 1) as i64
    }

    /// Uniform real on `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// `true` with probability `p` (clamped to `[0, 1]`).
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Standard normal variate, Marsaglia polar method.
    pub fn std_normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.f64() - 1.0;
            let v = 2.0 * self.f64() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * s.ln() / s).sqrt();
                self.spare_normal = Some(v * f);
                return u * f;
            }
        }
    }

    /// Normal variate with mean `mean` and standard deviation `sd`.
    pub fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        mean + sd * self.std_normal()
    }

    /// Lognormal variate: `exp(N(mu, sigma))`; its median is `exp(mu)`.
    pub fn lognormal(&mut self, mu: f64, sigma: f64) -> f64 {
        self.normal(mu, sigma).exp()
    }

    /// Exponential variate with the given mean (inversion: `-mean * ln(1 - U)`).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).ln()
    }

    /// Poisson variate with mean `lambda` (Knuth below 30, rounded normal approximation above).
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            let l = (-lambda).exp();
            let mut k = 0u64;
            let mut p = 1.0;
            loop {
                p *= self.f64();
                if p <= l {
                    return k;
                }
                k += 1;
            }
        }
        self.normal(lambda, lambda.sqrt()).round().max(0.0) as u64
    }

    /// A uniformly chosen element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }
}

/// Weighted choice by inversion on cumulative weights; O(log n) per draw.
#[derive(Debug, Clone)]
pub struct WeightedIndex {
    cumulative: Vec<f64>,
}

impl WeightedIndex {
    /// Builds the table. Weights must be finite and ≥ 0 with a positive sum (panics otherwise:
    /// the tables are static and checked by tests).
    pub fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut total = 0.0;
        let cumulative: Vec<f64> = weights
            .into_iter()
            .map(|w| {
                assert!(
                    w.is_finite() && w >= 0.0,
                    "weight {w} must be finite and >= 0"
                );
                total += w;
                total
            })
            .collect();
        assert!(total > 0.0, "weights must have a positive sum");
        Self { cumulative }
    }

    /// Number of choices.
    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    /// Whether there are no choices (never true for a constructed table).
    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// Draws an index with probability proportional to its weight.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let total = *self.cumulative.last().expect("non-empty");
        let x = rng.f64() * total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        i.min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_matches_the_reference_for_a_known_state() {
        // State 1,2,3,4: first outputs of the reference xoshiro256** C code.
        let mut r = Rng {
            s: [1, 2, 3, 4],
            spare_normal: None,
        };
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(got, vec![11520, 0, 1509978240, 1215971899390074240]);
    }

    #[test]
    fn splitmix64_matches_the_reference_for_seed_zero() {
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn samplers_have_the_expected_moments() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let normals: Vec<f64> = (0..n).map(|_| r.normal(10.0, 2.0)).collect();
        let m = mean(&normals);
        let var = normals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
        assert!((m - 10.0).abs() < 0.02, "normal mean {m}");
        assert!((var.sqrt() - 2.0).abs() < 0.02, "normal sd {}", var.sqrt());
        let exps: Vec<f64> = (0..n).map(|_| r.exponential(3.0)).collect();
        assert!((mean(&exps) - 3.0).abs() < 0.05);
        let pois: Vec<f64> = (0..n).map(|_| r.poisson(2.5) as f64).collect();
        assert!((mean(&pois) - 2.5).abs() < 0.03);
        let big: Vec<f64> = (0..n).map(|_| r.poisson(100.0) as f64).collect();
        assert!((mean(&big) - 100.0).abs() < 0.2);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[r.below(7) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_400..10_600).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn weighted_index_follows_the_weights_and_never_picks_zero_weights() {
        let mut r = Rng::new(1);
        let w = WeightedIndex::new([1.0, 0.0, 3.0]);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[w.sample(&mut r)] += 1;
        }
        assert_eq!(counts[1], 0);
        let ratio = f64::from(counts[2]) / f64::from(counts[0]);
        assert!((ratio - 3.0).abs() < 0.15, "{counts:?}");
    }
}
