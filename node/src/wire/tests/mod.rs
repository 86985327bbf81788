//! Codec tests: every structure round-trips byte-exact, and decoders reject truncation at every
//! position, trailing bytes, non-minimal and oversized lengths, and bad enum values. MLS
//! messages come from real openmls groups ([`fixture`]).

mod client;
mod codec;
mod fixture;
mod hostile;
mod protocol;

use std::fmt::Debug;

use super::codec::{Decode, Encode, Limits, WireError};

/// Encodes, decodes, compares, and re-encodes to the identical bytes; returns the encoding.
fn round_trip<T: Encode + Decode + PartialEq + Debug>(value: &T) -> Vec<u8> {
    let bytes = value.to_bytes().expect("encode");
    let decoded = T::from_bytes(&bytes, &Limits::default()).expect("decode");
    assert_eq!(&decoded, value);
    assert_eq!(decoded.to_bytes().expect("re-encode"), bytes);
    bytes
}

/// Every proper prefix of a valid encoding fails to decode, and one extra byte is rejected.
fn assert_truncations_and_trailing_rejected<T: Decode + Debug>(bytes: &[u8]) {
    for cut in 0..bytes.len() {
        let result = T::from_bytes(&bytes[..cut], &Limits::default());
        assert!(result.is_err(), "a {cut}-byte prefix decoded: {result:?}");
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert_eq!(
        T::from_bytes(&longer, &Limits::default()).unwrap_err(),
        WireError::TrailingBytes { count: 1 }
    );
}

/// `round_trip` plus `assert_truncations_and_trailing_rejected`.
fn check<T: Encode + Decode + PartialEq + Debug>(value: &T) -> Vec<u8> {
    let bytes = round_trip(value);
    assert_truncations_and_trailing_rejected::<T>(&bytes);
    bytes
}

/// Decodes with the default limits, expecting an error.
fn decode_err<T: Decode + Debug>(bytes: &[u8]) -> WireError {
    T::from_bytes(bytes, &Limits::default()).expect_err("decoding should fail")
}
