use forkpipe::prelude::*;
use std::time::Instant;
fn main() {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    let t = Instant::now();
    let p = Pipeline::new(Stage::map("a", |x: u64| x + 1).subprocess())
        .then(Stage::map("b", |x: u64| x + 1).subprocess())
        .then(Stage::map("c", |x: u64| x + 1).subprocess());
    let mut sum = 0u64; let mut k = 0u64;
    for r in p.run(0..n).unwrap() { let v = r.unwrap(); assert_eq!(v, k + 3); k += 1; sum += v; }
    let dt = t.elapsed();
    println!("{n} items in {:?}: {:.2} M items/s (sum {sum})", dt, n as f64 / dt.as_secs_f64() / 1e6);
}
