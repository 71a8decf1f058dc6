//! The leak soak: per isolation mode (PostgreSQL schema, PostgreSQL RLS under a NOSUPERUSER
//! runtime role, and a database per tenant on PostgreSQL, MariaDB and SQLite), many requests
//! over 64 tenants through `TenantIsolation::begin` at four times the pool size (the connection
//! budget, for a database per tenant) in concurrency, with requests cut short at random points
//! (5%), panicking after the tenant is set (1%) and failing with an SQL error after the tenant
//! is set, then going on and committing (1%). Every row carries its tenant, so every row a
//! request sees is checked: the soak must see no foreign row, and afterwards every pooled
//! connection must be idle outside any transaction and carry no tenant state (for a database
//! per tenant: be connected to its tenant's database), and no tenant's database may hold a
//! foreign row.
//!
//! Size: `TENANCY_SOAK_REQUESTS` requests per mode (default 10,000); `TENANCY_SOAK_SEED` replays
//! a run (the seed is printed). `scripts/soak` runs 100,000 per mode in release mode.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{
    Connection, Database, Executor, MySql, MySqlConnection, PgConnection, Postgres, Row, Sqlite,
    SqliteConnection,
};
use tenancy::sql::database_per_tenant::{DatabaseLocator, TenantPoolSettings, TenantPools};
use tenancy::sql::mysql::{MySqlDatabaseLocator, MySqlTenantPools};
use tenancy::sql::postgres::{
    PgDatabaseLocator, PgIsolation, PgIsolationOptions, PgTenantPools, TenantSetting,
};
use tenancy::sql::sqlite::{SqliteLocator, SqliteTenantPools};
use tenancy::sql::{IsolationError, TenantIsolation, TenantTx, isolation_extension};
use tenancy::{IsolationMode, NewTenant, Tenant, TenantIdentifier, TenantStatus};
use tenancy_tests::{
    Server, TenantDatabases, TestDatabase, TestRole, mysql_server_url, postgres_server_url,
    unique_name,
};

/// Tenants per mode.
const TENANTS: usize = 64;
/// Rows each tenant starts with.
const INITIAL_ROWS: usize = 3;
/// Connections of the shared runtime pool (PostgreSQL schema and RLS) or of the global budget
/// (a database per tenant).
const POOL_SIZE: u32 = 8;
/// Requests in flight at once: four times the pool.
const CONCURRENCY: usize = 4 * POOL_SIZE as usize;
/// Requests per mode unless `TENANCY_SOAK_REQUESTS` says otherwise.
const DEFAULT_REQUESTS: usize = 10_000;
/// The search path of a PostgreSQL session nobody changed.
const DEFAULT_SEARCH_PATH: &str = "\"$user\", public";
/// The payload of the injected panics (kept out of the test output).
const INJECTED_PANIC: &str = "injected soak panic after the tenant was set";

fn requests() -> usize {
    std::env::var("TENANCY_SOAK_REQUESTS")
        .ok()
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("TENANCY_SOAK_REQUESTS={value:?} is not a number"))
        })
        .unwrap_or(DEFAULT_REQUESTS)
}

fn seed() -> u64 {
    match std::env::var("TENANCY_SOAK_SEED") {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("TENANCY_SOAK_SEED={value:?} is not a number")),
        Err(_) => fastrand::u64(..),
    }
}

/// Keeps the injected panics' messages out of the output; other panics print as usual.
fn silence_injected_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if message != Some(INJECTED_PANIC) {
                default(info);
            }
        }));
    });
}

fn soak_tenants() -> Vec<Arc<Tenant>> {
    (0..TENANTS)
        .map(|index| {
            let id = format!("soak-{index:03}");
            Arc::new(
                NewTenant::new(TenantIdentifier::parse(&id).unwrap(), &id)
                    .with_status(TenantStatus::Active)
                    .into_tenant(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- what each request does

/// How a request is cut short.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// `tokio::time::timeout` with this tiny budget.
    Timeout(Duration),
    /// Dropped after this many polls (1 = inside `begin`, just after the first poll).
    AfterPolls(usize),
}

/// What a request does once its transaction is open.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Reads (and sometimes writes) its rows and commits.
    Normal { write: bool },
    /// Runs like `Normal` but is cut short.
    Cancelled { cut: Cut, write: bool },
    /// Reads its rows, then panics (in its own task, unwinding through the transaction).
    Panic,
    /// Reads, runs a failing statement (in a savepoint, or in the transaction itself), reads
    /// again when the transaction still works, and commits.
    SqlError { in_savepoint: bool },
}

impl Plan {
    /// The plan of request `index`: the same for a given seed, whatever the scheduling.
    fn of(seed: u64, index: usize) -> (usize, Self) {
        let mut rng =
            fastrand::Rng::with_seed(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let tenant = rng.usize(..TENANTS);
        let write = rng.u8(..5) == 0;
        let plan = match rng.u32(..1000) {
            0..50 => Self::Cancelled {
                cut: if rng.bool() {
                    Cut::Timeout(Duration::from_micros(rng.u64(..2_000)))
                } else {
                    Cut::AfterPolls(rng.usize(1..=12))
                },
                write,
            },
            50..60 => Self::Panic,
            60..70 => Self::SqlError {
                in_savepoint: rng.bool(),
            },
            _ => Self::Normal { write },
        };
        (tenant, plan)
    }
}

/// What a request saw: rows of its own tenant and rows of others.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    own_rows: u64,
    foreign_rows: u64,
}

impl Seen {
    fn add(&mut self, other: Self) {
        self.own_rows += other.own_rows;
        self.foreign_rows += other.foreign_rows;
    }
}

/// Defines `$name(isolation)`, the soak's requests through a handle of the database `$db`: the
/// same SQL on every backend but for the insert's placeholder (`items(id, tenant)`, in the
/// tenant's schema, shared under RLS, or in the tenant's own database).
macro_rules! request_fn {
    ($name:ident, $db:ty, $insert:literal) => {
        fn $name(isolation: impl TenantIsolation<Database = $db>) -> Request {
            async fn request(
                isolation: Arc<dyn TenantIsolation<Database = $db>>,
                tenant: Arc<Tenant>,
                plan: Plan,
            ) -> Result<Seen, IsolationError> {
                async fn read(tx: &mut TenantTx<$db>, tenant: &str) -> Result<Seen, sqlx::Error> {
                    let groups: Vec<(String, i64)> =
                        sqlx::query_as("SELECT tenant, count(*) FROM items GROUP BY tenant")
                            .fetch_all(&mut **tx)
                            .await?;
                    let mut seen = Seen::default();
                    for (owner, rows) in groups {
                        let rows = rows as u64;
                        if owner == tenant {
                            seen.own_rows += rows;
                        } else {
                            eprintln!("FOREIGN ROWS: tenant {tenant} saw {rows} row(s) of {owner}");
                            seen.foreign_rows += rows;
                        }
                    }
                    Ok(seen)
                }

                async fn insert(tx: &mut TenantTx<$db>, tenant: &str) -> Result<(), sqlx::Error> {
                    sqlx::query($insert)
                        .bind(tenant)
                        .execute(&mut **tx)
                        .await
                        .map(drop)
                }

                // Writes come first: a SQLite transaction that reads and then writes cannot wait
                // for the write lock (SQLITE_BUSY at once), one that writes first can.
                let id = tenant.identifier.as_str();
                let mut tx = isolation.begin(&tenant).await?;
                let seen = match plan {
                    Plan::Normal { write } | Plan::Cancelled { write, .. } => {
                        if write {
                            insert(&mut tx, id).await?;
                        }
                        read(&mut tx, id).await?
                    }
                    Plan::Panic => {
                        read(&mut tx, id).await?;
                        panic!("{}", INJECTED_PANIC)
                    }
                    Plan::SqlError { in_savepoint: true } => {
                        insert(&mut tx, id).await?;
                        let mut savepoint = Connection::begin(&mut *tx).await?;
                        let failed = sqlx::query("SELECT * FROM no_such_table")
                            .execute(&mut *savepoint)
                            .await;
                        assert!(failed.is_err(), "the injected statement must fail");
                        savepoint.rollback().await?;
                        read(&mut tx, id).await?
                    }
                    Plan::SqlError {
                        in_savepoint: false,
                    } => {
                        let mut seen = read(&mut tx, id).await?;
                        let failed = sqlx::query("SELECT * FROM no_such_table")
                            .execute(&mut *tx)
                            .await;
                        assert!(failed.is_err(), "the injected statement must fail");
                        // PostgreSQL refuses anything but the end of the transaction now (and
                        // turns the commit into a rollback); SQLite and MariaDB go on.
                        if let Ok(more) = read(&mut tx, id).await {
                            seen.add(more);
                        }
                        seen
                    }
                };
                tx.commit().await?;
                Ok(seen)
            }

            let isolation = isolation_extension(isolation);
            Arc::new(move |tenant, plan| Box::pin(request(Arc::clone(&isolation), tenant, plan)))
        }
    };
}

request_fn!(
    postgres_requests,
    Postgres,
    "INSERT INTO items (tenant) VALUES ($1)"
);
request_fn!(
    mysql_requests,
    MySql,
    "INSERT INTO items (tenant) VALUES (?)"
);
request_fn!(
    sqlite_requests,
    Sqlite,
    "INSERT INTO items (tenant) VALUES ($1)"
);

/// Runs `future` but drops it after `polls` polls that left it pending; `None` if cut.
async fn cut_after_polls<F: Future>(polls: usize, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut left = polls;
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => {
            left -= 1;
            if left == 0 {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        }
    })
    .await
}

/// The figures of one mode.
#[derive(Debug, Default)]
struct Tally {
    completed: AtomicU64,
    cancelled: AtomicU64,
    panicked: AtomicU64,
    failed: AtomicU64,
    own_rows: AtomicU64,
    foreign_rows: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn seen(&self, seen: Seen) {
        self.own_rows.fetch_add(seen.own_rows, Ordering::Relaxed);
        self.foreign_rows
            .fetch_add(seen.foreign_rows, Ordering::Relaxed);
    }

    fn error(&self, index: usize, plan: Plan, error: &IsolationError) {
        eprintln!("request {index} ({plan:?}) failed unexpectedly: {error}");
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

type Request = Arc<
    dyn Fn(Arc<Tenant>, Plan) -> BoxFuture<'static, Result<Seen, IsolationError>> + Send + Sync,
>;

/// Drives `requests` requests with `CONCURRENCY` workers and returns the figures.
async fn drive(mode: &str, seed: u64, requests: usize, request: Request) -> Arc<Tally> {
    silence_injected_panics();
    let tenants = Arc::new(soak_tenants());
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (tenants, tally, next, request) = (
                Arc::clone(&tenants),
                Arc::clone(&tally),
                Arc::clone(&next),
                Arc::clone(&request),
            );
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= requests {
                        break;
                    }
                    let (tenant, plan) = Plan::of(seed, index);
                    let work = request(Arc::clone(&tenants[tenant]), plan);
                    let outcome = match plan {
                        Plan::Normal { .. } => Some(work.await),
                        Plan::Cancelled { cut, .. } => match cut {
                            Cut::Timeout(budget) => tokio::time::timeout(budget, work).await.ok(),
                            Cut::AfterPolls(polls) => cut_after_polls(polls, work).await,
                        },
                        Plan::Panic => match tokio::spawn(work).await {
                            Err(error) if error.is_panic() => {
                                tally.panicked.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Err(error) => panic!("request {index} was aborted: {error}"),
                            Ok(outcome) => Some(outcome),
                        },
                        Plan::SqlError { .. } => {
                            let outcome = work.await;
                            if outcome.is_ok() {
                                tally.failed.fetch_add(1, Ordering::Relaxed);
                                tally.seen(outcome.unwrap_or_default());
                                continue;
                            }
                            Some(outcome)
                        }
                    };
                    match outcome {
                        None => {
                            tally.cancelled.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Ok(seen)) => {
                            tally.completed.fetch_add(1, Ordering::Relaxed);
                            tally.seen(seen);
                        }
                        Some(Err(error)) => tally.error(index, plan, &error),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a soak worker died");
    }
    let elapsed = started.elapsed();
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    println!(
        "soak {mode:<18} seed={seed} requests={requests} completed={} cancelled={} panicked={} \
         failed={} errors={} rows_checked={} foreign_rows={} duration={:.2}s rate={:.0} req/s",
        load(&tally.completed),
        load(&tally.cancelled),
        load(&tally.panicked),
        load(&tally.failed),
        load(&tally.errors),
        load(&tally.own_rows) + load(&tally.foreign_rows),
        load(&tally.foreign_rows),
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
    );
    tally
}

/// The figures every mode must reach.
fn assert_sound(tally: &Tally, requests: usize) {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    assert_eq!(
        load(&tally.foreign_rows),
        0,
        "a request saw another tenant's rows"
    );
    assert_eq!(load(&tally.errors), 0, "requests failed unexpectedly");
    let accounted = load(&tally.completed)
        + load(&tally.cancelled)
        + load(&tally.panicked)
        + load(&tally.failed);
    assert_eq!(accounted, requests as u64);
    assert!(load(&tally.own_rows) >= (INITIAL_ROWS * (requests / 2)) as u64);
    if requests >= 1_000 {
        assert!(load(&tally.cancelled) > 0, "nothing was cancelled");
        assert!(load(&tally.panicked) > 0, "nothing panicked");
        assert!(load(&tally.failed) > 0, "no SQL error was injected");
    }
}

// ---------------------------------------------------------------- PostgreSQL, shared database

/// A shared-database world: the runtime pool as a NOSUPERUSER role, an admin pool, and the
/// tenants' rows. Field order is drop order (the role goes last).
struct PgWorld {
    isolation: PgIsolation,
    admin: PgPool,
    db: TestDatabase,
    role: TestRole,
}

impl PgWorld {
    async fn new(prefix: &str, options: PgIsolationOptions) -> (Self, Vec<Arc<Tenant>>) {
        let role = TestRole::create("tenancy_soak_rt").await;
        let db = TestDatabase::postgres(prefix).await;
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(db.url())
            .await
            .unwrap();
        let connect: PgConnectOptions = db.url().parse().unwrap();
        let pool = options
            .pool_options(
                PgPoolOptions::new()
                    .max_connections(POOL_SIZE)
                    .acquire_timeout(Duration::from_secs(60)),
            )
            .unwrap()
            .connect_with(connect.username(role.name()))
            .await
            .unwrap();
        let isolation = PgIsolation::from_pool(pool, options).unwrap();
        (
            Self {
                isolation,
                admin,
                db,
                role,
            },
            soak_tenants(),
        )
    }

    /// Waits until every connection is back in the pool and every backend of the runtime role
    /// is idle (connections closed on purpose take a moment to go), then checks each pooled
    /// connection for transaction and tenant state.
    async fn assert_connections_clean(&self) {
        let pool = self.isolation.pool();
        let deadline = Instant::now() + Duration::from_secs(15);
        let states = loop {
            let states: BTreeMap<i32, String> = sqlx::query(
                "SELECT pid, coalesce(state, '') FROM pg_stat_activity \
                 WHERE datname = $1 AND usename = $2",
            )
            .bind(self.db.name())
            .bind(self.role.name())
            .fetch_all(&self.admin)
            .await
            .unwrap()
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
            let settled = pool.num_idle() == pool.size() as usize
                && states.len() == pool.size() as usize
                && states.values().all(|state| state == "idle");
            if settled || Instant::now() > deadline {
                break states;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            states.values().all(|state| state == "idle"),
            "runtime backends not idle: {states:?}"
        );
        assert_eq!(
            pool.num_idle(),
            pool.size() as usize,
            "connections still out"
        );
        assert_eq!(states.len(), pool.size() as usize, "backends: {states:?}");

        // Every pooled connection at once (so none is checked twice).
        let mut held = Vec::new();
        let mut pids = BTreeSet::new();
        for _ in 0..pool.size() {
            let mut conn = pool.acquire().await.unwrap();
            let row = sqlx::raw_sql(
                "SELECT pg_backend_pid(), current_setting('app.tenant_id', true), \
                 current_setting('search_path'), now() = statement_timestamp()",
            )
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            let pid: i32 = row.get(0);
            let setting: Option<String> = row.get(1);
            let search_path: String = row.get(2);
            let outside_transaction: bool = row.get(3);
            assert!(
                setting.as_deref().unwrap_or("").is_empty(),
                "backend {pid} carries tenant {setting:?}"
            );
            assert_eq!(search_path, DEFAULT_SEARCH_PATH, "backend {pid}");
            assert!(outside_transaction, "backend {pid} is inside a transaction");
            pids.insert(pid);
            held.push(conn);
        }
        assert_eq!(pids, states.keys().copied().collect::<BTreeSet<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_postgres_schema() {
    let (seed, requests) = (seed(), requests());
    let (world, tenants) = PgWorld::new(
        "tenancy_soak_schema",
        PgIsolationOptions::new().mode(IsolationMode::Schema),
    )
    .await;
    let mut setup = Vec::new();
    for tenant in &tenants {
        let schema = world.isolation.schema_name(&tenant.identifier).unwrap();
        let (quoted, id, role) = (
            schema.quoted_postgres(),
            tenant.identifier.as_str(),
            world.role.name(),
        );
        let rows = vec![format!("('{id}')"); INITIAL_ROWS].join(", ");
        setup.push(format!(
            "CREATE SCHEMA {quoted};
             CREATE TABLE {quoted}.items (id bigserial PRIMARY KEY, tenant text NOT NULL);
             INSERT INTO {quoted}.items (tenant) VALUES {rows};
             GRANT USAGE ON SCHEMA {quoted} TO \"{role}\";
             GRANT SELECT, INSERT ON {quoted}.items TO \"{role}\";
             GRANT USAGE ON SEQUENCE {quoted}.items_id_seq TO \"{role}\";"
        ));
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup.concat()))
        .execute(&world.admin)
        .await
        .unwrap();

    let tally = drive(
        "postgres-schema",
        seed,
        requests,
        postgres_requests(world.isolation.clone()),
    )
    .await;
    assert_sound(&tally, requests);
    world.assert_connections_clean().await;

    // At rest too: no row in any tenant's schema belongs to another tenant.
    for tenant in &tenants {
        let schema = world.isolation.schema_name(&tenant.identifier).unwrap();
        let foreign: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.items WHERE tenant <> $1",
            schema.quoted_postgres()
        )))
        .bind(tenant.identifier.as_str())
        .fetch_one(&world.admin)
        .await
        .unwrap();
        assert_eq!(foreign, 0, "foreign rows stored in {schema}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_postgres_rls() {
    let (seed, requests) = (seed(), requests());
    let (world, tenants) = PgWorld::new(
        "tenancy_soak_rls",
        // Without the release reset (the schema soak runs with it): the fast configuration
        // must be as leak-free under cancellations and panics.
        PgIsolationOptions::new()
            .mode(IsolationMode::Rls)
            .tenant_column("tenant")
            .reset_on_release(false),
    )
    .await;
    let rows = tenants
        .iter()
        .flat_map(|tenant| vec![format!("('{}')", tenant.identifier); INITIAL_ROWS])
        .collect::<Vec<_>>()
        .join(", ");
    let mut conn = world.admin.acquire().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE public.items (id bigserial PRIMARY KEY, tenant text NOT NULL);
         CREATE INDEX ON public.items (tenant);
         INSERT INTO public.items (tenant) VALUES {rows};"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    tenancy::sql::postgres::apply_rls_policy(
        &mut conn,
        "public.items",
        "tenant",
        &TenantSetting::default(),
    )
    .await
    .unwrap();
    tenancy::sql::postgres::grant_tenant_tables(&mut conn, world.role.name(), &["public.items"])
        .await
        .unwrap();
    drop(conn);
    tenancy::sql::postgres::audit_rls(
        &world.admin,
        world.role.name(),
        &TenantSetting::default(),
        "tenant",
    )
    .await
    .unwrap();

    let tally = drive(
        "postgres-rls",
        seed,
        requests,
        postgres_requests(world.isolation.clone()),
    )
    .await;
    assert_sound(&tally, requests);
    world.assert_connections_clean().await;

    // Without a tenant the runtime role sees nothing.
    let unscoped: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(world.isolation.pool())
        .await
        .unwrap();
    assert_eq!(unscoped, 0);
}

// ---------------------------------------------------------------- a database per tenant

/// The pool settings of every database-per-tenant soak: `POOL_SIZE` connections in use at once
/// over all tenants, two per tenant.
fn tenant_pool_settings() -> TenantPoolSettings {
    TenantPoolSettings {
        connection_budget: POOL_SIZE,
        max_connections_per_tenant: 2,
        acquire_timeout: Duration::from_secs(60),
        ..TenantPoolSettings::default()
    }
}

/// What a pooled connection acquired for a tenant says about itself and its database. Every
/// tenant database holds rows of its own tenant only, so rows of its tenant and none of another
/// also show that the connection is connected to its tenant's database.
#[derive(Debug)]
struct ConnectionProbe {
    /// Whether it is inside a transaction (SQLite: or cannot take its file's write lock).
    in_transaction: bool,
    /// Rows of its database that belong to the tenant.
    own_rows: i64,
    /// Rows of its database that belong to another tenant.
    foreign_rows: i64,
}

/// A database-per-tenant backend as the soak drives it: its locator, and how to create and
/// inspect a tenant database.
trait SoakBackend: DatabaseLocator + Sized {
    /// The `items.id` column: an auto-numbered primary key in the backend's dialect.
    const ID_COLUMN: &'static str;

    /// Creates `tenant`'s (empty) database.
    async fn create_database(pools: &TenantPools<Self>, tenant: &TenantIdentifier);

    /// Asks `conn`, a pooled connection acquired for `tenant`, about itself and its database.
    async fn probe(
        conn: &mut <Self::Database as Database>::Connection,
        tenant: &str,
    ) -> ConnectionProbe;
}

/// The soak of one database-per-tenant backend: creates the tenants' databases with their rows,
/// drives `requests_through(pools)`, then checks the figures, what the server says of the
/// connections to `server`'s databases (none for SQLite), and every pooled connection of every
/// tenant.
async fn soak_database_per_tenant<L>(
    mode: &str,
    pools: TenantPools<L>,
    requests_through: fn(TenantPools<L>) -> Request,
    server: Option<&TenantDatabases>,
) where
    L: SoakBackend,
    for<'c> &'c mut <L::Database as Database>::Connection: Executor<'c, Database = L::Database>,
{
    let (seed, requests) = (seed(), requests());
    let tenants = soak_tenants();
    for tenant in &tenants {
        L::create_database(&pools, &tenant.identifier).await;
        let rows = vec![format!("('{}')", tenant.identifier); INITIAL_ROWS].join(", ");
        let mut conn = pools.acquire(&tenant.identifier).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE items (id {}, tenant TEXT NOT NULL);
             INSERT INTO items (tenant) VALUES {rows};",
            L::ID_COLUMN
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        drop(conn);
        // The soak opens every pool afresh; idle set-up connections would crowd the server.
        pools.evict(&tenant.identifier).await;
    }

    let tally = drive(mode, seed, requests, requests_through(pools.clone())).await;
    assert_sound(&tally, requests);

    // Every connection comes back, and the server sees each one idle outside any transaction
    // (connections closed on purpose take a moment to go).
    let idle = |activity: &BTreeMap<i64, String>| activity.values().all(|state| state == "idle");
    let deadline = Instant::now() + Duration::from_secs(15);
    let activity = loop {
        let activity = match server {
            Some(databases) => activity(databases).await,
            None => BTreeMap::new(),
        };
        let settled = pools.metrics().checked_out == 0 && idle(&activity);
        if settled || Instant::now() > deadline {
            break activity;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(pools.metrics().checked_out, 0, "connections still out");
    assert!(idle(&activity), "tenant connections not idle: {activity:?}");

    // Each tenant's pooled connections all at once (so none is checked twice): outside any
    // transaction, on a database with the tenant's rows and no other's. Then the pool goes, so
    // that the idle connections of all the tenants never crowd the server.
    for tenant in &tenants {
        let id = tenant.identifier.as_str();
        let mut held = Vec::new();
        for _ in 0..pools.settings().max_connections_per_tenant {
            let mut conn = pools
                .acquire(&tenant.identifier)
                .await
                .unwrap_or_else(|error| panic!("{id}: no connection after the soak: {error}"));
            let probe = L::probe(&mut conn, id).await;
            assert!(
                !probe.in_transaction,
                "{id}: a connection inside a transaction"
            );
            assert!(probe.own_rows >= INITIAL_ROWS as i64, "{id}: {probe:?}");
            assert_eq!(probe.foreign_rows, 0, "foreign rows stored for {id}");
            held.push(conn);
        }
        drop(held);
        pools.evict(&tenant.identifier).await;
    }
}

/// The URL of the admin connection to `server`.
fn admin_url(server: Server) -> String {
    match server {
        Server::Postgres => format!("{}/postgres", postgres_server_url()),
        Server::Mysql => format!("{}/mysql", mysql_server_url()),
    }
}

/// A fresh admin connection to `server` (a `PgConnection` or a `MySqlConnection`).
async fn admin<C: Connection>(server: Server) -> C {
    let url = admin_url(server);
    C::connect(&url)
        .await
        .unwrap_or_else(|error| panic!("connect to {url}: {error}"))
}

/// The server's connections to these databases: id → what it is doing, `idle` for idle
/// outside any transaction.
async fn activity(databases: &TenantDatabases) -> BTreeMap<i64, String> {
    let activity: Result<Vec<(i64, String)>, _> = match databases.server() {
        Server::Postgres => {
            sqlx::query_as(
                "SELECT pid::bigint, coalesce(state, '') FROM pg_stat_activity \
                 WHERE starts_with(datname, $1) AND backend_type = 'client backend'",
            )
            .bind(databases.prefix())
            .fetch_all(&mut admin::<PgConnection>(databases.server()).await)
            .await
        }
        // The process list shows a connection inside a transaction but between statements
        // as sleeping; InnoDB's list of transactions shows it.
        Server::Mysql => {
            sqlx::query_as(
                "SELECT CAST(p.id AS SIGNED), CASE WHEN t.trx_id IS NOT NULL \
                 THEN 'in transaction' WHEN p.command = 'Sleep' THEN 'idle' \
                 ELSE p.command END \
                 FROM information_schema.processlist p \
                 LEFT JOIN information_schema.innodb_trx t ON t.trx_mysql_thread_id = p.id \
                 WHERE LEFT(p.db, CHAR_LENGTH(?)) = ?",
            )
            .bind(databases.prefix())
            .bind(databases.prefix())
            .fetch_all(&mut admin::<MySqlConnection>(databases.server()).await)
            .await
        }
    };
    activity.unwrap().into_iter().collect()
}

impl SoakBackend for PgDatabaseLocator {
    const ID_COLUMN: &'static str = "BIGSERIAL PRIMARY KEY";

    async fn create_database(pools: &PgTenantPools, tenant: &TenantIdentifier) {
        let mut admin = admin(Server::Postgres).await;
        pools
            .create_tenant_database(&mut admin, tenant, None)
            .await
            .unwrap();
    }

    async fn probe(conn: &mut PgConnection, tenant: &str) -> ConnectionProbe {
        // One simple query, one command message: inside a transaction, now() is when the
        // transaction began, before this statement (the identifier is validated, so safe SQL).
        let row = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SELECT now() <> statement_timestamp(), \
             count(*) FILTER (WHERE tenant = '{tenant}'), \
             count(*) FILTER (WHERE tenant <> '{tenant}') FROM items"
        )))
        .fetch_one(conn)
        .await
        .unwrap();
        ConnectionProbe {
            in_transaction: row.get(0),
            own_rows: row.get(1),
            foreign_rows: row.get(2),
        }
    }
}

impl SoakBackend for MySqlDatabaseLocator {
    const ID_COLUMN: &'static str = "BIGINT AUTO_INCREMENT PRIMARY KEY";

    async fn create_database(pools: &MySqlTenantPools, tenant: &TenantIdentifier) {
        let mut admin = admin(Server::Mysql).await;
        pools
            .create_tenant_database(&mut admin, tenant, None)
            .await
            .unwrap();
    }

    async fn probe(conn: &mut MySqlConnection, tenant: &str) -> ConnectionProbe {
        let (in_transaction, own_rows, foreign_rows): (i64, i64, i64) = sqlx::query_as(
            "SELECT CAST(@@in_transaction AS SIGNED), \
             CAST(COALESCE(SUM(tenant = ?), 0) AS SIGNED), \
             CAST(COALESCE(SUM(tenant <> ?), 0) AS SIGNED) FROM items",
        )
        .bind(tenant)
        .bind(tenant)
        .fetch_one(conn)
        .await
        .unwrap();
        ConnectionProbe {
            in_transaction: in_transaction != 0,
            own_rows,
            foreign_rows,
        }
    }
}

impl SoakBackend for SqliteLocator {
    const ID_COLUMN: &'static str = "INTEGER PRIMARY KEY";

    async fn create_database(pools: &SqliteTenantPools, tenant: &TenantIdentifier) {
        pools.create_tenant_database(tenant, None).await.unwrap();
    }

    async fn probe(conn: &mut SqliteConnection, tenant: &str) -> ConnectionProbe {
        // Outside any transaction, and not holding the file's write lock either.
        let in_transaction = sqlx::raw_sql("BEGIN IMMEDIATE; ROLLBACK")
            .execute(&mut *conn)
            .await
            .is_err();
        let (own_rows, foreign_rows) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE tenant = $1), count(*) FILTER (WHERE tenant <> $1) \
             FROM items",
        )
        .bind(tenant)
        .fetch_one(conn)
        .await
        .unwrap();
        ConnectionProbe {
            in_transaction,
            own_rows,
            foreign_rows,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_postgres_database_per_tenant() {
    let databases = TenantDatabases::new(Server::Postgres, "soak");
    let locator = PgDatabaseLocator::from_url(&postgres_server_url(), databases.prefix()).unwrap();
    let pools = PgTenantPools::new(locator, tenant_pool_settings());
    soak_database_per_tenant(
        "postgres-database",
        pools,
        postgres_requests,
        Some(&databases),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mariadb_database_per_tenant() {
    let databases = TenantDatabases::new(Server::Mysql, "soak");
    let locator = MySqlDatabaseLocator::from_url(&mysql_server_url(), databases.prefix()).unwrap();
    let pools = MySqlTenantPools::new(locator, tenant_pool_settings());
    soak_database_per_tenant("mariadb-database", pools, mysql_requests, Some(&databases)).await;
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_sqlite_database_per_tenant() {
    let dir = TempDir(std::env::temp_dir().join(unique_name("tenancy_soak_sqlite")));
    let locator = SqliteLocator::new(&dir.0, "tenant_")
        .unwrap()
        .with_busy_timeout(Duration::from_secs(10));
    let pools = SqliteTenantPools::new(locator, tenant_pool_settings());
    soak_database_per_tenant("sqlite-database", pools, sqlite_requests, None).await;
}
