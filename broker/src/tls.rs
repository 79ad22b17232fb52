//! Mutual TLS on the client and peer gRPC ports (issue 14), opt-in with
//! `--tls-cert-file/--tls-key-file/--tls-ca-file`.
//!
//! - [`ServerTls`]: the rustls server settings (ring provider, TLS 1.2/1.3, ALPN `h2`) built
//!   from the three PEM files. A client certificate is **required** and must chain to the CA
//!   (rustls' `WebPkiClientVerifier`: signature, validity period, client-auth usage). Before
//!   each handshake the files' modification times and sizes are compared with the loaded ones;
//!   a change reloads all three (a rotated certificate, key or CA bundle applies to the next
//!   connection, no restart). A reload that fails (a half-written file) keeps the previous
//!   settings and logs a warning.
//! - [`incoming`]: turns a stream of accepted TCP connections into TLS connections. Each
//!   handshake runs in its own task with a deadline ([`HANDSHAKE_TIMEOUT`]), so a slow or
//!   silent client cannot hold up the others; failed handshakes are counted
//!   (`txpipe_broker_tls_handshake_failures_total{port}`) and dropped.
//!   tonic's `TlsConnectInfo` carries the verified peer certificates to each request.
//! - The admin HTTP port uses the same files with [`ClientCerts::Optional`]: a client
//!   certificate is requested and verified when given, but not required (see [`crate::admin`]).
//! - [`Principal`]: who is calling, from the URI SAN of the client certificate,
//!   `spiffe://txpipe/<role>[/<instance>]`; [`Principal::of`] reads it from a request.

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{Error, Result};

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Scheme and trust domain of principal URIs: `spiffe://txpipe/<role>[/<instance>]`.
pub const PRINCIPAL_PREFIX: &str = "spiffe://txpipe/";

/// The three PEM files of a TLS broker (see [`crate::Config::tls_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf.
    pub key: PathBuf,
    /// CA bundle that client (and peer) certificates must chain to.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The same files as client settings, for dialling peers with this broker's identity.
    pub fn client_options(&self) -> txpipe_client::tls::TlsOptions {
        txpipe_client::tls::TlsOptions {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// Modification time and length of each file, in the order cert, key, CA.
type Stamp = [Option<(SystemTime, u64)>; 3];

/// Whether a listener requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Every client must present a certificate of the CA (gRPC client and peer ports; ALPN
    /// `h2`).
    Required,
    /// A client may present a certificate, which is then verified against the CA like a
    /// required one; without one the connection is accepted with no principal (the admin
    /// port: monitoring reads without a certificate, [`crate::admin`] checks mutations; ALPN
    /// `http/1.1`).
    Optional,
}

/// Server TLS settings that follow their files (see the module docs).
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    client_certs: ClientCerts,
    loaded: Mutex<(Stamp, Arc<rustls::ServerConfig>)>,
}

impl ServerTls {
    /// Loads the files.
    ///
    /// Errors: [`Error::Config`] naming the file that is missing, unreadable, not PEM, or
    /// holds no certificate or key, or a key that does not match the certificate.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>> {
        Self::load_with(files, ClientCerts::Required)
    }

    /// Loads the files for a listener whose client certificates are `client_certs`.
    ///
    /// Errors: as [`ServerTls::load`].
    pub fn load_with(files: TlsFiles, client_certs: ClientCerts) -> Result<Arc<Self>> {
        let stamp = stamp(&files);
        let config = build(&files, client_certs).map_err(Error::Config)?;
        Ok(Arc::new(Self {
            files,
            client_certs,
            loaded: Mutex::new((stamp, Arc::new(config))),
        }))
    }

    /// The files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The current settings, reloaded first when a file changed since the last load.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let now = stamp(&self.files);
        let mut loaded = self.loaded.lock().expect("tls lock");
        if loaded.0 != now {
            // Recorded even when the build fails: a broken file is reported once, and read
            // again when it changes.
            loaded.0 = now;
            match build(&self.files, self.client_certs) {
                Ok(c) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS files changed: reloaded");
                    loaded.1 = Arc::new(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files changed but cannot be loaded; keeping the previous ones")
                }
            }
        }
        Arc::clone(&loaded.1)
    }
}

fn stamp(files: &TlsFiles) -> Stamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    [one(&files.cert), one(&files.key), one(&files.ca)]
}

/// Builds the rustls server settings from the files. Errors name the file.
fn build(
    files: &TlsFiles,
    client_certs: ClientCerts,
) -> std::result::Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert, "--tls-cert-file")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key-file {}: {e}", files.key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&files.ca, "--tls-ca-file")? {
        roots
            .add(ca)
            .map_err(|e| format!("--tls-ca-file {}: {e}", files.ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier = match client_certs {
        ClientCerts::Required => verifier,
        ClientCerts::Optional => verifier.allow_unauthenticated(),
    };
    let verifier = verifier
        .build()
        .map_err(|e| format!("--tls-ca-file {}: {e}", files.ca.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "--tls-cert-file {} with --tls-key-file {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = match client_certs {
        ClientCerts::Required => vec![b"h2".to_vec()],
        ClientCerts::Optional => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

fn read_certs(
    path: &Path,
    flag: &str,
) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The TLS connections of `incoming` (accepted TCP connections): each handshake runs in its
/// own task, limited to [`HANDSHAKE_TIMEOUT`], with the settings of [`ServerTls::config`] at
/// that moment. Accept errors are passed on. Failed handshakes are counted in `failures` and
/// logged at debug level (a misconfigured client retries often). The accept loop ends when the
/// returned stream is dropped (the server stopped) or `incoming` ends.
pub fn incoming<S, T, E>(
    incoming: S,
    tls: Arc<ServerTls>,
    failures: prometheus::IntCounter,
) -> ReceiverStream<std::result::Result<TlsStream<T>, E>>
where
    S: Stream<Item = std::result::Result<T, E>> + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut incoming = pin!(incoming);
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = incoming.next() => next,
            };
            match next {
                None => return,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(io)) => {
                    let acceptor = TlsAcceptor::from(tls.config());
                    let tx = tx.clone();
                    let failures = failures.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                            Ok(Ok(conn)) => {
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Ok(Err(e)) => {
                                failures.inc();
                                tracing::debug!(error = %e, "TLS handshake refused")
                            }
                            Err(_) => {
                                failures.inc();
                                tracing::debug!(
                                    timeout_ms = HANDSHAKE_TIMEOUT.as_millis() as u64,
                                    "TLS handshake timed out"
                                )
                            }
                        }
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// An authenticated caller: the URI SAN `spiffe://txpipe/<role>[/<instance>]` of its verified
/// client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The role (`producer`, `worker`, `reader`, `audit`, `ledger`, `operator`, `broker`;
    /// others are authenticated but allowed nothing).
    pub role: String,
    /// What follows the role, e.g. a pod name; `None` when absent.
    pub instance: Option<String>,
}

impl Principal {
    /// Parses `spiffe://txpipe/<role>[/<instance>]`; `None` for any other URI or an empty
    /// role.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(PRINCIPAL_PREFIX)?;
        let (role, instance) = match rest.split_once('/') {
            Some((r, i)) => (r, (!i.is_empty()).then(|| i.to_string())),
            None => (rest, None),
        };
        if role.is_empty() {
            return None;
        }
        Some(Self {
            role: role.to_string(),
            instance,
        })
    }

    /// The principal of a verified certificate chain (leaf first): the first URI SAN of the
    /// leaf that parses with [`Principal::from_uri`].
    pub fn from_certs(certs: &[CertificateDer<'_>]) -> Option<Self> {
        let leaf = certs.first()?;
        let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
        cert.valid_uri_names().find_map(Self::from_uri)
    }

    /// The principal of the caller of `req`, when it came over mutual TLS with a certificate
    /// that names one.
    pub fn of<T>(req: &tonic::Request<T>) -> Option<Self> {
        Self::from_certs(&req.peer_certs()?)
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PRINCIPAL_PREFIX}{}", self.role)?;
        if let Some(i) = &self.instance {
            write!(f, "/{i}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse_from_spiffe_uris_of_the_txpipe_domain_only() {
        let p = Principal::from_uri("spiffe://txpipe/worker/worker-3").unwrap();
        assert_eq!(p.role, "worker");
        assert_eq!(p.instance.as_deref(), Some("worker-3"));
        assert_eq!(p.to_string(), "spiffe://txpipe/worker/worker-3");
        let p = Principal::from_uri("spiffe://txpipe/producer").unwrap();
        assert_eq!((p.role.as_str(), p.instance), ("producer", None));
        assert_eq!(Principal::from_uri("spiffe://other/worker"), None);
        assert_eq!(Principal::from_uri("spiffe://txpipe/"), None);
        assert_eq!(Principal::from_uri("https://txpipe/worker"), None);
    }
}
