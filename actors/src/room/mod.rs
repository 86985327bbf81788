//! One room: its replicated state (`state`), its log (`log`), the storage behind its openmls
//! `PublicGroup` (`storage`), the credential ↔ client mapping (`identity`), a follower's copy of a
//! room hosted elsewhere (`mirror`) and the delivery core
//! of its actor (`core`).

pub mod core;
pub mod fanout;
pub mod identity;
pub mod log;
pub mod mirror;
pub mod state;
pub mod storage;

#[cfg(test)]
pub(crate) mod tests;
