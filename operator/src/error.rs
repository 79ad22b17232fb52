//! The operator's error type.

/// Everything a reconcile or the operator process can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed (network, 4xx/5xx, conflict).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The pipeline's spec cannot be rendered (a rule the schema cannot express); `reason` is
    /// the condition reason shown in `status.conditions`.
    #[error("invalid spec ({reason}): {message}")]
    InvalidSpec {
        /// CamelCase condition reason, e.g. `VolumeShrinkRefused`.
        reason: String,
        /// Human-readable explanation naming the field.
        message: String,
    },
    /// A broker's admin API could not be reached or refused a request.
    #[error("broker admin API at {addr}: {message}")]
    BrokerAdmin {
        /// `host:port` of the admin endpoint.
        addr: String,
        /// What failed.
        message: String,
    },
    /// An object could not be (de)serialized.
    #[error("serialization: {0}")]
    Serde(#[from] serde_json::Error),
    /// The object lacks a field the operator needs (name, namespace, uid).
    #[error("missing object field: {0}")]
    MissingField(&'static str),
    /// Making a key or certificate of the managed CA failed.
    #[error("certificate issuance: {0}")]
    Tls(String),
    /// The operator's own settings are unusable (e.g. a TLS file that cannot be read); the
    /// message names the flag or file.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Low-cardinality label for the `txpipe_operator_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::BrokerAdmin { .. } => "broker_admin",
            Error::Serde(_) => "serde",
            Error::MissingField(_) => "missing_field",
            Error::Tls(_) => "tls",
            Error::Config(_) => "config",
        }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
