//! rustls configurations for XMPP s2s (and the other TLS links of fedgate).
//!
//! # Peer certificates are accepted at the TLS level, and judged afterwards
//!
//! The verifiers installed here accept **any** certificate chain the peer presents (and, on the
//! server side, also no certificate at all). The handshake signatures are still checked with
//! the provider's `verify_tls12_signature` / `verify_tls13_signature`, so the peer does hold the
//! private key of the certificate it presents.
//!
//! This is deliberate. In XMPP the decision about a peer's certificate is taken by the XMPP
//! layer after the stream header, once the peer's domain is known (stream `from`/`to`, and
//! each further multiplexed domain pair): [`PeerVerifier`](crate::PeerVerifier) says whether
//! SASL EXTERNAL may be used (XEP-0178); if not, the stream continues with dialback
//! (XEP-0220, XEP-0185) or is closed by policy (RFC 6120 §13.7.2). Refusing an untrusted or
//! self-signed certificate in the TLS handshake would make dialback impossible.
//!
//! So: **never treat a completed handshake from these configs as an authenticated peer**.
//! Take `peer_certificates()` from the connection and run [`PeerVerifier::verify`](crate::PeerVerifier::verify).

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::{Identity, IdentityStore};
use crate::provider::crypto_provider;

/// TLS 1.3 and 1.2 (RFC 7590: TLS 1.2 or later).
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Accepts any peer certificate chain at the TLS level; checks handshake signatures.
/// See the module documentation for why.
#[derive(Debug)]
struct DeferredPeerCheck {
    provider: Arc<CryptoProvider>,
    /// A client without a certificate fails the handshake (`certificate_required`).
    mandatory: bool,
}

impl DeferredPeerCheck {
    fn new() -> Arc<Self> {
        Arc::new(DeferredPeerCheck {
            provider: crypto_provider(),
            mandatory: false,
        })
    }

    fn mandatory() -> Arc<Self> {
        Arc::new(DeferredPeerCheck {
            provider: crypto_provider(),
            mandatory: true,
        })
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for DeferredPeerCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Deferred to PeerVerifier at the XMPP layer (module docs).
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for DeferredPeerCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // XMPP: requested, not required (a peer without a certificate can still do dialback).
        // SIP federation: required (mutual TLS is the only authentication).
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA hints: any certificate is welcome, the XMPP layer decides.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred to PeerVerifier at the XMPP layer (module docs).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// Presents one fixed identity as client certificate.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Presents the **current** identity of one hosted domain as client certificate, read from
/// the store at each handshake (so a reloaded certificate is used by new connections).
#[derive(Debug)]
struct StoreClientCert {
    store: Arc<IdentityStore>,
    domain: String,
}

impl ResolvesClientCert for StoreClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.store.get(&self.domain).map(|id| id.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.store.get(&self.domain).is_some()
    }
}

/// Server side (inbound s2s, direct TLS or STARTTLS): the certificate is picked from `store`
/// by SNI (default identity otherwise); a client certificate is **requested, not required**,
/// and accepted at the TLS level whatever it is (see the module docs: check it afterwards with
/// [`PeerVerifier`](crate::PeerVerifier)). TLS 1.3 and 1.2; `alpn` as given (e.g.
/// `b"xmpp-server"` for XEP-0368).
pub fn server_config(store: Arc<IdentityStore>, alpn: Vec<Vec<u8>>) -> Arc<ServerConfig> {
    build_server_config(store, alpn, VERSIONS)
}

/// Like [`server_config`], but a client that sends no SNI gets `domain`'s certificate rather
/// than the default one: for STARTTLS, where the stream header's `to` already named the
/// domain (RFC 6120 §13.7.1.2). Follows reloads of the store.
pub fn server_config_for(
    store: Arc<IdentityStore>,
    domain: &str,
    alpn: Vec<Vec<u8>>,
) -> Arc<ServerConfig> {
    build_server_config(
        Arc::new(StreamToResolver {
            store,
            domain: domain.to_owned(),
        }),
        alpn,
        VERSIONS,
    )
}

/// SNI when present, else the domain the stream header named.
#[derive(Debug)]
struct StreamToResolver {
    store: Arc<IdentityStore>,
    domain: String,
}

impl rustls::server::ResolvesServerCert for StreamToResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().unwrap_or(&self.domain);
        self.store
            .get_or_default(Some(name))
            .map(|id| id.certified.clone())
    }
}

/// Like [`server_config`] for mutual TLS (SIP federation): a client certificate is
/// **required** (a client without one fails the handshake with `certificate_required`), and
/// accepted at the TLS level whatever it is: check it afterwards with
/// [`PeerVerifier`](crate::PeerVerifier).
pub fn server_config_mutual(store: Arc<IdentityStore>) -> Arc<ServerConfig> {
    build_server_config_with(store, Vec::new(), VERSIONS, DeferredPeerCheck::mandatory())
}

pub(crate) fn build_server_config(
    store: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: Vec<Vec<u8>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ServerConfig> {
    build_server_config_with(store, alpn, versions, DeferredPeerCheck::new())
}

fn build_server_config_with(
    store: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: Vec<Vec<u8>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    verifier: Arc<DeferredPeerCheck>,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(versions)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(store);
    config.alpn_protocols = alpn;
    // No session resumption: a resumed session would carry the certificates of its first
    // handshake, and a reloaded identity must be what every new stream sees (s2s streams are
    // long-lived, so the saved handshakes are few).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// Client side (outbound s2s): presents `client_identity` as client certificate when given
/// (for SASL EXTERNAL at the peer); the server's certificate is accepted at the TLS level
/// whatever it is (see the module docs: check it afterwards with
/// [`PeerVerifier`](crate::PeerVerifier) with `peer_is_client = false`). SNI is sent (it must
/// be the peer's XMPP domain, XEP-0368). TLS 1.3 and 1.2; `alpn` as given.
pub fn client_config(
    client_identity: Option<Arc<Identity>>,
    alpn: Vec<Vec<u8>>,
) -> Arc<ClientConfig> {
    build_client_config(client_identity, alpn, VERSIONS)
}

pub(crate) fn build_client_config(
    client_identity: Option<Arc<Identity>>,
    alpn: Vec<Vec<u8>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let resolver = client_identity
        .map(|id| Arc::new(FixedClientCert(id.certified.clone())) as Arc<dyn ResolvesClientCert>);
    build_client_config_with(resolver, alpn, versions)
}

/// Client side for a hosted domain: like [`client_config`], but the client certificate is
/// looked up in `store` for `domain` at every handshake, so certificates swapped in with
/// [`IdentityStore::replace`] are presented by new connections without rebuilding the config.
/// No client certificate is sent while the store has no identity for `domain`. Sessions are
/// not resumed, so every connection shows the current certificates.
pub fn client_config_for(
    store: Arc<IdentityStore>,
    domain: &str,
    alpn: Vec<Vec<u8>>,
) -> Arc<ClientConfig> {
    let config = build_client_config_with(
        Some(Arc::new(StoreClientCert {
            store,
            domain: domain.to_owned(),
        })),
        alpn,
        VERSIONS,
    );
    // No session resumption (see `build_server_config`): each new connection presents the
    // current certificate.
    let mut config = Arc::unwrap_or_clone(config);
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

fn build_client_config_with(
    resolver: Option<Arc<dyn ResolvesClientCert>>,
    alpn: Vec<Vec<u8>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(versions)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(DeferredPeerCheck::new());
    let mut config = match resolver {
        Some(r) => builder.with_client_cert_resolver(r),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    Arc::new(config)
}

#[cfg(test)]
mod reload_tests {
    use super::*;
    use crate::dev::{LeafSpec, TestCa};
    use rustls::{ClientConnection, ServerConnection};

    fn identity(ca: &TestCa, domain: &str) -> Identity {
        let (c, k) = ca.issue(&LeafSpec::dns(&[domain])).unwrap();
        Identity::from_pem(domain, &c, &k).unwrap()
    }

    /// In-memory handshake: (leaf the client saw, leaf the server saw from the client).
    fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        sni: &str,
    ) -> (CertificateDer<'static>, Option<CertificateDer<'static>>) {
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let mut c = rustls::Connection::Client(ClientConnection::new(client, name).unwrap());
        let mut s = rustls::Connection::Server(ServerConnection::new(server).unwrap());
        fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) -> bool {
            let mut buf = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                to.read_tls(&mut rd).unwrap();
                to.process_new_packets().unwrap();
            }
            !buf.is_empty()
        }
        for _ in 0..20 {
            let a = pump(&mut c, &mut s);
            let b = pump(&mut s, &mut c);
            if !a && !b {
                break;
            }
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        (
            c.peer_certificates().unwrap()[0].clone().into_owned(),
            s.peer_certificates().map(|p| p[0].clone().into_owned()),
        )
    }

    #[test]
    fn replaced_identities_are_served_and_presented_by_new_handshakes() {
        let ca = TestCa::new("ca").unwrap();
        let mut store = IdentityStore::new();
        store.insert(identity(&ca, "a.test"));
        store.insert(identity(&ca, "b.test"));
        let store = Arc::new(store);
        let server = server_config(store.clone(), vec![]);
        let client = client_config_for(store.clone(), "b.test", vec![]);
        let (a1, b1) = (store.get("a.test").unwrap(), store.get("b.test").unwrap());
        let (served, presented) = handshake(server.clone(), client.clone(), "a.test");
        assert_eq!(&served, a1.leaf());
        assert_eq!(presented.as_ref(), Some(b1.leaf()));

        let old = store.replace(identity(&ca, "A.test")).unwrap();
        assert_eq!(old.leaf(), a1.leaf());
        store.replace(identity(&ca, "b.test"));
        assert_eq!(store.domains(), ["a.test", "b.test"]);
        let (a2, b2) = (store.get("a.test").unwrap(), store.get("b.test").unwrap());
        assert_ne!(a2.leaf(), a1.leaf());
        // same configs, new certificates
        let (served, presented) = handshake(server, client, "a.test");
        assert_eq!(&served, a2.leaf());
        assert_eq!(presented.as_ref(), Some(b2.leaf()));
        assert_eq!(store.identities().len(), 2);
        // a client config for a domain without identity sends none
        let anon = client_config_for(store.clone(), "c.test", vec![]);
        let (_, presented) = handshake(server_config(store, vec![]), anon, "b.test");
        assert!(presented.is_none());
    }
}
