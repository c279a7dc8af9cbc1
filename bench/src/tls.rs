//! What TLS would add. Locally every upstream is plain HTTP on loopback, so
//! the function runs never pay for a handshake. This probe measures the
//! pieces in a separate process (`credits-bench tls-probe`), which the
//! benchmark runs both unthrottled and in the CPU-capped cgroup:
//!
//! - `aws_config::load_from_env` plus the DynamoDB and Secrets Manager clients
//!   (what `App::from_env` does before the first `/next`);
//! - reading the system root store (rustls-native-certs), as aws-config's
//!   default HTTPS client and reqwest's platform verifier each do;
//! - building a reqwest client with the platform verifier (as
//!   `credits::app::http_client` does) versus with given roots only (what
//!   bundled roots would cost: no file system scan);
//! - one HTTP request on a new plain connection, one HTTPS request on a new
//!   connection (TCP + TLS 1.3 handshake with an RSA-2048 chain like AWS's
//!   endpoints, rustls with aws-lc-rs as in the functions), and one on the
//!   kept-alive connection. The servers run in the (uncapped) benchmark
//!   process, so only the client's side is charged to the probe.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::process::{Cgroup, FnProcess};

/// A locally generated CA and a server certificate for 127.0.0.1 (RSA 2048,
/// like the AWS endpoints' chains), made with the `openssl` command.
pub struct Certs {
    pub ca_pem: PathBuf,
    /// The system's CA bundle plus the local CA, for `SSL_CERT_FILE`: the
    /// functions then read as many roots as usual and also trust the local CA.
    pub bundle: PathBuf,
    pub server: Arc<rustls::ServerConfig>,
}

impl Certs {
    pub fn generate(dir: &Path) -> Result<Certs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let ext = dir.join("leaf.ext");
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
        )
        .map_err(|e| format!("write {}: {e}", ext.display()))?;
        let d = |name: &str| dir.join(name).to_string_lossy().into_owned();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &d("ca.key"),
            "-out",
            &d("ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=credits-bench root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &d("leaf.key"),
            "-out",
            &d("leaf.csr"),
            "-subj",
            "/CN=127.0.0.1",
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &d("leaf.csr"),
            "-CA",
            &d("ca.pem"),
            "-CAkey",
            &d("ca.key"),
            "-CAcreateserial",
            "-out",
            &d("leaf.pem"),
            "-days",
            "2",
            "-sha256",
            "-extfile",
            &d("leaf.ext"),
        ])?;

        let leaf =
            CertificateDer::from_pem_file(dir.join("leaf.pem")).map_err(|e| format!("leaf.pem: {e}"))?;
        let ca = CertificateDer::from_pem_file(dir.join("ca.pem")).map_err(|e| format!("ca.pem: {e}"))?;
        let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).map_err(|e| format!("leaf.key: {e}"))?;
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf, ca], key)
        .map_err(|e| format!("server certificate: {e}"))?;

        let mut bundle = std::fs::read(SYSTEM_BUNDLE).unwrap_or_default();
        bundle.push(b'\n');
        bundle.extend(std::fs::read(dir.join("ca.pem")).map_err(|e| format!("ca.pem: {e}"))?);
        std::fs::write(dir.join("bundle.pem"), bundle).map_err(|e| format!("bundle.pem: {e}"))?;
        Ok(Certs { ca_pem: dir.join("ca.pem"), bundle: dir.join("bundle.pem"), server: Arc::new(server) })
    }

    /// Environment for a function that should trust the local CA: `SSL_CERT_FILE`
    /// / `SSL_CERT_DIR` for clients that read the system's roots (file and
    /// directory, as the default probe does), and [`EXTRA_ROOTS_VAR`] for
    /// clients with bundled roots, if the functions honour it.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("SSL_CERT_FILE".to_owned(), self.bundle.to_string_lossy().into_owned()),
            (EXTRA_ROOTS_VAR.to_owned(), self.ca_pem.to_string_lossy().into_owned()),
        ];
        if Path::new(SYSTEM_CERT_DIR).is_dir() {
            env.push(("SSL_CERT_DIR".to_owned(), SYSTEM_CERT_DIR.to_owned()));
        }
        env
    }

    /// One handshake from this process, so that the servers' one-time TLS
    /// set-up (aws-lc's random generator seeding, ~30 ms of CPU) is not
    /// charged to the first measured client.
    pub async fn warm_up(&self, https_url: &str) -> Result<(), String> {
        let ca = std::fs::read(&self.ca_pem).map_err(|e| format!("ca.pem: {e}"))?;
        let root = reqwest::Certificate::from_pem(&ca).map_err(|e| e.to_string())?;
        let client = reqwest::Client::builder().tls_certs_only([root]).build().map_err(|e| e.to_string())?;
        client.get(https_url).send().await.map_err(|e| format!("TLS warm-up: {e:?}"))?;
        Ok(())
    }
}

/// A PEM file of extra roots the functions trust on top of the roots compiled
/// into them (`credits::tls::EXTRA_ROOTS_VAR`); how the TLS cold starts make
/// them trust the local CA.
pub const EXTRA_ROOTS_VAR: &str = "CREDITS_EXTRA_ROOTS_FILE";

const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const SYSTEM_CERT_DIR: &str = "/etc/ssl/certs";

/// Serves HTTPS connections accepted on `listener` with `handler`.
pub fn serve_tls<H, F>(listener: TcpListener, config: Arc<rustls::ServerConfig>, handler: H) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            connections.spawn(async move {
                if let Ok(stream) = acceptor.accept(stream).await {
                    let service = service_fn(move |request| {
                        let answer = handler(request);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                }
            });
            while connections.try_join_next().is_some() {}
        }
    })
}

/// Servers for the probe: HTTPS with the local chain, and plain HTTP.
pub struct TlsFixture {
    ca_pem: PathBuf,
    https: SocketAddr,
    http: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TlsFixture {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl TlsFixture {
    pub async fn start(certs: &Certs) -> Result<TlsFixture, String> {
        let https_listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let http_listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let https = https_listener.local_addr().map_err(|e| e.to_string())?;
        let http = http_listener.local_addr().map_err(|e| e.to_string())?;
        let ok = |_request: Request<Incoming>| async { Response::new(Body::from("ok")) };
        let https_task = serve_tls(https_listener, Arc::clone(&certs.server), ok);
        let http_task = tokio::spawn(async move {
            while let Ok((stream, _)) = http_listener.accept().await {
                let service =
                    service_fn(move |request| async move { Ok::<_, Infallible>(ok(request).await) });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        let fixture =
            TlsFixture { ca_pem: certs.ca_pem.clone(), https, http, tasks: vec![https_task, http_task] };
        certs.warm_up(&format!("https://{https}/")).await?;
        Ok(fixture)
    }

    /// Runs the probe in a new process (in `cgroup` if given) and returns its figures.
    pub async fn probe(
        &self,
        exe: &Path,
        env: &[(String, String)],
        cgroup: Option<&Cgroup>,
        sdk_given_roots: bool,
    ) -> Result<ProbeResult, String> {
        let mut env = env.to_vec();
        if sdk_given_roots {
            env.push(("BENCH_PROBE_SDK_GIVEN_ROOTS".into(), "1".into()));
        }
        env.push(("BENCH_PROBE_HTTPS".into(), self.https.to_string()));
        env.push(("BENCH_PROBE_HTTP".into(), self.http.to_string()));
        env.push(("BENCH_PROBE_CA".into(), self.ca_pem.to_string_lossy().into_owned()));
        env.push(("BENCH_MODE".into(), "tls-probe".into()));
        // The probe is the benchmark binary itself; it needs no Runtime API.
        let process = tokio::task::block_in_place(|| FnProcess::spawn(exe, &env, "127.0.0.1:9", cgroup))
            .map_err(|e| e.to_string())?;
        let pid = process.pid();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(line) = process.log_tail().lines().find(|l| l.starts_with("{\"probe\"")) {
                let value: Value = serde_json::from_str(line).map_err(|e| format!("probe output: {e}"))?;
                return ProbeResult::from_json(&value["probe"])
                    .ok_or_else(|| format!("probe output: {line}"));
            }
            if Instant::now() > deadline {
                return Err(format!("probe {pid} gave no result; output:\n{}", process.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn openssl(args: &[&str]) -> Result<(), String> {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("the `openssl` command is needed for the TLS probe: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("openssl {}: {}", args[0], String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// One probe run: named figures in milliseconds (wall time; names ending in
/// `_cpu` are CPU time), or the field-wise median of several runs.
#[derive(Debug, Clone, Default)]
pub struct ProbeResult(Vec<(String, f64)>);

impl ProbeResult {
    fn set(&mut self, name: &str, value: f64) {
        self.0.push((name.to_owned(), value));
    }

    /// Records wall and CPU time since `start` (taken with `process_cpu_time` and `Instant::now`).
    fn finish(&mut self, name: &str, (cpu, wall): (Duration, Instant)) {
        self.set(name, wall.elapsed().as_secs_f64() * 1e3);
        self.set(&format!("{name}_cpu"), process_cpu_time().saturating_sub(cpu).as_secs_f64() * 1e3);
    }

    pub fn get(&self, name: &str) -> f64 {
        self.0.iter().find(|(n, _)| n == name).map_or(f64::NAN, |(_, v)| *v)
    }

    fn from_json(value: &Value) -> Option<ProbeResult> {
        let fields = value.as_object()?;
        Some(ProbeResult(fields.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect()))
    }

    fn to_json(&self) -> Value {
        let fields: serde_json::Map<String, Value> =
            self.0.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        json!({ "probe": fields })
    }

    /// Field-wise median of several runs.
    pub fn median(runs: &[ProbeResult]) -> ProbeResult {
        let Some(first) = runs.first() else { return ProbeResult::default() };
        let mut result = ProbeResult::default();
        for (name, _) in &first.0 {
            let mut values: Vec<f64> = runs.iter().map(|r| r.get(name)).collect();
            values.sort_by(f64::total_cmp);
            result.set(name, values[values.len() / 2]);
        }
        result
    }
}

/// The probe process: prints one `{"probe": {...}}` line and exits.
pub fn probe_main() -> Result<(), String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let https = var("BENCH_PROBE_HTTPS")?;
    let http = var("BENCH_PROBE_HTTP")?;
    let ca = std::fs::read(var("BENCH_PROBE_CA")?).map_err(|e| format!("CA: {e}"))?;
    // The same runtime as the functions' `#[tokio::main]`.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let result = runtime.block_on(async move {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let cpu = process_cpu_time;
        let mut r = ProbeResult::default();
        let mark = || (cpu(), Instant::now());

        let start = mark();
        let aws = if std::env::var_os("BENCH_PROBE_SDK_GIVEN_ROOTS").is_some() {
            // The SDK's HTTPS client with given roots only (as with bundled
            // roots), instead of the default that reads the system store.
            use aws_smithy_http_client::tls;
            let trust = tls::TrustStore::empty().with_pem_certificate(ca.clone());
            let context =
                tls::TlsContext::builder().with_trust_store(trust).build().map_err(|e| e.to_string())?;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
                .tls_context(context)
                .build_https();
            aws_config::from_env().http_client(http).load().await
        } else {
            aws_config::load_from_env().await
        };
        let _dynamodb = aws_sdk_dynamodb::Client::new(&aws);
        let _secrets = aws_sdk_secretsmanager::Client::new(&aws);
        r.finish("aws_config_and_clients", start);

        // aws-lc-rs's random generator, first use in this thread and in a new one.
        let random = rustls::crypto::aws_lc_rs::default_provider().secure_random;
        let start = mark();
        random.fill(&mut [0u8; 32]).map_err(|_| "random bytes".to_owned())?;
        r.finish("rng_first", start);
        let start = mark();
        std::thread::spawn(move || random.fill(&mut [0u8; 32]).is_ok()).join().ok();
        r.finish("rng_new_thread", start);

        let start = mark();
        let native = rustls_native_certs::load_native_certs();
        let mut store = rustls::RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(native.certs);
        r.finish("native_roots", start);
        let roots = added as f64;

        let start = mark();
        let _platform = reqwest::Client::builder().build().map_err(|e| e.to_string())?;
        r.finish("reqwest_platform_verifier", start);

        let start = mark();
        let mozilla: Vec<reqwest::Certificate> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .filter_map(|c| reqwest::Certificate::from_der(c).ok())
            .collect();
        let _bundled =
            reqwest::Client::builder().tls_certs_only(mozilla).build().map_err(|e| e.to_string())?;
        r.finish("reqwest_mozilla_roots", start);

        let start = mark();
        let _anchors = reqwest::Client::builder()
            .tls_backend_preconfigured(credits::tls::public_tls_config())
            .build()
            .map_err(|e| e.to_string())?;
        r.finish("reqwest_mozilla_anchors", start);

        let start = mark();
        let root = reqwest::Certificate::from_pem(&ca).map_err(|e| e.to_string())?;
        let client =
            reqwest::Client::builder().tls_certs_only([root.clone()]).build().map_err(|e| e.to_string())?;
        r.finish("reqwest_given_roots", start);
        r.set("native_roots_count", roots);

        let timed = |client: reqwest::Client, url: String| async move {
            let (c, t) = (cpu(), Instant::now());
            let body = client.get(url).send().await.map_err(|e| format!("{e:?}"))?.text().await;
            body.map_err(|e| e.to_string())?;
            Ok::<_, String>((ms(t.elapsed()), ms(cpu().saturating_sub(c))))
        };
        let mut step = |name: &str, (wall, cpu): (f64, f64)| {
            r.set(name, wall);
            r.set(&format!("{name}_cpu"), cpu);
        };
        step("http_first", timed(client.clone(), format!("http://{http}/")).await?);
        step("https_first", timed(client.clone(), format!("https://{https}/")).await?);
        step("https_reused", timed(client.clone(), format!("https://{https}/")).await?);
        // A second client: a new connection and a full handshake again (no
        // session to resume), without the process's one-time TLS set-up.
        let other = reqwest::Client::builder().tls_certs_only([root]).build().map_err(|e| e.to_string())?;
        step("https_second_connection", timed(other, format!("https://{https}/")).await?);
        Ok::<_, String>(r)
    })?;
    println!("{}", result.to_json());
    Ok(())
}

/// CPU time of this whole process, up to date (unlike /proc's per-thread
/// counters, which lag for a thread that is running).
fn process_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
