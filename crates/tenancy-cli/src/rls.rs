//! `tenancy rls …`: the policy SQL of a table, and the audit of the runtime role.

use std::io::Write as _;
use tenancy::sql::postgres::{TenantSetting, rls_policy_sql};

use tenancy::{Backend, TenancyConfig};
use tenancy_fleet::deployment::{Deployment, DeploymentError, DeploymentMigrations};

use crate::error::CliError;

/// Prints the SQL putting `table` under row-level security on `column` (default: the
/// configured tenant column) and the configured tenant setting.
pub fn generate(table: &str, column: Option<&str>) -> Result<(), CliError> {
    let config = TenancyConfig::from_env()?;
    let column = column.unwrap_or(&config.rls_tenant_column);
    let setting = TenantSetting::parse(&config.rls_setting)
        .map_err(|e| CliError::Invalid(format!("TENANCY_RLS_SETTING: {e}")))?;
    let sql =
        rls_policy_sql(table, column, &setting).map_err(|e| CliError::Invalid(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    for statement in sql.split("; ") {
        writeln!(out, "{statement};")?;
    }
    Ok(())
}

/// Audits row-level security for the runtime role of `TENANCY_DATABASE_URL`; fails listing
/// every problem.
pub async fn audit() -> Result<(), CliError> {
    let config = TenancyConfig::from_env()?;
    if config.database_backend() != Some(Backend::Postgres) {
        return Err(DeploymentError::NeedsPostgres("the row-level security audit").into());
    }
    let deployment = Deployment::connect(&config, DeploymentMigrations::default(), None).await?;
    deployment.rls_audit().await?;
    writeln!(
        std::io::stdout().lock(),
        "row-level security confines the runtime role"
    )?;
    Ok(())
}
