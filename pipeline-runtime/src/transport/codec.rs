//! The codec: the one place that knows items travel as `bincode` 2 (serde) bytes.
//!
//! Decoding always runs with a byte limit, so a hostile or corrupt payload that claims a
//! huge `String` or `Vec` fails with an error instead of allocating (bincode without a
//! limit aborts the process on such input).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest encoded item (and largest decode allocation) accepted: 1 GiB.
pub const FRAME_LIMIT: usize = 1 << 30;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<FRAME_LIMIT>,
>;

const fn config() -> Config {
    bincode::config::standard().with_limit::<FRAME_LIMIT>()
}

/// Items that can cross a process boundary.
pub trait Wire: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Wire for T {}

/// A bincode writer appending to a `Vec` (no `std::io` adaptor in between).
struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        // (The sizes bincode writes most — a byte, a varint's 2, 4 or 8 — as fixed-size
        // copies, not a call to memcpy.)
        match bytes.len() {
            1 => self.0.push(bytes[0]),
            2 => self
                .0
                .extend_from_slice(&<[u8; 2]>::try_from(bytes).expect("2 bytes")),
            4 => self
                .0
                .extend_from_slice(&<[u8; 4]>::try_from(bytes).expect("4 bytes")),
            8 => self
                .0
                .extend_from_slice(&<[u8; 8]>::try_from(bytes).expect("8 bytes")),
            _ => self.0.extend_from_slice(bytes),
        }
        Ok(())
    }
}

/// Appends the encoding of `value` to `out`.
#[inline]
pub(crate) fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    bincode::serde::encode_into_writer(value, VecWriter(out), config()).map_err(encode_error::<T>)
}

/// The message of an encoding error (out of line: the happy path inlines).
#[cold]
#[inline(never)]
fn encode_error<T>(e: bincode::error::EncodeError) -> String {
    match e {
        bincode::error::EncodeError::OtherString(s) => s,
        bincode::error::EncodeError::Serde(bincode::serde::EncodeError::SequenceMustHaveLength) => {
            format!(
                "`{}` serializes a sequence or map of unknown length (#[serde(flatten)] does), \
             which bincode cannot encode; give forkpipe items plain fields",
                std::any::type_name::<T>()
            )
        }
        e => format!("`{}`: {e}", std::any::type_name::<T>()),
    }
}

fn unsupported(e: &bincode::error::DecodeError) -> Option<&'static str> {
    use bincode::serde::DecodeError as D;
    match e {
        bincode::error::DecodeError::Serde(D::AnyNotSupported) => Some(
            "bincode cannot decode types that need deserialize_any (#[serde(flatten)], \
             #[serde(untagged)] enums, serde_json::Value): it does not describe its data",
        ),
        bincode::error::DecodeError::Serde(
            D::IdentifierNotSupported | D::IgnoredAnyNotSupported,
        ) => Some(
            "bincode cannot decode types that skip unknown fields or name fields by identifier",
        ),
        _ => None,
    }
}

/// Decodes one value that must fill `bytes` exactly.
#[inline]
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bincode::serde::decode_from_slice::<T, _>(bytes, config()) {
        Ok((v, n)) if n == bytes.len() => Ok(v),
        Ok((_, n)) => Err(trailing(bytes.len() - n)),
        Err(e) => Err(decode_error::<T>(e)),
    }
}

#[cold]
#[inline(never)]
fn trailing(n: usize) -> String {
    format!("{n} trailing bytes after the value")
}

/// The message of a decoding error (out of line: the happy path inlines).
#[cold]
#[inline(never)]
fn decode_error<T>(e: bincode::error::DecodeError) -> String {
    match unsupported(&e) {
        Some(why) => format!("`{}`: {why}", std::any::type_name::<T>()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = Vec::new();
        encode_into(&(7u64, "x".to_string()), &mut b).unwrap();
        assert_eq!(decode::<(u64, String)>(&b).unwrap(), (7, "x".to_string()));
    }

    #[test]
    fn hostile_length_inside_payload_is_an_error_not_an_abort() {
        // A varint length prefix claiming 2^40 bytes for a String, then nothing.
        let mut b = vec![253u8];
        b.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<String>(&b).is_err());
    }
}
