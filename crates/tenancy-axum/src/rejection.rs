//! The one place errors become HTTP: every way the pipeline refuses a request
//! ([`TenancyRejection`]) and every way an admin or lifecycle operation fails ([`AdminError`]).
//!
//! Bodies are JSON `{"detail": "..."}` with `content-type: application/json`, matching the error
//! table of the Python peer (`fastapi-tenancy`).

use std::time::Duration;

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tenancy_core::manager::ManagerError;
use tenancy_core::rate_limit::RateLimitDecision;
use tenancy_core::{IdentifierError, StoreError, TenantIdentifier, TenantStatus, UnknownValue};

/// A JSON error response: `{"detail": detail}` with `status`.
fn json_error(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({ "detail": detail }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Why the pipeline refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenancyRejection {
    /// No resolver found a tenant identifier. 400.
    #[error("Tenant identifier missing")]
    Missing,
    /// The identifier breaks the identifier policy; the message names the rule. 400.
    #[error("{0}")]
    Malformed(IdentifierError),
    /// The request carries tenant information that cannot be used (two header lines, a host
    /// that is an IP literal, a `..` path segment, ...). 400.
    #[error("{0}")]
    BadRequest(&'static str),
    /// No such tenant, or a deleted one. 404.
    #[error("Tenant not found")]
    NotFound,
    /// The tenant exists but is not active. 403.
    #[error("Tenant is not active (status: {0})")]
    NotActive(TenantStatus),
    /// Two resolvers found different tenants (strict chain). 403.
    #[error("Tenant identifiers of the request disagree")]
    Conflict,
    /// The tenant's rate limit is exhausted. 429 with `Retry-After`.
    #[error("Rate limit exceeded for tenant {identifier}")]
    RateLimited {
        /// The tenant that is limited.
        identifier: TenantIdentifier,
        /// The limiter's decision (limit, remaining 0, time until a request is admitted again).
        decision: RateLimitDecision,
    },
    /// The tenant registry (or the rate limiter) could not answer. 503 with `Retry-After: 1`.
    #[error("{0} unavailable, retry later")]
    Unavailable(&'static str),
    /// A bearer token was refused (bad signature, expired, wrong audience, no tenant claim...).
    /// 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
    #[error("Invalid token: {0}")]
    InvalidToken(&'static str),
    /// An extractor needed the tenant but the tenancy layer is not installed on the route: a
    /// programming error. 500.
    #[error("tenancy layer not installed")]
    LayerMissing,
}

impl TenancyRejection {
    /// The HTTP status this rejection is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::Malformed(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::NotActive(_) | Self::Conflict => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::LayerMissing => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Rounds up to whole seconds, as the rate-limit headers count.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Adds `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the
/// window frees a request) for `decision`. The layer puts them on every response of a
/// rate-limited tenant, admitted or refused.
pub(crate) fn insert_rate_limit_headers(headers: &mut HeaderMap, decision: &RateLimitDecision) {
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert(
        "ratelimit-reset",
        HeaderValue::from(whole_seconds(decision.reset_after)),
    );
}

impl IntoResponse for TenancyRejection {
    fn into_response(self) -> Response {
        let mut response = json_error(self.status(), &self.to_string());
        let headers = response.headers_mut();
        match &self {
            Self::RateLimited { decision, .. } => {
                insert_rate_limit_headers(headers, decision);
                let seconds = whole_seconds(decision.reset_after).max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::InvalidToken(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                );
            }
            _ => {}
        }
        response
    }
}

/// Why an admin or lifecycle operation failed, with its one HTTP mapping.
///
/// Handlers of an admin API return `Result<_, AdminError>` and use `?` on identifier parsing
/// ([`IdentifierError`]), value parsing ([`UnknownValue`]), the tenant manager
/// ([`ManagerError`]) and the registry ([`StoreError`]):
///
/// | error | status |
/// | --- | --- |
/// | [`AdminError::Unauthorized`] | 401, `WWW-Authenticate: Bearer` |
/// | [`AdminError::NotFound`], `StoreError::NotFound` | 404 |
/// | `IdentifierError` (names the rule), `UnknownValue`, `StoreError::InvalidField` | 400 |
/// | `StoreError::AlreadyExists`, `StoreError::DomainTaken`, `StoreError::Transition` | 409 |
/// | `ManagerError::Refused` (a hook's reason) | 422 |
/// | `ManagerError::Provisioning` (can be resumed) | 500 |
/// | `StoreError::Unavailable`, `StoreError::Corrupt` | 503, `Retry-After: 1` |
///
/// Registry and provisioning failures are logged with `tracing`; their details (driver
/// messages) never reach the response.
///
/// ```
/// use axum_core::response::IntoResponse;
/// use tenancy_axum::AdminError;
/// use tenancy_core::TenantIdentifier;
///
/// fn parse(raw: &str) -> Result<TenantIdentifier, AdminError> {
///     Ok(TenantIdentifier::parse(raw)?)
/// }
/// let response = parse("Bad Name").unwrap_err().into_response();
/// assert_eq!(response.status(), 400);
/// assert_eq!(AdminError::NotFound.into_response().status(), 404);
/// ```
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Missing or wrong admin credentials. 401 with `WWW-Authenticate: Bearer`.
    #[error("Not authenticated")]
    Unauthorized,
    /// No such tenant. 404.
    #[error("Tenant not found")]
    NotFound,
    /// The identifier breaks the identifier policy; the message names the rule. 400.
    #[error(transparent)]
    Identifier(#[from] IdentifierError),
    /// A value is not one of the allowed names (a status, an isolation mode...). 400.
    #[error(transparent)]
    UnknownValue(#[from] UnknownValue),
    /// A lifecycle operation failed.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// The registry refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AdminError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Identifier(_) | Self::UnknownValue(_) => StatusCode::BAD_REQUEST,
            Self::Manager(ManagerError::Store(error)) | Self::Store(error) => store_status(error),
            Self::Manager(ManagerError::Refused { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Manager(ManagerError::Provisioning { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `detail` of the response: the error's message, except for failures whose message
    /// would expose internals.
    fn detail(&self) -> String {
        match self {
            Self::Manager(ManagerError::Store(error)) | Self::Store(error) => match error {
                StoreError::Unavailable(_) | StoreError::Corrupt(_) => {
                    "Tenant registry unavailable, retry later".to_owned()
                }
                other => other.to_string(),
            },
            Self::Manager(ManagerError::Provisioning { identifier, .. }) => format!(
                "Provisioning of tenant '{identifier}' failed; the tenant is kept and the \
                 operation can be resumed by running it again"
            ),
            other => other.to_string(),
        }
    }
}

fn store_status(error: &StoreError) -> StatusCode {
    match error {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::AlreadyExists(_) | StoreError::DomainTaken(_) | StoreError::Transition(_) => {
            StatusCode::CONFLICT
        }
        StoreError::InvalidField(_) => StatusCode::BAD_REQUEST,
        StoreError::Unavailable(_) | StoreError::Corrupt(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "admin operation failed");
        }
        let mut response = json_error(status, &self.detail());
        let headers = response.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
