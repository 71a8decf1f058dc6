//! `AdminError`: every admin and lifecycle error mapped to its status, headers and JSON detail,
//! as an admin handler returning `Result<_, AdminError>` with `?` produces them.

use axum_core::response::IntoResponse;
use http::StatusCode;
use http_body_util::BodyExt;
use tenancy_axum::AdminError;
use tenancy_core::manager::ManagerError;
use tenancy_core::{
    FieldError, ResolutionStrategy, StoreError, TenantIdentifier, TenantStatus, TransitionError,
};

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    detail: String,
}

async fn answer(error: impl Into<AdminError>) -> Answer {
    let response = error.into().into_response();
    let status = response.status();
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    Answer {
        status,
        headers,
        detail: json["detail"].as_str().unwrap().to_owned(),
    }
}

fn acme() -> TenantIdentifier {
    TenantIdentifier::parse("acme").unwrap()
}

/// What an admin handler does: `?` on each kind of error.
fn parse_then(raw: &str, strategy: &str) -> Result<(), AdminError> {
    TenantIdentifier::parse(raw)?;
    strategy.parse::<ResolutionStrategy>()?;
    Ok(())
}

#[tokio::test]
async fn unauthorized_and_not_found() {
    let unauthorized = answer(AdminError::Unauthorized).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unauthorized.headers["www-authenticate"], "Bearer");
    assert_eq!(unauthorized.detail, "Not authenticated");

    let not_found = answer(AdminError::NotFound).await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    assert_eq!(not_found.detail, "Tenant not found");
    assert!(not_found.headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn bad_input_is_400_naming_the_rule() {
    let bad_identifier = answer(parse_then("Acme", "header").unwrap_err()).await;
    assert_eq!(bad_identifier.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_identifier.detail.contains("lowercase"),
        "{}",
        bad_identifier.detail
    );
    let reserved = answer(parse_then("admin", "header").unwrap_err()).await;
    assert_eq!(reserved.detail, "tenant identifier 'admin' is reserved");

    let unknown = answer(parse_then("acme", "cookie").unwrap_err()).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        unknown.detail,
        "unknown resolution strategy 'cookie'; expected one of: header, subdomain, path, jwt"
    );

    let field = answer(StoreError::InvalidField(FieldError::Name)).await;
    assert_eq!(field.status, StatusCode::BAD_REQUEST);
    assert_eq!(field.detail, "tenant name must be 1 to 200 characters");
}

#[tokio::test]
async fn store_errors_directly_and_through_the_manager() {
    let transition = || {
        StoreError::Transition(TransitionError {
            from: TenantStatus::Deleted,
            to: TenantStatus::Active,
        })
    };
    let cases: Vec<(fn() -> StoreError, StatusCode)> = vec![
        (|| StoreError::AlreadyExists(acme()), StatusCode::CONFLICT),
        (
            || StoreError::DomainTaken("shop.acme.com".to_owned()),
            StatusCode::CONFLICT,
        ),
        (|| StoreError::NotFound(acme()), StatusCode::NOT_FOUND),
        (transition, StatusCode::CONFLICT),
    ];
    for (make, status) in cases {
        let message = make().to_string();
        let direct = answer(make()).await;
        assert_eq!(
            (direct.status, direct.detail.as_str()),
            (status, message.as_str())
        );
        let managed = answer(ManagerError::Store(make())).await;
        assert_eq!(
            (managed.status, managed.detail.as_str()),
            (status, message.as_str())
        );
    }
    assert_eq!(answer(transition()).await.detail, transition().to_string());
}

#[tokio::test]
async fn registry_failures_are_503_without_internals() {
    let failures = [
        StoreError::unavailable("connection refused to postgres://admin:hunter2@db"),
        StoreError::Corrupt("row 17: bad status 'zzz'".to_owned()),
    ];
    for failure in failures {
        let answer = answer(ManagerError::Store(failure)).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers["retry-after"], "1");
        assert_eq!(answer.detail, "Tenant registry unavailable, retry later");
    }
    let direct = answer(StoreError::unavailable("timeout")).await;
    assert_eq!(direct.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(direct.headers["retry-after"], "1");
}

#[tokio::test]
async fn refused_registration_and_failed_provisioning() {
    let refused = answer(ManagerError::Refused {
        identifier: acme(),
        reason: "tenant quota reached".into(),
    })
    .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        refused.detail,
        "registration of 'acme' refused: tenant quota reached"
    );

    let provisioning = answer(ManagerError::Provisioning {
        identifier: acme(),
        source: "CREATE SCHEMA failed: permission denied".into(),
    })
    .await;
    assert_eq!(provisioning.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        provisioning.detail.contains("'acme'"),
        "{}",
        provisioning.detail
    );
    assert!(
        provisioning.detail.contains("resumed"),
        "{}",
        provisioning.detail
    );
    assert!(
        !provisioning.detail.contains("permission"),
        "{}",
        provisioning.detail
    );
}
