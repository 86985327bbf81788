//! Decoding the `ConfChangeV2` of a committed conf-change entry. `cluster::group` decodes it
//! with `protobuf::Message::parse_from_bytes`; this crate does not depend on `protobuf` (raft-rs
//! does not re-export it), so the few fields of `eraftpb.proto` are read here:
//!
//! ```text
//! message ConfChangeSingle { ConfChangeType change_type = 1; uint64 node_id = 2; }
//! message ConfChangeV2 {
//!     ConfChangeTransition transition = 1;
//!     repeated ConfChangeSingle changes = 2;
//!     bytes context = 3;
//! }
//! ```
//!
//! Unknown fields are skipped as protobuf readers do; malformed bytes are an error (the replica
//! stops, and the run reports it), never a panic.

use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};

/// Decodes a `ConfChangeV2` from its protobuf encoding.
pub fn decode(bytes: &[u8]) -> Result<ConfChangeV2, String> {
    let mut change = ConfChangeV2::default();
    let mut reader = Reader(bytes);
    while !reader.is_empty() {
        match reader.field()? {
            (1, Value::Varint(value)) => change.set_transition(match value {
                0 => ConfChangeTransition::Auto,
                1 => ConfChangeTransition::Implicit,
                2 => ConfChangeTransition::Explicit,
                other => return Err(format!("unknown conf change transition {other}")),
            }),
            (2, Value::Bytes(single)) => change.mut_changes().push(decode_single(single)?),
            (3, Value::Bytes(context)) => change.set_context(context.to_vec().into()),
            _ => {}
        }
    }
    Ok(change)
}

fn decode_single(bytes: &[u8]) -> Result<ConfChangeSingle, String> {
    let mut single = ConfChangeSingle::default();
    let mut reader = Reader(bytes);
    while !reader.is_empty() {
        match reader.field()? {
            (1, Value::Varint(value)) => single.set_change_type(match value {
                0 => ConfChangeType::AddNode,
                1 => ConfChangeType::RemoveNode,
                2 => ConfChangeType::AddLearnerNode,
                other => return Err(format!("unknown conf change type {other}")),
            }),
            (2, Value::Varint(node)) => single.node_id = node,
            _ => {}
        }
    }
    Ok(single)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first().ok_or("truncated varint")?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        if len > self.0.len() {
            return Err(format!("field of {len} bytes, {} left", self.0.len()));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    /// The next field: its number and value.
    fn field(&mut self) -> Result<(u64, Value<'a>), String> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|err| err.to_string())?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        Ok((key >> 3, value))
    }
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::EntryType;
    use raft::storage::MemStorage;
    use raft::{Config, RawNode};

    use super::*;

    /// The bytes raft-rs itself writes for a conf change (via `propose_conf_change`) decode to
    /// the change proposed.
    #[test]
    fn decodes_what_raft_rs_encodes() {
        let storage = MemStorage::new_with_conf_state((vec![1], vec![]));
        let config = Config {
            id: 1,
            ..Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&config, storage, &logger).unwrap();
        node.campaign().unwrap();
        // A new leader takes no conf change before it applied its own empty entry.
        let ready = node.ready();
        node.mut_store().wl().append(ready.entries()).unwrap();
        let light = node.advance(ready);
        if let Some(commit) = light.commit_index() {
            node.mut_store().wl().mut_hard_state().commit = commit;
        }
        node.advance_apply();
        let mut changes = Vec::new();
        for (node_id, change_type) in [
            (7, ConfChangeType::AddLearnerNode),
            (300, ConfChangeType::RemoveNode),
        ] {
            let mut single = ConfChangeSingle {
                node_id,
                ..ConfChangeSingle::default()
            };
            single.set_change_type(change_type);
            changes.push(single);
        }
        let mut proposed = ConfChangeV2::default();
        proposed.set_transition(ConfChangeTransition::Explicit);
        proposed.set_changes(changes.into());
        proposed.set_context(b"ctx".to_vec().into());
        node.propose_conf_change(Vec::new(), proposed.clone())
            .unwrap();
        let ready = node.ready();
        let entry = ready.entries().last().expect("the proposal was appended");
        assert_eq!(entry.get_entry_type(), EntryType::EntryConfChangeV2);
        assert_eq!(decode(&entry.data).unwrap(), proposed);
        assert_eq!(decode(&[]).unwrap(), ConfChangeV2::default());
    }

    #[test]
    fn malformed_bytes_are_an_error() {
        assert!(decode(&[0x12, 0x05, 0x08]).is_err(), "truncated field");
        assert!(decode(&[0x08]).is_err(), "truncated varint");
        assert!(decode(&[0x08, 0x09]).is_err(), "unknown transition");
        assert!(decode(&[0x12, 0x02, 0x08, 0x07]).is_err(), "unknown type");
        assert!(decode(&[0x0b]).is_err(), "group wire type");
    }
}
