//! The axum extractor (feature `axum`): a handler taking a [`TenantTx<DB>`] argument gets a
//! transaction scoped to the request's tenant, whatever the backend and isolation mode.
//!
//! Contract with the request pipeline: the tenancy layer (`tenancy_axum::TenancyLayer`) puts
//! the admitted tenant into the request extensions as `Arc<Tenant>`, and the application puts
//! its isolation handle there as `Arc<dyn TenantIsolation<Database = DB>>`, built with
//! [`isolation_extension`](crate::isolation_extension) and installed with axum's `Extension`
//! layer. The extractor reads both, so it works with any router state.
//!
//! ```ignore
//! async fn list_orders(mut tx: TenantTx<Postgres>) -> Result<Json<Vec<String>>, AppError> {
//!     let notes = sqlx::query_scalar("SELECT note FROM orders").fetch_all(&mut *tx).await?;
//!     tx.commit().await?;
//!     Ok(Json(notes))
//! }
//! let app = Router::new()
//!     .route("/orders", get(list_orders))
//!     .layer(Extension(tenancy_sql::isolation_extension(pg_isolation)))
//!     .layer(tenancy_layer);
//! ```
//!
//! A handler that returns without committing rolls back. Refusals are JSON
//! `{"detail": "..."}`, see [`TenantTxRejection`].

use std::sync::Arc;

use axum_core::body::Body;
use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use sqlx::Database;
use tenancy_core::Tenant;

use crate::isolation::TenantIsolation;
use crate::isolation_error::IsolationError;
use crate::tx::TenantTx;

/// Why a [`TenantTx`] could not be extracted.
///
/// | rejection | status |
/// |-----------|--------|
/// | no `Arc<Tenant>` in the request | 500 |
/// | no isolation handle in the request | 500 |
/// | no connection to be had, or the tenant at its concurrency limit ([`IsolationError::is_unavailable`]) | 503, `Retry-After: 1` |
/// | the tenant has no database (being provisioned or purged) | 503 |
/// | anything else | 500, details only logged |
#[derive(Debug, thiserror::Error)]
pub enum TenantTxRejection {
    /// The request carries no `Arc<Tenant>`: the tenancy layer is not installed on the route.
    #[error("tenancy layer not installed")]
    TenancyLayerMissing,
    /// The request carries no `Arc<dyn TenantIsolation<Database = DB>>` for the handler's
    /// database: the `Extension(isolation_extension(handle))` layer is missing.
    #[error("tenant isolation not installed")]
    IsolationMissing,
    /// No database connection could be had now.
    #[error("database unavailable, retry later")]
    Unavailable(#[source] IsolationError),
    /// The tenant's database does not exist (yet, or any more).
    #[error("tenant database not available")]
    NotProvisioned(#[source] IsolationError),
    /// The transaction could not be opened.
    #[error("tenant transaction could not be opened")]
    Failed(#[source] IsolationError),
}

impl TenantTxRejection {
    /// The HTTP status the rejection is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unavailable(_) | Self::NotProvisioned(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TenancyLayerMissing | Self::IsolationMissing | Self::Failed(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl From<IsolationError> for TenantTxRejection {
    fn from(error: IsolationError) -> Self {
        if error.is_unavailable() {
            Self::Unavailable(error)
        } else if matches!(error, IsolationError::NotProvisioned { .. }) {
            Self::NotProvisioned(error)
        } else {
            Self::Failed(error)
        }
    }
}

impl IntoResponse for TenantTxRejection {
    fn into_response(self) -> Response {
        match &self {
            Self::Unavailable(error) | Self::NotProvisioned(error) => {
                tracing::warn!(%error, "tenant transaction unavailable");
            }
            Self::Failed(error) => tracing::error!(%error, "tenant transaction failed"),
            Self::TenancyLayerMissing | Self::IsolationMissing => {
                tracing::error!(rejection = %self, "tenant transaction extractor misconfigured");
            }
        }
        let body = serde_json::json!({ "detail": self.to_string() }).to_string();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(self, Self::Unavailable(_)) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl<DB: Database, S: Send + Sync> FromRequestParts<S> for TenantTx<DB> {
    type Rejection = TenantTxRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let tenant = parts
            .extensions
            .get::<Arc<Tenant>>()
            .cloned()
            .ok_or(TenantTxRejection::TenancyLayerMissing)?;
        let isolation = parts
            .extensions
            .get::<Arc<dyn TenantIsolation<Database = DB>>>()
            .cloned()
            .ok_or(TenantTxRejection::IsolationMissing)?;
        Ok(isolation.begin(&tenant).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenancy_core::{NewTenant, TenantIdentifier};

    fn parts() -> Parts {
        http::Request::builder().body(()).unwrap().into_parts().0
    }

    fn tenant(id: &str) -> Arc<Tenant> {
        Arc::new(NewTenant::new(TenantIdentifier::parse(id).unwrap(), id).into_tenant())
    }

    async fn body_of(response: Response) -> serde_json::Value {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn statuses_follow_the_error() {
        let unavailable = TenantTxRejection::from(IsolationError::TenantBusy {
            identifier: TenantIdentifier::parse("acme").unwrap(),
            waited: std::time::Duration::from_secs(1),
        });
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            unavailable.into_response().headers()[header::RETRY_AFTER],
            "1"
        );
        let missing = TenantTxRejection::from(IsolationError::NotProvisioned {
            identifier: TenantIdentifier::parse("acme").unwrap(),
        });
        assert_eq!(missing.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response = missing.into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let failed = TenantTxRejection::from(IsolationError::SavepointOpen { savepoints: 1 });
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[cfg(feature = "postgres")]
    mod postgres {
        use sqlx::Postgres;
        use sqlx::postgres::PgPoolOptions;

        use super::*;
        use crate::isolation_extension;
        use crate::postgres::{PgIsolation, PgIsolationOptions};

        fn isolation(url: &str) -> Arc<dyn TenantIsolation<Database = Postgres>> {
            isolation_with(url, PgIsolationOptions::new())
        }

        fn isolation_with(
            url: &str,
            options: PgIsolationOptions,
        ) -> Arc<dyn TenantIsolation<Database = Postgres>> {
            let pool = options
                .pool_options(
                    PgPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(std::time::Duration::from_millis(500)),
                )
                .unwrap()
                .connect_lazy(url)
                .unwrap();
            isolation_extension(PgIsolation::from_pool(pool, options).unwrap())
        }

        fn server_url() -> String {
            let url = std::env::var("TENANCY_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
            format!("{url}/postgres")
        }

        #[tokio::test]
        async fn without_the_tenancy_layer_or_the_handle_is_a_500() {
            let mut parts = parts();
            let rejection = TenantTx::<Postgres>::from_request_parts(&mut parts, &())
                .await
                .unwrap_err();
            let response = rejection.into_response();
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(
                body_of(response).await,
                serde_json::json!({"detail": "tenancy layer not installed"})
            );
            parts.extensions.insert(tenant("acme"));
            let rejection = TenantTx::<Postgres>::from_request_parts(&mut parts, &())
                .await
                .unwrap_err();
            assert!(matches!(rejection, TenantTxRejection::IsolationMissing));
            assert_eq!(rejection.status(), StatusCode::INTERNAL_SERVER_ERROR);
        }

        #[tokio::test]
        async fn unreachable_database_is_a_503_with_retry_after() {
            let mut parts = parts();
            parts.extensions.insert(tenant("acme"));
            parts
                .extensions
                .insert(isolation("postgres://postgres@127.0.0.1:9/postgres"));
            let rejection = TenantTx::<Postgres>::from_request_parts(&mut parts, &())
                .await
                .unwrap_err();
            let response = rejection.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
            assert_eq!(
                body_of(response).await,
                serde_json::json!({"detail": "database unavailable, retry later"})
            );
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_tenant_at_its_concurrency_limit_is_a_503_with_retry_after() {
            let isolation = isolation_with(
                &server_url(),
                PgIsolationOptions::new()
                    .tenant_concurrency_limit(1)
                    .tenant_concurrency_wait(std::time::Duration::from_millis(20)),
            );
            let held = isolation.begin(&tenant("acme")).await.unwrap();
            let mut parts = parts();
            parts.extensions.insert(tenant("acme"));
            parts.extensions.insert(Arc::clone(&isolation));
            let rejection = TenantTx::<Postgres>::from_request_parts(&mut parts, &())
                .await
                .unwrap_err();
            assert!(matches!(
                rejection,
                TenantTxRejection::Unavailable(IsolationError::TenantBusy { .. })
            ));
            let response = rejection.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
            drop(held);
            let tx = TenantTx::<Postgres>::from_request_parts(&mut parts, &())
                .await
                .unwrap();
            tx.rollback().await.unwrap();
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn hands_the_handler_a_transaction_scoped_to_the_request_tenant() {
            let mut parts = parts();
            parts.extensions.insert(tenant("acme"));
            parts.extensions.insert(isolation(&server_url()));
            let mut tx = TenantTx::<Postgres>::from_request_parts(&mut parts, &())
                .await
                .unwrap();
            assert_eq!(tx.tenant().as_str(), "acme");
            let search_path: String = sqlx::query_scalar("SHOW search_path")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(search_path, "tenant_acme, pg_temp");
            tx.rollback().await.unwrap();
        }
    }

    #[cfg(feature = "sqlite")]
    mod sqlite {
        use sqlx::Sqlite;

        use super::*;
        use crate::database_per_tenant::TenantPoolSettings;
        use crate::isolation_extension;
        use crate::sqlite::{SqliteLocator, SqliteTenantPools};

        #[tokio::test]
        async fn a_tenant_without_a_database_is_a_503() {
            let dir = std::env::temp_dir().join(format!(
                "tenancy_extract_{}_{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            let pools = SqliteTenantPools::new(
                SqliteLocator::new(&dir, "tenant_").unwrap(),
                TenantPoolSettings::default(),
            );
            let mut parts = parts();
            parts.extensions.insert(tenant("ghost"));
            parts.extensions.insert(isolation_extension(pools));
            let rejection = TenantTx::<Sqlite>::from_request_parts(&mut parts, &())
                .await
                .unwrap_err();
            assert!(matches!(rejection, TenantTxRejection::NotProvisioned(_)));
            let response = rejection.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                body_of(response).await,
                serde_json::json!({"detail": "tenant database not available"})
            );
            assert!(!dir.exists(), "a request creates nothing");
        }
    }
}
