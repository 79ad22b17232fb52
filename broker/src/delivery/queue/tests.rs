//! Transitions of [`Queue`]: one table row per (state, input) → actions, and a proptest of the
//! queue's invariants under random consumers, acks, nacks, failures and time.

use super::*;
use proptest::prelude::*;

const CFG: QueueConfig = QueueConfig {
    ack_deadline_ms: 1_000,
    max_deliveries: 3,
    ack_flush_ms: 100,
};

fn join(consumer: u64, window: u32) -> Input {
    Input::Join { consumer, window }
}
fn ack(offsets: &[u64]) -> Input {
    Input::Ack {
        offsets: offsets.to_vec(),
    }
}
fn nack(consumer: u64, offsets: &[u64], delay_ms: u64, permanent: bool) -> Input {
    Input::Nack {
        consumer,
        offsets: offsets.to_vec(),
        delay_ms,
        reason: "bad".into(),
        permanent,
    }
}
fn leave(consumer: u64, count_attempt: bool) -> Input {
    Input::Leave {
        consumer,
        count_attempt,
    }
}
fn deliver(consumer: u64, deliveries: &[(u64, u32)]) -> Action {
    Action::Deliver {
        consumer,
        deliveries: deliveries.to_vec(),
    }
}
fn propose(acks: &[u64], attempts: &[(u64, u32)]) -> Action {
    Action::Propose {
        acks: acks.to_vec(),
        attempts: attempts.to_vec(),
    }
}
fn order(offset: u64, attempts: u32, reason: &str) -> DeadLetterOrder {
    DeadLetterOrder {
        offset,
        attempts,
        reason: reason.into(),
    }
}
fn dead(orders: &[DeadLetterOrder]) -> Action {
    Action::DeadLetter {
        orders: orders.to_vec(),
    }
}

/// A fresh queue of a stream with `end` records, none resolved.
fn fresh(end: u64) -> Queue {
    Queue::new(CFG, 0, end, |_| false, [])
}

struct Row {
    name: &'static str,
    queue: fn() -> Queue,
    /// Steps taken first (their actions are not checked).
    given: Vec<(u64, Input)>,
    /// The step under test.
    when: (u64, Input),
    then: Vec<Action>,
}

fn row(
    name: &'static str,
    queue: fn() -> Queue,
    given: Vec<(u64, Input)>,
    when: (u64, Input),
    then: Vec<Action>,
) -> Row {
    Row {
        name,
        queue,
        given,
        when,
        then,
    }
}

fn five() -> Queue {
    fresh(5)
}
fn one() -> Queue {
    fresh(1)
}
fn empty() -> Queue {
    fresh(0)
}

/// A consumer 1 (window 2) holding offsets 0 and 1 (attempt 1) of 5, since t=0.
fn holding() -> Vec<(u64, Input)> {
    vec![(0, join(1, 2)), (0, Input::Tick)]
}

/// `holding`, then offset 0 failed `n` times by nacks (delay 0) and redelivered each time.
fn nacked(n: u32) -> Vec<(u64, Input)> {
    let mut g = holding();
    for _ in 0..n {
        g.push((10, nack(1, &[0], 0, false)));
        g.push((10, Input::Tick));
    }
    g
}

fn rows() -> Vec<Row> {
    let ready_permanent = "bad (permanent failure, attempt 1)";
    vec![
        // --- handing out ---
        row(
            "no consumer: nothing is delivered",
            five,
            vec![],
            (0, Input::Tick),
            vec![],
        ),
        row(
            "a consumer gets offsets up to its window, attempt 1",
            five,
            vec![(0, join(1, 2))],
            (0, Input::Tick),
            vec![deliver(1, &[(0, 1), (1, 1)])],
        ),
        row(
            "a full window gets nothing more, however long we wait (was: nothing in 300 ms)",
            five,
            holding(),
            (999, Input::Tick),
            vec![],
        ),
        row(
            "an empty stream delivers nothing",
            empty,
            vec![(0, join(1, 10))],
            (0, Input::Tick),
            vec![],
        ),
        row(
            "a new end offset is delivered",
            empty,
            vec![(0, join(1, 10)), (0, Input::Tick), (5, Input::End(2))],
            (5, Input::Tick),
            vec![deliver(1, &[(0, 1), (1, 1)])],
        ),
        row(
            "consumers are served round-robin",
            five,
            vec![(0, join(1, 1)), (0, join(2, 1))],
            (0, Input::Tick),
            vec![deliver(1, &[(0, 1)]), deliver(2, &[(1, 1)])],
        ),
        row(
            "window 0 drains: nothing is delivered",
            five,
            vec![
                (0, join(1, 2)),
                (
                    0,
                    Input::SetWindow {
                        consumer: 1,
                        window: 0,
                    },
                ),
            ],
            (0, Input::Tick),
            vec![],
        ),
        row(
            "a larger window delivers more",
            five,
            {
                let mut g = holding();
                g.push((
                    1,
                    Input::SetWindow {
                        consumer: 1,
                        window: 3,
                    },
                ));
                g
            },
            (1, Input::Tick),
            vec![deliver(1, &[(2, 1)])],
        ),
        // --- acks ---
        row(
            "an ack frees credit; acks wait for the flush interval",
            five,
            {
                let mut g = holding();
                g.push((10, ack(&[0])));
                g
            },
            (10, Input::Tick),
            vec![deliver(1, &[(2, 1)])],
        ),
        row(
            "acks are proposed once the flush interval passed",
            five,
            {
                let mut g = holding();
                g.push((10, ack(&[0])));
                g.push((10, Input::Tick));
                g
            },
            (110, Input::Tick),
            vec![propose(&[0], &[])],
        ),
        row(
            "an explicit flush proposes pending acks at once",
            five,
            {
                let mut g = holding();
                g.push((10, ack(&[0, 1])));
                g
            },
            (10, Input::Flush),
            vec![propose(&[0, 1], &[])],
        ),
        row(
            "a second ack of the same offset is ignored",
            five,
            {
                let mut g = holding();
                g.push((10, ack(&[0])));
                g.push((10, ack(&[0])));
                g
            },
            (10, Input::Flush),
            vec![propose(&[0], &[])],
        ),
        row(
            "an ack of an offset beyond the end is ignored",
            five,
            holding(),
            (10, ack(&[7])),
            vec![],
        ),
        row(
            "an ack of an offset not yet delivered (a previous leader did) is accepted",
            five,
            {
                let mut g = holding();
                g.push((10, ack(&[3])));
                g
            },
            (10, Input::Flush),
            vec![propose(&[3], &[])],
        ),
        row(
            "an offset acked early is never delivered",
            five,
            vec![(0, join(1, 10)), (0, ack(&[1]))],
            (0, Input::Tick),
            vec![deliver(1, &[(0, 1), (2, 1), (3, 1), (4, 1)])],
        ),
        row(
            "an ack of an offset waiting for its nack delay is accepted and it is not redelivered",
            five,
            {
                let mut g = holding();
                g.push((10, nack(1, &[0], 300, false)));
                g.push((20, ack(&[0])));
                g.push((20, Input::Flush));
                g
            },
            (310, Input::Tick),
            vec![deliver(1, &[(2, 1)])],
        ),
        row(
            "all acked: nothing is redelivered, however long we wait (was: nothing in 300 ms)",
            five,
            {
                let mut g = vec![(0, join(1, 10)), (0, Input::Tick)];
                g.push((10, ack(&[0, 1, 2, 3, 4])));
                g.push((200, Input::Tick));
                g
            },
            (60_000, Input::Tick),
            vec![],
        ),
        row(
            "an ack flush is due after ACK_FLUSH_OFFSETS acks without waiting",
            || fresh(ACK_FLUSH_OFFSETS as u64),
            vec![
                (0, join(1, MAX_WINDOW)),
                (0, Input::Tick),
                (1, ack(&(0..ACK_FLUSH_OFFSETS as u64).collect::<Vec<_>>())),
            ],
            (1, Input::Tick),
            vec![propose(
                &(0..ACK_FLUSH_OFFSETS as u64).collect::<Vec<_>>(),
                &[],
            )],
        ),
        row(
            "an ack from another consumer resolves the offset and frees the holder's credit",
            five,
            {
                let mut g = holding();
                g.push((5, join(2, 0)));
                g.push((10, ack(&[0])));
                g
            },
            (10, Input::Tick),
            vec![deliver(1, &[(2, 1)])],
        ),
        row(
            "a flush with nothing pending does nothing",
            five,
            holding(),
            (10, Input::Flush),
            vec![],
        ),
        row(
            "a window change of an unknown consumer changes nothing",
            five,
            {
                let mut g = holding();
                g.push((
                    10,
                    Input::SetWindow {
                        consumer: 9,
                        window: 5,
                    },
                ));
                g
            },
            (10, Input::Tick),
            vec![],
        ),
        row(
            "an end offset lower than the known one is ignored",
            five,
            vec![(0, Input::End(2)), (0, join(1, 10))],
            (0, Input::Tick),
            vec![deliver(1, &[(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)])],
        ),
        // --- nacks ---
        row(
            "a nack counts a redelivery",
            five,
            holding(),
            (10, nack(1, &[0], 0, false)),
            vec![Action::Redelivery(FailKind::Nack)],
        ),
        row(
            "a nacked offset is redelivered as attempt 2, oldest first",
            five,
            {
                let mut g = holding();
                g.push((10, nack(1, &[0], 0, false)));
                g
            },
            (10, Input::Tick),
            vec![deliver(1, &[(0, 2)])],
        ),
        row(
            "a redelivery's attempt number is proposed at the flush",
            five,
            {
                let mut g = nacked(1);
                g.push((20, ack(&[1])));
                g
            },
            (20, Input::Flush),
            vec![propose(&[1], &[(0, 2)])],
        ),
        row(
            "a nack delay holds the redelivery back until it passes",
            one,
            {
                let mut g = holding();
                g.push((10, nack(1, &[0], 300, false)));
                g
            },
            (309, Input::Tick),
            vec![],
        ),
        row(
            "a nacked offset is redelivered when its delay passed",
            one,
            {
                let mut g = holding();
                g.push((10, nack(1, &[0], 300, false)));
                g.push((309, Input::Tick));
                g
            },
            (310, Input::Tick),
            vec![deliver(1, &[(0, 2)])],
        ),
        row(
            "a nack from a consumer that does not hold the offset is ignored",
            five,
            holding(),
            (10, nack(2, &[0], 0, false)),
            vec![],
        ),
        row(
            "a permanent nack dead-letters on that attempt",
            five,
            {
                let mut g = holding();
                g.push((10, nack(1, &[0], 0, true)));
                g
            },
            (10, Input::Tick),
            vec![deliver(1, &[(2, 1)]), dead(&[order(0, 1, ready_permanent)])],
        ),
        row(
            "a nack of the last attempt dead-letters",
            five,
            {
                let mut g = nacked(2);
                g.push((20, nack(1, &[0], 0, false)));
                g
            },
            (20, Input::Flush),
            vec![
                propose(&[], &[(0, 2), (0, 3)]),
                dead(&[order(0, 3, "bad (attempt 3 of 3)")]),
            ],
        ),
        row(
            "a dead-lettered offset is not redelivered, however long we wait (was: 300 ms)",
            five,
            {
                let mut g = nacked(2);
                g.push((20, nack(1, &[0], 0, false)));
                g.push((20, Input::Flush));
                g.push((20, ack(&[1])));
                g.push((20, Input::Flush));
                g.push((
                    20,
                    Input::SetWindow {
                        consumer: 1,
                        window: 1,
                    },
                ));
                g.push((20, Input::Tick));
                g.push((30, ack(&[2])));
                g.push((30, Input::Flush));
                g.push((
                    30,
                    Input::SetWindow {
                        consumer: 1,
                        window: 0,
                    },
                ));
                g
            },
            (60_000, Input::Tick),
            vec![],
        ),
        row(
            "a permanently failed offset is not redelivered (was: nothing in 300 ms)",
            one,
            {
                let mut g = holding();
                g.push((10, nack(1, &[0], 0, true)));
                g.push((
                    10,
                    Input::SetWindow {
                        consumer: 1,
                        window: 1,
                    },
                ));
                g.push((10, Input::Flush));
                g
            },
            (60_000, Input::Tick),
            vec![],
        ),
        row(
            "a nack without a reason is dead-lettered as nacked by consumer",
            one,
            vec![
                (0, join(1, 1)),
                (0, Input::Tick),
                (
                    10,
                    Input::Nack {
                        consumer: 1,
                        offsets: vec![0],
                        delay_ms: 0,
                        reason: String::new(),
                        permanent: true,
                    },
                ),
            ],
            (10, Input::Flush),
            vec![dead(&[order(
                0,
                1,
                "nacked by consumer (permanent failure, attempt 1)",
            )])],
        ),
        row(
            "a nack of an offset no longer in flight (past its deadline) is ignored",
            one,
            {
                let mut g = holding();
                g.push((
                    1_000,
                    Input::SetWindow {
                        consumer: 1,
                        window: 0,
                    },
                ));
                g.push((1_000, Input::Tick));
                g
            },
            (1_010, nack(1, &[0], 0, true)),
            vec![],
        ),
        row(
            "an ack of an offset being dead-lettered is ignored",
            one,
            {
                let mut g = holding();
                g.push((10, nack(1, &[0], 0, true)));
                g.push((10, ack(&[0])));
                g
            },
            (10, Input::Flush),
            vec![dead(&[order(0, 1, ready_permanent)])],
        ),
        // --- ack deadlines ---
        row(
            "a delivery is not redelivered before its ack deadline",
            five,
            holding(),
            (999, Input::Tick),
            vec![],
        ),
        row(
            "a delivery past its ack deadline is redelivered as the next attempt",
            five,
            holding(),
            (1_000, Input::Tick),
            vec![
                Action::Redelivery(FailKind::Deadline),
                Action::Redelivery(FailKind::Deadline),
                deliver(1, &[(0, 2), (1, 2)]),
            ],
        ),
        row(
            "an acked delivery's deadline is ignored",
            five,
            {
                let mut g = holding();
                g.push((10, ack(&[0, 1])));
                g.push((
                    10,
                    Input::SetWindow {
                        consumer: 1,
                        window: 0,
                    },
                ));
                g.push((200, Input::Tick));
                g
            },
            (1_000, Input::Tick),
            vec![],
        ),
        row(
            "the last attempt past its deadline is dead-lettered",
            || Queue::new(CFG, 0, 1, |_| false, [(0, 2)]),
            vec![(0, join(1, 1)), (0, Input::Tick)],
            (1_000, Input::Tick),
            vec![
                propose(&[], &[(0, 3)]),
                dead(&[order(0, 3, "ack deadline exceeded (attempt 3 of 3)")]),
            ],
        ),
        // --- consumers leaving ---
        row(
            "a disconnected consumer's offsets count a failed attempt",
            five,
            holding(),
            (10, leave(1, true)),
            vec![
                Action::Redelivery(FailKind::Disconnect),
                Action::Redelivery(FailKind::Disconnect),
            ],
        ),
        row(
            "a disconnected consumer's offsets go to another consumer as attempt 2",
            five,
            {
                let mut g = holding();
                g.push((5, join(2, 10)));
                g.push((5, Input::Tick));
                g.push((10, leave(1, true)));
                g
            },
            (10, Input::Tick),
            vec![deliver(2, &[(0, 2), (1, 2)])],
        ),
        row(
            "a consumer leaving at shutdown releases its offsets with the same attempt number",
            five,
            {
                let mut g = holding();
                g.push((10, leave(1, false)));
                g.push((10, join(2, 2)));
                g
            },
            (10, Input::Tick),
            vec![deliver(2, &[(0, 1), (1, 1)])],
        ),
        row(
            "an unknown consumer leaving changes nothing",
            five,
            holding(),
            (10, leave(9, true)),
            vec![],
        ),
        row(
            "a disconnect on the last attempt dead-letters",
            || Queue::new(CFG, 0, 1, |_| false, [(0, 2)]),
            vec![(0, join(1, 1)), (0, Input::Tick), (10, leave(1, true))],
            (10, Input::Flush),
            vec![
                propose(&[], &[(0, 3)]),
                dead(&[order(0, 3, "consumer disconnected (attempt 3 of 3)")]),
            ],
        ),
        row(
            "deliveries not sent to a gone consumer count no attempt",
            five,
            holding(),
            (
                10,
                Input::Undelivered {
                    consumer: 1,
                    offsets: vec![0, 1],
                },
            ),
            vec![],
        ),
        row(
            "deliveries not sent go to the next consumer with the same attempt number",
            five,
            {
                let mut g = holding();
                g.push((
                    10,
                    Input::Undelivered {
                        consumer: 1,
                        offsets: vec![1],
                    },
                ));
                g.push((10, leave(1, true)));
                g.push((10, join(2, 10)));
                g
            },
            (10, Input::Tick),
            vec![deliver(2, &[(0, 2), (1, 1), (2, 1), (3, 1), (4, 1)])],
        ),
        row(
            "an undelivered report from another consumer is ignored",
            five,
            {
                let mut g = holding();
                g.push((
                    10,
                    Input::Undelivered {
                        consumer: 2,
                        offsets: vec![0],
                    },
                ));
                g
            },
            (1_000, Input::Tick),
            vec![
                Action::Redelivery(FailKind::Deadline),
                Action::Redelivery(FailKind::Deadline),
                deliver(1, &[(0, 2), (1, 2)]),
            ],
        ),
        // --- missing records (issue 13) ---
        row(
            "a record that cannot be read is dead-lettered with the reason",
            five,
            {
                let mut g = holding();
                g.push((10, Input::Missing { offsets: vec![1] }));
                g
            },
            (10, Input::Tick),
            vec![
                deliver(1, &[(2, 1)]),
                dead(&[order(1, 1, "record missing: it cannot be read (attempt 1)")]),
            ],
        ),
        row(
            "a missing report for an offset not in flight is ignored",
            five,
            holding(),
            (10, Input::Missing { offsets: vec![4] }),
            vec![],
        ),
        // --- dead-letter appends (issue 13) ---
        row(
            "a failed dead-letter append is not retried before the backoff",
            five,
            {
                let mut g = holding();
                g.push((10, nack(1, &[0], 0, true)));
                g.push((
                    10,
                    Input::SetWindow {
                        consumer: 1,
                        window: 0,
                    },
                ));
                g.push((10, Input::Tick));
                g.push((20, dl_failed(0, 1)));
                g
            },
            (20 + DEAD_LETTER_RETRY_MIN_MS - 1, Input::Tick),
            vec![],
        ),
        row(
            "a failed dead-letter append is retried after the backoff",
            five,
            {
                let mut g = holding();
                g.push((10, nack(1, &[0], 0, true)));
                g.push((
                    10,
                    Input::SetWindow {
                        consumer: 1,
                        window: 0,
                    },
                ));
                g.push((10, Input::Tick));
                g.push((20, dl_failed(0, 1)));
                g
            },
            (20 + DEAD_LETTER_RETRY_MIN_MS, Input::Tick),
            vec![dead(&[order(0, 1, ready_permanent)])],
        ),
        row(
            "a second failure doubles the backoff",
            five,
            {
                let mut g = holding();
                g.push((10, nack(1, &[0], 0, true)));
                g.push((
                    10,
                    Input::SetWindow {
                        consumer: 1,
                        window: 0,
                    },
                ));
                g.push((10, Input::Tick));
                g.push((20, dl_failed(0, 1)));
                g.push((70, Input::Tick));
                g.push((80, dl_failed(0, 1)));
                g.push((179, Input::Tick));
                g
            },
            (180, Input::Tick),
            vec![dead(&[order(0, 1, ready_permanent)])],
        ),
        row(
            "a successful dead-letter append ends the matter",
            one,
            {
                let mut g = holding();
                g.push((10, nack(1, &[0], 0, true)));
                g.push((
                    10,
                    Input::SetWindow {
                        consumer: 1,
                        window: 0,
                    },
                ));
                g.push((10, Input::Tick));
                g.push((
                    20,
                    Input::DeadLetterResult {
                        orders: vec![order(0, 1, ready_permanent)],
                        ok: true,
                    },
                ));
                g
            },
            (60_000, Input::Tick),
            vec![],
        ),
        // --- recovery after a restart or leader change ---
        row(
            "resolved offsets are not delivered again after a restart (was: nothing in 300 ms)",
            || Queue::new(CFG, 2, 6, |o| o % 2 == 1, []),
            vec![(0, join(1, 10))],
            (0, Input::Tick),
            vec![deliver(1, &[(2, 1), (4, 1)])],
        ),
        row(
            "a persisted attempt number continues after a restart and is persisted again",
            || Queue::new(CFG, 0, 2, |_| false, [(1, 1)]),
            vec![(0, join(1, 10))],
            (0, Input::Tick),
            vec![deliver(1, &[(0, 1), (1, 2)])],
        ),
        row(
            "an offset whose attempts ran out before a restart is dead-lettered, not delivered",
            || Queue::new(CFG, 0, 2, |_| false, [(0, 3)]),
            vec![(0, join(1, 10))],
            (0, Input::Tick),
            vec![
                deliver(1, &[(1, 1)]),
                dead(&[order(0, 3, "max deliveries (3) reached before a restart")]),
            ],
        ),
        row(
            "offsets appended after the start are delivered even when the start saw them resolved",
            || Queue::new(CFG, 0, 1, |_| true, []),
            vec![(0, join(1, 10)), (0, Input::End(3))],
            (0, Input::Tick),
            vec![deliver(1, &[(1, 1), (2, 1)])],
        ),
    ]
}

fn dl_failed(offset: u64, attempts: u32) -> Input {
    Input::DeadLetterResult {
        orders: vec![order(
            offset,
            attempts,
            "bad (permanent failure, attempt 1)",
        )],
        ok: false,
    }
}

#[test]
fn every_transition_gives_the_actions_of_its_row() {
    let mut failures = Vec::new();
    for r in rows() {
        let mut q = (r.queue)();
        for (t, i) in r.given {
            q.step(t, i);
        }
        let (t, i) = r.when;
        let got = q.step(t, i);
        if got != r.then {
            failures.push(format!(
                "{}:\n  expected {:?}\n  got      {:?}",
                r.name, r.then, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_window_above_the_maximum_is_reduced_to_it() {
    let mut q = fresh(0);
    q.step(0, join(1, 1));
    q.step(
        0,
        Input::SetWindow {
            consumer: 1,
            window: u32::MAX,
        },
    );
    assert_eq!(q.consumers()[0].window, MAX_WINDOW);
}

#[test]
fn deliveries_are_split_into_messages_of_at_most_the_maximum() {
    let mut q = fresh(600);
    q.step(0, join(1, 1_000));
    let sizes: Vec<usize> = q
        .step(0, Input::Tick)
        .iter()
        .map(|a| match a {
            Action::Deliver { deliveries, .. } => deliveries.len(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(sizes, vec![256, 256, 88]);
    assert_eq!(q.in_flight(), 600);
    assert_eq!(q.consumers()[0].in_flight, 600);
}

#[test]
fn the_next_wake_is_the_earliest_deadline_delay_flush_or_retry() {
    let mut q = fresh(5);
    assert_eq!(q.next_wake(), None);
    q.step(0, join(1, 2));
    q.step(0, Input::Tick);
    assert_eq!(q.next_wake(), Some(1_000), "ack deadline");
    q.step(10, nack(1, &[0], 300, false));
    q.step(10, ack(&[1]));
    assert_eq!(q.next_wake(), Some(110), "ack flush");
    q.step(10, Input::Flush);
    assert_eq!(q.next_wake(), Some(310), "nack delay");
    q.step(20, dl_failed(4, 1));
    assert_eq!(q.next_wake(), Some(20 + DEAD_LETTER_RETRY_MIN_MS));
}

#[test]
fn the_dead_letter_backoff_doubles_up_to_its_maximum_and_resets_after_a_success() {
    let mut q = fresh(0);
    let mut t = 0;
    let mut delays = Vec::new();
    for _ in 0..10 {
        q.step(t, dl_failed(0, 1));
        let at = q.next_wake().unwrap();
        delays.push(at - t);
        t = at;
        let a = q.step(t, Input::Tick);
        assert!(matches!(&a[..], [Action::DeadLetter { .. }]), "{a:?}");
    }
    assert_eq!(
        delays,
        vec![50, 100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
    );
    q.step(
        t,
        Input::DeadLetterResult {
            orders: vec![],
            ok: true,
        },
    );
    q.step(t, dl_failed(0, 1));
    assert_eq!(q.next_wake(), Some(t + DEAD_LETTER_RETRY_MIN_MS));
}

// ---------------------------------------------------------------------------------------------
// Invariants under random histories.

#[derive(Debug, Clone)]
enum Op {
    Join(u32),
    Leave(usize, bool),
    Ack(usize, usize),
    Nack(usize, usize, u64, bool),
    SetWindow(usize, u32),
    Append(u64),
    Advance(u64),
    DeadLetterFails,
    MissingNext,
    SendFails,
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u32..6).prop_map(Op::Join),
        1 => (0usize..4, any::<bool>()).prop_map(|(c, b)| Op::Leave(c, b)),
        6 => (0usize..4, 0usize..8).prop_map(|(c, i)| Op::Ack(c, i)),
        3 => (0usize..4, 0usize..8, 0u64..400, prop::bool::weighted(0.2))
            .prop_map(|(c, i, d, p)| Op::Nack(c, i, d, p)),
        1 => (0usize..4, 0u32..6).prop_map(|(c, w)| Op::SetWindow(c, w)),
        2 => (1u64..6).prop_map(Op::Append),
        3 => (0u64..1_500).prop_map(Op::Advance),
        1 => Just(Op::DeadLetterFails),
        1 => Just(Op::MissingNext),
        1 => Just(Op::SendFails),
        1 => Just(Op::Flush),
    ]
}

/// A runtime in memory: consumers that hold what they got, a log of resolved offsets, and a
/// dead-letter stream that fails on demand. Checks the invariants after every step.
struct Sim {
    q: Queue,
    now: u64,
    max: u32,
    /// Connected consumers: id, window, offsets held.
    consumers: Vec<(u64, u32, Vec<u64>)>,
    next_id: u64,
    /// Offsets proposed as acked / dead-lettered (successfully), with counts.
    acked: HashMap<u64, u32>,
    dead_lettered: HashMap<u64, u32>,
    /// Offsets some consumer acked (a proposed ack must be one of them).
    acked_by_consumer: HashSet<u64>,
    fail_dead_letters: u32,
    missing_next: bool,
    fail_next_send: bool,
    /// The stream's end offset.
    end: u64,
}

impl Sim {
    fn new(max: u32) -> Self {
        let cfg = QueueConfig {
            ack_deadline_ms: 1_000,
            max_deliveries: max,
            ack_flush_ms: 100,
        };
        Self {
            q: Queue::new(cfg, 0, 0, |_| false, []),
            now: 0,
            max,
            consumers: Vec::new(),
            next_id: 1,
            acked: HashMap::new(),
            dead_lettered: HashMap::new(),
            acked_by_consumer: HashSet::new(),
            fail_dead_letters: 0,
            missing_next: false,
            fail_next_send: false,
            end: 0,
        }
    }

    /// Steps like the runtime does: inputs reported by performing the actions are stepped in
    /// order, and consumers found gone leave after them.
    fn step(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let actions = self.q.step(self.now, input);
            let mut gone = Vec::new();
            for a in actions {
                queue.extend(self.perform(a, &mut gone));
            }
            queue.extend(gone.into_iter().map(|id| leave(id, true)));
        }
        self.check();
    }

    fn perform(&mut self, a: Action, gone: &mut Vec<u64>) -> Vec<Input> {
        match a {
            Action::Deliver {
                consumer,
                deliveries,
            } => {
                assert!(deliveries.len() <= MAX_DELIVERIES_PER_MESSAGE);
                let offsets = deliveries.iter().map(|d| d.0).collect();
                if std::mem::take(&mut self.fail_next_send) {
                    // The consumer's call is gone: it never sees this or anything later.
                    self.consumers.retain(|c| c.0 != consumer);
                    gone.push(consumer);
                }
                let Some(c) = self.consumers.iter_mut().find(|c| c.0 == consumer) else {
                    assert!(gone.contains(&consumer), "delivered to an unknown consumer");
                    return vec![Input::Undelivered { consumer, offsets }];
                };
                let core_in_flight = self
                    .q
                    .consumers()
                    .iter()
                    .find(|s| s.id == consumer)
                    .unwrap()
                    .in_flight;
                assert!(
                    core_in_flight <= c.1,
                    "in flight {core_in_flight} > window {}",
                    c.1
                );
                for &(o, attempt) in &deliveries {
                    assert!(attempt >= 1 && attempt <= self.max, "attempt {attempt}");
                    assert!(o < self.end);
                    assert!(!self.acked.contains_key(&o), "{o} delivered after its ack");
                    assert!(
                        !self.dead_lettered.contains_key(&o),
                        "{o} delivered when dead"
                    );
                    c.2.push(o);
                }
                if std::mem::take(&mut self.missing_next) {
                    let o = deliveries[0].0;
                    c.2.retain(|x| *x != o);
                    return vec![Input::Missing { offsets: vec![o] }];
                }
                vec![]
            }
            Action::Propose { acks, attempts } => {
                for o in acks {
                    assert!(self.acked_by_consumer.contains(&o), "{o} proposed unacked");
                    *self.acked.entry(o).or_default() += 1;
                }
                for (_, a) in attempts {
                    assert!(a <= self.max);
                }
                vec![]
            }
            Action::DeadLetter { orders } => {
                for o in &orders {
                    assert!(o.attempts <= self.max, "{o:?}");
                }
                if self.fail_dead_letters > 0 {
                    self.fail_dead_letters -= 1;
                    return vec![Input::DeadLetterResult { orders, ok: false }];
                }
                for o in &orders {
                    *self.dead_lettered.entry(o.offset).or_default() += 1;
                }
                vec![Input::DeadLetterResult { orders, ok: true }]
            }
            Action::Redelivery(_) => vec![],
        }
    }

    fn check(&self) {
        for c in self.q.consumers() {
            // A consumer may still hold deliveries that expired; the queue counts only live ones.
            let held = self.consumers.iter().find(|s| s.0 == c.id).unwrap();
            assert!(c.in_flight as usize <= held.2.len());
        }
        for (o, n) in &self.acked {
            assert_eq!(*n, 1, "{o} acked {n} times");
            assert!(
                !self.dead_lettered.contains_key(o),
                "{o} acked and dead-lettered"
            );
        }
        for (o, n) in &self.dead_lettered {
            assert_eq!(*n, 1, "{o} dead-lettered {n} times");
        }
        // The ack floor (lowest unresolved offset) never passes an offset that was neither
        // acked by a consumer nor dead-lettered: everything below it is resolved.
        let floor = (0..=self.end)
            .find(|o| !self.acked.contains_key(o) && !self.dead_lettered.contains_key(o))
            .unwrap();
        for o in 0..floor {
            assert!(self.acked_by_consumer.contains(&o) || self.dead_lettered.contains_key(&o));
        }
    }

    fn consumer(&self, i: usize) -> Option<usize> {
        (!self.consumers.is_empty()).then(|| i % self.consumers.len())
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Join(w) => {
                let id = self.next_id;
                self.next_id += 1;
                self.consumers.push((id, w, Vec::new()));
                self.step(join(id, w));
            }
            Op::Leave(i, count) => {
                if let Some(i) = self.consumer(i) {
                    let (id, _, _) = self.consumers.remove(i);
                    self.step(leave(id, count));
                }
            }
            Op::Ack(i, k) => {
                if let Some(i) = self.consumer(i) {
                    let held = &mut self.consumers[i].2;
                    if !held.is_empty() {
                        let o = held.remove(k % held.len());
                        self.acked_by_consumer.insert(o);
                        self.step(ack(&[o]));
                    }
                }
            }
            Op::Nack(i, k, delay, permanent) => {
                if let Some(i) = self.consumer(i) {
                    let id = self.consumers[i].0;
                    let held = &mut self.consumers[i].2;
                    if !held.is_empty() {
                        let o = held.remove(k % held.len());
                        self.step(nack(id, &[o], delay, permanent));
                    }
                }
            }
            Op::SetWindow(i, w) => {
                if let Some(i) = self.consumer(i) {
                    self.consumers[i].1 = w;
                    let id = self.consumers[i].0;
                    self.step(Input::SetWindow {
                        consumer: id,
                        window: w,
                    });
                }
            }
            Op::Append(n) => {
                self.end += n;
                self.step(Input::End(self.end));
            }
            Op::Advance(ms) => self.now += ms,
            Op::DeadLetterFails => self.fail_dead_letters += 2,
            Op::MissingNext => self.missing_next = true,
            Op::SendFails => self.fail_next_send = true,
            Op::Flush => self.step(Input::Flush),
        }
        self.step(Input::Tick);
    }

    /// Every consumer acks all it holds, time passes, dead letters succeed: returns when every
    /// offset below the end is resolved (or panics after many rounds).
    fn drain(&mut self) {
        self.fail_dead_letters = 0;
        self.missing_next = false;
        self.fail_next_send = false;
        if self.consumers.is_empty() {
            self.apply(Op::Join(4));
        }
        for _ in 0..10_000 {
            let resolved = (0..self.end)
                .all(|o| self.acked.contains_key(&o) || self.dead_lettered.contains_key(&o));
            if resolved && self.q.in_flight() == 0 {
                return;
            }
            for i in 0..self.consumers.len() {
                if self.consumers[i].1 == 0 {
                    self.apply(Op::SetWindow(i, 4));
                }
                while !self.consumers[i].2.is_empty() {
                    self.apply(Op::Ack(i, 0));
                }
            }
            self.apply(Op::Advance(200));
        }
        let unresolved: Vec<u64> = (0..self.end)
            .filter(|o| !self.acked.contains_key(o) && !self.dead_lettered.contains_key(o))
            .collect();
        panic!(
            "not every offset was resolved: {unresolved:?}\nconsumers {:?}\n{:#?}",
            self.consumers, self.q
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_offset_is_acked_or_dead_lettered_exactly_once_within_windows_and_attempts(
        max in 1u32..4,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut sim = Sim::new(max);
        for op in ops {
            sim.apply(op);
        }
        sim.drain();
        for o in 0..sim.end {
            let n = sim.acked.get(&o).copied().unwrap_or(0)
                + sim.dead_lettered.get(&o).copied().unwrap_or(0);
            prop_assert_eq!(n, 1, "offset {}", o);
        }
    }
}
