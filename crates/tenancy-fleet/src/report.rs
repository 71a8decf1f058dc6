//! What a fleet migration did: one outcome per tenant and the counts.

use std::fmt;
use std::time::Duration;

use tenancy_core::TenantIdentifier;

/// What happened to one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantOutcome {
    /// These versions were applied, ascending.
    Applied(Vec<i64>),
    /// Nothing was pending.
    AlreadyCurrent,
    /// Dry run: these versions are pending, ascending.
    Pending(Vec<i64>),
    /// Migrating failed; `applied` lists the versions applied before the failure.
    Failed {
        /// The error, as text.
        error: String,
        /// Versions applied before the failure, ascending.
        applied: Vec<i64>,
    },
}

impl TenantOutcome {
    /// Whether this is a failure.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}

/// One tenant's line of a [`MigrationReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantReport {
    /// The tenant.
    pub identifier: TenantIdentifier,
    /// What happened.
    pub outcome: TenantOutcome,
    /// How long the tenant took.
    pub elapsed: Duration,
}

/// The result of [`crate::migrate_all`]: one line per tenant migrated, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// One line per tenant that was not skipped, in the order the tenants were given.
    pub tenants: Vec<TenantReport>,
    /// Deleted tenants that were skipped.
    pub skipped_deleted: usize,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// How long the whole run took.
    pub elapsed: Duration,
}

impl MigrationReport {
    fn count(&self, matches: impl Fn(&TenantOutcome) -> bool) -> usize {
        self.tenants.iter().filter(|t| matches(&t.outcome)).count()
    }

    /// Tenants that had migrations applied.
    pub fn applied(&self) -> usize {
        self.count(|o| matches!(o, TenantOutcome::Applied(_)))
    }

    /// Tenants that were already current.
    pub fn already_current(&self) -> usize {
        self.count(|o| matches!(o, TenantOutcome::AlreadyCurrent))
    }

    /// Tenants with pending migrations (dry run).
    pub fn pending(&self) -> usize {
        self.count(|o| matches!(o, TenantOutcome::Pending(_)))
    }

    /// Tenants that failed.
    pub fn failed(&self) -> usize {
        self.count(TenantOutcome::is_failure)
    }

    /// The failed tenants' lines.
    pub fn failures(&self) -> impl Iterator<Item = &TenantReport> {
        self.tenants.iter().filter(|t| t.outcome.is_failure())
    }

    /// The line of `identifier`, if it was migrated.
    pub fn get(&self, identifier: &str) -> Option<&TenantReport> {
        self.tenants
            .iter()
            .find(|t| t.identifier.as_str() == identifier)
    }

    /// Whether no tenant failed.
    pub fn is_success(&self) -> bool {
        self.failed() == 0
    }
}

impl fmt::Display for MigrationReport {
    /// One summary line, e.g. `20 tenants in 1.2s: 19 applied, 0 already current, 1 failed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tenants in {:.1?}: ",
            self.tenants.len(),
            self.elapsed
        )?;
        if self.dry_run {
            write!(f, "{} pending, ", self.pending())?;
        } else {
            write!(f, "{} applied, ", self.applied())?;
        }
        write!(
            f,
            "{} already current, {} failed",
            self.already_current(),
            self.failed()
        )?;
        if self.skipped_deleted > 0 {
            write!(f, " ({} deleted skipped)", self.skipped_deleted)?;
        }
        Ok(())
    }
}
