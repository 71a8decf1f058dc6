//! Database-per-tenant, the part every backend shares: a cache of one sqlx [`Pool`] per tenant
//! ([`TenantPools`]) under a global connection budget across all of them, handing out
//! [`TenantConnection`]s and [`TenantTx`]s. [`TenantPools`] is a [`TenantIsolation`] handle:
//! the tenant's identifier picks its database.
//!
//! A backend supplies a [`DatabaseLocator`]: it turns a validated [`TenantIdentifier`] into the
//! connect options of that tenant's database (a SQLite file, a PostgreSQL or MariaDB database),
//! deriving every name with [`tenancy_core::DerivedName`], never from raw input. Errors are
//! [`IsolationError`]s.
//!
//! # Pools
//!
//! Pools are created on a tenant's first request (once, however many requests arrive together),
//! kept in an LRU cache of at most [`TenantPoolSettings::max_cached_pools`] entries and dropped
//! from it after [`TenantPoolSettings::pool_idle_expiry`] without use. An evicted pool is closed in
//! a spawned task; closing waits until its checked-out connections come back, so work in flight
//! on an evicted pool finishes normally (a later request opens a fresh pool).
//! While an evicted pool drains, the tenant's fresh pool may have its own connections, so a
//! tenant can briefly hold up to twice [`TenantPoolSettings::max_connections_per_tenant`]; the
//! global budget still holds.
//!
//! # Connection budget
//!
//! Every open tenant connection, checked out or idle, holds one permit of a semaphore of
//! [`TenantPoolSettings::connection_budget`] permits, so the connections open on the servers
//! never exceed the budget, whatever the number of tenants. A pool takes a permit before it may
//! open a connection and keeps it while the connection lives; permits of connections the pool
//! has since closed (after [`TenantPoolSettings::connection_idle_timeout`], or broken ones) are
//! given back the next time the pool's count is checked, and an evicted pool gives all of its
//! permits back once its connections are closed.
//!
//! A caller that needs a new connection while the budget is spent reclaims one: it closes an
//! idle connection of another tenant's pool (of a pool with several open first, so tenants
//! keep one warm connection where they can) and takes its permit. While callers wait, a
//! connection released by a request whose pool has another one open is closed at once (its
//! permit goes to the first waiter) instead of being kept idle.
//!
//! A released connection is checked (a ping, bounded by a timeout) before it goes back to its
//! pool; one that does not answer, such as a connection left out of step by a cancelled
//! command, is dropped instead. A caller still without a permit after
//! [`TenantPoolSettings::acquire_timeout`] gets [`IsolationError::BudgetExhausted`] (an HTTP
//! 503), never the server's "too many connections". A server may list a closed connection for a
//! moment after the client let go of it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::{Connection, Database, Pool, SqlSafeStr};
use tenancy_core::{IsolationMode, TenancyConfig, Tenant, TenantIdentifier};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::isolation::TenantIsolation;
use crate::isolation_error::{IsolationError, connection_error};
use crate::tx::{TenantConnection, TenantTx};

/// The connect options of a sqlx database (`SqliteConnectOptions`, `PgConnectOptions`, ...).
pub type ConnectOptionsOf<DB> = <<DB as Database>::Connection as Connection>::Options;

/// Finds a tenant's database: turns a validated identifier into connect options.
///
/// Implementations derive names and paths only from the identifier, through
/// [`tenancy_core::DerivedName`], and answer [`IsolationError::NotProvisioned`] for a tenant
/// whose database does not exist, without creating it (in `connect_options`, or when the
/// connection attempt is refused, in [`acquire_error`](Self::acquire_error)).
pub trait DatabaseLocator: Send + Sync + 'static {
    /// The sqlx database of the tenant databases.
    type Database: Database;

    /// The options to connect to `tenant`'s existing database.
    fn connect_options(
        &self,
        tenant: &TenantIdentifier,
    ) -> impl Future<Output = Result<ConnectOptionsOf<Self::Database>, IsolationError>> + Send;

    /// Classifies an error of checking out a connection to `tenant`'s database (the pool
    /// connects on demand, so connect errors arrive here). By default pool exhaustion, a closed
    /// pool and I/O failures are [`IsolationError::Unavailable`], the rest
    /// [`IsolationError::Database`]; a locator whose server reports a missing database answers
    /// [`IsolationError::NotProvisioned`] for that.
    fn acquire_error(&self, tenant: &TenantIdentifier, error: sqlx::Error) -> IsolationError {
        let _ = tenant;
        connection_error(error)
    }
}

/// Sizes and timeouts of [`TenantPools`].
///
/// ```
/// use tenancy_core::TenancyConfig;
/// use tenancy_sql::database_per_tenant::TenantPoolSettings;
/// let settings = TenantPoolSettings::from_config(&TenancyConfig::default());
/// assert_eq!(settings.connection_budget, 50);
/// assert_eq!(settings.max_connections_per_tenant, 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPoolSettings {
    /// Connections all tenant pools together may have open at once, idle ones included.
    pub connection_budget: u32,
    /// Connections one tenant's pool may have checked out at once (at least 1).
    pub max_connections_per_tenant: u32,
    /// How long a caller waits for a connection in total, budget included.
    pub acquire_timeout: Duration,
    /// Most tenant pools kept open; the least recently used is evicted beyond that.
    pub max_cached_pools: u64,
    /// A pool unused for this long is evicted.
    pub pool_idle_expiry: Duration,
    /// An idle connection is closed after this long.
    pub connection_idle_timeout: Duration,
}

impl TenantPoolSettings {
    /// Default of [`Self::max_cached_pools`].
    pub const DEFAULT_MAX_CACHED_POOLS: u64 = 1_000;
    /// Default of [`Self::pool_idle_expiry`]: ten minutes.
    pub const DEFAULT_POOL_IDLE_EXPIRY: Duration = Duration::from_secs(600);
    /// Default of [`Self::connection_idle_timeout`]: thirty seconds.
    pub const DEFAULT_CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

    /// Budget, per-tenant size and acquire timeout from `config`; cache size and idle times
    /// at their defaults.
    pub fn from_config(config: &TenancyConfig) -> Self {
        Self {
            connection_budget: config.connection_budget,
            max_connections_per_tenant: config.tenant_pool_max_connections,
            acquire_timeout: config.acquire_timeout(),
            max_cached_pools: Self::DEFAULT_MAX_CACHED_POOLS,
            pool_idle_expiry: Self::DEFAULT_POOL_IDLE_EXPIRY,
            connection_idle_timeout: Self::DEFAULT_CONNECTION_IDLE_TIMEOUT,
        }
    }

    /// The sqlx options of one tenant's pool: at most
    /// [`max_connections_per_tenant`](Self::max_connections_per_tenant) connections, opened on
    /// demand, idle ones closed after [`connection_idle_timeout`](Self::connection_idle_timeout),
    /// no ping before a checkout, and a released connection checked within 2 s before it goes
    /// back (one that does not answer is dropped). [`TenantPools`] builds every tenant pool with
    /// them and adds the budget on top.
    ///
    /// ```
    /// use sqlx::Database;
    /// use sqlx::pool::PoolOptions;
    /// use tenancy_sql::database_per_tenant::TenantPoolSettings;
    ///
    /// fn like_a_tenant_pool<DB: Database>() -> PoolOptions<DB> {
    ///     let options = TenantPoolSettings::default().pool_options::<DB>();
    ///     assert_eq!(options.get_max_connections(), 5);
    ///     assert!(!options.get_test_before_acquire());
    ///     options
    /// }
    /// ```
    pub fn pool_options<DB: Database>(&self) -> PoolOptions<DB> {
        PoolOptions::<DB>::new()
            .max_connections(self.tenant_pool_size())
            .min_connections(0)
            .idle_timeout(self.connection_idle_timeout)
            .acquire_timeout(self.acquire_timeout)
            .test_before_acquire(false)
            .after_release(|conn, _| {
                Box::pin(async move {
                    match tokio::time::timeout(RELEASE_CHECK_TIMEOUT, conn.ping()).await {
                        Ok(checked) => checked.map(|()| true),
                        Err(_) => Err(sqlx::Error::PoolTimedOut),
                    }
                })
            })
    }

    /// Connections one tenant's pool may hold: `max_connections_per_tenant`, at least 1.
    fn tenant_pool_size(&self) -> u32 {
        self.max_connections_per_tenant.max(1)
    }
}

impl Default for TenantPoolSettings {
    fn default() -> Self {
        Self::from_config(&TenancyConfig::default())
    }
}

/// Counters of [`TenantPools`], for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolMetrics {
    /// Tenant connections checked out now.
    pub checked_out: usize,
    /// Budget permits held for open tenant connections, idle ones and those of evicted pools
    /// still closing included: an upper bound of the tenant connections open on the servers.
    pub open_connections: usize,
    /// The most tenant connections ever checked out at once.
    pub peak_checked_out: usize,
    /// Tenant pools in the cache (approximate until pending evictions ran).
    pub cached_pools: u64,
    /// Tenant pools created so far.
    pub pools_opened: u64,
    /// Evicted tenant pools whose connections are all closed.
    pub pools_closed: u64,
}

#[derive(Debug)]
struct Shared {
    budget: Arc<Semaphore>,
    budget_waiters: AtomicUsize,
    /// Held by the one caller scanning the pools for idle connections to reclaim.
    reclaim_scan: tokio::sync::Mutex<()>,
    checked_out: AtomicUsize,
    peak_checked_out: AtomicUsize,
    pools_opened: AtomicU64,
    pools_closed: AtomicU64,
}

/// One cached tenant pool, the slots bounding its checked-out connections and the budget
/// permits of its open connections.
#[derive(Debug)]
struct TenantPool<DB: Database> {
    pool: Pool<DB>,
    slots: Arc<Semaphore>,
    open: Arc<Mutex<OpenConnections>>,
}

impl<DB: Database> Clone for TenantPool<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            slots: self.slots.clone(),
            open: self.open.clone(),
        }
    }
}

/// The budget permits one tenant pool holds: at least one per connection the pool has open or
/// may be opening right now.
#[derive(Debug, Default)]
struct OpenConnections {
    permits: Vec<OwnedSemaphorePermit>,
    /// Checkouts in progress that were given a permit and may open a connection; sqlx's count
    /// of the pool's connections may not include theirs yet.
    opening: usize,
}

impl<DB: Database> TenantPool<DB> {
    fn open_connections(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        // The counts stay consistent whatever a panicking holder did: every change is one step.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives back the permits of connections the pool has closed since the last check.
    fn release_unused_permits(&self) {
        let mut open = self.open_connections();
        let needed = self.pool.size() as usize + open.opening;
        open.permits.truncate(needed);
    }

    /// Checks out a connection with `permit` paying for it in case the pool opens a new one.
    /// An unused permit goes back to the budget when the checkout ends, however it ends.
    async fn acquire_with(
        &self,
        permit: OwnedSemaphorePermit,
        deadline: Instant,
    ) -> Result<Result<PoolConnection<DB>, sqlx::Error>, tokio::time::error::Elapsed> {
        {
            let mut open = self.open_connections();
            open.permits.push(permit);
            open.opening += 1;
        }
        let _opening = Opening(self);
        tokio::time::timeout_at(deadline, self.pool.acquire()).await
    }

    /// Closes one of the pool's idle connections, if it has one, and gives its permit back.
    async fn close_idle_connection(&self) -> bool {
        let Some(conn) = self.pool.try_acquire() else {
            return false;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
        self.release_unused_permits();
        true
    }
}

/// Room for one more checkout from a tenant's pool.
enum Capacity<DB: Database> {
    /// An idle connection of the pool, already open and paid for.
    Idle(PoolConnection<DB>),
    /// A budget permit for a new connection.
    Permit(OwnedSemaphorePermit),
}

/// A checkout in progress on a pool, counted in [`OpenConnections::opening`] while it lives.
struct Opening<'a, DB: Database>(&'a TenantPool<DB>);

impl<DB: Database> Drop for Opening<'_, DB> {
    fn drop(&mut self) {
        self.0.open_connections().opening -= 1;
        self.0.release_unused_permits();
    }
}

/// How long the check of a released connection may take before the connection is dropped.
const RELEASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long closing a connection may take before it is dropped without a goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a caller waiting for the budget looks for idle connections to reclaim again (pools
/// close idle connections on their own, and others may have gone idle since).
const RECLAIM_INTERVAL: Duration = Duration::from_millis(20);

/// A cache of one pool per tenant database under a global connection budget; see the
/// [module documentation](self).
///
/// Cheap to clone (shared).
pub struct TenantPools<L: DatabaseLocator> {
    locator: Arc<L>,
    settings: Arc<TenantPoolSettings>,
    cache: Cache<TenantIdentifier, TenantPool<L::Database>>,
    shared: Arc<Shared>,
}

impl<L: DatabaseLocator> Clone for TenantPools<L> {
    fn clone(&self) -> Self {
        Self {
            locator: self.locator.clone(),
            settings: self.settings.clone(),
            cache: self.cache.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<L: DatabaseLocator> std::fmt::Debug for TenantPools<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantPools")
            .field("settings", &self.settings)
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

impl<L: DatabaseLocator> TenantPools<L> {
    /// Pools of the databases `locator` finds, sized by `settings`. Opens nothing yet.
    pub fn new(locator: L, settings: TenantPoolSettings) -> Self {
        let shared = Arc::new(Shared {
            budget: Arc::new(Semaphore::new(settings.connection_budget as usize)),
            budget_waiters: AtomicUsize::new(0),
            reclaim_scan: tokio::sync::Mutex::new(()),
            checked_out: AtomicUsize::new(0),
            peak_checked_out: AtomicUsize::new(0),
            pools_opened: AtomicU64::new(0),
            pools_closed: AtomicU64::new(0),
        });
        let on_evict = shared.clone();
        let cache = Cache::builder()
            .max_capacity(settings.max_cached_pools)
            .time_to_idle(settings.pool_idle_expiry)
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |_tenant, evicted: TenantPool<L::Database>, _cause| {
                close_in_background(evicted, on_evict.clone());
            })
            .build();
        Self {
            locator: Arc::new(locator),
            settings: Arc::new(settings),
            cache,
            shared,
        }
    }

    /// The locator finding the tenant databases.
    pub fn locator(&self) -> &L {
        &self.locator
    }

    /// The settings in force.
    pub fn settings(&self) -> &TenantPoolSettings {
        &self.settings
    }

    /// Current counters.
    pub fn metrics(&self) -> PoolMetrics {
        PoolMetrics {
            checked_out: self.shared.checked_out.load(Ordering::Acquire),
            open_connections: self.settings.connection_budget as usize
                - self.shared.budget.available_permits(),
            peak_checked_out: self.shared.peak_checked_out.load(Ordering::Acquire),
            cached_pools: self.cache.entry_count(),
            pools_opened: self.shared.pools_opened.load(Ordering::Acquire),
            pools_closed: self.shared.pools_closed.load(Ordering::Acquire),
        }
    }

    /// Runs the cache's pending evictions now (they otherwise run during later cache use).
    pub async fn run_pending_evictions(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Checks out a connection to `tenant`'s database, opening its pool on first use.
    ///
    /// Waits at most [`TenantPoolSettings::acquire_timeout`] in total, then fails with
    /// [`IsolationError::TenantBusy`] (the tenant's own pool is full) or
    /// [`IsolationError::BudgetExhausted`] (all tenants together are at the budget).
    pub async fn acquire(
        &self,
        tenant: &TenantIdentifier,
    ) -> Result<TenantConnection<L::Database>, IsolationError> {
        let started = Instant::now();
        let deadline = started + self.settings.acquire_timeout;
        let busy = || IsolationError::TenantBusy {
            identifier: tenant.clone(),
            waited: started.elapsed(),
        };
        // A pool evicted between lookup and checkout is closed; under heavy eviction churn that
        // can happen more than once, so retry with a fresh pool until the deadline.
        let (conn, tenant_slot, entry) = loop {
            let entry = self.pool_for(tenant).await?;
            let tenant_slot =
                tokio::time::timeout_at(deadline, entry.slots.clone().acquire_owned())
                    .await
                    .map_err(|_| busy())?
                    .map_err(|_| IsolationError::Unavailable(sqlx::Error::PoolClosed))?;
            let permit = match self.capacity(&entry, tenant, deadline, started).await? {
                Capacity::Idle(conn) => break (conn, tenant_slot, entry),
                Capacity::Permit(permit) => permit,
            };
            match entry.acquire_with(permit, deadline).await {
                Err(_) | Ok(Err(sqlx::Error::PoolTimedOut)) => return Err(busy()),
                Ok(Ok(conn)) => break (conn, tenant_slot, entry),
                Ok(Err(sqlx::Error::PoolClosed)) if Instant::now() < deadline => {
                    tokio::task::yield_now().await;
                }
                Ok(Err(other)) => return Err(self.locator.acquire_error(tenant, other)),
            }
        };
        let permits = ConnectionPermits::new(self.shared.clone(), entry, tenant_slot);
        Ok(TenantConnection::new(conn, tenant.clone(), Some(permits)))
    }

    /// Begins a transaction on `tenant`'s database (sqlx's default `BEGIN`); its
    /// [`mode`](TenantTx::mode) is `database`.
    ///
    /// Dropping the transaction without [`TenantTx::commit`] rolls it back. Through
    /// [`TenantIsolation`], the same for a whole [`Tenant`]:
    /// `TenantIsolation::begin(&pools, &tenant)`.
    pub async fn begin(
        &self,
        tenant: &TenantIdentifier,
    ) -> Result<TenantTx<L::Database>, IsolationError> {
        TenantTx::begin(self.acquire(tenant).await?, IsolationMode::Database, None).await
    }

    /// Begins a transaction with a custom statement, such as SQLite's `BEGIN IMMEDIATE`.
    pub async fn begin_with(
        &self,
        tenant: &TenantIdentifier,
        statement: &'static str,
    ) -> Result<TenantTx<L::Database>, IsolationError> {
        let statement = Some(statement.into_sql_str());
        TenantTx::begin(
            self.acquire(tenant).await?,
            IsolationMode::Database,
            statement,
        )
        .await
    }

    /// Removes `tenant`'s pool from the cache and closes it, waiting until its checked-out
    /// connections are back. The next request opens a new pool.
    pub async fn evict(&self, tenant: &TenantIdentifier) {
        if let Some(evicted) = self.cache.remove(tenant).await {
            evicted.pool.close().await;
            evicted.release_unused_permits();
        }
    }

    /// Room for one more checkout from `entry`, `tenant`'s pool: an idle connection of the
    /// pool, or else a budget permit for a new connection: a free one, one reclaimed from
    /// another tenant's idle connection, or the first one given back within the deadline.
    async fn capacity(
        &self,
        entry: &TenantPool<L::Database>,
        tenant: &TenantIdentifier,
        deadline: Instant,
        started: Instant,
    ) -> Result<Capacity<L::Database>, IsolationError> {
        if let Some(conn) = entry.pool.try_acquire() {
            return Ok(Capacity::Idle(conn));
        }
        if let Ok(permit) = self.shared.budget.clone().try_acquire_owned() {
            return Ok(Capacity::Permit(permit));
        }
        let _waiting = WaiterCount::enter(&self.shared.budget_waiters);
        // Polled first, so this caller is in the semaphore's queue before it reclaims anything.
        let given_back = self.shared.budget.clone().acquire_owned();
        tokio::pin!(given_back);
        let mut next_look = Instant::now();
        loop {
            tokio::select! {
                biased;
                permit = &mut given_back => {
                    return permit
                        .map(Capacity::Permit)
                        .map_err(|_| IsolationError::Unavailable(sqlx::Error::PoolClosed));
                }
                () = tokio::time::sleep_until(next_look) => {}
            }
            // A connection of this tenant released since the last look serves as well.
            if let Some(conn) = entry.pool.try_acquire() {
                return Ok(Capacity::Idle(conn));
            }
            if Instant::now() >= deadline {
                return Err(IsolationError::BudgetExhausted {
                    waited: started.elapsed(),
                });
            }
            self.reclaim_idle_connections(tenant).await;
            next_look = (Instant::now() + RECLAIM_INTERVAL).min(deadline);
        }
    }

    /// Gives back the permits of connections the pools closed on their own, and closes idle
    /// connections of tenants other than `tenant`, one per caller waiting for the budget, so
    /// their permits go to the waiters: first those of pools with more than one connection
    /// open, then a tenant's last one. One caller scans at a time.
    async fn reclaim_idle_connections(&self, tenant: &TenantIdentifier) {
        let Ok(_scanning) = self.shared.reclaim_scan.try_lock() else {
            return;
        };
        let wanted = self.shared.budget_waiters.load(Ordering::Acquire).max(1);
        let (mut surplus, mut last) = (Vec::new(), Vec::new());
        for (owner, entry) in &self.cache {
            entry.release_unused_permits();
            if surplus.len() >= wanted || *owner == *tenant || entry.pool.num_idle() == 0 {
                continue;
            }
            if entry.pool.size() > 1 {
                surplus.push(entry);
            } else if last.len() < wanted {
                last.push(entry);
            }
        }
        for entry in surplus.into_iter().chain(last).take(wanted) {
            entry.close_idle_connection().await;
        }
    }

    async fn pool_for(
        &self,
        tenant: &TenantIdentifier,
    ) -> Result<TenantPool<L::Database>, IsolationError> {
        if let Some(entry) = self.cache.get(tenant).await {
            return Ok(entry);
        }
        let options = self.locator.connect_options(tenant).await?;
        let settings = &self.settings;
        let shared = &self.shared;
        Ok(self
            .cache
            .get_with_by_ref(tenant, async move {
                shared.pools_opened.fetch_add(1, Ordering::AcqRel);
                TenantPool {
                    pool: settings.pool_options().connect_lazy_with(options),
                    slots: Arc::new(Semaphore::new(settings.tenant_pool_size() as usize)),
                    open: Arc::default(),
                }
            })
            .await)
    }
}

/// Closes an evicted pool once its checked-out connections are back, and gives its budget
/// permits back.
fn close_in_background<DB: Database>(evicted: TenantPool<DB>, shared: Arc<Shared>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            evicted.pool.close().await;
            evicted.release_unused_permits();
            shared.pools_closed.fetch_add(1, Ordering::AcqRel);
        });
    }
}

/// Counts a caller waiting for the budget while it lives.
struct WaiterCount<'a>(&'a AtomicUsize);

impl<'a> WaiterCount<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for WaiterCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a checked-out tenant connection holds besides the connection: one of its tenant's
/// slots, and its pool, whose budget permit pays for the connection. Counted in the metrics
/// while alive.
pub(crate) struct ConnectionPermits<DB: Database> {
    shared: Arc<Shared>,
    pool: TenantPool<DB>,
    _tenant_slot: OwnedSemaphorePermit,
}

impl<DB: Database> ConnectionPermits<DB> {
    fn new(shared: Arc<Shared>, pool: TenantPool<DB>, tenant_slot: OwnedSemaphorePermit) -> Self {
        let now = shared.checked_out.fetch_add(1, Ordering::AcqRel) + 1;
        shared.peak_checked_out.fetch_max(now, Ordering::AcqRel);
        Self {
            shared,
            pool,
            _tenant_slot: tenant_slot,
        }
    }

    /// Hands `conn` back: to its pool, or, while other callers wait for the budget and the
    /// pool has another connection open, closes it and gives its permit to the first of them.
    /// A pool's last connection stays: the tenant keeps one warm connection, and waiters
    /// reclaim idle ones (surplus ones first).
    pub(crate) fn release(self, conn: PoolConnection<DB>) {
        let surplus =
            self.shared.budget_waiters.load(Ordering::Acquire) > 0 && self.pool.pool.size() > 1;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if surplus => {
                let pool = self.pool.clone();
                runtime.spawn(async move {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
                    pool.release_unused_permits();
                });
            }
            _ => drop(conn),
        }
    }
}

impl<DB: Database> Drop for ConnectionPermits<DB> {
    fn drop(&mut self) {
        self.shared.checked_out.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<L: DatabaseLocator> TenantIsolation for TenantPools<L> {
    type Database = L::Database;

    fn mode_for(&self, _tenant: &Tenant) -> IsolationMode {
        IsolationMode::Database
    }

    fn begin_in_mode<'a>(
        &'a self,
        tenant: &'a Tenant,
        mode: IsolationMode,
    ) -> BoxFuture<'a, Result<TenantTx<L::Database>, IsolationError>> {
        Box::pin(async move {
            match mode {
                IsolationMode::Database => self.begin(&tenant.identifier).await,
                other => Err(IsolationError::UnsupportedMode(other)),
            }
        })
    }
}
