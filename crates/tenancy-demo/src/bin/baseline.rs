//! tenancy-demo-baseline: the demo's `GET /orders` as written without tenancy, the reference
//! `scripts/bench` measures every isolation mode against.
//!
//! One shared `orders` table with a `tenant` column and an index on `(tenant, id)`; the
//! handler takes the tenant named in `X-Tenant-ID` as is (no registry, no status check, no
//! identifier policy) and runs one autocommit query on the pool: one round trip per request,
//! no transaction. The PostgreSQL pool skips the ping before each checkout, as the tenancy
//! runtime pool does (sqlx still pings once when a connection goes back to the pool, off the
//! request path). The response has the demo's shape, `{"tenant": .., "orders": [..]}`.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BASELINE_DATABASE_URL` | none (required) | `postgres://…` or `sqlite:…` (file created if missing) |
//! | `BASELINE_ADDR` | `127.0.0.1:8001` | listen address |
//! | `BASELINE_POOL_MAX_CONNECTIONS` | `10` | pool size (the demo's `TENANCY_POOL_MAX_CONNECTIONS` default) |
//!
//! The table and index are created at start-up if missing; the data is loaded by the caller.

#[path = "../shutdown.rs"]
mod shutdown;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// The pool every request queries.
#[derive(Clone)]
enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// One order.
#[derive(Serialize)]
struct Order {
    id: i64,
    description: String,
}

#[derive(Serialize)]
struct OrderList {
    tenant: String,
    orders: Vec<Order>,
}

/// Why the server could not start or a request failed.
#[derive(Debug, thiserror::Error)]
enum BaselineError {
    #[error("{variable}='{value}' is invalid: expected {expected}")]
    Setting {
        variable: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("BASELINE_DATABASE_URL is not set (postgres://... or sqlite:...)")]
    MissingUrl,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
    #[error("Tenant identifier missing")]
    MissingTenant,
}

impl IntoResponse for BaselineError {
    fn into_response(self) -> Response {
        let (status, detail) = match self {
            Self::MissingTenant => (StatusCode::BAD_REQUEST, self.to_string()),
            error => {
                eprintln!("tenancy-demo-baseline: {error}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(serde_json::json!({ "detail": detail }))).into_response()
    }
}

fn setting(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

async fn connect(url: &str, max_connections: u32) -> Result<Db, BaselineError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // Like the tenancy runtime pool: no ping before each checkout (sqlx's default would add
        // a round trip to every request).
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .test_before_acquire(false)
            .connect(url)
            .await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS orders (id BIGSERIAL PRIMARY KEY, \
             tenant TEXT NOT NULL, description TEXT NOT NULL); \
             CREATE INDEX IF NOT EXISTS orders_tenant_id ON orders (tenant, id)",
        )
        .execute(&pool)
        .await?;
        Ok(Db::Postgres(pool))
    } else if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             tenant TEXT NOT NULL, description TEXT NOT NULL); \
             CREATE INDEX IF NOT EXISTS orders_tenant_id ON orders (tenant, id)",
        )
        .execute(&pool)
        .await?;
        Ok(Db::Sqlite(pool))
    } else {
        Err(BaselineError::Setting {
            variable: "BASELINE_DATABASE_URL",
            value: url.to_owned(),
            expected: "postgres://... or sqlite:...",
        })
    }
}

async fn list_orders(
    State(db): State<Db>,
    headers: HeaderMap,
) -> Result<Json<OrderList>, BaselineError> {
    let tenant = headers
        .get("x-tenant-id")
        .and_then(|value| value.to_str().ok())
        .ok_or(BaselineError::MissingTenant)?
        .to_owned();
    let rows: Vec<(i64, String)> = match &db {
        Db::Postgres(pool) => {
            sqlx::query_as("SELECT id, description FROM orders WHERE tenant = $1 ORDER BY id")
                .bind(&tenant)
                .fetch_all(pool)
                .await?
        }
        Db::Sqlite(pool) => {
            sqlx::query_as("SELECT id, description FROM orders WHERE tenant = ? ORDER BY id")
                .bind(&tenant)
                .fetch_all(pool)
                .await?
        }
    };
    let orders = rows
        .into_iter()
        .map(|(id, description)| Order { id, description })
        .collect();
    Ok(Json(OrderList { tenant, orders }))
}

async fn run() -> Result<(), BaselineError> {
    let url = setting("BASELINE_DATABASE_URL").ok_or(BaselineError::MissingUrl)?;
    let addr = match setting("BASELINE_ADDR") {
        Some(value) => value.parse().map_err(|_| BaselineError::Setting {
            variable: "BASELINE_ADDR",
            value,
            expected: "a socket address such as 127.0.0.1:8001",
        })?,
        None => SocketAddr::from(([127, 0, 0, 1], 8001)),
    };
    let max_connections = match setting("BASELINE_POOL_MAX_CONNECTIONS") {
        Some(value) => value
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or(BaselineError::Setting {
                variable: "BASELINE_POOL_MAX_CONNECTIONS",
                value,
                expected: "a whole number of at least 1",
            })?,
        None => 10,
    };
    let db = connect(&url, max_connections).await?;
    let app = Router::new()
        .route("/orders", get(list_orders))
        .with_state(db);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BaselineError::Bind { addr, source })?;
    eprintln!("tenancy-demo-baseline listening on {addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown::signal())
        .await
        .map_err(BaselineError::Serve)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tenancy-demo-baseline: {error}");
            ExitCode::from(2)
        }
    }
}
