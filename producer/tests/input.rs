//! CSV and JSON Lines input: good files parse, bad rows carry the right line numbers.

use std::path::PathBuf;
use std::sync::Arc;

use txpipe_client::pan::PanKey;
use txpipe_client::pipeline::v1::{Channel, EntryMode};
use txpipe_producer::input::{BadRow, FileSource, InputError, InputFormat, InputRecord};

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn read(name: &str) -> (Vec<InputRecord>, Vec<BadRow>) {
    let path = testdata(name);
    let format = InputFormat::from_path(&path).unwrap();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for item in FileSource::open(&path, format, Arc::new(PanKey::insecure_test_key())).unwrap() {
        match item.unwrap() {
            Ok(r) => good.push(r),
            Err(b) => bad.push(b),
        }
    }
    (good, bad)
}

#[test]
fn good_csv_parses_every_column_and_seals_the_pan() {
    let (good, bad) = read("good.csv");
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(good.len(), 5);
    let key = PanKey::insecure_test_key();
    let t = &good[0].tx;
    assert_eq!(t.id, "f-0001");
    assert_eq!(t.event_time_us, 1_735_809_300_000_000);
    assert_eq!(
        key.open(&t.id, &t.pan_encrypted).unwrap(),
        b"4111111111111111"
    );
    assert_eq!((t.expiry_month, t.expiry_year), (4, 2027));
    assert_eq!(t.amount_minor, 1234);
    assert_eq!(
        (t.mcc, t.merchant_country.as_str(), t.local_hour),
        (5411, "FR", 10)
    );
    assert_eq!(t.channel, Channel::CardPresent as i32);
    assert_eq!(t.entry_mode, EntryMode::Chip as i32);
    assert_eq!(good[0].label.as_ref().map(|l| l.is_fraud), Some(false));

    let t = &good[1].tx;
    assert_eq!(
        t.event_time_us, 1_735_808_400_500_000,
        "offset +01:00 and a fraction"
    );
    assert_eq!(
        key.open(&t.id, &t.pan_encrypted).unwrap(),
        b"5555555555554444"
    );
    assert_eq!(
        (t.amount_minor, t.three_ds, t.cvv_present),
        (25_000, true, true)
    );
    assert_eq!(t.local_hour, 9, "defaults to the UTC hour of event_time");
    assert!(good[1].label.is_none(), "no label columns filled in");

    let l = good[2].label.as_ref().unwrap();
    assert!(l.is_fraud);
    assert_eq!(l.scenario, "stolen_card_night");
    assert_eq!(l.transaction_id, "f-0003");
    assert_eq!(good[4].tx.channel, Channel::Moto as i32);
    assert_eq!(good[4].tx.amount_minor, 150);
}

#[test]
fn good_jsonl_accepts_numbers_strings_nulls_and_blank_lines() {
    let (good, bad) = read("good.jsonl");
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(good.len(), 3);
    assert_eq!(good[0].tx.amount_minor, 1234);
    assert_eq!(good[1].tx.currency, "EUR");
    assert_eq!(good[1].tx.merchant_country, "DE");
    assert_eq!(good[1].tx.mcc, 5999);
    assert_eq!(good[2].tx.amount_minor, 199_990);
    assert_eq!(good[2].tx.event_time_us, 1_735_783_200_000_000);
    assert_eq!(good[2].tx.terminal_id, "");
    assert_eq!(
        good[2].label.as_ref().unwrap().scenario,
        "stolen_card_night"
    );
}

#[test]
fn bad_csv_rows_are_reported_with_their_line_number_and_column() {
    let (good, bad) = read("bad.csv");
    let ids: Vec<&str> = good.iter().map(|r| r.tx.id.as_str()).collect();
    assert_eq!(ids, ["b-0001", "b-0003", "b-0006", "b-0008"]);
    let where_: Vec<(u64, Option<&str>)> =
        bad.iter().map(|b| (b.line, b.column.as_deref())).collect();
    assert_eq!(
        where_,
        [
            (3, Some("amount")),
            (5, None),
            (6, Some("channel")),
            (9, Some("expiry"))
        ]
    );
    assert!(bad[0].reason.contains("more than 2 decimal"), "{}", bad[0]);
    assert!(bad[1].reason.contains("expected 16 fields"), "{}", bad[1]);
    assert_eq!(
        bad[2].to_string(),
        "line 6, column channel: \"teleport\" is not card_present, ecommerce or moto"
    );
}

#[test]
fn bad_jsonl_rows_are_reported_with_their_line_number_and_column() {
    let (good, bad) = read("bad.jsonl");
    assert_eq!(good.len(), 2);
    let where_: Vec<(u64, Option<&str>)> =
        bad.iter().map(|b| (b.line, b.column.as_deref())).collect();
    assert_eq!(where_, [(2, None), (4, Some("pan")), (5, Some("mcc"))]);
    assert!(bad[0].reason.starts_with("invalid JSON"));
}

#[test]
fn a_csv_header_without_required_columns_is_refused_before_any_row() {
    let err = FileSource::open(
        &testdata("missing_column.csv"),
        InputFormat::Csv,
        Arc::new(PanKey::insecure_test_key()),
    )
    .unwrap_err();
    match err {
        InputError::MissingColumns { missing, .. } => assert_eq!(missing, ["pan"]),
        other => panic!("unexpected {other}"),
    }
}

/// Reads `path` (format from its extension) into good and bad rows.
fn read_path(path: &std::path::Path) -> (Vec<InputRecord>, Vec<BadRow>) {
    let format = InputFormat::from_path(path).unwrap();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for item in FileSource::open(path, format, Arc::new(PanKey::insecure_test_key())).unwrap() {
        match item.unwrap() {
            Ok(r) => good.push(r),
            Err(b) => bad.push(b),
        }
    }
    (good, bad)
}

#[test]
fn a_duplicate_transaction_id_is_a_bad_row_naming_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["good.csv", "good.jsonl"] {
        let text = std::fs::read_to_string(testdata(name)).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        // CSV: the header is line 1, so the first row is line 2; JSON Lines: line 1.
        let first = usize::from(name.ends_with(".csv"));
        let mut dup = lines.clone();
        dup.push(lines[first]);
        let path = dir.path().join(name);
        std::fs::write(&path, dup.join("\n") + "\n").unwrap();
        let (good, bad) = read_path(&path);
        assert_eq!(good.len(), lines.len() - first, "{name}");
        assert_eq!(bad.len(), 1, "{name}: {bad:?}");
        let id = &good[0].tx.id;
        assert_eq!(bad[0].line, dup.len() as u64, "{name}");
        assert_eq!(bad[0].column.as_deref(), Some("id"));
        assert_eq!(
            bad[0].reason,
            format!(
                "duplicate transaction id {id:?} (first on line {})",
                first + 1
            ),
            "{name}"
        );
    }
}
