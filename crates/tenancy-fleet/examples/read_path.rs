//! The single-query read without HTTP: one tenant's orders (`SELECT id, description FROM
//! orders .. ORDER BY id`) through a plain pool in autocommit and in a plain transaction
//! (`WHERE tenant_id = $1` on a shared table), then through a tenant
//! transaction in schema mode and in RLS mode (`PgIsolation::begin_in`, the query), with N
//! tenants × M orders and a random tenant per read. As in the demo's `GET /orders`, the
//! transactions are read-only and end by drop (the queued `ROLLBACK` goes out with the pool's
//! release ping instead of a `COMMIT` round trip of its own), and the tenancy runtime pools run
//! without the release reset (`reset_on_release(false)`, the demo's default). Prints, per path, the latency of
//! sequential reads (p50, p99), the reads per second of 32 concurrent readers on a 10-connection
//! pool, and, with `--counter`, the PostgreSQL round trips per read counted by a
//! `pg_round_trips` proxy that `--url` goes through.
//!
//! ```text
//! cargo run --release -p tenancy-fleet --features postgres --example read_path -- \
//!     [--tenants 1000] [--orders 20] [--reads 5000] [--seconds 5] \
//!     [--url postgres://postgres@127.0.0.1:5432] [--admin-url postgres://postgres@127.0.0.1:5432] \
//!     [--counter 127.0.0.1:15433]
//! ```
//!
//! Creates a database and a non-superuser runtime role for RLS under unique names (as the
//! superuser of `--admin-url`) and drops both at the end. `--url` is the server the reads go to
//! (the same server, possibly through the proxy; use `?sslmode=disable` there).

mod read_sizes;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use read_sizes::ReadSizes;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tenancy_core::{IsolationMode, TenantIdentifier};
use tenancy_sql::postgres::{
    PgIsolation, PgIsolationOptions, TenantSetting, apply_rls_policy, grant_tenant_tables,
};
use tokio::io::AsyncReadExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const POOL_SIZE: u32 = 10;
const READERS: usize = 32;

/// The command line: sizes of the data and of the measurement, and where to connect.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    sizes: ReadSizes,
    /// The server requests read from (the runtime connections; may be a counting proxy).
    #[arg(
        long,
        env = "TENANCY_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    url: String,
    /// The server the data is set up on (default: `--url`).
    #[arg(long)]
    admin_url: Option<String>,
    /// The control address of a `pg_round_trips` proxy between `--url` and the server.
    #[arg(long)]
    counter: Option<String>,
}

impl Args {
    /// The server the data is set up on.
    fn admin_url(&self) -> &str {
        self.admin_url.as_deref().unwrap_or(&self.url)
    }
}

/// A xorshift generator: the tenant of each read, without a dependency.
struct Random(u64);

impl Random {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One way of reading a tenant's orders.
#[derive(Clone)]
enum ReadPath {
    Plain(PgPool),
    PlainTx(PgPool),
    Tenant(PgIsolation, IsolationMode),
}

impl ReadPath {
    fn name(&self) -> &'static str {
        match self {
            Self::Plain(_) => "plain pool, autocommit",
            Self::PlainTx(_) => "plain pool, BEGIN, drop",
            Self::Tenant(_, IsolationMode::Schema) => "TenantTx, schema mode",
            Self::Tenant(_, _) => "TenantTx, RLS mode",
        }
    }

    async fn read(&self, tenant: &TenantIdentifier) -> Result<usize, BoxError> {
        let rows: Vec<(i64, String)> = match self {
            Self::Plain(pool) => {
                sqlx::query_as(
                    "SELECT id, description FROM orders WHERE tenant_id = $1 ORDER BY id",
                )
                .bind(tenant.as_str())
                .fetch_all(pool)
                .await?
            }
            Self::PlainTx(pool) => {
                let mut tx = pool.begin().await?;
                let rows = sqlx::query_as(
                    "SELECT id, description FROM orders WHERE tenant_id = $1 ORDER BY id",
                )
                .bind(tenant.as_str())
                .fetch_all(&mut *tx)
                .await?;
                drop(tx);
                rows
            }
            Self::Tenant(isolation, mode) => {
                let mut tx = isolation.begin_in(tenant, *mode).await?;
                let rows = sqlx::query_as("SELECT id, description FROM orders ORDER BY id")
                    .fetch_all(&mut *tx)
                    .await?;
                drop(tx);
                rows
            }
        };
        Ok(rows.len())
    }
}

async fn round_trips(counter: Option<&str>) -> Result<Option<u64>, BoxError> {
    let Some(address) = counter else {
        return Ok(None);
    };
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let mut line = String::new();
    stream.read_to_string(&mut line).await?;
    let value = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("round_trips="))
        .ok_or("no round_trips in the counter's answer")?;
    Ok(Some(value.parse()?))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = <Args as clap::Parser>::parse();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let database = format!("read_path_{}_{stamp}", std::process::id());
    let role = format!("{database}_app");
    let mut admin = PgConnection::connect(&format!("{}/postgres", args.admin_url())).await?;
    // One statement per message: CREATE/DROP DATABASE refuse the implicit transaction of a
    // multi-statement message.
    for statement in [
        format!("CREATE DATABASE \"{database}\""),
        format!("CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOBYPASSRLS"),
    ] {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut admin)
            .await?;
    }
    let result = run(&args, &database, &role).await;
    for statement in [
        format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"),
        format!("DROP ROLE IF EXISTS \"{role}\""),
    ] {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut admin)
            .await?;
    }
    result
}

async fn run(args: &Args, database: &str, role: &str) -> Result<(), BoxError> {
    let tenants: Vec<TenantIdentifier> = (1..=args.sizes.tenants)
        .map(|i| TenantIdentifier::parse(&format!("tenant-{i:04}")))
        .collect::<Result<_, _>>()?;
    seed(args, database, role).await?;

    let url_of = |base: &str, user: Option<&str>| -> Result<PgConnectOptions, BoxError> {
        let (base, query) = base.split_once('?').unwrap_or((base, ""));
        let mut options: PgConnectOptions = format!("{base}/{database}?{query}").parse()?;
        if let Some(user) = user {
            options = options.username(user);
        }
        Ok(options)
    };
    // As tenancy-demo-baseline: no ping before each checkout, like the tenancy runtime pool.
    let plain = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .test_before_acquire(false)
        .connect_with(url_of(&args.url, None)?)
        .await?;
    let isolation_options = || PgIsolationOptions::new().reset_on_release(false);
    let isolation_pool = |user: Option<&str>| -> Result<_, BoxError> {
        let options =
            isolation_options().pool_options(PgPoolOptions::new().max_connections(POOL_SIZE))?;
        Ok(options.connect_with(url_of(&args.url, user)?))
    };
    let schema = PgIsolation::from_pool(isolation_pool(None)?.await?, isolation_options())?;
    let rls = PgIsolation::from_pool(
        isolation_pool(Some(role))?.await?,
        isolation_options().mode(IsolationMode::Rls),
    )?;
    let paths = [
        ReadPath::Plain(plain.clone()),
        ReadPath::PlainTx(plain),
        ReadPath::Tenant(schema, IsolationMode::Schema),
        ReadPath::Tenant(rls, IsolationMode::Rls),
    ];

    println!(
        "{} tenants × {} orders, database {database}; {} sequential reads, then {READERS} readers \
         for {} s, pool of {POOL_SIZE}",
        args.sizes.tenants, args.sizes.orders, args.sizes.reads, args.sizes.seconds
    );
    println!(
        "{:<24} {:>9} {:>9} {:>12} {:>16}",
        "path", "p50 µs", "p99 µs", "reads/s", "round trips/read"
    );
    for path in &paths {
        let mut random = Random(0x9E37_79B9_7F4A_7C15);
        // Warm up: every connection of the pool, every statement prepared.
        for _ in 0..args.sizes.reads.min(1_000) {
            check(
                path,
                &tenants[random.below(tenants.len())],
                args.sizes.orders,
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = round_trips(args.counter.as_deref()).await?;
        let mut latencies = Vec::with_capacity(args.sizes.reads);
        for _ in 0..args.sizes.reads {
            let tenant = &tenants[random.below(tenants.len())];
            let started = Instant::now();
            check(path, tenant, args.sizes.orders).await?;
            latencies.push(started.elapsed());
        }
        // The pool's release check runs after the connection is handed back.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = round_trips(args.counter.as_deref()).await?;
        latencies.sort_unstable();
        let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
        let per_read = match (before, after) {
            (Some(before), Some(after)) => {
                #[allow(clippy::cast_precision_loss)]
                let ratio = (after - before) as f64 / args.sizes.reads as f64;
                format!("{ratio:.2}")
            }
            _ => "—".to_owned(),
        };
        let throughput = concurrent(path, &tenants, args.sizes.orders, args.sizes.seconds).await?;
        println!(
            "{:<24} {:>9} {:>9} {:>12.0} {:>16}",
            path.name(),
            percentile(50).as_micros(),
            percentile(99).as_micros(),
            throughput,
            per_read
        );
    }
    for path in paths {
        match path {
            ReadPath::Plain(pool) | ReadPath::PlainTx(pool) => pool.close().await,
            ReadPath::Tenant(isolation, _) => isolation.pool().close().await,
        }
    }
    Ok(())
}

async fn check(path: &ReadPath, tenant: &TenantIdentifier, orders: usize) -> Result<(), BoxError> {
    let read = path.read(tenant).await?;
    if read != orders {
        return Err(format!(
            "{}: {tenant} has {read} orders, expected {orders}",
            path.name()
        )
        .into());
    }
    Ok(())
}

/// Reads per second of `READERS` concurrent readers for `seconds`.
async fn concurrent(
    path: &ReadPath,
    tenants: &[TenantIdentifier],
    orders: usize,
    seconds: u64,
) -> Result<f64, BoxError> {
    let reads = Arc::new(AtomicU64::new(0));
    let tenants: Arc<[TenantIdentifier]> = Arc::from(tenants);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut readers = Vec::with_capacity(READERS);
    for reader in 0..READERS {
        let (path, reads, tenants) = (path.clone(), Arc::clone(&reads), Arc::clone(&tenants));
        readers.push(tokio::spawn(async move {
            let mut random = Random(0x2545_F491_4F6C_DD1D + reader as u64);
            while Instant::now() < deadline {
                check(&path, &tenants[random.below(tenants.len())], orders).await?;
                reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), BoxError>(())
        }));
    }
    for reader in readers {
        reader.await??;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(reads.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Tenant schemas `tenant_<identifier>` with an `orders` table each, and the shared `orders`
/// table under the RLS policy, both with `orders` rows per tenant; grants for the RLS role.
async fn seed(args: &Args, database: &str, role: &str) -> Result<(), BoxError> {
    let mut conn = PgConnection::connect(&format!("{}/{database}", args.admin_url())).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE public.orders (id BIGSERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, \
             description TEXT NOT NULL); \
         CREATE INDEX orders_tenant_id ON public.orders (tenant_id, id); \
         INSERT INTO public.orders (tenant_id, description) \
             SELECT 'tenant-' || lpad(t::text, 4, '0'), 'order ' || o \
             FROM generate_series(1, {tenants}) t, generate_series(1, {orders}) o ORDER BY t, o; \
         DO $$ DECLARE t int; BEGIN \
             FOR t IN 1..{tenants} LOOP \
                 EXECUTE format('CREATE SCHEMA tenant_tenant_%s; \
                     CREATE TABLE tenant_tenant_%s.orders (id BIGSERIAL PRIMARY KEY, \
                         description TEXT NOT NULL); \
                     INSERT INTO tenant_tenant_%s.orders (description) \
                         SELECT ''order '' || o FROM generate_series(1, {orders}) o', \
                     lpad(t::text, 4, '0'), lpad(t::text, 4, '0'), lpad(t::text, 4, '0')); \
             END LOOP; END $$",
        tenants = args.sizes.tenants,
        orders = args.sizes.orders,
    )))
    .execute(&mut conn)
    .await?;
    apply_rls_policy(
        &mut conn,
        "public.orders",
        "tenant_id",
        &TenantSetting::default(),
    )
    .await?;
    grant_tenant_tables(&mut conn, role, &["public.orders"]).await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}
