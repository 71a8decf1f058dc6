//! Fleet scale check: on a fresh PostgreSQL database, provisions N schema tenants (schema +
//! base migration), migrates them with two more migration files, then runs again with nothing
//! pending, printing seconds for each phase. Drops the database at the end.
//!
//! ```text
//! cargo run --release -p tenancy-fleet --features postgres --example fleet_scale -- \
//!     [--tenants 1000] [--concurrency N] [--url postgres://postgres@127.0.0.1:5432]
//! ```

use std::time::Instant;

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tenancy_core::{NewTenant, Tenant, TenantIdentifier, TenantStatus};
use tenancy_fleet::postgres::PgSchemaTarget;
use tenancy_fleet::{MigrateOptions, MigrationReport, TenantMigrations, migrate_all};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The command line.
#[derive(clap::Parser)]
struct Args {
    /// Schema tenants to provision and migrate.
    #[arg(long, default_value_t = 1_000)]
    tenants: usize,
    /// Tenants migrated at once.
    #[arg(long, default_value_t = MigrateOptions::new().max_concurrency())]
    concurrency: usize,
    /// The PostgreSQL server, without a database.
    #[arg(
        long,
        env = "TENANCY_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    url: String,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = <Args as clap::Parser>::parse();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let database = format!("fleet_scale_{}_{stamp}", std::process::id());
    let folder = std::env::temp_dir().join(&database);
    let mut admin = PgConnection::connect(&format!("{}/postgres", args.url)).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{database}\"")))
        .execute(&mut admin)
        .await?;
    let result = run(&args, &database, &folder).await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    let _ = std::fs::remove_dir_all(&folder);
    result
}

async fn run(args: &Args, database: &str, folder: &std::path::Path) -> Result<(), BoxError> {
    let concurrency = u32::try_from(args.concurrency)?;
    let pool = PgPoolOptions::new()
        .max_connections(concurrency)
        .connect(&format!("{}/{database}", args.url))
        .await?;
    let tenants: Vec<Tenant> = (0..args.tenants)
        .map(|i| {
            let identifier = TenantIdentifier::parse(&format!("tenant-{i:06}"))?;
            Ok(NewTenant::new(identifier, format!("Tenant {i}"))
                .with_status(TenantStatus::Active)
                .into_tenant())
        })
        .collect::<Result<_, BoxError>>()?;
    let options = MigrateOptions::new().concurrency(args.concurrency);
    println!(
        "{} schema tenants, concurrency {}, database {database}",
        args.tenants, args.concurrency
    );

    std::fs::create_dir_all(folder)?;
    std::fs::write(
        folder.join("1_accounts.sql"),
        "CREATE TABLE accounts (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE)",
    )?;
    let base = TenantMigrations::from_dir(folder).await?;
    let provisioned = phase(
        "provision (schema + base migration)",
        20.0,
        &PgSchemaTarget::new(pool.clone(), base),
        &tenants,
        &options,
    )
    .await?;

    std::fs::write(
        folder.join("2_notes.sql"),
        "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, \
         account_id BIGINT NOT NULL REFERENCES accounts (id), body TEXT NOT NULL, \
         created_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
         CREATE INDEX notes_account ON notes (account_id, created_at)",
    )?;
    std::fs::write(
        folder.join("3_tags.sql"),
        "CREATE TABLE tags (note_id BIGINT NOT NULL REFERENCES notes (id), name TEXT NOT NULL, \
         PRIMARY KEY (note_id, name)); ALTER TABLE accounts ADD COLUMN name TEXT",
    )?;
    let target = PgSchemaTarget::new(pool.clone(), TenantMigrations::from_dir(folder).await?);
    let migrated = phase("migrate (two files)", 15.0, &target, &tenants, &options).await?;
    let noop = phase("re-run (nothing pending)", 3.0, &target, &tenants, &options).await?;

    assert_eq!(provisioned.applied(), args.tenants);
    assert_eq!(migrated.applied(), args.tenants);
    assert_eq!(noop.already_current(), args.tenants);
    pool.close().await;
    Ok(())
}

async fn phase(
    name: &str,
    target_seconds_per_1000: f64,
    target: &PgSchemaTarget,
    tenants: &[Tenant],
    options: &MigrateOptions,
) -> Result<MigrationReport, BoxError> {
    let started = Instant::now();
    let report = migrate_all(target, tenants.to_vec(), options).await;
    let seconds = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let budget = target_seconds_per_1000 * tenants.len() as f64 / 1000.0;
    println!(
        "{name:<40} {seconds:>8.2} s  (target < {budget:.1} s: {})  {report}",
        if seconds < budget { "ok" } else { "MISSED" }
    );
    if let Some(failure) = report.failures().next() {
        return Err(format!("{}: {:?}", failure.identifier, failure.outcome).into());
    }
    Ok(report)
}
