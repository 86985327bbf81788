//! Optional sections at the front of a shard snapshot: a 16-byte marker no older snapshot
//! starts with (ten `0xff` bytes are not a postcard varint, then a name), then the section's
//! postcard bytes. A snapshot without the section keeps the bytes it had before the section
//! existed, so older snapshots decode and newer ones stay byte-identical when it is empty.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// `marker` followed by `value`'s postcard bytes.
pub fn encode<T: Serialize>(marker: &[u8; 16], value: &T) -> Vec<u8> {
    let mut bytes = marker.to_vec();
    bytes.extend(postcard::to_stdvec(value).expect("serialising into memory cannot fail"));
    bytes
}

/// Splits `snapshot` into the section behind `marker` (`None` when it does not start with
/// the marker) and the rest; `what` names the section in the error of an unreadable one.
pub fn split<'a, T: DeserializeOwned>(
    marker: &[u8; 16],
    snapshot: &'a [u8],
    what: &str,
) -> Result<(Option<T>, &'a [u8]), String> {
    let Some(rest) = snapshot.strip_prefix(marker.as_slice()) else {
        return Ok((None, snapshot));
    };
    let (value, rest) = postcard::take_from_bytes(rest)
        .map_err(|e| format!("{what} in the shard snapshot: {e}"))?;
    Ok((Some(value), rest))
}
