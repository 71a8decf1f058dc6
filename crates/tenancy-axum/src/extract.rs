//! Extractors handing the request's tenant to handlers.

use std::ops::Deref;
use std::sync::Arc;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;
use tenancy_core::Tenant;

use crate::rejection::TenancyRejection;

/// The tenant of the request, as admitted by [`crate::TenancyLayer`] (always active).
///
/// The layer stores it as `Arc<Tenant>` in the request extensions; other crates read that same
/// type. On a route without the layer, extraction fails with 500 "tenancy layer not
/// installed" (a programming error). On excluded routes use `Option<CurrentTenant>`, which is
/// `None` there.
///
/// ```
/// use tenancy_axum::CurrentTenant;
///
/// async fn whoami(tenant: CurrentTenant) -> String {
///     tenant.identifier.to_string()
/// }
/// async fn health(tenant: Option<CurrentTenant>) -> &'static str {
///     if tenant.is_some() { "tenant" } else { "no tenant" }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct CurrentTenant(pub Arc<Tenant>);

impl Deref for CurrentTenant {
    type Target = Tenant;
    fn deref(&self) -> &Tenant {
        &self.0
    }
}

impl<S: Sync> FromRequestParts<S> for CurrentTenant {
    type Rejection = TenancyRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Arc<Tenant>>()
            .cloned()
            .map(CurrentTenant)
            .ok_or(TenancyRejection::LayerMissing)
    }
}

impl<S: Sync> OptionalFromRequestParts<S> for CurrentTenant {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Arc<Tenant>>()
            .cloned()
            .map(CurrentTenant))
    }
}
