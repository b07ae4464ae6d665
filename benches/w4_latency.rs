//! W4 (DESIGN §5): one item submitted and awaited through 3 process stages — forkpipe's
//! `submit` + `wait` next to the bare 3-hop socketpair round trip, in the same run.
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
    let mut b = bare::chain_latencies(rounds, 3);
    let mut f = forkpipe_latencies(rounds);
    let (b50, b99) = (
        bare::percentile(&mut b, 0.5),
        bare::percentile(&mut b, 0.99),
    );
    let (f50, f99) = (
        bare::percentile(&mut f, 0.5),
        bare::percentile(&mut f, 0.99),
    );
    println!("W4 latency: one u64 through 3 process stages, {rounds} rounds");
    println!(
        "  forkpipe        p50 {:>7.1} µs   p99 {:>7.1} µs",
        f50 as f64 / 1e3,
        f99 as f64 / 1e3
    );
    println!(
        "  bare socketpair p50 {:>7.1} µs   p99 {:>7.1} µs",
        b50 as f64 / 1e3,
        b99 as f64 / 1e3
    );
    println!(
        "  p50 ratio       {:>7.2} x   (target <= 2 x)",
        f50 as f64 / b50 as f64
    );
}
