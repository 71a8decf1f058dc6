//! Configuration of the whole toolkit: [`TenancyConfig`], set in code with
//! [`TenancyConfig::builder`] or read from `TENANCY_*` environment variables with
//! [`TenancyConfig::from_env`] / [`TenancyConfig::from_vars`].
//!
//! Every setting has one public name, its environment variable: `TENANCY_` followed by the field
//! name in upper case (`pool_max_connections` is `TENANCY_POOL_MAX_CONNECTIONS`). Every
//! validation problem names that variable, the offending value and what is allowed, also for
//! configurations built in code. Secrets ([`Secret`], [`SecretUrl`]) never appear in `Debug`,
//! `Display` or error messages.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use crate::identifier::{IdentifierPolicy, check_prefix};
use crate::tenant::{IsolationMode, Tenant, UnknownValue, check_placement, check_tier};

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

/// What `Debug` and `Display` print instead of a secret.
const MASK: &str = "***";

/// A secret string (a JWT signing key). `Debug` and `Display` print `***`.
///
/// ```
/// use tenancy_core::config::Secret;
/// let secret = Secret::new("correct horse battery staple");
/// assert_eq!(format!("{secret} {secret:?}"), "*** ***");
/// assert_eq!(secret.expose(), "correct horse battery staple");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself. Keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Self(secret.to_owned())
    }
}

/// A connection URL that may carry a password. `Debug` and `Display` show it with the password
/// (and any `password=` query parameter) replaced by `***`.
///
/// ```
/// use tenancy_core::config::SecretUrl;
/// let url = SecretUrl::new("postgres://app:s3cret@db:5432/app");
/// assert_eq!(url.to_string(), "postgres://app:***@db:5432/app");
/// assert_eq!(url.expose(), "postgres://app:s3cret@db:5432/app");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The real URL, password included. Keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`; what `Display` prints.
    pub fn masked(&self) -> String {
        mask_url(&self.0)
    }

    /// The database backend the URL points at, if it is a database URL.
    pub fn backend(&self) -> Option<Backend> {
        Backend::from_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.masked(), f)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

/// Replaces the password of `url` with `***`.
///
/// The userinfo runs from `://` to the last `@` before the first `/`; if that part has no `@`
/// but a later `@` exists (an unencoded `/` or `?` in the password), the last `@` of the whole
/// URL ends it, so a malformed URL is over-masked rather than leaked. Values of `password` and
/// `sslpassword` query parameters are masked too.
fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let userinfo_end = rest[..authority_end].rfind('@').or_else(|| rest.rfind('@'));
    let mut masked = String::with_capacity(url.len());
    masked.push_str(scheme);
    match userinfo_end.and_then(|at| Some((at, rest[..at].find(':')?))) {
        Some((at, colon)) => {
            masked.push_str(&rest[..=colon]);
            masked.push_str(MASK);
            masked.push_str(&rest[at..]);
        }
        None => masked.push_str(rest),
    }
    let Some(query_start) = masked.find('?') else {
        return masked;
    };
    let query = masked.split_off(query_start + 1);
    for (index, pair) in query.split('&').enumerate() {
        if index > 0 {
            masked.push('&');
        }
        match pair.split_once('=') {
            Some((key, _))
                if key.eq_ignore_ascii_case("password")
                    || key.eq_ignore_ascii_case("sslpassword") =>
            {
                masked.push_str(key);
                masked.push('=');
                masked.push_str(MASK);
            }
            _ => masked.push_str(pair),
        }
    }
    masked
}

// ---------------------------------------------------------------------------------------------
// Choices
// ---------------------------------------------------------------------------------------------

/// The database engine behind a database URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// PostgreSQL (`postgres://`, `postgresql://`).
    Postgres,
    /// MariaDB or MySQL (`mysql://`, `mariadb://`).
    Mysql,
    /// SQLite (`sqlite://path`, `sqlite:path`, `sqlite::memory:`).
    Sqlite,
}

impl Backend {
    /// The backend of a database URL, from its scheme (case-insensitive); `None` for any other
    /// URL.
    ///
    /// ```
    /// use tenancy_core::config::Backend;
    /// assert_eq!(Backend::from_url("postgresql://db/app"), Some(Backend::Postgres));
    /// assert_eq!(Backend::from_url("sqlite::memory:"), Some(Backend::Sqlite));
    /// assert_eq!(Backend::from_url("redis://cache"), None);
    /// ```
    pub fn from_url(url: &str) -> Option<Self> {
        let (scheme, rest) = url.split_once(':')?;
        let is = |name: &str| scheme.eq_ignore_ascii_case(name);
        let has_authority = rest.starts_with("//") && rest.len() > 2;
        if (is("postgres") || is("postgresql")) && has_authority {
            Some(Self::Postgres)
        } else if (is("mysql") || is("mariadb")) && has_authority {
            Some(Self::Mysql)
        } else if is("sqlite") && !rest.is_empty() {
            Some(Self::Sqlite)
        } else {
            None
        }
    }

    /// The backend's name: `postgres`, `mysql` or `sqlite`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a request names its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ResolutionStrategy {
    /// A request header ([`TenancyConfig::tenant_header_name`]).
    #[default]
    Header,
    /// The first label of the host under [`TenancyConfig::domain_suffix`].
    Subdomain,
    /// The path segment after [`TenancyConfig::path_prefix`].
    Path,
    /// A claim ([`TenancyConfig::jwt_tenant_claim`]) of a verified bearer token.
    Jwt,
}

impl ResolutionStrategy {
    /// Every strategy.
    pub const ALL: [Self; 4] = [Self::Header, Self::Subdomain, Self::Path, Self::Jwt];

    /// The strategy as configured (`header`, `subdomain`, `path`, `jwt`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Subdomain => "subdomain",
            Self::Path => "path",
            Self::Jwt => "jwt",
        }
    }
}

impl fmt::Display for ResolutionStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResolutionStrategy {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == s)
            .ok_or_else(|| {
                UnknownValue::new("resolution strategy", s, &Self::ALL.map(Self::as_str))
            })
    }
}

/// The signature algorithm of tenant tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256, verified with [`TenancyConfig::jwt_secret`].
    #[default]
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256, verified with a public key or a JWKS.
    RS256,
    /// ECDSA P-256 with SHA-256, verified with a public key or a JWKS.
    ES256,
}

impl JwtAlgorithm {
    /// Every algorithm.
    pub const ALL: [Self; 3] = [Self::HS256, Self::RS256, Self::ES256];

    /// The algorithm's JOSE name (`HS256`, `RS256`, `ES256`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JwtAlgorithm {
    type Err = UnknownValue;
    /// Parses a JOSE name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|algorithm| algorithm.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownValue::new("JWT algorithm", s, &Self::ALL.map(Self::as_str)))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One invalid setting: its variable, the value as shown (secrets masked, at most 100
/// characters, control characters escaped) and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    variable: &'static str,
    value: Option<String>,
    expected: String,
}

impl FieldProblem {
    fn invalid(variable: &'static str, value: &str, expected: impl Into<String>) -> Self {
        const MAX_SHOWN: usize = 100;
        let mut shown: String = value
            .chars()
            .take(MAX_SHOWN)
            .flat_map(char::escape_debug)
            .collect();
        if value.chars().nth(MAX_SHOWN).is_some() {
            shown.push('…');
        }
        Self {
            variable,
            value: Some(shown),
            expected: expected.into(),
        }
    }

    fn missing(variable: &'static str, expected: impl Into<String>) -> Self {
        Self {
            variable,
            value: None,
            expected: expected.into(),
        }
    }

    /// The environment variable of the setting, e.g. `TENANCY_POOL_MAX_CONNECTIONS`.
    pub fn variable(&self) -> &'static str {
        self.variable
    }

    /// The offending value as shown in the message (masked if secret); `None` when the setting
    /// is missing.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// What the setting must be.
    pub fn expected(&self) -> &str {
        &self.expected
    }
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(
                f,
                "{}='{value}' is invalid: {}",
                self.variable, self.expected
            ),
            None => write!(f, "{} is not set: {}", self.variable, self.expected),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// One or more settings are invalid (never empty); the message lists every problem.
    #[error("{}", describe_problems(.0))]
    Invalid(Vec<FieldProblem>),
}

impl ConfigError {
    /// Every problem found.
    pub fn problems(&self) -> &[FieldProblem] {
        match self {
            Self::Invalid(problems) => problems,
        }
    }
}

/// The problems found so far while reading and validating a configuration.
#[derive(Default)]
struct Problems(Vec<FieldProblem>);

impl Problems {
    fn invalid(&mut self, variable: &'static str, value: &str, expected: impl Into<String>) {
        self.0
            .push(FieldProblem::invalid(variable, value, expected));
    }

    fn missing(&mut self, variable: &'static str, expected: impl Into<String>) {
        self.0.push(FieldProblem::missing(variable, expected));
    }

    fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }
}

fn describe_problems(problems: &[FieldProblem]) -> String {
    if let [problem] = problems {
        return format!("invalid tenancy configuration: {problem}");
    }
    let mut message = format!(
        "invalid tenancy configuration ({} problems):",
        problems.len()
    );
    for problem in problems {
        // Writing to a String cannot fail.
        let _ = write!(message, "\n  - {problem}");
    }
    message
}

// ---------------------------------------------------------------------------------------------
// Variables
// ---------------------------------------------------------------------------------------------

/// The prefix of every variable this module reads.
const PREFIX: &str = "TENANCY_";

macro_rules! variables {
    ($($name:ident),* $(,)?) => {
        // The environment variable of each setting: `TENANCY_` + the field name in upper case.
        mod var {
            $(pub(super) const $name: &str = concat!("TENANCY_", stringify!($name));)*
            pub(super) const ALL: &[&str] = &[$($name),*];
        }
    };
}

variables!(
    DATABASE_URL,
    ADMIN_DATABASE_URL,
    ISOLATION_STRATEGY,
    RESOLUTION_STRATEGY,
    TENANT_HEADER_NAME,
    DOMAIN_SUFFIX,
    TRUSTED_PROXIES,
    PATH_PREFIX,
    EXCLUDED_PATHS,
    JWT_SECRET,
    JWT_ALGORITHM,
    JWT_TENANT_CLAIM,
    JWT_AUDIENCE,
    JWT_ISSUER,
    JWT_LEEWAY_SECONDS,
    JWT_PUBLIC_KEY_PATH,
    JWT_JWKS_PATH,
    JWT_JWKS_URL,
    JWT_JWKS_REFRESH_SECONDS,
    REDIS_URL,
    REDIS_KEY_PREFIX,
    CACHE_TTL_SECONDS,
    CACHE_MAX_ENTRIES,
    NEGATIVE_CACHE_TTL_SECONDS,
    ENABLE_RATE_LIMITING,
    RATE_LIMIT_PER_MINUTE,
    RATE_LIMIT_WINDOW_SECONDS,
    RATE_LIMIT_FAIL_OPEN,
    SCHEMA_PREFIX,
    DATABASE_PREFIX,
    SHARED_SCHEMA,
    RLS_SETTING,
    RLS_TENANT_COLUMN,
    HYBRID_TIER_ISOLATION,
    HYBRID_DEFAULT_ISOLATION,
    RESERVED_IDENTIFIERS,
    HIDE_UNKNOWN_TENANTS,
    POOL_MAX_CONNECTIONS,
    POOL_RESET_ON_RELEASE,
    CONNECTION_BUDGET,
    TENANT_POOL_MAX_CONNECTIONS,
    ACQUIRE_TIMEOUT_SECONDS,
    STATEMENT_TIMEOUT_MS,
    TENANT_CONCURRENCY_LIMIT,
    SQLITE_DATA_DIR,
    MIGRATIONS_DIR,
    DATABASE_SERVERS,
);

// ---------------------------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------------------------

/// The configuration of the whole toolkit. Each field's environment variable is `TENANCY_` +
/// the field name in upper case.
///
/// `Debug` never shows a secret.
///
/// ```
/// use tenancy_core::IsolationMode;
/// use tenancy_core::config::{ResolutionStrategy, TenancyConfig};
///
/// let config = TenancyConfig::builder()
///     .database_url("postgres://app:s3cret@db:5432/app")
///     .resolution_strategy(ResolutionStrategy::Subdomain)
///     .domain_suffix("example.com")
///     .build()?;
/// assert_eq!(config.effective_isolation(), IsolationMode::Schema);
/// assert!(!format!("{config:?}").contains("s3cret"));
///
/// let err = TenancyConfig::builder()
///     .resolution_strategy(ResolutionStrategy::Subdomain)
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().contains("TENANCY_DOMAIN_SUFFIX is not set"));
/// # Ok::<(), tenancy_core::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenancyConfig {
    /// Registry and runtime database: `postgres://`, `postgresql://`, `mysql://`, `mariadb://`
    /// or `sqlite:` (`sqlite://path`, `sqlite::memory:`). Default: none.
    pub database_url: Option<SecretUrl>,
    /// Role for DDL, provisioning and migrations; same backend as `database_url`. Default: none
    /// (`database_url` is used).
    pub admin_database_url: Option<SecretUrl>,
    /// Isolation mode; `schema`, `rls` and `hybrid` need PostgreSQL. Default: none, see
    /// [`Self::effective_isolation`].
    pub isolation_strategy: Option<IsolationMode>,
    /// Where requests name their tenant: `header`, `subdomain`, `path` or `jwt`. Default: header.
    pub resolution_strategy: ResolutionStrategy,
    /// Header carrying the tenant identifier (an HTTP token). Default: `X-Tenant-ID`.
    pub tenant_header_name: String,
    /// Domain under which subdomains name tenants, lowercase, without leading dot; required
    /// with subdomain resolution. Default: none.
    pub domain_suffix: Option<String>,
    /// Proxies whose forwarding headers are believed; env: comma list of IPs or CIDRs (a bare
    /// IP is a /32 or /128). Default: empty.
    pub trusted_proxies: Vec<IpNet>,
    /// Path prefix for path resolution: `/seg[/seg...]`, segments of `[A-Za-z0-9_-]`.
    /// Default: `/tenants`.
    pub path_prefix: String,
    /// Paths served without a tenant; env: comma list, each starting with `/`.
    /// Default: `/health`, `/metrics`.
    pub excluded_paths: Vec<String>,
    /// HS256 signing key, at least 32 bytes; required for jwt resolution with HS256, refused
    /// with RS256/ES256. Default: none.
    pub jwt_secret: Option<Secret>,
    /// Token signature algorithm: `HS256`, `RS256` or `ES256` (any case). Default: HS256.
    pub jwt_algorithm: JwtAlgorithm,
    /// Claim holding the tenant identifier. Default: `tenant_id`.
    pub jwt_tenant_claim: String,
    /// Required `aud` of tokens. Default: none (not checked).
    pub jwt_audience: Option<String>,
    /// Required `iss` of tokens. Default: none (not checked).
    pub jwt_issuer: Option<String>,
    /// Clock skew allowed on `exp`/`nbf`, at most 600 seconds. Default: 30.
    pub jwt_leeway_seconds: u64,
    /// PEM public key for RS256/ES256 (one key source at most). Default: none.
    pub jwt_public_key_path: Option<PathBuf>,
    /// JWKS file for RS256/ES256 (one key source at most). Default: none.
    pub jwt_jwks_path: Option<PathBuf>,
    /// JWKS URL for RS256/ES256: `https://`, or `http://` to localhost only (one key source at
    /// most). Default: none.
    pub jwt_jwks_url: Option<String>,
    /// How often the JWKS URL is fetched again, at least 1 second. Default: 300.
    pub jwt_jwks_refresh_seconds: u64,
    /// Redis for shared cache and rate limits: `redis://` or `rediss://`. Default: none.
    pub redis_url: Option<SecretUrl>,
    /// Prefix of every Redis key: 1 to 64 printable ASCII characters, no spaces.
    /// Default: `tenancy:`.
    pub redis_key_prefix: String,
    /// How long a found tenant stays cached. Default: 60.
    pub cache_ttl_seconds: u64,
    /// Most tenants kept in the in-process cache. Default: 10000.
    pub cache_max_entries: u64,
    /// How long "no such tenant" stays cached; at most `cache_ttl_seconds`. Default: 5.
    pub negative_cache_ttl_seconds: u64,
    /// Whether per-tenant rate limiting is on; env: true/false/1/0/yes/no/on/off. Default: false.
    pub enable_rate_limiting: bool,
    /// Requests allowed per tenant and window, at least 1. Default: 100.
    pub rate_limit_per_minute: u32,
    /// Rate limit window, 1 to 86400 seconds. Default: 60.
    pub rate_limit_window_seconds: u64,
    /// Whether requests pass when the rate limiter's store is unreachable. Default: true.
    pub rate_limit_fail_open: bool,
    /// Prefix of tenant schemas (`[a-z_][a-z0-9_]*`, at most 32 bytes). Default: `tenant_`.
    pub schema_prefix: String,
    /// Prefix of tenant databases (`[a-z_][a-z0-9_]*`, at most 32 bytes). Default: `tenant_`.
    pub database_prefix: String,
    /// Extra schema appended to the tenant `search_path`: `[a-z_][a-z0-9_]*`, at most 63
    /// bytes, not `pg_*` or `information_schema`. Default: none.
    pub shared_schema: Option<String>,
    /// PostgreSQL setting holding the tenant for row-level security: `part.part`, each
    /// `[a-z_][a-z0-9_]*`. Default: `app.tenant_id`.
    pub rls_setting: String,
    /// Tenant column of shared tables (`[a-z_][a-z0-9_]*`, at most 63 bytes). Default: `tenant_id`.
    pub rls_tenant_column: String,
    /// Isolation per tier in hybrid mode (`schema`, `rls` or `database`); env:
    /// `premium=schema,standard=rls`. Default: premium=schema, standard=rls.
    pub hybrid_tier_isolation: Vec<(String, IsolationMode)>,
    /// Isolation of tiers missing from `hybrid_tier_isolation` (not `hybrid`). Default: rls.
    pub hybrid_default_isolation: IsolationMode,
    /// Identifiers no tenant may take, besides the built-in ones; env: comma list of
    /// `[a-z0-9-]` names. Default: empty.
    pub reserved_identifiers: Vec<String>,
    /// Answer unknown and malformed identifiers alike, so tenants cannot be enumerated.
    /// Default: false.
    pub hide_unknown_tenants: bool,
    /// Size of the main pool, 1 to 10000. Default: 10.
    pub pool_max_connections: u32,
    /// Whether the PostgreSQL runtime pool resets session settings and checks for an open
    /// transaction when a connection goes back (one more round trip per request, off the
    /// request path). Tenant transactions are scoped transaction-locally either way; the reset
    /// protects plain (non-tenant) use of the runtime pool from session-level `SET`s that user
    /// code ran in a tenant transaction. Default: true.
    pub pool_reset_on_release: bool,
    /// Connections all tenant pools together may have open, idle ones included; at least
    /// `tenant_pool_max_connections`. Default: 50.
    pub connection_budget: u32,
    /// Size of each tenant pool (database-per-tenant), at least 1. Default: 5.
    pub tenant_pool_max_connections: u32,
    /// How long to wait for a pooled connection, at least 1 second. Default: 5.
    pub acquire_timeout_seconds: u64,
    /// Statement timeout set per transaction, at least 1 ms. Default: none (no timeout).
    pub statement_timeout_ms: Option<u64>,
    /// Concurrent requests per tenant; less than `pool_max_connections`. Default: none (no limit).
    pub tenant_concurrency_limit: Option<u32>,
    /// Directory of the SQLite files of database-per-tenant. Default: `./data`.
    pub sqlite_data_dir: PathBuf,
    /// Directory of tenant migrations. Default: none.
    pub migrations_dir: Option<PathBuf>,
    /// Named servers for database-per-tenant placement, same backend as `database_url`; env:
    /// `name1=postgres://...,name2=postgres://...` (URLs must not contain commas). A tenant whose
    /// placement names a server has its database there; the server's URL serves both requests
    /// and the creation, migration and removal of tenant databases on it. Default: empty.
    pub database_servers: Vec<(String, SecretUrl)>,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            admin_database_url: None,
            isolation_strategy: None,
            resolution_strategy: ResolutionStrategy::Header,
            tenant_header_name: "X-Tenant-ID".to_owned(),
            domain_suffix: None,
            trusted_proxies: Vec::new(),
            path_prefix: "/tenants".to_owned(),
            excluded_paths: vec!["/health".to_owned(), "/metrics".to_owned()],
            jwt_secret: None,
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_tenant_claim: "tenant_id".to_owned(),
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway_seconds: 30,
            jwt_public_key_path: None,
            jwt_jwks_path: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_seconds: 300,
            redis_url: None,
            redis_key_prefix: "tenancy:".to_owned(),
            cache_ttl_seconds: 60,
            cache_max_entries: 10_000,
            negative_cache_ttl_seconds: 5,
            enable_rate_limiting: false,
            rate_limit_per_minute: 100,
            rate_limit_window_seconds: 60,
            rate_limit_fail_open: true,
            schema_prefix: "tenant_".to_owned(),
            database_prefix: "tenant_".to_owned(),
            shared_schema: None,
            rls_setting: "app.tenant_id".to_owned(),
            rls_tenant_column: "tenant_id".to_owned(),
            hybrid_tier_isolation: vec![
                ("premium".to_owned(), IsolationMode::Schema),
                ("standard".to_owned(), IsolationMode::Rls),
            ],
            hybrid_default_isolation: IsolationMode::Rls,
            reserved_identifiers: Vec::new(),
            hide_unknown_tenants: false,
            pool_max_connections: 10,
            pool_reset_on_release: true,
            connection_budget: 50,
            tenant_pool_max_connections: 5,
            acquire_timeout_seconds: 5,
            statement_timeout_ms: None,
            tenant_concurrency_limit: None,
            sqlite_data_dir: PathBuf::from("./data"),
            migrations_dir: None,
            database_servers: Vec::new(),
        }
    }
}

impl TenancyConfig {
    /// Every environment variable read, in field order.
    pub const VARIABLES: &'static [&'static str] = var::ALL;

    /// A builder starting from the defaults.
    pub fn builder() -> TenancyConfigBuilder {
        TenancyConfigBuilder::default()
    }

    /// A builder starting from this configuration (e.g. to override settings read from the
    /// environment).
    pub fn into_builder(self) -> TenancyConfigBuilder {
        TenancyConfigBuilder { config: self }
    }

    /// The backend of `database_url`.
    pub fn database_backend(&self) -> Option<Backend> {
        self.database_url.as_ref().and_then(SecretUrl::backend)
    }

    /// The URL for DDL, provisioning and migrations: `admin_database_url`, else `database_url`.
    pub fn admin_url(&self) -> Option<&SecretUrl> {
        self.admin_database_url
            .as_ref()
            .or(self.database_url.as_ref())
    }

    /// The configured isolation mode, else schema for PostgreSQL and database otherwise (also
    /// when no database is configured).
    pub fn effective_isolation(&self) -> IsolationMode {
        self.isolation_strategy
            .unwrap_or(match self.database_backend() {
                Some(Backend::Postgres) => IsolationMode::Schema,
                _ => IsolationMode::Database,
            })
    }

    /// The isolation mode of `tenant`. In hybrid mode: the tenant's override, else its tier's
    /// mode, else `hybrid_default_isolation`; otherwise [`Self::effective_isolation`].
    pub fn isolation_for(&self, tenant: &Tenant) -> IsolationMode {
        let effective = self.effective_isolation();
        if effective != IsolationMode::Hybrid {
            return effective;
        }
        tenant
            .isolation
            .filter(|mode| *mode != IsolationMode::Hybrid)
            .or_else(|| {
                self.hybrid_tier_isolation
                    .iter()
                    .find(|(tier, _)| *tier == tenant.tier)
                    .map(|(_, mode)| *mode)
            })
            .unwrap_or(self.hybrid_default_isolation)
    }

    /// The identifier policy with the configured reserved identifiers.
    pub fn identifier_policy(&self) -> IdentifierPolicy {
        IdentifierPolicy::new(&self.reserved_identifiers)
    }

    /// Whether `ip` belongs to a trusted proxy.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The URL of the named database server.
    pub fn database_server(&self, name: &str) -> Option<&SecretUrl> {
        self.database_servers
            .iter()
            .find(|(server, _)| server == name)
            .map(|(_, url)| url)
    }

    /// `cache_ttl_seconds` as a duration.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_seconds)
    }

    /// `negative_cache_ttl_seconds` as a duration.
    pub fn negative_cache_ttl(&self) -> Duration {
        Duration::from_secs(self.negative_cache_ttl_seconds)
    }

    /// `jwt_leeway_seconds` as a duration.
    pub fn jwt_leeway(&self) -> Duration {
        Duration::from_secs(self.jwt_leeway_seconds)
    }

    /// `jwt_jwks_refresh_seconds` as a duration.
    pub fn jwt_jwks_refresh(&self) -> Duration {
        Duration::from_secs(self.jwt_jwks_refresh_seconds)
    }

    /// `rate_limit_window_seconds` as a duration.
    pub fn rate_limit_window(&self) -> Duration {
        Duration::from_secs(self.rate_limit_window_seconds)
    }

    /// `acquire_timeout_seconds` as a duration.
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.acquire_timeout_seconds)
    }

    /// `statement_timeout_ms` as a duration.
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout_ms.map(Duration::from_millis)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the environment
// ---------------------------------------------------------------------------------------------

impl TenancyConfig {
    /// Reads the `TENANCY_*` variables of the process environment; see [`Self::from_vars`].
    /// A known variable whose value is not UTF-8 is reported as invalid (never a panic).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_with_app_variables(&[])
    }

    /// Like [`Self::from_env`], for an application that keeps variables of its own under the
    /// `TENANCY_` prefix (`app_variables`): those are left to it, without the warning given for
    /// unknown names.
    pub fn from_env_with_app_variables(app_variables: &[&str]) -> Result<Self, ConfigError> {
        Self::from_env_over(Self::default(), app_variables)
    }

    /// Like [`Self::from_env_with_app_variables`], starting from `defaults` instead of
    /// [`TenancyConfig::default`]: an application's own defaults, which the environment still
    /// overrides; see [`Self::from_vars_over`].
    pub fn from_env_over(defaults: Self, app_variables: &[&str]) -> Result<Self, ConfigError> {
        let mut problems = Problems::default();
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name
                .to_str()
                .filter(|name| name.starts_with(PREFIX) && !app_variables.contains(name))
            else {
                continue;
            };
            match value.into_string() {
                Ok(value) => vars.push((name.to_owned(), value)),
                Err(_) => {
                    if let Some(&variable) = var::ALL.iter().find(|known| **known == name) {
                        problems.invalid(variable, "<not UTF-8>", "expected UTF-8 text");
                    }
                }
            }
        }
        Self::load(defaults, vars, problems)
    }

    /// Reads a configuration from `(name, value)` pairs, then validates it.
    ///
    /// Names not starting with `TENANCY_` are ignored, and so are unknown `TENANCY_*` names
    /// (with a warning in the log). Values are trimmed; empty values count as unset. List
    /// values replace the default list. Every problem is reported, each naming its variable.
    ///
    /// ```
    /// use tenancy_core::IsolationMode;
    /// use tenancy_core::config::TenancyConfig;
    ///
    /// let config = TenancyConfig::from_vars([
    ///     ("TENANCY_DATABASE_URL", "mysql://app:s3cret@db/app"),
    ///     ("TENANCY_RATE_LIMIT_PER_MINUTE", "600"),
    ///     ("HOME", "/root"),
    /// ])?;
    /// assert_eq!(config.effective_isolation(), IsolationMode::Database);
    /// assert_eq!(config.rate_limit_per_minute, 600);
    ///
    /// let err = TenancyConfig::from_vars([("TENANCY_ISOLATION_STRATEGY", "tables")]).unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "invalid tenancy configuration: TENANCY_ISOLATION_STRATEGY='tables' is invalid: \
    ///      expected one of schema, rls, database, hybrid"
    /// );
    /// # Ok::<(), tenancy_core::config::ConfigError>(())
    /// ```
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        Self::from_vars_over(Self::default(), vars)
    }

    /// Like [`Self::from_vars`], starting from `defaults`: each variable set overrides its
    /// field, the others keep the application's default. The result is validated as a whole.
    ///
    /// ```
    /// use tenancy_core::config::TenancyConfig;
    ///
    /// let defaults = TenancyConfig::builder().pool_reset_on_release(false).build()?;
    /// let config = TenancyConfig::from_vars_over(defaults.clone(), [("HOME", "/root")])?;
    /// assert!(!config.pool_reset_on_release);
    /// let config =
    ///     TenancyConfig::from_vars_over(defaults, [("TENANCY_POOL_RESET_ON_RELEASE", "true")])?;
    /// assert!(config.pool_reset_on_release);
    /// # Ok::<(), tenancy_core::config::ConfigError>(())
    /// ```
    pub fn from_vars_over<I, K, V>(defaults: Self, vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        Self::load(defaults, vars, Problems::default())
    }

    fn load<I, K, V>(defaults: Self, vars: I, mut problems: Problems) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut config = defaults;
        for (name, value) in vars {
            let (name, value) = (name.as_ref(), value.as_ref().trim());
            if !name.starts_with(PREFIX) || value.is_empty() {
                continue;
            }
            let Some(&variable) = var::ALL.iter().find(|known| **known == name) else {
                tracing::warn!(
                    variable = name,
                    "ignoring unknown TENANCY_ environment variable"
                );
                continue;
            };
            if let Err(problem) = config.apply_var(variable, value) {
                problems.0.push(problem);
            }
        }
        config.check(&mut problems);
        problems.into_result().map(|()| config)
    }

    /// Sets the field of `name` (one of [`Self::VARIABLES`]) from `value`. Only type conversion
    /// happens here; every rule lives in [`Self::check`], so code-built configurations get the
    /// same validation.
    fn apply_var(&mut self, name: &'static str, value: &str) -> Result<(), FieldProblem> {
        match name {
            var::DATABASE_URL => self.database_url = Some(SecretUrl::new(value)),
            var::ADMIN_DATABASE_URL => self.admin_database_url = Some(SecretUrl::new(value)),
            var::ISOLATION_STRATEGY => self.isolation_strategy = Some(parse_choice(name, value)?),
            var::RESOLUTION_STRATEGY => self.resolution_strategy = parse_choice(name, value)?,
            var::TENANT_HEADER_NAME => self.tenant_header_name = value.to_owned(),
            var::DOMAIN_SUFFIX => self.domain_suffix = Some(normalize_domain_suffix(value)),
            var::TRUSTED_PROXIES => {
                self.trusted_proxies = list(value)
                    .map(|item| parse_proxy(name, item))
                    .collect::<Result<_, _>>()?;
            }
            var::PATH_PREFIX => self.path_prefix = value.to_owned(),
            var::EXCLUDED_PATHS => self.excluded_paths = list(value).map(str::to_owned).collect(),
            var::JWT_SECRET => self.jwt_secret = Some(Secret::new(value)),
            var::JWT_ALGORITHM => self.jwt_algorithm = parse_choice(name, value)?,
            var::JWT_TENANT_CLAIM => self.jwt_tenant_claim = value.to_owned(),
            var::JWT_AUDIENCE => self.jwt_audience = Some(value.to_owned()),
            var::JWT_ISSUER => self.jwt_issuer = Some(value.to_owned()),
            var::JWT_LEEWAY_SECONDS => self.jwt_leeway_seconds = parse_number(name, value)?,
            var::JWT_PUBLIC_KEY_PATH => self.jwt_public_key_path = Some(PathBuf::from(value)),
            var::JWT_JWKS_PATH => self.jwt_jwks_path = Some(PathBuf::from(value)),
            var::JWT_JWKS_URL => self.jwt_jwks_url = Some(value.to_owned()),
            var::JWT_JWKS_REFRESH_SECONDS => {
                self.jwt_jwks_refresh_seconds = parse_number(name, value)?;
            }
            var::REDIS_URL => self.redis_url = Some(SecretUrl::new(value)),
            var::REDIS_KEY_PREFIX => self.redis_key_prefix = value.to_owned(),
            var::CACHE_TTL_SECONDS => self.cache_ttl_seconds = parse_number(name, value)?,
            var::CACHE_MAX_ENTRIES => self.cache_max_entries = parse_number(name, value)?,
            var::NEGATIVE_CACHE_TTL_SECONDS => {
                self.negative_cache_ttl_seconds = parse_number(name, value)?;
            }
            var::ENABLE_RATE_LIMITING => self.enable_rate_limiting = parse_bool(name, value)?,
            var::RATE_LIMIT_PER_MINUTE => self.rate_limit_per_minute = parse_number(name, value)?,
            var::RATE_LIMIT_WINDOW_SECONDS => {
                self.rate_limit_window_seconds = parse_number(name, value)?;
            }
            var::RATE_LIMIT_FAIL_OPEN => self.rate_limit_fail_open = parse_bool(name, value)?,
            var::SCHEMA_PREFIX => self.schema_prefix = value.to_owned(),
            var::DATABASE_PREFIX => self.database_prefix = value.to_owned(),
            var::SHARED_SCHEMA => self.shared_schema = Some(value.to_owned()),
            var::RLS_SETTING => self.rls_setting = value.to_owned(),
            var::RLS_TENANT_COLUMN => self.rls_tenant_column = value.to_owned(),
            var::HYBRID_TIER_ISOLATION => {
                self.hybrid_tier_isolation = list(value)
                    .map(|item| parse_tier_isolation(name, item))
                    .collect::<Result<_, _>>()?;
            }
            var::HYBRID_DEFAULT_ISOLATION => {
                self.hybrid_default_isolation = parse_choice(name, value)?;
            }
            var::RESERVED_IDENTIFIERS => {
                self.reserved_identifiers = list(value).map(str::to_owned).collect();
            }
            var::HIDE_UNKNOWN_TENANTS => self.hide_unknown_tenants = parse_bool(name, value)?,
            var::POOL_MAX_CONNECTIONS => self.pool_max_connections = parse_number(name, value)?,
            var::POOL_RESET_ON_RELEASE => self.pool_reset_on_release = parse_bool(name, value)?,
            var::CONNECTION_BUDGET => self.connection_budget = parse_number(name, value)?,
            var::TENANT_POOL_MAX_CONNECTIONS => {
                self.tenant_pool_max_connections = parse_number(name, value)?;
            }
            var::ACQUIRE_TIMEOUT_SECONDS => {
                self.acquire_timeout_seconds = parse_number(name, value)?;
            }
            var::STATEMENT_TIMEOUT_MS => {
                self.statement_timeout_ms = Some(parse_number(name, value)?);
            }
            var::TENANT_CONCURRENCY_LIMIT => {
                self.tenant_concurrency_limit = Some(parse_number(name, value)?);
            }
            var::SQLITE_DATA_DIR => self.sqlite_data_dir = PathBuf::from(value),
            var::MIGRATIONS_DIR => self.migrations_dir = Some(PathBuf::from(value)),
            var::DATABASE_SERVERS => {
                self.database_servers = list(value)
                    .map(|item| parse_server(name, item))
                    .collect::<Result<_, _>>()?;
            }
            // Callers pass a name from `var::ALL`, and every one of those has an arm above.
            _ => {}
        }
        Ok(())
    }
}

/// The non-empty, trimmed items of a comma list.
fn list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

fn parse_choice<T: FromStr<Err = UnknownValue>>(
    variable: &'static str,
    value: &str,
) -> Result<T, FieldProblem> {
    value
        .to_ascii_lowercase()
        .parse()
        .map_err(|err: UnknownValue| {
            FieldProblem::invalid(variable, value, format!("expected one of {}", err.allowed))
        })
}

fn parse_number<T: FromStr>(variable: &'static str, value: &str) -> Result<T, FieldProblem> {
    value
        .parse()
        .map_err(|_| FieldProblem::invalid(variable, value, "expected a non-negative whole number"))
}

fn parse_bool(variable: &'static str, value: &str) -> Result<bool, FieldProblem> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(FieldProblem::invalid(
            variable,
            value,
            "expected true/false, 1/0, yes/no or on/off",
        )),
    }
}

fn parse_proxy(variable: &'static str, item: &str) -> Result<IpNet, FieldProblem> {
    item.parse::<IpNet>()
        .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            FieldProblem::invalid(
                variable,
                item,
                "expected a comma-separated list of IP addresses or CIDR networks",
            )
        })
}

fn parse_tier_isolation(
    variable: &'static str,
    item: &str,
) -> Result<(String, IsolationMode), FieldProblem> {
    let expected = "expected comma-separated tier=mode pairs with mode one of schema, rls, \
                    database (e.g. premium=schema,standard=rls)";
    let (tier, mode) = item
        .split_once('=')
        .ok_or_else(|| FieldProblem::invalid(variable, item, expected))?;
    let mode = mode
        .trim()
        .to_ascii_lowercase()
        .parse()
        .map_err(|_| FieldProblem::invalid(variable, item, expected))?;
    Ok((tier.trim().to_owned(), mode))
}

fn parse_server(variable: &'static str, item: &str) -> Result<(String, SecretUrl), FieldProblem> {
    match item.split_once('=') {
        Some((name, url)) if !name.contains(':') => {
            Ok((name.trim().to_owned(), SecretUrl::new(url.trim())))
        }
        _ => Err(FieldProblem::invalid(
            variable,
            &mask_url(item),
            "expected comma-separated name=url pairs (e.g. eu=postgres://host/db)",
        )),
    }
}

fn normalize_domain_suffix(suffix: &str) -> String {
    suffix
        .strip_prefix('.')
        .unwrap_or(suffix)
        .to_ascii_lowercase()
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

const DATABASE_URL_EXPECTED: &str =
    "expected a URL starting with postgres://, postgresql://, mysql://, mariadb:// or sqlite:";
const SQL_NAME_EXPECTED: &str = "expected [a-z_][a-z0-9_]*, at most 63 bytes";
const MAX_JWT_LEEWAY_SECONDS: u64 = 600;

impl TenancyConfig {
    /// Checks every rule; [`TenancyConfigBuilder::build`] and [`Self::from_vars`] call it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        self.check(&mut problems);
        problems.into_result()
    }

    fn check(&self, out: &mut Problems) {
        self.check_databases(out);
        self.check_resolution(out);
        self.check_jwt(out);
        self.check_cache_and_limits(out);
        self.check_names(out);
        self.check_pools(out);
    }

    fn check_databases(&self, out: &mut Problems) {
        let urls = [
            (var::DATABASE_URL, &self.database_url),
            (var::ADMIN_DATABASE_URL, &self.admin_database_url),
        ];
        for (variable, url) in urls {
            if let Some(url) = url
                && (url.backend().is_none() || has_space_or_control(url.expose()))
            {
                out.invalid(variable, &url.masked(), DATABASE_URL_EXPECTED);
            }
        }
        let main = self.database_backend();
        if let (Some(main), Some(admin)) = (main, &self.admin_database_url)
            && admin.backend().is_some_and(|backend| backend != main)
        {
            out.invalid(
                var::ADMIN_DATABASE_URL,
                &admin.masked(),
                format!("expected the same backend as TENANCY_DATABASE_URL ({main})"),
            );
        }
        if let Some(mode) = self.isolation_strategy
            && mode != IsolationMode::Database
            && let Some(backend) = main.filter(|backend| *backend != Backend::Postgres)
        {
            out.invalid(
                var::ISOLATION_STRATEGY,
                mode.as_str(),
                format!(
                    "{mode} isolation needs PostgreSQL but TENANCY_DATABASE_URL is {backend}; \
                     expected database"
                ),
            );
        }
        let mut names = Vec::new();
        for (name, url) in &self.database_servers {
            if check_placement(name).is_err() {
                out.invalid(
                    var::DATABASE_SERVERS,
                    &mask_url(name),
                    "expected server names of 1 to 63 characters of a-z, 0-9, '-' or '_'",
                );
            } else if names.contains(&name) {
                out.invalid(
                    var::DATABASE_SERVERS,
                    name,
                    "each server name may appear only once",
                );
            }
            names.push(name);
            let shown = || format!("{}={}", mask_url(name), url.masked());
            match (url.backend(), main) {
                (None, _) => out.invalid(var::DATABASE_SERVERS, &shown(), DATABASE_URL_EXPECTED),
                (Some(backend), Some(main)) if backend != main => out.invalid(
                    var::DATABASE_SERVERS,
                    &shown(),
                    format!("expected the same backend as TENANCY_DATABASE_URL ({main})"),
                ),
                _ => {}
            }
        }
        if let Some(url) = &self.redis_url {
            let valid = url
                .expose()
                .split_once("://")
                .is_some_and(|(scheme, rest)| {
                    (scheme.eq_ignore_ascii_case("redis") || scheme.eq_ignore_ascii_case("rediss"))
                        && !rest.is_empty()
                });
            if !valid || has_space_or_control(url.expose()) {
                out.invalid(
                    var::REDIS_URL,
                    &url.masked(),
                    "expected a URL starting with redis:// or rediss://",
                );
            }
        }
    }

    fn check_resolution(&self, out: &mut Problems) {
        if !is_header_name(&self.tenant_header_name) {
            out.invalid(
                var::TENANT_HEADER_NAME,
                &self.tenant_header_name,
                "expected an HTTP header name of at most 128 bytes (letters, digits and \
                 !#$%&'*+-.^_`|~)",
            );
        }
        match &self.domain_suffix {
            Some(suffix) if !is_dns_suffix(suffix) => out.invalid(
                var::DOMAIN_SUFFIX,
                suffix,
                "expected a lowercase DNS name such as example.com (labels of a-z, 0-9, '-')",
            ),
            None if self.resolution_strategy == ResolutionStrategy::Subdomain => {
                out.missing(
                    var::DOMAIN_SUFFIX,
                    "required when TENANCY_RESOLUTION_STRATEGY is subdomain",
                );
            }
            _ => {}
        }
        if !is_path_prefix(&self.path_prefix) {
            out.invalid(
                var::PATH_PREFIX,
                &self.path_prefix,
                "expected '/' followed by '/'-separated segments of A-Z, a-z, 0-9, '_' or '-', \
                 without trailing '/'",
            );
        }
        for path in &self.excluded_paths {
            if !path.starts_with('/') || has_space_or_control(path) {
                out.invalid(
                    var::EXCLUDED_PATHS,
                    path,
                    "expected comma-separated paths, each starting with '/'",
                );
            }
        }
    }

    fn check_jwt(&self, out: &mut Problems) {
        let algorithm = self.jwt_algorithm;
        let symmetric = algorithm == JwtAlgorithm::HS256;
        let uses_jwt = self.resolution_strategy == ResolutionStrategy::Jwt;
        match &self.jwt_secret {
            Some(secret) => {
                if secret.expose().len() < 32 {
                    out.invalid(var::JWT_SECRET, MASK, "expected at least 32 bytes");
                }
                if !symmetric {
                    out.invalid(
                        var::JWT_SECRET,
                        MASK,
                        format!(
                            "must not be set with TENANCY_JWT_ALGORITHM={algorithm}, which \
                             verifies with a public key"
                        ),
                    );
                }
            }
            None if uses_jwt && symmetric => out.missing(
                var::JWT_SECRET,
                "required (at least 32 bytes) when TENANCY_RESOLUTION_STRATEGY is jwt with \
                 TENANCY_JWT_ALGORITHM=HS256",
            ),
            None => {}
        }
        let key_sources = [
            (
                var::JWT_PUBLIC_KEY_PATH,
                self.jwt_public_key_path
                    .as_ref()
                    .map(|p| p.display().to_string()),
            ),
            (
                var::JWT_JWKS_PATH,
                self.jwt_jwks_path.as_ref().map(|p| p.display().to_string()),
            ),
            (var::JWT_JWKS_URL, self.jwt_jwks_url.clone()),
        ];
        let set: Vec<_> = key_sources
            .iter()
            .filter_map(|(variable, value)| Some((*variable, value.as_deref()?)))
            .collect();
        for &(variable, value) in &set {
            if symmetric {
                out.invalid(
                    variable,
                    value,
                    "only used with RS256 or ES256, but TENANCY_JWT_ALGORITHM is HS256",
                );
            } else if set.len() > 1 {
                out.invalid(
                    variable,
                    value,
                    "expected only one of TENANCY_JWT_PUBLIC_KEY_PATH, TENANCY_JWT_JWKS_PATH \
                     and TENANCY_JWT_JWKS_URL",
                );
            } else if value.is_empty() {
                out.invalid(variable, value, "expected a non-empty value");
            }
        }
        if uses_jwt && !symmetric && set.is_empty() {
            out.missing(
                var::JWT_PUBLIC_KEY_PATH,
                format!(
                    "TENANCY_RESOLUTION_STRATEGY is jwt with TENANCY_JWT_ALGORITHM={algorithm}: \
                     set TENANCY_JWT_PUBLIC_KEY_PATH, TENANCY_JWT_JWKS_PATH or \
                     TENANCY_JWT_JWKS_URL"
                ),
            );
        }
        if let Some(url) = &self.jwt_jwks_url
            && !is_jwks_url(url)
        {
            out.invalid(
                var::JWT_JWKS_URL,
                url,
                "expected an https:// URL (http:// only for localhost)",
            );
        }
        let claim = &self.jwt_tenant_claim;
        if claim.is_empty() || claim.len() > 128 || has_space_or_control(claim) {
            out.invalid(
                var::JWT_TENANT_CLAIM,
                claim,
                "expected a claim name of 1 to 128 bytes without spaces",
            );
        }
        for (variable, value) in [
            (var::JWT_AUDIENCE, &self.jwt_audience),
            (var::JWT_ISSUER, &self.jwt_issuer),
        ] {
            if let Some(value) = value
                && (value.is_empty() || value.chars().any(char::is_control))
            {
                out.invalid(
                    variable,
                    value,
                    "expected non-empty text without control characters",
                );
            }
        }
        if self.jwt_leeway_seconds > MAX_JWT_LEEWAY_SECONDS {
            out.invalid(
                var::JWT_LEEWAY_SECONDS,
                &self.jwt_leeway_seconds.to_string(),
                format!("expected at most {MAX_JWT_LEEWAY_SECONDS} seconds"),
            );
        }
        if self.jwt_jwks_refresh_seconds == 0 {
            out.invalid(
                var::JWT_JWKS_REFRESH_SECONDS,
                "0",
                "expected at least 1 second",
            );
        }
    }

    fn check_cache_and_limits(&self, out: &mut Problems) {
        let prefix = &self.redis_key_prefix;
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            out.invalid(
                var::REDIS_KEY_PREFIX,
                prefix,
                "expected 1 to 64 printable ASCII characters without spaces",
            );
        }
        if self.negative_cache_ttl_seconds > self.cache_ttl_seconds {
            out.invalid(
                var::NEGATIVE_CACHE_TTL_SECONDS,
                &self.negative_cache_ttl_seconds.to_string(),
                format!(
                    "expected at most TENANCY_CACHE_TTL_SECONDS ({})",
                    self.cache_ttl_seconds
                ),
            );
        }
        if self.rate_limit_per_minute == 0 {
            out.invalid(var::RATE_LIMIT_PER_MINUTE, "0", "expected at least 1");
        }
        if !(1..=86_400).contains(&self.rate_limit_window_seconds) {
            out.invalid(
                var::RATE_LIMIT_WINDOW_SECONDS,
                &self.rate_limit_window_seconds.to_string(),
                "expected 1 to 86400 seconds",
            );
        }
    }

    fn check_names(&self, out: &mut Problems) {
        for (variable, prefix) in [
            (var::SCHEMA_PREFIX, &self.schema_prefix),
            (var::DATABASE_PREFIX, &self.database_prefix),
        ] {
            if check_prefix(prefix).is_err() {
                out.invalid(
                    variable,
                    prefix,
                    "expected [a-z_][a-z0-9_]*, at most 32 bytes",
                );
            }
        }
        if let Some(schema) = &self.shared_schema
            && (!is_sql_name(schema) || schema.starts_with("pg_") || schema == "information_schema")
        {
            out.invalid(
                var::SHARED_SCHEMA,
                schema,
                format!("{SQL_NAME_EXPECTED}, not pg_* or information_schema"),
            );
        }
        let setting_ok = self
            .rls_setting
            .split_once('.')
            .is_some_and(|(namespace, name)| is_sql_name(namespace) && is_sql_name(name));
        if !setting_ok {
            out.invalid(
                var::RLS_SETTING,
                &self.rls_setting,
                "expected <namespace>.<name>, each [a-z_][a-z0-9_]* (e.g. app.tenant_id)",
            );
        }
        if !is_sql_name(&self.rls_tenant_column) {
            out.invalid(
                var::RLS_TENANT_COLUMN,
                &self.rls_tenant_column,
                SQL_NAME_EXPECTED,
            );
        }
        let mut tiers = Vec::new();
        for (tier, mode) in &self.hybrid_tier_isolation {
            if let Err(err) = check_tier(tier) {
                out.invalid(
                    var::HYBRID_TIER_ISOLATION,
                    tier,
                    format!("expected valid tiers: {err}"),
                );
            } else if tiers.contains(&tier) {
                out.invalid(
                    var::HYBRID_TIER_ISOLATION,
                    tier,
                    "each tier may appear only once",
                );
            }
            tiers.push(tier);
            if *mode == IsolationMode::Hybrid {
                out.invalid(
                    var::HYBRID_TIER_ISOLATION,
                    &format!("{tier}={mode}"),
                    "expected each tier's mode to be one of schema, rls, database",
                );
            }
        }
        if self.hybrid_default_isolation == IsolationMode::Hybrid {
            out.invalid(
                var::HYBRID_DEFAULT_ISOLATION,
                IsolationMode::Hybrid.as_str(),
                "expected one of schema, rls, database",
            );
        }
        for reserved in &self.reserved_identifiers {
            let valid = (1..=63).contains(&reserved.len())
                && reserved
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                out.invalid(
                    var::RESERVED_IDENTIFIERS,
                    reserved,
                    "expected comma-separated identifiers of a-z, 0-9 and '-' (at most 63)",
                );
            }
        }
    }

    fn check_pools(&self, out: &mut Problems) {
        if !(1..=10_000).contains(&self.pool_max_connections) {
            out.invalid(
                var::POOL_MAX_CONNECTIONS,
                &self.pool_max_connections.to_string(),
                "expected 1 to 10000",
            );
        }
        if self.tenant_pool_max_connections == 0 {
            out.invalid(var::TENANT_POOL_MAX_CONNECTIONS, "0", "expected at least 1");
        }
        if self.connection_budget < self.tenant_pool_max_connections {
            out.invalid(
                var::CONNECTION_BUDGET,
                &self.connection_budget.to_string(),
                format!(
                    "expected at least TENANCY_TENANT_POOL_MAX_CONNECTIONS ({})",
                    self.tenant_pool_max_connections
                ),
            );
        }
        if self.acquire_timeout_seconds == 0 {
            out.invalid(
                var::ACQUIRE_TIMEOUT_SECONDS,
                "0",
                "expected at least 1 second",
            );
        }
        if self.statement_timeout_ms == Some(0) {
            out.invalid(
                var::STATEMENT_TIMEOUT_MS,
                "0",
                "expected at least 1 millisecond (leave unset for no timeout)",
            );
        }
        if let Some(limit) = self.tenant_concurrency_limit
            && (limit == 0 || limit >= self.pool_max_connections)
        {
            out.invalid(
                var::TENANT_CONCURRENCY_LIMIT,
                &limit.to_string(),
                format!(
                    "expected at least 1 and less than TENANCY_POOL_MAX_CONNECTIONS ({})",
                    self.pool_max_connections
                ),
            );
        }
        for (variable, path) in [
            (var::SQLITE_DATA_DIR, Some(&self.sqlite_data_dir)),
            (var::MIGRATIONS_DIR, self.migrations_dir.as_ref()),
        ] {
            if path.is_some_and(|path| path.as_os_str().is_empty()) {
                out.invalid(variable, "", "expected a non-empty path");
            }
        }
    }
}

fn has_space_or_control(value: &str) -> bool {
    value.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// An RFC 9110 token.
fn is_header_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_dns_suffix(suffix: &str) -> bool {
    suffix.len() <= 253
        && suffix.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn is_path_prefix(prefix: &str) -> bool {
    prefix.strip_prefix('/').is_some_and(|rest| {
        rest.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
    })
}

/// `[a-z_][a-z0-9_]*`, 1 to 63 bytes.
fn is_sql_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().enumerate().all(|(index, b)| {
            b.is_ascii_lowercase() || b == b'_' || (index > 0 && b.is_ascii_digit())
        })
}

/// `https://host...`, or `http://` to a loopback name.
fn is_jwks_url(url: &str) -> bool {
    if has_space_or_control(url) {
        return false;
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if scheme.eq_ignore_ascii_case("https") {
        return !authority.is_empty();
    }
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    scheme.eq_ignore_ascii_case("http") && ["localhost", "127.0.0.1", "::1"].contains(&host)
}

// ---------------------------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------------------------

/// Builds a [`TenancyConfig`] in code, starting from the defaults; [`Self::build`] applies the
/// same validation as [`TenancyConfig::from_vars`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct TenancyConfigBuilder {
    config: TenancyConfig,
}

macro_rules! setters {
    ($($field:ident($arg:ident: $ty:ty) => $value:expr;)*) => {$(
        #[doc = concat!("Sets [`TenancyConfig::", stringify!($field), "`].")]
        pub fn $field(mut self, $arg: $ty) -> Self {
            self.config.$field = $value;
            self
        }
    )*};
}

impl TenancyConfigBuilder {
    setters! {
        database_url(url: impl Into<SecretUrl>) => Some(url.into());
        admin_database_url(url: impl Into<SecretUrl>) => Some(url.into());
        isolation_strategy(mode: IsolationMode) => Some(mode);
        resolution_strategy(strategy: ResolutionStrategy) => strategy;
        tenant_header_name(name: impl Into<String>) => name.into();
        domain_suffix(suffix: impl AsRef<str>) => Some(normalize_domain_suffix(suffix.as_ref()));
        trusted_proxies(proxies: impl IntoIterator<Item = IpNet>) => proxies.into_iter().collect();
        path_prefix(prefix: impl Into<String>) => prefix.into();
        excluded_paths(paths: impl IntoIterator<Item = impl Into<String>>) =>
            paths.into_iter().map(Into::into).collect();
        jwt_secret(secret: impl Into<Secret>) => Some(secret.into());
        jwt_algorithm(algorithm: JwtAlgorithm) => algorithm;
        jwt_tenant_claim(claim: impl Into<String>) => claim.into();
        jwt_audience(audience: impl Into<String>) => Some(audience.into());
        jwt_issuer(issuer: impl Into<String>) => Some(issuer.into());
        jwt_leeway_seconds(seconds: u64) => seconds;
        jwt_public_key_path(path: impl Into<PathBuf>) => Some(path.into());
        jwt_jwks_path(path: impl Into<PathBuf>) => Some(path.into());
        jwt_jwks_url(url: impl Into<String>) => Some(url.into());
        jwt_jwks_refresh_seconds(seconds: u64) => seconds;
        redis_url(url: impl Into<SecretUrl>) => Some(url.into());
        redis_key_prefix(prefix: impl Into<String>) => prefix.into();
        cache_ttl_seconds(seconds: u64) => seconds;
        cache_max_entries(entries: u64) => entries;
        negative_cache_ttl_seconds(seconds: u64) => seconds;
        enable_rate_limiting(enabled: bool) => enabled;
        rate_limit_per_minute(requests: u32) => requests;
        rate_limit_window_seconds(seconds: u64) => seconds;
        rate_limit_fail_open(fail_open: bool) => fail_open;
        schema_prefix(prefix: impl Into<String>) => prefix.into();
        database_prefix(prefix: impl Into<String>) => prefix.into();
        shared_schema(schema: impl Into<String>) => Some(schema.into());
        rls_setting(setting: impl Into<String>) => setting.into();
        rls_tenant_column(column: impl Into<String>) => column.into();
        hybrid_tier_isolation(
            tiers: impl IntoIterator<Item = (impl Into<String>, IsolationMode)>
        ) =>
            tiers.into_iter().map(|(tier, mode)| (tier.into(), mode)).collect();
        hybrid_default_isolation(mode: IsolationMode) => mode;
        reserved_identifiers(identifiers: impl IntoIterator<Item = impl Into<String>>) =>
            identifiers.into_iter().map(Into::into).collect();
        hide_unknown_tenants(hide: bool) => hide;
        pool_max_connections(connections: u32) => connections;
        pool_reset_on_release(reset: bool) => reset;
        connection_budget(connections: u32) => connections;
        tenant_pool_max_connections(connections: u32) => connections;
        acquire_timeout_seconds(seconds: u64) => seconds;
        statement_timeout_ms(milliseconds: u64) => Some(milliseconds);
        tenant_concurrency_limit(limit: u32) => Some(limit);
        sqlite_data_dir(dir: impl Into<PathBuf>) => dir.into();
        migrations_dir(dir: impl Into<PathBuf>) => Some(dir.into());
        database_servers(
            servers: impl IntoIterator<Item = (impl Into<String>, impl Into<SecretUrl>)>
        ) => servers.into_iter().map(|(name, url)| (name.into(), url.into())).collect();
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<TenancyConfig, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::identifier::{IdentifierError, TenantIdentifier};
    use crate::tenant::NewTenant;

    /// Every password and key in these tests contains this text; no message may show it.
    const HIDDEN: &str = "s3cret";
    const LONG_SECRET: &str = "s3cret-s3cret-s3cret-s3cret-s3cret";

    fn load(vars: &[(&str, &str)]) -> Result<TenancyConfig, ConfigError> {
        TenancyConfig::from_vars(vars.iter().copied())
    }

    fn problem_of(err: &ConfigError, variable: &str) -> String {
        err.problems()
            .iter()
            .find(|problem| problem.variable() == variable)
            .unwrap_or_else(|| panic!("no problem names {variable}: {err}"))
            .to_string()
    }

    #[test]
    fn defaults_are_as_documented() {
        let config = TenancyConfig::default();
        assert_eq!(config.database_url, None);
        assert_eq!(config.admin_database_url, None);
        assert_eq!(config.isolation_strategy, None);
        assert_eq!(config.resolution_strategy, ResolutionStrategy::Header);
        assert_eq!(config.tenant_header_name, "X-Tenant-ID");
        assert_eq!(config.domain_suffix, None);
        assert!(config.trusted_proxies.is_empty());
        assert_eq!(config.path_prefix, "/tenants");
        assert_eq!(config.excluded_paths, ["/health", "/metrics"]);
        assert_eq!(config.jwt_secret, None);
        assert_eq!(config.jwt_algorithm, JwtAlgorithm::HS256);
        assert_eq!(config.jwt_tenant_claim, "tenant_id");
        assert_eq!(
            (config.jwt_audience.as_ref(), config.jwt_issuer.as_ref()),
            (None, None)
        );
        assert_eq!(config.jwt_leeway(), Duration::from_secs(30));
        assert_eq!(config.jwt_public_key_path, None);
        assert_eq!(config.jwt_jwks_path, None);
        assert_eq!(config.jwt_jwks_url, None);
        assert_eq!(config.jwt_jwks_refresh(), Duration::from_secs(300));
        assert_eq!(config.redis_url, None);
        assert_eq!(config.redis_key_prefix, "tenancy:");
        assert_eq!(config.cache_ttl(), Duration::from_secs(60));
        assert_eq!(config.cache_max_entries, 10_000);
        assert_eq!(config.negative_cache_ttl(), Duration::from_secs(5));
        assert!(!config.enable_rate_limiting);
        assert_eq!(config.rate_limit_per_minute, 100);
        assert_eq!(config.rate_limit_window(), Duration::from_secs(60));
        assert!(config.rate_limit_fail_open);
        assert_eq!(config.schema_prefix, "tenant_");
        assert_eq!(config.database_prefix, "tenant_");
        assert_eq!(config.shared_schema, None);
        assert_eq!(config.rls_setting, "app.tenant_id");
        assert_eq!(config.rls_tenant_column, "tenant_id");
        assert_eq!(
            config.hybrid_tier_isolation,
            [
                ("premium".to_owned(), IsolationMode::Schema),
                ("standard".to_owned(), IsolationMode::Rls)
            ]
        );
        assert_eq!(config.hybrid_default_isolation, IsolationMode::Rls);
        assert!(config.reserved_identifiers.is_empty());
        assert!(!config.hide_unknown_tenants);
        assert!(config.pool_reset_on_release);
        assert_eq!(config.pool_max_connections, 10);
        assert_eq!(config.connection_budget, 50);
        assert_eq!(config.tenant_pool_max_connections, 5);
        assert_eq!(config.acquire_timeout(), Duration::from_secs(5));
        assert_eq!(config.statement_timeout(), None);
        assert_eq!(config.tenant_concurrency_limit, None);
        assert_eq!(config.sqlite_data_dir, PathBuf::from("./data"));
        assert_eq!(config.migrations_dir, None);
        assert!(config.database_servers.is_empty());
        assert_eq!(config.effective_isolation(), IsolationMode::Database);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn empty_environment_gives_the_defaults_and_foreign_or_unknown_names_are_ignored() {
        let config = load(&[
            ("PATH", "/usr/bin"),
            ("TENANCY_NO_SUCH_SETTING", "whatever"),
            ("TENANCY_POOL_MAX_CONNECTIONS", ""),
            ("TENANCY_CACHE_TTL_SECONDS", "   "),
            ("tenancy_pool_max_connections", "0"),
        ])
        .unwrap();
        assert_eq!(config, TenancyConfig::default());
        assert_eq!(load(&[]).unwrap(), TenancyConfig::default());
    }

    type Check = fn(&TenancyConfig) -> bool;

    /// One row per variable: variable, context for the good value, good value, what the good
    /// value must produce, bad value ("" when no value is refused), and how the error shows the
    /// bad value (masked for secrets).
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
        Check,
        &'static str,
        &'static str,
    );

    const PG: (&str, &str) = ("TENANCY_DATABASE_URL", "postgres://app:s3cret@db/app");
    const RS256: (&str, &str) = ("TENANCY_JWT_ALGORITHM", "RS256");

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        ("TENANCY_DATABASE_URL", &[], "postgres://app:s3cret@db:5432/x",
            |c| c.database_backend() == Some(Backend::Postgres),
            "mongodb://app:s3cret@db/x", "mongodb://app:***@db/x"),
        ("TENANCY_ADMIN_DATABASE_URL", &[PG], "postgresql://admin:s3cret@db/app",
            |c| c.admin_url().unwrap().expose() == "postgresql://admin:s3cret@db/app",
            "redis://root:s3cret@db/x", "redis://root:***@db/x"),
        ("TENANCY_ISOLATION_STRATEGY", &[], "RLS",
            |c| c.isolation_strategy == Some(IsolationMode::Rls), "tables", "tables"),
        ("TENANCY_RESOLUTION_STRATEGY", &[], "path",
            |c| c.resolution_strategy == ResolutionStrategy::Path, "cookie", "cookie"),
        ("TENANCY_TENANT_HEADER_NAME", &[], "X-Org",
            |c| c.tenant_header_name == "X-Org", "X Org", "X Org"),
        ("TENANCY_DOMAIN_SUFFIX", &[], ".Example.COM",
            |c| c.domain_suffix.as_deref() == Some("example.com"), "exa_mple.com", "exa_mple.com"),
        ("TENANCY_TRUSTED_PROXIES", &[], "10.0.0.0/8, 192.168.1.7,::1",
            |c| c.trusted_proxies.len() == 3
                && c.trusted_proxies[1].to_string() == "192.168.1.7/32"
                && c.trusted_proxies[2].to_string() == "::1/128"
                && c.is_trusted_proxy("10.1.2.3".parse().unwrap())
                && !c.is_trusted_proxy("11.0.0.1".parse().unwrap()),
            "10.0.0.1,10.0.0.0/33", "10.0.0.0/33"),
        ("TENANCY_PATH_PREFIX", &[], "/t/v_1",
            |c| c.path_prefix == "/t/v_1", "/tenants/", "/tenants/"),
        ("TENANCY_EXCLUDED_PATHS", &[], "/health, /ready,",
            |c| c.excluded_paths == ["/health", "/ready"], "/health,ready", "ready"),
        ("TENANCY_JWT_SECRET", &[], LONG_SECRET,
            |c| c.jwt_secret.as_ref().unwrap().expose() == LONG_SECRET, "s3cret-too-short", "***"),
        ("TENANCY_JWT_ALGORITHM", &[], "es256",
            |c| c.jwt_algorithm == JwtAlgorithm::ES256, "none", "none"),
        ("TENANCY_JWT_TENANT_CLAIM", &[], "org",
            |c| c.jwt_tenant_claim == "org", "org id", "org id"),
        ("TENANCY_JWT_AUDIENCE", &[], "my-api",
            |c| c.jwt_audience.as_deref() == Some("my-api"), "my\u{7}api", "my\\u{7}api"),
        ("TENANCY_JWT_ISSUER", &[], "https://idp.example.com/",
            |c| c.jwt_issuer.as_deref() == Some("https://idp.example.com/"),
            "idp\u{1b}", "idp\\u{1b}"),
        ("TENANCY_JWT_LEEWAY_SECONDS", &[], "10",
            |c| c.jwt_leeway() == Duration::from_secs(10), "601", "601"),
        ("TENANCY_JWT_PUBLIC_KEY_PATH", &[RS256], "/etc/keys/jwt.pem",
            |c| c.jwt_public_key_path == Some(PathBuf::from("/etc/keys/jwt.pem")),
            "/etc/keys/hs.pem", "/etc/keys/hs.pem"),
        ("TENANCY_JWT_JWKS_PATH", &[RS256], "/etc/keys/jwks.json",
            |c| c.jwt_jwks_path == Some(PathBuf::from("/etc/keys/jwks.json")),
            "/etc/keys/other.json", "/etc/keys/other.json"),
        ("TENANCY_JWT_JWKS_URL", &[RS256], "https://idp.example.com/.well-known/jwks.json",
            |c| c.jwt_jwks_url.as_deref() == Some("https://idp.example.com/.well-known/jwks.json"),
            "http://idp.example.com/jwks", "http://idp.example.com/jwks"),
        ("TENANCY_JWT_JWKS_REFRESH_SECONDS", &[], "600",
            |c| c.jwt_jwks_refresh() == Duration::from_secs(600), "0", "0"),
        ("TENANCY_REDIS_URL", &[], "rediss://:s3cret@cache:6380/0",
            |c| c.redis_url.as_ref().unwrap().expose() == "rediss://:s3cret@cache:6380/0",
            "http://:s3cret@cache", "http://:***@cache"),
        ("TENANCY_REDIS_KEY_PREFIX", &[], "app:",
            |c| c.redis_key_prefix == "app:", "app prefix", "app prefix"),
        ("TENANCY_CACHE_TTL_SECONDS", &[], "120",
            |c| c.cache_ttl() == Duration::from_secs(120), "1m", "1m"),
        ("TENANCY_CACHE_MAX_ENTRIES", &[], "500",
            |c| c.cache_max_entries == 500, "-5", "-5"),
        ("TENANCY_NEGATIVE_CACHE_TTL_SECONDS", &[], "60",
            |c| c.negative_cache_ttl() == Duration::from_secs(60), "61", "61"),
        ("TENANCY_ENABLE_RATE_LIMITING", &[], "YES",
            |c| c.enable_rate_limiting, "maybe", "maybe"),
        ("TENANCY_RATE_LIMIT_PER_MINUTE", &[], "1000",
            |c| c.rate_limit_per_minute == 1000, "0", "0"),
        ("TENANCY_RATE_LIMIT_WINDOW_SECONDS", &[], "1",
            |c| c.rate_limit_window() == Duration::from_secs(1), "86401", "86401"),
        ("TENANCY_RATE_LIMIT_FAIL_OPEN", &[], "Off",
            |c| !c.rate_limit_fail_open, "2", "2"),
        ("TENANCY_SCHEMA_PREFIX", &[], "t_",
            |c| c.schema_prefix == "t_", "T-", "T-"),
        ("TENANCY_DATABASE_PREFIX", &[], "db_",
            |c| c.database_prefix == "db_", "1db", "1db"),
        ("TENANCY_SHARED_SCHEMA", &[], "shared",
            |c| c.shared_schema.as_deref() == Some("shared"), "pg_shared", "pg_shared"),
        ("TENANCY_RLS_SETTING", &[], "myapp.tenant",
            |c| c.rls_setting == "myapp.tenant", "tenant", "tenant"),
        ("TENANCY_RLS_TENANT_COLUMN", &[], "org_id",
            |c| c.rls_tenant_column == "org_id", "org-id", "org-id"),
        ("TENANCY_HYBRID_TIER_ISOLATION", &[], "gold = database, free=RLS",
            |c| c.hybrid_tier_isolation == [
                ("gold".to_owned(), IsolationMode::Database),
                ("free".to_owned(), IsolationMode::Rls),
            ],
            "gold=hybrid", "gold=hybrid"),
        ("TENANCY_HYBRID_DEFAULT_ISOLATION", &[], "schema",
            |c| c.hybrid_default_isolation == IsolationMode::Schema, "hybrid", "hybrid"),
        ("TENANCY_RESERVED_IDENTIFIERS", &[], "billing,status",
            |c| c.identifier_policy().parse("billing")
                == Err(IdentifierError::Reserved("billing".into())),
            "Billing", "Billing"),
        ("TENANCY_HIDE_UNKNOWN_TENANTS", &[], "1",
            |c| c.hide_unknown_tenants, "sometimes", "sometimes"),
        ("TENANCY_POOL_MAX_CONNECTIONS", &[], "20",
            |c| c.pool_max_connections == 20, "10001", "10001"),
        ("TENANCY_POOL_RESET_ON_RELEASE", &[], "false",
            |c| !c.pool_reset_on_release, "never", "never"),
        ("TENANCY_CONNECTION_BUDGET", &[], "100",
            |c| c.connection_budget == 100, "4", "4"),
        ("TENANCY_TENANT_POOL_MAX_CONNECTIONS", &[], "8",
            |c| c.tenant_pool_max_connections == 8, "0", "0"),
        ("TENANCY_ACQUIRE_TIMEOUT_SECONDS", &[], "30",
            |c| c.acquire_timeout() == Duration::from_secs(30), "0", "0"),
        ("TENANCY_STATEMENT_TIMEOUT_MS", &[], "2500",
            |c| c.statement_timeout() == Some(Duration::from_millis(2500)), "0", "0"),
        ("TENANCY_TENANT_CONCURRENCY_LIMIT", &[], "4",
            |c| c.tenant_concurrency_limit == Some(4), "10", "10"),
        ("TENANCY_SQLITE_DATA_DIR", &[], "/var/lib/app",
            |c| c.sqlite_data_dir == Path::new("/var/lib/app"), "", ""),
        ("TENANCY_MIGRATIONS_DIR", &[], "./migrations",
            |c| c.migrations_dir == Some(PathBuf::from("./migrations")), "", ""),
        ("TENANCY_DATABASE_SERVERS", &[PG],
            "eu=postgres://app:s3cret@eu-db/x?sslmode=require, us=postgres://app:s3cret@us-db/x",
            |c| c.database_servers.len() == 2
                && c.database_server("us").unwrap().expose() == "postgres://app:s3cret@us-db/x"
                && c.database_server("eu").unwrap().expose()
                    == "postgres://app:s3cret@eu-db/x?sslmode=require",
            "postgres://app:s3cret@eu/x?sslmode=require",
            "postgres://app:***@eu/x?sslmode=require"),
    ];

    #[test]
    fn every_variable_parses_a_good_value_and_refuses_a_bad_one() {
        for &(variable, context, good, check, bad, shown) in CASES {
            let mut vars = context.to_vec();
            vars.push((variable, good));
            let config = load(&vars).unwrap_or_else(|err| panic!("{variable}={good}: {err}"));
            assert!(
                check(&config),
                "{variable}={good} was not applied: {config:?}"
            );
            if bad.is_empty() {
                continue;
            }
            let err = load(&[(variable, bad)]).expect_err(variable);
            let problem = problem_of(&err, variable);
            assert!(
                problem.starts_with(&format!("{variable}='{shown}' is invalid: ")),
                "{problem}"
            );
            assert!(!err.to_string().contains(HIDDEN), "secret shown: {err}");
        }
        let covered: BTreeSet<&str> = CASES.iter().map(|case| case.0).collect();
        let all: BTreeSet<&str> = TenancyConfig::VARIABLES.iter().copied().collect();
        assert_eq!(covered, all);
        assert_eq!(all.len(), TenancyConfig::VARIABLES.len());
    }

    #[test]
    fn every_problem_is_reported_with_its_variable() {
        let err = load(&[
            ("TENANCY_ISOLATION_STRATEGY", "tables"),
            ("TENANCY_POOL_MAX_CONNECTIONS", "many"),
            ("TENANCY_RATE_LIMIT_PER_MINUTE", "0"),
        ])
        .unwrap_err();
        let variables: Vec<_> = err.problems().iter().map(FieldProblem::variable).collect();
        assert_eq!(
            variables,
            [
                "TENANCY_ISOLATION_STRATEGY",
                "TENANCY_POOL_MAX_CONNECTIONS",
                "TENANCY_RATE_LIMIT_PER_MINUTE"
            ]
        );
        assert_eq!(
            err.to_string(),
            "invalid tenancy configuration (3 problems):\n  \
             - TENANCY_ISOLATION_STRATEGY='tables' is invalid: expected one of schema, rls, \
             database, hybrid\n  \
             - TENANCY_POOL_MAX_CONNECTIONS='many' is invalid: expected a non-negative whole \
             number\n  \
             - TENANCY_RATE_LIMIT_PER_MINUTE='0' is invalid: expected at least 1"
        );
        let problem = &err.problems()[1];
        assert_eq!(problem.value(), Some("many"));
        assert_eq!(problem.expected(), "expected a non-negative whole number");
    }

    #[test]
    fn jwt_resolution_needs_its_key() {
        let jwt = ("TENANCY_RESOLUTION_STRATEGY", "jwt");
        let err = load(&[jwt]).unwrap_err();
        assert_eq!(
            problem_of(&err, "TENANCY_JWT_SECRET"),
            "TENANCY_JWT_SECRET is not set: required (at least 32 bytes) when \
             TENANCY_RESOLUTION_STRATEGY is jwt with TENANCY_JWT_ALGORITHM=HS256"
        );
        assert!(load(&[jwt, ("TENANCY_JWT_SECRET", LONG_SECRET)]).is_ok());

        let err = load(&[jwt, RS256]).unwrap_err();
        assert!(problem_of(&err, "TENANCY_JWT_PUBLIC_KEY_PATH").contains("TENANCY_JWT_JWKS_URL"));
        let err = load(&[jwt, RS256, ("TENANCY_JWT_SECRET", LONG_SECRET)]).unwrap_err();
        assert!(problem_of(&err, "TENANCY_JWT_SECRET").contains("must not be set"));
        let err = load(&[
            jwt,
            RS256,
            ("TENANCY_JWT_PUBLIC_KEY_PATH", "/k.pem"),
            ("TENANCY_JWT_JWKS_URL", "https://idp/jwks"),
        ])
        .unwrap_err();
        assert!(problem_of(&err, "TENANCY_JWT_JWKS_URL").contains("only one of"));
        for url in [
            "http://localhost:8080/jwks",
            "http://[::1]/jwks",
            "https://idp/jwks",
        ] {
            assert!(
                load(&[jwt, RS256, ("TENANCY_JWT_JWKS_URL", url)]).is_ok(),
                "{url}"
            );
        }
        for url in [
            "http://localhost@evil.com/jwks",
            "ftp://idp/jwks",
            "https://",
        ] {
            assert!(
                load(&[jwt, RS256, ("TENANCY_JWT_JWKS_URL", url)]).is_err(),
                "{url}"
            );
        }
    }

    #[test]
    fn subdomain_resolution_needs_a_suffix() {
        let err = load(&[("TENANCY_RESOLUTION_STRATEGY", "subdomain")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid tenancy configuration: TENANCY_DOMAIN_SUFFIX is not set: required when \
             TENANCY_RESOLUTION_STRATEGY is subdomain"
        );
        let config = load(&[
            ("TENANCY_RESOLUTION_STRATEGY", "subdomain"),
            ("TENANCY_DOMAIN_SUFFIX", "localhost"),
        ])
        .unwrap();
        assert_eq!(config.domain_suffix.as_deref(), Some("localhost"));
    }

    #[test]
    fn isolation_modes_must_suit_the_backend() {
        let sqlite = ("TENANCY_DATABASE_URL", "sqlite::memory:");
        for mode in ["schema", "rls", "hybrid"] {
            let err = load(&[sqlite, ("TENANCY_ISOLATION_STRATEGY", mode)]).unwrap_err();
            assert_eq!(
                problem_of(&err, "TENANCY_ISOLATION_STRATEGY"),
                format!(
                    "TENANCY_ISOLATION_STRATEGY='{mode}' is invalid: {mode} isolation needs \
                     PostgreSQL but TENANCY_DATABASE_URL is sqlite; expected database"
                )
            );
        }
        let mysql = ("TENANCY_DATABASE_URL", "mariadb://app:s3cret@db/app");
        assert!(load(&[mysql, ("TENANCY_ISOLATION_STRATEGY", "rls")]).is_err());
        let config = load(&[mysql, ("TENANCY_ISOLATION_STRATEGY", "database")]).unwrap();
        assert_eq!(config.effective_isolation(), IsolationMode::Database);
        assert_eq!(
            load(&[mysql]).unwrap().effective_isolation(),
            IsolationMode::Database
        );
        assert_eq!(
            load(&[PG]).unwrap().effective_isolation(),
            IsolationMode::Schema
        );
        assert_eq!(
            load(&[("TENANCY_DATABASE_URL", "sqlite://data/registry.db")])
                .unwrap()
                .database_backend(),
            Some(Backend::Sqlite)
        );
        let err = load(&[
            mysql,
            ("TENANCY_ADMIN_DATABASE_URL", "postgres://root:s3cret@db/x"),
        ])
        .unwrap_err();
        assert_eq!(
            problem_of(&err, "TENANCY_ADMIN_DATABASE_URL"),
            "TENANCY_ADMIN_DATABASE_URL='postgres://root:***@db/x' is invalid: expected the same \
             backend as TENANCY_DATABASE_URL (mysql)"
        );
        let config = load(&[mysql]).unwrap();
        assert_eq!(config.admin_url(), config.database_url.as_ref());
        let err = load(&[
            mysql,
            ("TENANCY_DATABASE_SERVERS", "eu=postgres://a:s3cret@eu/x"),
        ])
        .unwrap_err();
        assert_eq!(
            problem_of(&err, "TENANCY_DATABASE_SERVERS"),
            "TENANCY_DATABASE_SERVERS='eu=postgres://a:***@eu/x' is invalid: expected the same \
             backend as TENANCY_DATABASE_URL (mysql)"
        );
    }

    #[test]
    fn cache_and_pool_limits_relate() {
        let err = load(&[
            ("TENANCY_CACHE_TTL_SECONDS", "10"),
            ("TENANCY_NEGATIVE_CACHE_TTL_SECONDS", "11"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid tenancy configuration: TENANCY_NEGATIVE_CACHE_TTL_SECONDS='11' is invalid: \
             expected at most TENANCY_CACHE_TTL_SECONDS (10)"
        );
        let err = load(&[
            ("TENANCY_POOL_MAX_CONNECTIONS", "8"),
            ("TENANCY_TENANT_CONCURRENCY_LIMIT", "8"),
        ])
        .unwrap_err();
        assert_eq!(
            problem_of(&err, "TENANCY_TENANT_CONCURRENCY_LIMIT"),
            "TENANCY_TENANT_CONCURRENCY_LIMIT='8' is invalid: expected at least 1 and less than \
             TENANCY_POOL_MAX_CONNECTIONS (8)"
        );
        assert!(
            load(&[
                ("TENANCY_POOL_MAX_CONNECTIONS", "8"),
                ("TENANCY_TENANT_CONCURRENCY_LIMIT", "7"),
            ])
            .is_ok()
        );
        let err = load(&[("TENANCY_TENANT_POOL_MAX_CONNECTIONS", "60")]).unwrap_err();
        assert!(problem_of(&err, "TENANCY_CONNECTION_BUDGET").contains("(60)"));
    }

    #[test]
    fn hybrid_isolation_by_override_tier_and_default() {
        let config = load(&[PG, ("TENANCY_ISOLATION_STRATEGY", "hybrid")]).unwrap();
        let tenant = |tier: &str, isolation: Option<IsolationMode>| {
            let mut tenant = NewTenant::new(TenantIdentifier::parse("acme").unwrap(), "Acme")
                .with_tier(tier)
                .into_tenant();
            tenant.isolation = isolation;
            tenant
        };
        assert_eq!(
            config.isolation_for(&tenant("premium", None)),
            IsolationMode::Schema
        );
        assert_eq!(
            config.isolation_for(&tenant("standard", None)),
            IsolationMode::Rls
        );
        assert_eq!(
            config.isolation_for(&tenant("trial", None)),
            IsolationMode::Rls
        );
        let pinned = tenant("standard", Some(IsolationMode::Database));
        assert_eq!(config.isolation_for(&pinned), IsolationMode::Database);
        let schema = load(&[PG]).unwrap();
        assert_eq!(schema.isolation_for(&pinned), IsolationMode::Schema);

        let err = load(&[(
            "TENANCY_HYBRID_TIER_ISOLATION",
            "gold=schema,gold=rls,Bad=rls",
        )])
        .unwrap_err();
        let messages: Vec<_> = err.problems().iter().map(ToString::to_string).collect();
        assert!(messages[0].contains("'gold' is invalid: each tier may appear only once"));
        assert!(messages[1].starts_with("TENANCY_HYBRID_TIER_ISOLATION='Bad' is invalid"));
        let err = load(&[("TENANCY_HYBRID_TIER_ISOLATION", "gold")]).unwrap_err();
        assert!(problem_of(&err, "TENANCY_HYBRID_TIER_ISOLATION").contains("tier=mode pairs"));
    }

    #[test]
    fn secret_url_masks_only_the_password() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/x",
                "postgres://app:***@db:5432/x",
            ),
            ("postgres://app@db:5432/x", "postgres://app@db:5432/x"),
            ("postgres://db/x", "postgres://db/x"),
            ("postgres://app:p@ss:s3cret@db/x", "postgres://app:***@db/x"),
            ("postgres://app:s3cret/x@db/x", "postgres://app:***@db/x"),
            ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
            (
                "mysql://app@db/x?password=s3cret&ssl-mode=required",
                "mysql://app@db/x?password=***&ssl-mode=required",
            ),
            (
                "postgres://db/x?application_name=a@b",
                "postgres://db/x?application_name=a@b",
            ),
            ("sqlite::memory:", "sqlite::memory:"),
            ("sqlite://data/a@b.db", "sqlite://data/a@b.db"),
            ("postgres:app:s3cret@db/x", "postgres:***@db/x"),
        ];
        for (url, masked) in cases {
            let url = SecretUrl::new(url);
            assert_eq!(url.to_string(), masked);
            assert_eq!(format!("{url:?}"), format!("{masked:?}"));
            assert!(!url.masked().contains(HIDDEN), "{masked}");
        }
        assert_eq!(
            SecretUrl::from("postgres://a:s3cret@h/x").expose(),
            "postgres://a:s3cret@h/x"
        );
        let secret = Secret::from(LONG_SECRET);
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");
    }

    #[test]
    fn debug_of_the_configuration_hides_every_secret() {
        let config = TenancyConfig::builder()
            .database_url("postgres://app:s3cret@db/app")
            .admin_database_url("postgres://admin:s3cret@db/app")
            .redis_url("redis://:s3cret@cache")
            .jwt_secret(LONG_SECRET)
            .database_servers([("eu", "postgres://app:s3cret@eu/app")])
            .build()
            .unwrap();
        let debug = format!("{config:?} {config:#?}");
        assert!(!debug.contains(HIDDEN), "{debug}");
        assert!(debug.contains("postgres://admin:***@db/app"));
    }

    #[test]
    fn builder_validates_like_the_environment() {
        let vars = [
            PG,
            ("TENANCY_RESOLUTION_STRATEGY", "jwt"),
            ("TENANCY_JWT_SECRET", LONG_SECRET),
            ("TENANCY_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1"),
            ("TENANCY_EXCLUDED_PATHS", "/health"),
            ("TENANCY_HYBRID_TIER_ISOLATION", "gold=database"),
            ("TENANCY_RESERVED_IDENTIFIERS", "billing"),
            ("TENANCY_STATEMENT_TIMEOUT_MS", "1000"),
            ("TENANCY_DOMAIN_SUFFIX", ".Example.com"),
        ];
        let built = TenancyConfig::builder()
            .database_url("postgres://app:s3cret@db/app")
            .resolution_strategy(ResolutionStrategy::Jwt)
            .jwt_secret(LONG_SECRET)
            .trusted_proxies([
                "10.0.0.0/8".parse().unwrap(),
                "127.0.0.1/32".parse().unwrap(),
            ])
            .excluded_paths(["/health"])
            .hybrid_tier_isolation([("gold", IsolationMode::Database)])
            .reserved_identifiers(["billing"])
            .statement_timeout_ms(1000)
            .domain_suffix(".Example.com")
            .build()
            .unwrap();
        assert_eq!(load(&vars).unwrap(), built);

        let env_err = load(&[
            ("TENANCY_DATABASE_URL", "sqlite:tenants.db"),
            ("TENANCY_ISOLATION_STRATEGY", "schema"),
            ("TENANCY_RESOLUTION_STRATEGY", "jwt"),
            ("TENANCY_POOL_MAX_CONNECTIONS", "0"),
        ])
        .unwrap_err();
        let builder_err = TenancyConfig::builder()
            .database_url("sqlite:tenants.db")
            .isolation_strategy(IsolationMode::Schema)
            .resolution_strategy(ResolutionStrategy::Jwt)
            .pool_max_connections(0)
            .build()
            .unwrap_err();
        assert_eq!(env_err, builder_err);
        assert_eq!(env_err.problems().len(), 3);

        let overridden = built
            .into_builder()
            .pool_max_connections(0)
            .build()
            .unwrap_err();
        assert_eq!(
            overridden.problems()[0].variable(),
            "TENANCY_POOL_MAX_CONNECTIONS"
        );
        let direct = TenancyConfig {
            jwt_secret: Some(Secret::new("s3cret")),
            ..TenancyConfig::default()
        };
        assert_eq!(
            direct.validate().unwrap_err().to_string(),
            "invalid tenancy configuration: TENANCY_JWT_SECRET='***' is invalid: expected at \
             least 32 bytes"
        );
    }

    #[test]
    fn shown_values_are_escaped_and_shortened() {
        let long = "x".repeat(300);
        let err = load(&[("TENANCY_TENANT_HEADER_NAME", &long)]).unwrap_err();
        let value = err.problems()[0].value().unwrap();
        assert_eq!(value, format!("{}…", "x".repeat(100)));
        let err = load(&[("TENANCY_RLS_SETTING", "a.b'; drop")]).unwrap_err();
        assert_eq!(err.problems()[0].value(), Some("a.b\\'; drop"));
    }
}
