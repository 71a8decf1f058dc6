//! The tenant registry on MariaDB/MySQL: tables `tenancy_tenants` and
//! `tenancy_tenant_domains`, migrated by [`MySqlStore::migrate`] under a named lock
//! (`GET_LOCK`), since DDL commits implicitly there. The store's operations are the ones it
//! shares with SQLite ([`PositionalRegistry`]).

use std::time::Duration;

use sqlx::mysql::{MySql, MySqlConnection, MySqlPool, MySqlPoolOptions, MySqlQueryResult};
use sqlx::{QueryBuilder, Transaction};
use tenancy_core::StoreError;

use crate::registry::positional::{
    PositionalBackend, PositionalQueries, PositionalRegistry, RECORD_REGISTRY_STEP,
    positional_queries, tenant_store_on_positional_registry,
};
use crate::registry::{RegistryStep, apply_pending_steps, is_unique_violation, store_error};

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

/// A [`TenantStore`](tenancy_core::TenantStore) on MariaDB/MySQL.
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
    registry: PositionalRegistry<MySql>,
}

impl MySqlStore {
    /// A store on `pool`, used as given. Its connections must use the UTC time zone
    /// (sqlx's default).
    pub fn new(pool: MySqlPool) -> Self {
        Self {
            registry: PositionalRegistry::new(pool),
        }
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
        self.registry.pool()
    }

    /// Creates or upgrades the registry tables. Idempotent, and safe when several processes
    /// call it at once: pending steps run while holding the named lock
    /// `tenancy_registry_migrations`, and are recorded in the table of that name (not sqlx's
    /// own migration table).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool().acquire().await.map_err(store_error)?;
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
        apply_pending_steps::<MySql>(&mut conn, STEPS, CREATE_LEDGER, RECORD_REGISTRY_STEP).await?;
        sqlx::query("DO RELEASE_LOCK(?)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

tenant_store_on_positional_registry!(MySqlStore);

impl PositionalBackend for MySql {
    const QUERIES: PositionalQueries = positional_queries!(
        domains: "GROUP_CONCAT(d.domain SEPARATOR ' ')",
        row_lock: " FOR UPDATE"
    );

    async fn begin_write(pool: &MySqlPool) -> Result<Transaction<'static, MySql>, sqlx::Error> {
        pool.begin().await
    }

    /// One statement for all the domains; a clash is explained once the transaction is gone
    /// (see [`domain_error`]).
    async fn insert_domains(
        pool: &MySqlPool,
        mut tx: Transaction<'static, MySql>,
        id: &str,
        domains: &[String],
    ) -> Result<Transaction<'static, MySql>, StoreError> {
        match insert_domain_rows(&mut tx, id, domains).await {
            Ok(()) => Ok(tx),
            Err(error) => {
                drop(tx);
                Err(domain_error(pool, error, id, domains).await)
            }
        }
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// Inserts the (normalised) domains of tenant `id` in one statement.
async fn insert_domain_rows(
    conn: &mut MySqlConnection,
    id: &str,
    domains: &[String],
) -> Result<(), sqlx::Error> {
    if domains.is_empty() {
        return Ok(());
    }
    let mut insert =
        QueryBuilder::<MySql>::new("INSERT INTO tenancy_tenant_domains (domain, tenant_id) ");
    insert.push_values(domains, |mut row, domain| {
        row.push_bind(domain.as_str()).push_bind(id);
    });
    insert.build().execute(conn).await?;
    Ok(())
}

/// The error for a failed domain insert: a unique violation is [`StoreError::DomainTaken`]
/// naming a domain another tenant owns (looked up after the transaction is gone, so no task
/// ever waits for a second connection while holding one).
async fn domain_error(
    pool: &MySqlPool,
    error: sqlx::Error,
    id: &str,
    domains: &[String],
) -> StoreError {
    if !is_unique_violation(&error) {
        return store_error(error);
    }
    for domain in domains {
        let owner: Result<Option<String>, _> =
            sqlx::query_scalar("SELECT tenant_id FROM tenancy_tenant_domains WHERE domain = ?")
                .bind(domain)
                .fetch_optional(pool)
                .await;
        match owner {
            Ok(Some(owner)) if owner != id => return StoreError::DomainTaken(domain.clone()),
            Ok(_) => {}
            Err(error) => return store_error(error),
        }
    }
    StoreError::DomainTaken(domains[0].clone())
}
