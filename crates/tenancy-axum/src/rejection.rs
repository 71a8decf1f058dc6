//! Every way the pipeline refuses a request, and its one HTTP mapping.
//!
//! Bodies are JSON `{"detail": "..."}` with `content-type: application/json`, matching the error
//! table of the Python peer (`fastapi-tenancy`).

use std::time::Duration;

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tenancy_core::{IdentifierError, TenantIdentifier, TenantStatus};

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
        /// When the client may retry.
        retry_after: Duration,
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

impl IntoResponse for TenancyRejection {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "detail": self.to_string() }).to_string();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            Self::RateLimited { retry_after, .. } => {
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
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
