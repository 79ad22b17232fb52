//! Produce: durability, idempotence across restarts, key dedupe, error codes.
mod common;

use common::*;
use txpipe_client::broker::v1::FetchRequest;

#[tokio::test]
async fn produced_batches_are_answered_in_order_with_dense_offsets_and_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let batches = (1..=20)
        .map(|s| {
            batch(
                "labels",
                5,
                s,
                vec![rec(&format!("k{s}a"), "v"), rec(&format!("k{s}b"), "v")],
            )
        })
        .collect();
    let resp = produce(&mut c, batches).await.unwrap();
    for (i, r) in resp.iter().enumerate() {
        assert_eq!(r.sequence, i as u64 + 1);
        assert_eq!(r.base_offset, 2 * i as u64);
        assert_eq!(r.stored, 2);
        assert!(!r.duplicate);
    }
    // An answered batch was fsynced: it survives an abrupt stop (no clean shutdown, no snapshot).
    b.crash();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let all = fetch_all(&mut c, "labels").await;
    assert_eq!(all.len(), 40);
    assert_eq!(all[39].offset, 39);
    assert_eq!(&all[39].record.as_ref().unwrap().key[..], b"k20b");
}

#[tokio::test]
async fn an_idempotent_retry_after_a_broker_restart_is_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let first = produce(
        &mut c,
        vec![
            batch("transactions", 42, 1, vec![rec("tx-1", "a")]),
            batch("transactions", 42, 2, vec![rec("tx-2", "b")]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(first[1].base_offset, 1);
    b.crash();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let retry = produce(
        &mut c,
        vec![
            batch("transactions", 42, 2, vec![rec("tx-2", "b")]),
            batch("transactions", 42, 3, vec![rec("tx-3", "c")]),
        ],
    )
    .await
    .unwrap();
    assert!(retry[0].duplicate, "the retried batch is recognised");
    assert_eq!(
        retry[0].base_offset, 1,
        "the retry is answered with the original offset"
    );
    assert!(!retry[1].duplicate);
    assert_eq!(retry[1].base_offset, 2);
    assert_eq!(stream_info(&mut c, "transactions").await.end_offset, 3);
    // Also after a clean restart (state from the snapshot rather than the log).
    b.stop().await;
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let again = produce(
        &mut c,
        vec![batch("transactions", 42, 3, vec![rec("tx-3", "c")])],
    )
    .await
    .unwrap();
    assert!(again[0].duplicate);
    assert_eq!(stream_info(&mut c, "transactions").await.end_offset, 3);
}

#[tokio::test]
async fn a_sequence_gap_is_out_of_range_with_expected_and_got() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let err = produce(
        &mut c,
        vec![
            batch("labels", 7, 1, vec![rec("a", "1")]),
            batch("labels", 7, 3, vec![rec("b", "1")]),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert!(
        err.message().contains("out of order sequence")
            && err.message().contains("expected 2, got 3"),
        "{err}"
    );
    assert_eq!(stream_info(&mut c, "labels").await.end_offset, 1);
}

#[tokio::test]
async fn decisions_with_an_already_stored_key_are_dropped_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let r = produce(
        &mut c,
        vec![batch(
            "decisions",
            1,
            1,
            vec![rec("tx-1", "approve"), rec("tx-2", "decline")],
        )],
    )
    .await
    .unwrap();
    assert_eq!((r[0].stored, r[0].deduplicated), (2, 0));
    let r = produce(
        &mut c,
        vec![batch(
            "decisions",
            2,
            1,
            vec![rec("tx-2", "approve again"), rec("tx-3", "review")],
        )],
    )
    .await
    .unwrap();
    assert_eq!(
        (r[0].stored, r[0].deduplicated, r[0].base_offset),
        (1, 1, 2)
    );
    b.crash();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let r = produce(
        &mut c,
        vec![batch(
            "decisions",
            3,
            1,
            vec![rec("tx-1", "x"), rec("tx-3", "y"), rec("tx-4", "z")],
        )],
    )
    .await
    .unwrap();
    assert_eq!((r[0].stored, r[0].deduplicated), (1, 2));
    let all = fetch_all(&mut c, "decisions").await;
    let keys: Vec<String> = all
        .iter()
        .map(|f| String::from_utf8(f.record.as_ref().unwrap().key.to_vec()).unwrap())
        .collect();
    assert_eq!(keys, ["tx-1", "tx-2", "tx-3", "tx-4"]);
    assert_eq!(
        &all[2].record.as_ref().unwrap().value[..],
        b"review",
        "offsets map to the kept records"
    );
    b.stop().await;
}

#[tokio::test]
async fn malformed_oversized_and_unknown_stream_requests_get_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.max_batch_bytes = 4096;
    cfg.max_batch_records = 10;
    let b = TestBroker::start(cfg);
    let mut c = b.client().await;
    let code = |r: Result<Vec<_>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(produce(&mut c, vec![batch("", 0, 0, vec![rec("a", "b")])]).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(produce(&mut c, vec![batch("labels", 0, 0, vec![])]).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(produce(&mut c, vec![batch("labels", 9, 0, vec![rec("a", "b")])]).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(produce(&mut c, vec![batch("nope", 0, 0, vec![rec("a", "b")])]).await),
        tonic::Code::NotFound
    );
    let big = "x".repeat(5000);
    assert_eq!(
        code(produce(&mut c, vec![batch("labels", 0, 0, vec![rec("a", &big)])]).await),
        tonic::Code::ResourceExhausted
    );
    let many = (0..11).map(|i| rec(&i.to_string(), "v")).collect();
    assert_eq!(
        code(produce(&mut c, vec![batch("labels", 0, 0, many)]).await),
        tonic::Code::ResourceExhausted
    );
    // Batches before a rejected one are still answered, in order.
    let mut inbound = c
        .produce(tokio_stream::iter(vec![
            batch("labels", 0, 0, vec![rec("ok", "1")]),
            batch("nope", 0, 0, vec![rec("a", "b")]),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inbound.message().await.unwrap().unwrap().stored, 1);
    assert_eq!(
        inbound.message().await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    let e = c
        .fetch(FetchRequest {
            stream: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = c
        .get_stream(txpipe_client::broker::v1::GetStreamRequest {
            stream: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // Consume: first message must be subscribe; unknown stream; wrong group; not a work queue.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(txpipe_client::broker::v1::ConsumeRequest {
        kind: Some(txpipe_client::broker::v1::consume_request::Kind::Ack(
            txpipe_client::broker::v1::Ack { offsets: vec![1] },
        )),
    })
    .await
    .unwrap();
    let e = c
        .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("subscribe"), "{e}");
    assert_eq!(
        TestConsumer::connect(&mut c, "nope", "w", 0)
            .await
            .err()
            .unwrap()
            .code(),
        tonic::Code::NotFound
    );
    assert_eq!(
        TestConsumer::connect(&mut c, "decisions", "w", 0)
            .await
            .err()
            .unwrap()
            .code(),
        tonic::Code::InvalidArgument
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(txpipe_client::broker::v1::ConsumeRequest {
        kind: Some(txpipe_client::broker::v1::consume_request::Kind::Subscribe(
            txpipe_client::broker::v1::Subscribe {
                stream: "transactions".into(),
                group: "other".into(),
                consumer_name: String::new(),
                window: 0,
            },
        )),
    })
    .await
    .unwrap();
    assert_eq!(
        c.consume(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    b.stop().await;
}

/// One batch of a registered producer.
fn reg_batch(
    stream: &str,
    r: &txpipe_client::broker::v1::InitProducerResponse,
    sequence: u64,
    position: u64,
    records: Vec<txpipe_client::broker::v1::Record>,
) -> txpipe_client::broker::v1::ProduceRequest {
    txpipe_client::broker::v1::ProduceRequest {
        stream: stream.into(),
        producer_id: r.producer_id,
        epoch: r.epoch,
        sequence,
        position,
        records,
    }
}

#[tokio::test]
async fn a_reused_name_gets_a_new_epoch_that_fences_the_old_producer() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let old = init_producer(&mut c, "transactions", "job-a")
        .await
        .unwrap();
    assert_eq!((old.epoch, old.last_position, old.next_sequence), (1, 0, 1));
    produce(
        &mut c,
        vec![reg_batch(
            "transactions",
            &old,
            1,
            10,
            vec![rec("tx-1", "a")],
        )],
    )
    .await
    .unwrap();
    // The same name again (a restarted process): same id, next epoch, its last position.
    let new = init_producer(&mut c, "transactions", "job-a")
        .await
        .unwrap();
    assert_eq!(
        (new.producer_id, new.epoch, new.last_position),
        (old.producer_id, 2, 10)
    );
    let other = init_producer(&mut c, "transactions", "job-b")
        .await
        .unwrap();
    assert_ne!(other.producer_id, old.producer_id);
    // The old instance is fenced, also for a batch it would legitimately send next.
    let err = produce(
        &mut c,
        vec![reg_batch(
            "transactions",
            &old,
            2,
            20,
            vec![rec("tx-2", "a")],
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("fenced")
            && err.message().contains("epoch 1")
            && err.message().contains("epoch 2"),
        "{err}"
    );
    // The new one starts its sequences at 1.
    let r = produce(
        &mut c,
        vec![reg_batch(
            "transactions",
            &new,
            1,
            20,
            vec![rec("tx-2", "a")],
        )],
    )
    .await
    .unwrap();
    assert!(!r[0].duplicate);
    assert_eq!(stream_info(&mut c, "transactions").await.end_offset, 2);
    // The registration and the position survive a crash.
    b.crash();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let again = init_producer(&mut c, "transactions", "job-a")
        .await
        .unwrap();
    assert_eq!(
        (again.producer_id, again.epoch, again.last_position),
        (old.producer_id, 3, 20)
    );
}

#[tokio::test]
async fn a_restarted_sequence_with_different_records_is_rejected_and_an_exact_retry_is_a_duplicate()
{
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let p = init_producer(&mut c, "labels", "p").await.unwrap();
    let first = vec![
        reg_batch("labels", &p, 1, 1, vec![rec("a", "1")]),
        reg_batch("labels", &p, 2, 2, vec![rec("b", "1")]),
        reg_batch("labels", &p, 3, 3, vec![rec("c", "1")]),
    ];
    produce(&mut c, first.clone()).await.unwrap();
    // Exact retry of the last batches: duplicates with the original offsets.
    let retry = produce(&mut c, first[1..].to_vec()).await.unwrap();
    assert!(retry.iter().all(|r| r.duplicate), "{retry:?}");
    assert_eq!(
        retry.iter().map(|r| r.base_offset).collect::<Vec<_>>(),
        [1, 2]
    );
    // The same id restarting at 1 with other records (issue 12, case 2): rejected.
    let err = produce(
        &mut c,
        vec![reg_batch("labels", &p, 1, 4, vec![rec("z", "new")])],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(
        err.message()
            .contains("sequence 1 reused with different records"),
        "{err}"
    );
    // An unknown id is told to register.
    let stranger = txpipe_client::broker::v1::InitProducerResponse {
        producer_id: 999,
        epoch: 1,
        ..Default::default()
    };
    let err = produce(
        &mut c,
        vec![reg_batch("labels", &stranger, 1, 0, vec![rec("y", "1")])],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(
        err.message()
            .contains("unknown producer id 999 on stream \"labels\": call InitProducer"),
        "{err}"
    );
    assert_eq!(stream_info(&mut c, "labels").await.end_offset, 3);
    let names: Vec<_> = fetch_all(&mut c, "labels")
        .await
        .iter()
        .map(|f| f.record.as_ref().unwrap().key.clone())
        .collect();
    assert_eq!(names, [&b"a"[..], b"b", b"c"]);
}
