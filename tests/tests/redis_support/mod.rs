//! Shared by the Redis tests: a key prefix unique to one test whose keys are deleted when the
//! test ends, even when it panics.

use tenancy::redis::KeyPrefix;
use tenancy::redis::redis;

/// A client of the machine's Redis.
pub fn client() -> redis::Client {
    redis::Client::open(tenancy_tests::redis_url()).expect("a valid redis URL")
}

/// A unique key prefix; every key under it is deleted (SCAN + DEL) on drop.
#[derive(Debug)]
pub struct KeySpace {
    prefix: KeyPrefix,
    url: String,
}

impl KeySpace {
    /// A fresh prefix on the machine's Redis.
    pub fn new() -> Self {
        let prefix = KeyPrefix::new(format!("{}:", tenancy_tests::unique_name("tenancy_test")))
            .expect("a valid prefix");
        Self {
            prefix,
            url: tenancy_tests::redis_url(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> KeyPrefix {
        self.prefix.clone()
    }
}

/// Deletes every key starting with `prefix`.
async fn delete_keys(url: &str, prefix: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(keys)
                .query_async::<()>(&mut connection)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

impl Drop for KeySpace {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.as_str().to_owned());
        // Drop runs inside or outside a runtime; a thread with its own runtime works in both.
        let cleanup = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for test clean-up")
                .block_on(delete_keys(&url, &prefix))
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not delete keys under {}: {error}", self.prefix),
            Err(_) if std::thread::panicking() => {}
            Err(_) => panic!("could not delete keys under {}", self.prefix),
        }
    }
}
