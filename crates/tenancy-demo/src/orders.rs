//! The tenant API of the demo: orders, each visible only to the tenant that created it.
//!
//! The handlers are written once, generic over the database; [`OrderQueries`] holds the few
//! lines of SQL that differ between PostgreSQL, MariaDB and SQLite. Every query runs on the
//! request's [`TenantTx`], which is already scoped to the tenant (its schema, its rows or its
//! database), so no query mentions the tenant.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tenancy::axum::CurrentTenant;
use tenancy::sql::{IsolationError, TenantTx, is_transient};

/// One order.
#[derive(Debug, Clone, Serialize)]
pub struct Order {
    /// Its number, unique within the tenant.
    pub id: i64,
    /// What was ordered.
    pub description: String,
}

impl From<(i64, String)> for Order {
    fn from((id, description): (i64, String)) -> Self {
        Self { id, description }
    }
}

/// The order queries of one database. Each runs on a tenant-scoped connection.
pub trait OrderQueries: sqlx::Database {
    /// All orders, oldest first.
    fn list(conn: &mut Self::Connection) -> impl Future<Output = sqlx::Result<Vec<Order>>> + Send;
    /// One order, if this tenant has it.
    fn get(
        conn: &mut Self::Connection,
        id: i64,
    ) -> impl Future<Output = sqlx::Result<Option<Order>>> + Send;
    /// Stores a new order.
    fn insert(
        conn: &mut Self::Connection,
        description: &str,
    ) -> impl Future<Output = sqlx::Result<Order>> + Send;
}

impl OrderQueries for sqlx::Postgres {
    async fn list(conn: &mut Self::Connection) -> sqlx::Result<Vec<Order>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, description FROM orders ORDER BY id")
                .fetch_all(conn)
                .await?;
        Ok(rows.into_iter().map(Order::from).collect())
    }
    async fn get(conn: &mut Self::Connection, id: i64) -> sqlx::Result<Option<Order>> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT id, description FROM orders WHERE id = $1")
                .bind(id)
                .fetch_optional(conn)
                .await?;
        Ok(row.map(Order::from))
    }
    async fn insert(conn: &mut Self::Connection, description: &str) -> sqlx::Result<Order> {
        let row: (i64, String) = sqlx::query_as(
            "INSERT INTO orders (description) VALUES ($1) RETURNING id, description",
        )
        .bind(description)
        .fetch_one(conn)
        .await?;
        Ok(row.into())
    }
}

impl OrderQueries for sqlx::Sqlite {
    async fn list(conn: &mut Self::Connection) -> sqlx::Result<Vec<Order>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, description FROM orders ORDER BY id")
                .fetch_all(conn)
                .await?;
        Ok(rows.into_iter().map(Order::from).collect())
    }
    async fn get(conn: &mut Self::Connection, id: i64) -> sqlx::Result<Option<Order>> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT id, description FROM orders WHERE id = ?")
                .bind(id)
                .fetch_optional(conn)
                .await?;
        Ok(row.map(Order::from))
    }
    async fn insert(conn: &mut Self::Connection, description: &str) -> sqlx::Result<Order> {
        let row: (i64, String) =
            sqlx::query_as("INSERT INTO orders (description) VALUES (?) RETURNING id, description")
                .bind(description)
                .fetch_one(conn)
                .await?;
        Ok(row.into())
    }
}

impl OrderQueries for sqlx::MySql {
    async fn list(conn: &mut Self::Connection) -> sqlx::Result<Vec<Order>> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, description FROM orders ORDER BY id")
                .fetch_all(conn)
                .await?;
        Ok(rows.into_iter().map(Order::from).collect())
    }
    async fn get(conn: &mut Self::Connection, id: i64) -> sqlx::Result<Option<Order>> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT id, description FROM orders WHERE id = ?")
                .bind(id)
                .fetch_optional(conn)
                .await?;
        Ok(row.map(Order::from))
    }
    async fn insert(conn: &mut Self::Connection, description: &str) -> sqlx::Result<Order> {
        let row: (i64, String) =
            sqlx::query_as("INSERT INTO orders (description) VALUES (?) RETURNING id, description")
                .bind(description)
                .fetch_one(conn)
                .await?;
        Ok(row.into())
    }
}

/// The orders routes for database `DB`.
pub fn router<DB: OrderQueries>() -> Router {
    Router::new()
        .route("/orders", get(list::<DB>).post(create::<DB>))
        .route("/orders/{id}", get(show::<DB>))
}

#[derive(Serialize)]
struct OrderList {
    tenant: String,
    orders: Vec<Order>,
}

async fn list<DB: OrderQueries>(
    tenant: CurrentTenant,
    mut tx: TenantTx<DB>,
) -> Result<Json<OrderList>, OrderError> {
    let orders = DB::list(&mut *tx).await?;
    // Read-only: ending by drop queues the ROLLBACK, which rides with the pool's release ping
    // instead of costing a round trip of its own as COMMIT would.
    drop(tx);
    Ok(Json(OrderList {
        tenant: tenant.identifier.to_string(),
        orders,
    }))
}

#[derive(Deserialize)]
struct NewOrder {
    description: String,
}

async fn create<DB: OrderQueries>(
    mut tx: TenantTx<DB>,
    Query(new): Query<NewOrder>,
) -> Result<(StatusCode, Json<Order>), OrderError> {
    if new.description.is_empty() || new.description.len() > 1000 {
        return Err(OrderError::BadDescription);
    }
    let order = DB::insert(&mut *tx, &new.description).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(order)))
}

async fn show<DB: OrderQueries>(
    mut tx: TenantTx<DB>,
    Path(id): Path<i64>,
) -> Result<Json<Order>, OrderError> {
    let order = DB::get(&mut *tx, id).await?.ok_or(OrderError::NotFound)?;
    // Read-only, like `list`: ending by drop saves the COMMIT round trip.
    drop(tx);
    Ok(Json(order))
}

/// Why an orders request failed.
#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("Order not found")]
    NotFound,
    #[error("description must be 1 to 1000 bytes")]
    BadDescription,
    #[error(transparent)]
    Query(#[from] sqlx::Error),
    #[error(transparent)]
    Transaction(#[from] IsolationError),
}

impl IntoResponse for OrderError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadDescription => StatusCode::BAD_REQUEST,
            Self::Transaction(error) if error.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Query(error) | Self::Transaction(IsolationError::Database(error))
                if is_transient(error) =>
            {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Query(_) | Self::Transaction(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let detail = if status.is_server_error() {
            tracing::error!(error = %self, "orders request failed");
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let mut response = (status, Json(serde_json::json!({ "detail": detail }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
