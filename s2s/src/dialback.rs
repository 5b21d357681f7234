//! Server Dialback keys (XEP-0220) generated as XEP-0185 recommends, so that every node sharing
//! the secret can verify a key issued by any other node of the same domain.

use ring::{digest, hmac};

/// The dialback secret of a domain (or of a whole deployment).
#[derive(Clone)]
pub struct DialbackSecret {
    key: hmac::Key,
}

impl std::fmt::Debug for DialbackSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DialbackSecret(..)")
    }
}

impl DialbackSecret {
    pub fn new(secret: &str) -> Self {
        // XEP-0185 §3: the HMAC key is the hex-encoded SHA-256 of the secret.
        let h = hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref());
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, h.as_bytes()),
        }
    }

    /// key = HEX(HMAC-SHA256(HEX(SHA256(secret)), receiving ' ' originating ' ' stream-id))
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let msg = format!("{receiving} {originating} {stream_id}");
        hex(hmac::sign(&self.key, msg.as_bytes()).as_ref())
    }

    /// Constant-time comparison of a presented key with the expected one.
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        let expected = self.key(receiving, originating, stream_id);
        constant_time_eq(expected.as_bytes(), key.trim().as_bytes())
    }
}

/// Compares in constant time for inputs of equal length (`subtle`); the length is not secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

pub fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_bind_every_input_and_the_secret() {
        let s = DialbackSecret::new("s3cr3tf0rd14lb4ck");
        let k = s.key("example.net", "example.com", "D60000229F");
        assert_eq!(k.len(), 64, "hex of a SHA-256 HMAC");
        assert!(s.verify("example.net", "example.com", "D60000229F", &k));
        assert!(s.verify(
            "example.net",
            "example.com",
            "D60000229F",
            &format!(" {k}\n")
        ));
        for (r, o, id) in [
            ("example.org", "example.com", "D60000229F"),
            ("example.net", "example.org", "D60000229F"),
            ("example.net", "example.com", "D60000229G"),
        ] {
            assert!(!s.verify(r, o, id, &k), "{r} {o} {id}");
        }
        // Another node with the same secret verifies the key; a node with another does not.
        assert!(DialbackSecret::new("s3cr3tf0rd14lb4ck").verify(
            "example.net",
            "example.com",
            "D60000229F",
            &k
        ));
        assert!(!DialbackSecret::new("other").verify(
            "example.net",
            "example.com",
            "D60000229F",
            &k
        ));
    }
}
