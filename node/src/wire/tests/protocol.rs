//! protocol-06 §5 bodies: round trips with real MLS objects, selector rules, specific
//! rejections, and the conversions to and from the domain types.

use mimid_actors::command::{self, SubmitVerdict, UpdateVerdict};
use openmls::messages::group_info::VerifiableGroupInfo;

use super::fixture::{fixture, Fixture};
use super::{check, decode_err, round_trip};
use crate::wire::abuse::{AbuseReport, AbuseType, AbusiveMessage};
use crate::wire::codec::{Decode, Encode, Limits, Mls, WireError, Writer};
use crate::wire::consent::{ConsentEntry, ConsentOp, ConsentOperation, ConsentScope};
use crate::wire::fanout::{decode_fanout_batch, encode_fanout_batch, FanoutBody, FanoutMessage};
use crate::wire::group_info::{
    GroupInfoCode, GroupInfoRatchetTreeTbe, GroupInfoRequest, GroupInfoRequestTbs,
    GroupInfoResponse, GroupInfoResponseTbs, GroupInfoResult, GroupInfoSuccess, PendingProposal,
};
use crate::wire::identifier::{
    FieldSource, IdentifierQueryCode, IdentifierRequest, IdentifierResponse, ProfileField,
    QueryElement, SearchField, SearchIdentifierType, UserProfile,
};
use crate::wire::key_material::{
    ClientKeyMaterial, ClientMaterial, KeyMaterialClientCode, KeyMaterialRequest,
    KeyMaterialRequestTbs, KeyMaterialResponse, KeyMaterialUserCode,
};
use crate::wire::submit::{
    Frank, FrankAad, FrankingAgentData, FrankingIntegrityTbs, ServerFrankingContext,
    SubmitMessageRequest, SubmitMessageResponse, SubmitResponseCode, SubmitStatus,
};
use crate::wire::types::{
    CipherSuite, HpkePublicKey, IdentifierUri, ProposalRef, Protocol, SignaturePublicKey,
};
use crate::wire::update::{
    GroupInfoOption, HandshakeBundle, PartialGroupInfo, RatchetTreeOption, RatchetTreePresence,
    UpdateOutcome, UpdateRequest, UpdateResponseCode, UpdateRoomResponse,
};

fn uri(text: &str) -> IdentifierUri {
    IdentifierUri::new(text)
}

fn frank() -> Frank {
    Frank {
        server_frank: [0x5a; 32],
        franking_signature_ciphersuite: CipherSuite(1),
        franking_integrity_signature: vec![0xee; 64],
    }
}

fn key_material_tbs(f: &Fixture) -> KeyMaterialRequestTbs {
    KeyMaterialRequestTbs {
        protocol: Protocol::Mls10,
        requesting_user: uri("mimi://a.example/u/alice"),
        target_user: uri("mimi://b.example/u/bob"),
        room_id: uri("mimi://a.example/r/clubhouse"),
        acceptable_ciphersuites: vec![CipherSuite(1), CipherSuite(0x0a0a)],
        required_capabilities: Fixture::mls(&f.required_capabilities),
        requester_signature_key: SignaturePublicKey(f.signature_key.clone()),
        requester_credential: Fixture::mls(&f.credential),
    }
}

#[test]
fn protocol06_5_1_key_material_request_round_trips_and_signs_its_tbs_prefix() {
    let f = fixture();
    let request = KeyMaterialRequest {
        tbs: key_material_tbs(f),
        key_material_request_signature: vec![0xab; 64],
    };
    let bytes = check(&request);
    let tbs = round_trip(&request.tbs);
    assert_eq!(bytes[..tbs.len()], tbs[..]);
    // A GREASE suite (RFC 9420 §13.5) is carried, not rejected.
    assert_eq!(request.tbs.acceptable_ciphersuites[1], CipherSuite(0x0a0a));
    assert!(CipherSuite(0x0a0a).to_openmls().is_err());
    assert!(CipherSuite(1).to_openmls().is_ok());
    assert_eq!(
        request.requesting_user().unwrap().as_str(),
        "mimi://a.example/u/alice"
    );
    assert_eq!(
        request.room().unwrap().as_str(),
        "mimi://a.example/r/clubhouse"
    );
}

#[test]
fn protocol06_5_1_key_material_request_needs_a_cipher_suite() {
    let f = fixture();
    let mut tbs = key_material_tbs(f);
    tbs.acceptable_ciphersuites.clear();
    let expected = WireError::Invalid {
        field: "KeyMaterialRequest.acceptableCiphersuites",
        reason: "must name at least one cipher suite",
    };
    assert_eq!(tbs.to_bytes().unwrap_err(), expected);
    let mut w = Writer::new();
    Protocol::Mls10.encode(&mut w).unwrap();
    for field in [&tbs.requesting_user, &tbs.target_user, &tbs.room_id] {
        field.encode(&mut w).unwrap();
    }
    w.vector_of::<CipherSuite>("suites", &[]).unwrap();
    tbs.required_capabilities.encode(&mut w).unwrap();
    tbs.requester_signature_key.encode(&mut w).unwrap();
    tbs.requester_credential.encode(&mut w).unwrap();
    assert_eq!(
        decode_err::<KeyMaterialRequestTbs>(&w.into_bytes()),
        expected
    );
}

#[test]
fn protocol06_5_1_key_material_response_carries_every_client_code() {
    let f = fixture();
    let response = KeyMaterialResponse {
        protocol: Protocol::Mls10,
        user_status: KeyMaterialUserCode::PartialSuccess,
        user_uri: uri("mimi://b.example/u/bob"),
        clients: vec![
            ClientKeyMaterial {
                client_uri: uri("mimi://b.example/d/bob/laptop"),
                material: ClientMaterial::Success {
                    key_package: f.key_package(0),
                },
            },
            ClientKeyMaterial {
                client_uri: uri("mimi://b.example/d/bob/phone"),
                material: ClientMaterial::KeyMaterialExhausted,
            },
            ClientKeyMaterial {
                client_uri: uri("mimi://b.example/d/bob/watch"),
                material: ClientMaterial::NothingCompatible {
                    client_capabilities: Some(Fixture::mls(&f.capabilities)),
                },
            },
            ClientKeyMaterial {
                client_uri: uri("mimi://b.example/d/bob/tv"),
                material: ClientMaterial::NothingCompatible {
                    client_capabilities: None,
                },
            },
        ],
    };
    check(&response);
    let codes: Vec<_> = response.clients.iter().map(|c| c.client_status()).collect();
    assert_eq!(
        codes,
        [
            KeyMaterialClientCode::Success,
            KeyMaterialClientCode::KeyMaterialExhausted,
            KeyMaterialClientCode::NothingCompatible,
            KeyMaterialClientCode::NothingCompatible
        ]
    );
    // userStatus 8 is undefined.
    let mut bytes = response.to_bytes().unwrap();
    bytes[1] = 8;
    assert_eq!(
        decode_err::<KeyMaterialResponse>(&bytes),
        WireError::BadEnum {
            field: "KeyMaterialResponse.userStatus",
            value: 8
        }
    );
}

#[test]
fn protocol06_5_1_clients_must_be_empty_unless_the_user_code_allows_them() {
    let f = fixture();
    let mut response = KeyMaterialResponse {
        protocol: Protocol::Mls10,
        user_status: KeyMaterialUserCode::Success,
        user_uri: uri("mimi://b.example/u/bob"),
        clients: vec![ClientKeyMaterial {
            client_uri: uri("mimi://b.example/d/bob/laptop"),
            material: ClientMaterial::Success {
                key_package: f.key_package(0),
            },
        }],
    };
    let mut bytes = response.to_bytes().unwrap();
    bytes[1] = KeyMaterialUserCode::UserUnknown as u8;
    let expected = WireError::Invalid {
        field: "KeyMaterialResponse.clients",
        reason: "must be empty for this userStatus",
    };
    assert_eq!(decode_err::<KeyMaterialResponse>(&bytes), expected);
    response.user_status = KeyMaterialUserCode::NoConsent;
    assert_eq!(response.to_bytes().unwrap_err(), expected);
    response.clients.clear();
    check(&response);
}

fn commit_bundle(f: &Fixture, ratchet_tree_option: RatchetTreeOption) -> HandshakeBundle {
    HandshakeBundle::Commit {
        commit: f.commit(),
        welcome: Some(f.welcome().unwrap_body("test").unwrap()),
        group_info_option: GroupInfoOption::Full(f.group_info().unwrap_body("test").unwrap()),
        ratchet_tree_option,
    }
}

#[test]
fn protocol06_5_2_commit_bundle_round_trips_with_every_ratchet_tree_option() {
    let f = fixture();
    check(&UpdateRequest {
        bundle: commit_bundle(f, RatchetTreeOption::Full(f.ratchet_tree())),
    });
    for option in [
        RatchetTreeOption::HttpsUri {
            ratchet_tree_url: b"https://a.example/tree/1".to_vec(),
            tree_signature: vec![3; 64],
        },
        RatchetTreeOption::OutOfBand {
            tree_signature: vec![4; 64],
        },
        RatchetTreeOption::DistributionService,
    ] {
        round_trip(&UpdateRequest {
            bundle: commit_bundle(f, option),
        });
    }
    let without_welcome = HandshakeBundle::Commit {
        commit: f.commit(),
        welcome: None,
        group_info_option: GroupInfoOption::Partial(PartialGroupInfo {
            ratchet_tree_presence: RatchetTreePresence::NoRatchetTree,
            group_info_extensions: Fixture::mls(&f.group_info_extensions),
            signature: vec![9; 64],
        }),
        ratchet_tree_option: RatchetTreeOption::DistributionService,
    };
    check(&UpdateRequest {
        bundle: without_welcome,
    });
}

#[test]
fn protocol06_5_2_proposal_bundle_carries_more_proposals() {
    let f = fixture();
    let bundle = HandshakeBundle::Proposals {
        proposal: f.proposal(0),
        more_proposals: vec![f.proposal(1)],
    };
    let bytes = check(&UpdateRequest { bundle });
    // The whole body is the first proposal followed by moreProposals<V>.
    assert_eq!(bytes[..f.proposals[0].len()], f.proposals[0][..]);
    round_trip(&UpdateRequest {
        bundle: HandshakeBundle::Proposals {
            proposal: f.proposal(1),
            more_proposals: vec![],
        },
    });
}

#[test]
fn protocol06_5_2_select_needs_a_proposal_or_commit() {
    let f = fixture();
    for (message, found) in [
        (&f.application, "a PrivateMessage with application content"),
        (&f.welcome, "a Welcome"),
        (&f.group_info, "a GroupInfo"),
    ] {
        let mut bytes = message.clone();
        bytes.push(0);
        assert_eq!(
            decode_err::<UpdateRequest>(&bytes),
            WireError::UnexpectedMessage {
                field: "HandshakeBundle.proposalOrCommit",
                expected: "a proposal or commit",
                found
            }
        );
    }
    let mislabelled = HandshakeBundle::Commit {
        commit: f.proposal(0),
        welcome: None,
        group_info_option: GroupInfoOption::Full(f.group_info().unwrap_body("t").unwrap()),
        ratchet_tree_option: RatchetTreeOption::DistributionService,
    };
    assert_eq!(
        mislabelled.to_bytes().unwrap_err(),
        WireError::UnexpectedMessage {
            field: "HandshakeBundle.proposalOrCommit",
            expected: "a commit",
            found: "a PublicMessage proposal"
        }
    );
    // representation reserved(0) of GroupInfoOption.
    let mut bytes = f.commit.clone();
    bytes.extend([0, 0]);
    assert_eq!(
        decode_err::<UpdateRequest>(&bytes),
        WireError::BadEnum {
            field: "GroupInfoOption.representation",
            value: 0
        }
    );
}

#[test]
fn protocol06_5_2_update_request_converts_to_the_domain_bundle_and_back() {
    let f = fixture();
    let request = UpdateRequest {
        bundle: commit_bundle(f, RatchetTreeOption::Full(f.ratchet_tree())),
    };
    let domain = command::HandshakeBundle::try_from(request).unwrap();
    assert_eq!(
        domain,
        command::HandshakeBundle::Commit {
            commit: f.commit.clone(),
            welcome: Some(f.welcome.clone()),
            group_info: Some(f.group_info.clone()),
        }
    );
    let back = UpdateRequest::try_from(&domain).unwrap();
    assert_eq!(
        back,
        UpdateRequest {
            bundle: commit_bundle(f, RatchetTreeOption::DistributionService)
        }
    );

    let proposals = command::HandshakeBundle::Proposals {
        proposals: f.proposals.clone(),
    };
    let wire = UpdateRequest::try_from(&proposals).unwrap();
    assert_eq!(command::HandshakeBundle::try_from(wire).unwrap(), proposals);
}

#[test]
fn protocol06_5_2_domain_conversion_rejects_what_the_wire_cannot_express() {
    let f = fixture();
    let partial = UpdateRequest {
        bundle: HandshakeBundle::Commit {
            commit: f.commit(),
            welcome: None,
            group_info_option: GroupInfoOption::Partial(PartialGroupInfo {
                ratchet_tree_presence: RatchetTreePresence::Removed,
                group_info_extensions: Fixture::mls(&f.group_info_extensions),
                signature: vec![1; 64],
            }),
            ratchet_tree_option: RatchetTreeOption::DistributionService,
        },
    };
    assert_eq!(
        command::HandshakeBundle::try_from(partial)
            .unwrap_err()
            .code(),
        "unsupported"
    );
    let empty = command::HandshakeBundle::Proposals { proposals: vec![] };
    assert_eq!(
        UpdateRequest::try_from(&empty).unwrap_err().code(),
        "invalid_value"
    );
    let no_group_info = command::HandshakeBundle::Commit {
        commit: f.commit.clone(),
        welcome: None,
        group_info: None,
    };
    assert_eq!(
        UpdateRequest::try_from(&no_group_info).unwrap_err().code(),
        "invalid_value"
    );
    let application_as_proposal = command::HandshakeBundle::Proposals {
        proposals: vec![f.application.clone()],
    };
    assert_eq!(
        UpdateRequest::try_from(&application_as_proposal)
            .unwrap_err()
            .code(),
        "unexpected_mls_message"
    );
    let welcome_as_group_info = command::HandshakeBundle::Commit {
        commit: f.commit.clone(),
        welcome: None,
        group_info: Some(f.welcome.clone()),
    };
    assert_eq!(
        UpdateRequest::try_from(&welcome_as_group_info)
            .unwrap_err()
            .code(),
        "unexpected_mls_message"
    );
}

#[test]
fn protocol06_5_2_update_room_response_round_trips_every_code() {
    let responses = [
        UpdateRoomResponse {
            error_description: String::new(),
            outcome: UpdateOutcome::Success {
                accepted_timestamp: 1_644_387_225_019,
            },
        },
        UpdateRoomResponse {
            error_description: "the room is at epoch 7".into(),
            outcome: UpdateOutcome::WrongEpoch { current_epoch: 7 },
        },
        UpdateRoomResponse {
            error_description: "sender lacks canAddParticipant".into(),
            outcome: UpdateOutcome::NotAllowed,
        },
        UpdateRoomResponse {
            error_description: "bad proposal".into(),
            outcome: UpdateOutcome::InvalidProposal {
                invalid_proposals: vec![ProposalRef(vec![1; 32]), ProposalRef(vec![2; 32])],
            },
        },
    ];
    for response in &responses {
        check(response);
    }
    assert_eq!(
        responses[3].response_code(),
        UpdateResponseCode::InvalidProposal
    );
    assert_eq!(
        decode_err::<UpdateRoomResponse>(&[4, 0]),
        WireError::BadEnum {
            field: "UpdateRoomResponse.responseCode",
            value: 4
        }
    );
}

#[test]
fn protocol06_5_2_update_verdicts_map_to_responses() {
    let cases = [
        (
            UpdateVerdict::Success {
                accepted_ts_ms: 42,
                seq: 9,
            },
            UpdateOutcome::Success {
                accepted_timestamp: 42,
            },
            "",
        ),
        (
            UpdateVerdict::WrongEpoch { current_epoch: 3 },
            UpdateOutcome::WrongEpoch { current_epoch: 3 },
            "the room is at epoch 3",
        ),
        (
            UpdateVerdict::NotAllowed {
                reason: "no".into(),
            },
            UpdateOutcome::NotAllowed,
            "no",
        ),
        (
            UpdateVerdict::InvalidProposal {
                refs: vec![vec![7; 32]],
                reason: "bad".into(),
            },
            UpdateOutcome::InvalidProposal {
                invalid_proposals: vec![ProposalRef(vec![7; 32])],
            },
            "bad",
        ),
    ];
    for (verdict, outcome, description) in cases {
        let response = UpdateRoomResponse::from(&verdict);
        assert_eq!(response.outcome, outcome);
        assert_eq!(response.error_description, description);
    }
}

#[test]
fn protocol06_5_3_submit_request_and_response_round_trip() {
    let f = fixture();
    let request = SubmitMessageRequest {
        protocol: Protocol::Mls10,
        app_message: f.application(),
        sending_uri: uri("mimi://c.example/u/cathy"),
    };
    check(&request);
    assert_eq!(
        request.sending_user().unwrap().as_str(),
        "mimi://c.example/u/cathy"
    );
    for status in [
        SubmitStatus::Accepted {
            accepted_timestamp: 1_644_387_225_019,
            frank: Some(frank()),
        },
        SubmitStatus::Accepted {
            accepted_timestamp: 1,
            frank: None,
        },
        SubmitStatus::NotAllowed,
        SubmitStatus::EpochTooOld { current_epoch: 12 },
    ] {
        check(&SubmitMessageResponse {
            protocol: Protocol::Mls10,
            status,
        });
    }
}

#[test]
fn protocol06_5_3_success_selects_on_accepted_zero() {
    // MIMI.md §14 bug 3: the `success` case is the value accepted(0).
    let response = SubmitMessageResponse {
        protocol: Protocol::Mls10,
        status: SubmitStatus::Accepted {
            accepted_timestamp: 0x0102,
            frank: None,
        },
    };
    assert_eq!(
        response.to_bytes().unwrap(),
        [1, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0]
    );
    assert_eq!(response.status_code(), SubmitResponseCode::Accepted);
    assert_eq!(
        decode_err::<SubmitMessageResponse>(&[1, 3]),
        WireError::BadEnum {
            field: "SubmitMessageResponse.statusCode",
            value: 3
        }
    );
    let verdicts = [
        (
            SubmitVerdict::Accepted {
                accepted_ts_ms: 5,
                seq: 2,
            },
            SubmitStatus::Accepted {
                accepted_timestamp: 5,
                frank: None,
            },
        ),
        (
            SubmitVerdict::NotAllowed {
                reason: "banned".into(),
            },
            SubmitStatus::NotAllowed,
        ),
        (
            SubmitVerdict::EpochTooOld { current_epoch: 4 },
            SubmitStatus::EpochTooOld { current_epoch: 4 },
        ),
    ];
    for (verdict, status) in verdicts {
        assert_eq!(SubmitMessageResponse::from(&verdict).status, status);
    }
}

#[test]
fn protocol06_5_4_1_franking_structures_round_trip() {
    let f = fixture();
    check(&frank());
    check(&FrankAad {
        franking_tag: [3; 32],
    });
    check(&FrankingAgentData {
        franking_signature_key: SignaturePublicKey(f.signature_key.clone()),
        credential: Fixture::mls(&f.credential),
    });
    let context = ServerFrankingContext {
        sender_uri: uri("mimi://c.example/u/cathy"),
        room_uri: uri("mimi://a.example/r/clubhouse"),
        accepted_timestamp: 77,
    };
    let context_bytes = check(&context);
    let tbs = FrankingIntegrityTbs {
        server_frank: [1; 32],
        franking_signature_ciphersuite: CipherSuite(1),
        context,
    };
    let bytes = check(&tbs);
    // server_frank[32] is a fixed array: no length prefix.
    assert_eq!(bytes.len(), 32 + 2 + context_bytes.len());
}

fn fanout_cases(f: &Fixture) -> Vec<FanoutMessage> {
    vec![
        FanoutMessage {
            timestamp: 10,
            body: FanoutBody::Application {
                message: f.application(),
                frank: Some(frank()),
            },
        },
        FanoutMessage {
            timestamp: 11,
            body: FanoutBody::Application {
                message: f.application(),
                frank: None,
            },
        },
        FanoutMessage {
            timestamp: 12,
            body: FanoutBody::Welcome {
                welcome: f.welcome(),
                ratchet_tree_option: RatchetTreeOption::Full(f.ratchet_tree()),
            },
        },
        FanoutMessage {
            timestamp: 13,
            body: FanoutBody::Proposal {
                proposal: f.proposal(0),
                more_proposals: vec![f.proposal(1)],
            },
        },
        FanoutMessage {
            timestamp: 14,
            body: FanoutBody::Commit {
                commit: f.commit(),
                external_proposals: vec![f.proposal(0)],
            },
        },
    ]
}

#[test]
fn protocol06_5_4_fanout_selects_on_wire_format_and_content_type() {
    let f = fixture();
    for message in fanout_cases(f) {
        check(&message);
    }
}

#[test]
fn protocol06_5_4_fanout_rejects_messages_without_a_select_case() {
    let f = fixture();
    let mut bytes = 5u64.to_be_bytes().to_vec();
    bytes.extend_from_slice(&f.group_info);
    assert_eq!(
        decode_err::<FanoutMessage>(&bytes),
        WireError::UnexpectedMessage {
            field: "FanoutMessage.message",
            expected: "a PrivateMessage, a Welcome, or a PublicMessage proposal or commit",
            found: "a GroupInfo"
        }
    );
    let mislabelled = FanoutMessage {
        timestamp: 1,
        body: FanoutBody::Commit {
            commit: f.proposal(0),
            external_proposals: vec![],
        },
    };
    assert_eq!(
        mislabelled.to_bytes().unwrap_err().code(),
        "unexpected_mls_message"
    );
    // optional<Frank> presence flag of an application message.
    let mut bytes = 5u64.to_be_bytes().to_vec();
    bytes.extend_from_slice(&f.application);
    bytes.push(7);
    assert_eq!(
        decode_err::<FanoutMessage>(&bytes),
        WireError::BadOptional {
            field: "FanoutMessage.frank",
            value: 7
        }
    );
}

#[test]
fn protocol06_5_4_notify_body_holds_concatenated_messages_in_order() {
    let f = fixture();
    let messages = fanout_cases(f);
    let body = encode_fanout_batch(&messages).unwrap();
    assert_eq!(
        decode_fanout_batch(&body, &Limits::default()).unwrap(),
        messages
    );
    for cut in [1, body.len() / 2, body.len() - 1] {
        assert!(decode_fanout_batch(&body[..cut], &Limits::default()).is_err());
    }
    assert_eq!(
        decode_fanout_batch(&[], &Limits::default())
            .unwrap_err()
            .code(),
        "invalid_value"
    );
    let small = Limits {
        max_body_len: body.len() - 1,
    };
    assert_eq!(
        decode_fanout_batch(&body, &small).unwrap_err().code(),
        "body_too_large"
    );
}

fn group_info_tbs(f: &Fixture, joining_code: Option<Vec<u8>>) -> GroupInfoRequestTbs {
    GroupInfoRequestTbs {
        protocol: Protocol::Mls10,
        cipher_suite: CipherSuite(1),
        requesting_signature_key: SignaturePublicKey(f.signature_key.clone()),
        requesting_credential: Fixture::mls(&f.credential),
        group_info_public_key: HpkePublicKey(vec![8; 32]),
        joining_code,
    }
}

#[test]
fn protocol06_5_5_group_info_request_and_tbs_read_the_joining_code_consistently() {
    let f = fixture();
    for code in [None, Some(b"JOIN-1234".to_vec())] {
        let tbs = group_info_tbs(f, code.clone());
        let tbs_bytes = check(&tbs);
        let request = GroupInfoRequest {
            tbs,
            signature: vec![6; 64],
        };
        let request_bytes = check(&request);
        // The request writes the code as plain opaque<V> (empty = absent), the TBS as
        // optional<opaque<V>>: the common prefix is everything before the code.
        let common = tbs_bytes.len() - 1 - code.as_ref().map_or(0, |c| 1 + c.len());
        assert_eq!(request_bytes[..common], tbs_bytes[..common]);
    }
    assert_eq!(
        group_info_tbs(f, Some(vec![]))
            .to_bytes()
            .unwrap_err()
            .code(),
        "invalid_value"
    );
}

#[test]
fn protocol06_5_5_group_info_response_round_trips_and_exposes_its_tbs() {
    let f = fixture();
    let success = GroupInfoResponse {
        version: Protocol::Mls10,
        room_id: b"mimi://a.example/r/clubhouse".to_vec(),
        result: GroupInfoResult::Success(GroupInfoSuccess {
            cipher_suite: CipherSuite(1),
            hub_sender: Fixture::mls(&f.external_sender),
            encrypted_groupinfo_and_tree: Fixture::mls(&f.hpke_ciphertext),
            signature: vec![5; 64],
        }),
    };
    let bytes = check(&success);
    let tbs: GroupInfoResponseTbs = success.tbs().unwrap();
    let tbs_bytes = check(&tbs);
    assert_eq!(bytes[..tbs_bytes.len()], tbs_bytes[..]);
    assert_eq!(tbs.status, GroupInfoCode::Success);
    for result in [GroupInfoResult::NotAuthorized, GroupInfoResult::NoSuchRoom] {
        let response = GroupInfoResponse {
            version: Protocol::Mls10,
            room_id: b"mimi://a.example/r/secret".to_vec(),
            result,
        };
        check(&response);
        assert!(response.tbs().is_none());
    }
    let mut reserved = vec![1, 0];
    reserved.push(0);
    assert_eq!(
        decode_err::<GroupInfoResponse>(&reserved),
        WireError::BadEnum {
            field: "GroupInfoResponse.status",
            value: 0
        }
    );
}

#[test]
fn protocol06_5_5_group_info_ratchet_tree_tbe_round_trips() {
    let f = fixture();
    let group_info: Mls<VerifiableGroupInfo> = f.group_info().unwrap_body("t").unwrap();
    check(&GroupInfoRatchetTreeTbe {
        group_info,
        ratchet_tree_option: RatchetTreeOption::Full(f.ratchet_tree()),
        pending_proposals: vec![
            PendingProposal {
                proposal: f.proposal(0),
                hub_accepted_time: 100,
            },
            PendingProposal {
                proposal: f.proposal(1),
                hub_accepted_time: 101,
            },
        ],
    });
}

#[test]
fn protocol06_5_7_consent_entries_round_trip_for_every_operation() {
    let f = fixture();
    let scope = ConsentScope {
        requester_uri: uri("mimi://a.example/u/alice"),
        target_uri: uri("mimi://b.example/u/bob"),
        room_id: Some(uri("mimi://a.example/r/clubhouse")),
    };
    for operation in [
        ConsentOp::Cancel,
        ConsentOp::Request,
        ConsentOp::Grant {
            client_key_packages: vec![f.key_package(0), f.key_package(1)],
        },
        ConsentOp::Grant {
            client_key_packages: vec![],
        },
        ConsentOp::Revoke,
    ] {
        let entry = ConsentEntry {
            operation,
            scope: scope.clone(),
            consent_extensions: Fixture::mls(&f.app_data_dictionary),
        };
        let bytes = check(&entry);
        assert_eq!(bytes[0], entry.operation.operation() as u8);
    }
    assert_eq!(
        decode_err::<ConsentEntry>(&[4]),
        WireError::BadEnum {
            field: "ConsentEntry.consentOperation",
            value: 4
        }
    );
    assert_eq!(ConsentOperation::from_u8(2), Some(ConsentOperation::Grant));
}

#[test]
fn protocol06_5_8_identifier_query_round_trips() {
    let f = fixture();
    let request = IdentifierRequest {
        query_elements: vec![
            QueryElement {
                field: SearchField::Email,
                search_value: "alice@a.example".into(),
            },
            QueryElement {
                field: SearchField::OidcStdClaim {
                    claim_name: b"given_name".to_vec(),
                },
                search_value: "Alice".into(),
            },
            QueryElement {
                field: SearchField::VcardField {
                    property_name: b"TEL".to_vec(),
                },
                search_value: "+15551234".into(),
            },
        ],
        id_request_extensions: Fixture::mls(&f.app_data_dictionary),
    };
    check(&request);
    let response = IdentifierResponse {
        response_code: IdentifierQueryCode::Success,
        uri: vec![uri("mimi://a.example/u/alice")],
        found_profiles: vec![UserProfile {
            stable_uri: uri("mimi://a.example/u/alice"),
            fields: vec![ProfileField {
                field_source: FieldSource::VcardField,
                field_name: "FN".into(),
                field_value: b"Alice Smith".to_vec(),
            }],
        }],
        id_response_extensions: Fixture::mls(&f.app_data_dictionary),
    };
    check(&response);
    assert_eq!(
        decode_err::<QueryElement>(&[0, 0]),
        WireError::BadEnum {
            field: "QueryElement.searchType",
            value: 0
        }
    );
    assert_eq!(
        SearchField::Phone.search_type(),
        SearchIdentifierType::Phone
    );
    assert_eq!(
        decode_err::<ProfileField>(&[1, 0, 0]),
        WireError::BadEnum {
            field: "ProfileField.fieldSource",
            value: 1
        }
    );
}

#[test]
fn protocol06_5_9_abuse_report_round_trips_with_any_reason_code() {
    let f = fixture();
    let report = AbuseReport {
        reporting_user: uri("mimi://b.example/u/bob"),
        alleged_abuser_uri: uri("mimi://c.example/u/mallory"),
        reason_code: AbuseType(0),
        note: "spam ✉".into(),
        messages: vec![AbusiveMessage {
            message_content: vec![0x87, 0x50],
            frank: frank(),
            accepted_timestamp: 99,
        }],
        abuse_extensions: Fixture::mls(&f.app_data_dictionary),
    };
    let bytes = check(&report);
    // [IMPL CHOICE] AbuseType has no defined values yet: any uint8 is carried through.
    let reason_at = report.reporting_user.to_bytes().unwrap().len()
        + report.alleged_abuser_uri.to_bytes().unwrap().len();
    let mut other = bytes.clone();
    other[reason_at] = 200;
    assert_eq!(
        AbuseReport::from_bytes(&other, &Limits::default())
            .unwrap()
            .reason_code,
        AbuseType(200)
    );
}
