//! credits-bench: the performance benchmark of the credits-admin functions.
//!
//! ```sh
//! cargo run --release -p credits-bench            # build, measure, write docs/performance.md
//! cargo run --release -p credits-bench -- --quick # fewer samples
//! cargo run --release -p credits-bench -- --no-build
//! BENCH_BIN_DIR=/some/dir cargo run --release -p credits-bench -- --no-build --out /tmp/other.md
//! cargo run --release -p credits-bench -- --cold-only # cold-start CPU against the floor, printed only
//! ```
//!
//! Installs the test tools (`scripts/setup-test-env.sh`: moto's server in
//! `.venv`), builds the release binaries of the three functions and of `hello-floor`
//! (the floor), then runs each as its own process under testkit's Runtime API
//! emulator against moto, the RevenueCat sandbox and the gateway stand-in, all
//! behind recording latency proxies. See docs/performance.md for what is
//! measured and how.

mod latency_proxy;
mod process;
mod report;
mod tls;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use credits_sandbox::{Fault, Route};
use credits_testkit::runtime_api::{Invocation, RuntimeApiEmulator};
use credits_testkit::stack::{Call, Reply, Stack};

use latency_proxy::{busy, LatencyProxy, Recorder};
use process::{wait_until, Cgroup, FnProcess, Relay};
use report::{BinaryResult, ColdSample, EndpointResult, Machine, Results, Samples, WarmSample};
use tls::{Certs, ProbeResult, TlsFixture};

const FLOOR: &str = "hello-floor";
const FUNCTIONS: [&str; 3] = ["list-currencies", "get-balances", "adjust-credits"];
/// Added to every upstream call to count sequential round trips.
const UPSTREAM_DELAY: Duration = Duration::from_millis(20);
/// About 1/14 of a vCPU: what a 128 MB Lambda gets (1 vCPU at 1769 MB).
const CPU_CAP: (u64, u64) = (7_000, 100_000);
/// Memory sizes whose CPU share the TLS cold starts are measured at.
const MEMORY_SIZES: [u32; 4] = [128, 256, 512, 1024];

/// CFS quota for a Lambda of `mb` MB: the issue's 7 ms / 100 ms for 128 MB,
/// else `mb / 1769` of one vCPU.
fn cpu_quota(mb: u32) -> (u64, u64) {
    if mb == 128 {
        CPU_CAP
    } else {
        (u64::from(mb) * CPU_CAP.1 / 1769, CPU_CAP.1)
    }
}

/// Lets a capped cgroup's quota refill, so every capped sample starts alike.
async fn refill_quota() {
    tokio::time::sleep(Duration::from_micros(CPU_CAP.1) + Duration::from_millis(50)).await;
}
/// Warm-up requests on a new instance before warm samples are taken.
const WARM_UP: usize = 5;
/// Accept any HTTP status (warm-up requests that are meant to fail).
const ANY_STATUS: u16 = 0;
/// Entries per ledger page in the ledger read (the route's default is 50).
const LEDGER_PAGE: usize = 25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Floor,
    Currencies,
    Balances,
    /// The newest page of a customer's ledger ([`LEDGER_PAGE`] entries).
    Ledger,
    AdjustNoKey,
    AdjustWithKey,
}

impl Endpoint {
    fn binary(self) -> &'static str {
        match self {
            Endpoint::Floor => FLOOR,
            Endpoint::Currencies => "list-currencies",
            Endpoint::Balances | Endpoint::Ledger => "get-balances",
            Endpoint::AdjustNoKey | Endpoint::AdjustWithKey => "adjust-credits",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Endpoint::Floor => "floor (echo)",
            Endpoint::Currencies => "currencies, list cached",
            Endpoint::Balances => "balances",
            Endpoint::Ledger => "ledger, page of 25",
            Endpoint::AdjustNoKey => "adjust without key",
            Endpoint::AdjustWithKey => "adjust with key",
        }
    }

    fn target_round_trips(self) -> Option<u32> {
        match self {
            Endpoint::Floor => None,
            Endpoint::Currencies => Some(1),
            Endpoint::Balances | Endpoint::Ledger => Some(2),
            Endpoint::AdjustNoKey | Endpoint::AdjustWithKey => Some(3),
        }
    }

    /// The endpoint a binary's cold start is measured with.
    fn of_binary(binary: &str) -> Endpoint {
        match binary {
            "list-currencies" => Endpoint::Currencies,
            "get-balances" => Endpoint::Balances,
            "adjust-credits" => Endpoint::AdjustNoKey,
            _ => Endpoint::Floor,
        }
    }
}

fn main() -> ExitCode {
    if std::env::var("BENCH_MODE").as_deref() == Ok("tls-probe") {
        return match tls::probe_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tls-probe: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let root = credits_testkit::repo_root();
    let mut out = root.join("docs").join("performance.md");
    if let Some(at) = args.iter().position(|a| a == "--out") {
        let Some(path) = args.get(at + 1).cloned() else {
            eprintln!("--out needs a path");
            return ExitCode::FAILURE;
        };
        out = PathBuf::from(path);
        args.drain(at..at + 2);
    }
    if let Some(unknown) =
        args.iter().find(|a| !["--quick", "--no-build", "--cold-only"].contains(&a.as_str()))
    {
        eprintln!(
            "unknown argument {unknown:?}; usage: credits-bench [--quick] [--no-build] [--cold-only] [--out FILE]"
        );
        return ExitCode::FAILURE;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let cold_only = args.iter().any(|a| a == "--cold-only");
    let samples = match (quick, cold_only) {
        (true, false) => Samples { warm: 30, cold: 3, cold_slow: 1, cache_cold: 5, probes: 2, tls_warm: 2 },
        (false, false) => {
            Samples { warm: 200, cold: 10, cold_slow: 3, cache_cold: 20, probes: 5, tls_warm: 3 }
        }
        // Only the cold starts, so more of them: the floor's 2–3 ms makes
        // a ratio of medians of ten samples move by ±0.3×.
        (true, true) => Samples { cold: 10, ..Samples::default() },
        (false, true) => Samples { cold: 30, ..Samples::default() },
    };
    // moto (DynamoDB, Secrets Manager) runs from .venv, which a fresh clone
    // does not have until this (idempotent, well under a second when done).
    if let Err(e) = setup_test_env(&root) {
        eprintln!("credits-bench: {e}");
        return ExitCode::FAILURE;
    }
    if !args.iter().any(|a| a == "--no-build") {
        if let Err(e) = build(&root) {
            eprintln!("credits-bench: {e}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(root, out, samples, cold_only)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("credits-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs what the stack needs (moto's server in `.venv`) with the same
/// script the tests use.
fn setup_test_env(root: &Path) -> Result<(), String> {
    let script = root.join("scripts").join("setup-test-env.sh");
    eprintln!("credits-bench: {}", script.display());
    let status = Command::new(&script)
        .current_dir(root)
        .status()
        .map_err(|e| format!("could not run {}: {e}", script.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({status}); moto cannot start without it", script.display()))
    }
}

/// Two invocations, so the functions are built with exactly their own
/// features, as the deploy build (`cargo lambda build`) does: cargo unifies
/// features across the packages of one invocation, and the benchmark's
/// dependencies would otherwise add some to the functions' shared crates.
fn build(root: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let functions = ["-p", "list-currencies", "-p", "get-balances", "-p", "adjust-credits"];
    for packages in [&functions[..], &["-p", "credits-bench"]] {
        let args: Vec<&str> = ["build", "--release"].iter().chain(packages).copied().collect();
        eprintln!("credits-bench: cargo {}", args.join(" "));
        let status = Command::new(&cargo)
            .args(&args)
            .current_dir(root)
            .status()
            .map_err(|e| format!("could not run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("the release build failed ({status})"));
        }
    }
    Ok(())
}

/// `target/release`, wherever this binary was built; `BENCH_BIN_DIR`
/// measures the binaries in another directory instead (e.g. a build with
/// other profile settings; it must hold all five binaries).
fn release_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BENCH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("path of the running executable");
    let dir = exe.parent().expect("the executable has a directory").to_path_buf();
    if dir.ends_with("release") {
        dir
    } else {
        eprintln!("credits-bench: not a release build; measuring the binaries in ../release");
        dir.parent().map(|p| p.join("release")).unwrap_or(dir)
    }
}

struct Bench {
    bin_dir: PathBuf,
    stack: Stack,
    recorder: Recorder,
    env: Vec<(String, String)>,
    /// The same upstreams over HTTPS (local CA), if the certificates could be made.
    env_tls: Option<Vec<(String, String)>>,
    free: Option<Cgroup>,
    /// CPU-capped cgroups by memory size.
    caps: Vec<(u32, Cgroup)>,
    _proxies: Vec<LatencyProxy>,
}

async fn run(root: PathBuf, out: PathBuf, samples: Samples, cold_only: bool) -> Result<(), String> {
    let started = Instant::now();
    let load_before = loadavg();
    let bin_dir = release_dir();
    for name in [FLOOR].iter().chain(FUNCTIONS.iter()).chain(["credits-bench"].iter()) {
        if !bin_dir.join(name).is_file() {
            return Err(format!("{} is missing; build it first", bin_dir.join(name).display()));
        }
    }

    // The local CA for the TLS runs (an error, e.g. no `openssl` command, skips them).
    let certs = Certs::generate(&root.join("target").join("bench-tls"));

    eprintln!("credits-bench: starting moto, the RevenueCat sandbox and the gateway stand-in");
    let mut stack = Stack::start().await;
    let recorder = Recorder::default();
    let server_tls = certs.as_ref().ok().map(|c| Arc::clone(&c.server));
    let proxy = |name, target: String| {
        let (recorder, tls) = (recorder.clone(), server_tls.clone());
        async move { LatencyProxy::start(name, &target, recorder, tls).await.map_err(s) }
    };
    let aws = proxy("aws", stack.moto_endpoint.clone()).await?;
    let revenuecat = proxy("revenuecat", stack.revenuecat_url()).await?;
    let gateway = proxy("gateway", stack.gateway_url()).await?;
    stack.set_env("RATE_LIMIT_PER_MINUTE", 1_000_000);
    let upstreams = |aws: String, revenuecat: String, gateway: String| {
        vec![
            ("AWS_ENDPOINT_URL".to_owned(), aws),
            ("REVENUECAT_API_URL".to_owned(), format!("{revenuecat}/v2")),
            ("GATEWAY_URL".to_owned(), gateway),
        ]
    };
    for (name, value) in upstreams(aws.url(), revenuecat.url(), gateway.url()) {
        stack.set_env(&name, value);
    }
    let env = stack.env();
    let (env_tls, tls_note) = match &certs {
        Ok(certs) => {
            let (a, r, g) = (aws.tls_url(), revenuecat.tls_url(), gateway.tls_url());
            let mut env_tls = env.clone();
            env_tls.retain(|(k, _)| {
                !["AWS_ENDPOINT_URL", "REVENUECAT_API_URL", "GATEWAY_URL"].contains(&k.as_str())
            });
            env_tls.extend(upstreams(a.unwrap_or_default(), r.unwrap_or_default(), g.unwrap_or_default()));
            env_tls.extend(certs.env());
            // The proxies' own first handshake (their process's RNG seeding) is not the functions'.
            certs.warm_up(&gateway.tls_url().unwrap_or_default()).await?;
            (Some(env_tls), None)
        }
        Err(e) => (None, Some(e.clone())),
    };

    let tag = std::process::id();
    let free = Cgroup::create(&format!("credits-bench-{tag}-free"), None);
    let mut caps = Vec::new();
    let mut limiter = String::new();
    for mb in MEMORY_SIZES {
        match Cgroup::create(&format!("credits-bench-{tag}-{mb}mb"), Some(cpu_quota(mb))) {
            Ok((cgroup, how)) => {
                caps.push((mb, cgroup));
                if mb == 128 {
                    limiter = how;
                }
            }
            Err(e) => limiter = format!("not measured (no usable CPU limiter: {e})"),
        }
    }
    let free = match free {
        Ok((free, _)) if caps.len() == MEMORY_SIZES.len() => Some(free),
        _ => {
            caps.clear();
            None
        }
    };
    if !caps.is_empty() {
        limiter = format!(
            "{} µs of CPU per {} µs period (other memory sizes: MB ÷ 1769 of one vCPU), via {limiter}",
            CPU_CAP.0, CPU_CAP.1
        );
    }
    let bench = Bench {
        bin_dir,
        stack,
        recorder,
        env,
        env_tls,
        free,
        caps,
        _proxies: vec![aws, revenuecat, gateway],
    };

    // Cold starts first, interleaving binaries so that background noise spreads evenly.
    let names: Vec<&'static str> = [FLOOR].into_iter().chain(FUNCTIONS).collect();
    let mut binaries: Vec<BinaryResult> = names
        .iter()
        .map(|&name| {
            let path = bench.bin_dir.join(name);
            let size_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            BinaryResult {
                name,
                size_bytes,
                stripped: is_stripped(&path),
                cold_free: Vec::new(),
                cold_capped: Vec::new(),
                cold_slow: Vec::new(),
                cold_tls: Vec::new(),
                warm_tls: Vec::new(),
                warm_rss_kib: None,
            }
        })
        .collect();
    eprintln!("credits-bench: cold starts ({} per binary, unthrottled)", samples.cold);
    for _ in 0..samples.cold {
        for b in binaries.iter_mut() {
            b.cold_free.push(bench.cold_sample(b.name, bench.free.as_ref(), &bench.env).await?);
        }
    }
    if let Some(capped) = bench.cap(128) {
        eprintln!("credits-bench: cold starts ({} per binary, at 1/14 vCPU)", samples.cold);
        for _ in 0..samples.cold {
            for b in binaries.iter_mut() {
                refill_quota().await;
                b.cold_capped.push(bench.cold_sample(b.name, Some(capped), &bench.env).await?);
            }
        }
    }
    if cold_only {
        let context = format!(
            "{}, {} per binary, load {load_before} → {}",
            command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            samples.cold,
            loadavg()
        );
        println!("{}", report::cold_cpu_summary(&binaries, &context));
        return Ok(());
    }
    eprintln!("credits-bench: cold starts with 20 ms per upstream call");
    bench.recorder.set_delay(UPSTREAM_DELAY);
    for _ in 0..samples.cold_slow {
        for b in binaries.iter_mut().skip(1) {
            b.cold_slow.push(bench.cold_sample(b.name, bench.free.as_ref(), &bench.env).await?);
        }
    }
    bench.recorder.set_delay(Duration::ZERO);
    let mut tls_note = tls_note;
    if let Some(env_tls) = &bench.env_tls {
        // A trial first: a function that does not trust the local CA (or
        // fails over TLS otherwise) leaves nothing to measure.
        for b in binaries.iter().skip(1) {
            if let Err(e) = bench.cold_sample(b.name, bench.free.as_ref(), env_tls).await {
                let first_line = e.lines().next().unwrap_or_default();
                tls_note = Some(format!(
                    "a function failed over TLS (it should trust the benchmark's local CA through `{}`, \
                     which the benchmark sets for these runs, on top of the roots compiled into it); first \
                     failure, {}: {}",
                    tls::EXTRA_ROOTS_VAR,
                    b.name,
                    first_line.chars().take(300).collect::<String>()
                ));
                break;
            }
        }
    }
    if let (Some(env_tls), None) = (&bench.env_tls, &tls_note) {
        // Over TLS, unthrottled and at each memory size's CPU share. The floor
        // makes no upstream calls; its row holds plain runs at the same caps.
        let mut modes = vec![(None, samples.cold)];
        modes.extend(
            bench
                .caps
                .iter()
                .map(|(mb, _)| (Some(*mb), if *mb == 128 { samples.cold } else { samples.cold.div_ceil(2) })),
        );
        for (memory, n) in modes {
            eprintln!(
                "credits-bench: cold starts over TLS ({n} per binary, {})",
                memory.map_or("unthrottled".into(), |mb| format!("{mb} MB"))
            );
            let cgroup = match memory {
                Some(mb) => bench.cap(mb),
                None => bench.free.as_ref(),
            };
            for b in binaries.iter_mut() {
                b.cold_tls.push((memory, Vec::new()));
                b.warm_tls.push((memory, Vec::new()));
            }
            for _ in 0..n {
                for b in binaries.iter_mut() {
                    if b.name == FLOOR && (memory.is_none() || memory == Some(128)) {
                        continue;
                    }
                    if memory.is_some() {
                        refill_quota().await;
                    }
                    let (env, warm) =
                        if b.name == FLOOR { (&bench.env, 0) } else { (env_tls, samples.tls_warm) };
                    let (sample, warm) =
                        bench.cold_then_warm(b.name, cgroup, env, warm, memory.is_some()).await?;
                    b.cold_tls.last_mut().expect("pushed above").1.push(sample);
                    b.warm_tls.last_mut().expect("pushed above").1.extend(warm);
                }
            }
        }
        // The floor's unthrottled and 128 MB figures are the plain runs above.
        let floor = &mut binaries[0];
        for (memory, samples) in floor.cold_tls.iter_mut() {
            match memory {
                None => samples.clone_from(&floor.cold_free),
                Some(128) => samples.clone_from(&floor.cold_capped),
                _ => {}
            }
        }
    }

    // Warm requests: one long-lived instance per binary, each on a table of
    // its own (see `Bench::fresh_table_env`).
    let mut endpoints = Vec::new();
    let groups: [(&str, &[Endpoint]); 4] = [
        (FLOOR, &[Endpoint::Floor]),
        ("list-currencies", &[Endpoint::Currencies]),
        ("adjust-credits", &[Endpoint::AdjustNoKey, Endpoint::AdjustWithKey]),
        ("get-balances", &[Endpoint::Balances, Endpoint::Ledger]),
    ];
    for (binary, group) in groups {
        eprintln!("credits-bench: warm requests, {binary}");
        let (results, rss) = bench.warm_group(binary, group, samples.warm).await?;
        if let Some(b) = binaries.iter_mut().find(|b| b.name == binary) {
            b.warm_rss_kib = rss;
        }
        endpoints.extend(results);
    }

    eprintln!("credits-bench: uncached currency list ({} fresh instances per mode)", samples.cache_cold);
    let uncached = bench.uncached_currencies(samples.cache_cold).await?;
    // Listed right after the cached variant.
    let at = endpoints.iter().position(|e| e.label == Endpoint::Currencies.label()).map_or(0, |i| i + 1);
    endpoints.insert(at, uncached);

    let blind_spot = bench.proxy_blind_spot(samples.warm).await?;

    eprintln!("credits-bench: TLS probe");
    let probes = match &certs {
        Ok(certs) => bench.tls_probe(certs, samples.probes).await,
        Err(e) => ProbeRuns { note: Some(e.clone()), ..ProbeRuns::default() },
    };

    let machine = Machine {
        binaries: match std::env::var_os("BENCH_BIN_DIR") {
            Some(dir) => format!("from `{}` (`BENCH_BIN_DIR`)", dir.to_string_lossy()),
            None => "`target/release`, built by the benchmark as above".to_owned(),
        },
        when: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        rustc: command_output("rustc", &["-V"]),
        load_before,
        load_after: loadavg(),
    };
    let results = Results {
        machine,
        samples,
        limiter,
        tls_note,
        binaries,
        endpoints,
        probe_free: probes.free,
        probe_capped: probes.capped,
        probe_given_roots: probes.given_roots,
        probe_note: probes.note,
        blind_spot,
        elapsed: started.elapsed(),
    };
    write_doc(&out, &results.render())?;
    eprintln!("credits-bench: wrote {} ({:.0} s)", out.display(), started.elapsed().as_secs_f64());
    Ok(())
}

impl Bench {
    fn cap(&self, memory_mb: u32) -> Option<&Cgroup> {
        self.caps.iter().find(|(mb, _)| *mb == memory_mb).map(|(_, c)| c)
    }

    fn call(&self, endpoint: Endpoint, i: usize) -> Call {
        // Alternating grants and deductions keep the balance where it was.
        let amount = if i.is_multiple_of(2) { 1 } else { -1 };
        match endpoint {
            Endpoint::Floor | Endpoint::Currencies => self.stack.get("/admin/credits/currencies"),
            Endpoint::Balances => {
                self.stack.get(&format!("/admin/credits/balances/{}", credits_testkit::stack::DEMO_USER))
            }
            Endpoint::Ledger => self.stack.get(&format!(
                "/admin/credits/ledger/{}?limit={LEDGER_PAGE}",
                credits_testkit::stack::DEMO_USER
            )),
            Endpoint::AdjustNoKey => self.stack.adjust(amount, None),
            Endpoint::AdjustWithKey => {
                self.stack.adjust(amount, Some(&format!("bench-{}", uuid::Uuid::new_v4().simple())))
            }
        }
    }

    fn check(
        endpoint: Endpoint,
        expected: u16,
        outcome: &Invocation,
        process: &FnProcess,
    ) -> Result<(), String> {
        match outcome {
            Invocation::Response(_) if endpoint == Endpoint::Floor || expected == ANY_STATUS => Ok(()),
            Invocation::Response(body) if body["statusCode"].as_u64() == Some(expected.into()) => Ok(()),
            Invocation::Response(body) => {
                let reply = Reply::from_proxy_response(body);
                Err(format!(
                    "{}: expected {expected}, got {} {}\n{}",
                    endpoint.label(),
                    reply.status,
                    reply.body,
                    process.log_tail()
                ))
            }
            other => Err(format!("{}: {other:?}\n{}", endpoint.label(), process.log_tail())),
        }
    }

    /// Spawns a fresh process with the invocation already queued and times
    /// its first `/next` and its response.
    async fn cold_sample(
        &self,
        binary: &str,
        cgroup: Option<&Cgroup>,
        env: &[(String, String)],
    ) -> Result<ColdSample, String> {
        Ok(self.cold_then_warm(binary, cgroup, env, 0, false).await?.0)
    }

    /// [`Bench::cold_sample`], then `warm` more requests to the same
    /// instance, each with a full CPU quota when `capped` (as for requests
    /// seconds apart); returns their latencies too.
    async fn cold_then_warm(
        &self,
        binary: &str,
        cgroup: Option<&Cgroup>,
        env: &[(String, String)],
        warm: usize,
        capped: bool,
    ) -> Result<(ColdSample, Vec<Duration>), String> {
        let endpoint = Endpoint::of_binary(binary);
        let emulator = RuntimeApiEmulator::start().await;
        let relay = Relay::start(emulator.address()).await.map_err(s)?;
        let event = self.call(endpoint, 0).http_api_event();
        let invocation = emulator.invoke(event);
        tokio::pin!(invocation);
        if let Some(outcome) = poll_once(invocation.as_mut()).await {
            return Err(format!("the invocation ended before the function started: {outcome:?}"));
        }
        self.recorder.clear();
        let process = self.spawn(endpoint.binary(), relay.address(), cgroup, env).await?;
        let outcome = invocation.await;
        let done = Instant::now();
        let calls = self.recorder.take();
        Self::check(endpoint, 200, &outcome, &process)?;
        let first = relay.first_request().ok_or("the function never polled /next")?;
        // CPU and memory once the process is idle again (parked on /next).
        wait_until(Duration::from_secs(5), || emulator.waiting_pollers() >= 1).await;
        let (upstream, _, _) = busy(&calls, process.spawned_at, done);
        let sample = ColdSample {
            init: first.saturating_duration_since(process.spawned_at),
            response: done - process.spawned_at,
            upstream,
            cpu: process.cpu_time(),
            minor_faults: process.minor_faults(),
            rss_kib: process.peak_rss_kib(),
        };
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("  {:<16} {sample:?}", endpoint.binary());
        }
        let mut latencies = Vec::with_capacity(warm);
        for i in 0..warm {
            if capped {
                refill_quota().await;
            }
            let start = Instant::now();
            let outcome = emulator.invoke(self.call(endpoint, i + 1).http_api_event()).await;
            latencies.push(start.elapsed());
            Self::check(endpoint, 200, &outcome, &process)?;
        }
        Ok((sample, latencies))
    }

    /// [`FnProcess::spawn`] on a blocking thread (it waits for the fork).
    async fn spawn(
        &self,
        binary: &str,
        runtime_api: &str,
        cgroup: Option<&Cgroup>,
        env: &[(String, String)],
    ) -> Result<FnProcess, String> {
        let path = self.bin_dir.join(binary);
        tokio::task::block_in_place(|| FnProcess::spawn(&path, env, runtime_api, cgroup))
            .map_err(|e| format!("spawn {binary}: {e}"))
    }

    /// A long-lived, unthrottled instance of `binary`, polling its own emulator.
    async fn instance(&self, binary: &str) -> Result<(RuntimeApiEmulator, FnProcess), String> {
        self.instance_with(binary, &self.env).await
    }

    async fn instance_with(
        &self,
        binary: &str,
        env: &[(String, String)],
    ) -> Result<(RuntimeApiEmulator, FnProcess), String> {
        let emulator = RuntimeApiEmulator::start().await;
        let process = self.spawn(binary, &emulator.address(), self.free.as_ref(), env).await?;
        if !wait_until(Duration::from_secs(20), || emulator.waiting_pollers() >= 1).await {
            return Err(format!("{binary} did not start polling:\n{}", process.log_tail()));
        }
        Ok((emulator, process))
    }

    async fn warm_series(
        &self,
        emulator: &RuntimeApiEmulator,
        process: &FnProcess,
        endpoint: Endpoint,
        n: usize,
    ) -> Result<Vec<WarmSample>, String> {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            samples.push(self.warm_request(emulator, process, endpoint, self.call(endpoint, i), 200).await?);
        }
        Ok(samples)
    }

    async fn warm_request(
        &self,
        emulator: &RuntimeApiEmulator,
        process: &FnProcess,
        endpoint: Endpoint,
        call: Call,
        expected: u16,
    ) -> Result<WarmSample, String> {
        let event = call.http_api_event();
        self.recorder.clear();
        let start = Instant::now();
        let outcome = emulator.invoke(event).await;
        let done = Instant::now();
        let calls = self.recorder.take();
        Self::check(endpoint, expected, &outcome, process)?;
        let (upstream, waves, calls) = busy(&calls, start, done);
        Ok(WarmSample { latency: done - start, upstream, waves, calls })
    }

    /// Warm samples for each endpoint `binary` serves, instant then at 20 ms
    /// per upstream call, on one instance; returns them and its peak RSS.
    async fn warm_group(
        &self,
        binary: &'static str,
        group: &[Endpoint],
        n: usize,
    ) -> Result<(Vec<EndpointResult>, Option<u64>), String> {
        let env = self.fresh_table_env(group).await?;
        let (emulator, process) = self.instance_with(binary, &env).await?;
        let mut results: Vec<EndpointResult> = group
            .iter()
            .map(|&e| EndpointResult {
                label: e.label(),
                binary,
                target_round_trips: e.target_round_trips(),
                instant: Vec::new(),
                slow: Vec::new(),
                cpu_per_request: None,
                note: None,
            })
            .collect();
        for &endpoint in group {
            self.warm_series(&emulator, &process, endpoint, WARM_UP).await?;
        }
        for (result, &endpoint) in results.iter_mut().zip(group) {
            let before = process.cpu_time();
            result.instant = self.warm_series(&emulator, &process, endpoint, n).await?;
            // Let the process park on /next again so its counters are current.
            wait_until(Duration::from_secs(5), || emulator.waiting_pollers() >= 1).await;
            if let (Some(before), Some(after)) = (before, process.cpu_time()) {
                result.cpu_per_request = Some(after.saturating_sub(before) / n as u32);
            }
        }
        if binary != FLOOR {
            self.recorder.set_delay(UPSTREAM_DELAY);
            for (result, &endpoint) in results.iter_mut().zip(group) {
                self.warm_series(&emulator, &process, endpoint, 2).await?;
                result.slow = self.warm_series(&emulator, &process, endpoint, n).await?;
            }
            self.recorder.set_delay(Duration::ZERO);
        }
        Ok((results, process.peak_rss_kib()))
    }

    /// The environment with a new, empty table, so that a warm group does
    /// not measure what earlier series left in it: moto copies the whole
    /// table (`copy.deepcopy`) for every item of every `TransactWriteItems`,
    /// so on the shared table each warm adjustment waited on a copy of
    /// thousands of items. For the ledger, the customer's page is filled
    /// first through a short-lived `adjust-credits`.
    async fn fresh_table_env(&self, group: &[Endpoint]) -> Result<Vec<(String, String)>, String> {
        let table = credits_testkit::aws::unique_name("credits-bench");
        credits_testkit::aws::create_table(&self.stack.moto_endpoint, &table).await;
        let mut env = self.env.clone();
        match env.iter_mut().find(|(name, _)| name == "TABLE_NAME") {
            Some((_, value)) => *value = table,
            None => return Err("the stack's environment has no TABLE_NAME".into()),
        }
        if group.contains(&Endpoint::Ledger) {
            let (emulator, process) = self.instance_with(Endpoint::AdjustNoKey.binary(), &env).await?;
            self.warm_series(&emulator, &process, Endpoint::AdjustNoKey, LEDGER_PAGE + WARM_UP).await?;
        }
        Ok(env)
    }

    /// The currency list on a warm instance whose cached list has expired.
    ///
    /// The list is cached for 60 s per instance, so each sample uses a fresh
    /// instance on which every RevenueCat list fetch fails (the sandbox
    /// answers 500) until the measured request: the one the function makes
    /// during init, if it warms up, and those of [`WARM_UP`] requests that
    /// exercise the whole path (secret, admission, RevenueCat) without
    /// filling the cache. The measured request then finds the secret cached,
    /// the connections open and the code paths warm, but the list not cached.
    async fn uncached_currencies(&self, n: usize) -> Result<EndpointResult, String> {
        let endpoint = Endpoint::Currencies;
        let prefetches = self.prefetches_currencies().await?;
        let mut result = EndpointResult {
            label: "currencies, list not cached",
            binary: endpoint.binary(),
            target_round_trips: Some(2),
            instant: Vec::new(),
            slow: Vec::new(),
            cpu_per_request: None,
            note: Some(format!(
                "one fresh instance per sample (the list is cached for 60 s per instance), on which the \
                 RevenueCat list fetch fails (the sandbox answers 500) {}for {WARM_UP} requests that exercise \
                 the whole path without filling the cache; the measured request then finds the secret cached, \
                 the connections open and the code warm, but the list not cached, as on a long-lived instance \
                 whose list expired. CPU per request is not measured here.",
                if prefetches { "during init and " } else { "" }
            )),
        };
        let sandbox = &self.stack.revenuecat;
        let failing = WARM_UP + usize::from(prefetches);
        for delay in [Duration::ZERO, UPSTREAM_DELAY] {
            self.recorder.set_delay(delay);
            for _ in 0..n {
                let listed = sandbox.request_count(Route::ListCurrencies);
                let fault = Fault::Status {
                    status: 500,
                    error_type: "server_error".into(),
                    retryable: false,
                    backoff_ms: None,
                };
                sandbox.inject(Route::ListCurrencies, fault, failing);
                let (emulator, process) = self.instance(endpoint.binary()).await?;
                if prefetches {
                    let fetched = || sandbox.request_count(Route::ListCurrencies) > listed;
                    if !wait_until(Duration::from_secs(5), fetched).await {
                        return Err("list-currencies no longer fetches the list during init".into());
                    }
                    // Let the failed fetch's answer arrive and the warm-up finish.
                    tokio::time::sleep(delay * 2 + Duration::from_millis(20)).await;
                }
                for i in 0..WARM_UP {
                    self.warm_request(&emulator, &process, endpoint, self.call(endpoint, i), ANY_STATUS)
                        .await?;
                }
                if sandbox.request_count(Route::ListCurrencies) != listed + failing {
                    return Err("the currency list was fetched more or less often than planned".into());
                }
                let sample =
                    self.warm_request(&emulator, &process, endpoint, self.call(endpoint, 0), 200).await?;
                if delay.is_zero() {
                    result.instant.push(sample);
                } else {
                    result.slow.push(sample);
                }
            }
        }
        self.recorder.set_delay(Duration::ZERO);
        Ok(result)
    }

    /// Whether a fresh `list-currencies` instance fetches the currency list by
    /// itself during init (before any request).
    async fn prefetches_currencies(&self) -> Result<bool, String> {
        let sandbox = &self.stack.revenuecat;
        let listed = sandbox.request_count(Route::ListCurrencies);
        let _instance = self.instance(Endpoint::Currencies.binary()).await?;
        Ok(wait_until(Duration::from_secs(1), || sandbox.request_count(Route::ListCurrencies) > listed).await)
    }

    /// What a client sees of one call through a proxy beyond the interval the
    /// proxy records (loopback transfer both ways, HTTP parsing and writing on
    /// both sides, the client's own work): an upper bound for the part of a
    /// function's measured overhead that is really the call's transport.
    async fn proxy_blind_spot(&self, n: usize) -> Result<Option<Duration>, String> {
        let Some((_, gateway)) = self.env.iter().find(|(k, _)| k == "GATEWAY_URL") else { return Ok(None) };
        let client = reqwest::Client::new();
        let url = format!("{gateway}/benchmark-calibration");
        let mut gaps = Vec::with_capacity(n);
        for i in 0..n + WARM_UP {
            self.recorder.clear();
            let start = Instant::now();
            client.get(&url).send().await.map_err(s)?.bytes().await.map_err(s)?;
            let seen = start.elapsed();
            let recorded: Duration = self.recorder.take().iter().map(|c| c.end - c.start).sum();
            if i >= WARM_UP {
                gaps.push(seen.saturating_sub(recorded));
            }
        }
        Ok(report::median(gaps))
    }

    /// Probe runs: (unthrottled, at 1/14 vCPU, unthrottled with the SDK given roots only).
    async fn tls_probe(&self, certs: &Certs, n: usize) -> ProbeRuns {
        let fixture = match TlsFixture::start(certs).await {
            Ok(fixture) => fixture,
            Err(e) => return ProbeRuns { note: Some(e), ..ProbeRuns::default() },
        };
        let exe = self.bin_dir.join("credits-bench");
        let (mut free, mut capped, mut given) = (Vec::new(), Vec::new(), Vec::new());
        let mut note = None;
        for _ in 0..n {
            let run = async {
                free.push(fixture.probe(&exe, &self.env, self.free.as_ref(), false).await?);
                given.push(fixture.probe(&exe, &self.env, self.free.as_ref(), true).await?);
                if let Some(cgroup) = self.cap(128) {
                    refill_quota().await;
                    capped.push(fixture.probe(&exe, &self.env, Some(cgroup), false).await?);
                }
                Ok::<_, String>(())
            };
            if let Err(e) = run.await {
                note = Some(e);
                break;
            }
        }
        let median = |runs: &[ProbeResult]| (!runs.is_empty()).then(|| ProbeResult::median(runs));
        ProbeRuns { free: median(&free), capped: median(&capped), given_roots: median(&given), note }
    }
}

#[derive(Default)]
struct ProbeRuns {
    free: Option<ProbeResult>,
    capped: Option<ProbeResult>,
    given_roots: Option<ProbeResult>,
    note: Option<String>,
}

/// Polls `future` once (queuing the invocation); `Some` if it already finished.
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match future.as_mut().poll(cx) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    })
    .await
}

/// Writes the generated part, keeping the hand-written analysis below the marker.
fn write_doc(path: &Path, generated: &str) -> Result<(), String> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let kept = match existing.find(report::ANALYSIS_MARKER) {
        Some(at) => existing[at + report::ANALYSIS_MARKER.len()..].to_owned(),
        None => "\n## Analysis\n\n(Not written yet.)\n".to_owned(),
    };
    std::fs::write(path, format!("{generated}\n{}", kept.trim_start_matches('\n')))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// Whether the ELF file has no `.symtab` section (what `strip` removes).
fn is_stripped(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    !bytes.windows(9).any(|w| w == b"\0.symtab\0")
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into())
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn s(e: impl std::fmt::Display) -> String {
    e.to_string()
}
