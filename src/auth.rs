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
}

impl Keys {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        Keys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
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
