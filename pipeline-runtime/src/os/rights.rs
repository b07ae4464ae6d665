//! Passing descriptors to another process over a Unix socket (`SCM_RIGHTS`): how the
//! caller hands a pipeline's sockets to the fork server.
//!
//! The kernel takes at most 253 descriptors per message, so a list goes in chunks, each
//! chunk one `SOCK_SEQPACKET` message of one byte. Received descriptors are `O_CLOEXEC`
//! and become [`OwnedFd`]s at once.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::os::sys::retry;

/// Descriptors per message (the kernel's `SCM_MAX_FD` is 253).
const PER_MESSAGE: usize = 250;

/// Sends `fds` on `sock`, in as many messages as it takes.
pub(crate) fn send_fds(sock: impl AsFd, fds: &[RawFd]) -> io::Result<()> {
    for chunk in fds.chunks(PER_MESSAGE) {
        let cmsg = [ControlMessage::ScmRights(chunk)];
        let iov = [IoSlice::new(&[0u8])];
        retry(|| {
            socket::sendmsg::<()>(
                sock.as_fd().as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
        })?;
    }
    Ok(())
}

/// Receives `n` descriptors sent by [`send_fds`].
pub(crate) fn recv_fds(sock: impl AsFd, n: usize) -> io::Result<Vec<OwnedFd>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; PER_MESSAGE]);
        let (bytes, got) = loop {
            match socket::recvmsg::<()>(
                sock.as_fd().as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut got = Vec::new();
                    for c in msg.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            got.extend(fds);
                        }
                    }
                    break (msg.bytes, got);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let before = out.len();
        // SAFETY: the kernel just installed these descriptors in this process for this
        // message; nothing else refers to them.
        out.extend(
            got.into_iter()
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
        );
        if bytes == 0 || out.len() == before {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the descriptors did not arrive",
            ));
        }
    }
    Ok(out)
}
