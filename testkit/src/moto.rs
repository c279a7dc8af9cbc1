//! A local moto server (DynamoDB, Secrets Manager) for tests.
//!
//! moto runs as a child process from `<repo>/.venv` (see
//! `scripts/setup-test-env.sh`) through `scripts/moto_server.py`, which
//! serialises requests so conditional writes are atomic, as in real DynamoDB.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::lines::for_each_line;

/// Generous: the first start on a fresh machine also compiles moto's bytecode.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How many of the server's last stderr lines to keep for error messages.
const STDERR_TAIL: usize = 50;
const READY_PREFIX: &str = "moto_server ready on ";

/// A running moto server. Stopped when dropped (the shared one when the test
/// binary exits: the script watches its parent process).
pub struct MotoServer {
    child: Option<Child>,
    endpoint: String,
}

impl MotoServer {
    /// The server shared by every test in this test binary, started on first use.
    ///
    /// Tests isolate themselves by using their own table and secret names
    /// (see [`crate::aws::unique_name`]) rather than by resetting moto.
    pub fn shared() -> &'static MotoServer {
        static SHARED: OnceLock<MotoServer> = OnceLock::new();
        SHARED.get_or_init(MotoServer::spawn)
    }

    /// A server owned by the caller, for tests that need to [`stop`](Self::stop)
    /// it (e.g. to make DynamoDB unreachable) without disturbing other tests.
    pub fn start_private() -> MotoServer {
        MotoServer::spawn()
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`, for `AWS_ENDPOINT_URL`.
    pub fn endpoint_url(&self) -> String {
        self.endpoint.clone()
    }

    /// Kills the server. Its port then refuses connections, which is what a
    /// client sees when the service is unreachable. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL: the state is throw-away and an abrupt stop is the point.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn() -> MotoServer {
        let root = crate::repo_root();
        let python = root.join(".venv/bin/python");
        let script = root.join("scripts/moto_server.py");
        assert!(
            python.exists(),
            "moto is not set up: {} is missing.\nRun `scripts/setup-test-env.sh` \
             (creates .venv with the pinned moto[server]) and re-run the tests.",
            python.display()
        );

        // Port 0 lets the OS pick a free port in the server itself, so there is
        // no window in which another process could take a port we chose.
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", "0", "--parent-pid"])
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to run {}: {e}", python.display()));

        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::clone(&stderr_tail);
        for_each_line(child.stderr.take().expect("stderr is piped"), "moto-stderr".into(), move |line| {
            let mut tail = tail.lock().unwrap();
            if tail.len() == STDERR_TAIL {
                tail.remove(0);
            }
            tail.push(line);
        });

        // Keep draining stdout after the ready line so the server never blocks
        // on a full pipe.
        let (ready_tx, ready_rx) = mpsc::channel();
        for_each_line(child.stdout.take().expect("stdout is piped"), "moto-stdout".into(), move |line| {
            if let Some(url) = line.strip_prefix(READY_PREFIX) {
                let _ = ready_tx.send(url.to_owned());
            }
        });

        let fail = |child: &mut Child, why: String| -> ! {
            let _ = child.kill();
            let _ = child.wait();
            let tail = stderr_tail.lock().unwrap().join("\n");
            panic!(
                "moto server did not start: {why}.\nIf moto is missing or outdated, run \
                 `scripts/setup-test-env.sh`.\nLast server output:\n{tail}"
            )
        };

        let endpoint = match ready_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(url) => url,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                fail(&mut child, format!("no ready line within {STARTUP_TIMEOUT:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed: the process exited; give stderr a moment to drain.
                let status = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                fail(&mut child, format!("it exited ({status:?})"))
            }
        };

        if let Err(why) = wait_until_http(&endpoint, STARTUP_TIMEOUT) {
            fail(&mut child, why);
        }
        MotoServer { child: Some(child), endpoint }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `endpoint` answers an HTTP request (any status).
///
/// Blocking std I/O rather than reqwest: this runs inside `OnceLock`
/// initialisation, possibly on a tokio worker thread, where neither an async
/// call nor reqwest's blocking client can be used.
fn wait_until_http(endpoint: &str, timeout: Duration) -> Result<(), String> {
    let authority =
        endpoint.strip_prefix("http://").ok_or_else(|| format!("unexpected endpoint {endpoint:?}"))?;
    let deadline = Instant::now() + timeout;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        match probe(authority) {
            Ok(()) => return Ok(()),
            Err(e) => last_error = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{endpoint} did not answer HTTP: {last_error}"))
}

fn probe(authority: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /moto-api/ HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")?;
    let mut status_line = [0u8; 8];
    stream.read_exact(&mut status_line)?;
    if status_line.starts_with(b"HTTP/1.") {
        Ok(())
    } else {
        Err(std::io::Error::other("not an HTTP response"))
    }
}
