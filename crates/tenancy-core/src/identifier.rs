//! The one identifier policy: every tenant identifier that reaches SQL, a file path, a Redis key
//! or a log line has passed [`IdentifierPolicy::parse`], and every name derived from it comes from
//! [`DerivedName`].
//!
//! An identifier is a lowercase ASCII slug, `[a-z][a-z0-9-]*[a-z0-9]`, 3 to 63 characters, with
//! no `--` and no reserved name. Derived names replace `-` with `_`; because identifiers never
//! contain `_`, that mapping is one-to-one.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Input longer than this many bytes is refused before any other check.
pub const MAX_INPUT_BYTES: usize = 255;
/// The shortest identifier.
pub const MIN_LEN: usize = 3;
/// The longest identifier.
pub const MAX_LEN: usize = 63;

/// Names no tenant may take, whatever the configuration.
pub const BUILTIN_RESERVED: &[&str] = &["public", "information-schema", "www", "api", "admin"];

/// Why an input is not a valid tenant identifier. Each variant names the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    /// The input was longer than [`MAX_INPUT_BYTES`]; nothing else was looked at.
    #[error("tenant identifier is {len} bytes; input over {MAX_INPUT_BYTES} bytes is refused")]
    InputTooLong {
        /// Length of the input in bytes.
        len: usize,
    },
    /// Shorter than [`MIN_LEN`].
    #[error("tenant identifier must be at least {MIN_LEN} characters (got {len})")]
    TooShort {
        /// Length of the input in bytes.
        len: usize,
    },
    /// Longer than [`MAX_LEN`].
    #[error("tenant identifier must be at most {MAX_LEN} characters (got {len})")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
    },
    /// The first character is not a lowercase ASCII letter.
    #[error("tenant identifier must start with a lowercase letter a-z")]
    BadStart,
    /// The last character is not a lowercase ASCII letter or digit.
    #[error("tenant identifier must end with a lowercase letter or digit")]
    BadEnd,
    /// A character outside `a-z`, `0-9` and `-`.
    #[error(
        "tenant identifier may contain only lowercase letters a-z, digits and '-' (bad byte at position {position})"
    )]
    BadCharacter {
        /// Byte offset of the first offending byte.
        position: usize,
    },
    /// Two hyphens in a row (also refuses punycode `xn--`).
    #[error("tenant identifier must not contain '--'")]
    DoubleHyphen,
    /// A reserved name, or a name starting with `pg-`.
    #[error("tenant identifier '{0}' is reserved")]
    Reserved(String),
}

/// Why a derived name (schema, database, role, file, key) cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DerivedNameError {
    /// The prefix is not `[a-z_][a-z0-9_]*`.
    #[error("name prefix '{0}' must match [a-z_][a-z0-9_]* (at most 32 bytes)")]
    BadPrefix(String),
    /// Prefix plus identifier exceed what the target accepts.
    #[error("{kind} name '{name}' is {len} bytes; {kind} names are limited to {limit} bytes")]
    TooLong {
        /// The kind of name, e.g. "PostgreSQL schema".
        kind: &'static str,
        /// The name that would have been used.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit of the target.
        limit: usize,
    },
}

/// A validated tenant identifier. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantIdentifier(Arc<str>);

impl TenantIdentifier {
    /// Validates `input` with the default policy (built-in reserved names only).
    ///
    /// ```
    /// use tenancy_core::TenantIdentifier;
    /// assert_eq!(TenantIdentifier::parse("acme-corp").unwrap().as_str(), "acme-corp");
    /// assert!(TenantIdentifier::parse("Acme").is_err());
    /// ```
    pub fn parse(input: &str) -> Result<Self, IdentifierError> {
        check_slug(input, &[])?;
        Ok(Self(Arc::from(input)))
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier with `-` replaced by `_`, the stem of every derived name.
    pub fn stem(&self) -> String {
        self.0.replace('-', "_")
    }
}

impl fmt::Debug for TenantIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TenantIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantIdentifier {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TenantIdentifier {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for TenantIdentifier {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for TenantIdentifier {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TenantIdentifier {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The identifier policy: the built-in rules plus configured reserved names.
///
/// ```
/// use tenancy_core::{IdentifierError, IdentifierPolicy};
/// let policy = IdentifierPolicy::new(["billing"]);
/// assert_eq!(policy.parse("billing").unwrap_err(), IdentifierError::Reserved("billing".into()));
/// assert!(policy.parse("acme").is_ok());
/// ```
#[derive(Debug, Clone, Default)]
pub struct IdentifierPolicy {
    extra_reserved: Vec<Box<str>>,
}

impl IdentifierPolicy {
    /// A policy refusing the built-in reserved names and `extra_reserved`.
    pub fn new<I, S>(extra_reserved: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            extra_reserved: extra_reserved
                .into_iter()
                .map(|s| Box::from(s.as_ref()))
                .collect(),
        }
    }

    /// Validates `input` without allocating; use [`Self::parse`] to keep the identifier.
    pub fn check(&self, input: &str) -> Result<(), IdentifierError> {
        check_slug(input, &self.extra_reserved)
    }

    /// Validates `input` and returns it as a [`TenantIdentifier`].
    pub fn parse(&self, input: &str) -> Result<TenantIdentifier, IdentifierError> {
        self.check(input)?;
        Ok(TenantIdentifier(Arc::from(input)))
    }
}

fn check_slug(input: &str, extra_reserved: &[Box<str>]) -> Result<(), IdentifierError> {
    let bytes = input.as_bytes();
    let len = bytes.len();
    if len > MAX_INPUT_BYTES {
        return Err(IdentifierError::InputTooLong { len });
    }
    if let Some(position) = bytes
        .iter()
        .position(|b| !matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
    {
        return Err(IdentifierError::BadCharacter { position });
    }
    if len < MIN_LEN {
        return Err(IdentifierError::TooShort { len });
    }
    if len > MAX_LEN {
        return Err(IdentifierError::TooLong { len });
    }
    if !bytes[0].is_ascii_lowercase() {
        return Err(IdentifierError::BadStart);
    }
    if bytes[len - 1] == b'-' {
        return Err(IdentifierError::BadEnd);
    }
    if bytes.windows(2).any(|w| w == b"--") {
        return Err(IdentifierError::DoubleHyphen);
    }
    if input.starts_with("pg-")
        || BUILTIN_RESERVED.contains(&input)
        || extra_reserved.iter().any(|r| &**r == input)
    {
        return Err(IdentifierError::Reserved(input.to_owned()));
    }
    Ok(())
}

/// What a derived name is for; fixes its length limit and how it is quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameTarget {
    /// A PostgreSQL schema (63 bytes).
    PostgresSchema,
    /// A PostgreSQL database (63 bytes).
    PostgresDatabase,
    /// A PostgreSQL role (63 bytes).
    PostgresRole,
    /// A MariaDB/MySQL database (64 bytes).
    MysqlDatabase,
    /// A SQLite file stem (the file is `<name>.db`; 64 bytes).
    SqliteFile,
    /// A Redis key segment (64 bytes).
    RedisKey,
}

impl NameTarget {
    /// The longest name the target accepts, in bytes.
    pub const fn limit(self) -> usize {
        match self {
            Self::PostgresSchema | Self::PostgresDatabase | Self::PostgresRole => 63,
            Self::MysqlDatabase | Self::SqliteFile | Self::RedisKey => 64,
        }
    }

    const fn label(self) -> &'static str {
        match self {
            Self::PostgresSchema => "PostgreSQL schema",
            Self::PostgresDatabase => "PostgreSQL database",
            Self::PostgresRole => "PostgreSQL role",
            Self::MysqlDatabase => "MySQL database",
            Self::SqliteFile => "SQLite file",
            Self::RedisKey => "Redis key",
        }
    }
}

/// A name derived from a tenant identifier: `prefix + identifier` with `-` → `_`.
/// Always `[a-z_][a-z0-9_]*` and within the target's length limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DerivedName(String);

impl DerivedName {
    /// Derives the name of `identifier` for `target` with `prefix`.
    ///
    /// ```
    /// use tenancy_core::{DerivedName, NameTarget, TenantIdentifier};
    /// let id = TenantIdentifier::parse("acme-corp").unwrap();
    /// let schema = DerivedName::new("tenant_", &id, NameTarget::PostgresSchema).unwrap();
    /// assert_eq!(schema.as_str(), "tenant_acme_corp");
    /// assert_eq!(schema.quoted_postgres(), "\"tenant_acme_corp\"");
    /// ```
    pub fn new(
        prefix: &str,
        identifier: &TenantIdentifier,
        target: NameTarget,
    ) -> Result<Self, DerivedNameError> {
        check_prefix(prefix)?;
        let mut name = String::with_capacity(prefix.len() + identifier.as_str().len());
        name.push_str(prefix);
        name.extend(
            identifier
                .as_str()
                .chars()
                .map(|c| if c == '-' { '_' } else { c }),
        );
        if name.len() > target.limit() {
            return Err(DerivedNameError::TooLong {
                kind: target.label(),
                len: name.len(),
                name,
                limit: target.limit(),
            });
        }
        Ok(Self(name))
    }

    /// The bare name (safe characters only).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted as a PostgreSQL identifier.
    pub fn quoted_postgres(&self) -> String {
        quote_postgres_ident(&self.0)
    }

    /// The name quoted as a MariaDB/MySQL identifier.
    pub fn quoted_mysql(&self) -> String {
        format!("`{}`", self.0.replace('`', "``"))
    }
}

impl fmt::Display for DerivedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a configured name prefix: `[a-z_][a-z0-9_]*`, at most 32 bytes (may be empty).
pub fn check_prefix(prefix: &str) -> Result<(), DerivedNameError> {
    let ok = prefix.len() <= 32
        && prefix
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_lowercase() || b == b'_' || (i > 0 && b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(DerivedNameError::BadPrefix(prefix.to_owned()))
    }
}

/// Quotes any text as a PostgreSQL identifier (`"` doubled).
///
/// ```
/// assert_eq!(tenancy_core::quote_postgres_ident("a\"b"), "\"a\"\"b\"");
/// ```
pub fn quote_postgres_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_slugs() {
        for ok in ["abc", "acme-corp", "a1b", "tenant-42", &"a".repeat(63)] {
            assert!(TenantIdentifier::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn names_the_broken_rule() {
        use IdentifierError::*;
        let cases: &[(&str, IdentifierError)] = &[
            ("ab", TooShort { len: 2 }),
            ("", TooShort { len: 0 }),
            ("1abc", BadStart),
            ("-abc", BadStart),
            ("abc-", BadEnd),
            ("ab--c", DoubleHyphen),
            ("xn--abc", DoubleHyphen),
            ("Acme", BadCharacter { position: 0 }),
            ("acme_corp", BadCharacter { position: 4 }),
            ("acme corp", BadCharacter { position: 4 }),
            ("acme'; drop", BadCharacter { position: 4 }),
            ("acme\0", BadCharacter { position: 4 }),
            ("acme\r\nx", BadCharacter { position: 4 }),
            ("acme.", BadCharacter { position: 4 }),
            ("аcme", BadCharacter { position: 0 }),
            ("public", Reserved("public".into())),
            ("pg-catalog", Reserved("pg-catalog".into())),
            ("information-schema", Reserved("information-schema".into())),
            ("www", Reserved("www".into())),
            ("api", Reserved("api".into())),
            ("admin", Reserved("admin".into())),
        ];
        for (input, want) in cases {
            assert_eq!(
                &TenantIdentifier::parse(input).unwrap_err(),
                want,
                "{input:?}"
            );
        }
        assert_eq!(
            TenantIdentifier::parse(&"a".repeat(64)).unwrap_err(),
            TooLong { len: 64 }
        );
        assert_eq!(
            TenantIdentifier::parse(&"a".repeat(256)).unwrap_err(),
            InputTooLong { len: 256 }
        );
        assert_eq!(
            TenantIdentifier::parse(&"A".repeat(1 << 20)).unwrap_err(),
            InputTooLong { len: 1 << 20 }
        );
    }

    #[test]
    fn configured_reserved_names() {
        let policy = IdentifierPolicy::new(["billing", "status"]);
        assert!(matches!(
            policy.parse("status"),
            Err(IdentifierError::Reserved(_))
        ));
        assert!(policy.parse("statuses").is_ok());
    }

    #[test]
    fn derived_names_respect_limits() {
        let id = TenantIdentifier::parse(&"a".repeat(63)).unwrap();
        assert!(DerivedName::new("", &id, NameTarget::PostgresSchema).is_ok());
        let err = DerivedName::new("t_", &id, NameTarget::PostgresSchema).unwrap_err();
        assert!(matches!(
            err,
            DerivedNameError::TooLong {
                limit: 63,
                len: 65,
                ..
            }
        ));
        let id = TenantIdentifier::parse(&"a".repeat(62)).unwrap();
        assert!(DerivedName::new("t_", &id, NameTarget::MysqlDatabase).is_ok());
        assert!(DerivedName::new("t_", &id, NameTarget::PostgresSchema).is_err());
        assert!(DerivedName::new("Bad", &id, NameTarget::RedisKey).is_err());
        assert!(DerivedName::new("a\"b", &id, NameTarget::RedisKey).is_err());
    }

    fn slug() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{1,61}[a-z0-9]"
    }

    proptest! {
        #[test]
        fn parse_never_panics(input in any::<String>()) {
            let _ = TenantIdentifier::parse(&input);
        }

        #[test]
        fn accepted_identifiers_match_the_grammar(input in "[ -~]{0,70}") {
            if let Ok(id) = TenantIdentifier::parse(&input) {
                let s = id.as_str();
                prop_assert!((3..=63).contains(&s.len()));
                prop_assert!(s.as_bytes()[0].is_ascii_lowercase());
                prop_assert!(!s.ends_with('-') && !s.contains("--"));
                prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
        }

        #[test]
        fn derived_names_are_one_to_one(a in slug(), b in slug()) {
            if let (Ok(a), Ok(b)) = (TenantIdentifier::parse(&a), TenantIdentifier::parse(&b)) {
                let na = DerivedName::new("tenant_", &a, NameTarget::MysqlDatabase);
                let nb = DerivedName::new("tenant_", &b, NameTarget::MysqlDatabase);
                if let (Ok(na), Ok(nb)) = (na, nb) {
                    prop_assert_eq!(a == b, na == nb);
                    prop_assert!(na.as_str().bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'));
                }
            }
        }
    }
}
