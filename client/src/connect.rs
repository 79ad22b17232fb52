//! Channel construction over a list of broker addresses.
//!
//! Addresses are `host:port` or full `http://host:port` URIs. [`connect_any`] tries them in
//! turn, starting after the one that worked last, until one accepts a connection or the
//! deadline passes. It knows nothing about leaders: calls about a stream should go through
//! [`crate::leader::LeaderRouter`], which follows each stream's Raft leader and fails over.

use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::tls::TlsOptions;

/// Errors from [`connect_any`] and [`parse_addrs`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// An address could not be parsed as a URI.
    #[error("invalid broker address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The address list was empty.
    #[error("no broker address given")]
    NoAddress,
    /// The TLS files could not be read (see [`crate::tls::TlsOptions`]).
    #[error("TLS: {0}")]
    Tls(String),
    /// No address accepted a connection before the deadline.
    #[error("no broker reachable within {waited_ms} ms (tried {addrs:?}): {last_error}")]
    Unreachable {
        /// Addresses tried.
        addrs: Vec<String>,
        /// Time spent, milliseconds.
        waited_ms: u64,
        /// The last connection error.
        last_error: String,
    },
}

/// Parses a comma-separated list of `host:port` (or `http://host:port`) into endpoint URIs.
///
/// Errors: [`ConnectError::NoAddress`] for an empty list, [`ConnectError::InvalidAddress`]
/// for an entry that is not a valid URI.
pub fn parse_addrs(list: &str) -> Result<Vec<String>, ConnectError> {
    let addrs: Vec<String> = list
        .split(',')
        .map(normalize_addr)
        .filter(|s| !s.is_empty())
        .collect();
    if addrs.is_empty() {
        return Err(ConnectError::NoAddress);
    }
    for a in &addrs {
        Endpoint::from_shared(a.clone()).map_err(|e| ConnectError::InvalidAddress {
            addr: a.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(addrs)
}

/// One address as an endpoint URI: trimmed, `http://` prepended when there is no scheme, a
/// trailing `/` removed (`broker-0:9100` and `http://broker-0:9100/` both give
/// `http://broker-0:9100`). An empty or blank input gives an empty string.
pub fn normalize_addr(addr: &str) -> String {
    let a = addr.trim().trim_end_matches('/');
    if a.is_empty() {
        String::new()
    } else if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

/// Builds a plaintext endpoint with txpipe's transport defaults: 2 s connect timeout,
/// TCP_NODELAY, HTTP/2 keep-alive every 10 s (a dead peer is noticed within ~20 s without
/// traffic), and adaptive flow-control windows. Same as [`endpoint_with`] without TLS.
pub fn endpoint(addr: &str) -> Result<Endpoint, ConnectError> {
    endpoint_with(addr, None)
}

/// [`endpoint`] with optional mutual TLS: with `tls`, an `http://` address is dialled as
/// `https://` and presents the client certificate of `tls` (its files are read now).
///
/// Errors: [`ConnectError::InvalidAddress`], [`ConnectError::Tls`] when a TLS file cannot be
/// read or is not PEM.
pub fn endpoint_with(addr: &str, tls: Option<&TlsOptions>) -> Result<Endpoint, ConnectError> {
    let invalid = |e: tonic::transport::Error| ConnectError::InvalidAddress {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    let uri = match (tls, addr.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => addr.to_string(),
    };
    let mut ep = Endpoint::from_shared(uri).map_err(invalid)?;
    if let Some(tls) = tls {
        ep = ep
            .tls_config(tls.client_config()?)
            .map_err(|e| ConnectError::Tls(format!("{addr}: {e}")))?;
    }
    Ok(ep
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .http2_adaptive_window(true))
}

/// Connects to the first reachable address of `addrs`, starting at index `start % len`,
/// retrying with backoff (50 ms doubling to 1 s) until `deadline` has passed.
///
/// Returns the channel and the index of the address that answered.
pub async fn connect_any(
    addrs: &[String],
    start: usize,
    deadline: Duration,
    tls: Option<&TlsOptions>,
) -> Result<(Channel, usize), ConnectError> {
    if addrs.is_empty() {
        return Err(ConnectError::NoAddress);
    }
    let began = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut i = start;
    loop {
        let idx = i % addrs.len();
        let last_error = match endpoint_with(&addrs[idx], tls)?.connect().await {
            Ok(ch) => return Ok((ch, idx)),
            Err(e) => format!("{e}: {:?}", std::error::Error::source(&e)),
        };
        i += 1;
        if began.elapsed() >= deadline {
            return Err(ConnectError::Unreachable {
                addrs: addrs.to_vec(),
                waited_ms: began.elapsed().as_millis() as u64,
                last_error,
            });
        }
        if i % addrs.len() == start % addrs.len() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_addrs_adds_scheme_and_rejects_empty_lists() {
        assert_eq!(
            parse_addrs("a:1, http://b:2").unwrap(),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        assert!(matches!(parse_addrs(" , "), Err(ConnectError::NoAddress)));
        assert!(matches!(
            parse_addrs("bad host:1"),
            Err(ConnectError::InvalidAddress { .. })
        ));
    }
}
