//! Per-stage CPU-cost benchmark (`txpipe-worker bench-stages`).
//!
//! Builds `count` encoded transactions (a small deterministic mix of channels, countries,
//! amounts, MCCs and 3% malformed PANs; every stage does fixed work, so the mix barely
//! matters), then runs each stage over all of them in turn and reads the thread CPU clock
//! around each pass. The issuer-call stage runs on a current-thread tokio runtime in chunks of
//! 64 like the worker, and is charged the whole process's CPU (runtime thread + timer thread).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use prost::Message;
use txpipe_client::pan::PanKey;
use txpipe_client::pipeline::v1::{Channel, EntryMode, Transaction};

use crate::cputime::{process_cpu, thread_cpu};
use crate::scoring::{Decrypted, DeliveryMeta, Profile, Scorer};
use crate::timer::HiResTimer;

/// CPU cost of one stage.
#[derive(Debug, Clone)]
pub struct StageCost {
    /// Stage name (`decode`, `crypto`, `profile`, `rules`, `model`, `decision`, `external`).
    pub stage: &'static str,
    /// CPU time per transaction, microseconds.
    pub cpu_us: f64,
}

/// Result of [`bench_stages`].
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Transactions per pass.
    pub count: usize,
    /// AES-256-GCM seal+open rounds.
    pub crypto_rounds: u32,
    /// Issuer-call latency.
    pub issuer_latency: Duration,
    /// Model version.
    pub model_version: String,
    /// Per-stage costs in execution order.
    pub stages: Vec<StageCost>,
    /// Mean wall time of one chunk's issuer call, microseconds.
    pub external_wall_us: f64,
}

impl BenchReport {
    /// Total CPU per transaction, microseconds.
    pub fn total_us(&self) -> f64 {
        self.stages.iter().map(|s| s.cpu_us).sum()
    }

    /// Transactions/s that `cpus` CPUs allow for the scoring work alone.
    pub fn max_tps(&self, cpus: f64) -> f64 {
        cpus * 1e6 / self.total_us().max(1e-9)
    }

    /// The printed table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "txpipe-worker bench-stages: {} transactions, crypto_rounds={}, issuer_latency={} us, model={}",
            self.count,
            self.crypto_rounds,
            self.issuer_latency.as_micros(),
            self.model_version
        );
        let _ = writeln!(s, "{:<10} {:>12} {:>7}", "stage", "cpu_us/tx", "share");
        let total = self.total_us();
        for st in &self.stages {
            let _ = writeln!(
                s,
                "{:<10} {:>12.3} {:>6.1}%",
                st.stage,
                st.cpu_us,
                100.0 * st.cpu_us / total.max(1e-9)
            );
        }
        let _ = writeln!(s, "{:<10} {:>12.3}", "total", total);
        let _ = writeln!(
            s,
            "implied max throughput: {:.0} tx/s per 0.5 CPU, {:.0} tx/s per CPU (scoring only; gRPC and broker excluded)",
            self.max_tps(0.5),
            self.max_tps(1.0)
        );
        let _ = writeln!(
            s,
            "issuer call: requested {} us, measured {:.0} us wall per chunk of 64 (tokio::time::sleep would be >= 1000 us)",
            self.issuer_latency.as_micros(),
            self.external_wall_us
        );
        s
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): the bench's own deterministic value stream.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn luhn_complete(prefix: &str) -> String {
    for d in 0..10 {
        let pan = format!("{prefix}{d}");
        if crate::rules::luhn_valid(pan.as_bytes()) {
            return pan;
        }
    }
    unreachable!("one check digit always fits")
}

/// `count` deterministic synthetic transactions sealed with `key`, protobuf-encoded.
pub fn synthetic_transactions(count: usize, key: &PanKey) -> Vec<Vec<u8>> {
    let mut st = 7u64;
    let countries = ["GB", "US", "DE", "FR", "ES", "IT"];
    let mccs = [5411, 5812, 5541, 4829, 6051, 7995, 5732, 5944, 5999, 4111];
    (0..count)
        .map(|i| {
            let r = splitmix(&mut st);
            let id = format!("tx-{i:020}");
            let body = format!("4{:014}", r % 100_000_000_000_000);
            let mut pan = luhn_complete(&body);
            if r % 100 < 3 {
                pan.replace_range(15..16, if pan.ends_with('0') { "1" } else { "0" });
            }
            let cnp = (r >> 8).is_multiple_of(3);
            let tx = Transaction {
                id: id.clone(),
                event_time_us: 1_767_225_600_000_000 + i as i64 * 1_000,
                customer_id: format!("c-{}", (r >> 16) % 100_000),
                pan_encrypted: key.seal(&id, pan.as_bytes()),
                key_id: key.id().to_string(),
                expiry_month: 1 + ((r >> 20) % 12) as u32,
                expiry_year: 2026 + ((r >> 24) % 5) as u32,
                amount_minor: 100 + ((r >> 28) % 200_000) as i64,
                currency: "EUR".into(),
                merchant_id: format!("m-{}", (r >> 36) % 5_000),
                mcc: mccs[((r >> 40) % mccs.len() as u64) as usize],
                terminal_id: format!("t-{}", (r >> 44) % 20_000),
                merchant_country: countries[((r >> 52) % 6) as usize].into(),
                channel: if cnp {
                    Channel::Ecommerce
                } else {
                    Channel::CardPresent
                } as i32,
                entry_mode: if cnp {
                    EntryMode::Ecommerce
                } else {
                    EntryMode::Chip
                } as i32,
                three_ds: cnp && (r >> 56).is_multiple_of(2),
                cvv_present: cnp && !(r >> 57).is_multiple_of(4),
                local_hour: ((r >> 58) % 24) as u32,
                features: vec![],
                feature_set: String::new(),
            };
            tx.encode_to_vec()
        })
        .collect()
}

fn per_tx(cpu: Duration, n: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / n.max(1) as f64
}

/// Measures the CPU cost of each stage over `count` transactions (see the module docs).
/// Errors: the timer thread could not start.
pub fn bench_stages(
    scorer: &Scorer,
    key: &PanKey,
    count: usize,
    issuer_latency: Duration,
) -> std::io::Result<BenchReport> {
    let encoded = synthetic_transactions(count, key);
    let mut stages = Vec::new();
    // Warm-up pass (page in tables, caches).
    for e in encoded.iter().take(1_000) {
        if let Ok(tx) = Transaction::decode(e.as_slice()) {
            std::hint::black_box(scorer.assess(&tx));
        }
    }

    let t = thread_cpu();
    let txs: Vec<Transaction> = encoded
        .iter()
        .map(|e| Transaction::decode(e.as_slice()).expect("bench transactions decode"))
        .collect();
    stages.push(StageCost {
        stage: "decode",
        cpu_us: per_tx(thread_cpu() - t, count),
    });

    let t = thread_cpu();
    let dec: Vec<Decrypted> = txs.iter().map(|tx| scorer.stage_crypto(tx)).collect();
    stages.push(StageCost {
        stage: "crypto",
        cpu_us: per_tx(thread_cpu() - t, count),
    });

    let t = thread_cpu();
    let prof: Vec<Profile> = txs
        .iter()
        .zip(&dec)
        .map(|(tx, d)| scorer.stage_profile(tx, d.pan.as_deref()))
        .collect();
    stages.push(StageCost {
        stage: "profile",
        cpu_us: per_tx(thread_cpu() - t, count),
    });

    let t = thread_cpu();
    let hits: Vec<_> = txs
        .iter()
        .zip(&dec)
        .zip(&prof)
        .map(|((tx, d), p)| scorer.stage_rules(tx, d.pan.as_deref(), p))
        .collect();
    stages.push(StageCost {
        stage: "rules",
        cpu_us: per_tx(thread_cpu() - t, count),
    });

    let t = thread_cpu();
    let scores: Vec<f32> = txs
        .iter()
        .zip(&prof)
        .zip(&hits)
        .map(|((tx, p), h)| scorer.stage_model(tx, p, *h))
        .collect();
    stages.push(StageCost {
        stage: "model",
        cpu_us: per_tx(thread_cpu() - t, count),
    });

    // Decision record construction + encoding (what the worker does after stage 5).
    let assessments: Vec<_> = (0..count)
        .map(|i| crate::scoring::Assessment {
            hits: hits[i],
            model_score: scores[i],
            profile: prof[i],
            score: Scorer::combine(scores[i], hits[i]),
            stage_ns: [0; 4],
            vector: false,
        })
        .collect();
    let t = thread_cpu();
    let mut bytes = 0usize;
    for (i, a) in assessments.iter().enumerate() {
        let d = scorer.decision(
            &txs[i].id,
            a,
            DeliveryMeta {
                offset: i as u64,
                attempt: 1,
                produced_at_us: 1,
            },
            "bench",
            2,
            3,
        );
        bytes += d.encode_to_vec().len();
    }
    std::hint::black_box(bytes);
    stages.push(StageCost {
        stage: "decision",
        cpu_us: per_tx(thread_cpu() - t, count),
    });

    // Stage 5 on a current-thread runtime, as in the worker.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timer = HiResTimer::start()?;
    let chunks = count.div_ceil(64);
    let p0 = process_cpu();
    let w0 = Instant::now();
    rt.block_on(async {
        for c in 0..chunks {
            let n = 64.min(count - c * 64);
            let sleeps: Vec<_> = (0..n).map(|_| timer.sleep(issuer_latency)).collect();
            futures::future::join_all(sleeps).await;
        }
    });
    let wall = w0.elapsed();
    stages.push(StageCost {
        stage: "external",
        cpu_us: per_tx(process_cpu() - p0, count),
    });
    std::hint::black_box(&dec);
    Ok(BenchReport {
        count,
        crypto_rounds: scorer.crypto_rounds(),
        issuer_latency,
        model_version: scorer.model().version().to_string(),
        stages,
        external_wall_us: wall.as_secs_f64() * 1e6 / chunks.max(1) as f64,
    })
}

/// CPU cost of one vector model (see [`bench_vector_models`]).
#[derive(Debug, Clone)]
pub struct VectorCost {
    /// Model version.
    pub model_version: String,
    /// `vector_gbt` or `vector_logistic_regression`.
    pub kind: &'static str,
    /// Predictions timed.
    pub count: usize,
    /// CPU time per prediction, nanoseconds.
    pub cpu_ns: f64,
}

/// Reads the feature vectors of a pre-featurised CSV (header row; the columns named by
/// `features`, in that order; double quotes around values are ignored). Errors: a message
/// naming the missing column, or the line and column of a value that is not a finite number.
pub fn read_feature_csv(text: &str, features: &[String]) -> Result<Vec<Vec<f32>>, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty file")?
        .split(',')
        .map(|h| h.trim().trim_matches('"'))
        .collect();
    let cols: Vec<usize> = features
        .iter()
        .map(|f| {
            header
                .iter()
                .position(|h| h == f)
                .ok_or_else(|| format!("line 1: no column {f:?}"))
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let mut v = Vec::with_capacity(cols.len());
        for (&c, name) in cols.iter().zip(features) {
            let raw = fields
                .get(c)
                .map(|f| f.trim().trim_matches('"'))
                .unwrap_or("");
            match raw.parse::<f32>() {
                Ok(x) if x.is_finite() => v.push(x),
                _ => return Err(format!("line {}: column {name}: {raw:?}", i + 2)),
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// Times `model.predict` over `vectors`, cycled to `count` predictions, on the thread CPU
/// clock (after a warm-up pass). Panics if a vector has the wrong length (the caller reads
/// them with the model's feature list).
pub fn bench_vector_model(
    model: &crate::vector::VectorModel,
    vectors: &[Vec<f32>],
    count: usize,
) -> VectorCost {
    let mut sum = 0f32;
    for v in vectors {
        sum += model.predict(v).expect("vector length matches the model");
    }
    let t = thread_cpu();
    for v in vectors.iter().cycle().take(count) {
        sum += model.predict(v).expect("vector length matches the model");
    }
    let cpu = thread_cpu() - t;
    std::hint::black_box(sum);
    VectorCost {
        model_version: model.version().to_string(),
        kind: model.kind(),
        count,
        cpu_ns: cpu.as_secs_f64() * 1e9 / count.max(1) as f64,
    }
}
