//! The two-level tenant cache: in-process (L1, [`TenantCache`]) over Redis (L2,
//! [`RedisCache`]) over any registry, with invalidation published to every instance.
//!
//! A lookup that misses L1 reads Redis, then the registry, and writes what the registry said to
//! Redis with a TTL. Every write through the cache and every lifecycle event (the
//! [`CachedStore`] is a [`LifecycleHook`]) deletes the Redis entry and publishes the identifier
//! on `<prefix>invalidate`; every instance listens on a dedicated pub/sub connection and evicts
//! its L1 entry. The TTLs are the backstop for a missed message; after a lost subscription is
//! re-established, L1 is emptied, since messages may have been missed meanwhile.
//!
//! While Redis is down, lookups are answered from L1 and the registry (each failed Redis call is
//! counted, see [`CachedStore::redis_failures`]); everything recovers by itself when Redis is
//! back.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tenancy_core::cache::{CacheSettings, TenantCache};
use tenancy_core::manager::{LifecycleEvent, LifecycleHook};
use tenancy_core::{
    ListQuery, Metadata, NewTenant, StoreError, TenancyConfig, Tenant, TenantId, TenantIdentifier,
    TenantStatus, TenantStore, TenantUpdate,
};
use tokio::sync::watch;

use crate::outage::Outage;
use crate::prefix::KeyPrefix;

/// The Redis (L2) level: a [`TenantStore`] that answers lookups from Redis when it can and
/// otherwise from the registry behind it (writing the answer to Redis), and that forgets and
/// announces every tenant written through it.
///
/// Keys: `<prefix>cache:tenant:<identifier>` (the tenant as JSON) and
/// `<prefix>cache:domain:<domain>` (the identifier owning the domain, checked against the
/// tenant's domains on every read, so a stale entry is never believed). Only found tenants are
/// cached in Redis; "not found" is cached in L1 only, for its `negative_ttl`.
pub struct RedisCache {
    backing: Arc<dyn TenantStore>,
    redis: ConnectionManager,
    prefix: KeyPrefix,
    channel: String,
    ttl_seconds: u64,
    outage: Outage,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("redis_failures", &self.outage.failures())
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// A Redis cache in front of `backing`, keeping entries for `ttl` (at least 1 second).
    pub fn new(
        backing: Arc<dyn TenantStore>,
        redis: ConnectionManager,
        prefix: KeyPrefix,
        ttl: Duration,
    ) -> Self {
        Self {
            backing,
            redis,
            channel: invalidation_channel(&prefix),
            prefix,
            ttl_seconds: ttl.as_secs().max(1),
            outage: Outage::new("tenant cache"),
        }
    }

    /// The registry behind the cache.
    pub fn backing(&self) -> &Arc<dyn TenantStore> {
        &self.backing
    }

    /// The channel invalidations are published on: `<prefix>invalidate`.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// How many Redis calls failed so far (lookups then went to the registry).
    pub fn redis_failures(&self) -> u64 {
        self.outage.failures()
    }

    fn tenant_key(&self, identifier: &str) -> String {
        self.prefix.key("cache:tenant:", identifier)
    }

    fn domain_key(&self, domain: &str) -> String {
        self.prefix.key("cache:domain:", domain)
    }

    /// Runs one Redis call, recording the outcome; `None` when Redis failed.
    async fn redis<T>(
        &self,
        call: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Option<T> {
        match call(&mut self.redis.clone()).await {
            Ok(value) => {
                self.outage.succeeded();
                Some(value)
            }
            Err(error) => {
                self.outage.failed(&error);
                None
            }
        }
    }

    /// The tenant cached in Redis, if any (an unreadable entry is dropped and treated as a miss).
    async fn cached(&self, identifier: &str) -> Option<Tenant> {
        let key = self.tenant_key(identifier);
        let json: String = self
            .redis(async |c| c.get::<_, Option<String>>(&key).await)
            .await
            .flatten()?;
        match serde_json::from_str(&json) {
            Ok(tenant) => Some(tenant),
            Err(error) => {
                tracing::warn!(%key, %error, "unreadable tenant cache entry; dropping it");
                self.redis(async |c| c.del::<_, ()>(&key).await).await;
                None
            }
        }
    }

    /// Writes a found tenant to Redis, and the owner of `domain` if given.
    async fn remember(&self, tenant: &Tenant, domain: Option<&str>) {
        let Ok(json) = serde_json::to_string(tenant) else {
            return;
        };
        let mut pipeline = redis::pipe();
        pipeline
            .set_ex(
                self.tenant_key(tenant.identifier.as_str()),
                json,
                self.ttl_seconds,
            )
            .ignore();
        if let Some(domain) = domain {
            pipeline
                .set_ex(
                    self.domain_key(domain),
                    tenant.identifier.as_str(),
                    self.ttl_seconds,
                )
                .ignore();
        }
        self.redis(async |c| pipeline.query_async::<()>(c).await)
            .await;
    }

    /// Deletes the Redis entries of `identifier` and `domains` and publishes them on the
    /// invalidation channel, so every instance evicts its in-process entries. If Redis is down
    /// the other instances keep their entries until the TTL ends.
    pub async fn invalidate(&self, identifier: &TenantIdentifier, domains: &[String]) {
        let mut pipeline = redis::pipe();
        pipeline.del(self.tenant_key(identifier.as_str())).ignore();
        pipeline
            .publish(&self.channel, identifier.as_str())
            .ignore();
        for domain in domains {
            pipeline.del(self.domain_key(domain)).ignore();
            pipeline.publish(&self.channel, domain).ignore();
        }
        self.redis(async |c| pipeline.query_async::<()>(c).await)
            .await;
    }
}

#[async_trait]
impl TenantStore for RedisCache {
    async fn get(&self, identifier: &TenantIdentifier) -> Result<Option<Tenant>, StoreError> {
        if let Some(tenant) = self.cached(identifier.as_str()).await {
            return Ok(Some(tenant));
        }
        let found = self.backing.get(identifier).await?;
        if let Some(tenant) = &found {
            self.remember(tenant, None).await;
        }
        Ok(found)
    }

    async fn get_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        self.backing.get_by_id(id).await
    }

    async fn get_by_domain(&self, domain: &str) -> Result<Option<Tenant>, StoreError> {
        let key = self.domain_key(domain);
        let owner: Option<String> = self.redis(async |c| c.get(&key).await).await.flatten();
        if let Some(owner) = owner
            && let Some(tenant) = self.cached(&owner).await
            && tenant.domains.iter().any(|d| d == domain)
        {
            return Ok(Some(tenant));
        }
        let found = self.backing.get_by_domain(domain).await?;
        if let Some(tenant) = &found {
            self.remember(tenant, Some(domain)).await;
        }
        Ok(found)
    }

    async fn create(&self, new: NewTenant) -> Result<Tenant, StoreError> {
        let tenant = self.backing.create(new).await?;
        self.invalidate(&tenant.identifier, &tenant.domains).await;
        Ok(tenant)
    }

    async fn update(
        &self,
        identifier: &TenantIdentifier,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError> {
        let tenant = self.backing.update(identifier, update).await?;
        self.invalidate(identifier, &tenant.domains).await;
        Ok(tenant)
    }

    async fn set_status(
        &self,
        identifier: &TenantIdentifier,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError> {
        let tenant = self.backing.set_status(identifier, status).await?;
        self.invalidate(identifier, &[]).await;
        Ok(tenant)
    }

    async fn update_metadata(
        &self,
        identifier: &TenantIdentifier,
        patch: Metadata,
    ) -> Result<Tenant, StoreError> {
        let tenant = self.backing.update_metadata(identifier, patch).await?;
        self.invalidate(identifier, &[]).await;
        Ok(tenant)
    }

    async fn delete(&self, identifier: &TenantIdentifier) -> Result<bool, StoreError> {
        let existed = self.backing.delete(identifier).await?;
        self.invalidate(identifier, &[]).await;
        Ok(existed)
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Tenant>, StoreError> {
        self.backing.list(query).await
    }

    async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError> {
        self.backing.count(status).await
    }
}

fn invalidation_channel(prefix: &KeyPrefix) -> String {
    prefix.key("invalidate", "")
}

/// Sizes and lifetimes of a [`CachedStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedStoreSettings {
    /// Prefix of the Redis keys and of the invalidation channel.
    pub prefix: KeyPrefix,
    /// The in-process level.
    pub local: CacheSettings,
    /// How long a tenant stays in Redis.
    pub redis_ttl: Duration,
    /// A second invalidation this long after each one, to evict what a lookup racing the write
    /// read from the registry just before the change and cached just after the first
    /// invalidation. `None` turns it off.
    pub settle_delay: Option<Duration>,
}

impl Default for CachedStoreSettings {
    /// Prefix `tenancy:`, the default [`CacheSettings`], 60 s in Redis, a second invalidation
    /// after 250 ms.
    fn default() -> Self {
        Self {
            prefix: KeyPrefix::default(),
            local: CacheSettings::default(),
            redis_ttl: Duration::from_secs(60),
            settle_delay: Some(Duration::from_millis(250)),
        }
    }
}

impl CachedStoreSettings {
    /// The configured prefix, TTLs and sizes. A prefix the configuration accepted is always a
    /// valid [`KeyPrefix`]; an invalid one falls back to the default.
    pub fn from_config(config: &TenancyConfig) -> Self {
        Self {
            prefix: KeyPrefix::new(config.redis_key_prefix.clone()).unwrap_or_default(),
            local: CacheSettings {
                max_entries: config.cache_max_entries,
                ttl: config.cache_ttl(),
                negative_ttl: config.negative_cache_ttl(),
            },
            redis_ttl: config.cache_ttl(),
            ..Self::default()
        }
    }
}

/// The subscriber task, stopped when the last [`CachedStore`] clone is dropped.
struct Subscription {
    task: tokio::task::JoinHandle<()>,
    subscribed: watch::Receiver<bool>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The two-level cache with cross-instance invalidation. Cheap to clone; clones share
/// everything.
///
/// Give [`Self::cache`] to the request layer, and the `CachedStore` itself to the
/// [`tenancy_core::manager::TenantManager`] as a hook (or write through it as a
/// [`TenantStore`]), so every instance forgets a tenant as soon as it changes.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use tenancy_core::MemoryStore;
/// use tenancy_core::manager::{NoProvisioning, TenantManager};
/// use tenancy_redis::{CachedStore, CachedStoreSettings};
///
/// let registry = Arc::new(MemoryStore::new());
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let cached = CachedStore::connect(client, registry.clone(), CachedStoreSettings::default()).await?;
/// let manager = TenantManager::new(registry, Arc::new(NoProvisioning)).with_hook(Arc::new(cached.clone()));
/// let layer_cache = cached.cache().clone(); // for TenancyLayer::builder
/// # let _ = (manager, layer_cache); Ok(()) }
/// ```
#[derive(Clone)]
pub struct CachedStore {
    local: TenantCache,
    redis: Arc<RedisCache>,
    settle_delay: Option<Duration>,
    subscription: Arc<Subscription>,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("local", &self.local)
            .field("redis", &self.redis)
            .field("subscribed", &self.is_subscribed())
            .finish_non_exhaustive()
    }
}

impl CachedStore {
    /// Connects to Redis (a command connection and a pub/sub connection), subscribes to the
    /// invalidation channel and returns once subscribed. Fails if Redis cannot be reached now;
    /// later outages are survived.
    pub async fn connect(
        client: redis::Client,
        backing: Arc<dyn TenantStore>,
        settings: CachedStoreSettings,
    ) -> redis::RedisResult<Self> {
        let connection = crate::connect(&client).await?;
        let pubsub = client.get_async_pubsub().await?;
        let redis = Arc::new(RedisCache::new(
            backing,
            connection,
            settings.prefix,
            settings.redis_ttl,
        ));
        let local = TenantCache::new(redis.clone(), settings.local);
        let (state, subscribed) = watch::channel(false);
        let listener = Listener {
            client,
            channel: redis.channel().to_owned(),
            local: local.clone(),
            state,
        };
        let task = tokio::spawn(listener.run(pubsub));
        let store = Self {
            local,
            redis,
            settle_delay: settings.settle_delay,
            subscription: Arc::new(Subscription { task, subscribed }),
        };
        store.wait_until_subscribed(Duration::from_secs(5)).await;
        Ok(store)
    }

    /// The in-process level, for the request layer.
    pub fn cache(&self) -> &TenantCache {
        &self.local
    }

    /// The Redis level.
    pub fn redis_cache(&self) -> &Arc<RedisCache> {
        &self.redis
    }

    /// How many Redis calls of the cache failed so far (lookups then went to the registry).
    pub fn redis_failures(&self) -> u64 {
        self.redis.redis_failures()
    }

    /// Whether this instance is subscribed to invalidations right now.
    pub fn is_subscribed(&self) -> bool {
        *self.subscription.subscribed.borrow()
    }

    /// Waits until subscribed, at most `timeout`; returns whether it is.
    pub async fn wait_until_subscribed(&self, timeout: Duration) -> bool {
        let mut subscribed = self.subscription.subscribed.clone();
        tokio::time::timeout(timeout, subscribed.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Forgets `identifier` (and `domains`) here, in Redis and on every other instance.
    pub async fn invalidate(&self, identifier: &TenantIdentifier, domains: &[String]) {
        self.local.invalidate(identifier).await;
        for domain in domains {
            self.local.invalidate_domain(domain).await;
        }
        self.redis.invalidate(identifier, domains).await;
        if let Some(delay) = self.settle_delay {
            let (redis, identifier, domains) =
                (self.redis.clone(), identifier.clone(), domains.to_vec());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                redis.invalidate(&identifier, &domains).await;
            });
        }
    }

    async fn forget(&self, tenant: &Tenant) {
        self.invalidate(&tenant.identifier, &tenant.domains).await;
    }
}

#[async_trait]
impl TenantStore for CachedStore {
    async fn get(&self, identifier: &TenantIdentifier) -> Result<Option<Tenant>, StoreError> {
        Ok(self.local.get(identifier).await?.map(Arc::unwrap_or_clone))
    }

    async fn get_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        self.redis.backing().get_by_id(id).await
    }

    async fn get_by_domain(&self, domain: &str) -> Result<Option<Tenant>, StoreError> {
        Ok(self
            .local
            .get_by_domain(domain)
            .await?
            .map(Arc::unwrap_or_clone))
    }

    async fn create(&self, new: NewTenant) -> Result<Tenant, StoreError> {
        let tenant = self.redis.backing().create(new).await?;
        self.forget(&tenant).await;
        Ok(tenant)
    }

    async fn update(
        &self,
        identifier: &TenantIdentifier,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError> {
        let tenant = self.redis.backing().update(identifier, update).await?;
        self.forget(&tenant).await;
        Ok(tenant)
    }

    async fn set_status(
        &self,
        identifier: &TenantIdentifier,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError> {
        let tenant = self.redis.backing().set_status(identifier, status).await?;
        self.forget(&tenant).await;
        Ok(tenant)
    }

    async fn update_metadata(
        &self,
        identifier: &TenantIdentifier,
        patch: Metadata,
    ) -> Result<Tenant, StoreError> {
        let tenant = self
            .redis
            .backing()
            .update_metadata(identifier, patch)
            .await?;
        self.forget(&tenant).await;
        Ok(tenant)
    }

    async fn delete(&self, identifier: &TenantIdentifier) -> Result<bool, StoreError> {
        let existed = self.redis.backing().delete(identifier).await?;
        self.invalidate(identifier, &[]).await;
        Ok(existed)
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Tenant>, StoreError> {
        self.redis.backing().list(query).await
    }

    async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError> {
        self.redis.backing().count(status).await
    }
}

/// Every lifecycle change is invalidated here, in Redis and on every instance.
#[async_trait]
impl LifecycleHook for CachedStore {
    async fn on_event(&self, event: &LifecycleEvent) {
        match event {
            LifecycleEvent::Registered(tenant)
            | LifecycleEvent::Provisioned(tenant)
            | LifecycleEvent::ProvisioningFailed(tenant)
            | LifecycleEvent::Suspended(tenant)
            | LifecycleEvent::Activated(tenant)
            | LifecycleEvent::Deleted(tenant) => self.forget(tenant).await,
            LifecycleEvent::Purged(identifier) => self.invalidate(identifier, &[]).await,
        }
    }
}

/// The first wait before resubscribing, doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two resubscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an idle subscription is checked with a `PING`.
const PING_EVERY: Duration = Duration::from_secs(5);

/// The background task evicting L1 entries on invalidation messages.
struct Listener {
    client: redis::Client,
    channel: String,
    local: TenantCache,
    state: watch::Sender<bool>,
}

impl Listener {
    /// Listens on `first`, then on new connections whenever the current one is lost, with
    /// exponential backoff between attempts.
    async fn run(self, first: redis::aio::PubSub) {
        let mut next = Some(first);
        let mut backoff = MIN_BACKOFF;
        loop {
            let pubsub = match next.take() {
                Some(pubsub) => Ok(pubsub),
                None => self.client.get_async_pubsub().await,
            };
            match pubsub {
                Ok(mut pubsub) => match pubsub.subscribe(&self.channel).await {
                    Ok(()) => {
                        // Messages may have been missed while not subscribed.
                        self.local.invalidate_all();
                        self.state.send_replace(true);
                        backoff = MIN_BACKOFF;
                        self.listen(pubsub).await;
                        self.state.send_replace(false);
                        tracing::warn!(channel = %self.channel, "lost the cache invalidation subscription; resubscribing");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot subscribe to cache invalidations");
                    }
                },
                Err(error) => {
                    tracing::debug!(%error, "cannot reach redis for cache invalidations");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Evicts on every message until the connection is lost (stream end, or a failed `PING`).
    async fn listen(&self, pubsub: redis::aio::PubSub) {
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return };
                    let Ok(payload) = message.get_payload::<String>() else { continue };
                    self.evict(&payload).await;
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(PING_EVERY, sink.ping::<redis::Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }

    /// A payload with a dot is a custom domain (identifiers have none), else an identifier.
    async fn evict(&self, payload: &str) {
        if payload.contains('.') {
            self.local.invalidate_domain(payload).await;
        } else if let Ok(identifier) = TenantIdentifier::parse(payload) {
            self.local.invalidate(&identifier).await;
        }
    }
}
