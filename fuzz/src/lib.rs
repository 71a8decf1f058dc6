//! What the fuzz targets share: the identifier grammar restated independently of
//! `tenancy_core` (the oracle the library is checked against), the shape of derived names, and
//! request heads built from fuzz input.

use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Uri};
use tenancy_core::IdentifierPolicy;

/// Names no tenant may take, restated from the identifier policy's documentation.
const RESERVED: [&str; 5] = ["public", "information-schema", "www", "api", "admin"];

/// Whether `text` is a tenant identifier by the documented grammar, written without looking at
/// the library: `[a-z][a-z0-9-]*[a-z0-9]`, 3 to 63 bytes, no `--`, no `pg-` prefix, not a
/// reserved name and not one of `extra_reserved`.
pub fn is_identifier(text: &str, extra_reserved: &[&str]) -> bool {
    let bytes = text.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.contains("--")
        && !text.starts_with("pg-")
        && !RESERVED.contains(&text)
        && !extra_reserved.contains(&text)
}

/// Whether `text` matches `[a-z_][a-z0-9_]*`, the shape every derived name must have.
pub fn is_derived_name(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Panics unless the default policy's verdict on `text` (an identifier a resolver produced)
/// agrees with [`is_identifier`] and an accepted identifier is `text` unchanged.
pub fn assert_policy_agrees(text: &str) {
    let parsed = IdentifierPolicy::default().parse(text);
    assert_eq!(
        parsed.is_ok(),
        is_identifier(text, &[]),
        "policy and grammar disagree on {text:?}: {parsed:?}"
    );
    if let Ok(identifier) = parsed {
        assert_eq!(identifier.as_str(), text);
    }
}

/// A request head for `uri` with `headers`, in order; a repeated name gives several lines.
pub fn request_head(
    uri: Uri,
    headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
) -> Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.uri = uri;
    for (name, value) in headers {
        parts.headers.append(name, value);
    }
    parts
}

/// The fuzz input split at `\n` into header values (one per header line), or `None` when a
/// line is not a valid header value, since no request could carry it.
pub fn header_lines(data: &[u8]) -> Option<Vec<HeaderValue>> {
    data.split(|&b| b == b'\n')
        .map(|line| HeaderValue::from_bytes(line).ok())
        .collect()
}
