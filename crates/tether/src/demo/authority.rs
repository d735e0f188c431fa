//! The throw-away certificate authority of `tether demo --tls`.
//!
//! Browsers only open `wss://` from an `https://` page, so showing the demo over TLS needs a
//! certificate the browser trusts. A self-signed leaf would need `--ignore-certificate-errors`
//! or a click through a warning, which is not what a deployment looks like; instead the demo
//! makes a CA, signs a `localhost` certificate with it, and prints how to trust the CA.
//!
//! Trusting a CA is a big grant, so this one is made as harmless as it can be:
//! - its key lives only in memory and is gone when the certificates are written: nothing can
//!   be signed with it afterwards, so a CA left in a trust store cannot vouch for anything new;
//! - it is name-constrained to `localhost` and the loopback (and listening) addresses, so even
//!   its one leaf could not pass for another site;
//! - it expires after [`VALIDITY`].

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};

/// How long the demo's CA and certificate stay valid: long enough to keep a browser's trust
/// across a week of trying things, short enough that a forgotten CA dies by itself.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The start of the CA's name; the rest is the moment it was made. Each run's CA has a name
/// of its own: two CAs with one name (trusted in two runs, or a client given the wrong
/// `ca.pem`) make verifiers try the wrong one and report a bad signature instead of an
/// unknown issuer, and NSS keeps one nickname per subject.
const CA_NAME_PREFIX: &str = "tether-demo-";

/// The files the demo's TLS listener serves, and the CA a client must trust.
#[derive(Debug, Clone)]
pub struct DemoCerts {
    /// The CA's common name, also the nickname suggested for `certutil -n`.
    pub ca_name: String,
    /// The directory holding them.
    pub dir: PathBuf,
    /// The CA certificate (PEM) to trust.
    pub ca: PathBuf,
    /// The server certificate (PEM), for `localhost` and the loopback addresses.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8), readable by the owner only.
    pub key: PathBuf,
}

/// Makes a fresh CA and a server certificate for `localhost`, `127.0.0.1`, `::1` and, when
/// the demo listens on one particular other address, that address too; writes `ca.pem`,
/// `localhost.pem` and `localhost.key` into `dir` (created if missing, files replaced).
pub fn issue(dir: &Path, listen_ip: IpAddr) -> anyhow::Result<DemoCerts> {
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if !listen_ip.is_unspecified() && !ips.contains(&listen_ip) {
        ips.push(listen_ip);
    }
    // rcgen takes `time`'s dates; counting from its epoch spares a dependency on `time`.
    let utc = |at: SystemTime| {
        rcgen::date_time_ymd(1970, 1, 1) + at.duration_since(UNIX_EPOCH).unwrap_or_default()
    };
    let now = SystemTime::now();
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ca_name = format!(
        "{CA_NAME_PREFIX}{}-{:03}",
        since_epoch.as_secs(),
        since_epoch.subsec_millis()
    );
    // An hour of slack for a clock that is a little behind the machine's.
    let not_before = utc(now - Duration::from_secs(3600));
    let not_after = utc(now + VALIDITY);

    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, ca_name.as_str());
    ca.distinguished_name
        .push(DnType::OrganizationName, "tether demo (throw-away)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.name_constraints = Some(NameConstraints {
        permitted_subtrees: std::iter::once(GeneralSubtree::DnsName("localhost".into()))
            .chain(ips.iter().map(|ip| {
                let bits = if ip.is_ipv4() { 32 } else { 128 };
                GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(*ip, bits))
            }))
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.subject_alt_names = std::iter::once(SanType::DnsName(
        "localhost".try_into().context("localhost as a DNS name")?,
    ))
    .chain(ips.iter().copied().map(SanType::IpAddress))
    .collect();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let key = KeyPair::generate().context("generating the server key")?;
    let cert = leaf
        .signed_by(&key, &issuer)
        .context("signing the server certificate")?;

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
    let certs = DemoCerts {
        ca_name,
        ca: dir.join("ca.pem"),
        cert: dir.join("localhost.pem"),
        key: dir.join("localhost.key"),
        dir,
    };
    write(&certs.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write(&certs.cert, cert.pem().as_bytes(), 0o644)?;
    write(&certs.key, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(certs)
}

/// Replaces `path` with `contents`, created with `mode` (a key must never be readable by
/// others, not even for the moment between writing and a `chmod`).
fn write(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}
