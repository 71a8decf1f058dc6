//! Arbitrary bytes as a bearer token (`Authorization: Bearer <bytes>`) and as a whole
//! `Authorization` value through the JWT resolver with an HS256 key.
//!
//! Never a panic and never an identifier: without the key no token can be accepted, whatever
//! its header claims (`alg: none`, RS256, a `kid`) or however it is encoded. A bearer token is
//! always refused as an invalid token, never skipped.

#![no_main]

use std::sync::LazyLock;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use tenancy_axum::TenancyRejection;
use tenancy_axum::resolver::jwt::JwtResolver;
use tenancy_axum::resolver::{Resolution, TenantResolver};
use tenancy_fuzz::request_head;

/// The key the seed corpus signs its (expired, or claim-less) tokens with.
const SECRET: &[u8] = b"tenancy fuzz secret, 32 bytes ok";

static RESOLVER: LazyLock<JwtResolver> = LazyLock::new(|| JwtResolver::hs256(SECRET));

/// Why the token was refused, or `None` when the resolver found no bearer token.
fn refusal(value: HeaderValue) -> Option<&'static str> {
    let parts = request_head(Uri::from_static("/"), [(AUTHORIZATION, value)]);
    match RESOLVER.resolve(&parts) {
        Resolution::Rejected(TenancyRejection::InvalidToken(why)) => Some(why),
        Resolution::Missing => None,
        other => panic!("token accepted or misrouted: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(data);
    if let Ok(value) = HeaderValue::from_bytes(&bearer) {
        assert!(refusal(value).is_some(), "bearer token skipped");
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        refusal(value);
    }
});
