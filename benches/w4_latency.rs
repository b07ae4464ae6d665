//! W4 (DESIGN §5): one item submitted and awaited through 3 process stages — forkpipe's
//! `submit` + `wait` in direct mode and in fork-server mode (each in a fresh child process,
//! `forkpipe::init()` first in the second) next to the bare 3-hop socketpair round trip, in
//! the same run.
//!
//! `cargo bench --bench w4_latency` (add `-- --test` for a quick smoke run).

mod bare;

use std::time::Instant;

use forkpipe::{Pipeline, Stage};

fn forkpipe_latencies(rounds: usize) -> Vec<u64> {
    let inc = || Stage::map("inc", |x: u64| x + 1).subprocess();
    let running = Pipeline::new(inc())
        .then(inc())
        .then(inc())
        .start()
        .expect("start");
    let mut lat = Vec::with_capacity(rounds);
    for x in 0..rounds as u64 {
        let t = Instant::now();
        let v = running.submit(x).expect("submit").wait().expect("item");
        lat.push(t.elapsed().as_nanos() as u64);
        assert_eq!(v, x + 3);
    }
    let report = running.shutdown().expect("shutdown");
    assert!(report.is_graceful());
    lat
}

fn main() {
    let rounds = if bare::test_mode() { 200 } else { 20_000 };
    if bare::child_mode().is_some() {
        let mut f = forkpipe_latencies(rounds);
        let (p50, p99) = (
            bare::percentile(&mut f, 0.5),
            bare::percentile(&mut f, 0.99),
        );
        println!("{p50} {p99}");
        return;
    }
    let runs = if bare::test_mode() { 1 } else { 3 };
    // (bare, direct, fork-server) × (p50, p99), in ns; the modes alternate.
    let mut got = [[vec![], vec![]], [vec![], vec![]], [vec![], vec![]]];
    for _ in 0..runs {
        let mut b = bare::chain_latencies(rounds, 3);
        let b = [
            bare::percentile(&mut b, 0.5),
            bare::percentile(&mut b, 0.99),
        ];
        for (m, p) in [(0, b), (1, child("direct")), (2, child("server"))] {
            got[m][0].push(p[0] as f64);
            got[m][1].push(p[1] as f64);
        }
    }
    let [b, d, s] = got.map(|[mut p50, mut p99]| [bare::median(&mut p50), bare::median(&mut p99)]);
    println!(
        "W4 latency: one u64 through 3 process stages, {rounds} rounds (median of {runs} runs)"
    );
    for (what, [p50, p99]) in [
        ("forkpipe direct ", d),
        ("forkpipe server ", s),
        ("bare socketpair ", b),
    ] {
        println!(
            "  {what} p50 {:>7.1} µs   p99 {:>7.1} µs",
            p50 / 1e3,
            p99 / 1e3
        );
    }
    println!(
        "  p50 ratio direct {:>7.2} x   (target <= 2 x)",
        d[0] / b[0]
    );
    println!("  p50 ratio server {:>7.2} x", s[0] / b[0]);
}

/// p50 and p99 (ns) measured by a child in `mode`.
fn child(mode: &str) -> [u64; 2] {
    let out = bare::in_child(mode);
    let mut v = out.split_whitespace().map(|n| n.parse().expect("ns"));
    [v.next().expect("p50"), v.next().expect("p99")]
}
