//! Real MLS objects for the codec tests, made once with openmls: a group where alice adds bob
//! (PublicMessage commit + Welcome), alice's GroupInfo and ratchet tree, an application
//! PrivateMessage, and standalone PublicMessage proposals.

use std::sync::OnceLock;

use openmls::extensions::{
    AppDataDictionary, Extension, Extensions, ExternalPubExtension, ExternalSender,
    RequiredCapabilitiesExtension,
};
use openmls::messages::group_info::GroupInfo;
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, Credential, CredentialWithKey, ExtensionType,
    KeyPackage, MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, ProposalType,
    StagedWelcome, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::types::HpkeCiphertext;
use openmls_traits::OpenMlsProvider as _;
use tls_codec::Deserialize as _;

use crate::wire::codec::{Mls, MlsMessage};

pub const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Serialised MLS objects shared by the tests (bytes only, so the fixture is `Sync`).
pub struct Fixture {
    /// Bare KeyPackages (not `MLSMessage`-wrapped).
    pub key_packages: Vec<Vec<u8>>,
    pub credential: Vec<u8>,
    pub signature_key: Vec<u8>,
    /// `MLSMessage` with a PublicMessage commit adding bob (epoch 0 → 1).
    pub commit: Vec<u8>,
    /// `MLSMessage` with the Welcome for bob.
    pub welcome: Vec<u8>,
    /// `MLSMessage` with alice's GroupInfo for epoch 1, without ratchet tree.
    pub group_info: Vec<u8>,
    /// TLS-serialised ratchet tree of epoch 1.
    pub ratchet_tree: Vec<u8>,
    /// `MLSMessage` with a PrivateMessage carrying application data.
    pub application: Vec<u8>,
    /// Two `MLSMessage`s with PublicMessage Add proposals (by bob, epoch 1).
    pub proposals: Vec<Vec<u8>>,
    pub capabilities: Vec<u8>,
    pub required_capabilities: Vec<u8>,
    pub external_sender: Vec<u8>,
    pub hpke_ciphertext: Vec<u8>,
    /// GroupInfo extensions (one external_pub), as `Extensions<GroupInfo>`.
    pub group_info_extensions: Vec<u8>,
    /// An AppDataDictionary with one component.
    pub app_data_dictionary: Vec<u8>,
}

impl Fixture {
    pub fn commit(&self) -> MlsMessage {
        MlsMessage::from_bytes(&self.commit).expect("fixture commit")
    }
    pub fn welcome(&self) -> MlsMessage {
        MlsMessage::from_bytes(&self.welcome).expect("fixture welcome")
    }
    pub fn group_info(&self) -> MlsMessage {
        MlsMessage::from_bytes(&self.group_info).expect("fixture group info")
    }
    pub fn application(&self) -> MlsMessage {
        MlsMessage::from_bytes(&self.application).expect("fixture application")
    }
    pub fn proposal(&self, index: usize) -> MlsMessage {
        MlsMessage::from_bytes(&self.proposals[index]).expect("fixture proposal")
    }
    pub fn key_package(&self, index: usize) -> Mls<openmls::prelude::KeyPackageIn> {
        Mls::from_bytes(&self.key_packages[index]).expect("fixture key package")
    }
    pub fn ratchet_tree(&self) -> Mls<openmls::prelude::RatchetTreeIn> {
        Mls::from_bytes(&self.ratchet_tree).expect("fixture ratchet tree")
    }
    pub fn mls<T: tls_codec::Deserialize>(bytes: &[u8]) -> Mls<T> {
        Mls::from_bytes(bytes).expect("fixture MLS structure")
    }
}

struct Member {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl Member {
    fn new(identity: &str) -> Member {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).expect("signature key");
        signer.store(provider.storage()).expect("store signer");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
            signature_key: signer.to_public_vec().into(),
        };
        Member {
            provider,
            signer,
            credential,
        }
    }

    fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .build(SUITE, &self.provider, &self.signer, self.credential.clone())
            .expect("key package")
            .key_package()
            .clone()
    }
}

fn bytes(value: &impl tls_codec::Serialize) -> Vec<u8> {
    value.tls_serialize_detached().expect("serialise")
}

fn build() -> Fixture {
    let alice = Member::new("mimi://a.example/d/alice/phone");
    let bob = Member::new("mimi://b.example/d/bob/laptop");
    let carol = Member::new("mimi://c.example/d/carol/phone");
    let dave = Member::new("mimi://c.example/d/dave/tablet");

    let mut alice_group = MlsGroup::builder()
        .ciphersuite(SUITE)
        .with_wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .build(&alice.provider, &alice.signer, alice.credential.clone())
        .expect("create group");

    let bob_kp = bob.key_package();
    let (commit, welcome, _) = alice_group
        .add_members(
            &alice.provider,
            &alice.signer,
            std::slice::from_ref(&bob_kp),
        )
        .expect("add bob");
    alice_group
        .merge_pending_commit(&alice.provider)
        .expect("merge add");
    let group_info = alice_group
        .export_group_info(alice.provider.crypto(), &alice.signer, false)
        .expect("group info");
    let ratchet_tree = bytes(&alice_group.export_ratchet_tree());

    let welcome_bytes = bytes(&welcome);
    let welcome_in = MlsMessageIn::tls_deserialize_exact(&welcome_bytes).expect("welcome in");
    let MlsMessageBodyIn::Welcome(welcome_body) = welcome_in.extract() else {
        panic!("add_members returned a Welcome");
    };
    let tree_in =
        openmls::prelude::RatchetTreeIn::tls_deserialize_exact(&ratchet_tree).expect("tree in");
    let join_config = MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build();
    let mut bob_group =
        StagedWelcome::new_from_welcome(&bob.provider, &join_config, welcome_body, Some(tree_in))
            .expect("stage welcome")
            .into_group(&bob.provider)
            .expect("join");

    let application = alice_group
        .create_message(&alice.provider, &alice.signer, b"hello bob")
        .expect("application message");
    let proposals = [carol.key_package(), dave.key_package()]
        .iter()
        .map(|kp| {
            let (proposal, _) = bob_group
                .propose_add_member(&bob.provider, &bob.signer, kp)
                .expect("proposal");
            bytes(&proposal)
        })
        .collect();

    let external_pub = ExternalPubExtension::new(vec![7u8; 32].into());
    let group_info_extensions =
        Extensions::<GroupInfo>::single(Extension::ExternalPub(external_pub))
            .expect("group info extensions");
    let mut dictionary = AppDataDictionary::new();
    dictionary.insert(0x0022, vec![1, 2, 3]);
    let capabilities = Capabilities::new(None, Some(&[SUITE]), None, None, None);
    let required = RequiredCapabilitiesExtension::new(
        &[ExtensionType::ExternalSenders],
        &[ProposalType::Add],
        &[],
    );
    let credential: Credential = alice.credential.credential.clone();

    Fixture {
        key_packages: vec![bytes(&bob_kp), bytes(&carol.key_package())],
        credential: bytes(&credential),
        signature_key: alice.signer.to_public_vec(),
        commit: bytes(&commit),
        welcome: welcome_bytes,
        group_info: bytes(&group_info),
        ratchet_tree,
        application: bytes(&application),
        proposals,
        capabilities: bytes(&capabilities),
        required_capabilities: bytes(&required),
        external_sender: bytes(&ExternalSender::new(
            alice.credential.signature_key.clone(),
            credential,
        )),
        hpke_ciphertext: bytes(&HpkeCiphertext {
            kem_output: vec![1u8; 32].into(),
            ciphertext: vec![2u8; 48].into(),
        }),
        group_info_extensions: bytes(&group_info_extensions),
        app_data_dictionary: bytes(&dictionary),
    }
}

/// The shared fixture (built on first use; key generation is the slow part).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}
