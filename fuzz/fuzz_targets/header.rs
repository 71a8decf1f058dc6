//! Arbitrary bytes as `X-Tenant-ID` header lines (split at `\n`) through the header resolver.
//!
//! Never a panic. One line of visible ASCII without a comma is yielded unchanged; anything
//! else (several lines, a list, other bytes) is refused, never passed on. Whatever it yields,
//! the identifier policy's verdict agrees with the grammar.

#![no_main]

use http::{HeaderName, Uri};
use libfuzzer_sys::fuzz_target;
use tenancy_axum::resolver::{HeaderResolver, Resolution, TenantResolver};
use tenancy_fuzz::{assert_policy_agrees, header_lines, request_head};

fuzz_target!(|data: &[u8]| {
    let Some(lines) = header_lines(data) else {
        return;
    };
    let name = HeaderName::from_static(HeaderResolver::DEFAULT_HEADER);
    let parts = request_head(
        Uri::from_static("/"),
        lines.iter().map(|line| (name.clone(), line.clone())),
    );
    let usable = lines.len() == 1 && lines[0].to_str().is_ok_and(|text| !text.contains(','));
    match HeaderResolver::default().resolve(&parts) {
        Resolution::Identifier(text) => {
            assert!(usable, "{lines:?} yielded {text:?}");
            assert_eq!(text.as_bytes(), lines[0].as_bytes());
            assert_policy_agrees(&text);
        }
        Resolution::Rejected(_) => assert!(!usable, "{lines:?} refused"),
        other => panic!("{lines:?} gave {other:?}"),
    }
});
