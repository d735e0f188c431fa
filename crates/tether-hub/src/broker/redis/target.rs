//! Where a Redis broker connects: a `redis://` or `rediss://` URL, and for TLS the CA its
//! server certificate must chain to.
//!
//! `rediss://host:port/db?ca=/path/ca.pem` trusts the certificates in that PEM file (and
//! only them) instead of the system's roots: a private Redis usually has a private CA, and
//! pointing at the file in the URL keeps the whole target in the one `--broker` value.
//! Without `ca`, the system's roots are used. Verification cannot be turned off: the
//! redis crate's `#insecure` is refused rather than silently ignored or obeyed.

use ::redis::{Client, TlsCertificates};

use crate::broker::BrokerError;

/// The query key naming the CA file.
const CA_KEY: &str = "ca";

fn bad(reason: impl Into<String>) -> BrokerError {
    BrokerError::BadUrl {
        broker: "redis",
        reason: reason.into(),
    }
}

/// A Redis client for `url`, with TLS verified against the URL's `ca` when it has one.
pub(super) fn client(url: &str) -> Result<Client, BrokerError> {
    let (url, ca) = split_ca(url)?;
    let tls = url.starts_with("rediss://");
    if url.contains('#') {
        return Err(bad(
            "a URL fragment (such as #insecure) is not accepted: certificates are always verified",
        ));
    }
    match ca {
        None => Client::open(url.as_str()).map_err(|e| bad(e.to_string())),
        Some(_) if !tls => Err(bad(format!(
            "`{CA_KEY}=` is for TLS: use rediss:// to connect with it"
        ))),
        Some(path) => {
            let pem = std::fs::read(&path)
                .map_err(|e| bad(format!("cannot read the CA file {path:?}: {e}")))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(bad(format!(
                    "the CA file {path:?} holds no PEM certificate"
                )));
            }
            let certificates = TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            Client::build_with_tls(url.as_str(), certificates)
                .map_err(|e| bad(format!("CA file {path:?}: {e}")))
        }
    }
}

/// Takes `ca=PATH` out of the URL's query (the redis crate does not know it), returning
/// the URL without it and the path, taken as written (no percent-decoding).
fn split_ca(url: &str) -> Result<(String, Option<String>), BrokerError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let mut ca = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some((CA_KEY, "")) => return Err(bad(format!("`{CA_KEY}=` needs a file path"))),
            Some((CA_KEY, path)) if ca.is_none() => ca = Some(path.to_owned()),
            Some((CA_KEY, _)) => return Err(bad(format!("`{CA_KEY}=` is given twice"))),
            _ => rest.push(pair),
        }
    }
    let mut url = base.to_owned();
    if !rest.is_empty() {
        url.push('?');
        url.push_str(&rest.join("&"));
    }
    if let Some(fragment) = fragment {
        url.push('#');
        url.push_str(fragment);
    }
    Ok((url, ca))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_taken_out_of_the_query_and_the_rest_kept() {
        let (url, ca) = split_ca("rediss://h:1/0?ca=/etc/ca.pem&protocol=resp3").unwrap();
        assert_eq!(url, "rediss://h:1/0?protocol=resp3");
        assert_eq!(ca.as_deref(), Some("/etc/ca.pem"));
        let (url, ca) = split_ca("redis://h:1/").unwrap();
        assert_eq!((url.as_str(), ca), ("redis://h:1/", None));
    }

    #[test]
    fn bad_ca_parameters_are_clear_errors() {
        let message = |url: &str| client(url).err().map(|e| e.to_string()).unwrap();
        assert!(message("rediss://h:1/?ca=").contains("needs a file path"));
        assert!(message("rediss://h:1/?ca=/a&ca=/b").contains("twice"));
        assert!(message("redis://h:1/?ca=/a").contains("use rediss://"));
        assert!(message("rediss://h:1/?ca=/nonexistent/ca.pem").contains("cannot read"));
        assert!(message("rediss://h:1/#insecure").contains("always verified"));
    }
}
