//! `txpipe ledger` against an in-process broker with three ledger shards (seed 004's
//! commands): create accounts twice, a transfer file with a bad and a cross-shard line, a
//! balance, a bulk listing and the dump.

mod common;

use std::process::Command;

use common::InProcessBroker;

fn txpipe(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_txpipe"))
        .arg("ledger")
        .arg("--brokers")
        .arg(addr)
        .args(args)
        .output()
        .expect("txpipe runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_commands_run_against_three_shards() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = txpipe_broker::Config::new(dir.path().join("broker"));
    cfg.ledger_shards = 3;
    let broker = InProcessBroker::start(cfg).await;
    let addr = broker.addr.clone();
    let run = |args: Vec<String>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            txpipe(&addr, &a)
        })
    };
    let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();

    let (code, out, err) = run(args("create-accounts --from 1 --to 3000 --credit-limit 10"))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3000 accounts: ok 3000"), "{out}");
    let (code, out, _) = run(args("create-accounts --from 1 --to 3000 --credit-limit 10"))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("3000 accounts: exists 3000"), "{out}");
    assert!(out.contains("opening credits of 10: exists 3000"), "{out}");

    let file = dir.path().join("transactions.txt");
    std::fs::write(
        &file,
        "(1,2,3)\n(1001,1002,4)\n(1,1001,2)\n(bad)\n(5,6,100)\n",
    )
    .unwrap();
    let f = file.display().to_string();
    let (code, out, err) = run(vec!["transfer".into(), "--file".into(), f.clone()])
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(":4: \"(bad)\""), "{err}");
    assert!(
        !out.contains("line 3:"),
        "the cross-shard line is ok: {out}"
    );
    assert!(out.contains("line 5: (5,6,100): exceeds_credits"), "{out}");
    assert!(
        out.contains("4 transfers: exceeds_credits 1, ok 3"),
        "{out}"
    );
    let (code, _, err) = run(vec![
        "transfer".into(),
        "--file".into(),
        f,
        "--strict".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("--strict"), "{err}");

    let (code, out, _) = run(args("transfer 2 3 1")).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("(2 -> 3, 1): ok"), "{out}");
    let (_, out, _) = run(args("balance 1")).await.unwrap();
    assert!(out.contains("account 1 on ledger-0: balance 5"), "{out}");
    let (_, out, _) = run(args("accounts --from 1000 --to 1002")).await.unwrap();
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("account 1001 on ledger-1: balance 8"), "{out}");
    let (code, out, _) = run(args("dump")).await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ledger-")).count(),
        3,
        "{out}"
    );
    assert!(out.contains("accounts 1001"), "{out}");

    broker.stop().await;
}
