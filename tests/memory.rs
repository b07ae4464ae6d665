//! Memory stays flat on a long stream through a slow last stage (FAULTS E1, DESIGN §5
//! "memory"): the items pulled from the input minus the results delivered stay within the
//! pipeline's bounds at every sample, and the resident size after 10,000,000 items is the
//! one after 1,000,000, within a few MiB.
//!
//! One test, in its own binary (it measures this process's memory).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use forkpipe::{Pipeline, Source, Stage};
use libtest_mimic::{Arguments, Trial};

fn flat_over_ten_million() {
    const N: u64 = 10_000_000;
    const QUEUE: usize = 256;
    let pulled = Arc::new(AtomicU64::new(0));
    let p = {
        let pulled = Arc::clone(&pulled);
        Pipeline::new(Source::new("numbers", move || {
            (0..N).inspect(move |_| {
                pulled.fetch_add(1, Ordering::Relaxed);
            })
        }))
        .then(Stage::map("inc", |x: u64| x + 1).subprocess().queue(QUEUE))
        .then(
            // The slow last stage: a little real work per item, on one thread.
            Stage::map("slow", |x: u64| {
                let mut h = x;
                for _ in 0..40 {
                    h = h.rotate_left(5) ^ 0x9e37_79b9_7f4a_7c15;
                }
                std::hint::black_box(h);
                x
            })
            .queue(QUEUE),
        )
    };
    // The pipeline's own bound: the window (sum of queue × workers — the process stage's
    // times 1 + RUN_AHEAD —, plus one default queue for the input) and one feeding chunk.
    let bound = (QUEUE * (2 + forkpipe::RUN_AHEAD) + forkpipe::DEFAULT_QUEUE + 512) as u64;
    let mut delivered = 0u64;
    let mut worst = 0u64;
    let mut rss_at_1m = 0;
    for r in p.results().expect("start") {
        let v = r.expect("item");
        assert_eq!(v, delivered + 1, "in order");
        delivered += 1;
        if delivered.is_multiple_of(4096) {
            let in_flight = pulled.load(Ordering::Relaxed) - delivered;
            worst = worst.max(in_flight);
            assert!(
                in_flight <= bound,
                "pulled - delivered = {in_flight} > bound {bound}"
            );
        }
        if delivered == 1_000_000 {
            rss_at_1m = common::rss_kib();
        }
    }
    assert_eq!(delivered, N);
    let rss_end = common::rss_kib();
    eprintln!(
        "10M items: worst pulled - delivered {worst} (bound {bound}); RSS {rss_at_1m} KiB at 1M, {rss_end} KiB at 10M"
    );
    assert!(
        rss_end <= rss_at_1m + 8 * 1024,
        "RSS grew from {rss_at_1m} KiB at 1M items to {rss_end} KiB at 10M"
    );
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let trials = vec![Trial::test(
        "memory_flat_over_10m_items_slow_last_stage",
        || {
            let base = common::Baseline::now();
            common::with_deadline(600, flat_over_ten_million);
            base.assert_clean("memory_flat_over_10m_items_slow_last_stage", true);
            Ok(())
        },
    )];
    libtest_mimic::run(&args, trials).exit();
}
