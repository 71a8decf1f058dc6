//! The tenant registry on MariaDB/MySQL: tables `tenancy_tenants` and
//! `tenancy_tenant_domains`, migrated by [`MySqlStore::migrate`] under a named lock
//! (`GET_LOCK`), since DDL commits implicitly there.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::QueryBuilder;
use sqlx::mysql::{MySql, MySqlConnection, MySqlPool, MySqlPoolOptions};
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
             t.metadata, (SELECT GROUP_CONCAT(d.domain SEPARATOR ' ') \
             FROM tenancy_tenant_domains d WHERE d.tenant_id = t.id), t.created_at, t.updated_at \
             FROM tenancy_tenants t ",
            $($rest),*
        )
    };
}

/// Name of the lock serialising registry migrations across processes.
const MIGRATION_LOCK: &str = "tenancy_registry_migrations";

/// How long [`MySqlStore::migrate`] waits for another process's migration, in seconds.
const MIGRATION_LOCK_WAIT_SECONDS: i64 = 60;

/// The registry schema, in order. Never edit a released step; append a new one. Every
/// statement is idempotent, because MariaDB commits each DDL statement on its own.
const STEPS: &[RegistryStep] = &[RegistryStep {
    version: 1,
    description: "tenant registry tables",
    statements: &[
        "CREATE TABLE IF NOT EXISTS tenancy_tenants (
            id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
            identifier VARCHAR(63) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            name VARCHAR(200) NOT NULL,
            status VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            tier VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            isolation VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NULL,
            placement VARCHAR(63) CHARACTER SET ascii COLLATE ascii_bin NULL,
            metadata JSON NOT NULL,
            created_at DATETIME(6) NOT NULL,
            updated_at DATETIME(6) NOT NULL,
            CONSTRAINT tenancy_tenants_identifier_key UNIQUE (identifier),
            INDEX tenancy_tenants_status_idx (status, identifier)
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
        "CREATE TABLE IF NOT EXISTS tenancy_tenant_domains (
            domain VARCHAR(253) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
            tenant_id CHAR(36) CHARACTER SET ascii NOT NULL,
            INDEX tenancy_tenant_domains_tenant_id_idx (tenant_id),
            CONSTRAINT tenancy_tenant_domains_tenant_fk FOREIGN KEY (tenant_id)
                REFERENCES tenancy_tenants (id) ON DELETE CASCADE
        ) ENGINE = InnoDB",
    ],
}];

/// Creates the ledger of applied registry steps.
const CREATE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS tenancy_registry_migrations (
    version BIGINT NOT NULL PRIMARY KEY,
    description VARCHAR(200) NOT NULL,
    applied_at DATETIME(6) NOT NULL
) ENGINE = InnoDB";

/// Records an applied registry step in the ledger: version, description, time applied.
const RECORD_STEP: &str =
    "INSERT INTO tenancy_registry_migrations (version, description, applied_at) VALUES (?, ?, ?)";

/// A [`TenantStore`] on MariaDB/MySQL.
///
/// Creates are race-safe through the unique identifier, status changes are one
/// compare-and-set `UPDATE`, and metadata merges lock the row (`SELECT ... FOR UPDATE`).
///
/// ```no_run
/// # async fn example() -> Result<(), tenancy_core::StoreError> {
/// use tenancy_core::{NewTenant, TenantIdentifier, TenantStore};
/// use tenancy_sql::mysql::MySqlStore;
///
/// let store = MySqlStore::connect("mysql://root@127.0.0.1/app").await?;
/// store.migrate().await?;
/// let acme = TenantIdentifier::parse("acme").unwrap();
/// store.create(NewTenant::new(acme.clone(), "Acme Inc.")).await?;
/// assert!(store.get(&acme).await?.is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
}

impl MySqlStore {
    /// A store on `pool`, used as given. Its connections must use the UTC time zone
    /// (sqlx's default).
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }

    /// Connects a pool to `url` (at most 10 connections, 5 s acquire timeout) and checks that
    /// the server answers. A server that cannot be reached is [`StoreError::Unavailable`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        MySqlPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map(Self::new)
            .map_err(store_error)
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Creates or upgrades the registry tables. Idempotent, and safe when several processes
    /// call it at once: pending steps run while holding the named lock
    /// `tenancy_registry_migrations`, and are recorded in the table of that name (not sqlx's
    /// own migration table).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        // The lock belongs to the session: closing the connection on every exit (error or
        // cancellation) releases it, and no pooled connection keeps it.
        conn.close_on_drop();
        let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(MIGRATION_LOCK)
            .bind(MIGRATION_LOCK_WAIT_SECONDS)
            .fetch_one(&mut *conn)
            .await
            .map_err(store_error)?;
        if locked != Some(1) {
            return Err(StoreError::unavailable(
                "timed out waiting for another process to migrate the tenant registry",
            ));
        }
        apply_pending_steps::<MySql>(&mut conn, STEPS, CREATE_LEDGER, RECORD_STEP).await?;
        sqlx::query("DO RELEASE_LOCK(?)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// The error for a failed domain insert: a unique violation is [`StoreError::DomainTaken`]
    /// naming a domain another tenant owns (looked up after the transaction is gone, so no
    /// task ever waits for a second connection while holding one).
    async fn domain_error(
        &self,
        error: sqlx::Error,
        id: TenantId,
        domains: &[String],
    ) -> StoreError {
        if !is_unique_violation(&error) {
            return store_error(error);
        }
        for domain in domains {
            let owner: Result<Option<String>, _> =
                sqlx::query_scalar("SELECT tenant_id FROM tenancy_tenant_domains WHERE domain = ?")
                    .bind(domain)
                    .fetch_optional(&self.pool)
                    .await;
            match owner {
                Ok(Some(owner)) if owner != id.to_string() => {
                    return StoreError::DomainTaken(domain.clone());
                }
                Ok(_) => {}
                Err(error) => return store_error(error),
            }
        }
        StoreError::DomainTaken(domains[0].clone())
    }
}

/// Inserts the (normalised) domains of tenant `id` in one statement.
async fn insert_domains(
    conn: &mut MySqlConnection,
    id: TenantId,
    domains: &[String],
) -> Result<(), sqlx::Error> {
    if domains.is_empty() {
        return Ok(());
    }
    let id = id.to_string();
    let mut insert =
        QueryBuilder::<MySql>::new("INSERT INTO tenancy_tenant_domains (domain, tenant_id) ");
    insert.push_values(domains, |mut row, domain| {
        row.push_bind(domain.as_str()).push_bind(id.as_str());
    });
    insert.build().execute(conn).await?;
    Ok(())
}

/// The tenant `identifier` as `conn` sees it.
async fn fetch_tenant(
    conn: &mut MySqlConnection,
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
impl TenantStore for MySqlStore {
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
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query(
            "INSERT INTO tenancy_tenants (id, identifier, name, status, tier, isolation, \
             placement, metadata, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(tenant.id.to_string())
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
        if let Err(error) = insert_domains(&mut tx, tenant.id, &tenant.domains).await {
            drop(tx);
            return Err(self.domain_error(error, tenant.id, &tenant.domains).await);
        }
        tx.commit().await.map_err(store_error)?;
        Ok(tenant)
    }

    async fn update(
        &self,
        identifier: &TenantIdentifier,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError> {
        update.validate()?;
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM tenancy_tenants WHERE identifier = ? FOR UPDATE")
                .bind(identifier.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        let id = id.ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
        sqlx::query(
            "UPDATE tenancy_tenants SET name = COALESCE(?, name), tier = COALESCE(?, tier), \
             isolation = CASE WHEN ? THEN ? ELSE isolation END, \
             placement = CASE WHEN ? THEN ? ELSE placement END, updated_at = ? WHERE id = ?",
        )
        .bind(update.name.as_deref())
        .bind(update.tier.as_deref())
        .bind(update.isolation.is_some())
        .bind(update.isolation.flatten().map(|mode| mode.as_str()))
        .bind(update.placement.is_some())
        .bind(update.placement.as_ref().and_then(Option::as_deref))
        .bind(now())
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if let Some(domains) = update.domains {
            sqlx::query("DELETE FROM tenancy_tenant_domains WHERE tenant_id = ?")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            let domains = normalized_domains(domains);
            let tenant_id = id
                .parse()
                .map(TenantId)
                .map_err(|error| StoreError::Corrupt(format!("tenant id '{id}': {error}")))?;
            if let Err(error) = insert_domains(&mut tx, tenant_id, &domains).await {
                drop(tx);
                return Err(self.domain_error(error, tenant_id, &domains).await);
            }
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
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let current: Option<String> = sqlx::query_scalar(
            "SELECT metadata FROM tenancy_tenants WHERE identifier = ? FOR UPDATE",
        )
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
        let status = query.status.map(TenantStatus::as_str);
        let after = query.after.as_ref().map(TenantIdentifier::as_str);
        all_tenants(
            sqlx::query(tenant_query!(
                "WHERE (? IS NULL OR t.status = ?) AND (? IS NULL OR t.identifier > ?) ",
                "ORDER BY t.identifier LIMIT ?"
            ))
            .bind(status)
            .bind(status)
            .bind(after)
            .bind(after)
            .bind(i64::from(query.effective_limit()))
            .fetch_all(&self.pool)
            .await,
        )
    }

    async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError> {
        let status = status.map(TenantStatus::as_str);
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tenancy_tenants WHERE (? IS NULL OR status = ?)",
        )
        .bind(status)
        .bind(status)
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        tenant_count(count)
    }
}
