//! The tower layer: resolve, look up, gate, limit, then run the inner service with the tenant.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{Request, Uri};
use pin_project_lite::pin_project;
use tenancy_core::cache::TenantCache;
use tenancy_core::rate_limit::{RateLimitDecision, RateLimiter};
use tenancy_core::{IdentifierPolicy, Tenant, TenantStatus, context};
use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::rejection::{TenancyRejection, insert_rate_limit_headers};
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
/// A request whose resolvers answer without I/O and whose tenant is cached is admitted inside
/// `call`, without boxing or awaiting; a cache miss, a deferred resolver or a rate limiter
/// continues in a boxed future from where the synchronous attempt stopped (no resolver runs
/// twice).
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
            policy: None,
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
    policy: Option<IdentifierPolicy>,
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
        self.policy = Some(policy);
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
                builtin_policy: self.policy.is_none(),
                policy: self.policy.unwrap_or_default(),
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
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if self.pipeline.is_excluded(request.uri().path()) {
            return ResponseFuture::new(State::Excluded {
                future: self.inner.call(request),
            });
        }
        let (parts, body) = request.into_parts();
        match self.pipeline.admit_now(&parts) {
            Admission::Admitted { tenant, rewritten } => {
                let future = run_admitted(&mut self.inner, parts, body, tenant, rewritten);
                ResponseFuture::new(State::Admitted { future })
            }
            Admission::Refused(rejection) => ResponseFuture::new(State::Refused {
                response: Some(self.pipeline.present(rejection).into_response()),
            }),
            Admission::Later(progress) => {
                // The clone is not ready; the ready service goes into the future.
                let ready = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, ready);
                let pipeline = self.pipeline.clone();
                ResponseFuture::new(State::Later {
                    future: Box::pin(async move {
                        match pipeline.admit_later(&parts, progress).await {
                            Ok((tenant, rewritten, decision)) => {
                                let mut response =
                                    run_admitted(&mut inner, parts, body, tenant, rewritten)
                                        .await?;
                                if let Some(decision) = decision {
                                    insert_rate_limit_headers(response.headers_mut(), &decision);
                                }
                                Ok(response)
                            }
                            Err(rejection) => Ok(pipeline.present(rejection).into_response()),
                        }
                    }),
                })
            }
        }
    }
}

/// The inner service's future for an admitted request, inside the tenant scope and span.
type AdmittedFuture<F> = TaskLocalFuture<Arc<Tenant>, Instrumented<F>>;

/// Calls the inner service with the tenant in the extensions, the path rewritten if a path
/// resolver asked for it, and the tenant as the task-local current tenant. Always inlined: as a
/// call, passing it the request head costs more than the rest of its own work.
#[inline(always)]
fn run_admitted<S, B>(
    inner: &mut S,
    mut parts: Parts,
    body: B,
    tenant: Arc<Tenant>,
    rewritten: Option<Uri>,
) -> AdmittedFuture<S::Future>
where
    S: Service<Request<B>>,
{
    if let Some(uri) = rewritten {
        parts.uri = uri;
    }
    // Without an interested subscriber this is a disabled span: no formatting, no allocation.
    let span = tracing::info_span!("tenancy", tenant = %tenant.identifier);
    parts.extensions.insert(tenant.clone());
    let future = inner.call(Request::from_parts(parts, body));
    context::scope(tenant, future.instrument(span))
}

pin_project! {
    /// The response future of [`TenancyService`]: the inner service's future when the tenant
    /// was admitted (or the path is excluded) without waiting, a ready refusal, or a boxed
    /// future when the admission had to wait (cache miss, deferred resolver, rate limiter).
    pub struct ResponseFuture<F, E> {
        #[pin]
        state: State<F, E>,
    }
}

impl<F, E> ResponseFuture<F, E> {
    fn new(state: State<F, E>) -> Self {
        Self { state }
    }
}

impl<F, E> std::fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Admitted { .. } => "Admitted",
            State::Excluded { .. } => "Excluded",
            State::Refused { .. } => "Refused",
            State::Later { .. } => "Later",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<F, E> {
        Admitted { #[pin] future: AdmittedFuture<F> },
        Excluded { #[pin] future: F },
        Refused { response: Option<Response> },
        Later { future: BoxFuture<'static, Result<Response, E>> },
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProjection::Admitted { future } => future.poll(cx),
            StateProjection::Excluded { future } => future.poll(cx),
            StateProjection::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            StateProjection::Later { future } => future.as_mut().poll(cx),
        }
    }
}

/// Everything the layer needs, shared by all its services.
struct Pipeline {
    cache: TenantCache,
    resolvers: Vec<Box<dyn TenantResolver>>,
    strict: bool,
    policy: IdentifierPolicy,
    /// The policy has only the built-in rules, which every cached identifier already passed.
    builtin_policy: bool,
    excluded: Vec<Box<str>>,
    rate_limiter: Option<Arc<dyn RateLimiter>>,
    hide_unknown_tenants: bool,
}

/// The outcome of the synchronous admission attempt.
enum Admission {
    Admitted {
        tenant: Arc<Tenant>,
        rewritten: Option<Uri>,
    },
    Refused(TenancyRejection),
    /// Waiting is needed; the asynchronous admission continues from here.
    Later(Progress),
}

/// Where the synchronous admission stopped.
struct Progress {
    /// The resolver whose answer is pending (or the resolver count when only the rate
    /// limiter is left).
    resolver: usize,
    /// That resolver's answer, owned, still to be looked up.
    pending: Option<Resolution<'static>>,
    admitted: Option<Arc<Tenant>>,
    rewritten: Option<Uri>,
}

/// A resolver's answer looked up without waiting.
enum Peeked {
    /// The tenant it names (with the rewritten URI of a path resolver), or none.
    Found(Option<(Arc<Tenant>, Option<Uri>)>),
    /// Needs a registry query or a deferred resolver; the answer as an owned value.
    Later(Resolution<'static>),
    /// Refused without any lookup, or known to the cache as not found.
    Refused(TenancyRejection),
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

    /// Resolves and looks up without waiting: the whole admission when every resolver answers
    /// synchronously, the tenant is cached and no rate limiter is set.
    fn admit_now(&self, parts: &Parts) -> Admission {
        let mut admitted = None;
        let mut rewritten = None;
        for (index, resolver) in self.resolvers.iter().enumerate() {
            let found = match self.lookup_now(resolver.resolve(parts)) {
                Peeked::Found(found) => found,
                Peeked::Refused(rejection) => return Admission::Refused(rejection),
                Peeked::Later(pending) => {
                    return Admission::Later(Progress {
                        resolver: index,
                        pending: Some(pending),
                        admitted,
                        rewritten,
                    });
                }
            };
            match self.merge(&mut admitted, &mut rewritten, found) {
                Ok(true) => break,
                Ok(false) => {}
                Err(rejection) => return Admission::Refused(rejection),
            }
        }
        let tenant = match admitted.ok_or(TenancyRejection::Missing).and_then(gate) {
            Ok(tenant) => tenant,
            Err(rejection) => return Admission::Refused(rejection),
        };
        if self.rate_limiter.is_some() {
            return Admission::Later(Progress {
                resolver: self.resolvers.len(),
                pending: None,
                admitted: Some(tenant),
                rewritten,
            });
        }
        Admission::Admitted { tenant, rewritten }
    }

    /// Continues the admission from `progress`: awaits what was pending, asks the remaining
    /// resolvers, gates and rate-limits.
    async fn admit_later(
        &self,
        parts: &Parts,
        progress: Progress,
    ) -> Result<(Arc<Tenant>, Option<Uri>, Option<RateLimitDecision>), TenancyRejection> {
        let Progress {
            resolver: first,
            mut pending,
            mut admitted,
            mut rewritten,
        } = progress;
        for resolver in self.resolvers.iter().skip(first) {
            let resolution = match pending.take() {
                Some(pending) => pending,
                None => resolver.resolve(parts),
            };
            let found = self.lookup(resolution).await?;
            if self.merge(&mut admitted, &mut rewritten, found)? {
                break;
            }
        }
        let tenant = gate(admitted.ok_or(TenancyRejection::Missing)?)?;
        let mut checked = None;
        if let Some(limiter) = &self.rate_limiter {
            let decision = limiter.check(&tenant).await.map_err(|error| {
                tracing::warn!(%error, tenant = %tenant.identifier, "rate limiter unavailable");
                TenancyRejection::Unavailable("Rate limiter")
            })?;
            checked = Some(decision);
            if !decision.allowed {
                return Err(TenancyRejection::RateLimited {
                    identifier: tenant.identifier.clone(),
                    decision,
                });
            }
        }
        Ok((tenant, rewritten, checked))
    }

    /// Adds what one resolver found; `Ok(true)` when no further resolver is to be asked.
    #[inline]
    fn merge(
        &self,
        admitted: &mut Option<Arc<Tenant>>,
        rewritten: &mut Option<Uri>,
        found: Option<(Arc<Tenant>, Option<Uri>)>,
    ) -> Result<bool, TenancyRejection> {
        let Some((tenant, uri)) = found else {
            return Ok(false);
        };
        if let Some(uri) = uri {
            rewritten.get_or_insert(uri);
        }
        match admitted {
            Some(first) if first.id != tenant.id => return Err(TenancyRejection::Conflict),
            Some(_) => {}
            None => *admitted = Some(tenant),
        }
        Ok(!self.strict)
    }

    /// Looks a resolver's answer up in the cache only.
    fn lookup_now(&self, resolution: Resolution<'_>) -> Peeked {
        let cached = |answer: Option<Option<Arc<Tenant>>>| match answer {
            Some(Some(tenant)) => Ok(Some(tenant)),
            Some(None) => Err(TenancyRejection::NotFound),
            None => Ok(None),
        };
        match resolution {
            Resolution::Missing => Peeked::Found(None),
            Resolution::Rejected(rejection) => Peeked::Refused(rejection),
            Resolution::Identifier(raw) => match self.cached_identifier(&raw).and_then(cached) {
                Ok(Some(tenant)) => Peeked::Found(Some((tenant, None))),
                Ok(None) => Peeked::Later(Resolution::Identifier(Cow::Owned(raw.into_owned()))),
                Err(rejection) => Peeked::Refused(rejection),
            },
            Resolution::Routed { identifier, uri } => {
                match self.cached_identifier(&identifier).and_then(cached) {
                    Ok(Some(tenant)) => Peeked::Found(Some((tenant, Some(uri)))),
                    Ok(None) => Peeked::Later(Resolution::Routed {
                        identifier: Cow::Owned(identifier.into_owned()),
                        uri,
                    }),
                    Err(rejection) => Peeked::Refused(rejection),
                }
            }
            Resolution::Domain(domain) => match cached(self.cache.cached_domain(&domain)) {
                Ok(Some(tenant)) => Peeked::Found(Some((tenant, None))),
                Ok(None) => Peeked::Later(Resolution::Domain(Cow::Owned(domain.into_owned()))),
                Err(rejection) => Peeked::Refused(rejection),
            },
            Resolution::Deferred(future) => Peeked::Later(Resolution::Deferred(future)),
        }
    }

    /// Validates `raw` and peeks at the cache.
    ///
    /// Every key of the identifier cache is the text of a [`tenancy_core::TenantIdentifier`],
    /// which passed the built-in rules; with no configured reserved names a hit therefore
    /// needs no second check, and only a miss is validated.
    fn cached_identifier(
        &self,
        raw: &str,
    ) -> Result<Option<Option<Arc<Tenant>>>, TenancyRejection> {
        if self.builtin_policy
            && let Some(hit) = self.cache.cached(raw)
        {
            return Ok(Some(hit));
        }
        self.policy
            .check(raw)
            .map_err(TenancyRejection::Malformed)?;
        Ok(if self.builtin_policy {
            None
        } else {
            self.cache.cached(raw)
        })
    }

    /// Looks a resolver's answer up, awaiting deferred resolvers and registry queries.
    async fn lookup(
        &self,
        mut resolution: Resolution<'_>,
    ) -> Result<Option<(Arc<Tenant>, Option<Uri>)>, TenancyRejection> {
        loop {
            return match resolution {
                Resolution::Deferred(future) => {
                    resolution = future.await;
                    continue;
                }
                Resolution::Missing => Ok(None),
                Resolution::Rejected(rejection) => Err(rejection),
                Resolution::Identifier(identifier) => {
                    Ok(Some((self.lookup_identifier(&identifier).await?, None)))
                }
                Resolution::Domain(domain) => Ok(Some((self.lookup_domain(&domain).await?, None))),
                Resolution::Routed { identifier, uri } => Ok(Some((
                    self.lookup_identifier(&identifier).await?,
                    Some(uri),
                ))),
            };
        }
    }

    async fn lookup_identifier(&self, raw: &str) -> Result<Arc<Tenant>, TenancyRejection> {
        let identifier = self
            .policy
            .parse(raw)
            .map_err(TenancyRejection::Malformed)?;
        self.cache
            .get(&identifier)
            .await
            .map_err(registry_down)?
            .ok_or(TenancyRejection::NotFound)
    }

    async fn lookup_domain(&self, domain: &str) -> Result<Arc<Tenant>, TenancyRejection> {
        self.cache
            .get_by_domain(domain)
            .await
            .map_err(registry_down)?
            .ok_or(TenancyRejection::NotFound)
    }
}

/// Lets only active tenants pass: deleted ones are unknown, others are refused.
fn gate(tenant: Arc<Tenant>) -> Result<Arc<Tenant>, TenancyRejection> {
    match tenant.status {
        TenantStatus::Active => Ok(tenant),
        TenantStatus::Deleted => Err(TenancyRejection::NotFound),
        status => Err(TenancyRejection::NotActive(status)),
    }
}

fn registry_down(error: tenancy_core::StoreError) -> TenancyRejection {
    tracing::warn!(%error, "tenant registry unavailable");
    TenancyRejection::Unavailable("Tenant registry")
}
