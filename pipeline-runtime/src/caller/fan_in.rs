//! Fan-in: `pipeline![(evens(500), odds(500)) | double]`, several sources merged.
//!
//! Each source runs on a thread of its own, as the single source of a pipeline runs on the
//! feeder's: its iterator is made and pulled there, in user code (the thread is flagged, so
//! a stop does not wait for a source that blocks forever). What they pull goes into one
//! bounded channel, which the feeder numbers in arrival order and feeds like any input: items
//! interleave as they are produced, and one source's items keep their order.
//!
//! A source that panics (making its iterator or pulling an item) sends one failure naming it
//! and ends; the others go on. The merged input ends when every source has.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crossbeam_channel::{Receiver, Sender, select};

use crate::caller::threads::{Rt, User};

/// An input iterator, pulled on a thread of the pipeline.
pub(crate) type Iter<In> = Box<dyn Iterator<Item = In> + Send>;

/// How many pulled items may wait for the feeder, per source.
const WAITING: usize = 64;

/// One source, as [`crate::Source`] keeps it: its name and how to make its iterator.
pub(crate) type Made<In> = (String, Box<dyn FnOnce() -> Iter<In> + Send>);

/// What a source's thread pulled.
pub(crate) enum Pulled<In> {
    Item(In),
    /// The source (by name) panicked, with this message; it has ended.
    Panicked(String, String),
}

/// Starts a thread per source; returns the channel their items come out of (it ends when
/// every source has ended).
pub(crate) fn spawn_sources<In: Send + 'static>(
    sources: Vec<Made<In>>,
    rt: &Rt,
) -> io::Result<Receiver<Pulled<In>>> {
    let (tx, rx) = crossbeam_channel::bounded(WAITING * sources.len().max(1));
    for (name, make) in sources {
        let (tx, stop) = (tx.clone(), rt.stop.clone());
        let in_user = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&in_user);
        rt.threads
            .spawn_flagged(&format!("source-{name}"), flag, move || {
                pull_all(&name, make, &tx, &stop, User(&in_user));
            })?;
    }
    Ok(rx)
}

/// Pulls one source to its end (or to its panic, or to the pipeline's stop).
fn pull_all<In>(
    name: &str,
    make: Box<dyn FnOnce() -> Iter<In> + Send>,
    tx: &Sender<Pulled<In>>,
    stop: &Receiver<()>,
    user: User<'_>,
) {
    let panicked = |p: Box<dyn std::any::Any + Send>| {
        Pulled::Panicked(name.to_string(), crate::error::panic_message(p.as_ref()))
    };
    let mut it = match user.run(make) {
        Ok(it) => it,
        Err(p) => return send(tx, panicked(p), stop),
    };
    loop {
        match user.run(|| it.next()) {
            Ok(Some(x)) => {
                if !send_ok(tx, Pulled::Item(x), stop) {
                    return;
                }
            }
            Ok(None) => return,
            Err(p) => return send(tx, panicked(p), stop),
        }
    }
}

fn send<In>(tx: &Sender<Pulled<In>>, msg: Pulled<In>, stop: &Receiver<()>) {
    send_ok(tx, msg, stop);
}

/// Sends `msg` unless the pipeline stops first; false if it did (or the feeder is gone).
fn send_ok<In>(tx: &Sender<Pulled<In>>, msg: Pulled<In>, stop: &Receiver<()>) -> bool {
    select! {
        send(tx, msg) -> r => r.is_ok(),
        recv(stop) -> _ => false,
    }
}
