//! The admin API: register, list, show, suspend, activate, delete and purge tenants, behind a
//! bearer token. With no token configured the routes are not mounted at all.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tenancy::axum::AdminError;
use tenancy::manager::TenantManager;
use tenancy::{ListQuery, Metadata, NewTenant, TenantIdentifier, TenantStatus};

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminState {
    /// Lifecycle operations.
    pub manager: TenantManager,
    /// The bearer token every admin request must carry.
    pub token: Arc<str>,
}

/// The admin routes, under `/admin/tenants`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/tenants", post(create).get(list))
        .route("/admin/tenants/{identifier}", get(show).delete(delete))
        .route("/admin/tenants/{identifier}/suspend", post(suspend))
        .route("/admin/tenants/{identifier}/activate", post(activate))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        _ => AdminError::Unauthorized.into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct CreateTenant {
    identifier: String,
    name: String,
    tier: Option<String>,
    placement: Option<String>,
    #[serde(default)]
    metadata: Metadata,
}

async fn create(
    State(state): State<AdminState>,
    Json(body): Json<CreateTenant>,
) -> Result<impl IntoResponse, AdminError> {
    let identifier = TenantIdentifier::parse(&body.identifier)?;
    let mut new = NewTenant::new(identifier, body.name).with_metadata(body.metadata);
    new.tier = body.tier;
    new.placement = body.placement;
    let tenant = state.manager.register(new).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

#[derive(Deserialize)]
struct ListParams {
    status: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

async fn list(
    State(state): State<AdminState>,
    Query(params): Query<ListParams>,
) -> Result<impl IntoResponse, AdminError> {
    let mut query = ListQuery::first(params.limit.unwrap_or(100));
    if let Some(status) = params.status {
        query = query.with_status(status.parse::<TenantStatus>()?);
    }
    if let Some(after) = params.after {
        query = query.after(TenantIdentifier::parse(&after)?);
    }
    Ok(Json(state.manager.store().list(query).await?))
}

async fn show(
    State(state): State<AdminState>,
    Path(identifier): Path<String>,
) -> Result<impl IntoResponse, AdminError> {
    let identifier = TenantIdentifier::parse(&identifier)?;
    match state.manager.store().get(&identifier).await? {
        Some(tenant) => Ok(Json(tenant)),
        None => Err(AdminError::NotFound),
    }
}

async fn suspend(
    State(state): State<AdminState>,
    Path(identifier): Path<String>,
) -> Result<impl IntoResponse, AdminError> {
    let identifier = TenantIdentifier::parse(&identifier)?;
    Ok(Json(state.manager.suspend(&identifier).await?))
}

async fn activate(
    State(state): State<AdminState>,
    Path(identifier): Path<String>,
) -> Result<impl IntoResponse, AdminError> {
    let identifier = TenantIdentifier::parse(&identifier)?;
    Ok(Json(state.manager.activate(&identifier).await?))
}

#[derive(Deserialize)]
struct DeleteParams {
    #[serde(default)]
    purge: bool,
}

async fn delete(
    State(state): State<AdminState>,
    Path(identifier): Path<String>,
    Query(params): Query<DeleteParams>,
) -> Result<Response, AdminError> {
    let identifier = TenantIdentifier::parse(&identifier)?;
    if params.purge {
        state.manager.purge(&identifier).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Ok(Json(state.manager.delete(&identifier).await?).into_response())
    }
}
