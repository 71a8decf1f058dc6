//! Building the layer from a [`TenancyConfig`]: the resolver of `TENANCY_RESOLUTION_STRATEGY`,
//! the identifier policy, excluded paths and `TENANCY_HIDE_UNKNOWN_TENANTS`.

#[cfg(feature = "jwt")]
use std::path::PathBuf;

use http::HeaderName;
use tenancy_core::cache::TenantCache;
use tenancy_core::{ResolutionStrategy, TenancyConfig};

use crate::layer::{TenancyLayer, TenancyLayerBuilder};
use crate::resolver::{HeaderResolver, PathResolver, SubdomainResolver};

/// Why a layer cannot be built from a configuration. Every variant names the `TENANCY_*`
/// variable to fix; secrets are never shown.
#[derive(Debug, thiserror::Error)]
pub enum LayerConfigError {
    /// A setting the resolution strategy needs is not set.
    #[error("{variable} is not set: required with TENANCY_RESOLUTION_STRATEGY={strategy}")]
    Missing {
        /// The variable to set.
        variable: &'static str,
        /// The configured strategy.
        strategy: ResolutionStrategy,
    },
    /// A setting has a value the layer cannot use.
    #[error("{variable}='{value}' is invalid: {reason}")]
    Invalid {
        /// The variable to fix.
        variable: &'static str,
        /// The value as configured.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key file named by a setting cannot be read.
    #[cfg(feature = "jwt")]
    #[error("{variable}: cannot read {}: {source}", path.display())]
    KeyFile {
        /// The variable naming the file.
        variable: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// A key source cannot be used: a key or JWKS file without a usable key, or a JWKS URL
    /// the resolver refuses.
    #[cfg(feature = "jwt")]
    #[error("{variable}: {source}")]
    Jwt {
        /// The variable naming the key source.
        variable: &'static str,
        /// What the JWT resolver said.
        #[source]
        source: crate::resolver::jwt::JwtConfigError,
    },
    /// `TENANCY_RESOLUTION_STRATEGY=jwt` in a build without the `jwt` feature.
    #[cfg(not(feature = "jwt"))]
    #[error("TENANCY_RESOLUTION_STRATEGY=jwt needs the `jwt` feature of tenancy-axum")]
    JwtFeatureDisabled,
}

impl TenancyLayer {
    /// The layer described by `config`, looking tenants up in `cache`; see
    /// [`TenancyLayerBuilder::from_config`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tenancy_axum::TenancyLayer;
    /// use tenancy_core::cache::{CacheSettings, TenantCache};
    /// use tenancy_core::{MemoryStore, TenancyConfig};
    ///
    /// let config = TenancyConfig::from_vars([
    ///     ("TENANCY_RESOLUTION_STRATEGY", "subdomain"),
    ///     ("TENANCY_DOMAIN_SUFFIX", "example.test"),
    /// ])?;
    /// let cache = TenantCache::new(Arc::new(MemoryStore::new()), CacheSettings::from_config(&config));
    /// let layer = TenancyLayer::from_config(&config, cache)?;
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_config(
        config: &TenancyConfig,
        cache: TenantCache,
    ) -> Result<Self, LayerConfigError> {
        Ok(TenancyLayerBuilder::from_config(config, cache)?.build())
    }
}

impl TenancyLayerBuilder {
    /// A builder set up from `config`, to add what configuration does not describe (a rate
    /// limiter, more resolvers):
    ///
    /// - the resolver of `resolution_strategy`: `header` reads `tenant_header_name`;
    ///   `subdomain` reads hosts under `domain_suffix`, believes forwarded hosts from
    ///   `trusted_proxies` and looks other hosts up as tenants' custom domains; `path` reads
    ///   the segment after `path_prefix`; `jwt` (feature `jwt`) verifies bearer tokens with
    ///   `jwt_algorithm` and `jwt_secret`, `jwt_public_key_path` or `jwt_jwks_path` (reread on
    ///   an unknown key id at most every `jwt_jwks_refresh_seconds`), checks `jwt_audience`,
    ///   `jwt_issuer` and `jwt_leeway_seconds`, and reads `jwt_tenant_claim`. Key files are
    ///   read now; the document at `jwt_jwks_url` (feature `jwks-http`, refused without it) is
    ///   fetched when the first token arrives and again on an unknown key id at most every
    ///   `jwt_jwks_refresh_seconds`;
    /// - the identifier policy with `reserved_identifiers`;
    /// - `excluded_paths` and `hide_unknown_tenants`.
    pub fn from_config(
        config: &TenancyConfig,
        cache: TenantCache,
    ) -> Result<Self, LayerConfigError> {
        let mut builder = TenancyLayer::builder(cache);
        builder = match config.resolution_strategy {
            ResolutionStrategy::Header => builder.resolver(header_resolver(config)?),
            ResolutionStrategy::Subdomain => builder.resolver(subdomain_resolver(config)?),
            ResolutionStrategy::Path => builder.resolver(PathResolver::new(&config.path_prefix)),
            ResolutionStrategy::Jwt => builder.resolver(jwt::resolver(config)?),
        };
        if !config.reserved_identifiers.is_empty() {
            builder = builder.policy(config.identifier_policy());
        }
        for path in &config.excluded_paths {
            builder = builder.exclude(path);
        }
        Ok(builder.hide_unknown_tenants(config.hide_unknown_tenants))
    }
}

fn header_resolver(config: &TenancyConfig) -> Result<HeaderResolver, LayerConfigError> {
    HeaderName::from_bytes(config.tenant_header_name.as_bytes())
        .map(HeaderResolver::new)
        .map_err(|_| LayerConfigError::Invalid {
            variable: "TENANCY_TENANT_HEADER_NAME",
            value: config.tenant_header_name.clone(),
            reason: "expected an HTTP header name",
        })
}

fn subdomain_resolver(config: &TenancyConfig) -> Result<SubdomainResolver, LayerConfigError> {
    let suffix = config
        .domain_suffix
        .as_deref()
        .filter(|suffix| !suffix.trim_matches('.').is_empty())
        .ok_or(LayerConfigError::Missing {
            variable: "TENANCY_DOMAIN_SUFFIX",
            strategy: ResolutionStrategy::Subdomain,
        })?;
    Ok(SubdomainResolver::new(suffix)
        .trusted_proxies(config.trusted_proxies.iter().copied())
        .custom_domains(true))
}

#[cfg(feature = "jwt")]
mod jwt {
    use jsonwebtoken::Algorithm;
    use tenancy_core::{JwtAlgorithm, ResolutionStrategy, TenancyConfig};

    use super::LayerConfigError;
    use crate::resolver::jwt::JwtResolver;

    const PUBLIC_KEY_PATH: &str = "TENANCY_JWT_PUBLIC_KEY_PATH";
    const JWKS_PATH: &str = "TENANCY_JWT_JWKS_PATH";
    const JWKS_URL: &str = "TENANCY_JWT_JWKS_URL";

    pub(super) fn resolver(config: &TenancyConfig) -> Result<JwtResolver, LayerConfigError> {
        let algorithm = match config.jwt_algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
        };
        let mut resolver = if algorithm == Algorithm::HS256 {
            let secret = config
                .jwt_secret
                .as_ref()
                .ok_or(LayerConfigError::Missing {
                    variable: "TENANCY_JWT_SECRET",
                    strategy: ResolutionStrategy::Jwt,
                })?;
            JwtResolver::hs256(secret.expose().as_bytes())
        } else if let Some(path) = &config.jwt_public_key_path {
            let pem = std::fs::read(path).map_err(|source| LayerConfigError::KeyFile {
                variable: PUBLIC_KEY_PATH,
                path: path.clone(),
                source,
            })?;
            let parsed = if algorithm == Algorithm::RS256 {
                JwtResolver::rs256_pem(&pem)
            } else {
                JwtResolver::es256_pem(&pem)
            };
            parsed.map_err(|source| LayerConfigError::Jwt {
                variable: PUBLIC_KEY_PATH,
                source,
            })?
        } else if let Some(path) = &config.jwt_jwks_path {
            JwtResolver::jwks_file(path, algorithm, config.jwt_jwks_refresh()).map_err(
                |source| LayerConfigError::Jwt {
                    variable: JWKS_PATH,
                    source,
                },
            )?
        } else if let Some(url) = &config.jwt_jwks_url {
            jwks_url_resolver(url, algorithm, config)?
        } else {
            return Err(LayerConfigError::Missing {
                variable: PUBLIC_KEY_PATH,
                strategy: ResolutionStrategy::Jwt,
            });
        };
        if let Some(audience) = &config.jwt_audience {
            resolver = resolver.audience(&[audience.as_str()]);
        }
        if let Some(issuer) = &config.jwt_issuer {
            resolver = resolver.issuer(&[issuer.as_str()]);
        }
        Ok(resolver
            .leeway(config.jwt_leeway())
            .claim(&config.jwt_tenant_claim))
    }
    /// The resolver fetching the JWKS document at `url`, first when a token arrives.
    #[cfg(feature = "jwks-http")]
    fn jwks_url_resolver(
        url: &str,
        algorithm: Algorithm,
        config: &TenancyConfig,
    ) -> Result<JwtResolver, LayerConfigError> {
        JwtResolver::jwks_url(url, algorithm, config.jwt_jwks_refresh()).map_err(|source| {
            LayerConfigError::Jwt {
                variable: JWKS_URL,
                source,
            }
        })
    }

    /// Without the `jwks-http` feature there is no HTTP client to fetch the document with.
    #[cfg(not(feature = "jwks-http"))]
    fn jwks_url_resolver(
        url: &str,
        _algorithm: Algorithm,
        _config: &TenancyConfig,
    ) -> Result<JwtResolver, LayerConfigError> {
        Err(LayerConfigError::Invalid {
            variable: JWKS_URL,
            value: url.to_owned(),
            reason: "JWKS over HTTP needs the `jwks-http` feature of tenancy-axum; without it, \
                     download the document and set TENANCY_JWT_JWKS_PATH",
        })
    }
}

#[cfg(not(feature = "jwt"))]
mod jwt {
    use tenancy_core::TenancyConfig;

    use super::LayerConfigError;
    use crate::resolver::HeaderResolver;

    /// Without the `jwt` feature there is no JWT resolver to build.
    pub(super) fn resolver(_config: &TenancyConfig) -> Result<HeaderResolver, LayerConfigError> {
        Err(LayerConfigError::JwtFeatureDisabled)
    }
}
