//! `backup`: compress files into a backup directory with a `pipe_next` pair, the shape
//! atbu's pipeline was built for (its backups read, compress and hash each file in
//! parallel stages joined by a pipe).
//!
//! ```text
//! cargo run --release --example backup                  # 64 generated files, about 75 MiB
//! cargo run --release --example backup -- ~/Documents   # the files under a directory
//! cargo run --release --example backup -- --keep        # keep the backup directory
//! BACKUP_FILES=8 cargo run --example backup             # a quick run (CI); or --files 8
//! ```
//!
//! The pipeline is `files | compress ⇒ store`:
//!
//! - `files` (a `source`, on a thread of this process) yields one spec per file: a name, a
//!   size, and where the bytes come from (a file on disk, or a deterministic generator of
//!   log, CSV, text or JSON-lines content);
//! - `compress` (the producer, in worker processes) reads or generates the file and
//!   gzips it with `flate2`, its `GzEncoder` writing straight into the `PipeWriter`;
//! - `store` (the consumer, in the worker process coupled to it) reads the compressed
//!   stream, hashes it with sha256 while writing it to `<backup dir>/<name>.gz`, checks the
//!   gzip trailer's size against the spec, and returns (name, original size, compressed
//!   size, digest).
//!
//! Both run at the same time on each file, in four couples: nothing is buffered whole in
//! memory, and the compressed bytes cross no other process. If the
//! producer fails (an unreadable file), the consumer's read fails and the item fails with
//! the producer's cause; the partial output file is removed.
//!
//! At the end this process re-reads every stored file and checks its size and digest,
//! prints a table, the compression ratio and the throughput (original bytes per second of
//! wall time), and removes the backup directory (a temporary directory, unless `--keep`).
//! The exit status is non-zero if any file failed.
//!
//! `main` calls `forkpipe::init()` first, so the workers are forked by forkpipe's
//! single-threaded fork server; that is why both stages are `#[stage]` functions and the
//! backup directory is a bound parameter (`store(out)`), not a captured variable.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use bytesize::ByteSize;
use clap::Parser;
use flate2::Compression;
use flate2::write::GzEncoder;
use forkpipe::prelude::*;
use forkpipe::{PipeReader, PipeWriter, Source};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use walkdir::WalkDir;

/// Generated files when `BACKUP_FILES` is not set.
const DEFAULT_FILES: usize = 64;
/// Seed of the generated data: the same files on every run and every machine.
const SEED: u64 = 0x00BA_C40F_11E5;
/// Rows of the table printed before the totals.
const SHOWN: usize = 10;

// ---------------------------------------------------------------------------------------
// What flows through the pipeline
// ---------------------------------------------------------------------------------------

/// One file to back up.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileSpec {
    /// Relative name, also the name in the backup directory (plus `.gz`).
    name: String,
    /// Size in bytes, when listed.
    size: u64,
    origin: Origin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Origin {
    /// A file on disk.
    Disk(PathBuf),
    /// Deterministic generated content.
    Generated { kind: Kind, seed: u64 },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Kind {
    AccessLog,
    Csv,
    Text,
    JsonLines,
}

/// One stored file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    name: String,
    original: u64,
    compressed: u64,
    /// sha256 of the compressed bytes.
    digest: [u8; 32],
}

// ---------------------------------------------------------------------------------------
// The pair
// ---------------------------------------------------------------------------------------

/// Compress ⇒ store couples: each is two worker processes joined by a byte stream.
/// (The `workers = 4` of `compress` below: the attribute takes a literal.)
const COUPLES: usize = 4;

/// The producer: reads or generates the file, and gzips it into the stream.
#[stage(subprocess, pipe_next, workers = 4)]
fn compress(spec: FileSpec, w: &mut PipeWriter) -> io::Result<()> {
    let mut gz = GzEncoder::new(&mut *w, Compression::default());
    let n = match &spec.origin {
        Origin::Disk(path) => {
            let mut f = File::open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", spec.name)))?;
            io::copy(&mut f, &mut gz)?
        }
        Origin::Generated { kind, seed } => {
            let mut g = Generator::new(*kind, *seed);
            let mut buf = Vec::with_capacity(80 * 1024);
            let mut left = spec.size;
            while left > 0 {
                buf.clear();
                g.fill(&mut buf, 64 * 1024);
                let k = left.min(buf.len() as u64) as usize;
                gz.write_all(&buf[..k])?;
                left -= k as u64;
            }
            spec.size
        }
    };
    if n != spec.size {
        return Err(io::Error::other(format!(
            "{}: read {n} bytes, listed as {} (changed while backing up?)",
            spec.name, spec.size
        )));
    }
    gz.finish()?;
    Ok(())
}

/// The consumer: hashes the compressed stream while writing it to `out/<name>.gz` (`out`
/// is bound when the pipeline is composed, and travels to the workers as data).
#[stage(subprocess)]
fn store(spec: FileSpec, r: &mut PipeReader, out: PathBuf) -> io::Result<Stored> {
    let path = out.join(format!("{}.gz", spec.name));
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = File::create(&path)?;
    let result = copy_hashed(r, &mut file, spec.size);
    drop(file);
    match result {
        Ok((compressed, digest)) => Ok(Stored {
            name: spec.name,
            original: spec.size,
            compressed,
            digest,
        }),
        Err(e) => {
            let _ = fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Copies the stream to `file`, hashing it; checks the gzip trailer's ISIZE (the original
/// size modulo 2^32) against `original`. Returns the compressed size and digest.
fn copy_hashed(r: &mut PipeReader, file: &mut File, original: u64) -> io::Result<(u64, [u8; 32])> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut tail = [0u8; 8];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        file.write_all(&buf[..k])?;
        n += k as u64;
        // Keep the last 8 bytes seen (the gzip trailer: CRC32, ISIZE).
        if k >= 8 {
            tail.copy_from_slice(&buf[k - 8..k]);
        } else {
            tail.rotate_left(k);
            tail[8 - k..].copy_from_slice(&buf[..k]);
        }
    }
    let isize = u32::from_le_bytes(tail[4..].try_into().expect("4 bytes"));
    if n < 18 || isize != original as u32 {
        return Err(io::Error::other(format!(
            "gzip stream of {n} bytes says {isize} original bytes, expected {original}"
        )));
    }
    Ok((n, h.finalize().into()))
}

// ---------------------------------------------------------------------------------------
// Generated data
// ---------------------------------------------------------------------------------------

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generated files: `n` specs, sizes between 256 KiB and 4 MiB (log-uniform).
fn generated(n: usize) -> Vec<FileSpec> {
    let mut s = SEED;
    (0..n)
        .map(|i| {
            let kind = [Kind::AccessLog, Kind::Csv, Kind::Text, Kind::JsonLines][i % 4];
            let (dir, stem, ext) = match kind {
                Kind::AccessLog => ("logs", "access", "log"),
                Kind::Csv => ("data", "sensors", "csv"),
                Kind::Text => ("docs", "notes", "txt"),
                Kind::JsonLines => ("events", "events", "jsonl"),
            };
            // 2^18 .. 2^22 bytes.
            let exp = 18.0 + 4.0 * (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
            let size = exp.exp2() as u64;
            FileSpec {
                name: format!("{dir}/{stem}-{i:03}.{ext}"),
                size,
                origin: Origin::Generated {
                    kind,
                    seed: splitmix(&mut s),
                },
            }
        })
        .collect()
}

#[rustfmt::skip]
const WORDS: [&str; 48] = [
    "the", "backup", "of", "a", "file", "is", "read", "and", "compressed", "while", "its",
    "digest", "grows", "pipeline", "stage", "worker", "process", "stream", "bytes", "to",
    "disk", "in", "order", "every", "item", "has", "one", "outcome", "producer", "consumer",
    "socket", "frame", "end", "marker", "never", "hangs", "with", "restart", "budget",
    "supervisor", "fork", "reaps", "children", "clean", "descriptor", "closed", "fast", "safe",
];
const PATHS: [&str; 8] = [
    "/",
    "/index.html",
    "/api/users/",
    "/api/orders/",
    "/static/app.js",
    "/static/app.css",
    "/login",
    "/api/search?q=",
];
const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
    "curl/8.7.1",
    "Go-http-client/2.0",
];

/// Realistic, compressible content, line after line.
struct Generator {
    kind: Kind,
    rng: u64,
    line: u64,
}

impl Generator {
    fn new(kind: Kind, seed: u64) -> Self {
        Generator {
            kind,
            rng: seed,
            line: 0,
        }
    }

    fn next(&mut self, n: u64) -> u64 {
        splitmix(&mut self.rng) % n
    }

    /// Appends whole lines to `buf` until it holds at least `want` bytes.
    fn fill(&mut self, buf: &mut Vec<u8>, want: usize) {
        let mut s = String::with_capacity(want + 512);
        while s.len() < want {
            self.line += 1;
            let t = self.line;
            let (hh, mm, ss) = ((t / 3600) % 24, (t / 60) % 60, t % 60);
            match self.kind {
                Kind::AccessLog => {
                    let path = PATHS[self.next(8) as usize];
                    let id = if path.ends_with('/') || path.ends_with('=') {
                        self.next(5000).to_string()
                    } else {
                        String::new()
                    };
                    let status = [200, 200, 200, 200, 304, 404, 500][self.next(7) as usize];
                    let _ = writeln!(
                        s,
                        "203.0.113.{} - - [12/Mar/2024:{hh:02}:{mm:02}:{ss:02} +0000] \"GET {path}{id} HTTP/1.1\" {status} {} \"-\" \"{}\" {}",
                        self.next(256),
                        self.next(50_000),
                        AGENTS[self.next(4) as usize],
                        self.next(900) + 1,
                    );
                }
                Kind::Csv => {
                    let sensor = self.next(32);
                    let temp = 18.0 + (self.next(1500) as f64) / 100.0;
                    let hum = 30.0 + (self.next(400) as f64) / 10.0;
                    let status = ["ok", "ok", "ok", "ok", "warn", "ok"][self.next(6) as usize];
                    let _ = writeln!(
                        s,
                        "2024-03-12T{hh:02}:{mm:02}:{ss:02}Z,sensor-{sensor:02},{temp:.2},{hum:.1},{status}"
                    );
                }
                Kind::Text => {
                    let words = 6 + self.next(12);
                    for i in 0..words {
                        let w = WORDS[self.next(WORDS.len() as u64) as usize];
                        if i == 0 {
                            let mut c = w.chars();
                            if let Some(f) = c.next() {
                                s.extend(f.to_uppercase());
                                s.push_str(c.as_str());
                            }
                        } else {
                            s.push(' ');
                            s.push_str(w);
                        }
                    }
                    s.push_str(if self.next(5) == 0 { ".\n\n" } else { ". " });
                }
                Kind::JsonLines => {
                    let ev =
                        ["click", "view", "purchase", "login", "logout"][self.next(5) as usize];
                    let _ = writeln!(
                        s,
                        "{{\"ts\":\"2024-03-12T{hh:02}:{mm:02}:{ss:02}Z\",\"event\":\"{ev}\",\"user\":{},\"session\":\"{:08x}\",\"amount\":{}}}",
                        self.next(10_000),
                        self.next(1 << 32),
                        self.next(100_000) as f64 / 100.0
                    );
                }
            }
        }
        buf.extend_from_slice(s.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------
// Files on disk
// ---------------------------------------------------------------------------------------

/// Regular files under `root` (symbolic links are not followed), sorted by name.
fn list_dir(root: &Path) -> walkdir::Result<Vec<FileSpec>> {
    let mut out = Vec::new();
    for entry in WalkDir::new(root).sort_by_file_name() {
        let entry = entry?;
        if entry.file_type().is_file() {
            let rel = entry.path().strip_prefix(root).expect("under root");
            out.push(FileSpec {
                name: rel.to_string_lossy().into_owned(),
                size: entry.metadata()?.len(),
                origin: Origin::Disk(entry.into_path()),
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------

fn size(n: u64) -> String {
    ByteSize(n).display().iec().to_string()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Re-reads a stored file: its size and sha256 must be what the consumer reported.
fn verify(out: &Path, s: &Stored) -> io::Result<()> {
    let mut f = File::open(out.join(format!("{}.gz", s.name)))?;
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h)?;
    let digest: [u8; 32] = h.finalize().into();
    if n != s.compressed || digest != s.digest {
        return Err(io::Error::other(format!(
            "{}: stored file has {n} bytes, sha256 {}; expected {} bytes, {}",
            s.name,
            hex(&digest),
            s.compressed,
            hex(&s.digest)
        )));
    }
    Ok(())
}

/// Compresses the files under DIR into a temporary backup directory, and verifies them.
#[derive(Parser)]
struct Args {
    /// The directory to back up; without it, generated files.
    dir: Option<PathBuf>,
    /// Generated files, when no DIR is given.
    #[arg(long, env = "BACKUP_FILES", default_value_t = DEFAULT_FILES)]
    files: usize,
    /// Keep the backup directory (it is removed by default).
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    // First, while the process has one thread: every pipeline's processes are forked by
    // forkpipe's single-threaded fork server from now on, whatever threads come later.
    if let Err(e) = forkpipe::init() {
        eprintln!("backup: {e}");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    let specs = match &args.dir {
        Some(dir) => match list_dir(dir) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("backup: cannot list {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        },
        None => generated(args.files),
    };
    let what = match &args.dir {
        Some(dir) => format!("{} files under {}", specs.len(), dir.display()),
        None => format!("{} generated files", specs.len()),
    };

    let out = std::env::temp_dir().join(format!("forkpipe-backup-{}", std::process::id()));
    if let Err(e) = fs::create_dir_all(&out) {
        eprintln!("backup: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    println!(
        "backing up {what} to {} with {COUPLES} compress ⇒ store couples",
        out.display()
    );

    let t0 = Instant::now();
    let pipeline =
        pipeline![{ Source::new("files", move || specs) } | compress | store(out.clone())];
    let mut results = match pipeline.results() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("backup: {e}");
            let _ = fs::remove_dir_all(&out);
            return ExitCode::FAILURE;
        }
    };
    let mut stored: Vec<Stored> = Vec::new();
    let mut failures = 0usize;
    for r in results.by_ref() {
        match r {
            Ok(s) => stored.push(s),
            Err(e) => {
                failures += 1;
                eprintln!("backup: {e}");
            }
        }
    }
    let wall = t0.elapsed();
    let stats = results.stats();
    drop(results);

    for s in &stored {
        if let Err(e) = verify(&out, s) {
            failures += 1;
            eprintln!("backup: verification failed: {e}");
        }
    }

    let width = stored
        .iter()
        .take(SHOWN)
        .map(|s| s.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "\n{:<width$}  {:>11}  {:>11}  {:>6}  sha256 (compressed)",
        "file", "original", "compressed", "ratio"
    );
    for s in stored.iter().take(SHOWN) {
        println!(
            "{:<width$}  {:>11}  {:>11}  {:>5.1}x  {}…",
            s.name,
            size(s.original),
            size(s.compressed),
            s.original as f64 / s.compressed.max(1) as f64,
            &hex(&s.digest)[..16]
        );
    }
    if stored.len() > SHOWN {
        println!("… and {} more files", stored.len() - SHOWN);
    }
    let original: u64 = stored.iter().map(|s| s.original).sum();
    let compressed: u64 = stored.iter().map(|s| s.compressed).sum();
    let secs = wall.as_secs_f64();
    println!(
        "\ntotal: {} files, {} -> {} (ratio {:.2}x, {:.1}% of the original)",
        stored.len(),
        size(original),
        size(compressed),
        original as f64 / compressed.max(1) as f64,
        100.0 * compressed as f64 / original.max(1) as f64
    );
    println!(
        "time:  {secs:.2} s, {}/s of original data ({COUPLES} couples, {} worker processes)",
        size((original as f64 / secs.max(1e-9)) as u64),
        2 * COUPLES
    );
    println!("\nwhere the time went (stats of the pipeline):\n{stats}");
    if failures > 0 {
        println!("FAILED: {failures} file(s); see the messages above");
    } else {
        println!("all {} files stored and verified", stored.len());
    }

    if args.keep {
        println!("backup kept in {}", out.display());
    } else if let Err(e) = fs::remove_dir_all(&out) {
        eprintln!("backup: cannot remove {}: {e}", out.display());
        failures += 1;
    }
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
