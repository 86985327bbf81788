//! The room log: every accepted item with its per-room sequence number and hub timestamp
//! (DESIGN.md §2). Delivery is "each destination reads the log from its cursor".

use serde::{Deserialize, Serialize};

use crate::ids::ClientId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogItem {
    /// Per-room sequence number, starting at 1, without gaps.
    pub seq: u64,
    /// Hub accepted timestamp (ms since the UNIX epoch), non-decreasing along the log.
    pub ts_ms: u64,
    /// MLS epoch of the group when the item was accepted (for a Commit: the epoch it ends).
    pub epoch: u64,
    pub body: ItemBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemBody {
    /// An accepted proposal bundle (`proposalOrCommit` followed by `moreProposals`).
    Proposals { messages: Vec<Vec<u8>> },
    /// An accepted Commit (`MLSMessage`).
    Commit { message: Vec<u8> },
    /// A Welcome for the clients added by the Commit just before it, with the ratchet tree of
    /// the new epoch (RatchetTreeOption `full`), addressed only to those clients.
    Welcome {
        welcome: Vec<u8>,
        ratchet_tree: Vec<u8>,
        to: Vec<ClientId>,
    },
    /// An accepted application message (`MLSMessage` with a PrivateMessage).
    Application { message: Vec<u8> },
}
