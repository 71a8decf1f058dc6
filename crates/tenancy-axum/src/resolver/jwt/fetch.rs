//! A JWKS document fetched over HTTP(S) (feature `jwks-http`): hyper's client over rustls with
//! the aws-lc-rs provider, a time limit and a size limit, one fetch at a time.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::header::ACCEPT;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::{JwtConfigError, KeyCache, usable_keys};

/// The largest JWKS document accepted.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// How long one fetch may take, from connecting to the last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Hosts that `http://` may name.
const LOOPBACK_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

/// Why a fetch brought no keys.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// No complete answer within [`FETCH_TIMEOUT`].
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
    /// The request failed (connection refused, TLS, protocol).
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    /// The server answered with an error status.
    #[error("the server answered {0}")]
    Status(StatusCode),
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    /// The body could not be read.
    #[error("cannot read the body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// The body is not a JWKS document.
    #[error("not a JWKS document: {0}")]
    NotJwks(#[from] serde_json::Error),
}

/// The JWKS document at a URL, its cached keys, and the lock that lets one request fetch.
pub(super) struct JwksUrl {
    uri: Uri,
    algorithm: Algorithm,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    cache: KeyCache,
    fetching: tokio::sync::Mutex<()>,
}

impl JwksUrl {
    /// A source for `url`, checked now and fetched later.
    pub(super) fn new(
        url: &str,
        algorithm: Algorithm,
        cache: KeyCache,
    ) -> Result<Self, JwtConfigError> {
        let invalid = |reason| JwtConfigError::JwksUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let host = uri.host().ok_or_else(|| invalid("the URL has no host"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if LOOPBACK_HOSTS.contains(&host) => {}
            _ => return Err(invalid("expected https:// (http:// only for localhost)")),
        }
        let connector = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|_| invalid("TLS cannot be set up"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            uri,
            algorithm,
            client: Client::builder(TokioExecutor::new()).build(connector),
            cache,
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The cached keys.
    pub(super) fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// `verify` applied to the key `kid`, fetching the document first if `kid` is unknown and
    /// a fetch is due; requests arriving during a fetch wait for it rather than fetch again.
    pub(super) async fn with_key_after_fetch<R>(
        &self,
        kid: &str,
        verify: impl Fn(&DecodingKey) -> Result<R, &'static str>,
    ) -> Result<R, &'static str> {
        let _only_fetch = self.fetching.lock().await;
        if let Some(verified) = self.cache.with_known_key(kid, &verify) {
            return verified;
        }
        if self.cache.reload_due() {
            let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
                .await
                .unwrap_or(Err(FetchError::Timeout));
            if let Err(error) = &fetched {
                tracing::warn!(url = %self.uri, %error, "JWKS fetch failed");
            }
            self.cache.replace(fetched);
        }
        self.cache
            .with_known_key(kid, &verify)
            .unwrap_or(Err("unknown key id"))
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, FetchError> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.uri.clone();
        request
            .headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("application/json"));
        let response = self.client.request(request).await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let body = response.into_body();
        if body.size_hint().lower() > MAX_DOCUMENT_BYTES as u64 {
            return Err(FetchError::TooLarge);
        }
        let document = Limited::new(body, MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<LengthLimitError>() {
                    FetchError::TooLarge
                } else {
                    FetchError::Body(error)
                }
            })?
            .to_bytes();
        Ok(usable_keys(&document, self.algorithm)?)
    }
}
