//! Frames: the record format every link message carries, shared by the link (which moves
//! records), the record codec (what a record's payload is) and runs (many items in one
//! record).
//!
//! A record is `seq u64 | tag u8 | len u32 | payload`: the sequence number sits outside the
//! payload, so a payload that cannot be decoded is still attributed to its item.

use crate::transport::codec::FRAME_LIMIT;

/// Largest message on a link (a batch, or one chunk of a large record).
pub(crate) const MAX_MSG: usize = 64 * 1024;

/// Bytes of a record's header: `seq u64 + tag u8 + len u32`.
pub(crate) const REC_HEADER: usize = 13; // seq u64 + tag u8 + len u32

/// Record tags.
pub(crate) const TAG_ONE: u8 = 0;
pub(crate) const TAG_MANY: u8 = 1;
pub(crate) const TAG_DROPPED: u8 = 2;
pub(crate) const TAG_FAILED: u8 = 3;
pub(crate) const TAG_CONSUMED: u8 = 4;
/// Many items in one record (see [`crate::transport::run`]).
pub(crate) const TAG_RUN: u8 = 5;

/// The sequence number of records that are not items (`CONSUMED`).
pub(crate) const NO_SEQ: u64 = u64::MAX;

/// Starts a record in `out`: header with a length placeholder. Finish with [`end_record`].
#[inline]
pub(crate) fn begin_record(out: &mut Vec<u8>, seq: u64, tag: u8) -> usize {
    let at = out.len();
    let mut h = [0u8; REC_HEADER];
    h[..8].copy_from_slice(&seq.to_le_bytes());
    h[8] = tag;
    out.extend_from_slice(&h);
    at
}

/// Patches the record length; errors if the payload is over the frame limit.
#[inline]
pub(crate) fn end_record(out: &mut [u8], at: usize) -> Result<(), String> {
    let len = out.len() - at - REC_HEADER;
    if len > FRAME_LIMIT || len > u32::MAX as usize {
        return Err(format!(
            "the item is {len} bytes, over the frame limit of {FRAME_LIMIT} bytes"
        ));
    }
    out[at + 9..at + 13].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}
