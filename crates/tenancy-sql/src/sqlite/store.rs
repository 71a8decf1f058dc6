//! The tenant registry in a SQLite file: tables `tenancy_tenants` and
//! `tenancy_tenant_domains`, migrated by [`SqliteStore::migrate`].
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`, taking the file's write lock up
//! front: concurrent writers then wait (busy timeout) instead of failing with
//! `database is locked` when a read transaction would have to be upgraded. The store's
//! operations are the ones it shares with MariaDB/MySQL ([`PositionalRegistry`]).

use std::str::FromStr;
use std::time::Duration;

use sqlx::Transaction;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteSynchronous,
};
use tenancy_core::StoreError;

use crate::registry::positional::{
    PositionalBackend, PositionalQueries, PositionalRegistry, RECORD_REGISTRY_STEP,
    positional_queries, tenant_store_on_positional_registry,
};
use crate::registry::{RegistryStep, apply_pending_steps, is_unique_violation, store_error};

/// Starts a write transaction holding the write lock from its first statement.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// The registry schema, in order. Never edit a released step; append a new one.
const STEPS: &[RegistryStep] = &[RegistryStep {
    version: 1,
    description: "tenant registry tables",
    statements: &[
        "CREATE TABLE IF NOT EXISTS tenancy_tenants (
            id TEXT NOT NULL PRIMARY KEY,
            identifier TEXT NOT NULL CONSTRAINT tenancy_tenants_identifier_key UNIQUE,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            tier TEXT NOT NULL,
            isolation TEXT,
            placement TEXT,
            metadata TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )",
        "CREATE TABLE IF NOT EXISTS tenancy_tenant_domains (
            domain TEXT NOT NULL PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenancy_tenants (id) ON DELETE CASCADE
        )",
        "CREATE INDEX IF NOT EXISTS tenancy_tenants_status_idx
            ON tenancy_tenants (status, identifier)",
        "CREATE INDEX IF NOT EXISTS tenancy_tenant_domains_tenant_id_idx
            ON tenancy_tenant_domains (tenant_id)",
    ],
}];

/// Creates the ledger of applied registry steps.
const CREATE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS tenancy_registry_migrations (
    version INTEGER NOT NULL PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL
)";

/// A [`TenantStore`](tenancy_core::TenantStore) in a SQLite database file.
///
/// Creates are race-safe through the unique identifier, status changes are one
/// compare-and-set `UPDATE`, and metadata merges run under the write lock
/// (`BEGIN IMMEDIATE`).
///
/// ```no_run
/// # async fn example() -> Result<(), tenancy_core::StoreError> {
/// use tenancy_core::{NewTenant, TenantIdentifier, TenantStore};
/// use tenancy_sql::sqlite::SqliteStore;
///
/// let store = SqliteStore::connect("sqlite://registry.db").await?;
/// store.migrate().await?;
/// let acme = TenantIdentifier::parse("acme").unwrap();
/// store.create(NewTenant::new(acme.clone(), "Acme Inc.")).await?;
/// assert!(store.get(&acme).await?.is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    registry: PositionalRegistry<Sqlite>,
}

impl SqliteStore {
    /// A store on `pool`, used as given. Deleting a tenant relies on its connections
    /// enforcing foreign keys (sqlx's default); concurrent writers want WAL mode and a busy
    /// timeout, as [`SqliteStore::connect`] sets.
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            registry: PositionalRegistry::new(pool),
        }
    }

    /// Opens (creating if missing) the database at `url` (`sqlite://path/to/file.db`) in WAL
    /// mode with a 10 s busy timeout and foreign keys on, in a pool of at most 8 connections
    /// with a 5 s acquire timeout. A file that cannot be opened is
    /// [`StoreError::Unavailable`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(store_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // `connect_with` opens one connection first, switching the file to WAL before any
        // other connection could contend for that exclusive step.
        SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map(Self::new)
            .map_err(store_error)
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &SqlitePool {
        self.registry.pool()
    }

    /// Creates or upgrades the registry tables. Idempotent, and safe when several processes
    /// call it at once: pending steps run in one `BEGIN IMMEDIATE` transaction, and are
    /// recorded in `tenancy_registry_migrations` (not sqlx's own migration table).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self
            .pool()
            .begin_with(BEGIN_WRITE)
            .await
            .map_err(store_error)?;
        apply_pending_steps::<Sqlite>(&mut tx, STEPS, CREATE_LEDGER, RECORD_REGISTRY_STEP).await?;
        tx.commit().await.map_err(store_error)
    }
}

tenant_store_on_positional_registry!(SqliteStore);

impl PositionalBackend for Sqlite {
    const QUERIES: PositionalQueries = positional_queries!(
        domains: "group_concat(d.domain, ' ')",
        row_lock: ""
    );

    async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        pool.begin_with(BEGIN_WRITE).await
    }

    /// One statement per domain: they run in-process, and the failing one names the taken
    /// domain.
    async fn insert_domains(
        _pool: &SqlitePool,
        mut tx: Transaction<'static, Sqlite>,
        id: &str,
        domains: &[String],
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        for domain in domains {
            let inserted =
                sqlx::query("INSERT INTO tenancy_tenant_domains (domain, tenant_id) VALUES (?, ?)")
                    .bind(domain)
                    .bind(id)
                    .execute(&mut *tx)
                    .await;
            match inserted {
                Ok(_) => {}
                Err(error) if is_unique_violation(&error) => {
                    return Err(StoreError::DomainTaken(domain.clone()));
                }
                Err(error) => return Err(store_error(error)),
            }
        }
        Ok(tx)
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}
