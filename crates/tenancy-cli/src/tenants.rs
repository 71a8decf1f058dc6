//! `tenancy tenants …`: the lifecycle operations, through the tenant manager so that
//! provisioning and purging happen exactly as in the server.

use std::io::Write as _;
use std::sync::Arc;

use tenancy::identifier::IdentifierError;
use tenancy::manager::TenantManager;
use tenancy::redis::{CachedStore, CachedStoreSettings};
use tenancy::{
    ListQuery, NewTenant, StoreError, TenancyConfig, Tenant, TenantIdentifier, TenantStatus,
    TenantStore,
};
use tenancy_fleet::TenantMigrations;
use tenancy_fleet::deployment::{Deployment, DeploymentMigrations};

use crate::TenantsCommand;
use crate::error::CliError;

/// A `tenants` command with its identifier checked.
enum Operation {
    Create(NewTenant),
    List {
        json: bool,
        status: Option<TenantStatus>,
    },
    Show {
        identifier: TenantIdentifier,
        json: bool,
    },
    Suspend(TenantIdentifier),
    Activate(TenantIdentifier),
    Delete {
        identifier: TenantIdentifier,
        purge: bool,
    },
}

impl Operation {
    /// Checks the command's identifier (new ones against the configured policy, which also
    /// refuses reserved identifiers).
    fn check(command: TenantsCommand, config: &TenancyConfig) -> Result<Self, CliError> {
        let existing = |input: &str| parse(input, TenantIdentifier::parse);
        Ok(match command {
            TenantsCommand::Create {
                identifier,
                name,
                tier,
                placement,
            } => {
                let identifier =
                    parse(&identifier, |input| config.identifier_policy().parse(input))?;
                let mut new = NewTenant::new(identifier, name);
                new.tier = tier;
                new.placement = placement;
                Self::Create(new)
            }
            TenantsCommand::List { json, status } => Self::List { json, status },
            TenantsCommand::Show { identifier, json } => Self::Show {
                identifier: existing(&identifier)?,
                json,
            },
            TenantsCommand::Suspend { identifier } => Self::Suspend(existing(&identifier)?),
            TenantsCommand::Activate { identifier } => Self::Activate(existing(&identifier)?),
            TenantsCommand::Delete { identifier, purge } => Self::Delete {
                identifier: existing(&identifier)?,
                purge,
            },
        })
    }
}

/// Runs one `tenants` command.
pub async fn run(command: TenantsCommand) -> Result<(), CliError> {
    let config = TenancyConfig::from_env()?;
    let operation = Operation::check(command, &config)?;
    let migrations = DeploymentMigrations {
        tenant: tenant_migrations(&config).await?,
        shared: None,
    };
    let deployment = Deployment::connect(&config, migrations, None).await?;
    let mut manager = TenantManager::new(deployment.store(), deployment.provisioner())
        .with_hook(deployment.placement_check());
    if let Some(url) = &config.redis_url {
        // Running servers sharing this Redis evict the tenant at once instead of after their
        // cache TTL: the cached store publishes every lifecycle change.
        let client = tenancy::redis::redis::Client::open(url.expose()).map_err(CliError::Redis)?;
        let cached = CachedStore::connect(
            client,
            deployment.store(),
            CachedStoreSettings::from_config(&config),
        )
        .await
        .map_err(CliError::Redis)?;
        manager = manager.with_hook(Arc::new(cached));
    }
    let mut out = std::io::stdout().lock();
    match operation {
        Operation::Create(new) => {
            let tenant = manager.register(new).await?;
            writeln!(out, "created tenant '{}'", tenant.identifier)?;
            describe(&mut out, &tenant)?;
        }
        Operation::List { json, status } => {
            let tenants = list_all(manager.store().as_ref(), status).await?;
            if json {
                writeln!(out, "{}", to_json(&tenants)?)?;
            } else {
                writeln!(
                    out,
                    "{:<32} {:<20} {:<12} NAME",
                    "IDENTIFIER", "STATUS", "TIER"
                )?;
                for tenant in &tenants {
                    writeln!(
                        out,
                        "{:<32} {:<20} {:<12} {}",
                        tenant.identifier.as_str(),
                        tenant.status.as_str(),
                        tenant.tier,
                        tenant.name
                    )?;
                }
            }
        }
        Operation::Show { identifier, json } => {
            let tenant = manager
                .store()
                .get(&identifier)
                .await?
                .ok_or(StoreError::NotFound(identifier))?;
            if json {
                writeln!(out, "{}", to_json(&tenant)?)?;
            } else {
                describe(&mut out, &tenant)?;
            }
        }
        Operation::Suspend(identifier) => {
            let tenant = manager.suspend(&identifier).await?;
            writeln!(out, "tenant '{}' is {}", tenant.identifier, tenant.status)?;
        }
        Operation::Activate(identifier) => {
            let tenant = manager.activate(&identifier).await?;
            writeln!(out, "tenant '{}' is {}", tenant.identifier, tenant.status)?;
        }
        Operation::Delete {
            identifier,
            purge: true,
        } => {
            manager.purge(&identifier).await?;
            writeln!(
                out,
                "tenant '{identifier}' purged: its data and registry row are gone"
            )?;
        }
        Operation::Delete {
            identifier,
            purge: false,
        } => {
            let tenant = manager.delete(&identifier).await?;
            writeln!(
                out,
                "tenant '{}' is {} (its data is kept; --purge removes it)",
                tenant.identifier, tenant.status
            )?;
        }
    }
    Ok(())
}

fn parse(
    input: &str,
    parse: impl FnOnce(&str) -> Result<TenantIdentifier, IdentifierError>,
) -> Result<TenantIdentifier, CliError> {
    parse(input).map_err(|source| CliError::Identifier {
        input: input.to_owned(),
        source,
    })
}

/// The migrations of `TENANCY_MIGRATIONS_DIR`, if set.
async fn tenant_migrations(config: &TenancyConfig) -> Result<Option<TenantMigrations>, CliError> {
    match &config.migrations_dir {
        Some(dir) => TenantMigrations::from_dir(dir)
            .await
            .map(Some)
            .map_err(|source| CliError::Migrations {
                variable: "TENANCY_MIGRATIONS_DIR",
                source,
            }),
        None => Ok(None),
    }
}

/// Every tenant of `store` (in `status`, if given), page by page.
pub async fn list_all(
    store: &dyn TenantStore,
    status: Option<TenantStatus>,
) -> Result<Vec<Tenant>, CliError> {
    let mut tenants: Vec<Tenant> = Vec::new();
    loop {
        let mut query = ListQuery::first(ListQuery::MAX_LIMIT);
        if let Some(status) = status {
            query = query.with_status(status);
        }
        if let Some(last) = tenants.last() {
            query = query.after(last.identifier.clone());
        }
        let page = store.list(query).await?;
        let full = page.len() == ListQuery::MAX_LIMIT as usize;
        tenants.extend(page);
        if !full {
            return Ok(tenants);
        }
    }
}

fn to_json(value: &(impl serde::Serialize + ?Sized)) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.into()))
}

fn describe(out: &mut impl std::io::Write, tenant: &Tenant) -> std::io::Result<()> {
    writeln!(out, "identifier: {}", tenant.identifier)?;
    writeln!(out, "name:       {}", tenant.name)?;
    writeln!(out, "status:     {}", tenant.status)?;
    writeln!(out, "tier:       {}", tenant.tier)?;
    if let Some(isolation) = tenant.isolation {
        writeln!(out, "isolation:  {isolation}")?;
    }
    if let Some(placement) = &tenant.placement {
        writeln!(out, "placement:  {placement}")?;
    }
    if !tenant.domains.is_empty() {
        writeln!(out, "domains:    {}", tenant.domains.join(", "))?;
    }
    writeln!(out, "id:         {}", tenant.id.0)?;
    writeln!(out, "created:    {}", tenant.created_at.to_rfc3339())?;
    writeln!(out, "updated:    {}", tenant.updated_at.to_rfc3339())
}
