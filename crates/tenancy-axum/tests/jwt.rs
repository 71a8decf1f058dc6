//! The JWT resolver through the real layer: valid tokens and the usual attacks.
#![cfg(feature = "jwt")]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tenancy_axum::TenancyLayer;
use tenancy_axum::resolver::jwt::JwtResolver;

const SECRET: &[u8] = b"test secret that is long enough for HS256";
const RSA_A_PRIVATE: &[u8] = include_bytes!("fixtures/rsa-a.key.pem");
const RSA_A_PUBLIC: &[u8] = include_bytes!("fixtures/rsa-a.pub.pem");
const RSA_B_PRIVATE: &[u8] = include_bytes!("fixtures/rsa-b.key.pem");
const EC_PRIVATE: &[u8] = include_bytes!("fixtures/ec.key.pem");
const EC_PUBLIC: &[u8] = include_bytes!("fixtures/ec.pub.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(tenant: Value) -> Value {
    json!({ "sub": "user-1", "tenant_id": tenant, "exp": now() + 600 })
}

fn hs(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn rs(claims: &Value, private: &[u8], kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(private).unwrap(),
    )
    .unwrap()
}

async fn call(
    app: &tenancy_axum::TenancyService<axum::Router>,
    token: &str,
) -> (StatusCode, String, Option<String>) {
    let answer = send(
        app,
        get_with("/whoami", &[("authorization", &format!("Bearer {token}"))]),
    )
    .await;
    let challenge = answer
        .headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = if answer.status.is_success() {
        answer.body.clone()
    } else {
        answer.detail()
    };
    (answer.status, text, challenge)
}

async fn refused(app: &tenancy_axum::TenancyService<axum::Router>, token: &str, why: &str) {
    let (status, detail, challenge) = call(app, token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {detail}");
    assert_eq!(detail, format!("Invalid token: {why}"));
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer error="invalid_token""#)
    );
}

#[tokio::test]
async fn hs256_tokens_and_attacks() {
    let store = store().await;
    let resolver = JwtResolver::hs256(SECRET)
        .audience(&["orders"])
        .issuer(&["https://auth.example.test"]);
    let app = app(TenancyLayer::builder(cache(&store)).resolver(resolver));
    let good = |tenant: Value| {
        let mut c = claims(tenant);
        c["aud"] = json!("orders");
        c["iss"] = json!("https://auth.example.test");
        c
    };
    let (status, body, _) = call(&app, &hs(&good(json!("acme")), SECRET)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "acme"));

    // alg none: the signed token's payload with an unsigned header.
    let signed = hs(&good(json!("acme")), SECRET);
    let payload = signed.split('.').nth(1).unwrap();
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    refused(
        &app,
        &format!("{none_header}.{payload}."),
        "malformed token",
    )
    .await;
    // Tampered payload keeps the old signature.
    let globex = hs(&good(json!("globex")), SECRET);
    let mut parts: Vec<&str> = signed.split('.').collect();
    parts[1] = globex.split('.').nth(1).unwrap();
    refused(&app, &parts.join("."), "bad signature").await;
    refused(
        &app,
        &hs(&good(json!("acme")), b"another secret of decent length"),
        "bad signature",
    )
    .await;

    let mut expired = good(json!("acme"));
    expired["exp"] = json!(now() - 3600);
    refused(&app, &hs(&expired, SECRET), "token expired").await;
    let mut not_yet = good(json!("acme"));
    not_yet["nbf"] = json!(now() + 3600);
    refused(&app, &hs(&not_yet, SECRET), "token not yet valid").await;
    let mut no_exp = good(json!("acme"));
    no_exp.as_object_mut().unwrap().remove("exp");
    refused(&app, &hs(&no_exp, SECRET), "required claim missing").await;
    let mut wrong_aud = good(json!("acme"));
    wrong_aud["aud"] = json!("billing");
    refused(&app, &hs(&wrong_aud, SECRET), "wrong audience").await;
    let mut no_aud = good(json!("acme"));
    no_aud.as_object_mut().unwrap().remove("aud");
    refused(&app, &hs(&no_aud, SECRET), "required claim missing").await;
    let mut wrong_iss = good(json!("acme"));
    wrong_iss["iss"] = json!("https://evil.example");
    refused(&app, &hs(&wrong_iss, SECRET), "wrong issuer").await;

    let mut no_claim = good(json!("acme"));
    no_claim.as_object_mut().unwrap().remove("tenant_id");
    refused(&app, &hs(&no_claim, SECRET), "token has no tenant claim").await;
    refused(
        &app,
        &hs(&good(json!(42)), SECRET),
        "tenant claim is not a string",
    )
    .await;
    refused(
        &app,
        &hs(&good(json!(["acme"])), SECRET),
        "tenant claim is not a string",
    )
    .await;
    refused(&app, "not-a-token", "malformed token").await;
    refused(&app, "a.b.c", "malformed token").await;

    // A valid token with a malformed identifier: the identifier policy answers (400).
    let (status, _, _) = call(&app, &hs(&good(json!("ACME'--")), SECRET)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(&app, &hs(&good(json!("suspended-co")), SECRET)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // No bearer token at all: the identifier is missing.
    let answer = send(&app, get_with("/whoami", &[])).await;
    assert_eq!(answer.detail(), "Tenant identifier missing");
    let answer = send(
        &app,
        get_with("/whoami", &[("authorization", "Basic dXNlcjpwYXNz")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn leeway_and_claim_name() {
    let store = store().await;
    let resolver = JwtResolver::hs256(SECRET)
        .leeway(Duration::from_secs(7200))
        .claim("org");
    let app = app(TenancyLayer::builder(cache(&store)).resolver(resolver));
    let token = hs(&json!({ "org": "globex", "exp": now() - 3600 }), SECRET);
    assert_eq!(call(&app, &token).await.1, "globex");
    let token = hs(&json!({ "tenant_id": "globex", "exp": now() + 60 }), SECRET);
    refused(&app, &token, "token has no tenant claim").await;
}

#[tokio::test]
async fn rs256_refuses_algorithm_confusion() {
    let store = store().await;
    let app = app(TenancyLayer::builder(cache(&store))
        .resolver(JwtResolver::rs256_pem(RSA_A_PUBLIC).unwrap()));
    let (status, body, _) = call(&app, &rs(&claims(json!("acme")), RSA_A_PRIVATE, None)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "acme"));
    // HS256 "signed" with the public key as the HMAC secret.
    refused(
        &app,
        &hs(&claims(json!("acme")), RSA_A_PUBLIC),
        "algorithm not allowed",
    )
    .await;
    refused(
        &app,
        &rs(&claims(json!("acme")), RSA_B_PRIVATE, None),
        "bad signature",
    )
    .await;
    assert!(JwtResolver::rs256_pem(b"not a key").is_err());
}

#[tokio::test]
async fn es256_tokens() {
    let store = store().await;
    let app =
        app(TenancyLayer::builder(cache(&store))
            .resolver(JwtResolver::es256_pem(EC_PUBLIC).unwrap()));
    let token = encode(
        &Header::new(Algorithm::ES256),
        &claims(json!("globex")),
        &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
    )
    .unwrap();
    assert_eq!(call(&app, &token).await.1, "globex");
    refused(
        &app,
        &rs(&claims(json!("acme")), RSA_A_PRIVATE, None),
        "algorithm not allowed",
    )
    .await;
}

fn temp_jwks(contents: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tenancy-jwks-{}-{}.json",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

#[tokio::test]
async fn jwks_file_selects_by_kid_and_reloads_at_most_once_per_interval() {
    let store = store().await;
    let only_a = include_bytes!("fixtures/jwks-a.json");
    let both = include_bytes!("fixtures/jwks-ab.json");
    let token_a = rs(&claims(json!("acme")), RSA_A_PRIVATE, Some("key-a"));
    let token_b = rs(&claims(json!("globex")), RSA_B_PRIVATE, Some("key-b"));

    // A long interval: the rotated file is not read again yet.
    let slow = temp_jwks(only_a);
    let resolver =
        JwtResolver::jwks_file(&slow, Algorithm::RS256, Duration::from_secs(3600)).unwrap();
    let app_slow = app(TenancyLayer::builder(cache(&store)).resolver(resolver));
    assert_eq!(call(&app_slow, &token_a).await.1, "acme");
    std::fs::write(&slow, both).unwrap();
    refused(&app_slow, &token_b, "unknown key id").await;

    // A short interval: the unknown kid triggers one reload and is then accepted.
    let fast = temp_jwks(only_a);
    let resolver =
        JwtResolver::jwks_file(&fast, Algorithm::RS256, Duration::from_millis(50)).unwrap();
    let app_fast = app(TenancyLayer::builder(cache(&store)).resolver(resolver));
    refused(&app_fast, &token_b, "unknown key id").await;
    std::fs::write(&fast, both).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(call(&app_fast, &token_b).await.1, "globex");
    assert_eq!(call(&app_fast, &token_a).await.1, "acme");

    // Wrong kid for the signature, no kid, and a token signed by key-b claiming key-a.
    refused(
        &app_fast,
        &rs(&claims(json!("acme")), RSA_A_PRIVATE, None),
        "token has no key id",
    )
    .await;
    refused(
        &app_fast,
        &rs(&claims(json!("acme")), RSA_B_PRIVATE, Some("key-a")),
        "bad signature",
    )
    .await;
    refused(
        &app_fast,
        &hs(&claims(json!("acme")), SECRET),
        "algorithm not allowed",
    )
    .await;

    assert!(
        JwtResolver::jwks_file("/nonexistent/jwks.json", Algorithm::RS256, Duration::ZERO).is_err()
    );
    assert!(JwtResolver::jwks_file(&fast, Algorithm::HS256, Duration::ZERO).is_err());
    std::fs::remove_file(slow).unwrap();
    std::fs::remove_file(fast).unwrap();
}
