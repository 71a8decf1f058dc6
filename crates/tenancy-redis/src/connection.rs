//! Connections that fail fast while Redis is down and come back by themselves.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The connection settings used by [`connect`]: 500 ms to connect, 500 ms per reply, and one
/// quick reconnection retry, so a request never waits long on a Redis that is down (the cache
/// and the rate limiter then fall back at once). The manager reconnects on the next command
/// after a failure, so nothing needs to be rebuilt when Redis returns.
pub fn connection_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(100))
}

/// Connects a [`ConnectionManager`] with [`connection_config`]. Fails if Redis cannot be
/// reached now; once connected, the manager survives Redis restarts.
///
/// ```no_run
/// # async fn run() -> redis::RedisResult<()> {
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let connection = tenancy_redis::connect(&client).await?;
/// # let _ = connection; Ok(()) }
/// ```
pub async fn connect(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    ConnectionManager::new_with_config(client.clone(), connection_config()).await
}
