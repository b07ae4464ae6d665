//! W1t (DESIGN §5): 10,000,000 `u64` through 3 thread stages (`Stage::map("inc", |x| x + 1)`,
//! no `.subprocess()`), ordered — forkpipe next to a bare crossbeam chain: a feeding thread,
//! 3 stage threads and the consumer joined by bounded channels (`CAP` batches each) passing
//! `Vec<u64>` batches of 1,024, each stage adding one in place and passing the batch on.
//! Alternating in one process (bare, forkpipe, …), median of 5 runs each.
//!
//! Both sides are timed end to end (forkpipe: `run` to the results iterator's end and drop;
//! bare: spawning the threads to joining them) and in steady state (the 1,000,000th output
//! to the last), see `bare::Rates`. Every output is checked, in order, on both sides.
//!
//! `cargo bench --bench w1_threads` (add `-- --test` for a quick smoke run).

mod bare;

use crossbeam_channel::{Receiver, Sender, bounded};

/// Items per batch of the bare chain.
const BATCH: u64 = 1024;
/// Batches each bare channel holds.
const CAP: usize = 16;

fn forkpipe_run(items: u64) -> bare::Rates {
    bare::w1_forkpipe(items, |s| s)
}

fn bare_stage(rx: Receiver<Vec<u64>>, tx: Sender<Vec<u64>>) {
    for mut batch in rx {
        for x in &mut batch {
            *x += 1;
        }
        tx.send(batch).expect("next stage");
    }
}

fn bare_run(items: u64) -> bare::Rates {
    let mut clock = bare::Clock::start(items);
    let (feed, mut rx) = bounded::<Vec<u64>>(CAP);
    let mut threads = vec![std::thread::spawn(move || {
        let mut x = 0;
        while x < items {
            let end = (x + BATCH).min(items);
            feed.send((x..end).collect()).expect("first stage");
            x = end;
        }
    })];
    for _ in 0..3 {
        let (tx, next) = bounded(CAP);
        let input = std::mem::replace(&mut rx, next);
        threads.push(std::thread::spawn(move || bare_stage(input, tx)));
    }
    let mut got = 0u64;
    for batch in rx {
        for x in batch {
            assert_eq!(x, got + 3, "bare chain out of order");
            got += 1;
            clock.tick(got);
        }
    }
    for t in threads {
        t.join().expect("bare thread");
    }
    assert_eq!(got, items);
    clock.finish()
}

fn main() {
    let (items, fp, bare_v) = bare::alternate(bare_run, forkpipe_run);
    let runs = fp.len();
    println!(
        "W1t threads: {items} u64 through 3 thread stages (x + 1), ordered (median of {runs} alternating runs)"
    );
    bare::print_rates(&fp, &bare_v, "bare crossbeam");
    println!("  (bare: Vec<u64> batches of {BATCH}, bounded channels of {CAP} batches)");
}
