//! W1 (DESIGN §5): 1,000,000 `u64` through 3 process stages (`x + 1`), ordered — forkpipe
//! next to the bare socketpair + bincode chain, batched, measured in the same run.
//!
//! `cargo bench --bench w1_overhead` (add `-- --test` for a quick smoke run).

mod bare;

use std::time::Instant;

use forkpipe::{Pipeline, Stage};

fn forkpipe_throughput(items: u64) -> f64 {
    let inc = || Stage::map("inc", |x: u64| x + 1).subprocess();
    let p = Pipeline::new(inc()).then(inc()).then(inc());
    let t = Instant::now();
    let mut expect = 3u64;
    for r in p.run(0..items).expect("start") {
        assert_eq!(r.expect("item"), expect);
        expect += 1;
    }
    let dt = t.elapsed();
    assert_eq!(expect, items + 3);
    items as f64 / dt.as_secs_f64()
}

fn main() {
    let test = bare::test_mode();
    let (items, runs) = if test { (10_000, 1) } else { (1_000_000, 5) };
    let mut fp = Vec::new();
    let mut bare_v = Vec::new();
    for _ in 0..runs {
        bare_v.push(bare::chain_throughput(items, 3));
        fp.push(forkpipe_throughput(items));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (f, b) = (med(&mut fp), med(&mut bare_v));
    println!("W1 overhead: {items} u64 through 3 process stages, ordered (median of {runs})");
    println!("  forkpipe        {:>8.2} M items/s", f / 1e6);
    println!(
        "  bare socketpair {:>8.2} M items/s  (bincode, 64 KiB frames)",
        b / 1e6
    );
    println!(
        "  ratio           {:>8.0} %   (target >= 50 %)",
        100.0 * f / b
    );
}
