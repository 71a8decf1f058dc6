//! Resolvers: where a request names its tenant.
//!
//! A resolver looks at the request head and answers with a [`Resolution`]. It is synchronous and
//! may borrow from the request, so the common case (a header) neither allocates nor awaits; a
//! resolver that must await (custom logic calling a service) returns [`Resolution::Deferred`].
//!
//! Resolvers never validate identifiers or look tenants up themselves: the layer passes every
//! identifier through the configured [`tenancy_core::IdentifierPolicy`] and looks it up in the
//! [`tenancy_core::cache::TenantCache`], so those rules live in one place.

use std::borrow::Cow;
use std::fmt;

use futures_util::future::BoxFuture;
use http::Uri;
use http::request::Parts;

use crate::rejection::TenancyRejection;

mod custom;
mod header;
#[cfg(feature = "jwt")]
pub mod jwt;
mod path;
mod subdomain;

pub use custom::CustomResolver;
pub use header::HeaderResolver;
pub use path::PathResolver;
pub use subdomain::SubdomainResolver;

/// What a resolver found in a request.
pub enum Resolution<'a> {
    /// A tenant identifier as the request wrote it, not yet validated.
    Identifier(Cow<'a, str>),
    /// A full custom domain (lowercase, no port, no trailing dot) to look up by domain.
    Domain(Cow<'a, str>),
    /// A tenant identifier taken from the path; the request continues with `uri`, the path
    /// without the tenant prefix (the query string kept).
    Routed {
        /// The identifier, percent-decoded, not yet validated.
        identifier: Cow<'a, str>,
        /// The URI the inner service sees.
        uri: Uri,
    },
    /// This resolver found nothing; the next resolver of the chain is asked.
    Missing,
    /// The request carries tenant information that cannot be used; the request is refused.
    Rejected(TenancyRejection),
    /// The answer needs I/O; the layer awaits it.
    Deferred(BoxFuture<'static, Resolution<'static>>),
}

impl fmt::Debug for Resolution<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identifier(identifier) => f.debug_tuple("Identifier").field(identifier).finish(),
            Self::Domain(domain) => f.debug_tuple("Domain").field(domain).finish(),
            Self::Routed { identifier, uri } => f
                .debug_struct("Routed")
                .field("identifier", identifier)
                .field("uri", uri)
                .finish(),
            Self::Missing => f.write_str("Missing"),
            Self::Rejected(rejection) => f.debug_tuple("Rejected").field(rejection).finish(),
            Self::Deferred(_) => f.write_str("Deferred(..)"),
        }
    }
}

/// Finds the tenant named by a request.
///
/// ```
/// use std::borrow::Cow;
/// use http::request::Parts;
/// use tenancy_axum::resolver::{Resolution, TenantResolver};
///
/// /// Takes the tenant from a `?tenant=` query parameter.
/// struct QueryResolver;
///
/// impl TenantResolver for QueryResolver {
///     fn resolve<'a>(&'a self, parts: &'a Parts) -> Resolution<'a> {
///         parts
///             .uri
///             .query()
///             .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("tenant=")))
///             .map_or(Resolution::Missing, |id| Resolution::Identifier(Cow::Borrowed(id)))
///     }
/// }
/// ```
pub trait TenantResolver: Send + Sync + 'static {
    /// Looks at the request head.
    fn resolve<'a>(&'a self, parts: &'a Parts) -> Resolution<'a>;
}

impl<R: TenantResolver + ?Sized> TenantResolver for Box<R> {
    fn resolve<'a>(&'a self, parts: &'a Parts) -> Resolution<'a> {
        (**self).resolve(parts)
    }
}

impl<R: TenantResolver + ?Sized> TenantResolver for std::sync::Arc<R> {
    fn resolve<'a>(&'a self, parts: &'a Parts) -> Resolution<'a> {
        (**self).resolve(parts)
    }
}
