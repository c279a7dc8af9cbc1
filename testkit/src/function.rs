//! Running built function binaries as Lambda would: as separate processes
//! polling a [`RuntimeApiEmulator`], with the environment Lambda provides.
//!
//! A process runs a workspace binary by default, or any [`Program`]: e.g. an
//! arm64 `bootstrap` from `sam build` through `qemu-aarch64` (see
//! [`crate::sam`]).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lines::for_each_line;
use crate::runtime_api::RuntimeApiEmulator;

/// Variables passed through from the test's environment; everything else is
/// cleared so a developer's shell (say `AWS_PROFILE`) cannot change results.
const PASSED_THROUGH: &[&str] = &["PATH", "RUST_LOG", "RUST_BACKTRACE"];

/// Path of workspace binary `name` in the target directory of the running
/// test, e.g. `target/debug/adjust-credits`.
///
/// Panics if it is missing: `cargo test` builds only the tested package's
/// binaries, so other packages' must be built first.
pub fn function_binary(name: &str) -> PathBuf {
    // Integration tests run as `target/<profile>/deps/<test>-<hash>`.
    let exe = std::env::current_exe().expect("path of the running test executable");
    let mut dir = exe.parent().expect("test executable has a parent directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "function binary {} not found.\nRun `cargo build --workspace` (with the same \
         profile as the tests) before running these tests.",
        path.display()
    );
    path
}

/// What a function process executes: a workspace binary, or a given file,
/// possibly through a wrapper (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`
/// to run an arm64 bootstrap on an x86_64 machine).
#[derive(Debug, Clone)]
pub struct Program {
    argv: Vec<OsString>,
}

impl Program {
    /// Workspace binary `binary` (see [`function_binary`]).
    pub fn workspace(binary: &str) -> Program {
        Program { argv: vec![function_binary(binary).into_os_string()] }
    }

    /// Executable `path` run through `wrapper` (the wrapper's program and its
    /// arguments; none runs `path` itself).
    pub fn wrapped<W>(wrapper: W, path: impl Into<PathBuf>) -> Program
    where
        W: IntoIterator,
        W::Item: Into<OsString>,
    {
        let mut argv: Vec<OsString> = wrapper.into_iter().map(Into::into).collect();
        argv.push(path.into().into_os_string());
        Program { argv }
    }

    /// Whether a wrapper (an emulator) runs the executable.
    pub fn is_wrapped(&self) -> bool {
        self.argv.len() > 1
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        self.argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    }
}

/// One running function process. Killed when dropped.
pub struct FunctionProcess {
    name: String,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl FunctionProcess {
    /// Spawns binary `binary` (see [`function_binary`]) polling `emulator`.
    ///
    /// `env` is applied last, so it can override any of the Lambda defaults.
    pub fn spawn<I, K, V>(binary: &str, env: I, emulator: &RuntimeApiEmulator) -> FunctionProcess
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Self::spawn_with(binary, &Program::workspace(binary), &owned_env(env), emulator)
    }

    /// Spawns `program` as function `binary` (its name in Lambda's variables
    /// and the log tags) polling `emulator`; `env` as in [`spawn`](Self::spawn).
    pub fn spawn_program<I, K, V>(
        binary: &str,
        program: &Program,
        env: I,
        emulator: &RuntimeApiEmulator,
    ) -> FunctionProcess
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Self::spawn_with(binary, program, &owned_env(env), emulator)
    }

    fn spawn_with(
        binary: &str,
        program: &Program,
        env: &[(OsString, OsString)],
        emulator: &RuntimeApiEmulator,
    ) -> FunctionProcess {
        let mut command = Command::new(&program.argv[0]);
        command
            .args(&program.argv[1..])
            .env_clear()
            .envs(PASSED_THROUGH.iter().filter_map(|k| Some((k, std::env::var_os(k)?))))
            .envs(lambda_env(binary, emulator))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child =
            command.spawn().unwrap_or_else(|e| panic!("failed to start {}: {e}", program.display()));

        let logs = Arc::new(Mutex::new(Vec::new()));
        let tag = format!("{binary}[{}]", child.id());
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        capture(stdout, format!("{tag} stdout"), &tag, &logs);
        capture(stderr, format!("{tag} stderr"), &tag, &logs);
        FunctionProcess { name: binary.to_owned(), child, logs }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout and stderr line so far, in the order they were read.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`; returns whether one did
    /// within `timeout`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("query the function's status")
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the process, like a crash or an out-of-memory kill: it gets no
    /// chance to answer an invocation in progress. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Several instances of one function polling the same emulator, like
/// concurrent Lambda execution environments. Each invocation goes to exactly
/// one of them.
pub struct FunctionPool {
    instances: Vec<FunctionProcess>,
}

impl FunctionPool {
    pub fn spawn<I, K, V>(
        binary: &str,
        n_instances: usize,
        env: I,
        emulator: &RuntimeApiEmulator,
    ) -> FunctionPool
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Self::spawn_program(binary, &Program::workspace(binary), n_instances, env, emulator)
    }

    /// `n_instances` processes of `program`, as function `binary`.
    pub fn spawn_program<I, K, V>(
        binary: &str,
        program: &Program,
        n_instances: usize,
        env: I,
        emulator: &RuntimeApiEmulator,
    ) -> FunctionPool
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let env = owned_env(env);
        let instances =
            (0..n_instances).map(|_| FunctionProcess::spawn_with(binary, program, &env, emulator)).collect();
        FunctionPool { instances }
    }

    pub fn instances(&self) -> &[FunctionProcess] {
        &self.instances
    }

    /// Mutable access, e.g. to [`FunctionProcess::kill`] one instance.
    pub fn instance_mut(&mut self, index: usize) -> &mut FunctionProcess {
        &mut self.instances[index]
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// All instances' log lines, instance by instance.
    pub fn logs(&self) -> Vec<String> {
        self.instances.iter().flat_map(|p| p.logs()).collect()
    }
}

fn owned_env<I, K, V>(env: I) -> Vec<(OsString, OsString)>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    env.into_iter().map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())).collect()
}

/// What Lambda sets for a function with the JSON log format.
fn lambda_env(binary: &str, emulator: &RuntimeApiEmulator) -> Vec<(String, String)> {
    let stream = format!("2026/01/01/[$LATEST]{}", uuid::Uuid::new_v4().simple());
    [
        ("AWS_LAMBDA_RUNTIME_API", emulator.address()),
        ("AWS_LAMBDA_FUNCTION_NAME", binary.to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", stream),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{binary}")),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".to_owned()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        ("TZ", ":UTC".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Collects lines into `logs`, and echoes them tagged on stderr: reader
/// threads inherit the test's output capture, so a failing test shows its
/// functions' output and a passing one stays quiet.
fn capture<R>(reader: R, thread_name: String, tag: &str, logs: &Arc<Mutex<Vec<String>>>)
where
    R: std::io::Read + Send + 'static,
{
    let logs = Arc::clone(logs);
    let tag = tag.to_owned();
    for_each_line(reader, thread_name, move |line| {
        eprintln!("[{tag}] {line}");
        crate::append_suite_file("log", &line);
        logs.lock().unwrap().push(line);
    });
}
