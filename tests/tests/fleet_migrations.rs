//! Tenant migrations across the fleet (`tenancy-fleet`) on the real PostgreSQL and on SQLite
//! files: ledger per tenant, re-runs, failures, dry runs, concurrency, per-tenant locks, shared
//! RLS tables, and no session state left on the admin pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tenancy::sql::sqlite::SqliteLocator;
use tenancy::{NewTenant, Tenant, TenantIdentifier, TenantStatus};
use tenancy_fleet::postgres::{PgSchemaTarget, PgSharedMigrations};
use tenancy_fleet::sqlite::SqliteTarget;
use tenancy_fleet::{
    ApplyFailure, MigrateOptions, MigrationTarget, MigrationsError, ProgressEvent, TargetError,
    TenantMigrations, TenantOutcome, migrate_all,
};
use tenancy_tests::{TestDatabase, unique_name};

const NOTES: &str = "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)";
const TAGS: &str = "CREATE TABLE tags (note_id BIGINT REFERENCES notes (id), name TEXT)";

/// A temporary folder of migration files, removed on drop.
struct MigrationDir(PathBuf);

impl MigrationDir {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(unique_name("fleet_migrations"));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = Self(dir);
        dir.write(files);
        dir
    }

    fn write(&self, files: &[(&str, &str)]) {
        for (name, sql) in files {
            std::fs::write(self.0.join(name), sql).unwrap();
        }
    }

    async fn load(&self) -> TenantMigrations {
        TenantMigrations::from_dir(&self.0).await.unwrap()
    }
}

impl Drop for MigrationDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn two_files() -> MigrationDir {
    MigrationDir::new(&[("1_notes.sql", NOTES), ("2_tags.sql", TAGS)])
}

fn tenant(identifier: &str) -> Tenant {
    NewTenant::new(TenantIdentifier::parse(identifier).unwrap(), identifier)
        .with_status(TenantStatus::Active)
        .into_tenant()
}

fn tenants(prefix: &str, count: usize) -> Vec<Tenant> {
    (0..count)
        .map(|i| tenant(&format!("{prefix}{i:02}")))
        .collect()
}

async fn pool(db: &TestDatabase, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .connect(db.url())
        .await
        .unwrap()
}

fn schema_of(tenant: &Tenant) -> String {
    format!("tenant_{}", tenant.identifier.stem())
}

async fn tables_in(pool: &PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = $1 ORDER BY table_name",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn ledger_of(pool: &PgPool, schema: &str) -> Vec<(i64, String)> {
    let sql = format!(
        "SELECT version, installed_on::text FROM \"{schema}\"._sqlx_migrations ORDER BY version"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Checks out every connection the pool has open, all at once, and asserts none carries a
/// changed `search_path`.
async fn assert_search_paths_reset(pool: &PgPool) {
    let open = pool.size().max(1) as usize;
    let mut held = Vec::new();
    for _ in 0..open {
        held.push(pool.acquire().await.unwrap());
    }
    for conn in &mut held {
        let search_path: String = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(search_path, "\"$user\", public");
    }
}

/// Advisory locks held in the pool's database.
async fn advisory_locks(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// No session state left: `search_path` reset on every pooled connection, no advisory lock.
async fn assert_pool_sessions_clean(pool: &PgPool) {
    assert_search_paths_reset(pool).await;
    assert_eq!(advisory_locks(pool).await, 0, "advisory locks left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_schema_tenants_get_their_tables_and_ledger_and_a_rerun_is_a_no_op() {
    let db = TestDatabase::postgres("fleet_twenty").await;
    let pool = pool(&db, 4).await;
    let dir = two_files();
    let target = PgSchemaTarget::new(pool.clone(), dir.load().await);

    let mut fleet = tenants("acme-", 20);
    fleet[3].status = TenantStatus::Suspended;
    let mut gone = tenant("gone-corp");
    gone.status = TenantStatus::Deleted;
    fleet.push(gone.clone());

    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let options = MigrateOptions::new()
        .concurrency(4)
        .on_progress(move |event| {
            seen.lock().unwrap().push(match event {
                ProgressEvent::Started { total } => format!("started {total}"),
                ProgressEvent::TenantDone { done, total, .. } => format!("done {done}/{total}"),
                ProgressEvent::Finished { report } => format!("finished {}", report.applied()),
            });
        });
    let report = migrate_all(&target, fleet.clone(), &options).await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.applied(), 20, "the suspended tenant is included");
    assert_eq!(report.skipped_deleted, 1);
    assert!(report.get("gone-corp").is_none());
    for line in &report.tenants {
        assert_eq!(line.outcome, TenantOutcome::Applied(vec![1, 2]));
    }
    let events = events.lock().unwrap().clone();
    assert_eq!(events.first().unwrap(), "started 20");
    assert_eq!(events[20], "done 20/20");
    assert_eq!(events.last().unwrap(), "finished 20");

    let mut ledgers = Vec::new();
    for tenant in &fleet[..20] {
        let schema = schema_of(tenant);
        assert_eq!(
            tables_in(&pool, &schema).await,
            ["_sqlx_migrations", "notes", "tags"]
        );
        let ledger = ledger_of(&pool, &schema).await;
        assert_eq!(ledger.iter().map(|row| row.0).collect::<Vec<_>>(), [1, 2]);
        ledgers.push(ledger);
    }
    assert!(
        tables_in(&pool, "public").await.is_empty(),
        "nothing in public"
    );
    assert!(tables_in(&pool, &schema_of(&gone)).await.is_empty());
    assert_pool_sessions_clean(&pool).await;

    let rerun = migrate_all(&target, fleet.clone(), &options).await;
    assert!(rerun.is_success());
    assert_eq!(rerun.already_current(), 20, "{rerun:?}");
    for (tenant, before) in fleet[..20].iter().zip(&ledgers) {
        assert_eq!(&ledger_of(&pool, &schema_of(tenant)).await, before);
    }
    assert_pool_sessions_clean(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_tenant_does_not_stop_the_others_and_a_fixed_rerun_applies_only_what_is_pending()
{
    let db = TestDatabase::postgres("fleet_failure").await;
    let pool = pool(&db, 4).await;
    let dir = two_files();
    let fleet = tenants("shop-", 6);
    let first = migrate_all(
        &PgSchemaTarget::new(pool.clone(), dir.load().await),
        fleet.clone(),
        &MigrateOptions::new(),
    )
    .await;
    assert_eq!(first.applied(), 6);

    // shop-02 already has a table the next migration creates.
    let broken = schema_of(&fleet[2]);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE \"{broken}\".audit (legacy TEXT)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    dir.write(&[
        ("3_labels.sql", "ALTER TABLE notes ADD COLUMN label TEXT"),
        (
            "4_audit.sql",
            "CREATE TABLE audit (id BIGINT, at TIMESTAMPTZ)",
        ),
    ]);
    let target = PgSchemaTarget::new(pool.clone(), dir.load().await);
    let report = migrate_all(&target, fleet.clone(), &MigrateOptions::new()).await;
    assert!(!report.is_success());
    assert_eq!(report.failed(), 1);
    assert_eq!(report.applied(), 5);
    let failure = report.failures().next().unwrap();
    assert_eq!(failure.identifier.as_str(), "shop-02");
    let TenantOutcome::Failed { error, applied } = &failure.outcome else {
        unreachable!()
    };
    assert_eq!(applied, &[3], "3 went in before 4 failed");
    assert!(error.contains("migration 4"), "{error}");
    assert!(error.contains("already exists"), "{error}");
    for line in report
        .tenants
        .iter()
        .filter(|l| l.identifier.as_str() != "shop-02")
    {
        assert_eq!(line.outcome, TenantOutcome::Applied(vec![3, 4]));
    }
    let ledger = ledger_of(&pool, &broken).await;
    assert_eq!(ledger.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_pool_sessions_clean(&pool).await;

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE \"{broken}\".audit"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let fixed = migrate_all(&target, fleet.clone(), &MigrateOptions::new()).await;
    assert!(fixed.is_success(), "{fixed:?}");
    assert_eq!(
        fixed.get("shop-02").unwrap().outcome,
        TenantOutcome::Applied(vec![4])
    );
    assert_eq!(fixed.already_current(), 5);
    assert!(
        tables_in(&pool, &broken)
            .await
            .contains(&"audit".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_lists_what_is_pending_and_changes_nothing() {
    let db = TestDatabase::postgres("fleet_dry").await;
    let pool = pool(&db, 4).await;
    let dir = MigrationDir::new(&[("1_notes.sql", NOTES)]);
    let fleet = tenants("dry-", 4);
    let migrated = &fleet[..2];
    let report = migrate_all(
        &PgSchemaTarget::new(pool.clone(), dir.load().await),
        migrated.to_vec(),
        &MigrateOptions::new(),
    )
    .await;
    assert_eq!(report.applied(), 2);

    dir.write(&[("2_tags.sql", TAGS)]);
    let target = PgSchemaTarget::new(pool.clone(), dir.load().await);
    let schemas_before: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    let dry = migrate_all(&target, fleet.clone(), &MigrateOptions::new().dry_run(true)).await;
    assert!(dry.dry_run && dry.is_success());
    assert_eq!(dry.pending(), 4);
    for line in &dry.tenants[..2] {
        assert_eq!(line.outcome, TenantOutcome::Pending(vec![2]));
    }
    for line in &dry.tenants[2..] {
        assert_eq!(line.outcome, TenantOutcome::Pending(vec![1, 2]));
    }
    let schemas_after: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(schemas_before, schemas_after, "no schema created");
    for tenant in migrated {
        assert_eq!(ledger_of(&pool, &schema_of(tenant)).await.len(), 1);
        assert!(
            !tables_in(&pool, &schema_of(tenant))
                .await
                .contains(&"tags".to_owned())
        );
    }

    let applied = migrate_all(&target, fleet.clone(), &MigrateOptions::new()).await;
    assert_eq!(applied.applied(), 4);
    let dry = migrate_all(&target, fleet, &MigrateOptions::new().dry_run(true)).await;
    assert_eq!(dry.already_current(), 4);
    assert_pool_sessions_clean(&pool).await;
}

/// Counts tenants being applied at once around a real target.
struct Counting<T> {
    inner: T,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

#[tenancy_fleet::async_trait]
impl<T: MigrationTarget> MigrationTarget for Counting<T> {
    async fn pending(&self, tenant: &Tenant) -> Result<Vec<i64>, TargetError> {
        self.inner.pending(tenant).await
    }

    async fn apply(&self, tenant: &Tenant) -> Result<Vec<i64>, ApplyFailure> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let result = self.inner.apply(tenant).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrency_bound_is_respected() {
    let db = TestDatabase::postgres("fleet_bound").await;
    let pool = pool(&db, 8).await;
    let dir = two_files();
    let target = Counting {
        inner: PgSchemaTarget::new(pool.clone(), dir.load().await),
        in_flight: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    };
    let report = migrate_all(
        &target,
        tenants("bound-", 15),
        &MigrateOptions::new().concurrency(3),
    )
    .await;
    assert_eq!(report.applied(), 15, "{report:?}");
    assert_eq!(target.peak.load(Ordering::SeqCst), 3);
    assert!(pool.size() <= 3, "at most 3 connections were needed");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_runs_apply_each_migration_once() {
    let db = TestDatabase::postgres("fleet_twice").await;
    let pool = pool(&db, 10).await;
    let dir = two_files();
    let target = PgSchemaTarget::new(pool.clone(), dir.load().await);
    let fleet = tenants("race-", 12);
    let options = MigrateOptions::new().concurrency(5);
    let (left, right) = tokio::join!(
        migrate_all(&target, fleet.clone(), &options),
        migrate_all(&target, fleet.clone(), &options),
    );
    assert!(left.is_success(), "{left:?}");
    assert!(right.is_success(), "{right:?}");
    for (l, r) in left.tenants.iter().zip(&right.tenants) {
        let mut applied: Vec<i64> = [&l.outcome, &r.outcome]
            .into_iter()
            .flat_map(|outcome| match outcome {
                TenantOutcome::Applied(versions) => versions.clone(),
                _ => Vec::new(),
            })
            .collect();
        applied.sort_unstable();
        assert_eq!(applied, [1, 2], "{} {l:?} {r:?}", l.identifier);
    }
    for tenant in &fleet {
        assert_eq!(ledger_of(&pool, &schema_of(tenant)).await.len(), 2);
    }
    assert_pool_sessions_clean(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rls_shared_tables_are_migrated_once() {
    let db = TestDatabase::postgres("fleet_shared").await;
    let pool = pool(&db, 4).await;
    let dir = MigrationDir::new(&[
        (
            "1_orders.sql",
            "CREATE TABLE orders (tenant_id TEXT NOT NULL, id BIGINT)",
        ),
        ("2_rls.sql", "ALTER TABLE orders ENABLE ROW LEVEL SECURITY"),
    ]);
    let shared = PgSharedMigrations::new(pool.clone(), dir.load().await);
    assert_eq!(shared.pending().await.unwrap(), [1, 2]);
    let (a, b) = tokio::join!(shared.apply(), shared.apply());
    let mut applied = [a.unwrap(), b.unwrap()].concat();
    applied.sort_unstable();
    assert_eq!(applied, [1, 2], "each migration once");
    assert!(shared.pending().await.unwrap().is_empty());
    assert!(shared.apply().await.unwrap().is_empty());
    assert_eq!(
        tables_in(&pool, "public").await,
        ["_sqlx_migrations", "orders"]
    );
    assert_pool_sessions_clean(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_migration_leaves_no_session_state_on_the_pool() {
    let db = TestDatabase::postgres("fleet_cancel").await;
    let pool = pool(&db, 2).await;
    let dir = MigrationDir::new(&[(
        "1_slow.sql",
        "SELECT pg_sleep(3); CREATE TABLE slow (x INT)",
    )]);
    let target = PgSchemaTarget::new(pool.clone(), dir.load().await);
    let slow = tenant("slow-corp");
    let cancelled = tokio::time::timeout(Duration::from_millis(500), target.apply(&slow)).await;
    assert!(cancelled.is_err(), "the migration was cut off");
    // The connection was closed, not returned with the tenant's search_path.
    assert_search_paths_reset(&pool).await;
    // The server ends the session (and frees its lock) once the running statement finishes;
    // the next run waits for that lock, then applies the migration the cut-off one rolled back.
    assert_eq!(target.apply(&slow).await.unwrap(), [1]);
    assert_pool_sessions_clean(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_tenants_keep_the_ledger_in_their_own_file() {
    let dir = two_files();
    let data = std::env::temp_dir().join(unique_name("fleet_sqlite"));
    let target = SqliteTarget::new(
        SqliteLocator::new(&data, "tenant_").unwrap(),
        dir.load().await,
    );
    let fleet = vec![tenant("alpha-one"), tenant("beta-two")];
    let report = migrate_all(&target, fleet.clone(), &MigrateOptions::new()).await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.applied(), 2);
    for tenant in &fleet {
        let file = data.join(format!("tenant_{}.db", tenant.identifier.stem()));
        let mut conn = sqlite_connect(&file).await;
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(versions, [1, 2]);
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        sqlx::query("INSERT INTO tags (note_id, name) VALUES (NULL, 'x')")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let rerun = migrate_all(&target, fleet, &MigrateOptions::new()).await;
    assert_eq!(rerun.already_current(), 2);

    let newcomer = tenant("gamma-three");
    let dry = migrate_all(
        &target,
        vec![newcomer.clone()],
        &MigrateOptions::new().dry_run(true),
    )
    .await;
    assert_eq!(dry.tenants[0].outcome, TenantOutcome::Pending(vec![1, 2]));
    assert!(
        !data.join("tenant_gamma_three.db").exists(),
        "dry run creates no file"
    );
    std::fs::remove_dir_all(&data).unwrap();
}

async fn sqlite_connect(file: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(file);
    sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_bad_migration_folder_is_refused_with_the_file_named() {
    let dir = MigrationDir::new(&[("1_notes.sql", NOTES), ("notes-again.sql", NOTES)]);
    let error = TenantMigrations::from_dir(&dir.0).await.unwrap_err();
    assert!(matches!(error, MigrationsError::BadFileName { .. }));
    assert!(error.to_string().contains("notes-again.sql"), "{error}");

    let dir = MigrationDir::new(&[("1_notes.sql", NOTES), ("01_again.sql", NOTES)]);
    let error = TenantMigrations::from_dir(&dir.0).await.unwrap_err();
    assert!(
        matches!(error, MigrationsError::DuplicateVersion { version: 1, .. }),
        "{error}"
    );

    let dir = MigrationDir::new(&[("README.md", "docs")]);
    let error = TenantMigrations::from_dir(&dir.0).await.unwrap_err();
    assert!(matches!(error, MigrationsError::Empty(_)), "{error}");

    let missing = std::env::temp_dir().join(unique_name("fleet_missing"));
    assert!(matches!(
        TenantMigrations::from_dir(&missing).await.unwrap_err(),
        MigrationsError::Read { .. }
    ));
}
