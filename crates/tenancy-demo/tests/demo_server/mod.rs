//! Runs the built `tenancy-demo` binary as a child process and talks HTTP/1.1 to it, as a user
//! with curl would. The server is killed when the handle is dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The admin token every test server gets.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A running demo server.
pub struct DemoServer {
    child: Child,
    addr: SocketAddr,
}

impl DemoServer {
    /// Starts the demo with `env` (plus a free port and the admin token) and waits until it
    /// listens. Panics with the server's log if it exits or does not come up in 60 s.
    pub fn start(env: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tenancy-demo"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("TENANCY_DEMO_ADDR", "127.0.0.1:0")
            .env("TENANCY_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start tenancy-demo");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, log) = mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining the server's stderr after start-up too, so it never blocks on a
            // full pipe; lines nobody waits for any more are dropped.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let mut seen = Vec::new();
        loop {
            match log.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        return Self { child, addr };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let status = child.try_wait().ok().flatten();
                    let _ = child.kill();
                    panic!(
                        "tenancy-demo did not start (exit: {status:?}); its log:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    /// Starts the demo expecting it to refuse to start; returns its exit code and log.
    pub fn refuses(env: &[(&str, String)]) -> (Option<i32>, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tenancy-demo"));
        command
            .env_clear()
            .env("TENANCY_DEMO_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().expect("run tenancy-demo");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Sends one request; `headers` are added as given.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Reply {
        send(self.addr, method, path, headers, body).await
    }

    /// `GET path` with the tenant header.
    pub async fn get_as(&self, tenant: &str, path: &str) -> Reply {
        self.request("GET", path, &[("X-Tenant-ID", tenant)], None)
            .await
    }

    /// `POST path` with the tenant header.
    pub async fn post_as(&self, tenant: &str, path: &str) -> Reply {
        self.request("POST", path, &[("X-Tenant-ID", tenant)], None)
            .await
    }

    /// An admin request with the bearer token.
    pub async fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.request(method, path, &[("Authorization", &auth)], body)
            .await
    }

    /// Registers a tenant through the admin API and asserts 201.
    pub async fn create_tenant(&self, identifier: &str, tier: Option<&str>) -> Value {
        let mut body =
            serde_json::json!({ "identifier": identifier, "name": format!("Tenant {identifier}") });
        if let Some(tier) = tier {
            body["tier"] = Value::from(tier);
        }
        let reply = self.admin("POST", "/admin/tenants", Some(&body)).await;
        assert_eq!(reply.status, 201, "create {identifier}: {}", reply.text);
        reply.json()
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("tenancy-demo listening") {
        return None;
    }
    let start = line.find("addr=")? + "addr=".len();
    line[start..].split_whitespace().next()?.parse().ok()
}

/// One HTTP response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase.
    pub headers: HashMap<String, String>,
    /// Body as text.
    pub text: String,
}

impl Reply {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text))
    }

    /// The `detail` of a JSON error body.
    pub fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("no detail in {}", self.text))
            .to_owned()
    }
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Reply {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to tenancy-demo");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response within 30 s")
        .expect("read response");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 2 + size + 2..];
    }
}
