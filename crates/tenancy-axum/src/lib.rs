//! The request pipeline of tenancy: resolve the tenant of a request, look it up, gate on its
//! status and hand it to handlers, with structured JSON errors.
//!
//! ```
//! use std::sync::Arc;
//! use tenancy_axum::{CurrentTenant, TenancyLayer};
//! use tenancy_core::MemoryStore;
//! use tenancy_core::cache::{CacheSettings, TenantCache};
//! use tower_layer::Layer;
//!
//! async fn whoami(tenant: CurrentTenant) -> String {
//!     tenant.identifier.to_string()
//! }
//!
//! let cache = TenantCache::new(Arc::new(MemoryStore::new()), CacheSettings::default());
//! let layer = TenancyLayer::builder(cache).exclude("/health").build();
//! // With axum: `let app = layer.layer(Router::new().route("/whoami", get(whoami)));`
//! # let _ = layer;
//! ```
//!
//! Library code depends on `axum-core` and `tower`, not `axum`; handlers and routers come from
//! the application's axum.

mod config;
mod extract;
mod layer;
mod peer;
mod rejection;
pub mod resolver;

pub use config::LayerConfigError;
pub use extract::CurrentTenant;
pub use layer::{ResponseFuture, TenancyLayer, TenancyLayerBuilder, TenancyService};
pub use peer::PeerAddr;
pub use rejection::{AdminError, TenancyRejection};
pub use tenancy_core::rate_limit::{RateLimitDecision, RateLimiter, RateLimiterUnavailable};
