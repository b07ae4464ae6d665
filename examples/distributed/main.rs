//! `distributed`: the `logscan` pipeline with its `parse` stage spread over other hosts,
//! through a NATS JetStream broker.
//!
//! ```text
//! cargo run --release --features nats --example distributed            # all on loopback
//! cargo run --release --features nats --example distributed -- --broker nats://10.0.0.5:4222
//! ```
//!
//! The first command starts everything itself, on loopback: a `nats-server -js` (Debian:
//! `apt-get install nats-server`) on a free port, two worker hosts — this same program
//! started again with `FORKPIPE_HOST=nats://…`, so that `forkpipe::init()`, the first line
//! of `main`, serves stages there and never returns — and the caller, which runs
//!
//! ```text
//! chunks (source, here) | parse (distributed: 2 workers on each host) | aggregate (here)
//! ```
//!
//! over the generated 300,000-line access log of `logscan`, then prints the top endpoints
//! and which host parsed how many chunks. With `--broker URL` it uses that server and the
//! hosts you started on other machines (`FORKPIPE_HOST=URL FORKPIPE_HOST_NAME=h1 ./distributed`).
//! Without `.on(broker)` the very same pipeline runs on this machine alone.

#[path = "../logscan/generate.rs"]
mod generate;

use std::collections::BTreeMap;
#[allow(unused_imports)] // (for `generate`, which uses what its parent has)
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use forkpipe::Broker;
use forkpipe::prelude::*;
use serde::{Deserialize, Serialize};

/// Lines per pipeline item.
const CHUNK: usize = 1_000;

/// Yields the log in chunks of [`CHUNK`] lines (on this machine).
#[stage(source)]
fn chunks(log: Arc<String>) -> impl Iterator<Item = Vec<String>> {
    let lines: Vec<String> = log.lines().map(str::to_owned).collect();
    let chunks: Vec<Vec<String>> = lines.chunks(CHUNK).map(<[String]>::to_vec).collect();
    chunks.into_iter()
}

/// Counts one chunk's requests per endpoint and status, on whichever host gets it.
#[stage(subprocess, distributed, workers = 2)]
fn parse(lines: Vec<String>) -> Parsed {
    let mut p = Parsed {
        host: std::env::var("FORKPIPE_HOST_NAME").unwrap_or_else(|_| "this machine".into()),
        ..Parsed::default()
    };
    for line in &lines {
        match parse_line(line) {
            Some((endpoint, status)) => {
                *p.endpoints.entry(endpoint).or_default() += 1;
                *p.status.entry(status).or_default() += 1;
            }
            None => p.malformed += 1,
        }
    }
    p
}

/// Merges one chunk's counts into the running report (on this machine).
#[stage]
fn aggregate(p: Parsed) -> Parsed {
    p
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Parsed {
    endpoints: BTreeMap<String, u64>,
    status: BTreeMap<u16, u64>,
    malformed: u64,
    host: String,
}

/// `(GET /api/users/:id, 200)` from a combined-log-format line.
fn parse_line(line: &str) -> Option<(String, u16)> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let status: u16 = rest.split(' ').next()?.parse().ok()?;
    if !(100..600).contains(&status) {
        return None;
    }
    let mut parts = request.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    let path = target.split('?').next()?;
    let path: Vec<&str> = (path.split('/'))
        .map(|seg| {
            let id =
                !seg.is_empty() && (seg.bytes().all(|b| b.is_ascii_digit()) || seg.len() == 36);
            if id { ":id" } else { seg }
        })
        .collect();
    Some((format!("{method} {}", path.join("/")), status))
}

#[derive(Parser, Debug)]
#[command(about = "logscan with its parse stage on other hosts, through NATS JetStream")]
struct Args {
    /// Lines of the generated log.
    #[arg(long, env = "LOGSCAN_LINES", default_value = "300000")]
    lines: usize,
    /// A running NATS server (with JetStream) whose hosts you started; by default a server
    /// and two hosts are started here, on loopback.
    #[arg(long)]
    broker: Option<String>,
}

fn main() -> ExitCode {
    // On a host (FORKPIPE_HOST set) this serves stages and never returns.
    if let Err(e) = forkpipe::init() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    let mut local = Vec::new();
    let url = match args.broker {
        Some(url) => url,
        None => match start_local(&mut local) {
            Ok(url) => url,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let r = run(&url, args.lines);
    drop(local); // kills and reaps the hosts, then the server
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(url: &str, lines: usize) -> Result<(), Box<dyn std::error::Error>> {
    let log = Arc::new(generate::generate_log(lines, 0x5EED_1095_CA11));
    let t = Instant::now();
    let p = pipeline![chunks(log) | parse | aggregate].on(Broker::nats(url)?);
    let (mut total, mut by_host) = (Parsed::default(), BTreeMap::<String, u64>::new());
    let mut failed = 0;
    for r in p.results()? {
        match r {
            Ok(p) => {
                *by_host.entry(p.host).or_default() += 1;
                for (e, n) in p.endpoints {
                    *total.endpoints.entry(e).or_default() += n;
                }
                for (s, n) in p.status {
                    *total.status.entry(s).or_default() += n;
                }
                total.malformed += p.malformed;
            }
            Err(e) => {
                failed += 1;
                eprintln!("{e}");
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{lines} lines in {secs:.2} s ({:.0} lines/s) through {url}",
        lines as f64 / secs
    );
    let mut top: Vec<_> = total.endpoints.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    println!("top endpoints:");
    for (e, n) in top.iter().take(5) {
        println!("  {n:>8}  {e}");
    }
    println!(
        "status: {:?}; malformed lines: {}",
        total.status, total.malformed
    );
    println!("chunks of {CHUNK} lines parsed per host:");
    for (h, n) in &by_host {
        println!("  {h:<12} {n}");
    }
    if failed > 0 {
        return Err(format!("{failed} chunks failed").into());
    }
    Ok(())
}

/// A process of this example, killed and reaped on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `nats-server -js` on a free loopback port and two hosts; returns its URL.
fn start_local(keep: &mut Vec<Killed>) -> Result<String, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let dir = std::env::temp_dir().join(format!("forkpipe-distributed-{}", std::process::id()));
    let server = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot start nats-server ({e}): install it (`apt-get install nats-server`) or pass --broker")
        })?;
    let url = format!("nats://127.0.0.1:{port}");
    let server = Killed(server);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed().as_secs() > 10 {
            return Err("nats-server did not start".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut hosts = Vec::new();
    for name in ["host-1", "host-2"] {
        hosts.push(start_host(&url, name)?);
    }
    // (Dropped in this order: the hosts first, then the server.)
    keep.extend(hosts);
    keep.push(server);
    Ok(url)
}

fn start_host(url: &str, name: &str) -> Result<Killed, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env("FORKPIPE_HOST", url)
        .env("FORKPIPE_HOST_NAME", name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start host {name}: {e}"))?;
    let mut line = String::new();
    let out = child.stdout.take().expect("its stdout");
    let child = Killed(child);
    let _ = BufReader::new(out).read_line(&mut line);
    if !line.contains("serving") {
        return Err(format!("host {name} did not start"));
    }
    Ok(child)
}
