//! Apply-side tests of profiles, handles, preferences and consent (MIMI.md §5.1, §5.6, §5.7;
//! protocol-06 §5.7, §5.8), with real openmls KeyPackages where a grant carries them. Every
//! refusal is checked to leave the directory exactly as it was.

use openmls::prelude::{BasicCredential, Ciphersuite, CredentialWithKey, KeyPackage, Lifetime};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use tls_codec::Serialize as TlsSerialize;

use super::consent::{
    ConsentRefusal, ConsentState, Discoverability, Preferences, Reachability, RequesterAction,
    MAX_CONSENT_ENTRIES,
};
use super::profile::{
    Email, Handle, Nick, Phone, Profile, ProfileError, Profiles, QueryOutcome, SearchTerm,
};
use super::*;

const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
const T0_S: u64 = 1_700_000_000;
const T0_MS: u64 = T0_S * 1000;

fn user(text: &str) -> UserId {
    UserId::parse(text).unwrap()
}

fn room(name: &str) -> RoomId {
    RoomId::parse(&format!("mimi://a.example/r/{name}")).unwrap()
}

fn bob_phone() -> ClientId {
    ClientId::parse("mimi://a.example/d/bob/phone").unwrap()
}

/// Bob@a.example (the target) with one client and `kps` published KeyPackages.
fn with_bob(kps: usize) -> Directory {
    let mut directory = Directory::default();
    directory
        .register_client(&bob_phone(), [1; 32], None)
        .unwrap();
    if kps > 0 {
        let batch: Vec<Vec<u8>> = (0..kps).map(|_| kp(&bob_phone())).collect();
        directory
            .publish(&bob_phone(), &batch, false, T0_MS)
            .unwrap();
    }
    directory
}

fn bob() -> UserId {
    bob_phone().user()
}

/// A KeyPackage of `client` valid around T0.
fn kp(client: &ClientId) -> Vec<u8> {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(client.as_bytes().to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    KeyPackage::builder()
        .key_package_lifetime(Lifetime::init(T0_S - 3600, T0_S + 30 * 86_400))
        .build(SUITE, &provider, &signer, credential)
        .unwrap()
        .key_package()
        .tls_serialize_detached()
        .unwrap()
}

fn prefs(discoverability: Discoverability, reachability: Reachability) -> Preferences {
    Preferences {
        discoverability,
        reachability,
    }
}

fn decide(directory: &mut Directory, requester: &UserId, room: Option<&RoomId>, grant: bool) {
    let action = if grant {
        TargetAction::Grant {
            key_packages: Vec::new(),
        }
    } else {
        TargetAction::Revoke
    };
    directory
        .consent_as_target(&bob(), requester, room, &action, T0_MS)
        .unwrap();
}

fn reach(directory: &Directory, requester: &UserId, room_name: &str) -> Result<(), ConsentRefusal> {
    directory.users[&bob()]
        .consent
        .check_reach(&bob(), requester, Some(&room(room_name)))
}

fn nick(value: &str) -> Nick {
    Nick::parse(value).unwrap()
}

fn profile_with_nick(value: &str) -> Profile {
    Profile::new(String::new(), Some(nick(value)), vec![], vec![]).unwrap()
}

#[test]
fn mimi_5_7_handles_are_validated_strictly() {
    for good in ["+15551234567", "+4930123456", "+123456789012345"] {
        assert!(Phone::parse(good).is_ok(), "{good}");
    }
    for (bad, why) in [
        ("15551234567", "must start with '+'"),
        ("+1 555 1234", "only digits"),
        ("+1234567", "8 to 15 digits"),
        ("+1234567890123456", "8 to 15 digits"),
        ("+0123456789", "does not start with 0"),
        ("+", "8 to 15 digits"),
    ] {
        let error = Phone::parse(bad).unwrap_err().to_string();
        assert!(error.contains(why), "{bad}: {error}");
    }
    assert_eq!(
        Email::parse("Alice.Smith@Mail.A.Example").unwrap().as_str(),
        "Alice.Smith@mail.a.example",
        "the domain is lowercased, the local part kept"
    );
    for (bad, why) in [
        ("alice", "exactly one '@'"),
        ("a@b@c", "exactly one '@'"),
        ("@a.example", "local part is empty"),
        ("alice@", "domain is empty"),
        ("al ice@a.example", "atext"),
        ("\"al\"@a.example", "atext"),
        ("alïce@a.example", "atext"),
        (".alice@a.example", "dot"),
        ("al..ice@a.example", "dot"),
        ("alice@a..example", "not a DNS name"),
        ("alice@[127.0.0.1]", "not a DNS name"),
        ("alice@-a.example", "not a DNS name"),
    ] {
        let error = Email::parse(bad).unwrap_err().to_string();
        assert!(error.contains(why), "{bad}: {error}");
    }
    assert!(Email::parse(&format!("{}@a.example", "x".repeat(65))).is_err());
    assert!(Email::parse(&format!("a@{}.example", "x".repeat(250))).is_err());
    assert!(Nick::parse("alice.smith-2_b").is_ok());
    for bad in [
        "",
        "Alice",
        "alice!",
        ".alice",
        "alice-",
        "al ice",
        &"a".repeat(65),
    ] {
        assert!(Nick::parse(bad).is_err(), "{bad:?}");
    }
    assert!(matches!(
        Profile::new("x\u{7}".into(), None, vec![], vec![]),
        Err(ProfileError::InvalidDisplayName { .. })
    ));
    assert!(matches!(
        Profile::new("x".repeat(129), None, vec![], vec![]),
        Err(ProfileError::InvalidDisplayName { .. })
    ));
    let phones: Vec<Phone> = (0..5)
        .map(|i| Phone::parse(&format!("+1555000000{i}")).unwrap())
        .collect();
    assert!(matches!(
        Profile::new(String::new(), None, vec![], phones),
        Err(ProfileError::TooManyHandles { count: 5, .. })
    ));
    let twice = vec![
        Email::parse("a@x.example").unwrap(),
        Email::parse("a@X.example").unwrap(),
    ];
    assert!(matches!(
        Profile::new(String::new(), None, twice, vec![]),
        Err(ProfileError::DuplicateHandle { .. })
    ));
    // A log or snapshot holding a handle that is not normalised does not decode.
    assert!(serde_json::from_str::<Email>("\"a@X.example\"").is_err());
    assert!(serde_json::from_str::<Phone>("\"+1 555\"").is_err());
}

#[test]
fn mimi_5_7_a_handle_is_unique_per_provider_and_freed_when_dropped() {
    let alice = user("mimi://a.example/u/alice");
    let carol = user("mimi://a.example/u/carol");
    let mut profiles = Profiles::default();
    let alices = Profile::new(
        "Alice".into(),
        Some(nick("alice")),
        vec![Email::parse("alice@a.example").unwrap()],
        vec![Phone::parse("+15550000001").unwrap()],
    )
    .unwrap();
    profiles.set(&alice, alices.clone()).unwrap();
    // Setting the same profile again is not a conflict with oneself.
    profiles.set(&alice, alices).unwrap();
    let before = profiles.clone();
    let carols = Profile::new(
        "Carol".into(),
        Some(nick("carol")),
        vec![Email::parse("alice@A.EXAMPLE").unwrap()],
        vec![],
    )
    .unwrap();
    assert_eq!(
        profiles.set(&carol, carols),
        Err(ProfileError::HandleTaken {
            handle: Handle::Email(Email::parse("alice@a.example").unwrap())
        })
    );
    assert_eq!(profiles, before, "a refused profile changes nothing");
    assert_eq!(profiles.owner(&Handle::Nick(nick("carol"))), None);
    // Alice renames herself: "alice" becomes free for Carol.
    profiles.set(&alice, profile_with_nick("alice.s")).unwrap();
    assert_eq!(profiles.owner(&Handle::Nick(nick("alice"))), None);
    assert_eq!(
        profiles.owner(&Handle::Phone(Phone::parse("+15550000001").unwrap())),
        None
    );
    profiles.set(&carol, profile_with_nick("alice")).unwrap();
    assert_eq!(profiles.owner(&Handle::Nick(nick("alice"))), Some(&carol));
    // The empty profile leaves the index.
    profiles.set(&carol, Profile::default()).unwrap();
    assert_eq!(profiles.profile(&carol), None);
    assert_eq!(profiles.owner(&Handle::Nick(nick("alice"))), None);
}

#[test]
fn protocol06_5_8_query_elements_are_anded_and_exact() {
    let alice = user("mimi://a.example/u/alice");
    let carol = user("mimi://a.example/u/carol");
    let mut profiles = Profiles::default();
    profiles
        .set(
            &alice,
            Profile::new(
                "Alice".into(),
                Some(nick("alice.smith")),
                vec![Email::parse("alice@mail.example").unwrap()],
                vec![Phone::parse("+15550000001").unwrap()],
            )
            .unwrap(),
        )
        .unwrap();
    profiles.set(&carol, profile_with_nick("carol")).unwrap();
    let find = |terms: &[SearchTerm]| profiles.find(terms, "a.example");
    let found = QueryOutcome::Found(alice.clone());
    assert_eq!(find(&[SearchTerm::Nick("alice.smith".into())]), found);
    assert_eq!(
        find(&[SearchTerm::Handle("im:alice.smith@a.example".into())]),
        found
    );
    assert_eq!(
        find(&[SearchTerm::Handle("IM:alice.smith@A.example".into())]),
        found,
        "scheme and domain compare case-insensitively"
    );
    assert_eq!(
        find(&[SearchTerm::Email("alice@MAIL.example".into())]),
        found
    );
    assert_eq!(find(&[SearchTerm::Phone("+15550000001".into())]), found);
    assert_eq!(
        find(&[
            SearchTerm::Nick("alice.smith".into()),
            SearchTerm::Phone("+15550000001".into())
        ]),
        found
    );
    for not_found in [
        vec![SearchTerm::Nick("alice".into())],
        vec![SearchTerm::Nick("Alice.Smith".into())],
        vec![SearchTerm::Handle("im:alice.smith@b.example".into())],
        vec![SearchTerm::Handle("alice.smith@a.example".into())],
        vec![SearchTerm::Email("Alice@mail.example".into())],
        vec![SearchTerm::Phone("+1 555 000 0001".into())],
        vec![
            SearchTerm::Nick("alice.smith".into()),
            SearchTerm::Nick("carol".into()),
        ],
    ] {
        assert_eq!(find(&not_found), QueryOutcome::NotFound, "{not_found:?}");
    }
    assert_eq!(find(&[]), QueryOutcome::Ambiguous);
    assert_eq!(
        find(&[SearchTerm::Nick("carol".into()), SearchTerm::Unsupported]),
        QueryOutcome::UnsupportedField
    );
}

/// MIMI.md §5.1 and §5.6: every reachability preference against no decision, a global grant
/// and a global revoke, for a requester of the same provider and of another one.
#[test]
fn mimi_5_6_reachability_and_consent_decide_key_material() {
    use ConsentRefusal::NoConsent;
    use Reachability::{Anyone, ConsentRequired, OwnProvider};
    let local = user("mimi://a.example/u/alice");
    let remote = user("mimi://c.example/u/cathy");
    // (reachability, decision, requester) -> expected
    type Case<'a> = (
        Reachability,
        Option<bool>,
        &'a UserId,
        Result<(), ConsentRefusal>,
    );
    #[rustfmt::skip]
    let table: &[Case] = &[
        (Anyone, None, &local, Ok(())),
        (Anyone, None, &remote, Ok(())),
        (Anyone, Some(true), &remote, Ok(())),
        (Anyone, Some(false), &local, Err(NoConsent)),
        (Anyone, Some(false), &remote, Err(NoConsent)),
        (ConsentRequired, None, &local, Err(NoConsent)),
        (ConsentRequired, None, &remote, Err(NoConsent)),
        (ConsentRequired, Some(true), &local, Ok(())),
        (ConsentRequired, Some(true), &remote, Ok(())),
        (ConsentRequired, Some(false), &remote, Err(NoConsent)),
        (OwnProvider, None, &local, Ok(())),
        (OwnProvider, None, &remote, Err(NoConsent)),
        (OwnProvider, Some(true), &local, Ok(())),
        (OwnProvider, Some(true), &remote, Err(NoConsent)),
        (OwnProvider, Some(false), &local, Err(NoConsent)),
    ];
    for (reachability, decision, requester, expected) in table {
        let mut directory = with_bob(1);
        directory
            .set_preferences(&bob(), prefs(Discoverability::Everyone, *reachability))
            .unwrap();
        if let Some(grant) = decision {
            decide(&mut directory, requester, None, *grant);
        }
        assert_eq!(
            reach(&directory, requester, "club"),
            *expected,
            "{reachability:?}, decision {decision:?}, {requester}"
        );
        // The claim decides the same way, and a refusal consumes nothing.
        let outcome = directory.claim_in_room(requester, &bob(), &room("club"), T0_MS);
        assert_eq!(
            outcome.user_code() == KeyMaterialUserCode::Success,
            expected.is_ok()
        );
        let left = directory.available_key_packages(&bob_phone(), T0_MS);
        assert_eq!(left, if expected.is_ok() { 0 } else { 1 });
    }
    // A user always reaches itself (its new devices).
    let mut directory = with_bob(0);
    directory
        .set_preferences(&bob(), prefs(Discoverability::Nobody, OwnProvider))
        .unwrap();
    assert_eq!(reach(&directory, &bob(), "club"), Ok(()));
}

/// MIMI.md §5.6: a revocation wins over earlier grants; the latest decision counts, a
/// room-scoped grant opens only its room (`noConsentForThisRoom` elsewhere).
#[test]
fn mimi_5_6_revoke_wins_and_room_grants_open_only_their_room() {
    use ConsentRefusal::{NoConsent, NoConsentForThisRoom};
    let alice = user("mimi://c.example/u/alice");
    let mut directory = with_bob(0);
    directory
        .set_preferences(
            &bob(),
            prefs(Discoverability::Everyone, Reachability::ConsentRequired),
        )
        .unwrap();
    assert_eq!(reach(&directory, &alice, "club"), Err(NoConsent));

    decide(&mut directory, &alice, Some(&room("club")), true);
    assert_eq!(reach(&directory, &alice, "club"), Ok(()));
    assert_eq!(reach(&directory, &alice, "den"), Err(NoConsentForThisRoom));

    decide(&mut directory, &alice, None, true);
    assert_eq!(reach(&directory, &alice, "den"), Ok(()));
    decide(&mut directory, &alice, Some(&room("den")), false);
    assert_eq!(reach(&directory, &alice, "den"), Err(NoConsentForThisRoom));
    assert_eq!(reach(&directory, &alice, "club"), Ok(()));

    // A global revoke after all of it wins over every earlier grant.
    decide(&mut directory, &alice, None, false);
    for name in ["club", "den", "attic"] {
        assert_eq!(reach(&directory, &alice, name), Err(NoConsent), "{name}");
    }
    // A grant after the revoke opens its room again.
    decide(&mut directory, &alice, Some(&room("attic")), true);
    assert_eq!(reach(&directory, &alice, "attic"), Ok(()));
    assert_eq!(reach(&directory, &alice, "club"), Err(NoConsentForThisRoom));

    // A revoke is a pre-emptive deny even for a user reachable by anyone.
    let mut directory = with_bob(0);
    decide(&mut directory, &alice, None, false);
    assert_eq!(reach(&directory, &alice, "club"), Err(NoConsent));
    decide(&mut directory, &alice, Some(&room("den")), false);
    decide(&mut directory, &alice, None, true);
    assert_eq!(
        reach(&directory, &alice, "den"),
        Ok(()),
        "the later global grant supersedes the room revoke"
    );
}

#[test]
fn mimi_5_6_requests_wait_until_decided_cancelled_or_denied() {
    let alice = user("mimi://c.example/u/alice");
    let dave = user("mimi://d.example/u/dave");
    let mut directory = with_bob(0);
    let request = |directory: &mut Directory, who: &UserId, room_name: Option<&str>| {
        let room = room_name.map(room);
        directory
            .consent_as_target(&bob(), who, room.as_ref(), &TargetAction::Request, T0_MS)
            .unwrap();
    };
    let pending = |directory: &Directory| -> Vec<(UserId, Option<RoomId>)> {
        directory
            .consents(&bob())
            .incoming
            .into_iter()
            .filter(|record| record.state == ConsentState::Requested)
            .map(|record| (record.requester, record.room))
            .collect()
    };
    request(&mut directory, &alice, None);
    request(&mut directory, &alice, Some("club"));
    request(&mut directory, &dave, Some("club"));
    assert_eq!(pending(&directory).len(), 3);

    // A cancel must name the scope of the request; an unknown scope changes nothing.
    let before = directory.clone();
    directory
        .consent_as_target(
            &bob(),
            &alice,
            Some(&room("den")),
            &TargetAction::Cancel,
            T0_MS,
        )
        .unwrap();
    assert_eq!(directory, before);
    directory
        .consent_as_target(
            &bob(),
            &alice,
            Some(&room("club")),
            &TargetAction::Cancel,
            T0_MS,
        )
        .unwrap();
    assert_eq!(
        pending(&directory),
        vec![(alice.clone(), None), (dave.clone(), Some(room("club")))]
    );

    // A global decision settles every pending request of its requester.
    decide(&mut directory, &dave, None, false);
    assert_eq!(pending(&directory), vec![(alice.clone(), None)]);
    // A requester that was denied cannot ask again: the request is dropped.
    request(&mut directory, &dave, Some("den"));
    assert_eq!(pending(&directory), vec![(alice.clone(), None)]);

    // An unknown target, or asking oneself, records nothing.
    let before = directory.clone();
    assert_eq!(
        directory.consent_as_target(
            &user("mimi://a.example/u/nobody"),
            &alice,
            None,
            &TargetAction::Request,
            T0_MS
        ),
        Err(DirectoryError::UnknownUser)
    );
    assert_eq!(
        directory.consent_as_target(&bob(), &bob(), None, &TargetAction::Request, T0_MS),
        Err(DirectoryError::SelfConsent)
    );
    assert_eq!(directory, before);
}

#[test]
fn consent_records_are_bounded_and_a_full_inbox_drops_requests() {
    let mut directory = with_bob(0);
    for i in 0..MAX_CONSENT_ENTRIES {
        let requester = user(&format!("mimi://c.example/u/u{i}"));
        directory
            .consent_as_target(&bob(), &requester, None, &TargetAction::Request, T0_MS)
            .unwrap();
        decide(&mut directory, &requester, Some(&room("club")), true);
    }
    let extra = user("mimi://c.example/u/extra");
    let before = directory.clone();
    assert_eq!(
        directory.consent_as_target(&bob(), &extra, None, &TargetAction::Request, T0_MS),
        Err(DirectoryError::TooManyConsentEntries),
        "the request beyond the bound is refused, so the edge can count the limit hit"
    );
    assert_eq!(directory, before, "the request beyond the bound is dropped");
    assert_eq!(
        directory.consent_as_target(
            &bob(),
            &extra,
            None,
            &TargetAction::Grant {
                key_packages: vec![]
            },
            T0_MS
        ),
        Err(DirectoryError::TooManyConsentEntries)
    );
    assert_eq!(directory, before);
}

/// MIMI.md §5.6: a grant may carry KeyPackages; they are recorded as claimed by the requester
/// (so the Welcome that uses one is routed to its client, MIMI.md §4) together with the
/// decision, all or nothing.
#[test]
fn mimi_5_6_grant_key_packages_are_claimed_for_the_requester_all_or_nothing() {
    let alice = user("mimi://c.example/u/alice");
    let mut directory = with_bob(1);
    let granted = kp(&bob_phone());
    let stranger = ClientId::parse("mimi://a.example/d/bob/tablet").unwrap();
    let grant = |key_packages: Vec<GrantedKeyPackage>| TargetAction::Grant { key_packages };
    let own = GrantedKeyPackage {
        client: bob_phone(),
        key_package: granted.clone(),
    };
    let before = directory.clone();
    for (key_packages, expected) in [
        (
            vec![
                own.clone(),
                GrantedKeyPackage {
                    client: stranger.clone(),
                    key_package: kp(&stranger),
                },
            ],
            DirectoryError::GrantKeyPackageClient {
                index: 1,
                client: stranger.clone(),
            },
        ),
        (
            vec![own.clone(), own.clone()],
            DirectoryError::DuplicateKeyPackage { index: 1 },
        ),
        (
            vec![GrantedKeyPackage {
                client: bob_phone(),
                key_package: granted[..granted.len() - 1].to_vec(),
            }],
            DirectoryError::InvalidKeyPackage {
                index: 0,
                reason: KeyPackageError::Truncated {
                    field: "KeyPackage.signature".into(),
                },
            },
        ),
    ] {
        let result = directory.consent_as_target(&bob(), &alice, None, &grant(key_packages), T0_MS);
        match (&result, &expected) {
            (
                Err(DirectoryError::InvalidKeyPackage { index, .. }),
                DirectoryError::InvalidKeyPackage { index: want, .. },
            ) => assert_eq!(index, want),
            _ => assert_eq!(result, Err(expected)),
        }
        assert_eq!(directory, before, "a refused grant changes nothing");
    }
    directory
        .consent_as_target(&bob(), &alice, None, &grant(vec![own.clone()]), T0_MS)
        .unwrap();
    let record = directory
        .claim_record(KeyPackageRef::of_key_package(&granted).as_bytes())
        .expect("recorded for Welcome routing");
    assert_eq!(record.client, bob_phone());
    assert_eq!(record.requester, alice);
    // Handing the same KeyPackage out twice is refused.
    assert_eq!(
        directory.consent_as_target(&bob(), &alice, None, &grant(vec![own]), T0_MS),
        Err(DirectoryError::AlreadyClaimed { index: 0 })
    );
}

/// MIMI.md §5.6: the requester's provider keeps its side: its request, then the answer.
#[test]
fn mimi_5_6_the_requester_side_follows_request_grant_revoke_and_cancel() {
    let cathy = user("mimi://c.example/u/cathy");
    let mut directory = with_bob(0);
    let step = |directory: &mut Directory, room: Option<&RoomId>, action: RequesterAction| {
        directory
            .consent_as_requester(&bob(), &cathy, room, action, T0_MS)
            .unwrap();
    };
    let outgoing = |directory: &Directory| -> Vec<(Option<RoomId>, ConsentState, usize)> {
        directory
            .consents(&bob())
            .outgoing
            .into_iter()
            .map(|record| (record.room, record.state, record.key_packages.len()))
            .collect()
    };
    step(&mut directory, None, RequesterAction::Requested);
    step(
        &mut directory,
        Some(&room("club")),
        RequesterAction::Requested,
    );
    step(
        &mut directory,
        Some(&room("club")),
        RequesterAction::Cancelled,
    );
    assert_eq!(
        outgoing(&directory),
        vec![(None, ConsentState::Requested, 0)]
    );
    step(
        &mut directory,
        None,
        RequesterAction::Granted {
            key_packages: vec![vec![1, 2, 3]],
        },
    );
    // Asking again, or cancelling, does not undo a grant.
    step(&mut directory, None, RequesterAction::Requested);
    step(&mut directory, None, RequesterAction::Cancelled);
    assert_eq!(outgoing(&directory), vec![(None, ConsentState::Granted, 1)]);
    step(&mut directory, None, RequesterAction::Revoked);
    assert_eq!(outgoing(&directory), vec![(None, ConsentState::Revoked, 0)]);
    let before = directory.clone();
    assert_eq!(
        directory.consent_as_requester(
            &bob(),
            &cathy,
            None,
            RequesterAction::Granted {
                key_packages: vec![vec![0; MAX_KEY_PACKAGE_LEN + 1]]
            },
            T0_MS
        ),
        Err(DirectoryError::InvalidKeyPackage {
            index: 0,
            reason: KeyPackageError::TooLarge {
                len: MAX_KEY_PACKAGE_LEN + 1
            }
        })
    );
    assert_eq!(
        directory.consent_as_requester(
            &user("mimi://a.example/u/nobody"),
            &cathy,
            None,
            RequesterAction::Requested,
            T0_MS
        ),
        Err(DirectoryError::UnknownUser)
    );
    assert_eq!(directory, before);
}

/// MIMI.md §5.7: discoverable by everyone, only by users it granted (in any scope), or by
/// nobody; an unknown user by nobody.
#[test]
fn mimi_5_7_discoverability_follows_the_preference_and_grants() {
    let granted = user("mimi://c.example/u/granted");
    let room_granted = user("mimi://c.example/u/roomgranted");
    let revoked = user("mimi://c.example/u/revoked");
    let other = user("mimi://a.example/u/other");
    let mut directory = with_bob(0);
    decide(&mut directory, &granted, None, true);
    decide(&mut directory, &room_granted, Some(&room("club")), true);
    decide(&mut directory, &revoked, None, false);
    for (discoverability, expected) in [
        (Discoverability::Everyone, [true, true, true, true, true]),
        (
            Discoverability::Consented,
            [true, true, false, false, false],
        ),
        (Discoverability::Nobody, [false; 5]),
    ] {
        directory
            .set_preferences(&bob(), prefs(discoverability, Reachability::Anyone))
            .unwrap();
        let seen = [
            Some(&granted),
            Some(&room_granted),
            Some(&revoked),
            Some(&other),
            None,
        ]
        .map(|requester| directory.discoverable_by(&bob(), requester));
        assert_eq!(seen, expected, "{discoverability:?}");
    }
    assert!(!directory.discoverable_by(&user("mimi://a.example/u/nobody"), None));
    assert_eq!(
        Directory::default().set_preferences(&bob(), Preferences::default()),
        Err(DirectoryError::UnknownUser)
    );
    assert_eq!(
        directory.preferences(&user("mimi://a.example/u/nobody")),
        None
    );
}

/// Profiles, preferences and consent are part of the replicated directory: a snapshot holds
/// them and decodes to the same state, byte for byte (ARCHITECTURE.md, Durability).
#[test]
fn profiles_and_consent_survive_a_snapshot_round_trip() {
    let alice = user("mimi://c.example/u/alice");
    let mut directory = with_bob(1);
    directory
        .set_profile(
            &bob(),
            Profile::new(
                "Bob".into(),
                Some(nick("bob")),
                vec![Email::parse("Bob@Mail.Example").unwrap()],
                vec![Phone::parse("+15550000002").unwrap()],
            )
            .unwrap(),
        )
        .unwrap();
    directory
        .set_preferences(
            &bob(),
            prefs(Discoverability::Consented, Reachability::ConsentRequired),
        )
        .unwrap();
    decide(&mut directory, &alice, Some(&room("club")), true);
    directory
        .consent_as_target(&bob(), &alice, None, &TargetAction::Request, T0_MS)
        .unwrap();
    directory
        .consent_as_requester(
            &bob(),
            &alice,
            None,
            RequesterAction::Granted {
                key_packages: vec![kp(&bob_phone())],
            },
            T0_MS,
        )
        .unwrap();
    let bytes = postcard::to_stdvec(&directory).unwrap();
    let restored: Directory = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(restored, directory);
    assert_eq!(postcard::to_stdvec(&restored).unwrap(), bytes);
    assert_eq!(
        restored.find(&[SearchTerm::Email("Bob@mail.example".into())], "a.example"),
        QueryOutcome::Found(bob())
    );
    assert!(restored.discoverable_by(&bob(), Some(&alice)));
    assert_eq!(
        reach(&restored, &alice, "den"),
        Err(ConsentRefusal::NoConsentForThisRoom)
    );
}

/// An old `Command::ClaimKeyPackages` (no room) goes through consent too: only the target's
/// reachability and global decisions count, and a refusal claims nothing.
#[test]
fn a_claim_without_a_room_is_decided_by_global_consent() {
    let mut directory = with_bob(2);
    let carol = user("mimi://c.example/u/carol");
    decide(&mut directory, &carol, None, false);
    let before = directory.clone();
    assert_eq!(
        directory.claim_with_consent(&carol, &bob(), None, T0_MS),
        ClaimOutcome::Refused(ConsentRefusal::NoConsent)
    );
    assert_eq!(directory, before, "nothing claimed");
    decide(&mut directory, &carol, None, true);
    assert!(matches!(
        directory.claim_with_consent(&carol, &bob(), None, T0_MS),
        ClaimOutcome::Claimed(claims) if claims.len() == 1
    ));
}
