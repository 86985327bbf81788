//! mimid's room domain: MLS ordering per room (openmls `PublicGroup`), room policy, the
//! KeyPackage directory, the shard state machine that replicates them, and the actix shells
//! (room actors and their router). See ARCHITECTURE.md.

pub mod actor;
pub mod cluster_meta;
pub mod command;
pub mod directory;
pub mod franking;
pub mod hub;
pub mod ids;
pub mod moderation;
pub mod policy;
pub mod provider_keys;
pub mod residency;
pub mod room;
pub mod room_move;
pub mod shard;
pub mod shard_descriptors;
pub mod snapshot_section;
