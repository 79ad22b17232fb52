//! The throw-away certificates of a local run (issue 14): local mode is secure by default.
//!
//! [`RunCerts::issue`] makes a CA that lives for one run (its key is never written, so nothing
//! outside the run can be issued by it) and one certificate per process of the run, in
//! `<run dir>/tls/`:
//!
//! | file | principal (URI SAN) | used by |
//! |---|---|---|
//! | `ca.pem` | the CA | everybody, as the trust bundle |
//! | `broker-<i>.pem` | `spiffe://txpipe/broker/<i>` | broker replica `i`: server (its address hosts and `localhost` as SANs) and client towards its peers |
//! | `worker-<i>.pem` | `spiffe://txpipe/worker/worker-<i>` | worker `i` |
//! | `producer.pem` | `spiffe://txpipe/producer` | the producer |
//! | `reader.pem` | `spiffe://txpipe/reader` | the audit, local mode's own probes, and you (grpcurl) |
//!
//! Each certificate has its key beside it, `<name>-key.pem` (PKCS#8, mode 0600), and is an
//! ECDSA P-256 certificate valid from yesterday for [`VALIDITY_DAYS`] days, usable for both
//! server and client authentication. The roles are the broker's access table
//! (docs/security.md): a worker may consume `transactions` and write decisions, the producer
//! may write transactions and labels, the reader may only read.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use txpipe_client::tls::TlsOptions;

/// Validity of a run's certificates, days from today (they start yesterday, for clock skew).
pub const VALIDITY_DAYS: i64 = 30;

/// Scheme and trust domain of principals, as the broker reads them.
const PRINCIPAL_PREFIX: &str = "spiffe://txpipe/";

/// The certificates of a run, in one directory (see the module docs).
#[derive(Debug, Clone)]
pub struct RunCerts {
    dir: PathBuf,
}

impl RunCerts {
    /// Makes a new CA and the certificates of `broker_hosts.len()` brokers (broker `i` valid
    /// as a server for `localhost` and each of `broker_hosts[i]`, host names or IP
    /// addresses), `workers` workers, the producer and the reader, in `dir` (created).
    /// Certificates of an earlier run in `dir` are replaced.
    ///
    /// Errors: the directory or a file cannot be written; a host is not a valid DNS name or
    /// IP address.
    pub fn issue(dir: &Path, broker_hosts: &[Vec<String>], workers: u32) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
        let certs = Self {
            dir: dir.to_path_buf(),
        };
        let ca = Ca::new()?;
        write_file(&certs.ca(), ca.pem.as_bytes(), 0o644)?;
        for (i, hosts) in broker_hosts.iter().enumerate() {
            let mut names = vec!["localhost".to_string()];
            for h in hosts {
                if !names.contains(h) {
                    names.push(h.clone());
                }
            }
            certs.leaf(&ca, &format!("broker-{i}"), &format!("broker/{i}"), names)?;
        }
        for i in 0..workers {
            let name = format!("worker-{i}");
            certs.leaf(&ca, &name, &format!("worker/{name}"), Vec::new())?;
        }
        certs.leaf(&ca, "producer", "producer", Vec::new())?;
        certs.leaf(&ca, "reader", "reader", Vec::new())?;
        Ok(certs)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA bundle, `ca.pem`.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA and the certificate and key `<name>.pem`, `<name>-key.pem`.
    fn options(&self, name: &str) -> TlsOptions {
        TlsOptions {
            ca: self.ca(),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        }
    }

    /// Broker replica `i`'s files (server, and client towards its peers).
    pub fn broker(&self, i: usize) -> TlsOptions {
        self.options(&format!("broker-{i}"))
    }

    /// Worker `i`'s files.
    pub fn worker(&self, i: u32) -> TlsOptions {
        self.options(&format!("worker-{i}"))
    }

    /// The producer's files.
    pub fn producer(&self) -> TlsOptions {
        self.options("producer")
    }

    /// The reader's files (the audit, the probes, grpcurl).
    pub fn reader(&self) -> TlsOptions {
        self.options("reader")
    }

    /// Issues `<file>.pem` and `<file>-key.pem` for `spiffe://txpipe/<principal>`, valid as a
    /// server for `names` (DNS names or IP addresses).
    fn leaf(&self, ca: &Ca, file: &str, principal: &str, names: Vec<String>) -> Result<()> {
        let key = KeyPair::generate()?;
        let mut p =
            CertificateParams::new(names).with_context(|| format!("the host names of {file}"))?;
        let uri = format!("{PRINCIPAL_PREFIX}{principal}");
        p.subject_alt_names.push(SanType::URI(uri.try_into()?));
        p.distinguished_name.push(DnType::CommonName, principal);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut p);
        let cert = p.signed_by(&key, &ca.issuer)?;
        let tls = self.options(file);
        write_file(&tls.cert, cert.pem().as_bytes(), 0o644)?;
        write_file(&tls.key, key.serialize_pem().as_bytes(), 0o600)
    }
}

/// Command-line flags `--tls-ca-file`, `--tls-cert-file`, `--tls-key-file` of `tls`: what
/// the broker, the worker and the producer take.
pub fn tls_flags(tls: &TlsOptions) -> Vec<String> {
    vec![
        format!("--tls-ca-file={}", tls.ca.display()),
        format!("--tls-cert-file={}", tls.cert.display()),
        format!("--tls-key-file={}", tls.key.display()),
    ]
}

/// The run's CA: its certificate (PEM) and what signs with its key.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name
            .push(DnType::CommonName, "txpipe local run CA");
        set_validity(&mut p);
        let pem = p.self_signed(&key)?.pem();
        Ok(Self {
            pem,
            issuer: Issuer::new(p, key),
        })
    }
}

/// Sets `p`'s validity: yesterday (clock skew between processes) to [`VALIDITY_DAYS`] from
/// today, whole days UTC.
fn set_validity(p: &mut CertificateParams) {
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64 / 86_400);
    let date = |days: i64| {
        let (y, m, d) = txpipe_client::time::civil_from_days(days);
        rcgen::date_time_ymd(y as i32, m as u8, d as u8)
    };
    p.not_before = date(today - 1);
    p.not_after = date(today + VALIDITY_DAYS);
}

/// Writes `bytes` to `path` with permissions `mode` (a file left by an earlier run is
/// replaced, and its mode set again).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use txpipe_broker::tls::Principal;

    use super::*;

    fn cert(p: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(p).unwrap()
    }

    /// The principal a broker reads from `tls`'s certificate.
    fn principal(tls: &TlsOptions) -> String {
        Principal::from_certs(&[cert(&tls.cert)])
            .expect("a txpipe principal")
            .to_string()
    }

    #[test]
    fn run_certificates_carry_each_process_principal_and_verify_against_the_run_ca() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec![vec!["127.0.0.1".to_string()], vec!["10.0.0.2".to_string()]];
        let certs = RunCerts::issue(&dir.path().join("tls"), &hosts, 2).unwrap();
        assert_eq!(principal(&certs.broker(1)), "spiffe://txpipe/broker/1");
        assert_eq!(
            principal(&certs.worker(1)),
            "spiffe://txpipe/worker/worker-1"
        );
        assert_eq!(principal(&certs.producer()), "spiffe://txpipe/producer");
        assert_eq!(principal(&certs.reader()), "spiffe://txpipe/reader");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert(&certs.ca())).unwrap();
        let roots = Arc::new(roots);
        let now = UnixTime::now();
        // Every certificate passes the broker's client check (chain, dates, clientAuth).
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap();
        for tls in [
            certs.broker(0),
            certs.worker(0),
            certs.producer(),
            certs.reader(),
        ] {
            clients
                .verify_client_cert(&cert(&tls.cert), &[], now)
                .unwrap_or_else(|e| panic!("{}: {e}", tls.cert.display()));
        }
        // Each broker is a server for its own addresses and localhost, and no other.
        let servers = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        let serves = |i: usize, name: &str| {
            let name = ServerName::try_from(name.to_string()).unwrap();
            servers
                .verify_server_cert(&cert(&certs.broker(i).cert), &[], &name, &[], now)
                .is_ok()
        };
        assert!(serves(0, "127.0.0.1") && serves(0, "localhost"));
        assert!(serves(1, "10.0.0.2") && !serves(1, "127.0.0.1"));
        // A certificate of another run's CA is refused.
        let other = RunCerts::issue(&dir.path().join("other"), &hosts, 1).unwrap();
        assert!(
            clients
                .verify_client_cert(&cert(&other.producer().cert), &[], now)
                .is_err()
        );
        // Keys are the owner's only, and so is the directory.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&certs.worker(0).key), 0o600);
        assert_eq!(mode(&certs.reader().key), 0o600);
        assert_eq!(mode(certs.dir()), 0o700);
    }

    #[test]
    fn tls_flags_name_the_three_files() {
        let f = tls_flags(&TlsOptions {
            ca: "/t/ca.pem".into(),
            cert: "/t/p.pem".into(),
            key: "/t/p-key.pem".into(),
        });
        assert_eq!(
            f,
            [
                "--tls-ca-file=/t/ca.pem",
                "--tls-cert-file=/t/p.pem",
                "--tls-key-file=/t/p-key.pem"
            ]
        );
    }
}
