//! `CREDITS_EXTRA_ROOTS_FILE` end to end: both HTTPS clients the functions
//! build (`app::http_client` for RevenueCat and the gateway,
//! `tls::aws_http_client` for DynamoDB and Secrets Manager) reach a local
//! HTTPS server whose certificate a throw-away CA signed, trusted only
//! because that CA is in the file; a server signed by another CA stays
//! refused, so the file, not a disabled check, is what lets the first in.
//!
//! Its own test binary (one process) because the file is read once per
//! process from the environment, as in a Lambda instance.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa { pem: cert.pem(), der: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    /// A server certificate for 127.0.0.1 and its key.
    fn leaf(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone(), self.der.clone()], key)
    }
}

/// An HTTPS server answering every request `200 {}` (what DynamoDB answers
/// a `GetItem` that finds nothing); counts the requests it answered.
struct Server {
    addr: SocketAddr,
    answered: Arc<AtomicUsize>,
}

impl Server {
    async fn start(ca: &TestCa) -> Server {
        let (chain, key) = ca.leaf();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else { return };
                    if read_request(&mut tls).await.is_some() {
                        let body = "{}";
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(response.as_bytes()).await.is_ok() {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        Server { addr, answered }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// Reads one HTTP/1.1 request (headers and a `content-length` body).
async fn read_request(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}

async fn dynamodb(endpoint: String) -> aws_sdk_dynamodb::Client {
    let credentials = aws_sdk_dynamodb::config::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(credits::tls::aws_http_client())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&aws)
}

async fn get_item(client: &aws_sdk_dynamodb::Client) -> Result<(), String> {
    let key = aws_sdk_dynamodb::types::AttributeValue::S("k".into());
    client.get_item().table_name("t").key("pk", key).send().await.map(drop).map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn every_client_trusts_a_ca_named_only_by_the_extra_roots_file() {
    let trusted = TestCa::new("credits extra-roots test CA");
    let stranger = TestCa::new("a CA nobody trusts");
    let dir: PathBuf = std::env::temp_dir().join(format!("credits-extra-roots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("extra-roots.pem");
    // Text around the certificate, as in a bundle with comments.
    std::fs::write(&file, format!("# the proxy's CA\n{}\n", trusted.pem)).unwrap();
    // The only test in this process, and no client has been built yet.
    std::env::set_var(credits::tls::EXTRA_ROOTS_VAR, &file);

    let good = Server::start(&trusted).await;
    let bad = Server::start(&stranger).await;

    // RevenueCat and the gateway's client.
    let http = credits::app::http_client(&credits::config::Config::from_lookup(|_| None));
    let response = http.get(good.url()).send().await.expect("the extra root is trusted by reqwest");
    assert_eq!(response.status(), 200);
    let refused = http.get(bad.url()).send().await.expect_err("another CA stays refused");
    assert!(refused.is_connect(), "{refused:?}");

    // The AWS SDK's client.
    get_item(&dynamodb(good.url()).await).await.expect("the extra root is trusted by the AWS SDK");
    let refused = get_item(&dynamodb(bad.url()).await).await.expect_err("another CA stays refused");
    assert!(refused.contains("DispatchFailure"), "{refused}");

    assert_eq!(good.answered.load(Ordering::SeqCst), 2);
    assert_eq!(bad.answered.load(Ordering::SeqCst), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
