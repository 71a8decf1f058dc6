//! The tenant registry in a SQLite file: tables `tenancy_tenants` and
//! `tenancy_tenant_domains`, migrated by [`SqliteStore::migrate`].
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`, taking the file's write lock up
//! front: concurrent writers then wait (busy timeout) instead of failing with
//! `database is locked` when a read transaction would have to be upgraded.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use tenancy_core::{
    ListQuery, Metadata, NewTenant, StoreError, Tenant, TenantId, TenantIdentifier, TenantStatus,
    TenantStore, TenantUpdate, merge_metadata,
};

use crate::registry::{
    RegistryStep, all_tenants, apply_pending_steps, is_unique_violation, metadata_text,
    normalized_domains, now, optional_tenant, parse_metadata, predecessor_slots, store_error,
    tenant_count, tenant_insert_error, tenant_to_create,
};

/// Selects tenants from `tenancy_tenants t` in `TenantColumn` order, followed by the given SQL.
macro_rules! tenant_query {
    ($($rest:literal),*) => {
        concat!(
            "SELECT t.id, t.identifier, t.name, t.status, t.tier, t.isolation, t.placement, \
             t.metadata, (SELECT group_concat(d.domain, ' ') FROM tenancy_tenant_domains d \
             WHERE d.tenant_id = t.id), t.created_at, t.updated_at FROM tenancy_tenants t ",
            $($rest),*
        )
    };
}

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

/// Records an applied registry step in the ledger: version, description, time applied.
const RECORD_STEP: &str =
    "INSERT INTO tenancy_registry_migrations (version, description, applied_at) VALUES (?, ?, ?)";

/// A [`TenantStore`] in a SQLite database file.
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
    pool: SqlitePool,
}

impl SqliteStore {
    /// A store on `pool`, used as given. Deleting a tenant relies on its connections
    /// enforcing foreign keys (sqlx's default); concurrent writers want WAL mode and a busy
    /// timeout, as [`SqliteStore::connect`] sets.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
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
        &self.pool
    }

    /// Creates or upgrades the registry tables. Idempotent, and safe when several processes
    /// call it at once: pending steps run in one `BEGIN IMMEDIATE` transaction, and are
    /// recorded in `tenancy_registry_migrations` (not sqlx's own migration table).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin_with(BEGIN_WRITE)
            .await
            .map_err(store_error)?;
        apply_pending_steps::<Sqlite>(&mut tx, STEPS, CREATE_LEDGER, RECORD_STEP).await?;
        tx.commit().await.map_err(store_error)
    }
}

/// Inserts the (normalised) domains of tenant `id`; a domain another tenant owns is
/// [`StoreError::DomainTaken`]. One statement per domain: they run in-process, and the
/// failing one names the taken domain.
async fn insert_domains(
    conn: &mut SqliteConnection,
    id: &str,
    domains: &[String],
) -> Result<(), StoreError> {
    for domain in domains {
        let inserted =
            sqlx::query("INSERT INTO tenancy_tenant_domains (domain, tenant_id) VALUES (?, ?)")
                .bind(domain)
                .bind(id)
                .execute(&mut *conn)
                .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                return Err(StoreError::DomainTaken(domain.clone()));
            }
            Err(error) => return Err(store_error(error)),
        }
    }
    Ok(())
}

/// The tenant `identifier` as `conn` sees it.
async fn fetch_tenant(
    conn: &mut SqliteConnection,
    identifier: &TenantIdentifier,
) -> Result<Option<Tenant>, StoreError> {
    optional_tenant(
        sqlx::query(tenant_query!("WHERE t.identifier = ?"))
            .bind(identifier.as_str())
            .fetch_optional(conn)
            .await,
    )
}

#[async_trait]
impl TenantStore for SqliteStore {
    async fn get(&self, identifier: &TenantIdentifier) -> Result<Option<Tenant>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        fetch_tenant(&mut conn, identifier).await
    }

    async fn get_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        optional_tenant(
            sqlx::query(tenant_query!("WHERE t.id = ?"))
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await,
        )
    }

    async fn get_by_domain(&self, domain: &str) -> Result<Option<Tenant>, StoreError> {
        optional_tenant(
            sqlx::query(tenant_query!(
                "JOIN tenancy_tenant_domains owned ON owned.tenant_id = t.id ",
                "WHERE owned.domain = ?"
            ))
            .bind(domain)
            .fetch_optional(&self.pool)
            .await,
        )
    }

    async fn create(&self, new: NewTenant) -> Result<Tenant, StoreError> {
        let tenant = tenant_to_create(new)?;
        let id = tenant.id.to_string();
        let mut tx = self
            .pool
            .begin_with(BEGIN_WRITE)
            .await
            .map_err(store_error)?;
        sqlx::query(
            "INSERT INTO tenancy_tenants (id, identifier, name, status, tier, isolation, \
             placement, metadata, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(tenant.identifier.as_str())
        .bind(&tenant.name)
        .bind(tenant.status.as_str())
        .bind(&tenant.tier)
        .bind(tenant.isolation.map(|mode| mode.as_str()))
        .bind(tenant.placement.as_deref())
        .bind(metadata_text(&tenant.metadata))
        .bind(tenant.created_at)
        .bind(tenant.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|error| tenant_insert_error(error, &tenant.identifier))?;
        insert_domains(&mut tx, &id, &tenant.domains).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(tenant)
    }

    async fn update(
        &self,
        identifier: &TenantIdentifier,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError> {
        update.validate()?;
        let mut tx = self
            .pool
            .begin_with(BEGIN_WRITE)
            .await
            .map_err(store_error)?;
        let id: Option<String> = sqlx::query_scalar(
            "UPDATE tenancy_tenants SET name = COALESCE(?, name), tier = COALESCE(?, tier), \
             isolation = CASE WHEN ? THEN ? ELSE isolation END, \
             placement = CASE WHEN ? THEN ? ELSE placement END, updated_at = ? \
             WHERE identifier = ? RETURNING id",
        )
        .bind(update.name.as_deref())
        .bind(update.tier.as_deref())
        .bind(update.isolation.is_some())
        .bind(update.isolation.flatten().map(|mode| mode.as_str()))
        .bind(update.placement.is_some())
        .bind(update.placement.as_ref().and_then(Option::as_deref))
        .bind(now())
        .bind(identifier.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let id = id.ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
        if let Some(domains) = update.domains {
            sqlx::query("DELETE FROM tenancy_tenant_domains WHERE tenant_id = ?")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            insert_domains(&mut tx, &id, &normalized_domains(domains)).await?;
        }
        let tenant = fetch_tenant(&mut tx, identifier)
            .await?
            .ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
        tx.commit().await.map_err(store_error)?;
        Ok(tenant)
    }

    async fn set_status(
        &self,
        identifier: &TenantIdentifier,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError> {
        let [p1, p2, p3, p4, p5] = predecessor_slots(status);
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        loop {
            let changed = sqlx::query(
                "UPDATE tenancy_tenants SET status = ?, updated_at = ? \
                 WHERE identifier = ? AND status IN (?, ?, ?, ?, ?)",
            )
            .bind(status.as_str())
            .bind(now())
            .bind(identifier.as_str())
            .bind(p1)
            .bind(p2)
            .bind(p3)
            .bind(p4)
            .bind(p5)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
            let tenant = fetch_tenant(&mut conn, identifier)
                .await?
                .ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
            if changed.rows_affected() > 0 {
                return Ok(tenant);
            }
            // Allowed now means the status changed between the two statements: try again.
            tenant.status.transition(status)?;
        }
    }

    async fn update_metadata(
        &self,
        identifier: &TenantIdentifier,
        patch: Metadata,
    ) -> Result<Tenant, StoreError> {
        let mut tx = self
            .pool
            .begin_with(BEGIN_WRITE)
            .await
            .map_err(store_error)?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT metadata FROM tenancy_tenants WHERE identifier = ?")
                .bind(identifier.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        let current = current.ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
        let mut metadata = parse_metadata(&current).map_err(StoreError::Corrupt)?;
        merge_metadata(&mut metadata, patch);
        sqlx::query("UPDATE tenancy_tenants SET metadata = ?, updated_at = ? WHERE identifier = ?")
            .bind(metadata_text(&metadata))
            .bind(now())
            .bind(identifier.as_str())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let tenant = fetch_tenant(&mut tx, identifier)
            .await?
            .ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
        tx.commit().await.map_err(store_error)?;
        Ok(tenant)
    }

    async fn delete(&self, identifier: &TenantIdentifier) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM tenancy_tenants WHERE identifier = ?")
            .bind(identifier.as_str())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Tenant>, StoreError> {
        all_tenants(
            sqlx::query(tenant_query!(
                "WHERE (?1 IS NULL OR t.status = ?1) AND (?2 IS NULL OR t.identifier > ?2) ",
                "ORDER BY t.identifier LIMIT ?3"
            ))
            .bind(query.status.map(TenantStatus::as_str))
            .bind(query.after.as_ref().map(TenantIdentifier::as_str))
            .bind(i64::from(query.effective_limit()))
            .fetch_all(&self.pool)
            .await,
        )
    }

    async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tenancy_tenants WHERE (?1 IS NULL OR status = ?1)",
        )
        .bind(status.map(TenantStatus::as_str))
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        tenant_count(count)
    }
}
