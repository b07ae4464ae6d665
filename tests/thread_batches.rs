//! Thread stages pass consecutive items as dense batches (their values only) and apply the
//! stage function over a whole batch under one guard. What a user relies on stays true
//! inside a batch: exactly the item that fails fails, no item runs twice after a panic, an
//! item that is dropped, fails or gives several outputs keeps its place, and a stateful
//! stage starts afresh after a panic.
//!
//! The feeder's chunks grow 1, 2, 4, … 4096 items, so items 4095..=8190 are its 13th chunk:
//! the cases put their faults at its first, a middle and its last item, and at item 0.
//! (What they assert holds wherever the batches begin.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use forkpipe::{Emit, Error, Pipeline, Stage};

const N: u64 = 10_000;

/// How often each item's stage function ran.
struct Runs(Vec<AtomicU32>);

impl Runs {
    fn new() -> Arc<Self> {
        Arc::new(Runs((0..N).map(|_| AtomicU32::new(0)).collect()))
    }

    fn ran(&self, x: u64) {
        self.0[x as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn each_once(&self) {
        let odd: Vec<(usize, u32)> = (self.0.iter().map(|n| n.load(Ordering::Relaxed)))
            .enumerate()
            .filter(|&(_, n)| n != 1)
            .collect();
        assert!(
            odd.is_empty(),
            "items that did not run exactly once: {odd:?}"
        );
    }
}

/// The outputs of `0..N` through `p`, in order, and the errors by item.
fn outcomes(p: Pipeline<u64, u64>) -> (Vec<u64>, BTreeMap<u64, Error>) {
    let mut outputs = Vec::new();
    let mut errors = BTreeMap::new();
    for r in p.run(0..N).expect("start") {
        match r {
            Ok(v) => outputs.push(v),
            Err(e) => {
                let item = e.item().expect("an item's error");
                assert!(errors.insert(item, e).is_none(), "item {item} failed twice");
            }
        }
    }
    (outputs, errors)
}

/// `x + 1` for every `x` but those in `skip`.
fn incremented_except(skip: &[u64]) -> Vec<u64> {
    (0..N)
        .filter(|x| !skip.contains(x))
        .map(|x| x + 1)
        .collect()
}

#[test]
fn a_map_that_panics_at_the_first_a_middle_and_the_last_item_of_a_batch() {
    for at in [0, 4095, 6000, 8190] {
        let runs = Runs::new();
        let r = Arc::clone(&runs);
        let p = Pipeline::new(Stage::map("inc", move |x: u64| {
            r.ran(x);
            assert!(x != at, "boom at {x}");
            x + 1
        }));
        let (outputs, errors) = outcomes(p);
        assert_eq!(errors.keys().copied().collect::<Vec<_>>(), [at]);
        let Error::Panicked { item, message, .. } = &errors[&at] else {
            panic!("item {at} panicked: {:?}", errors[&at]);
        };
        assert_eq!(*item, at);
        assert!(message.contains(&format!("boom at {at}")), "{message}");
        assert_eq!(outputs, incremented_except(&[at]), "the others, in order");
        runs.each_once();
    }
}

#[test]
fn an_error_then_a_panic_in_one_batch_fail_exactly_their_items() {
    let runs = Runs::new();
    let r = Arc::clone(&runs);
    let p = Pipeline::new(Stage::try_map("checked", move |x: u64| {
        r.ran(x);
        match x {
            5000 => Err(format!("{x} is refused")),
            7000 => panic!("boom at {x}"),
            _ => Ok(x + 1),
        }
    }))
    .then(Stage::map("same", |x: u64| x));
    let (outputs, errors) = outcomes(p);
    assert_eq!(errors.keys().copied().collect::<Vec<_>>(), [5000, 7000]);
    assert!(
        matches!(&errors[&5000], Error::Failed { item: 5000, message, .. } if message == "5000 is refused"),
        "{:?}",
        errors[&5000]
    );
    assert!(
        matches!(&errors[&7000], Error::Panicked { item: 7000, .. }),
        "{:?}",
        errors[&7000]
    );
    assert_eq!(outputs, incremented_except(&[5000, 7000]));
    runs.each_once();
}

#[test]
fn dropped_and_many_output_items_keep_their_place_in_a_batch() {
    let p = Pipeline::new(Stage::emit(
        "shaped",
        |x: u64, out: &mut Emit<u64>| match x {
            4095 | 6000 => {}
            7000 | 8190 => {
                out.emit(x + 1);
                out.emit(x + 1);
            }
            _ => out.emit(x + 1),
        },
    ))
    .then(Stage::map("same", |x: u64| x));
    let (outputs, errors) = outcomes(p);
    assert!(errors.is_empty(), "{errors:?}");
    let expected: Vec<u64> = (0..N)
        .flat_map(|x| match x {
            4095 | 6000 => vec![],
            7000 | 8190 => vec![x + 1, x + 1],
            _ => vec![x + 1],
        })
        .collect();
    assert_eq!(outputs, expected);
}

#[test]
fn a_stateful_stage_panicking_mid_batch_starts_afresh() {
    let runs = Runs::new();
    let inits = Arc::new(AtomicU32::new(0));
    let (r, i) = (Arc::clone(&runs), Arc::clone(&inits));
    let stage = Stage::stateful(
        "counting",
        move || -> Result<u64, String> {
            i.fetch_add(1, Ordering::Relaxed);
            Ok(0)
        },
        move |x: u64, seen: &mut u64, out: &mut Emit<u64>| -> Result<(), String> {
            r.ran(x);
            *seen += 1;
            assert!(x != 6000, "boom at {x}");
            out.emit(*seen);
            Ok(())
        },
    );
    let (outputs, errors) = outcomes(Pipeline::new(stage));
    assert_eq!(errors.keys().copied().collect::<Vec<_>>(), [6000]);
    assert!(matches!(errors[&6000], Error::Panicked { item: 6000, .. }));
    assert_eq!(
        inits.load(Ordering::Relaxed),
        2,
        "init ran again after the panic"
    );
    // Items before the panic counted 1..=6000; after it, the fresh state counts from 1.
    let expected: Vec<u64> = (1..=6000).chain(1..N - 6000).collect();
    assert_eq!(outputs, expected);
    runs.each_once();
}
