//! `txpipe-train`: trains the worker's model on labelled transactions from the seeded
//! generator (`txpipe-producer`) and writes `model.json`.
//!
//! ```text
//! cargo run -p txpipe-worker --release --features train --bin txpipe-train -- \
//!     --seed 7 --count 300000 --eval-seed 42 --out worker/model/model.json
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use txpipe_client::pan::PanKey;
use txpipe_producer::generate::{Generator, GeneratorConfig};
use txpipe_worker::model::FEATURES;
use txpipe_worker::tables::fnv1a64;
use txpipe_worker::train::{Example, TrainConfig, TrainReport, evaluate, train};

#[derive(Debug, Parser)]
#[command(name = "txpipe-train", about = "Train the txpipe worker's fraud model")]
struct Args {
    /// Generator seed of the training data.
    #[arg(long, env = "TRAIN_SEED", default_value_t = 7)]
    seed: u64,
    /// Transactions to generate.
    #[arg(long, env = "TRAIN_COUNT", default_value_t = 300_000)]
    count: usize,
    /// Also evaluate the finished model on this many transactions of another seed (0 = skip).
    #[arg(long, env = "TRAIN_EVAL_COUNT", default_value_t = 200_000)]
    eval_count: usize,
    /// Seed of the cross-world evaluation (the generator's default seed is 42).
    #[arg(long, env = "TRAIN_EVAL_SEED", default_value_t = 42)]
    eval_seed: u64,
    /// Learn merchant/terminal risk tables (only valid on the training seed's world).
    #[arg(long, env = "TRAIN_LEARN_ENTITY_TABLES")]
    learn_entity_tables: bool,
    /// L2 penalty.
    #[arg(long, env = "TRAIN_L2", default_value_t = 1.0)]
    l2: f64,
    /// Output file.
    #[arg(long, env = "TRAIN_OUT", default_value = "worker/model/model.json")]
    out: PathBuf,
}

fn dev_key_bytes() -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b"txpipe-dev-pan-key");
    d.as_ref().try_into().expect("32 bytes")
}

fn generate(seed: u64, count: usize, key: &PanKey) -> Vec<Example> {
    let cfg = GeneratorConfig {
        seed,
        ..GeneratorConfig::default()
    };
    Generator::new(cfg, key)
        .take(count)
        .map(|g| Example {
            tx: g.tx,
            is_fraud: g.label.is_fraud,
            scenario: g.label.scenario,
        })
        .collect()
}

fn print_report(title: &str, r: &TrainReport) {
    println!(
        "== {title}: {} transactions, {} frauds",
        r.rows[2], r.frauds[2]
    );
    println!(
        "   AUPRC (final score) {:.4}   AUPRC (model alone) {:.4}",
        r.holdout_auprc, r.holdout_model_auprc
    );
    for (name, a) in [
        ("review+decline", &r.holdout_review),
        ("decline", &r.holdout_decline),
    ] {
        println!(
            "   {name:<15} threshold {:.2}: precision {:.3} recall {:.3} false-positive rate {:.5} ({} flagged)",
            a.threshold, a.precision, a.recall, a.false_positive_rate, a.flagged
        );
    }
    println!(
        "   {:<22} {:>6} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "scenario", "count", "hard", "profile", "model", "rev+decl", "decline"
    );
    for (name, s) in &r.per_scenario {
        println!(
            "   {name:<22} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>8.3}",
            s.count, s.hard_rules, s.profile, s.model, s.review_or_decline, s.decline
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key_bytes = dev_key_bytes();
    let key = PanKey::from_bytes("dev-1", &key_bytes);
    let started = std::time::Instant::now();
    let data = generate(args.seed, args.count, &key);
    eprintln!(
        "generated {} transactions in {:.1?}",
        data.len(),
        started.elapsed()
    );
    let cfg = TrainConfig {
        l2: args.l2,
        learn_entity_tables: args.learn_entity_tables,
        ..TrainConfig::default()
    };
    let trained = train(data, &key_bytes, &cfg).context("training")?;
    let mut model = trained.model;
    let r = &trained.report;
    println!(
        "split (chronological): tables {} / fit {} / holdout {} rows; frauds {:?}; Newton iterations {}; train log-loss {:.5}",
        r.rows[0], r.rows[1], r.rows[2], r.frauds, r.iterations, r.train_log_loss
    );
    println!(
        "thresholds (precision >= 0.5 / 0.9 on the fit part): review {:.2}, decline {:.2}",
        model.review_threshold, model.decline_threshold
    );
    print_report(&format!("holdout (seed {}, last 20%)", args.seed), r);
    let eval = if args.eval_count > 0 {
        let other = generate(args.eval_seed, args.eval_count, &key);
        let e = evaluate(&model, &other, &key_bytes).context("cross-seed evaluation")?;
        print_report(
            &format!(
                "other world (seed {}, first {})",
                args.eval_seed, args.eval_count
            ),
            &e,
        );
        Some(e)
    } else {
        None
    };
    println!("weights (standardised features):");
    for (name, w) in FEATURES.iter().zip(&model.weights) {
        println!("   {name:<26} {w:>9.4}");
    }
    let content = serde_json::to_string(&(
        &model.weights,
        model.bias,
        &model.mean,
        &model.std,
        &model.tables,
    ))?;
    model.model_version = format!(
        "lr-s{}-n{}-{:08x}",
        args.seed,
        args.count,
        fnv1a64(content.as_bytes()) as u32
    );
    let command: Vec<String> = std::env::args().collect();
    model.training = serde_json::json!({
        "command": format!("cargo run -p txpipe-worker --release --features train --bin txpipe-train -- {}", command[1..].join(" ")),
        "generator": "txpipe_producer::generate::Generator, GeneratorConfig::default() with the seed below",
        "seed": args.seed,
        "count": args.count,
        "split": "chronological: first 50% risk tables, next 30% fit + thresholds, last 20% holdout",
        "method": "L2-regularised logistic regression, Newton/IRLS, standardised features",
        "l2": args.l2,
        "learn_entity_tables": args.learn_entity_tables,
        "holdout": trained.report,
        "other_world": eval.map(|e| serde_json::json!({ "seed": args.eval_seed, "count": args.eval_count, "report": e })),
    });
    let json = serde_json::to_string_pretty(&model)?;
    std::fs::write(&args.out, json + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} (model_version {})",
        args.out.display(),
        model.model_version
    );
    Ok(())
}
