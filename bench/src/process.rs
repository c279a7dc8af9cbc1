//! Function processes as the benchmark runs them: spawned with Lambda's
//! environment, optionally inside a CPU-capped cgroup, their output drained
//! (Lambda reads it from a pipe too), and their memory and CPU read from /proc.
//!
//! The Runtime API's first `GET /next` is timestamped by a [`Relay`]: a TCP
//! relay in front of the emulator that notes when the first request bytes
//! arrive, so init time does not depend on polling the emulator.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Lines of output kept per process, for error messages.
const LOG_TAIL: usize = 40;

/// A cgroup new processes are placed in before they `exec`.
pub struct Cgroup {
    dir: PathBuf,
    procs: Arc<File>,
}

impl Cgroup {
    /// Creates cgroup `name` with `quota` µs of CPU per `period` µs (`None`:
    /// unlimited), on cgroup v2 (`cpu.max`) if its cpu controller is usable,
    /// else on the v1 cpu controller (`cpu.cfs_quota_us`). Returns the cgroup
    /// and a description of the mechanism.
    pub fn create(name: &str, quota: Option<(u64, u64)>) -> Result<(Cgroup, String), String> {
        match Self::create_v2(name, quota) {
            Ok(cgroup) => {
                let how = format!("cgroup v2 `{}/cpu.max`", cgroup.dir.display());
                Ok((cgroup, how))
            }
            Err(v2) => match Self::create_v1(name, quota) {
                Ok(cgroup) => {
                    let how = format!(
                        "cgroup v1 cpu controller (`{}/cpu.cfs_quota_us` / `cpu.cfs_period_us`; \
                         this host mounts cpu on v1, so v2 `cpu.max` is unavailable: {v2})",
                        cgroup.dir.display()
                    );
                    Ok((cgroup, how))
                }
                Err(v1) => Err(format!("cgroup v2: {v2}; cgroup v1: {v1}")),
            },
        }
    }

    fn create_v2(name: &str, quota: Option<(u64, u64)>) -> Result<Cgroup, String> {
        let root = Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|e| format!("no cgroup2 root at /sys/fs/cgroup ({e})"))?;
        if !controllers.split_whitespace().any(|c| c == "cpu") {
            return Err("the cpu controller is not available on cgroup2".into());
        }
        let subtree = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
        if !subtree.split_whitespace().any(|c| c == "cpu") {
            std::fs::write(root.join("cgroup.subtree_control"), "+cpu")
                .map_err(|e| format!("enable +cpu in cgroup.subtree_control: {e}"))?;
        }
        let dir = root.join(name);
        make_dir(&dir)?;
        let max = match quota {
            Some((quota, period)) => format!("{quota} {period}"),
            None => "max 100000".to_owned(),
        };
        std::fs::write(dir.join("cpu.max"), max).map_err(|e| format!("write cpu.max: {e}"))?;
        Self::open(dir)
    }

    fn create_v1(name: &str, quota: Option<(u64, u64)>) -> Result<Cgroup, String> {
        let mount = v1_cpu_mount().ok_or("no cgroup v1 cpu controller mounted")?;
        let own = v1_own_path().unwrap_or_default();
        let dir = mount.join(own.trim_start_matches('/')).join(name);
        make_dir(&dir)?;
        let (quota, period) = match quota {
            Some((quota, period)) => (quota.to_string(), period),
            None => ("-1".to_owned(), 100_000),
        };
        // The period first: a quota larger than the old period would be refused.
        std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string())
            .map_err(|e| format!("write cpu.cfs_period_us: {e}"))?;
        std::fs::write(dir.join("cpu.cfs_quota_us"), quota)
            .map_err(|e| format!("write cpu.cfs_quota_us: {e}"))?;
        Self::open(dir)
    }

    fn open(dir: PathBuf) -> Result<Cgroup, String> {
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| format!("open {}/cgroup.procs: {e}", dir.display()))?;
        Ok(Cgroup { dir, procs: Arc::new(procs) })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty by now: every process the benchmark put there was killed and reaped.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("mkdir {}: {e}", dir.display())),
    }
}

fn v1_cpu_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (path, kind, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        (*kind == "cgroup" && options.split(',').any(|o| o == "cpu")).then(|| PathBuf::from(path))
    })
}

fn v1_own_path() -> Option<String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "cpu").then(|| path.to_owned())
    })
}

/// One function process. Killed (SIGKILL) and reaped when dropped.
pub struct FnProcess {
    /// When the (forked, placed) child was released to `exec` the binary.
    pub spawned_at: Instant,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl FnProcess {
    /// Starts `path` with exactly `env` (plus `PATH`), polling `runtime_api`.
    ///
    /// The child is forked, moves itself into `cgroup` (if any), and then
    /// waits on a pipe; [`FnProcess::spawned_at`] is taken just before it is
    /// released to `exec`. So the measured start excludes the benchmark's own
    /// `fork` and the cgroup migration (which can take a kernel RCU grace
    /// period, up to ~20 ms here), and not one instruction of the function
    /// runs uncapped. Blocks the calling thread for the fork; call it from a
    /// blocking context.
    pub fn spawn(
        path: &Path,
        env: &[(String, String)],
        runtime_api: &str,
        cgroup: Option<&Cgroup>,
    ) -> io::Result<FnProcess> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut command = Command::new(path);
        command
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
            .envs(lambda_env(&name, runtime_api))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let procs = cgroup.map(|c| Arc::clone(&c.procs));
        // Both pipes are close-on-exec: the function never sees them.
        let (ready_reader, ready_writer) = io::pipe()?;
        let (go_reader, go_writer) = io::pipe()?;
        // SAFETY: between fork and exec the closure only calls write(2) and
        // read(2) on descriptors created before the fork: async-signal-safe,
        // no allocation. Writing "0" to cgroup.procs moves the writing
        // process, i.e. the child.
        unsafe {
            command.pre_exec(move || {
                if let Some(file) = &procs {
                    (&**file).write_all(b"0")?;
                }
                (&ready_writer).write_all(b"r")?;
                let mut go = [0u8; 1];
                (&go_reader).read_exact(&mut go)
            });
        }
        let (mut child, spawned_at) = std::thread::scope(|scope| {
            // `spawn` returns only once the child has exec'd, so it runs on its
            // own thread while this one releases the child. The thread owns
            // the command: if the child dies before it is ready, dropping the
            // command closes our copy of the ready pipe and the read below ends.
            let spawner = scope.spawn(move || command.spawn());
            let mut ready = [0u8; 1];
            let released = (&ready_reader).read_exact(&mut ready).and_then(|()| {
                let spawned_at = Instant::now();
                (&go_writer).write_all(b"g").map(|()| spawned_at)
            });
            let child = spawner.join().expect("the spawning thread does not panic")?;
            Ok::<_, io::Error>((child, released?))
        })?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        drain(child.stdout.take().expect("stdout is piped"), &tail);
        drain(child.stderr.take().expect("stderr is piped"), &tail);
        Ok(FnProcess { spawned_at, child, tail })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the process wrote.
    pub fn log_tail(&self) -> String {
        self.tail.lock().unwrap().iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Peak resident set size (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
    }

    /// Minor page faults of the process so far (`minflt`, field 10 of `/proc/<pid>/stat`).
    pub fn minor_faults(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // The command name (field 2) may hold spaces; count from after it.
        let after_name = &stat[stat.rfind(')')? + 2..];
        after_name.split_whitespace().nth(7)?.parse().ok()
    }

    /// CPU time of all the process's threads so far (accurate while it is idle).
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(&self.pid().to_string())
    }
}

impl Drop for FnProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of `/proc/<pid>/task/*/schedstat` on-CPU time (ns resolution).
pub fn cpu_time_of(pid: &str) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

fn drain(reader: impl Read + Send + 'static, tail: &Arc<Mutex<VecDeque<String>>>) {
    let tail = Arc::clone(tail);
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            let mut tail = tail.lock().unwrap();
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    });
}

/// What Lambda sets (as testkit's function runner does), with
/// `template.yaml`'s logging configuration (JSON, INFO).
fn lambda_env(name: &str, runtime_api: &str) -> Vec<(String, String)> {
    let stream = format!("2026/01/01/[$LATEST]{}", uuid::Uuid::new_v4().simple());
    [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", name.to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", stream),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".to_owned()),
        ("AWS_LAMBDA_LOG_LEVEL", "INFO".to_owned()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        ("TZ", ":UTC".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A TCP relay in front of the Runtime API emulator that notes when the
/// first request bytes arrive (the function's first `GET /next`).
pub struct Relay {
    addr: String,
    first: Arc<OnceLock<Instant>>,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: String) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let first = Arc::new(OnceLock::new());
        let noted = Arc::clone(&first);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(relay(client, target.clone(), Arc::clone(&noted)));
            }
        });
        Ok(Relay { addr, first, task })
    }

    /// `127.0.0.1:PORT`, for `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> &str {
        &self.addr
    }

    pub fn first_request(&self) -> Option<Instant> {
        self.first.get().copied()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every relayed connection.
        self.task.abort();
    }
}

async fn relay(mut client: TcpStream, target: String, first: Arc<OnceLock<Instant>>) {
    let mut buf = vec![0u8; 16 * 1024];
    let n = match client.read(&mut buf).await {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    let _ = first.set(Instant::now());
    let _ = client.set_nodelay(true);
    let Ok(mut upstream) = TcpStream::connect(&target).await else { return };
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(&buf[..n]).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Waits up to `timeout` for `condition`, checking every millisecond.
pub async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    condition()
}
