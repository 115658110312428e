//! A TLS client for Floodgate's gRPC (and HTTP) port that connects as Envoy Gateway's Envoy does: the
//! server's chain is verified against a CA but its name is not (the cluster sets only
//! `trusted_ca`), no SNI, ALPN `h2`, with or without a client certificate. Each call makes a new
//! connection, so it sees the certificate the server serves now.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use floodgate::pb::RateLimitRequest;
use floodgate::pb::rate_limit_response::Code;
use floodgate::pb::rate_limit_service_client::RateLimitServiceClient;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The name the client asks for; only for the API: it is neither sent (no SNI) nor checked.
const NAME: &str = "envoy-ratelimit.envoy-gateway-system.svc.cluster.local";

/// A client configuration: whom to trust and which certificate (if any) to present.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl TlsClient {
    /// Trusts the CA certificates of the PEM `ca`; presents `identity` (certificate chain PEM,
    /// key PEM) when asked for a client certificate.
    pub fn new(ca: &[u8], identity: Option<(&[u8], &[u8])>) -> TlsClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly { roots, provider }));
        let mut config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(chain)
                        .collect::<Result<_, _>>()
                        .unwrap(),
                    PrivateKeyDer::from_pem_slice(key).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.enable_sni = false;
        config.alpn_protocols = vec![b"h2".to_vec()];
        TlsClient {
            config: Arc::new(config),
        }
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(NAME).unwrap();
        TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }

    /// One HTTP/1.1 request on a new connection (ALPN `http/1.1`): (status, response headers,
    /// body), or why the handshake or the exchange failed.
    pub async fn http(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, Vec<(String, String)>, String), String> {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = TlsClient {
            config: Arc::new(config),
        };
        let stream = client.connect(addr).await.map_err(|e| e.to_string())?;
        super::http::exchange(stream, addr, method, path, headers, body).await
    }

    /// The leaf certificate `addr` presents on a new connection, or why the handshake failed.
    pub async fn presented(&self, addr: SocketAddr) -> Result<CertificateDer<'static>, String> {
        let stream = self.connect(addr).await.map_err(|e| e.to_string())?;
        let (_, session) = stream.get_ref();
        let certs = session.peer_certificates().ok_or("no certificate")?;
        Ok(certs[0].clone().into_owned())
    }

    /// ShouldRateLimit on a new connection: the overall code, or why the connection or the
    /// call failed.
    pub async fn should_rate_limit(
        &self,
        addr: SocketAddr,
        request: RateLimitRequest,
    ) -> Result<Code, String> {
        let client = self.clone();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let client = client.clone();
                async move { client.connect(addr).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        RateLimitServiceClient::new(channel)
            .should_rate_limit(request)
            .await
            .map(|r| r.into_inner().overall_code())
            .map_err(|s| format!("call: {s:?}"))
    }
}

/// Verifies the server's chain up to the roots, and not the name in its certificate.
#[derive(Debug)]
struct ChainOnly {
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
