//! End-to-end tests of the `tenancy` binary: run with a cleared environment and explicit
//! `TENANCY_*` variables, against SQLite files in a temporary directory and throwaway
//! PostgreSQL databases (on a second server too, for placed tenants; see `scripts/test`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tenancy_tests::{
    Server, TenantDatabases, TestDatabase, postgres_second_server_url, postgres_server_url,
    unique_name,
};

/// A temporary directory removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(unique_name("tenancy_cli"));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// Writes `files` (name, SQL) into the folder `name` and returns it.
    fn migrations(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, sql) in files {
            std::fs::write(dir.join(file), sql).unwrap();
        }
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a run of the binary produced.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{self:?}");
        self
    }

    #[track_caller]
    fn fails(self, code: i32, needle: &str) -> Self {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert!(self.stderr.contains(needle), "{needle:?} not in {self:?}");
        assert!(!self.stderr.contains("panicked"), "{self:?}");
        self
    }
}

/// Runs `tenancy args…` with only `env` in its environment.
fn tenancy(env: &[(&str, String)], args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_tenancy"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .expect("run the tenancy binary");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

const NOTES: (&str, &str) = ("1_notes.sql", "CREATE TABLE notes (body TEXT NOT NULL)");
const TAGS: (&str, &str) = ("2_tags.sql", "CREATE TABLE tags (name TEXT NOT NULL)");

#[test]
fn sqlite_tenant_lifecycle() {
    let dir = TempDir::new();
    let migrations = dir.migrations("tenant", &[NOTES]);
    let env = [
        ("TENANCY_SQLITE_DATA_DIR", path(&dir.0.join("data"))),
        ("TENANCY_MIGRATIONS_DIR", path(&migrations)),
    ];
    let tenant_file = dir.0.join("data/tenants/tenant_acme.db");

    let created = tenancy(
        &env,
        &[
            "tenants", "create", "acme", "--name", "Acme", "--tier", "premium",
        ],
    )
    .ok();
    assert!(
        created.stdout.contains("created tenant 'acme'"),
        "{created:?}"
    );
    assert!(
        tenant_file.exists(),
        "provisioning creates the tenant's file"
    );
    tenancy(&env, &["tenants", "create", "globex", "--name", "Globex"]).ok();

    tenancy(&env, &["tenants", "create", "acme", "--name", "Again"]).fails(1, "already exists");
    tenancy(&env, &["tenants", "create", "Bad_Name", "--name", "x"]).fails(1, "lowercase");

    let listed = tenancy(&env, &["tenants", "list", "--json"]).ok().json();
    let identifiers: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["identifier"].as_str().unwrap())
        .collect();
    assert_eq!(identifiers, ["acme", "globex"]);
    assert_eq!(listed[0]["status"], "active");
    assert_eq!(listed[0]["tier"], "premium");
    let table = tenancy(&env, &["tenants", "list"]).ok();
    assert!(table.stdout.contains("globex"), "{table:?}");

    let shown = tenancy(&env, &["tenants", "show", "acme"]).ok();
    assert!(shown.stdout.contains("name:       Acme"), "{shown:?}");
    assert_eq!(
        tenancy(&env, &["tenants", "show", "acme", "--json"])
            .ok()
            .json()["name"],
        "Acme"
    );
    tenancy(&env, &["tenants", "show", "nobody"]).fails(1, "not found");

    tenancy(&env, &["tenants", "suspend", "acme"]).ok();
    let suspended = tenancy(
        &env,
        &["tenants", "list", "--json", "--status", "suspended"],
    )
    .ok()
    .json();
    assert_eq!(suspended.as_array().unwrap().len(), 1);
    assert_eq!(suspended[0]["identifier"], "acme");
    let activated = tenancy(&env, &["tenants", "activate", "acme"]).ok();
    assert!(activated.stdout.contains("is active"), "{activated:?}");

    let deleted = tenancy(&env, &["tenants", "delete", "acme"]).ok();
    assert!(deleted.stdout.contains("is deleted"), "{deleted:?}");
    assert!(tenant_file.exists(), "a soft delete keeps the data");
    tenancy(&env, &["tenants", "delete", "acme", "--purge"]).ok();
    assert!(!tenant_file.exists(), "purge removes the tenant's file");
    tenancy(&env, &["tenants", "show", "acme"]).fails(1, "not found");
    assert_eq!(
        tenancy(&env, &["tenants", "list", "--json"]).ok().json()[0]["identifier"],
        "globex"
    );
}

#[test]
fn sqlite_migrate_and_missing_migrations() {
    let dir = TempDir::new();
    let data = [("TENANCY_SQLITE_DATA_DIR", path(&dir.0.join("data")))];
    // Without TENANCY_MIGRATIONS_DIR a tenant cannot be provisioned, and says why.
    tenancy(&data, &["tenants", "create", "acme", "--name", "Acme"])
        .fails(1, "TENANCY_MIGRATIONS_DIR");
    let listed = tenancy(&data, &["tenants", "list", "--json"]).ok().json();
    assert_eq!(listed[0]["status"], "provisioning_failed");

    let source = dir.migrations("v2", &[NOTES, TAGS]);
    let run = tenancy(&data, &["migrate", "--source", &path(&source)]).ok();
    assert!(run.stdout.contains("acme: applied 1, 2"), "{run:?}");
    assert!(
        run.stderr.contains("[1/1] acme"),
        "one log line per tenant: {run:?}"
    );
    let again = tenancy(&data, &["migrate", "--source", &path(&source)]).ok();
    assert!(again.stdout.contains("acme: already current"), "{again:?}");

    tenancy(
        &data,
        &["migrate", "--source", &path(&dir.0.join("nowhere"))],
    )
    .fails(1, "--source");
}

#[test]
fn bad_arguments_get_clap_errors() {
    let none: [(&str, String); 0] = [];
    let missing_name = tenancy(&none, &["tenants", "create", "acme"]);
    assert_eq!(missing_name.code, Some(2), "{missing_name:?}");
    assert!(missing_name.stderr.contains("--name"), "{missing_name:?}");
    let bad_status = tenancy(&none, &["tenants", "list", "--status", "sleeping"]);
    assert_eq!(bad_status.code, Some(2), "{bad_status:?}");
    assert!(bad_status.stderr.contains("sleeping"), "{bad_status:?}");
    let zero = tenancy(&none, &["migrate", "--source", "x", "--concurrency", "0"]);
    assert_eq!(zero.code, Some(2), "{zero:?}");
    assert_eq!(tenancy(&none, &["frobnicate"]).code, Some(2));

    for command in [
        &["--help"][..],
        &["tenants", "--help"],
        &["tenants", "create", "--help"],
        &["migrate", "--help"],
        &["rls", "generate", "--help"],
        &["rls", "audit", "--help"],
        &["config", "check", "--help"],
    ] {
        let help = tenancy(&none, command).ok();
        assert!(help.stdout.contains("Usage: tenancy"), "{help:?}");
    }
}

#[test]
fn rls_generate_prints_the_policy() {
    let none: [(&str, String); 0] = [];
    let sql = tenancy(&none, &["rls", "generate", "--table", "public.orders"]).ok();
    assert!(
        sql.stdout
            .contains("ALTER TABLE \"public\".\"orders\" FORCE ROW LEVEL SECURITY;"),
        "{sql:?}"
    );
    assert!(
        sql.stdout.contains(
            "\"tenant_id\" = NULLIF(pg_catalog.current_setting('app.tenant_id', true), '')"
        ),
        "{sql:?}"
    );
    let custom = tenancy(
        &[("TENANCY_RLS_SETTING", "acme.org".to_owned())],
        &["rls", "generate", "--table", "orders", "--column", "org_id"],
    )
    .ok();
    assert!(
        custom
            .stdout
            .contains("\"org_id\" = NULLIF(pg_catalog.current_setting('acme.org'"),
        "{custom:?}"
    );
    tenancy(
        &none,
        &["rls", "generate", "--table", "orders; DROP TABLE x"],
    )
    .fails(1, "orders");
}

#[test]
fn config_check_masks_secrets_and_names_bad_variables() {
    let good = tenancy(
        &[(
            "TENANCY_DATABASE_URL",
            "postgres://app:s3cret@db.internal/app".to_owned(),
        )],
        &["config", "check"],
    )
    .ok();
    assert!(good.stdout.contains("db.internal"), "{good:?}");
    assert!(!good.stdout.contains("s3cret"), "{good:?}");

    let bad = tenancy(
        &[
            ("TENANCY_POOL_MAX_CONNECTIONS", "lots".to_owned()),
            ("TENANCY_ISOLATION_STRATEGY", "tables".to_owned()),
        ],
        &["config", "check"],
    )
    .fails(2, "TENANCY_POOL_MAX_CONNECTIONS");
    assert!(bad.stderr.contains("TENANCY_ISOLATION_STRATEGY"), "{bad:?}");
    // Every other command refuses an invalid configuration the same way.
    tenancy(
        &[("TENANCY_ISOLATION_STRATEGY", "tables".to_owned())],
        &["tenants", "list"],
    )
    .fails(2, "TENANCY_ISOLATION_STRATEGY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_tenants_and_fleet_migrations() {
    let db = TestDatabase::postgres("cli_schema").await;
    let dir = TempDir::new();
    let initial = dir.migrations("initial", &[NOTES]);
    let env = [
        ("TENANCY_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "schema".to_owned()),
        ("TENANCY_MIGRATIONS_DIR", path(&initial)),
    ];
    tenancy(&env, &["tenants", "create", "acme", "--name", "Acme"]).ok();
    tenancy(&env, &["tenants", "create", "globex", "--name", "Globex"]).ok();

    let v2 = dir.migrations("v2", &[NOTES, TAGS]);
    let run = tenancy(
        &env,
        &["migrate", "--source", &path(&v2), "--concurrency", "2"],
    )
    .ok();
    assert!(run.stdout.contains("acme: applied 2"), "{run:?}");
    assert!(run.stdout.contains("globex: applied 2"), "{run:?}");
    assert!(run.stdout.contains("2 tenants in"), "{run:?}");
    let again = tenancy(&env, &["migrate", "--source", &path(&v2)]).ok();
    assert!(again.stdout.contains("acme: already current"), "{again:?}");
    assert!(
        again.stdout.contains("globex: already current"),
        "{again:?}"
    );

    // globex already has a table the next migration creates: it fails there only.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db.url())
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE tenant_globex.labels (x int)")
        .execute(&mut conn)
        .await
        .unwrap();
    let v3 = dir.migrations(
        "v3",
        &[NOTES, TAGS, ("3_labels.sql", "CREATE TABLE labels (x int)")],
    );
    let failed =
        tenancy(&env, &["migrate", "--source", &path(&v3)]).fails(1, "1 of 2 tenants failed");
    assert!(failed.stdout.contains("acme: applied 3"), "{failed:?}");
    assert!(failed.stdout.contains("globex: failed:"), "{failed:?}");
    assert!(
        failed.stdout.contains("labels"),
        "the report names the cause: {failed:?}"
    );

    // A dry run lists what is pending and changes nothing.
    let v4 = dir.migrations(
        "v4",
        &[
            NOTES,
            TAGS,
            ("3_labels.sql", "CREATE TABLE labels (x int)"),
            ("4_more.sql", "CREATE TABLE more (x int)"),
        ],
    );
    for _ in 0..2 {
        let dry = tenancy(&env, &["migrate", "--source", &path(&v4), "--dry-run"]).ok();
        assert!(dry.stdout.contains("acme: pending 4"), "{dry:?}");
        assert!(dry.stdout.contains("globex: pending 3, 4"), "{dry:?}");
        assert!(dry.stdout.contains("2 pending"), "{dry:?}");
    }
    let more: Option<String> = sqlx::query_scalar("SELECT to_regclass('tenant_acme.more')::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(more, None, "the dry run created nothing");

    tenancy(&env, &["tenants", "delete", "acme", "--purge"]).ok();
    let schema: Option<String> = sqlx::query_scalar("SELECT to_regnamespace('tenant_acme')::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(schema, None, "purge drops the schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_tenants_are_created_migrated_and_purged_on_their_server() {
    let registry = TestDatabase::postgres("cli_placed").await;
    let databases = TenantDatabases::new(Server::Postgres, "cli_tpl");
    let dir = TempDir::new();
    let initial = dir.migrations("initial", &[NOTES]);
    let (main, second) = (postgres_server_url(), postgres_second_server_url());
    let servers = ("TENANCY_DATABASE_SERVERS", format!("second={second}"));
    let env = [
        ("TENANCY_DATABASE_URL", registry.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "database".to_owned()),
        ("TENANCY_DATABASE_PREFIX", databases.prefix().to_owned()),
        ("TENANCY_MIGRATIONS_DIR", path(&initial)),
        servers.clone(),
    ];
    tenancy(&env, &["tenants", "create", "acme", "--name", "Acme"]).ok();
    let beta = tenancy(
        &env,
        &[
            "tenants",
            "create",
            "beta",
            "--name",
            "Beta",
            "--placement",
            "second",
        ],
    )
    .ok();
    assert!(beta.stdout.contains("placement:  second"), "{beta:?}");
    let lost = [
        "tenants",
        "create",
        "lost",
        "--name",
        "Lost",
        "--placement",
        "mars",
    ];
    // Refused before the registry row is written: nothing to resume or clean up.
    tenancy(&env, &lost).fails(1, "placement 'mars' names no database server");
    let listed = tenancy(&env, &["tenants", "list"]).ok();
    assert!(!listed.stdout.contains("lost"), "{listed:?}");
    let name = |identifier: &str| format!("{}{identifier}", databases.prefix());
    assert_eq!(databases.on(&main).await, [name("acme")]);
    assert_eq!(databases.on(&second).await, [name("beta")]);

    let v2 = dir.migrations("v2", &[NOTES, TAGS]);
    let run = tenancy(&env, &["migrate", "--source", &path(&v2)]).ok();
    assert!(run.stdout.contains("acme: applied 2"), "{run:?}");
    assert!(run.stdout.contains("beta: applied 2"), "{run:?}");
    assert_eq!(databases.on(&main).await, [name("acme")]);

    tenancy(&env, &["tenants", "delete", "beta", "--purge"]).ok();
    assert_eq!(databases.on(&second).await, Vec::<String>::new());
    assert_eq!(databases.on(&main).await, [name("acme")]);

    // Schema tenants have no database to place: the servers are refused, not ignored.
    let schema = [("TENANCY_DATABASE_URL", registry.url().to_owned()), servers];
    tenancy(&schema, &["tenants", "list"]).fails(1, "TENANCY_DATABASE_SERVERS is set, but");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_audit_refuses_a_superuser_runtime_role() {
    let db = TestDatabase::postgres("cli_rls_su").await;
    let env = [
        ("TENANCY_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "rls".to_owned()),
    ];
    let audit = tenancy(&env, &["rls", "audit"]).fails(1, "superuser");
    assert!(
        audit.stderr.contains("no table has a column 'tenant_id'"),
        "{audit:?}"
    );
    let sqlite = tenancy(&[], &["rls", "audit"]);
    assert_eq!(sqlite.code, Some(1), "{sqlite:?}");
    assert!(sqlite.stderr.contains("TENANCY_DATABASE_URL"), "{sqlite:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rls_migrates_shared_tables_once_and_passes_the_audit() {
    let role = tenancy_tests::TestRole::create("cli_rt").await;
    let db = TestDatabase::postgres("cli_rls").await;
    let dir = TempDir::new();
    let env = [
        ("TENANCY_DATABASE_URL", role.url(db.name())),
        ("TENANCY_ADMIN_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "rls".to_owned()),
    ];
    // Row-level security tenants need no tenant migrations to be created.
    tenancy(&env, &["tenants", "create", "acme", "--name", "Acme"]).ok();
    tenancy(&env, &["tenants", "create", "globex", "--name", "Globex"]).ok();
    tenancy(&env, &["rls", "audit"]).fails(1, "no table has a column 'tenant_id'");

    let shared = dir.migrations(
        "shared",
        &[(
            "1_notes.sql",
            "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, \
             tenant_id TEXT NOT NULL DEFAULT NULLIF(current_setting('app.tenant_id', true), ''), \
             body TEXT NOT NULL)",
        )],
    );
    let run = tenancy(
        &env,
        &["migrate", "--source", &path(&shared), "--concurrency", "1"],
    )
    .ok();
    assert!(run.stdout.contains("acme: applied 1"), "{run:?}");
    assert!(run.stdout.contains("globex: already current"), "{run:?}");
    // The shared table got its policy and the runtime role its grants.
    let audit = tenancy(&env, &["rls", "audit"]).ok();
    assert!(
        audit.stdout.contains("confines the runtime role"),
        "{audit:?}"
    );
    let dry = tenancy(&env, &["migrate", "--source", &path(&shared), "--dry-run"]).ok();
    assert!(
        dry.stdout.contains("0 pending, 2 already current"),
        "{dry:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_is_announced_to_running_servers_through_redis() {
    use futures_util::StreamExt as _;
    use tenancy::redis::redis;

    let dir = TempDir::new();
    let migrations = dir.migrations("tenant", &[NOTES]);
    let prefix = format!("{}:", tenancy_tests::unique_name("cli"));
    let env = [
        ("TENANCY_SQLITE_DATA_DIR", path(&dir.0.join("data"))),
        ("TENANCY_MIGRATIONS_DIR", path(&migrations)),
        ("TENANCY_REDIS_URL", tenancy_tests::redis_url()),
        ("TENANCY_REDIS_KEY_PREFIX", prefix.clone()),
    ];
    tenancy(&env, &["tenants", "create", "acme", "--name", "Acme"]).ok();

    // What a running server's cache listens to.
    let client = redis::Client::open(tenancy_tests::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("{prefix}invalidate"))
        .await
        .unwrap();
    let suspend =
        tokio::task::spawn_blocking(move || tenancy(&env, &["tenants", "suspend", "acme"]).ok());
    let message = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        pubsub.on_message().next(),
    )
    .await
    .expect("an invalidation within 10 s")
    .expect("a message");
    let payload: String = message.get_payload().unwrap();
    assert_eq!(payload, "acme");
    suspend.await.unwrap();
}
