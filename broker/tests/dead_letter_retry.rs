//! A dead-letter move that fails is retried until it lands, and the record is dead-lettered
//! once (issue 13: a failed dead-letter append used to pin the ack floor until the leader
//! changed). The failure is injected with the `delivery::dead_letter_append` failpoint, so this
//! file builds only with `--features failpoints`; it holds one test because failpoints are
//! process-wide.
#![cfg(feature = "failpoints")]

mod common;

use std::time::Duration;

use common::*;
use prost::Message;
use txpipe_client::pipeline::v1::DeadLetter;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_failed_dead_letter_append_is_retried_until_the_record_lands_once() {
    // The first three appends to the dead-letter stream fail.
    fail::cfg("delivery::dead_letter_append", "3*return").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    produce(
        &mut c,
        vec![batch(
            "transactions",
            77,
            1,
            vec![rec("tx-0", "value-0"), rec("tx-1", "value-1")],
        )],
    )
    .await
    .unwrap();
    let mut w = TestConsumer::connect(&mut c, "transactions", "w1", 0)
        .await
        .unwrap();
    let d = w.take(2, T).await;
    w.nack_permanent(vec![d[0].offset], "undecodable Transaction")
        .await;
    w.ack(vec![d[1].offset]).await;
    wait_until(T, "the record dead-lettered and resolved", || {
        let mut c = c.clone();
        async move {
            let i = stream_info(&mut c, "transactions").await;
            i.dead_lettered_total == 1 && i.pending == 0
        }
    })
    .await;
    fail::remove("delivery::dead_letter_append");
    let dl = fetch_all(&mut c, "transactions.dlq").await;
    assert_eq!(dl.len(), 1, "one letter, whatever the retries");
    let letter = DeadLetter::decode(dl[0].record.as_ref().unwrap().value.clone()).unwrap();
    assert_eq!(letter.offset, d[0].offset);
    assert!(letter.reason.contains("undecodable Transaction"));
    let (code, metrics) = http_get(b.admin, "/metrics").await;
    assert_eq!(code, 200);
    let failures: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("txpipe_broker_dead_letter_failures_total{stream=\"transactions\"}")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(failures, 3.0, "three failed moves, counted");
    assert!(
        w.next(Duration::from_millis(300)).await.is_none(),
        "the record was not redelivered while its move was retried"
    );
    b.stop().await;
}
