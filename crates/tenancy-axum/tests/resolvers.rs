//! Subdomain (with forwarded headers and custom domains), path (with rewrite), custom and
//! chained resolvers through the real layer.

mod common;

use std::borrow::Cow;
use std::net::SocketAddr;

use common::*;
use http::StatusCode;
use http::request::Parts;
use tenancy_axum::resolver::{
    CustomResolver, HeaderResolver, PathResolver, Resolution, SubdomainResolver,
};
use tenancy_axum::{PeerAddr, TenancyLayer};

fn subdomain() -> SubdomainResolver {
    SubdomainResolver::new("example.test").trusted_proxies(["10.0.0.0/8".parse().unwrap()])
}

#[tokio::test]
async fn subdomain_hosts() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)).resolver(subdomain()));
    let admitted = [
        ("acme.example.test", "acme"),
        ("ACME.Example.TEST", "acme"),
        ("acme.example.test:8080", "acme"),
        ("acme.example.test.", "acme"),
        ("Globex.example.test.:443", "globex"),
    ];
    for (host, tenant) in admitted {
        let answer = send(&app, get_with("/whoami", &[("host", host)])).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, tenant),
            "{host}"
        );
    }
    let refused: &[(&str, StatusCode, &str)] = &[
        (
            "example.test",
            StatusCode::BAD_REQUEST,
            "Tenant identifier missing",
        ),
        (
            "example.test:80",
            StatusCode::BAD_REQUEST,
            "Tenant identifier missing",
        ),
        (
            "a.acme.example.test",
            StatusCode::BAD_REQUEST,
            "host has more than one label before the tenant domain",
        ),
        (
            ".example.test",
            StatusCode::BAD_REQUEST,
            "host has an empty label",
        ),
        ("10.0.0.1", StatusCode::BAD_REQUEST, "host is an IP address"),
        (
            "10.0.0.1:8080",
            StatusCode::BAD_REQUEST,
            "host is an IP address",
        ),
        ("[::1]", StatusCode::BAD_REQUEST, "host is an IP address"),
        (
            "[2001:db8::1]:443",
            StatusCode::BAD_REQUEST,
            "host is an IP address",
        ),
        (
            "acme.other.test",
            StatusCode::BAD_REQUEST,
            "host is not under the tenant domain",
        ),
        (
            "acmeexample.test",
            StatusCode::BAD_REQUEST,
            "host is not under the tenant domain",
        ),
        (
            "ac_me.example.test",
            StatusCode::BAD_REQUEST,
            "host contains characters not allowed in a domain name",
        ),
        (
            "acme.example.test:x",
            StatusCode::BAD_REQUEST,
            "host is not a domain name",
        ),
        (
            "xn--80ak6aa92e.example.test",
            StatusCode::BAD_REQUEST,
            "tenant identifier must not contain '--'",
        ),
        (
            "www.example.test",
            StatusCode::BAD_REQUEST,
            "tenant identifier 'www' is reserved",
        ),
        (
            "nobody.example.test",
            StatusCode::NOT_FOUND,
            "Tenant not found",
        ),
        (
            "suspended-co.example.test",
            StatusCode::FORBIDDEN,
            "Tenant is not active (status: suspended)",
        ),
    ];
    for (host, status, detail) in refused {
        let answer = send(&app, get_with("/whoami", &[("host", host)])).await;
        assert_eq!(answer.status, *status, "{host}");
        assert_eq!(answer.detail(), *detail, "{host}");
    }
    // No Host header and no authority: missing.
    let answer = send(&app, get_with("/whoami", &[])).await;
    assert_eq!(answer.detail(), "Tenant identifier missing");
    // HTTP/2 style: the authority is in the URI.
    let answer = send(&app, get_with("http://globex.example.test/whoami", &[])).await;
    assert_eq!(answer.body, "globex");
}

#[tokio::test]
async fn forwarded_host_only_from_trusted_proxies() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)).resolver(subdomain()));
    let with_peer = |peer: Option<&str>, headers: &[(&str, &str)]| {
        let mut request = get_with("/whoami", headers);
        if let Some(peer) = peer {
            let addr: SocketAddr = peer.parse().unwrap();
            request.extensions_mut().insert(PeerAddr(addr));
        }
        request
    };
    let forwarded = [
        ("host", "acme.example.test"),
        ("x-forwarded-host", "globex.example.test"),
    ];
    let cases = [
        (Some("10.1.2.3:5000"), "globex"),
        (Some("192.0.2.7:5000"), "acme"),
        (None, "acme"),
    ];
    for (peer, want) in cases {
        let answer = send(&app, with_peer(peer, &forwarded)).await;
        assert_eq!(answer.body, want, "{peer:?}");
    }
    // A bare SocketAddr in the extensions counts as the peer too.
    let mut request = get_with("/whoami", &forwarded);
    request
        .extensions_mut()
        .insert("10.9.9.9:1".parse::<SocketAddr>().unwrap());
    assert_eq!(send(&app, request).await.body, "globex");

    // RFC 7239 `Forwarded`, quoted, last element wins (the one our proxy appended).
    let rfc = [
        ("host", "acme.example.test"),
        (
            "forwarded",
            "for=198.51.100.1;host=evil.example.test, for=10.0.0.2;host=\"Globex.example.test:443\";proto=https",
        ),
    ];
    assert_eq!(
        send(&app, with_peer(Some("10.0.0.1:1"), &rfc)).await.body,
        "globex"
    );
    assert_eq!(
        send(&app, with_peer(Some("203.0.113.9:1"), &rfc))
            .await
            .body,
        "acme"
    );
    // X-Forwarded-Host lists: the last entry wins; the client's spoofed first entry is ignored.
    let list = [
        ("host", "acme.example.test"),
        (
            "x-forwarded-host",
            "suspended-co.example.test, globex.example.test",
        ),
    ];
    assert_eq!(
        send(&app, with_peer(Some("10.0.0.1:1"), &list)).await.body,
        "globex"
    );
    // A trusted proxy forwarding a bad host still gets a 400.
    let bad = [("x-forwarded-host", "10.0.0.1")];
    let answer = send(&app, with_peer(Some("10.0.0.1:1"), &bad)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn custom_domains() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)).resolver(subdomain().custom_domains(true)));
    for host in ["shop.acme.com", "SHOP.ACME.COM:443", "shop.acme.com."] {
        let answer = send(&app, get_with("/whoami", &[("host", host)])).await;
        assert_eq!(answer.body, "acme", "{host}");
    }
    let answer = send(
        &app,
        get_with("/whoami", &[("host", "unknown.example.org")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = send(
        &app,
        get_with("/whoami", &[("host", "globex.example.test")]),
    )
    .await;
    assert_eq!(answer.body, "globex");
    // IP literals are still refused, not looked up as domains.
    let answer = send(&app, get_with("/whoami", &[("host", "127.0.0.1")])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn path_resolver_rewrites_for_routing() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)).resolver(PathResolver::default()));
    let answer = send(&app, get_with("/tenants/acme/whoami", &[])).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "acme")
    );
    let answer = send(&app, get_with("/tenants/globex/echo?page=2&q=a%20b", &[])).await;
    assert_eq!(answer.body, "/echo?page=2&q=a%20b");
    let answer = send(
        &app,
        get_with("http://api.example.test/tenants/acme/echo", &[]),
    )
    .await;
    assert_eq!(answer.body, "http://api.example.test/echo");
    // Percent-decoded once.
    let answer = send(&app, get_with("/tenants/%61cme/whoami", &[])).await;
    assert_eq!(answer.body, "acme");
    let answer = send(&app, get_with("/tenants/%2561cme/whoami", &[])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    // A custom prefix.
    let app2 = app_with_prefix(&store, "/orgs/");
    assert_eq!(
        send(&app2, get_with("/orgs/acme/whoami", &[])).await.body,
        "acme"
    );

    let refused: &[(&str, StatusCode)] = &[
        ("/tenants/../whoami", StatusCode::BAD_REQUEST),
        ("/tenants/./whoami", StatusCode::BAD_REQUEST),
        ("/tenants/%2e%2e/whoami", StatusCode::BAD_REQUEST),
        ("/tenants/acme/../admin", StatusCode::BAD_REQUEST),
        ("/tenants/acme/%2E/whoami", StatusCode::BAD_REQUEST),
        ("/tenants//whoami", StatusCode::BAD_REQUEST),
        ("/tenants/", StatusCode::BAD_REQUEST),
        ("/tenants", StatusCode::BAD_REQUEST),
        ("/tenantsacme/whoami", StatusCode::BAD_REQUEST),
        ("/whoami", StatusCode::BAD_REQUEST),
        ("/tenants/ACME/whoami", StatusCode::BAD_REQUEST),
        ("/tenants/acme%00/whoami", StatusCode::BAD_REQUEST),
        ("/tenants/acme%0D%0A/whoami", StatusCode::BAD_REQUEST),
        ("/tenants/acme%2Fglobex/whoami", StatusCode::BAD_REQUEST),
        (
            "/tenants/acme'%20OR%20'1'='1/whoami",
            StatusCode::BAD_REQUEST,
        ),
        ("/tenants/%D0%B0cme/whoami", StatusCode::BAD_REQUEST),
        ("/tenants/%FF/whoami", StatusCode::BAD_REQUEST),
        ("/tenants/nobody/whoami", StatusCode::NOT_FOUND),
        ("/tenants/gone-co/whoami", StatusCode::NOT_FOUND),
        ("/tenants/suspended-co/whoami", StatusCode::FORBIDDEN),
    ];
    for (path, status) in refused {
        let answer = send(&app, get_with(path, &[])).await;
        assert_eq!(answer.status, *status, "{path}");
        answer.detail();
    }
    // The tenant's own routes: an unknown route after a valid tenant is the router's 404.
    let answer = send(&app, get_with("/tenants/acme/nothing-here", &[])).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

fn app_with_prefix(
    store: &std::sync::Arc<CountingStore>,
    prefix: &str,
) -> tenancy_axum::TenancyService<axum::Router> {
    app(TenancyLayer::builder(cache(store)).resolver(PathResolver::new(prefix)))
}

fn api_key_resolver() -> impl tenancy_axum::resolver::TenantResolver {
    CustomResolver::new(|parts: &Parts| {
        let key = parts.headers.get("x-api-key").cloned();
        async move {
            tokio::task::yield_now().await;
            match key.as_ref().map(|key| key.as_bytes()) {
                None => Resolution::Missing,
                Some(b"key-acme") => Resolution::Identifier(Cow::Borrowed("acme")),
                Some(b"key-globex") => Resolution::Identifier(Cow::Owned("globex".to_owned())),
                Some(b"key-shop") => Resolution::Domain(Cow::Borrowed("shop.acme.com")),
                Some(b"key-bad") => Resolution::Identifier(Cow::Borrowed("Bad Id")),
                Some(_) => Resolution::Rejected(tenancy_axum::TenancyRejection::NotFound),
            }
        }
    })
}

#[tokio::test]
async fn custom_async_resolver() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store)).resolver(api_key_resolver()));
    let cases = [
        ("key-acme", StatusCode::OK, "acme"),
        ("key-globex", StatusCode::OK, "globex"),
        ("key-shop", StatusCode::OK, "acme"),
    ];
    for (key, status, body) in cases {
        let answer = send(&app, get_with("/whoami", &[("x-api-key", key)])).await;
        assert_eq!((answer.status, answer.body.as_str()), (status, body));
    }
    let answer = send(&app, get_with("/whoami", &[("x-api-key", "key-bad")])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let answer = send(&app, get_with("/whoami", &[("x-api-key", "other")])).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = send(&app, get_with("/whoami", &[])).await;
    assert_eq!(answer.detail(), "Tenant identifier missing");
}

#[tokio::test]
async fn chain_first_found_wins() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store))
        .resolver(PathResolver::default())
        .resolver(subdomain())
        .resolver(HeaderResolver::default()));
    let cases: &[(&str, Headers, &str)] = &[
        ("/tenants/acme/whoami", &[("x-tenant-id", "globex")], "acme"),
        (
            "/whoami",
            &[("host", "globex.example.test"), ("x-tenant-id", "acme")],
            "globex",
        ),
        (
            "/whoami",
            &[("host", "example.test"), ("x-tenant-id", "acme")],
            "acme",
        ),
        ("/whoami", &[("x-tenant-id", "globex")], "globex"),
    ];
    for (path, headers, want) in cases {
        let answer = send(&app, get_with(path, headers)).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, *want),
            "{path} {headers:?}"
        );
    }
    // A resolver that refuses ends the chain: a bad host is not papered over by the header.
    let answer = send(
        &app,
        get_with("/whoami", &[("host", "10.0.0.1"), ("x-tenant-id", "acme")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    // An unknown tenant found first is 404, even if a later resolver would find another.
    let answer = send(
        &app,
        get_with("/tenants/nobody/whoami", &[("x-tenant-id", "acme")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn strict_chain_refuses_disagreement() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store))
        .resolver(PathResolver::default())
        .resolver(subdomain().custom_domains(true))
        .resolver(HeaderResolver::default())
        .strict(true));
    let answer = send(
        &app,
        get_with("/tenants/acme/whoami", &[("x-tenant-id", "globex")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.detail(),
        "Tenant identifiers of the request disagree"
    );
    let answer = send(
        &app,
        get_with(
            "/whoami",
            &[("host", "globex.example.test"), ("x-tenant-id", "acme")],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    // Agreement (also via a custom domain) passes.
    let answer = send(
        &app,
        get_with(
            "/tenants/acme/whoami",
            &[("host", "shop.acme.com"), ("x-tenant-id", "acme")],
        ),
    )
    .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "acme")
    );
    let answer = send(&app, get_with("/whoami", &[("x-tenant-id", "acme")])).await;
    assert_eq!(answer.body, "acme");
}

/// Counts how often it is asked, then answers like `inner`.
struct Counted<R> {
    inner: R,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<R: tenancy_axum::resolver::TenantResolver> tenancy_axum::resolver::TenantResolver
    for Counted<R>
{
    fn resolve<'a>(&'a self, parts: &'a Parts) -> Resolution<'a> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.resolve(parts)
    }
}

#[tokio::test]
async fn each_resolver_runs_once_whether_the_tenant_is_cached_or_not() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let store = store().await;
    let counters: [Arc<AtomicUsize>; 3] = Default::default();
    let app = app(TenancyLayer::builder(cache(&store))
        .resolver(Counted {
            inner: PathResolver::default(),
            calls: counters[0].clone(),
        })
        .resolver(Counted {
            inner: api_key_resolver(),
            calls: counters[1].clone(),
        })
        .resolver(Counted {
            inner: HeaderResolver::default(),
            calls: counters[2].clone(),
        })
        .strict(true));
    let request = || {
        get_with(
            "/tenants/acme/echo",
            &[("x-api-key", "key-acme"), ("x-tenant-id", "acme")],
        )
    };
    // Cold: the path lookup misses the cache and the admission continues asynchronously.
    let cold = send(&app, request()).await;
    assert_eq!((cold.status, cold.body.as_str()), (StatusCode::OK, "/echo"));
    let counts = || counters.each_ref().map(|c| c.load(Ordering::SeqCst));
    assert_eq!(counts(), [1, 1, 1]);
    // Warm: same answer, each resolver again asked once.
    let warm = send(&app, request()).await;
    assert_eq!((warm.status, warm.body.as_str()), (StatusCode::OK, "/echo"));
    assert_eq!(counts(), [2, 2, 2]);
    assert_eq!(
        store.gets.load(Ordering::SeqCst),
        1,
        "one registry query for both requests"
    );
}
