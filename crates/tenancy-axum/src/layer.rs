//! The tower layer: resolve, look up, gate, limit, then run the inner service with the tenant.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::Request;
use http::request::Parts;
use tenancy_core::cache::TenantCache;
use tenancy_core::{IdentifierPolicy, Tenant, TenantStatus, context};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::rate_limit::RateLimiter;
use crate::rejection::TenancyRejection;
use crate::resolver::{HeaderResolver, Resolution, TenantResolver};

/// Admits each request for exactly one active tenant.
///
/// For a request whose path is not excluded, the layer
/// 1. asks the resolvers in order; the first that finds a tenant wins (in strict mode all are
///    asked and must agree, else 403). A resolver that refuses the request ends the chain;
/// 2. validates the identifier with the [`IdentifierPolicy`] and looks it up in the
///    [`TenantCache`] (a registry error is 503 with `Retry-After: 1`, never "not found");
/// 3. lets only `active` tenants pass (`deleted` is 404, other statuses 403);
/// 4. asks the [`RateLimiter`], if any (429 with `Retry-After`);
/// 5. inserts the tenant as `Arc<Tenant>` into the request extensions and runs the inner
///    service inside [`tenancy_core::context::scope`] and a tracing span with a `tenant` field.
///
/// Refusals are JSON responses built by [`TenancyRejection`]. Excluded paths pass through with
/// no tenant.
///
/// ```
/// use std::sync::Arc;
/// use tenancy_axum::TenancyLayer;
/// use tenancy_axum::resolver::{HeaderResolver, PathResolver};
/// use tenancy_core::MemoryStore;
/// use tenancy_core::cache::{CacheSettings, TenantCache};
///
/// let cache = TenantCache::new(Arc::new(MemoryStore::new()), CacheSettings::default());
/// let layer = TenancyLayer::builder(cache)
///     .resolver(HeaderResolver::default())
///     .resolver(PathResolver::default())
///     .exclude("/health")
///     .build();
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct TenancyLayer {
    pipeline: Arc<Pipeline>,
}

impl std::fmt::Debug for TenancyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenancyLayer")
            .field("resolvers", &self.pipeline.resolvers.len())
            .field("strict", &self.pipeline.strict)
            .field("excluded", &self.pipeline.excluded)
            .field("hide_unknown_tenants", &self.pipeline.hide_unknown_tenants)
            .finish_non_exhaustive()
    }
}

impl TenancyLayer {
    /// Starts a layer looking tenants up in `cache`.
    pub fn builder(cache: TenantCache) -> TenancyLayerBuilder {
        TenancyLayerBuilder {
            cache,
            resolvers: Vec::new(),
            strict: false,
            policy: IdentifierPolicy::default(),
            excluded: Vec::new(),
            rate_limiter: None,
            hide_unknown_tenants: false,
        }
    }

    /// The cache the layer looks tenants up in (to invalidate after an admin change).
    pub fn cache(&self) -> &TenantCache {
        &self.pipeline.cache
    }
}

/// Configures a [`TenancyLayer`].
pub struct TenancyLayerBuilder {
    cache: TenantCache,
    resolvers: Vec<Box<dyn TenantResolver>>,
    strict: bool,
    policy: IdentifierPolicy,
    excluded: Vec<Box<str>>,
    rate_limiter: Option<Arc<dyn RateLimiter>>,
    hide_unknown_tenants: bool,
}

impl std::fmt::Debug for TenancyLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenancyLayerBuilder")
            .field("resolvers", &self.resolvers.len())
            .field("excluded", &self.excluded)
            .finish_non_exhaustive()
    }
}

impl TenancyLayerBuilder {
    /// Appends a resolver to the chain. Without any, the `X-Tenant-ID` header is used.
    pub fn resolver(mut self, resolver: impl TenantResolver) -> Self {
        self.resolvers.push(Box::new(resolver));
        self
    }

    /// Strict chain: every resolver is asked, and two that find different tenants get 403.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// The identifier policy (configured reserved names). Default: built-in rules only.
    pub fn policy(mut self, policy: IdentifierPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Passes requests under `path` through without a tenant. Whole segments: `/health`
    /// excludes `/health` and `/health/live`, not `/healthz`.
    pub fn exclude(mut self, path: &str) -> Self {
        let trimmed = path.trim_end_matches('/');
        let normalized = if trimmed.starts_with('/') {
            trimmed.to_owned()
        } else {
            format!("/{trimmed}")
        };
        self.excluded.push(normalized.into());
        self
    }

    /// Asks `limiter` for every admitted request.
    pub fn rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.rate_limiter = Some(limiter);
        self
    }

    /// Answers malformed identifiers and unusable hosts or paths like unknown tenants (404
    /// "Tenant not found"), so a client cannot probe which identifiers are valid.
    pub fn hide_unknown_tenants(mut self, hide: bool) -> Self {
        self.hide_unknown_tenants = hide;
        self
    }

    /// The layer.
    pub fn build(mut self) -> TenancyLayer {
        if self.resolvers.is_empty() {
            self.resolvers.push(Box::new(HeaderResolver::default()));
        }
        TenancyLayer {
            pipeline: Arc::new(Pipeline {
                cache: self.cache,
                resolvers: self.resolvers,
                strict: self.strict,
                policy: self.policy,
                excluded: self.excluded,
                rate_limiter: self.rate_limiter,
                hide_unknown_tenants: self.hide_unknown_tenants,
            }),
        }
    }
}

impl<S> Layer<S> for TenancyLayer {
    type Service = TenancyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenancyService {
            inner,
            pipeline: self.pipeline.clone(),
        }
    }
}

/// The service built by [`TenancyLayer`].
#[derive(Clone)]
pub struct TenancyService<S> {
    inner: S,
    pipeline: Arc<Pipeline>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for TenancyService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenancyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for TenancyService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let pipeline = self.pipeline.clone();
        Box::pin(async move {
            if pipeline.is_excluded(request.uri().path()) {
                return inner.call(request).await;
            }
            let (mut parts, body) = request.into_parts();
            match pipeline.admit(&mut parts).await {
                Ok(tenant) => {
                    let span = tracing::info_span!("tenancy", tenant = %tenant.identifier);
                    parts.extensions.insert(tenant.clone());
                    let future = inner.call(Request::from_parts(parts, body));
                    context::scope(tenant, future.instrument(span)).await
                }
                Err(rejection) => Ok(pipeline.present(rejection).into_response()),
            }
        })
    }
}

/// Everything the layer needs, shared by all its services.
struct Pipeline {
    cache: TenantCache,
    resolvers: Vec<Box<dyn TenantResolver>>,
    strict: bool,
    policy: IdentifierPolicy,
    excluded: Vec<Box<str>>,
    rate_limiter: Option<Arc<dyn RateLimiter>>,
    hide_unknown_tenants: bool,
}

impl Pipeline {
    fn is_excluded(&self, path: &str) -> bool {
        self.excluded.iter().any(|prefix| {
            path.strip_prefix(&**prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.is_empty())
        })
    }

    fn present(&self, rejection: TenancyRejection) -> TenancyRejection {
        match rejection {
            TenancyRejection::Malformed(_) | TenancyRejection::BadRequest(_)
                if self.hide_unknown_tenants =>
            {
                TenancyRejection::NotFound
            }
            other => other,
        }
    }

    /// Resolves, looks up, gates and rate-limits; rewrites the URI for path resolution.
    async fn admit(&self, parts: &mut Parts) -> Result<Arc<Tenant>, TenancyRejection> {
        let mut admitted: Option<Arc<Tenant>> = None;
        let mut rewritten = None;
        for resolver in &self.resolvers {
            let mut resolution = resolver.resolve(parts);
            let tenant = loop {
                match resolution {
                    Resolution::Deferred(future) => resolution = future.await,
                    Resolution::Missing => break None,
                    Resolution::Rejected(rejection) => return Err(rejection),
                    Resolution::Identifier(identifier) => {
                        break Some(self.lookup_identifier(&identifier).await?);
                    }
                    Resolution::Domain(domain) => break Some(self.lookup_domain(&domain).await?),
                    Resolution::Routed { identifier, uri } => {
                        let tenant = self.lookup_identifier(&identifier).await?;
                        rewritten.get_or_insert(uri);
                        break Some(tenant);
                    }
                }
            };
            let Some(tenant) = tenant else { continue };
            match &admitted {
                Some(first) if first.id != tenant.id => return Err(TenancyRejection::Conflict),
                Some(_) => {}
                None => admitted = Some(tenant),
            }
            if !self.strict {
                break;
            }
        }
        let tenant = admitted.ok_or(TenancyRejection::Missing)?;
        match tenant.status {
            TenantStatus::Active => {}
            TenantStatus::Deleted => return Err(TenancyRejection::NotFound),
            status => return Err(TenancyRejection::NotActive(status)),
        }
        if let Some(limiter) = &self.rate_limiter {
            let decision = limiter.check(&tenant).await.map_err(|error| {
                tracing::warn!(%error, tenant = %tenant.identifier, "rate limiter unavailable");
                TenancyRejection::Unavailable("Rate limiter")
            })?;
            if !decision.allowed {
                return Err(TenancyRejection::RateLimited {
                    identifier: tenant.identifier.clone(),
                    retry_after: decision.reset_after,
                });
            }
        }
        if let Some(uri) = rewritten {
            parts.uri = uri;
        }
        Ok(tenant)
    }

    async fn lookup_identifier(&self, raw: &str) -> Result<Arc<Tenant>, TenancyRejection> {
        self.policy
            .check(raw)
            .map_err(TenancyRejection::Malformed)?;
        let found = match self.cache.cached(raw).await {
            Some(found) => found,
            None => {
                let identifier = self
                    .policy
                    .parse(raw)
                    .map_err(TenancyRejection::Malformed)?;
                self.cache.get(&identifier).await.map_err(registry_down)?
            }
        };
        found.ok_or(TenancyRejection::NotFound)
    }

    async fn lookup_domain(&self, domain: &str) -> Result<Arc<Tenant>, TenancyRejection> {
        self.cache
            .get_by_domain(domain)
            .await
            .map_err(registry_down)?
            .ok_or(TenancyRejection::NotFound)
    }
}

fn registry_down(error: tenancy_core::StoreError) -> TenancyRejection {
    tracing::warn!(%error, "tenant registry unavailable");
    TenancyRejection::Unavailable("Tenant registry")
}
