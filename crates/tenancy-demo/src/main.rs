//! tenancy-demo: a small multi-tenant SaaS server, the quickstart of tenancy.
//!
//! With no configuration it keeps its registry and one SQLite file per tenant under `./data`;
//! `TENANCY_DATABASE_URL` moves it to PostgreSQL (schema, RLS, database or hybrid isolation)
//! or MariaDB (database per tenant), and `TENANCY_REDIS_URL` adds the shared cache,
//! cross-instance invalidation and Redis rate limits. See the README for every variable.

mod admin;
mod backend;
mod orders;
mod settings;
mod shutdown;
mod telemetry;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use axum::{Json, Router, ServiceExt as _};
use tenancy::TenancyConfig;
use tenancy::axum::{PeerAddr, TenancyLayer};
use tenancy::manager::TenantManager;
use tower::{Layer as _, ServiceExt as _};

use crate::settings::{DemoSettings, StartupError};
use crate::telemetry::Metrics;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_logging();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tenancy-demo: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), StartupError> {
    let settings = DemoSettings::from_env()?;
    let config = TenancyConfig::from_env_over(settings::tenancy_defaults(), settings::VARIABLES)?;
    let backend = backend::start(&config, &settings).await?;
    let tenancy = backend::tenancy_services(&config, backend.store.clone()).await?;

    let mut manager = TenantManager::new(backend.store.clone(), backend.provisioner.clone())
        .with_hook(backend.placement_check.clone());
    for hook in tenancy.hooks {
        manager = manager.with_hook(hook);
    }
    let metrics = Metrics::install()?;

    let mut app = Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route(
            "/metrics",
            get({
                let metrics = metrics.clone();
                move || async move { metrics.render() }
            }),
        )
        .merge(backend.tenant_routes);
    if let Some(token) = &settings.admin_token {
        app = app.merge(admin::router(admin::AdminState {
            manager,
            token: Arc::from(token.expose()),
        }));
    }
    let app = app.layer(axum::middleware::from_fn_with_state(
        metrics,
        telemetry::record,
    ));

    let layer: TenancyLayer = tenancy.layer;
    let service = layer.layer(app).map_request(|mut request: Request| {
        if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
            let peer = PeerAddr(*peer);
            request.extensions_mut().insert(peer);
        }
        request
    });

    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr: settings.addr,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartupError::Bind {
        addr: settings.addr,
        source,
    })?;
    tracing::info!(
        addr = %local_addr,
        backend = backend.description,
        admin_api = settings.admin_token.is_some(),
        "tenancy-demo listening"
    );
    axum::serve(
        listener,
        service.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        shutdown::signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
    })
    .await
    .map_err(StartupError::Serve)?;
    tracing::info!("tenancy-demo stopped");
    Ok(())
}
