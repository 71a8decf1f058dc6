//! The prefix of every Redis key this crate writes, so several deployments (or tests) can share
//! one Redis.

use std::fmt;

/// A key prefix: 1 to 64 printable ASCII characters without spaces (the same rule as
/// `TENANCY_REDIS_KEY_PREFIX`).
///
/// ```
/// use tenancy_redis::KeyPrefix;
/// assert_eq!(KeyPrefix::default().as_str(), "tenancy:");
/// assert_eq!(KeyPrefix::new("app:").unwrap().key("tenant:", "acme"), "app:tenant:acme");
/// assert!(KeyPrefix::new("has space").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyPrefix(Box<str>);

/// A prefix that breaks the rule of [`KeyPrefix`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis key prefix '{0}' must be 1 to 64 printable ASCII characters without spaces")]
pub struct InvalidPrefix(pub String);

impl KeyPrefix {
    /// Checks and wraps `prefix`.
    pub fn new(prefix: impl Into<String>) -> Result<Self, InvalidPrefix> {
        let prefix = prefix.into();
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidPrefix(prefix.chars().take(80).collect()));
        }
        Ok(Self(prefix.into()))
    }

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `prefix + kind + name`, e.g. `tenancy:` + `tenant:` + `acme`.
    pub fn key(&self, kind: &str, name: &str) -> String {
        let mut key = String::with_capacity(self.0.len() + kind.len() + name.len());
        key.push_str(&self.0);
        key.push_str(kind);
        key.push_str(name);
        key
    }
}

impl Default for KeyPrefix {
    /// `tenancy:`.
    fn default() -> Self {
        Self("tenancy:".into())
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
