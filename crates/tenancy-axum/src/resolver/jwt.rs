//! The identifier as a claim of a verified bearer token (feature `jwt`).
//!
//! The algorithm is fixed by configuration, never taken from the token: `alg: none` and
//! HS/RS confusion are refused. `exp` is required; `aud` and `iss` are checked when configured.
//! Keys: an HS256 secret, an RS256/ES256 public key in PEM, or a JWKS document read from a file
//! or (feature `jwks-http`) fetched from a URL. JWKS keys are selected by `kid`; on an unknown
//! `kid` the document is loaded again, at most once per configured interval.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
#[cfg(feature = "jwks-http")]
use std::sync::Arc;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Resolution, TenantResolver};
use crate::rejection::TenancyRejection;

#[cfg(feature = "jwks-http")]
mod fetch;

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
    /// The JWKS URL cannot be used.
    #[cfg(feature = "jwks-http")]
    #[error("invalid JWKS URL '{url}': {reason}")]
    JwksUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Only RS256 and ES256 are supported with a JWKS document.
    #[error("algorithm {0:?} is not supported with a JWKS document (use RS256 or ES256)")]
    UnsupportedAlgorithm(Algorithm),
}

/// Where verification keys come from.
enum Keys {
    /// One key for every token.
    Fixed(DecodingKey),
    /// Keys of a JWKS file by `kid`.
    JwksFile(JwksFile),
    /// Keys of a JWKS document fetched over HTTP(S) by `kid`.
    #[cfg(feature = "jwks-http")]
    JwksUrl(Arc<fetch::JwksUrl>),
}

/// The usable keys of a JWKS document (`kid` set, of the configured algorithm's family).
fn usable_keys(
    document: &[u8],
    algorithm: Algorithm,
) -> Result<HashMap<String, DecodingKey>, serde_json::Error> {
    let set: JwkSet = serde_json::from_slice(document)?;
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

/// The keys of a JWKS document by `kid`, and when the document was last loaded (or a load was
/// last tried).
struct KeyCache {
    reload_interval: Duration,
    state: RwLock<KeyState>,
}

struct KeyState {
    keys: HashMap<String, DecodingKey>,
    loaded_at: Option<Instant>,
}

impl KeyCache {
    /// A cache holding `loaded` keys, or none yet (a load is then due at once).
    fn new(reload_interval: Duration, loaded: Option<HashMap<String, DecodingKey>>) -> Self {
        let loaded_at = loaded.is_some().then(Instant::now);
        Self {
            reload_interval,
            state: RwLock::new(KeyState {
                keys: loaded.unwrap_or_default(),
                loaded_at,
            }),
        }
    }

    /// `verify` applied to the key `kid`, if it is known.
    fn with_known_key<R>(&self, kid: &str, verify: impl FnOnce(&DecodingKey) -> R) -> Option<R> {
        let state = self
            .state
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        state.keys.get(kid).map(verify)
    }

    /// Whether the document may be loaded again: never loaded, or last loaded at least one
    /// reload interval ago.
    #[cfg(feature = "jwks-http")]
    fn reload_due(&self) -> bool {
        let state = self
            .state
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        Self::due(&state, self.reload_interval)
    }

    fn due(state: &KeyState, reload_interval: Duration) -> bool {
        state
            .loaded_at
            .is_none_or(|loaded_at| loaded_at.elapsed() >= reload_interval)
    }

    /// Records a load: its keys replace the old ones; a failed load keeps them.
    fn store<E: std::fmt::Display>(
        state: &mut KeyState,
        loaded: Result<HashMap<String, DecodingKey>, E>,
    ) {
        state.loaded_at = Some(Instant::now());
        match loaded {
            Ok(keys) => state.keys = keys,
            Err(error) => tracing::warn!(%error, "JWKS reload failed; keeping the old keys"),
        }
    }

    /// Loads the document again with `load` if a reload is due, holding the lock throughout so
    /// that one caller loads.
    fn reload_if_due<E: std::fmt::Display>(
        &self,
        load: impl FnOnce() -> Result<HashMap<String, DecodingKey>, E>,
    ) {
        let mut state = self
            .state
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if Self::due(&state, self.reload_interval) {
            Self::store(&mut state, load());
        }
    }

    /// Records the outcome of a load made without the lock held.
    #[cfg(feature = "jwks-http")]
    fn replace<E: std::fmt::Display>(&self, loaded: Result<HashMap<String, DecodingKey>, E>) {
        let mut state = self
            .state
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        Self::store(&mut state, loaded);
    }
}

struct JwksFile {
    path: PathBuf,
    cache: KeyCache,
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
        let document = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        usable_keys(&document, algorithm).map_err(|e| error(e.to_string()))
    }

    /// Verifies with the key `kid`, reading the file again first if `kid` is unknown and the
    /// last read is older than the reload interval.
    fn with_key<R>(
        &self,
        kid: &str,
        algorithm: Algorithm,
        verify: impl Fn(&DecodingKey) -> R,
    ) -> Option<R> {
        if let Some(result) = self.cache.with_known_key(kid, &verify) {
            return Some(result);
        }
        self.cache
            .reload_if_due(|| Self::load(&self.path, algorithm));
        self.cache.with_known_key(kid, &verify)
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
        check_jwks_algorithm(algorithm)?;
        let path = path.into();
        let keys = JwksFile::load(&path, algorithm)?;
        Ok(Self::with_keys(
            algorithm,
            Keys::JwksFile(JwksFile {
                path,
                cache: KeyCache::new(reload_interval, Some(keys)),
            }),
        ))
    }

    /// Tokens signed with `algorithm` (RS256 or ES256) by a key of the JWKS document at `url`
    /// (feature `jwks-http`), selected by the token's `kid`.
    ///
    /// `url` is `https://`, or `http://` to `localhost`, `127.0.0.1` or `[::1]`. The document
    /// is fetched when the first token arrives, and again on an unknown `kid` at most once per
    /// `refresh_interval` (counted from the last attempt, failed or not); concurrent requests
    /// share one fetch. A fetch that fails, times out (5 s), answers other than 2xx, sends more
    /// than 1 MiB or something other than a JWKS document keeps the old keys: tokens with an
    /// unknown `kid` are then refused (401). TLS uses rustls with the aws-lc-rs provider and
    /// the Mozilla root certificates.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tenancy_axum::resolver::jwt::{JwtAlgorithm, JwtResolver};
    ///
    /// let resolver = JwtResolver::jwks_url(
    ///     "https://auth.example.test/.well-known/jwks.json",
    ///     JwtAlgorithm::RS256,
    ///     Duration::from_secs(300),
    /// )?
    /// .audience(&["orders-api"]);
    /// # let _ = resolver;
    /// # Ok::<(), tenancy_axum::resolver::jwt::JwtConfigError>(())
    /// ```
    #[cfg(feature = "jwks-http")]
    pub fn jwks_url(
        url: &str,
        algorithm: Algorithm,
        refresh_interval: Duration,
    ) -> Result<Self, JwtConfigError> {
        check_jwks_algorithm(algorithm)?;
        let source = fetch::JwksUrl::new(url, algorithm, KeyCache::new(refresh_interval, None))?;
        Ok(Self::with_keys(algorithm, Keys::JwksUrl(Arc::new(source))))
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

    /// The `kid` of a token of the configured algorithm.
    fn key_id(&self, token: &str) -> Result<String, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(reason)?;
        if header.alg != self.algorithm {
            return Err("algorithm not allowed");
        }
        header.kid.ok_or("token has no key id")
    }
}

/// Checks that JWKS keys can verify tokens of `algorithm`.
fn check_jwks_algorithm(algorithm: Algorithm) -> Result<(), JwtConfigError> {
    if matches!(algorithm, Algorithm::RS256 | Algorithm::ES256) {
        Ok(())
    } else {
        Err(JwtConfigError::UnsupportedAlgorithm(algorithm))
    }
}

/// The tenant claim of `token`, verified with `key`.
fn verify(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
    claim: &str,
) -> Result<String, &'static str> {
    let decoded =
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, validation);
    let mut claims = decoded.map_err(reason)?.claims;
    match claims.remove(claim) {
        Some(serde_json::Value::String(identifier)) => Ok(identifier),
        Some(_) => Err("tenant claim is not a string"),
        None => Err("token has no tenant claim"),
    }
}

/// The resolution of a verification.
fn resolution(verified: Result<String, &'static str>) -> Resolution<'static> {
    match verified {
        Ok(identifier) => Resolution::Identifier(Cow::Owned(identifier)),
        Err(why) => Resolution::Rejected(TenancyRejection::InvalidToken(why)),
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
        let with = |key: &DecodingKey| verify(token, key, &self.validation, &self.claim);
        let verified = match &self.keys {
            Keys::Fixed(key) => with(key),
            Keys::JwksFile(file) => self.key_id(token).and_then(|kid| {
                file.with_key(&kid, self.algorithm, with)
                    .unwrap_or(Err("unknown key id"))
            }),
            #[cfg(feature = "jwks-http")]
            Keys::JwksUrl(source) => match self.key_id(token) {
                Err(why) => Err(why),
                Ok(kid) => match source.cache().with_known_key(&kid, with) {
                    Some(verified) => verified,
                    None if !source.cache().reload_due() => Err("unknown key id"),
                    None => {
                        let source = Arc::clone(source);
                        let token = token.to_owned();
                        let validation = self.validation.clone();
                        let claim = self.claim.clone();
                        return Resolution::Deferred(Box::pin(async move {
                            let with = |key: &DecodingKey| verify(&token, key, &validation, &claim);
                            resolution(source.with_key_after_fetch(&kid, with).await)
                        }));
                    }
                },
            },
        };
        resolution(verified)
    }
}
