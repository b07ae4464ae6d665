//! W1 (DESIGN §5): 10,000,000 `u64` through 3 process stages (`x + 1`), ordered — forkpipe
//! (direct mode) next to the bare batched socketpair + bincode chain (`bare::chain_run`:
//! forked children, 64 KiB length-prefixed frames), alternating in one process (bare,
//! forkpipe, bare, forkpipe, …), median of 5 runs each.
//!
//! Both sides are timed the same two ways (see `bare::Rates`): end to end, from before the
//! first fork (forkpipe: before `run`) to after the last reap (forkpipe: after the results
//! iterator ended and was dropped, i.e. shutdown); and steady state, from the 1,000,000th
//! output to the last. Every output is checked, in order, on both sides.
//!
//! `cargo bench --bench w1_overhead` (add `-- --test` for a quick smoke run).

mod bare;

fn forkpipe_run(items: u64) -> bare::Rates {
    bare::w1_forkpipe(items, |s| s.subprocess())
}

fn main() {
    let (items, fp, bare_v) = bare::alternate(|n| bare::chain_run(n, 3), forkpipe_run);
    let runs = fp.len();
    println!(
        "W1 overhead: {items} u64 through 3 process stages (x + 1), ordered (median of {runs} alternating runs)"
    );
    bare::print_rates(&fp, &bare_v, "bare socketpair");
    println!("  (bare: socketpairs + bincode, 64 KiB frames, forks and reaps timed)");
}
