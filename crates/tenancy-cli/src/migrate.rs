//! `tenancy migrate`: every tenant through the deployment's migration target, with a progress
//! bar on a terminal (one log line per tenant otherwise) and a report.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tenancy::{IsolationMode, TenancyConfig};
use tenancy_fleet::deployment::{Deployment, DeploymentMigrations};
use tenancy_fleet::{
    MigrateOptions, MigrationReport, ProgressEvent, TenantMigrations, TenantOutcome, TenantReport,
    migrate_all,
};

use crate::MigrateArgs;
use crate::error::CliError;
use crate::tenants::list_all;

/// Runs `migrate`; exits 1 when a tenant failed.
pub async fn run(args: MigrateArgs) -> Result<ExitCode, CliError> {
    let config = TenancyConfig::from_env()?;
    let source = load(&args.source, "--source").await?;
    let shared_source = match &args.shared_source {
        Some(dir) => Some(load(dir, "--shared-source").await?),
        None => None,
    };
    // In an RLS deployment the tenants share their tables: the folder is theirs.
    let migrations = if config.effective_isolation() == IsolationMode::Rls {
        DeploymentMigrations {
            tenant: None,
            shared: Some(source),
        }
    } else {
        DeploymentMigrations {
            tenant: Some(source),
            shared: shared_source,
        }
    };
    let deployment = Deployment::connect(&config, DeploymentMigrations::default(), None).await?;
    let tenants = list_all(deployment.store().as_ref(), None).await?;
    let target = deployment.migration_target(migrations);

    let mut options = MigrateOptions::new().dry_run(args.dry_run);
    if let Some(concurrency) = args.concurrency {
        options = options.concurrency(usize::from(concurrency));
    }
    let progress = Progress::new();
    let options = {
        let progress = progress.clone();
        options.on_progress(move |event| progress.show(event))
    };
    let report = migrate_all(&target, tenants, &options).await;
    progress.finish();

    print_report(&report)?;
    if report.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::MigrationFailed {
            failed: report.failed(),
            total: report.tenants.len(),
        })
    }
}

async fn load(dir: &Path, variable: &'static str) -> Result<TenantMigrations, CliError> {
    TenantMigrations::from_dir(dir)
        .await
        .map_err(|source| CliError::Migrations { variable, source })
}

/// How progress is shown: a bar on a terminal, else one line per tenant on stderr.
#[derive(Clone)]
enum Progress {
    Bar(ProgressBar),
    Lines,
}

impl Progress {
    fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::Lines;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} tenants ({eta} left) {msg}")
        {
            bar.set_style(style);
        }
        Self::Bar(bar)
    }

    fn show(&self, event: ProgressEvent<'_>) {
        match (self, event) {
            (Self::Bar(bar), ProgressEvent::Started { total }) => bar.set_length(total as u64),
            (Self::Bar(bar), ProgressEvent::TenantDone { tenant, .. }) => {
                if tenant.outcome.is_failure() {
                    bar.println(line(tenant));
                }
                bar.set_message(tenant.identifier.to_string());
                bar.inc(1);
            }
            (Self::Lines, ProgressEvent::Started { total }) => {
                eprintln!("migrating {total} tenants");
            }
            (
                Self::Lines,
                ProgressEvent::TenantDone {
                    tenant,
                    done,
                    total,
                },
            ) => {
                eprintln!("[{done}/{total}] {}", line(tenant));
            }
            (_, ProgressEvent::Finished { .. }) => {}
        }
    }

    fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn versions(versions: &[i64]) -> String {
    versions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One tenant's line: `acme: applied 1, 2`, `acme: already current`, `acme: pending 3`,
/// `acme: failed: <error>`.
fn line(tenant: &TenantReport) -> String {
    let outcome = match &tenant.outcome {
        TenantOutcome::Applied(applied) => format!("applied {}", versions(applied)),
        TenantOutcome::AlreadyCurrent => "already current".to_owned(),
        TenantOutcome::Pending(pending) => format!("pending {}", versions(pending)),
        TenantOutcome::Failed { error, applied } if applied.is_empty() => {
            format!("failed: {error}")
        }
        TenantOutcome::Failed { error, applied } => {
            format!(
                "failed: {error} (applied before the failure: {})",
                versions(applied)
            )
        }
    };
    format!("{}: {outcome}", tenant.identifier)
}

fn print_report(report: &MigrationReport) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for tenant in &report.tenants {
        writeln!(out, "{}", line(tenant))?;
    }
    writeln!(out, "{report}")
}
