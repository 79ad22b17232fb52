//! The worker's static tables agree with the generator's (needs `--features train`).

use txpipe_client::pan::PanKey;
use txpipe_producer::generate::{Generator, GeneratorConfig};
use txpipe_worker::model::Model;
use txpipe_worker::rules::{Rule, bin_of};
use txpipe_worker::scoring::{Scorer, Thresholds};
use txpipe_worker::tables;

#[test]
fn every_generator_bin_resolves_to_the_same_country() {
    for b in txpipe_producer::tables::BINS {
        let n: u32 = b.bin.parse().unwrap();
        assert_eq!(tables::bin_country(n), Some(b.country), "BIN {}", b.bin);
    }
}

#[test]
fn every_generator_currency_converts_at_the_generator_rate() {
    for c in txpipe_producer::tables::COUNTRIES {
        let eur = tables::currency_to_eur_minor(10_000, c.currency);
        let expected = 10_000.0 / c.per_eur;
        assert!(
            (eur - expected).abs() / expected < 1e-4,
            "{}: {eur} vs {expected}",
            c.currency
        );
    }
}

#[test]
fn generated_transactions_decrypt_and_only_malformed_pans_fail_hard_rules() {
    let key = PanKey::insecure_test_key();
    let scorer = Scorer::new(
        PanKey::insecure_test_key(),
        0,
        Model::embedded(),
        Thresholds::new(0.5, 0.9).unwrap(),
    );
    let cfg = GeneratorConfig {
        seed: 3,
        customers: 2_000,
        merchants: 500,
        ..GeneratorConfig::default()
    };
    let mut malformed = 0;
    for g in Generator::new(cfg, &key).take(20_000) {
        let a = scorer.assess(&g.tx);
        assert!(
            !a.hits.has(Rule::PanUnreadable),
            "{} did not decrypt",
            g.tx.id
        );
        let is_malformed = g.label.scenario == "malformed_pan";
        assert_eq!(
            a.hits.any_hard(),
            is_malformed,
            "{} ({}) pan {}",
            g.tx.id,
            g.label.scenario,
            g.pan
        );
        if !is_malformed {
            let bin = bin_of(g.pan.as_bytes()).unwrap();
            assert_eq!(
                tables::bin_country(bin),
                txpipe_producer::tables::bin_country(&g.pan)
            );
            assert!(!a.hits.has(Rule::UnknownBin));
        }
        malformed += usize::from(is_malformed);
    }
    assert!(malformed > 0, "the sample has malformed PANs");
}
