//! The identifier as the first path segment after a prefix (`/tenants/acme/orders`).

use http::Uri;
use http::request::Parts;
use http::uri::PathAndQuery;
use percent_encoding::percent_decode_str;

use super::{Resolution, TenantResolver};
use crate::rejection::TenancyRejection;

/// Reads the tenant from `/{prefix}/{identifier}/...` and routes the rest of the path as if the
/// prefix were not there: `/tenants/acme/orders?page=2` reaches the inner service as
/// `/orders?page=2`, so one router serves both the path style and other resolvers.
///
/// The rewrite only affects routing when the layer wraps the whole router
/// (`layer.layer(router)`), not when added with `Router::layer`, which runs after routing.
///
/// The identifier segment is percent-decoded once; an empty segment, `.`/`..` (also
/// percent-encoded) anywhere in the path, or bytes that are not UTF-8 are refused with 400.
/// A path outside the prefix is [`Resolution::Missing`].
///
/// ```
/// use tenancy_axum::resolver::PathResolver;
/// assert_eq!(PathResolver::default().prefix(), "/tenants");
/// assert_eq!(PathResolver::new("orgs/").prefix(), "/orgs");
/// ```
#[derive(Debug, Clone)]
pub struct PathResolver {
    prefix: Box<str>,
}

impl PathResolver {
    /// The prefix used by default.
    pub const DEFAULT_PREFIX: &'static str = "/tenants";

    /// Tenants are `/{prefix}/{identifier}`; slashes around `prefix` are normalized.
    pub fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        };
        Self {
            prefix: prefix.into(),
        }
    }

    /// The normalized prefix (`/tenants`; empty for tenants at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Default for PathResolver {
    fn default() -> Self {
        Self::new(Self::DEFAULT_PREFIX)
    }
}

fn is_dot_segment(segment: &str) -> bool {
    matches!(
        &*percent_decode_str(segment).decode_utf8_lossy(),
        "." | ".."
    )
}

impl TenantResolver for PathResolver {
    fn resolve<'a>(&'a self, parts: &'a Parts) -> Resolution<'a> {
        let Some(after_prefix) = parts.uri.path().strip_prefix(&*self.prefix) else {
            return Resolution::Missing;
        };
        let Some(after_prefix) = after_prefix.strip_prefix('/') else {
            return Resolution::Missing;
        };
        let (segment, rest) = match after_prefix.find('/') {
            Some(slash) => after_prefix.split_at(slash),
            None => (after_prefix, ""),
        };
        if segment.is_empty() {
            return reject("empty tenant path segment");
        }
        if is_dot_segment(segment) || rest.split('/').any(is_dot_segment) {
            return reject("'.' and '..' path segments are not allowed");
        }
        let identifier = match percent_decode_str(segment).decode_utf8() {
            Ok(identifier) => identifier,
            Err(_) => return reject("tenant path segment is not UTF-8"),
        };
        let rest = if rest.is_empty() { "/" } else { rest };
        let path_and_query = match parts.uri.query() {
            Some(query) => PathAndQuery::try_from(format!("{rest}?{query}")),
            None => PathAndQuery::try_from(rest),
        };
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = path_and_query.ok();
        match Uri::from_parts(uri) {
            Ok(uri) => Resolution::Routed { identifier, uri },
            Err(_) => reject("request path cannot be rewritten"),
        }
    }
}

fn reject(reason: &'static str) -> Resolution<'static> {
    Resolution::Rejected(TenancyRejection::BadRequest(reason))
}
