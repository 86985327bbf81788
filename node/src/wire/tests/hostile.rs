//! Hostile input: every decoder is fed single-byte mutations of valid bodies and every other
//! decoder's bodies. Decoding must return (an error or a value), never panic; a mutated body
//! that still decodes must re-encode to exactly the mutated bytes (no lossy acceptance).

use super::fixture::{fixture, Fixture};
use crate::wire::client::{
    AckRequest, CreateRoomRequest, DeliveredBody, DeliveredItem, PublishKeyPackagesRequest,
};
use crate::wire::codec::{Decode, Encode, Limits};
use crate::wire::fanout::{FanoutBody, FanoutMessage};
use crate::wire::group_info::{
    GroupInfoRequest, GroupInfoRequestTbs, GroupInfoResponse, GroupInfoResult, GroupInfoSuccess,
};
use crate::wire::key_material::{
    ClientKeyMaterial, ClientMaterial, KeyMaterialResponse, KeyMaterialUserCode,
};
use crate::wire::submit::SubmitMessageRequest;
use crate::wire::types::{CipherSuite, HpkePublicKey, IdentifierUri, Protocol, SignaturePublicKey};
use crate::wire::update::{GroupInfoOption, HandshakeBundle, RatchetTreeOption, UpdateRequest};

/// Decodes `bytes` as `T`; if that succeeds, the value must encode back to `bytes`.
fn probe<T: Decode + Encode>(bytes: &[u8]) {
    if let Ok(value) = T::from_bytes(bytes, &Limits::default()) {
        assert_eq!(
            value.to_bytes().expect("a decoded value encodes"),
            bytes,
            "{} accepted bytes it does not reproduce",
            std::any::type_name::<T>()
        );
    }
}

type Probe = fn(&[u8]);

fn all_probes() -> Vec<Probe> {
    vec![
        probe::<UpdateRequest>,
        probe::<SubmitMessageRequest>,
        probe::<FanoutMessage>,
        probe::<KeyMaterialResponse>,
        probe::<GroupInfoRequest>,
        probe::<GroupInfoResponse>,
        probe::<CreateRoomRequest>,
        probe::<DeliveredItem>,
        probe::<PublishKeyPackagesRequest>,
        probe::<AckRequest>,
    ]
}

/// (valid body, its own decoder).
fn seeds(f: &Fixture) -> Vec<(Vec<u8>, Probe)> {
    let commit = UpdateRequest {
        bundle: HandshakeBundle::Commit {
            commit: f.commit(),
            welcome: Some(f.welcome().unwrap_body("seed").unwrap()),
            group_info_option: GroupInfoOption::Full(f.group_info().unwrap_body("seed").unwrap()),
            ratchet_tree_option: RatchetTreeOption::DistributionService,
        },
    };
    let proposals = UpdateRequest {
        bundle: HandshakeBundle::Proposals {
            proposal: f.proposal(0),
            more_proposals: vec![f.proposal(1)],
        },
    };
    let welcome = FanoutMessage {
        timestamp: 1,
        body: FanoutBody::Welcome {
            welcome: f.welcome(),
            ratchet_tree_option: RatchetTreeOption::Full(f.ratchet_tree()),
        },
    };
    let submit = SubmitMessageRequest {
        protocol: Protocol::Mls10,
        app_message: f.application(),
        sending_uri: IdentifierUri::new("mimi://a.example/u/alice"),
    };
    let key_material = KeyMaterialResponse {
        protocol: Protocol::Mls10,
        user_status: KeyMaterialUserCode::Success,
        user_uri: IdentifierUri::new("mimi://b.example/u/bob"),
        clients: vec![ClientKeyMaterial {
            client_uri: IdentifierUri::new("mimi://b.example/d/bob/laptop"),
            material: ClientMaterial::Success {
                key_package: f.key_package(0),
            },
        }],
    };
    let group_info_request = GroupInfoRequest {
        tbs: GroupInfoRequestTbs {
            protocol: Protocol::Mls10,
            cipher_suite: CipherSuite(1),
            requesting_signature_key: SignaturePublicKey(f.signature_key.clone()),
            requesting_credential: Fixture::mls(&f.credential),
            group_info_public_key: HpkePublicKey(vec![1; 32]),
            joining_code: Some(b"code".to_vec()),
        },
        signature: vec![2; 64],
    };
    let group_info_response = GroupInfoResponse {
        version: Protocol::Mls10,
        room_id: b"mimi://a.example/r/clubhouse".to_vec(),
        result: GroupInfoResult::Success(GroupInfoSuccess {
            cipher_suite: CipherSuite(1),
            hub_sender: Fixture::mls(&f.external_sender),
            encrypted_groupinfo_and_tree: Fixture::mls(&f.hpke_ciphertext),
            signature: vec![3; 64],
        }),
    };
    let create = CreateRoomRequest {
        room: IdentifierUri::new("mimi://a.example/r/clubhouse"),
        group_info: f.group_info(),
        ratchet_tree: f.ratchet_tree(),
    };
    let delivered = DeliveredItem {
        room: IdentifierUri::new("mimi://a.example/r/clubhouse"),
        seq: 3,
        timestamp: 4,
        epoch: 1,
        body: DeliveredBody::Proposals {
            messages: vec![f.proposal(0), f.proposal(1)],
        },
    };
    let publish = PublishKeyPackagesRequest {
        key_packages: vec![f.key_package(0)],
        last_resort: false,
    };
    vec![
        (commit.to_bytes().unwrap(), probe::<UpdateRequest> as Probe),
        (proposals.to_bytes().unwrap(), probe::<UpdateRequest>),
        (welcome.to_bytes().unwrap(), probe::<FanoutMessage>),
        (submit.to_bytes().unwrap(), probe::<SubmitMessageRequest>),
        (
            key_material.to_bytes().unwrap(),
            probe::<KeyMaterialResponse>,
        ),
        (
            group_info_request.to_bytes().unwrap(),
            probe::<GroupInfoRequest>,
        ),
        (
            group_info_response.to_bytes().unwrap(),
            probe::<GroupInfoResponse>,
        ),
        (create.to_bytes().unwrap(), probe::<CreateRoomRequest>),
        (delivered.to_bytes().unwrap(), probe::<DeliveredItem>),
        (
            publish.to_bytes().unwrap(),
            probe::<PublishKeyPackagesRequest>,
        ),
    ]
}

#[test]
fn single_byte_mutations_never_panic_and_never_decode_lossily() {
    let f = fixture();
    for (bytes, own) in seeds(f) {
        for position in 0..bytes.len() {
            let original = bytes[position];
            for replacement in [0x00, 0xff, original ^ 0x40, original.wrapping_add(1)] {
                if replacement == original {
                    continue;
                }
                let mut mutated = bytes.clone();
                mutated[position] = replacement;
                own(&mutated);
            }
        }
    }
}

#[test]
fn every_decoder_survives_every_other_decoders_bodies() {
    let f = fixture();
    let bodies: Vec<Vec<u8>> = seeds(f).into_iter().map(|(bytes, _)| bytes).collect();
    for body in &bodies {
        for probe in all_probes() {
            probe(body);
            probe(&body[..body.len() / 2]);
            probe(&body[body.len() / 2..]);
        }
    }
}
