//! Prints how fast a pre-featurised CSV file is read: `cargo run --release -p txpipe-producer
//! --example features_rate -- /path/to/creditcard.csv [runs]` (default 3 runs). Three figures
//! per run, rows/s: the CSV reader alone (records split into fields, no parsing), the
//! features format (rows → `Transaction` + `Label`), and that plus protobuf encoding of both.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use txpipe_client::pan::PanKey;
use txpipe_producer::features::FeatureColumns;
use txpipe_producer::input::{FileSource, InputFormat};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().expect("usage: features_rate FILE [runs]"));
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let key = Arc::new(PanKey::insecure_test_key());
    let cols = FeatureColumns::default();
    for run in 1..=runs {
        let t = Instant::now();
        let mut reader = csv::Reader::from_path(&path).expect("readable CSV");
        let mut record = csv::StringRecord::new();
        let mut rows = 0u64;
        while reader.read_record(&mut record).expect("valid CSV") {
            rows += 1;
        }
        let csv_rate = rows as f64 / t.elapsed().as_secs_f64();

        let t = Instant::now();
        let source =
            FileSource::open_with(&path, InputFormat::Features, key.clone(), &cols).unwrap();
        let (mut good, mut bad, mut fraud) = (0u64, 0u64, 0u64);
        for item in source {
            match item.unwrap() {
                Ok(r) => {
                    good += 1;
                    fraud += u64::from(r.label.is_some_and(|l| l.is_fraud));
                }
                Err(_) => bad += 1,
            }
        }
        let parse_rate = good as f64 / t.elapsed().as_secs_f64();

        let t = Instant::now();
        let source =
            FileSource::open_with(&path, InputFormat::Features, key.clone(), &cols).unwrap();
        let mut bytes = 0usize;
        for r in source.flatten().flatten() {
            bytes += r.tx.encode_to_vec().len();
            bytes += r.label.map_or(0, |l| l.encode_to_vec().len());
        }
        let encode_rate = good as f64 / t.elapsed().as_secs_f64();

        println!(
            "run {run}: {good} rows ({fraud} fraud, {bad} bad): csv reader {csv_rate:.0} rows/s, \
             features parse {parse_rate:.0} rows/s, parse + encode {encode_rate:.0} rows/s \
             ({:.1} bytes/row)",
            bytes as f64 / good as f64
        );
    }
}
