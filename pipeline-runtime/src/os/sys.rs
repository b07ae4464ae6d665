//! The syscall boundary: the runtime's `unsafe` code lives in `os/` — here, behind safe
//! functions, and in [`fds`](super::fds) (the fork and the descriptors a child keeps).
//! Outside `os/` an `unsafe` block only calls an `unsafe fn` of `os/` whose contract just
//! its caller can keep: the forks (only the caller knows what the child runs), [`send_raw`]
//! (only the caller knows the number is open), and `image::fn_at`/`image::remake` (only the
//! caller knows the address is a function of that type, in this same executable).
//!
//! Conventions (nix's): errors come back as `io::Error`; descriptors become `OwnedFd` at
//! once; `EINTR` is retried in one place ([`retry`]); sockets are created `SOCK_CLOEXEC`;
//! sends use `MSG_NOSIGNAL` so a dead peer yields `EPIPE`, never a signal.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{self, AddressFamily, MsgFlags, Shutdown, SockFlag, SockType};
use nix::unistd::Pid;

/// Retries `f` while it fails with `EINTR`.
pub(crate) fn retry<T>(mut f: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
            Ok(v) => return Ok(v),
        }
    }
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, close-on-exec.
///
/// Message boundaries are kept and a message is queued whole or not at all, which is what
/// lets a replacement worker take over a dead worker's socket without desynchronising it.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// A connected pair of `SOCK_STREAM` Unix sockets, close-on-exec (a `pipe_next` stream).
pub(crate) fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// Sends one message. `Ok(None)` means it would block (only with `nonblocking`).
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8], nonblocking: bool) -> io::Result<Option<usize>> {
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    match retry(|| socket::send(fd.as_raw_fd(), buf, flags)) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// [`send`] on a descriptor known only by number.
///
/// # Safety
/// `fd` must be open for the whole call and refer to the socket the caller means (no other
/// thread may close it meanwhile).
pub(crate) unsafe fn send_raw(fd: RawFd, buf: &[u8]) {
    // SAFETY: forwarded to our caller's contract; a borrow for one call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = send(fd, buf, false);
}

/// Receives one message into `buf` (its capacity bounds the size). `Ok(None)`: would block.
/// `Ok(Some(0))` is end of stream.
pub(crate) fn recv(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    nonblocking: bool,
) -> io::Result<Option<usize>> {
    buf.clear();
    let cap = buf.capacity();
    let mut flags = MsgFlags::empty();
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let spare = buf.spare_capacity_mut();
    let r = retry(|| {
        // SAFETY: `spare` is `cap` bytes of the vector's own allocation; recv writes at most
        // `cap` bytes into it and we only mark the bytes it reports as initialised.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                spare.as_mut_ptr().cast::<libc::c_void>(),
                cap,
                flags.bits(),
            )
        };
        Errno::result(n).map(|n| n as usize)
    });
    match r {
        Ok(n) => {
            // SAFETY: the kernel initialised the first `n <= cap` bytes.
            unsafe { buf.set_len(n.min(cap)) };
            Ok(Some(n))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Half-closes the write direction: the peer reads end of stream after what was sent.
pub(crate) fn shutdown_write(fd: BorrowedFd<'_>) {
    let _ = socket::shutdown(fd.as_raw_fd(), Shutdown::Write);
}

/// Shuts both directions, waking any thread blocked on this socket.
pub(crate) fn shutdown_both(fd: BorrowedFd<'_>) {
    let _ = socket::shutdown(fd.as_raw_fd(), Shutdown::Both);
}

/// `poll(2)` over raw descriptors; returns the number ready (0 on timeout).
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = timeout.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs.
    retry(|| Errno::result(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) }))
        .map(|n| n as usize)
}

/// A `poll` entry for `fd`, waiting for `events`.
pub(crate) fn pollfd(fd: BorrowedFd<'_>, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }
}

/// Result of [`fork`].
pub(crate) enum Forked {
    Child,
    Parent(Pid),
}

/// Forks the calling process.
///
/// # Safety
/// In the child only the calling thread exists; any lock another thread held stays
/// locked. The caller must ensure the child only runs code that does not need such locks
/// (the runtime's child paths use raw syscalls, allocation and their own data) and leaves
/// with [`exit_now`].
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: forwarded to the caller's contract above.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child)),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Leaves the process at once with `code`: no destructors, no atexit handlers, no stdio
/// flush — the only correct way out of a forked child.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and takes no pointers.
    unsafe { libc::_exit(code) }
}

/// The first steps of every forked child: die with the parent (then re-check that the
/// parent is still `expected_parent`, since the signal is not sent if it died already), and
/// put signals in a known state (mask cleared, SIGINT ignored: the caller decides about
/// Ctrl-C, and workers follow through end of stream). Its descriptors come next
/// ([`Inherited::keep`](super::fds::Inherited::keep)).
pub(crate) fn child_setup(pdeathsig: bool, expected_parent: Pid, orphaned_code: i32) {
    if pdeathsig {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        if nix::unistd::getppid() != expected_parent {
            exit_now(orphaned_code);
        }
    }
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SIGINT ignored (the caller decides about Ctrl-C); SIGCHLD back to its default so a
    // host that ignores it cannot make our workers' exit statuses vanish; SIGPIPE ignored as
    // in any Rust program (writes to closed pipes are errors, not deaths).
    for (sig, how) in [
        (Signal::SIGINT, SigHandler::SigIgn),
        (Signal::SIGCHLD, SigHandler::SigDfl),
        (Signal::SIGPIPE, SigHandler::SigIgn),
    ] {
        // SAFETY: installing SIG_IGN or SIG_DFL runs no handler code.
        let _ = unsafe { signal::signal(sig, how) };
    }
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` exits.
pub(crate) fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes two integers and returns a new descriptor or -1.
    let fd =
        retry(|| Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) }))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Ok(fd)
}

/// Sends `sig` to `pid`. Only ever called on a pid this process forked and has not reaped.
pub(crate) fn kill(pid: Pid, sig: Signal) {
    let _ = signal::kill(pid, sig);
}

/// Waits for `pid` (a child of ours). `nohang`: `Ok(None)` if it still runs.
pub(crate) fn wait_pid(pid: Pid, nohang: bool) -> io::Result<Option<nix::sys::wait::WaitStatus>> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let flags = if nohang {
        Some(WaitPidFlag::WNOHANG)
    } else {
        None
    };
    match retry(|| waitpid(pid, flags))? {
        WaitStatus::StillAlive => Ok(None),
        s => Ok(Some(s)),
    }
}

/// Number of threads of this process (from `/proc/self/task`).
pub(crate) fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

/// Per-worker-slot state shared between a worker and its supervisor (shared memory, so
/// the worker updates it with a plain store per item, no syscall).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct SlotState {
    /// `seq + 1` of the item the worker is running, 0 when idle.
    pub running: std::sync::atomic::AtomicU64,
    /// When that item started (`CLOCK_MONOTONIC` ns), for timeouts.
    pub since: std::sync::atomic::AtomicU64,
    /// Items this worker finished (for the restart budget's progress rule).
    pub done: std::sync::atomic::AtomicU64,
    /// Of those, the items whose outputs it has sent (the rest die with it and run again).
    pub sent: std::sync::atomic::AtomicU64,
    /// Time the workers of this slot spent working on items, and the time items waited in
    /// front of them (ns, summed over its incarnations: see [`crate::meter`]).
    pub busy_ns: std::sync::atomic::AtomicU64,
    pub queued_ns: std::sync::atomic::AtomicU64,
    /// The last panic message of the running item (written by the worker's panic hook, so
    /// it survives a `panic = "abort"` build's abort): length, then bytes.
    pub panic_len: std::sync::atomic::AtomicU32,
    pub panic_msg: [std::sync::atomic::AtomicU8; PANIC_MSG],
}

/// Room for a panic message in [`SlotState`].
pub(crate) const PANIC_MSG: usize = 240;

impl SlotState {
    /// Records a panic message (cut to fit).
    pub(crate) fn set_panic(&self, msg: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let b = msg.as_bytes();
        let n = b.len().min(PANIC_MSG);
        for (dst, src) in self.panic_msg.iter().zip(&b[..n]) {
            dst.store(*src, Relaxed);
        }
        self.panic_len
            .store(n as u32, std::sync::atomic::Ordering::Release);
    }

    /// Takes the recorded panic message, if any.
    pub(crate) fn take_panic(&self) -> Option<String> {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.panic_len.swap(0, std::sync::atomic::Ordering::Acquire) as usize;
        (n > 0).then(|| {
            let b: Vec<u8> = self.panic_msg[..n.min(PANIC_MSG)]
                .iter()
                .map(|x| x.load(Relaxed))
                .collect();
            String::from_utf8_lossy(&b).into_owned()
        })
    }
}

impl Default for SlotState {
    fn default() -> Self {
        SlotState {
            running: Default::default(),
            since: Default::default(),
            done: Default::default(),
            sent: Default::default(),
            busy_ns: Default::default(),
            queued_ns: Default::default(),
            panic_len: Default::default(),
            panic_msg: std::array::from_fn(|_| Default::default()),
        }
    }
}

/// `n` zeroed [`SlotState`]s in anonymous shared memory, inherited by children; never
/// unmapped (they live as long as the supervisor process).
pub(crate) fn shared_slots(n: usize) -> io::Result<&'static [SlotState]> {
    use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
    let len = std::num::NonZeroUsize::new((n.max(1)) * std::mem::size_of::<SlotState>())
        .expect("non-zero");
    // SAFETY: a fresh anonymous mapping, shared with children, aliasing nothing.
    let p = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
        )
    }
    .map_err(io::Error::from)?;
    // SAFETY: the mapping is `len` zeroed bytes, page-aligned, never unmapped; an all-zero
    // `SlotState` is all-zero atomics, a valid value; the atomics make shared access sound.
    Ok(unsafe { std::slice::from_raw_parts(p.as_ptr().cast::<SlotState>(), n.max(1)) })
}

/// Monotonic clock in nanoseconds (the coarse clock: a few ms of resolution is plenty for
/// timeouts, and it costs far less per item).
/// `CLOCK_MONOTONIC` in ns, precise (a vDSO call): for measuring time spent, per batch.
pub(crate) fn precise_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

pub(crate) fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// `Ok` if this process has one thread; else `Err` with the number of threads. Race-free:
/// `unshare(CLONE_VM)` succeeds only in a single-threaded process (and, there, changes
/// nothing), and no other thread can start one while we are the only thread.
pub(crate) fn single_threaded() -> Result<(), usize> {
    match nix::sched::unshare(nix::sched::CloneFlags::CLONE_VM) {
        Ok(()) => Ok(()),
        Err(_) => Err(thread_count()),
    }
}
