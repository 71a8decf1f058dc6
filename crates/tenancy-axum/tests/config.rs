//! The layer built from `TenancyConfig::from_vars`, one test per resolution strategy, exercised
//! through the real router with `oneshot`.

mod common;

use common::*;
use http::StatusCode;
use tenancy_axum::{LayerConfigError, TenancyLayer};
use tenancy_core::TenancyConfig;

async fn app_from(vars: &[(&str, &str)]) -> tenancy_axum::TenancyService<axum::Router> {
    let config = TenancyConfig::from_vars(vars.iter().copied()).unwrap();
    let layer = TenancyLayer::from_config(&config, cache(&store().await)).unwrap();
    layer_app(&layer)
}

async fn layer_error(vars: &[(&str, &str)]) -> LayerConfigError {
    let config = TenancyConfig::from_vars(vars.iter().copied()).unwrap();
    TenancyLayer::from_config(&config, cache(&store().await)).unwrap_err()
}

#[tokio::test]
async fn header_strategy_with_policy_exclusions_and_hiding() {
    let app = app_from(&[
        ("TENANCY_RESOLUTION_STRATEGY", "header"),
        ("TENANCY_TENANT_HEADER_NAME", "X-Org"),
        ("TENANCY_RESERVED_IDENTIFIERS", "globex"),
        ("TENANCY_EXCLUDED_PATHS", "/health"),
        ("TENANCY_HIDE_UNKNOWN_TENANTS", "false"),
    ])
    .await;
    let answer = send(&app, get_with("/whoami", &[("x-org", "acme")])).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "acme")
    );
    // The default header is not read.
    let answer = send(&app, get_with("/whoami", &[("x-tenant-id", "acme")])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.detail(), "Tenant identifier missing");
    // Configured reserved names are refused, even for a registered tenant.
    let answer = send(&app, get_with("/whoami", &[("x-org", "globex")])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.detail(), "tenant identifier 'globex' is reserved");
    let answer = send(&app, get_with("/health", &[])).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "health none")
    );

    let hidden = app_from(&[("TENANCY_HIDE_UNKNOWN_TENANTS", "true")]).await;
    let answer = send(&hidden, get_with("/whoami", &[("x-tenant-id", "Bad Name")])).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.detail(), "Tenant not found");
    // Defaults: X-Tenant-ID, /health and /metrics excluded.
    let answer = send(&hidden, get_with("/whoami", &[("x-tenant-id", "globex")])).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "globex")
    );
    let answer = send(&hidden, get_with("/health/live", &[])).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn subdomain_strategy_with_trusted_proxies_and_custom_domains() {
    let app = app_from(&[
        ("TENANCY_RESOLUTION_STRATEGY", "subdomain"),
        ("TENANCY_DOMAIN_SUFFIX", "example.test"),
        ("TENANCY_TRUSTED_PROXIES", "10.0.0.0/8"),
    ])
    .await;
    let answer = send(&app, get_with("/whoami", &[("host", "acme.example.test")])).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "acme")
    );
    let answer = send(&app, get_with("/whoami", &[("host", "shop.acme.com")])).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "acme")
    );
    let answer = send(&app, get_with("/whoami", &[("host", "nobody.example.org")])).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    let forwarded = |peer: &str| {
        let mut request = get_with(
            "/whoami",
            &[
                ("host", "acme.example.test"),
                ("x-forwarded-host", "globex.example.test"),
            ],
        );
        request
            .extensions_mut()
            .insert(tenancy_axum::PeerAddr(peer.parse().unwrap()));
        request
    };
    let answer = send(&app, forwarded("10.1.2.3:4000")).await;
    assert_eq!(
        answer.body, "globex",
        "a trusted proxy's forwarded host is used"
    );
    let answer = send(&app, forwarded("192.0.2.1:4000")).await;
    assert_eq!(
        answer.body, "acme",
        "an untrusted peer's forwarded host is ignored"
    );
}

#[tokio::test]
async fn path_strategy_with_its_prefix() {
    let app = app_from(&[
        ("TENANCY_RESOLUTION_STRATEGY", "path"),
        ("TENANCY_PATH_PREFIX", "/orgs"),
    ])
    .await;
    let answer = send(&app, get_with("/orgs/acme/whoami", &[])).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "acme")
    );
    let answer = send(&app, get_with("/orgs/globex/echo?page=2", &[])).await;
    assert_eq!(answer.body, "/echo?page=2");
    let answer = send(&app, get_with("/tenants/acme/whoami", &[])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn subdomain_strategy_needs_a_suffix() {
    // `from_vars` refuses this already; a configuration edited in code reaches the layer.
    let mut config = TenancyConfig::from_vars([("TENANCY_RESOLUTION_STRATEGY", "path")]).unwrap();
    config.resolution_strategy = tenancy_core::ResolutionStrategy::Subdomain;
    let error = TenancyLayer::from_config(&config, cache(&store().await)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "TENANCY_DOMAIN_SUFFIX is not set: required with TENANCY_RESOLUTION_STRATEGY=subdomain"
    );
    config.resolution_strategy = tenancy_core::ResolutionStrategy::Header;
    config.tenant_header_name = "bad header".to_owned();
    let error = TenancyLayer::from_config(&config, cache(&store().await)).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("TENANCY_TENANT_HEADER_NAME='bad header' is invalid"),
        "{error}"
    );
}

#[cfg(not(feature = "jwt"))]
#[tokio::test]
async fn jwt_strategy_needs_the_feature() {
    let error = layer_error(&[
        ("TENANCY_RESOLUTION_STRATEGY", "jwt"),
        (
            "TENANCY_JWT_SECRET",
            "a secret that is at least 32 bytes long",
        ),
    ])
    .await;
    assert!(
        matches!(error, LayerConfigError::JwtFeatureDisabled),
        "{error}"
    );
}

#[cfg(feature = "jwt")]
mod jwt {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "a secret that is at least 32 bytes long";
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn token(claims: serde_json::Value, header: Header, key: &EncodingKey) -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let mut claims = claims;
        claims["exp"] = json!(exp);
        encode(&header, &claims, key).unwrap()
    }

    async fn whoami(app: &tenancy_axum::TenancyService<axum::Router>, token: &str) -> Answer {
        let bearer = format!("Bearer {token}");
        send(app, get_with("/whoami", &[("authorization", &bearer)])).await
    }

    #[tokio::test]
    async fn hs256_with_claim_audience_issuer_and_leeway() {
        let app = app_from(&[
            ("TENANCY_RESOLUTION_STRATEGY", "jwt"),
            ("TENANCY_JWT_SECRET", SECRET),
            ("TENANCY_JWT_TENANT_CLAIM", "org"),
            ("TENANCY_JWT_AUDIENCE", "orders"),
            ("TENANCY_JWT_ISSUER", "https://auth.example.test"),
            ("TENANCY_JWT_LEEWAY_SECONDS", "0"),
        ])
        .await;
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let good = json!({ "org": "acme", "aud": "orders", "iss": "https://auth.example.test" });
        let answer = whoami(&app, &token(good, Header::new(Algorithm::HS256), &key)).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "acme")
        );

        let wrong_audience =
            json!({ "org": "acme", "aud": "billing", "iss": "https://auth.example.test" });
        let answer = whoami(
            &app,
            &token(wrong_audience, Header::new(Algorithm::HS256), &key),
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.detail(), "Invalid token: wrong audience");
        let default_claim =
            json!({ "tenant_id": "acme", "aud": "orders", "iss": "https://auth.example.test" });
        let answer = whoami(
            &app,
            &token(default_claim, Header::new(Algorithm::HS256), &key),
        )
        .await;
        assert_eq!(answer.detail(), "Invalid token: token has no tenant claim");
    }

    #[tokio::test]
    async fn rs256_with_a_public_key_file() {
        let public = format!("{FIXTURES}/rsa-a.pub.pem");
        let app = app_from(&[
            ("TENANCY_RESOLUTION_STRATEGY", "jwt"),
            ("TENANCY_JWT_ALGORITHM", "RS256"),
            ("TENANCY_JWT_PUBLIC_KEY_PATH", &public),
        ])
        .await;
        let private = std::fs::read(format!("{FIXTURES}/rsa-a.key.pem")).unwrap();
        let key = EncodingKey::from_rsa_pem(&private).unwrap();
        let claims = json!({ "tenant_id": "globex" });
        let answer = whoami(&app, &token(claims, Header::new(Algorithm::RS256), &key)).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "globex")
        );
    }

    #[tokio::test]
    async fn rs256_with_a_jwks_file() {
        let jwks = format!("{FIXTURES}/jwks-a.json");
        let app = app_from(&[
            ("TENANCY_RESOLUTION_STRATEGY", "jwt"),
            ("TENANCY_JWT_ALGORITHM", "RS256"),
            ("TENANCY_JWT_JWKS_PATH", &jwks),
        ])
        .await;
        let private = std::fs::read(format!("{FIXTURES}/rsa-a.key.pem")).unwrap();
        let key = EncodingKey::from_rsa_pem(&private).unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(first_kid(&jwks));
        let answer = whoami(&app, &token(json!({ "tenant_id": "acme" }), header, &key)).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "acme")
        );
    }

    fn first_kid(jwks: &str) -> String {
        let set: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(jwks).unwrap()).unwrap();
        set["keys"][0]["kid"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn unusable_key_sources_are_clear_errors() {
        let missing = format!("{FIXTURES}/no-such-key.pem");
        let error = layer_error(&[
            ("TENANCY_RESOLUTION_STRATEGY", "jwt"),
            ("TENANCY_JWT_ALGORITHM", "ES256"),
            ("TENANCY_JWT_PUBLIC_KEY_PATH", &missing),
        ])
        .await;
        assert!(matches!(
            error,
            LayerConfigError::KeyFile {
                variable: "TENANCY_JWT_PUBLIC_KEY_PATH",
                ..
            }
        ));
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "TENANCY_JWT_PUBLIC_KEY_PATH: cannot read {missing}: "
            )),
            "{message}"
        );

        let not_a_key = format!("{FIXTURES}/README.txt");
        let error = layer_error(&[
            ("TENANCY_RESOLUTION_STRATEGY", "jwt"),
            ("TENANCY_JWT_ALGORITHM", "RS256"),
            ("TENANCY_JWT_PUBLIC_KEY_PATH", &not_a_key),
        ])
        .await;
        assert!(
            error
                .to_string()
                .starts_with("TENANCY_JWT_PUBLIC_KEY_PATH: invalid RS256"),
            "{error}"
        );

        let error = layer_error(&[
            ("TENANCY_RESOLUTION_STRATEGY", "jwt"),
            ("TENANCY_JWT_ALGORITHM", "RS256"),
            ("TENANCY_JWT_JWKS_PATH", &missing),
        ])
        .await;
        assert!(
            error
                .to_string()
                .starts_with("TENANCY_JWT_JWKS_PATH: cannot load JWKS file"),
            "{error}"
        );
    }

    #[cfg(not(feature = "jwks-http"))]
    #[tokio::test]
    async fn a_jwks_url_needs_the_jwks_http_feature() {
        let error = layer_error(&[
            ("TENANCY_RESOLUTION_STRATEGY", "jwt"),
            ("TENANCY_JWT_ALGORITHM", "RS256"),
            (
                "TENANCY_JWT_JWKS_URL",
                "https://auth.example.test/jwks.json",
            ),
        ])
        .await;
        assert!(
            matches!(
                error,
                LayerConfigError::Invalid {
                    variable: "TENANCY_JWT_JWKS_URL",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("`jwks-http` feature"), "{error}");
    }
}
