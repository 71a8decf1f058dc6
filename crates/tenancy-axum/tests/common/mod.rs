//! Shared fixtures: a real `MemoryStore` behind a counting wrapper, a router and a sender.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use tenancy_axum::{CurrentTenant, TenancyLayer, TenancyLayerBuilder};
use tenancy_core::cache::{CacheSettings, TenantCache};
use tenancy_core::{
    ListQuery, MemoryStore, Metadata, NewTenant, StoreError, Tenant, TenantId, TenantIdentifier,
    TenantStatus, TenantStore, TenantUpdate, context,
};
use tower::ServiceExt;

/// A `MemoryStore` that counts lookups and can be switched to fail like an unreachable database.
#[derive(Default)]
pub struct CountingStore {
    pub inner: MemoryStore,
    pub gets: AtomicUsize,
    pub failing: AtomicBool,
}

impl CountingStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::unavailable("connection refused"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl TenantStore for CountingStore {
    async fn get(&self, identifier: &TenantIdentifier) -> Result<Option<Tenant>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.get(identifier).await
    }
    async fn get_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        self.inner.get_by_id(id).await
    }
    async fn get_by_domain(&self, domain: &str) -> Result<Option<Tenant>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.inner.get_by_domain(domain).await
    }
    async fn create(&self, new: NewTenant) -> Result<Tenant, StoreError> {
        self.inner.create(new).await
    }
    async fn update(
        &self,
        identifier: &TenantIdentifier,
        update: TenantUpdate,
    ) -> Result<Tenant, StoreError> {
        self.inner.update(identifier, update).await
    }
    async fn set_status(
        &self,
        identifier: &TenantIdentifier,
        status: TenantStatus,
    ) -> Result<Tenant, StoreError> {
        self.inner.set_status(identifier, status).await
    }
    async fn update_metadata(
        &self,
        identifier: &TenantIdentifier,
        patch: Metadata,
    ) -> Result<Tenant, StoreError> {
        self.inner.update_metadata(identifier, patch).await
    }
    async fn delete(&self, identifier: &TenantIdentifier) -> Result<bool, StoreError> {
        self.inner.delete(identifier).await
    }
    async fn list(&self, query: ListQuery) -> Result<Vec<Tenant>, StoreError> {
        self.inner.list(query).await
    }
    async fn count(&self, status: Option<TenantStatus>) -> Result<u64, StoreError> {
        self.inner.count(status).await
    }
}

pub fn id(text: &str) -> TenantIdentifier {
    TenantIdentifier::parse(text).unwrap()
}

/// Tenants: `acme` (active, owns `shop.acme.com`), `globex` (active), and one per other status.
pub async fn store() -> Arc<CountingStore> {
    let store = Arc::new(CountingStore::default());
    let tenants = [
        ("acme", TenantStatus::Active),
        ("globex", TenantStatus::Active),
        ("suspended-co", TenantStatus::Suspended),
        ("pending-co", TenantStatus::Provisioning),
        ("failed-co", TenantStatus::ProvisioningFailed),
        ("gone-co", TenantStatus::Deleted),
    ];
    for (identifier, status) in tenants {
        let mut new = NewTenant::new(id(identifier), identifier).with_status(status);
        if identifier == "acme" {
            new = new.with_domain("shop.acme.com");
        }
        store.create(new).await.unwrap();
    }
    store
}

pub fn cache(store: &Arc<CountingStore>) -> TenantCache {
    TenantCache::new(store.clone(), CacheSettings::default())
}

async fn whoami(tenant: CurrentTenant) -> String {
    let scoped = context::current().expect("handler runs inside the tenant scope");
    assert!(Arc::ptr_eq(&tenant.0, &scoped));
    tenant.identifier.to_string()
}

async fn health(tenant: Option<CurrentTenant>) -> String {
    match tenant {
        Some(tenant) => format!("health {}", tenant.identifier),
        None => "health none".to_owned(),
    }
}

async fn echo_uri(uri: Uri) -> String {
    uri.to_string()
}

pub fn router() -> Router {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/echo", get(echo_uri))
        .route("/health", get(health))
        .route("/health/live", get(health))
        .route("/healthx", get(health))
        .route("/ws", get(whoami))
        .route("/unlayered", get(whoami))
}

/// The router wrapped (as a whole, so path rewriting affects routing) in the layer.
pub fn app(builder: TenancyLayerBuilder) -> tenancy_axum::TenancyService<Router> {
    tower_layer::Layer::layer(&builder.build(), router())
}

pub fn layer_app(layer: &TenancyLayer) -> tenancy_axum::TenancyService<Router> {
    tower_layer::Layer::layer(layer, router())
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// The `detail` of a JSON error body (and checks its content type).
    pub fn detail(&self) -> String {
        assert_eq!(
            self.headers["content-type"], "application/json",
            "{}",
            self.body
        );
        let json: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        json["detail"].as_str().unwrap().to_owned()
    }
}

pub async fn send(app: &tenancy_axum::TenancyService<Router>, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// Header name/value pairs of a test request.
pub type Headers<'a> = &'a [(&'a str, &'a str)];

pub fn get_with(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}
