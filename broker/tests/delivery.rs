//! Consume: acks, windows, redelivery on disconnect / deadline / nack, dead letters, restarts.
//!
//! These run through a real broker. The rules themselves, including deterministic versions of
//! the "nothing more arrives within 300 ms" checks below, are unit-tested on the pure core in
//! `broker/src/delivery/queue/tests.rs`.
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use prost::Message;
use tonic::transport::Channel;
use txpipe_client::broker::v1::broker_client::BrokerClient;
use txpipe_client::pipeline::v1::DeadLetter;

const T: Duration = Duration::from_secs(10);

async fn produce_n(b: &TestBroker, n: usize) {
    let mut c = b.client().await;
    let recs: Vec<_> = (0..n)
        .map(|i| rec(&format!("tx-{i}"), &format!("value-{i}")))
        .collect();
    for (s, chunk) in recs.chunks(100).enumerate() {
        produce(
            &mut c,
            vec![batch("transactions", 77, s as u64 + 1, chunk.to_vec())],
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn produced_messages_are_delivered_once_acked_and_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    produce_n(&b, 250).await;
    let mut c = b.client().await;
    let mut w = TestConsumer::connect(&mut c, "transactions", "w1", 0)
        .await
        .unwrap();
    assert_eq!(w.subscribed.window, 1000);
    assert_eq!(w.subscribed.group, "workers");
    let d = w.take(250, T).await;
    let offsets: HashSet<u64> = d.iter().map(|d| d.offset).collect();
    assert_eq!(offsets.len(), 250);
    assert!(d.iter().all(|d| d.attempt == 1));
    assert_eq!(
        &d[7].record.as_ref().unwrap().value[..],
        format!("value-{}", d[7].offset).as_bytes()
    );
    w.ack(offsets.into_iter().collect()).await;
    wait_until(T, "all acked", || {
        let mut c = c.clone();
        async move {
            let i = stream_info(&mut c, "transactions").await;
            i.pending == 0 && i.ack_floor == 250 && i.acked_total == 250
        }
    })
    .await;
    assert!(
        w.next(Duration::from_millis(300)).await.is_none(),
        "nothing is redelivered"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_consumer_never_has_more_unacked_deliveries_than_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    produce_n(&b, 100).await;
    let mut c = b.client().await;
    let mut w = TestConsumer::connect(&mut c, "transactions", "w1", 10)
        .await
        .unwrap();
    let mut unacked: Vec<u64> = w.take(10, T).await.iter().map(|d| d.offset).collect();
    assert_eq!(unacked.len(), 10);
    assert!(
        w.next(Duration::from_millis(300)).await.is_none(),
        "window full: no more deliveries"
    );
    let mut seen = unacked.len();
    while seen < 100 {
        // Ack three, expect at most three more.
        let acked: Vec<u64> = unacked.drain(..3.min(unacked.len())).collect();
        w.ack(acked).await;
        let more = w.next(T).await.expect("deliveries after acks");
        seen += more.len();
        unacked.extend(more.iter().map(|d| d.offset));
        assert!(
            unacked.len() <= 10,
            "{} unacked with window 10",
            unacked.len()
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn a_disconnected_consumers_in_flight_messages_go_to_another_consumer_as_attempt_two() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    produce_n(&b, 20).await;
    let mut c = b.client().await;
    let mut w1 = TestConsumer::connect(&mut c, "transactions", "w1", 20)
        .await
        .unwrap();
    let held: HashSet<u64> = w1.take(20, T).await.iter().map(|d| d.offset).collect();
    let mut w2 = TestConsumer::connect(&mut c, "transactions", "w2", 100)
        .await
        .unwrap();
    assert!(
        w2.next(Duration::from_millis(200)).await.is_none(),
        "w1 holds everything"
    );
    drop(w1);
    let d = w2.take(20, T).await;
    assert_eq!(d.iter().map(|d| d.offset).collect::<HashSet<_>>(), held);
    assert!(
        d.iter().all(|d| d.attempt == 2),
        "{:?}",
        d.iter().map(|d| d.attempt).collect::<Vec<_>>()
    );
    b.stop().await;
}

#[tokio::test]
async fn an_unacked_delivery_is_redelivered_after_the_ack_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.ack_deadline_ms = 200;
    let b = TestBroker::start(cfg);
    produce_n(&b, 1).await;
    let mut c = b.client().await;
    let mut w = TestConsumer::connect(&mut c, "transactions", "w1", 0)
        .await
        .unwrap();
    assert_eq!(w.subscribed.ack_deadline_ms, 200);
    let first = w.take(1, T).await;
    assert_eq!(first[0].attempt, 1);
    let again = w.take(1, T).await;
    assert_eq!((again[0].offset, again[0].attempt), (first[0].offset, 2));
    w.ack(vec![again[0].offset]).await;
    wait_until(T, "acked", || {
        let mut c = c.clone();
        async move { stream_info(&mut c, "transactions").await.pending == 0 }
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn a_nacked_delivery_is_redelivered_after_its_delay() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    produce_n(&b, 2).await;
    let mut c = b.client().await;
    let mut w = TestConsumer::connect(&mut c, "transactions", "w1", 0)
        .await
        .unwrap();
    let d = w.take(2, T).await;
    let started = std::time::Instant::now();
    w.nack(vec![d[0].offset], 300, "try later").await;
    w.ack(vec![d[1].offset]).await;
    let again = w.take(1, T).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "redelivered after {:?}",
        started.elapsed()
    );
    assert_eq!((again[0].offset, again[0].attempt), (d[0].offset, 2));
    b.stop().await;
}

/// Waits until `transactions` has dead-lettered one message and has nothing pending, then
/// reads `transactions.dlq`, which must hold exactly that one letter: its key and the letter.
async fn the_one_dead_letter(c: &mut BrokerClient<Channel>) -> (bytes::Bytes, DeadLetter) {
    wait_until(T, "dead-lettered", || {
        let mut c = c.clone();
        async move {
            let i = stream_info(&mut c, "transactions").await;
            i.dead_lettered_total == 1 && i.pending == 0
        }
    })
    .await;
    let dl = fetch_all(c, "transactions.dlq").await;
    assert_eq!(dl.len(), 1);
    let r = dl[0].record.as_ref().unwrap();
    (r.key.clone(), DeadLetter::decode(r.value.clone()).unwrap())
}

#[tokio::test]
async fn a_message_failing_max_deliveries_times_lands_in_the_dead_letter_stream_and_is_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.max_deliveries = 3;
    let b = TestBroker::start(cfg);
    produce_n(&b, 1).await;
    let mut c = b.client().await;
    let mut w = TestConsumer::connect(&mut c, "transactions", "w1", 0)
        .await
        .unwrap();
    for attempt in 1..=3 {
        let d = w.take(1, T).await;
        assert_eq!(d[0].attempt, attempt);
        w.nack(vec![d[0].offset], 0, "cannot parse").await;
    }
    let (key, letter) = the_one_dead_letter(&mut c).await;
    assert_eq!(&key[..], b"tx-0");
    assert_eq!(
        (letter.stream.as_str(), letter.offset, letter.attempts),
        ("transactions", 0, 3)
    );
    assert!(letter.reason.contains("cannot parse"), "{}", letter.reason);
    assert_eq!(letter.original_value, b"value-0");
    assert!(
        w.next(Duration::from_millis(300)).await.is_none(),
        "not redelivered again"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_permanent_nack_dead_letters_on_the_first_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.max_deliveries = 5;
    let b = TestBroker::start(cfg);
    produce_n(&b, 2).await;
    let mut c = b.client().await;
    let mut w = TestConsumer::connect(&mut c, "transactions", "w1", 0)
        .await
        .unwrap();
    let d = w.take(2, T).await;
    assert!(d.iter().all(|d| d.attempt == 1));
    w.nack_permanent(vec![d[0].offset], "undecodable Transaction")
        .await;
    w.ack(vec![d[1].offset]).await;
    let (_, letter) = the_one_dead_letter(&mut c).await;
    assert_eq!((letter.offset, letter.attempts), (d[0].offset, 1));
    assert!(
        letter.reason.contains("undecodable Transaction") && letter.reason.contains("permanent"),
        "{}",
        letter.reason
    );
    assert!(
        w.next(Duration::from_millis(300)).await.is_none(),
        "a permanently failed message is not redelivered"
    );
    b.stop().await;
}

#[tokio::test]
async fn acked_messages_are_not_redelivered_after_a_restart_but_unacked_ones_are() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    produce_n(&b, 300).await;
    let mut c = b.client().await;
    let mut w = TestConsumer::connect(&mut c, "transactions", "w1", 0)
        .await
        .unwrap();
    let d = w.take(300, T).await;
    let acked: Vec<u64> = d.iter().map(|d| d.offset).filter(|o| o % 3 != 0).collect();
    w.ack(acked.clone()).await;
    wait_until(T, "acks durable", || {
        let mut c = c.clone();
        async move { stream_info(&mut c, "transactions").await.acked_total == 200 }
    })
    .await;
    b.crash();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let mut w = TestConsumer::connect(&mut c, "transactions", "w1", 0)
        .await
        .unwrap();
    let d = w.take(100, T).await;
    let got: HashSet<u64> = d.iter().map(|d| d.offset).collect();
    assert_eq!(
        got,
        (0..300).filter(|o| o % 3 == 0).collect::<HashSet<u64>>()
    );
    assert!(w.next(Duration::from_millis(300)).await.is_none());
    b.stop().await;
}
