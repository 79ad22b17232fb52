//! The certificates phase of a reconcile (`spec.tls`), between observe and apply children:
//! issues and renews the managed CA's certificates into Secrets, or applies cert-manager
//! Certificates and reads back what cert-manager wrote. Returns the hashes the pod templates
//! carry (a renewal changes them, which rolls the pods), the status and the
//! `CertificatesReady` condition. The decisions are pure functions of [`crate::certs`].

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::DynamicObject;
use kube::runtime::events::EventType;

use crate::certs::{self, CertDecision, IssuedRecord, Role};
use crate::conditions::CertsCondition;
use crate::controller::{Scope, apply};
use crate::crd::{TlsMode, TlsSpec, TlsStatus};
use crate::render::CertHashes;
use crate::{Error, Result};

/// What the certificates phase found and did.
#[derive(Debug, Default)]
pub(crate) struct CertsOutcome {
    /// Pod-template hashes (empty with TLS off).
    pub(crate) hashes: CertHashes,
    /// `status.tls` (`None` with TLS off).
    pub(crate) status: Option<TlsStatus>,
    /// `CertificatesReady` (`None` with TLS off).
    pub(crate) condition: Option<CertsCondition>,
    /// Time until the next renewal (managed mode).
    pub(crate) renew_in: Option<Duration>,
    /// `(reason, message)` degradations (cert-manager not installed).
    pub(crate) degraded: Vec<(String, String)>,
}

/// Runs the phase for the pipeline's mode.
///
/// Errors: Kubernetes API failures; [`Error::Tls`] when issuing fails.
pub(crate) async fn ensure_certificates(s: &Scope<'_>) -> Result<CertsOutcome> {
    let Some(spec) = s.p.spec.tls.as_ref() else {
        return Ok(CertsOutcome::default());
    };
    match spec.mode() {
        TlsMode::Off => Ok(CertsOutcome::default()),
        TlsMode::Managed => managed(s, spec).await,
        TlsMode::CertManager => cert_manager(s, spec).await,
    }
}

/// The CA from its Secret, or a new one (stored) when it is missing, unreadable or expired.
async fn managed_ca(s: &Scope<'_>, spec: &TlsSpec, now: i64) -> Result<certs::Ca> {
    let secrets: Api<Secret> = s.api();
    let name = certs::ca_secret_name(s.p);
    let stored = secrets.get_opt(&name).await?;
    if let Some(ca) = stored.as_ref().and_then(certs::ca_from_secret)
        && now < ca.validity.not_after
    {
        return Ok(ca);
    }
    let ca = certs::new_ca(s.p, spec, now)?;
    apply(&secrets, &certs::ca_secret(s.p, &ca)).await?;
    let why = if stored.is_some() {
        "replaced (expired or unreadable): every certificate is issued again"
    } else {
        "created"
    };
    s.publish(
        EventType::Normal,
        "CAIssued",
        "IssueCA",
        format!(
            "cluster CA {name} {why}, valid until {}",
            certs::rfc3339(ca.validity.not_after)
        ),
    )
    .await;
    Ok(ca)
}

/// Managed mode: the CA, then every identity's Secret, issued when [`certs::decide`] says so.
async fn managed(s: &Scope<'_>, spec: &TlsSpec) -> Result<CertsOutcome> {
    let now = (s.ctx.clock)();
    let ca = managed_ca(s, spec, now).await?;
    let secrets: Api<Secret> = s.api();
    let mut broker_pems: Vec<Vec<u8>> = Vec::new();
    let mut worker_pem: Vec<u8> = Vec::new();
    let (mut first, mut renewed) = (Vec::new(), Vec::new());
    let (mut not_after, mut renew_at) = (i64::MAX, i64::MAX);
    for id in certs::identities(s.p) {
        let existing = secrets.get_opt(&id.secret_name).await?;
        let record = existing
            .as_ref()
            .and_then(|e| e.metadata.annotations.as_ref())
            .and_then(IssuedRecord::from_annotations);
        let wanted = certs::fingerprint(&ca.cert_pem, &id);
        let decision = certs::decide(record.as_ref(), &wanted, now, spec.renew_before_percentage);
        let (pem, validity) = match (decision, existing.as_ref(), record) {
            (CertDecision::Keep { .. }, Some(secret), Some(rec))
                if certs::secret_cert(secret).is_some() =>
            {
                (
                    certs::secret_cert(secret).unwrap_or_default().to_vec(),
                    rec.validity,
                )
            }
            (decision, ..) => {
                let issued = certs::issue(s.p, &ca, &id, spec, now)?;
                apply(&secrets, &certs::leaf_secret(s.p, &ca, &id, &issued)).await?;
                match decision {
                    CertDecision::Issue { reason: "Missing" } => first.push(id.secret_name.clone()),
                    CertDecision::Issue { reason } => {
                        renewed.push(format!("{} ({reason})", id.secret_name))
                    }
                    CertDecision::Keep { .. } => first.push(id.secret_name.clone()),
                }
                (issued.cert_pem.into_bytes(), issued.validity)
            }
        };
        not_after = not_after.min(validity.not_after);
        renew_at = renew_at.min(validity.renew_at(spec.renew_before_percentage));
        match id.role {
            Role::Broker(_) => broker_pems.push(pem),
            Role::Worker => worker_pem = pem,
            _ => {}
        }
    }
    publish_issuance(s, &first, &renewed).await;
    let broker_hash = certs::cert_hash(
        std::iter::once(ca.cert_pem.as_bytes()).chain(broker_pems.iter().map(Vec::as_slice)),
    );
    let worker_hash = certs::cert_hash([ca.cert_pem.as_bytes(), worker_pem.as_slice()]);
    let reason = match (first.is_empty(), renewed.is_empty()) {
        (false, _) => "Issued",
        (true, false) => "Renewed",
        (true, true) => "Valid",
    };
    Ok(CertsOutcome {
        hashes: CertHashes {
            broker: Some(broker_hash),
            worker: Some(worker_hash),
        },
        status: Some(TlsStatus {
            mode: "managed".into(),
            not_after: Some(certs::rfc3339(not_after)),
            renew_at: Some(certs::rfc3339(renew_at)),
            ca_not_after: Some(certs::rfc3339(ca.validity.not_after)),
        }),
        condition: Some(CertsCondition {
            ready: true,
            reason: reason.into(),
            message: format!(
                "{} certificates from CA {}; earliest expiry {}, renewal at {}",
                certs::identities(s.p).len(),
                certs::ca_secret_name(s.p),
                certs::rfc3339(not_after),
                certs::rfc3339(renew_at)
            ),
        }),
        renew_in: Some(Duration::from_secs(
            renew_at.saturating_sub(now).max(0) as u64
        )),
        degraded: Vec::new(),
    })
}

async fn publish_issuance(s: &Scope<'_>, first: &[String], renewed: &[String]) {
    if !first.is_empty() {
        s.publish(
            EventType::Normal,
            "CertificatesIssued",
            "IssueCertificates",
            format!("issued {}", first.join(", ")),
        )
        .await;
    }
    if !renewed.is_empty() {
        s.publish(
            EventType::Normal,
            "CertificatesRenewed",
            "RenewCertificates",
            format!(
                "renewed {}; pods using them restart one at a time",
                renewed.join(", ")
            ),
        )
        .await;
    }
}

/// cert-manager's Certificate CRD is installed; a 403 (namespace-scoped mode cannot read
/// CRDs) counts as installed: the Certificate applies then tell.
async fn cert_manager_installed(s: &Scope<'_>) -> Result<bool> {
    let crds: Api<CustomResourceDefinition> = Api::all(s.ctx.client.clone());
    match crds.get_opt(certs::CERT_MANAGER_CRD).await {
        Ok(found) => Ok(found.is_some()),
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(true),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// `status.notAfter` and `Ready=True` of a Certificate as cert-manager reports them.
fn certificate_state(c: &DynamicObject) -> (Option<i64>, bool) {
    let status = &c.data["status"];
    let not_after = status["notAfter"]
        .as_str()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| t.as_second());
    let ready = status["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    (not_after, ready)
}

/// cert-manager mode: applies a Certificate per identity and reads back their state and the
/// Secrets cert-manager wrote.
async fn cert_manager(s: &Scope<'_>, spec: &TlsSpec) -> Result<CertsOutcome> {
    if !cert_manager_installed(s).await? {
        let message = format!(
            "spec.tls.mode is certManager but the CRD {} is not installed",
            certs::CERT_MANAGER_CRD
        );
        return Ok(CertsOutcome {
            status: Some(TlsStatus {
                mode: "certManager".into(),
                ..Default::default()
            }),
            condition: Some(CertsCondition {
                ready: false,
                reason: "CertManagerNotInstalled".into(),
                message: message.clone(),
            }),
            degraded: vec![("CertManagerNotInstalled".into(), message)],
            ..Default::default()
        });
    }
    let api: Api<DynamicObject> = Api::namespaced_with(
        s.ctx.client.clone(),
        &s.ns,
        &certs::certificate_api_resource(),
    );
    let secrets: Api<Secret> = s.api();
    let mut not_ready = Vec::new();
    let mut not_after: Option<i64> = None;
    let mut broker_pems: Vec<Vec<u8>> = Vec::new();
    let mut worker_pem: Vec<u8> = Vec::new();
    for id in certs::identities(s.p) {
        let Some(cert) = certs::certificate(s.p, spec, &id) else {
            continue;
        };
        let stored = apply(&api, &cert).await?;
        let (expiry, ready) = certificate_state(&stored);
        if !ready {
            not_ready.push(id.secret_name.clone());
        }
        if let Some(t) = expiry {
            not_after = Some(not_after.map_or(t, |n| n.min(t)));
        }
        let pem = secrets
            .get_opt(&id.secret_name)
            .await?
            .as_ref()
            .and_then(certs::secret_cert)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        match id.role {
            Role::Broker(_) => broker_pems.push(pem),
            Role::Worker => worker_pem = pem,
            _ => {}
        }
    }
    let condition = if not_ready.is_empty() {
        CertsCondition {
            ready: true,
            reason: "Issued".into(),
            message: format!(
                "every Certificate is Ready; earliest expiry {}",
                not_after.map_or_else(|| "unknown".into(), certs::rfc3339)
            ),
        }
    } else {
        CertsCondition {
            ready: false,
            reason: "WaitingForCertManager".into(),
            message: format!("Certificates not Ready yet: {}", not_ready.join(", ")),
        }
    };
    Ok(CertsOutcome {
        hashes: CertHashes {
            broker: Some(certs::cert_hash(broker_pems.iter().map(Vec::as_slice))),
            worker: Some(certs::cert_hash([worker_pem.as_slice()])),
        },
        status: Some(TlsStatus {
            mode: "certManager".into(),
            not_after: not_after.map(certs::rfc3339),
            ..Default::default()
        }),
        condition: Some(condition),
        renew_in: None,
        degraded: Vec::new(),
    })
}
