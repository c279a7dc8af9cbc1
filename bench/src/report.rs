//! The figures of one run, and `docs/performance.md` rendered from them.
//!
//! Everything above [`ANALYSIS_MARKER`] is regenerated on every run; the
//! marker and everything below it (the hand-written analysis) is kept.

use std::fmt::Write as _;
use std::time::Duration;

use crate::tls::ProbeResult;

pub const ANALYSIS_MARKER: &str =
    "<!-- credits-bench: everything above this line is generated; everything below is kept as written. -->";

/// What a run measured.
pub struct Results {
    pub machine: Machine,
    pub samples: Samples,
    /// How the 128 MB CPU cap was applied, or why it could not be.
    pub limiter: String,
    /// Why the TLS cold starts were not measured, if they were not.
    pub tls_note: Option<String>,
    /// Floor first, then the three functions.
    pub binaries: Vec<BinaryResult>,
    pub endpoints: Vec<EndpointResult>,
    pub probe_free: Option<ProbeResult>,
    pub probe_capped: Option<ProbeResult>,
    /// Unthrottled, with the SDK's HTTPS client given roots only.
    pub probe_given_roots: Option<ProbeResult>,
    pub probe_note: Option<String>,
    /// Per call: client-observed latency minus the proxy's recorded interval.
    pub blind_spot: Option<Duration>,
    pub elapsed: Duration,
}

pub struct Machine {
    /// Where the measured binaries came from.
    pub binaries: String,
    pub when: String,
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub rustc: String,
    pub load_before: String,
    pub load_after: String,
}

#[derive(Clone, Copy, Default)]
pub struct Samples {
    pub warm: usize,
    pub cold: usize,
    pub cold_slow: usize,
    pub cache_cold: usize,
    pub probes: usize,
    /// Warm requests after each TLS cold start (for the cost table).
    pub tls_warm: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct ColdSample {
    /// Spawn → first `GET /next`.
    pub init: Duration,
    /// Spawn → the first invocation's response.
    pub response: Duration,
    /// Of `response`, time with at least one upstream call in flight.
    pub upstream: Duration,
    /// CPU time for init and the first request (all threads).
    pub cpu: Option<Duration>,
    /// Page faults for init and the first request (the kernel's share of `cpu`).
    pub minor_faults: Option<u64>,
    pub rss_kib: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct WarmSample {
    pub latency: Duration,
    pub upstream: Duration,
    pub waves: usize,
    /// Upstream calls: AWS (DynamoDB + Secrets Manager), RevenueCat, gateway.
    pub calls: [u8; 3],
}

impl WarmSample {
    pub fn overhead(&self) -> Duration {
        self.latency.saturating_sub(self.upstream)
    }
}

pub struct BinaryResult {
    pub name: &'static str,
    pub size_bytes: u64,
    pub stripped: bool,
    pub cold_free: Vec<ColdSample>,
    pub cold_capped: Vec<ColdSample>,
    /// Cold starts with 20 ms added to every upstream call.
    pub cold_slow: Vec<ColdSample>,
    /// Cold starts over TLS by memory size (`None`: unthrottled). For the
    /// floor, which makes no upstream calls, plain runs at the same caps.
    pub cold_tls: Vec<(Option<u32>, Vec<ColdSample>)>,
    /// Warm request latencies after the TLS cold starts, by memory size.
    pub warm_tls: Vec<(Option<u32>, Vec<Duration>)>,
    /// `VmHWM` of the instance that served every warm request.
    pub warm_rss_kib: Option<u64>,
}

pub struct EndpointResult {
    pub label: &'static str,
    pub binary: &'static str,
    /// The issue's target for sequential round trips (`None` for the floor).
    pub target_round_trips: Option<u32>,
    pub instant: Vec<WarmSample>,
    pub slow: Vec<WarmSample>,
    pub cpu_per_request: Option<Duration>,
    /// How the samples were taken, if not on one long-lived instance.
    pub note: Option<String>,
}

// ---------------------------------------------------------------- statistics

/// Nearest-rank percentile (`p` in 0..=1).
pub fn percentile(values: impl IntoIterator<Item = Duration>, p: f64) -> Option<Duration> {
    let mut values: Vec<Duration> = values.into_iter().collect();
    if values.is_empty() {
        return None;
    }
    values.sort();
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

pub fn median(values: impl IntoIterator<Item = Duration>) -> Option<Duration> {
    percentile(values, 0.5)
}

/// The lower middle value, like [`median`], for counts.
fn median_count<T: Ord + Copy>(values: impl IntoIterator<Item = T>) -> Option<T> {
    let mut values: Vec<T> = values.into_iter().collect();
    values.sort();
    values.get((values.len().max(1) - 1) / 2).copied()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_ms(d: Option<Duration>) -> String {
    match d {
        Some(d) if ms(d) >= 100.0 => format!("{:.0} ms", ms(d)),
        Some(d) if ms(d) >= 10.0 => format!("{:.1} ms", ms(d)),
        Some(d) => format!("{:.2} ms", ms(d)),
        None => "–".into(),
    }
}

fn fmt_ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match ratio(a, b) {
        Some(r) => format!("{r:.1}×"),
        None => "–".into(),
    }
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (!b.is_zero()).then(|| a.as_secs_f64() / b.as_secs_f64())
}

fn fmt_mib(kib: Option<u64>) -> String {
    kib.map_or("–".into(), |k| format!("{:.1} MB", k as f64 / 1024.0))
}

fn fmt_size(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

const MB: u64 = 1_000_000;

/// Stats of one binary's cold samples.
struct Cold {
    init: Option<Duration>,
    response: Option<Duration>,
    own: Option<Duration>,
    cpu: Option<Duration>,
    minor_faults: Option<u64>,
    rss: Option<u64>,
}

impl Cold {
    fn of(samples: &[ColdSample]) -> Cold {
        Cold {
            init: median(samples.iter().map(|s| s.init)),
            response: median(samples.iter().map(|s| s.response)),
            own: median(samples.iter().map(|s| s.response.saturating_sub(s.upstream))),
            cpu: median(samples.iter().filter_map(|s| s.cpu)),
            minor_faults: median_count(samples.iter().filter_map(|s| s.minor_faults)),
            rss: samples.iter().filter_map(|s| s.rss_kib).max(),
        }
    }
}

/// `--cold-only`: each binary's median CPU for init + its first request,
/// and its ratio to the floor's, unthrottled and at 1/14 vCPU, as a
/// Markdown table for a note or `docs/performance.md`.
pub fn cold_cpu_summary(binaries: &[BinaryResult], context: &str) -> String {
    let Some(floor) = binaries.first() else { return String::new() };
    let (floor_free, floor_capped) = (Cold::of(&floor.cold_free).cpu, Cold::of(&floor.cold_capped).cpu);
    let mut out = format!(
        "Cold-start CPU (init + first request), median; {context}\n\n\
         | binary | unthrottled | ÷ floor | at 1/14 vCPU | ÷ floor | page faults | peak RSS |\n|---|---|---|---|---|---|---|\n"
    );
    // Two decimals: the differences between builds are tenths.
    let times = |a, b| ratio(a, b).map_or("–".into(), |r| format!("{r:.2}×"));
    for b in binaries {
        let (free, capped) = (Cold::of(&b.cold_free), Cold::of(&b.cold_capped));
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            b.name,
            fmt_ms(free.cpu),
            times(free.cpu, floor_free),
            fmt_ms(capped.cpu),
            times(capped.cpu, floor_capped),
            free.minor_faults.map_or("–".into(), |n| n.to_string()),
            free.rss.map_or("–".into(), |kib| format!("{:.1} MB", kib as f64 / 1024.0)),
        );
    }
    out
}

/// Stats of one endpoint's warm samples.
struct Warm {
    p50: Option<Duration>,
    p95: Option<Duration>,
    upstream: Option<Duration>,
    overhead: Option<Duration>,
    overhead_p95: Option<Duration>,
    waves: Option<usize>,
    /// The most frequent per-service call counts.
    calls: Option<[u8; 3]>,
}

impl Warm {
    fn of(samples: &[WarmSample]) -> Warm {
        Warm {
            p50: median(samples.iter().map(|s| s.latency)),
            p95: percentile(samples.iter().map(|s| s.latency), 0.95),
            upstream: median(samples.iter().map(|s| s.upstream)),
            overhead: median(samples.iter().map(WarmSample::overhead)),
            overhead_p95: percentile(samples.iter().map(WarmSample::overhead), 0.95),
            waves: median_count(samples.iter().map(|s| s.waves)),
            calls: most_frequent(samples.iter().map(|s| s.calls)),
        }
    }
}

fn most_frequent(values: impl IntoIterator<Item = [u8; 3]>) -> Option<[u8; 3]> {
    let mut counts: Vec<([u8; 3], usize)> = Vec::new();
    for value in values {
        match counts.iter_mut().find(|(v, _)| *v == value) {
            Some((_, n)) => *n += 1,
            None => counts.push((value, 1)),
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(v, _)| v)
}

const DELAY_MS: f64 = 20.0;

/// Sequential round trips in a binary's cold request: what 20 ms per call
/// adds to its median, ÷ 20 ms, e.g. "3 (3.1)".
fn cold_round_trips(b: &BinaryResult) -> String {
    match (Cold::of(&b.cold_slow).response, Cold::of(&b.cold_free).response) {
        (Some(slow), Some(free)) => {
            let n = ms(slow.saturating_sub(free)) / DELAY_MS;
            format!("{:.0} ({n:.1})", n.round())
        }
        _ => "–".into(),
    }
}

/// Lambda arm64 (us-east-1): dollars per GB-second of billed duration.
pub const PRICE_GB_S: f64 = 0.0000133334;
/// Lambda: dollars per million requests.
pub const PRICE_PER_M_REQUESTS: f64 = 0.20;

/// Billed milliseconds: rounded up to the next millisecond.
fn billed_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).ceil().max(1.0)
}

/// Dollars per million requests at `memory_mb`, when a share `cold_share` of
/// them is a cold start billed `cold_ms` and the rest warm ones billed `warm_ms`.
pub fn cost_per_million(memory_mb: u32, warm_ms: f64, cold_ms: f64, cold_share: f64) -> f64 {
    let gb = f64::from(memory_mb) / 1024.0;
    let seconds = ((1.0 - cold_share) * warm_ms + cold_share * cold_ms) / 1e3;
    PRICE_PER_M_REQUESTS + 1e6 * gb * seconds * PRICE_GB_S
}

// ---------------------------------------------------------------- rendering

impl Results {
    /// The generated part of docs/performance.md, up to and including the marker.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_header(&mut out);
        self.render_targets(&mut out);
        self.render_startup(&mut out);
        self.render_tls_cold(&mut out);
        if self.tls_note.is_none() {
            self.render_cost(&mut out);
        }
        self.render_warm(&mut out);
        self.render_tls(&mut out);
        let _ = writeln!(out, "{ANALYSIS_MARKER}");
        out
    }

    fn floor(&self) -> &BinaryResult {
        &self.binaries[0]
    }

    fn functions(&self) -> &[BinaryResult] {
        &self.binaries[1..]
    }

    fn render_header(&self, out: &mut String) {
        let m = &self.machine;
        let s = &self.samples;
        let _ = write!(
            out,
            "# Performance\n\n\
             Figures from one run of the benchmark (`bench/`, package `credits-bench`):\n\n\
             ```sh\ncargo run --release -p credits-bench\n```\n\n\
             It builds the release binaries (the workspace's `[profile.release]`) of the three functions \
             and of `hello-floor` — a minimal `lambda_runtime` function that echoes \
             the event, with the same tokio setup — and runs each as a separate process under testkit's \
             Lambda Runtime API emulator, against moto (DynamoDB, Secrets Manager), the RevenueCat sandbox and \
             the gateway stand-in. Every upstream call goes through a recording proxy (`bench/src/latency_proxy.rs`), \
             which can add a delay before forwarding; the functions reach it through `AWS_ENDPOINT_URL`, \
             `REVENUECAT_API_URL` and `GATEWAY_URL`. `RATE_LIMIT_PER_MINUTE` is 1000000 so nothing is throttled. \
             The functions are built in their own cargo invocation, so their features are exactly the deployed \
             ones. Upstreams are plain HTTP on loopback, so **no TLS handshake happens in the main runs**; one \
             set of cold starts reaches the same upstreams over HTTPS \
             ([Cold start over TLS](#cold-start-over-tls-by-memory-size)), and a probe measures the pieces \
             ([What TLS would add](#what-tls-would-add)). `--quick` runs fewer samples, `--no-build` skips the build, `--out FILE` writes elsewhere, and \
             `BENCH_BIN_DIR=DIR` measures the binaries in another directory (e.g. a build with other profile \
             settings). The run takes about two minutes after the build.\n\n\
             - Run: {when}, {elapsed:.0} s; {cpu}, {cores} cores, Linux {kernel}, {rustc}, x86_64 \
             (Lambda runs these as arm64).\n\
             - Binaries: {binaries}.\n\
             - Load average before / after: {lb} / {la} (other builds running on the machine show up here and \
             make the figures noisier).\n\
             - Samples: {cold} cold starts per binary and mode (medians reported), {warm} warm requests per \
             endpoint and upstream latency, {cache} fresh instances for the uncached currency list, {slow} cold \
             starts per function at 20 ms per upstream call, {probes} TLS probe runs per mode.\n\
             - 128 MB CPU cap: {limiter}.\n\n\
             Definitions: **init** = spawn → the process's first `GET /next`; **cold request** = spawn → the first \
             invocation's response (the invocation is queued before the spawn, as for an on-demand cold start); \
             **upstream** = time during which at least one upstream call was in flight (union of the proxy's \
             intervals); **overhead** = latency − upstream; **round trips** = groups of upstream calls that \
             overlap in time, counted per request from the proxy's log with 20 ms added to every call \
             (concurrent calls count once). Latency is measured at the emulator: from queuing the event to \
             receiving the function's response, so it includes the Runtime API exchange (the floor's warm \
             latency shows that part).\n\n",
            when = m.when,
            binaries = m.binaries,
            elapsed = self.elapsed.as_secs_f64(),
            cpu = m.cpu,
            cores = m.cores,
            kernel = m.kernel,
            rustc = m.rustc,
            lb = m.load_before,
            la = m.load_after,
            cold = s.cold,
            warm = s.warm,
            cache = s.cache_cold,
            slow = s.cold_slow,
            probes = s.probes,
            limiter = self.limiter,
        );
    }

    fn render_targets(&self, out: &mut String) {
        let floor = Cold::of(&self.floor().cold_free);
        let floor_capped = Cold::of(&self.floor().cold_capped);
        let _ = writeln!(out, "## Targets\n");
        let _ = writeln!(out, "| Target | Measured | Met? |\n|---|---|---|");
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "✅ met",
            Some(false) => "❌ missed",
            None => "– not measured",
        };
        let mut missed = Vec::new();

        // Init and cold request, ≤ 3× the floor.
        for (what, pick) in [
            ("init", (|c: &Cold| c.init) as fn(&Cold) -> Option<Duration>),
            ("cold request", |c: &Cold| c.response),
        ] {
            let mut parts = Vec::new();
            let mut all = Some(true);
            for b in self.functions() {
                let c = Cold::of(&b.cold_free);
                let r = ratio(pick(&c), pick(&floor));
                all = match (all, r) {
                    (Some(a), Some(r)) => Some(a && r <= 3.0),
                    _ => None,
                };
                parts.push(format!(
                    "{} {} ({})",
                    b.name,
                    fmt_ms(pick(&c)),
                    fmt_ratio(pick(&c), pick(&floor))
                ));
            }
            let mut capped = Vec::new();
            for b in self.functions() {
                let c = Cold::of(&b.cold_capped);
                capped.push(format!("{} {}", b.name, fmt_ratio(pick(&c), pick(&floor_capped))));
            }
            let own = if what == "cold request" {
                let ratios: Vec<String> = self
                    .functions()
                    .iter()
                    .map(|b| format!("{} {}", b.name, fmt_ratio(Cold::of(&b.cold_free).own, floor.own)))
                    .collect();
                format!("; without upstream time: {}", ratios.join(", "))
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| {what} ≤ 3× the floor (floor: {}) | {}{own}; at 1/14 vCPU: {} | {} |",
                fmt_ms(pick(&floor)),
                parts.join(", "),
                if self.floor().cold_capped.is_empty() { "not measured".into() } else { capped.join(", ") },
                verdict(all)
            );
            if all == Some(false) {
                missed.push(what);
            }
        }

        // Warm overhead.
        let mut parts = Vec::new();
        let mut all = Some(true);
        for e in self.endpoints.iter().filter(|e| e.target_round_trips.is_some() && !e.instant.is_empty()) {
            let w = Warm::of(&e.instant);
            all = match (all, w.overhead) {
                (Some(a), Some(o)) => Some(a && o <= Duration::from_millis(1)),
                _ => None,
            };
            parts.push(format!("{} {}", e.label, fmt_ms(w.overhead)));
        }
        let _ = writeln!(
            out,
            "| warm overhead ≤ 1 ms p50 above upstream time (instant upstreams) | {} | {} |",
            parts.join(", "),
            verdict(all)
        );
        if all == Some(false) {
            missed.push("warm overhead");
        }

        // Round trips.
        for e in self.endpoints.iter() {
            let Some(target) = e.target_round_trips else { continue };
            let w = Warm::of(&e.slow);
            let ok = w.waves.map(|n| n <= target as usize);
            let _ = writeln!(
                out,
                "| {} ≤ {target} sequential round trip{} | {} (p50 {} = {:.2} × 20 ms) | {} |",
                e.label,
                if target == 1 { "" } else { "s" },
                w.waves.map_or("–".into(), |n| n.to_string()),
                fmt_ms(w.p50),
                w.p50.map_or(f64::NAN, |d| ms(d) / DELAY_MS),
                verdict(ok)
            );
            if ok == Some(false) {
                missed.push(e.label);
            }
        }

        // Memory and size.
        let rss: Vec<(String, Option<u64>)> = self
            .functions()
            .iter()
            .map(|b| (b.name.to_owned(), b.warm_rss_kib.max(Cold::of(&b.cold_free).rss)))
            .collect();
        let ok = rss.iter().try_fold(true, |acc, (_, r)| r.map(|r| acc && r * 1024 <= 32 * 1024 * 1024));
        let _ = writeln!(
            out,
            "| peak RSS ≤ 32 MB | {} | {} |",
            rss.iter().map(|(n, r)| format!("{n} {}", fmt_mib(*r))).collect::<Vec<_>>().join(", "),
            verdict(ok)
        );
        if ok == Some(false) {
            missed.push("peak RSS");
        }
        let ok = self.functions().iter().all(|b| b.size_bytes <= 8 * MB);
        let _ = writeln!(
            out,
            "| each bootstrap ≤ 8 MB stripped | {} | {} |",
            self.functions()
                .iter()
                .map(|b| format!("{} {}", b.name, fmt_size(b.size_bytes)))
                .collect::<Vec<_>>()
                .join(", "),
            verdict(Some(ok))
        );
        if !ok {
            missed.push("binary size");
        }
        let _ = writeln!(out);
        if missed.is_empty() {
            let _ = writeln!(out, "Every target is met in this run.\n");
        } else {
            let _ = writeln!(
                out,
                "Missed in this run: {}. Why, and what would close each, is in [Analysis](#analysis) below.\n",
                missed.join(", ")
            );
        }
    }

    fn render_startup(&self, out: &mut String) {
        let floor = Cold::of(&self.floor().cold_free);
        let floor_capped = Cold::of(&self.floor().cold_capped);
        let _ = writeln!(out, "## Start-up, size and memory\n");
        let _ = writeln!(out, "Unthrottled (medians; ratio to the floor in brackets):\n");
        let _ = writeln!(
            out,
            "| Binary | Stripped size | Init | Cold request | Cold request minus upstream | Upstream round trips in the cold request | CPU for init + first request | Peak RSS |\n\
             |---|---|---|---|---|---|---|---|"
        );
        for b in &self.binaries {
            let c = Cold::of(&b.cold_free);
            let _ = writeln!(
                out,
                "| `{}` | {}{} ({:.1}×) | {} ({}) | {} ({}) | {} ({}) | {} | {} | {} |",
                b.name,
                fmt_size(b.size_bytes),
                if b.stripped { "" } else { " (not stripped!)" },
                b.size_bytes as f64 / self.floor().size_bytes.max(1) as f64,
                fmt_ms(c.init),
                fmt_ratio(c.init, floor.init),
                fmt_ms(c.response),
                fmt_ratio(c.response, floor.response),
                fmt_ms(c.own),
                fmt_ratio(c.own, floor.own),
                cold_round_trips(b),
                fmt_ms(c.cpu),
                fmt_mib(b.warm_rss_kib.max(c.rss)),
            );
        }
        let _ = writeln!(
            out,
            "\n\"Upstream round trips in the cold request\" comes from {} extra cold starts per function with \
             20 ms added to every upstream call (median cold request there: {}): the time they add over the \
             unthrottled cold request, ÷ 20 ms. (Counting overlapping calls, as for warm requests, does not \
             work here: the init warm-up's calls start while the request's own are in flight and chain \
             sequential calls together.) Peak RSS is `VmHWM` of the instance that served all the warm \
             requests (or of a cold instance, whichever is higher).\n",
            self.samples.cold_slow,
            self.functions()
                .iter()
                .map(|b| format!("{} {}", b.name, fmt_ms(Cold::of(&b.cold_slow).response)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if self.floor().cold_capped.is_empty() {
            let _ = writeln!(out, "The CPU-capped cold starts could not be measured: {}.\n", self.limiter);
            return;
        }
        let _ = writeln!(out, "At about 1/14 of a vCPU (a 128 MB Lambda), same medians:\n");
        let _ = writeln!(
            out,
            "| Binary | Init | Cold request | Cold request minus upstream | CPU for init + first request |\n\
             |---|---|---|---|---|"
        );
        for b in &self.binaries {
            let c = Cold::of(&b.cold_capped);
            let _ = writeln!(
                out,
                "| `{}` | {} ({}) | {} ({}) | {} ({}) | {} |",
                b.name,
                fmt_ms(c.init),
                fmt_ratio(c.init, floor_capped.init),
                fmt_ms(c.response),
                fmt_ratio(c.response, floor_capped.response),
                fmt_ms(c.own),
                fmt_ratio(c.own, floor_capped.own),
                fmt_ms(c.cpu),
            );
        }
        let _ = writeln!(
            out,
            "\nThe cap is a CFS quota of 7 ms per 100 ms period: a process that needs more than 7 ms of CPU \
             waits for the next period, so capped figures move in steps of about 100 ms.\n"
        );
    }

    fn render_tls_cold(&self, out: &mut String) {
        let _ = writeln!(out, "## Cold start over TLS, by memory size\n");
        if let Some(note) = &self.tls_note {
            let _ = writeln!(out, "Not measured: {note}.\n");
            return;
        }
        let Some(first) = self.functions().first() else { return };
        let memories: Vec<Option<u32>> = first.cold_tls.iter().map(|(m, _)| *m).collect();
        let _ = writeln!(
            out,
            "The same cold starts with every upstream reached over HTTPS: the proxies also terminate TLS \
             (RSA 2048 chain from a local CA, rustls + aws-lc-rs on both sides) and the functions trust that \
             CA through `CREDITS_EXTRA_ROOTS_FILE`, on top of the roots compiled into them (which are all they \
             trust in AWS). This is what a first request in AWS pays in CPU; the \
             network round trips of TCP and TLS set-up (about 1 ms each in-region) are not included. Cells \
             are medians of init / cold request; the memory sizes are CPU caps at MB ÷ 1769 of a vCPU \
             (128 MB: the issue's 7 ms per 100 ms). The floor makes no upstream calls: its row is plain \
             runs at the same caps.\n"
        );
        let header: Vec<String> =
            memories.iter().map(|m| m.map_or("Unthrottled".to_owned(), |mb| format!("{mb} MB"))).collect();
        let _ = writeln!(
            out,
            "| Binary | {} | CPU for init + first request (unthrottled) |\n|---|{}---|",
            header.join(" | "),
            "---|".repeat(header.len())
        );
        for b in &self.binaries {
            let cells: Vec<String> = memories
                .iter()
                .map(|m| {
                    let samples = b.cold_tls.iter().find(|(mm, _)| mm == m).map_or(&[][..], |(_, s)| s);
                    let c = Cold::of(samples);
                    format!("{} / {}", fmt_ms(c.init), fmt_ms(c.response))
                })
                .collect();
            let unthrottled = b.cold_tls.iter().find(|(m, _)| m.is_none()).map_or(&[][..], |(_, s)| s);
            let _ = writeln!(
                out,
                "| `{}` | {} | {} |",
                b.name,
                cells.join(" | "),
                fmt_ms(Cold::of(unthrottled).cpu)
            );
        }
        let _ = writeln!(out);
    }

    fn render_cost(&self, out: &mut String) {
        let Some(first) = self.functions().first() else { return };
        let memories: Vec<u32> = first.cold_tls.iter().filter_map(|(m, _)| *m).collect();
        if memories.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "### Cost per million requests, by memory size\n\n\
             Lambda arm64 prices (us-east-1): ${PRICE_GB_S} per GB-second and ${PRICE_PER_M_REQUESTS:.2} per \
             million requests; billed duration rounded up to the next millisecond. A warm request is billed for \
             its duration (median of the {tls_warm} requests after each cold start above, on the same \
             instance over TLS with its connections open, each with a full CPU quota as for requests seconds \
             apart); a cold start for init plus its first request (custom runtimes such as `provided.al2023` are \
             billed for init), i.e. the cold request above. Durations are this machine's, with upstreams on \
             loopback (≈ 1–3 ms per call, moto being the slowest): in AWS every upstream call adds its network \
             and service time to every row alike, which adds cost in proportion to memory (each 10 ms of \
             waiting costs ${wait:.3} per million requests per GB). \"10 % cold\" assumes one request in ten \
             starts an instance.\n",
            PRICE_GB_S = PRICE_GB_S,
            PRICE_PER_M_REQUESTS = PRICE_PER_M_REQUESTS,
            tls_warm = self.samples.tls_warm,
            wait = PRICE_GB_S * 0.010 * 1e6,
        );
        let _ = writeln!(
            out,
            "| Function | Memory (vCPU share) | Cold request | Warm request p50 | $ per 1M, all warm | $ per 1M, 10 % cold | $ per 1M, all cold |\n\
             |---|---|---|---|---|---|---|"
        );
        for b in self.functions() {
            for &mb in &memories {
                let cold = b.cold_tls.iter().find(|(m, _)| *m == Some(mb)).map_or(&[][..], |(_, s)| s);
                let warm = b.warm_tls.iter().find(|(m, _)| *m == Some(mb)).map_or(&[][..], |(_, s)| s);
                let cold = Cold::of(cold).response;
                let warm = median(warm.iter().copied());
                let cost = |cold_share: f64| -> String {
                    match (warm, cold) {
                        (Some(w), Some(c)) => {
                            format!("{:.3}", cost_per_million(mb, billed_ms(w), billed_ms(c), cold_share))
                        }
                        _ => "–".into(),
                    }
                };
                let _ = writeln!(
                    out,
                    "| `{}` | {mb} MB ({:.3}) | {} | {} | {} | {} | {} |",
                    b.name,
                    f64::from(mb) / 1769.0,
                    fmt_ms(cold),
                    fmt_ms(warm),
                    cost(0.0),
                    cost(0.1),
                    cost(1.0),
                );
            }
        }
        let _ = writeln!(out);
    }

    fn render_warm(&self, out: &mut String) {
        let _ = writeln!(out, "## Warm requests\n");
        let _ = writeln!(
            out,
            "| Endpoint | Upstream calls (AWS / RevenueCat / gateway) | p50 | p95 | Upstream p50 | Overhead p50 (p95) | CPU per request | p50 at 20 ms/call | p95 at 20 ms/call | p50 ÷ 20 ms | Round trips | Target |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for e in &self.endpoints {
            let i = Warm::of(&e.instant);
            let s = Warm::of(&e.slow);
            let _ = writeln!(
                out,
                "| {} (`{}`) | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
                e.label,
                e.binary,
                i.calls.map_or("–".into(), |[a, r, g]| format!("{a} / {r} / {g}")),
                fmt_ms(i.p50),
                fmt_ms(i.p95),
                fmt_ms(i.upstream),
                fmt_ms(i.overhead),
                fmt_ms(i.overhead_p95),
                fmt_ms(e.cpu_per_request),
                fmt_ms(s.p50),
                fmt_ms(s.p95),
                s.p50.map_or("–".into(), |d| format!("{:.2}", ms(d) / DELAY_MS)),
                s.waves.map_or("–".into(), |n| n.to_string()),
                e.target_round_trips.map_or("–".into(), |n| format!("≤ {n}")),
            );
        }
        let notes: Vec<String> = self
            .endpoints
            .iter()
            .filter_map(|e| e.note.as_ref().map(|n| format!("- {}: {n}", e.label)))
            .collect();
        let _ = writeln!(
            out,
            "\nOverhead at 20 ms per call (same definition): {}.\n",
            self.endpoints
                .iter()
                .filter(|e| !e.slow.is_empty())
                .map(|e| format!("{} {}", e.label, fmt_ms(Warm::of(&e.slow).overhead)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !notes.is_empty() {
            let _ = writeln!(out, "{}\n", notes.join("\n"));
        }
        if let Some(gap) = self.blind_spot {
            let _ = writeln!(
                out,
                "Part of each overhead is the calls' transport, which the proxy cannot see: a plain reqwest \
                 client in the benchmark process sees each call through a proxy {} longer than the interval \
                 the proxy records (median of {} calls; loopback transfer both ways, HTTP parsing and writing \
                 on both sides, and that client's own work, so an upper bound). Requests whose calls form n \
                 sequential round trips carry up to about n × that in their overhead.\n",
                fmt_ms(Some(gap)),
                self.samples.warm
            );
        }
    }

    fn render_tls(&self, out: &mut String) {
        let _ = writeln!(out, "## What TLS would add\n");
        let (Some(free), capped) = (&self.probe_free, &self.probe_capped) else {
            let _ = writeln!(
                out,
                "The TLS probe did not run: {}.\n",
                self.probe_note.as_deref().unwrap_or("unknown reason")
            );
            return;
        };
        let _ = writeln!(
            out,
            "Measured in a separate process (`credits-bench` in probe mode), unthrottled and at 1/14 vCPU; \
             medians of {} runs, milliseconds of wall time (CPU time in brackets). The servers \
             run in the uncapped benchmark process; the chain is RSA 2048 like the AWS endpoints'; the client \
             is reqwest with rustls and aws-lc-rs, as in the functions. Steps run in this order in one process.\n",
            self.samples.probes
        );
        let _ = writeln!(out, "| Step | Unthrottled | At 1/14 vCPU |\n|---|---|---|");
        let rows = [
            (
                "`aws_config::load_from_env` + DynamoDB and Secrets Manager clients (default HTTPS client: system store)",
                "aws_config_and_clients",
            ),
            ("aws-lc-rs: first random bytes in the process (DRBG seeding)", "rng_first"),
            ("aws-lc-rs: first random bytes in a new thread", "rng_new_thread"),
            ("read the system root store (rustls-native-certs) into a `RootCertStore`", "native_roots"),
            (
                "reqwest client, platform verifier (reqwest's default: system store)",
                "reqwest_platform_verifier",
            ),
            (
                "reqwest client, the Mozilla roots compiled in as certificates (`webpki-root-certs`, as `shared/src/tls.rs` until 12-02)",
                "reqwest_mozilla_roots",
            ),
            (
                "reqwest client, the same roots as parsed anchors (`webpki-roots`, `tls::public_tls_config`, as `shared/src/tls.rs` now)",
                "reqwest_mozilla_anchors",
            ),
            ("reqwest client, one given root", "reqwest_given_roots"),
            ("first request, new plain HTTP connection", "http_first"),
            ("first request, new HTTPS connection (TCP + TLS 1.3 handshake)", "https_first"),
            ("next request on that HTTPS connection", "https_reused"),
            ("new HTTPS connection from a second client (full handshake again)", "https_second_connection"),
        ];
        let cell =
            |p: &ProbeResult, key: &str| format!("{:.2} ({:.2})", p.get(key), p.get(&format!("{key}_cpu")));
        for (label, key) in rows {
            let _ = writeln!(
                out,
                "| {label} | {} | {} |",
                cell(free, key),
                capped.as_ref().map_or("–".into(), |p| cell(p, key)),
            );
        }
        if let Some(given) = &self.probe_given_roots {
            let _ = writeln!(
                out,
                "| the first step with the SDK's HTTPS client given roots only (`TrustStore::empty().with_pem_certificate(..)`, as `shared/src/tls.rs`; separate runs) | {} | – |",
                cell(given, "aws_config_and_clients"),
            );
        }
        let _ = writeln!(
            out,
            "\nThe system store held {:.0} roots. In AWS each new connection to DynamoDB, Secrets Manager or \
             RevenueCat also costs one network round trip for TCP and one for the TLS 1.3 handshake before the \
             first request on it.\n",
            free.get("native_roots_count")
        );
    }
}
