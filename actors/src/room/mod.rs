//! One room: its replicated state (`state`), its log (`log`), the storage behind its openmls
//! `PublicGroup` (`storage`), the credential ↔ client mapping (`identity`) and the delivery core
//! of its actor (`core`).

pub mod core;
pub mod identity;
pub mod log;
pub mod state;
pub mod storage;

#[cfg(test)]
mod tests;
