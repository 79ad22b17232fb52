//! Throw-away certificates for TLS tests (rcgen): a CA in a temp dir, and leaf certificates
//! with a `spiffe://txpipe/<role>` URI SAN, valid for `localhost` and 127.0.0.1 (server and
//! client use), signed by it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::Channel;
use txpipe_client::broker::v1::broker_client::BrokerClient;
use txpipe_client::tls::TlsOptions;

/// A CA whose files live in `dir`.
pub struct Ca {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file).
    pub cert: PathBuf,
}

/// A leaf certificate and key (PEM files) and the CA bundle to trust.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// Certificate file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
    /// CA bundle of the issuing CA.
    pub ca: PathBuf,
}

impl Leaf {
    /// The client options of this leaf.
    pub fn options(&self) -> TlsOptions {
        TlsOptions {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// Configures `c` to serve TLS with this leaf.
    pub fn serve(&self, c: &mut txpipe_broker::Config) {
        c.tls_cert_file = Some(self.cert.clone());
        c.tls_key_file = Some(self.key.clone());
        c.tls_ca_file = Some(self.ca.clone());
    }
}

impl Ca {
    /// A new CA named `name` writing into `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        let cert = p.self_signed(&key).unwrap();
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        Self {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            issuer: Issuer::new(p, key),
            cert: path,
        }
    }

    /// A leaf for `spiffe://txpipe/<principal>` (e.g. `worker/w-1`), valid now.
    pub fn leaf(&self, principal: &str) -> Leaf {
        self.leaf_valid(principal, true)
    }

    /// A leaf for `principal` that expired long ago (`valid == false`) or is valid now.
    pub fn leaf_valid(&self, principal: &str, valid: bool) -> Leaf {
        self.make_leaf(principal, valid, true)
    }

    /// A valid leaf named `name` without a URI SAN, so without a principal.
    pub fn leaf_without_principal(&self, name: &str) -> Leaf {
        self.make_leaf(name, true, false)
    }

    fn make_leaf(&self, principal: &str, valid: bool, with_uri: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        if with_uri {
            p.subject_alt_names.push(SanType::URI(
                format!("spiffe://txpipe/{principal}").try_into().unwrap(),
            ));
        }
        p.distinguished_name.push(DnType::CommonName, principal);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // rcgen's default validity (1975 to 4096) for valid leaves.
        if !valid {
            p.not_before = rcgen::date_time_ymd(2001, 1, 1);
            p.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let stem = format!(
            "{}-{}{}",
            self.name,
            principal.replace('/', "-"),
            if valid { "" } else { "-expired" }
        );
        let cert_path = self.dir.join(format!("{stem}.pem"));
        let key_path = self.dir.join(format!("{stem}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert_path,
            key: key_path,
            ca: self.cert.clone(),
        }
    }
}

/// A broker client over mutual TLS with `tls` (or plaintext with `None`) to `addr`, or the
/// error of the first attempt to connect and call ListStreams (PERMISSION_DENIED counts as
/// connected: the caller was authenticated).
pub async fn try_client(
    addr: std::net::SocketAddr,
    tls: Option<&TlsOptions>,
) -> Result<BrokerClient<Channel>, String> {
    let ep = txpipe_client::connect::endpoint_with(&format!("http://{addr}"), tls)
        .map_err(|e| e.to_string())?;
    let ch = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut c = BrokerClient::new(ch);
    match c
        .list_streams(txpipe_client::broker::v1::ListStreamsRequest::default())
        .await
    {
        // Authenticated, and not allowed to list (the role decides): connected all the same.
        Ok(_) => Ok(c),
        Err(s) if s.code() == tonic::Code::PermissionDenied => Ok(c),
        Err(s) => Err(format!("ListStreams: {s}")),
    }
}

/// [`try_client`] retried for up to 10 s (the broker may still be starting).
pub async fn client(addr: std::net::SocketAddr, tls: &TlsOptions) -> BrokerClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_client(addr, Some(tls)).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("TLS broker unreachable: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One HTTPS/1.1 request to the admin port at `addr` (`Connection: close`), trusting the CA
/// bundle `ca` and presenting `client`'s certificate when given: (status code, body).
///
/// Errors: connect or handshake failures.
pub async fn https(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<&Leaf>,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(l) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&l.cert)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_file(&l.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    super::exchange(tls, method, path, body).await
}

/// [`https`] `GET` that returns `None` instead of an error, bounded by 2 s.
pub async fn try_https_get(
    addr: std::net::SocketAddr,
    ca: &Path,
    path: &str,
) -> Option<(u16, String)> {
    tokio::time::timeout(
        Duration::from_secs(2),
        https(addr, ca, None, "GET", path, ""),
    )
    .await
    .ok()?
    .ok()
}
