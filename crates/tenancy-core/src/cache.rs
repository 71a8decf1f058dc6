//! An in-process tenant cache in front of any [`TenantStore`].
//!
//! Lookups by identifier and by custom domain are cached for `ttl`; lookups that found nothing
//! are cached as "not found" for `negative_ttl` (usually shorter), so a flood of unknown
//! identifiers reaches the registry once per identifier and per `negative_ttl`. Concurrent misses
//! for the same key are coalesced into one registry query. Registry errors are returned to every
//! waiting caller and never cached.
//!
//! Reads are lock-free: each table is split into shards, each shard an immutable map published
//! through an [`ArcSwap`]. A reader loads the current snapshot (no shared write, no lock), finds
//! the entry and checks its expiry. Writers (misses and invalidations, both rare) copy the
//! shard, change the copy and publish it, serialized per shard by a mutex readers never touch.
//! When a shard is full the entry closest to expiry is dropped, so short-lived "not found"
//! entries go before known tenants.
//!
//! Keys are hashed once per lookup with `foldhash` (fast, randomly seeded, not cryptographic):
//! bits of the hash pick the shard and the same hash finds the slot inside it. A shard holds
//! at most `max_entries / shards` keys, so even a crafted set of colliding keys only makes
//! that one shard's lookups linear in a bounded number of entries. Expiry is read from a
//! `quanta` clock (TSC-based where reliable), a few nanoseconds instead of a system call.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;
use hashbrown::HashTable;
use quanta::{Clock, Instant};
use tokio::sync::OnceCell;

use crate::config::TenancyConfig;
use crate::identifier::TenantIdentifier;
use crate::store::{StoreError, TenantStore};
use crate::tenant::Tenant;

/// A cached lookup: the tenant, or `None` for "the registry has no such tenant".
type Lookup = Option<Arc<Tenant>>;

/// Sizes and lifetimes of a [`TenantCache`].
///
/// ```
/// use std::time::Duration;
/// use tenancy_core::TenancyConfig;
/// use tenancy_core::cache::CacheSettings;
///
/// let config = TenancyConfig::from_vars([("TENANCY_CACHE_TTL_SECONDS", "120")])?;
/// let settings = CacheSettings::from_config(&config);
/// assert_eq!(settings.ttl, Duration::from_secs(120));
/// # Ok::<(), tenancy_core::ConfigError>(())
/// ```
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

impl CacheSettings {
    /// The settings of `TENANCY_CACHE_MAX_ENTRIES`, `TENANCY_CACHE_TTL_SECONDS` and
    /// `TENANCY_NEGATIVE_CACHE_TTL_SECONDS`.
    pub fn from_config(config: &TenancyConfig) -> Self {
        Self {
            max_entries: config.cache_max_entries,
            ttl: config.cache_ttl(),
            negative_ttl: config.negative_cache_ttl(),
        }
    }
}

impl From<&TenancyConfig> for CacheSettings {
    fn from(config: &TenancyConfig) -> Self {
        Self::from_config(config)
    }
}

/// Lifetimes beyond this are capped, so `Instant + ttl` cannot overflow (about 100 years).
const LONGEST_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The target number of entries per shard; the shard count is a power of two up to 256.
const ENTRIES_PER_SHARD: u64 = 128;
const MAX_SHARDS: u64 = 256;

/// The shard is picked by the key's hash shifted right this far. `hashbrown` places a key in
/// its table by the low bits of the hash and tags it with the top seven, so the keys of one
/// shard still spread over the shard's slots.
const SHARD_HASH_SHIFT: u32 = 32;

/// One cached answer, its key, and when it stops being served.
#[derive(Clone)]
struct Entry {
    key: Arc<str>,
    lookup: Lookup,
    expires_at: Instant,
}

/// An immutable snapshot of one shard, its entries found by the hash of their key.
type ShardMap = HashTable<Entry>;

/// A registry query in flight, shared by every caller that missed the same key meanwhile.
type Load = OnceCell<Result<Lookup, Arc<StoreError>>>;

struct Shard {
    snapshot: ArcSwap<ShardMap>,
    /// Serializes writers of this shard; readers never take it.
    writer: Mutex<()>,
    capacity: usize,
}

/// The cache of one kind of key (identifiers, or custom domains).
struct Table {
    shards: Box<[Shard]>,
    /// Hashes each key once per lookup, for both the shard and the slot inside it.
    hasher: RandomState,
    in_flight: Mutex<HashMap<Arc<str>, Arc<Load>>>,
    /// Bumped by every invalidation; a query that started before one is not cached.
    generation: AtomicU64,
    clock: Clock,
    ttl: Duration,
    negative_ttl: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Table {
    fn new(settings: &CacheSettings) -> Self {
        let shard_count = (settings.max_entries / ENTRIES_PER_SHARD)
            .clamp(1, MAX_SHARDS)
            .next_power_of_two();
        let base = settings.max_entries / shard_count;
        let remainder = settings.max_entries % shard_count;
        let shards = (0..shard_count)
            .map(|index| Shard {
                snapshot: ArcSwap::from_pointee(ShardMap::default()),
                writer: Mutex::new(()),
                capacity: usize::try_from(base + u64::from(index < remainder))
                    .unwrap_or(usize::MAX),
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::default(),
            in_flight: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            clock: Clock::new(),
            ttl: settings.ttl.min(LONGEST_LIFETIME),
            negative_ttl: settings.negative_ttl.min(LONGEST_LIFETIME),
        }
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The hash of `key` and the shard that holds it.
    fn locate(&self, key: &str) -> (u64, &Shard) {
        let hash = self.hash(key);
        let mask = self.shards.len() - 1;
        // Truncating is intended: only the low bits of the shifted hash pick the shard.
        let index = (hash >> SHARD_HASH_SHIFT) as usize & mask;
        (hash, &self.shards[index])
    }

    /// The unexpired cached answer for `key`, without locking or writing shared memory.
    fn peek(&self, key: &str) -> Option<Lookup> {
        let (hash, shard) = self.locate(key);
        let snapshot = shard.snapshot.load();
        let entry = snapshot.find(hash, |entry| *entry.key == *key)?;
        (entry.expires_at > self.clock.now()).then(|| entry.lookup.clone())
    }

    /// Removes the entry of `key` (whose hash is `hash`) from `map`, if there is one.
    fn remove(map: &mut ShardMap, hash: u64, key: &str) {
        if let Ok(found) = map.find_entry(hash, |entry| *entry.key == *key) {
            found.remove();
        }
    }

    /// The cached answer, else the answer of `query`, run once for all concurrent misses.
    async fn get_or_query<F, Fut>(&self, key: &str, query: F) -> Result<Lookup, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Tenant>, StoreError>>,
    {
        if let Some(hit) = self.peek(key) {
            return Ok(hit);
        }
        let load = {
            let mut in_flight = lock(&self.in_flight);
            // A query that finished between the peek and the lock has published its answer.
            if let Some(hit) = self.peek(key) {
                return Ok(hit);
            }
            match in_flight.get(key) {
                Some(load) => load.clone(),
                None => {
                    let load = Arc::new(Load::new());
                    in_flight.insert(Arc::from(key), load.clone());
                    load
                }
            }
        };
        let outcome = load
            .get_or_init(|| async {
                let generation = self.generation.load(Ordering::Acquire);
                let outcome = query()
                    .await
                    .map(|found| found.map(Arc::new))
                    .map_err(Arc::new);
                if let Ok(lookup) = &outcome {
                    self.insert(key, lookup.clone(), generation);
                }
                self.finish(key, &load);
                outcome
            })
            .await;
        outcome.clone().map_err(unshare)
    }

    /// Forgets the in-flight query for `key` if it is still `load`.
    fn finish(&self, key: &str, load: &Arc<Load>) {
        let mut in_flight = lock(&self.in_flight);
        if in_flight
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, load))
        {
            in_flight.remove(key);
        }
    }

    /// Caches `lookup` unless an invalidation happened since `generation` was read.
    fn insert(&self, key: &str, lookup: Lookup, generation: u64) {
        let (hash, shard) = self.locate(key);
        if shard.capacity == 0 {
            return;
        }
        let _writer = lock(&shard.writer);
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let now = self.clock.now();
        let lifetime = if lookup.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        let mut next = ShardMap::clone(&shard.snapshot.load());
        next.retain(|entry| entry.expires_at > now && *entry.key != *key);
        while next.len() >= shard.capacity {
            let Some(closest) = next
                .iter()
                .min_by_key(|entry| entry.expires_at)
                .map(|entry| entry.key.clone())
            else {
                break;
            };
            Self::remove(&mut next, self.hash(&closest), &closest);
        }
        next.insert_unique(
            hash,
            Entry {
                key: Arc::from(key),
                lookup,
                // Lifetimes are capped far below the clock's range; an overflow would mean
                // "expired", never "forever".
                expires_at: now.checked_add(lifetime).unwrap_or(now),
            },
            |entry| self.hash(&entry.key),
        );
        shard.snapshot.store(Arc::new(next));
    }

    /// Forgets every entry `forget` selects, and every query in flight for a key it selects.
    fn invalidate_where(&self, forget: impl Fn(&Entry) -> bool) {
        for shard in &self.shards {
            let _writer = lock(&shard.writer);
            self.generation.fetch_add(1, Ordering::AcqRel);
            let current = shard.snapshot.load();
            if current.iter().any(&forget) {
                let mut next = ShardMap::clone(&current);
                next.retain(|entry| !forget(entry));
                shard.snapshot.store(Arc::new(next));
            }
        }
    }

    /// Forgets `key` and any query in flight for it.
    fn invalidate(&self, key: &str) {
        lock(&self.in_flight).remove(key);
        let (hash, shard) = self.locate(key);
        let _writer = lock(&shard.writer);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let current = shard.snapshot.load();
        if current.find(hash, |entry| *entry.key == *key).is_some() {
            let mut next = ShardMap::clone(&current);
            Self::remove(&mut next, hash, key);
            shard.snapshot.store(Arc::new(next));
        }
    }

    fn invalidate_all(&self) {
        lock(&self.in_flight).clear();
        for shard in &self.shards {
            let _writer = lock(&shard.writer);
            self.generation.fetch_add(1, Ordering::AcqRel);
            shard.snapshot.store(Arc::new(ShardMap::default()));
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.snapshot.load().len())
            .sum()
    }
}

/// A caching front for a tenant registry. Cheap to clone; clones share the cache.
///
/// A hit is a lock-free read and an `Arc` clone. Concurrent misses for one key run one registry
/// query. Errors are returned to every waiting caller and not cached. An invalidation also
/// makes queries already in flight for the key uncacheable, so a tenant changed by an admin
/// is never brought back stale by a slow query that started before the change.
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
/// assert_eq!(cache.cached("acme").unwrap().unwrap().name, "Acme");
/// let ghost = TenantIdentifier::parse("ghost").unwrap();
/// assert!(cache.get(&ghost).await.unwrap().is_none());
/// # });
/// ```
#[derive(Clone)]
pub struct TenantCache {
    inner: Arc<Tables>,
}

struct Tables {
    store: Arc<dyn TenantStore>,
    by_identifier: Table,
    by_domain: Table,
}

impl std::fmt::Debug for TenantCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCache")
            .field("identifiers", &self.inner.by_identifier.len())
            .field("domains", &self.inner.by_domain.len())
            .finish_non_exhaustive()
    }
}

impl TenantCache {
    /// A cache in front of `store`.
    pub fn new(store: Arc<dyn TenantStore>, settings: CacheSettings) -> Self {
        Self {
            inner: Arc::new(Tables {
                store,
                by_identifier: Table::new(&settings),
                by_domain: Table::new(&settings),
            }),
        }
    }

    /// The registry behind the cache.
    pub fn store(&self) -> &Arc<dyn TenantStore> {
        &self.inner.store
    }

    /// The tenant with this identifier (`None` if the registry has none).
    ///
    /// A hit costs no registry query and no allocation beyond an `Arc` clone. Concurrent misses
    /// for one identifier run one registry query. An error is returned and not cached.
    pub async fn get(&self, identifier: &TenantIdentifier) -> Result<Lookup, StoreError> {
        let store = &self.inner.store;
        self.inner
            .by_identifier
            .get_or_query(identifier.as_str(), || store.get(identifier))
            .await
    }

    /// The cached answer for an identifier, without ever asking the registry: `None` on a miss,
    /// `Some(None)` for a cached "not found". Synchronous and lock-free; takes `&str` so the
    /// request path can look up a borrowed, already validated identifier without allocating.
    pub fn cached(&self, identifier: &str) -> Option<Lookup> {
        self.inner.by_identifier.peek(identifier)
    }

    /// The tenant owning this custom domain (lowercase, no trailing dot), cached like
    /// [`Self::get`].
    pub async fn get_by_domain(&self, domain: &str) -> Result<Lookup, StoreError> {
        let store = &self.inner.store;
        self.inner
            .by_domain
            .get_or_query(domain, || store.get_by_domain(domain))
            .await
    }

    /// The cached answer for a custom domain, like [`Self::cached`].
    pub fn cached_domain(&self, domain: &str) -> Option<Lookup> {
        self.inner.by_domain.peek(domain)
    }

    /// Forgets what is cached for `identifier`, including custom-domain entries that resolved
    /// to it. A "not found" cached for a domain the tenant has just gained stays until its
    /// `negative_ttl` runs out; use [`Self::invalidate_domain`] for that.
    pub async fn invalidate(&self, identifier: &TenantIdentifier) {
        self.inner.by_identifier.invalidate(identifier.as_str());
        lock(&self.inner.by_domain.in_flight).clear();
        self.inner.by_domain.invalidate_where(|entry| {
            entry
                .lookup
                .as_ref()
                .is_some_and(|tenant| tenant.identifier == *identifier)
        });
    }

    /// Forgets what is cached for one custom domain.
    pub async fn invalidate_domain(&self, domain: &str) {
        self.inner.by_domain.invalidate(domain);
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        self.inner.by_identifier.invalidate_all();
        self.inner.by_domain.invalidate_all();
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
        let peeked = cache.cached("acme").unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &peeked));
        assert!(cache.cached("other").is_none());
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
        assert_eq!(cache.cached("ghost"), Some(None));
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
        assert!(cache.cached("acme").is_none());
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
        assert!(cache.cached("acme").is_none());
        assert_eq!(
            store.gets.load(Ordering::SeqCst),
            1,
            "one query for all waiters"
        );
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

    #[tokio::test]
    async fn size_is_bounded_and_known_tenants_outlive_unknown_ones() {
        let settings = CacheSettings {
            max_entries: 8,
            ..CacheSettings::default()
        };
        let (store, cache) = setup(CountingStore::default(), settings).await;
        cache.get(&id("acme")).await.unwrap().unwrap();
        for n in 0..50 {
            let ghost = id(&format!("ghost-{n}"));
            assert!(cache.get(&ghost).await.unwrap().is_none());
            assert!(
                cache.cached(ghost.as_str()).is_some(),
                "the newest entry is kept"
            );
        }
        assert!(cache.inner.by_identifier.len() <= 8);
        assert!(
            cache.cached("acme").is_some(),
            "unknown ones are evicted first"
        );
        assert_eq!(store.gets.load(Ordering::SeqCst), 51);

        let big = TenantCache::new(store.clone(), CacheSettings::default());
        assert_eq!(big.inner.by_identifier.shards.len(), 128);
        let capacity: usize = big
            .inner
            .by_identifier
            .shards
            .iter()
            .map(|s| s.capacity)
            .sum();
        assert_eq!(capacity, 10_000);
        let none = TenantCache::new(
            store,
            CacheSettings {
                max_entries: 0,
                ..CacheSettings::default()
            },
        );
        assert!(none.get(&id("acme")).await.unwrap().is_some());
        assert!(none.cached("acme").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invalidation_during_a_query_keeps_its_stale_answer_out() {
        let store = CountingStore {
            delay: Some(Duration::from_millis(100)),
            ..CountingStore::default()
        };
        let (store, cache) = setup(store, CacheSettings::default()).await;
        let slow = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get(&id("acme")).await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        store
            .inner
            .set_status(&id("acme"), TenantStatus::Suspended)
            .await
            .unwrap();
        cache.invalidate(&id("acme")).await;
        // The query started before the change; its answer is not cached.
        slow.await.unwrap().unwrap().unwrap();
        assert!(cache.cached("acme").is_none());
        let fresh = cache.get(&id("acme")).await.unwrap().unwrap();
        assert_eq!(fresh.status, TenantStatus::Suspended);
        assert_eq!(
            cache.cached("acme").unwrap().unwrap().status,
            TenantStatus::Suspended
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_caller_does_not_block_the_next() {
        let store = CountingStore {
            delay: Some(Duration::from_millis(50)),
            ..CountingStore::default()
        };
        let (store, cache) = setup(store, CacheSettings::default()).await;
        let first = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get(&id("acme")).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        let tenant = cache.get(&id("acme")).await.unwrap().unwrap();
        assert_eq!(tenant.name, "Acme");
        assert_eq!(store.gets.load(Ordering::SeqCst), 2);
        assert!(
            cache
                .inner
                .by_identifier
                .in_flight
                .lock()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn settings_from_config() {
        let config = crate::config::TenancyConfig::from_vars([
            ("TENANCY_CACHE_MAX_ENTRIES", "500"),
            ("TENANCY_CACHE_TTL_SECONDS", "30"),
            ("TENANCY_NEGATIVE_CACHE_TTL_SECONDS", "2"),
        ])
        .unwrap();
        let expected = CacheSettings {
            max_entries: 500,
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(2),
        };
        assert_eq!(CacheSettings::from_config(&config), expected);
        assert_eq!(CacheSettings::from(&config), expected);
    }
}
