//! `pipe_next`: a producer stage and the next (consumer) stage run at the same time on each
//! item, joined by a byte stream.
//!
//! # The problem
//! A raw byte stream cannot tell "done" from "the writer died": a consumer that counts
//! bytes until end of file would report a truncated result as a success. A consumer that
//! stops early (like `head`) must not leave the writer blocked, nor be killed by SIGPIPE.
//! And the pair must be reusable for the next item.
//!
//! # The approach
//! Each couple (producer worker *j*, consumer worker *j*) shares one `SOCK_STREAM`
//! socketpair for its whole life. For each item the producer writes frames — `len u32`
//! then `len` bytes, `len > 0` — and ends the item with an **end frame**: `0u32`, then a
//! status byte (`OK`, `FAILED` followed by the producer's encoded [`Error`], or
//! `STOPPED`: it failed only because the consumer had stopped reading). The reader turns
//! the end frame into end of file, or into an error carrying the producer's cause; a stream
//! that ends without it is an `UnexpectedEof` error, never a clean end.
//!
//! A consumer that returns before the end frame sends `STOP(item)` back on the same
//! socket; the producer's next write fails with `BrokenPipe` (an error, never a signal),
//! and the consumer side discards the rest of that item up to its end frame, which keeps
//! the stream in step for the next item.
//!
//! # Invariants
//! - The producer forwards each item to its consumer *before* producing its bytes, so both
//!   run at the same time; the consumer reads items and streams in the same order.
//! - The item's outcome is the consumer's, except when the producer failed on its own
//!   (status `FAILED`) while the consumer was still reading: then the producer's cause wins,
//!   even if the consumer returned `Ok` on the cut stream.

use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::socket::{self, MsgFlags};

use crate::error::Error;
use crate::os::sys;
use crate::transport::codec;

const END_OK: u8 = 0;
const END_FAILED: u8 = 1;
const END_STOPPED: u8 = 2;

/// Largest frame a writer sends at once.
const MAX_FRAME: usize = 1 << 20;

/// The producer's end of a `pipe_next` stream, for one item: `std::io::Write`.
///
/// A write after the consumer stopped reading fails with
/// [`io::ErrorKind::BrokenPipe`]. Dropping it ends the item's stream.
#[derive(Debug)]
pub struct PipeWriter {
    fd: i32,
    seq: u64,
    stopped: bool,
    written: u64,
    back: Vec<u8>,
}

impl PipeWriter {
    pub(crate) fn new(fd: BorrowedFd<'_>, seq: u64) -> Self {
        PipeWriter {
            fd: fd.as_raw_fd(),
            seq,
            stopped: false,
            written: 0,
            back: Vec::new(),
        }
    }

    /// Bytes written for this item so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Reads `STOP` messages the consumer sent, without blocking.
    fn check_stop(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            match sys::retry(|| socket::recv(self.fd, &mut buf, MsgFlags::MSG_DONTWAIT)) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.back.extend_from_slice(&buf[..n]),
            }
        }
        while self.back.len() >= 8 {
            let seq = u64::from_le_bytes(self.back[..8].try_into().expect("8 bytes"));
            self.back.drain(..8);
            if seq == self.seq {
                self.stopped = true;
            }
        }
    }

    fn send_all(&self, parts: &[&[u8]]) -> io::Result<()> {
        let mut bufs: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
        let mut bufs: &mut [io::IoSlice<'_>] = &mut bufs;
        while !bufs.is_empty() {
            let n = sys::retry(|| {
                socket::sendmsg::<()>(self.fd, bufs, &[], MsgFlags::MSG_NOSIGNAL, None)
            })?;
            io::IoSlice::advance_slices(&mut bufs, n);
        }
        Ok(())
    }

    /// Writes the item's end frame.
    pub(crate) fn finish(mut self, failure: Option<&Error>) -> io::Result<()> {
        self.check_stop();
        let mut end = Vec::with_capacity(64);
        end.extend_from_slice(&0u32.to_le_bytes());
        match failure {
            None => end.push(END_OK),
            Some(_) if self.stopped => end.push(END_STOPPED),
            Some(e) => {
                end.push(END_FAILED);
                let mut body = Vec::new();
                let _ = codec::encode_into(e, &mut body);
                end.extend_from_slice(&(body.len() as u32).to_le_bytes());
                end.extend_from_slice(&body);
            }
        }
        self.send_all(&[&end])
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.check_stop();
        if self.stopped {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the consumer stopped reading",
            ));
        }
        let n = buf.len().min(MAX_FRAME);
        let len = (n as u32).to_le_bytes();
        self.send_all(&[&len, &buf[..n]])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How the producer ended an item, as the consumer side saw it.
#[derive(Debug)]
pub(crate) enum End {
    /// The consumer has not read to the end frame.
    Open,
    Ok,
    /// Failed after the consumer stopped reading (a consequence, not a cause).
    Stopped,
    Failed(Box<Error>),
}

/// The consumer's end of a `pipe_next` stream, for one item: `std::io::Read` and
/// `std::io::BufRead`.
///
/// It reads end of file when the producer finished the item, and an error when the
/// producer failed or its stream was cut — never a clean end on a truncated stream.
#[derive(Debug)]
pub struct PipeReader {
    fd: i32,
    seq: u64,
    /// Bytes left in the current frame.
    left: usize,
    end: End,
    /// Bytes of the next header read ahead with the data.
    hdr: [u8; 4],
    hdr_have: usize,
    buf: Vec<u8>,
    pos: usize,
    read: u64,
}

impl PipeReader {
    pub(crate) fn new(fd: BorrowedFd<'_>, seq: u64) -> Self {
        PipeReader {
            fd: fd.as_raw_fd(),
            seq,
            left: 0,
            end: End::Open,
            hdr: [0; 4],
            hdr_have: 0,
            buf: Vec::new(),
            pos: 0,
            read: 0,
        }
    }

    /// Bytes read for this item so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    fn recv_into(&self, out: &mut [u8]) -> io::Result<usize> {
        let n = sys::retry(|| socket::recv(self.fd, out, MsgFlags::empty()))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the producer's stream was cut before its end (the producer did not finish)",
            ));
        }
        Ok(n)
    }

    fn read_exact_raw(&self, out: &mut [u8]) -> io::Result<()> {
        let mut got = 0;
        while got < out.len() {
            got += self.recv_into(&mut out[got..])?;
        }
        Ok(())
    }

    /// Reads the next frame header (and the end frame, if it is one). Returns the error a
    /// failed end produces.
    fn next_frame(&mut self) -> io::Result<()> {
        let mut hdr = self.hdr;
        if self.hdr_have < 4 {
            let have = self.hdr_have;
            self.read_exact_raw(&mut hdr[have..])?;
        }
        self.hdr_have = 0;
        let len = u32::from_le_bytes(hdr) as usize;
        if len > 0 {
            self.left = len;
            return Ok(());
        }
        let mut status = [0u8];
        self.read_exact_raw(&mut status)?;
        self.end = match status[0] {
            END_OK => End::Ok,
            END_STOPPED => End::Stopped,
            END_FAILED => {
                let mut l = [0u8; 4];
                self.read_exact_raw(&mut l)?;
                let mut body = vec![0u8; u32::from_le_bytes(l) as usize];
                self.read_exact_raw(&mut body)?;
                let e: Error = codec::decode(&body).unwrap_or(Error::Failed {
                    stage: String::new(),
                    item: self.seq,
                    worker: crate::error::Worker::Thread(0),
                    message: "the producer failed".into(),
                });
                End::Failed(Box::new(e))
            }
            s => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad end frame {s}"),
                ));
            }
        };
        Ok(())
    }

    fn end_error(&self) -> Option<io::Error> {
        match &self.end {
            End::Failed(e) => Some(io::Error::other(format!("the producer failed: {e}"))),
            _ => None,
        }
    }

    /// Reads stream bytes into `out` (the core of `Read`).
    fn read_stream(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if !matches!(self.end, End::Open) {
                return match self.end_error() {
                    Some(e) => Err(e),
                    None => Ok(0),
                };
            }
            if self.left == 0 {
                self.next_frame()?;
                continue;
            }
            let want = out.len().min(self.left);
            let n = if want == self.left {
                // Read the rest of the frame and, in the same call, the next header.
                let mut iov = [
                    io::IoSliceMut::new(&mut out[..want]),
                    io::IoSliceMut::new(&mut self.hdr),
                ];
                let fd = self.fd;
                let got = sys::retry(|| {
                    socket::recvmsg::<()>(fd, &mut iov, None, MsgFlags::empty()).map(|r| r.bytes)
                })?;
                if got == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the producer's stream was cut before its end (the producer did not finish)",
                    ));
                }
                if got > want {
                    self.hdr_have = got - want;
                    want
                } else {
                    got
                }
            } else {
                self.recv_into(&mut out[..want])?
            };
            self.left -= n;
            self.read += n as u64;
            return Ok(n);
        }
    }

    /// After the consumer returned: if it stopped before the end frame, ask the producer to
    /// stop and skip the rest of the item. Returns how the producer ended the item, and
    /// whether the consumer had read up to the end itself.
    pub(crate) fn finish(mut self) -> io::Result<(End, bool)> {
        let read_to_end = !matches!(self.end, End::Open) && self.pos >= self.buf.len();
        if matches!(self.end, End::Open) {
            // SAFETY: the couple's stream socket outlives this reader (see `PipeWriter::fd`),
            // and nothing closes it while the worker's loop runs the consumer.
            unsafe { sys::send_raw(self.fd, &self.seq.to_le_bytes()) };
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(self.end, End::Open) {
                match self.read_stream(&mut sink) {
                    Ok(_) => {}
                    Err(_) if !matches!(self.end, End::Open) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((std::mem::replace(&mut self.end, End::Open), read_to_end))
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.buf.len() {
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.read_stream(out)
    }
}

impl BufRead for PipeReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.buf.len() {
            let mut b = std::mem::take(&mut self.buf);
            b.resize(64 * 1024, 0);
            let n = self.read_stream(&mut b);
            self.buf = b;
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.clear();
                    self.pos = 0;
                    return Err(e);
                }
            };
            self.buf.truncate(n);
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.buf.len());
    }
}

/// A couple's stream socket with a bigger buffer (fewer wake-ups for large streams).
pub(crate) fn tune(fd: impl AsFd) {
    let _ = socket::setsockopt(&fd, socket::sockopt::SndBuf, &(1 << 20));
    let _ = socket::setsockopt(&fd, socket::sockopt::RcvBuf, &(1 << 20));
}
