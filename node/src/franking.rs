//! Franking (protocol-06 §5.4.1; MIMI.md §5.3, §5.3.1, §5.4, §5.8): the provider's franking
//! keys, the Frank the hub attaches to every delivery of a franked message, its check by
//! receivers, and the hub's validation of the franks in an abuse report.
//!
//! ```text
//! sender:   franking_tag = HMAC-SHA256(key = content salt, application_data)   -> SafeAAD frank_aad
//! hub:      server_frank = HMAC-SHA256(hub_key, franking_tag || ServerFrankingContext)
//!           franking_integrity_signature = SignWithLabel(franking key, "FrankingIntegrityTBS",
//!                                           FrankingIntegrityTBS{server_frank, suite, context})
//! receiver: checks the signature under the room's franking_agent, the tag, the sender and room
//! report:   the hub recomputes the tag from the revealed content, then server_frank, and checks
//!           both against the Frank
//! ```
//!
//! Keys ([`FrankingKeys`]): an Ed25519 signing key (its public half is the rooms'
//! `franking_agent`, GroupContext component 0x0021, with a basic credential naming the
//! provider's domain) and the 32-byte HMAC `hub_key`. They are replicated state
//! (`mimid_actors::provider_keys`), so every node of a provider franks and validates with the
//! same keys (a Frank computed by one node is checked by another) and a backup carries them;
//! the node builds its [`FrankingKeys`] from the replicated bytes
//! ([`FrankingKeys::from_replicated`], once [`crate::key_file::settle_provider_keys`] decided
//! them). What a node offers when the provider has none yet are its two files in the data
//! directory, generated on first start ([`crate::key_file`]; [`FRANKING_SIGNING_KEY_FILE`],
//! [`FRANKING_HUB_KEY_FILE`]), so a provider that ran before keeps its keys. Rotating them
//! means new rooms (MIMI.md §5.3.1: clients ReInit), so they are never replaced.
//!
//! Nothing is franked before the keys are known: the client and federation APIs are served
//! only then, and the hub's notifies wait for them ([`NotifyWhenKeysKnown`]).
//!
//! Where Franks are made ([`Franking`]): at the edge, never in apply (an apply must not sign),
//! from what apply recorded (`mimid_actors::franking`): the sending user,
//! the franking tag and the item's accepted time. A room is franked when its GroupContext
//! names this provider's franking key as `franking_agent` and requires SafeAAD with
//! `frank_aad` (component 0x0002 lists 0x0020); both are fixed at creation (the hub refuses
//! AppDataUpdates of components it does not manage), so the answer is cached per room.
//!
//! A Frank depends only on its message (the tag, the sender, the room and the accepted time:
//! `ServerFrankingContext`), never on who it is delivered to, so each node signs it once: the
//! Franks it made are kept in a bounded cache keyed by that signed input
//! ([`Franking::new`]'s `cache_entries`, `limits.frank_cache_entries`), shared by the
//! submitMessage answer, the notifies and every push stream delivering the message. An evicted
//! Frank that is needed again is signed again; HMAC and Ed25519 (RFC 8032 §5.1.6) are
//! deterministic, so it is the same bytes (counted in
//! `mimid_limit_hits_total{limit="frank_cache"}`).
//!
//! [IMPL CHOICE] `application_data` is the MIMI content bytes (no ApplicationFraming: rooms do
//! not advertise content types).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::BuildHasher as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use mimid_actors::actor::{Federation, NotifyError};
use mimid_actors::command::Submitter;
use mimid_actors::franking::{FrankRecord, FRANKING_TAG_LEN};
use mimid_actors::hub::Hub;
use mimid_actors::ids::{RoomId, UserId};
use mimid_actors::moderation::{AbuseReport as StoredAbuseReport, ReportedMessage};
use mimid_actors::policy::component;
use mimid_actors::provider_keys::ProviderKeys;
use mimid_actors::room::log::{ItemBody, LogItem};
use mimid_actors::shard::Shards;
use openmls::component::{ComponentType, ComponentsList};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, Ciphersuite, Extensions, GroupContext, MlsMessageBodyIn, MlsMessageIn,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::types::SignatureScheme;
use parking_lot::Mutex;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::content::{MimiContent, SALT_LEN};
use crate::key_file::{
    load_or_generate, load_or_generate_signing_key_bytes, signing_key_from_bytes, KeyFileError,
};
use crate::metrics::{Limit, Metrics};
use crate::wire::abuse::{AbuseReport, AbusiveMessage};
use crate::wire::sign::{sign_with_label, verify_with_label, SignatureError};
use crate::wire::submit::{Frank, FrankingAgentData, FrankingIntegrityTbs, ServerFrankingContext};
use crate::wire::types::{CipherSuite, IdentifierUri, SignaturePublicKey};
use crate::wire::{Decode, Encode, Limits, Mls, WireError};

/// The franking signing key file, relative to the data directory.
pub const FRANKING_SIGNING_KEY_FILE: &str = "franking_signing_key";
/// The HMAC `hub_key` file, relative to the data directory.
pub const FRANKING_HUB_KEY_FILE: &str = "franking_hub_key";
/// Bytes of the `hub_key`.
pub const HUB_KEY_LEN: usize = 32;
/// The `SignWithLabel` label of the franking integrity signature (protocol-06 §5.4.1).
pub const FRANKING_SIGNATURE_LABEL: &str = "FrankingIntegrityTBS";
/// The only suite franks are signed under: the rooms' (MIMI.md §11).
pub const FRANKING_CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Most messages one abuse report may carry.
pub const MAX_MESSAGES_PER_REPORT: usize = 32;
/// SHA-256's block size (RFC 2104's `B`).
const SHA256_BLOCK_LEN: usize = 64;

/// HMAC-SHA256 (RFC 2104) of the concatenation of `data`.
///
/// ```
/// // RFC 4231 §4.3, test case 2.
/// let mac = mimid_node::franking::hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
/// assert_eq!(
///     hex::encode(mac),
///     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
/// );
/// ```
pub fn hmac_sha256(key: &[u8], data: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; SHA256_BLOCK_LEN];
    if key.len() > SHA256_BLOCK_LEN {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    for part in data {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The sender's `franking_tag = HMAC-SHA256(salt, application_data)` (protocol-06 §5.4.1).
pub fn franking_tag(salt: &[u8; SALT_LEN], application_data: &[u8]) -> [u8; FRANKING_TAG_LEN] {
    hmac_sha256(salt, &[application_data])
}

/// Why a Frank is refused, with a reason specific enough for the reporter or receiver.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrankError {
    #[error("message_content is not MIMI content: {0}")]
    Content(String),
    #[error("the content names no {0} (MIMI content extension {1}), which franking binds")]
    MissingExtension(&'static str, u8),
    #[error("the content's {field} {value:?} is not a {expected} URI")]
    BadUri {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("the message was sent in {content_room}, not in {room}")]
    WrongRoom { content_room: RoomId, room: RoomId },
    #[error("the message was sent by {sender}, not by the alleged abuser {alleged}")]
    NotTheAbuser { sender: UserId, alleged: UserId },
    #[error("franking_signature_ciphersuite {0:#06x} is not the room's suite 0x0001")]
    WrongSuite(u16),
    #[error("server_frank does not match: the content, sender, room or accepted_timestamp differs from what the hub franked")]
    ServerFrankMismatch,
    #[error("franking_integrity_signature does not verify: {0}")]
    Signature(SignatureError),
    #[error("the franking tag in the message's SafeAAD does not match its content")]
    TagMismatch,
    #[error("the room's franking agent is not credentialed for its hub {0}")]
    AgentNotHub(String),
    #[error("franking_agent does not decode: {0}")]
    Agent(String),
    #[error("encoding: {0}")]
    Encode(#[from] WireError),
}

/// What the franking signing key is called in messages.
const SIGNING_KEY_WHAT: &str = "the franking signing key";

/// The bytes of this node's two franking key files (the signing key as seed then public key,
/// and the `hub_key`), generated and stored on first start: what the node offers as the
/// provider's franking keys.
pub fn load_or_generate_files(data_dir: &Path) -> Result<(Vec<u8>, Vec<u8>), KeyFileError> {
    let signing_key =
        load_or_generate_signing_key_bytes(data_dir, FRANKING_SIGNING_KEY_FILE, SIGNING_KEY_WHAT)?;
    let hub_key = load_or_generate(
        data_dir,
        FRANKING_HUB_KEY_FILE,
        "the franking hub_key",
        HUB_KEY_LEN,
        || {
            let mut key = vec![0u8; HUB_KEY_LEN];
            rand::rngs::OsRng.fill_bytes(&mut key);
            Ok(key)
        },
        |_, _| Ok(()),
    )?;
    Ok((signing_key, hub_key))
}

/// The provider's franking keys.
pub struct FrankingKeys {
    domain: String,
    signer: SignatureKeyPair,
    hub_key: [u8; HUB_KEY_LEN],
}

impl FrankingKeys {
    /// Loads the keys of provider `domain` from this node's key files in `data_dir`,
    /// generating them on first start.
    pub fn load_or_generate(data_dir: &Path, domain: &str) -> Result<FrankingKeys, KeyFileError> {
        let (signing_key, hub_key) = load_or_generate_files(data_dir)?;
        Self::from_bytes(domain, &signing_key, &hub_key)
    }

    /// The keys of provider `domain` from its replicated keys; an error if the signing key is
    /// not an Ed25519 pair whose halves belong together or the `hub_key` is not 32 bytes.
    pub fn from_replicated(
        domain: &str,
        keys: &ProviderKeys,
    ) -> Result<FrankingKeys, KeyFileError> {
        Self::from_bytes(domain, &keys.franking_signing_key, &keys.franking_hub_key)
    }

    fn from_bytes(
        domain: &str,
        signing_key: &[u8],
        hub_key: &[u8],
    ) -> Result<FrankingKeys, KeyFileError> {
        let hub_key = hub_key.try_into().map_err(|_| KeyFileError::Replicated {
            what: "the franking hub_key",
            reason: format!("{} bytes, not {HUB_KEY_LEN}", hub_key.len()),
        })?;
        Ok(FrankingKeys {
            domain: domain.to_owned(),
            signer: signing_key_from_bytes(signing_key, SIGNING_KEY_WHAT)?,
            hub_key,
        })
    }

    /// The franking public key.
    pub fn public_key(&self) -> &[u8] {
        self.signer.public()
    }

    /// `FrankingAgentData` for a room's GroupContext (component 0x0021): the public key and a
    /// basic credential naming this provider's domain.
    pub fn agent(&self) -> Result<FrankingAgentData, WireError> {
        Ok(FrankingAgentData {
            franking_signature_key: SignaturePublicKey(self.signer.public().to_vec()),
            credential: Mls::from_value(
                BasicCredential::new(self.domain.as_bytes().to_vec()).into(),
            )?,
        })
    }

    /// `server_frank = HMAC-SHA256(hub_key, franking_tag || ServerFrankingContext)`.
    pub fn server_frank(
        &self,
        franking_tag: &[u8; FRANKING_TAG_LEN],
        context: &ServerFrankingContext,
    ) -> Result<[u8; 32], WireError> {
        Ok(hmac_sha256(
            &self.hub_key,
            &[franking_tag, &context.to_bytes()?],
        ))
    }

    /// The Frank of a message with `franking_tag`, sent and accepted as `context` says.
    pub fn frank(
        &self,
        franking_tag: &[u8; FRANKING_TAG_LEN],
        context: ServerFrankingContext,
    ) -> Result<Frank, FrankError> {
        let server_frank = self.server_frank(franking_tag, &context)?;
        let tbs = FrankingIntegrityTbs {
            server_frank,
            franking_signature_ciphersuite: FRANKING_CIPHERSUITE.into(),
            context,
        };
        let signature = sign_with_label(&self.signer, FRANKING_SIGNATURE_LABEL, &tbs.to_bytes()?)
            .map_err(FrankError::Signature)?;
        Ok(Frank {
            server_frank,
            franking_signature_ciphersuite: tbs.franking_signature_ciphersuite,
            franking_integrity_signature: signature,
        })
    }

    /// The hub's check of a reported Frank (MIMI.md §5.8): `server_frank` recomputed from
    /// `franking_tag` and `context` with our `hub_key`, then the signature under our key.
    pub fn validate(
        &self,
        frank: &Frank,
        franking_tag: &[u8; FRANKING_TAG_LEN],
        context: ServerFrankingContext,
    ) -> Result<(), FrankError> {
        check_suite(frank)?;
        let expected = self.server_frank(franking_tag, &context)?;
        if !constant_time_eq(&expected, &frank.server_frank) {
            return Err(FrankError::ServerFrankMismatch);
        }
        verify_signature(self.signer.public(), frank, context)
    }

    /// Validates every message of `report` for `room` (protocol-06 §5.9, MIMI.md §5.8) and
    /// returns what is stored; the first refused message names the reason.
    pub fn validate_report(
        &self,
        room: &RoomId,
        report: &AbuseReport,
        submitter: Submitter,
    ) -> Result<StoredAbuseReport, String> {
        let alleged = report
            .alleged_abuser_uri
            .user("AbuseReport.allegedAbuserUri")
            .map_err(|e| format!("{}: {e}", e.code()))?;
        let reporting_user = if report.reporting_user.as_bytes().is_empty() {
            None
        } else {
            Some(
                report
                    .reporting_user
                    .user("AbuseReport.reportingUser")
                    .map_err(|e| format!("{}: {e}", e.code()))?,
            )
        };
        if report.messages.is_empty() {
            return Err(
                "AbuseReport.messages: a report carries at least one franked message".into(),
            );
        }
        if report.messages.len() > MAX_MESSAGES_PER_REPORT {
            return Err(format!(
                "AbuseReport.messages: {} messages; a report carries at most \
                 {MAX_MESSAGES_PER_REPORT}",
                report.messages.len()
            ));
        }
        let messages = report
            .messages
            .iter()
            .enumerate()
            .map(|(index, message)| {
                self.validate_message(room, &alleged, message)
                    .map_err(|e| format!("AbuseReport.messages[{index}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StoredAbuseReport {
            submitter,
            reporting_user,
            alleged_abuser: alleged,
            reason_code: report.reason_code.0,
            note: report.note.clone(),
            messages,
        })
    }

    fn validate_message(
        &self,
        room: &RoomId,
        alleged: &UserId,
        message: &AbusiveMessage,
    ) -> Result<ReportedMessage, FrankError> {
        let content = MimiContent::decode(&message.message_content)
            .map_err(|e| FrankError::Content(e.to_string()))?;
        let (sender, content_room) = content_parties(&content)?;
        if content_room != *room {
            return Err(FrankError::WrongRoom {
                content_room,
                room: room.clone(),
            });
        }
        if sender != *alleged {
            return Err(FrankError::NotTheAbuser {
                sender,
                alleged: alleged.clone(),
            });
        }
        let tag = franking_tag(&content.salt, &message.message_content);
        self.validate(
            &message.frank,
            &tag,
            context(&sender, room, message.accepted_timestamp),
        )?;
        Ok(ReportedMessage {
            sender,
            accepted_ts_ms: message.accepted_timestamp,
            content: message.message_content.clone(),
        })
    }
}

/// The `ServerFrankingContext` of a message `sender` sent in `room`, accepted at
/// `accepted_ts_ms`.
pub fn context(sender: &UserId, room: &RoomId, accepted_ts_ms: u64) -> ServerFrankingContext {
    ServerFrankingContext {
        sender_uri: IdentifierUri::from(sender),
        room_uri: IdentifierUri::from(room),
        accepted_timestamp: accepted_ts_ms,
    }
}

/// The sender (extension 1) and room (extension 2) a MIMI content names.
pub fn content_parties(content: &MimiContent) -> Result<(UserId, RoomId), FrankError> {
    let sender_text = content
        .extensions
        .sender_uri()
        .ok_or(FrankError::MissingExtension("senderUri", 1))?;
    let room_text = content
        .extensions
        .room_uri()
        .ok_or(FrankError::MissingExtension("roomUri", 2))?;
    let sender = UserId::parse(sender_text).map_err(|_| FrankError::BadUri {
        field: "senderUri",
        value: sender_text.to_owned(),
        expected: "user",
    })?;
    let room = RoomId::parse(room_text).map_err(|_| FrankError::BadUri {
        field: "roomUri",
        value: room_text.to_owned(),
        expected: "room",
    })?;
    Ok((sender, room))
}

fn check_suite(frank: &Frank) -> Result<(), FrankError> {
    if frank.franking_signature_ciphersuite != CipherSuite::from(FRANKING_CIPHERSUITE) {
        return Err(FrankError::WrongSuite(
            frank.franking_signature_ciphersuite.0,
        ));
    }
    Ok(())
}

/// Verifies `frank`'s integrity signature under the franking `public_key` for `context`.
pub fn verify_signature(
    public_key: &[u8],
    frank: &Frank,
    context: ServerFrankingContext,
) -> Result<(), FrankError> {
    check_suite(frank)?;
    let tbs = FrankingIntegrityTbs {
        server_frank: frank.server_frank,
        franking_signature_ciphersuite: frank.franking_signature_ciphersuite,
        context,
    };
    verify_with_label(
        SignatureScheme::ED25519,
        public_key,
        FRANKING_SIGNATURE_LABEL,
        &tbs.to_bytes()?,
        &frank.franking_integrity_signature,
    )
    .map_err(FrankError::Signature)
}

/// A franked message as its receiver has it.
pub struct ReceivedMessage<'a> {
    /// The decrypted MIMI content bytes (`application_data`).
    pub content: &'a [u8],
    /// The content's salt.
    pub salt: &'a [u8; SALT_LEN],
    /// The franking tag the message's SafeAAD carried.
    pub aad_tag: &'a [u8; FRANKING_TAG_LEN],
    /// The sender the content names (checked by the caller against the MLS sender).
    pub sender: &'a UserId,
    /// The room the content names (checked by the caller against the room it came in).
    pub room: &'a RoomId,
    /// The hub's accepted time the delivery carried.
    pub accepted_ts_ms: u64,
}

/// A receiver's check of a delivered Frank (MIMI.md §5.3.1): the room's `agent` is
/// credentialed for the room's hub, the content's tag is the one the message's SafeAAD
/// carried, and the signature verifies for the sender, room and accepted time.
pub fn check_received(
    agent: &FrankingAgentData,
    frank: &Frank,
    message: &ReceivedMessage<'_>,
) -> Result<(), FrankError> {
    let credential = BasicCredential::try_from(agent.credential.value().clone())
        .map_err(|e| FrankError::Agent(e.to_string()))?;
    if credential.identity() != message.room.domain().as_bytes() {
        return Err(FrankError::AgentNotHub(message.room.domain().to_owned()));
    }
    if franking_tag(message.salt, message.content) != *message.aad_tag {
        return Err(FrankError::TagMismatch);
    }
    verify_signature(
        agent.franking_signature_key.as_bytes(),
        frank,
        context(message.sender, message.room, message.accepted_ts_ms),
    )
}

/// The franking agent of a room's GroupContext extensions, if the room is franked: it names
/// one (component 0x0021) and requires SafeAAD with `frank_aad` (component 0x0002 lists
/// 0x0020).
pub fn room_franking_agent(extensions: &Extensions<GroupContext>) -> Option<FrankingAgentData> {
    let dictionary = extensions.app_data_dictionary()?.dictionary();
    let safe_aad = dictionary.get(&ComponentType::SafeAad.into())?;
    let listed = ComponentsList::tls_deserialize_exact(safe_aad).ok()?;
    if !listed.ids().contains(&component::FRANK_AAD) {
        return None;
    }
    let agent = dictionary.get(&component::FRANKING_AGENT)?;
    FrankingAgentData::from_bytes(
        agent,
        &Limits {
            max_body_len: agent.len(),
        },
    )
    .ok()
}

/// Compares two MACs without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a Frank signs besides the keys (protocol-06 §5.4.1): the message's franking tag and
/// its `ServerFrankingContext` (sender, room, accepted time). Nothing of the recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FrankInput {
    room: RoomId,
    sender: UserId,
    franking_tag: [u8; FRANKING_TAG_LEN],
    accepted_ts_ms: u64,
}

/// One cached Frank; the first caller signs, concurrent callers for the same message wait for
/// it rather than sign too. `None`: signing failed (deterministic: an encoding error).
type FrankSlot = Arc<OnceLock<Option<Frank>>>;

/// The Franks this node signed, by their signed input, at most `capacity` of them; the oldest
/// is evicted first. A message is delivered right after it is accepted (the submit answer, a
/// notify per follower, every attached stream), so insertion order is use order; a stream that
/// reads a backlog further back than `capacity` messages signs its Franks again.
struct FrankCache {
    capacity: usize,
    state: Mutex<FrankCacheState>,
}

#[derive(Default)]
struct FrankCacheState {
    slots: HashMap<Arc<FrankInput>, FrankSlot>,
    /// The keys of `slots`, oldest first.
    order: VecDeque<Arc<FrankInput>>,
    /// Hashes of the last `capacity` evicted inputs, oldest first, to tell a Frank signed again
    /// because the bound evicted it from one never signed (a hash collision at worst miscounts
    /// the metric; the Frank is always the signature of its own input).
    evicted: HashSet<u64>,
    evicted_order: VecDeque<u64>,
}

impl FrankCache {
    fn new(capacity: usize) -> Self {
        FrankCache {
            capacity: capacity.max(1),
            state: Mutex::new(FrankCacheState::default()),
        }
    }

    /// The slot of `input`, created (evicting the oldest when full) if missing; `true` when
    /// `input` was evicted before, i.e. its Frank is about to be signed a second time.
    fn slot(&self, input: &FrankInput) -> (FrankSlot, bool) {
        let mut state = self.state.lock();
        if let Some(slot) = state.slots.get(input) {
            return (slot.clone(), false);
        }
        let hash = state.slots.hasher().hash_one(input);
        let signed_before = state.evicted.remove(&hash);
        if state.order.len() >= self.capacity {
            if let Some(oldest) = state.order.pop_front() {
                state.slots.remove(&*oldest);
                let oldest = state.slots.hasher().hash_one(&*oldest);
                state.evicted.insert(oldest);
                state.evicted_order.push_back(oldest);
                if state.evicted_order.len() > self.capacity {
                    if let Some(forgotten) = state.evicted_order.pop_front() {
                        state.evicted.remove(&forgotten);
                    }
                }
            }
        }
        let input = Arc::new(input.clone());
        let slot = FrankSlot::default();
        state.order.push_back(input.clone());
        state.slots.insert(input, slot.clone());
        (slot, signed_before)
    }
}

/// The node's franking service: the keys, and the Franks of messages of the rooms this
/// node's replicas hold, computed at delivery, once per message (module docs).
pub struct Franking {
    keys: FrankingKeys,
    shards: Shards,
    /// Rooms hosted here and whether they are franked by our key (fixed at creation).
    franked_rooms: Mutex<BTreeMap<RoomId, bool>>,
    /// The Franks signed lately, shared by every delivery of their message.
    cache: FrankCache,
    /// Franks signed since start (one Ed25519 signature each).
    signatures: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Franking {
    /// The franking service with `keys` over the node's `shards`, keeping the Franks of the
    /// last `cache_entries` messages it franked (at least one; `limits.frank_cache_entries`).
    /// A Frank signed again after its eviction counts in `metrics` as a hit of
    /// [`Limit::FrankCache`].
    pub fn new(
        keys: FrankingKeys,
        shards: Shards,
        cache_entries: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Franking {
            keys,
            shards,
            franked_rooms: Mutex::new(BTreeMap::new()),
            cache: FrankCache::new(cache_entries),
            signatures: AtomicU64::new(0),
            metrics,
        }
    }

    /// Franks this node signed since it started: one per message while its Frank stays in the
    /// cache, however many times the message is delivered.
    pub fn signatures(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }

    pub fn keys(&self) -> &FrankingKeys {
        &self.keys
    }

    /// Whether `room`, hosted here, is franked by this provider's key. `false` for a room
    /// this node's replica does not hold (not cached: it may still come).
    pub fn franks(&self, room: &RoomId) -> bool {
        if let Some(known) = self.franked_rooms.lock().get(room) {
            return *known;
        }
        let decided = {
            let data = self.shards.for_room(room).read();
            let Some(state) = data.room(room) else {
                return false;
            };
            self.franked_by_us(state.group_info())
        };
        self.franked_rooms.lock().insert(room.clone(), decided);
        decided
    }

    /// Makes [`Franking::franks`] know `room` when this node holds no replica of the room's
    /// shard: its GroupInfo comes from a node that does (`Hub::room_group_info`). Nothing to do
    /// for a room already decided or held here; a room unknown there stays undecided.
    pub async fn learn_room(&self, hub: &Hub, room: &RoomId) {
        if self.franked_rooms.lock().contains_key(room) || hub.holds(hub.shards().room_shard(room))
        {
            return;
        }
        match hub.room_group_info(room).await {
            Ok(Some(group_info)) => {
                let decided = self.franked_by_us(Some(&group_info));
                self.franked_rooms.lock().insert(room.clone(), decided);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::info!(%room, error = %e, "franking: the room's GroupInfo is out of reach")
            }
        }
    }

    /// Whether a room with this GroupInfo names our franking agent.
    fn franked_by_us(&self, group_info: Option<&[u8]>) -> bool {
        group_info
            .and_then(group_context_extensions)
            .and_then(|extensions| room_franking_agent(&extensions))
            .is_some_and(|agent| {
                self.keys.agent().is_ok_and(|ours| {
                    agent.franking_signature_key == ours.franking_signature_key
                        && agent.credential == ours.credential
                })
            })
    }

    /// The Frank of an application message `sender` submitted to `room`, hosted here, with
    /// the `frank_aad` tag `franking_tag` (`mimid_actors::franking::frank_aad_of`), that the
    /// hub accepted at `accepted_ts_ms`; `None` when the room or the message is not franked
    /// (MIMI.md §5.3: "if frank_aad is present and a franking_agent exists").
    pub fn frank_submitted(
        &self,
        room: &RoomId,
        sender: &UserId,
        franking_tag: Option<[u8; FRANKING_TAG_LEN]>,
        accepted_ts_ms: u64,
    ) -> Option<Frank> {
        self.frank_of(room, sender, &franking_tag?, accepted_ts_ms)
    }

    /// The Frank to deliver with `item` of `room` (hosted or mirrored here): computed for a
    /// hosted room's franked message (signed once per message: every stream, notify and answer
    /// delivering it gets the cached bytes), as received for a mirrored room's.
    pub fn frank_of_item(&self, room: &RoomId, item: &LogItem) -> Option<Frank> {
        if !matches!(item.body, ItemBody::Application { .. }) {
            return None;
        }
        let record = self
            .shards
            .for_room(room)
            .read()
            .franks()
            .get(room, item.seq)
            .cloned()?;
        self.frank_of_record(room, record, item.ts_ms)
    }

    /// The Frank of an item of `room` accepted at `accepted_ts_ms` that apply recorded as
    /// `record`.
    fn frank_of_record(
        &self,
        room: &RoomId,
        record: FrankRecord,
        accepted_ts_ms: u64,
    ) -> Option<Frank> {
        match record {
            FrankRecord::Hub {
                sender,
                franking_tag,
            } => self.frank_of(room, &sender, &franking_tag, accepted_ts_ms),
            FrankRecord::Received { frank } => Frank::from_bytes(
                &frank,
                &Limits {
                    max_body_len: frank.len(),
                },
            )
            .ok(),
        }
    }

    /// The Frank of a message of a franked room, from the cache or signed now (and kept).
    fn frank_of(
        &self,
        room: &RoomId,
        sender: &UserId,
        tag: &[u8; FRANKING_TAG_LEN],
        accepted_ts_ms: u64,
    ) -> Option<Frank> {
        if !self.franks(room) {
            return None;
        }
        let input = FrankInput {
            room: room.clone(),
            sender: sender.clone(),
            franking_tag: *tag,
            accepted_ts_ms,
        };
        let (slot, signed_before) = self.cache.slot(&input);
        if signed_before {
            self.metrics.count_limit_hit(Limit::FrankCache);
        }
        slot.get_or_init(|| self.sign(&input)).clone()
    }

    /// Signs the Frank of `input` (the HMAC and one Ed25519 signature).
    fn sign(&self, input: &FrankInput) -> Option<Frank> {
        self.signatures.fetch_add(1, Ordering::Relaxed);
        let context = context(&input.sender, &input.room, input.accepted_ts_ms);
        match self.keys.frank(&input.franking_tag, context) {
            Ok(frank) => Some(frank),
            Err(e) => {
                tracing::error!(room = %input.room, error = %e, "cannot frank a message");
                None
            }
        }
    }
}

/// The GroupContext extensions of a GroupInfo (`MLSMessage` bytes).
fn group_context_extensions(group_info: &[u8]) -> Option<Extensions<GroupContext>> {
    let message = MlsMessageIn::tls_deserialize_exact(group_info).ok()?;
    match message.extract() {
        MlsMessageBodyIn::GroupInfo(info) => Some(info.group_context().extensions().clone()),
        _ => None,
    }
}

/// The hub's outgoing notify (MIMI.md §5.4) until the franking keys are known: a notify waits
/// for them, then goes through the sender set with [`NotifyWhenKeysKnown::set`], so no notify
/// leaves without the Franks of a franked room. The room actors run their notifies as tasks of
/// their own, so a waiting one holds up nothing else.
pub struct NotifyWhenKeysKnown {
    sender: tokio::sync::watch::Sender<Option<Arc<dyn Federation>>>,
}

impl Default for NotifyWhenKeysKnown {
    fn default() -> Self {
        NotifyWhenKeysKnown {
            sender: tokio::sync::watch::Sender::new(None),
        }
    }
}

impl NotifyWhenKeysKnown {
    /// Sends every notify, waiting and later, through `federation` (a `NotifySender` with the
    /// keys). A second call replaces the first.
    pub fn set(&self, federation: Arc<dyn Federation>) {
        self.sender.send_replace(Some(federation));
    }
}

impl Federation for NotifyWhenKeysKnown {
    fn notify(
        &self,
        room: &RoomId,
        provider: &str,
        items: Vec<LogItem>,
    ) -> Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send>> {
        let mut known = self.sender.subscribe();
        let room = room.clone();
        let provider = provider.to_owned();
        Box::pin(async move {
            let federation = known
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|federation| federation.clone());
            match federation {
                Some(federation) => federation.notify(&room, &provider, items).await,
                None => Err(NotifyError {
                    reason: "the node stopped before the franking keys were known".into(),
                    retry_after: None,
                }),
            }
        })
    }
}

/// SHA-256 of an `MLSMessage`'s bytes: how a follower matches a notify's Frank to its message
/// (`mimid_actors::franking::ReceivedFrank`).
pub fn message_sha256(message: &[u8]) -> [u8; 32] {
    Sha256::digest(message).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::abuse::AbuseType;
    use mimid_actors::ids::UserId;

    fn keys(dir: &Path) -> FrankingKeys {
        FrankingKeys::load_or_generate(dir, "a.example").unwrap()
    }

    fn alice() -> UserId {
        UserId::parse("mimi://a.example/u/alice").unwrap()
    }

    fn room() -> RoomId {
        RoomId::parse("mimi://a.example/r/club").unwrap()
    }

    /// RFC 4231 §4.2, §4.7: a short key, and a key longer than the block (hashed first).
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let mac = hmac_sha256(&[0x0b; 20], &[b"Hi There"]);
        assert_eq!(
            hex::encode(mac),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let mac = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// protocol-06 §5.4.1: the keys survive a restart; a Frank verifies under the public key
    /// and is bound to every part of the context.
    #[test]
    fn franks_are_deterministic_and_bound_to_their_context() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path());
        let again = FrankingKeys::load_or_generate(dir.path(), "a.example").unwrap();
        assert_eq!(keys.public_key(), again.public_key());
        assert_eq!(keys.hub_key, again.hub_key);
        let tag = [3u8; 32];
        let frank = keys.frank(&tag, context(&alice(), &room(), 10)).unwrap();
        assert_eq!(
            frank,
            again.frank(&tag, context(&alice(), &room(), 10)).unwrap(),
            "HMAC and Ed25519 are deterministic: every delivery carries the same Frank"
        );
        keys.validate(&frank, &tag, context(&alice(), &room(), 10))
            .unwrap();
        verify_signature(keys.public_key(), &frank, context(&alice(), &room(), 10)).unwrap();
        assert_eq!(
            keys.validate(&frank, &tag, context(&alice(), &room(), 11)),
            Err(FrankError::ServerFrankMismatch)
        );
        assert_eq!(
            keys.validate(&frank, &[4u8; 32], context(&alice(), &room(), 10)),
            Err(FrankError::ServerFrankMismatch)
        );
        let mut forged = frank.clone();
        forged.franking_integrity_signature[0] ^= 1;
        assert!(matches!(
            keys.validate(&forged, &tag, context(&alice(), &room(), 10)),
            Err(FrankError::Signature(_))
        ));
        let other = FrankingKeys::load_or_generate(&dir.path().join("b"), "a.example").unwrap();
        assert_eq!(
            other.validate(&frank, &tag, context(&alice(), &room(), 10)),
            Err(FrankError::ServerFrankMismatch),
            "another provider's hub_key"
        );
    }

    /// MIMI.md §5.3.1 across nodes: keys built from the replicated bytes (the files' formats)
    /// frank exactly as the files' keys do; malformed bytes are refused with the reason.
    #[test]
    fn replicated_keys_frank_like_the_files_and_malformed_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = keys(dir.path());
        let (signing_key, hub_key) = load_or_generate_files(dir.path()).unwrap();
        let replicated = ProviderKeys {
            hub_signing_key: signing_key.clone(),
            franking_signing_key: signing_key.clone(),
            franking_hub_key: hub_key.clone(),
        };
        let from_replicated = FrankingKeys::from_replicated("a.example", &replicated).unwrap();
        assert_eq!(from_replicated.public_key(), files.public_key());
        let tag = [5u8; 32];
        assert_eq!(
            from_replicated
                .frank(&tag, context(&alice(), &room(), 3))
                .unwrap(),
            files.frank(&tag, context(&alice(), &room(), 3)).unwrap()
        );
        let short = ProviderKeys {
            franking_hub_key: hub_key[..31].to_vec(),
            ..replicated.clone()
        };
        assert!(matches!(
            FrankingKeys::from_replicated("a.example", &short),
            Err(KeyFileError::Replicated {
                what: "the franking hub_key",
                ..
            })
        ));
        let mut swapped = signing_key.clone();
        swapped[0] ^= 1;
        let mismatched = ProviderKeys {
            franking_signing_key: swapped,
            ..replicated
        };
        assert!(matches!(
            FrankingKeys::from_replicated("a.example", &mismatched),
            Err(KeyFileError::Replicated { .. })
        ));
    }

    /// A franking service over one empty shard, the `room()` marked franked by our key (as
    /// `Franking::franks` decides from a hosted room's GroupContext), keeping `entries` Franks.
    fn franking(dir: &Path, entries: usize) -> (Franking, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let franking = Franking::new(keys(dir), Shards::new(1), entries, metrics.clone());
        franking.franked_rooms.lock().insert(room(), true);
        (franking, metrics)
    }

    /// What apply records for alice's message with the franking tag `[tag; 32]`.
    fn hub_record(tag: u8) -> FrankRecord {
        FrankRecord::Hub {
            sender: alice(),
            franking_tag: [tag; FRANKING_TAG_LEN],
        }
    }

    /// `mimid_limit_hits_total{limit="frank_cache"}` of `metrics`.
    fn frank_cache_hits(metrics: &Metrics) -> u64 {
        let series = format!(
            "mimid_limit_hits_total{{limit=\"{}\"}} ",
            Limit::FrankCache.as_str()
        );
        metrics
            .encode()
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |value| value.parse().unwrap())
    }

    /// protocol-06 §5.4.1: a Frank depends on the message only (tag, sender, room, accepted
    /// time), so a message pushed to 1 000 streams at once (from four threads), notified and
    /// answered is signed once, and every delivery carries the same bytes, which verify and
    /// equal a Frank signed without the cache.
    #[test]
    fn a_message_delivered_to_many_streams_is_signed_once() {
        let dir = tempfile::tempdir().unwrap();
        let (franking, metrics) = franking(dir.path(), 16);
        let delivered: Vec<Frank> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..250)
                            .map(|_| {
                                franking
                                    .frank_of_record(&room(), hub_record(1), 42)
                                    .unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap())
                .collect()
        });
        let answered = franking
            .frank_submitted(&room(), &alice(), Some([1; FRANKING_TAG_LEN]), 42)
            .unwrap();
        assert_eq!(delivered.len(), 1000);
        assert_eq!(
            franking.signatures(),
            1,
            "one signature for 1 000 deliveries"
        );
        let expected = franking
            .keys()
            .frank(&[1; FRANKING_TAG_LEN], context(&alice(), &room(), 42))
            .unwrap();
        let bytes = expected.to_bytes().unwrap();
        for frank in delivered.iter().chain([&answered]) {
            assert_eq!(frank.to_bytes().unwrap(), bytes, "byte-identical Franks");
        }
        verify_signature(
            franking.keys().public_key(),
            &answered,
            context(&alice(), &room(), 42),
        )
        .unwrap();

        // Another message (here: the same tag, accepted later) is a Frank of its own.
        let later = franking
            .frank_of_record(&room(), hub_record(1), 43)
            .unwrap();
        assert_ne!(later, expected);
        assert_eq!(franking.signatures(), 2);
        // A follower's received Frank is decoded, not signed; an unknown room is not franked.
        let received = FrankRecord::Received { frank: bytes };
        assert_eq!(
            franking.frank_of_record(&room(), received, 42),
            Some(expected)
        );
        let elsewhere = RoomId::parse("mimi://a.example/r/unknown").unwrap();
        assert_eq!(
            franking.frank_of_record(&elsewhere, hub_record(1), 42),
            None
        );
        assert_eq!(franking.signatures(), 2);
        assert_eq!(frank_cache_hits(&metrics), 0);
    }

    /// protocol-06 §5.4.1 with a bound (`limits.frank_cache_entries`): past it the oldest Frank
    /// is evicted; a delivery that needs it again signs it again, to the same bytes (Ed25519 is
    /// deterministic, RFC 8032 §5.1.6), and counts a `frank_cache` limit hit; a new message
    /// evicting one counts none.
    #[test]
    fn an_evicted_frank_is_signed_again_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (franking, metrics) = franking(dir.path(), 2);
        let deliver = |tag: u8| {
            franking
                .frank_of_record(&room(), hub_record(tag), 7)
                .unwrap()
        };
        let first = deliver(1);
        deliver(2);
        deliver(3); // evicts 1
        assert_eq!((franking.signatures(), frank_cache_hits(&metrics)), (3, 0));
        deliver(3);
        assert_eq!(franking.signatures(), 3, "3 is still cached");
        assert_eq!(deliver(1), first, "signed again: the same bytes");
        assert_eq!((franking.signatures(), frank_cache_hits(&metrics)), (4, 1));
        deliver(3);
        assert_eq!(franking.signatures(), 4, "1 evicted 2, not 3");
        deliver(2);
        assert_eq!((franking.signatures(), frank_cache_hits(&metrics)), (5, 2));
        deliver(4);
        assert_eq!(
            (franking.signatures(), frank_cache_hits(&metrics)),
            (6, 2),
            "a message never franked before is no hit"
        );
    }

    /// A recording stand-in for the notify sender (the tested part is the gate before it).
    struct Recorded(Arc<Mutex<Vec<(RoomId, String, usize)>>>);

    impl Federation for Recorded {
        fn notify(
            &self,
            room: &RoomId,
            provider: &str,
            items: Vec<LogItem>,
        ) -> Pin<Box<dyn Future<Output = Result<(), NotifyError>> + Send>> {
            self.0
                .lock()
                .push((room.clone(), provider.to_owned(), items.len()));
            Box::pin(async { Ok(()) })
        }
    }

    /// MIMI.md §5.3.1, §5.4: a notify started before the keys are known waits for them, then
    /// goes through the sender set once; one started later goes at once.
    #[tokio::test]
    async fn notifies_wait_until_the_keys_are_known() {
        let gate = NotifyWhenKeysKnown::default();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut early = gate.notify(&room(), "b.example", Vec::new());
        let waker = futures_noop_poll(&mut early);
        assert!(waker.is_pending(), "no notify before the keys are known");
        assert!(sent.lock().is_empty());
        gate.set(Arc::new(Recorded(sent.clone())));
        early.await.unwrap();
        gate.notify(&room(), "c.example", Vec::new()).await.unwrap();
        assert_eq!(
            *sent.lock(),
            [
                (room(), "b.example".to_owned(), 0),
                (room(), "c.example".to_owned(), 0)
            ]
        );
    }

    /// Polls `future` once.
    fn futures_noop_poll<F: Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        Pin::new(future).poll(&mut cx)
    }

    /// MIMI.md §5.8: the hub re-derives the tag from the revealed content; the content must
    /// name the reported room and the alleged abuser.
    #[test]
    fn a_report_validates_only_the_content_that_was_franked() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path());
        let content = MimiContent::plain_text([9; SALT_LEN], "abuse")
            .with_sender_and_room(alice().as_str(), room().as_str())
            .encode()
            .unwrap();
        let tag = franking_tag(&[9; SALT_LEN], &content);
        let frank = keys.frank(&tag, context(&alice(), &room(), 77)).unwrap();
        let report = |content: Vec<u8>, alleged: &str| AbuseReport {
            reporting_user: IdentifierUri::new(""),
            alleged_abuser_uri: IdentifierUri::new(alleged),
            reason_code: AbuseType(0),
            note: "spam".into(),
            messages: vec![AbusiveMessage {
                message_content: content,
                frank: frank.clone(),
                accepted_timestamp: 77,
            }],
            abuse_extensions: crate::wire::discovery::no_extensions().unwrap(),
        };
        let submitter = || Submitter::Provider("b.example".into());
        let stored = keys
            .validate_report(
                &room(),
                &report(content.clone(), alice().as_str()),
                submitter(),
            )
            .unwrap();
        assert_eq!(stored.messages[0].sender, alice());
        assert_eq!(stored.reporting_user, None);
        let refused = keys
            .validate_report(
                &room(),
                &report(content.clone(), "mimi://a.example/u/bob"),
                submitter(),
            )
            .unwrap_err();
        assert!(refused.contains("not by the alleged abuser"), "{refused}");
        let mut altered = content.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let refused = keys
            .validate_report(&room(), &report(altered, alice().as_str()), submitter())
            .unwrap_err();
        assert!(refused.contains("server_frank does not match"), "{refused}");
        let other_room = RoomId::parse("mimi://a.example/r/other").unwrap();
        let refused = keys
            .validate_report(&other_room, &report(content, alice().as_str()), submitter())
            .unwrap_err();
        assert!(
            refused.contains("was sent in mimi://a.example/r/club"),
            "{refused}"
        );
    }
}
