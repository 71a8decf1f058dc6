//! The tenant manager: the lifecycle operations an operator or an admin API performs
//! (register, suspend, activate, delete, purge), each keeping the registry, the tenant's data
//! and every subscriber in step.
//!
//! Registration is `validate → registry row in provisioning → provision (schema, database or
//! rows, then tenant migrations) → active`. A failure part-way leaves the tenant visibly
//! `provisioning_failed`; [`TenantManager::resume`] finishes it, [`TenantManager::purge`]
//! cleans it up. No data is created before its registry row exists, so there is never an
//! orphan schema or database without a row, and a tenant becomes `active` only after its
//! provisioning succeeded.

use std::sync::Arc;

use async_trait::async_trait;

use crate::cache::TenantCache;
use crate::identifier::TenantIdentifier;
use crate::store::{BoxError, StoreError, TenantStore};
use crate::tenant::{NewTenant, Tenant, TenantStatus};

/// Creates and removes a tenant's data in whatever isolation the deployment uses.
/// Both operations are idempotent: running them again after a partial run finishes the work.
#[async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// Creates the tenant's schema, database or rows and applies its migrations.
    async fn provision(&self, tenant: &Tenant) -> Result<(), BoxError>;

    /// Removes all the tenant's data.
    async fn purge(&self, tenant: &Tenant) -> Result<(), BoxError>;
}

/// A provisioner for deployments where tenants own no data of their own (tests, or an
/// application that creates tenant data itself).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProvisioning;

#[async_trait]
impl Provisioner for NoProvisioning {
    async fn provision(&self, _tenant: &Tenant) -> Result<(), BoxError> {
        Ok(())
    }
    async fn purge(&self, _tenant: &Tenant) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Something that happened to a tenant.
#[derive(Debug, Clone, PartialEq)]
pub enum LifecycleEvent {
    /// The registry row exists, in `provisioning`.
    Registered(Tenant),
    /// Provisioning finished; the tenant is `active`.
    Provisioned(Tenant),
    /// Provisioning failed; the tenant is `provisioning_failed`.
    ProvisioningFailed(Tenant),
    /// The tenant was suspended.
    Suspended(Tenant),
    /// The tenant was (re)activated.
    Activated(Tenant),
    /// The tenant was soft-deleted; its data is kept.
    Deleted(Tenant),
    /// The tenant's data and registry row are gone.
    Purged(TenantIdentifier),
}

impl LifecycleEvent {
    /// The identifier of the tenant the event is about.
    pub fn identifier(&self) -> &TenantIdentifier {
        match self {
            Self::Registered(t)
            | Self::Provisioned(t)
            | Self::ProvisioningFailed(t)
            | Self::Suspended(t)
            | Self::Activated(t)
            | Self::Deleted(t) => &t.identifier,
            Self::Purged(identifier) => identifier,
        }
    }
}

/// A subscriber to tenant lifecycle events. Caches invalidate on events; applications send
/// welcome mails, bill, or veto registrations.
#[async_trait]
pub trait LifecycleHook: Send + Sync + 'static {
    /// Called before a tenant is registered; an error refuses the registration.
    async fn before_register(&self, _new: &NewTenant) -> Result<(), BoxError> {
        Ok(())
    }

    /// Called after each lifecycle change, in order.
    async fn on_event(&self, _event: &LifecycleEvent) {}
}

/// The cache forgets a tenant on every lifecycle change, so a suspension takes effect on the
/// next request of this instance (other instances learn it through their own invalidation,
/// e.g. Redis, or the cache TTL).
#[async_trait]
impl LifecycleHook for TenantCache {
    async fn on_event(&self, event: &LifecycleEvent) {
        self.invalidate(event.identifier()).await;
        if let LifecycleEvent::Registered(tenant) = event {
            for domain in &tenant.domains {
                self.invalidate_domain(domain).await;
            }
        }
    }
}

/// What went wrong in a lifecycle operation.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The registry refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A `before_register` hook refused the tenant.
    #[error("registration of '{identifier}' refused: {reason}")]
    Refused {
        /// The tenant that was refused.
        identifier: TenantIdentifier,
        /// The hook's reason.
        #[source]
        reason: BoxError,
    },
    /// Creating or removing the tenant's data failed; the tenant is left in a visible state
    /// (`provisioning_failed`, or `deleted` for a purge) and the operation can be run again.
    #[error("provisioning of '{identifier}' failed: {source}")]
    Provisioning {
        /// The tenant concerned.
        identifier: TenantIdentifier,
        /// The provisioner's error.
        #[source]
        source: BoxError,
    },
}

/// Lifecycle operations over a registry and a provisioner.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use tenancy_core::{MemoryStore, NewTenant, TenantIdentifier, TenantStatus};
/// use tenancy_core::manager::{NoProvisioning, TenantManager};
///
/// let manager = TenantManager::new(Arc::new(MemoryStore::new()), Arc::new(NoProvisioning));
/// let acme = TenantIdentifier::parse("acme").unwrap();
/// let tenant = manager.register(NewTenant::new(acme.clone(), "Acme")).await.unwrap();
/// assert_eq!(tenant.status, TenantStatus::Active);
/// assert_eq!(manager.suspend(&acme).await.unwrap().status, TenantStatus::Suspended);
/// # });
/// ```
#[derive(Clone)]
pub struct TenantManager {
    store: Arc<dyn TenantStore>,
    provisioner: Arc<dyn Provisioner>,
    hooks: Vec<Arc<dyn LifecycleHook>>,
}

impl std::fmt::Debug for TenantManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantManager")
            .field("hooks", &self.hooks.len())
            .finish_non_exhaustive()
    }
}

impl TenantManager {
    /// A manager over `store` that creates tenant data with `provisioner`.
    pub fn new(store: Arc<dyn TenantStore>, provisioner: Arc<dyn Provisioner>) -> Self {
        Self {
            store,
            provisioner,
            hooks: Vec::new(),
        }
    }

    /// Adds a lifecycle subscriber; hooks run in the order they were added.
    pub fn with_hook(mut self, hook: Arc<dyn LifecycleHook>) -> Self {
        self.hooks.push(hook);
        self
    }

    /// The registry.
    pub fn store(&self) -> &Arc<dyn TenantStore> {
        &self.store
    }

    async fn emit(&self, event: LifecycleEvent) {
        for hook in &self.hooks {
            hook.on_event(&event).await;
        }
    }

    /// Registers and provisions a tenant; returns it `active`.
    ///
    /// A duplicate identifier is [`StoreError::AlreadyExists`] (also under concurrent
    /// registrations: exactly one wins, and only the winner provisions).
    pub async fn register(&self, new: NewTenant) -> Result<Tenant, ManagerError> {
        for hook in &self.hooks {
            hook.before_register(&new)
                .await
                .map_err(|reason| ManagerError::Refused {
                    identifier: new.identifier.clone(),
                    reason,
                })?;
        }
        let tenant = self
            .store
            .create(new.with_status(TenantStatus::Provisioning))
            .await?;
        self.emit(LifecycleEvent::Registered(tenant.clone())).await;
        self.provision(tenant).await
    }

    /// Finishes the provisioning of a tenant left `provisioning` or `provisioning_failed` by an
    /// error or a crash. An `active` tenant is returned as it is.
    pub async fn resume(&self, identifier: &TenantIdentifier) -> Result<Tenant, ManagerError> {
        let tenant = self.get_existing(identifier).await?;
        match tenant.status {
            TenantStatus::Active => Ok(tenant),
            TenantStatus::Provisioning => self.provision(tenant).await,
            _ => {
                let tenant = self
                    .store
                    .set_status(identifier, TenantStatus::Provisioning)
                    .await?;
                self.provision(tenant).await
            }
        }
    }

    async fn provision(&self, tenant: Tenant) -> Result<Tenant, ManagerError> {
        if let Err(source) = self.provisioner.provision(&tenant).await {
            let failed = self
                .store
                .set_status(&tenant.identifier, TenantStatus::ProvisioningFailed)
                .await?;
            self.emit(LifecycleEvent::ProvisioningFailed(failed)).await;
            return Err(ManagerError::Provisioning {
                identifier: tenant.identifier,
                source,
            });
        }
        let active = self
            .store
            .set_status(&tenant.identifier, TenantStatus::Active)
            .await?;
        self.emit(LifecycleEvent::Provisioned(active.clone())).await;
        Ok(active)
    }

    async fn get_existing(&self, identifier: &TenantIdentifier) -> Result<Tenant, ManagerError> {
        self.store
            .get(identifier)
            .await?
            .ok_or_else(|| StoreError::NotFound(identifier.clone()).into())
    }

    async fn change_status(
        &self,
        identifier: &TenantIdentifier,
        status: TenantStatus,
        event: fn(Tenant) -> LifecycleEvent,
    ) -> Result<Tenant, ManagerError> {
        let tenant = self.store.set_status(identifier, status).await?;
        self.emit(event(tenant.clone())).await;
        Ok(tenant)
    }

    /// Suspends an active tenant: its requests get 403 until it is activated.
    pub async fn suspend(&self, identifier: &TenantIdentifier) -> Result<Tenant, ManagerError> {
        self.change_status(
            identifier,
            TenantStatus::Suspended,
            LifecycleEvent::Suspended,
        )
        .await
    }

    /// Activates a suspended tenant.
    pub async fn activate(&self, identifier: &TenantIdentifier) -> Result<Tenant, ManagerError> {
        self.change_status(identifier, TenantStatus::Active, LifecycleEvent::Activated)
            .await
    }

    /// Soft-deletes a tenant: requests get 404, its data is kept until [`Self::purge`].
    pub async fn delete(&self, identifier: &TenantIdentifier) -> Result<Tenant, ManagerError> {
        self.change_status(identifier, TenantStatus::Deleted, LifecycleEvent::Deleted)
            .await
    }

    /// Removes a tenant for good: marks it deleted (so no request is served while its data
    /// goes), removes its data, then its registry row. If removing the data fails, the tenant
    /// stays `deleted` and purge can be run again. Re-registering the identifier afterwards
    /// starts empty.
    pub async fn purge(&self, identifier: &TenantIdentifier) -> Result<(), ManagerError> {
        let tenant = self.get_existing(identifier).await?;
        let tenant = if tenant.status == TenantStatus::Deleted {
            tenant
        } else {
            self.delete(identifier).await?
        };
        self.provisioner
            .purge(&tenant)
            .await
            .map_err(|source| ManagerError::Provisioning {
                identifier: identifier.clone(),
                source,
            })?;
        self.store.delete(identifier).await?;
        self.emit(LifecycleEvent::Purged(identifier.clone())).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::MemoryStore;

    #[derive(Default)]
    struct FlakyProvisioner {
        fail_next: AtomicUsize,
        provisioned: AtomicUsize,
        purged: AtomicUsize,
    }

    #[async_trait]
    impl Provisioner for FlakyProvisioner {
        async fn provision(&self, _tenant: &Tenant) -> Result<(), BoxError> {
            if self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("disk full".into());
            }
            self.provisioned.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn purge(&self, _tenant: &Tenant) -> Result<(), BoxError> {
            self.purged.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait]
    impl LifecycleHook for Recorder {
        async fn before_register(&self, new: &NewTenant) -> Result<(), BoxError> {
            if new.name == "refuse me" {
                return Err("no".into());
            }
            Ok(())
        }
        async fn on_event(&self, event: &LifecycleEvent) {
            let name = format!("{event:?}");
            let kind = name.split('(').next().unwrap_or_default().to_owned();
            self.0.lock().unwrap().push(kind);
        }
    }

    fn id(s: &str) -> TenantIdentifier {
        TenantIdentifier::parse(s).unwrap()
    }

    fn setup() -> (TenantManager, Arc<FlakyProvisioner>, Arc<Recorder>) {
        let provisioner = Arc::new(FlakyProvisioner::default());
        let recorder = Arc::new(Recorder::default());
        let manager = TenantManager::new(Arc::new(MemoryStore::new()), provisioner.clone())
            .with_hook(recorder.clone());
        (manager, provisioner, recorder)
    }

    #[tokio::test]
    async fn full_lifecycle_emits_events_in_order() {
        let (manager, provisioner, recorder) = setup();
        let acme = id("acme");
        manager
            .register(NewTenant::new(acme.clone(), "Acme"))
            .await
            .unwrap();
        manager.suspend(&acme).await.unwrap();
        manager.activate(&acme).await.unwrap();
        manager.delete(&acme).await.unwrap();
        manager.purge(&acme).await.unwrap();
        assert!(manager.store().get(&acme).await.unwrap().is_none());
        assert_eq!(provisioner.purged.load(Ordering::SeqCst), 1);
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                "Registered",
                "Provisioned",
                "Suspended",
                "Activated",
                "Deleted",
                "Purged"
            ]
        );
        let again = manager
            .register(NewTenant::new(acme, "Acme 2"))
            .await
            .unwrap();
        assert_eq!(again.name, "Acme 2");
    }

    #[tokio::test]
    async fn failed_provisioning_is_visible_and_resumable() {
        let (manager, provisioner, _) = setup();
        provisioner.fail_next.store(1, Ordering::SeqCst);
        let acme = id("acme");
        let err = manager
            .register(NewTenant::new(acme.clone(), "Acme"))
            .await
            .unwrap_err();
        assert!(matches!(err, ManagerError::Provisioning { .. }), "{err}");
        let stored = manager.store().get(&acme).await.unwrap().unwrap();
        assert_eq!(stored.status, TenantStatus::ProvisioningFailed);
        let resumed = manager.resume(&acme).await.unwrap();
        assert_eq!(resumed.status, TenantStatus::Active);
        assert_eq!(
            manager.resume(&acme).await.unwrap().status,
            TenantStatus::Active
        );
        assert_eq!(provisioner.provisioned.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn hooks_can_refuse_and_invalid_moves_are_typed() {
        let (manager, _, _) = setup();
        let err = manager
            .register(NewTenant::new(id("acme"), "refuse me"))
            .await
            .unwrap_err();
        assert!(matches!(err, ManagerError::Refused { .. }));
        assert!(manager.store().get(&id("acme")).await.unwrap().is_none());

        manager
            .register(NewTenant::new(id("beta"), "Beta"))
            .await
            .unwrap();
        manager.delete(&id("beta")).await.unwrap();
        let err = manager.activate(&id("beta")).await.unwrap_err();
        assert!(
            matches!(err, ManagerError::Store(StoreError::Transition(_))),
            "{err}"
        );
        let err = manager.suspend(&id("nobody")).await.unwrap_err();
        assert!(
            matches!(err, ManagerError::Store(StoreError::NotFound(_))),
            "{err}"
        );
    }

    #[tokio::test]
    async fn cache_forgets_on_lifecycle_changes() {
        use crate::cache::{CacheSettings, TenantCache};
        let store: Arc<dyn TenantStore> = Arc::new(MemoryStore::new());
        let cache = TenantCache::new(
            store.clone(),
            CacheSettings {
                max_entries: 100,
                ttl: std::time::Duration::from_secs(3600),
                negative_ttl: std::time::Duration::from_secs(3600),
            },
        );
        let manager =
            TenantManager::new(store, Arc::new(NoProvisioning)).with_hook(Arc::new(cache.clone()));
        let acme = id("acme");
        assert!(
            cache.get(&acme).await.unwrap().is_none(),
            "cached as unknown"
        );
        manager
            .register(NewTenant::new(acme.clone(), "Acme"))
            .await
            .unwrap();
        assert!(cache.get(&acme).await.unwrap().unwrap().is_active());
        manager.suspend(&acme).await.unwrap();
        let cached = cache.get(&acme).await.unwrap().unwrap();
        assert_eq!(cached.status, TenantStatus::Suspended);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_registrations_provision_once() {
        let (manager, provisioner, _) = setup();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let manager = manager.clone();
                tokio::spawn(
                    async move { manager.register(NewTenant::new(id("acme"), "Acme")).await },
                )
            })
            .collect();
        let mut ok = 0;
        let mut exists = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => ok += 1,
                Err(ManagerError::Store(StoreError::AlreadyExists(_))) => exists += 1,
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert_eq!((ok, exists), (1, 99));
        assert_eq!(provisioner.provisioned.load(Ordering::SeqCst), 1);
    }
}
