//! Certificates in the shape Envoy Gateway's internal/crypto makes them: a self-made CA (CN
//! `envoy-gateway` with a serialNumber attribute), leaves with CN `*`, DNS SANs only, its key
//! usages and no extended key usage, RSA 2048 keys whose PEM is PKCS#1 (`RSA PRIVATE KEY`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::tls::TlsClient;

/// Envoy Gateway's controller namespace, in its certificates' SANs.
pub const NAMESPACE: &str = "envoy-gateway-system";

/// An RSA 2048 key as Envoy Gateway makes them: for signing, and its PKCS#1 PEM
/// (`RSA PRIVATE KEY`), which is what the Secret holds.
pub fn rsa_key(dir: &Path, name: &str) -> (KeyPair, String) {
    let pkcs8 = dir.join(format!("{name}.p8"));
    let pkcs1 = dir.join(format!("{name}.p1"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pkcs8.to_str().unwrap(),
        ],
        vec![
            "rsa",
            "-in",
            pkcs8.to_str().unwrap(),
            "-traditional",
            "-out",
            pkcs1.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }
    let key = KeyPair::from_pkcs8_pem_and_sign_algo(
        &std::fs::read_to_string(pkcs8).unwrap(),
        &rcgen::PKCS_RSA_SHA256,
    )
    .unwrap();
    let pem = std::fs::read_to_string(pkcs1).unwrap();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{pem}");
    (key, pem)
}

/// A serial number from the clock's nanoseconds, as Envoy Gateway's `newSerial`.
fn serial() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::from(nanos.subsec_nanos())
}

/// Envoy Gateway's self-made CA (CN `envoy-gateway`), and the certificates it signs.
pub struct GatewayCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

/// A certificate and its PKCS#1 key, PEM.
pub struct Secret {
    pub cert: String,
    pub key: String,
}

impl Secret {
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert.as_bytes()).unwrap()
    }
}

impl GatewayCa {
    pub fn new(dir: &Path) -> GatewayCa {
        let (key, _) = rsa_key(dir, "ca");
        let serial = serial();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "envoy-gateway");
        name.push(DnType::CustomDnType(vec![2, 5, 4, 5]), serial.to_string());
        params.distinguished_name = name;
        params.serial_number = Some(SerialNumber::from(serial));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        GatewayCa {
            pem,
            issuer: Issuer::new(params, key),
            dir: dir.to_owned(),
        }
    }

    /// A leaf as `newCert` makes it: CN `*`, the given DNS SANs, Envoy Gateway's key usages
    /// and no extended key usage. (Validity and key identifiers are rcgen's.)
    pub fn leaf(&self, name: &str, common_name: &str, sans: &[&str]) -> Secret {
        let (key, pem) = rsa_key(&self.dir, name);
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, common_name);
        params.distinguished_name = subject;
        params.serial_number = Some(SerialNumber::from(serial()));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::DataEncipherment,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::ContentCommitment,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap().pem();
        Secret { cert, key: pem }
    }

    /// The certificate Envoy Gateway makes for the rate limit service and for Envoy.
    pub fn gateway_leaf(&self, name: &str) -> Secret {
        self.leaf(name, "*", &[&format!("*.{NAMESPACE}")])
    }

    /// A TLS client trusting this CA, presenting `identity` if any.
    pub fn client(&self, identity: Option<&Secret>) -> TlsClient {
        TlsClient::new(
            self.pem.as_bytes(),
            identity.map(|s| (s.cert.as_bytes(), s.key.as_bytes())),
        )
    }
}
