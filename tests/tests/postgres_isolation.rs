//! PostgreSQL tenant isolation against the real server: schema and RLS scoping, hybrid
//! dispatch (schema, RLS and a database per tenant), the RLS audit, provisioning primitives,
//! the axum extractor, and above all that no tenant state survives on a pooled connection
//! whatever happens to the transaction (commit, error, panic, a future dropped at any await
//! point, session-level `SET`s by user code).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::FutureExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Row};
use tenancy::sql::database_per_tenant::TenantPoolSettings;
use tenancy::sql::postgres::{
    PgDatabaseLocator, PgIsolation, PgIsolationOptions, PgTenantPools, PgTenantTx, RlsProblem,
    TenantSetting, apply_rls_policy, audit_rls, grant_tenant_tables, is_stale_plan_error,
    rls_policy_sql,
};
use tenancy::sql::{HybridIsolation, IsolationError, TenantIsolation, isolation_extension};
use tenancy::{IsolationMode, NewTenant, Tenant, TenantIdentifier, TenantStatus};
use tenancy_tests::{Server, TenantDatabases, TestDatabase, postgres_server_url, unique_name};
use tower::ServiceExt;

const DEFAULT_SEARCH_PATH: &str = "\"$user\", public";

fn tenant(id: &str, mode: Option<IsolationMode>) -> Tenant {
    let mut tenant = NewTenant::new(TenantIdentifier::parse(id).unwrap(), id)
        .with_status(TenantStatus::Active)
        .into_tenant();
    tenant.isolation = mode;
    tenant
}

/// A login role for the application, NOSUPERUSER NOBYPASSRLS, dropped when this value is
/// dropped (after the test database, so nothing in it depends on the role any more).
struct RuntimeRole {
    name: String,
}

impl RuntimeRole {
    async fn create(admin: &PgPool) -> Self {
        let name = unique_name("tenancy_rt");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE \"{name}\" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
        )))
        .execute(admin)
        .await
        .unwrap();
        Self { name }
    }
}

impl Drop for RuntimeRole {
    fn drop(&mut self) {
        run_cleanup(format!("DROP ROLE IF EXISTS \"{}\"", self.name), &self.name);
    }
}

/// Runs `sql` on the server's `postgres` database from a plain thread (drops may run inside or
/// outside a runtime, and during a panic); failures are reported, not raised.
fn run_cleanup(sql: String, what: &str) {
    let url = format!("{}/postgres", postgres_server_url());
    let cleanup = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for clean-up")
            .block_on(async move {
                let mut conn = PgConnection::connect(&url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
            })
    });
    match cleanup.join() {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => eprintln!("could not clean up {what}: {error}"),
        Err(_) => eprintln!("could not clean up {what}"),
    }
}

/// One test's world: a fresh database, an admin (superuser) pool on it, optionally a runtime
/// role, and the isolation handle. Field order is drop order.
struct World {
    isolation: PgIsolation,
    admin: PgPool,
    _db: TestDatabase,
    role: Option<RuntimeRole>,
}

impl World {
    /// Schema tenants `acme` and `globex` (tables `items(id, tenant, label)`), a `public.items`
    /// with a row nobody may see, and a `public.only_public` table.
    async fn schema(max_connections: u32, options: PgIsolationOptions) -> Self {
        let db = TestDatabase::postgres("tenancy_iso").await;
        let admin = PgPool::connect(db.url()).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE public.items (id int PRIMARY KEY, tenant text NOT NULL, label text NOT NULL);
             INSERT INTO public.items VALUES (1, 'public', 'must never be seen');
             CREATE TABLE public.only_public (id int);
             INSERT INTO public.only_public VALUES (1)",
        )
        .execute(&admin)
        .await
        .unwrap();
        let pool = options
            .pool_options(PgPoolOptions::new().max_connections(max_connections))
            .unwrap()
            .connect(db.url())
            .await
            .unwrap();
        let isolation = PgIsolation::from_pool(pool, options).unwrap();
        for id in ["acme", "globex"] {
            add_schema_tenant(&isolation, &admin, id).await;
        }
        Self {
            isolation,
            admin,
            _db: db,
            role: None,
        }
    }

    /// A shared `public.orders(id, tenant_id, note)` under the RLS policy, rows of `acme` and
    /// `globex`, owned by the admin; the application connects as a fresh runtime role.
    async fn rls(max_connections: u32, options: PgIsolationOptions) -> Self {
        let db = TestDatabase::postgres("tenancy_rls").await;
        let admin = PgPool::connect(db.url()).await.unwrap();
        let role = RuntimeRole::create(&admin).await;
        let mut conn = admin.acquire().await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE public.orders (id bigserial PRIMARY KEY, tenant_id text NOT NULL, note text NOT NULL);
             INSERT INTO public.orders (tenant_id, note) VALUES
               ('acme', 'a1'), ('acme', 'a2'), ('globex', 'g1'), ('globex', 'g2'), ('globex', 'g3')",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
        apply_rls_policy(
            &mut conn,
            "public.orders",
            "tenant_id",
            &TenantSetting::default(),
        )
        .await
        .unwrap();
        grant_tenant_tables(&mut conn, &role.name, &["public.orders"])
            .await
            .unwrap();
        drop(conn);
        let connect: PgConnectOptions = db.url().parse().unwrap();
        let pool = options
            .pool_options(PgPoolOptions::new().max_connections(max_connections))
            .unwrap()
            .connect_with(connect.username(&role.name))
            .await
            .unwrap();
        let isolation = PgIsolation::from_pool(pool, options).unwrap();
        Self {
            isolation,
            admin,
            _db: db,
            role: Some(role),
        }
    }

    fn role(&self) -> &str {
        &self.role.as_ref().unwrap().name
    }

    /// Checks out a connection without tenant scope and reports its state; the connection is
    /// held while the admin looks at it in `pg_stat_activity`.
    async fn observe(&self) -> Observed {
        let mut conn = self.isolation.pool().acquire().await.unwrap();
        let row = sqlx::raw_sql(
            "SELECT pg_backend_pid(), current_setting('app.tenant_id', true), \
             current_setting('search_path'), now() = statement_timestamp()",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let pid: i32 = row.get(0);
        let state: String = sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&self.admin)
            .await
            .unwrap();
        Observed {
            pid,
            tenant_setting: row.get(1),
            search_path: row.get(2),
            outside_transaction: row.get(3),
            state,
        }
    }

    /// Asserts the pool's connection carries no transaction and no tenant state; returns its pid.
    async fn assert_clean(&self) -> i32 {
        let seen = self.observe().await;
        assert!(
            seen.tenant_setting.as_deref().unwrap_or("").is_empty(),
            "tenant setting left on the session: {seen:?}"
        );
        assert_eq!(seen.search_path, DEFAULT_SEARCH_PATH, "{seen:?}");
        assert!(
            seen.outside_transaction,
            "connection inside a transaction: {seen:?}"
        );
        assert_eq!(seen.state, "idle", "{seen:?}");
        seen.pid
    }
}

#[derive(Debug)]
struct Observed {
    pid: i32,
    tenant_setting: Option<String>,
    search_path: String,
    outside_transaction: bool,
    state: String,
}

async fn add_schema_tenant(isolation: &PgIsolation, admin: &PgPool, id: &str) {
    let mut conn = admin.acquire().await.unwrap();
    let tenant = TenantIdentifier::parse(id).unwrap();
    let schema = isolation
        .create_tenant_schema(&mut conn, &tenant)
        .await
        .unwrap();
    let schema = schema.quoted_postgres();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {schema}.items (id int PRIMARY KEY, tenant text NOT NULL, label text NOT NULL);
         INSERT INTO {schema}.items VALUES (1, '{id}', 'one'), (2, '{id}', 'two')"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
}

async fn pid(tx: &mut PgTenantTx) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut **tx)
        .await
        .unwrap()
}

async fn item_tenants(tx: &mut PgTenantTx) -> Vec<String> {
    sqlx::query_scalar("SELECT tenant FROM items ORDER BY id")
        .fetch_all(&mut **tx)
        .await
        .unwrap()
}

async fn order_tenants(tx: &mut PgTenantTx) -> Vec<String> {
    sqlx::query_scalar("SELECT tenant_id FROM orders ORDER BY id")
        .fetch_all(&mut **tx)
        .await
        .unwrap()
}

// ---------------------------------------------------------------- schema mode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_tenants_take_turns_on_one_connection() {
    for reset in RELEASE_RESET {
        let world = World::schema(1, PgIsolationOptions::new().reset_on_release(reset)).await;
        let (acme, globex) = (tenant("acme", None), tenant("globex", None));

        let mut tx = world.isolation.begin(&acme).await.unwrap();
        assert_eq!(tx.mode(), IsolationMode::Schema);
        assert_eq!(item_tenants(&mut tx).await, ["acme", "acme"]);
        let search_path: String = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(search_path, "tenant_acme, pg_temp");
        let first_pid = pid(&mut tx).await;
        tx.commit().await.unwrap();

        let mut tx = world.isolation.begin(&globex).await.unwrap();
        assert_eq!(item_tenants(&mut tx).await, ["globex", "globex"]);
        assert_eq!(pid(&mut tx).await, first_pid);
        tx.commit().await.unwrap();

        assert_eq!(world.assert_clean().await, first_pid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_table_missing_in_tenant_schema_is_an_error_never_public_rows() {
    let world = World::schema(1, PgIsolationOptions::new()).await;
    let mut tx = world.isolation.begin(&tenant("acme", None)).await.unwrap();
    let error = sqlx::query("SELECT * FROM only_public")
        .fetch_all(&mut *tx)
        .await
        .unwrap_err();
    let code = error
        .as_database_error()
        .unwrap()
        .code()
        .unwrap()
        .into_owned();
    assert_eq!(code, "42P01", "{error}");
    drop(tx);

    // A tenant without a schema sees nothing either.
    let mut tx = world
        .isolation
        .begin(&tenant("initech", None))
        .await
        .unwrap();
    assert!(
        sqlx::query("SELECT * FROM items")
            .fetch_all(&mut *tx)
            .await
            .is_err()
    );
    drop(tx);
    world.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_shared_schema_is_searched_after_the_tenant_schema() {
    let world = World::schema(1, PgIsolationOptions::new().shared_schema("public")).await;
    let mut tx = world.isolation.begin(&tenant("acme", None)).await.unwrap();
    assert_eq!(item_tenants(&mut tx).await, ["acme", "acme"]);
    let shared: Vec<i32> = sqlx::query_scalar("SELECT id FROM only_public")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(shared, [1]);
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_drift_stale_plan_is_detected_and_recovered() {
    let world = World::schema(1, PgIsolationOptions::new()).await;
    sqlx::raw_sql("ALTER TABLE tenant_globex.items ADD COLUMN extra int NOT NULL DEFAULT 7")
        .execute(&world.admin)
        .await
        .unwrap();
    let (acme, globex) = (tenant("acme", None), tenant("globex", None));

    // Prepared (and cached) against acme's three-column table.
    let mut tx = world.isolation.begin(&acme).await.unwrap();
    let rows = sqlx::query("SELECT * FROM items")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(rows[0].len(), 3);
    tx.commit().await.unwrap();

    // The same cached statement under globex's four-column table.
    let mut tx = world.isolation.begin(&globex).await.unwrap();
    let error = sqlx::query("SELECT * FROM items")
        .fetch_all(&mut *tx)
        .await
        .unwrap_err();
    assert!(is_stale_plan_error(&error), "{error}");
    tx.restart_with_fresh_statements().await.unwrap();
    let rows = sqlx::query("SELECT * FROM items")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(rows[0].len(), 4);
    assert_eq!(tx.tenant().as_str(), "globex");
    tx.commit().await.unwrap();

    // Back to acme: the statement is stale again; the transaction helper retries once.
    let columns = world
        .isolation
        .transaction(&acme, |tx| {
            Box::pin(async move {
                let rows = sqlx::query("SELECT * FROM items")
                    .fetch_all(&mut **tx)
                    .await?;
                Ok(rows[0].len())
            })
        })
        .await
        .unwrap();
    assert_eq!(columns, 3);
    world.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_begin_is_a_savepoint_inside_the_tenant_scope() {
    let world = World::schema(1, PgIsolationOptions::new()).await;
    let mut tx = world.isolation.begin(&tenant("acme", None)).await.unwrap();
    {
        let mut savepoint = (*tx).begin().await.unwrap();
        sqlx::query("DELETE FROM items")
            .execute(&mut *savepoint)
            .await
            .unwrap();
        savepoint.rollback().await.unwrap();
    }
    {
        let mut savepoint = (*tx).begin().await.unwrap();
        sqlx::query("UPDATE items SET label = 'changed'")
            .execute(&mut *savepoint)
            .await
            .unwrap();
        savepoint.commit().await.unwrap();
    }
    // Still inside the tenant's transaction and scope.
    assert_eq!(item_tenants(&mut tx).await, ["acme", "acme"]);
    drop(tx);
    let labels: Vec<String> = sqlx::query_scalar("SELECT label FROM tenant_acme.items")
        .fetch_all(&world.admin)
        .await
        .unwrap();
    assert_eq!(
        labels,
        ["one", "two"],
        "dropping the tenant transaction rolls back"
    );
    world.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_provisioning_creates_and_drops_quoted_schemas() {
    let world = World::schema(1, PgIsolationOptions::new()).await;
    let mut conn = world.admin.acquire().await.unwrap();
    let id = TenantIdentifier::parse("new-co").unwrap();
    let schema = world
        .isolation
        .create_tenant_schema(&mut conn, &id)
        .await
        .unwrap();
    assert_eq!(schema.as_str(), "tenant_new_co");
    // Idempotent.
    world
        .isolation
        .create_tenant_schema(&mut conn, &id)
        .await
        .unwrap();
    async fn exists(conn: &mut PgConnection) -> sqlx::Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_new_co')",
        )
        .fetch_one(conn)
        .await
    }
    assert!(exists(&mut conn).await.unwrap());
    sqlx::raw_sql("CREATE TABLE tenant_new_co.t (id int)")
        .execute(&mut *conn)
        .await
        .unwrap();
    world
        .isolation
        .drop_tenant_schema(&mut conn, &id)
        .await
        .unwrap();
    assert!(!exists(&mut conn).await.unwrap());
    world
        .isolation
        .drop_tenant_schema(&mut conn, &id)
        .await
        .unwrap();
}

// ---------------------------------------------------------------- RLS mode

/// The leak tests run with the pool's release reset on (the default) and off: what keeps a
/// tenant transaction scoped must not depend on it.
const RELEASE_RESET: [bool; 2] = [true, false];

fn rls_options() -> PgIsolationOptions {
    PgIsolationOptions::new().mode(IsolationMode::Rls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_tenant_reads_and_writes_only_its_rows() {
    let world = World::rls(1, rls_options()).await;
    let acme = tenant("acme", None);

    let mut tx = world.isolation.begin(&acme).await.unwrap();
    assert_eq!(tx.mode(), IsolationMode::Rls);
    assert_eq!(order_tenants(&mut tx).await, ["acme", "acme"]);
    let seen_b: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE tenant_id = 'globex'")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen_b, 0);
    let updated = sqlx::query("UPDATE orders SET note = 'x' WHERE tenant_id = 'globex'")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 0);
    let updated_all = sqlx::query("UPDATE orders SET note = note || '!'")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(updated_all.rows_affected(), 2);
    let deleted = sqlx::query("DELETE FROM orders WHERE tenant_id = 'globex'")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 0);
    sqlx::query("INSERT INTO orders (tenant_id, note) VALUES ('acme', 'a3')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Writing another tenant's id is refused by WITH CHECK.
    let mut tx = world.isolation.begin(&acme).await.unwrap();
    let error = sqlx::query("INSERT INTO orders (tenant_id, note) VALUES ('globex', 'forged')")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(error.as_database_error().unwrap().code().unwrap(), "42501");
    drop(tx);
    let mut tx = world.isolation.begin(&acme).await.unwrap();
    let error = sqlx::query("UPDATE orders SET tenant_id = 'globex' WHERE tenant_id = 'acme'")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(error.as_database_error().unwrap().code().unwrap(), "42501");
    drop(tx);

    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id, note FROM orders ORDER BY id")
            .fetch_all(&world.admin)
            .await
            .unwrap();
    let expected = [
        ("acme", "a1!"),
        ("acme", "a2!"),
        ("globex", "g1"),
        ("globex", "g2"),
        ("globex", "g3"),
        ("acme", "a3"),
    ];
    assert_eq!(
        rows,
        expected.map(|(t, n)| (t.to_owned(), n.to_owned())),
        "globex untouched, acme's writes committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_without_tenant_sees_no_rows() {
    let world = World::rls(1, rls_options()).await;
    let count = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    // Never set on this session: NULL.
    assert_eq!(count(world.isolation.pool().clone()).await, 0);
    // Set and reverted: current_setting(.., true) is '' now, still no rows.
    let mut tx = world.isolation.begin(&tenant("acme", None)).await.unwrap();
    assert_eq!(order_tenants(&mut tx).await.len(), 2);
    tx.commit().await.unwrap();
    let seen = world.observe().await;
    assert_eq!(seen.tenant_setting.as_deref(), Some(""));
    assert_eq!(count(world.isolation.pool().clone()).await, 0);
    let inserted = sqlx::query("INSERT INTO orders (tenant_id, note) VALUES ('acme', 'x')")
        .execute(world.isolation.pool())
        .await;
    assert!(inserted.is_err(), "no tenant, no writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_delete_tenant_rows_is_scoped_and_parameterised() {
    let world = World::rls(1, rls_options()).await;
    let acme = TenantIdentifier::parse("acme").unwrap();
    // As the runtime role, subject to RLS: works only because the setting is set for the delete.
    let mut conn = world.isolation.pool().acquire().await.unwrap();
    let deleted = world
        .isolation
        .delete_tenant_rows(&mut conn, &acme, &["public.orders"])
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    drop(conn);
    let left: Vec<String> = sqlx::query_scalar("SELECT tenant_id FROM orders ORDER BY id")
        .fetch_all(&world.admin)
        .await
        .unwrap();
    assert_eq!(left, ["globex", "globex", "globex"]);
    let refused = world
        .isolation
        .delete_tenant_rows(
            &mut world.admin.acquire().await.unwrap(),
            &acme,
            &["orders; DROP TABLE orders"],
        )
        .await;
    assert!(matches!(refused, Err(IsolationError::InvalidName { .. })));
    world.assert_clean().await;
}

// ---------------------------------------------------------------- leak-proofing

/// The work of one request: begin, two queries, commit.
async fn request(isolation: &PgIsolation, tenant: &Tenant) -> Result<Vec<String>, IsolationError> {
    let mut tx = isolation.begin(tenant).await?;
    let first: Vec<String> = sqlx::query_scalar("SELECT tenant_id FROM orders")
        .fetch_all(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_sleep(0.001)")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_error_commit_and_reuse_leave_nothing_behind() {
    for reset in RELEASE_RESET {
        let world = World::rls(1, rls_options().reset_on_release(reset)).await;
        let acme = tenant("acme", None);
        let first_pid = world.assert_clean().await;

        // A failing statement after the scope was set, then the transaction dropped.
        let mut tx = world.isolation.begin(&acme).await.unwrap();
        assert!(
            sqlx::query("SELECT no_such_column FROM orders")
                .fetch_all(&mut *tx)
                .await
                .is_err()
        );
        drop(tx);
        assert_eq!(world.assert_clean().await, first_pid);

        // A failing statement, then commit: PostgreSQL rolls back; the connection is clean.
        let mut tx = world.isolation.begin(&acme).await.unwrap();
        sqlx::query("INSERT INTO orders (tenant_id, note) VALUES ('acme', 'lost')")
            .execute(&mut *tx)
            .await
            .unwrap();
        assert!(sqlx::query("SELECT 1/0").execute(&mut *tx).await.is_err());
        tx.commit().await.unwrap();
        assert_eq!(world.assert_clean().await, first_pid);

        // Commit, then further use of the same connection.
        assert_eq!(request(&world.isolation, &acme).await.unwrap().len(), 2);
        assert_eq!(world.assert_clean().await, first_pid);
        let mut tx = world
            .isolation
            .begin(&tenant("globex", None))
            .await
            .unwrap();
        assert_eq!(order_tenants(&mut tx).await, ["globex", "globex", "globex"]);
        tx.rollback().await.unwrap();
        assert_eq!(world.assert_clean().await, first_pid);
        let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE note = 'lost'")
            .fetch_one(&world.admin)
            .await
            .unwrap();
        assert_eq!(notes, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_leaves_nothing_behind() {
    for reset in RELEASE_RESET {
        let world = World::rls(1, rls_options().reset_on_release(reset)).await;
        let first_pid = world.assert_clean().await;
        let isolation = world.isolation.clone();
        let handler = tokio::spawn(async move {
            let mut tx = isolation.begin(&tenant("acme", None)).await.unwrap();
            assert_eq!(order_tenants(&mut tx).await.len(), 2);
            panic!("handler bug after the tenant was set");
        });
        assert!(handler.await.unwrap_err().is_panic());

        // A panic while a query is in flight, caught in place.
        let isolation = world.isolation.clone();
        let caught = std::panic::AssertUnwindSafe(async move {
            let mut tx = isolation.begin(&tenant("acme", None)).await.unwrap();
            let query = sqlx::query("SELECT pg_sleep(0.05)").execute(&mut *tx);
            let _ = query.now_or_never();
            panic!("panic with a query in flight");
        })
        .catch_unwind()
        .await;
        assert!(caught.is_err());

        assert_eq!(world.assert_clean().await, first_pid);
        let mut tx = world
            .isolation
            .begin(&tenant("globex", None))
            .await
            .unwrap();
        assert_eq!(order_tenants(&mut tx).await, ["globex", "globex", "globex"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_dropped_at_every_await_point_leave_nothing_behind() {
    for reset in RELEASE_RESET {
        let world = World::rls(1, rls_options().reset_on_release(reset)).await;
        let acme = tenant("acme", None);
        let globex = tenant("globex", None);

        // Polled exactly once, then dropped: begin in flight (or, rarely, already done; either
        // way the connection must come back clean).
        for _ in 0..5 {
            drop(world.isolation.begin(&acme).now_or_never());
            world.assert_clean().await;
        }
        // Begin finished, dropped before the first query.
        for _ in 0..3 {
            let tx = world.isolation.begin(&acme).await.unwrap();
            drop(tx);
            world.assert_clean().await;
        }
        // First query in flight (sent, reply not read) when dropped.
        for sql in ["SELECT tenant_id FROM orders", "SELECT pg_sleep(0.02)"] {
            let mut tx = world.isolation.begin(&acme).await.unwrap();
            drop(sqlx::query(sql).fetch_all(&mut *tx).now_or_never());
            drop(tx);
            world.assert_clean().await;
        }
        // Commit in flight when dropped.
        let tx = world.isolation.begin(&acme).await.unwrap();
        drop(tx.commit().now_or_never());
        world.assert_clean().await;

        // Timeouts sweeping across every await point of a whole request.
        let mut cancelled = 0;
        let mut completed = 0;
        for step in 0..120u64 {
            let limit = Duration::from_micros(step * 25);
            match tokio::time::timeout(limit, request(&world.isolation, &acme)).await {
                Ok(result) => {
                    assert_eq!(result.unwrap(), ["acme", "acme"]);
                    completed += 1;
                }
                Err(_) => cancelled += 1,
            }
            world.assert_clean().await;
            // The next tenant always sees its own rows.
            let mut tx = world.isolation.begin(&globex).await.unwrap();
            assert_eq!(order_tenants(&mut tx).await, ["globex", "globex", "globex"]);
            tx.commit().await.unwrap();
        }
        assert!(cancelled > 0, "the sweep never cancelled");
        assert!(completed > 0, "the sweep never completed a request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_level_sets_committed_by_user_code_do_not_reach_the_next_borrower() {
    for reset in RELEASE_RESET {
        let world = World::rls(1, rls_options().reset_on_release(reset)).await;
        let mut conn = world.admin.acquire().await.unwrap();
        sqlx::raw_sql("CREATE SCHEMA decoy; CREATE TABLE decoy.orders (id int, tenant_id text); INSERT INTO decoy.orders VALUES (1, 'decoy')")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "GRANT USAGE ON SCHEMA decoy TO \"{0}\"; GRANT SELECT ON decoy.orders TO \"{0}\"",
            world.role()
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
        drop(conn);
        let first_pid = world.assert_clean().await;

        let mut tx = world.isolation.begin(&tenant("acme", None)).await.unwrap();
        sqlx::raw_sql(
            "SET app.tenant_id = 'globex'; SET search_path TO decoy; SET statement_timeout = '123s'",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        // Within its own transaction, user code gets what it asked for...
        assert_eq!(order_tenants(&mut tx).await, ["decoy"]);
        tx.commit().await.unwrap();

        // ...but the next borrower of the connection is scoped afresh, statement timeout
        // included, with or without the release reset.
        let mut tx = world.isolation.begin(&tenant("acme", None)).await.unwrap();
        assert_eq!(pid(&mut tx).await, first_pid);
        assert_eq!(order_tenants(&mut tx).await, ["acme", "acme"]);
        let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(timeout, "0", "reset: {reset}");
        tx.commit().await.unwrap();
        if reset {
            // The reset also gives plain use of the pool the session defaults back.
            assert_eq!(world.assert_clean().await, first_pid);
            let plain: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(world.isolation.pool())
                .await
                .unwrap();
            assert_eq!(plain, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_tables_left_by_user_code_never_shadow_the_next_tenants_tables() {
    for reset in RELEASE_RESET {
        let world = World::schema(1, PgIsolationOptions::new().reset_on_release(reset)).await;
        let (acme, globex) = (tenant("acme", None), tenant("globex", None));
        let mut tx = world.isolation.begin(&acme).await.unwrap();
        let first_pid = pid(&mut tx).await;
        sqlx::raw_sql(
            "CREATE TEMP TABLE items (id int, tenant text, label text);
             INSERT INTO pg_temp.items VALUES (1, 'acme-temp', 'left behind')",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();

        let mut tx = world.isolation.begin(&globex).await.unwrap();
        assert_eq!(pid(&mut tx).await, first_pid);
        assert_eq!(
            item_tenants(&mut tx).await,
            ["globex", "globex"],
            "reset: {reset}"
        );
        tx.commit().await.unwrap();
        if reset {
            let mut conn = world.isolation.pool().acquire().await.unwrap();
            let temp_left: bool =
                sqlx::query_scalar("SELECT to_regclass('pg_temp.items') IS NOT NULL")
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
            assert!(!temp_left, "the release reset drops temporary tables");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_grows_and_each_connection_keeps_its_tenant() {
    let world = World::rls(2, rls_options()).await;
    let mut a = world.isolation.begin(&tenant("acme", None)).await.unwrap();
    let mut b = world
        .isolation
        .begin(&tenant("globex", None))
        .await
        .unwrap();
    assert_ne!(pid(&mut a).await, pid(&mut b).await);
    assert_eq!(order_tenants(&mut a).await, ["acme", "acme"]);
    assert_eq!(order_tenants(&mut b).await, ["globex", "globex", "globex"]);
    a.commit().await.unwrap();
    assert_eq!(order_tenants(&mut b).await, ["globex", "globex", "globex"]);
    b.commit().await.unwrap();
    world.assert_clean().await;
    world.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_dispatches_schema_and_rls_tenants_on_one_connection() {
    let options = PgIsolationOptions::new()
        .select_mode(|tenant| tenant.isolation.unwrap_or(IsolationMode::Rls));
    let world = World::rls(1, options).await;
    add_schema_tenant(&world.isolation, &world.admin, "initech").await;
    let schema = world
        .isolation
        .schema_name(&TenantIdentifier::parse("initech").unwrap())
        .unwrap()
        .quoted_postgres();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT USAGE ON SCHEMA {schema} TO \"{0}\"; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO \"{0}\"",
        world.role()
    )))
    .execute(&world.admin)
    .await
    .unwrap();
    let initech = tenant("initech", Some(IsolationMode::Schema));
    let acme = tenant("acme", None);
    let first_pid = world.assert_clean().await;
    for _ in 0..3 {
        let mut tx = world.isolation.begin(&initech).await.unwrap();
        assert_eq!(tx.mode(), IsolationMode::Schema);
        assert_eq!(item_tenants(&mut tx).await, ["initech", "initech"]);
        // A schema tenant cannot reach the shared RLS table (not on its search path).
        assert!(
            sqlx::query("SELECT 1 FROM orders")
                .fetch_all(&mut *tx)
                .await
                .is_err()
        );
        drop(tx);
        let mut tx = world.isolation.begin(&acme).await.unwrap();
        assert_eq!(tx.mode(), IsolationMode::Rls);
        assert_eq!(order_tenants(&mut tx).await, ["acme", "acme"]);
        assert_eq!(pid(&mut tx).await, first_pid);
        tx.commit().await.unwrap();
    }
    let unsupported = world
        .isolation
        .begin(&tenant("umbrella", Some(IsolationMode::Database)))
        .await
        .unwrap_err();
    assert!(matches!(
        unsupported,
        IsolationError::UnsupportedMode(IsolationMode::Database)
    ));
    assert_eq!(world.assert_clean().await, first_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tenants_interleaved_on_two_connections_only_see_their_rows() {
    // Tenants t0..t3 are schema tenants, t4..t7 RLS tenants, all on one pool of 2.
    let options = PgIsolationOptions::new()
        .select_mode(|tenant| tenant.isolation.unwrap_or(IsolationMode::Rls));
    let world = World::rls(2, options).await;
    let mut tenants = Vec::new();
    for index in 0..8 {
        let id = format!("tenant-{index}");
        if index < 4 {
            add_schema_tenant(&world.isolation, &world.admin, &id).await;
            let schema = world
                .isolation
                .schema_name(&TenantIdentifier::parse(&id).unwrap())
                .unwrap()
                .quoted_postgres();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "GRANT USAGE ON SCHEMA {schema} TO \"{0}\"; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO \"{0}\"",
                world.role()
            )))
            .execute(&world.admin)
            .await
            .unwrap();
            tenants.push(Arc::new(tenant(&id, Some(IsolationMode::Schema))));
        } else {
            sqlx::query("INSERT INTO orders (tenant_id, note) VALUES ($1, 'x'), ($1, 'y')")
                .bind(&id)
                .execute(&world.admin)
                .await
                .unwrap();
            tenants.push(Arc::new(tenant(&id, None)));
        }
    }

    let mut tasks = Vec::new();
    for round in 0..30 {
        for tenant in &tenants {
            let (isolation, tenant) = (world.isolation.clone(), Arc::clone(tenant));
            tasks.push(tokio::spawn(async move {
                let work = async {
                    let mut tx = isolation.begin(&tenant).await.unwrap();
                    let sql = match tx.mode() {
                        IsolationMode::Schema => "SELECT tenant FROM items",
                        _ => "SELECT tenant_id FROM orders",
                    };
                    for _ in 0..2 {
                        let rows: Vec<String> =
                            sqlx::query_scalar(sql).fetch_all(&mut *tx).await.unwrap();
                        assert_eq!(rows.len(), 2);
                        for row in rows {
                            assert_eq!(row, tenant.identifier.as_str(), "cross-tenant row");
                        }
                        tokio::task::yield_now().await;
                    }
                    match round % 3 {
                        0 => tx.commit().await.unwrap(),
                        1 => tx.rollback().await.unwrap(),
                        _ => drop(tx),
                    }
                };
                if round % 5 == 4 {
                    // Some requests are cut short at whatever point they reached.
                    let _ = tokio::time::timeout(Duration::from_micros(300), work).await;
                } else {
                    work.await;
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    world.assert_clean().await;
}

// ---------------------------------------------------------------- hybrid with database tenants

async fn server_admin() -> PgConnection {
    PgConnection::connect(&format!("{}/postgres", postgres_server_url()))
        .await
        .unwrap()
}

async fn database_exists(admin: &mut PgConnection, name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// What a handler sees: the mode and the tenants of the rows it can read.
async fn rows_seen(mut tx: PgTenantTx) -> String {
    let sql = match tx.mode() {
        IsolationMode::Rls => "SELECT tenant_id FROM orders ORDER BY id",
        _ => "SELECT tenant FROM items ORDER BY id",
    };
    let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(&mut *tx).await.unwrap();
    let mode = tx.mode();
    tx.commit().await.unwrap();
    format!("{mode} {}", rows.join(","))
}

async fn call(app: &Router, tenant: Option<&Tenant>) -> (StatusCode, String) {
    let mut request = Request::builder().uri("/rows");
    if let Some(tenant) = tenant {
        request = request.extension(Arc::new(tenant.clone()));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_dispatches_schema_rls_and_database_tenants() {
    let world = World::rls(1, rls_options()).await;
    add_schema_tenant(&world.isolation, &world.admin, "initech").await;
    let schema = world
        .isolation
        .schema_name(&TenantIdentifier::parse("initech").unwrap())
        .unwrap()
        .quoted_postgres();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT USAGE ON SCHEMA {schema} TO \"{0}\"; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO \"{0}\"",
        world.role()
    )))
    .execute(&world.admin)
    .await
    .unwrap();

    // Dropped after the pools (declared before them), even after a panic.
    let databases = TenantDatabases::new(Server::Postgres, "tdb");
    let prefix = databases.prefix();
    let locator = PgDatabaseLocator::from_url(&postgres_server_url(), prefix).unwrap();
    let pools = PgTenantPools::new(locator, TenantPoolSettings::default());
    let umbrella_id = TenantIdentifier::parse("umbrella-co").unwrap();
    let umbrella_db = pools
        .locator()
        .database_name(&umbrella_id)
        .unwrap()
        .as_str()
        .to_owned();
    assert_eq!(umbrella_db, format!("{prefix}umbrella_co"));

    let hybrid = HybridIsolation::new(world.isolation.clone(), pools.clone(), |tenant| {
        tenant.isolation.unwrap_or(IsolationMode::Rls)
    });
    let acme = tenant("acme", None);
    let initech = tenant("initech", Some(IsolationMode::Schema));
    let umbrella = tenant("umbrella-co", Some(IsolationMode::Database));
    assert_eq!(hybrid.mode_for(&umbrella), IsolationMode::Database);

    // Not provisioned yet: a clear error, and no database appears.
    let err = hybrid.begin(&umbrella).await.unwrap_err();
    assert!(
        matches!(err, IsolationError::NotProvisioned { .. }),
        "{err}"
    );
    let mut admin = server_admin().await;
    assert!(!database_exists(&mut admin, &umbrella_db).await);

    let created = pools
        .create_tenant_database(&mut admin, &umbrella_id, None)
        .await
        .unwrap();
    assert_eq!(created.as_str(), umbrella_db);
    // Idempotent.
    pools
        .create_tenant_database(&mut admin, &umbrella_id, None)
        .await
        .unwrap();
    let mut tx = hybrid.begin(&umbrella).await.unwrap();
    assert_eq!(tx.mode(), IsolationMode::Database);
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, tenant text NOT NULL, label text NOT NULL);
         INSERT INTO items VALUES (1, 'umbrella-co', 'one')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(database, umbrella_db);
    tx.commit().await.unwrap();

    // The shared handle is asked for exactly the selected mode.
    for _ in 0..2 {
        let mut tx = hybrid.begin(&acme).await.unwrap();
        assert_eq!(tx.mode(), IsolationMode::Rls);
        assert_eq!(order_tenants(&mut tx).await, ["acme", "acme"]);
        drop(tx);
        let mut tx = hybrid.begin(&initech).await.unwrap();
        assert_eq!(tx.mode(), IsolationMode::Schema);
        assert_eq!(item_tenants(&mut tx).await, ["initech", "initech"]);
        tx.commit().await.unwrap();
        let mut tx = hybrid.begin(&umbrella).await.unwrap();
        assert_eq!(item_tenants(&mut tx).await, ["umbrella-co"]);
        tx.rollback().await.unwrap();
    }

    // Modes a handle does not serve are refused, never served another way.
    let err = hybrid
        .begin_in_mode(&acme, IsolationMode::Hybrid)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        IsolationError::UnsupportedMode(IsolationMode::Hybrid)
    ));
    let err = TenantIsolation::begin_in_mode(&world.isolation, &acme, IsolationMode::Database)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        IsolationError::UnsupportedMode(IsolationMode::Database)
    ));
    let err = TenantIsolation::begin_in_mode(&pools, &acme, IsolationMode::Schema)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        IsolationError::UnsupportedMode(IsolationMode::Schema)
    ));

    // One extractor for all three, behind one handle.
    let app = Router::new()
        .route("/rows", get(rows_seen))
        .layer(Extension(isolation_extension(hybrid.clone())));
    assert_eq!(
        call(&app, Some(&acme)).await,
        (StatusCode::OK, "rls acme,acme".to_owned())
    );
    assert_eq!(
        call(&app, Some(&initech)).await,
        (StatusCode::OK, "schema initech,initech".to_owned())
    );
    assert_eq!(
        call(&app, Some(&umbrella)).await,
        (StatusCode::OK, "database umbrella-co".to_owned())
    );
    assert_eq!(
        call(&app, None).await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"detail":"tenancy layer not installed"}"#.to_owned()
        )
    );

    // Purged: the pool is evicted first, the database goes, requests get a 503.
    pools
        .drop_tenant_database(&mut admin, &umbrella_id)
        .await
        .unwrap();
    assert!(!database_exists(&mut admin, &umbrella_db).await);
    pools
        .drop_tenant_database(&mut admin, &umbrella_id)
        .await
        .unwrap();
    assert_eq!(
        call(&app, Some(&umbrella)).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"detail":"tenant database not available"}"#.to_owned()
        )
    );
    assert!(!database_exists(&mut admin, &umbrella_db).await);
    assert_eq!(pools.metrics().checked_out, 0);
    world.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extractor_rejects_an_unreachable_database_with_503() {
    let options = rls_options();
    let pool = options
        .pool_options(
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_millis(300)),
        )
        .unwrap()
        .connect_lazy("postgres://postgres@127.0.0.1:9/postgres")
        .unwrap();
    let isolation = PgIsolation::from_pool(pool, options).unwrap();
    let app = Router::new()
        .route("/rows", get(rows_seen))
        .layer(Extension(isolation_extension(isolation)));
    let response = app
        .oneshot(
            Request::builder()
                .uri("/rows")
                .extension(Arc::new(tenant("acme", None)))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["content-type"], "application/json");
}

// ---------------------------------------------------------------- audit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_passes_a_correct_setup() {
    let world = World::rls(1, rls_options()).await;
    let setting = TenantSetting::default();
    audit_rls(&world.admin, world.role(), &setting, "tenant_id")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_refuses_a_superuser_runtime_role() {
    let world = World::rls(1, rls_options()).await;
    let problems = audit_rls(
        &world.admin,
        "postgres",
        &TenantSetting::default(),
        "tenant_id",
    )
    .await
    .unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, RlsProblem::Superuser { .. })),
        "{problems:?}"
    );
    let message = problems[0].to_string();
    assert!(message.contains("NOSUPERUSER"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_refuses_tables_owned_by_the_runtime_role_or_without_force_or_policy() {
    let world = World::rls(1, rls_options()).await;
    let role = world.role().to_owned();
    let setting = TenantSetting::default();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE owned (id int, tenant_id text);
         ALTER TABLE owned OWNER TO \"{role}\";
         CREATE TABLE unforced (id int, tenant_id text);
         ALTER TABLE unforced ENABLE ROW LEVEL SECURITY;
         CREATE POLICY tenancy_isolation ON unforced FOR ALL
           USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))
           WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));
         CREATE TABLE no_check (id int, tenant_id text);
         ALTER TABLE no_check ENABLE ROW LEVEL SECURITY;
         ALTER TABLE no_check FORCE ROW LEVEL SECURITY;
         CREATE POLICY p ON no_check FOR ALL USING (tenant_id = current_setting('app.tenant_id', true));"
    )))
    .execute(&world.admin)
    .await
    .unwrap();
    apply_rls_policy(
        &mut world.admin.acquire().await.unwrap(),
        "owned",
        "tenant_id",
        &setting,
    )
    .await
    .unwrap();

    let problems = audit_rls(&world.admin, &role, &setting, "tenant_id")
        .await
        .unwrap_err();
    let described: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, RlsProblem::OwnsTable { table, .. } if table == "public.owned")),
        "{described:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, RlsProblem::NotForced { table } if table == "public.unforced")),
        "{described:?}"
    );
    assert!(
        problems.iter().any(
            |p| matches!(p, RlsProblem::MissingPolicy { table, .. } if table == "public.no_check")
        ),
        "{described:?}"
    );
    assert!(
        !described.iter().any(|d| d.contains("public.orders")),
        "the correct table is not blamed: {described:?}"
    );
    assert!(
        described
            .iter()
            .any(|d| d.contains("FORCE ROW LEVEL SECURITY"))
    );
    assert!(described.iter().any(|d| d.contains("OWNER TO")));

    // A BYPASSRLS role is refused too.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE \"{role}\" BYPASSRLS"
    )))
    .execute(&world.admin)
    .await
    .unwrap();
    let problems = audit_rls(&world.admin, &role, &setting, "tenant_id")
        .await
        .unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, RlsProblem::BypassRls { .. }))
    );
    // A role that does not exist, and a column no table has.
    let problems = audit_rls(&world.admin, "no_such_role_x", &setting, "nope")
        .await
        .unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, RlsProblem::RoleMissing { .. }))
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, RlsProblem::NoTenantTables { .. }))
    );
}

// ---------------------------------------------------------------- configuration

#[tokio::test]
async fn names_are_validated_before_reaching_sql() {
    assert!(TenantSetting::parse("app.tenant_id").is_ok());
    for bad in [
        "app",
        "app.",
        ".x",
        "App.tenant",
        "app.tenant-id",
        "app.t;x",
        "a.b.c",
    ] {
        assert!(TenantSetting::parse(bad).is_err(), "{bad}");
    }
    assert!(rls_policy_sql("orders", "tenant id", &TenantSetting::default()).is_err());
    assert!(rls_policy_sql("a.b.c", "tenant_id", &TenantSetting::default()).is_err());
    let sql = rls_policy_sql("orders", "tenant_id", &TenantSetting::default()).unwrap();
    assert!(sql.contains("NULLIF(pg_catalog.current_setting('app.tenant_id', true), '')"));
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://localhost/x")
        .unwrap();
    let bad = PgIsolation::from_pool(pool.clone(), PgIsolationOptions::new().schema_prefix("Bad"));
    assert!(bad.is_err());
    let bad = PgIsolation::from_pool(pool, PgIsolationOptions::new().shared_schema("x\"y"));
    assert!(matches!(bad, Err(IsolationError::InvalidName { .. })));
}

#[tokio::test]
async fn tenant_ids_of_every_shape_make_distinct_schemas() {
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://localhost/x")
        .unwrap();
    let isolation = PgIsolation::from_pool(pool, PgIsolationOptions::new()).unwrap();
    let mut seen = HashSet::new();
    for id in ["acme", "acme-corp", "acme-c-orp", "a1b"] {
        let schema = isolation
            .schema_name(&TenantIdentifier::parse(id).unwrap())
            .unwrap();
        assert!(seen.insert(schema.as_str().to_owned()));
    }
    let long = TenantIdentifier::parse(&"a".repeat(63)).unwrap();
    assert!(matches!(
        isolation.schema_name(&long),
        Err(IsolationError::Name(_))
    ));
}
