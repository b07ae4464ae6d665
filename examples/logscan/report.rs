//! The report: what the merged summaries say, printed on stdout.

use super::*;

pub(super) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `1234567` -> `1,234,567`.
pub(super) fn thousands(n: u64) -> String {
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

pub(super) fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

pub(super) struct Run {
    pub(super) source: String,
    pub(super) prepare: Option<Duration>,
    pub(super) elapsed: Duration,
    pub(super) lines_read: u64,
    pub(super) bytes_read: u64,
    pub(super) chunks: u64,
    pub(super) total: Summary,
    pub(super) rejected: Vec<Error>,
    pub(super) failures: Vec<String>,
}

pub(super) fn report(out: &mut impl Write, run: &Run) -> io::Result<()> {
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
