//! Bearer JWT authentication: HS256 with a configured secret, `exp` required, the algorithm
//! pinned, `aud` and `iss` checked when configured.

use crate::error::Problem;
use commands::{Actor, Role};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// How tokens are checked.
#[derive(Clone)]
pub struct AuthConfig {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The claims Chronicle reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The subject.
    pub sub: String,
    /// Role names; unknown ones are ignored.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

fn parse_role(name: &str) -> Option<Role> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

impl AuthConfig {
    /// HS256 with `secret`; `audience` and `issuer` are required in tokens when set.
    pub fn hs256(secret: &[u8], audience: Option<String>, issuer: Option<String>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 30;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &audience {
            Some(a) => {
                validation.set_audience(&[a]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(i) = &issuer {
            validation.set_issuer(&[i]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            audience,
            issuer,
        }
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Actor, Problem> {
        let header =
            header.ok_or_else(|| Problem::unauthorized("send Authorization: Bearer <token>"))?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            Problem::unauthorized("the Authorization header must be Bearer <token>")
        })?;
        let data =
            decode::<Claims>(token.trim(), &self.decoding, &self.validation).map_err(|e| {
                Problem::new(401, "invalid_token", format!("the token was refused: {e}"))
            })?;
        // Subjects of Chronicle's own actors cannot be borrowed by a token.
        if data.claims.sub.starts_with("device:") || data.claims.sub.starts_with("system:") {
            return Err(Problem::new(
                401,
                "invalid_token",
                "the token's subject is reserved",
            ));
        }
        if data.claims.sub.is_empty() || data.claims.sub.len() > 200 {
            return Err(Problem::new(
                401,
                "invalid_token",
                "the token's subject is empty or too long",
            ));
        }
        let roles = data
            .claims
            .roles
            .iter()
            .filter_map(|r| parse_role(r))
            .collect();
        Ok(Actor {
            subject: data.claims.sub,
            roles,
        })
    }

    /// Mints a token for `sub` with `roles`, valid for `ttl_seconds`.
    pub fn mint(
        &self,
        sub: &str,
        roles: &[Role],
        ttl_seconds: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: sub.to_owned(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            exp: now + ttl_seconds,
            iat: Some(now),
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }
}
