//! Mutual TLS towards brokers (issue 14): the client side.
//!
//! A broker started with `--tls-cert-file/--tls-key-file/--tls-ca-file` accepts only TLS
//! connections whose client certificate chains to its CA. Clients then dial with
//! [`TlsOptions`]: the CA that signed the brokers' certificates and this client's own
//! certificate and key (PEM files). The client's identity (its *principal*) is the URI SAN of
//! its certificate, `spiffe://txpipe/<role>[/<instance>]`; see `docs/security.md`.
//!
//! Every channel the crate builds goes through [`crate::connect::endpoint_with`], which turns
//! `http://` into `https://` and applies the TLS settings when they are given. The files are
//! read each time a channel is created, and a [`crate::leader::LeaderRouter`] drops its cached
//! channels when a [`TlsWatch`] sees the files change, so a rotated certificate is used by the
//! next connections without a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::connect::ConnectError;

/// The PEM files a client presents to TLS brokers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// CA bundle the brokers' certificates must chain to.
    pub ca: PathBuf,
    /// This client's certificate chain (leaf first).
    pub cert: PathBuf,
    /// This client's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsOptions {
    /// TLS options from three optional paths: all three give `Some`, none gives `None`
    /// (plaintext).
    ///
    /// Errors: a message naming the flags that are missing when only some are given.
    pub fn from_parts(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, String> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(Self { ca, cert, key })),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    (ca.is_none(), "--tls-ca-file"),
                    (cert.is_none(), "--tls-cert-file"),
                    (key.is_none(), "--tls-key-file"),
                ]
                .into_iter()
                .filter_map(|(m, f)| m.then_some(f))
                .collect();
                Err(format!(
                    "TLS needs --tls-ca-file, --tls-cert-file and --tls-key-file together; missing {}",
                    missing.join(", ")
                ))
            }
        }
    }

    /// Reads the three files into tonic's client TLS settings.
    ///
    /// Errors: [`ConnectError::Tls`] naming the file that could not be read.
    pub fn client_config(&self) -> Result<ClientTlsConfig, ConnectError> {
        let ca = read(&self.ca)?;
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key)))
    }
}

/// How often a [`TlsWatch`] made by the crate looks at the files: at most every 5 s.
pub const TLS_RECHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Modification time and length of each file.
type Stamp = [Option<(SystemTime, u64)>; 3];

/// Notices when the files of a [`TlsOptions`] change (modification time or size), looking at
/// them at most once per interval, so that callers can drop cached channels and reconnect with
/// a rotated certificate. Cheap to call on every use of a channel.
#[derive(Debug)]
pub struct TlsWatch {
    files: [PathBuf; 3],
    interval: Duration,
    state: Mutex<(Instant, Stamp)>,
}

impl TlsWatch {
    /// A watch of `tls`'s files as they are now, looking again at most every `interval`.
    pub fn new(tls: &TlsOptions, interval: Duration) -> Self {
        let files = [tls.ca.clone(), tls.cert.clone(), tls.key.clone()];
        let stamp = stamp(&files);
        Self {
            files,
            interval,
            state: Mutex::new((Instant::now(), stamp)),
        }
    }

    /// True once after the files changed (when the interval since the last look has passed).
    /// A caller that finds the lock taken does not wait: another caller is looking.
    pub fn changed(&self) -> bool {
        let Ok(mut st) = self.state.try_lock() else {
            return false;
        };
        if st.0.elapsed() < self.interval {
            return false;
        }
        st.0 = Instant::now();
        let now = stamp(&self.files);
        if now == st.1 {
            return false;
        }
        st.1 = now;
        true
    }
}

fn stamp(files: &[PathBuf; 3]) -> Stamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    [one(&files[0]), one(&files[1]), one(&files[2])]
}

fn read(path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|e| ConnectError::Tls(format!("reading {}: {e}", path.display())))
}

/// Client TLS flags shared by the binaries that dial brokers (`txpipe-worker`,
/// `txpipe-producer`, `txpipe`): each also an environment variable.
#[cfg(feature = "clap")]
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TlsArgs {
    /// CA bundle (PEM) the brokers' certificates must chain to. With --tls-cert-file and
    /// --tls-key-file: talk to brokers over mutual TLS. None of the three: plaintext.
    #[arg(long, env = "TXPIPE_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// This client's certificate (PEM), whose URI SAN `spiffe://txpipe/<role>` names its role.
    #[arg(long, env = "TXPIPE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, env = "TXPIPE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
}

#[cfg(feature = "clap")]
impl TlsArgs {
    /// The options, `None` for plaintext.
    ///
    /// Errors: a message naming the missing flags when only some are given.
    pub fn options(&self) -> Result<Option<TlsOptions>, String> {
        TlsOptions::from_parts(
            self.tls_ca_file.clone(),
            self.tls_cert_file.clone(),
            self.tls_key_file.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_watch_reports_a_change_of_the_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, n).unwrap();
            p
        };
        let tls = TlsOptions {
            ca: p("ca"),
            cert: p("cert"),
            key: p("key"),
        };
        let w = TlsWatch::new(&tls, Duration::ZERO);
        assert!(!w.changed());
        std::fs::write(&tls.cert, "a rotated certificate").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        let slow = TlsWatch::new(&tls, Duration::from_secs(3600));
        std::fs::write(&tls.key, "a rotated key").unwrap();
        assert!(!slow.changed(), "looked again before the interval");
    }

    #[test]
    fn tls_options_need_all_three_files_or_none() {
        assert_eq!(TlsOptions::from_parts(None, None, None), Ok(None));
        let all = TlsOptions::from_parts(Some("ca".into()), Some("c".into()), Some("k".into()))
            .unwrap()
            .unwrap();
        assert_eq!(all.key, PathBuf::from("k"));
        let e = TlsOptions::from_parts(Some("ca".into()), None, Some("k".into())).unwrap_err();
        assert!(e.contains("missing --tls-cert-file"), "{e}");
    }
}
