//! Certificates of a pipeline with `spec.tls` (docs/security.md): who gets one, when it is
//! (re)issued, and the objects that carry it. Pure (no Kubernetes I/O); the controller's
//! certificates phase reads and writes the objects.
//!
//! Identities ([`identities`]): broker `<i>` for every possible ordinal `0..MAX_BROKERS`
//! (`spiffe://txpipe/broker/<i>`, DNS names of its pod and of the client Service; issued for
//! every ordinal so that scaling never changes the broker pod template), `worker`, `producer`,
//! `audit` and `operator` (`spiffe://txpipe/<role>`). Each has a Secret `<n>-<identity>-tls` of
//! type `kubernetes.io/tls` with `tls.crt`, `tls.key` and `ca.crt`, the layout cert-manager
//! writes, so the workloads mount the same thing in both modes.
//!
//! - `managed`: a CA (ECDSA P-256, self-signed, [`TlsSpec::ca_validity_hours`]) in Secret
//!   `<n>-ca` (`ca.crt`, `ca.key`) issues every certificate ([`issue`]); the Secret's
//!   annotations record validity and a fingerprint of what was asked for ([`IssuedRecord`]).
//!   [`decide`] re-issues when the Secret is missing, the fingerprint changed (new CA, other
//!   names) or less than [`TlsSpec::renew_before_percentage`] of the validity remains.
//! - `certManager`: a `cert-manager.io/v1` Certificate per identity ([`certificate`]);
//!   cert-manager issues and renews.
//!
//! Either way, the pod templates carry [`CERT_HASH_ANNOTATION`], a hash of the certificates
//! they mount ([`cert_hash`]): a renewal changes the template, the broker StatefulSet's
//! revision changes and the controller rolls the brokers one at a time (workers: the
//! Deployment's rolling update, one surge pod at a time).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

use crate::crd::{TlsSpec, TransactionPipeline};
use crate::render;
use crate::{Error, Result};

/// Broker ordinals that get a certificate: the CRD's largest `spec.broker.replicas`.
pub const MAX_BROKERS: i32 = 7;
/// Mount path of the TLS files in every container.
pub const TLS_MOUNT: &str = "/etc/txpipe/tls";
/// Pod-template annotation: hash of the certificates the pods mount (a renewal rolls them).
pub const CERT_HASH_ANNOTATION: &str = "txpipe.io/cert-hash";
/// Secret annotation: start of validity (RFC 3339).
pub const NOT_BEFORE_ANNOTATION: &str = "txpipe.io/not-before";
/// Secret annotation: end of validity (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "txpipe.io/not-after";
/// Secret annotation: [`fingerprint`] of the CA and names the certificate was issued for.
pub const FINGERPRINT_ANNOTATION: &str = "txpipe.io/cert-fingerprint";
/// Scheme and trust domain of principals (the broker's `PRINCIPAL_PREFIX`).
pub const PRINCIPAL_PREFIX: &str = "spiffe://txpipe/";
/// Backdating of `notBefore`, seconds, for clocks slightly behind the operator's.
pub const BACKDATE_SECS: i64 = 3600;

/// Whose certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Broker of this ordinal: server and client (it dials its peers).
    Broker(i32),
    /// Scoring workers.
    Worker,
    /// The producer Job.
    Producer,
    /// Audits and other readers (for `txpipe audit` run by hand or as a Job).
    Audit,
    /// The operator (membership changes on the admin API).
    Operator,
}

impl Role {
    /// `broker-<i>`, `worker`, ...: the middle of the Secret name.
    pub fn slug(self) -> String {
        match self {
            Role::Broker(i) => format!("broker-{i}"),
            Role::Worker => "worker".into(),
            Role::Producer => "producer".into(),
            Role::Audit => "audit".into(),
            Role::Operator => "operator".into(),
        }
    }

    /// The principal URI: `spiffe://txpipe/broker/<i>` or `spiffe://txpipe/<role>`.
    pub fn principal(self) -> String {
        match self {
            Role::Broker(i) => format!("{PRINCIPAL_PREFIX}broker/{i}"),
            other => format!("{PRINCIPAL_PREFIX}{}", other.slug()),
        }
    }
}

/// One certificate to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Whose.
    pub role: Role,
    /// Secret holding it: `<n>-<slug>-tls`.
    pub secret_name: String,
    /// DNS SANs (brokers only: they are servers).
    pub dns_names: Vec<String>,
}

impl Identity {
    /// Server and client (`true` for brokers) or client only.
    pub fn is_server(&self) -> bool {
        matches!(self.role, Role::Broker(_))
    }
}

/// Secret of the managed CA: `<n>-ca`.
pub fn ca_secret_name(p: &TransactionPipeline) -> String {
    format!("{}-ca", p.metadata.name.as_deref().unwrap_or_default())
}

/// Secret of `role`'s certificate: `<n>-<slug>-tls`.
pub fn secret_name(p: &TransactionPipeline, role: Role) -> String {
    format!(
        "{}-{}-tls",
        p.metadata.name.as_deref().unwrap_or_default(),
        role.slug()
    )
}

/// DNS names of broker `ordinal`: its pod (short, headless, `.svc`, `.svc.cluster.local`), the
/// client Service (same forms) and `localhost`.
pub fn broker_dns_names(p: &TransactionPipeline, ordinal: i32) -> Vec<String> {
    let ns = render::namespace(p);
    let pod = render::broker_pod_name(p, ordinal);
    let headless = render::broker_headless_service_name(p);
    let client = render::broker_client_service_name(p);
    vec![
        format!("{pod}.{headless}.{ns}.svc"),
        format!("{pod}.{headless}.{ns}.svc.cluster.local"),
        format!("{pod}.{headless}"),
        pod,
        format!("{client}.{ns}.svc"),
        format!("{client}.{ns}.svc.cluster.local"),
        format!("{client}.{ns}"),
        client,
        // For tools run inside the pod (`kubectl exec ... grpcurl localhost:9100`).
        "localhost".into(),
    ]
}

/// Every certificate of the pipeline, brokers first.
pub fn identities(p: &TransactionPipeline) -> Vec<Identity> {
    let roles = (0..MAX_BROKERS).map(Role::Broker).chain([
        Role::Worker,
        Role::Producer,
        Role::Audit,
        Role::Operator,
    ]);
    roles
        .map(|role| Identity {
            role,
            secret_name: secret_name(p, role),
            dns_names: match role {
                Role::Broker(i) => broker_dns_names(p, i),
                _ => Vec::new(),
            },
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

/// Validity of a certificate, Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start.
    pub not_before: i64,
    /// End.
    pub not_after: i64,
}

impl Validity {
    /// `hours` from `now`, backdated by [`BACKDATE_SECS`].
    pub fn from_now(now: i64, hours: i64) -> Self {
        Self {
            not_before: now - BACKDATE_SECS,
            not_after: now + hours * 3600,
        }
    }

    /// When to renew: once less than `percentage` % of the validity remains.
    pub fn renew_at(&self, percentage: i32) -> i64 {
        let span = (self.not_after - self.not_before).max(0);
        self.not_after - span * i64::from(percentage.clamp(0, 100)) / 100
    }
}

/// What the operator recorded on a certificate Secret it wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedRecord {
    /// Validity of the certificate.
    pub validity: Validity,
    /// [`fingerprint`] it was issued for.
    pub fingerprint: String,
}

impl IssuedRecord {
    /// From a Secret's annotations; `None` when one is missing or unparsable (then the
    /// certificate is issued again).
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Option<Self> {
        let time = |k: &str| a.get(k)?.parse::<Timestamp>().ok().map(|t| t.as_second());
        Some(Self {
            validity: Validity {
                not_before: time(NOT_BEFORE_ANNOTATION)?,
                not_after: time(NOT_AFTER_ANNOTATION)?,
            },
            fingerprint: a.get(FINGERPRINT_ANNOTATION)?.clone(),
        })
    }

    /// The annotations recording it.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                NOT_BEFORE_ANNOTATION.to_string(),
                rfc3339(self.validity.not_before),
            ),
            (
                NOT_AFTER_ANNOTATION.to_string(),
                rfc3339(self.validity.not_after),
            ),
            (FINGERPRINT_ANNOTATION.to_string(), self.fingerprint.clone()),
        ])
    }
}

/// RFC 3339 (UTC, seconds) of Unix seconds `t`.
pub fn rfc3339(t: i64) -> String {
    Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Hex SHA-256 (first 16 bytes) of the CA certificate and everything the identity asks for:
/// a change of either re-issues the certificate.
pub fn fingerprint(ca_cert_pem: &str, id: &Identity) -> String {
    let mut h = Sha256::new();
    h.update(ca_cert_pem.as_bytes());
    h.update([0]);
    h.update(id.role.principal().as_bytes());
    for d in &id.dns_names {
        h.update([0]);
        h.update(d.as_bytes());
    }
    hex(&h.finalize()[..16])
}

/// Hex SHA-256 (first 16 bytes) of certificate PEMs, in order: the pod-template annotation.
pub fn cert_hash<'a>(pems: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h = Sha256::new();
    for pem in pems {
        h.update(pem);
        h.update([0]);
    }
    hex(&h.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a certificate is (re)issued now, or when it will be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertDecision {
    /// Issue now.
    Issue {
        /// `Missing`, `Changed` (other CA or names), `Expiring` (renewal window) or `Expired`.
        reason: &'static str,
    },
    /// Valid; renew at this time (Unix seconds).
    Keep {
        /// [`Validity::renew_at`].
        renew_at: i64,
    },
}

/// Issue or keep the certificate recorded as `existing`, at `now` (Unix seconds).
pub fn decide(
    existing: Option<&IssuedRecord>,
    wanted_fingerprint: &str,
    now: i64,
    renew_before_percentage: i32,
) -> CertDecision {
    let Some(rec) = existing else {
        return CertDecision::Issue { reason: "Missing" };
    };
    if rec.fingerprint != wanted_fingerprint {
        return CertDecision::Issue { reason: "Changed" };
    }
    if now >= rec.validity.not_after {
        return CertDecision::Issue { reason: "Expired" };
    }
    let renew_at = rec.validity.renew_at(renew_before_percentage);
    if now >= renew_at {
        return CertDecision::Issue { reason: "Expiring" };
    }
    CertDecision::Keep { renew_at }
}

// ---------------------------------------------------------------------------------------------
// Issuance (managed mode)
// ---------------------------------------------------------------------------------------------

/// The managed CA: PEM certificate and key, and its validity.
#[derive(Clone, Debug)]
pub struct Ca {
    /// Self-signed CA certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
    /// Validity.
    pub validity: Validity,
}

/// A certificate issued by [`issue`].
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
    /// Validity.
    pub validity: Validity,
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{what}: {e}"))
}

fn offset(t: i64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t).map_err(|e| tls_error("time out of range", e))
}

/// The CA's subject and constraints; the same for a given pipeline, so a stored key can sign
/// again without the certificate being parsed.
fn ca_params(p: &TransactionPipeline, validity: Validity) -> Result<CertificateParams> {
    let mut ca =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_error("CA parameters", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name.push(
        DnType::CommonName,
        format!(
            "txpipe {}/{} CA",
            render::namespace(p),
            p.metadata.name.as_deref().unwrap_or_default()
        ),
    );
    ca.distinguished_name
        .push(DnType::OrganizationName, "txpipe");
    ca.not_before = offset(validity.not_before)?;
    ca.not_after = offset(validity.not_after)?;
    Ok(ca)
}

/// A new CA valid `spec.caValidityHours` from `now`.
///
/// Errors: [`Error::Tls`] if rcgen fails (not expected).
pub fn new_ca(p: &TransactionPipeline, spec: &TlsSpec, now: i64) -> Result<Ca> {
    let validity = Validity::from_now(now, spec.ca_validity_hours);
    let key = KeyPair::generate().map_err(|e| tls_error("CA key", e))?;
    let cert = ca_params(p, validity)?
        .self_signed(&key)
        .map_err(|e| tls_error("self-signing the CA", e))?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        validity,
    })
}

/// Issues `id`'s certificate from `ca`, valid `spec.certValidityHours` from `now` (never past
/// the CA's own expiry).
///
/// Errors: [`Error::Tls`] when the CA key does not parse or rcgen fails.
pub fn issue(
    p: &TransactionPipeline,
    ca: &Ca,
    id: &Identity,
    spec: &TlsSpec,
    now: i64,
) -> Result<Issued> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| tls_error("the CA key", e))?;
    let issuer = Issuer::new(ca_params(p, ca.validity)?, ca_key);
    let mut validity = Validity::from_now(now, spec.cert_validity_hours);
    validity.not_after = validity.not_after.min(ca.validity.not_after);
    let key = KeyPair::generate().map_err(|e| tls_error("key", e))?;
    let mut params = CertificateParams::new(id.dns_names.clone())
        .map_err(|e| tls_error("certificate parameters", e))?;
    let uri = id
        .role
        .principal()
        .try_into()
        .map_err(|e| tls_error("principal URI", e))?;
    params.subject_alt_names.push(SanType::URI(uri));
    params
        .distinguished_name
        .push(DnType::CommonName, id.role.slug());
    params
        .distinguished_name
        .push(DnType::OrganizationName, "txpipe");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if id.is_server() {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.not_before = offset(validity.not_before)?;
    params.not_after = offset(validity.not_after)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| tls_error("signing", e))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        validity,
    })
}

/// The CA read back from its Secret (`ca.crt`, `ca.key`, validity annotations); `None` when
/// incomplete.
pub fn ca_from_secret(s: &Secret) -> Option<Ca> {
    let data = s.data.as_ref()?;
    let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
    let rec = IssuedRecord::from_annotations(s.metadata.annotations.as_ref()?)?;
    Some(Ca {
        cert_pem: text("ca.crt")?,
        key_pem: text("ca.key")?,
        validity: rec.validity,
    })
}

fn secret_meta(
    p: &TransactionPipeline,
    name: String,
    annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    let mut meta = render::child_meta(p, name, "tls");
    meta.annotations = Some(annotations);
    meta
}

/// Secret `<n>-ca` holding the CA certificate and key (type Opaque).
pub fn ca_secret(p: &TransactionPipeline, ca: &Ca) -> Secret {
    let rec = IssuedRecord {
        validity: ca.validity,
        fingerprint: cert_hash([ca.cert_pem.as_bytes()]),
    };
    Secret {
        metadata: secret_meta(p, ca_secret_name(p), rec.annotations()),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                "ca.crt".into(),
                ByteString(ca.cert_pem.clone().into_bytes()),
            ),
            ("ca.key".into(), ByteString(ca.key_pem.clone().into_bytes())),
        ])),
        ..Default::default()
    }
}

/// Secret `<n>-<slug>-tls` (type `kubernetes.io/tls`: `tls.crt`, `tls.key`, `ca.crt`) with
/// the [`IssuedRecord`] annotations.
pub fn leaf_secret(p: &TransactionPipeline, ca: &Ca, id: &Identity, issued: &Issued) -> Secret {
    let rec = IssuedRecord {
        validity: issued.validity,
        fingerprint: fingerprint(&ca.cert_pem, id),
    };
    Secret {
        metadata: secret_meta(p, id.secret_name.clone(), rec.annotations()),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".into(),
                ByteString(issued.cert_pem.clone().into_bytes()),
            ),
            (
                "tls.key".into(),
                ByteString(issued.key_pem.clone().into_bytes()),
            ),
            (
                "ca.crt".into(),
                ByteString(ca.cert_pem.clone().into_bytes()),
            ),
        ])),
        ..Default::default()
    }
}

/// `tls.crt` of a certificate Secret, if present.
pub fn secret_cert(s: &Secret) -> Option<&[u8]> {
    s.data.as_ref()?.get("tls.crt").map(|b| b.0.as_slice())
}

// ---------------------------------------------------------------------------------------------
// cert-manager
// ---------------------------------------------------------------------------------------------

/// Name of cert-manager's Certificate CRD (its presence enables `certManager` mode).
pub const CERT_MANAGER_CRD: &str = "certificates.cert-manager.io";

/// `cert-manager.io/v1` `Certificate`.
pub fn certificate_api_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

/// The Certificate for `id` (named like its Secret), issued by `spec.issuerRef`: ECDSA P-256
/// key rotated at each renewal, `spec.certValidityHours`, renewed at
/// `spec.renewBeforePercentage`. `None` without an issuer.
pub fn certificate(
    p: &TransactionPipeline,
    spec: &TlsSpec,
    id: &Identity,
) -> Option<DynamicObject> {
    let issuer = spec.issuer_ref.as_ref()?;
    let usages: Vec<&str> = if id.is_server() {
        vec!["digital signature", "server auth", "client auth"]
    } else {
        vec!["digital signature", "client auth"]
    };
    let mut body = serde_json::json!({
        "secretName": id.secret_name,
        "secretTemplate": {"labels": render::labels(p, "tls")},
        "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        "commonName": id.role.slug(),
        "subject": {"organizations": ["txpipe"]},
        "uris": [id.role.principal()],
        "duration": format!("{}h", spec.cert_validity_hours),
        "renewBeforePercentage": spec.renew_before_percentage,
        "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"},
        "usages": usages,
    });
    if !id.dns_names.is_empty() {
        body["dnsNames"] = serde_json::json!(id.dns_names);
    }
    let mut obj = DynamicObject::new(&id.secret_name, &certificate_api_resource())
        .within(&render::namespace(p))
        .data(serde_json::json!({ "spec": body }));
    obj.metadata = ObjectMeta {
        name: Some(id.secret_name.clone()),
        ..render::child_meta(p, id.secret_name.clone(), "tls")
    };
    Some(obj)
}

/// The Certificates of every identity (`certManager` mode with an issuer; else empty).
pub fn certificates(p: &TransactionPipeline) -> Vec<DynamicObject> {
    let Some(spec) = p.spec.tls.as_ref() else {
        return Vec::new();
    };
    identities(p)
        .iter()
        .filter_map(|id| certificate(p, spec, id))
        .collect()
}

/// Every Secret of `managed` mode, issued from a throw-away CA at `now`: what
/// `txpipe-operator render --tls-secrets` prints to show (and validate) their shape. The
/// operator issues its own keys; these are never used.
///
/// Errors: [`Error::Tls`] if issuing fails.
pub fn preview_secrets(p: &TransactionPipeline, now: i64) -> Result<Vec<Secret>> {
    let spec = p.spec.tls.clone().unwrap_or_default();
    let ca = new_ca(p, &spec, now)?;
    let mut out = vec![ca_secret(p, &ca)];
    for id in identities(p) {
        let issued = issue(p, &ca, &id, &spec, now)?;
        out.push(leaf_secret(p, &ca, &id, &issued));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const HOUR: i64 = 3600;

    fn pipeline() -> TransactionPipeline {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "txpipe.io/v1alpha1", "kind": "TransactionPipeline",
            "metadata": {"name": "demo", "namespace": "txp", "uid": "u1"},
            "spec": {"tls": {"mode": "managed"}},
        }))
        .expect("pipeline")
    }

    fn record(not_before: i64, not_after: i64, fp: &str) -> IssuedRecord {
        IssuedRecord {
            validity: Validity {
                not_before,
                not_after,
            },
            fingerprint: fp.into(),
        }
    }

    #[test]
    fn renewal_decisions_follow_the_validity_window_with_a_fixed_clock() {
        // 90 days from NOW - 1h, renewed when a third remains.
        let v = Validity::from_now(NOW, 2160);
        let rec = record(v.not_before, v.not_after, "fp");
        let renew_at = v.renew_at(33);
        assert_eq!(renew_at, v.not_after - (2160 * HOUR + HOUR) * 33 / 100);
        let cases: Vec<(&str, Option<IssuedRecord>, &str, i64, CertDecision)> = vec![
            (
                "no Secret yet",
                None,
                "fp",
                NOW,
                CertDecision::Issue { reason: "Missing" },
            ),
            (
                "fresh",
                Some(rec.clone()),
                "fp",
                NOW,
                CertDecision::Keep { renew_at },
            ),
            (
                "just before the window",
                Some(rec.clone()),
                "fp",
                renew_at - 1,
                CertDecision::Keep { renew_at },
            ),
            (
                "window reached",
                Some(rec.clone()),
                "fp",
                renew_at,
                CertDecision::Issue { reason: "Expiring" },
            ),
            (
                "expired",
                Some(rec.clone()),
                "fp",
                v.not_after,
                CertDecision::Issue { reason: "Expired" },
            ),
            (
                "other CA or names",
                Some(rec.clone()),
                "other",
                NOW,
                CertDecision::Issue { reason: "Changed" },
            ),
        ];
        for (name, existing, fp, now, want) in cases {
            assert_eq!(decide(existing.as_ref(), fp, now, 33), want, "{name}");
        }
    }

    #[test]
    fn issued_records_round_trip_through_annotations() {
        let rec = record(NOW, NOW + 10 * HOUR, "abc");
        assert_eq!(
            IssuedRecord::from_annotations(&rec.annotations()),
            Some(rec.clone())
        );
        let mut broken = rec.annotations();
        broken.insert(NOT_AFTER_ANNOTATION.into(), "yesterday".into());
        assert_eq!(IssuedRecord::from_annotations(&broken), None);
    }

    #[test]
    fn identities_cover_every_broker_ordinal_and_each_client_role() {
        let p = pipeline();
        let ids = identities(&p);
        let names: Vec<&str> = ids.iter().map(|i| i.secret_name.as_str()).collect();
        assert_eq!(names.len(), MAX_BROKERS as usize + 4);
        assert_eq!(names[0], "demo-broker-0-tls");
        assert!(names.ends_with(&[
            "demo-worker-tls",
            "demo-producer-tls",
            "demo-audit-tls",
            "demo-operator-tls"
        ]));
        assert_eq!(ids[2].role.principal(), "spiffe://txpipe/broker/2");
        assert!(
            ids[2]
                .dns_names
                .contains(&"demo-broker-2.demo-broker-headless.txp.svc".to_string())
        );
        assert!(
            ids[2]
                .dns_names
                .contains(&"demo-broker.txp.svc".to_string())
        );
        assert_eq!(Role::Producer.principal(), "spiffe://txpipe/producer");
        assert!(
            ids.iter()
                .filter(|i| !i.is_server())
                .all(|i| i.dns_names.is_empty())
        );
    }

    #[test]
    fn fingerprints_change_with_the_ca_and_the_names() {
        let p = pipeline();
        let ids = identities(&p);
        let a = fingerprint("ca-1", &ids[0]);
        assert_eq!(a, fingerprint("ca-1", &ids[0]));
        assert_ne!(a, fingerprint("ca-2", &ids[0]));
        assert_ne!(a, fingerprint("ca-1", &ids[1]));
    }

    #[test]
    fn issued_certificates_chain_to_the_stored_ca_and_stay_within_its_validity() {
        let p = pipeline();
        let spec = TlsSpec {
            ca_validity_hours: 100,
            cert_validity_hours: 80,
            ..TlsSpec::default()
        };
        let ca = new_ca(&p, &spec, NOW).expect("ca");
        // Round trip through the Secret, as a later reconcile reads it.
        let stored = ca_from_secret(&ca_secret(&p, &ca)).expect("ca secret parses");
        assert_eq!(stored.validity, ca.validity);
        let id = &identities(&p)[0];
        let later = NOW + 50 * HOUR;
        let leaf = issue(&p, &stored, id, &spec, later).expect("issue");
        assert_eq!(
            leaf.validity.not_after, ca.validity.not_after,
            "capped by the CA"
        );
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        let secret = leaf_secret(&p, &stored, id, &leaf);
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        let rec = IssuedRecord::from_annotations(secret.metadata.annotations.as_ref().unwrap())
            .expect("record");
        assert_eq!(rec.fingerprint, fingerprint(&ca.cert_pem, id));
    }

    #[test]
    fn cert_manager_certificates_name_the_issuer_and_the_identity() {
        let mut p = pipeline();
        p.spec.tls = Some(TlsSpec {
            mode: "certManager".into(),
            issuer_ref: Some(crate::crd::IssuerRef {
                name: "ca-issuer".into(),
                kind: "ClusterIssuer".into(),
                group: "cert-manager.io".into(),
            }),
            ..TlsSpec::default()
        });
        let certs = certificates(&p);
        assert_eq!(certs.len(), MAX_BROKERS as usize + 4);
        let b0 = serde_json::to_value(&certs[0]).unwrap();
        assert_eq!(b0["apiVersion"], "cert-manager.io/v1");
        assert_eq!(b0["kind"], "Certificate");
        assert_eq!(b0["spec"]["secretName"], "demo-broker-0-tls");
        assert_eq!(b0["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(b0["spec"]["uris"][0], "spiffe://txpipe/broker/0");
        assert_eq!(b0["spec"]["duration"], "2160h");
        let worker = serde_json::to_value(&certs[MAX_BROKERS as usize]).unwrap();
        assert!(worker["spec"]["dnsNames"].is_null());
        assert_eq!(
            worker["spec"]["usages"],
            serde_json::json!(["digital signature", "client auth"])
        );
    }
}
