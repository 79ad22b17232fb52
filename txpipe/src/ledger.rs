//! `txpipe ledger`: accounts and transfers on a broker cluster's ledger shards
//! (`txpipe.ledger.v1`, see `docs/ledger.md`), with seed 004's commands: create accounts,
//! transfer (one, or a file of `(s,r,a)` lines), balance, bulk account listing and a dump of
//! every shard (leader, applied index, state hash, counts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use txpipe_client::ledger::v1 as pb;
use txpipe_client::ledger::{LedgerClient, from_pb, shard_name, to_pb};

/// Account flag: debits may not exceed credits (no overdraft).
const DEBITS_MUST_NOT_EXCEED_CREDITS: u32 = 2;
/// Most events sent in one call (the broker's batch limit).
const BATCH: usize = 8190;

/// Connection flags and the command.
#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// Broker addresses, comma-separated host:port: every replica (each call goes to its
    /// shard's leader).
    #[arg(long, env = "TXPIPE_BROKERS", default_value = "127.0.0.1:9100")]
    pub brokers: String,
    /// Give up a call (through failovers) after this many seconds.
    #[arg(long, env = "TXPIPE_TIMEOUT_S", default_value_t = 30)]
    pub timeout_s: u64,
    /// Mutual TLS towards the brokers.
    #[command(flatten)]
    pub tls: txpipe_client::tls::TlsArgs,
    /// The command.
    #[command(subcommand)]
    pub cmd: LedgerCmd,
}

/// `txpipe ledger` commands.
#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Create accounts FROM..=TO (idempotent: existing ones answer `exists`).
    CreateAccounts {
        /// First id.
        #[arg(long)]
        from: u128,
        /// Last id.
        #[arg(long)]
        to: u128,
        /// Open each account with this amount credited from its shard's operator account,
        /// and forbid spending more than was credited (debits_must_not_exceed_credits).
        #[arg(long)]
        credit_limit: Option<u128>,
        /// Ledger (currency) of the accounts.
        #[arg(long, default_value_t = 1)]
        ledger: u32,
        /// Account code.
        #[arg(long, default_value_t = 1)]
        code: u32,
    },
    /// Transfer AMOUNT from account X to account Y, or every `(s,r,a)` line of a file.
    Transfer {
        /// Debit account.
        #[arg(required_unless_present = "file")]
        from: Option<u128>,
        /// Credit account.
        #[arg(required_unless_present = "file")]
        to: Option<u128>,
        /// Amount.
        #[arg(required_unless_present = "file")]
        amount: Option<u128>,
        /// A file of `(sender,receiver,amount)` lines (seed 004's FileTransfer).
        #[arg(long, conflicts_with_all = ["from", "to", "amount"])]
        file: Option<PathBuf>,
        /// Stop at the first bad line of the file instead of reporting and skipping it.
        #[arg(long)]
        strict: bool,
        /// Transfer id (one transfer only; default: a new unique id). Resending an id is
        /// idempotent.
        #[arg(long, conflicts_with = "file")]
        id: Option<u128>,
        /// Ledger of the transfers.
        #[arg(long, default_value_t = 1)]
        ledger: u32,
        /// Transfer code.
        #[arg(long, default_value_t = 1)]
        code: u32,
    },
    /// Print an account's balance (seed 004's PrintBalance).
    Balance {
        /// Account id.
        id: u128,
    },
    /// Print the accounts FROM..=TO (seed 004's PrintDatastore, in bulk).
    Accounts {
        /// First id.
        #[arg(long, default_value_t = 1)]
        from: u128,
        /// Last id.
        #[arg(long)]
        to: u128,
    },
    /// Print every shard: leader, applied index, state hash, counts.
    Dump,
}

/// Runs a `txpipe ledger` command; returns whether every event succeeded.
///
/// Errors: no broker answers, the cluster has no ledger, a refused call, an unreadable file
/// or (with `--strict`) a bad line.
pub async fn run(args: LedgerArgs) -> Result<bool> {
    let addrs = txpipe_client::connect::parse_addrs(&args.brokers)?;
    let tls = args.tls.options().map_err(anyhow::Error::msg)?;
    let client = LedgerClient::connect_with(addrs, Duration::from_secs(args.timeout_s), tls)
        .await
        .context("connecting to the ledger")?;
    match args.cmd {
        LedgerCmd::CreateAccounts {
            from,
            to,
            credit_limit,
            ledger,
            code,
        } => create_accounts(&client, from, to, credit_limit, ledger, code).await,
        LedgerCmd::Transfer {
            from,
            to,
            amount,
            file,
            strict,
            id,
            ledger,
            code,
        } => {
            let lines = match file {
                Some(f) => {
                    let text = std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))?;
                    let (lines, bad) = parse_transfer_file(&text);
                    for (n, e) in &bad {
                        eprintln!("{}:{n}: {e}", f.display());
                    }
                    if strict && let Some((n, e)) = bad.first() {
                        bail!("{}:{n}: {e} (--strict)", f.display());
                    }
                    if !bad.is_empty() {
                        eprintln!("{} bad lines skipped", bad.len());
                    }
                    lines
                }
                None => match (from, to, amount) {
                    (Some(f), Some(t), Some(a)) => vec![(1, f, t, a)],
                    _ => bail!("give FROM TO AMOUNT or --file"),
                },
            };
            transfer(&client, lines, id, ledger, code).await
        }
        LedgerCmd::Balance { id } => {
            let a = client.lookup_accounts(&[id]).await?;
            let Some(a) = a.first() else {
                bail!(
                    "account {id} does not exist (on {})",
                    shard_name(client.shard_of(id))
                );
            };
            println!("{}", render_account(a, client.shard_of(id)));
            Ok(true)
        }
        LedgerCmd::Accounts { from, to } => {
            if from > to {
                bail!("--from {from} is above --to {to}");
            }
            for a in client.list_accounts(from, to).await? {
                let id = from_pb(a.id.as_ref());
                println!("{}", render_account(&a, client.shard_of(id)));
            }
            Ok(true)
        }
        LedgerCmd::Dump => {
            println!(
                "{} shards, partitioning {}",
                client.shards(),
                client.partitioning()
            );
            for s in 0..client.shards() {
                let r = client.get_shard(s).await?;
                println!(
                    "{}  leader {}  applied {}  hash {}  accounts {}  transfers {}  pending {}  cross-shard {} ({} open)",
                    r.shard,
                    r.leader,
                    r.applied_index,
                    hex(&r.state_hash),
                    r.accounts,
                    r.transfers,
                    r.pending,
                    r.cross_transfers,
                    r.cross_open
                );
            }
            Ok(true)
        }
    }
}

/// One line: `<id> balance <credits - debits posted>` and the four balances.
fn render_account(a: &pb::Account, shard: u32) -> String {
    let dp = from_pb(a.debits_posted.as_ref());
    let cp = from_pb(a.credits_posted.as_ref());
    let balance = if cp >= dp {
        (cp - dp).to_string()
    } else {
        format!("-{}", dp - cp)
    };
    format!(
        "account {} on {}: balance {balance} (credits posted {cp}, debits posted {dp}, pending debits {}, pending credits {})",
        from_pb(a.id.as_ref()),
        shard_name(shard),
        from_pb(a.debits_pending.as_ref()),
        from_pb(a.credits_pending.as_ref()),
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A transfer of a file: `(line number, sender, receiver, amount)`.
pub type TransferLine = (usize, u128, u128, u128);

/// Parses seed 004's transfer file: one `(sender,receiver,amount)` per line (blank lines
/// and `#` comments ignored). Returns `(line number, s, r, a)` of the good lines and
/// `(line number, error)` of the bad ones.
pub fn parse_transfer_file(text: &str) -> (Vec<TransferLine>, Vec<(usize, String)>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let inner = l
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .unwrap_or(l);
        let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
        let parsed = match parts.as_slice() {
            [s, r, a] => match (s.parse::<u128>(), r.parse::<u128>(), a.parse::<u128>()) {
                (Ok(s), Ok(r), Ok(a)) => Ok((s, r, a)),
                _ => Err(format!(
                    "{l:?}: sender, receiver and amount must be non-negative integers"
                )),
            },
            _ => Err(format!("{l:?}: expected (sender,receiver,amount)")),
        };
        match parsed {
            Ok((s, r, a)) => good.push((n, s, r, a)),
            Err(e) => bad.push((n, e)),
        }
    }
    (good, bad)
}

/// A new transfer id: the clock in ns in the high half, the process id and a counter in the
/// low half (unique across runs and processes of one machine).
fn new_id(seq: u64) -> u128 {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (u128::from(ns) << 64) | (u128::from(std::process::id()) << 32) | u128::from(seq as u32)
}

async fn transfer(
    client: &LedgerClient,
    lines: Vec<TransferLine>,
    id: Option<u128>,
    ledger: u32,
    code: u32,
) -> Result<bool> {
    let mut sent = Vec::new();
    for (k, (n, s, r, a)) in lines.into_iter().enumerate() {
        let t = pb::Transfer {
            id: to_pb(id.unwrap_or_else(|| new_id(k as u64))),
            debit_account_id: to_pb(s),
            credit_account_id: to_pb(r),
            amount: to_pb(a),
            ledger,
            code,
            ..Default::default()
        };
        sent.push(((n, s, r, a), t));
    }
    let single = sent.len() == 1;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for chunk in sent.chunks(BATCH) {
        let batch: Vec<pb::Transfer> = chunk.iter().map(|(_, t)| *t).collect();
        let results = client.create_transfers(batch).await?;
        for r in results {
            let ((n, s, rr, a), t) = &chunk[r.index as usize];
            if single {
                println!(
                    "transfer {} ({s} -> {rr}, {a}): {}",
                    from_pb(t.id.as_ref()),
                    r.name
                );
            } else if r.name != "ok" {
                println!("line {n}: ({s},{rr},{a}): {}", r.name);
            }
            *counts.entry(r.name).or_default() += 1;
        }
    }
    if !single {
        let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{} transfers: {}", sent.len(), parts.join(", "));
    }
    Ok(counts.keys().all(|k| k == "ok"))
}

async fn create_accounts(
    client: &LedgerClient,
    from: u128,
    to: u128,
    credit_limit: Option<u128>,
    ledger: u32,
    code: u32,
) -> Result<bool> {
    if from == 0 || from > to {
        bail!("--from must be at least 1 and not above --to (got {from}..={to})");
    }
    if to - from >= 10_000_000 {
        bail!("at most 10 000 000 accounts at once");
    }
    let account = |id: u128, flags: u32| pb::Account {
        id: to_pb(id),
        ledger,
        code,
        flags,
        ..Default::default()
    };
    let flags = if credit_limit.is_some() {
        DEBITS_MUST_NOT_EXCEED_CREDITS
    } else {
        0
    };
    let ids: Vec<u128> = (from..=to).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut ok = true;
    for chunk in ids.chunks(BATCH) {
        let batch = chunk.iter().map(|id| account(*id, flags)).collect();
        for r in client.create_accounts(batch).await? {
            ok &= r.name == "ok" || r.name == "exists";
            *counts.entry(r.name).or_default() += 1;
        }
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("{} accounts: {}", ids.len(), parts.join(", "));
    let Some(amount) = credit_limit else {
        return Ok(ok);
    };
    // Each shard's operator account funds that shard's accounts (transfers stay in a shard).
    let p = client.partitioning();
    let operators: Vec<u128> = (0..client.shards())
        .map(|s| p.operator_account(s, client.shards()))
        .collect();
    for r in client
        .create_accounts(operators.iter().map(|id| account(*id, 0)).collect())
        .await?
    {
        if r.name != "ok" && r.name != "exists" {
            bail!(
                "operator account {}: {}",
                operators[r.index as usize],
                r.name
            );
        }
    }
    // Funding transfer ids are derived from the account id: a rerun answers `exists`.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for chunk in ids.chunks(BATCH) {
        let batch = chunk
            .iter()
            .map(|id| pb::Transfer {
                id: to_pb((1 << 127) | id),
                debit_account_id: to_pb(operators[client.shard_of(*id) as usize]),
                credit_account_id: to_pb(*id),
                amount: to_pb(amount),
                ledger,
                code,
                ..Default::default()
            })
            .collect();
        for r in client.create_transfers(batch).await? {
            ok &= r.name == "ok" || r.name == "exists";
            *counts.entry(r.name).or_default() += 1;
        }
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "{} opening credits of {amount}: {}",
        ids.len(),
        parts.join(", ")
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_file_lines_are_parsed_and_bad_ones_reported_with_their_number() {
        let (good, bad) = parse_transfer_file(
            "(1,2,3)\n\n( 4 , 5 , 6 )\n# note\n(1,2)\n7,8,9\n(a,2,3)\n(1,2,-3)\n",
        );
        assert_eq!(good, vec![(1, 1, 2, 3), (3, 4, 5, 6), (6, 7, 8, 9)]);
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![5, 7, 8]);
    }
}
