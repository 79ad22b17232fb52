//! Three-node clusters in one process (each node in its own runtime, so a test can crash it):
//! quorum writes survive the loss of the leader, a restarted node catches up, a node behind
//! the leader's purge point catches up by install-snapshot, and clients get leader hints.
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use txpipe_broker::Config;

const T: Duration = Duration::from_secs(30);

async fn status(admin: std::net::SocketAddr) -> Option<serde_json::Value> {
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(admin).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /status.json HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .await
    .ok()??;
    let json = body.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(json).ok()
}

/// Restarts replica `i` of `configs` on its data directory and its old client and peer
/// addresses (the membership names them), with its ordinal as node id.
fn restart(configs: &[Config], i: usize) -> TestBroker {
    let mut cfg = configs[i].clone();
    cfg.node_id = Some(i as u64);
    let listeners = (
        std::net::TcpListener::bind(cfg.client_addr(i)).unwrap(),
        std::net::TcpListener::bind(&cfg.peers[i]).unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    TestBroker::start_on(cfg, listeners)
}

/// Starts a 3-replica cluster in `dir`, each node's configuration changed by `tweak`; returns
/// the configurations (for [`restart`]) and the running nodes.
fn start_cluster(
    dir: &Path,
    tweak: impl Fn(&mut Config),
) -> (Vec<Config>, Vec<Option<TestBroker>>) {
    let mut cfgs = cluster_configs(dir, 3);
    for (c, _) in cfgs.iter_mut() {
        tweak(c);
    }
    let configs = cfgs.iter().map(|(c, _)| c.clone()).collect();
    let nodes = cfgs
        .into_iter()
        .map(|(c, l)| Some(TestBroker::start_on(c, l)))
        .collect();
    (configs, nodes)
}

/// Index of the node leading `stream`, once every live node agrees on one.
async fn leader_of(nodes: &[Option<TestBroker>], stream: &str) -> usize {
    let deadline = std::time::Instant::now() + T;
    loop {
        let mut seen = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            if let Some(s) = status(n.admin).await
                && s["raft"][stream]["is_leader"] == serde_json::Value::Bool(true)
            {
                seen.push(i);
            }
        }
        if seen.len() == 1 {
            return seen[0];
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no single leader of {stream}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz(admin: std::net::SocketAddr) -> bool {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(admin) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
    })
    .await
    .unwrap_or(false)
}

async fn end_offset_on(n: &TestBroker, stream: &str) -> u64 {
    let s = status(n.admin).await.unwrap_or_default();
    s["streams"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == stream))
        .and_then(|x| x["end_offset"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_leader_crash_and_the_node_catches_up_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, mut nodes) = start_cluster(dir.path(), |_| {});
    let l = leader_of(&nodes, "labels").await;

    // A follower answers UNAVAILABLE with the leader's client address.
    let f = (l + 1) % 3;
    let mut fc = nodes[f].as_ref().unwrap().client().await;
    let err = produce(&mut fc, vec![batch("labels", 7, 1, vec![rec("k", "v")])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let hint = err
        .metadata()
        .get("txpipe-leader")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(hint, nodes[l].as_ref().unwrap().grpc.to_string());

    let mut c = nodes[l].as_ref().unwrap().client().await;
    for s in 1..=20u64 {
        let recs = (0..10).map(|i| rec(&format!("k{s}-{i}"), "v")).collect();
        produce(&mut c, vec![batch("labels", 9, s, recs)])
            .await
            .unwrap();
    }
    nodes[l].take().unwrap().crash();
    let l2 = leader_of(&nodes, "labels").await;
    assert_ne!(l2, l);
    let mut c2 = nodes[l2].as_ref().unwrap().client().await;
    wait_until(T, "new leader serves", || {
        let mut c = c2.clone();
        async move {
            c.get_stream(txpipe_client::broker::v1::GetStreamRequest {
                stream: "labels".into(),
            })
            .await
            .is_ok()
        }
    })
    .await;
    // A new leader under openraft 0.10 learns that its predecessor's last entries are
    // committed only once its own first entry commits: its end offset may lag briefly.
    wait_until(T, "no acknowledged record lost", || {
        let mut c = c2.clone();
        async move { stream_info(&mut c, "labels").await.end_offset == 200 }
    })
    .await;
    assert_eq!(stream_info(&mut c2, "labels").await.end_offset, 200);
    // The idempotent producer's exact retry of batch 20 on the new leader is a duplicate.
    let recs = (0..10).map(|i| rec(&format!("k20-{i}"), "v")).collect();
    let r = produce(&mut c2, vec![batch("labels", 9, 20, recs)])
        .await
        .unwrap();
    assert!(r[0].duplicate, "{r:?}");
    let r = produce(&mut c2, vec![batch("labels", 9, 21, vec![rec("k21", "v")])])
        .await
        .unwrap();
    assert_eq!(r[0].base_offset, 200);
    assert_eq!(fetch_all(&mut c2, "labels").await.len(), 201);

    // The crashed node restarts on its data directory (and its old ports, which the
    // membership names) and catches up.
    nodes[l] = Some(restart(&configs, l));
    let back = nodes[l].as_ref().unwrap();
    wait_until(T, "restarted node caught up", || async {
        end_offset_on(back, "labels").await == 201
    })
    .await;
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_purge_point_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, mut nodes) = start_cluster(dir.path(), |c| {
        c.segment_bytes = 8 * 1024;
        c.snapshot_interval_ms = 100;
    });
    let l = leader_of(&nodes, "transactions").await;
    let f = (l + 1) % 3;
    nodes[f].take().unwrap().crash();
    let mut c = nodes[l].as_ref().unwrap().client().await;
    let value = "x".repeat(300);
    for s in 1..=40u64 {
        let recs = (0..20).map(|i| rec(&format!("t{s}-{i}"), &value)).collect();
        produce(&mut c, vec![batch("transactions", 3, s, recs)])
            .await
            .unwrap();
    }
    // Consume and ack everything: retention deletes the leader's segments, and openraft
    // purges its log behind the snapshot.
    let mut w = TestConsumer::connect(&mut c, "transactions", "w", 1000)
        .await
        .unwrap();
    let d = w.take(800, T).await;
    w.ack(d.iter().map(|d| d.offset).collect()).await;
    let leader = nodes[l].as_ref().unwrap();
    wait_until(T, "leader purged its log", || async {
        status(leader.admin)
            .await
            .and_then(|s| s["streams"].as_array().cloned())
            .is_some_and(|a| {
                a.iter()
                    .any(|x| x["name"] == "transactions" && x["start_offset"].as_u64() > Some(0))
            })
    })
    .await;
    drop(w);
    nodes[f] = Some(restart(&configs, f));
    let back = nodes[f].as_ref().unwrap();
    wait_until(T, "follower installed the snapshot", || async {
        let s = status(back.admin).await.unwrap_or_default();
        s["streams"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == "transactions").cloned())
            .is_some_and(|x| x["end_offset"] == 800 && x["pending"] == 0)
    })
    .await;
    assert!(
        back.admin.port() > 0
            && dir
                .path()
                .join(format!("node-{f}/streams/transactions/snapshot.bin"))
                .exists()
    );
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

async fn post_voters(admin: std::net::SocketAddr, voters: &[String]) -> Option<serde_json::Value> {
    let body = serde_json::json!({ "voters": voters }).to_string();
    let resp = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(admin).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(
            s,
            "POST /cluster/voters HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .await
    .ok()??;
    serde_json::from_str(resp.split("\r\n\r\n").nth(1)?).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_grows_to_three_voters_and_shrinks_back_without_losing_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfgs = cluster_configs(dir.path(), 3);
    let peers: Vec<String> = cfgs[0].0.peers.clone();
    // Node 0 starts alone (a one-replica pipeline), with only itself as peer.
    let (mut c0, l0) = cfgs.remove(0);
    c0.peers = vec![peers[0].clone()];
    c0.client_addrs = vec![l0.0.local_addr().unwrap().to_string()];
    let n0 = TestBroker::start_on(c0, l0);
    let mut c = n0.client().await;
    for s in 1..=10u64 {
        let recs = (0..10).map(|i| rec(&format!("g{s}-{i}"), "v")).collect();
        produce(&mut c, vec![batch("labels", 5, s, recs)])
            .await
            .unwrap();
    }
    // Two more replicas start with empty volumes: they join as learners under fresh ids.
    let others: Vec<TestBroker> = cfgs
        .into_iter()
        .map(|(c, l)| TestBroker::start_on(c, l))
        .collect();
    let all = [n0.admin, others[0].admin, others[1].admin];
    wait_until(T, "both joined every group", || async {
        status(n0.admin).await.is_some_and(|s| {
            s["raft"].as_object().is_some_and(|g| {
                g.values().all(|v| {
                    v["learners"].as_array().map_or(0, Vec::len)
                        + v["voters"].as_array().map_or(0, Vec::len)
                        == 3
                })
            })
        })
    })
    .await;
    // Grow: three voters.
    let r = post_voters(n0.admin, &peers).await.unwrap();
    assert!(
        r.as_object().unwrap().values().all(|v| v == "changed"),
        "{r}"
    );
    let s = status(others[1].admin).await.unwrap();
    wait_until(T, "three voters everywhere", || async {
        let mut ok = true;
        for a in all {
            ok &= status(a).await.is_some_and(|s| {
                s["raft"].as_object().is_some_and(|g| {
                    g.values()
                        .all(|v| v["voters"].as_array().map_or(0, Vec::len) == 3)
                })
            });
        }
        ok
    })
    .await;
    let _ = s;
    wait_until(T, "new voter holds the data", || async {
        end_offset_on(&others[1], "labels").await == 100
    })
    .await;
    // Shrink back to node 0 alone.
    let r = post_voters(n0.admin, &peers[..1]).await.unwrap();
    assert!(
        r.as_object().unwrap().values().all(|v| v == "changed"),
        "{r}"
    );
    for o in others {
        o.crash();
    }
    let r = produce(
        &mut c,
        vec![batch("labels", 5, 11, vec![rec("after", "v")])],
    )
    .await
    .unwrap();
    assert_eq!(r[0].base_offset, 100, "the single voter commits alone");
    assert_eq!(fetch_all(&mut c, "labels").await.len(), 101);
    n0.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_torn_log_tail_truncates_it_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, mut nodes) = start_cluster(dir.path(), |_| {});
    let l = leader_of(&nodes, "labels").await;
    let mut c = nodes[l].as_ref().unwrap().client().await;
    for s in 1..=30u64 {
        let recs = (0..5).map(|i| rec(&format!("t{s}-{i}"), "v")).collect();
        produce(&mut c, vec![batch("labels", 4, s, recs)])
            .await
            .unwrap();
    }
    let f = (l + 1) % 3;
    let fa = nodes[f].as_ref().unwrap().admin;
    wait_until(T, "follower has everything", || async {
        status(fa)
            .await
            .is_some_and(|s| s["raft"]["labels"]["applied_index"].as_u64() >= Some(30))
    })
    .await;
    nodes[f].take().unwrap().crash();
    // Tear the tail: a frame whose write the crash interrupted (its header announces 200 bytes,
    // 12 made it to disk). Such an entry was never fsynced, so never acknowledged: cutting an
    // acknowledged entry instead would be a log reversion, which openraft 0.10 rejects (it
    // means a disk lost fsynced data).
    let logdir = dir.path().join(format!("node-{f}/streams/labels/log"));
    let mut segs: Vec<_> = std::fs::read_dir(&logdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    {
        use std::io::Write;
        let mut torn = 200u32.to_le_bytes().to_vec();
        torn.extend_from_slice(&0x1234_5678u32.to_le_bytes());
        torn.extend_from_slice(&[7u8; 12]);
        std::fs::OpenOptions::new()
            .append(true)
            .open(last)
            .unwrap()
            .write_all(&torn)
            .unwrap();
    }
    nodes[f] = Some(restart(&configs, f));
    produce(&mut c, vec![batch("labels", 4, 31, vec![rec("more", "v")])])
        .await
        .unwrap();
    let back = nodes[f].as_ref().unwrap();
    wait_until(
        T,
        "follower dropped the torn frame and caught up",
        || async { end_offset_on(back, "labels").await == 151 },
    )
    .await;
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_one_by_one_bootstrap_with_their_ordinals_and_a_lost_volume_rejoins_under_a_new_id()
 {
    let dir = tempfile::tempdir().unwrap();
    let cfgs = cluster_configs(dir.path(), 3);
    let configs: Vec<_> = cfgs.iter().map(|(c, _)| c.clone()).collect();
    let mut nodes: Vec<Option<TestBroker>> = vec![None, None, None];
    // One by one, each after the previous one serves (StatefulSet OrderedReady).
    for (i, (c, l)) in cfgs.into_iter().enumerate() {
        nodes[i] = Some(TestBroker::start_on(c, l));
        let a = nodes[i].as_ref().unwrap().admin;
        wait_until(T, "ready (or waiting for peers)", || async {
            readyz(a).await
        })
        .await;
    }
    let l = leader_of(&nodes, "labels").await;
    for (i, n) in nodes.iter().enumerate() {
        // A node reports its id once it has recovered (not while it waits for its peers or
        // opens its logs); the id it then reports must be its ordinal.
        let a = n.as_ref().unwrap().admin;
        wait_until(T, "node id reported", || async {
            status(a)
                .await
                .is_some_and(|s| s["node_id"].as_u64().is_some())
        })
        .await;
        let s = status(a).await.unwrap();
        assert_eq!(s["node_id"].as_u64(), Some(i as u64), "ordinal ids");
    }
    // Replicas started one by one may still move leadership right after the first election
    // (a loaded machine): an UNAVAILABLE answer re-resolves the leader and resends the batch
    // (same producer id and sequence, so a stored one is answered as a duplicate).
    let mut l = l;
    let deadline = std::time::Instant::now() + T;
    for s in 1..=5u64 {
        loop {
            let mut c = nodes[l].as_ref().unwrap().client().await;
            match produce(
                &mut c,
                vec![batch("labels", 6, s, vec![rec(&format!("v{s}"), "v")])],
            )
            .await
            {
                Ok(_) => break,
                Err(e)
                    if e.code() == tonic::Code::Unavailable
                        && std::time::Instant::now() < deadline =>
                {
                    l = leader_of(&nodes, "labels").await;
                }
                Err(e) => panic!("produce to the leader of labels: {e:?}"),
            }
        }
    }
    // A follower loses its volume: it comes back under a new id that replaces the old one.
    let f = (l + 1) % 3;
    nodes[f].take().unwrap().crash();
    std::fs::remove_dir_all(dir.path().join(format!("node-{f}"))).unwrap();
    nodes[f] = Some(restart(&configs, f));
    let back = nodes[f].as_ref().unwrap();
    let la = nodes[l].as_ref().unwrap().admin;
    wait_until(
        T,
        "new identity replaced the old one in every group",
        || async {
            let Some(me) = status(back.admin).await else {
                return false;
            };
            let new_id = me["node_id"].as_u64().unwrap_or(f as u64);
            new_id != f as u64
                && status(la).await.is_some_and(|s| {
                    s["raft"].as_object().is_some_and(|g| {
                        g.values().all(|v| {
                            let voters: Vec<u64> = v["voters"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .filter_map(|x| x.as_u64())
                                .collect();
                            voters.len() == 3
                                && voters.contains(&new_id)
                                && !voters.contains(&(f as u64))
                        })
                    })
                })
        },
    )
    .await;
    wait_until(T, "replacement holds the data", || async {
        end_offset_on(back, "labels").await == 5
    })
    .await;
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_follower_that_installs_a_snapshot_gets_the_dedupe_keys_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, mut nodes) = start_cluster(dir.path(), |c| {
        c.segment_bytes = 8 * 1024;
        c.decisions_max_bytes = 8 * 1024;
        c.snapshot_interval_ms = 100;
    });
    let l = leader_of(&nodes, "decisions").await;
    let f = (l + 1) % 3;
    nodes[f].take().unwrap().crash();
    let mut c = nodes[l].as_ref().unwrap().client().await;
    let value = "d".repeat(300);
    let leader = nodes[l].as_ref().unwrap();
    let mut s = 0u64;
    // Until retention removed the first decisions from the leader (and its log behind them).
    wait_until(T, "leader trimmed decisions", || {
        s += 1;
        let recs = (0..20)
            .map(|i| rec(&format!("tx-{s}-{i}"), &value))
            .collect();
        let mut c = c.clone();
        async move {
            produce(&mut c, vec![batch("decisions", 0, 0, recs)])
                .await
                .unwrap();
            status(leader.admin)
                .await
                .and_then(|s| s["streams"].as_array().cloned())
                .is_some_and(|a| {
                    a.iter()
                        .any(|x| x["name"] == "decisions" && x["start_offset"].as_u64() > Some(0))
                })
        }
    })
    .await;
    nodes[f] = Some(restart(&configs, f));
    let end_of = |i: usize| {
        let admin = nodes[i].as_ref().unwrap().admin;
        async move {
            status(admin).await.and_then(|s| {
                s["streams"]
                    .as_array()?
                    .iter()
                    .find(|x| x["name"] == "decisions")?["end_offset"]
                    .as_u64()
            })
        }
    };
    // Every key again: the leader drops them all; the follower, applying the same entries with
    // the index it received, must drop them too or its offsets would run ahead.
    let again: Vec<_> = (0..20).map(|i| rec(&format!("tx-1-{i}"), &value)).collect();
    let r = produce(&mut c, vec![batch("decisions", 0, 0, again)])
        .await
        .unwrap();
    assert_eq!((r[0].stored, r[0].deduplicated), (0, 20));
    // The leader's own figure (its /status.json is sampled once a second).
    let want = stream_info(&mut c, "decisions").await.end_offset;
    wait_until(T, "follower caught up with the same end offset", || async {
        end_of(f).await == Some(want)
    })
    .await;
    assert!(
        dir.path()
            .join(format!("node-{f}/streams/decisions/dedupe.redb"))
            .exists()
    );
    for n in nodes.into_iter().flatten() {
        n.stop().await;
    }
}
