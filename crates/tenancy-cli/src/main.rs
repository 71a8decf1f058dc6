//! `tenancy`: the admin CLI of a tenancy deployment. It reads the same `TENANCY_*` variables as
//! the server and wires the same [`Deployment`](tenancy_fleet::deployment::Deployment), so it
//! manages the server's tenants where they live (SQLite files under `TENANCY_SQLITE_DATA_DIR`,
//! or PostgreSQL).
//!
//! Exit codes: 0 success, 1 failure (one line on stderr saying why), 2 bad arguments or an
//! invalid configuration.

mod check;
mod error;
mod migrate;
mod rls;
mod tenants;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tenancy::TenantStatus;

use crate::error::CliError;

/// Administers the tenants of a tenancy deployment, configured by the TENANCY_* variables.
#[derive(Debug, Parser)]
#[command(name = "tenancy", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Registers, lists, shows, suspends, activates and deletes tenants.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Migrates every tenant (deleted ones excepted) to the migrations of a folder.
    Migrate(MigrateArgs),
    /// Row-level security: generates policies and audits the runtime role.
    #[command(subcommand)]
    Rls(RlsCommand),
    /// Checks the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// Registers a tenant and provisions its data (with the migrations of TENANCY_MIGRATIONS_DIR).
    Create {
        /// The tenant identifier: lowercase letters, digits and single '-', starting with a letter.
        identifier: String,
        /// The display name.
        #[arg(long)]
        name: String,
        /// The tier (hybrid deployments isolate by tier).
        #[arg(long)]
        tier: Option<String>,
        /// The database server of a database tenant: a name from TENANCY_DATABASE_SERVERS
        /// (default: the server of TENANCY_DATABASE_URL).
        #[arg(long)]
        placement: Option<String>,
    },
    /// Lists the tenants, ordered by identifier.
    List {
        /// Prints a JSON array.
        #[arg(long)]
        json: bool,
        /// Only tenants in this status.
        #[arg(long, value_parser = parse_status)]
        status: Option<TenantStatus>,
    },
    /// Shows one tenant.
    Show {
        /// The tenant identifier.
        identifier: String,
        /// Prints a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Suspends an active tenant: its requests are refused until it is activated.
    Suspend {
        /// The tenant identifier.
        identifier: String,
    },
    /// Activates a suspended tenant.
    Activate {
        /// The tenant identifier.
        identifier: String,
    },
    /// Soft-deletes a tenant (its data is kept), or with --purge removes its data and row.
    Delete {
        /// The tenant identifier.
        identifier: String,
        /// Also removes the tenant's schema, database, file or rows, and its registry row.
        #[arg(long)]
        purge: bool,
    },
}

/// Options of `migrate`.
#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// The folder of `<version>_<name>.sql` migrations: each tenant's own (schema, database),
    /// or the shared tables' in an `rls` deployment.
    #[arg(long)]
    source: PathBuf,
    /// Hybrid deployments: the folder of the shared tables' migrations, for RLS tenants.
    #[arg(long)]
    shared_source: Option<PathBuf>,
    /// How many tenants migrate at once (default: twice the CPU cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,
    /// Only reports what is pending; changes nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
enum RlsCommand {
    /// Prints the SQL putting a table under tenant row-level security.
    Generate {
        /// The table (`table` or `schema.table`).
        #[arg(long)]
        table: String,
        /// The tenant column (default: TENANCY_RLS_TENANT_COLUMN).
        #[arg(long)]
        column: Option<String>,
    },
    /// Checks that row-level security confines the runtime role of TENANCY_DATABASE_URL.
    Audit,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Prints the effective configuration (secrets masked), or every problem with its variable.
    Check,
}

fn parse_status(value: &str) -> Result<TenantStatus, String> {
    value.parse().map_err(|error| format!("{error}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tenancy: {error}");
            error.exit_code()
        }
    }
}

async fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Config(ConfigCommand::Check) => Ok(check::run()),
        Command::Tenants(command) => tenants::run(command).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => migrate::run(args).await,
        Command::Rls(RlsCommand::Generate { table, column }) => {
            rls::generate(&table, column.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        Command::Rls(RlsCommand::Audit) => rls::audit().await.map(|()| ExitCode::SUCCESS),
    }
}
