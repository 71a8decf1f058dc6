//! A tenant registry kept in Redis.
//!
//! Layout under the prefix `p`:
//!
//! | key                  | type       | content |
//! |----------------------|------------|---------|
//! | `p` `tenant:<ident>` | string     | the tenant as JSON |
//! | `p` `tenants`        | sorted set | every identifier (score 0: ordered by bytes, paged with `ZRANGEBYLEX`) |
//! | `p` `status:<s>`     | sorted set | the identifiers in status `s` |
//! | `p` `domain:<d>`     | string     | the identifier owning custom domain `d` |
//! | `p` `id:<uuid>`      | string     | the identifier of tenant id `uuid` |
//!
//! Creates run in one Lua script (checks and writes are atomic). Every change to an existing
//! tenant is an optimistic compare-and-set: read the JSON, compute the new tenant (lifecycle
//! check, metadata merge, field update) in Rust, and write it with a Lua script that applies it
//! only if the stored JSON is still the one read, together with the index updates; on a
//! conflict the change is computed again from the new value. So concurrent status changes and
//! metadata merges never lose an update and indexes never disagree with the tenant.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tenancy_core::{
    ListQuery, Metadata, NewTenant, StoreError, Tenant, TenantId, TenantIdentifier, TenantStatus,
    TenantStore, TenantUpdate, merge_metadata,
};

use crate::prefix::KeyPrefix;

/// KEYS: tenant, all-identifiers set, status set, id key, domain keys...
/// ARGV: identifier, JSON. Returns 0 (created), -1 (identifier exists) or the 1-based index of
/// the first taken domain.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
for i = 5, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return i - 4 end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('SET', KEYS[4], ARGV[1])
for i = 5, #KEYS do redis.call('SET', KEYS[i], ARGV[1]) end
return 0
";

/// KEYS: tenant, old status set, new status set, removed domain keys..., added domain keys...
/// ARGV: expected JSON, new JSON, identifier, number of removed domains.
/// Returns 0 (written), -1 (the tenant changed since it was read) or the 1-based index of the
/// first added domain owned by another tenant.
const REPLACE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local first_added = 4 + tonumber(ARGV[4])
for i = first_added, #KEYS do
  local owner = redis.call('GET', KEYS[i])
  if owner and owner ~= ARGV[3] then return i - first_added + 1 end
end
redis.call('SET', KEYS[1], ARGV[2])
if KEYS[2] ~= KEYS[3] then
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('ZADD', KEYS[3], 0, ARGV[3])
end
for i = 4, first_added - 1 do
  if redis.call('GET', KEYS[i]) == ARGV[3] then redis.call('DEL', KEYS[i]) end
end
for i = first_added, #KEYS do redis.call('SET', KEYS[i], ARGV[3]) end
return 0
";

/// KEYS: tenant, all-identifiers set, status set, id key, domain keys...
/// ARGV: expected JSON, identifier. Returns 0 (deleted) or -1 (changed since read).
const DELETE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1], KEYS[4])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
for i = 5, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[2] then redis.call('DEL', KEYS[i]) end
end
return 0
";

/// How often a compare-and-set is retried before giving up (only reached under extreme
/// contention on one tenant).
const MAX_ATTEMPTS: usize = 1000;

/// A [`TenantStore`] in Redis (see the module documentation for the key layout).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tenancy_core::{NewTenant, TenantIdentifier, TenantStore};
/// use tenancy_redis::{KeyPrefix, RedisStore};
///
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let store = RedisStore::new(tenancy_redis::connect(&client).await?, KeyPrefix::default());
/// let acme = TenantIdentifier::parse("acme")?;
/// store.create(NewTenant::new(acme.clone(), "Acme")).await?;
/// assert!(store.get(&acme).await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    redis: ConnectionManager,
    prefix: KeyPrefix,
    create: redis::Script,
    replace: redis::Script,
    delete: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A tenant as read, with the exact JSON stored (the compare-and-set token).
struct Stored {
    json: String,
    tenant: Tenant,
}

impl RedisStore {
    /// A store on `redis` under keys starting with `prefix`.
    pub fn new(redis: ConnectionManager, prefix: KeyPrefix) -> Self {
        Self {
            redis,
            prefix,
            create: redis::Script::new(CREATE),
            replace: redis::Script::new(REPLACE),
            delete: redis::Script::new(DELETE),
        }
    }

    /// Connects to `url` (see [`crate::connect`]).
    pub async fn connect(url: &str, prefix: KeyPrefix) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::unavailable)?;
        let redis = crate::connect(&client)
            .await
            .map_err(StoreError::unavailable)?;
        Ok(Self::new(redis, prefix))
    }

    /// The key prefix.
    pub fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }

    fn tenant_key(&self, identifier: &str) -> String {
        self.prefix.key("tenant:", identifier)
    }

    fn status_key(&self, status: TenantStatus) -> String {
        self.prefix.key("status:", status.as_str())
    }

    fn domain_key(&self, domain: &str) -> String {
        self.prefix.key("domain:", domain)
    }

    fn id_key(&self, id: TenantId) -> String {
        self.prefix.key("id:", &id.to_string())
    }

    fn all_key(&self) -> String {
        self.prefix.key("tenants", "")
    }

    fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    fn decode(&self, identifier: &str, json: &str) -> Result<Tenant, StoreError> {
        serde_json::from_str(json).map_err(|error| {
            StoreError::Corrupt(format!("{}: {error}", self.tenant_key(identifier)))
        })
    }

    async fn read(&self, identifier: &str) -> Result<Option<Stored>, StoreError> {
        let json: Option<String> = self
            .connection()
            .get(self.tenant_key(identifier))
            .await
            .map_err(StoreError::unavailable)?;
        json.map(|json| {
            let tenant = self.decode(identifier, &json)?;
            Ok(Stored { json, tenant })
        })
        .transpose()
    }

    /// Reads the identifier stored at an index `key`, then the tenant, keeping it only if
    /// `belongs` (the index may be a moment behind a concurrent delete).
    async fn via_index(
        &self,
        key: String,
        belongs: impl Fn(&Tenant) -> bool,
    ) -> Result<Option<Tenant>, StoreError> {
        let identifier: Option<String> = self
            .connection()
            .get(key)
            .await
            .map_err(StoreError::unavailable)?;
        let Some(identifier) = identifier else {
            return Ok(None);
        };
        Ok(self
            .read(&identifier)
            .await?
            .map(|stored| stored.tenant)
            .filter(belongs))
    }

    /// Applies `change` to the stored tenant with an optimistic compare-and-set, retried on
    /// conflict. `change` returns the domains it removes and adds.
    async fn modify(
        &self,
        identifier: &TenantIdentifier,
        change: impl Fn(&mut Tenant) -> Result<DomainChange, StoreError>,
    ) -> Result<Tenant, StoreError> {
        for attempt in 0..MAX_ATTEMPTS {
            let Some(stored) = self.read(identifier.as_str()).await? else {
                return Err(StoreError::NotFound(identifier.clone()));
            };
            let old_status = stored.tenant.status;
            let mut tenant = stored.tenant;
            let domains = change(&mut tenant)?;
            tenant.updated_at = Utc::now();
            let json = serde_json::to_string(&tenant)
                .map_err(|error| StoreError::Corrupt(error.to_string()))?;
            let mut invocation = self.replace.key(self.tenant_key(identifier.as_str()));
            invocation
                .key(self.status_key(old_status))
                .key(self.status_key(tenant.status));
            for domain in domains.removed.iter().chain(&domains.added) {
                invocation.key(self.domain_key(domain));
            }
            let outcome: i64 = invocation
                .arg(&stored.json)
                .arg(&json)
                .arg(identifier.as_str())
                .arg(domains.removed.len())
                .invoke_async(&mut self.connection())
                .await
                .map_err(StoreError::unavailable)?;
            match outcome {
                0 => return Ok(tenant),
                -1 => {
                    if attempt > 10 {
                        tokio::time::sleep(Duration::from_micros(50 * attempt as u64 % 5000)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                taken => return Err(domain_taken(&domains.added, taken)),
            }
        }
        Err(StoreError::unavailable(format!(
            "tenant '{identifier}' changed concurrently {MAX_ATTEMPTS} times in a row"
        )))
    }
}

/// The custom domains an update gives up and gains.
#[derive(Debug, Default)]
struct DomainChange {
    removed: Vec<String>,
    added: Vec<String>,
}

fn domain_taken(domains: &[String], index: i64) -> StoreError {
    let domain = usize::try_from(index - 1)
        .ok()
        .and_then(|i| domains.get(i))
        .cloned()
        .unwrap_or_default();
    StoreError::DomainTaken(domain)
}

/// Domains are kept sorted and unique, as every store returns them.
fn normalise_domains(domains: &mut Vec<String>) {
    domains.sort_unstable();
    domains.dedup();
}

#[async_trait]
impl TenantStore for RedisStore {
    async fn get(&self, identifier: &TenantIdentifier) -> Result<Option<Tenant>, StoreError> {
        Ok(self
            .read(identifier.as_str())
            .await?
            .map(|stored| stored.tenant))
    }

    async fn get_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        self.via_index(self.id_key(id), |tenant| tenant.id == id)
            .await
    }

    async fn get_by_domain(&self, domain: &str) -> Result<Option<Tenant>, StoreError> {
        self.via_index(self.domain_key(domain), |tenant| {
            tenant.domains.iter().any(|d| d == domain)
        })
        .await
    }

    async fn create(&self, new: NewTenant) -> Result<Tenant, StoreError> {
        new.validate()?;
        let mut tenant = new.into_tenant();
        normalise_domains(&mut tenant.domains);
        let json = serde_json::to_string(&tenant)
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let identifier = tenant.identifier.as_str();
        let mut invocation = self.create.key(self.tenant_key(identifier));
        invocation
            .key(self.all_key())
            .key(self.status_key(tenant.status))
            .key(self.id_key(tenant.id));
        for domain in &tenant.domains {
            invocation.key(self.domain_key(domain));
        }
        let outcome: i64 = invocation
            .arg(identifier)
            .arg(json)
            .invoke_async(&mut self.connection())
            .await
            .map_err(StoreError::unavailable)?;
        match outcome {
            0 => Ok(tenant),
            -1 => Err(StoreError::AlreadyExists(tenant.identifier)),
            taken => Err(domain_taken(&tenant.domains, taken)),
        }
    }

    async fn update(
        &self,
        identifier: &TenantIdentifier,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError> {
        update.validate()?;
        self.modify(identifier, |tenant| {
            let old_domains = tenant.domains.clone();
            update.clone().apply(tenant);
            normalise_domains(&mut tenant.domains);
            Ok(DomainChange {
                removed: old_domains
                    .iter()
                    .filter(|d| !tenant.domains.contains(d))
                    .cloned()
                    .collect(),
                added: tenant
                    .domains
                    .iter()
                    .filter(|d| !old_domains.contains(d))
                    .cloned()
                    .collect(),
            })
        })
        .await
    }

    async fn set_status(
        &self,
        identifier: &TenantIdentifier,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError> {
        self.modify(identifier, |tenant| {
            tenant.status = tenant.status.transition(status)?;
            Ok(DomainChange::default())
        })
        .await
    }

    async fn update_metadata(
        &self,
        identifier: &TenantIdentifier,
        patch: Metadata,
    ) -> Result<Tenant, StoreError> {
        self.modify(identifier, |tenant| {
            merge_metadata(&mut tenant.metadata, patch.clone());
            Ok(DomainChange::default())
        })
        .await
    }

    async fn delete(&self, identifier: &TenantIdentifier) -> Result<bool, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(stored) = self.read(identifier.as_str()).await? else {
                return Ok(false);
            };
            let tenant = &stored.tenant;
            let mut invocation = self.delete.key(self.tenant_key(identifier.as_str()));
            invocation
                .key(self.all_key())
                .key(self.status_key(tenant.status))
                .key(self.id_key(tenant.id));
            for domain in &tenant.domains {
                invocation.key(self.domain_key(domain));
            }
            let outcome: i64 = invocation
                .arg(&stored.json)
                .arg(identifier.as_str())
                .invoke_async(&mut self.connection())
                .await
                .map_err(StoreError::unavailable)?;
            if outcome == 0 {
                return Ok(true);
            }
            tokio::task::yield_now().await;
        }
        Err(StoreError::unavailable(format!(
            "tenant '{identifier}' changed concurrently {MAX_ATTEMPTS} times in a row"
        )))
    }

    async fn list(&self, query: ListQuery) -> Result<Vec<Tenant>, StoreError> {
        let index = match query.status {
            Some(status) => self.status_key(status),
            None => self.all_key(),
        };
        let start = match &query.after {
            Some(after) => format!("({after}"),
            None => "-".to_owned(),
        };
        let mut connection = self.connection();
        let identifiers: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(index)
            .arg(start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(query.effective_limit())
            .query_async(&mut connection)
            .await
            .map_err(StoreError::unavailable)?;
        if identifiers.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = identifiers.iter().map(|i| self.tenant_key(i)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .map_err(StoreError::unavailable)?;
        identifiers
            .iter()
            .zip(values)
            .filter_map(|(identifier, json)| json.map(|json| self.decode(identifier, &json)))
            .filter(|tenant| match (tenant, query.status) {
                (Ok(tenant), Some(status)) => tenant.status == status,
                _ => true,
            })
            .collect()
    }

    async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError> {
        let index = match status {
            Some(status) => self.status_key(status),
            None => self.all_key(),
        };
        self.connection()
            .zcard(index)
            .await
            .map_err(StoreError::unavailable)
    }
}
