//! SQLite database-per-tenant against real files: isolation, no file for unknown tenants,
//! paths that stay in the data directory, the global connection budget, eviction while work is
//! in flight, cancelled transactions, purge, the generic isolation handle and the axum
//! extractor.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tenancy::sql::database_per_tenant::TenantPoolSettings;
use tenancy::sql::sqlite::{SqliteLocator, SqliteTenantPools, SqliteTenantTx};
use tenancy::sql::{IsolationError, TenantIsolation, isolation_extension};
use tenancy::{IsolationMode, NewTenant, Tenant, TenantIdentifier, TenantStatus};
use tenancy_tests::unique_name;
use tower::ServiceExt;

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(unique_name("tenancy_sqlite_dpt")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn id(s: &str) -> TenantIdentifier {
    TenantIdentifier::parse(s).unwrap()
}

fn settings() -> TenantPoolSettings {
    TenantPoolSettings {
        connection_budget: 10,
        max_connections_per_tenant: 2,
        acquire_timeout: Duration::from_secs(30),
        ..TenantPoolSettings::default()
    }
}

fn pools(dir: &TempDir, settings: TenantPoolSettings) -> SqliteTenantPools {
    let locator = SqliteLocator::new(&dir.0, "tenant_")
        .unwrap()
        .with_busy_timeout(Duration::from_secs(2));
    SqliteTenantPools::new(locator, settings)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

async fn count_notes(pools: &SqliteTenantPools, tenant: &TenantIdentifier) -> i64 {
    let mut conn = pools.acquire(tenant).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

async fn create_with_notes(pools: &SqliteTenantPools, tenant: &TenantIdentifier) {
    pools.create_tenant_database(tenant, None).await.unwrap();
    let mut tx = pools.begin(tenant).await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_see_only_their_own_rows() {
    let dir = TempDir::new();
    let pools = pools(&dir, settings());
    let (acme, beta) = (id("acme-corp"), id("beta"));

    let migrations_dir = dir.0.join("migrations");
    std::fs::create_dir_all(&migrations_dir).unwrap();
    std::fs::write(
        migrations_dir.join("1_notes.sql"),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )
    .unwrap();
    let migrator = sqlx::migrate::Migrator::new(migrations_dir.as_path())
        .await
        .unwrap();
    for tenant in [&acme, &beta] {
        pools
            .create_tenant_database(tenant, Some(&migrator))
            .await
            .unwrap();
    }
    assert!(dir.0.join("tenant_acme_corp.db").is_file());
    assert!(dir.0.join("tenant_beta.db").is_file());

    let mut tx = pools.begin(&acme).await.unwrap();
    assert_eq!(tx.tenant(), &acme);
    sqlx::query("INSERT INTO notes (body) VALUES ('secret of acme')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(count_notes(&pools, &acme).await, 1);
    assert_eq!(count_notes(&pools, &beta).await, 0);
    let mut conn = pools.acquire(&beta).await.unwrap();
    let leaked: Option<String> =
        sqlx::query_scalar("SELECT body FROM notes WHERE body LIKE '%acme%'")
            .fetch_optional(&mut *conn)
            .await
            .unwrap();
    assert_eq!(leaked, None);

    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(foreign_keys, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_for_unprovisioned_tenants_create_no_file() {
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    let pools = pools(&dir, settings());
    let ghost = id("ghost");

    for _ in 0..3 {
        let err = pools.acquire(&ghost).await.unwrap_err();
        assert!(
            matches!(&err, IsolationError::NotProvisioned { identifier } if identifier == &ghost),
            "{err}"
        );
        let err = pools.begin(&ghost).await.unwrap_err();
        assert!(
            matches!(err, IsolationError::NotProvisioned { .. }),
            "{err}"
        );
    }
    assert_eq!(files_in(&dir.0), Vec::<String>::new());
    assert_eq!(
        pools.metrics().pools_opened,
        0,
        "no pool for a missing tenant"
    );

    // A tenant whose database was dropped does not get a new empty one either.
    create_with_notes(&pools, &ghost).await;
    pools.drop_tenant_database(&ghost).await.unwrap();
    let err = pools.acquire(&ghost).await.unwrap_err();
    assert!(
        matches!(err, IsolationError::NotProvisioned { .. }),
        "{err}"
    );
    assert_eq!(files_in(&dir.0), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_paths_stay_inside_the_directory() {
    let dir = TempDir::new();
    let locator = SqliteLocator::new(&dir.0, "tenant_").unwrap();

    // Raw input never becomes an identifier unless it is a plain slug.
    for hostile in [
        "../etc",
        "..",
        "a/b",
        "a\\b",
        "acme/../../x",
        "acme\0",
        "/abs",
        "acme.db",
        "ACME",
        "acme%2f..",
    ] {
        assert!(TenantIdentifier::parse(hostile).is_err(), "{hostile:?}");
    }

    // Many generated identifiers (a fixed pseudo-random sequence): every path sits directly
    // in the directory and is named prefix + identifier with '-' as '_'.
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut checked = 0;
    for _ in 0..5_000 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let len = 3 + (state >> 58) as usize;
        let candidate: String = (0..len)
            .map(|i| alphabet[((state >> (i % 57)) as usize + i * 7) % alphabet.len()] as char)
            .collect();
        let Ok(tenant) = TenantIdentifier::parse(&candidate) else {
            continue;
        };
        checked += 1;
        match locator.database_path(&tenant) {
            Ok(path) => {
                assert_eq!(path.parent(), Some(dir.0.as_path()), "{candidate}");
                assert_eq!(
                    path.file_name().unwrap().to_str().unwrap(),
                    format!("tenant_{}.db", candidate.replace('-', "_"))
                );
            }
            Err(IsolationError::Name(_)) => assert!(candidate.len() + "tenant_".len() > 64),
            Err(other) => panic!("{candidate}: {other}"),
        }
    }
    assert!(
        checked > 1_000,
        "only {checked} valid identifiers generated"
    );

    // Too long once prefixed: a clear error, no file.
    let pools = pools(&dir, settings());
    let long = id(&"a".repeat(63));
    let err = pools.create_tenant_database(&long, None).await.unwrap_err();
    assert!(matches!(err, IsolationError::Name(_)), "{err}");
    let err = pools.acquire(&long).await.unwrap_err();
    assert!(matches!(err, IsolationError::Name(_)), "{err}");

    // Prefixes are validated too.
    for bad_prefix in ["../", "a/b", "Tenant", "x.", "1abc"] {
        assert!(
            matches!(
                SqliteLocator::new(&dir.0, bad_prefix),
                Err(IsolationError::Name(_))
            ),
            "{bad_prefix:?}"
        );
    }
    assert_eq!(files_in(&dir.0), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_use_opens_one_pool_however_many_callers() {
    let dir = TempDir::new();
    let pools = pools(&dir, settings());
    let acme = id("acme");
    create_with_notes(&pools, &acme).await;
    pools.evict(&acme).await;
    let opened_before = pools.metrics().pools_opened;

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (pools, acme) = (pools.clone(), acme.clone());
            tokio::spawn(async move { count_notes(&pools, &acme).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 0);
    }
    assert_eq!(pools.metrics().pools_opened, opened_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_budget_bounds_connections_across_200_tenants() {
    let dir = TempDir::new();
    let pools = pools(
        &dir,
        TenantPoolSettings {
            max_cached_pools: 50,
            ..settings()
        },
    );
    let tenants: Vec<TenantIdentifier> = (0..200).map(|i| id(&format!("t-{i}"))).collect();
    for tenant in &tenants {
        create_with_notes(&pools, tenant).await;
    }

    let tasks: Vec<_> = tenants
        .iter()
        .cycle()
        .take(400)
        .cloned()
        .map(|tenant| {
            let pools = pools.clone();
            tokio::spawn(async move {
                let mut tx = pools.begin_immediate(&tenant).await?;
                sqlx::query("INSERT INTO notes (body) VALUES ('x')")
                    .execute(&mut *tx)
                    .await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
                tx.commit().await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let metrics = pools.metrics();
    assert!(metrics.peak_checked_out <= 10, "{metrics:?}");
    assert!(
        metrics.peak_checked_out >= 2,
        "ran concurrently: {metrics:?}"
    );
    assert_eq!(metrics.checked_out, 0);
    for tenant in tenants.iter().take(5) {
        assert_eq!(count_notes(&pools, tenant).await, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_over_the_budget_get_a_clear_error() {
    let dir = TempDir::new();
    let pools = pools(
        &dir,
        TenantPoolSettings {
            connection_budget: 2,
            max_connections_per_tenant: 1,
            acquire_timeout: Duration::from_millis(200),
            ..TenantPoolSettings::default()
        },
    );
    let tenants: Vec<_> = ["aaa", "bbb", "ccc"].map(id).into();
    for tenant in &tenants {
        create_with_notes(&pools, tenant).await;
    }
    let held_a = pools.acquire(&tenants[0]).await.unwrap();
    let held_b = pools.acquire(&tenants[1]).await.unwrap();

    let err = pools.acquire(&tenants[2]).await.unwrap_err();
    match err {
        IsolationError::BudgetExhausted { waited } => {
            assert!(waited >= Duration::from_millis(150), "{waited:?}")
        }
        other => panic!("expected BudgetExhausted, got {other}"),
    }
    // The tenant's own pool is full: a different, equally clear error.
    let err = pools.acquire(&tenants[0]).await.unwrap_err();
    assert!(matches!(err, IsolationError::TenantBusy { .. }), "{err}");

    // Many callers at once: none panics, each gets a busy error (the first waits for the
    // budget, the others queue behind it for the tenant's single connection).
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let (pools, tenant) = (pools.clone(), tenants[2].clone());
            tokio::spawn(async move { pools.acquire(&tenant).await.map(drop) })
        })
        .collect();
    let mut budget_errors = 0;
    for waiter in waiters {
        let err = waiter.await.unwrap().unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        budget_errors += usize::from(matches!(err, IsolationError::BudgetExhausted { .. }));
    }
    assert!(budget_errors >= 1);

    drop(held_a);
    assert_eq!(count_notes(&pools, &tenants[2]).await, 0);
    drop(held_b);
    assert_eq!(pools.metrics().checked_out, 0);
    assert!(pools.metrics().peak_checked_out <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_lets_in_flight_work_finish() {
    let dir = TempDir::new();
    let pools = pools(
        &dir,
        TenantPoolSettings {
            max_cached_pools: 2,
            ..settings()
        },
    );
    let tenants: Vec<_> = ["long", "bbb", "ccc", "ddd", "eee"].map(id).into();
    for tenant in &tenants {
        create_with_notes(&pools, tenant).await;
    }
    let long = &tenants[0];

    let mut tx = pools.begin_immediate(long).await.unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ('survives eviction')")
        .execute(&mut *tx)
        .await
        .unwrap();

    for tenant in &tenants[1..] {
        assert_eq!(count_notes(&pools, tenant).await, 0);
        pools.run_pending_evictions().await;
    }
    assert!(pools.metrics().cached_pools <= 2, "{:?}", pools.metrics());

    sqlx::query("INSERT INTO notes (body) VALUES ('after eviction')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let opened = pools.metrics().pools_opened;
    assert_eq!(count_notes(&pools, long).await, 2);
    assert_eq!(
        pools.metrics().pools_opened,
        opened + 1,
        "the long tenant's pool had been evicted"
    );

    // Every evicted pool gets closed once its work is done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        pools.run_pending_evictions().await;
        let metrics = pools.metrics();
        if metrics.pools_closed == metrics.pools_opened - metrics.cached_pools {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_or_abandoned_transactions_leave_nothing_open() {
    let dir = TempDir::new();
    // One connection per tenant: a connection leaked inside a transaction would be the next
    // borrower's.
    let pools = pools(
        &dir,
        TenantPoolSettings {
            max_connections_per_tenant: 1,
            acquire_timeout: Duration::from_secs(5),
            ..settings()
        },
    );
    let acme = id("acme");
    create_with_notes(&pools, &acme).await;

    let mut cancelled = 0;
    for i in 0..300u64 {
        // Poll `begin` once (checkout done, BEGIN sent to the connection), give the driver a
        // varying head start, poll once more, then drop it wherever it is.
        {
            let mut begin = std::pin::pin!(pools.begin_immediate(&acme));
            let mut poll_once = async || {
                std::future::poll_fn(|cx| Poll::Ready(begin.as_mut().poll(cx).is_ready())).await
            };
            let mut ready = poll_once().await;
            if !ready {
                std::thread::sleep(Duration::from_micros(i % 50 * 10));
                ready = poll_once().await;
            }
            cancelled += usize::from(!ready);
        }
        let budget = Duration::from_micros(i % 100 * 100);
        let cancelled_write = tokio::time::timeout(budget, async {
            let mut tx = pools.begin_immediate(&acme).await?;
            sqlx::query("INSERT INTO notes (body) VALUES ('never committed')")
                .execute(&mut *tx)
                .await?;
            Ok::<_, IsolationError>(tx)
        })
        .await;
        drop(cancelled_write);

        let mut tx = pools.begin_immediate(&acme).await.unwrap_or_else(|error| {
            panic!("iteration {i}: next borrower could not BEGIN IMMEDIATE: {error}")
        });
        sqlx::query("INSERT INTO notes (body) VALUES ('committed')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    assert!(cancelled > 0, "no begin was cancelled half-way");

    // A panic while the transaction is open rolls it back as well.
    let panicking = {
        let (pools, acme) = (pools.clone(), acme.clone());
        tokio::spawn(async move {
            let mut tx = pools.begin_immediate(&acme).await.unwrap();
            sqlx::query("INSERT INTO notes (body) VALUES ('never committed')")
                .execute(&mut *tx)
                .await
                .unwrap();
            panic!("handler bug");
        })
    };
    assert!(panicking.await.unwrap_err().is_panic());

    let mut conn = pools.acquire(&acme).await.unwrap();
    let (committed, uncommitted): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE body = 'committed'), \
         count(*) FILTER (WHERE body = 'never committed') FROM notes",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!((committed, uncommitted), (300, 0));
    drop(conn);
    assert_eq!(pools.metrics().checked_out, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drop_removes_the_files_and_is_idempotent() {
    let dir = TempDir::new();
    let pools = pools(&dir, settings());
    let (acme, beta) = (id("acme"), id("beta"));
    create_with_notes(&pools, &acme).await;
    create_with_notes(&pools, &beta).await;
    // Creating again keeps the data.
    let mut tx = pools.begin(&acme).await.unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ('kept')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    pools.create_tenant_database(&acme, None).await.unwrap();
    assert_eq!(count_notes(&pools, &acme).await, 1);
    assert!(
        files_in(&dir.0).contains(&"tenant_acme.db-wal".to_owned()),
        "{:?}",
        files_in(&dir.0)
    );

    pools.drop_tenant_database(&acme).await.unwrap();
    assert!(
        files_in(&dir.0)
            .iter()
            .all(|name| !name.starts_with("tenant_acme")),
        "{:?}",
        files_in(&dir.0)
    );
    assert!(files_in(&dir.0).contains(&"tenant_beta.db".to_owned()));
    pools.drop_tenant_database(&acme).await.unwrap();

    // Re-created, the tenant starts empty.
    pools.create_tenant_database(&acme, None).await.unwrap();
    let mut conn = pools.acquire(&acme).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(tables, 0);
    drop(conn);
    assert_eq!(count_notes(&pools, &beta).await, 0);
}

fn tenant(identifier: &str) -> Tenant {
    NewTenant::new(id(identifier), identifier)
        .with_status(TenantStatus::Active)
        .into_tenant()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_are_a_generic_isolation_handle_for_database_tenants() {
    let dir = TempDir::new();
    let pools = pools(&dir, settings());
    let acme = tenant("acme");
    create_with_notes(&pools, &acme.identifier).await;

    let handle = isolation_extension(pools.clone());
    assert_eq!(handle.mode_for(&acme), IsolationMode::Database);
    let mut tx = handle.begin(&acme).await.unwrap();
    assert_eq!(tx.mode(), IsolationMode::Database);
    assert_eq!(tx.tenant(), &acme.identifier);
    sqlx::query("INSERT INTO notes (body) VALUES ('through the trait')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count_notes(&pools, &acme.identifier).await, 1);

    // Statements prepared on the connection are re-prepared after a restart.
    let mut tx = handle.begin(&acme).await.unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ('lost in the restart')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.restart_with_fresh_statements().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(count, 1);
    tx.commit().await.unwrap();

    // A leaked savepoint makes commit fail and the transaction is abandoned.
    let mut tx = handle.begin(&acme).await.unwrap();
    let savepoint = sqlx::Connection::begin(&mut *tx).await.unwrap();
    std::mem::forget(savepoint);
    let err = tx.commit().await.unwrap_err();
    assert!(
        matches!(err, IsolationError::SavepointOpen { savepoints: 1 }),
        "{err}"
    );

    for mode in [
        IsolationMode::Schema,
        IsolationMode::Rls,
        IsolationMode::Hybrid,
    ] {
        let err = handle.begin_in_mode(&acme, mode).await.unwrap_err();
        assert!(
            matches!(err, IsolationError::UnsupportedMode(m) if m == mode),
            "{err}"
        );
    }
    assert_eq!(pools.metrics().checked_out, 0);
}

async fn count_in_handler(mut tx: SqliteTenantTx) -> String {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    count.to_string()
}

async fn call(app: &Router, tenant: Option<Tenant>) -> (StatusCode, Option<String>, String) {
    let mut request = Request::builder().uri("/notes");
    if let Some(tenant) = tenant {
        request = request.extension(Arc::new(tenant));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extractor_hands_handlers_the_tenants_database() {
    let dir = TempDir::new();
    let pools = pools(
        &dir,
        TenantPoolSettings {
            connection_budget: 1,
            acquire_timeout: Duration::from_millis(100),
            ..settings()
        },
    );
    let (acme, beta) = (tenant("acme"), tenant("beta"));
    for tenant in [&acme, &beta] {
        create_with_notes(&pools, &tenant.identifier).await;
    }
    let mut tx = pools.begin(&acme.identifier).await.unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ('a')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let app = Router::new()
        .route("/notes", get(count_in_handler))
        .layer(Extension(isolation_extension(pools.clone())));
    assert_eq!(
        call(&app, Some(acme.clone())).await,
        (StatusCode::OK, None, "1".to_owned())
    );
    assert_eq!(
        call(&app, Some(beta.clone())).await,
        (StatusCode::OK, None, "0".to_owned())
    );

    // Not provisioned (or purged): 503, and no file appears.
    let (status, retry_after, body) = call(&app, Some(tenant("ghost"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after, None);
    assert_eq!(body, r#"{"detail":"tenant database not available"}"#);
    assert!(!dir.0.join("tenant_ghost.db").exists());

    // The budget spent: 503 with Retry-After.
    let held = pools.acquire(&beta.identifier).await.unwrap();
    let (status, retry_after, body) = call(&app, Some(acme.clone())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(body, r#"{"detail":"database unavailable, retry later"}"#);
    drop(held);
    assert_eq!(call(&app, Some(acme.clone())).await.0, StatusCode::OK);

    // Programming errors: no tenant, no handle (or a handle of another database).
    let (status, _, body) = call(&app, None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, r#"{"detail":"tenancy layer not installed"}"#);
    let bare = Router::new().route("/notes", get(count_in_handler));
    let (status, _, body) = call(&bare, Some(acme)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, r#"{"detail":"tenant isolation not installed"}"#);
    assert_eq!(pools.metrics().checked_out, 0);
}
