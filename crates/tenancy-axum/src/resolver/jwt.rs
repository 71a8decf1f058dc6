//! The identifier as a claim of a verified bearer token (feature `jwt`).
//!
//! The algorithm is fixed by configuration, never taken from the token: `alg: none` and
//! HS/RS confusion are refused. `exp` is required; `aud` and `iss` are checked when configured.
//! Keys: an HS256 secret, an RS256/ES256 public key in PEM, or a JWKS document read from a file
//! (keys selected by `kid`; on an unknown `kid` the file is read again, at most once per
//! configured interval). JWKS over HTTP is not supported.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Resolution, TenantResolver};
use crate::rejection::TenancyRejection;

pub use jsonwebtoken::Algorithm as JwtAlgorithm;

/// Why a JWT resolver cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    /// The PEM key could not be read.
    #[error("invalid {algorithm:?} public key: {source}")]
    Key {
        /// The configured algorithm.
        algorithm: Algorithm,
        /// What the JWT library said.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// The JWKS file could not be read or parsed.
    #[error("cannot load JWKS file {path}: {reason}")]
    Jwks {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Only RS256 and ES256 are supported with a JWKS file.
    #[error("algorithm {0:?} is not supported with a JWKS file (use RS256 or ES256)")]
    UnsupportedAlgorithm(Algorithm),
}

/// Where verification keys come from.
enum Keys {
    /// One key for every token.
    Fixed(DecodingKey),
    /// Keys of a JWKS file by `kid`.
    JwksFile(JwksFile),
}

struct JwksFile {
    path: PathBuf,
    reload_interval: Duration,
    state: RwLock<JwksState>,
}

struct JwksState {
    keys: HashMap<String, DecodingKey>,
    loaded_at: Instant,
}

impl JwksFile {
    fn load(
        path: &PathBuf,
        algorithm: Algorithm,
    ) -> Result<HashMap<String, DecodingKey>, JwtConfigError> {
        let error = |reason: String| JwtConfigError::Jwks {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            if key.family() == algorithm.family() {
                keys.insert(kid.clone(), key);
            }
        }
        Ok(keys)
    }

    /// Verifies with the key `kid`, reading the file again first if `kid` is unknown and the
    /// last read is older than the reload interval.
    fn with_key<R>(
        &self,
        kid: &str,
        algorithm: Algorithm,
        verify: impl Fn(&DecodingKey) -> R,
    ) -> Option<R> {
        let read = |state: &RwLock<JwksState>| {
            let state = state.read().unwrap_or_else(|poison| poison.into_inner());
            state.keys.get(kid).map(&verify)
        };
        if let Some(result) = read(&self.state) {
            return Some(result);
        }
        {
            let mut state = self
                .state
                .write()
                .unwrap_or_else(|poison| poison.into_inner());
            if state.loaded_at.elapsed() < self.reload_interval {
                return None;
            }
            state.loaded_at = Instant::now();
            match Self::load(&self.path, algorithm) {
                Ok(keys) => state.keys = keys,
                Err(error) => tracing::warn!(%error, "JWKS reload failed; keeping the old keys"),
            }
        }
        read(&self.state)
    }
}

/// Reads the tenant from a claim of the `Authorization: Bearer` token.
///
/// No `Authorization: Bearer` header is [`Resolution::Missing`]. A token that fails
/// verification, or lacks the claim, or has a non-string claim, is refused with 401 and
/// `WWW-Authenticate: Bearer error="invalid_token"`.
///
/// ```
/// use std::time::Duration;
/// use tenancy_axum::resolver::jwt::JwtResolver;
///
/// let resolver = JwtResolver::hs256(b"a long shared secret")
///     .audience(&["orders-api"])
///     .issuer(&["https://auth.example.test"])
///     .leeway(Duration::from_secs(30))
///     .claim("org");
/// # let _ = resolver;
/// ```
pub struct JwtResolver {
    algorithm: Algorithm,
    keys: Keys,
    validation: Validation,
    claim: Box<str>,
}

impl std::fmt::Debug for JwtResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtResolver")
            .field("algorithm", &self.algorithm)
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

impl JwtResolver {
    /// The claim read by default.
    pub const DEFAULT_CLAIM: &'static str = "tenant_id";

    fn with_keys(algorithm: Algorithm, keys: Keys) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 0;
        Self {
            algorithm,
            keys,
            validation,
            claim: Self::DEFAULT_CLAIM.into(),
        }
    }

    /// Tokens signed with HS256 and `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with_keys(
            Algorithm::HS256,
            Keys::Fixed(DecodingKey::from_secret(secret)),
        )
    }

    /// Tokens signed with RS256, verified with a PEM public key.
    pub fn rs256_pem(public_key: &[u8]) -> Result<Self, JwtConfigError> {
        let key = DecodingKey::from_rsa_pem(public_key).map_err(|source| JwtConfigError::Key {
            algorithm: Algorithm::RS256,
            source,
        })?;
        Ok(Self::with_keys(Algorithm::RS256, Keys::Fixed(key)))
    }

    /// Tokens signed with ES256, verified with a PEM public key.
    pub fn es256_pem(public_key: &[u8]) -> Result<Self, JwtConfigError> {
        let key = DecodingKey::from_ec_pem(public_key).map_err(|source| JwtConfigError::Key {
            algorithm: Algorithm::ES256,
            source,
        })?;
        Ok(Self::with_keys(Algorithm::ES256, Keys::Fixed(key)))
    }

    /// Tokens signed with `algorithm` (RS256 or ES256) by a key of the JWKS document in `path`,
    /// selected by the token's `kid`. The file is read now, and again on an unknown `kid` at
    /// most once per `reload_interval` (a synchronous read of a small local file).
    pub fn jwks_file(
        path: impl Into<PathBuf>,
        algorithm: Algorithm,
        reload_interval: Duration,
    ) -> Result<Self, JwtConfigError> {
        if !matches!(algorithm, Algorithm::RS256 | Algorithm::ES256) {
            return Err(JwtConfigError::UnsupportedAlgorithm(algorithm));
        }
        let path = path.into();
        let keys = JwksFile::load(&path, algorithm)?;
        Ok(Self::with_keys(
            algorithm,
            Keys::JwksFile(JwksFile {
                path,
                reload_interval,
                state: RwLock::new(JwksState {
                    keys,
                    loaded_at: Instant::now(),
                }),
            }),
        ))
    }

    /// Accepted audiences; tokens must then carry a matching `aud`.
    pub fn audience(mut self, audiences: &[&str]) -> Self {
        self.validation.set_audience(audiences);
        self.validation
            .required_spec_claims
            .insert("aud".to_owned());
        self
    }

    /// Accepted issuers; tokens must then carry a matching `iss`.
    pub fn issuer(mut self, issuers: &[&str]) -> Self {
        self.validation.set_issuer(issuers);
        self.validation
            .required_spec_claims
            .insert("iss".to_owned());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf` (default 0).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
        self
    }

    /// The claim holding the tenant identifier (default `tenant_id`).
    pub fn claim(mut self, claim: &str) -> Self {
        self.claim = claim.into();
        self
    }

    fn verify(&self, token: &str) -> Result<String, &'static str> {
        let decode = |key: &DecodingKey| {
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                key,
                &self.validation,
            )
        };
        let decoded = match &self.keys {
            Keys::Fixed(key) => decode(key),
            Keys::JwksFile(file) => {
                let header = jsonwebtoken::decode_header(token).map_err(reason)?;
                if header.alg != self.algorithm {
                    return Err("algorithm not allowed");
                }
                let kid = header.kid.ok_or("token has no key id")?;
                file.with_key(&kid, self.algorithm, decode)
                    .ok_or("unknown key id")?
            }
        };
        let mut claims = decoded.map_err(reason)?.claims;
        match claims.remove(&*self.claim) {
            Some(serde_json::Value::String(identifier)) => Ok(identifier),
            Some(_) => Err("tenant claim is not a string"),
            None => Err("token has no tenant claim"),
        }
    }
}

fn reason(error: jsonwebtoken::errors::Error) -> &'static str {
    match error.kind() {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => "algorithm not allowed",
        ErrorKind::MissingRequiredClaim(_) => "required claim missing",
        _ => "malformed token",
    }
}

fn bearer_token(parts: &Parts) -> Result<Option<&str>, &'static str> {
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    let text = value.to_str().map_err(|_| "malformed token")?;
    let Some((scheme, token)) = text.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    Ok(Some(token.trim()))
}

impl TenantResolver for JwtResolver {
    fn resolve<'a>(&'a self, parts: &'a Parts) -> Resolution<'a> {
        let token = match bearer_token(parts) {
            Ok(Some(token)) => token,
            Ok(None) => return Resolution::Missing,
            Err(why) => return Resolution::Rejected(TenancyRejection::InvalidToken(why)),
        };
        match self.verify(token) {
            Ok(identifier) => Resolution::Identifier(Cow::Owned(identifier)),
            Err(why) => Resolution::Rejected(TenancyRejection::InvalidToken(why)),
        }
    }
}
