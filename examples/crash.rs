//! Scratch check of crash handling (kept small; real tests live in tests/).
use forkpipe::prelude::*;
fn main() {
    timeouts();
    let n: u64 = 1000;
    let t = std::time::Instant::now();
    let p = Pipeline::new(Stage::map("a", |x: u64| x + 1).subprocess().workers(2))
        .then(Stage::map("poison", |x: u64| -> u64 { if x > 0 { std::process::abort() } x }).subprocess().workers(2))
        .then(Stage::map("c", |x: u64| x + 1).subprocess());
    let mut ok = 0; let mut errs = vec![];
    for r in p.run(0..n).unwrap() { match r { Ok(_) => ok += 1, Err(e) => errs.push(e.to_string()) } }
    println!("ok {ok} errs {} in {:?}", errs.len(), t.elapsed());
    for e in errs.iter().take(3).chain(errs.iter().rev().take(2)) { println!("  {e}"); }
}

#[allow(dead_code)]
fn timeouts() {
    let p = Pipeline::new(
        Stage::map("slow", |x: u64| {
            if x == 5 {
                // ignore SIGTERM, spin
                unsafe extern "C" { fn signal(sig: i32, h: usize) -> usize; }
                unsafe { signal(15, 1) };
                loop { std::hint::spin_loop() }
            }
            x
        })
        .subprocess()
        .timeout(std::time::Duration::from_millis(300)),
    );
    let t = std::time::Instant::now();
    let out: Vec<_> = p.run(0..10u64).unwrap().collect();
    println!("{:?} in {:?}", out.iter().filter(|r| r.is_err()).map(|e| e.as_ref().unwrap_err().to_string()).collect::<Vec<_>>(), t.elapsed());
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 9);
}
