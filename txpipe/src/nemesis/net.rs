//! The nemesis's own network: one network namespace per broker, joined by veth pairs to a
//! bridge in the root namespace, and the iptables rules that cut links.
//!
//! Run `r` (1-250, picked free at start) is named by the prefix `txnm<r>`: namespaces
//! `txnm<r>-b<i>`, bridge `txnm<r>br` with `10.77.<r>.254/24`, veth pairs `txnm<r>v<i>` (root
//! side, on the bridge) and `txnm<r>p<i>` (in the namespace, `10.77.<r>.<i+1>/24`). Bridged
//! traffic goes through the root namespace's FORWARD chain when `br_netfilter` is loaded
//! (Docker hosts: policy DROP), so one ACCEPT rule for the bridge, commented
//! `txpipe-nemesis txnm<r>`, is inserted there.
//!
//! A cut is a DROP rule in a broker's own namespace (INPUT from, or OUTPUT to, the other
//! brokers' addresses only), so clients in the root namespace still reach it. [`Net`] tears
//! everything down when dropped; [`cleanup`] removes what earlier runs left behind, by prefix.

use std::process::Command;

use anyhow::{Context, Result, bail};

use super::schedule::Direction;

/// Prefix of every name the nemesis creates.
pub const PREFIX: &str = "txnm";

/// Comment of the FORWARD rule that lets the bridge's traffic through.
const RULE_COMMENT: &str = "txpipe-nemesis";

/// Runs `cmd args`; its stdout, or an error with its stderr.
fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The effective user id, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Why the nemesis cannot run here (not root, no `ip`/`iptables`, no network namespaces);
/// `None` when it can.
pub fn unsupported() -> Option<String> {
    if effective_uid() != Some(0) {
        return Some("the nemesis needs root (network namespaces, iptables)".into());
    }
    if let Err(e) = run("iptables", &["--version"]) {
        return Some(format!("iptables is not usable: {e:#}"));
    }
    let probe = format!("{PREFIX}probe{}", std::process::id());
    if let Err(e) = run("ip", &["netns", "add", &probe]) {
        return Some(format!("network namespaces are not available: {e:#}"));
    }
    let exec = run("ip", &["netns", "exec", &probe, "iptables", "-w", "-S"]);
    let _ = run("ip", &["netns", "del", &probe]);
    if let Err(e) = exec {
        return Some(format!(
            "iptables does not work in a network namespace: {e:#}"
        ));
    }
    None
}

/// The network of one run (see the module docs). Dropping it tears it down.
pub struct Net {
    /// `txnm<r>`.
    pub prefix: String,
    run: u8,
    brokers: usize,
    torn: bool,
}

impl Net {
    /// Creates the bridge, the namespaces and the veth pairs for `brokers` brokers. Whatever
    /// was created is removed again when a step fails.
    pub fn create(brokers: usize) -> Result<Self> {
        let start = (std::process::id() % 250) as u8;
        let run = (0..250u8)
            .map(|k| (start.wrapping_add(k) % 250) + 1)
            .find(|r| !std::path::Path::new(&format!("/sys/class/net/{PREFIX}{r}br")).exists())
            .context("no free run number (250 runs' bridges exist; try --cleanup)")?;
        let net = Self {
            prefix: format!("{PREFIX}{run}"),
            run,
            brokers,
            torn: false,
        };
        net.build()?;
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn forward_rule(&self) -> Vec<String> {
        let br = self.bridge();
        let comment = format!("{RULE_COMMENT} {}", self.prefix);
        [
            "FORWARD",
            "-i",
            &br,
            "-o",
            &br,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "ACCEPT",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Namespace of broker `i`.
    pub fn netns(&self, i: usize) -> String {
        format!("{}-b{i}", self.prefix)
    }

    /// Address of broker `i` (inside its namespace).
    pub fn addr(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.run, i + 1)
    }

    /// The subnet, for messages.
    pub fn subnet(&self) -> String {
        format!("10.77.{}.0/24", self.run)
    }

    fn build(&self) -> Result<()> {
        let br = self.bridge();
        let gw = format!("10.77.{}.254/24", self.run);
        run("ip", &["link", "add", &br, "type", "bridge"])?;
        run("ip", &["addr", "add", &gw, "dev", &br])?;
        run("ip", &["link", "set", &br, "up"])?;
        let mut rule = vec!["-w".to_string(), "-I".to_string()];
        rule.extend(self.forward_rule());
        run(
            "iptables",
            &rule.iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
        for i in 0..self.brokers {
            let ns = self.netns(i);
            let host = format!("{}v{i}", self.prefix);
            let peer = format!("{}p{i}", self.prefix);
            let addr = format!("{}/24", self.addr(i));
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &["link", "add", &host, "type", "veth", "peer", "name", &peer],
            )?;
            run("ip", &["link", "set", &peer, "netns", &ns])?;
            run("ip", &["link", "set", &host, "master", &br, "up"])?;
            let in_ns = |args: &[&str]| {
                let mut a = vec!["netns", "exec", ns.as_str()];
                a.extend_from_slice(args);
                run("ip", &a)
            };
            in_ns(&["ip", "link", "set", "lo", "up"])?;
            in_ns(&["ip", "addr", "add", &addr, "dev", &peer])?;
            in_ns(&["ip", "link", "set", &peer, "up"])?;
        }
        Ok(())
    }

    /// Runs iptables in broker `i`'s namespace.
    fn iptables(&self, i: usize, args: &[&str]) -> Result<()> {
        let ns = self.netns(i);
        let mut a = vec!["netns", "exec", ns.as_str(), "iptables", "-w"];
        a.extend_from_slice(args);
        run("ip", &a).map(drop)
    }

    /// Cuts broker `node` from each broker of `others` in `direction` (rules in `node`'s
    /// namespace only).
    pub fn cut(&self, node: usize, others: &[usize], direction: Direction) -> Result<()> {
        for &j in others {
            let ip = self.addr(j);
            if matches!(direction, Direction::Both | Direction::Inbound) {
                self.iptables(node, &["-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
            }
            if matches!(direction, Direction::Both | Direction::Outbound) {
                self.iptables(node, &["-A", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<()> {
        for i in 0..self.brokers {
            self.iptables(i, &["-F", "INPUT"])?;
            self.iptables(i, &["-F", "OUTPUT"])?;
        }
        Ok(())
    }

    /// Kills whatever still runs in the namespaces, deletes them, the bridge and the FORWARD
    /// rule. Idempotent; errors are printed, not returned (it runs from `Drop`).
    pub fn teardown(&mut self) {
        if std::mem::replace(&mut self.torn, true) {
            return;
        }
        for i in 0..self.brokers {
            // Deleting the root side deletes the pair; a namespace whose killed processes
            // have not exited yet would otherwise keep its end (and so this one) alive.
            let _ = run("ip", &["link", "del", &format!("{}v{i}", self.prefix)]);
            remove_netns(&self.netns(i));
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
        let mut rule = vec!["-w".to_string(), "-D".to_string()];
        rule.extend(self.forward_rule());
        if let Err(e) = run(
            "iptables",
            &rule.iter().map(String::as_str).collect::<Vec<_>>(),
        ) {
            eprintln!("txpipe nemesis: removing the FORWARD rule: {e:#}");
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// SIGKILLs every process of namespace `ns` (after SIGCONT, should one be paused) and
/// deletes it.
fn remove_netns(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        }
    }
    if let Err(e) = run("ip", &["netns", "del", ns]) {
        eprintln!("txpipe nemesis: deleting namespace {ns}: {e:#}");
    }
}

/// Removes every namespace, link and FORWARD rule an earlier run left behind (names starting
/// with [`PREFIX`]); returns what was removed.
pub fn cleanup() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for line in run("ip", &["netns", "list"])?.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if name.starts_with(PREFIX) {
            remove_netns(name);
            removed.push(format!("netns {name}"));
        }
    }
    for entry in std::fs::read_dir("/sys/class/net").context("listing /sys/class/net")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) && run("ip", &["link", "del", &name]).is_ok() {
            removed.push(format!("link {name}"));
        }
    }
    for line in run("iptables", &["-w", "-S", "FORWARD"])?.lines() {
        if line.contains(RULE_COMMENT)
            && let Some(spec) = line.strip_prefix("-A ")
        {
            // `-S` quotes the comment; split it back into arguments.
            let mut args = vec!["-w".to_string(), "-D".to_string()];
            args.extend(split_rule(spec));
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            if run("iptables", &a).is_ok() {
                removed.push(format!("FORWARD rule {spec}"));
            }
        }
    }
    Ok(removed)
}

/// Splits an `iptables -S` rule into arguments, honouring double quotes.
fn split_rule(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_rule_splits_back_into_its_arguments() {
        let s = r#"FORWARD -i txnm3br -o txnm3br -m comment --comment "txpipe-nemesis txnm3" -j ACCEPT"#;
        let v = split_rule(s);
        assert_eq!(v.len(), 11);
        assert_eq!(v[8], "txpipe-nemesis txnm3");
        assert_eq!(v[10], "ACCEPT");
    }
}
