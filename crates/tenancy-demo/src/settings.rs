//! The demo's own settings (`TENANCY_DEMO_*`, `TENANCY_ADMIN_TOKEN`) and its start-up errors.
//! The toolkit's settings are `tenancy::TenancyConfig`.

use std::net::SocketAddr;
use std::path::PathBuf;

use tenancy::{ConfigError, Secret, TenancyConfig};

/// The demo's own variables, left out of `TenancyConfig`.
pub const VARIABLES: &[&str] = &[
    "TENANCY_DEMO_ADDR",
    "TENANCY_DEMO_DATA_DIR",
    "TENANCY_ADMIN_TOKEN",
];

/// The demo's defaults of the toolkit's settings, which `TENANCY_*` variables override.
///
/// The release reset is off: the demo's runtime pool serves tenant transactions only, which
/// scope themselves transaction-locally, so the reset (which protects plain queries on that
/// pool from session-level `SET`s) would cost a round trip per request for nothing.
pub fn tenancy_defaults() -> TenancyConfig {
    TenancyConfig {
        pool_reset_on_release: false,
        ..TenancyConfig::default()
    }
}

/// Where the demo listens and keeps its files, and the admin token.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// `TENANCY_DEMO_ADDR` (default `127.0.0.1:8000`).
    pub addr: SocketAddr,
    /// `TENANCY_DEMO_DATA_DIR`: where the SQLite registry and tenant files live; unset, they
    /// live under `TENANCY_SQLITE_DATA_DIR` (default `./data`), where the `tenancy` CLI looks.
    pub data_dir: Option<PathBuf>,
    /// `TENANCY_ADMIN_TOKEN`: bearer token of the admin API; unset turns the admin API off.
    pub admin_token: Option<Secret>,
}

impl DemoSettings {
    /// Reads the settings from the environment.
    pub fn from_env() -> Result<Self, StartupError> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        let addr = match var("TENANCY_DEMO_ADDR") {
            Some(value) => value.parse().map_err(|_| StartupError::Setting {
                variable: "TENANCY_DEMO_ADDR",
                value,
                expected: "a socket address such as 127.0.0.1:8000",
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8000)),
        };
        let admin_token = var("TENANCY_ADMIN_TOKEN").map(Secret::from);
        if let Some(token) = &admin_token
            && token.expose().len() < 16
        {
            return Err(StartupError::Setting {
                variable: "TENANCY_ADMIN_TOKEN",
                value: "***".to_owned(),
                expected: "at least 16 characters",
            });
        }
        Ok(Self {
            addr,
            data_dir: var("TENANCY_DEMO_DATA_DIR").map(PathBuf::from),
            admin_token,
        })
    }
}

/// Why the demo could not start. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A `TENANCY_*` variable is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A demo variable is invalid.
    #[error("{variable}='{value}' is invalid: expected {expected}")]
    Setting {
        /// The variable.
        variable: &'static str,
        /// Its value (masked for secrets).
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// The backend (registry, isolation, Redis) could not be set up.
    #[error("{what}: {source}")]
    Backend {
        /// What was being set up.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The configuration is valid but this deployment refuses it (e.g. an unsafe RLS role).
    #[error("refusing to start: {0}")]
    Refused(String),
    /// The metrics recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// The address is taken or not allowed.
    #[error("cannot listen on {addr}: {source} (set TENANCY_DEMO_ADDR)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}

impl StartupError {
    /// Wraps a set-up failure of `what`.
    pub fn backend(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Backend {
            what,
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_reset_is_off_unless_the_environment_turns_it_on() {
        let unset = TenancyConfig::from_vars_over(tenancy_defaults(), [("HOME", "/root")]).unwrap();
        assert!(!unset.pool_reset_on_release);
        let on = TenancyConfig::from_vars_over(
            tenancy_defaults(),
            [("TENANCY_POOL_RESET_ON_RELEASE", "true")],
        )
        .unwrap();
        assert!(on.pool_reset_on_release);
        assert_eq!(
            TenancyConfig {
                pool_reset_on_release: true,
                ..tenancy_defaults()
            },
            TenancyConfig::default()
        );
    }
}
