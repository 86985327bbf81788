//! Generating the PEM files an operator deploys: a private CA, provider certificates (the
//! provider's domain as DNS SAN, for mutual TLS between providers, MIMI protocol-06 §4.1) and
//! node certificates (IP/DNS SANs, for node-to-node QUIC), plus the self-contained dev set that
//! `mimid dev` creates once under `data_dir/certs` and reuses.
//!
//! Invariants:
//! - Every issued certificate is verified against its CA before it is returned (a pair
//!   assertion: what we sign is what a peer will accept), so a foreign or damaged CA directory
//!   fails at issue time with a clear error, not at the first handshake.
//! - Private key files are created with mode 0600 and never overwritten: replacing a CA key by
//!   accident would orphan every certificate it issued.
//! - Time is an input (`now`); keys come from ring's system RNG, which is fine in this shell
//!   code (no core depends on it).
//!
//! Leaf certificates carry both the serverAuth and clientAuth extended key usages because the
//! same identity serves a provider's listener and authenticates its outgoing calls.
//!
//! rcgen 0.13 cannot parse an existing certificate without the x509-parser feature, so a loaded
//! CA is re-created from its key: the CA's subject is derived from its public key (see
//! [`ca_params`]), which makes issuer name and authority key identifier of new leaves match the
//! certificate on disk.

use std::fmt;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};

use crate::config::{check_domain, TlsFiles};
use crate::tls::{read_cert_chain, TlsError};

/// File name of a CA certificate in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of a CA private key in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key.pem";
/// File stem of provider certificates (`provider.pem`, `provider.key.pem`).
pub const PROVIDER_STEM: &str = "provider";
/// File stem of node certificates (`node.pem`, `node.key.pem`).
pub const NODE_STEM: &str = "node";

/// Default lifetime of a CA certificate: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Default lifetime of a leaf certificate: 397 days, the ceiling browsers enforce for public
/// certificates, so rotation habits carry over.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(397 * 24 * 3600);

/// Accepted clock skew between the issuer and verifiers: certificates become valid this long
/// before `now`.
const BACKDATE: Duration = Duration::from_secs(300);

/// Why a certificate could not be generated, stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed to generate a key or encode a certificate.
    #[error("cannot generate key or certificate")]
    Generate(#[from] rcgen::Error),
    /// A file or directory operation failed.
    #[error("cannot write or read {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The target file exists; we never overwrite key material.
    #[error("{} already exists; refusing to overwrite it", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file cannot be read or holds nothing usable.
    #[error(transparent)]
    Pem(#[from] TlsError),
    /// The CA key file cannot be parsed.
    #[error("{} is not a PEM private key rcgen can sign with", path.display())]
    CaKey {
        /// The file.
        path: PathBuf,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// An issued certificate does not verify against the CA certificate on disk.
    #[error(
        "a certificate issued with the CA in {} does not verify against its {CA_CERT_FILE} \
         ({reason}); use a CA directory made by `mimid cert create-ca`",
        dir.display()
    )]
    ForeignCa {
        /// The CA directory.
        dir: PathBuf,
        /// webpki's reason.
        reason: String,
    },
    /// A subject name is neither an IP address nor a DNS name.
    #[error("{0}")]
    BadName(String),
    /// No subject name was given.
    #[error("a certificate needs at least one subject name")]
    NoNames,
    /// The validity period does not fit the calendar.
    #[error("validity of {0:?} is not usable (it must be positive and end before year 9999)")]
    BadValidity(Duration),
}

/// A subjectAltName entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectName {
    /// A dNSName, e.g. the provider domain.
    Dns(String),
    /// An iPAddress, e.g. a node's address.
    Ip(IpAddr),
}

impl FromStr for SubjectName {
    type Err = CertError;

    /// IP addresses first, then DNS names; anything else is rejected so a typo never ends up
    /// in a certificate.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(SubjectName::Ip(ip));
        }
        check_domain(text).map_err(CertError::BadName)?;
        Ok(SubjectName::Dns(text.to_owned()))
    }
}

impl fmt::Display for SubjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectName::Dns(name) => f.write_str(name),
            SubjectName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A CA that can issue leaf certificates.
pub struct CertAuthority {
    key: KeyPair,
    /// The certificate rcgen signs with; equal in subject and key to the one on disk.
    issuer: rcgen::Certificate,
    /// The certificate as stored (and as peers trust it).
    cert_der: CertificateDer<'static>,
    /// Where the CA was loaded from, for error messages; `None` for a fresh CA.
    dir: Option<PathBuf>,
}

/// The files of a stored CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    /// `ca.pem`.
    pub cert: PathBuf,
    /// `ca.key.pem` (mode 0600).
    pub key: PathBuf,
}

/// A freshly issued leaf certificate and its key.
pub struct IssuedCert {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

/// The files of a stored leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFiles {
    /// `<stem>.pem`.
    pub cert: PathBuf,
    /// `<stem>.key.pem` (mode 0600).
    pub key: PathBuf,
}

impl CertAuthority {
    /// Generates a new CA valid from shortly before `now` for `validity`.
    pub fn generate(now: SystemTime, validity: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(&key);
        set_validity(&mut params, now, validity)?;
        let issuer = params.self_signed(&key)?;
        let cert_der = issuer.der().clone();
        Ok(CertAuthority {
            key,
            issuer,
            cert_der,
            dir: None,
        })
    }

    /// Loads `dir/ca.pem` and `dir/ca.key.pem`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_der = read_cert_chain(&dir.join(CA_CERT_FILE))?
            .into_iter()
            .next()
            .expect("read_cert_chain returns at least one certificate");
        let key_path = dir.join(CA_KEY_FILE);
        let key_pem = std::fs::read_to_string(&key_path).map_err(|source| CertError::Io {
            path: key_path.clone(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| CertError::CaKey {
            path: key_path,
            source,
        })?;
        // Only subject, key identifier method and key usages of the issuer reach the issued
        // certificates; validity of this in-memory copy is irrelevant.
        let issuer = ca_params(&key).self_signed(&key)?;
        Ok(CertAuthority {
            key,
            issuer,
            cert_der,
            dir: Some(dir.to_owned()),
        })
    }

    /// Writes `dir/ca.pem` and `dir/ca.key.pem`, creating `dir` (mode 0700) if needed. Fails if
    /// either file exists.
    pub fn save(&self, dir: &Path) -> Result<CaFiles, CertError> {
        create_private_dir(dir)?;
        let files = CaFiles {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        };
        refuse_existing(&[&files.cert, &files.key])?;
        write_new(&files.key, self.key.serialize_pem().as_bytes(), KEY_MODE)?;
        write_new(&files.cert, pem_cert(&self.cert_der).as_bytes(), CERT_MODE)?;
        Ok(files)
    }

    /// The CA certificate as peers trust it.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a leaf for `names` (the first one is also the subject CN), valid for serverAuth
    /// and clientAuth from shortly before `now` for `validity`, and checks it verifies against
    /// this CA at `now`.
    pub fn issue(
        &self,
        names: &[SubjectName],
        now: SystemTime,
        validity: Duration,
    ) -> Result<IssuedCert, CertError> {
        let first = names.first().ok_or(CertError::NoNames)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, first.to_string());
        params.subject_alt_names = names
            .iter()
            .map(|name| match name {
                SubjectName::Dns(dns) => Ok(SanType::DnsName(dns.clone().try_into()?)),
                SubjectName::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, now, validity)?;

        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        let issued = IssuedCert {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        verify_leaf(&self.cert_der, &issued.cert_der, now).map_err(|reason| {
            CertError::ForeignCa {
                dir: self.dir.clone().unwrap_or_default(),
                reason,
            }
        })?;
        Ok(issued)
    }
}

impl IssuedCert {
    /// The certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Writes `dir/<stem>.pem` and `dir/<stem>.key.pem` (mode 0600), creating `dir` (mode 0700)
    /// if needed. Fails if either file exists.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<LeafFiles, CertError> {
        create_private_dir(dir)?;
        let files = LeafFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key.pem")),
        };
        refuse_existing(&[&files.cert, &files.key])?;
        write_new(&files.key, self.key_pem.as_bytes(), KEY_MODE)?;
        write_new(&files.cert, self.cert_pem.as_bytes(), CERT_MODE)?;
        Ok(files)
    }
}

/// The names `mimid dev` puts in its provider certificate, so local clients can reach it by
/// name or by either loopback address.
pub fn dev_names() -> Vec<SubjectName> {
    vec![
        SubjectName::Dns("localhost".into()),
        SubjectName::Ip(IpAddr::from([127, 0, 0, 1])),
        SubjectName::Ip(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ]
}

/// Makes sure `dir` holds a dev CA and a provider certificate for [`dev_names`] that verifies at
/// `now`, and returns the paths for [`crate::config::TlsSettings`].
///
/// The first call creates everything. Later calls reuse the files, so clients that trust the
/// dev CA keep working across restarts. A provider certificate that no longer verifies (expired,
/// or issued by a replaced CA) is re-issued. The CA itself is kept as long as it loads: webpki,
/// and so every rustls peer, does not check a trust anchor's validity period, and the dev CA is
/// valid for ten years anyway. A damaged CA is an error, not silently replaced: the operator
/// decides whether to delete it.
pub fn ensure_dev_certs(dir: &Path, now: SystemTime) -> Result<TlsFiles, CertError> {
    let files = TlsFiles {
        cert: dir.join(format!("{PROVIDER_STEM}.pem")),
        key: dir.join(format!("{PROVIDER_STEM}.key.pem")),
        client_ca: dir.join(CA_CERT_FILE),
    };
    let ca = if files.client_ca.exists() || dir.join(CA_KEY_FILE).exists() {
        CertAuthority::load(dir)?
    } else {
        let ca = CertAuthority::generate(now, CA_VALIDITY)?;
        ca.save(dir)?;
        tracing::info!(dir = %dir.display(), "generated dev CA");
        ca
    };

    let leaf_ok = files.key.exists()
        && read_cert_chain(&files.cert)
            .ok()
            .and_then(|chain| chain.into_iter().next())
            .is_some_and(|leaf| verify_leaf(ca.cert_der(), &leaf, now).is_ok());
    if !leaf_ok {
        remove_files(&[&files.cert, &files.key])?;
        ca.issue(&dev_names(), now, LEAF_VALIDITY)?
            .save(dir, PROVIDER_STEM)?;
        tracing::info!(dir = %dir.display(), "issued dev provider certificate");
    }
    Ok(files)
}

/// Verifies that `leaf` chains to `ca` at `now` for both serverAuth and clientAuth, the way a
/// rustls peer will.
fn verify_leaf(
    ca: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    now: SystemTime,
) -> Result<(), String> {
    let anchor = webpki::anchor_from_trusted_cert(ca).map_err(|err| err.to_string())?;
    let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|err| err.to_string())?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| "clock before 1970".to_owned())?;
    let algorithms = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        parsed
            .verify_for_usage(
                algorithms,
                std::slice::from_ref(&anchor),
                &[],
                UnixTime::since_unix_epoch(since_epoch),
                usage,
                None,
                None,
            )
            .map_err(|err| err.to_string())?;
    }
    Ok(())
}

/// CA parameters derived from the key alone, so [`CertAuthority::load`] can re-create them:
/// the subject CN embeds a fingerprint of the public key, which also keeps CAs of different
/// deployments distinguishable by name.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let fingerprint = Sha256::digest(key.public_key_der());
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "mimid");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("mimid CA {}", hex::encode(&fingerprint[..8])),
    );
    // Path length 0: this CA signs leaves only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    validity: Duration,
) -> Result<(), CertError> {
    let bad = || CertError::BadValidity(validity);
    if validity.is_zero() {
        return Err(bad());
    }
    let not_before = now.checked_sub(BACKDATE).ok_or_else(bad)?;
    let not_after = now.checked_add(validity).ok_or_else(bad)?;
    params.not_before = time::OffsetDateTime::from(not_before);
    let not_after = time::OffsetDateTime::from(not_after);
    if not_after.year() > 9998 {
        return Err(bad());
    }
    params.not_after = not_after;
    Ok(())
}

fn pem_cert(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CertError::Io {
            path: dir.to_owned(),
            source,
        })
}

fn refuse_existing(paths: &[&PathBuf]) -> Result<(), CertError> {
    match paths.iter().find(|path| path.exists()) {
        Some(path) => Err(CertError::Exists {
            path: (*path).clone(),
        }),
        None => Ok(()),
    }
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let io_err = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err)?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

fn remove_files(paths: &[&PathBuf]) -> Result<(), CertError> {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CertError::Io {
                    path: (*path).clone(),
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use std::os::unix::fs::PermissionsExt;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn first_cert(path: &Path) -> CertificateDer<'static> {
        read_cert_chain(path).unwrap().remove(0)
    }

    #[test]
    fn ca_round_trips_through_its_directory_and_issues_verifiable_provider_certs() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca_files = CertAuthority::generate(now, CA_VALIDITY)
            .unwrap()
            .save(dir.path())
            .unwrap();
        assert_eq!(mode(&ca_files.key), 0o600);
        assert_eq!(mode(&ca_files.cert), 0o644);

        let ca = CertAuthority::load(dir.path()).expect("load CA");
        let out = dir.path().join("a.example");
        let leaf = ca
            .issue(&["a.example".parse().unwrap()], now, LEAF_VALIDITY)
            .expect("issue");
        let files = leaf.save(&out, PROVIDER_STEM).expect("save");
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&out), 0o700);

        let on_disk = first_cert(&files.cert);
        assert_eq!(crate::tls::cert_dns_names(&on_disk), vec!["a.example"]);
        verify_leaf(&first_cert(&ca_files.cert), &on_disk, now).expect("chains to the CA");
        crate::tls::read_private_key(&files.key).expect("key parses");
    }

    #[test]
    fn node_certs_carry_ip_and_dns_sans() {
        let now = SystemTime::now();
        let ca = CertAuthority::generate(now, DAY).unwrap();
        let names: Vec<SubjectName> = ["10.0.0.7", "::1", "node7.a.example"]
            .iter()
            .map(|name| name.parse().unwrap())
            .collect();
        let leaf = ca.issue(&names, now, DAY).unwrap();
        let parsed = webpki::EndEntityCert::try_from(leaf.cert_der()).unwrap();
        for name in ["10.0.0.7", "::1", "node7.a.example"] {
            let server_name = ServerName::try_from(name).unwrap();
            parsed
                .verify_is_valid_for_subject_name(&server_name)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
        }
        let other = ServerName::try_from("10.0.0.8").unwrap();
        assert!(parsed.verify_is_valid_for_subject_name(&other).is_err());
    }

    #[test]
    fn existing_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = CertAuthority::generate(now, DAY).unwrap();
        let files = ca.save(dir.path()).unwrap();
        let before = std::fs::read(&files.key).unwrap();
        let err = CertAuthority::generate(now, DAY)
            .unwrap()
            .save(dir.path())
            .unwrap_err();
        assert!(matches!(err, CertError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read(&files.key).unwrap(), before);

        let leaf = ca.issue(&dev_names(), now, DAY).unwrap();
        leaf.save(dir.path(), NODE_STEM).unwrap();
        assert!(matches!(
            leaf.save(dir.path(), NODE_STEM),
            Err(CertError::Exists { .. })
        ));
    }

    #[test]
    fn a_ca_directory_with_a_foreign_certificate_is_rejected_at_issue() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        CertAuthority::generate(now, DAY)
            .unwrap()
            .save(dir.path())
            .unwrap();
        // Swap in another CA's certificate next to the first CA's key.
        let other = CertAuthority::generate(now, DAY).unwrap();
        std::fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        std::fs::write(dir.path().join(CA_CERT_FILE), pem_cert(other.cert_der())).unwrap();

        let ca = CertAuthority::load(dir.path()).unwrap();
        let err = ca.issue(&dev_names(), now, DAY).err().expect("must fail");
        assert!(matches!(err, CertError::ForeignCa { .. }), "{err}");
        assert!(err.to_string().contains("mimid cert create-ca"), "{err}");
    }

    #[test]
    fn a_missing_or_damaged_ca_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            CertAuthority::load(dir.path()),
            Err(CertError::Pem(TlsError::Read { .. }))
        ));
        let ca = CertAuthority::generate(SystemTime::now(), DAY).unwrap();
        let files = ca.save(dir.path()).unwrap();
        std::fs::remove_file(&files.key).unwrap();
        std::fs::write(
            &files.key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            CertAuthority::load(dir.path()),
            Err(CertError::CaKey { .. })
        ));
    }

    #[test]
    fn subject_names_parse_strictly() {
        assert_eq!(
            "127.0.0.1".parse::<SubjectName>().unwrap(),
            SubjectName::Ip(IpAddr::from([127, 0, 0, 1]))
        );
        assert_eq!(
            "a.example".parse::<SubjectName>().unwrap(),
            SubjectName::Dns("a.example".into())
        );
        for bad in ["", "a b", "a.example.", "bad_name!"] {
            assert!(
                matches!(bad.parse::<SubjectName>(), Err(CertError::BadName(_))),
                "{bad:?}"
            );
        }
        let ca = CertAuthority::generate(SystemTime::now(), DAY).unwrap();
        assert!(matches!(
            ca.issue(&[], SystemTime::now(), DAY),
            Err(CertError::NoNames)
        ));
        assert!(matches!(
            ca.issue(&dev_names(), SystemTime::now(), Duration::ZERO),
            Err(CertError::BadValidity(_))
        ));
    }

    #[test]
    fn dev_certs_are_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let now = SystemTime::now();
        let files = ensure_dev_certs(&certs, now).expect("first start");
        let leaf = first_cert(&files.cert);
        assert_eq!(crate::tls::cert_dns_names(&leaf), vec!["localhost"]);
        let parsed = webpki::EndEntityCert::try_from(&leaf).unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            parsed
                .verify_is_valid_for_subject_name(&ServerName::try_from(name).unwrap())
                .unwrap_or_else(|err| panic!("{name}: {err}"));
        }

        let cert_before = std::fs::read(&files.cert).unwrap();
        let ca_before = std::fs::read(&files.client_ca).unwrap();
        let again = ensure_dev_certs(&certs, now + DAY).expect("restart");
        assert_eq!(again, files);
        assert_eq!(std::fs::read(&files.cert).unwrap(), cert_before);
        assert_eq!(std::fs::read(&files.client_ca).unwrap(), ca_before);
    }

    #[test]
    fn an_expired_dev_leaf_is_reissued_under_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let files = ensure_dev_certs(dir.path(), now).unwrap();
        let cert_before = std::fs::read(&files.cert).unwrap();
        let ca_before = std::fs::read(&files.client_ca).unwrap();

        let later = now + LEAF_VALIDITY + DAY;
        ensure_dev_certs(dir.path(), later).unwrap();
        assert_ne!(std::fs::read(&files.cert).unwrap(), cert_before);
        assert_eq!(std::fs::read(&files.client_ca).unwrap(), ca_before);
        verify_leaf(
            &first_cert(&files.client_ca),
            &first_cert(&files.cert),
            later,
        )
        .expect("re-issued leaf is valid later");
    }
}
