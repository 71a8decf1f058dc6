//! Property tests: for arbitrary header values, hosts and paths, no resolver panics and no
//! response is a 5xx (the store is healthy).

mod common;

use common::*;
use http::{HeaderValue, Request};
use proptest::prelude::*;
use tenancy_axum::TenancyLayer;
use tenancy_axum::resolver::{HeaderResolver, PathResolver, SubdomainResolver};

struct Apps {
    runtime: tokio::runtime::Runtime,
    apps: Vec<tenancy_axum::TenancyService<axum::Router>>,
}

fn apps() -> Apps {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let apps = runtime.block_on(async {
        let store = store().await;
        let subdomain = || {
            SubdomainResolver::new("example.test")
                .trusted_proxies(["127.0.0.0/8".parse().unwrap()])
                .custom_domains(true)
        };
        vec![
            app(TenancyLayer::builder(cache(&store)).resolver(HeaderResolver::default())),
            app(TenancyLayer::builder(cache(&store)).resolver(subdomain())),
            app(TenancyLayer::builder(cache(&store)).resolver(PathResolver::default())),
            app(TenancyLayer::builder(cache(&store))
                .resolver(PathResolver::default())
                .resolver(subdomain())
                .resolver(HeaderResolver::default())
                .strict(true)
                .hide_unknown_tenants(true)),
        ]
    });
    Apps { runtime, apps }
}

fn check(apps: &Apps, build: impl Fn() -> Request<axum::body::Body>) -> Result<(), TestCaseError> {
    for app in &apps.apps {
        let answer = apps.runtime.block_on(send(app, build()));
        prop_assert!(
            !answer.status.is_server_error(),
            "{} {}",
            answer.status,
            answer.body
        );
        if !answer.status.is_success() && answer.status != http::StatusCode::NOT_FOUND {
            answer.detail();
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_header_values(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let apps = apps();
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            check(&apps, || {
                let mut request = get_with("/whoami", &[]);
                request.headers_mut().insert("x-tenant-id", value.clone());
                request
            })?;
        }
    }

    #[test]
    fn arbitrary_hosts(host in "[a-zA-Z0-9.:\\[\\]_-]{0,80}(\\.example\\.test)?(:[0-9]{0,6})?\\.?") {
        let apps = apps();
        if let Ok(value) = HeaderValue::from_str(&host) {
            check(&apps, || {
                let mut request = get_with("/whoami", &[]);
                request.headers_mut().insert("host", value.clone());
                request.headers_mut().insert("x-forwarded-host", value.clone());
                request.headers_mut().insert(
                    "forwarded",
                    HeaderValue::from_str(&format!("host=\"{host}\"")).unwrap_or(HeaderValue::from_static("x")),
                );
                request.extensions_mut().insert(tenancy_axum::PeerAddr("127.0.0.1:9".parse().unwrap()));
                request
            })?;
        }
    }

    #[test]
    fn arbitrary_paths(path in "(/tenants)?(/[a-zA-Z0-9%.~_'\"-]{0,20}){0,5}(\\?[ -~]{0,20})?") {
        let apps = apps();
        if path.parse::<http::Uri>().is_ok() {
            check(&apps, || get_with(&path, &[]))?;
        }
    }
}
