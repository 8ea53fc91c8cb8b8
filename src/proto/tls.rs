//! TLS as a sans-IO stage below the WebSocket: ciphertext in, plaintext
//! out, and the other way round, with no socket, thread or clock.
//!
//! [`TlsStream`] wraps one rustls connection (server or client side).
//! rustls is itself sans-IO (`read_tls` / `process_new_packets` / `reader`
//! on the way in, `writer` / `write_tls` on the way out); this type gives it
//! the shape the rest of `proto/` has: [`TlsStream::handle_bytes`] takes
//! what the socket delivered and appends the plaintext it carried,
//! [`TlsStream::seal`] takes plaintext to send and
//! [`TlsStream::take_wire`] hands out the records (and handshake messages
//! and alerts) to put on the socket.
//!
//! Memory per connection is bounded by rustls: its incoming buffer holds at
//! most one record (a handshake message of at most 64 KiB while
//! handshaking), every plaintext byte is taken out on each call, and the
//! caller seals at most what it chose to send before taking the records.
//!
//! Certificates and keys come in as PEM bytes ([`server_config`]); reading
//! the files is the caller's business. The crypto provider is `ring`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::sync::Arc;

/// The ALPN protocol a WebSocket door offers (browsers ask for it).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why TLS settings could not be built, or a connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain or key is missing or not what it should be.
    #[error("{0}")]
    Keys(String),
    /// The peer broke the protocol (garbage, a failed handshake, a bad
    /// record); an alert may be waiting in [`TlsStream::take_wire`].
    #[error("tls: {0}")]
    Protocol(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from a PEM certificate chain (leaf first) and a
/// PEM private key (PKCS#8, PKCS#1 or SEC1), offering ALPN `http/1.1` and
/// resumption by stateless tickets. Checks that the key matches the leaf
/// certificate.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Keys(format!("certificate: not PEM ({e})")))?;
    if certs.is_empty() {
        return Err(TlsError::Keys(
            "certificate: no CERTIFICATE block in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Keys(format!("key: no usable private key ({e})")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Keys(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Keys(format!("certificate and key: {e}")))?;
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    // Stateless resumption tickets (keys rotated every 6 hours): a client
    // reconnecting after a network change skips the signature, and the
    // server keeps no per-client session state (and no shared cache).
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| TlsError::Keys(format!("session tickets: {e}")))?;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(cfg))
}

/// A client configuration that trusts the certificates in `ca_pem` (for a
/// gate with its own or a self-signed certificate), offering ALPN
/// `http/1.1`.
pub fn client_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TlsError::Keys(format!("CA file: not PEM ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Keys(format!("CA file: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(TlsError::Keys(
            "CA file: no CERTIFICATE block in the file".into(),
        ));
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Keys(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(cfg))
}

/// A client configuration that accepts any certificate (signatures are
/// still checked, so the handshake is real): for load tests against a
/// gate with a throw-away certificate, never for real clients.
pub fn insecure_client_config() -> Arc<ClientConfig> {
    let p = provider();
    let verifier = Arc::new(AnyCert(p.clone()));
    let mut cfg = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Arc::new(cfg)
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What one [`TlsStream::handle_bytes`] call came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TlsRead {
    /// Plaintext bytes appended to the caller's buffer.
    pub plaintext: usize,
    /// The handshake completed during this call.
    pub handshake_done: bool,
    /// The peer sent close_notify: nothing more will come.
    pub peer_closed: bool,
}

/// One TLS connection, either side, sans-IO.
pub struct TlsStream {
    conn: Connection,
    failed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("handshaking", &self.conn.is_handshaking())
            .field("failed", &self.failed)
            .finish()
    }
}

impl TlsStream {
    /// The server side of a new connection.
    pub fn server(cfg: Arc<ServerConfig>) -> Result<TlsStream, TlsError> {
        let conn = ServerConnection::new(cfg).map_err(|e| TlsError::Keys(e.to_string()))?;
        Ok(Self::wrap(conn.into()))
    }

    /// The client side of a new connection to `name`.
    pub fn client(
        cfg: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsStream, TlsError> {
        let conn = ClientConnection::new(cfg, name).map_err(|e| TlsError::Keys(e.to_string()))?;
        Ok(Self::wrap(conn.into()))
    }

    fn wrap(mut conn: Connection) -> TlsStream {
        // The caller bounds what it seals (it seals only once the records
        // of the last batch are out), so rustls need not.
        conn.set_buffer_limit(None);
        TlsStream {
            conn,
            failed: false,
        }
    }

    /// Ciphertext from the peer. The plaintext it carried is appended to
    /// `plain` (at most `data.len()` plus one record, whatever the peer
    /// does). After an error nothing more is read; send what
    /// [`take_wire`](Self::take_wire) gives (an alert) and close.
    pub fn handle_bytes(
        &mut self,
        mut data: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<TlsRead, TlsError> {
        let mut read = TlsRead::default();
        if self.failed {
            return Err(TlsError::Protocol("connection already failed".into()));
        }
        let handshaking = self.conn.is_handshaking();
        let start = plain.len();
        loop {
            if !data.is_empty() {
                match self.conn.read_tls(&mut data) {
                    Ok(0) => {
                        // After close_notify rustls reads nothing more.
                        data = &[];
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.failed = true;
                        return Err(TlsError::Protocol(e.to_string()));
                    }
                }
            }
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    self.failed = true;
                    return Err(TlsError::Protocol(e.to_string()));
                }
            };
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let at = plain.len();
                plain.resize(at + n, 0);
                match self.conn.reader().read(&mut plain[at..]) {
                    Ok(got) => plain.truncate(at + got),
                    Err(_) => plain.truncate(at),
                }
            }
            if state.peer_has_closed() {
                read.peer_closed = true;
                break;
            }
            if data.is_empty() {
                break;
            }
        }
        read.plaintext = plain.len() - start;
        read.handshake_done = handshaking && !self.conn.is_handshaking();
        Ok(read)
    }

    /// Plaintext to send: becomes records at once (written by
    /// [`take_wire`](Self::take_wire)). Before the handshake completes it
    /// waits inside rustls and goes out right after it.
    pub fn seal(&mut self, plain: &[u8]) {
        if self.failed || plain.is_empty() {
            return;
        }
        // Unlimited buffer (see `wrap`): writes all.
        let _ = self.conn.writer().write_all(plain);
    }

    /// Appends every byte waiting to go to the peer (handshake messages,
    /// records, alerts) to `out`. Returns how many.
    pub fn take_wire(&mut self, out: &mut Vec<u8>) -> usize {
        let mut n = 0;
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        n
    }

    /// Whether bytes wait to go to the peer.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the connection failed (nothing more is read or sealed).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Queues close_notify (once): the clean end of a TLS connection.
    pub fn close(&mut self) {
        if !self.failed {
            self.conn.send_close_notify();
        }
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    /// Moves everything waiting from `a` to `b`; returns the plaintext `b`
    /// got.
    fn pump(a: &mut TlsStream, b: &mut TlsStream) -> Vec<u8> {
        let mut wire = Vec::new();
        a.take_wire(&mut wire);
        let mut plain = Vec::new();
        // Byte by byte: records cut anywhere reassemble.
        for chunk in wire.chunks(7) {
            b.handle_bytes(chunk, &mut plain).unwrap();
        }
        plain
    }

    #[test]
    fn handshake_then_records_both_ways() {
        let (cert, key) = keys();
        let mut s =
            TlsStream::server(server_config(cert.as_bytes(), key.as_bytes()).unwrap()).unwrap();
        let mut c = TlsStream::client(
            client_config(cert.as_bytes()).unwrap(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        c.seal(b"GET / HTTP/1.1\r\n\r\n");
        for _ in 0..4 {
            let got = pump(&mut c, &mut s);
            if !got.is_empty() {
                assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
            }
            pump(&mut s, &mut c);
        }
        assert!(!s.is_handshaking() && !c.is_handshaking());
        assert_eq!(s.alpn(), Some(ALPN_HTTP11));
        let big = vec![7u8; 100_000];
        s.seal(&big);
        assert_eq!(pump(&mut s, &mut c), big);
        s.close();
        let mut wire = Vec::new();
        s.take_wire(&mut wire);
        let r = c.handle_bytes(&wire, &mut Vec::new()).unwrap();
        assert!(r.peer_closed);
    }

    #[test]
    fn a_second_connection_resumes_with_a_ticket() {
        let (cert, key) = keys();
        let server = server_config(cert.as_bytes(), key.as_bytes()).unwrap();
        let client = client_config(cert.as_bytes()).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let mut s = TlsStream::server(server.clone()).unwrap();
            let mut c = TlsStream::client(client.clone(), name.clone()).unwrap();
            for _ in 0..4 {
                pump(&mut c, &mut s);
                pump(&mut s, &mut c);
            }
            let Connection::Client(cc) = &c.conn else {
                unreachable!()
            };
            kinds.push(cc.handshake_kind());
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ]
        );
    }

    #[test]
    fn garbage_fails_with_an_alert() {
        let (cert, key) = keys();
        let mut s =
            TlsStream::server(server_config(cert.as_bytes(), key.as_bytes()).unwrap()).unwrap();
        let err = s
            .handle_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, TlsError::Protocol(_)), "{err}");
        assert!(s.failed());
        let mut alert = Vec::new();
        s.take_wire(&mut alert);
        assert_eq!(alert.first(), Some(&21), "an alert record");
    }

    #[test]
    fn bad_keys_are_refused_with_reasons() {
        let (cert, key) = keys();
        let (_, other_key) = keys();
        assert!(
            matches!(server_config(b"nothing", key.as_bytes()), Err(TlsError::Keys(m)) if m.contains("certificate"))
        );
        assert!(
            matches!(server_config(cert.as_bytes(), b""), Err(TlsError::Keys(m)) if m.contains("key"))
        );
        assert!(matches!(
            server_config(cert.as_bytes(), other_key.as_bytes()),
            Err(TlsError::Keys(_))
        ));
        assert!(client_config(b"").is_err());
    }

    #[test]
    fn an_untrusted_certificate_fails_the_client() {
        let (cert, key) = keys();
        let (other, _) = keys();
        let mut s =
            TlsStream::server(server_config(cert.as_bytes(), key.as_bytes()).unwrap()).unwrap();
        let mut c = TlsStream::client(
            client_config(other.as_bytes()).unwrap(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut wire = Vec::new();
        c.take_wire(&mut wire);
        s.handle_bytes(&wire, &mut Vec::new()).unwrap();
        wire.clear();
        s.take_wire(&mut wire);
        assert!(c.handle_bytes(&wire, &mut Vec::new()).is_err());
        // The insecure client takes it.
        let mut s =
            TlsStream::server(server_config(cert.as_bytes(), key.as_bytes()).unwrap()).unwrap();
        let mut c = TlsStream::client(
            insecure_client_config(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        for _ in 0..3 {
            pump(&mut c, &mut s);
            pump(&mut s, &mut c);
        }
        assert!(!c.is_handshaking());
    }
}
