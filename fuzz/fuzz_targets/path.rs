//! Arbitrary bytes as a request URI (origin form `/a/b?q`, or absolute form) through the path
//! resolver, with the prefix `/tenants` and with tenants at the root.
//!
//! Never a panic. A path outside `/{prefix}/` is not routed. A routed request: the identifier
//! is the first segment after the prefix, percent-decoded once; the rewritten URI has the rest
//! of the path (or `/`), the same query, scheme and authority, and no `.`/`..` segment, neither
//! raw nor percent-decoded; the policy's verdict on the identifier agrees with the grammar.

#![no_main]

use std::sync::LazyLock;

use http::Uri;
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use tenancy_axum::resolver::{PathResolver, Resolution, TenantResolver};
use tenancy_fuzz::{assert_policy_agrees, request_head};

static RESOLVERS: LazyLock<[PathResolver; 2]> =
    LazyLock::new(|| [PathResolver::default(), PathResolver::new("/")]);

fuzz_target!(|data: &[u8]| {
    let Ok(uri) = Uri::try_from(data) else {
        return;
    };
    for resolver in &*RESOLVERS {
        check(resolver, &uri);
    }
});

fn is_dot_segment(segment: &str) -> bool {
    matches!(segment, "." | "..")
        || matches!(
            &*percent_decode_str(segment).decode_utf8_lossy(),
            "." | ".."
        )
}

fn check(resolver: &PathResolver, uri: &Uri) {
    let parts = request_head(uri.clone(), []);
    let tenant_part = uri
        .path()
        .strip_prefix(resolver.prefix())
        .and_then(|after| after.strip_prefix('/'));
    match resolver.resolve(&parts) {
        Resolution::Routed {
            identifier,
            uri: routed,
        } => {
            let tenant_part = tenant_part.expect("routed a path outside the prefix");
            let (segment, rest) = tenant_part
                .find('/')
                .map_or((tenant_part, ""), |slash| tenant_part.split_at(slash));
            assert!(!segment.is_empty());
            assert_eq!(
                Ok(&*identifier),
                percent_decode_str(segment).decode_utf8().as_deref()
            );
            assert_eq!(routed.path(), if rest.is_empty() { "/" } else { rest });
            assert_eq!(routed.query(), uri.query());
            assert_eq!(routed.scheme(), uri.scheme());
            assert_eq!(routed.authority(), uri.authority());
            assert!(
                !routed.path().split('/').any(is_dot_segment),
                "{uri} rewritten to {routed} with a dot segment"
            );
            assert_policy_agrees(&identifier);
        }
        Resolution::Missing => assert!(tenant_part.is_none(), "{uri} not routed"),
        Resolution::Rejected(_) => assert!(tenant_part.is_some(), "{uri} refused"),
        other => panic!("{uri}: {other:?}"),
    }
}
