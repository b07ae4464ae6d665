//! `logscan`: summarise a web server's access log with a multi-process pipeline.
//!
//! ```text
//! cargo run --release --example logscan                 # a generated 300,000-line log
//! cargo run --release --example logscan -- access.log   # your own log ("-" reads stdin)
//! ```
//!
//! The pipeline is `chunks | parse | aggregate`:
//!
//! - `chunks` (a `source`, on a thread of this process) reads the log and yields chunks of
//!   1,000 lines;
//! - `parse` runs in 2 forked worker processes and turns a chunk into records, counting the
//!   malformed lines; a chunk with no valid line at all fails as one item (`Err`), which the
//!   pipeline reports as an error naming the stage, the chunk and the worker — and goes on;
//! - `aggregate` runs in one more worker process (fed directly by the `parse` workers) and
//!   sums a chunk up: requests per endpoint template (`/api/users/:id`), status codes,
//!   latency histograms.
//!
//! This process merges the per-chunk summaries as they come out of `results()` and prints
//! the report. Without an argument the input is a deterministic, realistic log in the
//! combined log format, with the request time in milliseconds as a last field (what nginx
//! logs with `$request_time`, in ms); a few lines are deliberately broken, and a few whole
//! chunks are binary garbage. Lines without the latency field (a plain combined or common
//! log) are parsed too.
//!
//! `LOGSCAN_LINES=N` (or `--lines N`) sets the size of the generated log (the CI uses a
//! small one), and `logscan --generate > access.log` writes the generated log out, to try
//! it as a file. The exit status is non-zero if anything failed other than rejecting
//! garbage input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use clap::Parser;
use forkpipe::prelude::*;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Lines per pipeline item.
const CHUNK: usize = 1_000;
/// Size of the generated log when `LOGSCAN_LINES` is not set.
const DEFAULT_LINES: &str = "300_000";
/// Seed of the generated log: the same log on every run and every machine.
const SEED: u64 = 0x5EED_1095_CA11;

// ---------------------------------------------------------------------------------------
// The stages
// ---------------------------------------------------------------------------------------

/// Reads `input` and yields it in chunks of [`CHUNK`] lines. Runs on the pipeline's feeding
/// thread in this process; `seen` tells the caller how much was read (and any read error).
#[stage(source)]
fn chunks(input: Box<dyn BufRead + Send>, seen: Arc<Seen>) -> impl Iterator<Item = Vec<String>> {
    ChunkReader {
        input,
        seen,
        buf: Vec::new(),
        done: false,
    }
}

/// Parses one chunk of lines in a worker process. Malformed lines are counted, not fatal;
/// a chunk in which no line parses fails as a whole (that item's error, nothing else).
#[stage(subprocess, workers = 2)]
fn parse(lines: Vec<String>) -> Result<Parsed, Garbage> {
    let mut records = Vec::with_capacity(lines.len());
    let mut first_bad = None;
    for line in &lines {
        match parse_line(line) {
            Some(r) => records.push(r),
            // An empty line is malformed too, but a poor example of one.
            None if first_bad.is_none() && !line.trim().is_empty() => {
                first_bad = Some(line.clone())
            }
            None => {}
        }
    }
    if records.is_empty() && !lines.is_empty() {
        return Err(Garbage {
            lines: lines.len(),
            first: first_bad.unwrap_or_default(),
        });
    }
    Ok(Parsed {
        malformed: (lines.len() - records.len()) as u64,
        lines: lines.len() as u64,
        records,
        first_bad,
        pid: std::process::id(),
    })
}

/// Sums up one parsed chunk, in its own worker process.
#[stage(subprocess)]
fn aggregate(chunk: Parsed) -> Summary {
    let mut s = Summary {
        lines: chunk.lines,
        malformed: chunk.malformed,
        first_bad: chunk.first_bad,
        parse_pids: BTreeSet::from([chunk.pid]),
        aggregate_pids: BTreeSet::from([std::process::id()]),
        ..Summary::default()
    };
    for r in chunk.records {
        *s.status.entry(r.status).or_default() += 1;
        s.bytes += r.bytes;
        let e = s.endpoints.entry(r.endpoint).or_default();
        e.requests += 1;
        e.server_errors += u64::from(r.status >= 500);
        if let Some(ms) = r.latency_ms {
            e.latency.saturating_record(u64::from(ms));
        }
    }
    s
}

// ---------------------------------------------------------------------------------------
// Items
// ---------------------------------------------------------------------------------------

/// One request, as `parse` understood it.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// `GET /api/users/:id`: the method and the path with its ids replaced.
    endpoint: String,
    status: u16,
    bytes: u64,
    latency_ms: Option<u32>,
}

/// A parsed chunk.
#[derive(Debug, Serialize, Deserialize)]
struct Parsed {
    records: Vec<Record>,
    lines: u64,
    malformed: u64,
    first_bad: Option<String>,
    /// The `parse` worker that did it.
    pid: u32,
}

/// A chunk in which not one line is a log line.
#[derive(Debug)]
struct Garbage {
    lines: usize,
    first: String,
}

impl fmt::Display for Garbage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "none of its {} lines is a log line (first: {:?})",
            self.lines,
            clip(&self.first, 40)
        )
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct EndpointStats {
    requests: u64,
    server_errors: u64,
    /// Latencies in ms, 3 significant digits (exact below 2 s), mergeable.
    #[serde(with = "v2")]
    latency: Histogram<u64>,
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats {
            requests: 0,
            server_errors: 0,
            latency: Histogram::new(3).expect("3 significant digits"),
        }
    }
}

/// A histogram crosses the process boundary in hdrhistogram's own compact V2 format.
mod v2 {
    use hdrhistogram::Histogram;
    use hdrhistogram::serialization::{Deserializer as V2Reader, Serializer as _, V2Serializer};
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de, ser};

    pub fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(h, &mut buf)
            .map_err(ser::Error::custom)?;
        buf.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let buf = Vec::<u8>::deserialize(d)?;
        V2Reader::new()
            .deserialize(&mut buf.as_slice())
            .map_err(de::Error::custom)
    }
}

/// The summary of one chunk, or (merged) of the whole log.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Summary {
    lines: u64,
    malformed: u64,
    first_bad: Option<String>,
    bytes: u64,
    status: BTreeMap<u16, u64>,
    endpoints: HashMap<String, EndpointStats>,
    parse_pids: BTreeSet<u32>,
    aggregate_pids: BTreeSet<u32>,
}

impl Summary {
    fn merge(&mut self, other: Summary) {
        self.lines += other.lines;
        self.malformed += other.malformed;
        if self.first_bad.is_none() {
            self.first_bad = other.first_bad;
        }
        self.bytes += other.bytes;
        for (code, n) in other.status {
            *self.status.entry(code).or_default() += n;
        }
        for (name, e) in other.endpoints {
            let mine = self.endpoints.entry(name).or_default();
            mine.requests += e.requests;
            mine.server_errors += e.server_errors;
            mine.latency
                .add(&e.latency)
                .expect("histograms that resize");
        }
        self.parse_pids.extend(other.parse_pids);
        self.aggregate_pids.extend(other.aggregate_pids);
    }
}

/// What the source read, shared with the caller.
#[derive(Debug, Default)]
struct Seen {
    lines: AtomicU64,
    bytes: AtomicU64,
    chunks: AtomicU64,
    error: Mutex<Option<io::Error>>,
}

struct ChunkReader {
    input: Box<dyn BufRead + Send>,
    seen: Arc<Seen>,
    buf: Vec<u8>,
    done: bool,
}

impl Iterator for ChunkReader {
    type Item = Vec<String>;

    fn next(&mut self) -> Option<Vec<String>> {
        let mut chunk = Vec::with_capacity(CHUNK);
        while !self.done && chunk.len() < CHUNK {
            self.buf.clear();
            match self.input.read_until(b'\n', &mut self.buf) {
                Ok(0) => self.done = true,
                Ok(n) => {
                    self.seen.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    let line = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    // Binary garbage becomes a (malformed) line, not a read error.
                    chunk.push(String::from_utf8_lossy(line).into_owned());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    *self.seen.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    self.done = true;
                }
            }
        }
        if chunk.is_empty() {
            return None;
        }
        self.seen
            .lines
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        self.seen.chunks.fetch_add(1, Ordering::Relaxed);
        Some(chunk)
    }
}

// ---------------------------------------------------------------------------------------
// Parsing a line
// ---------------------------------------------------------------------------------------

/// Parses a line of the combined (or common) log format, with an optional request time
/// last (whole ms, or seconds with a `.` as nginx's `$request_time`):
///
/// `203.0.113.9 - - [14/Mar/2024:06:25:01 +0000] "GET /api/users/42 HTTP/1.1" 200 512 "-" "curl/8.5.0" 37`
fn parse_line(line: &str) -> Option<Record> {
    let (ip, rest) = line.split_once(' ')?;
    let ip_ok = (2..=45).contains(&ip.len())
        && ip.contains(['.', ':'])
        && ip
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':');
    if !ip_ok {
        return None;
    }
    let (_ident, rest) = rest.split_once(' ')?;
    let (_user, rest) = rest.split_once(' ')?;
    let (time, rest) = rest.strip_prefix('[')?.split_once("] ")?;
    if time.len() != 26 || time.as_bytes()[2] != b'/' || time.as_bytes()[20] != b' ' {
        return None;
    }
    let (request, rest) = rest.strip_prefix('"')?.split_once("\" ")?;
    let (status, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let status: u16 = status.parse().ok().filter(|s| (100..600).contains(s))?;
    let (bytes, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let bytes = match bytes {
        "-" => 0,
        b => b.parse().ok()?,
    };
    if rest.starts_with('"') {
        // Combined format: "referer" "user agent" (both or neither).
        let (_referer, r) = rest[1..].split_once("\" \"")?;
        let (_agent, r) = r.split_once('"')?;
        rest = r;
    }
    let latency_ms = match rest.trim() {
        "" => None,
        t if t.contains('.') => {
            Some((t.parse::<f64>().ok().filter(|s| *s >= 0.0)? * 1000.0).round() as u32)
        }
        t => Some(t.parse().ok()?),
    };
    Some(Record {
        endpoint: endpoint(request),
        status,
        bytes,
        latency_ms,
    })
}

/// `GET /api/users/42/orders?page=2 HTTP/1.1` -> `GET /api/users/:id/orders`. A request
/// line that is not one (a TLS handshake sent to the HTTP port, logged with status 400)
/// becomes `<bad request>`.
fn endpoint(request: &str) -> String {
    let mut parts = request.split(' ');
    let (Some(method), Some(target), Some(proto), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return "<bad request>".to_string();
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !proto.starts_with("HTTP/")
    {
        return "<bad request>".to_string();
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return format!("{method} <other target>");
    }
    let mut out = String::with_capacity(method.len() + 1 + path.len());
    out.push_str(method);
    out.push(' ');
    for seg in path.split('/').skip(1) {
        out.push('/');
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(":id");
        } else if is_uuid(seg) {
            out.push_str(":uuid");
        } else {
            out.push_str(seg);
        }
    }
    out
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

// ---------------------------------------------------------------------------------------
// The generated log
// ---------------------------------------------------------------------------------------

/// SplitMix64: a tiny, good-enough PRNG, so that the log is the same everywhere.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Approximately standard normal (Irwin–Hall of 4 uniforms, rescaled).
    fn normal(&mut self) -> f64 {
        ((0..4).map(|_| self.unit()).sum::<f64>() - 2.0) * 3f64.sqrt()
    }
}

/// What a kind of request looks like: its weight in the traffic, its path, its usual
/// latency and response size.
struct Route {
    weight: u32,
    method: &'static str,
    path: fn(&mut Rng) -> String,
    ok: u16,
    median_ms: f64,
    bytes: u64,
}

#[rustfmt::skip]
const ROUTES: &[Route] = &[
    Route { weight: 180, method: "GET", path: |r| format!("/api/products/{}", 1000 + r.below(5000)), ok: 200, median_ms: 18.0, bytes: 2_400 },
    Route { weight: 120, method: "GET", path: |r| format!("/api/products?page={}&sort=price", 1 + r.below(40)), ok: 200, median_ms: 42.0, bytes: 18_000 },
    Route { weight: 110, method: "GET", path: |r| format!("/api/users/{}", 1 + r.below(90_000)), ok: 200, median_ms: 12.0, bytes: 900 },
    Route { weight: 60, method: "GET", path: |r| format!("/api/users/{}/orders", 1 + r.below(90_000)), ok: 200, median_ms: 55.0, bytes: 6_500 },
    Route { weight: 35, method: "PUT", path: |r| format!("/api/users/{}", 1 + r.below(90_000)), ok: 204, median_ms: 30.0, bytes: 0 },
    Route { weight: 70, method: "GET", path: |r| format!("/api/orders/{}", uuid(r)), ok: 200, median_ms: 25.0, bytes: 3_100 },
    Route { weight: 40, method: "POST", path: |_| "/api/orders".into(), ok: 201, median_ms: 140.0, bytes: 420 },
    Route { weight: 45, method: "POST", path: |r| format!("/api/cart/items?ref={}", r.below(100)), ok: 201, median_ms: 35.0, bytes: 310 },
    Route { weight: 20, method: "DELETE", path: |r| format!("/api/cart/items/{}", 1 + r.below(400_000)), ok: 204, median_ms: 22.0, bytes: 0 },
    Route { weight: 75, method: "GET", path: |r| format!("/api/search?q={}", r.pick(&["shoes", "red+dress", "usb-c", "lamp", "tent"])), ok: 200, median_ms: 160.0, bytes: 12_000 },
    Route { weight: 25, method: "POST", path: |_| "/api/login".into(), ok: 200, median_ms: 90.0, bytes: 350 },
    Route { weight: 90, method: "GET", path: |r| r.pick(&["/static/js/app.js", "/static/css/site.css", "/favicon.ico"]).to_string(), ok: 200, median_ms: 2.0, bytes: 48_000 },
    Route { weight: 50, method: "GET", path: |_| "/".into(), ok: 200, median_ms: 35.0, bytes: 21_000 },
    Route { weight: 60, method: "GET", path: |_| "/healthz".into(), ok: 200, median_ms: 1.0, bytes: 2 },
    Route { weight: 8, method: "GET", path: |_| "/metrics".into(), ok: 200, median_ms: 6.0, bytes: 14_000 },
    Route { weight: 6, method: "GET", path: |r| r.pick(&["/wp-login.php", "/.env", "/admin/config.php", "/.git/config"]).to_string(), ok: 404, median_ms: 3.0, bytes: 153 },
];

const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.5.0",
    "python-requests/2.31.0",
];

fn uuid(r: &mut Rng) -> String {
    let (a, b) = (r.next_u64(), r.next_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// `14/Mar/2024:06:25:01 +0000` for a Unix time in seconds (UTC).
fn clf_time(out: &mut String, unix: u64) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[month as usize - 1],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// A deterministic access log of `lines` lines. About 0.3% of the lines are broken the
/// way real logs break (cut by a crash, two writes interleaved, an empty line), and every
/// 100th chunk, from the 8th on, is binary junk (a compressed log appended by mistake).
fn generate_log(lines: usize, seed: u64) -> String {
    let mut r = Rng(seed);
    let total_weight: u64 = ROUTES.iter().map(|x| u64::from(x.weight)).sum();
    let clients: Vec<String> = (0..3_000)
        .map(|i| {
            if i % 50 == 0 {
                format!("2001:db8:{:x}::{:x}", r.below(0xffff), r.below(0xffff))
            } else {
                let first = *r.pick(&[
                    31u64, 46, 66, 77, 81, 89, 91, 103, 109, 142, 151, 176, 185, 188, 193, 212, 217,
                ]);
                format!(
                    "{first}.{}.{}.{}",
                    r.below(256),
                    r.below(256),
                    1 + r.below(254)
                )
            }
        })
        .collect();
    let mut out = String::with_capacity(lines * 230);
    let mut line = String::with_capacity(512);
    let mut now_ms: u64 = 1_710_374_400_000; // 2024-03-14 00:00:00 UTC
    for i in 0..lines {
        line.clear();
        now_ms += r.below(500);
        if (i / CHUNK) % 100 == 7 {
            let len = 20 + r.below(100);
            line.extend(
                (0..len).map(|_| char::from_u32(0x21 + r.below(0x5e) as u32).unwrap_or('?')),
            );
            line.insert_str(0, "\u{1f}\u{fffd}\u{8}");
            out.push_str(&line);
            out.push('\n');
            continue;
        }
        // A client: a few are very busy (Zipf-like), most come now and then.
        let u = r.unit();
        let mut route = &ROUTES[0];
        let mut w = r.below(total_weight);
        for x in ROUTES {
            if w < u64::from(x.weight) {
                route = x;
                break;
            }
            w -= u64::from(x.weight);
        }
        let path = (route.path)(&mut r);
        let (ip, agent) = if path == "/healthz" {
            ("10.0.3.17", "kube-probe/1.29")
        } else {
            (
                clients[(u * u * u * clients.len() as f64) as usize].as_str(),
                *r.pick(AGENTS),
            )
        };
        let mut latency = route.median_ms * (0.55 * r.normal()).exp();
        let mut status = route.ok;
        let mut bytes = (route.bytes as f64 * (0.8 + 0.4 * r.unit())) as u64;
        if r.chance(0.01) {
            latency *= 8.0; // a slow one: a lock, a cold cache, a GC pause
        }
        if route.method == "GET" && route.ok == 200 && path.starts_with("/static") && r.chance(0.4)
        {
            (status, bytes) = (304, 0);
        } else if route.method == "POST" && path == "/api/login" && r.chance(0.15) {
            status = 401;
        } else if path.starts_with("/api/") && r.chance(0.004) {
            (status, bytes) = (429, 58);
        } else if path.starts_with("/api/users") && route.method == "GET" && r.chance(0.02) {
            (status, bytes) = (404, 47);
        }
        if r.chance(0.003) {
            // Upstream trouble: a quick 502/503 or a slow 504.
            (status, bytes) = *r.pick(&[(502, 157), (503, 190), (504, 167)]);
            latency = if status == 504 {
                30_000.0
            } else {
                latency.min(5.0)
            };
        }
        let referer = if r.chance(0.3) {
            "https://shop.example.com/"
        } else {
            "-"
        };
        let user = if path.starts_with("/api/") && r.chance(0.2) {
            "alice"
        } else {
            "-"
        };
        let _ = write!(line, "{ip} - {user} [");
        clf_time(&mut line, now_ms / 1000);
        let _ = write!(
            line,
            "] \"{} {path} HTTP/1.1\" {status} {bytes} \"{referer}\" \"{agent}\" {}",
            route.method,
            latency.round().max(0.0) as u32
        );
        if r.chance(0.002) {
            // A TLS client talking to the plain-HTTP port: a valid line for a bad request.
            line.clear();
            let _ = write!(line, "{ip} - - [");
            clf_time(&mut line, now_ms / 1000);
            line.push_str("] \"\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xFC\\x03\\x03\" 400 157 \"-\" \"-\" 0");
        }
        match r.below(1000) {
            0 | 1 => line.truncate(r.below(line.len() as u64 / 2) as usize), // cut by a crash
            2 => line.truncate(0),                                           // an empty line
            3 => {
                // Two writes interleaved.
                let cut = 10 + r.below(line.len() as u64 / 2) as usize;
                line.truncate(line.floor_char_boundary(cut));
                line.push_str("185.12.4.9 - - [14/Mar/2024");
            }
            _ => {}
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `1234567` -> `1,234,567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

struct Run {
    source: String,
    prepare: Option<Duration>,
    elapsed: Duration,
    lines_read: u64,
    bytes_read: u64,
    chunks: u64,
    total: Summary,
    rejected: Vec<Error>,
    failures: Vec<String>,
}

fn report(out: &mut impl Write, run: &Run) -> io::Result<()> {
    let t = &run.total;
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    let rejected_lines = run.lines_read.saturating_sub(t.lines);
    let malformed = t.malformed + rejected_lines;
    let parsed = run.lines_read - malformed;
    writeln!(
        out,
        "logscan: {} lines in {:.2} s: {} lines/s ({}/s) through chunks | parse (2 processes) | aggregate (1 process)",
        thousands(run.lines_read),
        secs,
        thousands((run.lines_read as f64 / secs) as u64),
        ByteSize((run.bytes_read as f64 / secs) as u64),
    )?;
    write!(
        out,
        "input: {}, {}, {} chunks of up to {CHUNK} lines",
        run.source,
        ByteSize(run.bytes_read),
        thousands(run.chunks)
    )?;
    match run.prepare {
        Some(d) => writeln!(
            out,
            " (generated in {:.2} s, not counted above)",
            d.as_secs_f64()
        )?,
        None => writeln!(out)?,
    }
    let pids = |set: &BTreeSet<u32>| {
        set.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(
        out,
        "worker processes: parse pids [{}], aggregate pid [{}]; this process is pid {}",
        pids(&t.parse_pids),
        pids(&t.aggregate_pids),
        std::process::id()
    )?;
    writeln!(out)?;
    writeln!(out, "lines       {:>10}", thousands(run.lines_read))?;
    writeln!(out, "parsed      {:>10}", thousands(parsed))?;
    writeln!(
        out,
        "malformed   {:>10}  ({:.2}%: {} in otherwise good chunks, {} in {} rejected chunks)",
        thousands(malformed),
        pct(malformed, run.lines_read),
        thousands(t.malformed),
        thousands(rejected_lines),
        run.rejected.len()
    )?;
    if let Some(bad) = &t.first_bad {
        writeln!(out, "            first malformed line: {:?}", clip(bad, 72))?;
    }
    writeln!(out, "bytes sent  {:>10}", ByteSize(t.bytes).to_string())?;

    let mut top: Vec<(&String, &EndpointStats)> = t.endpoints.iter().collect();
    top.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then_with(|| a.0.cmp(b.0)));
    writeln!(out)?;
    writeln!(out, "top endpoints ({} in all)", t.endpoints.len())?;
    writeln!(
        out,
        "  {:<32} {:>9} {:>7} {:>7} {:>7} {:>6}",
        "endpoint", "requests", "share", "p50 ms", "p95 ms", "5xx"
    )?;
    for (name, e) in top.iter().take(10) {
        let p = |q| {
            if e.latency.is_empty() {
                "-".to_string()
            } else {
                e.latency.value_at_quantile(q).to_string()
            }
        };
        writeln!(
            out,
            "  {:<32} {:>9} {:>6.1}% {:>7} {:>7} {:>6}",
            clip(name, 32),
            thousands(e.requests),
            pct(e.requests, parsed),
            p(0.50),
            p(0.95),
            thousands(e.server_errors)
        )?;
    }

    writeln!(out)?;
    writeln!(out, "status codes")?;
    let mut classes: BTreeMap<u16, Vec<(u16, u64)>> = BTreeMap::new();
    for (&code, &n) in &t.status {
        classes.entry(code / 100).or_default().push((code, n));
    }
    for (class, codes) in &classes {
        let n: u64 = codes.iter().map(|c| c.1).sum();
        let detail = codes
            .iter()
            .map(|(c, n)| format!("{c}: {}", thousands(*n)))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            out,
            "  {class}xx {:>10} {:>6.2}%   {detail}",
            thousands(n),
            pct(n, parsed)
        )?;
    }

    if !run.rejected.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "rejected chunks (each one item's error; the pipeline went on):"
        )?;
        for e in run.rejected.iter().take(5) {
            writeln!(out, "  {e}")?;
        }
        if run.rejected.len() > 5 {
            writeln!(out, "  … and {} more", run.rejected.len() - 5)?;
        }
    }
    if !run.failures.is_empty() {
        writeln!(out)?;
        writeln!(out, "FAILED:")?;
        for f in &run.failures {
            writeln!(out, "  {f}")?;
        }
    }
    out.flush()
}

// ---------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------

/// Summarise a web server's access log with a multi-process pipeline.
#[derive(Parser)]
struct Args {
    /// The log to scan ("-" reads stdin); without it, a generated log.
    log: Option<PathBuf>,
    /// Lines of the generated log.
    #[arg(long, env = "LOGSCAN_LINES", default_value = DEFAULT_LINES, value_parser = count)]
    lines: usize,
    /// Write the generated log to stdout instead of scanning it.
    #[arg(long, conflicts_with = "log")]
    generate: bool,
}

/// `300000` or `300_000`.
fn count(s: &str) -> Result<usize, String> {
    s.replace('_', "")
        .parse()
        .map_err(|_| format!("a number of lines, not {s:?}"))
}

fn main() -> ExitCode {
    // First, while the process has one thread: every pipeline's processes are forked by
    // forkpipe's single-threaded fork server from now on, whatever threads come later.
    if let Err(e) = forkpipe::init() {
        eprintln!("logscan: {e}");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    if args.generate {
        // `logscan --generate > access.log`: the built-in log, to try logscan on a file.
        return match io::stdout()
            .lock()
            .write_all(generate_log(args.lines, SEED).as_bytes())
        {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                eprintln!("logscan: {e}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        };
    }
    let (input, source, prepare): (Box<dyn BufRead + Send>, String, Option<Duration>) =
        match &args.log {
            Some(path) if path.as_os_str() == "-" => (
                Box::new(io::BufReader::new(io::stdin())),
                "stdin".into(),
                None,
            ),
            Some(path) => match std::fs::File::open(path) {
                Ok(f) => (
                    Box::new(io::BufReader::with_capacity(1 << 16, f)),
                    path.display().to_string(),
                    None,
                ),
                Err(e) => {
                    eprintln!("logscan: cannot open {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            },
            None => {
                let t = Instant::now();
                let text = generate_log(args.lines, SEED);
                (
                    Box::new(io::Cursor::new(text)),
                    "generated access log".into(),
                    Some(t.elapsed()),
                )
            }
        };

    let seen = Arc::new(Seen::default());
    let started = Instant::now();
    let mut results =
        match pipeline![chunks(input, Arc::clone(&seen)) | parse | aggregate].results() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("logscan: {e}");
                return ExitCode::FAILURE;
            }
        };
    let mut total = Summary::default();
    let mut rejected = Vec::new();
    let mut failures = Vec::new();
    let mut outcomes = 0u64;
    for outcome in results.by_ref() {
        outcomes += 1;
        match outcome {
            Ok(summary) => total.merge(summary),
            // Garbage input is the data's problem, reported but not a failure of the run.
            Err(e @ Error::Failed { .. }) if e.stage() == Some("parse") => {
                if let Some(pid) = e.worker().and_then(|w| w.pid()) {
                    total.parse_pids.insert(pid);
                }
                rejected.push(e);
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let elapsed = started.elapsed();
    let stats = results.stats();
    drop(results);

    let chunks = seen.chunks.load(Ordering::Relaxed);
    if let Some(e) = seen.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        failures.push(format!(
            "reading {source} failed after {} lines: {e}",
            seen.lines.load(Ordering::Relaxed)
        ));
    }
    // Exactly one outcome per item: a summary or an error for every chunk read.
    if outcomes != chunks {
        failures.push(format!(
            "{chunks} chunks went in but {outcomes} outcomes came out"
        ));
    }
    let run = Run {
        source,
        prepare,
        elapsed,
        lines_read: seen.lines.load(Ordering::Relaxed),
        bytes_read: seen.bytes.load(Ordering::Relaxed),
        chunks,
        total,
        rejected,
        failures,
    };
    let mut out = io::stdout().lock();
    let printed = report(&mut out, &run).and_then(|()| {
        writeln!(
            out,
            "\nwhere the time went (stats of the pipeline):\n{stats}"
        )
    });
    if let Err(e) = printed
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        eprintln!("logscan: cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    if run.failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    // Also on stderr, which a closed stdout does not hide.
    for f in &run.failures {
        eprintln!("logscan: {f}");
    }
    ExitCode::FAILURE
}
