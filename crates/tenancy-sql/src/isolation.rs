//! The backend-generic isolation handle: [`TenantIsolation`] opens a [`TenantTx`] scoped to a
//! tenant, whichever way the tenant is isolated. Implemented by PostgreSQL schema/RLS isolation
//! (`postgres::PgIsolation`), by database-per-tenant pools ([`TenantPools`]) and by
//! [`HybridIsolation`], which sends each tenant to one of two handles by its isolation mode.
//! Shared-pool handles bound each tenant's concurrent transactions with a per-tenant
//! concurrency limit (noisy-neighbour protection).
//!
//! [`TenantPools`]: crate::database_per_tenant::TenantPools

use std::fmt;
use std::sync::Arc;
#[cfg(feature = "postgres")]
use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures_util::future::BoxFuture;
use sqlx::Database;
use tenancy_core::{IsolationMode, Tenant};
#[cfg(feature = "postgres")]
use {
    tenancy_core::TenantIdentifier,
    tokio::{sync::Semaphore, time::Instant},
};

use crate::isolation_error::IsolationError;
use crate::tx::TenantTx;

/// Opens transactions scoped to a tenant. Object safe: an application keeps one
/// `Arc<dyn TenantIsolation<Database = DB>>` (see [`isolation_extension`]) and need not know
/// how tenants are isolated.
///
/// ```
/// use std::sync::Arc;
/// use tenancy_core::Tenant;
/// use tenancy_sql::{IsolationError, TenantIsolation};
///
/// async fn handle<DB: sqlx::Database>(
///     isolation: Arc<dyn TenantIsolation<Database = DB>>,
///     tenant: &Tenant,
/// ) -> Result<(), IsolationError> {
///     let tx = isolation.begin(tenant).await?;
///     // sqlx::query("..").execute(&mut *tx).await?;
///     tx.commit().await
/// }
/// ```
pub trait TenantIsolation: Send + Sync + 'static {
    /// The sqlx database the transactions run on.
    type Database: Database;

    /// The mode this handle uses for `tenant` (`schema`, `rls` or `database`).
    fn mode_for(&self, tenant: &Tenant) -> IsolationMode;

    /// Opens a transaction scoped to `tenant` in `mode`; a mode the handle does not serve is
    /// [`IsolationError::UnsupportedMode`].
    fn begin_in_mode<'a>(
        &'a self,
        tenant: &'a Tenant,
        mode: IsolationMode,
    ) -> BoxFuture<'a, Result<TenantTx<Self::Database>, IsolationError>>;

    /// Opens a transaction scoped to `tenant` in [the mode chosen for it](Self::mode_for).
    fn begin<'a>(
        &'a self,
        tenant: &'a Tenant,
    ) -> BoxFuture<'a, Result<TenantTx<Self::Database>, IsolationError>> {
        self.begin_in_mode(tenant, self.mode_for(tenant))
    }
}

impl<T: TenantIsolation + ?Sized> TenantIsolation for Arc<T> {
    type Database = T::Database;

    fn mode_for(&self, tenant: &Tenant) -> IsolationMode {
        (**self).mode_for(tenant)
    }

    fn begin_in_mode<'a>(
        &'a self,
        tenant: &'a Tenant,
        mode: IsolationMode,
    ) -> BoxFuture<'a, Result<TenantTx<Self::Database>, IsolationError>> {
        (**self).begin_in_mode(tenant, mode)
    }
}

/// Wraps `handle` as the shared trait object the axum extractor of [`TenantTx`] looks for in
/// the request extensions (feature `axum`): `router.layer(Extension(isolation_extension(h)))`.
///
/// ```
/// use std::sync::Arc;
/// use tenancy_sql::{HybridIsolation, TenantIsolation};
///
/// fn extension_of<DB: sqlx::Database>(
///     hybrid: HybridIsolation<DB>,
/// ) -> Arc<dyn TenantIsolation<Database = DB>> {
///     tenancy_sql::isolation_extension(hybrid)
/// }
/// ```
pub fn isolation_extension<I: TenantIsolation>(
    handle: I,
) -> Arc<dyn TenantIsolation<Database = I::Database>> {
    Arc::new(handle)
}

type ModeSelector = Arc<dyn Fn(&Tenant) -> IsolationMode + Send + Sync>;

/// Hybrid isolation: each tenant goes to a shared-database handle (`schema` and `rls`, such as
/// `postgres::PgIsolation`) or a database-per-tenant handle (`database`, such as
/// [`TenantPools`](crate::database_per_tenant::TenantPools)) by the mode a selector picks for
/// it, typically the tenant's override, else its tier's mode:
/// `move |tenant| config.isolation_for(tenant)` with a [`tenancy_core::TenancyConfig`].
/// The shared handle is asked for exactly the mode selected. Cheap to clone.
///
/// ```
/// use tenancy_core::TenancyConfig;
/// use tenancy_sql::{HybridIsolation, TenantIsolation};
///
/// // With PostgreSQL: `shared` a `PgIsolation`, `dedicated` a `PgTenantPools`.
/// fn hybrid<DB: sqlx::Database>(
///     shared: impl TenantIsolation<Database = DB>,
///     dedicated: impl TenantIsolation<Database = DB>,
///     config: TenancyConfig,
/// ) -> HybridIsolation<DB> {
///     HybridIsolation::new(shared, dedicated, move |tenant| config.isolation_for(tenant))
/// }
/// ```
pub struct HybridIsolation<DB: Database> {
    shared: Arc<dyn TenantIsolation<Database = DB>>,
    dedicated: Arc<dyn TenantIsolation<Database = DB>>,
    select: ModeSelector,
}

impl<DB: Database> HybridIsolation<DB> {
    /// Sends `schema` and `rls` tenants to `shared`, `database` tenants to `dedicated`, by the
    /// mode `select` picks (a selector answering `hybrid` makes `begin` fail with
    /// [`IsolationError::UnsupportedMode`]).
    pub fn new(
        shared: impl TenantIsolation<Database = DB>,
        dedicated: impl TenantIsolation<Database = DB>,
        select: impl Fn(&Tenant) -> IsolationMode + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared: Arc::new(shared),
            dedicated: Arc::new(dedicated),
            select: Arc::new(select),
        }
    }
}

impl<DB: Database> Clone for HybridIsolation<DB> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            dedicated: Arc::clone(&self.dedicated),
            select: Arc::clone(&self.select),
        }
    }
}

impl<DB: Database> fmt::Debug for HybridIsolation<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridIsolation").finish_non_exhaustive()
    }
}

impl<DB: Database> TenantIsolation for HybridIsolation<DB> {
    type Database = DB;

    fn mode_for(&self, tenant: &Tenant) -> IsolationMode {
        (self.select)(tenant)
    }

    fn begin_in_mode<'a>(
        &'a self,
        tenant: &'a Tenant,
        mode: IsolationMode,
    ) -> BoxFuture<'a, Result<TenantTx<DB>, IsolationError>> {
        match mode {
            IsolationMode::Schema | IsolationMode::Rls => self.shared.begin_in_mode(tenant, mode),
            IsolationMode::Database => self.dedicated.begin_in_mode(tenant, mode),
            IsolationMode::Hybrid => {
                Box::pin(async move { Err(IsolationError::UnsupportedMode(mode)) })
            }
        }
    }
}

/// The per-tenant concurrency limit of a shared pool: at most `limit` transactions of one tenant
/// at once, so one tenant flooding slow queries cannot hold every pooled connection.
///
/// A tenant's semaphore lives in a sharded map only while some transaction of the tenant holds
/// or waits for a slot, so the map holds at most the tenants in flight. Taking a slot locks one
/// shard for a hash-map lookup (plus an insert when the tenant has nothing in flight).
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub(crate) struct TenantConcurrencyLimit {
    limit: usize,
    wait: Duration,
    hasher: RandomState,
    shards: Box<[Mutex<TenantSemaphores>]>,
}

#[cfg(feature = "postgres")]
impl TenantConcurrencyLimit {
    /// Shards of the tenant map; a power of two, enough to keep a 2-64 core machine's threads
    /// off each other's locks.
    const SHARDS: usize = 64;

    /// At most `limit` (at least 1) concurrent transactions per tenant; a caller finding its
    /// tenant at the limit waits at most `wait` for a slot.
    pub(crate) fn new(limit: u32, wait: Duration) -> Self {
        Self {
            limit: limit.max(1) as usize,
            wait,
            hasher: RandomState::new(),
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, tenant: &TenantIdentifier) -> MutexGuard<'_, TenantSemaphores> {
        let index = self.hasher.hash_one(tenant) as usize % self.shards.len();
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one of `tenant`'s slots, waiting at most the configured time, else
    /// [`IsolationError::TenantBusy`]. Cancel-safe: a dropped wait takes nothing.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        tenant: &TenantIdentifier,
    ) -> Result<TenantSlot, IsolationError> {
        let semaphore = Arc::clone(
            self.shard(tenant)
                .entry(tenant.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit))),
        );
        let entry = TenantEntry {
            limit: Arc::clone(self),
            tenant: tenant.clone(),
            semaphore: Some(semaphore),
        };
        let started = Instant::now();
        if entry.take_permit(self.wait).await {
            Ok(TenantSlot { entry })
        } else {
            Err(IsolationError::TenantBusy {
                identifier: tenant.clone(),
                waited: started.elapsed(),
            })
        }
    }

    /// Tenants with a transaction in flight or waiting (for tests).
    #[cfg(test)]
    fn tenants_tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(feature = "postgres")]
type TenantSemaphores = HashMap<TenantIdentifier, Arc<Semaphore>>;

/// A reference to a tenant's semaphore in a [`TenantConcurrencyLimit`]; the last one dropped
/// removes the semaphore from the map.
#[cfg(feature = "postgres")]
#[derive(Debug)]
struct TenantEntry {
    limit: Arc<TenantConcurrencyLimit>,
    tenant: TenantIdentifier,
    /// `Some` until dropped.
    semaphore: Option<Arc<Semaphore>>,
}

#[cfg(feature = "postgres")]
impl TenantEntry {
    /// Takes a permit of the semaphore, waiting at most `wait`; whether it got one. The permit
    /// is given back by [`TenantSlot`]'s drop.
    async fn take_permit(&self, wait: Duration) -> bool {
        let Some(semaphore) = self.semaphore.as_deref() else {
            return false;
        };
        let permit = match semaphore.try_acquire() {
            Ok(permit) => permit,
            Err(_) => match tokio::time::timeout(wait, semaphore.acquire()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) | Err(_) => return false,
            },
        };
        permit.forget();
        true
    }
}

#[cfg(feature = "postgres")]
impl Drop for TenantEntry {
    fn drop(&mut self) {
        let mut shard = self.limit.shard(&self.tenant);
        // References are only taken under the shard lock and given back under it, so a count of
        // two (the map's and this one) means nobody else holds or waits for a slot.
        if let Some(semaphore) = self.semaphore.take() {
            if Arc::strong_count(&semaphore) == 2 {
                shard.remove(&self.tenant);
            }
            drop(semaphore);
        }
        drop(shard);
    }
}

/// One of a tenant's concurrency slots, held by its [`TenantTx`] for the transaction's lifetime
/// and given back when dropped.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub(crate) struct TenantSlot {
    entry: TenantEntry,
}

#[cfg(feature = "postgres")]
impl Drop for TenantSlot {
    fn drop(&mut self) {
        if let Some(semaphore) = &self.entry.semaphore {
            semaphore.add_permits(1);
        }
    }
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn id(s: &str) -> TenantIdentifier {
        TenantIdentifier::parse(s).unwrap()
    }

    #[tokio::test]
    async fn a_tenant_at_its_limit_waits_then_is_busy_while_others_pass() {
        let limit = Arc::new(TenantConcurrencyLimit::new(2, Duration::from_millis(30)));
        let (acme, globex) = (id("acme"), id("globex"));
        let first = limit.acquire(&acme).await.unwrap();
        let second = limit.acquire(&acme).await.unwrap();
        let started = Instant::now();
        match limit.acquire(&acme).await {
            Err(IsolationError::TenantBusy { identifier, waited }) => {
                assert_eq!(identifier, acme);
                assert!(waited >= Duration::from_millis(30), "{waited:?}");
            }
            other => panic!("expected TenantBusy, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let other = limit.acquire(&globex).await.unwrap();
        assert_eq!(limit.tenants_tracked(), 2);

        drop(first);
        let third = limit.acquire(&acme).await.unwrap();
        drop((second, third, other));
        assert_eq!(limit.tenants_tracked(), 0, "idle tenants are forgotten");
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_given_back_within_the_wait() {
        let limit = Arc::new(TenantConcurrencyLimit::new(1, Duration::from_secs(5)));
        let acme = id("acme");
        let held = limit.acquire(&acme).await.unwrap();
        let waiter = {
            let (limit, acme) = (Arc::clone(&limit), acme.clone());
            tokio::spawn(async move { limit.acquire(&acme).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        waiter.await.unwrap().unwrap();
        assert_eq!(limit.tenants_tracked(), 0);
    }

    #[tokio::test]
    async fn cancelled_waits_take_nothing_and_leave_nothing_behind() {
        let limit = Arc::new(TenantConcurrencyLimit::new(1, Duration::from_secs(5)));
        let acme = id("acme");
        let held = limit.acquire(&acme).await.unwrap();
        for _ in 0..3 {
            assert!(limit.acquire(&acme).now_or_never().is_none());
            let cut_short =
                tokio::time::timeout(Duration::from_millis(5), limit.acquire(&acme)).await;
            assert!(cut_short.is_err());
        }
        assert_eq!(limit.tenants_tracked(), 1);
        drop(held);
        assert_eq!(limit.tenants_tracked(), 0);
        let again = limit.acquire(&acme).now_or_never().unwrap().unwrap();
        drop(again);
        assert_eq!(limit.tenants_tracked(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_use_never_exceeds_the_limit_and_forgets_every_tenant() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let limit = Arc::new(TenantConcurrencyLimit::new(3, Duration::from_secs(10)));
        let in_flight: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
        let mut tasks = Vec::new();
        for task in 0..64usize {
            let (limit, in_flight) = (Arc::clone(&limit), Arc::clone(&in_flight));
            tasks.push(tokio::spawn(async move {
                for round in 0..50usize {
                    let tenant_index = (task + round) % 4;
                    let tenant = id(&format!("tenant-{tenant_index}"));
                    let slot = limit.acquire(&tenant).await.unwrap();
                    let now = in_flight[tenant_index].fetch_add(1, Ordering::AcqRel) + 1;
                    assert!(now <= 3, "{now} transactions of one tenant at once");
                    tokio::task::yield_now().await;
                    in_flight[tenant_index].fetch_sub(1, Ordering::AcqRel);
                    drop(slot);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(limit.tenants_tracked(), 0);
    }
}
