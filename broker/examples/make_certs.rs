//! Makes a throw-away CA and the certificates of a TLS txpipe cluster (docs/security.md):
//! `ca.pem`, then for each principal `<name>.pem` and `<name>-key.pem`:
//!
//! - `broker-<i>` (`spiffe://txpipe/broker/<i>`) for `i < --brokers`, valid as a server for
//!   `localhost`, `127.0.0.1` and each `--dns` name (`{i}` replaced by the ordinal), and as a
//!   client (brokers dial each other with it);
//! - `producer`, `worker`, `reader`, `ledger`, `operator` (`spiffe://txpipe/<role>`).
//!
//! Every certificate is valid for `--days` days from today. The CA key is not written: to
//! issue more, run again (a new CA). For a real cluster use your PKI (cert-manager, an
//! internal CA); the principals and usages are what matter.
//!
//! `cargo run -p txpipe-broker --example make_certs -- --out certs --brokers 3 \
//!    --dns 'txpipe-broker-{i}.txpipe-broker-headless.default.svc'`

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Parser)]
struct Args {
    /// Output directory (created).
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// Broker certificates to make (`broker-0` ...).
    #[arg(long, default_value_t = 3)]
    brokers: u32,
    /// Extra DNS names of each broker; `{i}` is replaced by its ordinal. Repeatable.
    #[arg(long)]
    dns: Vec<String>,
    /// Validity of every certificate, days from today.
    #[arg(long, default_value_t = 90)]
    days: i64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {:?}", args.out))?;
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        / 86_400;
    let date = |days: i64| {
        let (y, m, d) = txpipe_client::time::civil_from_days(days);
        rcgen::date_time_ymd(y as i32, m as u8, d as u8)
    };
    let (not_before, not_after) = (date(today - 1), date(today + args.days));

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "txpipe example CA");
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(args.out.join("ca.pem"), ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let write = |file: &str, principal: &str, dns: Vec<String>| -> anyhow::Result<()> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(dns)?;
        p.subject_alt_names.push(SanType::URI(
            format!("spiffe://txpipe/{principal}").try_into()?,
        ));
        p.distinguished_name.push(DnType::CommonName, principal);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = not_before;
        p.not_after = not_after;
        let cert = p.signed_by(&key, &issuer)?;
        std::fs::write(args.out.join(format!("{file}.pem")), cert.pem())?;
        // The key readable by its owner only.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(args.out.join(format!("{file}-key.pem")))?;
        f.write_all(key.serialize_pem().as_bytes())?;
        println!(
            "{}/{file}.pem  spiffe://txpipe/{principal}",
            args.out.display()
        );
        Ok(())
    };
    for i in 0..args.brokers {
        let mut dns = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        dns.extend(args.dns.iter().map(|d| d.replace("{i}", &i.to_string())));
        write(&format!("broker-{i}"), &format!("broker/{i}"), dns)?;
    }
    for role in ["producer", "worker", "reader", "ledger", "operator"] {
        write(role, role, Vec::new())?;
    }
    println!("{}/ca.pem  the CA bundle", args.out.display());
    Ok(())
}
