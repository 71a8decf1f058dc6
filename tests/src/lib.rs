//! Set-up shared by the integration tests: where the machine's services are, and throwaway
//! databases under unique names that are dropped when the test ends, even when it panics, so
//! tests run in parallel and twice in a row.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// The PostgreSQL server to test against (`TENANCY_TEST_POSTGRES_URL`, default local trust auth).
pub fn postgres_server_url() -> String {
    std::env::var("TENANCY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// The second PostgreSQL server, for tenants placed on several servers
/// (`TENANCY_TEST_POSTGRES_SECOND_URL`, default `postgres://postgres@127.0.0.1:5433`, which
/// `scripts/test` creates for the run).
pub fn postgres_second_server_url() -> String {
    std::env::var("TENANCY_TEST_POSTGRES_SECOND_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433".to_owned())
}

/// The PostgreSQL servers by the names placement tests give them: `main`
/// ([`postgres_server_url`]) and `second` ([`postgres_second_server_url`]).
pub fn postgres_servers() -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("main", postgres_server_url()),
        ("second", postgres_second_server_url()),
    ])
}

/// A connection to the `postgres` database of the server of `url`; panics, saying how to get
/// the second server, when it cannot be reached.
pub async fn postgres_server_admin(url: &str) -> sqlx::PgConnection {
    match sqlx::PgConnection::connect(&format!("{url}/postgres")).await {
        Ok(conn) => conn,
        Err(error) => panic!(
            "PostgreSQL server {url} is not reachable ({error}). The placement tests need a \
             second server: run scripts/test, which creates one on port 5433 \
             (pg_createcluster), or set TENANCY_TEST_POSTGRES_SECOND_URL"
        ),
    }
}

/// The tenant databases of one test: a unique name prefix on one kind of server, and every
/// database under it dropped when this value is dropped, failing test or not. PostgreSQL
/// databases are dropped on each server of [`postgres_servers`] that answers (placement tests
/// put tenants on both), MariaDB ones on [`mysql_server_url`].
#[derive(Debug)]
pub struct TenantDatabases {
    server: Server,
    prefix: String,
}

impl TenantDatabases {
    /// A fresh prefix on `server`: [`unique_name`] of `name`, and `_`. Creates nothing.
    pub fn new(server: Server, name: &str) -> Self {
        Self {
            server,
            prefix: format!("{}_", unique_name(name)),
        }
    }

    /// The kind of server the databases are on.
    pub fn server(&self) -> Server {
        self.server
    }

    /// The prefix, for `TENANCY_DATABASE_PREFIX` or a locator.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The databases under the prefix on the default server of their kind, sorted.
    pub async fn list(&self) -> Vec<String> {
        match self.server {
            Server::Postgres => postgres_databases_with_prefix(&self.prefix).await,
            Server::Mysql => mysql_databases_with_prefix(&self.prefix).await,
        }
    }

    /// The databases under the prefix on the PostgreSQL server of `url`, sorted.
    pub async fn on(&self, url: &str) -> Vec<String> {
        let mut admin = postgres_server_admin(url).await;
        databases_with_prefix(&mut admin, &self.prefix).await
    }
}

impl Drop for TenantDatabases {
    fn drop(&mut self) {
        let (server, prefix) = (self.server, self.prefix.clone());
        clean_up(
            format!("drop the databases under {}", self.prefix),
            async move {
                match server {
                    Server::Postgres => {
                        for url in postgres_servers().values() {
                            drop_postgres_databases(url, &prefix).await;
                        }
                    }
                    Server::Mysql => drop_mysql_databases(&prefix).await,
                }
            },
        );
    }
}

/// Drops the databases under `prefix` on the PostgreSQL server of `url`, if it answers. The
/// drops run together: each waits for a checkpoint, and concurrent ones share it.
async fn drop_postgres_databases(url: &str, prefix: &str) {
    let Ok(admin) = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&format!("{url}/postgres"))
        .await
    else {
        return;
    };
    let mut conn = admin.acquire().await.expect("a clean-up connection");
    let names = databases_with_prefix(&mut conn, prefix).await;
    drop(conn);
    let drops = names.into_iter().map(|name| {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&admin)
    });
    futures_util::future::try_join_all(drops)
        .await
        .expect("drop a test database");
}

/// Drops the MariaDB databases under `prefix`.
async fn drop_mysql_databases(prefix: &str) {
    let mut admin = sqlx::MySqlConnection::connect(&format!("{}/mysql", mysql_server_url()))
        .await
        .expect("connect to MariaDB");
    for name in mysql_databases_with_prefix(prefix).await {
        let drop = format!("DROP DATABASE IF EXISTS `{name}`");
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(&mut admin)
            .await
            .expect("drop a test database");
    }
}

/// Runs `cleanup` from a `Drop`: on a thread with a runtime of its own (a drop runs inside or
/// outside a runtime), waiting for it. A clean-up that panics fails the test with "could not
/// `what`", unless the test is already failing.
pub fn clean_up(what: String, cleanup: impl Future<Output = ()> + Send + 'static) {
    let done = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for test clean-up")
            .block_on(cleanup);
    });
    if done.join().is_err() && !std::thread::panicking() {
        panic!("could not {what}");
    }
}

async fn databases_with_prefix(admin: &mut sqlx::PgConnection, prefix: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1",
    )
    .bind(prefix)
    .fetch_all(admin)
    .await
    .expect("list test databases")
}

/// The MariaDB/MySQL server to test against (`TENANCY_TEST_MYSQL_URL`, default local root).
pub fn mysql_server_url() -> String {
    std::env::var("TENANCY_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// The Redis server to test against (`TENANCY_TEST_REDIS_URL`, default local).
pub fn redis_url() -> String {
    std::env::var("TENANCY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A name no other test run uses: `prefix` + process id + a counter + random bits.
/// Lowercase letters, digits and `_` only, so it is safe as a database or schema name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        &random[..8]
    )
}

/// Which server a [`TestDatabase`] lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The PostgreSQL server.
    Postgres,
    /// The MariaDB server.
    Mysql,
}

/// A database created for one test and dropped (forcibly) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    server: Server,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates an empty PostgreSQL database under a unique name.
    pub async fn postgres(prefix: &str) -> Self {
        Self::create(Server::Postgres, prefix).await
    }

    /// Creates an empty MariaDB database under a unique name.
    pub async fn mysql(prefix: &str) -> Self {
        Self::create(Server::Mysql, prefix).await
    }

    async fn create(server: Server, prefix: &str) -> Self {
        let name = unique_name(prefix);
        let (admin_url, url, create) = match server {
            Server::Postgres => {
                let base = postgres_server_url();
                (
                    format!("{base}/postgres"),
                    format!("{base}/{name}"),
                    format!("CREATE DATABASE \"{name}\""),
                )
            }
            Server::Mysql => {
                let base = mysql_server_url();
                (
                    format!("{base}/mysql"),
                    format!("{base}/{name}"),
                    format!("CREATE DATABASE `{name}`"),
                )
            }
        };
        execute_once(server, &admin_url, &create).await;
        Self { server, name, url }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL connecting to this database as the server's admin user.
    pub fn url(&self) -> &str {
        &self.url
    }
}

async fn execute_once(server: Server, url: &str, sql: &str) {
    let result = match server {
        Server::Postgres => match sqlx::PgConnection::connect(url).await {
            Ok(mut conn) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut conn)
                .await
                .map(drop),
            Err(e) => Err(e),
        },
        Server::Mysql => match sqlx::MySqlConnection::connect(url).await {
            Ok(mut conn) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut conn)
                .await
                .map(drop),
            Err(e) => Err(e),
        },
    };
    if let Err(error) = result {
        panic!("test set-up failed on {server:?} ({url}): {sql}: {error}");
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server, self.name.clone());
        let (admin_url, sql) = match server {
            Server::Postgres => (
                format!("{}/postgres", postgres_server_url()),
                format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            ),
            Server::Mysql => (
                format!("{}/mysql", mysql_server_url()),
                format!("DROP DATABASE IF EXISTS `{name}`"),
            ),
        };
        clean_up(format!("drop test database {name}"), async move {
            execute_once(server, &admin_url, &sql).await;
        });
    }
}

/// A PostgreSQL login role created for one test (`NOSUPERUSER NOBYPASSRLS`, no password: the
/// server trusts local connections), dropped when this value is dropped. Declare it before the
/// [`TestDatabase`]s it gets privileges in, so it is dropped after them.
#[derive(Debug)]
pub struct TestRole {
    name: String,
}

impl TestRole {
    /// Creates the role under a unique name.
    pub async fn create(prefix: &str) -> Self {
        let name = unique_name(prefix);
        execute_once(
            Server::Postgres,
            &format!("{}/postgres", postgres_server_url()),
            &format!(
                "CREATE ROLE \"{name}\" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
            ),
        )
        .await;
        Self { name }
    }

    /// The role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL connecting to `database` as this role.
    pub fn url(&self, database: &str) -> String {
        let server = postgres_server_url();
        let host = server
            .split_once('@')
            .map_or(server.trim_start_matches("postgres://"), |(_, host)| host);
        format!("postgres://{}@{host}/{database}", self.name)
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let sql = format!("DROP ROLE IF EXISTS \"{}\"", self.name);
        let url = format!("{}/postgres", postgres_server_url());
        clean_up(format!("drop test role {}", self.name), async move {
            execute_once(Server::Postgres, &url, &sql).await;
        });
    }
}

/// The PostgreSQL databases whose names start with `prefix`, sorted (to check that a test's
/// tenant databases were dropped).
pub async fn postgres_databases_with_prefix(prefix: &str) -> Vec<String> {
    let url = format!("{}/postgres", postgres_server_url());
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    databases_with_prefix(&mut conn, prefix).await
}

/// The MariaDB databases whose names start with `prefix`, sorted (to check that a test's tenant
/// databases were dropped).
pub async fn mysql_databases_with_prefix(prefix: &str) -> Vec<String> {
    let url = format!("{}/mysql", mysql_server_url());
    let mut conn = sqlx::MySqlConnection::connect(&url)
        .await
        .expect("connect to MariaDB");
    sqlx::query_scalar(
        "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
         WHERE LEFT(schema_name, CHAR_LENGTH(?)) = ? ORDER BY 1",
    )
    .bind(prefix)
    .bind(prefix)
    .fetch_all(&mut conn)
    .await
    .expect("list databases")
}

/// A Redis key prefix for one test (`<name>:`), whose keys are deleted when this value is
/// dropped, even when the test fails.
#[derive(Debug)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    /// A fresh prefix under a unique name.
    pub fn new(name: &str) -> Self {
        Self {
            prefix: format!("{}:", unique_name(name)),
        }
    }

    /// The prefix, ending with `:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        use tenancy::redis::redis;
        let pattern = format!("{}*", self.prefix);
        let cleanup = std::thread::spawn(move || -> redis::RedisResult<()> {
            let client = redis::Client::open(redis_url())?;
            let mut conn = client.get_connection()?;
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn)?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).exec(&mut conn)?;
            }
            Ok(())
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("could not delete test keys {}*: {error}", self.prefix);
        }
    }
}
