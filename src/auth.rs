//! JWT tokens: HS256 only, `exp` required. A user token names its user in `sub`; a server token
//! carries `server: true`.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub server: bool,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(String),
    Server,
}

/// Signs and checks tokens with the server's secret.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// HMAC keyed for the tags on opaque values we hand out (cursors, sync tokens), with a key
    /// derived from the secret so every node and every restart agrees. Cloned per tag: keying
    /// costs two SHA-256 blocks, paid once here.
    seal_mac: hmac::Hmac<sha2::Sha256>,
}

/// Bytes of HMAC-SHA256 kept as a sealed value's tag.
const TAG_LEN: usize = 12;

impl Keys {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        let seal_mac = {
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes any key length");
            mac.update(b"confab opaque values");
            let seal_key: [u8; 32] = mac.finalize().into_bytes().into();
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&seal_key)
                .expect("HMAC takes any key length")
        };
        Keys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            seal_mac,
        }
    }

    fn tag(&self, kind: &str, payload: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut mac = self.seal_mac.clone();
        mac.update(kind.as_bytes());
        mac.update(&[0]);
        mac.update(payload);
        mac
    }

    /// An opaque value a client hands back later (a cursor, a sync token): base64url of the
    /// payload and a tag, so that a value this server did not make is refused rather than
    /// interpreted. `kind` keeps one kind of value from passing for another.
    pub fn seal(&self, kind: &str, payload: &str) -> String {
        use base64::Engine;
        use hmac::Mac;
        let tag = self.tag(kind, payload.as_bytes()).finalize().into_bytes();
        let mut raw = Vec::with_capacity(payload.len() + TAG_LEN);
        raw.extend_from_slice(payload.as_bytes());
        raw.extend_from_slice(&tag[..TAG_LEN]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// The payload of a sealed value, and whether its tag is this server's (checked in
    /// constant time). `None`: not a sealed value at all.
    pub fn unseal(&self, kind: &str, value: &str) -> Option<(String, bool)> {
        use base64::Engine;
        use hmac::Mac;
        if value.len() > 1024 {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .ok()?;
        if raw.len() <= TAG_LEN {
            return None;
        }
        let (payload, tag) = raw.split_at(raw.len() - TAG_LEN);
        let genuine = self.tag(kind, payload).verify_truncated_left(tag).is_ok();
        Some((String::from_utf8(payload.to_vec()).ok()?, genuine))
    }

    /// The payload of a sealed value this server made; `None` for anything else.
    pub fn open(&self, kind: &str, value: &str) -> Option<String> {
        self.unseal(kind, value)
            .and_then(|(payload, genuine)| genuine.then_some(payload))
    }

    fn sign(&self, sub: Option<&str>, server: bool, ttl: Duration) -> String {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            sub: sub.map(str::to_owned),
            server,
            exp: now + ttl.as_secs(),
            iat: now,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    pub fn user_token(&self, user_id: &str, ttl: Duration) -> String {
        self.sign(Some(user_id), false, ttl)
    }

    pub fn server_token(&self, ttl: Duration) -> String {
        self.sign(None, true, ttl)
    }

    /// The principal of a valid token; `None` for anything malformed, expired, wrongly signed or
    /// not HS256.
    pub fn verify(&self, token: &str) -> Option<Principal> {
        self.verify_until(token).map(|(p, _)| p)
    }

    /// The principal and the token's expiry (seconds since the epoch).
    pub fn verify_until(&self, token: &str) -> Option<(Principal, u64)> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        if data.header.alg != Algorithm::HS256 {
            return None;
        }
        let exp = data.claims.exp;
        match (data.claims.server, data.claims.sub) {
            (true, _) => Some((Principal::Server, exp)),
            (false, Some(sub)) => Some((Principal::User(sub), exp)),
            (false, None) => None,
        }
    }
}

/// A fresh random secret (48 bytes, URL-safe base64).
pub fn generate_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keyed HMAC cloned per tag gives the tags of one keyed per tag with the derived key
    /// (tokens and cursors handed out before still open).
    #[test]
    fn tags_are_those_of_the_derived_key() {
        use base64::Engine;
        use hmac::Mac;
        let secret = "a-secret-of-some-length";
        let keys = Keys::new(secret);
        let mut derive = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        derive.update(b"confab opaque values");
        let derived = derive.finalize().into_bytes();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&derived).unwrap();
        mac.update(b"sync\0db:42");
        let tag = mac.finalize().into_bytes();
        let mut raw = b"db:42".to_vec();
        raw.extend_from_slice(&tag[..TAG_LEN]);
        let want = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(keys.seal("sync", "db:42"), want);
        assert_eq!(keys.open("sync", &want).as_deref(), Some("db:42"));
        assert_eq!(keys.seal("sync", "db:42"), keys.seal("sync", "db:42"));
        assert_eq!(keys.open("cursor", &want), None, "another kind");
    }

    #[test]
    fn sealed_values_cannot_be_forged() {
        use base64::Engine;
        let keys = Keys::new("a-secret-of-some-length");
        let sealed = keys.seal("cursor", "123:abc");
        assert_eq!(keys.open("cursor", &sealed).as_deref(), Some("123:abc"));
        // Another kind, another secret, a changed payload, garbage: refused.
        assert_eq!(keys.open("sync", &sealed), None);
        assert_eq!(
            Keys::new("another-secret-here").open("cursor", &sealed),
            None
        );
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sealed)
            .unwrap();
        raw[0] = b'9';
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(keys.open("cursor", &forged), None);
        assert_eq!(keys.unseal("cursor", &forged).map(|v| v.1), Some(false));
        for junk in ["", "!!", "Zm9v", &"A".repeat(2000)] {
            assert_eq!(keys.open("cursor", junk), None, "{junk:?}");
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let k = Keys::new("0123456789abcdef0123");
        let t = k.user_token("u_1", Duration::from_secs(60));
        assert_eq!(k.verify(&t), Some(Principal::User("u_1".into())));
        assert_eq!(
            k.verify(&k.server_token(Duration::from_secs(60))),
            Some(Principal::Server)
        );
        let other = Keys::new("another-secret-of-length");
        assert_eq!(other.verify(&t), None);
        assert_eq!(k.verify("not.a.token"), None);
        let expired = k.user_token("u_1", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(k.verify(&expired), None);
    }
}
