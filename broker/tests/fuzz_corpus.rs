//! The fuzz targets' inputs without the fuzzer: every file of the committed seed corpus
//! (`fuzz/corpus/<target>/`) and every crash the fuzzer found (`fuzz/regressions/<target>/`)
//! goes through the same check as in `fuzz/fuzz_targets/<target>.rs`
//! (`txpipe_broker::fuzz_checks`), so a fixed crash stays fixed in `cargo test`.
//! See docs/fuzzing.md.
//!
//! `TXPIPE_WRITE_FUZZ_CORPUS=1 cargo test -p txpipe-broker --test fuzz_corpus` rewrites the
//! seed files (`seed-NN`) from `fuzz_checks::seeds` after an encoding changed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use txpipe_broker::fuzz_checks::{Check, TARGETS, seeds};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted (none when it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Runs `check` on every file; returns the failures as "path: panic message".
fn run_all(check: Check, paths: &[PathBuf]) -> Vec<String> {
    let mut failed = Vec::new();
    for p in paths {
        let data = std::fs::read(p).expect("read input");
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", p.display()));
        }
    }
    failed
}

fn write_seeds(target: &str, dir: &Path) {
    std::fs::create_dir_all(dir).expect("create corpus directory");
    for p in files(dir) {
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        {
            std::fs::remove_file(p).expect("remove old seed");
        }
    }
    for (i, s) in seeds(target).iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), s).expect("write seed");
    }
}

/// With `TXPIPE_WRITE_FUZZ_CORPUS` set, rewrites every target's seeds, once per test run and
/// before any test reads them.
fn maybe_rewrite_seeds() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TXPIPE_WRITE_FUZZ_CORPUS").is_some() {
            for (name, _) in TARGETS {
                write_seeds(name, &fuzz_dir().join("corpus").join(name));
            }
        }
    });
}

#[test]
fn every_corpus_file_and_every_recorded_crash_passes_its_target_check() {
    maybe_rewrite_seeds();
    let mut failed = Vec::new();
    let mut total = 0;
    for (name, check) in TARGETS {
        let corpus = fuzz_dir().join("corpus").join(name);
        let mut inputs = files(&corpus);
        assert!(
            !inputs.is_empty(),
            "no seed corpus for fuzz target '{name}' in {}",
            corpus.display()
        );
        inputs.extend(files(&fuzz_dir().join("regressions").join(name)));
        total += inputs.len();
        failed.extend(run_all(*check, &inputs));
    }
    assert!(
        failed.is_empty(),
        "{} of {total} fuzz inputs fail their check:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn the_committed_seed_corpus_matches_the_seed_generator() {
    maybe_rewrite_seeds();
    for (name, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "target '{name}' has no seeds");
        for (i, s) in seeds.iter().enumerate() {
            let p = dir.join(format!("seed-{i:02}"));
            let on_disk = std::fs::read(&p).unwrap_or_default();
            assert!(
                on_disk == *s,
                "{} differs from fuzz_checks::seeds (an encoding changed?); regenerate with \
                 TXPIPE_WRITE_FUZZ_CORPUS=1 cargo test -p txpipe-broker --test fuzz_corpus",
                p.display()
            );
        }
    }
}

#[test]
fn every_target_has_a_fuzz_binary() {
    for (name, _) in TARGETS {
        let p = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let src = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            src.contains(&format!("fuzz_checks::{name}(")),
            "{} does not call fuzz_checks::{name}",
            p.display()
        );
    }
}
