//! The identifier as the first label of the host (`acme.example.test`), with custom domains.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use http::header::{FORWARDED, HOST};
use http::request::Parts;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

use super::{Resolution, TenantResolver};
use crate::peer::PeerAddr;
use crate::rejection::TenancyRejection;

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Reads the tenant from the host: exactly one label in front of the configured domain suffix.
///
/// - The port is stripped, the host case-folded and one trailing dot accepted.
/// - The bare suffix is [`Resolution::Missing`]; deeper labels (`a.b.example.test`), IP
///   literals (`10.0.0.1`, `[::1]`) and characters not allowed in a domain name are refused.
/// - A host outside the suffix is refused, or, with [`Self::custom_domains`], looked up as a
///   tenant's custom domain (`shop.acme.com`).
/// - `Forwarded: host=` and then `X-Forwarded-Host` replace the `Host` header only when the
///   peer (see [`PeerAddr`]) is in the trusted proxies; the last value is used, being the one
///   the trusted proxy added. From any other peer they are ignored.
///
/// ```
/// use tenancy_axum::resolver::SubdomainResolver;
/// let resolver = SubdomainResolver::new("Example.TEST.")
///     .trusted_proxies(["10.0.0.0/8".parse().unwrap()])
///     .custom_domains(true);
/// assert_eq!(resolver.suffix(), "example.test");
/// ```
#[derive(Debug, Clone)]
pub struct SubdomainResolver {
    suffix: Box<str>,
    trusted_proxies: Vec<IpNet>,
    custom_domains: bool,
}

impl SubdomainResolver {
    /// Tenants are `<identifier>.<suffix>`. The suffix is lowercased and stripped of dots at
    /// either end.
    pub fn new(suffix: &str) -> Self {
        Self {
            suffix: suffix.trim_matches('.').to_ascii_lowercase().into(),
            trusted_proxies: Vec::new(),
            custom_domains: false,
        }
    }

    /// Peers whose forwarded-host headers are believed.
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted_proxies = proxies.into_iter().collect();
        self
    }

    /// Whether a host outside the suffix is looked up as a custom domain (default: refused).
    pub fn custom_domains(mut self, enabled: bool) -> Self {
        self.custom_domains = enabled;
        self
    }

    /// The configured domain suffix.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    fn peer_is_trusted(&self, parts: &Parts) -> bool {
        !self.trusted_proxies.is_empty()
            && PeerAddr::ip_from(&parts.extensions)
                .is_some_and(|ip| self.trusted_proxies.iter().any(|net| net.contains(&ip)))
    }

    /// The raw host of the request, before any checks.
    fn raw_host<'a>(&self, parts: &'a Parts) -> Result<Option<&'a str>, TenancyRejection> {
        if self.peer_is_trusted(parts) {
            if let Some(host) = forwarded_host(parts)? {
                return Ok(Some(host));
            }
            if let Some(host) = last_list_value(parts.headers.get_all(X_FORWARDED_HOST))? {
                return Ok(Some(host));
            }
        }
        let mut hosts = parts.headers.get_all(HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => Err(TenancyRejection::BadRequest("more than one Host header")),
            (Some(value), None) => visible_ascii(value).map(Some),
            (None, _) => Ok(parts.uri.host()),
        }
    }
}

impl TenantResolver for SubdomainResolver {
    fn resolve<'a>(&'a self, parts: &'a Parts) -> Resolution<'a> {
        let raw = match self.raw_host(parts) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Resolution::Missing,
            Err(rejection) => return Resolution::Rejected(rejection),
        };
        let host = match normalize_host(raw) {
            Ok(host) => host,
            Err(reason) => return Resolution::Rejected(TenancyRejection::BadRequest(reason)),
        };
        if *host == *self.suffix {
            return Resolution::Missing;
        }
        let label_len = host
            .strip_suffix(&*self.suffix)
            .and_then(|front| front.strip_suffix('.'))
            .map(str::len);
        match label_len {
            Some(0) => {
                Resolution::Rejected(TenancyRejection::BadRequest("host has an empty label"))
            }
            Some(len) if host[..len].contains('.') => {
                Resolution::Rejected(TenancyRejection::BadRequest(
                    "host has more than one label before the tenant domain",
                ))
            }
            Some(len) => Resolution::Identifier(match host {
                Cow::Borrowed(host) => Cow::Borrowed(&host[..len]),
                Cow::Owned(mut host) => {
                    host.truncate(len);
                    Cow::Owned(host)
                }
            }),
            None if self.custom_domains => Resolution::Domain(host),
            None => Resolution::Rejected(TenancyRejection::BadRequest(
                "host is not under the tenant domain",
            )),
        }
    }
}

fn visible_ascii(value: &HeaderValue) -> Result<&str, TenancyRejection> {
    value
        .to_str()
        .map_err(|_| TenancyRejection::BadRequest("host header is not visible ASCII"))
}

/// The last non-empty entry of a comma-separated header (all lines).
fn last_list_value<'a>(
    values: http::header::GetAll<'a, HeaderValue>,
) -> Result<Option<&'a str>, TenancyRejection> {
    let mut last = None;
    for value in values {
        for entry in visible_ascii(value)?.split(',') {
            let entry = entry.trim();
            if !entry.is_empty() {
                last = Some(entry);
            }
        }
    }
    Ok(last)
}

/// The `host=` parameter of the last `Forwarded` element that has one (RFC 7239).
fn forwarded_host(parts: &Parts) -> Result<Option<&str>, TenancyRejection> {
    let mut last = None;
    for value in parts.headers.get_all(FORWARDED) {
        for element in visible_ascii(value)?.split(',') {
            for pair in element.split(';') {
                let Some((name, value)) = pair.trim().split_once('=') else {
                    continue;
                };
                if name.trim().eq_ignore_ascii_case("host") {
                    let value = value.trim();
                    last = Some(
                        value
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or(value),
                    );
                }
            }
        }
    }
    Ok(last)
}

/// Strips the port and one trailing dot, refuses IP literals and characters outside a domain
/// name, and lowercases (allocating only if the host has uppercase letters).
fn normalize_host(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    if raw.starts_with('[') {
        return Err("host is an IP address");
    }
    let host = match raw.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return Err("host is not a domain name"),
        None => raw,
    };
    if host.contains(':') {
        return Err("host is an IP address");
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err("host is empty");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("host contains characters not allowed in a domain name");
    }
    if host.split('.').any(str::is_empty) {
        return Err("host has an empty label");
    }
    if host
        .split('.')
        .any(|label| label.starts_with('-') || label.ends_with('-'))
    {
        return Err("host has a label starting or ending with '-'");
    }
    if host.parse::<Ipv4Addr>().is_ok() || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("host is an IP address");
    }
    Ok(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_malformed_labels() {
        for bad in [
            "shop.acme.com..",
            "acme..example.test",
            ".acme.example.test",
            "-acme.example.test",
            "acme-.example.test",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(
            normalize_host("Acme.Example.Test:8080").unwrap(),
            "acme.example.test"
        );
        assert_eq!(
            normalize_host("acme.example.test.").unwrap(),
            "acme.example.test"
        );
        assert!(matches!(
            normalize_host("acme.example.test").unwrap(),
            Cow::Borrowed(_)
        ));
        for bad in [
            "[::1]",
            "[::1]:80",
            "::1",
            "10.0.0.1",
            "10.0.0.1:80",
            "1.2.3",
            "",
            ".",
            "a b",
            "acme.example.test:x",
            "ac_me.example.test",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad:?}");
        }
    }
}
