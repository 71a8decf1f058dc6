//! An in-process tenant registry for tests, examples and single-instance tools.

use std::collections::BTreeMap;
use std::sync::RwLock;

use async_trait::async_trait;
use chrono::Utc;

use crate::identifier::TenantIdentifier;
use crate::store::{ListQuery, StoreError, TenantStore};
use crate::tenant::{
    Metadata, NewTenant, Tenant, TenantId, TenantStatus, TenantUpdate, merge_metadata,
};

/// A [`TenantStore`] held in memory. Every operation takes one lock, so creates, status
/// changes and metadata merges are atomic.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use tenancy_core::{MemoryStore, NewTenant, TenantIdentifier, TenantStore};
/// let store = MemoryStore::new();
/// let id = TenantIdentifier::parse("acme").unwrap();
/// store.create(NewTenant::new(id.clone(), "Acme")).await.unwrap();
/// assert_eq!(store.get(&id).await.unwrap().unwrap().name, "Acme");
/// # });
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    tenants: RwLock<BTreeMap<TenantIdentifier, Tenant>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<TenantIdentifier, Tenant>> {
        self.tenants
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<TenantIdentifier, Tenant>> {
        self.tenants
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn modify(
        &self,
        identifier: &TenantIdentifier,
        change: impl FnOnce(&BTreeMap<TenantIdentifier, Tenant>, &mut Tenant) -> Result<(), StoreError>,
    ) -> Result<Tenant, StoreError> {
        let mut tenants = self.write();
        let mut tenant = tenants
            .get(identifier)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(identifier.clone()))?;
        change(&tenants, &mut tenant)?;
        tenant.updated_at = Utc::now();
        tenants.insert(identifier.clone(), tenant.clone());
        Ok(tenant)
    }
}

/// Domains are kept sorted and unique, as every store returns them.
fn normalise_domains(domains: &mut Vec<String>) {
    domains.sort_unstable();
    domains.dedup();
}

fn domain_owner<'a>(
    tenants: &'a BTreeMap<TenantIdentifier, Tenant>,
    domain: &str,
) -> Option<&'a Tenant> {
    tenants
        .values()
        .find(|t| t.domains.iter().any(|d| d == domain))
}

fn check_domains_free(
    tenants: &BTreeMap<TenantIdentifier, Tenant>,
    owner: &TenantIdentifier,
    domains: &[String],
) -> Result<(), StoreError> {
    for domain in domains {
        if domain_owner(tenants, domain).is_some_and(|t| &t.identifier != owner) {
            return Err(StoreError::DomainTaken(domain.clone()));
        }
    }
    Ok(())
}

#[async_trait]
impl TenantStore for MemoryStore {
    async fn get(&self, identifier: &TenantIdentifier) -> Result<Option<Tenant>, StoreError> {
        Ok(self.read().get(identifier).cloned())
    }

    async fn get_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        Ok(self.read().values().find(|t| t.id == id).cloned())
    }

    async fn get_by_domain(&self, domain: &str) -> Result<Option<Tenant>, StoreError> {
        Ok(domain_owner(&self.read(), domain).cloned())
    }

    async fn create(&self, new: NewTenant) -> Result<Tenant, StoreError> {
        new.validate()?;
        let mut tenants = self.write();
        if tenants.contains_key(&new.identifier) {
            return Err(StoreError::AlreadyExists(new.identifier));
        }
        check_domains_free(&tenants, &new.identifier, &new.domains)?;
        let mut tenant = new.into_tenant();
        normalise_domains(&mut tenant.domains);
        tenants.insert(tenant.identifier.clone(), tenant.clone());
        Ok(tenant)
    }

    async fn update(
        &self,
        identifier: &TenantIdentifier,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError> {
        update.validate()?;
        self.modify(identifier, |tenants, tenant| {
            if let Some(domains) = &update.domains {
                check_domains_free(tenants, identifier, domains)?;
            }
            update.apply(tenant);
            normalise_domains(&mut tenant.domains);
            Ok(())
        })
    }

    async fn set_status(
        &self,
        identifier: &TenantIdentifier,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError> {
        self.modify(identifier, |_, tenant| {
            tenant.status = tenant.status.transition(status)?;
            Ok(())
        })
    }

    async fn update_metadata(
        &self,
        identifier: &TenantIdentifier,
        patch: Metadata,
    ) -> Result<Tenant, StoreError> {
        self.modify(identifier, |_, tenant| {
            merge_metadata(&mut tenant.metadata, patch);
            Ok(())
        })
    }

    async fn delete(&self, identifier: &TenantIdentifier) -> Result<bool, StoreError> {
        Ok(self.write().remove(identifier).is_some())
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Tenant>, StoreError> {
        let tenants = self.read();
        let start = match &query.after {
            Some(after) => std::ops::Bound::Excluded(after.clone()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(tenants
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, t)| t)
            .filter(|t| query.status.is_none_or(|s| t.status == s))
            .take(query.effective_limit() as usize)
            .cloned()
            .collect())
    }

    async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError> {
        Ok(self
            .read()
            .values()
            .filter(|t| status.is_none_or(|s| t.status == s))
            .count() as u64)
    }
}
