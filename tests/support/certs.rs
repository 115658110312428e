//! Certificates made per test with rcgen: [`Certs`], the set the TLS tests share (files in a
//! temp dir), and [`GatewayCa`], certificates in the shape Envoy Gateway's internal/crypto
//! makes them.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tempfile::TempDir;

use super::temp_dir;
use super::tls::TlsClient;

/// A CA: its certificate (PEM) and what it signs with.
pub struct Authority {
    /// The CA certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// A self-signed CA from `params` (made a CA here) and `key`.
    pub fn new(mut params: CertificateParams, key: KeyPair) -> Authority {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Authority {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// The certificate `params` describes for `key`, signed by this CA (PEM).
    pub fn sign(&self, params: CertificateParams, key: &KeyPair) -> String {
        params.signed_by(key, &self.issuer).unwrap().pem()
    }
}

/// Certificate parameters with the subject CN `common_name` and the SANs `sans` (IP addresses
/// become IP SANs).
fn named(common_name: &str, sans: &[&str]) -> CertificateParams {
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
}

/// PEM files in a temp dir (P-256 keys, PKCS#8): `ca.pem`; `server.pem`/`server-key.pem` for
/// 127.0.0.1 and localhost; `elsewhere-server.pem`/`-key.pem` for `redis.elsewhere.test` only;
/// `client.pem`/`client-key.pem` (`client.floodgate.test`); an unrelated `wrong-ca.pem` and its
/// `wrong-client.pem`/`wrong-client-key.pem`.
pub struct Certs {
    dir: TempDir,
}

impl Certs {
    /// Makes and writes the whole set.
    pub fn generate() -> Certs {
        let certs = Certs {
            dir: temp_dir("certs"),
        };
        let ca = certs.authority("ca");
        let wrong_ca = certs.authority("wrong-ca");
        let server = ExtendedKeyUsagePurpose::ServerAuth;
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        certs.leaf("server", &ca, &["127.0.0.1", "localhost"], server.clone());
        certs.leaf("elsewhere-server", &ca, &["redis.elsewhere.test"], server);
        certs.leaf("client", &ca, &["client.floodgate.test"], client.clone());
        certs.leaf(
            "wrong-client",
            &wrong_ca,
            &["client.floodgate.test"],
            client,
        );
        certs
    }

    /// The file `name` of the set.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The contents of the file `name`.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn authority(&self, name: &str) -> Authority {
        let mut params = named(&format!("Floodgate test {name}"), &[]);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = Authority::new(params, KeyPair::generate().unwrap());
        std::fs::write(self.path(&format!("{name}.pem")), &ca.pem).unwrap();
        ca
    }

    fn leaf(&self, name: &str, ca: &Authority, sans: &[&str], usage: ExtendedKeyUsagePurpose) {
        let key = KeyPair::generate().unwrap();
        let mut params = named(sans[0], sans);
        params.extended_key_usages = vec![usage];
        std::fs::write(self.path(&format!("{name}.pem")), ca.sign(params, &key)).unwrap();
        std::fs::write(self.path(&format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

/// Envoy Gateway's controller namespace, in its certificates' SANs.
pub const NAMESPACE: &str = "envoy-gateway-system";

/// An RSA 2048 key as Envoy Gateway makes them, for signing, and its PKCS#1 PEM (`RSA PRIVATE
/// KEY`), which is what the Secret holds. openssl makes it: rcgen on ring cannot generate RSA.
fn rsa_key() -> (KeyPair, String) {
    let pkcs8 = openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        "",
    );
    let pkcs1 = openssl(&["rsa", "-traditional"], &pkcs8);
    assert!(
        pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{pkcs1}"
    );
    let key = KeyPair::from_pkcs8_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
    (key, pkcs1)
}

/// What `openssl args` prints given `input`.
fn openssl(args: &[&str], input: &str) -> String {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    // A key is far smaller than a pipe's buffer: writing all before reading cannot block.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A serial number from the clock's nanoseconds, as Envoy Gateway's `newSerial`.
fn serial() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::from(nanos.subsec_nanos())
}

/// A certificate and its PKCS#1 key, PEM.
pub struct Secret {
    /// The certificate, PEM.
    pub cert: String,
    /// Its key, PKCS#1 PEM.
    pub key: String,
}

impl Secret {
    /// The certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert.as_bytes()).unwrap()
    }
}

/// Envoy Gateway's self-made CA (CN `envoy-gateway` with a serialNumber attribute, RSA 2048),
/// and the certificates it signs.
pub struct GatewayCa {
    ca: Authority,
    /// The CA certificate, PEM (what a Secret's `ca.crt` holds).
    pub pem: String,
}

impl GatewayCa {
    /// A new CA with a key of its own.
    pub fn new() -> GatewayCa {
        let (key, _) = rsa_key();
        let serial = serial();
        let mut params = named("envoy-gateway", &[]);
        let serial_attribute = DnType::CustomDnType(vec![2, 5, 4, 5]);
        params
            .distinguished_name
            .push(serial_attribute, serial.to_string());
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        let ca = Authority::new(params, key);
        let pem = ca.pem.clone();
        GatewayCa { ca, pem }
    }

    /// A leaf as `newCert` makes it: the given CN and DNS SANs, Envoy Gateway's key usages and
    /// no extended key usage. (Validity and key identifiers are rcgen's.)
    pub fn leaf(&self, common_name: &str, sans: &[&str]) -> Secret {
        let (key, pem) = rsa_key();
        let mut params = named(common_name, sans);
        params.serial_number = Some(SerialNumber::from(serial()));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::DataEncipherment,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::ContentCommitment,
        ];
        let cert = self.ca.sign(params, &key);
        Secret { cert, key: pem }
    }

    /// The certificate Envoy Gateway makes for the rate limit service and for Envoy (CN `*`).
    pub fn gateway_leaf(&self) -> Secret {
        self.leaf("*", &[&format!("*.{NAMESPACE}")])
    }

    /// A TLS client trusting this CA, presenting `identity` if any.
    pub fn client(&self, identity: Option<&Secret>) -> TlsClient {
        TlsClient::new(
            self.pem.as_bytes(),
            identity.map(|s| (s.cert.as_bytes(), s.key.as_bytes())),
        )
    }
}
