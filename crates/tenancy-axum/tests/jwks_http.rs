//! The JWT resolver with a JWKS document fetched from a real HTTP server on 127.0.0.1: fetches
//! counted by the server, the refresh interval, rotation, single-flight, an unreachable server,
//! refused documents, and the layer built from `TENANCY_JWT_JWKS_URL`.
#![cfg(feature = "jwks-http")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use common::*;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tenancy_axum::TenancyLayer;
use tenancy_axum::resolver::jwt::{JwtConfigError, JwtResolver};
use tenancy_core::TenancyConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const RSA_A_PRIVATE: &[u8] = include_bytes!("fixtures/rsa-a.key.pem");
const RSA_B_PRIVATE: &[u8] = include_bytes!("fixtures/rsa-b.key.pem");
const ONLY_A: &[u8] = include_bytes!("fixtures/jwks-a.json");
const BOTH: &[u8] = include_bytes!("fixtures/jwks-ab.json");
const INTERVAL: Duration = Duration::from_millis(1500);

/// What the server's `/jwks` route answers, and how many requests it received.
#[derive(Clone)]
struct Served {
    document: Arc<Mutex<Vec<u8>>>,
    delay: Duration,
    fetches: Arc<AtomicUsize>,
}

async fn jwks(State(served): State<Served>) -> Vec<u8> {
    served.fetches.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(served.delay).await;
    served.document.lock().unwrap().clone()
}

/// key-a's document padded to `size` bytes of padding: valid JSON whatever its size.
fn padded(served: &Served, size: usize) -> Vec<u8> {
    served.fetches.fetch_add(1, Ordering::SeqCst);
    let mut document: serde_json::Value = serde_json::from_slice(ONLY_A).unwrap();
    document["padding"] = json!("x".repeat(size));
    serde_json::to_vec(&document).unwrap()
}

async fn oversized(State(served): State<Served>) -> Vec<u8> {
    padded(&served, 2 * 1024 * 1024)
}

async fn large_but_allowed(State(served): State<Served>) -> Vec<u8> {
    padded(&served, 900 * 1024)
}

async fn not_json(State(served): State<Served>) -> &'static str {
    served.fetches.fetch_add(1, Ordering::SeqCst);
    "<html>key-a</html>"
}

/// A JWKS server on 127.0.0.1 with an ephemeral port.
struct JwksServer {
    base: String,
    served: Served,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl JwksServer {
    async fn start(document: &[u8], delay: Duration) -> Self {
        let served = Served {
            document: Arc::new(Mutex::new(document.to_vec())),
            delay,
            fetches: Arc::new(AtomicUsize::new(0)),
        };
        let router = Router::new()
            .route("/jwks", get(jwks))
            .route("/big", get(oversized))
            .route("/large", get(large_but_allowed))
            .route("/html", get(not_json))
            .with_state(served.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            base,
            served,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn fetches(&self) -> usize {
        self.served.fetches.load(Ordering::SeqCst)
    }

    fn serve(&self, document: &[u8]) {
        *self.served.document.lock().unwrap() = document.to_vec();
    }

    /// Stops accepting and closes every connection; the port then refuses connections.
    async fn stop(&mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

fn token(private: &[u8], kid: &str, tenant: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let claims = json!({ "tenant_id": tenant, "exp": exp });
    encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(private).unwrap(),
    )
    .unwrap()
}

async fn call(app: &tenancy_axum::TenancyService<Router>, token: &str) -> (StatusCode, String) {
    let bearer = format!("Bearer {token}");
    let answer = send(app, get_with("/whoami", &[("authorization", &bearer)])).await;
    let text = if answer.status.is_success() {
        answer.body.clone()
    } else {
        answer.detail()
    };
    (answer.status, text)
}

async fn app_for(url: &str, interval: Duration) -> tenancy_axum::TenancyService<Router> {
    let resolver = JwtResolver::jwks_url(url, Algorithm::RS256, interval).unwrap();
    app(TenancyLayer::builder(cache(&store().await)).resolver(resolver))
}

fn ok(tenant: &str) -> (StatusCode, String) {
    (StatusCode::OK, tenant.to_owned())
}

fn unknown_kid() -> (StatusCode, String) {
    (
        StatusCode::UNAUTHORIZED,
        "Invalid token: unknown key id".to_owned(),
    )
}

#[tokio::test]
async fn fetches_lazily_and_again_on_an_unknown_kid_at_most_once_per_interval() {
    let server = JwksServer::start(ONLY_A, Duration::ZERO).await;
    let app = app_for(&server.url("/jwks"), INTERVAL).await;
    let token_a = token(RSA_A_PRIVATE, "key-a", "acme");
    let token_b = token(RSA_B_PRIVATE, "key-b", "globex");
    let token_z = token(RSA_A_PRIVATE, "key-z", "acme");
    assert_eq!(server.fetches(), 0, "nothing is fetched before a token");

    assert_eq!(call(&app, &token_a).await, ok("acme"));
    assert_eq!(server.fetches(), 1);
    assert_eq!(call(&app, &token_a).await, ok("acme"));
    assert_eq!(server.fetches(), 1, "a known kid is served from the cache");

    tokio::time::sleep(INTERVAL).await;
    assert_eq!(call(&app, &token_z).await, unknown_kid());
    assert_eq!(
        server.fetches(),
        2,
        "an unknown kid after the interval refetches"
    );
    assert_eq!(call(&app, &token_z).await, unknown_kid());
    assert_eq!(call(&app, &token_z).await, unknown_kid());
    assert_eq!(server.fetches(), 2, "no further fetch within the interval");

    // Rotation: key-b appears on the server; it is picked up once the interval has passed.
    server.serve(BOTH);
    assert_eq!(call(&app, &token_b).await, unknown_kid());
    assert_eq!(server.fetches(), 2);
    tokio::time::sleep(INTERVAL).await;
    assert_eq!(call(&app, &token_b).await, ok("globex"));
    assert_eq!(server.fetches(), 3);
    assert_eq!(call(&app, &token_a).await, ok("acme"));
    assert_eq!(server.fetches(), 3);

    // A token signed by key-b that claims key-a, and one without a kid.
    assert_eq!(
        call(&app, &token(RSA_B_PRIVATE, "key-a", "acme")).await,
        (
            StatusCode::UNAUTHORIZED,
            "Invalid token: bad signature".to_owned()
        )
    );
    let mut header = Header::new(Algorithm::RS256);
    header.kid = None;
    let no_kid = encode(
        &header,
        &json!({ "tenant_id": "acme", "exp": u64::MAX / 2 }),
        &EncodingKey::from_rsa_pem(RSA_A_PRIVATE).unwrap(),
    )
    .unwrap();
    assert_eq!(
        call(&app, &no_kid).await,
        (
            StatusCode::UNAUTHORIZED,
            "Invalid token: token has no key id".to_owned()
        )
    );
    assert_eq!(server.fetches(), 3);
}

#[tokio::test]
async fn concurrent_requests_share_one_fetch() {
    // A slow server, so that every request arrives while the fetch is under way.
    let server = JwksServer::start(BOTH, Duration::from_millis(300)).await;
    let app = app_for(&server.url("/jwks"), Duration::from_secs(3600)).await;
    let tokens: Vec<String> = (0..12)
        .map(|i| {
            if i % 2 == 0 {
                token(RSA_A_PRIVATE, "key-a", "acme")
            } else {
                token(RSA_B_PRIVATE, "key-b", "globex")
            }
        })
        .collect();
    let answers =
        futures_util::future::join_all(tokens.iter().map(|token| call(&app, token))).await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer, ok(if i % 2 == 0 { "acme" } else { "globex" }));
    }
    assert_eq!(server.fetches(), 1, "one fetch for all concurrent requests");

    // Concurrent unknown kids within the interval: no fetch at all.
    let token_z = token(RSA_A_PRIVATE, "key-z", "acme");
    let answers = futures_util::future::join_all((0..8).map(|_| call(&app, &token_z))).await;
    assert!(answers.into_iter().all(|answer| answer == unknown_kid()));
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn an_unreachable_server_keeps_the_old_keys() {
    let mut server = JwksServer::start(ONLY_A, Duration::ZERO).await;
    let app = app_for(&server.url("/jwks"), Duration::from_millis(200)).await;
    let token_a = token(RSA_A_PRIVATE, "key-a", "acme");
    let token_b = token(RSA_B_PRIVATE, "key-b", "globex");
    assert_eq!(call(&app, &token_a).await, ok("acme"));

    server.stop().await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        call(&app, &token_b).await,
        unknown_kid(),
        "refetch fails: 401"
    );
    assert_eq!(call(&app, &token_a).await, ok("acme"), "old keys kept");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(call(&app, &token_a).await, ok("acme"));
    assert_eq!(call(&app, &token_b).await, unknown_kid());
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn a_server_that_does_not_answer_in_time_is_a_401() {
    let server = JwksServer::start(ONLY_A, Duration::from_secs(30)).await;
    let app = app_for(&server.url("/jwks"), Duration::from_secs(3600)).await;
    let started = std::time::Instant::now();
    assert_eq!(
        call(&app, &token(RSA_A_PRIVATE, "key-a", "acme")).await,
        unknown_kid()
    );
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(10)).contains(&waited),
        "{waited:?}"
    );
}

#[tokio::test]
async fn oversized_and_non_json_documents_are_refused() {
    let server = JwksServer::start(ONLY_A, Duration::ZERO).await;
    let token_a = token(RSA_A_PRIVATE, "key-a", "acme");
    let large = app_for(&server.url("/large"), Duration::from_secs(3600)).await;
    assert_eq!(
        call(&large, &token_a).await,
        ok("acme"),
        "900 KiB is accepted"
    );
    let big = app_for(&server.url("/big"), Duration::from_secs(3600)).await;
    assert_eq!(call(&big, &token_a).await, unknown_kid());
    let html = app_for(&server.url("/html"), Duration::from_secs(3600)).await;
    assert_eq!(call(&html, &token_a).await, unknown_kid());
    let missing = app_for(&server.url("/nothing-here"), Duration::from_secs(3600)).await;
    assert_eq!(call(&missing, &token_a).await, unknown_kid());
    assert_eq!(
        server.fetches(),
        3,
        "/large, /big and /html were each fetched once"
    );
}

#[test]
fn urls_and_algorithms_are_checked() {
    for url in [
        "http://example.com/jwks",
        "http://localhost@evil.example/jwks",
        "ftp://127.0.0.1/jwks",
        "not a url",
        "/jwks",
    ] {
        let error = JwtResolver::jwks_url(url, Algorithm::RS256, INTERVAL).unwrap_err();
        assert!(
            matches!(error, JwtConfigError::JwksUrl { .. }),
            "{url}: {error}"
        );
    }
    for url in [
        "https://auth.example.test/.well-known/jwks.json",
        "http://localhost:8080/jwks",
        "http://127.0.0.1/jwks",
        "http://[::1]:9000/jwks",
    ] {
        assert!(
            JwtResolver::jwks_url(url, Algorithm::ES256, INTERVAL).is_ok(),
            "{url}"
        );
    }
    assert!(matches!(
        JwtResolver::jwks_url("https://auth.example.test/jwks", Algorithm::HS256, INTERVAL),
        Err(JwtConfigError::UnsupportedAlgorithm(Algorithm::HS256))
    ));
}

#[tokio::test]
async fn the_layer_from_config_fetches_the_jwks_url() {
    let server = JwksServer::start(BOTH, Duration::ZERO).await;
    let url = server.url("/jwks");
    let config = TenancyConfig::from_vars([
        ("TENANCY_RESOLUTION_STRATEGY", "jwt"),
        ("TENANCY_JWT_ALGORITHM", "RS256"),
        ("TENANCY_JWT_JWKS_URL", url.as_str()),
        ("TENANCY_JWT_JWKS_REFRESH_SECONDS", "60"),
    ])
    .unwrap();
    let layer = TenancyLayer::from_config(&config, cache(&store().await)).unwrap();
    let app = layer_app(&layer);
    assert_eq!(
        call(&app, &token(RSA_B_PRIVATE, "key-b", "globex")).await,
        ok("globex")
    );
    assert_eq!(
        call(&app, &token(RSA_A_PRIVATE, "key-a", "acme")).await,
        ok("acme")
    );
    assert_eq!(
        call(&app, &token(RSA_A_PRIVATE, "key-z", "acme")).await,
        unknown_kid()
    );
    assert_eq!(server.fetches(), 1, "refetch waits for the configured 60 s");
}
