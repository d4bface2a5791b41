//! Helpers shared by the fuzz targets in `fuzz_targets/`: building well-formed inputs from
//! fuzzer bytes (so targets reach past the first check) and small assertions.
//!
//! A target panics only when an invariant of the code under test breaks; decode errors are the
//! expected outcome for most inputs.

pub mod market;
pub mod node;
pub mod unixfs;

/// Asserts that decoding the encoding of a value gives the same encoding back, for types whose
/// `PartialEq` cannot be trusted (floats may be NaN).
pub fn assert_stable_encoding<T>(
    value: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Option<T>,
) {
    let bytes = encode(value);
    let Some(again) = decode(&bytes) else {
        panic!("re-decoding our own encoding failed: {bytes:02x?}");
    };
    assert_eq!(encode(&again), bytes, "encoding is not stable");
}
