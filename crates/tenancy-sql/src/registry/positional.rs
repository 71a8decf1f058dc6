//! The one registry store of MariaDB/MySQL and SQLite.
//!
//! Both write the same SQL with `?` placeholders and keep ids, statuses and metadata as text,
//! so [`PositionalRegistry`] runs every [`TenantStore`](tenancy_core::TenantStore) operation for
//! both. A [`PositionalBackend`] supplies what differs: how a select joins the domains and
//! locks a row ([`PositionalQueries`]), how a write transaction begins, and how domains are
//! inserted and a taken one is reported.

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Transaction, Type,
};
use tenancy_core::{
    ListQuery, Metadata, NewTenant, StoreError, Tenant, TenantId, TenantIdentifier, TenantStatus,
    TenantUpdate, merge_metadata,
};

use crate::registry::{
    metadata_text, normalized_domains, now, optional_tenant, parse_metadata, predecessor_slots,
    store_error, tenant_count, tenant_from_row, tenant_insert_error, tenant_to_create,
};

/// Records an applied registry step in the ledger: version, description, time applied.
pub(crate) const RECORD_REGISTRY_STEP: &str =
    "INSERT INTO tenancy_registry_migrations (version, description, applied_at) VALUES (?, ?, ?)";

/// The statements whose text differs between MariaDB/MySQL and SQLite, built by
/// [`positional_queries!`].
#[derive(Debug)]
pub(crate) struct PositionalQueries {
    /// Selects the tenant whose identifier is bound.
    pub(crate) tenant_by_identifier: &'static str,
    /// Selects the tenant whose id (as text) is bound.
    pub(crate) tenant_by_id: &'static str,
    /// Selects the tenant owning the bound domain.
    pub(crate) tenant_by_domain: &'static str,
    /// Selects a page of tenants in identifier order; binds the status filter twice, the
    /// identifier to start after twice, then the limit.
    pub(crate) tenant_page: &'static str,
    /// Selects the id of the tenant whose identifier is bound, locking its row until the
    /// write transaction ends.
    pub(crate) locked_tenant_id: &'static str,
    /// Selects the metadata of the tenant whose identifier is bound, locking its row until
    /// the write transaction ends.
    pub(crate) locked_tenant_metadata: &'static str,
}

/// Selects tenants from `tenancy_tenants t` in `TenantColumn` order, the domains joined by
/// `$domains` (an aggregate of `d.domain` over `tenancy_tenant_domains d`), followed by the
/// given SQL.
macro_rules! positional_tenant_select {
    ($domains:literal, $($rest:literal),*) => {
        concat!(
            "SELECT t.id, t.identifier, t.name, t.status, t.tier, t.isolation, t.placement, \
             t.metadata, (SELECT ", $domains, " FROM tenancy_tenant_domains d \
             WHERE d.tenant_id = t.id), t.created_at, t.updated_at FROM tenancy_tenants t ",
            $($rest),*
        )
    };
}
pub(crate) use positional_tenant_select;

/// The [`PositionalQueries`] of a backend, from its aggregate joining the domains `d.domain`
/// by single spaces and the clause that locks a selected row (empty where the write
/// transaction already holds the lock).
macro_rules! positional_queries {
    (domains: $domains:literal, row_lock: $row_lock:literal) => {
        $crate::registry::positional::PositionalQueries {
            tenant_by_identifier: $crate::registry::positional::positional_tenant_select!(
                $domains,
                "WHERE t.identifier = ?"
            ),
            tenant_by_id: $crate::registry::positional::positional_tenant_select!(
                $domains,
                "WHERE t.id = ?"
            ),
            tenant_by_domain: $crate::registry::positional::positional_tenant_select!(
                $domains,
                "JOIN tenancy_tenant_domains owned ON owned.tenant_id = t.id ",
                "WHERE owned.domain = ?"
            ),
            tenant_page: $crate::registry::positional::positional_tenant_select!(
                $domains,
                "WHERE (? IS NULL OR t.status = ?) AND (? IS NULL OR t.identifier > ?) ",
                "ORDER BY t.identifier LIMIT ?"
            ),
            locked_tenant_id: concat!(
                "SELECT id FROM tenancy_tenants WHERE identifier = ?",
                $row_lock
            ),
            locked_tenant_metadata: concat!(
                "SELECT metadata FROM tenancy_tenants WHERE identifier = ?",
                $row_lock
            ),
        }
    };
}
pub(crate) use positional_queries;

/// What a backend of [`PositionalRegistry`] does its own way.
pub(crate) trait PositionalBackend: Database {
    /// The statements whose text differs.
    const QUERIES: PositionalQueries;

    /// Opens a transaction on `pool` for a write.
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send;

    /// Inserts the (normalised) `domains` of tenant `id` in the write transaction `tx` and
    /// hands it back; a domain another tenant owns is [`StoreError::DomainTaken`]. On an
    /// error the transaction is gone (rolled back).
    fn insert_domains(
        pool: &Pool<Self>,
        tx: Transaction<'static, Self>,
        id: &str,
        domains: &[String],
    ) -> impl Future<Output = Result<Transaction<'static, Self>, StoreError>> + Send;

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// The tenant registry on a pool of MariaDB/MySQL or SQLite: every operation of a
/// [`TenantStore`](tenancy_core::TenantStore), written once.
///
/// Creates are race-safe through the unique identifier, status changes are one
/// compare-and-set `UPDATE`, and updates lock the tenant's row in their write transaction.
#[derive(Debug)]
pub(crate) struct PositionalRegistry<DB: Database> {
    pool: Pool<DB>,
}

/// A clone shares the pool (derived, it would ask for `DB: Clone`).
impl<DB: Database> Clone for PositionalRegistry<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<DB> PositionalRegistry<DB>
where
    DB: PositionalBackend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
    bool: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    DateTime<Utc>: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
{
    /// The registry on `pool`.
    pub(crate) fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }

    /// The pool the registry uses.
    pub(crate) fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// The tenant `identifier`.
    pub(crate) async fn get(
        &self,
        identifier: &TenantIdentifier,
    ) -> Result<Option<Tenant>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        Self::fetch_tenant(&mut conn, identifier).await
    }

    /// The tenant with the id `id`.
    pub(crate) async fn get_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        let id = id.to_string();
        optional_tenant(
            sqlx::query(DB::QUERIES.tenant_by_id)
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await,
        )
    }

    /// The tenant owning `domain`.
    pub(crate) async fn get_by_domain(&self, domain: &str) -> Result<Option<Tenant>, StoreError> {
        optional_tenant(
            sqlx::query(DB::QUERIES.tenant_by_domain)
                .bind(domain)
                .fetch_optional(&self.pool)
                .await,
        )
    }

    /// Creates the tenant `new`; a taken identifier is [`StoreError::AlreadyExists`].
    pub(crate) async fn create(&self, new: NewTenant) -> Result<Tenant, StoreError> {
        let tenant = tenant_to_create(new)?;
        let id = tenant.id.to_string();
        let metadata = metadata_text(&tenant.metadata);
        let mut tx = DB::begin_write(&self.pool).await.map_err(store_error)?;
        sqlx::query(
            "INSERT INTO tenancy_tenants (id, identifier, name, status, tier, isolation, \
             placement, metadata, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.as_str())
        .bind(tenant.identifier.as_str())
        .bind(tenant.name.as_str())
        .bind(tenant.status.as_str())
        .bind(tenant.tier.as_str())
        .bind(tenant.isolation.map(|mode| mode.as_str()))
        .bind(tenant.placement.as_deref())
        .bind(metadata.as_str())
        .bind(tenant.created_at)
        .bind(tenant.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|error| tenant_insert_error(error, &tenant.identifier))?;
        let tx = DB::insert_domains(&self.pool, tx, &id, &tenant.domains).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(tenant)
    }

    /// Applies `update` to the tenant `identifier` under its row lock.
    pub(crate) async fn update(
        &self,
        identifier: &TenantIdentifier,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError> {
        update.validate()?;
        let mut tx = DB::begin_write(&self.pool).await.map_err(store_error)?;
        let id: Option<String> = sqlx::query_scalar(DB::QUERIES.locked_tenant_id)
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
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if let Some(domains) = update.domains {
            sqlx::query("DELETE FROM tenancy_tenant_domains WHERE tenant_id = ?")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            tx = DB::insert_domains(&self.pool, tx, &id, &normalized_domains(domains)).await?;
        }
        let tenant = Self::fetch_tenant(&mut tx, identifier)
            .await?
            .ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
        tx.commit().await.map_err(store_error)?;
        Ok(tenant)
    }

    /// Moves the tenant `identifier` to `status` if its current status allows it.
    pub(crate) async fn set_status(
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
            let tenant = Self::fetch_tenant(&mut conn, identifier)
                .await?
                .ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
            if DB::rows_affected(&changed) > 0 {
                return Ok(tenant);
            }
            // Allowed now means the status changed between the two statements: try again.
            tenant.status.transition(status)?;
        }
    }

    /// Merges `patch` into the metadata of the tenant `identifier` under its row lock.
    pub(crate) async fn update_metadata(
        &self,
        identifier: &TenantIdentifier,
        patch: Metadata,
    ) -> Result<Tenant, StoreError> {
        let mut tx = DB::begin_write(&self.pool).await.map_err(store_error)?;
        let current: Option<String> = sqlx::query_scalar(DB::QUERIES.locked_tenant_metadata)
            .bind(identifier.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        let current = current.ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
        let mut metadata = parse_metadata(&current).map_err(StoreError::Corrupt)?;
        merge_metadata(&mut metadata, patch);
        let metadata = metadata_text(&metadata);
        sqlx::query("UPDATE tenancy_tenants SET metadata = ?, updated_at = ? WHERE identifier = ?")
            .bind(metadata.as_str())
            .bind(now())
            .bind(identifier.as_str())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let tenant = Self::fetch_tenant(&mut tx, identifier)
            .await?
            .ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
        tx.commit().await.map_err(store_error)?;
        Ok(tenant)
    }

    /// Deletes the tenant `identifier` (its domains go with it); whether there was one.
    pub(crate) async fn delete(&self, identifier: &TenantIdentifier) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM tenancy_tenants WHERE identifier = ?")
            .bind(identifier.as_str())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(DB::rows_affected(&deleted) > 0)
    }

    /// The tenant `identifier` as `conn` sees it.
    async fn fetch_tenant(
        conn: &mut DB::Connection,
        identifier: &TenantIdentifier,
    ) -> Result<Option<Tenant>, StoreError> {
        optional_tenant(
            sqlx::query(DB::QUERIES.tenant_by_identifier)
                .bind(identifier.as_str())
                .fetch_optional(conn)
                .await,
        )
    }

    /// The page of tenants `query` asks for, in identifier order.
    pub(crate) async fn list(&self, query: ListQuery) -> Result<Vec<Tenant>, StoreError> {
        let status = query.status.map(TenantStatus::as_str);
        let after = query.after.as_ref().map(TenantIdentifier::as_str);
        sqlx::query(DB::QUERIES.tenant_page)
            .bind(status)
            .bind(status)
            .bind(after)
            .bind(after)
            .bind(i64::from(query.effective_limit()))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?
            .iter()
            .map(tenant_from_row)
            .collect()
    }

    /// How many tenants there are, only those in `status` if given.
    pub(crate) async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError> {
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

/// Implements [`TenantStore`](tenancy_core::TenantStore) for a store whose `registry` field is a
/// [`PositionalRegistry`], handing every operation to it.
macro_rules! tenant_store_on_positional_registry {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl tenancy_core::TenantStore for $store {
            async fn get(
                &self,
                identifier: &tenancy_core::TenantIdentifier,
            ) -> Result<Option<tenancy_core::Tenant>, tenancy_core::StoreError> {
                self.registry.get(identifier).await
            }

            async fn get_by_id(
                &self,
                id: tenancy_core::TenantId,
            ) -> Result<Option<tenancy_core::Tenant>, tenancy_core::StoreError> {
                self.registry.get_by_id(id).await
            }

            async fn get_by_domain(
                &self,
                domain: &str,
            ) -> Result<Option<tenancy_core::Tenant>, tenancy_core::StoreError> {
                self.registry.get_by_domain(domain).await
            }

            async fn create(
                &self,
                new: tenancy_core::NewTenant,
            ) -> Result<tenancy_core::Tenant, tenancy_core::StoreError> {
                self.registry.create(new).await
            }

            async fn update(
                &self,
                identifier: &tenancy_core::TenantIdentifier,
                update: tenancy_core::TenantUpdate,
            ) -> Result<tenancy_core::Tenant, tenancy_core::StoreError> {
                self.registry.update(identifier, update).await
            }

            async fn set_status(
                &self,
                identifier: &tenancy_core::TenantIdentifier,
                status: tenancy_core::TenantStatus,
            ) -> Result<tenancy_core::Tenant, tenancy_core::StoreError> {
                self.registry.set_status(identifier, status).await
            }

            async fn update_metadata(
                &self,
                identifier: &tenancy_core::TenantIdentifier,
                patch: tenancy_core::Metadata,
            ) -> Result<tenancy_core::Tenant, tenancy_core::StoreError> {
                self.registry.update_metadata(identifier, patch).await
            }

            async fn delete(
                &self,
                identifier: &tenancy_core::TenantIdentifier,
            ) -> Result<bool, tenancy_core::StoreError> {
                self.registry.delete(identifier).await
            }

            async fn list(
                &self,
                query: tenancy_core::ListQuery,
            ) -> Result<Vec<tenancy_core::Tenant>, tenancy_core::StoreError> {
                self.registry.list(query).await
            }

            async fn count(
                &self,
                status: Option<tenancy_core::TenantStatus>,
            ) -> Result<u64, tenancy_core::StoreError> {
                self.registry.count(status).await
            }
        }
    };
}
pub(crate) use tenant_store_on_positional_registry;
