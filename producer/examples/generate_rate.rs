//! Prints the generator's speed and fraud mix: `cargo run --release -p txpipe-producer
//! --example generate_rate -- [records]` (default 2 000 000). Two figures: generation alone
//! (records/s, PAN sealing included) and generation plus protobuf encoding of tx and label.

use std::collections::BTreeMap;
use std::time::Instant;

use prost::Message;
use txpipe_client::pan::PanKey;
use txpipe_producer::generate::{Generator, GeneratorConfig};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let key = PanKey::insecure_test_key();

    let t = Instant::now();
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    let mut first = 0;
    let mut last = 0;
    for (i, r) in Generator::new(GeneratorConfig::default(), &key)
        .take(n)
        .enumerate()
    {
        if i == 0 {
            first = r.tx.event_time_us;
        }
        last = r.tx.event_time_us;
        *by.entry(r.label.scenario).or_default() += 1;
    }
    let gen_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut bytes = 0usize;
    for r in Generator::new(GeneratorConfig::default(), &key).take(n) {
        bytes += r.tx.encode_to_vec().len() + r.label.encode_to_vec().len();
    }
    let enc_s = t.elapsed().as_secs_f64();

    let fraud: u64 = by
        .iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(_, v)| v)
        .sum();
    println!(
        "records: {n}, simulated days: {:.1}",
        (last - first) as f64 / 86_400e6
    );
    println!(
        "fraud: {fraud} ({:.3} %) by scenario: {by:?}",
        100.0 * fraud as f64 / n as f64
    );
    println!("generate: {:.0} records/s ({gen_s:.2} s)", n as f64 / gen_s);
    println!(
        "generate + encode: {:.0} records/s ({enc_s:.2} s), {:.0} bytes/record (tx + label)",
        n as f64 / enc_s,
        bytes as f64 / n as f64
    );
}
