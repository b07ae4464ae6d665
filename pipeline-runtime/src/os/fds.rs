//! The registry of the runtime's own descriptors.
//!
//! `fork` copies every descriptor, `O_CLOEXEC` or not. A worker that keeps a copy of a socket
//! that is not its own stops end-of-stream from ever reaching that socket's reader, and could
//! read or write another pipeline's channel. DESIGN §3 decides that a forked child closes the
//! runtime's descriptors that are not its own and leaves the user's alone, so the runtime
//! must know its descriptors: every one is created, and every fork is done, while holding
//! this registry's lock. A child therefore inherits a registry that is exactly the set of
//! runtime descriptors it received, and closes those it does not own before anything else.
//!
//! The forking thread holds the lock across `fork`, so in the child the lock is held by the
//! child's only thread and can be released normally; the child then resets the registry to
//! the descriptors it kept ([`child_reset`]), which makes nested pipelines work too.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use crate::os::sys;

static REGISTRY: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

fn lock() -> MutexGuard<'static, BTreeSet<RawFd>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A runtime descriptor: registered while it lives in the user's process.
#[derive(Debug)]
pub(crate) struct RtFd(Option<OwnedFd>);

impl RtFd {
    fn fd(&self) -> &OwnedFd {
        self.0.as_ref().expect("descriptor present until drop")
    }
}

impl AsFd for RtFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd().as_fd()
    }
}

impl AsRawFd for RtFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd().as_raw_fd()
    }
}

impl Drop for RtFd {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            let mut reg = lock();
            reg.remove(&fd.as_raw_fd());
            drop(fd); // closed under the lock, so a concurrent fork never sees a stale number
            drop(reg);
        }
    }
}

fn register(reg: &mut BTreeSet<RawFd>, fd: OwnedFd) -> RtFd {
    reg.insert(fd.as_raw_fd());
    RtFd(Some(fd))
}

/// A registered `SOCK_SEQPACKET` pair.
pub(crate) fn seqpacket_pair() -> io::Result<(RtFd, RtFd)> {
    pair(sys::seqpacket_pair)
}

/// Removes a descriptor from the registry (it is about to be closed by its raw number).
pub(crate) fn unregister(fd: RawFd) {
    lock().remove(&fd);
}

/// Keeps a registered descriptor open for the life of the process, by its raw number.
pub(crate) fn into_raw(mut fd: RtFd) -> RawFd {
    let raw = fd.as_raw_fd();
    if let Some(owned) = fd.0.take() {
        std::mem::forget(owned);
    }
    raw
}

/// A registered `SOCK_STREAM` pair.
pub(crate) fn stream_pair() -> io::Result<(RtFd, RtFd)> {
    pair(sys::stream_pair)
}

fn pair(make: fn() -> io::Result<(OwnedFd, OwnedFd)>) -> io::Result<(RtFd, RtFd)> {
    let mut reg = lock();
    let (a, b) = make()?;
    Ok((register(&mut reg, a), register(&mut reg, b)))
}

/// Registers a descriptor made elsewhere (a pidfd).
pub(crate) fn adopt(fd: OwnedFd) -> RtFd {
    let mut reg = lock();
    register(&mut reg, fd)
}

/// What a fork returned, with the runtime descriptors the child inherited.
pub(crate) enum Fork {
    /// In the child: every runtime descriptor it inherited (it must close the foreign ones).
    Child(Vec<RawFd>),
    Parent(nix::unistd::Pid),
}

/// Forks while holding the registry lock, so the child's view of the runtime's descriptors
/// is exact.
///
/// # Safety
/// As [`sys::fork`]: the child must only run code that needs no lock another thread could
/// have held, and must leave with [`sys::exit_now`].
pub(crate) unsafe fn fork() -> io::Result<Fork> {
    let reg = lock();
    let snapshot: Vec<RawFd> = reg.iter().copied().collect();
    // SAFETY: forwarded to our caller's contract.
    let r = unsafe { sys::fork() };
    drop(reg); // in the child too: this thread took the lock, so releasing it is sound
    match r? {
        sys::Forked::Child => Ok(Fork::Child(snapshot)),
        sys::Forked::Parent(pid) => Ok(Fork::Parent(pid)),
    }
}

/// In a forked child, after closing the foreign descriptors: the registry becomes exactly
/// the runtime descriptors this child kept.
pub(crate) fn child_reset(kept: &[RawFd]) {
    let mut reg = lock();
    reg.clear();
    reg.extend(kept.iter().copied());
}
