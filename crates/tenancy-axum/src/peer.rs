//! The address of the connection's peer, needed to decide whether forwarded headers are trusted.
//!
//! axum records the peer as `axum::extract::ConnectInfo<SocketAddr>`, a type this crate cannot
//! see (it depends on `axum-core`, not `axum`). The pipeline therefore looks for a [`PeerAddr`]
//! in the request extensions, then for a bare [`SocketAddr`]. With axum, copy it over once:
//!
//! ```ignore
//! use axum::extract::{ConnectInfo, Request};
//! use tenancy_axum::PeerAddr;
//!
//! let app = app.layer(axum::middleware::map_request(|mut request: Request| async move {
//!     if let Some(ConnectInfo(addr)) = request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().copied() {
//!         request.extensions_mut().insert(PeerAddr(addr));
//!     }
//!     request
//! }));
//! ```
//!
//! When neither is present the peer is unknown and forwarded headers are ignored.

use std::net::{IpAddr, SocketAddr};

use http::Extensions;

/// The socket address of the connection's peer (the client, or the proxy in front of us).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    /// The peer's IP address from the request extensions: a [`PeerAddr`], else a bare
    /// [`SocketAddr`]; `None` when neither was inserted.
    pub fn ip_from(extensions: &Extensions) -> Option<IpAddr> {
        extensions
            .get::<PeerAddr>()
            .map(|peer| peer.0.ip())
            .or_else(|| extensions.get::<SocketAddr>().map(SocketAddr::ip))
    }
}
