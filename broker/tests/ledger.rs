//! Ledger shards in a three-node cluster (one process, a runtime per node): accounts and
//! transfers on every shard through `txpipe.ledger.v1`, result codes per event, holds,
//! idempotent resends, bad input, equal state hashes on every replica at the same applied
//! index, a leader crash, a restart from snapshot, and the fixed ledger layout.
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tonic::Code;
use txpipe_broker::Config;
use txpipe_client::ledger::v1::ledger_client::LedgerClient as RawClient;
use txpipe_client::ledger::v1::{self as pb};
use txpipe_client::ledger::{
    LedgerClient, LedgerClientError, clearing_account, from_pb, shard_name, to_pb,
};

const T: Duration = Duration::from_secs(30);
const SHARDS: u32 = 3;
const PENDING: u32 = 2;
const POST: u32 = 4;
const VOID: u32 = 8;

fn restart(configs: &[Config], i: usize) -> TestBroker {
    let cfg = configs[i].clone();
    let listeners = (
        std::net::TcpListener::bind(cfg.client_addr(i)).unwrap(),
        std::net::TcpListener::bind(&cfg.peers[i]).unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    TestBroker::start_on(cfg, listeners)
}

fn start_cluster(dir: &Path) -> (Vec<Config>, Vec<Option<TestBroker>>) {
    let mut cfgs = cluster_configs(dir, 3);
    for (c, _) in cfgs.iter_mut() {
        c.ledger_shards = SHARDS;
    }
    let configs = cfgs.iter().map(|(c, _)| c.clone()).collect();
    let nodes = cfgs
        .into_iter()
        .map(|(c, l)| Some(TestBroker::start_on(c, l)))
        .collect();
    (configs, nodes)
}

fn account(id: u128) -> pb::Account {
    pb::Account {
        id: to_pb(id),
        ledger: 1,
        code: 1,
        ..Default::default()
    }
}

fn transfer(id: u128, from: u128, to: u128, amount: u128, flags: u32) -> pb::Transfer {
    pb::Transfer {
        id: to_pb(id),
        debit_account_id: to_pb(from),
        credit_account_id: to_pb(to),
        amount: to_pb(amount),
        ledger: 1,
        code: 1,
        flags,
        ..Default::default()
    }
}

fn names(r: &[pb::EventResult]) -> Vec<&str> {
    r.iter().map(|r| r.name.as_str()).collect()
}

/// Every live node's `(applied index, state hash)` of `shard`, from its own state.
async fn local_states(nodes: &[Option<TestBroker>], shard: u32) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for n in nodes.iter().flatten() {
        let mut c = RawClient::new(n.channel().await);
        let r = c
            .get_shard(pb::GetShardRequest {
                shard: shard_name(shard),
                local: true,
            })
            .await
            .unwrap()
            .into_inner();
        out.push((r.applied_index, r.state_hash));
    }
    out
}

/// Waits until every live node has applied the same index of every shard, then checks that
/// their state hashes are equal; returns the hashes.
async fn assert_replicas_agree(nodes: &[Option<TestBroker>]) -> Vec<Vec<u8>> {
    let mut hashes = Vec::new();
    for shard in 0..SHARDS {
        let deadline = std::time::Instant::now() + T;
        loop {
            let states = local_states(nodes, shard).await;
            if states.iter().all(|s| s.0 == states[0].0) {
                for s in &states {
                    assert_eq!(s.1, states[0].1, "shard {shard} at index {}", s.0);
                }
                assert_eq!(states[0].1.len(), 32);
                hashes.push(states[0].1.clone());
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "shard {shard}: replicas never reached the same index: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    hashes
}

async fn balance(c: &LedgerClient, id: u128) -> (u128, u128, u128, u128) {
    let a = c.lookup_accounts(&[id]).await.unwrap();
    let a = &a[0];
    (
        from_pb(a.debits_pending.as_ref()),
        from_pb(a.debits_posted.as_ref()),
        from_pb(a.credits_pending.as_ref()),
        from_pb(a.credits_posted.as_ref()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_shards_agree_on_every_replica_through_a_leader_crash_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, mut nodes) = start_cluster(dir.path());
    let addrs: Vec<String> = configs[0].client_addrs.clone();
    let c = LedgerClient::connect(addrs.clone(), T).await.unwrap();
    assert_eq!(c.shards(), SHARDS);
    assert_eq!(c.partitioning().to_string(), "range:1000");

    // Accounts 1-3000 on three shards; a resend answers `exists` for each.
    let accounts: Vec<_> = (1..=3000u128).map(account).collect();
    let r = c.create_accounts(accounts.clone()).await.unwrap();
    assert_eq!(r.len(), 3000);
    assert!(r.iter().all(|r| r.name == "ok"), "{:?}", &r[..3]);
    assert!(r.iter().enumerate().all(|(i, r)| r.index == i as u32));
    let r = c.create_accounts(accounts).await.unwrap();
    assert!(r.iter().all(|r| r.name == "exists"));

    // Transfers on each shard; results per event.
    let r = c
        .create_transfers(vec![
            transfer(1, 1, 2, 10, 0),
            transfer(2, 1001, 1002, 20, 0),
            transfer(3, 2001, 2002, 30, 0),
            transfer(4, 3, 3, 1, 0),
            transfer(5, 4, 5, 0, 0),
        ])
        .await
        .unwrap();
    assert_eq!(
        names(&r),
        [
            "ok",
            "ok",
            "ok",
            "accounts_must_be_different",
            "amount_must_not_be_zero"
        ]
    );
    // An idempotent resend: `exists`, nothing moves twice.
    let r = c
        .create_transfers(vec![
            transfer(1, 1, 2, 10, 0),
            transfer(2, 1001, 1002, 21, 0),
        ])
        .await
        .unwrap();
    assert_eq!(names(&r), ["exists", "exists_with_different_amount"]);
    assert_eq!(balance(&c, 1).await, (0, 10, 0, 0));
    assert_eq!(balance(&c, 2).await, (0, 0, 0, 10));

    // Holds: pending, post part of it, void another, a second post is refused.
    let r = c
        .create_transfers(vec![
            transfer(10, 6, 7, 100, PENDING),
            transfer(11, 6, 7, 50, PENDING),
        ])
        .await
        .unwrap();
    assert_eq!(names(&r), ["ok", "ok"]);
    assert_eq!(balance(&c, 6).await, (150, 0, 0, 0));
    let mut post = transfer(12, 6, 7, 60, POST);
    post.pending_id = to_pb(10);
    let mut void = transfer(13, 6, 7, 0, VOID);
    void.pending_id = to_pb(11);
    let mut again = transfer(14, 6, 7, 60, POST);
    again.pending_id = to_pb(10);
    let r = c.create_transfers(vec![post, void, again]).await.unwrap();
    assert_eq!(names(&r), ["ok", "ok", "pending_transfer_already_posted"]);
    assert_eq!(balance(&c, 6).await, (0, 60, 0, 0));
    assert_eq!(balance(&c, 7).await, (0, 0, 0, 60));

    // Bad input: each its code.
    let leader0 = {
        let s = c.get_shard(0).await.unwrap();
        assert!(s.is_leader);
        assert_eq!(s.accounts, 1000);
        s.leader
    };
    let mut raw = RawClient::connect(format!("http://{leader0}"))
        .await
        .unwrap();
    // A cross-shard transfer in one raw CreateTransfers request is refused (the client runs
    // those as a two-phase commit), nothing applied.
    let st = raw
        .create_transfers(pb::CreateTransfersRequest {
            shard: "ledger-0".into(),
            transfers: vec![transfer(20, 1, 1001, 5, 0)],
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    assert!(st.message().contains("two-phase commit"), "{st:?}");
    let bad = |shard: &str, accounts: Vec<pb::Account>| pb::CreateAccountsRequest {
        shard: shard.into(),
        accounts,
    };
    for (req, what) in [
        (bad("ledger-9", vec![account(1)]), "unknown shard"),
        (bad("decisions", vec![account(1)]), "not a ledger shard"),
        (bad("ledger-0", vec![]), "empty batch"),
        (
            bad("ledger-0", vec![account(1500)]),
            "account of another shard",
        ),
        (
            bad("ledger-0", vec![account(clearing_account(1))]),
            "a clearing account",
        ),
        (
            bad(
                "ledger-0",
                vec![pb::Account {
                    code: 70_000,
                    ..account(1)
                }],
            ),
            "code above u16",
        ),
    ] {
        let st = raw.create_accounts(req).await.unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{what}: {st:?}");
    }
    let st = raw
        .create_transfers(pb::CreateTransfersRequest {
            shard: "ledger-0".into(),
            transfers: vec![transfer(30, 1001, 1002, 1, 0)],
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("ledger-1"), "{st:?}");
    let st = raw
        .list_accounts(pb::ListAccountsRequest {
            shard: "ledger-0".into(),
            from_id: to_pb(5),
            to_id: to_pb(4),
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");

    // Reads: bulk list, paged account history.
    let listed = c.list_accounts(990, 1010).await.unwrap();
    assert_eq!(listed.len(), 21);
    let page = raw
        .get_account_transfers(pb::GetAccountTransfersRequest {
            shard: "ledger-0".into(),
            account_id: to_pb(6),
            after_timestamp_ns: 0,
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .transfers;
    assert_eq!(page.len(), 2);
    let found = raw
        .lookup_transfers(pb::LookupTransfersRequest {
            shard: "ledger-0".into(),
            ids: vec![to_pb(12).unwrap(), to_pb(99).unwrap()],
        })
        .await
        .unwrap()
        .into_inner()
        .transfers;
    assert_eq!(found.len(), 1);

    let before = assert_replicas_agree(&nodes).await;

    // Crash the leader of ledger-0; the client follows the new leader.
    let killed = addrs
        .iter()
        .position(|a| *a == leader0)
        .expect("leader among the nodes");
    nodes[killed].take().unwrap().crash();
    let r = c
        .create_transfers(vec![
            transfer(40, 8, 9, 1, 0),
            transfer(41, 1008, 1009, 1, 0),
            transfer(42, 2008, 2009, 1, 0),
        ])
        .await
        .unwrap();
    assert_eq!(names(&r), ["ok", "ok", "ok"]);
    let after = assert_replicas_agree(&nodes).await;
    assert_ne!(before, after);

    // The crashed node restarts from its snapshot and log and catches up to the same hashes.
    // Its snapshot of ledger-0 (written every 200 ms) holds the ledger.
    let snap = configs[killed]
        .data_dir
        .join("streams")
        .join("ledger-0")
        .join(txpipe_broker::snapshot::FILE_NAME);
    let (_, state) = txpipe_broker::snapshot::decode(&std::fs::read(&snap).unwrap()).unwrap();
    assert_eq!(state.ledger().map(|l| l.account_count()), Some(1000));
    nodes[killed] = Some(restart(&configs, killed));
    let agreed = assert_replicas_agree(&nodes).await;
    assert_eq!(agreed, after);
    assert_eq!(balance(&c, 8).await, (0, 1, 0, 0));

    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_keeps_its_ledger_layout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.ledger_shards = 2;
    let b = TestBroker::start(cfg.clone());
    let c = LedgerClient::connect(vec![b.grpc.to_string()], T)
        .await
        .unwrap();
    assert_eq!(c.shards(), 2);
    let r = c
        .create_accounts(vec![account(1), account(1001)])
        .await
        .unwrap();
    assert_eq!(names(&r), ["ok", "ok"]);
    // A hold with a timeout is released by the leader's periodic expiry, with no transfer
    // arriving after it.
    let mut hold = transfer(1, 1001, 1002, 5, PENDING);
    hold.timeout_ms = 1;
    c.create_accounts(vec![account(1002)]).await.unwrap();
    let r = c.create_transfers(vec![hold]).await.unwrap();
    assert_eq!(names(&r), ["ok"]);
    assert_eq!(balance(&c, 1001).await.0, 5);
    wait_until(T, "hold expired", || async {
        balance(&c, 1001).await.0 == 0 && c.get_shard(1).await.unwrap().pending == 0
    })
    .await;
    let hash = c.get_shard(1).await.unwrap().state_hash;
    b.stop().await;

    // Another shard count or partitioning: refused, naming both.
    for (shards, part) in [(3, "range:1000"), (2, "hash"), (0, "range:1000")] {
        let mut other = cfg.clone();
        other.ledger_shards = shards;
        other.ledger_partitioning = part.into();
        let rt_err = txpipe_broker::run(other, listeners().await, async {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            rt_err.contains("--ledger-shards 2 --ledger-partitioning range:1000"),
            "{rt_err}"
        );
    }

    // The same layout restarts with the state (from the final snapshot).
    let b = TestBroker::start(cfg);
    let c = LedgerClient::connect(vec![b.grpc.to_string()], T)
        .await
        .unwrap();
    assert_eq!(c.get_shard(1).await.unwrap().state_hash, hash);
    let r = c.create_accounts(vec![account(1)]).await.unwrap();
    assert_eq!(names(&r), ["exists"]);
    b.stop().await;
}

/// Account `id`'s balances on shard `shard` (clearing accounts have the same id on every
/// shard), zeros when absent.
async fn balance_on(c: &LedgerClient, shard: u32, id: u128) -> (u128, u128, u128, u128) {
    let r = c
        .call(shard, |mut raw, s| async move {
            raw.lookup_accounts(pb::LookupAccountsRequest {
                shard: s,
                ids: vec![to_pb(id).unwrap()],
            })
            .await
        })
        .await
        .unwrap();
    r.accounts.first().map_or((0, 0, 0, 0), |a| {
        (
            from_pb(a.debits_pending.as_ref()),
            from_pb(a.debits_posted.as_ref()),
            from_pb(a.credits_pending.as_ref()),
            from_pb(a.credits_posted.as_ref()),
        )
    })
}

/// Sums over every account of every shard (clearing accounts included):
/// `(debits_pending, debits_posted, credits_pending, credits_posted)`, and the pending holds.
async fn totals(c: &LedgerClient) -> ((u128, u128, u128, u128), u64) {
    let mut sum = (0, 0, 0, 0);
    let mut pending = 0;
    for a in c.list_accounts(0, u128::MAX).await.unwrap() {
        sum.0 += from_pb(a.debits_pending.as_ref());
        sum.1 += from_pb(a.debits_posted.as_ref());
        sum.2 += from_pb(a.credits_pending.as_ref());
        sum.3 += from_pb(a.credits_posted.as_ref());
    }
    for s in 0..c.shards() {
        pending += c.get_shard(s).await.unwrap().pending;
    }
    (sum, pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_transfers_commit_or_abort_on_both_shards_and_resends_move_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, mut nodes) = start_cluster(dir.path());
    let c = LedgerClient::connect(configs[0].client_addrs.clone(), T)
        .await
        .unwrap();
    let limited = |id| pb::Account {
        flags: 2, // debits_must_not_exceed_credits
        ..account(id)
    };
    let r = c
        .create_accounts(vec![
            limited(1),
            account(2),
            account(1001),
            account(2001),
            account(500),
        ])
        .await
        .unwrap();
    assert!(r.iter().all(|r| r.name == "ok"), "{r:?}");
    // Fund account 1 with 100 from account 500 (same shard).
    let r = c
        .create_transfers(vec![transfer(1, 500, 1, 100, 0)])
        .await
        .unwrap();
    assert_eq!(names(&r), ["ok"]);
    let clearing = clearing_account(1);

    // Commit: 1 (ledger-0) → 1001 (ledger-1), through the clearing accounts.
    let r = c
        .create_transfers(vec![transfer(100, 1, 1001, 30, 0)])
        .await
        .unwrap();
    assert_eq!(names(&r), ["ok"]);
    assert_eq!(balance(&c, 1).await, (0, 30, 0, 100));
    assert_eq!(balance(&c, 1001).await, (0, 0, 0, 30));
    assert_eq!(balance_on(&c, 0, clearing).await, (0, 0, 0, 30));
    assert_eq!(balance_on(&c, 1, clearing).await, (0, 30, 0, 0));

    // Abort: over account 1's limit (exceeds_credits); the credit leg on ledger-2 is voided
    // and nothing stays pending.
    let r = c
        .create_transfers(vec![transfer(101, 1, 2001, 1000, 0)])
        .await
        .unwrap();
    assert_eq!(names(&r), ["exceeds_credits"]);
    assert_eq!(balance(&c, 2001).await, (0, 0, 0, 0));
    assert_eq!(balance_on(&c, 2, clearing).await, (0, 0, 0, 0));
    // A missing credit account aborts too, and the debit leg's hold is released.
    let r = c
        .create_transfers(vec![transfer(102, 1, 1500, 5, 0)])
        .await
        .unwrap();
    assert_eq!(names(&r), ["credit_account_not_found"]);
    assert_eq!(balance(&c, 1).await, (0, 30, 0, 100));

    // Resends: `exists` for the committed one, its failure for the aborted one, a differing
    // field named; nothing moves.
    let r = c
        .create_transfers(vec![
            transfer(100, 1, 1001, 30, 0),
            transfer(101, 1, 2001, 1000, 0),
            transfer(100, 1, 1001, 31, 0),
        ])
        .await
        .unwrap();
    assert_eq!(
        names(&r),
        ["exists", "exceeds_credits", "exists_with_different_amount"]
    );
    assert_eq!(balance(&c, 1).await, (0, 30, 0, 100));
    assert_eq!(balance(&c, 1001).await, (0, 0, 0, 30));

    // A batch mixing shard-local and cross-shard transfers keeps its order.
    let r = c
        .create_transfers(vec![
            transfer(103, 1, 2, 5, 0),
            transfer(104, 1, 2001, 5, 0),
            transfer(105, 1001, 2, 5, 0),
        ])
        .await
        .unwrap();
    assert_eq!(names(&r), ["ok", "ok", "ok"]);
    assert_eq!(balance(&c, 2).await, (0, 0, 0, 10));
    assert_eq!(balance(&c, 2001).await, (0, 0, 0, 5));
    // Cross-shard transfers must be plain.
    assert!(matches!(
        c.create_transfers(vec![transfer(106, 1, 1001, 5, PENDING)])
            .await,
        Err(LedgerClientError::Unsupported(_))
    ));

    // Totals: debits equal credits over all accounts, clearing included; the clearing
    // accounts net to zero; no hold pending; every coordinator's table is complete.
    let (sum, pending) = totals(&c).await;
    assert_eq!(pending, 0);
    assert_eq!((sum.0, sum.2), (0, 0));
    assert_eq!(sum.1, sum.3);
    let mut net: i128 = 0;
    for s in 0..SHARDS {
        let (_, dp, _, cp) = balance_on(&c, s, clearing).await;
        net += cp as i128 - dp as i128;
        assert_eq!(c.get_shard(s).await.unwrap().cross_open, 0);
    }
    assert_eq!(net, 0);
    assert_eq!(c.get_shard(0).await.unwrap().cross_transfers, 4);
    assert_replicas_agree(&nodes).await;

    // The leader of the credit shard crashes: the next cross-shard transfers follow its new
    // leader and still commit on both shards.
    let leader1 = c.get_shard(1).await.unwrap().leader;
    let killed = configs[0]
        .client_addrs
        .iter()
        .position(|a| *a == leader1)
        .expect("leader among the nodes");
    nodes[killed].take().unwrap().crash();
    let r = c
        .create_transfers(vec![
            transfer(110, 1, 1001, 1, 0),
            transfer(111, 1001, 2001, 1, 0),
        ])
        .await
        .unwrap();
    assert_eq!(names(&r), ["ok", "ok"]);
    assert_eq!(balance(&c, 1001).await, (0, 6, 0, 31));
    let (sum, pending) = totals(&c).await;
    assert_eq!((pending, sum.0, sum.2), (0, 0, 0));
    assert_eq!(sum.1, sum.3);
    assert_replicas_agree(&nodes).await;
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_aborts_a_coordinator_that_stopped_after_prepare_and_finishes_a_decided_one() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, nodes) = start_cluster(dir.path());
    let c = LedgerClient::connect(configs[0].client_addrs.clone(), T)
        .await
        .unwrap()
        .with_prepare_timeout(Duration::from_millis(300));
    let r = c
        .create_accounts(vec![
            account(1),
            account(1001),
            account(2001),
            pb::Account {
                flags: 2, // debits_must_not_exceed_credits, nothing credited yet
                ..account(3)
            },
        ])
        .await
        .unwrap();
    assert!(r.iter().all(|r| r.name == "ok"), "{r:?}");

    // A coordinator that stops after holding both legs (no decision).
    let stalled = transfer(200, 1, 1001, 7, 0);
    let begun = c.begin_cross(c.cross_plan(&stalled)).await.unwrap();
    assert_eq!(begun.name, "ok");
    let rec = begun.record.unwrap();
    assert_eq!(c.prepare_legs(&rec).await.unwrap(), None);
    assert_eq!(balance(&c, 1).await, (7, 0, 0, 0));
    assert_eq!(balance(&c, 1001).await, (0, 0, 7, 0));

    // One that stops after deciding commit (no post).
    let decided = transfer(201, 1, 2001, 3, 0);
    let rec2 = c
        .begin_cross(c.cross_plan(&decided))
        .await
        .unwrap()
        .record
        .unwrap();
    assert_eq!(c.prepare_legs(&rec2).await.unwrap(), None);
    let d = c.decide_cross(&rec2, None).await.unwrap();
    assert_eq!(d.name, "ok");

    // And one that stops right after begin (no leg held; its debit leg could not be held
    // now: account 3 has nothing).
    let rec3 = c
        .begin_cross(c.cross_plan(&transfer(202, 3, 1001, 2, 0)))
        .await
        .unwrap()
        .record
        .unwrap();

    // A leader's recovery task aborts the first past its prepare deadline (both holds
    // voided) and posts the second.
    wait_until(T, "recovery finished both", || async {
        c.get_shard(0).await.unwrap().cross_open == 0
    })
    .await;
    assert_eq!(balance(&c, 1).await, (0, 3, 0, 0));
    assert_eq!(balance(&c, 3).await, (0, 0, 0, 0));
    assert_eq!(balance(&c, 1001).await, (0, 0, 0, 0));
    assert_eq!(balance(&c, 2001).await, (0, 0, 0, 3));
    let (sum, pending) = totals(&c).await;
    assert_eq!(pending, 0);
    assert_eq!(sum, (0, 6, 0, 6));
    assert_eq!(c.get_shard(0).await.unwrap().cross_transfers, 3);

    // The stalled coordinator comes back: its commit reads the abort and it voids; a resend
    // answers the recorded reason and the committed one `exists`.
    let late = c.decide_cross(&rec, None).await.unwrap();
    assert_eq!(late.name, "already_decided");
    assert_eq!(
        late.record.as_ref().unwrap().abort_name,
        "pending_transfer_expired"
    );
    c.finish_cross(late.record.as_ref().unwrap()).await.unwrap();
    let r = c.create_transfers(vec![stalled, decided]).await.unwrap();
    assert_eq!(names(&r), ["pending_transfer_expired", "exists"]);
    assert_eq!(balance(&c, 1001).await, (0, 0, 0, 0));

    // A slow coordinator holding its legs after recovery voided them reserves nothing: held
    // legs answer `exists`, and a leg never held was fenced by its void (its id held
    // between the clearing and fence accounts and voided at once), so holding it fails even
    // once account 3 could pay.
    assert_eq!(c.prepare_legs(&rec).await.unwrap(), None);
    let r = c
        .create_transfers(vec![transfer(300, 1, 3, 10, 0)])
        .await
        .unwrap();
    assert_eq!(names(&r), ["ok"]);
    assert_eq!(
        c.prepare_legs(&rec3).await.unwrap().map(|(_, n)| n),
        Some("exists_with_different_flags".into())
    );
    assert_eq!(totals(&c).await.1, 0);
    assert_replicas_agree(&nodes).await;
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

/// A small bank in the style of Jepsen's: concurrent clients move money between 30 limited
/// accounts on three shards (most transfers cross shards, some overdraw) while the leader of
/// ledger-0 crashes; afterwards every transaction is complete, its two legs were both posted
/// or both voided, no hold is pending, and the customers' total is what was funded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_of_concurrent_cross_shard_transfers_keeps_its_total_through_a_leader_crash() {
    const FUNDS: u128 = 100;
    let dir = tempfile::tempdir().unwrap();
    let (configs, mut nodes) = start_cluster(dir.path());
    let c = LedgerClient::connect(configs[0].client_addrs.clone(), T)
        .await
        .unwrap()
        .with_prepare_timeout(Duration::from_millis(500));
    let customers: Vec<u128> = (0..3u128)
        .flat_map(|s| (1..=10u128).map(move |i| s * 1000 + i))
        .collect();
    let operators: Vec<u128> = (0..SHARDS)
        .map(|s| c.partitioning().operator_account(s, SHARDS))
        .collect();
    let mut accounts: Vec<pb::Account> = customers
        .iter()
        .map(|id| pb::Account {
            flags: 2,
            ..account(*id)
        })
        .collect();
    accounts.extend(operators.iter().map(|id| account(*id)));
    let r = c.create_accounts(accounts).await.unwrap();
    assert!(r.iter().all(|r| r.name == "ok"), "{r:?}");
    let funding: Vec<pb::Transfer> = customers
        .iter()
        .enumerate()
        .map(|(k, id)| {
            transfer(
                1 + k as u128,
                operators[c.shard_of(*id) as usize],
                *id,
                FUNDS,
                0,
            )
        })
        .collect();
    let r = c.create_transfers(funding).await.unwrap();
    assert!(r.iter().all(|r| r.name == "ok"), "{r:?}");

    // Four clients, 25 transfers each, from a fixed pseudo-random sequence.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..4u128).map(|w| {
        let c = c.clone();
        let customers = customers.clone();
        let progress = std::sync::Arc::clone(&progress);
        tokio::spawn(async move {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (w as u64 + 1);
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut sent = Vec::new();
            for k in 0..25u128 {
                let from = customers[(next() % 30) as usize];
                let mut to = customers[(next() % 30) as usize];
                if to == from {
                    to = customers[(customers.iter().position(|a| *a == from).unwrap() + 11) % 30];
                }
                let t = transfer(
                    10_000 + w * 100 + k,
                    from,
                    to,
                    u128::from(next() % 60 + 1),
                    0,
                );
                // An error (the crash) leaves the outcome unknown: the resend below settles it.
                let name = c
                    .create_transfers(vec![t])
                    .await
                    .ok()
                    .map(|r| r[0].name.clone());
                sent.push((t, name));
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            sent
        })
    });
    let crash = async {
        // Crash once the clients are under way (and not finished).
        wait_until(T, "clients under way", || async {
            progress.load(std::sync::atomic::Ordering::Relaxed) >= 10
        })
        .await;
        let leader0 = c.get_shard(0).await.unwrap().leader;
        let killed = configs[0]
            .client_addrs
            .iter()
            .position(|a| *a == leader0)
            .expect("leader among the nodes");
        nodes[killed].take().unwrap().crash();
        progress.load(std::sync::atomic::Ordering::Relaxed)
    };
    let (sent, at_crash) = tokio::join!(futures::future::join_all(workers), crash);
    assert!(at_crash < 100, "the crash came after the clients were done");
    let sent: Vec<(pb::Transfer, Option<String>)> =
        sent.into_iter().flat_map(|r| r.unwrap()).collect();

    // Resend everything: answers are final now and consistent with the first ones.
    let resend = c
        .create_transfers(sent.iter().map(|(t, _)| *t).collect())
        .await
        .unwrap();
    let mut committed = 0;
    for ((t, first), again) in sent.iter().zip(&resend) {
        match first.as_deref() {
            Some("ok") => assert_eq!(again.name, "exists", "{t:?}"),
            Some(other) => assert_eq!(again.name, other, "{t:?}"),
            None => {}
        }
        committed += usize::from(again.name == "exists" || again.name == "ok");
    }
    assert!(committed > 10, "only {committed} transfers committed");

    // Every transaction complete, its legs both posted or both voided.
    wait_until(T, "no open cross-shard transfer", || async {
        let mut open = 0;
        for s in 0..SHARDS {
            open += c.get_shard(s).await.unwrap().cross_open;
        }
        open == 0
    })
    .await;
    for (t, _) in sent.iter().filter(|(t, _)| c.is_cross(t)) {
        let plan = c.cross_plan(t);
        let mut kinds = Vec::new();
        for leg in &plan.legs {
            let found = c
                .call(leg.shard, |mut raw, s| {
                    let ids = vec![leg.resolve_id.unwrap()];
                    async move {
                        raw.lookup_transfers(pb::LookupTransfersRequest { shard: s, ids })
                            .await
                    }
                })
                .await
                .unwrap()
                .transfers;
            assert_eq!(found.len(), 1, "leg of {} resolved", from_pb(t.id.as_ref()));
            kinds.push(found[0].flags & (POST | VOID));
        }
        assert_eq!(
            kinds[0],
            kinds[1],
            "both legs of {} alike",
            from_pb(t.id.as_ref())
        );
    }
    let (sum, pending) = totals(&c).await;
    assert_eq!((pending, sum.0, sum.2), (0, 0, 0));
    assert_eq!(sum.1, sum.3);
    let mut held = 0u128;
    for id in &customers {
        let (dp, dpo, cp, cpo) = balance(&c, *id).await;
        assert_eq!((dp, cp), (0, 0));
        assert!(cpo >= dpo, "account {id} overdrawn");
        held += cpo - dpo;
    }
    assert_eq!(held, FUNDS * 30, "the customers' total is unchanged");
    assert_replicas_agree(&nodes).await;
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

/// With mutual TLS and the ACL on: the cross-shard calls need the `ledger` role (a `reader`
/// is refused), and a shard leader's recovery task, dialling with its own `broker`
/// certificate, still aborts a coordinator that stopped after prepare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_recovery_finishes_cross_shard_transfers_with_the_brokers_own_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::pki::Ca::new(&dir.path().join("pki"), "cluster");
    let mut cfgs = cluster_configs(dir.path(), 3);
    for (i, (c, _)) in cfgs.iter_mut().enumerate() {
        c.ledger_shards = SHARDS;
        ca.leaf(&format!("broker/{i}")).serve(c);
    }
    let addrs = cfgs[0].0.client_addrs.clone();
    let nodes: Vec<Option<TestBroker>> = cfgs
        .into_iter()
        .map(|(c, l)| Some(TestBroker::start_on(c, l)))
        .collect();
    let c = LedgerClient::connect_with(addrs.clone(), T, Some(ca.leaf("ledger").options()))
        .await
        .unwrap()
        .with_prepare_timeout(Duration::from_millis(300));
    let r = c
        .create_accounts(vec![account(1), account(1001)])
        .await
        .unwrap();
    assert!(r.iter().all(|r| r.name == "ok"), "{r:?}");

    let reader = LedgerClient::connect_with(addrs, T, Some(ca.leaf("reader").options())).await;
    assert!(reader.is_err(), "a reader may not use the ledger");

    let stalled = transfer(200, 1, 1001, 7, 0);
    let rec = c
        .begin_cross(c.cross_plan(&stalled))
        .await
        .unwrap()
        .record
        .unwrap();
    assert_eq!(c.prepare_legs(&rec).await.unwrap(), None);
    assert_eq!(balance(&c, 1).await, (7, 0, 0, 0));
    wait_until(T, "recovery aborted it", || async {
        c.get_shard(0).await.unwrap().cross_open == 0
    })
    .await;
    assert_eq!(balance(&c, 1).await, (0, 0, 0, 0));
    assert_eq!(balance(&c, 1001).await, (0, 0, 0, 0));
    let r = c.create_transfers(vec![stalled]).await.unwrap();
    assert_eq!(names(&r), ["pending_transfer_expired"]);
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}
