//! TLS for the servers (gRPC, and HTTP with the admin API), done by Floodgate itself: tonic
//! and axum are handed connections whose handshake has finished ([`incoming`], [`listener`]).
//!
//! The certificate chain, its key and the client CA are PEM files. They are read at start-up
//! (an unusable file stops start-up, naming the file) and read again every poll interval; when
//! their contents changed and still make a valid configuration, connections accepted from then
//! on get it, and a file that cannot be used is logged, naming it, while the last good
//! configuration keeps serving. The files are read through symlinks, so a Kubernetes Secret
//! volume's `..data` swap is seen like an edit.
//!
//! Client certificates are asked for, and required, only when a client CA is set. With a client
//! SAN as well, the certificate must also carry that name, by envoyproxy/ratelimit's rule
//! ([`san`]).

mod accept;
pub mod san;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

pub use accept::{TlsListener, incoming, listener};

use san::SubjectAltNames;

/// The gRPC server's TLS settings (the name older callers know).
pub type GrpcTls = ListenerTls;

/// What a TLS listener serves: it decides the ALPN protocols offered and how logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// HTTP (/json, /healthcheck, /metrics, /admin): HTTP/2 or HTTP/1.1.
    Http,
}

impl Protocol {
    /// The name logs give the listener.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "gRPC",
            Protocol::Http => "HTTP",
        }
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Grpc => vec![b"h2".to_vec()],
            Protocol::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// TLS for a server (gRPC or HTTP): its files, and how they are watched and used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#1, PKCS#8 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With a client CA: a DNS name or IP address the client certificate's SANs must match.
    pub client_san: Option<String>,
    /// How often the files are read again to look for changes (zero: never).
    pub poll_interval: Duration,
    /// How long a client may take over its handshake before its connection is closed.
    pub handshake_timeout: Duration,
}

impl ListenerTls {
    /// How often the files are read again, by default: a renewed certificate is served within
    /// seconds, and reading a few small files that often costs nothing.
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
    /// How long a handshake may take, by default.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// TLS with `cert` and `key`, no client certificates and the default intervals.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> ListenerTls {
        ListenerTls {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            client_san: None,
            poll_interval: ListenerTls::DEFAULT_POLL_INTERVAL,
            handshake_timeout: ListenerTls::DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Why the TLS files cannot be used; every case names the file.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file's contents cannot be used.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The contents of the files, read at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn read(tls: &ListenerTls) -> Result<Contents, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Contents {
            cert: read(&tls.cert)?,
            key: read(&tls.key)?,
            client_ca: tls.client_ca.as_deref().map(read).transpose()?,
        })
    }
}

/// The certificates of the PEM text `pem` (the file `path`), in order.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no certificate in it (PEM `CERTIFICATE`)"));
    }
    Ok(certs)
}

/// The first private key of the PEM text `pem` (the file `path`): PKCS#1 (`RSA PRIVATE KEY`),
/// PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`); other sections are skipped.
fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound)
            if pem
                .windows(b"ENCRYPTED PRIVATE KEY".len())
                .any(|w| w == b"ENCRYPTED PRIVATE KEY") =>
        {
            Err(invalid(path, "the key is encrypted; give it unencrypted"))
        }
        Err(pem::Error::NoItemsFound) => Err(invalid(
            path,
            "no private key in it (PEM `RSA PRIVATE KEY`, `PRIVATE KEY` or `EC PRIVATE KEY`)",
        )),
        Err(e) => Err(invalid(path, format!("not PEM: {e}"))),
    }
}

/// The verifier of client certificates signed by the CAs in `pem` (the file `path`), which
/// with `san` also checks the certificate for that name.
fn client_verifier(
    path: &Path,
    pem: &[u8],
    san: Option<&str>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, pem)? {
        roots
            .add(cert)
            .map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| invalid(path, format!("not a usable client CA: {e}")))?;
    Ok(match san {
        Some(san) => Arc::new(SanCheck {
            inner: verifier,
            san: san.to_owned(),
        }),
        None => verifier,
    })
}

/// The rustls configuration for `tls` from the files' `contents`: TLS 1.3 and 1.2, with the
/// ALPN protocols of `protocol`.
fn server_config(
    tls: &ListenerTls,
    contents: &Contents,
    protocol: Protocol,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&tls.cert, &contents.cert)?;
    let key = private_key(&tls.key, &contents.key)?;
    let verifier = match (&tls.client_ca, &contents.client_ca) {
        (Some(path), Some(pem)) => Some(client_verifier(
            path,
            pem,
            tls.client_san.as_deref(),
            provider.clone(),
        )?),
        _ => None,
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid(&tls.cert, format!("no TLS version to serve it with: {e}")))?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => invalid(
            &tls.key,
            format!(
                "the key does not belong to the certificate in {}",
                tls.cert.display()
            ),
        ),
        rustls::Error::InvalidCertificate(_) => {
            invalid(&tls.cert, format!("not a usable certificate: {e}"))
        }
        other => invalid(&tls.key, format!("not a usable private key: {other}")),
    })?;
    config.alpn_protocols = protocol.alpn();
    Ok(Arc::new(config))
}

/// Client certificates verified by `inner`, then checked for the SAN `san`.
#[derive(Debug)]
struct SanCheck {
    inner: Arc<dyn ClientCertVerifier>,
    san: String,
}

impl ClientCertVerifier for SanCheck {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match SubjectAltNames::of(end_entity) {
            Ok(names) if names.matches(&self.san) => Ok(verified),
            Ok(names) => {
                tracing::warn!(wanted = %self.san, presented = %names, "client certificate refused: none of its SANs is the client SAN");
                Err(CertificateError::ApplicationVerificationFailure.into())
            }
            Err(e) => {
                tracing::warn!(error = %e, "client certificate refused: its SANs cannot be read");
                Err(CertificateError::BadEncoding.into())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What [`ServerTls::refresh`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// The files are as they were (or as they were when last refused).
    Unchanged,
    /// New contents were loaded: connections accepted from now on get them.
    Reloaded,
    /// The files cannot be used (the message names the file); the last good ones serve on.
    Refused(String),
}

/// A server's TLS configuration: the one each new connection gets, replaced when the files
/// change.
#[derive(Debug)]
pub struct ServerTls {
    settings: ListenerTls,
    protocol: Protocol,
    current: ArcSwap<ServerConfig>,
    /// The contents last read (good or not) and the last problem reported.
    seen: Mutex<(Contents, Option<String>)>,
}

impl ServerTls {
    /// Reads the files into a configuration for a `protocol` listener; an error names the file
    /// that cannot be used.
    pub fn load(settings: ListenerTls, protocol: Protocol) -> Result<ServerTls, TlsError> {
        let contents = Contents::read(&settings)?;
        let config = server_config(&settings, &contents, protocol)?;
        Ok(ServerTls {
            settings,
            protocol,
            current: ArcSwap::new(config),
            seen: Mutex::new((contents, None)),
        })
    }

    /// The settings it was loaded with.
    pub fn settings(&self) -> &ListenerTls {
        &self.settings
    }

    /// What the listener serves.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The configuration for a connection accepted now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files again and, when they changed, loads them. A problem is logged (once,
    /// until the files change again) and leaves the current configuration in place.
    pub fn refresh(&self) -> Refresh {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = Contents::read(&self.settings).and_then(|contents| {
            if contents == seen.0 {
                return Ok(None);
            }
            let config = server_config(&self.settings, &contents, self.protocol);
            seen.0 = contents;
            config.map(Some)
        });
        match outcome {
            Ok(None) => Refresh::Unchanged,
            Ok(Some(config)) => {
                self.current.store(config);
                seen.1 = None;
                let listener = self.protocol.name();
                tracing::info!(listener, cert = %self.settings.cert.display(), "TLS files reloaded: new connections get them");
                Refresh::Reloaded
            }
            Err(e) => {
                let problem = e.to_string();
                if seen.1.as_deref() == Some(problem.as_str()) {
                    return Refresh::Unchanged;
                }
                let listener = self.protocol.name();
                tracing::error!(listener, error = %problem, "TLS files not reloaded; the previous certificate serves on");
                seen.1 = Some(problem.clone());
                Refresh::Refused(problem)
            }
        }
    }

    /// Refreshes every poll interval (never when it is zero) until `stop`.
    pub async fn watch(self: Arc<ServerTls>, stop: CancellationToken) {
        let period = self.settings.poll_interval;
        if period.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            self.refresh();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;

    /// A directory for one test's files, removed afterwards.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir()
                .join(format!("floodgate-tls-unit-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs openssl with `args` in `dir`; `false` when openssl is not installed (outside CI).
    fn openssl(dir: &Dir, args: &[&str]) -> bool {
        match Command::new("openssl")
            .args(args)
            .current_dir(&dir.0)
            .output()
        {
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                true
            }
            Err(_) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "openssl is needed under CI"
                );
                eprintln!("SKIPPED: openssl not found");
                false
            }
        }
    }

    /// A self-signed certificate for the PKCS#8 key in `dir/key.p8`, written to `dir/cert.pem`.
    fn self_signed(dir: &Dir, alg: &'static rcgen::SignatureAlgorithm) -> PathBuf {
        let pkcs8 = std::fs::read_to_string(dir.0.join("key.p8")).unwrap();
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(&pkcs8, alg).unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        dir.write("cert.pem", cert.pem())
    }

    fn load(tls: &ListenerTls) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(tls, &Contents::read(tls)?, Protocol::Grpc)
    }

    #[test]
    fn rsa_keys_in_pkcs1_and_pkcs8_and_ec_keys_in_sec1_and_pkcs8() {
        let dir = Dir::new("keys");
        // RSA, as Envoy Gateway makes it (2048 bits), in both encodings.
        if !openssl(
            &dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "key.p8",
            ],
        ) {
            return;
        }
        openssl(
            &dir,
            &["rsa", "-in", "key.p8", "-traditional", "-out", "key.p1"],
        );
        let cert = self_signed(&dir, &rcgen::PKCS_RSA_SHA256);
        for (file, header) in [("key.p1", "RSA PRIVATE KEY"), ("key.p8", "PRIVATE KEY")] {
            let text = std::fs::read_to_string(dir.0.join(file)).unwrap();
            assert!(
                text.starts_with(&format!("-----BEGIN {header}-----")),
                "{text}"
            );
            let config = load(&ListenerTls::new(&cert, dir.0.join(file))).unwrap();
            assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        }
        // P-256 as `openssl ecparam -genkey` writes it: EC PARAMETERS, then the SEC1 key.
        let dir = Dir::new("ec-keys");
        openssl(
            &dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-out",
                "key.sec1",
            ],
        );
        openssl(
            &dir,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", "key.sec1", "-out", "key.p8",
            ],
        );
        let cert = self_signed(&dir, &rcgen::PKCS_ECDSA_P256_SHA256);
        let sec1 = std::fs::read_to_string(dir.0.join("key.sec1")).unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PARAMETERS-----"), "{sec1}");
        assert!(sec1.contains("-----BEGIN EC PRIVATE KEY-----"));
        for file in ["key.sec1", "key.p8"] {
            load(&ListenerTls::new(&cert, dir.0.join(file))).unwrap();
        }
        // An encrypted key is named as such.
        openssl(
            &dir,
            &[
                "pkcs8", "-topk8", "-in", "key.sec1", "-passout", "pass:x", "-out", "key.enc",
            ],
        );
        let err = load(&ListenerTls::new(&cert, dir.0.join("key.enc"))).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("key.enc: the key is encrypted; give it unencrypted"),
            "{err}"
        );
    }

    /// A CA, and a leaf signed by it with its chain (leaf, CA) and key.
    fn chain(dir: &Dir) -> (PathBuf, PathBuf, PathBuf) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (
            dir.write("chain.pem", format!("{}{}", leaf.pem(), ca_cert.pem())),
            dir.write("key.pem", key.serialize_pem()),
            dir.write("ca.pem", ca_cert.pem()),
        )
    }

    #[test]
    fn unusable_files_are_named() {
        let dir = Dir::new("errors");
        let (cert, key, ca) = chain(&dir);
        let tls = ListenerTls {
            client_ca: Some(ca.clone()),
            client_san: Some("client.test".into()),
            ..ListenerTls::new(&cert, &key)
        };
        load(&tls).unwrap();
        let other_key = dir.write(
            "other-key.pem",
            KeyPair::generate().unwrap().serialize_pem(),
        );
        let empty = dir.write("empty.pem", "");
        let garbage = dir.write(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );
        let missing = dir.0.join("missing.pem");
        let cases: Vec<(ListenerTls, PathBuf, &str)> = vec![
            (
                ListenerTls::new(&missing, &key),
                missing.clone(),
                "reading ",
            ),
            (
                ListenerTls::new(&cert, &missing),
                missing.clone(),
                "reading ",
            ),
            (
                ListenerTls::new(&empty, &key),
                empty.clone(),
                ": no certificate in it",
            ),
            (
                ListenerTls::new(&key, &key),
                key.clone(),
                ": no certificate in it",
            ),
            (
                ListenerTls::new(&cert, &cert),
                cert.clone(),
                ": no private key in it",
            ),
            (
                ListenerTls::new(&garbage, &key),
                garbage.clone(),
                ": not a usable certificate",
            ),
            (
                ListenerTls::new(&cert, &other_key),
                other_key.clone(),
                ": the key does not belong to the certificate in ",
            ),
            (
                ListenerTls {
                    client_ca: Some(empty.clone()),
                    ..ListenerTls::new(&cert, &key)
                },
                empty.clone(),
                ": no certificate in it",
            ),
            (
                ListenerTls {
                    client_ca: Some(garbage.clone()),
                    ..ListenerTls::new(&cert, &key)
                },
                garbage.clone(),
                ": not a usable CA certificate",
            ),
        ];
        for (tls, file, want) in cases {
            let err = load(&tls).unwrap_err().to_string();
            assert!(
                err.contains(&file.display().to_string()),
                "{err} names {file:?}"
            );
            assert!(err.contains(want), "{err}: want {want:?}");
        }
    }

    #[test]
    fn grpc_offers_h2_and_http_offers_h2_and_http_1_1() {
        let dir = Dir::new("alpn");
        let (cert, key, _) = chain(&dir);
        let alpn = |protocol| {
            let tls = ServerTls::load(ListenerTls::new(&cert, &key), protocol).unwrap();
            assert_eq!(tls.protocol(), protocol);
            tls.config().alpn_protocols.clone()
        };
        assert_eq!(alpn(Protocol::Grpc), [b"h2".to_vec()]);
        assert_eq!(alpn(Protocol::Http), [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_refresh_loads_changes_and_keeps_the_last_good_files() {
        let dir = Dir::new("refresh");
        let (cert, key, _) = chain(&dir);
        let tls = ServerTls::load(ListenerTls::new(&cert, &key), Protocol::Grpc).unwrap();
        let first = tls.config();
        assert_eq!(tls.refresh(), Refresh::Unchanged);
        assert!(Arc::ptr_eq(&first, &tls.config()));

        // A bad file is refused once (not again while it stays), and the old config serves on.
        std::fs::write(&cert, "not a certificate").unwrap();
        let Refresh::Refused(problem) = tls.refresh() else {
            panic!("a bad certificate file is refused");
        };
        assert!(problem.contains(&cert.display().to_string()), "{problem}");
        assert_eq!(tls.refresh(), Refresh::Unchanged);
        assert!(Arc::ptr_eq(&first, &tls.config()));
        // A missing file too.
        std::fs::remove_file(&key).unwrap();
        assert!(matches!(tls.refresh(), Refresh::Refused(p) if p.starts_with("reading ")));
        assert_eq!(tls.refresh(), Refresh::Unchanged);

        // Good files again: loaded.
        let (cert2, key2, _) = chain(&dir);
        assert_eq!(
            (cert2.as_path(), key2.as_path()),
            (cert.as_path(), key.as_path())
        );
        assert_eq!(tls.refresh(), Refresh::Reloaded);
        assert!(!Arc::ptr_eq(&first, &tls.config()));
        assert_eq!(tls.refresh(), Refresh::Unchanged);
    }
}
