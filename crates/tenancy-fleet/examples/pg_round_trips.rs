//! Counts PostgreSQL round trips: a TCP proxy between clients and the server that reads the
//! frontend protocol on the way through and counts the messages that end a round trip, a
//! simple query (`Q`) or a `Sync` (`S`, which closes each extended-protocol exchange: prepare,
//! or bind + execute). `scripts/bench` puts it in front of the servers under test for a short
//! run and divides by the requests served.
//!
//! ```text
//! cargo run --release -p tenancy-fleet --example pg_round_trips -- \
//!     --listen 127.0.0.1:15432 --control 127.0.0.1:15433 [--upstream 127.0.0.1:5432]
//! ```
//!
//! Each connection to the control address gets one line with the totals so far,
//! `round_trips=.. simple_queries=.. syncs=.. connections=..`, and is closed. Clients must not
//! use TLS (`sslmode=disable`): the proxy reads the plain protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The protocol version of a startup message (3.0); other untyped codes (SSL, GSS, cancel
/// requests) precede a startup message or replace it.
const PROTOCOL_3_0: u32 = 196_608;

/// The command line.
#[derive(clap::Parser)]
struct Args {
    /// Where clients connect (instead of the server).
    #[arg(long)]
    listen: SocketAddr,
    /// Where a connection reads the totals so far (one line).
    #[arg(long)]
    control: SocketAddr,
    /// The PostgreSQL server.
    #[arg(long, default_value = "127.0.0.1:5432")]
    upstream: SocketAddr,
}

/// Totals over every proxied connection.
#[derive(Default)]
struct Counts {
    simple_queries: AtomicU64,
    syncs: AtomicU64,
    connections: AtomicU64,
}

impl Counts {
    fn line(&self) -> String {
        let simple_queries = self.simple_queries.load(Ordering::Relaxed);
        let syncs = self.syncs.load(Ordering::Relaxed);
        format!(
            "round_trips={} simple_queries={simple_queries} syncs={syncs} connections={}\n",
            simple_queries + syncs,
            self.connections.load(Ordering::Relaxed)
        )
    }
}

/// Reads the client's byte stream message by message (without buffering whole messages) and
/// counts the ones that end a round trip.
#[derive(Default)]
struct FrontendReader {
    /// The startup message has been seen: messages now start with a type byte.
    typed: bool,
    /// The header of the current message read so far (type byte and/or length).
    header: Vec<u8>,
    /// Bytes of the current message's body still to skip.
    remaining: usize,
}

impl FrontendReader {
    fn feed(&mut self, mut bytes: &[u8], counts: &Counts) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(bytes.len());
                self.remaining -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let header_len = if self.typed { 5 } else { 8 };
            let take = (header_len - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.header.len() < header_len {
                continue;
            }
            if self.typed {
                match self.header[0] {
                    b'Q' => counts.simple_queries.fetch_add(1, Ordering::Relaxed),
                    b'S' => counts.syncs.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                let length = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.remaining = (length as usize).saturating_sub(4);
            } else {
                let length = u32::from_be_bytes([
                    self.header[0],
                    self.header[1],
                    self.header[2],
                    self.header[3],
                ]);
                let code = u32::from_be_bytes([
                    self.header[4],
                    self.header[5],
                    self.header[6],
                    self.header[7],
                ]);
                self.typed = code == PROTOCOL_3_0;
                self.remaining = (length as usize).saturating_sub(8);
            }
            self.header.clear();
        }
    }
}

async fn proxy(client: TcpStream, upstream: SocketAddr, counts: Arc<Counts>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    counts.connections.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let to_server = async move {
        let mut reader = FrontendReader::default();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            reader.feed(&buffer[..read], &counts);
            if server_write.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let to_client = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(to_server, to_client);
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args = <Args as clap::Parser>::parse();
    let counts = Arc::new(Counts::default());
    let listener = TcpListener::bind(args.listen).await?;
    let control = TcpListener::bind(args.control).await?;
    eprintln!(
        "pg_round_trips: {} -> {}, counts on {}",
        args.listen, args.upstream, args.control
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (client, _) = accepted?;
                tokio::spawn(proxy(client, args.upstream, Arc::clone(&counts)));
            }
            accepted = control.accept() => {
                let (mut reader, _) = accepted?;
                let line = counts.line();
                tokio::spawn(async move {
                    let _ = reader.write_all(line.as_bytes()).await;
                    let _ = reader.shutdown().await;
                });
            }
        }
    }
}
