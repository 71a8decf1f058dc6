//! The layer with the header resolver: error table, gate, exclusions, extractors, caching,
//! outages, rate limiting and hostile header values.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use common::*;
use http::{HeaderValue, Request, StatusCode};
use tenancy_axum::{RateLimitDecision, RateLimiter, RateLimiterUnavailable, TenancyLayer};
use tenancy_core::cache::{CacheSettings, TenantCache};
use tenancy_core::{IdentifierPolicy, Tenant, TenantStatus, TenantStore};

#[tokio::test]
async fn header_admits_an_active_tenant() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)));
    let answer = send(&app, get_with("/whoami", &[("x-tenant-id", "acme")])).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "acme")
    );
}

#[tokio::test]
async fn custom_header_name() {
    let store = store().await;
    let resolver =
        tenancy_axum::resolver::HeaderResolver::new(http::HeaderName::from_static("x-org"));
    let app = app(TenancyLayer::builder(cache(&store)).resolver(resolver));
    let answer = send(&app, get_with("/whoami", &[("x-org", "globex")])).await;
    assert_eq!(answer.body, "globex");
    let answer = send(&app, get_with("/whoami", &[("x-tenant-id", "acme")])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

/// Every row of the error table: status, exact JSON detail, content type, extra headers.
#[tokio::test]
async fn error_table() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)));
    let cases: &[(Headers, StatusCode, &str)] = &[
        (&[], StatusCode::BAD_REQUEST, "Tenant identifier missing"),
        (
            &[("x-tenant-id", "Acme")],
            StatusCode::BAD_REQUEST,
            "tenant identifier may contain only lowercase letters a-z, digits and '-' (bad byte at position 0)",
        ),
        (
            &[("x-tenant-id", "nobody")],
            StatusCode::NOT_FOUND,
            "Tenant not found",
        ),
        (
            &[("x-tenant-id", "suspended-co")],
            StatusCode::FORBIDDEN,
            "Tenant is not active (status: suspended)",
        ),
        (
            &[("x-tenant-id", "pending-co")],
            StatusCode::FORBIDDEN,
            "Tenant is not active (status: provisioning)",
        ),
        (
            &[("x-tenant-id", "failed-co")],
            StatusCode::FORBIDDEN,
            "Tenant is not active (status: provisioning_failed)",
        ),
        (
            &[("x-tenant-id", "gone-co")],
            StatusCode::NOT_FOUND,
            "Tenant not found",
        ),
    ];
    for (headers, status, detail) in cases {
        let answer = send(&app, get_with("/whoami", headers)).await;
        assert_eq!(answer.status, *status, "{headers:?}");
        assert_eq!(answer.detail(), *detail, "{headers:?}");
    }
    let answer = send(&app, get_with("/whoami", &[])).await;
    assert_eq!(answer.body, r#"{"detail":"Tenant identifier missing"}"#);
}

#[tokio::test]
async fn configured_reserved_names_are_refused() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)).policy(IdentifierPolicy::new(["acme"])));
    let answer = send(&app, get_with("/whoami", &[("x-tenant-id", "acme")])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.detail(), "tenant identifier 'acme' is reserved");
}

#[tokio::test]
async fn hostile_header_values_get_400_never_500() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)));
    let megabyte = "a".repeat(1 << 20);
    let textual = [
        "acme'; DROP TABLE tenants;--",
        "' OR '1'='1",
        "\"acme\"",
        "ACME",
        "acme.",
        "acme ",
        "acme,globex",
        "acme, globex",
        "",
        "a",
        "../acme",
        "%61cme",
        "public",
        megabyte.as_str(),
    ];
    for value in textual {
        let answer = send(&app, get_with("/whoami", &[("x-tenant-id", value)])).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{value:.40?}");
        answer.detail();
    }
    // Unicode look-alike (Cyrillic 'а') and other bytes outside visible ASCII.
    for bytes in ["аcme".as_bytes(), b"acme\xff", b"\x80\x81\x82", b"ac\tme"] {
        let mut request = get_with("/whoami", &[]);
        request
            .headers_mut()
            .insert("x-tenant-id", HeaderValue::from_bytes(bytes).unwrap());
        let answer = send(&app, request).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bytes:?}");
    }
    // NUL, CR and LF cannot even be put into a header value.
    for bytes in [&b"acme\0"[..], b"acme\r\nx-evil: 1", b"acme\n"] {
        assert!(HeaderValue::from_bytes(bytes).is_err());
    }
    // Two header lines.
    let mut request = get_with("/whoami", &[("x-tenant-id", "acme")]);
    request
        .headers_mut()
        .append("x-tenant-id", HeaderValue::from_static("globex"));
    let answer = send(&app, request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.detail(), "more than one tenant identifier header");
}

#[tokio::test]
async fn hide_unknown_tenants_answers_malformed_like_unknown() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)).hide_unknown_tenants(true));
    for value in ["nobody", "Acme", "x", "acme,globex", "acme'--"] {
        let answer = send(&app, get_with("/whoami", &[("x-tenant-id", value)])).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{value}");
        assert_eq!(answer.detail(), "Tenant not found");
    }
    let answer = send(&app, get_with("/whoami", &[])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn excluded_paths_pass_through_on_whole_segments() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)).exclude("/health/"));
    for path in ["/health", "/health/live"] {
        let answer = send(&app, get_with(path, &[])).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "health none")
        );
        // Even with a header, excluded routes see no tenant.
        let answer = send(&app, get_with(path, &[("x-tenant-id", "acme")])).await;
        assert_eq!(answer.body, "health none");
    }
    let answer = send(&app, get_with("/healthx", &[])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let answer = send(&app, get_with("/healthx", &[("x-tenant-id", "acme")])).await;
    assert_eq!(answer.body, "health acme");
    assert_eq!(store.gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn extractor_without_layer_is_a_clear_500() {
    let response = tower::ServiceExt::oneshot(router(), get_with("/unlayered", &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], br#"{"detail":"tenancy layer not installed"}"#);
}

#[tokio::test]
async fn websocket_upgrades_take_the_same_gate() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)));
    let upgrade = |tenant: Option<&str>| {
        let mut builder = Request::builder()
            .uri("/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(tenant) = tenant {
            builder = builder.header("x-tenant-id", tenant);
        }
        builder.body(Body::empty()).unwrap()
    };
    assert_eq!(
        send(&app, upgrade(None)).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send(&app, upgrade(Some("suspended-co"))).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, upgrade(Some("nobody"))).await.status,
        StatusCode::NOT_FOUND
    );
    let answer = send(&app, upgrade(Some("acme"))).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "acme")
    );
}

#[tokio::test]
async fn known_tenants_are_served_from_the_cache() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)));
    for _ in 0..20 {
        send(&app, get_with("/whoami", &[("x-tenant-id", "acme")])).await;
    }
    assert_eq!(store.gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_flood_of_unknown_identifiers_hits_the_store_once_each() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)));
    let identifiers: Vec<String> = (0..200)
        .map(|i| format!("ghost-{i}-{}", i * 7919))
        .collect();
    for _ in 0..3 {
        for identifier in &identifiers {
            let answer = send(&app, get_with("/whoami", &[("x-tenant-id", identifier)])).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND);
        }
    }
    assert_eq!(store.gets.load(Ordering::SeqCst), identifiers.len());
}

#[tokio::test]
async fn negative_entries_expire_after_the_negative_ttl() {
    let store = store().await;
    let settings = CacheSettings {
        negative_ttl: Duration::from_millis(100),
        ..CacheSettings::default()
    };
    let layer = TenancyLayer::builder(TenantCache::new(store.clone(), settings)).build();
    let app = layer_app(&layer);
    let request = || get_with("/whoami", &[("x-tenant-id", "late-co")]);
    assert_eq!(send(&app, request()).await.status, StatusCode::NOT_FOUND);
    store
        .create(
            tenancy_core::NewTenant::new(id("late-co"), "Late").with_status(TenantStatus::Active),
        )
        .await
        .unwrap();
    assert_eq!(send(&app, request()).await.status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(send(&app, request()).await.status, StatusCode::OK);
}

#[tokio::test]
async fn registry_outage_is_503_and_not_cached_as_unknown() {
    let store = store().await;
    let layer = TenancyLayer::builder(cache(&store)).build();
    let app = layer_app(&layer);
    store.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let answer = send(&app, get_with("/whoami", &[("x-tenant-id", "acme")])).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers["retry-after"], "1");
        assert_eq!(answer.detail(), "Tenant registry unavailable, retry later");
    }
    assert_eq!(store.gets.load(Ordering::SeqCst), 3);
    store.failing.store(false, Ordering::SeqCst);
    let answer = send(&app, get_with("/whoami", &[("x-tenant-id", "acme")])).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn status_changes_apply_after_invalidation() {
    let store = store().await;
    let layer = TenancyLayer::builder(cache(&store)).build();
    let app = layer_app(&layer);
    let request = || get_with("/whoami", &[("x-tenant-id", "globex")]);
    assert_eq!(send(&app, request()).await.status, StatusCode::OK);
    store
        .set_status(&id("globex"), TenantStatus::Suspended)
        .await
        .unwrap();
    layer.cache().invalidate(&id("globex")).await;
    assert_eq!(send(&app, request()).await.status, StatusCode::FORBIDDEN);
}

/// A fixed-window limiter in memory: `limit` requests, then refusals; can be made to fail.
struct CountingLimiter {
    limit: u64,
    used: AtomicU64,
    down: AtomicBool,
}

#[async_trait]
impl RateLimiter for CountingLimiter {
    async fn check(&self, tenant: &Tenant) -> Result<RateLimitDecision, RateLimiterUnavailable> {
        assert!(tenant.is_active(), "only admitted tenants are counted");
        if self.down.load(Ordering::SeqCst) {
            return Err(RateLimiterUnavailable("redis down".into()));
        }
        let used = self.used.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(RateLimitDecision {
            allowed: used <= self.limit,
            limit: self.limit,
            remaining: self.limit.saturating_sub(used),
            reset_after: Duration::from_millis(2500),
        })
    }
}

#[tokio::test]
async fn rate_limit_hook() {
    let store = store().await;
    let limiter = Arc::new(CountingLimiter {
        limit: 2,
        used: AtomicU64::new(0),
        down: AtomicBool::new(false),
    });
    let app = app(TenancyLayer::builder(cache(&store)).rate_limiter(limiter.clone()));
    let request = || get_with("/whoami", &[("x-tenant-id", "acme")]);
    for remaining in ["1", "0"] {
        let answer = send(&app, request()).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["ratelimit-limit"], "2");
        assert_eq!(answer.headers["ratelimit-remaining"], remaining);
        assert_eq!(answer.headers["ratelimit-reset"], "3");
    }
    let answer = send(&app, request()).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.headers["retry-after"], "3");
    assert_eq!(answer.headers["ratelimit-limit"], "2");
    assert_eq!(answer.headers["ratelimit-remaining"], "0");
    assert_eq!(answer.detail(), "Rate limit exceeded for tenant acme");
    // Suspended tenants are refused before the limiter counts them.
    let answer = send(
        &app,
        get_with("/whoami", &[("x-tenant-id", "suspended-co")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(limiter.used.load(Ordering::SeqCst), 3);

    limiter.down.store(true, Ordering::SeqCst);
    let answer = send(&app, request()).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers["retry-after"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_see_only_their_own_tenant() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let app = app.clone();
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            tokio::spawn(async move {
                let answer = send(&app, get_with("/whoami", &[("x-tenant-id", tenant)])).await;
                assert_eq!(answer.body, tenant);
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}
