//! Calling user code: every stage function, determiner and `init` runs under
//! `catch_unwind`, and its panic becomes the item's error.
//!
//! In forkpipe's own processes (the supervisor and its workers) a panic hook records the
//! panic's location for the item's error and prints nothing; it also copies the message
//! into the worker's shared slot, so that a build with `panic = "abort"` still tells the
//! supervisor why the worker died. In the caller the hook hands over to the one that was
//! installed before.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::{DeterminerPanic, Error, Worker, panic_message};
use crate::item::{Body, Emit, Rec};

/// Runs the stage function on one record, catching panics: the heart of every worker.
pub(crate) fn apply<In, Out>(
    f: &mut impl FnMut(In, &mut Emit<Out>) -> Result<(), String>,
    stage_idx: u32,
    stage: &str,
    worker: Worker,
    seq: u64,
    body: Body<In>,
    emit: &mut Emit<Out>,
) -> Body<Out> {
    let inputs = match body {
        Body::One(x) => {
            return match run_one(f, stage, worker, seq, x, emit) {
                Ok(()) => take_outputs(emit, stage_idx),
                Err(e) => {
                    emit.clear();
                    Body::Failed(stage_idx, e)
                }
            };
        }
        Body::Many(xs) => xs,
        Body::Dropped(s) => return Body::Dropped(s),
        Body::Consumed(s, n) => return Body::Consumed(s, n),
        Body::Failed(i, e) => return Body::Failed(i, e),
    };
    for x in inputs {
        if let Err(e) = run_one(f, stage, worker, seq, x, emit) {
            emit.clear();
            return Body::Failed(stage_idx, e);
        }
    }
    take_outputs(emit, stage_idx)
}

fn take_outputs<Out>(emit: &mut Emit<Out>, stage_idx: u32) -> Body<Out> {
    match emit.len() {
        0 => Body::Dropped(stage_idx),
        1 => Body::One(emit.take_one()),
        _ => Body::Many(emit.take_all()),
    }
}

thread_local! {
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// True in forkpipe's own processes (the supervisor and its workers).
pub(crate) static IN_FORKED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Installs, once per process and in the caller (never in a forked child: the hook's lock
/// may have been held by another thread at fork time), a panic hook that in forkpipe's
/// processes prints nothing — a stage's panic becomes the item's error, with its location —
/// and elsewhere hands over to the hook that was there before.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_FORKED.load(std::sync::atomic::Ordering::Relaxed) {
                record_panic(info);
            } else {
                previous(info);
            }
        }));
    });
}

fn record_panic(info: &std::panic::PanicHookInfo<'_>) {
    let at = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
    // For a build with `panic = "abort"`: the supervisor reads this after the abort.
    crate::os::current::with_slot(|slot| {
        let msg = panic_message(info.payload());
        let text = match &at {
            Some(a) => format!("{msg} (at {a})"),
            None => msg,
        };
        slot.set_panic(&text);
    });
    PANIC_AT.with(|p| *p.borrow_mut() = at);
}

fn run_one<In, Out>(
    f: &mut impl FnMut(In, &mut Emit<Out>) -> Result<(), String>,
    stage: &str,
    worker: Worker,
    seq: u64,
    x: In,
    emit: &mut Emit<Out>,
) -> Result<(), Box<Error>> {
    match guarded(stage, worker, seq, || f(x, emit)) {
        None => Ok(()),
        Some(e) => Err(Box::new(e)),
    }
}

/// Runs user code `f` for item `seq`, catching a panic: `None` if it succeeded, else the
/// item's error (`Failed` with its message, or `Panicked` with the panic message and, in
/// worker processes, its location).
pub(crate) fn guarded(
    stage: &str,
    worker: Worker,
    seq: u64,
    f: impl FnOnce() -> Result<(), String>,
) -> Option<Error> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => None,
        Ok(Err(message)) => Some(Error::Failed {
            stage: stage.to_string(),
            item: seq,
            worker,
            message,
        }),
        Err(payload) => Some(panic_error(stage, worker, seq, payload.as_ref())),
    }
}

/// The error of item `seq` whose user code panicked with `payload`: its message (a
/// determiner's says so) and, in worker processes, where it panicked.
pub(crate) fn panic_error(
    stage: &str,
    worker: Worker,
    seq: u64,
    payload: &(dyn Any + Send),
) -> Error {
    let mut message = match payload.downcast_ref::<DeterminerPanic>() {
        Some(DeterminerPanic(m)) => format!("determiner of stage '{stage}' panicked: {m}"),
        None => panic_message(payload),
    };
    if let Some(at) = PANIC_AT.with(|p| p.borrow_mut().take()) {
        message = format!("{message} (at {at})");
    }
    Error::Panicked {
        stage: stage.to_string(),
        item: seq,
        worker,
        message,
    }
}

/// What a batch loop says of its stage: index, name, the worker.
pub(crate) type Who<'a> = (u32, &'a str, Worker);

/// The records left in `recs` through `f` into `out`, without a guard: the loop of
/// `kernel::apply_batch`, which catches a panic around it and resumes it. `seq` is the
/// record being applied.
#[inline(always)]
pub(crate) fn batch_loop<In, Out>(
    f: &mut impl FnMut(In, &mut Emit<Out>) -> Result<(), String>,
    recs: &mut std::vec::IntoIter<Rec<In>>,
    out: &mut Vec<Rec<Out>>,
    emit: &mut Emit<Out>,
    who: Who<'_>,
    seq: &mut u64,
) {
    for rec in recs.by_ref() {
        *seq = rec.seq;
        let body = apply_unguarded(f, who, rec, emit);
        out.push(Rec { seq: *seq, body });
    }
}

/// The values left in `items` (item `first` is `out`'s first) through `f` into `out`,
/// without a guard, while each gives exactly one output: the loop of a dense batch in
/// `kernel::apply_batch`. Returns the body of the first item that does not (its outputs,
/// none, or its failure), or `None` if every item did. An item's number is `first` plus
/// the outputs before it, also when `f` panics on it.
#[inline(always)]
pub(crate) fn dense_loop<In, Out>(
    f: &mut impl FnMut(In, &mut Emit<Out>) -> Result<(), String>,
    items: &mut std::vec::IntoIter<In>,
    out: &mut Vec<Out>,
    emit: &mut Emit<Out>,
    who: Who<'_>,
    first: u64,
) -> Option<Body<Out>> {
    for x in items.by_ref() {
        let ran = f(x, emit);
        if ran.is_ok() && emit.len() == 1 {
            out.push(emit.take_one());
            continue;
        }
        return Some(outcome(ran, emit, who, first + out.len() as u64));
    }
    None
}

/// One record through the stage function, without a guard (see [`batch_loop`]).
#[inline(always)]
fn apply_unguarded<In, Out>(
    f: &mut impl FnMut(In, &mut Emit<Out>) -> Result<(), String>,
    who: Who<'_>,
    rec: Rec<In>,
    emit: &mut Emit<Out>,
) -> Body<Out> {
    let ran = match rec.body {
        Body::One(x) => f(x, emit),
        Body::Many(xs) => xs.into_iter().try_for_each(|x| f(x, emit)),
        Body::Dropped(s) => return Body::Dropped(s),
        Body::Consumed(s, n) => return Body::Consumed(s, n),
        Body::Failed(i, e) => return Body::Failed(i, e),
    };
    outcome(ran, emit, who, rec.seq)
}

/// Item `seq`'s body once the stage function ran (`ran`) on its inputs: what it emitted,
/// or its failure.
#[inline(always)]
fn outcome<Out>(
    ran: Result<(), String>,
    emit: &mut Emit<Out>,
    (stage_idx, stage, worker): Who<'_>,
    seq: u64,
) -> Body<Out> {
    match ran {
        Ok(()) => take_outputs(emit, stage_idx),
        Err(message) => {
            emit.clear();
            Body::Failed(
                stage_idx,
                Box::new(Error::Failed {
                    stage: stage.to_string(),
                    item: seq,
                    worker,
                    message,
                }),
            )
        }
    }
}
