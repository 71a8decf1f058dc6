//! The migrate-all runner: every tenant of a list through one [`MigrationTarget`] with bounded
//! concurrency, progress events for a CLI, and a [`MigrationReport`].

use std::fmt;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{FutureExt, StreamExt, stream};
use tenancy_core::{Tenant, TenantStatus};

use crate::report::{MigrationReport, TenantOutcome, TenantReport};
use crate::target::MigrationTarget;

/// What [`migrate_all`] tells its progress callback. A CLI draws a bar from `Started` and
/// `TenantDone` on a terminal, or prints one line per event otherwise.
#[derive(Debug, Clone, Copy)]
pub enum ProgressEvent<'a> {
    /// The run begins with `total` tenants (deleted ones already left out).
    Started {
        /// Tenants to migrate.
        total: usize,
    },
    /// One tenant is done (in completion order, not input order).
    TenantDone {
        /// Its line of the report.
        tenant: &'a TenantReport,
        /// Tenants done so far, this one included.
        done: usize,
        /// Tenants in the run.
        total: usize,
    },
    /// The run is over.
    Finished {
        /// The final report.
        report: &'a MigrationReport,
    },
}

type ProgressCallback = Arc<dyn Fn(ProgressEvent<'_>) + Send + Sync>;

/// How [`migrate_all`] runs.
///
/// ```
/// use tenancy_fleet::MigrateOptions;
/// let options = MigrateOptions::new()
///     .concurrency(8)
///     .dry_run(true)
///     .on_progress(|event| eprintln!("{event:?}"));
/// assert_eq!(options.max_concurrency(), 8);
/// ```
#[derive(Clone)]
pub struct MigrateOptions {
    concurrency: usize,
    dry_run: bool,
    progress: Option<ProgressCallback>,
}

impl fmt::Debug for MigrateOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigrateOptions")
            .field("concurrency", &self.concurrency)
            .field("dry_run", &self.dry_run)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl MigrateOptions {
    /// Applies, with `2 × available_parallelism` tenants at a time and no progress callback.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            concurrency: 2 * cores,
            dry_run: false,
            progress: None,
        }
    }

    /// At most `tenants` tenants migrate at once (at least 1). Keep it at or below the
    /// connection pool's size.
    pub fn concurrency(mut self, tenants: usize) -> Self {
        self.concurrency = tenants.max(1);
        self
    }

    /// Only list what is pending per tenant; change nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Calls `callback` for every [`ProgressEvent`]. It runs on the migrating task: keep it
    /// short (draw, log, or send to a channel).
    pub fn on_progress(
        mut self,
        callback: impl Fn(ProgressEvent<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.progress = Some(Arc::new(callback));
        self
    }

    /// The concurrency bound.
    pub fn max_concurrency(&self) -> usize {
        self.concurrency
    }

    /// Whether this is a dry run.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    fn emit(&self, event: ProgressEvent<'_>) {
        if let Some(progress) = &self.progress {
            progress(event);
        }
    }
}

/// Migrates every tenant of `tenants` through `target`, at most
/// [`MigrateOptions::concurrency`] at once, and reports per tenant.
///
/// - Deleted tenants are skipped (counted in [`MigrationReport::skipped_deleted`]); suspended,
///   provisioning and failed-provisioning tenants are migrated like active ones, so a tenant
///   coming back is current.
/// - A failing tenant does not stop the others; a panicking target counts as that tenant's
///   failure.
/// - A re-run is a no-op for current tenants ([`TenantOutcome::AlreadyCurrent`]).
/// - With [`MigrateOptions::dry_run`] every tenant gets [`TenantOutcome::Pending`] (or
///   `AlreadyCurrent`) and nothing changes.
///
/// The report lists tenants in the order given.
pub async fn migrate_all<T>(
    target: &T,
    tenants: impl IntoIterator<Item = Tenant>,
    options: &MigrateOptions,
) -> MigrationReport
where
    T: MigrationTarget + ?Sized,
{
    let started = Instant::now();
    let mut skipped_deleted = 0;
    let tenants: Vec<Tenant> = tenants
        .into_iter()
        .filter(|tenant| {
            let deleted = tenant.status == TenantStatus::Deleted;
            skipped_deleted += usize::from(deleted);
            !deleted
        })
        .collect();
    let total = tenants.len();
    options.emit(ProgressEvent::Started { total });

    let mut lines: Vec<Option<TenantReport>> = vec![None; total];
    let mut runs = stream::iter(tenants.into_iter().enumerate())
        .map(|(index, tenant)| async move { (index, migrate_one(target, tenant, options).await) })
        .buffer_unordered(options.concurrency);
    let mut done = 0;
    while let Some((index, line)) = runs.next().await {
        done += 1;
        options.emit(ProgressEvent::TenantDone {
            tenant: &line,
            done,
            total,
        });
        lines[index] = Some(line);
    }

    let report = MigrationReport {
        tenants: lines.into_iter().flatten().collect(),
        skipped_deleted,
        dry_run: options.dry_run,
        elapsed: started.elapsed(),
    };
    options.emit(ProgressEvent::Finished { report: &report });
    report
}

async fn migrate_one<T>(target: &T, tenant: Tenant, options: &MigrateOptions) -> TenantReport
where
    T: MigrationTarget + ?Sized,
{
    let started = Instant::now();
    let work = async {
        if options.dry_run {
            match target.pending(&tenant).await {
                Ok(pending) if pending.is_empty() => TenantOutcome::AlreadyCurrent,
                Ok(pending) => TenantOutcome::Pending(pending),
                Err(error) => TenantOutcome::Failed {
                    error: error.to_string(),
                    applied: Vec::new(),
                },
            }
        } else {
            match target.apply(&tenant).await {
                Ok(applied) if applied.is_empty() => TenantOutcome::AlreadyCurrent,
                Ok(applied) => TenantOutcome::Applied(applied),
                Err(failure) => TenantOutcome::Failed {
                    error: failure.error.to_string(),
                    applied: failure.applied,
                },
            }
        }
    };
    let outcome = AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| TenantOutcome::Failed {
            error: format!("migration panicked: {}", panic_message(&*panic)),
            applied: Vec::new(),
        });
    if let TenantOutcome::Failed { error, .. } = &outcome {
        tracing::warn!(tenant = %tenant.identifier, %error, "tenant migration failed");
    } else {
        tracing::debug!(tenant = %tenant.identifier, ?outcome, "tenant migrated");
    }
    TenantReport {
        identifier: tenant.identifier,
        outcome,
        elapsed: started.elapsed(),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
