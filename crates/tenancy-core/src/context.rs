//! The task-local current tenant.
//!
//! The request pipeline runs each request's handler inside [`scope`], so code deep in a call
//! stack can ask for [`current`] without threading the tenant through every signature. Outside
//! any scope there is no tenant: [`current`] returns [`NoTenant`], never a default tenant.
//!
//! A task-local does not follow `tokio::spawn`; use [`spawn`] to carry the tenant into a
//! spawned task.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::task::futures::TaskLocalFuture;

use crate::tenant::Tenant;

tokio::task_local! {
    static CURRENT_TENANT: Arc<Tenant>;
}

/// There is no current tenant: the code runs outside any [`scope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no current tenant: the code runs outside a tenant scope")]
pub struct NoTenant;

/// Runs `future` with `tenant` as the current tenant. Scopes nest; the innermost wins.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use tenancy_core::{NewTenant, TenantIdentifier, context};
///
/// let tenant = NewTenant::new(TenantIdentifier::parse("acme").unwrap(), "Acme").into_tenant();
/// let name = context::scope(Arc::new(tenant), async {
///     context::current().unwrap().name.clone()
/// })
/// .await;
/// assert_eq!(name, "Acme");
/// assert!(context::current().is_err());
/// # });
/// ```
pub fn scope<F: Future>(tenant: Arc<Tenant>, future: F) -> TaskLocalFuture<Arc<Tenant>, F> {
    CURRENT_TENANT.scope(tenant, future)
}

/// The current tenant, or [`NoTenant`] outside any [`scope`].
pub fn current() -> Result<Arc<Tenant>, NoTenant> {
    CURRENT_TENANT.try_with(Arc::clone).map_err(|_| NoTenant)
}

/// Calls `f` with the current tenant without cloning the `Arc`, or returns [`NoTenant`].
pub fn try_with<R>(f: impl FnOnce(&Tenant) -> R) -> Result<R, NoTenant> {
    CURRENT_TENANT
        .try_with(|tenant| f(tenant))
        .map_err(|_| NoTenant)
}

/// Spawns `future` on the Tokio runtime inside a scope of the current tenant.
///
/// Outside any scope nothing is spawned and [`NoTenant`] is returned, so a background task can
/// never run without a tenant by accident. Like `tokio::spawn`, this panics when called outside
/// a Tokio runtime.
pub fn spawn<F>(future: F) -> Result<JoinHandle<F::Output>, NoTenant>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tenant = current()?;
    Ok(tokio::spawn(scope(tenant, future)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identifier::TenantIdentifier;
    use crate::tenant::NewTenant;

    fn tenant(identifier: &str) -> Arc<Tenant> {
        Arc::new(
            NewTenant::new(TenantIdentifier::parse(identifier).unwrap(), identifier).into_tenant(),
        )
    }

    #[tokio::test]
    async fn no_tenant_outside_a_scope() {
        assert_eq!(current().unwrap_err(), NoTenant);
        assert_eq!(try_with(|t| t.name.clone()).unwrap_err(), NoTenant);
        assert!(spawn(async {}).is_err());
    }

    #[tokio::test]
    async fn scope_sets_and_nests() {
        scope(tenant("acme"), async {
            assert_eq!(current().unwrap().identifier.as_str(), "acme");
            scope(tenant("globex"), async {
                assert_eq!(try_with(|t| t.name.clone()).unwrap(), "globex");
            })
            .await;
            tokio::task::yield_now().await;
            assert_eq!(current().unwrap().identifier.as_str(), "acme");
        })
        .await;
        assert!(current().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawn_carries_the_tenant() {
        // Awaited outside the scope: the spawned task carries its own copy of the tenant.
        let handle = scope(tenant("acme"), async {
            Some(
                spawn(async {
                    tokio::task::yield_now().await;
                    current().unwrap().identifier.to_string()
                })
                .unwrap(),
            )
        })
        .await
        .unwrap();
        assert_eq!(handle.await.unwrap(), "acme");
        // A plain tokio::spawn does not inherit the tenant.
        let plain = scope(tenant("acme"), async {
            tokio::spawn(async { current() }).await
        })
        .await;
        assert_eq!(plain.unwrap().unwrap_err(), NoTenant);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scopes_do_not_leak() {
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let name = format!("tenant-{i}");
                tokio::spawn(scope(tenant(&name), async move {
                    for _ in 0..10 {
                        tokio::task::yield_now().await;
                        assert_eq!(current().unwrap().identifier.as_str(), name);
                    }
                }))
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_panic_inside_a_scope_leaves_no_tenant_behind() {
        let result = tokio::spawn(scope(tenant("acme"), async { panic!("boom") })).await;
        assert!(result.unwrap_err().is_panic());
        assert!(current().is_err());
    }
}
