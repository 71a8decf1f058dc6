//! The SQLite read path without HTTP: what one tenant's orders cost to read in the demo's
//! default mode (a SQLite file per tenant) against `tenancy-demo-baseline` (one file, one shared
//! `orders` table, `WHERE tenant = ?`, one autocommit query on a pool of 10), with N tenants × M
//! orders and a random tenant per read. The paths take the costs apart one at a time:
//!
//! | path | reads from | statement |
//! |---|---|---|
//! | `one file, autocommit` | the shared file, the baseline's pool | `SELECT` (the baseline) |
//! | `one file, BEGIN, drop` | the same pool | `BEGIN`, `SELECT`, rollback by drop |
//! | `sqlx pool/file, autocommit` | one plain sqlx pool per tenant file | `SELECT` |
//! | `sqlx pool/file, BEGIN, drop` | the same pools | `BEGIN`, `SELECT`, rollback by drop |
//! | `TenantPools N, acquire` | `TenantPools`, budget N, 5 per tenant (`scripts/bench`'s) | `SELECT` |
//! | `TenantPools N, TenantTx` | the same pools | `TenantTx` begin, `SELECT`, drop (the demo) |
//! | `TenantPools N (1/tenant), acquire` | `TenantPools`, budget N, 1 connection per tenant | `SELECT` |
//! | `TenantPools N (1/tenant), TenantTx` | the same pools | the demo's |
//! | `TenantPools 5N, TenantTx` | `TenantPools`, a budget never spent (5 per tenant) | the demo's |
//! | `TenantPools 50, TenantTx` | `TenantPools`, the default budget of 50 | the demo's |
//!
//! The tenant files and pools are the demo's (`SqliteLocator`: WAL, synchronous `NORMAL`; the
//! default pool settings, 5 connections per tenant, no ping before a checkout; `TenantTx` opened
//! by the plain `BEGIN` of `TenantPools::begin`, as the demo's extractor does, and ended by drop
//! as its `GET /orders` does). The plain per-file sqlx pools have the same pool settings without
//! the budget and the LRU, so they separate the cost of many files (a connection, a worker
//! thread and a page cache each) from the cost of `TenantPools`. The baseline's pool keeps
//! sqlx's default ping before each checkout, as `tenancy-demo-baseline` does.
//!
//! The paths are measured in interleaved rounds (`--rounds`, each path's turn rotating), each
//! path warmed up first by reading every tenant once. Prints, per path, the latency of
//! sequential reads (p50, p99), the reads per second of 32 concurrent readers, both as a ratio
//! to the baseline (its p50 over the path's, the path's reads/s over its), and the SQLite
//! connections opened per read, sequential|concurrent (a connection opens a file).
//!
//! ```text
//! cargo run --release -p tenancy-fleet --features sqlite --example sqlite_read_path -- \
//!     [--tenants 1000] [--orders 20] [--reads 5000] [--seconds 5] [--rounds 5]
//! ```
//!
//! `--reads` and `--seconds` are per path, spread over the rounds. The files live in a fresh
//! directory under the system's temporary directory, removed at the end. The paths keep about
//! 4 × N connections open, a thread and 3 to 4 file descriptors each: `ulimit -n` must allow
//! about 16 × N (1,000 tenants: 14,500 descriptors, 6,000 threads).

mod read_sizes;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use read_sizes::ReadSizes;
use sqlx::Connection;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use tenancy_core::TenantIdentifier;
use tenancy_sql::IsolationError;
use tenancy_sql::database_per_tenant::{DatabaseLocator, TenantPoolSettings, TenantPools};
use tenancy_sql::sqlite::{SqliteLocator, SqliteTenantPools};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pool size of `tenancy-demo-baseline` (`BASELINE_POOL_MAX_CONNECTIONS`).
const BASELINE_POOL_SIZE: u32 = 10;
/// Readers of the throughput measurement, as the 32 connections of `scripts/bench`'s wrk.
const CONCURRENT_READERS: usize = 32;
/// Tenant files created and filled at once while seeding.
const SEEDING_CONCURRENCY: usize = 8;
/// The query of `tenancy-demo-baseline` on its shared table.
const SHARED_TABLE_QUERY: &str = "SELECT id, description FROM orders WHERE tenant = ? ORDER BY id";
/// The demo's `GET /orders` query on a tenant's own file.
const TENANT_FILE_QUERY: &str = "SELECT id, description FROM orders ORDER BY id";

/// SQLite connections opened so far, by every path: sqlx names a connection's worker thread
/// once, when the connection opens.
static CONNECTIONS_OPENED: AtomicU64 = AtomicU64::new(0);

/// `options`, counting in [`CONNECTIONS_OPENED`] every connection opened with them.
fn counting_opens(options: SqliteConnectOptions) -> SqliteConnectOptions {
    options.thread_name(|id| {
        CONNECTIONS_OPENED.fetch_add(1, Ordering::Relaxed);
        format!("sqlx-sqlite-worker-{id}")
    })
}

/// The demo's locator, its connect options counting the connections opened.
struct CountingLocator(SqliteLocator);

impl DatabaseLocator for CountingLocator {
    type Database = Sqlite;

    async fn connect_options(
        &self,
        tenant: &TenantIdentifier,
    ) -> Result<SqliteConnectOptions, IsolationError> {
        Ok(counting_opens(self.0.connect_options(tenant).await?))
    }
}

/// The command line: sizes of the data and of the measurement.
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    sizes: ReadSizes,
    /// Interleaved rounds over all paths; the reads and seconds are spread over them.
    #[arg(long, default_value_t = 5,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    rounds: usize,
}

/// Picks the tenant of each read: SplitMix64, so runs repeat without a dependency.
struct TenantPicker(u64);

impl TenantPicker {
    fn next_index(&mut self, tenants: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^= mixed >> 31;
        (mixed % tenants as u64) as usize
    }
}

/// Where a read finds the tenant's orders.
#[derive(Clone)]
enum Source {
    /// The baseline's shared file and pool.
    SharedFile(SqlitePool),
    /// A plain sqlx pool per tenant file, indexed like the tenants.
    PoolPerFile(Arc<[SqlitePool]>),
    /// The tenancy pools of the tenant files.
    TenantPools(TenantPools<CountingLocator>),
}

/// Whether a read runs its `SELECT` alone or inside a transaction ended by drop.
#[derive(Clone, Copy)]
enum Statement {
    Autocommit,
    Transaction,
}

/// One way of reading a tenant's orders, named in the table.
#[derive(Clone)]
struct ReadPath {
    name: String,
    source: Source,
    statement: Statement,
}

impl ReadPath {
    fn new(name: impl Into<String>, source: Source, statement: Statement) -> Self {
        Self {
            name: name.into(),
            source,
            statement,
        }
    }

    /// Reads the orders of `tenant`, the `index`th tenant; returns how many there were.
    async fn read(&self, index: usize, tenant: &TenantIdentifier) -> Result<usize, BoxError> {
        let shared = || sqlx::query_as(SHARED_TABLE_QUERY).bind(tenant.as_str());
        let own = || sqlx::query_as(TENANT_FILE_QUERY);
        let rows: Vec<(i64, String)> = match (&self.source, self.statement) {
            (Source::SharedFile(pool), Statement::Autocommit) => shared().fetch_all(pool).await?,
            (Source::SharedFile(pool), Statement::Transaction) => {
                let mut tx = pool.begin().await?;
                shared().fetch_all(&mut *tx).await?
            }
            (Source::PoolPerFile(pools), Statement::Autocommit) => {
                own().fetch_all(&pools[index]).await?
            }
            (Source::PoolPerFile(pools), Statement::Transaction) => {
                let mut tx = pools[index].begin().await?;
                own().fetch_all(&mut *tx).await?
            }
            (Source::TenantPools(pools), Statement::Autocommit) => {
                let mut conn = pools.acquire(tenant).await?;
                own().fetch_all(&mut *conn).await?
            }
            (Source::TenantPools(pools), Statement::Transaction) => {
                let mut tx = pools.begin(tenant).await?;
                own().fetch_all(&mut *tx).await?
            }
        };
        Ok(rows.len())
    }

    /// Reads and checks that `tenant` has all its `orders`.
    async fn read_checked(
        &self,
        index: usize,
        tenant: &TenantIdentifier,
        orders: usize,
    ) -> Result<(), BoxError> {
        match self.read(index, tenant).await? {
            read if read == orders => Ok(()),
            read => Err(format!(
                "{}: {tenant} has {read} orders, expected {orders}",
                self.name
            )
            .into()),
        }
    }

    /// Closes the path's connections to the files of `tenants`.
    async fn close(&self, tenants: &[TenantIdentifier]) {
        match &self.source {
            Source::SharedFile(pool) => pool.close().await,
            Source::PoolPerFile(pools) => {
                futures_util::future::join_all(pools.iter().map(SqlitePool::close)).await;
            }
            Source::TenantPools(pools) => {
                futures_util::future::join_all(tenants.iter().map(|tenant| pools.evict(tenant)))
                    .await;
            }
        }
    }
}

/// What one path measured over all rounds.
#[derive(Default)]
struct Measurement {
    latencies: Vec<Duration>,
    sequential_opens: u64,
    concurrent_reads: u64,
    concurrent_opens: u64,
    concurrent_time: Duration,
}

impl Measurement {
    fn percentile_micros(&self, percent: usize) -> u128 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let at = (sorted.len() * percent / 100).min(sorted.len() - 1);
        sorted[at].as_micros()
    }

    fn reads_per_second(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let reads = self.concurrent_reads as f64;
        reads / self.concurrent_time.as_secs_f64()
    }

    /// Connections opened per sequential read and per concurrent read.
    fn opens_per_read(&self) -> (f64, f64) {
        #[allow(clippy::cast_precision_loss)]
        let per = |opens: u64, reads: u64| opens as f64 / reads.max(1) as f64;
        (
            per(self.sequential_opens, self.latencies.len() as u64),
            per(self.concurrent_opens, self.concurrent_reads),
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = <Args as clap::Parser>::parse();
    if args.sizes.reads < args.rounds {
        return Err("--reads must be at least --rounds".into());
    }
    let dir = std::env::temp_dir().join(format!("sqlite_read_path_{}", std::process::id()));
    tokio::fs::create_dir_all(&dir).await?;
    let result = run(&args, &dir).await;
    tokio::fs::remove_dir_all(&dir).await?;
    result
}

async fn run(args: &Args, dir: &Path) -> Result<(), BoxError> {
    let tenants: Arc<[TenantIdentifier]> = (1..=args.sizes.tenants)
        .map(|i| TenantIdentifier::parse(&format!("tenant-{i:04}")))
        .collect::<Result<_, _>>()?;
    let locator = SqliteLocator::new(dir.join("tenants"), "tenant_")?;
    let shared = seed_shared_file(args, &dir.join("baseline.db")).await?;
    seed_tenant_files(args, &locator, &tenants).await?;

    let default_settings = TenantPoolSettings::default();
    let one_file_each = u32::try_from(args.sizes.tenants)?;
    let never_spent = one_file_each * default_settings.max_connections_per_tenant;
    let tenant_pools = |connection_budget, max_connections_per_tenant| {
        TenantPools::new(
            CountingLocator(locator.clone()),
            TenantPoolSettings {
                connection_budget,
                max_connections_per_tenant,
                ..TenantPoolSettings::default()
            },
        )
    };
    let per_tenant = default_settings.max_connections_per_tenant;
    let as_benchmarked = tenant_pools(one_file_each, per_tenant);
    let one_connection_per_tenant = tenant_pools(one_file_each, 1);
    let pool_per_file = Source::PoolPerFile(pools_per_file(&locator, &tenants).await?);
    let paths = [
        ReadPath::new(
            "one file, autocommit",
            Source::SharedFile(shared.clone()),
            Statement::Autocommit,
        ),
        ReadPath::new(
            "one file, BEGIN, drop",
            Source::SharedFile(shared),
            Statement::Transaction,
        ),
        ReadPath::new(
            "sqlx pool/file, autocommit",
            pool_per_file.clone(),
            Statement::Autocommit,
        ),
        ReadPath::new(
            "sqlx pool/file, BEGIN, drop",
            pool_per_file,
            Statement::Transaction,
        ),
        ReadPath::new(
            format!("TenantPools {one_file_each}, acquire"),
            Source::TenantPools(as_benchmarked.clone()),
            Statement::Autocommit,
        ),
        ReadPath::new(
            format!("TenantPools {one_file_each}, TenantTx"),
            Source::TenantPools(as_benchmarked),
            Statement::Transaction,
        ),
        ReadPath::new(
            format!("TenantPools {one_file_each} (1/tenant), acquire"),
            Source::TenantPools(one_connection_per_tenant.clone()),
            Statement::Autocommit,
        ),
        ReadPath::new(
            format!("TenantPools {one_file_each} (1/tenant), TenantTx"),
            Source::TenantPools(one_connection_per_tenant),
            Statement::Transaction,
        ),
        ReadPath::new(
            format!("TenantPools {never_spent}, TenantTx"),
            Source::TenantPools(tenant_pools(never_spent, per_tenant)),
            Statement::Transaction,
        ),
        ReadPath::new(
            format!(
                "TenantPools {}, TenantTx",
                default_settings.connection_budget
            ),
            Source::TenantPools(tenant_pools(default_settings.connection_budget, per_tenant)),
            Statement::Transaction,
        ),
    ];

    for path in &paths {
        for (index, tenant) in tenants.iter().enumerate() {
            path.read_checked(index, tenant, args.sizes.orders).await?;
        }
    }
    let mut measurements: Vec<Measurement> = paths.iter().map(|_| Measurement::default()).collect();
    let reads_per_round = args.sizes.reads / args.rounds;
    let time_per_round = Duration::from_secs(args.sizes.seconds) / u32::try_from(args.rounds)?;
    for round in 0..args.rounds {
        for turn in 0..paths.len() {
            let which = (round + turn) % paths.len();
            let measurement = &mut measurements[which];
            let mut picker = TenantPicker(round as u64);
            let opened_before = CONNECTIONS_OPENED.load(Ordering::Relaxed);
            for _ in 0..reads_per_round {
                let index = picker.next_index(tenants.len());
                let started = Instant::now();
                paths[which]
                    .read_checked(index, &tenants[index], args.sizes.orders)
                    .await?;
                measurement.latencies.push(started.elapsed());
            }
            let opened_between = CONNECTIONS_OPENED.load(Ordering::Relaxed);
            measurement.sequential_opens += opened_between - opened_before;
            let started = Instant::now();
            measurement.concurrent_reads +=
                read_concurrently(&paths[which], &tenants, args.sizes.orders, time_per_round)
                    .await?;
            measurement.concurrent_time += started.elapsed();
            measurement.concurrent_opens +=
                CONNECTIONS_OPENED.load(Ordering::Relaxed) - opened_between;
        }
    }

    println!(
        "{} tenants × {} orders; per path {} sequential reads, then {CONCURRENT_READERS} readers \
         for {} s, in {} interleaved rounds; TenantPools B: a budget of B open connections, \
         {per_tenant} per tenant unless said",
        args.sizes.tenants, args.sizes.orders, args.sizes.reads, args.sizes.seconds, args.rounds
    );
    println!(
        "{:<38} {:>7} {:>7} {:>9} {:>9} {:>9} {:>15}",
        "path", "p50 µs", "p99 µs", "reads/s", "× p50", "× reads/s", "opens/read s|c"
    );
    let baseline = &measurements[0];
    for (path, measurement) in paths.iter().zip(&measurements) {
        #[allow(clippy::cast_precision_loss)]
        let p50_ratio =
            baseline.percentile_micros(50) as f64 / measurement.percentile_micros(50) as f64;
        let (sequential_opens, concurrent_opens) = measurement.opens_per_read();
        println!(
            "{:<38} {:>7} {:>7} {:>9.0} {:>8.2}× {:>8.2}× {:>7.2}|{:.2}",
            path.name,
            measurement.percentile_micros(50),
            measurement.percentile_micros(99),
            measurement.reads_per_second(),
            p50_ratio,
            measurement.reads_per_second() / baseline.reads_per_second(),
            sequential_opens,
            concurrent_opens
        );
    }
    for path in &paths {
        path.close(&tenants).await;
    }
    Ok(())
}

/// Reads with `CONCURRENT_READERS` tasks for `duration`; returns how many reads they made.
async fn read_concurrently(
    path: &ReadPath,
    tenants: &Arc<[TenantIdentifier]>,
    orders: usize,
    duration: Duration,
) -> Result<u64, BoxError> {
    let reads = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let readers: Vec<_> = (0..CONCURRENT_READERS)
        .map(|reader| {
            let (path, tenants, reads) = (path.clone(), Arc::clone(tenants), Arc::clone(&reads));
            tokio::spawn(async move {
                let mut picker = TenantPicker(0x5EED + reader as u64);
                while Instant::now() < deadline {
                    let index = picker.next_index(tenants.len());
                    path.read_checked(index, &tenants[index], orders).await?;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), BoxError>(())
            })
        })
        .collect();
    for reader in readers {
        reader.await??;
    }
    Ok(reads.load(Ordering::Relaxed))
}

/// The baseline's file, table, index and pool (`tenancy-demo-baseline` with a `sqlite:` URL),
/// with `orders` rows per tenant.
async fn seed_shared_file(args: &Args, file: &Path) -> Result<SqlitePool, BoxError> {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let pool = SqlitePoolOptions::new()
        .max_connections(BASELINE_POOL_SIZE)
        .connect_with(counting_opens(options))
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         tenant TEXT NOT NULL, description TEXT NOT NULL); \
         CREATE INDEX orders_tenant_id ON orders (tenant, id)",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < ?1), \
         o(m) AS (SELECT 1 UNION ALL SELECT m + 1 FROM o WHERE m < ?2) \
         INSERT INTO orders (tenant, description) \
         SELECT printf('tenant-%04d', t.n), 'order ' || o.m FROM t, o ORDER BY t.n, o.m",
    )
    .bind(i64::try_from(args.sizes.tenants)?)
    .bind(i64::try_from(args.sizes.orders)?)
    .execute(&pool)
    .await?;
    Ok(pool)
}

/// A file per tenant with the demo's `orders` table (its SQLite migration) and `orders` rows,
/// each created, filled and closed on its own connection.
async fn seed_tenant_files(
    args: &Args,
    locator: &SqliteLocator,
    tenants: &[TenantIdentifier],
) -> Result<(), BoxError> {
    let creator = &SqliteTenantPools::new(locator.clone(), TenantPoolSettings::default());
    let orders = i64::try_from(args.sizes.orders)?;
    let seed_one = |tenant| async move {
        creator.create_tenant_database(tenant, None).await?;
        let mut conn =
            SqliteConnection::connect_with(&locator.connect_options(tenant).await?).await?;
        sqlx::raw_sql(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             description TEXT NOT NULL)",
        )
        .execute(&mut conn)
        .await?;
        sqlx::query(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?) \
             INSERT INTO orders (description) SELECT 'order ' || n FROM g",
        )
        .bind(orders)
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        Ok::<(), BoxError>(())
    };
    futures_util::stream::iter(tenants.iter().map(Ok))
        .try_for_each_concurrent(SEEDING_CONCURRENCY, seed_one)
        .await
}

/// A plain sqlx pool per tenant file, with the pool settings `TenantPools` gives each tenant.
async fn pools_per_file(
    locator: &SqliteLocator,
    tenants: &[TenantIdentifier],
) -> Result<Arc<[SqlitePool]>, BoxError> {
    let settings = TenantPoolSettings::default();
    let mut pools = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let options = counting_opens(locator.connect_options(tenant).await?);
        pools.push(settings.pool_options().connect_lazy_with(options));
    }
    Ok(pools.into())
}
