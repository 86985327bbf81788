//! MIMI wire formats (protocol-06 §5; MIMI.md §3.3, §5): the TLS-PL codec with MLS
//! conventions, every protocol-06 request and response body, and our own client API bodies.
//!
//! Decoding turns untrusted bytes into typed structures or a specific [`WireError`]; it makes
//! no policy decisions (those belong to `mimid_actors`). Embedded MLS messages are validated by
//! openmls and kept byte-exact. Conversions to and from the domain types of
//! `mimid_actors::command` and `mimid_actors::room::log` live next to the wire types they
//! convert ([`update`], [`submit`], [`client`]).
//!
//! Use: `T::from_bytes(body, &limits)` ([`Decode`]) and `value.to_bytes()` ([`Encode`]).
//!
//! | protocol-06 | module |
//! |---|---|
//! | §5.1 keyMaterial | [`key_material`] |
//! | §5.2 update | [`update`] |
//! | §5.3, §5.4.1 submitMessage, franking | [`submit`] |
//! | §5.4 notify | [`fanout`] |
//! | §5.5 groupInfo | [`group_info`] |
//! | §5.7 consent | [`consent`] |
//! | §5.8 identifierQuery | [`identifier`] |
//! | discovery and consent, client API (ours), and the identifierQuery requester | [`discovery`] |
//! | §5.9 reportAbuse | [`abuse`] |
//! | client API (ours) | [`client`] |
//!
//! [`sign`] holds RFC 9420 §5.1.2 `SignWithLabel`/`VerifyWithLabel` (MIMI.md §3.3) for the
//! signed bodies.

pub mod abuse;
pub mod client;
pub mod codec;
pub mod consent;
pub mod discovery;
pub mod fanout;
pub mod group_info;
pub mod identifier;
pub mod key_material;
pub mod sign;
pub mod submit;
pub mod types;
pub mod update;

#[cfg(test)]
mod tests;

pub use codec::{
    BareMlsBody, Decode, Encode, Limits, Mls, MlsMessage, MlsMessageKind, Reader, WireError,
    Writer, DEFAULT_MAX_BODY_LEN, MAX_VECTOR_LEN,
};
pub use types::{
    CipherSuite, HpkePublicKey, IdentifierUri, ProposalRef, Protocol, SignaturePublicKey,
};
