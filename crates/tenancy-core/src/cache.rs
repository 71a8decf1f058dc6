//! An in-process tenant cache in front of any [`TenantStore`].
//!
//! Lookups by identifier and by custom domain are cached for `ttl`; lookups that found nothing
//! are cached as "not found" for `negative_ttl` (usually shorter), so a flood of unknown
//! identifiers reaches the registry once per identifier and per `negative_ttl`. Concurrent misses
//! for the same key are coalesced into one registry query. Registry errors are returned to every
//! waiting caller and never cached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use crate::identifier::TenantIdentifier;
use crate::store::{StoreError, TenantStore};
use crate::tenant::Tenant;

/// A cached lookup: the tenant, or `None` for "the registry has no such tenant".
type Lookup = Option<Arc<Tenant>>;

/// Sizes and lifetimes of a [`TenantCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// At most this many entries per cache (identifier cache and domain cache each).
    pub max_entries: u64,
    /// How long a found tenant is served from the cache.
    pub ttl: Duration,
    /// How long a "not found" answer is served from the cache.
    pub negative_ttl: Duration,
}

impl Default for CacheSettings {
    /// 10 000 entries, 60 s for found tenants, 5 s for unknown ones.
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
        }
    }
}

/// Per-entry expiry: `ttl` for found tenants, `negative_ttl` for "not found".
#[derive(Debug, Clone, Copy)]
struct LookupExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl LookupExpiry {
    fn lifetime(&self, value: &Lookup) -> Option<Duration> {
        Some(if value.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        })
    }
}

impl<K> Expiry<K, Lookup> for LookupExpiry {
    fn expire_after_create(&self, _key: &K, value: &Lookup, _at: Instant) -> Option<Duration> {
        self.lifetime(value)
    }

    fn expire_after_update(
        &self,
        _key: &K,
        value: &Lookup,
        _at: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        self.lifetime(value)
    }
}

/// A caching front for a tenant registry. Cheap to clone; clones share the cache.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use tenancy_core::cache::{CacheSettings, TenantCache};
/// use tenancy_core::{MemoryStore, NewTenant, TenantIdentifier, TenantStore};
///
/// let store = Arc::new(MemoryStore::new());
/// let acme = TenantIdentifier::parse("acme").unwrap();
/// store.create(NewTenant::new(acme.clone(), "Acme")).await.unwrap();
///
/// let cache = TenantCache::new(store, CacheSettings::default());
/// assert_eq!(cache.get(&acme).await.unwrap().unwrap().name, "Acme");
/// let ghost = TenantIdentifier::parse("ghost").unwrap();
/// assert!(cache.get(&ghost).await.unwrap().is_none());
/// # });
/// ```
#[derive(Clone)]
pub struct TenantCache {
    store: Arc<dyn TenantStore>,
    by_identifier: Cache<TenantIdentifier, Lookup>,
    by_domain: Cache<Box<str>, Lookup>,
}

impl std::fmt::Debug for TenantCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCache")
            .field("identifiers", &self.by_identifier.entry_count())
            .field("domains", &self.by_domain.entry_count())
            .finish_non_exhaustive()
    }
}

impl TenantCache {
    /// A cache in front of `store`.
    pub fn new(store: Arc<dyn TenantStore>, settings: CacheSettings) -> Self {
        let expiry = LookupExpiry {
            ttl: settings.ttl,
            negative_ttl: settings.negative_ttl,
        };
        Self {
            store,
            by_identifier: Cache::builder()
                .max_capacity(settings.max_entries)
                .expire_after(expiry)
                .build(),
            by_domain: Cache::builder()
                .max_capacity(settings.max_entries)
                .expire_after(expiry)
                .build(),
        }
    }

    /// The registry behind the cache.
    pub fn store(&self) -> &Arc<dyn TenantStore> {
        &self.store
    }

    /// The tenant with this identifier (`None` if the registry has none).
    ///
    /// A hit costs no registry query and no allocation beyond an `Arc` clone. Concurrent misses
    /// for one identifier run one registry query. An error is returned and not cached.
    pub async fn get(&self, identifier: &TenantIdentifier) -> Result<Lookup, StoreError> {
        if let Some(hit) = self.by_identifier.get(identifier.as_str()).await {
            return Ok(hit);
        }
        let store = &self.store;
        self.by_identifier
            .try_get_with(identifier.clone(), async move {
                store.get(identifier).await.map(|found| found.map(Arc::new))
            })
            .await
            .map_err(unshare)
    }

    /// The cached answer for an identifier, without ever asking the registry: `None` on a miss,
    /// `Some(None)` for a cached "not found". Takes `&str` so the request path can look up a
    /// borrowed, already validated identifier without allocating.
    pub async fn cached(&self, identifier: &str) -> Option<Lookup> {
        self.by_identifier.get(identifier).await
    }

    /// The tenant owning this custom domain (lowercase, no trailing dot), cached like
    /// [`Self::get`].
    pub async fn get_by_domain(&self, domain: &str) -> Result<Lookup, StoreError> {
        if let Some(hit) = self.by_domain.get(domain).await {
            return Ok(hit);
        }
        let store = &self.store;
        self.by_domain
            .try_get_with(Box::from(domain), async move {
                store
                    .get_by_domain(domain)
                    .await
                    .map(|found| found.map(Arc::new))
            })
            .await
            .map_err(unshare)
    }

    /// Forgets what is cached for `identifier`, including custom-domain entries that resolved
    /// to it. A "not found" cached for a domain the tenant has just gained stays until its
    /// `negative_ttl` runs out; use [`Self::invalidate_domain`] for that.
    pub async fn invalidate(&self, identifier: &TenantIdentifier) {
        self.by_identifier.invalidate(identifier.as_str()).await;
        let owned: Vec<Arc<Box<str>>> = self
            .by_domain
            .iter()
            .filter(|(_, lookup)| {
                lookup
                    .as_ref()
                    .is_some_and(|tenant| &tenant.identifier == identifier)
            })
            .map(|(domain, _)| domain)
            .collect();
        for domain in owned {
            self.by_domain.invalidate(&**domain).await;
        }
    }

    /// Forgets what is cached for one custom domain.
    pub async fn invalidate_domain(&self, domain: &str) {
        self.by_domain.invalidate(domain).await;
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        self.by_identifier.invalidate_all();
        self.by_domain.invalidate_all();
    }
}

/// Turns the error shared between coalesced callers back into an owned [`StoreError`].
fn unshare(shared: Arc<StoreError>) -> StoreError {
    match Arc::try_unwrap(shared) {
        Ok(error) => error,
        Err(shared) => match &*shared {
            StoreError::Corrupt(detail) => StoreError::Corrupt(detail.clone()),
            _ => StoreError::Unavailable(Box::new(shared)),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::memory::MemoryStore;
    use crate::store::ListQuery;
    use crate::tenant::{Metadata, NewTenant, TenantId, TenantStatus, TenantUpdate};

    /// A real [`MemoryStore`] that counts lookups, can be slowed down and can fail.
    #[derive(Default)]
    struct CountingStore {
        inner: MemoryStore,
        gets: AtomicUsize,
        domain_gets: AtomicUsize,
        failing: AtomicBool,
        delay: Option<Duration>,
    }

    impl CountingStore {
        async fn pause(&self) -> Result<(), StoreError> {
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::unavailable("connection refused"));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl TenantStore for CountingStore {
        async fn get(&self, identifier: &TenantIdentifier) -> Result<Option<Tenant>, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.pause().await?;
            self.inner.get(identifier).await
        }
        async fn get_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
            self.inner.get_by_id(id).await
        }
        async fn get_by_domain(&self, domain: &str) -> Result<Option<Tenant>, StoreError> {
            self.domain_gets.fetch_add(1, Ordering::SeqCst);
            self.pause().await?;
            self.inner.get_by_domain(domain).await
        }
        async fn create(&self, new: NewTenant) -> Result<Tenant, StoreError> {
            self.inner.create(new).await
        }
        async fn update(
            &self,
            identifier: &TenantIdentifier,
            update: TenantUpdate,
        ) -> Result<Tenant, StoreError> {
            self.inner.update(identifier, update).await
        }
        async fn set_status(
            &self,
            identifier: &TenantIdentifier,
            status: TenantStatus,
        ) -> Result<Tenant, StoreError> {
            self.inner.set_status(identifier, status).await
        }
        async fn update_metadata(
            &self,
            identifier: &TenantIdentifier,
            patch: Metadata,
        ) -> Result<Tenant, StoreError> {
            self.inner.update_metadata(identifier, patch).await
        }
        async fn delete(&self, identifier: &TenantIdentifier) -> Result<bool, StoreError> {
            self.inner.delete(identifier).await
        }
        async fn list(&self, query: ListQuery) -> Result<Vec<Tenant>, StoreError> {
            self.inner.list(query).await
        }
        async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError> {
            self.inner.count(status).await
        }
    }

    fn id(text: &str) -> TenantIdentifier {
        TenantIdentifier::parse(text).unwrap()
    }

    async fn setup(
        store: CountingStore,
        settings: CacheSettings,
    ) -> (Arc<CountingStore>, TenantCache) {
        let store = Arc::new(store);
        store
            .create(
                NewTenant::new(id("acme"), "Acme")
                    .with_status(TenantStatus::Active)
                    .with_domain("shop.acme.com"),
            )
            .await
            .unwrap();
        let cache = TenantCache::new(store.clone(), settings);
        (store, cache)
    }

    #[tokio::test]
    async fn hit_does_not_query_the_store() {
        let (store, cache) = setup(CountingStore::default(), CacheSettings::default()).await;
        let first = cache.get(&id("acme")).await.unwrap().unwrap();
        let second = cache.get(&id("acme")).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(store.gets.load(Ordering::SeqCst), 1);
        let peeked = cache.cached("acme").await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &peeked));
        assert!(cache.cached("other").await.is_none());
    }

    #[tokio::test]
    async fn unknown_identifiers_are_cached_for_the_negative_ttl() {
        let settings = CacheSettings {
            negative_ttl: Duration::from_millis(100),
            ..CacheSettings::default()
        };
        let (store, cache) = setup(CountingStore::default(), settings).await;
        for _ in 0..5 {
            assert!(cache.get(&id("ghost")).await.unwrap().is_none());
        }
        assert_eq!(store.gets.load(Ordering::SeqCst), 1);
        assert_eq!(cache.cached("ghost").await, Some(None));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(cache.get(&id("ghost")).await.unwrap().is_none());
        assert_eq!(store.gets.load(Ordering::SeqCst), 2);
        // A found tenant outlives the negative TTL.
        cache.get(&id("acme")).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        cache.get(&id("acme")).await.unwrap().unwrap();
        assert_eq!(store.gets.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn errors_are_returned_and_never_cached() {
        let (store, cache) = setup(CountingStore::default(), CacheSettings::default()).await;
        store.failing.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let error = cache.get(&id("acme")).await.unwrap_err();
            assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
            let error = cache.get_by_domain("shop.acme.com").await.unwrap_err();
            assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
        }
        assert_eq!(store.gets.load(Ordering::SeqCst), 3);
        assert!(cache.cached("acme").await.is_none());
        store.failing.store(false, Ordering::SeqCst);
        assert!(cache.get(&id("acme")).await.unwrap().is_some());
        assert!(
            cache
                .get_by_domain("shop.acme.com")
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_query_the_store_once() {
        let store = CountingStore {
            delay: Some(Duration::from_millis(50)),
            ..CountingStore::default()
        };
        let (store, cache) = setup(store, CacheSettings::default()).await;
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get(&id("acme")).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().unwrap().name, "Acme");
        }
        assert_eq!(store.gets.load(Ordering::SeqCst), 1);

        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get_by_domain("shop.acme.com").await })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().unwrap().is_some());
        }
        assert_eq!(store.domain_gets.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_share_one_error() {
        let store = CountingStore {
            delay: Some(Duration::from_millis(50)),
            ..CountingStore::default()
        };
        let (store, cache) = setup(store, CacheSettings::default()).await;
        store.failing.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get(&id("acme")).await })
            })
            .collect();
        for task in tasks {
            assert!(matches!(
                task.await.unwrap(),
                Err(StoreError::Unavailable(_))
            ));
        }
        assert!(cache.cached("acme").await.is_none());
    }

    #[tokio::test]
    async fn domains_are_cached_and_invalidated_with_their_tenant() {
        let (store, cache) = setup(CountingStore::default(), CacheSettings::default()).await;
        let tenant = cache.get_by_domain("shop.acme.com").await.unwrap().unwrap();
        assert_eq!(tenant.identifier, id("acme"));
        cache.get_by_domain("shop.acme.com").await.unwrap().unwrap();
        assert!(
            cache
                .get_by_domain("nobody.example")
                .await
                .unwrap()
                .is_none()
        );
        cache.get_by_domain("nobody.example").await.unwrap();
        assert_eq!(store.domain_gets.load(Ordering::SeqCst), 2);

        cache.get(&id("acme")).await.unwrap();
        store
            .set_status(&id("acme"), TenantStatus::Suspended)
            .await
            .unwrap();
        cache.invalidate(&id("acme")).await;
        let fresh = cache.get(&id("acme")).await.unwrap().unwrap();
        assert_eq!(fresh.status, TenantStatus::Suspended);
        let fresh = cache.get_by_domain("shop.acme.com").await.unwrap().unwrap();
        assert_eq!(fresh.status, TenantStatus::Suspended);
        assert_eq!(store.gets.load(Ordering::SeqCst), 2);
        assert_eq!(store.domain_gets.load(Ordering::SeqCst), 3);

        cache.invalidate_domain("nobody.example").await;
        cache.get_by_domain("nobody.example").await.unwrap();
        assert_eq!(store.domain_gets.load(Ordering::SeqCst), 4);

        cache.invalidate_all();
        cache.get(&id("acme")).await.unwrap();
        assert_eq!(store.gets.load(Ordering::SeqCst), 3);
    }
}
