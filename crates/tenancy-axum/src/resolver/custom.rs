//! User logic as a resolver, async allowed.

use std::future::Future;

use http::request::Parts;

use super::{Resolution, TenantResolver};

/// Wraps a closure that looks at the request head and returns a future of a [`Resolution`].
///
/// The closure copies what it needs out of the request before its `async move` block, since
/// the future must be `'static`. Identifiers it returns still pass the identifier policy.
///
/// ```
/// use std::borrow::Cow;
/// use http::request::Parts;
/// use tenancy_axum::resolver::{CustomResolver, Resolution};
///
/// let resolver = CustomResolver::new(|parts: &Parts| {
///     let api_key = parts.headers.get("x-api-key").cloned();
///     async move {
///         match api_key.as_ref().map(|key| key.as_bytes()) {
///             Some(b"key-of-acme") => Resolution::Identifier(Cow::Borrowed("acme")),
///             Some(_) => Resolution::Identifier(Cow::Borrowed("unknown-key")),
///             None => Resolution::Missing,
///         }
///     }
/// });
/// # let _ = resolver;
/// ```
#[derive(Debug, Clone)]
pub struct CustomResolver<F> {
    logic: F,
}

impl<F, Fut> CustomResolver<F>
where
    F: Fn(&Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resolution<'static>> + Send + 'static,
{
    /// A resolver running `logic` for each request.
    pub fn new(logic: F) -> Self {
        Self { logic }
    }
}

impl<F, Fut> TenantResolver for CustomResolver<F>
where
    F: Fn(&Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resolution<'static>> + Send + 'static,
{
    fn resolve<'a>(&'a self, parts: &'a Parts) -> Resolution<'a> {
        Resolution::Deferred(Box::pin((self.logic)(parts)))
    }
}
