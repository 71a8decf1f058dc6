//! The one error of tenant isolation, whatever the backend: opening, using and ending a tenant
//! transaction, finding and provisioning a tenant's schema or database.

use std::path::PathBuf;
use std::time::Duration;

use tenancy_core::{DerivedNameError, IsolationMode, TenantIdentifier};

/// Why tenant isolation failed.
///
/// [`is_unavailable`](Self::is_unavailable) tells the transient failures (answer HTTP 503 with
/// `Retry-After`) from the rest.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// No connection could be had: the pool timed out or is closed, or the server is
    /// unreachable. Transient.
    #[error("no database connection available: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Every connection of the global database-per-tenant budget was in use for the whole
    /// acquire timeout. Transient.
    #[error("all tenant database connections are busy (waited {waited:?}); try again later")]
    BudgetExhausted {
        /// How long the caller waited.
        waited: Duration,
    },
    /// The tenant used all its connections for the whole wait: its own pool
    /// (database-per-tenant) had no free connection within the acquire timeout, or it was at
    /// its concurrency limit on a shared pool for the whole concurrency wait. Transient.
    #[error("tenant '{identifier}' has no free database connection (waited {waited:?})")]
    TenantBusy {
        /// The tenant.
        identifier: TenantIdentifier,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The tenant has no database (not provisioned yet, or purged). Nothing was created.
    #[error("tenant '{identifier}' has no database")]
    NotProvisioned {
        /// The tenant.
        identifier: TenantIdentifier,
    },
    /// A statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The tenant's isolation mode is not served by this handle: schema and RLS isolation
    /// serve `schema` and `rls`, database-per-tenant pools serve `database`, and `hybrid` must
    /// be resolved to one of them per tenant (see `HybridIsolation`).
    #[error(
        "isolation mode '{0}' is not served by this isolation handle; \
         resolve 'hybrid' to 'schema', 'rls' or 'database' per tenant"
    )]
    UnsupportedMode(IsolationMode),
    /// A schema, database or file name derived from the tenant identifier is not acceptable.
    #[error(transparent)]
    Name(#[from] DerivedNameError),
    /// A derived file path would leave the configured directory.
    #[error("tenant database path '{path}' is outside the data directory")]
    PathOutsideDirectory {
        /// The refused path.
        path: PathBuf,
    },
    /// A file operation on the tenant's database failed.
    #[error("file operation on '{path}' failed: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Applying the tenant's migrations failed.
    #[error("migrating tenant '{identifier}' failed: {source}")]
    Migrate {
        /// The tenant.
        identifier: TenantIdentifier,
        /// The error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The transaction was ended while a savepoint opened on it (a nested `begin()` that was
    /// leaked) was still open; the transaction was abandoned and its connection closed.
    #[error(
        "{savepoints} savepoint(s) still open when the tenant transaction ended; it was abandoned"
    )]
    SavepointOpen {
        /// How many savepoints were open.
        savepoints: usize,
    },
    /// A configured name (setting, schema, table, column, role) is malformed.
    #[error("{what} '{value}' is not acceptable: {rule}")]
    InvalidName {
        /// What the name is for ("setting", "table", ...).
        what: &'static str,
        /// The name given (cut to 64 characters).
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The tenant is placed on a database server that is not configured (not in
    /// `TENANCY_DATABASE_SERVERS`); it is not served from another server instead.
    #[error(
        "tenant is placed on database server '{name}', which is not configured; \
         add it to TENANCY_DATABASE_SERVERS"
    )]
    UnknownServer {
        /// The server name of the tenant's placement.
        name: String,
    },
}

impl IsolationError {
    #[cfg(feature = "postgres")]
    pub(crate) fn invalid_name(what: &'static str, value: &str, rule: &'static str) -> Self {
        Self::InvalidName {
            what,
            value: value.chars().take(64).collect(),
            rule,
        }
    }

    /// Whether the failure is transient (no connection to be had now: pool timeout, closed
    /// pool, unreachable server, spent budget, busy tenant); retrying later may succeed. An
    /// HTTP service answers 503.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tenancy_sql::IsolationError;
    /// assert!(IsolationError::BudgetExhausted { waited: Duration::from_secs(5) }.is_unavailable());
    /// assert!(IsolationError::Unavailable(sqlx::Error::PoolTimedOut).is_unavailable());
    /// assert!(!IsolationError::Database(sqlx::Error::RowNotFound).is_unavailable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::BudgetExhausted { .. } | Self::TenantBusy { .. }
        )
    }
}

/// Classifies an error from getting a usable connection (checkout, connect, `BEGIN`): what
/// [`crate::is_transient`] calls transient (pool exhaustion, a closed pool, a broken or
/// terminated connection) is [`IsolationError::Unavailable`].
pub(crate) fn connection_error(error: sqlx::Error) -> IsolationError {
    if crate::is_transient(&error) {
        IsolationError::Unavailable(error)
    } else {
        IsolationError::Database(error)
    }
}
