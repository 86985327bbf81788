//! Directory and KeyPackage validation tests, with real openmls KeyPackages
//! (MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, basic credentials). Test names cite the
//! RFC 9420 / protocol-06 sections they exercise.

use std::time::{SystemTime, UNIX_EPOCH};

use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, ExtensionType, KeyPackage,
    Lifetime, MlsMessageOut, OpenMlsProvider,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use tls_codec::Serialize as TlsSerialize;

use super::*;

const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// A fixed hub time for apply-side tests (seconds).
const T0_S: u64 = 1_700_000_000;
const T0_MS: u64 = T0_S * 1000;
const HOUR_S: u64 = 3600;
const DAY_S: u64 = 24 * HOUR_S;
const TOKEN: [u8; 32] = [0x5a; 32];

fn alice_phone() -> ClientId {
    ClientId::parse("mimi://a.example/d/alice/phone").unwrap()
}

fn alice_laptop() -> ClientId {
    ClientId::parse("mimi://a.example/d/alice/laptop").unwrap()
}

fn alice() -> UserId {
    UserId::parse("mimi://a.example/u/alice").unwrap()
}

fn bob() -> UserId {
    UserId::parse("mimi://b.example/u/bob").unwrap()
}

fn wall_clock_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A freshly signed KeyPackage whose basic credential names `identity`.
fn generate(identity: &str, not_before_s: u64, not_after_s: u64, last_resort: bool) -> KeyPackage {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    let mut builder =
        KeyPackage::builder().key_package_lifetime(Lifetime::init(not_before_s, not_after_s));
    if last_resort {
        // RFC 9420 §10.1: an extension in the KeyPackage must be in the leaf's capabilities.
        builder = builder.mark_as_last_resort().leaf_node_capabilities(
            Capabilities::builder()
                .extensions(vec![ExtensionType::LastResort])
                .build(),
        );
    }
    builder
        .build(SUITE, &provider, &signer, credential)
        .unwrap()
        .key_package()
        .clone()
}

fn encode(key_package: &KeyPackage) -> Vec<u8> {
    key_package.tls_serialize_detached().unwrap()
}

/// A KeyPackage of `client` valid from an hour before T0 for 30 days.
fn kp_at_t0(client: &ClientId) -> Vec<u8> {
    encode(&generate(
        client.as_str(),
        T0_S - HOUR_S,
        T0_S + 30 * DAY_S,
        false,
    ))
}

fn last_resort_at_t0(client: &ClientId) -> Vec<u8> {
    encode(&generate(
        client.as_str(),
        T0_S - HOUR_S,
        T0_S + 30 * DAY_S,
        true,
    ))
}

/// A KeyPackage of `client` valid around the real clock, for the edge validator (openmls
/// checks lifetimes against the system clock too).
fn kp_now(client: &ClientId, last_resort: bool) -> (KeyPackage, u64) {
    let now_s = wall_clock_s();
    let key_package = generate(
        client.as_str(),
        now_s - HOUR_S,
        now_s + 30 * DAY_S,
        last_resort,
    );
    (key_package, now_s * 1000)
}

fn registered() -> Directory {
    let mut directory = Directory::default();
    directory
        .register_client(&alice_phone(), TOKEN, None)
        .unwrap();
    directory
}

fn claim_bytes(outcome: &ClaimOutcome, client: &ClientId) -> Option<Vec<u8>> {
    let ClaimOutcome::Claimed(claims) = outcome else {
        panic!("expected a claim, got {outcome:?}");
    };
    let claim = claims.iter().find(|claim| &claim.client == client).unwrap();
    match &claim.result {
        ClientClaimResult::KeyPackage(bytes) => Some(bytes.clone()),
        ClientClaimResult::Exhausted => None,
    }
}

fn ref_of(bytes: &[u8]) -> KeyPackageRef {
    KeyPackageRef::of_key_package(bytes)
}

/// Publishes and expects the specific error, with the directory unchanged.
fn assert_publish_rejected(
    directory: &mut Directory,
    batch: &[Vec<u8>],
    last_resort: bool,
    now_ms: u64,
    expected: DirectoryError,
) {
    let before = directory.clone();
    let err = directory
        .publish(&alice_phone(), batch, last_resort, now_ms)
        .unwrap_err();
    assert_eq!(err, expected);
    assert_eq!(*directory, before, "a rejected publication changes nothing");
}

// ---- Edge validation (RFC 9420 §10.1) ----

#[test]
fn rfc9420_s5_2_key_package_ref_matches_openmls() {
    let key_package = generate(alice_phone().as_str(), T0_S, T0_S + DAY_S, false);
    let expected = key_package
        .hash_ref(OpenMlsRustCrypto::default().crypto())
        .unwrap();
    assert_eq!(
        ref_of(&encode(&key_package)).as_bytes().as_slice(),
        expected.as_slice()
    );
}

#[test]
fn rfc9420_s10_1_edge_accepts_bare_and_mls_message_forms_canonically() {
    let client = alice_phone();
    let (key_package, now_ms) = kp_now(&client, false);
    let bare = encode(&key_package);
    let wrapped = MlsMessageOut::from(key_package.clone())
        .tls_serialize_detached()
        .unwrap();
    assert_ne!(bare, wrapped);

    let from_bare = validate_key_package(&bare, &client, now_ms).unwrap();
    let from_wrapped = validate_key_package(&wrapped, &client, now_ms).unwrap();
    assert_eq!(from_bare.bytes(), bare.as_slice());
    assert_eq!(from_wrapped, from_bare);
    assert!(!from_bare.is_last_resort());
    assert_eq!(
        from_bare.lifetime().not_after_s,
        key_package.life_time().not_after()
    );
    assert_eq!(from_bare.key_package_ref(), ref_of(&bare));
}

#[test]
fn draft_mls_extensions_last_resort_marker_is_noted_at_the_edge() {
    let client = alice_phone();
    let (key_package, now_ms) = kp_now(&client, true);
    assert!(key_package.last_resort());
    let validated = validate_key_package(&encode(&key_package), &client, now_ms).unwrap();
    assert!(validated.is_last_resort());
}

#[test]
fn rfc9420_s10_1_edge_rejects_tampered_signature() {
    let client = alice_phone();
    let (key_package, now_ms) = kp_now(&client, false);
    let mut bytes = encode(&key_package);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    assert_eq!(
        validate_key_package(&bytes, &client, now_ms),
        Err(KeyPackageError::InvalidSignature)
    );
    // The apply side does not verify signatures: that is the edge's job, done once.
    let mut directory = registered();
    assert_eq!(directory.publish(&client, &[bytes], false, now_ms), Ok(1));
}

#[test]
fn rfc9420_s10_1_edge_rejects_tampered_leaf_node() {
    let client = alice_phone();
    let (key_package, now_ms) = kp_now(&client, false);
    let mut bytes = encode(&key_package);
    // Byte 40 lies in leaf_node.encryption_key (after version, suite and the 33-byte init_key
    // vector), which the leaf node signature covers.
    bytes[40] ^= 0x01;
    assert_eq!(
        validate_key_package(&bytes, &client, now_ms),
        Err(KeyPackageError::InvalidLeafNodeSignature)
    );
}

#[test]
fn mimi_s2_edge_rejects_credential_of_another_client() {
    let (key_package, now_ms) = kp_now(&alice_laptop(), false);
    assert_eq!(
        validate_key_package(&encode(&key_package), &alice_phone(), now_ms),
        Err(KeyPackageError::IdentityMismatch)
    );
}

#[test]
fn rfc9420_s7_2_edge_checks_lifetime_against_given_time() {
    let client = alice_phone();
    let (key_package, now_ms) = kp_now(&client, false);
    let bytes = encode(&key_package);
    let not_after_s = key_package.life_time().not_after();
    assert_eq!(
        validate_key_package(&bytes, &client, not_after_s * 1000),
        Err(KeyPackageError::Expired {
            not_after_s,
            now_ms: not_after_s * 1000
        })
    );
    let long = generate(
        client.as_str(),
        now_ms / 1000 - HOUR_S,
        now_ms / 1000 + 91 * DAY_S,
        false,
    );
    assert_eq!(
        validate_key_package(&encode(&long), &client, now_ms),
        Err(KeyPackageError::LifetimeTooLong {
            lifetime_s: 91 * DAY_S + HOUR_S,
            max_s: MAX_KEY_PACKAGE_LIFETIME.as_secs()
        })
    );
}

#[test]
fn rfc9420_s2_1_garbage_and_every_truncation_are_refused_without_panic() {
    let client = alice_phone();
    let (key_package, now_ms) = kp_now(&client, false);
    let bytes = encode(&key_package);
    for len in 0..bytes.len() {
        assert!(
            validate_key_package(&bytes[..len], &client, now_ms).is_err(),
            "prefix of {len} bytes"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        validate_key_package(&trailing, &client, now_ms),
        Err(KeyPackageError::TrailingBytes { count: 1 })
    );
    assert_eq!(
        validate_key_package(b"\xff\xff\xff", &client, now_ms),
        Err(KeyPackageError::Truncated {
            field: "cipher_suite".into()
        })
    );
    let too_large = vec![0; MAX_KEY_PACKAGE_LEN + 1];
    assert_eq!(
        validate_key_package(&too_large, &client, now_ms),
        Err(KeyPackageError::TooLarge {
            len: MAX_KEY_PACKAGE_LEN + 1
        })
    );
    // Byte 4 is the init_key length (32 = 0x20); 0x40 0x20 is the same length, not minimal.
    let mut non_minimal = bytes[..4].to_vec();
    non_minimal.extend_from_slice(&[0x40, 0x20]);
    non_minimal.extend_from_slice(&bytes[5..]);
    assert_eq!(
        validate_key_package(&non_minimal, &client, now_ms),
        Err(KeyPackageError::InvalidLength {
            field: "init_key".into()
        })
    );
}

#[test]
fn rfc9420_s10_version_suite_and_credential_type_are_checked() {
    let client = alice_phone();
    let bytes = kp_at_t0(&client);
    let mut directory = registered();

    let mut version = bytes.clone();
    version[1] = 2;
    assert_publish_rejected(
        &mut directory,
        &[version],
        false,
        T0_MS,
        DirectoryError::InvalidKeyPackage {
            index: 0,
            reason: KeyPackageError::UnsupportedProtocolVersion { version: 2 },
        },
    );

    let mut suite = bytes.clone();
    suite[3] = 4; // MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448
    assert_publish_rejected(
        &mut directory,
        &[suite],
        false,
        T0_MS,
        DirectoryError::InvalidKeyPackage {
            index: 0,
            reason: KeyPackageError::UnsupportedCiphersuite { ciphersuite: 4 },
        },
    );

    // version(2) + suite(2) + three 33-byte key vectors = offset 103 of credential_type.
    let mut credential = bytes.clone();
    assert_eq!(credential[103..105], [0, 1]);
    credential[104] = 2; // x509
    assert_publish_rejected(
        &mut directory,
        &[credential],
        false,
        T0_MS,
        DirectoryError::InvalidKeyPackage {
            index: 0,
            reason: KeyPackageError::UnsupportedCredential { credential_type: 2 },
        },
    );
}

// ---- Client registry ----

#[test]
fn register_and_authenticate_refuse_wrong_token() {
    let mut directory = registered();
    let phone = alice_phone();
    assert!(directory.is_registered(&phone));
    assert!(directory.authenticate(&phone, &TOKEN));
    let mut wrong = TOKEN;
    wrong[31] ^= 1;
    assert!(!directory.authenticate(&phone, &wrong));
    assert!(!directory.authenticate(&alice_laptop(), &TOKEN));
    assert!(!directory.is_registered(&alice_laptop()));

    // Re-registering never replaces the token.
    assert_eq!(
        directory.register_client(&phone, wrong, None),
        Err(DirectoryError::AlreadyRegistered)
    );
    assert!(directory.authenticate(&phone, &TOKEN));
    assert!(!directory.authenticate(&phone, &wrong));

    // A second device must be linked by an existing one (nobody adds a device to someone
    // else's account and receives their Welcomes).
    assert_eq!(
        directory.register_client(&alice_laptop(), wrong, None),
        Err(DirectoryError::LinkRequired)
    );
    let bob_phone = ClientId::new(&bob(), "phone").unwrap();
    directory.register_client(&bob_phone, TOKEN, None).unwrap();
    assert_eq!(
        directory.register_client(&alice_laptop(), wrong, Some(&bob_phone)),
        Err(DirectoryError::LinkRequired),
        "a client of another user cannot link"
    );
    assert!(!directory.is_registered(&alice_laptop()));
    directory
        .register_client(&alice_laptop(), wrong, Some(&phone))
        .unwrap();
    assert_eq!(directory.clients_of(&alice()), vec![alice_laptop(), phone]);
    assert_eq!(directory.clients_of(&bob()), vec![bob_phone]);
}

#[test]
fn client_count_per_user_is_bounded() {
    let mut directory = Directory::default();
    let first = ClientId::new(&alice(), "c0").unwrap();
    directory.register_client(&first, TOKEN, None).unwrap();
    for n in 1..MAX_CLIENTS_PER_USER {
        let client = ClientId::new(&alice(), &format!("c{n}")).unwrap();
        directory
            .register_client(&client, TOKEN, Some(&first))
            .unwrap();
    }
    let before = directory.clone();
    let one_more = ClientId::new(&alice(), "extra").unwrap();
    assert_eq!(
        directory.register_client(&one_more, TOKEN, Some(&first)),
        Err(DirectoryError::TooManyClients)
    );
    assert_eq!(directory, before);
    // Another user is unaffected.
    let bob_phone = ClientId::new(&bob(), "phone").unwrap();
    directory.register_client(&bob_phone, TOKEN, None).unwrap();
}

// ---- Publication (apply side) ----

#[test]
fn publish_requires_a_registered_client_and_a_non_empty_batch() {
    let mut directory = Directory::default();
    assert_eq!(
        directory.publish(&alice_phone(), &[kp_at_t0(&alice_phone())], false, T0_MS),
        Err(DirectoryError::UnknownClient)
    );
    let mut directory = registered();
    assert_publish_rejected(
        &mut directory,
        &[],
        false,
        T0_MS,
        DirectoryError::EmptyBatch,
    );
}

#[test]
fn mimi_s2_publish_rejects_credential_of_another_client() {
    let mut directory = registered();
    assert_publish_rejected(
        &mut directory,
        &[kp_at_t0(&alice_laptop())],
        false,
        T0_MS,
        DirectoryError::InvalidKeyPackage {
            index: 0,
            reason: KeyPackageError::IdentityMismatch,
        },
    );
}

#[test]
fn rfc9420_s7_2_publish_checks_lifetime() {
    let client = alice_phone();
    let mut directory = registered();
    let expired = encode(&generate(client.as_str(), T0_S - DAY_S, T0_S, false));
    assert_publish_rejected(
        &mut directory,
        &[expired],
        false,
        T0_MS,
        DirectoryError::InvalidKeyPackage {
            index: 0,
            reason: KeyPackageError::Expired {
                not_after_s: T0_S,
                now_ms: T0_MS,
            },
        },
    );
    let not_yet = encode(&generate(client.as_str(), T0_S + 1, T0_S + DAY_S, false));
    assert_publish_rejected(
        &mut directory,
        &[not_yet],
        false,
        T0_MS,
        DirectoryError::InvalidKeyPackage {
            index: 0,
            reason: KeyPackageError::NotYetValid {
                not_before_s: T0_S + 1,
                now_ms: T0_MS,
            },
        },
    );
    let max_s = MAX_KEY_PACKAGE_LIFETIME.as_secs();
    let too_long = encode(&generate(client.as_str(), T0_S, T0_S + max_s + 1, false));
    assert_publish_rejected(
        &mut directory,
        &[too_long],
        false,
        T0_MS,
        DirectoryError::InvalidKeyPackage {
            index: 0,
            reason: KeyPackageError::LifetimeTooLong {
                lifetime_s: max_s + 1,
                max_s,
            },
        },
    );
    let inverted = encode(&generate(client.as_str(), T0_S + DAY_S, T0_S, false));
    assert_publish_rejected(
        &mut directory,
        &[inverted],
        false,
        T0_MS,
        DirectoryError::InvalidKeyPackage {
            index: 0,
            reason: KeyPackageError::InvertedLifetime {
                not_before_s: T0_S + DAY_S,
                not_after_s: T0_S,
            },
        },
    );
    // Exactly the maximum is fine.
    let longest = encode(&generate(client.as_str(), T0_S, T0_S + max_s, false));
    assert_eq!(directory.publish(&client, &[longest], false, T0_MS), Ok(1));
}

#[test]
fn publish_is_all_or_nothing_and_names_the_bad_index() {
    let client = alice_phone();
    let mut directory = registered();
    let batch = vec![kp_at_t0(&client), kp_at_t0(&client), b"garbage".to_vec()];
    let before = directory.clone();
    let err = directory
        .publish(&client, &batch, false, T0_MS)
        .unwrap_err();
    assert!(
        matches!(err, DirectoryError::InvalidKeyPackage { index: 2, .. }),
        "{err:?}"
    );
    assert_eq!(directory, before);
    assert_eq!(directory.available_key_packages(&client, T0_MS), 0);
}

#[test]
fn publish_accepts_mls_message_wrapped_key_packages_and_stores_them_bare() {
    let client = alice_phone();
    let key_package = generate(client.as_str(), T0_S - HOUR_S, T0_S + DAY_S, false);
    let wrapped = MlsMessageOut::from(key_package.clone())
        .tls_serialize_detached()
        .unwrap();
    let mut directory = registered();
    assert_eq!(directory.publish(&client, &[wrapped], false, T0_MS), Ok(1));
    let outcome = directory.claim(&bob(), &alice(), T0_MS);
    assert_eq!(claim_bytes(&outcome, &client), Some(encode(&key_package)));
}

#[test]
fn protocol06_s5_1_duplicates_are_rejected_by_key_package_ref() {
    let client = alice_phone();
    let mut directory = registered();
    let first = kp_at_t0(&client);
    let second = kp_at_t0(&client);
    assert_publish_rejected(
        &mut directory,
        &[first.clone(), second.clone(), first.clone()],
        false,
        T0_MS,
        DirectoryError::DuplicateKeyPackage { index: 2 },
    );
    assert_eq!(
        directory.publish(&client, std::slice::from_ref(&first), false, T0_MS),
        Ok(1)
    );
    assert_publish_rejected(
        &mut directory,
        &[second, first],
        false,
        T0_MS,
        DirectoryError::DuplicateKeyPackage { index: 1 },
    );
    assert_eq!(directory.available_key_packages(&client, T0_MS), 1);
}

#[test]
fn protocol06_s5_1_claimed_key_package_cannot_be_republished() {
    let client = alice_phone();
    let mut directory = registered();
    let key_package = kp_at_t0(&client);
    directory
        .publish(&client, std::slice::from_ref(&key_package), false, T0_MS)
        .unwrap();
    let outcome = directory.claim(&bob(), &alice(), T0_MS);
    assert_eq!(claim_bytes(&outcome, &client), Some(key_package.clone()));
    assert_publish_rejected(
        &mut directory,
        &[key_package],
        false,
        T0_MS + 1,
        DirectoryError::AlreadyClaimed { index: 0 },
    );
    let outcome = directory.claim(&bob(), &alice(), T0_MS + 2);
    assert_eq!(claim_bytes(&outcome, &client), None);
}

#[test]
fn key_packages_per_client_are_bounded() {
    let client = alice_phone();
    let mut directory = registered();
    // The bound is checked before any decoding, so the contents do not matter.
    let oversized = vec![Vec::new(); MAX_KEY_PACKAGES_PER_CLIENT + 1];
    assert_publish_rejected(
        &mut directory,
        &oversized,
        false,
        T0_MS,
        DirectoryError::TooManyKeyPackages {
            stored: 0,
            offered: MAX_KEY_PACKAGES_PER_CLIENT + 1,
        },
    );
    let short_lived = encode(&generate(client.as_str(), T0_S, T0_S + HOUR_S, false));
    directory
        .publish(&client, &[short_lived], false, T0_MS)
        .unwrap();
    let full = vec![Vec::new(); MAX_KEY_PACKAGES_PER_CLIENT];
    assert_publish_rejected(
        &mut directory,
        &full,
        false,
        T0_MS,
        DirectoryError::TooManyKeyPackages {
            stored: 1,
            offered: MAX_KEY_PACKAGES_PER_CLIENT,
        },
    );
    // Once the stored one has expired it no longer counts: the batch is decoded (and refused
    // for its contents instead).
    let later = (T0_S + HOUR_S) * 1000;
    let err = directory.publish(&client, &full, false, later).unwrap_err();
    assert!(
        matches!(err, DirectoryError::InvalidKeyPackage { index: 0, .. }),
        "{err:?}"
    );
}

// ---- Claims (protocol-06 §5.1) ----

#[test]
fn protocol06_s5_1_claim_is_single_use_and_oldest_first() {
    let client = alice_phone();
    let mut directory = registered();
    let batch: Vec<Vec<u8>> = (0..3).map(|_| kp_at_t0(&client)).collect();
    assert_eq!(directory.publish(&client, &batch, false, T0_MS), Ok(3));
    assert_eq!(directory.available_key_packages(&client, T0_MS), 3);

    let mut served = Vec::new();
    for n in 0..3 {
        let outcome = directory.claim(&bob(), &alice(), T0_MS + n);
        assert_eq!(outcome.user_code(), KeyMaterialUserCode::Success);
        served.push(claim_bytes(&outcome, &client).unwrap());
    }
    assert_eq!(served, batch, "each served once, in publication order");
    assert_eq!(directory.available_key_packages(&client, T0_MS), 0);

    let outcome = directory.claim(&bob(), &alice(), T0_MS + 3);
    assert_eq!(claim_bytes(&outcome, &client), None);
    assert_eq!(
        outcome.user_code(),
        KeyMaterialUserCode::NoCompatibleMaterial
    );
}

#[test]
fn protocol06_s5_1_expired_key_packages_are_never_served() {
    let client = alice_phone();
    let mut directory = registered();
    let short_lived = encode(&generate(
        client.as_str(),
        T0_S - HOUR_S,
        T0_S + HOUR_S,
        false,
    ));
    directory
        .publish(&client, &[short_lived], false, T0_MS)
        .unwrap();
    assert_eq!(directory.available_key_packages(&client, T0_MS), 1);

    let past_not_after = (T0_S + HOUR_S) * 1000;
    assert_eq!(directory.available_key_packages(&client, past_not_after), 0);
    let outcome = directory.claim(&bob(), &alice(), past_not_after);
    assert_eq!(claim_bytes(&outcome, &client), None);
    // The expired KeyPackage is gone, not merely skipped.
    let entry = directory.client(&client).unwrap();
    assert!(entry.pool.is_empty());
    assert!(directory.claimed.is_empty());
}

#[test]
fn rfc9420_s7_2_key_package_not_yet_valid_after_time_steps_back_is_kept_for_later() {
    let client = alice_phone();
    let mut directory = registered();
    let key_package = encode(&generate(client.as_str(), T0_S - 10, T0_S + DAY_S, false));
    directory
        .publish(&client, std::slice::from_ref(&key_package), false, T0_MS)
        .unwrap();
    // A new leader's clock is 20 s behind: the KeyPackage has not started yet.
    let earlier = T0_MS - 20_000;
    assert_eq!(directory.available_key_packages(&client, earlier), 0);
    let outcome = directory.claim(&bob(), &alice(), earlier);
    assert_eq!(claim_bytes(&outcome, &client), None);
    let outcome = directory.claim(&bob(), &alice(), T0_MS);
    assert_eq!(claim_bytes(&outcome, &client), Some(key_package));
}

#[test]
fn rfc9420_s16_8_last_resort_is_served_repeatedly_only_when_nothing_else_is_left() {
    let client = alice_phone();
    let mut directory = registered();
    let regular = kp_at_t0(&client);
    let last_resort = last_resort_at_t0(&client);
    directory
        .publish(&client, std::slice::from_ref(&regular), false, T0_MS)
        .unwrap();
    assert_eq!(
        directory.publish(&client, std::slice::from_ref(&last_resort), true, T0_MS),
        Ok(1)
    );
    assert_eq!(
        directory.available_key_packages(&client, T0_MS),
        1,
        "the last-resort KeyPackage is not counted"
    );

    let first = directory.claim(&bob(), &alice(), T0_MS);
    assert_eq!(claim_bytes(&first, &client), Some(regular));
    for n in 1..=3 {
        let outcome = directory.claim(&bob(), &alice(), T0_MS + n);
        assert_eq!(claim_bytes(&outcome, &client), Some(last_resort.clone()));
        assert_eq!(outcome.user_code(), KeyMaterialUserCode::Success);
    }
    assert_eq!(
        directory.client_for_ref(ref_of(&last_resort).as_bytes()),
        Some(&client)
    );

    // A new last-resort KeyPackage replaces the old one.
    let replacement = last_resort_at_t0(&client);
    directory
        .publish(&client, std::slice::from_ref(&replacement), true, T0_MS + 4)
        .unwrap();
    let outcome = directory.claim(&bob(), &alice(), T0_MS + 5);
    assert_eq!(claim_bytes(&outcome, &client), Some(replacement));
}

#[test]
fn rfc9420_s16_8_last_resort_publication_rules() {
    let client = alice_phone();
    let mut directory = registered();
    assert_publish_rejected(
        &mut directory,
        &[last_resort_at_t0(&client), last_resort_at_t0(&client)],
        true,
        T0_MS,
        DirectoryError::LastResortBatch { count: 2 },
    );
    assert_publish_rejected(
        &mut directory,
        &[kp_at_t0(&client)],
        true,
        T0_MS,
        DirectoryError::LastResortMismatch {
            index: 0,
            marked: false,
        },
    );
    assert_publish_rejected(
        &mut directory,
        &[kp_at_t0(&client), last_resort_at_t0(&client)],
        false,
        T0_MS,
        DirectoryError::LastResortMismatch {
            index: 1,
            marked: true,
        },
    );
    let last_resort = last_resort_at_t0(&client);
    directory
        .publish(&client, std::slice::from_ref(&last_resort), true, T0_MS)
        .unwrap();
    assert_publish_rejected(
        &mut directory,
        &[last_resort],
        true,
        T0_MS,
        DirectoryError::DuplicateKeyPackage { index: 0 },
    );
}

#[test]
fn protocol06_s5_1_partial_success_when_one_client_is_exhausted() {
    let phone = alice_phone();
    let laptop = alice_laptop();
    let mut directory = registered();
    directory
        .register_client(&laptop, TOKEN, Some(&phone))
        .unwrap();
    directory
        .publish(&phone, &[kp_at_t0(&phone)], false, T0_MS)
        .unwrap();

    let outcome = directory.claim(&bob(), &alice(), T0_MS);
    assert_eq!(outcome.user_code(), KeyMaterialUserCode::PartialSuccess);
    let ClaimOutcome::Claimed(claims) = &outcome else {
        unreachable!()
    };
    let codes: Vec<_> = claims
        .iter()
        .map(|claim| (claim.client.clone(), claim.result.client_code()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (laptop, KeyMaterialClientCode::KeyMaterialExhausted),
            (phone, KeyMaterialClientCode::Success),
        ]
    );
}

#[test]
fn protocol06_s5_1_unknown_user() {
    let mut directory = registered();
    let before = directory.clone();
    let outcome = directory.claim(&alice(), &bob(), T0_MS);
    assert_eq!(outcome, ClaimOutcome::UserUnknown);
    assert_eq!(outcome.user_code(), KeyMaterialUserCode::UserUnknown);
    assert_eq!(directory, before);
}

// ---- Welcome routing (MIMI.md §4) ----

#[test]
fn mimi_s4_claimed_ref_routes_welcome_until_expiry() {
    let client = alice_phone();
    let mut directory = registered();
    let key_package = encode(&generate(
        client.as_str(),
        T0_S - HOUR_S,
        T0_S + HOUR_S,
        false,
    ));
    let key_package_ref = ref_of(&key_package);
    directory
        .publish(&client, &[key_package], false, T0_MS)
        .unwrap();
    assert_eq!(directory.client_for_ref(key_package_ref.as_bytes()), None);

    directory.claim(&bob(), &alice(), T0_MS + 5);
    assert_eq!(
        directory.client_for_ref(key_package_ref.as_bytes()),
        Some(&client)
    );
    assert_eq!(
        directory.claim_record(key_package_ref.as_bytes()),
        Some(&ClaimRecord {
            client: client.clone(),
            requester: bob(),
            claimed_at_ms: T0_MS + 5,
            not_after_s: T0_S + HOUR_S,
        })
    );
    assert_eq!(directory.client_for_ref(&[0; 31]), None);

    directory.expire((T0_S + HOUR_S) * 1000 - 1);
    assert!(directory
        .client_for_ref(key_package_ref.as_bytes())
        .is_some());
    directory.expire((T0_S + HOUR_S) * 1000);
    assert_eq!(directory.client_for_ref(key_package_ref.as_bytes()), None);
}

#[test]
fn expire_drops_expired_stored_key_packages_too() {
    let client = alice_phone();
    let mut directory = registered();
    let short = encode(&generate(client.as_str(), T0_S, T0_S + HOUR_S, false));
    let long = kp_at_t0(&client);
    let short_last_resort = encode(&generate(client.as_str(), T0_S, T0_S + HOUR_S, true));
    directory
        .publish(&client, &[short, long.clone()], false, T0_MS)
        .unwrap();
    directory
        .publish(&client, &[short_last_resort], true, T0_MS)
        .unwrap();
    directory.expire((T0_S + HOUR_S) * 1000);
    let entry = directory.client(&client).unwrap();
    assert_eq!(entry.pool.len(), 1);
    assert_eq!(entry.pool.values().next().unwrap().bytes, long);
    assert!(entry.last_resort.is_none());
}

// ---- Snapshots ----

#[test]
fn snapshot_round_trips_and_encodes_deterministically() {
    let phone = alice_phone();
    let laptop = alice_laptop();
    let mut directory = registered();
    directory
        .register_client(&laptop, [1; 32], Some(&phone))
        .unwrap();
    let bob_phone = ClientId::new(&bob(), "phone").unwrap();
    directory
        .register_client(&bob_phone, [2; 32], None)
        .unwrap();
    directory
        .publish(&phone, &[kp_at_t0(&phone), kp_at_t0(&phone)], false, T0_MS)
        .unwrap();
    directory
        .publish(&phone, &[last_resort_at_t0(&phone)], true, T0_MS)
        .unwrap();
    directory.claim(&bob(), &alice(), T0_MS + 1);

    let encoded = postcard::to_stdvec(&directory).unwrap();
    let decoded: Directory = postcard::from_bytes(&encoded).unwrap();
    assert_eq!(decoded, directory);
    assert_eq!(postcard::to_stdvec(&decoded).unwrap(), encoded);
    // The restored directory behaves the same: the next claim serves the second KeyPackage.
    let mut restored = decoded;
    assert_eq!(
        restored.claim(&bob(), &alice(), T0_MS + 2),
        directory.claim(&bob(), &alice(), T0_MS + 2)
    );
    assert!(restored.authenticate(&laptop, &[1; 32]));
}

#[test]
fn client_entry_debug_redacts_token_hash() {
    let directory = registered();
    let debug = format!("{directory:?}");
    assert!(debug.contains("<redacted>"));
    assert!(!debug.contains("90, 90"), "token bytes leaked: {debug}");
}
