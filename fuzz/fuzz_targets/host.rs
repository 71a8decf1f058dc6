//! Arbitrary bytes as `Host`, `X-Forwarded-Host` and `Forwarded` lines through the subdomain
//! resolver (suffix `example.test`, trusted proxies `127.0.0.0/8`).
//!
//! The first byte chooses the setup: bit 0 `Host`, bit 1 `X-Forwarded-Host`, bit 2
//! `Forwarded` (bit 3 wraps each line as `host="<line>"`), bits 4-5 the peer (none, untrusted
//! `192.0.2.7`, trusted `127.0.0.1`), bit 6 custom domains, bit 7 the first line as the URI
//! authority too (HTTP/2 `:authority`). The rest, split at `\n`, are the header lines.
//!
//! Never a panic. Forwarded headers from a peer that is not trusted change nothing. An
//! identifier is one lowercase label `[a-z0-9-]+` that the input names as
//! `<label>.example.test`, and the policy's verdict on it agrees with the grammar. A custom
//! domain is only looked up when enabled, is a lowercase domain name outside the tenant domain
//! without port or trailing dot, never an IP address, and appears in the input.

#![no_main]

use std::net::IpAddr;
use std::sync::LazyLock;

use http::header::{FORWARDED, HOST};
use http::{HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use tenancy_axum::PeerAddr;
use tenancy_axum::resolver::{Resolution, SubdomainResolver, TenantResolver};
use tenancy_fuzz::{assert_policy_agrees, header_lines, request_head};

const SUFFIX: &str = "example.test";
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Without and with custom domains.
static RESOLVERS: LazyLock<[SubdomainResolver; 2]> = LazyLock::new(|| {
    let resolver = |custom_domains| {
        SubdomainResolver::new(SUFFIX)
            .trusted_proxies(["127.0.0.0/8".parse().expect("valid network")])
            .custom_domains(custom_domains)
    };
    [resolver(false), resolver(true)]
});

fuzz_target!(|data: &[u8]| {
    let Some((&setup, rest)) = data.split_first() else {
        return;
    };
    let Some(lines) = header_lines(rest) else {
        return;
    };
    let forwarded: Option<Vec<HeaderValue>> = if setup & 8 != 0 {
        lines
            .iter()
            .map(|line| {
                let mut value = b"host=\"".to_vec();
                value.extend_from_slice(line.as_bytes());
                value.push(b'"');
                HeaderValue::from_bytes(&value).ok()
            })
            .collect()
    } else {
        Some(lines.clone())
    };
    let Some(forwarded) = forwarded else {
        return;
    };
    let uri = if setup & 0x80 != 0 {
        let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(lines[0].as_bytes())
            .path_and_query("/")
            .build()
        else {
            return;
        };
        uri
    } else {
        Uri::from_static("/")
    };

    let host_lines = lines
        .iter()
        .filter(|_| setup & 1 != 0)
        .map(|line| (HOST, line.clone()));
    let forwarding = lines
        .iter()
        .filter(|_| setup & 2 != 0)
        .map(|line| (X_FORWARDED_HOST, line.clone()))
        .chain(
            forwarded
                .iter()
                .filter(|_| setup & 4 != 0)
                .map(|line| (FORWARDED, line.clone())),
        );
    let mut parts = request_head(uri.clone(), host_lines.clone().chain(forwarding));
    let mut direct = request_head(uri, host_lines);
    let peer_trusted = match (setup >> 4) & 3 {
        0 => false,
        1 => {
            parts
                .extensions
                .insert(PeerAddr("192.0.2.7:9".parse().expect("valid address")));
            false
        }
        _ => {
            parts
                .extensions
                .insert(PeerAddr("127.0.0.1:9".parse().expect("valid address")));
            true
        }
    };
    if let Some(peer) = parts.extensions.get::<PeerAddr>().copied() {
        direct.extensions.insert(peer);
    }

    let custom_domains = setup & 0x40 != 0;
    let resolver = &RESOLVERS[usize::from(custom_domains)];
    let resolution = resolver.resolve(&parts);
    if !peer_trusted {
        assert_eq!(
            format!("{resolution:?}"),
            format!("{:?}", resolver.resolve(&direct)),
            "forwarded headers from an untrusted peer changed the answer"
        );
    }

    let input = String::from_utf8_lossy(rest).to_ascii_lowercase();
    match resolution {
        Resolution::Identifier(label) => {
            assert!(
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "label {label:?}"
            );
            assert!(
                input.contains(&format!("{label}.{SUFFIX}")),
                "label {label:?} not named by {input:?}"
            );
            assert_policy_agrees(&label);
        }
        Resolution::Domain(domain) => {
            assert!(custom_domains, "custom domain {domain:?} while disabled");
            assert!(
                !domain.is_empty()
                    && !domain.ends_with('.')
                    && domain.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'-'
                        || b == b'.'),
                "domain {domain:?}"
            );
            assert!(
                *domain != *SUFFIX && !domain.ends_with(&format!(".{SUFFIX}")),
                "tenant domain {domain:?} looked up as a custom domain"
            );
            assert!(domain.parse::<IpAddr>().is_err(), "IP address {domain:?}");
            assert!(input.contains(&*domain), "{domain:?} not in {input:?}");
        }
        Resolution::Missing | Resolution::Rejected(_) => {}
        other => panic!("{other:?}"),
    }
});
