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

mod generate;
mod report;

use generate::generate_log;
use report::{Run, clip, report};

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
