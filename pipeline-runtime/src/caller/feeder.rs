//! The feeder: the thread that pulls the pipeline's input (the user's iterator, a source,
//! or submitted work items) and sends it to the first stage, within the window.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};

use crate::caller::output::{IDLE_SERVICE, Output};
use crate::caller::threads::Rt;
use crate::error::Error;
use crate::stage::{Body, Rec};

/// Pulls items from the input and feeds them to the first stage, within the window.
pub(crate) enum Feed<In> {
    Iter(Box<dyn Iterator<Item = In> + Send>),
    /// A source: the iterator is made on the feeding thread.
    Lazy(
        String,
        Box<dyn FnOnce() -> Box<dyn Iterator<Item = In> + Send> + Send>,
    ),
    Chan(Receiver<(u64, In)>),
}

pub(crate) fn spawn_feeder<In: Send + 'static>(
    feed: Feed<In>,
    mut out: Output<In>,
    rt: &Rt,
) -> io::Result<()> {
    let stop = rt.stop.clone();
    let shared = Arc::clone(&rt.shared);
    let in_user = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&in_user);
    rt.threads.spawn_flagged("feeder", flag, move || {
        let user = |on: bool| in_user.store(on, Ordering::Release);
        let window = &shared.window;
        let mut chunk = 1usize;
        let mut source: Option<String> = None;
        let feed = match feed {
            Feed::Lazy(name, make) => {
                source = Some(name);
                user(true);
                let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(make));
                user(false);
                match made {
                    Ok(it) => Feed::Iter(it),
                    Err(p) => {
                        let message = crate::error::panic_message(p.as_ref());
                        Feed::Iter(Box::new(std::iter::once_with(move || -> In {
                            std::panic::panic_any(message)
                        })))
                    }
                }
            }
            f => f,
        };
        let ok = match feed {
            Feed::Lazy(..) => unreachable!("made into an iterator above"),
            Feed::Iter(mut it) => {
                let mut seq = 0u64;
                loop {
                    let mut n = window.try_take(chunk);
                    if n == 0 {
                        if out.flush().is_err() {
                            break false;
                        }
                        n = loop {
                            match window.take_timeout(chunk, IDLE_SERVICE) {
                                Some(n) => break n,
                                None => {
                                    if out.service().is_err() {
                                        break 0;
                                    }
                                }
                            }
                        };
                        if n == 0 {
                            break false;
                        }
                    }
                    let t0 = Instant::now();
                    let mut batch = Vec::with_capacity(n);
                    let mut ended = false;
                    for _ in 0..n {
                        user(true);
                        let next =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| it.next()));
                        user(false);
                        match next {
                            Ok(Some(x)) => {
                                batch.push(Rec {
                                    seq,
                                    body: Body::One(x),
                                });
                                seq += 1;
                            }
                            Ok(None) => {
                                ended = true;
                                break;
                            }
                            Err(p) => {
                                let message = crate::error::panic_message(p.as_ref());
                                let e = Error::Input {
                                    stage: source.clone(),
                                    item: seq,
                                    message,
                                };
                                batch.push(Rec {
                                    seq,
                                    body: Body::Failed(u32::MAX, Box::new(e)),
                                });
                                seq += 1;
                                ended = true;
                                break;
                            }
                        }
                    }
                    let unused = n - batch.len();
                    shared.issued.store(seq, Ordering::Release);
                    window.give_back(unused);
                    if !batch.is_empty() && out.send(batch, &stop).is_err() {
                        break false;
                    }
                    if ended {
                        break true;
                    }
                    let slow = t0.elapsed() > Duration::from_millis(1);
                    chunk = if slow {
                        (chunk / 2).max(1)
                    } else {
                        (chunk * 2).min(512)
                    };
                    if out.flush().is_err() {
                        break false;
                    }
                }
            }
            Feed::Chan(rx) => loop {
                let first = match rx.try_recv() {
                    Ok(x) => x,
                    Err(_) => {
                        if out.flush().is_err() {
                            break false;
                        }
                        let got = loop {
                            select! {
                                recv(rx) -> r => break r.ok(),
                                recv(stop) -> _ => break None,
                                default(IDLE_SERVICE) => {
                                    if out.service().is_err() {
                                        break None;
                                    }
                                }
                            }
                        };
                        match got {
                            Some(x) => x,
                            None => {
                                break stop.try_recv()
                                    != Err(crossbeam_channel::TryRecvError::Disconnected);
                            }
                        }
                    }
                };
                let mut batch = vec![first];
                while batch.len() < 512 {
                    match rx.try_recv() {
                        Ok(x) => batch.push(x),
                        Err(_) => break,
                    }
                }
                // Credit is taken per item by `submit` (see `Running::submit`).
                let batch = batch
                    .into_iter()
                    .map(|(seq, x)| Rec {
                        seq,
                        body: Body::One(x),
                    })
                    .collect();
                if out.send(batch, &stop).is_err() {
                    break false;
                }
            },
        };
        if ok && stop.try_recv() != Err(crossbeam_channel::TryRecvError::Disconnected) {
            let _ = out.flush();
            out.finish();
        }
    })
}
