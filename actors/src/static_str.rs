//! Deserialising `&'static str` fields of refusal reasons (`KeyPackageError`, `ProfileError`):
//! their values are literals of this program, and an apply output crosses nodes when a
//! proposal is forwarded to its shard's leader (`hub::ProposalRouter`), so the receiving node
//! needs them back as `&'static str`. Each distinct string is leaked once and reused after;
//! the set is bounded (strings longer than [`MAX_LEN`], or beyond [`MAX_STRINGS`] distinct
//! ones, become [`UNAVAILABLE`]), so even a misbehaving peer node cannot grow it without limit.

use std::collections::BTreeSet;

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer};

/// Distinct strings kept at most (the program has a few dozen such literals).
const MAX_STRINGS: usize = 1024;
/// Longest string kept, in bytes.
const MAX_LEN: usize = 256;
/// Stands in for a string beyond the bounds.
pub(crate) const UNAVAILABLE: &str = "(reason not available)";

/// `&'static str`, spelt so that serde's derive does not take the field for a borrow of the
/// input (it would then require `'de: 'static` of the whole type).
pub(crate) type StaticStr = &'static str;

static INTERNED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// `#[serde(deserialize_with = "crate::static_str::deserialize")]` for a [`StaticStr`] field.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<&'static str, D::Error> {
    let value = String::deserialize(deserializer)?;
    Ok(intern(&value))
}

fn intern(value: &str) -> &'static str {
    let mut interned = INTERNED.lock();
    if let Some(known) = interned.get(value) {
        return known;
    }
    if value.len() > MAX_LEN || interned.len() >= MAX_STRINGS {
        return UNAVAILABLE;
    }
    let leaked: &'static str = Box::leak(value.to_owned().into_boxed_str());
    interned.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_allocation_and_long_ones_are_replaced() {
        let a = intern("starts with a digit");
        let b = intern(&String::from("starts with a digit"));
        assert_eq!(a, "starts with a digit");
        assert!(std::ptr::eq(a, b));
        assert_eq!(intern(&"x".repeat(MAX_LEN + 1)), UNAVAILABLE);
    }
}
