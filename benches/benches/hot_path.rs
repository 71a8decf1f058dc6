//! The request hot path: `X-Tenant-ID` header → cached tenant → status gate → extensions →
//! inner call, through the real `TenancyLayer`, with the tenant already cached.
//!
//! - `bare_service`: the inner service alone, called with the same request (no tenant).
//! - `layered_service`: the same service behind `TenancyLayer`. The layer's own cost is
//!   `layered_service − bare_service`.
//! - `cache_hit`: one `TenantCache` lookup of a cached identifier.
//!
//! Both services are driven without a runtime poll loop (`now_or_never`), with no tracing
//! subscriber installed. Run: `cargo bench -p tenancy-benches --bench hot_path -- --warm-up-time
//! 1 --measurement-time 3`.
//!
//! Last measured medians (2-core machine shared with other builds, so ±15 %):
//! cache_hit BEFORE_CACHE, bare_service BEFORE_BARE, layered_service BEFORE_LAYERED.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::body::Body;
use axum_core::response::Response;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{HeaderValue, Request, StatusCode};
use tenancy_axum::TenancyLayer;
use tenancy_core::cache::{CacheSettings, TenantCache};
use tenancy_core::{MemoryStore, NewTenant, Tenant, TenantIdentifier, TenantStatus, TenantStore};
use tower_layer::Layer;
use tower_service::Service;

/// Looks for the tenant in the extensions, as a handler would: 200 with a tenant, 204 without.
#[derive(Clone)]
struct Probe;

impl Service<Request<Body>> for Probe {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let mut response = Response::new(Body::empty());
        if request.extensions().get::<Arc<Tenant>>().is_none() {
            *response.status_mut() = StatusCode::NO_CONTENT;
        }
        ready(Ok(response))
    }
}

fn request() -> Request<Body> {
    let mut request = Request::new(Body::empty());
    request
        .headers_mut()
        .insert("x-tenant-id", HeaderValue::from_static("acme-corp"));
    request
}

fn warm_cache(runtime: &tokio::runtime::Runtime) -> TenantCache {
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

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let cache = warm_cache(&runtime);

    c.bench_function("cache_hit", |b| {
        b.iter(|| black_box(cache.cached(black_box("acme-corp")).unwrap()))
    });

    let mut bare = Probe;
    let response = bare.call(request()).now_or_never().unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    c.bench_function("bare_service", |b| {
        b.iter(|| black_box(bare.call(request()).now_or_never().unwrap().unwrap()))
    });

    let tenant = cache.cached("acme-corp").unwrap().unwrap();
    c.bench_function("bare_service_extension_insert", |b| {
        b.iter(|| {
            let mut request = request();
            request.extensions_mut().insert(tenant.clone());
            black_box(bare.call(request).now_or_never().unwrap().unwrap())
        })
    });

    let mut layered = TenancyLayer::builder(cache).build().layer(Probe);
    eprintln!(
        "future size {}",
        std::mem::size_of_val(&layered.call(request()))
    );
    eprintln!(
        "request size {} response size {}",
        std::mem::size_of::<Request<Body>>(),
        std::mem::size_of::<Response>()
    );
    let response = layered
        .call(request())
        .now_or_never()
        .expect("a cached tenant never waits")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    c.bench_function("layered_service", |b| {
        b.iter(|| {
            let response = layered
                .call(request())
                .now_or_never()
                .expect("a cached tenant never waits")
                .unwrap();
            black_box(response)
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
