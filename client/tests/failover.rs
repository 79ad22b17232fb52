//! Leader following and failover of the idempotent producer and of unary calls, against fake
//! broker nodes (see `common`).

mod common;

use std::time::{Duration, Instant};

use common::{FakeBroker, Node, Role, batch, dead_addr, wait_for};
use tonic::Code;
use txpipe_client::broker::v1::{GetStreamRequest, ProduceResponse};
use txpipe_client::leader::{LeaderConfig, LeaderError, LeaderRouter};
use txpipe_client::produce::{
    ProduceError, Producer, ProducerConfig, ProducerIdentity, Receipt, Registration,
};

const S: &str = "transactions";

fn config(addrs: Vec<String>, producer_id: u64, in_flight: usize) -> ProducerConfig {
    ProducerConfig {
        identity: ProducerIdentity::Registered(Registration {
            producer_id,
            epoch: 1,
            last_position: 0,
        }),
        max_in_flight: in_flight,
        reconnect_deadline: Duration::from_secs(20),
        ..ProducerConfig::new(addrs, S)
    }
}

/// Sends batches `1..=n` and returns their receipts (sending waits on back-pressure).
async fn send_all(p: &Producer, n: u64) -> Vec<Receipt> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(p.send(batch(i)).await.expect("producer open"));
    }
    out
}

/// Awaits every receipt: each resolves once, with its own sequence.
async fn resolved(receipts: Vec<Receipt>) -> Vec<ProduceResponse> {
    let mut out = Vec::new();
    for (i, r) in receipts.into_iter().enumerate() {
        let resp = tokio::time::timeout(Duration::from_secs(20), r)
            .await
            .expect("receipt resolves")
            .expect("receipt sender kept until resolution")
            .expect("batch acknowledged");
        assert_eq!(resp.sequence, i as u64 + 1);
        out.push(resp);
    }
    out
}

#[tokio::test]
async fn a_follower_hint_leads_the_producer_to_the_leader() {
    let b = Node::start(FakeBroker::new("b")).await;
    let a = FakeBroker::new("a");
    a.set_role(S, Role::NotLeader(Some(b.addr.clone())));
    let a = Node::start(a).await;
    // A live node between a and b in the list, which must not be asked: the hint skips it.
    let x = FakeBroker::new("x");
    x.set_role(S, Role::NotLeader(None));
    let x = Node::start(x).await;

    let p = Producer::connect(config(vec![a.uri(), x.uri(), b.uri()], 7, 8))
        .await
        .unwrap();
    let receipts = send_all(&p, 40).await;
    let acks = resolved(receipts).await;
    assert!(acks.iter().all(|r| !r.duplicate && r.stored == 1));
    let stats = p.close().await.unwrap();
    assert_eq!(stats.batches_acked, 40);
    assert_eq!(stats.records_stored, 40);
    assert_eq!(b.fake.sequences(7), (1..=40).collect::<Vec<_>>());
    assert_eq!(a.fake.produce_calls(S), 1, "a answered once with its hint");
    assert!(a.fake.sequences(7).is_empty());
    assert_eq!(
        x.fake.produce_calls(S),
        0,
        "the hint was followed, not the list"
    );
}

#[tokio::test]
async fn a_leader_dying_mid_stream_makes_the_producer_resend_unacked_batches_with_their_sequences()
{
    // a leads and acks batches 1..=3, then withholds acks: 4.. stay in flight.
    let a = FakeBroker::new("a");
    a.st().ack_limit = Some(3);
    let a = Node::start(a).await;
    // b is the next leader. The replicated dedupe table says 4 and 5 were committed by a
    // (their acks were lost with a).
    let b = FakeBroker::new("b");
    b.st().last_sequence.insert((S.into(), 99), 5);
    let b = Node::start(b).await;

    let p = Producer::connect(config(vec![a.uri(), b.uri()], 99, 8))
        .await
        .unwrap();
    let (receipts, ()) = tokio::join!(send_all(&p, 20), async {
        // 3 acked + 8 in flight: a has seen 1..=11 and the producer cannot send 12.
        wait_for("a to receive 11 batches", || {
            a.fake.sequences(99).len() == 11
        })
        .await;
        assert_eq!(a.fake.sequences(99), (1..=11).collect::<Vec<_>>());
        a.kill().await;
    });
    let acks = resolved(receipts).await;
    let dup: Vec<u64> = acks
        .iter()
        .filter(|r| r.duplicate)
        .map(|r| r.sequence)
        .collect();
    assert_eq!(dup, vec![4, 5], "batches a committed are not stored twice");
    // b saw every unacknowledged batch again, same producer id, same sequences, in order,
    // then the rest; nothing acked by a was resent.
    assert_eq!(b.fake.sequences(99), (4..=20).collect::<Vec<_>>());
    let stats = p.close().await.unwrap();
    assert_eq!(stats.batches_acked, 20);
    assert_eq!(stats.duplicate_batches, 2);
    assert_eq!(stats.records_stored, 18);
    assert!(stats.reconnects >= 1);
}

#[tokio::test]
async fn leadership_moving_mid_stream_is_followed_and_duplicates_are_dropped() {
    let c = Node::start(FakeBroker::new("c")).await;
    // b acks 6 batches then steps down, naming c, ending the open Produce call.
    let b = FakeBroker::new("b");
    b.st().step_down_after = Some((6, Some(c.addr.clone())));
    let b = Node::start(b).await;

    let p = Producer::connect(config(vec![b.uri()], 5, 4))
        .await
        .unwrap();
    let receipts = send_all(&p, 30).await;
    let acks = resolved(receipts).await;
    assert!(acks.iter().all(|r| !r.duplicate));
    let stats = p.close().await.unwrap();
    assert_eq!(stats.batches_acked, 30);
    assert_eq!(stats.records_stored, 30);
    assert_eq!(b.fake.st().acked, 6);
    // Batches sent to b after its last ack were resent to c (not in the address list), in
    // order, with their sequences.
    assert_eq!(c.fake.sequences(5), (7..=30).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_hint_naming_an_address_outside_the_list_is_followed() {
    let b = Node::start(FakeBroker::new("b")).await;
    let a = FakeBroker::new("a");
    a.set_default_role(Role::NotLeader(Some(b.addr.clone())));
    let a = Node::start(a).await;
    let p = Producer::connect(config(vec![a.uri()], 3, 4))
        .await
        .unwrap();
    let receipts = send_all(&p, 10).await;
    resolved(receipts).await;
    p.close().await.unwrap();
    assert_eq!(b.fake.sequences(3), (1..=10).collect::<Vec<_>>());

    // Unary calls too, and the router remembers the leader.
    let router = LeaderRouter::new(vec![a.uri()]).unwrap();
    let info = router
        .call(S, Duration::from_secs(10), |mut c| async move {
            c.get_stream(GetStreamRequest { stream: S.into() }).await
        })
        .await
        .unwrap();
    assert_eq!(info.stream.unwrap().group, "b");
    assert_eq!(router.leader_of(S), Some(b.uri()));
}

#[tokio::test]
async fn a_refused_connection_moves_on_to_the_next_address() {
    let b = Node::start(FakeBroker::new("b")).await;
    let dead = dead_addr().await;
    let p = Producer::connect(config(vec![dead, b.addr.clone()], 11, 4))
        .await
        .unwrap();
    let receipts = send_all(&p, 5).await;
    resolved(receipts).await;
    p.close().await.unwrap();
    assert_eq!(b.fake.sequences(11), (1..=5).collect::<Vec<_>>());
}

#[tokio::test]
async fn errors_that_are_not_about_leadership_surface_unchanged_without_retry() {
    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
    ] {
        let a = FakeBroker::new("a");
        a.set_default_role(Role::Reject(code));
        let a = Node::start(a).await;
        let b = Node::start(FakeBroker::new("b")).await;

        let p = Producer::connect(config(vec![a.uri(), b.uri()], 21, 4))
            .await
            .unwrap();
        let r = p.send(batch(1)).await.unwrap();
        match r.await.unwrap() {
            Err(ProduceError::Rejected {
                code: c,
                sequence,
                message,
                ..
            }) => {
                assert_eq!(c, code);
                assert_eq!(sequence, 1);
                assert!(message.contains("a rejects"), "{message}");
            }
            other => panic!("{code:?}: {other:?}"),
        }
        assert!(matches!(
            p.close().await,
            Err(ProduceError::Rejected { .. })
        ));
        assert_eq!(a.fake.produce_calls(S), 1, "{code:?} was not retried");
        assert_eq!(b.fake.produce_calls(S), 0, "{code:?} did not fail over");

        let router = LeaderRouter::new(vec![a.uri(), b.uri()]).unwrap();
        let e = router
            .call(S, Duration::from_secs(10), |mut c| async move {
                c.get_stream(GetStreamRequest { stream: S.into() }).await
            })
            .await
            .unwrap_err();
        match e {
            LeaderError::Rejected(s) => {
                assert_eq!(s.code(), code);
                assert_eq!(s.message(), format!("a rejects {S:?}"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.fake.read_calls(S), 1);
        assert_eq!(b.fake.read_calls(S), 0);
    }
}

#[tokio::test]
async fn unary_calls_go_to_each_streams_own_leader_and_remember_it() {
    // a leads transactions, b leads decisions; each hints the other.
    let a = FakeBroker::new("a");
    let b = FakeBroker::new("b");
    let a = Node::start(a).await;
    let b = Node::start(b).await;
    a.fake
        .set_role("decisions", Role::NotLeader(Some(b.addr.clone())));
    b.fake
        .set_role("transactions", Role::NotLeader(Some(a.addr.clone())));
    let router = LeaderRouter::new(vec![b.uri(), a.uri()]).unwrap();
    let get = |stream: &'static str| {
        let router = router.clone();
        async move {
            router
                .call(stream, Duration::from_secs(10), |mut c| async move {
                    c.get_stream(GetStreamRequest {
                        stream: stream.into(),
                    })
                    .await
                })
                .await
                .unwrap()
                .stream
                .unwrap()
                .group
        }
    };
    for _ in 0..3 {
        assert_eq!(get("transactions").await, "a");
        assert_eq!(get("decisions").await, "b");
    }
    // One hint each, then straight to the leader.
    assert_eq!(b.fake.read_calls("transactions"), 1);
    assert_eq!(a.fake.read_calls("transactions"), 3);
    assert_eq!(a.fake.read_calls("decisions"), 1);
    assert_eq!(b.fake.read_calls("decisions"), 3);
    assert_eq!(router.leader_of("transactions"), Some(a.uri()));
    assert_eq!(router.leader_of("decisions"), Some(b.uri()));

    // Leadership of transactions moves to b: the cached leader answers with a hint.
    a.fake
        .set_role("transactions", Role::NotLeader(Some(b.addr.clone())));
    b.fake.set_role("transactions", Role::Leader);
    assert_eq!(get("transactions").await, "b");
    assert_eq!(router.leader_of("transactions"), Some(b.uri()));
}

#[tokio::test]
async fn without_a_leader_calls_give_up_at_the_deadline() {
    let a = FakeBroker::new("a");
    a.set_default_role(Role::NotLeader(None));
    let b = FakeBroker::new("b");
    b.set_default_role(Role::NotLeader(None));
    let a = Node::start(a).await;
    let b = Node::start(b).await;
    let router = LeaderRouter::with_config(
        vec![a.uri(), b.uri()],
        LeaderConfig {
            max_backoff: Duration::from_millis(100),
            ..LeaderConfig::default()
        },
    )
    .unwrap();
    let began = Instant::now();
    let e = router
        .call(S, Duration::from_millis(500), |mut c| async move {
            c.get_stream(GetStreamRequest { stream: S.into() }).await
        })
        .await
        .unwrap_err();
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    match &e {
        LeaderError::Unavailable {
            tried, last_error, ..
        } => {
            assert_eq!(tried, &vec![a.uri(), b.uri()]);
            assert!(last_error.contains("not the leader"), "{last_error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.clone().into_status().code(), Code::Unavailable);
    // Both nodes were asked several times, alternately, with backoff in between.
    assert!(a.fake.read_calls(S) >= 2 && b.fake.read_calls(S) >= 2);

    // The producer gives up the same way and fails its receipts.
    let mut cfg = config(vec![a.uri(), b.uri()], 31, 4);
    cfg.reconnect_deadline = Duration::from_millis(300);
    let p = Producer::connect(cfg).await.unwrap();
    let r = p.send(batch(1)).await.unwrap();
    assert!(matches!(
        r.await.unwrap(),
        Err(ProduceError::Unreachable(_))
    ));
    assert!(matches!(p.close().await, Err(ProduceError::Unreachable(_))));
}

#[tokio::test]
async fn a_named_producer_registers_with_the_leader_and_sends_its_id_epoch_and_positions() {
    let b = Node::start(FakeBroker::new("b")).await;
    let a = FakeBroker::new("a");
    a.set_role(S, Role::NotLeader(Some(b.addr.clone())));
    let a = Node::start(a).await;
    let cfg = ProducerConfig {
        max_in_flight: 4,
        reconnect_deadline: Duration::from_secs(20),
        ..ProducerConfig::named(vec![a.uri(), b.uri()], S, "job-1")
    };
    let p = Producer::connect(cfg.clone()).await.unwrap();
    assert_eq!(
        p.registration(),
        Registration {
            producer_id: 100,
            epoch: 1,
            last_position: 0
        }
    );
    let r = p.send_at(batch(1), 10).await.unwrap();
    r.await.unwrap().unwrap();
    p.close().await.unwrap();
    // A second registration of the name gets the next epoch.
    let p2 = Producer::connect(cfg).await.unwrap();
    assert_eq!((p2.producer_id(), p2.registration().epoch), (101, 2));
    p2.close().await.unwrap();
    assert_eq!(b.fake.st().registrations, ["job-1", "job-1"]);
    assert!(a.fake.st().registrations.is_empty());
    let batches = b.fake.st().batches.clone();
    assert_eq!(batches.len(), 1);
    assert_eq!((batches[0].producer_id, batches[0].epoch), (100, 1));
}

#[tokio::test]
async fn an_idempotent_producer_keeps_at_most_max_in_flight_batches_unacknowledged() {
    // The broker remembers MAX_IN_FLIGHT recent batches per producer; with more in flight, a
    // resend after a failover could be older than every remembered batch and be rejected
    // (OUT_OF_RANGE), which is how a 5-broker chaos run failed. A larger setting is lowered.
    use txpipe_client::produce::MAX_IN_FLIGHT;
    let a = FakeBroker::new("a");
    a.st().ack_limit = Some(0);
    let a = Node::start(a).await;
    let b = Node::start(FakeBroker::new("b")).await;
    let p = Producer::connect(config(vec![a.uri(), b.uri()], 5, 4 * MAX_IN_FLIGHT))
        .await
        .unwrap();
    let n = 3 * MAX_IN_FLIGHT as u64;
    let (receipts, ()) = tokio::join!(send_all(&p, n), async {
        wait_for("a to receive the first window", || {
            a.fake.sequences(5).len() >= MAX_IN_FLIGHT
        })
        .await;
        a.kill().await;
    });
    assert_eq!(
        a.fake.sequences(5),
        (1..=MAX_IN_FLIGHT as u64).collect::<Vec<_>>(),
        "no more than MAX_IN_FLIGHT batches were sent before the first ack"
    );
    resolved(receipts).await;
    assert_eq!(b.fake.sequences(5), (1..=n).collect::<Vec<_>>());
    p.close().await.unwrap();
}

#[tokio::test]
async fn a_leader_that_stops_acknowledging_is_left_after_the_ack_timeout() {
    // a keeps the call open but acknowledges only batches 1..=3, like a paused leader or one
    // cut off from its followers; it does not die.
    let a = FakeBroker::new("a");
    a.st().ack_limit = Some(3);
    let a = Node::start(a).await;
    let b = Node::start(FakeBroker::new("b")).await;
    let cfg = ProducerConfig {
        ack_timeout: Duration::from_millis(300),
        ..config(vec![a.uri(), b.uri()], 99, 4)
    };
    let p = Producer::connect(cfg).await.unwrap();
    let acks = tokio::time::timeout(Duration::from_secs(20), async {
        resolved(send_all(&p, 12).await).await
    })
    .await
    .expect("the producer stayed on a leader that acknowledged nothing");
    assert_eq!(acks.len(), 12);
    // b got every batch a did not acknowledge, in order, with the same sequences.
    assert_eq!(b.fake.sequences(99), (4..=12).collect::<Vec<_>>());
    let stats = p.close().await.unwrap();
    assert_eq!(stats.batches_acked, 12);
    assert!(stats.reconnects >= 1);
}

#[tokio::test]
async fn a_leader_that_stops_acknowledging_is_left_once_another_broker_answers_as_leader() {
    // a acknowledges batches 1..=3 and then nothing (paused, or cut off); b leads now. The ack
    // timeout is far away: only the leader probe can move the producer in time.
    let a = FakeBroker::new("a");
    a.st().ack_limit = Some(3);
    let a = Node::start(a).await;
    let b = Node::start(FakeBroker::new("b")).await;
    let cfg = ProducerConfig {
        ack_timeout: Duration::from_secs(60),
        leader_probe_after: Duration::from_millis(200),
        ..config(vec![a.uri(), b.uri()], 99, 4)
    };
    let p = Producer::connect(cfg).await.unwrap();
    let started = Instant::now();
    let acks = tokio::time::timeout(Duration::from_secs(20), async {
        resolved(send_all(&p, 12).await).await
    })
    .await
    .expect("the producer stayed on a leader that acknowledged nothing");
    assert_eq!(acks.len(), 12);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "left by the probe, not by the 60 s ack timeout"
    );
    assert_eq!(b.fake.sequences(99), (4..=12).collect::<Vec<_>>());
    assert!(
        b.fake.st().read_calls.get(S).copied().unwrap_or(0) >= 1,
        "b was probed"
    );
    assert_eq!(
        a.fake.produce_calls(S),
        1,
        "the hint led to b, not back to a"
    );
    let stats = p.close().await.unwrap();
    assert_eq!(stats.batches_acked, 12);
    assert!(stats.reconnects >= 1);
}

#[tokio::test]
async fn a_slow_leader_is_not_left_while_the_other_brokers_still_follow_it() {
    // a withholds acknowledgements, but b still names a as the leader: a is slow, not
    // deposed, so the probe must not move the producer before the ack timeout.
    let a = FakeBroker::new("a");
    a.st().ack_limit = Some(0);
    let a = Node::start(a).await;
    let b = FakeBroker::new("b");
    b.set_role(S, Role::NotLeader(Some(a.addr.clone())));
    let b = Node::start(b).await;
    let cfg = ProducerConfig {
        ack_timeout: Duration::from_secs(30),
        leader_probe_after: Duration::from_millis(100),
        ..config(vec![a.uri(), b.uri()], 99, 4)
    };
    let p = Producer::connect(cfg).await.unwrap();
    let receipts = send_all(&p, 4).await;
    wait_for("three leader probes of b", || {
        b.fake.st().read_calls.get(S).copied().unwrap_or(0) >= 3
    })
    .await;
    assert_eq!(a.fake.produce_calls(S), 1, "still on the first call to a");
    assert_eq!(b.fake.produce_calls(S), 0, "nothing sent to a follower");
    assert_eq!(a.fake.sequences(99), vec![1, 2, 3, 4]);
    drop(receipts);
    drop(p);
}
