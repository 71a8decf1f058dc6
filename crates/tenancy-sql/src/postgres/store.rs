//! The tenant registry on PostgreSQL: tables `tenancy_tenants` and `tenancy_tenant_domains`,
//! migrated by [`PgStore::migrate`] under a transaction-scoped advisory lock.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use sqlx::postgres::{PgPool, PgPoolOptions, Postgres};
use sqlx::types::Json;
use tenancy_core::{
    ListQuery, Metadata, NewTenant, StoreError, Tenant, TenantId, TenantIdentifier, TenantStatus,
    TenantStore, TenantUpdate, merge_metadata,
};

use crate::registry::{
    RegistryStep, apply_pending_steps, is_unique_violation, normalized_domains, now,
    optional_tenant, parse_metadata, parse_status, predecessor_slots, store_error, tenant_count,
    tenant_from_row, tenant_insert_error, tenant_to_create,
};

/// The tenant columns in `TenantColumn` order, read from a relation aliased `t`.
macro_rules! tenant_columns {
    () => {
        "SELECT t.id::text, t.identifier, t.name, t.status, t.tier, t.isolation, t.placement, \
         t.metadata::text, (SELECT string_agg(d.domain, ' ') FROM tenancy_tenant_domains d \
         WHERE d.tenant_id = t.id), t.created_at, t.updated_at "
    };
}

/// Selects tenants from `tenancy_tenants t`, followed by the given SQL.
macro_rules! tenant_query {
    ($($rest:literal),*) => {
        concat!(tenant_columns!(), "FROM tenancy_tenants t ", $($rest),*)
    };
}

/// Runs an `UPDATE tenancy_tenants ... RETURNING *` (the given SQL) and selects the changed
/// tenant, in one statement.
macro_rules! update_returning_tenant {
    ($($update:literal),*) => {
        concat!("WITH changed AS (", $($update,)* " RETURNING *) ", tenant_columns!(), "FROM changed t")
    };
}

/// Key of the advisory lock serialising registry migrations (`tenancy` in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x0074_656e_616e_6379;

/// The registry schema, in order. Never edit a released step; append a new one.
const STEPS: &[RegistryStep] = &[RegistryStep {
    version: 1,
    description: "tenant registry tables",
    statements: &[
        "CREATE TABLE IF NOT EXISTS tenancy_tenants (
            id uuid PRIMARY KEY,
            identifier varchar(63) COLLATE \"C\" NOT NULL
                CONSTRAINT tenancy_tenants_identifier_key UNIQUE,
            name text NOT NULL,
            status varchar(32) NOT NULL,
            tier varchar(32) NOT NULL,
            isolation varchar(32),
            placement varchar(63),
            metadata jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL
        )",
        "CREATE TABLE IF NOT EXISTS tenancy_tenant_domains (
            domain varchar(253) PRIMARY KEY,
            tenant_id uuid NOT NULL REFERENCES tenancy_tenants (id) ON DELETE CASCADE
        )",
        "CREATE INDEX IF NOT EXISTS tenancy_tenants_status_idx
            ON tenancy_tenants (status, identifier)",
        "CREATE INDEX IF NOT EXISTS tenancy_tenant_domains_tenant_id_idx
            ON tenancy_tenant_domains (tenant_id)",
    ],
}];

/// Creates the ledger of applied registry steps.
const CREATE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS tenancy_registry_migrations (
    version bigint PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL
)";

/// Records an applied registry step in the ledger: version, description, time applied.
const RECORD_STEP: &str = "INSERT INTO tenancy_registry_migrations (version, description, applied_at) VALUES ($1, $2, $3)";

/// A [`TenantStore`] on PostgreSQL.
///
/// Creates are race-safe through the unique identifier, status changes are one
/// compare-and-set `UPDATE`, and metadata merges lock the row (`SELECT ... FOR UPDATE`).
///
/// ```no_run
/// # async fn example() -> Result<(), tenancy_core::StoreError> {
/// use tenancy_core::{NewTenant, TenantIdentifier, TenantStore};
/// use tenancy_sql::postgres::PgStore;
///
/// let store = PgStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// store.migrate().await?;
/// let acme = TenantIdentifier::parse("acme").unwrap();
/// store.create(NewTenant::new(acme.clone(), "Acme Inc.")).await?;
/// assert!(store.get(&acme).await?.is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// A store on `pool`, used as given.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Connects a pool to `url` (at most 10 connections, 5 s acquire timeout) and checks that
    /// the server answers. A server that cannot be reached is [`StoreError::Unavailable`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map(Self::new)
            .map_err(store_error)
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or upgrades the registry tables. Idempotent, and safe when several processes
    /// call it at once: pending steps run in one transaction holding an advisory lock, and are
    /// recorded in `tenancy_registry_migrations` (not sqlx's own migration table).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        apply_pending_steps::<Postgres>(&mut tx, STEPS, CREATE_LEDGER, RECORD_STEP).await?;
        tx.commit().await.map_err(store_error)
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
        let taken: Result<Option<String>, _> = sqlx::query_scalar(
            "SELECT domain FROM tenancy_tenant_domains \
             WHERE domain = ANY($1) AND tenant_id <> $2 ORDER BY domain LIMIT 1",
        )
        .bind(domains)
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await;
        match taken {
            Ok(taken) => StoreError::DomainTaken(taken.unwrap_or_else(|| domains[0].clone())),
            Err(error) => store_error(error),
        }
    }
}

/// Inserts the (normalised) domains of tenant `id` in one statement.
async fn insert_domains(
    conn: &mut PgConnection,
    id: TenantId,
    domains: &[String],
) -> Result<(), sqlx::Error> {
    if !domains.is_empty() {
        sqlx::query(
            "INSERT INTO tenancy_tenant_domains (domain, tenant_id) SELECT unnest($1::text[]), $2",
        )
        .bind(domains)
        .bind(id.0)
        .execute(conn)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl TenantStore for PgStore {
    async fn get(&self, identifier: &TenantIdentifier) -> Result<Option<Tenant>, StoreError> {
        optional_tenant(
            sqlx::query(tenant_query!("WHERE t.identifier = $1"))
                .bind(identifier.as_str())
                .fetch_optional(&self.pool)
                .await,
        )
    }

    async fn get_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        optional_tenant(
            sqlx::query(tenant_query!("WHERE t.id = $1"))
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await,
        )
    }

    async fn get_by_domain(&self, domain: &str) -> Result<Option<Tenant>, StoreError> {
        optional_tenant(
            sqlx::query(tenant_query!(
                "JOIN tenancy_tenant_domains owned ON owned.tenant_id = t.id ",
                "WHERE owned.domain = $1"
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(tenant.id.0)
        .bind(tenant.identifier.as_str())
        .bind(&tenant.name)
        .bind(tenant.status.as_str())
        .bind(&tenant.tier)
        .bind(tenant.isolation.map(|mode| mode.as_str()))
        .bind(tenant.placement.as_deref())
        .bind(Json(&tenant.metadata))
        .bind(tenant.created_at)
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
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "UPDATE tenancy_tenants SET name = COALESCE($2, name), tier = COALESCE($3, tier), \
             isolation = CASE WHEN $4 THEN $5 ELSE isolation END, \
             placement = CASE WHEN $6 THEN $7 ELSE placement END, updated_at = $8 \
             WHERE identifier = $1 RETURNING id",
        )
        .bind(identifier.as_str())
        .bind(update.name.as_deref())
        .bind(update.tier.as_deref())
        .bind(update.isolation.is_some())
        .bind(update.isolation.flatten().map(|mode| mode.as_str()))
        .bind(update.placement.is_some())
        .bind(update.placement.as_ref().and_then(Option::as_deref))
        .bind(now())
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let id = TenantId(id.ok_or_else(|| StoreError::NotFound(identifier.clone()))?);
        if let Some(domains) = update.domains {
            sqlx::query("DELETE FROM tenancy_tenant_domains WHERE tenant_id = $1")
                .bind(id.0)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            let domains = normalized_domains(domains);
            if let Err(error) = insert_domains(&mut tx, id, &domains).await {
                drop(tx);
                return Err(self.domain_error(error, id, &domains).await);
            }
        }
        let row = sqlx::query(tenant_query!("WHERE t.id = $1"))
            .bind(id.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        let tenant = tenant_from_row(&row)?;
        tx.commit().await.map_err(store_error)?;
        Ok(tenant)
    }

    async fn set_status(
        &self,
        identifier: &TenantIdentifier,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError> {
        let [p1, p2, p3, p4, p5] = predecessor_slots(status);
        loop {
            let changed = sqlx::query(update_returning_tenant!(
                "UPDATE tenancy_tenants SET status = $2, updated_at = $3 ",
                "WHERE identifier = $1 AND status IN ($4, $5, $6, $7, $8)"
            ))
            .bind(identifier.as_str())
            .bind(status.as_str())
            .bind(now())
            .bind(p1)
            .bind(p2)
            .bind(p3)
            .bind(p4)
            .bind(p5)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
            if let Some(row) = changed {
                return tenant_from_row(&row);
            }
            let current: Option<String> =
                sqlx::query_scalar("SELECT status FROM tenancy_tenants WHERE identifier = $1")
                    .bind(identifier.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(store_error)?;
            let current = current.ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
            let from = parse_status(&current).map_err(StoreError::Corrupt)?;
            // Allowed now means the status changed between the two statements: try again.
            from.transition(status)?;
        }
    }

    async fn update_metadata(
        &self,
        identifier: &TenantIdentifier,
        patch: Metadata,
    ) -> Result<Tenant, StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let current: Option<String> = sqlx::query_scalar(
            "SELECT metadata::text FROM tenancy_tenants WHERE identifier = $1 FOR UPDATE",
        )
        .bind(identifier.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let current = current.ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
        let mut metadata = parse_metadata(&current).map_err(StoreError::Corrupt)?;
        merge_metadata(&mut metadata, patch);
        let row = sqlx::query(update_returning_tenant!(
            "UPDATE tenancy_tenants SET metadata = $2, updated_at = $3 WHERE identifier = $1"
        ))
        .bind(identifier.as_str())
        .bind(Json(&metadata))
        .bind(now())
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        let tenant = tenant_from_row(&row)?;
        tx.commit().await.map_err(store_error)?;
        Ok(tenant)
    }

    async fn delete(&self, identifier: &TenantIdentifier) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM tenancy_tenants WHERE identifier = $1")
            .bind(identifier.as_str())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Tenant>, StoreError> {
        sqlx::query(tenant_query!(
            "WHERE ($1::text IS NULL OR t.status = $1) ",
            "AND ($2::text IS NULL OR t.identifier > $2) ",
            "ORDER BY t.identifier LIMIT $3"
        ))
        .bind(query.status.map(TenantStatus::as_str))
        .bind(query.after.as_ref().map(TenantIdentifier::as_str))
        .bind(i64::from(query.effective_limit()))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?
        .iter()
        .map(tenant_from_row)
        .collect()
    }

    async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tenancy_tenants WHERE ($1::text IS NULL OR status = $1)",
        )
        .bind(status.map(TenantStatus::as_str))
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        tenant_count(count)
    }
}
