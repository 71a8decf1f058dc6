//! Why a command failed, and its exit code.

use std::process::ExitCode;

use tenancy::identifier::IdentifierError;
use tenancy::manager::ManagerError;
use tenancy::{ConfigError, StoreError};
use tenancy_fleet::MigrationsError;
use tenancy_fleet::deployment::DeploymentError;

/// A failed command. `Display` is the one line (or, for several problems, the list) printed on
/// stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A `TENANCY_*` variable is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A tenant identifier given on the command line is invalid.
    #[error("invalid tenant identifier '{input}': {source}")]
    Identifier {
        /// What was given.
        input: String,
        /// The rule it breaks.
        #[source]
        source: IdentifierError,
    },
    /// The deployment could not be set up.
    #[error(transparent)]
    Deployment(#[from] DeploymentError),
    /// A migrations folder is unusable.
    #[error("{variable}: {source}")]
    Migrations {
        /// Where the folder was named (`TENANCY_MIGRATIONS_DIR`, `--source`).
        variable: &'static str,
        /// Why.
        #[source]
        source: MigrationsError,
    },
    /// `TENANCY_REDIS_URL` could not be used to announce the change to running servers.
    #[error("TENANCY_REDIS_URL: {0}")]
    Redis(#[source] tenancy::redis::redis::RedisError),
    /// A lifecycle operation failed.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// The registry failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Input the command cannot use (say, a table name for a policy).
    #[error("{0}")]
    Invalid(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// Some tenants failed to migrate (the report lists them).
    #[error("{failed} of {total} tenants failed to migrate (see the report above)")]
    MigrationFailed {
        /// Failed tenants.
        failed: usize,
        /// Tenants migrated.
        total: usize,
    },
}

impl CliError {
    /// 2 for an invalid configuration, 1 for everything else.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Config(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}
