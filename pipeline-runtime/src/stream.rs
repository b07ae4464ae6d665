//! Running `stream` stages: the stage function pulls its input as an iterator ([`Items`])
//! and its outputs become new items.
//!
//! One loop serves thread and process workers: [`run`] drives the user's iterator, and a
//! [`StreamIo`] (a channel pair for threads, the links for processes) supplies the input
//! and takes the outputs. Each consumed input is counted and reported downstream as a
//! `CONSUMED` record, which tells the collector that those items' room in the pipeline is
//! free (they have no outcome of their own). An item that failed before the stage passes
//! through as an error with a new number; outputs are numbered `w, w + n, w + 2n, …` for
//! worker `w` of `n`, so numbers never collide.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use crate::error::{Error, Worker, panic_message};
use crate::stage::{Items, Pull, StreamFn};

/// A stream worker's input and output.
pub(crate) trait StreamIo<In, Out>: Pull<In> {
    fn emit(&mut self, value: Out);
    fn fail(&mut self, e: Error);
    /// Items consumed so far.
    fn position(&self) -> u64;
    /// End: everything flushed and reported.
    fn finish(&mut self);
}

/// Runs the stream function of stage `name` on one worker's share of the input.
pub(crate) fn run<In: 'static, Out: 'static, P: StreamIo<In, Out> + 'static>(
    f: &StreamFn<In, Out>,
    io: Rc<RefCell<P>>,
    name: &str,
    worker: Worker,
) {
    let src: Rc<RefCell<dyn Pull<In>>> = io.clone();
    let mut failure = None;
    match catch_unwind(AssertUnwindSafe(|| f(Items { src }))) {
        Ok(mut it) => loop {
            match catch_unwind(AssertUnwindSafe(|| it.next())) {
                Ok(Some(v)) => io.borrow_mut().emit(v),
                Ok(None) => break,
                Err(p) => {
                    failure = Some(panic_message(p.as_ref()));
                    break;
                }
            }
        },
        Err(p) => failure = Some(panic_message(p.as_ref())),
    }
    let mut io = io.borrow_mut();
    if let Some(message) = failure {
        let item = io.position();
        io.fail(Error::Panicked {
            stage: name.to_string(),
            item,
            worker,
            message: format!("{message} (in the stream, after {item} items)"),
        });
    }
    // What the function did not take is consumed without output, so the stages before
    // this one can finish.
    while io.pull().is_some() {}
    io.finish();
}
