//! Logs (tracing, with the tenant on each request's span) and Prometheus metrics, whose
//! per-tenant labels are bounded so a flood of tenants cannot blow up the series count.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tenancy::Tenant;
use tracing_subscriber::EnvFilter;

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The most tenants that get a label of their own; the rest count as `other`.
const MAX_TENANT_LABELS: usize = 100;

/// Request metrics shared by the middleware and the `/metrics` route.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    labelled: Arc<RwLock<HashSet<Arc<str>>>>,
}

impl Metrics {
    /// Installs the Prometheus recorder (once per process).
    pub fn install() -> Result<Self, metrics_exporter_prometheus::BuildError> {
        let handle = PrometheusBuilder::new().install_recorder()?;
        Ok(Self {
            handle,
            labelled: Arc::default(),
        })
    }

    /// The exposition text for `/metrics`.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    fn tenant_label(&self, identifier: &str) -> Arc<str> {
        let read = self.labelled.read().unwrap_or_else(|p| p.into_inner());
        if let Some(label) = read.get(identifier) {
            return label.clone();
        }
        let full = read.len() >= MAX_TENANT_LABELS;
        drop(read);
        if full {
            return Arc::from("other");
        }
        let mut write = self.labelled.write().unwrap_or_else(|p| p.into_inner());
        let label: Arc<str> = Arc::from(identifier);
        write.insert(label.clone());
        label
    }
}

/// Counts every response by status class, and tenant requests by (bounded) tenant label.
pub async fn record(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let tenant = request
        .extensions()
        .get::<Arc<Tenant>>()
        .map(|tenant| metrics.tenant_label(tenant.identifier.as_str()));
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("tenancy_demo_responses_total", "status" => status).increment(1);
    if let Some(tenant) = tenant {
        metrics::counter!("tenancy_demo_tenant_requests_total", "tenant" => tenant.to_string())
            .increment(1);
    }
    response
}
