//! End-to-end tests of the demo's contract (README quickstart and error table): the built
//! binary, started per backend and isolation mode, driven over HTTP like curl would.

mod demo_server;

use demo_server::DemoServer;
use serde_json::json;
use tenancy_tests::{
    RedisKeys, Server, TenantDatabases, TestDatabase, TestRole, mysql_server_url,
    postgres_second_server_url, postgres_server_url, redis_url, unique_name,
};

/// A temporary directory removed at the end of the test.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(unique_name("tenancy_demo"));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The whole contract on one running server: two tenants, isolation between them, the admin
/// API and every row of the error table. `second_tier` puts the second tenant on another tier
/// (hybrid deployments isolate the two differently).
async fn check_contract(server: &DemoServer, second_tier: Option<&str>) {
    let health = server.request("GET", "/health", &[], None).await;
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(health.json(), json!({ "status": "ok" }));

    let acme = server.create_tenant("acme", None).await;
    assert_eq!(acme["identifier"], "acme");
    assert_eq!(acme["status"], "active");
    server.create_tenant("globex", second_tier).await;

    // Admin API errors.
    let duplicate = server
        .admin(
            "POST",
            "/admin/tenants",
            Some(&json!({ "identifier": "acme", "name": "Again" })),
        )
        .await;
    assert_eq!(duplicate.status, 409, "{}", duplicate.text);
    let invalid = server
        .admin(
            "POST",
            "/admin/tenants",
            Some(&json!({ "identifier": "Bad_Name", "name": "x" })),
        )
        .await;
    assert!(matches!(invalid.status, 400 | 422), "{}", invalid.text);
    assert!(invalid.detail().contains("lowercase"), "{}", invalid.text);
    // A placement on a server the deployment does not have is refused before anything is
    // written (no tenant is left `provisioning_failed`).
    let misplaced = server
        .admin(
            "POST",
            "/admin/tenants",
            Some(&json!({ "identifier": "initech", "name": "Initech", "placement": "mars" })),
        )
        .await;
    assert_eq!(misplaced.status, 422, "{}", misplaced.text);
    assert!(
        misplaced.detail().contains("placement 'mars'")
            && misplaced.detail().contains("TENANCY_DATABASE_SERVERS"),
        "{}",
        misplaced.text
    );
    let no_token = server.request("GET", "/admin/tenants", &[], None).await;
    assert_eq!(no_token.status, 401);
    let wrong_token = server
        .request(
            "GET",
            "/admin/tenants",
            &[("Authorization", "Bearer nope")],
            None,
        )
        .await;
    assert_eq!(wrong_token.status, 401);
    let listed = server.admin("GET", "/admin/tenants", None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json().as_array().unwrap().len(), 2);
    assert_eq!(
        server
            .admin("GET", "/admin/tenants/acme", None)
            .await
            .status,
        200
    );
    assert_eq!(
        server
            .admin("GET", "/admin/tenants/nobody", None)
            .await
            .status,
        404
    );

    // Orders are per tenant.
    let first = server
        .post_as("acme", "/orders?description=First+order")
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.json()["description"], "First order");
    let mut globex_ids = Vec::new();
    for n in 0..3 {
        let reply = server
            .post_as("globex", &format!("/orders?description=globex-{n}"))
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        globex_ids.push(reply.json()["id"].as_i64().unwrap());
    }
    let acme_orders = server.get_as("acme", "/orders").await;
    assert_eq!(acme_orders.status, 200, "{}", acme_orders.text);
    assert_eq!(
        acme_orders.json(),
        json!({ "tenant": "acme", "orders": [{ "id": first.json()["id"], "description": "First order" }] })
    );
    let globex_orders = server.get_as("globex", "/orders").await.json();
    assert_eq!(globex_orders["orders"].as_array().unwrap().len(), 3);
    let acme_id = first.json()["id"].as_i64().unwrap();
    let foreign = *globex_ids.iter().find(|id| **id != acme_id).unwrap();
    let stolen = server.get_as("acme", &format!("/orders/{foreign}")).await;
    assert_eq!(
        stolen.status, 404,
        "acme must not see globex's order: {}",
        stolen.text
    );
    let own = server.get_as("globex", &format!("/orders/{foreign}")).await;
    assert_eq!(own.status, 200, "{}", own.text);

    // The error table.
    let missing = server.request("GET", "/orders", &[], None).await;
    assert_eq!(
        (missing.status, missing.detail()),
        (400, "Tenant identifier missing".into())
    );
    let malformed = server.get_as("Bad'; DROP TABLE orders;--", "/orders").await;
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    let unknown = server.get_as("nobody", "/orders").await;
    assert_eq!(
        (unknown.status, unknown.detail()),
        (404, "Tenant not found".into())
    );

    let suspended = server
        .admin("POST", "/admin/tenants/globex/suspend", None)
        .await;
    assert_eq!(
        (suspended.status, suspended.json()["status"].clone()),
        (200, json!("suspended"))
    );
    let refused = server.get_as("globex", "/orders").await;
    assert_eq!(
        (refused.status, refused.detail()),
        (403, "Tenant is not active (status: suspended)".into())
    );
    let activated = server
        .admin("POST", "/admin/tenants/globex/activate", None)
        .await;
    assert_eq!(activated.json()["status"], "active");
    assert_eq!(server.get_as("globex", "/orders").await.status, 200);

    let deleted = server.admin("DELETE", "/admin/tenants/globex", None).await;
    assert!(matches!(deleted.status, 200 | 204), "{}", deleted.text);
    let gone = server.get_as("globex", "/orders").await;
    assert_eq!(
        (gone.status, gone.detail()),
        (404, "Tenant not found".into())
    );

    // Purge, then re-register: the tenant starts empty.
    let purged = server
        .admin("DELETE", "/admin/tenants/globex?purge=true", None)
        .await;
    assert!(matches!(purged.status, 200 | 204), "{}", purged.text);
    assert_eq!(
        server
            .admin("GET", "/admin/tenants/globex", None)
            .await
            .status,
        404
    );
    server.create_tenant("globex", second_tier).await;
    let fresh = server.get_as("globex", "/orders").await;
    assert_eq!(fresh.json()["orders"], json!([]), "{}", fresh.text);
    // And acme was never touched.
    assert_eq!(
        server.get_as("acme", "/orders").await.json()["orders"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_default_needs_no_configuration() {
    let data = TempDir::new();
    let server = DemoServer::start(&[("TENANCY_DEMO_DATA_DIR", data.path())]);
    check_contract(&server, None).await;
    assert!(data.0.join("registry.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_per_tenant() {
    let db = TestDatabase::postgres("demo_schema").await;
    let server = DemoServer::start(&[
        ("TENANCY_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "schema".into()),
    ]);
    check_contract(&server, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_row_level_security_with_a_runtime_role() {
    let role = TestRole::create("demo_rt").await;
    let db = TestDatabase::postgres("demo_rls").await;
    let server = DemoServer::start(&[
        ("TENANCY_DATABASE_URL", role.url(db.name())),
        ("TENANCY_ADMIN_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "rls".into()),
    ]);
    check_contract(&server, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_per_tenant_with_a_runtime_role() {
    let role = TestRole::create("demo_dbrt").await;
    let db = TestDatabase::postgres("demo_dbpt").await;
    // Dropped before the role (declared after it), also when the test fails before the purge:
    // the role cannot be dropped while tenant databases grant it privileges.
    let databases = TenantDatabases::new(Server::Postgres, "demo_dbpt");
    let server = DemoServer::start(&[
        ("TENANCY_DATABASE_URL", role.url(db.name())),
        ("TENANCY_ADMIN_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "database".into()),
        ("TENANCY_DATABASE_PREFIX", databases.prefix().to_owned()),
    ]);
    check_contract(&server, None).await;
    for tenant in ["acme", "globex"] {
        let reply = server
            .admin(
                "DELETE",
                &format!("/admin/tenants/{tenant}?purge=true"),
                None,
            )
            .await;
        assert!(matches!(reply.status, 200 | 204), "{}", reply.text);
    }
    let left = databases.on(&postgres_server_url()).await;
    assert!(left.is_empty(), "purge left databases behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_tenants_live_on_the_server_of_their_placement() {
    let db = TestDatabase::postgres("demo_placed").await;
    let databases = TenantDatabases::new(Server::Postgres, "demo_placed");
    let second = postgres_second_server_url();
    let server = DemoServer::start(&[
        ("TENANCY_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "database".into()),
        ("TENANCY_DATABASE_PREFIX", databases.prefix().to_owned()),
        ("TENANCY_DATABASE_SERVERS", format!("second={second}")),
    ]);
    server.create_tenant("acme", None).await;
    let placed = server
        .admin(
            "POST",
            "/admin/tenants",
            Some(&json!({ "identifier": "globex", "name": "Globex", "placement": "second" })),
        )
        .await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    assert_eq!(placed.json()["placement"], "second");
    for tenant in ["acme", "globex"] {
        let order = server
            .post_as(tenant, &format!("/orders?description={tenant}"))
            .await;
        assert_eq!(order.status, 201, "{}", order.text);
        let orders = server.get_as(tenant, "/orders").await.json();
        assert_eq!(orders["orders"][0]["description"], tenant);
    }
    let name = |tenant: &str| format!("{}{tenant}", databases.prefix());
    assert_eq!(databases.on(&postgres_server_url()).await, [name("acme")]);
    assert_eq!(databases.on(&second).await, [name("globex")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rls_refuses_a_superuser_runtime_role() {
    let db = TestDatabase::postgres("demo_rls_su").await;
    let (code, log) = DemoServer::refuses(&[
        ("TENANCY_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "rls".into()),
    ]);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("superuser"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hybrid_by_tier() {
    let role = TestRole::create("demo_hy").await;
    let db = TestDatabase::postgres("demo_hybrid").await;
    let server = DemoServer::start(&[
        ("TENANCY_DATABASE_URL", role.url(db.name())),
        ("TENANCY_ADMIN_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "hybrid".into()),
        (
            "TENANCY_HYBRID_TIER_ISOLATION",
            "premium=schema,standard=rls".into(),
        ),
    ]);
    check_contract(&server, Some("premium")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_names_the_variable() {
    let (code, log) = DemoServer::refuses(&[("TENANCY_ISOLATION_STRATEGY", "tables".into())]);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("TENANCY_ISOLATION_STRATEGY"), "{log}");
    assert!(log.contains("tables"), "{log}");
    // SQLite files cannot be placed on database servers: refused, not ignored.
    let data = TempDir::new();
    let (code, log) = DemoServer::refuses(&[
        ("TENANCY_DEMO_DATA_DIR", data.path()),
        (
            "TENANCY_DATABASE_SERVERS",
            format!("second={}", postgres_second_server_url()),
        ),
    ]);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("TENANCY_DATABASE_SERVERS is set, but"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_and_rate_limits() {
    let data = TempDir::new();
    let keys = RedisKeys::new("demo");
    let server = DemoServer::start(&[
        ("TENANCY_DEMO_DATA_DIR", data.path()),
        ("TENANCY_REDIS_URL", redis_url()),
        ("TENANCY_REDIS_KEY_PREFIX", keys.prefix().to_owned()),
        ("TENANCY_ENABLE_RATE_LIMITING", "true".into()),
        ("TENANCY_RATE_LIMIT_PER_MINUTE", "5".into()),
    ]);
    server.create_tenant("acme", None).await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let reply = server.get_as("acme", "/orders").await;
        if reply.status == 429 {
            assert_eq!(reply.detail(), "Rate limit exceeded for tenant acme");
            assert!(
                reply.headers.contains_key("retry-after"),
                "{:?}",
                reply.headers
            );
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    // The health check is not rate limited, and other tenants have their own budget.
    assert_eq!(
        server.request("GET", "/health", &[], None).await.status,
        200
    );
    server.create_tenant("globex", None).await;
    assert_eq!(server.get_as("globex", "/orders").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_database_per_tenant() {
    let db = TestDatabase::mysql("demo_maria").await;
    // Dropped also when the test fails before its purge.
    let databases = TenantDatabases::new(Server::Mysql, "demo_maria");
    let server = DemoServer::start(&[
        ("TENANCY_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "database".into()),
        ("TENANCY_DATABASE_PREFIX", databases.prefix().to_owned()),
    ]);
    check_contract(&server, None).await;
    for tenant in ["acme", "globex"] {
        let reply = server
            .admin(
                "DELETE",
                &format!("/admin/tenants/{tenant}?purge=true"),
                None,
            )
            .await;
        assert!(matches!(reply.status, 200 | 204), "{}", reply.text);
    }
    let left = databases.list().await;
    assert!(left.is_empty(), "purge left databases behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_refuses_schema_isolation() {
    let db = TestDatabase::mysql("demo_maria").await;
    let url = format!("{}/{}", mysql_server_url(), db.name());
    let (code, log) = DemoServer::refuses(&[
        ("TENANCY_DATABASE_URL", url),
        ("TENANCY_ISOLATION_STRATEGY", "schema".into()),
    ]);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("TENANCY_ISOLATION_STRATEGY"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_reaches_another_instance_through_redis() {
    let keys = RedisKeys::new("demo_two");
    let db = TestDatabase::postgres("demo_two").await;
    let env = [
        ("TENANCY_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "schema".to_owned()),
        ("TENANCY_REDIS_URL", redis_url()),
        ("TENANCY_REDIS_KEY_PREFIX", keys.prefix().to_owned()),
        // Long enough that only an invalidation message, not expiry, can explain a quick 403.
        ("TENANCY_CACHE_TTL_SECONDS", "600".to_owned()),
    ];
    let a = DemoServer::start(&env);
    let b = DemoServer::start(&env);
    a.create_tenant("acme", None).await;
    let mut delays = Vec::new();
    for _ in 0..10 {
        assert_eq!(
            b.get_as("acme", "/orders").await.status,
            200,
            "B serves (and caches) acme"
        );
        let started = std::time::Instant::now();
        assert_eq!(
            a.admin("POST", "/admin/tenants/acme/suspend", None)
                .await
                .status,
            200
        );
        loop {
            let reply = b.get_as("acme", "/orders").await;
            if reply.status == 403 {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "B still serves a suspended tenant after 1 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        delays.push(started.elapsed());
        assert_eq!(
            a.admin("POST", "/admin/tenants/acme/activate", None)
                .await
                .status,
            200
        );
        let started = std::time::Instant::now();
        while b.get_as("acme", "/orders").await.status != 200 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "B does not see the reactivation"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    delays.sort();
    println!(
        "suspension seen by the other instance after: median {:?}, max {:?}",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
}

/// Kills every connection to the test database (registry and runtime pools alike).
async fn terminate_connections(database: &str) -> u64 {
    use sqlx::Connection;
    let url = format!("{}/postgres", tenancy_tests::postgres_server_url());
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    killed.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_outage_answers_503_and_recovers() {
    let db = TestDatabase::postgres("demo_outage").await;
    let server = DemoServer::start(&[
        ("TENANCY_DATABASE_URL", db.url().to_owned()),
        ("TENANCY_ISOLATION_STRATEGY", "schema".into()),
        // Short cache lifetimes so requests keep reaching the registry during the outage.
        ("TENANCY_CACHE_TTL_SECONDS", "1".into()),
        ("TENANCY_NEGATIVE_CACHE_TTL_SECONDS", "1".into()),
    ]);
    for tenant in ["acme", "globex"] {
        server.create_tenant(tenant, None).await;
    }
    let server = std::sync::Arc::new(server);
    let load: Vec<_> = (0..4)
        .map(|worker| {
            let server = server.clone();
            tokio::spawn(async move {
                let tenant = if worker % 2 == 0 { "acme" } else { "globex" };
                let mut statuses = Vec::new();
                let until = std::time::Instant::now() + std::time::Duration::from_secs(4);
                while std::time::Instant::now() < until {
                    let reply = server.get_as(tenant, "/orders").await;
                    if reply.status == 503 {
                        assert!(
                            reply.headers.contains_key("retry-after"),
                            "{:?}",
                            reply.headers
                        );
                    }
                    statuses.push(reply.status);
                }
                statuses
            })
        })
        .collect();
    let mut killed = 0;
    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        killed += terminate_connections(db.name()).await;
    }
    let mut statuses = Vec::new();
    for worker in load {
        statuses.extend(worker.await.unwrap());
    }
    assert!(killed > 0, "the outage killed no connection");
    let unexpected: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(s, 200 | 503))
        .collect();
    assert!(
        unexpected.is_empty(),
        "only 200 or 503 during the outage, got {unexpected:?}"
    );
    // Recovery without a restart: a little while after the last kill, every request succeeds.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for tenant in ["acme", "globex", "acme", "globex"] {
        let reply = server.get_as(tenant, "/orders").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    println!(
        "outage: {} requests, {} answered 503, {killed} connections killed",
        statuses.len(),
        statuses.iter().filter(|s| **s == 503).count()
    );
}
