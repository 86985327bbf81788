//! `RoomState` driven by real openmls clients (MlsGroup with the default room policy), named
//! after the spec sections they exercise.

use openmls::component::ComponentData;
use openmls::prelude::{
    tls_codec::Serialize as _, CredentialWithKey, KeyPackage, LeafNodeIndex, MlsGroup,
    MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, OpenMlsProvider, ProcessedMessageContent,
    Proposal, RatchetTreeIn, StagedWelcome, PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls::prelude::{
    AppDataUpdateOperation, AppDataUpdateProposal, DeserializeBytes as _, LeafNodeParameters,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

use crate::command::{HandshakeBundle, SubmitVerdict, Submitter, UpdateVerdict};
use crate::ids::{ClientId, RoomId, UserId};
use crate::policy::{
    self, component, default_room_policy, room_group_context_extensions, room_leaf_capabilities,
    RoomPolicy, DEFAULT_ROLE_MEMBER, ROLE_BANNED,
};
use crate::room::identity::credential_of_client;
use crate::room::log::{ItemBody, LogItem};
use crate::room::state::{
    CreateRoomError, RoomState, SnapshotError, RETRY_CACHE_CAPACITY, RETRY_WINDOW_MS,
    ROOM_CIPHERSUITE,
};

const ALICE: &str = "mimi://a.example/d/alice/phone";
const BOB: &str = "mimi://b.example/d/bob/laptop";
const CATHY: &str = "mimi://c.example/d/cathy/tablet";
const DAVE: &str = "mimi://c.example/d/dave/phone";

/// A client with its own crypto provider and (once it joined) its MLS group; also the
/// openmls client of the hub's split tests (`hub::split::tests`).
pub(crate) struct TestClient {
    pub(crate) id: ClientId,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    group: Option<MlsGroup>,
}

/// What a test commit does.
#[derive(Default)]
struct CommitSpec {
    adds: Vec<KeyPackage>,
    removes: Vec<LeafNodeIndex>,
    proposals: Vec<Proposal>,
    /// Leave pending proposals out of the commit.
    skip_pending: bool,
}

impl TestClient {
    pub(crate) fn new(uri: &str) -> Self {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(ROOM_CIPHERSUITE.signature_algorithm()).unwrap();
        signer.store(provider.storage()).unwrap();
        TestClient {
            id: ClientId::parse(uri).unwrap(),
            provider,
            signer,
            group: None,
        }
    }

    fn user(&self) -> UserId {
        self.id.user()
    }

    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: credential_of_client(&self.id),
            signature_key: self.signer.public().to_vec().into(),
        }
    }

    fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .leaf_node_capabilities(room_leaf_capabilities())
            .build(
                ROOM_CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential(),
            )
            .unwrap()
            .key_package()
            .clone()
    }

    pub(crate) fn group(&mut self) -> &mut MlsGroup {
        self.group.as_mut().expect("client is in the group")
    }

    fn join_config() -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .build()
    }

    /// MIMI.md §6.1: creates the MLS group with the default room policy and returns what the
    /// client uploads (GroupInfo, ratchet tree).
    pub(crate) fn create_group(&mut self) -> (Vec<u8>, Vec<u8>) {
        let extensions = room_group_context_extensions(&default_room_policy(&self.user()));
        let group = MlsGroup::builder()
            .ciphersuite(ROOM_CIPHERSUITE)
            .with_capabilities(room_leaf_capabilities())
            .with_group_context_extensions(extensions)
            .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .build(&self.provider, &self.signer, self.credential())
            .unwrap();
        self.group = Some(group);
        self.upload()
    }

    /// The current GroupInfo (without tree) and ratchet tree.
    pub(crate) fn upload(&self) -> (Vec<u8>, Vec<u8>) {
        let group = self.group.as_ref().unwrap();
        let group_info = group
            .export_group_info(self.provider.crypto(), &self.signer, false)
            .unwrap()
            .tls_serialize_detached()
            .unwrap();
        let tree = group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .unwrap();
        (group_info, tree)
    }

    fn policy(&mut self) -> RoomPolicy {
        RoomPolicy::from_extensions(self.group().extensions()).unwrap()
    }

    /// Builds a commit (not merged until the hub accepts it) and its HandshakeBundle.
    fn commit(&mut self, spec: CommitSpec) -> HandshakeBundle {
        let policy = self.policy();
        let dictionary = self
            .group()
            .extensions()
            .app_data_dictionary()
            .map(|extension| extension.dictionary().clone());
        let own_app_data: Vec<AppDataUpdateProposal> = spec
            .proposals
            .iter()
            .filter_map(|proposal| match proposal {
                Proposal::AppDataUpdate(update) => Some(update.as_ref().clone()),
                _ => None,
            })
            .collect();
        let provider = &self.provider;
        let signer = &self.signer;
        let group = self.group.as_mut().unwrap();
        let mut stage = group
            .commit_builder()
            .consume_proposal_store(!spec.skip_pending)
            .force_self_update(spec.adds.is_empty() && spec.removes.is_empty())
            .propose_adds(spec.adds)
            .propose_removals(spec.removes)
            .add_proposals(spec.proposals)
            .load_psks(provider.storage())
            .unwrap()
            .create_group_info(true);
        // The builder lists pending AppDataUpdates even when the proposal store is not
        // consumed; then only the commit's own ones count.
        let committed: Vec<AppDataUpdateProposal> = if spec.skip_pending {
            own_app_data
        } else {
            stage.app_data_update_proposals().cloned().collect()
        };
        let updates = match policy::resolve_app_data_updates(
            &policy,
            dictionary.as_ref(),
            committed.iter().map(|proposal| ((), proposal)),
        ) {
            Ok(resolution) => resolution.into_parts().1,
            // A client with another policy engine: applies the updates verbatim.
            Err(_) => {
                let mut updater = stage.app_data_dictionary_updater();
                for proposal in &committed {
                    match proposal.operation() {
                        AppDataUpdateOperation::Update(data) => updater.set(
                            ComponentData::from_parts(proposal.component_id(), data.clone()),
                        ),
                        AppDataUpdateOperation::Remove => updater.remove(&proposal.component_id()),
                    }
                }
                updater.changes()
            }
        };
        stage.with_app_data_dictionary_updates(updates);
        let (commit, welcome, group_info) = stage
            .build(provider.rand(), provider.crypto(), signer, |_| true)
            .unwrap()
            .stage_commit(provider)
            .unwrap()
            .into_messages();
        HandshakeBundle::Commit {
            commit: commit.tls_serialize_detached().unwrap(),
            welcome: welcome.map(|welcome| welcome.tls_serialize_detached().unwrap()),
            group_info: group_info.map(|info| info.tls_serialize_detached().unwrap()),
        }
    }

    /// A commit adding `joiners`' users (room-policy: participants with the member role) and
    /// clients, with its Welcome; merged once the hub accepts it ([`Self::accepted`]).
    pub(crate) fn add(&mut self, joiners: &[&TestClient]) -> HandshakeBundle {
        let users: Vec<(UserId, u32)> = joiners
            .iter()
            .map(|client| (client.user(), DEFAULT_ROLE_MEMBER))
            .collect();
        let proposal = self.policy().add_participants_proposal(&users).unwrap();
        self.commit(CommitSpec {
            adds: joiners.iter().map(|client| client.key_package()).collect(),
            proposals: vec![Proposal::AppDataUpdate(Box::new(proposal))],
            ..CommitSpec::default()
        })
    }

    pub(crate) fn accepted(&mut self) {
        let provider = &self.provider;
        self.group
            .as_mut()
            .unwrap()
            .merge_pending_commit(provider)
            .unwrap();
    }

    fn rejected(&mut self) {
        let provider = &self.provider;
        self.group
            .as_mut()
            .unwrap()
            .clear_pending_commit(provider.storage())
            .unwrap();
    }

    fn leaf_of(&mut self, client: &TestClient) -> LeafNodeIndex {
        self.group()
            .members()
            .find(|member| member.credential == credential_of_client(&client.id))
            .expect("client is a member")
            .index
    }

    pub(crate) fn join(&mut self, item: &LogItem) {
        let ItemBody::Welcome {
            welcome,
            ratchet_tree,
            ..
        } = &item.body
        else {
            panic!("expected a Welcome item");
        };
        let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::tls_deserialize_exact_bytes(welcome)
            .unwrap()
            .extract()
        else {
            panic!("expected a Welcome message");
        };
        let tree = RatchetTreeIn::tls_deserialize_exact_bytes(ratchet_tree).unwrap();
        let group = StagedWelcome::new_from_welcome(
            &self.provider,
            &Self::join_config(),
            welcome,
            Some(tree),
        )
        .unwrap()
        .into_group(&self.provider)
        .unwrap();
        self.group = Some(group);
    }

    /// Processes a fanned-out handshake or application item; returns decrypted application data.
    fn process(&mut self, item: &LogItem) -> Option<Vec<u8>> {
        let messages: Vec<&Vec<u8>> = match &item.body {
            ItemBody::Commit { message } | ItemBody::Application { message } => vec![message],
            ItemBody::Proposals { messages } => messages.iter().collect(),
            ItemBody::Welcome { .. } => panic!("members do not process Welcomes"),
        };
        let mut plaintext = None;
        for bytes in messages {
            let message = MlsMessageIn::tls_deserialize_exact_bytes(bytes)
                .unwrap()
                .try_into_protocol_message()
                .unwrap();
            let policy = self.policy();
            let provider = &self.provider;
            let group = self.group.as_mut().unwrap();
            match group
                .process_message(provider, message)
                .unwrap()
                .into_content()
            {
                ProcessedMessageContent::ApplicationMessage(message) => {
                    plaintext = Some(message.into_bytes());
                }
                ProcessedMessageContent::ProposalMessage(proposal) => {
                    group
                        .store_pending_proposal(provider.storage(), *proposal)
                        .unwrap();
                }
                ProcessedMessageContent::StagedCommitMessage(staged) => {
                    group.merge_staged_commit(provider, *staged).unwrap();
                }
                ProcessedMessageContent::UnresolvedAppDataCommit(unresolved) => {
                    let dictionary = group
                        .extensions()
                        .app_data_dictionary()
                        .map(|extension| extension.dictionary().clone());
                    let resolution = policy::resolve_app_data_updates(
                        &policy,
                        dictionary.as_ref(),
                        unresolved
                            .app_data_update_proposals()
                            .map(|proposal| ((), proposal)),
                    )
                    .unwrap();
                    let staged = group
                        .stage_app_data_commit(provider, *unresolved, resolution.into_parts().1)
                        .unwrap();
                    group.merge_staged_commit(provider, staged).unwrap();
                }
                other => panic!("unexpected content {other:?}"),
            }
        }
        plaintext
    }

    /// The text of an application message item.
    pub(crate) fn read(&mut self, item: &LogItem) -> String {
        assert!(
            matches!(item.body, ItemBody::Application { .. }),
            "expected an application message, got {item:?}"
        );
        String::from_utf8(self.process(item).unwrap()).unwrap()
    }

    pub(crate) fn send(&mut self, text: &[u8]) -> Vec<u8> {
        let provider = &self.provider;
        let signer = &self.signer;
        self.group
            .as_mut()
            .unwrap()
            .create_message(provider, signer, text)
            .unwrap()
            .tls_serialize_detached()
            .unwrap()
    }
}

fn room_id() -> RoomId {
    RoomId::parse("mimi://a.example/r/clubhouse").unwrap()
}

fn success_seq(verdict: &UpdateVerdict) -> u64 {
    match verdict {
        UpdateVerdict::Success { seq, .. } => *seq,
        other => panic!("expected success, got {other:?}"),
    }
}

fn not_allowed(verdict: UpdateVerdict) -> String {
    match verdict {
        UpdateVerdict::NotAllowed { reason } => reason,
        other => panic!("expected notAllowed, got {other:?}"),
    }
}

fn invalid(verdict: UpdateVerdict) -> (Vec<Vec<u8>>, String) {
    match verdict {
        UpdateVerdict::InvalidProposal { refs, reason } => (refs, reason),
        other => panic!("expected invalidProposal, got {other:?}"),
    }
}

/// Submits `bundle`, expects a rejection, and checks that the room state did not change.
fn reject(
    room: &mut RoomState,
    sender: &ClientId,
    bundle: &HandshakeBundle,
    ts_ms: u64,
) -> UpdateVerdict {
    let before = room.to_snapshot();
    let verdict = room.handle_handshake(&Submitter::Client(sender.clone()), bundle, ts_ms);
    assert!(
        !matches!(verdict, UpdateVerdict::Success { .. }),
        "expected a rejection"
    );
    assert_eq!(room.to_snapshot(), before, "a rejection changed the room");
    verdict
}

fn reject_message(
    room: &mut RoomState,
    sender: &ClientId,
    message: &[u8],
    ts_ms: u64,
) -> SubmitVerdict {
    let before = room.to_snapshot();
    let verdict = room.handle_app_message(
        &Submitter::Client(sender.clone()),
        &sender.user(),
        message,
        ts_ms,
    );
    assert!(!matches!(verdict, SubmitVerdict::Accepted { .. }));
    assert_eq!(room.to_snapshot(), before, "a rejection changed the room");
    verdict
}

/// A room with Alice (admin) and members Bob and Cathy, all joined.
struct Room {
    state: RoomState,
    alice: TestClient,
    bob: TestClient,
    cathy: TestClient,
}

fn create_room(alice: &mut TestClient) -> RoomState {
    let (group_info, tree) = alice.create_group();
    RoomState::create(room_id(), &alice.id, &group_info, &tree, 1_000).unwrap()
}

/// Alice adds `users` (with the member role) and their clients in one commit.
fn add_members(state: &mut RoomState, alice: &mut TestClient, added: &mut [&mut TestClient]) {
    let joiners: Vec<&TestClient> = added.iter().map(|client| &**client).collect();
    let bundle = alice.add(&joiners);
    let seq =
        success_seq(&state.handle_handshake(&Submitter::Client(alice.id.clone()), &bundle, 2_000));
    alice.accepted();
    let welcome = state.items_after(seq).first().unwrap().clone();
    for client in added.iter_mut() {
        client.join(&welcome);
    }
}

fn three_member_room() -> Room {
    let mut alice = TestClient::new(ALICE);
    let mut bob = TestClient::new(BOB);
    let mut cathy = TestClient::new(CATHY);
    let mut state = create_room(&mut alice);
    add_members(&mut state, &mut alice, &mut [&mut bob, &mut cathy]);
    Room {
        state,
        alice,
        bob,
        cathy,
    }
}

/// Delivers every item after `after` that `client` may see, in order.
fn catch_up(state: &RoomState, client: &mut TestClient, after: u64) {
    for item in state.items_after(after) {
        if state.visible_to(item, &client.id) && !matches!(item.body, ItemBody::Welcome { .. }) {
            client.process(item);
        }
    }
}

#[test]
fn mimi_6_1_create_room_from_creator_group_info_and_tree() {
    let mut alice = TestClient::new(ALICE);
    let state = create_room(&mut alice);

    assert_eq!(state.room(), &room_id());
    assert_eq!(state.epoch(), 0);
    assert_eq!(state.last_seq(), 0);
    assert!(state.items_after(0).is_empty());
    assert_eq!(state.members(), vec![alice.id.clone()]);
    assert_eq!(state.created_ts_ms(), 1_000);
    assert!(state.group_info().is_some());
    assert_eq!(state.ratchet_tree(), alice.upload().1);
    assert_eq!(
        state.policy().role_of(&alice.user()),
        policy::DEFAULT_ROLE_ADMIN
    );
}

#[test]
fn mimi_6_1_create_rejects_wrong_creator_and_bad_inputs() {
    let mut alice = TestClient::new(ALICE);
    let (group_info, tree) = alice.create_group();
    let bob = ClientId::parse(BOB).unwrap();

    let err = RoomState::create(room_id(), &bob, &group_info, &tree, 0).unwrap_err();
    assert!(
        matches!(err, CreateRoomError::CreatorMismatch { .. }),
        "{err}"
    );
    let err = RoomState::create(room_id(), &alice.id, &group_info[..10], &tree, 0).unwrap_err();
    assert!(
        matches!(err, CreateRoomError::MalformedGroupInfo(_)),
        "{err}"
    );
    let err = RoomState::create(room_id(), &alice.id, &tree, &tree, 0).unwrap_err();
    assert!(
        matches!(
            err,
            CreateRoomError::MalformedGroupInfo(_) | CreateRoomError::NotGroupInfo
        ),
        "{err}"
    );
    let err = RoomState::create(room_id(), &alice.id, &group_info, &[1, 2, 3], 0).unwrap_err();
    assert!(
        matches!(err, CreateRoomError::MalformedRatchetTree(_)),
        "{err}"
    );

    // A group info carrying the ratchet tree is refused (protocol-06 §5.2).
    let with_tree = alice
        .group
        .as_ref()
        .unwrap()
        .export_group_info(alice.provider.crypto(), &alice.signer, true)
        .unwrap()
        .tls_serialize_detached()
        .unwrap();
    let err = RoomState::create(room_id(), &alice.id, &with_tree, &tree, 0).unwrap_err();
    assert!(matches!(err, CreateRoomError::EmbeddedRatchetTree), "{err}");

    // A plain MLS group without room policy is not a room.
    let mut plain = TestClient::new(ALICE);
    plain.group = Some(
        MlsGroup::builder()
            .ciphersuite(ROOM_CIPHERSUITE)
            .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .build(&plain.provider, &plain.signer, plain.credential())
            .unwrap(),
    );
    let (group_info, tree) = plain.upload();
    let err = RoomState::create(room_id(), &plain.id, &group_info, &tree, 0).unwrap_err();
    assert!(
        matches!(err, CreateRoomError::MissingRequiredCapability(_)),
        "{err}"
    );
}

#[test]
fn mimi_7_3_add_two_users_yields_commit_then_welcome_for_the_added_only() {
    let mut alice = TestClient::new(ALICE);
    let mut bob = TestClient::new(BOB);
    let mut cathy = TestClient::new(CATHY);
    let mut state = create_room(&mut alice);
    let proposal = alice
        .policy()
        .add_participants_proposal(&[
            (bob.user(), DEFAULT_ROLE_MEMBER),
            (cathy.user(), DEFAULT_ROLE_MEMBER),
        ])
        .unwrap();
    let bundle = alice.commit(CommitSpec {
        adds: vec![bob.key_package(), cathy.key_package()],
        proposals: vec![Proposal::AppDataUpdate(Box::new(proposal))],
        ..CommitSpec::default()
    });

    let verdict = state.handle_handshake(&Submitter::Client(alice.id.clone()), &bundle, 2_000);
    assert_eq!(
        verdict,
        UpdateVerdict::Success {
            accepted_ts_ms: 2_000,
            seq: 1
        }
    );
    alice.accepted();
    let items = state.items_after(0).to_vec();
    assert_eq!(items.len(), 2);
    assert!(matches!(items[0].body, ItemBody::Commit { .. }));
    assert_eq!((items[0].seq, items[0].epoch), (1, 0));
    let ItemBody::Welcome { to, .. } = &items[1].body else {
        panic!("expected a Welcome");
    };
    assert_eq!(to, &vec![bob.id.clone(), cathy.id.clone()]);
    assert_eq!((items[1].seq, items[1].epoch), (2, 1));
    assert_eq!(state.epoch(), 1);

    assert!(state.visible_to(&items[0], &alice.id));
    assert!(!state.visible_to(&items[0], &bob.id));
    assert!(state.visible_to(&items[1], &bob.id));
    assert!(state.visible_to(&items[1], &cathy.id));
    assert!(!state.visible_to(&items[1], &alice.id));

    bob.join(&items[1]);
    cathy.join(&items[1]);
    let mut members = vec![alice.id.clone(), bob.id.clone(), cathy.id.clone()];
    members.sort();
    assert_eq!(state.members(), members);
    assert_eq!(state.policy().participants().len(), 3);
    assert_eq!(bob.policy(), *state.policy());
    assert_eq!(
        state.group_info(),
        match &bundle {
            HandshakeBundle::Commit { group_info, .. } => group_info.as_deref(),
            HandshakeBundle::Proposals { .. } => unreachable!(),
        }
    );
}

#[test]
fn protocol06_5_3_members_send_messages_in_order_with_monotonic_time() {
    let mut room = three_member_room();
    let start = room.state.last_seq();
    let hello = room.bob.send(b"hello");
    let first = room.state.handle_app_message(
        &Submitter::Client(room.bob.id.clone()),
        &room.bob.id.user(),
        &hello,
        5_000,
    );
    assert_eq!(
        first,
        SubmitVerdict::Accepted {
            accepted_ts_ms: 5_000,
            seq: start + 1
        }
    );
    // A leader with a slower clock cannot move hub time backwards.
    let reply = room.alice.send(b"hi bob");
    let second = room.state.handle_app_message(
        &Submitter::Client(room.alice.id.clone()),
        &room.alice.id.user(),
        &reply,
        4_000,
    );
    assert_eq!(
        second,
        SubmitVerdict::Accepted {
            accepted_ts_ms: 5_000,
            seq: start + 2
        }
    );
    let items = room.state.items_after(start);
    assert_eq!(items.len(), 2);
    for item in items {
        assert!(room.state.visible_to(item, &room.cathy.id));
    }
    assert_eq!(room.cathy.process(&items[0]).unwrap(), b"hello");
    assert_eq!(room.cathy.process(&items[1]).unwrap(), b"hi bob");
}

#[test]
fn rfc9420_14_first_commit_of_an_epoch_wins_and_the_loser_catches_up() {
    let mut room = three_member_room();
    let epoch = room.state.epoch();
    let from_alice = room.alice.commit(CommitSpec::default());
    let from_bob = room.bob.commit(CommitSpec::default());

    let seq = success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.alice.id.clone()),
        &from_alice,
        6_000,
    ));
    room.alice.accepted();
    let verdict = reject(&mut room.state, &room.bob.id, &from_bob, 6_001);
    assert_eq!(
        verdict,
        UpdateVerdict::WrongEpoch {
            current_epoch: epoch + 1
        }
    );

    room.bob.rejected();
    catch_up(&room.state, &mut room.bob, seq - 1);
    let again = room.bob.commit(CommitSpec::default());
    success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.bob.id.clone()),
        &again,
        6_002,
    ));
    room.bob.accepted();
    assert_eq!(room.state.epoch(), epoch + 2);
}

#[test]
fn room_policy_8_1_1_member_without_can_add_participant_cannot_add() {
    let mut room = three_member_room();
    let dave = TestClient::new(DAVE);
    let proposal = room
        .bob
        .policy()
        .add_participants_proposal(&[(dave.user(), DEFAULT_ROLE_MEMBER)])
        .unwrap();
    let bundle = room.bob.commit(CommitSpec {
        adds: vec![dave.key_package()],
        proposals: vec![Proposal::AppDataUpdate(Box::new(proposal))],
        ..CommitSpec::default()
    });
    let reason = not_allowed(reject(&mut room.state, &room.bob.id, &bundle, 7_000));
    assert_eq!(reason, "mimi://b.example/u/bob lacks canAddParticipant");

    // Adding Dave's client without putting Dave into the participant list is refused too.
    room.bob.rejected();
    let bundle = room.bob.commit(CommitSpec {
        adds: vec![dave.key_package()],
        ..CommitSpec::default()
    });
    let reason = not_allowed(reject(&mut room.state, &room.bob.id, &bundle, 7_001));
    assert!(
        reason.contains("mimi://c.example/u/dave is not an active participant"),
        "{reason}"
    );
}

#[test]
fn room_policy_8_1_2_member_cannot_remove_or_kick_another() {
    let mut room = three_member_room();
    let cathy_leaf = room.bob.leaf_of(&room.cathy);
    let proposal = room
        .bob
        .policy()
        .remove_participants_proposal(&[room.cathy.user()])
        .unwrap();
    let bundle = room.bob.commit(CommitSpec {
        removes: vec![cathy_leaf],
        proposals: vec![Proposal::AppDataUpdate(Box::new(proposal))],
        ..CommitSpec::default()
    });
    let reason = not_allowed(reject(&mut room.state, &room.bob.id, &bundle, 8_000));
    assert_eq!(reason, "mimi://b.example/u/bob lacks canRemoveParticipant");

    room.bob.rejected();
    let kick = room.bob.commit(CommitSpec {
        removes: vec![cathy_leaf],
        ..CommitSpec::default()
    });
    let reason = not_allowed(reject(&mut room.state, &room.bob.id, &kick, 8_001));
    assert_eq!(reason, "mimi://b.example/u/bob lacks canKick");
}

#[test]
fn protocol06_5_2_removed_member_gets_its_removal_but_nothing_after() {
    let mut room = three_member_room();
    let stale = room.cathy.send(b"before removal");
    let cathy_leaf = room.alice.leaf_of(&room.cathy);
    let proposal = room
        .alice
        .policy()
        .remove_participants_proposal(&[room.cathy.user()])
        .unwrap();
    let bundle = room.alice.commit(CommitSpec {
        removes: vec![cathy_leaf],
        proposals: vec![Proposal::AppDataUpdate(Box::new(proposal))],
        ..CommitSpec::default()
    });
    let removal = success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.alice.id.clone()),
        &bundle,
        9_000,
    ));
    room.alice.accepted();
    assert!(!room.state.members().contains(&room.cathy.id));
    assert_eq!(room.state.policy().role_of(&room.cathy.user()), 0);

    // Cathy's message from before her removal: she is told she is no member, not sent to
    // catch up with an epoch she can never reach.
    let SubmitVerdict::NotAllowed { reason } =
        reject_message(&mut room.state, &room.cathy.id, &stale, 9_001)
    else {
        panic!("expected notAllowed for a removed sender");
    };
    assert!(reason.contains("not a member"), "{reason}");
    // A current-epoch message submitted on Cathy's behalf is refused: she is no member.
    catch_up(&room.state, &mut room.bob, removal - 1);
    let current = room.bob.send(b"current epoch");
    let SubmitVerdict::NotAllowed { reason } =
        reject_message(&mut room.state, &room.cathy.id, &current, 9_002)
    else {
        panic!("expected notAllowed");
    };
    assert_eq!(
        reason,
        "mimi://c.example/d/cathy/tablet is not a member of the room's MLS group"
    );

    let after = success_seq_message(room.state.handle_app_message(
        &Submitter::Client(room.bob.id.clone()),
        &room.bob.id.user(),
        &current,
        9_003,
    ));
    let removal_item = &room.state.items_after(removal - 1)[0];
    assert!(room.state.visible_to(removal_item, &room.cathy.id));
    let after_item = &room.state.items_after(after - 1)[0];
    assert!(!room.state.visible_to(after_item, &room.cathy.id));
    assert!(room.state.visible_to(after_item, &room.alice.id));
    // Cathy can process her own removal.
    room.cathy.process(removal_item);
    assert!(!room.cathy.group().is_active());
}

fn success_seq_message(verdict: SubmitVerdict) -> u64 {
    match verdict {
        SubmitVerdict::Accepted { seq, .. } => seq,
        other => panic!("expected accepted, got {other:?}"),
    }
}

#[test]
fn room_policy_8_1_3_ban_removes_clients_and_unban_does_not_readmit_them() {
    let mut room = three_member_room();
    let cathy_leaf = room.alice.leaf_of(&room.cathy);
    let ban = room
        .alice
        .policy()
        .change_roles_proposal(&[(room.cathy.user(), ROLE_BANNED)])
        .unwrap();
    let bundle = room.alice.commit(CommitSpec {
        removes: vec![cathy_leaf],
        proposals: vec![Proposal::AppDataUpdate(Box::new(ban))],
        ..CommitSpec::default()
    });
    success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.alice.id.clone()),
        &bundle,
        10_000,
    ));
    room.alice.accepted();
    assert_eq!(room.state.policy().role_of(&room.cathy.user()), ROLE_BANNED);
    assert!(!room
        .state
        .policy()
        .is_active_participant(&room.cathy.user()));

    // A banned user's new client cannot be added.
    let cathy_again = TestClient::new(CATHY);
    let bundle = room.alice.commit(CommitSpec {
        adds: vec![cathy_again.key_package()],
        ..CommitSpec::default()
    });
    let reason = not_allowed(reject(&mut room.state, &room.alice.id, &bundle, 10_001));
    assert!(
        reason.contains("is not an active participant after the commit"),
        "{reason}"
    );
    room.alice.rejected();

    // Unban, then adding her client is still not authorized by the unban (§8.1.3).
    let unban = room
        .alice
        .policy()
        .change_roles_proposal(&[(room.cathy.user(), DEFAULT_ROLE_MEMBER)])
        .unwrap();
    let bundle = room.alice.commit(CommitSpec {
        proposals: vec![Proposal::AppDataUpdate(Box::new(unban))],
        ..CommitSpec::default()
    });
    success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.alice.id.clone()),
        &bundle,
        10_002,
    ));
    room.alice.accepted();
    let bundle = room.alice.commit(CommitSpec {
        adds: vec![cathy_again.key_package()],
        ..CommitSpec::default()
    });
    let reason = not_allowed(reject(&mut room.state, &room.alice.id, &bundle, 10_003));
    assert_eq!(
        reason,
        "mimi://a.example/u/alice may not add client mimi://c.example/d/cathy/tablet of another participant"
    );
}

#[test]
fn mimi_6_5_self_remove_is_required_in_the_next_commit() {
    let mut room = three_member_room();
    let start = room.state.last_seq();
    let leave = room
        .bob
        .policy()
        .remove_participants_proposal(&[room.bob.user()])
        .unwrap();
    let (list_update, _) = {
        let provider = &room.bob.provider;
        let signer = &room.bob.signer;
        room.bob
            .group
            .as_mut()
            .unwrap()
            .propose_app_data_update(
                provider,
                signer,
                component::PARTICIPANT_LIST,
                leave.operation().clone(),
            )
            .unwrap()
    };
    let self_remove = {
        let provider = &room.bob.provider;
        let signer = &room.bob.signer;
        room.bob
            .group
            .as_mut()
            .unwrap()
            .leave_group_via_self_remove(provider, signer)
            .unwrap()
    };
    let bundle = HandshakeBundle::Proposals {
        proposals: vec![
            self_remove.tls_serialize_detached().unwrap(),
            list_update.tls_serialize_detached().unwrap(),
        ],
    };
    let seq = success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.bob.id.clone()),
        &bundle,
        11_000,
    ));
    assert_eq!(seq, start + 1);
    assert!(matches!(
        room.state.items_after(start)[0].body,
        ItemBody::Proposals { .. }
    ));
    // Resending the same bundle replays its verdict (MIMI.md §7.6); a new bundle repeating a
    // pending proposal is refused.
    let before = room.state.to_snapshot();
    assert_eq!(
        success_seq(&room.state.handle_handshake(
            &Submitter::Client(room.bob.id.clone()),
            &bundle,
            11_001
        )),
        seq
    );
    assert_eq!(room.state.to_snapshot(), before);
    let repeated = HandshakeBundle::Proposals {
        proposals: vec![self_remove.tls_serialize_detached().unwrap()],
    };
    let (refs, reason) = invalid(reject(&mut room.state, &room.bob.id, &repeated, 11_001));
    assert_eq!(
        (refs.len(), reason.as_str()),
        (1, "the proposal is already pending")
    );

    catch_up(&room.state, &mut room.alice, start);
    let omitting = room.alice.commit(CommitSpec {
        skip_pending: true,
        ..CommitSpec::default()
    });
    let (refs, reason) = invalid(reject(&mut room.state, &room.alice.id, &omitting, 11_002));
    assert_eq!(refs.len(), 2, "{reason}");
    assert!(
        reason.contains("omits 2 required pending proposal(s)"),
        "{reason}"
    );
    room.alice.rejected();

    let including = room.alice.commit(CommitSpec::default());
    success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.alice.id.clone()),
        &including,
        11_003,
    ));
    room.alice.accepted();
    assert!(!room.state.members().contains(&room.bob.id));
    assert_eq!(room.state.policy().role_of(&room.bob.user()), 0);
    assert_eq!(room.alice.policy(), *room.state.policy());
}

#[test]
fn malformed_and_misrouted_inputs_get_specific_verdicts_and_change_nothing() {
    let mut room = three_member_room();
    let epoch = room.state.epoch();
    let HandshakeBundle::Commit {
        commit,
        welcome,
        group_info,
    } = room.alice.commit(CommitSpec::default())
    else {
        unreachable!()
    };
    let alice = room.alice.id.clone();
    let commit_bundle = |commit: Vec<u8>| HandshakeBundle::Commit {
        commit,
        welcome: welcome.clone(),
        group_info: group_info.clone(),
    };

    let (_, reason) = invalid(reject(
        &mut room.state,
        &alice,
        &commit_bundle(commit[..commit.len() / 2].to_vec()),
        1,
    ));
    assert!(reason.starts_with("malformed MLSMessage"), "{reason}");
    let (_, reason) = invalid(reject(
        &mut room.state,
        &alice,
        &commit_bundle(vec![0xff; 64]),
        1,
    ));
    assert!(reason.starts_with("malformed MLSMessage"), "{reason}");
    // An application message (PrivateMessage) on the handshake path.
    let private = room.alice.send(b"not a handshake");
    let reason = not_allowed(reject(
        &mut room.state,
        &alice,
        &commit_bundle(private.clone()),
        1,
    ));
    assert!(reason.contains("must be PublicMessage"), "{reason}");
    // The submitting client is not the signer.
    let reason = not_allowed(reject(
        &mut room.state,
        &room.bob.id,
        &commit_bundle(commit.clone()),
        1,
    ));
    assert!(reason.contains("not by the submitting client"), "{reason}");
    // protocol-06 §5.2: the GroupInfo is not optional.
    let no_info = HandshakeBundle::Commit {
        commit: commit.clone(),
        welcome: None,
        group_info: None,
    };
    let (_, reason) = invalid(reject(&mut room.state, &alice, &no_info, 1));
    assert!(reason.contains("no GroupInfo"), "{reason}");
    let (_, reason) = invalid(reject(
        &mut room.state,
        &alice,
        &HandshakeBundle::Proposals { proposals: vec![] },
        1,
    ));
    assert_eq!(reason, "the proposal bundle is empty");
    let (_, reason) = invalid(reject(
        &mut room.state,
        &alice,
        &HandshakeBundle::Proposals {
            proposals: vec![commit.clone()],
        },
        1,
    ));
    assert_eq!(reason, "expected a proposal");

    // The commit itself is fine; afterwards it is stale (resent as is, it gets its original
    // verdict, MIMI.md §7.6; in any other bundle it is from a past epoch).
    let accepted = room.state.handle_handshake(
        &Submitter::Client(alice.clone()),
        &commit_bundle(commit.clone()),
        2,
    );
    success_seq(&accepted);
    room.alice.accepted();
    assert_eq!(
        room.state.handle_handshake(
            &Submitter::Client(alice.clone()),
            &commit_bundle(commit.clone()),
            3
        ),
        accepted
    );
    let without_group_info = HandshakeBundle::Commit {
        commit,
        welcome: welcome.clone(),
        group_info: None,
    };
    assert_eq!(
        reject(&mut room.state, &alice, &without_group_info, 3),
        UpdateVerdict::WrongEpoch {
            current_epoch: epoch + 1
        }
    );
    // A commit from the future: Bob merged his own commit without the hub.
    catch_up(&room.state, &mut room.bob, 0);
    room.bob.commit(CommitSpec::default());
    room.bob.accepted();
    let ahead = room.bob.commit(CommitSpec::default());
    assert_eq!(
        reject(&mut room.state, &room.bob.id, &ahead, 4),
        UpdateVerdict::WrongEpoch {
            current_epoch: epoch + 1
        }
    );

    // submitMessage: wrong wire format, garbage, stale and future epochs.
    let bob = room.bob.id.clone();
    let public = match &ahead {
        HandshakeBundle::Commit { commit, .. } => commit.clone(),
        HandshakeBundle::Proposals { .. } => unreachable!(),
    };
    let SubmitVerdict::NotAllowed { reason } = reject_message(&mut room.state, &bob, &public, 5)
    else {
        panic!("expected notAllowed")
    };
    assert_eq!(reason, "application messages must be PrivateMessage");
    let SubmitVerdict::NotAllowed { reason } =
        reject_message(&mut room.state, &bob, b"\x00\x01", 5)
    else {
        panic!("expected notAllowed")
    };
    assert!(reason.starts_with("malformed MLSMessage"), "{reason}");
    assert_eq!(
        reject_message(&mut room.state, &alice, &private, 5),
        SubmitVerdict::EpochTooOld {
            current_epoch: epoch + 1
        }
    );
    let future = room.bob.send(b"from the future");
    let SubmitVerdict::NotAllowed { reason } = reject_message(&mut room.state, &bob, &future, 5)
    else {
        panic!("expected notAllowed")
    };
    assert!(reason.contains("ahead of the room's epoch"), "{reason}");
}

#[test]
fn mimi_7_3_welcome_must_match_the_added_key_packages() {
    let mut alice = TestClient::new(ALICE);
    let bob = TestClient::new(BOB);
    let cathy = TestClient::new(CATHY);
    let mut state = create_room(&mut alice);
    let add = |alice: &mut TestClient, client: &TestClient| {
        let proposal = alice
            .policy()
            .add_participants_proposal(&[(client.user(), DEFAULT_ROLE_MEMBER)])
            .unwrap();
        let bundle = alice.commit(CommitSpec {
            adds: vec![client.key_package()],
            proposals: vec![Proposal::AppDataUpdate(Box::new(proposal))],
            ..CommitSpec::default()
        });
        alice.rejected();
        bundle
    };
    let HandshakeBundle::Commit {
        welcome: for_cathy, ..
    } = add(&mut alice, &cathy)
    else {
        unreachable!()
    };
    let HandshakeBundle::Commit {
        commit, group_info, ..
    } = add(&mut alice, &bob)
    else {
        unreachable!()
    };
    let swapped = HandshakeBundle::Commit {
        commit: commit.clone(),
        welcome: for_cathy,
        group_info: group_info.clone(),
    };
    let (_, reason) = invalid(reject(&mut state, &alice.id, &swapped, 1));
    assert!(
        reason.contains("new_member references do not match"),
        "{reason}"
    );
    let missing = HandshakeBundle::Commit {
        commit,
        welcome: None,
        group_info,
    };
    let (_, reason) = invalid(reject(&mut state, &alice.id, &missing, 1));
    assert!(reason.contains("carries no Welcome"), "{reason}");
}

#[test]
fn delivery_cursors_only_move_forward_for_members() {
    let mut room = three_member_room();
    let last = room.state.last_seq();
    assert_eq!(room.state.acked(&room.bob.id), 0);
    room.state.ack(&room.bob.id, last);
    room.state.ack(&room.bob.id, 1);
    assert_eq!(room.state.acked(&room.bob.id), last);
    room.state.ack(&room.cathy.id, last + 100);
    assert_eq!(room.state.acked(&room.cathy.id), last);
    let stranger = ClientId::parse(DAVE).unwrap();
    room.state.ack(&stranger, 1);
    assert_eq!(room.state.acked(&stranger), 0);
}

#[test]
fn snapshot_round_trip_then_continue_processing() {
    let mut room = three_member_room();
    let hello = room.bob.send(b"hello");
    success_seq_message(room.state.handle_app_message(
        &Submitter::Client(room.bob.id.clone()),
        &room.bob.id.user(),
        &hello,
        12_000,
    ));
    room.state.ack(&room.bob.id, 2);

    let bytes = room.state.to_snapshot();
    let mut restored = RoomState::from_snapshot(&bytes).unwrap();
    assert_eq!(restored.to_snapshot(), bytes);
    assert_eq!(restored.members(), room.state.members());
    assert_eq!(restored.epoch(), room.state.epoch());
    assert_eq!(restored.items_after(0), room.state.items_after(0));
    assert_eq!(restored.ratchet_tree(), room.state.ratchet_tree());
    assert_eq!(restored.acked(&room.bob.id), 2);

    // The restored state keeps validating and accepting commits.
    let mut dave = TestClient::new(DAVE);
    let seq = restored.last_seq();
    add_members(&mut restored, &mut room.alice, &mut [&mut dave]);
    assert!(restored.members().contains(&dave.id));
    catch_up(&restored, &mut room.cathy, seq);
    assert_eq!(room.cathy.policy(), *restored.policy());
    let from_dave = dave.send(b"hi all");
    success_seq_message(restored.handle_app_message(
        &Submitter::Client(dave.id.clone()),
        &dave.id.user(),
        &from_dave,
        12_001,
    ));

    assert!(matches!(
        RoomState::from_snapshot(&bytes[..bytes.len() / 2]),
        Err(SnapshotError::Decode(_))
    ));
}

#[test]
fn snapshot_keeps_pending_required_proposals() {
    let mut room = three_member_room();
    let provider = &room.cathy.provider;
    let signer = &room.cathy.signer;
    let self_remove = room
        .cathy
        .group
        .as_mut()
        .unwrap()
        .leave_group_via_self_remove(provider, signer)
        .unwrap();
    let bundle = HandshakeBundle::Proposals {
        proposals: vec![self_remove.tls_serialize_detached().unwrap()],
    };
    let start = room.state.last_seq();
    success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.cathy.id.clone()),
        &bundle,
        13_000,
    ));
    let mut restored = RoomState::from_snapshot(&room.state.to_snapshot()).unwrap();

    catch_up(&restored, &mut room.alice, start);
    let omitting = room.alice.commit(CommitSpec {
        skip_pending: true,
        ..CommitSpec::default()
    });
    let (refs, _) = invalid(reject(&mut restored, &room.alice.id, &omitting, 13_001));
    assert_eq!(refs.len(), 1);
    room.alice.rejected();
    let including = room.alice.commit(CommitSpec::default());
    success_seq(&restored.handle_handshake(
        &Submitter::Client(room.alice.id.clone()),
        &including,
        13_002,
    ));
    assert!(!restored.members().contains(&room.cathy.id));
    // Cathy only removed her client: she stays in the participant list, inactive.
    assert_eq!(
        restored.policy().role_of(&room.cathy.user()),
        DEFAULT_ROLE_MEMBER
    );
}

#[test]
fn only_participant_list_updates_of_managed_components_are_accepted() {
    let mut room = three_member_room();
    let bundle = room.alice.commit(CommitSpec {
        proposals: vec![Proposal::AppDataUpdate(Box::new(
            AppDataUpdateProposal::update(0x8001, b"private".to_vec()),
        ))],
        ..CommitSpec::default()
    });
    let (_, reason) = invalid(reject(&mut room.state, &room.alice.id, &bundle, 14_000));
    assert_eq!(
        reason,
        "component 0x8001 is not managed by this hub's room policy"
    );
    room.alice.rejected();
    let removal = room.alice.commit(CommitSpec {
        proposals: vec![Proposal::AppDataUpdate(Box::new(
            AppDataUpdateProposal::remove(component::ROLES_LIST),
        ))],
        ..CommitSpec::default()
    });
    let (_, reason) = invalid(reject(&mut room.state, &room.alice.id, &removal, 14_001));
    assert_eq!(reason, "component 0x0025 cannot be removed");
}

#[test]
fn mimi_7_2_proposals_are_authorized_for_their_sender() {
    let mut room = three_member_room();
    let cathy_leaf = room.bob.leaf_of(&room.cathy);
    let (kick, _) = {
        let provider = &room.bob.provider;
        let signer = &room.bob.signer;
        room.bob
            .group
            .as_mut()
            .unwrap()
            .propose_remove_member(provider, signer, cathy_leaf)
            .unwrap()
    };
    let bundle = HandshakeBundle::Proposals {
        proposals: vec![kick.tls_serialize_detached().unwrap()],
    };
    let reason = not_allowed(reject(&mut room.state, &room.cathy.id, &bundle, 15_000));
    assert!(reason.contains("not by the submitting client"), "{reason}");
    let reason = not_allowed(reject(&mut room.state, &room.bob.id, &bundle, 15_001));
    assert_eq!(reason, "mimi://b.example/u/bob lacks canKick");
}

#[test]
fn room_state_can_move_between_threads() {
    fn check<T: Send + Sync>() {}
    check::<RoomState>();
}

/// DESIGN.md §4 retention: an item leaves the log only once every member acknowledged it and
/// it is older than the window; sequence numbers, delivery and snapshots are unaffected.
#[test]
fn retention_trims_only_what_every_member_acknowledged_and_the_window_passed() {
    let mut room = three_member_room();
    let start = room.state.last_seq();
    for (i, text) in [b"one", b"two", b"six"].iter().enumerate() {
        let message = room.bob.send(*text);
        success_seq_message(room.state.handle_app_message(
            &Submitter::Client(room.bob.id.clone()),
            &room.bob.id.user(),
            &message,
            20_000 + i as u64,
        ));
    }
    let last = room.state.last_seq();
    assert_eq!(last, start + 3);

    // The hub is a.example: Alice acknowledges herself, Bob's and Cathy's providers through
    // notify (MIMI.md §5.4). Acknowledgements of remote clients at the hub count for nothing.
    // Cathy's provider has not acknowledged anything: nothing may go, whatever the window.
    room.state.ack(&room.alice.id, last);
    room.state.fanout_delivered("b.example", last);
    room.state.ack(&room.cathy.id, last);
    assert_eq!(room.state.trim(1_000_000, 0), 0);

    // Everyone acknowledged up to start + 2; only items older than the window go.
    room.state.fanout_delivered("c.example", start + 2);
    assert_eq!(room.state.trim(20_000 + 9, 10), start);
    assert_eq!(room.state.first_retained_seq(), start + 1);
    assert_eq!(room.state.trim(1_000_000, 10), 2, "up to the common cursor");
    assert_eq!(room.state.first_retained_seq(), start + 3);
    assert_eq!(room.state.last_seq(), last, "sequence numbers never move");
    assert_eq!(
        room.state
            .items_after(0)
            .iter()
            .map(|item| item.seq)
            .collect::<Vec<_>>(),
        vec![last]
    );
    assert_eq!(room.state.items_after(last - 1).len(), 1);
    assert!(room.state.items_after(last).is_empty());

    // The newest item always stays, and a trimmed log snapshots and keeps accepting.
    room.state.ack(&room.cathy.id, last);
    assert_eq!(room.state.trim(1_000_000, 0), 0);
    let mut restored = RoomState::from_snapshot(&room.state.to_snapshot()).unwrap();
    assert_eq!(restored.first_retained_seq(), last);
    let more = room.alice.send(b"after trimming");
    let seq = success_seq_message(restored.handle_app_message(
        &Submitter::Client(room.alice.id.clone()),
        &room.alice.id.user(),
        &more,
        30_000,
    ));
    assert_eq!(seq, last + 1);
    assert_eq!(
        room.cathy
            .process(restored.items_after(last).first().unwrap())
            .unwrap(),
        b"after trimming"
    );
}

/// Cathy's SelfRemove proposal as a one-proposal bundle (MIMI.md §6.5).
fn self_remove_bundle(cathy: &mut TestClient) -> HandshakeBundle {
    let provider = &cathy.provider;
    let signer = &cathy.signer;
    let proposal = cathy
        .group
        .as_mut()
        .unwrap()
        .leave_group_via_self_remove(provider, signer)
        .unwrap();
    HandshakeBundle::Proposals {
        proposals: vec![proposal.tls_serialize_detached().unwrap()],
    }
}

/// MIMI.md §7.6 [IMPL CHOICE]: a resent application message (same sender, same bytes) gets
/// its original seq and timestamp back, later hub time notwithstanding, and is not appended
/// again; the room is byte-for-byte unchanged and the next message follows directly.
#[test]
fn mimi_7_6_resent_app_message_gets_its_original_verdict_and_one_item() {
    let mut room = three_member_room();
    let start = room.state.last_seq();
    let hello = room.bob.send(b"hello");
    let original = room.state.handle_app_message(
        &Submitter::Client(room.bob.id.clone()),
        &room.bob.id.user(),
        &hello,
        30_000,
    );
    assert_eq!(
        original,
        SubmitVerdict::Accepted {
            accepted_ts_ms: 30_000,
            seq: start + 1
        }
    );
    let before = room.state.to_snapshot();
    for resent_at in [30_000, 31_000] {
        assert_eq!(
            room.state.handle_app_message(
                &Submitter::Client(room.bob.id.clone()),
                &room.bob.id.user(),
                &hello,
                resent_at
            ),
            original
        );
    }
    assert_eq!(
        room.state.to_snapshot(),
        before,
        "a resend changed the room"
    );
    let items = room.state.items_after(start);
    assert_eq!(items.len(), 1);
    assert_eq!(room.cathy.process(&items[0]).unwrap(), b"hello");

    let next = room.bob.send(b"next");
    assert_eq!(
        success_seq_message(room.state.handle_app_message(
            &Submitter::Client(room.bob.id.clone()),
            &room.bob.id.user(),
            &next,
            32_000
        )),
        start + 2
    );
}

/// MIMI.md §7.6: a resent winning Commit (here one that adds a client, so a Welcome follows
/// it) gets `Success` with its original seq instead of `wrongEpoch`, and changes nothing; so
/// does a resent accepted proposal bundle, which would otherwise read as "already pending".
#[test]
fn mimi_7_6_resent_winning_commit_and_proposals_get_success_not_wrong_epoch() {
    let mut room = three_member_room();
    let dave = TestClient::new(DAVE);
    let proposal = room
        .alice
        .policy()
        .add_participants_proposal(&[(dave.user(), DEFAULT_ROLE_MEMBER)])
        .unwrap();
    let add = room.alice.commit(CommitSpec {
        adds: vec![dave.key_package()],
        proposals: vec![Proposal::AppDataUpdate(Box::new(proposal))],
        ..CommitSpec::default()
    });
    let epoch = room.state.epoch();
    let original =
        room.state
            .handle_handshake(&Submitter::Client(room.alice.id.clone()), &add, 40_000);
    let seq = success_seq(&original);
    room.alice.accepted();
    assert_eq!(room.state.last_seq(), seq + 1, "the Commit and its Welcome");
    let before = room.state.to_snapshot();
    assert_eq!(
        room.state
            .handle_handshake(&Submitter::Client(room.alice.id.clone()), &add, 40_500),
        original
    );
    assert_eq!(
        room.state.to_snapshot(),
        before,
        "a resend changed the room"
    );
    assert_eq!(room.state.epoch(), epoch + 1);

    catch_up(&room.state, &mut room.cathy, seq - 1);
    let leave = self_remove_bundle(&mut room.cathy);
    let original =
        room.state
            .handle_handshake(&Submitter::Client(room.cathy.id.clone()), &leave, 41_000);
    let proposals_seq = success_seq(&original);
    let before = room.state.to_snapshot();
    assert_eq!(
        room.state
            .handle_handshake(&Submitter::Client(room.cathy.id.clone()), &leave, 41_001),
        original
    );
    assert_eq!(
        room.state.to_snapshot(),
        before,
        "a resend changed the room"
    );
    assert_eq!(room.state.last_seq(), proposals_seq);
}

/// MIMI.md §7.6: a refused request is not remembered (a refusal leaves no trace in replicated
/// state); resent, it is evaluated again and, the room being unchanged, refused the same way.
#[test]
fn mimi_7_6_resent_refused_request_gets_the_same_refusal_and_leaves_no_trace() {
    let mut room = three_member_room();
    let remembered = room.state.remembered_requests();
    let dave = TestClient::new(DAVE);
    let proposal = room
        .bob
        .policy()
        .add_participants_proposal(&[(dave.user(), DEFAULT_ROLE_MEMBER)])
        .unwrap();
    let bundle = room.bob.commit(CommitSpec {
        adds: vec![dave.key_package()],
        proposals: vec![Proposal::AppDataUpdate(Box::new(proposal))],
        ..CommitSpec::default()
    });
    let first = reject(&mut room.state, &room.bob.id, &bundle, 50_000);
    assert_eq!(
        not_allowed(first.clone()),
        "mimi://b.example/u/bob lacks canAddParticipant"
    );
    assert_eq!(
        reject(&mut room.state, &room.bob.id, &bundle, 50_001),
        first
    );
    room.bob.rejected();

    // A message from an epoch the room has left: epochTooOld, again and again.
    let stale = room.bob.send(b"stale");
    let commit = room.alice.commit(CommitSpec::default());
    success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.alice.id.clone()),
        &commit,
        50_002,
    ));
    room.alice.accepted();
    let remembered_after_commit = room.state.remembered_requests();
    assert_eq!(remembered_after_commit, remembered + 1);
    let first = reject_message(&mut room.state, &room.bob.id, &stale, 50_003);
    assert!(
        matches!(first, SubmitVerdict::EpochTooOld { .. }),
        "{first:?}"
    );
    assert_eq!(
        reject_message(&mut room.state, &room.bob.id, &stale, 50_004),
        first
    );
    assert_eq!(room.state.remembered_requests(), remembered_after_commit);
}

/// MIMI.md §7.6: the cache is keyed by the authenticated sender, so replaying another
/// client's accepted bytes is a new request that goes through normal validation: a handshake
/// signed by someone else is refused, and no client learns another's verdict.
#[test]
fn mimi_7_6_another_client_replaying_the_bytes_does_not_get_the_cached_verdict() {
    let mut room = three_member_room();
    let leave = self_remove_bundle(&mut room.cathy);
    let proposed = success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.cathy.id.clone()),
        &leave,
        60_000,
    ));
    let reason = not_allowed(reject(&mut room.state, &room.bob.id, &leave, 60_001));
    assert!(reason.contains("not by the submitting client"), "{reason}");

    catch_up(&room.state, &mut room.alice, proposed - 1);
    let commit = room.alice.commit(CommitSpec::default());
    success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.alice.id.clone()),
        &commit,
        60_002,
    ));
    room.alice.accepted();
    assert_eq!(
        reject(&mut room.state, &room.bob.id, &commit, 60_003),
        UpdateVerdict::WrongEpoch {
            current_epoch: room.state.epoch()
        }
    );

    // An application message does not reveal its sender to the hub (it is a PrivateMessage):
    // another member may submit the ciphertext, which is then a second item under its own
    // name, never the first sender's verdict. Recipients drop the copy (MLS generation reuse).
    catch_up(&room.state, &mut room.bob, 0);
    let hello = room.bob.send(b"hello");
    let first = success_seq_message(room.state.handle_app_message(
        &Submitter::Client(room.bob.id.clone()),
        &room.bob.id.user(),
        &hello,
        60_004,
    ));
    let replayed = success_seq_message(room.state.handle_app_message(
        &Submitter::Client(room.alice.id.clone()),
        &room.alice.id.user(),
        &hello,
        60_005,
    ));
    assert_eq!(replayed, first + 1);
}

/// MIMI.md §7.6 with DESIGN.md §3 snapshots: the remembered verdicts are part of the
/// replicated state, so a replica restored from a snapshot answers resends the same way, and
/// a snapshot whose cache the room could not have produced is refused.
#[test]
fn mimi_7_6_remembered_verdicts_survive_a_snapshot_round_trip() {
    let mut alice = TestClient::new(ALICE);
    let mut state = create_room(&mut alice);
    let hello = alice.send(b"hello");
    let original = state.handle_app_message(
        &Submitter::Client(alice.id.clone()),
        &alice.id.user(),
        &hello,
        70_000,
    );
    assert_eq!(state.remembered_requests(), 1);

    let bytes = state.to_snapshot();
    let mut restored = RoomState::from_snapshot(&bytes).unwrap();
    assert_eq!(restored.to_snapshot(), bytes);
    assert_eq!(restored.remembered_requests(), 1);
    assert_eq!(
        restored.handle_app_message(
            &Submitter::Client(alice.id.clone()),
            &alice.id.user(),
            &hello,
            70_001
        ),
        original
    );
    assert_eq!(restored.to_snapshot(), bytes);

    // The cache is the snapshot's last field: a count, then (32-byte key, varint seq = 1,
    // varint ts = 70_000 in three bytes). Listing the entry twice is inconsistent.
    let entry_len = 32 + 1 + 3;
    let count_at = bytes.len() - entry_len - 1;
    assert_eq!(bytes[count_at], 1, "one remembered request");
    let mut twice = bytes.clone();
    twice[count_at] = 2;
    twice.extend_from_slice(&bytes[count_at + 1..]);
    assert!(matches!(
        RoomState::from_snapshot(&twice),
        Err(SnapshotError::Inconsistent(
            "remembered requests are not in log order"
        ))
    ));
    // A remembered seq beyond the log.
    let mut beyond = bytes.clone();
    beyond[count_at + 1 + 32] = 2;
    assert!(matches!(
        RoomState::from_snapshot(&beyond),
        Err(SnapshotError::Inconsistent(
            "a remembered request names a seq beyond the log"
        ))
    ));
    // The previous format, without the cache, is refused rather than misread.
    let mut old = bytes.clone();
    old[0] = 2;
    assert!(matches!(
        RoomState::from_snapshot(&old),
        Err(SnapshotError::Format(2))
    ));
}

/// MIMI.md §7.6 bounds: a room remembers its last [`RETRY_CACHE_CAPACITY`] accepted requests;
/// a resend of an evicted one is a new request (a second item, which clients tolerate as a
/// duplicate of their own message), while the newer ones still get their original verdict.
#[test]
fn mimi_7_6_only_the_last_capacity_requests_are_remembered() {
    let mut alice = TestClient::new(ALICE);
    let mut state = create_room(&mut alice);
    let messages: Vec<Vec<u8>> = (0..=RETRY_CACHE_CAPACITY)
        .map(|i| alice.send(format!("message {i}").as_bytes()))
        .collect();
    for (i, message) in messages.iter().enumerate() {
        let seq = success_seq_message(state.handle_app_message(
            &Submitter::Client(alice.id.clone()),
            &alice.id.user(),
            message,
            80_000,
        ));
        assert_eq!(seq, i as u64 + 1);
    }
    assert_eq!(state.remembered_requests(), RETRY_CACHE_CAPACITY);
    let last = state.last_seq();
    assert_eq!(
        state.handle_app_message(
            &Submitter::Client(alice.id.clone()),
            &alice.id.user(),
            &messages[1],
            80_001
        ),
        SubmitVerdict::Accepted {
            accepted_ts_ms: 80_000,
            seq: 2
        },
        "the second oldest is still remembered"
    );
    assert_eq!(state.last_seq(), last);
    assert_eq!(
        success_seq_message(state.handle_app_message(
            &Submitter::Client(alice.id.clone()),
            &alice.id.user(),
            &messages[0],
            80_002
        )),
        last + 1,
        "the oldest was evicted: its resend is a new request"
    );
    assert_eq!(state.remembered_requests(), RETRY_CACHE_CAPACITY);
}

/// MIMI.md §7.6 bounds: a verdict is replayed for [`RETRY_WINDOW_MS`] of hub time; after that
/// a resend is a new request, and housekeeping (`trim`) forgets the expired entries so an idle
/// room keeps no cache.
#[test]
fn mimi_7_6_verdicts_are_replayed_within_the_retry_window_only() {
    let mut alice = TestClient::new(ALICE);
    let mut state = create_room(&mut alice);
    let hello = alice.send(b"hello");
    let original = state.handle_app_message(
        &Submitter::Client(alice.id.clone()),
        &alice.id.user(),
        &hello,
        90_000,
    );
    let expiry = 90_000 + RETRY_WINDOW_MS;
    assert_eq!(
        state.handle_app_message(
            &Submitter::Client(alice.id.clone()),
            &alice.id.user(),
            &hello,
            expiry - 1
        ),
        original
    );
    let before = state.to_snapshot();
    state.trim(expiry - 1, u64::MAX);
    assert_eq!(state.to_snapshot(), before, "nothing expired yet");
    state.trim(expiry, u64::MAX);
    assert_eq!(state.remembered_requests(), 0);
    assert_eq!(
        state.last_seq(),
        1,
        "the log itself follows its own retention"
    );
    assert_eq!(
        success_seq_message(state.handle_app_message(
            &Submitter::Client(alice.id.clone()),
            &alice.id.user(),
            &hello,
            expiry
        )),
        2
    );
}

/// MIMI.md §5.4, DESIGN.md §4: the hub fans out to each follower provider what its clients are
/// to see: Welcomes only to the providers of the added clients, the removing Commit to the
/// removed client's provider, nothing after it.
#[test]
fn protocol06_5_4_fanout_follows_provider_visibility() {
    let mut room = three_member_room();
    assert_eq!(
        room.state.followers().collect::<Vec<_>>(),
        vec!["b.example", "c.example"],
        "the hub's own domain is not a follower"
    );
    let welcomes: Vec<&LogItem> = room
        .state
        .items_after(0)
        .iter()
        .filter(|item| matches!(item.body, ItemBody::Welcome { .. }))
        .collect();
    assert_eq!(welcomes.len(), 1, "one Welcome for both added clients");
    assert!(room.state.visible_to_provider(welcomes[0], "b.example"));
    assert!(room.state.visible_to_provider(welcomes[0], "c.example"));
    assert!(!room.state.visible_to_provider(welcomes[0], "d.example"));

    let cathy_leaf = room.alice.leaf_of(&room.cathy);
    let proposal = room
        .alice
        .policy()
        .remove_participants_proposal(&[room.cathy.user()])
        .unwrap();
    let bundle = room.alice.commit(CommitSpec {
        removes: vec![cathy_leaf],
        proposals: vec![Proposal::AppDataUpdate(Box::new(proposal))],
        ..CommitSpec::default()
    });
    let alice = Submitter::Client(room.alice.id.clone());
    let removal = success_seq(&room.state.handle_handshake(&alice, &bundle, 9_000));
    room.alice.accepted();
    let message = room.alice.send(b"after");
    let after = success_seq_message(room.state.handle_app_message(
        &alice,
        &room.alice.user(),
        &message,
        9_001,
    ));
    fn backlog(state: &RoomState, provider: &str) -> Vec<u64> {
        state
            .fanout_backlog(provider, 0)
            .map(|item| item.seq)
            .collect()
    }
    assert!(backlog(&room.state, "c.example").contains(&removal));
    assert!(!backlog(&room.state, "c.example").contains(&after));
    assert!(backlog(&room.state, "b.example").contains(&after));

    // Cursors only move forward, only for followers, never past the log.
    room.state.fanout_delivered("c.example", removal);
    room.state.fanout_delivered("c.example", 1);
    assert_eq!(room.state.fanout_cursor("c.example"), removal);
    assert!(
        backlog(&room.state, "c.example").is_empty(),
        "nothing left for c.example"
    );
    room.state.fanout_delivered("d.example", 1);
    assert_eq!(room.state.fanout_cursor("d.example"), 0);
    room.state.fanout_delivered("b.example", u64::MAX);
    assert_eq!(room.state.fanout_cursor("b.example"), room.state.last_seq());
    let restored = RoomState::from_snapshot(&room.state.to_snapshot()).unwrap();
    assert_eq!(restored.fanout_cursor("c.example"), removal);
}

/// MIMI.md §7.1 step 2: a peer provider speaks only for its own users, and only for a room in
/// which it has a participant.
#[test]
fn mimi_7_1_a_provider_cannot_speak_for_another_providers_users() {
    let mut room = three_member_room();
    let bundle = room.bob.commit(CommitSpec::default());
    let before = room.state.to_snapshot();
    let reason = not_allowed(room.state.handle_handshake(
        &Submitter::Provider("c.example".into()),
        &bundle,
        10_000,
    ));
    assert!(
        reason.contains("not by a client of provider c.example"),
        "{reason}"
    );
    let reason = not_allowed(room.state.handle_handshake(
        &Submitter::Provider("d.example".into()),
        &bundle,
        10_001,
    ));
    assert_eq!(reason, "provider d.example has no participant in this room");
    assert_eq!(room.state.to_snapshot(), before, "refusals change nothing");
    success_seq(&room.state.handle_handshake(
        &Submitter::Provider("b.example".into()),
        &bundle,
        10_002,
    ));
    room.bob.accepted();

    let message = room.bob.send(b"hi");
    let b = Submitter::Provider("b.example".into());
    let SubmitVerdict::NotAllowed { reason } =
        room.state
            .handle_app_message(&b, &room.cathy.user(), &message, 10_003)
    else {
        panic!("expected notAllowed");
    };
    assert_eq!(
        reason,
        "provider b.example cannot send as mimi://c.example/u/cathy"
    );
    let stranger = UserId::parse("mimi://b.example/u/mallory").unwrap();
    let SubmitVerdict::NotAllowed { reason } = room
        .state
        .handle_app_message(&b, &stranger, &message, 10_004)
    else {
        panic!("expected notAllowed");
    };
    assert!(reason.contains("has no client in the room"), "{reason}");
    success_seq_message(
        room.state
            .handle_app_message(&b, &room.bob.user(), &message, 10_005),
    );
}

mod fanout {
    use super::*;
    use crate::room::fanout::{FanoutCore, FanoutLimits};

    fn limits(batch_items: usize) -> FanoutLimits {
        FanoutLimits {
            batch_items,
            retry_initial_ms: 100,
            retry_max_ms: 1_000,
        }
    }

    /// One notify in flight per follower, bounded batches, exponential backoff with the
    /// follower's Retry-After honoured (MIMI.md §5.4).
    #[test]
    fn one_batch_in_flight_per_follower_with_backoff() {
        let mut room = three_member_room();
        for (i, text) in [b"1", b"2", b"3"].iter().enumerate() {
            let message = room.alice.send(*text);
            success_seq_message(room.state.handle_app_message(
                &Submitter::Client(room.alice.id.clone()),
                &room.alice.user(),
                &message,
                20_000 + i as u64,
            ));
        }
        let last = room.state.last_seq();
        let mut core = FanoutCore::default();
        let batches = core.poll(&room.state, 0, &limits(2));
        let providers: Vec<&str> = batches.iter().map(|b| b.provider.as_str()).collect();
        assert_eq!(providers, vec!["b.example", "c.example"]);
        assert!(batches.iter().all(|b| b.items.len() == 2));
        assert!(
            core.poll(&room.state, 0, &limits(2)).is_empty(),
            "in flight"
        );
        assert!(!core.is_quiet());

        let first_last = batches[0].items[1].seq;
        assert_eq!(core.on_delivered("b.example"), Some(first_last));
        assert_eq!(core.on_delivered("b.example"), None, "nothing in flight");
        assert_eq!(
            core.take_unrecorded(),
            vec![("b.example".to_string(), first_last)],
            "acknowledged cursors wait to be recorded, one per follower"
        );
        assert!(core.take_unrecorded().is_empty());
        let next = core.poll(&room.state, 0, &limits(64));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].items.first().unwrap().seq, first_last + 1);
        assert_eq!(next[0].items.last().unwrap().seq, last);

        assert_eq!(core.on_failed("c.example", 1_000, None, &limits(2)), 100);
        assert!(
            core.poll(&room.state, 1_050, &limits(2)).is_empty(),
            "backing off"
        );
        let retry = core.poll(&room.state, 1_100, &limits(2));
        assert_eq!(
            retry[0].items.first().unwrap().seq,
            batches[1].items[0].seq,
            "resent"
        );
        assert_eq!(core.on_failed("c.example", 2_000, None, &limits(2)), 200);
        core.poll(&room.state, 2_200, &limits(2));
        assert_eq!(
            core.on_failed("c.example", 3_000, Some(5_000), &limits(2)),
            5_000
        );
        for now in [4_000, 5_000, 6_000] {
            core.poll(&room.state, now + 10_000, &limits(2));
            core.on_failed("c.example", now, None, &limits(2));
        }
        assert!(core.failures("c.example") >= 6);
        assert_eq!(
            core.on_failed("c.example", 9_000, None, &limits(2)),
            1_000,
            "capped"
        );

        // The durable cursor wins over the in-memory start after a restart.
        room.state.fanout_delivered("c.example", last);
        let mut fresh = FanoutCore::default();
        let after_restart = fresh.poll(&room.state, 0, &limits(64));
        assert_eq!(after_restart.len(), 1);
        assert_eq!(after_restart[0].provider, "b.example");
    }

    /// The lag the node exports per follower (`mimid_fanout_lag_items`,
    /// `mimid_fanout_lag_seconds`): from the oldest item a follower is to receive and has not
    /// acknowledged to the end of the log, whether in flight, backing off or not sent yet; a
    /// follower acknowledged (in memory or durably) to the end has none.
    #[test]
    fn lag_counts_from_the_oldest_unacknowledged_item_per_follower() {
        let mut room = three_member_room();
        for (i, text) in [b"1", b"2", b"3", b"4"].iter().enumerate() {
            let message = room.alice.send(*text);
            success_seq_message(room.state.handle_app_message(
                &Submitter::Client(room.alice.id.clone()),
                &room.alice.user(),
                &message,
                30_000 + i as u64,
            ));
        }
        let last = room.state.last_seq();
        let mut core = FanoutCore::default();
        let lag = core.lag(&room.state);
        assert_eq!(
            lag.keys().map(String::as_str).collect::<Vec<_>>(),
            vec!["b.example", "c.example"]
        );
        for (provider, lag) in &lag {
            let oldest = room.state.fanout_backlog(provider, 0).next().unwrap();
            assert_eq!(lag.items, last - oldest.seq + 1, "{provider}");
            assert_eq!(lag.oldest_ts_ms, oldest.ts_ms, "{provider}");
        }

        // In flight is still behind; acknowledged is not.
        let batches = core.poll(&room.state, 0, &limits(2));
        assert_eq!(core.lag(&room.state), lag, "sent but not acknowledged");
        let acknowledged = batches[0].items[1].seq;
        core.on_delivered("b.example");
        let after_ack = core.lag(&room.state);
        assert_eq!(after_ack["b.example"].items, last - acknowledged);
        let next = &room.state.items_after(acknowledged)[0];
        assert_eq!(after_ack["b.example"].oldest_ts_ms, next.ts_ms);
        assert_eq!(after_ack["c.example"], lag["c.example"]);

        // A failed notify leaves the follower behind until it is acknowledged.
        core.on_failed("c.example", 0, None, &limits(2));
        assert_eq!(core.lag(&room.state)["c.example"], lag["c.example"]);
        let rest = core.poll(&room.state, 0, &limits(64));
        assert_eq!(rest.len(), 1, "b's rest; c backs off");
        core.on_delivered("b.example");
        assert!(!core.lag(&room.state).contains_key("b.example"));

        // The durable cursor counts as acknowledged, for a fresh core too (which knows of no
        // acknowledgement not recorded yet).
        room.state.fanout_delivered("c.example", last);
        assert!(core.lag(&room.state).is_empty());
        let fresh = FanoutCore::default().lag(&room.state);
        assert_eq!(fresh.keys().collect::<Vec<_>>(), vec!["b.example"]);
        room.state.fanout_delivered("b.example", last);
        assert!(FanoutCore::default().lag(&room.state).is_empty());

        // A new item puts both behind by one, dated with its hub time.
        let message = room.alice.send(b"5");
        success_seq_message(room.state.handle_app_message(
            &Submitter::Client(room.alice.id.clone()),
            &room.alice.user(),
            &message,
            31_000,
        ));
        let one = crate::room::fanout::FanoutLag {
            items: 1,
            oldest_ts_ms: 31_000,
        };
        assert_eq!(core.lag(&room.state)["b.example"], one);
        assert_eq!(core.lag(&room.state)["c.example"], one);
    }
}

// External joins (MIMI.md §6.6, RFC 9420 §12.4.3.2).

const CATHY_PHONE: &str = "mimi://c.example/d/cathy/phone";

impl TestClient {
    /// A client with `other`'s signature key pair (to forge commits in tests).
    fn with_signer_of(uri: &str, other: &TestClient) -> Self {
        let provider = OpenMlsRustCrypto::default();
        let signer: SignatureKeyPair =
            serde_json::from_value(serde_json::to_value(&other.signer).unwrap()).unwrap();
        signer.store(provider.storage()).unwrap();
        TestClient {
            id: ClientId::parse(uri).unwrap(),
            provider,
            signer,
            group: None,
        }
    }

    /// RFC 9420 §12.4.3.2: builds an external commit from the hub's GroupInfo and ratchet tree
    /// (with `pending` SelfRemoves to include by reference) and keeps the joined group, as a
    /// joiner does once the hub accepts. Returns the bundle it sends.
    fn external_join(&mut self, state: &RoomState, pending: &[Vec<u8>]) -> HandshakeBundle {
        let MlsMessageBodyIn::GroupInfo(group_info) =
            MlsMessageIn::tls_deserialize_exact_bytes(state.group_info().unwrap())
                .unwrap()
                .extract()
        else {
            panic!("the hub holds a GroupInfo");
        };
        let tree = RatchetTreeIn::tls_deserialize_exact_bytes(&state.ratchet_tree()).unwrap();
        let proposals = pending
            .iter()
            .map(|bytes| {
                match MlsMessageIn::tls_deserialize_exact_bytes(bytes)
                    .unwrap()
                    .extract()
                {
                    MlsMessageBodyIn::PublicMessage(message) => message,
                    _ => panic!("pending proposals are PublicMessages"),
                }
            })
            .collect();
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_ratchet_tree(tree)
            .with_config(Self::join_config())
            .with_proposals(proposals)
            .build_group(&self.provider, group_info, self.credential())
            .unwrap()
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(room_leaf_capabilities())
                    .build(),
            )
            .load_psks(self.provider.storage())
            .unwrap()
            .create_group_info(true)
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .unwrap()
            .finalize(&self.provider)
            .unwrap();
        self.group = Some(group);
        let (commit, welcome, group_info) = bundle.into_messages();
        assert!(welcome.is_none(), "an external commit adds no one else");
        HandshakeBundle::Commit {
            commit: commit.tls_serialize_detached().unwrap(),
            welcome: None,
            group_info: group_info.map(|info| info.tls_serialize_detached().unwrap()),
        }
    }
}

fn with_welcome(bundle: &HandshakeBundle, welcome: Option<Vec<u8>>) -> HandshakeBundle {
    let HandshakeBundle::Commit {
        commit, group_info, ..
    } = bundle
    else {
        panic!("a commit bundle");
    };
    HandshakeBundle::Commit {
        commit: commit.clone(),
        welcome,
        group_info: group_info.clone(),
    }
}

/// MIMI.md §6.6, §7.3 step 2: Cathy's new device joins by external commit, submitted by
/// itself (a local client of the hub). It is a member from the Commit's seq (no Welcome is
/// logged), the others process the Commit, and the new device can send. A resend gets the
/// original verdict (MIMI.md §7.6).
#[test]
fn mimi_6_6_new_device_joins_by_external_commit_from_its_commit_on() {
    let mut room = three_member_room();
    let before_seq = room.state.last_seq();
    let epoch = room.state.epoch();
    let mut phone = TestClient::new(CATHY_PHONE);
    let bundle = phone.external_join(&room.state, &[]);
    let sender = Submitter::Client(phone.id.clone());
    let seq = success_seq(&room.state.handle_handshake(&sender, &bundle, 20_000));
    assert_eq!(seq, before_seq + 1);
    assert_eq!(room.state.last_seq(), seq, "no Welcome item");
    assert_eq!(room.state.epoch(), epoch + 1);
    assert!(room.state.members().contains(&phone.id));
    assert_eq!(room.state.members().len(), 4);
    let items = room.state.items_after(0).to_vec();
    let commit = items.last().unwrap();
    assert!(matches!(commit.body, ItemBody::Commit { .. }));
    assert!(room.state.visible_to(commit, &phone.id), "its own Commit");
    assert!(items[..items.len() - 1]
        .iter()
        .all(|item| !room.state.visible_to(item, &phone.id)));
    assert!(room.state.visible_to_provider(commit, "c.example"));

    let resent = room.state.to_snapshot();
    assert_eq!(
        success_seq(&room.state.handle_handshake(&sender, &bundle, 20_001)),
        seq
    );
    assert_eq!(room.state.to_snapshot(), resent, "a resend changes nothing");

    for member in [&mut room.alice, &mut room.bob, &mut room.cathy] {
        catch_up(&room.state, member, before_seq);
        assert_eq!(member.group().members().count(), 4);
    }
    let message = phone.send(b"hello from the phone");
    let seq = success_seq_message(room.state.handle_app_message(
        &sender,
        &phone.user(),
        &message,
        20_002,
    ));
    let item = room.state.items_after(seq - 1)[0].clone();
    assert_eq!(
        room.alice.process(&item).as_deref(),
        Some(&b"hello from the phone"[..])
    );

    // The group survives a snapshot with the joiner in it.
    let restored = RoomState::from_snapshot(&room.state.to_snapshot()).unwrap();
    assert_eq!(restored.members(), room.state.members());
}

/// MIMI.md §7.1 step 2, §7.3 step 2: a peer provider may submit the external commit of its own
/// user's new device, and no other provider may; refusals change nothing.
#[test]
fn mimi_7_3_external_commit_through_the_joiners_provider_only() {
    let mut room = three_member_room();
    let mut phone = TestClient::new(CATHY_PHONE);
    let bundle = phone.external_join(&room.state, &[]);
    let before = room.state.to_snapshot();
    let reason = not_allowed(room.state.handle_handshake(
        &Submitter::Provider("b.example".into()),
        &bundle,
        20_000,
    ));
    assert!(
        reason.contains("for whom provider b.example cannot speak"),
        "{reason}"
    );
    let reason = not_allowed(room.state.handle_handshake(
        &Submitter::Provider("d.example".into()),
        &bundle,
        20_001,
    ));
    assert_eq!(
        reason,
        "provider d.example has no participant in this room who may join"
    );
    let reason = not_allowed(room.state.handle_handshake(
        &Submitter::Client(room.cathy.id.clone()),
        &bundle,
        20_002,
    ));
    assert!(reason.contains("cannot speak"), "{reason}");
    assert_eq!(room.state.to_snapshot(), before, "refusals change nothing");
    success_seq(&room.state.handle_handshake(
        &Submitter::Provider("c.example".into()),
        &bundle,
        20_003,
    ));
    assert!(room.state.members().contains(&phone.id));
}

/// MIMI.md §6.6 step 2: only a client of an active participant may join by external commit;
/// anyone else learns nothing, not even the epoch.
#[test]
fn mimi_6_6_non_participant_cannot_join_by_external_commit() {
    let mut room = three_member_room();
    let mut dave = TestClient::new(DAVE);
    let bundle = dave.external_join(&room.state, &[]);
    let reason = not_allowed(reject(&mut room.state, &dave.id, &bundle, 20_000));
    assert!(
        reason.contains("mimi://c.example/u/dave is not an active participant"),
        "{reason}"
    );
    assert!(room
        .state
        .check_external_join(&ClientId::parse(CATHY_PHONE).unwrap())
        .is_ok());
    assert!(room.state.check_external_join(&dave.id).is_err());
    // Stale: the epoch moved on; still refused for who it is, not for the epoch.
    let commit = room.alice.commit(CommitSpec::default());
    success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.alice.id.clone()),
        &commit,
        20_001,
    ));
    let reason = not_allowed(reject(&mut room.state, &dave.id, &bundle, 20_002));
    assert!(reason.contains("not an active participant"), "{reason}");
}

/// RFC 9420 §12.4.3.2, MIMI.md §7.3: a stale external commit gets `wrongEpoch`; one with a
/// Welcome, without a GroupInfo, or removing someone else's leaf is refused; none leaves a
/// trace.
#[test]
fn rfc9420_12_4_3_2_external_commit_rules_beyond_openmls() {
    let mut room = three_member_room();
    let mut phone = TestClient::new(CATHY_PHONE);
    let bundle = phone.external_join(&room.state, &[]);
    let (_, reason) = invalid(reject(
        &mut room.state,
        &phone.id,
        &with_welcome(&bundle, Some(vec![1, 2, 3])),
        20_000,
    ));
    assert!(reason.contains("must carry no Welcome"), "{reason}");
    let HandshakeBundle::Commit { commit, .. } = &bundle else {
        unreachable!()
    };
    let without_group_info = HandshakeBundle::Commit {
        commit: commit.clone(),
        welcome: None,
        group_info: None,
    };
    let (_, reason) = invalid(reject(
        &mut room.state,
        &phone.id,
        &without_group_info,
        20_001,
    ));
    assert!(reason.contains("no GroupInfo"), "{reason}");

    // A joiner holding Bob's signature key: openmls commits a Remove of Bob's leaf (same key),
    // which is not a resync of the joiner's own leaf.
    let mut forged = TestClient::with_signer_of(CATHY_PHONE, &room.bob);
    let removing_bob = forged.external_join(&room.state, &[]);
    let reason = not_allowed(reject(&mut room.state, &forged.id, &removing_bob, 20_002));
    assert!(
        reason.contains("may remove only the joiner's own old leaf") && reason.contains("bob"),
        "{reason}"
    );

    let update = room.alice.commit(CommitSpec::default());
    success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.alice.id.clone()),
        &update,
        20_003,
    ));
    let current_epoch = room.state.epoch();
    match reject(&mut room.state, &phone.id, &bundle, 20_004) {
        UpdateVerdict::WrongEpoch { current_epoch: got } => assert_eq!(got, current_epoch),
        other => panic!("expected wrongEpoch, got {other:?}"),
    }
}

/// RFC 9420 §12.4.3.2 resync: a client that lost its state rejoins with its own identity; the
/// external commit removes its old leaf. It stays one member, receiving from the Commit on.
#[test]
fn rfc9420_12_4_3_2_resync_replaces_the_joiners_old_leaf() {
    let mut room = three_member_room();
    let before_seq = room.state.last_seq();
    let mut cathy_again = TestClient::with_signer_of(CATHY, &room.cathy);
    let bundle = cathy_again.external_join(&room.state, &[]);
    let seq = success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.cathy.id.clone()),
        &bundle,
        20_000,
    ));
    assert_eq!(room.state.members().len(), 3);
    assert!(room.state.members().contains(&room.cathy.id));
    let commit = room.state.items_after(seq - 1)[0].clone();
    assert!(room.state.visible_to(&commit, &room.cathy.id));
    for member in [&mut room.alice, &mut room.bob] {
        catch_up(&room.state, member, before_seq);
        assert_eq!(member.group().members().count(), 3);
    }
    let message = cathy_again.send(b"back");
    let seq = success_seq_message(room.state.handle_app_message(
        &Submitter::Client(room.cathy.id.clone()),
        &room.cathy.user(),
        &message,
        20_001,
    ));
    let item = room.state.items_after(seq - 1)[0].clone();
    assert_eq!(room.bob.process(&item).as_deref(), Some(&b"back"[..]));
}

/// protocol-06 §5.5 `pending_proposals`, mls-extensions SelfRemove: the hub hands a joiner the
/// pending proposals; a pending SelfRemove is committed by reference in the external commit,
/// which removes its proposer and satisfies the "required" rule (MIMI.md §6.5).
#[test]
fn protocol06_5_5_external_commit_includes_pending_self_remove_by_reference() {
    let mut room = three_member_room();
    let self_remove = {
        let provider = &room.bob.provider;
        let signer = &room.bob.signer;
        room.bob
            .group
            .as_mut()
            .unwrap()
            .leave_group_via_self_remove(provider, signer)
            .unwrap()
            .tls_serialize_detached()
            .unwrap()
    };
    let proposed = success_seq(&room.state.handle_handshake(
        &Submitter::Client(room.bob.id.clone()),
        &HandshakeBundle::Proposals {
            proposals: vec![self_remove.clone()],
        },
        20_000,
    ));
    let pending = room.state.pending_proposals();
    assert_eq!(pending, vec![(20_000, self_remove.as_slice())]);

    // Without the required SelfRemove the join is refused.
    let mut phone = TestClient::new(CATHY_PHONE);
    let omitting = phone.external_join(&room.state, &[]);
    let (refs, reason) = invalid(reject(&mut room.state, &phone.id, &omitting, 20_001));
    assert_eq!(refs.len(), 1, "{reason}");

    let mut phone = TestClient::new(CATHY_PHONE);
    let including = phone.external_join(&room.state, &[self_remove]);
    let seq = success_seq(&room.state.handle_handshake(
        &Submitter::Client(phone.id.clone()),
        &including,
        20_002,
    ));
    assert!(room.state.members().contains(&phone.id));
    assert!(!room.state.members().contains(&room.bob.id));
    assert!(room.state.pending_proposals().is_empty());
    let commit = room.state.items_after(seq - 1)[0].clone();
    assert!(
        room.state.visible_to(&commit, &room.bob.id),
        "bob gets his removal"
    );
    assert!(room.state.items_after(seq).is_empty());
    catch_up(&room.state, &mut room.alice, proposed - 1);
    assert_eq!(room.alice.group().members().count(), 3);
}
