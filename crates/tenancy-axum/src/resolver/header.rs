//! The identifier in a request header (default `X-Tenant-ID`).

use std::borrow::Cow;

use http::HeaderName;
use http::request::Parts;

use super::{Resolution, TenantResolver};
use crate::rejection::TenancyRejection;

/// Reads the tenant identifier from one header.
///
/// No header is [`Resolution::Missing`]; two header lines, a comma-separated list or bytes that
/// are not visible ASCII are refused with 400. The happy path borrows the header value.
///
/// ```
/// use tenancy_axum::resolver::HeaderResolver;
/// let default = HeaderResolver::default();
/// assert_eq!(default.header_name(), "x-tenant-id");
/// let custom = HeaderResolver::new(http::HeaderName::from_static("x-org"));
/// ```
#[derive(Debug, Clone)]
pub struct HeaderResolver {
    name: HeaderName,
}

impl HeaderResolver {
    /// The header every identifier is read from by default.
    pub const DEFAULT_HEADER: &'static str = "x-tenant-id";

    /// Reads the identifier from the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }

    /// The header read.
    pub fn header_name(&self) -> &HeaderName {
        &self.name
    }
}

impl Default for HeaderResolver {
    fn default() -> Self {
        Self::new(HeaderName::from_static(Self::DEFAULT_HEADER))
    }
}

impl TenantResolver for HeaderResolver {
    fn resolve<'a>(&'a self, parts: &'a Parts) -> Resolution<'a> {
        let mut values = parts.headers.get_all(&self.name).iter();
        let Some(value) = values.next() else {
            return Resolution::Missing;
        };
        if values.next().is_some() {
            return Resolution::Rejected(TenancyRejection::BadRequest(
                "more than one tenant identifier header",
            ));
        }
        let Ok(text) = value.to_str() else {
            return Resolution::Rejected(TenancyRejection::BadRequest(
                "tenant identifier header is not visible ASCII",
            ));
        };
        if text.contains(',') {
            return Resolution::Rejected(TenancyRejection::BadRequest(
                "more than one tenant identifier header",
            ));
        }
        Resolution::Identifier(Cow::Borrowed(text))
    }
}
