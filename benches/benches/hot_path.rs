//! The request hot path: `X-Tenant-ID` header → cached tenant → status gate → extensions,
//! through the real `TenancyLayer` around a trivial service, with the tenant already cached.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::body::Body;
use axum_core::response::Response;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{HeaderValue, Request};
use tenancy_axum::TenancyLayer;
use tenancy_core::cache::{CacheSettings, TenantCache};
use tenancy_core::{MemoryStore, NewTenant, Tenant, TenantIdentifier, TenantStatus, TenantStore};
use tower_layer::Layer;
use tower_service::Service;

/// Answers 200 and checks that the tenant is in the extensions.
#[derive(Clone)]
struct Trivial;

impl Service<Request<Body>> for Trivial {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        assert!(request.extensions().get::<Arc<Tenant>>().is_some());
        ready(Ok(Response::new(Body::empty())))
    }
}

fn request() -> Request<Body> {
    let mut request = Request::new(Body::empty());
    request
        .headers_mut()
        .insert("x-tenant-id", HeaderValue::from_static("acme-corp"));
    request
}

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let identifier = TenantIdentifier::parse("acme-corp").unwrap();
    let mut service = runtime.block_on(async {
        store
            .create(NewTenant::new(identifier.clone(), "Acme").with_status(TenantStatus::Active))
            .await
            .unwrap();
        let cache = TenantCache::new(store, CacheSettings::default());
        cache.get(&identifier).await.unwrap().unwrap();
        TenancyLayer::builder(cache).build().layer(Trivial)
    });
    let _guard = runtime.enter();

    let cache = service_cache(&runtime);
    c.bench_function("cache_hit_by_str", |b| {
        b.iter(|| black_box(cache.cached(black_box("acme-corp")).now_or_never().unwrap()))
    });

    c.bench_function("header_cached_tenant_through_layer", |b| {
        b.iter_batched(
            request,
            |request| {
                let response = service
                    .call(request)
                    .now_or_never()
                    .expect("a cached tenant never waits")
                    .unwrap();
                black_box(response)
            },
            BatchSize::SmallInput,
        )
    });

    let mut trivial = Trivial;
    let tenant = Arc::new(NewTenant::new(identifier, "Acme").into_tenant());
    c.bench_function("baseline_trivial_service", |b| {
        b.iter_batched(
            || {
                let mut request = request();
                request.extensions_mut().insert(tenant.clone());
                request
            },
            |request| black_box(trivial.call(request).now_or_never().unwrap().unwrap()),
            BatchSize::SmallInput,
        )
    });
}

fn service_cache(runtime: &tokio::runtime::Runtime) -> TenantCache {
    runtime.block_on(async {
        let store = Arc::new(MemoryStore::new());
        let identifier = TenantIdentifier::parse("acme-corp").unwrap();
        store
            .create(NewTenant::new(identifier.clone(), "Acme").with_status(TenantStatus::Active))
            .await
            .unwrap();
        let cache = TenantCache::new(store, CacheSettings::default());
        cache.get(&identifier).await.unwrap().unwrap();
        cache
    })
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
