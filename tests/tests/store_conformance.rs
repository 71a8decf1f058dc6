//! The conformance suite of the tenant registry: every check runs against every store (the
//! in-memory one, PostgreSQL, MariaDB, a SQLite file and Redis), each on fresh storage, and
//! each (check, store) pair is its own test named `<check>::<store>`.

mod redis_support;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tenancy::redis::RedisStore;
use tenancy::sql::mysql::MySqlStore;
use tenancy::sql::postgres::PgStore;
use tenancy::sql::sqlite::SqliteStore;
use tenancy::{
    DEFAULT_TIER, IsolationMode, ListQuery, MemoryStore, Metadata, NewTenant, StoreError,
    TenantIdentifier, TenantStatus, TenantStore, TenantUpdate, TransitionError,
};
use tenancy_tests::{TestDatabase, unique_name};

/// How many tasks race in the concurrency checks.
const RACERS: usize = 50;

/// Which store a fixture runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Postgres,
    Mysql,
    Sqlite,
    Redis,
}

/// A SQL store, for the checks that need to reach behind the trait.
#[derive(Clone)]
enum SqlStore {
    Postgres(PgStore),
    Mysql(MySqlStore),
    Sqlite(SqliteStore),
}

impl SqlStore {
    async fn connect(kind: Kind, url: &str) -> Self {
        match kind {
            Kind::Postgres => Self::Postgres(PgStore::connect(url).await.expect("connect")),
            Kind::Mysql => Self::Mysql(MySqlStore::connect(url).await.expect("connect")),
            Kind::Sqlite => Self::Sqlite(SqliteStore::connect(url).await.expect("connect")),
            Kind::Memory | Kind::Redis => unreachable!("{kind:?} has no SQL"),
        }
    }

    fn tenant_store(&self) -> Arc<dyn TenantStore> {
        match self {
            Self::Postgres(store) => Arc::new(store.clone()),
            Self::Mysql(store) => Arc::new(store.clone()),
            Self::Sqlite(store) => Arc::new(store.clone()),
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(store) => store.migrate().await,
            Self::Mysql(store) => store.migrate().await,
            Self::Sqlite(store) => store.migrate().await,
        }
    }

    /// The rows of the migration ledger.
    async fn ledger_rows(&self) -> i64 {
        const SQL: &str = "SELECT COUNT(*) FROM tenancy_registry_migrations";
        match self {
            Self::Postgres(store) => sqlx::query_scalar(SQL).fetch_one(store.pool()).await,
            Self::Mysql(store) => sqlx::query_scalar(SQL).fetch_one(store.pool()).await,
            Self::Sqlite(store) => sqlx::query_scalar(SQL).fetch_one(store.pool()).await,
        }
        .expect("count ledger rows")
    }

    /// Writes `status` into the tenant's row directly, bypassing every check.
    async fn force_status(&self, identifier: &TenantIdentifier, status: &str) {
        let changed = match self {
            Self::Postgres(store) => {
                sqlx::query("UPDATE tenancy_tenants SET status = $1 WHERE identifier = $2")
                    .bind(status)
                    .bind(identifier.as_str())
                    .execute(store.pool())
                    .await
                    .map(|done| done.rows_affected())
            }
            Self::Mysql(store) => {
                sqlx::query("UPDATE tenancy_tenants SET status = ? WHERE identifier = ?")
                    .bind(status)
                    .bind(identifier.as_str())
                    .execute(store.pool())
                    .await
                    .map(|done| done.rows_affected())
            }
            Self::Sqlite(store) => {
                sqlx::query("UPDATE tenancy_tenants SET status = ? WHERE identifier = ?")
                    .bind(status)
                    .bind(identifier.as_str())
                    .execute(store.pool())
                    .await
                    .map(|done| done.rows_affected())
            }
        };
        assert_eq!(changed.expect("force status"), 1);
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(unique_name("tenancy_store"));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            eprintln!("could not remove {}: {error}", self.0.display());
        }
    }
}

/// What a fixture must keep alive until the test ends.
enum Storage {
    Memory,
    Database { _database: TestDatabase },
    Directory { _directory: TempDir },
    Redis { _keys: redis_support::KeySpace },
}

/// A store on fresh storage.
struct Fixture {
    kind: Kind,
    store: Arc<dyn TenantStore>,
    sql: Option<SqlStore>,
    url: String,
    // Declared last: dropped after the stores.
    _storage: Storage,
}

impl Fixture {
    async fn memory() -> Self {
        Self::open(Kind::Memory, true).await
    }

    async fn postgres() -> Self {
        Self::open(Kind::Postgres, true).await
    }

    async fn mysql() -> Self {
        Self::open(Kind::Mysql, true).await
    }

    async fn sqlite() -> Self {
        Self::open(Kind::Sqlite, true).await
    }

    /// A Redis store under a unique key prefix, whose keys are deleted when the test ends.
    async fn redis() -> Self {
        let keys = redis_support::KeySpace::new();
        let connection = tenancy::redis::connect(&redis_support::client())
            .await
            .expect("connect to redis");
        let store = RedisStore::new(connection, keys.prefix());
        Self {
            kind: Kind::Redis,
            store: Arc::new(store),
            sql: None,
            url: tenancy_tests::redis_url(),
            _storage: Storage::Redis { _keys: keys },
        }
    }

    /// A store of `kind` on fresh storage, with the registry tables when `migrated`.
    async fn open(kind: Kind, migrated: bool) -> Self {
        let (url, storage) = match kind {
            Kind::Memory => {
                return Self {
                    kind,
                    store: Arc::new(MemoryStore::new()),
                    sql: None,
                    url: String::new(),
                    _storage: Storage::Memory,
                };
            }
            Kind::Postgres => {
                let database = TestDatabase::postgres("store").await;
                (
                    database.url().to_owned(),
                    Storage::Database {
                        _database: database,
                    },
                )
            }
            Kind::Mysql => {
                let database = TestDatabase::mysql("store").await;
                (
                    database.url().to_owned(),
                    Storage::Database {
                        _database: database,
                    },
                )
            }
            Kind::Redis => return Self::redis().await,
            Kind::Sqlite => {
                let directory = TempDir::new();
                let url = format!("sqlite://{}", directory.0.join("registry.db").display());
                (
                    url,
                    Storage::Directory {
                        _directory: directory,
                    },
                )
            }
        };
        let sql = SqlStore::connect(kind, &url).await;
        if migrated {
            sql.migrate().await.expect("migrate");
        }
        Self {
            kind,
            store: sql.tenant_store(),
            sql: Some(sql),
            url,
            _storage: storage,
        }
    }

    fn sql(&self) -> &SqlStore {
        self.sql.as_ref().expect("a SQL store")
    }
}

fn ident(text: &str) -> TenantIdentifier {
    TenantIdentifier::parse(text).expect("valid identifier")
}

fn object(value: serde_json::Value) -> Metadata {
    value.as_object().expect("a JSON object").clone()
}

/// Runs `RACERS` copies of `task` at once and returns their results.
async fn race<T, F, Fut>(task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let handles: Vec<_> = (0..RACERS).map(|i| tokio::spawn(task(i))).collect();
    let mut results = Vec::with_capacity(RACERS);
    for handle in handles {
        results.push(handle.await.expect("task panicked"));
    }
    results
}

/// Everything written comes back, through each lookup.
async fn create_get_roundtrip(fixture: &Fixture) {
    let store = &fixture.store;
    let acme = ident("acme");
    let started = SystemTime::now() - Duration::from_secs(1);
    let mut new = NewTenant::new(acme.clone(), "Acme Inc. – ünïcode")
        .with_status(TenantStatus::Active)
        .with_domain("a.acme.example")
        .with_domain("b.acme.example")
        .with_metadata(object(json!({
            "plan": {"seats": 5, "features": ["sso", "audit"]},
            "ratio": 1.5,
            "enabled": true,
            "note": "quote ' and \" and \\ survive",
        })));
    new.isolation = Some(IsolationMode::Schema);
    new.placement = Some("db-1".to_owned());
    let created = store.create(new).await.expect("create");
    assert_eq!(created.identifier, acme);
    assert_eq!(created.name, "Acme Inc. – ünïcode");
    assert_eq!(created.status, TenantStatus::Active);
    assert_eq!(created.tier, DEFAULT_TIER);
    assert_eq!(created.isolation, Some(IsolationMode::Schema));
    assert_eq!(created.placement.as_deref(), Some("db-1"));
    assert_eq!(created.domains, ["a.acme.example", "b.acme.example"]);
    assert_eq!(created.metadata["plan"]["seats"], json!(5));
    assert_eq!(created.created_at, created.updated_at);
    let created_at = SystemTime::from(created.created_at);
    assert!(created_at >= started && created_at <= SystemTime::now() + Duration::from_secs(1));

    assert_eq!(store.get(&acme).await.unwrap().as_ref(), Some(&created));
    assert_eq!(
        store.get_by_id(created.id).await.unwrap().as_ref(),
        Some(&created)
    );
    assert_eq!(
        store
            .get_by_domain("b.acme.example")
            .await
            .unwrap()
            .as_ref(),
        Some(&created)
    );

    let premium = store
        .create(NewTenant::new(ident("beta"), "Beta").with_tier("premium"))
        .await
        .expect("create beta");
    assert_eq!(premium.tier, "premium");
    assert_eq!(premium.status, TenantStatus::Provisioning);
    assert!(premium.metadata.is_empty() && premium.domains.is_empty());
    assert_eq!(premium.isolation, None);
    assert_eq!(store.get(&ident("beta")).await.unwrap(), Some(premium));

    assert_eq!(store.get(&ident("nobody")).await.unwrap(), None);
    assert_eq!(
        store.get_by_id(tenancy::TenantId::new()).await.unwrap(),
        None
    );
    let invalid = store.create(NewTenant::new(ident("gamma"), "")).await;
    assert!(
        matches!(invalid, Err(StoreError::InvalidField(_))),
        "{invalid:?}"
    );
    assert_eq!(store.get(&ident("gamma")).await.unwrap(), None);
}

/// A second create of an identifier is refused and changes nothing.
async fn duplicate_identifier(fixture: &Fixture) {
    let store = &fixture.store;
    let acme = ident("acme");
    let first = store
        .create(NewTenant::new(acme.clone(), "First"))
        .await
        .unwrap();
    let second = store.create(NewTenant::new(acme.clone(), "Second")).await;
    assert!(
        matches!(&second, Err(StoreError::AlreadyExists(id)) if *id == acme),
        "{second:?}"
    );
    assert_eq!(store.get(&acme).await.unwrap(), Some(first));
    assert_eq!(store.count(None).await.unwrap(), 1);
}

/// Many racing creates of one identifier: exactly one wins, the rest are told it exists.
async fn concurrent_creates(fixture: &Fixture) {
    let store = fixture.store.clone();
    let results = race(|i| {
        let store = store.clone();
        async move {
            store
                .create(NewTenant::new(ident("contended"), format!("Racer {i}")))
                .await
        }
    })
    .await;
    let mut created = 0;
    let mut exists = 0;
    for result in results {
        match result {
            Ok(_) => created += 1,
            Err(StoreError::AlreadyExists(_)) => exists += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!((created, exists), (1, RACERS - 1));
    assert_eq!(store.count(None).await.unwrap(), 1);
}

/// Domains find their tenant, and no domain has two owners.
async fn domains(fixture: &Fixture) {
    let store = &fixture.store;
    let acme = store
        .create(
            NewTenant::new(ident("acme"), "Acme")
                .with_domain("acme.example.org")
                .with_domain("shop.acme.com"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_by_domain("shop.acme.com").await.unwrap(),
        Some(acme.clone())
    );
    assert_eq!(store.get_by_domain("other.acme.com").await.unwrap(), None);

    let taken = store
        .create(NewTenant::new(ident("beta"), "Beta").with_domain("shop.acme.com"))
        .await;
    assert!(
        matches!(&taken, Err(StoreError::DomainTaken(d)) if d == "shop.acme.com"),
        "{taken:?}"
    );
    assert_eq!(
        store.get(&ident("beta")).await.unwrap(),
        None,
        "nothing half-created"
    );

    store
        .create(NewTenant::new(ident("beta"), "Beta").with_domain("beta.example.org"))
        .await
        .unwrap();
    let update = TenantUpdate {
        domains: Some(vec![
            "new.beta.example".to_owned(),
            "acme.example.org".to_owned(),
        ]),
        ..TenantUpdate::default()
    };
    let taken = store.update(&ident("beta"), update).await;
    assert!(
        matches!(&taken, Err(StoreError::DomainTaken(d)) if d == "acme.example.org"),
        "{taken:?}"
    );
    let beta = store.get(&ident("beta")).await.unwrap().unwrap();
    assert_eq!(
        beta.domains,
        ["beta.example.org"],
        "a refused update changes nothing"
    );
    assert_eq!(store.get_by_domain("new.beta.example").await.unwrap(), None);
    assert_eq!(
        store.get_by_domain("acme.example.org").await.unwrap(),
        Some(acme)
    );
}

/// Updates change exactly the given fields.
async fn update_fields(fixture: &Fixture) {
    let store = &fixture.store;
    let acme = ident("acme");
    let created = store
        .create(NewTenant::new(acme.clone(), "Acme").with_domain("old.acme.example"))
        .await
        .unwrap();
    let update = TenantUpdate {
        name: Some("Acme Renamed".to_owned()),
        tier: Some("premium".to_owned()),
        isolation: Some(Some(IsolationMode::Rls)),
        placement: Some(Some("db-2".to_owned())),
        domains: Some(vec![
            "z.acme.example".to_owned(),
            "new.acme.example".to_owned(),
        ]),
    };
    let updated = store.update(&acme, update).await.unwrap();
    assert_eq!(updated.name, "Acme Renamed");
    assert_eq!(updated.tier, "premium");
    assert_eq!(updated.isolation, Some(IsolationMode::Rls));
    assert_eq!(updated.placement.as_deref(), Some("db-2"));
    let mut domains = updated.domains.clone();
    domains.sort();
    assert_eq!(domains, ["new.acme.example", "z.acme.example"]);
    assert_eq!(
        (updated.id, updated.created_at),
        (created.id, created.created_at)
    );
    assert!(updated.updated_at >= created.updated_at);
    assert_eq!(store.get_by_domain("old.acme.example").await.unwrap(), None);
    assert_eq!(
        store
            .get_by_domain("new.acme.example")
            .await
            .unwrap()
            .map(|t| t.id),
        Some(created.id)
    );

    let cleared = store
        .update(
            &acme,
            TenantUpdate {
                isolation: Some(None),
                placement: Some(None),
                ..TenantUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (cleared.isolation, cleared.placement.as_deref()),
        (None, None)
    );
    assert_eq!(
        (cleared.name.as_str(), cleared.tier.as_str()),
        ("Acme Renamed", "premium")
    );
    assert_eq!(cleared.domains.len(), 2, "domains untouched when not given");
    assert_eq!(store.get(&acme).await.unwrap(), Some(cleared));

    let missing = store
        .update(&ident("nobody"), TenantUpdate::default())
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    let bad_tier = TenantUpdate {
        tier: Some("Bad Tier".to_owned()),
        ..TenantUpdate::default()
    };
    let invalid = store.update(&acme, bad_tier).await;
    assert!(
        matches!(invalid, Err(StoreError::InvalidField(_))),
        "{invalid:?}"
    );
}

/// Every status change is allowed or refused exactly as the lifecycle says.
async fn lifecycle_transitions(fixture: &Fixture) {
    let store = &fixture.store;
    for (i, from) in TenantStatus::ALL.into_iter().enumerate() {
        for (j, to) in TenantStatus::ALL.into_iter().enumerate() {
            let id = ident(&format!("life-{i}-{j}"));
            store
                .create(NewTenant::new(id.clone(), "Lifecycle").with_status(from))
                .await
                .unwrap();
            let result = store.set_status(&id, to).await;
            let stored = store.get(&id).await.unwrap().unwrap();
            if from.can_become(to) {
                let tenant = result.unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
                assert_eq!(tenant.status, to);
                assert_eq!(stored, tenant, "{from} -> {to}");
            } else {
                assert!(
                    matches!(result, Err(StoreError::Transition(TransitionError { from: f, to: t })) if f == from && t == to),
                    "{from} -> {to}: {result:?}"
                );
                assert_eq!(stored.status, from, "a refused change leaves the status");
            }
        }
    }
    let missing = store
        .set_status(&ident("nobody"), TenantStatus::Active)
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

/// Racing metadata merges lose nothing, and `null` removes a key.
async fn concurrent_metadata_merges(fixture: &Fixture) {
    let store = fixture.store.clone();
    let acme = ident("acme");
    store
        .create(
            NewTenant::new(acme.clone(), "Acme")
                .with_metadata(object(json!({"keep": 1, "drop": 2}))),
        )
        .await
        .unwrap();
    let results = race(|i| {
        let (store, acme) = (store.clone(), acme.clone());
        async move {
            let patch = object(json!({ format!("key-{i}"): i }));
            store.update_metadata(&acme, patch).await
        }
    })
    .await;
    for result in results {
        result.expect("merge");
    }
    let metadata = store.get(&acme).await.unwrap().unwrap().metadata;
    for i in 0..RACERS {
        assert_eq!(
            metadata.get(&format!("key-{i}")),
            Some(&json!(i)),
            "key-{i} lost"
        );
    }
    assert_eq!(metadata.len(), RACERS + 2);

    let merged = store
        .update_metadata(&acme, object(json!({"drop": null, "keep": "changed"})))
        .await
        .unwrap();
    assert!(!merged.metadata.contains_key("drop"));
    assert_eq!(merged.metadata["keep"], json!("changed"));
    assert_eq!(store.get(&acme).await.unwrap(), Some(merged));
    let missing = store
        .update_metadata(&ident("nobody"), Metadata::new())
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

/// Deleting removes the tenant and its domains, and reports whether there was one.
async fn delete(fixture: &Fixture) {
    let store = &fixture.store;
    let acme = ident("acme");
    store
        .create(NewTenant::new(acme.clone(), "Acme").with_domain("shop.acme.com"))
        .await
        .unwrap();
    assert!(store.delete(&acme).await.unwrap());
    assert_eq!(store.get(&acme).await.unwrap(), None);
    assert_eq!(store.get_by_domain("shop.acme.com").await.unwrap(), None);
    assert!(!store.delete(&acme).await.unwrap());
    store
        .create(NewTenant::new(acme.clone(), "Acme again").with_domain("shop.acme.com"))
        .await
        .expect("identifier and domain are free again");
}

/// Lists are ordered by identifier, paged by keyset, filtered by status; counts agree.
async fn list_paging(fixture: &Fixture) {
    let store = &fixture.store;
    let status_of = |i: usize| {
        if i.is_multiple_of(3) {
            TenantStatus::Suspended
        } else {
            TenantStatus::Active
        }
    };
    for i in (0..25).rev() {
        store
            .create(NewTenant::new(ident(&format!("tenant-{i:02}")), "T").with_status(status_of(i)))
            .await
            .unwrap();
    }
    let pages = |query: ListQuery, size: u32| async move {
        let mut sizes = Vec::new();
        let mut seen = Vec::new();
        let mut query = ListQuery {
            limit: size,
            ..query
        };
        loop {
            let page = store.list(query.clone()).await.unwrap();
            if page.is_empty() {
                break;
            }
            sizes.push(page.len());
            seen.extend(page.iter().map(|t| t.identifier.to_string()));
            query = query.after(page.last().unwrap().identifier.clone());
        }
        (sizes, seen)
    };
    let (sizes, seen) = pages(ListQuery::default(), 10).await;
    assert_eq!(sizes, [10, 10, 5]);
    let expected: Vec<String> = (0..25).map(|i| format!("tenant-{i:02}")).collect();
    assert_eq!(seen, expected);

    let (sizes, seen) = pages(ListQuery::default().with_status(TenantStatus::Suspended), 4).await;
    assert_eq!(sizes, [4, 4, 1]);
    let expected: Vec<String> = (0..25)
        .filter(|i| status_of(*i) == TenantStatus::Suspended)
        .map(|i| format!("tenant-{i:02}"))
        .collect();
    assert_eq!(seen, expected);

    assert_eq!(
        store.list(ListQuery::first(0)).await.unwrap().len(),
        1,
        "limit at least 1"
    );
    assert_eq!(store.count(None).await.unwrap(), 25);
    assert_eq!(store.count(Some(TenantStatus::Suspended)).await.unwrap(), 9);
    assert_eq!(store.count(Some(TenantStatus::Active)).await.unwrap(), 16);
    assert_eq!(store.count(Some(TenantStatus::Deleted)).await.unwrap(), 0);
}

/// `migrate` again is a no-op; two processes migrating a fresh database at once both succeed.
async fn migrate_twice_and_concurrently(fixture: &Fixture) {
    let sql = fixture.sql();
    let applied = sql.ledger_rows().await;
    assert!(applied >= 1);
    fixture
        .store
        .create(NewTenant::new(ident("acme"), "Acme"))
        .await
        .unwrap();
    sql.migrate().await.expect("second migrate");
    sql.migrate().await.expect("third migrate");
    assert_eq!(sql.ledger_rows().await, applied);
    assert!(fixture.store.get(&ident("acme")).await.unwrap().is_some());

    let fresh = Fixture::open(fixture.kind, false).await;
    let other = SqlStore::connect(fixture.kind, &fresh.url).await;
    let (first, second) = tokio::join!(fresh.sql().migrate(), other.migrate());
    first.expect("first concurrent migrate");
    second.expect("second concurrent migrate");
    assert_eq!(fresh.sql().ledger_rows().await, applied);
    fresh
        .store
        .create(NewTenant::new(ident("acme"), "Acme"))
        .await
        .unwrap();
}

/// A row the store cannot read is reported as corrupt, not as missing and not as a panic.
async fn corrupt_row(fixture: &Fixture) {
    let store = &fixture.store;
    let acme = ident("acme");
    store
        .create(NewTenant::new(acme.clone(), "Acme"))
        .await
        .unwrap();
    fixture.sql().force_status(&acme, "bogus").await;
    let got = store.get(&acme).await;
    assert!(matches!(got, Err(StoreError::Corrupt(_))), "{got:?}");
    let listed = store.list(ListQuery::default()).await;
    assert!(matches!(listed, Err(StoreError::Corrupt(_))), "{listed:?}");
    let changed = store.set_status(&acme, TenantStatus::Active).await;
    assert!(
        matches!(changed, Err(StoreError::Corrupt(_))),
        "{changed:?}"
    );
    assert_eq!(store.count(None).await.unwrap(), 1);
}

/// A registry that cannot be reached is `Unavailable`, and quickly.
async fn unreachable_registry(fixture: &Fixture) {
    let started = Instant::now();
    let connected = match fixture.kind {
        Kind::Postgres => PgStore::connect("postgres://postgres@127.0.0.1:1/x")
            .await
            .map(drop),
        Kind::Mysql => MySqlStore::connect("mysql://root@127.0.0.1:1/x")
            .await
            .map(drop),
        Kind::Sqlite => SqliteStore::connect("sqlite:///nonexistent-tenancy-dir/sub/registry.db")
            .await
            .map(drop),
        Kind::Memory | Kind::Redis => unreachable!("{:?} is not a SQL store", fixture.kind),
    };
    assert!(
        matches!(connected, Err(StoreError::Unavailable(_))),
        "{connected:?}"
    );

    let short = Duration::from_millis(500);
    let lazy: Arc<dyn TenantStore> = match fixture.kind {
        Kind::Postgres => Arc::new(PgStore::new(
            sqlx::postgres::PgPoolOptions::new()
                .acquire_timeout(short)
                .connect_lazy("postgres://postgres@127.0.0.1:1/x")
                .unwrap(),
        )),
        Kind::Mysql => Arc::new(MySqlStore::new(
            sqlx::mysql::MySqlPoolOptions::new()
                .acquire_timeout(short)
                .connect_lazy("mysql://root@127.0.0.1:1/x")
                .unwrap(),
        )),
        Kind::Sqlite => Arc::new(SqliteStore::new(
            sqlx::sqlite::SqlitePoolOptions::new()
                .acquire_timeout(short)
                .connect_lazy("sqlite:///nonexistent-tenancy-dir/sub/registry.db")
                .unwrap(),
        )),
        Kind::Memory | Kind::Redis => unreachable!("{:?} is not a SQL store", fixture.kind),
    };
    let got = lazy.get(&ident("acme")).await;
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    let created = lazy.create(NewTenant::new(ident("acme"), "Acme")).await;
    assert!(
        matches!(created, Err(StoreError::Unavailable(_))),
        "{created:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// One test per (check, store): `<check>::<store>`.
macro_rules! conformance {
    ($stores:tt => $($check:ident),* $(,)?) => {
        $( conformance!(@check $check $stores); )*
    };
    (@check $check:ident [$($store:ident),*]) => {
        mod $check {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $store() {
                    let fixture = super::Fixture::$store().await;
                    super::$check(&fixture).await;
                }
            )*
        }
    };
}

conformance!([memory, postgres, mysql, sqlite, redis] =>
    create_get_roundtrip,
    duplicate_identifier,
    concurrent_creates,
    domains,
    update_fields,
    lifecycle_transitions,
    concurrent_metadata_merges,
    delete,
    list_paging,
);

conformance!([postgres, mysql, sqlite] =>
    migrate_twice_and_concurrently,
    corrupt_row,
    unreachable_registry,
);
