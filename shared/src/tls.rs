//! Trust roots compiled into the binary. Both HTTP stacks would otherwise
//! read the system certificate store at start-up (about 3 ms each, measured in
//! docs/performance.md), which is most of a cold start's own time.

use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use base64::Engine;

/// The roots behind AWS service endpoints (Amazon Trust Services, and the
/// Starfield root that cross-signs them).
fn is_aws_root(der: &[u8]) -> bool {
    let contains = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
    contains(b"Amazon Root CA") || contains(b"Starfield Services Root Certificate Authority")
}

/// PEM certificates to trust in addition to the bundled roots, from the file
/// named by `CREDITS_EXTRA_ROOTS_FILE` (a TLS-intercepting proxy, a local
/// TLS test server). Read only when the variable is set.
fn extra_roots_pem() -> Option<Vec<u8>> {
    let path = std::env::var_os("CREDITS_EXTRA_ROOTS_FILE")?;
    match std::fs::read(&path) {
        Ok(pem) => Some(pem),
        Err(error) => {
            tracing::error!(path = %path.to_string_lossy(), %error, "CREDITS_EXTRA_ROOTS_FILE cannot be read");
            None
        }
    }
}

/// The HTTP client for the AWS SDK, trusting only the AWS roots (and any extra ones).
pub fn aws_http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    let mut trust = TrustStore::empty().with_native_roots(false);
    if let Some(pem) = extra_roots_pem() {
        trust = trust.with_pem_certificate(pem);
    }
    for root in webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().filter(|c| is_aws_root(c)) {
        let base64 = base64::engine::general_purpose::STANDARD.encode(root.as_ref());
        trust = trust.with_pem_certificate(format!(
            "-----BEGIN CERTIFICATE-----\n{base64}\n-----END CERTIFICATE-----\n"
        ));
    }
    let context =
        TlsContext::builder().with_trust_store(trust).build().expect("static TLS settings are valid");
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https()
}

/// Mozilla's root set, for RevenueCat and the gateway (their CAs are not ours to pin).
pub fn public_roots() -> Vec<reqwest::Certificate> {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|c| reqwest::Certificate::from_der(c).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aws_roots_are_bundled() {
        let aws = webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().filter(|c| is_aws_root(c)).count();
        assert!(aws >= 5, "Amazon Root CA 1-4 and Starfield Services G2, found {aws}");
        assert!(public_roots().len() > 100);
    }
}
