//! A real PostgreSQL server restart under load, on a throwaway cluster this test creates and
//! always drops (never the machine's shared server).
//!
//! The tenant registry (`PgStore`) lives on that cluster behind the real `TenancyLayer` with
//! short cache lifetimes. While eight tasks send requests for known and unknown tenants, the
//! server is stopped (`-m fast`, so in-flight registry queries fail), left down and started
//! again. The test proves that:
//! - a known tenant is only ever answered 200 (its tenant) or 503 with `Retry-After` and a JSON
//!   body, never 404 or 500; an unknown one only 404 or 503;
//! - the outage is really seen (some requests get 503 while the server is down);
//! - within 10 s of the server being started again, every known tenant answers 200 and every
//!   unknown one 404 through the same layer, cache and pool (recovery needs no restart of the
//!   service), and no request sent after that gets 503.

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use sqlx::postgres::PgPoolOptions;
use tenancy::axum::{CurrentTenant, TenancyLayer};
use tenancy::cache::{CacheSettings, TenantCache};
use tenancy::sql::postgres::PgStore;
use tenancy::{NewTenant, TenantIdentifier, TenantStatus, TenantStore};
use tower::ServiceExt;

/// Active tenants in the registry.
const KNOWN: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];
/// Well-formed identifiers the registry does not have.
const UNKNOWN: [&str; 3] = ["ghost", "nobody-here", "vanished"];
/// How long the server stays stopped before it is started again.
const DOWNTIME: Duration = Duration::from_millis(1500);
/// How long the service may take to answer normally again once the server is being started.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);

/// A PostgreSQL cluster of this test's own, made with the Debian `postgresql-common` tools on a
/// free port with trust authentication, removed (stopped first) when this value is dropped.
#[derive(Debug)]
struct PgCluster {
    version: String,
    name: String,
    port: u16,
}

impl PgCluster {
    /// Creates the cluster under a unique name with the newest installed PostgreSQL and starts
    /// it. Fails with the missing piece named if the tools or a PostgreSQL version are missing.
    fn create() -> Self {
        let version = newest_postgres_version();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let name = tenancy_tests::unique_name("tenancy_restart");
        let created = run_tool(
            "pg_createcluster",
            &[
                &version,
                &name,
                "-p",
                &port.to_string(),
                "--",
                "--auth=trust",
            ],
        );
        // From here on, dropping the guard removes whatever pg_createcluster left behind.
        let cluster = Self {
            version,
            name,
            port,
        };
        succeeded("pg_createcluster", &created);
        cluster.ctl(&["start"]);
        cluster
    }

    /// A URL to the cluster's `postgres` database as the `postgres` superuser.
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `pg_ctlcluster <version> <name> <args>` and waits for it (a start waits until the
    /// server accepts connections).
    fn ctl(&self, args: &[&str]) {
        let mut all = vec!["--skip-systemctl-redirect", &self.version, &self.name];
        all.extend_from_slice(args);
        succeeded("pg_ctlcluster", &run_tool("pg_ctlcluster", &all));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let failure = match Command::new("pg_dropcluster")
            .args(["--stop", &self.version, &self.name])
            .output()
        {
            Ok(output) if output.status.success() => return,
            Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
            Err(error) => error.to_string(),
        };
        let message = format!(
            "could not drop the test cluster {}/{}: {failure}",
            self.version, self.name
        );
        if std::thread::panicking() {
            eprintln!("{message}");
        } else {
            panic!("{message}");
        }
    }
}

/// The newest PostgreSQL version with a directory in `/etc/postgresql` (what the Debian tools
/// create clusters for).
fn newest_postgres_version() -> String {
    let entries = std::fs::read_dir("/etc/postgresql").unwrap_or_else(|error| {
        panic!(
            "/etc/postgresql cannot be read ({error}): this test needs a Debian PostgreSQL \
             server package (postgresql-15 or newer) to create its own cluster"
        )
    });
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| Some((name.parse::<f64>().ok()?, name)))
        .max_by(|(a, _), (b, _)| a.total_cmp(b))
        .map(|(_, name)| name)
        .expect("no PostgreSQL version in /etc/postgresql: install a Debian PostgreSQL server")
}

/// Runs one of the Debian cluster tools, failing clearly when it is not installed.
fn run_tool(program: &str, args: &[&str]) -> Output {
    match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed: this test creates, restarts and drops a PostgreSQL \
             cluster of its own with pg_createcluster, pg_ctlcluster and pg_dropcluster \
             (Debian package postgresql-common)"
        ),
        Err(error) => panic!("could not run {program}: {error}"),
    }
}

fn succeeded(program: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{program} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The registry with active tenants [`KNOWN`], on a pool whose acquire timeout is shorter
/// than the downtime, so requests during the outage are answered rather than held until the
/// server is back.
async fn registry(cluster: &PgCluster) -> PgStore {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&cluster.url())
        .await
        .expect("connect to the test cluster");
    let store = PgStore::new(pool);
    store.migrate().await.expect("migrate the registry");
    for identifier in KNOWN {
        let identifier = TenantIdentifier::parse(identifier).unwrap();
        store
            .create(NewTenant::new(identifier, "Restart test").with_status(TenantStatus::Active))
            .await
            .expect("create a tenant");
    }
    store
}

/// `/whoami` answers the admitted tenant's identifier, behind the layer with cache lifetimes
/// short enough that requests reach the registry during the outage.
fn app(store: &PgStore) -> Router {
    let settings = CacheSettings {
        max_entries: 1_000,
        ttl: Duration::from_millis(250),
        negative_ttl: Duration::from_millis(250),
    };
    let cache = TenantCache::new(Arc::new(store.clone()), settings);
    Router::new()
        .route(
            "/whoami",
            get(
                |CurrentTenant(tenant): CurrentTenant| async move { tenant.identifier.to_string() },
            ),
        )
        .layer(TenancyLayer::builder(cache).build())
}

/// One request for `identifier` (header resolver): what came back and anything wrong with it.
async fn send(app: &Router, identifier: &str) -> (StatusCode, Result<(), String>) {
    let request = Request::get("/whoami")
        .header("x-tenant-id", identifier)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    let detail = || {
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|json| json["detail"].as_str().map(str::to_owned))
    };
    let known = KNOWN.contains(&identifier);
    let verdict = match status {
        StatusCode::OK if known && body == identifier => Ok(()),
        StatusCode::NOT_FOUND if !known && detail().as_deref() == Some("Tenant not found") => {
            Ok(())
        }
        StatusCode::SERVICE_UNAVAILABLE
            if retry_after.as_ref().is_some_and(|value| value == "1")
                && content_type
                    .as_ref()
                    .is_some_and(|value| value == "application/json")
                && detail().as_deref() == Some("Tenant registry unavailable, retry later") =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{identifier} (known: {known}): {status}, Retry-After {retry_after:?}, body {body}"
        )),
    };
    (status, verdict)
}

/// Whether every known tenant answers 200 and every unknown one 404 right now.
async fn all_answer_normally(app: &Router) -> bool {
    for identifier in KNOWN.iter().chain(&UNKNOWN) {
        let (status, verdict) = send(app, identifier).await;
        if verdict.is_err() || status == StatusCode::SERVICE_UNAVAILABLE {
            return false;
        }
    }
    true
}

/// One answer seen by the load.
struct Outcome {
    started: Instant,
    finished: Instant,
    known: bool,
    status: StatusCode,
    problem: Option<String>,
}

/// Sends requests for random known and unknown tenants until `stop` is set.
async fn load(app: Router, stop: Arc<AtomicBool>) -> Vec<Outcome> {
    let mut rng = fastrand::Rng::new();
    let mut outcomes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let identifier = if rng.u8(..4) == 0 {
            UNKNOWN[rng.usize(..UNKNOWN.len())]
        } else {
            KNOWN[rng.usize(..KNOWN.len())]
        };
        let started = Instant::now();
        let (status, verdict) = send(&app, identifier).await;
        outcomes.push(Outcome {
            started,
            finished: Instant::now(),
            known: KNOWN.contains(&identifier),
            status,
            problem: verdict.err(),
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    outcomes
}

/// Counts of `(known, status)` among `outcomes`, for the report.
fn tally<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for outcome in outcomes {
        let kind = if outcome.known { "known" } else { "unknown" };
        *counts
            .entry((kind, outcome.status.as_u16()))
            .or_insert(0_u32) += 1;
    }
    counts
        .iter()
        .map(|((kind, status), count)| format!("{kind} {status}: {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_server_restart_answers_503_then_recovers() {
    let test_started = Instant::now();
    let cluster = Arc::new(PgCluster::create());
    let store = registry(&cluster).await;
    let app = app(&store);
    assert!(
        all_answer_normally(&app).await,
        "the service does not answer normally before the restart"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(load(app.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stop_invoked = Instant::now();
    let down = cluster.clone();
    tokio::task::spawn_blocking(move || down.ctl(&["-m", "fast", "stop"]))
        .await
        .expect("stop the test cluster");
    let stop_returned = Instant::now();
    tokio::time::sleep(DOWNTIME).await;
    let start_invoked = Instant::now();
    let up = cluster.clone();
    let start = tokio::task::spawn_blocking(move || up.ctl(&["start"]));
    while !all_answer_normally(&app).await {
        assert!(
            start_invoked.elapsed() < RECOVERY_BOUND,
            "known tenants still do not answer 200 (or unknown ones 404) {RECOVERY_BOUND:?} \
             after the server was started again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = Instant::now();
    start.await.expect("start the test cluster");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.expect("a load task panicked"));
    }
    store.pool().close().await;

    let between = |from: Instant, to: Instant| {
        outcomes
            .iter()
            .filter(move |o| (from..to).contains(&o.finished))
    };
    println!(
        "{} requests; before the restart: {}; stopping ({:?}): {}; down ({:?}): {}; \
         starting until every tenant answers normally ({:?}): {}; after recovery: {}; \
         test took {:?}",
        outcomes.len(),
        tally(between(test_started, stop_invoked)),
        stop_returned - stop_invoked,
        tally(between(stop_invoked, stop_returned)),
        start_invoked - stop_returned,
        tally(between(stop_returned, start_invoked)),
        recovered - start_invoked,
        tally(between(start_invoked, recovered)),
        tally(outcomes.iter().filter(|o| o.finished >= recovered)),
        test_started.elapsed()
    );

    let problems: Vec<_> = outcomes.iter().filter_map(|o| o.problem.as_ref()).collect();
    assert!(
        problems.is_empty(),
        "{} answers other than 200 (known), 404 (unknown) or a well-formed 503, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    assert!(
        between(stop_invoked, recovered).any(|o| o.status == StatusCode::SERVICE_UNAVAILABLE),
        "no request saw the server down: the restart was not exercised"
    );
    let late_failures = outcomes
        .iter()
        .filter(|o| o.started >= recovered && o.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(
        late_failures, 0,
        "503 answers to requests sent after the service had recovered"
    );
}
