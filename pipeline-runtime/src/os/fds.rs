//! The registry of the runtime's own descriptors.
//!
//! `fork` copies every descriptor, `O_CLOEXEC` or not. A worker that keeps a copy of a socket
//! that is not its own stops end-of-stream from ever reaching that socket's reader, and could
//! read or write another pipeline's channel. The rule (README, "Decisions: Descriptors") is
//! that a forked child closes the runtime's descriptors that are not its own and leaves the
//! user's alone, so the runtime
//! must know its descriptors: every one is created, and every fork is done, while holding
//! this registry's lock. A child therefore inherits a registry that is exactly the set of
//! runtime descriptors it received, and closes those it does not own before anything else.
//!
//! The forking thread holds the lock across `fork`, so in the child the lock is held by the
//! child's only thread and can be released normally. The child then names the descriptors
//! it keeps ([`Inherited::keep`]): every other inherited one is closed, the registry becomes
//! exactly the kept ones (which makes nested pipelines work too), and the child takes
//! ownership of each kept one once, from [`Kept`]. The raw numbers that cross a fork (the
//! supervisor's plan, a worker's links) become owned descriptors there and nowhere else.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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
    /// In the child: every runtime descriptor it inherited (it keeps its own, see
    /// [`Inherited::keep`], and the rest are closed).
    Child(Inherited),
    Parent(nix::unistd::Pid),
}

/// Forks while holding the registry lock, so the child's view of the runtime's descriptors
/// is exact.
///
/// # Safety
/// As [`sys::fork`]: the child must only run code that needs no lock another thread could
/// have held, and must leave with [`sys::exit_now`]. And in the child, every object that
/// owns a runtime descriptor and was copied from the parent (an [`RtFd`], or an `OwnedFd`
/// made from one) is dead: the child never does I/O with it and never drops it (leaving
/// with `exit_now` runs no destructor). It may read such an object's number, to name a
/// descriptor it keeps; it owns the kept ones through [`Inherited::keep`] only.
pub(crate) unsafe fn fork() -> io::Result<Fork> {
    let reg = lock();
    let snapshot: Vec<RawFd> = reg.iter().copied().collect();
    // SAFETY: forwarded to our caller's contract.
    let r = unsafe { sys::fork() };
    drop(reg); // in the child too: this thread took the lock, so releasing it is sound
    match r? {
        sys::Forked::Child => Ok(Fork::Child(Inherited(snapshot))),
        sys::Forked::Parent(pid) => Ok(Fork::Parent(pid)),
    }
}

/// The runtime descriptors a forked child inherited: the registry at the fork, each one open
/// then (a registered descriptor is closed under the registry's lock, which the fork held).
#[derive(Debug)]
pub(crate) struct Inherited(Vec<RawFd>);

impl Inherited {
    /// The child's first step with descriptors: closes every inherited runtime descriptor
    /// that is not in `keep`, and the registry becomes exactly `keep`. The child then owns
    /// each kept descriptor by taking it from the returned [`Kept`].
    ///
    /// # Panics
    /// If `keep` names a descriptor that was not inherited (a runtime bug: no descriptor of
    /// the user's, nor a number already closed, is the child's to keep).
    pub(crate) fn keep(self, keep: &[RawFd]) -> Kept {
        if let Some(fd) = keep.iter().find(|fd| !self.0.contains(fd)) {
            panic!("descriptor {fd} is not a runtime descriptor this child inherited");
        }
        for (lo, hi) in runs(self.0.iter().copied().filter(|fd| !keep.contains(fd))) {
            // SAFETY: `lo..=hi` are runtime descriptors inherited through the fork, every one
            // of them (a run of consecutive numbers in the registry, which is a set), open
            // then, that this child does not keep; by `fork`'s contract no object in the
            // child uses or closes them.
            unsafe { close_run(lo, hi) };
        }
        let mut reg = lock();
        // (The inherited registry's nodes are left where they are, not freed: they are the
        // parent's pages, and freeing them would copy each one into this child.)
        std::mem::forget(std::mem::take(&mut *reg));
        reg.extend(keep.iter().copied());
        Kept(keep.iter().copied().collect())
    }
}

/// The maximal runs `(first, last)` of consecutive numbers in the ascending `fds`: the
/// descriptors that socketpairs made one after the other get, so that a child closes what it
/// does not keep in a few calls rather than one per descriptor.
fn runs(fds: impl Iterator<Item = RawFd>) -> Vec<(RawFd, RawFd)> {
    let mut runs: Vec<(RawFd, RawFd)> = Vec::new();
    for fd in fds {
        match runs.last_mut() {
            Some((_, hi)) if *hi + 1 == fd => *hi = fd,
            _ => runs.push((fd, fd)),
        }
    }
    runs
}

/// Closes the descriptors `lo..=hi` (`close_range`, or one by one where the kernel lacks it).
///
/// # Safety
/// Every descriptor in `lo..=hi` must be open and owned by no object of this process.
unsafe fn close_run(lo: RawFd, hi: RawFd) {
    if lo < hi {
        // SAFETY: `close_range` takes no pointers; by the caller's contract closing every
        // descriptor in the range leaves no object with a closed descriptor.
        let r = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                lo as libc::c_uint,
                hi as libc::c_uint,
                0,
            )
        };
        if r == 0 {
            return;
        }
    }
    for fd in lo..=hi {
        // SAFETY: as above, one descriptor at a time.
        unsafe { libc::close(fd) };
    }
}

/// The descriptors a forked child kept, each to be taken (owned) at most once. One never
/// taken stays open, owned by nobody, for the life of the process.
#[derive(Debug)]
pub(crate) struct Kept(BTreeSet<RawFd>);

impl Kept {
    /// Takes the kept descriptor `fd`, registered: dropping it unregisters and closes it.
    ///
    /// # Panics
    /// If `fd` was not kept, or was taken already.
    pub(crate) fn take(&mut self, fd: RawFd) -> RtFd {
        RtFd(Some(self.take_owned(fd)))
    }

    /// Takes the kept descriptor `fd` as a plain `OwnedFd` (a worker's links and sockets: it
    /// stays in the registry after it is closed).
    ///
    /// # Panics
    /// If `fd` was not kept, or was taken already.
    pub(crate) fn take_owned(&mut self, fd: RawFd) -> OwnedFd {
        assert!(
            self.0.remove(&fd),
            "descriptor {fd} is not kept, or taken twice"
        );
        // SAFETY: `fd` was inherited open and kept by `Inherited::keep`, and `remove` makes
        // this its only taking; by `fork`'s contract no object copied from the parent uses
        // or closes it, so this `OwnedFd` is its one owner.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }
}
