//! Trust roots compiled into the binary. Both HTTP stacks would otherwise
//! read the system certificate store at start-up (about 3 ms each, measured in
//! docs/performance.md), which is most of a cold start's own time.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use aws_sdk_dynamodb::config::{ConfigBag, RuntimeComponents};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The roots behind AWS service endpoints (Amazon Trust Services, and the
/// Starfield root that cross-signs them), out of the ~150 bundled ones.
///
/// `memmem` (SIMD substring search) because this runs on every cold start
/// over the whole bundle (~200 KB): the naive `windows(..).any(..)` it
/// replaces cost ≈ 1.2 ms of CPU there, a fifth of a cold start's
/// (docs/performance.md).
fn aws_roots() -> impl Iterator<Item = &'static [u8]> {
    let amazon = memchr::memmem::Finder::new(b"Amazon Root CA");
    let starfield = memchr::memmem::Finder::new(b"Starfield Services Root Certificate Authority");
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| c.as_ref())
        .filter(move |der| amazon.find(der).is_some() || starfield.find(der).is_some())
}

/// Names a PEM file of certificates to trust in addition to the bundled
/// roots, by every HTTPS client (AWS SDK, RevenueCat, gateway): a
/// TLS-intercepting proxy's CA, a local TLS test server's.
pub const EXTRA_ROOTS_VAR: &str = "CREDITS_EXTRA_ROOTS_FILE";

/// The usable certificates of the file named by [`EXTRA_ROOTS_VAR`], read
/// once per process (the first client built reads it; problems are logged
/// once). Empty when the variable is unset.
fn extra_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| match std::env::var_os(EXTRA_ROOTS_VAR) {
        Some(path) => read_extra_roots(Path::new(&path)),
        None => Vec::new(),
    })
}

/// The certificates in the PEM file at `path` that can serve as trust
/// anchors. Never fails: an unreadable file, a PEM syntax error, a
/// certificate that cannot be parsed, or a file without any certificate is
/// logged at ERROR and adds nothing (or only the certificates that are
/// usable), so a bad file degrades to the bundled roots instead of
/// stopping the function.
pub fn read_extra_roots(path: &Path) -> Vec<CertificateDer<'static>> {
    let shown = path.display();
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(error) => {
            tracing::error!(path = %shown, %error, "{EXTRA_ROOTS_VAR} cannot be read; no extra roots are trusted");
            return Vec::new();
        }
    };
    let (roots, problems) = parse_roots(&pem);
    for problem in &problems {
        tracing::error!(path = %shown, problem = %problem, "{EXTRA_ROOTS_VAR}: certificate skipped");
    }
    if roots.is_empty() {
        tracing::error!(path = %shown, "{EXTRA_ROOTS_VAR} holds no usable certificate; no extra roots are trusted");
    } else {
        tracing::info!(path = %shown, roots = roots.len(), "trusting extra roots from {EXTRA_ROOTS_VAR}");
    }
    roots
}

/// The `CERTIFICATE` sections of `pem` that parse as trust anchors, and a
/// description of each problem met (parsing stops at a PEM syntax error).
fn parse_roots(pem: &[u8]) -> (Vec<CertificateDer<'static>>, Vec<String>) {
    let (mut roots, mut problems) = (Vec::new(), Vec::new());
    for (index, section) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let der = match section {
            Ok(der) => der,
            Err(error) => {
                problems.push(format!("PEM syntax error after {index} certificate(s): {error}"));
                break;
            }
        };
        // What both clients do with a root; a certificate they would refuse
        // must not reach them (the SDK's client panics on it, reqwest's
        // builder fails).
        match rustls::RootCertStore::empty().add(der.clone()) {
            Ok(()) => roots.push(der),
            Err(error) => {
                problems.push(format!("certificate {} is not usable as a root: {error}", index + 1))
            }
        }
    }
    (roots, problems)
}

fn to_pem(der: &[u8]) -> String {
    let base64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN CERTIFICATE-----\n{base64}\n-----END CERTIFICATE-----\n")
}

/// The HTTP client for the AWS SDK, trusting only the AWS roots (and any
/// extra ones). Its connector, root store included, is built once, by the
/// first request.
pub fn aws_http_client() -> SharedHttpClient {
    SharedHttpClient::new(ConnectorOnFirstUse(aws_https_client()))
}

fn aws_https_client() -> SharedHttpClient {
    let mut trust = TrustStore::empty().with_native_roots(false);
    for root in extra_roots() {
        trust = trust.with_pem_certificate(to_pem(root));
    }
    for root in aws_roots() {
        trust = trust.with_pem_certificate(to_pem(root));
    }
    let context =
        TlsContext::builder().with_trust_store(trust).build().expect("static TLS settings are valid");
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https()
}

/// The smithy HTTPS client builds a connector (a root store and a pool) when
/// each SDK client is built, only so that the system's certificates load
/// early, and discards it; the one requests use is built again on the first
/// request. With roots compiled in there is nothing to load early, and the
/// two discarded builds were ≈ 5 % of a cold adjust's instructions
/// (docs/performance.md). So the one hook that builds it,
/// `validate_base_client_config`, is left to the trait's no-op default;
/// everything else is delegated to the wrapped client.
#[derive(Debug)]
struct ConnectorOnFirstUse(SharedHttpClient);

impl HttpClient for ConnectorOnFirstUse {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn validate_final_config(&self, components: &RuntimeComponents, cfg: &ConfigBag) -> Result<(), BoxError> {
        self.0.validate_final_config(components, cfg)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

/// The TLS settings for RevenueCat and the gateway: Mozilla's roots (their
/// CAs are not ours to pin) plus any extra roots from [`EXTRA_ROOTS_VAR`];
/// HTTP/1.1 only, like the reqwest client they are for.
///
/// The roots are `webpki-roots`' trust anchors, parsed when it was built:
/// handing reqwest the ~120 certificates instead made it parse every one on
/// each cold start, ≈ 7 % of a cold adjust's instructions
/// (docs/performance.md).
pub fn public_tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore { roots: mozilla_anchors() };
    // Each was accepted by this same `add` when the file was read.
    let (_added, _refused) = roots.add_parsable_certificates(extra_roots().iter().cloned());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Roots still in the latest `webpki-roots` that Mozilla has since removed
/// (gone from `webpki-root-certs`, one release ahead of it). The test
/// `the_anchors_are_the_bundled_certificates` keeps this list in step with
/// both crates.
const WITHDRAWN_ROOTS: [&[u8]; 2] = [b"emSign Root CA - C1", b"emSign ECC Root CA - C3"];

/// The same roots as `webpki_root_certs::TLS_SERVER_ROOT_CERTS`, as anchors.
fn mozilla_anchors() -> Vec<rustls::pki_types::TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS
        .iter()
        .filter(|anchor| !WITHDRAWN_ROOTS.iter().any(|name| subject_contains(anchor, name)))
        .cloned()
        .collect()
}

fn subject_contains(anchor: &rustls::pki_types::TrustAnchor<'_>, name: &[u8]) -> bool {
    memchr::memmem::find(&anchor.subject, name).is_some()
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::config::RuntimeComponentsBuilder;

    use super::*;

    #[test]
    fn the_aws_roots_are_bundled() {
        let naive = |der: &[u8], needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        let expected: Vec<&[u8]> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .map(|c| c.as_ref())
            .filter(|c| {
                naive(c, b"Amazon Root CA") || naive(c, b"Starfield Services Root Certificate Authority")
            })
            .collect();
        assert_eq!(aws_roots().collect::<Vec<_>>(), expected);
        assert!(
            expected.len() >= 5,
            "Amazon Root CA 1-4 and Starfield Services G2, found {}",
            expected.len()
        );
        let _ = public_tls_config();
    }

    /// RevenueCat and the gateway trust exactly the certificates bundled
    /// for them before (`webpki-root-certs`), and where Mozilla constrains a
    /// root to some names (a constraint that is not in the certificate), the
    /// anchor keeps that constraint.
    #[test]
    fn the_anchors_are_the_bundled_certificates() {
        let mut parsed = rustls::RootCertStore::empty();
        for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
            parsed.add(cert.clone()).expect("a bundled root parses");
        }
        let key = |a: &rustls::pki_types::TrustAnchor<'_>| {
            (a.subject.as_ref().to_vec(), a.subject_public_key_info.as_ref().to_vec())
        };
        let anchors = mozilla_anchors();
        let mut ours: Vec<_> = anchors.iter().map(key).collect();
        let mut bundled: Vec<_> = parsed.roots.iter().map(key).collect();
        ours.sort();
        bundled.sort();
        assert_eq!(ours.len(), bundled.len(), "webpki-roots and webpki-root-certs hold different roots");
        assert!(ours == bundled, "webpki-roots and webpki-root-certs hold different roots");
        for anchor in &anchors {
            let from_cert = parsed.roots.iter().find(|p| key(p) == key(anchor)).expect("matched above");
            if from_cert.name_constraints.is_some() {
                assert_eq!(anchor.name_constraints, from_cert.name_constraints);
            }
        }
        assert!(
            anchors.iter().any(|a| a.name_constraints.is_some()),
            "Mozilla's name constraints (e.g. TUBITAK's, to .tr) are kept"
        );
        for name in WITHDRAWN_ROOTS {
            assert!(
                webpki_roots::TLS_SERVER_ROOTS.iter().any(|a| subject_contains(a, name)),
                "{} is no longer in webpki-roots: drop it from WITHDRAWN_ROOTS",
                String::from_utf8_lossy(name)
            );
        }
    }

    fn bundled(i: usize) -> &'static [u8] {
        webpki_root_certs::TLS_SERVER_ROOT_CERTS[i].as_ref()
    }

    #[test]
    fn extra_roots_are_every_certificate_of_the_pem_file() {
        let pem = format!(
            "# comment lines and blank lines are fine\n\n{}{}",
            to_pem(bundled(0)),
            to_pem(bundled(1))
        );
        let (roots, problems) = parse_roots(pem.as_bytes());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(roots.iter().map(|r| r.as_ref()).collect::<Vec<_>>(), [bundled(0), bundled(1)]);
    }

    #[test]
    fn a_file_without_a_usable_certificate_adds_nothing_and_says_why() {
        for empty in ["", "not PEM at all", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
        {
            assert_eq!(parse_roots(empty.as_bytes()), (Vec::new(), Vec::<String>::new()), "{empty:?}");
        }
        // A CERTIFICATE section that is not a certificate is skipped, the rest kept.
        let pem = format!("{}{}", to_pem(b"not DER"), to_pem(bundled(2)));
        let (roots, problems) = parse_roots(pem.as_bytes());
        assert_eq!(roots.len(), 1);
        assert!(problems[0].contains("certificate 1 is not usable"), "{problems:?}");
        // A section that never ends stops parsing, keeping what came before.
        let pem = format!("{}-----BEGIN CERTIFICATE-----\nMIIB\n", to_pem(bundled(3)));
        let (roots, problems) = parse_roots(pem.as_bytes());
        assert_eq!(roots.len(), 1);
        assert!(problems[0].contains("PEM syntax error after 1"), "{problems:?}");
    }

    #[test]
    fn an_unreadable_or_useless_file_is_not_fatal() {
        assert!(read_extra_roots(Path::new("/nonexistent/credits-extra-roots.pem")).is_empty());
        let dir = std::env::temp_dir().join(format!("credits-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, to_pem(b"garbage")).unwrap();
        assert!(read_extra_roots(&garbage).is_empty());
        // The SDK's connector still builds (it panics on a bad root).
        aws_https_client()
            .validate_base_client_config(&RuntimeComponentsBuilder::new("test"), &ConfigBag::base())
            .expect("the connector builds");
        let good = dir.join("good.pem");
        std::fs::write(&good, to_pem(bundled(4))).unwrap();
        assert_eq!(read_extra_roots(&good).len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
